/*
 * Outbox restore over a damaged or littered flash: whatever restore cannot read it
 * skips, it never lets a new entry take the place of a live one, and every entry it
 * could not read is reported upstream as what it was (a damaged ring as a ring).
 * The drop ledger checks itself: a damaged ledger is never believed (it once made
 * boot delete a live entry) and its loss is reported in the signed drop report.
 */
import test from "ava";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Outbox, LEDGER_KEY, OUTBOX_PREFIX, type OutboxKind } from "../modules/core/outbox";
import { Doorbell } from "../modules/core/doorbell";
import { openEnvelope } from "../modules/core/events";
import type { KeyValueStore, MqttHandlers, MqttTransport } from "../modules/core/ports";
import { FileStore, MemoryStore } from "../modules/host/file-store";
import { EventVerifier } from "../tools/verifier";
import { ManualClock } from "./helpers/manual-clock";
import { seededRandom } from "./helpers/crypto";

class HandTransport implements MqttTransport {
  pending: Array<{ topic: string; payload: Uint8Array; resolve: () => void }> = [];
  published: Array<{ topic: string; payload: Uint8Array }> = [];
  up = true;
  connect(h: MqttHandlers) {
    if (this.up) h.onConnect();
    else h.onClose("ECONNREFUSED");
  }
  publish(topic: string, payload: Uint8Array) {
    this.published.push({ topic, payload });
    return new Promise<void>((resolve) => this.pending.push({ topic, payload, resolve }));
  }
  subscribe() { return Promise.resolve(); }
  close() {}
  ack() {
    for (const p of this.pending.splice(0)) p.resolve();
  }
}

const TOPIC = "doorward/litter-porch/events";
const quiet = () => {};
const tick = () => new Promise<void>((r) => setImmediate(r));
const payloadFor = (seq: number, length = 200) => Uint8Array.from({ length }, (_, i) => (seq * 37 + i) & 255);

function tempStore(t: { teardown(fn: () => void): void }): { dir: string; store: FileStore } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dw-outbox-"));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return { dir, store: new FileStore(dir) };
}

function addRings(box: Outbox, seqs: number[], kind: OutboxKind = "ring"): void {
  for (const seq of seqs) box.add({ topic: TOPIC, payload: payloadFor(seq), seq, durable: true, kind });
}

/** Boot an outbox over the store and collect what it sends, acknowledging everything. */
async function deliverAll(store: KeyValueStore): Promise<{ box: Outbox; sent: number[] }> {
  const transport = new HandTransport();
  const box = new Outbox({ transport, log: quiet, store });
  box.flush(true);
  const sent: number[] = [];
  for (let i = 0; i < 10 && transport.pending.length; i++) {
    for (const p of transport.pending) sent.push(p.payload[0]);
    transport.ack();
    await tick();
  }
  return { box, sent };
}

const firstByte = (seqs: number[]) => seqs.map((s) => payloadFor(s)[0]);

test("a stray `ob.1~` and a name longer than 15 characters do not stop restore, and new rings never overwrite unsent ones", async (t) => {
  const { dir, store } = tempStore(t);
  addRings(new Outbox({ transport: new HandTransport(), log: quiet, store }), [1, 2, 3, 4, 5]);
  fs.writeFileSync(path.join(dir, "ob.1~"), "an editor's backup");
  fs.writeFileSync(path.join(dir, "ob.123456789abcdef"), "a name no KV store holds");

  const second = new Outbox({ transport: new HandTransport(), log: quiet, store });
  t.deepEqual(second.pending(), [1, 2, 3, 4, 5], "every unsent ring came back");
  addRings(second, [65, 66]);
  t.deepEqual(second.pending(), [1, 2, 3, 4, 5, 65, 66]);
  t.true(second.needsReport(), "the keys it could not place are reported, not hidden");

  const { sent } = await deliverAll(store);
  t.deepEqual(sent, firstByte([1, 2, 3, 4, 5, 65, 66]), "the next boot sends all of them, in order, none overwritten");
});

test("a directory where an entry or a stray should be does not stop later sends; the entry it hides is reported as a ring", async (t) => {
  const { dir, store } = tempStore(t);
  addRings(new Outbox({ transport: new HandTransport(), log: quiet, store }), [1, 2, 3, 4, 5]);
  const keys = store.keys().filter((k) => k.startsWith(OUTBOX_PREFIX));
  t.is(keys.length, 5);
  // The third entry's value becomes a directory (unreadable), and a directory sits at an old-style name.
  fs.rmSync(path.join(dir, keys[2]));
  fs.mkdirSync(path.join(dir, keys[2]));
  fs.mkdirSync(path.join(dir, "ob.3"), { recursive: true });

  const second = new Outbox({ transport: new HandTransport(), log: quiet, store });
  t.deepEqual(second.pending(), [1, 2, 4, 5]);
  t.true(second.ledger.recent.some(([, kind]) => kind === "ring"), JSON.stringify(second.ledger.recent));
  t.true(second.ledger.rings >= 1, "the hidden ring is counted as a ring");
  addRings(second, [6, 7]);

  const { sent, box } = await deliverAll(store);
  t.deepEqual(sent, firstByte([1, 2, 4, 5, 6, 7]), "everything after the directory still goes out");
  t.is(box.depth, 0);
  addRings(box, [8]);
  t.deepEqual(box.pending(), [8], "and sending goes on afterwards");
});

test("a damaged drop ledger that still parses is not believed: no live entry is deleted on its word, and its loss is reported", async (t) => {
  const store = new MemoryStore();
  const first = new Outbox({ transport: new HandTransport(), log: quiet, store, capacity: 3 });
  addRings(first, [1, 2, 3], "status");
  addRings(first, [4]); // full: status 1 goes; the ledger names its id as the victim
  t.deepEqual(first.pending(), [2, 3, 4]);
  const damaged = store.read(LEDGER_KEY)!;
  const at = Buffer.from(damaged).indexOf('"victim":1');
  t.true(at >= 0, "the ledger names entry 1 as the victim");
  // One changed digit: the ledger now names live entry 2 as the victim, and still parses.
  damaged[at + '"victim":'.length] = "2".charCodeAt(0);
  store.write(LEDGER_KEY, damaged);

  const second = new Outbox({ transport: new HandTransport(), log: quiet, store, capacity: 3 });
  t.deepEqual(second.pending(), [2, 3, 4], "the live entry the damaged ledger named is still there");
  t.true(second.needsReport(), "the unreadable ledger is reported");
});

test("a damaged entry shorter than a header is reported as what its key says it was", (t) => {
  const store = new MemoryStore();
  addRings(new Outbox({ transport: new HandTransport(), log: quiet, store }), [1, 2, 3]);
  const key = store.keys().filter((k) => k.startsWith(OUTBOX_PREFIX))[1];
  store.write(key, store.read(key)!.subarray(0, 5));
  const second = new Outbox({ transport: new HandTransport(), log: quiet, store });
  t.deepEqual(second.pending(), [1, 3]);
  t.is(second.ledger.rings, 1, "the signed report will say a ring was lost");
  t.deepEqual(second.ledger.recent.map(([, kind]) => kind), ["ring"]);
});

test("a doorbell whose drop ledger is unreadable says so in a signed report", async (t) => {
  const clock = new ManualClock();
  const transport = new HandTransport();
  const store = new MemoryStore();
  const seed = new Uint8Array(32).fill(5);
  const first = new Doorbell({ thing: "ledger-porch", signingSeed: seed, clock, random: seededRandom("ledger-1"), store, transport: new HandTransport(), log: quiet, noncePoolSize: 1, outbox: { capacity: 1 } });
  first.start();
  first.press();
  first.press(); // full: the first ring is dropped and the ledger written
  first.stop();
  const raw = store.read(LEDGER_KEY)!;
  raw[raw.length - 2] ^= 0x10;
  store.write(LEDGER_KEY, raw);

  const doorbell = new Doorbell({ thing: "ledger-porch", signingSeed: seed, clock, random: seededRandom("ledger-2"), store, transport, log: quiet, noncePoolSize: 1 });
  doorbell.start();
  clock.advance(10_000);
  for (let i = 0; i < 5 && transport.pending.length; i++) {
    transport.ack();
    await tick();
  }
  const verifier = new EventVerifier({ "ledger-porch": doorbell.signer.publicKey });
  const reports = transport.published.filter((p) => verifier.verify(p.payload).ok).map((p) => openEnvelope(p.payload).event).filter((e) => e.type === "audit");
  t.true(reports.some((e) => e.report === "outbox-overflow" && e.ledger === "unreadable"), JSON.stringify(reports));
  t.false(doorbell.outbox.needsReport(), "once acknowledged, the loss is not reported again");
  doorbell.stop();
});
