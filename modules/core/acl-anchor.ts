/*
 * The access anchor: the newest access-list generation this device has held,
 * kept outside its flash, in an AWS IoT named shadow ("doorward-acl").
 *
 * The vault refuses a single record written back from an old flash dump, but
 * a dump written back whole is a consistent older device: the revoked user is
 * listed again. So after every access change the device reports its
 * generation to the shadow, with a MAC under a key derived from its own X25519
 * secret (which an old dump holds too, and the cloud does not). At every
 * connection it asks for the shadow before it acts on any command; a
 * generation there above its own means its flash went back, and it then acts
 * on nothing but revocations and an owner-signed list at least that new
 * (./commands). The wire shapes are AWS's:
 *   publish  $aws/things/<thing>/shadow/name/doorward-acl/get     {}
 *   answer   .../get/accepted  {state: {reported: {acl: {gen, tag}}}, ...}
 *            .../get/rejected  {code: 404, ...}  (no anchor yet)
 *   publish  .../update        {state: {reported: {acl: {gen, tag}}}}
 * tag = base64url(HMAC-SHA-512(JCS {gen, thing, v: 1}))[0..16 bytes].
 * The cloud cannot forge a higher generation (that would only lock the
 * device until the owner signs a newer list), but it can delete the shadow;
 * docs/access.md says what that leaves.
 */
import { canonicalBytes, jsonNestsDeeper } from "./canonical";
import { fromBase64Url, toBase64Url, utf8Decode } from "./bytes";
import type { RecordTag } from "./record";

export const ANCHOR_SHADOW = "doorward-acl";
export const ANCHOR_DOMAIN = "doorward/acl-anchor/v1";
const MAX_ANSWER_BYTES = 8192;

export function anchorTopics(thing: string) {
  const base = `$aws/things/${thing}/shadow/name/${ANCHOR_SHADOW}`;
  return { get: `${base}/get`, getAccepted: `${base}/get/accepted`, getRejected: `${base}/get/rejected`, update: `${base}/update` };
}

/** What the device subscribes to for the answers (AWS sends them only to subscribers). */
export function anchorSubscriptions(thing: string): string[] {
  const t = anchorTopics(thing);
  return [t.getAccepted, t.getRejected];
}

function tagOf(thing: string, gen: number, tag: RecordTag): string {
  return toBase64Url(tag(canonicalBytes({ gen, thing, v: 1 })).subarray(0, 16));
}

/** The shadow update reporting this generation. */
export function encodeAnchorUpdate(thing: string, gen: number, tag: RecordTag): Uint8Array {
  return canonicalBytes({ state: { reported: { acl: { gen, tag: tagOf(thing, gen, tag) } } } });
}

export type AnchorAnswer =
  /** The shadow holds an authentic anchor. */
  | { kind: "anchor"; gen: number }
  /** No shadow, or one without an anchor this device made (another device's key, a reset, a forgery). */
  | { kind: "none"; forged: boolean }
  /** The service could not answer (throttled, internal error): ask again later. */
  | { kind: "error"; code: number };

/** Read an answer on get/accepted or get/rejected; undefined for a topic that is not one. */
export function readAnchorAnswer(thing: string, topic: string, payload: Uint8Array, tag: RecordTag): AnchorAnswer | undefined {
  const t = anchorTopics(thing);
  if (topic !== t.getAccepted && topic !== t.getRejected) return undefined;
  let doc: unknown;
  try {
    if (payload.length > MAX_ANSWER_BYTES || jsonNestsDeeper(payload, 8)) throw new Error("shape");
    doc = JSON.parse(utf8Decode(payload));
  } catch {
    return { kind: "error", code: 0 };
  }
  const field = (o: unknown, k: string): unknown => (typeof o === "object" && o !== null && !Array.isArray(o) ? (o as Record<string, unknown>)[k] : undefined);
  if (topic === t.getRejected) {
    const code = field(doc, "code");
    return code === 404 ? { kind: "none", forged: false } : { kind: "error", code: typeof code === "number" ? code : 0 };
  }
  const acl = field(field(field(doc, "state"), "reported"), "acl");
  const gen = field(acl, "gen");
  const claimed = field(acl, "tag");
  if (acl === undefined) return { kind: "none", forged: false };
  if (typeof gen !== "number" || !Number.isSafeInteger(gen) || gen < 1 || typeof claimed !== "string") return { kind: "none", forged: true };
  let given: Uint8Array;
  try {
    given = fromBase64Url(claimed);
  } catch {
    return { kind: "none", forged: true };
  }
  const expected = fromBase64Url(tagOf(thing, gen, tag));
  let diff = given.length === expected.length ? 0 : 1;
  for (let i = 0; i < expected.length; i++) diff |= (given[i] ?? 0) ^ expected[i];
  return diff === 0 ? { kind: "anchor", gen } : { kind: "none", forged: true };
}
