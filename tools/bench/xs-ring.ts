/*
 * What the ring path costs on the real XS engine: meter units (deterministic,
 * from xsnap) and x86 instructions (callgrind, when valgrind is installed),
 * with the ESP32-S3 model of the SDK check notes on XS crypto costs beside them.
 *
 * The doorbell runs unchanged inside XS with in-XS stand-ins for its ports: a
 * manual clock, the harness's seeded Random and RAM store, and a transport
 * that acknowledges every publish at once, so only the device's own work is
 * counted, not the network.
 */
import { startXsCore, type XsCore } from "../xs/core";
import { countInstructions, valgrindAvailable } from "../xs/callgrind";
import { intOption, runAsEntry } from "../lib/cli";

/** ESP32-S3 at 240 MHz, one Xtensa instruction per x86 instruction per cycle: a lower bound. */
export const ESP32_HZ = 240e6;
export const esp32Ms = (instructions: number) => (instructions / ESP32_HZ) * 1000;

/** Run-body prelude: builds a Doorbell inside XS. `args.storedKey` chooses whether boot derives the public key. */
export const DOORBELL_SETUP = `
  const { Doorbell } = importNow("core/doorbell");
  const { SeededRandom, MemoryStore } = importNow("harness/deterministic");
  const nacl = importNow("tweetnacl").default;
  state.timers = new Set();
  state.clock = {
    now: 0,
    monotonic() { return this.now; },
    wallTime() { return 1790000000000 + this.now; },
    schedule(fn, ms) { const t = { fn, at: this.now + ms }; state.timers.add(t); return () => state.timers.delete(t); },
  };
  state.transport = {
    connect(h) { state.handlers = h; h.onConnect(); },
    publish() { state.published = (state.published || 0) + 1; return Promise.resolve(); },
    subscribe() { return Promise.resolve(); },
    close() {},
  };
  state.seed = new Uint8Array(32).fill(5);
  state.nacl = nacl;
  state.publicKey = nacl.sign.keyPair.fromSeed(state.seed).publicKey;
  state.store = new MemoryStore();
  state.make = (poolSize, storedKey = true) => new Doorbell({
    thing: "bench-porch", signingSeed: state.seed, signingPublicKey: storedKey ? state.publicKey : undefined,
    clock: state.clock, random: new SeededRandom(1), store: state.store, transport: state.transport,
    log: () => {}, noncePoolSize: poolSize,
  });
`;

export interface XsRingCosts {
  meter: {
    bootWithStoredKey: number;
    bootDerivingKey: number;
    precomputeOneNonce: number;
    ringOnline: number;
    ringSlowPath: number;
    /** JS SHA-512 over an input the size of R‖A‖M: the part of ringOnline a device does natively. */
    sha512OfSigningInput: number;
  };
  instructions?: {
    ringOnline: number;
    ringSlowPath: number;
    precomputeOneNonce: number;
    sha512OfSigningInput: number;
  };
  heap: {
    rings: number;
    /** Live slots after a full GC, and the heap space the machine had allocated (XS heaps grow, never shrink). */
    afterBoot: { slots: number; allocatedBytes: number };
    afterRings: { slots: number; allocatedBytes: number };
    /** Most live slots seen at the end of a batch of rings, before its GC. */
    peakSlots: number;
  };
  payloadBytes: number;
  /** Bytes of R‖A‖M hashed at the press. */
  hashInputBytes: number;
}

/** Meter units of the one call a body wraps in measure(). */
async function meterOf(xs: XsCore, body: string, args?: unknown): Promise<number> {
  const r = await xs.run(body, args);
  const compute = (r.value as { compute?: number } | undefined)?.compute;
  if (typeof compute !== "number") throw new Error("bench body must return measure(...)");
  return compute;
}

export async function measureXsRing(options: { heapRings?: number; callgrind?: boolean } = {}): Promise<XsRingCosts> {
  const heapRings = options.heapRings ?? 1000;
  const xs = await startXsCore({ stdout: "ignore", timeoutMs: 30 * 60_000, meteringLimit: 2_000_000_000 });
  try {
    await xs.run(DOORBELL_SETUP, { storedKey: true });
    const bootWithStoredKey = await meterOf(xs, `return measure(() => { state.d = state.make(4); state.d.start(); });`);
    const bootDerivingKey = await meterOf(xs, `return measure(() => { state.make(4, false); });`);
    await xs.run(`state.d = state.make(4); state.d.start();`);
    const precomputeOneNonce = await meterOf(xs, `return measure(() => state.d.signer.precompute());`);
    await xs.run(`while (state.d.signer.precompute());`);
    const ringOnline = await meterOf(xs, `return measure(() => { state.ring = state.d.press(); });`);
    const payloadBytes = (await xs.run(`return state.ring.payload.length;`)).value as number;
    // The SHA-512 inside the online step, over R‖A‖M of exactly this ring: native on the device, so shown apart.
    const hashInputBytes = (await xs.run(`return 64 + importNow("core/events").signingMessage(state.ring.event).length;`)).value as number;
    const sha512OfSigningInput = await meterOf(xs, `const input = new Uint8Array(args.n); return measure(() => state.nacl.hash(input));`, { n: hashInputBytes });
    const ringSlowPath = await meterOf(xs, `while (state.d.signer.ready) state.d.press(); return measure(() => state.d.press());`);
    const slow = (await xs.run(`return state.d.signer.stats.slow;`)).value as number;
    if (slow < 1) throw new Error("slow-path ring did not take the slow path");

    // Heap: a fresh machine, boot, then heapRings rings each with its nonce precomputed while "idle".
    await xs.close();
    const heapXs = await startXsCore({ stdout: "ignore", timeoutMs: 30 * 60_000, meteringLimit: 2_000_000_000 });
    let heap: XsRingCosts["heap"];
    try {
      await heapXs.run(DOORBELL_SETUP, { storedKey: true });
      const boot = await heapXs.run(`state.d = state.make(1); state.d.start(); state.d.signer.precompute(); gc(); return 0;`);
      // A crank may spend at most 2^31 meter units, and each ring's precompute is ~22 M: go in batches.
      let rings = boot;
      let peakSlots = boot.meter.currentHeapCount;
      for (let done = 0; done < heapRings; done += 50) {
        const batch = await heapXs.run(
          `for (let i = 0; i < args.n; i++) { state.d.signer.precompute(); await state.d.press().acked; }
           if (state.d.signer.stats.slow !== 0) throw new Error("slow path during heap run");
           return state.d.rings;`,
          { n: Math.min(50, heapRings - done) },
        );
        peakSlots = Math.max(peakSlots, batch.meter.currentHeapCount);
        rings = await heapXs.run(`gc(); return state.d.rings;`);
      }
      heap = {
        rings: rings.value as number,
        afterBoot: { slots: boot.meter.currentHeapCount, allocatedBytes: boot.meter.allocate },
        afterRings: { slots: rings.meter.currentHeapCount, allocatedBytes: rings.meter.allocate },
        peakSlots,
      };
    } finally {
      await heapXs.close();
    }

    let instructions: XsRingCosts["instructions"];
    if ((options.callgrind ?? true) && valgrindAvailable()) {
      const setup = `${DOORBELL_SETUP} state.d = state.make(3); state.d.start(); while (state.d.signer.precompute());`;
      const online = await countInstructions({ setup, operation: `state.d.press();`, args: { storedKey: true } });
      const slowSetup = `${DOORBELL_SETUP} state.d = state.make(1); state.d.start();`;
      const slowRing = await countInstructions({ setup: slowSetup, operation: `state.d.press();`, args: { storedKey: true } });
      const hash = await countInstructions({ setup: `${DOORBELL_SETUP} state.input = new Uint8Array(args.n);`, operation: `state.nacl.hash(state.input);`, args: { n: hashInputBytes } });
      const pre = await countInstructions({ setup: `${DOORBELL_SETUP} state.d = state.make(3); state.d.start();`, operation: `state.d.signer.precompute();`, args: { storedKey: true } });
      instructions = { ringOnline: online.perOperation, ringSlowPath: slowRing.perOperation, precomputeOneNonce: pre.perOperation, sha512OfSigningInput: hash.perOperation };
    }
    return {
      meter: { bootWithStoredKey, bootDerivingKey, precomputeOneNonce, ringOnline, ringSlowPath, sha512OfSigningInput },
      instructions,
      heap,
      payloadBytes,
      hashInputBytes,
    };
  } finally {
    await xs.close().catch(() => {});
  }
}

const CLI = {
  name: "bench/xs-ring",
  usage: `usage: npx tsx tools/bench/xs-ring.ts [RINGS]

The XS ring part of npm run bench on its own: meter units for boot, ring and nonce
precompute on the real XS engine, callgrind instruction counts when valgrind is
installed, and live heap slots before and after RINGS rings (default 100). Prints JSON.

  -h, --help     this text`,
  options: {},
  positionals: { max: 1 },
} as const;

runAsEntry(import.meta.url, CLI, async ({ positionals }) => {
  const heapRings = intOption("RINGS", positionals[0], { min: 1, max: 1_000_000 }, 100);
  console.log(JSON.stringify(await measureXsRing({ heapRings }), null, 2));
  return 0;
});
