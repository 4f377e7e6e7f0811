/*
 * Host key provider: the vault's storage key in a file, for development only.
 *
 * On a real doorbell the key is derived inside the ESP32-S3's HMAC peripheral
 * from an eFuse key that software cannot read (modules/device/key-provider.ts).
 * A laptop has nothing like that, so the simulator keeps 32 random bytes in a
 * file next to (never inside) the store directory. The file is created with
 * mode 0600 and exclusively, so two processes cannot both create it; one that
 * anyone but its owner can read or write, a symbolic link, or one of the wrong
 * size is refused rather than used, because a key readable by other users
 * protects nothing. Every open prints a warning saying so.
 */
import fs from "node:fs";
import path from "node:path";
import type { KeyProvider } from "../core/vault";
import type { Random } from "../core/ports";
import { hostRandom } from "./random";

export const KEY_FILE_BYTES = 32;

export interface KeyFileOptions {
  /** Create the file when it does not exist (default true). */
  create?: boolean;
  /** Where the development warning goes. Default: stderr. */
  warn?: (line: string) => void;
  random?: Random;
}

export class KeyFileError extends Error {
  override name = "KeyFileError";
}

/**
 * Open (or create) a key file and return a provider reading it. Validation
 * happens here, once, so a bad file stops the simulator with a clear message
 * before the vault is opened.
 */
export function openKeyFile(file: string, options: KeyFileOptions = {}): KeyProvider & { readonly path: string; readonly created: boolean } {
  const warn = options.warn ?? ((line: string) => process.stderr.write(line + "\n"));
  const target = path.resolve(file);
  let created = false;
  if (!fs.existsSync(target) && !isLink(target)) {
    if (options.create === false) throw new KeyFileError(`key file ${target} does not exist`);
    createKeyFile(target, options.random ?? hostRandom);
    created = true;
  }
  readChecked(target).fill(0);
  warn(
    `doorward: DEVELOPMENT ONLY: the vault key is a plain file (${target}). Anyone who can read it can read every stored secret. ` +
      `A device derives its key from an eFuse key in the HMAC peripheral instead (docs/secrets.md).`,
  );
  return {
    path: target,
    created,
    storageKey: () => readChecked(target),
  };
}

function isLink(file: string): boolean {
  try {
    return fs.lstatSync(file).isSymbolicLink();
  } catch {
    return false;
  }
}

/**
 * Create a file only its owner can read, exclusively (EEXIST if it is already there),
 * flushed to disk before returning: for keys and anything else secret on the host.
 */
export function writePrivateFile(file: string, bytes: Uint8Array): void {
  const fd = fs.openSync(file, "wx", 0o600);
  try {
    fs.fchmodSync(fd, 0o600);
    fs.writeSync(fd, bytes);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function createKeyFile(target: string, random: Random): void {
  fs.mkdirSync(path.dirname(target), { recursive: true, mode: 0o700 });
  const key = new Uint8Array(KEY_FILE_BYTES);
  random.fill(key);
  try {
    writePrivateFile(target, key);
  } catch (e) {
    // EEXIST: another process won the race; use theirs.
    if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
  } finally {
    key.fill(0);
  }
}

/** Read the key after checking the file is private to its owner; a fresh array each time (the vault wipes it). */
function readChecked(target: string): Uint8Array {
  const link = fs.lstatSync(target);
  if (link.isSymbolicLink()) throw new KeyFileError(`key file ${target} is a symbolic link; refusing it`);
  if (!link.isFile()) throw new KeyFileError(`key file ${target} is not a regular file`);
  if ((link.mode & 0o077) !== 0) {
    throw new KeyFileError(
      `key file ${target} is accessible to other users (mode ${(link.mode & 0o777).toString(8)}); refusing it. ` +
        `If it was never shared, fix it with: chmod 600 ${target}`,
    );
  }
  if (typeof process.getuid === "function" && link.uid !== process.getuid()) {
    throw new KeyFileError(`key file ${target} belongs to another user (uid ${link.uid}); refusing it`);
  }
  if (link.size !== KEY_FILE_BYTES) throw new KeyFileError(`key file ${target} must hold exactly ${KEY_FILE_BYTES} bytes, not ${link.size}`);
  return new Uint8Array(fs.readFileSync(target));
}
