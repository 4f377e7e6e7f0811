/*
 * Reference snapshot consumer: what a viewer's app (or a backend holding a
 * viewer's key) does with a doorbell's snapshot chunks.
 *
 * Chunks arrive on doorward/<thing>/snapshots; the signed "snapshot" event
 * (the manifest) arrives on the events topic, already verified by the
 * CloudConsumer. The assembler keeps chunks per (thing, snapshot id) and,
 * once the manifest is in and every chunk present (or a grace period has
 * passed), checks, in this order: chunk totals and lengths against the signed
 * manifest, the SHA-256 over the payloads against the signed digest, that the
 * viewer is a recipient of the content key, and each chunk's GCM tag (AAD =
 * its header). Anything wrong is reported as a problem and no image is
 * produced; only a snapshot that passes everything yields JPEG bytes.
 *
 * Delivery is at least once (QoS 1): an identical duplicate is dropped and
 * counted; a duplicate with different bytes is a conflict, an error.
 * Out-of-order arrivals are counted and reassembled by index.
 *
 * State is bounded: at most maxPending snapshots, maxSnapshotBytes each;
 * chunks without a manifest expire after manifestTimeoutMs.
 */
import { waitForMatch } from "./wait-for";
import fs from "node:fs";
import path from "node:path";
import { performance } from "node:perf_hooks";
import type { MqttClient } from "mqtt";
import { connectService, type CloudConsumer, type CloudOptions } from "./cloud";
import { closeClient } from "./lib/broker";
import type { DoorEvent } from "../modules/core/events";
import type { Keyring } from "../modules/core/access";
import { bytesEqual, toBase64Url, wipe } from "../modules/core/bytes";
import { TOPIC_ROOT } from "../modules/core/topics";
import { unwrapContentKey } from "../modules/core/footage-keys";
import {
  chunkNonce, chunkPlainLength, parseChunk, parseSnapshotManifest, CHUNK_HEADER_BYTES, TAG_BYTES, type SnapshotManifest,
} from "../modules/core/snapshot";
import { hostAesGcm, hostSha256, type HostAead } from "../modules/host/cipher";
import { libraryEntry } from "./lib/cli";

export interface Viewer {
  /** Access-list user id. */
  user: string;
  /** The user's footage key (from X25519 with the device; see modules/core/access.ts). */
  footageKey: Uint8Array;
}

export type SnapshotProblemCode =
  | "no-manifest"
  | "bad-manifest"
  | "wrong-total"
  | "missing-chunks"
  | "conflicting-duplicate"
  | "wrong-length"
  | "digest-mismatch"
  | "not-a-recipient"
  | "chunk-auth-failed"
  | "not-jpeg"
  | "too-large"
  | "evicted";

export interface SnapshotProblem {
  code: SnapshotProblemCode;
  detail: string;
  /** Chunk indexes concerned, when the problem is about chunks. */
  indexes?: number[];
}

interface ResultBase {
  thing: string;
  /** base64url snapshot id. */
  id: string;
  /** seq of the ring, from the manifest (undefined without one). */
  ring: number | undefined;
  /** seq of the snapshot event. */
  seq: number | undefined;
  /** Identical redeliveries dropped. */
  duplicates: number;
  /** Chunks that arrived after a higher index. */
  outOfOrder: number;
  firstChunkAt: number | undefined;
  lastChunkAt: number | undefined;
  manifestAt: number | undefined;
  completedAt: number;
}
export type SnapshotResult =
  | (ResultBase & { ok: true; jpeg: Uint8Array; size: number; chunks: number; file?: string })
  | (ResultBase & { ok: false; problems: SnapshotProblem[] });

export interface AssemblerOptions {
  viewer: Viewer;
  /** Monotonic milliseconds. Default performance.now. */
  now?: () => number;
  /** How long to wait for missing chunks once the manifest is in. Default 5 s. */
  graceMs?: number;
  /** How long chunks wait for their manifest. Default 60 s. */
  manifestTimeoutMs?: number;
  maxPending?: number;
  maxSnapshotBytes?: number;
  aead?: HostAead;
  onResult?: (result: SnapshotResult) => void;
}

interface Pending {
  thing: string;
  id: string;
  chunks: Map<number, Uint8Array>;
  total: number | undefined;
  totals: Set<number>;
  conflicts: Set<number>;
  duplicates: number;
  outOfOrder: number;
  maxIndex: number;
  bytes: number;
  tooLarge: boolean;
  firstChunkAt: number | undefined;
  lastChunkAt: number | undefined;
  createdAt: number;
  manifest: { m: SnapshotManifest; seq: number; at: number } | undefined;
}

export class SnapshotAssembler {
  readonly stats = { chunks: 0, malformed: 0, late: 0, lateConflicts: 0, ok: 0, failed: 0 };
  #o: Required<Omit<AssemblerOptions, "onResult">> & Pick<AssemblerOptions, "onResult">;
  #pending = new Map<string, Pending>();
  /** Recently finished snapshots: late chunks for them are counted, not resurrected. Bounded. */
  #finished = new Map<string, Map<number, Uint8Array> | undefined>();

  constructor(options: AssemblerOptions) {
    this.#o = {
      viewer: options.viewer,
      now: options.now ?? (() => performance.now()),
      graceMs: options.graceMs ?? 5_000,
      manifestTimeoutMs: options.manifestTimeoutMs ?? 60_000,
      maxPending: options.maxPending ?? 16,
      maxSnapshotBytes: options.maxSnapshotBytes ?? 4 * 1024 * 1024,
      aead: options.aead ?? hostAesGcm,
      onResult: options.onResult,
    };
  }

  get pending(): number {
    return this.#pending.size;
  }

  #entry(thing: string, id: string): Pending | undefined {
    const key = `${thing}/${id}`;
    let p = this.#pending.get(key);
    if (p) return p;
    if (this.#finished.has(key)) return undefined;
    if (this.#pending.size >= this.#o.maxPending) {
      const oldest = this.#pending.values().next().value as Pending;
      this.#finish(oldest, [{ code: "evicted", detail: "too many snapshots in progress; the oldest was dropped" }]);
    }
    p = {
      thing, id, chunks: new Map(), total: undefined, totals: new Set(), conflicts: new Set(), duplicates: 0, outOfOrder: 0, maxIndex: -1,
      bytes: 0, tooLarge: false, firstChunkAt: undefined, lastChunkAt: undefined, createdAt: this.#o.now(), manifest: undefined,
    };
    this.#pending.set(key, p);
    return p;
  }

  /** A payload from doorward/<thing>/snapshots. */
  addChunk(thing: string, payload: Uint8Array): void {
    const at = this.#o.now();
    let chunk;
    try {
      chunk = parseChunk(payload);
    } catch {
      this.stats.malformed++;
      return;
    }
    this.stats.chunks++;
    const id = toBase64Url(chunk.id);
    const p = this.#entry(thing, id);
    if (!p) {
      // The snapshot is already finished: a late redelivery, or something worse.
      const done = this.#finished.get(`${thing}/${id}`);
      const earlier = done?.get(chunk.index);
      if (earlier && !bytesEqual(earlier, payload)) this.stats.lateConflicts++;
      else this.stats.late++;
      return;
    }
    p.firstChunkAt ??= at;
    p.lastChunkAt = at;
    p.totals.add(chunk.total);
    p.total ??= chunk.total;
    const earlier = p.chunks.get(chunk.index);
    if (earlier) {
      if (bytesEqual(earlier, payload)) p.duplicates++;
      else p.conflicts.add(chunk.index);
    } else {
      p.bytes += payload.length;
      if (p.bytes > this.#o.maxSnapshotBytes) {
        p.tooLarge = true;
        p.chunks.clear();
        return this.#finish(p, [{ code: "too-large", detail: `more than ${this.#o.maxSnapshotBytes} bytes of chunks` }]);
      }
      // Copied: the caller's buffer may be reused.
      p.chunks.set(chunk.index, payload.slice());
      if (chunk.index < p.maxIndex) p.outOfOrder++;
      p.maxIndex = Math.max(p.maxIndex, chunk.index);
    }
    this.#maybeComplete(p);
  }

  /** A snapshot event whose signature the caller has already verified. */
  addManifest(thing: string, event: DoorEvent): void {
    let m: SnapshotManifest;
    try {
      if (event.thing !== thing) throw new TypeError("event is for another thing");
      m = parseSnapshotManifest(event);
    } catch (e) {
      const id = typeof event.id === "string" ? event.id : "?";
      const result: SnapshotResult = {
        ok: false, thing, id, ring: undefined, seq: event.seq, duplicates: 0, outOfOrder: 0, firstChunkAt: undefined, lastChunkAt: undefined,
        manifestAt: this.#o.now(), completedAt: this.#o.now(), problems: [{ code: "bad-manifest", detail: (e as Error).message }],
      };
      this.#pending.delete(`${thing}/${id}`);
      this.#finished.set(`${thing}/${id}`, undefined);
      this.#emit(result);
      return;
    }
    const p = this.#entry(thing, toBase64Url(m.id));
    if (!p || p.manifest) return; // finished already, or a second manifest for one id (the verifier's replay check stops re-sent ones)
    p.manifest = { m, seq: event.seq, at: this.#o.now() };
    this.#maybeComplete(p);
  }

  /** Expire what has waited long enough. Call periodically. */
  tick(): void {
    const now = this.#o.now();
    for (const p of [...this.#pending.values()]) {
      if (p.manifest && now - p.manifest.at >= this.#o.graceMs) this.#complete(p);
      else if (!p.manifest && now - p.createdAt >= this.#o.manifestTimeoutMs) {
        this.#finish(p, [{ code: "no-manifest", detail: `no signed snapshot event within ${this.#o.manifestTimeoutMs} ms` }]);
      }
    }
  }

  #maybeComplete(p: Pending): void {
    if (!p.manifest) return;
    if (p.conflicts.size > 0 || p.totals.size > 1 || p.chunks.size >= p.manifest.m.chunks) this.#complete(p);
  }

  #complete(p: Pending): void {
    const m = p.manifest!.m;
    const problems: SnapshotProblem[] = [];
    if (p.totals.size > 1 || (p.total !== undefined && p.total !== m.chunks)) {
      problems.push({ code: "wrong-total", detail: `chunks say ${[...p.totals].join("/")} in all, the signed manifest says ${m.chunks}` });
    }
    if (p.conflicts.size > 0) {
      problems.push({ code: "conflicting-duplicate", detail: "a chunk arrived twice with different bytes", indexes: [...p.conflicts].sort((a, b) => a - b) });
    }
    const missing: number[] = [];
    for (let i = 0; i < m.chunks; i++) if (!p.chunks.has(i)) missing.push(i);
    if (missing.length > 0) problems.push({ code: "missing-chunks", detail: `${missing.length} of ${m.chunks} chunks never arrived`, indexes: missing });
    const wrongLength: number[] = [];
    for (const [index, payload] of p.chunks) {
      if (index >= m.chunks || payload.length !== CHUNK_HEADER_BYTES + chunkPlainLength(m.size, m.chunkBytes, index) + TAG_BYTES) wrongLength.push(index);
    }
    if (wrongLength.length > 0) problems.push({ code: "wrong-length", detail: "chunk lengths do not match the signed size", indexes: wrongLength.sort((a, b) => a - b) });
    if (problems.length === 0) {
      const digest = hostSha256();
      for (let i = 0; i < m.chunks; i++) digest.update(p.chunks.get(i)!);
      if (!bytesEqual(digest.digest(), m.digest)) problems.push({ code: "digest-mismatch", detail: "SHA-256 of the chunks differs from the signed digest" });
    }
    // Decrypt even after a digest mismatch: it tells which chunks were altered.
    const entry = m.wrapping.keys.find((k) => k.user === this.#o.viewer.user);
    const key = entry ? unwrapContentKey(entry, this.#o.viewer.footageKey, m.id) : undefined;
    let jpeg: Uint8Array | undefined;
    if (!key) {
      problems.push({ code: "not-a-recipient", detail: entry ? "the wrapped key does not open with this viewer's key" : `no content key wrapped for ${this.#o.viewer.user}` });
    } else {
      jpeg = new Uint8Array(m.size);
      const failed: number[] = [];
      for (const [index, payload] of [...p.chunks].sort((a, b) => a[0] - b[0])) {
        if (wrongLength.includes(index)) continue;
        const chunk = parseChunk(payload);
        const plain = this.#o.aead.open(key, chunkNonce(m.id, index), chunk.sealed, chunk.header);
        if (!plain || !bytesEqual(chunk.id, m.id)) failed.push(index);
        else jpeg.set(plain, index * m.chunkBytes);
      }
      wipe(key);
      if (failed.length > 0) problems.push({ code: "chunk-auth-failed", detail: "chunks fail AES-GCM authentication (tampered or moved)", indexes: failed });
    }
    if (problems.length === 0 && jpeg && !(jpeg[0] === 0xff && jpeg[1] === 0xd8)) problems.push({ code: "not-jpeg", detail: "decrypted bytes do not start with a JPEG SOI marker" });
    if (problems.length > 0 && jpeg) wipe(jpeg);
    this.#finish(p, problems, problems.length === 0 ? jpeg : undefined);
  }

  #finish(p: Pending, problems: SnapshotProblem[], jpeg?: Uint8Array): void {
    const key = `${p.thing}/${p.id}`;
    this.#pending.delete(key);
    this.#finished.set(key, p.chunks);
    while (this.#finished.size > 64) this.#finished.delete(this.#finished.keys().next().value as string);
    const base: ResultBase = {
      thing: p.thing, id: p.id, ring: p.manifest?.m.ring, seq: p.manifest?.seq, duplicates: p.duplicates, outOfOrder: p.outOfOrder,
      firstChunkAt: p.firstChunkAt, lastChunkAt: p.lastChunkAt, manifestAt: p.manifest?.at, completedAt: this.#o.now(),
    };
    if (jpeg && problems.length === 0) this.#emit({ ...base, ok: true, jpeg, size: jpeg.length, chunks: p.manifest!.m.chunks });
    else this.#emit({ ...base, ok: false, problems });
  }

  #emit(result: SnapshotResult): void {
    if (result.ok) this.stats.ok++;
    else this.stats.failed++;
    this.#o.onResult?.(result);
  }
}

// ---- on the wire ----

export interface SnapshotConsumerOptions extends Omit<AssemblerOptions, "onResult"> {
  /** Save each good JPEG under <outDir>/<thing>/ring-<seq>-<id>.jpg. */
  outDir?: string;
  /** How often pending snapshots are checked for expiry. Default 250 ms. */
  tickMs?: number;
}

export class SnapshotConsumer {
  readonly assembler: SnapshotAssembler;
  readonly results: SnapshotResult[] = [];
  /** Arrival of each chunk, for measurements. */
  readonly arrivals: Array<{ thing: string; at: number; bytes: number }> = [];
  #listeners = new Set<(r: SnapshotResult) => void>();
  #client: MqttClient | undefined;
  #timer: NodeJS.Timeout;
  #outDir: string | undefined;

  constructor(options: SnapshotConsumerOptions) {
    this.#outDir = options.outDir;
    this.assembler = new SnapshotAssembler({ ...options, onResult: (r) => this.#result(r) });
    this.#timer = setInterval(() => this.assembler.tick(), options.tickMs ?? 250);
    this.#timer.unref();
  }

  /** Feed verified snapshot events from a CloudConsumer. Returns a function that detaches. */
  attach(cloud: CloudConsumer): () => void {
    return cloud.onEvent((e) => {
      if (e.verdict.ok && e.verdict.event.type === "snapshot") this.assembler.addManifest(e.verdict.event.thing, e.verdict.event);
    });
  }

  /** Subscribe to every thing's snapshot chunks (service identity; use a client ID distinct from the CloudConsumer's). */
  async connect(options: CloudOptions): Promise<void> {
    this.#client = await connectService(options, `${TOPIC_ROOT}/+/snapshots`, (topic, payload) => {
      const levels = topic.split("/");
      if (levels.length !== 3 || levels[0] !== TOPIC_ROOT || levels[2] !== "snapshots") return;
      this.arrivals.push({ thing: levels[1], at: performance.now(), bytes: payload.length });
      if (this.arrivals.length > 4096) this.arrivals.splice(0, this.arrivals.length - 4096);
      this.assembler.addChunk(levels[1], payload);
    });
  }

  onResult(listener: (r: SnapshotResult) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  waitFor(predicate: (r: SnapshotResult) => boolean, timeoutMs = 10_000): Promise<SnapshotResult> {
    return waitForMatch(this.results, (l) => this.onResult(l), predicate, timeoutMs, "snapshot");
  }

  close(): Promise<void> {
    clearInterval(this.#timer);
    return this.#client ? closeClient(this.#client) : Promise.resolve();
  }

  #result(r: SnapshotResult): void {
    if (r.ok && this.#outDir) {
      const dir = path.join(this.#outDir, r.thing);
      fs.mkdirSync(dir, { recursive: true });
      const file = path.join(dir, `ring-${r.ring}-${r.id}.jpg`);
      fs.writeFileSync(`${file}.tmp`, r.jpeg);
      fs.renameSync(`${file}.tmp`, file);
      r.file = file;
    }
    this.results.push(r);
    if (this.results.length > 256) this.results.splice(0, this.results.length - 256);
    for (const l of [...this.#listeners]) l(r);
  }
}

/**
 * A one-user keyring for development, until the simulator runs the real
 * access list (modules/core/access.ts): the device wraps every content key for
 * this one viewer's footage key.
 */
export function singleViewerKeyring(viewer: Viewer, generation = 1): Keyring {
  return { generation, footageRecipients: () => [{ user: viewer.user, key: viewer.footageKey.slice() }] };
}

/**
 * Simulator hook: a SnapshotConsumer fed by the simulator's CloudConsumer and
 * its own MQTT subscription, saving good JPEGs under outDir (the simulator's
 * .doorward/snapshots) and saying one line per result.
 */
export async function attachSnapshotViewer(
  cloud: CloudConsumer,
  connect: CloudOptions,
  options: SnapshotConsumerOptions & { say?: (line: string) => void; pressedAt?: (ring: number) => number | undefined },
): Promise<SnapshotConsumer> {
  const consumer = new SnapshotConsumer(options);
  consumer.attach(cloud);
  await consumer.connect(connect);
  const say = options.say;
  if (say) {
    consumer.onResult((r) => {
      const t0 = r.ring === undefined ? undefined : options.pressedAt?.(r.ring);
      const after = t0 === undefined ? "" : ` ${(r.completedAt - t0).toFixed(1)} ms after the press`;
      if (r.ok) {
        const notes = [r.duplicates ? `${r.duplicates} duplicate chunk(s) dropped` : "", r.outOfOrder ? `${r.outOfOrder} out of order` : ""].filter(Boolean).join(", ");
        say(`cloud ✔ snapshot for event seq=${r.ring}: ${r.size} bytes in ${r.chunks} chunks, digest ✔ decrypted ✔${after}${notes ? ` (${notes})` : ""}${r.file ? ` → ${r.file}` : ""}`);
      } else {
        say(`cloud ✘ snapshot ${r.id} REJECTED: ${r.problems.map((p) => `${p.code}${p.indexes ? ` [${p.indexes.join(",")}]` : ""}`).join("; ")}`);
      }
    });
  }
  return consumer;
}

libraryEntry(import.meta.url, "snapshot-consumer", `tools/snapshot-consumer.ts is a library, not a command.

The reference snapshot consumer: it reassembles a doorbell's encrypted snapshot chunks,
checks them against the signed manifest event and decrypts the JPEG for a viewer.
npm start uses it (pictures land in .doorward/snapshots/), and so do the snapshot tests.`);
