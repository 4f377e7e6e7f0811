/*
 * The update agent's wire protocol: the AWS IoT Jobs and MQTT file-delivery
 * (streams) topics, job statuses and refusal reasons, the events the agent
 * emits, its options, the state it keeps in the KV store, and the small
 * parsers (base64 blocks, status-detail text) the messages need. No behaviour
 * lives here; ./update runs the jobs, ./update-stream downloads the image and
 * ./update-activation activates it and judges its health.
 */
import type { HeavyCrypto } from "./heavy-crypto";
import type { BootControl, Clock, DigestStream, KeyValueStore, Log, Sha256Factory, UpdateSink } from "./ports";
import type { Json } from "./canonical";
import type { RecordTag } from "./record";
import type { Ed25519Verify, FirmwareManifest, TrustedKeys } from "./release";
import { assertThingName } from "./topics";

export const FIRMWARE_OPERATION = "doorward.firmware";
export const KEYS_OPERATION = "doorward.release-keys";

/** KV keys (15 characters at most). */
export const UPDATE_KV = { state: "upd.state", floor: "upd.floor", done: "upd.done", keys: "upd.keys" } as const;

/** AWS IoT job IDs: [a-zA-Z0-9_-], 1-64. Checked before a job ID is put in a topic. */
export const JOB_ID = /^[a-zA-Z0-9_-]{1,64}$/;
/** AWS IoT stream IDs: [a-zA-Z0-9_-], 1-128. */
export const STREAM_ID = /^[a-zA-Z0-9_-]{1,128}$/;
/** Finished jobs remembered, to recognise a replayed one. */
export const DONE_KEEP = 8;

export type JobStatus = "IN_PROGRESS" | "SUCCEEDED" | "FAILED" | "REJECTED";

/** Why an update was refused (REJECTED): the image or job is not acceptable. */
export type RefusalReason =
  | "malformed-job"
  | "unsupported-operation"
  | "malformed-manifest"
  | "unsigned"
  | "unknown-key"
  | "bad-signature"
  | "wrong-board"
  | "downgrade"
  | "not-newer"
  | "base-too-old"
  | "too-large"
  | "truncated"
  | "size-mismatch"
  | "digest-mismatch"
  | "replayed-job"
  | "malformed-keys"
  | "unauthorized";

/** Why an acceptable update did not complete (FAILED). */
export type FailureReason =
  | "stream-timeout"
  | "stream-error"
  | "stream-changed"
  | "write-failed"
  | "activation-failed"
  | "interrupted"
  | "health-check-failed"
  | "rolled-back";

export type UpdateEvent =
  | { type: "job"; job: string; operation: string }
  | { type: "refused"; job: string; reason: RefusalReason; detail: string }
  | { type: "failed"; job: string; reason: FailureReason; detail: string }
  | { type: "progress"; job: string; bytes: number; size: number }
  | { type: "downloaded"; job: string; bytes: number; ms: number }
  | { type: "activating"; job: string; version: number }
  | { type: "trial"; job: string; version: number }
  | { type: "rolling-back"; job: string; version: number; why: string }
  | { type: "confirmed"; job: string; version: number }
  | { type: "keys"; job: string; serial: number };

export interface UpdateAgentOptions {
  thing: string;
  /** This build's board; a release for another board is refused. */
  board: string;
  /** Version of the running image (built in: mc/config on device, the booted image's header on host). */
  runningVersion: number;
  /** Release keys built into this image. A stored, signed key set with a higher serial replaces them. */
  releaseKeys: TrustedKeys;
  store: KeyValueStore;
  /**
   * MAC for the anti-rollback records (upd.floor, upd.keys), under a key that
   * is not in the store (the firmware derives it from the vault's key provider),
   * so those records cannot be forged by writing flash.
   */
  recordTag: RecordTag;
  sink: UpdateSink;
  boot: BootControl;
  clock: Clock;
  log: Log;
  /** SHA-256, incremental. Device: crypt Digest("SHA256"); host: node:crypto; fallback: createJsSha256. */
  createDigest: Sha256Factory;
  /** QoS 1 publish, resolved on PUBACK. Wiring: (topic, payload) => doorbell.send(topic, payload, 0). */
  publish: (topic: string, payload: Uint8Array) => Promise<void>;
  /** Local self-test of a trial image, after it has reached the cloud. Default: passes. */
  healthCheck?: () => boolean | Promise<boolean>;
  verify?: Ed25519Verify;
  /** Where a release manifest's verify runs (a worker), so the main machine keeps serving presses and revokes meanwhile. */
  crypto?: HeavyCrypto;
  /**
   * Signature checks a job may start (seconds of curve work each): a burst, then one per `everyMs`
   * (default 3, then one per 20 min). A job that finds none waits for the next; it is never refused for it.
   */
  verifyRate?: { burst: number; everyMs: number };
  /** Largest image the inactive slot holds. */
  maxImageBytes?: number;
  /** Stream block size, 256-65536 (base64 in JSON must stay under AWS's 128 KB message limit). Default 4096. */
  blockSize?: number;
  /** Blocks asked for per GetStream request (RAM: this × blockSize). Default 4. */
  blocksPerRequest?: number;
  /** Silence after an acknowledged request before asking again. Default 15 s. */
  requestTimeoutMs?: number;
  /** Consecutive unanswered requests before the job fails. Default 8. */
  maxRetries?: number;
  /** How long a trial image waits for the cloud to answer its status report. Default 5 min. */
  healthTimeoutMs?: number;
  /** Attempts at one job across power cuts before it is failed. Default 3. */
  maxAttempts?: number;
  /** Ask for the next job this often. Default 1 h; 0 only at start. */
  pollIntervalMs?: number;
  /** Delay between complete() and restart, so the status report can leave. Default 1 s. */
  restartDelayMs?: number;
  onEvent?: (event: UpdateEvent) => void;
}

export interface SavedState {
  phase: "downloading" | "activating" | "trial";
  job: string;
  version: number;
  attempts: number;
  failure?: string;
}

export interface DoneEntry {
  job: string;
  status: JobStatus;
  reason: string;
  /** The Jobs service answered the terminal report: a later delivery of this job is a replay. */
  settled: boolean;
}

export interface StreamRef {
  id: string;
  file: number;
  version: number | undefined;
}

export interface Active {
  job: string;
  phase: "verifying" | "downloading" | "activating" | "trial" | "keys";
  manifest?: FirmwareManifest;
  stream?: StreamRef;
  attempts: number;
  serial: number;
  next: number;
  total: number;
  bytes: number;
  windowEnd: number;
  pending: Map<number, Uint8Array>;
  digest?: DigestStream;
  opened: boolean;
  retries: number;
  cancelTimer?: () => void;
  quarter: number;
  startedAt: number;
}

export interface Answer {
  accepted: boolean;
  code?: string;
}

export function updateTopics(thing: string) {
  assertThingName(thing);
  const jobs = `$aws/things/${thing}/jobs`;
  const streams = `$aws/things/${thing}/streams`;
  return {
    notifyNext: `${jobs}/notify-next`,
    getNext: `${jobs}/$next/get`,
    update: (jobId: string) => `${jobs}/${jobId}/update`,
    streamGet: (streamId: string) => `${streams}/${streamId}/get/json`,
    /** What the Doorbell must subscribe to (five filters, well under AWS's 50 per connection). */
    subscriptions: [
      `${jobs}/notify-next`,
      `${jobs}/$next/get/+`,
      `${jobs}/+/update/+`,
      `${streams}/+/data/json`,
      `${streams}/+/rejected/json`,
    ],
  };
}

/** Topic filters for DoorbellOptions.subscriptions. */
export function updateSubscriptions(thing: string): string[] {
  return updateTopics(thing).subscriptions;
}

export function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const B64_INDEX = new Int16Array(128).fill(-1);
for (let i = 0; i < 64; i++) B64_INDEX[B64.charCodeAt(i)] = i;

/** RFC 4648 §4 base64 (the stream service's "p"), padding optional, anything else refused. */
export function fromBase64(text: string): Uint8Array {
  let end = text.length;
  if (end % 4 === 0 && end > 0 && text.charCodeAt(end - 1) === 61) end -= text.charCodeAt(end - 2) === 61 ? 2 : 1;
  if (end % 4 === 1) throw new TypeError("base64: bad length");
  const out = new Uint8Array(Math.floor((end * 3) / 4));
  let acc = 0, bits = 0, o = 0;
  for (let i = 0; i < end; i++) {
    const c = text.charCodeAt(i);
    const v = c < 128 ? B64_INDEX[c] : -1;
    if (v < 0) throw new TypeError("base64: bad character");
    acc = ((acc << 6) | v) & 0xffffff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (acc >> bits) & 255;
    }
  }
  return out;
}

/**
 * A peer's value as text for a log line or a refusal detail. String() itself can throw on a
 * parsed object ({"toString":1}), which would stop the handler before it refused anything.
 */
export function peerText(value: unknown): string {
  if (typeof value === "string") return value;
  if (value === null || typeof value !== "object") return String(value);
  try {
    return JSON.stringify(value).slice(0, 64);
  } catch {
    return "(unprintable)";
  }
}

/** statusDetails values must be 1-1024 printable characters (AWS). */
export function detailText(text: string): string {
  // A detail may quote a peer's string: controls and lone surrogates must not stop the report being encoded.
  let clean = "";
  for (let i = 0; i < text.length && clean.length < 256; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x20 || c === 0x7f) clean += " ";
    else if (c >= 0xd800 && c <= 0xdbff) {
      const d = text.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        clean += text[i] + text[i + 1];
        i++;
      } else clean += "\ufffd";
    } else if (c >= 0xdc00 && c <= 0xdfff) clean += "\ufffd";
    else clean += text[i];
  }
  return clean.length ? clean : "-";
}

/** Job documents and stream replies nest a few levels; anything deeper is hostile and never reaches JSON.parse. */
export const MAX_MESSAGE_DEPTH = 16;


export type UpdateTopics = ReturnType<typeof updateTopics>;

export interface UpdateStats {
  requests: number;
  blocks: number;
  bytes: number;
  retries: number;
  verifies: number;
}

/** What the download and activation steps may use of the agent that runs the job. */
export interface UpdateContext {
  readonly o: UpdateAgentOptions;
  readonly topics: UpdateTopics;
  readonly stats: UpdateStats;
  readonly blockSize: number;
  /** The job in hand, if any. */
  active(): Active | undefined;
  setActive(a: Active | undefined): void;
  stopped(): boolean;
  /** Store the raised floor (an authenticated record), then use it. Throws if it cannot be stored. */
  setFloor(version: number): void;
  token(prefix: string): string;
  report(job: string, status: JobStatus, details: Record<string, string>): string;
  answer(token: string, timeoutMs: number): Promise<Answer | undefined>;
  emit(event: UpdateEvent): void;
  refuse(job: string, reason: RefusalReason, detail: string, extra?: Record<string, string>): void;
  fail(job: string, reason: FailureReason, detail: string, extra?: Record<string, string>): void;
  finish(job: string, status: JobStatus, reason: string, detail: string, extra?: Record<string, string>): void;
  guard(fn: () => void): void;
  safe(what: string, fn: () => void): void;
  saveState(s: SavedState): void;
  write(key: string, value: Json): void;
}

export function newActive(job: string, phase: Active["phase"], attempts: number): Active {
  return { job, phase, attempts, serial: 0, next: 0, total: 0, bytes: 0, windowEnd: 0, pending: new Map(), opened: false, retries: 0, quarter: 0, startedAt: 0 };
}
