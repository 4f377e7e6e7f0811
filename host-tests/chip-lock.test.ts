/*
 * The boot-time chip-lock judgement (core/chip-lock): a release build refuses
 * production secrets when any lock is off, naming each missing one; a
 * development build names them too and goes on. Every combination of the
 * chip's lock states is tried.
 */
import test from "ava";
import { judgeChipLock, type ChipState, type LockName } from "../modules/core/chip-lock";

const LOCKED: ChipState = {
  chip: "ESP32-S3",
  secureBoot: true,
  flashEncryption: "release",
  nvsEncryptionKey: true,
  romDownload: "disabled",
  jtagDisabled: true,
  secureVersion: 1,
};
const RELEASE = { release: true, secureVersion: 1 };
const DEVELOPMENT = { release: false };

test("a locked chip in a release build may hold production secrets", (t) => {
  const v = judgeChipLock(RELEASE, LOCKED);
  t.true(v.locked);
  t.true(v.productionSecrets);
  t.deepEqual(v.problems, []);
  t.regex(v.summary, /chip locked: release build/);
});

const OPEN: Array<[LockName, Partial<ChipState>]> = [
  ["secure-boot", { secureBoot: false }],
  ["flash-encryption", { flashEncryption: "disabled" }],
  ["flash-encryption", { flashEncryption: "development" }],
  ["nvs-encryption", { nvsEncryptionKey: false }],
  ["rom-download", { romDownload: "enabled" }],
  ["rom-download", { romDownload: "secure" }],
  ["jtag", { jtagDisabled: false }],
];

for (const [lock, change] of OPEN) {
  test(`release build, ${lock} open (${JSON.stringify(change)}): production secrets refused, the reason named`, (t) => {
    const v = judgeChipLock(RELEASE, { ...LOCKED, ...change });
    t.false(v.locked);
    t.false(v.productionSecrets);
    t.deepEqual(v.problems.map((p) => p.lock), [lock]);
    t.regex(v.summary, new RegExp(`RELEASE BUILD ON AN UNLOCKED CHIP: production secrets refused \\(missing: ${lock}\\)`));
  });
  test(`development build, ${lock} open (${JSON.stringify(change)}): says so and proceeds`, (t) => {
    const v = judgeChipLock(DEVELOPMENT, { ...LOCKED, ...change });
    t.false(v.locked);
    t.true(v.productionSecrets);
    t.deepEqual(v.problems.map((p) => p.lock), [lock]);
    t.regex(v.summary, /^DEVELOPMENT BUILD: the chip is not locked/);
  });
}

test("every combination of lock states: a release build allows secrets exactly when all are on", (t) => {
  let combos = 0;
  for (const secureBoot of [false, true])
    for (const flashEncryption of ["disabled", "development", "release"] as const)
      for (const nvsEncryptionKey of [false, true])
        for (const romDownload of ["enabled", "secure", "disabled"] as const)
          for (const jtagDisabled of [false, true]) {
            const state = { ...LOCKED, secureBoot, flashEncryption, nvsEncryptionKey, romDownload, jtagDisabled };
            const all = secureBoot && flashEncryption === "release" && nvsEncryptionKey && romDownload === "disabled" && jtagDisabled;
            const release = judgeChipLock(RELEASE, state);
            t.is(release.productionSecrets, all);
            t.is(release.problems.length === 0, all);
            t.true(judgeChipLock(DEVELOPMENT, state).productionSecrets);
            combos++;
          }
  t.is(combos, 72);
});

test("several locks open: all are named, in one line", (t) => {
  const v = judgeChipLock(RELEASE, { ...LOCKED, secureBoot: false, flashEncryption: "disabled", jtagDisabled: false, romDownload: "enabled", nvsEncryptionKey: false });
  t.deepEqual(v.problems.map((p) => p.lock), ["secure-boot", "flash-encryption", "nvs-encryption", "rom-download", "jtag"]);
  t.false(v.productionSecrets);
  t.notRegex(v.summary, /\n/);
});

test("an eFuse read that failed counts as unlocked", (t) => {
  const v = judgeChipLock(RELEASE, new Error("esp_efuse_read_reg missing"));
  t.false(v.productionSecrets);
  t.deepEqual(v.problems.map((p) => p.lock), ["efuse-read"]);
  t.regex(v.problems[0].reason, /esp_efuse_read_reg missing/);
  t.true(judgeChipLock(DEVELOPMENT, new Error("x")).productionSecrets);
});

test("a malformed state from an adapter counts as unlocked, never as locked", (t) => {
  for (const bad of [
    { ...LOCKED, secureBoot: 1 },
    { ...LOCKED, flashEncryption: "on" },
    { ...LOCKED, romDownload: undefined },
    { ...LOCKED, secureVersion: -1 },
    null,
  ]) {
    const v = judgeChipLock(RELEASE, bad as unknown as ChipState);
    t.false(v.productionSecrets, JSON.stringify(bad));
    t.is(v.problems[0].lock, "efuse-read");
  }
});

test("anti-rollback: a release build without a secure version is refused; an eFuse count above the image is tampering", (t) => {
  t.deepEqual(judgeChipLock({ release: true }, LOCKED).problems.map((p) => p.lock), ["anti-rollback"]);
  t.deepEqual(judgeChipLock({ release: true, secureVersion: 0 }, LOCKED).problems.map((p) => p.lock), ["anti-rollback"]);
  const ahead = judgeChipLock({ release: true, secureVersion: 1 }, { ...LOCKED, secureVersion: 2 });
  t.false(ahead.productionSecrets);
  t.regex(ahead.problems[0].reason, /eFuse secure version 2 is above this image's 1/);
  // Below is normal: confirming the image raises the eFuse count to its own.
  t.true(judgeChipLock({ release: true, secureVersion: 3 }, { ...LOCKED, secureVersion: 1 }).productionSecrets);
  // A development build does not need one.
  t.true(judgeChipLock({ release: false }, LOCKED).locked);
});
