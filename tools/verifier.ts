/*
 * Reference verifier for Doorward events: library and CLI.
 *
 * It checks, in order: the envelope's format (canonical JSON, known fields),
 * that the event names the expected thing (and the topic it arrived on, when
 * given), the Ed25519 signature under that thing's registered public key, and
 * that the sequence number is above the last one accepted from that thing
 * (replay). State advances only for events that pass every check. It decodes
 * with the core's own event module (the one encoder), and verifies with
 * tweetnacl; the tests check every signature a second time with OpenSSL.
 *
 *   tsx tools/verifier.ts <thing> <public-key-hex> <payload-file>...
 */
import nacl from "tweetnacl";
import { openEnvelope, type DoorEvent } from "../modules/core/events";
import { fromHex } from "../modules/core/bytes";
import { TOPIC_ROOT } from "../modules/core/topics";
import { runAsEntry, UserError } from "./lib/cli";

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

const CLI = {
  name: "verifier",
  usage: `usage: npx tsx tools/verifier.ts <thing> <public-key-hex> <payload-file>...

Checks saved Doorward event payloads (the bytes of an MQTT message on
doorward/<thing>/events) as the cloud does: envelope format, thing name, Ed25519
signature under the thing's public key, and rising sequence numbers across the files
in the order given. Prints one line per file; exits 1 if any is refused.

  -h, --help     this text`,
  options: {},
  positionals: { min: 3, max: Number.MAX_SAFE_INTEGER },
} as const;

runAsEntry(import.meta.url, CLI, async ({ positionals }) => {
  const fs = await import("node:fs");
  const [thing, keyHex, ...files] = positionals;
  if (!/^[0-9a-fA-F]{64}$/.test(keyHex)) throw new UserError(`the public key must be 64 hex digits (32 bytes), got ${JSON.stringify(keyHex)}`);
  const verifier = new EventVerifier({ [thing]: fromHex(keyHex) });
  let failures = 0;
  for (const file of files) {
    const verdict = verifier.verify(new Uint8Array(fs.readFileSync(file)), { expectThing: thing });
    if (verdict.ok) process.stdout.write(`${file}: ok ${verdict.event.type} seq=${verdict.event.seq}\n`);
    else {
      failures++;
      process.stdout.write(`${file}: REJECTED ${verdict.reason}: ${verdict.detail}\n`);
    }
  }
  return failures ? 1 : 0;
});
