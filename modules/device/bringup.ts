/*
 * Bring-up order on a board: network, then time, then the broker.
 *
 * The core's Link asks the transport to connect as soon as the doorbell
 * starts and again after every failure, with backoff. Asking before the
 * device has an address or a trusted clock would only burn attempts (and grow
 * the backoff), so the transport the firmware gets is gated: a connect() made
 * while the network is down or the clock unset is held, and handed to the
 * real transport the moment both are ready. The Link sees one slow attempt,
 * not a string of failures. Time sync starts when the network first comes
 * up; TLS never starts before it has succeeded (see ./sntp for why, and what
 * a press does meanwhile).
 *
 * The same gate watches the session, so it is where the status LED learns
 * "connecting" (never online since the network came up), "online" and
 * "offline" (was online, retrying). Once the firmware runs, the core's Link is
 * attached too and told when the network goes and comes back
 * (networkDown/networkUp): it drops a session at once when Wi-Fi goes, says
 * "wifi" as the cause, and reconnects without backoff when it returns.
 *
 * Platform-free: the network, the time source and the transport are ports.
 */
import type { Log, MqttHandlers, MqttTransport } from "../core/ports";
import type { LedStatus } from "./led";
import type { NetworkLink, NetworkState } from "./wifi";

export interface TimeSource {
  readonly synced: boolean;
  start(): void;
  stop(): void;
}

/** The part of the core's Link that hears about the network. */
export interface NetworkAware {
  networkDown(reason?: string): void;
  networkUp(): void;
}

export interface BringUpOptions {
  network: NetworkLink;
  /** Undefined when the platform's clock is already trusted (the simulator). */
  time?: TimeSource;
  log: Log;
  /** Connection status for the LED; called on every change. */
  onStatus?: (status: Extract<LedStatus, "connecting" | "online" | "offline">) => void;
}

export class BringUp {
  /** The broker session is up. */
  online = false;
  #options: BringUpOptions;
  #pending: { inner: MqttTransport; handlers: MqttHandlers } | undefined;
  #everOnline = false;
  #timeStarted = false;
  #status: "connecting" | "online" | "offline" | undefined;
  #started = false;
  #link: NetworkAware | undefined;
  #networkWasUp = false;

  constructor(options: BringUpOptions) {
    this.#options = options;
  }

  /** Network up and clock trusted: a TLS session may start. */
  get ready(): boolean {
    return this.#options.network.state === "up" && (this.#options.time?.synced ?? true);
  }

  start(): void {
    if (this.#started) return;
    this.#started = true;
    this.#report();
    this.#options.network.start((state) => this.#networkChanged(state));
  }

  stop(): void {
    this.#started = false;
    this.#pending = undefined;
    this.#options.time?.stop();
    this.#options.network.stop();
  }

  /** The firmware's Link: told when the network goes and comes back. */
  attachLink(link: NetworkAware): void {
    // Before the first join the gate already holds the connect; only later changes are news to the Link.
    this.#link = link;
  }

  /** Call when the time source has set the clock. */
  timeChanged(): void {
    this.#release();
  }

  /** The transport to hand the firmware: connects wait for ready(); the session's state drives the status. */
  gate(inner: MqttTransport): MqttTransport {
    return {
      connect: (handlers) => {
        const watched: MqttHandlers = {
          onConnect: () => {
            this.online = true;
            this.#everOnline = true;
            this.#report();
            handlers.onConnect();
          },
          onMessage: (topic, payload) => handlers.onMessage(topic, payload),
          onClose: (reason) => {
            this.online = false;
            this.#report();
            handlers.onClose(reason);
          },
        };
        if (this.ready) {
          inner.connect(watched);
        } else {
          if (!this.#pending) this.#options.log("info", "broker: waiting for the network and the time", { network: this.#options.network.state, timeSet: this.#options.time?.synced ?? true });
          this.#pending = { inner, handlers: watched };
        }
      },
      publish: (topic, payload, qos) => inner.publish(topic, payload, qos),
      subscribe: (filter) => inner.subscribe(filter),
      close: () => {
        this.#pending = undefined;
        this.online = false;
        inner.close();
      },
    };
  }

  #networkChanged(state: NetworkState): void {
    if (state === "up" && this.#options.time && !this.#timeStarted) {
      this.#timeStarted = true;
      this.#options.time.start();
    }
    const up = state === "up";
    if (up !== this.#networkWasUp) {
      this.#networkWasUp = up;
      if (up) this.#link?.networkUp();
      else this.#link?.networkDown(state === "joining" ? "wifi: address lost" : "wifi: disconnected");
    }
    this.#report();
    this.#release();
  }

  #release(): void {
    const pending = this.#pending;
    if (!pending || !this.ready) return;
    this.#pending = undefined;
    pending.inner.connect(pending.handlers);
  }

  #report(): void {
    const status = this.online ? "online" : this.#everOnline ? "offline" : "connecting";
    if (status === this.#status) return;
    this.#status = status;
    this.#options.onStatus?.(status);
  }
}
