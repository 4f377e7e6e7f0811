/*
 * Simulated OTA flash for the host: two image slots and a boot record on disk,
 * behind the core's UpdateSink and the update agent's BootControl.
 *
 * It behaves like ESP-IDF with app rollback enabled, which is what the device
 * build uses: complete() marks the written slot "new" in the boot record; the
 * next power-on (powerOn(), the bootloader) starts it as "pending"; if it is
 * started again while still pending, never confirmed, the bootloader gives up
 * on it and starts the previous slot. confirm() makes it "valid"; rollback()
 * returns to the previous slot at once. The boot record is one small JSON file
 * replaced atomically (temp file, fsync, rename, fsync of the folder), the way
 * ESP-IDF's otadata sectors are, so a power cut leaves the old record or the
 * new one. Image writes go to the inactive slot only, so the running image is
 * never touched.
 *
 * Fault injection: a FaultPlan passed in is told about every durable step
 * (slot open/write/sync, boot-record temp/rename) and, through faultyStore(),
 * every KV write; at the chosen step it throws PowerCut and keeps throwing,
 * as a dead device would. The test then "powers on" fresh objects over the
 * same files.
 *
 * Simulated images carry a small header {board, version, healthy} so the
 * simulated firmware knows which version it is after a reboot, and a test can
 * ship an image whose self-test fails.
 */
import fs from "node:fs";
import path from "node:path";
import type { KeyValueStore, UpdateSink } from "../core/ports";
import type { BootControl } from "../core/update";
import { canonicalBytes } from "../core/canonical";
import { concatBytes, utf8Decode, utf8Encode } from "../core/bytes";

/** The update agent uses the same native-digest adapter as the camera. */
export { hostSha256 } from "./cipher";

// ------------------------------------------------------------------ power cuts

export class PowerCut extends Error {
  override name = "PowerCut";
}

/** Counts durable steps; throws PowerCut at step cutAt (1-based) and at every step after it. */
export class FaultPlan {
  readonly cutAt: number | undefined;
  steps: string[] = [];
  tripped = false;

  constructor(cutAt?: number) {
    this.cutAt = cutAt;
  }

  step(name: string): void {
    if (this.tripped) throw new PowerCut(`device is off (${name})`);
    this.steps.push(name);
    if (this.steps.length === this.cutAt) {
      this.tripped = true;
      throw new PowerCut(`power cut at step ${this.cutAt}: ${name}`);
    }
  }
}

/** A KeyValueStore whose writes and deletes are steps of a FaultPlan (a cut step writes nothing: NVS writes are atomic). */
export function faultyStore(store: KeyValueStore, plan: FaultPlan): KeyValueStore {
  return {
    read: (key) => {
      if (plan.tripped) throw new PowerCut("device is off");
      return store.read(key);
    },
    write: (key, value) => {
      plan.step(`kv.write ${key}`);
      store.write(key, value);
    },
    delete: (key) => {
      plan.step(`kv.delete ${key}`);
      store.delete(key);
    },
    keys: () => store.keys(),
  };
}

// ------------------------------------------------------------------ simulated images

const SIM_MAGIC = "DOORWARD-SIM-FW/1\n";

export interface SimImageInfo {
  board: string;
  version: number;
  /** Whether the simulated firmware passes its self-test. */
  healthy: boolean;
}

/** A fake firmware image: a header the simulated firmware reads at boot, then deterministic filler up to size. */
export function makeSimImage(info: SimImageInfo & { size?: number }): Uint8Array {
  const header = concatBytes(utf8Encode(SIM_MAGIC), canonicalBytes({ board: info.board, healthy: info.healthy, version: info.version }), utf8Encode("\n"));
  const size = Math.max(info.size ?? 64 * 1024, header.length);
  const image = new Uint8Array(size);
  image.set(header);
  let x = (info.version * 2654435761) >>> 0 || 1;
  for (let i = header.length; i < size; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    image[i] = x & 255;
  }
  return image;
}

export function readSimImage(image: Uint8Array): SimImageInfo {
  const head = utf8Decode(image.subarray(0, Math.min(image.length, 256)).filter((b) => b < 128));
  if (!head.startsWith(SIM_MAGIC)) throw new TypeError("not a simulated Doorward image");
  const line = head.slice(SIM_MAGIC.length).split("\n")[0];
  const info = JSON.parse(line) as SimImageInfo;
  if (typeof info.version !== "number" || typeof info.board !== "string" || typeof info.healthy !== "boolean") throw new TypeError("bad simulated image header");
  return info;
}

// ------------------------------------------------------------------ slots

export type SlotName = "a" | "b";

/** The boot record (ESP-IDF's otadata, simplified). */
export interface BootRecord {
  seq: number;
  active: SlotName;
  /** new: completed, never started; pending: started once on trial; valid: confirmed. */
  state: "new" | "pending" | "valid";
  /** Where to go back to if the active slot is abandoned. */
  previous: SlotName | null;
  sizes: Record<SlotName, number>;
}

export interface BootedImage {
  slot: SlotName;
  image: Uint8Array;
  /** The image runs on trial: it must confirm itself or the next power-on abandons it. */
  trial: boolean;
  /** The bootloader abandoned an unconfirmed image on this power-on. */
  rolledBack: boolean;
}

export interface HostSlotsOptions {
  /** Bytes per slot. Default 4 MB. */
  capacity?: number;
  faults?: FaultPlan;
  /** Called by restart() and rollback(): the simulator powers the device off and on. */
  onRestart?: (why: "restart" | "rollback") => void;
}

const RECORD = "boot.json";
const other = (s: SlotName): SlotName => (s === "a" ? "b" : "a");

export class HostSlots implements UpdateSink, BootControl {
  readonly dir: string;
  readonly capacity: number;
  onRestart: ((why: "restart" | "rollback") => void) | undefined;
  restarts: Array<"restart" | "rollback"> = [];
  #faults: FaultPlan | undefined;
  #running: SlotName | undefined;
  #writing: { slot: SlotName; fd: number; expected: number; written: number } | undefined;

  constructor(dir: string, options: HostSlotsOptions = {}) {
    this.dir = dir;
    this.capacity = options.capacity ?? 4 * 1024 * 1024;
    this.#faults = options.faults;
    this.onRestart = options.onRestart;
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    fs.rmSync(path.join(dir, RECORD + ".tmp"), { force: true });
  }

  #step(name: string): void {
    this.#faults?.step(name);
  }

  #slotPath(slot: SlotName): string {
    return path.join(this.dir, `slot-${slot}.bin`);
  }

  /** The boot record, or undefined on blank flash. */
  record(): BootRecord | undefined {
    try {
      return JSON.parse(fs.readFileSync(path.join(this.dir, RECORD), "utf8")) as BootRecord;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw e;
    }
  }

  #writeRecord(record: BootRecord): void {
    const target = path.join(this.dir, RECORD);
    const temp = target + ".tmp";
    this.#step("boot.temp");
    const fd = fs.openSync(temp, "w", 0o600);
    try {
      fs.writeSync(fd, JSON.stringify(record));
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    this.#step("boot.rename");
    fs.renameSync(temp, target);
    const dirFd = fs.openSync(this.dir, "r");
    try {
      fs.fsyncSync(dirFd);
    } finally {
      fs.closeSync(dirFd);
    }
  }

  /** Factory programming: put an image in slot a and make it the valid boot image. Only on blank flash. */
  installFactory(image: Uint8Array): void {
    if (this.record()) return;
    if (image.length > this.capacity) throw new RangeError("factory image larger than a slot");
    fs.writeFileSync(this.#slotPath("a"), image, { mode: 0o600 });
    this.#writeRecord({ seq: 1, active: "a", state: "valid", previous: null, sizes: { a: image.length, b: 0 } });
  }

  /** The bootloader at power-on: choose the slot to run, applying the trial and rollback rules. */
  powerOn(): BootedImage {
    const rec = this.record();
    if (!rec) throw new Error("blank flash: no boot record (installFactory first)");
    let rolledBack = false;
    let trial = false;
    if (rec.state === "pending" && rec.previous) {
      // Started once on trial and never confirmed: abandon it.
      rec.active = rec.previous;
      rec.previous = null;
      rec.state = "valid";
      rec.seq++;
      this.#writeRecord(rec);
      rolledBack = true;
    } else if (rec.state === "new") {
      rec.state = "pending";
      rec.seq++;
      this.#writeRecord(rec);
      trial = true;
    }
    const image = fs.readFileSync(this.#slotPath(rec.active)).subarray(0, rec.sizes[rec.active]);
    if (image.length !== rec.sizes[rec.active]) throw new Error(`slot ${rec.active} is shorter than its recorded size`);
    this.#running = rec.active;
    return { slot: rec.active, image: new Uint8Array(image), trial, rolledBack };
  }

  /** The slot the running image came from. */
  get running(): SlotName {
    return this.#running ?? this.record()?.active ?? "a";
  }

  // ---------------------------------------------------------------- UpdateSink

  open(byteLength: number): void {
    if (!Number.isSafeInteger(byteLength) || byteLength <= 0 || byteLength > this.capacity) throw new RangeError(`image of ${byteLength} bytes does not fit a ${this.capacity}-byte slot`);
    this.cancel();
    const slot = other(this.running);
    this.#step("slot.open");
    const fd = fs.openSync(this.#slotPath(slot), "w", 0o600);
    this.#writing = { slot, fd, expected: byteLength, written: 0 };
  }

  write(chunk: Uint8Array): void {
    const w = this.#writing;
    if (!w) throw new Error("update sink: not open");
    if (w.written + chunk.length > w.expected) throw new RangeError("update sink: more bytes than announced");
    this.#step("slot.write");
    fs.writeSync(w.fd, chunk);
    w.written += chunk.length;
  }

  complete(): void {
    const w = this.#writing;
    if (!w) throw new Error("update sink: not open");
    if (w.written !== w.expected) throw new Error(`update sink: ${w.written} of ${w.expected} bytes written`);
    this.#step("slot.sync");
    fs.fsyncSync(w.fd);
    fs.closeSync(w.fd);
    this.#writing = undefined;
    const rec = this.record()!;
    const previous = this.running;
    this.#writeRecord({ seq: rec.seq + 1, active: w.slot, state: "new", previous, sizes: { ...rec.sizes, [w.slot]: w.expected } });
  }

  cancel(): void {
    const w = this.#writing;
    if (!w) return;
    this.#writing = undefined;
    try {
      fs.closeSync(w.fd);
    } catch {
      // already closed
    }
  }

  // ---------------------------------------------------------------- BootControl

  confirm(): void {
    const rec = this.record()!;
    if (rec.state !== "pending" || rec.active !== this.running) return;
    this.#writeRecord({ ...rec, seq: rec.seq + 1, state: "valid" });
  }

  rollback(_reason: string): void {
    const rec = this.record()!;
    if (rec.active === this.running && rec.previous) {
      this.#writeRecord({ ...rec, seq: rec.seq + 1, active: rec.previous, previous: null, state: "valid" });
    }
    this.restarts.push("rollback");
    this.onRestart?.("rollback");
  }

  restart(): void {
    this.restarts.push("restart");
    this.onRestart?.("restart");
  }
}

/** Power on a simulated doorbell's flash: factory-program it if blank, run the bootloader, read the booted image's header. */
export function openSimFirmware(dir: string, options: HostSlotsOptions & { board: string; factoryVersion?: number }): { slots: HostSlots; booted: BootedImage; info: SimImageInfo } {
  const slots = new HostSlots(dir, options);
  if (!slots.record()) slots.installFactory(makeSimImage({ board: options.board, version: options.factoryVersion ?? 1, healthy: true }));
  const booted = slots.powerOn();
  return { slots, booted, info: readSimImage(booted.image) };
}
