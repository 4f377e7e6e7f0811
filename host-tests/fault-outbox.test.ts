/*
 * The persistent outbox under power cuts at every step, and its overflow policy.
 *
 * A scripted workload (adds while offline, a reconnect, PUBACKs, a two-part
 * entry, an overflow eviction, a drop report, a lost session, more PUBACKs) runs
 * once per flash step with the power cut before that step (the store promises
 * only that one key write or delete is atomic). The flash is then booted again,
 * with a second cut at every step the recovering boot itself takes, and booted a
 * last time cleanly. After that boot:
 *   - what is queued is in the order it was added, byte for byte what was added;
 *   - every entry recorded in flash (add() returned true) and never acknowledged
 *     is there, unless the ledger counts it as dropped by the policy;
 *   - nothing is there that was never added; no orphan keys are left;
 *   - every drop is in the ledger, and either reported or due for a report.
 * Then the overflow policy: rings go last, every drop is reported through a
 * signed audit event, and a publish that fails mid-session stalls the queue
 * until a fresh session instead of letting later messages overtake it.
 */
import test from "ava";
import { Outbox, LEDGER_KEY, OUTBOX_PREFIX, type OutboxEntry, type OutboxKind } from "../modules/core/outbox";
import { Doorbell } from "../modules/core/doorbell";
import { Link } from "../modules/core/link";
import type { KeyValueStore, MqttHandlers, MqttTransport } from "../modules/core/ports";
import { MemoryStore } from "../modules/host/file-store";
import { FaultPlan, PowerCut, faultyStore } from "../modules/host/update-sink";
import { EventVerifier } from "../tools/verifier";
import { openEnvelope } from "../modules/core/events";
import { ManualClock } from "./helpers/manual-clock";
import { seededRandom } from "./helpers/crypto";

/** A transport whose PUBACKs the test hands out. */
class HandTransport implements MqttTransport {
  pending: Array<{ topic: string; payload: Uint8Array; resolve: () => void; reject: (e: Error) => void }> = [];
  published: Array<{ topic: string; payload: Uint8Array }> = [];
  handlers: MqttHandlers | undefined;
  up = true;
  connects = 0;
  connect(h: MqttHandlers) {
    this.connects++;
    this.handlers = h;
    if (this.up) h.onConnect();
    else h.onClose("ECONNREFUSED");
  }
  publish(topic: string, payload: Uint8Array) {
    this.published.push({ topic, payload });
    return new Promise<void>((resolve, reject) => this.pending.push({ topic, payload, resolve, reject }));
  }
  subscribe() { return Promise.resolve(); }
  close() {}
  ack(n = Infinity) {
    for (const p of this.pending.splice(0, Math.min(n, this.pending.length))) p.resolve();
  }
  failAll(message = "session closed") {
    for (const p of this.pending.splice(0)) p.reject(new Error(message));
  }
}

const tick = () => new Promise<void>((r) => setImmediate(r));
const quiet = () => {};

function payloadFor(seq: number, length = 200): Uint8Array {
  return Uint8Array.from({ length }, (_, i) => (seq * 131 + i * 7 + (i >> 8)) & 255);
}

function cloneStore(s: MemoryStore): MemoryStore {
  const c = new MemoryStore();
  for (const [k, v] of s.map) c.map.set(k, v.slice());
  return c;
}

interface Added {
  seq: number;
  kind: OutboxKind;
  payload: Uint8Array;
  stored: boolean;
}

interface Journal {
  added: Added[];
  acked: Set<number>;
}

const TOPIC = "doorward/cut-porch/events";

/** The workload. Stops at the first power cut (the device is dead from then on). */
async function workload(store: KeyValueStore, plan: FaultPlan | undefined, journal: Journal): Promise<void> {
  const transport = new HandTransport();
  const box = new Outbox({ transport, log: quiet, store, capacity: 4, flashBytes: 14_000, onStall: () => {} });
  const dead = () => plan?.tripped === true;
  const add = (seq: number, kind: OutboxKind, length = 200, covers?: number) => {
    if (dead()) return;
    const payload = payloadFor(seq, length);
    const entry: OutboxEntry = { topic: TOPIC, payload, seq, durable: true, kind, covers, onAcked: () => journal.acked.add(seq) };
    const stored = box.add(entry);
    // add() keeps an entry in RAM when flash fails; after a cut that RAM is gone.
    journal.added.push({ seq, kind, payload, stored: stored && !dead() });
  };
  const ack = async (n?: number) => {
    if (dead()) return;
    transport.ack(n);
    await tick();
  };
  add(1, "ring");
  add(2, "ring");
  add(3, "status");
  box.flush(true);
  await ack(1);
  add(4, "snapshot", 5000); // two KV values
  add(5, "audit");
  add(6, "ring"); // full: the status entry (3) is in flight, so the snapshot (4) goes
  if (!dead() && box.needsReport()) add(7, "report", 180, box.ledger.drops);
  if (!dead()) {
    transport.failAll();
    box.linkLost();
    box.flush(true);
  }
  await ack(2);
  add(8, "ring");
  add(9, "ring");
  add(10, "ring"); // full; 5, 6 and 7 are on the wire: the oldest ring not on the wire (8) goes
  add(11, "status"); // full of rings: the new status event is itself the one dropped
  if (!dead() && box.needsReport()) add(12, "report", 180, box.ledger.drops);
  if (!dead()) box.flush(true);
  await ack();
  add(13, "ring");
}

interface BootCheck {
  queue: number[];
  problems: string[];
}

function checkBoot(store: MemoryStore, journal: Journal): BootCheck {
  const transport = new HandTransport();
  const box = new Outbox({ transport, log: quiet, store, capacity: 4, flashBytes: 14_000 });
  const problems: string[] = [];
  const queue = box.pending();
  for (let i = 1; i < queue.length; i++) if (queue[i] <= queue[i - 1]) problems.push(`out of order: ${queue.join(",")}`);
  box.flush(true);
  const sent = transport.pending.map((p) => p);
  const bySeq = new Map(journal.added.map((a) => [a.seq, a]));
  const dropped = new Set(box.ledger.recent.map(([s]) => s));
  for (const p of sent) {
    const seq = queue[sent.indexOf(p)];
    const a = bySeq.get(seq);
    if (!a) problems.push(`phantom entry seq ${seq}`);
    else if (Buffer.compare(Buffer.from(a.payload), Buffer.from(p.payload)) !== 0 || p.topic !== TOPIC) problems.push(`seq ${seq} damaged`);
  }
  for (const seq of queue) if (dropped.has(seq)) problems.push(`seq ${seq} is both counted as dropped and still queued`);
  for (const a of journal.added) {
    if (!a.stored || journal.acked.has(a.seq) || a.kind === "report") continue;
    if (!queue.includes(a.seq) && !dropped.has(a.seq)) problems.push(`recorded seq ${a.seq} lost without a ledger entry`);
  }
  const keys = store.keys().filter((k) => k.startsWith(OUTBOX_PREFIX));
  const expectKeys = queue.reduce((n, seq) => n + (bySeq.get(seq)!.payload.length > 3900 ? 2 : 1), 0);
  if (keys.length !== expectKeys) problems.push(`orphan keys: ${keys.join(",")} for queue ${queue.join(",")}`);
  const l = box.ledger;
  const missing = journal.added.filter((a) => a.stored && !journal.acked.has(a.seq) && a.kind !== "report" && !queue.includes(a.seq)).length;
  if (l.drops < missing) problems.push(`ledger counts ${l.drops} drops, ${missing} recorded entries are gone`);
  return { queue, problems };
}

test("a power cut at any flash step of any outbox operation, and at any step of the next boot, loses nothing recorded", async (t) => {
  // An uncut run first, to count the steps.
  const probe = new FaultPlan();
  await workload(faultyStore(new MemoryStore(), probe), probe, { added: [], acked: new Set() });
  const steps = probe.steps.length;
  t.true(steps >= 20, `only ${steps} flash steps in the workload: ${probe.steps.join(" | ")}`);
  t.true(probe.steps.some((s) => s === `kv.write ${LEDGER_KEY}`), "the workload overflows the outbox");

  let scenarios = 0;
  let nested = 0;
  const failures: string[] = [];
  for (let cutAt = 1; cutAt <= steps + 1; cutAt++) {
    const flash = new MemoryStore();
    const plan = new FaultPlan(cutAt);
    const journal: Journal = { added: [], acked: new Set() };
    try {
      await workload(faultyStore(flash, plan), plan, journal);
    } catch (e) {
      if (!(e instanceof PowerCut)) throw e;
    }
    scenarios++;
    // Count the recovering boot's own steps, then cut it at each.
    const bootProbe = new FaultPlan();
    new Outbox({ transport: new HandTransport(), log: quiet, store: faultyStore(cloneStore(flash), bootProbe), capacity: 4, flashBytes: 14_000 });
    for (let cut2 = 1; cut2 <= bootProbe.steps.length + 1; cut2++) {
      const copy = cloneStore(flash);
      const plan2 = new FaultPlan(cut2);
      try {
        const rebooted = new Outbox({ transport: new HandTransport(), log: quiet, store: faultyStore(copy, plan2), capacity: 4, flashBytes: 14_000 });
        // A power cut alone never leaves a damaged record: a torn multi-part write must be invisible.
        if (rebooted.stats.damaged) failures.push(`cut at step ${cutAt} (${plan.steps[cutAt - 1]}): ${rebooted.stats.damaged} damaged record(s) after the reboot`);
      } catch (e) {
        if (!(e instanceof PowerCut)) throw e;
      }
      nested++;
      const check = checkBoot(copy, journal);
      for (const p of check.problems) failures.push(`cut at step ${cutAt} (${plan.steps[cutAt - 1] ?? "none"}), boot cut at ${cut2}: ${p}`);
    }
  }
  t.log(`workload: ${probe.steps.join(" | ")}`);
  t.log(`${steps} flash steps; ${scenarios} cut points × recovering-boot cuts = ${nested} reboots checked`);
  t.deepEqual(failures, []);
});

test("the checker catches a naive outbox that deletes before it is acknowledged", async (t) => {
  // Same workload, but flash entries vanish as soon as they are sent: a power cut then loses recorded rings.
  const flash = new MemoryStore();
  const journal: Journal = { added: [], acked: new Set() };
  await workload(flash, undefined, journal);
  const transport = new HandTransport();
  const naive = new Outbox({ transport, log: quiet, store: flash, capacity: 4, flashBytes: 14_000 });
  naive.add({ topic: TOPIC, payload: payloadFor(11), seq: 11, durable: true, kind: "ring" });
  journal.added.push({ seq: 11, kind: "ring", payload: payloadFor(11), stored: true });
  for (const k of flash.keys()) if (k.startsWith(OUTBOX_PREFIX)) flash.delete(k);
  const check = checkBoot(flash, journal);
  t.true(check.problems.some((p) => /lost without a ledger entry/.test(p)), check.problems.join("; "));
});

test("entries come back after a reboot in the order they were added, and go out before anything new", async (t) => {
  const flash = new MemoryStore();
  const first = new Outbox({ transport: new HandTransport(), log: quiet, store: flash });
  for (let seq = 1; seq <= 5; seq++) t.true(first.add({ topic: TOPIC, payload: payloadFor(seq, seq === 3 ? 9000 : 150), seq, durable: true, kind: "ring" }));
  first.add({ topic: "doorward/cut-porch/snapshots", payload: payloadFor(99, 8000), seq: 3 }); // volatile: gone with the power
  const transport = new HandTransport();
  const second = new Outbox({ transport, log: quiet, store: flash });
  t.deepEqual(second.pending(), [1, 2, 3, 4, 5]);
  second.add({ topic: TOPIC, payload: payloadFor(70), seq: 70, durable: true, kind: "ring" });
  second.flush(true);
  t.deepEqual(transport.published.map((p) => p.payload.length), [150, 150, 9000, 150, 150, 200]);
  t.deepEqual(Buffer.from(transport.published[2].payload), Buffer.from(payloadFor(3, 9000)), "a three-part entry comes back byte for byte");
  transport.ack();
  await tick();
  t.is(second.depth, 0);
  t.deepEqual(flash.keys().filter((k) => k.startsWith(OUTBOX_PREFIX)), [], "acknowledged entries leave flash");
});

test("a damaged record is discarded, counted and reported, never sent", (t) => {
  const flash = new MemoryStore();
  const first = new Outbox({ transport: new HandTransport(), log: quiet, store: flash });
  for (let seq = 1; seq <= 3; seq++) first.add({ topic: TOPIC, payload: payloadFor(seq), seq, durable: true, kind: "ring" });
  const key = flash.keys().filter((k) => k.startsWith(OUTBOX_PREFIX))[1];
  const bad = flash.read(key)!;
  bad[bad.length - 1] ^= 1;
  flash.write(key, bad);
  const transport = new HandTransport();
  const second = new Outbox({ transport, log: quiet, store: flash });
  t.deepEqual(second.pending(), [1, 3]);
  t.is(second.stats.damaged, 1);
  t.is(second.dropped, 1);
  t.deepEqual(second.ledger.recent, [[2, "ring"]]);
  t.true(second.needsReport());
});

test("when full, rings are the last thing dropped, and then the oldest ring goes", (t) => {
  const box = new Outbox({ transport: new HandTransport(), log: quiet, store: new MemoryStore(), capacity: 5 });
  const kinds: OutboxKind[] = ["ring", "status", "snapshot", "ring", "audit"];
  kinds.forEach((kind, i) => box.add({ topic: TOPIC, payload: payloadFor(i + 1), seq: i + 1, durable: true, kind }));
  const order: Array<[number, OutboxKind]> = [];
  for (let seq = 6; seq <= 10; seq++) box.add({ topic: TOPIC, payload: payloadFor(seq), seq, durable: true, kind: "ring" });
  order.push(...box.ledger.recent);
  t.deepEqual(order, [[2, "status"], [3, "snapshot"], [5, "audit"], [1, "ring"], [4, "ring"]]);
  t.deepEqual(box.pending(), [6, 7, 8, 9, 10], "the newest rings are kept");
  // A non-ring event into an outbox full of rings is itself the one dropped.
  t.false(box.add({ topic: TOPIC, payload: payloadFor(11), seq: 11, durable: true, kind: "snapshot" }));
  t.deepEqual(box.pending(), [6, 7, 8, 9, 10]);
  t.is(box.ledger.rings, 2);
  t.is(box.dropped, 6);
});

test("a doorbell offline for longer than its outbox reports every drop in a signed audit event, delivered in order", async (t) => {
  const clock = new ManualClock();
  const transport = new HandTransport();
  transport.up = false;
  const store = new MemoryStore();
  const seed = new Uint8Array(32).fill(9);
  const doorbell = new Doorbell({ thing: "full-porch", signingSeed: seed, clock, random: seededRandom("full"), store, transport, log: quiet, outbox: { capacity: 8 }, noncePoolSize: 2 });
  doorbell.start();
  const rings = [];
  for (let i = 0; i < 12; i++) {
    rings.push(doorbell.press());
    clock.advance(300); // idle: nonces are topped up and the drop report is queued
  }
  t.is(doorbell.outbox.dropped, 4);
  t.deepEqual(doorbell.outbox.ledger.recent.map(([s]) => s), rings.slice(0, 4).map((r) => r.seq), "the four oldest rings were dropped");
  t.true(doorbell.outbox.needsReport(), "reports are rate-limited: the later drops wait for the next one");
  clock.advance(30_000);
  t.false(doorbell.outbox.needsReport(), "a report covering every drop is queued");

  const verifier = new EventVerifier({ "full-porch": doorbell.signer.publicKey });
  transport.up = true;
  clock.advance(70_000); // the link's retry
  t.true(doorbell.link.online);
  for (let i = 0; i < 5 && transport.pending.length; i++) {
    transport.ack();
    await tick();
  }
  t.is(doorbell.outbox.depth, 0);
  const delivered = transport.published.filter((p) => p.topic.endsWith("/events")).map((p) => {
    const verdict = verifier.verify(p.payload);
    t.true(verdict.ok, verdict.ok ? "" : verdict.detail);
    return openEnvelope(p.payload).event;
  });
  const reports = delivered.filter((e) => e.type === "audit");
  t.true(reports.length >= 1);
  const last = reports[reports.length - 1];
  t.is(last.report, "outbox-overflow");
  t.is(last.total, 4);
  t.is(last.rings, 4);
  t.deepEqual((last.lost as Array<[number, string]>).map(([s]) => s), rings.slice(0, 4).map((r) => r.seq));
  t.deepEqual(delivered.filter((e) => e.type === "ring").map((e) => e.seq), rings.slice(4).map((r) => r.seq), "the eight newest rings arrive, in order");
  t.is(doorbell.outbox.ledger.acked, 4, "the acknowledged report is remembered");
  doorbell.stop();

  // Rebooted: nothing more to report.
  const again = new Doorbell({ thing: "full-porch", signingSeed: seed, clock, random: seededRandom("full-2"), store, transport, log: quiet, outbox: { capacity: 8 } });
  t.false(again.outbox.needsReport());
  t.is(again.outbox.dropped, 4);
});

test("a publish that fails while the session looks up holds the queue and gets a fresh session; nothing overtakes it", async (t) => {
  const clock = new ManualClock();
  const transport = new HandTransport();
  const box: { outbox?: Outbox } = {};
  const link = new Link({ transport, clock, random: seededRandom("stall"), log: quiet, onOnline: () => box.outbox!.flush(true), onOffline: () => box.outbox!.linkLost() });
  box.outbox = new Outbox({ transport, log: quiet, store: new MemoryStore(), window: 1, onStall: (reason) => link.drop(reason) });
  link.start();
  t.true(link.online);
  for (let seq = 1; seq <= 3; seq++) box.outbox.add({ topic: TOPIC, payload: payloadFor(seq), seq, durable: true, kind: "ring" });
  box.outbox.flush(true);
  t.is(transport.pending.length, 1, "window of one");
  transport.pending.shift()!.reject(new Error("write EPIPE"));
  await tick();
  t.is(link.state, "waiting");
  t.is(link.status().cause, "stalled");
  t.is(transport.pending.length, 0, "seq 2 did not go out ahead of seq 1");
  clock.advance(70_000);
  t.true(link.online);
  for (let i = 0; i < 3; i++) {
    transport.ack();
    await tick();
  }
  t.deepEqual(transport.published.map((p) => p.payload[0]), [1, 1, 2, 3].map((s) => payloadFor(s)[0]));
  t.is(box.outbox.depth, 0);
});
