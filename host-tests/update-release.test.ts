/*
 * Release manifests, key ids, key-set updates, the incremental digest and the
 * release CLI: the pieces the update agent trusts, checked on their own.
 */
import test from "ava";
import fc from "fast-check";
import { createHash } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import nacl from "tweetnacl";
import {
  checkKeyUpdate,
  createJsSha256,
  manifestMessage,
  manifestProblem,
  readRelease,
  releaseKeyId,
  signRelease,
  MANIFEST_DOMAIN,
  type FirmwareManifest,
} from "../modules/core/release";
import { fromBase64 } from "../modules/core/update";
import { utf8Decode } from "../modules/core/bytes";
import { opensslVerify } from "../tools/openssl-ed25519";
import { loadReleaseKey, releaseBytes, releaseKeyFromSeed, rotateKeys, runReleaseCli, signImage, verifyImage } from "../tools/release";
import { makeSimImage, readSimImage } from "../modules/host/update-sink";

const KEY = releaseKeyFromSeed(new Uint8Array(32).fill(3));
const OTHER = releaseKeyFromSeed(new Uint8Array(32).fill(4));
const IMAGE = makeSimImage({ board: "host/sim", version: 7, healthy: true, size: 5000 });

test("a signed manifest is standard Ed25519 over the domain-separated canonical manifest (OpenSSL agrees)", (t) => {
  const release = signImage(IMAGE, { key: KEY, version: 7, board: "host/sim", label: "1.2.3", minVersion: 5 });
  const m = release.manifest;
  t.deepEqual(Object.keys(m).sort(), ["board", "keyId", "kind", "label", "minVersion", "sha256", "size", "v", "version"]);
  t.is(m.sha256, createHash("sha256").update(IMAGE).digest("hex"));
  t.is(m.size, 5000);
  const message = manifestMessage(m);
  t.true(utf8Decode(message).startsWith(MANIFEST_DOMAIN));
  const r = readRelease(release);
  t.true(r.ok && r.signature !== undefined);
  const sig = r.ok ? r.signature! : new Uint8Array();
  t.true(nacl.sign.detached.verify(message, sig, KEY.publicKey));
  t.true(opensslVerify(message, sig, KEY.publicKey), "OpenSSL verifies the same bytes");
  // Without the domain prefix the signature is worthless.
  t.false(nacl.sign.detached.verify(message.subarray(MANIFEST_DOMAIN.length), sig, KEY.publicKey));
});

test("the signature survives re-serialisation (AWS reformats job documents) but not any change of a field", (t) => {
  const release = signImage(IMAGE, { key: KEY, version: 7, board: "host/sim" });
  const reordered = JSON.parse(JSON.stringify({ sig: release.sig, manifest: Object.fromEntries(Object.entries(release.manifest).reverse()) }, null, 2)) as unknown;
  const r = readRelease(reordered);
  t.true(r.ok);
  if (!r.ok) return;
  t.true(nacl.sign.detached.verify(manifestMessage(r.manifest), r.signature!, KEY.publicKey));
  const changes: Array<Partial<FirmwareManifest>> = [{ version: 8 }, { board: "host/sin" }, { size: 5001 }, { minVersion: 1 }, { label: "9.9.9" }, { sha256: "0".repeat(64) }];
  for (const change of changes) {
    const m = { ...release.manifest, ...change };
    t.false(nacl.sign.detached.verify(manifestMessage(m), r.signature!, KEY.publicKey), JSON.stringify(change));
  }
});

test("manifest shape is checked strictly; a missing signature reads as unsigned", (t) => {
  const { manifest, sig } = signImage(IMAGE, { key: KEY, version: 7, board: "host/sim" });
  t.is(manifestProblem(manifest), undefined);
  t.truthy(manifestProblem({ ...manifest, extra: 1 }));
  t.truthy(manifestProblem({ ...manifest, version: 0 }));
  t.truthy(manifestProblem({ ...manifest, version: 1.5 }));
  t.truthy(manifestProblem({ ...manifest, size: -1 }));
  t.truthy(manifestProblem({ ...manifest, sha256: "AB".repeat(32) }));
  t.truthy(manifestProblem({ ...manifest, board: "Host/Sim" }));
  t.truthy(manifestProblem({ ...manifest, kind: "keys" }));
  t.deepEqual(readRelease({ manifest }), { ok: true, manifest, signature: undefined });
  t.deepEqual(readRelease({ manifest, sig: "" }), { ok: true, manifest, signature: undefined });
  t.false(readRelease({ manifest, sig: sig.slice(0, 20) }).ok);
  t.false(readRelease({ manifest, sig: 5 }).ok);
  t.throws(() => signRelease({ ...manifest, keyId: OTHER.keyId }, KEY.secretKey), { message: /keyId/ });
});

test("release key ids are domain-separated hashes of the public key", (t) => {
  t.regex(KEY.keyId, /^[0-9a-f]{16}$/);
  t.is(releaseKeyId(KEY.publicKey), KEY.keyId);
  t.not(KEY.keyId, OTHER.keyId);
  t.not(KEY.keyId, Buffer.from(nacl.hash(KEY.publicKey).subarray(0, 8)).toString("hex"));
});

test("key updates need a trusted signature, possession of every new key, and a higher serial", (t) => {
  const trusted = { serial: 1, keys: [KEY.publicKey] };
  const ok = checkKeyUpdate(rotateKeys(2, [KEY.publicKey, OTHER.publicKey], [KEY, OTHER]), trusted);
  t.true(ok.ok);
  t.deepEqual(ok.ok && ok.keys.keys.map((k) => releaseKeyId(k)), [KEY.keyId, OTHER.keyId]);
  t.like(checkKeyUpdate(rotateKeys(1, [OTHER.publicKey], [KEY, OTHER]), trusted), { ok: false, reason: "not-newer" });
  t.like(checkKeyUpdate(rotateKeys(2, [OTHER.publicKey], [OTHER]), trusted), { ok: false, reason: "unauthorized" });
  t.like(checkKeyUpdate(rotateKeys(2, [OTHER.publicKey], [KEY]), trusted), { ok: false, reason: "unauthorized" });
  const tampered = rotateKeys(2, [OTHER.publicKey], [KEY, OTHER]);
  tampered.keySet.serial = 3;
  t.like(checkKeyUpdate(tampered, trusted), { ok: false, reason: "bad-signature" });
  t.like(checkKeyUpdate({ keySet: { v: 1, kind: "release-keys", serial: 2, keys: [] }, sigs: [] }, trusted), { ok: false, reason: "malformed-keys" });
  // Two trusted keys: one of them alone cannot rewrite the trust.
  const THIRD = releaseKeyFromSeed(new Uint8Array(32).fill(5));
  const two = { serial: 1, keys: [KEY.publicKey, OTHER.publicKey] };
  t.like(checkKeyUpdate(rotateKeys(2, [THIRD.publicKey], [KEY, THIRD]), two), { ok: false, reason: "unauthorized" });
  t.true(checkKeyUpdate(rotateKeys(2, [OTHER.publicKey, THIRD.publicKey], [KEY, OTHER, THIRD]), two).ok);
  const oneForged = rotateKeys(2, [THIRD.publicKey], [KEY, OTHER, THIRD]);
  oneForged.sigs[1].sig = oneForged.sigs[0].sig;
  t.like(checkKeyUpdate(oneForged, two), { ok: false, reason: "bad-signature" });
  t.throws(() => rotateKeys(2, Array(5).fill(0).map((_, i) => releaseKeyFromSeed(new Uint8Array(32).fill(10 + i)).publicKey), [KEY]));
});

test("the pure-JS SHA-256 matches node:crypto for any data split any way", (t) => {
  for (const n of [0, 1, 55, 56, 63, 64, 65, 119, 120, 127, 128, 1000]) {
    const data = new Uint8Array(n).map((_, i) => (i * 31 + 7) & 255);
    const d = createJsSha256();
    d.update(data);
    t.is(Buffer.from(d.digest()).toString("hex"), createHash("sha256").update(data).digest("hex"), `length ${n}`);
  }
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 3000 }), fc.array(fc.nat(400), { maxLength: 12 }), (data, cuts) => {
      const d = createJsSha256();
      let at = 0;
      for (const c of cuts) {
        d.update(data.subarray(at, Math.min(data.length, at + c)));
        at = Math.min(data.length, at + c);
      }
      d.update(data.subarray(at));
      return Buffer.from(d.digest()).toString("hex") === createHash("sha256").update(data).digest("hex");
    }),
    { numRuns: 300 },
  );
  const d = createJsSha256();
  d.digest();
  t.throws(() => d.update(new Uint8Array(1)));
});

test("the stream payload decoder is strict standard base64", (t) => {
  fc.assert(fc.property(fc.uint8Array({ maxLength: 600 }), (data) => {
    const b64 = Buffer.from(data).toString("base64");
    return Buffer.from(fromBase64(b64)).equals(Buffer.from(data)) && Buffer.from(fromBase64(b64.replace(/=+$/, ""))).equals(Buffer.from(data));
  }));
  t.throws(() => fromBase64("ab-_"));
  t.throws(() => fromBase64("abcde"));
  t.throws(() => fromBase64("ab c"));
  t.deepEqual([...fromBase64("AQID")], [1, 2, 3]);
});

test("the release CLI: keygen (0600, never overwrites), sign, verify (catches a tampered image), rotate, sim-image", (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dw-release-"));
  const out: string[] = [];
  const say = (l: string) => out.push(l);
  t.is(runReleaseCli(["keygen", "--out", dir], say), 0);
  const keyPath = path.join(dir, "release.key");
  t.is(fs.statSync(keyPath).mode & 0o777, 0o600);
  t.throws(() => runReleaseCli(["keygen", "--out", dir], say), { message: /EEXIST/ });
  const imagePath = path.join(dir, "fw.bin");
  t.is(runReleaseCli(["sim-image", "--version", "3", "--board", "host/sim", "--size", "9000", "--out", imagePath], say), 0);
  t.is(readSimImage(new Uint8Array(fs.readFileSync(imagePath))).version, 3);
  t.is(runReleaseCli(["sign", "--key", keyPath, "--image", imagePath, "--version", "3", "--board", "host/sim", "--label", "0.3.0"], say), 0);
  const manifestPath = imagePath + ".manifest.json";
  const doc = JSON.parse(fs.readFileSync(manifestPath, "utf8")) as { manifest: FirmwareManifest };
  t.is(doc.manifest.version, 3);
  t.is(doc.manifest.keyId, loadReleaseKey(keyPath).keyId);
  t.deepEqual(new Uint8Array(fs.readFileSync(manifestPath)), releaseBytes(doc as never), "manifest files are canonical JSON");
  const pub = path.join(dir, "release.pub");
  t.is(runReleaseCli(["verify", "--pub", pub, "--image", imagePath, "--manifest", manifestPath, "--board", "host/sim", "--floor", "2"], say), 0);
  t.is(runReleaseCli(["verify", "--pub", pub, "--image", imagePath, "--manifest", manifestPath, "--floor", "3"], say), 1);
  const tampered = new Uint8Array(fs.readFileSync(imagePath));
  tampered[4000] ^= 1;
  fs.writeFileSync(imagePath, tampered);
  t.is(runReleaseCli(["verify", "--pub", pub, "--image", imagePath, "--manifest", manifestPath], say), 1);
  t.regex(out[out.length - 1], /REFUSED: image digest does not match/);
  t.is(verifyImage(doc, tampered, OTHER.publicKey).ok, false);
  // Rotation to a second key.
  t.is(runReleaseCli(["keygen", "--out", dir, "--name", "next"], say), 0);
  const keysPath = path.join(dir, "keys.json");
  t.is(runReleaseCli(["rotate", "--serial", "2", "--sign", keyPath, "--sign", path.join(dir, "next.key"), "--keep", path.join(dir, "next.pub"), "--out", keysPath], say), 0);
  const update = JSON.parse(fs.readFileSync(keysPath, "utf8")) as unknown;
  t.true(checkKeyUpdate(update, { serial: 1, keys: [loadReleaseKey(keyPath).publicKey] }).ok);
  // A key file others can read is refused.
  fs.chmodSync(keyPath, 0o644);
  t.throws(() => loadReleaseKey(keyPath), { message: /readable by others/ });
});
