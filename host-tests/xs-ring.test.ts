/*
 * The whole ring path (debounce → sequence → event → online signature → outbox)
 * on the real XS engine, against the same code on Node with the same
 * deterministic ports: the payloads must match byte for byte, verify under
 * OpenSSL and the reference verifier, and keep rising across a reboot.
 */
import test from "ava";
import nacl from "tweetnacl";
import { startXsCore } from "../tools/xs/core";
import { Doorbell } from "../modules/core/doorbell";
import { SeededRandom, MemoryStore } from "../tools/xs/deterministic";
import { openEnvelope } from "../modules/core/events";
import { opensslVerify } from "../tools/openssl-ed25519";
import { EventVerifier } from "../tools/verifier";

/**
 * One scenario, written once and run on both engines: two boots on the same
 * flash, three bouncy presses each. `deps` supplies the engine's own modules.
 */
const SCENARIO = `
  const { Doorbell, SeededRandom, MemoryStore, nacl } = deps;
  const seed = new Uint8Array(32).fill(5);
  const publicKey = nacl.sign.keyPair.fromSeed(seed).publicKey;
  const store = new MemoryStore();
  let now = 0;
  const clock = { monotonic: () => now, wallTime: () => 1790000000000 + now, schedule: () => () => {} };
  const transport = { connect: (h) => h.onConnect(), publish: () => Promise.resolve(), subscribe: () => Promise.resolve(), close() {} };
  const payloads = [];
  const boots = [];
  let slow = 0;
  for (let boot = 0; boot < 2; boot++) {
    const d = new Doorbell({ thing: "xs-porch", signingSeed: seed, signingPublicKey: publicKey, clock, random: new SeededRandom(boot + 1),
      store, transport, log: () => {}, noncePoolSize: 3, onRing: (r) => payloads.push(r.payload) });
    d.start();
    while (d.signer.precompute());
    for (let i = 0; i < 3; i++) {
      now += 1000; d.edge(true); now += 1; d.edge(false); now += 1; d.edge(true);
      now += 200; d.edge(false); now += 2; d.edge(true); now += 2; d.edge(false);
    }
    boots.push(d.sequence.boot);
    slow += d.signer.stats.slow;
  }
  return { payloads, boots, slow, publicKey };
`;

type Outcome = { payloads: Uint8Array[]; boots: number[]; slow: number; publicKey: Uint8Array };

test("XS and Node produce byte-identical signed rings that OpenSSL verifies; seq survives a reboot", async (t) => {
  const onNode = new Function("deps", SCENARIO)({ Doorbell, SeededRandom, MemoryStore, nacl }) as Outcome;
  const xs = await startXsCore({ stdout: "ignore" });
  let onXs: Outcome;
  try {
    const run = await xs.run(`
      const deps = { Doorbell: importNow("core/doorbell").Doorbell, nacl: importNow("tweetnacl").default, ...importNow("harness/deterministic") };
      return (function (deps) { ${SCENARIO} })(deps);`);
    onXs = run.value as Outcome;
  } finally {
    await xs.close();
  }
  t.deepEqual(onXs.boots, [1, 2]);
  t.is(onXs.payloads.length, 6, "three bouncy presses per boot ring three times per boot");
  t.is(onXs.slow, 0, "every ring took the online path");
  t.is(onNode.payloads.length, 6);
  for (let i = 0; i < 6; i++) t.deepEqual(Buffer.from(onXs.payloads[i]), Buffer.from(onNode.payloads[i]), `payload ${i} differs between XS and Node`);

  const verifier = new EventVerifier({ "xs-porch": onXs.publicKey });
  const seqs: number[] = [];
  for (const payload of onXs.payloads) {
    const { event, signature, message } = openEnvelope(payload);
    t.true(opensslVerify(message, signature, onXs.publicKey));
    t.true(verifier.verify(payload).ok, `seq ${event.seq} rejected`);
    seqs.push(event.seq);
  }
  t.true(seqs[3] > seqs[2], `after reboot seq ${seqs[3]} must exceed ${seqs[2]}`);
});
