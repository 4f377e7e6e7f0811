/*
 * The stand-in's WebSocket listener: a browser's way in. Real mqtt.js clients over
 * real WSS (dev server certificate) present an app token as the MQTT password, or a
 * client certificate; the stand-in applies the same client ID rule and the "app"
 * topic policy. Refusals are checked from both sides: the client never gets a
 * session (or its subscription is refused), and the stand-in recorded the reason.
 */
import test, { type ExecutionContext } from "ava";
import mqtt, { type IClientOptions, type MqttClient } from "mqtt";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import nacl from "tweetnacl";
import { ensureDevPki, issueThingCredentials } from "../tools/pki";
import { appClientIdBase, startStandin, type Standin } from "../tools/standin";
import { AppTokens, startWssListener, type WssListener } from "../tools/standin/wss";
import { mayPublish, maySubscribe, type Identity } from "../tools/standin/policy";

const dir = await mkdtemp(path.join(os.tmpdir(), "doorward-wss-"));
const pki = await ensureDevPki(dir);
const thing = await issueThingCredentials(dir, "porch-1");
const tokens = new AppTokens(nacl.randomBytes(32));
test.after.always(() => rm(dir, { recursive: true, force: true }));

async function stack(t: ExecutionContext): Promise<{ standin: Standin; wss: WssListener }> {
  const standin = await startStandin({ pki, connectIntervalMs: 0, subscribeDenial: "suback-failure" });
  const wss = await startWssListener({ standin, tokens });
  t.teardown(async () => {
    await wss.close();
    await standin.close();
  });
  return { standin, wss };
}

function attempt(t: ExecutionContext, url: string, options: IClientOptions): Promise<MqttClient | Error> {
  return new Promise((resolve) => {
    // MQTT 3.1.1 allows a password only with a username; what the username says is not used.
    const client = mqtt.connect(url, { ca: pki.ca.certPem, rejectUnauthorized: true, protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 4000, username: "doorward-app", ...options });
    t.teardown(() => void client.end(true));
    client.once("connect", () => resolve(client));
    client.once("error", (e) => resolve(e));
    client.once("close", () => resolve(new Error("closed before CONNACK")));
  });
}

/** The granted QoS, 128 for a refusal (mqtt.js reports that as an error carrying the SUBACK). */
function subscribe(client: MqttClient, filter: string): Promise<number> {
  return new Promise((resolve, reject) =>
    client.subscribe(filter, { qos: 1 }, (err, granted) => {
      if (err && (err as { packet?: { granted?: number[] } }).packet?.granted?.[0] === 128) resolve(128);
      else if (err) reject(err);
      else resolve(granted![0].qos);
    }));
}

const owner = { thing: "porch-1", user: "owner", owner: true };
const guest = { thing: "porch-1", user: "guest", owner: false };

test("tokens: a genuine token gives its claims back; a changed one does not verify", (t) => {
  const token = tokens.issue(guest);
  t.deepEqual(tokens.check(token), { ok: true, claims: guest });
  const [prefix, body, mac] = token.split(".");
  const forged = Buffer.from(JSON.stringify({ owner: true, thing: "porch-1", user: "guest" })).toString("base64url");
  t.like(tokens.check(`${prefix}.${forged}.${mac}`), { ok: false, detail: "token signature does not verify" });
  t.like(new AppTokens(nacl.randomBytes(32)).check(token), { ok: false });
  t.like(tokens.check(`${prefix}.${body}`), { ok: false, detail: "not an app token" });
});

test("an app token over WSS reaches its own thing only", async (t) => {
  const { standin, wss } = await stack(t);
  const app = await attempt(t, wss.url, { clientId: `${appClientIdBase("porch-1", "owner")}:tab1`, password: tokens.issue(owner) });
  if (app instanceof Error) return t.fail(app.message);
  t.is(await subscribe(app, "doorward/porch-1/events"), 1);
  t.is(await subscribe(app, "doorward/porch-1/invites/+"), 1);
  t.is(await subscribe(app, "$aws/events/presence/+/porch-1"), 1);
  t.is(await subscribe(app, "doorward/porch-2/events"), 128);
  t.is(await subscribe(app, "doorward/+/events"), 128);
  t.deepEqual(standin.clients().find((c) => c.clientId.startsWith("app:"))?.identity, { role: "app", name: "owner", thing: "porch-1", owner: true });
  const refused = standin.stats.refusals.filter((r) => r.stage === "subscribe").map((r) => r.topic);
  t.deepEqual(refused, ["doorward/porch-2/events", "doorward/+/events"]);
});

test("a guest's app may not read invitation answers, and may answer only as itself", async (t) => {
  const { standin, wss } = await stack(t);
  const app = await attempt(t, wss.url, { clientId: appClientIdBase("porch-1", "guest"), password: tokens.issue(guest) });
  if (app instanceof Error) return t.fail(app.message);
  t.is(await subscribe(app, "doorward/porch-1/invites/+"), 128);
  await new Promise<void>((resolve, reject) => app.publish("doorward/porch-1/invites/guest", "x", { qos: 1 }, (e) => (e ? reject(e) : resolve())));
  app.publish("doorward/porch-1/invites/owner", "x", { qos: 1 });
  const r = await standin.waitForRefusal((x) => x.stage === "publish");
  t.is(r.topic, "doorward/porch-1/invites/owner");
  t.is(r.reason, "topic-not-allowed");
});

test("no token, a forged token, or another user's client ID: no session, and the reason recorded", async (t) => {
  const { standin, wss } = await stack(t);
  const none = await attempt(t, wss.url, { clientId: appClientIdBase("porch-1", "guest") });
  t.true(none instanceof Error);
  t.is((await standin.waitForRefusal((r) => r.reason === "token-missing")).stage, "connect");
  const forged = await attempt(t, wss.url, { clientId: appClientIdBase("porch-1", "guest"), password: `${tokens.issue(guest)}x` });
  t.true(forged instanceof Error);
  t.is((await standin.waitForRefusal((r) => r.reason === "token-invalid")).detail, "token signature does not verify");
  const other = await attempt(t, wss.url, { clientId: appClientIdBase("porch-1", "owner"), password: tokens.issue(guest) });
  t.true(other instanceof Error);
  t.is((await standin.waitForRefusal((r) => r.reason === "client-id-mismatch")).identity?.name, "guest");
  t.is(standin.clients().length, 0);
});

test("a client certificate over WSS is the same identity as on the MQTT port", async (t) => {
  const { standin, wss } = await stack(t);
  const dev = await attempt(t, wss.url, { clientId: "porch-1", cert: thing.certPem, key: thing.keyPem, username: undefined });
  if (dev instanceof Error) return t.fail(dev.message);
  t.deepEqual(standin.clients(), [{ clientId: "porch-1", identity: { role: "thing", name: "porch-1" } }]);
  t.is(await subscribe(dev, "doorward/porch-1/commands"), 1);
  t.is(await subscribe(dev, "doorward/porch-2/commands"), 128);
});

test("the app hears the device's presence as AWS lifecycle events", async (t) => {
  const { standin, wss } = await stack(t);
  const app = await attempt(t, wss.url, { clientId: appClientIdBase("porch-1", "owner"), password: tokens.issue(owner) });
  if (app instanceof Error) return t.fail(app.message);
  await subscribe(app, "$aws/events/presence/+/porch-1");
  const heard: Array<{ topic: string; eventType: string; clientId: string }> = [];
  app.on("message", (topic, payload) => heard.push({ topic, ...JSON.parse(payload.toString()) }));
  const device = await attempt(t, standin.url, standin.clientOptions(thing));
  if (device instanceof Error) return t.fail(device.message);
  await new Promise((r) => device.end(false, {}, () => r(undefined)));
  const deadline = Date.now() + 3000;
  while (heard.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.deepEqual(heard.map((h) => [h.topic, h.eventType, h.clientId]), [
    ["$aws/events/presence/connected/porch-1", "connected", "porch-1"],
    ["$aws/events/presence/disconnected/porch-1", "disconnected", "porch-1"],
  ]);
});

test("app policy, as pure rules", (t) => {
  const app = (owner: boolean): Identity => ({ role: "app", name: "guest", thing: "porch-1", owner });
  t.true(mayPublish(app(false), "doorward/porch-1/commands").ok);
  t.false(mayPublish(app(false), "doorward/porch-1/events").ok);
  t.false(mayPublish(app(false), "doorward/porch-2/commands").ok);
  t.true(mayPublish(app(false), "doorward/porch-1/invites/guest").ok);
  t.false(mayPublish(app(false), "doorward/porch-1/invites/bob").ok);
  for (const kind of ["events", "snapshots", "replies"]) t.true(maySubscribe(app(false), `doorward/porch-1/${kind}`).ok);
  t.false(maySubscribe(app(false), "doorward/porch-1/commands").ok);
  t.false(maySubscribe(app(false), "doorward/porch-1/#").ok);
  t.false(maySubscribe(app(false), "doorward/porch-1/invites/+").ok);
  t.true(maySubscribe(app(true), "doorward/porch-1/invites/+").ok);
  t.false(maySubscribe(app(true), "$aws/events/presence/+/porch-2").ok);
  t.false(maySubscribe(app(true), "$aws/events/presence/#").ok);
  t.false(maySubscribe({ role: "app", name: "guest" }, "doorward/porch-1/events").ok);
});
