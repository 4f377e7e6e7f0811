/*
 * The board bring-up modules, run on Node against models of the SDK pieces
 * they drive, on a manual clock: Wi-Fi join/retry/drop (./wifi over a model of
 * the ECMA-419 interface), time from NTP before TLS (./sntp), the gate that
 * holds the broker connect until both are there (./bringup), the LED patterns
 * and the chime, and provisioning over the serial console: the device side
 * (ConsoleProvisioner, with a real vault) and the host side (sendBundle, what
 * tools/mc.ts runs over a tty) talking through a lossy in-memory line.
 */
import test from "ava";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import nacl from "tweetnacl";
import { ManualClock } from "./helpers/manual-clock";
import { seededRandom } from "./helpers/crypto";
import type { Log, MqttHandlers, MqttTransport } from "../modules/core/ports";
import { Vault } from "../modules/core/vault";
import { Provisioning, encodeBundle, type ProvisioningBundle } from "../modules/core/provisioning";
import { toHex } from "../modules/core/bytes";
import { MemoryStore } from "../modules/host/file-store";
import { issueThingCredentials } from "../tools/pki";
import { WifiLink, HostNetwork, WIFI_ADDRESSED, WIFI_ASSOCIATED, WIFI_CONNECTING, WIFI_DISCONNECTED, type NetworkState } from "../modules/device/wifi";
import { TimeSync, SNTP_ERROR, SNTP_TIME } from "../modules/device/sntp";
import { BringUp } from "../modules/device/bringup";
import { StatusLed, LED_PATTERNS, LED_FLASHES } from "../modules/device/led";
import { Chime } from "../modules/device/chime";
import {
  ConsoleProvisioner, CHUNK_BYTES, MAX_LINE, PREFIX, frameBundle, parseReply, sendBundle, ProvisionError, type ConsolePort, type Reply,
} from "../modules/device/provision-serial";
import { FileProvisioner } from "../modules/device/provision-file";

const sha512 = (d: Uint8Array) => nacl.hash(d);

function recordingLog(lines: string[] = []): Log & { lines: string[] } {
  const log = ((level, message, fields) => {
    lines.push(`${level} ${message} ${JSON.stringify(fields ?? {})}`);
  }) as Log & { lines: string[] };
  log.lines = lines;
  return log;
}

// ------------------------------------------------------------------ Wi-Fi

/** The ECMA-419 Wi-Fi class as modules/io/wifi/esp32 behaves: one attempt per connect(), onChanged on every level change. */
class FakeWifi {
  static last: FakeWifi | undefined;
  connection = WIFI_DISCONNECTED;
  address: string | undefined;
  RSSI: number | undefined = -60;
  connects: Array<{ SSID: string; password?: string }> = [];
  disconnects = 0;
  closed = false;
  #onChanged: ((p: "connection" | "address") => void) | undefined;
  constructor(options: { onChanged?: (p: "connection" | "address") => void }) {
    this.#onChanged = options.onChanged;
    FakeWifi.last = this;
  }
  connect(o: { SSID: string; password?: string }): void {
    if (this.connection === WIFI_CONNECTING) throw new Error("already connecting");
    this.connects.push(o);
    this.level(WIFI_CONNECTING);
  }
  disconnect(): void {
    this.disconnects++;
    this.level(WIFI_DISCONNECTED);
  }
  close(): void {
    this.closed = true;
  }
  level(connection: number): void {
    if (connection === this.connection) return;
    this.connection = connection;
    this.address = connection === WIFI_ADDRESSED ? "192.168.1.23" : undefined;
    this.#onChanged?.("connection");
  }
}

function wifi(clock: ManualClock, log = recordingLog()) {
  const states: NetworkState[] = [];
  const link = new WifiLink({
    io: FakeWifi, ssid: "Flat-4B", password: "correct horse battery staple",
    schedule: (cb, ms) => clock.schedule(cb, ms), random: seededRandom("wifi"), log, minRetryMs: 2000, maxRetryMs: 60_000, joinTimeoutMs: 20_000,
  });
  link.start((s) => states.push(s));
  return { link, states, io: FakeWifi.last!, log };
}

test("wifi: joins with the provisioned credentials and reports up only with an address", (t) => {
  const clock = new ManualClock();
  const { link, states, io, log } = wifi(clock);
  t.deepEqual(io.connects, [{ SSID: "Flat-4B", password: "correct horse battery staple" }]);
  io.level(WIFI_ASSOCIATED);
  t.is(link.state, "joining");
  io.level(WIFI_ADDRESSED);
  t.is(link.state, "up");
  t.deepEqual(states, ["joining", "up"]);
  t.false(log.lines.join("\n").includes("correct horse"), "the passphrase is never logged");
  t.false(log.lines.join("\n").includes("Flat-4B"), "nor the SSID");
});

test("wifi: a failed attempt is retried with growing, bounded delays; an attempt without an address times out", (t) => {
  const clock = new ManualClock();
  const { link, io } = wifi(clock);
  // Each attempt fails at once (wrong passphrase, no access point): the gaps are the backoff.
  const gaps: number[] = [];
  for (let i = 0; i < 9; i++) {
    const start = clock.now;
    const before = io.connects.length;
    io.level(WIFI_DISCONNECTED);
    t.is(link.state, "down");
    while (io.connects.length === before && clock.now - start < 120_000) clock.advance(100);
    t.is(io.connects.length, before + 1, "exactly one new attempt");
    gaps.push(clock.now - start);
  }
  gaps.forEach((g, i) => {
    const window = Math.min(60_000, 2000 * 2 ** i);
    t.true(g >= Math.max(2000, window / 2) - 100 && g <= window + 100, `gap ${i}: ${g} for window ${window}`);
  });
  t.true(gaps[8] >= 30_000, "backed off to the maximum window");
  // An attempt that associates but never gets an address is abandoned after joinTimeoutMs.
  const before = io.connects.length;
  io.level(WIFI_ASSOCIATED);
  clock.advance(20_000);
  t.true(io.disconnects > 0);
  t.is(link.state, "down");
  clock.advance(61_000);
  t.is(io.connects.length, before + 1);
});

test("wifi: a joined link that drops is rejoined after the short delay, with the failure count reset", (t) => {
  const clock = new ManualClock();
  const { link, states, io } = wifi(clock);
  io.level(WIFI_ADDRESSED);
  link.failures = 5;
  io.level(WIFI_DISCONNECTED);
  t.is(link.state, "down");
  t.is(link.failures, 0);
  clock.advance(1999);
  t.is(io.connects.length, 1);
  clock.advance(1);
  t.is(io.connects.length, 2);
  io.level(WIFI_ADDRESSED);
  t.deepEqual(states, ["joining", "up", "down", "joining", "up"]);
  link.stop();
  t.true(io.closed);
  t.is(link.state, "down");
  clock.advance(600_000);
  t.is(io.connects.length, 2, "nothing after stop");
});

test("host network: up once started, asynchronously", (t) => {
  const clock = new ManualClock();
  const n = new HostNetwork((cb, ms) => clock.schedule(cb, ms));
  const seen: string[] = [];
  n.start((s) => seen.push(s));
  t.deepEqual(seen, []);
  clock.advance(0);
  t.deepEqual(seen, ["up"]);
});

// ------------------------------------------------------------------ SNTP

const FLOOR = 1_735_689_600_000;

function timeSync(clock: ManualClock, answer: (host: string, cb: (m: number, v?: unknown) => void) => void, resolveTo: string | null = "203.0.113.7") {
  let now = 0; // the board's clock after power-up: 1970
  const asked: string[] = [];
  const resolved: string[] = [];
  let synced = 0;
  class FakeSntp {
    constructor(o: { host: string }, cb: (m: number, v?: unknown) => void) {
      asked.push(o.host);
      answer(o.host, cb);
    }
  }
  const sync = new TimeSync({
    host: "time.aws.com",
    resolve: (host, done) => {
      resolved.push(host);
      clock.schedule(() => done(resolveTo ?? undefined), 5);
    },
    sntp: FakeSntp,
    setTime: (s) => (now = s * 1000),
    now: () => now,
    monotonic: () => clock.monotonic(),
    schedule: (cb, ms) => clock.schedule(cb, ms),
    floorMs: FLOOR,
    log: recordingLog(),
    onSynced: () => synced++,
    minRetryMs: 15_000,
    maxRetryMs: 600_000,
  });
  return { sync, asked, resolved, get now() { return now; }, get synced() { return synced; } };
}

test("sntp: resolves the allowlisted host through the resolver, then asks that address; the clock is set once the answer is past the floor", (t) => {
  const clock = new ManualClock();
  const s = timeSync(clock, (_h, cb) => clock.schedule(() => cb(SNTP_TIME, 1_790_000_000), 50));
  s.sync.start();
  t.false(s.sync.synced);
  t.deepEqual(s.resolved, ["time.aws.com"]);
  clock.advance(100);
  t.deepEqual(s.asked, ["203.0.113.7"], "the SDK class only ever sees the address the resolver returned");
  t.true(s.sync.synced);
  t.is(s.now, 1_790_000_000_000);
  t.is(s.synced, 1);
  // Refreshed later, every 6 hours.
  clock.advance(6 * 3600_000);
  t.is(s.asked.length, 2);
});

test("sntp: a time before the firmware's floor is refused; failures back off up to the maximum", (t) => {
  const clock = new ManualClock();
  let reply: [number, unknown] = [SNTP_TIME, 1_000_000]; // 1970: a wrong (or forged) answer
  const s = timeSync(clock, (_h, cb) => clock.schedule(() => cb(...reply), 10));
  s.sync.start();
  clock.advance(100);
  t.false(s.sync.synced);
  t.is(s.now, 0, "never set");
  const times: number[] = [];
  reply = [SNTP_ERROR, "no response from SNTP server"];
  for (let i = 0; i < 8; i++) {
    const before = s.asked.length;
    const start = clock.now;
    while (s.asked.length === before) clock.advance(1000);
    times.push(clock.now - start);
  }
  t.true(times[0] >= 15_000 && times[0] <= 16_100, `first retry ${times[0]}`);
  t.true(times[1] > times[0] && times[2] > times[1], `growing: ${times}`);
  t.true(times[7] <= 600_000 + 1100, `bounded: ${times[7]}`);
  reply = [SNTP_TIME, 1_790_000_000];
  clock.advance(700_000);
  t.true(s.sync.synced);
});

test("sntp: a name that does not resolve is a failure and a retry, never a query to anything else", (t) => {
  const clock = new ManualClock();
  const s = timeSync(clock, () => t.fail("no query without an address"), null);
  s.sync.start();
  clock.advance(100_000);
  t.deepEqual(s.asked, []);
  t.true(s.resolved.length >= 3, `retried: ${s.resolved.length}`);
  t.true(s.resolved.every((h) => h === "time.aws.com"));
  t.false(s.sync.synced);
  s.sync.stop();
  const n = s.resolved.length;
  clock.advance(3_600_000);
  t.is(s.resolved.length, n, "nothing after stop");
});

test("sntp: a clock already past the floor is trusted at start and refreshed", (t) => {
  const clock = new ManualClock();
  const asked: string[] = [];
  let synced = 0;
  const sync = new TimeSync({
    host: "time.aws.com",
    resolve: (_h, done) => done("203.0.113.7"),
    sntp: class { constructor(o: { host: string }) { asked.push(o.host); } },
    setTime: () => {},
    now: () => FLOOR + 1000,
    monotonic: () => clock.monotonic(),
    schedule: (cb, ms) => clock.schedule(cb, ms),
    floorMs: FLOOR,
    log: recordingLog(),
    onSynced: () => synced++,
  });
  sync.start();
  t.true(sync.synced);
  t.is(synced, 1);
  t.deepEqual(asked, ["203.0.113.7"]);
});

// ------------------------------------------------------------------ the gate

class FakeTransport implements MqttTransport {
  connects: MqttHandlers[] = [];
  closes = 0;
  connect(h: MqttHandlers): void {
    this.connects.push(h);
  }
  publish(): Promise<void> {
    return Promise.resolve();
  }
  subscribe(): Promise<void> {
    return Promise.resolve();
  }
  close(): void {
    this.closes++;
  }
}

class FakeNetwork {
  state: NetworkState = "down";
  #cb: ((s: NetworkState) => void) | undefined;
  start(cb: (s: NetworkState) => void): void {
    this.#cb = cb;
  }
  stop(): void {}
  set(s: NetworkState): void {
    this.state = s;
    this.#cb?.(s);
  }
}

test("bring-up: no TLS attempt before the network is up and the clock is set; the held connect goes out once both are", (t) => {
  const net = new FakeNetwork();
  const time = { synced: false, started: 0, start() { this.started++; }, stop() {} };
  const statuses: string[] = [];
  const link = { downs: [] as string[], ups: 0, networkDown(r?: string) { this.downs.push(r ?? ""); }, networkUp() { this.ups++; } };
  const bring = new BringUp({ network: net, time, log: recordingLog(), onStatus: (s) => statuses.push(s) });
  const inner = new FakeTransport();
  const gated = bring.gate(inner);
  const handlers = { connected: 0, closed: [] as string[], onConnect() { this.connected++; }, onMessage() {}, onClose(r: string) { this.closed.push(r); } };
  bring.start();
  bring.attachLink(link);
  gated.connect(handlers);
  t.is(inner.connects.length, 0, "held: no network");
  net.set("up");
  t.is(time.started, 1, "time sync starts when the network first comes up");
  t.is(inner.connects.length, 0, "held: no time");
  time.synced = true;
  bring.timeChanged();
  t.is(inner.connects.length, 1, "released");
  inner.connects[0].onConnect();
  t.is(handlers.connected, 1);
  t.true(bring.online);
  // Wi-Fi goes: the Link hears it at once; the session's close comes through to the Link.
  net.set("down");
  t.deepEqual(link.downs, ["wifi: disconnected"]);
  inner.connects[0].onClose("connection lost");
  t.deepEqual(handlers.closed, ["connection lost"]);
  gated.connect(handlers);
  t.is(inner.connects.length, 1, "held again while the network is down");
  net.set("up");
  t.is(link.ups, 2, "the first join (a no-op for the Link) and this one");
  t.is(time.started, 1, "time sync is started once");
  t.is(inner.connects.length, 2);
  t.deepEqual(statuses, ["connecting", "online", "offline"]);
  gated.close();
  t.is(inner.closes, 1);
});

test("bring-up: a simulator (no time source) is ready as soon as its network is", (t) => {
  const net = new FakeNetwork();
  const bring = new BringUp({ network: net, log: recordingLog() });
  const inner = new FakeTransport();
  bring.start();
  bring.gate(inner).connect({ onConnect() {}, onMessage() {}, onClose() {} });
  t.is(inner.connects.length, 0);
  net.set("up");
  t.is(inner.connects.length, 1);
});

// ------------------------------------------------------------------ LED and chime

function trace(clock: ManualClock): { writes: Array<[number, boolean]>; write: (on: boolean) => void } {
  const writes: Array<[number, boolean]> = [];
  return { writes, write: (on) => writes.push([clock.now, on]) };
}

test("led: each status plays its pattern, a flash plays once over it, and the pattern resumes", (t) => {
  const clock = new ManualClock();
  const out = trace(clock);
  const led = new StatusLed({ write: out.write, schedule: (cb, ms) => clock.schedule(cb, ms) });
  led.set("connecting");
  clock.advance(1000);
  // 4 Hz: a change every 125 ms.
  t.deepEqual(out.writes.slice(0, 4), [[0, true], [125, false], [250, true], [375, false]]);
  t.is(out.writes.length, 9, "0 to 1000 ms inclusive");
  led.set("online");
  t.deepEqual(out.writes.at(-1), [1000, true], "steady on (it was already lit at 1000 ms)");
  const n = out.writes.length;
  clock.advance(10_000);
  t.is(out.writes.length, n, "steady: no timer");
  led.flash("ring-sent");
  clock.advance(LED_FLASHES["ring-sent"].reduce((a, b) => a + b, 0));
  t.deepEqual(out.writes.slice(n), [[11_000, false], [11_150, true], [12_050, false], [12_250, true]], "visible over steady on, then steady on again");
  led.set("provisioning");
  clock.advance(2000);
  const p = out.writes.filter(([at]) => at > 12_250);
  t.deepEqual(p.slice(0, 4), [[12_370, false], [12_490, true], [12_610, false], [14_250, true]], "double blink every 2 s");
  // Every status has a distinct pattern, so they can be told apart.
  const shapes = Object.values(LED_PATTERNS).map((x) => x.join(","));
  t.is(new Set(shapes).size, shapes.length);
  led.close();
  t.false(out.writes.at(-1)![1]);
});

test("chime: plays its pattern once per ring, ignores rings while sounding, and always ends off", (t) => {
  const clock = new ManualClock();
  const out = trace(clock);
  const chime = new Chime({ write: out.write, pattern: [150, 150, 300], schedule: (cb, ms) => clock.schedule(cb, ms) });
  t.true(chime.ring());
  t.false(chime.ring(), "still playing");
  clock.advance(600);
  t.deepEqual(out.writes, [[0, false], [0, true], [150, false], [300, true], [600, false]]);
  t.true(chime.ring());
  clock.advance(600);
  t.is(chime.rings, 2);
  const even = new Chime({ write: out.write, pattern: [100, 100], schedule: (cb, ms) => clock.schedule(cb, ms) });
  even.ring();
  clock.advance(1000);
  t.false(out.writes.at(-1)![1], "an even-length pattern still ends off");
});

// ------------------------------------------------------------------ provisioning over the console

let bundle: ProvisioningBundle;
test.before(async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dw-bringup-pki-"));
  const c = await issueThingCredentials(dir, "doorward-porch-9");
  bundle = {
    thing: "doorward-porch-9", wifi: { ssid: "Flat-4B", password: "correct horse battery staple" }, endpoint: "abc123-ats.iot.eu-west-1.amazonaws.com",
    cert: c.certDer, key: c.keyDer, ca: c.caDer, owner: { signKey: new Uint8Array(32).fill(1), boxKey: new Uint8Array(32).fill(2) },
  };
});

function provisionedDevice(seed: string) {
  const store = new MemoryStore();
  const vault = Vault.open({ store, keys: { storageKey: () => new Uint8Array(32).fill(7) }, random: seededRandom(`${seed}-v`) });
  return { store, vault, prov: new Provisioning({ vault, random: seededRandom(`${seed}-p`) }) };
}

/**
 * Host and device joined by an in-memory console. The host→device direction
 * arrives in fragments; `mangle` may drop or corrupt a line in flight. The
 * device log shares the device→host direction, as on a real console.
 */
function consoleLink(clock: ManualClock, device: ReturnType<typeof provisionedDevice>, mangle: (line: string, n: number) => string | undefined = (l) => l) {
  const toDevice: number[] = [];
  const replies: Reply[] = [];
  const waiting: Array<(r: Reply | undefined) => void> = [];
  const deviceLog = recordingLog();
  const consoleOut: string[] = [];
  let sent = 0;
  const port: ConsolePort = {
    read(max) {
      if (toDevice.length === 0) return undefined;
      const n = Math.min(max, 1 + (toDevice.length % 37)); // uneven fragments
      return Uint8Array.from(toDevice.splice(0, n));
    },
    writeLine(line) {
      consoleOut.push(line);
      const r = parseReply(line);
      if (!r) return;
      const w = waiting.shift();
      if (w) w(r);
      else replies.push(r);
    },
  };
  let provisioned: { thing: string } | undefined;
  const provisioner = new ConsoleProvisioner({
    port, provisioning: device.prov, sha512, schedule: (cb, ms) => clock.schedule(cb, ms), now: () => clock.now, log: deviceLog,
    onProvisioned: (r) => (provisioned = r),
  });
  const host = {
    writeLine(line: string) {
      const out = mangle(line, sent++);
      if (out === undefined) return;
      for (const ch of Buffer.from(out + "\r\n", "latin1")) toDevice.push(ch);
      deviceLog("info", "noise on the console that is not a reply");
    },
    async nextReply(timeoutMs: number): Promise<Reply | undefined> {
      if (replies.length) return replies.shift();
      return new Promise((resolve) => {
        waiting.push(resolve);
        // Drive the device until it answers or the time is up (manual clock: bounded steps).
        let spent = 0;
        const step = () => {
          if (!waiting.includes(resolve)) return;
          if (spent >= timeoutMs) {
            waiting.splice(waiting.indexOf(resolve), 1);
            resolve(undefined);
            return;
          }
          clock.advance(10);
          spent += 10;
          setImmediate(step);
        };
        setImmediate(step);
      });
    },
  };
  return { provisioner, host, consoleOut, deviceLog, get provisioned() { return provisioned; } };
}

test("console provisioning: a bundle sent by the host is stored; the reply names the thing and the device key, never a secret", async (t) => {
  const clock = new ManualClock();
  const device = provisionedDevice("console-ok");
  const link = consoleLink(clock, device);
  link.provisioner.start();
  const bytes = encodeBundle(bundle);
  const result = await sendBundle({ bundle: bytes, sha512, writeLine: (l) => link.host.writeLine(l), nextReply: (ms) => link.host.nextReply(ms), timeoutMs: 2000 });
  t.is(result.thing, "doorward-porch-9");
  t.true(device.prov.status().provisioned);
  t.is(result.publicKey, toHex(device.prov.publicKey()!));
  t.is(link.provisioned?.thing, "doorward-porch-9");
  const everything = link.consoleOut.join("\n") + link.deviceLog.lines.join("\n");
  t.false(everything.includes("correct horse"), "the passphrase never appears on the console");
  t.true(link.consoleOut.every((l) => l.length <= MAX_LINE));
  t.true(frameBundle(bytes, sha512).data.length > 20, "the bundle really was chunked");
  t.is(device.prov.identity().wifi.password, "correct horse battery staple");
});

test("console provisioning: a dropped line is sent again; a corrupted bundle is refused whole", async (t) => {
  const clock = new ManualClock();
  const device = provisionedDevice("console-lossy");
  // Drop the 5th line once; duplicate nothing. Chunk 3's ACK arrives after a resend.
  const dropped = new Set<number>();
  const link = consoleLink(clock, device, (line, n) => {
    if (n === 5 && !dropped.has(n)) {
      dropped.add(n);
      return undefined;
    }
    return line;
  });
  link.provisioner.start();
  const result = await sendBundle({ bundle: encodeBundle(bundle), sha512, writeLine: (l) => link.host.writeLine(l), nextReply: (ms) => link.host.nextReply(ms), timeoutMs: 500 });
  t.is(result.thing, "doorward-porch-9");
  t.is(device.prov.identity().tls.clientKey.length, bundle.key.length);

  // A bit flipped in one chunk (valid base64url, wrong byte): the digest catches it and nothing is stored.
  const clock2 = new ManualClock();
  const fresh = provisionedDevice("console-flip");
  const link2 = consoleLink(clock2, fresh, (line) => {
    if (!line.startsWith(`${PREFIX} DATA 4 `)) return line;
    const b64 = line.split(" ")[3];
    const flipped = (b64[10] === "A" ? "B" : "A");
    return line.slice(0, line.length - b64.length) + b64.slice(0, 10) + flipped + b64.slice(11);
  });
  link2.provisioner.start();
  const err = await t.throwsAsync(sendBundle({ bundle: encodeBundle(bundle), sha512, writeLine: (l) => link2.host.writeLine(l), nextReply: (ms) => link2.host.nextReply(ms), timeoutMs: 500 }), { instanceOf: ProvisionError });
  t.regex(err!.message, /digest mismatch/);
  t.false(fresh.prov.status().provisioned);
  t.deepEqual(fresh.store.keys().filter((k) => k !== "v_meta"), [], "no secret was written");
});

test("console provisioning: a provisioned device refuses; junk, overlong lines and out-of-order chunks are refused without storing", async (t) => {
  const clock = new ManualClock();
  const device = provisionedDevice("console-refuse");
  device.prov.accept(encodeBundle(bundle));
  const link = consoleLink(clock, device);
  link.provisioner.start();
  t.regex(link.consoleOut[0], /^DWPROV1 STATE provisioned/);
  await t.throwsAsync(sendBundle({ bundle: encodeBundle(bundle), sha512, writeLine: (l) => link.host.writeLine(l), nextReply: (ms) => link.host.nextReply(ms), timeoutMs: 500 }), { message: /already provisioned/ });

  const fresh = provisionedDevice("console-junk");
  const out: string[] = [];
  const p = new ConsoleProvisioner({
    port: { read: () => undefined, writeLine: (l) => out.push(l) }, provisioning: fresh.prov, sha512,
    schedule: (cb, ms) => clock.schedule(cb, ms), now: () => clock.now, log: recordingLog(), onProvisioned: () => t.fail(),
  });
  const send = (s: string) => p.receive(Buffer.from(s, "latin1"));
  send("hello world\n" + "x".repeat(5000) + "\n");
  send(`${PREFIX} ${"A".repeat(300)}\n`);
  t.deepEqual(out, [], "noise and overlong lines get no reply");
  const frames = frameBundle(encodeBundle(bundle), sha512);
  send(frames.begin + "\n");
  t.regex(out.at(-1)!, new RegExp(`READY ${CHUNK_BYTES}`));
  send(frames.data[0] + "\n" + frames.data[2] + "\n");
  t.regex(out.at(-1)!, /ERR chunk out of order/);
  send(frames.end + "\n");
  t.regex(out.at(-1)!, /ERR no transfer/);
  send(`${PREFIX} BEGIN 999999 ${"0".repeat(32)}\n`);
  t.regex(out.at(-1)!, /ERR bundle length/);
  // An idle transfer is dropped after 30 s.
  send(frames.begin + "\n" + frames.data[0] + "\n");
  p.start();
  clock.advance(31_000);
  t.true(out.some((l) => /transfer idle/.test(l)));
  p.stop();
  t.false(fresh.prov.status().provisioned);
});

test("file provisioning (simulator): the file is deleted before it is read into the vault; a bad bundle is refused and deleted too", (t) => {
  const clock = new ManualClock();
  const files = new Map<string, Uint8Array>();
  const removed: string[] = [];
  const fs2 = {
    read: (p: string, max: number) => files.get(p)?.slice(0, max),
    remove: (p: string) => {
      removed.push(p);
      return files.delete(p);
    },
  };
  const device = provisionedDevice("file");
  const log = recordingLog();
  let done = 0;
  const p = new FileProvisioner({ files: fs2, path: "/repo/.doorward/lin/bundle.json", provisioning: device.prov, schedule: (cb, ms) => clock.schedule(cb, ms), log, onProvisioned: () => done++ });
  p.start();
  clock.advance(5000);
  t.is(done, 0);
  files.set("/repo/.doorward/lin/bundle.json", new TextEncoder().encode('{"kind":"nope"}'));
  clock.advance(1000);
  t.deepEqual(removed, ["/repo/.doorward/lin/bundle.json"]);
  t.regex(log.lines.join("\n"), /bundle refused/);
  files.set("/repo/.doorward/lin/bundle.json", encodeBundle(bundle));
  clock.advance(1000);
  t.is(done, 1);
  t.true(device.prov.status().provisioned);
  t.false(files.has("/repo/.doorward/lin/bundle.json"));
  t.false(log.lines.join("\n").includes("correct horse"));
  clock.advance(10_000);
  t.is(removed.length, 2, "stops polling once provisioned");
});

test("console provisioning: a chunk sent twice (its ACK was lost) is acknowledged twice and stored once", (t) => {
  const clock = new ManualClock();
  const fresh = provisionedDevice("console-dup");
  const out: string[] = [];
  let done = 0;
  const p = new ConsoleProvisioner({
    port: { read: () => undefined, writeLine: (l) => out.push(l) }, provisioning: fresh.prov, sha512,
    schedule: (cb, ms) => clock.schedule(cb, ms), now: () => clock.now, log: recordingLog(), onProvisioned: () => done++,
  });
  const frames = frameBundle(encodeBundle(bundle), sha512);
  const send = (s: string) => p.receive(Buffer.from(s + "\n", "latin1"));
  send(frames.begin);
  frames.data.forEach((line, i) => {
    send(line);
    if (i === 3 || i === 7) send(line);
  });
  t.is(out.filter((l) => l === `${PREFIX} ACK 3`).length, 2);
  t.is(out.filter((l) => l === `${PREFIX} ACK 7`).length, 2);
  send(frames.end);
  t.regex(out.at(-1)!, /^DWPROV1 OK doorward-porch-9 [0-9a-f]{64}$/);
  t.is(done, 1);
  t.deepEqual(fresh.prov.identity().tls.clientCertificates[0], bundle.cert);
});
