/*
 * One simulator per home directory. Two simulators over the same `.doorward/`
 * would run the same device twice: both sign with its key and count from the
 * same sequence file, so their sequence numbers collide and the cloud refuses
 * one side's rings as replays. The simulator takes `<home>/simulator.lock`
 * (created exclusively, holding its pid) before it touches anything; a lock
 * whose process is gone, after a crash or a kill, is stale and taken over.
 * The provisioning CLI checks the same lock before it changes the device.
 */
import fs from "node:fs";
import path from "node:path";
import { UserError } from "./cli";

export const LOCK_NAME = "simulator.lock";

/** A lock being written right now may still be empty for a moment: that young, it counts as held. */
const FRESH_EMPTY_MS = 5_000;

export interface HomeLock {
  file: string;
  /** The pid of a dead process whose lock was taken over, if any. */
  staleFrom: number | undefined;
  release(): void;
}

interface Holder {
  pid: number;
  startedAt: string;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    // EPERM: it exists, owned by someone else.
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Who holds the lock, if a live process does; undefined when there is no lock or it is stale. */
function liveHolder(file: string): Holder | "starting" | undefined {
  let text: string;
  let mtime: number;
  try {
    text = fs.readFileSync(file, "utf8");
    mtime = fs.statSync(file).mtimeMs;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw e;
  }
  let holder: Partial<Holder> = {};
  try {
    holder = JSON.parse(text) as Partial<Holder>;
  } catch {
    if (Date.now() - mtime < FRESH_EMPTY_MS) return "starting";
    return undefined;
  }
  if (typeof holder.pid !== "number" || !Number.isSafeInteger(holder.pid) || holder.pid <= 0) return undefined;
  return alive(holder.pid) ? { pid: holder.pid, startedAt: String(holder.startedAt ?? "") } : undefined;
}

function stalePid(file: string): number | undefined {
  try {
    const pid = (JSON.parse(fs.readFileSync(file, "utf8")) as Partial<Holder>).pid;
    return typeof pid === "number" ? pid : undefined;
  } catch {
    return undefined;
  }
}

function inUse(home: string, file: string, holder: Holder | "starting"): UserError {
  const who = holder === "starting" ? "another simulator that is starting" : `another simulator (pid ${holder.pid}, since ${holder.startedAt})`;
  return new UserError(
    `${home} is in use by ${who}: two would run the same device and their sequence numbers would collide. ` +
      `Stop that one (q at its prompt), or give this one its own --home DIR. If no simulator is running, remove ${file}`,
  );
}

/** Take the home directory for this process, or throw a UserError naming who has it. */
export function lockHome(home: string): HomeLock {
  fs.mkdirSync(home, { recursive: true, mode: 0o700 });
  const file = path.join(home, LOCK_NAME);
  let staleFrom: number | undefined;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fd = fs.openSync(file, "wx", 0o600);
      try {
        fs.writeSync(fd, JSON.stringify({ pid: process.pid, startedAt: new Date().toISOString() }) + "\n");
      } finally {
        fs.closeSync(fd);
      }
      const release = () => {
        process.off("exit", release);
        if (stalePid(file) === process.pid) fs.rmSync(file, { force: true });
      };
      process.on("exit", release);
      return { file, staleFrom, release };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    }
    const holder = liveHolder(file);
    if (holder) throw inUse(home, file, holder);
    staleFrom = stalePid(file);
    fs.rmSync(file, { force: true });
  }
  throw new UserError(`${file} keeps coming back: is another simulator starting on ${home}?`);
}

/**
 * Throws a UserError when a live simulator other than this process holds this
 * home (for commands that change its device; the simulator feeds its own first bundle).
 */
export function refuseIfLocked(home: string): void {
  const file = path.join(home, LOCK_NAME);
  const holder = liveHolder(file);
  if (holder && (holder === "starting" || holder.pid !== process.pid)) throw inUse(home, file, holder);
}
