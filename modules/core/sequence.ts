/*
 * Boot counter and event sequence numbers that never repeat.
 *
 * A verifier rejects any event whose sequence number is not above the last one
 * it accepted from that thing, so the device must never issue a number twice,
 * whatever happens to power. Numbers are reserved in blocks: the high-water mark
 * is written (one atomic key write) before any number from the new block is
 * issued, and a boot resumes from that mark. A cut loses at most one block of
 * unused numbers, never reuses one, and flash sees one write per block rather
 * than one per ring.
 */
import type { KeyValueStore } from "./ports";
import { utf8Encode, utf8Decode } from "./bytes";

const BOOT_KEY = "dw.boot";
const SEQ_KEY = "dw.seq.hw";

function readCount(store: KeyValueStore, key: string): number {
  const raw = store.read(key);
  if (raw === undefined) return 0;
  const text = utf8Decode(raw);
  if (!/^(0|[1-9][0-9]{0,15})$/.test(text)) throw new Error(`sequence: stored ${key} is corrupt`);
  const n = Number(text);
  if (!Number.isSafeInteger(n)) throw new Error(`sequence: stored ${key} is corrupt`);
  return n;
}

function writeCount(store: KeyValueStore, key: string, n: number): void {
  store.write(key, utf8Encode(String(n)));
}

export class SequenceCounter {
  /** This boot's number, starting at 1 on the first boot. */
  readonly boot: number;
  readonly reserve: number;
  #next: number;
  #highWater: number;
  #store: KeyValueStore;

  /** Opening counts a boot: call it once per start. */
  constructor(store: KeyValueStore, options: { reserve?: number } = {}) {
    this.#store = store;
    this.reserve = options.reserve ?? 64;
    if (!(this.reserve >= 1)) throw new RangeError("sequence: reserve must be at least 1");
    this.boot = readCount(store, BOOT_KEY) + 1;
    writeCount(store, BOOT_KEY, this.boot);
    this.#highWater = readCount(store, SEQ_KEY);
    // Every number below the stored mark may already have been used.
    this.#next = Math.max(this.#highWater, 1);
  }

  /** The next sequence number, reserved in flash before it is returned. */
  next(): number {
    if (this.#next >= this.#highWater) {
      const mark = this.#next + this.reserve;
      writeCount(this.#store, SEQ_KEY, mark);
      this.#highWater = mark;
    }
    return this.#next++;
  }
}
