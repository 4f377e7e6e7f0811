/*
 * The vault key on an ESP32-S3 board: the HMAC peripheral over an eFuse key
 * (./key-provider), which software never reads.
 *
 * "device/vault-key" names one module per kind of key hardware, all with this
 * export: this one on the S3 boards (hardware/esp32s3.json), ./vault-key-fe on
 * the classic ESP32 (no HMAC peripheral), ./vault-key-sim on the simulator.
 * Without a burned key the provider throws, the vault reports "no-key", and
 * the device stays unprovisioned saying why (docs/secrets.md: burning the key).
 */
import type { Log, Random } from "../core/ports";
import type { KeyProvider } from "../core/vault";
import { createEfuseKeyProvider } from "./key-provider";

export interface VaultKeyOptions {
  random: Random;
  log: Log;
  /** Development builds only: see ./vault-key-fe. Ignored here. */
  allowPlainKey: boolean;
}

export function createVaultKeyProvider(_options: VaultKeyOptions): { keys: KeyProvider; kind: string } {
  return { keys: createEfuseKeyProvider(), kind: "eFuse HMAC (BLOCK_KEY4)" };
}
