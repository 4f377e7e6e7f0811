/*
 * Fault injection against the real stand-in broker, with the device as a real
 * process: broker restarts on the same port, power cuts (SIGKILL, restart over
 * the same flash) and sessions cut mid-publish, while presses keep coming. The
 * harness is tools/soak.ts (runChaos); `npm run soak` runs it for minutes.
 *
 * Pass condition: every ring the device recorded in flash is accepted by the
 * cloud consumer exactly once after de-duplication, in order, verified by
 * tweetnacl and OpenSSL; the only extra rings are at most one per power cut
 * (written to flash just before the kill, so never printed); no drops.
 */
import test from "ava";
import { runChaos } from "../tools/soak";

test("every recorded press survives broker restarts, power cuts and mid-publish drops, delivered exactly once and in order", async (t) => {
  t.timeout(240_000);
  const lines: string[] = [];
  const report = await runChaos({ seed: 20240607, cycles: 7, maxMs: 150_000, settleMs: 60_000, log: (l) => lines.push(l) });
  t.log(`seed ${report.seed}: ${report.presses} presses recorded (${report.pressesAsked} asked), ${report.brokerRestarts} broker restarts, ${report.powerCuts} power cuts, ${report.midPublishDrops} mid-publish drops, ${report.boots} boots, ${(report.elapsedMs / 1000).toFixed(1)} s`);
  t.log(`delivered ${report.delivered}; lost ${report.lost.length}; duplicates delivered ${report.duplicatesDelivered}; redeliveries de-duplicated ${report.redeliveries}; unrecorded-but-written rings from killed boots ${report.unrecordedDelivered.length}`);
  const context = `${JSON.stringify({ ...report, unrecordedDelivered: report.unrecordedDelivered })}\n${lines.join("\n")}`;
  t.true(report.brokerRestarts >= 5, context);
  t.true(report.powerCuts >= 5, context);
  t.true(report.midPublishDrops >= 3, context);
  t.true(report.presses >= 40, context);
  t.deepEqual(report.lost, [], context);
  t.is(report.duplicatesDelivered, 0, context);
  t.deepEqual(report.rejected, [], context);
  t.is(report.opensslFailures, 0, context);
  t.is(report.unstored, 0, context);
  t.deepEqual(report.otherEvents, [], context);
  t.true(report.unrecordedDelivered.every((u) => u.allowed), context);
  t.is(report.delivered, report.presses + report.unrecordedDelivered.length, context);
  t.true(report.ok);
});
