import test from "ava";
import { BLIND_JUMP, BOOT_KEY, SEQ_KEY, SequenceCounter } from "../modules/core/sequence";
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

test("a damaged or missing counter copy is recovered from the other, above every number issued, and reported", (t) => {
  const damages: Array<[string, (store: MemoryStore, key: string) => void]> = [
    ["garbage", (s, k) => s.write(k, utf8Encode("12x"))],
    ["bit flip", (s, k) => { const b = s.read(k)!; b[b.length >> 1] ^= 0x20; s.write(k, b); }],
    ["truncated", (s, k) => s.write(k, s.read(k)!.subarray(0, 6))],
    ["missing", (s, k) => s.delete(k)],
  ];
  for (const key of [SEQ_KEY, BOOT_KEY]) {
    for (const [name, damage] of damages) {
      const store = new MemoryStore();
      const issued = new Set<number>();
      const boots = new Set<number>();
      for (let b = 0; b < 3; b++) {
        const seq = new SequenceCounter(store, { reserve: 5 });
        boots.add(seq.boot);
        for (let i = 0; i < 7 + b; i++) issued.add(seq.next());
      }
      damage(store, key);
      const after = new SequenceCounter(store, { reserve: 5, evidence: { highestSeq: 0, ranBefore: true } });
      t.truthy(after.recovery, `${key} ${name}: recovery reported`);
      t.is(after.recovery?.basis, "other-copy");
      t.false(boots.has(after.boot), `${key} ${name}: boot ${after.boot} repeated`);
      const first = after.next();
      t.true(first > Math.max(...issued), `${key} ${name}: resumed at ${first}, issued up to ${Math.max(...issued)}`);
      // Repaired: the next boot is a normal one.
      t.is(new SequenceCounter(store, { reserve: 5 }).recovery, undefined, `${key} ${name}: repaired`);
    }
  }
});

test("both copies gone on a device that ran before: the counter jumps above everything still in flash, and says so", (t) => {
  const store = new MemoryStore();
  const seq = new SequenceCounter(store);
  for (let i = 0; i < 100; i++) seq.next();
  store.delete(SEQ_KEY);
  store.write(BOOT_KEY, new Uint8Array([1, 2, 3]));
  const after = new SequenceCounter(store, { evidence: { highestSeq: 90, highestBoot: 6, ranBefore: true } });
  t.is(after.recovery?.basis, "blind-jump");
  t.true(after.next() >= 90 + BLIND_JUMP);
  t.true(after.boot > 6 + 1, "past the boot noted elsewhere, which may lag by one");
  // A new device (nothing in flash at all) starts at 1 and reports nothing.
  const fresh = new SequenceCounter(new MemoryStore(), { evidence: { highestSeq: 0, ranBefore: false } });
  t.is(fresh.recovery, undefined);
  t.is(fresh.next(), 1);
});

test("over many boots with one copy damaged at random between them, no number and no boot ever repeats", (t) => {
  let s = 12345;
  const rnd = (n: number) => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) % n);
  const store = new MemoryStore();
  const issued = new Set<number>();
  const boots = new Set<number>();
  let recoveries = 0;
  for (let b = 0; b < 300; b++) {
    const seq = new SequenceCounter(store, { reserve: 1 + rnd(8), evidence: { highestSeq: 0, ranBefore: b > 0 } });
    if (seq.recovery) recoveries++;
    t.false(boots.has(seq.boot), `boot ${seq.boot} repeated`);
    boots.add(seq.boot);
    for (let i = rnd(20); i > 0; i--) {
      const n = seq.next();
      if (issued.has(n)) t.fail(`${n} issued twice (boot ${b})`);
      issued.add(n);
    }
    if (rnd(3) === 0) {
      const key = rnd(2) ? SEQ_KEY : BOOT_KEY;
      const v = store.read(key);
      if (v && rnd(2)) { v[rnd(v.length)] ^= 1 << rnd(8); store.write(key, v); } else store.delete(key);
    }
  }
  t.true(recoveries > 50, `${recoveries} recoveries`);
});

test("the format before self-checking records is read, not treated as damage", (t) => {
  const store = new MemoryStore();
  store.write(BOOT_KEY, utf8Encode("7"));
  store.write(SEQ_KEY, utf8Encode("1280"));
  const seq = new SequenceCounter(store);
  t.is(seq.recovery, undefined);
  t.is(seq.boot, 8);
  t.is(seq.next(), 1280);
});
