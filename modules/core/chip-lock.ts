/*
 * Whether this chip may hold production secrets: the boot-time judgement of
 * what the chip's eFuses say about its locks.
 *
 * The vault's key comes from the HMAC peripheral, and every secret is only as
 * safe as the chip that asks it. A chip is "locked" when Secure Boot V2 runs
 * only signed images, flash is encrypted in release mode, NVS is encrypted
 * under an HMAC eFuse key, JTAG is burned off and the ROM download mode is
 * gone, so nobody with a USB cable can read flash, write old flash back, or
 * run their own code to ask for the key. A release build (manifest_release.json)
 * refuses production secrets on a chip that is not locked, naming every lock
 * that is missing; a development build reports the same list and goes on.
 *
 * Platform-free: the device adapter ("device/chip-lock") reads the eFuses
 * through the XS FFI into a ChipState, and everything decided from it is here,
 * so the host tests and XS run the same judgement.
 */

export type FlashEncryptionMode = "disabled" | "development" | "release";
export type RomDownloadMode = "enabled" | "secure" | "disabled";

/** What the chip says about itself. */
export interface ChipState {
  /** A few words naming the chip or the simulator, for the log. */
  chip: string;
  /** eFuse SECURE_BOOT_EN: the ROM boots only a signed bootloader. */
  secureBoot: boolean;
  flashEncryption: FlashEncryptionMode;
  /** The NVS encryption key's eFuse block holds an HMAC_UP key that software cannot read. */
  nvsEncryptionKey: boolean;
  romDownload: RomDownloadMode;
  /** JTAG (pads and USB) burned off. */
  jtagDisabled: boolean;
  /** The anti-rollback count burned in eFuse SECURE_VERSION, when the chip has one. */
  secureVersion?: number;
}

export interface BuildKind {
  /** A release build (manifest_release.json): production secrets only on a locked chip. */
  release: boolean;
  /** The image's own anti-rollback version (CONFIG_BOOTLOADER_APP_SECURE_VERSION); release builds must set one. */
  secureVersion?: number;
}

export type LockName = "secure-boot" | "flash-encryption" | "nvs-encryption" | "rom-download" | "jtag" | "anti-rollback" | "efuse-read";

export interface LockProblem {
  lock: LockName;
  reason: string;
}

export interface LockVerdict {
  release: boolean;
  /** Every lock is on. */
  locked: boolean;
  /** The vault may be opened and a bundle accepted. False only in a release build on an unlocked chip. */
  productionSecrets: boolean;
  problems: LockProblem[];
  /** One line for the console. */
  summary: string;
}

const FLASH_MODES: readonly string[] = ["disabled", "development", "release"];
const ROM_MODES: readonly string[] = ["enabled", "secure", "disabled"];

/** Throws a TypeError naming the first field of a state that no adapter should produce. */
export function checkChipState(state: ChipState): ChipState {
  if (typeof state !== "object" || state === null) throw new TypeError("chip lock: the chip state must be an object");
  for (const key of ["secureBoot", "nvsEncryptionKey", "jtagDisabled"] as const) {
    if (typeof state[key] !== "boolean") throw new TypeError(`chip lock: ${key} must be true or false`);
  }
  if (!FLASH_MODES.includes(state.flashEncryption)) throw new TypeError("chip lock: flashEncryption must be disabled, development or release");
  if (!ROM_MODES.includes(state.romDownload)) throw new TypeError("chip lock: romDownload must be enabled, secure or disabled");
  if (state.secureVersion !== undefined && !(Number.isInteger(state.secureVersion) && state.secureVersion >= 0)) {
    throw new TypeError("chip lock: secureVersion must be a non-negative integer");
  }
  return state;
}

function problemsOf(build: BuildKind, state: ChipState): LockProblem[] {
  const problems: LockProblem[] = [];
  if (!state.secureBoot) problems.push({ lock: "secure-boot", reason: "Secure Boot is off: any image can run and ask the HMAC peripheral for the vault key" });
  if (state.flashEncryption !== "release") {
    problems.push({
      lock: "flash-encryption",
      reason:
        state.flashEncryption === "disabled"
          ? "flash encryption is off: a flash dump shows every record"
          : "flash encryption is in development mode: the ROM download mode can still write chosen plaintext",
    });
  }
  if (!state.nvsEncryptionKey) problems.push({ lock: "nvs-encryption", reason: "NVS encryption has no read-protected HMAC key in eFuse BLOCK_KEY3" });
  if (state.romDownload !== "disabled") {
    problems.push({
      lock: "rom-download",
      reason:
        state.romDownload === "enabled"
          ? "the ROM download mode is open: flash can be read and written over USB"
          : "the ROM download mode is in secure mode: old flash contents can still be written back over USB",
    });
  }
  if (!state.jtagDisabled) problems.push({ lock: "jtag", reason: "JTAG is enabled: a debugger can read memory and drive the CPU" });
  if (build.release) {
    if (build.secureVersion === undefined || build.secureVersion < 1) {
      problems.push({ lock: "anti-rollback", reason: "this release build sets no anti-rollback secure version" });
    } else if (state.secureVersion !== undefined && state.secureVersion > build.secureVersion) {
      // The bootloader would not have started it: eFuses or the image were tampered with.
      problems.push({ lock: "anti-rollback", reason: `eFuse secure version ${state.secureVersion} is above this image's ${build.secureVersion}` });
    }
  }
  return problems;
}

/**
 * The judgement. `state` is what the adapter read, or the error it threw: an
 * unreadable chip counts as unlocked.
 */
export function judgeChipLock(build: BuildKind, state: ChipState | Error): LockVerdict {
  let problems: LockProblem[];
  if (state instanceof Error) {
    problems = [{ lock: "efuse-read", reason: `the chip's eFuses could not be read (${state.message})` }];
  } else {
    try {
      problems = problemsOf(build, checkChipState(state));
    } catch (e) {
      problems = [{ lock: "efuse-read", reason: e instanceof Error ? e.message : String(e) }];
    }
  }
  const locked = problems.length === 0;
  const productionSecrets = locked || !build.release;
  const names = problems.map((p) => p.lock).join(", ");
  let summary: string;
  if (locked) summary = build.release ? "chip locked: release build, production secrets allowed" : "chip locked (development build)";
  else if (build.release) summary = `RELEASE BUILD ON AN UNLOCKED CHIP: production secrets refused (missing: ${names}); lock the chip as in docs/secrets.md`;
  else summary = `DEVELOPMENT BUILD: the chip is not locked (missing: ${names}); do not give it production secrets`;
  return { release: build.release, locked, productionSecrets, problems, summary };
}

export class ChipLockError extends Error {
  override name = "ChipLockError";
}
