/*
 * Connection manager: keeps one MQTT session to the broker alive.
 *
 * The transport makes a single attempt per connect(); this module decides when
 * to try again. Backoff is exponential with full jitter so a fleet that lost its
 * broker does not reconnect in lockstep, and never faster than one CONNECT per
 * second because AWS IoT throttles a client ID beyond that.
 */
import type { Clock, Log, MqttTransport, Random } from "./ports";

export type LinkState = "idle" | "connecting" | "online" | "waiting" | "closed";

export interface LinkOptions {
  transport: MqttTransport;
  clock: Clock;
  random: Random;
  log: Log;
  /** Topic filters to subscribe after every connect. */
  subscriptions?: string[];
  onOnline?: () => void;
  onOffline?: (reason: string) => void;
  onMessage?: (topic: string, payload: Uint8Array) => void;
  minDelayMs?: number;
  maxDelayMs?: number;
}

export const MIN_CONNECT_INTERVAL_MS = 1000;

export class Link {
  state: LinkState = "idle";
  attempts = 0;
  lastCloseReason = "";
  readonly minDelayMs: number;
  readonly maxDelayMs: number;
  #options: LinkOptions;
  #lastConnectAt = -Infinity;
  #cancelRetry: (() => void) | undefined;

  constructor(options: LinkOptions) {
    this.#options = options;
    this.minDelayMs = Math.max(options.minDelayMs ?? MIN_CONNECT_INTERVAL_MS, MIN_CONNECT_INTERVAL_MS);
    this.maxDelayMs = Math.max(options.maxDelayMs ?? 60_000, this.minDelayMs);
  }

  get online(): boolean {
    return this.state === "online";
  }

  start(): void {
    if (this.state === "idle" || this.state === "closed") this.#connect();
  }

  stop(): void {
    this.#cancelRetry?.();
    this.#cancelRetry = undefined;
    this.state = "closed";
    this.#options.transport.close();
  }

  /** Delay before the next attempt: full jitter over an exponentially growing window, floored at one second. */
  nextDelay(): number {
    const window = Math.min(this.maxDelayMs, this.minDelayMs * 2 ** Math.min(this.attempts, 16));
    const r = new Uint8Array(4);
    this.#options.random.fill(r);
    const unit = (((r[0] << 24) >>> 0) + (r[1] << 16) + (r[2] << 8) + r[3]) / 0x100000000;
    return Math.max(this.minDelayMs, Math.floor(window * unit));
  }

  #connect(): void {
    const { transport, clock, log } = this.#options;
    // Never two CONNECTs within a second, whatever path led here.
    const wait = this.#lastConnectAt + MIN_CONNECT_INTERVAL_MS - clock.monotonic();
    if (wait > 0) {
      this.state = "waiting";
      this.#cancelRetry = clock.schedule(() => this.#connect(), wait);
      return;
    }
    this.#lastConnectAt = clock.monotonic();
    this.state = "connecting";
    this.attempts++;
    transport.connect({
      onConnect: () => {
        if (this.state === "closed") return;
        this.state = "online";
        this.attempts = 0;
        log("info", "link online");
        for (const filter of this.#options.subscriptions ?? []) {
          transport.subscribe(filter).catch((e: unknown) => log("warn", "subscribe failed", { filter, reason: String(e) }));
        }
        this.#options.onOnline?.();
      },
      onMessage: (topic, payload) => this.#options.onMessage?.(topic, payload),
      onClose: (reason) => {
        if (this.state === "closed") return;
        this.lastCloseReason = reason;
        this.state = "waiting";
        this.#options.onOffline?.(reason);
        const delay = this.nextDelay();
        log("warn", "link offline", { reason, retryInMs: delay });
        this.#cancelRetry = clock.schedule(() => this.#connect(), delay);
      },
    });
  }
}
