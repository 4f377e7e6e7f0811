/*
 * A crypto worker the test runs by hand: jobs queue as the worker would
 * receive them (copied, as a message between machines copies them) and run
 * through runCryptoJob only when the test says, so every moment in between
 * can be inspected.
 */
import { QueuedCrypto, runCryptoJob, type CryptoJob, type CryptoReply } from "../../modules/core/heavy-crypto";

export function manualWorker() {
  const jobs: CryptoJob[] = [];
  let deliver!: (r: CryptoReply) => void;
  let lose!: (why: string) => void;
  const crypto = new QueuedCrypto({
    post: (job) => void jobs.push({ ...job, a: job.a.slice(), b: job.b?.slice(), c: job.c?.slice() }),
    listen: (r, l) => { deliver = r; lose = l; },
  });
  /** Lets the worker finish its oldest job; returns its op. */
  const work = async () => {
    const job = jobs.shift();
    if (!job) throw new Error("the worker has nothing to do");
    deliver(runCryptoJob(job));
    await new Promise((r) => setImmediate(r));
    return job.op;
  };
  /** The worker is gone (a deleted task, a crash): what the port reports then. */
  const loseWorker = (why: string) => lose(why);
  return { crypto, jobs, work, lose: loseWorker };
}
