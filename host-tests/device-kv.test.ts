/*
 * The device KeyValueStore's two-slot scheme, driven through simulated power
 * cuts against a model of the SDK's preference module on ESP32, which erases a
 * key and then writes it (modPreference.c), each step reaching flash at once.
 */
import test from "ava";
import { SlottedStore, type PreferenceLike } from "../modules/device/kv-slots";
import { SequenceCounter } from "../modules/core/sequence";
import { KV_MAX_VALUE } from "../modules/core/ports";

class PowerCut extends Error {}

/** preference as implemented on ESP32: set = erase, then write; a cut can land between any two flash steps. */
class FlakyPreference implements PreferenceLike {
  flash = new Map<string, ArrayBuffer>();
  steps = 0;
  cutAtStep = Infinity;

  #step(): void {
    if (++this.steps === this.cutAtStep) throw new PowerCut("power cut");
  }
  get(domain: string, key: string): unknown {
    const v = this.flash.get(`${domain}\u0000${key}`);
    return v === undefined ? undefined : v.slice(0);
  }
  set(domain: string, key: string, value: ArrayBuffer): void {
    this.#step();
    this.flash.delete(`${domain}\u0000${key}`);
    this.#step();
    this.flash.set(`${domain}\u0000${key}`, value.slice(0));
  }
  delete(domain: string, key: string): void {
    this.#step();
    this.flash.delete(`${domain}\u0000${key}`);
  }
  keys(domain: string): string[] {
    return [...this.flash.keys()].filter((k) => k.startsWith(domain + "\u0000")).map((k) => k.slice(domain.length + 1));
  }
}

const DOMAINS = ["dw.kv.0", "dw.kv.1"] as const;
const bytes = (...v: number[]) => Uint8Array.from(v);

test("round trip: read what was written, copies out, keys and delete", (t) => {
  const store = new SlottedStore(new FlakyPreference(), { domains: DOMAINS });
  t.is(store.read("a"), undefined);
  store.write("a", bytes(1, 2, 3));
  store.write("b", new Uint8Array(0));
  t.deepEqual(store.read("a"), bytes(1, 2, 3));
  t.deepEqual(store.read("b"), new Uint8Array(0));
  store.write("a", bytes(9));
  t.deepEqual(store.read("a"), bytes(9));
  const copy = store.read("a")!;
  copy[0] = 0;
  t.deepEqual(store.read("a"), bytes(9), "a read hands out a copy");
  t.deepEqual(store.keys().sort(), ["a", "b"]);
  store.delete("a");
  t.is(store.read("a"), undefined);
  t.deepEqual(store.keys(), ["b"]);
});

test("the plain preference API loses a key to a cut between its erase and its write (why slots exist)", (t) => {
  const prefs = new FlakyPreference();
  prefs.set("dw", "k", bytes(1).buffer);
  prefs.cutAtStep = prefs.steps + 2; // after the erase, before the write
  t.throws(() => prefs.set("dw", "k", bytes(2).buffer), { instanceOf: PowerCut });
  t.is(prefs.get("dw", "k"), undefined);
});

test("a cut at any flash step of a write leaves the old value or the new one, never nothing", (t) => {
  for (let cut = 1; cut <= 8; cut++) {
    const prefs = new FlakyPreference();
    const store = new SlottedStore(prefs, { domains: DOMAINS });
    store.write("k", bytes(1));
    store.write("k", bytes(2));
    prefs.cutAtStep = prefs.steps + cut;
    let completed = true;
    try {
      store.write("k", bytes(3));
      store.write("k", bytes(4));
    } catch (e) {
      t.true(e instanceof PowerCut);
      completed = false;
    }
    const after = new SlottedStore(prefs, { domains: DOMAINS }).read("k");
    t.truthy(after, `cut at step ${cut} lost the key`);
    t.true([2, 3, 4].includes(after![0]), `cut at step ${cut} read ${after![0]}`);
    if (completed) t.is(after![0], 4);
  }
});

test("a cut in the middle of a delete leaves the newest value, not an older one", (t) => {
  for (const order of [[1, 2], [1, 2, 3]]) {
    const prefs = new FlakyPreference();
    const store = new SlottedStore(prefs, { domains: DOMAINS });
    for (const v of order) store.write("k", bytes(v));
    prefs.cutAtStep = prefs.steps + 2; // first delete done, second not
    t.throws(() => store.delete("k"), { instanceOf: PowerCut });
    t.deepEqual(store.read("k"), bytes(order[order.length - 1]));
  }
});

test("the sequence counter never repeats a number across cuts on the real write pattern", (t) => {
  for (let cut = 1; cut <= 40; cut++) {
    const prefs = new FlakyPreference();
    const issued = new Set<number>();
    prefs.cutAtStep = cut;
    try {
      for (let boot = 0; boot < 3; boot++) {
        const seq = new SequenceCounter(new SlottedStore(prefs, { domains: DOMAINS }), { reserve: 2 });
        for (let i = 0; i < 5; i++) issued.add(seq.next());
      }
    } catch (e) {
      t.true(e instanceof PowerCut);
    }
    prefs.cutAtStep = Infinity;
    const seq = new SequenceCounter(new SlottedStore(prefs, { domains: DOMAINS }), { reserve: 2 });
    for (let i = 0; i < 5; i++) {
      const n = seq.next();
      t.false(issued.has(n), `cut at ${cut}: ${n} issued twice`);
    }
  }
});

test("generations compare across the 32-bit wrap", (t) => {
  const prefs = new FlakyPreference();
  const record = (gen: number, v: number) => Uint8Array.of(0xd5, gen >>> 24, (gen >>> 16) & 255, (gen >>> 8) & 255, gen & 255, v).buffer;
  prefs.flash.set("dw.kv.0\u0000k", record(0xffffffff, 1));
  prefs.flash.set("dw.kv.1\u0000k", record(0, 2));
  const store = new SlottedStore(prefs, { domains: DOMAINS });
  t.deepEqual(store.read("k"), bytes(2));
  store.write("k", bytes(3)); // overwrites slot 0 (the older), generation 1
  t.deepEqual(store.read("k"), bytes(3));
  t.deepEqual(new Uint8Array(prefs.flash.get("dw.kv.0\u0000k")!).subarray(0, 5), Uint8Array.of(0xd5, 0, 0, 0, 1));
});

test("keys, values and domains are checked; foreign data is refused, not guessed", (t) => {
  const prefs = new FlakyPreference();
  const store = new SlottedStore(prefs, { domains: DOMAINS });
  t.throws(() => store.write("sixteen-chars-xx", bytes(1)), { instanceOf: RangeError });
  t.throws(() => store.write("", bytes(1)), { instanceOf: RangeError });
  t.throws(() => store.write("é", bytes(1)), { instanceOf: RangeError });
  t.throws(() => store.write("k", new Uint8Array(KV_MAX_VALUE + 1)), { instanceOf: RangeError });
  store.write("fifteen-chars-x", new Uint8Array(KV_MAX_VALUE));
  t.is(store.read("fifteen-chars-x")!.length, KV_MAX_VALUE);
  prefs.flash.set("dw.kv.1\u0000x", bytes(1, 2, 3, 4, 5, 6).buffer);
  t.throws(() => store.read("x"), { message: /not a slot record/ });
  t.throws(() => new SlottedStore(prefs, { domains: ["same", "same"] }), { instanceOf: RangeError });
  t.throws(() => new SlottedStore(prefs, { domains: ["a-domain-too-long", "b"] }), { instanceOf: RangeError });
});
