/*
 * Connection management: every way the link goes down gets its own status, the
 * backoff behaves under a flapping broker, keep-alive notices a network that went
 * silent, and the button keeps working while the link is down.
 *
 * The statuses are checked against the real stand-in over mutual TLS (a closed
 * port, a server certificate from another CA, a refused client ID, a revoked
 * device certificate, a session cut by the broker), and against the reason
 * strings the device transport (modules/device/mqtt-session) produces.
 */
import test from "ava";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { Link, classifyClose, MIN_CONNECT_INTERVAL_MS, MAX_KEEP_ALIVE_SECONDS, type LinkCause, type LinkStatus } from "../modules/core/link";
import { Doorbell } from "../modules/core/doorbell";
import type { MqttHandlers, MqttTransport } from "../modules/core/ports";
import { HostMqttTransport } from "../modules/host/mqtt-transport";
import { MemoryStore } from "../modules/host/file-store";
import { createHostClock } from "../modules/host/clock";
import { hostRandom } from "../modules/host/random";
import { ensureDevPki, issueRogueCredentials, issueThingCredentials, type DevPki, type IssuedCredentials } from "../tools/pki";
import { startStandin, type Standin } from "../tools/standin";
import { parseSimDeviceArgs } from "../tools/sim-device";
import { ManualClock } from "./helpers/manual-clock";
import { seededRandom } from "./helpers/crypto";

const THING = "link-porch";
let pkiDir: string;
let pki: DevPki;
let creds: IssuedCredentials;

test.before(async () => {
  pkiDir = fs.mkdtempSync(path.join(os.tmpdir(), "dw-link-pki-"));
  pki = await ensureDevPki(pkiDir);
  creds = await issueThingCredentials(pkiDir, THING);
});

const quiet = () => {};

function transportTo(port: number, o: { clientId?: string; keepaliveSeconds?: number } = {}) {
  return new HostMqttTransport({ host: "127.0.0.1", port, servername: "localhost", clientId: o.clientId ?? THING, ca: pki.ca.certPem, cert: creds.certPem, key: creds.keyPem, keepaliveSeconds: o.keepaliveSeconds });
}

/** Start a link on the real clock; resolve with the first status whose cause matches, or reject. */
function firstCause(transport: MqttTransport, want: (s: LinkStatus) => boolean, timeoutMs = 8000, onOnline?: () => void): Promise<{ status: LinkStatus; link: Link }> {
  return new Promise((resolve, reject) => {
    let link!: Link;
    const timer = setTimeout(() => { link.stop(); reject(new Error(`no matching status within ${timeoutMs} ms; last ${JSON.stringify(link.status())}`)); }, timeoutMs);
    link = new Link({
      transport, clock: createHostClock(), random: hostRandom, log: quiet, onOnline,
      onStatus: (s) => {
        if (!want(s)) return;
        clearTimeout(timer);
        link.stop();
        resolve({ status: s, link });
      },
    });
    link.start();
  });
}

const waitingWith = (cause: LinkCause) => (s: LinkStatus) => s.state === "waiting" && s.cause === cause;

test("each way the link fails against the real broker has its own cause", async (t) => {
  // Nothing listening.
  const closed = net.createServer();
  await new Promise<void>((r) => closed.listen(0, "127.0.0.1", () => r()));
  const deadPort = (closed.address() as net.AddressInfo).port;
  await new Promise<void>((r) => closed.close(() => r()));
  const unreachable = await firstCause(transportTo(deadPort), waitingWith("broker-unreachable"));
  t.regex(unreachable.status.reason, /ECONNREFUSED/);
  t.true(unreachable.status.retryInMs! >= MIN_CONNECT_INTERVAL_MS);

  // A server certificate the device does not trust.
  const rogue = await startStandin({ pki, serverCredentials: await issueRogueCredentials(pkiDir, "localhost", "server"), connectIntervalMs: 0 });
  try {
    const tls = await firstCause(transportTo(rogue.port), waitingWith("tls"));
    t.regex(tls.status.reason, /certificate/);
  } finally {
    await rogue.close();
  }

  const standin: Standin = await startStandin({ pki, connectIntervalMs: 0 });
  try {
    // The broker answers and refuses: a client ID that is not the certificate's thing.
    const refused = await firstCause(transportTo(standin.port, { clientId: "someone-else" }), waitingWith("broker-refused"));
    t.regex(refused.status.reason, /Not authorized/);

    // Online, then the broker cuts the session (AWS DeleteConnection, or a broker restart).
    const lost = await firstCause(transportTo(standin.port), waitingWith("connection-lost"), 8000, () => setTimeout(() => standin.disconnect(THING), 50));
    t.is(lost.status.sessions, 1);

    // The device certificate was revoked: TLS 1.3 lets the handshake finish, then the broker closes.
    const revoked = await startStandin({ pki, connectIntervalMs: 0 });
    try {
      revoked.revokeCertificate(creds.certPem);
      const r = await firstCause(transportTo(revoked.port), waitingWith("broker-refused"));
      t.is(r.status.sessions, 0);
    } finally {
      await revoked.close();
    }
  } finally {
    await standin.close();
  }
});

test("the device transport's reasons map to the same causes", (t) => {
  const cases: Array<[string, boolean, LinkCause]> = [
    ["dns: cannot resolve a1b2-ats.iot.eu-west-1.amazonaws.com", false, "broker-unreachable"],
    ["dns: lookup failed", false, "broker-unreachable"],
    ["tcp or tls handshake failed", false, "broker-unreachable"],
    ["tls: certificate verify failed", false, "tls"],
    ["timeout while waiting for CONNACK", false, "broker-unreachable"],
    ["broker refused the session or closed before CONNACK", false, "broker-refused"],
    ["Connection refused: Server unavailable", false, "broker-refused"],
    ["connection lost", true, "connection-lost"],
    ["Keepalive timeout", true, "connection-lost"],
    ["no trusted time: TLS certificate checks need the clock set (SNTP)", false, "no-time"],
    ["connect ECONNREFUSED 127.0.0.1:8883", false, "broker-unreachable"],
  ];
  for (const [reason, online, cause] of cases) t.is(classifyClose(reason, online), cause, reason);
});

test("a broker that accepts and drops at once is backed off; a session that lasts resets the backoff", (t) => {
  const clock = new ManualClock();
  const attempts: number[] = [];
  let stayUpMs = 50;
  let handlers: MqttHandlers | undefined;
  const flappy: MqttTransport = {
    connect(h) {
      attempts.push(clock.now);
      handlers = h;
      h.onConnect();
      const mine = h;
      clock.schedule(() => mine.onClose("connection closed"), stayUpMs);
    },
    publish: () => Promise.resolve(), subscribe: () => Promise.resolve(), close() {},
  };
  const link = new Link({ transport: flappy, clock, random: seededRandom("flap"), log: quiet, maxDelayMs: 60_000 });
  link.start();
  clock.advance(5 * 60_000);
  const gaps = attempts.slice(1).map((a, i) => a - attempts[i]);
  t.true(gaps.every((g) => g >= MIN_CONNECT_INTERVAL_MS));
  t.true(attempts.length < 40, `a flapping broker got ${attempts.length} CONNECTs in 5 minutes`);
  t.true(link.status().failures >= 8, `backoff exponent ${link.status().failures}`);
  // Now sessions stay up: after one stable session the next reconnect comes within the first window again.
  stayUpMs = 15_000;
  clock.advance(3 * 60_000);
  t.is(link.status().failures, 1, "a stable session reset the backoff (one failure: the drop after it)");
  t.truthy(handlers);
});

test("keep-alive notices a network that went silent, and the link comes back when it returns", async (t) => {
  t.timeout(60_000);
  const standin = await startStandin({ pki, connectIntervalMs: 0 });
  // A path to the broker that can go silent like a dead Wi-Fi: open connections stop carrying bytes, new ones fail.
  let silent = false;
  const live = new Set<net.Socket>();
  const proxy = net.createServer((down) => {
    if (silent) return void down.destroy();
    const up = net.connect(standin.port, "127.0.0.1");
    live.add(down);
    const end = () => { down.destroy(); up.destroy(); live.delete(down); };
    down.on("data", (d) => { if (!silent) up.write(d); });
    up.on("data", (d) => { if (!silent) down.write(d); });
    down.on("close", end); up.on("close", end); down.on("error", end); up.on("error", end);
  });
  await new Promise<void>((r) => proxy.listen(0, "127.0.0.1", () => r()));
  const port = (proxy.address() as net.AddressInfo).port;
  const statuses: LinkStatus[] = [];
  const link = new Link({ transport: transportTo(port, { keepaliveSeconds: 1 }), clock: createHostClock(), random: hostRandom, log: quiet, onStatus: (s) => statuses.push(s) });
  try {
    link.start();
    const deadline = Date.now() + 8000;
    while (!link.online && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    t.true(link.online);
    silent = true;
    const wentSilentAt = Date.now();
    while (link.online && Date.now() - wentSilentAt < 10_000) await new Promise((r) => setTimeout(r, 20));
    const detectedMs = Date.now() - wentSilentAt;
    t.false(link.online, "keep-alive never noticed");
    t.true(detectedMs < 5000, `took ${detectedMs} ms with a 1 s keep-alive`);
    t.is(statuses.find((s) => s.state === "waiting")?.cause, "connection-lost");
    silent = false;
    const back = Date.now();
    while (!link.online && Date.now() - back < 20_000) await new Promise((r) => setTimeout(r, 20));
    t.true(link.online, `did not come back: ${JSON.stringify(link.status())}`);
    t.log(`silence noticed after ${detectedMs} ms; back online ${Date.now() - back} ms after the network returned`);
  } finally {
    link.stop();
    for (const s of live) s.destroy();
    proxy.close();
    await standin.close();
  }
});

test("keep-alive settings outside AWS's bound are refused", (t) => {
  t.is(MAX_KEEP_ALIVE_SECONDS, 1200);
  t.throws(() => transportTo(1, { keepaliveSeconds: MAX_KEEP_ALIVE_SECONDS + 1 }), { instanceOf: RangeError });
  t.throws(() => parseSimDeviceArgs(["--home", "/tmp/x", "--port", "8883", "--keepalive", "1201"]), { message: /1-1200/ });
  t.is(parseSimDeviceArgs(["--home", "/tmp/x", "--port", "8883"]).keepaliveSeconds, 60);
});

test("Wi-Fi loss: no CONNECT while the network is down, the button keeps working, and everything goes out in order when it returns", async (t) => {
  const clock = new ManualClock();
  const published: Uint8Array[] = [];
  let connects = 0;
  let handlers: MqttHandlers | undefined;
  const transport: MqttTransport = {
    connect(h) { connects++; handlers = h; h.onConnect(); },
    publish(_topic, payload) { published.push(payload); return Promise.resolve(); },
    subscribe: () => Promise.resolve(),
    close() { const h = handlers; handlers = undefined; h?.onClose("closed by device"); },
  };
  const doorbell = new Doorbell({ thing: "wifi-porch", signingSeed: new Uint8Array(32).fill(3), clock, random: seededRandom("wifi"), store: new MemoryStore(), transport, log: quiet, noncePoolSize: 2 });
  doorbell.start();
  t.true(doorbell.link.online);
  t.is(connects, 1);

  doorbell.link.networkDown("wifi: beacon timeout");
  t.is(doorbell.link.state, "no-network");
  t.is(doorbell.link.status().cause, "wifi");
  const offline = [];
  for (let i = 0; i < 5; i++) {
    offline.push(doorbell.press());
    clock.advance(60_000);
  }
  t.is(connects, 1, "no CONNECT attempts while the Wi-Fi is down");
  t.true(offline.every((r) => r.stored), "offline presses are in flash");
  t.is(doorbell.outbox.depth, 5);

  doorbell.link.networkUp();
  t.true(doorbell.link.online, "reconnects at once: the last CONNECT was minutes ago");
  await new Promise((r) => setImmediate(r));
  t.is(doorbell.outbox.depth, 0);
  t.is(published.length, 5);
  t.deepEqual(published.map((p) => JSON.parse(Buffer.from(p).toString()).event.seq), offline.map((r) => r.seq));
  doorbell.stop();
});
