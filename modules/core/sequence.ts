/*
 * Boot counter and event sequence numbers that never repeat, and that survive a
 * damaged flash.
 *
 * A verifier rejects any event whose sequence number is not above the last one
 * it accepted from that thing, so the device must never issue a number twice,
 * whatever happens to power or to the bits in flash. Numbers are reserved in
 * blocks: a high-water mark is written (one atomic key write) before any number
 * from the new block is issued, and a boot resumes from that mark. A cut loses
 * at most one block of unused numbers, never reuses one, and flash sees one write
 * per block rather than one per ring.
 *
 * The mark and the boot number live in two self-checking records (./record),
 * `dw.seq.hw` and `dw.boot`, written in turn: each write goes to the copy that
 * does not hold the newest value, so the two copies are at most one block and
 * one boot apart. If one is damaged or missing, the other plus one block (and
 * one boot) is safely above anything issued. If both are gone on a device that
 * has run before (its outbox or drop ledger is in flash), the mark jumps far
 * above the highest number still in flash (the drop ledger notes the boot and
 * mark once per boot), and the boot number goes past the one noted there. A damaged counter never stops the
 * bell: the counter recovers, and says how in `recovery`, which the doorbell
 * reports in a signed audit event.
 */
import type { KeyValueStore } from "./ports";
import { utf8Decode } from "./bytes";
import { decodeRecord, encodeJsonRecord, readJsonRecord } from "./record";

export const SEQ_KEY = "dw.seq.hw";
export const BOOT_KEY = "dw.boot";
const RECORD = "seq";
/**
 * With both copies gone, what was issued after the highest number still in flash is
 * unknown (acknowledged events leave flash): the counter resumes this far above it,
 * more than a doorbell issues in its life (2^32 events; 2^53 leaves room for 2^21 such jumps).
 */
export const BLIND_JUMP = 2 ** 32;

interface Copy {
  boot: number;
  mark: number;
  reserve: number;
  /** Write count: the copy with the higher one was written last. */
  n: number;
}

type CopyRead = { state: "ok"; copy: Copy } | { state: "missing" } | { state: "damaged"; reason: string };

export interface SequenceRecovery {
  /** What was found: per key, "ok", "missing" or the damage. */
  found: Record<string, string>;
  /** How the resume point was chosen. */
  basis: "other-copy" | "blind-jump";
  /** The first sequence number and boot of this boot. */
  seq: number;
  boot: number;
}

export interface SequenceOptions {
  reserve?: number;
  /**
   * The highest sequence number still in flash elsewhere (the outbox, the drop ledger) and
   * whether the device has run before: used only when a counter copy is damaged or missing.
   */
  evidence?: { highestSeq: number; highestBoot?: number; ranBefore: boolean };
}

const isCount = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;

function readCopy(store: KeyValueStore, key: string): CopyRead {
  const read = readJsonRecord(store, key, RECORD);
  if (read.state === "missing") return read;
  if (read.state === "damaged") {
    const legacy = readLegacy(store, key);
    return legacy ?? read;
  }
  const v = read.value;
  if (typeof v !== "object" || v === null || Array.isArray(v)) return { state: "damaged", reason: "not an object" };
  const { boot, mark, reserve, n } = v as Record<string, unknown>;
  if (!isCount(boot) || !isCount(mark) || !isCount(reserve) || !isCount(n)) return { state: "damaged", reason: "bad fields" };
  return { state: "ok", copy: { boot, mark, reserve, n } };
}

/** The format before self-checking records: a decimal count per key (the boot in dw.boot, the mark in dw.seq.hw). */
function readLegacy(store: KeyValueStore, key: string): CopyRead | undefined {
  let raw: Uint8Array | undefined;
  try {
    raw = store.read(key);
  } catch {
    return undefined;
  }
  if (!raw || decodeRecord(raw, RECORD).state !== "damaged" || raw.length > 16) return undefined;
  let text: string;
  try {
    text = utf8Decode(raw);
  } catch {
    return undefined;
  }
  if (!/^(0|[1-9][0-9]{0,15})$/.test(text) || !Number.isSafeInteger(Number(text))) return undefined;
  const n = Number(text);
  return { state: "ok", copy: key === BOOT_KEY ? { boot: n, mark: -1, reserve: 0, n: 0 } : { boot: -1, mark: n, reserve: 0, n: 0 } };
}

export class SequenceCounter {
  /** This boot's number, starting at 1 on the first boot. */
  readonly boot: number;
  readonly reserve: number;
  /** Set when a counter copy was damaged or missing at this boot: report it. */
  readonly recovery: SequenceRecovery | undefined;
  #next: number;
  #highWater: number;
  #store: KeyValueStore;
  /** The key the next write goes to, and the write count it carries. */
  #target: string;
  #n: number;

  /** Opening counts a boot: call it once per start. */
  constructor(store: KeyValueStore, options: SequenceOptions = {}) {
    this.#store = store;
    this.reserve = options.reserve ?? 64;
    if (!(this.reserve >= 1)) throw new RangeError("sequence: reserve must be at least 1");
    const keys = [SEQ_KEY, BOOT_KEY] as const;
    const reads = keys.map((k) => readCopy(store, k));
    const found: Record<string, string> = {};
    keys.forEach((k, i) => {
      const r = reads[i];
      found[k] = r.state === "damaged" ? `damaged: ${r.reason}` : r.state;
    });
    const ok = reads.map((r) => (r.state === "ok" ? r.copy : undefined));
    const evidence = options.evidence ?? { highestSeq: 0, ranBefore: false };
    const legacy = ok.some((c) => c && (c.mark < 0 || c.boot < 0));
    let boot: number, mark: number, n: number;
    let repairBoth = false;
    let recovery: Omit<SequenceRecovery, "seq" | "boot"> | undefined;
    if (legacy) {
      // The old format kept the boot in one key and the mark in the other.
      const b = ok[1]?.boot ?? -1;
      const m = ok[0]?.mark ?? -1;
      boot = Math.max(b, 0);
      mark = Math.max(m, 0);
      n = 0;
      repairBoth = true;
      if (b < 0 || m < 0) {
        recovery = { found, basis: "blind-jump" };
        boot = Math.max(boot, (evidence.highestBoot ?? 0) + 2);
        mark = Math.max(mark, evidence.highestSeq) + BLIND_JUMP;
      }
    } else if (ok[0] && ok[1]) {
      boot = Math.max(ok[0].boot, ok[1].boot);
      mark = Math.max(ok[0].mark, ok[1].mark);
      n = Math.max(ok[0].n, ok[1].n);
    } else if (ok[0] || ok[1]) {
      // The lost copy may have been the newer one: one block and one boot ahead.
      const c = (ok[0] ?? ok[1])!;
      boot = c.boot + 1;
      mark = Math.max(c.mark + Math.max(c.reserve, this.reserve), evidence.highestSeq + 1);
      n = c.n + 1;
      repairBoth = true;
      recovery = { found, basis: "other-copy" };
    } else if (reads.every((r) => r.state === "missing") && !evidence.ranBefore) {
      // A new device.
      boot = 0;
      mark = 0;
      n = 0;
      repairBoth = true;
    } else {
      // The boot noted elsewhere may lag by a boot or two (it is written once per boot): stay clear of both.
      boot = (evidence.highestBoot ?? 0) + 2;
      mark = evidence.highestSeq + BLIND_JUMP;
      n = 0;
      repairBoth = true;
      recovery = { found, basis: "blind-jump" };
    }
    this.boot = boot + 1;
    // Every number below the stored mark may already have been used.
    this.#next = Math.max(mark, 1);
    this.#highWater = mark;
    this.#n = n;
    // Write to the copy that does not hold the newest value (or to both, to repair them).
    this.#target = ok[0] && ok[1] && ok[0].n > ok[1].n ? BOOT_KEY : SEQ_KEY;
    this.recovery = recovery && { ...recovery, seq: this.#next, boot: this.boot };
    if (repairBoth) this.#write(mark);
    this.#write(mark);
  }

  /** The sequence mark in flash: every number below it may have been issued. */
  get highWater(): number {
    return this.#highWater;
  }

  /** The next sequence number, reserved in flash before it is returned. */
  next(): number {
    if (this.#next >= this.#highWater) this.#write(this.#next + this.reserve);
    return this.#next++;
  }

  #write(mark: number): void {
    const n = this.#n + 1;
    this.#store.write(this.#target, encodeJsonRecord(RECORD, { boot: this.boot, mark, n, reserve: this.reserve }));
    this.#n = n;
    this.#highWater = mark;
    this.#target = this.#target === SEQ_KEY ? BOOT_KEY : SEQ_KEY;
  }
}
