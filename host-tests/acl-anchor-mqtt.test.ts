/*
 * The access anchor on real parts: the stand-in over mutual TLS (its named
 * shadow and the device policy from docs/aws-policy.json), the Doorbell, an
 * anchored AccessControl, and the apps through the cloud relay. The device's
 * whole flash is written back to before a revoke; after the reboot the shadow
 * says the device is behind, the ex is refused, and the owner's signed list
 * brings the device back.
 */
import test from "ava";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type { MqttClient } from "mqtt";
import nacl from "tweetnacl";
import { Doorbell } from "../modules/core/doorbell";
import { AccessControl } from "../modules/core/commands";
import { anchorTopics } from "../modules/core/acl-anchor";
import { createHostClock } from "../modules/host/clock";
import { hostRandom } from "../modules/host/random";
import { MemoryStore } from "../modules/host/file-store";
import { HostMqttTransport } from "../modules/host/mqtt-transport";
import { ensureDevPki, issueThingCredentials, type DevPki, type IssuedCredentials } from "../tools/pki";
import { startStandin, type Standin } from "../tools/standin";
import { connectService, until } from "./helpers/service-link";
import { AppLink, MemorySecretStore, OwnerApp, UserApp, createDeviceBoxKeys, createUserKeys } from "../tools/owner-app";

const THING = "anchor-porch";
let pki: DevPki;
let creds: IssuedCredentials;
let standin: Standin;
let relay: MqttClient;

test.before(async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dw-anchor-pki-"));
  pki = await ensureDevPki(dir);
  creds = await issueThingCredentials(dir, THING);
  standin = await startStandin({ pki, connectIntervalMs: 0 });
  relay = await connectService(pki, standin.port, "anchor");
});

test.after.always(async () => {
  await new Promise<void>((r) => (relay ? relay.end(true, {}, () => r()) : r()));
  await standin?.close();
});

const deviceBox = createDeviceBoxKeys();
const ownerKeys = createUserKeys("owner", "owner");

/** The firmware's wiring of the anchor (modules/core/firmware.ts), over the given flash. */
async function device(flash: { secrets: MemorySecretStore; store: MemoryStore }) {
  const clock = createHostClock();
  let access!: AccessControl;
  const transport = new HostMqttTransport({ host: "127.0.0.1", port: standin.port, servername: "localhost", clientId: THING, ca: pki.ca.certPem, cert: creds.certPem, key: creds.keyPem });
  const doorbell: Doorbell = new Doorbell({
    thing: THING, signingSeed: nacl.randomBytes(32), clock, random: hostRandom, store: new MemoryStore(), transport, log: () => {},
    subscriptions: [`$aws/things/${THING}/shadow/name/doorward-acl/get/accepted`, `$aws/things/${THING}/shadow/name/doorward-acl/get/rejected`],
    onOnline: () => access.requestAnchor(),
    onMessage: (topic, payload) => {
      if (access.onAnchorMessage(topic, payload)) return;
      if (topic !== doorbell.topics.commands) return;
      doorbell.send(doorbell.topics.replies, access.handleCommand(payload).reply, 0);
    },
  });
  access = new AccessControl({
    thing: THING, secrets: flash.secrets, store: flash.store, random: hostRandom, clock, log: () => {},
    deviceBoxSecretKey: deviceBox.secretKey, owner: ownerKeys.identity,
    anchor: { publish: (topic, payload) => void doorbell.send(topic, payload, 0) },
  });
  doorbell.start();
  await until(() => doorbell.link.online && access.anchor.state === "known", 15_000);
  return { doorbell, access };
}

function copyFlash(f: { secrets: MemorySecretStore; store: MemoryStore }) {
  const secrets = new MemorySecretStore();
  for (const [k, v] of f.secrets.entries) secrets.entries.set(k, v.slice());
  const store = new MemoryStore();
  for (const [k, v] of f.store.map) store.map.set(k, v.slice());
  return { secrets, store };
}

test.serial("over MQTT: the whole flash written back after a revoke, the shadow's anchor keeps the ex out", async (t) => {
  const flash = { secrets: new MemorySecretStore(), store: new MemoryStore() };
  const link = new AppLink(relay, THING);
  await link.start();
  t.teardown(() => link.close());
  const owner = new OwnerApp({ keys: ownerKeys, thing: THING, deviceBoxPublicKey: deviceBox.publicKey });

  const d1 = await device(flash);
  t.is(d1.access.anchor.gen, d1.access.generation, "a fresh device reports its generation when the shadow has none");
  const exKeys = createUserKeys("ex", "resident");
  t.true((await link.request(owner, () => owner.addUser(exKeys.identity))).reply.ok);
  const ex = new UserApp({ keys: exKeys, thing: THING, deviceBoxPublicKey: deviceBox.publicKey, gen: d1.access.generation });
  t.true((await link.request(ex, () => ex.command("snapshot"))).reply.ok);
  const before = copyFlash(flash);
  const exGen = ex.gen;
  t.true((await link.request(owner, () => owner.revoke("ex"))).reply.ok);
  const revokedGen = d1.access.generation;
  // The report reached the stand-in's shadow.
  const shadowGen = () => {
    const [answer] = standin.shadows.handle(anchorTopics(THING).get, new Uint8Array(0))!;
    return (JSON.parse(answer.payload) as { state?: { reported?: { acl?: { gen?: number } } } }).state?.reported?.acl?.gen;
  };
  await until(() => shadowGen() === revokedGen, 15_000);
  d1.doorbell.stop();

  // Written back whole, and rebooted.
  const d2 = await device(before);
  t.truthy(d2.access.list.user("ex"), "the old list is back");
  t.is(d2.access.anchor.gen, revokedGen, "the shadow says the device is behind");
  t.teardown(() => d2.doorbell.stop());
  const refused = await link.request(ex, () => ex.command("snapshot", {}, { gen: exGen }), { retryStale: false });
  t.is(refused.reply.reason, "stale-generation");
  t.is(refused.reply.anchor, revokedGen);
  t.is(shadowGen(), revokedGen, "the device did not report its older generation");

  // The owner's app learns the anchor from its own refusal, then signs the list above it.
  const ownerRefused = await link.request(owner, () => owner.command("snapshot"), { retryStale: false });
  t.is(ownerRefused.reply.reason, "stale-generation");
  t.is(owner.anchored, revokedGen);
  const back = await link.request(owner, () => owner.updateList([ownerKeys.identity]));
  t.true(back.reply.ok, JSON.stringify(back.reply));
  t.true((await link.request(owner, () => owner.command("snapshot"))).reply.ok);
  t.not((await link.request(ex, () => ex.command("snapshot"), { retryStale: false })).reply.ok, true);
  await until(() => shadowGen() === d2.access.generation, 15_000);
  t.true(d2.access.generation > revokedGen);
});
