/*
 * What the chip's eFuses mean for its locks: raw eFuse words and ESP-IDF
 * answers in, core/chip-lock's ChipState out.
 *
 * The adapters ("device/chip-lock": ./chip-lock on the S3 boards,
 * ./chip-lock-esp32 on the classic ESP32) read through the XS FFI and hand
 * the raw values here, so the bit positions are checked by the host tests
 * against ESP-IDF's eFuse tables instead of only on a chip. Bits are counted
 * from the start of BLOCK0 as those tables (esp_efuse_table.csv) give them;
 * esp_efuse_read_reg(EFUSE_BLK0, n) returns 32-bit word n.
 *
 * esp_secure_boot_enabled() is a static inline in ESP-IDF v6 and cannot be
 * bound, so Secure Boot is read from its eFuse bit, as that function does.
 * Platform-free.
 */
import type { ChipState, FlashEncryptionMode } from "../core/chip-lock";

/** ESP32-S3 BLOCK0 bit positions (components/efuse/esp32s3/esp_efuse_table.csv). */
export const S3_BLOCK0 = {
  DIS_PAD_JTAG: 51,
  SECURE_BOOT_EN: 116,
  DIS_USB_JTAG: 118,
  DIS_DOWNLOAD_MODE: 128,
  ENABLE_SECURITY_DOWNLOAD: 133,
} as const;

/** Classic ESP32 BLOCK0 bit positions (components/efuse/esp32/esp_efuse_table.csv). */
export const ESP32_BLOCK0 = {
  UART_DOWNLOAD_DIS: 27,
  ABS_DONE_0: 196,
  ABS_DONE_1: 197,
  JTAG_DISABLE: 198,
} as const;

/** esp_flash_enc_mode_t. */
const FLASH_MODES: Record<number, FlashEncryptionMode> = { 0: "disabled", 1: "development", 2: "release" };
/** esp_efuse_purpose_t on the S3: ESP_EFUSE_KEY_PURPOSE_HMAC_UP. */
export const KEY_PURPOSE_HMAC_UP = 8;
/** esp_efuse_block_t of BLOCK_KEY0; BLOCK_KEYn is this plus n. */
export const EFUSE_BLK_KEY0 = 4;
/** CONFIG_NVS_SEC_HMAC_EFUSE_KEY_ID of the release sdkconfigs: NVS encryption's HMAC key is BLOCK_KEY3. */
export const NVS_HMAC_KEY_ID = 3;

export class EfuseError extends Error {
  override name = "EfuseError";
}

/** BLOCK0 words 0..5, as esp_efuse_read_reg(EFUSE_BLK0, n) returns them. */
export type Block0 = readonly number[];

export function bit(block0: Block0, position: number): boolean {
  const word = block0[position >> 5];
  if (word === undefined || !Number.isInteger(word)) throw new EfuseError(`eFuse: BLOCK0 word ${position >> 5} was not read`);
  return ((word >>> (position & 31)) & 1) === 1;
}

export function flashEncryptionMode(mode: number): FlashEncryptionMode {
  const m = FLASH_MODES[mode];
  if (!m) throw new EfuseError(`eFuse: esp_get_flash_encryption_mode returned ${mode}, which is no mode this firmware knows`);
  return m;
}

export interface S3Reading {
  block0: Block0;
  /** esp_get_flash_encryption_mode(). */
  flashMode: number;
  /** esp_efuse_get_key_purpose(BLOCK_KEY3). */
  nvsKeyPurpose: number;
  /** esp_efuse_get_key_dis_read(BLOCK_KEY3): nonzero when software cannot read the key. */
  nvsKeyReadProtected: number;
  /** esp_efuse_read_secure_version(). */
  secureVersion: number;
}

export function s3ChipState(r: S3Reading): ChipState {
  const romDownload = bit(r.block0, S3_BLOCK0.DIS_DOWNLOAD_MODE) ? "disabled" : bit(r.block0, S3_BLOCK0.ENABLE_SECURITY_DOWNLOAD) ? "secure" : "enabled";
  return {
    chip: "ESP32-S3",
    secureBoot: bit(r.block0, S3_BLOCK0.SECURE_BOOT_EN),
    flashEncryption: flashEncryptionMode(r.flashMode),
    nvsEncryptionKey: r.nvsKeyPurpose === KEY_PURPOSE_HMAC_UP && r.nvsKeyReadProtected !== 0,
    romDownload,
    // Both ways in: the pads (DIS_PAD_JTAG) and the USB-Serial-JTAG bridge (DIS_USB_JTAG).
    jtagDisabled: bit(r.block0, S3_BLOCK0.DIS_PAD_JTAG) && bit(r.block0, S3_BLOCK0.DIS_USB_JTAG),
    secureVersion: r.secureVersion >>> 0,
  };
}

export interface Esp32Reading {
  block0: Block0;
  flashMode: number;
}

/** The classic ESP32 has no HMAC peripheral, so its NVS key can never be an HMAC key: it is never "locked". */
export function esp32ChipState(r: Esp32Reading): ChipState {
  return {
    chip: "ESP32",
    secureBoot: bit(r.block0, ESP32_BLOCK0.ABS_DONE_0) || bit(r.block0, ESP32_BLOCK0.ABS_DONE_1),
    flashEncryption: flashEncryptionMode(r.flashMode),
    nvsEncryptionKey: false,
    romDownload: bit(r.block0, ESP32_BLOCK0.UART_DOWNLOAD_DIS) ? "disabled" : "enabled",
    jtagDisabled: bit(r.block0, ESP32_BLOCK0.JTAG_DISABLE),
  };
}
