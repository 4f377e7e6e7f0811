/*
 * XS memory peaks of a running simulator build, from its own instrumentation.
 *
 * A -d build for lin is instrumented, and with no debugger attached each XS
 * machine prints its samples on mcsim's stdout once a second: the main
 * machine first names them ("instruments key: Pixels drawn,...,Chunk used,
 * Chunk available,Slot used,Slot available,Stack used,Stack available,Garbage
 * collections,...") and then prints one "instruments: v,v,..." line per
 * second; a Worker prints the same lines with the XS values only. This reads
 * those lines and keeps, per machine, the largest chunk and slot heaps in use,
 * the largest reserved (which shows whether a heap ever had to grow), and the
 * deepest stack: XS resets its stack peak at each sample, so the largest
 * sample is the run's peak.
 *
 * "In use" between collections includes garbage not yet collected, so with a
 * fixed heap it approaches the heap's size before each collection; what fits
 * is shown by a run with a board's creation values and no growth. A reading
 * taken after the collection count went up bounds the live data from above;
 * the largest of those is reported as "after a collection".
 */

/** The XS half of every sample, in this order, on every machine. */
export const XS_INSTRUMENTS = ["Chunk used", "Chunk available", "Slot used", "Slot available", "Stack used", "Stack available", "Garbage collections", "Keys used", "Modules loaded", "Parser used", "Floating Point", "Promises settled"];

export interface XsPeaks {
  samples: number;
  /** Bytes: the most in use, and the most reserved (a fixed heap keeps this at its initial size). */
  chunksUsed: number;
  chunksReserved: number;
  chunksReservedFirst: number;
  slotsUsedBytes: number;
  slotsReservedBytes: number;
  slotsReservedFirst: number;
  /** Bytes of stack at the deepest point, and the stack's size. */
  stackPeakBytes: number;
  stackBytes: number;
  /** The largest heaps in use in a sample taken after a collection. */
  chunksAfterGc: number;
  slotsAfterGcBytes: number;
  collections: number;
}

function empty(): XsPeaks {
  return { samples: 0, chunksUsed: 0, chunksReserved: 0, chunksReservedFirst: 0, slotsUsedBytes: 0, slotsReservedBytes: 0, slotsReservedFirst: 0, stackPeakBytes: 0, stackBytes: 0, chunksAfterGc: 0, slotsAfterGcBytes: 0, collections: 0 };
}

export class XsPeakTracker {
  #mainNames: string[] | undefined;
  #lastGc = new Map<string, number>();
  readonly machines = new Map<string, XsPeaks>();

  /** Feed one line of mcsim's output; true when it was an instrumentation line (and was taken in). */
  line(text: string): boolean {
    const key = /^instruments key: (.*)$/.exec(text);
    if (key) {
      this.#mainNames = key[1].split(",");
      return true;
    }
    const sample = /^instruments: ([0-9,-]+)$/.exec(text);
    if (!sample) return false;
    const values = sample[1].split(",").map(Number);
    let machine: string;
    let names: string[];
    if (this.#mainNames && values.length === this.#mainNames.length) {
      machine = "main";
      names = this.#mainNames;
    } else if (values.length === XS_INSTRUMENTS.length) {
      machine = "worker";
      names = XS_INSTRUMENTS;
    } else return true;
    const at = (name: string) => values[names.indexOf(name)];
    if (names.indexOf("Chunk used") < 0) return true;
    const p = this.machines.get(machine) ?? empty();
    this.machines.set(machine, p);
    const chunks = at("Chunk used"), slots = at("Slot used"), gc = at("Garbage collections");
    if (p.samples === 0) {
      p.chunksReservedFirst = at("Chunk available");
      p.slotsReservedFirst = at("Slot available");
    }
    p.samples++;
    p.chunksUsed = Math.max(p.chunksUsed, chunks);
    p.chunksReserved = Math.max(p.chunksReserved, at("Chunk available"));
    p.slotsUsedBytes = Math.max(p.slotsUsedBytes, slots);
    p.slotsReservedBytes = Math.max(p.slotsReservedBytes, at("Slot available"));
    p.stackPeakBytes = Math.max(p.stackPeakBytes, at("Stack used"));
    p.stackBytes = Math.max(p.stackBytes, at("Stack available"));
    const last = this.#lastGc.get(machine);
    if (last !== undefined && gc > last) {
      p.chunksAfterGc = Math.max(p.chunksAfterGc, chunks);
      p.slotsAfterGcBytes = Math.max(p.slotsAfterGcBytes, slots);
    }
    p.collections = Math.max(p.collections, gc);
    this.#lastGc.set(machine, gc);
    return true;
  }
}

/** One line of peaks: slot figures in slots (what creation.heap and creation.stack count), the rest in bytes. */
export function describePeaks(p: XsPeaks, slotBytes = 32): string {
  const slots = (b: number) => Math.round(b / slotBytes);
  return [
    `${p.samples} samples`,
    `stack peak ${slots(p.stackPeakBytes)} of ${slots(p.stackBytes)} slots`,
    `slots in use ≤ ${slots(p.slotsUsedBytes)} (${slots(p.slotsAfterGcBytes)} after a collection), reserved ${slots(p.slotsReservedFirst)} → ${slots(p.slotsReservedBytes)}`,
    `chunks in use ≤ ${p.chunksUsed} B (${p.chunksAfterGc} B after a collection), reserved ${p.chunksReservedFirst} → ${p.chunksReserved} B`,
    `${p.collections} collections`,
  ].join("; ");
}
