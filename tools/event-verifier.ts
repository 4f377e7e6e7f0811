/*
 * The reference event verifier, in code that runs in a browser as well as in
 * Node (the owner web app bundles it; ./verifier adds the CLI).
 *
 * It checks, in order: the envelope's format (canonical JSON, known fields),
 * that the event names the expected thing (and the topic it arrived on, when
 * given), the Ed25519 signature under that thing's registered public key, and
 * that the sequence number is above the last one accepted from that thing
 * (replay). State advances only for events that pass every check. It decodes
 * with the core's own event module (the one encoder), and verifies with
 * tweetnacl; the tests check every signature a second time with OpenSSL.
 */
import nacl from "tweetnacl";
import { openEnvelope, type DoorEvent } from "../modules/core/events";
import { TOPIC_ROOT } from "../modules/core/topics";

export type RejectReason = "format" | "unknown-thing" | "wrong-thing" | "signature" | "replay";

export type Verdict =
  | { ok: true; event: DoorEvent }
  | { ok: false; reason: RejectReason; detail: string; event?: DoorEvent };

export class EventVerifier {
  #keys = new Map<string, Uint8Array>();
  #lastSeq = new Map<string, number>();

  constructor(keys: Record<string, Uint8Array> = {}) {
    for (const thing of Object.keys(keys)) this.register(thing, keys[thing]);
  }

  register(thing: string, publicKey: Uint8Array): void {
    if (publicKey.length !== 32) throw new RangeError("verifier: Ed25519 public keys are 32 bytes");
    this.#keys.set(thing, publicKey.slice());
  }

  /** Highest sequence number accepted from a thing so far (0 if none). */
  lastSeq(thing: string): number {
    return this.#lastSeq.get(thing) ?? 0;
  }

  /**
   * Verify one payload. `topic`, when given, must be doorward/<event.thing>/<kind>.
   * `expectThing`, when given, must equal event.thing.
   */
  verify(payload: Uint8Array, context: { topic?: string; expectThing?: string } = {}): Verdict {
    let opened;
    try {
      opened = openEnvelope(payload);
    } catch (e) {
      return { ok: false, reason: "format", detail: (e as Error).message };
    }
    const { event, signature, message } = opened;
    if (context.expectThing !== undefined && event.thing !== context.expectThing) {
      return { ok: false, reason: "wrong-thing", detail: `event is from ${event.thing}, expected ${context.expectThing}`, event };
    }
    if (context.topic !== undefined) {
      const parts = context.topic.split("/");
      if (parts.length !== 3 || parts[0] !== TOPIC_ROOT || parts[1] !== event.thing) {
        return { ok: false, reason: "wrong-thing", detail: `event from ${event.thing} arrived on ${context.topic}`, event };
      }
    }
    const key = this.#keys.get(event.thing);
    if (!key) return { ok: false, reason: "unknown-thing", detail: `no key registered for ${event.thing}`, event };
    if (!nacl.sign.detached.verify(message, signature, key)) {
      return { ok: false, reason: "signature", detail: "Ed25519 signature does not verify", event };
    }
    const last = this.lastSeq(event.thing);
    if (event.seq <= last) {
      return { ok: false, reason: "replay", detail: `seq ${event.seq} is not above ${last}`, event };
    }
    this.#lastSeq.set(event.thing, event.seq);
    return { ok: true, event };
  }
}
