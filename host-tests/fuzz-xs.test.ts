/*
 * Hostile input on the real XS engine, where the device runs: a native stack
 * overflow there is not an exception but the end of the machine (xsnap exits
 * with code 12; an ESP32 resets). The same extremes and a sample of the
 * mutation corpus go through AccessControl.handleCommand and
 * UpdateAgent.onMessage inside XS; the engine must survive every one, every
 * command must be refused with a reason, and flash must be unchanged.
 */
import test from "ava";
import fc from "fast-check";
import { startXsCore, type XsCore } from "../tools/xs/core";
import { createUserKeys } from "../tools/owner-app";
import { REASON_CODES, readReply } from "../modules/core/commands";
import { utf8Encode } from "../modules/core/bytes";

const enc = (s: string) => utf8Encode(s);

/**
 * Hostile extremes, built inside XS from a valid message (passing 128 KB through the
 * harness's argument encoding would take most of a minute per input).
 */
const EXTREMES = ["128 KB of braces", "64K-deep arrays (128 KB)", "5000-deep objects", "deep inside a member", "128 KB string member", "truncated UTF-8", "lone surrogate", "NUL"];
const MAKE_EXTREME = `
  const ascii = (s) => { const b = new Uint8Array(s.length); for (let i = 0; i < s.length; i++) b[i] = s.charCodeAt(i); return b; };
  // Parts are text or [byte, count]; runs are made with native fills, because a JS loop over 128 KB
  // costs XS millions of meter units and, on a busy machine, most of a minute.
  const cat = (...parts) => {
    const bytes = parts.map((p) => typeof p === "string" ? ascii(p) : new Uint8Array(p[1]).fill(p[0]));
    const out = new Uint8Array(bytes.reduce((n, b) => n + b.length, 0));
    let at = 0;
    for (const b of bytes) { out.set(b, at); at += b.length; }
    return out;
  };
  const make = (name, valid) => {
    switch (name) {
      case "128 KB of braces": return new Uint8Array(131072).fill(0x7b);
      case "64K-deep arrays (128 KB)": return cat([0x5b, 65536], [0x5d, 65536]);
      case "5000-deep objects": return ascii('{"a":'.repeat(5000) + "1" + "}".repeat(5000));
      case "deep inside a member": return cat('{"deep":', [0x5b, 20000], [0x5d, 20000], "," + valid.slice(1));
      case "128 KB string member": return cat('{"pad":"', [0x78, 131072], '",' + valid.slice(1));
      case "truncated UTF-8": { const b = ascii(valid.slice(0, 20)); const out = new Uint8Array(b.length + 2); out.set(b); out[b.length] = 0xe2; out[b.length + 1] = 0x82; return out; }
      case "lone surrogate": return ascii('{"s":"\\ud800",' + valid.slice(1));
      case "NUL": return new Uint8Array(64);
    }
    throw new Error("unknown extreme " + name);
  };
`;

/** Byte mutations of a valid message, generated reproducibly on Node and replayed on XS. */
function mutations(valid: Uint8Array, n: number, seed: number): Uint8Array[] {
  const op = fc.oneof(
    fc.tuple(fc.constant(0), fc.nat(), fc.integer({ min: 0, max: 255 })),
    fc.tuple(fc.constant(1), fc.nat(), fc.constantFrom(0x5b, 0x7b, 0x22, 0x5c, 0xe2, 0x00)),
    fc.tuple(fc.constant(2), fc.nat(), fc.integer({ min: 1, max: 30 })),
  );
  return fc.sample(fc.array(op, { minLength: 1, maxLength: 4 }), { numRuns: n, seed }).map((ops) => {
    let b = valid.slice();
    for (const [k, at, v] of ops) {
      const i = at % (b.length || 1);
      if (k === 0 && b.length) b[i] = v;
      else if (k === 1) b = Uint8Array.of(...b.subarray(0, i), v, ...b.subarray(i));
      else b = Uint8Array.of(...b.subarray(0, i), ...b.subarray(i + v));
    }
    return b;
  });
}

async function withXs<T>(fn: (xs: XsCore) => Promise<T>): Promise<T> {
  const xs = await startXsCore({ name: "xs-fuzz", stdout: "ignore", timeoutMs: 120_000 });
  try {
    return await fn(xs);
  } finally {
    await xs.close().catch(() => {});
  }
}

test("on XS, hostile commands are refused with a reason, flash is unchanged and the engine survives", async (t) => {
  t.timeout(180_000);
  const owner = createUserKeys("owner", "owner");
  const viewer = createUserKeys("viewer-1", "viewer");
  const valid = JSON.stringify({ box: "A".repeat(60), from: "owner", n: "A".repeat(32), v: 1 });
  const mutated = mutations(enc(valid), 300, 0xa11);
  const names = [...EXTREMES, ...mutated.map((_, i) => `mutation ${i}`)];
  const results = await withXs(async (xs) => {
    await xs.run(`
      const { AccessControl } = importNow("core/commands");
      const { MemoryStore, SeededRandom } = importNow("harness/deterministic");
      const secrets = new Map();
      state.secrets = { get: (k) => secrets.get(k)?.slice(), set: (k, v) => { secrets.set(k, v.slice()); }, delete: (k) => { secrets.delete(k); } };
      state.secretMap = secrets;
      state.store = new MemoryStore();
      state.access = new AccessControl({
        thing: "xs-porch", secrets: state.secrets, store: state.store, random: new SeededRandom(3),
        clock: { monotonic: () => 0, wallTime: () => 1790000000000, schedule: () => () => {} }, log: () => {},
        deviceBoxSecretKey: new Uint8Array(32).fill(9), owner: args.owner,
      });
      const hex = (u) => Array.from(u, (b) => b.toString(16).padStart(2, "0")).join("");
      state.snapshot = () => state.store.keys().map((k) => k + "=" + hex(state.store.read(k))).join(";") + "|" + [...secrets.keys()].sort().map((k) => k + "=" + hex(secrets.get(k))).join(";");
      state.check = (payload) => {
        const before = state.snapshot();
        const r = state.access.handleCommand(payload);
        return { ok: r.ok, reason: r.reason, reply: r.reply, unchanged: state.snapshot() === before };
      };
      return 0;`, { owner: owner.identity });
    type Result = { ok: boolean; reason: string; reply: Uint8Array; unchanged: boolean } | { crashed: string };
    const out: Result[] = [];
    // Each extreme in its own run, so a crash names it; the mutations in batches.
    for (const name of EXTREMES) {
      try {
        out.push((await xs.run<Result>(`${MAKE_EXTREME} return state.check(make(args.name, args.valid));`, { name, valid })).value);
      } catch (e) {
        out.push({ crashed: String((e as Error).message) });
        return out;
      }
    }
    for (let i = 0; i < mutated.length; i += 50) {
      try {
        out.push(...(await xs.run<Result[]>(`return args.batch.map((p) => state.check(p));`, { batch: mutated.slice(i, i + 50) })).value);
      } catch (e) {
        out.push({ crashed: `batch at ${i}: ${String((e as Error).message)}` });
        return out;
      }
    }
    return out;
  });
  void viewer;
  const problems: string[] = [];
  results.forEach((r, i) => {
    if ("crashed" in r) return problems.push(`${names[i]}: XS died: ${r.crashed}`);
    if (r.ok) problems.push(`${names[i]}: accepted`);
    if (!REASON_CODES.includes(r.reason as never)) problems.push(`${names[i]}: reason ${r.reason}`);
    if (!r.unchanged) problems.push(`${names[i]}: state changed`);
    try {
      if (readReply(r.reply).reply.ok) problems.push(`${names[i]}: reply says ok`);
    } catch {
      problems.push(`${names[i]}: reply not canonical`);
    }
  });
  t.log(`${results.length} hostile commands on XS (${EXTREMES.length} extremes incl. 128 KB and 64K-deep nesting, ${results.length - EXTREMES.length} mutations)`);
  t.is(results.length, names.length);
  t.deepEqual(problems, []);
});

const JOBS = "$aws/things/xs-porch/jobs";
const AGENT_SETUP = `
  const { UpdateAgent } = importNow("core/update");
  const { createJsSha256 } = importNow("core/release");
  const { MemoryStore } = importNow("harness/deterministic");
  const { keyedTag } = importNow("core/record");
  const { default: nacl } = importNow("tweetnacl");
  state.store = new MemoryStore();
  state.sink = { n: 0, open() { this.n++; }, write() {}, complete() { this.n += 100; }, cancel() {}, confirm() { this.n += 100; }, rollback() { this.n += 100; }, restart() { this.n += 100; } };
  state.published = [];
  state.agent = new UpdateAgent({
    thing: "xs-porch", board: "host/sim", runningVersion: 3, releaseKeys: { serial: 1, keys: [new Uint8Array(32).fill(1)] },
    store: state.store, recordTag: keyedTag("test", new Uint8Array(32).fill(7), (d) => nacl.hash(d)), sink: state.sink, boot: state.sink, log: () => {}, createDigest: createJsSha256, pollIntervalMs: 0,
    clock: { monotonic: () => 0, wallTime: () => 1790000000000, schedule: () => () => {} },
    publish: (topic, payload) => { state.published.push(topic); return Promise.resolve(); },
  });
  state.agent.start();
  return 0;`;

test("on XS, hostile job and stream messages of ordinary nesting are handled without harm", async (t) => {
  t.timeout(120_000);
  const valid = JSON.stringify({ timestamp: 1, execution: { jobId: "j-1", status: "QUEUED", jobDocument: { operation: "doorward.firmware", release: { manifest: {}, sig: "x" }, stream: { id: "s", file: 0 } } } });
  const mutated = mutations(enc(valid), 300, 0xa12);
  const shallow = ["128 KB of braces", "128 KB string member", "truncated UTF-8", "lone surrogate", "NUL"];
  const problems: string[] = [];
  let count = 0;
  await withXs(async (xs) => {
    await xs.run(AGENT_SETUP);
    const CHECK = `state.check = (p) => { state.agent.onMessage(args.topic, p); return state.sink.n !== 0 || state.store.read("upd.state") !== undefined; };`;
    for (const name of shallow) {
      count++;
      try {
        const r = await xs.run<boolean>(`${MAKE_EXTREME} ${CHECK} return state.check(make(args.name, args.valid));`, { name, valid, topic: `${JOBS}/notify-next` });
        if (r.value) problems.push(`${name}: update started or activated`);
      } catch (e) {
        problems.push(`${name}: XS died: ${(e as Error).message}`);
        return;
      }
    }
    for (let i = 0; i < mutated.length; i += 50) {
      const batch = mutated.slice(i, i + 50);
      count += batch.length;
      try {
        const r = await xs.run<boolean[]>(`${CHECK} return args.batch.map((p) => state.check(p));`, { batch, topic: `${JOBS}/notify-next` });
        r.value.forEach((bad, k) => { if (bad) problems.push(`mutation ${i + k}: update started or activated`); });
      } catch (e) {
        problems.push(`batch at ${i}: XS died: ${(e as Error).message}`);
        return;
      }
    }
  });
  const inputs = { length: count };
  t.log(`${inputs.length} hostile job messages on XS`);
  t.deepEqual(problems, []);
});

// UpdateAgent.onMessage refuses deep nesting with a byte scan before JSON.parse, whose recursion would
// overflow the native stack (≈5000 levels on xsnap, far fewer on an ESP32 task stack); a message this
// size is refused before even that scan. The bytes are made with native fills (the character-by-character
// builder the other extremes use costs 3.7 M meter units here), and what is checked besides survival is
// the refusal's XS meter count, not wall time: it is deterministic, so no pass depends on the machine's load.
// Measured: about 1,100 units. The budget, 100,000, is far below what scanning 128 KB in JS would cost
// (several units per byte), so a refusal that came later than the size check would fail it.
const DEEP_REFUSAL_BUDGET = 100_000;

test("a 128 KB, 64K-deep job message does not kill the XS engine, and is refused before it is read", async (t) => {
  t.timeout(120_000);
  const outcome = await withXs(async (xs) => {
    await xs.run(AGENT_SETUP);
    const built = await xs.run<number>(`const b = new Uint8Array(131072); b.fill(0x5b, 0, 65536); b.fill(0x5d, 65536); state.deep = b; return b.length;`, {});
    t.is(built.value, 131072);
    try {
      const r = await xs.run(`state.agent.onMessage(args.topic, state.deep); return 0;`, { topic: `${JOBS}/notify-next` });
      t.log(`refusal: ${r.meter.compute} meter units`);
      t.true(r.meter.compute < DEEP_REFUSAL_BUDGET, `refusal cost ${r.meter.compute} meter units`);
      return "survived";
    } catch (e) {
      return `died: ${(e as Error).message}`;
    }
  });
  t.is(outcome, "survived");
});
