import test from "ava";
import fc from "fast-check";
import nacl from "tweetnacl";
import { Ed25519Signer } from "../modules/core/signer";
import { toHex, utf8Encode } from "../modules/core/bytes";
import { opensslVerify, seededRandom, stuckRandom } from "./helpers/crypto";

const seed = new Uint8Array(32).map((_, i) => i * 7 + 1);

test("online signatures are standard Ed25519: tweetnacl and OpenSSL both accept them", (t) => {
  const signer = new Ed25519Signer(seed, { random: seededRandom("a"), boot: 1, poolSize: 8 });
  while (signer.precompute());
  t.is(signer.ready, 8);
  for (let i = 0; i < 8; i++) {
    const m = utf8Encode(`message ${i} ${"x".repeat(i * 20)}`);
    const sig = signer.sign(m);
    t.true(nacl.sign.detached.verify(m, sig, signer.publicKey), `tweetnacl ${i}`);
    t.true(opensslVerify(m, sig, signer.publicKey), `openssl ${i}`);
  }
  t.deepEqual(signer.stats, { online: 8, slow: 0, precomputed: 8, waited: 0 });
  t.is(signer.ready, 0);
});

test("a wrong message or key fails under both verifiers (the checks can fail)", (t) => {
  const signer = new Ed25519Signer(seed, { random: seededRandom("b"), boot: 1 });
  signer.precompute();
  const m = utf8Encode("ring");
  const sig = signer.sign(m);
  const other = nacl.sign.keyPair().publicKey;
  t.false(opensslVerify(utf8Encode("rinG"), sig, signer.publicKey));
  t.false(opensslVerify(m, sig, other));
  t.false(nacl.sign.detached.verify(m, sig, other));
  sig[40] ^= 1;
  t.false(opensslVerify(m, sig, signer.publicKey));
});

test("an empty pool falls back to the deterministic RFC 8032 signature, and counts it", (t) => {
  const signer = new Ed25519Signer(seed, { random: seededRandom("c"), boot: 1 });
  const m = utf8Encode("no nonce ready");
  const sig = signer.sign(m);
  t.deepEqual(sig, nacl.sign.detached(m, nacl.sign.keyPair.fromSeed(seed).secretKey));
  t.is(signer.stats.slow, 1);
});

test("each nonce is used once: R never repeats, even with an RNG replaying one stream every boot", (t) => {
  const seen = new Set<string>();
  let total = 0;
  for (const boot of [1, 2, 3]) {
    // The same random-looking stream on every boot passes the health tests; the boot and nonce counters still separate every seed.
    const signer = new Ed25519Signer(seed, { random: seededRandom("replayed each boot"), boot, poolSize: 16 });
    for (let i = 0; i < 16; i++) {
      signer.precompute();
      const sig = signer.sign(utf8Encode("same message every time"));
      t.true(opensslVerify(utf8Encode("same message every time"), sig, signer.publicKey));
      seen.add(toHex(sig.subarray(0, 32)));
      total++;
    }
    t.is(signer.stats.slow, 0);
  }
  t.is(seen.size, total);
});

test("property: R values are distinct and every signature verifies, for arbitrary messages", (t) => {
  const signer = new Ed25519Signer(seed, { random: seededRandom("prop"), boot: 9, poolSize: 1 });
  const seen = new Set<string>();
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), (m) => {
      signer.precompute();
      const sig = signer.sign(m);
      const r = toHex(sig.subarray(0, 32));
      if (seen.has(r)) return false;
      seen.add(r);
      return opensslVerify(m, sig, signer.publicKey);
    }),
    { numRuns: 150 },
  );
  t.is(signer.stats.slow, 0);
});

test("same seed, boot and random stream give byte-identical signatures (what the XS comparison relies on)", (t) => {
  const a = new Ed25519Signer(seed, { random: seededRandom("d"), boot: 4 });
  const b = new Ed25519Signer(seed, { random: seededRandom("d"), boot: 4 });
  a.precompute();
  b.precompute();
  const m = utf8Encode("identical");
  t.deepEqual(a.sign(m), b.sign(m));
  const c = new Ed25519Signer(seed, { random: seededRandom("d"), boot: 5 });
  c.precompute();
  const d = new Ed25519Signer(seed, { random: seededRandom("d"), boot: 4 });
  d.precompute();
  // Same random stream, different boot: a different nonce, so a reboot can never repeat one.
  t.notDeepEqual(c.sign(m).subarray(0, 32), d.sign(m).subarray(0, 32));
});

test("the pool never grows beyond its size and refuses bad seeds", (t) => {
  const signer = new Ed25519Signer(seed, { random: seededRandom("e"), boot: 1, poolSize: 2 });
  t.true(signer.precompute());
  t.true(signer.precompute());
  t.false(signer.precompute());
  t.is(signer.ready, 2);
  t.throws(() => new Ed25519Signer(new Uint8Array(31), { random: stuckRandom, boot: 1 }), { message: /32 bytes/ });
});

test("a stored public key skips derivation; a wrong one makes signatures fail verification, not pass", (t) => {
  const pk = nacl.sign.keyPair.fromSeed(seed).publicKey;
  const fast = new Ed25519Signer(seed, { random: seededRandom("f"), boot: 1, publicKey: pk });
  fast.precompute();
  const m = utf8Encode("boot fast");
  t.true(opensslVerify(m, fast.sign(m), pk));
  const wrong = new Ed25519Signer(seed, { random: seededRandom("f"), boot: 1, publicKey: new Uint8Array(32).fill(1) });
  wrong.precompute();
  t.false(nacl.sign.detached.verify(m, wrong.sign(m), pk));
  t.throws(() => new Ed25519Signer(seed, { random: stuckRandom, boot: 1, publicKey: new Uint8Array(31) }), { message: /32 bytes/ });
});
