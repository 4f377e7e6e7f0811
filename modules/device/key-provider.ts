/*
 * The vault's storage key on an ESP32-S3: HMAC-SHA-256 computed by the HMAC
 * peripheral from an eFuse key that software cannot read.
 *
 * The key sits in one of the eFuse key blocks (BLOCK_KEY0-5, HMAC_KEY0-5 in
 * ESP-IDF), burned once at the factory with purpose HMAC_UP and read
 * protection, so neither this code nor anyone dumping the flash ever sees it.
 * The vault key is HMAC(eFuse key, "doorward/vault/key/v1"): the same on every
 * boot of this chip, different on every other chip, and never stored. A flash
 * dump copied to another board therefore decrypts nothing.
 *
 * esp_hmac_calculate is bound through the XS FFI by the esp32 manifest
 * ("ffi": {"functions": {"esp_hmac_calculate": {"arguments": ["uint32_t",
 * "void*", "uint32_t", "uint8_t[32]"], "returns": "int32_t"}}}). It returns
 * ESP_OK (0), or an error when that block holds no key with purpose HMAC_UP:
 * then storageKey() throws, the vault reports "no-key" at open (it does not
 * throw), and the device stays unprovisioned with a message saying why
 * instead of boot-looping. See docs/secrets.md for burning the key.
 */
import FFI from "mc/ffi";
import type { KeyProvider } from "../core/vault";

/** "doorward/vault/key/v1" in ASCII, spelled out so this module needs no encoder. */
const MESSAGE = [
  0x64, 0x6f, 0x6f, 0x72, 0x77, 0x61, 0x72, 0x64, 0x2f, 0x76, 0x61, 0x75, 0x6c, 0x74, 0x2f, 0x6b, 0x65, 0x79, 0x2f, 0x76, 0x31,
];
const ESP_OK = 0;
const HMAC_BYTES = 32;

export interface EfuseKeyOptions {
  /** HMAC_KEY0-5 = eFuse BLOCK_KEY0-5. Default 4, leaving 0-3 for flash encryption, secure boot and NVS encryption. */
  keyBlock?: number;
}

export class DeviceKeyError extends Error {
  override name = "DeviceKeyError";
}

export function createEfuseKeyProvider(options: EfuseKeyOptions = {}): KeyProvider {
  const block = options.keyBlock ?? 4;
  if (!Number.isInteger(block) || block < 0 || block > 5) throw new RangeError("key provider: keyBlock must be 0-5 (HMAC_KEY0-5)");
  const natives = new FFI();
  return {
    storageKey(): Uint8Array {
      const message = new Uint8Array(MESSAGE).buffer;
      const out = new ArrayBuffer(HMAC_BYTES);
      const err = natives.esp_hmac_calculate(block, message, MESSAGE.length, out);
      if (err !== ESP_OK) {
        new Uint8Array(out).fill(0);
        throw new DeviceKeyError(
          `key provider: esp_hmac_calculate failed (esp_err 0x${(err >>> 0).toString(16)}): eFuse BLOCK_KEY${block} holds no key with purpose HMAC_UP`,
        );
      }
      return new Uint8Array(out);
    },
  };
}
