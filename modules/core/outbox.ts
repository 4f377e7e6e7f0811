/*
 * Outbox: messages waiting for the broker's PUBACK, kept in flash when they matter.
 *
 * A signed event (ring, snapshot manifest, audit report) is written to the
 * KeyValueStore before it is offered to the transport, and its record is deleted
 * only after the broker's PUBACK. On every (re)connect, and after a reboot, what
 * is left is sent again in the order it was added; the consumer de-duplicates by
 * (thing, seq). Everything else (snapshot chunks, command replies, job and stream
 * requests) is "volatile": kept in RAM until acknowledged but lost with the power,
 * because chunks are large and those protocols retry on their own (docs/reliability.md).
 *
 * Flash layout (keys ≤ 15 characters, values ≤ 4000 bytes, one key write atomic):
 *   ob.<k><id>     head of entry <id> (base36, increasing in the order added) of kind letter <k>
 *   ob.<k><id>.<n> part n ≥ 1 of an entry too long for one value (an event envelope may be 4096 bytes)
 *   ob-ledger      drop ledger: lifetime drop counts, the last victim, the last drops, what a report covered
 * Every value is a self-checking record (./record, CRC-32). An entry's body is [kind, part, parts,
 * seq (u64), covers (u32), covers-unreadable (u32), topic length, topic, payload slice]. The kind
 * is in the key as well as in the body, so an entry whose value is beyond reading is still
 * reported as what it was (a damaged ring is a lost ring). Tails are written before the head and
 * deleted after it, so a head present means every part is present; anything left without a head
 * is garbage from a cut. Restore never lets a key it cannot read stop it: such a key is skipped
 * (reported if it could have been an entry), and new ids start above every id in any key seen.
 *
 * When full (its flash budget, in bytes as NVS stores them, or an optional entry limit), the policy is: volatile messages only ever push out older
 * volatile messages; among flash entries the victim is the oldest of the least important
 * kind (status < snapshot < audit < ring), the new entry included, and entries in flight are
 * never chosen. So a ring goes only when the outbox holds nothing but rings, and then the
 * oldest ring goes. Every drop is counted in the ledger before it happens, and the owner
 * (Doorbell) is told so it can queue a signed drop report, which lives outside the capacity
 * so that reporting a drop never causes one.
 */
import type { KeyValueStore, Log, MqttTransport } from "./ports";
import { KV_MAX_KEY, KV_MAX_VALUE } from "./ports";
import type { Json } from "./canonical";
import { readU32, utf8Decode, utf8Encode, writeU32 } from "./bytes";
import { decodeRecord, encodeJsonRecord, encodeRecord as frameRecord, readJsonRecord, recordOverhead } from "./record";

export type OutboxKind = "ring" | "snapshot" | "audit" | "status" | "report" | "other";

export interface OutboxEntry {
  topic: string;
  payload: Uint8Array;
  /** Sequence number of the event inside, for ordering and reporting (0 for non-events). */
  seq: number;
  /** Called once, when the broker acknowledged the message. Never called for a dropped message. */
  onAcked?: () => void;
  /** Write it to flash before sending, so it survives a power cut. Default false. */
  durable?: boolean;
  /** What it carries: decides what is dropped first when the outbox is full. Default "other". */
  kind?: OutboxKind;
  /** A drop report: the lifetime drop count it reports up to. */
  covers?: number;
  /** A drop report: the count of unreadable ledgers it reports up to. */
  coversUnreadable?: number;
}

export interface OutboxOptions {
  transport: MqttTransport;
  log: Log;
  /** Flash for durable entries; without it everything is kept in RAM only. */
  store?: KeyValueStore;
  /** Durable entries kept at most (drop reports not counted). Default: no limit but flashBytes. */
  capacity?: number;
  /**
   * Flash the durable entries may take, in bytes as NVS stores them (entryFootprint), drop
   * reports not counted. Default DEFAULT_OUTBOX_FLASH_BYTES; sized per board against its
   * NVS partition (docs/reliability.md, "Capacity").
   */
  flashBytes?: number;
  /** Volatile entries kept at most. Default 32. */
  volatileCapacity?: number;
  /** Publishes awaiting PUBACK at once (AWS allows 100). Default 10. */
  window?: number;
  /** Something was dropped (or found damaged in flash): queue a report. */
  onDrop?: (ledger: Readonly<DropLedger>) => void;
  /**
   * A publish failed while the session was believed up: the outbox stops sending so
   * nothing can overtake it, and asks for a fresh session (Link.drop).
   */
  onStall?: (reason: string) => void;
}

/** What the outbox has dropped over the device's life. Persisted in one record. */
export interface DropLedger {
  /** Lifetime drops, any kind, including records found damaged at boot. */
  drops: number;
  /** Of which rings. */
  rings: number;
  /** Of which durable (signed events). */
  events: number;
  /** Drop count covered by the last drop report the broker acknowledged. */
  acked: number;
  /** Entry id of the last durable victim (finishes an eviction a power cut interrupted). */
  victim: number;
  /** The last drops, oldest first: [seq, kind]; seq 0 when a damaged entry's number could not be read. */
  recent: Array<[number, OutboxKind]>;
  /** Times this ledger was found unreadable at boot (what it counted before is gone), and of those, how many a report the broker acknowledged covered. */
  unreadable: number;
  unreadableAcked: number;
  /** The boot number and sequence mark noted at the last boot: a third, lagging trace of the counters (./sequence). */
  boot: number;
  mark: number;
}

export const OUTBOX_PREFIX = "ob.";
export const LEDGER_KEY = "ob-ledger";
const RECENT_KEEP = 16;
/** Record kinds in the frame. */
const ENTRY_RECORD = "ob";
const LEDGER_RECORD = "ob-ledger";
/** Body header of an entry part: kind, part, parts, seq (8), covers (4), covers-unreadable (4), topic length. */
const BODY_HEADER = 20;
const FRAME = recordOverhead(ENTRY_RECORD);
const KINDS: readonly OutboxKind[] = ["other", "status", "snapshot", "audit", "ring", "report"];
/** The kind letter in an entry's key, by KINDS index. */
const LETTERS = "otsarp";
const ENTRY_KEY = /^ob\.([otsarp])([0-9a-z]{1,8})(?:\.([1-9][0-9]?))?$/;
/** Eviction rank: lower goes first. Reports are never evicted (they sit outside the capacity). */
const RANK: Readonly<Record<OutboxKind, number>> = { other: 0, status: 0, snapshot: 1, audit: 2, ring: 3, report: 9 };
const MAX_ID = 36 ** 8 - 1;
/**
 * Default flash budget of the outbox: rides out a 60 s outage at four presses a second (240
 * rings) and a 10-minute outage at a ring a minute with a snapshot each, on the S3 boards'
 * 256 KB NVS partition next to the vault (docs/reliability.md, "Capacity").
 */
export const DEFAULT_OUTBOX_FLASH_BYTES = 128 * 1024;
/** NVS: 32-byte entries; a blob takes one entry per 32 bytes of data, a data header, an index entry, and one more header if it spans two pages. */
const NVS_ENTRY = 32;
const SLOT_HEADER = 5;
/** Flash one stored value of this many bytes takes in NVS, through the device's two-slot store. */
export function valueFootprint(valueBytes: number): number {
  return NVS_ENTRY * (3 + Math.ceil((valueBytes + SLOT_HEADER) / NVS_ENTRY));
}
/** Flash an entry of this payload and topic takes, all its parts together. */
export function entryFootprint(payloadBytes: number, topicBytes: number): number {
  const room = KV_MAX_VALUE - FRAME - BODY_HEADER;
  let left = payloadBytes;
  let total = 0;
  for (let k = 0; ; k++) {
    const take = Math.min(left, k === 0 ? room - topicBytes : room);
    total += valueFootprint(FRAME + BODY_HEADER + (k === 0 ? topicBytes : 0) + take);
    left -= take;
    if (left <= 0) return total;
  }
}
/** At least two of the largest events (4096-byte envelopes, two values each), so one always fits. */
const MIN_FLASH_BYTES = 2 * entryFootprint(4096, 255);
const freshLedger = (): DropLedger => ({ drops: 0, rings: 0, events: 0, acked: 0, victim: 0, recent: [], unreadable: 0, unreadableAcked: 0, boot: 0, mark: 0 });

interface Item {
  entry: OutboxEntry;
  kind: OutboxKind;
  /** Order and flash id of a durable entry; 0 for a volatile one. */
  id: number;
  /** In flash (a durable entry whose write failed is kept in RAM, still ranked as durable). */
  stored: boolean;
  parts: number;
  inFlight: boolean;
}

export class Outbox {
  readonly capacity: number;
  readonly flashBytes: number;
  readonly volatileCapacity: number;
  readonly window: number;
  readonly stats = { sent: 0, acked: 0, resent: 0, restored: 0, damaged: 0, unreadable: 0, strays: 0, writeFailures: 0, stalls: 0 };
  #queue: Item[] = [];
  #transport: MqttTransport;
  #log: Log;
  #store: KeyValueStore | undefined;
  #options: OutboxOptions;
  #ledger: DropLedger = freshLedger();
  #nextId = 1;
  /** Restore could not list the store: every new key is checked for an occupant before it is used. */
  #blind = false;
  #found = false;
  #generation = 0;
  #online = false;
  #stalled = false;

  constructor(options: OutboxOptions) {
    this.#options = options;
    this.#transport = options.transport;
    this.#log = options.log;
    this.#store = options.store;
    this.capacity = Math.max(1, options.capacity ?? Infinity);
    this.flashBytes = Math.max(MIN_FLASH_BYTES, options.flashBytes ?? DEFAULT_OUTBOX_FLASH_BYTES);
    this.volatileCapacity = Math.max(1, options.volatileCapacity ?? 32);
    this.window = Math.max(1, Math.min(100, options.window ?? 10));
    if (this.#store) {
      try {
        this.#restore(this.#store);
      } catch (e) {
        // Whatever was loaded is kept; the rest is retried at the next boot. The bell must still ring.
        this.#log("error", "outbox: restoring from flash failed", { reason: String(e) });
      }
    }
  }

  /** Messages waiting (durable and volatile). */
  get depth(): number {
    return this.#queue.length;
  }

  /** Of which in flash. */
  get durableDepth(): number {
    let n = 0;
    for (const item of this.#queue) if (item.stored) n++;
    return n;
  }

  /** Lifetime drops (persisted when there is a store). */
  get dropped(): number {
    return this.#ledger.drops;
  }

  get ledger(): Readonly<DropLedger> {
    return this.#ledger;
  }

  /** Boot found outbox state in flash (entries, strays or the ledger every boot leaves): the device has run before. */
  get foundInFlash(): boolean {
    return this.#found;
  }

  /**
   * Note this boot's number and sequence mark in the ledger (one write per boot), so that a
   * device whose counter records are both lost still knows roughly where it was.
   */
  noteBoot(boot: number, mark: number): void {
    if (!this.#store || (boot <= this.#ledger.boot && mark <= this.#ledger.mark)) return;
    try {
      this.#saveLedger({ ...this.#ledger, boot: Math.max(boot, this.#ledger.boot), mark: Math.max(mark, this.#ledger.mark) });
    } catch (e) {
      this.#log("warn", "outbox: could not note the boot in the ledger", { reason: String(e) });
    }
  }

  /** The highest sequence number the outbox knows of: queued entries, the drops it remembers and the mark noted at the last boot. */
  get highestSeq(): number {
    let n = this.#ledger.mark;
    for (const item of this.#queue) n = Math.max(n, item.entry.seq);
    for (const [seq] of this.#ledger.recent) n = Math.max(n, seq);
    return n;
  }

  /** Sequence numbers waiting, in send order. */
  pending(): number[] {
    return this.#queue.map((i) => i.entry.seq);
  }

  /** Drops not yet covered by an acknowledged report or one waiting in the queue. */
  needsReport(): boolean {
    let covered = this.#ledger.acked;
    let coveredUnreadable = this.#ledger.unreadableAcked;
    for (const item of this.#queue) {
      if (item.kind !== "report") continue;
      covered = Math.max(covered, item.entry.covers ?? 0);
      coveredUnreadable = Math.max(coveredUnreadable, item.entry.coversUnreadable ?? 0);
    }
    return this.#ledger.drops > covered || this.#ledger.unreadable > coveredUnreadable;
  }

  /**
   * Queue a message. Durable entries are in flash when this returns true; false means
   * it is held in RAM only (not durable, or flash refused the write, or it was itself
   * the entry the full outbox dropped).
   */
  add(entry: OutboxEntry): boolean {
    const kind = entry.kind ?? "other";
    const item: Item = { entry, kind, id: 0, stored: false, parts: 0, inFlight: false };
    if (!entry.durable) {
      this.#makeRoomVolatile();
      this.#queue.push(item);
      return false;
    }
    item.id = this.#nextId++;
    try {
      if (kind === "report") this.#retireReports();
      else if (!this.#makeRoomDurable(item)) return false;
      const store = this.#store;
      if (store) {
        const record = encodeRecord(entry, kind);
        item.parts = record.length;
        if (this.#blind) item.id = this.#unoccupiedId(store, item.id, kind, record.length);
        // Tails first, head last: the head's presence is what makes the entry exist.
        for (let k = record.length - 1; k >= 0; k--) store.write(partKey(item.id, k, kind), record[k]);
        item.stored = true;
      }
    } catch (e) {
      this.stats.writeFailures++;
      this.#log("error", "outbox: flash write failed; entry kept in RAM only", { seq: entry.seq, reason: String(e) });
    }
    this.#queue.push(item);
    return item.stored;
  }

  /** Send what is not yet in flight, oldest first, within the window. Call when a message is added and when the link comes online. */
  flush(online: boolean): void {
    this.#online = online;
    if (!online || this.#stalled) return;
    let inFlight = 0;
    for (const item of this.#queue) if (item.inFlight) inFlight++;
    const generation = this.#generation;
    for (const item of this.#queue) {
      if (inFlight >= this.window) break;
      if (item.inFlight) continue;
      item.inFlight = true;
      inFlight++;
      this.stats.sent++;
      let sending: Promise<void>;
      try {
        sending = this.#transport.publish(item.entry.topic, item.entry.payload, 1);
      } catch (e) {
        sending = Promise.reject(e);
      }
      sending.then(
        () => this.#acked(item),
        (e: unknown) => this.#failed(item, generation, e),
      );
    }
  }

  /** The session ended: nothing is in flight any more; everything queued goes again, in order, on reconnect. */
  linkLost(): void {
    this.#generation++;
    this.#online = false;
    this.#stalled = false;
    for (const item of this.#queue) {
      if (item.inFlight) this.stats.resent++;
      item.inFlight = false;
    }
  }

  // ------------------------------------------------------------------ sending

  #acked(item: Item): void {
    const i = this.#queue.indexOf(item);
    if (i < 0) return;
    this.#queue.splice(i, 1);
    this.stats.acked++;
    if (item.stored && this.#store) {
      try {
        const l = this.#ledger;
        if (item.kind === "report" && ((item.entry.covers ?? 0) > l.acked || (item.entry.coversUnreadable ?? 0) > l.unreadableAcked)) {
          // The ledger first: a cut after it leaves a report that boot recognises as already acknowledged.
          this.#saveLedger({ ...l, acked: Math.max(l.acked, item.entry.covers ?? 0), unreadableAcked: Math.max(l.unreadableAcked, item.entry.coversUnreadable ?? 0) });
        }
        this.#deleteEntry(item);
      } catch (e) {
        // It will be sent again after the next boot: a duplicate the consumer drops, never a loss.
        this.#log("warn", "outbox: could not delete an acknowledged entry", { seq: item.entry.seq, reason: String(e) });
      }
    }
    try {
      item.entry.onAcked?.();
    } catch (e) {
      this.#log("error", "outbox: onAcked listener threw", { seq: item.entry.seq, reason: String(e) });
    }
    if (this.#online) this.flush(true);
  }

  #failed(item: Item, generation: number, e: unknown): void {
    // A rejection from an ended session is expected: linkLost() already reset everything.
    if (generation !== this.#generation) return;
    item.inFlight = false;
    // Without a way to get a fresh session, the next flush simply tries again.
    if (this.#queue.indexOf(item) < 0 || this.#stalled || !this.#options.onStall) return;
    // Sending on would let later messages overtake this one; wait for a fresh session instead.
    this.#stalled = true;
    this.stats.stalls++;
    const reason = `publish failed: ${String((e as Error)?.message ?? e)}`;
    this.#log("warn", "outbox: publish failed in a live session; holding the queue", { seq: item.entry.seq, reason });
    this.#options.onStall?.(reason);
  }

  // ------------------------------------------------------------------ capacity

  #makeRoomVolatile(): void {
    let volatile = 0;
    for (const item of this.#queue) if (!item.id) volatile++;
    while (volatile >= this.volatileCapacity) {
      const victim = this.#queue.find((i) => !i.id && !i.inFlight);
      if (!victim) break; // all in flight: let it grow by one rather than forget something on the wire
      this.#queue.splice(this.#queue.indexOf(victim), 1);
      volatile--;
      this.#recordDrop(victim, false);
    }
  }

  /** Evict until `item` fits. Returns false if `item` itself was the victim. Throws if flash fails. */
  #makeRoomDurable(item: Item): boolean {
    const size = footprint(item.entry);
    for (;;) {
      let count = 0, bytes = 0;
      for (const q of this.#queue) {
        if (q.id && q.kind !== "report") {
          count++;
          bytes += footprint(q.entry);
        }
      }
      if (count < this.capacity && bytes + size <= this.flashBytes) return true;
      let victim: Item = item;
      for (const q of this.#queue) {
        if (!q.id || q.inFlight || q.kind === "report") continue;
        if (RANK[q.kind] < RANK[victim.kind] || (RANK[q.kind] === RANK[victim.kind] && q.id < victim.id)) victim = q;
      }
      this.#recordDrop(victim, true);
      if (victim === item) return false;
      this.#queue.splice(this.#queue.indexOf(victim), 1);
      if (victim.stored) this.#deleteEntry(victim);
    }
  }

  /** Count a drop in the ledger (before the entry goes) and tell the owner. */
  #recordDrop(victim: Item, durable: boolean): void {
    const l = this.#ledger;
    const next: DropLedger = {
      ...l,
      drops: l.drops + 1,
      rings: l.rings + (victim.kind === "ring" ? 1 : 0),
      events: l.events + (durable ? 1 : 0),
      acked: l.acked,
      victim: durable && victim.id ? victim.id : l.victim,
      recent: [...l.recent, [victim.entry.seq, victim.kind] as [number, OutboxKind]].slice(-RECENT_KEEP),
    };
    this.#log(victim.kind === "ring" ? "error" : "warn", "outbox full: message dropped", { seq: victim.entry.seq, kind: victim.kind, drops: next.drops });
    // A durable drop is in flash before the victim goes. A volatile one is counted in RAM only
    // (it reaches flash with the next ledger write): the message itself would not have survived
    // a power cut either, and a flood of them must not become a flood of flash writes.
    if (this.#store && durable) this.#saveLedger(next);
    else this.#ledger = next;
    try {
      this.#options.onDrop?.(this.#ledger);
    } catch (e) {
      this.#log("error", "outbox: onDrop listener threw", { reason: String(e) });
    }
  }

  /** A new report supersedes any older one not already on the wire. */
  #retireReports(): void {
    for (const q of [...this.#queue]) {
      if (q.kind !== "report" || q.inFlight) continue;
      if (q.stored) this.#deleteEntry(q);
      this.#queue.splice(this.#queue.indexOf(q), 1);
    }
  }

  // ------------------------------------------------------------------ flash

  #saveLedger(next: DropLedger): void {
    this.#store!.write(LEDGER_KEY, ledgerBytes(next));
    this.#ledger = next;
  }

  #deleteEntry(item: Pick<Item, "id" | "parts" | "kind">): void {
    const store = this.#store!;
    store.delete(partKey(item.id, 0, item.kind));
    for (let k = 1; k < item.parts; k++) store.delete(partKey(item.id, k, item.kind));
  }

  /** Without a listing, a key is used only if nothing is there (something unreadable counts as occupied). */
  #unoccupiedId(store: KeyValueStore, id: number, kind: OutboxKind, parts: number): number {
    for (let tries = 0; tries < 64; tries++, id = this.#nextId++) {
      let free = true;
      for (let k = 0; k < parts && free; k++) {
        try {
          free = store.read(partKey(id, k, kind)) === undefined;
        } catch {
          free = false;
        }
      }
      if (free) return id;
    }
    throw new Error("outbox: no free key found");
  }

  /** Delete a key that is garbage; a key the store cannot delete is left for the next boot. */
  #discard(store: KeyValueStore, key: string): void {
    try {
      store.delete(key);
    } catch (e) {
      this.#log("warn", "outbox: could not delete a key", { key: printable(key), reason: String((e as Error)?.message ?? e) });
    }
  }

  /** Boot: finish what a power cut interrupted, drop garbage, load the entries in order. */
  #restore(store: KeyValueStore): void {
    const read = readLedger(store);
    this.#found = read !== "missing";
    if (read === "unreadable") {
      // The counts are gone and so is the victim: nothing is deleted on the ledger's word, and the loss is reported.
      this.#log("error", "outbox: drop ledger unreadable; counting from zero and reporting it");
      this.#ledger = { ...freshLedger(), unreadable: 1 };
      try {
        this.#saveLedger(this.#ledger);
      } catch (e) {
        this.#log("error", "outbox: could not rewrite the drop ledger", { reason: String(e) });
      }
    } else if (read !== "missing") this.#ledger = read;
    else {
      // Written once on a new device: from then on its presence shows the device has run before,
      // which is what tells a lost sequence counter from a new one (./sequence).
      try {
        this.#saveLedger(this.#ledger);
      } catch (e) {
        this.#log("warn", "outbox: could not write the drop ledger", { reason: String(e) });
      }
    }
    let keys: string[];
    try {
      keys = store.keys();
    } catch (e) {
      this.#blind = true;
      this.#log("error", "outbox: cannot list flash; queued entries stay there for the next boot", { reason: String(e) });
      return;
    }
    const heads = new Map<number, { key: string; kind: OutboxKind }>();
    const tails = new Map<number, Map<number, string>>();
    const damaged: Array<{ seq: number; kind: OutboxKind }> = [];
    let maxId = this.#ledger.victim;
    for (const key of keys) {
      if (typeof key !== "string" || !key.startsWith(OUTBOX_PREFIX)) continue;
      this.#found = true;
      const m = ENTRY_KEY.exec(key);
      if (!m) {
        // Not a name this outbox writes (a stray copy, a name no store should hold, something foreign).
        // It could have been an entry, so it is counted and reported, never silently lost; its digits
        // still raise the next id so nothing new is written where it sits.
        for (const run of key.slice(OUTBOX_PREFIX.length).match(/[0-9a-z]{1,8}/g) ?? []) maxId = Math.max(maxId, parseInt(run, 36));
        this.stats.strays++;
        damaged.push({ seq: 0, kind: "other" });
        this.#log("error", "outbox: unrecognised key in the outbox's space", { key: printable(key) });
        this.#discard(store, key);
        continue;
      }
      const id = parseInt(m[2], 36);
      maxId = Math.max(maxId, id);
      if (m[3] === undefined) {
        const kind = KINDS[LETTERS.indexOf(m[1])];
        const twin = heads.get(id);
        if (twin) {
          // Two heads with one id (not something this outbox writes): both are kept apart and reported.
          damaged.push({ seq: 0, kind });
          this.#log("error", "outbox: two entries share an id", { id, keys: `${twin.key} ${key}` });
          this.#discard(store, key);
          continue;
        }
        heads.set(id, { key, kind });
      } else {
        if (!tails.has(id)) tails.set(id, new Map());
        tails.get(id)!.set(Number(m[3]), key);
      }
    }
    this.#nextId = Math.min(maxId, MAX_ID - 1) + 1;
    const ids = [...heads.keys()].sort((a, b) => a - b);
    for (const id of ids) {
      const { key, kind } = heads.get(id)!;
      const parts = tails.get(id) ?? new Map<number, string>();
      tails.delete(id);
      if (id === this.#ledger.victim) {
        // An eviction counted in the ledger but cut before the entry was deleted.
        this.#discard(store, key);
        for (const k of parts.values()) this.#discard(store, k);
        continue;
      }
      const decoded = decodeEntry(store, key, kind, parts);
      if (!decoded.ok && decoded.unreadable) {
        // The store could not read it at all (an I/O error, something that is not a value): it is
        // reported but left in place, untouched, in case a later boot can read it.
        this.stats.unreadable++;
        damaged.push({ seq: decoded.seq, kind });
        this.#log("error", "outbox: entry unreadable; left in place", { id, kind, reason: decoded.reason });
        continue;
      }
      const used = decoded.ok ? decoded.parts : 0;
      for (const [k, tail] of parts) if (k >= used) this.#discard(store, tail);
      if (!decoded.ok) {
        this.#discard(store, key);
        this.stats.damaged++;
        const seq = decoded.seq || (guessFits(decoded.guess, id, this.#queue) ? decoded.guess : 0);
        damaged.push({ seq, kind });
        this.#log("error", "outbox: damaged entry discarded", { id, kind, seq, reason: decoded.reason });
        continue;
      }
      const { entry } = decoded;
      if (kind === "report" && (entry.covers ?? 0) <= this.#ledger.acked && (entry.coversUnreadable ?? 0) <= this.#ledger.unreadableAcked) {
        this.#discardEntry(store, id, decoded.parts, kind);
        continue;
      }
      this.#queue.push({ entry, kind, id, stored: true, parts: decoded.parts, inFlight: false });
      this.stats.restored++;
    }
    // Tails whose head never got written (cut mid-add) or was already deleted (cut mid-remove).
    for (const parts of tails.values()) for (const key of parts.values()) this.#discard(store, key);
    // Only the newest report matters: it covers every drop the older ones did.
    const reports = this.#queue.filter((q) => q.kind === "report");
    for (const old of reports.slice(0, -1)) {
      this.#discardEntry(store, old.id, old.parts, old.kind);
      this.#queue.splice(this.#queue.indexOf(old), 1);
    }
    for (const d of damaged) this.#recordDrop({ entry: { topic: "", payload: new Uint8Array(0), seq: d.seq }, kind: d.kind, id: 0, stored: false, parts: 0, inFlight: false }, true);
    if (this.#queue.length) this.#log("info", "outbox: entries restored from flash", { entries: this.#queue.length, first: this.#queue[0].entry.seq });
    // A smaller capacity than the one these were written under.
    const restored = this.#queue.filter((q) => q.kind !== "report");
    const reportsLeft = this.#queue.filter((q) => q.kind === "report");
    this.#queue = [];
    for (const q of restored) {
      if (this.#makeRoomDurable(q)) this.#queue.push(q);
      else this.#discardEntry(store, q.id, q.parts, q.kind);
    }
    for (const r of reportsLeft) this.#queue.push(r);
    this.#queue.sort((a, b) => a.id - b.id);
  }

  #discardEntry(store: KeyValueStore, id: number, parts: number, kind: OutboxKind): void {
    this.#discard(store, partKey(id, 0, kind));
    for (let k = 1; k < parts; k++) this.#discard(store, partKey(id, k, kind));
  }
}

/**
 * A damaged head's seq is believed only if it is above every entry loaded before it: ids
 * follow the order entries were added in, and so do their sequence numbers.
 */
function guessFits(guess: number, id: number, loaded: Item[]): boolean {
  if (!(guess > 0)) return false;
  for (const q of loaded) if (q.id < id && q.entry.seq >= guess) return false;
  return true;
}

function footprint(entry: OutboxEntry): number {
  return entryFootprint(entry.payload.length, utf8Encode(entry.topic).length);
}

/** A key as it may be logged: printable ASCII, bounded. */
function printable(key: string): string {
  return key.slice(0, 40).replace(/[^\x20-\x7e]/g, "?");
}

// ---------------------------------------------------------------- records

export function partKey(id: number, part: number, kind: OutboxKind): string {
  const key = OUTBOX_PREFIX + LETTERS[KINDS.indexOf(kind)] + id.toString(36) + (part ? `.${part}` : "");
  if (key.length > KV_MAX_KEY) throw new RangeError("outbox: key too long");
  return key;
}

/** An entry as one or more KV values of at most KV_MAX_VALUE bytes, each a self-checking record. */
export function encodeRecord(entry: OutboxEntry, kind: OutboxKind): Uint8Array[] {
  const topic = utf8Encode(entry.topic);
  if (topic.length > 255) throw new RangeError("outbox: topic too long to store");
  if (!Number.isSafeInteger(entry.seq) || entry.seq < 0) throw new RangeError("outbox: bad seq");
  const covers = entry.covers ?? 0;
  const coversUnreadable = entry.coversUnreadable ?? 0;
  for (const c of [covers, coversUnreadable]) if (!Number.isInteger(c) || c < 0 || c > 0xffffffff) throw new RangeError("outbox: bad covers");
  const payload = entry.payload;
  const room = KV_MAX_VALUE - FRAME - BODY_HEADER;
  const firstRoom = room - topic.length;
  const parts = payload.length <= firstRoom ? 1 : 1 + Math.ceil((payload.length - firstRoom) / room);
  if (parts > 99) throw new RangeError("outbox: entry too large to store");
  const out: Uint8Array[] = [];
  let offset = 0;
  for (let k = 0; k < parts; k++) {
    const t = k === 0 ? topic : new Uint8Array(0);
    const take = Math.min(payload.length - offset, k === 0 ? firstRoom : room);
    const b = new Uint8Array(BODY_HEADER + t.length + take);
    b[0] = KINDS.indexOf(kind);
    b[1] = k;
    b[2] = parts;
    writeU32(b, 3, Math.floor(entry.seq / 0x100000000));
    writeU32(b, 7, entry.seq >>> 0);
    writeU32(b, 11, covers);
    writeU32(b, 15, coversUnreadable);
    b[19] = t.length;
    b.set(t, BODY_HEADER);
    b.set(payload.subarray(offset, offset + take), BODY_HEADER + t.length);
    offset += take;
    out.push(frameRecord(ENTRY_RECORD, b));
  }
  return out;
}

type Decoded =
  | { ok: true; entry: OutboxEntry; parts: number }
  /** seq is from an intact part; guess is what a damaged head says (unverified); unreadable: the store could not read the head at all. */
  | { ok: false; seq: number; guess: number; unreadable: boolean; reason: string };

/** The seq a damaged head still shows, if its frame is legible and its body names the same kind. Unverified. */
function legibleSeq(raw: Uint8Array, kind: OutboxKind): number {
  const at = FRAME - 4;
  if (raw.length < at + BODY_HEADER || raw[at] !== KINDS.indexOf(kind) || raw[at + 1] !== 0) return 0;
  const seq = partSeq(raw.subarray(at));
  return Number.isSafeInteger(seq) ? seq : 0;
}

function partSeq(b: Uint8Array): number {
  return readU32(b, 3) * 0x100000000 + readU32(b, 7);
}

/** Read one entry. The kind comes from its key; a damaged head's seq is taken from an intact tail if there is one. */
function decodeEntry(store: KeyValueStore, headKey: string, kind: OutboxKind, tails: Map<number, string>): Decoded {
  const bodies = new Map<number, Uint8Array>();
  let guess = 0;
  let unreadable = false;
  const readPart = (key: string, k: number): Uint8Array | string => {
    let raw: Uint8Array | undefined;
    try {
      raw = store.read(key);
    } catch (e) {
      if (k === 0) unreadable = true;
      return `part ${k} unreadable: ${String((e as Error)?.message ?? e)}`;
    }
    const r = decodeRecord(raw, ENTRY_RECORD);
    if (k === 0 && r.state === "damaged" && r.kind === ENTRY_RECORD && raw) guess = legibleSeq(raw, kind);
    if (r.state === "missing") return `part ${k} missing`;
    if (r.state === "damaged") return `part ${k}: ${r.reason}`;
    const b = r.body;
    if (b.length < BODY_HEADER || b[0] !== KINDS.indexOf(kind) || b[1] !== k || b[2] < 1 || (k > 0 && b[19] !== 0)) return `part ${k}: bad header`;
    bodies.set(k, b);
    return b;
  };
  const fail = (reason: string): Decoded => {
    // What the entry was, as far as can be known: any intact part of it names its sequence number.
    let seq = 0;
    for (const b of bodies.values()) seq = partSeq(b);
    if (!seq) {
      for (const [k, key] of tails) {
        if (bodies.has(k)) continue;
        const b = readPart(key, k);
        if (typeof b !== "string") {
          seq = partSeq(b);
          break;
        }
      }
    }
    return { ok: false, seq, guess, unreadable, reason };
  };
  const head = readPart(headKey, 0);
  if (typeof head === "string") return fail(head);
  const parts = head[2];
  const topicLength = head[19];
  if (BODY_HEADER + topicLength > head.length) return fail("bad topic length");
  let topic: string;
  try {
    topic = utf8Decode(head.subarray(BODY_HEADER, BODY_HEADER + topicLength));
  } catch {
    return fail("topic is not UTF-8");
  }
  const seq = partSeq(head);
  const chunks: Uint8Array[] = [head.subarray(BODY_HEADER + topicLength)];
  let total = chunks[0].length;
  for (let k = 1; k < parts; k++) {
    const key = tails.get(k);
    if (!key) return fail(`part ${k} missing`);
    const r = readPart(key, k);
    if (typeof r === "string") return fail(r);
    if (r[2] !== parts || partSeq(r) !== seq) return fail(`part ${k} belongs to another entry`);
    chunks.push(r.subarray(BODY_HEADER));
    total += chunks[k].length;
  }
  const payload = new Uint8Array(total);
  let o = 0;
  for (const c of chunks) {
    payload.set(c, o);
    o += c.length;
  }
  const covers = readU32(head, 11);
  const coversUnreadable = readU32(head, 15);
  const entry: OutboxEntry = { topic, payload, seq, durable: true, kind, ...(kind === "report" ? { covers, coversUnreadable } : {}) };
  return { ok: true, entry, parts };
}

function ledgerBytes(l: DropLedger): Uint8Array {
  const doc: Json = {
    acked: l.acked, boot: l.boot, drops: l.drops, events: l.events, mark: l.mark, recent: l.recent.map(([s, k]) => [s, k]), rings: l.rings,
    unreadable: l.unreadable, unreadableAcked: l.unreadableAcked, v: 2, victim: l.victim,
  };
  return encodeJsonRecord(LEDGER_RECORD, doc);
}

function isCount(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

function readLedger(store: KeyValueStore): DropLedger | "unreadable" | "missing" {
  const read = readJsonRecord(store, LEDGER_KEY, LEDGER_RECORD);
  if (read.state === "missing") return "missing";
  if (read.state === "damaged") return "unreadable";
  const doc = read.value;
  if (typeof doc !== "object" || doc === null || Array.isArray(doc) || doc.v !== 2) return "unreadable";
  const { acked, drops, events, rings, victim, recent, unreadable, unreadableAcked, boot, mark } = doc;
  if (!isCount(acked) || !isCount(drops) || !isCount(events) || !isCount(rings) || !isCount(victim) || !isCount(unreadable) || !isCount(unreadableAcked) || !Array.isArray(recent)) return "unreadable";
  if (!isCount(boot) || !isCount(mark)) return "unreadable";
  const list: Array<[number, OutboxKind]> = [];
  for (const r of recent) {
    if (!Array.isArray(r) || r.length !== 2 || !isCount(r[0]) || typeof r[1] !== "string" || !KINDS.includes(r[1] as OutboxKind)) return "unreadable";
    list.push([r[0], r[1] as OutboxKind]);
  }
  return { acked, drops, events, rings, victim, recent: list, unreadable, unreadableAcked, boot, mark };
}
