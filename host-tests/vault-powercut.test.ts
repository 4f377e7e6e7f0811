/*
 * Power cuts at every step of every vault write, delete and factory reset.
 *
 * The store guarantees only that one key write (or delete) is atomic. For each
 * scenario the operation is run once per step with power lost before that
 * step (and once uncut); the store is then "rebooted": the vault is opened
 * again (with a second cut at every step the recovering open itself takes),
 * and every secret must read as exactly its old or its new value, never
 * missing, damaged or mixed, unrelated secrets exactly as before. Finally the
 * operation is redone on the recovered store and must reach the new values.
 * A deliberately naive chunked writer runs through the same checker to show
 * the checker catches torn writes.
 */
import test from "ava";
import { Vault } from "../modules/core/vault";
import type { KeyValueStore } from "../modules/core/ports";
import { utf8Encode } from "../modules/core/bytes";
import { seededRandom } from "./helpers/crypto";
import { checkCuts, type CutScenario, type Reopened, type Value } from "./vault-support";

const KEY = new Uint8Array(32).fill(0x5a);
const keys = { storageKey: () => KEY.slice() };
let openings = 0;
const open = (store: KeyValueStore) => Vault.open({ store, keys, random: seededRandom(`cut-${openings++}`) });
const reopen = (store: KeyValueStore): Reopened => {
  const v = open(store);
  return { get: (n) => v.get(n), damaged: () => v.status().damaged.map((d) => `${d.name}(${d.reason})`) };
};

function bytes(n: number, seed: number): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed * 17 + (i >> 8)) & 255);
}

/** Secrets that no scenario touches: one inline, one chunked. */
const BYSTANDERS: Record<string, Uint8Array> = { "wifi.pass": utf8Encode("correct horse battery staple"), "aws.ca": bytes(5000, 9) };

function scenario(name: string, before: Record<string, Value>, ops: (v: Vault) => void, after: Record<string, Value>, extra: Partial<CutScenario> = {}): CutScenario {
  const allowed = new Map<string, Value[]>();
  const final = new Map<string, Value>();
  for (const [n, v] of Object.entries(BYSTANDERS)) {
    allowed.set(n, [v]);
    final.set(n, v);
  }
  for (const n of new Set([...Object.keys(before), ...Object.keys(after)])) {
    allowed.set(n, [before[n], after[n]]);
    final.set(n, after[n]);
  }
  return {
    name,
    setup(store) {
      const v = open(store);
      for (const [n, value] of Object.entries(BYSTANDERS)) v.set(n, value);
      for (const [n, value] of Object.entries(before)) if (value) v.set(n, value);
    },
    mutate(store) {
      ops(open(store));
    },
    allowed,
    final,
    ...extra,
  };
}

const small1 = utf8Encode("Flat-4B-Guest-Network");
const small2 = utf8Encode("Another-Network-Name");
const big1 = bytes(10_000, 1); // 3 chunks
const big2 = bytes(13_000, 2); // 4 chunks
const big3 = bytes(4_500, 3); // 2 chunks

const SCENARIOS: CutScenario[] = [
  scenario("first secret in an empty vault", {}, (v) => v.set("wifi.ssid", small1), { "wifi.ssid": small1 }, {
    setup: () => {}, allowed: new Map([["wifi.ssid", [undefined, small1]]]), final: new Map([["wifi.ssid", small1]]),
  }),
  scenario("new small secret", {}, (v) => v.set("wifi.ssid", small1), { "wifi.ssid": small1 }),
  scenario("new chunked secret", {}, (v) => v.set("aws.cert", big1), { "aws.cert": big1 }),
  scenario("overwrite small with small", { "wifi.ssid": small1 }, (v) => v.set("wifi.ssid", small2), { "wifi.ssid": small2 }),
  scenario("overwrite chunked with more chunks", { "aws.cert": big1 }, (v) => v.set("aws.cert", big2), { "aws.cert": big2 }),
  scenario("overwrite chunked with fewer chunks", { "aws.cert": big2 }, (v) => v.set("aws.cert", big3), { "aws.cert": big3 }),
  scenario("overwrite chunked with small", { "aws.cert": big1 }, (v) => v.set("aws.cert", small1), { "aws.cert": small1 }),
  scenario("overwrite small with chunked", { "aws.cert": small1 }, (v) => v.set("aws.cert", big1), { "aws.cert": big1 }),
  scenario("delete small", { "wifi.ssid": small1 }, (v) => v.delete("wifi.ssid"), { "wifi.ssid": undefined }),
  scenario("delete chunked", { "aws.cert": big2 }, (v) => v.delete("aws.cert"), { "aws.cert": undefined }),
  {
    ...scenario("two overwrites in a row (slot 0 → 1 → 0)", { "aws.cert": big1 }, (v) => { v.set("aws.cert", big2); v.set("aws.cert", big3); }, { "aws.cert": big3 }),
    allowed: new Map<string, Value[]>([...Object.entries(BYSTANDERS).map(([n, x]) => [n, [x]] as [string, Value[]]), ["aws.cert", [big1, big2, big3]]]),
  },
];

const RESET: CutScenario = {
  name: "factory reset",
  setup(store) {
    const v = open(store);
    for (const [n, value] of Object.entries(BYSTANDERS)) v.set(n, value);
    v.set("wifi.ssid", small1);
    v.set("aws.cert", big2);
  },
  mutate(store) {
    open(store).wipeAll();
  },
  allowed: new Map<string, Value[]>([
    ["wifi.pass", [BYSTANDERS["wifi.pass"], undefined]],
    ["aws.ca", [BYSTANDERS["aws.ca"], undefined]],
    ["wifi.ssid", [small1, undefined]],
    ["aws.cert", [big2, undefined]],
  ]),
  final: new Map<string, Value>([["wifi.pass", undefined], ["aws.ca", undefined], ["wifi.ssid", undefined], ["aws.cert", undefined]]),
  allOrNothing: true,
};

test("every write, delete and factory reset survives a power cut at every step", (t) => {
  let cuts = 0;
  let nested = 0;
  for (const s of [...SCENARIOS, RESET]) {
    const report = checkCuts(s, reopen);
    t.deepEqual(report.violations, [], `${s.name}:\n${report.violations.slice(0, 5).join("\n")}`);
    t.true(report.cuts >= 2, `${s.name} must have steps to cut`);
    t.log(`${s.name}: ${report.cuts} cut points, ${report.nestedCuts} more inside the recovering open`);
    cuts += report.cuts;
    nested += report.nestedCuts;
  }
  t.log(`total: ${cuts} cut points + ${nested} nested = ${cuts + nested} power cuts, no secret ever missing, mixed or damaged`);
  t.true(cuts > 40);
  t.true(nested > 0, "some recoveries must have had work to do (garbage collection or finishing a reset)");
});

test("the checker catches a torn write: a naive in-place chunked writer fails it", (t) => {
  // Chunks overwritten in place, no generations, no head switch.
  const naive = {
    set(store: KeyValueStore, name: string, value: Uint8Array) {
      const n = Math.ceil(value.length / 3000);
      for (let i = 0; i < n; i++) store.write(`n${i}.${name}`, value.subarray(i * 3000, (i + 1) * 3000));
      store.write(`n.${name}`, Uint8Array.of(n));
    },
    reopen(store: KeyValueStore): Reopened {
      return {
        get(name) {
          const head = store.read(`n.${name}`);
          if (!head) return undefined;
          const parts: Uint8Array[] = [];
          for (let i = 0; i < head[0]; i++) parts.push(store.read(`n${i}.${name}`) ?? new Uint8Array(0));
          return new Uint8Array(Buffer.concat(parts));
        },
        damaged: () => [],
      };
    },
  };
  const report = checkCuts(
    {
      name: "naive overwrite",
      setup: (s) => naive.set(s, "cert", big1),
      mutate: (s) => naive.set(s, "cert", big2),
      allowed: new Map([["cert", [big1, big2]]]),
      final: new Map([["cert", big2]]),
    },
    naive.reopen,
  );
  t.true(report.violations.length > 0);
  t.log(`naive writer: ${report.violations.length} violations in ${report.cuts} cut points, e.g. ${report.violations[0]}`);
});
