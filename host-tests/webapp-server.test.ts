/*
 * The web app's server: the page and its script over HTTPS on the WSS listener,
 * the one-time setup code, and invitation tokens for the owner's app only. The
 * hand-over itself is the simulator's (it needs the device); here it is recorded,
 * so the test sees exactly which requests reach it.
 */
import test from "ava";
import https from "node:https";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import nacl from "tweetnacl";
import { userToJson, type AccessUser } from "../modules/core/access";
import { ensureDevPki } from "../tools/pki";
import { startStandin } from "../tools/standin";
import { createUserKeys } from "../tools/user-app";
import { startWebApp } from "../tools/webapp";

const home = fs.mkdtempSync(path.join(os.tmpdir(), "dw-webapp-server-"));
const pki = await ensureDevPki(path.join(home, "pki"));
test.after.always(() => fs.rmSync(home, { recursive: true, force: true }));

function call(origin: string, method: string, url: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; type: string; text: string }> {
  return new Promise((resolve, reject) => {
    const req = https.request(`${origin}${url}`, { method, ca: pki.ca.certPem, headers: { "content-type": "application/json", ...headers } }, (res) => {
      let text = "";
      res.on("data", (b: Buffer) => (text += b.toString()));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, type: String(res.headers["content-type"]), text }));
    });
    req.on("error", reject);
    req.end(body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body));
  });
}

test("page, setup once, and invitations for the owner only", async (t) => {
  const standin = await startStandin({ pki, connectIntervalMs: 0 });
  const handed: AccessUser[] = [];
  const app = await startWebApp({
    standin, home, thing: "porch-1", deviceSignPublicKey: nacl.randomBytes(32), deviceBoxPublicKey: nacl.box.keyPair().publicKey,
    handOver: async (owner) => {
      handed.push(owner);
      return { ok: true, gen: 2, users: [owner] };
    },
  });
  t.teardown(async () => {
    await app.close();
    await standin.close();
  });
  const o = app.origin;
  const page = await call(o, "GET", "/");
  t.is(page.status, 200);
  t.regex(page.text, /<script src="app.js">/);
  const script = await call(o, "GET", "/app.js");
  t.regex(script.type, /text\/javascript/);
  t.true(script.text.length > 10_000);

  const code = new URL(app.setupUrl).hash.replace("#setup=", "");
  const owner = createUserKeys("owner", "owner").identity;
  t.is((await call(o, "POST", "/api/setup", { code: `${code}x`, owner: userToJson(owner) })).status, 403, "a wrong code");
  t.is((await call(o, "POST", "/api/setup", "not json")).status, 400);
  t.regex((await call(o, "POST", "/api/setup", { code, owner: { id: "owner" } })).text, /owner's public keys are malformed/);
  t.regex((await call(o, "POST", "/api/setup", { code, owner: userToJson(createUserKeys("bob", "viewer").identity) })).text, /must have the owner role/);
  t.is(handed.length, 0, "nothing reached the device yet");
  const ok = await call(o, "POST", "/api/setup", { code, owner: userToJson(owner) });
  t.is(ok.status, 200);
  const setup = JSON.parse(ok.text) as { token: string; gen: number; thing: string };
  t.like(setup, { gen: 2, thing: "porch-1" });
  t.deepEqual(app.tokens.check(setup.token), { ok: true, claims: { thing: "porch-1", user: "owner", owner: true } });
  t.is((await call(o, "POST", "/api/setup", { code, owner: userToJson(owner) })).status, 410, "the code works once");
  t.is(handed.length, 1);

  const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
  const invited = await call(o, "POST", "/api/invite", { user: "guest" }, bearer(setup.token));
  t.is(invited.status, 200);
  const guestToken = (JSON.parse(invited.text) as { token: string }).token;
  t.deepEqual(app.tokens.check(guestToken), { ok: true, claims: { thing: "porch-1", user: "guest", owner: false } });
  t.is((await call(o, "POST", "/api/invite", { user: "eve" }, bearer(guestToken))).status, 403, "a guest cannot invite");
  t.is((await call(o, "POST", "/api/invite", { user: "eve" })).status, 403, "no token");
  t.is((await call(o, "POST", "/api/invite", { user: "Not A User" }, bearer(setup.token))).status, 400);
  t.is((await call(o, "GET", "/nothing-here")).status, 404);
});
