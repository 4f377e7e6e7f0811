/*
 * Provisioning: how a doorbell gets its identity, once, and loses it on a factory reset.
 *
 * A bundle arrives over a local channel (the simulator: a file or stdin; a
 * board: USB serial, see docs/secrets.md) while the device is unprovisioned.
 * It carries the thing name, the Wi-Fi network and passphrase, the MQTT broker
 * endpoint, the AWS IoT client certificate, its RSA key and the CA (all DER),
 * and the first owner's public keys (Ed25519 to sign commands, X25519 to box
 * keys to). The device adds its own Ed25519 seed from the Random port, so its
 * private key never leaves it; only the public key is shown, for registration.
 *
 * Everything goes into the vault and nowhere else. A "prov" record written
 * last marks completion, after its removal first: a bundle cut short by power
 * loss, or mixed with remains of an older one, never looks provisioned, and
 * the same bundle can simply be fed again. A provisioned device refuses a
 * second bundle until a factory reset. When an identity secret is damaged
 * (tampering, flash corruption, another key), the device reports itself
 * unprovisioned, says which secret and why, and accepts a bundle again.
 *
 * A factory reset erases everything the firmware wrote: the vault, and every
 * record in the other flash store (outbox, boot and sequence counters, replay
 * marks, update job state) except the update anti-rollback records, which
 * belong to the chip rather than its owner (erasing them would let a reset
 * undo a downgrade guard or a release-key rotation), and the count of resets,
 * which orders this chip's identities for the access anchor (./acl-anchor): a
 * flash dump from before a reset carries a lower count than the cloud's
 * anchor. A mark written first, holding the count the reset moves to, makes it
 * all-or-nothing: a reset cut short by power loss is finished when the device
 * next boots, before anything reads the store.
 *
 * There are no defaults to fall back on: every field must be present and
 * valid, and a Wi-Fi passphrase is required (WPA2/WPA3 personal, 8-63
 * characters or 64 hex digits).
 */
import nacl from "tweetnacl";
import type { KeyValueStore, Log, Random } from "./ports";
import { UPDATE_KV } from "./update-protocol";
import { RngHealth } from "./rng-health";
import { fromBase64Url, toBase64Url, utf8Decode, utf8Encode, wipe } from "./bytes";
import { isThingName } from "./topics";
import { jsonNestsDeeper } from "./canonical";
import { deviceBoxSecretFromSeed, isUsableBoxKey } from "./access";
import { Vault, VaultError, type DamagedSecret } from "./vault";
import { encodeJsonRecord, readJsonRecord } from "./record";

/** Vault names of the identity secrets. */
export const SECRET = {
  thing: "thing",
  wifiSsid: "wifi.ssid",
  wifiPassword: "wifi.pass",
  endpoint: "mqtt.host",
  cert: "aws.cert",
  key: "aws.key",
  ca: "aws.ca",
  seed: "id.seed",
  publicKey: "id.pub",
  owner: "owner",
  /** Written last: its presence means a bundle was stored completely. */
  marker: "prov",
} as const;

/** The secrets a provisioned device must be able to read. */
export const IDENTITY_SECRETS: readonly string[] = [
  SECRET.thing, SECRET.wifiSsid, SECRET.wifiPassword, SECRET.endpoint, SECRET.cert, SECRET.key, SECRET.ca,
  SECRET.seed, SECRET.publicKey, SECRET.owner, SECRET.marker,
];

/** In the firmware's store while a factory reset is under way. */
export const RESET_MARK = "dw.reset";
/** How many factory resets this chip has been through: {n}. */
export const RESETS_KEY = "dw.resets";
/** Records a factory reset leaves in the firmware's store: the update anti-rollback state, and the count of resets. */
export const FACTORY_RESET_KEEPS: readonly string[] = [UPDATE_KV.floor, UPDATE_KV.keys, RESETS_KEY];

export const BUNDLE_KIND = "doorward-provisioning";
export const BUNDLE_VERSION = 1;
/** Larger bundles are refused before parsing. */
export const BUNDLE_MAX_BYTES = 32768;
const BUNDLE_MAX_DEPTH = 4;
const DER_MAX = 8192;

export interface OwnerKeys {
  /** Ed25519 public key that signs the owner's commands. */
  signKey: Uint8Array;
  /** X25519 public key the device encrypts to. */
  boxKey: Uint8Array;
}

export interface ProvisioningBundle {
  thing: string;
  wifi: { ssid: string; password: string };
  /** MQTT broker host, optionally ":port" (AWS IoT: <prefix>-ats.iot.<region>.amazonaws.com). */
  endpoint: string;
  /** AWS IoT client certificate, DER. */
  cert: Uint8Array;
  /** Its private key: PKCS#8 DER, RSA (the Moddable TLS client signs with RSA only). */
  key: Uint8Array;
  /** Trust anchor for the broker, DER. */
  ca: Uint8Array;
  owner: OwnerKeys;
}

/** What the device needs at boot, read from the vault. */
export interface DeviceIdentity {
  thing: string;
  wifi: { ssid: string; password: string };
  endpoint: { host: string; port: number | undefined };
  /** Shaped for Moddable's `secure` option bag: certificate = trusted CA, clientCertificates, clientKey (all DER). */
  tls: { certificate: Uint8Array; clientCertificates: Uint8Array[]; clientKey: Uint8Array };
  /** Doorbell's signingSeed. */
  signingSeed: Uint8Array;
  publicKey: Uint8Array;
  owner: OwnerKeys;
}

export interface ProvisioningStatus {
  provisioned: boolean;
  /** damaged: identity secrets exist but cannot be read; the device must be provisioned again. */
  state: "provisioned" | "unprovisioned" | "damaged";
  /** Identity secrets not stored (a bundle never fed, or cut short). */
  missing: string[];
  /** Identity secrets that fail authentication, each with a message naming it. */
  damaged: DamagedSecret[];
  /** One sentence for a log line, a serial console or a status LED handler. */
  message: string;
}

export class ProvisioningError extends Error {
  override name = "ProvisioningError";
}

export interface ProvisioningOptions {
  vault: Vault;
  random: Random;
  log?: Log;
  /**
   * The firmware's other flash (outbox, counters, replay marks). With it, a
   * factory reset erases that too, and an interrupted one is finished here.
   */
  store?: KeyValueStore;
  /** False while no true entropy source feeds `random`: no device key is made then. */
  entropyReady?: () => boolean;
}

export class Provisioning {
  #vault: Vault;
  #random: Random;
  #log: Log;
  #store: KeyValueStore | undefined;
  #entropyReady: (() => boolean) | undefined;

  constructor(options: ProvisioningOptions) {
    this.#vault = options.vault;
    this.#random = options.random;
    this.#log = options.log ?? (() => {});
    this.#store = options.store;
    this.#entropyReady = options.entropyReady;
    if (this.#store?.read(RESET_MARK) !== undefined) {
      this.#log("warn", "factory reset: finishing one cut short by power loss");
      this.#finishReset();
    }
  }

  status(): ProvisioningStatus {
    const v = this.#vault.status();
    const damagedNames = new Set(v.damaged.map((d) => d.name));
    const damaged = v.damaged.filter((d) => IDENTITY_SECRETS.indexOf(d.name) >= 0);
    const missing = IDENTITY_SECRETS.filter((n) => !this.#vault.has(n) && !damagedNames.has(n));
    if (v.problem) {
      return { provisioned: false, state: "damaged", missing, damaged, message: `${v.problem.message}` };
    }
    if (damaged.length > 0) {
      return { provisioned: false, state: "damaged", missing, damaged, message: `${damaged[0].message}${damaged.length > 1 ? ` (and ${damaged.length - 1} more)` : ""}` };
    }
    if (missing.length > 0) {
      return { provisioned: false, state: "unprovisioned", missing, damaged, message: "not provisioned: waiting for a provisioning bundle on the local channel" };
    }
    return { provisioned: true, state: "provisioned", missing, damaged, message: "provisioned" };
  }

  /**
   * Store a bundle, once. Throws ProvisioningError when already provisioned or
   * when the bundle is invalid (nothing is written then). Returns the device's
   * public key for registration with the cloud.
   */
  accept(bundleBytes: Uint8Array): { thing: string; publicKey: Uint8Array } {
    const before = this.status();
    if (before.provisioned) throw new ProvisioningError("provisioning: this device is already provisioned; a factory reset is needed before another bundle");
    const bundle = parseBundle(bundleBytes);
    try {
      const vaultStatus = this.#vault.status();
      if (vaultStatus.problem && vaultStatus.problem.reason !== "no-key") {
        // Nothing in this vault can be read again; start a fresh one.
        this.#log("warn", "provisioning: wiping an unreadable vault", { reason: vaultStatus.problem.reason });
        this.#vault.wipeAll();
      }
      const v = this.#vault;
      v.delete(SECRET.marker);
      for (const d of v.status().damaged) v.delete(d.name);
      const publicKey = this.#ensureDeviceKey();
      v.set(SECRET.thing, utf8Encode(bundle.thing));
      v.set(SECRET.wifiSsid, utf8Encode(bundle.wifi.ssid));
      v.set(SECRET.wifiPassword, utf8Encode(bundle.wifi.password));
      v.set(SECRET.endpoint, utf8Encode(bundle.endpoint));
      v.set(SECRET.cert, bundle.cert);
      v.set(SECRET.key, bundle.key);
      v.set(SECRET.ca, bundle.ca);
      v.set(SECRET.owner, encodeOwner(bundle.owner));
      v.set(SECRET.marker, Uint8Array.of(BUNDLE_VERSION));
      this.#log("info", "provisioned", { thing: bundle.thing, reprovisioned: before.state === "damaged" });
      return { thing: bundle.thing, publicKey };
    } catch (e) {
      if (e instanceof VaultError) throw new ProvisioningError(`provisioning: could not store the bundle: ${e.message}`);
      throw e;
    } finally {
      wipe(bundle.key);
    }
  }

  /** Everything the device needs to connect and sign. Throws ProvisioningError unless provisioned. */
  identity(): DeviceIdentity {
    const status = this.status();
    if (!status.provisioned) throw new ProvisioningError(`provisioning: ${status.message}`);
    try {
      const v = this.#vault;
      const text = (name: string) => utf8Decode(required(v, name));
      const endpoint = parseEndpoint(text(SECRET.endpoint));
      return {
        thing: text(SECRET.thing),
        wifi: { ssid: text(SECRET.wifiSsid), password: text(SECRET.wifiPassword) },
        endpoint,
        tls: { certificate: required(v, SECRET.ca), clientCertificates: [required(v, SECRET.cert)], clientKey: required(v, SECRET.key) },
        signingSeed: required(v, SECRET.seed),
        publicKey: required(v, SECRET.publicKey),
        owner: decodeOwner(required(v, SECRET.owner)),
      };
    } catch (e) {
      if (e instanceof VaultError) throw new ProvisioningError(`provisioning: ${e.message}`);
      throw e;
    }
  }

  /** The device's Ed25519 public key, once it has one (it is made during accept). */
  publicKey(): Uint8Array | undefined {
    try {
      return this.#vault.get(SECRET.publicKey);
    } catch {
      return undefined;
    }
  }

  /**
   * The device's X25519 public key, derived from its identity seed: registered
   * next to the Ed25519 key, because apps derive their keys with it. One
   * base-point multiplication (about 2 s on the device), so only on request.
   */
  boxPublicKey(): Uint8Array | undefined {
    let seed: Uint8Array | undefined;
    try {
      seed = this.#vault.get(SECRET.seed);
    } catch {
      return undefined;
    }
    if (!seed) return undefined;
    const secret = deviceBoxSecretFromSeed(seed);
    wipe(seed);
    const { publicKey, secretKey } = nacl.box.keyPair.fromSecretKey(secret);
    wipe(secret);
    wipe(secretKey);
    return publicKey;
  }

  /**
   * Erase every secret and everything else the firmware wrote (see the module
   * comment for the two records kept). The next boot is unprovisioned, starts
   * its counters again, and makes a new device key at the next bundle.
   */
  factoryReset(): void {
    // A damaged count starts again from 1: the anchor may then stay ahead until the account deletes the shadow (docs/access.md).
    const n = this.resets() ?? 0;
    this.#store?.write(RESET_MARK, encodeJsonRecord("reset", { n: n + 1 }));
    const erased = this.#finishReset();
    this.#log("warn", "factory reset: every secret and every record the firmware wrote erased", { records: erased });
  }

  /**
   * Factory resets this chip has been through (0 before the first); undefined
   * when the record is damaged, which the access anchor treats as behind any
   * count the cloud holds.
   */
  resets(): number | undefined {
    if (!this.#store) return 0;
    const r = readJsonRecord(this.#store, RESETS_KEY, "resets");
    if (r.state === "missing") return 0;
    const n = r.state === "ok" && typeof r.value === "object" && r.value !== null && !Array.isArray(r.value) ? (r.value as { n?: unknown }).n : undefined;
    if (typeof n === "number" && Number.isSafeInteger(n) && n >= 0) return n;
    this.#log("error", "the count of factory resets is damaged", { reason: r.state === "damaged" ? r.reason : "shape" });
    return undefined;
  }

  /** Raise the count to one the chip's own anchor shows (a dump from before a reset), so the next reset moves above it. */
  raiseResets(n: number): void {
    const now = this.resets();
    if (!this.#store || !Number.isSafeInteger(n) || (now !== undefined && now >= n)) return;
    this.#store.write(RESETS_KEY, encodeJsonRecord("resets", { n }));
  }

  #finishReset(): number {
    const store = this.#store;
    if (store) {
      // First, so every later step (and a re-run after a power cut) leaves the count moved on.
      const mark = readJsonRecord(store, RESET_MARK, "reset");
      const target = mark.state === "ok" ? (mark.value as { n?: unknown }).n : undefined;
      const now = this.resets();
      const next = typeof target === "number" && Number.isSafeInteger(target) && target > 0 ? target : (now ?? 0) + 1;
      if (now === undefined || now < next) store.write(RESETS_KEY, encodeJsonRecord("resets", { n: next }));
    }
    this.#vault.wipeAll();
    if (!store) return 0;
    let erased = 0;
    for (const key of store.keys()) {
      if (key === RESET_MARK || FACTORY_RESET_KEEPS.indexOf(key) >= 0) continue;
      store.delete(key);
      erased++;
    }
    // Last: until this delete, the next boot finishes the reset.
    store.delete(RESET_MARK);
    return erased;
  }

  /** Keep an intact device key across re-provisioning (so the cloud registration stays valid); make one otherwise. */
  #ensureDeviceKey(): Uint8Array {
    const v = this.#vault;
    const seed = v.has(SECRET.seed) ? v.get(SECRET.seed) : undefined;
    if (seed && seed.length === 32) {
      const stored = v.has(SECRET.publicKey) ? v.get(SECRET.publicKey) : undefined;
      if (stored && stored.length === 32) {
        wipe(seed);
        return stored;
      }
      // Deriving costs about one Ed25519 sign on XS (seconds on an ESP32): only when the stored key is gone.
      const publicKey = nacl.sign.keyPair.fromSeed(seed).publicKey;
      wipe(seed);
      v.set(SECRET.publicKey, publicKey);
      return publicKey;
    }
    // A device key lives for years: made only from a running entropy source, from bytes that pass the health tests.
    if (this.#entropyReady && !this.#entropyReady()) {
      throw new ProvisioningError("provisioning: no true entropy source runs yet, so no device key is made; restart the device and provision it before it joins Wi-Fi");
    }
    const fresh = new Uint8Array(32);
    const health = new RngHealth();
    if (!health.draw(this.#random, fresh)) {
      throw new ProvisioningError(`provisioning: the RNG failed its health tests (${health.failure}); no device key is made from it`);
    }
    const pair = nacl.sign.keyPair.fromSeed(fresh);
    v.set(SECRET.seed, fresh);
    v.set(SECRET.publicKey, pair.publicKey);
    wipe(fresh);
    wipe(pair.secretKey);
    this.#log("info", "device key created");
    return pair.publicKey;
  }
}

function required(v: Vault, name: string): Uint8Array {
  const value = v.get(name);
  if (value === undefined) throw new ProvisioningError(`provisioning: secret "${name}" is missing`);
  return value;
}

// ------------------------------------------------------------------ owner blob

const OWNER_FORMAT = 1;

export function encodeOwner(owner: OwnerKeys): Uint8Array {
  const out = new Uint8Array(65);
  out[0] = OWNER_FORMAT;
  out.set(owner.signKey, 1);
  out.set(owner.boxKey, 33);
  return out;
}

export function decodeOwner(blob: Uint8Array): OwnerKeys {
  if (blob.length !== 65 || blob[0] !== OWNER_FORMAT) throw new ProvisioningError("provisioning: owner record has an unknown format");
  return { signKey: blob.slice(1, 33), boxKey: blob.slice(33, 65) };
}

// ------------------------------------------------------------------ bundle

/** JSON, UTF-8, binary fields in base64url. The CLI writes it; the device parses it strictly. */
export function encodeBundle(b: ProvisioningBundle): Uint8Array {
  return utf8Encode(
    JSON.stringify({
      kind: BUNDLE_KIND,
      v: BUNDLE_VERSION,
      thing: b.thing,
      wifi: { ssid: b.wifi.ssid, password: b.wifi.password },
      endpoint: b.endpoint,
      aws: { cert: toBase64Url(b.cert), key: toBase64Url(b.key), ca: toBase64Url(b.ca) },
      owner: { sign: toBase64Url(b.owner.signKey), box: toBase64Url(b.owner.boxKey) },
    }),
  );
}

function fail(why: string): never {
  throw new ProvisioningError(`provisioning bundle: ${why}`);
}

function objectWith(value: unknown, where: string, fields: string[]): Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) fail(`${where} must be an object`);
  const o = value as Record<string, unknown>;
  for (const k of Object.keys(o)) if (fields.indexOf(k) < 0) fail(`unknown field ${where === "bundle" ? "" : where + "."}${k}`);
  for (const k of fields) if (!(k in o)) fail(`missing field ${where === "bundle" ? "" : where + "."}${k}`);
  return o;
}

function stringField(o: Record<string, unknown>, key: string, where: string): string {
  const v = o[key];
  if (typeof v !== "string") fail(`${where} must be a string`);
  if (hasLoneSurrogate(v)) fail(`${where} is not valid Unicode text (it holds a lone surrogate, which has no UTF-8 form)`);
  return v;
}

/** A UTF-16 surrogate without its partner: JSON lets "\ud800" through, UTF-8 cannot encode it. */
function hasLoneSurrogate(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) i++;
      else return true;
    } else if (c >= 0xdc00 && c <= 0xdfff) return true;
  }
  return false;
}

function bytesField(o: Record<string, unknown>, key: string, where: string): Uint8Array {
  const text = stringField(o, key, where);
  try {
    return fromBase64Url(text);
  } catch {
    return fail(`${where} must be base64url without padding`);
  }
}

/** A single DER SEQUENCE whose length covers the whole value exactly. */
function checkDer(der: Uint8Array, where: string): void {
  if (der.length < 2 || der.length > DER_MAX || der[0] !== 0x30) fail(`${where} is not a DER structure`);
  let length = der[1];
  let at = 2;
  if (length & 0x80) {
    const n = length & 0x7f;
    if (n < 1 || n > 2 || der.length < 2 + n) fail(`${where} is not a DER structure`);
    length = 0;
    for (let i = 0; i < n; i++) length = (length << 8) | der[2 + i];
    at = 2 + n;
  }
  if (at + length !== der.length) fail(`${where} has trailing or missing bytes`);
}

const RSA_OID = [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

function hasRsaAlgorithm(pkcs8: Uint8Array): boolean {
  // PKCS#8: SEQUENCE { INTEGER 0, SEQUENCE { OID rsaEncryption, NULL }, OCTET STRING }: the OID sits within the first 30 bytes.
  for (let i = 0; i + RSA_OID.length <= Math.min(pkcs8.length, 30); i++) {
    let match = true;
    for (let k = 0; k < RSA_OID.length && match; k++) match = pkcs8[i + k] === RSA_OID[k];
    if (match) return true;
  }
  return false;
}

const HOST = /^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

export function parseEndpoint(text: string): { host: string; port: number | undefined } {
  const m = /^([^:]+)(?::([0-9]{1,5}))?$/.exec(text);
  if (!m || !HOST.test(m[1])) fail("endpoint must be a host name, optionally with :port");
  const port = m[2] === undefined ? undefined : Number(m[2]);
  if (port !== undefined && (port < 1 || port > 65535)) fail("endpoint port must be 1-65535");
  return { host: m[1], port };
}

function checkPassphrase(password: string): void {
  // WPA2/WPA3 personal: 8-63 printable ASCII characters, or 64 hex digits (the raw PSK).
  const ascii = /^[\x20-\x7e]{8,63}$/.test(password);
  const psk = /^[0-9a-fA-F]{64}$/.test(password);
  if (!ascii && !psk) fail("wifi.password must be 8-63 printable ASCII characters or 64 hex digits (open networks are not supported)");
}

/** Parse and validate a bundle completely; throws ProvisioningError naming the first problem (never a value). */
export function parseBundle(bytes: Uint8Array): ProvisioningBundle {
  if (!(bytes instanceof Uint8Array) || bytes.length === 0) fail("empty");
  if (bytes.length > BUNDLE_MAX_BYTES) fail(`larger than ${BUNDLE_MAX_BYTES} bytes`);
  // A bundle nests two deep; JSON.parse recurses, and thousands of levels overflow an XS stack.
  if (jsonNestsDeeper(bytes, BUNDLE_MAX_DEPTH)) fail(`nested deeper than ${BUNDLE_MAX_DEPTH} levels`);
  let doc: unknown;
  try {
    doc = JSON.parse(utf8Decode(bytes));
  } catch {
    return fail("not UTF-8 JSON");
  }
  const o = objectWith(doc, "bundle", ["kind", "v", "thing", "wifi", "endpoint", "aws", "owner"]);
  if (o.kind !== BUNDLE_KIND) fail(`kind must be "${BUNDLE_KIND}"`);
  if (o.v !== BUNDLE_VERSION) fail(`version must be ${BUNDLE_VERSION}`);
  const thing = stringField(o, "thing", "thing");
  if (!isThingName(thing)) fail("thing must be 1-128 characters of [a-zA-Z0-9:_-]");
  const wifi = objectWith(o.wifi, "wifi", ["ssid", "password"]);
  const ssid = stringField(wifi, "ssid", "wifi.ssid");
  const ssidLength = utf8Encode(ssid).length;
  if (ssidLength < 1 || ssidLength > 32) fail("wifi.ssid must be 1-32 bytes");
  const password = stringField(wifi, "password", "wifi.password");
  checkPassphrase(password);
  const endpoint = stringField(o, "endpoint", "endpoint");
  parseEndpoint(endpoint);
  const aws = objectWith(o.aws, "aws", ["cert", "key", "ca"]);
  const cert = bytesField(aws, "cert", "aws.cert");
  checkDer(cert, "aws.cert");
  const key = bytesField(aws, "key", "aws.key");
  checkDer(key, "aws.key");
  if (!hasRsaAlgorithm(key)) fail("aws.key must be a PKCS#8 RSA private key (the device's TLS client signs with RSA only)");
  const ca = bytesField(aws, "ca", "aws.ca");
  checkDer(ca, "aws.ca");
  const owner = objectWith(o.owner, "owner", ["sign", "box"]);
  const signKey = bytesField(owner, "sign", "owner.sign");
  const boxKey = bytesField(owner, "box", "owner.box");
  if (signKey.length !== 32) fail("owner.sign must be a 32-byte Ed25519 public key");
  if (boxKey.length !== 32) fail("owner.box must be a 32-byte X25519 public key");
  if (!isUsableBoxKey(boxKey)) fail("owner.box is a low-order X25519 point, whose keys anyone can derive");
  return { thing, wifi: { ssid, password }, endpoint, cert, key, ca, owner: { signKey, boxKey } };
}
