/*
 * What checking a command costs on XS, for the tests and for `npm run bench`:
 * one scenario (owner, a viewer, a stranger) whose commands run through the
 * core's AccessControl inside the XS engine, each step metered on its own. A
 * full tweetnacl sign, verify and box.before are metered in the same worker
 * for calibration against the SDK check notes on XS crypto costs.
 */
import nacl from "tweetnacl";
import { fromBase64Url, toBase64Url } from "../../modules/core/bytes";
import { canonicalBytes, parseCanonical } from "../../modules/core/canonical";
import { SeededRandom } from "../xs/deterministic";
import { OwnerApp, UserApp, createUserKeys } from "../owner-app";
import { startXsCore } from "../xs/core";

export const THING = "porch-xs";
export const NOW = 1_780_000_000_000;
export const DEVICE_SEED = 0x0d00b0e1;

export function commandScenario() {
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


export interface CommandCosts {
  /** [step, XS meter units of that step alone]. */
  costs: Array<[string, number]>;
  replies: Uint8Array[];
  wrap: Uint8Array[];
  sign: number;
  verify: number;
  boxBefore: number;
}

export async function measureCommandCosts(s = commandScenario()): Promise<CommandCosts> {
  const xs = await startXsCore({ name: "xs-commands", stdout: "ignore" });
  try {

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
  const replies: Uint8Array[] = [];
  const enrol = await xs.run<number>(`state.access = new state.AccessControl(state.options); return state.access.generation;`);
  costs.push(["enrol owner at first boot (box.before + key derivation + 2 stores)", enrol.meter.body]);
  for (let i = 0; i < s.steps.length; i++) {
    const [name, payload] = s.steps[i];
    const r = await xs.run<{ reply: Uint8Array; ok: boolean; reason?: string }>(`const o = state.access.handleCommand(args); return { reply: o.reply, ok: o.ok, reason: o.reason };`, payload);
    replies.push(r.value.reply);
    costs.push([`${name} → ${r.value.ok ? "ok" : r.value.reason}`, r.meter.body]);
  }
  const wrap = await xs.run<Uint8Array[]>(`return state.access.wrapContentKey(new Uint8Array(32).fill(7)).keys.map((k) => k.wrapped);`);
  costs.push(["wrapContentKey, 1 recipient (owner)", wrap.meter.body]);
  const sign = await xs.run(`state.sig = state.nacl.sign.detached(state.message, state.signKeys.secretKey); return true;`);
  const verify = await xs.run<boolean>(`return state.nacl.sign.detached.verify(state.message, state.sig, state.signKeys.publicKey);`);
  if (!verify.value) throw new Error("calibration verify failed on XS");
  const before = await xs.run(`return state.nacl.box.before(state.signKeys.publicKey, new Uint8Array(32).fill(3)).length;`);

    return { costs, replies, wrap: wrap.value, sign: sign.meter.body, verify: verify.meter.body, boxBefore: before.meter.body };
  } finally {
    await xs.close();
  }
}
