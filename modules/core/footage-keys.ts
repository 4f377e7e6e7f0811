/*
 * Per-snapshot content keys, wrapped for the users authorised at capture time.
 *
 * Each snapshot is encrypted (by the camera pipeline, natively on the device)
 * under a fresh 32-byte content key. This module wraps that key once per user
 * on the access list *at that moment*, with XSalsa20-Poly1305 under the user's
 * footage key (derived from X25519(device, user) when the user was added and
 * cached, so a wrap costs ~1 M instructions, not a 464 M box.before). A user
 * revoked before the capture is simply not a recipient, and their old footage
 * key opens none of the boxes made for others. The cloud and the broker see
 * only boxes.
 *
 * The optional context (the snapshot's id or digest, up to MAX_CONTEXT_BYTES) is
 * sealed with the key and checked on unwrap, so a wrapped key cannot be moved
 * from one snapshot's manifest to another's unnoticed.
 */
import nacl from "tweetnacl";
import type { Random } from "./ports";
import type { Keyring } from "./access";
import type { Json } from "./canonical";
import { bytesEqual, concatBytes, fromBase64Url, toBase64Url, wipe } from "./bytes";

export const CONTENT_KEY_BYTES = 32;
export const MAX_CONTEXT_BYTES = 64;
const NONCE_BYTES = 24;
const EMPTY = new Uint8Array(0);

export interface WrappedContentKey {
  /** Access-list user id. */
  user: string;
  /** 24 fresh random bytes. */
  nonce: Uint8Array;
  /** secretbox(contentKey ‖ context, nonce, footageKey[user]): 48 bytes + context. */
  wrapped: Uint8Array;
}

export interface ContentKeyWrapping {
  /** Access-list generation at capture: who was authorised. */
  gen: number;
  keys: WrappedContentKey[];
}

/** A fresh content key from the device's RNG (tweetnacl has no RNG on XS). */
export function newContentKey(random: Random): Uint8Array {
  const key = new Uint8Array(CONTENT_KEY_BYTES);
  random.fill(key);
  return key;
}

/** Wrap a content key for every user the keyring authorises now. */
export function wrapContentKey(contentKey: Uint8Array, keyring: Keyring, random: Random, context: Uint8Array = EMPTY): ContentKeyWrapping {
  if (!(contentKey instanceof Uint8Array) || contentKey.length !== CONTENT_KEY_BYTES) throw new TypeError("footage: content key must be 32 bytes");
  if (context.length > MAX_CONTEXT_BYTES) throw new RangeError("footage: context too long");
  const plain = concatBytes(contentKey, context);
  const keys: WrappedContentKey[] = [];
  for (const { user, key } of keyring.footageRecipients()) {
    const nonce = new Uint8Array(NONCE_BYTES);
    random.fill(nonce);
    keys.push({ user, nonce, wrapped: nacl.secretbox(plain, nonce, key) });
    wipe(key);
  }
  wipe(plain);
  return { gen: keyring.generation, keys };
}

/** Open one wrapped key with a user's footage key; undefined unless it is authentic and for this context. */
export function unwrapContentKey(entry: WrappedContentKey, footageKey: Uint8Array, context: Uint8Array = EMPTY): Uint8Array | undefined {
  if (entry.nonce.length !== NONCE_BYTES || footageKey.length !== 32) return undefined;
  const opened = nacl.secretbox.open(entry.wrapped, entry.nonce, footageKey);
  if (!opened || opened.length !== CONTENT_KEY_BYTES + context.length) return undefined;
  if (!bytesEqual(opened.subarray(CONTENT_KEY_BYTES), context)) return undefined;
  return opened.slice(0, CONTENT_KEY_BYTES);
}

/** Wire form, for a snapshot manifest: {gen, keys: [{k, n, user}]} with base64url bytes. */
export function wrappingToJson(w: ContentKeyWrapping): Json {
  return { gen: w.gen, keys: w.keys.map((k) => ({ k: toBase64Url(k.wrapped), n: toBase64Url(k.nonce), user: k.user })) };
}

/** Strict inverse of wrappingToJson; throws TypeError on anything else. */
export function wrappingFromJson(v: unknown): ContentKeyWrapping {
  const bad = (why: string): never => {
    throw new TypeError(`footage: ${why}`);
  };
  if (typeof v !== "object" || v === null || Array.isArray(v)) return bad("wrapping must be an object");
  const o = v as Record<string, unknown>;
  if (Object.keys(o).length !== 2 || !Number.isSafeInteger(o.gen) || (o.gen as number) < 1 || !Array.isArray(o.keys)) return bad("wrapping must be {gen, keys}");
  if (o.keys.length > 64) return bad("too many recipients");
  const keys = o.keys.map((e: unknown): WrappedContentKey => {
    if (typeof e !== "object" || e === null || Array.isArray(e)) return bad("key entry must be an object");
    const k = e as Record<string, unknown>;
    if (Object.keys(k).length !== 3 || typeof k.user !== "string" || typeof k.n !== "string" || typeof k.k !== "string") return bad("key entry must be {k, n, user}");
    const nonce = fromBase64Url(k.n);
    const wrapped = fromBase64Url(k.k);
    if (nonce.length !== NONCE_BYTES || wrapped.length < CONTENT_KEY_BYTES + 16 || wrapped.length > CONTENT_KEY_BYTES + 16 + MAX_CONTEXT_BYTES) return bad("bad key entry sizes");
    return { user: k.user, nonce, wrapped };
  });
  return { gen: o.gen as number, keys };
}

/** The same, bound to one keyring and RNG: what the camera pipeline holds. */
export class FootageKeys {
  #keyring: Keyring;
  #random: Random;
  constructor(options: { keyring: Keyring; random: Random }) {
    this.#keyring = options.keyring;
    this.#random = options.random;
  }
  newContentKey(): Uint8Array {
    return newContentKey(this.#random);
  }
  wrapContentKey(contentKey: Uint8Array, context?: Uint8Array): ContentKeyWrapping {
    return wrapContentKey(contentKey, this.#keyring, this.#random, context);
  }
}
