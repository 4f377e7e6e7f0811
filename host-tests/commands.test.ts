/*
 * Command authentication and dispatch: every reason code, replay (also across a
 * reboot), the permission table, sealed replies, and hostile bytes of every kind
 * (fast-check) giving a clean refusal with every stored byte unchanged.
 */
import test from "ava";
import fc from "fast-check";
import nacl from "tweetnacl";
import { AccessTestbed, ManualClock, createUserKeys, OwnerApp, UserApp } from "../tools/owner-app";
import { AccessControl, MAX_COMMAND_BYTES, PERMISSIONS, REASON_CODES, readReply, sealCommand, type Op, type CommandBody } from "../modules/core/commands";
import { userKeysFor, signedListToJson } from "../modules/core/access";
import { canonicalBytes, parseCanonical } from "../modules/core/canonical";
import { fromBase64Url, toBase64Url, utf8Decode, utf8Encode } from "../modules/core/bytes";
import type { KeyValueStore } from "../modules/core/ports";

function bed() {
  const clock = new ManualClock();
  const tb = new AccessTestbed({ clock });
  const resident = tb.addUser("resident-1", "resident");
  const viewer = tb.addUser("viewer-1", "viewer");
  resident.gen = viewer.gen = tb.access.generation;
  return { tb, clock, resident, viewer };
}

test("accepted commands produce their action and a reply sealed for the sender", (t) => {
  const { tb, viewer, resident } = bed();
  const snap = tb.send(viewer, viewer.command("snapshot"));
  t.true(snap.ok, snap.detail);
  t.deepEqual(snap.action, { type: "snapshot", user: "viewer-1" });
  t.true(snap.read.authenticated, "the viewer's app must be able to check the device's seal");
  t.is(snap.read.reply.from, "viewer-1");
  t.is(snap.read.reply.op, "snapshot");
  // Another user's reply key does not authenticate it: the seal is per user.
  t.false(resident.read(snap.reply).authenticated);
  const chime = tb.send(resident, resident.command("chime-test"));
  t.deepEqual(chime.action, { type: "chime-test", user: "resident-1" });
  // The cloud sees the reason code in clear but cannot read commands.
  const envelope = parseCanonical(resident.command("chime-test").payload, 4096) as Record<string, string>;
  t.deepEqual(Object.keys(envelope).sort(), ["box", "from", "n", "v"]);
  t.false(Buffer.from(fromBase64Url(envelope.box)).toString("latin1").includes("chime"));
});

test("malformed: garbage, wrong envelope shapes, bad bodies and far-future expiry", (t) => {
  const { tb, viewer, clock } = bed();
  const before = tb.snapshotState();
  const garbage = [
    new Uint8Array(0),
    utf8Encode("{"),
    utf8Encode("null"),
    utf8Encode('{"box":"x","from":"viewer-1","n":"y","v":1}'),
    utf8Encode('{"from":"viewer-1","v":1}'),
    utf8Encode('{ "box":"AAAAAAAAAAAAAAAAAAAAAAAA","from":"viewer-1","n":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","v":1}'),
    new Uint8Array(MAX_COMMAND_BYTES + 1).fill(0x20),
  ];
  for (const g of garbage) {
    const r = tb.access.handleCommand(g);
    t.is(r.reason, "malformed", utf8Decode(g.subarray(0, 60)));
    t.false(r.ok);
  }
  // Authenticated, but the body is wrong: an extra member, a wrong type, an unknown op.
  const keys = userKeysFor(tb.device.publicKey, (viewer as unknown as { keys: { boxSecretKey: Uint8Array } }).keys.boxSecretKey);
  const good = viewer.command("snapshot").body;
  const variants: Array<Record<string, unknown>> = [
    { ...good, extra: 1 },
    { ...good, ctr: "7" },
    { ...good, op: "self-destruct" },
    { ...good, gen: 0 },
    { ...good, op: "stream-start" },
    { ...good, op: "stream-start", seconds: 601 },
    { ...good, op: "revoke", user: "Not An Id" },
  ];
  for (const body of variants) {
    const payload = sealCommand(body as CommandBody, keys.command, nacl.randomBytes(24));
    const r = tb.access.handleCommand(payload);
    t.is(r.reason, "malformed", JSON.stringify(body));
  }
  // A body naming another sender than its envelope (sealed under the viewer's key, envelope says viewer-1).
  const sealed = parseCanonical(sealCommand({ ...good, from: "resident-1" }, keys.command, nacl.randomBytes(24)), 4096) as Record<string, string | number>;
  t.is(tb.access.handleCommand(canonicalBytes({ ...sealed, from: "viewer-1" })).reason, "malformed");
  const far = tb.send(viewer, viewer.command("snapshot", {}, { exp: clock.wallTime()! + 11 * 60_000 }));
  t.is(far.reason, "malformed");
  t.is(far.detail, "expiry too far ahead");
  t.is(tb.snapshotState(), before, "refusals change nothing");
});

test("unknown-sender, bad-mac (tampering and impersonation) and wrong-thing", (t) => {
  const { tb, viewer } = bed();
  const before = tb.snapshotState();
  const stranger = tb.app(createUserKeys("stranger", "owner"));
  t.is(tb.send(stranger, stranger.command("snapshot")).reason, "unknown-sender");

  const made = viewer.command("snapshot");
  const env = parseCanonical(made.payload, 4096) as Record<string, string | number>;
  const box = fromBase64Url(env.box as string);
  box[box.length - 1] ^= 1;
  const tampered = utf8Encode(JSON.stringify({ box: toBase64Url(box), from: env.from, n: env.n, v: 1 }));
  t.is(tb.access.handleCommand(tampered).reason, "bad-mac");
  // The right id with someone else's key: impersonation fails on the MAC.
  const impostorKeys = createUserKeys("viewer-1", "owner");
  const impostor = tb.app(impostorKeys);
  const imp = tb.send(impostor, impostor.command("revoke-all"));
  t.is(imp.reason, "bad-mac");
  t.false(imp.read.authenticated, "no seal for an unauthenticated sender");
  // Rebinding the box to another sender id also fails.
  const rebound = utf8Encode(JSON.stringify({ box: env.box, from: "resident-1", n: env.n, v: 1 }));
  t.is(tb.access.handleCommand(rebound).reason, "bad-mac");

  const elsewhere = new UserApp({ keys: (viewer as unknown as { keys: never }).keys, thing: "porch-2", deviceBoxPublicKey: tb.device.publicKey, gen: tb.access.generation, now: () => tb.now() });
  t.is(tb.send(elsewhere, elsewhere.command("snapshot")).reason, "wrong-thing");
  t.is(tb.snapshotState(), before);
});

test("stale-generation, both ways, and the app recovers from the reply", (t) => {
  const { tb, viewer } = bed();
  const gen = tb.access.generation;
  const old = tb.send(viewer, viewer.command("snapshot", {}, { gen: gen - 1 }));
  t.is(old.reason, "stale-generation");
  t.is(old.read.reply.gen, gen, "the reply tells the current generation");
  const ahead = tb.send(viewer, viewer.command("snapshot", {}, { gen: gen + 1 }));
  t.is(ahead.reason, "stale-generation");
  viewer.gen = 1;
  tb.send(viewer, viewer.command("snapshot"));
  t.is(viewer.gen, gen, "the app learned the generation from the sealed reply");
  t.true(tb.send(viewer, viewer.command("snapshot")).ok);
});

test("expired, and no trusted time yet", (t) => {
  const { tb, viewer, clock } = bed();
  const made = viewer.command("snapshot");
  clock.advance(61_000);
  const r = tb.send(viewer, made);
  t.is(r.reason, "expired");
  const noTime = new AccessTestbed({ clock: new ManualClock(null) });
  const ownerNoTime = noTime.owner;
  t.is(noTime.send(ownerNoTime, ownerNoTime.command("snapshot", {}, { exp: Date.now() + 1000 })).reason, "expired");
});

test("replay: the same command twice, an older counter, and a replay after a reboot", (t) => {
  const { tb, viewer, clock } = bed();
  const first = viewer.command("snapshot");
  const older = viewer.command("snapshot", {}, { ctr: first.body.ctr - 5 });
  t.true(tb.send(viewer, first).ok);
  t.is(tb.send(viewer, first).reason, "replay");
  t.is(tb.send(viewer, older).reason, "replay");
  const next = viewer.command("snapshot");
  t.true(tb.send(viewer, next).ok);
  // A reboot (which takes a few seconds) forgets the RAM marks, but a counter stamped before the boot began is refused.
  clock.advance(3000);
  tb.boot();
  const again = tb.send(viewer, next);
  t.is(again.reason, "replay");
  t.is(tb.send(viewer, first).reason, "replay");
  t.true(typeof again.read.reply.next === "number" && again.read.reply.next > next.body.ctr, "the sealed refusal names the next counter");
  t.true(tb.send(viewer, viewer.command("snapshot")).ok);
});

test("forbidden: every op a role lacks is refused, every op it has is accepted", (t) => {
  const { tb, resident, viewer } = bed();
  const ops: Op[] = ["snapshot", "chime-test", "stream-start", "stream-stop", "revoke", "revoke-all"];
  const args: Partial<Record<Op, Record<string, never> | { seconds: number } | { user: string }>> = { "stream-start": { seconds: 5 }, revoke: { user: "nobody" } };
  for (const [app, role] of [[viewer, "viewer"], [resident, "resident"]] as const) {
    for (const op of ops) {
      const r = tb.send(app, app.command(op, (args[op] ?? {}) as never));
      if (PERMISSIONS[op].includes(role)) t.not(r.reason, "forbidden", `${role} ${op}`);
      else t.is(r.reason, "forbidden", `${role} ${op}`);
    }
  }
  // A viewer may not grant anything either, even with a perfectly signed list.
  const forged = tb.owner.signList([...tb.owner.users, createUserKeys("mallory", "resident").identity], tb.access.generation + 1);
  t.is(tb.send(viewer, viewer.command("access-update", { list: signedListToJson(forged) })).reason, "forbidden");
  t.is(tb.access.list.users().length, 3);
});

test("busy: live sessions are bounded", (t) => {
  const { tb, resident, viewer } = bed();
  t.true(tb.send(viewer, viewer.command("stream-start", { seconds: 30 })).ok);
  t.true(tb.send(resident, resident.command("stream-start", { seconds: 30 })).ok);
  const r = tb.send(tb.owner, tb.owner.command("stream-start", { seconds: 30 }));
  t.is(r.reason, "busy");
  t.is(tb.access.sessions.active().length, 2);
});

test("accepted commands write no flash: they work on a store that refuses every write", (t) => {
  const { tb, viewer } = bed();
  const store = tb.store as KeyValueStore;
  const write = store.write.bind(store);
  store.write = () => {
    throw new Error("flash worn out");
  };
  const r = tb.send(viewer, viewer.command("snapshot"));
  t.true(r.ok, r.detail);
  t.is(r.action?.type, "snapshot");
  store.write = write;
  t.true(tb.send(viewer, viewer.command("snapshot")).ok);
});

test("every reply is canonical JSON naming a known reason", (t) => {
  const { tb, viewer } = bed();
  for (const payload of [utf8Encode("[]"), viewer.command("snapshot").payload]) {
    const r = tb.access.handleCommand(payload);
    const { reply } = readReply(r.reply);
    t.is(reply.thing, "porch-1");
    if (!reply.ok) t.true(REASON_CODES.includes(reply.reason!));
  }
});

// ---- hostile input ----

const REASONS = new Set<string>(REASON_CODES);

function checkHostile(tb: AccessTestbed, payload: Uint8Array): string | undefined {
  const before = tb.snapshotState();
  let r;
  try {
    r = tb.access.handleCommand(payload);
  } catch (e) {
    return `threw ${(e as Error).message}`;
  }
  if (r.ok) return "accepted hostile input";
  if (!REASONS.has(r.reason!)) return `unknown reason ${r.reason}`;
  let reply;
  try {
    reply = readReply(r.reply).reply;
  } catch {
    return "reply is not canonical";
  }
  if (reply.ok || reply.reason !== r.reason) return "reply disagrees with the outcome";
  if (tb.snapshotState() !== before) return "state changed";
  return undefined;
}

test("fast-check: arbitrary bytes, JSON values and mutated commands are refused cleanly with state unchanged", (t) => {
  const { tb, viewer } = bed();
  const valid = viewer.command("snapshot").payload;
  const validText = utf8Decode(valid);
  const mutate = fc.oneof(
    fc.uint8Array({ maxLength: 5000 }),
    fc.jsonValue({ maxDepth: 6 }).map((v) => utf8Encode(JSON.stringify(v) ?? "null")),
    fc.record({ i: fc.nat(), b: fc.integer({ min: 0, max: 255 }) }).map(({ i, b }) => {
      const m = valid.slice();
      m[i % m.length] ^= b || 1;
      return m;
    }),
    fc.nat().map((i) => valid.slice(0, i % valid.length)),
    fc.tuple(fc.constantFrom("box", "from", "n", "v"), fc.jsonValue({ maxDepth: 4 })).map(([k, v]) => {
      const o = JSON.parse(validText) as Record<string, unknown>;
      o[k] = v;
      return utf8Encode(JSON.stringify(o));
    }),
    fc.tuple(fc.string(), fc.jsonValue({ maxDepth: 3 })).map(([k, v]) => {
      const o = JSON.parse(validText) as Record<string, unknown>;
      o[k] = v;
      return utf8Encode(JSON.stringify(o));
    }),
  );
  // The valid command must be a "replay" after its first use, so nothing here can be accepted.
  t.true(tb.access.handleCommand(valid).ok);
  fc.assert(
    fc.property(mutate, (payload) => {
      const problem = checkHostile(tb, payload);
      if (problem) throw new Error(problem);
    }),
    { numRuns: 600, seed: 0x5eed },
  );
  t.pass();
});

test("fast-check: authenticated bodies of arbitrary shape never throw or change state unless well formed", (t) => {
  const { tb, viewer } = bed();
  const owner = tb.owner;
  const ownerKeys = userKeysFor(tb.device.publicKey, owner.keys.boxSecretKey);
  const base = owner.command("snapshot").body;
  let ctr = base.ctr;
  let refused = 0;
  const field = fc.constantFrom("ctr", "exp", "from", "gen", "op", "thing", "v", "seconds", "user", "list", "x");
  fc.assert(
    fc.property(field, fc.jsonValue({ maxDepth: 5 }), (k, v) => {
      // A stale generation voids the command whatever else it says, so only owner-MACed garbage reaches the body checks.
      const body = { ...base, ctr: ++ctr, [k]: v } as Record<string, unknown>;
      const before = tb.snapshotState();
      const r = tb.access.handleCommand(sealCommand(body as CommandBody, ownerKeys.command, nacl.randomBytes(24)));
      if (!REASONS.has(r.reason ?? "malformed")) throw new Error(`bad reason ${r.reason}`);
      if (!r.ok && tb.snapshotState() !== before) throw new Error(`refused (${r.reason}) but state changed`);
      if (!r.ok) refused++;
      if (r.ok && !["snapshot", "chime-test", "stream-stop", "revoke-all"].includes(String(body.op))) throw new Error(`accepted ${String(body.op)}`);
    }),
    { numRuns: 400, seed: 0xd00d },
  );
  t.true(refused > 300, `only ${refused} of 400 refused`);
  t.is(tb.access.list.users().length, 3, "no fuzzed body changed the list");
  t.truthy(viewer);
});

test("hostile extremes: 128 KB, deep nesting, truncated UTF-8, lone surrogates, __proto__", (t) => {
  const { tb, viewer } = bed();
  const valid = viewer.command("snapshot").payload;
  const cases: Array<[string, Uint8Array]> = [
    ["128 KB", new Uint8Array(128 * 1024).fill(0x7b)],
    ["128 KB of JSON", utf8Encode(JSON.stringify({ box: "A".repeat(128 * 1024), from: "viewer-1", n: "A".repeat(32), v: 1 }))],
    ["deep arrays", utf8Encode("[".repeat(3000) + "]".repeat(3000))],
    ["deep objects", utf8Encode('{"a":'.repeat(800) + "1" + "}".repeat(800))],
    ["deep inside a member", utf8Encode('{"box":' + "[".repeat(1000) + "]".repeat(1000) + ',"from":"viewer-1","n":"x","v":1}')],
    ["truncated UTF-8", new Uint8Array([...valid.subarray(0, valid.length - 1), 0xe2, 0x82])],
    ["invalid UTF-8", new Uint8Array([0x7b, 0xff, 0xfe, 0x7d])],
    ["lone surrogate escape", utf8Encode('{"box":"\\ud800","from":"viewer-1","n":"A","v":1}')],
    ["__proto__", utf8Encode('{"__proto__":{"ok":true},"box":"A","from":"viewer-1","n":"A","v":1}')],
    ["constructor id", utf8Encode('{"box":"AAAAAAAAAAAAAAAAAAAAAAAA","from":"constructor","n":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","v":1}')],
    ["numbers", utf8Encode('{"box":1e400,"from":-0,"n":NaN,"v":1}')],
  ];
  for (const [name, payload] of cases) {
    const problem = checkHostile(tb, payload);
    t.is(problem, undefined, name);
    const r = tb.access.handleCommand(payload);
    t.true(["malformed", "unknown-sender"].includes(r.reason!), `${name}: ${r.reason}`);
  }
  t.true(tb.send(viewer, viewer.command("snapshot")).ok, "still works after all that");
});

test("owner app and device agree on keys; another device's key gives other keys", (t) => {
  const a = createUserKeys("alice", "resident");
  const dev = nacl.box.keyPair();
  const other = nacl.box.keyPair();
  const onDevice = userKeysFor(a.identity.boxPublicKey, dev.secretKey);
  const inApp = userKeysFor(dev.publicKey, a.boxSecretKey);
  t.deepEqual(onDevice, inApp);
  t.notDeepEqual(userKeysFor(other.publicKey, a.boxSecretKey).command, inApp.command);
  t.notDeepEqual(inApp.command, inApp.reply);
  t.notDeepEqual(inApp.reply, inApp.footage);
});

test("a fresh device enrols the provisioned owner at generation 1; a reboot keeps the list", (t) => {
  const tb = new AccessTestbed();
  t.is(tb.access.generation, 1);
  t.deepEqual(tb.access.list.users().map((u) => [u.id, u.role]), [["owner", "owner"]]);
  t.true(tb.send(tb.owner, tb.owner.command("snapshot")).ok);
  tb.addUser("bob", "viewer");
  const gen = tb.access.generation;
  const again: AccessControl = tb.boot({ owner: createUserKeys("someone-else", "owner").identity });
  t.is(again.generation, gen);
  t.deepEqual(again.list.users().map((u) => u.id), ["owner", "bob"], "provisioning input is ignored once a list is stored");
  t.true(OwnerApp.prototype instanceof UserApp);
});
