/*
 * Self-checking records: the one frame for every value the firmware keeps in flash
 * outside the vault (outbox entries, the drop ledger, the sequence and boot marks,
 * the replay marks, update bookkeeping).
 *
 * The store promises atomic writes, not eternal bits: a value can come back short,
 * bit-flipped, from another record, or from something that was never ours. So every
 * value says what it is and checks itself, and a reader can tell "missing" from
 * "damaged" from "intact", and, for a damaged one, what it most likely was:
 *
 *   0      0xDB (magic)
 *   1      format: 1 = CRC-32 check, 2 = keyed tag (16 bytes, from a caller's MAC)
 *   2      kind length k (1..16)
 *   3..    kind, ASCII (what the record is: "ob", "ob-ledger", "seq", ...)
 *   3+k    body length, u32 big-endian
 *   7+k    body
 *   end    check over every byte before it: CRC-32 (4 bytes) or the tag (16 bytes)
 *
 * CRC-32 catches every burst error up to 32 bits and all odd bit counts, which is
 * the damage flash does; it is not a defence against someone who can write flash.
 * Records that must resist that pass a `tag` (a MAC under a device secret) instead.
 * The body is the caller's; JSON bodies use canonical encoding (./canonical).
 */
import type { KeyValueStore } from "./ports";
import { canonicalBytes, jsonNestsDeeper, parseCanonical, type Json } from "./canonical";
import { readU32, utf8Decode, writeU32 } from "./bytes";

export const RECORD_MAGIC = 0xdb;
const FORMAT_CRC = 1;
const FORMAT_TAG = 2;
const TAG_BYTES = 16;
const CRC_BYTES = 4;
const MAX_KIND = 16;
const KIND_SHAPE = /^[\x21-\x7e]{1,16}$/;

/** A MAC over the framed bytes (at least 16 bytes; the first 16 are kept). */
export type RecordTag = (framed: Uint8Array) => Uint8Array;

export interface RecordOptions {
  /** Authenticate instead of merely check: the record then carries a 16-byte tag from this MAC. */
  tag?: RecordTag;
}

export type RecordRead =
  | { state: "ok"; body: Uint8Array }
  | { state: "missing" }
  /** `kind` is the kind the frame names when its header is still legible (it may itself be damaged). */
  | { state: "damaged"; reason: string; kind?: string };

/** Bytes a record of this kind adds around its body. */
export function recordOverhead(kind: string, options: RecordOptions = {}): number {
  return 7 + kind.length + (options.tag ? TAG_BYTES : CRC_BYTES);
}

export function encodeRecord(kind: string, body: Uint8Array, options: RecordOptions = {}): Uint8Array {
  if (!KIND_SHAPE.test(kind)) throw new RangeError("record: kind must be 1-16 printable ASCII characters");
  const k = kind.length;
  const checkBytes = options.tag ? TAG_BYTES : CRC_BYTES;
  const out = new Uint8Array(7 + k + body.length + checkBytes);
  out[0] = RECORD_MAGIC;
  out[1] = options.tag ? FORMAT_TAG : FORMAT_CRC;
  out[2] = k;
  for (let i = 0; i < k; i++) out[3 + i] = kind.charCodeAt(i);
  writeU32(out, 3 + k, body.length);
  out.set(body, 7 + k);
  const end = 7 + k + body.length;
  if (options.tag) {
    const tag = options.tag(out.subarray(0, end));
    if (tag.length < TAG_BYTES) throw new RangeError("record: tag shorter than 16 bytes");
    out.set(tag.subarray(0, TAG_BYTES), end);
  } else writeU32(out, end, crc32(out.subarray(0, end)));
  return out;
}

/** Check a stored value against the kind the reader expects. */
export function decodeRecord(raw: Uint8Array | undefined, kind: string, options: RecordOptions = {}): RecordRead {
  if (raw === undefined) return { state: "missing" };
  const named = frameKind(raw);
  const damaged = (reason: string): RecordRead => (named === undefined ? { state: "damaged", reason } : { state: "damaged", reason, kind: named });
  if (raw.length < 8 || raw[0] !== RECORD_MAGIC) return damaged(raw.length < 8 ? `short (${raw.length} bytes)` : "not a record");
  const format = raw[1];
  if (format !== FORMAT_CRC && format !== FORMAT_TAG) return damaged(`unknown format ${format}`);
  if ((format === FORMAT_TAG) !== !!options.tag) return damaged(options.tag ? "not authenticated" : "authenticated record read without its key");
  const k = raw[2];
  const checkBytes = format === FORMAT_TAG ? TAG_BYTES : CRC_BYTES;
  if (k < 1 || k > MAX_KIND || raw.length < 7 + k + checkBytes) return damaged("bad header");
  const length = readU32(raw, 3 + k);
  const end = 7 + k + length;
  if (end + checkBytes !== raw.length) return damaged(`length ${length} does not match ${raw.length} stored bytes`);
  if (format === FORMAT_TAG) {
    const tag = options.tag!(raw.subarray(0, end));
    let diff = tag.length < TAG_BYTES ? 1 : 0;
    for (let i = 0; i < TAG_BYTES; i++) diff |= (tag[i] ?? 0) ^ raw[end + i];
    if (diff !== 0) return damaged("tag mismatch");
  } else if (readU32(raw, end) !== crc32(raw.subarray(0, end))) return damaged("checksum mismatch");
  if (named !== kind) return damaged(`holds a "${named ?? "?"}" record, not "${kind}"`);
  return { state: "ok", body: raw.subarray(7 + k, end) };
}

/** Read and check one key; a store that throws on the read (a foreign value, a directory) reads as damaged. */
export function readRecord(store: KeyValueStore, key: string, kind: string, options: RecordOptions = {}): RecordRead {
  let raw: Uint8Array | undefined;
  try {
    raw = store.read(key);
  } catch (e) {
    return { state: "damaged", reason: `unreadable: ${String((e as Error)?.message ?? e)}` };
  }
  return decodeRecord(raw, kind, options);
}

export function encodeJsonRecord(kind: string, value: Json, options: RecordOptions = {}): Uint8Array {
  return encodeRecord(kind, canonicalBytes(value), options);
}

export type JsonRecordRead = { state: "ok"; value: Json } | { state: "missing" } | { state: "damaged"; reason: string; kind?: string };

/** A framed canonical-JSON record: intact frame, then a bounded, shallow parse. */
export function readJsonRecord(store: KeyValueStore, key: string, kind: string, options: RecordOptions & { maxDepth?: number } = {}): JsonRecordRead {
  const read = readRecord(store, key, kind, options);
  if (read.state !== "ok") return read;
  if (jsonNestsDeeper(read.body, options.maxDepth ?? 4)) return { state: "damaged", reason: "nested too deeply" };
  try {
    return { state: "ok", value: parseCanonical(read.body, read.body.length) };
  } catch (e) {
    return { state: "damaged", reason: `body: ${String((e as Error)?.message ?? e)}` };
  }
}

/** The kind a frame names, if its header is legible (ASCII, in bounds). */
function frameKind(raw: Uint8Array): string | undefined {
  if (raw.length < 4 || raw[0] !== RECORD_MAGIC) return undefined;
  const k = raw[2];
  if (k < 1 || k > MAX_KIND || raw.length < 3 + k) return undefined;
  const text = utf8DecodeAscii(raw.subarray(3, 3 + k));
  return text !== undefined && KIND_SHAPE.test(text) ? text : undefined;
}

function utf8DecodeAscii(bytes: Uint8Array): string | undefined {
  for (const b of bytes) if (b < 0x21 || b > 0x7e) return undefined;
  return utf8Decode(bytes);
}

// ---------------------------------------------------------------- CRC-32 (IEEE 802.3, reflected, as zlib)

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

export function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}


// ---------------------------------------------------------------- keyed tags

const HMAC_BLOCK = 128;

/**
 * HMAC-SHA-512 (RFC 2104) under a key derived for one purpose from a device
 * secret: SHA-512(domain ‖ 0 ‖ secret). The records it tags then cannot be
 * forged by someone who can only write flash.
 */
export function keyedTag(domain: string, secret: Uint8Array, sha512: (data: Uint8Array) => Uint8Array): RecordTag {
  const label = new Uint8Array(domain.length + 1);
  for (let i = 0; i < domain.length; i++) label[i] = domain.charCodeAt(i) & 0x7f;
  const seed = new Uint8Array(label.length + secret.length);
  seed.set(label);
  seed.set(secret, label.length);
  const key = sha512(seed);
  seed.fill(0);
  const inner = new Uint8Array(HMAC_BLOCK);
  const outer = new Uint8Array(HMAC_BLOCK + 64);
  for (let i = 0; i < HMAC_BLOCK; i++) {
    const k = i < key.length ? key[i] : 0;
    inner[i] = k ^ 0x36;
    outer[i] = k ^ 0x5c;
  }
  key.fill(0);
  return (framed) => {
    const first = new Uint8Array(HMAC_BLOCK + framed.length);
    first.set(inner);
    first.set(framed, HMAC_BLOCK);
    outer.set(sha512(first), HMAC_BLOCK);
    return sha512(outer).slice(0, 16);
  };
}
