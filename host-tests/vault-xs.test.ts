/*
 * The vault on the real XS engine: what opening it at boot costs, and proof
 * that XS and Node write byte-identical records from the same inputs.
 *
 * The store holds what a provisioned doorbell holds (thing name, Wi-Fi,
 * endpoint, a ~1.2 KB certificate, a ~1.2 KB RSA PKCS#8 key, a CA, the
 * Ed25519 seed and public key, the owner blob, the marker). Vault.open reads
 * and authenticates every record (one SHA-512 for the key, one secretbox open
 * per record); the XS meter of that call is logged, and where valgrind is
 * installed so is its x86 instruction count, which the ESP32 model in
 * the SDK check notes on XS crypto costs turn into time (one instruction per
 * cycle at 240 MHz: a lower bound; 1.3-3x that with software floating point).
 */
import test, { type ExecutionContext } from "ava";
import { Vault } from "../modules/core/vault";
import { toHex, utf8Encode } from "../modules/core/bytes";
import { MemoryStore, SeededRandom } from "../tools/xs/deterministic";
import { startXsCore, type XsCore } from "../tools/xs/core";
import { countInstructions, valgrindAvailable } from "../tools/xs/callgrind";

const KEY = Uint8Array.from({ length: 32 }, (_, i) => 255 - i);

function der(n: number, seed: number): Uint8Array {
  const out = Uint8Array.from({ length: n }, (_, i) => (i * 131 + seed * 7 + (i >> 3)) & 255);
  out[0] = 0x30;
  return out;
}

/** What a provisioned device stores (sizes from a real dev bundle). */
const PROVISIONED: Array<[string, Uint8Array]> = [
  ["thing", utf8Encode("doorward-front-01")],
  ["wifi.ssid", utf8Encode("Flat-4B-Guest-Network")],
  ["wifi.pass", utf8Encode("correct horse battery staple")],
  ["mqtt.host", utf8Encode("a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com")],
  ["aws.cert", der(956, 1)],
  ["aws.key", der(1217, 2)],
  ["aws.ca", der(842, 3)],
  ["id.seed", der(32, 4)],
  ["id.pub", der(32, 5)],
  ["owner", der(65, 6)],
  ["prov", Uint8Array.of(1)],
];
/** The brief's "about six secrets": the ones a boot needs to get online. */
const SIX = PROVISIONED.filter(([n]) => ["thing", "wifi.ssid", "wifi.pass", "aws.cert", "aws.key", "aws.ca"].includes(n));

const RANDOM_SEED = 0x5eed0001;

async function xsFor(t: ExecutionContext, name: string): Promise<XsCore> {
  const xs = await startXsCore({ name, stdout: "ignore" });
  t.teardown(() => xs.close());
  return xs;
}

const SETUP = `
  const { Vault } = importNow("core/vault");
  const { MemoryStore, SeededRandom } = importNow("harness/deterministic");
  state.Vault = Vault;
  state.store = new MemoryStore();
  state.random = new SeededRandom(args.randomSeed);
  state.keys = { storageKey: () => args.key.slice() };
  const vault = Vault.open({ store: state.store, keys: state.keys, random: state.random });
  for (const [name, value] of args.secrets) vault.set(name, value);
  const records = {};
  for (const k of state.store.keys()) records[k] = state.store.read(k);
  return records;`;

function nodeRecords(secrets: Array<[string, Uint8Array]>): Record<string, Uint8Array> {
  const store = new MemoryStore();
  const vault = Vault.open({ store, keys: { storageKey: () => KEY.slice() }, random: new SeededRandom(RANDOM_SEED) });
  for (const [name, value] of secrets) vault.set(name, value);
  const out: Record<string, Uint8Array> = {};
  for (const k of store.keys()) out[k] = store.read(k)!;
  return out;
}

test("XS and Node write byte-identical vault records, and each reads the other's", async (t) => {
  const xs = await xsFor(t, "vault-xs-identity");
  const { value: onXs } = await xs.run<Record<string, Uint8Array>>(SETUP, { secrets: PROVISIONED, key: KEY, randomSeed: RANDOM_SEED });
  const onNode = nodeRecords(PROVISIONED);
  t.deepEqual(Object.keys(onXs).sort(), Object.keys(onNode).sort());
  for (const k of Object.keys(onNode)) t.is(toHex(onXs[k]), toHex(onNode[k]), k);
  // Node reads what XS wrote.
  const store = new MemoryStore();
  for (const [k, v] of Object.entries(onXs)) store.write(k, v);
  const vault = Vault.open({ store, keys: { storageKey: () => KEY.slice() }, random: new SeededRandom(1) });
  for (const [name, value] of PROVISIONED) t.is(toHex(vault.get(name)!), toHex(value), name);
  // XS detects tampering the same way.
  const { value: status } = await xs.run<{ damaged: Array<{ name: string; reason: string }> }>(`
    const raw = state.store.read("v.aws.key"); raw[30] ^= 4; state.store.write("v.aws.key", raw);
    return state.Vault.open({ store: state.store, keys: state.keys, random: state.random }).status();`);
  t.deepEqual(status.damaged.map((d) => [d.name, d.reason]), [["aws.key", "authentication"]]);
});

async function openCost(xs: XsCore, secrets: Array<[string, Uint8Array]>) {
  await xs.run(SETUP, { secrets, key: KEY, randomSeed: RANDOM_SEED });
  const open = await xs.run<{ state: string; names: string[] }>(`
    state.vault = state.Vault.open({ store: state.store, keys: state.keys, random: state.random });
    return state.vault.status();`);
  const readAll = await xs.run<number>(`
    let n = 0;
    for (const name of state.vault.list()) n += state.vault.get(name).length;
    return n;`);
  return { open: open.meter.body, readAll: readAll.meter.body, status: open.value, bytes: readAll.value };
}

test("XS meter: opening the vault at boot (deterministic across workers)", async (t) => {
  const six = await openCost(await xsFor(t, "vault-xs-six"), SIX);
  const full = await openCost(await xsFor(t, "vault-xs-full"), PROVISIONED);
  const again = await openCost(await xsFor(t, "vault-xs-full-2"), PROVISIONED);
  t.is(six.status.state, "ok");
  t.is(full.status.names.length, PROVISIONED.length);
  t.deepEqual(again, full, "the XS meter must repeat exactly");
  const total = (s: Array<[string, Uint8Array]>) => s.reduce((n, [, v]) => n + v.length, 0);
  const m = (n: number) => `${(n / 1e6).toFixed(2)} M`;
  t.log(`XS meter, Vault.open with ${SIX.length} secrets (${total(SIX)} bytes): ${m(six.open)} units; then get() of all: ${m(six.readAll)}`);
  t.log(`XS meter, Vault.open with ${PROVISIONED.length} records of a provisioned device (${total(PROVISIONED)} bytes): ${m(full.open)} units; then get() of all: ${m(full.readAll)}`);
  // Sanity bounds that fail if open stops authenticating (too cheap) or does something quadratic (too dear).
  t.true(full.open > six.open, "more records cost more");
  t.true(full.open > 1e6 && full.open < 200e6, `open cost ${full.open} out of the plausible range`);
});

(valgrindAvailable() ? test : test.skip)("x86 instructions of a vault open on XS (callgrind), with the ESP32 time model", async (t) => {
  const setup = `${SETUP.replace("return records;", "")}`;
  const six = await countInstructions({ setup, operation: `state.Vault.open({ store: state.store, keys: state.keys, random: state.random });`, args: { secrets: SIX, key: KEY, randomSeed: RANDOM_SEED } });
  const full = await countInstructions({ setup, operation: `state.Vault.open({ store: state.store, keys: state.keys, random: state.random });`, args: { secrets: PROVISIONED, key: KEY, randomSeed: RANDOM_SEED } });
  const ms = (n: number) => `${((n / 240e6) * 1000).toFixed(0)} ms`;
  t.log(`Vault.open, ${SIX.length} secrets: ${(six.perOperation / 1e6).toFixed(1)} M x86 instructions → ESP32-S3 model ≥ ${ms(six.perOperation)} (realistic ${ms(six.perOperation * 1.3)}-${ms(six.perOperation * 3)})`);
  t.log(`Vault.open, ${PROVISIONED.length} records: ${(full.perOperation / 1e6).toFixed(1)} M x86 instructions → ESP32-S3 model ≥ ${ms(full.perOperation)} (realistic ${ms(full.perOperation * 1.3)}-${ms(full.perOperation * 3)})`);
  t.true(full.perOperation > six.perOperation);
});

test("provisioning runs on XS: a bundle made on Node is accepted, refused a second time, and read back", async (t) => {
  const xs = await xsFor(t, "vault-xs-provisioning");
  const { encodeBundle } = await import("../modules/core/provisioning");
  const bundle = encodeBundle({
    thing: "doorward-front-01",
    wifi: { ssid: "Flat-4B-Guest-Network", password: "correct horse battery staple" },
    endpoint: "a1b2c3-ats.iot.eu-west-1.amazonaws.com:8883",
    cert: Uint8Array.of(0x30, 0x03, 1, 2, 3),
    key: Uint8Array.of(0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00),
    ca: Uint8Array.of(0x30, 0x00),
    owner: { signKey: new Uint8Array(32).fill(1), boxKey: new Uint8Array(32).fill(2) },
  });
  const { value, meter } = await xs.run<{ before: string; after: string; refused: string; id: { thing: string; port: number; ssid: string; seedMatches: boolean } }>(`
    const { Vault } = importNow("core/vault");
    const { Provisioning } = importNow("core/provisioning");
    const { MemoryStore, SeededRandom } = importNow("harness/deterministic");
    const nacl = importNow("tweetnacl").default;
    const store = new MemoryStore();
    const random = new SeededRandom(7);
    const keys = { storageKey: () => new Uint8Array(32).fill(5) };
    const prov = new Provisioning({ vault: Vault.open({ store, keys, random }), random });
    const before = prov.status().state;
    const { publicKey } = prov.accept(args.bundle);
    let refused = "";
    try { prov.accept(args.bundle); } catch (e) { refused = e.name + ": " + e.message; }
    const again = new Provisioning({ vault: Vault.open({ store, keys, random }), random });
    const id = again.identity();
    const hex = (b) => Array.from(b, (x) => (x < 16 ? "0" : "") + x.toString(16)).join("");
    return { before, after: again.status().state, refused,
      id: { thing: id.thing, port: id.endpoint.port, ssid: id.wifi.ssid, seedMatches: hex(nacl.sign.keyPair.fromSeed(id.signingSeed).publicKey) === hex(publicKey) } };`, { bundle });
  t.is(value.before, "unprovisioned");
  t.is(value.after, "provisioned");
  t.regex(value.refused, /^ProvisioningError: .*already provisioned/);
  t.deepEqual(value.id, { thing: "doorward-front-01", port: 8883, ssid: "Flat-4B-Guest-Network", seedMatches: true });
  t.log(`XS meter, provisioning a device (bundle parse, key pair, 11 records) plus one reopen and identity(): ${(meter.body / 1e6).toFixed(1)} M units`);
});
