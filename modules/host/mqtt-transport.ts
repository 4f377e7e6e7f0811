/*
 * Host MQTT transport: mqtt.js over mutual TLS, behind the core's MqttTransport port.
 *
 * Each connect() builds a fresh client with automatic reconnect and its own
 * resend store switched off: the core's Link owns retry timing and the core's
 * Outbox owns re-sending, exactly as on the device, where the ECMA-419 client
 * has neither. Publishes still waiting for PUBACK when the session ends are
 * rejected so the outbox knows to send them again.
 *
 * The session is opened through ./egress, the host's only way out: a
 * destination the allowlist does not hold ends the attempt with onClose before
 * any DNS look-up or socket, and counts as a refusal in the guard.
 */
import type { MqttClient } from "mqtt";
import type { MqttHandlers, MqttTransport } from "../core/ports";
import { HostEgress, loopbackEgress } from "./egress";
import { describeMqttFailure } from "./mqtt-failure";

/** Reported with every refusal: which module asked. */
export const REQUESTER = "host/mqtt-transport";

export interface HostMqttOptions {
  host: string;
  port: number;
  clientId: string;
  /** PEM strings. */
  ca: string | string[];
  cert: string;
  key: string;
  /** SNI name; AWS IoT refuses connections without it. Defaults to host. */
  servername?: string;
  keepaliveSeconds?: number;
  /** The firmware's egress chokepoint. Without one, only this loopback destination is allowed (tests wiring a Doorbell by hand). */
  egress?: HostEgress;
}

export class HostMqttTransport implements MqttTransport {
  #options: HostMqttOptions;
  #client: MqttClient | undefined;
  #pending = new Set<(e: Error) => void>();
  #egress: HostEgress;
  /** The current connect() attempt: a refusal reported late must not reach a session closed or replaced since. */
  #attempt: object | undefined;

  constructor(options: HostMqttOptions) {
    if (!(options.keepaliveSeconds === undefined || (options.keepaliveSeconds > 0 && options.keepaliveSeconds <= 1200))) {
      throw new RangeError("mqtt: keep-alive must be 1-1200 s (AWS IoT limit)");
    }
    this.#options = options;
    this.#egress = options.egress ?? loopbackEgress(options.host, options.port);
  }

  connect(handlers: MqttHandlers): void {
    this.#client?.end(true);
    const o = this.#options;
    let closed = false;
    let lastError = "";
    const attempt = {};
    this.#attempt = attempt;
    let client: MqttClient;
    try {
      client = this.#egress.connectMqtt(
        { host: o.host, port: o.port, requester: REQUESTER },
        { clientId: o.clientId, ca: o.ca, cert: o.cert, key: o.key, servername: o.servername, keepaliveSeconds: o.keepaliveSeconds ?? 300, connectTimeoutMs: 10_000 },
      );
    } catch (e) {
      // Refused (or unbuildable): report it like any failed attempt, asynchronously, as a socket error would be.
      const reason = e instanceof Error ? e.message : String(e);
      setTimeout(() => {
        if (this.#attempt === attempt) handlers.onClose(reason);
      }, 0);
      return;
    }
    this.#client = client;
    client.on("connect", () => handlers.onConnect());
    client.on("message", (topic, payload) => handlers.onMessage(topic, new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength)));
    // Name the refusal (certificate, CONNACK, unreachable) so the link's status says which broker refused what.
    client.on("error", (e) => (lastError = describeMqttFailure(`${o.host}:${o.port}`, e).message));
    client.on("close", () => {
      if (closed) return;
      closed = true;
      if (this.#client === client) this.#client = undefined;
      this.#failPending(new Error("session closed"));
      client.end(true);
      handlers.onClose(lastError || "connection closed");
    });
  }

  publish(topic: string, payload: Uint8Array, qos: 0 | 1): Promise<void> {
    const client = this.#client;
    if (!client || !client.connected) return Promise.reject(new Error("not connected"));
    return new Promise((resolve, reject) => {
      const fail = (e: Error) => reject(e);
      this.#pending.add(fail);
      client.publish(topic, Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength), { qos }, (error) => {
        if (!this.#pending.delete(fail)) return;
        if (error) reject(error);
        else resolve();
      });
    });
  }

  subscribe(topicFilter: string): Promise<void> {
    const client = this.#client;
    if (!client || !client.connected) return Promise.reject(new Error("not connected"));
    return new Promise((resolve, reject) => {
      client.subscribe(topicFilter, { qos: 1 }, (error, granted) => {
        if (error) reject(error);
        else if (granted?.some((g) => g.qos === 128)) reject(new Error(`subscription to ${topicFilter} refused`));
        else resolve();
      });
    });
  }

  /** Ends the session with DISCONNECT, so the broker closes it cleanly and fires no will; the socket is dropped if that takes over 2 s. */
  close(): void {
    this.#attempt = undefined;
    const client = this.#client;
    this.#client = undefined;
    this.#failPending(new Error("transport closed"));
    if (!client) return;
    if (!client.connected) {
      client.end(true);
      return;
    }
    const late = setTimeout(() => client.end(true), 2000);
    client.end(false, {}, () => clearTimeout(late));
  }

  #failPending(error: Error): void {
    const pending = [...this.#pending];
    this.#pending.clear();
    for (const fail of pending) fail(error);
  }
}
