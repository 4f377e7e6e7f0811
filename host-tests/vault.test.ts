/*
 * The vault: round trips, limits, key handling, and tampering. Every tamper
 * case checks the same four things: opening does not throw, the damaged secret
 * is named (status and the error message), every other secret still reads
 * back exactly, and the device is told to provision again.
 */
import test from "ava";
import nacl from "tweetnacl";
import { Vault, VaultError, CHUNK_BYTES, type KeyProvider } from "../modules/core/vault";
import { KV_MAX_KEY, KV_MAX_VALUE } from "../modules/core/ports";
import { MemoryStore } from "../modules/host/file-store";
import { toHex, utf8Encode } from "../modules/core/bytes";
import { seededRandom } from "./helpers/crypto";

const KEY = Uint8Array.from({ length: 32 }, (_, i) => i * 7 + 1);
const keys = (k: Uint8Array = KEY): KeyProvider => ({ storageKey: () => k.slice() });

function bytes(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    out[i] = x & 255;
  }
  return out;
}

const SECRETS: Record<string, Uint8Array> = {
  "wifi.ssid": utf8Encode("Flat-4B-Guest-Network"),
  "wifi.pass": utf8Encode("correct horse battery staple"),
  "aws.cert": bytes(1200, 1),
  "id.seed": bytes(32, 2),
  big: bytes(10_000, 3), // three chunks
};

function filled(store = new MemoryStore(), log?: (l: string) => void) {
  const vault = Vault.open({ store, keys: keys(), random: seededRandom("vault-test"), log: log && ((level, m, f) => log(`${level} ${m} ${JSON.stringify(f ?? {})}`)) });
  for (const [name, value] of Object.entries(SECRETS)) vault.set(name, value);
  return { store, vault };
}

const reopen = (store: MemoryStore, k?: Uint8Array) => Vault.open({ store, keys: keys(k), random: seededRandom("reopen") });

function assertOthersIntact(t: import("ava").ExecutionContext, vault: Vault, except: string[]) {
  for (const [name, value] of Object.entries(SECRETS)) {
    if (except.includes(name)) continue;
    t.is(toHex(vault.get(name)!), toHex(value), `${name} must be untouched`);
  }
}

test("secrets round-trip through a reopen, including a chunked one, and nothing is stored in plain form", (t) => {
  const { store } = filled();
  const vault = reopen(store);
  t.deepEqual(vault.status(), { state: "ok", names: Object.keys(SECRETS).sort(), damaged: [] });
  assertOthersIntact(t, vault, []);
  t.is(vault.get("absent"), undefined);
  for (const k of store.keys()) {
    t.true(k.length <= KV_MAX_KEY, k);
    t.true(store.map.get(k)!.length <= KV_MAX_VALUE, k);
  }
  t.deepEqual(store.keys().filter((k) => k.includes("big")), ["v.big", "v00.big", "v01.big", "v02.big"]);
  const all = Buffer.concat([...store.map.values()]);
  for (const [name, value] of Object.entries(SECRETS)) t.is(all.indexOf(Buffer.from(value.subarray(0, 8))), -1, `${name} visible in the store`);
});

test("limits: names, sizes, types", (t) => {
  const vault = Vault.open({ store: new MemoryStore(), keys: keys(), random: seededRandom("x") });
  for (const bad of ["", "UPPER", "has space", "twelve-chars", "_x", ".x", "ü"]) t.throws(() => vault.set(bad, new Uint8Array(1)), { instanceOf: TypeError }, bad);
  t.throws(() => vault.set("x", new Uint8Array(16385)), { instanceOf: RangeError, message: /16385 bytes, limit 16384/ });
  t.throws(() => vault.set("x", "text" as unknown as Uint8Array), { instanceOf: TypeError });
  vault.set("eleven-char", new Uint8Array(16384));
  vault.set("empty", new Uint8Array(0));
  t.is(vault.get("empty")!.length, 0);
  t.is(vault.get("eleven-char")!.length, 16384);
  t.throws(() => Vault.open({ store: new MemoryStore(), keys: keys(), random: seededRandom("x"), maxSecretBytes: 36 * CHUNK_BYTES + 1 }), { instanceOf: RangeError });
});

test("overwrites move between inline and chunked forms and leave no stale chunk behind", (t) => {
  const store = new MemoryStore();
  const vault = Vault.open({ store, keys: keys(), random: seededRandom("ow") });
  const sizes = [10, 9000, 12000, 4000, 3900, 3901, 20, 16384, 0];
  for (const [i, n] of sizes.entries()) {
    const v = bytes(n, 100 + i);
    vault.set("s", v);
    const chunks = store.keys().filter((k) => /^v[01].\.s$/.test(k));
    t.is(chunks.length, n <= CHUNK_BYTES ? 0 : Math.ceil(n / CHUNK_BYTES), `after writing ${n} bytes`);
    t.is(toHex(reopen(store).get("s")!), toHex(v));
  }
  vault.delete("s");
  t.deepEqual(store.keys(), ["v_meta"]);
  t.is(reopen(store).get("s"), undefined);
});

test("each record gets a fresh nonce: rewriting the same value changes every stored byte string", (t) => {
  const store = new MemoryStore();
  const vault = Vault.open({ store, keys: keys(), random: seededRandom("n") });
  vault.set("a", bytes(5000, 9));
  const first = new Map([...store.map].map(([k, v]) => [k, toHex(v)]));
  vault.set("a", bytes(5000, 9));
  for (const [k, v] of store.map) if (k !== "v_meta") t.not(toHex(v), first.get(k), k);
});

// ------------------------------------------------------------------ tampering

test("flipping any byte of any record damages exactly that secret, named, and nothing else", (t) => {
  const { store } = filled();
  let flips = 0;
  for (const key of store.keys()) {
    if (key === "v_meta") continue;
    const owner = key.slice(key.indexOf(".") + 1);
    const original = store.map.get(key)!;
    // Every byte of small records; for 4 KB chunks every 13th byte plus both ends.
    const positions = original.length < 2000 ? [...original.keys()] : [...original.keys()].filter((i) => i % 13 === 0 || i < 64 || i >= original.length - 64);
    for (const i of positions) {
      const tampered = original.slice();
      tampered[i] ^= 1 << (i % 8);
      store.map.set(key, tampered);
      const vault = reopen(store); // must not throw
      const status = vault.status();
      t.is(status.state, "damaged");
      t.deepEqual(status.damaged.map((d) => d.name), [owner], `${key}[${i}]`);
      t.deepEqual(status.names, Object.keys(SECRETS).filter((n) => n !== owner).sort());
      const error = t.throws(() => vault.get(owner), { instanceOf: VaultError })!;
      t.true(error.message.includes(`"${owner}"`) && /provision the device again/.test(error.message), error.message);
      flips++;
    }
    store.map.set(key, original);
  }
  t.true(flips > 1000, `${flips} flips`);
  const vault = reopen(store);
  t.is(vault.status().state, "ok");
  assertOthersIntact(t, vault, []);
  t.log(`${flips} single-bit flips, each detected and attributed to its secret`);
});

test("swapped, copied, truncated and deleted records are each refused with a reason naming the secret", (t) => {
  const cases: Array<{ what: string; damage: (s: MemoryStore) => void; hit: string[]; reason: RegExp }> = [
    { what: "two heads swapped", damage: (s) => swap(s, "v.wifi.ssid", "v.wifi.pass"), hit: ["wifi.pass", "wifi.ssid"], reason: /misplaced/ },
    { what: "a head copied over another", damage: (s) => s.map.set("v.id.seed", s.map.get("v.aws.cert")!.slice()), hit: ["id.seed"], reason: /misplaced/ },
    { what: "two chunks swapped", damage: (s) => swap(s, "v00.big", "v01.big"), hit: ["big"], reason: /chunk-mismatch/ },
    { what: "a chunk moved to the other slot", damage: (s) => { s.map.set("v10.big", s.map.get("v00.big")!); s.map.delete("v00.big"); }, hit: ["big"], reason: /missing-chunk/ },
    { what: "a chunk deleted", damage: (s) => s.map.delete("v01.big"), hit: ["big"], reason: /missing-chunk/ },
    { what: "a head truncated by one byte", damage: (s) => truncate(s, "v.wifi.pass", 1), hit: ["wifi.pass"], reason: /authentication/ },
    { what: "a head truncated to 20 bytes", damage: (s) => truncate(s, "v.aws.cert", s.map.get("v.aws.cert")!.length - 20), hit: ["aws.cert"], reason: /truncated/ },
    { what: "a chunk truncated", damage: (s) => truncate(s, "v02.big", 100), hit: ["big"], reason: /authentication/ },
    { what: "a head emptied", damage: (s) => s.map.set("v.id.seed", new Uint8Array(0)), hit: ["id.seed"], reason: /truncated/ },
    { what: "a future format", damage: (s) => { s.map.get("v.wifi.ssid")![0] = 2; }, hit: ["wifi.ssid"], reason: /unknown-format/ },
  ];
  for (const c of cases) {
    const { store } = filled();
    c.damage(store);
    const vault = reopen(store);
    const status = vault.status();
    t.deepEqual(status.damaged.map((d) => d.name), c.hit, c.what);
    for (const d of status.damaged) {
      t.regex(d.reason, c.reason, c.what);
      t.true(d.message.includes(`"${d.name}"`), d.message);
    }
    assertOthersIntact(t, vault, c.hit);
    // Writing the secret again repairs it without touching the others.
    for (const name of c.hit) vault.set(name, SECRETS[name]);
    const repaired = reopen(store);
    t.is(repaired.status().state, "ok", c.what);
    assertOthersIntact(t, repaired, []);
  }
});

test("a chunk replayed from an older write of the same secret is refused", (t) => {
  const { store, vault } = filled();
  const oldChunk = store.map.get("v00.big")!.slice();
  vault.set("big", bytes(10_000, 77)); // goes to slot 1
  vault.set("big", bytes(10_000, 78)); // back to slot 0, fresh generation
  store.map.set("v00.big", oldChunk);
  const again = reopen(store);
  t.deepEqual(again.status().damaged.map((d) => [d.name, d.reason]), [["big", "chunk-mismatch"]]);
});

test("damage after open is caught by get(), which names the secret and updates status", (t) => {
  const { store, vault } = filled();
  store.map.get("v.aws.cert")![40] ^= 0x80;
  const e = t.throws(() => vault.get("aws.cert"), { instanceOf: VaultError })!;
  t.is(e.secret, "aws.cert");
  t.is(e.reason, "authentication");
  t.deepEqual(vault.status().damaged.map((d) => d.name), ["aws.cert"]);
  t.throws(() => vault.get("aws.cert"), { instanceOf: VaultError });
  assertOthersIntact(t, vault, ["aws.cert"]);
});

test("a wrong key, a missing salt record or a failing key provider: open never throws, status says why, writes are refused", (t) => {
  const other = new Uint8Array(32).fill(3);
  const variants: Array<{ what: string; damage?: (s: MemoryStore) => void; open?: (s: MemoryStore) => Vault; reason: string }> = [
    { what: "wrong key", open: (s) => reopen(s, other), reason: "wrong-key" },
    { what: "salt deleted", damage: (s) => s.map.delete("v_meta"), reason: "no-metadata" },
    { what: "salt mangled", damage: (s) => { s.map.get("v_meta")![5] ^= 1; }, reason: "wrong-key" },
    { what: "provider throws", open: (s) => Vault.open({ store: s, keys: { storageKey: () => { throw new Error("eFuse not burned"); } }, random: seededRandom("p") }), reason: "no-key" },
    { what: "provider returns 16 bytes", open: (s) => reopen(s, new Uint8Array(16)), reason: "no-key" },
  ];
  for (const v of variants) {
    const { store } = filled();
    v.damage?.(store);
    const snapshot = () => JSON.stringify([...store.map].map(([k, x]) => [k, toHex(x)]));
    const before = snapshot();
    const vault = (v.open ?? reopen)(store);
    const status = vault.status();
    t.is(status.state, "damaged", v.what);
    t.is(status.problem?.reason as string | undefined, v.reason, v.what);
    t.deepEqual(status.damaged.map((d) => d.name), Object.keys(SECRETS).sort(), v.what);
    t.deepEqual(status.names, []);
    t.throws(() => vault.get("wifi.pass"), { instanceOf: VaultError, message: /"wifi\.pass"/ });
    t.throws(() => vault.set("wifi.pass", new Uint8Array(8)), { instanceOf: VaultError, message: /factory reset/ });
    t.true(snapshot() === before, `${v.what}: nothing may be written`);
    // A factory reset gives a working, empty vault.
    if (v.reason !== "no-key") {
      vault.wipeAll();
      t.deepEqual(store.keys(), []);
      vault.set("wifi.pass", SECRETS["wifi.pass"]);
      t.is(toHex(reopen(store, v.reason === "wrong-key" && v.what === "wrong key" ? other : KEY).get("wifi.pass")!), toHex(SECRETS["wifi.pass"]));
    }
  }
});

test("a store that fails to read one record marks only that secret, and a store that cannot list keys does not crash the boot", (t) => {
  const { store } = filled();
  const flaky = { ...wrap(store), read: (k: string) => { if (k === "v.id.seed") throw new Error("nvs: read error"); return store.read(k); } };
  const v1 = Vault.open({ store: flaky, keys: keys(), random: seededRandom("f") });
  t.deepEqual(v1.status().damaged.map((d) => [d.name, d.reason]), [["id.seed", "unreadable"]]);
  const broken = { ...wrap(store), keys: () => { throw new Error("nvs: not initialised"); } };
  const v2 = Vault.open({ store: broken, keys: keys(), random: seededRandom("f") });
  t.is(v2.status().problem?.reason, "unreadable");
});

test("factory reset removes every vault key and keeps keys the vault does not own", (t) => {
  const { store, vault } = filled();
  store.write("dw.boot", utf8Encode("7"));
  vault.wipeAll();
  t.deepEqual(store.keys(), ["dw.boot"]);
  t.is(reopen(store).status().state, "empty");
  // A fresh salt: records from before the reset no longer authenticate even under the same provider key.
  const before = filled().store;
  const stale = before.map.get("v.wifi.pass")!;
  const after = reopen(store);
  after.set("other", new Uint8Array(1));
  store.map.set("v.wifi.pass", stale);
  t.deepEqual(reopen(store).status().damaged.map((d) => d.name), ["wifi.pass"]);
});

test("the vault key is derived: the provider's bytes and the SHA-512 halves never appear in the store", (t) => {
  const { store } = filled();
  const all = Buffer.concat([...store.map.values()]);
  t.is(all.indexOf(Buffer.from(KEY.subarray(0, 8))), -1);
  const meta = store.map.get("v_meta")!;
  const h = nacl.hash(Buffer.concat([Buffer.from("doorward/vault/key/v1"), Buffer.from([0]), Buffer.from(KEY), Buffer.from(meta.subarray(1, 17))]));
  const h2 = nacl.hash(Buffer.concat([Buffer.from("doorward/vault/key/v1"), Buffer.from([2]), Buffer.from(KEY), Buffer.from(meta.subarray(1, 17))]));
  t.is(meta[0], 2, "the meta record's format with an index");
  t.is(toHex(meta.subarray(17, 33)), toHex(h2.subarray(32, 48)), "the check is the second half of the format-2 hash");
  t.is(all.indexOf(Buffer.from(h.subarray(32, 40))), -1, "the first format's check is not stored");
  t.is(all.indexOf(Buffer.from(h.subarray(0, 8))), -1, "the record key is not stored");
  // And it really is the record key: a record opens with it.
  const head = store.map.get("v.wifi.pass")!;
  const plain = nacl.secretbox.open(head.subarray(25), head.subarray(1, 25), h.subarray(0, 32));
  t.truthy(plain);
});

function swap(s: MemoryStore, a: string, b: string) {
  const x = s.map.get(a)!;
  s.map.set(a, s.map.get(b)!);
  s.map.set(b, x);
}
function truncate(s: MemoryStore, key: string, by: number) {
  const v = s.map.get(key)!;
  s.map.set(key, v.slice(0, v.length - by));
}
function wrap(store: MemoryStore) {
  return { read: (k: string) => store.read(k), write: (k: string, v: Uint8Array) => store.write(k, v), delete: (k: string) => store.delete(k), keys: () => store.keys() };
}
