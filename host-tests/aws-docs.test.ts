/*
 * What docs/aws.md deploys, checked here without an AWS account: the owner
 * app's CloudFormation template parses, its IAM and AWS IoT policies are the
 * same least-privilege statements and agree with the device policy
 * (docs/aws-policy.json) and the firmware's topics (device-guide.test.ts runs
 * the doc's local commands: signing, the job document, the bundle); the fleet verifier is
 * bundled as the doc says and its Lambda handler, loaded from the bundle,
 * judges real signed events.
 */
import test from "ava";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { createRequire } from "node:module";
import { parse } from "yaml";
import * as esbuild from "esbuild";
import { sealEvent, type DoorEvent } from "../modules/core/events";
import { Ed25519Signer } from "../modules/core/signer";
import { toHex } from "../modules/core/bytes";
import { topicsFor } from "../modules/core/topics";
import { createHandler, keysFromEnv, RULE_SQL, type FleetVerdict, type IotRuleEvent } from "../tools/fleet-verifier-lambda";
import { seededRandom } from "./helpers/crypto";

const REPO = path.resolve(import.meta.dirname, "..");
const AWS_MD = fs.readFileSync(path.join(REPO, "docs", "aws.md"), "utf8");
const template = parse(fs.readFileSync(path.join(REPO, "docs", "aws", "owner-app.yaml"), "utf8")) as {
  Resources: Record<string, { Type: string; Properties: Record<string, unknown> }>;
};
const devicePolicy = JSON.parse(fs.readFileSync(path.join(REPO, "docs", "aws-policy.json"), "utf8")) as {
  Statement: Array<{ Action: string; Resource: string | string[] }>;
};

interface Statement {
  Sid: string;
  Effect: string;
  Action: string;
  Resource: unknown;
}

/** An Fn::Sub resource with the account parts and the thing filled in, as AWS would. */
function resolve(resource: unknown, thing: string): string {
  const text = typeof resource === "string" ? resource : (resource as { "Fn::Sub"?: string })["Fn::Sub"];
  if (typeof text !== "string") throw new Error(`resource is neither a string nor Fn::Sub: ${JSON.stringify(resource)}`);
  return text
    .replace("arn:${AWS::Partition}:iot:${AWS::Region}:${AWS::AccountId}:", "")
    .replaceAll("${ThingName}", thing)
    .replace("${!cognito-identity.amazonaws.com:sub}", "${cognito-identity.amazonaws.com:sub}");
}

const THING = "porch-1";

function grants(statements: Statement[], action: string): string[] {
  return statements.filter((s) => s.Effect === "Allow" && s.Action === action).flatMap((s) => [s.Resource].flat().map((r) => resolve(r, THING)));
}

/** AWS IoT policy matching: `*` matches any run of characters; + and # in a topicfilter are literal. */
function allowedBy(patterns: string[], resource: string): boolean {
  return patterns.some((p) => new RegExp(`^${p.split("*").map((part) => part.replace(/[.+?^${}()|[\]\\]/g, "\\$&")).join(".*")}$`).test(resource));
}

const deviceGrants = (action: string) =>
  devicePolicy.Statement.filter((s) => s.Action === action).flatMap((s) => [s.Resource].flat())
    .map((r) => r.replace("arn:aws:iot:REGION:ACCOUNT_ID:", "").replaceAll("${iot:Connection.Thing.ThingName}", THING));

test("the template parses, and has the pieces docs/aws.md names", (t) => {
  const types = Object.values(template.Resources).map((r) => r.Type).sort();
  t.deepEqual(types, ["AWS::Cognito::IdentityPool", "AWS::Cognito::IdentityPoolRoleAttachment", "AWS::Cognito::UserPool", "AWS::Cognito::UserPoolClient", "AWS::Cognito::UserPoolUser", "AWS::IAM::Role", "AWS::IoT::Policy"]);
  t.false((template.Resources.OwnerIdentityPool.Properties.AllowUnauthenticatedIdentities as boolean), "no unauthenticated identities");
  t.regex(AWS_MD, /aws cloudformation deploy --stack-name doorward-\$THING-owner \\\n\s+--template-file docs\/aws\/owner-app\.yaml/);
  t.regex(AWS_MD, /aws iot attach-policy --policy-name doorward-\$THING-owner-app --target <identity id>/);
});

test("the IAM role and the AWS IoT policy are the same least-privilege statements", (t) => {
  const role = template.Resources.OwnerRole.Properties as { Policies: Array<{ PolicyDocument: { Statement: Statement[] } }> };
  const iam = role.Policies[0].PolicyDocument.Statement;
  const iot = (template.Resources.OwnerIotPolicy.Properties.PolicyDocument as { Statement: Statement[] }).Statement;
  t.deepEqual(iam, iot);
  t.deepEqual(grants(iot, "iot:Connect"), ["client/${cognito-identity.amazonaws.com:sub}"], "its own identity as client ID, nothing else");
  t.deepEqual(grants(iot, "iot:Publish"), [`topic/${topicsFor(THING).commands}`], "it may send commands and nothing else");
  for (const s of iot) t.is(s.Effect, "Allow");
  t.deepEqual([...new Set(iot.map((s) => s.Action))].sort(), ["iot:Connect", "iot:Publish", "iot:Receive", "iot:Subscribe"]);
  for (const r of [...grants(iot, "iot:Receive"), ...grants(iot, "iot:Subscribe")]) {
    t.true(r.includes(`/${THING}`) , `${r} names the one doorbell`);
    t.false(r.endsWith("/#") || r.endsWith("doorward/*"), `${r} is not a whole subtree`);
  }
});

test("the owner receives what the device policy lets the device send, and its commands reach the device", (t) => {
  const iot = (template.Resources.OwnerIotPolicy.Properties.PolicyDocument as { Statement: Statement[] }).Statement;
  const topics = topicsFor(THING);
  const receive = grants(iot, "iot:Receive");
  const subscribe = grants(iot, "iot:Subscribe");
  for (const kind of ["events", "snapshots", "replies"] as const) {
    t.true(receive.includes(`topic/${topics[kind]}`), `owner receives ${topics[kind]}`);
    t.true(subscribe.includes(`topicfilter/${topics[kind]}`), `owner subscribes ${topics[kind]}`);
    t.true(allowedBy(deviceGrants("iot:Publish"), `topic/${topics[kind]}`), `the device may publish ${topics[kind]}`);
  }
  t.true(allowedBy(deviceGrants("iot:Subscribe"), `topicfilter/${topics.commands}`), "the device subscribes to the commands topic");
  t.true(allowedBy(deviceGrants("iot:Receive"), `topic/${topics.commands}`), "and receives it");
  // Every doorward/ topic the owner reads is one the device policy confines to the device's own subtree.
  for (const r of receive.filter((r) => r.startsWith("topic/doorward/"))) t.true(allowedBy(deviceGrants("iot:Publish"), r.replace("/*", "/x")), r);
  t.false(allowedBy(grants(iot, "iot:Receive"), `topic/doorward/other-thing/events`), "not another doorbell's events");
  t.false(allowedBy(grants(iot, "iot:Publish"), `topic/${topics.events}`), "the owner cannot publish as the device");
});

// ---- the fleet verifier ----

const seed = new Uint8Array(32).fill(9);
function signer() {
  const s = new Ed25519Signer(seed, { random: seededRandom("aws"), boot: 1, poolSize: 8 });
  while (s.precompute());
  return s;
}
const ring = (seq: number): DoorEvent => ({ v: 1, type: "ring", thing: THING, boot: 1, seq, time: 1_790_000_000_000 + seq });
const ruleEvent = (payload: Uint8Array, topic = `doorward/${THING}/events`): IotRuleEvent => ({ payload: Buffer.from(payload).toString("base64"), topic });

async function judge(handler: (e: IotRuleEvent) => Promise<FleetVerdict>) {
  const s = signer();
  const first = sealEvent(ring(1), s);
  return {
    accepted: await handler(ruleEvent(first)),
    replayed: await handler(ruleEvent(first)),
    forged: await handler(ruleEvent(sealEvent(ring(2), s).map((b, i, a) => (i === a.length - 5 ? b ^ 1 : b)))),
    elsewhere: await handler(ruleEvent(sealEvent(ring(3), s), "doorward/other-thing/events")),
    malformed: await handler({ topic: `doorward/${THING}/events` } as unknown as IotRuleEvent),
    next: await handler(ruleEvent(sealEvent(ring(4), s))),
  };
}

test("the Lambda handler judges real events with the shared verifier, one JSON line each, and never throws", async (t) => {
  const lines: string[] = [];
  const handler = createHandler({ keys: { [THING]: signer().publicKey }, log: (l) => lines.push(l) });
  const r = await judge(handler);
  t.like(r.accepted, { ok: true, thing: THING, type: "ring", boot: 1, seq: 1 });
  t.like(r.replayed, { ok: false, reason: "replay" });
  t.like(r.forged, { ok: false, reason: "signature" });
  t.like(r.elsewhere, { ok: false, reason: "wrong-thing" });
  t.like(r.malformed, { ok: false, reason: "format" });
  t.regex((r.malformed as { detail: string }).detail, /encode\(\*, 'base64'\) AS payload/);
  t.like(r.next, { ok: true, seq: 4 });
  t.is(lines.length, 6);
  t.like(JSON.parse(lines[2]), { doorward: "event-verdict", ok: false, reason: "signature", thing: THING });
  const rule = JSON.parse(fs.readFileSync(path.join(REPO, "docs", "aws", "verifier-rule.json"), "utf8")) as { sql: string; actions: Array<{ lambda?: { functionArn: string } }> };
  t.is(rule.sql, RULE_SQL, "the rule docs/aws.md creates hands the handler what it reads");
  t.regex(rule.actions[0].lambda!.functionArn, /:function:doorward-verifier$/);
  t.regex(AWS_MD, /--topic-rule-payload file:\/\/\/tmp\/doorward-rule\.json/);
});

test("keys from the environment: malformed entries are named", (t) => {
  t.deepEqual(Object.keys(keysFromEnv(JSON.stringify({ [THING]: "ab".repeat(32) }))), [THING]);
  t.throws(() => keysFromEnv(undefined), { message: /DOORWARD_THING_KEYS is not set/ });
  t.throws(() => keysFromEnv("{"), { message: /is not JSON/ });
  t.throws(() => keysFromEnv('{"a b":"00"}'), { message: /"a b" is not a thing name/ });
  t.throws(() => keysFromEnv(`{"${THING}":"00"}`), { message: /the key of porch-1 must be 64 hex digits/ });
});

test("bundled as docs/aws.md says, the function loads on its own and its handler works", async (t) => {
  const line = /npx esbuild (tools\/fleet-verifier-lambda\.ts) --bundle --platform=node --format=cjs \\\n\s+--outfile=build\/lambda\/index\.js/.exec(AWS_MD);
  t.truthy(line, "docs/aws.md has the esbuild line");
  // CommonJS: tweetnacl asks for Node's crypto with require(), which an ES module bundle cannot answer.
  const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "dw-lambda-")), "index.js");
  await esbuild.build({ entryPoints: [path.join(REPO, line![1])], bundle: true, platform: "node", format: "cjs", outfile: out, logLevel: "silent" });
  const bundled = fs.readFileSync(out, "utf8");
  const required = [...bundled.matchAll(/require\("([^"]+)"\)/g)].map((m) => m[1]);
  t.deepEqual(required.filter((m) => !["crypto", "node:crypto", "fs", "node:fs", "path", "node:path"].includes(m)), [], "nothing left to load but Node's own modules");
  process.env.DOORWARD_THING_KEYS = JSON.stringify({ [THING]: toHex(signer().publicKey) });
  const mod = createRequire(import.meta.url)(out) as { handler: (e: IotRuleEvent) => Promise<FleetVerdict> };
  const log = console.log;
  console.log = () => {};
  try {
    const r = await judge(mod.handler);
    t.like(r.accepted, { ok: true, seq: 1 });
    t.like(r.replayed, { ok: false, reason: "replay" });
    t.like(r.forged, { ok: false, reason: "signature" });
  } finally {
    console.log = log;
    delete process.env.DOORWARD_THING_KEYS;
  }
});
