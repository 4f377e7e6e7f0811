/*
 * The update agent against the Jobs/streams service, in process: the happy
 * path (floor raised only after the trial image proved healthy), every
 * refusal (each leaving the running image, boot record and floor untouched),
 * rollback of an unhealthy image, lost blocks, a changed stream, and release
 * key rotation.
 */
import test, { type ExecutionContext } from "ava";
import { createHash } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import nacl from "tweetnacl";
import { World, THING, BOARD, testKey } from "./update-support";
import { makeSimImage } from "../modules/host/update-sink";
import { firmwareJobDocument, keysJobDocument } from "../tools/update-service";
import { builtInKeys, rotateKeys, signImage, type ReleaseKey } from "../tools/release";
import { manifestMessage, releaseKeyId, type FirmwareManifest, type SignedRelease } from "../modules/core/release";
import { toBase64Url } from "../modules/core/bytes";
import { UPDATE_KV } from "../modules/core/update";

const A = testKey(1);
const B = testKey(2);
const EVIL = testKey(66);

let serial = 0;
function offer(world: World, image: Uint8Array, release: unknown, options: { streamBytes?: Uint8Array; jobId?: string; streamVersion?: number } = {}): string {
  const id = `s${++serial}`;
  const jobId = options.jobId ?? `job-${serial}`;
  world.service.createStream(id, options.streamBytes ?? image);
  world.service.createJob(THING, jobId, firmwareJobDocument(release as SignedRelease, { id, version: options.streamVersion }));
  return jobId;
}

function build(version: number, o: { key?: ReleaseKey; board?: string; healthy?: boolean; size?: number; minVersion?: number } = {}) {
  const image = makeSimImage({ board: o.board ?? BOARD, version, healthy: o.healthy ?? true, size: o.size ?? 20 * 1024 + 123 });
  const release = signImage(image, { key: o.key ?? A, version, board: o.board ?? BOARD, minVersion: o.minVersion });
  return { image, release };
}

const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

/** What must not change when an update is refused. */
function snapshot(world: World) {
  const running = fs.readFileSync(path.join(world.flashDir, `slot-${world.session!.slots.running}.bin`));
  return { record: world.session!.slots.record(), running: sha(running), floor: world.floor(), boots: world.boots.length };
}

async function expectRefused(t: ExecutionContext, world: World, jobId: string, reason: string): Promise<void> {
  const before = snapshot(world);
  const done = await world.settle(jobId);
  t.is(done.status, "REJECTED", `job ${jobId}: ${JSON.stringify(done.statusDetails)}`);
  t.is(done.statusDetails.reason, reason);
  t.truthy(done.statusDetails.detail);
  const after = snapshot(world);
  t.deepEqual(after, before, "running image, boot record, floor and boot count unchanged");
  t.is(world.store.read(UPDATE_KV.state), undefined, "no update state left behind");
  t.deepEqual(world.session!.slots.restarts, [], "no restart");
}

test("a signed update is verified, activated, tried, confirmed; the floor rises only after the health check", async (t) => {
  const world = new World({ keys: builtInKeys(A) });
  const first = world.powerOn();
  t.is(first.info.version, 1);
  t.is(world.floor(), 1);
  const { image, release } = build(2, { size: 100_000 });
  const jobId = offer(world, image, release);
  const done = await world.settle(jobId);
  t.is(done.status, "SUCCEEDED", JSON.stringify(done.statusDetails));
  t.is(done.statusDetails.version, "2");
  t.is(first.agent.stats.verifies, 1, "one Ed25519 verify for the whole update");
  t.is(first.agent.stats.bytes, image.length);
  // Boots: factory, then the new image on trial with the floor still at 1.
  t.deepEqual(world.boots.map((b) => [b.version, b.trial, b.floor]), [[1, false, undefined], [2, true, 1]]);
  t.is(world.session!.info.version, 2);
  t.is(world.floor(), 2);
  t.like(world.session!.slots.record(), { active: "b", state: "valid" });
  t.is(sha(fs.readFileSync(path.join(world.flashDir, "slot-b.bin"))), release.manifest.sha256);
  const steps = world.service.updates.filter((u) => u.jobId === jobId).map((u) => u.statusDetails.step ?? u.status);
  t.deepEqual(steps.filter((s, i) => s !== steps[i - 1]), ["verifying", "downloading", "activating", "booted", "SUCCEEDED"]);
  t.true(world.session!.events.some((e) => e.type === "confirmed" && e.version === 2));
  // After a reboot it stays on 2.
  world.powerOff();
  t.is(world.powerOn().info.version, 2);
});

test("refused: unsigned", async (t) => {
  const world = new World({ keys: builtInKeys(A) });
  world.powerOn();
  const { image, release } = build(2);
  await expectRefused(t, world, offer(world, image, { manifest: release.manifest }), "unsigned");
});

test("refused: signed by a key the device does not trust", async (t) => {
  const world = new World({ keys: builtInKeys(A) });
  world.powerOn();
  const { image, release } = build(2, { key: EVIL });
  await expectRefused(t, world, offer(world, image, release), "unknown-key");
});

test("refused: wrong key claiming the trusted key's id (forged signature)", async (t) => {
  const world = new World({ keys: builtInKeys(A) });
  world.powerOn();
  const { image, release } = build(2);
  const sig = toBase64Url(nacl.sign.detached(manifestMessage(release.manifest), EVIL.secretKey));
  await expectRefused(t, world, offer(world, image, { manifest: release.manifest, sig }), "bad-signature");
});

test("refused: a manifest edited after signing (a different digest smuggled in)", async (t) => {
  const world = new World({ keys: builtInKeys(A) });
  world.powerOn();
  const { release } = build(2);
  const evil = build(2, { healthy: false }).image;
  const manifest: FirmwareManifest = { ...release.manifest, sha256: sha(evil), size: evil.length };
  await expectRefused(t, world, offer(world, evil, { manifest, sig: release.sig }), "bad-signature");
});

test("refused: one tampered byte in transit", async (t) => {
  const world = new World({ keys: builtInKeys(A) });
  world.powerOn();
  const { image, release } = build(2);
  world.service.faults.alterBlock = (_s, _f, i, bytes) => {
    if (i !== 3) return bytes;
    const copy = bytes.slice();
    copy[100] ^= 0x01;
    return copy;
  };
  await expectRefused(t, world, offer(world, image, release), "digest-mismatch");
  t.like(world.session!.slots.record(), { active: "a", state: "valid", sizes: { b: 0 } }, "the written slot was never made bootable");
});

test("refused: a tampered image in the stream", async (t) => {
  const world = new World({ keys: builtInKeys(A) });
  world.powerOn();
  const { image, release } = build(2);
  const stored = image.slice();
  stored[stored.length - 1] ^= 0x80;
  await expectRefused(t, world, offer(world, image, release, { streamBytes: stored }), "digest-mismatch");
});

test("refused: truncated stream (short last block)", async (t) => {
  const world = new World({ keys: builtInKeys(A) });
  world.powerOn();
  const { image, release } = build(2);
  await expectRefused(t, world, offer(world, image, release, { streamBytes: image.subarray(0, image.length - 1000) }), "truncated");
});

test("refused: truncated stream (whole blocks missing)", async (t) => {
  const world = new World({ keys: builtInKeys(A) });
  world.powerOn();
  const { image, release } = build(2, { size: 16 * 4096 });
  await expectRefused(t, world, offer(world, image, release, { streamBytes: image.subarray(0, 8 * 4096) }), "truncated");
});

test("refused: stream longer than the signed size", async (t) => {
  const world = new World({ keys: builtInKeys(A) });
  world.powerOn();
  const { image, release } = build(2, { size: 10_000 });
  const longer = new Uint8Array(10_500);
  longer.set(image);
  await expectRefused(t, world, offer(world, image, release, { streamBytes: longer }), "size-mismatch");
});

test("refused: wrong board", async (t) => {
  const world = new World({ keys: builtInKeys(A) });
  world.powerOn();
  const { image, release } = build(2, { board: "esp32/xiao_esp32s3_sense" });
  await expectRefused(t, world, offer(world, image, release), "wrong-board");
});

test("refused: downgrade, and the same version again", async (t) => {
  const world = new World({ keys: builtInKeys(A), factoryVersion: 5 });
  world.powerOn();
  const older = build(3);
  await expectRefused(t, world, offer(world, older.image, older.release), "downgrade");
  const same = build(5);
  await expectRefused(t, world, offer(world, same.image, same.release), "not-newer");
});

test("refused: an image that needs a newer base version", async (t) => {
  const world = new World({ keys: builtInKeys(A), factoryVersion: 5 });
  world.powerOn();
  const { image, release } = build(9, { minVersion: 7 });
  await expectRefused(t, world, offer(world, image, release), "base-too-old");
});

test("refused: larger than the update slot", async (t) => {
  const world = new World({ keys: builtInKeys(A), capacity: 16 * 1024 });
  world.powerOn();
  const { image, release } = build(2, { size: 32 * 1024 });
  await expectRefused(t, world, offer(world, image, release), "too-large");
});

test("refused: malformed manifests and unknown operations", async (t) => {
  const world = new World({ keys: builtInKeys(A) });
  world.powerOn();
  const { image, release } = build(2);
  await expectRefused(t, world, offer(world, image, { manifest: { ...release.manifest, version: -1 }, sig: release.sig }), "malformed-manifest");
  world.service.createJob(THING, "reboot-1", { operation: "reboot" });
  await expectRefused(t, world, "reboot-1", "unsupported-operation");
});

test("refused: a replayed old job, and its release under a new job ID", async (t) => {
  const world = new World({ keys: builtInKeys(A) });
  world.powerOn();
  const v2 = build(2);
  const jobId = offer(world, v2.image, v2.release);
  t.is((await world.settle(jobId)).status, "SUCCEEDED");
  const before = snapshot(world);
  // Someone replays the old job's announcement.
  world.service.replayNotification(THING, jobId);
  const replay = await world.service.waitForUpdate((u) => u.jobId === jobId && u.statusDetails.reason === "replayed-job");
  t.is(replay.status, "REJECTED");
  t.is(world.service.execution(THING, jobId)!.status, "SUCCEEDED", "the finished job stays finished");
  await new Promise((r) => setTimeout(r, 50));
  t.deepEqual(snapshot(world), before);
  t.true(world.session!.events.some((e) => e.type === "refused" && e.reason === "replayed-job"));
  // The same signed release, re-issued as a new job: not newer than what runs.
  await expectRefused(t, world, offer(world, v2.image, v2.release), "not-newer");
});

test("an image that fails its health check is rolled back; the floor never moves", async (t) => {
  const world = new World({ keys: builtInKeys(A) });
  world.powerOn();
  const { image, release } = build(2, { healthy: false });
  const done = await world.settle(offer(world, image, release));
  t.is(done.status, "FAILED");
  t.is(done.statusDetails.reason, "health-check-failed");
  t.is(done.statusDetails.detail, "self-test failed");
  t.deepEqual(world.boots.map((b) => [b.version, b.trial, b.floor]), [[1, false, undefined], [2, true, 1], [1, false, 1]]);
  t.is(world.session!.info.version, 1);
  t.is(world.floor(), 1);
  t.like(world.session!.slots.record(), { active: "a", state: "valid" });
  t.is(world.store.read(UPDATE_KV.state), undefined);
});

test("a trial image that cannot reach the cloud rolls back", async (t) => {
  const world = new World({ keys: builtInKeys(A), agent: { healthTimeoutMs: 300 } });
  world.powerOn();
  const { image, release } = build(2);
  const jobId = offer(world, image, release);
  await world.service.waitForUpdate((u) => u.jobId === jobId && u.statusDetails.step === "activating");
  world.service.faults.answerUpdates = false; // the new image's report goes unanswered
  const failed = world.service.waitForUpdate((u) => u.jobId === jobId && u.status === "FAILED");
  const done = world.settle(jobId);
  const report = await failed;
  world.service.faults.answerUpdates = true;
  t.is(report.statusDetails.reason, "health-check-failed");
  t.is(report.statusDetails.detail, "no answer from the cloud");
  t.is((await done).status, "FAILED");
  t.is(world.session!.info.version, 1);
  t.is(world.floor(), 1);
});

test("a power cut during the trial returns to the old image, which reports the job failed", async (t) => {
  const world = new World({ keys: builtInKeys(A), agent: { healthTimeoutMs: 60_000 } });
  world.powerOn();
  const { image, release } = build(2);
  const jobId = offer(world, image, release);
  await world.service.waitForUpdate((u) => u.jobId === jobId && u.statusDetails.step === "activating");
  world.service.faults.answerUpdates = false;
  const deadline = Date.now() + 5000;
  while (!(world.session && world.session.alive && world.session.info.version === 2) && Date.now() < deadline) {
    if (world.session && !world.session.alive) world.powerOff(), world.powerOn();
    await new Promise((r) => setTimeout(r, 5));
  }
  t.true(world.session!.booted.trial, "the new image runs on trial");
  world.powerOff(); // power cut before it confirmed itself
  world.service.faults.answerUpdates = true;
  const done = await world.settle(jobId);
  t.is(done.status, "FAILED");
  t.is(done.statusDetails.reason, "rolled-back");
  t.true(world.boots[world.boots.length - 1].rolledBack, "the bootloader abandoned the unconfirmed image");
  t.is(world.session!.info.version, 1);
  t.is(world.floor(), 1);
});

test("lost blocks are asked for again; a silent stream fails the job without touching the running image", async (t) => {
  const world = new World({ keys: builtInKeys(A), agent: { requestTimeoutMs: 40, maxRetries: 3 } });
  world.powerOn();
  const lost = new Set([1, 4]);
  world.service.faults.deliverBlock = (_s, _f, i) => !lost.delete(i);
  const v2 = build(2);
  const ok = await world.settle(offer(world, v2.image, v2.release));
  t.is(ok.status, "SUCCEEDED");
  t.is(lost.size, 0);
  t.true(world.boots.length >= 2);

  const v3 = build(3);
  world.service.faults.deliverBlock = () => false;
  const before = snapshot(world);
  const done = await world.settle(offer(world, v3.image, v3.release));
  t.is(done.status, "FAILED");
  t.is(done.statusDetails.reason, "stream-timeout");
  t.deepEqual(snapshot(world), before);
});

test("a stream replaced after the job was made fails with stream-changed", async (t) => {
  const world = new World({ keys: builtInKeys(A) });
  world.powerOn();
  const v2 = build(2);
  world.service.createStream("fw", v2.image);
  world.service.createStream("fw", v2.image); // version 2 now
  world.service.createJob(THING, "changed", firmwareJobDocument(v2.release, { id: "fw", version: 1 }));
  const done = await world.settle("changed");
  t.is(done.status, "FAILED");
  t.is(done.statusDetails.reason, "stream-changed");
});

test("a job cancelled in the cloud mid-download is abandoned; the running image is untouched", async (t) => {
  const world = new World({ keys: builtInKeys(A), agent: { blocksPerRequest: 1 } });
  world.powerOn();
  const v2 = build(2, { size: 400_000 });
  let served = 0;
  world.service.faults.deliverBlock = () => ++served !== 10 || (world.service.cancelJob(THING, "cancel-me"), true);
  const before = snapshot(world);
  world.service.createStream("fw-c", v2.image);
  world.service.createJob(THING, "cancel-me", firmwareJobDocument(v2.release, { id: "fw-c" }));
  t.is((await world.service.waitForTerminal(THING, "cancel-me")).status, "CANCELED");
  const deadline = Date.now() + 5000;
  while (world.session!.agent.status().phase !== "idle" && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  t.is(world.session!.agent.status().phase, "idle");
  await new Promise((r) => setTimeout(r, 100));
  t.true(served < 20, `download stopped (${served} of 98 blocks served)`);
  t.deepEqual(snapshot(world), before);
  t.is(world.store.read(UPDATE_KV.state), undefined);
});

test("release key rotation: a key set signed by the old and the new key replaces the trust; bad ones are refused", async (t) => {
  const world = new World({ keys: builtInKeys(A) });
  world.powerOn();
  // Not signed by a trusted key.
  world.service.createJob(THING, "keys-evil", keysJobDocument(rotateKeys(2, [EVIL.publicKey], [EVIL])));
  await expectRefused(t, world, "keys-evil", "unauthorized");
  // Authorised by A but no proof that B's holder has B.
  world.service.createJob(THING, "keys-nopop", keysJobDocument(rotateKeys(2, [B.publicKey], [A])));
  await expectRefused(t, world, "keys-nopop", "unauthorized");
  // A forged proof of possession.
  const forged = rotateKeys(2, [B.publicKey], [A, B]);
  forged.sigs[1].sig = forged.sigs[0].sig;
  world.service.createJob(THING, "keys-forged", keysJobDocument(forged));
  await expectRefused(t, world, "keys-forged", "bad-signature");
  // The real rotation.
  world.service.createJob(THING, "keys-2", keysJobDocument(rotateKeys(2, [B.publicKey], [A, B])));
  const rotated = await world.settle("keys-2");
  t.is(rotated.status, "SUCCEEDED", JSON.stringify(rotated.statusDetails));
  t.deepEqual(world.session!.agent.trustedKeyIds, [releaseKeyId(B.publicKey)]);
  // Survives a reboot; an older key set cannot come back.
  world.powerOff();
  world.powerOn();
  t.deepEqual(world.session!.agent.trustedKeyIds, [B.keyId]);
  world.service.createJob(THING, "keys-old", keysJobDocument(rotateKeys(2, [A.publicKey], [B, A])));
  await expectRefused(t, world, "keys-old", "not-newer");
  // Releases signed by the retired key are refused; by the new key, installed.
  const byA = build(2, { key: A });
  await expectRefused(t, world, offer(world, byA.image, byA.release), "unknown-key");
  const byB = build(2, { key: B });
  t.is((await world.settle(offer(world, byB.image, byB.release))).status, "SUCCEEDED");
  t.is(world.session!.info.version, 2);
});
