/*
 * AWS IoT Core policy evaluation, for the policy a deployment attaches to every
 * device certificate (docs/aws-policy.json). The stand-in decides what a thing
 * may publish and subscribe to with this evaluator over that very file, and the
 * tests read the same file through it, so the stand-in cannot allow what the
 * real policy refuses, nor the other way round.
 *
 * What it implements of AWS's rules, generically:
 * - a request is allowed when some Allow statement matches it and no Deny
 *   statement does (an explicit Deny wins; no match is a refusal);
 * - Action and Resource are a string or a list; in both, * matches any run of
 *   characters (none included) and ? exactly one; everything else is literal,
 *   MQTT's + and # included (a subscription to doorward/door-1/# is checked as
 *   the resource topicfilter/doorward/door-1/#);
 * - policy variables ${iot:Connection.Thing.ThingName} and ${iot:ClientId},
 *   filled from the connection; an unknown variable matches nothing;
 * - Condition: Bool and StringEquals on keys the connection supplies. A
 *   statement with a condition this code does not know does not apply, so an
 *   unknown condition never widens access here.
 * Publish is checked against topic/<topic>, Subscribe against
 * topicfilter/<filter>, Receive against topic/<topic>, Connect against
 * client/<clientId>. The module uses no Node API: the policy is imported as JSON.
 */
// Imported, not read from disk: this module is pure, so the web app's bundle may include its importers.
import devicePolicyJson from "../../docs/aws-policy.json" with { type: "json" };

export type IotAction = "iot:Connect" | "iot:Publish" | "iot:Subscribe" | "iot:Receive" | "iot:RetainPublish";

export interface PolicyStatement {
  Sid?: string;
  Effect: "Allow" | "Deny";
  Action: string | string[];
  Resource: string | string[];
  Condition?: Record<string, Record<string, string | string[]>>;
}

export interface PolicyDocument {
  Version?: string;
  Statement: PolicyStatement[];
}

/** What the connection tells the evaluator: the values of policy variables and condition keys. */
export interface PolicyContext {
  region: string;
  account: string;
  /** iot:Connection.Thing.ThingName: set when the client ID is the name of a thing the certificate is attached to. */
  thingName?: string;
  clientId?: string;
  /** iot:Connection.Thing.IsAttached. */
  attached?: boolean;
}

/** A policy document, checked for the shape this evaluator relies on. */
export function parsePolicy(doc: unknown, source: string): PolicyDocument {
  const d = doc as Partial<PolicyDocument> | null;
  if (!d || !Array.isArray(d.Statement)) throw new Error(`${source}: no Statement list`);
  for (const s of d.Statement) {
    if (s.Effect !== "Allow" && s.Effect !== "Deny") throw new Error(`${source}: a statement's Effect must be Allow or Deny`);
  }
  return d as PolicyDocument;
}

/** The device policy the README's AWS guide attaches to each thing; REGION and ACCOUNT_ID as written. */
export const DEVICE_POLICY: PolicyDocument = parsePolicy(devicePolicyJson, "docs/aws-policy.json");

/** The ARN of a request: topic/..., topicfilter/... or client/... in the context's region and account. */
export function resourceArn(action: IotAction, name: string, ctx: Pick<PolicyContext, "region" | "account">): string {
  const kind = action === "iot:Connect" ? "client" : action === "iot:Subscribe" ? "topicfilter" : "topic";
  return `arn:aws:iot:${ctx.region}:${ctx.account}:${kind}/${name}`;
}

function list(v: string | string[]): string[] {
  return Array.isArray(v) ? v : [v];
}

/** A policy pattern as a regular expression: * any run, ? one character, variables filled (undefined: matches nothing). */
function patternRegex(pattern: string, ctx: PolicyContext): RegExp | undefined {
  let unknown = false;
  const filled = pattern.replace(/\$\{([^}]*)\}/g, (_, name: string) => {
    const value = name === "iot:Connection.Thing.ThingName" ? ctx.thingName : name === "iot:ClientId" ? ctx.clientId : undefined;
    if (value === undefined) unknown = true;
    // A value is literal: a * in it (impossible in a thing name, but still) matches only a *.
    return `\u0000${value ?? ""}\u0001`;
  });
  if (unknown) return undefined;
  let re = "";
  let literal = false;
  for (const ch of filled) {
    if (ch === "\u0000") literal = true;
    else if (ch === "\u0001") literal = false;
    else if (!literal && ch === "*") re += "[\\s\\S]*";
    else if (!literal && ch === "?") re += "[\\s\\S]";
    else re += ch.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
  }
  return new RegExp(`^${re}$`);
}

function matches(patterns: string | string[], value: string, ctx: PolicyContext): boolean {
  return list(patterns).some((p) => patternRegex(p, ctx)?.test(value) ?? false);
}

function conditionHolds(condition: PolicyStatement["Condition"], ctx: PolicyContext): boolean {
  if (!condition) return true;
  for (const [operator, keys] of Object.entries(condition)) {
    for (const [key, expected] of Object.entries(keys)) {
      const actual = key === "iot:Connection.Thing.IsAttached" ? (ctx.attached === undefined ? undefined : String(ctx.attached))
        : key === "iot:Connection.Thing.ThingName" ? ctx.thingName
        : key === "iot:ClientId" ? ctx.clientId
        : undefined;
      if (actual === undefined) return false;
      if (operator === "Bool" || operator === "StringEquals") {
        if (!list(expected).includes(actual)) return false;
      } else return false;
    }
  }
  return true;
}

/** Whether the policy allows one action on one resource name (a topic, a topic filter or a client ID). */
export function policyAllows(policy: PolicyDocument, action: IotAction, name: string, ctx: PolicyContext): boolean {
  const arn = resourceArn(action, name, ctx);
  let allowed = false;
  for (const s of policy.Statement) {
    if (!matches(s.Action, action, ctx) || !matches(s.Resource, arn, ctx) || !conditionHolds(s.Condition, ctx)) continue;
    if (s.Effect === "Deny") return false;
    allowed = true;
  }
  return allowed;
}
