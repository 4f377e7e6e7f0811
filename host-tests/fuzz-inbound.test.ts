/*
 * Hostile input on every inbound surface: fast-check generation plus a mutation
 * corpus made from valid messages (tools/owner-app.ts commands and signed access
 * lists, tools/update-service.ts job documents and stream blocks).
 *
 * Surfaces:
 *   - commands and access-list updates: AccessControl.handleCommand, both as bytes from
 *     anyone and as bodies sealed with a real user's key (a compromised app);
 *   - AWS IoT Jobs documents and MQTT stream data: UpdateAgent.onMessage on
 *     $aws/things/<thing>/jobs/... and .../streams/..., idle and mid-download;
 *   - everything that reaches the firmware's message routing (firmware.ts through
 *     Doorbell options.onMessage): commands, jobs, streams, shadow deltas and topics
 *     nobody subscribed to, on a provisioned device with its vault and flash on disk.
 * Inputs include malformed JSON, wrong types, huge and deeply nested values,
 * 128 KB payloads and truncated UTF-8. For each: a clear rejection (a refusal reply
 * with a reason code, a REJECTED/FAILED job report with a reason, or a logged refusal;
 * a topic nobody handles is ignored), no exception escaping to the event loop (checked
 * with process listeners), and unchanged state (flash and secret stores compared byte
 * for byte; the only records allowed to change are named per surface).
 */
import test, { type ExecutionContext } from "ava";
import fc from "fast-check";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import nacl from "tweetnacl";
import { AccessTestbed, ManualClock, createUserKeys, type UserApp } from "../tools/owner-app";
import { REASON_CODES, REPLAY_KEY, readReply } from "../modules/core/commands";
import { canonicalBytes } from "../modules/core/canonical";
import { keyedTag } from "../modules/core/record";
import { MAX_USERS, listSigningMessage, userKeysFor, signedListToJson, type AccessUser } from "../modules/core/access";
import { toBase64Url, toHex, utf8Decode, utf8Encode } from "../modules/core/bytes";
import { UpdateAgent, UPDATE_KV, type UpdateEvent } from "../modules/core/update";
import type { KeyValueStore, Log, MqttHandlers, MqttTransport, UpdateSink, BootControl } from "../modules/core/ports";
import { MemoryStore, FileStore } from "../modules/host/file-store";
import { hostSha256 } from "../modules/host/cipher";
import { createHostClock } from "../modules/host/clock";
import { hostRandom } from "../modules/host/random";
import { openKeyFile } from "../modules/host/key-file";
import { bootFirmware, type RunningFirmware } from "../modules/core/firmware";
import { firmwareJobDocument, keysJobDocument } from "../tools/update-service";
import { builtInKeys, releaseKeyFromSeed, rotateKeys, signImage } from "../tools/release";
import { devicePaths } from "../tools/provision";
import { provisionIfNeeded } from "../tools/sim-device";

// ------------------------------------------------------------------ nothing may escape to the event loop

const escaped: string[] = [];
const onUncaught = (e: unknown) => escaped.push(`uncaughtException: ${String((e as Error)?.stack ?? e)}`);
const onRejection = (e: unknown) => escaped.push(`unhandledRejection: ${String((e as Error)?.stack ?? e)}`);
test.before(() => {
  process.on("uncaughtException", onUncaught);
  process.on("unhandledRejection", onRejection);
});
test.after.always(() => {
  process.off("uncaughtException", onUncaught);
  process.off("unhandledRejection", onRejection);
});
const settle = () => new Promise<void>((r) => setImmediate(r));

let totalInputs = 0;

// ------------------------------------------------------------------ the mutation engine

const enc = (s: string) => utf8Encode(s);
const INTERESTING_BYTES = [0x00, 0xff, 0x7f, 0x80, 0x22, 0x5c, 0x7b, 0x7d, 0x5b, 0x5d, 0x3a, 0x2c, 0x30, 0x2d, 0x2e, 0x65, 0xc3, 0xe2, 0xed, 0xf0, 0xf4];
const TOKENS = ['"', "[", "{", '{"a":', "]", "}", ",", ":", "null", "true", "-0", "1e999", "0.1", "\\u0000", "\\ud800", '"__proto__":{"x":1},', "9007199254740993", "é", "\u{1F514}", "\\", "[[[[[[[[[[[["].map(enc);

type Mutation =
  | { k: "flip"; at: number; bit: number }
  | { k: "set"; at: number; v: number }
  | { k: "insert"; at: number; token: number }
  | { k: "bytes"; at: number; b: Uint8Array }
  | { k: "delete"; at: number; n: number }
  | { k: "truncate"; at: number }
  | { k: "truncateUtf8"; at: number; lead: number }
  | { k: "splice"; from: number; at: number; n: number }
  | { k: "repeat"; at: number; n: number; times: number };

const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ k: fc.constant("flip" as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ k: fc.constant("set" as const), at: fc.nat(), v: fc.constantFrom(...INTERESTING_BYTES) }),
  fc.record({ k: fc.constant("insert" as const), at: fc.nat(), token: fc.nat({ max: TOKENS.length - 1 }) }),
  fc.record({ k: fc.constant("bytes" as const), at: fc.nat(), b: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
  fc.record({ k: fc.constant("delete" as const), at: fc.nat(), n: fc.integer({ min: 1, max: 40 }) }),
  fc.record({ k: fc.constant("truncate" as const), at: fc.nat() }),
  fc.record({ k: fc.constant("truncateUtf8" as const), at: fc.nat(), lead: fc.constantFrom(0xc3, 0xe2, 0xf0) }),
  fc.record({ k: fc.constant("splice" as const), from: fc.nat(), at: fc.nat(), n: fc.integer({ min: 1, max: 200 }) }),
  fc.record({ k: fc.constant("repeat" as const), at: fc.nat(), n: fc.integer({ min: 1, max: 64 }), times: fc.integer({ min: 2, max: 400 }) }),
);

function applyMutations(base: Uint8Array, ops: Mutation[], corpus: Uint8Array[]): Uint8Array {
  let b = base;
  for (const op of ops) {
    const at = b.length ? op.at % (b.length + 1) : 0;
    const cat = (...parts: Uint8Array[]) => {
      const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
      let o = 0;
      for (const p of parts) { out.set(p, o); o += p.length; }
      return out;
    };
    switch (op.k) {
      case "flip": if (b.length) { b = b.slice(); b[at % b.length] ^= 1 << op.bit; } break;
      case "set": if (b.length) { b = b.slice(); b[at % b.length] = op.v; } break;
      case "insert": b = cat(b.subarray(0, at), TOKENS[op.token], b.subarray(at)); break;
      case "bytes": b = cat(b.subarray(0, at), op.b, b.subarray(at)); break;
      case "delete": b = cat(b.subarray(0, at), b.subarray(at + op.n)); break;
      case "truncate": b = b.slice(0, at); break;
      // Cut, then leave the first byte of a multi-byte character dangling at the end.
      case "truncateUtf8": b = cat(b.subarray(0, at), Uint8Array.of(op.lead)); break;
      case "splice": {
        const other = corpus[op.from % corpus.length];
        const start = other.length ? op.at % other.length : 0;
        b = cat(b.subarray(0, at), other.subarray(start, start + op.n), b.subarray(at));
        break;
      }
      case "repeat": {
        const chunk = b.subarray(at, at + op.n);
        const parts = [b.subarray(0, at)];
        for (let i = 0; i < op.times; i++) parts.push(chunk);
        parts.push(b.subarray(at));
        b = cat(...parts);
        break;
      }
    }
  }
  return b;
}

function deepArray(n: number): unknown { let v: unknown = 0; for (let i = 0; i < n; i++) v = [v]; return v; }
function deepObject(n: number): unknown { let v: unknown = 0; for (let i = 0; i < n; i++) v = { a: v }; return v; }

const HOSTILE_VALUES: unknown[] = [
  null, true, false, 0, -1, 1.5, -0, 2 ** 53, 1e308, "", "x".repeat(5000), [], {}, [null], { "": null },
  deepArray(40), deepObject(40), deepArray(2000), "\u0000", "\ud800x", "../../etc", "$aws/things/x/jobs/+/update", "+", "#",
  new Array(3000).fill(1), Object.fromEntries(Array.from({ length: 500 }, (_, i) => [`k${i}`, i])),
];

/** Values of the right type and near-right meaning, so edits get past the shape checks to the deeper ones. */
const PLAUSIBLE: unknown[] = [
  "snapshot", "chime-test", "stream-start", "stream-stop", "access-update", "revoke", "revoke-all", "fuzz-porch", "other-porch", "owner", "viewer-1", "resident-1",
  "doorward.firmware", "doorward.release-keys", "host/sim", "QUEUED", "IN_PROGRESS", "ResourceNotFound", "VersionMismatch",
  0, 1, 2, 3, 4, 5, 600, 601, 1024, 4096, 65536, 1_780_000_000_000, 1_780_000_060_000, 1_780_001_000_000, Number.MAX_SAFE_INTEGER,
];

type JsonEdit = { pick: number; key: number; value: unknown; mode: "set" | "delete" | "add" | "retype" };
const jsonEditArb: fc.Arbitrary<JsonEdit> = fc.record({
  pick: fc.nat(),
  key: fc.nat(),
  value: fc.oneof(fc.constantFrom(...HOSTILE_VALUES), fc.constantFrom(...PLAUSIBLE), fc.jsonValue({ maxDepth: 4 }), fc.string({ maxLength: 40 })),
  mode: fc.constantFrom("set" as const, "delete" as const, "add" as const, "retype" as const),
});

/** Edit one member somewhere inside a JSON document (any depth), keeping the rest. */
function editJson(text: string, edit: JsonEdit): Uint8Array {
  const doc = JSON.parse(text) as unknown;
  const holders: Array<Record<string, unknown> | unknown[]> = [];
  const walk = (v: unknown) => {
    if (v && typeof v === "object") {
      holders.push(v as Record<string, unknown>);
      for (const c of Object.values(v as object)) walk(c);
    }
  };
  walk(doc);
  const h = holders[edit.pick % holders.length];
  const keys = Object.keys(h);
  const key = edit.mode === "add" || keys.length === 0 ? `extra${edit.key % 3}` : keys[edit.key % keys.length];
  const target = h as Record<string, unknown>;
  if (edit.mode === "delete") delete target[key];
  else if (edit.mode === "retype") target[key] = typeof target[key] === "string" ? 7 : String(target[key]);
  else target[key] = edit.value;
  return enc(JSON.stringify(doc));
}

/** Hostile extremes every surface gets besides the generated ones. */
function extremes(valid: Uint8Array): Array<[string, Uint8Array]> {
  const text = utf8Decode(valid);
  return [
    ["empty", new Uint8Array(0)],
    ["128 KB of braces", new Uint8Array(128 * 1024).fill(0x7b)],
    ["128 KB of valid JSON", enc(JSON.stringify({ pad: "A".repeat(128 * 1024 - 20) }))],
    ["128 KB: the valid message padded with a huge member", enc(text.replace(/^\{/, `{"pad":"${"x".repeat(128 * 1024 - text.length - 12)}",`))],
    ["64K-deep arrays (128 KB)", enc("[".repeat(65536) + "]".repeat(65536))],
    ["deep objects", enc('{"a":'.repeat(5000) + "1" + "}".repeat(5000))],
    ["truncated UTF-8 (lead byte)", Uint8Array.of(...valid.subarray(0, valid.length - 1), 0xe2)],
    ["truncated UTF-8 (two of three bytes)", Uint8Array.of(...valid, 0xe2, 0x82)],
    ["overlong UTF-8", Uint8Array.of(0x7b, 0xc0, 0xaf, 0x7d)],
    ["lone surrogate escape", enc(text.replace(/"([a-z]+)":"/, '"$1":"\\ud800'))],
    ["NUL bytes", new Uint8Array(100)],
    ["JSON null", enc("null")],
    ["JSON array", enc("[]")],
    ["number", enc("1e999")],
    ["__proto__ pollution", enc(text.replace(/^\{/, '{"__proto__":{"ok":true,"status":"SUCCEEDED"},'))],
    ["duplicate members", enc(text.replace(/^\{/, '{"v":2,') )],
  ];
}

/** n hostile inputs built from the corpus, reproducibly. */
function hostileInputs(corpus: Uint8Array[], n: number, seed: number): Array<[string, Uint8Array]> {
  const arb = fc.oneof(
    { weight: 5, arbitrary: fc.tuple(fc.nat(), fc.array(mutationArb, { minLength: 1, maxLength: 5 })).map(([i, ops]) => [`bytes#${i % corpus.length}`, applyMutations(corpus[i % corpus.length], ops, corpus)] as [string, Uint8Array]) },
    { weight: 4, arbitrary: fc.tuple(fc.nat(), fc.array(jsonEditArb, { minLength: 1, maxLength: 3 })).map(([i, edits]) => {
      let b = corpus[i % corpus.length];
      for (const e of edits) b = editJson(utf8Decode(b), e);
      return [`json#${i % corpus.length}`, b] as [string, Uint8Array];
    }) },
    { weight: 1, arbitrary: fc.uint8Array({ maxLength: 3000 }).map((b) => ["random bytes", b] as [string, Uint8Array]) },
    { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 6 }).map((v) => ["random JSON", enc(JSON.stringify(v) ?? "null")] as [string, Uint8Array]) },
  );
  return fc.sample(arb, { numRuns: n, seed });
}

// ------------------------------------------------------------------ commands and access-list updates

const REASONS = new Set<string>(REASON_CODES);

test.serial("commands and access-list updates: mutated, generated and extreme inputs are refused with a reason and change nothing", (t) => {
  const clock = new ManualClock();
  const tb = new AccessTestbed({ clock, thing: "fuzz-porch" });
  const resident = tb.addUser("resident-1", "resident");
  const viewer = tb.addUser("viewer-1", "viewer");
  resident.gen = viewer.gen = tb.access.generation;
  tb.owner.gen = tb.access.generation;
  const guest = createUserKeys("guest-1", "viewer");
  // The corpus: one valid message of every kind, from every role.
  const made = [
    tb.owner.command("snapshot"), tb.owner.command("chime-test"), tb.owner.command("stream-start", { seconds: 30 }), tb.owner.command("stream-stop"),
    tb.owner.addUser(guest.identity), tb.owner.revoke("viewer-1"), tb.owner.revokeAll(),
    resident.command("snapshot"), resident.command("chime-test"), viewer.command("snapshot"), viewer.command("stream-start", { seconds: 600 }),
  ];
  const corpus = made.map((m) => m.payload);
  // Consume every counter the corpus uses, so an unmutated corpus message is a replay: nothing here may be accepted.
  for (const app of [tb.owner, resident, viewer] as UserApp[]) t.true(tb.send(app, app.command("snapshot")).ok);

  let inputs = 0;
  const problems: string[] = [];
  const reasons = new Map<string, number>();
  const check = (name: string, payload: Uint8Array) => {
    inputs++;
    const before = tb.snapshotState();
    let r;
    try {
      r = tb.access.handleCommand(payload);
    } catch (e) {
      return problems.push(`${name}: threw ${(e as Error).message}`);
    }
    if (r.ok) return problems.push(`${name}: accepted`);
    if (!REASONS.has(r.reason!)) return problems.push(`${name}: unknown reason ${r.reason}`);
    reasons.set(r.reason!, (reasons.get(r.reason!) ?? 0) + 1);
    try {
      const reply = readReply(r.reply).reply;
      if (reply.ok || reply.reason !== r.reason) problems.push(`${name}: reply disagrees`);
    } catch {
      problems.push(`${name}: reply is not canonical JSON`);
    }
    if (tb.snapshotState() !== before) problems.push(`${name}: state changed`);
  };
  for (const [name, payload] of extremes(corpus[4])) check(name, payload);
  for (const [name, payload] of hostileInputs(corpus, 2500, 0xc0ffee)) check(name, payload);

  // Counters above anything the corpus used (apps count in wall ms; the device refuses one further ahead than a command may live).
  let ctr = tb.now() + 60_000;
  // Owner-signed lists that are wrong in one way each: every one refused, the list unchanged.
  const users = tb.access.list.users() as AccessUser[];
  const gen = tb.access.generation;
  const ownerId = tb.ownerKeys.identity.id;
  const evil = createUserKeys("evil", "owner");
  const listCommand = (list: AccessUser[], listGen: number, edit?: (l: { v: number; thing: string; gen: number; users: AccessUser[] }) => void, signer = tb.ownerKeys.signSecretKey, resign = true) => {
    const signed = tb.owner.signList(list, listGen);
    if (edit) edit(signed.list);
    const signature = resign && (edit || signer !== tb.ownerKeys.signSecretKey) ? nacl.sign.detached(listSigningMessage(signed.list), signer) : signed.signature;
    return tb.owner.command("access-update", { list: signedListToJson({ list: signed.list, signature }) }, { ctr: ++ctr }).payload;
  };
  const badLists: Array<[string, () => Uint8Array]> = [
    ["same generation", () => listCommand(users, gen)],
    ["older generation", () => listCommand(users, gen - 1)],
    ["another thing", () => listCommand(users, gen + 1, (l) => { l.thing = "other-porch"; })],
    ["signed by someone else", () => listCommand(users, gen + 1, undefined, evil.signSecretKey)],
    ["signature over another list", () => listCommand(users, gen + 1, (l) => { l.users = l.users.filter((u) => u.role === "owner"); }, undefined, false)],
    ["no owner", () => listCommand(users.filter((u) => u.id !== ownerId), gen + 1)],
    ["two owners", () => listCommand([...users, evil.identity], gen + 1)],
    ["too many users", () => listCommand([...users, ...Array.from({ length: MAX_USERS }, (_, k) => createUserKeys(`u-${k}`, "viewer").identity)], gen + 1)],
    ["duplicate ids", () => listCommand([...users, { ...users[1] }], gen + 1)],
    ["a short box key", () => listCommand(users.map((u) => (u.role === "viewer" ? { ...u, boxPublicKey: u.boxPublicKey.subarray(0, 31) } : u)), gen + 1)],
    ["an unknown role", () => listCommand(users.map((u) => (u.role === "viewer" ? { ...u, role: "admin" as never } : u)), gen + 1)],
  ];
  const listBefore = JSON.stringify(tb.access.list.users().map((u) => [u.id, u.role, toHex(u.boxPublicKey)]));
  for (const [name, make] of badLists) {
    inputs++;
    let payload: Uint8Array;
    try {
      payload = make();
    } catch {
      continue; // the app refused to build it: fine, but then it is not an input
    }
    const r = tb.access.handleCommand(payload);
    if (r.ok) problems.push(`bad list accepted: ${name}`);
    else reasons.set(r.reason!, (reasons.get(r.reason!) ?? 0) + 1);
  }

  // Authenticated but hostile: bodies sealed with real keys (a compromised app), fresh counters.
  // Such a command consumes its counter (stored before acting, by design); nothing else may change.
  const sealers = [
    { app: tb.owner as UserApp, keys: userKeysFor(tb.device.publicKey, tb.ownerKeys.boxSecretKey) },
    { app: viewer, keys: userKeysFor(tb.device.publicKey, viewer.keys.boxSecretKey) },
  ];
  const otherState = () => tb.snapshotState().split("\n").filter((l) => !l.startsWith(`${REPLAY_KEY}=`)).join("\n");
  // The inner bytes are whatever a hostile app chooses: edited JSON or byte-mutated, canonical or not.
  const sealRaw = (inner: Uint8Array, from: string, key: Uint8Array) => {
    const n = nacl.randomBytes(24);
    return canonicalBytes({ box: toBase64Url(nacl.secretbox(inner, n, key)), from, n: toBase64Url(n), v: 1 });
  };
  const bodyArb = fc.tuple(fc.nat({ max: 1 }), fc.nat({ max: made.length - 1 }), fc.array(jsonEditArb, { minLength: 1, maxLength: 3 }), fc.array(mutationArb, { maxLength: 2 }));
  // Plus bodies with one top-level member set to a value of a plausible type, which get past the shape checks.
  const memberArb = fc.tuple(fc.nat({ max: 1 }), fc.nat({ max: made.length - 1 }), fc.constantFrom("ctr", "exp", "from", "gen", "op", "thing", "v", "seconds", "user", "list"), fc.constantFrom(...PLAUSIBLE))
    .map(([who, i, k, v]) => [who, i, [{ pick: 0, key: 0, value: v, mode: "set", member: k }], []] as unknown as [number, number, JsonEdit[], Mutation[]]);
  const authReasons = new Map<string, number>();
  const HARMLESS = ["snapshot", "chime-test", "stream-start", "stream-stop"];

  for (const [who, i, edits, mutations] of [...fc.sample(bodyArb, { numRuns: 800, seed: 0xb0d7 }), ...fc.sample(memberArb, { numRuns: 800, seed: 0xbeef })]) {
    const { app, keys } = sealers[who];
    // The owner may change the list, so a well-formed edit of an owner's list change would be a real one:
    // the owner's key seals only the harmless ops; the viewer's seals every op (list changes end "forbidden", the last check).
    if (who === 0 && !HARMLESS.includes(String(made[i].body.op))) continue;
    const original = { ...made[i].body, from: app.id, ctr: ++ctr };
    let body = canonicalBytes(original);
    for (const e of edits) {
      const member = (e as JsonEdit & { member?: string }).member;
      body = member ? canonicalBytes({ ...(JSON.parse(utf8Decode(body)) as Record<string, never>), [member]: e.value as never }) : editJson(utf8Decode(body), e);
    }
    body = applyMutations(body, mutations, corpus);
    let doc: unknown;
    try {
      doc = JSON.parse(utf8Decode(body));
    } catch {
      doc = undefined;
    }
    // An owner's body edited into a list change could be a genuine one: the viewer covers those.
    if (who === 0 && doc && typeof doc === "object" && !HARMLESS.includes(String((doc as { op?: unknown }).op))) continue;
    // An edit that changed nothing (or only to an equal value) leaves a genuine command, not a hostile one.
    try {
      if (doc !== undefined && utf8Decode(canonicalBytes(doc as never)) === utf8Decode(canonicalBytes(original))) continue;
    } catch {
      // not canonicalisable: certainly hostile
    }
    inputs++;
    const before = otherState();
    const r = tb.access.handleCommand(sealRaw(body, app.id, keys.command));
    if (r.ok) {
      // A well-formed command the edits happened not to break: allowed only for harmless ops (never list changes).
      const op = (doc as { op?: unknown }).op;
      if (!HARMLESS.includes(String(op))) problems.push(`authenticated edit accepted op ${String(op)} from ${app.id}`);
      tb.access.sessions.endUsers([app.id], "stopped");
      continue;
    }
    reasons.set(r.reason!, (reasons.get(r.reason!) ?? 0) + 1);
    authReasons.set(r.reason!, (authReasons.get(r.reason!) ?? 0) + 1);
    if (otherState() !== before) problems.push(`authenticated ${String((doc as { op?: unknown }).op)} refused (${r.reason}) but the list or keys changed`);
  }

  t.deepEqual(problems.slice(0, 20), []);
  t.is(JSON.stringify(tb.access.list.users().map((u) => [u.id, u.role, toHex(u.boxPublicKey)])), listBefore, "the access list never changed");
  t.is(tb.access.generation, gen);
  t.true(tb.send(resident, resident.command("snapshot")).ok, "the device still obeys a good command");

  totalInputs += inputs;
  t.log(`${inputs} command inputs; refusals by reason: ${[...reasons].map(([k, v]) => `${k} ${v}`).join(", ")}`);
  t.log(`of which sealed with a real user's key: ${[...authReasons].map(([k, v]) => `${k} ${v}`).join(", ")}`);
  t.deepEqual(problems.slice(0, 20), []);
  t.true(reasons.size >= 9, "the fuzz reached deep checks, not just the parser");
});

// ------------------------------------------------------------------ jobs and streams

const BOARD = "host/sim";
const A = releaseKeyFromSeed(new Uint8Array(32).fill(1));
const EVIL = releaseKeyFromSeed(new Uint8Array(32).fill(66));
const THING = "fuzz-porch";
const jobs = `$aws/things/${THING}/jobs`;
const streams = `$aws/things/${THING}/streams`;

class FakeSink implements UpdateSink, BootControl {
  opened = 0; written = 0; completed = 0; cancelled = 0; confirmed = 0; rolledBack = 0; restarted = 0;
  open() { this.opened++; }
  write(c: Uint8Array) { this.written += c.length; }
  complete() { this.completed++; }
  cancel() { this.cancelled++; }
  confirm() { this.confirmed++; }
  rollback() { this.rolledBack++; }
  restart() { this.restarted++; }
}

function agentWorld(o: { runningVersion?: number } = {}) {
  const clock = new ManualClock();
  const store = new MemoryStore();
  const sink = new FakeSink();
  const published: Array<{ topic: string; doc: Record<string, unknown> }> = [];
  const logs: string[] = [];
  const events: UpdateEvent[] = [];
  const log: Log = (level, message, fields) => logs.push(`${level} ${message} ${JSON.stringify(fields ?? {})}`);
  const agent = new UpdateAgent({
    thing: THING, board: BOARD, runningVersion: o.runningVersion ?? 3, releaseKeys: builtInKeys(A), store, sink, boot: sink, clock, log,
    recordTag: keyedTag("test", new Uint8Array(32).fill(7), (d) => nacl.hash(d)),
    createDigest: hostSha256, maxImageBytes: 64 * 1024, pollIntervalMs: 0, onEvent: (e) => events.push(e),
    publish: (topic, payload) => { published.push({ topic, doc: JSON.parse(Buffer.from(payload).toString()) as Record<string, unknown> }); return Promise.resolve(); },
  });
  agent.start();
  return { clock, store, sink, published, logs, events, agent };
}


const storeState = (s: KeyValueStore, except: string[] = []) => s.keys().filter((k) => !except.includes(k)).map((k) => `${k}=${toHex(s.read(k)!)}`).join("\n");
const execution = (jobId: string, doc: unknown) => ({ jobId, status: "QUEUED", queuedAt: 1, lastUpdatedAt: 1, versionNumber: 1, executionNumber: 1, jobDocument: doc });

test.serial("job documents: every mutated or hostile job is refused with a reason, nothing is written, nothing activates", async (t) => {
  const image = new Uint8Array(5000).fill(7);
  const wrongBoard = signImage(image, { key: A, version: 5, board: "other/board" });
  const downgrade = signImage(image, { key: A, version: 2, board: BOARD });
  const notNewer = signImage(image, { key: A, version: 3, board: BOARD });
  const unknownKey = signImage(image, { key: EVIL, version: 9, board: BOARD });
  const badSig = signImage(image, { key: A, version: 7, board: BOARD });
  badSig.sig = badSig.sig.slice(0, 10) + (badSig.sig[10] === "A" ? "B" : "A") + badSig.sig.slice(11);
  const docs = [
    firmwareJobDocument(wrongBoard, { id: "stream-1" }), firmwareJobDocument(downgrade, { id: "stream-1" }), firmwareJobDocument(notNewer, { id: "s2", version: 3 }),
    firmwareJobDocument(unknownKey, { id: "stream-1" }), firmwareJobDocument(badSig, { id: "stream-1", file: 2 }),
    keysJobDocument(rotateKeys(2, [A.publicKey, EVIL.publicKey], [EVIL])), keysJobDocument(rotateKeys(1, [A.publicKey], [A])),
  ];
  const messages: Array<[string, Uint8Array]> = [];
  docs.forEach((doc, i) => {
    messages.push([`${jobs}/notify-next`, enc(JSON.stringify({ timestamp: 1, execution: execution(`job-${i}`, doc) }))]);
    messages.push([`${jobs}/$next/get/accepted`, enc(JSON.stringify({ clientToken: "n1", timestamp: 1, execution: execution(`job-${i}`, doc) }))]);
  });
  messages.push([`${jobs}/$next/get/rejected`, enc(JSON.stringify({ code: "InvalidRequest", message: "x", clientToken: "n1" }))]);
  messages.push([`${jobs}/job-1/update/accepted`, enc(JSON.stringify({ clientToken: "t5", timestamp: 1, executionState: { status: "REJECTED" } }))]);
  messages.push([`${jobs}/job-1/update/rejected`, enc(JSON.stringify({ clientToken: "p3", code: "InvalidStateTransition", message: "x" }))]);
  messages.push([`${jobs}/notify-next`, enc(JSON.stringify({ timestamp: 1 }))]);
  const corpus = messages.map(([, p]) => p);
  const topicsByCorpus = messages.map(([topic]) => topic);

  const w = agentWorld();
  const guarded = () => storeState(w.store, [UPDATE_KV.done]);
  const problems: string[] = [];
  const outcome = { reported: 0, logged: 0, ignored: 0 };
  let inputs = 0;
  const deliver = (name: string, topic: string, payload: Uint8Array) => {
    inputs++;
    const before = guarded();
    const reportsBefore = w.published.filter((p) => p.topic.endsWith("/update") && p.doc.status !== "IN_PROGRESS").length;
    const logsBefore = w.logs.length;
    try {
      w.agent.onMessage(topic, payload);
      w.clock.advance(10); // the scheduled signature check
    } catch (e) {
      problems.push(`${name}: threw ${(e as Error).message}`);
    }
    const reports = w.published.filter((p) => p.topic.endsWith("/update") && p.doc.status !== "IN_PROGRESS");
    for (const r of reports.slice(reportsBefore)) {
      const d = r.doc.statusDetails as Record<string, unknown> | undefined;
      if (r.doc.status !== "REJECTED" && r.doc.status !== "FAILED") problems.push(`${name}: job ended ${String(r.doc.status)}`);
      if (typeof d?.reason !== "string" || !d.reason) problems.push(`${name}: report without a reason`);
    }
    const failed = w.logs.slice(logsBefore).find((l) => /handler failed|internal error/.test(l));
    if (failed) problems.push(`${name}: ${failed}`);
    if (reports.length > reportsBefore) outcome.reported++;
    else if (w.logs.length > logsBefore) outcome.logged++;
    else outcome.ignored++;
    if (guarded() !== before) problems.push(`${name}: update state changed`);
  };
  for (let i = 0; i < messages.length; i++) deliver(`corpus#${i}`, messages[i][0], messages[i][1]);
  for (const [name, payload] of extremes(corpus[0])) for (const topic of [`${jobs}/notify-next`, `${jobs}/$next/get/accepted`, `${jobs}/job-1/update/accepted`]) deliver(`${name} on ${topic}`, topic, payload);
  const generated = hostileInputs(corpus, 2000, 0x70b5);
  generated.forEach(([name, payload], i) => deliver(name, topicsByCorpus[i % topicsByCorpus.length], payload));
  // Topics inside the agent's namespace but not its own shapes.
  for (const topic of [`${jobs}`, `${jobs}/`, `${jobs}/notify-next/extra`, `${jobs}/+/update/accepted`, `${jobs}/${"x".repeat(300)}/update/accepted`, `${jobs}/job-1/update`, `${streams}/s/data/json/x`, `${streams}//data/json`]) deliver(`topic ${topic}`, topic, corpus[0]);
  await settle();

  t.is(w.sink.opened + w.sink.completed + w.sink.restarted + w.sink.confirmed + w.sink.rolledBack, 0, "no slot opened, nothing activated, no restart");
  t.is(w.agent.floor, 3);
  t.deepEqual(w.agent.trustedKeyIds, [A.keyId]);
  t.is(w.store.read(UPDATE_KV.state), undefined);
  totalInputs += inputs;
  t.log(`${inputs} job inputs: ${outcome.reported} refused with a job report, ${outcome.logged} refused in the log, ${outcome.ignored} ignored (no job in them, or a replay of one already answered)`);
  t.deepEqual(problems.slice(0, 20), []);
  t.true(outcome.reported > 100);
});

test.serial("stream data mid-download: hostile blocks end the job with a reason or are ignored; the image never activates", async (t) => {
  const BLOCK = 1024;
  const image = Uint8Array.from({ length: 2 * BLOCK + 100 }, (_, i) => (i * 13) & 255);
  const release = signImage(image, { key: A, version: 4, board: BOARD });
  const start = () => {
    const w = agentWorld();
    w.agent.onMessage(`${jobs}/notify-next`, enc(JSON.stringify({ timestamp: 1, execution: execution("fw-1", firmwareJobDocument(release, { id: "img" })) })));
    w.clock.advance(10);
    const req = w.published.find((p) => p.topic === `${streams}/img/get/json`);
    if (!req || w.sink.opened !== 1) throw new Error("download did not start");
    return { w, token: String(req.doc.c) };
  };
  let { w, token } = start();
  const blockMsg = (i: number, c = token) => enc(JSON.stringify({ c, f: 0, l: Math.min(BLOCK, image.length - i * BLOCK), i, p: Buffer.from(image.subarray(i * BLOCK, (i + 1) * BLOCK)).toString("base64") }));
  const corpus = [blockMsg(0), blockMsg(1), blockMsg(2), enc(JSON.stringify({ c: token, o: "ResourceNotFound", m: "gone" })), enc(JSON.stringify({ o: "VersionMismatch" }))];
  const topicFor = (i: number) => (i >= 3 ? `${streams}/img/rejected/json` : `${streams}/img/data/json`);
  const problems: string[] = [];
  let inputs = 0, restarts = 0;
  const endings = new Map<string, number>();
  const floorBefore = w.agent.floor;
  const deliver = (name: string, topic: string, payload: Uint8Array) => {
    inputs++;
    try {
      w.agent.onMessage(topic, payload);
      w.clock.advance(1);
    } catch (e) {
      problems.push(`${name}: threw ${(e as Error).message}`);
    }
    if (w.sink.completed || w.sink.restarted) problems.push(`${name}: the image was activated`);
    if (w.agent.status().phase === "idle") {
      const last = w.published.filter((p) => p.topic === `${jobs}/fw-1/update`).pop();
      const reason = String((last?.doc.statusDetails as Record<string, unknown> | undefined)?.reason ?? "");
      const failed = w.logs.slice(-3).find((l) => /handler failed|internal error/.test(l));
      if (failed) problems.push(`${name}: ${failed}`);
      else if (!last || (last.doc.status !== "REJECTED" && last.doc.status !== "FAILED") || !reason) problems.push(`${name}: the job ended without a refusal report: ${topic} ${Buffer.from(payload).toString().slice(0, 200)} // ${w.logs.slice(-3).join(" | ")}`);
      endings.set(`${String(last?.doc.status)} ${reason}`, (endings.get(`${String(last?.doc.status)} ${reason}`) ?? 0) + 1);
      if (w.store.read(UPDATE_KV.state) !== undefined) problems.push(`${name}: update state left behind`);
      if (w.sink.cancelled < 1) problems.push(`${name}: the partial image was not cancelled`);
      ({ w, token } = start());
      restarts++;
    }
  };
  for (const [name, payload] of extremes(corpus[0])) deliver(name, `${streams}/img/data/json`, payload);
  const generated = hostileInputs(corpus, 1500, 0x57e4);
  generated.forEach(([name, payload], i) => deliver(name, topicFor(i % corpus.length), payload));
  await settle();
  t.is(w.agent.floor, floorBefore);
  totalInputs += inputs;
  t.log(`${inputs} stream inputs; ${restarts} downloads ended by them: ${[...endings].map(([k, v]) => `${k} ×${v}`).join(", ")}`);
  t.deepEqual(problems.slice(0, 20), []);
  t.true(restarts > 10, "the fuzz reached the block checks");
});

// ------------------------------------------------------------------ the whole firmware's routing

function dirState(dir: string): string {
  const store = new FileStore(dir);
  return store.keys().map((k) => `${k}=${toHex(store.read(k)!)}`).join("\n");
}

test.serial("the firmware's routing: anything on any topic leaves flash and vault unchanged, and the bell still rings", async (t) => {
  t.timeout(120_000);
  const home = fs.mkdtempSync(path.join(os.tmpdir(), "dw-fuzz-fw-"));
  const thing = "fuzz-fw";
  await provisionIfNeeded(home, thing);
  const paths = devicePaths(home, thing);
  let handlers: MqttHandlers | undefined;
  const published: Array<{ topic: string; payload: Uint8Array }> = [];
  const transport: MqttTransport = {
    connect(h) { handlers = h; h.onConnect(); },
    publish(topic, payload) { published.push({ topic, payload }); return Promise.resolve(); },
    subscribe: () => Promise.resolve(),
    close() {},
  };
  const sink = new FakeSink();
  const fw = bootFirmware({
    clock: createHostClock(), random: hostRandom, vaultStore: new FileStore(paths.vaultDir), store: new FileStore(paths.nvsDir),
    keys: openKeyFile(paths.keyFile, { warn: () => {} }), log: () => {}, transport: () => transport, sha256: hostSha256,
    update: { board: BOARD, runningVersion: 3, releaseKeys: builtInKeys(A), sink, boot: sink, maxImageBytes: 64 * 1024 },
  }) as RunningFirmware;
  t.is(fw.state, "running");
  await settle();
  t.truthy(handlers);
  const corpusMessages: Array<[string, Uint8Array]> = [
    [`doorward/${thing}/commands`, enc(JSON.stringify({ box: "A".repeat(40), from: "owner", n: "A".repeat(32), v: 1 }))],
    [`$aws/things/${thing}/jobs/notify-next`, enc(JSON.stringify({ timestamp: 1, execution: execution("j-1", firmwareJobDocument(signImage(new Uint8Array(100), { key: A, version: 5, board: "x/y" }), { id: "s" })) }))],
    [`$aws/things/${thing}/streams/s/data/json`, enc(JSON.stringify({ c: "d1-1", f: 0, l: 4, i: 0, p: "AAAAAA==" }))],
    [`$aws/things/${thing}/shadow/update/delta`, enc(JSON.stringify({ version: 3, timestamp: 1, state: { chime: { volume: 11 } }, metadata: {} }))],
    [`$aws/things/${thing}/shadow/get/accepted`, enc(JSON.stringify({ state: { desired: { led: "off" } }, version: 1 }))],
  ];
  const strangeTopics = [
    `doorward/other-thing/commands`, `doorward/${thing}/events`, `doorward/${thing}/replies`, `doorward/${thing}/commands/x`, `doorward/${thing}`,
    `$aws/things/other/jobs/notify-next`, `$aws/things/${thing}/shadow/name/x/update/delta`, "", "#", "+/+", "/", "a".repeat(65535), "\u0000", "doorward/\ud800/commands", "$SYS/broker/uptime",
  ];
  const guardedNvs = () => dirState(paths.nvsDir).split("\n").filter((l) => !l.startsWith(`${UPDATE_KV.done}=`)).join("\n");
  const vaultBefore = dirState(paths.vaultDir);
  const problems: string[] = [];
  let inputs = 0;
  const deliver = async (name: string, topic: string, payload: Uint8Array) => {
    inputs++;
    const before = guardedNvs();
    const repliesBefore = published.filter((p) => p.topic === `doorward/${thing}/replies`).length;
    try {
      handlers!.onMessage(topic, payload);
    } catch (e) {
      problems.push(`${name} on ${topic.slice(0, 60)}: threw ${(e as Error).message}`);
    }
    await settle(); // PUBACKs for the replies, as a socket would deliver them
    if (topic === `doorward/${thing}/commands`) {
      const replies = published.filter((p) => p.topic === `doorward/${thing}/replies`);
      if (replies.length !== repliesBefore + 1) problems.push(`${name}: no reply to a command`);
      else {
        const reply = readReply(replies[replies.length - 1].payload).reply;
        if (reply.ok || !REASONS.has(String(reply.reason))) problems.push(`${name}: reply ${JSON.stringify(reply)}`);
      }
    }
    if (guardedNvs() !== before) problems.push(`${name} on ${topic.slice(0, 60)}: flash changed`);
  };
  for (const [topic, payload] of corpusMessages) await deliver("corpus", topic, payload);
  for (const topic of strangeTopics) for (const [, payload] of corpusMessages) await deliver("strange topic", topic, payload);
  for (const [topic] of corpusMessages) for (const [name, payload] of extremes(corpusMessages[0][1])) await deliver(name, topic, payload);
  const generated = hostileInputs(corpusMessages.map(([, p]) => p), 1200, 0xf1f0);
  for (let i = 0; i < generated.length; i++) await deliver(generated[i][0], corpusMessages[i % corpusMessages.length][0], generated[i][1]);
  const topicArb = fc.oneof(fc.string({ maxLength: 80 }), fc.array(fc.constantFrom("doorward", thing, "$aws", "things", "jobs", "streams", "shadow", "commands", "+", "#", "", "notify-next", "data", "json"), { maxLength: 8 }).map((p) => p.join("/")));
  for (const topic of fc.sample(topicArb, { numRuns: 400, seed: 0x7091c })) await deliver("generated topic", topic, corpusMessages[inputs % corpusMessages.length][1]);
  await settle();
  await new Promise((r) => setTimeout(r, 50));

  t.is(dirState(paths.vaultDir), vaultBefore, "the vault is byte for byte unchanged");
  t.is(sink.opened + sink.completed + sink.restarted, 0);
  const ring = fw.doorbell.press();
  await ring.acked;
  t.true(published.some((p) => p.topic === `doorward/${thing}/events` && Buffer.from(p.payload).equals(Buffer.from(ring.payload))), "the bell still rings");
  fw.stop();
  totalInputs += inputs;
  t.log(`${inputs} inputs through the firmware's routing (${strangeTopics.length} strange topics × corpus, generated topics, extremes, mutations)`);
  t.deepEqual(problems.slice(0, 20), []);
});

test("a stream rejection whose code holds a lone surrogate still gets its FAILED report to the cloud", (t) => {
  const w = agentWorld();
  const image = new Uint8Array(3000).fill(1);
  w.agent.onMessage(`${jobs}/notify-next`, enc(JSON.stringify({ timestamp: 1, execution: execution("fw-9", firmwareJobDocument(signImage(image, { key: A, version: 4, board: BOARD }), { id: "img" })) })));
  w.clock.advance(10);
  t.is(w.sink.opened, 1);
  w.agent.onMessage(`${streams}/img/rejected/json`, enc('{"o":"\\ud800x","m":"gone"}'));
  const last = w.published.filter((p) => p.topic === `${jobs}/fw-9/update`).pop();
  t.is(last?.doc.status, "FAILED", `last report: ${JSON.stringify(last?.doc)}; log: ${w.logs.slice(-1).join("")}`);
});

test("a stream block whose length field cannot be turned into text ends the download at once, not at the timeout", (t) => {
  const w = agentWorld();
  const image = new Uint8Array(3000).fill(1);
  w.agent.onMessage(`${jobs}/notify-next`, enc(JSON.stringify({ timestamp: 1, execution: execution("fw-8", firmwareJobDocument(signImage(image, { key: A, version: 4, board: BOARD }), { id: "img" })) })));
  w.clock.advance(10);
  t.is(w.sink.opened, 1);
  const request = w.published.filter((p) => p.topic === `${streams}/img/get/json`).pop();
  t.truthy(request, "the agent asked for blocks");
  // {"toString":1}: String() of it throws (its toString is not callable and valueOf gives an object).
  w.agent.onMessage(`${streams}/img/data/json`, enc(JSON.stringify({ c: request!.doc.c, f: 0, i: 0, l: { toString: 1 }, p: "AAAA" })));
  const last = w.published.filter((p) => p.topic === `${jobs}/fw-8/update`).pop();
  t.is(last?.doc.status, "FAILED", `last report: ${JSON.stringify(last?.doc)}; log: ${w.logs.slice(-2).join(" | ")}`);
  t.is(w.sink.cancelled, 1, "the partial image is cancelled");
});

test.after.always("no exception reached the event loop", () => {
  if (escaped.length) throw new Error(`escaped to the event loop:\n${escaped.slice(0, 5).join("\n")}`);
});

test.serial("fuzz inputs, in total (runs last)", (t) => {
  t.log(`${totalInputs} hostile inputs tried across all inbound surfaces`);
  t.deepEqual(escaped, []);
  t.true(totalInputs > 8000);
});
