/*
 * The device Random: the ESP32 hardware RNG through the XS FFI, and whether a
 * true entropy source feeds it yet.
 *
 * hardware/esp32.json binds ESP-IDF's esp_fill_random(void *buf, size_t len)
 * ("void*", "uint32_t": size_t is 32 bits on every ESP32). The SDK's `rng`
 * module is not used: it is RC4 seeded once with 16 bytes, so everything it
 * returns is a function of 128 bits chosen at boot.
 *
 * The hardware RNG is only fully random while a noise source runs: the radio
 * (Wi-Fi or Bluetooth), or the SAR ADC source that bootloader_random_enable()
 * turns on. Without either it is pseudo-random, and a device key or nonce made
 * then could repeat from boot to boot. So this module turns the ADC source on
 * the moment it is created (main.ts creates it first, before any key or nonce
 * exists), and says whether a source runs: entropyReady() is false only
 * between releaseBootSource() (the ADC source must be off before Wi-Fi starts,
 * and on the classic ESP32 before the camera's I2S does) and radioRunning().
 * Nonce precomputation waits for entropyReady() (core/firmware); a signature
 * needed meanwhile is the deterministic RFC 8032 one, which needs no entropy.
 *
 * The FFI glue takes an ArrayBuffer and passes a pointer to its first byte,
 * so a scratch buffer is filled and copied into the (possibly offset) view.
 */
import FFI from "mc/ffi";
import type { DeviceRandom } from "./board-api";

/** The glue mcconfig generates for hardware/esp32.json's "ffi" entry. */
interface EspRandom {
  esp_fill_random(buffer: ArrayBuffer, length: number): void;
  bootloader_random_enable(): void;
  bootloader_random_disable(): void;
}

export function createRandom(): DeviceRandom {
  const natives = new FFI() as unknown as EspRandom;
  natives.bootloader_random_enable();
  let bootSource = true;
  let radio = false;
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
    entropyReady: () => bootSource || radio,
    releaseBootSource(): void {
      if (!bootSource) return;
      bootSource = false;
      natives.bootloader_random_disable();
    },
    radioRunning(): void {
      radio = true;
    },
  };
}
