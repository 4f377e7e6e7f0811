/*
 * docs/protocol.md against the wire: a full run of the simulator (rings,
 * snapshots, a user added and revoked, a refused phone-home) through a
 * stand-in that records every message; each message's members are checked
 * against the doc's member tables both ways, so the doc cannot drift. The
 * byte encodings the doc states (signature prefix, chunk frame, digest scope,
 * wrapped keys, key derivations) are followed from the doc's words to a
 * decrypted JPEG.
 */
import test from "ava";
import { execFile } from "node:child_process";
import { createDecipheriv, createHash } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import nacl from "tweetnacl";
import { ensureDevPki } from "../tools/pki";
import { startStandin } from "../tools/standin";
import { canonicalBytes, type Json } from "../modules/core/canonical";
import { EVENT_DOMAIN } from "../modules/core/events";
import { fromBase64Url, fromHex } from "../modules/core/bytes";
import { createUserKeys, OwnerApp, UserApp } from "../tools/owner-app";
import { anchorTopics } from "../modules/core/acl-anchor";
import { topicsFor } from "../modules/core/topics";
import { PRESENCE_PREFIX } from "../tools/standin/app-names";
import { invitesTopic } from "../webapp/invitation";

const DOC = fs.readFileSync(path.join(import.meta.dirname, "..", "docs", "protocol.md"), "utf8");

/** Every `<!-- members: KEY -->` table: KEY → the member names in its first column. */
function memberTables(markdown: string): Map<string, string[]> {
  const tables = new Map<string, string[]>();
  const lines = markdown.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const m = /^<!-- members: (\S+) -->$/.exec(lines[i]);
    if (!m) continue;
    const names: string[] = [];
    for (let j = i + 3; j < lines.length && lines[j].startsWith("|"); j++) {
      const cell = /^\| `([^`]+)` \|/.exec(lines[j]);
      if (!cell) throw new Error(`protocol.md: table ${m[1]} row ${j + 1} does not start with a \`member\``);
      names.push(cell[1]);
    }
    if (tables.has(m[1])) throw new Error(`protocol.md: two tables for ${m[1]}`);
    tables.set(m[1], names);
  }
  return tables;
}

type Doc = Record<string, Json>;
const isObject = (v: unknown): v is Doc => typeof v === "object" && v !== null && !Array.isArray(v);

interface Capture {
  topic: string;
  clientId: string;
  payload: Buffer;
}

const captured = (async () => {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), "dw-proto-"));
  const pki = await ensureDevPki(path.join(home, "pki"));
  const standin = await startStandin({ pki, connectIntervalMs: 0 });
  const messages: Capture[] = [];
  standin.on("message", (m: { topic: string; clientId: string; payload: Buffer }) => messages.push({ topic: m.topic, clientId: m.clientId, payload: Buffer.from(m.payload) }));
  // What the broker publishes as AWS (lifecycle events, shadow answers) goes through publish(), not a client.
  const asAws = standin.publish.bind(standin);
  standin.publish = (topic, payload, options) => {
    messages.push({ topic, clientId: "$aws", payload: Buffer.from(payload) });
    return asAws(topic, payload, options);
  };
  const args = ["--home", home, "--rings", "1", "--exit", "--quiet", "--demo-access", "--demo-egress",
    "--broker", `127.0.0.1:${standin.port}`, "--broker-servername", "localhost", "--broker-ca", pki.ca.certPath, "--broker-cert", pki.service.certPath, "--broker-key", pki.service.keyPath];
  const out = await new Promise<string>((resolve) => {
    execFile(process.execPath, ["--import=tsx", "tools/simulator.ts", ...args], { timeout: 90_000, env: { ...process.env, DOORWARD_BUTTON_PORT: "0" } }, (_e, stdout, stderr) => resolve(stdout + stderr));
  });
  await standin.close();
  return { home, out, messages };
})();

const json = (c: Capture) => JSON.parse(c.payload.toString("utf8")) as Doc;
const on = (kind: string) => async () => (await captured).messages.filter((m) => m.topic.endsWith(`/${kind}`));

/** Checks one table both ways: what was seen is documented, what is documented was seen (less `unseen`). */
function both(t: import("ava").ExecutionContext, key: string, seen: Iterable<string[]>, unseen: string[] = []) {
  const tables = memberTables(DOC);
  const documented = tables.get(key);
  if (!documented) return t.fail(`protocol.md has no members table for ${key}`);
  const all = new Set<string>();
  for (const members of seen) {
    for (const m of members) {
      all.add(m);
      t.true(documented.includes(m), `${key}: member "${m}" is on the wire but not in protocol.md`);
    }
  }
  t.true(all.size > 0, `${key}: nothing captured`);
  for (const m of documented) if (!unseen.includes(m)) t.true(all.has(m), `${key}: protocol.md documents "${m}", which no captured message carried`);
}

test("the run behind the capture verified everything", async (t) => {
  const { out } = await captured;
  t.regex(out, /3 of 3 rings verified end to end, 0 rejected, 4 of 4 snapshots decrypted/, out);
});

test("events: the header, each type's members, the envelope", async (t) => {
  const envelopes = (await on("events")()).map(json);
  const tables = memberTables(DOC);
  const header = tables.get("event")!;
  both(t, "envelope", envelopes.map((e) => Object.keys(e)));
  const events = envelopes.map((e) => e.event as Doc);
  both(t, "event", events.map((e) => Object.keys(e).filter((k) => header.includes(k))));
  const extras = (e: Doc) => Object.keys(e).filter((k) => !header.includes(k));
  const ofType = (type: string, report?: string) => events.filter((e) => e.type === type && (report === undefined || e.report === report));
  for (const e of events) for (const h of header) t.true(h in e, `every event carries ${h}`);
  t.true(ofType("ring").length >= 3);
  for (const ring of ofType("ring")) t.deepEqual(extras(ring), [], "a ring has exactly the header");
  both(t, "event:snapshot", ofType("snapshot").map(extras));
  both(t, "wrap", ofType("snapshot").map((e) => Object.keys(e.wrap as Doc)));
  both(t, "wrap.keys[]", ofType("snapshot").flatMap((e) => ((e.wrap as Doc).keys as Doc[]).map((k) => Object.keys(k))));
  both(t, "event:status", ofType("status").map(extras));
  both(t, "event:audit/egress-refused", ofType("audit", "egress-refused").map(extras));
  both(t, "event:audit/egress-refused.refused[]", ofType("audit", "egress-refused").flatMap((e) => (e.refused as Doc[]).map((r) => Object.keys(r))));
  // Every event type and report on the wire has a table; the one table this run cannot fill is the overflow report.
  for (const e of events) {
    if (e.type === "ring") continue;
    const key = e.type === "audit" ? `event:audit/${String(e.report)}` : `event:${String(e.type)}`;
    t.true(tables.has(key), `protocol.md has a table for ${key}`);
  }
  t.deepEqual([...tables.keys()].filter((k) => k.startsWith("event:") && !k.includes(".") && !events.some((e) => (e.type === "audit" ? `event:audit/${String(e.report)}` : `event:${String(e.type)}`) === k)), ["event:audit/outbox-overflow"]);
});

test("replies: every member, accepted with result and refused with reason; the seal", async (t) => {
  const replies = (await on("replies")()).map(json);
  t.true(replies.some((r) => r.ok === true) && replies.some((r) => r.ok === false));
  // Not in this run: `next` comes only with a replay refusal, `anchor` only from a device whose flash went back.
  both(t, "reply", replies.map((r) => Object.keys(r)), ["next", "anchor"]);
  both(t, "reply.seal", replies.filter((r) => isObject(r.seal)).map((r) => Object.keys(r.seal as Doc)));
  both(t, "result:access-update", replies.filter((r) => r.op === "access-update").map((r) => Object.keys(r.result as Doc)));
  both(t, "result:revoke", replies.filter((r) => r.op === "revoke").map((r) => Object.keys(r.result as Doc)));
  t.true(DOC.includes("Refused as `replay` only"), "next is documented as what only a replay refusal carries");
});

test("commands: the envelope on the wire and the sealed body an app makes", async (t) => {
  const commands = (await on("commands")()).map(json);
  both(t, "command", commands.map((c) => Object.keys(c)));
  const owner = createUserKeys("owner", "owner");
  const device = nacl.box.keyPair();
  const app = new OwnerApp({ keys: owner, thing: "porch-1", deviceBoxPublicKey: device.publicKey });
  const guest = createUserKeys("guest", "viewer");
  const viewer = new UserApp({ keys: guest, thing: "porch-1", deviceBoxPublicKey: device.publicKey });
  const bodies = [app.addUser(guest.identity), app.revoke("guest"), viewer.command("snapshot"), viewer.command("stream-start", { seconds: 30 })].map((c) => Object.keys(c.body));
  both(t, "command-body", bodies);
});

test("the signature prefix is 17 bytes and a line feed, as the doc says, and signs what the device sent", async (t) => {
  t.is(Buffer.byteLength("doorward/event/v1"), 17);
  t.is(EVENT_DOMAIN, "doorward/event/v1\n");
  t.true(DOC.includes("the 17 ASCII bytes `doorward/event/v1`, then a\n   line feed (0x0A), 18 bytes of prefix in all"));
  t.false(DOC.includes("18 ASCII bytes"));
  const { out } = await captured;
  const key = fromHex(/device key ([0-9a-f]{64})/.exec(out)![1]);
  for (const c of await on("events")()) {
    const env = json(c);
    const m = Buffer.concat([Buffer.from("doorward/event/v1", "ascii"), Buffer.of(0x0a), Buffer.from(canonicalBytes(env.event))]);
    t.true(nacl.sign.detached.verify(m, fromBase64Url(env.sig as string), key));
  }
});

test("registration shows both keys; the owner key file has the documented members; the doc's derivations open a snapshot", async (t) => {
  const { out, home } = await captured;
  const boxHex = /device key [0-9a-f]{64} box key ([0-9a-f]{64})/.exec(out)?.[1];
  t.truthy(boxHex, "the simulator shows the device's X25519 key at registration");
  const ownerFile = JSON.parse(fs.readFileSync(path.join(home, "owner", "owner.secret.json"), "utf8")) as Record<string, string>;
  both(t, "owner-key-file", [Object.keys(ownerFile)]);

  // §8: the footage key from the doc's formula, with nothing but tweetnacl and node:crypto.
  const shared = nacl.box.before(fromHex(boxHex!), fromBase64Url(ownerFile.boxSecret));
  const footage = nacl.hash(Buffer.concat([Buffer.from("doorward/footage/v1\n"), shared])).subarray(0, 32);
  const chunks = await on("snapshots")();
  const manifests = (await on("events")()).map(json).map((e) => e.event as Doc).filter((e) => e.type === "snapshot");
  for (const manifest of manifests) {
    const id = Buffer.from(fromBase64Url(manifest.id as string));
    const mine = chunks.filter((c) => c.payload.subarray(4, 20).equals(id)).map((c) => c.payload);
    // §7: the frame.
    const byIndex = new Map<number, Buffer>();
    for (const p of mine) {
      t.is(p.subarray(0, 4).toString("latin1"), "DWS1");
      t.is(p.readUInt16BE(22), manifest.chunks as number);
      byIndex.set(p.readUInt16BE(20), p);
    }
    t.is(byIndex.size, manifest.chunks as number);
    const ordered = [...byIndex.keys()].sort((a, b) => a - b).map((i) => byIndex.get(i)!);
    // §3.2: the digest covers the payloads as published, in index order.
    t.deepEqual(new Uint8Array(createHash("sha256").update(Buffer.concat(ordered)).digest()), fromBase64Url(manifest.digest as string));
    // §8: the owner's wrapped key: 64 bytes, opening to the content key followed by the id.
    const entry = ((manifest.wrap as Doc).keys as Doc[]).find((k) => k.user === "owner")!;
    const sealed = fromBase64Url(entry.k as string);
    t.is(sealed.length, 64);
    const opened = nacl.secretbox.open(sealed, fromBase64Url(entry.n as string), footage);
    t.truthy(opened, "the doc's footage key opens the owner's wrapped key");
    t.deepEqual(Buffer.from(opened!.subarray(32)), id);
    // §7: nonce id[0..8) ‖ u32be(index), AAD the header.
    const jpeg = Buffer.concat(ordered.map((p, index) => {
      const nonce = Buffer.concat([id.subarray(0, 8), Buffer.from([index >>> 24, (index >>> 16) & 255, (index >>> 8) & 255, index & 255])]);
      const d = createDecipheriv("aes-256-gcm", opened!.subarray(0, 32), nonce);
      d.setAAD(p.subarray(0, 24));
      d.setAuthTag(p.subarray(p.length - 16));
      const plain = Buffer.concat([d.update(p.subarray(24, p.length - 16)), d.final()]);
      t.is(plain.length, Math.min(manifest.chunkBytes as number, (manifest.size as number) - index * (manifest.chunkBytes as number)));
      return plain;
    }));
    t.is(jpeg.length, manifest.size as number);
    t.deepEqual([...jpeg.subarray(0, 2)], [0xff, 0xd8], "a JPEG");
  }
  t.true(manifests.length >= 4);
});

/** The rows of §1's topic table: the topic, with `<thing>`/`<user>` placeholders and a trailing `/...`. */
function topicRows(markdown: string): string[] {
  const lines = markdown.split("\n");
  const start = lines.indexOf("| Topic | Direction | Payload |");
  if (start < 0) throw new Error("protocol.md has no topic table");
  const rows: string[] = [];
  for (let j = start + 2; j < lines.length && lines[j].startsWith("|"); j++) {
    const cell = /^\| `([^`]+)` \| [^|]+ \|/.exec(lines[j]);
    if (!cell) throw new Error(`protocol.md: topic table row ${j + 1} does not start with a \`topic\` and a direction`);
    rows.push(cell[1]);
  }
  return rows;
}

const topicPattern = (row: string) =>
  new RegExp(`^${row.replace(/[$.]/g, "\\$&").replace("<thing>", "[A-Za-z0-9:_-]+").replace("<user>", "[A-Za-z0-9_-]+").replace(/\/\\\.\\\.\\\.$/, "/.+")}$`);

test("topics: every topic on the wire and every topic the code names is in the doc's topic table, and every row is used", async (t) => {
  const { messages } = await captured;
  const rows = topicRows(DOC);
  const patterns = rows.map((r) => ({ row: r, re: topicPattern(r) }));
  // Names the code makes that this run does not carry: the web app's invitation answers, and both lifecycle events.
  const thing = "porch-1";
  const named = [
    ...Object.values(topicsFor(thing)), ...Object.values(anchorTopics(thing)),
    invitesTopic(thing, "guest"), `${PRESENCE_PREFIX}/connected/${thing}`, `${PRESENCE_PREFIX}/disconnected/${thing}`,
  ];
  const topics = new Set([...messages.map((m) => m.topic), ...named]);
  for (const topic of topics) t.true(patterns.some((p) => p.re.test(topic)), `${topic} is documented`);
  for (const p of patterns) {
    if (p.row.startsWith("$aws/things/<thing>/jobs/") || p.row.startsWith("$aws/things/<thing>/streams/")) continue; // only in an update run (updates.md)
    t.true([...topics].some((topic) => p.re.test(topic)), `protocol.md lists ${p.row}, which neither the wire nor the code uses`);
  }
  t.true(messages.some((m) => m.topic.startsWith("$aws/things/")));
  t.true(messages.some((m) => m.clientId === "$aws" && m.topic.startsWith(`${PRESENCE_PREFIX}/connected/`)), "the stand-in's lifecycle events were captured");
});

test("the access anchor's shadow document: what the device reports and what the shadow answers carry the doc's members", async (t) => {
  const { messages } = await captured;
  const acl = (c: Capture) => ((json(c).state as Doc | undefined)?.reported as Doc | undefined)?.acl as Doc | undefined;
  const updates = messages.filter((m) => m.clientId !== "$aws" && m.topic.endsWith("/shadow/name/doorward-acl/update"));
  t.true(updates.length > 0, "the device reported its anchor");
  both(t, "anchor.acl", updates.map((u) => Object.keys(acl(u) ?? {})));
  const answers = messages.filter((m) => m.clientId === "$aws" && /\/shadow\/name\/doorward-acl\/(get|update)\/accepted$/.test(m.topic)).map(acl).filter((a) => a !== undefined);
  both(t, "anchor.acl", answers.map((a) => Object.keys(a!)));
  t.true(DOC.includes('`{"state":{"reported":{"acl":{"gen":…,"resets":…,"tag":…}}}}`'));
});
