/*
 * Test support for the vault, provisioning and log tests (not a test file itself).
 *
 * - CuttableStore: a KeyValueStore wrapper that "loses power" at its Nth write
 *   or delete: that operation and every later one throws, as on a device the
 *   reboot is the next thing that happens. Each single write is still atomic,
 *   which is what NVS and the FileStore guarantee and nothing more.
 * - checkCuts: runs a scenario with a cut at every write/delete step (and a
 *   second cut at every step of the recovering open), then reopens and checks
 *   every secret against the values it may legitimately hold.
 * - findLeaks: looks for any 8-byte fragment of a secret in text or bytes, raw,
 *   hex, or base64/base64url at every alignment.
 */
import type { KeyValueStore } from "../modules/core/ports";
import { toHex } from "../modules/core/bytes";
import { MemoryStore } from "../modules/host/file-store";

export class PowerCut extends Error {
  override name = "PowerCut";
}

export class CuttableStore implements KeyValueStore {
  /** Writes and deletes that took effect. */
  ops = 0;
  dead = false;
  constructor(
    readonly inner: KeyValueStore,
    readonly cutAt = Number.POSITIVE_INFINITY,
  ) {}

  #alive(): void {
    if (this.dead) throw new PowerCut("power is off");
  }
  #step(): void {
    this.#alive();
    if (this.ops === this.cutAt) {
      this.dead = true;
      throw new PowerCut(`power cut before operation ${this.ops}`);
    }
    this.ops++;
  }
  read(key: string) {
    this.#alive();
    return this.inner.read(key);
  }
  keys() {
    this.#alive();
    return this.inner.keys();
  }
  write(key: string, value: Uint8Array) {
    this.#step();
    this.inner.write(key, value);
  }
  delete(key: string) {
    this.#step();
    this.inner.delete(key);
  }
}

export function cloneStore(store: MemoryStore): MemoryStore {
  const copy = new MemoryStore();
  for (const [k, v] of store.map) copy.map.set(k, v.slice());
  return copy;
}

/** What a checker needs from a vault-like thing after a reboot. */
export interface Reopened {
  /** Throws when the secret is damaged. */
  get(name: string): Uint8Array | undefined;
  damaged(): string[];
}

export type Value = Uint8Array | undefined;

export interface CutScenario {
  name: string;
  /** Builds the state before the operation, on a store that never fails. */
  setup(store: KeyValueStore): void;
  /** The operation under test (opens its own vault on the given store). */
  mutate(store: KeyValueStore): void;
  /** For every secret involved (unrelated ones included), the values it may hold after any cut. */
  allowed: Map<string, Value[]>;
  /** Values every secret must hold when the operation completes. */
  final: Map<string, Value>;
  /** All secrets must be at the same position in their allowed list (all old, or all new). */
  allOrNothing?: boolean;
}

export interface CutReport {
  scenario: string;
  /** Cut points of the operation itself (0..operations). */
  cuts: number;
  /** Additional cut points inside the recovering open after each cut. */
  nestedCuts: number;
  violations: string[];
}

function same(a: Value, b: Value): boolean {
  if (a === undefined || b === undefined) return a === b;
  return a.length === b.length && toHex(a) === toHex(b);
}

function describe(v: Value): string {
  return v === undefined ? "absent" : `${v.length} bytes ${toHex(v.subarray(0, 6))}…`;
}

function check(s: CutScenario, reopened: Reopened, where: string, out: string[], expectFinal = false): void {
  const damaged = reopened.damaged();
  if (damaged.length) out.push(`${where}: damaged after reopen: ${damaged.join(", ")}`);
  const positions: number[] = [];
  for (const [name, allowed] of s.allowed) {
    let got: Value;
    try {
      got = reopened.get(name);
    } catch (e) {
      out.push(`${where}: ${name} unreadable: ${(e as Error).message}`);
      continue;
    }
    const want = expectFinal ? [s.final.get(name)] : allowed;
    const at = want.findIndex((v) => same(v, got));
    if (at < 0) out.push(`${where}: ${name} is ${describe(got)}, expected one of ${want.map(describe).join(" | ")}`);
    else if (new Set(allowed.map(describe)).size > 1) positions.push(at);
  }
  if (s.allOrNothing && !expectFinal && new Set(positions).size > 1) out.push(`${where}: secrets are at different states (${positions.join(",")}): not all-or-nothing`);
}

/**
 * Run a scenario with a cut before every write/delete, reopen (itself cut at
 * every step once), check, then finish the operation on the recovered store
 * and check it reaches the final values.
 */
export function checkCuts(s: CutScenario, reopen: (store: KeyValueStore) => Reopened, limit = 10_000): CutReport {
  const base = new MemoryStore();
  s.setup(base);
  const probe = new CuttableStore(cloneStore(base));
  s.mutate(probe);
  const total = probe.ops;
  if (total > limit) throw new Error(`scenario ${s.name}: ${total} operations, over the bound ${limit}`);
  const violations: string[] = [];
  check(s, reopen(probe.inner), `${s.name} uncut`, violations, true);
  let nestedCuts = 0;
  for (let n = 0; n <= total; n++) {
    const disk = cloneStore(base);
    const cut = new CuttableStore(disk, n);
    try {
      s.mutate(cut);
    } catch (e) {
      if (!(e instanceof PowerCut)) violations.push(`${s.name} cut ${n}: threw ${(e as Error).name}: ${(e as Error).message}`);
    }
    // The recovering open may write too (garbage collection, finishing a reset): cut it at each of its steps.
    const recovery = new CuttableStore(cloneStore(disk));
    reopen(recovery);
    for (let m = 0; m < recovery.ops && m < limit; m++) {
      const again = cloneStore(disk);
      try {
        reopen(new CuttableStore(again, m));
      } catch (e) {
        if (!(e instanceof PowerCut)) violations.push(`${s.name} cut ${n}/${m}: open threw ${(e as Error).message}`);
      }
      check(s, reopen(again), `${s.name} cut ${n} then ${m}`, violations);
      nestedCuts++;
    }
    check(s, reopen(disk), `${s.name} cut ${n}`, violations);
    // And the device keeps working: doing the operation again after the reboot reaches the final state.
    try {
      s.mutate(disk);
      check(s, reopen(disk), `${s.name} cut ${n}, redone`, violations, true);
    } catch (e) {
      violations.push(`${s.name} cut ${n}: redoing failed: ${(e as Error).message}`);
    }
  }
  return { scenario: s.name, cuts: total + 1, nestedCuts, violations };
}

// ------------------------------------------------------------------ leaks

export interface SecretSample {
  label: string;
  bytes: Uint8Array;
}

function b64(bytes: Uint8Array, url: boolean): string {
  const s = Buffer.from(bytes).toString("base64").replace(/=+$/, "");
  return url ? s.replace(/\+/g, "-").replace(/\//g, "_") : s;
}

/**
 * Every way an 8-byte (or longer) fragment of a secret could show up in a
 * haystack. Windows that lie inside a public value (e.g. the thing name inside
 * the certificate's subject) are not secrets and are skipped.
 */
export function findLeaks(haystack: Uint8Array | string, secrets: SecretSample[], publicValues: Uint8Array[] = [], window = 8): string[] {
  const bytes = typeof haystack === "string" ? new Uint8Array(Buffer.from(haystack, "utf8")) : haystack;
  const text = Buffer.from(bytes).toString("latin1");
  const lower = text.toLowerCase();
  const publicHex = publicValues.map((p) => toHex(p));
  const found: string[] = [];
  for (const s of secrets) {
    if (s.bytes.length < window) throw new Error(`secret ${s.label} is shorter than ${window} bytes: it cannot be checked by windows`);
    const hex = toHex(s.bytes);
    // Raw and hex, every window.
    for (let i = 0; i + window <= s.bytes.length; i++) {
      const w = s.bytes.subarray(i, i + window);
      const wHex = hex.slice(2 * i, 2 * (i + window));
      if (publicHex.some((p) => p.includes(wHex))) continue;
      if (text.includes(Buffer.from(w).toString("latin1"))) {
        found.push(`${s.label}: raw bytes ${i}..${i + window}`);
        break;
      }
      if (lower.includes(wHex)) {
        found.push(`${s.label}: hex of bytes ${i}..${i + window}`);
        break;
      }
    }
    // base64 and base64url at the three alignments: 8 leaked bytes encode to at least 10 exact characters.
    for (const url of [false, true]) {
      for (let shift = 0; shift < 3; shift++) {
        const enc = b64(s.bytes.subarray(shift), url);
        const chars = Math.floor((window * 8) / 6);
        for (let i = 0; i + chars <= enc.length - 1; i += 4) {
          const piece = enc.slice(i, i + chars);
          if (text.includes(piece)) {
            found.push(`${s.label}: base64${url ? "url" : ""} at shift ${shift}, chars ${i}..${i + chars}`);
            break;
          }
        }
      }
    }
  }
  return found;
}
