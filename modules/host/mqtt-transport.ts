/*
 * Host MQTT transport: mqtt.js over mutual TLS, behind the core's MqttTransport port.
 *
 * Each connect() builds a fresh client with automatic reconnect and its own
 * resend store switched off: the core's Link owns retry timing and the core's
 * Outbox owns re-sending, exactly as on the device, where the ECMA-419 client
 * has neither. Publishes still waiting for PUBACK when the session ends are
 * rejected so the outbox knows to send them again.
 */
import mqtt, { type MqttClient } from "mqtt";
import type { MqttHandlers, MqttTransport } from "../core/ports";

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
}

export class HostMqttTransport implements MqttTransport {
  #options: HostMqttOptions;
  #client: MqttClient | undefined;
  #pending = new Set<(e: Error) => void>();

  constructor(options: HostMqttOptions) {
    if (!(options.keepaliveSeconds === undefined || (options.keepaliveSeconds > 0 && options.keepaliveSeconds <= 1200))) {
      throw new RangeError("mqtt: keep-alive must be 1-1200 s (AWS IoT limit)");
    }
    this.#options = options;
  }

  connect(handlers: MqttHandlers): void {
    this.#client?.end(true);
    const o = this.#options;
    let closed = false;
    let lastError = "";
    const client = mqtt.connect({
      protocol: "mqtts",
      host: o.host,
      port: o.port,
      clientId: o.clientId,
      ca: o.ca,
      cert: o.cert,
      key: o.key,
      servername: o.servername ?? o.host,
      rejectUnauthorized: true,
      clean: true,
      keepalive: o.keepaliveSeconds ?? 300,
      reconnectPeriod: 0,
      connectTimeout: 10_000,
      protocolVersion: 4,
      queueQoSZero: false,
    });
    this.#client = client;
    // A ring is one small packet: send it now rather than let Nagle wait for more (lwIP on the device sends at once too).
    (client.stream as { setNoDelay?: (on: boolean) => void } | undefined)?.setNoDelay?.(true);
    client.on("connect", () => handlers.onConnect());
    client.on("message", (topic, payload) => handlers.onMessage(topic, new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength)));
    client.on("error", (e) => (lastError = e.message));
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

  close(): void {
    const client = this.#client;
    this.#client = undefined;
    this.#failPending(new Error("transport closed"));
    client?.end(true);
  }

  #failPending(error: Error): void {
    const pending = [...this.#pending];
    this.#pending.clear();
    for (const fail of pending) fail(error);
  }
}
