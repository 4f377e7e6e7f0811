/*
 * The doorbell's nonce policy with the curve work on a worker: the pool is
 * kept full one nonce at a time, events other than rings never take the
 * reserve, and a press that finds the pool empty is signed with a nonce made
 * for it, never on the slow path. The worker here is runCryptoJob, run when the
 * test says, so every moment in between can be inspected.
 */
import test from "ava";
import { Doorbell } from "../modules/core/doorbell";
import { openEnvelope } from "../modules/core/events";
import { manualWorker } from "./helpers/manual-worker";
import type { MqttTransport } from "../modules/core/ports";
import { MemoryStore } from "../modules/host/file-store";
import { ManualClock } from "./helpers/manual-clock";
import { opensslVerify, seededRandom } from "./helpers/crypto";

function setup(poolSize = 4, reserve = 2) {
  const clock = new ManualClock();
  const published: Uint8Array[] = [];
  const transport: MqttTransport = {
    connect(h) { h.onConnect(); },
    publish(_topic, payload) { published.push(payload); return Promise.resolve(); },
    subscribe: () => Promise.resolve(),
    close() {},
  };
  const { crypto, jobs, work, lose } = manualWorker();
  const logs: string[] = [];
  const doorbell = new Doorbell({
    thing: "worker-porch", signingSeed: new Uint8Array(32).fill(8), clock, random: seededRandom("worker"), store: new MemoryStore(),
    transport, log: (_l, m) => void logs.push(m), noncePoolSize: poolSize, nonceReserve: reserve, crypto,
  });
  const press = () => {
    doorbell.edge(true);
    clock.advance(100);
    doorbell.edge(false);
    clock.advance(100);
  };
  const events = () => published.map((p) => openEnvelope(p));
  return { clock, doorbell, crypto, jobs, work, press, events, logs, lose };
}

test("the worker fills the pool one nonce at a time, then stops; nothing is precomputed on the main machine", async (t) => {
  const s = setup(4);
  s.doorbell.start();
  t.is(s.jobs.length, 1, "one refill out at a time, so a verify never waits behind a whole pool");
  for (let i = 0; i < 4; i++) await s.work();
  t.is(s.doorbell.signer.ready, 4);
  t.is(s.jobs.length, 0);
  s.clock.advance(10_000);
  t.is(s.jobs.length, 0, "a full pool asks for nothing");
  s.press();
  t.is(s.jobs.length, 1, "a ring starts the next refill at once, no idle wait");
  t.is(s.doorbell.signer.stats.precomputed, 5);
  s.doorbell.stop();
});

test("a snapshot or status event never takes the reserve: it waits for the worker, and the presses get their nonces", async (t) => {
  const s = setup(4, 2);
  s.doorbell.start();
  for (let i = 0; i < 3; i++) await s.work();
  t.is(s.doorbell.signer.ready, 3);
  const first = await s.doorbell.emitWhenReady("status", { snapshot: "request", user: "owner" });
  t.is(first.event.type, "status", "one nonce beyond the reserve: taken at once");
  t.is(s.doorbell.spareNonces, 0);
  let second: unknown;
  void s.doorbell.emitWhenReady("snapshot", { note: "manifest" }).then((e) => (second = e));
  await new Promise((r) => setImmediate(r));
  t.is(second, undefined, "only the reserve is left: the snapshot waits");
  s.press();
  s.press();
  t.is(s.doorbell.signer.ready, 0);
  t.is(s.doorbell.rings, 2, "both presses were signed from the reserve");
  // A third press with nothing left: its own nonce goes ahead of the refill the worker will do next.
  s.press();
  t.is(s.doorbell.rings, 2, "not signed yet, and not on the slow path");
  t.is(s.doorbell.signer.stats.slow, 0);
  t.is(await s.work(), "point");
  t.is(await s.work(), "point");
  t.is(s.doorbell.rings, 3);
  t.is(s.doorbell.signer.stats.waited, 1);
  t.is(second, undefined, "still only the reserve");
  while (!second) await s.work();
  const types = s.events().map((e) => e.event.type);
  t.deepEqual(types, ["status", "ring", "ring", "ring", "snapshot"]);
  const seqs = s.events().map((e) => e.event.seq);
  t.deepEqual([...seqs].sort((a, b) => a - b), seqs, "sequence numbers stay in publish order");
  for (const e of s.events()) t.true(opensslVerify(e.message, e.signature, s.doorbell.signer.publicKey));
  t.is(s.doorbell.signer.stats.slow, 0);
  t.true(s.logs.includes("nonce pool empty: ring waits for a nonce from the worker"));
  s.doorbell.stop();
});

test("the ring waiting for its nonce is stamped at the press, not when it is signed", async (t) => {
  const s = setup(2, 1);
  s.doorbell.start();
  s.press();
  const pressedAt = s.clock.wallTime()!;
  s.clock.advance(4_000);
  t.is(s.doorbell.rings, 0);
  await s.work();
  await s.work();
  const ring = s.events().find((e) => e.event.type === "ring")!;
  t.true(Math.abs((ring.event.time as number) - pressedAt) <= 200, "time of the press");
  t.is(s.doorbell.signer.stats.slow, 0);
  s.doorbell.stop();
});

test("a worker that dies never costs a ring: the waiting press is signed here, and nonces are precomputed here again", async (t) => {
  const s = setup(2, 1);
  s.doorbell.start();
  s.press();
  t.is(s.doorbell.rings, 0, "waiting for the worker");
  s.lose("task deleted");
  await new Promise((r) => setImmediate(r));
  t.is(s.doorbell.rings, 1, "the ring went out, signed on the slow path");
  t.is(s.doorbell.signer.stats.slow, 1);
  t.true(s.logs.includes("crypto worker gone: nonces are precomputed on this machine while idle"));
  s.clock.advance(5_000);
  t.is(s.doorbell.signer.ready, 2, "the pool refilled on this machine");
  s.press();
  t.is(s.doorbell.rings, 2);
  t.is(s.doorbell.signer.stats.slow, 1, "and the next press used it");
  for (const e of s.events()) t.true(opensslVerify(e.message, e.signature, s.doorbell.signer.publicKey));
  s.doorbell.stop();
});
