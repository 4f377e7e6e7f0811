/*
 * Dev PKI: what the stand-in and the device rely on. Certificates chain to the dev
 * CA, carry the right names, roles and usages, keys are RSA-2048 PKCS#8 with private
 * files at 0600, and material is reused rather than silently regenerated. Every
 * certificate carries an authority key identifier, which the Moddable TLS client needs.
 */

import test from "ava";
import { spawnSync } from "node:child_process";
import { X509Certificate, createPrivateKey, createPublicKey, sign, verify, webcrypto } from "node:crypto";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import {
  SERVICE_NAME,
  SERVICE_OU,
  THING_OU,
  SERVER_OU,
  ensureDevPki,
  hasAuthorityKeyId,
  issueRogueCredentials,
  issueThingCredentials,
  roleOfSubject,
} from "../tools/pki";
import "reflect-metadata";
import * as x509 from "@peculiar/x509";

type CryptoKeyPair = webcrypto.CryptoKeyPair;

const CLIENT_AUTH = "1.3.6.1.5.5.7.3.2";
const SERVER_AUTH = "1.3.6.1.5.5.7.3.1";

const dir = await mkdtemp(path.join(os.tmpdir(), "doorward-pki-"));
const pki = await ensureDevPki(dir);
const caCert = new X509Certificate(pki.ca.certPem);
const scratch: string[] = [dir];

test.after.always(async () => {
  for (const d of scratch) await rm(d, { recursive: true, force: true });
});

function subjectFields(cert: X509Certificate): Record<string, string> {
  return Object.fromEntries(cert.subject.split("\n").map((line) => line.split("=", 2) as [string, string]));
}

test("first run creates a CA that signs the server and service certificates", (t) => {
  t.true(pki.created);
  t.true(caCert.ca);
  for (const creds of [pki.server, pki.service]) {
    const cert = new X509Certificate(creds.certPem);
    t.true(cert.checkIssued(caCert), creds.name);
    t.true(cert.verify(caCert.publicKey), creds.name);
    t.false(cert.ca);
    t.is(cert.publicKey.asymmetricKeyDetails?.modulusLength, 2048);
    t.is(cert.fingerprint256, creds.fingerprint256);
    t.deepEqual(new Uint8Array(cert.raw), creds.certDer);
  }
});

test("server certificate names localhost and 127.0.0.1 and is for server auth only", (t) => {
  const cert = new X509Certificate(pki.server.certPem);
  t.regex(cert.subjectAltName ?? "", /DNS:localhost/);
  t.regex(cert.subjectAltName ?? "", /IP Address:127\.0\.0\.1/);
  t.true(cert.checkHost("localhost") !== undefined);
  t.is(cert.checkIP("127.0.0.1"), "127.0.0.1");
  t.deepEqual(cert.keyUsage, [SERVER_AUTH]);
  t.is(subjectFields(cert).OU, SERVER_OU);
});

test("service certificate carries the service role and client auth", (t) => {
  const cert = new X509Certificate(pki.service.certPem);
  const fields = subjectFields(cert);
  t.is(fields.CN, SERVICE_NAME);
  t.is(fields.OU, SERVICE_OU);
  t.deepEqual(cert.keyUsage, [CLIENT_AUTH]);
  t.deepEqual(roleOfSubject(fields), { role: "service", name: SERVICE_NAME });
});

test("private keys are mode 0600 and PKCS#8", async (t) => {
  for (const file of [pki.ca.keyPath, pki.server.keyPath, pki.service.keyPath]) {
    const s = await stat(file);
    t.is(s.mode & 0o777, 0o600, file);
    const pem = await readFile(file, "utf8");
    t.true(pem.startsWith("-----BEGIN PRIVATE KEY-----"), file);
  }
});

test("a second call reuses everything", async (t) => {
  const again = await ensureDevPki(dir);
  t.false(again.created);
  t.is(again.ca.fingerprint256, pki.ca.fingerprint256);
  t.is(again.server.fingerprint256, pki.server.fingerprint256);
  t.is(again.service.fingerprint256, pki.service.fingerprint256);
});

test("concurrent first runs in one directory agree on a single CA", async (t) => {
  const fresh = await mkdtemp(path.join(os.tmpdir(), "doorward-pki-race-"));
  scratch.push(fresh);
  const [a, b] = await Promise.all([ensureDevPki(fresh), ensureDevPki(fresh)]);
  t.is(a.ca.fingerprint256, b.ca.fingerprint256);
  t.is(a.server.fingerprint256, b.server.fingerprint256);
  t.is([a.created, b.created].filter(Boolean).length, 1);
});

test("thing credentials: CN = thing name, thing OU, RSA-2048 PKCS#8 key matching the certificate, DER forms", async (t) => {
  const creds = await issueThingCredentials(dir, "door-1");
  const cert = new X509Certificate(creds.certPem);
  const fields = subjectFields(cert);
  t.is(fields.CN, "door-1");
  t.is(fields.OU, THING_OU);
  t.deepEqual(roleOfSubject(fields), { role: "thing", name: "door-1" });
  t.true(cert.checkIssued(caCert));
  t.true(cert.verify(caCert.publicKey));
  t.deepEqual(cert.keyUsage, [CLIENT_AUTH]);
  t.deepEqual(new Uint8Array(cert.raw), creds.certDer);
  t.is(creds.caPem, pki.ca.certPem);
  t.deepEqual(creds.caDer, new Uint8Array(caCert.raw));

  // The device loads the DER key: it must parse as PKCS#8 RSA-2048 and pair with the certificate.
  const key = createPrivateKey({ key: Buffer.from(creds.keyDer), format: "der", type: "pkcs8" });
  t.is(key.asymmetricKeyType, "rsa");
  t.is(key.asymmetricKeyDetails?.modulusLength, 2048);
  t.true(cert.checkPrivateKey(key));
  const message = Buffer.from("ring");
  t.true(verify("sha256", message, createPublicKey(creds.certPem), sign("sha256", message, key)));

  t.is((await stat(creds.keyPath)).mode & 0o777, 0o600);
  t.is((await stat(creds.keyPath.replace(/\.pem$/, ".der"))).mode & 0o777, 0o600);
  t.deepEqual(new Uint8Array(await readFile(creds.certPath.replace(/\.pem$/, ".der"))), creds.certDer);
});

test("thing credentials are reused unless fresh ones are asked for", async (t) => {
  const first = await issueThingCredentials(dir, "door-2");
  const again = await issueThingCredentials(dir, "door-2");
  t.is(again.fingerprint256, first.fingerprint256);
  t.is(again.keyPem, first.keyPem);
  const fresh = await issueThingCredentials(dir, "door-2", { fresh: true });
  t.not(fresh.fingerprint256, first.fingerprint256);
  t.not(fresh.keyPem, first.keyPem);
  const afterwards = await issueThingCredentials(dir, "door-2");
  t.is(afterwards.fingerprint256, fresh.fingerprint256);
});

test("custom validity gives an expired certificate on request", async (t) => {
  const now = Date.now();
  const creds = await issueThingCredentials(dir, "door-expired", { notBefore: new Date(now - 10 * 86_400_000), notAfter: new Date(now - 86_400_000) });
  t.true(Date.parse(new X509Certificate(creds.certPem).validTo) < now);
  t.true(creds.notAfter.getTime() < now);
});

test("invalid thing names are refused", async (t) => {
  await t.throwsAsync(issueThingCredentials(dir, "a/b"), { instanceOf: TypeError });
  await t.throwsAsync(issueThingCredentials(dir, "doorward/+"), { instanceOf: TypeError });
  await t.throwsAsync(issueThingCredentials(dir, ""), { instanceOf: TypeError });
});

test("rogue credentials look the same but do not chain to the dev CA", async (t) => {
  const rogue = await issueRogueCredentials(dir, "door-1");
  const cert = new X509Certificate(rogue.certPem);
  t.is(subjectFields(cert).CN, "door-1");
  t.is(subjectFields(cert).OU, THING_OU);
  t.false(cert.checkIssued(caCert));
  t.false(cert.verify(caCert.publicKey));
  t.true(cert.verify(new X509Certificate(rogue.caPem).publicKey));
  t.not(rogue.caPem, pki.ca.certPem);

  const rogueServer = await issueRogueCredentials(dir, "localhost", "server");
  const serverCert = new X509Certificate(rogueServer.certPem);
  t.is(serverCert.checkIP("127.0.0.1"), "127.0.0.1");
  t.false(serverCert.verify(caCert.publicKey));
});

test("roleOfSubject only knows the three OUs", (t) => {
  t.deepEqual(roleOfSubject({ OU: THING_OU, CN: "x" }), { role: "thing", name: "x" });
  t.deepEqual(roleOfSubject({ OU: SERVER_OU, CN: "localhost" }), { role: "server", name: "localhost" });
  t.is(roleOfSubject({ OU: "Something Else", CN: "x" }).role, undefined);
  t.is(roleOfSubject({ CN: "x" }).role, undefined);
  t.is(roleOfSubject({ OU: [THING_OU, SERVICE_OU], CN: "x" }).role, undefined);
  t.is(roleOfSubject(undefined).role, undefined);
});

/** The key identifiers OpenSSL reads from a certificate (its own parser, not the library that wrote it). */
function keyIds(pem: string): { ski?: string; aki?: string } {
  const r = spawnSync("openssl", ["x509", "-noout", "-ext", "subjectKeyIdentifier,authorityKeyIdentifier"], { input: pem, encoding: "utf8" });
  if (r.status !== 0) throw new Error(r.stderr);
  const after = (label: string) => {
    const m = new RegExp(`${label}:\\s*\\n\\s*(?:keyid:)?([0-9A-F:]+)`).exec(r.stdout);
    return m?.[1];
  };
  return { ski: after("X509v3 Subject Key Identifier"), aki: after("X509v3 Authority Key Identifier") };
}

test("every certificate names its issuer's key: the root's AKI is its own SKI, the others' the root's (the SDK's X.509 code reads it off every chain certificate)", async (t) => {
  const root = keyIds(pki.ca.certPem);
  t.truthy(root.ski);
  t.is(root.aki, root.ski, "self-signed root: AKI = SKI");
  for (const c of [pki.server, pki.service, await issueThingCredentials(dir, "doorward-aki-1")]) {
    const ids = keyIds(c.certPem);
    t.is(ids.aki, root.ski, c.name);
    t.truthy(ids.ski);
    t.not(ids.ski, root.ski);
  }
  const rogue = await issueRogueCredentials(dir, "doorward-aki-2");
  t.is(keyIds(rogue.caPem).aki, keyIds(rogue.caPem).ski);
});

test("a root on disk without an authority key identifier is replaced, and what it issued is issued again", async (t) => {
  const old = await mkdtemp(path.join(os.tmpdir(), "doorward-pki-old-"));
  scratch.push(old);
  x509.cryptoProvider.set(webcrypto);
  const alg = { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256", publicExponent: new Uint8Array([1, 0, 1]), modulusLength: 2048 };
  const keys = (await webcrypto.subtle.generateKey(alg, true, ["sign", "verify"])) as CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: "01", name: "O=Doorward Dev, CN=Doorward Dev Root CA", notBefore: new Date(Date.now() - 86_400_000), notAfter: new Date(Date.now() + 3_650 * 86_400_000), signingAlgorithm: alg, keys,
    extensions: [new x509.BasicConstraintsExtension(true, 0, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true), await x509.SubjectKeyIdentifierExtension.create(keys.publicKey)],
  });
  const pkcs8 = new Uint8Array(await webcrypto.subtle.exportKey("pkcs8", keys.privateKey));
  await writeFile(path.join(old, "ca.cert.pem"), cert.toString("pem"));
  await writeFile(path.join(old, "ca.key.pem"), x509.PemConverter.encode(pkcs8, "PRIVATE KEY"), { mode: 0o600 });
  t.is(keyIds(cert.toString("pem")).aki, undefined, "the old shape: no AKI");
  t.false(hasAuthorityKeyId(cert));
  const renewed = await ensureDevPki(old);
  t.true(renewed.created);
  const root = keyIds(renewed.ca.certPem);
  t.is(root.aki, root.ski);
  t.not(root.ski, keyIds(cert.toString("pem")).ski, "a new key");
  t.is(keyIds(renewed.server.certPem).aki, root.ski);
  t.true(new X509Certificate(renewed.server.certPem).verify(new X509Certificate(renewed.ca.certPem).publicKey));
});
