/*
 * Snapshot pipeline and reference consumer, without a broker: the wire format
 * (checked against an independent decoder written from docs/camera.md), and
 * the assembler facing lost, duplicated, reordered, conflicting, tampered and
 * mislabelled chunks, wrong digests, wrong keys and oversize images. Then the
 * Snapshotter on a real Doorbell over a transport whose PUBACKs the test
 * releases by hand, to show that no chunk leaves before the ring is
 * acknowledged and that at most `window` chunks are ever outstanding.
 */
import test from "ava";
import crypto from "node:crypto";
import { createRequire } from "node:module";
import fc from "fast-check";
import jpeg from "jpeg-js";
import {
  assertChunkBytes, encodeChunkHeader, manifestFields, parseChunk, parseSnapshotManifest, SnapshotSealer, Snapshotter,
  AWS_MESSAGE_LIMIT, CHUNK_HEADER_BYTES, MAX_CHUNK_BYTES, TAG_BYTES, type SnapshotOutcome,
} from "../modules/core/snapshot";
import { FootageKeys } from "../modules/core/footage-keys";
import { Doorbell } from "../modules/core/doorbell";
import { EVENT_VERSION, type DoorEvent } from "../modules/core/events";
import { toBase64Url, fromBase64Url } from "../modules/core/bytes";
import type { MqttHandlers, MqttTransport } from "../modules/core/ports";
import { hostAesGcm, hostSha256 } from "../modules/host/cipher";
import { SnapshotAssembler, singleViewerKeyring, type SnapshotResult, type Viewer } from "../tools/snapshot-consumer";
import { padJpeg, sceneJpeg } from "../tools/make-sample-jpegs";
import { MemoryStore } from "../tools/xs/deterministic";
import { ManualClock } from "./helpers/manual-clock";
import { seededRandom } from "./helpers/crypto";

const THING = "porch-unit";
const owner: Viewer = { user: "owner", footageKey: new Uint8Array(32).fill(0x11) };
const guest: Viewer = { user: "guest", footageKey: new Uint8Array(32).fill(0x22) };
const sample = sceneJpeg("visitor-day");

interface Made {
  chunks: Uint8Array[];
  event: DoorEvent;
  frame: Uint8Array;
  id: Uint8Array;
  digest: Uint8Array;
}

/** Seal a frame exactly as the device does, and build the snapshot event it would sign. */
function makeSnapshot(frame: Uint8Array, options: { chunkBytes?: number; seed?: string; seq?: number; ring?: number; viewers?: Viewer[] } = {}): Made {
  const random = seededRandom(options.seed ?? "snap");
  const id = new Uint8Array(16);
  random.fill(id);
  const key = new Uint8Array(32);
  random.fill(key);
  const viewers = options.viewers ?? [owner];
  const keys = new FootageKeys({
    keyring: { generation: 3, footageRecipients: () => viewers.map((v) => ({ user: v.user, key: v.footageKey.slice() })) },
    random,
  });
  const wrapping = keys.wrapContentKey(key, id);
  const sealer = new SnapshotSealer({ frame, key, id, chunkBytes: options.chunkBytes ?? 1024, cipher: hostAesGcm, sha256: hostSha256 });
  const chunks: Uint8Array[] = [];
  for (let c = sealer.next(); c; c = sealer.next()) chunks.push(c.payload);
  const digest = sealer.digest();
  const seq = options.seq ?? 8;
  const event: DoorEvent = {
    ...manifestFields({ ring: options.ring ?? seq - 1, id, size: frame.length, chunks: chunks.length, chunkBytes: sealer.chunkBytes, digest, wrapping }),
    v: EVENT_VERSION, type: "snapshot", thing: THING, boot: 1, seq, time: null,
  };
  return { chunks, event, frame, id, digest };
}

/** An assembler on a hand-driven clock that collects its results. */
function assembler(viewer: Viewer = owner, extra: { maxSnapshotBytes?: number } = {}) {
  let now = 0;
  const results: SnapshotResult[] = [];
  const a = new SnapshotAssembler({ viewer, now: () => now, graceMs: 1000, manifestTimeoutMs: 5000, onResult: (r) => results.push(r), ...extra });
  return { a, results, advance: (ms: number) => { now += ms; a.tick(); } };
}

function codes(r: SnapshotResult): string[] {
  return r.ok ? [] : r.problems.map((p) => p.code).sort();
}

test("wire format: an independent decoder (node:crypto, written from docs/camera.md) opens every chunk", (t) => {
  const m = makeSnapshot(sample, { chunkBytes: 1000 });
  t.is(m.chunks.length, Math.ceil(sample.length / 1000));
  const parts: Buffer[] = [];
  const hash = crypto.createHash("sha256");
  // The content key as a viewer gets it: secretbox(key ‖ id) under the footage key.
  const wrap = (m.event.wrap as { keys: Array<{ k: string; n: string; user: string }> }).keys[0];
  t.is(wrap.user, "owner");
  const nacl = createRequire(import.meta.url)("tweetnacl") as typeof import("tweetnacl");
  const opened = nacl.secretbox.open(fromBase64Url(wrap.k), fromBase64Url(wrap.n), owner.footageKey);
  t.truthy(opened);
  const key = opened!.subarray(0, 32);
  t.deepEqual(opened!.subarray(32), m.id, "the wrapped key is bound to the snapshot id");
  m.chunks.forEach((payload, index) => {
    hash.update(payload);
    const b = Buffer.from(payload);
    t.is(b.subarray(0, 4).toString("latin1"), "DWS1");
    t.deepEqual(new Uint8Array(b.subarray(4, 20)), m.id);
    t.is(b.readUInt16BE(20), index);
    t.is(b.readUInt16BE(22), m.chunks.length);
    const nonce = Buffer.concat([Buffer.from(m.id.subarray(0, 8)), Buffer.from([0, 0, index >> 8, index & 255])]);
    const d = crypto.createDecipheriv("aes-256-gcm", key, nonce);
    d.setAAD(b.subarray(0, 24));
    d.setAuthTag(b.subarray(b.length - 16));
    parts.push(Buffer.concat([d.update(b.subarray(24, b.length - 16)), d.final()]));
  });
  t.deepEqual(new Uint8Array(Buffer.concat(parts)), sample);
  t.is(m.event.digest, toBase64Url(new Uint8Array(hash.digest())), "digest = SHA-256 over the chunk payloads in index order");
  const decoded = jpeg.decode(Buffer.concat(parts), { useTArray: true });
  t.is(decoded.width, 320);
});

test("all chunks in order, manifest last: one good image, bytes exact", (t) => {
  const m = makeSnapshot(sample);
  const { a, results } = assembler();
  for (const c of m.chunks) a.addChunk(THING, c);
  t.is(results.length, 0, "nothing is reported before the signed manifest");
  a.addManifest(THING, m.event);
  t.is(results.length, 1);
  const r = results[0];
  t.true(r.ok, JSON.stringify(codes(r)));
  if (!r.ok) return;
  t.deepEqual(r.jpeg, sample);
  t.is(r.ring, 7);
  t.is(r.duplicates, 0);
  t.is(r.outOfOrder, 0);
  t.is(a.pending, 0);
});

test("reordered chunks and QoS 1 duplicates still give the exact image, and are counted", (t) => {
  const m = makeSnapshot(sample, { chunkBytes: 700 });
  const { a, results } = assembler();
  a.addManifest(THING, m.event); // the manifest may also come first
  const order = m.chunks.map((_, i) => i).reverse();
  order.splice(3, 0, order[0], order[1]); // two redeliveries
  for (const i of order) a.addChunk(THING, m.chunks[i]);
  t.is(results.length, 1);
  const r = results[0];
  t.true(r.ok, JSON.stringify(codes(r)));
  if (!r.ok) return;
  t.deepEqual(r.jpeg, sample);
  t.is(r.duplicates, 2);
  t.is(r.outOfOrder, m.chunks.length - 1);
});

test("a lost chunk is reported as missing once the grace period ends, never as an image", (t) => {
  const m = makeSnapshot(sample);
  const { a, results, advance } = assembler();
  m.chunks.forEach((c, i) => { if (i !== 4) a.addChunk(THING, c); });
  a.addManifest(THING, m.event);
  t.is(results.length, 0, "waits for a late chunk first");
  advance(999);
  t.is(results.length, 0);
  advance(1);
  t.is(results.length, 1);
  t.false(results[0].ok);
  t.deepEqual(codes(results[0]), ["missing-chunks"]);
  t.deepEqual(!results[0].ok && results[0].problems[0].indexes, [4]);
});

test("a late chunk inside the grace period completes the image", (t) => {
  const m = makeSnapshot(sample);
  const { a, results, advance } = assembler();
  m.chunks.forEach((c, i) => { if (i !== 0) a.addChunk(THING, c); });
  a.addManifest(THING, m.event);
  advance(500);
  a.addChunk(THING, m.chunks[0]);
  t.is(results.length, 1);
  t.true(results[0].ok);
  advance(5000);
  t.is(results.length, 1, "no second result");
});

test("a duplicate with different bytes is a conflict, an error even though a good copy exists", (t) => {
  const m = makeSnapshot(sample);
  const { a, results } = assembler();
  const forged = m.chunks[2].slice();
  forged[forged.length - 20] ^= 1;
  for (const c of m.chunks) a.addChunk(THING, c);
  a.addChunk(THING, forged);
  a.addManifest(THING, m.event);
  t.is(results.length, 1);
  t.false(results[0].ok);
  t.deepEqual(codes(results[0]), ["conflicting-duplicate"]);
  t.deepEqual(!results[0].ok && results[0].problems[0].indexes, [2]);
});

test("a tampered chunk: digest mismatch, and AES-GCM names the chunk", (t) => {
  const m = makeSnapshot(sample);
  const { a, results } = assembler();
  const chunks = m.chunks.map((c) => c.slice());
  chunks[5][CHUNK_HEADER_BYTES + 10] ^= 0x80;
  for (const c of chunks) a.addChunk(THING, c);
  a.addManifest(THING, m.event);
  t.is(results.length, 1);
  t.false(results[0].ok);
  t.deepEqual(codes(results[0]), ["chunk-auth-failed", "digest-mismatch"]);
  t.deepEqual(!results[0].ok && results[0].problems.find((p) => p.code === "chunk-auth-failed")!.indexes, [5]);
});

test("chunks swapped between indexes, or moved in from another snapshot, fail authentication", (t) => {
  const m = makeSnapshot(sample);
  const other = makeSnapshot(sample, { seed: "other" });
  const relabel = (payload: Uint8Array, id: Uint8Array, index: number, total: number) => {
    const out = payload.slice();
    encodeChunkHeader(id, index, total, out.subarray(0, CHUNK_HEADER_BYTES));
    return out;
  };
  // Same length chunks 1 and 2 with their headers exchanged.
  const swapped = m.chunks.slice();
  swapped[1] = relabel(m.chunks[2], m.id, 1, m.chunks.length);
  swapped[2] = relabel(m.chunks[1], m.id, 2, m.chunks.length);
  const one = assembler();
  for (const c of swapped) one.a.addChunk(THING, c);
  one.a.addManifest(THING, m.event);
  t.deepEqual(codes(one.results[0]), ["chunk-auth-failed", "digest-mismatch"]);
  t.deepEqual(!one.results[0].ok && one.results[0].problems.find((p) => p.code === "chunk-auth-failed")!.indexes, [1, 2]);

  const moved = m.chunks.slice();
  moved[3] = relabel(other.chunks[3], m.id, 3, m.chunks.length);
  const two = assembler();
  for (const c of moved) two.a.addChunk(THING, c);
  two.a.addManifest(THING, m.event);
  t.deepEqual(codes(two.results[0]), ["chunk-auth-failed", "digest-mismatch"]);
});

test("a signed digest that does not match the chunks is an error even when every chunk decrypts", (t) => {
  const m = makeSnapshot(sample);
  const wrong = crypto.createHash("sha256").update("not these chunks").digest();
  const { a, results } = assembler();
  for (const c of m.chunks) a.addChunk(THING, c);
  a.addManifest(THING, { ...m.event, digest: toBase64Url(new Uint8Array(wrong)) });
  t.is(results.length, 1);
  t.deepEqual(codes(results[0]), ["digest-mismatch"]);
});

test("a viewer the device did not wrap the key for, or a wrong key, gets no image", (t) => {
  const m = makeSnapshot(sample, { viewers: [owner] });
  const g = assembler(guest);
  for (const c of m.chunks) g.a.addChunk(THING, c);
  g.a.addManifest(THING, m.event);
  t.deepEqual(codes(g.results[0]), ["not-a-recipient"]);

  const impostor = assembler({ user: "owner", footageKey: new Uint8Array(32).fill(0x33) });
  for (const c of m.chunks) impostor.a.addChunk(THING, c);
  impostor.a.addManifest(THING, m.event);
  t.deepEqual(codes(impostor.results[0]), ["not-a-recipient"]);

  const both = makeSnapshot(sample, { viewers: [owner, guest] });
  const g2 = assembler(guest);
  for (const c of both.chunks) g2.a.addChunk(THING, c);
  g2.a.addManifest(THING, both.event);
  t.true(g2.results[0].ok);
});

test("chunks whose signed manifest never comes expire as an error; junk payloads are counted and dropped", (t) => {
  const m = makeSnapshot(sample);
  const { a, results, advance } = assembler();
  for (const c of m.chunks) a.addChunk(THING, c);
  a.addChunk(THING, new Uint8Array([1, 2, 3]));
  t.is(a.stats.malformed, 1);
  advance(4999);
  t.is(results.length, 0);
  advance(1);
  t.deepEqual(codes(results[0]), ["no-manifest"]);
  // A late redelivery does not resurrect it.
  a.addChunk(THING, m.chunks[0]);
  t.is(a.pending, 0);
  t.is(a.stats.late, 1);
});

test("a manifest with a wrong chunk count or extra members is refused", (t) => {
  const m = makeSnapshot(sample);
  t.throws(() => parseSnapshotManifest({ ...m.event, chunks: (m.event.chunks as number) + 1 }), { message: /chunks does not match/ });
  t.throws(() => parseSnapshotManifest({ ...m.event, extra: 1 }), { message: /unexpected members/ });
  t.throws(() => parseSnapshotManifest({ ...m.event, ring: m.event.seq }), { message: /earlier sequence/ });
  t.throws(() => parseSnapshotManifest({ ...m.event, alg: "A128GCM" }), { message: /algorithm/ });
  const { a, results } = assembler();
  a.addManifest(THING, { ...m.event, size: 1 });
  t.deepEqual(codes(results[0]), ["bad-manifest"]);
});

test("a 300 KB image in 64 KB chunks: every MQTT message stays under AWS's 128 KB, and it reassembles", (t) => {
  const big = padJpeg(sample, 300 * 1024);
  t.is(big.length, 307200);
  t.is(jpeg.decode(big, { useTArray: true }).width, 320, "padding keeps it a valid JPEG");
  const m = makeSnapshot(big, { chunkBytes: MAX_CHUNK_BYTES });
  t.is(m.chunks.length, 5);
  const topic = `doorward/${THING}/snapshots`;
  for (const c of m.chunks) t.true(c.length + topic.length + 9 <= AWS_MESSAGE_LIMIT, `${c.length} bytes`);
  t.is(m.chunks[0].length, CHUNK_HEADER_BYTES + MAX_CHUNK_BYTES + TAG_BYTES);
  const { a, results } = assembler();
  for (const c of [...m.chunks].reverse()) a.addChunk(THING, c);
  a.addManifest(THING, m.event);
  t.true(results[0].ok);
  t.deepEqual(results[0].ok && results[0].jpeg, big);
  // A chunk size that could not fit is refused when configured, not at the broker.
  t.throws(() => assertChunkBytes(128 * 1024, topic), { message: /chunkBytes/ });
  t.throws(() => assertChunkBytes(MAX_CHUNK_BYTES + 1, topic));
  t.is(assertChunkBytes(MAX_CHUNK_BYTES, topic), MAX_CHUNK_BYTES);
});

test("the assembler bounds memory: a snapshot over maxSnapshotBytes is dropped", (t) => {
  const m = makeSnapshot(padJpeg(sample, 40_000), { chunkBytes: 4096 });
  const { a, results } = assembler(owner, { maxSnapshotBytes: 20_000 });
  for (const c of m.chunks) a.addChunk(THING, c);
  t.deepEqual(codes(results[0]), ["too-large"]);
  t.is(a.pending, 0);
});

test("property: any arrival order with any redeliveries gives the exact image; any loss never does", (t) => {
  const m = makeSnapshot(padJpeg(sample, 12_345), { chunkBytes: 1024 });
  const n = m.chunks.length;
  fc.assert(
    fc.property(
      fc.array(fc.nat(n - 1), { minLength: n, maxLength: 3 * n }),
      fc.array(fc.nat(n - 1), { maxLength: 3 }),
      fc.boolean(),
      (extra, dropped, manifestFirst) => {
        // Every index at least once unless dropped, in an arbitrary order with repeats.
        const drop = new Set(dropped);
        const order = [...m.chunks.keys(), ...extra].filter((i) => !drop.has(i));
        order.sort((x, y) => ((x * 7919 + extra.length) % 13) - ((y * 7919 + extra.length) % 13));
        const { a, results, advance } = assembler();
        if (manifestFirst) a.addManifest(THING, m.event);
        for (const i of order) a.addChunk(THING, m.chunks[i]);
        if (!manifestFirst) a.addManifest(THING, m.event);
        advance(2000);
        if (results.length !== 1) return false;
        const r = results[0];
        if (drop.size === 0) return r.ok && Buffer.from(r.jpeg).equals(Buffer.from(m.frame));
        return !r.ok && codes(r).includes("missing-chunks");
      },
    ),
    { numRuns: 150, seed: 4242 },
  );
  t.pass();
});

// ---- the pipeline on a Doorbell, PUBACKs released by hand ----

class HandTransport implements MqttTransport {
  published: Array<{ topic: string; payload: Uint8Array; ack: () => void; acked: boolean }> = [];
  #handlers: MqttHandlers | undefined;
  connect(handlers: MqttHandlers): void {
    this.#handlers = handlers;
    handlers.onConnect();
  }
  publish(topic: string, payload: Uint8Array): Promise<void> {
    return new Promise((resolve) => {
      const entry = { topic, payload, acked: false, ack: () => { entry.acked = true; resolve(); } };
      this.published.push(entry);
    });
  }
  subscribe(): Promise<void> {
    return Promise.resolve();
  }
  close(): void {
    this.#handlers = undefined;
  }
  unacked() {
    return this.published.filter((p) => !p.acked);
  }
}

const settle = async () => { for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r)); };

function rig(options: { window?: number; chunkBytes?: number; frame?: Uint8Array; failCamera?: boolean } = {}) {
  const clock = new ManualClock();
  const transport = new HandTransport();
  const random = seededRandom("rig");
  const logs: string[] = [];
  const log = (level: string, message: string, fields?: object) => logs.push(`${level} ${message} ${JSON.stringify(fields ?? {})}`);
  let camera: Snapshotter | undefined;
  const rings: Promise<SnapshotOutcome>[] = [];
  const doorbell = new Doorbell({
    thing: THING, signingSeed: new Uint8Array(32).fill(9), clock, random, store: new MemoryStore(), transport, log,
    onRing: (ring) => { if (camera) rings.push(camera.onRing(ring)); },
  });
  const frame = options.frame ?? padJpeg(sample, 20_000);
  camera = new Snapshotter({
    host: doorbell,
    camera: { capture: () => (options.failCamera ? Promise.reject(new Error("sensor timeout")) : Promise.resolve(frame)) },
    cipher: hostAesGcm, sha256: hostSha256,
    keys: new FootageKeys({ keyring: singleViewerKeyring(owner), random }),
    random, clock, log, chunkBytes: options.chunkBytes ?? 4096, window: options.window,
  });
  doorbell.start();
  return { clock, transport, doorbell, camera, rings, logs, frame };
}

test("no chunk is published before the ring's PUBACK; then one chunk at a time (window 1)", async (t) => {
  const { transport, doorbell, rings, frame, camera } = rig();
  doorbell.press();
  await settle();
  t.is(transport.published.length, 1, "only the ring is out");
  t.true(transport.published[0].topic.endsWith("/events"));
  transport.published[0].ack();
  await settle();
  const expected = Math.ceil(frame.length / 4096);
  let maxUnacked = 0;
  for (let i = 0; i < expected; i++) {
    const open = transport.unacked();
    maxUnacked = Math.max(maxUnacked, open.length);
    t.is(open.length, 1);
    t.true(open[0].topic.endsWith("/snapshots"));
    t.is(parseChunk(open[0].payload).index, i);
    open[0].ack();
    await settle();
  }
  t.is(maxUnacked, 1, "never more than one chunk held for retransmission");
  const last = transport.unacked();
  t.is(last.length, 1);
  t.true(last[0].topic.endsWith("/events"), "the signed snapshot event follows the last chunk's PUBACK");
  last[0].ack();
  const outcome = await rings[0];
  t.true(outcome.ok, JSON.stringify(outcome));
  t.is(camera.stats.published, 1);

  // A consumer given exactly what went out gets the frame back.
  const { a, results } = assembler();
  const { openEnvelope } = await import("../modules/core/events");
  for (const p of transport.published) {
    if (p.topic.endsWith("/snapshots")) a.addChunk(THING, p.payload);
    else if (openEnvelope(p.payload).event.type === "snapshot") a.addManifest(THING, openEnvelope(p.payload).event);
  }
  t.true(results[0]?.ok);
  t.deepEqual(results[0].ok && results[0].jpeg, frame);
  t.is(results[0].ring, outcome.ok ? outcome.ring : -1);
});

test("a wider window keeps at most `window` chunks outstanding; a second ring waits behind at most that many", async (t) => {
  const { transport, doorbell, rings } = rig({ window: 3 });
  doorbell.press();
  await settle();
  transport.published[0].ack();
  await settle();
  t.is(transport.unacked().length, 3);
  const before = transport.published.length;
  const second = doorbell.press();
  await settle();
  t.is(transport.published.length, before + 1, "the second ring goes straight out");
  t.is(transport.published.at(-1)!.payload, second.payload);
  t.true((await rings[1]).ok === false, "a ring during a snapshot does not start a second one");
  t.is(((await rings[1]) as { reason: string }).reason, "busy");
  for (let guard = 0; guard < 50 && transport.unacked().length > 0; guard++) {
    for (const p of transport.unacked()) p.ack();
    await settle();
    t.true(transport.unacked().length <= 3 + 1);
  }
  t.true((await rings[0]).ok);
});

test("a ring that is never acknowledged: the snapshot is dropped, no chunk ever sent", async (t) => {
  const { transport, doorbell, rings, clock } = rig();
  doorbell.press();
  await settle();
  clock.advance(30_000);
  const outcome = await rings[0];
  t.false(outcome.ok);
  t.is(!outcome.ok && outcome.reason, "ring-not-acked");
  t.is(transport.published.filter((p) => p.topic.endsWith("/snapshots")).length, 0);
});

test("camera failures and non-JPEG frames are reported, and the ring is unaffected", async (t) => {
  const failing = rig({ failCamera: true });
  failing.doorbell.press();
  const o1 = await failing.rings[0];
  t.is(!o1.ok && o1.reason, "camera-failed");
  t.is(failing.transport.published.length, 1);
  t.true(failing.transport.published[0].topic.endsWith("/events"));
  t.false(failing.camera.busy);

  const png = rig({ frame: new Uint8Array([0x89, 0x50, 0x4e, 0x47, 1, 2, 3]) });
  png.doorbell.press();
  png.transport.published[0].ack();
  const o2 = await png.rings[0];
  t.is(!o2.ok && o2.reason, "bad-frame");
});
