/*
 * The access anchor across a factory reset. The reset erases the device's
 * keys and list, but not the cloud: the thing's named shadow still holds the
 * old owner's generation. The reset device, given to a new owner under the
 * same thing name, must treat that document as not its own (absent),
 * overwrite it with its own report, and serve the new owner at once; rings
 * flow throughout. A party able to write the shadow who puts the old owner's
 * document back later gains nothing: the new owner is not locked out, the
 * generation is not taken back, and the old owner's keys and signed lists are
 * refused. And the whole flash written back to before the reset (the old
 * owner's device again, with its users) is told apart from a previous
 * owner's anchor: it acts on nothing but revocations.
 */
import test from "ava";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import nacl from "tweetnacl";
import { anchorTag, bootFirmware, type RunningFirmware, type WaitingFirmware } from "../modules/core/firmware";
import { encodeBundle, type DeviceIdentity, type ProvisioningBundle } from "../modules/core/provisioning";
import type { MqttHandlers, MqttTransport } from "../modules/core/ports";
import { deviceBoxSecretFromSeed } from "../modules/core/access";
import { anchorTopics, readAnchorAnswer } from "../modules/core/acl-anchor";
import { topicsFor } from "../modules/core/topics";
import { utf8Encode } from "../modules/core/bytes";
import { MemoryStore } from "../modules/host/file-store";
import { hostRandom } from "../modules/host/random";
import { issueThingCredentials } from "../tools/pki";
import { EventVerifier } from "../tools/verifier";
import { ShadowService } from "../tools/standin/shadow";
import { OwnerApp, UserApp, createUserKeys, type AppKeys, type MadeCommand } from "../tools/owner-app";
import { ManualClock } from "./helpers/manual-clock";

const THING = "porch-resold";
const KEY = new Uint8Array(32).fill(0x42);
const keys = { storageKey: () => KEY.slice() };
let creds: { certDer: Uint8Array; keyDer: Uint8Array; caDer: Uint8Array };

test.before(async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dw-anchor-reset-pki-"));
  creds = await issueThingCredentials(dir, THING);
});

function bundle(owner: AppKeys, ssid: string): ProvisioningBundle {
  return {
    thing: THING, wifi: { ssid, password: `${ssid} passphrase` }, endpoint: "localhost", cert: creds.certDer, key: creds.keyDer, ca: creds.caDer,
    owner: { signKey: owner.identity.signPublicKey, boxKey: owner.identity.boxPublicKey },
  };
}

/** A broker with the thing's named shadows (the stand-in's), answering shadow requests to the session that asked, as AWS does. */
class Broker {
  shadows = new ShadowService();
  received: Array<{ topic: string; payload: Uint8Array }> = [];
  #session: { handlers: MqttHandlers; open: boolean } | undefined;
  transport(): MqttTransport {
    const broker = this;
    return {
      connect(handlers) {
        const session = { handlers, open: true };
        broker.#session = session;
        queueMicrotask(() => handlers.onConnect());
      },
      publish(topic, payload) {
        broker.received.push({ topic, payload: payload.slice() });
        const answers = broker.shadows.handle(topic, payload);
        const session = broker.#session;
        for (const a of answers ?? []) queueMicrotask(() => session?.open && session.handlers.onMessage(a.topic, utf8Encode(a.payload)));
        return Promise.resolve();
      },
      subscribe: () => Promise.resolve(),
      close: () => broker.drop("closed"),
    };
  }
  drop(reason: string): void {
    const s = this.#session;
    if (!s?.open) return;
    s.open = false;
    queueMicrotask(() => s.handlers.onClose(reason));
  }
  /** Deliver a command as the cloud relay would. */
  command(made: MadeCommand): void {
    this.#session?.handlers.onMessage(topicsFor(THING).commands, made.payload);
  }
  /** The shadow's current document, as a get answers it. */
  anchorAnswer(): { topic: string; payload: string } {
    return this.shadows.handle(anchorTopics(THING).get, new Uint8Array(0))![0];
  }
}

const settle = async () => { for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r)); };
async function run(clock: ManualClock, ms: number) {
  for (let t = 0; t < ms; t += 500) {
    clock.advance(500);
    await settle();
  }
}

function boot(flash: { vault: MemoryStore; store: MemoryStore }, clock: ManualClock, broker: Broker) {
  return bootFirmware({
    clock, random: hostRandom, vaultStore: flash.vault, store: flash.store, keys, log: () => {},
    transport: (_identity: DeviceIdentity) => broker.transport(),
  });
}

const deviceBoxKey = (fw: RunningFirmware) => nacl.box.keyPair.fromSecretKey(deviceBoxSecretFromSeed(fw.identity.signingSeed)).publicKey;
/** What the shadow anchors, read as the chip reads it. */
const anchored = (broker: Broker) => {
  const a = broker.anchorAnswer();
  return readAnchorAnswer(THING, a.topic, utf8Encode(a.payload), anchorTag(keys));
};

/** Send a command and read the device's reply to it. */
async function send(broker: Broker, clock: ManualClock, app: UserApp, made: MadeCommand) {
  const before = broker.received.length;
  broker.command(made);
  await run(clock, 1000);
  const replies = broker.received.slice(before).filter((m) => m.topic === topicsFor(THING).replies).map((m) => app.read(m.payload));
  const mine = replies.filter((r) => r.authenticated && r.reply.from === app.id);
  if (mine.length !== 1) throw new Error(`expected one reply for ${app.id}, got ${mine.length} of ${JSON.stringify(replies)}`);
  return mine[0].reply;
}

function rings(broker: Broker, fw: RunningFirmware): number {
  const verifier = new EventVerifier({ [THING]: fw.identity.publicKey });
  return broker.received.map((m) => verifier.verify(m.payload, { topic: m.topic })).filter((v) => v.ok && v.event.type === "ring").length;
}

test.serial("after a factory reset the old owner's anchor in the shadow is not the device's: the new owner is served, rings flow, and a replay of the old document changes nothing", async (t) => {
  const flash = { vault: new MemoryStore(), store: new MemoryStore() };
  const clock = new ManualClock();
  const broker = new Broker();
  const now = () => clock.wallTime()!;

  // The old owner's era: a few list changes, each anchored in the shadow under the old device key.
  const oldKeys = createUserKeys("owner", "owner");
  (boot(flash, clock, broker) as WaitingFirmware).provisioning.accept(encodeBundle(bundle(oldKeys, "Old-Home")));
  const old = boot(flash, clock, broker) as RunningFirmware;
  await run(clock, 3000);
  t.is(old.access.anchor.state, "known");
  const alice = new OwnerApp({ keys: oldKeys, thing: THING, deviceBoxPublicKey: deviceBoxKey(old), now });
  const oldSigned: MadeCommand[] = [];
  for (const id of ["bob", "carol", "dave", "erin"]) {
    const made = alice.addUser(createUserKeys(id, "resident").identity);
    oldSigned.push(made);
    t.true((await send(broker, clock, alice, made)).ok, `the old owner adds ${id}`);
  }
  const oldGen = old.access.generation;
  t.true(oldGen >= 5);
  const oldDoc = broker.anchorAnswer();
  t.deepEqual(anchored(broker), { kind: "anchor", gen: oldGen, resets: 0 }, "the shadow anchors the old owner's generation");
  old.stop();
  broker.drop("reset");

  // Reset, and the same thing is provisioned for a new owner. The shadow is left as it was.
  old.provisioning.factoryReset();
  const newKeys = createUserKeys("owner", "owner");
  (boot(flash, clock, broker) as WaitingFirmware).provisioning.accept(encodeBundle(bundle(newKeys, "New-Home")));
  const fresh = boot(flash, clock, broker) as RunningFirmware;
  t.notDeepEqual(deviceBoxKey(fresh), deviceBoxKey(old), "the reset device has new keys");
  t.deepEqual(anchored(broker), { kind: "anchor", gen: oldGen, resets: 0 }, "the old document is still in the shadow at boot");
  await run(clock, 3000);

  t.is(fresh.access.anchor.state, "known");
  t.true(fresh.access.generation < oldGen, "the new list starts below the old owner's generation");
  const nora = new OwnerApp({ keys: newKeys, thing: THING, deviceBoxPublicKey: deviceBoxKey(fresh), now });
  const snap = await send(broker, clock, nora, nora.command("chime-test"));
  t.true(snap.ok, `the new owner's command is accepted (${snap.reason})`);
  const guest = createUserKeys("guest", "viewer");
  t.true((await send(broker, clock, nora, nora.addUser(guest.identity))).ok, "the new owner changes the list");
  t.deepEqual(anchored(broker), { kind: "anchor", gen: fresh.access.generation, resets: 1 }, "the shadow now anchors the new owner's generation, after one reset");
  fresh.doorbell.press();
  await run(clock, 5000);
  t.is(rings(broker, fresh), 1, "the ring was delivered and verifies under the new key");

  // Someone who can write the shadow puts the old owner's document back, and the session is cut.
  const genBeforeReplay = fresh.access.generation;
  broker.shadows.handle(anchorTopics(THING).update, utf8Encode(JSON.stringify({ state: JSON.parse(oldDoc.payload).state })));
  t.deepEqual(anchored(broker), { kind: "anchor", gen: oldGen, resets: 0 }, "the replay is in place");
  broker.drop("replayed");
  await run(clock, 30_000);
  t.is(fresh.access.anchor.state, "known");
  t.is(fresh.access.generation, genBeforeReplay, "the generation is not taken back");
  t.true((await send(broker, clock, nora, nora.command("chime-test"))).ok, "the new owner is not locked out");
  const guestApp = new UserApp({ keys: guest, thing: THING, deviceBoxPublicKey: deviceBoxKey(fresh), now, gen: fresh.access.generation });
  t.true((await send(broker, clock, guestApp, guestApp.command("snapshot"))).ok, "nor is the user the new owner added");
  t.deepEqual(anchored(broker), { kind: "anchor", gen: genBeforeReplay, resets: 1 }, "the device put its own anchor back over the replay");

  // The old owner's keys and the old owner's signed lists are nothing to the reset device.
  const ghost = new OwnerApp({ keys: oldKeys, thing: THING, deviceBoxPublicKey: deviceBoxKey(fresh), now, gen: fresh.access.generation });
  const before = broker.received.length;
  broker.command(ghost.command("chime-test"));
  for (const made of oldSigned) broker.command(made);
  await run(clock, 2000);
  const answered = broker.received.slice(before).filter((m) => m.topic === topicsFor(THING).replies).map((m) => ghost.read(m.payload));
  t.false(answered.some((r) => r.authenticated && r.reply.ok), "no command of the old owner's is acted on");
  t.is(fresh.access.generation, genBeforeReplay);
  t.deepEqual(fresh.access.list.users().map((u) => u.id).sort(), ["guest", "owner"]);
  fresh.doorbell.press();
  await run(clock, 5000);
  t.is(rings(broker, fresh), 2, "rings still flow");
  fresh.stop();
});

const copy = (s: MemoryStore) => new Map([...s.map].map(([k, v]) => [k, v.slice()]));
function restore(s: MemoryStore, saved: Map<string, Uint8Array>) {
  for (const k of [...s.map.keys()]) s.map.delete(k);
  for (const [k, v] of saved) s.map.set(k, v.slice());
}

test.serial("the whole flash written back to before a factory reset acts on nothing but revocations, and leaves the new owner's anchor alone", async (t) => {
  const flash = { vault: new MemoryStore(), store: new MemoryStore() };
  const clock = new ManualClock();
  const broker = new Broker();
  const now = () => clock.wallTime()!;
  const oldKeys = createUserKeys("owner", "owner");
  (boot(flash, clock, broker) as WaitingFirmware).provisioning.accept(encodeBundle(bundle(oldKeys, "Old-Home")));
  const old = boot(flash, clock, broker) as RunningFirmware;
  await run(clock, 3000);
  const alice = new OwnerApp({ keys: oldKeys, thing: THING, deviceBoxPublicKey: deviceBoxKey(old), now });
  const bob = createUserKeys("bob", "resident");
  t.true((await send(broker, clock, alice, alice.addUser(bob.identity))).ok);
  // The old owner (or anyone with the board for a minute) keeps a dump of the whole flash.
  const dump = { vault: copy(flash.vault), store: copy(flash.store) };
  old.stop();
  broker.drop("reset");
  old.provisioning.factoryReset();

  const newKeys = createUserKeys("owner", "owner");
  (boot(flash, clock, broker) as WaitingFirmware).provisioning.accept(encodeBundle(bundle(newKeys, "New-Home")));
  const fresh = boot(flash, clock, broker) as RunningFirmware;
  await run(clock, 3000);
  const nora = new OwnerApp({ keys: newKeys, thing: THING, deviceBoxPublicKey: deviceBoxKey(fresh), now });
  t.true((await send(broker, clock, nora, nora.addUser(createUserKeys("guest", "viewer").identity))).ok);
  const newAnchor = anchored(broker);
  t.is(newAnchor?.kind, "anchor");
  fresh.stop();
  broker.drop("dump");

  // The dump goes back: the device is the old owner's again, with bob listed.
  restore(flash.vault, dump.vault);
  restore(flash.store, dump.store);
  const back = boot(flash, clock, broker) as RunningFirmware;
  t.truthy(back.access.list.user("bob"), "the dump lists bob");
  await run(clock, 3000);
  t.true(back.access.anchor.retired, "the anchor shows the flash is from before a reset");
  const bobApp = new UserApp({ keys: bob, thing: THING, deviceBoxPublicKey: deviceBoxKey(back), now, gen: back.access.generation });
  t.is((await send(broker, clock, bobApp, bobApp.command("chime-test"))).reason, "stale-generation", "bob is refused");
  const ghost = new OwnerApp({ keys: oldKeys, thing: THING, deviceBoxPublicKey: deviceBoxKey(back), now, gen: back.access.generation });
  t.is((await send(broker, clock, ghost, ghost.command("snapshot"))).reason, "stale-generation", "so is the old owner");
  t.is((await send(broker, clock, ghost, ghost.updateList([oldKeys.identity, bob.identity], { listGen: 50 }))).reason, "stale-generation", "and the old owner's signed list does not bring it back");
  t.deepEqual(anchored(broker), newAnchor, "the new owner's anchor is left as it was");
  back.stop();

  // A reset from here is a new identity above the count the cloud holds, as any reset is.
  back.provisioning.factoryReset();
  (boot(flash, clock, broker) as WaitingFirmware).provisioning.accept(encodeBundle(bundle(newKeys, "New-Home")));
  const again = boot(flash, clock, broker) as RunningFirmware;
  await run(clock, 3000);
  t.false(again.access.anchor.retired);
  const owner = new OwnerApp({ keys: newKeys, thing: THING, deviceBoxPublicKey: deviceBoxKey(again), now });
  const served = await send(broker, clock, owner, owner.command("chime-test"));
  t.true(served.ok, `the owner is served at once (${served.reason})`);
  t.deepEqual(anchored(broker), { kind: "anchor", gen: again.access.generation, resets: 2 });
  again.stop();
});
