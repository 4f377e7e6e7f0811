/*
 * The device Clock: Moddable timers, the tick counter and the system time.
 *
 * Time.ticks is a millisecond counter that the runtime hands back as a signed
 * 32-bit integer, so it wraps (negative after ~24.8 days). monotonic() adds up
 * the unsigned 32-bit differences between readings instead, which is exact as
 * long as readings are less than 49 days apart; an hourly timer guarantees that.
 *
 * Wall time is only trusted once something has set the clock: the SDK's
 * setup/network runs SNTP before the app starts (config "sntp"), and until then
 * Date.now() counts from 1970. Anything before `timeFloorMs` (a date this
 * firmware cannot predate) is treated as "no trusted time". A later issue
 * replaces the floor with an explicit SNTP-confirmed flag.
 */
import Timer from "timer";
import Time from "time";
import type { Clock } from "../core/ports";

/** Readings must be < 2^32 ms apart for the unsigned difference to be exact; refresh far more often. */
const REFRESH_MS = 60 * 60 * 1000;

export interface DeviceClockOptions {
  /** Epoch milliseconds below which Date.now() is not trusted. */
  timeFloorMs: number;
}

export class DeviceClock implements Clock {
  readonly timeFloorMs: number;
  #lastTicks: number;
  #elapsed = 0;

  constructor(options: DeviceClockOptions) {
    if (!(options.timeFloorMs > 0)) throw new RangeError("clock: timeFloorMs must be a positive epoch time");
    this.timeFloorMs = options.timeFloorMs;
    this.#lastTicks = Time.ticks;
    Timer.repeat(() => void this.monotonic(), REFRESH_MS);
  }

  monotonic(): number {
    const ticks = Time.ticks;
    this.#elapsed += (ticks - this.#lastTicks) >>> 0;
    this.#lastTicks = ticks;
    return this.#elapsed;
  }

  wallTime(): number | undefined {
    const now = Date.now();
    return now >= this.timeFloorMs ? now : undefined;
  }

  schedule(callback: () => void, delayMs: number): () => void {
    let pending = true;
    const timer = Timer.set(() => {
      pending = false;
      callback();
    }, Math.max(0, delayMs));
    return () => {
      // A one-shot timer is released once it fires; only clear one that has not.
      if (pending) {
        pending = false;
        Timer.clear(timer);
      }
    };
  }
}
