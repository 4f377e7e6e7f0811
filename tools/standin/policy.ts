/*
 * The stand-in's per-identity topic policy, as pure functions.
 *
 * A thing gets exactly what the AWS IoT policy a real deployment attaches to every
 * device certificate allows: docs/aws-policy.json itself, read through the one
 * policy evaluator (./aws-policy), with ${iot:Connection.Thing.ThingName} set to
 * the thing. Extending that file extends the stand-in. On top, the stand-in refuses
 * what AWS refuses before any policy: empty topics, wildcards in a publish,
 * malformed filters, more than 7 slashes. The cloud service identity gets
 * the fan-in filters (doorward/+/events, /snapshots, /replies) and may address any
 * thing's commands and $aws/things/<thing>/... topics. Kept free of the broker so
 * the rules can be read and tested on their own.
 *
 * An app identity (an owner's or shared user's browser, which presents a token
 * rather than a certificate: see ./wss) is bound to one thing and one user: it
 * may send that thing commands, read its events, snapshots and replies, hear its
 * presence, and answer an invitation under its own user id; only the owner's
 * app may read the answers. Everything it reads is signed or sealed end to end,
 * so the policy limits exposure, not trust.
 *
 * Wildcards cannot escape a thing's subtree because the thing-name level must be
 * the literal thing name, and a thing name can never contain + or #.
 */

import { isThingName, TOPIC_ROOT } from "../../modules/core/topics";
import { DEVICE_POLICY, policyAllows } from "./aws-policy";
import { INVITES_KIND, PRESENCE_PREFIX } from "./app-names";

export type Role = "thing" | "service" | "app";

/** Who is on the other end of a connection, as read from its client certificate or app token. */
export interface Identity {
  role: Role;
  /** The certificate's CN (the thing name, or the service's name), or an app's user id. */
  name: string;
  /** For an app: the one thing it may reach. */
  thing?: string;
  /** For an app: whether it is the owner's (reads invitation answers). */
  owner?: boolean;
}

export { appClientIdBase, INVITES_KIND, PRESENCE_PREFIX } from "./app-names";

/** AWS: "The topic in a publish or subscribe request can be no larger than 7 forward slashes". */
export const MAX_TOPIC_SLASHES = 7;

/** The AWS features the service may address under $aws/things/<thing>/. */
const AWS_FEATURES = new Set(["shadow", "jobs", "streams"]);

/** Device → cloud topic kinds the service may fan in with a + in the thing level. */
const FAN_IN_KINDS = new Set(["events", "snapshots", "replies"]);

export type PolicyVerdict = { ok: true } | { ok: false; reason: "topic-not-allowed" | "topic-too-deep" | "malformed-topic" };

const ALLOW: PolicyVerdict = { ok: true };

function slashes(topic: string): number {
  let n = 0;
  for (let i = 0; i < topic.length; i++) if (topic.charCodeAt(i) === 47) n++;
  return n;
}

/** MQTT well-formedness that aedes does not already check for filters: # last and alone, + alone. */
function wellFormedFilter(levels: string[]): boolean {
  for (let i = 0; i < levels.length; i++) {
    const level = levels[i];
    if (level.includes("#") && (level !== "#" || i !== levels.length - 1)) return false;
    if (level.includes("+") && level !== "+") return false;
  }
  return true;
}

/** What the device policy lets this thing do with this topic (publish) or filter (subscribe). */
function thingMay(action: "iot:Publish" | "iot:Subscribe", thing: string, name: string): boolean {
  // The stand-in accepts a thing only with its own name as client ID, as the policy's Connect statement demands.
  return policyAllows(DEVICE_POLICY, action, name, { region: "REGION", account: "ACCOUNT_ID", thingName: thing, clientId: thing, attached: true });
}

/** $aws/things/<name>/<feature>/... where <name> is a thing name; with wildcards, also + for <name> and <feature>, or a final #. */
function awsThingTopic(levels: string[], allowWildcards: boolean): boolean {
  if (levels[0] !== "$aws" || levels[1] !== "things") return false;
  const name = levels[2];
  const feature = levels[3];
  if (!(isThingName(name) || (allowWildcards && name === "+"))) return false;
  if (allowWildcards && feature === "#") return levels.length === 4;
  return levels.length >= 5 && (AWS_FEATURES.has(feature) || (allowWildcards && feature === "+"));
}

function appMayPublish(who: Identity, levels: string[]): boolean {
  if (levels[0] !== TOPIC_ROOT || levels[1] !== who.thing) return false;
  if (levels.length === 3) return levels[2] === "commands";
  return levels.length === 4 && levels[2] === INVITES_KIND && levels[3] === who.name;
}

function appMaySubscribe(who: Identity, levels: string[]): boolean {
  if (levels[0] === TOPIC_ROOT && levels[1] === who.thing) {
    if (levels.length === 3) return FAN_IN_KINDS.has(levels[2]);
    return who.owner === true && levels.length === 4 && levels[2] === INVITES_KIND && levels[3] === "+";
  }
  const presence = PRESENCE_PREFIX.split("/");
  return levels.length === 5 && levels[0] === presence[0] && levels[1] === presence[1] && levels[2] === presence[2]
    && (levels[3] === "+" || levels[3] === "connected" || levels[3] === "disconnected") && levels[4] === who.thing;
}

export function mayPublish(who: Identity, topic: string): PolicyVerdict {
  if (topic.length === 0 || topic.includes("+") || topic.includes("#")) return { ok: false, reason: "malformed-topic" };
  if (slashes(topic) > MAX_TOPIC_SLASHES) return { ok: false, reason: "topic-too-deep" };
  const levels = topic.split("/");
  if (who.role === "app") return isThingName(who.thing) && appMayPublish(who, levels) ? ALLOW : { ok: false, reason: "topic-not-allowed" };
  if (who.role === "thing") return thingMay("iot:Publish", who.name, topic) ? ALLOW : { ok: false, reason: "topic-not-allowed" };
  // Service: commands to any one thing, and AWS-feature topics (e.g. playing the Jobs service in tests).
  if (levels[0] === TOPIC_ROOT && levels.length === 3 && isThingName(levels[1]) && levels[2] === "commands") return ALLOW;
  if (awsThingTopic(levels, false)) return ALLOW;
  return { ok: false, reason: "topic-not-allowed" };
}

export function maySubscribe(who: Identity, filter: string): PolicyVerdict {
  if (filter.length === 0) return { ok: false, reason: "malformed-topic" };
  if (slashes(filter) > MAX_TOPIC_SLASHES) return { ok: false, reason: "topic-too-deep" };
  const levels = filter.split("/");
  if (!wellFormedFilter(levels)) return { ok: false, reason: "malformed-topic" };
  if (who.role === "app") return isThingName(who.thing) && appMaySubscribe(who, levels) ? ALLOW : { ok: false, reason: "topic-not-allowed" };
  if (who.role === "thing") return thingMay("iot:Subscribe", who.name, filter) ? ALLOW : { ok: false, reason: "topic-not-allowed" };
  if (levels[0] === TOPIC_ROOT && levels.length === 3 && (levels[1] === "+" || isThingName(levels[1])) && FAN_IN_KINDS.has(levels[2])) {
    return ALLOW;
  }
  if (awsThingTopic(levels, true)) return ALLOW;
  return { ok: false, reason: "topic-not-allowed" };
}
