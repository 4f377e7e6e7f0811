/*
 * The snapshot pipeline's JS part on the real XS engine (tools/xs): chunk
 * framing, nonces, digest bookkeeping, key wrapping and the manifest event.
 *
 * The cipher and the digest are native on the device (Moddable crypt), so
 * here they are replaced by stand-ins that only allocate and copy what the
 * native calls would return; their own cost is measured separately and
 * subtracted. Reports XS meter units (deterministic; checked to repeat across
 * workers) and, where valgrind is installed, x86 instructions, which the
 * ESP32 time model in docs/camera.md uses.
 */
import test, { type ExecutionContext } from "ava";
import { SnapshotSealer, type Aead, type Sha256Factory } from "../modules/core/snapshot";
import { STANDINS, CHUNK_SIZES, FRAME, measureSnapshotCosts as measure, fitChunkCost as fit } from "../tools/bench/xs-snapshot";
import { startXsCore, type XsCore } from "../tools/xs/core";
import { countInstructions, valgrindAvailable } from "../tools/xs/callgrind";

async function xsFor(t: ExecutionContext, name: string): Promise<XsCore> {
  const xs = await startXsCore({ name });
  t.teardown(() => xs.close());
  return xs;
}



function frameOf(bytes: number): Uint8Array {
  const frame = new Uint8Array(bytes).map((_, i) => (i * 31 + (i >> 8)) & 255);
  frame[0] = 0xff;
  frame[1] = 0xd8;
  return frame;
}

test("the sealer runs on XS and frames chunks byte for byte as on Node", async (t) => {
  const xs = await xsFor(t, "xs-snap-equal");
  const args = { frame: frameOf(20_000), key: new Uint8Array(32).fill(7), id: Uint8Array.from({ length: 16 }, (_, i) => i * 11), chunkBytes: 4096 };
  const { value: onXs } = await xs.run<{ chunks: Uint8Array[]; digest: Uint8Array }>(`
    const { SnapshotSealer } = importNow("core/snapshot");
    const s = ${STANDINS};
    const sealer = new SnapshotSealer({ ...args, cipher: { seal: s.seal }, sha256: s.digest });
    const chunks = [];
    for (let c = sealer.next(); c; c = sealer.next()) chunks.push(c.payload);
    return { chunks, digest: sealer.digest() };`, args);
  const s = (0, eval)(STANDINS) as { seal: Aead["seal"]; digest: Sha256Factory };
  const sealer = new SnapshotSealer({ ...args, cipher: { seal: s.seal }, sha256: s.digest });
  const chunks: Uint8Array[] = [];
  for (let c = sealer.next(); c; c = sealer.next()) chunks.push(c.payload);
  t.is(chunks.length, 5);
  t.is(onXs.chunks.length, 5);
  for (let i = 0; i < 5; i++) t.deepEqual(onXs.chunks[i], chunks[i], `chunk ${i}`);
  t.deepEqual(onXs.digest, sealer.digest());
});

test("XS meter cost of the JS part: per chunk, and exactly one metered copy per byte; deterministic across workers", async (t) => {
  const first = await measure(await xsFor(t, "xs-snap-cost-1"));
  const second = await measure(await xsFor(t, "xs-snap-cost-2"));
  t.deepEqual(second, first, "the XS meter must repeat exactly");
  const js: Record<number, number> = {};
  for (const c of CHUNK_SIZES) js[c] = first.perFrame[c] - first.standinsOnly[c];
  const f = fit(js);
  const kb = FRAME / 1024;
  t.log(`XS meter units, ${kb} KB frame, native cipher and digest excluded (their stand-ins measured and subtracted):`);
  for (const c of CHUNK_SIZES) t.log(`  ${String(c / 1024).padStart(2)} KB chunks (${String(Math.ceil(FRAME / c)).padStart(3)}): JS part ${js[c]} units = ${(js[c] / kb).toFixed(0)} units/KB`);
  t.log(`  fit: ${f.perChunk.toFixed(0)} units per chunk (header, nonce, views, bookkeeping) + ${f.perByte.toFixed(3)} units per byte (worst residual ${(f.worstResidual * 100).toFixed(2)}%)`);
  t.log(`  XS meters a TypedArray copy at 2 units/byte (mxMeterSome(bytes * 2)); the JS part's only per-byte work is framing the sealed chunk: one copy.`);
  t.log(`  at 8 KB chunks: ${(f.perChunk / 8).toFixed(0)} units/KB of JS logic + ${(f.perByte * 1024).toFixed(0)} units/KB charged for that copy`);
  t.log(`  per snapshot: wrap content key, 1 recipient ${(first.wrap1 / 1e6).toFixed(2)} M; 10 recipients ${(first.wrap10 / 1e6).toFixed(2)} M; manifest event (canonical + online sign) ${(first.manifestEvent / 1e6).toFixed(2)} M`);
  t.true(f.worstResidual < 0.01, "cost is linear in chunks and bytes");
  t.true(Math.abs(f.perByte - 2) < 0.05, `each byte is copied exactly once in JS (meter ${f.perByte.toFixed(3)}/byte; 2 per copy)`);
  t.true(f.perChunk > 50 && f.perChunk < 5_000, `per-chunk framing ${f.perChunk}`);
  t.true(first.wrap10 > first.wrap1 * 5, "wrapping scales with recipients");
});

(valgrindAvailable() ? test : test.skip)("x86 instructions of the JS part per chunk (callgrind)", async (t) => {
  const setup = `
    state.s = ${STANDINS};
    state.SnapshotSealer = importNow("core/snapshot").SnapshotSealer;
    state.frame = new Uint8Array(${FRAME}); state.frame[0] = 0xff; state.frame[1] = 0xd8;
    state.key = new Uint8Array(32).fill(1); state.id = new Uint8Array(16).fill(2);`;
  const sealerAt = (chunkBytes: number) => countInstructions({
    setup,
    operation: `const sealer = new state.SnapshotSealer({ frame: state.frame, key: state.key, id: state.id, chunkBytes: ${chunkBytes}, cipher: state.s.cheapSeal, sha256: state.s.cheapDigest });
      while (sealer.next()); sealer.digest();`,
  });
  const aloneAt = (chunkBytes: number) => countInstructions({
    setup,
    operation: `const d = state.s.cheapDigest(); const nonce = new Uint8Array(12), aad = new Uint8Array(24);
      for (let o = 0; o < state.frame.length; o += ${chunkBytes}) d.update(state.s.cheapSeal.seal(state.key, nonce, state.frame.subarray(o, Math.min(o + ${chunkBytes}, state.frame.length)), aad));
      d.digest();`,
  });
  const js: Record<number, number> = {};
  for (const c of [CHUNK_SIZES[0], CHUNK_SIZES[2]]) js[c] = (await sealerAt(c)).perOperation - (await aloneAt(c)).perOperation;
  const chunks = (c: number) => Math.ceil(FRAME / c);
  const perChunk = (js[CHUNK_SIZES[0]] - js[CHUNK_SIZES[2]]) / (chunks(CHUNK_SIZES[0]) - chunks(CHUNK_SIZES[2]));
  const perByte = (js[CHUNK_SIZES[2]] - perChunk * chunks(CHUNK_SIZES[2])) / FRAME;
  t.log(`x86 instructions on xsnap's XS: JS part ${Math.round(perChunk)} per chunk + ${perByte.toFixed(1)} per byte`);
  t.log(`  the per-byte part is Uint8Array.prototype.set, which this XS (13.x) copies element by element; the SDK's XS (17.x, on the device) memcpy()s same-type arrays`);
  const perSnapshot8k = perChunk * chunks(8192);
  t.log(`  ESP32-S3 model (1 instr/cycle, 240 MHz, lower bound): framing 13 chunks of a 100 KB frame = ${(perSnapshot8k / 1e6).toFixed(2)} M instructions = ${((perSnapshot8k / 240e6) * 1000).toFixed(2)} ms, plus one 100 KB memcpy`);
  t.true(perChunk > 1_000, "a chunk's framing is thousands of instructions, not noise");
  t.true(perByte > 0);
});
