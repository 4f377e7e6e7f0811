/*
 * Release signing: the release key, signed manifests, key rotation.
 *
 * The release key is an Ed25519 seed that belongs on an offline machine (or a
 * hardware token); only its public half is built into firmware. This tool
 * makes one, signs an image into a manifest (modules/core/release), checks a
 * manifest against an image, and signs key-set updates for rotation. Keys are
 * files holding the 32-byte seed as hex, mode 0600, created exclusively.
 *
 *   tsx tools/release.ts keygen  --out DIR [--name release]
 *   tsx tools/release.ts sign    --key K.key --image fw.bin --version N --board B
 *                                [--label 1.2.3] [--min-version M] [--out fw.manifest.json]
 *   tsx tools/release.ts verify  --pub K.pub --image fw.bin --manifest fw.manifest.json [--board B] [--floor N]
 *   tsx tools/release.ts rotate  --serial N --sign OLD.key [--sign NEW.key ...] --keep OLD.pub|NEW.pub ... [--out keys.json]
 *   tsx tools/release.ts sim-image --version N --board B [--unhealthy] [--size BYTES] --out fw.bin
 */
import { createHash } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import nacl from "tweetnacl";
import { canonicalBytes, type Json } from "../modules/core/canonical";
import { fromHex, toHex } from "../modules/core/bytes";
import {
  keySetProblem,
  manifestMessage,
  readRelease,
  releaseKeyId,
  signKeyUpdate,
  signRelease,
  type FirmwareManifest,
  type KeyUpdate,
  type ReleaseKeySet,
  type SignedRelease,
  type TrustedKeys,
} from "../modules/core/release";
import { makeSimImage } from "../modules/host/update-sink";
import { intOption, parseCommandLine, runAsEntry, UserError, wantsHelp } from "./lib/cli";

export interface ReleaseKey {
  /** tweetnacl's 64-byte secret key (seed ‖ public key). */
  secretKey: Uint8Array;
  publicKey: Uint8Array;
  keyId: string;
}

export function releaseKeyFromSeed(seed: Uint8Array): ReleaseKey {
  if (seed.length !== 32) throw new RangeError("release key seed must be 32 bytes");
  const kp = nacl.sign.keyPair.fromSeed(seed);
  return { secretKey: kp.secretKey, publicKey: kp.publicKey, keyId: releaseKeyId(kp.publicKey) };
}

export function generateReleaseKey(): ReleaseKey {
  return releaseKeyFromSeed(nacl.randomBytes(32));
}

/** Write <dir>/<name>.key (seed, 0600, exclusive) and <name>.pub; refuses to overwrite a key. */
export function writeReleaseKey(dir: string, name = "release", key: ReleaseKey = generateReleaseKey()): { keyPath: string; pubPath: string; key: ReleaseKey } {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const keyPath = path.join(dir, `${name}.key`);
  const pubPath = path.join(dir, `${name}.pub`);
  fs.writeFileSync(keyPath, toHex(key.secretKey.subarray(0, 32)) + "\n", { mode: 0o600, flag: "wx" });
  fs.writeFileSync(pubPath, toHex(key.publicKey) + "\n", { mode: 0o644 });
  return { keyPath, pubPath, key };
}

export function loadReleaseKey(keyPath: string): ReleaseKey {
  const st = fs.statSync(keyPath);
  if ((st.mode & 0o077) !== 0) throw new UserError(`${keyPath}: readable by others (mode ${(st.mode & 0o777).toString(8)}); refusing to use it`);
  return releaseKeyFromSeed(fromHex(fs.readFileSync(keyPath, "utf8").trim()));
}

export function loadPublicKey(pubPath: string): Uint8Array {
  const pk = fromHex(fs.readFileSync(pubPath, "utf8").trim());
  if (pk.length !== 32) throw new UserError(`${pubPath}: not a 32-byte public key`);
  return pk;
}

/**
 * The development release key for the simulator and tests, kept under
 * <home>/release (created on first use). Never use it for a real fleet.
 */
export function ensureDevReleaseKey(home: string): ReleaseKey {
  const dir = path.join(home, "release");
  const keyPath = path.join(dir, "dev-release.key");
  if (fs.existsSync(keyPath)) return loadReleaseKey(keyPath);
  try {
    return writeReleaseKey(dir, "dev-release").key;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "EEXIST") return loadReleaseKey(keyPath);
    throw e;
  }
}

/** The built-in trust for a firmware build: serial 1, the given release keys. */
export function builtInKeys(...keys: Array<ReleaseKey | Uint8Array>): TrustedKeys {
  return { serial: 1, keys: keys.map((k) => (k instanceof Uint8Array ? k : k.publicKey)) };
}

export interface SignImageOptions {
  key: ReleaseKey;
  version: number;
  board: string;
  label?: string;
  minVersion?: number;
}

export function sha256Hex(image: Uint8Array): string {
  return createHash("sha256").update(image).digest("hex");
}

export function signImage(image: Uint8Array, o: SignImageOptions): SignedRelease {
  const manifest: FirmwareManifest = {
    v: 1,
    kind: "firmware",
    board: o.board,
    version: o.version,
    label: o.label ?? `0.0.${o.version}`,
    minVersion: o.minVersion ?? 0,
    size: image.length,
    sha256: sha256Hex(image),
    keyId: o.key.keyId,
  };
  return signRelease(manifest, o.key.secretKey);
}

/** The manifest file's bytes: canonical JSON, so the file is byte-for-byte reproducible. */
export function releaseBytes(release: SignedRelease | KeyUpdate): Uint8Array {
  return canonicalBytes(release as unknown as Json);
}

export type VerifyVerdict = { ok: true; manifest: FirmwareManifest } | { ok: false; problem: string };

/** What the device checks, run on the workstation: signature, key, size, digest, and optionally board and floor. */
export function verifyImage(doc: unknown, image: Uint8Array, publicKey: Uint8Array, expect: { board?: string; floor?: number } = {}): VerifyVerdict {
  const r = readRelease(doc);
  if (!r.ok) return { ok: false, problem: r.problem };
  const m = r.manifest;
  if (!r.signature) return { ok: false, problem: "unsigned" };
  if (m.keyId !== releaseKeyId(publicKey)) return { ok: false, problem: `signed by key ${m.keyId}, not ${releaseKeyId(publicKey)}` };
  if (!nacl.sign.detached.verify(manifestMessage(m), r.signature, publicKey)) return { ok: false, problem: "bad signature" };
  if (m.size !== image.length) return { ok: false, problem: `image is ${image.length} bytes, manifest says ${m.size}` };
  if (sha256Hex(image) !== m.sha256) return { ok: false, problem: "image digest does not match" };
  if (expect.board !== undefined && m.board !== expect.board) return { ok: false, problem: `board ${m.board}, expected ${expect.board}` };
  if (expect.floor !== undefined && m.version <= expect.floor) return { ok: false, problem: `version ${m.version} is not above ${expect.floor}` };
  return { ok: true, manifest: m };
}

/** A key-set update signed by the given keys (a trusted one, and every listed one). */
export function rotateKeys(serial: number, keep: Uint8Array[], signers: ReleaseKey[]): KeyUpdate {
  const keySet: ReleaseKeySet = { v: 1, kind: "release-keys", serial, keys: keep.map((k) => toHex(k)) };
  const problem = keySetProblem(keySet);
  if (problem) throw new Error(`key set: ${problem}`);
  return signKeyUpdate(keySet, signers.map((s) => s.secretKey));
}

// ------------------------------------------------------------------ CLI

const CLI = {
  name: "release",
  usage: `usage: npx tsx tools/release.ts <command> [options]

Release signing: the release key, signed manifests, key rotation.

  keygen  --out DIR [--name release]
          a new release key: DIR/<name>.key (the secret seed, mode 0600: keep it offline)
          and DIR/<name>.pub (build it into the firmware)
  sign    --key K.key --image fw.bin --version N --board B [--label 1.2.3] [--min-version M]
          [--out fw.manifest.json]
          sign an image into a manifest (default <image>.manifest.json)
  verify  --pub K.pub --image fw.bin --manifest fw.manifest.json [--board B] [--floor N]
          check a manifest against an image as the device does; exit 1 if refused
  rotate  --serial N --sign OLD.key [--sign NEW.key ...] --keep OLD.pub|NEW.pub ... [--out keys.json]
          a signed key-set update for rotation (default release-keys-<serial>.json)
  sim-image --version N --board B [--unhealthy] [--size BYTES] --out fw.bin
          an image for the simulator (--unhealthy: one that fails its health check)
  -h, --help     this text`,
  options: {
    out: { type: "string" }, name: { type: "string" }, key: { type: "string" }, image: { type: "string" }, version: { type: "string" },
    board: { type: "string" }, label: { type: "string" }, "min-version": { type: "string" }, pub: { type: "string" }, manifest: { type: "string" },
    floor: { type: "string" }, serial: { type: "string" }, sign: { type: "string", multiple: true }, keep: { type: "string", multiple: true },
    unhealthy: { type: "boolean" }, size: { type: "string" },
  },
  positionals: { max: 1 },
} as const;

/** Which options each command takes (anything else is refused, not ignored). */
const TAKES: Record<string, string[]> = {
  keygen: ["out", "name"],
  sign: ["key", "image", "version", "board", "label", "min-version", "out"],
  verify: ["pub", "image", "manifest", "board", "floor"],
  rotate: ["serial", "sign", "keep", "out"],
  "sim-image": ["version", "board", "unhealthy", "size", "out"],
};

function parse(argv: string[]): { cmd: string; flags: Map<string, string[]> } {
  const { values, positionals } = parseCommandLine(CLI, argv);
  const cmd = positionals[0] ?? "help";
  const flags = new Map<string, string[]>();
  for (const [name, v] of Object.entries(values)) {
    if (TAKES[cmd] && !TAKES[cmd].includes(name)) throw new UserError(`--${name} does not apply to ${cmd} (see --help)`);
    flags.set(name, Array.isArray(v) ? v.map(String) : [String(v)]);
  }
  return { cmd, flags };
}

function one(flags: Map<string, string[]>, name: string, fallback?: string): string {
  const v = flags.get(name)?.[0] ?? fallback;
  if (v === undefined) throw new UserError(`--${name} is required (see --help)`);
  return v;
}

function int(text: string, name: string): number {
  return intOption(name, text, { min: 0, max: Number.MAX_SAFE_INTEGER });
}

function readInput(file: string, what: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw new UserError(`cannot read ${what} ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/** The release command; throws UserError for a mistake in its arguments or inputs. */
export function runReleaseCli(argv: string[], out: (line: string) => void = (l) => process.stdout.write(l + "\n")): number {
  if (wantsHelp(argv)) {
    out(CLI.usage);
    return 0;
  }
  const { cmd, flags } = parse(argv);
  switch (cmd) {
    case "keygen": {
      const { keyPath, pubPath, key } = writeReleaseKey(one(flags, "out"), one(flags, "name", "release"));
      out(`release key ${key.keyId}`);
      out(`  secret seed ${keyPath} (mode 0600): keep it offline; anyone holding it can ship firmware`);
      out(`  public key  ${pubPath}: build it into the firmware (manifest.json config.update.releaseKeys)`);
      return 0;
    }
    case "sign": {
      const key = loadReleaseKey(one(flags, "key"));
      const imagePath = one(flags, "image");
      const image = new Uint8Array(readInput(imagePath, "image"));
      const release = signImage(image, {
        key,
        version: int(one(flags, "version"), "version"),
        board: one(flags, "board"),
        label: flags.get("label")?.[0],
        minVersion: flags.has("min-version") ? int(one(flags, "min-version"), "min-version") : 0,
      });
      const outPath = one(flags, "out", imagePath + ".manifest.json");
      fs.writeFileSync(outPath, releaseBytes(release));
      out(`signed ${imagePath}: version ${release.manifest.version} (${release.manifest.label}) for ${release.manifest.board}, ${release.manifest.size} bytes, sha256 ${release.manifest.sha256}, key ${key.keyId}`);
      out(`  manifest ${outPath}`);
      return 0;
    }
    case "verify": {
      let doc: unknown;
      try {
        doc = JSON.parse(readInput(one(flags, "manifest"), "manifest").toString("utf8"));
      } catch (e) {
        throw e instanceof UserError ? e : new UserError(`${one(flags, "manifest")} is not JSON`);
      }
      const image = new Uint8Array(readInput(one(flags, "image"), "image"));
      const verdict = verifyImage(doc, image, loadPublicKey(one(flags, "pub")), {
        board: flags.get("board")?.[0],
        floor: flags.has("floor") ? int(one(flags, "floor"), "floor") : undefined,
      });
      out(verdict.ok ? `ok: version ${verdict.manifest.version} for ${verdict.manifest.board}` : `REFUSED: ${verdict.problem}`);
      return verdict.ok ? 0 : 1;
    }
    case "rotate": {
      const signers = (flags.get("sign") ?? []).map((p) => loadReleaseKey(p));
      const keep = (flags.get("keep") ?? []).map((p) => loadPublicKey(p));
      const update = rotateKeys(int(one(flags, "serial"), "serial"), keep, signers);
      const outPath = one(flags, "out", `release-keys-${update.keySet.serial}.json`);
      fs.writeFileSync(outPath, releaseBytes(update));
      out(`key set ${update.keySet.serial}: ${keep.map((k) => releaseKeyId(k)).join(" ")}, signed by ${signers.map((s) => s.keyId).join(" ")}`);
      out(`  ${outPath}: deliver as a job {"operation":"doorward.release-keys","keys":<this file>}`);
      return 0;
    }
    case "sim-image": {
      const image = makeSimImage({
        version: int(one(flags, "version"), "version"),
        board: one(flags, "board"),
        healthy: !flags.has("unhealthy"),
        size: flags.has("size") ? int(one(flags, "size"), "size") : undefined,
      });
      fs.writeFileSync(one(flags, "out"), image);
      out(`simulated image ${one(flags, "out")}: ${image.length} bytes`);
      return 0;
    }
    case "help":
      out(CLI.usage);
      return 0;
    default:
      throw new UserError(`unknown command ${JSON.stringify(cmd)} (see --help)`);
  }
}

runAsEntry(import.meta.url, CLI, (_args) => runReleaseCli(process.argv.slice(2)));
