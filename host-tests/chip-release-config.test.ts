/*
 * The release (locked-chip) build configuration, checked without the SDK:
 * manifest_release.json maps each S3 board to its release sdkconfig directory,
 * whose sdkconfig.defaults keeps every line of the board's development file and
 * adds Secure Boot V2, release-mode flash encryption, NVS encryption under the
 * HMAC scheme, ROM download and JTAG off, and eFuse anti-rollback, with the
 * secure version equal to the one the firmware is told. Every other platform
 * is refused. The option names are ESP-IDF v6.0's (components/bootloader,
 * nvs_flash, nvs_sec_provider Kconfig files).
 */
import test from "ava";
import fs from "node:fs";
import path from "node:path";

const ROOT = path.resolve(".");
const S3 = ["xiao_esp32s3_sense", "m5atom_s3r_m12", "lilygo_t_camera_plus_s3"];

const REQUIRED: Record<string, string> = {
  CONFIG_SECURE_BOOT: "y",
  CONFIG_SECURE_BOOT_V2_ENABLED: "y",
  CONFIG_SECURE_SIGNED_APPS_RSA_SCHEME: "y",
  CONFIG_SECURE_BOOT_INSECURE: "n",
  CONFIG_SECURE_FLASH_ENC_ENABLED: "y",
  CONFIG_SECURE_FLASH_ENCRYPTION_MODE_RELEASE: "y",
  CONFIG_SECURE_FLASH_CHECK_ENC_EN_IN_APP: "y",
  CONFIG_SECURE_DISABLE_ROM_DL_MODE: "y",
  CONFIG_SECURE_BOOT_ALLOW_JTAG: "n",
  CONFIG_NVS_ENCRYPTION: "y",
  CONFIG_NVS_SEC_KEY_PROTECT_USING_HMAC: "y",
  CONFIG_NVS_SEC_HMAC_EFUSE_KEY_ID: "3",
  CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE: "y",
  CONFIG_BOOTLOADER_APP_ANTI_ROLLBACK: "y",
  CONFIG_PARTITION_TABLE_CUSTOM: "y",
};
/** Options that would undo a lock if they appeared set. */
const FORBIDDEN = [
  "CONFIG_SECURE_FLASH_ENCRYPTION_MODE_DEVELOPMENT",
  "CONFIG_SECURE_INSECURE_ALLOW_DL_MODE",
  "CONFIG_SECURE_ENABLE_SECURE_ROM_DL_MODE",
  "CONFIG_SECURE_FLASH_UART_BOOTLOADER_ALLOW_ENC",
  "CONFIG_SECURE_FLASH_UART_BOOTLOADER_ALLOW_CACHE",
  "CONFIG_SECURE_BOOT_V2_ALLOW_EFUSE_RD_DIS",
  "CONFIG_NVS_SEC_KEY_PROTECT_USING_FLASH_ENC",
  "CONFIG_EFUSE_VIRTUAL",
  "CONFIG_BOOTLOADER_EFUSE_SECURE_VERSION_EMULATE",
];

/** name → value, as mcconfig's merge reads a fragment (comments and blank lines skipped, a later line wins). */
export function parseSdkconfig(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const raw of text.split(/[\r\n]+/)) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const eq = line.indexOf("=");
    if (eq < 1) throw new Error(`not an sdkconfig line: ${line}`);
    out.set(line.slice(0, eq), line.slice(eq + 1));
  }
  return out;
}

/** What is wrong with a release fragment, given the board's development fragment and the firmware's secure version. */
export function releaseProblems(release: Map<string, string>, development: Map<string, string>, secureVersion: unknown): string[] {
  const problems: string[] = [];
  for (const [name, value] of Object.entries(REQUIRED)) {
    if (release.get(name) !== value) problems.push(`${name} must be ${value} (is ${release.get(name) ?? "unset"})`);
  }
  for (const name of FORBIDDEN) if (release.has(name) && release.get(name) !== "n") problems.push(`${name} must not be set`);
  for (const [name, value] of development) {
    if (release.get(name) !== value) problems.push(`${name}=${value} from the development file is missing or changed`);
  }
  const sv = release.get("CONFIG_BOOTLOADER_APP_SECURE_VERSION");
  if (sv === undefined || !/^[0-9]+$/.test(sv) || Number(sv) < 1) problems.push("CONFIG_BOOTLOADER_APP_SECURE_VERSION must be 1 or more");
  else if (Number(sv) !== secureVersion) problems.push(`CONFIG_BOOTLOADER_APP_SECURE_VERSION=${sv} but config.doorward.secureVersion is ${String(secureVersion)}`);
  const field = Number(release.get("CONFIG_BOOTLOADER_APP_SEC_VER_SIZE_EFUSE_FIELD"));
  if (!(field >= 1 && field <= 16) || Number(sv) > field) problems.push("CONFIG_BOOTLOADER_APP_SEC_VER_SIZE_EFUSE_FIELD must be 1-16 (S3) and hold the secure version");
  return problems;
}

const releaseManifest = JSON.parse(fs.readFileSync(path.join(ROOT, "manifest_release.json"), "utf8"));
const secureVersion = releaseManifest.config.doorward.secureVersion;

function releaseDirFor(board: string): string {
  const entry = releaseManifest.platforms[`esp32/${board}`];
  const include = path.resolve(ROOT, entry.include);
  const json = JSON.parse(fs.readFileSync(include, "utf8"));
  const value: string = json.build.SDKCONFIGPATH;
  // mcmanifest.js parseBuild resolves only values starting with "./" against the manifest's own directory;
  // "../x" would be left relative to wherever mcconfig runs, and the SDK then silently finds no sdkconfig.defaults.
  if (!value.startsWith("./")) throw new Error(`${entry.include}: SDKCONFIGPATH must start with "./" (is ${value})`);
  return path.resolve(path.dirname(include), value);
}

test("manifest_release.json builds on manifest.json, says it is a release, and refuses every platform but the S3 boards", (t) => {
  t.deepEqual([releaseManifest.include].flat(), ["./manifest.json"]);
  t.is(releaseManifest.config.doorward.release, true);
  t.true(Number.isInteger(secureVersion) && secureVersion >= 1);
  t.deepEqual(Object.keys(releaseManifest.platforms), [...S3.map((b) => `esp32/${b}`), "..."]);
  t.regex(releaseManifest.platforms["..."].error, /ESP32-CAM/);
});

for (const board of S3) {
  test(`${board}: the release sdkconfig locks the chip and keeps the board's own settings`, (t) => {
    const dir = releaseDirFor(board);
    t.is(path.relative(ROOT, dir), path.join("hardware", "sdkconfig", board, "release"));
    t.true(fs.existsSync(path.join(dir, "sdkconfig.defaults")));
    const release = parseSdkconfig(fs.readFileSync(path.join(dir, "sdkconfig.defaults"), "utf8"));
    const development = parseSdkconfig(fs.readFileSync(path.join(ROOT, "hardware", "sdkconfig", board, "sdkconfig.defaults"), "utf8"));
    t.deepEqual(releaseProblems(release, development, secureVersion), []);
    // The development file stays unlocked: a development build burns no eFuse.
    for (const name of ["CONFIG_SECURE_BOOT", "CONFIG_SECURE_FLASH_ENC_ENABLED", "CONFIG_NVS_ENCRYPTION", "CONFIG_SECURE_DISABLE_ROM_DL_MODE"]) {
      t.false(development.has(name), `${name} in the development file`);
    }
  });
}

test("the checker finds each missing or undone lock", (t) => {
  const dir = releaseDirFor(S3[0]);
  const good = parseSdkconfig(fs.readFileSync(path.join(dir, "sdkconfig.defaults"), "utf8"));
  const dev = parseSdkconfig(fs.readFileSync(path.join(ROOT, "hardware", "sdkconfig", S3[0], "sdkconfig.defaults"), "utf8"));
  for (const name of Object.keys(REQUIRED)) {
    const broken = new Map(good);
    broken.delete(name);
    t.true(releaseProblems(broken, dev, secureVersion).some((p) => p.startsWith(name)), name);
  }
  for (const name of FORBIDDEN) {
    const broken = new Map(good).set(name, "y");
    t.true(releaseProblems(broken, dev, secureVersion).some((p) => p.startsWith(name)), name);
  }
  t.true(releaseProblems(new Map(good).set("CONFIG_BOOTLOADER_APP_SECURE_VERSION", "2"), dev, secureVersion).some((p) => /secureVersion is 1/.test(p)));
  t.true(releaseProblems(new Map(good).set("CONFIG_SPIRAM", "n"), dev, secureVersion).some((p) => /CONFIG_SPIRAM=y from the development file/.test(p)));
});
