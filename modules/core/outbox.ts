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
 *   ob.<id>     head record of entry <id> (base36, increasing in the order added)
 *   ob.<id>.<k> part k ≥ 1 of an entry too long for one value (an event envelope may be 4096 bytes)
 *   ob-ledger   drop ledger: lifetime drop counts, the last victim, the last drops, the drops a report covered
 * A record is [version, kind, part, parts, seq (u64), covers (u32), FNV-1a checksum, topic length,
 * topic, payload slice]. Tails are written before the head and deleted after it, so a head
 * present means every part is present; anything left without a head is garbage from a cut.
 *
 * When full (entries or bytes), the policy is: volatile messages only ever push out older
 * volatile messages; among flash entries the victim is the oldest of the least important
 * kind (status < snapshot < audit < ring), the new entry included, and entries in flight are
 * never chosen. So a ring goes only when the outbox holds nothing but rings, and then the
 * oldest ring goes. Every drop is counted in the ledger before it happens, and the owner
 * (Doorbell) is told so it can queue a signed drop report, which lives outside the capacity
 * so that reporting a drop never causes one.
 */
import type { KeyValueStore, Log, MqttTransport } from "./ports";
import { KV_MAX_KEY, KV_MAX_VALUE } from "./ports";
import { canonicalBytes, parseCanonical, type Json } from "./canonical";
import { readU32, utf8Decode, utf8Encode, writeU32 } from "./bytes";

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
}

export interface OutboxOptions {
  transport: MqttTransport;
  log: Log;
  /** Flash for durable entries; without it everything is kept in RAM only. */
  store?: KeyValueStore;
  /** Durable entries kept at most (drop reports not counted). Default 32. */
  capacity?: number;
  /** Payload bytes of durable entries kept at most. Default 16 KB (sized for a small NVS partition). */
  maxDurableBytes?: number;
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
  /** The last drops, oldest first: [seq, kind]. */
  recent: Array<[number, OutboxKind]>;
}

export const OUTBOX_PREFIX = "ob.";
export const LEDGER_KEY = "ob-ledger";
const RECENT_KEEP = 16;
const VERSION = 1;
const HEADER = 21;
const KINDS: readonly OutboxKind[] = ["other", "status", "snapshot", "audit", "ring", "report"];
/** Eviction rank: lower goes first. Reports are never evicted (they sit outside the capacity). */
const RANK: Readonly<Record<OutboxKind, number>> = { other: 0, status: 0, snapshot: 1, audit: 2, ring: 3, report: 9 };
const MAX_ID = 36 ** 9 - 1;

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
  readonly maxDurableBytes: number;
  readonly volatileCapacity: number;
  readonly window: number;
  readonly stats = { sent: 0, acked: 0, resent: 0, restored: 0, damaged: 0, writeFailures: 0, stalls: 0 };
  #queue: Item[] = [];
  #transport: MqttTransport;
  #log: Log;
  #store: KeyValueStore | undefined;
  #options: OutboxOptions;
  #ledger: DropLedger = { drops: 0, rings: 0, events: 0, acked: 0, victim: 0, recent: [] };
  #nextId = 1;
  #generation = 0;
  #online = false;
  #stalled = false;

  constructor(options: OutboxOptions) {
    this.#options = options;
    this.#transport = options.transport;
    this.#log = options.log;
    this.#store = options.store;
    this.capacity = Math.max(1, options.capacity ?? 32);
    // At least two of the largest events (4096-byte envelopes), so one always fits.
    this.maxDurableBytes = Math.max(8192, options.maxDurableBytes ?? 16 * 1024);
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

  /** Sequence numbers waiting, in send order. */
  pending(): number[] {
    return this.#queue.map((i) => i.entry.seq);
  }

  /** Drops not yet covered by an acknowledged report or one waiting in the queue. */
  needsReport(): boolean {
    let covered = this.#ledger.acked;
    for (const item of this.#queue) if (item.kind === "report") covered = Math.max(covered, item.entry.covers ?? 0);
    return this.#ledger.drops > covered;
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
        // Tails first, head last: the head's presence is what makes the entry exist.
        for (let k = record.length - 1; k >= 0; k--) store.write(partKey(item.id, k), record[k]);
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
        if (item.kind === "report" && (item.entry.covers ?? 0) > this.#ledger.acked) {
          // The ledger first: a cut after it leaves a report that boot recognises as already acknowledged.
          this.#saveLedger({ ...this.#ledger, acked: item.entry.covers ?? 0 });
        }
        this.#deleteEntry(item.id, item.parts);
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
    const size = item.entry.payload.length;
    for (;;) {
      let count = 0, bytes = 0;
      for (const q of this.#queue) {
        if (q.id && q.kind !== "report") {
          count++;
          bytes += q.entry.payload.length;
        }
      }
      if (count < this.capacity && bytes + size <= this.maxDurableBytes) return true;
      let victim: Item = item;
      for (const q of this.#queue) {
        if (!q.id || q.inFlight || q.kind === "report") continue;
        if (RANK[q.kind] < RANK[victim.kind] || (RANK[q.kind] === RANK[victim.kind] && q.id < victim.id)) victim = q;
      }
      this.#recordDrop(victim, true);
      if (victim === item) return false;
      this.#queue.splice(this.#queue.indexOf(victim), 1);
      if (victim.stored) this.#deleteEntry(victim.id, victim.parts);
    }
  }

  /** Count a drop in the ledger (before the entry goes) and tell the owner. */
  #recordDrop(victim: Item, durable: boolean): void {
    const l = this.#ledger;
    const next: DropLedger = {
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
      if (q.stored) this.#deleteEntry(q.id, q.parts);
      this.#queue.splice(this.#queue.indexOf(q), 1);
    }
  }

  // ------------------------------------------------------------------ flash

  #saveLedger(next: DropLedger): void {
    this.#store!.write(LEDGER_KEY, ledgerBytes(next));
    this.#ledger = next;
  }

  #deleteEntry(id: number, parts: number): void {
    const store = this.#store!;
    store.delete(partKey(id, 0));
    for (let k = 1; k < parts; k++) store.delete(partKey(id, k));
  }

  /** Boot: finish what a power cut interrupted, drop garbage, load the entries in order. */
  #restore(store: KeyValueStore): void {
    const ledger = readLedger(store.read(LEDGER_KEY));
    if (ledger === "corrupt") this.#log("error", "outbox: drop ledger unreadable; counting from zero");
    else this.#ledger = ledger;
    const heads = new Map<number, string>();
    const tails = new Map<number, Map<number, string>>();
    let maxId = this.#ledger.victim;
    for (const key of store.keys()) {
      if (!key.startsWith(OUTBOX_PREFIX)) continue;
      const m = /^ob\.([0-9a-z]{1,9})(?:\.([1-9][0-9]?))?$/.exec(key);
      if (!m) {
        store.delete(key);
        continue;
      }
      const id = parseInt(m[1], 36);
      maxId = Math.max(maxId, id);
      if (m[2] === undefined) heads.set(id, key);
      else {
        if (!tails.has(id)) tails.set(id, new Map());
        tails.get(id)!.set(Number(m[2]), key);
      }
    }
    this.#nextId = Math.min(maxId, MAX_ID - 1) + 1;
    const damaged: Array<{ seq: number; kind: OutboxKind }> = [];
    const ids = [...heads.keys()].sort((a, b) => a - b);
    for (const id of ids) {
      const parts = tails.get(id) ?? new Map<number, string>();
      tails.delete(id);
      if (id === this.#ledger.victim) {
        // An eviction counted in the ledger but cut before the entry was deleted.
        store.delete(heads.get(id)!);
        for (const key of parts.values()) store.delete(key);
        continue;
      }
      const decoded = decodeEntry(store, id, parts);
      const used = decoded.ok ? decoded.parts : 0;
      for (const [k, key] of parts) if (k >= used) store.delete(key);
      if (!decoded.ok) {
        store.delete(heads.get(id)!);
        this.stats.damaged++;
        damaged.push({ seq: decoded.seq, kind: decoded.kind });
        this.#log("error", "outbox: damaged entry discarded", { id, seq: decoded.seq, reason: decoded.reason });
        continue;
      }
      const { entry, kind } = decoded;
      if (kind === "report" && (entry.covers ?? 0) <= this.#ledger.acked) {
        this.#deleteEntry(id, decoded.parts);
        continue;
      }
      this.#queue.push({ entry, kind, id, stored: true, parts: decoded.parts, inFlight: false });
      this.stats.restored++;
    }
    // Tails whose head never got written (cut mid-add) or was already deleted (cut mid-remove).
    for (const parts of tails.values()) for (const key of parts.values()) store.delete(key);
    // Only the newest report matters: it covers every drop the older ones did.
    const reports = this.#queue.filter((q) => q.kind === "report");
    for (const old of reports.slice(0, -1)) {
      this.#deleteEntry(old.id, old.parts);
      this.#queue.splice(this.#queue.indexOf(old), 1);
    }
    for (const d of damaged) this.#recordDrop({ entry: { topic: "", payload: new Uint8Array(0), seq: d.seq }, kind: d.kind, id: 0, stored: false, parts: 0, inFlight: false }, true);
    if (this.#queue.length) this.#log("info", "outbox: entries restored from flash", { entries: this.#queue.length, first: this.#queue[0].entry.seq });
    // A smaller capacity than the one these were written under.
    const restored = this.#queue.filter((q) => q.kind !== "report");
    this.#queue = this.#queue.filter((q) => q.kind === "report");
    const reportsLeft = this.#queue;
    this.#queue = [];
    for (const q of restored) {
      if (this.#makeRoomDurable(q)) this.#queue.push(q);
      else this.#deleteEntry(q.id, q.parts);
    }
    for (const r of reportsLeft) this.#queue.push(r);
    this.#queue.sort((a, b) => a.id - b.id);
  }
}

// ---------------------------------------------------------------- records

export function partKey(id: number, part: number): string {
  const key = OUTBOX_PREFIX + id.toString(36) + (part ? `.${part}` : "");
  if (key.length > KV_MAX_KEY) throw new RangeError("outbox: key too long");
  return key;
}

/** FNV-1a, 32 bits: catches a damaged value (the store promises atomic writes, not eternal bits). */
function fnv(bytes: Uint8Array, from: number, seed = 0x811c9dc5): number {
  let h = seed;
  for (let i = from; i < bytes.length; i++) h = Math.imul(h ^ bytes[i], 0x01000193) >>> 0;
  return h >>> 0;
}

function checksum(record: Uint8Array): number {
  const head = record.subarray(0, 16);
  return fnv(record, HEADER - 1, fnv(head, 0));
}

/** An entry as one or more KV values of at most KV_MAX_VALUE bytes. */
export function encodeRecord(entry: OutboxEntry, kind: OutboxKind): Uint8Array[] {
  const topic = utf8Encode(entry.topic);
  if (topic.length > 255) throw new RangeError("outbox: topic too long to store");
  if (!Number.isSafeInteger(entry.seq) || entry.seq < 0) throw new RangeError("outbox: bad seq");
  const covers = entry.covers ?? 0;
  if (!Number.isInteger(covers) || covers < 0 || covers > 0xffffffff) throw new RangeError("outbox: bad covers");
  const payload = entry.payload;
  const firstRoom = KV_MAX_VALUE - HEADER - topic.length;
  const room = KV_MAX_VALUE - HEADER;
  const parts = payload.length <= firstRoom ? 1 : 1 + Math.ceil((payload.length - firstRoom) / room);
  if (parts > 99) throw new RangeError("outbox: entry too large to store");
  const out: Uint8Array[] = [];
  let offset = 0;
  for (let k = 0; k < parts; k++) {
    const t = k === 0 ? topic : new Uint8Array(0);
    const take = Math.min(payload.length - offset, k === 0 ? firstRoom : room);
    const r = new Uint8Array(HEADER + t.length + take);
    r[0] = VERSION;
    r[1] = KINDS.indexOf(kind);
    r[2] = k;
    r[3] = parts;
    writeU32(r, 4, Math.floor(entry.seq / 0x100000000));
    writeU32(r, 8, entry.seq >>> 0);
    writeU32(r, 12, covers);
    r[20] = t.length;
    r.set(t, HEADER);
    r.set(payload.subarray(offset, offset + take), HEADER + t.length);
    offset += take;
    writeU32(r, 16, checksum(r));
    out.push(r);
  }
  return out;
}

type Decoded =
  | { ok: true; entry: OutboxEntry; kind: OutboxKind; parts: number }
  | { ok: false; seq: number; kind: OutboxKind; reason: string };

function decodeEntry(store: KeyValueStore, id: number, tails: Map<number, string>): Decoded {
  let seq = 0;
  let kind: OutboxKind = "other";
  const fail = (reason: string): Decoded => ({ ok: false, seq, kind, reason });
  const head = store.read(partKey(id, 0));
  if (!head || head.length < HEADER) return fail("head missing or short");
  if (head[1] < KINDS.length) kind = KINDS[head[1]];
  seq = readU32(head, 4) * 0x100000000 + readU32(head, 8);
  if (head[0] !== VERSION) return fail("unknown record version");
  if (readU32(head, 16) !== checksum(head)) return fail("checksum mismatch");
  if (head[1] >= KINDS.length || head[2] !== 0 || head[3] < 1) return fail("bad header");
  const parts = head[3];
  const topicLength = head[20];
  if (HEADER + topicLength > head.length) return fail("bad topic length");
  let topic: string;
  try {
    topic = utf8Decode(head.subarray(HEADER, HEADER + topicLength));
  } catch {
    return fail("topic is not UTF-8");
  }
  const chunks: Uint8Array[] = [head.subarray(HEADER + topicLength)];
  let total = chunks[0].length;
  for (let k = 1; k < parts; k++) {
    const key = tails.get(k);
    const r = key ? store.read(key) : undefined;
    if (!r || r.length < HEADER) return fail(`part ${k} missing`);
    if (r[0] !== VERSION || r[2] !== k || r[3] !== parts || r[20] !== 0 || readU32(r, 16) !== checksum(r)) return fail(`part ${k} damaged`);
    if (readU32(r, 4) !== readU32(head, 4) || readU32(r, 8) !== readU32(head, 8)) return fail(`part ${k} belongs to another entry`);
    chunks.push(r.subarray(HEADER));
    total += chunks[k].length;
  }
  const payload = new Uint8Array(total);
  let o = 0;
  for (const c of chunks) {
    payload.set(c, o);
    o += c.length;
  }
  const covers = readU32(head, 12);
  const entry: OutboxEntry = { topic, payload, seq, durable: true, kind, ...(kind === "report" ? { covers } : {}) };
  return { ok: true, entry, kind, parts };
}

function ledgerBytes(l: DropLedger): Uint8Array {
  const doc: Json = { acked: l.acked, drops: l.drops, events: l.events, recent: l.recent.map(([s, k]) => [s, k]), rings: l.rings, v: 1, victim: l.victim };
  return canonicalBytes(doc);
}

function isCount(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

function readLedger(raw: Uint8Array | undefined): DropLedger | "corrupt" {
  if (raw === undefined) return { drops: 0, rings: 0, events: 0, acked: 0, victim: 0, recent: [] };
  let doc: Json;
  try {
    doc = parseCanonical(raw, KV_MAX_VALUE);
  } catch {
    return "corrupt";
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc) || doc.v !== 1) return "corrupt";
  const { acked, drops, events, rings, victim, recent } = doc;
  if (!isCount(acked) || !isCount(drops) || !isCount(events) || !isCount(rings) || !isCount(victim) || !Array.isArray(recent)) return "corrupt";
  const list: Array<[number, OutboxKind]> = [];
  for (const r of recent) {
    if (!Array.isArray(r) || r.length !== 2 || !isCount(r[0]) || typeof r[1] !== "string" || !KINDS.includes(r[1] as OutboxKind)) return "corrupt";
    list.push([r[0], r[1] as OutboxKind]);
  }
  return { acked, drops, events, rings, victim, recent: list };
}
