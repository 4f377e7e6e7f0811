/*
 * Health tests on the random bytes the signer turns into nonces.
 *
 * A precomputed Ed25519 nonce is only as good as the bytes it was drawn from,
 * and the hedge in ./signer (key prefix, boot counter, nonce counter) rests on
 * flash an attacker can write back. So the bytes themselves are watched, in the
 * style of NIST SP 800-90B section 4.4: a start-up test over 1024 bytes before
 * the first nonce, then every byte handed out goes through
 *  - the repetition count test (a run of one value too long for the claimed entropy),
 *  - the adaptive proportion test (one value too common within a 512-byte window),
 *  - and, as in the FIPS 140-2 continuous test, a draw identical to the previous draw.
 * One failure is final for this boot: the caller stops precomputing and signs
 * deterministically (RFC 8032), which needs no randomness at all.
 *
 * The tests catch a source that is stuck, biased or looping, not one that
 * replays a random-looking stream from the same seed on every boot; that is
 * why the device also holds key generation and nonces until its entropy source
 * is running (see the device's random adapter).
 */
import nacl from "tweetnacl";
import type { Random } from "./ports";
import { bytesEqual, wipe } from "./bytes";

/** Min-entropy the tests assume each byte carries. Low on purpose: only a clearly broken source trips them. */
export const CLAIMED_ENTROPY_BITS = 4;
/** False-alarm probability per test, as a power of two: 2^-30, inside SP 800-90B's 2^-20..2^-40. */
export const FALSE_ALARM_LOG2 = -30;
/** Samples in one adaptive-proportion window (SP 800-90B's W for non-binary sources). */
export const PROPORTION_WINDOW = 512;
/** Bytes tested at start-up, before the first nonce (SP 800-90B asks for at least 1024 samples). */
export const STARTUP_BYTES = 1024;

/** SP 800-90B 4.4.1: C = 1 + ⌈−log2(α) / H⌉. */
export function repetitionCutoff(entropyBits: number, alarmLog2: number): number {
  return 1 + Math.ceil(-alarmLog2 / entropyBits);
}

/**
 * SP 800-90B 4.4.2: C = 1 + CRITBINOM(W, 2^−H, 1 − α), the smallest count
 * whose binomial upper tail is at most α. Computed from the probability mass,
 * summed from the top so small tails are not lost to rounding.
 */
export function proportionCutoff(window: number, entropyBits: number, alarmLog2: number): number {
  const p = Math.pow(2, -entropyBits);
  const alpha = Math.pow(2, alarmLog2);
  const pmf: number[] = [Math.pow(1 - p, window)];
  for (let k = 0; k < window; k++) pmf.push((pmf[k] * (window - k) * p) / ((k + 1) * (1 - p)));
  let tail = 0;
  for (let k = window; k >= 0; k--) {
    // tail is P(X > k); the first k from the top where adding P(X = k) would exceed α is the critical count.
    if (tail + pmf[k] > alpha) return 1 + k;
    tail += pmf[k];
  }
  return 1;
}

export interface RngHealthOptions {
  entropyBits?: number;
  alarmLog2?: number;
  window?: number;
}

export class RngHealth {
  readonly repetitionCutoff: number;
  readonly proportionCutoff: number;
  readonly window: number;
  #failure: string | undefined;
  #started = false;
  #runValue = -1;
  #runLength = 0;
  #windowValue = -1;
  #windowSeen = 0;
  #windowCount = 0;
  /** SHA-512 of the last draw of 8 bytes or more. */
  #previous: Uint8Array | undefined;

  constructor(options: RngHealthOptions = {}) {
    const h = options.entropyBits ?? CLAIMED_ENTROPY_BITS;
    const a = options.alarmLog2 ?? FALSE_ALARM_LOG2;
    this.window = options.window ?? PROPORTION_WINDOW;
    if (!(h >= 1 && h <= 8)) throw new RangeError("rng health: entropyBits must be from 1 to 8");
    if (!(a < 0)) throw new RangeError("rng health: alarmLog2 must be negative");
    if (!(Number.isInteger(this.window) && this.window >= 16)) throw new RangeError("rng health: window must be an integer of at least 16");
    this.repetitionCutoff = repetitionCutoff(h, a);
    this.proportionCutoff = proportionCutoff(this.window, h, a);
  }

  /** Why the source was judged broken, or undefined while it passes. */
  get failure(): string | undefined {
    return this.#failure;
  }

  /**
   * Fill target from random and test the bytes (after the start-up test, on
   * first use). Returns false, with target wiped, once the source has failed.
   */
  draw(random: Random, target: Uint8Array): boolean {
    if (this.#failure) {
      wipe(target);
      return false;
    }
    if (!this.#started) {
      this.#started = true;
      const startup = new Uint8Array(STARTUP_BYTES);
      random.fill(startup);
      this.#test(startup, "start-up");
      wipe(startup);
    }
    if (!this.#failure) {
      random.fill(target);
      this.#test(target, "continuous");
    }
    if (this.#failure) wipe(target);
    return !this.#failure;
  }

  /** Run the continuous tests over bytes drawn elsewhere. */
  check(bytes: Uint8Array): boolean {
    if (!this.#failure) this.#test(bytes, "continuous");
    return !this.#failure;
  }

  #test(bytes: Uint8Array, phase: string): void {
    if (bytes.length >= 8) {
      // Only a digest of the last draw is kept: the draw itself becomes part of a secret nonce.
      const digest = nacl.hash(bytes);
      const repeated = this.#previous !== undefined && bytesEqual(this.#previous, digest);
      this.#previous = digest;
      if (repeated) return this.#fail(`${phase}: two draws of ${bytes.length} bytes in a row were identical`);
    }
    for (let i = 0; i < bytes.length; i++) {
      const b = bytes[i];
      if (b === this.#runValue) {
        if (++this.#runLength >= this.repetitionCutoff) return this.#fail(`${phase}: byte 0x${b.toString(16)} repeated ${this.#runLength} times in a row (repetition count test, cutoff ${this.repetitionCutoff})`);
      } else {
        this.#runValue = b;
        this.#runLength = 1;
      }
      if (this.#windowSeen === 0) {
        this.#windowValue = b;
        this.#windowCount = 1;
      } else if (b === this.#windowValue) {
        if (++this.#windowCount >= this.proportionCutoff) {
          return this.#fail(`${phase}: byte 0x${b.toString(16)} appeared ${this.#windowCount} times in ${this.window} (adaptive proportion test, cutoff ${this.proportionCutoff})`);
        }
      }
      if (++this.#windowSeen === this.window) this.#windowSeen = 0;
    }
  }

  #fail(reason: string): void {
    this.#failure = reason;
    this.#previous = undefined;
  }
}
