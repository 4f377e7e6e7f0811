/*
 * RNG health tests (SP 800-90B style) and what the signer does with them.
 *
 * The cutoffs are checked against SP 800-90B's own table, each test is shown
 * to trip on the kind of broken source it exists for and not on a good one,
 * and the proof of concept: with a stuck RNG and the boot counter written back
 * from an old flash image, two boots never sign with the same R (a shared R
 * with different messages reveals the private key).
 */
import test from "ava";
import nacl from "tweetnacl";
import { Doorbell } from "../modules/core/doorbell";
import { Ed25519Signer } from "../modules/core/signer";
import { openEnvelope } from "../modules/core/events";
import type { Random } from "../modules/core/ports";
import { AckingTransport } from "./helpers/acking-transport";
import { RngHealth, proportionCutoff, repetitionCutoff, STARTUP_BYTES } from "../modules/core/rng-health";
import { toHex, utf8Encode } from "../modules/core/bytes";
import { MemoryStore } from "../modules/host/file-store";
import { hostRandom } from "../modules/host/random";
import { opensslVerify, seededRandom } from "./helpers/crypto";
import { ManualClock } from "./helpers/manual-clock";

const seed = new Uint8Array(32).map((_, i) => i * 13 + 3);

/** A source that returns the same bytes every call. */
const constant = (value: number): Random => ({ fill: (t) => t.fill(value) });
/** A source that loops over a short cycle of distinct bytes. */
function cycling(period: number): Random {
  let i = 0;
  return { fill: (t) => { for (let k = 0; k < t.length; k++) t[k] = (i++ % period) * 7 & 255; } };
}
/** A good source with a fault from byte `after` on. */
function failingAfter(after: number, fault: (t: Uint8Array) => void): Random & { drawn: number } {
  const good = seededRandom("fails-later");
  return {
    drawn: 0,
    fill(t) {
      if (this.drawn >= after) fault(t);
      else good.fill(t);
      this.drawn += t.length;
    },
  };
}

test("the cutoffs are SP 800-90B's: repetition count formula and the adaptive proportion table (W = 512, α = 2^-20)", (t) => {
  t.is(repetitionCutoff(1, -20), 21);
  t.is(repetitionCutoff(8, -20), 4);
  t.is(repetitionCutoff(4, -30), 9);
  // SP 800-90B Table 2, non-binary sources, W = 512.
  t.deepEqual([1, 2, 4, 8].map((h) => proportionCutoff(512, h, -20)), [311, 177, 62, 13]);
  const h = new RngHealth();
  t.is(h.repetitionCutoff, 9);
  t.is(h.proportionCutoff, 71);
  t.throws(() => new RngHealth({ entropyBits: 0.5 }), { instanceOf: RangeError });
  t.throws(() => new RngHealth({ alarmLog2: 3 }), { instanceOf: RangeError });
});

test("a good source passes a megabyte of draws", (t) => {
  const h = new RngHealth();
  const buf = new Uint8Array(32);
  for (let i = 0; i < 32_768; i++) t.true(h.draw(hostRandom, buf) || (t.log(h.failure), false));
  t.is(h.failure, undefined);
});

test("a constant source fails the start-up test before a single byte is handed out", (t) => {
  const h = new RngHealth();
  const buf = new Uint8Array(32).fill(0xaa);
  t.false(h.draw(constant(0), buf));
  t.regex(h.failure ?? "", /start-up: .*repetition count test/);
  t.deepEqual(buf, new Uint8Array(32), "the rejected draw is wiped, not handed out");
});

test("a source stuck on a few values fails the adaptive proportion test, not the repetition count test", (t) => {
  // Two values, never three in a row: the run test cannot see it, the proportion test can.
  let i = 0;
  const twoValued: Random = { fill: (b) => { for (let k = 0; k < b.length; k++) b[k] = [1, 1, 2, 2, 1, 2][i++ % 6]; } };
  const h = new RngHealth();
  t.false(h.draw(twoValued, new Uint8Array(32)));
  t.regex(h.failure ?? "", /adaptive proportion test/);
});

test("a source repeating the same 32-byte block fails the continuous test on the second draw", (t) => {
  // 32 distinct values: no run, no value common enough for the proportion test.
  const h = new RngHealth();
  const loop = cycling(32);
  t.true(h.check(new Uint8Array(32).map((_, k) => k * 5)));
  const a = new Uint8Array(32);
  const b = new Uint8Array(32);
  loop.fill(a);
  t.true(h.check(a));
  loop.fill(b);
  t.false(h.check(b));
  t.regex(h.failure ?? "", /identical/);
});

test("a failure is final: a source that recovers is not trusted again this boot", (t) => {
  const h = new RngHealth();
  t.true(h.draw(hostRandom, new Uint8Array(32)));
  t.false(h.check(new Uint8Array(64)));
  t.false(h.draw(hostRandom, new Uint8Array(32)));
});

test("the signer refuses precompute on a stuck RNG and signs deterministically (RFC 8032)", (t) => {
  const failures: string[] = [];
  const signer = new Ed25519Signer(seed, { random: constant(7), boot: 1, onRngFailure: (r) => failures.push(r) });
  t.false(signer.precompute());
  t.false(signer.precompute());
  t.is(signer.ready, 0);
  t.is(failures.length, 1, "told once");
  t.regex(signer.rngFailure ?? "", /repetition count/);
  const m = utf8Encode("ring");
  t.deepEqual(signer.sign(m), nacl.sign.detached(m, nacl.sign.keyPair.fromSeed(seed).secretKey));
  t.is(signer.stats.slow, 1);
  t.is(signer.stats.precomputed, 0);
});

test("an RNG that breaks after the pool filled: the ready nonces are dropped, later signatures are deterministic", (t) => {
  const random = failingAfter(STARTUP_BYTES + 4 * 32, (b) => b.fill(0));
  const signer = new Ed25519Signer(seed, { random, boot: 1, poolSize: 8 });
  for (let i = 0; i < 4; i++) t.true(signer.precompute());
  t.is(signer.ready, 4);
  t.false(signer.precompute());
  t.is(signer.ready, 0);
  const m = utf8Encode("after the fault");
  t.deepEqual(signer.sign(m), nacl.sign.detached(m, nacl.sign.keyPair.fromSeed(seed).secretKey));
});

test("a healthy RNG still gets precomputed nonces: standard signatures from the online path", (t) => {
  const signer = new Ed25519Signer(seed, { random: hostRandom, boot: 1, poolSize: 3 });
  while (signer.precompute());
  for (let i = 0; i < 3; i++) {
    const m = utf8Encode(`m${i}`);
    t.true(opensslVerify(m, signer.sign(m), signer.publicKey));
  }
  t.deepEqual(signer.stats, { online: 3, slow: 0, precomputed: 3, waited: 0 });
  t.is(signer.rngFailure, undefined);
});

/** One boot of a real doorbell on `store` with a stuck RNG: idle long enough to fill the pool, then one press. */
async function bootAndRing(store: MemoryStore, wallTime: number) {
  const clock = new ManualClock();
  clock.wall = wallTime;
  const transport = new AckingTransport();
  const logs: string[] = [];
  const doorbell = new Doorbell({
    thing: "porch-1", signingSeed: seed, clock, random: constant(0x5a), store, transport,
    log: (level, message) => logs.push(`${level} ${message}`),
  });
  doorbell.start();
  clock.advance(10_000);
  const ring = doorbell.press();
  for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
  doorbell.stop();
  return { ring, publicKey: doorbell.signer.publicKey, logs };
}

test("PoC: a stuck RNG with the boot counter written back never signs two events with one R", async (t) => {
  const store = new MemoryStore();
  await bootAndRing(store, 1_790_000_000_000);
  // The attacker images the flash here, lets the owner use the bell, then writes the image back.
  const image = new Map([...store.map].map(([k, v]) => [k, v.slice()]));
  const first = await bootAndRing(store, 1_790_000_100_000);
  store.map.clear();
  for (const [k, v] of image) store.map.set(k, v);
  const second = await bootAndRing(store, 1_790_000_200_000);

  t.is(first.ring.event.boot, second.ring.event.boot, "the rollback restored the boot counter");
  t.notDeepEqual(first.ring.payload, second.ring.payload, "two different signed messages");
  const sigOf = (payload: Uint8Array) => openEnvelope(payload).signature;
  const a = sigOf(first.ring.payload);
  const b = sigOf(second.ring.payload);
  t.not(toHex(a.subarray(0, 32)), toHex(b.subarray(0, 32)), "R is not shared");
  t.true(first.logs.some((l) => l.startsWith("error RNG failed its health tests")));
});

test("no device key from a stuck RNG or before the entropy source runs: provisioning refuses, and a good RNG then succeeds", async (t) => {
  const { Vault } = await import("../modules/core/vault");
  const { Provisioning, ProvisioningError, encodeBundle } = await import("../modules/core/provisioning");
  const { issueThingCredentials } = await import("../tools/pki");
  const fs = await import("node:fs");
  const os = await import("node:os");
  const path = await import("node:path");
  const c = await issueThingCredentials(fs.mkdtempSync(path.join(os.tmpdir(), "dw-rng-pki-")), "porch-rng");
  const bundle = encodeBundle({ thing: "porch-rng", wifi: { ssid: "Home", password: "a long passphrase" }, endpoint: "localhost", cert: c.certDer, key: c.keyDer, ca: c.caDer, owner: { signKey: nacl.sign.keyPair().publicKey, boxKey: nacl.box.keyPair().publicKey } });
  const store = new MemoryStore();
  const keys = { storageKey: () => new Uint8Array(32).fill(4) };
  const stuck = new Provisioning({ vault: Vault.open({ store, keys, random: hostRandom }), random: constant(0) });
  t.throws(() => stuck.accept(bundle), { instanceOf: ProvisioningError, message: /RNG failed its health tests/ });
  let ready = false;
  const early = new Provisioning({ vault: Vault.open({ store, keys, random: hostRandom }), random: hostRandom, entropyReady: () => ready });
  t.throws(() => early.accept(bundle), { instanceOf: ProvisioningError, message: /no true entropy source/ });
  t.is(early.status().state, "unprovisioned");
  ready = true;
  t.is(early.accept(bundle).thing, "porch-rng");
  t.is(early.status().state, "provisioned");
});

/** Nonce points made "elsewhere" (here: later, on this thread), as the device's crypto worker does. */
function laterCrypto() {
  return {
    concurrent: true,
    available: true,
    pending: 0,
    async noncePoint(seed: Uint8Array) {
      await new Promise((r) => setImmediate(r));
      const sk = new Uint8Array(64);
      sk.set(seed);
      return nacl.sign.detached(new Uint8Array(0), sk).slice(0, 32);
    },
    async verify(m: Uint8Array, s: Uint8Array, k: Uint8Array) {
      return nacl.sign.detached.verify(m, s, k);
    },
    async boxBefore(pk: Uint8Array, sk: Uint8Array) {
      return nacl.box.before(pk, sk);
    },
  };
}

for (const [label, random, entropyReady] of [["a stuck RNG", constant(3), () => true], ["no entropy source yet", hostRandom, () => false]] as const) {
  test(`with a nonce worker and ${label}: refills stop instead of spinning, and waiting events are signed deterministically`, async (t) => {
    const clock = new ManualClock();
    const transport = new AckingTransport();
    const doorbell = new Doorbell({
      thing: "porch-1", signingSeed: seed, clock, random, store: new MemoryStore(), transport, log: () => {}, crypto: laterCrypto(), entropyReady,
    });
    let refills = 0;
    const refill = doorbell.signer.refill.bind(doorbell.signer);
    doorbell.signer.refill = (...args: Parameters<typeof refill>) => {
      if (++refills > 200) throw new Error("refill loop");
      return refill(...args);
    };
    doorbell.start();
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
    const sent = await doorbell.emitWhenReady("audit", { report: "test" });
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
    clock.advance(3000);
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
    t.true(refills < 20, `${refills} refills`);
    const { signature, message } = openEnvelope(sent.payload);
    t.deepEqual(signature, nacl.sign.detached(message, nacl.sign.keyPair.fromSeed(seed).secretKey), "the deterministic RFC 8032 signature");
    t.is(doorbell.signer.stats.precomputed, 0);
    doorbell.stop();
  });
}
