/*
 * Heavy curve work behind one small port, so it can leave the main machine.
 *
 * Three operations cost seconds on the device (see the SDK check notes on XS
 * crypto costs): the nonce point R = r·B of an offline/online signature, an
 * Ed25519 verify (grants and release manifests) and an X25519 box.before
 * (per-user keys). While any of them runs on the one XS machine, a press or a
 * revoke waits. The port lets the platform run them elsewhere: on the device a
 * Moddable Worker pinned to the ESP32-S3's second core, on a laptop a
 * node:worker_threads thread, in tests and on a single core in-process.
 *
 * What crosses the boundary is only what each operation needs:
 *  - a nonce point job carries a one-time seed, never the signing key: the
 *    main machine keeps r (derived from the same seed) and the key, and
 *    finishes every signature itself. Seeds are wiped on both sides once used;
 *    R comes back, and R is public.
 *  - a verify carries only public data.
 *  - box.before carries the device's X25519 secret, because X25519 cannot be
 *    split; the worker wipes its copy once the shared key is computed.
 * Nothing is kept by the worker between jobs.
 *
 * The worker side is runCryptoJob(): pure, tweetnacl only, the same code on
 * every platform. The main side is QueuedCrypto: one job in flight at a time,
 * so the queue stays on the main machine where it can be reordered (a nonce the
 * next press needs goes ahead of a queued verify) and bounded.
 */
import nacl from "tweetnacl";
import { wipe } from "./bytes";

export type CryptoOp = "point" | "verify" | "before";

/** Which queued job goes first: a nonce someone is waiting for, then refills, then verifies. */
export type CryptoPriority = "urgent" | "refill" | "background";

/** What runs elsewhere. Every method settles; a failure rejects with CryptoWorkerError. */
export interface HeavyCrypto {
  /** R (32 bytes) of the one-time nonce seed: the first half of tweetnacl's signature of the empty message under it. */
  noncePoint(oneTimeSeed: Uint8Array, priority?: CryptoPriority): Promise<Uint8Array>;
  /** Ed25519 detached verify. */
  verify(message: Uint8Array, signature: Uint8Array, publicKey: Uint8Array): Promise<boolean>;
  /** X25519 shared key (nacl.box.before). */
  boxBefore(theirPublicKey: Uint8Array, mySecretKey: Uint8Array): Promise<Uint8Array>;
  /** Jobs queued or running. */
  readonly pending: number;
  /** True when the work runs off the main machine, so the caller need not wait for idle time to start it. */
  readonly concurrent: boolean;
  /** False once the worker is closed or lost: every job would fail, so callers go back to their own machine. */
  readonly available: boolean;
}

export class CryptoWorkerError extends Error {
  override name = "CryptoWorkerError";
}

// ---- the wire: one job in, one reply out ----

export interface CryptoJob {
  id: number;
  op: CryptoOp;
  a: Uint8Array;
  b?: Uint8Array;
  c?: Uint8Array;
}

export type CryptoReply =
  | { id: number; ok: true; value: Uint8Array | boolean }
  | { id: number; ok: false; error: string };

const EMPTY = new Uint8Array(0);

function bytesOf(v: unknown, length: number | undefined, what: string): Uint8Array {
  if (!(v instanceof Uint8Array)) throw new CryptoWorkerError(`${what} must be bytes`);
  if (length !== undefined && v.length !== length) throw new CryptoWorkerError(`${what} must be ${length} bytes`);
  return v;
}

/** Largest message a verify job may carry (release manifests and signed lists are a few KB). */
export const MAX_VERIFY_MESSAGE = 16 * 1024;

/** The worker side: run one job. Never throws; a bad job gets an error reply. Secret inputs are wiped. */
export function runCryptoJob(job: unknown): CryptoReply {
  const id = typeof job === "object" && job !== null && Number.isSafeInteger((job as CryptoJob).id) ? (job as CryptoJob).id : -1;
  const j = job as CryptoJob;
  try {
    if (id < 0) throw new CryptoWorkerError("job must carry an integer id");
    switch (j.op) {
      case "point": {
        const seed = bytesOf(j.a, 32, "nonce seed");
        const oneTimeKey = new Uint8Array(64);
        oneTimeKey.set(seed);
        wipe(seed);
        const R = nacl.sign.detached(EMPTY, oneTimeKey).slice(0, 32);
        wipe(oneTimeKey);
        return { id, ok: true, value: R };
      }
      case "verify": {
        const message = bytesOf(j.a, undefined, "message");
        if (message.length > MAX_VERIFY_MESSAGE) throw new CryptoWorkerError("message too large to verify");
        return { id, ok: true, value: nacl.sign.detached.verify(message, bytesOf(j.b, 64, "signature"), bytesOf(j.c, 32, "public key")) };
      }
      case "before": {
        const theirs = bytesOf(j.a, 32, "public key");
        const mine = bytesOf(j.b, 32, "secret key");
        const shared = nacl.box.before(theirs, mine);
        wipe(mine);
        return { id, ok: true, value: shared };
      }
      default:
        throw new CryptoWorkerError("unknown op");
    }
  } catch (e) {
    if (j && typeof j === "object") {
      if (j.op === "point" && j.a instanceof Uint8Array) wipe(j.a);
      if (j.op === "before" && j.b instanceof Uint8Array) wipe(j.b);
    }
    return { id, ok: false, error: e instanceof CryptoWorkerError ? e.message : "job failed" };
  }
}

// ---- the main side ----

/** The platform's message channel to the worker (a Moddable Worker, a worker thread, another xsnap machine). */
export interface CryptoChannel {
  /** Send one job. May copy it (structured clone, XS marshalling): the caller wipes its own copy afterwards. */
  post(job: CryptoJob): void;
  /** Called once with the function that receives every reply, and the one to call if the worker dies. */
  listen(onReply: (reply: CryptoReply) => void, onLost: (why: string) => void): void;
  close?(): void;
}

interface Queued {
  job: CryptoJob;
  priority: CryptoPriority;
  resolve: (value: Uint8Array | boolean) => void;
  reject: (e: Error) => void;
}

const RANK: Record<CryptoPriority, number> = { urgent: 0, refill: 1, background: 2 };

export interface QueuedCryptoOptions {
  /** Most jobs waiting (not counting the one running); a job beyond it is refused at once. Default 16. */
  maxQueued?: number;
}

/** HeavyCrypto over a channel to a worker: jobs queued here by priority, one at a time on the worker. */
export class QueuedCrypto implements HeavyCrypto {
  readonly concurrent = true;
  #channel: CryptoChannel;
  #queue: Queued[] = [];
  #running: Queued | undefined;
  #nextId = 1;
  #maxQueued: number;
  #closed = false;

  constructor(channel: CryptoChannel, options: QueuedCryptoOptions = {}) {
    this.#channel = channel;
    this.#maxQueued = options.maxQueued ?? 16;
    channel.listen((reply) => this.#onReply(reply), (why) => this.#lost(why));
  }

  get pending(): number {
    return this.#queue.length + (this.#running ? 1 : 0);
  }

  get available(): boolean {
    return !this.#closed;
  }

  noncePoint(oneTimeSeed: Uint8Array, priority: CryptoPriority = "refill"): Promise<Uint8Array> {
    return this.#submit({ op: "point", a: oneTimeSeed.slice() }, priority) as Promise<Uint8Array>;
  }

  verify(message: Uint8Array, signature: Uint8Array, publicKey: Uint8Array): Promise<boolean> {
    return this.#submit({ op: "verify", a: message.slice(), b: signature.slice(), c: publicKey.slice() }, "background") as Promise<boolean>;
  }

  boxBefore(theirPublicKey: Uint8Array, mySecretKey: Uint8Array): Promise<Uint8Array> {
    return this.#submit({ op: "before", a: theirPublicKey.slice(), b: mySecretKey.slice() }, "background") as Promise<Uint8Array>;
  }

  /** Refuse everything queued and stop; the running job's answer is ignored. */
  close(): void {
    this.#closed = true;
    const all = [...this.#queue, ...(this.#running ? [this.#running] : [])];
    this.#queue = [];
    this.#running = undefined;
    for (const q of all) this.#fail(q, "crypto worker closed");
    this.#channel.close?.();
  }

  /** The worker died: what it held and everything after is refused, nothing hangs. */
  #lost(why: string): void {
    if (this.#closed) return;
    this.#closed = true;
    const all = [...(this.#running ? [this.#running] : []), ...this.#queue];
    this.#queue = [];
    this.#running = undefined;
    for (const q of all) this.#fail(q, `crypto worker lost: ${why}`);
  }

  #submit(job: Omit<CryptoJob, "id">, priority: CryptoPriority): Promise<Uint8Array | boolean> {
    return new Promise((resolve, reject) => {
      const q: Queued = { job: { ...job, id: this.#nextId++ }, priority, resolve, reject };
      if (this.#closed) return this.#fail(q, "crypto worker closed");
      if (this.#queue.length >= this.#maxQueued) return this.#fail(q, "crypto queue full");
      // Stable insert by rank: equal priorities keep their order.
      let i = this.#queue.length;
      while (i > 0 && RANK[this.#queue[i - 1].priority] > RANK[priority]) i--;
      this.#queue.splice(i, 0, q);
      this.#pump();
    });
  }

  #pump(): void {
    if (this.#running || this.#closed) return;
    const q = this.#queue.shift();
    if (!q) return;
    this.#running = q;
    try {
      this.#channel.post(q.job);
    } catch (e) {
      this.#running = undefined;
      this.#fail(q, `could not post to the crypto worker: ${(e as Error)?.message ?? e}`);
      this.#pump();
      return;
    }
    wipeSecrets(q.job);
  }

  #onReply(reply: CryptoReply): void {
    const q = this.#running;
    if (!q || !reply || reply.id !== q.job.id) return;
    this.#running = undefined;
    if (reply.ok) {
      const expectBool = q.job.op === "verify";
      const v = reply.value;
      if (expectBool ? typeof v === "boolean" : v instanceof Uint8Array && v.length === 32) q.resolve(v);
      else this.#fail(q, "crypto worker answered with the wrong type");
    } else {
      this.#fail(q, `crypto worker: ${reply.error}`);
    }
    this.#pump();
  }

  #fail(q: Queued, why: string): void {
    wipeSecrets(q.job);
    q.reject(new CryptoWorkerError(why));
  }
}

function wipeSecrets(job: CryptoJob): void {
  if (job.op === "point") wipe(job.a);
  if (job.op === "before" && job.b) wipe(job.b);
}

/**
 * The single-machine baseline: each job runs in the call, on the caller's
 * machine, blocking it exactly as before the port existed. For tests, the
 * host's default, and the benchmark's one-core baseline.
 */
export class InlineCrypto implements HeavyCrypto {
  readonly concurrent = false;
  readonly available = true;
  readonly pending = 0;
  #id = 1;

  noncePoint(oneTimeSeed: Uint8Array): Promise<Uint8Array> {
    return this.#run({ id: this.#id++, op: "point", a: oneTimeSeed.slice() }) as Promise<Uint8Array>;
  }
  verify(message: Uint8Array, signature: Uint8Array, publicKey: Uint8Array): Promise<boolean> {
    return this.#run({ id: this.#id++, op: "verify", a: message, b: signature, c: publicKey }) as Promise<boolean>;
  }
  boxBefore(theirPublicKey: Uint8Array, mySecretKey: Uint8Array): Promise<Uint8Array> {
    return this.#run({ id: this.#id++, op: "before", a: theirPublicKey, b: mySecretKey.slice() }) as Promise<Uint8Array>;
  }
  #run(job: CryptoJob): Promise<Uint8Array | boolean> {
    const reply = runCryptoJob(job);
    return reply.ok ? Promise.resolve(reply.value) : Promise.reject(new CryptoWorkerError(reply.error));
  }
}
