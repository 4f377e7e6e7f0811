/*
 * The device's KeyValueStore: NVS through Moddable's `preference` module.
 *
 * Values are stored as ArrayBuffers (NVS blobs) in two slot domains so that a
 * single-key write survives a power cut (see ./kv-slots for why the plain
 * preference.set does not). On the Linux simulator the same module writes a
 * JSON file under the simulator's file root.
 */
import Preference from "preference";
import type { KeyValueStore } from "../core/ports";
import { SlottedStore } from "./kv-slots";

/** NVS namespaces; at most 15 characters each. Never reuse them for anything else. */
export const STORE_DOMAINS = ["dw.kv.0", "dw.kv.1"] as const;

export function openStore(): KeyValueStore {
  return new SlottedStore(Preference, { domains: STORE_DOMAINS });
}
