import test from "ava";
import { SequenceCounter } from "../modules/core/sequence";
import { MemoryStore } from "../modules/host/file-store";
import type { KeyValueStore } from "../modules/core/ports";
import { utf8Encode } from "../modules/core/bytes";

test("boot counter increments per open; sequence survives a reboot and keeps rising", (t) => {
  const store = new MemoryStore();
  const first = new SequenceCounter(store, { reserve: 10 });
  t.is(first.boot, 1);
  const issued = [first.next(), first.next(), first.next()];
  t.deepEqual(issued, [1, 2, 3]);
  const second = new SequenceCounter(store, { reserve: 10 });
  t.is(second.boot, 2);
  const after = second.next();
  t.true(after > 3, `after reboot got ${after}`);
  t.is(after, 11); // resumes at the reserved high-water mark
});

test("flash sees one write per block of numbers, not one per ring", (t) => {
  const store = new MemoryStore();
  let writes = 0;
  const counting: KeyValueStore = { ...store, read: (k) => store.read(k), keys: () => store.keys(), delete: (k) => store.delete(k), write: (k, v) => { writes++; store.write(k, v); } };
  const seq = new SequenceCounter(counting, { reserve: 64 });
  writes = 0;
  for (let i = 0; i < 640; i++) seq.next();
  t.is(writes, 10);
});

test("a power cut at any write never lets a number repeat", (t) => {
  for (let cutAt = 1; cutAt <= 12; cutAt++) {
    const store = new MemoryStore();
    const issued = new Set<number>();
    let writes = 0;
    let dead = false;
    const flaky: KeyValueStore = {
      read: (k) => store.read(k), keys: () => store.keys(), delete: (k) => store.delete(k),
      write: (k, v) => { if (++writes === cutAt) { dead = true; throw new Error("power cut"); } store.write(k, v); },
    };
    try {
      const seq = new SequenceCounter(flaky, { reserve: 3 });
      for (let i = 0; i < 20; i++) issued.add(seq.next());
    } catch {
      t.true(dead);
    }
    const rebooted = new SequenceCounter(store, { reserve: 3 });
    for (let i = 0; i < 5; i++) {
      const n = rebooted.next();
      t.false(issued.has(n), `cut at write ${cutAt}: ${n} reissued`);
    }
  }
});

test("a corrupt stored counter is an error, not a silent restart at 1", (t) => {
  const store = new MemoryStore();
  store.write("dw.seq.hw", utf8Encode("12x"));
  t.throws(() => new SequenceCounter(store), { message: /corrupt/ });
});
