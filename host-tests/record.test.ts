import test from "ava";
import { crc32, decodeRecord, encodeJsonRecord, encodeRecord, readJsonRecord, readRecord, recordOverhead } from "../modules/core/record";
import { MemoryStore } from "../modules/host/file-store";
import { utf8Encode } from "../modules/core/bytes";
import type { KeyValueStore } from "../modules/core/ports";

const body = utf8Encode('{"n":42}');

test("crc32 matches the zlib check value", (t) => {
  t.is(crc32(utf8Encode("123456789")), 0xcbf43926);
});

test("a record reads back as what was written, with the stated overhead", (t) => {
  const r = encodeRecord("seq", body);
  t.is(r.length, body.length + recordOverhead("seq"));
  const read = decodeRecord(r, "seq");
  t.is(read.state, "ok");
  if (read.state === "ok") t.deepEqual([...read.body], [...body]);
});

test("missing, short, every single bit flip and every truncation are told apart from intact", (t) => {
  t.deepEqual(decodeRecord(undefined, "seq"), { state: "missing" });
  const r = encodeRecord("ob", utf8Encode("payload bytes of an entry"));
  for (let i = 0; i < r.length; i++) {
    for (let bit = 0; bit < 8; bit++) {
      const d = r.slice();
      d[i] ^= 1 << bit;
      t.is(decodeRecord(d, "ob").state, "damaged", `flip byte ${i} bit ${bit}`);
    }
  }
  for (let n = 0; n < r.length; n++) t.is(decodeRecord(r.subarray(0, n), "ob").state, "damaged", `truncated to ${n}`);
  t.is(decodeRecord(new Uint8Array(0), "ob").state, "damaged");
});

test("a damaged record still names its kind when its header is legible", (t) => {
  const r = encodeRecord("ob-ledger", body);
  r[r.length - 1] ^= 0xff;
  const read = decodeRecord(r, "ob-ledger");
  t.is(read.state, "damaged");
  if (read.state === "damaged") t.is(read.kind, "ob-ledger");
});

test("an intact record of another kind is refused", (t) => {
  const read = decodeRecord(encodeRecord("boot", body), "seq");
  t.is(read.state, "damaged");
  if (read.state === "damaged") t.regex(read.reason, /boot/);
});

test("a keyed record needs its key and refuses a forged tag", (t) => {
  const mac = (key: number) => (framed: Uint8Array) => Uint8Array.from({ length: 16 }, (_, i) => (crc32(framed) >>> (i % 4) * 8) ^ key ^ i);
  const r = encodeRecord("upd.floor", body, { tag: mac(7) });
  t.is(decodeRecord(r, "upd.floor", { tag: mac(7) }).state, "ok");
  t.is(decodeRecord(r, "upd.floor", { tag: mac(8) }).state, "damaged");
  t.is(decodeRecord(r, "upd.floor").state, "damaged");
  t.is(decodeRecord(encodeRecord("upd.floor", body), "upd.floor", { tag: mac(7) }).state, "damaged", "a CRC-only record is not authenticated");
});

test("a store that throws on read (a foreign value, a directory) reads as damaged; JSON bodies are parsed bounded", (t) => {
  const throwing: KeyValueStore = { read: () => { throw new Error("EISDIR"); }, write: () => {}, delete: () => {}, keys: () => [] };
  const read = readRecord(throwing, "ob.3", "ob");
  t.is(read.state, "damaged");
  const store = new MemoryStore();
  store.write("dw.seq.hw", encodeJsonRecord("seq", { n: 7 }));
  t.deepEqual(readJsonRecord(store, "dw.seq.hw", "seq"), { state: "ok", value: { n: 7 } });
  store.write("deep", encodeRecord("seq", utf8Encode("[".repeat(1900) + "]".repeat(1900))));
  t.is(readJsonRecord(store, "deep", "seq").state, "damaged");
  store.write("loose", encodeRecord("seq", utf8Encode('{ "n": 7 }')));
  t.is(readJsonRecord(store, "loose", "seq").state, "damaged");
});
