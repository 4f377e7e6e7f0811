/*
 * Deterministic stand-ins for the core's ports, for tests and benchmarks only.
 *
 * The same file runs on Node (imported directly) and on XS (served by the
 * harness as "harness/deterministic"), so both engines see identical "random"
 * bytes and identical stored state, and an XS run can be compared with a Node
 * run byte for byte. Like the core it imports nothing at run time and uses
 * only the language: integer arithmetic via Math.imul and >>>, which every
 * engine computes the same way. NOT a cryptographic generator.
 */
import type { KeyValueStore, Random } from "../../modules/core/ports";

/** sfc32 seeded through splitmix32: fast, well mixed, and identical on every engine. */
export class SeededRandom implements Random {
  #a: number;
  #b: number;
  #c: number;
  #d: number;
  /** Bytes handed out so far, so a test can check who drew entropy. */
  drawn = 0;

  constructor(seed: number) {
    if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) throw new RangeError("SeededRandom: seed must be a uint32");
    let s = seed >>> 0;
    const splitmix = (): number => {
      s = (s + 0x9e3779b9) >>> 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.#a = splitmix();
    this.#b = splitmix();
    this.#c = splitmix();
    this.#d = splitmix();
    for (let i = 0; i < 12; i++) this.#next();
  }

  #next(): number {
    const t = (((this.#a + this.#b) >>> 0) + this.#d) >>> 0;
    this.#d = (this.#d + 1) >>> 0;
    this.#a = this.#b ^ (this.#b >>> 9);
    this.#b = (this.#c + (this.#c << 3)) >>> 0;
    this.#c = ((this.#c << 21) | (this.#c >>> 11)) >>> 0;
    this.#c = (this.#c + t) >>> 0;
    return t;
  }

  fill(target: Uint8Array): void {
    for (let i = 0; i < target.length; i += 4) {
      let word = this.#next();
      for (let k = 0; k < 4 && i + k < target.length; k++) {
        target[i + k] = word & 255;
        word >>>= 8;
      }
    }
    this.drawn += target.length;
  }
}

/** KeyValueStore in RAM with the same limits the device's preference store enforces. */
export class MemoryStore implements KeyValueStore {
  #entries = new Map<string, Uint8Array>();

  read(key: string): Uint8Array | undefined {
    const value = this.#entries.get(key);
    return value === undefined ? undefined : value.slice();
  }

  write(key: string, value: Uint8Array): void {
    // Literal limits: a type import of ./ports is erased, so its constants are not available here.
    if (key.length < 1 || key.length > 15) throw new RangeError(`MemoryStore: key "${key}" must be 1-15 characters`);
    if (value.length > 4000) throw new RangeError(`MemoryStore: value for "${key}" exceeds 4000 bytes`);
    this.#entries.set(key, value.slice());
  }

  delete(key: string): void {
    this.#entries.delete(key);
  }

  keys(): string[] {
    return [...this.#entries.keys()].sort();
  }
}
