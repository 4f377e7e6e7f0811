/*
 * Commands: authenticate, check, dispatch and answer what arrives on
 * doorward/<thing>/commands.
 *
 * A command is a canonical-JSON body sealed with XSalsa20-Poly1305 under the
 * sender's command key (derived once from X25519(device, user), see ./access),
 * inside a small canonical envelope {box, from, n, v}. Checking one costs a
 * parse and a secretbox open of a few hundred bytes: milliseconds on the device,
 * where an Ed25519 verify would take seconds. The cloud and broker relay the
 * box but can neither read nor forge it.
 *
 * Checks run cheapest first, and nothing changes until all pass:
 *   size and nesting → envelope shape → sender listed (else revoked /
 *   unknown-sender) → MAC → body shape → thing → generation → expiry → replay
 *   → role → rate (per sender, revocations exempt; signed lists overall, ./budget).
 *   Then the sender's counter is raised and the command runs.
 *
 * Freshness does not rest on the wall clock, which SNTP sets without
 * authentication. Three things carry it (docs/access.md, "Freshness"):
 *   - the generation: every command names the list generation it was made
 *     for, and every access change moves it on, so nothing made before a
 *     change works after it;
 *   - per-sender counters, kept in RAM (an accepted command writes no flash),
 *     plus a boot mark: after a boot, a counter stamped before the boot began
 *     is refused, so a command captured before a reboot cannot run again;
 *   - expiry, judged against the clock but never below a time floor that only
 *     the owner's authenticated commands raise (persisted with access changes).
 * Revocations (revoke, revoke-all) ask nothing of the clock: an authentic one
 * from the owner, for the generation in force and with a counter above the
 * owner's last, is applied however wrong the device's time is. Replaying one
 * is harmless: the change it made moved the generation on.
 * Every outcome, including hostile bytes, is a reply with a reason code; no
 * exception leaves handleCommand. Replies to an authenticated sender also carry
 * a seal under the sender's reply key, so the app knows the device said it.
 *
 * Live sessions (a stream of snapshots a user started) live here too, because
 * they must end in the same call that revokes their user.
 *
 * With a HeavyCrypto port (a worker), submitCommand runs a grant's Ed25519
 * verify and box.before there: every other command, revocations first among
 * them, is checked and in force before submitCommand returns, even while a
 * grant is being verified. One grant is verified at a time; another gets "busy".
 */
import nacl from "tweetnacl";
import type { Clock, KeyValueStore, Log, Random, SecretStore, Sha512 } from "./ports";
import { canonicalBytes, jsonNestsDeeper, parseCanonical, type Json } from "./canonical";
import { fromBase64Url, toBase64Url, utf8Decode } from "./bytes";
import { encodeJsonRecord, keyedTag, readJsonRecord, type RecordTag } from "./record";
import { ANCHOR_DOMAIN, anchorSubscriptions, anchorTopics, encodeAnchorUpdate, readAnchorAnswer } from "./acl-anchor";
import { isThingName } from "./topics";
import {
  AccessList,
  AccessRejection,
  isCount,
  isRecord,
  isUserId,
  signedListFromJson,
  type AccessChange,
  type OwnerEnrolment,
  type ReasonCode,
  type Role,
  type SignatureCheck,
} from "./access";
import { wrapContentKey, type ContentKeyWrapping } from "./footage-keys";
import type { HeavyCrypto } from "./heavy-crypto";
import { BucketsByKey, TokenBucket } from "./budget";

export type { ReasonCode } from "./access";

export const COMMAND_VERSION = 1;
/** Envelopes larger than this are refused unparsed (an access update with MAX_USERS users is ~2.6 KB). */
export const MAX_COMMAND_BYTES = 4096;
/** A command may not claim to stay valid longer than this ahead of the device's clock. */
export const MAX_COMMAND_LIFETIME_MS = 10 * 60_000;
export const MAX_STREAM_SECONDS = 600;
const OUTER_MAX_DEPTH = 1;
const INNER_MAX_DEPTH = 5;
const NONCE_BYTES = 24;
/**
 * One KeyValueStore entry; "dw." like the sequence counter's, clear of the vault's "v…" records.
 * It holds the owner's time floor, written only with access changes: accepted commands write no flash.
 */
export const REPLAY_KEY = "dw.acl.hw";
const REPLAY_KIND = "acl-hw";
/** Revocations are applied without a look at the clock (see the head of this file). */
const CLOCK_FREE: ReadonlySet<string> = new Set(["revoke", "revoke-all"]);
const ANCHOR_RETRY_MS = 5000;
/** What the device acts on before (or against) the cloud's anchor: removing rights, and the owner's signed list. */
const ANCHOR_FREE: ReadonlySet<string> = new Set(["revoke", "revoke-all", "access-update"]);

export type Op = "snapshot" | "chime-test" | "stream-start" | "stream-stop" | "access-update" | "revoke" | "revoke-all";

/** Who may do what. Ringing the chime is not a viewer's right: a night-time chime is harassment. */
export const PERMISSIONS: Readonly<Record<Op, readonly Role[]>> = {
  snapshot: ["owner", "resident", "viewer"],
  "stream-start": ["owner", "resident", "viewer"],
  "stream-stop": ["owner", "resident", "viewer"],
  "chime-test": ["owner", "resident"],
  "access-update": ["owner"],
  revoke: ["owner"],
  "revoke-all": ["owner"],
};

/** Members each op carries besides the common {ctr, exp, from, gen, op, thing, v}. */
const OP_ARGS: Readonly<Record<Op, readonly string[]>> = {
  snapshot: [],
  "chime-test": [],
  "stream-start": ["seconds"],
  "stream-stop": [],
  "access-update": ["list"],
  revoke: ["user"],
  "revoke-all": [],
};
const COMMON = ["ctr", "exp", "from", "gen", "op", "thing", "v"];

export const REASON_CODES: readonly ReasonCode[] = [
  "malformed", "unknown-sender", "revoked", "bad-mac", "wrong-thing", "stale-generation",
  "expired", "replay", "forbidden", "bad-signature", "busy", "storage-failed", "internal",
];

export interface CommandBody {
  v: number;
  thing: string;
  from: string;
  /** The access-list generation the sender believes current. */
  gen: number;
  /**
   * Per-sender counter, strictly increasing and at least the sender's wall ms:
   * apps use max(last + 1, wall ms), or the `next` of a replay refusal.
   */
  ctr: number;
  /** Wall time (ms since epoch) after which the command is void. */
  exp: number;
  op: Op;
  [arg: string]: Json;
}

function parseStrict(bytes: Uint8Array, maxDepth: number, what: string): Json {
  if (jsonNestsDeeper(bytes, maxDepth)) throw new AccessRejection("malformed", `${what} nests too deeply`);
  try {
    return parseCanonical(bytes, MAX_COMMAND_BYTES);
  } catch {
    throw new AccessRejection("malformed", `${what} is not canonical JSON`);
  }
}

// ---- the wire format, shared by the device and the apps ----

/** Seal a command body for the device: the payload to publish on doorward/<thing>/commands. */
export function sealCommand(body: CommandBody, commandKey: Uint8Array, nonce: Uint8Array): Uint8Array {
  if (nonce.length !== NONCE_BYTES) throw new TypeError("command: nonce must be 24 bytes");
  const box = nacl.secretbox(canonicalBytes(body), nonce, commandKey);
  const payload = canonicalBytes({ box: toBase64Url(box), from: body.from, n: toBase64Url(nonce), v: COMMAND_VERSION });
  if (payload.length > MAX_COMMAND_BYTES) throw new RangeError("command: envelope too large");
  return payload;
}

export interface Reply {
  v: number;
  thing: string;
  ok: boolean;
  reason?: ReasonCode;
  detail?: string;
  /** Sender, counter, nonce and op of the command answered, when they could be read. */
  from: string | null;
  ctr: number | null;
  n: string | null;
  op: string | null;
  /** Generation in force after the command. */
  gen: number;
  result?: Json;
  /** On a "replay" refusal: the smallest counter the device would take next from this sender. */
  next?: number;
  /** On a refusal because the cloud anchors a newer list: the generation a signed list must reach. */
  anchor?: number;
}

export interface ReadReply {
  reply: Reply;
  /** True only when the seal opened under the reader's reply key and matches the clear reply. */
  authenticated: boolean;
}

/** Parse a reply; with the sender's reply key, also check the device's seal. Throws TypeError on a malformed reply. */
export function readReply(payload: Uint8Array, replyKey?: Uint8Array): ReadReply {
  const doc = parseCanonical(payload, MAX_COMMAND_BYTES);
  if (!isRecord(doc) || doc.v !== COMMAND_VERSION || typeof doc.ok !== "boolean" || !isCount(doc.gen)) throw new TypeError("reply: bad shape");
  const { seal, ...clear } = doc;
  let authenticated = false;
  if (replyKey && isRecord(seal) && typeof seal.box === "string" && typeof seal.n === "string") {
    const opened = nacl.secretbox.open(fromBase64Url(seal.box), fromBase64Url(seal.n), replyKey);
    authenticated = opened !== null && utf8Decode(opened) === utf8Decode(canonicalBytes(clear));
  }
  return { reply: clear as unknown as Reply, authenticated };
}

// ---- replay high-water marks ----

/**
 * Per-sender counters, in RAM only, and the boot mark: the lowest counter a
 * command may carry in this boot (counters are the sender's wall ms, see
 * CommandBody.ctr, so one below the boot's start was made before the boot).
 */
export class ReplayGuard {
  #marks = new Map<string, number>();
  #bootMark = 0;

  highWater(id: string): number {
    return this.#marks.get(id) ?? 0;
  }

  get bootMark(): number {
    return this.#bootMark;
  }

  /** The smallest counter id may use next, for the reply to a refused one. */
  next(id: string): number {
    return Math.max(this.highWater(id) + 1, this.#bootMark);
  }

  /** Above the sender's mark, and (unless boot-free) not made before this boot. */
  fresh(id: string, ctr: number, bootFree = false): boolean {
    return ctr > this.highWater(id) && (bootFree || ctr >= this.#bootMark);
  }

  setBootMark(ms: number): void {
    this.#bootMark = Math.max(this.#bootMark, ms);
  }

  record(id: string, ctr: number, keep: (id: string) => boolean): void {
    this.prune(keep);
    this.#marks.set(id, ctr);
  }

  /** Forget marks of users no longer listed: their commands carry an older generation anyway. */
  prune(keep: (id: string) => boolean): void {
    for (const id of [...this.#marks.keys()]) if (!keep(id)) this.#marks.delete(id);
  }
}

/** The owner's time floor as last stored (0 when there is none or it is damaged). */
export function readTimeFloor(store: KeyValueStore): number {
  const read = readJsonRecord(store, REPLAY_KEY, REPLAY_KIND, { maxDepth: 1 });
  return read.state === "ok" && isRecord(read.value) && isCount(read.value.floor) ? read.value.floor : 0;
}

// ---- live sessions ----

export type SessionEndReason = "stopped" | "expired" | "revoked" | "replaced" | "rekeyed";

export interface LiveSession {
  readonly id: number;
  readonly user: string;
  readonly startedAt: number;
  readonly endsAt: number;
  frames: number;
  open: boolean;
  endReason?: SessionEndReason;
}

export interface LiveSessionsOptions {
  clock: Clock;
  intervalMs: number;
  max: number;
  /** Asked before every frame, so a session can never outlive its user's rights. */
  allowed: (user: string) => boolean;
  onFrame?: (session: LiveSession) => void;
  onEnd?: (session: LiveSession, reason: SessionEndReason) => void;
}

/** Streams of snapshots, one per user at most, each a chain of scheduled frames. */
export class LiveSessions {
  #o: LiveSessionsOptions;
  #open = new Map<number, { session: LiveSession; cancel: () => void }>();
  #nextId = 1;

  constructor(options: LiveSessionsOptions) {
    this.#o = options;
  }

  active(): LiveSession[] {
    return [...this.#open.values()].map((e) => e.session);
  }

  start(user: string, seconds: number): LiveSession {
    this.endUsers([user], "replaced");
    if (this.#open.size >= this.#o.max) throw new AccessRejection("busy", "too many live sessions");
    const now = this.#o.clock.monotonic();
    const session: LiveSession = { id: this.#nextId++, user, startedAt: now, endsAt: now + seconds * 1000, frames: 0, open: true };
    const entry = { session, cancel: () => {} };
    this.#open.set(session.id, entry);
    const tick = () => {
      if (!session.open) return;
      if (!this.#o.allowed(user)) return this.#end(session.id, "revoked");
      if (this.#o.clock.monotonic() >= session.endsAt) return this.#end(session.id, "expired");
      session.frames++;
      this.#o.onFrame?.(session);
      if (session.open) entry.cancel = this.#o.clock.schedule(tick, this.#o.intervalMs);
    };
    entry.cancel = this.#o.clock.schedule(tick, 0);
    return session;
  }

  /** End every open session of these users, now, before returning. Returns how many ended. */
  endUsers(users: Iterable<string>, reason: SessionEndReason): number {
    const set = new Set(users);
    let n = 0;
    for (const [id, e] of [...this.#open]) {
      if (set.has(e.session.user)) {
        this.#end(id, reason);
        n++;
      }
    }
    return n;
  }

  #end(id: number, reason: SessionEndReason): void {
    const e = this.#open.get(id);
    if (!e) return;
    this.#open.delete(id);
    e.cancel();
    e.session.open = false;
    e.session.endReason = reason;
    this.#o.onEnd?.(e.session, reason);
  }
}

// ---- the device side ----

export type CommandAction =
  | { type: "snapshot"; user: string }
  | { type: "chime-test"; user: string }
  | { type: "stream-started"; user: string; session: LiveSession }
  | { type: "stream-stopped"; user: string; sessions: number }
  | { type: "access-changed"; change: AccessChange; sessionsEnded: number };

export interface CommandOutcome {
  ok: boolean;
  reason?: ReasonCode;
  detail?: string;
  /** Sender id, once it was read from a well-formed envelope (not proof of who sent it unless ok). */
  from: string | null;
  op: Op | null;
  /** Publish on doorward/<thing>/replies. */
  reply: Uint8Array;
  /** What the doorbell must do (capture, chime); absent on refusal. */
  action?: CommandAction;
}

export interface AccessControlOptions {
  thing: string;
  /** Holds the list and the per-user keys (the vault on the device). */
  secrets: SecretStore;
  /** Holds the replay marks. */
  store: KeyValueStore;
  random: Random;
  clock: Clock;
  log: Log;
  /** The device's X25519 secret key, from the vault. */
  deviceBoxSecretKey: Uint8Array;
  /** The first owner, from the provisioning bundle; used only when no list is stored yet. */
  owner: OwnerEnrolment;
  sha512?: Sha512;
  verifySignature?: SignatureCheck;
  /**
   * Anchor the generation in the cloud (./acl-anchor): publish the shadow
   * requests there. With it, no command but a revocation or a signed list is
   * acted on until the cloud's anchor is known and this device's generation
   * is at least as new. `tag` is the MAC under the chip's key (the firmware
   * passes one from the key provider; without it, one from deviceBoxSecretKey,
   * which a factory reset replaces) and `resets` the chip's count of factory
   * resets (./provisioning; 0 without it).
   */
  anchor?: { publish: (topic: string, payload: Uint8Array) => void; tag?: RecordTag; resets?: number; onRetired?: (resets: number) => void };
  /** Where submitCommand runs a grant's verify and box.before (a worker). Without it they run in the call. */
  crypto?: HeavyCrypto;
  /** Commands per sender: a burst of `burst`, then one per `everyMs` (default 20, then one per 2 s). Revocations are never limited. */
  senderRate?: { burst: number; everyMs: number };
  /** Signed lists whose signature is verified (seconds each): a burst, then one per `everyMs` (default 6, then one per 10 min). */
  grantRate?: { burst: number; everyMs: number };
  /** Time between frames of a live session. Default 2000 ms. */
  streamIntervalMs?: number;
  /** Concurrent live sessions. Default 2 (camera and uplink are the limit). */
  maxSessions?: number;
  /** A live session wants a frame: capture, encrypt, publish. */
  onSessionFrame?: (session: LiveSession) => void;
  onSessionEnd?: (session: LiveSession, reason: SessionEndReason) => void;
}

interface Context {
  from: string | null;
  ctr: number | null;
  n: string | null;
  op: Op | null;
  replyKey: Uint8Array | null;
  /** For a replay refusal to an authenticated sender: the smallest counter that would be fresh. */
  next?: number;
  /** For a refusal because the cloud's anchor is newer: that generation. */
  anchor?: number;
}

export class AccessControl {
  readonly thing: string;
  readonly list: AccessList;
  readonly sessions: LiveSessions;
  readonly replay: ReplayGuard;
  #o: AccessControlOptions;
  /** Wall time never goes below this: the owner's authenticated commands vouch for it. */
  #timeFloor: number;
  #storedFloor: number;
  #bootMonotonic: number;
  #bootMarked = false;
  /** "off" without options.anchor; "unknown" until the shadow has answered since the link came up. */
  #anchorState: "off" | "unknown" | "known";
  /** The generation the cloud holds (0: none). */
  #cloudGen = 0;
  #anchorTag: RecordTag;
  #askedAt = -Infinity;
  /**
   * Set when the cloud's anchor was found ahead of this flash: until an
   * owner-signed list at least that new is applied, nothing here is trusted
   * (revocations still apply, but cannot lift it: their generations count
   * from the old state).
   */
  #behind: number | undefined;
  /** Set when the cloud's anchor was reported after more factory resets than this flash knows of: it is from before a reset. */
  #retired = false;
  #granting = false;
  #perSender: BucketsByKey;

  constructor(options: AccessControlOptions) {
    if (!isThingName(options.thing)) throw new TypeError("commands: bad thing name");
    this.#o = options;
    this.thing = options.thing;
    const grant = options.grantRate ?? { burst: 6, everyMs: 10 * 60_000 };
    const grants = new TokenBucket({ capacity: grant.burst, everyMs: grant.everyMs, clock: options.clock });
    const sender = options.senderRate ?? { burst: 20, everyMs: 2000 };
    this.#perSender = new BucketsByKey({ capacity: sender.burst, everyMs: sender.everyMs, clock: options.clock, maxKeys: 16 });
    this.list = new AccessList({
      thing: options.thing,
      secrets: options.secrets,
      deviceBoxSecretKey: options.deviceBoxSecretKey,
      owner: options.owner,
      sha512: options.sha512,
      verifySignature: options.verifySignature,
      mayVerify: () => grants.take(),
    });
    this.replay = new ReplayGuard();
    this.#anchorState = options.anchor ? "unknown" : "off";
    this.#anchorTag = options.anchor?.tag ?? keyedTag(ANCHOR_DOMAIN, options.deviceBoxSecretKey, options.sha512 ?? ((d) => nacl.hash(d)));
    this.#bootMonotonic = options.clock.monotonic();
    this.#storedFloor = this.#timeFloor = readTimeFloor(options.store);
    if (this.#storedFloor === 0 && options.store.read(REPLAY_KEY) !== undefined) options.log("warn", "commands: stored time floor unreadable; starting from none");
    this.#trustedNow();
    this.sessions = new LiveSessions({
      clock: options.clock,
      intervalMs: options.streamIntervalMs ?? 2000,
      max: options.maxSessions ?? 2,
      allowed: (user) => this.list.user(user) !== undefined,
      onFrame: options.onSessionFrame,
      onEnd: (s, reason) => {
        options.log("info", "live session ended", { session: s.id, user: s.user, reason, frames: s.frames });
        options.onSessionEnd?.(s, reason);
      },
    });
  }

  get generation(): number {
    return this.list.generation;
  }

  /** The generation anchored in the cloud, and whether it is known yet. */
  get anchor(): { state: "off" | "unknown" | "known"; gen: number; retired: boolean } {
    return { state: this.#anchorState, gen: this.#cloudGen, retired: this.#retired };
  }

  /** Topics the link must subscribe to for the anchor's answers. */
  get anchorSubscriptions(): string[] {
    return this.#o.anchor ? anchorSubscriptions(this.thing) : [];
  }

  /** Ask the cloud for its anchor: call whenever the link comes up. */
  requestAnchor(): void {
    const a = this.#o.anchor;
    if (!a) return;
    this.#askedAt = this.#o.clock.monotonic();
    try {
      a.publish(anchorTopics(this.thing).get, canonicalBytes({}));
    } catch (e) {
      this.#o.log("warn", "access anchor: could not ask", { reason: String((e as Error)?.message ?? e) });
    }
  }

  /** An answer from the shadow; false for a topic that is not one. */
  onAnchorMessage(topic: string, payload: Uint8Array): boolean {
    if (!this.#o.anchor) return false;
    const answer = readAnchorAnswer(this.thing, topic, payload, this.#anchorTag);
    if (!answer) return false;
    if (answer.kind === "error") {
      this.#o.log("warn", "access anchor: the cloud could not answer; commands wait", { code: answer.code });
      return true;
    }
    if (answer.kind === "none" && answer.forged) this.#o.log("warn", "access anchor: the cloud's anchor is not this device's; replacing it");
    const resets = this.#o.anchor.resets ?? 0;
    if (answer.kind === "anchor" && answer.resets > resets) {
      // Reported after a reset this flash has not seen: the whole flash is an older identity's. Nothing lifts that but a reset.
      this.#retired = true;
      this.#anchorState = "known";
      this.#o.log("error", "access anchor: this flash is from before a factory reset of this chip; acting on revocations only", { resets, anchored: answer.resets });
      this.#o.anchor.onRetired?.(answer.resets);
      return true;
    }
    // A lower count is a previous owner's anchor: as good as none, and replaced by this one's.
    if (answer.kind === "anchor" && answer.resets < resets) this.#o.log("info", "access anchor: the cloud's anchor is from before a factory reset; replacing it", { resets, anchored: answer.resets });
    this.#cloudGen = answer.kind === "anchor" && answer.resets === resets ? answer.gen : 0;
    this.#anchorState = "known";
    const gen = this.list.generation;
    if (this.#behind !== undefined && this.#cloudGen < this.#behind) this.#cloudGen = this.#behind;
    if (this.#cloudGen > gen || this.#behind !== undefined) {
      // The flash went back: act on nothing but revocations and a signed list at least this new.
      this.#behind = Math.max(this.#behind ?? 0, this.#cloudGen);
      this.#o.log("error", "access anchor: the cloud holds a newer access list than this flash; waiting for the owner's list", { gen, anchored: this.#cloudGen });
    } else this.#publishAnchor(this.#cloudGen === gen && answer.kind === "anchor" && answer.resets === resets);
    return true;
  }

  /** Report the generation in force, never one below what the cloud is known to hold. */
  #publishAnchor(already = false): void {
    const a = this.#o.anchor;
    const gen = this.list.generation;
    if (!a || this.#anchorState !== "known" || this.#behind !== undefined || this.#retired || already || gen < this.#cloudGen) return;
    try {
      a.publish(anchorTopics(this.thing).update, encodeAnchorUpdate(this.thing, gen, this.#anchorTag, a.resets ?? 0));
      this.#cloudGen = gen;
    } catch (e) {
      this.#o.log("warn", "access anchor: could not report", { reason: String((e as Error)?.message ?? e) });
    }
  }

  /** The owner-vouched time floor (ms since the epoch): the clock's judge (./time-check) refuses network time below it. */
  get timeFloor(): number {
    return this.#timeFloor;
  }

  /**
   * The wall time commands are judged by: the clock, never below the owner's
   * floor. The first time it is known in a boot it also fixes the boot mark:
   * the wall time this AccessControl was built at, by the monotonic clock.
   */
  #trustedNow(): number | undefined {
    const wall = this.#o.clock.wallTime();
    if (wall === undefined) return undefined;
    const now = Math.max(wall, this.#timeFloor);
    if (!this.#bootMarked) {
      this.#bootMarked = true;
      this.replay.setBootMark(Math.max(now - (this.#o.clock.monotonic() - this.#bootMonotonic), this.#timeFloor));
    }
    return now;
  }

  /** Stored with access changes only: a rare event that writes flash anyway. */
  #storeTimeFloor(): void {
    if (this.#timeFloor <= this.#storedFloor) return;
    try {
      this.#o.store.write(REPLAY_KEY, encodeJsonRecord(REPLAY_KIND, { floor: this.#timeFloor }));
      this.#storedFloor = this.#timeFloor;
    } catch {
      this.#o.log("warn", "commands: could not store the time floor");
    }
  }

  /** Wrap a snapshot's content key for everyone authorised now (see ./footage-keys). */
  wrapContentKey(contentKey: Uint8Array, context?: Uint8Array): ContentKeyWrapping {
    return wrapContentKey(contentKey, this.list, this.#o.random, context);
  }

  /** Check and run one command. Never throws; the reply says what happened. */
  handleCommand(payload: Uint8Array): CommandOutcome {
    const ctx: Context = { from: null, ctr: null, n: null, op: null, replyKey: null };
    try {
      return this.#handle(payload, ctx, false) as CommandOutcome;
    } catch (e) {
      return this.#failed(ctx, e);
    }
  }

  /**
   * handleCommand, with a grant's verify and key derivation on the crypto
   * worker. Everything else is decided, and in force, before this returns;
   * only the reply waits for the microtask. Never rejects.
   */
  async submitCommand(payload: Uint8Array): Promise<CommandOutcome> {
    const ctx: Context = { from: null, ctr: null, n: null, op: null, replyKey: null };
    try {
      return await this.#handle(payload, ctx, true);
    } catch (e) {
      return this.#failed(ctx, e);
    }
  }

  #failed(ctx: Context, e: unknown): CommandOutcome {
    if (e instanceof AccessRejection) return this.#refuse(ctx, e.reason, e.detail);
    this.#o.log("error", "command handler failed", { op: ctx.op });
    return this.#refuse(ctx, "internal", "unexpected error");
  }

  #handle(payload: Uint8Array, ctx: Context, deferred: boolean): CommandOutcome | Promise<CommandOutcome> {
    if (!(payload instanceof Uint8Array)) throw new AccessRejection("malformed", "payload must be bytes");
    if (payload.length > MAX_COMMAND_BYTES) throw new AccessRejection("malformed", "command too large");
    const outer = parseStrict(payload, OUTER_MAX_DEPTH, "envelope");
    if (!isRecord(outer) || Object.keys(outer).length !== 4 || outer.v !== COMMAND_VERSION || !isUserId(outer.from)
      || typeof outer.n !== "string" || outer.n.length !== 32 || typeof outer.box !== "string" || outer.box.length < 22) {
      throw new AccessRejection("malformed", "envelope must be {box,from,n,v}");
    }
    let nonce: Uint8Array, box: Uint8Array;
    try {
      nonce = fromBase64Url(outer.n);
      box = fromBase64Url(outer.box);
    } catch {
      throw new AccessRejection("malformed", "envelope bytes must be base64url");
    }
    const from = outer.from;
    ctx.from = from;
    ctx.n = outer.n;

    const user = this.list.user(from);
    if (!user) {
      if (this.list.isRevoked(from)) throw new AccessRejection("revoked", "sender was revoked");
      throw new AccessRejection("unknown-sender", "sender is not on the access list");
    }
    const keys = this.list.keysFor(from)!;
    const inner = nacl.secretbox.open(box, nonce, keys.command);
    if (!inner) throw new AccessRejection("bad-mac", "command does not authenticate");
    // From here the sender is proven, so replies are sealed for them.
    ctx.replyKey = keys.reply;

    const body = parseStrict(inner, INNER_MAX_DEPTH, "command");
    if (!isRecord(body) || typeof body.op !== "string" || !Object.prototype.hasOwnProperty.call(OP_ARGS, body.op)) {
      throw new AccessRejection("malformed", "unknown op");
    }
    const op = body.op as Op;
    const names = [...COMMON, ...OP_ARGS[op]];
    if (Object.keys(body).length !== names.length || !names.every((k) => Object.prototype.hasOwnProperty.call(body, k))) {
      throw new AccessRejection("malformed", "wrong members for op");
    }
    if (body.v !== COMMAND_VERSION || !isCount(body.ctr, 1) || !isCount(body.exp) || !isCount(body.gen, 1) || typeof body.thing !== "string") {
      throw new AccessRejection("malformed", "bad member types");
    }
    if (body.from !== from) throw new AccessRejection("malformed", "body sender differs from envelope");
    ctx.op = op;
    ctx.ctr = body.ctr;
    const args = parseArgs(op, body);

    if (body.thing !== this.thing) throw new AccessRejection("wrong-thing", "command is for another thing");
    // Taking rights away, or the owner's signed list, is always safe; anything else waits for the anchor.
    if (this.#retired && op !== "revoke" && op !== "revoke-all") {
      throw new AccessRejection("stale-generation", "this flash is from before a factory reset of this chip; only a factory reset brings it back");
    }
    if (!ANCHOR_FREE.has(op)) {
      if (this.#anchorState === "unknown") {
        // The answer may have been lost (asked before the subscription took): ask again, at most every few seconds.
        if (this.#o.clock.monotonic() - this.#askedAt >= ANCHOR_RETRY_MS) this.requestAnchor();
        throw new AccessRejection("busy", "waiting for the cloud's access anchor");
      }
      if (this.#behind !== undefined) {
        ctx.anchor = this.#behind;
        throw new AccessRejection("stale-generation", "the access list here is older than the one anchored in the cloud; the owner must send the list again");
      }
    }
    if (body.gen !== this.list.generation) {
      throw new AccessRejection("stale-generation", body.gen < this.list.generation ? "access list has changed since" : "device has not seen that generation");
    }
    const clockFree = CLOCK_FREE.has(op);
    const now = this.#trustedNow();
    if (!clockFree) {
      if (now === undefined) throw new AccessRejection("expired", "device has no trusted time yet");
      if (body.exp < now) throw new AccessRejection("expired", "command has expired");
      if (body.exp > now + MAX_COMMAND_LIFETIME_MS) throw new AccessRejection("malformed", "expiry too far ahead");
    }
    if (!this.replay.fresh(from, body.ctr, clockFree)) {
      ctx.next = this.replay.next(from);
      throw new AccessRejection("replay", body.ctr <= this.replay.highWater(from) ? "counter already used" : "counter is older than this boot");
    }
    if (!PERMISSIONS[op].includes(user.role)) throw new AccessRejection("forbidden", `a ${user.role} may not ${op}`);
    // Apps count in wall milliseconds; a counter further ahead than a command may live would hold its sender's mark out of reach.
    // Not for revocations: they must land even when the device clock is far behind the owner's.
    if (!clockFree && now !== undefined && body.ctr > now + MAX_COMMAND_LIFETIME_MS) throw new AccessRejection("malformed", "counter too far ahead");
    const offload = op === "access-update" && deferred ? this.#o.crypto : undefined;
    if (offload && this.#granting) throw new AccessRejection("busy", "another access list is being verified");
    // Taking rights away is never rate-limited; everything else is, per sender (signed lists also overall, in the list's own checks).
    if (op !== "revoke" && op !== "revoke-all" && !this.#perSender.take(from)) throw new AccessRejection("busy", "too many commands from this sender; try again shortly");

    this.replay.record(from, body.ctr, (id) => this.list.user(id) !== undefined);
    // The owner's clock vouches that real time is at least this; the window check above keeps it at or below ours.
    if (user.role === "owner" && !clockFree) this.#timeFloor = Math.max(this.#timeFloor, body.exp - MAX_COMMAND_LIFETIME_MS);
    if (offload) {
      this.#granting = true;
      return this.list.applySignedListAsync(args.list!, offload).then(
        (change) => {
          this.#granting = false;
          return this.#changed(ctx, () => change);
        },
        (e) => {
          this.#granting = false;
          this.#endSessionsOfUnlisted();
          throw e;
        },
      );
    }
    return this.#run(op, args, user.id, ctx);
  }

  #run(op: Op, args: Args, from: string, ctx: Context): CommandOutcome {
    switch (op) {
      case "snapshot":
        return this.#accept(ctx, {}, { type: "snapshot", user: from });
      case "chime-test":
        return this.#accept(ctx, {}, { type: "chime-test", user: from });
      case "stream-start": {
        const session = this.sessions.start(from, args.seconds!);
        return this.#accept(ctx, { session: session.id, seconds: args.seconds! }, { type: "stream-started", user: from, session });
      }
      case "stream-stop": {
        const n = this.sessions.endUsers([from], "stopped");
        return this.#accept(ctx, { stopped: n }, { type: "stream-stopped", user: from, sessions: n });
      }
      case "revoke":
        return this.#changed(ctx, () => this.list.revokeUser(args.user!));
      case "revoke-all":
        return this.#changed(ctx, () => this.list.revokeAllExceptOwner());
      case "access-update":
        return this.#changed(ctx, () => this.list.applySignedList(args.list!));
    }
  }

  #changed(ctx: Context, apply: () => AccessChange): CommandOutcome {
    let change: AccessChange;
    try {
      change = apply();
    } catch (e) {
      // A revocation that could not be stored is still in force in RAM: end its sessions too.
      this.#endSessionsOfUnlisted();
      throw e;
    }
    const ended = this.sessions.endUsers(change.removed, "revoked") + this.sessions.endUsers(change.rekeyed, "rekeyed");
    this.replay.prune((id) => this.list.user(id) !== undefined);
    this.#storeTimeFloor();
    // Only the owner's signed list, at least as new as the anchor, brings a device whose flash went back into service.
    if (this.#behind !== undefined && this.list.signedGeneration >= this.#behind && change.gen === this.list.signedGeneration) {
      this.#o.log("info", "access anchor: the owner's list is in force again", { gen: change.gen });
      this.#behind = undefined;
    }
    this.#publishAnchor();
    this.#o.log("info", "access list changed", { gen: change.gen, added: change.added.length, removed: change.removed.length, sessionsEnded: ended });
    const result: Json = { added: change.added, gen: change.gen, rekeyed: change.rekeyed, removed: change.removed };
    return this.#accept(ctx, result, { type: "access-changed", change, sessionsEnded: ended });
  }

  #endSessionsOfUnlisted(): void {
    const gone = this.sessions.active().map((s) => s.user).filter((u) => this.list.user(u) === undefined);
    this.sessions.endUsers(gone, "revoked");
  }

  #accept(ctx: Context, result: Json, action: CommandAction): CommandOutcome {
    this.#o.log("info", "command accepted", { from: ctx.from, op: ctx.op, ctr: ctx.ctr, gen: this.list.generation });
    const reply = this.#reply(ctx, { ok: true, result });
    return { ok: true, from: ctx.from, op: ctx.op, reply, action };
  }

  #refuse(ctx: Context, reason: ReasonCode, detail: string): CommandOutcome {
    this.#o.log("warn", "command refused", { reason, from: ctx.from, op: ctx.op });
    return { ok: false, reason, detail, from: ctx.from, op: ctx.op, reply: this.#reply(ctx, { ok: false, reason, detail }) };
  }

  #reply(ctx: Context, fields: { ok: boolean; reason?: ReasonCode; detail?: string; result?: Json }): Uint8Array {
    const clear: Record<string, Json> = {
      ctr: ctx.ctr, from: ctx.from, gen: this.list.generation, n: ctx.n, ok: fields.ok, op: ctx.op, thing: this.thing, v: COMMAND_VERSION,
    };
    if (fields.reason !== undefined) clear.reason = fields.reason;
    if (fields.detail !== undefined) clear.detail = fields.detail;
    if (fields.result !== undefined) clear.result = fields.result;
    if (!fields.ok && fields.reason === "replay" && ctx.next !== undefined) clear.next = ctx.next;
    if (!fields.ok && ctx.anchor !== undefined) clear.anchor = ctx.anchor;
    // The reply key of a sender revoked or re-keyed by this very command is already wiped (all zeros):
    // seal only under the key the sender still has on the device, else reply in the clear.
    const key = ctx.replyKey && ctx.from && this.list.keysFor(ctx.from)?.reply === ctx.replyKey ? ctx.replyKey : null;
    if (key) {
      try {
        const n = new Uint8Array(NONCE_BYTES);
        this.#o.random.fill(n);
        const box = nacl.secretbox(canonicalBytes(clear), n, key);
        return canonicalBytes({ ...clear, seal: { box: toBase64Url(box), n: toBase64Url(n) } });
      } catch {
        // An unsealed reply is still a reply.
      }
    }
    return canonicalBytes(clear);
  }
}

interface Args {
  seconds?: number;
  user?: string;
  list?: ReturnType<typeof signedListFromJson>;
}

function parseArgs(op: Op, body: Record<string, Json>): Args {
  switch (op) {
    case "stream-start":
      if (!isCount(body.seconds, 1) || body.seconds > MAX_STREAM_SECONDS) throw new AccessRejection("malformed", "seconds must be 1-600");
      return { seconds: body.seconds };
    case "revoke":
      if (!isUserId(body.user)) throw new AccessRejection("malformed", "bad user id");
      return { user: body.user };
    case "access-update":
      return { list: signedListFromJson(body.list) };
    default:
      return {};
  }
}

/** A reply as text, for logs. */
export function replyText(reply: Uint8Array): string {
  try {
    return utf8Decode(reply);
  } catch {
    return "<not utf-8>";
  }
}
