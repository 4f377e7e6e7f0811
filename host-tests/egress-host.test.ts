/*
 * The host chokepoint with real sockets on loopback: a would-be phone-home
 * listener counts every TCP connection it receives. Refused destinations, in
 * every spelling of its address, reach neither DNS nor that listener; the same
 * listener does see a connection once it is allowlisted (so the count can
 * fail). mqtt.js's own way around a destination, the MQTTJS_SOCKS_PROXY
 * environment variable, is shown leaking with plain mqtt.connect and closed
 * by the chokepoint.
 */
import test from "ava";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import mqtt from "mqtt";
import { EgressGuard, EgressRefusedError, withDevelopmentEntries, type Allowlist } from "../modules/core/egress";
import { HostEgress, type HostMqttSessionOptions, type LookupFunction } from "../modules/host/egress";
import { HostMqttTransport } from "../modules/host/mqtt-transport";
import { ensureDevPki, issueThingCredentials, type DevPki, type IssuedCredentials } from "../tools/pki";
import { startStandin, type Standin } from "../tools/standin";

const THING = "egress-host";
let pki: DevPki;
let creds: IssuedCredentials;
let standin: Standin;
let phoneHome: net.Server;
let phonePort: number;
let phoneConnections = 0;

test.before(async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dw-egress-host-"));
  pki = await ensureDevPki(dir);
  creds = await issueThingCredentials(dir, THING);
  standin = await startStandin({ pki, connectIntervalMs: 0 });
  phoneHome = net.createServer((socket) => {
    phoneConnections++;
    socket.destroy();
  });
  await new Promise<void>((resolve) => phoneHome.listen(0, "127.0.0.1", resolve));
  phonePort = (phoneHome.address() as net.AddressInfo).port;
});

test.after.always(async () => {
  await standin?.close();
  await new Promise((resolve) => phoneHome?.close(resolve));
});

const empty: Allowlist = Object.freeze({ profile: "development" as const, entries: Object.freeze([]) });
const allow = (...ports: number[]) => new EgressGuard(withDevelopmentEntries(empty, ports.map((port) => ({ host: "127.0.0.1", port, purpose: "mqtt" as const }))));
const session = (): HostMqttSessionOptions => ({ clientId: THING, ca: pki.ca.certPem, cert: creds.certPem, key: creds.keyPem, servername: "localhost", keepaliveSeconds: 60, connectTimeoutMs: 3000 });
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A DNS stand-in that records every name asked and knows only localhost. */
function spyLookup() {
  const calls: string[] = [];
  const lookup = ((hostname: string, options: { all?: boolean } | undefined, callback: (...a: unknown[]) => void) => {
    calls.push(hostname);
    if (hostname !== "localhost") callback(Object.assign(new Error(`ENOTFOUND ${hostname}`), { code: "ENOTFOUND" }));
    else if (options?.all) callback(null, [{ address: "127.0.0.1", family: 4 }]);
    else callback(null, "127.0.0.1", 4);
  }) as unknown as LookupFunction;
  return { calls, lookup };
}

test.serial("a refused destination, in any spelling of the phone-home address, never reaches DNS or a socket", async (t) => {
  const { calls, lookup } = spyLookup();
  const egress = new HostEgress(allow(standin.port), { lookup });
  const before = phoneConnections;
  const spellings = ["127.0.0.1", "127.1", "2130706433", "0x7f000001", "0177.0.0.1", "::ffff:127.0.0.1", "[::ffff:7f00:1]", "::1", "localhost", "LOCALHOST.", "phone-home.example", "user@127.0.0.1", `127.0.0.1:${phonePort}`, "127.0.0.1%2f"];
  for (const host of spellings) {
    const error = t.throws(() => egress.connectMqtt({ host, port: phonePort, requester: "test/rogue" }, session()), { instanceOf: EgressRefusedError }, host);
    t.truthy(error?.reason);
  }
  // The allowlisted stand-in on another port does not make the phone-home port reachable either.
  t.throws(() => egress.connectMqtt({ host: "127.0.0.1", port: phonePort, requester: "test/rogue" }, session()), { instanceOf: EgressRefusedError, message: /wrong-port/ });
  await pause(300);
  t.is(phoneConnections - before, 0, "the phone-home listener received no connection");
  t.deepEqual(calls, [], "no DNS look-up happened");
  t.is(egress.guard.status().refused, spellings.length + 1);
});

test.serial("control: the same listener sees the connection, and DNS is asked only for the checked name, once allowlisted", async (t) => {
  const { calls, lookup } = spyLookup();
  const localhost = new EgressGuard(withDevelopmentEntries(empty, [{ host: "localhost", port: phonePort, purpose: "mqtt" }]));
  const egress = new HostEgress(localhost, { lookup });
  const before = phoneConnections;
  const client = egress.connectMqtt({ host: "LocalHost.", port: phonePort, requester: "test/control" }, session());
  client.on("error", () => {});
  const end = Date.now() + 3000;
  while (phoneConnections === before && Date.now() < end) await pause(10);
  client.end(true);
  t.is(phoneConnections - before, 1, "an allowlisted destination is reached");
  t.deepEqual(calls, ["localhost"], "DNS saw only the normalised name");
});

test.serial("HostMqttTransport: a refused broker ends the attempt with onClose and no socket; an allowed one connects", async (t) => {
  const guard = allow(standin.port);
  const egress = new HostEgress(guard);
  const before = phoneConnections;
  const rogue = new HostMqttTransport({ host: "127.0.0.1", port: phonePort, clientId: THING, ca: pki.ca.certPem, cert: creds.certPem, key: creds.keyPem, servername: "localhost", egress });
  const reason = await new Promise<string>((resolve) => rogue.connect({ onConnect: () => resolve("connected?!"), onMessage: () => {}, onClose: resolve }));
  t.regex(reason, /egress: 127\.0\.0\.1:\d+ refused \(wrong-port\)/);
  const ok = new HostMqttTransport({ host: "127.0.0.1", port: standin.port, clientId: THING, ca: pki.ca.certPem, cert: creds.certPem, key: creds.keyPem, servername: "localhost", egress });
  await new Promise<void>((resolve, reject) => ok.connect({ onConnect: resolve, onMessage: () => {}, onClose: (r) => reject(new Error(r)) }));
  await ok.publish(`doorward/${THING}/events`, new Uint8Array([1]), 1).catch(() => {});
  ok.close();
  await pause(200);
  t.is(phoneConnections - before, 0);
  t.like(guard.status(), { allowed: 1, refused: 1 });
  // Without a guard, a transport is confined to its own loopback destination.
  t.throws(() => new HostMqttTransport({ host: "broker.example", port: 8883, clientId: THING, ca: "", cert: "", key: "" }), { message: /not loopback/ });
});

test.serial("MQTTJS_SOCKS_PROXY diverts plain mqtt.connect to another host; the chokepoint ignores it", async (t) => {
  const saved = process.env.MQTTJS_SOCKS_PROXY;
  process.env.MQTTJS_SOCKS_PROXY = `socks5://127.0.0.1:${phonePort}`;
  try {
    // What the transport did before the chokepoint: mqtt.js reads the variable and dials the proxy instead.
    const before = phoneConnections;
    const leaky = mqtt.connect({ protocol: "mqtts", host: "127.0.0.1", port: standin.port, servername: "localhost", clientId: THING, ca: pki.ca.certPem, cert: creds.certPem, key: creds.keyPem, reconnectPeriod: 0, connectTimeout: 2000 });
    leaky.on("error", () => {});
    const end = Date.now() + 3000;
    while (phoneConnections === before && Date.now() < end) await pause(10);
    leaky.end(true);
    t.is(phoneConnections - before, 1, "plain mqtt.js went to the 'proxy'");

    const after = phoneConnections;
    const transport = new HostMqttTransport({ host: "127.0.0.1", port: standin.port, clientId: THING, ca: pki.ca.certPem, cert: creds.certPem, key: creds.keyPem, servername: "localhost", egress: new HostEgress(allow(standin.port)) });
    await new Promise<void>((resolve, reject) => transport.connect({ onConnect: resolve, onMessage: () => {}, onClose: (r) => reject(new Error(r)) }));
    transport.close();
    await pause(200);
    t.is(phoneConnections - after, 0, "the chokepoint dialled the checked destination itself");
  } finally {
    if (saved === undefined) delete process.env.MQTTJS_SOCKS_PROXY;
    else process.env.MQTTJS_SOCKS_PROXY = saved;
  }
});
