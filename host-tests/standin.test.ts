/*
 * The AWS IoT stand-in, end to end: a real aedes broker behind real mutual TLS on
 * 127.0.0.1, driven by mqtt.js clients holding certificates from the dev PKI. Each
 * test starts its own stand-in on an ephemeral port; the PKI (RSA keys are slow) is
 * made once per file in a temporary directory.
 *
 * Refusals are checked twice: from the client's side (never connects, or the
 * connection closes without an ack, or a subscriber receives nothing) and from the
 * stand-in's record of why, so a refusal for the wrong reason fails too.
 */

import test, { type ExecutionContext } from "ava";
import mqtt, { type IClientOptions, type MqttClient, type Packet } from "mqtt";
import net from "node:net";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { ensureDevPki, issueRogueCredentials, issueThingCredentials, SERVICE_NAME } from "../tools/pki";
import { MAX_PAYLOAD_BYTES, startStandin, type Refusal, type Standin, type StandinOptions } from "../tools/standin";
import { mayPublish, maySubscribe, type Identity } from "../tools/standin/policy";

const dir = await mkdtemp(path.join(os.tmpdir(), "doorward-standin-"));
const pki = await ensureDevPki(dir);
const [thingA, thingB, rogueA] = await Promise.all([
  issueThingCredentials(dir, "thing-a"),
  issueThingCredentials(dir, "thing-b"),
  issueRogueCredentials(dir, "thing-a"),
]);
const rogueServer = await issueRogueCredentials(dir, "localhost", "server");

test.after.always(() => rm(dir, { recursive: true, force: true }));

// ------------------------------------------------------------------ helpers

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function standin(t: ExecutionContext, options: StandinOptions = {}): Promise<Standin> {
  const s = await startStandin({ pki, connectIntervalMs: 0, ...options });
  t.teardown(() => s.close());
  return s;
}

type Attempt = { connected: true; client: MqttClient } | { connected: false; error: (Error & { code?: string | number }) | undefined };

/** Try to connect once (no reconnect); settle on CONNACK success, close, or a bounded timeout. */
function attempt(t: ExecutionContext, options: IClientOptions, timeoutMs = 4000): Promise<Attempt> {
  return new Promise((resolve) => {
    const client = mqtt.connect({ ...options, reconnectPeriod: 0 });
    t.teardown(() => void client.end(true));
    let error: (Error & { code?: string | number }) | undefined;
    client.on("error", (e) => {
      error ??= e;
    });
    const timer = setTimeout(() => {
      client.end(true);
      resolve({ connected: false, error: new Error("timed out") });
    }, timeoutMs);
    const onClose = () => {
      clearTimeout(timer);
      resolve({ connected: false, error });
    };
    client.once("close", onClose);
    client.once("connect", () => {
      clearTimeout(timer);
      client.off("close", onClose);
      resolve({ connected: true, client });
    });
  });
}

async function connect(t: ExecutionContext, options: IClientOptions): Promise<MqttClient> {
  const result = await attempt(t, options);
  if (!result.connected) throw new Error(`expected to connect as ${String(options.clientId)}: ${result.error?.message}`);
  return result.client;
}

/** Resolves true once the client's connection closes, false after timeoutMs. */
function closed(client: MqttClient, timeoutMs = 3000): Promise<boolean> {
  if (!client.connected) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), timeoutMs);
    client.once("close", () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

function collect(client: MqttClient): Array<{ topic: string; payload: Buffer }> {
  const got: Array<{ topic: string; payload: Buffer }> = [];
  client.on("message", (topic, payload) => got.push({ topic, payload }));
  return got;
}

function acks(client: MqttClient, cmd: "puback" | "suback" | "pubrec"): Packet[] {
  const got: Packet[] = [];
  client.on("packetreceive", (p) => {
    if (p.cmd === cmd) got.push(p);
  });
  return got;
}

async function until(pred: () => boolean, timeoutMs = 3000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > deadline) return false;
    await sleep(10);
  }
  return true;
}

/** A cloud client subscribed to the fan-in filters, plus what it receives. */
async function cloud(t: ExecutionContext, s: Standin, suffix = "test") {
  const client = await connect(t, s.clientOptions(pki.service, { clientId: `${SERVICE_NAME}-${suffix}` }));
  const granted = await client.subscribeAsync(["doorward/+/events", "doorward/+/snapshots", "doorward/+/replies"], { qos: 1 });
  const received = collect(client);
  return { client, granted, received };
}

const refusalOf = (s: Standin, clientId: string, stage: Refusal["stage"]) => s.waitForRefusal((r) => r.clientId === clientId && r.stage === stage);

// ------------------------------------------------------------------ happy path

test("a thing publishes QoS 1 to its own events topic, gets PUBACK, and the cloud receives it", async (t) => {
  const s = await standin(t);
  const c = await cloud(t, s);
  t.deepEqual(c.granted.map((g) => g.qos), [1, 1, 1]);
  const seen: string[] = [];
  s.on("message", (m) => seen.push(`${m.identity.role}:${m.clientId}:${m.topic}`));

  const thing = await connect(t, s.clientOptions(thingA));
  const pubacks = acks(thing, "puback");
  const payload = Buffer.from(JSON.stringify({ ring: 1 }));
  await thing.publishAsync("doorward/thing-a/events", payload, { qos: 1 });
  t.is(pubacks.length, 1);
  t.true(await until(() => c.received.length === 1));
  t.is(c.received[0].topic, "doorward/thing-a/events");
  t.deepEqual(c.received[0].payload, payload);
  t.deepEqual(seen, ["thing:thing-a:doorward/thing-a/events"]);
  t.is(s.stats.connectionsAccepted, 2);
  t.is(s.stats.publishesAccepted, 1);
  t.deepEqual(s.stats.refusals, []);
  t.deepEqual(
    s.clients().map((x) => x.clientId).sort(),
    [`${SERVICE_NAME}-test`, "thing-a"],
  );
});

test("TLS 1.2 with an RSA key-exchange AES-CBC suite (what the Moddable client offers) works end to end", async (t) => {
  const s = await standin(t);
  const thing = await connect(t, { ...s.clientOptions(thingA), maxVersion: "TLSv1.2", ciphers: "AES128-SHA256" } as IClientOptions);
  const socket = thing.stream as unknown as { getProtocol(): string; getCipher(): { name: string } };
  t.is(socket.getProtocol(), "TLSv1.2");
  t.is(socket.getCipher().name, "AES128-SHA256");
  const pubacks = acks(thing, "puback");
  await thing.publishAsync("doorward/thing-a/events", "over tls 1.2", { qos: 1 });
  t.is(pubacks.length, 1);
});

test("the cloud sends a command to one thing; the thing receives it; jobs topics work for the thing", async (t) => {
  const s = await standin(t);
  const c = await cloud(t, s);
  const thing = await connect(t, s.clientOptions(thingA));
  const other = await connect(t, s.clientOptions(thingB));
  const granted = await thing.subscribeAsync(["doorward/thing-a/commands", "$aws/things/thing-a/jobs/$next/get/accepted"], { qos: 1 });
  t.deepEqual(granted.map((g) => g.qos), [1, 1]);
  await other.subscribeAsync("doorward/thing-b/commands", { qos: 1 });
  const gotA = collect(thing);
  const gotB = collect(other);

  await c.client.publishAsync("doorward/thing-a/commands", "open", { qos: 1 });
  await s.publish("$aws/things/thing-a/jobs/$next/get/accepted", "{}");
  await thing.publishAsync("$aws/things/thing-a/jobs/$next/get", "{}", { qos: 1 });
  t.true(await until(() => gotA.length === 2));
  t.deepEqual(gotA.map((m) => m.topic), ["doorward/thing-a/commands", "$aws/things/thing-a/jobs/$next/get/accepted"]);
  t.is(gotA[0].payload.toString(), "open");
  await sleep(100);
  t.is(gotB.length, 0);
});

test("the shadow is not in the device policy, so a thing may not use it", async (t) => {
  const s = await standin(t);
  const thing = await connect(t, s.clientOptions(thingA));
  const closed = new Promise<void>((resolve) => thing.once("close", () => resolve()));
  thing.publish("$aws/things/thing-a/shadow/update", "{}", { qos: 1 });
  await closed;
  const r = await s.waitForRefusal((x) => x.stage === "publish");
  t.is(r.reason, "topic-not-allowed");
});

// ------------------------------------------------------------------ identity

test("no client certificate: refused in the TLS handshake", async (t) => {
  const s = await standin(t);
  const result = await attempt(t, s.clientOptions(thingA, { cert: undefined, key: undefined }));
  t.false(result.connected);
  const r = await s.waitForRefusal((x) => x.stage === "tls");
  t.is(r.reason, "no-client-certificate", r.detail);
  t.is(s.stats.connectionsAccepted, 0);
});

test("a certificate from another CA: refused in the TLS handshake", async (t) => {
  const s = await standin(t);
  const result = await attempt(t, s.clientOptions(rogueA));
  t.false(result.connected);
  const r = await s.waitForRefusal((x) => x.stage === "tls");
  t.is(r.reason, "untrusted-certificate");
  t.is(s.stats.connectionsAccepted, 0);
});

test("the server certificate cannot be used as a client certificate", async (t) => {
  const s = await standin(t);
  const result = await attempt(t, s.clientOptions(pki.server, { clientId: "localhost" }));
  t.false(result.connected);
  const r = await s.waitForRefusal((x) => x.stage === "tls");
  t.is(r.reason, "untrusted-certificate");
});

test("an expired thing certificate is refused in the TLS handshake", async (t) => {
  const s = await standin(t);
  const now = Date.now();
  const expired = await issueThingCredentials(dir, "thing-expired", { notBefore: new Date(now - 10 * 86_400_000), notAfter: new Date(now - 86_400_000) });
  const result = await attempt(t, s.clientOptions(expired));
  t.false(result.connected);
  const r = await s.waitForRefusal((x) => x.stage === "tls");
  t.is(r.reason, "certificate-expired");
});

test("client ID different from the certificate's thing name: CONNACK not authorized", async (t) => {
  const s = await standin(t);
  const result = await attempt(t, s.clientOptions(thingB, { clientId: "thing-a" }));
  t.false(result.connected);
  t.is(result.connected ? undefined : result.error?.code, 5);
  const r = await refusalOf(s, "thing-a", "connect");
  t.is(r.reason, "client-id-mismatch");
  t.deepEqual(r.identity, { role: "thing", name: "thing-b" });

  const asService = await attempt(t, s.clientOptions(thingA, { clientId: SERVICE_NAME }));
  t.false(asService.connected);
  t.is((await refusalOf(s, SERVICE_NAME, "connect")).reason, "client-id-mismatch");
  t.is(s.stats.connectionsAccepted, 0);
  t.is(s.stats.connectionsRefused, 2);
});

test("the service may use its name or name-<suffix> as client ID, nothing else", async (t) => {
  const s = await standin(t);
  t.true((await attempt(t, s.clientOptions(pki.service))).connected);
  t.true((await attempt(t, s.clientOptions(pki.service, { clientId: `${SERVICE_NAME}-worker-2` }))).connected);
  const wrong = await attempt(t, s.clientOptions(pki.service, { clientId: `${SERVICE_NAME}x` }));
  t.false(wrong.connected);
  t.is((await refusalOf(s, `${SERVICE_NAME}x`, "connect")).reason, "client-id-mismatch");
  const thingId = await attempt(t, s.clientOptions(pki.service, { clientId: "thing-a" }));
  t.false(thingId.connected);
});

test("a client ID over 128 bytes is rejected", async (t) => {
  const s = await standin(t);
  const id = `${SERVICE_NAME}-${"x".repeat(128)}`;
  const result = await attempt(t, s.clientOptions(pki.service, { clientId: id }));
  t.false(result.connected);
  t.is(result.connected ? undefined : result.error?.code, 2);
  t.is((await refusalOf(s, id, "connect")).reason, "client-id-too-long");
});

test("a second CONNECT for the same client ID within a second is refused", async (t) => {
  const s = await standin(t, { connectIntervalMs: 1000 });
  const first = await connect(t, s.clientOptions(thingA));
  await first.endAsync();
  const second = await attempt(t, s.clientOptions(thingA));
  t.false(second.connected);
  t.is(second.connected ? undefined : second.error?.code, 3);
  t.is((await refusalOf(s, "thing-a", "connect")).reason, "connect-throttled");
  // A different client ID is not affected.
  t.true((await attempt(t, s.clientOptions(thingB))).connected);
});

test("a new connection with a connected client ID takes over; the old one is closed", async (t) => {
  const s = await standin(t);
  const first = await connect(t, s.clientOptions(thingA));
  const firstClosed = closed(first);
  const second = await connect(t, s.clientOptions(thingA));
  t.true(await firstClosed);
  t.true(second.connected);
});

test("revoking a certificate cuts its session and refuses it at TLS; a fresh certificate works", async (t) => {
  const s = await standin(t);
  const own = await issueThingCredentials(dir, "thing-revoked", { fresh: true });
  const thing = await connect(t, s.clientOptions(own));
  const wasClosed = closed(thing);
  t.is(s.revokeCertificate(own.certPem), 1);
  t.true(await wasClosed);
  const again = await attempt(t, s.clientOptions(own));
  t.false(again.connected);
  const r = await s.waitForRefusal((x) => x.reason === "certificate-revoked");
  t.is(r.stage, "tls");
  const replacement = await issueThingCredentials(dir, "thing-revoked", { fresh: true });
  t.true((await attempt(t, s.clientOptions(replacement))).connected);
});

test("disconnect() cuts a session like DeleteConnection, and a reconnect is allowed", async (t) => {
  const s = await standin(t);
  const thing = await connect(t, s.clientOptions(thingA));
  const wasClosed = closed(thing);
  t.true(s.disconnect("thing-a"));
  t.true(await wasClosed);
  t.false(s.disconnect("nobody"));
  t.true((await attempt(t, s.clientOptions(thingA))).connected);
});

test("requireSni refuses a client that sends no server name", async (t) => {
  const s = await standin(t, { requireSni: true });
  const bare = await attempt(t, s.clientOptions(thingA, { servername: undefined }));
  t.false(bare.connected);
  t.is((await s.waitForRefusal((x) => x.stage === "tls")).reason, "sni-missing");
  t.true((await attempt(t, s.clientOptions(thingA))).connected);
});

test("a client that trusts only the dev CA refuses a stand-in serving a rogue server certificate", async (t) => {
  const s = await standin(t, { serverCredentials: rogueServer });
  const result = await attempt(t, s.clientOptions(thingA));
  t.false(result.connected);
  t.truthy(result.connected ? undefined : result.error);
  t.is(s.stats.connectionsAccepted, 0);
});

// ------------------------------------------------------------------ topic policy

test("publishing to another thing's topic closes the connection without PUBACK; the cloud receives nothing", async (t) => {
  const s = await standin(t);
  const c = await cloud(t, s);
  const thing = await connect(t, s.clientOptions(thingA));
  const pubacks = acks(thing, "puback");
  const wasClosed = closed(thing);
  thing.publish("doorward/thing-b/events", "forged", { qos: 1 });
  t.true(await wasClosed);
  const r = await refusalOf(s, "thing-a", "publish");
  t.is(r.reason, "topic-not-allowed");
  t.is(r.topic, "doorward/thing-b/events");
  t.is(pubacks.length, 0);

  // Control: the real thing-b's message on the same topic does arrive, and is the only one.
  const realB = await connect(t, s.clientOptions(thingB));
  await realB.publishAsync("doorward/thing-b/events", "genuine", { qos: 1 });
  t.true(await until(() => c.received.length >= 1));
  await sleep(100);
  t.deepEqual(c.received.map((m) => m.payload.toString()), ["genuine"]);
  t.is(s.stats.publishesRefused, 1);
});

test("a thing may not publish to commands of another thing, outside doorward/, or to another thing's shadow", async (t) => {
  const s = await standin(t);
  for (const topic of ["doorward/thing-b/commands", "elsewhere/thing-a", "$aws/things/thing-b/shadow/update", "doorward/thing-a"]) {
    const thing = await connect(t, s.clientOptions(thingA));
    const wasClosed = closed(thing);
    thing.publish(topic, "x", { qos: 0 });
    t.true(await wasClosed, topic);
    const r = await s.waitForRefusal((x) => x.topic === topic);
    t.is(r.reason, "topic-not-allowed", topic);
  }
  t.is(s.stats.publishesRefused, 4);
  t.is(s.stats.publishesAccepted, 0);
});

test("subscribing to another thing's commands, to #, or across things with + is refused by disconnect", async (t) => {
  const s = await standin(t);
  for (const filter of ["doorward/thing-b/commands", "#", "doorward/+/events", "doorward/#", "$aws/things/+/shadow/#"]) {
    const thing = await connect(t, s.clientOptions(thingA));
    const subacks = acks(thing, "suback");
    const wasClosed = closed(thing);
    thing.subscribe(filter, { qos: 1 });
    t.true(await wasClosed, filter);
    t.is(subacks.length, 0, filter);
    const r = await s.waitForRefusal((x) => x.stage === "subscribe" && x.topic === filter);
    t.is(r.reason, "topic-not-allowed", filter);
  }
  t.is(s.stats.subscriptionsRefused, 5);
});

test("subscribeDenial suback-failure answers 0x80 and keeps the connection", async (t) => {
  const s = await standin(t, { subscribeDenial: "suback-failure" });
  const thing = await connect(t, s.clientOptions(thingA));
  // mqtt.js rejects subscribeAsync when any filter is refused, carrying the SUBACK.
  const outcome = await thing.subscribeAsync(["doorward/thing-b/commands", "doorward/thing-a/commands"], { qos: 1 }).then(
    () => undefined,
    (e: { packet?: { cmd?: string; granted?: number[] } }) => e.packet,
  );
  t.is(outcome?.cmd, "suback");
  t.deepEqual(outcome?.granted, [128, 1]);
  await sleep(100);
  t.true(thing.connected);
  t.is((await refusalOf(s, "thing-a", "subscribe")).topic, "doorward/thing-b/commands");
  // The granted subscription works on the same connection.
  const got = collect(thing);
  await s.publish("doorward/thing-a/commands", "still here");
  t.true(await until(() => got.length === 1));
});

test("the cloud may fan in events but not subscribe to commands, and may not publish events", async (t) => {
  const s = await standin(t);
  const c = await cloud(t, s);
  const wasClosed = closed(c.client);
  c.client.publish("doorward/thing-a/events", "forged", { qos: 1 });
  t.true(await wasClosed);
  t.is((await refusalOf(s, `${SERVICE_NAME}-test`, "publish")).reason, "topic-not-allowed");

  const c2 = await connect(t, s.clientOptions(pki.service, { clientId: `${SERVICE_NAME}-two` }));
  const closed2 = closed(c2);
  c2.subscribe("doorward/+/commands", { qos: 1 });
  t.true(await closed2);
  t.is((await refusalOf(s, `${SERVICE_NAME}-two`, "subscribe")).reason, "topic-not-allowed");
});

test("topics deeper than 7 slashes are refused", async (t) => {
  const s = await standin(t);
  const thing = await connect(t, s.clientOptions(thingA));
  await thing.publishAsync("doorward/thing-a/a/b/c/d/e/f", "ok", { qos: 1 }); // 7 slashes
  const wasClosed = closed(thing);
  thing.publish("doorward/thing-a/a/b/c/d/e/f/g", "deep", { qos: 1 }); // 8
  t.true(await wasClosed);
  t.is((await refusalOf(s, "thing-a", "publish")).reason, "topic-too-deep");
});

// ------------------------------------------------------------------ limits

test("a 131072-byte payload is accepted; 131073 bytes closes the connection and is not delivered", async (t) => {
  t.is(MAX_PAYLOAD_BYTES, 131072);
  const s = await standin(t);
  const c = await cloud(t, s);
  const thing = await connect(t, s.clientOptions(thingA));
  const pubacks = acks(thing, "puback");
  await thing.publishAsync("doorward/thing-a/snapshots", Buffer.alloc(131072, 7), { qos: 1 });
  t.is(pubacks.length, 1);
  t.true(await until(() => c.received.length === 1));
  t.is(c.received[0].payload.length, 131072);

  const wasClosed = closed(thing);
  thing.publish("doorward/thing-a/snapshots", Buffer.alloc(131073, 7), { qos: 1 });
  t.true(await wasClosed);
  const r = await refusalOf(s, "thing-a", "publish");
  t.is(r.reason, "payload-too-large");
  t.is(r.bytes, 131073);
  await sleep(100);
  t.is(pubacks.length, 1);
  t.is(c.received.length, 1);
});

test("QoS 2 publish gets no PUBREC and is not delivered; QoS 2 subscribe gets no SUBACK", async (t) => {
  const s = await standin(t);
  const c = await cloud(t, s);
  const thing = await connect(t, s.clientOptions(thingA));
  const pubrecs = acks(thing, "pubrec");
  const wasClosed = closed(thing);
  thing.publish("doorward/thing-a/events", "qos2", { qos: 2 });
  t.true(await wasClosed);
  t.is((await refusalOf(s, "thing-a", "publish")).reason, "qos2-not-supported");
  t.is(pubrecs.length, 0);

  const again = await connect(t, s.clientOptions(thingA));
  const subacks = acks(again, "suback");
  const againClosed = closed(again);
  again.subscribe("doorward/thing-a/commands", { qos: 2 });
  t.true(await againClosed);
  t.is((await s.waitForRefusal((x) => x.stage === "subscribe")).reason, "qos2-not-supported");
  t.is(subacks.length, 0);
  await sleep(100);
  t.is(c.received.length, 0);
});

test("close() closes client sockets and the listening port", async (t) => {
  const s = await startStandin({ pki, connectIntervalMs: 0 });
  const port = s.port;
  const thing = await connect(t, s.clientOptions(thingA));
  const wasClosed = closed(thing);
  await s.close();
  t.true(await wasClosed);
  const error = await new Promise<NodeJS.ErrnoException | undefined>((resolve) => {
    const socket = net.connect({ host: "127.0.0.1", port });
    socket.once("connect", () => {
      socket.destroy();
      resolve(undefined);
    });
    socket.once("error", (e: NodeJS.ErrnoException) => resolve(e));
  });
  t.is(error?.code, "ECONNREFUSED");
  await s.close(); // idempotent
});

// ------------------------------------------------------------------ policy, without a network

test("policy table", (t) => {
  const thing: Identity = { role: "thing", name: "door-1" };
  const service: Identity = { role: "service", name: SERVICE_NAME };
  const pub: Array<[Identity, string, boolean]> = [
    [thing, "doorward/door-1/events", true],
    [thing, "doorward/door-1/snapshots", true],
    // docs/aws-policy.json gives a thing jobs and streams, not the shadow.
    [thing, "$aws/things/door-1/shadow/update", false],
    [thing, "$aws/things/door-1/jobs/start-next", true],
    [thing, "$aws/things/door-1/streams/s1/get/json", true],
    [thing, "$aws/things/door-1/other/x", false],
    [thing, "$aws/things/door-1", false],
    [thing, "doorward/door-1", false],
    [thing, "doorward/door-1/", true], // legal MQTT, and doorward/<thing>/* matches it on AWS too
    [thing, "doorward/door-10/events", false],
    [thing, "doorward/door-/events", false],
    [thing, "Doorward/door-1/events", false],
    [service, "doorward/door-1/commands", true],
    [service, "doorward/door-1/events", false],
    [service, "doorward/+/commands", false],
    [service, "$aws/things/door-1/jobs/notify-next", true],
    [service, "$aws/things/bad name/jobs/notify", false],
    [service, "elsewhere", false],
  ];
  for (const [who, topic, ok] of pub) t.is(mayPublish(who, topic).ok, ok, `${who.role} publish ${topic}`);
  const sub: Array<[Identity, string, boolean]> = [
    [thing, "doorward/door-1/commands", true],
    [thing, "doorward/door-1/#", true],
    [thing, "doorward/door-1/+", true],
    [thing, "$aws/things/door-1/jobs/notify-next", true],
    [thing, "$aws/things/door-1/shadow/#", false],
    [thing, "$aws/things/door-1/jobs/#", true],
    [thing, "$aws/things/door-1/#", false],
    [thing, "doorward/+/commands", false],
    [thing, "doorward/#", false],
    [thing, "#", false],
    [thing, "+/door-1/commands", false],
    [thing, "doorward/door-1/com#", false],
    [service, "doorward/+/events", true],
    [service, "doorward/+/snapshots", true],
    [service, "doorward/+/replies", true],
    [service, "doorward/door-1/events", true],
    [service, "doorward/+/commands", false],
    [service, "doorward/#", false],
    [service, "doorward/+/#", false],
    [service, "$aws/things/+/jobs/+/update", true],
    [service, "$aws/things/+/#", true],
    [service, "$aws/#", false],
    [service, "#", false],
  ];
  for (const [who, filter, ok] of sub) t.is(maySubscribe(who, filter).ok, ok, `${who.role} subscribe ${filter}`);
  t.is(mayPublish(thing, "doorward/door-1/a/b/c/d/e/f/g").ok, false);
  t.deepEqual(maySubscribe(thing, "doorward/door-1/a/b/c/d/e/f/g"), { ok: false, reason: "topic-too-deep" });
});
