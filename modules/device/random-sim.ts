/*
 * Random for the Linux simulator: the kernel's getrandom(2) through the XS FFI.
 *
 * hardware/lin.json maps "device/random" here and binds glibc's getrandom
 * ("void*", "uint64_t", "uint32_t" → "int64_t": size_t and ssize_t are 64 bits
 * on 64-bit Linux, which is what the simulator runs on). Requests of at most
 * 256 bytes are never cut short by the kernel, so larger fills are chunked and
 * any short or failed read throws instead of returning weak bytes.
 */
import FFI from "mc/ffi";
import type { DeviceRandom } from "./board-api";

const CHUNK = 256;

/** The glue mcconfig generates for hardware/lin.json's "ffi" entry. */
interface Getrandom {
  getrandom(buffer: ArrayBuffer, length: bigint, flags: number): bigint;
}

/** The kernel's pool is always seeded by the time the simulator runs: entropy is always ready. */
export function createRandom(): DeviceRandom {
  const natives = new FFI() as unknown as Getrandom;
  return {
    fill(target: Uint8Array): void {
      for (let offset = 0; offset < target.length; offset += CHUNK) {
        const n = Math.min(CHUNK, target.length - offset);
        const scratch = new ArrayBuffer(n);
        const got = natives.getrandom(scratch, BigInt(n), 0);
        if (got !== BigInt(n)) throw new Error("random: getrandom failed");
        const bytes = new Uint8Array(scratch);
        target.set(bytes, offset);
        bytes.fill(0);
      }
    },
    entropyReady: () => true,
    releaseBootSource: () => {},
    radioRunning: () => {},
  };
}
