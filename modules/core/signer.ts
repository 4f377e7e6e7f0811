/*
 * Ed25519 event signer with offline/online signing.
 *
 * A plain tweetnacl sign costs ~870 M instructions on XS (seconds on an ESP32),
 * almost all of it the scalar multiplication R = r·B. That part does not depend
 * on the message, so it is done ahead of time, while the bell is idle, and kept
 * in a small pool in RAM. At the press only S = r + H(R‖A‖M)·a mod L remains:
 * one SHA-512 (native on the device) and BigInt arithmetic. Signatures are
 * standard RFC 8032 signatures; any Ed25519 verifier (OpenSSL included) accepts them.
 *
 * R = r·B is obtained from tweetnacl's own public API: signing the empty message
 * under a fresh one-time seed s makes tweetnacl compute r = SHA-512(SHA-512(s)[32:64])
 * mod L and R = r·B, and return R as the signature's first half. We recompute r
 * the same way, so no curve arithmetic is copied out of tweetnacl.
 *
 * The nonce rule is absolute, because a reused r reveals the private key:
 *  - each nonce is removed from the pool before it is used, so it can be used once;
 *  - nonces live only in RAM, never in flash, so none survives a reboot;
 *  - s is hedged: SHA-512(domain ‖ key prefix ‖ 32 fresh random bytes ‖ boot ‖ counter),
 *    so a weak RNG cannot repeat s while the persisted boot counter increases;
 *  - the boot counter lives in flash, which can be written back, so the hedge is
 *    not the guard: every random byte passes the health tests of ./rng-health
 *    first, and once the RNG fails them no nonce is made again this boot and
 *    the pool is emptied.
 * When the pool is empty the signer falls back to a deterministic RFC 8032 sign
 * (no nonce to misuse: r comes from the key and the message), counts it, and the
 * caller logs it: never a silent slowdown.
 *
 * With a HeavyCrypto port (./heavy-crypto) the expensive half runs on a worker:
 * refill() sends only the one-time seed there and gets R back, and
 * signWhenReady() asks for a nonce of its own, ahead of any refill, instead of
 * blocking the main machine for a full sign. The signing key never leaves.
 */
import nacl from "tweetnacl";
import type { Random, Sha512 } from "./ports";
import type { Signer } from "./events";
import type { CryptoPriority, HeavyCrypto } from "./heavy-crypto";
import { concatBytes, u64be, utf8Encode, wipe } from "./bytes";
import { RngHealth } from "./rng-health";

/** The order of the Ed25519 base point. */
const L = (1n << 252n) + 27742317777372353535851937790883648493n;
const NONCE_DOMAIN = utf8Encode("doorward/nonce/v1");
const EMPTY = new Uint8Array(0);

export const jsSha512: Sha512 = (data) => nacl.hash(data);

function littleEndianToBigInt(bytes: Uint8Array): bigint {
  let hex = "";
  for (let i = bytes.length - 1; i >= 0; i--) hex += (bytes[i] < 16 ? "0" : "") + bytes[i].toString(16);
  return BigInt("0x" + hex);
}

function bigIntToLittleEndian32(x: bigint): Uint8Array {
  const hex = x.toString(16).padStart(64, "0");
  const out = new Uint8Array(32);
  for (let i = 0; i < 32; i++) out[i] = parseInt(hex.substr(62 - 2 * i, 2), 16);
  return out;
}

interface Nonce {
  r: bigint;
  R: Uint8Array;
}

export interface SignerOptions {
  random: Random;
  /**
   * The public key stored beside the seed. Deriving it costs a full scalar
   * multiplication (~840 M instructions on XS, seconds on the device), so boot
   * skips that when the secret store already holds it.
   */
  publicKey?: Uint8Array;
  /** The persisted boot counter; part of every nonce seed. */
  boot: number;
  /** SHA-512 used for the online step; the device passes its native digest. */
  sha512?: Sha512;
  /** How many nonces to keep ready. */
  poolSize?: number;
  /** Told once, with the reason, when the RNG fails its health tests and precomputation stops for good. */
  onRngFailure?: (reason: string) => void;
  /** False while no true entropy source feeds `random` (a device before its radio is up): no nonce is made then. */
  entropyReady?: () => boolean;
}

export interface SignerStats {
  /** Signatures finished from a precomputed nonce. */
  online: number;
  /** Signatures that found the pool empty and paid for a full sign. */
  slow: number;
  /** Nonces made since boot. */
  precomputed: number;
  /** Signatures that waited for a nonce made for them on the worker (pool empty, main machine not blocked). */
  waited: number;
}

export class Ed25519Signer implements Signer {
  readonly publicKey: Uint8Array;
  readonly poolSize: number;
  readonly stats: SignerStats = { online: 0, slow: 0, precomputed: 0, waited: 0 };
  #a: bigint;
  #prefix: Uint8Array;
  #secretKey: Uint8Array;
  #pool: Nonce[] = [];
  #random: Random;
  #boot: number;
  #sha512: Sha512;
  #inFlight = 0;
  #health = new RngHealth();
  #onRngFailure: ((reason: string) => void) | undefined;
  #entropyReady: (() => boolean) | undefined;

  constructor(seed: Uint8Array, options: SignerOptions) {
    if (seed.length !== 32) throw new RangeError("signer: seed must be 32 bytes");
    if (options.publicKey && options.publicKey.length !== 32) throw new RangeError("signer: public key must be 32 bytes");
    this.publicKey = options.publicKey ? options.publicKey.slice() : nacl.sign.keyPair.fromSeed(seed).publicKey;
    this.#secretKey = concatBytes(seed, this.publicKey);
    const h = nacl.hash(seed);
    h[0] &= 248;
    h[31] &= 127;
    h[31] |= 64;
    this.#a = littleEndianToBigInt(h.subarray(0, 32));
    this.#prefix = h.slice(32, 64);
    wipe(h);
    this.#random = options.random;
    this.#boot = options.boot;
    this.#sha512 = options.sha512 ?? jsSha512;
    this.poolSize = options.poolSize ?? 4;
    this.#onRngFailure = options.onRngFailure;
    this.#entropyReady = options.entropyReady;
  }

  /** Why the RNG was judged broken (every signature is then deterministic), or undefined. */
  get rngFailure(): string | undefined {
    return this.#health.failure;
  }

  /** Nonces ready for an online signature. */
  get ready(): number {
    return this.#pool.length;
  }

  /** Nonces being made on a worker (see refill). */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** Make one nonce if the pool has room. This is the expensive step (~one full sign); call it when idle. */
  precompute(): boolean {
    if (this.#pool.length + this.#inFlight >= this.poolSize) return false;
    const seed = this.#oneTimeSeed();
    if (!seed) return false;
    const oneTimeKey = new Uint8Array(64);
    oneTimeKey.set(seed);
    const R = nacl.sign.detached(EMPTY, oneTimeKey).slice(0, 32);
    wipe(oneTimeKey);
    this.#pool.push(this.#nonceFor(seed, R));
    wipe(seed);
    return true;
  }

  /**
   * Make one nonce on the worker if the pool (counting nonces already being
   * made) has room. Resolves true once it is in the pool; false if there was no
   * room or the RNG has failed. Rejects if the worker fails; the seed is gone either way.
   */
  async refill(crypto: HeavyCrypto, priority: CryptoPriority = "refill"): Promise<boolean> {
    if (this.#pool.length + this.#inFlight >= this.poolSize) return false;
    const seed = this.#oneTimeSeed();
    if (!seed) return false;
    this.#inFlight++;
    try {
      const R = await crypto.noncePoint(seed, priority);
      // The RNG may have failed while this nonce was being made: it is dropped with the rest.
      if (this.#health.failure !== undefined) return false;
      this.#pool.push(this.#nonceFor(seed, R));
      return true;
    } finally {
      this.#inFlight--;
      wipe(seed);
    }
  }

  /**
   * Sign now from the pool, or, when it is empty, with a nonce made on the
   * worker for this signature alone (ahead of queued refills). The main machine
   * stays free meanwhile; the nonce never enters the pool. With a failed RNG
   * it is the deterministic sign, as sign() would do.
   */
  async signWhenReady(message: Uint8Array, crypto: HeavyCrypto): Promise<Uint8Array> {
    if (this.#pool.length > 0) return this.sign(message);
    const seed = this.#oneTimeSeed();
    if (!seed) return this.sign(message);
    let nonce: Nonce;
    try {
      nonce = this.#nonceFor(seed, await crypto.noncePoint(seed, "urgent"));
    } finally {
      wipe(seed);
    }
    if (this.#health.failure !== undefined) return this.sign(message);
    this.stats.waited++;
    return this.#online(nonce, message);
  }

  /** Whether a nonce can be made now: the RNG has not failed its health tests and a true entropy source runs. */
  get noncesPossible(): boolean {
    return this.#health.failure === undefined && (this.#entropyReady?.() ?? true);
  }

  /**
   * A hedged one-time seed, unique per boot and counter; undefined while no
   * entropy source runs, and (the pool emptied) once the RNG fails its health tests.
   */
  #oneTimeSeed(): Uint8Array | undefined {
    if (this.#entropyReady && !this.#entropyReady()) return undefined;
    const fresh = new Uint8Array(32);
    if (!this.#health.draw(this.#random, fresh)) {
      this.#refuseNonces();
      return undefined;
    }
    const digest = this.#sha512(concatBytes(NONCE_DOMAIN, this.#prefix, fresh, u64be(this.#boot), u64be(this.stats.precomputed)));
    this.stats.precomputed++;
    const seed = digest.slice(0, 32);
    wipe(fresh); wipe(digest);
    return seed;
  }

  /** r exactly as tweetnacl derives it when signing the empty message under the seed (so R = r·B). */
  #nonceFor(seed: Uint8Array, R: Uint8Array): Nonce {
    if (!(R instanceof Uint8Array) || R.length !== 32) throw new TypeError("signer: nonce point must be 32 bytes");
    const expanded = this.#sha512(seed);
    const rHash = this.#sha512(expanded.subarray(32, 64));
    const nonce = { r: littleEndianToBigInt(rHash) % L, R: R.slice() };
    wipe(expanded); wipe(rHash);
    return nonce;
  }

  /** The RNG failed: drop every nonce, since the failure may have begun before the test saw it. */
  #refuseNonces(): void {
    for (const nonce of this.#pool) {
      nonce.r = 0n;
      wipe(nonce.R);
    }
    this.#pool.length = 0;
    // Told once: the failure is final for this boot.
    const tell = this.#onRngFailure;
    this.#onRngFailure = undefined;
    tell?.(this.#health.failure ?? "the RNG failed its health tests");
  }

  sign(message: Uint8Array): Uint8Array {
    const nonce = this.#pool.shift();
    if (!nonce) {
      this.stats.slow++;
      return nacl.sign.detached(message, this.#secretKey);
    }
    return this.#online(nonce, message);
  }

  #online(nonce: Nonce, message: Uint8Array): Uint8Array {
    const k = littleEndianToBigInt(this.#sha512(concatBytes(nonce.R, this.publicKey, message))) % L;
    const S = (nonce.r + k * this.#a) % L;
    nonce.r = 0n;
    this.stats.online++;
    return concatBytes(nonce.R, bigIntToLittleEndian32(S));
  }
}
