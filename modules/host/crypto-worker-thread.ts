/* The worker thread behind ./crypto-worker: one job in, one reply out, nothing kept between jobs. */
import { parentPort } from "node:worker_threads";
import { runCryptoJob } from "../core/heavy-crypto";

const port = parentPort;
if (!port) throw new Error("crypto-worker-thread must run as a worker thread");
port.on("message", (job: unknown) => port.postMessage(runCryptoJob(job)));
