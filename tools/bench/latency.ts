/*
 * Loopback latency of the ring path against the local stand-in, next to a bare
 * mqtt.js QoS 1 publish on the same broker in the same run, so the figure says
 * how much Doorward adds to MQTT itself rather than how fast this laptop is.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import mqtt from "mqtt";
import { Doorbell } from "../../modules/core/doorbell";
import { createHostClock } from "../../modules/host/clock";
import { hostRandom } from "../../modules/host/random";
import { MemoryStore } from "../../modules/host/file-store";
import { HostMqttTransport } from "../../modules/host/mqtt-transport";
import { ensureDevPki, issueThingCredentials } from "../pki";
import { startStandin } from "../standin";
import { CloudConsumer } from "../cloud";
import { intOption, runAsEntry } from "../lib/cli";

export interface Percentiles {
  n: number;
  p50: number;
  p99: number;
  max: number;
}

export function percentiles(samples: number[]): Percentiles {
  const s = [...samples].sort((a, b) => a - b);
  const at = (q: number) => s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)];
  return { n: s.length, p50: at(0.5), p99: at(0.99), max: s[s.length - 1] };
}

export interface LatencyResult {
  pressToPuback: Percentiles;
  pressToVerified: Percentiles;
  barePublishToPuback: Percentiles;
  /** press-to-PUBACK p50 / bare publish p50. */
  ratioP50: number;
  ratioP99: number;
  slowSigns: number;
  payloadBytes: number;
}

export async function measureLatency(presses = 1000): Promise<LatencyResult> {
  const pkiDir = fs.mkdtempSync(path.join(os.tmpdir(), "dw-bench-pki-"));
  const pki = await ensureDevPki(pkiDir);
  const thing = "bench-porch";
  const creds = await issueThingCredentials(pkiDir, thing);
  const bare = await issueThingCredentials(pkiDir, "bench-bare");
  const standin = await startStandin({ pki, connectIntervalMs: 0 });
  const clock = createHostClock();
  const seed = new Uint8Array(32);
  hostRandom.fill(seed);
  const doorbell = new Doorbell({
    thing, signingSeed: seed, clock, random: hostRandom, store: new MemoryStore(),
    transport: new HostMqttTransport({ host: "127.0.0.1", port: standin.port, servername: "localhost", clientId: thing, ca: pki.ca.certPem, cert: creds.certPem, key: creds.keyPem }),
    // Precompute after the PUBACK has had time to arrive, as on a device (default 250 ms); short here to keep the run brief.
    log: () => {}, precomputeDelayMs: 25, noncePoolSize: 4,
  });
  const cloud = new CloudConsumer();
  cloud.register(thing, doorbell.signer.publicKey);
  await cloud.connect({ host: "127.0.0.1", port: standin.port, servername: "localhost", clientId: `${pki.service.name}-bench`, ca: pki.ca.certPem, cert: pki.service.certPem, key: pki.service.keyPem });
  doorbell.start();
  while (!doorbell.link.online) await new Promise((r) => setTimeout(r, 5));

  const bareClient = mqtt.connect({ protocol: "mqtts", host: "127.0.0.1", port: standin.port, servername: "localhost", clientId: "bench-bare", ca: pki.ca.certPem, cert: bare.certPem, key: bare.keyPem, reconnectPeriod: 0 });
  // The baseline gets the same socket option as the device transport, so the ratio compares like with like.
  (bareClient.stream as { setNoDelay?: (on: boolean) => void } | undefined)?.setNoDelay?.(true);
  await new Promise<void>((resolve, reject) => { bareClient.once("connect", () => resolve()); bareClient.once("error", reject); });

  const verifiedAt = new Map<number, number>();
  cloud.onEvent((e) => { if (e.verdict.ok && e.openssl) verifiedAt.set(e.verdict.event.seq, performance.now()); });

  const toPuback: number[] = [];
  const toVerified: number[] = [];
  const bareTimes: number[] = [];
  let payloadBytes = 0;
  const warmup = 50;
  for (let i = 0; i < presses + warmup; i++) {
    // Presses come from people, seconds apart: let the idle precompute refill the nonce pool first.
    while (doorbell.signer.ready < doorbell.signer.poolSize) await new Promise((r) => setTimeout(r, 1));
    const t0 = performance.now();
    const ring = doorbell.press();
    await ring.acked;
    const t1 = performance.now();
    while (!verifiedAt.has(ring.seq)) await new Promise((r) => setImmediate(r));
    payloadBytes = ring.payload.length;
    // Interleave the bare publish so both see the same machine state.
    const payload = Buffer.alloc(payloadBytes, 0x61);
    const b0 = performance.now();
    await new Promise<void>((resolve, reject) => bareClient.publish("doorward/bench-bare/events", payload, { qos: 1 }, (e) => (e ? reject(e) : resolve())));
    const b1 = performance.now();
    if (i >= warmup) {
      toPuback.push(t1 - t0);
      toVerified.push(verifiedAt.get(ring.seq)! - t0);
      bareTimes.push(b1 - b0);
    }
  }
  const slowSigns = doorbell.signer.stats.slow;
  doorbell.stop();
  bareClient.end(true);
  await cloud.close();
  await standin.close();
  const pressToPuback = percentiles(toPuback);
  const barePublishToPuback = percentiles(bareTimes);
  return {
    pressToPuback,
    pressToVerified: percentiles(toVerified),
    barePublishToPuback,
    ratioP50: pressToPuback.p50 / barePublishToPuback.p50,
    ratioP99: pressToPuback.p99 / barePublishToPuback.p99,
    slowSigns,
    payloadBytes,
  };
}

const CLI = {
  name: "bench/latency",
  usage: `usage: npx tsx tools/bench/latency.ts [PRESSES]

The Node latency part of npm run bench on its own: PRESSES rings (default 1000) against
the local stand-in, press → PUBACK and press → verified by the cloud, next to a bare
mqtt.js QoS 1 publish on the same broker. Prints the result as JSON.

  -h, --help     this text`,
  options: {},
  positionals: { max: 1 },
} as const;

runAsEntry(import.meta.url, CLI, async ({ positionals }) => {
  const presses = intOption("PRESSES", positionals[0], { min: 1, max: 1_000_000 }, 1000);
  console.log(JSON.stringify(await measureLatency(presses), null, 2));
  return 0;
});
