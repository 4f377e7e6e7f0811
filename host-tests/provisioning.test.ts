/*
 * Provisioning in the core: a bundle is accepted once, validated strictly,
 * stored only in the vault, survives power cuts at every step without ever
 * mixing two bundles, and a damaged identity puts the device back into
 * "provision me" instead of a crash loop.
 */
import test from "ava";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { generateKeyPairSync } from "node:crypto";
import nacl from "tweetnacl";
import { Vault } from "../modules/core/vault";
import {
  IDENTITY_SECRETS, Provisioning, ProvisioningError, SECRET, encodeBundle, parseBundle, type ProvisioningBundle,
} from "../modules/core/provisioning";
import { toHex, utf8Decode, utf8Encode } from "../modules/core/bytes";
import { MemoryStore } from "../modules/host/file-store";
import { issueThingCredentials } from "../tools/pki";
import { seededRandom } from "./helpers/crypto";
import { CuttableStore, PowerCut, cloneStore } from "./vault-support";
import type { KeyValueStore } from "../modules/core/ports";

const KEY = new Uint8Array(32).fill(0x42);
const keys = { storageKey: () => KEY.slice() };
let bundleA: ProvisioningBundle;
let bundleB: ProvisioningBundle;

test.before(async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dw-prov-pki-"));
  const a = await issueThingCredentials(dir, "doorward-porch-1");
  const b = await issueThingCredentials(dir, "doorward-gate-2");
  const owner = { signKey: new Uint8Array(32).fill(1), boxKey: new Uint8Array(32).fill(2) };
  bundleA = { thing: "doorward-porch-1", wifi: { ssid: "Flat-4B-Guest-Network", password: "correct horse battery staple" }, endpoint: "localhost", cert: a.certDer, key: a.keyDer, ca: a.caDer, owner };
  bundleB = { thing: "doorward-gate-2", wifi: { ssid: "Garden-Mesh-5G", password: "another long passphrase" }, endpoint: "abc123-ats.iot.eu-west-1.amazonaws.com:8883", cert: b.certDer, key: b.keyDer, ca: b.caDer, owner: { signKey: new Uint8Array(32).fill(3), boxKey: new Uint8Array(32).fill(4) } };
});

let n = 0;
function device(store: KeyValueStore, lines?: string[]) {
  const log = lines ? (level: string, message: string, fields?: object) => lines.push(`${level} ${message} ${JSON.stringify(fields ?? {})}`) : undefined;
  const vault = Vault.open({ store, keys, random: seededRandom(`prov-${n++}`), log });
  return { vault, prov: new Provisioning({ vault, random: seededRandom(`prov-rng-${n++}`), log }) };
}

function assertIdentity(t: import("ava").ExecutionContext, prov: Provisioning, b: ProvisioningBundle) {
  const id = prov.identity();
  t.is(id.thing, b.thing);
  t.deepEqual(id.wifi, b.wifi);
  const [host, port] = b.endpoint.split(":");
  t.deepEqual(id.endpoint, { host, port: port === undefined ? undefined : Number(port) });
  t.is(toHex(id.tls.clientCertificates[0]), toHex(b.cert));
  t.is(toHex(id.tls.clientKey), toHex(b.key));
  t.is(toHex(id.tls.certificate), toHex(b.ca));
  t.is(toHex(id.owner.signKey), toHex(b.owner.signKey));
  t.is(toHex(id.owner.boxKey), toHex(b.owner.boxKey));
  t.is(toHex(nacl.sign.keyPair.fromSeed(id.signingSeed).publicKey), toHex(id.publicKey), "the stored public key belongs to the stored seed");
}

test("a fresh device is unprovisioned, accepts one bundle, and refuses a second", (t) => {
  const store = new MemoryStore();
  const { prov } = device(store);
  const s0 = prov.status();
  t.false(s0.provisioned);
  t.is(s0.state, "unprovisioned");
  t.deepEqual([...s0.missing].sort(), [...IDENTITY_SECRETS].sort());
  t.throws(() => prov.identity(), { instanceOf: ProvisioningError, message: /not provisioned/ });
  const { thing, publicKey } = prov.accept(encodeBundle(bundleA));
  t.is(thing, bundleA.thing);
  t.is(publicKey.length, 32);
  const again = device(store).prov;
  t.true(again.status().provisioned);
  assertIdentity(t, again, bundleA);
  t.is(toHex(again.publicKey()!), toHex(publicKey));
  const snapshot = JSON.stringify([...store.map].map(([k, v]) => [k, toHex(v)]));
  t.throws(() => again.accept(encodeBundle(bundleB)), { instanceOf: ProvisioningError, message: /already provisioned.*factory reset/ });
  t.is(JSON.stringify([...store.map].map(([k, v]) => [k, toHex(v)])), snapshot, "a refused bundle writes nothing");
});

test("the device makes its own Ed25519 key from the Random port; the bundle carries none", (t) => {
  const s1 = new MemoryStore();
  const s2 = new MemoryStore();
  const k1 = device(s1).prov.accept(encodeBundle(bundleA)).publicKey;
  const k2 = device(s2).prov.accept(encodeBundle(bundleA)).publicKey;
  t.not(toHex(k1), toHex(k2), "two devices fed the same bundle have different keys");
  t.false(JSON.stringify(JSON.parse(utf8Decode(encodeBundle(bundleA)))).includes("seed"));
});

test("invalid bundles are refused before anything is written, with a message that names the field and never a value", (t) => {
  const good = JSON.parse(utf8Decode(encodeBundle(bundleA)));
  const ecKey = new Uint8Array(generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey.export({ type: "pkcs8", format: "der" }));
  const variants: Array<[string, (b: any) => unknown, RegExp]> = [
    ["missing wifi", (b) => { delete b.wifi; }, /missing field wifi/],
    ["unknown field", (b) => { b.debug = true; }, /unknown field debug/],
    ["wrong kind", (b) => { b.kind = "other"; }, /kind/],
    ["future version", (b) => { b.v = 2; }, /version/],
    ["bad thing name", (b) => { b.thing = "has space"; }, /thing/],
    ["empty ssid", (b) => { b.wifi.ssid = ""; }, /wifi\.ssid/],
    ["33-byte ssid", (b) => { b.wifi.ssid = "x".repeat(33); }, /wifi\.ssid/],
    ["no passphrase (open network)", (b) => { b.wifi.password = ""; }, /wifi\.password/],
    ["7-character passphrase", (b) => { b.wifi.password = "1234567"; }, /wifi\.password/],
    ["64 characters that are not hex", (b) => { b.wifi.password = "z".repeat(64); }, /wifi\.password/],
    ["passphrase as a number", (b) => { b.wifi.password = 12345678; }, /wifi\.password/],
    ["extra wifi field", (b) => { b.wifi.hidden = true; }, /unknown field wifi\.hidden/],
    ["endpoint with a scheme", (b) => { b.endpoint = "mqtts://host"; }, /endpoint/],
    ["endpoint port out of range", (b) => { b.endpoint = "host:70000"; }, /endpoint/],
    ["cert not base64url", (b) => { b.aws.cert = b.aws.cert + "=="; }, /aws\.cert/],
    ["cert not DER", (b) => { b.aws.cert = "AAAA"; }, /aws\.cert/],
    ["cert with trailing bytes", (b) => { b.aws.cert = b.aws.cert + "AAAA"; }, /aws\.cert/],
    ["EC key", (b) => { b.aws.key = Buffer.from(ecKey).toString("base64url"); }, /RSA/],
    ["short owner key", (b) => { b.owner.sign = Buffer.alloc(31).toString("base64url"); }, /owner\.sign/],
    ["missing owner box key", (b) => { delete b.owner.box; }, /owner\.box/],
    ["all-zero owner box key (low order)", (b) => { b.owner.box = Buffer.alloc(32).toString("base64url"); }, /owner\.box is a low-order/],
  ];
  for (const [what, change, message] of variants) {
    const b = structuredClone(good);
    change(b);
    const bytes = utf8Encode(JSON.stringify(b));
    const store = new MemoryStore();
    const { prov } = device(store);
    const e = t.throws(() => prov.accept(bytes), { instanceOf: ProvisioningError }, what)!;
    t.regex(e.message, message, what);
    t.false(e.message.includes(bundleA.wifi.password) || e.message.includes(bundleA.wifi.ssid), `${what}: message leaks a value`);
    t.deepEqual(store.keys(), [], `${what}: nothing written`);
  }
  t.throws(() => parseBundle(utf8Encode("not json")), { message: /not UTF-8 JSON/ });
  t.throws(() => parseBundle(Uint8Array.of(0xff, 0xfe)), { message: /not UTF-8 JSON/ });
  t.throws(() => parseBundle(new Uint8Array(40000).fill(32)), { message: /larger than/ });
  t.throws(() => parseBundle(new Uint8Array(0)), { message: /empty/ });
  // 64 hex digits (a raw PSK) is a valid passphrase.
  const psk = structuredClone(good);
  psk.wifi.password = "ab".repeat(32);
  t.notThrows(() => parseBundle(utf8Encode(JSON.stringify(psk))));
});

test("a damaged identity secret: boot never throws, the device says which secret and asks to be provisioned again, and a new bundle repairs it", (t) => {
  const store = new MemoryStore();
  const first = device(store);
  const { publicKey } = first.prov.accept(encodeBundle(bundleA));
  first.vault.set("user.1", utf8Encode("a later per-user key, 32+ bytes long"));
  store.map.get("v.wifi.pass")![40] ^= 0x10;
  for (let boot = 0; boot < 5; boot++) {
    const lines: string[] = [];
    const { prov } = device(store, lines); // must not throw, every boot
    const s = prov.status();
    t.false(s.provisioned);
    t.is(s.state, "damaged");
    t.deepEqual(s.damaged.map((d) => d.name), ["wifi.pass"]);
    t.regex(s.message, /secret "wifi\.pass" is damaged.*provision the device again/);
    t.throws(() => prov.identity(), { instanceOf: ProvisioningError, message: /wifi\.pass/ });
    t.true(lines.some((l) => l.includes("wifi.pass") && l.startsWith("warn")), "the damage is logged by name");
  }
  const { prov, vault } = device(store);
  const result = prov.accept(encodeBundle(bundleB));
  t.is(toHex(result.publicKey), toHex(publicKey), "an intact device key is kept, so the cloud registration stays valid");
  t.true(prov.status().provisioned);
  assertIdentity(t, device(store).prov, bundleB);
  t.is(utf8Decode(vault.get("user.1")!), "a later per-user key, 32+ bytes long", "a secret outside the identity is untouched");
});

test("a damaged device key is replaced by a new one at re-provisioning", (t) => {
  const store = new MemoryStore();
  const old = device(store).prov.accept(encodeBundle(bundleA)).publicKey;
  store.map.get("v.id.seed")![30] ^= 1;
  const { prov } = device(store);
  t.deepEqual(prov.status().damaged.map((d) => d.name), ["id.seed"]);
  const fresh = prov.accept(encodeBundle(bundleA)).publicKey;
  t.not(toHex(fresh), toHex(old));
  assertIdentity(t, device(store).prov, bundleA);
});

test("a vault under another key (e.g. a flash image moved to another board) reads as damaged and is wiped by the next bundle", (t) => {
  const store = new MemoryStore();
  device(store).prov.accept(encodeBundle(bundleA));
  const otherKeys = { storageKey: () => new Uint8Array(32).fill(9) };
  const vault = Vault.open({ store, keys: otherKeys, random: seededRandom("other") });
  const prov = new Provisioning({ vault, random: seededRandom("other-rng") });
  const s = prov.status();
  t.is(s.state, "damaged");
  t.regex(s.message, /storage key does not match/);
  prov.accept(encodeBundle(bundleB));
  const reopened = new Provisioning({ vault: Vault.open({ store, keys: otherKeys, random: seededRandom("o2") }), random: seededRandom("o3") });
  assertIdentity(t, reopened, bundleB);
});

test("factory reset leaves no key in the vault's store, and the next bundle makes a new device key", (t) => {
  const store = new MemoryStore();
  const first = device(store);
  const before = first.prov.accept(encodeBundle(bundleA)).publicKey;
  t.true(store.keys().length >= IDENTITY_SECRETS.length);
  first.prov.factoryReset();
  t.deepEqual(store.keys(), []);
  const raw = Buffer.concat([...store.map.values()]);
  t.is(raw.length, 0);
  const { prov } = device(store);
  t.is(prov.status().state, "unprovisioned");
  const after = prov.accept(encodeBundle(bundleA)).publicKey;
  t.not(toHex(after), toHex(before));
});

test("power cut at every step of provisioning: never provisioned with a mix of two bundles, always recoverable by feeding again", (t) => {
  // Case 1: first provisioning. Case 2: re-provisioning with bundle B after A's Wi-Fi password was damaged.
  const fresh = new MemoryStore();
  const damaged = new MemoryStore();
  device(damaged).prov.accept(encodeBundle(bundleA));
  damaged.map.get("v.wifi.pass")![50] ^= 2;
  let cuts = 0;
  for (const [label, base] of [["first", fresh], ["again", damaged]] as const) {
    const probe = new CuttableStore(cloneStore(base));
    device(probe).prov.accept(encodeBundle(bundleB));
    const total = probe.ops;
    for (let cut = 0; cut <= total; cut++) {
      const disk = cloneStore(base);
      try {
        device(new CuttableStore(disk, cut)).prov.accept(encodeBundle(bundleB));
      } catch (e) {
        if (!(e instanceof PowerCut) && !(e instanceof ProvisioningError && /power/.test(e.message))) t.fail(`${label} cut ${cut}: ${(e as Error).message}`);
      }
      const { prov } = device(disk); // the reboot
      const s = prov.status();
      if (s.provisioned) assertIdentity(t, prov, bundleB);
      else {
        t.not(s.state, "provisioned");
        t.throws(() => prov.identity(), { instanceOf: ProvisioningError });
        prov.accept(encodeBundle(bundleB)); // feeding again works
        assertIdentity(t, device(disk).prov, bundleB);
      }
      cuts++;
    }
    t.log(`${label} provisioning: ${total + 1} cut points`);
  }
  t.true(cuts > 20);
});

test("secret names used by provisioning fit the vault and the marker is written last", (t) => {
  for (const name of Object.values(SECRET)) t.notThrows(() => new MemoryStore().write(`v.${name}`, new Uint8Array(1)), name);
  const order: string[] = [];
  const store = new MemoryStore();
  const spy: KeyValueStore = { read: (k) => store.read(k), keys: () => store.keys(), delete: (k) => store.delete(k), write: (k, v) => { order.push(k); store.write(k, v); } };
  device(spy).prov.accept(encodeBundle(bundleA));
  // The marker's head is the last record written; only the vault's index commit (v_meta) follows it.
  const heads = order.filter((k) => k.startsWith("v."));
  t.is(heads[heads.length - 1], "v.prov");
  t.deepEqual(order.slice(order.lastIndexOf("v.prov") + 1), ["v_meta"]);
});

test("a lone surrogate in the SSID (or any text field) is refused with a clear error naming the field", (t) => {
  for (const ssid of ["Home\ud800", "\udc00Net", "a\ud83dz"]) {
    const bytes = encodeBundle({ ...bundleA, wifi: { ...bundleA.wifi, ssid } });
    t.throws(() => parseBundle(bytes), { instanceOf: ProvisioningError, message: /wifi\.ssid .*lone surrogate/ }, JSON.stringify(ssid));
  }
  const password = encodeBundle({ ...bundleA, wifi: { ...bundleA.wifi, password: "correct horse \ud800 staple" } });
  t.throws(() => parseBundle(password), { instanceOf: ProvisioningError, message: /wifi\.password/ });
  t.is(parseBundle(encodeBundle({ ...bundleA, wifi: { ...bundleA.wifi, ssid: "Café 🏠" } })).wifi.ssid, "Café 🏠", "a real pair is fine");
});
