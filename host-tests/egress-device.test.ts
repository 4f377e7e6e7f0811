/*
 * The device chokepoint (modules/device/egress.ts) and the real device
 * transport (modules/device/mqtt.ts) loaded on Node, with every Moddable
 * module they import replaced by a spy: a module-resolution hook maps
 * "embedded:network/mqtt/client", "embedded:io/socket/tcp", ".../tcp/tls",
 * "embedded:io/socket/udp", "net", "timer", "Resource" and "mc/config", when
 * imported from modules/device, to fakes that record every construction, DNS
 * question and datagram. The fake MQTT client behaves like the SDK's: it asks
 * its dns.io for the host, then builds its socket from options.socket.
 */
import test from "ava";
import crypto from "node:crypto";
import fs from "node:fs";
import { register } from "node:module";
import os from "node:os";
import path from "node:path";
import { EgressConfigError, EgressGuard, parseEgressConfig } from "../modules/core/egress";
import type { MqttHandlers } from "../modules/core/ports";
import { ensureDevPki } from "../tools/pki";
import { ManualClock } from "./helpers/manual-clock";

const BROKER = "abc123xyz-ats.iot.eu-west-1.amazonaws.com";
const NTP = "time.aws.com";
const BROKER_IP = "192.0.2.10";
const NTP_IP = "192.0.2.123";

// ------------------------------------------------------------------ the fake SDK

interface Spies {
  dns: string[];
  clients: Array<Record<string, any>>;
  tls: Array<Record<string, any>>;
  tcp: Array<Record<string, any>>;
  udp: FakeUdp[];
  timers: Array<{ at: number; fn: () => void; id: number }>;
  /** What Net.resolve answers. */
  answers: Record<string, string | undefined>;
}
const spies: Spies = { dns: [], clients: [], tls: [], tcp: [], udp: [], timers: [], answers: { [BROKER]: BROKER_IP, [NTP]: NTP_IP } };
const reset = () => { spies.dns.length = 0; spies.clients.length = 0; spies.tls.length = 0; spies.tcp.length = 0; spies.udp.length = 0; };
const touched = () => spies.dns.length + spies.clients.length + spies.tls.length + spies.tcp.length + spies.udp.length;

class FakeClient {
  constructor(options: Record<string, any>) {
    spies.clients.push(options);
    const dns = new options.dns.io(options.dns);
    dns.resolve({
      host: options.host,
      onResolved: (host: string, address: string) => {
        try {
          new options.socket.io({ ...options.socket, address, host, port: options.port, onReadable() {}, onWritable() {}, onError() {} });
        } catch {
          options.onError?.call(this);
        }
      },
      onError: () => options.onError?.call(this),
    });
  }
  write(): number { return 0; }
  read(): undefined { return undefined; }
  close(): void {}
}
class FakeTls {
  constructor(options: Record<string, any>) {
    spies.tls.push(options);
    new options.TCP.io({ ...options });
  }
}
class FakeTcp {
  constructor(options: Record<string, any>) {
    spies.tcp.push(options);
  }
}
class FakeUdp {
  writes: Array<{ data: Uint8Array; address: string; port: number }> = [];
  closed = false;
  inbox: Array<ArrayBuffer & { address: string; port: number }> = [];
  constructor(readonly options: { onReadable?: (this: FakeUdp, n: number) => void; onError?: () => void }) {
    spies.udp.push(this);
  }
  write(data: Uint8Array, address: string, port: number): void {
    this.writes.push({ data: new Uint8Array(data), address, port });
  }
  read() {
    return this.inbox.shift();
  }
  close(): void {
    this.closed = true;
  }
  /** A datagram arrives. */
  deliver(bytes: Uint8Array, address: string, port: number): void {
    this.inbox.push(Object.assign(bytes.slice().buffer, { address, port }));
    this.options.onReadable?.call(this, 1);
  }
}
let now = 0;
let timerId = 0;
const Timer = {
  set(fn: () => void, ms: number) { const id = ++timerId; spies.timers.push({ at: now + ms, fn, id }); return id; },
  clear(id: number) { spies.timers = spies.timers.filter((t) => t.id !== id); },
};
function advance(ms: number): void {
  const end = now + ms;
  for (;;) {
    spies.timers.sort((a, b) => a.at - b.at);
    const t = spies.timers[0];
    if (!t || t.at > end) break;
    spies.timers.shift();
    now = t.at;
    t.fn();
  }
  now = end;
}
const resources: Record<string, Uint8Array> = Object.fromEntries(["AmazonRootCA1.der", "AmazonRootCA3.der"].map((n) => [n, new Uint8Array(fs.readFileSync(path.join("certs", n)))]));
class Resource {
  static exists(name: string) { return name in resources; }
  constructor(name: string) { return resources[name].slice().buffer as unknown as Resource; }
}
const config: Record<string, unknown> = {
  broker: BROKER,
  doorward: { egress: { profile: "production", allow: [{ host: "<prefix>-ats.iot.<region>.amazonaws.com", port: 8883, purpose: "mqtt" }, { host: NTP, port: 123, purpose: "ntp" }] } },
};

(globalThis as Record<string, unknown>).__dwFakes = {
  "mc/config": config,
  "embedded:network/mqtt/client": FakeClient,
  "embedded:io/socket/tcp": FakeTcp,
  "embedded:io/socket/tcp/tls": FakeTls,
  "embedded:io/socket/udp": FakeUdp,
  net: { resolve(name: string, cb: (n: string, a?: string) => void) { spies.dns.push(name); setImmediate(() => cb(name, spies.answers[name])); } },
  timer: Timer,
  Resource,
};

// Map the Moddable specifiers, as imported from modules/device, onto the fakes above.
const hooks = `
const FAKES = ${JSON.stringify(["mc/config", "embedded:network/mqtt/client", "embedded:io/socket/tcp", "embedded:io/socket/tcp/tls", "embedded:io/socket/udp", "net", "timer", "Resource"])};
export async function resolve(specifier, context, next) {
  if (FAKES.includes(specifier) && context.parentURL && context.parentURL.includes("/modules/device/")) {
    return { url: "data:text/javascript," + encodeURIComponent("export default globalThis.__dwFakes[" + JSON.stringify(specifier) + "];"), shortCircuit: true };
  }
  return next(specifier, context);
}`;
register(`data:text/javascript,${encodeURIComponent(hooks)}`);

// Loaded by a path tsc does not follow: the device modules are type-checked by tsconfig.device.json, against the Moddable typings.
const load = (file: string): Promise<any> => import(file);
const { DeviceEgress, deviceEgress, parseNtpReply, SNTP_TIME, SNTP_RETRY, SNTP_ERROR } = await load("../modules/device/egress.ts");
const { createMqttTransport } = await load("../modules/device/mqtt.ts");
type DeviceSettings = import("../modules/device/settings").DeviceSettings;
type Ctor = new (...args: any[]) => any;
interface NetworkModules {
  client: Ctor;
  tls: Ctor;
  tcp: Ctor;
  udp: Ctor;
  resolve: (name: string, callback: (name: string, address?: string) => void) => void;
  schedule: (callback: () => void, delayMs: number) => () => void;
}

const fakes: NetworkModules = {
  client: FakeClient,
  tls: FakeTls,
  tcp: FakeTcp,
  udp: FakeUdp,
  resolve: (name, cb) => { spies.dns.push(name); setImmediate(() => cb(name, spies.answers[name])); },
  schedule: (fn, ms) => { const id = Timer.set(fn, ms); return () => Timer.clear(id); },
};
const development = () => new EgressGuard(parseEgressConfig({
  doorward: { egress: { profile: "development", allow: [{ host: NTP, port: 123, purpose: "ntp" }], development: [{ host: "127.0.0.1", port: 8883, purpose: "mqtt" }] } },
}));

const settle = async () => { for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r)); };

function settings(host: string, port = 8883, trustAnchors = ["AmazonRootCA1.der", "AmazonRootCA3.der"]): DeviceSettings {
  return { broker: { host, port, serverName: host }, keepAliveSeconds: 60, trustAnchors, trustProvisionedCa: false } as unknown as DeviceSettings;
}
const identity = (ca?: Uint8Array) => ({
  certificate: new Uint8Array([0x30, 1]).buffer, privateKey: new Uint8Array([0x30, 2]).buffer, signingSeed: new Uint8Array(32),
  ...(ca ? { ca: ca.slice().buffer } : {}),
});

function connect(transport: { connect(h: MqttHandlers): void }): Promise<string> {
  return new Promise((resolve) => transport.connect({ onConnect: () => resolve("connected"), onMessage: () => {}, onClose: resolve }));
}

// ------------------------------------------------------------------ tests

test.serial("the device transport to a destination off the allowlist ends before any DNS, client or socket exists", async (t) => {
  reset();
  const egress = deviceEgress();
  t.is(egress.guard.profile, "production", "built from mc/config");
  const clock = new ManualClock();
  for (const host of ["phone-home.example", `${BROKER}.evil.example`, "2130706433", "127.0.0.1", "::ffff:127.0.0.1", `user@${BROKER}`]) {
    const transport = createMqttTransport({ thing: "door-1", settings: settings(host), identity: identity(), clock, log: () => {} } as never);
    const closing = connect(transport);
    clock.advance(1);
    const reason = await closing;
    t.regex(reason, /egress: .* refused/, host);
  }
  const wrongPort = createMqttTransport({ thing: "door-1", settings: settings(BROKER, 443), identity: identity(), clock, log: () => {} } as never);
  const closing = connect(wrongPort);
  clock.advance(1);
  t.regex(await closing, /wrong-port/);
  await settle();
  t.deepEqual([spies.dns, spies.clients, spies.tls, spies.tcp, spies.udp], [[], [], [], [], []], "no look-up, no client, no socket");
  t.true(egress.guard.status().refused >= 7);
  // Control, through the same default binding (the SDK modules, here the spies): the allowed broker is reached.
  const allowed = createMqttTransport({ thing: "door-1", settings: settings(BROKER), identity: identity(), clock, log: () => {} } as never);
  allowed.connect({ onConnect: () => {}, onMessage: () => {}, onClose: () => {} });
  await settle();
  t.deepEqual(spies.dns, [BROKER]);
  t.deepEqual(spies.tcp.map((o) => `${o.address}:${o.port}`), [`${BROKER_IP}:8883`]);
  allowed.close();
});

test.serial("an allowed broker is dialled by its normalised name, and the sockets only to the address DNS gave for it", async (t) => {
  reset();
  const egress = new DeviceEgress(new EgressGuard(parseEgressConfig(config)), fakes);
  const clock = new ManualClock();
  const transport = createMqttTransport({ thing: "door-1", settings: settings(BROKER.toUpperCase() + "."), identity: identity(), clock, log: () => {}, egress } as never);
  transport.connect({ onConnect: () => {}, onMessage: () => {}, onClose: () => {} });
  await settle();
  t.deepEqual(spies.dns, [BROKER], "DNS was asked the normalised name only");
  t.is(spies.clients.length, 1);
  t.is(spies.clients[0].host, BROKER);
  t.deepEqual(spies.tls.map((o) => [o.address, o.port]), [[BROKER_IP, 8883]]);
  t.deepEqual(spies.tcp.map((o) => [o.address, o.port]), [[BROKER_IP, 8883]]);
  transport.close();

  // The socket classes handed to the transport refuse any other address or port, even after a good look-up.
  const io = egress.mqttIo("test/rogue");
  for (const options of [{ address: "192.0.2.66", port: 8883 }, { address: BROKER_IP, port: 443 }, { address: "0xc0.0.2.10", port: 8883 }, { host: BROKER, port: 8883 }, { from: {}, port: 8883 }]) {
    t.throws(() => new io.tls(options), { message: /egress: .* refused/ }, JSON.stringify(options));
    t.throws(() => new io.tcp(options), { message: /egress: .* refused/ }, JSON.stringify(options));
  }
  t.is(spies.tls.length, 1);
  t.is(spies.tcp.length, 1);
});

test.serial("the resolver answers only allowlisted names; a refused name never reaches Net.resolve; odd DNS answers are not trusted", async (t) => {
  reset();
  const egress = new DeviceEgress(new EgressGuard(parseEgressConfig(config)), fakes);
  const { resolver: Resolver } = egress.mqttIo("test/dns");
  const ask = (host: string) => new Promise<string>((resolve) => new Resolver({}).resolve({ host, onResolved: (_h: string, a: string) => resolve(a), onError: () => resolve("error") }));
  for (const host of ["evil.example", "pool.ntp.org", "x-ats.iot.us-east-1.amazonaws.com.evil.example", "0x7f000001", "amazonaws.com"]) t.is(await ask(host), "error", host);
  t.deepEqual(spies.dns, []);
  t.is(await ask(BROKER), BROKER_IP);
  t.is(await ask(NTP), NTP_IP);
  t.deepEqual(spies.dns, [BROKER, NTP]);
  spies.answers[BROKER] = "0xc0.0.2.10";
  t.is(await ask(BROKER), "error", "an answer inet_aton would read differently is refused");
  spies.answers[BROKER] = BROKER_IP;
  // Synchronous-looking paths still answer asynchronously.
  let sync = true;
  const order: string[] = [];
  new Resolver({}).resolve({ host: "evil.example", onError: () => order.push(sync ? "sync" : "async") });
  sync = false;
  await settle();
  t.deepEqual(order, ["async"]);
});

test.serial("development: the stand-in's literal address is answered without DNS; production refuses the development CA and foreign anchors", async (t) => {
  reset();
  const dev = new DeviceEgress(development(), fakes);
  const clock = new ManualClock();
  const pki = await ensureDevPki(fs.mkdtempSync(path.join(os.tmpdir(), "dw-egress-dev-")));
  const devCa = new Uint8Array(new crypto.X509Certificate(pki.ca.certPem).raw);
  const transport = createMqttTransport({ thing: "door-1", settings: settings("127.0.0.1"), identity: identity(devCa), clock, log: () => {}, egress: dev } as never);
  transport.connect({ onConnect: () => {}, onMessage: () => {}, onClose: () => {} });
  await settle();
  t.deepEqual(spies.dns, [], "no DNS for an IPv4 literal");
  t.deepEqual(spies.tls.map((o) => [o.address, o.port]), [["127.0.0.1", 8883]]);
  t.is(spies.tls[0].secure.certificate.byteLength, devCa.length, "a development build trusts the local CA");
  transport.close();

  const prod = new DeviceEgress(new EgressGuard(parseEgressConfig(config)), fakes);
  t.throws(() => createMqttTransport({ thing: "door-1", settings: settings(BROKER), identity: identity(devCa), clock, log: () => {}, egress: prod } as never), { instanceOf: EgressConfigError, message: /production build refuses the provisioned CA/ });
  t.throws(() => createMqttTransport({ thing: "door-1", settings: settings(BROKER, 8883, ["AmazonRootCA1.der", "dev-ca.der"]), identity: identity(), clock, log: () => {}, egress: prod } as never), { instanceOf: EgressConfigError, message: /not an Amazon root/ });
  // An Amazon root in the identity store is acceptable in production; the built-in ones are the default.
  t.notThrows(() => createMqttTransport({ thing: "door-1", settings: settings(BROKER), identity: identity(resources["AmazonRootCA3.der"]), clock, log: () => {}, egress: prod } as never));
  t.notThrows(() => createMqttTransport({ thing: "door-1", settings: settings(BROKER), identity: identity(), clock, log: () => {}, egress: prod } as never));
});

/** An NTP server reply to `request` carrying `unixSeconds`. */
function ntpReply(request: Uint8Array, unixSeconds: number, patch: (b: Uint8Array) => void = () => {}): Uint8Array {
  const b = new Uint8Array(48);
  const v = new DataView(b.buffer);
  b[0] = 0x24; // LI 0, version 4, mode 4 (server)
  b[1] = 2;
  b.set(request.subarray(40, 48), 24); // originate = the client's transmit timestamp
  v.setUint32(40, unixSeconds + 2208988800);
  v.setUint32(44, 0x80000000);
  patch(b);
  return b;
}

test.serial("SNTP asks the allowlisted NTP host only, and takes only the reply to its own request", async (t) => {
  reset();
  const egress = new DeviceEgress(new EgressGuard(parseEgressConfig(config)), fakes);
  // The request's transmit timestamp is the random source's bytes, all 64 bits: nothing clock-based to predict.
  const given: Uint8Array[] = [];
  const random = { fill: (b: Uint8Array) => { b.set(crypto.randomBytes(b.length)); given.push(b.slice()); } };
  const Sntp = egress.sntpClass(random, "device/sntp");
  const messages: Array<[number, unknown]> = [];
  new Sntp({ host: "TIME.AWS.COM" }, (m: number, v: unknown) => messages.push([m, v]));
  await settle();
  t.deepEqual(spies.dns, [NTP]);
  const [udp] = spies.udp;
  t.is(udp.writes.length, 1);
  const { data, address, port } = udp.writes[0];
  t.deepEqual([address, port, data.length, data[0] & 7], [NTP_IP, 123, 48, 3]);
  t.is(given.length, 1);
  t.deepEqual([...data.subarray(40, 48)], [...given[0]], "the transmit timestamp is 8 random bytes");
  const when = 1_800_000_000;
  udp.deliver(ntpReply(data, when), "192.0.2.99", 123); // another source
  udp.deliver(ntpReply(data, when), NTP_IP, 1123); // another port
  udp.deliver(ntpReply(data, when, (b) => (b[31] ^= 1)), NTP_IP, 123); // not our request
  udp.deliver(ntpReply(data, when, (b) => (b[1] = 0)), NTP_IP, 123); // kiss-o'-death
  udp.deliver(ntpReply(data, when, (b) => (b[0] = 0x23)), NTP_IP, 123); // a client packet, not a server's
  t.deepEqual(messages, [], "none of those is taken");
  advance(5000);
  t.deepEqual(messages, [[SNTP_RETRY, undefined]]);
  t.is(udp.writes.length, 2);
  udp.deliver(ntpReply(udp.writes[0].data, when), NTP_IP, 123);
  t.deepEqual(messages.at(-1), [SNTP_TIME, when]);
  t.true(udp.closed);
  t.is(parseNtpReply(ntpReply(data, when), data.slice(40, 48)), when * 1000 + 500);
  t.is(parseNtpReply(ntpReply(data, when, (b) => (b[24] ^= 1)), data.slice(40, 48)), undefined, "all 64 bits must echo");

  // The same socket class refuses to write anywhere else.
  t.throws(() => udp.write.call(udp, new Uint8Array(48), "192.0.2.66", 123));

  // A host off the allowlist: an error, and no DNS and no socket.
  reset();
  const refused: Array<[number, unknown]> = [];
  new Sntp({ host: "pool.ntp.org" }, (m: number, v: unknown) => refused.push([m, v]));
  await settle();
  t.is(refused.length, 1);
  t.is(refused[0][0], SNTP_ERROR);
  t.regex(String(refused[0][1]), /pool\.ntp\.org refused/);
  t.is(touched(), 0);

  // Given the address it resolved itself (./sntp's TimeSync resolves first), no second look-up.
  reset();
  const again: Array<[number, unknown]> = [];
  new Sntp({ host: NTP_IP }, (m: number, v: unknown) => again.push([m, v]));
  await settle();
  t.deepEqual(spies.dns, []);
  t.is(spies.udp[0].writes[0].address, NTP_IP);
  for (let i = 0; i < 5; i++) advance(5000);
  t.deepEqual(again.at(-1)?.[0], SNTP_ERROR, "gives up after five unanswered requests");
  t.is(spies.udp[0].writes.length, 5);
});
