/*
 * Snapshots end to end on real parts: the stand-in broker over mutual TLS on
 * loopback (128 KB limit, per-thing policy), the unchanged core with host
 * adapters (folder camera, node:crypto AES-GCM), the cloud consumer verifying
 * the signed events, and the reference snapshot consumer reassembling,
 * checking the digest, decrypting and saving the JPEG.
 *
 * Shows: the ring's PUBACK comes before the first chunk is even published,
 * and the cloud has the ring before the first chunk; a 300 KB frame passes
 * the broker's 128 KB limit in 64 KB chunks; a second ring during a long
 * snapshot overtakes it. Logs press-to-event / press-to-last-chunk latency and
 * throughput for a 100 KB frame.
 */
import test from "ava";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { Doorbell } from "../modules/core/doorbell";
import { FootageKeys } from "../modules/core/footage-keys";
import { attachCamera, type Snapshotter, type SnapshotOutcome } from "../modules/core/snapshot";
import type { Camera, MqttHandlers, MqttTransport } from "../modules/core/ports";
import { createHostClock } from "../modules/host/clock";
import { hostRandom } from "../modules/host/random";
import { FileStore } from "../modules/host/file-store";
import { HostMqttTransport } from "../modules/host/mqtt-transport";
import { FolderCamera } from "../modules/host/camera";
import { hostAesGcm, hostSha256 } from "../modules/host/cipher";
import { ensureDevPki, issueThingCredentials, type DevPki } from "../tools/pki";
import { startStandin, type Standin } from "../tools/standin";
import { CloudConsumer } from "../tools/cloud";
import { attachSnapshotViewer, singleViewerKeyring, type SnapshotConsumer, type Viewer } from "../tools/snapshot-consumer";
import { padJpeg, sceneJpeg } from "../tools/make-sample-jpegs";

const SAMPLES = path.join(path.dirname(new URL(import.meta.url).pathname), "..", "assets", "samples");

let pkiDir: string;
let pki: DevPki;
let standin: Standin;
let cloud: CloudConsumer;
let viewerSide: SnapshotConsumer;
let outDir: string;
const viewer: Viewer = { user: "owner", footageKey: new Uint8Array(32) };
hostRandom.fill(viewer.footageKey);

test.before(async () => {
  pkiDir = fs.mkdtempSync(path.join(os.tmpdir(), "dw-snap-pki-"));
  outDir = fs.mkdtempSync(path.join(os.tmpdir(), "dw-snap-out-"));
  pki = await ensureDevPki(pkiDir);
  standin = await startStandin({ pki, connectIntervalMs: 0 });
  const service = (suffix: string) => ({
    host: "127.0.0.1", port: standin.port, servername: "localhost", clientId: `${pki.service.name}-${suffix}`,
    ca: pki.ca.certPem, cert: pki.service.certPem, key: pki.service.keyPem,
  });
  cloud = new CloudConsumer();
  await cloud.connect(service("snap-events"));
  viewerSide = await attachSnapshotViewer(cloud, service("snap-chunks"), { viewer, outDir, graceMs: 3000 });
});

test.after.always(async () => {
  await viewerSide?.close();
  await cloud?.close();
  await standin?.close();
});

/** Times every publish and its PUBACK, around the real transport. */
class TimedTransport implements MqttTransport {
  readonly log: Array<{ topic: string; bytes: number; publishedAt: number; ackedAt: number | undefined }> = [];
  constructor(readonly inner: MqttTransport) {}
  connect(handlers: MqttHandlers): void {
    this.inner.connect(handlers);
  }
  publish(topic: string, payload: Uint8Array, qos: 0 | 1): Promise<void> {
    const entry = { topic, bytes: payload.length, publishedAt: performance.now(), ackedAt: undefined as number | undefined };
    this.log.push(entry);
    return this.inner.publish(topic, payload, qos).then(() => { entry.ackedAt = performance.now(); });
  }
  subscribe(filter: string): Promise<void> {
    return this.inner.subscribe(filter);
  }
  close(): void {
    this.inner.close();
  }
}

async function until(predicate: () => boolean, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > end) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 5));
  }
}

let things = 0;
async function device(camera: Camera | undefined, options: { chunkBytes?: number; window?: number } = {}) {
  const thing = `snap-e2e-${++things}`;
  const creds = await issueThingCredentials(pkiDir, thing);
  const transport = new TimedTransport(new HostMqttTransport({
    host: "127.0.0.1", port: standin.port, servername: "localhost", clientId: thing, ca: pki.ca.certPem, cert: creds.certPem, key: creds.keyPem,
  }));
  const seed = new Uint8Array(32);
  hostRandom.fill(seed);
  const clock = createHostClock();
  const outcomes: Promise<SnapshotOutcome>[] = [];
  let snapshots: Snapshotter | undefined;
  const doorbell = new Doorbell({
    thing, signingSeed: seed, clock, random: hostRandom, store: new FileStore(fs.mkdtempSync(path.join(os.tmpdir(), "dw-snap-store-"))),
    transport, log: () => {}, noncePoolSize: 8,
    onRing: (ring) => { if (snapshots) outcomes.push(snapshots.onRing(ring)); },
  });
  if (camera) snapshots = attachCamera(doorbell, {
    camera, cipher: hostAesGcm, sha256: hostSha256, keys: new FootageKeys({ keyring: singleViewerKeyring(viewer), random: hostRandom }),
    random: hostRandom, clock, log: () => {}, chunkBytes: options.chunkBytes, window: options.window,
  });
  cloud.register(thing, doorbell.signer.publicKey);
  doorbell.start();
  await until(() => doorbell.link.online);
  await until(() => doorbell.signer.ready >= 4); // idle precomputation, as on a bell that has been up a while
  return { thing, doorbell, transport, outcomes, snapshots };
}

const ringOf = (thing: string, seq: number) => cloud.waitFor((e) => e.verdict.ok && e.verdict.event.thing === thing && e.verdict.event.seq === seq, 15_000);

test.serial("a ring, then its snapshot: ring acknowledged before the first chunk is published; the viewer saves the exact JPEG", async (t) => {
  const camera = new FolderCamera({ directory: SAMPLES, captureDelayMs: 30 });
  const expected = new Uint8Array(fs.readFileSync((await camera.files())[0]));
  const { thing, doorbell, transport, outcomes } = await device(camera, { chunkBytes: 2048 });
  const ring = doorbell.press();
  const ringEvent = await ringOf(thing, ring.seq);
  t.is(ringEvent.verdict.ok && ringEvent.verdict.event.type, "ring");
  const result = await viewerSide.waitFor((r) => r.thing === thing && r.ring === ring.seq, 15_000);
  t.true(result.ok, JSON.stringify(!result.ok && result.problems));
  if (!result.ok) return;
  t.deepEqual(result.jpeg, expected);
  t.deepEqual(new Uint8Array(fs.readFileSync(result.file!)), expected, "saved to disk byte for byte");
  t.true(result.chunks >= 5);

  const outcome = await outcomes[0];
  t.true(outcome.ok);
  const ringPub = transport.log.find((e) => e.topic.endsWith("/events"))!;
  const chunks = transport.log.filter((e) => e.topic.endsWith("/snapshots"));
  t.is(chunks.length, result.chunks);
  t.true(ringPub.publishedAt < chunks[0].publishedAt);
  t.true(ringPub.ackedAt! <= chunks[0].publishedAt, "the ring's PUBACK precedes the first chunk's publish");
  const firstChunkArrival = viewerSide.arrivals.find((a) => a.thing === thing)!;
  t.true(ringEvent.receivedAt < firstChunkArrival.at, "the cloud has the ring before the first chunk");
  // The signed snapshot event came after the last chunk and verified twice.
  const snapEvent = await cloud.waitFor((e) => e.verdict.ok && e.verdict.event.thing === thing && e.verdict.event.type === "snapshot");
  t.true(snapEvent.openssl);
  t.true(snapEvent.receivedAt >= result.lastChunkAt!);
  t.is(standin.stats.refusals.length, 0);
  doorbell.stop();
});

test.serial("a 300 KB frame in 64 KB chunks passes the broker's 128 KB limit and reassembles", async (t) => {
  const frame = padJpeg(sceneJpeg("courier-parcel"), 300 * 1024);
  const { thing, doorbell, transport } = await device({ capture: async () => frame }, { chunkBytes: 64 * 1024 });
  const ring = doorbell.press();
  const result = await viewerSide.waitFor((r) => r.thing === thing && r.ring === ring.seq, 15_000);
  t.true(result.ok, JSON.stringify(!result.ok && result.problems));
  t.deepEqual(result.ok && result.jpeg, frame);
  const chunks = transport.log.filter((e) => e.topic.endsWith("/snapshots"));
  t.is(chunks.length, 5);
  t.true(chunks.every((c) => c.bytes <= 131072 && c.ackedAt !== undefined), "every chunk acknowledged by the limit-enforcing broker");
  t.is(standin.stats.refusals.filter((r) => r.reason === "payload-too-large").length, 0);
  doorbell.stop();
});

test.serial("a second ring during a long snapshot overtakes it (waits behind one chunk, not the image)", async (t) => {
  const frame = padJpeg(sceneJpeg("visitor-night"), 300 * 1024);
  const { thing, doorbell, transport, outcomes } = await device({ capture: async () => frame }, { chunkBytes: 8 * 1024 });
  const first = doorbell.press();
  await until(() => transport.log.filter((e) => e.topic.endsWith("/snapshots")).length >= 3);
  const pressedAt = performance.now();
  const second = doorbell.press();
  const secondEvent = await ringOf(thing, second.seq);
  const result = await viewerSide.waitFor((r) => r.thing === thing && r.ring === first.seq, 20_000);
  t.true(result.ok);
  t.true(secondEvent.receivedAt < result.lastChunkAt!, "the second ring arrived while the first snapshot was still streaming");
  t.log(`second ring, pressed mid-snapshot: ${(secondEvent.receivedAt - pressedAt).toFixed(1)} ms press-to-event`);
  const skipped = await outcomes[1];
  t.is(!skipped.ok && skipped.reason, "busy");
  doorbell.stop();
});

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

test.serial("measure: press-to-event, press-to-last-chunk and throughput for a 100 KB frame on loopback", async (t) => {
  const frame = padJpeg(sceneJpeg("visitor-day"), 100 * 1024);
  const RUNS = 9;
  // Rings seconds apart on a real bell: let the nonce pool refill between presses so
  // both the ring and the snapshot event are signed on the fast (online) path.
  const idle = async (doorbell: Doorbell) => {
    await until(() => doorbell.signer.ready >= 2, 5_000);
    await new Promise((res) => setTimeout(res, 20));
  };
  const ms = (xs: number[]) => `${median(xs).toFixed(1)} ms`;
  t.log(`100 KB frame (${frame.length} bytes), ${RUNS} rings per configuration, medians:`);
  {
    const { thing, doorbell, transport } = await device(undefined);
    const acked: number[] = [];
    const verified: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      await idle(doorbell);
      const pressedAt = performance.now();
      const ring = doorbell.press();
      verified.push((await ringOf(thing, ring.seq)).receivedAt - pressedAt);
      await ring.acked;
      acked.push(transport.log.at(-1)!.ackedAt! - pressedAt);
    }
    t.log(`  no camera (baseline):   press→ring PUBACK ${ms(acked)}, press→ring verified at cloud ${ms(verified)}`);
    doorbell.stop();
  }
  for (const config of [
    { chunkBytes: 8 * 1024, window: 1 },
    { chunkBytes: 16 * 1024, window: 1 },
    { chunkBytes: 16 * 1024, window: 4 },
    { chunkBytes: 64 * 1024, window: 1 },
  ]) {
    const { thing, doorbell, transport } = await device({ capture: async () => frame }, config);
    const rows: Array<{ acked: number; verified: number; firstChunk: number; lastChunk: number; image: number; mbps: number }> = [];
    for (let i = 0; i < RUNS; i++) {
      await idle(doorbell);
      const before = transport.log.length;
      const pressedAt = performance.now();
      const ring = doorbell.press();
      const ev = await ringOf(thing, ring.seq);
      const r = await viewerSide.waitFor((x) => x.thing === thing && x.ring === ring.seq, 15_000);
      t.true(r.ok);
      if (!r.ok) return;
      const mine = transport.log.slice(before);
      const ringPub = mine.find((e) => e.topic.endsWith("/events"))!;
      const firstChunk = mine.find((e) => e.topic.endsWith("/snapshots"))!;
      t.true(ringPub.ackedAt! <= firstChunk.publishedAt, "ring PUBACK before the first chunk, every time");
      t.true(ev.receivedAt < r.firstChunkAt!, "ring at the cloud before the first chunk, every time");
      rows.push({
        acked: ringPub.ackedAt! - pressedAt,
        verified: ev.receivedAt - pressedAt,
        firstChunk: firstChunk.publishedAt - pressedAt,
        lastChunk: r.lastChunkAt! - pressedAt,
        image: r.completedAt - pressedAt,
        mbps: (frame.length * 8) / 1e6 / ((r.lastChunkAt! - firstChunk.publishedAt) / 1000),
      });
    }
    const col = (k: keyof (typeof rows)[0]) => rows.map((r) => r[k]);
    t.log(
      `  chunk ${String(config.chunkBytes / 1024).padStart(2)} KB, window ${config.window}: press→ring PUBACK ${ms(col("acked"))}, ring verified at cloud ${ms(col("verified"))}, ` +
      `first chunk published ${ms(col("firstChunk"))}, last chunk received ${ms(col("lastChunk"))}, image decrypted ${ms(col("image"))}; ` +
      `throughput ${median(col("mbps")).toFixed(1)} Mbit/s`,
    );
    t.true(median(col("verified")) < median(col("lastChunk")));
    doorbell.stop();
  }
});
