/*
 * Development PKI for the local AWS IoT stand-in, the simulator and device builds.
 *
 * One directory holds a dev root CA, the stand-in's server certificate, the cloud
 * service's client certificate and one client certificate per thing. Everything is
 * RSA-2048 with SHA-256 because the Moddable TLS client can only sign with an RSA
 * client key (PKCS#1 v1.5) and RSA server certificates are the safest for it too;
 * that is also what AWS issues by default. Material is created on first use and
 * reused afterwards, so a device flashed with a thing certificate keeps working
 * across stand-in restarts. Private keys are PKCS#8, written with mode 0600.
 *
 * Roles: the subject's OU says what a certificate is for. "Doorward Things" marks a
 * device (CN = thing name), "Doorward Service" marks the cloud backend (CN = service
 * name), "Doorward Broker" the stand-in's server certificate. The stand-in trusts
 * this CA only, so nobody without the CA key can mint a certificate with a chosen OU,
 * and a thing named like the service still carries the thing OU. We chose the OU over
 * a policy OID because it is visible in Node's getPeerCertificate() without parsing
 * extensions, and over the EKU because both clients need clientAuth anyway (the server
 * certificate gets serverAuth only, so it cannot be used as a client certificate).
 *
 * The "rogue" CA in <dir>/rogue issues certificates of exactly the same shape that the
 * stand-in must refuse, and a rogue server certificate a device must refuse.
 *
 * Every certificate carries an authority key identifier, the self-signed roots too (equal
 * to their own subject key identifier). The Moddable SDK's TLS client reads the AKI of each
 * certificate the server sends after its own and compares it with the SKI of its trust
 * anchors, with no check that it is there: a root without one, sent in the chain as the
 * stand-in does, throws inside the handshake and aborts the firmware. A root on disk that
 * lacks it is replaced (and everything it issued with it).
 */

import { X509Certificate as NodeX509Certificate, webcrypto } from "node:crypto";
import { mkdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { isThingName } from "../modules/core/topics";

// @peculiar/x509 resolves its algorithm providers through tsyringe, which needs the Reflect metadata API first.
import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { runAsEntry, UserError } from "./lib/cli";

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;
const subtle = webcrypto.subtle;
x509.cryptoProvider.set(webcrypto);

export const ORGANIZATION = "Doorward Dev";
export const THING_OU = "Doorward Things";
export const SERVICE_OU = "Doorward Service";
export const SERVER_OU = "Doorward Broker";
/** CN of the cloud service certificate. Its MQTT client ID is this name, or this name + "-" + anything. */
export const SERVICE_NAME = "doorward-cloud";

export type CertificateRole = "ca" | "server" | "service" | "thing";

export interface Credentials {
  role: CertificateRole;
  /** Subject CN: thing name, service name, "localhost" for the server, or the CA's name. */
  name: string;
  certPem: string;
  /** PKCS#8 "PRIVATE KEY". Empty for the CA entry returned by ensureDevPki (its key stays on disk). */
  keyPem: string;
  certDer: Uint8Array;
  keyDer: Uint8Array;
  certPath: string;
  keyPath: string;
  /** Same format as Node's TLSSocket#getPeerCertificate().fingerprint256 ("AB:CD:..."). */
  fingerprint256: string;
  notAfter: Date;
}

/** Credentials plus the CA that issued them, which is also the trust anchor for the stand-in's server certificate. */
export interface IssuedCredentials extends Credentials {
  caPem: string;
  caDer: Uint8Array;
  caPath: string;
}

export interface DevPki {
  dir: string;
  /** keyPem/keyDer are empty: only keyPath is given. */
  ca: Credentials;
  server: Credentials;
  service: Credentials;
  /** True when this call generated the CA (first run, or the old one had expired or was unreadable). */
  created: boolean;
}

export interface IssueOptions {
  /** Issue a new key and certificate even when valid ones exist (e.g. to test rotation). */
  fresh?: boolean;
  /** Custom validity (implies fresh), e.g. an expired certificate for a negative test. */
  notBefore?: Date;
  notAfter?: Date;
  /** Told before each RSA key is generated (seconds each on a busy machine), so a first run is not silent. */
  progress?: (line: string) => void;
}

const RSA_GEN: webcrypto.RsaHashedKeyGenParams = {
  name: "RSASSA-PKCS1-v1_5",
  hash: "SHA-256",
  publicExponent: new Uint8Array([1, 0, 1]),
  modulusLength: 2048,
};
const RSA_IMPORT: webcrypto.RsaHashedImportParams = { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" };

const DAY = 86_400_000;
const YEAR = 365 * DAY;
/** Certificates start a day early so a device clock that is slightly behind still accepts them. */
const BACKDATE = DAY;
/** Material closer than this to expiry is regenerated rather than reused. */
const RENEW_MARGIN = 7 * DAY;

const LOCK_WAIT_MS = 30_000;
const LOCK_STALE_MS = 120_000;

// ---------------------------------------------------------------- small helpers

function randomSerial(): string {
  const bytes = webcrypto.getRandomValues(new Uint8Array(16));
  bytes[0] = (bytes[0] & 0x7f) | 0x10; // positive and a full 16 bytes
  return Buffer.from(bytes).toString("hex");
}

function derOf(pem: string): Uint8Array {
  return new Uint8Array(x509.PemConverter.decodeFirst(pem));
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Write through a temporary file and rename, so a reader never sees half a PEM. */
async function writeAtomic(file: string, data: string | Uint8Array, mode: number): Promise<void> {
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, data, { mode });
  await rename(tmp, file);
}

/**
 * Serialise generation across processes (the CLI and a simulator may start together
 * on a fresh checkout). mkdir is atomic; a lock older than LOCK_STALE_MS is from a
 * crashed process and is taken over.
 */
async function withLock<T>(dir: string, fn: () => Promise<T>): Promise<T> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const lock = path.join(dir, ".lock");
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (;;) {
    try {
      await mkdir(lock);
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      const age = await stat(lock).then((s) => Date.now() - s.mtimeMs, () => 0);
      if (age > LOCK_STALE_MS) {
        await rm(lock, { recursive: true, force: true });
        continue;
      }
      if (Date.now() > deadline) throw new Error(`PKI directory ${dir} is locked (${lock}); remove it if no other process is running`);
      await sleep(50);
    }
  }
  try {
    return await fn();
  } finally {
    await rm(lock, { recursive: true, force: true });
  }
}

function subject(role: Exclude<CertificateRole, "ca">, cn: string): string {
  const ou = role === "thing" ? THING_OU : role === "service" ? SERVICE_OU : SERVER_OU;
  return `O=${ORGANIZATION}, OU=${ou}, CN=${cn}`;
}

// ---------------------------------------------------------------- the authorities

interface Authority {
  cert: x509.X509Certificate;
  node: NodeX509Certificate;
  key: CryptoKey;
  certPem: string;
  certPath: string;
  keyPath: string;
}

async function generateKeys(): Promise<{ keys: CryptoKeyPair; keyPem: string; keyDer: Uint8Array }> {
  const keys = (await subtle.generateKey(RSA_GEN, true, ["sign", "verify"])) as CryptoKeyPair;
  const keyDer = new Uint8Array(await subtle.exportKey("pkcs8", keys.privateKey));
  return { keys, keyDer, keyPem: x509.PemConverter.encode(keyDer, "PRIVATE KEY") };
}

/** Load the CA in `caDir`, or create it if missing, unreadable or near expiry. */
async function loadOrCreateAuthority(caDir: string, commonName: string, progress?: (line: string) => void): Promise<{ ca: Authority; created: boolean }> {
  await mkdir(caDir, { recursive: true, mode: 0o700 });
  const certPath = path.join(caDir, "ca.cert.pem");
  const keyPath = path.join(caDir, "ca.key.pem");
  try {
    const certPem = await readFile(certPath, "utf8");
    const keyPem = await readFile(keyPath, "utf8");
    const node = new NodeX509Certificate(certPem);
    if (Date.parse(node.validTo) - Date.now() > RENEW_MARGIN && hasAuthorityKeyId(new x509.X509Certificate(certPem))) {
      const key = await subtle.importKey("pkcs8", derOf(keyPem), RSA_IMPORT, false, ["sign"]);
      return { ca: { cert: new x509.X509Certificate(certPem), node, key, certPem, certPath, keyPath }, created: false };
    }
  } catch {
    // missing or unreadable: fall through and create
  }
  progress?.(`generating an RSA-2048 key for the ${commonName} in ${caDir}`);
  const { keys, keyPem } = await generateKeys();
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: `O=${ORGANIZATION}, CN=${commonName}`,
    notBefore: new Date(now - BACKDATE),
    notAfter: new Date(now + 10 * YEAR),
    signingAlgorithm: RSA_GEN,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  const certPem = cert.toString("pem");
  await writeAtomic(keyPath, keyPem, 0o600);
  await writeAtomic(certPath, certPem, 0o644);
  await writeAtomic(path.join(caDir, "ca.cert.der"), new Uint8Array(cert.rawData), 0o644);
  return {
    ca: { cert, node: new NodeX509Certificate(certPem), key: keys.privateKey, certPem, certPath, keyPath },
    created: true,
  };
}

/** Whether a certificate names its issuer's key (what the SDK's X.509 code needs of every certificate in a chain). */
export function hasAuthorityKeyId(cert: x509.X509Certificate): boolean {
  const aki = cert.getExtension(x509.AuthorityKeyIdentifierExtension);
  return Boolean(aki?.keyId);
}

function credentialsFrom(role: CertificateRole, name: string, certPem: string, keyPem: string, certPath: string, keyPath: string): Credentials {
  const node = new NodeX509Certificate(certPem);
  return {
    role,
    name,
    certPem,
    keyPem,
    certDer: new Uint8Array(node.raw),
    keyDer: keyPem ? derOf(keyPem) : new Uint8Array(0),
    certPath,
    keyPath,
    fingerprint256: node.fingerprint256,
    notAfter: new Date(node.validTo),
  };
}

/** Reuse `<base>.cert.pem`/`<base>.key.pem` if issued by `ca`, matching `subjectCn`, and not near expiry. */
async function tryReuse(ca: Authority, base: string, role: CertificateRole, cn: string): Promise<Credentials | undefined> {
  try {
    const certPem = await readFile(`${base}.cert.pem`, "utf8");
    const keyPem = await readFile(`${base}.key.pem`, "utf8");
    const node = new NodeX509Certificate(certPem);
    if (!node.checkIssued(ca.node) || !node.verify(ca.node.publicKey)) return undefined;
    if (Date.parse(node.validTo) - Date.now() < RENEW_MARGIN) return undefined;
    if (!node.subject.split("\n").includes(`CN=${cn}`)) return undefined;
    return credentialsFrom(role, cn, certPem, keyPem, `${base}.cert.pem`, `${base}.key.pem`);
  } catch {
    return undefined;
  }
}

async function issue(
  ca: Authority,
  base: string,
  role: Exclude<CertificateRole, "ca">,
  cn: string,
  validity: { notBefore?: Date; notAfter?: Date; progress?: (line: string) => void } = {},
): Promise<Credentials> {
  validity.progress?.(`generating an RSA-2048 key for the ${role === "thing" ? `thing ${cn}` : role === "server" ? "stand-in's server certificate" : `cloud service ${cn}`}`);
  const { keys, keyPem, keyDer } = await generateKeys();
  const now = Date.now();
  const server = role === "server";
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
    new x509.ExtendedKeyUsageExtension([server ? x509.ExtendedKeyUsage.serverAuth : x509.ExtendedKeyUsage.clientAuth]),
    await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    await x509.AuthorityKeyIdentifierExtension.create(ca.cert.publicKey),
  ];
  if (server) {
    extensions.push(
      new x509.SubjectAlternativeNameExtension([
        { type: "dns", value: "localhost" },
        { type: "ip", value: "127.0.0.1" },
      ]),
    );
  }
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: subject(role, cn),
    issuer: ca.cert.subject,
    notBefore: validity.notBefore ?? new Date(now - BACKDATE),
    notAfter: validity.notAfter ?? new Date(now + (server ? 2 : 5) * YEAR),
    signingAlgorithm: RSA_GEN,
    publicKey: keys.publicKey,
    signingKey: ca.key,
    extensions,
  });
  const certPem = cert.toString("pem");
  await writeAtomic(`${base}.key.pem`, keyPem, 0o600);
  await writeAtomic(`${base}.key.der`, keyDer, 0o600);
  await writeAtomic(`${base}.cert.pem`, certPem, 0o644);
  await writeAtomic(`${base}.cert.der`, new Uint8Array(cert.rawData), 0o644);
  return credentialsFrom(role, cn, certPem, keyPem, `${base}.cert.pem`, `${base}.key.pem`);
}

async function obtain(
  ca: Authority,
  base: string,
  role: Exclude<CertificateRole, "ca">,
  cn: string,
  options: IssueOptions = {},
): Promise<Credentials> {
  const custom = options.notBefore !== undefined || options.notAfter !== undefined;
  if (!options.fresh && !custom) {
    const reused = await tryReuse(ca, base, role, cn);
    if (reused) return reused;
  }
  return issue(ca, base, role, cn, options);
}

function withCa(creds: Credentials, ca: Authority): IssuedCredentials {
  return { ...creds, caPem: ca.certPem, caDer: new Uint8Array(ca.node.raw), caPath: ca.certPath };
}

// ---------------------------------------------------------------- public API

/**
 * Create (first run) or reuse the dev CA, the stand-in server certificate
 * (SAN DNS:localhost, IP:127.0.0.1) and the cloud service client certificate in `dir`.
 * Layout: ca.cert.pem ca.cert.der ca.key.pem server.{cert,key}.pem service.{cert,key}.pem
 * things/<thing>.{cert,key}.{pem,der} rogue/...
 */
export async function ensureDevPki(dir: string, options: { progress?: (line: string) => void } = {}): Promise<DevPki> {
  const root = path.resolve(dir);
  const progress = options.progress;
  return withLock(root, async () => {
    const { ca, created } = await loadOrCreateAuthority(root, "Doorward Dev Root CA", progress);
    const server = await obtain(ca, path.join(root, "server"), "server", "localhost", { fresh: created, progress });
    const service = await obtain(ca, path.join(root, "service"), "service", SERVICE_NAME, { fresh: created, progress });
    const caCreds = credentialsFrom("ca", "Doorward Dev Root CA", ca.certPem, "", ca.certPath, ca.keyPath);
    return { dir: root, ca: caCreds, server, service, created };
  });
}

/**
 * A device identity: RSA-2048 PKCS#8 key and a certificate with CN = thing name and
 * OU = THING_OU, signed by the dev CA. Reused when a valid one is on disk unless
 * options ask otherwise. The DER forms are what the device loads as resources.
 */
export async function issueThingCredentials(dir: string, thingName: string, options: IssueOptions = {}): Promise<IssuedCredentials> {
  if (!isThingName(thingName)) throw new TypeError(`not a thing name: ${JSON.stringify(thingName)}`);
  const root = path.resolve(dir);
  return withLock(root, async () => {
    const { ca } = await loadOrCreateAuthority(root, "Doorward Dev Root CA", options.progress);
    await mkdir(path.join(root, "things"), { recursive: true, mode: 0o700 });
    const creds = await obtain(ca, path.join(root, "things", thingName), "thing", thingName, options);
    return withCa(creds, ca);
  });
}

/**
 * Credentials of the same shape as the real ones, but from a separate "rogue" CA
 * (in <dir>/rogue) that the stand-in does not trust. role "thing" (default) and
 * "service" give client certificates; "server" gives a localhost/127.0.0.1 server
 * certificate for checking that a device refuses an impostor broker.
 */
export async function issueRogueCredentials(
  dir: string,
  name: string,
  role: "thing" | "service" | "server" = "thing",
): Promise<IssuedCredentials> {
  if (role !== "server" && !isThingName(name)) throw new TypeError(`not a thing/service name: ${JSON.stringify(name)}`);
  const root = path.resolve(dir, "rogue");
  return withLock(root, async () => {
    const { ca } = await loadOrCreateAuthority(root, "Doorward Rogue CA");
    const creds = await obtain(ca, path.join(root, `${role}-${role === "server" ? "localhost" : name}`), role, role === "server" ? "localhost" : name);
    return withCa(creds, ca);
  });
}

/** Read the role and name from a certificate subject as Node reports it in getPeerCertificate(). */
export function roleOfSubject(subjectFields: { OU?: string | string[]; CN?: string | string[] } | undefined): {
  role: "thing" | "service" | "server" | undefined;
  name: string | undefined;
} {
  const one = (v: string | string[] | undefined) => (Array.isArray(v) ? (v.length === 1 ? v[0] : undefined) : v);
  const ou = one(subjectFields?.OU);
  const cn = one(subjectFields?.CN);
  const role = ou === THING_OU ? "thing" : ou === SERVICE_OU ? "service" : ou === SERVER_OU ? "server" : undefined;
  return { role, name: cn };
}

// ------------------------------------------------------------------ CLI

const CLI = {
  name: "pki",
  usage: `usage: npx tsx tools/pki.ts [--dir DIR] [--thing NAME ...]

The development PKI for the local stand-in, the simulator and device builds: a dev root
CA, the stand-in's server certificate, the cloud service's client certificate, and one
client certificate per thing. Created on first use (RSA-2048 key generation takes a few
seconds per key), reused afterwards. Prints where each file is.

  --dir DIR      the PKI directory (default .doorward/pki)
  --thing NAME   issue (or reuse) a thing certificate; repeatable
  -h, --help     this text`,
  options: { dir: { type: "string" }, thing: { type: "string", multiple: true } },
} as const;

runAsEntry(import.meta.url, CLI, async ({ values }) => {
  const dir = path.resolve(values.dir ?? path.join(path.dirname(fileURLToPath(import.meta.url)), "..", ".doorward", "pki"));
  for (const thing of values.thing ?? []) if (!isThingName(thing)) throw new UserError(`not a thing name: ${JSON.stringify(thing)} (1-128 of [a-zA-Z0-9:_-])`);
  const out = (line: string) => process.stdout.write(line + "\n");
  const progress = (line: string) => out(`${line} ...`);
  const pki = await ensureDevPki(dir, { progress });
  out(`PKI directory ${pki.dir}${pki.created ? " (created now)" : ""}`);
  out(`  CA certificate       ${pki.ca.certPath}`);
  out(`  server certificate   ${pki.server.certPath} (SAN localhost, 127.0.0.1)`);
  out(`  cloud service        ${pki.service.certPath} / ${pki.service.keyPath}`);
  for (const thing of values.thing ?? []) {
    const creds = await issueThingCredentials(dir, thing, { progress });
    out(`  thing ${thing.padEnd(14)} ${creds.certPath} / ${creds.keyPath} (DER alongside)`);
  }
  return 0;
});
