/*
 * The AWS IoT policy evaluator, and the stand-in against the real policy.
 *
 * The evaluator follows AWS's rules (explicit Deny wins, * and ? wildcards,
 * MQTT wildcards literal, policy variables, conditions fail closed). The
 * stand-in's decisions for a thing are then compared with docs/aws-policy.json
 * over a corpus of topics and filters, its own and another thing's, shadow,
 * jobs, streams, wildcards: wherever the topic is well-formed they agree, and
 * the stand-in never allows what the policy refuses.
 */
import test from "ava";
import fs from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { DEVICE_POLICY, parsePolicy, policyAllows, type PolicyContext, type PolicyDocument } from "../tools/standin/aws-policy";
import { mayPublish, maySubscribe, type Identity } from "../tools/standin/policy";

const CTX: PolicyContext = { region: "REGION", account: "ACCOUNT_ID", thingName: "door-1", clientId: "door-1", attached: true };

test("evaluator: Allow needs a match, Deny wins, * and ? are wildcards, + and # literal", (t) => {
  const policy: PolicyDocument = {
    Statement: [
      { Effect: "Allow", Action: ["iot:Publish", "iot:Receive"], Resource: "arn:aws:iot:REGION:ACCOUNT_ID:topic/a/${iot:Connection.Thing.ThingName}/*" },
      { Effect: "Deny", Action: "iot:Publish", Resource: "arn:aws:iot:REGION:ACCOUNT_ID:topic/a/${iot:Connection.Thing.ThingName}/secret" },
      { Effect: "Allow", Action: "iot:Subscribe", Resource: "arn:aws:iot:REGION:ACCOUNT_ID:topicfilter/b/?/x" },
      { Effect: "Allow", Action: "iot:*", Resource: "arn:aws:iot:REGION:ACCOUNT_ID:topic/all" },
    ],
  };
  t.true(policyAllows(policy, "iot:Publish", "a/door-1/events", CTX));
  t.true(policyAllows(policy, "iot:Publish", "a/door-1/", CTX), "* matches nothing too");
  t.false(policyAllows(policy, "iot:Publish", "a/door-1/secret", CTX), "an explicit Deny wins");
  t.true(policyAllows(policy, "iot:Receive", "a/door-1/secret", CTX), "the Deny names Publish only");
  t.false(policyAllows(policy, "iot:Publish", "a/door-10/events", CTX));
  t.false(policyAllows(policy, "iot:Subscribe", "a/door-1/events", CTX), "a topic statement does not cover a topicfilter");
  t.true(policyAllows(policy, "iot:Subscribe", "b/q/x", CTX));
  t.true(policyAllows(policy, "iot:Subscribe", "b/+/x", CTX), "+ is just a character to the policy");
  t.false(policyAllows(policy, "iot:Subscribe", "b/qq/x", CTX), "? is one character");
  t.true(policyAllows(policy, "iot:Receive", "all", CTX), "iot:* covers every action");
  t.false(policyAllows(policy, "iot:Publish", "a/door-1/events", { ...CTX, region: "eu-west-1" }), "another region");
  t.false(policyAllows(policy, "iot:Publish", "a/door-1/events", { ...CTX, thingName: undefined }), "no thing name: the variable matches nothing");
});

test("evaluator: conditions hold or the statement does not apply; unknown ones never widen", (t) => {
  const connect = (condition: PolicyDocument["Statement"][number]["Condition"]): PolicyDocument => ({
    Statement: [{ Effect: "Allow", Action: "iot:Connect", Resource: "arn:aws:iot:REGION:ACCOUNT_ID:client/${iot:Connection.Thing.ThingName}", Condition: condition }],
  });
  const attached = connect({ Bool: { "iot:Connection.Thing.IsAttached": "true" } });
  t.true(policyAllows(attached, "iot:Connect", "door-1", CTX));
  t.false(policyAllows(attached, "iot:Connect", "door-1", { ...CTX, attached: false }));
  t.false(policyAllows(attached, "iot:Connect", "door-2", CTX));
  t.false(policyAllows(connect({ IpAddress: { "aws:SourceIp": "10.0.0.0/8" } }), "iot:Connect", "door-1", CTX));
  t.false(policyAllows(connect({ Bool: { "iot:Something.Else": "true" } }), "iot:Connect", "door-1", CTX));
});

test("parsePolicy refuses a document that is not a policy", (t) => {
  t.throws(() => parsePolicy({ Statement: [{ Effect: "Maybe", Action: "iot:Publish", Resource: "*" }] }, "bad"), { message: /Effect must be Allow or Deny/ });
  t.throws(() => parsePolicy({}, "bad"), { message: /no Statement/ });
  t.throws(() => parsePolicy(null, "bad"), { message: /no Statement/ });
});

/** Well-formed as AWS takes it: no empty topic, no wildcard in a publish, # last and alone, + alone, at most 7 slashes. */
function wellFormed(kind: "publish" | "subscribe", topic: string): boolean {
  if (topic === "" || topic.split("/").length - 1 > 7) return false;
  const levels = topic.split("/");
  if (kind === "publish") return !topic.includes("+") && !topic.includes("#");
  return levels.every((l, i) => (!l.includes("#") || (l === "#" && i === levels.length - 1)) && (!l.includes("+") || l === "+"));
}

test("the stand-in and docs/aws-policy.json agree on every topic a thing might try", (t) => {
  // As deployed: the guide's sed fills in the region and the account.
  const policy = JSON.parse(fs.readFileSync(path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "docs", "aws-policy.json"), "utf8").replaceAll("REGION", "eu-west-1").replaceAll("ACCOUNT_ID", "123456789012")) as PolicyDocument;
  t.deepEqual(DEVICE_POLICY.Statement.length, policy.Statement.length, "the stand-in's copy is the file");
  const me = "door-1";
  const thing: Identity = { role: "thing", name: me };
  const subtrees = (who: string) => [
    `doorward/${who}/events`, `doorward/${who}/snapshots`, `doorward/${who}/replies`, `doorward/${who}/commands`, `doorward/${who}/access`,
    `doorward/${who}/`, `doorward/${who}`, `doorward/${who}/a/b/c/d/e`, `doorward/${who}/+`, `doorward/${who}/#`,
    `$aws/things/${who}/shadow/update`, `$aws/things/${who}/shadow/get`, `$aws/things/${who}/shadow/#`, `$aws/things/${who}/shadow/name/x/update`,
    `$aws/things/${who}/shadow/name/doorward-acl/get`, `$aws/things/${who}/shadow/name/doorward-acl/update`, `$aws/things/${who}/shadow/name/doorward-acl/get/accepted`,
    `$aws/things/${who}/shadow/name/doorward-acl/#`,
    `$aws/things/${who}/jobs/notify-next`, `$aws/things/${who}/jobs/$next/get`, `$aws/things/${who}/jobs/+/update/accepted`, `$aws/things/${who}/jobs/#`,
    `$aws/things/${who}/streams/fw-1/get/json`, `$aws/things/${who}/streams/fw-1/data/json`, `$aws/things/${who}/streams/#`,
    `$aws/things/${who}/defender/metrics/json`, `$aws/things/${who}/tunnels/notify`, `$aws/things/${who}/#`, `$aws/things/${who}`,
  ];
  const corpus = [
    ...subtrees(me), ...subtrees("door-10"), ...subtrees("door-"), ...subtrees("+"),
    "doorward/+/events", "doorward/#", "#", "+/door-1/commands", "Doorward/door-1/events", "$aws/events/presence/connected/door-1",
    "doorward/door-1/com#", "doorward/door-1/a/b/c/d/e/f/g",
  ];
  let compared = 0;
  for (const topic of corpus) {
    for (const kind of ["publish", "subscribe"] as const) {
      const standin = (kind === "publish" ? mayPublish(thing, topic) : maySubscribe(thing, topic)).ok;
      const aws = policyAllows(policy, kind === "publish" ? "iot:Publish" : "iot:Subscribe", topic, { region: "eu-west-1", account: "123456789012", thingName: me, clientId: me, attached: true });
      if (standin) t.true(aws, `the stand-in lets ${me} ${kind} ${topic}, the policy does not`);
      if (wellFormed(kind, topic)) {
        t.is(standin, aws, `${kind} ${topic}: stand-in ${standin}, policy ${aws}`);
        compared++;
      }
    }
  }
  t.true(compared > 150);
  // The shadow in particular: only the access anchor's named shadow is in the policy, so in the stand-in.
  t.false(mayPublish(thing, `$aws/things/${me}/shadow/update`).ok);
  t.false(maySubscribe(thing, `$aws/things/${me}/shadow/update/delta`).ok);
  t.false(mayPublish(thing, `$aws/things/${me}/shadow/name/x/update`).ok);
  // What the firmware uses is in both.
  for (const topic of [`doorward/${me}/events`, `$aws/things/${me}/jobs/notify-next`, `$aws/things/${me}/streams/fw-1/get/json`, `$aws/things/${me}/shadow/name/doorward-acl/get`]) t.true(mayPublish(thing, topic).ok, topic);
  t.true(maySubscribe(thing, `$aws/things/${me}/shadow/name/doorward-acl/get/accepted`).ok);
});
