/*
 * The cloud side, as a reference consumer: what an owner's backend does with a
 * doorbell's messages. It connects to the broker with the service identity,
 * receives every thing's events, and verifies each one twice: with the
 * reference verifier (tweetnacl) and with OpenSSL through Node's crypto. It
 * de-duplicates at-least-once redeliveries by (thing, seq).
 */
import mqtt, { type MqttClient } from "mqtt";
import { EventVerifier, type Verdict } from "./verifier";
import { openEnvelope } from "../modules/core/events";
import { opensslVerify } from "./openssl-ed25519";
import { toHex } from "../modules/core/bytes";
import { TOPIC_ROOT } from "../modules/core/topics";
import { waitForMatch } from "./wait-for";

export interface CloudOptions {
  host: string;
  port: number;
  /** PEM: the CA that signed the broker's certificate, and the service's client certificate and key. */
  ca: string;
  cert: string;
  key: string;
  clientId: string;
  servername?: string;
}

export interface ReceivedEvent {
  topic: string;
  payload: Uint8Array;
  verdict: Verdict;
  /** True when OpenSSL also accepted the signature (only computed when the payload parsed). */
  openssl: boolean | undefined;
  /** A redelivery of an event already accepted, byte for byte. */
  duplicate: boolean;
  receivedAt: number;
}

/**
 * Connect with the service identity and subscribe one filter: how every cloud-side
 * tool joins the broker. Resolves once the subscription is granted.
 */
export function connectService(options: CloudOptions, filter: string, onMessage: (topic: string, payload: Uint8Array) => void): Promise<MqttClient> {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect({
      protocol: "mqtts", host: options.host, port: options.port, clientId: options.clientId,
      ca: options.ca, cert: options.cert, key: options.key, servername: options.servername ?? options.host,
      rejectUnauthorized: true, clean: true, reconnectPeriod: 1000, protocolVersion: 4,
    });
    // Latency-bound small packets: don't let Nagle hold them.
    (client.stream as { setNoDelay?: (on: boolean) => void } | undefined)?.setNoDelay?.(true);
    client.on("message", (topic, buf) => onMessage(topic, new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength)));
    client.once("error", reject);
    client.once("connect", () => {
      client.subscribe(filter, { qos: 1 }, (err, granted) => {
        if (err) reject(err);
        else if (granted?.some((g) => g.qos === 128)) reject(new Error(`subscription to ${filter} refused`));
        else resolve(client);
      });
    });
  });
}

export class CloudConsumer {
  readonly verifier = new EventVerifier();
  readonly received: ReceivedEvent[] = [];
  duplicates = 0;
  #client: MqttClient | undefined;
  #accepted = new Map<string, string>();
  #keys = new Map<string, Uint8Array>();
  #listeners = new Set<(e: ReceivedEvent) => void>();

  register(thing: string, publicKey: Uint8Array): void {
    this.verifier.register(thing, publicKey);
    this.#keys.set(thing, publicKey);
  }

  onEvent(listener: (e: ReceivedEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  async connect(options: CloudOptions): Promise<void> {
    this.#client = await connectService(options, `${TOPIC_ROOT}/+/events`, (topic, payload) => this.#handle(topic, payload));
  }

  /** Resolves with the first event matching the predicate (already received or future). */
  waitFor(predicate: (e: ReceivedEvent) => boolean, timeoutMs = 10_000): Promise<ReceivedEvent> {
    return waitForMatch(this.received, (l) => this.onEvent(l), predicate, timeoutMs, "event");
  }

  close(): Promise<void> {
    return new Promise((resolve) => (this.#client ? this.#client.end(true, {}, () => resolve()) : resolve()));
  }

  #handle(topic: string, payload: Uint8Array): void {
    const verdict = this.verifier.verify(payload, { topic });
    let openssl: boolean | undefined;
    try {
      const { event, signature, message } = openEnvelope(payload);
      const key = this.#keys.get(event.thing);
      openssl = key ? opensslVerify(message, signature, key) : undefined;
    } catch {
      openssl = undefined;
    }
    let duplicate = false;
    const digest = toHex(payload);
    if (verdict.ok) this.#accepted.set(`${verdict.event.thing}/${verdict.event.seq}`, digest);
    else if (verdict.reason === "replay" && verdict.event && this.#accepted.get(`${verdict.event.thing}/${verdict.event.seq}`) === digest) {
      duplicate = true;
      this.duplicates++;
    }
    const e: ReceivedEvent = { topic, payload, verdict, openssl, duplicate, receivedAt: performance.now() };
    this.received.push(e);
    for (const l of [...this.#listeners]) l(e);
  }
}
