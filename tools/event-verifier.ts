/*
 * The reference event verifier, in code that runs in a browser as well as in
 * Node (the owner web app bundles it; ./verifier adds the CLI and the file
 * that keeps its marks).
 *
 * It checks, in order: the envelope's format (canonical JSON, known fields),
 * that the event names the expected thing (and the topic it arrived on, when
 * given), the Ed25519 signature under that thing's registered public key, and
 * that the event is newer than anything accepted from that thing (replay).
 * State advances only for events that pass every check. It decodes with the
 * core's own event module (the one encoder), and verifies with tweetnacl; the
 * tests check every signature a second time with OpenSSL.
 *
 * "Newer" is the pair (boot, seq) in order: the device counts boots and never
 * reissues a sequence number, both in its flash. Flash can be written back
 * from an old image, and then the counters go backwards while every signature
 * is still genuine. Such events are not dropped as plain replays: a boot below
 * the highest seen, or a second different event under one (boot, seq), is a
 * "rollback" alert for the owner; a sequence number that went backwards on a
 * new boot is accepted (no old event can carry a boot never seen) with an
 * alert. A redelivery of the same bytes stays a quiet "replay".
 *
 * Marks are per thing and per device key: a thing registered again under a
 * new key (a factory reset makes the device a new key, and its counters start
 * again) starts with no marks. With a ReplayState the marks survive a restart:
 * they are saved before an accepted event is returned, so a restarted consumer
 * cannot be fed old events (./verifier's FileReplayState keeps them in a file
 * replaced atomically).
 */
import nacl from "tweetnacl";
import { openEnvelope, type DoorEvent } from "../modules/core/events";
import { toHex } from "../modules/core/bytes";
import { TOPIC_ROOT } from "../modules/core/topics";

export type RejectReason = "format" | "unknown-thing" | "wrong-thing" | "signature" | "replay" | "rollback";

export type Verdict =
  | { ok: true; event: DoorEvent; alert?: string }
  | { ok: false; reason: RejectReason; detail: string; event?: DoorEvent; redelivery?: boolean };

/** What is remembered per thing: the newest (boot, seq) accepted and digests of the last few accepted events. */
export interface ReplayMark {
  /** The device key the marks were made under (hex): a new key (a reset device, provisioned again) starts afresh. */
  key: string;
  boot: number;
  seq: number;
  /** [boot, seq, digest] of recent accepted events, oldest first: tells a redelivery from a second event under one number. */
  recent: Array<[number, number, string]>;
}

/** Where the marks live between runs. save() must be atomic: the whole new state or the old one. */
export interface ReplayState {
  load(): Record<string, ReplayMark>;
  save(marks: Record<string, ReplayMark>): void;
}

/** Accepted events remembered per thing; above the device outbox's capacity so every redelivery is recognised. */
export const RECENT_KEPT = 64;
const STATE_FORMAT = "doorward-replay-state";

export class ReplayStateError extends Error {
  override name = "ReplayStateError";
}

function isCount(n: unknown): n is number {
  return typeof n === "number" && Number.isSafeInteger(n) && n >= 0;
}

/** Strict: a damaged file is an error, never an empty state (which would accept every replay). */
export function parseReplayState(text: string): Record<string, ReplayMark> {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new ReplayStateError(`replay state: not JSON (${(e as Error).message})`);
  }
  const d = doc as { format?: unknown; v?: unknown; things?: unknown };
  if (typeof d !== "object" || d === null || d.format !== STATE_FORMAT || d.v !== 1 || typeof d.things !== "object" || d.things === null || Array.isArray(d.things)) {
    throw new ReplayStateError(`replay state: not a ${STATE_FORMAT} v1 document`);
  }
  const marks: Record<string, ReplayMark> = {};
  for (const [thing, raw] of Object.entries(d.things as Record<string, unknown>)) {
    const m = raw as Partial<ReplayMark>;
    const recentOk = Array.isArray(m?.recent) && m.recent.length <= RECENT_KEPT
      && m.recent.every((r) => Array.isArray(r) && r.length === 3 && isCount(r[0]) && isCount(r[1]) && typeof r[2] === "string" && /^[0-9a-f]{32}$/.test(r[2]));
    if (!m || typeof m.key !== "string" || !/^[0-9a-f]{64}$/.test(m.key) || !isCount(m.boot) || !isCount(m.seq) || !recentOk) {
      throw new ReplayStateError(`replay state: the mark for ${JSON.stringify(thing)} is damaged`);
    }
    marks[thing] = { key: m.key, boot: m.boot, seq: m.seq, recent: m.recent!.map((r) => [r[0], r[1], r[2]]) };
  }
  return marks;
}

export function formatReplayState(marks: Record<string, ReplayMark>): string {
  return JSON.stringify({ format: STATE_FORMAT, v: 1, things: marks }) + "\n";
}

function digestOf(payload: Uint8Array): string {
  return toHex(nacl.hash(payload).subarray(0, 16));
}

export class EventVerifier {
  #keys = new Map<string, Uint8Array>();
  #marks: Record<string, ReplayMark>;
  #state: ReplayState | undefined;

  constructor(keys: Record<string, Uint8Array> = {}, options: { state?: ReplayState } = {}) {
    for (const thing of Object.keys(keys)) this.register(thing, keys[thing]);
    this.#state = options.state;
    this.#marks = this.#state ? this.#state.load() : {};
  }

  register(thing: string, publicKey: Uint8Array): void {
    if (publicKey.length !== 32) throw new RangeError("verifier: Ed25519 public keys are 32 bytes");
    this.#keys.set(thing, publicKey.slice());
  }

  #markOf(thing: string): ReplayMark | undefined {
    const m = this.#marks[thing];
    const key = this.#keys.get(thing);
    return m && key && m.key === toHex(key) ? m : undefined;
  }

  /** Sequence number of the newest event accepted from a thing under its registered key (0 if none). */
  lastSeq(thing: string): number {
    return this.#markOf(thing)?.seq ?? 0;
  }

  /** Boot number of the newest event accepted from a thing under its registered key (0 if none). */
  lastBoot(thing: string): number {
    return this.#markOf(thing)?.boot ?? 0;
  }

  /**
   * Verify one payload. `topic`, when given, must be doorward/<event.thing>/<kind>.
   * `expectThing`, when given, must equal event.thing.
   */
  verify(payload: Uint8Array, context: { topic?: string; expectThing?: string } = {}): Verdict {
    let opened;
    try {
      opened = openEnvelope(payload);
    } catch (e) {
      return { ok: false, reason: "format", detail: (e as Error).message };
    }
    const { event, signature, message } = opened;
    if (context.expectThing !== undefined && event.thing !== context.expectThing) {
      return { ok: false, reason: "wrong-thing", detail: `event is from ${event.thing}, expected ${context.expectThing}`, event };
    }
    if (context.topic !== undefined) {
      const parts = context.topic.split("/");
      if (parts.length !== 3 || parts[0] !== TOPIC_ROOT || parts[1] !== event.thing) {
        return { ok: false, reason: "wrong-thing", detail: `event from ${event.thing} arrived on ${context.topic}`, event };
      }
    }
    const key = this.#keys.get(event.thing);
    if (!key) return { ok: false, reason: "unknown-thing", detail: `no key registered for ${event.thing}`, event };
    if (!nacl.sign.detached.verify(message, signature, key)) {
      return { ok: false, reason: "signature", detail: "Ed25519 signature does not verify", event };
    }
    const keyHex = toHex(key);
    const stored = this.#marks[event.thing];
    // Marks made under another key belong to the thing's previous life (before a factory reset): they do not bind this key.
    const mark = stored && stored.key === keyHex ? stored : { key: keyHex, boot: 0, seq: 0, recent: [] };
    const digest = digestOf(payload);
    const known = mark.recent.find((r) => r[0] === event.boot && r[1] === event.seq);
    if (known && known[2] === digest) {
      return { ok: false, reason: "replay", detail: `boot ${event.boot} seq ${event.seq} was accepted already (a redelivery)`, event, redelivery: true };
    }
    if (known) {
      return { ok: false, reason: "rollback", detail: `a second, different event signed as boot ${event.boot} seq ${event.seq}: the device's counters were written back (flash restored from an old image)`, event };
    }
    if (event.boot < mark.boot) {
      return {
        ok: false, reason: "rollback", event,
        detail: `boot ${event.boot} is below boot ${mark.boot} already seen: the device's flash was written back from an old image, or an old event was replayed`,
      };
    }
    if (event.boot === mark.boot && event.seq <= mark.seq) {
      return { ok: false, reason: "replay", detail: `seq ${event.seq} is not above ${mark.seq} in boot ${event.boot}`, event };
    }
    const alert = event.seq <= mark.seq
      ? `seq ${event.seq} on new boot ${event.boot} is not above seq ${mark.seq} of boot ${mark.boot}: the device's sequence counter went backwards (flash written back)`
      : undefined;
    const recent = [...mark.recent, [event.boot, event.seq, digest] as [number, number, string]].slice(-RECENT_KEPT);
    const next = { ...this.#marks, [event.thing]: { key: keyHex, boot: event.boot, seq: event.seq, recent } };
    // Saved before the event counts as accepted: a crash now can only make the consumer stricter.
    this.#state?.save(next);
    this.#marks = next;
    return alert ? { ok: true, event, alert } : { ok: true, event };
  }
}
