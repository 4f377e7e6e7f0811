/*
 * A user's app, owner or shared, reduced to what the protocol needs, in code that
 * runs in a browser as well as in Node (no Node API): key pairs, the per-user keys
 * the device also derives (X25519 with the device's box key, then core access
 * deriveUserKeys), sealed commands, reading the device's sealed replies, signing
 * access lists as the owner, and unwrapping snapshot content keys. The owner web
 * app bundles it; ./owner-app adds the Node-side link, test bed and key files.
 */
import nacl from "tweetnacl";
import type { Random } from "../modules/core/ports";
import {
  ROLES,
  isUserId,
  listSigningMessage,
  signedListToJson,
  userKeysFor,
  ACCESS_VERSION,
  type AccessUser,
  type Role,
  type SignedAccessList,
  type UserKeys,
} from "../modules/core/access";
import { COMMAND_VERSION, readReply, sealCommand, type CommandBody, type Op, type ReadReply } from "../modules/core/commands";
import { unwrapContentKey, type ContentKeyWrapping } from "../modules/core/footage-keys";
import { fromBase64Url, toBase64Url } from "../modules/core/bytes";
import type { Json } from "../modules/core/canonical";

export const naclRandom: Random = { fill: (t) => t.set(nacl.randomBytes(t.length)) };

/** A user's secret keys and public identity. The secret halves never leave the app. */
export interface AppKeys {
  identity: AccessUser;
  /** Ed25519 secret key (64 bytes, tweetnacl form). Only the owner's is ever used (to sign lists). */
  signSecretKey: Uint8Array;
  /** X25519 secret key (32 bytes). */
  boxSecretKey: Uint8Array;
}

export function createUserKeys(id: string, role: Role, random: Random = naclRandom): AppKeys {
  if (!isUserId(id)) throw new TypeError(`bad user id "${id}": 1-24 of [a-z0-9._-], starting with a letter or digit`);
  const seed = new Uint8Array(32);
  const boxSecret = new Uint8Array(32);
  random.fill(seed);
  random.fill(boxSecret);
  const sign = nacl.sign.keyPair.fromSeed(seed);
  const box = nacl.box.keyPair.fromSecretKey(boxSecret);
  return { identity: { id, role, signPublicKey: sign.publicKey, boxPublicKey: box.publicKey }, signSecretKey: sign.secretKey, boxSecretKey: box.secretKey };
}

/** The device's X25519 pair, as provisioning makes it (the secret half goes into the vault). */
export function createDeviceBoxKeys(random: Random = naclRandom): { publicKey: Uint8Array; secretKey: Uint8Array } {
  const secret = new Uint8Array(32);
  random.fill(secret);
  return nacl.box.keyPair.fromSecretKey(secret);
}

export function keysToJson(k: AppKeys): Record<string, string> {
  return { id: k.identity.id, role: k.identity.role, sign: toBase64Url(k.signSecretKey.subarray(0, 32)), box: toBase64Url(k.boxSecretKey) };
}

export function keysFromJson(v: unknown): AppKeys {
  const o = v as Record<string, unknown>;
  if (!o || !isUserId(o.id) || !(ROLES as readonly unknown[]).includes(o.role) || typeof o.sign !== "string" || typeof o.box !== "string") throw new TypeError("not a key file");
  const sign = nacl.sign.keyPair.fromSeed(fromBase64Url(o.sign));
  const box = nacl.box.keyPair.fromSecretKey(fromBase64Url(o.box));
  return { identity: { id: o.id, role: o.role as Role, signPublicKey: sign.publicKey, boxPublicKey: box.publicKey }, signSecretKey: sign.secretKey, boxSecretKey: box.secretKey };
}


export interface UserAppOptions {
  keys: AppKeys;
  thing: string;
  /** From the provisioning bundle or the device's registration record. */
  deviceBoxPublicKey: Uint8Array;
  /** The list generation the app last saw (learned from replies). Default 1. */
  gen?: number;
  /** How long a command stays valid. Default 60 s. */
  ttlMs?: number;
  now?: () => number;
  random?: Random;
}

export interface MadeCommand {
  payload: Uint8Array;
  body: CommandBody;
  /** The envelope nonce, base64url: replies quote it as `n`. */
  n: string;
}

/** A shared user's app (resident or viewer); the owner's extends it. */
export class UserApp {
  readonly keys: AppKeys;
  readonly thing: string;
  /** The generation the app believes current; updated from authenticated replies. */
  gen: number;
  /** The newest generation the cloud anchors for this device, learned from a refusal (0: none seen). */
  anchored = 0;
  protected now: () => number;
  protected random: Random;
  #derived: UserKeys;
  #ttlMs: number;
  #lastCtr = 0;

  constructor(o: UserAppOptions) {
    this.keys = o.keys;
    this.thing = o.thing;
    this.gen = o.gen ?? 1;
    this.now = o.now ?? (() => Date.now());
    this.random = o.random ?? naclRandom;
    this.#ttlMs = o.ttlMs ?? 60_000;
    this.#derived = userKeysFor(o.deviceBoxPublicKey, o.keys.boxSecretKey);
  }

  get id(): string {
    return this.keys.identity.id;
  }
  get identity(): AccessUser {
    return this.keys.identity;
  }
  /** The footage key, for tests that try it on boxes made for others. */
  get footageKey(): Uint8Array {
    return this.#derived.footage.slice();
  }

  /** Seal a command. Counters are max(last + 1, wall ms): increasing across app restarts without storing them. */
  command(op: Op, args: Record<string, Json> = {}, o: { gen?: number; ctr?: number; exp?: number } = {}): MadeCommand {
    const now = this.now();
    const ctr = o.ctr ?? Math.max(this.#lastCtr + 1, now);
    this.#lastCtr = Math.max(this.#lastCtr, ctr);
    const body: CommandBody = { ...args, v: COMMAND_VERSION, thing: this.thing, from: this.id, gen: o.gen ?? this.gen, ctr, exp: o.exp ?? now + this.#ttlMs, op };
    const nonce = new Uint8Array(24);
    this.random.fill(nonce);
    return { payload: sealCommand(body, this.#derived.command, nonce), body, n: toBase64Url(nonce) };
  }

  /** Read a reply; learns the generation from authenticated replies addressed to this app. */
  read(payload: Uint8Array): ReadReply {
    const r = readReply(payload, this.#derived.reply);
    if (r.authenticated && r.reply.from === this.id && r.reply.thing === this.thing) {
      this.gen = r.reply.gen;
      // A counter refused as older than the device's boot: the device names the next one it takes.
      if (r.reply.reason === "replay" && typeof r.reply.next === "number") this.#lastCtr = Math.max(this.#lastCtr, r.reply.next - 1);
      // The device's flash went back: the cloud anchors a newer generation, which the next signed list must pass.
      if (typeof r.reply.anchor === "number") this.anchored = Math.max(this.anchored, r.reply.anchor);
    }
    return r;
  }

  /** The content key of a snapshot, if this user was authorised when it was captured. */
  unwrap(wrapping: ContentKeyWrapping, context?: Uint8Array): Uint8Array | undefined {
    for (const entry of wrapping.keys) {
      if (entry.user !== this.id) continue;
      const key = unwrapContentKey(entry, this.#derived.footage, context);
      if (key) return key;
    }
    return undefined;
  }
}

/** The owner's app: everything a user's app does, plus signing and changing the list. */
export class OwnerApp extends UserApp {
  /** The owner's view of the list, updated when the device confirms a change. */
  users: AccessUser[];
  #pending = new Map<string, (reply: ReadReply) => void>();

  constructor(o: UserAppOptions & { users?: AccessUser[] }) {
    super(o);
    if (o.keys.identity.role !== "owner") throw new TypeError("OwnerApp needs owner keys");
    this.users = o.users ?? [o.keys.identity];
  }

  signList(users: AccessUser[], gen: number): SignedAccessList {
    const list = { v: ACCESS_VERSION, thing: this.thing, gen, users };
    return { list, signature: nacl.sign.detached(listSigningMessage(list), this.keys.signSecretKey) };
  }

  /** A signed list update (the grant path): the new list at the next generation. */
  updateList(users: AccessUser[], o: { gen?: number; listGen?: number; exp?: number } = {}): MadeCommand {
    const signed = this.signList(users, o.listGen ?? Math.max(this.gen, this.anchored) + 1);
    const made = this.command("access-update", { list: signedListToJson(signed) }, o);
    this.#pending.set(made.n, (r) => { if (r.reply.ok) this.users = users; });
    return made;
  }

  addUser(identity: AccessUser): MadeCommand {
    return this.updateList([...this.users.filter((u) => u.id !== identity.id), identity]);
  }

  revoke(id: string, o: { gen?: number; exp?: number } = {}): MadeCommand {
    const made = this.command("revoke", { user: id }, o);
    this.#pending.set(made.n, (r) => { if (r.reply.ok) this.users = this.users.filter((u) => u.id !== id); });
    return made;
  }

  /** "Password changed": everyone but the owner loses access at once. */
  revokeAll(o: { gen?: number; exp?: number } = {}): MadeCommand {
    const made = this.command("revoke-all", {}, o);
    this.#pending.set(made.n, (r) => { if (r.reply.ok) this.users = this.users.filter((u) => u.role === "owner"); });
    return made;
  }

  override read(payload: Uint8Array): ReadReply {
    const r = super.read(payload);
    if (r.authenticated && r.reply.n !== null) {
      const apply = this.#pending.get(r.reply.n);
      this.#pending.delete(r.reply.n);
      apply?.(r);
    }
    return r;
  }
}
