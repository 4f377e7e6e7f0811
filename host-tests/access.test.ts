/*
 * The access list: owner-signed updates, and every way a broken or forged update
 * must leave the stored list exactly as it was. Also re-keying, ownership
 * transfer, size limits, corrupt storage and a power cut between the two writes.
 */
import test from "ava";
import nacl from "tweetnacl";
import { AccessTestbed, createUserKeys, type AppKeys } from "../tools/owner-app";
import {
  AccessList,
  MAX_USERS,
  MAX_TOMBSTONES,
  SECRET_KEYS,
  SECRET_LIST,
  listSigningMessage,
  signedListToJson,
  userToJson,
  type AccessUser,
  type ReasonCode,
  type SignedAccessList,
} from "../modules/core/access";
import { MAX_COMMAND_BYTES, REPLAY_KEY } from "../modules/core/commands";
import { Vault } from "../modules/core/vault";
import { MemoryStore } from "../modules/host/file-store";
import { canonicalBytes } from "../modules/core/canonical";
import { toBase64Url } from "../modules/core/bytes";
import type { Json } from "../modules/core/canonical";

function bedWithResident() {
  const tb = new AccessTestbed();
  const resident = tb.addUser("resident-1", "resident");
  resident.gen = tb.access.generation;
  return { tb, resident };
}

/** The stored list and keys, byte for byte, plus what the device believes in RAM. */
function listState(tb: AccessTestbed): string {
  const hex = (n: string) => Buffer.from(tb.secrets.get(n) ?? new Uint8Array()).toString("hex");
  return JSON.stringify({ list: hex(SECRET_LIST), keys: hex(SECRET_KEYS), gen: tb.access.generation, users: tb.access.list.users().map((u) => `${u.id}:${u.role}`) });
}

/** An access-update command from the owner carrying an arbitrary list document. */
function sendList(tb: AccessTestbed, listDoc: Json) {
  return tb.send(tb.owner, tb.owner.command("access-update", { list: listDoc }));
}

test("the owner adds a user with a signed list; the device derives their keys and the list survives a reboot", (t) => {
  const tb = new AccessTestbed();
  t.is(tb.access.generation, 1);
  const alice = tb.addUser("alice", "resident");
  t.is(tb.access.generation, 2);
  t.is(tb.access.list.signedGeneration, 2);
  t.deepEqual(tb.owner.users.map((u) => u.id), ["owner", "alice"], "owner app applied the confirmed change");
  alice.gen = 2;
  t.true(tb.send(alice, alice.command("chime-test")).ok);
  tb.boot();
  t.deepEqual(tb.access.list.users().map((u) => u.id), ["owner", "alice"]);
  t.true(tb.send(alice, alice.command("chime-test")).ok);
});

test("forged or broken list updates are refused and the stored list is unchanged", (t) => {
  const { tb, resident } = bedWithResident();
  const mallory = createUserKeys("mallory", "viewer");
  const gen = tb.access.generation;
  const users = [...tb.owner.users, mallory.identity];
  const good = tb.owner.signList(users, gen + 1);
  const goodJson = signedListToJson(good) as { list: Record<string, Json>; sig: string };
  const before = listState(tb);

  const notOwner = createUserKeys("owner", "owner"); // the owner's id, someone else's key
  const bySomeoneElse: SignedAccessList = { list: good.list, signature: nacl.sign.detached(listSigningMessage(good.list), notOwner.signSecretKey) };
  const flipped = Uint8Array.from(good.signature);
  flipped[10] ^= 0x40;
  const cases: Array<[string, Json, ReasonCode]> = [
    ["signed by another key", signedListToJson(bySomeoneElse), "bad-signature"],
    ["signature bit flipped", { ...goodJson, sig: toBase64Url(flipped) }, "bad-signature"],
    ["user added after signing", { ...goodJson, list: { ...goodJson.list, users: [...(goodJson.list.users as Json[]), userToJson(createUserKeys("eve", "resident").identity)] } }, "bad-signature"],
    ["role raised after signing", { ...goodJson, list: { ...goodJson.list, users: (goodJson.list.users as Array<Record<string, Json>>).map((u) => (u.id === "mallory" ? { ...u, role: "resident" } : u)) } }, "bad-signature"],
    ["key swapped after signing", { ...goodJson, list: { ...goodJson.list, users: (goodJson.list.users as Array<Record<string, Json>>).map((u) => (u.id === "resident-1" ? userToJson({ ...createUserKeys("resident-1", "resident").identity }) : u)) } }, "bad-signature"],
    ["generation raised after signing", { ...goodJson, list: { ...goodJson.list, gen: gen + 5 } }, "bad-signature"],
    ["stale generation, properly signed", signedListToJson(tb.owner.signList(users, gen)), "stale-generation"],
    ["another thing's list", signedListToJson({ ...tb.owner.signList(users, gen + 1), list: { ...good.list, thing: "porch-2" } }), "wrong-thing"],
    ["two owners", signedListToJson(tb.owner.signList([...users, createUserKeys("owner2", "owner").identity], gen + 1)), "malformed"],
    ["no owner", signedListToJson(tb.owner.signList([mallory.identity], gen + 1)), "malformed"],
    ["duplicate id", signedListToJson(tb.owner.signList([...users, { ...mallory.identity, role: "resident" }], gen + 1)), "malformed"],
    ["too many users", signedListToJson(tb.owner.signList([...users, ...Array.from({ length: MAX_USERS }, (_, i) => createUserKeys(`u${i}`, "viewer").identity)], gen + 1)), "malformed"],
    ["short key", { ...goodJson, list: { ...goodJson.list, users: [{ box: "AAAA", id: "x", role: "viewer", sign: "AAAA" }] } }, "malformed"],
    ["truncated signature", { ...goodJson, sig: goodJson.sig.slice(0, 80) }, "malformed"],
    ["not a list", [1, 2, 3], "malformed"],
    ["extra member", { ...goodJson, note: "hi" }, "malformed"],
  ];
  for (const [name, doc, expected] of cases) {
    const r = sendList(tb, doc);
    t.false(r.ok, name);
    t.is(r.reason, expected, name);
    t.is(listState(tb), before, `${name}: stored list changed`);
  }
  // Not the owner's MAC: a resident relaying the owner's genuine signed list is refused before any signature check.
  t.is(tb.send(resident, resident.command("access-update", { list: goodJson as unknown as Json })).reason, "forbidden");
  // A stranger (or the cloud) cannot MAC as the owner at all.
  const fake = createUserKeys("owner", "owner");
  const fakeApp = tb.app(fake);
  t.is(tb.send(fakeApp, fakeApp.command("access-update", { list: goodJson as unknown as Json })).reason, "bad-mac");
  t.is(listState(tb), before);
  t.is(tb.access.list.user("mallory"), undefined);
  // Control: the genuine update, untouched, is accepted, so the refusals above were about the damage.
  t.true(sendList(tb, goodJson as unknown as Json).ok);
  t.truthy(tb.access.list.user("mallory"));
  // And replaying that accepted update later is refused by its generation (and its counter).
  const again = sendList(tb, goodJson as unknown as Json);
  t.is(again.reason, "stale-generation");
});

test("a storage failure during a grant leaves the list as it was, in RAM and in the store", (t) => {
  const { tb } = bedWithResident();
  const before = listState(tb);
  const set = tb.secrets.set.bind(tb.secrets);
  tb.secrets.set = (name, value) => {
    if (name === SECRET_LIST) throw new Error("flash full");
    set(name, value);
  };
  const r = tb.send(tb.owner, tb.owner.addUser(createUserKeys("bob", "viewer").identity));
  t.is(r.reason, "storage-failed");
  tb.secrets.set = set;
  t.is(tb.access.list.user("bob"), undefined);
  const after = JSON.parse(listState(tb)) as { list: string; users: string[]; gen: number };
  const was = JSON.parse(before) as typeof after;
  t.is(after.list, was.list, "the list entry is untouched");
  t.deepEqual(after.users, was.users);
  t.is(after.gen, was.gen);
  // A power cut at that moment: the reboot sees the old list, with working keys.
  tb.boot();
  t.deepEqual(tb.access.list.users().map((u) => u.id), ["owner", "resident-1"]);
  tb.owner.gen = tb.access.generation;
  t.true(tb.send(tb.owner, tb.owner.command("snapshot")).ok);
});

test("re-keying a user voids their old key; ownership can move only by the current owner's signature", (t) => {
  const { tb, resident } = bedWithResident();
  const newKeys = createUserKeys("resident-1", "resident");
  const r = tb.send(tb.owner, tb.owner.updateList([tb.owner.users[0], newKeys.identity]));
  t.true(r.ok, r.detail);
  t.deepEqual(r.action?.type === "access-changed" && r.action.change.rekeyed, ["resident-1"]);
  resident.gen = tb.access.generation;
  t.is(tb.send(resident, resident.command("snapshot")).reason, "bad-mac", "the old key no longer authenticates");
  const renewed = tb.app(newKeys);
  t.true(tb.send(renewed, renewed.command("snapshot")).ok);

  // Transfer: the current owner signs a list whose owner is someone new.
  const heir = createUserKeys("heir", "owner");
  const transfer = tb.send(tb.owner, tb.owner.updateList([heir.identity, newKeys.identity]));
  t.true(transfer.ok, transfer.detail);
  t.is(tb.access.list.owner.id, "heir");
  t.is(tb.send(tb.owner, tb.owner.command("snapshot")).reason, "revoked", "the old owner is out");
  const heirApp = tb.app(heir);
  t.true(tb.send(heirApp, heirApp.command("revoke", { user: "resident-1" })).ok);
});

test("a full list fits one flash value, and an update carrying it fits one command", (t) => {
  const tb = new AccessTestbed({ ownerId: "o".repeat(24) });
  const users: AppKeys[] = Array.from({ length: MAX_USERS - 1 }, (_, i) => createUserKeys(`${String(i).padStart(2, "0")}${"u".repeat(22)}`, "resident"));
  const made = tb.owner.updateList([tb.owner.users[0], ...users.map((u) => u.identity)]);
  t.true(made.payload.length <= MAX_COMMAND_BYTES, `update is ${made.payload.length} bytes`);
  t.true(tb.send(tb.owner, made).ok);
  // Fill the tombstones too: revoke everyone, add a fresh full set, revoke again.
  tb.send(tb.owner, tb.owner.revokeAll());
  const more = Array.from({ length: MAX_USERS - 1 }, (_, i) => createUserKeys(`${String(i).padStart(2, "0")}${"v".repeat(22)}`, "viewer"));
  t.true(tb.send(tb.owner, tb.owner.updateList([tb.owner.users[0], ...more.map((u) => u.identity)])).ok);
  const list = tb.secrets.get(SECRET_LIST)!;
  const keys = tb.secrets.get(SECRET_KEYS)!;
  t.log(`stored list ${list.length} B, keys ${keys.length} B, full update command ${made.payload.length} B (limits 4000 / 4000 / ${MAX_COMMAND_BYTES})`);
  t.true(list.length <= 3500, "room left for the vault's own overhead");
  t.true(keys.length <= 3500);
  t.is((JSON.parse(Buffer.from(list).toString()) as { revoked: string[] }).revoked.length, Math.min(MAX_USERS - 1, MAX_TOMBSTONES));
});

test("a corrupt stored list refuses to load; missing cached keys are recomputed", (t) => {
  const tb = new AccessTestbed();
  tb.addUser("alice", "viewer");
  const good = tb.secrets.get(SECRET_LIST)!;
  const bad = Uint8Array.from(good);
  bad[bad.length - 3] ^= 1;
  tb.secrets.set(SECRET_LIST, bad);
  t.throws(() => tb.boot(), { message: /stored list is corrupt/ });
  tb.secrets.set(SECRET_LIST, canonicalBytes({ gen: 2, revoked: [], signedGen: 2, thing: "porch-2", users: [], v: 1 }));
  t.throws(() => tb.boot(), { message: /corrupt/ });
  tb.secrets.set(SECRET_LIST, good);
  tb.secrets.delete(SECRET_KEYS);
  const access = tb.boot();
  t.truthy(access.list.keysFor("alice"));
  t.truthy(tb.secrets.get(SECRET_KEYS), "recomputed keys were stored again");
  tb.owner.gen = access.generation;
  t.true(tb.send(tb.owner, tb.owner.command("snapshot")).ok);
});

test("AccessList refuses bad construction input", (t) => {
  const tb = new AccessTestbed();
  const base = { thing: "porch-9", secrets: tb.secrets, deviceBoxSecretKey: tb.device.secretKey, owner: tb.ownerKeys.identity };
  t.throws(() => new AccessList({ ...base, thing: "bad thing" }));
  t.throws(() => new AccessList({ ...base, deviceBoxSecretKey: new Uint8Array(31) }));
  const fresh = new AccessTestbed();
  t.throws(() => new AccessList({ ...base, secrets: fresh.secrets, owner: { ...fresh.ownerKeys.identity, id: "Bad Id" } as AccessUser }));
  t.notThrows(() => new AccessList({ ...base, secrets: new AccessTestbed({ thing: "porch-9" }).secrets }));
});

test("over the real vault and one flash store: list and keys encrypted at rest, intact after a reopen", (t) => {
  const flash = new MemoryStore();
  const storageKey = new Uint8Array(32).fill(0x42);
  const open = () => Vault.open({ store: flash, keys: { storageKey: () => storageKey.slice() }, random: { fill: (b) => b.set(nacl.randomBytes(b.length)) } });
  const tb = new AccessTestbed({ secrets: open(), store: flash });
  const alice = tb.addUser("alice", "resident");
  alice.gen = tb.access.generation;
  t.true(tb.send(alice, alice.command("snapshot")).ok);
  // Nothing in flash shows the list in clear; the replay marks stay in RAM, and the time floor holds no id.
  for (const k of flash.keys()) t.false(Buffer.from(flash.read(k)!).toString("latin1").includes("alice"), `${k} holds "alice" in clear`);
  t.false(Buffer.from(flash.read(REPLAY_KEY) ?? new Uint8Array(0)).toString("latin1").includes("owner"));
  tb.secrets = open();
  const again = tb.boot();
  t.deepEqual(again.list.users().map((u) => u.id), ["owner", "alice"]);
  t.true(tb.send(alice, alice.command("chime-test")).ok);
  t.true(tb.send(tb.owner, tb.owner.revoke("alice")).ok);
  tb.secrets = open();
  tb.boot();
  t.is(tb.send(alice, alice.command("snapshot")).reason, "revoked");
});

test("a command that re-keys its own sender gets a clear reply, not one sealed with the wiped old key", (t) => {
  const tb = new AccessTestbed();
  const rekeyedOwner = createUserKeys("owner", "owner");
  const r = tb.send(tb.owner, tb.owner.updateList([rekeyedOwner.identity]));
  t.true(r.ok, r.detail);
  t.deepEqual(r.action?.type === "access-changed" && r.action.change.rekeyed, ["owner"]);
  const doc = JSON.parse(new TextDecoder().decode(r.reply)) as { seal?: { box: string; n: string } };
  if (doc.seal) {
    const zero = new Uint8Array(32);
    const opened = nacl.secretbox.open(Buffer.from(doc.seal.box, "base64url"), Buffer.from(doc.seal.n, "base64url"), zero);
    t.is(opened, null, "the reply must not be sealed under an all-zero key");
  }
  t.is(doc.seal, undefined, "the sender's old reply key is gone with the change: the reply is in the clear");
  t.false(r.read.authenticated);
  t.true(r.read.reply.ok);
});
