import test from "ava";
import fc from "fast-check";
import { canonicalString, canonicalBytes, parseCanonical, type Json } from "../modules/core/canonical";
import { utf8Encode, utf8Decode } from "../modules/core/bytes";

test("RFC 8785 §3.2.2 example: sorting, escapes and numbers", (t) => {
  const value = JSON.parse('{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001],"string":"\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/","literals":[null,true,false]}');
  t.is(
    canonicalString(value),
    '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}',
  );
});

test("members sort by UTF-16 code units (RFC 8785 §3.2.3 example)", (t) => {
  const value = { "\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh", "1": "One", "\ud83d\ude00": "Emoji: Grinning Face", "\u0080": "Control", "\u00f6": "Latin Small Letter O With Diaeresis" };
  // Read the names back in text order: JS object key order would put "1" first.
  const text = canonicalString(value);
  const names = [...text.matchAll(/"((?:[^"\\]|\\.)*)":/g)].map((m) => JSON.parse(`"${m[1]}"`));
  t.deepEqual(names, ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\ud83d\ude00", "\ufb33"]);
});

test("errors instead of guesses: lone surrogates, non-finite numbers, undefined, deep nesting", (t) => {
  t.throws(() => canonicalString("\ud800" as Json), { message: /lone surrogate/ });
  t.throws(() => canonicalString(Infinity), { message: /non-finite/ });
  t.throws(() => canonicalString({ a: undefined } as unknown as Json), { message: /undefined/ });
  let deep: Json = 1;
  for (let i = 0; i < 40; i++) deep = [deep];
  t.throws(() => canonicalString(deep), { message: /too deep/ });
});

test("parseCanonical rejects anything that is not byte-for-byte canonical", (t) => {
  const ok = utf8Encode('{"a":1,"b":[true,null]}');
  t.deepEqual(parseCanonical(ok, 100), { a: 1, b: [true, null] });
  for (const bad of ['{"b":1,"a":2}', '{"a": 1}', '{"a":1,"a":1}', '{"a":1.0}', '{"a":"\\u0041"}', '{"a":1}\n']) {
    t.throws(() => parseCanonical(utf8Encode(bad), 100), undefined, bad);
  }
  t.throws(() => parseCanonical(ok, 10), { message: /larger than/ });
});

const jsonValue = fc.letrec((tie) => ({
  value: fc.oneof(
    { depthSize: "small" },
    fc.constant(null), fc.boolean(), fc.integer(), fc.double({ noNaN: true, noDefaultInfinity: true }), fc.string({ unit: "grapheme" }),
    fc.array(tie("value"), { maxLength: 4 }),
    fc.dictionary(fc.string({ unit: "grapheme", maxLength: 6 }), tie("value"), { maxKeys: 4 }),
  ),
})).value as fc.Arbitrary<Json>;

test("property: canonical output agrees with JSON.parse and is a fixed point", (t) => {
  fc.assert(
    fc.property(jsonValue, (v) => {
      const text = canonicalString(v);
      const back = JSON.parse(text);
      return canonicalString(back) === text && utf8Decode(canonicalBytes(v)) === text;
    }),
    { numRuns: 2000 },
  );
  t.pass();
});
