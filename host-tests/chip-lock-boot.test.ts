/*
 * The chip lock at boot: the eFuse bits the device adapters read mean what
 * ESP-IDF's eFuse tables say; every board maps an adapter and binds exactly
 * the functions it calls; and bootFirmware judges the chip before it opens the
 * vault, so a release build on an unlocked chip never reads or accepts a
 * production secret. The boot-time entropy gate holds nonce precomputation
 * until a true entropy source runs.
 */
import test from "ava";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import nacl from "tweetnacl";
import { ChipLockError, judgeChipLock, type ChipState } from "../modules/core/chip-lock";
import { bootFirmware, type RunningFirmware, type WaitingFirmware } from "../modules/core/firmware";
import { encodeBundle, type DeviceIdentity } from "../modules/core/provisioning";
import type { KeyValueStore, MqttTransport } from "../modules/core/ports";
import { MemoryStore } from "../modules/host/file-store";
import { hostRandom } from "../modules/host/random";
import { ESP32_BLOCK0, S3_BLOCK0, bit, esp32ChipState, s3ChipState, type S3Reading } from "../modules/device/efuse";
import { parseSettings } from "../modules/device/settings";
import { issueThingCredentials } from "../tools/pki";
import { ManualClock } from "./helpers/manual-clock";

/** BLOCK0 words with the given bits set. */
function block0(words: number, ...bits: number[]): number[] {
  const w = new Array<number>(words).fill(0);
  for (const b of bits) w[b >> 5] = (w[b >> 5] | (1 << (b & 31))) >>> 0;
  return w;
}

const S3_LOCKED: S3Reading = {
  block0: block0(6, S3_BLOCK0.SECURE_BOOT_EN, S3_BLOCK0.DIS_PAD_JTAG, S3_BLOCK0.DIS_USB_JTAG, S3_BLOCK0.DIS_DOWNLOAD_MODE),
  flashMode: 2,
  nvsKeyPurpose: 8,
  nvsKeyReadProtected: 1,
  secureVersion: 1,
};

test("ESP32-S3 BLOCK0 bits are where ESP-IDF's eFuse table puts them, counted as esp_efuse_read_reg words", (t) => {
  t.deepEqual({ ...S3_BLOCK0 }, { DIS_PAD_JTAG: 51, SECURE_BOOT_EN: 116, DIS_USB_JTAG: 118, DIS_DOWNLOAD_MODE: 128, ENABLE_SECURITY_DOWNLOAD: 133 });
  // SECURE_BOOT_EN is word 3, bit 20: the word esp_efuse_read_reg(EFUSE_BLK0, 3) returns.
  const w = [0, 0, 0, 1 << 20, 0, 0];
  t.true(bit(w, 116));
  t.false(bit(w, 115));
  t.false(bit(w, 117));
  t.true(bit([0, 0, 0, 0, 0x80000000, 0], 159), "bit 31 of a word reads as set, not as a negative number");
  t.throws(() => bit([0, 0], 116), { message: /word 3 was not read/ });
});

test("a fully locked S3 reading is a locked chip; each missing lock is named", (t) => {
  const release = { release: true, secureVersion: 1 };
  t.true(judgeChipLock(release, s3ChipState(S3_LOCKED)).locked);
  const cases: Array<[string, Partial<S3Reading>]> = [
    ["secure-boot", { block0: block0(6, S3_BLOCK0.DIS_PAD_JTAG, S3_BLOCK0.DIS_USB_JTAG, S3_BLOCK0.DIS_DOWNLOAD_MODE) }],
    ["jtag", { block0: block0(6, S3_BLOCK0.SECURE_BOOT_EN, S3_BLOCK0.DIS_PAD_JTAG, S3_BLOCK0.DIS_DOWNLOAD_MODE) }],
    ["jtag", { block0: block0(6, S3_BLOCK0.SECURE_BOOT_EN, S3_BLOCK0.DIS_USB_JTAG, S3_BLOCK0.DIS_DOWNLOAD_MODE) }],
    ["rom-download", { block0: block0(6, S3_BLOCK0.SECURE_BOOT_EN, S3_BLOCK0.DIS_PAD_JTAG, S3_BLOCK0.DIS_USB_JTAG, S3_BLOCK0.ENABLE_SECURITY_DOWNLOAD) }],
    ["flash-encryption", { flashMode: 1 }],
    ["flash-encryption", { flashMode: 0 }],
    ["nvs-encryption", { nvsKeyPurpose: 0 }],
    ["nvs-encryption", { nvsKeyReadProtected: 0 }],
  ];
  for (const [lock, change] of cases) {
    const v = judgeChipLock(release, s3ChipState({ ...S3_LOCKED, ...change }));
    t.false(v.productionSecrets, lock);
    t.deepEqual(v.problems.map((p) => p.lock), [lock], JSON.stringify(change));
  }
  t.is(s3ChipState({ ...S3_LOCKED, block0: block0(6, S3_BLOCK0.ENABLE_SECURITY_DOWNLOAD) }).romDownload, "secure");
  t.is(s3ChipState({ ...S3_LOCKED, block0: block0(6) }).romDownload, "enabled");
  t.throws(() => s3ChipState({ ...S3_LOCKED, flashMode: 7 }), { message: /no mode this firmware knows/ });
});

test("the classic ESP32 reading: its own bits, and never locked (no HMAC key)", (t) => {
  t.deepEqual({ ...ESP32_BLOCK0 }, { UART_DOWNLOAD_DIS: 27, ABS_DONE_0: 196, ABS_DONE_1: 197, JTAG_DISABLE: 198 });
  const s = esp32ChipState({ block0: block0(7, 27, 197, 198), flashMode: 2 });
  t.deepEqual(s, { chip: "ESP32", secureBoot: true, flashEncryption: "release", nvsEncryptionKey: false, romDownload: "disabled", jtagDisabled: true });
  t.deepEqual(judgeChipLock({ release: false }, s).problems.map((p) => p.lock), ["nvs-encryption"]);
});

const json = (file: string) => JSON.parse(fs.readFileSync(file, "utf8"));
const ffi = (file: string) => json(file).ffi?.functions ?? {};

test("every platform maps a chip-lock adapter, and binds exactly the eFuse functions it calls", (t) => {
  t.is(json("hardware/esp32s3.json").modules["device/chip-lock"], "../modules/device/chip-lock");
  t.is(json("hardware/esp32cam.json").modules["device/chip-lock"], "../modules/device/chip-lock-esp32");
  t.is(json("hardware/lin.json").modules["device/chip-lock"], "../modules/device/chip-lock-sim");
  const s3 = ffi("hardware/esp32s3.json");
  t.deepEqual(s3.esp_efuse_read_reg, { arguments: ["int32_t", "uint32_t"], returns: "uint32_t" });
  t.deepEqual(s3.esp_get_flash_encryption_mode, { arguments: [], returns: "int32_t" });
  t.deepEqual(s3.esp_efuse_get_key_purpose, { arguments: ["int32_t"], returns: "int32_t" });
  t.deepEqual(s3.esp_efuse_get_key_dis_read, { arguments: ["int32_t"], returns: "uint8_t" });
  t.deepEqual(s3.esp_efuse_read_secure_version, { arguments: [], returns: "uint32_t" });
  t.false("esp_secure_boot_enabled" in s3, "inline in ESP-IDF v6: cannot be bound");
  const cam = ffi("hardware/esp32cam.json");
  t.deepEqual(cam.esp_efuse_read_reg, s3.esp_efuse_read_reg);
  t.deepEqual(cam.esp_get_flash_encryption_mode, s3.esp_get_flash_encryption_mode);
  t.false("esp_efuse_get_key_purpose" in cam);
  for (const [file, bound] of [["modules/device/chip-lock.ts", s3], ["modules/device/chip-lock-esp32.ts", cam]] as const) {
    const source = fs.readFileSync(file, "utf8");
    const called = [...source.matchAll(/natives\.([a-z_0-9]+)\(/g)].map((m) => m[1]);
    t.true(called.length >= 2, file);
    for (const f of called) t.true(f in bound, `${file} calls ${f}, which its manifest does not bind`);
  }
  const base = ffi("hardware/esp32.json");
  t.deepEqual(base.bootloader_random_enable, { arguments: [], returns: "void" });
  t.deepEqual(base.bootloader_random_disable, { arguments: [], returns: "void" });
  // The entropy source is on from the moment the RNG exists, before anything can draw from it.
  const random = fs.readFileSync("modules/device/random.ts", "utf8");
  const body = random.slice(random.indexOf("export function createRandom"));
  t.true(body.indexOf("bootloader_random_enable()") < body.indexOf("fill(target"));
});

test("the device shows a refused chip with its own LED pattern, and wires the chip and the entropy source into the boot", (t) => {
  const main = fs.readFileSync("modules/device/main.ts", "utf8");
  t.regex(main, /chipLock: \{ build: \{ release: settings\.release, secureVersion: settings\.secureVersion \}, read: board\.chip \}/);
  t.regex(main, /entropyReady: \(\) => d\.random\.entropyReady\(\)/);
  t.regex(main, /e instanceof ChipLockError\) \{[^}]*led\.set\("unlocked"\)/);
  for (const board of ["modules/device/board.ts", "modules/device/board-sim.ts"]) t.regex(fs.readFileSync(board, "utf8"), /chip: readChipState/, board);
});

test("the release manifest's settings reach the device: release and the secure version", (t) => {
  const base = { doorward: { board: "x", broker: { host: "a.example", port: 8883 }, trustAnchors: ["r"], timeFloorMs: 1, time: { source: "sntp" }, provisioning: { channel: "serial" } } };
  const dev = parseSettings(base);
  t.false(dev.release);
  t.is(dev.secureVersion, undefined);
  const release = parseSettings({ ...base, doorward: { ...base.doorward, ...json("manifest_release.json").config.doorward } });
  t.true(release.release);
  t.is(release.secureVersion, 1);
  t.throws(() => parseSettings({ ...base, doorward: { ...base.doorward, release: "yes" } }), { message: /doorward.release/ });
  // A plain-flash vault key only in a development build, never in a production or release one.
  t.throws(() => parseSettings({ ...base, devVaultKey: "1" }), { message: /devVaultKey=1 is for development builds only/ });
  t.throws(() => parseSettings({ ...base, devVaultKey: "1", development: "1", doorward: { ...base.doorward, release: true } }), { message: /devVaultKey=1/ });
  const devKey = parseSettings({ ...base, devVaultKey: "1", development: "1" });
  t.true(devKey.devVaultKey && devKey.development);
});

/** A store that fails the test if anything touches it. */
function untouchable(touched: string[]): KeyValueStore {
  const no = (what: string) => () => {
    touched.push(what);
    throw new Error(`the vault store was ${what}`);
  };
  return { read: no("read"), write: no("written"), delete: no("deleted"), keys: no("listed") };
}

const UNLOCKED: ChipState = { chip: "ESP32-S3", secureBoot: false, flashEncryption: "development", nvsEncryptionKey: false, romDownload: "enabled", jtagDisabled: false };
const transport = (): MqttTransport => ({ connect: (h) => h.onClose("offline"), publish: () => Promise.reject(new Error("offline")), subscribe: () => Promise.resolve(), close: () => {} });
const keys = { storageKey: () => new Uint8Array(32).fill(3) };

test("PoC: a release build on an unlocked chip refuses before the vault is opened, naming every missing lock", (t) => {
  const touched: string[] = [];
  const lines: string[] = [];
  const error = t.throws(() =>
    bootFirmware({
      clock: new ManualClock(), random: hostRandom, vaultStore: untouchable(touched), store: new MemoryStore(), keys, transport,
      log: (level, message) => lines.push(`${level} ${message}`),
      chipLock: { build: { release: true, secureVersion: 1 }, read: () => UNLOCKED },
    }),
  );
  t.true(error instanceof ChipLockError, String(error));
  t.deepEqual(touched, [], "no production secret was read");
  t.regex(error!.message, /production secrets refused \(missing: secure-boot, flash-encryption, nvs-encryption, rom-download, jtag\)/);
  for (const reason of [/Secure Boot is off/, /development mode/, /NVS encryption/, /ROM download mode is open/, /JTAG is enabled/]) {
    t.true(lines.some((l) => l.startsWith("error chip lock:") && reason.test(l)), String(reason));
  }
});

test("an unreadable chip counts as unlocked in a release build; a development build on the same chip goes on and says so", (t) => {
  const touched: string[] = [];
  t.throws(() =>
    bootFirmware({
      clock: new ManualClock(), random: hostRandom, vaultStore: untouchable(touched), store: new MemoryStore(), keys, transport, log: () => {},
      chipLock: { build: { release: true, secureVersion: 1 }, read: () => { throw new Error("FFI glue missing"); } },
    }),
    { instanceOf: ChipLockError, message: /efuse-read/ },
  );
  t.deepEqual(touched, []);
  const lines: string[] = [];
  const fw = bootFirmware({
    clock: new ManualClock(), random: hostRandom, vaultStore: new MemoryStore(), store: new MemoryStore(), keys, transport,
    log: (level, message) => lines.push(`${level} ${message}`),
    chipLock: { build: { release: false }, read: () => UNLOCKED },
  });
  t.is(fw.state, "unprovisioned");
  t.true(lines.some((l) => l.startsWith("warn DEVELOPMENT BUILD: the chip is not locked")));
});

test("nonce precomputation waits for the entropy source; signatures meanwhile are deterministic", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dw-entropy-pki-"));
  const c = await issueThingCredentials(dir, "porch-entropy");
  const bundle = { thing: "porch-entropy", wifi: { ssid: "Home", password: "a long passphrase" }, endpoint: "localhost", cert: c.certDer, key: c.keyDer, ca: c.caDer, owner: { signKey: nacl.sign.keyPair().publicKey, boxKey: nacl.box.keyPair().publicKey } };
  const flash = { vaultStore: new MemoryStore(), store: new MemoryStore() };
  const clock = new ManualClock();
  // Provisioning happens while the boot-time source runs; it is handed back when Wi-Fi starts, until the radio is up.
  let ready = true;
  const ports = { clock, random: hostRandom, ...flash, keys, log: () => {}, transport: (_: DeviceIdentity) => transport(), entropyReady: () => ready, chipLock: { build: { release: true, secureVersion: 1 }, read: () => s3ChipState(S3_LOCKED) } };
  (bootFirmware(ports) as WaitingFirmware).provisioning.accept(encodeBundle(bundle));
  ready = false;
  const fw = bootFirmware(ports) as RunningFirmware;
  t.is(fw.state, "running", "a locked chip in a release build runs");
  for (let i = 0; i < 20; i++) {
    clock.advance(500);
    await new Promise((r) => setImmediate(r));
  }
  t.is(fw.doorbell.signer.stats.precomputed, 0, "no nonce before the entropy source runs");
  const early = fw.doorbell.press();
  t.is(fw.doorbell.signer.stats.slow, 1, "the ring was signed deterministically");
  t.true(early.stored);
  ready = true;
  for (let i = 0; i < 40 && fw.doorbell.signer.ready === 0; i++) {
    clock.advance(500);
    await new Promise((r) => setImmediate(r));
  }
  t.true(fw.doorbell.signer.stats.precomputed > 0, "nonces once it does");
  fw.stop();
});
