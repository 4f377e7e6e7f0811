/*
 * Release manifests and release keys: what a firmware update is, and who may make one.
 *
 * A release is an image plus a small manifest {v, kind, board, version, label,
 * minVersion, size, sha256, keyId}, signed with Ed25519 by an offline release
 * key over "doorward/release/v1\n" ‖ canonical JSON of the manifest (./canonical),
 * the same domain-separated pattern as events (docs/protocol.md §4), so no
 * Doorward signature of one kind can pass for another. The signature covers the
 * canonical form, not the bytes that arrived, so an AWS Jobs document that
 * re-serialises the manifest with other whitespace or member order still verifies.
 *
 * `version` is a plain integer that every release increases; `label` is the
 * human semver, signed but never compared. `minVersion` is the lowest running
 * version allowed to install the image (a migration gate); the anti-rollback
 * floor itself lives on the device (./update).
 *
 * Release keys rotate through a signed key set {serial, keys}: it must carry a
 * signature by a key the device already trusts (authority) and one by every key
 * it lists (possession, so a typo cannot brick a fleet). tools/release.ts
 * produces both documents; the device checks them in ./update. This module is
 * shared by both and is platform-free; it also holds the incremental digest
 * interface the update path hashes with, and a pure-JS SHA-256 fallback for
 * engines without a native one (the XS harness).
 */
import type { DigestStream } from "./ports";
import nacl from "tweetnacl";
import { canonicalBytes, type Json } from "./canonical";
import { concatBytes, fromBase64Url, fromHex, toBase64Url, toHex, utf8Encode } from "./bytes";

export const MANIFEST_FORMAT = 1;
/** Prefix of every release-manifest signature. */
export const MANIFEST_DOMAIN = "doorward/release/v1\n";
/** Prefix of every key-set signature. */
export const KEYSET_DOMAIN = "doorward/release-keys/v1\n";
const KEY_ID_DOMAIN = "doorward/release-key-id/v1\n";
/** At most this many release keys are trusted at once (old + new during a rotation, plus spares). */
export const MAX_RELEASE_KEYS = 4;

/** Board names as Moddable spells targets ("esp32/xiao_esp32s3_sense") plus "host/sim". */
const BOARD = /^[a-z0-9][a-z0-9_./-]{0,63}$/;
const LABEL = /^[0-9A-Za-z.+-]{1,32}$/;
const HEX64 = /^[0-9a-f]{64}$/;
const KEY_ID = /^[0-9a-f]{16}$/;

export interface FirmwareManifest {
  v: number;
  kind: "firmware";
  board: string;
  /** Monotonic release number; the device accepts only one above its stored floor. */
  version: number;
  /** Human-readable version (semver); signed, never compared. */
  label: string;
  /** The device must be running at least this version to install the image (0: any). */
  minVersion: number;
  size: number;
  /** SHA-256 of the image, lowercase hex. */
  sha256: string;
  /** releaseKeyId() of the key that signed this manifest. */
  keyId: string;
}

/** The manifest file tools/release.ts writes, and what a job document carries. */
export interface SignedRelease {
  manifest: FirmwareManifest;
  /** base64url Ed25519 signature over manifestMessage(manifest). */
  sig: string;
}

export type Ed25519Verify = (message: Uint8Array, signature: Uint8Array, publicKey: Uint8Array) => boolean;
export const naclVerify: Ed25519Verify = (message, signature, publicKey) => nacl.sign.detached.verify(message, signature, publicKey);

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isCount(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

/** 16 hex digits naming a release key; domain-separated so it is never confused with another hash of the key. */
export function releaseKeyId(publicKey: Uint8Array): string {
  if (publicKey.length !== 32) throw new TypeError("release key must be 32 bytes");
  return toHex(nacl.hash(concatBytes(utf8Encode(KEY_ID_DOMAIN), publicKey)).subarray(0, 8));
}

/** Why a value is not a well-formed manifest, or undefined if it is one. */
export function manifestProblem(m: unknown): string | undefined {
  if (!isRecord(m)) return "manifest is not an object";
  const names = Object.keys(m).sort().join(",");
  if (names !== "board,keyId,kind,label,minVersion,sha256,size,v,version") return `manifest members are {${names}}`;
  if (m.v !== MANIFEST_FORMAT) return "unsupported manifest format";
  if (m.kind !== "firmware") return "not a firmware manifest";
  if (typeof m.board !== "string" || !BOARD.test(m.board)) return "bad board";
  if (!isCount(m.version) || m.version === 0) return "bad version";
  if (typeof m.label !== "string" || !LABEL.test(m.label)) return "bad label";
  if (!isCount(m.minVersion)) return "bad minVersion";
  if (!isCount(m.size) || m.size === 0) return "bad size";
  if (typeof m.sha256 !== "string" || !HEX64.test(m.sha256)) return "bad sha256";
  if (typeof m.keyId !== "string" || !KEY_ID.test(m.keyId)) return "bad keyId";
  return undefined;
}

/** The exact bytes a release signature covers. */
export function manifestMessage(manifest: FirmwareManifest): Uint8Array {
  return concatBytes(utf8Encode(MANIFEST_DOMAIN), canonicalBytes(manifest as unknown as Json));
}

/** Sign a manifest (tools only: the secret key never reaches a device). secretKey is tweetnacl's 64-byte form. */
export function signRelease(manifest: FirmwareManifest, secretKey: Uint8Array): SignedRelease {
  const problem = manifestProblem(manifest);
  if (problem) throw new TypeError(`manifest: ${problem}`);
  if (releaseKeyId(secretKey.subarray(32)) !== manifest.keyId) throw new TypeError("manifest keyId does not name the signing key");
  return { manifest, sig: toBase64Url(nacl.sign.detached(manifestMessage(manifest), secretKey)) };
}

export type ReadRelease =
  | { ok: true; manifest: FirmwareManifest; signature: Uint8Array | undefined }
  | { ok: false; problem: string };

/** Shape-check a {manifest, sig} document. A missing or empty sig is reported as signature: undefined, not as malformed. */
export function readRelease(doc: unknown): ReadRelease {
  if (!isRecord(doc)) return { ok: false, problem: "release is not an object" };
  const problem = manifestProblem(doc.manifest);
  if (problem) return { ok: false, problem };
  const manifest = doc.manifest as FirmwareManifest;
  if (doc.sig === undefined || doc.sig === null || doc.sig === "") return { ok: true, manifest, signature: undefined };
  if (typeof doc.sig !== "string") return { ok: false, problem: "sig is not a string" };
  let signature: Uint8Array;
  try {
    signature = fromBase64Url(doc.sig);
  } catch {
    return { ok: false, problem: "sig is not base64url" };
  }
  if (signature.length !== 64) return { ok: false, problem: "sig is not 64 bytes" };
  return { ok: true, manifest, signature };
}

// ------------------------------------------------------------------ release keys

/** The keys a device trusts for releases. serial orders key sets: a device never goes back to a lower one. */
export interface TrustedKeys {
  serial: number;
  keys: Uint8Array[];
}

export interface ReleaseKeySet {
  v: number;
  kind: "release-keys";
  serial: number;
  /** Public keys, lowercase hex. */
  keys: string[];
}

export interface KeyUpdate {
  keySet: ReleaseKeySet;
  sigs: Array<{ keyId: string; sig: string }>;
}

export function keySetProblem(ks: unknown): string | undefined {
  if (!isRecord(ks)) return "key set is not an object";
  if (Object.keys(ks).sort().join(",") !== "keys,kind,serial,v") return "unexpected key-set members";
  if (ks.v !== MANIFEST_FORMAT || ks.kind !== "release-keys") return "not a release key set";
  if (!isCount(ks.serial) || ks.serial === 0) return "bad serial";
  if (!Array.isArray(ks.keys) || ks.keys.length === 0 || ks.keys.length > MAX_RELEASE_KEYS) return `keys must list 1-${MAX_RELEASE_KEYS} keys`;
  const seen = new Set<string>();
  for (const k of ks.keys) {
    if (typeof k !== "string" || !HEX64.test(k)) return "bad key";
    if (seen.has(k)) return "duplicate key";
    seen.add(k);
  }
  return undefined;
}

export function keySetMessage(ks: ReleaseKeySet): Uint8Array {
  return concatBytes(utf8Encode(KEYSET_DOMAIN), canonicalBytes(ks as unknown as Json));
}

/** Sign a key set with every given secret key: a currently trusted one, and each key the set lists. */
export function signKeyUpdate(keySet: ReleaseKeySet, secretKeys: Uint8Array[]): KeyUpdate {
  const problem = keySetProblem(keySet);
  if (problem) throw new TypeError(`key set: ${problem}`);
  const message = keySetMessage(keySet);
  return {
    keySet,
    sigs: secretKeys.map((sk) => ({ keyId: releaseKeyId(sk.subarray(32)), sig: toBase64Url(nacl.sign.detached(message, sk)) })),
  };
}

export type KeyUpdateVerdict = { ok: true; keys: TrustedKeys } | { ok: false; reason: "malformed-keys" | "not-newer" | "unauthorized" | "bad-signature"; detail: string };

/**
 * Check a key update against the keys trusted now. Authority: signatures by
 * min(2, trusted keys) distinct trusted keys, so a fleet that trusts two keys
 * (release key + offline backup) cannot have its trust rewritten by one stolen
 * key. Possession: a signature by every listed key. Costs one Ed25519 verify
 * per signature checked (2-3 for a typical rotation: seconds each on the device).
 */
export function checkKeyUpdate(update: unknown, trusted: TrustedKeys, verify: Ed25519Verify = naclVerify): KeyUpdateVerdict {
  if (!isRecord(update) || !Array.isArray(update.sigs)) return { ok: false, reason: "malformed-keys", detail: "expected {keySet, sigs}" };
  const problem = keySetProblem(update.keySet);
  if (problem) return { ok: false, reason: "malformed-keys", detail: problem };
  const keySet = update.keySet as ReleaseKeySet;
  if (keySet.serial <= trusted.serial) return { ok: false, reason: "not-newer", detail: `serial ${keySet.serial} <= ${trusted.serial}` };
  const sigs = new Map<string, Uint8Array>();
  for (const s of update.sigs as unknown[]) {
    if (!isRecord(s) || typeof s.keyId !== "string" || typeof s.sig !== "string") return { ok: false, reason: "malformed-keys", detail: "bad sigs entry" };
    try {
      const sig = fromBase64Url(s.sig);
      if (sig.length !== 64) throw new TypeError("length");
      sigs.set(s.keyId, sig);
    } catch {
      return { ok: false, reason: "malformed-keys", detail: "sig is not 64 bytes of base64url" };
    }
  }
  const message = keySetMessage(keySet);
  const threshold = Math.min(2, trusted.keys.length);
  const authorities = trusted.keys.filter((k) => sigs.has(releaseKeyId(k)));
  if (authorities.length < threshold) return { ok: false, reason: "unauthorized", detail: `needs signatures by ${threshold} trusted release key(s), has ${authorities.length}` };
  const checked = new Set<string>();
  for (const k of authorities.slice(0, threshold)) {
    if (!verify(message, sigs.get(releaseKeyId(k))!, k)) return { ok: false, reason: "bad-signature", detail: `trusted key ${releaseKeyId(k)}'s signature does not verify` };
    checked.add(toHex(k));
  }
  const keys = keySet.keys.map((hex) => fromHex(hex));
  for (const k of keys) {
    if (checked.has(toHex(k))) continue;
    const sig = sigs.get(releaseKeyId(k));
    if (!sig) return { ok: false, reason: "unauthorized", detail: `no proof of possession for key ${releaseKeyId(k)}` };
    if (!verify(message, sig, k)) return { ok: false, reason: "bad-signature", detail: `proof of possession for key ${releaseKeyId(k)} does not verify` };
  }
  return { ok: true, keys: { serial: keySet.serial, keys } };
}

// ------------------------------------------------------------------ digests

export type { DigestStream, Sha256Factory } from "./ports";

const K256 = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

/**
 * FIPS 180-4 SHA-256 in plain JS: the fallback where no native digest exists
 * (bare XS in tests). Devices use the native one; this is ~60 lines, so cheap to keep.
 */
export function createJsSha256(): DigestStream {
  const h = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
  const w = new Uint32Array(64);
  const block = new Uint8Array(64);
  let fill = 0;
  let total = 0;
  let done = false;
  const compress = (b: Uint8Array, o: number) => {
    for (let i = 0; i < 16; i++) w[i] = (b[o + 4 * i] << 24) | (b[o + 4 * i + 1] << 16) | (b[o + 4 * i + 2] << 8) | b[o + 4 * i + 3];
    for (let i = 16; i < 64; i++) {
      const a = w[i - 15], c = w[i - 2];
      const s0 = ((a >>> 7) | (a << 25)) ^ ((a >>> 18) | (a << 14)) ^ (a >>> 3);
      const s1 = ((c >>> 17) | (c << 15)) ^ ((c >>> 19) | (c << 13)) ^ (c >>> 10);
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) | 0;
    }
    let a = h[0], bb = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (let i = 0; i < 64; i++) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const t1 = (hh + S1 + ((e & f) ^ (~e & g)) + K256[i] + w[i]) | 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const t2 = (S0 + ((a & bb) ^ (a & c) ^ (bb & c))) | 0;
      hh = g; g = f; f = e; e = (d + t1) | 0; d = c; c = bb; bb = a; a = (t1 + t2) | 0;
    }
    h[0] += a; h[1] += bb; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
  };
  return {
    update(bytes) {
      if (done) throw new TypeError("sha256: digest already finished");
      total += bytes.length;
      let i = 0;
      if (fill > 0) {
        const take = Math.min(64 - fill, bytes.length);
        block.set(bytes.subarray(0, take), fill);
        fill += take;
        i = take;
        if (fill < 64) return;
        compress(block, 0);
        fill = 0;
      }
      for (; i + 64 <= bytes.length; i += 64) compress(bytes, i);
      if (i < bytes.length) {
        block.set(bytes.subarray(i), 0);
        fill = bytes.length - i;
      }
    },
    digest() {
      if (done) throw new TypeError("sha256: digest already finished");
      done = true;
      const bits = total * 8;
      block[fill++] = 0x80;
      if (fill > 56) {
        block.fill(0, fill);
        compress(block, 0);
        fill = 0;
      }
      block.fill(0, fill, 56);
      const hi = Math.floor(bits / 0x100000000), lo = bits >>> 0;
      block[56] = hi >>> 24; block[57] = hi >>> 16; block[58] = hi >>> 8; block[59] = hi;
      block[60] = lo >>> 24; block[61] = lo >>> 16; block[62] = lo >>> 8; block[63] = lo;
      compress(block, 0);
      const out = new Uint8Array(32);
      for (let i = 0; i < 8; i++) {
        out[4 * i] = h[i] >>> 24; out[4 * i + 1] = h[i] >>> 16; out[4 * i + 2] = h[i] >>> 8; out[4 * i + 3] = h[i];
      }
      return out;
    },
  };
}
