/*
 * Old flash cannot come back as current: records written back from an earlier
 * dump (a revoked user's list and keys, an old Wi-Fi password, a deleted
 * secret) are refused, because the vault's sealed index names each secret's
 * live write. A rollback of the whole vault at once is the limit this cannot
 * see (docs/secrets.md).
 */
import test from "ava";
import nacl from "tweetnacl";
import { Vault, VaultError, type KeyProvider } from "../modules/core/vault";
import { MemoryStore } from "../modules/host/file-store";
import { utf8Decode, utf8Encode } from "../modules/core/bytes";
import { AccessTestbed } from "../tools/owner-app";
import { SECRET_KEYS, SECRET_LIST } from "../modules/core/access";

const KEY = new Uint8Array(32).fill(0x42);
const keys: KeyProvider = { storageKey: () => KEY.slice() };
const random = { fill: (b: Uint8Array) => b.set(nacl.randomBytes(b.length)) };
const open = (store: MemoryStore) => Vault.open({ store, keys, random });

/** The stored records of these secrets (head and chunks), to write back later. */
function dump(store: MemoryStore, names: string[]): Map<string, Uint8Array> {
  const out = new Map<string, Uint8Array>();
  for (const k of store.keys()) if (names.some((n) => k === `v.${n}` || (/^v[01][0-9a-z]\./.test(k) && k.slice(4) === n))) out.set(k, store.read(k)!.slice());
  return out;
}
function writeBack(store: MemoryStore, records: Map<string, Uint8Array>): void {
  for (const [k, v] of records) store.write(k, v);
}

test("restoring the list and keys from before a revoke does not restore the user", (t) => {
  const flash = new MemoryStore();
  const tb = new AccessTestbed({ secrets: open(flash), store: flash });
  const ex = tb.addUser("ex", "resident");
  ex.gen = tb.access.generation;
  t.true(tb.send(ex, ex.command("snapshot")).ok);
  const before = dump(flash, [SECRET_LIST, SECRET_KEYS]);
  t.true(before.size >= 2);
  t.true(tb.send(tb.owner, tb.owner.revoke("ex")).ok);

  writeBack(flash, before);
  const vault = open(flash);
  t.deepEqual(vault.status().damaged.map((d) => [d.name, d.reason]), [[SECRET_LIST, "stale"], [SECRET_KEYS, "stale"]]);
  t.throws(() => vault.get(SECRET_LIST), { instanceOf: VaultError, message: /older copy/ });
  // The device cannot build access control from them: it asks to be provisioned, and the ex gets nothing.
  tb.secrets = vault;
  t.throws(() => tb.boot(), { instanceOf: VaultError });
});

test("an older single record (the Wi-Fi password) is not accepted as current, at open or after it", (t) => {
  const flash = new MemoryStore();
  const vault = open(flash);
  vault.set("wifi.pass", utf8Encode("old-password"));
  vault.set("wifi.ssid", utf8Encode("home"));
  const old = dump(flash, ["wifi.pass"]);
  vault.set("wifi.pass", utf8Encode("new-password"));

  writeBack(flash, old);
  const reopened = open(flash);
  t.deepEqual(reopened.status().damaged.map((d) => [d.name, d.reason]), [["wifi.pass", "stale"]]);
  t.is(utf8Decode(reopened.get("wifi.ssid")!), "home", "the other secrets stay readable");

  // Written back while running: get() checks the index too.
  const store2 = new MemoryStore();
  const v2 = open(store2);
  v2.set("wifi.pass", utf8Encode("old-password"));
  const old2 = dump(store2, ["wifi.pass"]);
  v2.set("wifi.pass", utf8Encode("new-password"));
  writeBack(store2, old2);
  t.throws(() => v2.get("wifi.pass"), { instanceOf: VaultError });
  t.deepEqual(v2.status().damaged.map((d) => [d.name, d.reason]), [["wifi.pass", "stale"]]);
});

test("a deleted secret written back stays deleted; chunked secrets are bound as well", (t) => {
  const flash = new MemoryStore();
  const vault = open(flash);
  vault.set("gone", utf8Encode("was here"));
  vault.set("big", new Uint8Array(9000).fill(1));
  const old = dump(flash, ["gone", "big"]);
  t.true(old.size >= 4, "head and chunks");
  vault.delete("gone");
  vault.set("big", new Uint8Array(9000).fill(2));
  writeBack(flash, old);
  const reopened = open(flash);
  t.false(reopened.has("gone"));
  t.is(reopened.get("gone"), undefined);
  t.deepEqual(reopened.status().damaged.map((d) => [d.name, d.reason]), [["big", "stale"]]);
});

test("a write cut between its head and the index commit reads as the new value", (t) => {
  const flash = new MemoryStore();
  const vault = open(flash);
  vault.set("wifi.pass", utf8Encode("old"));
  const meta = flash.read("v_meta")!.slice();
  vault.set("wifi.pass", utf8Encode("new"));
  // The index commit never landed.
  flash.write("v_meta", meta);
  const reopened = open(flash);
  t.is(utf8Decode(reopened.get("wifi.pass")!), "new");
  t.is(reopened.status().state, "ok");
  // And the index was completed, so the old head cannot be passed off as in flight later.
  t.notDeepEqual([...flash.read("v_meta")!], [...meta]);
});

test("a vault from before the index is read as it is and upgraded; an indexed vault cannot be passed off as one", (t) => {
  const flash = new MemoryStore();
  const vault = open(flash);
  vault.set("wifi.pass", utf8Encode("secret"));
  const meta = flash.read("v_meta")!;
  const salt = meta.subarray(1, 17);
  const check1 = nacl.hash(Uint8Array.from([...utf8Encode("doorward/vault/key/v1"), 0, ...KEY, ...salt])).subarray(32, 48);
  // The first format: [1] ‖ salt ‖ check, no index.
  flash.write("v_meta", Uint8Array.from([1, ...salt, ...check1]));
  const upgraded = open(flash);
  t.is(utf8Decode(upgraded.get("wifi.pass")!), "secret");
  t.is(flash.read("v_meta")![0], 2, "upgraded to the indexed format");
  // Without the key, the first format's check cannot be made: a forged one is a wrong key, and nothing is read.
  flash.write("v_meta", Uint8Array.from([1, ...salt, ...meta.subarray(17, 33)]));
  const forged = open(flash);
  t.is(forged.status().problem?.reason, "wrong-key");
  t.false(forged.has("wifi.pass"));
});
