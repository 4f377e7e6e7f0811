/*
 * Command checking on the real XS engine: the same payloads through the same
 * core on XS and on Node give byte-identical replies, and the XS meter gives the
 * device-side cost of each step (enrolment, a grant with its Ed25519 verify, a
 * command check, each cheap refusal, a revocation, a content-key wrap). A full
 * tweetnacl sign and verify are metered in the same worker for calibration
 * against the instruction counts in /work/shared/facts/xs-crypto-costs.md.
 */
import test from "ava";
import { AccessControl } from "../modules/core/commands";
import { fromBase64Url, toBase64Url, utf8Decode } from "../modules/core/bytes";
import { canonicalBytes, parseCanonical } from "../modules/core/canonical";
import { MemoryStore, SeededRandom } from "../tools/xs/deterministic";
import { MemorySecretStore, OwnerApp, UserApp, createUserKeys } from "../tools/owner-app";
import { startXsCore } from "../tools/xs/core";
import nacl from "tweetnacl";
import type { Clock } from "../modules/core/ports";

const THING = "porch-xs";
const NOW = 1_780_000_000_000;
const DEVICE_SEED = 0x0d00b0e1;

function scenario() {
  const keyRandom = new SeededRandom(1234);
  const deviceSecret = new Uint8Array(32);
  keyRandom.fill(deviceSecret);
  const devicePublic = nacl.box.keyPair.fromSecretKey(deviceSecret).publicKey;
  const ownerKeys = createUserKeys("owner", "owner", keyRandom);
  const viewerKeys = createUserKeys("viewer-1", "viewer", keyRandom);
  const strangerKeys = createUserKeys("stranger", "resident", keyRandom);
  const now = () => NOW;
  const appRandom = new SeededRandom(5678);
  const owner = new OwnerApp({ keys: ownerKeys, thing: THING, deviceBoxPublicKey: devicePublic, now, random: appRandom });
  const viewer = new UserApp({ keys: viewerKeys, thing: THING, deviceBoxPublicKey: devicePublic, now, random: appRandom, gen: 2 });
  const stranger = new UserApp({ keys: strangerKeys, thing: THING, deviceBoxPublicKey: devicePublic, now, random: appRandom });
  const grant = owner.addUser(viewerKeys.identity).payload;
  const snapshot = viewer.command("snapshot").payload;
  const env = parseCanonical(viewer.command("snapshot").payload, 4096) as Record<string, string | number>;
  const box = fromBase64Url(env.box as string);
  box[3] ^= 1;
  const badMac = canonicalBytes({ ...env, box: toBase64Url(box) });
  const unknown = stranger.command("snapshot").payload;
  const garbage = new Uint8Array(4000).fill(0x5b);
  const madeBeforeRevoke = viewer.command("snapshot").payload;
  owner.gen = 2;
  const revoke = owner.revoke("viewer-1").payload;
  const steps: Array<[string, Uint8Array]> = [
    ["grant: add a viewer (owner MAC + Ed25519 verify + box.before)", grant],
    ["command check + accept (viewer snapshot)", snapshot],
    ["refusal: replay of that command", snapshot],
    ["refusal: bad-mac", badMac],
    ["refusal: unknown-sender", unknown],
    ["refusal: 4000 B of '[' (malformed)", garbage],
    ["revoke one user (owner MAC, no signature)", revoke],
    ["refusal: revoked sender", madeBeforeRevoke],
  ];
  return { deviceSecret, ownerIdentity: ownerKeys.identity, steps };
}

function nodeReplies(s: ReturnType<typeof scenario>): { enrolReply: number; replies: Uint8Array[]; wrap: Uint8Array[] } {
  const clock: Clock = { monotonic: () => 0, wallTime: () => NOW, schedule: () => () => {} };
  const access = new AccessControl({
    thing: THING, secrets: new MemorySecretStore(), store: new MemoryStore(), random: new SeededRandom(DEVICE_SEED), clock, log: () => {},
    deviceBoxSecretKey: s.deviceSecret, owner: s.ownerIdentity,
  });
  const replies = s.steps.map(([, p]) => access.handleCommand(p).reply);
  const wrap = access.wrapContentKey(new Uint8Array(32).fill(7)).keys.map((k) => k.wrapped);
  return { enrolReply: access.generation, replies, wrap };
}

test("command checks on XS: identical replies to Node, and their meter cost", async (t) => {
  const s = scenario();
  const onNode = nodeReplies(s);
  const xs = await startXsCore({ name: "xs-commands", stdout: "ignore" });
  t.teardown(() => xs.close());

  await xs.run(`
    const { AccessControl } = importNow("core/commands");
    const { MemoryStore, SeededRandom } = importNow("harness/deterministic");
    state.nacl = importNow("tweetnacl").default;
    const m = new Map();
    state.secrets = { get: (n) => { const v = m.get(n); return v && v.slice(); }, set: (n, v) => { m.set(n, v.slice()); }, delete: (n) => { m.delete(n); } };
    state.options = {
      thing: args.thing, secrets: state.secrets, store: new MemoryStore(), random: new SeededRandom(args.seed),
      clock: { monotonic: () => 0, wallTime: () => args.now, schedule: () => () => {} }, log: () => {},
      deviceBoxSecretKey: args.deviceSecret, owner: args.owner,
    };
    state.AccessControl = AccessControl;
    state.message = new Uint8Array(200).map((_, i) => (i * 13 + 1) & 255);
    state.signKeys = state.nacl.sign.keyPair.fromSeed(new Uint8Array(32).fill(9));`,
  { thing: THING, seed: DEVICE_SEED, now: NOW, deviceSecret: s.deviceSecret, owner: s.ownerIdentity });

  const costs: Array<[string, number]> = [];
  const enrol = await xs.run<number>(`state.access = new state.AccessControl(state.options); return state.access.generation;`);
  t.is(enrol.value, 1);
  costs.push(["enrol owner at first boot (box.before + key derivation + 2 stores)", enrol.meter.body]);
  for (let i = 0; i < s.steps.length; i++) {
    const [name, payload] = s.steps[i];
    const r = await xs.run<{ reply: Uint8Array; ok: boolean; reason?: string }>(`const o = state.access.handleCommand(args); return { reply: o.reply, ok: o.ok, reason: o.reason };`, payload);
    t.is(utf8Decode(r.value.reply), utf8Decode(onNode.replies[i]), `${name}: XS and Node replies differ`);
    costs.push([`${name} → ${r.value.ok ? "ok" : r.value.reason}`, r.meter.body]);
  }
  const wrap = await xs.run<Uint8Array[]>(`return state.access.wrapContentKey(new Uint8Array(32).fill(7)).keys.map((k) => k.wrapped);`);
  t.deepEqual(wrap.value, onNode.wrap);
  costs.push(["wrapContentKey, 1 recipient (owner)", wrap.meter.body]);
  const sign = await xs.run(`state.sig = state.nacl.sign.detached(state.message, state.signKeys.secretKey); return true;`);
  const verify = await xs.run<boolean>(`return state.nacl.sign.detached.verify(state.message, state.sig, state.signKeys.publicKey);`);
  t.true(verify.value);
  const before = await xs.run(`return state.nacl.box.before(state.signKeys.publicKey, new Uint8Array(32).fill(3)).length;`);

  // Calibration: facts file has nacl-fast sign (200 B) = 870 M x86 instructions; ESP32 model = 1 instruction per cycle at 240 MHz.
  const perUnit = 870e6 / sign.meter.body;
  const fmt = (units: number) => {
    const instr = units * perUnit;
    return `${(units / 1e6).toFixed(3).padStart(8)} M units ≈ ${(instr / 1e6).toFixed(1).padStart(7)} M instr ≈ ${(instr / 240e6 * 1000).toFixed(1).padStart(7)} ms ESP32 model`;
  };
  t.log(`XS meter, calibrated by nacl.sign.detached (${(sign.meter.body / 1e6).toFixed(2)} M units = 870 M instr → ${perUnit.toFixed(1)} instr/unit):`);
  for (const [name, units] of costs) t.log(`  ${fmt(units)}  ${name}`);
  t.log(`  ${fmt(verify.meter.body)}  reference: nacl.sign.detached.verify, 200 B`);
  t.log(`  ${fmt(before.meter.body)}  reference: nacl.box.before`);

  const check = costs.find(([n]) => n.startsWith("command check"))![1];
  const revoke = costs.find(([n]) => n.startsWith("revoke one"))![1];
  const grant = costs.find(([n]) => n.startsWith("grant"))![1];
  // The design rests on these.
  t.true(check * 20 < verify.meter.body, "a command check must cost under a twentieth of an Ed25519 verify");
  t.true(revoke * 10 < verify.meter.body, "the revoke path must not contain an Ed25519 verify");
  t.true(grant > verify.meter.body, "the grant path does verify the owner's signature");
  t.true(revoke * perUnit / 240e6 < 1, "a revocation must fit in one second by the model");
});
