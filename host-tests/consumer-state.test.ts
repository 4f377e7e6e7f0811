/*
 * The cloud consumer's replay state: kept in a file across restarts, replaced
 * atomically, refused when damaged; and a device whose counters went backwards
 * (its flash written back from an old image) raised as an alert rather than
 * dropped as a replay. Events come from the real signer, and in the rollback
 * proof of concept from a real Doorbell whose flash is imaged and restored.
 */
import test from "ava";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Doorbell } from "../modules/core/doorbell";
import { sealEvent, type DoorEvent } from "../modules/core/events";
import { AckingTransport } from "./helpers/acking-transport";
import { Ed25519Signer } from "../modules/core/signer";
import { MemoryStore } from "../modules/host/file-store";
import { hostRandom } from "../modules/host/random";
import { CloudConsumer } from "../tools/cloud";
import { EventVerifier, FileReplayState, RECENT_KEPT, ReplayStateError, parseReplayState } from "../tools/verifier";
import { ManualClock } from "./helpers/manual-clock";

const thing = "porch-1";
const topic = `doorward/${thing}/events`;
const seed = new Uint8Array(32).fill(11);
const signer = new Ed25519Signer(seed, { random: hostRandom, boot: 1 });

function event(boot: number, seq: number, time = 1_790_000_000_000 + seq): Uint8Array {
  const e: DoorEvent = { v: 1, type: "ring", thing, boot, seq, time };
  return sealEvent(e, signer);
}

function tempFile(): string {
  return path.join(fs.mkdtempSync(path.join(os.tmpdir(), "dw-consumer-")), "replay.json");
}

test("PoC: a restarted consumer does not accept events it accepted before the restart", (t) => {
  const file = tempFile();
  const captured = [event(3, 10), event(3, 11), event(3, 12)];
  const before = new EventVerifier({ [thing]: signer.publicKey }, { state: new FileReplayState(file) });
  for (const p of captured) t.true(before.verify(p, { topic }).ok);

  // The consumer restarts; an attacker replays what it captured on the wire.
  const after = new EventVerifier({ [thing]: signer.publicKey }, { state: new FileReplayState(file) });
  for (const p of captured) {
    const v = after.verify(p, { topic });
    t.false(v.ok, "a replay after the restart is refused");
    t.is(!v.ok && v.reason, "replay");
    t.true(!v.ok && v.redelivery === true);
  }
  t.is(after.lastSeq(thing), 12);
  t.is(after.lastBoot(thing), 3);
  t.true(after.verify(event(3, 13), { topic }).ok, "the next genuine event still passes");
});

test("the mark is on disk before verify() returns, and the file is replaced whole", (t) => {
  const file = tempFile();
  const v = new EventVerifier({ [thing]: signer.publicKey }, { state: new FileReplayState(file) });
  t.false(fs.existsSync(file), "a first run starts with no file");
  t.true(v.verify(event(1, 1)).ok);
  t.deepEqual(parseReplayState(fs.readFileSync(file, "utf8"))[thing].seq, 1);
  t.true(v.verify(event(1, 2)).ok);
  const marks = parseReplayState(fs.readFileSync(file, "utf8"));
  t.is(marks[thing].seq, 2);
  t.is(marks[thing].recent.length, 2);
  t.deepEqual(fs.readdirSync(path.dirname(file)), ["replay.json"], "no temporary file left behind");
  // A rejected event changes nothing on disk.
  const bytes = fs.readFileSync(file);
  t.false(v.verify(event(1, 2)).ok);
  t.deepEqual(fs.readFileSync(file), bytes);
});

test("the recent list is bounded", (t) => {
  const file = tempFile();
  const v = new EventVerifier({ [thing]: signer.publicKey }, { state: new FileReplayState(file) });
  for (let s = 1; s <= RECENT_KEPT + 10; s++) t.true(v.verify(event(1, s)).ok);
  const marks = parseReplayState(fs.readFileSync(file, "utf8"));
  t.is(marks[thing].recent.length, RECENT_KEPT);
  t.is(marks[thing].recent[0][1], 11);
});

test("a damaged state file is an error naming the file, never an empty state", (t) => {
  const file = tempFile();
  for (const text of ["", "{", "[]", '{"format":"doorward-replay-state","v":1,"things":{"porch-1":{"key":"abababababababababababababababababababababababababababababababab","boot":1,"seq":-4,"recent":[]}}}', '{"format":"other","v":1,"things":{}}']) {
    fs.writeFileSync(file, text);
    const e = t.throws(() => new EventVerifier({}, { state: new FileReplayState(file) }), { instanceOf: ReplayStateError });
    t.true(e!.message.startsWith(file), e!.message);
  }
});

test("counters that went backwards are alerts: a lower boot, or a second event under one (boot, seq); a redelivery is not", (t) => {
  const v = new EventVerifier({ [thing]: signer.publicKey });
  t.true(v.verify(event(5, 300)).ok);
  const same = v.verify(event(5, 300));
  t.is(!same.ok && same.reason, "replay", "the same bytes again: a redelivery");
  const lower = v.verify(event(4, 310));
  t.is(!lower.ok && lower.reason, "rollback");
  t.regex(!lower.ok ? lower.detail : "", /boot 4 is below boot 5/);
  const twin = v.verify(event(5, 300, 1_790_000_999_000));
  t.is(!twin.ok && twin.reason, "rollback", "different bytes under an accepted (boot, seq)");
  const older = v.verify(event(5, 299));
  t.is(!older.ok && older.reason, "replay", "an older number of the same boot, never seen: a replay");
  // A new boot whose sequence counter is behind: no old event carries a boot never seen, so it is accepted, with an alert.
  const behind = v.verify(event(6, 100));
  t.true(behind.ok);
  t.regex(behind.ok ? behind.alert ?? "" : "", /sequence counter went backwards/);
  const next = v.verify(event(6, 101));
  t.true(next.ok && next.alert === undefined);
});

async function bootAndRing(store: MemoryStore, clock: ManualClock) {
  const transport = new AckingTransport();
  const doorbell = new Doorbell({ thing, signingSeed: seed, clock, random: hostRandom, store, transport, log: () => {} });
  doorbell.start();
  clock.advance(5_000);
  doorbell.press();
  for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
  clock.advance(5_000);
  doorbell.stop();
  return transport.published.filter((p) => p.topic === topic);
}

test("PoC: after the device's flash is written back, its genuine rings reach the owner as alerts, not silent drops", async (t) => {
  const store = new MemoryStore();
  const clock = new ManualClock();
  const alerts: string[] = [];
  const cloud = new CloudConsumer({ stateFile: tempFile(), onAlert: (e) => alerts.push(e.alert!) });
  cloud.register(thing, signer.publicKey);
  const deliver = (msgs: Array<{ topic: string; payload: Uint8Array }>) => msgs.map((m) => cloud.accept(m.topic, m.payload));

  t.true(deliver(await bootAndRing(store, clock)).every((e) => e.verdict.ok));
  const image = new Map([...store.map].map(([k, v]) => [k, v.slice()]));
  for (let i = 0; i < 3; i++) t.true(deliver(await bootAndRing(store, clock)).every((e) => e.verdict.ok));

  store.map.clear();
  for (const [k, v] of image) store.map.set(k, v.slice());
  const afterRollback = deliver(await bootAndRing(store, clock));
  t.is(afterRollback.length, 1);
  const [ring] = afterRollback;
  t.false(ring.verdict.ok);
  t.is(!ring.verdict.ok && ring.verdict.reason, "rollback", "reported as a rollback, not dropped as a replay");
  t.is(alerts.length, 1);
  t.is(cloud.alerts[0], ring);
  t.is(ring.verdict.event?.type, "ring", "the alert carries the genuine ring");
});

test("a thing registered again under a new key (a reset device) starts with fresh marks; the old key's marks stay for the old key", (t) => {
  const file = tempFile();
  const v = new EventVerifier({ [thing]: signer.publicKey }, { state: new FileReplayState(file) });
  t.true(v.verify(event(9, 900)).ok);
  const reset = new Ed25519Signer(new Uint8Array(32).fill(12), { random: hostRandom, boot: 1 });
  v.register(thing, reset.publicKey);
  t.is(v.lastSeq(thing), 0);
  const first = v.verify(sealEvent({ v: 1, type: "ring", thing, boot: 1, seq: 1, time: null }, reset));
  t.true(first.ok && first.alert === undefined, "the new device's first ring is not taken for a rollback");
  const restarted = new EventVerifier({ [thing]: reset.publicKey }, { state: new FileReplayState(file) });
  t.is(restarted.lastSeq(thing), 1);
  const old = restarted.verify(event(9, 901));
  t.is(!old.ok && old.reason, "signature", "the old key no longer speaks for the thing");
});

test("verifier CLI: with --state a second run refuses the files the first accepted; a damaged state file is one clear line", async (t) => {
  const { spawnSync } = await import("node:child_process");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dw-verifier-cli-"));
  const files = [event(2, 1), event(2, 2)].map((p, i) => {
    const f = path.join(dir, `e${i}.json`);
    fs.writeFileSync(f, p);
    return f;
  });
  const state = path.join(dir, "state.json");
  const run = () => spawnSync(process.execPath, ["--import=tsx", "tools/verifier.ts", "--state", state, thing, Buffer.from(signer.publicKey).toString("hex"), ...files], { encoding: "utf8" });
  const first = run();
  t.is(first.status, 0, first.stderr + first.stdout);
  t.regex(first.stdout, /e1\.json: ok ring boot=2 seq=2/);
  const second = run();
  t.is(second.status, 1);
  t.regex(second.stdout, /e0\.json: REJECTED replay/);
  fs.writeFileSync(state, "{not json");
  const damaged = run();
  t.is(damaged.status, 2);
  t.regex(damaged.stderr, /state\.json: replay state: not JSON/);
});
