/*
 * Provisioning CLI: make a device identity and give it to the simulated doorbell, once.
 *
 *   npx tsx tools/provision.ts create --thing doorward-sim-1 --wifi-ssid Home --wifi-password-file wifi.txt
 *   npx tsx tools/provision.ts feed --bundle .doorward/bundles/doorward-sim-1.json
 *   npx tsx tools/provision.ts status --thing doorward-sim-1
 *
 * `create` writes a bundle (mode 0600) holding the thing name, the Wi-Fi
 * network and passphrase, the broker endpoint, an RSA-2048 client certificate
 * from the local dev CA (tools/pki.ts) or files AWS issued (see `csr`), the CA,
 * and the first owner's public keys. It never invents a password: the
 * passphrase comes from a file or stdin, never from the command line, where
 * other users could read it in the process list. `feed` is the local channel:
 * it hands the bundle to the simulated device, which stores it in its vault
 * and makes its own Ed25519 key; the bundle file is then overwritten and
 * deleted. Nothing here prints a secret: only names, paths, states and the
 * device's public key.
 *
 * The simulated device lives in <home>/things/<thing>/: vault/ is its
 * FileStore for secrets, vault.key the development key file, nvs/ the
 * store for everything else. openSimulatedDevice() is what the simulator
 * calls at boot to get the same vault.
 */
import { X509Certificate, createPrivateKey, webcrypto } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import nacl from "tweetnacl";
import { issueThingCredentials } from "./pki";
import { toBase64Url, fromBase64Url, toHex, utf8Encode } from "../modules/core/bytes";
import type { Log } from "../modules/core/ports";
import { isThingName } from "../modules/core/topics";
import { Vault } from "../modules/core/vault";
import {
  BUNDLE_MAX_BYTES, Provisioning, ProvisioningError, encodeBundle, parseBundle, parseEndpoint, type OwnerKeys, type ProvisioningBundle,
} from "../modules/core/provisioning";
import { FileStore } from "../modules/host/file-store";
import { openKeyFile, KeyFileError, writePrivateFile } from "../modules/host/key-file";
import { createHostLog } from "../modules/host/log";
import { hostRandom } from "../modules/host/random";
import { parseCommandLine, UserError as UsageError, wantsHelp } from "./lib/cli";
import { refuseIfLocked } from "./lib/home-lock";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const DEFAULT_ENDPOINT = "localhost";

export function defaultHome(env: NodeJS.ProcessEnv = process.env): string {
  return env.DOORWARD_HOME ? path.resolve(env.DOORWARD_HOME) : path.join(REPO, ".doorward");
}

/** Where a simulated device keeps its state. The key file sits beside the vault directory, never inside it. */
export function devicePaths(home: string, thing: string) {
  if (!isThingName(thing)) throw new UsageError(`not a thing name: ${JSON.stringify(thing)} (1-128 of [a-zA-Z0-9:_-])`);
  const dir = path.join(home, "things", thing);
  return { dir, vaultDir: path.join(dir, "vault"), keyFile: path.join(dir, "vault.key"), nvsDir: path.join(dir, "nvs") };
}

export interface SimulatedDevice {
  vault: Vault;
  provisioning: Provisioning;
  paths: ReturnType<typeof devicePaths>;
}

/** Boot-time open of a simulated device's vault: what tools/simulator.ts calls before building the Doorbell. */
export function openSimulatedDevice(options: { home: string; thing: string; log: Log; warn?: (line: string) => void }): SimulatedDevice {
  const paths = devicePaths(options.home, options.thing);
  const keys = openKeyFile(paths.keyFile, { warn: options.warn });
  const vault = Vault.open({ store: new FileStore(paths.vaultDir), keys, random: hostRandom, log: options.log });
  // The firmware's other flash too, so a reset erases the outbox and counters with the secrets.
  const store = new FileStore(paths.nvsDir);
  return { vault, provisioning: new Provisioning({ vault, random: hostRandom, log: options.log, store }), paths };
}

// ------------------------------------------------------------------ CLI plumbing

/** A mistake in the command line or its values: one line, exit code 2. */
export { UsageError };

export interface CliIo {
  out(line: string): void;
  err(line: string): void;
  /** All of stdin (for "-" and --wifi-password-stdin); more than maxBytes is refused, not read on forever. */
  readStdin(maxBytes?: number): Promise<Uint8Array>;
  env: NodeJS.ProcessEnv;
}

const USAGE = `usage: npx tsx tools/provision.ts <command> [options]

commands:
  create   make a provisioning bundle for one thing
  feed     give a bundle to the simulated device (accepted once)
  status   show whether the simulated device is provisioned
  reset    factory reset of the simulated device: wipe every secret
  csr      make an RSA-2048 key and a certificate signing request for AWS IoT

create --thing NAME --wifi-ssid SSID (--wifi-password-file FILE | --wifi-password-stdin)
       [--endpoint HOST[:PORT]]  broker (default ${DEFAULT_ENDPOINT}: the local stand-in)
       [--cert FILE --key FILE --ca FILE]  AWS-issued credentials (PEM or DER; RSA key)
                                 instead of a dev certificate from the local CA
       [--pki DIR]               dev CA directory (default <home>/pki)
       [--owner FILE]            owner public keys, JSON {"sign": b64url, "box": b64url}
                                 (default: a dev owner in <home>/owner/, created once)
       [--out FILE] [--force]    bundle path (default <home>/bundles/<thing>.json, mode 0600)
feed   (--bundle FILE | --bundle -) [--keep]   "-" reads stdin; the file is erased after use unless --keep
status --thing NAME
reset  --thing NAME --yes
csr    --thing NAME [--out DIR]  writes <thing>.key.pem (0600) and <thing>.csr.pem

every command: [--home DIR]  device state and dev PKI (default $DOORWARD_HOME or <repo>/.doorward)
The Wi-Fi passphrase is never taken on the command line.`;

interface Parsed {
  command: string;
  values: Map<string, string>;
  flags: Set<string>;
}

const OPTIONS = {
  thing: { type: "string" }, "wifi-ssid": { type: "string" }, "wifi-password-file": { type: "string" }, endpoint: { type: "string" },
  cert: { type: "string" }, key: { type: "string" }, ca: { type: "string" }, pki: { type: "string" }, owner: { type: "string" },
  out: { type: "string" }, bundle: { type: "string" }, home: { type: "string" },
  "wifi-password-stdin": { type: "boolean" }, force: { type: "boolean" }, keep: { type: "boolean" }, yes: { type: "boolean" },
} as const;
const COMMANDS = ["create", "feed", "status", "reset", "csr"];

function parseArgs(argv: string[]): Parsed {
  if (argv.some((a) => a === "--wifi-password" || a.startsWith("--wifi-password="))) {
    throw new UsageError("the Wi-Fi passphrase is not taken on the command line (other users can read it there): use --wifi-password-file FILE or --wifi-password-stdin");
  }
  const { values, positionals } = parseCommandLine({ name: "provision", usage: USAGE, options: OPTIONS, positionals: { max: 1 } }, argv);
  const p: Parsed = { command: positionals[0] ?? "", values: new Map(), flags: new Set() };
  for (const [k, v] of Object.entries(values)) {
    if (typeof v === "string") p.values.set(`--${k}`, v);
    else if (v === true) p.flags.add(`--${k}`);
  }
  return p;
}

function need(p: Parsed, option: string): string {
  const v = p.values.get(option);
  if (v === undefined) throw new UsageError(`${p.command} needs ${option}`);
  return v;
}

function allowOnly(p: Parsed, options: string[]): void {
  for (const k of [...p.values.keys(), ...p.flags]) {
    if (k !== "--home" && options.indexOf(k) < 0) throw new UsageError(`${k} does not apply to ${p.command}`);
  }
}

export async function main(argv: string[], io: CliIo): Promise<number> {
  let p: Parsed;
  try {
    if (wantsHelp(argv)) {
      io.out(USAGE);
      return 0;
    }
    p = parseArgs(argv);
    if (p.command === "" || p.command === "help") {
      io.out(USAGE);
      return 0;
    }
    if (COMMANDS.indexOf(p.command) < 0) throw new UsageError(`unknown command "${p.command}" (see --help)`);
    const home = p.values.has("--home") ? path.resolve(p.values.get("--home")!) : defaultHome(io.env);
    switch (p.command) {
      case "create":
        return await create(p, home, io);
      case "feed":
        return await feed(p, home, io);
      case "status":
        return status(p, home, io);
      case "reset":
        return reset(p, home, io);
      case "csr":
        return await csr(p, home, io);
    }
    return 2;
  } catch (e) {
    if (e instanceof UsageError) {
      io.err(`provision: ${e.message}`);
      return 2;
    }
    if (e instanceof ProvisioningError || e instanceof KeyFileError) {
      io.err(`provision: ${e.message}`);
      return 1;
    }
    io.err(`provision: ${(e as Error).message ?? String(e)}`);
    return 1;
  }
}

// ------------------------------------------------------------------ create

async function create(p: Parsed, home: string, io: CliIo): Promise<number> {
  allowOnly(p, ["--thing", "--wifi-ssid", "--wifi-password-file", "--wifi-password-stdin", "--endpoint", "--cert", "--key", "--ca", "--pki", "--owner", "--out", "--force"]);
  const thing = need(p, "--thing");
  if (!isThingName(thing)) throw new UsageError(`not a thing name: ${JSON.stringify(thing)} (1-128 of [a-zA-Z0-9:_-])`);
  const ssid = need(p, "--wifi-ssid");
  const password = await readPassphrase(p, io);
  const endpoint = p.values.get("--endpoint") ?? DEFAULT_ENDPOINT;
  try {
    parseEndpoint(endpoint);
  } catch {
    throw new UsageError(`--endpoint must be a host name, optionally with :port (got ${JSON.stringify(endpoint)})`);
  }
  const out = path.resolve(p.values.get("--out") ?? path.join(home, "bundles", `${thing}.json`));
  if (fs.existsSync(out) && !p.flags.has("--force")) throw new UsageError(`${out} exists; remove it or add --force`);

  const aws = ["--cert", "--key", "--ca"].filter((o) => p.values.has(o));
  let cert: Uint8Array, key: Uint8Array, ca: Uint8Array, source: string;
  if (aws.length === 3) {
    ({ cert, key, ca } = loadIssued(p.values.get("--cert")!, p.values.get("--key")!, p.values.get("--ca")!));
    source = "the given certificate and key";
  } else if (aws.length === 0) {
    const pkiDir = path.resolve(p.values.get("--pki") ?? path.join(home, "pki"));
    const creds = await issueThingCredentials(pkiDir, thing, { progress: (line) => io.out(`${line} ...`) });
    cert = creds.certDer;
    key = creds.keyDer;
    ca = creds.caDer;
    source = `a development certificate from the local CA in ${pkiDir}`;
  } else {
    throw new UsageError("--cert, --key and --ca go together (all three, or none for a dev certificate)");
  }
  const owner = p.values.has("--owner") ? readOwnerFile(p.values.get("--owner")!) : devOwner(home, io);
  const bundle: ProvisioningBundle = { thing, wifi: { ssid, password }, endpoint, cert, key, ca, owner };
  const bytes = encodeBundle(bundle);
  parseBundle(bytes); // the device's own validation, so a bad bundle fails here and not at the door
  fs.mkdirSync(path.dirname(out), { recursive: true, mode: 0o700 });
  writePrivate(out, bytes, p.flags.has("--force"));
  bytes.fill(0);
  key.fill(0);
  io.out(`bundle for ${thing} written to ${out} (mode 0600), with ${source}, endpoint ${endpoint}`);
  for (const line of nextSteps(out, aws.length === 3, p.values.has("--home") ? home : undefined)) io.out(line);
  return 0;
}

/** Whether a client certificate was issued by the development CA of this home: a simulated device's, not a board's. */
function fromDevCa(cert: Uint8Array, home: string): boolean {
  const caFile = path.join(home, "pki", "ca.cert.pem");
  try {
    const ca = new X509Certificate(fs.readFileSync(caFile));
    const c = new X509Certificate(Buffer.from(cert));
    return c.checkIssued(ca) && c.verify(ca.publicKey);
  } catch {
    return false;
  }
}

/** Where a new bundle can go, each way erasing it once the device has it. */
function nextSteps(bundle: string, forBoard: boolean, home: string | undefined): string[] {
  if (forBoard) {
    return [
      `it holds secrets in plain form and is for a board: send it over USB, which erases it afterwards:`,
      `  npm run provision -- --port <tty> --bundle ${bundle}`,
    ];
  }
  return [
    `it holds secrets in plain form: give it to one device, which erases it afterwards:`,
    `  the simulated device of npm start:  npx tsx tools/provision.ts feed --bundle ${bundle}${home ? ` --home ${home}` : ""}`,
    `  Moddable's simulator (npm run sim:lin):  npm run provision:sim -- --bundle ${bundle}`,
  ];
}

async function readPassphrase(p: Parsed, io: CliIo): Promise<string> {
  const file = p.values.get("--wifi-password-file");
  const stdin = p.flags.has("--wifi-password-stdin");
  if ((file === undefined) === !stdin) throw new UsageError("give the Wi-Fi passphrase with exactly one of --wifi-password-file FILE or --wifi-password-stdin");
  const raw = Buffer.from(file !== undefined ? readBounded(file, PASSPHRASE_READ_MAX, `passphrase file ${file}`) : await io.readStdin(PASSPHRASE_READ_MAX));
  if (raw.length > PASSPHRASE_READ_MAX) throw new UsageError(`the Wi-Fi passphrase input is larger than ${PASSPHRASE_READ_MAX} bytes`);
  const text = raw.toString("utf8").replace(/\r?\n$/, "");
  raw.fill(0);
  if (text.includes("\n")) throw new UsageError("the Wi-Fi passphrase must be a single line");
  return text;
}

function pemOrDer(file: string): { der?: Uint8Array; pem?: string } {
  const raw = fs.readFileSync(file);
  const text = raw.toString("latin1");
  return text.includes("-----BEGIN ") ? { pem: text } : { der: new Uint8Array(raw) };
}

function certificateDer(file: string, what: string): Uint8Array {
  const src = pemOrDer(file);
  try {
    return new Uint8Array(new X509Certificate(src.pem ?? Buffer.from(src.der!)).raw);
  } catch {
    throw new UsageError(`${what} ${file} is not an X.509 certificate (PEM or DER)`);
  }
}

function loadIssued(certFile: string, keyFile: string, caFile: string): { cert: Uint8Array; key: Uint8Array; ca: Uint8Array } {
  const cert = certificateDer(certFile, "--cert");
  const ca = certificateDer(caFile, "--ca");
  const src = pemOrDer(keyFile);
  let keyObject;
  try {
    keyObject = src.pem ? createPrivateKey(src.pem) : createPrivateKey({ key: Buffer.from(src.der!), format: "der", type: "pkcs8" });
  } catch {
    throw new UsageError(`--key ${keyFile} is not a private key (PEM, or PKCS#8 DER)`);
  }
  if (keyObject.asymmetricKeyType !== "rsa") {
    throw new UsageError(`--key must be an RSA key (the device's TLS client signs with RSA only), not ${keyObject.asymmetricKeyType}`);
  }
  if (!new X509Certificate(Buffer.from(cert)).checkPrivateKey(keyObject)) throw new UsageError("--key does not belong to --cert");
  const key = new Uint8Array(keyObject.export({ type: "pkcs8", format: "der" }));
  return { cert, key, ca };
}

function readOwnerFile(file: string): OwnerKeys {
  let doc: { sign?: unknown; box?: unknown };
  try {
    doc = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch {
    throw new UsageError(`--owner ${file} is not JSON`);
  }
  const key = (v: unknown, name: string) => {
    try {
      const k = typeof v === "string" ? fromBase64Url(v) : undefined;
      if (k && k.length === 32) return k;
    } catch {
      // reported below
    }
    throw new UsageError(`--owner ${file}: "${name}" must be a 32-byte public key in base64url`);
  };
  return { signKey: key(doc.sign, "sign"), boxKey: key(doc.box, "box") };
}

/**
 * A development owner for the simulator: both key pairs in <home>/owner/owner.secret.json
 * (mode 0600), made once, so tools acting as the owner can sign commands and open boxes.
 */
export function devOwner(home: string, io?: Pick<CliIo, "out">): OwnerKeys {
  const file = path.join(home, "owner", "owner.secret.json");
  if (fs.existsSync(file)) {
    const doc = JSON.parse(fs.readFileSync(file, "utf8")) as { signPublic: string; boxPublic: string };
    return { signKey: fromBase64Url(doc.signPublic), boxKey: fromBase64Url(doc.boxPublic) };
  }
  const seed = new Uint8Array(32);
  hostRandom.fill(seed);
  const sign = nacl.sign.keyPair.fromSeed(seed);
  const boxSecret = new Uint8Array(32);
  hostRandom.fill(boxSecret);
  const box = nacl.box.keyPair.fromSecretKey(boxSecret);
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const doc = { signPublic: toBase64Url(sign.publicKey), signSeed: toBase64Url(seed), boxPublic: toBase64Url(box.publicKey), boxSecret: toBase64Url(boxSecret) };
  writePrivate(file, utf8Encode(JSON.stringify(doc, null, 2) + "\n"), false);
  seed.fill(0);
  boxSecret.fill(0);
  io?.out(`created a development owner in ${file} (its secret keys stay on this machine)`);
  return { signKey: sign.publicKey, boxKey: box.publicKey };
}

function writePrivate(file: string, bytes: Uint8Array, replace: boolean): void {
  if (replace) fs.rmSync(file, { force: true });
  writePrivateFile(file, bytes);
}

// ------------------------------------------------------------------ feed, status, reset

function deviceLog(io: CliIo): Log {
  return createHostLog((line) => io.err(`device ${line}`));
}

async function feed(p: Parsed, home: string, io: CliIo): Promise<number> {
  allowOnly(p, ["--bundle", "--keep", "--thing"]);
  const source = need(p, "--bundle");
  refuseIfLocked(home);
  // Bounded: a device file such as /dev/zero, or a pipe that never closes, is refused, not read forever.
  const bytes = source === "-" ? await io.readStdin(BUNDLE_MAX_BYTES) : readBounded(source, BUNDLE_MAX_BYTES, `bundle ${source}`);
  if (bytes.length > BUNDLE_MAX_BYTES) throw new UsageError(`the bundle is larger than ${BUNDLE_MAX_BYTES} bytes`);
  const parsed = parseBundle(bytes);
  const thing = parsed.thing;
  const expected = p.values.get("--thing");
  if (expected !== undefined && expected !== thing) throw new UsageError(`the bundle is for ${thing}, not ${expected}`);
  if (!fromDevCa(parsed.cert, home)) {
    bytes.fill(0);
    throw new UsageError(
      `the bundle's certificate is not from the development CA in ${path.join(home, "pki")} (AWS-issued, for a board?), so it is not for the simulated device; ` +
        `it was left as it was. Send it to the board: npm run provision -- --port <tty> --bundle ${source === "-" ? "FILE" : source}`,
    );
  }
  const device = openSimulatedDevice({ home, thing, log: deviceLog(io), warn: io.err });
  const before = device.provisioning.status();
  if (before.provisioned) {
    bytes.fill(0);
    io.err(`provision: ${thing} is already provisioned: a device accepts one bundle. To start over: npx tsx tools/provision.ts reset --thing ${thing} --yes`);
    return 1;
  }
  const { publicKey } = device.provisioning.accept(bytes);
  bytes.fill(0);
  if (source !== "-" && !p.flags.has("--keep")) erase(source);
  io.out(`${thing} provisioned${before.state === "damaged" ? " again (its damaged secrets were replaced)" : ""}; secrets stored encrypted in ${device.paths.vaultDir}`);
  io.out(`device public key (Ed25519, register it with the cloud): ${toHex(publicKey)}`);
  io.out(`device box key (X25519, for the apps): ${toHex(device.provisioning.boxPublicKey()!)}`);
  if (source !== "-" && !p.flags.has("--keep")) io.out(`bundle ${source} erased`);
  return 0;
}

/** Longest input taken as a Wi-Fi passphrase (a WPA passphrase is at most 63 bytes; a line ending and slack besides). */
const PASSPHRASE_READ_MAX = 4096;

/** At most maxBytes + 1 bytes of a file, so a file that never ends (a device, a FIFO left open) cannot hold the tool. */
function readBounded(file: string, maxBytes: number, what: string): Uint8Array {
  const fd = fs.openSync(file, "r");
  const buf = new Uint8Array(maxBytes + 1);
  try {
    let n = 0;
    while (n < buf.length) {
      const got = fs.readSync(fd, buf, n, buf.length - n, null);
      if (got === 0) break;
      n += got;
    }
    if (n > maxBytes) throw new UsageError(`${what} is larger than ${maxBytes} bytes`);
    return buf.slice(0, n);
  } finally {
    buf.fill(0);
    fs.closeSync(fd);
  }
}

/** Overwrite, flush and delete: the bundle held secrets in plain form. */
function erase(file: string): void {
  const size = fs.statSync(file).size;
  const fd = fs.openSync(file, "r+");
  try {
    fs.writeSync(fd, new Uint8Array(size), 0, size, 0);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.rmSync(file);
}

function status(p: Parsed, home: string, io: CliIo): number {
  allowOnly(p, ["--thing"]);
  const thing = need(p, "--thing");
  const paths = devicePaths(home, thing);
  if (!fs.existsSync(paths.keyFile)) {
    io.out(`${thing}: unprovisioned (no device state in ${paths.dir})`);
    return 0;
  }
  const device = openSimulatedDevice({ home, thing, log: deviceLog(io), warn: io.err });
  const s = device.provisioning.status();
  io.out(`${thing}: ${s.state}: ${s.message}`);
  if (s.missing.length && s.state !== "provisioned") io.out(`  missing: ${s.missing.join(", ")}`);
  for (const d of s.damaged) io.out(`  damaged: ${d.name} (${d.reason})`);
  const publicKey = device.provisioning.publicKey();
  if (s.provisioned && publicKey) io.out(`  device public key: ${toHex(publicKey)}`);
  const boxKey = s.provisioned ? device.provisioning.boxPublicKey() : undefined;
  if (boxKey) io.out(`  device box key (X25519): ${toHex(boxKey)}`);
  return 0;
}

function reset(p: Parsed, home: string, io: CliIo): number {
  allowOnly(p, ["--thing", "--yes"]);
  const thing = need(p, "--thing");
  if (!p.flags.has("--yes")) throw new UsageError(`reset erases every secret of ${thing} (Wi-Fi, keys, certificates) and everything it wrote (queued events, counters): add --yes to confirm`);
  refuseIfLocked(home);
  const device = openSimulatedDevice({ home, thing, log: deviceLog(io), warn: io.err });
  const count = device.vault.list().length + device.vault.status().damaged.length;
  device.provisioning.factoryReset();
  io.out(`${thing}: factory reset, ${count} secrets wiped; it now waits for a new bundle (npm start provisions it again by itself)`);
  return 0;
}

// ------------------------------------------------------------------ csr

async function csr(p: Parsed, home: string, io: CliIo): Promise<number> {
  allowOnly(p, ["--thing", "--out"]);
  const thing = need(p, "--thing");
  if (!isThingName(thing)) throw new UsageError(`not a thing name: ${JSON.stringify(thing)}`);
  const dir = path.resolve(p.values.get("--out") ?? path.join(home, "aws", thing));
  const keyFile = path.join(dir, `${thing}.key.pem`);
  const csrFile = path.join(dir, `${thing}.csr.pem`);
  if (fs.existsSync(keyFile)) throw new UsageError(`${keyFile} exists; a key is never overwritten`);
  // tools/pki.ts (imported above) has already made @peculiar/x509 loadable and set its crypto provider.
  const x509 = await import("@peculiar/x509");
  const algorithm = { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256", publicExponent: new Uint8Array([1, 0, 1]), modulusLength: 2048 };
  const keys = await webcrypto.subtle.generateKey(algorithm, true, ["sign", "verify"]);
  const request = await x509.Pkcs10CertificateRequestGenerator.create({ name: `CN=${thing}`, keys, signingAlgorithm: algorithm });
  const keyDer = new Uint8Array(await webcrypto.subtle.exportKey("pkcs8", keys.privateKey));
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  writePrivate(keyFile, utf8Encode(x509.PemConverter.encode(keyDer, "PRIVATE KEY")), false);
  keyDer.fill(0);
  fs.writeFileSync(csrFile, request.toString("pem") + "\n", { mode: 0o644 });
  io.out(`RSA-2048 key: ${keyFile} (mode 0600, stays here)`);
  io.out(`CSR: ${csrFile}`);
  io.out(`next: aws iot create-certificate-from-csr --certificate-signing-request file://${csrFile} --set-as-active --certificate-pem-outfile ${path.join(dir, `${thing}.cert.pem`)}`);
  io.out(`      attach the certificate to thing ${thing} and its policy, download Amazon Root CA 1, then:`);
  io.out(`      npx tsx tools/provision.ts create --thing ${thing} --cert ${path.join(dir, `${thing}.cert.pem`)} --key ${keyFile} --ca AmazonRootCA1.pem --endpoint <prefix>-ats.iot.<region>.amazonaws.com --wifi-ssid ... --wifi-password-file ...`);
  return 0;
}

// ------------------------------------------------------------------ entry

function processIo(): CliIo {
  return {
    out: (line) => process.stdout.write(line + "\n"),
    err: (line) => process.stderr.write(line + "\n"),
    async readStdin(maxBytes = Infinity) {
      const parts: Buffer[] = [];
      let total = 0;
      for await (const chunk of process.stdin) {
        total += (chunk as Buffer).length;
        if (total > maxBytes) {
          for (const part of parts) part.fill(0);
          process.stdin.destroy();
          throw new UsageError(`stdin holds more than ${maxBytes} bytes`);
        }
        parts.push(chunk as Buffer);
      }
      return new Uint8Array(Buffer.concat(parts));
    },
    env: process.env,
  };
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2), processIo()).then((code) => process.exit(code));
}
