/*
 * Invitations: how an owner's web app adds a shared user whose browser makes its
 * own keys.
 *
 * The owner's app makes an invitation: the thing, the device's two public keys,
 * the user id and role it means to grant, a broker token for that user, and a
 * fresh 32-byte secret, all in the fragment of a link (never sent to a server) or
 * a QR code of it. The guest's browser opens it, makes its key pairs, and answers
 * on doorward/<thing>/invites/<user> (retained, so the owner's app need not be
 * open) with its public keys sealed by secretbox under the invitation's secret.
 * The owner's app opens the answer with the secret it kept: only someone holding
 * the link can have made it, and neither the broker nor anyone on the way can
 * change the keys unnoticed. The owner then lets the user in with a signed list
 * (the grant path); the device, not the invitation, decides who gets in.
 *
 * Every parse is strict and throws InvitationError with a sentence for the user.
 */
import nacl from "tweetnacl";
import { canonicalBytes, parseCanonical } from "../modules/core/canonical";
import { fromBase64Url, toBase64Url } from "../modules/core/bytes";
import { isUserId, isUsableBoxKey, userFromJson, userToJson, type AccessUser, type Role } from "../modules/core/access";
import { isThingName, TOPIC_ROOT } from "../modules/core/topics";

export const INVITATION_VERSION = 1;
/** The fragment key of an invitation link: https://host/#invite=<base64url>. */
export const INVITE_FRAGMENT = "invite";
const MAX_INVITATION_BYTES = 2048;

export class InvitationError extends Error {
  override name = "InvitationError";
}

export interface Invitation {
  thing: string;
  /** The device's Ed25519 key (verifies events) and X25519 key (derives the user's keys). */
  deviceSignPublicKey: Uint8Array;
  deviceBoxPublicKey: Uint8Array;
  user: string;
  role: Exclude<Role, "owner">;
  /** The broker credential for this user (the stand-in's app token; on AWS, what the custom authorizer checks). */
  token: string;
  /** Seals the answer. 32 bytes. */
  secret: Uint8Array;
}

export function invitesTopic(thing: string, user: string): string {
  return `${TOPIC_ROOT}/${thing}/invites/${user}`;
}

function key32(v: unknown, what: string): Uint8Array {
  let bytes: Uint8Array | undefined;
  try {
    bytes = typeof v === "string" ? fromBase64Url(v) : undefined;
  } catch {
    bytes = undefined;
  }
  if (!bytes || bytes.length !== 32) throw new InvitationError(`the ${what} in it is not a 32-byte key`);
  return bytes;
}

export function encodeInvitation(i: Invitation): string {
  return toBase64Url(canonicalBytes({
    box: toBase64Url(i.deviceBoxPublicKey), role: i.role, secret: toBase64Url(i.secret), sign: toBase64Url(i.deviceSignPublicKey),
    thing: i.thing, token: i.token, user: i.user, v: INVITATION_VERSION,
  }));
}

export function invitationLink(origin: string, i: Invitation): string {
  return `${origin}/#${INVITE_FRAGMENT}=${encodeInvitation(i)}`;
}

/** Read the invitation in a link, a fragment (#invite=...) or the bare code. */
export function parseInvitation(text: string): Invitation {
  const trimmed = text.trim();
  const at = trimmed.indexOf(`${INVITE_FRAGMENT}=`);
  const code = at >= 0 ? trimmed.slice(at + INVITE_FRAGMENT.length + 1).split("&")[0] : trimmed;
  if (code.length === 0) throw new InvitationError("the invitation is empty");
  if (code.length > (MAX_INVITATION_BYTES * 4) / 3 + 4) throw new InvitationError("the invitation is too long to be one");
  let doc: unknown;
  try {
    doc = parseCanonical(fromBase64Url(code), MAX_INVITATION_BYTES);
  } catch {
    throw new InvitationError("the link is damaged or cut short (its code does not decode)");
  }
  const o = doc as Record<string, unknown>;
  if (typeof o !== "object" || o === null || Array.isArray(o)) throw new InvitationError("the link does not hold an invitation");
  if (o.v !== INVITATION_VERSION) throw new InvitationError("the invitation is of a version this app does not know");
  const names = Object.keys(o).sort().join(",");
  if (names !== "box,role,secret,sign,thing,token,user,v") throw new InvitationError("the invitation is missing parts or has unknown ones");
  if (!isThingName(o.thing)) throw new InvitationError("the doorbell's name in it is not a thing name");
  if (!isUserId(o.user)) throw new InvitationError("the user name in it is not a user id");
  if (o.role !== "resident" && o.role !== "viewer") throw new InvitationError("it grants no role a guest can have");
  if (typeof o.token !== "string" || o.token.length === 0 || o.token.length > 512) throw new InvitationError("its broker token is missing");
  const box = key32(o.box, "doorbell's box key");
  if (!isUsableBoxKey(box)) throw new InvitationError("the doorbell's box key in it is unusable (a low-order point)");
  return {
    thing: o.thing, user: o.user, role: o.role, token: o.token,
    deviceSignPublicKey: key32(o.sign, "doorbell's signing key"), deviceBoxPublicKey: box, secret: key32(o.secret, "secret"),
  };
}

/** The guest's answer: its public identity sealed under the invitation's secret. */
export function sealAnswer(identity: AccessUser, secret: Uint8Array, nonce: Uint8Array = nacl.randomBytes(24)): Uint8Array {
  const box = nacl.secretbox(canonicalBytes(userToJson(identity)), nonce, secret);
  return canonicalBytes({ box: toBase64Url(box), n: toBase64Url(nonce), v: INVITATION_VERSION });
}

/** Open an answer for `user` with the secret kept for that invitation. */
export function openAnswer(payload: Uint8Array, user: string, secret: Uint8Array): AccessUser {
  let doc: Record<string, unknown>;
  try {
    doc = parseCanonical(payload, MAX_INVITATION_BYTES) as Record<string, unknown>;
  } catch {
    throw new InvitationError("the answer is not an invitation answer");
  }
  if (typeof doc !== "object" || doc === null || doc.v !== INVITATION_VERSION || typeof doc.box !== "string" || typeof doc.n !== "string") {
    throw new InvitationError("the answer is not an invitation answer");
  }
  let opened: Uint8Array | null = null;
  try {
    const nonce = fromBase64Url(doc.n);
    if (nonce.length === 24) opened = nacl.secretbox.open(fromBase64Url(doc.box), nonce, secret);
  } catch {
    opened = null;
  }
  if (!opened) throw new InvitationError("the answer was not sealed with this invitation's secret");
  let identity: AccessUser;
  try {
    identity = userFromJson(parseCanonical(opened, MAX_INVITATION_BYTES));
  } catch (e) {
    throw new InvitationError(`the answer's keys are unusable: ${(e as Error).message}`);
  }
  if (identity.id !== user) throw new InvitationError(`the answer is for ${identity.id}, not ${user}`);
  if (identity.role === "owner") throw new InvitationError("the answer claims the owner's role");
  return identity;
}
