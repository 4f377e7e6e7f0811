/*
 * The access anchor: the generation lives in the cloud too (a named shadow),
 * so writing the whole flash back to before a revoke does not let the revoked
 * user in. The device acts on nothing but revocations and the owner's signed
 * list until it holds a generation at least as new as the cloud's, and a
 * signed list brings it back into service.
 */
import test from "ava";
import nacl from "tweetnacl";
import { AccessTestbed, createUserKeys } from "../tools/owner-app";
import { ShadowService } from "../tools/standin/shadow";
import { Vault } from "../modules/core/vault";
import { MemoryStore } from "../modules/host/file-store";
import { ManualClock } from "./helpers/manual-clock";
import { ANCHOR_DOMAIN, anchorTopics, encodeAnchorUpdate, readAnchorAnswer } from "../modules/core/acl-anchor";
import { keyedTag } from "../modules/core/record";
import { utf8Encode } from "../modules/core/bytes";

const KEY = new Uint8Array(32).fill(0x42);
const random = { fill: (b: Uint8Array) => b.set(nacl.randomBytes(b.length)) };

/** A device over real flash (vault + key-value store) whose shadow requests go to a shadow service. */
function rig() {
  const vaultFlash = new MemoryStore();
  const kv = new MemoryStore();
  const shadows = new ShadowService();
  const clock = new ManualClock();
  const sent: string[] = [];
  let tb!: AccessTestbed;
  const publish = (topic: string, payload: Uint8Array) => {
    sent.push(topic);
    // AWS answers asynchronously; the test delivers the answers when it chooses.
    pending.push(...(shadows.handle(topic, payload) ?? []));
  };
  const pending: Array<{ topic: string; payload: string }> = [];
  const deliver = () => {
    for (const a of pending.splice(0)) tb.access.onAnchorMessage(a.topic, utf8Encode(a.payload));
  };
  const open = () => Vault.open({ store: vaultFlash, keys: { storageKey: () => KEY.slice() }, random });
  tb = new AccessTestbed({ clock, secrets: open(), store: kv, access: { anchor: { publish } } });
  const online = () => {
    tb.access.requestAnchor();
    deliver();
  };
  const reboot = () => {
    tb.secrets = open();
    tb.boot();
  };
  return { tb, clock, shadows, sent, deliver, online, reboot, vaultFlash, kv };
}

const copy = (s: MemoryStore) => new Map([...s.map].map(([k, v]) => [k, v.slice()]));
function restore(s: MemoryStore, saved: Map<string, Uint8Array>) {
  for (const k of [...s.map.keys()]) s.map.delete(k);
  for (const [k, v] of saved) s.map.set(k, v.slice());
}

test("the whole flash written back to before a revoke: the ex is refused, and the owner's signed list restores service", (t) => {
  const r = rig();
  const { tb } = r;
  // Before the shadow has answered, only revocations and signed lists are acted on.
  t.is(tb.send(tb.owner, tb.owner.command("snapshot")).reason, "busy");
  r.online();
  t.is(tb.access.anchor.state, "known");
  const ex = tb.addUser("ex", "resident");
  ex.gen = tb.access.generation;
  t.true(tb.send(ex, ex.command("snapshot")).ok);
  const vaultBefore = copy(r.vaultFlash);
  const kvBefore = copy(r.kv);
  const genBefore = tb.access.generation;
  r.clock.advance(1000);
  t.true(tb.send(tb.owner, tb.owner.revoke("ex")).ok);
  t.is(tb.access.anchor.gen, genBefore + 1, "the revoke's generation is anchored in the cloud");

  // An attacker writes the whole flash back: to the vault it is a consistent older state.
  restore(r.vaultFlash, vaultBefore);
  restore(r.kv, kvBefore);
  r.clock.advance(5000);
  r.reboot();
  t.truthy(tb.access.list.user("ex"), "the old list is back in flash");
  t.is(tb.send(ex, ex.command("snapshot", {}, { gen: genBefore })).reason, "busy", "nothing before the anchor is known");
  r.online();
  const refused = tb.send(ex, ex.command("snapshot", {}, { gen: genBefore }));
  t.is(refused.reason, "stale-generation");
  t.is(refused.read.reply.anchor, genBefore + 1);
  t.is(tb.send(ex, ex.command("chime-test", {}, { gen: genBefore })).reason, "stale-generation");
  t.is(tb.send(tb.owner, tb.owner.command("snapshot")).reason, "stale-generation", "the owner's snapshot too");
  t.is(tb.owner.anchored, genBefore + 1, "the owner's app learned the anchored generation");
  // A revocation still lands, but does not bring the device back: its generation counts from the old state.
  t.true(tb.send(tb.owner, tb.owner.revoke("ex")).ok);
  t.is(tb.access.generation, genBefore + 1);
  t.is(tb.send(tb.owner, tb.owner.command("snapshot")).reason, "stale-generation");
  // The owner signs the list again, above the anchor: in service, and the ex stays out.
  const back = tb.send(tb.owner, tb.owner.updateList([tb.ownerKeys.identity]));
  t.true(back.ok, `${back.reason}: ${back.detail}`);
  t.true(tb.access.generation > genBefore + 1);
  t.true(tb.send(tb.owner, tb.owner.command("snapshot")).ok);
  t.not(tb.send(ex, ex.command("snapshot", {}, { gen: tb.access.generation })).ok, true);
  t.is(tb.access.anchor.gen, tb.access.generation, "and the new generation is anchored");
});

test("the anchor's answers: none, authentic, another device's, forged, and errors", (t) => {
  const tag = keyedTag(ANCHOR_DOMAIN, new Uint8Array(32).fill(1), (d) => nacl.hash(d));
  const other = keyedTag(ANCHOR_DOMAIN, new Uint8Array(32).fill(2), (d) => nacl.hash(d));
  const topics = anchorTopics("porch-1");
  const shadows = new ShadowService();
  const [none] = shadows.handle(topics.get, new Uint8Array(0))!;
  t.deepEqual(readAnchorAnswer("porch-1", none.topic, utf8Encode(none.payload), tag), { kind: "none", forged: false });
  shadows.handle(topics.update, encodeAnchorUpdate("porch-1", 7, tag));
  const [got] = shadows.handle(topics.get, new Uint8Array(0))!;
  t.deepEqual(readAnchorAnswer("porch-1", got.topic, utf8Encode(got.payload), tag), { kind: "anchor", gen: 7, resets: 0 });
  t.deepEqual(readAnchorAnswer("porch-1", got.topic, utf8Encode(got.payload), other), { kind: "none", forged: true }, "another key (a reset device)");
  t.deepEqual(readAnchorAnswer("porch-2", got.topic, utf8Encode(got.payload), tag), undefined, "another thing's topic");
  // A higher generation written by someone without the key does not authenticate.
  const forged = got.payload.replace('"gen":7', '"gen":99');
  t.deepEqual(readAnchorAnswer("porch-1", got.topic, utf8Encode(forged), tag), { kind: "none", forged: true });
  t.deepEqual(readAnchorAnswer("porch-1", topics.getRejected, utf8Encode('{"code":429}'), tag), { kind: "error", code: 429 });
  t.deepEqual(readAnchorAnswer("porch-1", topics.getAccepted, utf8Encode("not json"), tag), { kind: "error", code: 0 });
});

test("an unknown anchor is asked for again when a command waits; a missing one is replaced; the device never reports below the cloud's", (t) => {
  const r = rig();
  const { tb } = r;
  t.is(tb.send(tb.owner, tb.owner.command("snapshot")).reason, "busy");
  t.deepEqual(r.sent, [anchorTopics(tb.thing).get], "asked once");
  r.clock.advance(6000);
  t.is(tb.send(tb.owner, tb.owner.command("snapshot")).reason, "busy");
  t.is(r.sent.length, 2, "asked again after a few seconds");
  r.deliver();
  t.true(tb.send(tb.owner, tb.owner.command("snapshot")).ok);
  // A newer anchor than this flash (written earlier): the device does not overwrite it with its own.
  const update = anchorTopics(tb.thing).update;
  const before = r.sent.filter((x) => x === update).length;
  r.shadows.delete(tb.thing, "doorward-acl");
  r.reboot();
  r.online();
  t.is(r.sent.filter((x) => x === update).length, before + 1, "with no anchor, the device reports its own");
  t.true(tb.send(tb.owner, tb.owner.command("snapshot")).ok);
  const ex = createUserKeys("late", "viewer");
  t.true(tb.send(tb.owner, tb.owner.addUser(ex.identity)).ok);
  t.is(tb.access.anchor.gen, tb.access.generation);
  // The cloud holds a newer authentic anchor than this flash: the device reports nothing over it.
  const tag = keyedTag(ANCHOR_DOMAIN, tb.device.secretKey, (d) => nacl.hash(d));
  r.shadows.handle(update, encodeAnchorUpdate(tb.thing, tb.access.generation + 5, tag));
  const reports = r.sent.filter((x) => x === update).length;
  r.reboot();
  r.online();
  t.is(r.sent.filter((x) => x === update).length, reports, "no report below the cloud's");
  t.is(tb.send(tb.owner, tb.owner.revoke("late")).ok, true, "a revocation still lands");
  t.is(r.sent.filter((x) => x === update).length, reports, "and is not reported while the list here is behind");
  t.is(tb.send(tb.owner, tb.owner.command("snapshot")).reason, "stale-generation");
});
