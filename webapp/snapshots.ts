/*
 * Snapshot assembly in the browser: chunks from doorward/<thing>/snapshots and the
 * signed manifest (a verified "snapshot" event) in, a JPEG or a plain reason out.
 *
 * The same checks as the reference consumer (tools/snapshot-consumer.ts), with the
 * core's own chunk and manifest readers, but on WebCrypto, which is asynchronous:
 * chunk count and lengths against the signed manifest, SHA-256 over the payloads
 * against the signed digest, then whether this user is a recipient of the content
 * key (unwrapped by the user's app with the footage key it derived), then each
 * chunk's AES-GCM tag with its header as AAD. The content key is imported as a
 * non-extractable CryptoKey and the raw copy wiped at once.
 */
import { bytesEqual, toBase64Url, wipe } from "../modules/core/bytes";
import type { DoorEvent } from "../modules/core/events";
import { chunkNonce, chunkPlainLength, parseChunk, parseSnapshotManifest, CHUNK_HEADER_BYTES, TAG_BYTES, type SnapshotManifest } from "../modules/core/snapshot";
import type { ContentKeyWrapping } from "../modules/core/footage-keys";

export type SnapshotRefusal = "bad-manifest" | "missing-chunks" | "wrong-length" | "digest-mismatch" | "not-a-recipient" | "wrong-key" | "chunk-auth-failed" | "not-jpeg";

export type BrowserSnapshot =
  | { ok: true; id: string; ring: number; seq: number; gen: number; jpeg: Uint8Array }
  | { ok: false; id: string; ring: number | undefined; seq: number; gen: number | undefined; code: SnapshotRefusal; message: string };

export interface Unwrapper {
  readonly id: string;
  /** The content key, if a wrapped key for this user opens with this user's footage key. */
  unwrap(wrapping: ContentKeyWrapping, context?: Uint8Array): Uint8Array | undefined;
}

/** WebCrypto's types want an ArrayBuffer-backed view; every view here is one. */
const bytes = (u: Uint8Array) => u as Uint8Array<ArrayBuffer>;

interface Pending {
  chunks: Map<number, Uint8Array>;
  manifest?: { m: SnapshotManifest; seq: number };
  timer?: ReturnType<typeof setTimeout>;
  done: boolean;
}

const MAX_PENDING = 8;
const MAX_SNAPSHOT_BYTES = 4 * 1024 * 1024;

export class BrowserSnapshots {
  #pending = new Map<string, Pending>();
  #app: Unwrapper;
  #onResult: (r: BrowserSnapshot) => void;
  #graceMs: number;
  readonly stats = { malformed: 0, late: 0 };

  constructor(o: { app: Unwrapper; onResult: (r: BrowserSnapshot) => void; graceMs?: number }) {
    this.#app = o.app;
    this.#onResult = o.onResult;
    this.#graceMs = o.graceMs ?? 5000;
  }

  #entry(id: string): Pending {
    let p = this.#pending.get(id);
    if (!p) {
      if (this.#pending.size >= MAX_PENDING) {
        const oldest = this.#pending.keys().next().value as string;
        clearTimeout(this.#pending.get(oldest)?.timer);
        this.#pending.delete(oldest);
      }
      p = { chunks: new Map(), done: false };
      this.#pending.set(id, p);
    }
    return p;
  }

  addChunk(payload: Uint8Array): void {
    let chunk;
    try {
      chunk = parseChunk(payload);
    } catch {
      this.stats.malformed++;
      return;
    }
    const p = this.#entry(toBase64Url(chunk.id));
    if (p.done) {
      this.stats.late++;
      return;
    }
    let bytes = 0;
    for (const c of p.chunks.values()) bytes += c.length;
    if (bytes + payload.length > MAX_SNAPSHOT_BYTES) return;
    if (!p.chunks.has(chunk.index)) p.chunks.set(chunk.index, payload.slice());
    void this.#maybeComplete(p);
  }

  /** A "snapshot" event whose signature has been verified. */
  addManifest(event: DoorEvent): void {
    let m: SnapshotManifest;
    try {
      m = parseSnapshotManifest(event);
    } catch (e) {
      this.#onResult({ ok: false, id: String(event.id), ring: undefined, seq: event.seq, gen: undefined, code: "bad-manifest", message: `The snapshot's signed description is malformed: ${(e as Error).message}.` });
      return;
    }
    const p = this.#entry(toBase64Url(m.id));
    if (p.done || p.manifest) return;
    p.manifest = { m, seq: event.seq };
    p.timer = setTimeout(() => void this.#complete(p), this.#graceMs);
    void this.#maybeComplete(p);
  }

  async #maybeComplete(p: Pending): Promise<void> {
    if (p.manifest && !p.done && p.chunks.size >= p.manifest.m.chunks) await this.#complete(p);
  }

  async #complete(p: Pending): Promise<void> {
    if (p.done || !p.manifest) return;
    p.done = true;
    clearTimeout(p.timer);
    const { m, seq } = p.manifest;
    const id = toBase64Url(m.id);
    const base = { id, ring: m.ring, seq, gen: m.wrapping.gen };
    const fail = (code: SnapshotRefusal, message: string) => this.#onResult({ ok: false, ...base, code, message });
    try {
      const result = await this.#open(p, m);
      if ("code" in result) return fail(result.code, result.message);
      this.#onResult({ ok: true, ...base, jpeg: result.jpeg });
    } finally {
      p.chunks.clear();
    }
  }

  async #open(p: Pending, m: SnapshotManifest): Promise<{ jpeg: Uint8Array } | { code: SnapshotRefusal; message: string }> {
    const missing = [];
    for (let i = 0; i < m.chunks; i++) if (!p.chunks.has(i)) missing.push(i);
    if (missing.length) return { code: "missing-chunks", message: `${missing.length} of ${m.chunks} pieces of the snapshot never arrived.` };
    for (const [index, payload] of p.chunks) {
      if (index >= m.chunks || payload.length !== CHUNK_HEADER_BYTES + chunkPlainLength(m.size, m.chunkBytes, index) + TAG_BYTES) {
        return { code: "wrong-length", message: "The snapshot's pieces do not match the size the doorbell signed." };
      }
    }
    const all = new Uint8Array([...p.chunks.values()].reduce((n, c) => n + c.length, 0));
    let at = 0;
    for (let i = 0; i < m.chunks; i++) {
      all.set(p.chunks.get(i)!, at);
      at += p.chunks.get(i)!.length;
    }
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
    if (!bytesEqual(digest, m.digest)) return { code: "digest-mismatch", message: "The snapshot's pieces differ from what the doorbell signed: they were changed on the way." };
    const mine = m.wrapping.keys.some((k) => k.user === this.#app.id);
    if (!mine) {
      return {
        code: "not-a-recipient",
        message: `This snapshot was not shared with you: when it was taken (access list generation ${m.wrapping.gen}) "${this.#app.id}" was not on the doorbell's list.`,
      };
    }
    const raw = this.#app.unwrap(m.wrapping, m.id);
    if (!raw) {
      return { code: "wrong-key", message: `The doorbell wrapped this snapshot's key for "${this.#app.id}", but the keys in this browser do not open it (wrong key).` };
    }
    const key = await crypto.subtle.importKey("raw", bytes(raw), { name: "AES-GCM" }, false, ["decrypt"]);
    wipe(raw);
    const jpeg = new Uint8Array(m.size);
    for (let i = 0; i < m.chunks; i++) {
      const chunk = parseChunk(p.chunks.get(i)!);
      if (!bytesEqual(chunk.id, m.id)) return { code: "chunk-auth-failed", message: "A piece of another snapshot was mixed in." };
      try {
        const plain = await crypto.subtle.decrypt({ name: "AES-GCM", iv: bytes(chunkNonce(m.id, i)), additionalData: bytes(chunk.header), tagLength: 128 }, key, bytes(chunk.sealed));
        jpeg.set(new Uint8Array(plain), i * m.chunkBytes);
      } catch {
        return { code: "chunk-auth-failed", message: "A piece of the snapshot fails its authentication check (tampered or moved)." };
      }
    }
    if (!(jpeg[0] === 0xff && jpeg[1] === 0xd8)) return { code: "not-jpeg", message: "The decrypted snapshot is not a JPEG image." };
    return { jpeg };
  }
}
