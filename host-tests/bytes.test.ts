import test from "ava";
import fc from "fast-check";
import { utf8Encode, utf8Decode, toBase64Url, fromBase64Url, toHex, fromHex, u64be, bytesEqual } from "../modules/core/bytes";

test("utf8 matches Node's encoder for all well-formed strings", (t) => {
  fc.assert(fc.property(fc.string({ unit: "grapheme" }), (s) => Buffer.from(utf8Encode(s)).equals(Buffer.from(s, "utf8")) && utf8Decode(utf8Encode(s)) === s), { numRuns: 3000 });
  t.pass();
});

test("utf8Decode rejects malformed input: truncated, overlong, surrogates, stray continuation", (t) => {
  for (const bad of [[0xe2, 0x82], [0xc0, 0xaf], [0xed, 0xa0, 0x80], [0x80], [0xf5, 0x80, 0x80, 0x80], [0xf0, 0x9f, 0x98]]) {
    t.throws(() => utf8Decode(Uint8Array.from(bad)), undefined, JSON.stringify(bad));
  }
});

test("base64url and hex round-trip and match Node; strict decoding", (t) => {
  fc.assert(fc.property(fc.uint8Array({ maxLength: 100 }), (b) => {
    const s = toBase64Url(b);
    return s === Buffer.from(b).toString("base64url") && bytesEqual(fromBase64Url(s), b) && bytesEqual(fromHex(toHex(b)), b);
  }), { numRuns: 2000 });
  t.throws(() => fromBase64Url("AB=="));
  t.throws(() => fromBase64Url("A+"));
  t.throws(() => fromBase64Url("AB")); // non-zero trailing bits
  t.throws(() => fromHex("ABCD"));
});

test("u64be encodes safe integers big-endian and refuses others", (t) => {
  t.deepEqual([...u64be(0x0102030405)], [0, 0, 0, 1, 2, 3, 4, 5]);
  t.deepEqual([...u64be(Number.MAX_SAFE_INTEGER)], [0, 0x1f, 255, 255, 255, 255, 255, 255]);
  t.throws(() => u64be(-1));
  t.throws(() => u64be(1.5));
});
