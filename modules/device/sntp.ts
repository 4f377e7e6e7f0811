/*
 * Wall time from the one allowlisted NTP host, before any TLS.
 *
 * TLS checks certificate validity against Date.now(), and an ESP32 starts at
 * 1970 after power-up, so nothing may open a TLS session until this module has
 * set the clock. What happens meanwhile (decided here, enforced by ./bringup):
 * the MQTT link is not attempted; a press still chimes and still becomes a
 * signed ring event, stamped `time: null` (the protocol's "no trusted time"),
 * which waits in the outbox and is delivered once the clock is set and the
 * link is up; the status LED shows "connecting". A clock already past the
 * firmware's floor (a soft restart keeps the RTC) counts as set, and is
 * refreshed in the background.
 *
 * The host name is resolved through the egress chokepoint (./egress
 * resolve(), which looks up only allowlisted names), and the SNTP client is
 * then given the address: on the device that client is ./egress sntpClass(),
 * the SDK `sntp` class's shape over the ECMA-419 UDP socket, which sends only
 * to an address resolved for the allowlisted NTP host and accepts only the
 * reply to its own request (a random 64-bit transmit timestamp it must echo).
 * SNTP is unauthenticated, so every answer is judged by ../core/time-check
 * before it touches the clock: never below the floor (the build date, raised by
 * the owner's authenticated commands), and after the first sync of a boot
 * never further from the running clock than a few seconds plus drift: a
 * larger difference moves the clock by that bound only. A forged reply a day
 * ahead therefore moves the clock by seconds. Its reach is limited anyway: the
 * trust anchors are pinned, a wrong time can make TLS fail (the device stays
 * offline and says so), not make a forged broker certificate pass, and
 * revocations and replay checks do not rest on the clock (../core/commands).
 *
 * Platform-free: the SNTP class, the resolver and Time.set are passed in.
 */
import type { Log } from "../core/ports";
import { checkNetworkTime, type TimeReference } from "../core/time-check";

/** The SDK `sntp` class's callback messages (./egress sntpClass() uses the same). */
export const SNTP_TIME = 1;
export const SNTP_RETRY = 2;
export const SNTP_ERROR = -1;

/** The SDK `sntp` class's shape: one query (five tries, five seconds apart), then SNTP_TIME with Unix seconds, or SNTP_ERROR. */
export type SntpConstructor = new (options: { host: string }, callback: (message: number, value?: unknown) => void) => object;

export interface TimeSyncOptions {
  /** The NTP host of the egress allowlist. */
  host: string;
  /** DNS through the egress chokepoint; address undefined when the name does not resolve or may not be looked up. */
  resolve: (host: string, done: (address: string | undefined) => void) => void;
  sntp: SntpConstructor;
  /** Set the system clock (Moddable Time.set: Unix seconds). */
  setTime: (seconds: number) => void;
  /** Date.now(). */
  now: () => number;
  /** The Clock's monotonic(): how much time really passed since the clock was last set. */
  monotonic: () => number;
  schedule: (callback: () => void, delayMs: number) => () => void;
  /** Times before this (ms since the epoch) are refused, and a clock below it is "not set". */
  floorMs: number;
  /** A later floor vouched for since the build (the owner's time floor); asked at every answer. */
  vouchedFloorMs?: () => number;
  log: Log;
  /** Called whenever the clock has been set from the network, or found already set at start. */
  onSynced?: (epochMs: number) => void;
  /** Retry after a failure: doubles from minRetryMs up to maxRetryMs. Defaults 15 s and 10 min. */
  minRetryMs?: number;
  maxRetryMs?: number;
  /** Refresh interval once set. Default 6 h. */
  resyncMs?: number;
  /** Give up on one query (resolve + the SDK's retries) after this long. Default 40 s. */
  queryTimeoutMs?: number;
}

export class TimeSync {
  /** The clock holds a time from the network (or one kept across a soft restart). */
  synced = false;
  failures = 0;
  #options: TimeSyncOptions;
  #cancelTimer: (() => void) | undefined;
  #query = 0;
  #running = false;
  /** When the clock was last set or found set in this boot; the next answer is judged against it. */
  #reference: TimeReference | undefined;

  constructor(options: TimeSyncOptions) {
    if (!options.host) throw new RangeError("sntp: no NTP host");
    this.#options = options;
  }

  get minRetryMs(): number {
    return this.#options.minRetryMs ?? 15_000;
  }

  start(): void {
    if (this.#running) return;
    this.#running = true;
    const now = this.#options.now();
    if (now >= this.#options.floorMs) {
      this.synced = true;
      this.#reference = { wallMs: now, monotonicMs: this.#options.monotonic() };
      this.#options.log("info", "time: clock already set; refreshing it in the background");
      this.#options.onSynced?.(now);
    }
    this.#ask();
  }

  stop(): void {
    this.#running = false;
    this.#query++;
    this.#cancelTimer?.();
    this.#cancelTimer = undefined;
  }

  #ask(): void {
    if (!this.#running) return;
    const { host, log } = this.#options;
    const query = ++this.#query;
    const current = () => this.#running && query === this.#query;
    this.#later(() => {
      if (current()) this.#failed("no answer in time");
    }, this.#options.queryTimeoutMs ?? 40_000);
    this.#options.resolve(host, (address) => {
      if (!current()) return;
      if (!address) {
        this.#failed(`cannot resolve ${host}`);
        return;
      }
      try {
        new this.#options.sntp({ host: address }, (message, value) => {
          if (!current()) return;
          if (message === SNTP_TIME) this.#got(value);
          else if (message === SNTP_ERROR) this.#failed(typeof value === "string" ? value : "no response");
          else if (message === SNTP_RETRY) log("debug", "time: asking again", { host });
        });
      } catch (e) {
        this.#failed(e instanceof Error ? e.message : String(e));
      }
    });
  }

  #got(value: unknown): void {
    const o = this.#options;
    const seconds = typeof value === "number" && Number.isFinite(value) ? Math.floor(value) : NaN;
    const floorMs = Math.max(o.floorMs, o.vouchedFloorMs?.() ?? 0);
    const monotonicMs = o.monotonic();
    const verdict = checkNetworkTime(seconds * 1000, { floorMs, monotonicMs, reference: this.#reference });
    if (verdict.action === "refuse") {
      // A time before the floor is a wrong answer (or a forged one): never set it.
      this.#failed(verdict.reason);
      return;
    }
    this.#query++;
    const set = Math.floor(verdict.wallMs / 1000);
    o.setTime(set);
    this.#reference = { wallMs: set * 1000, monotonicMs };
    const first = !this.synced;
    this.synced = true;
    this.failures = 0;
    if (verdict.action === "step") {
      o.log("warn", "time: NTP answer disagrees with the clock; moved by the bound only", { host: o.host, offsetMs: Math.round(verdict.offsetMs), boundMs: verdict.boundMs });
    } else o.log(first ? "info" : "debug", "time: set from NTP", { host: o.host });
    o.onSynced?.(set * 1000);
    this.#later(() => this.#ask(), o.resyncMs ?? 6 * 3600_000);
  }

  #failed(reason: string): void {
    this.#query++;
    this.failures++;
    const max = this.#options.maxRetryMs ?? 600_000;
    const delay = Math.min(max, this.minRetryMs * 2 ** Math.min(this.failures - 1, 16));
    this.#options.log(this.synced ? "debug" : "warn", "time: NTP failed", { reason, retryInMs: delay, synced: this.synced });
    this.#later(() => this.#ask(), delay);
  }

  #later(callback: () => void, delayMs: number): void {
    this.#cancelTimer?.();
    this.#cancelTimer = this.#options.schedule(() => {
      this.#cancelTimer = undefined;
      callback();
    }, delayMs);
  }
}
