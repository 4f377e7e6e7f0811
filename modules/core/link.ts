/*
 * Connection manager: keeps one MQTT session to the broker alive, and says why not.
 *
 * The transport makes a single attempt per connect(); this module decides when
 * to try again. Backoff is exponential with full jitter so a fleet that lost its
 * broker does not reconnect in lockstep, and never faster than one CONNECT per
 * second because AWS IoT throttles a client ID beyond that. A session only
 * resets the backoff once it has stayed up for stableMs, so a broker that
 * accepts and drops at once is backed off like one that refuses.
 *
 * Every session carries a token: callbacks from a session the link has already
 * given up on (closed, replaced, dropped for a stalled publish) are ignored.
 *
 * Why the link is down is part of its status, in words an installer can act on:
 *   wifi                no network (the Wi-Fi adapter said so through networkDown())
 *   broker-unreachable  TCP/DNS failed or timed out: the broker or the route is down
 *   tls                 the TLS handshake failed: certificates, trust anchors, SNI
 *   broker-refused      the broker answered and refused the session (CONNACK ≠ 0, throttled, not authorised)
 *   connection-lost     an established session ended (broker restart, kicked, keep-alive timeout)
 *   no-time             no trusted wall time yet, so certificates cannot be checked
 *   stalled             the device dropped a session whose publishes failed
 * Keep-alive is the transport's (1-1200 s, the AWS bound; default 300 s).
 */
import type { Clock, Log, MqttTransport, Random } from "./ports";

export type LinkState = "idle" | "connecting" | "online" | "waiting" | "no-network" | "closed";
export type LinkCause = "wifi" | "broker-unreachable" | "tls" | "broker-refused" | "connection-lost" | "no-time" | "stalled";

export interface LinkStatus {
  state: LinkState;
  /** Why the link is not online (null while online or before the first attempt). */
  cause: LinkCause | null;
  /** The transport's or adapter's own words. */
  reason: string;
  /** CONNECT attempts since the last successful one. */
  attempts: number;
  /** Consecutive failed attempts or short sessions: the backoff exponent. */
  failures: number;
  /** Sessions established since start. */
  sessions: number;
  /** Delay of the scheduled retry, while waiting. */
  retryInMs: number | null;
  /** Monotonic time of the last state change. */
  since: number;
}

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
  /** Called on every state change, with the new status. */
  onStatus?: (status: LinkStatus) => void;
  minDelayMs?: number;
  maxDelayMs?: number;
  /** A session must last this long to reset the backoff. Default 10 s. */
  stableMs?: number;
}

export const MIN_CONNECT_INTERVAL_MS = 1000;
/** AWS IoT Core's keep-alive bound (seconds); transports check their setting against it. */
export const MAX_KEEP_ALIVE_SECONDS = 1200;

/** Name the cause of a failed attempt or ended session from the transport's reason. */
export function classifyClose(reason: string, wasOnline: boolean): LinkCause {
  const r = reason.toLowerCase();
  if (/no trusted time|clock not set|sntp/.test(r)) return "no-time";
  if (wasOnline) return "connection-lost";
  // Before TLS: nothing answered. (The device transport cannot tell a TCP from a TLS failure without an alert.)
  if (/econnrefused|ehostunreach|enetunreach|enetdown|etimedout|enotfound|eai_again|dns|tcp or tls|timeout|timed out/.test(r)) return "broker-unreachable";
  if (/^tls:|\btls\b|ssl|certificate|cert_|self[- ]signed|handshake|alert|altnames|unable to (get|verify)/.test(r)) return "tls";
  // The broker answered and said no, or closed before CONNACK (a revoked certificate looks like this under TLS 1.3).
  if (/refused|not authori[sz]ed|server unavailable|identifier rejected|bad user|connack|throttl|econnreset|hang up|closed/.test(r)) return "broker-refused";
  return "broker-unreachable";
}

export class Link {
  state: LinkState = "idle";
  attempts = 0;
  lastCloseReason = "";
  readonly minDelayMs: number;
  readonly maxDelayMs: number;
  readonly stableMs: number;
  #options: LinkOptions;
  #lastConnectAt = -Infinity;
  #cancelRetry: (() => void) | undefined;
  #session = 0;
  #onlineAt = 0;
  #failures = 0;
  #sessions = 0;
  #cause: LinkCause | null = null;
  #retryInMs: number | null = null;
  #since = 0;
  #networkUp = true;

  constructor(options: LinkOptions) {
    this.#options = options;
    this.minDelayMs = Math.max(options.minDelayMs ?? MIN_CONNECT_INTERVAL_MS, MIN_CONNECT_INTERVAL_MS);
    this.maxDelayMs = Math.max(options.maxDelayMs ?? 60_000, this.minDelayMs);
    this.stableMs = options.stableMs ?? 10_000;
  }

  get online(): boolean {
    return this.state === "online";
  }

  status(): LinkStatus {
    return {
      state: this.state,
      cause: this.state === "online" ? null : this.#cause,
      reason: this.lastCloseReason,
      attempts: this.attempts,
      failures: this.#failures,
      sessions: this.#sessions,
      retryInMs: this.state === "waiting" ? this.#retryInMs : null,
      since: this.#since,
    };
  }

  start(): void {
    if (this.state !== "idle" && this.state !== "closed") return;
    if (!this.#networkUp) return this.#set("no-network");
    this.#connect();
  }

  stop(): void {
    const wasUp = this.state === "online" || this.state === "connecting";
    this.#cancel();
    this.#session++;
    this.#set("closed");
    this.#options.transport.close();
    if (wasUp) this.#options.onOffline?.("stopped");
  }

  /**
   * Give up on the current session now (e.g. a publish failed while it looked up)
   * and reconnect after the usual backoff. No-op unless connecting or online.
   */
  drop(reason: string): void {
    if (this.state !== "online" && this.state !== "connecting") return;
    this.#ended(reason, "stalled", true);
  }

  /** The network adapter lost Wi-Fi (or its IP): stop trying until networkUp(). */
  networkDown(reason = "wifi disconnected"): void {
    this.#networkUp = false;
    if (this.state === "closed" || this.state === "idle") return;
    const wasUp = this.state === "online" || this.state === "connecting";
    this.#cancel();
    this.#session++;
    this.lastCloseReason = reason;
    this.#cause = "wifi";
    this.#set("no-network");
    if (wasUp) {
      this.#options.transport.close();
      this.#options.log("warn", "link offline", { cause: "wifi", reason });
      this.#options.onOffline?.(reason);
    }
  }

  /** The network is back: connect as soon as the one-per-second rule allows, with the backoff reset. */
  networkUp(): void {
    this.#networkUp = true;
    if (this.state !== "no-network") return;
    this.#failures = 0;
    this.#connect();
  }

  /** Delay before the next attempt: full jitter over an exponentially growing window, floored at one second. */
  nextDelay(): number {
    const window = Math.min(this.maxDelayMs, this.minDelayMs * 2 ** Math.min(this.#failures, 16));
    const r = new Uint8Array(4);
    this.#options.random.fill(r);
    const unit = (((r[0] << 24) >>> 0) + (r[1] << 16) + (r[2] << 8) + r[3]) / 0x100000000;
    return Math.max(this.minDelayMs, Math.floor(window * unit));
  }

  #set(state: LinkState): void {
    this.state = state;
    this.#since = this.#options.clock.monotonic();
    try {
      this.#options.onStatus?.(this.status());
    } catch {
      // A status listener cannot be allowed to break the link.
    }
  }

  #cancel(): void {
    this.#cancelRetry?.();
    this.#cancelRetry = undefined;
  }

  #connect(): void {
    const { transport, clock, log } = this.#options;
    this.#cancelRetry = undefined;
    if (this.state === "closed") return;
    if (!this.#networkUp) return this.#set("no-network");
    // Never two CONNECTs within a second, whatever path led here.
    const wait = this.#lastConnectAt + MIN_CONNECT_INTERVAL_MS - clock.monotonic();
    if (wait > 0) {
      this.#retryInMs = wait;
      this.#set("waiting");
      if (this.state === "waiting") this.#cancelRetry = clock.schedule(() => this.#connect(), wait);
      return;
    }
    this.#lastConnectAt = clock.monotonic();
    this.attempts++;
    const session = ++this.#session;
    this.#set("connecting");
    transport.connect({
      onConnect: () => {
        if (session !== this.#session || this.state !== "connecting") return;
        this.attempts = 0;
        this.#sessions++;
        this.#onlineAt = clock.monotonic();
        this.#set("online");
        // A status listener may have stopped or dropped the link.
        if (session !== this.#session) return;
        log("info", "link online", { sessions: this.#sessions });
        for (const filter of this.#options.subscriptions ?? []) {
          transport.subscribe(filter).catch((e: unknown) => log("warn", "subscribe failed", { filter, reason: String(e) }));
        }
        this.#options.onOnline?.();
      },
      onMessage: (topic, payload) => {
        if (session !== this.#session) return;
        this.#options.onMessage?.(topic, payload);
      },
      onClose: (reason) => {
        if (session !== this.#session || this.state === "closed") return;
        const wasOnline = this.state === "online";
        this.#ended(String(reason), classifyClose(String(reason), wasOnline), false);
      },
    });
  }

  /** The current session is over: count the failure, report it, schedule the next attempt. */
  #ended(reason: string, cause: LinkCause, closeTransport: boolean): void {
    const { clock, log } = this.#options;
    const wasOnline = this.state === "online";
    this.#session++;
    if (closeTransport) this.#options.transport.close();
    if (wasOnline && clock.monotonic() - this.#onlineAt >= this.stableMs) this.#failures = 0;
    this.lastCloseReason = reason;
    this.#cause = cause;
    const delay = this.nextDelay();
    this.#failures++;
    this.#retryInMs = delay;
    const token = this.#session;
    this.#set("waiting");
    // Also after a failed attempt: whatever the outbox offered that session is void.
    this.#options.onOffline?.(reason);
    log("warn", wasOnline ? "link offline" : "link attempt failed", { cause, reason, retryInMs: delay });
    // A listener may have stopped the link, or taken the network down, meanwhile.
    if (token !== this.#session || this.state !== "waiting") return;
    this.#cancelRetry = clock.schedule(() => this.#connect(), delay);
  }
}
