/*
 * The allowlist as built: what manifest.json gives each platform (mcconfig's
 * merge, the same function the host uses), that a production build carries
 * exactly the ATS endpoint and the NTP host and refuses anything else, and
 * that its trust store is exactly Amazon Root CA 1 and 3.
 */
import test from "ava";
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {
  AMAZON_ROOTS, AMAZON_ROOT_RESOURCES, EgressConfigError, EgressGuard, parseEgressConfig, trustAnchorNamesProblem, trustStoreProblem, withDevelopmentEntries,
  type Allowlist,
} from "../modules/core/egress";
import { loopbackEgress, manifestAllowlist, manifestConfig, simulatorEgress } from "../modules/host/egress";
import { ensureDevPki } from "../tools/pki";

/** Every board the manifest builds for (the esp32/* catch-all only says there is no pin map). */
const BOARDS = Object.keys(JSON.parse(fs.readFileSync("manifest.json", "utf8")).platforms).filter((p) => p.startsWith("esp32/") && p !== "esp32/*");
const ENDPOINT = "abc123xyz-ats.iot.eu-west-1.amazonaws.com";
/** As Amazon publishes them (amazontrust.com/repository), SHA-256 of the DER. */
const AMAZON_SHA256: Record<string, string> = {
  "AmazonRootCA1.der": "8ecde6884f3d87b1125ba31ac3fcb13d7016de7f57cc904fe1cb97c6ae98196e",
  "AmazonRootCA3.der": "18ce6cfe7bf14e60b2e347b8dfe868cb31d02ebb3ada271569f50343b46db3a4",
};

const summary = (a: Allowlist) => a.entries.map((e) => `${e.purpose} ${e.host}:${e.port}${e.alpn ? ` ${e.alpn}` : ""}${e.development ? " dev" : ""}`);

function prodConfig(egress: Record<string, unknown>, extra: Record<string, unknown> = {}) {
  return { broker: ENDPOINT, ...extra, doorward: { egress } };
}
const ATS = { host: "<prefix>-ats.iot.<region>.amazonaws.com", port: 8883, purpose: "mqtt" };
const TIME = { host: "time.aws.com", port: 123, purpose: "ntp" };

test("every board build carries exactly the configured ATS endpoint and the NTP host, frozen; without broker= it refuses to start", (t) => {
  for (const board of BOARDS) {
    const config = manifestConfig(board);
    t.throws(() => parseEgressConfig(config), { instanceOf: EgressConfigError, message: /placeholder.*broker=/ }, board);
    const allowlist = parseEgressConfig({ ...config, broker: ENDPOINT });
    t.is(allowlist.profile, "production");
    t.deepEqual(summary(allowlist), [`mqtt ${ENDPOINT}:8883`, "ntp time.aws.com:123"], board);
    t.true(Object.isFrozen(allowlist) && Object.isFrozen(allowlist.entries) && allowlist.entries.every((e) => Object.isFrozen(e)));
    t.throws(() => (allowlist.entries as unknown as unknown[]).push({ host: "evil.example", port: 443, purpose: "mqtt", development: false }), { instanceOf: TypeError });
    t.throws(() => { (allowlist.entries[0] as { host: string }).host = "evil.example"; }, { instanceOf: TypeError });
    t.is(allowlist.entries[0].host, ENDPOINT);
    // brokerPort=443 needs the ALPN AWS uses for device certificates there.
    t.throws(() => parseEgressConfig({ ...config, broker: ENDPOINT, brokerPort: "443" }), { instanceOf: EgressConfigError, message: /x-amzn-mqtt-ca/ });
  }
});

test("the simulator build (lin) is development: the local stand-in is its only addition", (t) => {
  const allowlist = manifestAllowlist("lin");
  t.is(allowlist.profile, "development");
  const dev = allowlist.entries.filter((e) => e.development);
  t.deepEqual(dev.map((e) => `${e.host}:${e.port}`), ["127.0.0.1:8883"]);
  t.deepEqual(allowlist.entries.filter((e) => !e.development).map((e) => e.host), ["time.aws.com"], "the ATS placeholder is simply absent in development");
  // The host simulator adds the stand-in where it listens now, and nothing off loopback.
  const sim = simulatorEgress({ standinPort: 40123 });
  t.true(sim.guard.check({ host: "127.0.0.1", port: 40123, purpose: "mqtt", requester: "t" }).allowed);
  t.false(sim.guard.check({ host: "127.0.0.1", port: 40124, purpose: "mqtt", requester: "t" }).allowed);
  t.throws(() => withDevelopmentEntries(allowlist, [{ host: "192.0.2.1", port: 8883, purpose: "mqtt" }]), { instanceOf: EgressConfigError, message: /stand-in/ });
  t.throws(() => loopbackEgress("evil.example", 8883), { instanceOf: EgressConfigError, message: /not loopback/ });
  t.throws(() => loopbackEgress("127.1", 8883), { instanceOf: EgressConfigError });
});

test("each platform's own broker and NTP settings are on its allowlist", (t) => {
  for (const platform of [...BOARDS, "lin"]) {
    const config: Record<string, unknown> = { ...manifestConfig(platform), ...(platform === "lin" ? {} : { broker: ENDPOINT }) };
    const guard = new EgressGuard(parseEgressConfig(config));
    const dw = config.doorward as { broker: { host: string; port: number }; time?: { source: string; host?: string } };
    const host = platform === "lin" ? dw.broker.host : ENDPOINT;
    t.true(guard.check({ host, port: dw.broker.port, purpose: "mqtt", requester: "t" }).allowed, `${platform}: broker ${host}:${dw.broker.port}`);
    if (dw.time?.source === "sntp") {
      // The NTP host is named by the allowlist itself, or, if the time settings name one, it must be the allowlist's.
      const ntp = guard.allowlist.entries.filter((e) => e.purpose === "ntp");
      t.is(ntp.length, 1, `${platform}: one NTP host`);
      if (dw.time.host !== undefined) t.true(guard.check({ host: dw.time.host, port: ntp[0].port, purpose: "ntp", requester: "t" }).allowed, `${platform}: NTP ${dw.time.host}`);
    }
  }
});

test("the SDK's setup/network runs no SNTP of its own: time comes through the chokepoint", (t) => {
  // examples/manifest_net.json (included by manifest.json) sets config.sntp = "pool.ntp.org", and the SDK's
  // esp32 setup/network then asks that host before main runs, unchecked. SNTP belongs to device/egress.
  for (const board of BOARDS) {
    const sntp = manifestConfig(board).sntp;
    t.true(sntp === "" || sntp === false, `${board}: config.sntp is ${JSON.stringify(sntp)} (the SDK default "pool.ntp.org" applies when absent)`);
    t.true(BOARDS.length >= 3);
  }
});

test("a production build refuses development entries, local or literal hosts, non-ATS brokers and anything beyond the two entries", (t) => {
  const bad: Array<[string, Record<string, unknown>, Record<string, unknown>?]> = [
    ["development entries", { profile: "production", allow: [ATS, TIME], development: [{ host: "127.0.0.1", port: 8883, purpose: "mqtt" }] }],
    ["loopback broker", { profile: "production", allow: [ATS, TIME] }, { broker: "127.0.0.1" }],
    ["localhost broker", { profile: "production", allow: [ATS, TIME] }, { broker: "localhost" }],
    ["non-ATS broker", { profile: "production", allow: [ATS, TIME] }, { broker: "mqtt.evil.example" }],
    ["legacy (non-ATS) AWS endpoint", { profile: "production", allow: [ATS, TIME] }, { broker: "abc123xyz.iot.eu-west-1.amazonaws.com" }],
    ["ATS look-alike", { profile: "production", allow: [ATS, TIME] }, { broker: `${ENDPOINT}.evil.example` }],
    ["third entry", { profile: "production", allow: [ATS, TIME, { host: "updates.evil.example", port: 443, purpose: "mqtt" }] }],
    ["second NTP host", { profile: "production", allow: [ATS, TIME, { host: "pool.ntp.org", port: 123, purpose: "ntp" }] }],
    ["no NTP host", { profile: "production", allow: [ATS] }],
    ["NTP on a literal address", { profile: "production", allow: [ATS, { host: "192.0.2.123", port: 123, purpose: "ntp" }] }],
    ["NTP on a .local name", { profile: "production", allow: [ATS, { host: "ntp.local", port: 123, purpose: "ntp" }] }],
    ["NTP on another port", { profile: "production", allow: [ATS, { ...TIME, port: 1123 }] }],
    ["443 without ALPN", { profile: "production", allow: [{ ...ATS, port: 443 }, TIME] }],
    ["8883 with the 443 ALPN", { profile: "production", allow: [{ ...ATS, alpn: "x-amzn-mqtt-ca" }, TIME] }],
    ["unknown purpose", { profile: "production", allow: [ATS, TIME, { host: "example.com", port: 443, purpose: "http" }] }],
    ["unknown entry key", { profile: "production", allow: [ATS, { ...TIME, via: "proxy" }] }],
    ["unknown egress key", { profile: "production", allow: [ATS, TIME], extra: [] }],
    ["no profile", { allow: [ATS, TIME] }],
    ["hostile host", { profile: "production", allow: [ATS, { ...TIME, host: "time.aws.com@evil.example" }] }],
    ["duplicate", { profile: "development", allow: [TIME, TIME] }],
    ["non-loopback development entry", { profile: "development", allow: [TIME], development: [{ host: "192.168.1.10", port: 8883, purpose: "mqtt" }] }],
  ];
  for (const [why, egress, extra] of bad) t.throws(() => parseEgressConfig(prodConfig(egress, extra)), { instanceOf: EgressConfigError }, why);
  t.deepEqual(summary(parseEgressConfig(prodConfig({ profile: "production", allow: [{ ...ATS, port: 443, alpn: "x-amzn-mqtt-ca" }, TIME] }))), [`mqtt ${ENDPOINT}:443 x-amzn-mqtt-ca`, "ntp time.aws.com:123"]);
  // A hand-built list cannot slip past the guard: unfrozen, or production with a development entry.
  t.throws(() => new EgressGuard({ profile: "development", entries: [] }), { instanceOf: EgressConfigError, message: /frozen/ });
  const smuggled = Object.freeze({ profile: "production" as const, entries: Object.freeze([Object.freeze({ host: "127.0.0.1", port: 8883, purpose: "mqtt" as const, development: true })]) });
  t.throws(() => new EgressGuard(smuggled), { instanceOf: EgressConfigError, message: /development/ });
  t.throws(() => withDevelopmentEntries(parseEgressConfig(prodConfig({ profile: "production", allow: [ATS, TIME] })), [{ host: "127.0.0.1", port: 1, purpose: "mqtt" }]), { instanceOf: EgressConfigError });
});

test("the production trust store is exactly Amazon Root CA 1 and CA 3; the development CA is refused in production", async (t) => {
  const manifest = JSON.parse(fs.readFileSync("manifest.json", "utf8"));
  const resources = ([manifest.resources["*"]].flat() as string[]).map((r) => path.basename(r) + ".der").sort();
  t.deepEqual(resources, [...AMAZON_ROOT_RESOURCES].sort(), "manifest resources");
  for (const platform of [...BOARDS, "lin"]) {
    const names = (manifestConfig(platform).doorward as { trustAnchors: string[] }).trustAnchors;
    t.deepEqual([...names].sort(), [...AMAZON_ROOT_RESOURCES].sort(), `${platform} trustAnchors`);
    t.is(trustAnchorNamesProblem("production", names), undefined);
  }
  t.regex(trustAnchorNamesProblem("production", ["AmazonRootCA1.der", "dev-ca.der"]) ?? "", /not an Amazon root/);
  const ders = AMAZON_ROOT_RESOURCES.map((n) => new Uint8Array(fs.readFileSync(path.join("certs", n))));
  AMAZON_ROOT_RESOURCES.forEach((n, i) => {
    t.is(crypto.createHash("sha256").update(ders[i]).digest("hex"), AMAZON_SHA256[n], `${n} is the certificate Amazon publishes`);
    t.is(crypto.createHash("sha512").update(ders[i]).digest("hex"), AMAZON_ROOTS[i].sha512, `${n} is the one the core pins`);
  });
  t.is(trustStoreProblem("production", ders), undefined);
  const pki = await ensureDevPki(fs.mkdtempSync(path.join(os.tmpdir(), "dw-egress-pki-")));
  const devCa = new Uint8Array(new crypto.X509Certificate(pki.ca.certPem).raw);
  t.regex(trustStoreProblem("production", [devCa]) ?? "", /not Amazon Root CA 1 or 3/);
  t.regex(trustStoreProblem("production", [ders[0], devCa]) ?? "", /not Amazon Root CA/);
  t.regex(trustStoreProblem("production", []) ?? "", /no trust anchor/);
  const tampered = ders[0].slice();
  tampered[tampered.length - 1] ^= 1;
  t.truthy(trustStoreProblem("production", [tampered]));
  t.is(trustStoreProblem("development", [devCa]), undefined, "a development build carries the local CA");
  const prod = new EgressGuard(parseEgressConfig(prodConfig({ profile: "production", allow: [ATS, TIME] })));
  t.throws(() => prod.assertTrustStore([devCa]), { instanceOf: EgressConfigError });
  t.notThrows(() => prod.assertTrustStore(ders));
});
