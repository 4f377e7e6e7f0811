/*
 * Refused egress, reported: every refusal is counted per (destination,
 * requester, reason), and reported to the owner as a signed audit event from
 * the real Doorbell, at most one report per interval however hard something
 * inside the device hammers the guard. The reports are opened and verified as
 * the cloud would (tools/verifier), and their counts add up to the refusals.
 */
import test from "ava";
import { Doorbell } from "../modules/core/doorbell";
import { EgressGuard, parseEgressConfig } from "../modules/core/egress";
import { AckingTransport } from "./helpers/acking-transport";
import { EventVerifier } from "../tools/verifier";
import { MemoryStore } from "../tools/xs/deterministic";
import { seededRandom } from "./helpers/crypto";
import { ManualClock } from "./helpers/manual-clock";

const THING = "audit-porch";
const BROKER = "abc123xyz-ats.iot.eu-west-1.amazonaws.com";
const MINUTE = 60_000;

const settle = async () => { for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r)); };

function rig(options: { maxTracked?: number } = {}) {
  const clock = new ManualClock();
  const transport = new AckingTransport();
  const logs: string[] = [];
  const doorbell = new Doorbell({
    thing: THING, signingSeed: new Uint8Array(32).fill(5), clock, random: seededRandom("audit"), store: new MemoryStore(), transport,
    log: (level, message, fields) => logs.push(`${level} ${message} ${JSON.stringify(fields ?? {})}`),
  });
  const guard = new EgressGuard(parseEgressConfig({
    broker: BROKER,
    doorward: { egress: { profile: "production", allow: [{ host: "<prefix>-ats.iot.<region>.amazonaws.com", port: 8883, purpose: "mqtt" }, { host: "time.aws.com", port: 123, purpose: "ntp" }] } },
  }), { log: (level, message, fields) => logs.push(`${level} ${message} ${JSON.stringify(fields ?? {})}`), maxTracked: options.maxTracked });
  const verifier = new EventVerifier({ [THING]: doorbell.signer.publicKey });
  const verified: Array<{ event: Record<string, any>; bytes: number }> = [];
  /** Audit reports the broker received, each verified once, in order, as the cloud verifies them (signature, sequence). */
  const reports = () => {
    for (const p of transport.published.slice(verified.length)) {
      const verdict = verifier.verify(p.payload, { topic: p.topic });
      if (!verdict.ok) throw new Error(`report failed verification: ${verdict.reason} ${verdict.detail}`);
      verified.push({ event: verdict.event as Record<string, any>, bytes: p.payload.length });
    }
    return verified.filter((r) => r.event.type === "audit" && r.event.report === "egress-refused");
  };
  return { clock, transport, doorbell, guard, logs, reports };
}

test("a sustained flood of refused attempts becomes one signed report a minute, whose counts add up", async (t) => {
  const { clock, doorbell, guard, reports } = rig();
  doorbell.start();
  await settle();
  t.true(doorbell.link.online);
  const detach = guard.attachReporter({ clock, emit: (fields) => void doorbell.emit("audit", fields), intervalMs: MINUTE });
  const attempts = [
    { host: "evil.example", port: 443, requester: "device/rogue" },
    { host: "phone-home.example", port: 8883, requester: "device/rogue" },
    { host: BROKER, port: 1883, requester: "device/mqtt" },
    { host: "2130706433", port: 8883, requester: "device/update" },
  ];
  let refused = 0;
  // Ten minutes, ten attempts every 100 ms.
  for (let step = 0; step < 6000; step++) {
    for (let i = 0; i < 10; i++) {
      const a = attempts[(step + i) % attempts.length];
      t.false(guard.check({ ...a, purpose: "mqtt" }).allowed);
      refused++;
    }
    clock.advance(100);
    if (step % 500 === 0) await settle();
  }
  clock.advance(MINUTE);
  await settle();
  const got = reports();
  t.true(got.length >= 10 && got.length <= 11, `${got.length} reports for ten minutes of flooding`);
  for (let i = 1; i < got.length; i++) t.true(got[i].event.time - got[i - 1].event.time >= MINUTE, "at most one report per minute");
  const reported = got.reduce((sum, r) => sum + (r.event.count as number), 0);
  t.is(reported, refused, "every refusal is counted in some report");
  t.is(got[got.length - 1].event.total, refused);
  for (const r of got) {
    t.true(r.event.refused.length >= 1 && r.event.refused.length <= 4);
    t.is(r.event.refused.reduce((s: number, row: { count: number }) => s + row.count, 0), r.event.count);
    t.true(r.bytes < 1024, `a report is small (${r.bytes} bytes)`);
  }
  const first = got[0].event.refused as Array<{ destination: string; requester: string; reason: string; count: number }>;
  t.deepEqual(first.map((row) => row.destination).sort(), ["2130706433:8883", `${BROKER}:1883`, "evil.example:443", "phone-home.example:8883"].sort());
  t.deepEqual(Object.fromEntries(first.map((row) => [row.destination, [row.requester, row.reason]])), {
    "evil.example:443": ["device/rogue", "not-allowlisted"],
    "phone-home.example:8883": ["device/rogue", "not-allowlisted"],
    [`${BROKER}:1883`]: ["device/mqtt", "wrong-port"],
    "2130706433:8883": ["device/update", "ambiguous-ip"],
  });
  const status = guard.status();
  t.is(status.refused, refused);
  t.is(status.refusalsReported, refused);
  t.is(status.reportsSent, got.length);
  t.is(status.reportsPending, 0);
  t.deepEqual(status.top.map((r) => r.count).reduce((a, b) => a + b, 0), refused);
  detach();
  guard.check({ host: "after.example", port: 1, purpose: "mqtt", requester: "x" });
  clock.advance(10 * MINUTE);
  await settle();
  t.is(reports().length, got.length, "no report after detaching");
  doorbell.stop();
});

test("refusals before the doorbell is attached are kept and reported once it is; more rows than fit wait for the next report", async (t) => {
  const { clock, doorbell, guard, reports } = rig();
  doorbell.start();
  await settle();
  for (let i = 0; i < 6; i++) guard.check({ host: `early-${i}.example`, port: 443, purpose: "mqtt", requester: "device/boot" });
  clock.advance(5 * MINUTE);
  await settle();
  t.is(reports().length, 0, "nothing to report through yet");
  guard.attachReporter({ clock, emit: (fields) => void doorbell.emit("audit", fields), intervalMs: MINUTE, maxPerReport: 4 });
  clock.advance(0);
  await settle();
  t.is(reports().length, 1);
  t.is(reports()[0].event.refused.length, 4);
  t.is(reports()[0].event.pending, 2);
  clock.advance(MINUTE - 1);
  await settle();
  t.is(reports().length, 1, "the rest waits for the interval");
  clock.advance(1);
  await settle();
  t.is(reports().length, 2);
  t.is(reports()[1].event.refused.length, 2);
  t.is(reports()[1].event.total, 6);
  doorbell.stop();
});

test("hostile destinations are bounded and made printable: thousands of distinct names cost one small, valid report", async (t) => {
  const { clock, doorbell, guard, reports, logs } = rig({ maxTracked: 32 });
  doorbell.start();
  await settle();
  guard.attachReporter({ clock, emit: (fields) => void doorbell.emit("audit", fields), intervalMs: MINUTE, maxPerReport: 8 });
  const nasty = ["\ud800lone-surrogate.example", "ctl\u0000\u001b[31m.example", "x".repeat(5000), "\u212a\uff0e\u3002", "quote\"back\\slash"];
  for (let i = 0; i < 5000; i++) guard.check({ host: `${nasty[i % nasty.length]}${i}`, port: 443, purpose: "mqtt", requester: i % 2 ? "device/rogue\u0000" : "x".repeat(500) });
  clock.advance(0);
  await settle();
  const [report] = reports();
  t.truthy(report, "the report was sealed and verified (no lone surrogate reached the signer)");
  t.true(report.bytes < 4096);
  const rows = report.event.refused as Array<{ destination: string; requester: string; count: number }>;
  for (const row of rows) {
    t.regex(row.destination, /^[\x20-\x7e]{1,120}$/);
    t.regex(row.requester, /^[\x20-\x7e]{1,80}$/);
  }
  const status = guard.status();
  t.is(status.refused, 5000);
  t.true(status.top.some((r) => r.destination === "(other)" && r.count > 4900), "rows past the bound fold into (other)");
  t.true(logs.filter((l) => l.includes("egress refused")).length <= 32, "one log line per new row, bounded");
  doorbell.stop();
});

test("a report waits (bounded) for mayReport, so it need not block the engine on the slow signing path", async (t) => {
  const { clock, doorbell, guard, reports } = rig();
  doorbell.start();
  await settle();
  let may = false;
  guard.attachReporter({ clock, emit: (fields) => void doorbell.emit("audit", fields), intervalMs: MINUTE, mayReport: () => may });
  guard.check({ host: "evil.example", port: 443, purpose: "mqtt", requester: "device/rogue" });
  clock.advance(3000);
  await settle();
  t.is(reports().length, 0, "deferred while mayReport is false");
  may = true;
  clock.advance(1000);
  await settle();
  t.is(reports().length, 1);
  may = false;
  guard.check({ host: "evil.example", port: 443, purpose: "mqtt", requester: "device/rogue" });
  // Due a minute after the first report (at 4 s), then deferred a second at a time, eight times.
  clock.advance(MINUTE + 7000);
  await settle();
  t.is(reports().length, 1, "still deferred");
  clock.advance(2000);
  await settle();
  t.is(reports().length, 2, "reported anyway after eight deferrals");
  doorbell.stop();
});
