/*
 * The ESP32-S3's locks, read from its eFuses through the XS FFI: "device/chip-lock"
 * on the S3 boards (hardware/esp32s3.json binds the functions).
 *
 *  - esp_efuse_read_reg(EFUSE_BLK0, n): BLOCK0 word n, for SECURE_BOOT_EN,
 *    DIS_PAD_JTAG, DIS_USB_JTAG, DIS_DOWNLOAD_MODE, ENABLE_SECURITY_DOWNLOAD
 *    (esp_secure_boot_enabled() is inline in ESP-IDF v6 and cannot be bound);
 *  - esp_get_flash_encryption_mode(): disabled, development or release;
 *  - esp_efuse_get_key_purpose / esp_efuse_get_key_dis_read (BLOCK_KEY3): the
 *    NVS encryption key is an HMAC_UP key software cannot read;
 *  - esp_efuse_read_secure_version(): the anti-rollback count.
 * Enums and bool are passed as 32-bit and 8-bit integers, as the glue needs.
 * What the bits mean is ./efuse, which the host tests check; what is decided
 * from them is core/chip-lock, which core/firmware runs before the vault opens.
 */
import FFI from "mc/ffi";
import type { ChipState } from "../core/chip-lock";
import { EFUSE_BLK_KEY0, NVS_HMAC_KEY_ID, s3ChipState } from "./efuse";

/** The glue mcconfig generates for hardware/esp32s3.json's "ffi" entry. */
interface EspEfuse {
  esp_efuse_read_reg(block: number, register: number): number;
  esp_get_flash_encryption_mode(): number;
  esp_efuse_get_key_purpose(block: number): number;
  esp_efuse_get_key_dis_read(block: number): number;
  esp_efuse_read_secure_version(): number;
}

const EFUSE_BLK0 = 0;
const BLOCK0_WORDS = 6;

export function readChipState(): ChipState {
  const natives = new FFI() as unknown as EspEfuse;
  const block0: number[] = [];
  for (let n = 0; n < BLOCK0_WORDS; n++) block0.push(natives.esp_efuse_read_reg(EFUSE_BLK0, n) >>> 0);
  const nvsKey = EFUSE_BLK_KEY0 + NVS_HMAC_KEY_ID;
  return s3ChipState({
    block0,
    flashMode: natives.esp_get_flash_encryption_mode(),
    nvsKeyPurpose: natives.esp_efuse_get_key_purpose(nvsKey),
    nvsKeyReadProtected: natives.esp_efuse_get_key_dis_read(nvsKey),
    secureVersion: natives.esp_efuse_read_secure_version(),
  });
}
