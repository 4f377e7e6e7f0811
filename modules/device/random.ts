/*
 * The device Random: the ESP32 hardware RNG through the XS FFI.
 *
 * hardware/esp32.json binds ESP-IDF's esp_fill_random(void *buf, size_t len)
 * ("void*", "uint32_t": size_t is 32 bits on every ESP32). The SDK's `rng`
 * module is not used: it is RC4 seeded once with 16 bytes, so everything it
 * returns is a function of 128 bits chosen at boot. esp_fill_random draws from
 * the hardware RNG, which is fully random while Wi-Fi or Bluetooth is running
 * (always true once the doorbell is online) and falls back to a weaker
 * pseudo-random source before that. The signer hedges its nonces with the
 * key and a persisted boot counter so that weakness cannot repeat a nonce.
 *
 * The FFI glue takes an ArrayBuffer and passes a pointer to its first byte,
 * so a scratch buffer is filled and copied into the (possibly offset) view.
 */
import FFI from "mc/ffi";
import type { Random } from "../core/ports";

/** The glue mcconfig generates for hardware/esp32.json's "ffi" entry. */
interface EspRandom {
  esp_fill_random(buffer: ArrayBuffer, length: number): void;
}

export function createRandom(): Random {
  const natives = new FFI() as unknown as EspRandom;
  return {
    fill(target: Uint8Array): void {
      const n = target.length;
      if (n === 0) return;
      const scratch = new ArrayBuffer(n);
      natives.esp_fill_random(scratch, n);
      const bytes = new Uint8Array(scratch);
      target.set(bytes);
      bytes.fill(0);
    },
  };
}
