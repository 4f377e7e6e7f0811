/*
 * Where the vault lives on the device: its own two NVS namespaces, and, on a
 * platform with no key hardware, its key.
 *
 * The vault's records go through the same two-slot scheme as every other key
 * (./kv-slots: the SDK's preference.set erases before it writes, and the vault
 * relies on single-key writes being atomic), in namespaces nothing else uses,
 * so a factory reset (Vault.wipeAll) can never touch the boot counter or the
 * sequence marks in ./store's domains, and those can never collide with a
 * vault record name.
 *
 * StoredKey is the vault key for boards without an HMAC peripheral (the
 * classic ESP32) and for the simulator: 32 random bytes made at first use and
 * kept in a namespace of their own. That key is only as secret as the flash:
 * the classic ESP32 allows it only with flash encryption and NVS encryption on
 * (./vault-key-fe), the simulator says at every boot that it protects nothing
 * (./vault-key-sim).
 */
import Preference from "preference";
import type { KeyValueStore, Random } from "../core/ports";
import type { KeyProvider } from "../core/vault";
import { SlottedStore } from "./kv-slots";

/** NVS namespaces of the vault's records; at most 15 characters each, never shared. */
export const VAULT_DOMAINS = ["dw.vault.0", "dw.vault.1"] as const;
/** NVS namespace of a stored (non-hardware) vault key. */
export const VAULT_KEY_DOMAIN = "dw.vkey";

export function openVaultStore(): KeyValueStore {
  return new SlottedStore(Preference, { domains: VAULT_DOMAINS });
}

const KEY_BYTES = 32;
const KEY_NAME = "k";

export class StoredKeyError extends Error {
  override name = "StoredKeyError";
}

export interface StoredKeyOptions {
  random: Random;
  /** Asked before every use: throw StoredKeyError to refuse (the vault then reports "no-key"). */
  guard?: () => void;
}

/** A vault key kept in flash: see the module comment for when that is acceptable. */
export class StoredKey implements KeyProvider {
  #options: StoredKeyOptions;

  constructor(options: StoredKeyOptions) {
    this.#options = options;
  }

  storageKey(): Uint8Array {
    this.#options.guard?.();
    const stored = Preference.get(VAULT_KEY_DOMAIN, KEY_NAME);
    if (stored !== undefined) {
      if (!(stored instanceof ArrayBuffer) || stored.byteLength !== KEY_BYTES) throw new StoredKeyError(`vault key: ${VAULT_KEY_DOMAIN}/${KEY_NAME} is not a ${KEY_BYTES}-byte key`);
      return new Uint8Array(stored.slice(0));
    }
    const key = new Uint8Array(KEY_BYTES);
    this.#options.random.fill(key);
    Preference.set(VAULT_KEY_DOMAIN, KEY_NAME, key.slice().buffer);
    return key;
  }
}
