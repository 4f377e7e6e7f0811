/*
 * The update path's core on the real XS engine: the release manifest check and
 * the pure-JS SHA-256 give the same answers as on Node, and the XS meter puts
 * a number on the one Ed25519 verify an update costs, next to a plain sign
 * (whose ESP32 time the SDK check notes on XS crypto costs model).
 */
import test from "ava";
import { createHash } from "node:crypto";
import { startXsCore } from "../tools/xs/core";
import { releaseKeyFromSeed, signImage } from "../tools/release";
import { makeSimImage } from "../modules/host/update-sink";

test("manifest verification, SHA-256 and base64 on XS match Node; the XS meter prices one verify", async (t) => {
  const xs = await startXsCore({ name: "xs-update" });
  t.teardown(() => xs.close());
  const key = releaseKeyFromSeed(new Uint8Array(32).fill(5));
  const image = makeSimImage({ board: "host/sim", version: 4, healthy: true, size: 32 * 1024 });
  const release = signImage(image, { key, version: 4, board: "host/sim" });
  const forged = { ...release, manifest: { ...release.manifest, version: 5 } };
  await xs.run(`
    state.release = importNow("core/release");
    state.update = importNow("core/update");
    state.nacl = importNow("tweetnacl").default;
    state.secretKey = state.nacl.sign.keyPair.fromSeed(args.seed).secretKey;`, { seed: new Uint8Array(32).fill(5) });
  const check = `
    const r = state.release.readRelease(args.doc);
    if (!r.ok) return "malformed";
    return state.release.naclVerify(state.release.manifestMessage(r.manifest), r.signature, args.pk);`;
  const good = await xs.run<boolean>(check, { doc: release, pk: key.publicKey });
  const bad = await xs.run<boolean>(check, { doc: forged, pk: key.publicKey });
  t.true(good.value);
  t.false(bad.value);
  const sign = await xs.run(`return state.nacl.sign.detached(state.release.manifestMessage(args.m), state.secretKey);`, { m: release.manifest });
  const sha = await xs.run<Uint8Array>(`
    const d = state.release.createJsSha256();
    for (let i = 0; i < args.image.length; i += 4096) d.update(args.image.subarray(i, i + 4096));
    return d.digest();`, { image });
  t.is(Buffer.from(sha.value).toString("hex"), createHash("sha256").update(image).digest("hex"));
  const b64 = await xs.run<Uint8Array>(`return state.update.fromBase64(args.text);`, { text: Buffer.from(image.subarray(0, 4096)).toString("base64") });
  t.deepEqual(b64.value, image.subarray(0, 4096));

  const verifyUnits = good.meter.body;
  const signUnits = sign.meter.body;
  // facts: a plain sign is 870 M x86 instructions, 3.6 s on the ESP32 model; a verify 1,694 M, 7.1 s.
  const modelledVerifySeconds = (verifyUnits / signUnits) * 3.6;
  t.log(`XS meter: manifest verify ${(verifyUnits / 1e6).toFixed(1)} M units, plain sign ${(signUnits / 1e6).toFixed(1)} M units (ratio ${(verifyUnits / signUnits).toFixed(2)})`);
  t.log(`  ESP32 model via the sign anchor: ≈${modelledVerifySeconds.toFixed(1)} s (facts file, measured directly: 7.1 s lower bound, 9–21 s realistic)`);
  t.log(`  JS SHA-256 of 32 KiB on XS: ${(sha.meter.body / 1e6).toFixed(1)} M units (the device uses native crypt Digest instead)`);
  t.true(verifyUnits > signUnits, "a verify costs more than a sign (two scalar multiplications)");
  t.true(verifyUnits < signUnits * 4);
});
