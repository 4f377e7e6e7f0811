/*
 * Atomic single-key writes on top of Moddable's `preference`.
 *
 * The KeyValueStore port promises that writing one key is atomic: the sequence
 * counter depends on it, because a key that vanishes reads as 0 and would
 * restart sequence numbers. NVS itself replaces an entry atomically, but the
 * SDK's preference.set (modules/files/preference/esp32/modPreference.c) erases
 * the key first and then writes it, committing in between, so a power cut at
 * the wrong moment loses the key. This module never overwrites the only copy:
 * every key lives in two domains (slots), each value carries a generation
 * number, a write goes to the slot that does not hold the newest value, and a
 * read returns the newest intact slot. A cut during a write leaves the previous
 * value readable; a cut during a delete leaves the newest value in place.
 *
 * Platform-free (the preference module is passed in), so the host tests can
 * drive it through simulated power cuts.
 */
import { KV_MAX_KEY, KV_MAX_VALUE, type KeyValueStore } from "../core/ports";

/** The part of Moddable's `preference` module this store uses. */
export interface PreferenceLike {
  get(domain: string, key: string): unknown;
  set(domain: string, key: string, value: ArrayBuffer): void;
  delete(domain: string, key: string): void;
  keys(domain: string): string[];
}

export interface SlottedStoreOptions {
  /** Two distinct preference domains (NVS namespaces), at most 15 characters each. */
  domains: readonly [string, string];
}

/** Every slot value starts with this byte, then a 4-byte big-endian generation. */
const MAGIC = 0xd5;
const HEADER = 5;
const MAX_DOMAIN = 15;

interface Slot {
  index: 0 | 1;
  generation: number;
  value: Uint8Array;
}

/** Serial-number comparison (RFC 1982 style) so generations may wrap past 2^32. */
function newer(a: number, b: number): boolean {
  const d = (a - b) >>> 0;
  return d !== 0 && d < 0x80000000;
}

export class SlottedStore implements KeyValueStore {
  readonly domains: readonly [string, string];
  #prefs: PreferenceLike;

  constructor(prefs: PreferenceLike, options: SlottedStoreOptions) {
    const [a, b] = options.domains;
    for (const d of options.domains) {
      if (typeof d !== "string" || d.length === 0 || d.length > MAX_DOMAIN) throw new RangeError("kv: domain names must be 1-15 characters");
    }
    if (a === b) throw new RangeError("kv: the two slot domains must differ");
    this.#prefs = prefs;
    this.domains = [a, b];
  }

  read(key: string): Uint8Array | undefined {
    checkKey(key);
    return this.#newest(key)?.value.slice();
  }

  write(key: string, value: Uint8Array): void {
    checkKey(key);
    if (!(value instanceof Uint8Array)) throw new TypeError("kv: value must be a Uint8Array");
    if (value.length > KV_MAX_VALUE) throw new RangeError(`kv: value longer than ${KV_MAX_VALUE} bytes`);
    const current = this.#newest(key);
    const generation = current ? (current.generation + 1) >>> 0 : 1;
    const target = current ? (1 - current.index) as 0 | 1 : 0;
    const record = new Uint8Array(HEADER + value.length);
    record[0] = MAGIC;
    record[1] = generation >>> 24;
    record[2] = (generation >>> 16) & 0xff;
    record[3] = (generation >>> 8) & 0xff;
    record[4] = generation & 0xff;
    record.set(value, HEADER);
    this.#prefs.set(this.domains[target], key, record.buffer);
  }

  delete(key: string): void {
    checkKey(key);
    const a = this.#slot(0, key);
    const b = this.#slot(1, key);
    // Older copy first: a cut between the two deletes leaves the newest value, never an older one.
    const [first, second] = a && b && newer(a.generation, b.generation) ? [1, 0] as const : [0, 1] as const;
    this.#prefs.delete(this.domains[first], key);
    this.#prefs.delete(this.domains[second], key);
  }

  keys(): string[] {
    const seen = new Set<string>();
    for (const domain of this.domains) for (const key of this.#prefs.keys(domain)) seen.add(key);
    return [...seen];
  }

  #newest(key: string): Slot | undefined {
    const a = this.#slot(0, key);
    const b = this.#slot(1, key);
    if (!a) return b;
    if (!b) return a;
    return newer(b.generation, a.generation) ? b : a;
  }

  #slot(index: 0 | 1, key: string): Slot | undefined {
    const raw = this.#prefs.get(this.domains[index], key);
    if (raw === undefined) return undefined;
    // NVS replaces an entry atomically, so a malformed slot is not a torn write:
    // something else wrote here. Refuse it rather than guess.
    if (!(raw instanceof ArrayBuffer) || raw.byteLength < HEADER) throw new Error(`kv: ${this.domains[index]}/${key} is not a slot record`);
    const bytes = new Uint8Array(raw);
    if (bytes[0] !== MAGIC) throw new Error(`kv: ${this.domains[index]}/${key} is not a slot record`);
    const generation = ((bytes[1] << 24) | (bytes[2] << 16) | (bytes[3] << 8) | bytes[4]) >>> 0;
    return { index, generation, value: bytes.subarray(HEADER) };
  }
}

/** NVS key names are C strings of at most 15 bytes, so printable ASCII only. */
const KEY_SHAPE = /^[\x21-\x7e]+$/;

function checkKey(key: string): void {
  if (typeof key !== "string" || key.length === 0 || key.length > KV_MAX_KEY || !KEY_SHAPE.test(key)) {
    throw new RangeError(`kv: keys must be 1-${KV_MAX_KEY} printable ASCII characters`);
  }
}
