/*
 * Wi-Fi station bring-up: join the provisioned network, keep it joined, say how it is.
 *
 * Built on the SDK's ECMA-419 network interface (embedded:network/interface/wifi,
 * modules/io/wifi/esp32), passed in so the host tests can drive this module
 * with a model of it. That class reports `connection` as 200 (disconnected),
 * 300 (connecting), 400 (associated, no address yet) or 500 (address
 * acquired), calls onChanged("connection") on every change, makes one
 * attempt per connect() and never retries on its own. So this module owns the
 * policy: retry with exponential backoff and jitter (a fleet whose access point
 * rebooted does not come back in lockstep), give an attempt a deadline, and
 * start again at once when a joined link drops.
 *
 * The SSID and passphrase come from the vault (provisioning) and are handed to
 * the driver only: the SDK keeps station credentials in RAM
 * (WIFI_STORAGE_RAM), so the vault stays their only copy in flash. Nothing
 * here logs either of them. The driver does not pin a minimum auth mode: an
 * open network using the same SSID could be joined. Everything that matters
 * rides on mutual TLS, so that network learns only that a doorbell exists.
 */
import type { Log, Random } from "../core/ports";

/** The part of the ECMA-419 Wi-Fi class this module uses (SDK 8.2 typings: embedded:network/interface/wifi). */
export interface Wifi419 {
  connect(options: { SSID: string; password?: string }): void;
  disconnect(): void;
  close(): void;
  readonly connection: number;
  readonly address: string | undefined;
  readonly RSSI: number | undefined;
}
export type Wifi419Constructor = new (options: { onChanged?: (property: "connection" | "address") => void }) => Wifi419;

/** ECMA-419 connection levels. */
export const WIFI_DISCONNECTED = 200;
export const WIFI_CONNECTING = 300;
export const WIFI_ASSOCIATED = 400;
export const WIFI_ADDRESSED = 500;

/** down: no link, a retry is scheduled; joining: an attempt is under way; up: an address is assigned. */
export type NetworkState = "down" | "joining" | "up";

/** A network the device can use: Wi-Fi on a board, the host's own network on the simulator. */
export interface NetworkLink {
  readonly state: NetworkState;
  start(onChange: (state: NetworkState) => void): void;
  stop(): void;
}

export interface WifiLinkOptions {
  io: Wifi419Constructor;
  ssid: string;
  password: string;
  schedule: (callback: () => void, delayMs: number) => () => void;
  random: Random;
  log: Log;
  /** First retry delay; doubles per failed attempt up to maxRetryMs. Defaults 2 s and 60 s. */
  minRetryMs?: number;
  maxRetryMs?: number;
  /** An attempt that has no address after this long is abandoned and retried. Default 20 s. */
  joinTimeoutMs?: number;
}

export class WifiLink implements NetworkLink {
  state: NetworkState = "down";
  /** Failed attempts since the link was last up. */
  failures = 0;
  readonly minRetryMs: number;
  readonly maxRetryMs: number;
  readonly joinTimeoutMs: number;
  #options: WifiLinkOptions;
  #wifi: Wifi419 | undefined;
  #onChange: ((state: NetworkState) => void) | undefined;
  #cancelTimer: (() => void) | undefined;
  #started = false;

  constructor(options: WifiLinkOptions) {
    if (options.ssid.length === 0) throw new RangeError("wifi: no SSID");
    this.#options = options;
    this.minRetryMs = Math.max(500, options.minRetryMs ?? 2000);
    this.maxRetryMs = Math.max(this.minRetryMs, options.maxRetryMs ?? 60_000);
    this.joinTimeoutMs = Math.max(1000, options.joinTimeoutMs ?? 20_000);
  }

  start(onChange: (state: NetworkState) => void): void {
    if (this.#started) return;
    this.#started = true;
    this.#onChange = onChange;
    const self = this;
    this.#wifi = new this.#options.io({
      onChanged(property) {
        if (property === "connection") self.#changed();
      },
    });
    this.#attempt();
  }

  stop(): void {
    this.#started = false;
    this.#clearTimer();
    const wifi = this.#wifi;
    this.#wifi = undefined;
    if (wifi) {
      try {
        wifi.disconnect();
      } finally {
        wifi.close();
      }
    }
    this.#set("down");
  }

  /** Delay before retry n (1-based): full jitter over an exponential window, never under minRetryMs. */
  retryDelay(failures: number): number {
    const window = Math.min(this.maxRetryMs, this.minRetryMs * 2 ** Math.min(Math.max(failures - 1, 0), 16));
    const r = new Uint8Array(2);
    this.#options.random.fill(r);
    const unit = ((r[0] << 8) | r[1]) / 0x10000;
    return Math.max(this.minRetryMs, Math.floor(window * (0.5 + unit / 2)));
  }

  #attempt(): void {
    const wifi = this.#wifi;
    if (!this.#started || !wifi) return;
    this.#clearTimer();
    this.#set("joining");
    try {
      wifi.connect({ SSID: this.#options.ssid, password: this.#options.password });
    } catch (e) {
      // "already connecting" means an attempt is in flight: let its deadline decide.
      this.#options.log("warn", "wifi: connect refused by the driver", { reason: e instanceof Error ? e.message : String(e) });
    }
    this.#cancelTimer = this.#options.schedule(() => {
      this.#cancelTimer = undefined;
      if (this.state === "up") return;
      this.#options.log("warn", "wifi: no address in time; trying again", { afterMs: this.joinTimeoutMs });
      // Down first, so the driver's own "disconnected" from this disconnect() is not counted as a second failure.
      this.#set("down");
      try {
        wifi.disconnect();
      } catch {
        // A driver that is already idle refuses; the retry below is what matters.
      }
      this.#failed();
    }, this.joinTimeoutMs);
  }

  #changed(): void {
    const wifi = this.#wifi;
    if (!this.#started || !wifi) return;
    const level = wifi.connection;
    if (level >= WIFI_ADDRESSED) {
      this.#clearTimer();
      this.failures = 0;
      if (this.state !== "up") this.#options.log("info", "wifi: joined", { address: wifi.address ?? "", rssi: wifi.RSSI ?? 0 });
      this.#set("up");
    } else if (level > WIFI_DISCONNECTED) {
      if (this.state === "up") this.#options.log("warn", "wifi: address lost");
      this.#set("joining");
    } else if (this.state === "up") {
      this.#options.log("warn", "wifi: link lost; joining again");
      this.failures = 0;
      this.#retryIn(this.minRetryMs);
    } else if (this.state === "joining") {
      this.#failed();
    }
  }

  #failed(): void {
    this.failures++;
    const delay = this.retryDelay(this.failures);
    this.#options.log("warn", "wifi: could not join", { attempt: this.failures, retryInMs: delay });
    this.#retryIn(delay);
  }

  #retryIn(delayMs: number): void {
    this.#clearTimer();
    this.#set("down");
    this.#cancelTimer = this.#options.schedule(() => {
      this.#cancelTimer = undefined;
      this.#attempt();
    }, delayMs);
  }

  #clearTimer(): void {
    this.#cancelTimer?.();
    this.#cancelTimer = undefined;
  }

  #set(state: NetworkState): void {
    if (this.state === state) return;
    this.state = state;
    this.#onChange?.(state);
  }
}

/** The simulator's network: the host is already online, so the link is up as soon as it starts. */
export class HostNetwork implements NetworkLink {
  state: NetworkState = "down";
  #cancel: (() => void) | undefined;
  #schedule: (callback: () => void, delayMs: number) => () => void;

  constructor(schedule: (callback: () => void, delayMs: number) => () => void) {
    this.#schedule = schedule;
  }

  start(onChange: (state: NetworkState) => void): void {
    if (this.#cancel || this.state === "up") return;
    this.#cancel = this.#schedule(() => {
      this.#cancel = undefined;
      this.state = "up";
      onChange("up");
    }, 0);
  }

  stop(): void {
    this.#cancel?.();
    this.#cancel = undefined;
    this.state = "down";
  }
}
