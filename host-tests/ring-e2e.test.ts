/*
 * The ring path end to end on real parts: the stand-in broker over mutual TLS on
 * loopback, the unchanged core with host adapters, and the cloud consumer
 * verifying with tweetnacl and OpenSSL.
 */
import test from "ava";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import mqtt from "mqtt";
import nacl from "tweetnacl";
import { Doorbell } from "../modules/core/doorbell";
import { createHostClock } from "../modules/host/clock";
import { hostRandom } from "../modules/host/random";
import { FileStore } from "../modules/host/file-store";
import { HostMqttTransport } from "../modules/host/mqtt-transport";
import { SimulatedButton } from "../modules/host/button";
import { ensureDevPki, issueThingCredentials, type DevPki, type IssuedCredentials } from "../tools/pki";
import { startStandin, type Standin } from "../tools/standin";
import { CloudConsumer } from "../tools/cloud";
import { openEnvelope } from "../modules/core/events";
import { opensslVerify } from "../tools/openssl-ed25519";

const THING = "e2e-porch";
let pkiDir: string;
let pki: DevPki;
let creds: IssuedCredentials;
let standin: Standin;
let cloud: CloudConsumer;
/** One device key per flash folder: a fresh folder is a new device (the consumer would take the same key with fresh counters as a flash rollback). */
const seedFor = (storeDir: string) => nacl.hash(new TextEncoder().encode(storeDir)).slice(0, 32);

test.before(async () => {
  pkiDir = fs.mkdtempSync(path.join(os.tmpdir(), "dw-e2e-pki-"));
  pki = await ensureDevPki(pkiDir);
  creds = await issueThingCredentials(pkiDir, THING);
  standin = await startStandin({ pki, connectIntervalMs: 0 });
  cloud = new CloudConsumer();
  await cloud.connect({ host: "127.0.0.1", port: standin.port, servername: "localhost", clientId: `${pki.service.name}-e2e`, ca: pki.ca.certPem, cert: pki.service.certPem, key: pki.service.keyPem });
});

test.after.always(async () => {
  await cloud?.close();
  await standin?.close();
});

function makeDoorbell(storeDir: string, button?: SimulatedButton) {
  const lines: string[] = [];
  const doorbell = new Doorbell({
    thing: THING,
    signingSeed: seedFor(storeDir),
    clock: createHostClock(),
    random: hostRandom,
    store: new FileStore(storeDir),
    transport: new HostMqttTransport({ host: "127.0.0.1", port: standin.port, servername: "localhost", clientId: THING, ca: pki.ca.certPem, cert: creds.certPem, key: creds.keyPem }),
    button,
    log: (level, message, fields) => lines.push(`${level} ${message} ${JSON.stringify(fields ?? {})}`),
  });
  cloud.register(THING, doorbell.signer.publicKey);
  return { doorbell, lines };
}

async function until(predicate: () => boolean, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > end) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 10));
  }
}

test.serial("a bouncy button press becomes one signed ring that the broker accepts and the cloud verifies twice", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dw-e2e-store-"));
  const button = new SimulatedButton();
  const { doorbell } = makeDoorbell(dir, button);
  doorbell.start();
  await until(() => doorbell.link.online);
  const before = cloud.received.length;
  button.press({ bounces: 6, holdMs: 30 });
  const got = await cloud.waitFor((e) => e.verdict.ok && e.verdict.event.thing === THING && e.verdict.event.seq === 1);
  t.true(got.verdict.ok);
  t.true(got.openssl);
  await new Promise((r) => setTimeout(r, 200)); // release bounce has happened; nothing more may arrive
  t.is(cloud.received.length - before, 1, "bounce burst produced exactly one ring");
  const { event, signature, message } = openEnvelope(got.payload);
  t.is(event.type, "ring");
  t.is(got.topic, `doorward/${THING}/events`);
  t.true(opensslVerify(message, signature, doorbell.signer.publicKey));
  t.is(doorbell.outbox.depth, 0);
  doorbell.stop();
});

test.serial("sequence numbers survive a reboot; the verifier rejects a replayed event", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dw-e2e-reboot-"));
  const first = makeDoorbell(dir).doorbell;
  first.start();
  await until(() => first.link.online);
  const a = first.press();
  await a.acked;
  first.stop();
  await new Promise((r) => setTimeout(r, 50));

  const second = makeDoorbell(dir).doorbell; // same flash: a reboot
  t.is(second.sequence.boot, first.sequence.boot + 1);
  second.start();
  await until(() => second.link.online);
  const b = second.press();
  await b.acked;
  t.true(b.seq > a.seq);
  const verdictB = await cloud.waitFor((e) => e.verdict.ok && e.verdict.event.thing === THING && e.verdict.event.seq === b.seq);
  t.true(verdictB.openssl);

  // An attacker with broker access replays the earlier ring: rejected as a replay.
  const replayed = cloud.verifier.verify(a.payload, { topic: `doorward/${THING}/events` });
  t.false(replayed.ok);
  t.is(!replayed.ok && replayed.reason, "replay");
  second.stop();
});

test.serial("a ring pressed while the broker is unreachable is delivered after it returns", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dw-e2e-offline-"));
  const { doorbell } = makeDoorbell(dir);
  doorbell.start();
  await until(() => doorbell.link.online);
  // Kick the device off at the broker: the link drops and retries no sooner than 1 s, so the press happens offline.
  t.true(standin.disconnect(THING));
  await until(() => !doorbell.link.online);
  const ring = doorbell.press();
  t.is(doorbell.outbox.depth, 1);
  t.false(doorbell.link.online);
  await ring.acked;
  t.is(doorbell.outbox.depth, 0);
  const got = await cloud.waitFor((e) => e.verdict.ok && e.verdict.event.seq === ring.seq && e.verdict.event.thing === THING);
  t.true(got.openssl);
  doorbell.stop();
});

test.serial("the broker refuses the device's credentials for another thing's topic", async (t) => {
  // The device's own identity, used by hand to publish where a thing may not.
  const client = mqtt.connect({ protocol: "mqtts", host: "127.0.0.1", port: standin.port, servername: "localhost", clientId: THING, ca: pki.ca.certPem, cert: creds.certPem, key: creds.keyPem, reconnectPeriod: 0 });
  await new Promise<void>((resolve, reject) => { client.once("connect", () => resolve()); client.once("error", reject); });
  const before = cloud.received.length;
  const closed = new Promise<void>((resolve) => client.once("close", () => resolve()));
  client.publish("doorward/someone-else/events", Buffer.from("{}"), { qos: 1 });
  await closed;
  await new Promise((r) => setTimeout(r, 100));
  t.is(cloud.received.length, before, "nothing reached the cloud");
  client.end(true);
});
