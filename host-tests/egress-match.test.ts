/*
 * Egress matching against hostile names: named cases for every trick the
 * issue lists, then fast-check properties over generated hostile names. Each
 * property counts the names it tried (t.log) and, where a URL parser is the
 * yardstick, how many of them Node's WHATWG parser would have mapped onto an
 * allowed destination: a check written as `new URL(x).hostname === allowed`
 * would have let those through.
 */
import test from "ava";
import fc from "fast-check";
import { EgressGuard, normaliseHost, parseEgressConfig, type EgressRefusal } from "../modules/core/egress";

/** Carries a "k" and an "s" so the Kelvin sign and the long s have something to imitate. */
const BROKER = "a1k2s3d4e5f6g7-ats.iot.us-east-1.amazonaws.com";
const NTP = "time.aws.com";

const production = () =>
  new EgressGuard(parseEgressConfig({
    broker: BROKER,
    doorward: {
      egress: {
        profile: "production",
        allow: [
          { host: "<prefix>-ats.iot.<region>.amazonaws.com", port: 8883, purpose: "mqtt" },
          { host: NTP, port: 123, purpose: "ntp" },
        ],
      },
    },
  }));

const development = () =>
  new EgressGuard(parseEgressConfig({
    doorward: {
      egress: {
        profile: "development",
        allow: [{ host: "<prefix>-ats.iot.<region>.amazonaws.com", port: 8883, purpose: "mqtt" }, { host: NTP, port: 123, purpose: "ntp" }],
        development: [{ host: "127.0.0.1", port: 8883, purpose: "mqtt" }, { host: "localhost", port: 8884, purpose: "mqtt" }],
      },
    },
  }));

const mqtt = (guard: EgressGuard, host: unknown, port: unknown = 8883) => guard.check({ host, port, purpose: "mqtt", requester: "test" });

/** What a URL-based check would have made of the name (a special scheme: IDNA mapping, percent-decoding, IPv4 forms). */
function whatwgHost(raw: string): string | undefined {
  try {
    return new URL(`http://${raw}/`).hostname;
  } catch {
    return undefined;
  }
}

/** Only ASCII case changes and one trailing dot may reach an allowed name. */
function isBenignSpelling(raw: string, host: string): boolean {
  return /^[\x21-\x7e]*$/.test(raw) && raw.toLowerCase().replace(/\.$/, "") === host;
}

const totals = { tried: 0, whatwgWouldAllow: 0 };

// ------------------------------------------------------------------ named cases

test("case and one trailing dot normalise onto the allowed name; what is used is the normalised name", (t) => {
  const g = production();
  for (const raw of [BROKER, BROKER.toUpperCase(), `${BROKER}.`, "A1K2S3D4E5F6G7-Ats.IoT.Us-EaSt-1.AmazonAWS.Com."]) {
    const v = mqtt(g, raw);
    t.true(v.allowed, raw);
    t.is(v.allowed && v.host, BROKER);
  }
  t.true(g.check({ host: "TIME.AWS.COM.", port: 123, purpose: "ntp", requester: "test" }).allowed);
  const refused: Array<[string, EgressRefusal]> = [[`${BROKER}..`, "empty-label"], [`.${BROKER}`, "empty-label"], [".", "empty"], ["..", "empty-label"]];
  for (const [raw, reason] of refused) t.deepEqual(mqtt(g, raw), { allowed: false, reason, destination: `${raw}:8883` }, raw);
});

test("suffix, prefix and parent look-alikes are refused", (t) => {
  const g = production();
  for (const raw of [
    "x-ats.iot.us-east-1.amazonaws.com.evil.example",
    `${BROKER}.evil.example`,
    `${BROKER}-evil.example`,
    `evil.${BROKER}`,
    `evil${BROKER}`,
    "evilamazonaws.com",
    "amazonaws.com",
    "iot.us-east-1.amazonaws.com",
    "a1k2s3d4e5f6g7-ats.iot.us-east-1.amazonaws.co",
    "a1k2s3d4e5f6g7-ats.iot.us-east-2.amazonaws.com",
    "b1k2s3d4e5f6g7-ats.iot.us-east-1.amazonaws.com",
    "a1k2s3d4e5f6g7.iot.us-east-1.amazonaws.com",
    "time.aws.com.evil.example",
  ]) {
    const v = mqtt(g, raw);
    t.false(v.allowed, raw);
    t.is(!v.allowed && v.reason, "not-allowlisted", raw);
  }
});

test("IP literals are refused in every form; only canonical dotted quad can ever match (development stand-in)", (t) => {
  const prod = production();
  const dev = development();
  const forms: Array<[string, EgressRefusal]> = [
    ["2130706433", "ambiguous-ip"], // decimal
    ["017700000001", "ambiguous-ip"], // octal
    ["0x7f000001", "ambiguous-ip"], // hex
    ["0X7F000001", "ambiguous-ip"],
    ["0177.0.0.1", "ambiguous-ip"], // dotted octal
    ["0x7f.0.0.1", "ambiguous-ip"], // dotted hex
    ["127.1", "ambiguous-ip"], // short
    ["127.0.1", "ambiguous-ip"],
    ["127.000.000.001", "ambiguous-ip"],
    ["127.0.0.1.1", "ambiguous-ip"],
    ["256.0.0.1", "ambiguous-ip"],
    ["evil.example.0x7f", "ambiguous-ip"],
    ["evil.example.1", "ambiguous-ip"],
    ["::1", "ipv6-literal"], // IPv6
    ["[::1]", "ipv6-literal"],
    ["0:0:0:0:0:0:0:1", "ipv6-literal"],
    ["::ffff:127.0.0.1", "ipv6-literal"], // IPv4-mapped IPv6
    ["[::ffff:127.0.0.1]", "ipv6-literal"],
    ["::ffff:7f00:1", "ipv6-literal"],
    ["0:0:0:0:0:ffff:7f00:1", "ipv6-literal"],
    ["64:ff9b::7f00:1", "ipv6-literal"], // NAT64
    ["fe80::1%25eth0", "percent-encoding"],
  ];
  for (const [raw, reason] of forms) {
    for (const g of [prod, dev]) {
      const v = mqtt(g, raw);
      t.deepEqual(v.allowed ? "allowed" : v.reason, reason, `${raw} (${g.profile})`);
    }
  }
  // The canonical spelling is an IP literal too: never in production, and only as listed in development.
  t.is((mqtt(prod, "127.0.0.1") as { reason: string }).reason, "not-allowlisted");
  t.is((mqtt(prod, "52.94.236.248") as { reason: string }).reason, "not-allowlisted");
  const v = mqtt(dev, "127.0.0.1");
  t.true(v.allowed && v.kind === "ipv4" && v.host === "127.0.0.1");
  t.true(mqtt(dev, "127.0.0.1.").allowed);
  t.is((mqtt(dev, "127.0.0.2") as { reason: string }).reason, "not-allowlisted");
});

test("userinfo and port smuggling are refused before any matching", (t) => {
  const g = production();
  const cases: Array<[string, EgressRefusal]> = [
    [`user@${BROKER}`, "userinfo"],
    [`user:pass@${BROKER}`, "userinfo"],
    [`${BROKER}:443@evil.example`, "userinfo"],
    [`${BROKER}@evil.example`, "userinfo"],
    [`evil.example@${BROKER}`, "userinfo"],
    [`${BROKER}:8883`, "port-in-host"],
    [`${BROKER}:443`, "port-in-host"],
    [`evil.example:8883`, "port-in-host"],
    [`${BROKER}/evil.example`, "forbidden-character"],
    [`evil.example\\${BROKER}`, "forbidden-character"],
    [`evil.example?${BROKER}`, "forbidden-character"],
    [`evil.example#${BROKER}`, "forbidden-character"],
    [`${BROKER} evil.example`, "space-or-control"],
    [`${BROKER}\u0000.evil.example`, "space-or-control"],
    [`${BROKER}\r\n`, "space-or-control"],
    [`\t${BROKER}`, "space-or-control"],
    [`under_score.${BROKER}`, "bad-label"],
    [`-${BROKER}`, "bad-label"],
  ];
  for (const [raw, reason] of cases) t.is((mqtt(g, raw) as { reason?: string }).reason, reason, JSON.stringify(raw));
});

test("percent-encoding, punycode and Unicode look-alikes are refused, including those a URL parser maps onto the endpoint", (t) => {
  const g = production();
  const lookAlikes: Array<[string, EgressRefusal]> = [
    ["a1k2s3d4e5f6g7-ats.iot.us-east-1.amazonaws%2ecom", "percent-encoding"],
    ["%61" + BROKER.slice(1), "percent-encoding"],
    [BROKER.replace("a", "\u0430"), "not-ascii"], // Cyrillic a
    [BROKER.replace("o", "\u03bf"), "not-ascii"], // Greek omicron
    [BROKER.replace(".com", "\uff0ecom"), "not-ascii"], // fullwidth full stop
    [BROKER.replace(".com", "\u3002com"), "not-ascii"], // ideographic full stop
    [BROKER.replace(".com", "\uff61com"), "not-ascii"], // halfwidth ideographic full stop
    [BROKER.toUpperCase().replace("A", "\uff21"), "not-ascii"], // fullwidth A
    [BROKER.replace("k", "\u212a"), "not-ascii"], // Kelvin sign: "\u212a".toLowerCase() === "k"
    [BROKER.replace("s", "\u017f"), "not-ascii"], // long s: uppercases to S
    [BROKER.replace("i", "\u0131"), "not-ascii"], // dotless i
    [BROKER.replace("iot", "i\u200dot"), "not-ascii"], // zero-width joiner
    [BROKER.replace("iot", "i\u00adot"), "not-ascii"], // soft hyphen (IDNA deletes it)
    [BROKER + "\u0301", "not-ascii"], // combining mark
    ["xn--a1k2s3d4e5f6g7-ats-1234.iot.us-east-1.amazonaws.com", "not-allowlisted"], // punycode label
    ["a1k2s3d4e5f6g7-ats.iot.us-east-1.xn--amazonaws-8ib.com", "not-allowlisted"],
    ["xn--mazonaws-q8a.com", "not-allowlisted"],
  ];
  let mappedByUrl = 0;
  for (const [raw, reason] of lookAlikes) {
    t.is((mqtt(g, raw) as { reason?: string }).reason, reason, JSON.stringify(raw));
    if (whatwgHost(raw) === BROKER) mappedByUrl++;
  }
  // Fullwidth dots, the Kelvin sign, long s, soft hyphen, fullwidth A and %2e all become the real endpoint under WHATWG URL parsing.
  t.true(mappedByUrl >= 6, `only ${mappedByUrl} look-alikes map onto the endpoint under WHATWG: the table lost its teeth`);
  t.log(`${mappedByUrl} of ${lookAlikes.length} named look-alikes are the endpoint itself to a WHATWG URL parser; all refused`);
});

test("empty, over-long and non-string names are refused", (t) => {
  const g = production();
  const label63 = "a".repeat(63);
  const name253 = [label63, label63, label63, "a".repeat(61)].join(".");
  t.is(name253.length, 253);
  t.deepEqual(normaliseHost(name253), { ok: true, host: name253, kind: "name" });
  t.deepEqual(normaliseHost(name253 + "."), { ok: true, host: name253, kind: "name" });
  const cases: Array<[unknown, EgressRefusal]> = [
    ["", "empty"],
    [name253 + "a", "too-long"],
    [name253 + "..", "too-long"],
    ["a".repeat(64) + ".example", "label-too-long"],
    ["a".repeat(100_000), "too-long"],
    [`${"a.".repeat(200)}${BROKER}`, "too-long"],
    [undefined, "not-a-string"],
    [null, "not-a-string"],
    [2130706433, "not-a-string"],
    [{ toString: () => BROKER }, "not-a-string"],
    [[BROKER], "not-a-string"],
  ];
  for (const [raw, reason] of cases) t.is((mqtt(g, raw) as { reason?: string }).reason, reason, String(raw).slice(0, 40));
});

test("an allowed host on the wrong port or for the wrong purpose is refused; ports must be integers", (t) => {
  const g = production();
  for (const port of [443, 1883, 80, 8884, 123, 1, 65535]) t.is((mqtt(g, BROKER, port) as { reason?: string }).reason, "wrong-port", String(port));
  for (const port of ["8883", 8883.5, 0, 65536, -8883, Number.NaN, Infinity, undefined, null, 8883n]) {
    t.is((g.check({ host: BROKER, port, purpose: "mqtt", requester: "t" }) as { reason?: string }).reason, "bad-port", String(port));
  }
  t.is((g.check({ host: NTP, port: 8883, purpose: "ntp", requester: "t" }) as { reason?: string }).reason, "wrong-port");
  t.is((g.check({ host: NTP, port: 123, purpose: "mqtt", requester: "t" }) as { reason?: string }).reason, "wrong-purpose");
  t.is((g.check({ host: BROKER, port: 8883, purpose: "ntp", requester: "t" }) as { reason?: string }).reason, "wrong-purpose");
  // DNS look-ups: only names the allowlist holds.
  t.true(g.checkName(BROKER.toUpperCase(), "t").allowed);
  t.false(g.checkName("evil.example", "t").allowed);
  t.false(g.checkName("2130706433", "t").allowed);
});

// ------------------------------------------------------------------ properties

const RUNS = 3000;

/** Confusable replacements for ASCII characters of the endpoint. */
const CONFUSABLE: Record<string, string[]> = {
  a: ["\u0430", "\u0251", "\uff41", "\u00e0", "\u1d00"],
  e: ["\u0435", "\uff45", "\u00e9"],
  o: ["\u043e", "\u03bf", "\uff4f", "\u00f6", "\u0ce6"],
  i: ["\u0456", "\u0131", "\uff49", "\u00ed", "\u2170"],
  c: ["\u0441", "\u217d", "\uff43"],
  s: ["\u0455", "\u017f", "\uff53"],
  t: ["\uff54", "\u0442"],
  m: ["\uff4d", "\u217f"],
  k: ["\u212a", "\uff4b"],
  z: ["\uff5a", "\u1d22"],
  n: ["\uff4e", "\u0578"],
  w: ["\uff57", "\u051d"],
  "-": ["\u2010", "\u2011", "\u2212", "\uff0d", "\u00ad"],
  ".": ["\uff0e", "\u3002", "\uff61", "\u2024", "\u00b7"],
  "1": ["\uff11", "\u0661", "\u2460", "l"],
};

test("property: arbitrary strings reach an allowed destination only as a case/trailing-dot spelling of it", (t) => {
  const g = production();
  let tried = 0;
  let urlMapped = 0;
  const spelled = fc.oneof(
    fc.string({ unit: "binary", maxLength: 300 }),
    fc.string({ unit: "grapheme", maxLength: 80 }),
    fc.mixedCase(fc.constantFrom(BROKER, `${BROKER}.`, NTP)),
    fc.tuple(fc.string({ maxLength: 6 }), fc.mixedCase(fc.constant(BROKER)), fc.string({ maxLength: 6 })).map(([a, b, c]) => a + b + c),
  );
  fc.assert(
    fc.property(spelled, fc.constantFrom(8883, 123), (raw, port) => {
      tried++;
      const v = g.check({ host: raw, port, purpose: port === 123 ? "ntp" : "mqtt", requester: "prop" });
      const target = port === 123 ? NTP : BROKER;
      if (whatwgHost(raw) === target && !isBenignSpelling(raw, target)) urlMapped++;
      return v.allowed ? isBenignSpelling(raw, target) && v.host === target : !isBenignSpelling(raw, target);
    }),
    { numRuns: RUNS * 3 },
  );
  totals.tried += tried;
  totals.whatwgWouldAllow += urlMapped;
  t.log(`${tried} names tried, ${urlMapped} of them map onto an allowed host under WHATWG URL parsing`);
  t.true(tried >= RUNS * 3);
});

test("property: look-alikes around the endpoint (suffixes, prefixes, userinfo, ports, paths) are refused", (t) => {
  const g = production();
  let tried = 0;
  const sep = fc.constantFrom(".", "-", "", "@", ":", ":443@", "/", "\\", "?", "#", "%2e", "%40", ";", ",", "_");
  const piece = fc.oneof(fc.domain(), fc.webAuthority({ withUserInfo: true, withPort: true, withIPv4: true, withIPv4Extended: true, withIPv6: true }), fc.constantFrom("evil.example", "amazonaws.com", "com", "attacker", "443", "8883"));
  const wrapped = fc.tuple(fc.option(fc.tuple(piece, sep)), fc.mixedCase(fc.constant(BROKER)), fc.option(fc.tuple(sep, piece))).filter(([pre, , post]) => pre !== null || post !== null);
  fc.assert(
    fc.property(wrapped, ([pre, host, post]) => {
      tried++;
      const raw = `${pre ? pre[0] + pre[1] : ""}${host}${post ? post[0] + post[1] : ""}`;
      return !mqtt(g, raw).allowed;
    }),
    { numRuns: RUNS },
  );
  totals.tried += tried;
  t.log(`${tried} wrapped look-alikes tried, all refused`);
  t.true(tried >= RUNS);
});

test("property: IP literals in every form (dotted, decimal, octal, hex, short, IPv6, IPv4-mapped) never match, except the listed canonical one", (t) => {
  const prod = production();
  const dev = development();
  let tried = 0;
  let loopbackForms = 0;
  const u32 = fc.integer({ min: 0, max: 0xffffffff });
  const ipForm = fc.oneof(
    fc.ipV4(),
    fc.ipV4Extended(),
    u32.map((n) => String(n)),
    u32.map((n) => `0x${n.toString(16)}`),
    u32.map((n) => `0${n.toString(8)}`),
    fc.tuple(fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 0xffffff })).map(([a, b]) => `${a}.${b}`),
    fc.ipV6(),
    fc.ipV6().map((a) => `[${a}]`),
    fc.oneof(fc.ipV4(), fc.ipV4Extended()).map((a) => `::ffff:${a}`),
    fc.ipV4().map((a) => `[::ffff:${a}]`),
    fc.ipV4().map((a) => { const [w, x, y, z] = a.split(".").map(Number); return `::ffff:${((w << 8) | x).toString(16)}:${((y << 8) | z).toString(16)}`; }),
    // Every spelling of 127.0.0.1, the one address a development build may list.
    fc.constantFrom("127.0.0.1", "127.1", "127.0.1", "2130706433", "0x7f000001", "017700000001", "0177.0.0.1", "0x7f.0.0.1", "0x7f.0x0.0x0.0x1", "127.0.0.01", "127.00.0.1", "0127.0.0.1", "::ffff:127.0.0.1", "::ffff:7f00:1", "[::ffff:127.0.0.1]", "::1", "127.0.0.1."),
  );
  fc.assert(
    fc.property(fc.mixedCase(ipForm), (raw) => {
      tried++;
      if (mqtt(prod, raw).allowed) return false;
      const v = mqtt(dev, raw);
      const isLoopbackForm = whatwgHost(raw) === "127.0.0.1" || /^\[?::ffff:(127\.0\.0\.1|7f00:1)\]?$/i.test(raw);
      if (isLoopbackForm && raw !== "127.0.0.1" && raw !== "127.0.0.1.") loopbackForms++;
      return v.allowed ? raw === "127.0.0.1" || raw === "127.0.0.1." : true;
    }),
    { numRuns: RUNS },
  );
  totals.tried += tried;
  t.log(`${tried} IP literals tried; ${loopbackForms} were other spellings of the allowed 127.0.0.1, all refused`);
  t.true(loopbackForms > 0, "the generator must produce other spellings of 127.0.0.1");
});

test("property: percent-encoded, punycode and Unicode look-alikes of the endpoint are refused", (t) => {
  const g = production();
  let tried = 0;
  let urlMapped = 0;
  const chars = [...BROKER];
  const positions = fc.uniqueArray(fc.integer({ min: 0, max: chars.length - 1 }), { minLength: 1, maxLength: 4 });
  const percent = fc.tuple(positions, fc.boolean()).map(([at, upper]) =>
    chars.map((c, i) => (at.includes(i) ? `%${c.charCodeAt(0).toString(16).padStart(2, "0")}` : c)).join("")[upper ? "toUpperCase" : "toString"](),
  );
  const confusable = fc.tuple(fc.uniqueArray(fc.integer({ min: 0, max: chars.length - 1 }), { minLength: 1, maxLength: 3 }), fc.nat()).map(([at, pick]) =>
    chars.map((c, i) => (at.includes(i) && CONFUSABLE[c] ? CONFUSABLE[c][pick % CONFUSABLE[c].length] : c)).join(""),
  ).filter((s) => s !== BROKER);
  const labels = BROKER.split(".");
  const puny = fc.tuple(fc.integer({ min: 0, max: labels.length - 1 }), fc.stringMatching(/^[a-z0-9]{1,20}(-[a-z0-9]{1,6})?$/)).map(([at, tail]) =>
    labels.map((l, i) => (i === at ? `xn--${l.replace(/-/g, "")}-${tail}` : l)).join("."),
  );
  const invisible = fc.tuple(fc.integer({ min: 0, max: chars.length }), fc.constantFrom("\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u034f", "\u180e", "\u0301")).map(([at, c]) => BROKER.slice(0, at) + c + BROKER.slice(at));
  fc.assert(
    fc.property(fc.oneof(percent, confusable, puny, invisible), (raw) => {
      tried++;
      if (whatwgHost(raw) === BROKER) urlMapped++;
      return !mqtt(g, raw).allowed;
    }),
    { numRuns: RUNS * 2 },
  );
  totals.tried += tried;
  totals.whatwgWouldAllow += urlMapped;
  t.log(`${tried} encoded/punycode/Unicode look-alikes tried, ${urlMapped} of them are the endpoint itself to a WHATWG URL parser; all refused`);
  t.true(urlMapped > 0, "the generator must produce look-alikes a URL parser maps onto the endpoint");
});

test("property: empty and over-long names, and wrong ports for the allowed hosts, are refused", (t) => {
  const g = production();
  let tried = 0;
  // At least seven labels of 37-63 characters: always past 253 (no filter, which would rarely pass).
  const longName = fc.array(fc.stringMatching(/^[a-z0-9]{37,63}$/), { minLength: 7, maxLength: 12 }).map((ls) => ls.join("."));
  const longLabel = fc.integer({ min: 64, max: 300 }).map((n) => `${"x".repeat(n)}.${BROKER}`);
  const emptyish = fc.constantFrom("", ".", "..", "...", " ", "\u0000", "\t", ".".repeat(300));
  fc.assert(
    fc.property(fc.oneof(longName, longLabel, emptyish), (raw) => {
      tried++;
      const v = mqtt(g, raw);
      return !v.allowed && ["empty", "empty-label", "too-long", "label-too-long", "space-or-control"].includes(v.reason);
    }),
    { numRuns: RUNS },
  );
  fc.assert(
    fc.property(fc.integer({ min: -70000, max: 140000 }), fc.mixedCase(fc.constantFrom(BROKER, NTP)), (port, host) => {
      tried++;
      const purpose = host.toLowerCase() === NTP ? "ntp" : "mqtt";
      const v = g.check({ host, port, purpose, requester: "prop" });
      const right = purpose === "ntp" ? 123 : 8883;
      return v.allowed === (port === right);
    }),
    { numRuns: RUNS },
  );
  totals.tried += tried;
  t.log(`${tried} empty, over-long and wrong-port attempts tried, all refused`);
  t.true(tried >= RUNS * 2);
});

test.after.always("hostile names tried in total", (t) => {
  t.log(`property tests tried ${totals.tried} hostile names; ${totals.whatwgWouldAllow} of them a WHATWG URL parser maps onto an allowed host; the guard allowed none of them`);
});
