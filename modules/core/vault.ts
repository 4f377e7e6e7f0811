/*
 * The vault: Doorward's named secrets at rest, encrypted, authenticated and power-safe.
 *
 * It implements the SecretStore port over a KeyValueStore (NVS through
 * `preference` on the device, one file per key in the simulator) with
 * tweetnacl secretbox (XSalsa20-Poly1305), a fresh random nonce per record, and
 * a key that never comes from the store: a KeyProvider supplies 32 bytes (the
 * HMAC peripheral over an eFuse key on an ESP32-S3, a 0600 key file on a
 * laptop) and the vault mixes them with a random salt kept in "v_meta":
 * SHA-512(domain ‖ provider key ‖ salt) gives the record key and a key check,
 * so a wrong key is reported as such instead of as every secret being damaged,
 * and a factory reset (which deletes the salt) leaves old ciphertext that no
 * longer matches any vault. See vault-record.ts for the record format.
 *
 * Power safety rests on one property of the store: a single key write is
 * atomic. A secret up to CHUNK_BYTES lives entirely in its head record, so
 * writing it is one atomic write. A larger one is written as chunks into the
 * slot its current head does not use, under a fresh random generation; then
 * one head write, which names the slot and every chunk's nonce, switches to the
 * new value; then the old chunks are deleted. Deleting removes the head first.
 * A factory reset first writes a marker, so once begun it completes at the
 * next open. Opening garbage-collects chunks no valid head references, so
 * after a cut at any step each secret reads as exactly its old or its new value.
 *
 * Every write also takes the next value of a vault-wide counter as its
 * generation and then rewrites "v_meta", which seals that counter and each
 * live secret's generation (the index). A head written back from an older
 * flash dump authenticates but is not the generation the index names, so it
 * is refused as stale; a deleted secret written back is not named at all.
 * A head whose generation is the index's next count is the last write, cut
 * short before its index update: it is taken, and the index completed.
 *
 * Opening never throws because of what is in the store: a record that fails
 * authentication, is truncated, swapped or missing a chunk marks that secret
 * damaged (status() and get() name it), and the other secrets stay readable.
 * Writing into a vault whose key does not match is refused until wipeAll().
 * Nothing here ever logs a value: only names, counts and reasons.
 */
import nacl from "tweetnacl";
import type { KeyValueStore, Log, Random, SecretStore, Sha512 } from "./ports";
import { bytesEqual, concatBytes, utf8Encode, wipe } from "./bytes";
import {
  CHECK_BYTES, CHUNK_BYTES, DAMAGE_EXPLAINED, GEN_BYTES, MAX_CHUNKS, META_KEY, NONCE_BYTES, SALT_BYTES, SECRET_NAME_MAX,
  VAULT_FORMAT, WIPE_KEY, META_FORMAT_INDEXED, decodeIndex, encodeIndex, epochGen, type VaultIndex, chunkKey, decodeChunk, decodeHead, encodeChunk, encodeHead, headKey, isSecretName, openRecord,
  parseKey, sealRecord, type DamageReason, type Slot,
} from "./vault-record";

export { CHUNK_BYTES, SECRET_NAME_MAX, isSecretName, type DamageReason } from "./vault-record";

/** Where the vault's storage key comes from. Never from the store the vault writes to. */
export interface KeyProvider {
  /** 32 bytes, the same on every call for one device. The vault wipes the array it gets, so return a fresh copy. */
  storageKey(): Uint8Array;
}

export interface VaultOptions {
  store: KeyValueStore;
  keys: KeyProvider;
  random: Random;
  log?: Log;
  /** Device: the native SHA-512 (Moddable `crypt` Digest). Used once per open to derive the key. */
  sha512?: Sha512;
  /** Largest secret accepted by set(). Default 16384; at most MAX_CHUNKS × CHUNK_BYTES. */
  maxSecretBytes?: number;
}

export interface DamagedSecret {
  name: string;
  reason: DamageReason;
  message: string;
}

export interface VaultStatus {
  /** empty: no secret stored; ok: every stored secret authenticates; damaged: at least one does not. */
  state: "empty" | "ok" | "damaged";
  /** Readable secrets, sorted. */
  names: string[];
  /** Secrets that exist but cannot be read, sorted by name. */
  damaged: DamagedSecret[];
  /** A problem with the whole vault (wrong key, missing salt, no key): writing is refused until wipeAll(). */
  problem?: { reason: DamageReason; message: string };
}

/** A secret (or, with secret undefined, the whole vault) cannot be used. The message names it. */
export class VaultError extends Error {
  override name = "VaultError";
  constructor(
    readonly secret: string | undefined,
    readonly reason: DamageReason,
    message?: string,
  ) {
    super(message ?? describeDamage(secret, reason));
  }
}

export function describeDamage(secret: string | undefined, reason: DamageReason): string {
  const what = secret === undefined ? "the vault" : `secret "${secret}"`;
  return `vault: ${what} is damaged: ${DAMAGE_EXPLAINED[reason]}; provision the device again`;
}

const KDF_DOMAIN = utf8Encode("doorward/vault/key/v1");
const DEFAULT_MAX = 16384;
const KEY_BYTES = 32;

interface Entry {
  gen: Uint8Array;
  slot: Slot;
  count: number;
  length: number;
  /** Nonce of each chunk, as recorded by the head. */
  nonces: Uint8Array[];
}

type ReadResult = { entry: Entry; value: Uint8Array } | { reason: DamageReason };

export class Vault implements SecretStore {
  readonly maxSecretBytes: number;
  #store: KeyValueStore;
  #keys: KeyProvider;
  #random: Random;
  #log: Log;
  #sha512: Sha512;
  #key: Uint8Array | undefined;
  #problem: DamageReason | undefined;
  #entries = new Map<string, Entry>();
  #damaged = new Map<string, DamageReason>();
  #salt: Uint8Array | undefined;
  #check2: Uint8Array | undefined;
  /** Every live secret's write generation; undefined while the vault has no key. */
  #index: VaultIndex | undefined;
  /** A meta record of the first format (before the index): read as it is, then upgraded. */
  #legacy = false;

  /** Open the vault at boot. Never throws because of stored contents; read status() to learn what it found. */
  static open(options: VaultOptions): Vault {
    const vault = new Vault(options);
    vault.#load();
    return vault;
  }

  private constructor(options: VaultOptions) {
    const max = options.maxSecretBytes ?? DEFAULT_MAX;
    if (!Number.isInteger(max) || max < 1 || max > MAX_CHUNKS * CHUNK_BYTES) {
      throw new RangeError(`vault: maxSecretBytes must be 1-${MAX_CHUNKS * CHUNK_BYTES}`);
    }
    this.maxSecretBytes = max;
    this.#store = options.store;
    this.#keys = options.keys;
    this.#random = options.random;
    this.#log = options.log ?? (() => {});
    this.#sha512 = options.sha512 ?? ((data) => nacl.hash(data));
  }

  // ------------------------------------------------------------------ reading

  get(name: string): Uint8Array | undefined {
    checkName(name);
    const known = this.#damaged.get(name);
    if (known !== undefined) throw new VaultError(name, known);
    if (!this.#entries.has(name)) return undefined;
    let result = this.#read(name);
    const listed = this.#index?.names.get(name);
    if (!("reason" in result) && !(listed && bytesEqual(result.entry.gen, listed))) {
      wipe(result.value);
      result = { reason: "stale" };
    }
    if ("reason" in result) {
      // Changed since open: remember it so status() and the provisioning state see it too.
      this.#entries.delete(name);
      this.#damaged.set(name, result.reason);
      this.#log("warn", "vault: secret damaged", { secret: name, reason: result.reason });
      throw new VaultError(name, result.reason);
    }
    return result.value;
  }

  has(name: string): boolean {
    return this.#entries.has(name);
  }

  /** Readable secret names, sorted. */
  list(): string[] {
    return [...this.#entries.keys()].sort();
  }

  status(): VaultStatus {
    const damaged = [...this.#damaged.keys()].sort().map((name) => {
      const reason = this.#damaged.get(name)!;
      return { name, reason, message: describeDamage(name, reason) };
    });
    const status: VaultStatus = {
      state: this.#problem !== undefined || damaged.length > 0 ? "damaged" : this.#entries.size > 0 ? "ok" : "empty",
      names: this.list(),
      damaged,
    };
    if (this.#problem !== undefined) status.problem = { reason: this.#problem, message: describeDamage(undefined, this.#problem) };
    return status;
  }

  // ------------------------------------------------------------------ writing

  set(name: string, value: Uint8Array): void {
    checkName(name);
    if (!(value instanceof Uint8Array)) throw new TypeError("vault: a secret is a Uint8Array");
    if (value.length > this.maxSecretBytes) {
      throw new RangeError(`vault: secret "${name}" is ${value.length} bytes, limit ${this.maxSecretBytes}`);
    }
    const key = this.#writeKey();
    try {
      this.#write(key, name, value);
    } catch (e) {
      this.#resync(name);
      throw e;
    }
  }

  delete(name: string): void {
    checkName(name);
    try {
      const keys = this.#store.keys();
      // Out of the index first: a head the index does not name is never read again, so a copy written back stays dead.
      if (this.#index?.names.delete(name)) {
        this.#index.epoch++;
        this.#writeMeta();
      }
      if (keys.indexOf(headKey(name)) >= 0) this.#store.delete(headKey(name));
      this.#entries.delete(name);
      this.#damaged.delete(name);
      for (const k of keys) {
        const p = parseKey(k);
        if (p && p.kind === "chunk" && p.name === name) this.#store.delete(k);
      }
    } catch (e) {
      this.#resync(name);
      throw e;
    }
  }

  /**
   * Factory reset: delete every vault record, the salt included. The marker
   * written first makes it all-or-nothing: a reset cut short is finished by the
   * next open. Keys the vault does not own are left alone.
   */
  wipeAll(): void {
    this.#store.write(WIPE_KEY, Uint8Array.of(VAULT_FORMAT));
    this.#finishWipe();
  }

  // ------------------------------------------------------------------ internals

  #load(): void {
    let keys: string[];
    try {
      keys = this.#store.keys();
    } catch (e) {
      this.#problem = "unreadable";
      this.#log("error", "vault: store cannot be listed", { error: errorText(e) });
      return;
    }
    if (keys.indexOf(WIPE_KEY) >= 0) {
      this.#log("warn", "vault: finishing an interrupted factory reset");
      try {
        this.#finishWipe();
      } catch (e) {
        this.#problem = "unreadable";
        this.#log("error", "vault: could not finish the factory reset", { error: errorText(e) });
      }
      return;
    }
    const heads: string[] = [];
    for (const k of keys) {
      const p = parseKey(k);
      if (p && p.kind === "head") heads.push(p.name);
    }
    heads.sort();
    this.#problem = this.#unlock(heads.length > 0);
    if (this.#problem !== undefined) {
      for (const name of heads) this.#damaged.set(name, this.#problem);
      this.#log("error", "vault: cannot unlock", { reason: this.#problem, secrets: heads.length });
      return;
    }
    // No meta record and no heads: an empty vault, which gets its meta record at the first write.
    const index = this.#index ?? { epoch: 0, names: new Map<string, Uint8Array>() };
    const next = epochGen(index.epoch + 1);
    let inFlight: string | undefined;
    for (const name of heads) {
      const result = this.#read(name);
      if ("reason" in result) {
        this.#damaged.set(name, result.reason);
        this.#log("warn", "vault: secret damaged", { secret: name, reason: result.reason });
        continue;
      }
      wipe(result.value);
      const listed = index.names.get(name);
      if (this.#legacy || (listed && bytesEqual(result.entry.gen, listed))) this.#entries.set(name, result.entry);
      else if (inFlight === undefined && bytesEqual(result.entry.gen, next)) {
        // The last write's head landed but its index did not: take it, and finish the write below.
        inFlight = name;
        this.#entries.set(name, result.entry);
      } else if (!listed) {
        // Deleted (or never committed): a copy written back into flash must not come alive.
        this.#log("warn", "vault: removing a record the index does not name", { secret: name });
        try {
          this.#store.delete(headKey(name));
        } catch {
          // Still never read: the index does not name it.
        }
      } else {
        this.#damaged.set(name, "stale");
        this.#log("error", "vault: secret is older than the vault last wrote", { secret: name });
      }
    }
    for (const name of index.names.keys()) {
      if (!this.#entries.has(name) && !this.#damaged.has(name)) this.#damaged.set(name, "missing");
    }
    if (this.#index && (this.#legacy || inFlight !== undefined)) {
      if (inFlight !== undefined) index.epoch++;
      for (const [name, entry] of this.#entries) index.names.set(name, entry.gen);
      try {
        this.#writeMeta();
      } catch (e) {
        this.#log("warn", "vault: could not update the index", { error: errorText(e) });
      }
    }
    const collected = this.#collect(keys);
    this.#log("info", "vault open", { secrets: this.#entries.size, damaged: this.#damaged.size, collected });
  }

  /** Derive the record key from the salt record; a reason when that is impossible. */
  #unlock(haveRecords: boolean): DamageReason | undefined {
    let meta: Uint8Array | undefined;
    try {
      meta = this.#store.read(META_KEY);
    } catch {
      return "unreadable";
    }
    if (meta === undefined) return haveRecords ? "no-metadata" : undefined;
    const base = 1 + SALT_BYTES + CHECK_BYTES;
    const legacy = meta[0] === VAULT_FORMAT && meta.length === base;
    if (!legacy && !(meta[0] === META_FORMAT_INDEXED && meta.length >= base)) return "no-metadata";
    const derived = this.#derive(meta.subarray(1, 1 + SALT_BYTES));
    if (typeof derived === "string") return derived;
    // The check differs by format, so a vault with an index cannot be passed off as one from before it.
    if (!bytesEqual(legacy ? derived.check : derived.check2, meta.subarray(1 + SALT_BYTES, base))) {
      wipe(derived.key);
      return "wrong-key";
    }
    this.#key = derived.key;
    this.#salt = meta.slice(1, 1 + SALT_BYTES);
    this.#check2 = derived.check2;
    this.#legacy = legacy;
    if (legacy) {
      this.#index = { epoch: 0, names: new Map() };
      return undefined;
    }
    if (meta.length === base) {
      this.#index = { epoch: 0, names: new Map() };
      return undefined;
    }
    const opened = openRecord(derived.key, meta.subarray(base));
    const index = typeof opened === "string" ? undefined : decodeIndex(opened.plain);
    if (!index) return "no-metadata";
    this.#index = index;
    return undefined;
  }

  /** Write the meta record with the index: one atomic write commits a set or a delete. */
  #writeMeta(): void {
    const sealed = sealRecord(this.#key!, this.#random, encodeIndex(this.#index!));
    this.#store.write(META_KEY, concatBytes(Uint8Array.of(META_FORMAT_INDEXED), this.#salt!, this.#check2!, sealed.value));
    this.#legacy = false;
  }

  #derive(salt: Uint8Array): { key: Uint8Array; check: Uint8Array; check2: Uint8Array } | DamageReason {
    let providerKey: Uint8Array;
    try {
      providerKey = this.#keys.storageKey();
    } catch (e) {
      this.#log("error", "vault: key provider failed", { error: errorText(e) });
      return "no-key";
    }
    if (!(providerKey instanceof Uint8Array) || providerKey.length !== KEY_BYTES) return "no-key";
    const input = concatBytes(KDF_DOMAIN, Uint8Array.of(0), providerKey, salt);
    const h = this.#sha512(input);
    input[KDF_DOMAIN.length] = META_FORMAT_INDEXED;
    const h2 = this.#sha512(input);
    const out = { key: h.slice(0, KEY_BYTES), check: h.slice(KEY_BYTES, KEY_BYTES + CHECK_BYTES), check2: h2.slice(KEY_BYTES, KEY_BYTES + CHECK_BYTES) };
    wipe(providerKey);
    wipe(input);
    wipe(h);
    wipe(h2);
    return out;
  }

  /** The key for a write, creating the salt record on first use. */
  #writeKey(): Uint8Array {
    if (this.#problem !== undefined) {
      throw new VaultError(undefined, this.#problem, `${describeDamage(undefined, this.#problem)} (writing is refused until a factory reset)`);
    }
    if (this.#key) return this.#key;
    const salt = new Uint8Array(SALT_BYTES);
    this.#random.fill(salt);
    const derived = this.#derive(salt);
    if (typeof derived === "string") throw new VaultError(undefined, derived);
    this.#key = derived.key;
    this.#salt = salt;
    this.#check2 = derived.check2;
    this.#index = { epoch: 0, names: new Map() };
    this.#writeMeta();
    return derived.key;
  }

  #write(key: Uint8Array, name: string, value: Uint8Array): void {
    const keys = this.#store.keys();
    const index = this.#index!;
    // The write's generation is the index's next count: a head carrying it is this write, even if the index was not yet updated.
    index.epoch++;
    const gen = epochGen(index.epoch);
    const previous = this.#entries.get(name);
    let entry: Entry;
    let body: Uint8Array;
    if (value.length <= CHUNK_BYTES) {
      entry = { gen, slot: 0, count: 0, length: value.length, nonces: [] };
      body = value;
    } else {
      const count = Math.ceil(value.length / CHUNK_BYTES);
      // The slot the live head does not use, so no live record is ever overwritten.
      const slot: Slot = previous && previous.count > 0 && previous.slot === 0 ? 1 : 0;
      entry = { gen, slot, count, length: value.length, nonces: [] };
      for (let i = 0; i < count; i++) {
        const data = value.subarray(i * CHUNK_BYTES, Math.min(value.length, (i + 1) * CHUNK_BYTES));
        const plain = encodeChunk({ name, gen, slot, index: i, count }, data);
        const sealed = sealRecord(key, this.#random, plain);
        wipe(plain);
        this.#store.write(chunkKey(name, slot, i), sealed.value);
        entry.nonces.push(sealed.nonce);
      }
      body = concatBytes(...entry.nonces);
    }
    const plain = encodeHead({ name, gen, slot: entry.slot, count: entry.count, length: entry.length }, body);
    const sealed = sealRecord(key, this.#random, plain);
    wipe(plain);
    this.#store.write(headKey(name), sealed.value);
    // Committed: the new value is what a reboot would read from here on (see #load: the next count is taken as written).
    this.#entries.set(name, entry);
    index.names.set(name, gen);
    this.#writeMeta();
    this.#damaged.delete(name);
    for (const k of keys) {
      const p = parseKey(k);
      if (p && p.kind === "chunk" && p.name === name && !(p.slot === entry.slot && p.index < entry.count)) this.#store.delete(k);
    }
  }

  /** Read and authenticate one secret completely (head and every chunk). */
  #read(name: string): ReadResult {
    const key = this.#key;
    if (!key) return { reason: this.#problem ?? "no-metadata" };
    const head = this.#openStored(key, headKey(name));
    if ("reason" in head) return head;
    const decoded = decodeHead(head.plain);
    if (!decoded || decoded.header.name !== name) {
      wipe(head.plain);
      return { reason: "misplaced" };
    }
    const h = decoded.header;
    const entry: Entry = { gen: h.gen, slot: h.slot, count: h.count, length: h.length, nonces: [] };
    if (h.count === 0) {
      const value = decoded.body.slice();
      wipe(head.plain);
      return { entry, value };
    }
    for (let i = 0; i < h.count; i++) entry.nonces.push(decoded.body.slice(i * NONCE_BYTES, (i + 1) * NONCE_BYTES));
    wipe(head.plain);
    const value = new Uint8Array(h.length);
    let offset = 0;
    for (let i = 0; i < h.count; i++) {
      const chunk = this.#openStored(key, chunkKey(name, h.slot, i));
      if ("reason" in chunk) {
        wipe(value);
        return { reason: chunk.reason === "missing" ? "missing-chunk" : chunk.reason };
      }
      const c = decodeChunk(chunk.plain);
      const expected = i < h.count - 1 ? CHUNK_BYTES : h.length - CHUNK_BYTES * (h.count - 1);
      const fits =
        c !== undefined && c.header.name === name && c.header.slot === h.slot && c.header.index === i && c.header.count === h.count &&
        bytesEqual(c.header.gen, h.gen) && bytesEqual(chunk.nonce, entry.nonces[i]) && c.data.length === expected;
      if (fits) value.set(c!.data, offset);
      wipe(chunk.plain);
      if (!fits) {
        wipe(value);
        return { reason: "chunk-mismatch" };
      }
      offset += expected;
    }
    return { entry, value };
  }

  #openStored(key: Uint8Array, storeKey: string): { plain: Uint8Array; nonce: Uint8Array } | { reason: DamageReason } {
    let raw: Uint8Array | undefined;
    try {
      raw = this.#store.read(storeKey);
    } catch {
      return { reason: "unreadable" };
    }
    if (raw === undefined) return { reason: "missing" };
    const opened = openRecord(key, raw);
    return typeof opened === "string" ? { reason: opened } : opened;
  }

  /** Delete chunks that no valid head references: leftovers of a write or delete cut short. Chunks of damaged secrets are kept. */
  #collect(keys: string[]): number {
    let collected = 0;
    for (const k of keys) {
      const p = parseKey(k);
      if (!p || p.kind !== "chunk" || this.#damaged.has(p.name)) continue;
      const entry = this.#entries.get(p.name);
      if (entry && p.slot === entry.slot && p.index < entry.count) continue;
      try {
        this.#store.delete(k);
        collected++;
      } catch (e) {
        this.#log("warn", "vault: could not delete a stale chunk", { key: k, error: errorText(e) });
      }
    }
    return collected;
  }

  #finishWipe(): void {
    const keys = this.#store.keys();
    const order = (k: string) => {
      const p = parseKey(k);
      return !p ? -1 : p.kind === "head" ? 0 : p.kind === "chunk" ? 1 : p.kind === "meta" ? 2 : -1;
    };
    for (const rank of [0, 1, 2]) for (const k of keys) if (order(k) === rank) this.#store.delete(k);
    this.#store.delete(WIPE_KEY);
    this.#entries.clear();
    this.#damaged.clear();
    this.#problem = undefined;
    if (this.#key) wipe(this.#key);
    this.#key = undefined;
    this.#index = undefined;
    this.#salt = undefined;
    this.#check2 = undefined;
    this.#legacy = false;
    this.#log("info", "vault wiped");
  }

  /** After a failed write, learn from the store what a reboot would see for this secret. */
  #resync(name: string): void {
    try {
      const present = this.#store.read(headKey(name)) !== undefined;
      this.#entries.delete(name);
      this.#damaged.delete(name);
      if (!present) return;
      const result = this.#read(name);
      if ("reason" in result) this.#damaged.set(name, result.reason);
      else {
        this.#entries.set(name, result.entry);
        wipe(result.value);
      }
    } catch {
      // The store itself is failing; the next open will tell.
    }
  }
}

function checkName(name: string): void {
  if (!isSecretName(name)) throw new TypeError(`vault: a secret name is 1-${SECRET_NAME_MAX} characters of [a-z0-9.-], starting with a letter or digit`);
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
