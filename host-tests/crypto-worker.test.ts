/*
 * The heavy-crypto port on the host: the node:worker_threads adapter, and the
 * main side's queue (priorities, bounds, a worker that dies) over a channel
 * the test controls.
 */
import test from "ava";
import nacl from "tweetnacl";
import { CryptoWorkerError, InlineCrypto, QueuedCrypto, type CryptoJob, type CryptoReply } from "../modules/core/heavy-crypto";
import { startHostCryptoWorker } from "../modules/host/crypto-worker";

test("the worker thread answers as tweetnacl does, off the main thread", async (t) => {
  const w = startHostCryptoWorker();
  t.teardown(() => w.close());
  const signing = nacl.sign.keyPair.fromSeed(new Uint8Array(32).fill(1));
  const m = new Uint8Array(300).fill(2);
  const sig = nacl.sign.detached(m, signing.secretKey);
  const device = nacl.box.keyPair.fromSecretKey(new Uint8Array(32).fill(3));
  const user = nacl.box.keyPair.fromSecretKey(new Uint8Array(32).fill(4));
  const seed = new Uint8Array(32).fill(5);
  const oneTimeKey = new Uint8Array(64);
  oneTimeKey.set(seed);
  const secret = device.secretKey.slice();
  const [good, bad, R, shared] = await Promise.all([
    w.crypto.verify(m, sig, signing.publicKey),
    w.crypto.verify(m, sig.map((b, i) => (i === 0 ? b ^ 1 : b)), signing.publicKey),
    w.crypto.noncePoint(seed),
    w.crypto.boxBefore(user.publicKey, secret),
  ]);
  t.true(good);
  t.false(bad);
  t.deepEqual(R, nacl.sign.detached(new Uint8Array(0), oneTimeKey).slice(0, 32));
  t.deepEqual(shared, nacl.box.before(user.publicKey, device.secretKey));
  t.deepEqual(seed, new Uint8Array(32).fill(5), "the caller's own buffers are left alone; only the queue's copies are wiped");
  t.deepEqual(await new InlineCrypto().boxBefore(user.publicKey, secret), shared, "the in-process baseline agrees");
});

test("a worker thread that dies fails its job and every later one, nothing hangs", async (t) => {
  const w = startHostCryptoWorker();
  const seed = new Uint8Array(32).fill(6);
  const first = w.crypto.noncePoint(seed);
  const second = w.crypto.noncePoint(seed);
  await w.close();
  await t.throwsAsync(first, { instanceOf: CryptoWorkerError });
  await t.throwsAsync(second, { instanceOf: CryptoWorkerError });
  await t.throwsAsync(w.crypto.verify(new Uint8Array(1), new Uint8Array(64), new Uint8Array(32)), { message: /closed|lost/ });
});

function manualChannel() {
  const posted: CryptoJob[] = [];
  let deliver!: (r: CryptoReply) => void;
  let lose!: (why: string) => void;
  return {
    posted,
    reply: (r: CryptoReply) => deliver(r),
    lose: (why: string) => lose(why),
    channel: { post: (job: CryptoJob) => void posted.push({ ...job, a: job.a.slice(), b: job.b?.slice(), c: job.c?.slice() }), listen: (r: typeof deliver, l: typeof lose) => { deliver = r; lose = l; } },
  };
}

test("the queue: one job out at a time, urgent before refill before background, bounded, wrong answers refused", async (t) => {
  const c = manualChannel();
  const q = new QueuedCrypto(c.channel, { maxQueued: 3 });
  const k = new Uint8Array(32).fill(7);
  const v1 = q.verify(new Uint8Array(3), new Uint8Array(64), k);
  const v2 = q.verify(new Uint8Array(3), new Uint8Array(64), k);
  const refill = q.noncePoint(new Uint8Array(32).fill(1), "refill");
  const urgent = q.noncePoint(new Uint8Array(32).fill(2), "urgent");
  await t.throwsAsync(q.noncePoint(new Uint8Array(32), "urgent"), { message: /queue full/ });
  t.is(c.posted.length, 1);
  t.is(q.pending, 4);
  c.reply({ id: c.posted[0].id, ok: true, value: true });
  t.true(await v1);
  t.deepEqual(c.posted.map((j) => j.op), ["verify", "point"]);
  t.deepEqual(c.posted[1].a, new Uint8Array(32).fill(2), "the urgent nonce went next");
  c.reply({ id: 999, ok: true, value: new Uint8Array(32) });
  t.is(q.pending, 3, "a reply for another job is ignored");
  c.reply({ id: c.posted[1].id, ok: true, value: true });
  await t.throwsAsync(urgent, { message: /wrong type/ });
  t.deepEqual(c.posted[2].a, new Uint8Array(32).fill(1), "then the refill");
  c.reply({ id: c.posted[2].id, ok: false, error: "nonce seed must be 32 bytes" });
  await t.throwsAsync(refill, { message: "crypto worker: nonce seed must be 32 bytes" });
  c.lose("task deleted");
  await t.throwsAsync(v2, { message: "crypto worker lost: task deleted" });
  t.is(q.pending, 0);
});
