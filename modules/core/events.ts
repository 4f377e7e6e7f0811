/*
 * The one event encoder.
 *
 * Everything the device reports (rings, snapshot manifests, audit reports) is an
 * event: a small JSON object with a fixed header, encoded canonically
 * (./canonical), signed with the device's Ed25519 key over a domain-separated
 * message, and wrapped in an envelope that is itself canonical. docs/protocol.md
 * is the normative description of these bytes; this module is its only producer
 * and, through tools/verifier, its reference consumer.
 */
import { canonicalBytes, parseCanonical, type Json } from "./canonical";
import { utf8Encode, concatBytes, toBase64Url, fromBase64Url } from "./bytes";
import { isThingName } from "./topics";

export const EVENT_VERSION = 1;
/** Prefix of every signed message, so a Doorward event signature can never be replayed as another protocol's. */
export const EVENT_DOMAIN = "doorward/event/v1\n";
/** Envelopes larger than this are refused unparsed (well under AWS's 128 KB). */
export const MAX_EVENT_BYTES = 4096;

export type EventType = "ring" | "snapshot" | "audit" | "status";
const EVENT_TYPES: readonly string[] = ["ring", "snapshot", "audit", "status"];

export interface EventHeader {
  v: number;
  type: EventType;
  thing: string;
  /** Boot counter: increments on every start, persisted. */
  boot: number;
  /** Sequence number: strictly increasing for the life of the device, across reboots. */
  seq: number;
  /** Wall time in ms since the Unix epoch, or null while the device has no trusted time. */
  time: number | null;
}
export type DoorEvent = EventHeader & { [field: string]: Json };

export interface Signer {
  readonly publicKey: Uint8Array;
  sign(message: Uint8Array): Uint8Array;
}

const domainBytes = utf8Encode(EVENT_DOMAIN);

/** The exact bytes an event's signature covers. */
export function signingMessage(event: DoorEvent): Uint8Array {
  return concatBytes(domainBytes, canonicalBytes(event));
}

/** Sign an event and return the MQTT payload. */
export function sealEvent(event: DoorEvent, signer: Signer): Uint8Array {
  const problem = eventShapeProblem(event);
  if (problem) throw new TypeError(`event: ${problem}`);
  const signature = signer.sign(signingMessage(event));
  const payload = canonicalBytes({ event, sig: toBase64Url(signature) });
  if (payload.length > MAX_EVENT_BYTES) throw new RangeError("event: envelope too large");
  return payload;
}

export interface OpenedEnvelope {
  event: DoorEvent;
  signature: Uint8Array;
  /** The bytes the signature must verify over. */
  message: Uint8Array;
}

/** Parse and shape-check an envelope. Checks no signature: that needs the sender's key (see tools/verifier). */
export function openEnvelope(payload: Uint8Array): OpenedEnvelope {
  const doc = parseCanonical(payload, MAX_EVENT_BYTES);
  if (!isRecord(doc) || Object.keys(doc).length !== 2 || !isRecord(doc.event) || typeof doc.sig !== "string") {
    throw new TypeError("envelope must be {event, sig}");
  }
  const event = doc.event as DoorEvent;
  const problem = eventShapeProblem(event);
  if (problem) throw new TypeError(`event: ${problem}`);
  const signature = fromBase64Url(doc.sig);
  if (signature.length !== 64) throw new TypeError("sig must be 64 bytes");
  return { event, signature, message: signingMessage(event) };
}

function isRecord(v: unknown): v is Record<string, Json> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isCount(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

/** Returns why an event header is malformed, or undefined if it is well formed. */
export function eventShapeProblem(event: unknown): string | undefined {
  if (!isRecord(event)) return "not an object";
  if (event.v !== EVENT_VERSION) return "unsupported version";
  if (typeof event.type !== "string" || !EVENT_TYPES.includes(event.type)) return "unknown type";
  if (!isThingName(event.thing)) return "bad thing name";
  if (!isCount(event.boot)) return "bad boot counter";
  if (!isCount(event.seq) || event.seq === 0) return "bad sequence number";
  if (event.time !== null && !isCount(event.time)) return "bad time";
  return undefined;
}
