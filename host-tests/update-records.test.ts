/*
 * The anti-rollback records cannot be moved by writing flash: restoring an
 * older floor (or writing one by hand) permits no downgrade, an attacker's key
 * set makes no attacker image installable, and deleting or restoring an older
 * key set does not bring a retired key back.
 */
import test, { type ExecutionContext } from "ava";
import { World, THING, BOARD, testKey } from "./update-support";
import { makeSimImage } from "../modules/host/update-sink";
import { firmwareJobDocument, keysJobDocument } from "../tools/update-service";
import { builtInKeys, rotateKeys, signImage, type ReleaseKey } from "../tools/release";
import type { SignedRelease } from "../modules/core/release";
import { toHex, utf8Encode } from "../modules/core/bytes";
import { UPDATE_KV } from "../modules/core/update";
import { encodeJsonRecord, keyedTag } from "../modules/core/record";
import nacl from "tweetnacl";

const A = testKey(1);
const B = testKey(2);
const C = testKey(3);
const EVIL = testKey(66);

let serial = 0;
function offer(world: World, version: number, key: ReleaseKey): string {
  const image = makeSimImage({ board: BOARD, version, healthy: true, size: 8 * 1024 + 17 });
  const release = signImage(image, { key, version, board: BOARD });
  const id = `r${++serial}`;
  world.service.createStream(id, image);
  world.service.createJob(THING, `job-${id}`, firmwareJobDocument(release as SignedRelease, { id }));
  return `job-${id}`;
}

async function outcome(world: World, jobId: string): Promise<string> {
  const done = await world.settle(jobId);
  return `${done.status}${done.statusDetails.reason ? ` ${done.statusDetails.reason}` : ""}`;
}

async function rotate(t: ExecutionContext, world: World, to: number, key: ReleaseKey, from: ReleaseKey): Promise<void> {
  world.service.createJob(THING, `keys-${to}`, keysJobDocument(rotateKeys(to, [key.publicKey], [from, key])));
  t.is((await world.settle(`keys-${to}`)).status, "SUCCEEDED");
}

test("restoring the floor from before an update, or writing one by hand, permits no downgrade", async (t) => {
  const world = new World({ keys: builtInKeys(A) });
  world.powerOn();
  const oldFloor = world.store.read(UPDATE_KV.floor)!;
  t.is(world.session!.agent.floor, 1);
  t.is(await outcome(world, offer(world, 3, A)), "SUCCEEDED confirmed");
  t.is(world.session!.agent.floor, 3);
  world.powerOff();
  world.store.write(UPDATE_KV.floor, oldFloor);
  world.powerOn();
  t.is(world.session!.agent.floor, 3, "the confirmed running image is a floor by itself");
  t.is(await outcome(world, offer(world, 2, A)), "REJECTED downgrade");
  world.powerOff();
  world.store.write(UPDATE_KV.floor, utf8Encode("1"));
  world.powerOn();
  t.true(world.session!.logs.some((l) => l.includes("floor record does not authenticate")));
  t.is(await outcome(world, offer(world, 2, A)), "REJECTED downgrade");
  t.is(world.session!.info.version, 3);
  t.is(world.floor(), 3, "rewritten, authenticated");
});

test("an attacker's key set written to flash makes no attacker-signed image installable", async (t) => {
  const world = new World({ keys: builtInKeys(A) });
  world.powerOn();
  world.powerOff();
  // In the old plain form, and framed with a MAC under a key that is not the device's.
  world.store.write(UPDATE_KV.keys, utf8Encode(JSON.stringify({ serial: 9, keys: [toHex(EVIL.publicKey)] })));
  world.powerOn();
  t.is(await outcome(world, offer(world, 2, EVIL)), "REJECTED unknown-key");
  world.powerOff();
  const wrongTag = keyedTag("doorward/update-records/v1", new Uint8Array(32).fill(1), (d) => nacl.hash(d));
  world.store.write(UPDATE_KV.keys, encodeJsonRecord("upd-keys", { keys: [toHex(EVIL.publicKey)], serial: 9 }, { tag: wrongTag }));
  world.powerOn();
  t.is(await outcome(world, offer(world, 3, EVIL)), "REJECTED unknown-key");
  t.is(await outcome(world, offer(world, 4, A)), "SUCCEEDED confirmed", "the built-in key still works");
});

test("deleting the rotated key set, or restoring an older one, does not bring a retired key back", async (t) => {
  const world = new World({ keys: builtInKeys(A) });
  world.powerOn();
  await rotate(t, world, 2, B, A);
  const setTwo = world.store.read(UPDATE_KV.keys)!;
  await rotate(t, world, 3, C, B);
  t.deepEqual(world.session!.agent.trustedKeyIds, [C.keyId]);
  // Deleted: the built-in key (serial 1) is older than what the device last trusted, so nothing is trusted.
  world.powerOff();
  const setThree = world.store.read(UPDATE_KV.keys)!;
  world.store.delete(UPDATE_KV.keys);
  world.powerOn();
  t.is(await outcome(world, offer(world, 2, A)), "REJECTED unknown-key");
  t.true(world.session!.logs.some((l) => l.includes("refusing every update")));
  // Restored to the set before the last rotation: B is retired too.
  world.powerOff();
  world.store.write(UPDATE_KV.keys, setTwo);
  world.powerOn();
  t.is(await outcome(world, offer(world, 2, B)), "REJECTED unknown-key");
  world.service.createJob(THING, "keys-back", keysJobDocument(rotateKeys(4, [A.publicKey], [B, A])));
  t.is((await world.settle("keys-back")).statusDetails.reason, "unauthorized", "and nothing can re-authorise a set meanwhile");
  // The real set back: C works again.
  world.powerOff();
  world.store.write(UPDATE_KV.keys, setThree);
  world.powerOn();
  t.is(await outcome(world, offer(world, 2, C)), "SUCCEEDED confirmed");
});
