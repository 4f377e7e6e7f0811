/*
 * The classic ESP32's locks (the ESP32-CAM): "device/chip-lock" on that board
 * (hardware/esp32cam.json binds the functions).
 *
 * BLOCK0 words through esp_efuse_read_reg for Secure Boot (ABS_DONE_0/1),
 * JTAG_DISABLE and UART_DOWNLOAD_DIS, and esp_get_flash_encryption_mode().
 * Without an HMAC peripheral this chip is never judged locked: there is no
 * release build for it, and a development build says what is missing.
 */
import FFI from "mc/ffi";
import type { ChipState } from "../core/chip-lock";
import { esp32ChipState } from "./efuse";

/** The glue mcconfig generates for hardware/esp32cam.json's "ffi" entry. */
interface EspEfuse {
  esp_efuse_read_reg(block: number, register: number): number;
  esp_get_flash_encryption_mode(): number;
}

const EFUSE_BLK0 = 0;
const BLOCK0_WORDS = 7;

export function readChipState(): ChipState {
  const natives = new FFI() as unknown as EspEfuse;
  const block0: number[] = [];
  for (let n = 0; n < BLOCK0_WORDS; n++) block0.push(natives.esp_efuse_read_reg(EFUSE_BLK0, n) >>> 0);
  return esp32ChipState({ block0, flashMode: natives.esp_get_flash_encryption_mode() });
}
