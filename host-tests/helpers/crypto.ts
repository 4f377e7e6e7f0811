/* Test helpers: an independent Ed25519 check through Node's OpenSSL, and deterministic randomness. */
import crypto from "node:crypto";
import type { Random } from "../../modules/core/ports";

export { opensslVerify } from "../../tools/openssl-ed25519";

/** A repeatable byte stream (SHA-256 in counter mode) for tests that must be reproducible. */
export function seededRandom(seed: string): Random & { calls: number } {
  let counter = 0;
  return {
    calls: 0,
    fill(target: Uint8Array) {
      this.calls++;
      for (let o = 0; o < target.length; o += 32) {
        const block = crypto.createHash("sha256").update(`${seed}:${counter++}`).digest();
        target.set(block.subarray(0, Math.min(32, target.length - o)), o);
      }
    },
  };
}

/** A broken RNG that always returns the same bytes: the signer must still never repeat a nonce. */
export const stuckRandom: Random = { fill: (t) => t.fill(7) };
