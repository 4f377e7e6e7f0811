/*
 * Outbox capacity: a flash budget in bytes (as NVS stores the entries), set per board
 * through bootFirmware, whose default rides out a 10-minute outage at a ring a minute
 * with a snapshot each and a 60-second outage at the busiest press rate without dropping
 * a ring; and every board's budget fits its NVS partition next to the vault.
 */
import test from "ava";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Doorbell } from "../modules/core/doorbell";
import { DEFAULT_OUTBOX_FLASH_BYTES, valueFootprint } from "../modules/core/outbox";
import { manifestFields } from "../modules/core/snapshot";
import { MAX_USERS } from "../modules/core/access";
import { bootFirmware, type RunningFirmware } from "../modules/core/firmware";
import type { MqttHandlers, MqttTransport } from "../modules/core/ports";
import { MemoryStore, FileStore } from "../modules/host/file-store";
import { createHostClock } from "../modules/host/clock";
import { hostRandom } from "../modules/host/random";
import { openKeyFile } from "../modules/host/key-file";
import { devicePaths } from "../tools/provision";
import { provisionIfNeeded } from "../tools/sim-device";
import { ManualClock } from "./helpers/manual-clock";
import { seededRandom } from "./helpers/crypto";

/** The busiest press rate: one press every 250 ms, the fastest the chaos soak presses (a visitor hammering the button). */
const BUSIEST_PRESS_MS = 250;
/** NVS: 4096-byte pages of 126 entries of 32 bytes; one page is always kept free for garbage collection. */
const NVS_PAGE = 4096;
const NVS_PAGE_ENTRIES_BYTES = 126 * 32;
/** Flash kept for the vault (both slots of every record, a full access list) and the other bookkeeping records. */
const RESERVED_BYTES = 24 * 1024;

const offline: MqttTransport = {
  connect(h: MqttHandlers) { h.onClose("ECONNREFUSED"); },
  publish: () => new Promise<void>(() => {}),
  subscribe: () => Promise.resolve(),
  close() {},
};

function offlineDoorbell(thing: string): { doorbell: Doorbell; clock: ManualClock } {
  const clock = new ManualClock();
  const doorbell = new Doorbell({ thing, signingSeed: new Uint8Array(32).fill(3), clock, random: seededRandom(thing), store: new MemoryStore(), transport: offline, log: () => {} });
  doorbell.start();
  return { doorbell, clock };
}

/** The largest manifest a snapshot event carries: a content key wrapped for every user the list may hold, longest ids. */
function largestManifest(ring: number) {
  const keys = Array.from({ length: MAX_USERS }, (_, i) => ({ user: `user-${String(i).padStart(2, "0")}-${"x".repeat(15)}`, nonce: new Uint8Array(24).fill(i), wrapped: new Uint8Array(64).fill(i) }));
  return manifestFields({ ring, id: new Uint8Array(16).fill(7), size: 400_000, chunks: 49, chunkBytes: 8192, digest: new Uint8Array(32).fill(9), wrapping: { gen: 1_000_000, keys } });
}

test("the default budget rides out a 60-second outage at the busiest press rate without dropping a ring", (t) => {
  const { doorbell, clock } = offlineDoorbell("a-thing-name-of-forty-characters-long-ok");
  const rings = [];
  for (let elapsed = 0; elapsed < 60_000; elapsed += BUSIEST_PRESS_MS) {
    rings.push(doorbell.press());
    clock.advance(BUSIEST_PRESS_MS);
  }
  t.is(rings.length, 240);
  t.true(rings.every((r) => r.stored));
  t.is(doorbell.outbox.dropped, 0);
  t.deepEqual(doorbell.outbox.pending(), rings.map((r) => r.seq));
  doorbell.stop();
});

test("the default budget rides out a 10-minute outage at one ring a minute, each with the largest snapshot manifest", (t) => {
  const { doorbell, clock } = offlineDoorbell("a-thing-name-of-forty-characters-long-ok");
  for (let minute = 0; minute < 10; minute++) {
    const ring = doorbell.press();
    const manifest = doorbell.emit("snapshot", largestManifest(ring.seq));
    t.true(manifest.payload.length > 1500, `manifest of ${manifest.payload.length} bytes`);
    clock.advance(60_000);
  }
  t.is(doorbell.outbox.dropped, 0);
  t.is(doorbell.outbox.durableDepth, 20);
  doorbell.stop();
});

test("bootFirmware passes the board's outbox budget to the doorbell", async (t) => {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), "dw-capacity-"));
  t.teardown(() => fs.rmSync(home, { recursive: true, force: true }));
  await provisionIfNeeded(home, "budget-porch");
  const paths = devicePaths(home, "budget-porch");
  const boot = (outbox?: { flashBytes: number }) => bootFirmware({
    clock: createHostClock(), random: hostRandom, vaultStore: new FileStore(paths.vaultDir), store: new FileStore(paths.nvsDir),
    keys: openKeyFile(paths.keyFile, { warn: () => {} }), log: () => {}, transport: () => offline, outbox,
  }) as RunningFirmware;
  const small = boot({ flashBytes: 20 * 1024 });
  t.is(small.state, "running");
  t.is(small.doorbell.outbox.flashBytes, 20 * 1024);
  small.stop();
  const dflt = boot();
  t.is(dflt.doorbell.outbox.flashBytes, DEFAULT_OUTBOX_FLASH_BYTES);
  dflt.stop();
});

test("every board's outbox budget fits its NVS partition next to the vault's reserve", async (t) => {
  const boards = fs.readdirSync("hardware/partitions").filter((f) => f.endsWith(".csv")).map((f) => f.slice(0, -4));
  t.true(boards.length >= 4);
  for (const board of boards) {
    const csv = fs.readFileSync(`hardware/partitions/${board}.csv`, "utf8");
    const nvs = csv.split("\n").map((l) => l.split(",").map((c) => c.trim())).find((c) => c[0] === "nvs");
    t.truthy(nvs, board);
    const pages = Number(nvs![4]) / NVS_PAGE;
    const usable = (pages - 1) * NVS_PAGE_ENTRIES_BYTES;
    const config = JSON.parse(fs.readFileSync(`hardware/${board}.json`, "utf8")).config?.doorward ?? {};
    const budget = config.outboxBytes ?? DEFAULT_OUTBOX_FLASH_BYTES;
    t.true(budget + RESERVED_BYTES <= usable, `${board}: outbox ${budget} + reserve ${RESERVED_BYTES} > ${usable} usable bytes of NVS`);
  }
  // The reserve covers a provisioned device's vault, every record in both slots, with room for a full access list.
  const home = fs.mkdtempSync(path.join(os.tmpdir(), "dw-capacity-vault-"));
  t.teardown(() => fs.rmSync(home, { recursive: true, force: true }));
  await provisionIfNeeded(home, "vault-porch");
  const vaultDir = devicePaths(home, "vault-porch").vaultDir;
  const vault = fs.readdirSync(vaultDir).reduce((n, f) => n + 2 * valueFootprint(fs.statSync(path.join(vaultDir, f)).size), 0);
  const accessList = 2 * valueFootprint(4000);
  t.log(`vault of a provisioned simulator: ${vault} bytes in NVS with both slots; a full access list adds ${accessList}`);
  t.true(vault + accessList + 4096 <= RESERVED_BYTES, `vault ${vault} + list ${accessList} + 4 KB of other records exceed the reserve`);
});
