/*
 * The Linux simulator's "chip": nothing is locked, and it says so. There is no
 * release build for the simulator, so core/chip-lock only names what is missing.
 */
import type { ChipState } from "../core/chip-lock";

export function readChipState(): ChipState {
  return { chip: "Linux simulator", secureBoot: false, flashEncryption: "disabled", nvsEncryptionKey: false, romDownload: "enabled", jtagDisabled: false };
}
