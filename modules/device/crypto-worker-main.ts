/*
 * The crypto worker's module (named by ./crypto-worker): runs on its own XS
 * machine, on the second core. One job in, one reply out; nothing is kept
 * between jobs, and runCryptoJob wipes the secrets it was sent.
 */
import { runCryptoJob } from "../core/heavy-crypto";

self.onmessage = (job: unknown) => self.postMessage(runCryptoJob(job));
