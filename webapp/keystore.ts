/*
 * Where the web app keeps its keys: IndexedDB, in this browser only.
 *
 * What can be non-extractable, and what cannot. The protocol's keys are Ed25519,
 * X25519 and XSalsa20-Poly1305 keys used through tweetnacl, which works on raw
 * bytes: a WebCrypto CryptoKey cannot be handed to it, so those secrets must exist
 * as bytes in the page while it runs. What WebCrypto can do is keep them sealed at
 * rest: a 256-bit AES-GCM key made here with extractable = false, stored in
 * IndexedDB as a CryptoKey (the browser keeps its bytes out of reach of any
 * script, this page's included), seals the secrets record. Script on this origin
 * can still ask that key to decrypt, so this protects a copied database or a
 * disk image, not a page that is already compromised. Snapshot content keys are
 * imported as non-extractable AES-GCM keys the moment they are unwrapped.
 *
 * Nothing here is ever sent anywhere: the secrets leave this module only as the
 * key pairs the page's user app holds in memory.
 */
import type { Json } from "../modules/core/canonical";
import { fromBase64Url, toBase64Url, utf8Decode, utf8Encode } from "../modules/core/bytes";

const DB_NAME = "doorward";
const STORE = "keys";

/** What the app may show and keep in the clear: public keys, the list as this user knows it. */
export interface Profile {
  thing: string;
  user: string;
  role: "owner" | "resident" | "viewer";
  deviceSignPublicKey: string;
  deviceBoxPublicKey: string;
  /** The broker credential (a bearer token: not a key of the protocol, and useless without the keys). */
  token: string;
  gen: number;
  /** The owner's view of the list, as the device confirmed it (userToJson form). */
  users: Json[];
  /** Users the device confirmed revoked: id, when, and the generation from which they are out. */
  revoked: Array<{ user: string; at: number; gen: number }>;
}

/** Sealed at rest under the non-extractable key. */
export interface Secrets {
  /** Ed25519 seed and X25519 secret, base64url. */
  sign: string;
  box: string;
  /** The owner's open invitations: user id → role and the secret that opens the answer. */
  invites: Record<string, { role: "resident" | "viewer"; secret: string }>;
}

/** WebCrypto's types want an ArrayBuffer-backed view; every view here is one. */
const bytes = (u: Uint8Array) => u as Uint8Array<ArrayBuffer>;

function request<T>(r: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

function open(): Promise<IDBDatabase> {
  const r = indexedDB.open(DB_NAME, 1);
  r.onupgradeneeded = () => r.result.createObjectStore(STORE);
  return request(r);
}

async function get<T>(db: IDBDatabase, key: string): Promise<T | undefined> {
  return (await request(db.transaction(STORE).objectStore(STORE).get(key))) as T | undefined;
}

async function put(db: IDBDatabase, key: string, value: unknown): Promise<void> {
  const tx = db.transaction(STORE, "readwrite");
  tx.objectStore(STORE).put(value, key);
  await new Promise<void>((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
  });
}

export class Keystore {
  #db: IDBDatabase;
  #wrapKey: CryptoKey;

  private constructor(db: IDBDatabase, wrapKey: CryptoKey) {
    this.#db = db;
    this.#wrapKey = wrapKey;
  }

  static async open(): Promise<Keystore> {
    const db = await open();
    let wrapKey = await get<CryptoKey>(db, "wrap-key");
    if (!wrapKey) {
      wrapKey = await crypto.subtle.generateKey({ name: "AES-GCM", length: 256 }, false, ["encrypt", "decrypt"]);
      await put(db, "wrap-key", wrapKey);
    }
    return new Keystore(db, wrapKey);
  }

  /** Whether the sealing key really is out of script's reach (the page shows it). */
  get wrapKeyExtractable(): boolean {
    return this.#wrapKey.extractable;
  }

  async load(): Promise<{ profile: Profile; secrets: Secrets } | undefined> {
    const profile = await get<Profile>(this.#db, "profile");
    const sealed = await get<{ iv: string; data: string }>(this.#db, "secrets");
    if (!profile || !sealed) return undefined;
    const plain = await crypto.subtle.decrypt({ name: "AES-GCM", iv: bytes(fromBase64Url(sealed.iv)) }, this.#wrapKey, bytes(fromBase64Url(sealed.data)));
    return { profile, secrets: JSON.parse(utf8Decode(new Uint8Array(plain))) as Secrets };
  }

  async saveProfile(profile: Profile): Promise<void> {
    await put(this.#db, "profile", profile);
  }

  async saveSecrets(secrets: Secrets): Promise<void> {
    const iv = crypto.getRandomValues(new Uint8Array(12));
    const data = new Uint8Array(await crypto.subtle.encrypt({ name: "AES-GCM", iv }, this.#wrapKey, bytes(utf8Encode(JSON.stringify(secrets)))));
    await put(this.#db, "secrets", { iv: toBase64Url(iv), data: toBase64Url(data) });
  }
}
