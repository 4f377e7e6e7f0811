/*
 * The vault's on-flash record format: key names, sealed records, and the
 * authenticated headers that bind each record to its place.
 *
 * A stored value is [format] ‖ nonce(24) ‖ secretbox(plaintext). secretbox has
 * no associated data, so everything a record must be bound to (format version,
 * kind, secret name, write generation, slot, chunk index and count) sits at the
 * front of the plaintext, where the Poly1305 tag covers it; after decryption it
 * is compared with the key the record was read from. A record copied to another
 * name, slot or index therefore decrypts but is refused as misplaced, and one
 * from an older write of the same secret is refused by its generation.
 *
 * Key names fit the preference limit of 15 characters and never contain a
 * secret: "v.<name>" is a secret's head, "v<slot><index>.<name>" one of its
 * chunks, "v_meta" the vault's salt and key check, "v_wipe" a factory reset in
 * progress. Upper case is avoided so a case-insensitive file system cannot merge keys.
 */
import nacl from "tweetnacl";
import type { Random } from "./ports";
import { utf8Decode, utf8Encode } from "./bytes";

export const VAULT_FORMAT = 1;
/** Longest secret name: "v" + slot + index + "." + name must fit 15 characters. */
export const SECRET_NAME_MAX = 11;
/** Bytes of secret per record; with headers and the box a record stays under the 4000-byte value limit. */
export const CHUNK_BYTES = 3900;
/** Chunk indexes are one base-36 character. */
export const MAX_CHUNKS = 36;

export const META_KEY = "v_meta";
export const WIPE_KEY = "v_wipe";
export const NONCE_BYTES = 24;
export const GEN_BYTES = 8;
export const SALT_BYTES = 16;
export const CHECK_BYTES = 16;
const MAC_BYTES = 16;
const KIND_HEAD = 1;
const KIND_CHUNK = 2;
const INDEX_CHARS = "0123456789abcdefghijklmnopqrstuvwxyz";
const NAME = /^[a-z0-9][a-z0-9.-]{0,10}$/;

export type Slot = 0 | 1;

export function isSecretName(name: unknown): name is string {
  return typeof name === "string" && NAME.test(name);
}

export function headKey(name: string): string {
  return "v." + name;
}

export function chunkKey(name: string, slot: Slot, index: number): string {
  return "v" + slot + INDEX_CHARS[index] + "." + name;
}

export type ParsedKey =
  | { kind: "head"; name: string }
  | { kind: "chunk"; name: string; slot: Slot; index: number }
  | { kind: "meta" }
  | { kind: "wipe" };

/** Which vault record a store key names; undefined for keys the vault does not own. */
export function parseKey(key: string): ParsedKey | undefined {
  if (key === META_KEY) return { kind: "meta" };
  if (key === WIPE_KEY) return { kind: "wipe" };
  if (key.startsWith("v.")) {
    const name = key.slice(2);
    return isSecretName(name) ? { kind: "head", name } : undefined;
  }
  if (key.length >= 5 && key[0] === "v" && (key[1] === "0" || key[1] === "1") && key[3] === ".") {
    const index = INDEX_CHARS.indexOf(key[2]);
    const name = key.slice(4);
    if (index >= 0 && isSecretName(name)) return { kind: "chunk", name, slot: key[1] === "0" ? 0 : 1, index };
  }
  return undefined;
}

/** Why a record could not be used. The vault reports these by secret name. */
export type DamageReason =
  | "unreadable"
  | "truncated"
  | "unknown-format"
  | "authentication"
  | "misplaced"
  | "missing"
  | "missing-chunk"
  | "chunk-mismatch"
  | "wrong-key"
  | "no-metadata"
  | "no-key"
  | "stale";

export const DAMAGE_EXPLAINED: Readonly<Record<DamageReason, string>> = {
  unreadable: "the store could not read it",
  truncated: "it is too short to be a record (truncated)",
  "unknown-format": "it has an unknown format version",
  authentication: "authentication failed (changed, truncated, or written under another key)",
  misplaced: "it belongs to another secret or position (records were swapped or copied)",
  missing: "its record disappeared from the store",
  "missing-chunk": "one of its chunks is missing",
  "chunk-mismatch": "one of its chunks is not the one its head recorded (swapped, stale or resized)",
  "wrong-key": "the storage key does not match this vault (another key file or eFuse key)",
  "no-metadata": "the vault's salt record is missing or malformed",
  "no-key": "the storage key could not be obtained from the key provider",
  stale: "it is an older copy than the vault last wrote (written back from an old flash dump?)",
};

/** The meta record's format with a sealed index of every secret's live write. */
export const META_FORMAT_INDEXED = 2;
const KIND_INDEX = 3;

/**
 * The vault's index: a counter that every write moves on, and each live
 * secret's write generation (the counter at its last write, or the random
 * generation of a write from before the index). Sealed into the meta record.
 */
export interface VaultIndex {
  epoch: number;
  names: Map<string, Uint8Array>;
}

export function epochGen(epoch: number): Uint8Array {
  const gen = new Uint8Array(GEN_BYTES);
  let v = epoch;
  for (let i = GEN_BYTES - 1; i >= 0; i--) {
    gen[i] = v % 256;
    v = Math.floor(v / 256);
  }
  return gen;
}

export function encodeIndex(index: VaultIndex): Uint8Array {
  const out: number[] = [VAULT_FORMAT, KIND_INDEX, ...epochGen(index.epoch)];
  for (const name of [...index.names.keys()].sort()) {
    const bytes = utf8Encode(name);
    out.push(bytes.length, ...bytes, ...index.names.get(name)!);
  }
  return Uint8Array.from(out);
}

export function decodeIndex(plain: Uint8Array): VaultIndex | undefined {
  if (plain.length < 2 + GEN_BYTES || plain[0] !== VAULT_FORMAT || plain[1] !== KIND_INDEX) return undefined;
  let epoch = 0;
  for (let i = 0; i < GEN_BYTES; i++) epoch = epoch * 256 + plain[2 + i];
  if (!Number.isSafeInteger(epoch)) return undefined;
  const names = new Map<string, Uint8Array>();
  let at = 2 + GEN_BYTES;
  while (at < plain.length) {
    const n = plain[at];
    if (at + 1 + n + GEN_BYTES > plain.length) return undefined;
    let name: string;
    try {
      name = utf8Decode(plain.subarray(at + 1, at + 1 + n));
    } catch {
      return undefined;
    }
    if (!isSecretName(name)) return undefined;
    names.set(name, plain.slice(at + 1 + n, at + 1 + n + GEN_BYTES));
    at += 1 + n + GEN_BYTES;
  }
  return { epoch, names };
}

/** Seal a plaintext under the vault key with a fresh random nonce. Returns the stored value and its nonce. */
export function sealRecord(key: Uint8Array, random: Random, plain: Uint8Array): { value: Uint8Array; nonce: Uint8Array } {
  const nonce = new Uint8Array(NONCE_BYTES);
  random.fill(nonce);
  const box = nacl.secretbox(plain, nonce, key);
  const value = new Uint8Array(1 + NONCE_BYTES + box.length);
  value[0] = VAULT_FORMAT;
  value.set(nonce, 1);
  value.set(box, 1 + NONCE_BYTES);
  return { value, nonce };
}

/** Open a stored value; a reason instead of bytes when it is not an authentic record of this vault. */
export function openRecord(key: Uint8Array, value: Uint8Array): { plain: Uint8Array; nonce: Uint8Array } | DamageReason {
  if (value.length < 1 + NONCE_BYTES + MAC_BYTES) return "truncated";
  if (value[0] !== VAULT_FORMAT) return "unknown-format";
  const nonce = value.slice(1, 1 + NONCE_BYTES);
  const plain = nacl.secretbox.open(value.subarray(1 + NONCE_BYTES), nonce, key);
  if (!plain) return "authentication";
  return { plain, nonce };
}

export interface HeadHeader {
  name: string;
  gen: Uint8Array;
  slot: Slot;
  /** 0: the value follows inline; otherwise the number of chunks, whose nonces follow. */
  count: number;
  length: number;
}

export interface ChunkHeader {
  name: string;
  gen: Uint8Array;
  slot: Slot;
  index: number;
  count: number;
}

function prefix(kind: number, name: string, gen: Uint8Array, extra: number[]): number[] {
  const nameBytes = utf8Encode(name);
  const out = [VAULT_FORMAT, kind, nameBytes.length];
  for (let i = 0; i < nameBytes.length; i++) out.push(nameBytes[i]);
  for (let i = 0; i < GEN_BYTES; i++) out.push(gen[i]);
  for (const b of extra) out.push(b);
  return out;
}

export function encodeHead(h: HeadHeader, body: Uint8Array): Uint8Array {
  const len = h.length;
  const head = prefix(KIND_HEAD, h.name, h.gen, [h.slot, h.count, (len >>> 24) & 255, (len >>> 16) & 255, (len >>> 8) & 255, len & 255]);
  const out = new Uint8Array(head.length + body.length);
  out.set(head);
  out.set(body, head.length);
  return out;
}

export function encodeChunk(h: ChunkHeader, data: Uint8Array): Uint8Array {
  const head = prefix(KIND_CHUNK, h.name, h.gen, [h.slot, h.index, h.count]);
  const out = new Uint8Array(head.length + data.length);
  out.set(head);
  out.set(data, head.length);
  return out;
}

/** Common front of both kinds; undefined when malformed (which only a bug could produce, given the MAC passed). */
function readPrefix(plain: Uint8Array, kind: number): { name: string; gen: Uint8Array; at: number } | undefined {
  if (plain.length < 3 || plain[0] !== VAULT_FORMAT || plain[1] !== kind) return undefined;
  const nameEnd = 3 + plain[2];
  if (plain.length < nameEnd + GEN_BYTES) return undefined;
  let name: string;
  try {
    name = utf8Decode(plain.subarray(3, nameEnd));
  } catch {
    return undefined;
  }
  return { name, gen: plain.slice(nameEnd, nameEnd + GEN_BYTES), at: nameEnd + GEN_BYTES };
}

export function decodeHead(plain: Uint8Array): { header: HeadHeader; body: Uint8Array } | undefined {
  const p = readPrefix(plain, KIND_HEAD);
  if (!p || plain.length < p.at + 6) return undefined;
  const slot = plain[p.at];
  if (slot !== 0 && slot !== 1) return undefined;
  const count = plain[p.at + 1];
  const length = ((plain[p.at + 2] << 24) | (plain[p.at + 3] << 16) | (plain[p.at + 4] << 8) | plain[p.at + 5]) >>> 0;
  const body = plain.subarray(p.at + 6);
  if (count > MAX_CHUNKS) return undefined;
  if (count === 0 ? body.length !== length : body.length !== count * NONCE_BYTES) return undefined;
  return { header: { name: p.name, gen: p.gen, slot, count, length }, body };
}

export function decodeChunk(plain: Uint8Array): { header: ChunkHeader; data: Uint8Array } | undefined {
  const p = readPrefix(plain, KIND_CHUNK);
  if (!p || plain.length < p.at + 3) return undefined;
  const slot = plain[p.at];
  if (slot !== 0 && slot !== 1) return undefined;
  return { header: { name: p.name, gen: p.gen, slot, index: plain[p.at + 1], count: plain[p.at + 2] }, data: plain.subarray(p.at + 3) };
}
