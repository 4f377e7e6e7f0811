/*
 * The crypto worker's module (named by ./crypto-worker): runs on its own XS
 * machine, on the second core. One job in, one reply out; nothing is kept
 * between jobs, and runCryptoJob wipes the secrets it was sent.
 */
import { runCryptoJob } from "../core/heavy-crypto";
// The worker's global `self` is declared inside the SDK's "worker" typings: mcconfig compiles this
// module on its own, so it names them here (a type import, gone from the output).
import type { Self } from "worker";

const port: Self = self;
port.onmessage = (job: unknown) => port.postMessage(runCryptoJob(job));
