/*
 * File-backed key-value store: the simulator's stand-in for NVS.
 *
 * One file per key in a folder. A write goes to a temporary file, is flushed to
 * disk, then renamed over the old one, and the folder is flushed: POSIX rename
 * is atomic, so after a crash a key holds its old value or its new one, never
 * a torn mix. It enforces the same limits as Moddable's preference module so
 * code that passes here fits on the device.
 */
import fs from "node:fs";
import path from "node:path";
import { KV_MAX_KEY, KV_MAX_VALUE, type KeyValueStore } from "../core/ports";

const KEY = /^[A-Za-z0-9._-]+$/;
const TEMP_SUFFIX = ".tmp";

function checkKey(key: string): void {
  if (typeof key !== "string" || key.length === 0 || key.length > KV_MAX_KEY || !KEY.test(key) || key.startsWith(".")) {
    throw new RangeError(`store: key must be 1-${KV_MAX_KEY} characters of [A-Za-z0-9._-], not starting with "."`);
  }
}

/**
 * Replace `target` with `data` so that after a crash it holds the old bytes or
 * the new ones, never a torn mix: temporary file, flushed, renamed over the
 * target, folder flushed. Every host-side file that must survive a crash
 * whole goes through here.
 */
export function writeFileAtomic(target: string, data: Uint8Array, mode = 0o600): void {
  const temp = target + TEMP_SUFFIX;
  const fd = fs.openSync(temp, "w", mode);
  try {
    fs.writeSync(fd, data);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(temp, target);
  syncDir(path.dirname(target));
}

function syncDir(dir: string): void {
  const fd = fs.openSync(dir, "r");
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

export class FileStore implements KeyValueStore {
  readonly dir: string;

  constructor(dir: string) {
    this.dir = dir;
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    // A temp file left by a crash mid-write is garbage: the rename never happened.
    for (const name of fs.readdirSync(dir)) if (name.endsWith(TEMP_SUFFIX)) fs.rmSync(path.join(dir, name), { force: true });
  }

  read(key: string): Uint8Array | undefined {
    checkKey(key);
    try {
      return new Uint8Array(fs.readFileSync(path.join(this.dir, key)));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw e;
    }
  }

  write(key: string, value: Uint8Array): void {
    checkKey(key);
    if (!(value instanceof Uint8Array)) throw new TypeError("store: value must be a Uint8Array");
    if (value.length > KV_MAX_VALUE) throw new RangeError(`store: value for "${key}" is ${value.length} bytes, limit ${KV_MAX_VALUE}`);
    writeFileAtomic(path.join(this.dir, key), value);
  }

  delete(key: string): void {
    checkKey(key);
    fs.rmSync(path.join(this.dir, key), { force: true });
    syncDir(this.dir);
  }

  keys(): string[] {
    return fs.readdirSync(this.dir).filter((n) => !n.endsWith(TEMP_SUFFIX)).sort();
  }
}

/** RAM-only store with the same limits, for tests and benchmarks. */
export class MemoryStore implements KeyValueStore {
  readonly map = new Map<string, Uint8Array>();
  read(key: string) {
    checkKey(key);
    const v = this.map.get(key);
    return v && v.slice();
  }
  write(key: string, value: Uint8Array) {
    checkKey(key);
    if (value.length > KV_MAX_VALUE) throw new RangeError(`store: value for "${key}" is ${value.length} bytes, limit ${KV_MAX_VALUE}`);
    this.map.set(key, value.slice());
  }
  delete(key: string) {
    checkKey(key);
    this.map.delete(key);
  }
  keys() {
    return [...this.map.keys()].sort();
  }
}
