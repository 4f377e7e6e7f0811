/*
 * Command checking on the real XS engine: the same payloads through the same
 * core on XS and on Node give byte-identical replies, and the XS meter gives the
 * device-side cost of each step (enrolment, a grant with its Ed25519 verify, a
 * command check, each cheap refusal, a revocation, a content-key wrap). A full
 * tweetnacl sign and verify are metered in the same worker for calibration
 * against the instruction counts in the SDK check notes on XS crypto costs.
 */
import test from "ava";
import { AccessControl } from "../modules/core/commands";
import { utf8Decode } from "../modules/core/bytes";
import { MemoryStore, SeededRandom } from "../tools/xs/deterministic";
import { MemorySecretStore } from "../tools/owner-app";
import { commandScenario, measureCommandCosts, THING, NOW, DEVICE_SEED } from "../tools/bench/xs-commands";
import type { Clock } from "../modules/core/ports";

function nodeReplies(s: ReturnType<typeof commandScenario>): { enrolReply: number; replies: Uint8Array[]; wrap: Uint8Array[] } {
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
  const s = commandScenario();
  const onNode = nodeReplies(s);
  const m = await measureCommandCosts(s);
  m.replies.forEach((reply, i) => t.is(utf8Decode(reply), utf8Decode(onNode.replies[i]), `${s.steps[i][0]}: XS and Node replies differ`));
  t.deepEqual(m.wrap, onNode.wrap);
  const { costs } = m;
  const sign = { meter: { body: m.sign } };
  const verify = { meter: { body: m.verify } };
  const before = { meter: { body: m.boxBefore } };
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
