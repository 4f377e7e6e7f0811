/*
 * Snapshots: a JPEG on every ring, encrypted end to end, chunked for AWS IoT,
 * and bound to the ring by a signed event.
 *
 * press → ring event (already handed to the transport by Doorbell.emit) →
 * capture → wait for the ring's PUBACK → per chunk: AES-256-GCM seal (native
 * cipher port) → QoS 1 publish on doorward/<thing>/snapshots → after the last
 * chunk's PUBACK, a signed "snapshot" event {ring, id, size, chunks, chunkBytes,
 * digest, alg, wrap} on the events topic.
 *
 * Why this shape (docs/camera.md has the long form):
 * - The ring never waits: the snapshot starts after the ring was queued, and no
 *   chunk is published before the broker acknowledged the ring. A later ring
 *   queues behind at most `window` chunks, never behind a whole image.
 * - Memory: the frame stays where the camera put it (PSRAM on the device) and
 *   is only ever viewed, never copied; chunks are sealed one at a time, and
 *   with the default window of 1 the next chunk is made only after the broker
 *   acknowledged the previous one, so the pipeline holds the frame plus one
 *   chunk (plus, while sealing, the cipher's output before it is framed).
 * - The digest is SHA-256 over the chunk payloads exactly as published, in
 *   index order: the cloud, which has no content key, can check completeness
 *   and integrity before storing or forwarding anything, a plaintext hash
 *   would hand the cloud a fingerprint of the image, and it is computed as the
 *   chunks stream out. The plaintext is still bound: every chunk is GCM-
 *   authenticated under the content key, and the wrapped content keys travel
 *   inside the same signed event.
 * - Each chunk's AAD is its 24-byte header (magic, snapshot id, index, total)
 *   and its nonce is id[0..8) ‖ index, so a chunk cannot be moved to another
 *   index, another snapshot, or a snapshot of another length.
 */
import type { Aead, Camera, Clock, DigestStream, Log, Random, Sha256Factory } from "./ports";
export type { Aead, DigestStream, Sha256Factory } from "./ports";
import type { RingRecord, SentEvent } from "./doorbell";
import type { DoorEvent } from "./events";
import type { Json } from "./canonical";
import { fromBase64Url, toBase64Url, wipe } from "./bytes";
import { newContentKey, wrappingFromJson, wrappingToJson, type ContentKeyWrapping } from "./footage-keys";

// ---- ports this module needs (proposed for ports.ts) ----

/** What the pipeline needs to wrap a content key for the users authorised now (modules/core/footage-keys FootageKeys). */
export interface ContentKeyWrapper {
  wrapContentKey(contentKey: Uint8Array, context?: Uint8Array): ContentKeyWrapping;
}

/** What the pipeline needs from the Doorbell (which satisfies it as it is). */
export interface SnapshotHost {
  readonly thing: string;
  readonly topics: { readonly snapshots: string };
  emit(type: "snapshot", fields: Record<string, Json>): SentEvent;
  /** Like emit, but may wait for a nonce rather than take one a ring needs (the Doorbell's nonce reserve). */
  emitWhenReady?(type: "snapshot", fields: Record<string, Json>): Promise<SentEvent>;
  send(topic: string, payload: Uint8Array, seq: number): Promise<void>;
}

// ---- wire format ----

/** "DWS1": Doorward snapshot chunk, version 1. */
export const CHUNK_MAGIC = Uint8Array.of(0x44, 0x57, 0x53, 0x31);
export const SNAPSHOT_ID_BYTES = 16;
export const CHUNK_HEADER_BYTES = 24;
export const TAG_BYTES = 16;
export const NONCE_BYTES = 12;
export const CONTENT_KEY_BYTES = 32;
export const SNAPSHOT_ALGORITHM = "A256GCM";
/** AWS IoT Core's per-message limit; it cannot be raised. */
export const AWS_MESSAGE_LIMIT = 131072;
/** Largest plaintext per chunk. Half the AWS limit: leaves room for the frame, topic and MQTT header, and for a device's RAM. */
export const MAX_CHUNK_BYTES = 64 * 1024;
export const MIN_CHUNK_BYTES = 256;
export const DEFAULT_CHUNK_BYTES = 8 * 1024;
/** index and total are 16-bit. */
export const MAX_CHUNKS = 65535;
export const DEFAULT_MAX_IMAGE_BYTES = 1024 * 1024;

export interface ChunkHeader {
  id: Uint8Array;
  index: number;
  total: number;
}

export function encodeChunkHeader(id: Uint8Array, index: number, total: number, out = new Uint8Array(CHUNK_HEADER_BYTES)): Uint8Array {
  if (id.length !== SNAPSHOT_ID_BYTES) throw new TypeError("snapshot: id must be 16 bytes");
  if (!Number.isInteger(total) || total < 1 || total > MAX_CHUNKS) throw new RangeError("snapshot: bad chunk total");
  if (!Number.isInteger(index) || index < 0 || index >= total) throw new RangeError("snapshot: bad chunk index");
  out.set(CHUNK_MAGIC, 0);
  out.set(id, 4);
  out[20] = index >> 8;
  out[21] = index & 255;
  out[22] = total >> 8;
  out[23] = total & 255;
  return out;
}

export interface ParsedChunk extends ChunkHeader {
  /** The first 24 bytes: also the chunk's AAD. */
  header: Uint8Array;
  /** ciphertext ‖ tag. */
  sealed: Uint8Array;
}

/** Parse a chunk payload's framing; throws TypeError if it is not a well-formed chunk. Authenticates nothing. */
export function parseChunk(payload: Uint8Array): ParsedChunk {
  if (payload.length < CHUNK_HEADER_BYTES + TAG_BYTES + 1) throw new TypeError("snapshot chunk: too short");
  if (payload.length > AWS_MESSAGE_LIMIT) throw new TypeError("snapshot chunk: too long");
  for (let i = 0; i < 4; i++) if (payload[i] !== CHUNK_MAGIC[i]) throw new TypeError("snapshot chunk: bad magic");
  const index = (payload[20] << 8) | payload[21];
  const total = (payload[22] << 8) | payload[23];
  if (total < 1 || index >= total) throw new TypeError("snapshot chunk: bad index or total");
  return {
    id: payload.subarray(4, 20),
    index,
    total,
    header: payload.subarray(0, CHUNK_HEADER_BYTES),
    sealed: payload.subarray(CHUNK_HEADER_BYTES),
  };
}

/** id[0..8) ‖ u32be(index). The key is fresh per snapshot, so this never repeats under one key. */
export function chunkNonce(id: Uint8Array, index: number): Uint8Array {
  const nonce = new Uint8Array(NONCE_BYTES);
  nonce.set(id.subarray(0, 8), 0);
  nonce[8] = (index >>> 24) & 255;
  nonce[9] = (index >>> 16) & 255;
  nonce[10] = (index >>> 8) & 255;
  nonce[11] = index & 255;
  return nonce;
}

export function chunkCount(size: number, chunkBytes: number): number {
  return Math.ceil(size / chunkBytes);
}

/** Plaintext length of chunk `index`. */
export function chunkPlainLength(size: number, chunkBytes: number, index: number): number {
  return Math.min(chunkBytes, size - index * chunkBytes);
}

/** Checks a chunk size against the AWS limit for a given topic, so a misconfiguration fails at start-up, not at the broker. */
export function assertChunkBytes(chunkBytes: number, topic = ""): number {
  if (!Number.isInteger(chunkBytes) || chunkBytes < MIN_CHUNK_BYTES || chunkBytes > MAX_CHUNK_BYTES) {
    throw new RangeError(`snapshot: chunkBytes must be a whole number from ${MIN_CHUNK_BYTES} to ${MAX_CHUNK_BYTES}`);
  }
  // MQTT PUBLISH: fixed header ≤ 5, topic length 2 + topic, packet id 2.
  const message = 5 + 2 + topic.length * 3 + 2 + CHUNK_HEADER_BYTES + chunkBytes + TAG_BYTES;
  if (message > AWS_MESSAGE_LIMIT) throw new RangeError("snapshot: a chunk would exceed the 128 KB AWS IoT message limit");
  return chunkBytes;
}

// ---- sealing, one chunk at a time ----

export interface SealedChunk {
  index: number;
  payload: Uint8Array;
}

export interface SealerOptions {
  frame: Uint8Array;
  key: Uint8Array;
  id: Uint8Array;
  chunkBytes: number;
  cipher: Aead;
  sha256: Sha256Factory;
}

/**
 * Turns a frame into chunk payloads lazily. Synchronous and platform-free:
 * everything here is the JS part of the pipeline (framing, nonce, digest
 * bookkeeping); the cipher and digest are ports.
 */
export class SnapshotSealer {
  readonly id: Uint8Array;
  readonly size: number;
  readonly chunkBytes: number;
  readonly total: number;
  #frame: Uint8Array;
  #key: Uint8Array;
  #cipher: Aead;
  #digest: DigestStream;
  #next = 0;
  #result: Uint8Array | undefined;

  constructor(options: SealerOptions) {
    const { frame, key, id } = options;
    if (frame.length === 0) throw new RangeError("snapshot: empty frame");
    if (key.length !== CONTENT_KEY_BYTES) throw new TypeError("snapshot: content key must be 32 bytes");
    if (id.length !== SNAPSHOT_ID_BYTES) throw new TypeError("snapshot: id must be 16 bytes");
    this.chunkBytes = assertChunkBytes(options.chunkBytes);
    this.total = chunkCount(frame.length, this.chunkBytes);
    if (this.total > MAX_CHUNKS) throw new RangeError("snapshot: too many chunks");
    this.#frame = frame;
    this.#key = key;
    this.id = id;
    this.size = frame.length;
    this.#cipher = options.cipher;
    this.#digest = options.sha256();
  }

  get done(): boolean {
    return this.#next >= this.total;
  }

  /** Seal the next chunk; undefined once all are sealed. */
  next(): SealedChunk | undefined {
    if (this.done) return undefined;
    const index = this.#next++;
    const start = index * this.chunkBytes;
    const plain = this.#frame.subarray(start, Math.min(start + this.chunkBytes, this.size));
    const payload = new Uint8Array(CHUNK_HEADER_BYTES + plain.length + TAG_BYTES);
    const header = encodeChunkHeader(this.id, index, this.total, payload.subarray(0, CHUNK_HEADER_BYTES));
    const sealed = this.#cipher.seal(this.#key, chunkNonce(this.id, index), plain, header);
    if (sealed.length !== plain.length + TAG_BYTES) throw new Error("snapshot: cipher returned the wrong length");
    payload.set(sealed, CHUNK_HEADER_BYTES);
    this.#digest.update(payload);
    return { index, payload };
  }

  /** SHA-256 over every payload in index order. Only after the last chunk. */
  digest(): Uint8Array {
    if (!this.done) throw new Error("snapshot: digest before the last chunk");
    this.#result ??= this.#digest.digest();
    return this.#result;
  }
}

// ---- the signed manifest ("snapshot" event) ----

export interface SnapshotManifest {
  /** seq of the ring this snapshot belongs to. */
  ring: number;
  id: Uint8Array;
  /** JPEG bytes (plaintext). */
  size: number;
  chunks: number;
  chunkBytes: number;
  /** SHA-256 of the chunk payloads, in index order. */
  digest: Uint8Array;
  wrapping: ContentKeyWrapping;
}

const MANIFEST_MEMBERS = ["alg", "boot", "chunkBytes", "chunks", "digest", "id", "ring", "seq", "size", "thing", "time", "type", "v", "wrap"];

export function manifestFields(m: SnapshotManifest): Record<string, Json> {
  return {
    ring: m.ring,
    id: toBase64Url(m.id),
    size: m.size,
    chunks: m.chunks,
    chunkBytes: m.chunkBytes,
    digest: toBase64Url(m.digest),
    alg: SNAPSHOT_ALGORITHM,
    wrap: wrappingToJson(m.wrapping),
  };
}

function isCount(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

/** Strict reader of a (signature-checked) snapshot event; throws TypeError on anything else. */
export function parseSnapshotManifest(event: DoorEvent): SnapshotManifest {
  const bad = (why: string): never => {
    throw new TypeError(`snapshot manifest: ${why}`);
  };
  if (event.type !== "snapshot") bad("not a snapshot event");
  const names = Object.keys(event).sort();
  if (names.length !== MANIFEST_MEMBERS.length || names.some((n, i) => n !== MANIFEST_MEMBERS[i])) bad("unexpected members");
  if (event.alg !== SNAPSHOT_ALGORITHM) bad("unsupported algorithm");
  const { ring, size, chunks, chunkBytes } = event;
  if (!isCount(ring) || ring === 0 || ring >= event.seq) bad("ring must be an earlier sequence number");
  if (!isCount(size) || size === 0) bad("bad size");
  if (!isCount(chunkBytes) || chunkBytes < MIN_CHUNK_BYTES || chunkBytes > MAX_CHUNK_BYTES) bad("bad chunkBytes");
  if (!isCount(chunks) || chunks < 1 || chunks > MAX_CHUNKS || chunks !== chunkCount(size as number, chunkBytes as number)) bad("chunks does not match size");
  if (typeof event.id !== "string" || typeof event.digest !== "string") bad("id and digest must be strings");
  let id: Uint8Array, digest: Uint8Array;
  try {
    id = fromBase64Url(event.id as string);
    digest = fromBase64Url(event.digest as string);
  } catch {
    return bad("id or digest is not base64url");
  }
  if (id.length !== SNAPSHOT_ID_BYTES || digest.length !== 32) bad("bad id or digest length");
  const wrapping = wrappingFromJson(event.wrap);
  return { ring: ring as number, id, size: size as number, chunks: chunks as number, chunkBytes: chunkBytes as number, digest, wrapping };
}

// ---- the pipeline ----

export interface SnapshotterOptions {
  host: SnapshotHost;
  camera: Camera;
  cipher: Aead;
  sha256: Sha256Factory;
  keys: ContentKeyWrapper;
  random: Random;
  clock: Clock;
  log: Log;
  /** Plaintext bytes per chunk. Default 8 KB; at most 64 KB. */
  chunkBytes?: number;
  /** Chunks awaiting PUBACK at once. Default 1: the frame plus one chunk in RAM. More trades RAM for throughput. */
  window?: number;
  /** Frames larger than this are dropped. Default 1 MB. */
  maxImageBytes?: number;
  /** Give up on the snapshot if the ring is not acknowledged in this time. Default 30 s. */
  ringAckTimeoutMs?: number;
  /** Give up if the whole snapshot (capture to last PUBACK) takes longer. Default 120 s. */
  deadlineMs?: number;
  /** Observes each chunk as it is queued (tests, benchmarks). */
  onChunk?: (ring: number, index: number, total: number) => void;
  onOutcome?: (outcome: SnapshotOutcome) => void;
}

export type SnapshotFailure = "busy" | "camera-failed" | "bad-frame" | "ring-not-acked" | "deadline" | "event-failed" | "internal";

export interface SnapshotTimings {
  /** Clock.monotonic() at each step. */
  started: number;
  captured: number;
  ringAcked: number;
  lastChunkAcked: number;
}

export type SnapshotOutcome =
  | { ok: true; ring: number; id: string; size: number; chunks: number; event: SentEvent; timings: SnapshotTimings }
  | { ok: false; ring: number; reason: SnapshotFailure; detail: string };

const TIMED_OUT = Symbol("timed out");

export class Snapshotter {
  readonly chunkBytes: number;
  readonly window: number;
  readonly stats = { started: 0, published: 0, failed: 0, skipped: 0, chunks: 0 };
  #o: SnapshotterOptions;
  #busy = false;

  constructor(options: SnapshotterOptions) {
    this.#o = options;
    this.chunkBytes = assertChunkBytes(options.chunkBytes ?? DEFAULT_CHUNK_BYTES, options.host.topics.snapshots);
    const window = options.window ?? 1;
    if (!Number.isInteger(window) || window < 1 || window > 32) throw new RangeError("snapshot: window must be 1-32");
    this.window = window;
  }

  get busy(): boolean {
    return this.#busy;
  }

  /** Call from DoorbellOptions.onRing. Returns at once; the promise settles with the outcome and never rejects. */
  onRing(ring: RingRecord): Promise<SnapshotOutcome> {
    if (this.#busy) {
      this.stats.skipped++;
      return Promise.resolve(this.#finish({ ok: false, ring: ring.seq, reason: "busy", detail: "a snapshot is already in progress" }));
    }
    this.#busy = true;
    this.stats.started++;
    return this.#run(ring).then(
      (outcome) => this.#finish(outcome),
      (e) => this.#finish({ ok: false, ring: ring.seq, reason: "internal", detail: String((e as Error)?.message ?? e) }),
    );
  }

  #finish(outcome: SnapshotOutcome): SnapshotOutcome {
    if (outcome.ok || outcome.reason !== "busy") this.#busy = false;
    if (outcome.ok) {
      this.stats.published++;
      this.#o.log("info", "snapshot published", { ring: outcome.ring, id: outcome.id, size: outcome.size, chunks: outcome.chunks, seq: outcome.event.seq });
    } else {
      if (outcome.reason !== "busy") this.stats.failed++;
      this.#o.log(outcome.reason === "busy" ? "info" : "warn", "snapshot not published", { ring: outcome.ring, reason: outcome.reason, detail: outcome.detail });
    }
    this.#o.onOutcome?.(outcome);
    return outcome;
  }

  /** Resolves with the promise's value, or TIMED_OUT after ms; the timer is always cancelled. */
  #within<T>(promise: Promise<T>, ms: number): Promise<T | typeof TIMED_OUT> {
    return new Promise((resolve, reject) => {
      // Even at 0 ms the timer fires after pending promise jobs, so an already-settled promise wins.
      const cancel = this.#o.clock.schedule(() => resolve(TIMED_OUT), Math.max(0, ms));
      promise.then(
        (v) => { cancel(); resolve(v); },
        (e) => { cancel(); reject(e); },
      );
    });
  }

  async #run(ring: RingRecord): Promise<SnapshotOutcome> {
    const o = this.#o;
    const fail = (reason: SnapshotFailure, detail: string): SnapshotOutcome => ({ ok: false, ring: ring.seq, reason, detail });
    const started = o.clock.monotonic();
    const deadlineAt = started + (o.deadlineMs ?? 120_000);
    const left = () => deadlineAt - o.clock.monotonic();
    // The frame is taken now, while the ring is on its way; its PUBACK is awaited only before the first chunk.
    let frame: Uint8Array;
    try {
      const captured = await this.#within(o.camera.capture(), left());
      if (captured === TIMED_OUT) return fail("deadline", "camera did not deliver a frame in time");
      frame = captured;
    } catch (e) {
      return fail("camera-failed", String((e as Error)?.message ?? e));
    }
    let key: Uint8Array | undefined;
    try {
      const capturedAt = o.clock.monotonic();
      if (!(frame instanceof Uint8Array) || frame.length === 0) return fail("bad-frame", "empty frame");
      if (frame.length > (o.maxImageBytes ?? DEFAULT_MAX_IMAGE_BYTES)) return fail("bad-frame", `frame of ${frame.length} bytes is over the limit`);
      if (frame[0] !== 0xff || frame[1] !== 0xd8) return fail("bad-frame", "not a JPEG (no SOI marker)");
      const ringWait = Math.min(left(), started + (o.ringAckTimeoutMs ?? 30_000) - o.clock.monotonic());
      if ((await this.#within(ring.acked, ringWait)) === TIMED_OUT) return fail("ring-not-acked", "the ring was not acknowledged in time; snapshot dropped");
      const ringAckedAt = o.clock.monotonic();

      const id = new Uint8Array(SNAPSHOT_ID_BYTES);
      o.random.fill(id);
      key = newContentKey(o.random);
      // Wrapped before sealing so the key can be wiped as soon as the last chunk is sealed.
      const wrapping = o.keys.wrapContentKey(key, id);
      const sealer = new SnapshotSealer({ frame, key, id, chunkBytes: this.chunkBytes, cipher: o.cipher, sha256: o.sha256 });
      const topic = o.host.topics.snapshots;
      const inFlight: Promise<void>[] = [];
      while (!sealer.done) {
        if (inFlight.length >= this.window) {
          if ((await this.#within(inFlight.shift()!, left())) === TIMED_OUT) return fail("deadline", "chunks not acknowledged in time");
        }
        const chunk = sealer.next()!;
        inFlight.push(o.host.send(topic, chunk.payload, ring.seq));
        this.stats.chunks++;
        o.onChunk?.(ring.seq, chunk.index, sealer.total);
      }
      wipe(key);
      key = undefined;
      while (inFlight.length > 0) {
        if ((await this.#within(inFlight.shift()!, left())) === TIMED_OUT) return fail("deadline", "chunks not acknowledged in time");
      }
      const lastChunkAckedAt = o.clock.monotonic();
      o.camera.release?.();
      let event: SentEvent;
      try {
        const fields = manifestFields({
          ring: ring.seq, id, size: sealer.size, chunks: sealer.total, chunkBytes: this.chunkBytes, digest: sealer.digest(), wrapping,
        });
        event = o.host.emitWhenReady ? await o.host.emitWhenReady("snapshot", fields) : o.host.emit("snapshot", fields);
      } catch (e) {
        return fail("event-failed", String((e as Error)?.message ?? e));
      }
      return {
        ok: true, ring: ring.seq, id: toBase64Url(id), size: sealer.size, chunks: sealer.total, event,
        timings: { started, captured: capturedAt, ringAcked: ringAckedAt, lastChunkAcked: lastChunkAckedAt },
      };
    } finally {
      if (key) wipe(key);
      o.camera.release?.();
    }
  }
}

/**
 * Wire a camera into a doorbell. The Doorbell's onRing option is fixed at
 * construction, so pass the returned snapshotter's onRing there:
 *
 *   let camera: Snapshotter | undefined;
 *   const doorbell = new Doorbell({ ..., onRing: (ring) => { camera?.onRing(ring); } });
 *   camera = attachCamera(doorbell, { camera, cipher, sha256, keys, random, clock, log });
 */
export function attachCamera(doorbell: SnapshotHost, options: Omit<SnapshotterOptions, "host">): Snapshotter {
  return new Snapshotter({ ...options, host: doorbell });
}
