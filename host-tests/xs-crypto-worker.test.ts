/*
 * The crypto worker on the real XS engine: the worker side (runCryptoJob) on
 * one xsnap machine, the main side (signer, doorbell, access list with a
 * QueuedCrypto) on another, and this test carrying each posted job and each
 * reply between them, as the Moddable Worker's marshalling does on the device.
 *
 * It checks that what crosses is only what must (a one-time seed, never the
 * signing key; the main side wipes its copy once posted, the worker its own
 * once used), that signatures finished from a worker-made nonce are standard
 * and byte-identical to the single-machine path, that the main machine serves
 * presses from the pool while the worker holds a job, and that bad jobs get
 * clear refusals.
 */
import test, { type ExecutionContext } from "ava";
import nacl from "tweetnacl";
import { toHex, utf8Encode } from "../modules/core/bytes";
import { Ed25519Signer } from "../modules/core/signer";
import { SeededRandom } from "../tools/xs/deterministic";
import { startXsCore, type XsCore } from "../tools/xs/core";
import { opensslVerify } from "./helpers/crypto";

async function machine(t: ExecutionContext, name: string): Promise<XsCore> {
  const xs = await startXsCore({ name: `xs-crypto-${name}`, stdout: "ignore" });
  t.teardown(() => xs.close());
  return xs;
}

const SEED = Uint8Array.from({ length: 32 }, (_, i) => (i * 7 + 3) & 255);
const RANDOM_SEED = 0x5eed1234;
const BOOT = 3;

/** Main-machine prelude: a QueuedCrypto whose channel keeps a marshalled copy of each posted job for the test to carry. */
const MAIN_SETUP = `
  const { QueuedCrypto } = importNow("core/heavy-crypto");
  const { Ed25519Signer } = importNow("core/signer");
  const { SeededRandom } = importNow("harness/deterministic");
  const copy = (v) => (v instanceof Uint8Array ? v.slice() : v);
  state.posted = [];
  state.originals = [];
  state.crypto = new QueuedCrypto({
    post(job) {
      state.originals.push(job);
      const c = {};
      for (const k of Object.keys(job)) c[k] = copy(job[k]);
      state.posted.push(c);
    },
    listen(onReply) { state.deliver = onReply; },
  });
  state.signer = new Ed25519Signer(args.seed, { random: new SeededRandom(args.randomSeed), boot: args.boot, poolSize: 4 });
`;

/** Carry every job the main machine has posted to the worker machine and its reply back, until none is left. */
async function carry(main: XsCore, worker: XsCore): Promise<Array<Record<string, unknown>>> {
  const carried: Array<Record<string, unknown>> = [];
  for (;;) {
    const { value: jobs } = await main.run<Array<Record<string, unknown>>>(`return state.posted.splice(0);`);
    if (jobs.length === 0) return carried;
    for (const job of jobs) {
      carried.push(job);
      const { value: reply } = await worker.run(`return importNow("core/heavy-crypto").runCryptoJob(args);`, job);
      await main.run(`state.deliver(args);`, reply);
    }
  }
}

test("nonces made on a worker machine: only a one-time seed crosses, both copies are wiped, and signatures are standard and identical to the one-machine path", async (t) => {
  const [main, worker] = await Promise.all([machine(t, "main"), machine(t, "worker")]);
  await main.run(MAIN_SETUP + `
    state.refills = [];
    for (let i = 0; i < 6; i++) state.refills.push(state.signer.refill(state.crypto));`, { seed: SEED, randomSeed: RANDOM_SEED, boot: BOOT });
  const carried = await carry(main, worker);
  t.is(carried.length, 4, "the pool of 4 asked for exactly 4 nonces; the extra refills found no room");

  const expanded = nacl.hash(SEED);
  for (const job of carried) {
    t.deepEqual(Object.keys(job).sort(), ["a", "id", "op"]);
    t.is(job.op, "point");
    const a = job.a as Uint8Array;
    t.is(a.length, 32);
    t.not(toHex(a), toHex(SEED), "the signing seed never crosses");
    t.false(toHex(expanded).includes(toHex(a)), "nor any half of the expanded key");
  }

  const messages = ["ring", "x".repeat(150), "", "é€😀"];
  const { value: onXs } = await main.run<{ sigs: Uint8Array[]; ready: number; stats: Record<string, number>; wiped: boolean; refillsDone: boolean[] }>(`
    const { utf8Encode } = importNow("core/bytes");
    const done = await Promise.all(state.refills);
    const wiped = state.originals.every((j) => j.a.every((b) => b === 0));
    const ready = state.signer.ready;
    const sigs = args.map((m) => state.signer.sign(utf8Encode(m)));
    return { sigs, ready, stats: { ...state.signer.stats }, wiped, refillsDone: done };`, messages);
  t.true(onXs.wiped, "the main machine wiped its copy of every seed once posted");
  t.deepEqual(onXs.refillsDone, [true, true, true, true, false, false]);
  t.is(onXs.ready, 4);
  t.deepEqual(onXs.stats, { online: 4, slow: 0, precomputed: 4, waited: 0 });

  // The same seeds and randomness on one machine (tweetnacl in-process) give the very same bytes.
  const inline = new Ed25519Signer(SEED, { random: new SeededRandom(RANDOM_SEED), boot: BOOT, poolSize: 4 });
  while (inline.precompute());
  const publicKey = inline.publicKey;
  messages.forEach((m, i) => {
    const message = utf8Encode(m);
    t.is(toHex(onXs.sigs[i]), toHex(inline.sign(message)), `message ${i}`);
    t.true(nacl.sign.detached.verify(message, onXs.sigs[i], publicKey));
    t.true(opensslVerify(message, onXs.sigs[i], publicKey), `OpenSSL accepts signature ${i}`);
    t.false(opensslVerify(utf8Encode(m + "!"), onXs.sigs[i], publicKey));
  });
});

test("the main machine serves presses from the pool while the worker holds a verify; an empty pool waits for its own nonce, ahead of refills, never a full sign", async (t) => {
  const [main, worker] = await Promise.all([machine(t, "main"), machine(t, "worker")]);
  const owner = nacl.sign.keyPair.fromSeed(new Uint8Array(32).fill(4));
  const list = utf8Encode("a signed list");
  await main.run(MAIN_SETUP, { seed: SEED, randomSeed: RANDOM_SEED, boot: BOOT });
  await main.run(`for (let i = 0; i < 2; i++) state.signer.refill(state.crypto);`);
  await carry(main, worker);

  // A verify goes out and is not answered yet: the worker is busy.
  await main.run(`
    state.verdict = "pending";
    state.crypto.verify(args.m, args.s, args.k).then((v) => { state.verdict = v; });`, { m: list, s: nacl.sign.detached(list, owner.secretKey), k: owner.publicKey });
  const { value: busy } = await main.run<{ verdict: string; pending: number; sigs: Uint8Array[]; stats: Record<string, number> }>(`
    const { utf8Encode } = importNow("core/bytes");
    const sigs = [state.signer.sign(utf8Encode("press 1")), state.signer.sign(utf8Encode("press 2"))];
    // The pool is empty now: the third press asks for a nonce of its own, and a refill queues behind it.
    state.third = state.signer.signWhenReady(utf8Encode("press 3"), state.crypto);
    state.signer.refill(state.crypto);
    return { verdict: String(state.verdict), pending: state.crypto.pending, sigs, stats: { ...state.signer.stats } };`);
  t.is(busy.verdict, "pending");
  t.is(busy.pending, 3, "the verify running, the urgent nonce and the refill queued");
  t.is(busy.stats.slow, 0);
  for (const [i, sig] of busy.sigs.entries()) t.true(nacl.sign.detached.verify(utf8Encode(`press ${i + 1}`), sig, nacl.sign.keyPair.fromSeed(SEED).publicKey));

  const carried = await carry(main, worker);
  t.deepEqual(carried.map((j) => j.op), ["verify", "point", "point"], "the press's nonce went ahead of the refill");
  const { value: after } = await main.run<{ verdict: boolean; third: Uint8Array; stats: Record<string, number>; ready: number }>(`
    const third = await state.third;
    return { verdict: state.verdict, third, stats: { ...state.signer.stats }, ready: state.signer.ready };`);
  t.true(after.verdict);
  t.true(opensslVerify(utf8Encode("press 3"), after.third, nacl.sign.keyPair.fromSeed(SEED).publicKey));
  t.is(after.stats.slow, 0);
  t.is(after.stats.waited, 1);
  t.is(after.ready, 1, "the urgent nonce was used by its press, not put in the pool");
});

test("the worker side on XS: answers match tweetnacl, secrets it was sent are wiped, bad jobs get clear refusals", async (t) => {
  const worker = await machine(t, "alone");
  const device = nacl.box.keyPair.fromSecretKey(new Uint8Array(32).fill(9));
  const user = nacl.box.keyPair.fromSecretKey(new Uint8Array(32).fill(10));
  const signing = nacl.sign.keyPair.fromSeed(new Uint8Array(32).fill(11));
  const message = utf8Encode("release manifest");
  const args = {
    seed: new Uint8Array(32).fill(12), theirs: user.publicKey, mine: device.secretKey,
    message, sig: nacl.sign.detached(message, signing.secretKey), key: signing.publicKey,
  };
  const { value } = await worker.run<Record<string, any>>(`
    const { runCryptoJob } = importNow("core/heavy-crypto");
    const seed = args.seed.slice();
    const mine = args.mine.slice();
    const point = runCryptoJob({ id: 1, op: "point", a: seed });
    const before = runCryptoJob({ id: 2, op: "before", a: args.theirs, b: mine });
    const good = runCryptoJob({ id: 3, op: "verify", a: args.message, b: args.sig, c: args.key });
    const tampered = args.sig.slice(); tampered[5] ^= 1;
    const bad = runCryptoJob({ id: 4, op: "verify", a: args.message, b: tampered, c: args.key });
    return {
      point, before, good, bad,
      seedWiped: seed.every((b) => b === 0), secretWiped: mine.every((b) => b === 0),
      shortSeed: runCryptoJob({ id: 5, op: "point", a: new Uint8Array(31) }),
      unknown: runCryptoJob({ id: 6, op: "sign", a: new Uint8Array(32) }),
      noId: runCryptoJob({ op: "point", a: new Uint8Array(32) }),
      notBytes: runCryptoJob({ id: 7, op: "verify", a: "text", b: args.sig, c: args.key }),
      huge: runCryptoJob({ id: 8, op: "verify", a: new Uint8Array(16 * 1024 + 1), b: args.sig, c: args.key }),
    };`, args);
  const oneTimeKey = new Uint8Array(64);
  oneTimeKey.set(args.seed);
  t.deepEqual(value.point, { id: 1, ok: true, value: nacl.sign.detached(new Uint8Array(0), oneTimeKey).slice(0, 32) });
  t.deepEqual(value.before, { id: 2, ok: true, value: nacl.box.before(user.publicKey, device.secretKey) });
  t.deepEqual(value.good, { id: 3, ok: true, value: true });
  t.deepEqual(value.bad, { id: 4, ok: true, value: false });
  t.true(value.seedWiped);
  t.true(value.secretWiped);
  t.deepEqual(value.shortSeed, { id: 5, ok: false, error: "nonce seed must be 32 bytes" });
  t.deepEqual(value.unknown, { id: 6, ok: false, error: "unknown op" });
  t.deepEqual(value.noId, { id: -1, ok: false, error: "job must carry an integer id" });
  t.deepEqual(value.notBytes, { id: 7, ok: false, error: "message must be bytes" });
  t.deepEqual(value.huge, { id: 8, ok: false, error: "message too large to verify" });
});
