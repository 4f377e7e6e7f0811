/*
 * The access anchor: the newest access-list generation this device has held,
 * kept outside its flash, in an AWS IoT named shadow ("doorward-acl").
 *
 * The vault refuses a single record written back from an old flash dump, but
 * a dump written back whole is a consistent older device: the revoked user is
 * listed again. So after every access change the device reports its
 * generation to the shadow, with a MAC under a key derived from the chip's
 * key provider (the eFuse HMAC key on a board: an old dump runs under it too,
 * and the cloud does not have it). At every
 * connection it asks for the shadow before it acts on any command; a
 * generation there above its own means its flash went back, and it then acts
 * on nothing but revocations and an owner-signed list at least that new
 * (./commands).
 *
 * That key outlives a factory reset, so the anchor also names how many resets
 * the chip had been through when it was reported (./provisioning). An anchor
 * with a lower count is a previous owner's: the device treats it as absent and
 * reports its own over it. One with a higher count means this whole flash is
 * from before a reset: the device acts on nothing but revocations until it is
 * reset again. The wire shapes are AWS's:
 *   publish  $aws/things/<thing>/shadow/name/doorward-acl/get     {}
 *   answer   .../get/accepted  {state: {reported: {acl: {gen, resets, tag}}}, ...}
 *            .../get/rejected  {code: 404, ...}  (no anchor yet)
 *   publish  .../update        {state: {reported: {acl: {gen, resets, tag}}}}
 * tag = base64url(HMAC-SHA-512(JCS {gen, resets, thing, v: 2}))[0..16 bytes].
 * The cloud cannot forge a higher generation (that would only lock the
 * device until the owner signs a newer list), but it can delete the shadow;
 * docs/access.md says what that leaves.
 */
import { canonicalBytes, jsonNestsDeeper } from "./canonical";
import { fromBase64Url, toBase64Url, utf8Decode } from "./bytes";
import type { RecordTag } from "./record";

export const ANCHOR_SHADOW = "doorward-acl";
export const ANCHOR_DOMAIN = "doorward/acl-anchor/v2";
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

function tagOf(thing: string, gen: number, resets: number, tag: RecordTag): string {
  return toBase64Url(tag(canonicalBytes({ gen, resets, thing, v: 2 })).subarray(0, 16));
}

/** The shadow update reporting this generation, made after `resets` factory resets of the chip. */
export function encodeAnchorUpdate(thing: string, gen: number, tag: RecordTag, resets = 0): Uint8Array {
  return canonicalBytes({ state: { reported: { acl: { gen, resets, tag: tagOf(thing, gen, resets, tag) } } } });
}

export type AnchorAnswer =
  /** The shadow holds an authentic anchor, reported after `resets` factory resets of this chip. */
  | { kind: "anchor"; gen: number; resets: number }
  /** No shadow, or one without an anchor this chip made (another device's key, an older format, a forgery). */
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
  const resets = field(acl, "resets");
  const claimed = field(acl, "tag");
  if (acl === undefined) return { kind: "none", forged: false };
  if (typeof gen !== "number" || !Number.isSafeInteger(gen) || gen < 1 || typeof claimed !== "string") return { kind: "none", forged: true };
  if (typeof resets !== "number" || !Number.isSafeInteger(resets) || resets < 0) return { kind: "none", forged: true };
  let given: Uint8Array;
  try {
    given = fromBase64Url(claimed);
  } catch {
    return { kind: "none", forged: true };
  }
  const expected = fromBase64Url(tagOf(thing, gen, resets, tag));
  let diff = given.length === expected.length ? 0 : 1;
  for (let i = 0; i < expected.length; i++) diff |= (given[i] ?? 0) ^ expected[i];
  return diff === 0 ? { kind: "anchor", gen, resets } : { kind: "none", forged: true };
}
