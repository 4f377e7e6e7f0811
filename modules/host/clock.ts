/*
 * Host clock: Node's monotonic timer and system time behind the core's Clock port.
 * The host always has wall time (the OS keeps it), unlike a device before SNTP.
 */
import { performance } from "node:perf_hooks";
import type { Clock } from "../core/ports";

export function createHostClock(): Clock {
  return {
    monotonic: () => performance.now(),
    wallTime: () => Date.now(),
    schedule(callback, delayMs) {
      const id = setTimeout(callback, Math.max(0, delayMs));
      return () => clearTimeout(id);
    },
  };
}
