/*
 * Power cuts at every durable step of an update: each KV write and delete,
 * each slot open/write/sync, each boot-record write (the agent's, and the
 * bootloader's own at the next power-on), from the first byte of the download
 * through activation, the trial and confirmation.
 *
 * A dry run counts the steps; then for each step k a fresh device is cut at k,
 * powered on again (and again, through restarts) until the job ends. At every
 * power-on the device must run a verified image (the factory one or the signed
 * new one, byte for byte) with the floor never above what runs; in the end it
 * is either on the new image with the floor raised (SUCCEEDED) or on the old
 * one with the floor untouched (FAILED), and the cloud was told which.
 */
import test from "ava";
import { FaultPlan, makeSimImage } from "../modules/host/update-sink";
import { World, THING, BOARD, testKey } from "./update-support";
import { firmwareJobDocument } from "../tools/update-service";
import { builtInKeys, signImage } from "../tools/release";
import { bytesEqual } from "../modules/core/bytes";
import { UPDATE_KV } from "../modules/core/update";

const A = testKey(7);

function scenario(plan: FaultPlan, healthy: boolean) {
  const world = new World({ keys: builtInKeys(A), plan });
  const image = makeSimImage({ board: BOARD, version: 2, healthy, size: 5 * 4096 - 300 });
  const release = signImage(image, { key: A, version: 2, board: BOARD });
  world.service.createStream("fw", image);
  world.service.createJob(THING, "job-pc", firmwareJobDocument(release, { id: "fw" }));
  return { world, image };
}

async function runAllCuts(t: import("ava").ExecutionContext, healthy: boolean) {
  const dry = new FaultPlan();
  const { world: dryWorld } = scenario(dry, healthy);
  const dryDone = await dryWorld.settle("job-pc");
  t.is(dryDone.status, healthy ? "SUCCEEDED" : "FAILED");
  const steps = [...dry.steps];
  t.log(`${steps.length} durable steps: ${steps.join(", ")}`);
  t.true(steps.filter((s) => s === "slot.write").length >= 5, "every block write is a step");
  t.true(steps.includes("boot.rename") && steps.includes("kv.write upd.floor") && steps.includes("kv.write upd.state"));

  const outcomes = new Map<string, number>();
  for (let k = 1; k <= steps.length; k++) {
    const plan = new FaultPlan(k);
    const { world, image } = scenario(plan, healthy);
    const done = await world.settle("job-pc", { timeoutMs: 20_000 });
    const where = `cut at step ${k} (${steps[k - 1]})`;
    t.true(plan.tripped, `${where}: the cut happened`);
    for (const [n, boot] of world.boots.entries()) {
      const verified = bytesEqual(boot.image, world.factory) || bytesEqual(boot.image, image);
      t.true(verified, `${where}: boot ${n} ran an unverified image`);
      t.true(boot.floor === undefined || boot.floor <= boot.version, `${where}: boot ${n} floor ${boot.floor} above running ${boot.version}`);
      if (boot.trial) t.is(boot.floor, 1, `${where}: floor raised before the trial image proved healthy`);
    }
    const running = world.session!.info.version;
    if (done.status === "SUCCEEDED") {
      t.true(healthy, `${where}: an unhealthy image was confirmed`);
      t.is(running, 2, where);
      t.is(world.floor(), 2, where);
      t.like(world.session!.slots.record(), { state: "valid" }, where);
    } else {
      t.is(done.status, "FAILED", `${where}: ${JSON.stringify(done.statusDetails)}`);
      t.true(["rolled-back", "health-check-failed", "interrupted", "activation-failed", "write-failed"].includes(done.statusDetails.reason), `${where}: reason ${done.statusDetails.reason}`);
      t.is(running, 1, `${where}: a failed job must leave the old image running`);
      t.is(world.floor(), 1, where);
      t.like(world.session!.slots.record(), { active: "a", state: "valid" }, where);
    }
    t.is(world.store.read(UPDATE_KV.state), undefined, `${where}: update state left behind`);
    const key = `${done.status}/${done.statusDetails.reason}`;
    outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
  }
  t.log(`outcomes over ${steps.length} cut points: ${[...outcomes].map(([k, n]) => `${k} ×${n}`).join(", ")}`);
  return outcomes;
}

test.serial("a power cut at any step of a good update ends on the new image (confirmed) or the old one (floor untouched)", async (t) => {
  const outcomes = await runAllCuts(t, true);
  t.true((outcomes.get("SUCCEEDED/confirmed") ?? 0) > 0);
  t.true([...outcomes.keys()].some((k) => k.startsWith("FAILED/rolled-back")), "cuts during the trial roll back");
});

test.serial("a power cut at any step of an unhealthy update always ends on the old image", async (t) => {
  const outcomes = await runAllCuts(t, false);
  t.false(outcomes.has("SUCCEEDED/confirmed"));
});
