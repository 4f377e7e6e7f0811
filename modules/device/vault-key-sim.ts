/*
 * The vault key in Moddable's Linux simulator: DEVELOPMENT ONLY, it protects
 * nothing.
 *
 * The simulator has no key hardware. So that the real vault code (sealing,
 * power-safe writes, tamper reports) runs there unchanged, its key is 32 bytes
 * from getrandom(2) kept in a preference namespace of their own
 * (./vault-store StoredKey) — which on lin is the same preferences file on
 * disk as the vault records. Anyone who can read that file can open every
 * secret. This is said in the log at every boot. hardware/lin.json maps
 * "device/vault-key" here; no board manifest does (host-tests check it).
 */
import type { Log, Random } from "../core/ports";
import type { KeyProvider } from "../core/vault";
import { StoredKey } from "./vault-store";

export interface VaultKeyOptions {
  random: Random;
  log: Log;
  /** Always true in effect: the simulator has nothing better. */
  allowPlainKey: boolean;
}

export function createVaultKeyProvider(options: VaultKeyOptions): { keys: KeyProvider; kind: string } {
  options.log("warn", "DEVELOPMENT ONLY: the simulator's vault key is stored next to the vault in the preferences file; it protects nothing");
  return { keys: new StoredKey({ random: options.random }), kind: "development key (simulator, unprotected)" };
}
