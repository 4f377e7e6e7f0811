/*
 * Access control on real parts: the stand-in broker over mutual TLS on loopback,
 * the unchanged Doorbell routing doorward/<thing>/commands to AccessControl, and
 * the owner's and a shared user's apps talking through the cloud relay (the
 * service identity). The story of the issue: add a shared user, ring, revoke,
 * ring again. Also the end-to-end revocation latency over MQTT.
 */
import test from "ava";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import type { MqttClient } from "mqtt";
import nacl from "tweetnacl";
import { Doorbell } from "../modules/core/doorbell";
import { AccessControl, type LiveSession } from "../modules/core/commands";
import { createHostClock } from "../modules/host/clock";
import { hostRandom } from "../modules/host/random";
import { MemoryStore } from "../modules/host/file-store";
import { HostMqttTransport } from "../modules/host/mqtt-transport";
import { ensureDevPki, issueThingCredentials, type DevPki, type IssuedCredentials } from "../tools/pki";
import { startStandin, type Standin } from "../tools/standin";
import { connectService, until } from "./helpers/service-link";
import { AppLink, MemorySecretStore, OwnerApp, UserApp, createDeviceBoxKeys, createUserKeys } from "../tools/owner-app";
import type { ContentKeyWrapping } from "../modules/core/footage-keys";

const THING = "acl-porch";
let pki: DevPki;
let creds: IssuedCredentials;
let standin: Standin;
let relay: MqttClient;

test.before(async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dw-acl-pki-"));
  pki = await ensureDevPki(dir);
  creds = await issueThingCredentials(dir, THING);
  standin = await startStandin({ pki, connectIntervalMs: 0 });
  relay = await connectService(pki, standin.port, "acl");
});

test.after.always(async () => {
  await new Promise<void>((r) => (relay ? relay.end(true, {}, () => r()) : r()));
  await standin?.close();
});

/** The wiring bootFirmware gives the doorbell: commands in, replies out, actions to the camera and chime. */
async function device() {
  const deviceBox = createDeviceBoxKeys();
  const ownerKeys = createUserKeys("owner", "owner");
  const clock = createHostClock();
  const sessionEnds: Array<{ session: LiveSession; at: number }> = [];
  const actions: string[] = [];
  let access!: AccessControl;
  const transport = new HostMqttTransport({ host: "127.0.0.1", port: standin.port, servername: "localhost", clientId: THING, ca: pki.ca.certPem, cert: creds.certPem, key: creds.keyPem });
  const doorbell = new Doorbell({
    thing: THING,
    signingSeed: nacl.randomBytes(32),
    clock,
    random: hostRandom,
    store: new MemoryStore(),
    transport,
    log: () => {},
    onMessage: (topic, payload) => {
      if (topic !== doorbell.topics.commands) return;
      const outcome = access.handleCommand(payload);
      doorbell.send(doorbell.topics.replies, outcome.reply, 0);
      if (outcome.action) actions.push(outcome.action.type);
    },
  });
  access = new AccessControl({
    thing: THING, secrets: new MemorySecretStore(), store: new MemoryStore(), random: hostRandom, clock, log: () => {},
    deviceBoxSecretKey: deviceBox.secretKey, owner: ownerKeys.identity, streamIntervalMs: 200,
    // Forty grants in a row: the latency measured here is the revoke's, not the rate limits'.
    grantRate: { burst: 1e9, everyMs: 1 }, senderRate: { burst: 1e9, everyMs: 1 },
    onSessionEnd: (session) => sessionEnds.push({ session, at: performance.now() }),
  });
  doorbell.start();
  await until(() => doorbell.link.online, 10_000);
  const owner = new OwnerApp({ keys: ownerKeys, thing: THING, deviceBoxPublicKey: deviceBox.publicKey });
  const link = new AppLink(relay, THING);
  await link.start();
  const appFor = (keys: ReturnType<typeof createUserKeys>) => new UserApp({ keys, thing: THING, deviceBoxPublicKey: deviceBox.publicKey, gen: access.generation });
  return { doorbell, access, owner, link, appFor, sessionEnds, actions };
}

/** A ring's snapshot key, wrapped for whoever is authorised at that moment (what the camera pipeline does). */
function ringAndWrap(d: Awaited<ReturnType<typeof device>>): { wrapping: ContentKeyWrapping; key: Uint8Array; seq: number } {
  const ring = d.doorbell.press();
  const key = nacl.randomBytes(32);
  return { wrapping: d.access.wrapContentKey(key), key, seq: ring.seq };
}

test.serial("over MQTT: add a shared user, ring, revoke, ring again", async (t) => {
  const d = await device();
  t.teardown(() => { d.link.close(); d.doorbell.stop(); });
  const aliceKeys = createUserKeys("alice", "resident");
  const added = await d.link.request(d.owner, () => d.owner.addUser(aliceKeys.identity));
  t.true(added.reply.ok && added.authenticated, JSON.stringify(added.reply));
  const alice = d.appFor(aliceKeys);

  const stream = await d.link.request(alice, () => alice.command("stream-start", { seconds: 60 }));
  t.true(stream.reply.ok && stream.authenticated);
  const ring1 = ringAndWrap(d);
  t.deepEqual(alice.unwrap(ring1.wrapping), ring1.key, "alice sees the first ring's snapshot");

  const revoked = await d.link.request(d.owner, () => d.owner.revoke("alice"));
  t.true(revoked.reply.ok && revoked.authenticated);
  t.deepEqual(d.sessionEnds.map((e) => [e.session.user, e.session.endReason]), [["alice", "revoked"]]);

  const refused = await d.link.request(alice, () => alice.command("snapshot"), { retryStale: false });
  t.false(refused.reply.ok);
  t.is(refused.reply.reason, "revoked");
  t.false(refused.authenticated, "the device no longer holds a key to seal for her");
  const ring2 = ringAndWrap(d);
  t.true(ring2.seq > ring1.seq);
  t.is(alice.unwrap(ring2.wrapping), undefined, "alice cannot open the second ring's snapshot");
  t.deepEqual(d.owner.unwrap(ring2.wrapping), ring2.key);
  t.deepEqual(d.actions, ["access-changed", "stream-started", "access-changed"]);
});

test.serial("revocation latency over loopback MQTT: owner publishes → session closed on the device, and → the revoked user's next command refused", async (t) => {
  const d = await device();
  t.teardown(() => { d.link.close(); d.doorbell.stop(); });
  const RUNS = 40;
  const toClose: number[] = [];
  const toRefused: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const keys = createUserKeys(`v${i}`, "viewer");
    const ok = await d.link.request(d.owner, () => d.owner.addUser(keys.identity));
    if (!ok.reply.ok) throw new Error(`add failed: ${ok.reply.reason}`);
    const viewer = d.appFor(keys);
    if (!(await d.link.request(viewer, () => viewer.command("stream-start", { seconds: 60 }))).reply.ok) throw new Error("stream failed");
    const revoke = d.owner.revoke(`v${i}`);
    const next = viewer.command("snapshot");
    const ends = d.sessionEnds.length;
    const t0 = performance.now();
    const done = d.link.request(d.owner, () => revoke, { retryStale: false });
    const refused = d.link.request(viewer, () => next, { retryStale: false });
    const [r1, r2] = await Promise.all([done, refused]);
    const t1 = performance.now();
    if (!r1.reply.ok || r2.reply.reason !== "revoked" || d.sessionEnds.length !== ends + 1) throw new Error(`run ${i}: ${r1.reply.reason} ${r2.reply.reason}`);
    toClose.push(d.sessionEnds[ends].at - t0);
    toRefused.push(t1 - t0);
  }
  const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.ceil((p / 100) * xs.length) - 1];
  t.log(`${RUNS} runs over mutual-TLS MQTT on loopback (owner app → broker → device → broker → app):`);
  t.log(`  → session closed on device:      p50 ${pct(toClose, 50).toFixed(2)} ms  p99 ${pct(toClose, 99).toFixed(2)} ms`);
  t.log(`  → refusal reply back at the app:  p50 ${pct(toRefused, 50).toFixed(2)} ms  p99 ${pct(toRefused, 99).toFixed(2)} ms`);
  t.true(pct(toRefused, 99) < 1000, "revocation within one second, end to end");
});
