/*
 * tools/provision.ts against a temporary home: the simulator's channel end to
 * end. After provisioning, no file of the simulated device holds any 8-byte
 * fragment of the SSID, passphrase, device seed, client key, certificate or CA
 * (raw, hex or base64); after a factory reset its vault directory is empty.
 * Also the CLI's refusals: a second bundle, a passphrase on the command line,
 * half a set of AWS files, a non-RSA key.
 */
import test from "ava";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { main, devicePaths, openSimulatedDevice, type CliIo } from "../tools/provision";
import { findLeaks, type SecretSample } from "./vault-support";
import { utf8Encode } from "../modules/core/bytes";
import { issueThingCredentials } from "../tools/pki";

const SSID = "Flat-4B-Guest-Network";
const PASSWORD = "correct horse battery staple";
const THING = "doorward-cli-test";

interface Run {
  code: number;
  out: string[];
  err: string[];
}

async function cli(args: string[], stdin = new Uint8Array(0)): Promise<Run> {
  const out: string[] = [];
  const err: string[] = [];
  const io: CliIo = { out: (l) => out.push(l), err: (l) => err.push(l), readStdin: async () => stdin, env: {} };
  const code = await main(args, io);
  return { code, out, err };
}

function tempHome(): { home: string; passwordFile: string } {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), "dw-cli-"));
  const passwordFile = path.join(home, "wifi.txt");
  fs.writeFileSync(passwordFile, PASSWORD + "\n", { mode: 0o600 });
  return { home, passwordFile };
}

function filesUnder(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name));
}

async function provisioned() {
  const { home, passwordFile } = tempHome();
  const created = await cli(["create", "--home", home, "--thing", THING, "--wifi-ssid", SSID, "--wifi-password-file", passwordFile]);
  if (created.code !== 0) throw new Error(created.err.join("\n"));
  const bundleFile = path.join(home, "bundles", `${THING}.json`);
  const fed = await cli(["feed", "--home", home, "--bundle", bundleFile]);
  if (fed.code !== 0) throw new Error(fed.err.join("\n"));
  const creds = await issueThingCredentials(path.join(home, "pki"), THING); // reused, not reissued
  const device = openSimulatedDevice({ home, thing: THING, log: () => {}, warn: () => {} });
  const seed = device.vault.get("id.seed")!;
  const secrets: SecretSample[] = [
    { label: "Wi-Fi SSID", bytes: utf8Encode(SSID) },
    { label: "Wi-Fi passphrase", bytes: utf8Encode(PASSWORD) },
    { label: "device seed", bytes: seed },
    { label: "client key", bytes: creds.keyDer },
    { label: "client certificate", bytes: creds.certDer },
    { label: "CA certificate", bytes: creds.caDer },
  ];
  return { home, bundleFile, created, fed, secrets, device, creds };
}

test("after provisioning, no file of the simulated device holds a fragment of any secret, and the bundle is erased", async (t) => {
  const { home, bundleFile, fed, secrets, device } = await provisioned();
  t.false(fs.existsSync(bundleFile), "the bundle file is erased after it was fed");
  t.true(device.provisioning.status().provisioned);
  const paths = devicePaths(home, THING);
  const files = filesUnder(paths.dir);
  t.true(files.length >= 12, `${files.length} files`);
  let scanned = 0;
  for (const file of files) {
    const raw = new Uint8Array(fs.readFileSync(file));
    scanned += raw.length;
    // The thing name is public; it also appears inside the certificate's subject.
    t.deepEqual(findLeaks(raw, secrets, [utf8Encode(THING)]), [], file);
    if (file.startsWith(paths.vaultDir)) t.is(fs.statSync(file).mode & 0o077, 0, `${file} is private`);
  }
  t.is(fs.statSync(paths.keyFile).mode & 0o777, 0o600);
  t.true(fed.out.some((l) => /device public key \(Ed25519.*\): [0-9a-f]{64}$/.test(l)));
  t.log(`${files.length} files, ${scanned} bytes scanned for every 8-byte window of ${secrets.length} secrets (${secrets.reduce((n, s) => n + s.bytes.length, 0)} bytes): none found`);
});

test("the scan can fail: a planted fragment is found in raw, hex and base64 form", async (t) => {
  const { secrets } = await provisioned();
  const noise = new Uint8Array(500).map((_, i) => (i * 97) & 255);
  const key = secrets.find((s) => s.label === "client key")!.bytes;
  const planted = new Uint8Array([...noise, ...key.subarray(300, 308), ...noise]);
  t.true(findLeaks(planted, secrets).some((l) => l.startsWith("client key: raw")));
  t.true(findLeaks(`x=${Buffer.from(key.subarray(41, 49)).toString("hex")}`, secrets).some((l) => l.includes("hex")));
  t.true(findLeaks(`x=${Buffer.from(key.subarray(100, 109)).toString("base64")}`, secrets).some((l) => l.includes("base64")));
  t.true(findLeaks(`pw ${PASSWORD.slice(5, 13)}`, secrets).some((l) => l.startsWith("Wi-Fi passphrase")));
  t.deepEqual(findLeaks(`pw ${PASSWORD.slice(5, 12)}`, secrets), [], "7 bytes is below the window");
});

test("a second bundle is refused; reset wipes every file of the vault; then a new bundle is accepted with a new device key", async (t) => {
  const { home, fed, secrets } = await provisioned();
  const { passwordFile } = { passwordFile: path.join(home, "wifi.txt") };
  const created = await cli(["create", "--home", home, "--thing", THING, "--wifi-ssid", SSID, "--wifi-password-file", passwordFile]);
  t.is(created.code, 0);
  const bundle = path.join(home, "bundles", `${THING}.json`);
  const refused = await cli(["feed", "--home", home, "--bundle", bundle]);
  t.is(refused.code, 1);
  t.regex(refused.err.join("\n"), /already provisioned.*reset --thing doorward-cli-test --yes/);
  t.true(fs.existsSync(bundle), "a refused bundle is not erased");

  t.is((await cli(["reset", "--home", home, "--thing", THING])).code, 2, "reset needs --yes");
  const reset = await cli(["reset", "--home", home, "--thing", THING, "--yes"]);
  t.is(reset.code, 0);
  t.regex(reset.out.join("\n"), /11 secrets wiped/);
  const vaultDir = devicePaths(home, THING).vaultDir;
  t.deepEqual(fs.readdirSync(vaultDir), [], "no key left in the vault's store");
  for (const file of filesUnder(devicePaths(home, THING).dir)) t.deepEqual(findLeaks(new Uint8Array(fs.readFileSync(file)), secrets, [utf8Encode(THING)]), [], file);
  const status = await cli(["status", "--home", home, "--thing", THING]);
  t.regex(status.out[0], /unprovisioned/);

  const again = await cli(["feed", "--home", home, "--bundle", bundle]);
  t.is(again.code, 0, again.err.join("\n"));
  const key = (r: Run) => r.out.find((l) => l.startsWith("device public key"))!.split(": ")[1];
  t.not(key(again), key(fed));
});

test("feeding over stdin works, and status reports what is missing or damaged without printing secrets", async (t) => {
  const { home, passwordFile } = tempHome();
  t.is((await cli(["create", "--home", home, "--thing", THING, "--wifi-ssid", SSID, "--wifi-password-file", passwordFile, "--out", path.join(home, "b.json")])).code, 0);
  const bytes = new Uint8Array(fs.readFileSync(path.join(home, "b.json")));
  const fed = await cli(["feed", "--home", home, "--bundle", "-"], bytes);
  t.is(fed.code, 0, fed.err.join("\n"));
  const file = path.join(devicePaths(home, THING).vaultDir, "v.aws.key");
  const raw = fs.readFileSync(file);
  raw[60] ^= 1;
  fs.writeFileSync(file, raw);
  const status = await cli(["status", "--home", home, "--thing", THING]);
  t.regex(status.out.join("\n"), /damaged: vault: secret "aws.key" is damaged.*provision the device again/);
  t.regex(status.out.join("\n"), /damaged: aws\.key \(authentication\)/);
  const text = [...status.out, ...status.err, ...fed.out, ...fed.err].join("\n");
  t.false(text.includes(PASSWORD) || text.includes(SSID));
});

test("usage and refusals", async (t) => {
  const { home, passwordFile } = tempHome();
  const help = await cli([]);
  t.is(help.code, 0);
  t.regex(help.out[0], /usage: npx tsx tools\/provision\.ts <command>/);
  const cases: Array<[string[], number, RegExp]> = [
    [["frobnicate"], 2, /unknown command "frobnicate"/],
    [["create", "--home", home, "--thing", THING, "--wifi-ssid", SSID, "--wifi-password", PASSWORD], 2, /not taken on the command line/],
    [["create", "--home", home, "--thing", THING, "--wifi-password-file", passwordFile], 2, /create needs --wifi-ssid/],
    [["create", "--home", home, "--thing", THING, "--wifi-ssid", SSID], 2, /exactly one of --wifi-password-file/],
    [["create", "--home", home, "--thing", "bad name", "--wifi-ssid", SSID, "--wifi-password-file", passwordFile], 2, /not a thing name/],
    [["create", "--home", home, "--thing", THING, "--wifi-ssid", SSID, "--wifi-password-file", passwordFile, "--cert", passwordFile], 2, /go together/],
    [["create", "--home", home, "--thing", THING, "--wifi-ssid", SSID, "--wifi-password-file", passwordFile, "--endpoint", "mqtts://x"], 2, /--endpoint/],
    [["feed", "--home", home], 2, /feed needs --bundle/],
    [["feed", "--home", home, "--bundle", passwordFile], 1, /not UTF-8 JSON/],
    [["status", "--home", home, "--thing", THING, "--keep"], 2, /does not apply/],
    [["status", "--home", home, "--thing"], 2, /needs a value/],
  ];
  for (const [args, code, message] of cases) {
    const r = await cli(args);
    t.is(r.code, code, args.join(" "));
    t.regex(r.err.join("\n"), message, args.join(" "));
    t.false(r.err.join("\n").includes(PASSWORD), "no error echoes the passphrase");
  }
  fs.writeFileSync(path.join(home, "short.txt"), "short\n");
  const weak = await cli(["create", "--home", home, "--thing", THING, "--wifi-ssid", SSID, "--wifi-password-file", path.join(home, "short.txt")]);
  t.is(weak.code, 1);
  t.regex(weak.err.join("\n"), /8-63 printable ASCII/);
});

test("create with AWS-style files: PEM or DER accepted, a non-RSA key or a key of another certificate refused", async (t) => {
  const { home, passwordFile } = tempHome();
  const pki = path.join(home, "other-pki");
  const a = await issueThingCredentials(pki, THING);
  const b = await issueThingCredentials(pki, "someone-else");
  const base = ["create", "--home", home, "--thing", THING, "--wifi-ssid", SSID, "--wifi-password-file", passwordFile, "--endpoint", "abc-ats.iot.eu-west-1.amazonaws.com:8883"];
  const ok = await cli([...base, "--cert", a.certPath, "--key", a.keyPath, "--ca", a.caPath, "--out", path.join(home, "aws.json")]);
  t.is(ok.code, 0, ok.err.join("\n"));
  const der = await cli([...base, "--cert", a.certPath.replace(".pem", ".der"), "--key", a.keyPath.replace(".pem", ".der"), "--ca", a.caPath, "--out", path.join(home, "aws2.json")]);
  t.is(der.code, 0, der.err.join("\n"));
  t.is(fs.readFileSync(path.join(home, "aws.json"), "utf8"), fs.readFileSync(path.join(home, "aws2.json"), "utf8"), "PEM and DER inputs give the same bundle");
  const wrongKey = await cli([...base, "--cert", a.certPath, "--key", b.keyPath, "--ca", a.caPath, "--out", path.join(home, "x.json")]);
  t.is(wrongKey.code, 2);
  t.regex(wrongKey.err.join("\n"), /does not belong/);
  const ecFile = path.join(home, "ec.pem");
  fs.writeFileSync(ecFile, generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey.export({ type: "pkcs8", format: "pem" }));
  const ec = await cli([...base, "--cert", a.certPath, "--key", ecFile, "--ca", a.caPath, "--out", path.join(home, "y.json")]);
  t.is(ec.code, 2);
  t.regex(ec.err.join("\n"), /must be an RSA key/);
  t.is(fs.statSync(path.join(home, "aws.json")).mode & 0o777, 0o600);
});

test("csr makes an RSA-2048 key (0600) and a CSR for the thing that OpenSSL verifies", async (t) => {
  const { home } = tempHome();
  const r = await cli(["csr", "--home", home, "--thing", THING]);
  t.is(r.code, 0, r.err.join("\n"));
  const dir = path.join(home, "aws", THING);
  t.is(fs.statSync(path.join(dir, `${THING}.key.pem`)).mode & 0o777, 0o600);
  const check = spawnSync("openssl", ["req", "-in", path.join(dir, `${THING}.csr.pem`), "-noout", "-verify", "-subject", "-text"], { encoding: "utf8" });
  t.is(check.status, 0, check.stderr);
  t.regex(check.stdout + check.stderr, /verify OK/i);
  t.regex(check.stdout, new RegExp(`CN\\s*=\\s*${THING}`));
  t.regex(check.stdout, /Public-Key: \(2048 bit\)/);
  const again = await cli(["csr", "--home", home, "--thing", THING]);
  t.is(again.code, 2);
  t.regex(again.err.join("\n"), /never overwritten/);
});
