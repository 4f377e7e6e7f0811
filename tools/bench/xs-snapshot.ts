/*
 * The snapshot pipeline's JS part on XS, for the tests and for `npm run bench`.
 *
 * The cipher and the digest are native on the device (Moddable crypt), so here
 * they are replaced by stand-ins that only allocate and copy what the native
 * calls would return; their own cost is measured separately and subtracted.
 */
import type { XsCore } from "../xs/core";

/**
 * JS source of the stand-ins, evaluated on both engines. `seal` depends on
 * the key, nonce, plaintext and AAD so any framing difference shows in the
 * bytes; `cheapSeal`/`cheapDigest` do only what the native calls cost JS
 * (one allocation, one copy) and are what the cost measurements use.
 */
export const STANDINS = String.raw`({
  seal(key, nonce, plaintext, aad) {
    const out = new Uint8Array(plaintext.length + 16);
    for (let i = 0; i < plaintext.length; i++) out[i] = plaintext[i] ^ key[i & 31] ^ nonce[i % 12];
    for (let i = 0; i < aad.length; i++) out[plaintext.length + (i & 15)] ^= aad[i];
    return out;
  },
  digest() {
    let h = 0x811c9dc5, n = 0;
    return {
      update(d) { for (let i = 0; i < d.length; i += 97) h = Math.imul(h ^ d[i], 16777619) >>> 0; n += d.length; },
      digest() { const out = new Uint8Array(32); for (let i = 0; i < 32; i++) out[i] = (h >>> ((i & 3) * 8)) ^ (n >>> (i & 7)); return out; },
    };
  },
  cheapSeal: { seal(key, nonce, plaintext, aad) { const out = new Uint8Array(plaintext.length + 16); out.set(plaintext); return out; } },
  cheapDigest() { return { update(d) {}, digest() { return new Uint8Array(32); } }; },
})`;

export interface Costs {
  perFrame: Record<number, number>;
  standinsOnly: Record<number, number>;
  wrap1: number;
  wrap10: number;
  manifestEvent: number;
}

export const FRAME = 100 * 1024;
export const CHUNK_SIZES = [1024, 8192, 65536];

export async function measureSnapshotCosts(xs: XsCore): Promise<Costs> {
  await xs.run(`
    const { SnapshotSealer, manifestFields } = importNow("core/snapshot");
    const { FootageKeys } = importNow("core/footage-keys");
    const { Ed25519Signer } = importNow("core/signer");
    const { sealEvent } = importNow("core/events");
    const { SeededRandom } = importNow("harness/deterministic");
    state.s = ${STANDINS};
    state.SnapshotSealer = SnapshotSealer;
    state.frame = new Uint8Array(args.size); state.frame[0] = 0xff; state.frame[1] = 0xd8;
    state.key = new Uint8Array(32).fill(1);
    state.id = new Uint8Array(16).fill(2);
    state.random = new SeededRandom(99);
    const ring = (n) => ({ generation: 1, footageRecipients: () => Array.from({ length: n }, (_, i) => ({ user: "user-" + i, key: new Uint8Array(32).fill(i + 1) })) });
    state.keys1 = new FootageKeys({ keyring: ring(1), random: state.random });
    state.keys10 = new FootageKeys({ keyring: ring(10), random: state.random });
    state.signer = new Ed25519Signer(new Uint8Array(32).fill(5), { random: state.random, boot: 1 });
    state.signer.precompute();
    state.manifestFields = manifestFields;
    state.sealEvent = sealEvent;`, { size: FRAME });
  const perFrame: Record<number, number> = {};
  const standinsOnly: Record<number, number> = {};
  for (const chunkBytes of CHUNK_SIZES) {
    const sealed = await xs.run<number>(`
      const sealer = new state.SnapshotSealer({ frame: state.frame, key: state.key, id: state.id, chunkBytes: args, cipher: state.s.cheapSeal, sha256: state.s.cheapDigest });
      let n = 0;
      for (let c = sealer.next(); c; c = sealer.next()) n++;
      sealer.digest();
      return n;`, chunkBytes);
    // The stand-ins alone, called exactly as the sealer calls them.
    const alone = await xs.run<number>(`
      const d = state.s.cheapDigest();
      const nonce = new Uint8Array(12), aad = new Uint8Array(24);
      let n = 0;
      for (let o = 0; o < state.frame.length; o += args) {
        const out = state.s.cheapSeal.seal(state.key, nonce, state.frame.subarray(o, Math.min(o + args, state.frame.length)), aad);
        d.update(out);
        n++;
      }
      d.digest();
      return n;`, chunkBytes);
    if (sealed.value !== alone.value || sealed.value !== Math.ceil(FRAME / chunkBytes)) throw new Error("chunk counts disagree");
    perFrame[chunkBytes] = sealed.meter.body;
    standinsOnly[chunkBytes] = alone.meter.body;
  }
  const wrap1 = await xs.run(`return state.keys1.wrapContentKey(state.key, state.id).keys.length;`);
  const wrap10 = await xs.run(`return state.keys10.wrapContentKey(state.key, state.id).keys.length;`);
  const manifest = await xs.run(`
    const w = state.keys10.wrapContentKey(state.key, state.id);
    const before = state.signer.stats.online;
    const payload = state.sealEvent({ ...state.manifestFields({ ring: 41, id: state.id, size: ${FRAME}, chunks: 13, chunkBytes: 8192, digest: new Uint8Array(32), wrapping: w }),
      v: 1, type: "snapshot", thing: "porch-1", boot: 1, seq: 42, time: null }, state.signer);
    if (state.signer.stats.online !== before + 1) throw new Error("expected a fast-path signature");
    return payload.length;`);
  // Subtract the 10-recipient wrap inside the manifest run: the event itself is what is left.
  if (wrap1.value !== 1 || wrap10.value !== 10) throw new Error("wrap counts");
  return { perFrame, standinsOnly, wrap1: wrap1.meter.body, wrap10: wrap10.meter.body, manifestEvent: manifest.meter.body - wrap10.meter.body };
}

/** Least-squares fit of cost = perChunk·chunks + perByte·bytes over the chunk sizes measured (bytes fixed, so two points suffice; three check it). */
export function fitChunkCost(costs: Record<number, number>): { perChunk: number; perByte: number; worstResidual: number } {
  const [small, large] = [CHUNK_SIZES[0], CHUNK_SIZES[CHUNK_SIZES.length - 1]];
  const n = (c: number) => Math.ceil(FRAME / c);
  const perChunk = (costs[small] - costs[large]) / (n(small) - n(large));
  const perByte = (costs[large] - perChunk * n(large)) / FRAME;
  const worstResidual = Math.max(...CHUNK_SIZES.map((c) => Math.abs(costs[c] - (perChunk * n(c) + perByte * FRAME)) / costs[c]));
  return { perChunk, perByte, worstResidual };
}
