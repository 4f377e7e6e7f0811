/*
 * The heavy-crypto port on the device: a Moddable Worker (the SDK's "worker"
 * module) pinned to the ESP32-S3's second core, running the core's
 * runCryptoJob (./crypto-worker-main). The main machine keeps the button,
 * MQTT and commands; nonce points, verifies and box.before run over there, so
 * a press or a revoke never waits seconds behind them.
 *
 * The worker is its own XS machine with its own heap, allocated from system
 * memory (PSRAM on the S3 boards). It loads tweetnacl once (~1,200 slots and
 * 48 KB of chunks) and needs about 52 KB more while a sign's garbage is
 * collected, hence the chunk size. Messages are copied by XS marshalling; the
 * main side wipes its copy of a secret once posted, the worker its own once used.
 *
 * Core 1: ESP-IDF runs Wi-Fi and its system tasks on core 0. The main task is
 * not pinned, so the scheduler keeps it on whichever core is free.
 */
import Worker, { type WorkerOptions } from "worker";
import { QueuedCrypto, type CryptoReply } from "../core/heavy-crypto";

export const CRYPTO_WORKER_MODULE = "device/crypto-worker-main";

/**
 * modWorker.c's FreeRTOS options on ESP32 (documentation/base/worker.md): the SDK's own
 * typings, which mcconfig compiles against, do not declare them.
 */
interface PinnedWorkerOptions extends WorkerOptions {
  core?: 0 | 1;
  priority?: number;
}

export const CRYPTO_WORKER_CREATION: PinnedWorkerOptions = {
  chunk: { initial: 112 * 1024, incremental: 8 * 1024 },
  heap: { initial: 2400, incremental: 256 },
  stack: 384,
  nativeStack: 12 * 1024,
  core: 1,
  priority: 2,
};

export interface DeviceCryptoWorker {
  crypto: QueuedCrypto;
  close(): void;
}

/** Start the worker; throws (from the Worker constructor) if the worker module fails to load. */
export function startDeviceCryptoWorker(): DeviceCryptoWorker {
  let onReply: ((reply: CryptoReply) => void) | undefined;
  const worker = new Worker(CRYPTO_WORKER_MODULE, CRYPTO_WORKER_CREATION);
  worker.onmessage = (reply: CryptoReply) => onReply?.(reply);
  let closed = false;
  const crypto = new QueuedCrypto({
    post(job) {
      if (closed) throw new Error("crypto worker stopped");
      worker.postMessage(job);
    },
    listen(reply) {
      onReply = reply;
    },
    close() {
      if (closed) return;
      closed = true;
      worker.terminate();
    },
  });
  return { crypto, close: () => crypto.close() };
}
