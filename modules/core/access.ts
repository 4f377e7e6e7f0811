/*
 * The access list: who may command this doorbell and see its footage.
 *
 * An owner and up to MAX_USERS - 1 shared users (resident, viewer), each with an
 * Ed25519 key (the owner's signs list changes) and an X25519 key (the device
 * derives per-user symmetric keys from it). The list carries a generation that
 * only ever goes up; every command is bound to it, so bumping it voids
 * everything made before.
 *
 * Costs decide the shape (see docs/access.md): on the device an Ed25519 verify
 * is ~7 s and an X25519 box.before ~1.9 s, while XSalsa20-Poly1305 on a small
 * command is milliseconds. So box.before runs once per user, when the user is
 * added, and its derived keys are cached in the SecretStore; commands are
 * checked with those keys. The owner's Ed25519 signature is verified only on the
 * rare grant path (a new signed list). Removing rights (revoke one user, revoke
 * everyone) never needs a signature verify, so it takes effect at once.
 *
 * Persistence: two SecretStore entries, each written atomically. "acl" holds
 * the list; "acl.keys" the derived keys. Grants write keys before the list, so
 * a listed user always has keys; removals take effect in RAM first (fail
 * closed), then write the list, then prune keys.
 */
import nacl from "tweetnacl";
import type { SecretStore, Sha512 } from "./ports";
import { canonicalBytes, parseCanonical, type Json } from "./canonical";
import { bytesEqual, concatBytes, fromBase64Url, toBase64Url, utf8Encode, wipe } from "./bytes";
import { isThingName } from "./topics";
import type { HeavyCrypto } from "./heavy-crypto";

export type Role = "owner" | "resident" | "viewer";
export const ROLES: readonly Role[] = ["owner", "resident", "viewer"];

export const ACCESS_VERSION = 1;
/** Prefix of the message an owner signs, so a list signature is never valid as anything else. */
export const ACCESS_LIST_DOMAIN = "doorward/access-list/v1\n";
/** Owner included. Bounded so the stored list fits one 4000-byte flash value. */
export const MAX_USERS = 10;
/** How many removed ids the device remembers, to answer "revoked" instead of "unknown-sender". */
export const MAX_TOMBSTONES = 16;
export const SECRET_LIST = "acl";
export const SECRET_KEYS = "acl.keys";
const MAX_STORED_BYTES = 4000;

/** Why the device refused something. Published verbatim in replies; see docs/access.md. */
export type ReasonCode =
  | "malformed"
  | "unknown-sender"
  | "revoked"
  | "bad-mac"
  | "wrong-thing"
  | "stale-generation"
  | "expired"
  | "replay"
  | "forbidden"
  | "bad-signature"
  | "busy"
  | "storage-failed"
  | "internal";

/** A refusal with its reply code. `detail` is a fixed phrase, never an echo of input. */
export class AccessRejection extends Error {
  override name = "AccessRejection";
  constructor(readonly reason: ReasonCode, readonly detail: string) {
    super(`${reason}: ${detail}`);
  }
}

const USER_ID = /^[a-z0-9][a-z0-9._-]{0,23}$/;
export function isUserId(v: unknown): v is string {
  return typeof v === "string" && USER_ID.test(v);
}

export interface AccessUser {
  id: string;
  role: Role;
  /** Ed25519 public key (32 bytes). The owner's verifies list signatures. */
  signPublicKey: Uint8Array;
  /** X25519 public key (32 bytes), for the per-user symmetric keys. */
  boxPublicKey: Uint8Array;
}

/** What the owner signs. */
export interface AccessListBody {
  v: number;
  thing: string;
  gen: number;
  users: AccessUser[];
}

export interface SignedAccessList {
  list: AccessListBody;
  signature: Uint8Array;
}

/** Symmetric keys derived once per user from X25519(device, user). */
export interface UserKeys {
  /** user → device: authenticates (and hides) commands. */
  command: Uint8Array;
  /** device → user: seals replies. */
  reply: Uint8Array;
  /** device → user: wraps per-snapshot content keys. */
  footage: Uint8Array;
}

// ---- JSON forms ----

export function isRecord(v: unknown): v is Record<string, Json> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function hasExactly(o: Record<string, unknown>, names: readonly string[]): boolean {
  const keys = Object.keys(o);
  return keys.length === names.length && names.every((n) => Object.prototype.hasOwnProperty.call(o, n));
}

/** A safe integer ≥ min. */
export function isCount(v: unknown, min = 0): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= min;
}

function key32(v: unknown, what: string): Uint8Array {
  if (typeof v !== "string" || v.length !== 43) throw new AccessRejection("malformed", `${what} must be 32 bytes of base64url`);
  try {
    return fromBase64Url(v);
  } catch {
    throw new AccessRejection("malformed", `${what} must be 32 bytes of base64url`);
  }
}

/*
 * The X25519 public keys whose shared secret with any device key is fixed
 * (all zero): the points of order 1, 2, 4 and 8 and their non-canonical
 * encodings (x + p). A user holding one would have keys anyone can derive.
 * X25519 ignores the top bit, so it is masked before the comparison; the
 * test checks every entry really gives an all-zero shared point.
 */
export const LOW_ORDER_X25519: readonly string[] = [
  "0000000000000000000000000000000000000000000000000000000000000000",
  "0100000000000000000000000000000000000000000000000000000000000000",
  "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
  "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
  "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
  "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
  "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
];

/** True for a 32-byte X25519 public key that is not low-order (see LOW_ORDER_X25519). */
export function isUsableBoxKey(key: Uint8Array): boolean {
  if (key.length !== 32) return false;
  let hex = "";
  for (let i = 0; i < 32; i++) hex += ((i === 31 ? key[i] & 0x7f : key[i]) | 0x100).toString(16).slice(1);
  return !LOW_ORDER_X25519.includes(hex);
}

function boxKey32(v: unknown): Uint8Array {
  const key = key32(v, "box");
  if (!isUsableBoxKey(key)) throw new AccessRejection("malformed", "box key is a low-order X25519 point");
  return key;
}

export function userToJson(u: AccessUser): Json {
  return { box: toBase64Url(u.boxPublicKey), id: u.id, role: u.role, sign: toBase64Url(u.signPublicKey) };
}

export function userFromJson(v: unknown): AccessUser {
  if (!isRecord(v) || !hasExactly(v, ["box", "id", "role", "sign"])) throw new AccessRejection("malformed", "user must be {box,id,role,sign}");
  if (!isUserId(v.id)) throw new AccessRejection("malformed", "bad user id");
  if (typeof v.role !== "string" || !(ROLES as readonly string[]).includes(v.role)) throw new AccessRejection("malformed", "bad role");
  return { id: v.id, role: v.role as Role, signPublicKey: key32(v.sign, "sign"), boxPublicKey: boxKey32(v.box) };
}

export function listToJson(list: AccessListBody): Json {
  return { gen: list.gen, thing: list.thing, users: list.users.map(userToJson), v: list.v };
}

/** Checks every rule a list must meet; throws AccessRejection("malformed") otherwise. */
export function listFromJson(v: unknown): AccessListBody {
  if (!isRecord(v) || !hasExactly(v, ["gen", "thing", "users", "v"])) throw new AccessRejection("malformed", "list must be {gen,thing,users,v}");
  if (v.v !== ACCESS_VERSION) throw new AccessRejection("malformed", "unsupported list version");
  if (!isThingName(v.thing)) throw new AccessRejection("malformed", "bad thing name in list");
  if (!isCount(v.gen, 1)) throw new AccessRejection("malformed", "bad list generation");
  if (!Array.isArray(v.users) || v.users.length < 1 || v.users.length > MAX_USERS) throw new AccessRejection("malformed", `list must hold 1-${MAX_USERS} users`);
  const users = v.users.map(userFromJson);
  const ids = new Set(users.map((u) => u.id));
  if (ids.size !== users.length) throw new AccessRejection("malformed", "duplicate user id");
  if (users.filter((u) => u.role === "owner").length !== 1) throw new AccessRejection("malformed", "list must have exactly one owner");
  return { v: ACCESS_VERSION, thing: v.thing, gen: v.gen, users };
}

export function signedListToJson(s: SignedAccessList): Json {
  return { list: listToJson(s.list), sig: toBase64Url(s.signature) };
}

export function signedListFromJson(v: unknown): SignedAccessList {
  if (!isRecord(v) || !hasExactly(v, ["list", "sig"])) throw new AccessRejection("malformed", "signed list must be {list,sig}");
  if (typeof v.sig !== "string" || v.sig.length !== 86) throw new AccessRejection("malformed", "sig must be 64 bytes of base64url");
  let signature: Uint8Array;
  try {
    signature = fromBase64Url(v.sig);
  } catch {
    throw new AccessRejection("malformed", "sig must be 64 bytes of base64url");
  }
  return { list: listFromJson(v.list), signature };
}

const listDomain = utf8Encode(ACCESS_LIST_DOMAIN);
/** The exact bytes the owner's Ed25519 signature covers. */
export function listSigningMessage(list: AccessListBody): Uint8Array {
  return concatBytes(listDomain, canonicalBytes(listToJson(list)));
}

// ---- keys ----

const COMMAND_KDF = utf8Encode("doorward/access/v1\n");
const FOOTAGE_KDF = utf8Encode("doorward/footage/v1\n");

/** Split the X25519 shared key into one key per purpose and direction, so a box made for one can never be taken for another. */
export function deriveUserKeys(shared: Uint8Array, sha512: Sha512 = (d) => nacl.hash(d)): UserKeys {
  const a = sha512(concatBytes(COMMAND_KDF, shared));
  const b = sha512(concatBytes(FOOTAGE_KDF, shared));
  const keys = { command: a.slice(0, 32), reply: a.slice(32, 64), footage: b.slice(0, 32) };
  wipe(a);
  wipe(b);
  return keys;
}

/** box.before + derivation: the expensive step (~1.9 s on the device), done once per user and either side. */
export function userKeysFor(theirBoxPublicKey: Uint8Array, myBoxSecretKey: Uint8Array, sha512?: Sha512): UserKeys {
  if (!isUsableBoxKey(theirBoxPublicKey)) throw new AccessRejection("malformed", "box key is a low-order X25519 point");
  const shared = nacl.box.before(theirBoxPublicKey, myBoxSecretKey);
  const keys = deriveUserKeys(shared, sha512);
  wipe(shared);
  return keys;
}

const DEVICE_BOX_KDF = utf8Encode("doorward/device-box/v1\n");
/**
 * The device's X25519 secret, derived from its Ed25519 identity seed under a
 * separate domain, so provisioning need not store a second secret. The public
 * half (nacl.box.keyPair.fromSecretKey, ~1.9 s on the device, once) is what
 * apps need, next to the signing public key, at registration.
 */
export function deviceBoxSecretFromSeed(seed: Uint8Array, sha512: Sha512 = (d) => nacl.hash(d)): Uint8Array {
  if (seed.length !== 32) throw new TypeError("access: identity seed must be 32 bytes");
  const h = sha512(concatBytes(DEVICE_BOX_KDF, seed));
  const secret = h.slice(0, 32);
  wipe(h);
  return secret;
}

function wipeKeys(k: UserKeys): void {
  wipe(k.command);
  wipe(k.reply);
  wipe(k.footage);
}

// ---- the stored list ----

export interface OwnerEnrolment {
  /** Default "owner" (the provisioning bundle carries keys, not a name). */
  id?: string;
  signPublicKey: Uint8Array;
  boxPublicKey: Uint8Array;
}

export type SignatureCheck = (message: Uint8Array, signature: Uint8Array, publicKey: Uint8Array) => boolean;

export interface AccessListOptions {
  thing: string;
  secrets: SecretStore;
  /** The device's X25519 secret key (from the vault). */
  deviceBoxSecretKey: Uint8Array;
  /** The first owner, from the provisioning bundle. Used only while the store holds no list. */
  owner: OwnerEnrolment;
  sha512?: Sha512;
  /** Ed25519 verify for signed lists; the device may pass a native one. Default tweetnacl. */
  verifySignature?: SignatureCheck;
  /** Asked once a list has passed the cheap checks, before its signature is verified: false refuses it as busy. */
  mayVerify?: () => boolean;
}

/** What a change did, for replies, logs and ending sessions. */
export interface AccessChange {
  gen: number;
  added: string[];
  removed: string[];
  /** Users whose X25519 key changed: their old keys are gone, like a removal. */
  rekeyed: string[];
}

interface State {
  gen: number;
  /** Generation of the last owner-signed list applied; later bumps are revocations. */
  signedGen: number;
  users: AccessUser[];
  revoked: string[];
}

export interface Keyring {
  /** Generation of the list in force. */
  readonly generation: number;
  /** Footage wrap keys of every user authorised now. Copies: callers may keep them. */
  footageRecipients(): Array<{ user: string; key: Uint8Array }>;
}

export class AccessList implements Keyring {
  readonly thing: string;
  #secrets: SecretStore;
  #deviceSecret: Uint8Array;
  #sha512: Sha512 | undefined;
  #verify: SignatureCheck;
  #mayVerify: () => boolean;
  /** The list applySignedListAsync is verifying: who it names, and whether a revocation has voided it. */
  #inFlight: { ids: Set<string>; voided: boolean } | undefined;
  #state!: State;
  #users = new Map<string, AccessUser>();
  #keys = new Map<string, UserKeys>();

  constructor(options: AccessListOptions) {
    if (!isThingName(options.thing)) throw new TypeError("access: bad thing name");
    if (!(options.deviceBoxSecretKey instanceof Uint8Array) || options.deviceBoxSecretKey.length !== 32) throw new TypeError("access: device box secret key must be 32 bytes");
    this.thing = options.thing;
    this.#secrets = options.secrets;
    this.#deviceSecret = options.deviceBoxSecretKey;
    this.#sha512 = options.sha512;
    this.#verify = options.verifySignature ?? ((m, s, k) => nacl.sign.detached.verify(m, s, k));
    this.#mayVerify = options.mayVerify ?? (() => true);
    const stored = options.secrets.get(SECRET_LIST);
    if (stored === undefined) this.#enrol(options.owner);
    else this.#load(stored);
  }

  get generation(): number {
    return this.#state.gen;
  }
  get signedGeneration(): number {
    return this.#state.signedGen;
  }
  get owner(): AccessUser {
    return this.#state.users.find((u) => u.role === "owner")!;
  }
  users(): AccessUser[] {
    return this.#state.users.slice();
  }
  user(id: string): AccessUser | undefined {
    return this.#users.get(id);
  }
  isRevoked(id: string): boolean {
    return this.#state.revoked.includes(id);
  }
  /** The live keys of a current user (not copies: do not keep or modify). */
  keysFor(id: string): UserKeys | undefined {
    return this.#users.has(id) ? this.#keys.get(id) : undefined;
  }

  footageRecipients(): Array<{ user: string; key: Uint8Array }> {
    return this.#state.users.map((u) => ({ user: u.id, key: this.#keys.get(u.id)!.footage.slice() }));
  }

  /**
   * Apply an owner-signed list (the grant path). Cheap checks first; then the
   * Ed25519 verify (~7 s on the device by the model); then box.before for each
   * new or re-keyed user (~1.9 s each). Nothing changes unless all succeed.
   */
  applySignedList(signed: SignedAccessList): AccessChange {
    const list = signed.list;
    this.#checkCandidate(list);
    if (!this.#verify(listSigningMessage(list), signed.signature, this.owner.signPublicKey)) {
      throw new AccessRejection("bad-signature", "list is not signed by the current owner");
    }
    const fresh = new Map<string, UserKeys>();
    for (const u of this.#needKeys(list)) fresh.set(u.id, userKeysFor(u.boxPublicKey, this.#deviceSecret, this.#sha512));
    return this.#commit(list, fresh);
  }

  /**
   * applySignedList with the verify and each box.before on a worker, so this
   * machine keeps serving commands meanwhile. A revocation that lands while
   * they run is in force at once and wins: the list in flight was signed
   * before it, so it is refused (stale-generation) rather than applied over it.
   */
  async applySignedListAsync(signed: SignedAccessList, crypto: HeavyCrypto): Promise<AccessChange> {
    const list = signed.list;
    if (this.#inFlight) throw new AccessRejection("busy", "another access list is being verified");
    this.#checkCandidate(list);
    const startGen = this.#state.gen;
    const flight = { ids: new Set(list.users.map((u) => u.id)), voided: false };
    this.#inFlight = flight;
    const changed = () => {
      if (flight.voided) throw new AccessRejection("stale-generation", "a revocation arrived while this list was being verified");
      if (this.#state.gen !== startGen) throw new AccessRejection("stale-generation", "the access list changed while this list was being verified");
    };
    try {
      return await this.#verifyAndApply(signed, crypto, changed);
    } finally {
      this.#inFlight = undefined;
    }
  }

  async #verifyAndApply(signed: SignedAccessList, crypto: HeavyCrypto, changed: () => void): Promise<AccessChange> {
    const list = signed.list;
    if (!(await crypto.verify(listSigningMessage(list), signed.signature, this.owner.signPublicKey))) {
      throw new AccessRejection("bad-signature", "list is not signed by the current owner");
    }
    changed();
    const fresh = new Map<string, UserKeys>();
    try {
      for (const u of this.#needKeys(list)) {
        if (!isUsableBoxKey(u.boxPublicKey)) throw new AccessRejection("malformed", "box key is a low-order X25519 point");
        const shared = await crypto.boxBefore(u.boxPublicKey, this.#deviceSecret);
        fresh.set(u.id, deriveUserKeys(shared, this.#sha512));
        wipe(shared);
        changed();
      }
      return this.#commit(list, fresh);
    } catch (e) {
      for (const k of fresh.values()) wipeKeys(k);
      throw e;
    }
  }

  /** The cheap checks a list must pass before any signature is verified. */
  #checkCandidate(list: AccessListBody): void {
    if (list.thing !== this.thing) throw new AccessRejection("wrong-thing", "list is for another thing");
    if (list.gen <= this.#state.gen) throw new AccessRejection("stale-generation", "list generation is not above the current one");
    if (!this.#mayVerify()) throw new AccessRejection("busy", "too many signed lists lately; try again later");
  }

  /** Users of the list who are new or re-keyed: each needs a box.before. */
  #needKeys(list: AccessListBody): AccessUser[] {
    return list.users.filter((u) => {
      const old = this.#users.get(u.id);
      return !(old && bytesEqual(old.boxPublicKey, u.boxPublicKey));
    });
  }

  /** Switch to a verified list whose new keys are derived. Nothing changes unless it is stored. */
  #commit(list: AccessListBody, fresh: Map<string, UserKeys>): AccessChange {
    const added: string[] = [];
    const rekeyed: string[] = [];
    for (const id of fresh.keys()) (this.#users.has(id) ? rekeyed : added).push(id);
    const ids = new Set(list.users.map((u) => u.id));
    const removed = this.#state.users.filter((u) => !ids.has(u.id)).map((u) => u.id);
    const next: State = {
      gen: list.gen,
      signedGen: list.gen,
      users: list.users.map((u) => ({ ...u })),
      revoked: tombstones(this.#state.revoked, removed, ids),
    };
    // Keys for old and new users first: whichever list is on flash after a power cut has its keys.
    const union = new Map(this.#keys);
    for (const [id, k] of fresh) union.set(id, k);
    try {
      this.#writeKeys(union, [...this.#state.users, ...next.users]);
      this.#writeState(next);
    } catch (e) {
      for (const k of fresh.values()) wipeKeys(k);
      throw new AccessRejection("storage-failed", "could not store the new list");
    }
    const retired = [...removed, ...rekeyed].map((id) => this.#keys.get(id)!);
    this.#switch(next, union);
    this.#pruneKeys();
    for (const k of retired) wipeKeys(k);
    return { gen: next.gen, added, removed, rekeyed };
  }

  /** Remove one shared user. No signature needed: this only takes rights away. */
  revokeUser(id: string): AccessChange {
    const u = this.#users.get(id);
    // Not listed yet, but named by a list still being verified: the revocation wins, and that list is void.
    if (!u && this.#inFlight?.ids.has(id) && !this.#inFlight.voided) {
      this.#inFlight.voided = true;
      return { gen: this.#state.gen, added: [], removed: [id], rekeyed: [] };
    }
    if (!u) throw new AccessRejection("malformed", "no such user");
    if (u.role === "owner") throw new AccessRejection("forbidden", "the owner cannot be revoked; sign a new list instead");
    return this.#remove([id]);
  }

  /** "Password changed": everyone but the owner, and a new generation that voids every earlier command. */
  revokeAllExceptOwner(): AccessChange {
    return this.#remove(this.#state.users.filter((u) => u.role !== "owner").map((u) => u.id));
  }

  #remove(ids: string[]): AccessChange {
    const gone = new Set(ids);
    if (this.#state.gen >= Number.MAX_SAFE_INTEGER) throw new AccessRejection("internal", "generation exhausted");
    const next: State = {
      gen: this.#state.gen + 1,
      signedGen: this.#state.signedGen,
      users: this.#state.users.filter((u) => !gone.has(u.id)),
      revoked: tombstones(this.#state.revoked, ids, new Set()),
    };
    const retired = ids.map((id) => this.#keys.get(id)!);
    const keep = new Map([...this.#keys].filter(([id]) => !gone.has(id)));
    // In force before it is stored: a flash failure must not leave a revoked user working.
    this.#switch(next, keep);
    for (const k of retired) wipeKeys(k);
    try {
      this.#writeState(next);
    } catch {
      throw new AccessRejection("storage-failed", "revoked in RAM but not stored: repeat after fixing storage");
    }
    try {
      this.#writeKeys(keep, next.users);
    } catch {
      // Stale keys of removed users are unreachable: only listed users' keys are ever loaded.
    }
    return { gen: next.gen, added: [], removed: ids, rekeyed: [] };
  }

  #switch(next: State, keys: Map<string, UserKeys>): void {
    this.#state = next;
    this.#users = new Map(next.users.map((u) => [u.id, u]));
    this.#keys = keys;
  }

  #pruneKeys(): void {
    const stale = [...this.#keys.keys()].filter((id) => !this.#users.has(id));
    if (stale.length === 0) return;
    for (const id of stale) this.#keys.delete(id);
    try {
      this.#writeKeys(this.#keys, this.#state.users);
    } catch {
      // As in #remove: unlisted keys are never used.
    }
  }

  #enrol(owner: OwnerEnrolment): void {
    const id = owner.id ?? "owner";
    if (!isUserId(id)) throw new TypeError("access: bad owner id");
    if (owner.signPublicKey?.length !== 32 || owner.boxPublicKey?.length !== 32) throw new TypeError("access: owner keys must be 32 bytes");
    if (!isUsableBoxKey(owner.boxPublicKey)) throw new TypeError("access: owner box key is a low-order X25519 point");
    const user: AccessUser = { id, role: "owner", signPublicKey: owner.signPublicKey.slice(), boxPublicKey: owner.boxPublicKey.slice() };
    const state: State = { gen: 1, signedGen: 0, users: [user], revoked: [] };
    const keys = new Map([[user.id, userKeysFor(user.boxPublicKey, this.#deviceSecret, this.#sha512)]]);
    this.#writeKeys(keys, state.users);
    this.#writeState(state);
    this.#switch(state, keys);
  }

  #load(bytes: Uint8Array): void {
    let state: State;
    try {
      const doc = parseCanonical(bytes, MAX_STORED_BYTES);
      if (!isRecord(doc) || !hasExactly(doc, ["gen", "revoked", "signedGen", "thing", "users", "v"])) throw new Error("shape");
      const list = listFromJson({ gen: doc.gen, thing: doc.thing, users: doc.users, v: doc.v });
      if (list.thing !== this.thing) throw new Error("thing");
      if (!isCount(doc.signedGen) || doc.signedGen > list.gen) throw new Error("signedGen");
      if (!Array.isArray(doc.revoked) || !doc.revoked.every(isUserId)) throw new Error("revoked");
      state = { gen: list.gen, signedGen: doc.signedGen, users: list.users, revoked: doc.revoked as string[] };
    } catch (e) {
      // Fail closed: a list that does not parse grants nothing, and the owner must re-provision.
      throw new Error(`access: stored list is corrupt (${(e as Error).message})`);
    }
    const keys = new Map<string, UserKeys>();
    let missing = false;
    try {
      // A damaged entry (the vault throws) is recoverable: every key can be derived again.
      const raw = this.#secrets.get(SECRET_KEYS);
      if (raw !== undefined) {
        const doc = parseCanonical(raw, MAX_STORED_BYTES);
        if (!isRecord(doc)) throw new Error("shape");
        for (const u of state.users) {
          const entry = Object.prototype.hasOwnProperty.call(doc, u.id) ? doc[u.id] : undefined;
          const b = typeof entry === "string" ? fromBase64Url(entry) : undefined;
          // Each entry names the box key it came from, so a re-keyed user never keeps an old key.
          if (b && b.length === 128 && bytesEqual(b.subarray(0, 32), u.boxPublicKey)) {
            keys.set(u.id, { command: b.slice(32, 64), reply: b.slice(64, 96), footage: b.slice(96, 128) });
          }
        }
      }
    } catch {
      keys.clear();
    }
    for (const u of state.users) {
      if (!keys.has(u.id)) {
        keys.set(u.id, userKeysFor(u.boxPublicKey, this.#deviceSecret, this.#sha512));
        missing = true;
      }
    }
    if (missing) this.#writeKeys(keys, state.users);
    this.#switch(state, keys);
  }

  #writeState(s: State): void {
    const doc: Json = {
      gen: s.gen,
      revoked: s.revoked,
      signedGen: s.signedGen,
      thing: this.thing,
      users: s.users.map(userToJson),
      v: ACCESS_VERSION,
    };
    this.#secrets.set(SECRET_LIST, canonicalBytes(doc));
  }

  #writeKeys(keys: Map<string, UserKeys>, users: AccessUser[]): void {
    const doc: Record<string, Json> = {};
    // Users come old list first, new list last, so a re-keyed user's entry names the new box key.
    for (const u of users) {
      const k = keys.get(u.id);
      if (k) doc[u.id] = toBase64Url(concatBytes(u.boxPublicKey, k.command, k.reply, k.footage));
    }
    this.#secrets.set(SECRET_KEYS, canonicalBytes(doc));
  }
}

function tombstones(old: string[], removed: string[], readded: Set<string>): string[] {
  const out = old.filter((id) => !readded.has(id) && !removed.includes(id));
  out.push(...removed);
  return out.slice(-MAX_TOMBSTONES);
}
