/*
 * `npm run bench`: the figures Doorward promises, computed on this machine.
 *
 * XS figures come from the real XS engine (xsnap): meter units are
 * deterministic; x86 instruction counts come from callgrind when valgrind is
 * installed, and are modelled onto an ESP32-S3 at 240 MHz (one instruction per
 * cycle, a lower bound; realistic is 1.3–3× for tweetnacl's Float64 code).
 * Node figures are loopback latencies against the local AWS IoT stand-in, next
 * to a bare mqtt.js QoS 1 publish measured in the same run.
 *
 * Prints a table and writes bench-results.json. Exits non-zero only if a
 * measurement fails to run, never because a figure is slow.
 *
 *   npm run bench                      all figures (≈ 5 minutes)
 *   npm run bench -- --quick           fewer presses and rings, no callgrind
 */
import fs from "node:fs";
import { measureLatency } from "./bench/latency";
import { measureXsRing, esp32Ms } from "./bench/xs-ring";
import { measureCommandCosts } from "./bench/xs-commands";
import { measureSnapshotCosts, FRAME, CHUNK_SIZES } from "./bench/xs-snapshot";
import { startXsCore } from "./xs/core";
import { measureTimelineCosts, runDay, scaledCosts, TIMELINE_POLICY, type TimelineRun } from "./bench/device-timeline";
import { runAsEntry, type Parsed } from "./lib/cli";

const CLI = {
  name: "bench",
  usage: `usage: npm run bench -- [--quick] [--out FILE]

Measures the figures in the README's performance table on this machine and prints them:
XS meter units and (with valgrind) callgrind instruction counts on the real XS engine,
modelled onto an ESP32-S3, and loopback latencies against the local stand-in.
Takes about 5 minutes; exits non-zero only if a measurement fails to run.

  --quick        fewer presses and rings, no callgrind (about a minute)
  --timeline     only the device timeline (a scripted day, one core against the crypto worker)
  --out FILE     where the JSON results go (default bench-results.json)
  -h, --help     this text`,
  options: { quick: { type: "boolean" }, timeline: { type: "boolean" }, out: { type: "string" } },
} as const;

const fmtM = (n: number) => (n / 1e6).toFixed(2) + " M";
const fmtMs = (n: number) => n.toFixed(2) + " ms";
const rows: string[][] = [];
const row = (...cells: string[]) => rows.push(cells);

async function main(args: Parsed<typeof CLI.options>): Promise<number> {
  const quick = args.values.quick ?? false;
  const out = args.values.out ?? "bench-results.json";
  const started = Date.now();
  const commands = await measureCommandCosts();
  const snapXs = await startXsCore({ stdout: "ignore" });
  const snapshot = await measureSnapshotCosts(snapXs).finally(() => snapXs.close());
  // Meter units → x86 instructions, calibrated in the same worker by a full sign (870 M instructions in the facts file).
  const perUnit = 870e6 / commands.sign;
  const cost = (name: string) => commands.costs.find(([n]) => n.startsWith(name))?.[1] ?? NaN;
  const snapshotJsPerKb: Record<number, number> = {};
  for (const c of CHUNK_SIZES) snapshotJsPerKb[c] = (snapshot.perFrame[c] - snapshot.standinsOnly[c]) / (FRAME / 1024);
  const timelineCosts = await measureTimelineCosts(commands, snapshotJsPerKb[8192]);
  const days: TimelineRun[] = [
    await runDay("one core", timelineCosts),
    await runDay("with worker", timelineCosts),
    // The same day with every cost tripled (the top of the realistic range): does the pool still carry it?
    await runDay("with worker", scaledCosts(timelineCosts, 3), "with worker, costs ×3"),
  ];
  if (args.values.timeline) {
    timelineRows(days);
    print();
    fs.writeFileSync(out, JSON.stringify({ date: new Date().toISOString(), timeline: { policy: TIMELINE_POLICY, costs: timelineCosts, days } }, null, 2) + "\n");
    console.log(`\nwrote ${out} in ${((Date.now() - started) / 1000).toFixed(0)} s`);
    return 0;
  }
  const xs = await measureXsRing({ heapRings: quick ? 100 : 1000, callgrind: !quick });
  const latency = await measureLatency(quick ? 200 : 1000);

  const i = xs.instructions;
  row("XS: one ring, press → signed bytes (online signature)", `${fmtM(xs.meter.ringOnline)} meter`, i ? `${fmtM(i.ringOnline)} instr` : "-", i ? `${fmtMs(esp32Ms(i.ringOnline))} (JS SHA-512)` : "-");
  if (i) row("  of which SHA-512 of R‖A‖M (native on the device)", `${fmtM(xs.meter.sha512OfSigningInput)} meter`, `${fmtM(i.sha512OfSigningInput)} instr`, `${fmtMs(esp32Ms(i.sha512OfSigningInput))}`);
  if (i) row("  ring with the device's native SHA-512", "-", `${fmtM(i.ringOnline - i.sha512OfSigningInput)} instr`, `${fmtMs(esp32Ms(i.ringOnline - i.sha512OfSigningInput))} + native hash`);
  row("XS: one ring with the nonce pool empty (slow path)", `${fmtM(xs.meter.ringSlowPath)} meter`, i ? `${fmtM(i.ringSlowPath)} instr` : "-", i ? fmtMs(esp32Ms(i.ringSlowPath)) : "-");
  row("XS: idle precompute of one nonce", `${fmtM(xs.meter.precomputeOneNonce)} meter`, i ? `${fmtM(i.precomputeOneNonce)} instr` : "-", i ? fmtMs(esp32Ms(i.precomputeOneNonce)) : "-");
  row("XS: boot (sequence open, key load; public key stored)", `${fmtM(xs.meter.bootWithStoredKey)} meter`, "-", "-");
  row("XS: boot deriving the public key from the seed", `${fmtM(xs.meter.bootDerivingKey)} meter`, "-", "-");
  row(`XS heap: live slots after boot → after ${xs.heap.rings} rings (after GC)`, `${xs.heap.afterBoot.slots} → ${xs.heap.afterRings.slots}`, `peak ${xs.heap.peakSlots} slots`, `heap space ${xs.heap.afterBoot.allocatedBytes} → ${xs.heap.afterRings.allocatedBytes} B`);
  const modelled = (units: number) => `${fmtMs(esp32Ms(units * perUnit))} (≈${fmtM(units * perUnit)} instr)`;
  row("XS: command check + accept (MAC, replay, generation)", `${fmtM(cost("command check"))} meter`, modelled(cost("command check")), "");
  row("XS: revoke one user (applied at once, no Ed25519)", `${fmtM(cost("revoke one"))} meter`, modelled(cost("revoke one")), "");
  row("XS: cheapest refusal (revoked sender)", `${fmtM(cost("refusal: revoked"))} meter`, modelled(cost("refusal: revoked")), "");
  row("XS: grant a user (owner Ed25519 verify + box.before)", `${fmtM(cost("grant"))} meter`, modelled(cost("grant")), "rare; runs when idle");
  for (const c of CHUNK_SIZES) row(`XS: snapshot JS part per KB, ${c / 1024} KB chunks (native AES-GCM/SHA-256 excluded)`, `${snapshotJsPerKb[c].toFixed(0)} meter/KB`, `${fmtMs(esp32Ms(snapshotJsPerKb[c] * perUnit * 100))} per 100 KB`, "upper bound: xsnap's XS copies per byte");
  row("XS: snapshot manifest event (canonical + online sign)", `${fmtM(snapshot.manifestEvent)} meter`, modelled(snapshot.manifestEvent), `wrap per recipient ${fmtM(snapshot.wrap1)} meter`);
  const l = latency;
  row(`Node: press → PUBACK (n=${l.pressToPuback.n})`, `p50 ${fmtMs(l.pressToPuback.p50)}`, `p99 ${fmtMs(l.pressToPuback.p99)}`, `×${l.ratioP50.toFixed(2)} / ×${l.ratioP99.toFixed(2)} of bare`);
  row(`Node: press → verified by the cloud (tweetnacl + OpenSSL)`, `p50 ${fmtMs(l.pressToVerified.p50)}`, `p99 ${fmtMs(l.pressToVerified.p99)}`, "");
  row(`Node: bare mqtt.js QoS 1 publish → PUBACK, ${l.payloadBytes} B`, `p50 ${fmtMs(l.barePublishToPuback.p50)}`, `p99 ${fmtMs(l.barePublishToPuback.p99)}`, "same broker, same run");
  row("Anchors", "plain tweetnacl sign ≈ 870 M instr (3.6 s model)", "native libsodium on ESP32 ≈ 24 ms", "");
  timelineRows(days);

  print();
  const results = { timeline: { policy: TIMELINE_POLICY, costs: timelineCosts, days }, date: new Date().toISOString(), quick, seconds: (Date.now() - started) / 1000, xs, latency, commands: { costs: commands.costs, calibrationInstructionsPerUnit: perUnit }, snapshot: { ...snapshot, jsMeterPerKb: snapshotJsPerKb }, esp32Model: { hz: 240e6, note: "1 instruction per cycle: lower bound; realistic 1.3-3x" } };
  fs.writeFileSync(out, JSON.stringify(results, null, 2) + "\n");
  console.log(`\nwrote ${out} in ${results.seconds.toFixed(0)} s`);
  return 0;
}

function print(): void {
  const widths = [0, 1, 2, 3].map((c) => Math.max(...rows.map((r) => (r[c] ?? "").length)));
  for (const r of rows) console.log(r.map((cell, c) => (cell ?? "").padEnd(widths[c])).join("  │ "));
}

/** The scripted day on the device model (tools/bench/device-timeline): one core against the crypto worker. */
function timelineRows(days: TimelineRun[]): void {
  const ms = (n: number) => (n >= 10_000 ? `${(n / 1000).toFixed(1)} s` : `${n.toFixed(1)} ms`);
  row(`Device day (model; pool ${TIMELINE_POLICY.pool}, ring reserve ${TIMELINE_POLICY.reserve})`, "press → signed bytes: worst / p99 / p50", "no precomputed nonce / press lost", "revoke arrival → enforced: worst (n)");
  for (const d of days) {
    row(`  ${d.mode}, ${d.presses} presses`, `${ms(d.pressToSigned.worst)} / ${ms(d.pressToSigned.p99)} / ${ms(d.pressToSigned.p50)}`, `${d.slowPath} / ${d.lost}`, `${ms(d.revokeWorst)} (${d.revokes.length})`);
  }
  for (const pattern of Object.keys(days[0].byPattern)) {
    row(`  worst: ${pattern}`, days.map((d) => `${d.mode}: ${d.byPattern[pattern] ? ms(d.byPattern[pattern].worst) : "-"}`).join(", "), days.map((d) => `${d.byPattern[pattern]?.slow ?? 0}/${d.byPattern[pattern]?.lost ?? 0}`).join(", "), "");
  }
  row("  main machine busy / update verifies paid / grants", days.map((d) => `${d.mode}: ${ms(d.mainBusyMs)}`).join(", "), days.map((d) => `${d.updateVerifies} verifies`).join(", "), days.map((d) => d.grantOutcomes.join("; ")).join(" | "));
}

runAsEntry(import.meta.url, CLI, main);
