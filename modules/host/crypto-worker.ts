/*
 * The heavy-crypto port on a laptop: a node:worker_threads thread running the
 * core's runCryptoJob, so the simulator's event loop behaves like the device's
 * main machine with the curve work on the second core.
 *
 * The thread is referenced only while a job is out, so an idle worker never
 * keeps a finished process alive.
 */
import { Worker } from "node:worker_threads";
import { QueuedCrypto, type CryptoChannel, type CryptoReply, type QueuedCryptoOptions } from "../core/heavy-crypto";

export interface HostCryptoWorker {
  crypto: QueuedCrypto;
  /** Stop the thread; queued jobs are refused. */
  close(): Promise<void>;
}

export function startHostCryptoWorker(options: QueuedCryptoOptions = {}): HostCryptoWorker {
  // The thread's module is TypeScript, like the rest of the host side: a worker's entry file does not go
  // through the parent's loader hooks, so a one-line bootstrap registers tsx in the thread first.
  const entry = new URL("./crypto-worker-thread.ts", import.meta.url).href;
  const tsxApi = import.meta.resolve("tsx/esm/api");
  const bootstrap = `import(${JSON.stringify(tsxApi)}).then((tsx) => { tsx.register(); return import(${JSON.stringify(entry)}); });`;
  const worker = new Worker(bootstrap, { eval: true });
  worker.unref();
  let out = 0;
  let onReply: ((reply: CryptoReply) => void) | undefined;
  let onLost: ((why: string) => void) | undefined;
  let closed = false;
  worker.on("message", (reply: CryptoReply) => {
    out = Math.max(0, out - 1);
    if (out === 0) worker.unref();
    onReply?.(reply);
  });
  // A crashed thread fails the job it held and every later one.
  worker.on("error", (e) => {
    closed = true;
    onLost?.(String((e as Error)?.message ?? e));
  });
  worker.on("exit", () => {
    closed = true;
    onLost?.("thread exited");
  });
  const channel: CryptoChannel = {
    post(job) {
      if (closed) throw new Error("crypto worker stopped");
      out++;
      worker.ref();
      worker.postMessage(job);
    },
    listen(reply, lost) {
      onReply = reply;
      onLost = lost;
    },
  };
  const crypto = new QueuedCrypto(channel, options);
  return {
    crypto,
    async close() {
      closed = true;
      crypto.close();
      await worker.terminate();
    },
  };
}
