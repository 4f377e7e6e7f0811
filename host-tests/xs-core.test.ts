/*
 * The core on the real XS engine, compared byte for byte with the same core on Node.
 *
 * Each test starts its own xsnap worker (tools/xs/core.ts), runs core modules
 * there through the mcconfig-style loader, and checks the bytes against Node:
 * canonical JSON, offline/online Ed25519 signatures (also checked by OpenSSL
 * and tweetnacl), and sealed ring events. It also checks that the loader
 * refuses imports the device would not have, and logs XS meter costs of the
 * ring path's signing steps.
 */
import test, { type ExecutionContext } from "ava";
import { createPublicKey, verify as nodeVerify } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import nacl from "tweetnacl";
import { canonicalBytes, parseCanonical, type Json } from "../modules/core/canonical";
import { Ed25519Signer } from "../modules/core/signer";
import { STARTUP_BYTES } from "../modules/core/rng-health";
import { openEnvelope, sealEvent, signingMessage, type DoorEvent } from "../modules/core/events";
import { toBase64Url, toHex, utf8Encode } from "../modules/core/bytes";
import { SeededRandom } from "../tools/xs/deterministic";
import { startXsCore, XsRunError, type XsCore, type XsCoreOptions } from "../tools/xs/core";

async function xsFor(t: ExecutionContext, options: XsCoreOptions = {}): Promise<XsCore> {
  const xs = await startXsCore({ name: `xs-${t.title.slice(0, 20).replace(/[^a-z0-9]+/gi, "-")}`, ...options });
  t.teardown(() => xs.close());
  return xs;
}

function ed25519Verify(message: Uint8Array, signature: Uint8Array, publicKey: Uint8Array): boolean {
  const key = createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: toBase64Url(publicKey) }, format: "jwk" });
  return nodeVerify(null, message, key, signature);
}

const SEED = Uint8Array.from({ length: 32 }, (_, i) => (i * 29 + 11) & 255);
const RANDOM_SEED = 0xd00dbe11;
const BOOT = 7;

/**
 * JS source, evaluated on both engines, so values JSON cannot carry
 * (-0, NaN, lone surrogates, undefined members) reach XS intact.
 */
const CANONICAL_CASES = String.raw`[
  null, true, false, 0, -0, 1, -1, 42, 9007199254740991, -9007199254740991, 1e21, 1e-7, 5e-324,
  1.7976931348623157e308, 0.30000000000000004, 333333333.3333333, 4.35, 123456789012345680000, 2 ** 60,
  "", "plain", "quote\" backslash\\ slash/", "\u0000\u0001\u001f\b\f\n\r\t\u007f", "\u2028\u2029",
  "é€😀 𝄞 דּ", "\ud83d\ude00",
  [], {}, [[[]]], { "": "" },
  { "b": 1, "a": 2, "aa": [3, { "z": null, "y": "x" }] },
  { "\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh",
    "1": "One", "\ud83d\ude00": "Emoji: Grinning Face", "\u0080": "Control", "\u00f6": "Latin Small Letter O With Diaeresis" },
  { "v": 1, "type": "ring", "thing": "doorward-front-01", "boot": 7, "seq": 4242, "time": 1767225600000, "button": "front" },
  "\ud800", "x\udc00y", NaN, Infinity, -Infinity, { "a": undefined }, [undefined],
  [[[[[[[[[[[[[[[[[["too deep"]]]]]]]]]]]]]]]]]], new Date(0), { "f": () => 1 }
]`;

type CanonicalOutcome = { bytes: Uint8Array; reparsed: boolean } | { error: string };

function canonicalOnNode(): CanonicalOutcome[] {
  const cases = (0, eval)(CANONICAL_CASES) as Json[];
  return cases.map((value) => {
    try {
      const bytes = canonicalBytes(value);
      const again = canonicalBytes(parseCanonical(bytes, 1 << 16));
      return { bytes, reparsed: toHex(again) === toHex(bytes) };
    } catch (e) {
      return { error: `${(e as Error).name}: ${(e as Error).message}` };
    }
  });
}

test("canonical encoding gives identical bytes (and identical refusals) on XS and Node", async (t) => {
  const xs = await xsFor(t);
  const { value: onXs } = await xs.run<CanonicalOutcome[]>(`
    const { canonicalBytes, parseCanonical } = importNow("core/canonical");
    const { toHex } = importNow("core/bytes");
    return (${CANONICAL_CASES}).map((value) => {
      try {
        const bytes = canonicalBytes(value);
        const again = canonicalBytes(parseCanonical(bytes, 1 << 16));
        return { bytes, reparsed: toHex(again) === toHex(bytes) };
      } catch (e) {
        return { error: e.name + ": " + e.message };
      }
    });`);
  const onNode = canonicalOnNode();
  t.is(onXs.length, onNode.length);
  for (let i = 0; i < onNode.length; i++) t.deepEqual(onXs[i], onNode[i], `case ${i}`);
  // The set must exercise both outcomes, or the comparison proves little.
  t.true(onNode.filter((o) => "bytes" in o).length >= 25);
  t.true(onNode.filter((o) => "error" in o).length >= 8);
  t.true(onNode.every((o) => !("bytes" in o) || o.reparsed));
});

const MESSAGES = [
  "",
  "ring",
  "x".repeat(150),
  "doorward/event/v1\n" + JSON.stringify({ boot: 7, seq: 1, thing: "doorward-front-01", time: null, type: "ring", v: 1 }),
  "é€😀".repeat(40),
];

test("offline/online Ed25519 signatures are byte-identical on XS and Node, and standard", async (t) => {
  const xs = await xsFor(t);
  const args = { seed: SEED, randomSeed: RANDOM_SEED, boot: BOOT, messages: MESSAGES };
  const { value: onXs } = await xs.run<{ publicKey: Uint8Array; signatures: Uint8Array[]; stats: unknown; drawn: number }>(`
    const { Ed25519Signer } = importNow("core/signer");
    const { utf8Encode } = importNow("core/bytes");
    const { SeededRandom } = importNow("harness/deterministic");
    const random = new SeededRandom(args.randomSeed);
    const signer = new Ed25519Signer(args.seed, { random, boot: args.boot, poolSize: 4 });
    while (signer.precompute());
    // Four from the pool, then one with the pool empty (the deterministic fallback).
    const signatures = args.messages.map((m) => signer.sign(utf8Encode(m)));
    return { publicKey: signer.publicKey, signatures, stats: { ...signer.stats }, drawn: random.drawn };`, args);

  const random = new SeededRandom(RANDOM_SEED);
  const signer = new Ed25519Signer(SEED, { random, boot: BOOT, poolSize: 4 });
  while (signer.precompute());
  const onNode = MESSAGES.map((m) => signer.sign(utf8Encode(m)));

  t.deepEqual(onXs.publicKey, signer.publicKey);
  t.deepEqual(onXs.stats, { online: 4, slow: 1, precomputed: 4, waited: 0 });
  t.deepEqual(onXs.stats, { ...signer.stats });
  // The health tests' start-up sample, then 32 bytes per nonce.
  t.is(onXs.drawn, STARTUP_BYTES + 4 * 32);
  t.is(onXs.drawn, random.drawn);
  t.is(onXs.signatures.length, MESSAGES.length);
  for (let i = 0; i < MESSAGES.length; i++) {
    const message = utf8Encode(MESSAGES[i]);
    const sig = onXs.signatures[i];
    t.is(toHex(sig), toHex(onNode[i]), `message ${i}: XS and Node signatures differ`);
    t.true(ed25519Verify(message, sig, onXs.publicKey), `message ${i}: OpenSSL rejects the XS signature`);
    t.true(nacl.sign.detached.verify(message, sig, onXs.publicKey), `message ${i}: tweetnacl rejects the XS signature`);
    // The verifiers can fail: a flipped message bit must be rejected.
    const tampered = Uint8Array.from(message.length ? message : [0]);
    tampered[0] ^= 1;
    t.false(ed25519Verify(tampered, sig, onXs.publicKey), `message ${i}: OpenSSL accepted a tampered message`);
  }
  // Online signatures used random nonces; only the fallback equals tweetnacl's deterministic signature.
  const secretKey = nacl.sign.keyPair.fromSeed(SEED).secretKey;
  t.not(toHex(onXs.signatures[2]), toHex(nacl.sign.detached(utf8Encode(MESSAGES[2]), secretKey)));
  t.is(toHex(onXs.signatures[4]), toHex(nacl.sign.detached(utf8Encode(MESSAGES[4]), secretKey)));
});

const RING: DoorEvent = { v: 1, type: "ring", thing: "doorward-front-01", boot: BOOT, seq: 4242, time: 1767225600000, button: "front" };

test("sealEvent of a ring event gives identical payload bytes on XS and Node", async (t) => {
  const xs = await xsFor(t);
  const args = { seed: SEED, randomSeed: RANDOM_SEED, boot: BOOT, event: RING };
  const { value: onXs } = await xs.run<Uint8Array>(`
    const { Ed25519Signer } = importNow("core/signer");
    const { sealEvent } = importNow("core/events");
    const { SeededRandom } = importNow("harness/deterministic");
    const signer = new Ed25519Signer(args.seed, { random: new SeededRandom(args.randomSeed), boot: args.boot });
    signer.precompute();
    return sealEvent(args.event, signer);`, args);

  const signer = new Ed25519Signer(SEED, { random: new SeededRandom(RANDOM_SEED), boot: BOOT });
  signer.precompute();
  const onNode = sealEvent(RING, signer);
  t.is(signer.stats.online, 1);
  t.is(Buffer.from(onXs).toString("utf8"), Buffer.from(onNode).toString("utf8"));
  t.deepEqual(onXs, onNode);
  const opened = openEnvelope(onXs);
  t.deepEqual(opened.event, RING);
  t.deepEqual(opened.message, signingMessage(RING));
  t.true(ed25519Verify(opened.message, opened.signature, signer.publicKey));
});

test("every core module the ring path uses loads on XS with nothing but core modules and tweetnacl", async (t) => {
  const xs = await xsFor(t);
  const names = ["bytes", "canonical", "topics", "events", "signer", "sequence", "debounce", "ports"];
  const { value } = await xs.run<string[]>(`
    return args.map((name) => name + ":" + Object.keys(importNow("core/" + name)).sort().join(","));`, names);
  t.is(value.length, names.length);
  t.true(value.find((v) => v.startsWith("signer:"))!.includes("Ed25519Signer"));
  t.true(value.find((v) => v.startsWith("events:"))!.includes("sealEvent"));
  t.deepEqual(
    xs.loaded.filter((s) => !/^core\/[a-z]+(-[a-z]+)*$/.test(s) && s !== "tweetnacl"),
    [],
    "only core modules and tweetnacl may be loaded",
  );
  t.true(xs.loaded.includes("tweetnacl"));
  // The compartment the core runs in has the language and nothing of the host.
  const { value: globals } = await xs.run<Record<string, string>>(`
    const g = compartment.globalThis;
    return { TextEncoder: typeof g.TextEncoder, print: typeof g.print, issueCommand: typeof g.issueCommand, BigInt: typeof g.BigInt };`);
  t.deepEqual(globals, { TextEncoder: "undefined", print: "undefined", issueCommand: "undefined", BigInt: "function" });
});

test("the loader refuses, by name, every import a device build would not have", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "doorward-xs-fixture-"));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const fixtures: Record<string, string> = {
    util: `export const twice = (n: number): number => n * 2;`,
    ok: `import { twice } from "./util";\nimport nacl from "tweetnacl";\nexport const value: number = twice(21) + nacl.hash(new Uint8Array(0)).length * 0;`,
    usesnode: `import { randomBytes } from "node:crypto";\nexport const r = randomBytes;`,
    escapes: `import { clock } from "../host/clock";\nexport const c = clock;`,
    moddable: `import Timer from "timer";\nexport default Timer;`,
    extension: `import { twice } from "./util.ts";\nexport const t = twice;`,
    missing: `import { nothing } from "./nothing";\nexport const n = nothing;`,
    harness: `import { SeededRandom } from "harness/deterministic";\nexport const s = SeededRandom;`,
    subpath: `import nacl from "tweetnacl/nacl-fast";\nexport default nacl;`,
    transitive: `export { r } from "./usesnode";`,
    hostglobal: `export const encode = (s: string): number => new TextEncoder().encode(s).length;`,
  };
  for (const [name, source] of Object.entries(fixtures)) writeFileSync(join(dir, `${name}.ts`), source);
  const xs = await xsFor(t, { coreDir: dir });

  // Control: the fixture loader works, so each refusal below is the rule, not a broken setup.
  const { value } = await xs.run<number>(`return importNow("core/ok").value;`);
  t.is(value, 42);

  const refusals: [string, RegExp][] = [
    ["usesnode", /"node:crypto" from core\/usesnode/],
    ["escapes", /"\.\.\/host\/clock" from core\/escapes: .*outside modules\/core/],
    ["moddable", /"timer" from core\/moddable: core modules may only import/],
    ["extension", /"\.\/util\.ts" from core\/extension: .*no file extension/],
    ["missing", /"\.\/nothing" from core\/missing: "core\/nothing" has no file/],
    ["harness", /"harness\/deterministic" from core\/harness/],
    ["subpath", /"tweetnacl\/nacl-fast" from core\/subpath/],
    ["transitive", /"node:crypto" from core\/usesnode/],
  ];
  for (const [name, message] of refusals) {
    const error = await t.throwsAsync(xs.run(`return importNow("core/${name}");`), { instanceOf: XsRunError, message }, name);
    t.log(`core/${name}: ${error?.message}`);
  }
  await t.throwsAsync(xs.run(`return importNow("./ok");`), { message: /top-level import needs a full specifier/ });
  await t.throwsAsync(xs.run(`return importNow("node:fs");`), { message: /"node:fs" from the harness/ });
  // A host global is not an import: it loads, and fails when used, as it would on the device.
  await t.throwsAsync(xs.run(`return importNow("core/hostglobal").encode("x");`), { instanceOf: XsRunError, message: /ReferenceError.*TextEncoder/ });
  // Refused specifiers were never served; each failed import got a fresh compartment (see tools/xs/core.ts).
  t.deepEqual(xs.loaded.filter((s) => !s.startsWith("core/") && s !== "tweetnacl"), []);
  t.false(xs.loaded.includes("core/nothing"));
  t.is(xs.compartmentResets, refusals.length);
});

interface Costs {
  precompute: number;
  onlineSign: number;
  naclSign: number;
  sealRing: number;
  messageLength: number;
}

/** Each measured step is one run, after a setup run, so its meter holds that step alone. */
async function measureCosts(xs: XsCore): Promise<Costs> {
  const args = { seed: SEED, randomSeed: RANDOM_SEED, boot: BOOT, event: RING };
  await xs.run(`
    const { Ed25519Signer } = importNow("core/signer");
    const { SeededRandom } = importNow("harness/deterministic");
    importNow("core/events");
    state.nacl = importNow("tweetnacl").default;
    state.signer = new Ed25519Signer(args.seed, { random: new SeededRandom(args.randomSeed), boot: args.boot });
    state.secretKey = state.nacl.sign.keyPair.fromSeed(args.seed).secretKey;
    state.message = new Uint8Array(150).map((_, i) => (i * 7 + 3) & 255);`, args);
  const precompute = await xs.run(`return state.signer.precompute();`);
  const onlineSign = await xs.run(`return state.signer.sign(state.message);`);
  const naclSign = await xs.run(`return state.nacl.sign.detached(state.message, state.secretKey);`);
  await xs.run(`state.signer.precompute();`);
  const sealRing = await xs.run(`return importNow("core/events").sealEvent(args, state.signer);`, RING);
  const { value: stats } = await xs.run<{ online: number; slow: number }>(`return { ...state.signer.stats };`);
  if (precompute.value !== true || stats.online !== 2 || stats.slow !== 0) throw new Error(`unexpected signer state ${JSON.stringify(stats)}`);
  return {
    precompute: precompute.meter.body,
    onlineSign: onlineSign.meter.body,
    naclSign: naclSign.meter.body,
    sealRing: sealRing.meter.body,
    messageLength: 150,
  };
}

test("XS meter cost of the signing steps, deterministic across workers", async (t) => {
  const first = await measureCosts(await xsFor(t, { name: "xs-costs-1" }));
  const second = await measureCosts(await xsFor(t, { name: "xs-costs-2" }));
  t.deepEqual(second, first, "the XS meter must repeat exactly");
  const m = (n: number) => `${(n / 1e6).toFixed(2)} M`;
  t.log(`XS meter units, ${first.messageLength}-byte message:`);
  t.log(`  precompute (one nonce, R = r·B):   ${m(first.precompute)}`);
  t.log(`  online sign (after precompute):    ${m(first.onlineSign)}`);
  t.log(`  nacl.sign.detached (plain sign):   ${m(first.naclSign)}`);
  t.log(`  sealEvent(ring) with a ready nonce: ${m(first.sealRing)}`);
  t.log(`  plain sign / online sign = ${(first.naclSign / first.onlineSign).toFixed(1)}x`);
  // The design rests on this: the press pays a small fraction of a full sign.
  t.true(first.onlineSign * 10 < first.naclSign, "online sign should cost under a tenth of a plain sign");
  t.true(first.precompute > first.naclSign * 0.8, "precompute does the scalar multiplication a plain sign does");
});

test("a runaway run is stopped by the XS meter limit, not left spinning", async (t) => {
  const xs = await xsFor(t, { meteringLimit: 5_000_000 });
  await t.throwsAsync(xs.run(`for (;;) {}`), { message: /exited with code 17 \(too much computation/ });
  await t.throwsAsync(xs.run(`return 1;`), { message: /exited with code 17/ });
});
