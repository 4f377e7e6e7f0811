/*
 * The vault key on a classic ESP32 (the AI-Thinker ESP32-CAM): a key in flash,
 * allowed only when flash encryption protects it.
 *
 * The classic ESP32 has no HMAC peripheral, so there is no key software cannot
 * read. The vault key is then 32 random bytes in their own NVS namespace
 * (./vault-store StoredKey), and it is exactly as secret as the flash. With
 * flash encryption (release mode) and NVS encryption, a dump is ciphertext
 * under a key held in eFuses and the vault keeps its promise; without them
 * the key sits next to the records it protects. So this provider asks the
 * chip (esp_flash_encryption_enabled, through the XS FFI) before every use and
 * refuses when flash encryption is off: the vault reports "no-key" and the
 * device stays unprovisioned, saying why. A development build may opt out with
 * `devVaultKey=1` on the mcconfig command line; it then logs at every boot
 * that its secrets are readable from flash.
 *
 * hardware/esp32cam.json binds esp_flash_encryption_enabled as returning
 * "uint8_t" (C bool). The sdkconfig that turns flash and NVS encryption on is
 * hardware/sdkconfig/esp32cam/flash-encryption.defaults (see hardware/README.md).
 */
import FFI from "mc/ffi";
import type { Log, Random } from "../core/ports";
import type { KeyProvider } from "../core/vault";
import { StoredKey, StoredKeyError } from "./vault-store";

export interface VaultKeyOptions {
  random: Random;
  log: Log;
  /** Development builds only: keep the key in unencrypted flash (logged at every boot). */
  allowPlainKey: boolean;
}

/** The glue mcconfig generates for hardware/esp32cam.json's "ffi" entry. */
interface FlashEncryption {
  esp_flash_encryption_enabled(): number;
}

export function createVaultKeyProvider(options: VaultKeyOptions): { keys: KeyProvider; kind: string } {
  const natives = new FFI() as unknown as FlashEncryption;
  const encrypted = natives.esp_flash_encryption_enabled() !== 0;
  if (!encrypted && options.allowPlainKey) {
    options.log("warn", "DEVELOPMENT BUILD: flash encryption is off, and the vault key is stored in plain flash: every secret can be read from a flash dump");
  }
  const keys = new StoredKey({
    random: options.random,
    guard: () => {
      if (!encrypted && !options.allowPlainKey) {
        throw new StoredKeyError(
          "vault key: this ESP32 has no HMAC peripheral and flash encryption is off, so no key can be kept secret; enable flash and NVS encryption (hardware/README.md), or build with devVaultKey=1 for development",
        );
      }
    },
  });
  return { keys, kind: encrypted ? "stored key, flash-encrypted" : "stored key, PLAIN FLASH (development)" };
}
