/*
 * Outbox: signed messages waiting for the broker's PUBACK.
 *
 * A message enters the outbox the moment it is sealed and leaves only when the
 * broker acknowledges it, so a dropped link never drops a ring: on reconnect the
 * outbox re-sends everything still unacknowledged, in order. Consumers
 * de-duplicate by (thing, seq). This version holds messages in RAM; the
 * persistent version keeps the same interface.
 */
import type { Log, MqttTransport } from "./ports";

export interface OutboxEntry {
  topic: string;
  payload: Uint8Array;
  /** Sequence number of the event inside, for ordering and reporting. */
  seq: number;
  /** Called once, when the broker acknowledged the message. */
  onAcked?: () => void;
}

export class Outbox {
  readonly capacity: number;
  dropped = 0;
  #queue: OutboxEntry[] = [];
  #inFlight = new Set<OutboxEntry>();
  #transport: MqttTransport;
  #log: Log;
  #generation = 0;

  constructor(options: { transport: MqttTransport; log: Log; capacity?: number }) {
    this.#transport = options.transport;
    this.#log = options.log;
    this.capacity = options.capacity ?? 256;
  }

  get depth(): number {
    return this.#queue.length;
  }

  add(entry: OutboxEntry): void {
    if (this.#queue.length >= this.capacity) {
      const dropped = this.#queue.shift()!;
      this.#inFlight.delete(dropped);
      this.dropped++;
      this.#log("error", "outbox full: oldest message dropped", { seq: dropped.seq });
    }
    this.#queue.push(entry);
  }

  /** Send everything not yet in flight. Call when a message is added and when the link comes online. */
  flush(online: boolean): void {
    if (!online) return;
    const generation = this.#generation;
    for (const entry of this.#queue) {
      if (this.#inFlight.has(entry)) continue;
      this.#inFlight.add(entry);
      this.#transport.publish(entry.topic, entry.payload, 1).then(
        () => {
          const i = this.#queue.indexOf(entry);
          if (i >= 0) this.#queue.splice(i, 1);
          this.#inFlight.delete(entry);
          entry.onAcked?.();
        },
        () => {
          // The session ended before PUBACK: leave it queued for the next session.
          if (generation === this.#generation) this.#inFlight.delete(entry);
        },
      );
    }
  }

  /** The session ended: nothing is in flight any more, everything queued goes again on reconnect. */
  linkLost(): void {
    this.#generation++;
    this.#inFlight.clear();
  }
}
