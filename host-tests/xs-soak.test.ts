/*
 * Memory stays flat on the XS engine: the unchanged core rings (each ring with
 * its nonce precomputed while idle, as on the device), churns the persistent
 * outbox (flash write → publish → PUBACK → delete) and drops and re-makes its
 * MQTT session thousands of times; live slots after a full GC must not grow.
 *
 * The xsnap harness itself keeps about one slot per evaluation, so the same
 * number of empty evaluations is measured as a control and subtracted. A second
 * run with a deliberate leak of one small object per publish shows the
 * measurement would catch one. `npm run soak` does the same at 2,000 rings.
 */
import test from "ava";
import { measureXsHeap, XS_GROWTH_BOUND_SLOTS } from "../tools/soak";

test("XS heap: live slots after GC do not grow over rings, outbox churn and reconnects", async (t) => {
  t.timeout(300_000);
  const lines: string[] = [];
  const r = await measureXsHeap({ rings: 120, churn: 4000, reconnects: 2000, warmup: 10, log: (l) => lines.push(l) });
  t.log(`${r.rings} rings, ${r.churn} outbox write/ack cycles, ${r.reconnects} reconnects; ${r.published} publishes`);
  t.log(`live slots after GC: ${r.slotsBefore} before → ${r.slotsAfter} after (${r.runs} harness runs; the harness alone: +${r.harnessSlots}); doorbell growth ${r.netGrowth} slots; heap allocated ${r.allocatedBefore} → ${r.allocatedAfter} bytes`);
  t.log(`trace: ${r.trace.join(" → ")}`);
  t.is(r.slowPath, 0, "every ring was signed from a precomputed nonce");
  t.is(r.outboxDepth, 0, "the outbox drained");
  t.true(r.storedKeys <= 4, `flash holds ${r.storedKeys} keys: the outbox left records behind`);
  t.true(r.netGrowth <= XS_GROWTH_BOUND_SLOTS, `grew by ${r.netGrowth} slots`);
  t.true(r.allocatedAfter <= r.allocatedBefore * 1.1, "the heap did not have to grow");
});

test("the measurement catches a leak of one small object per publish", async (t) => {
  t.timeout(120_000);
  const r = await measureXsHeap({ rings: 0, churn: 2000, reconnects: 0, warmup: 10, leak: true });
  t.log(`with a deliberate leak: ${r.slotsBefore} → ${r.slotsAfter} live slots (net ${r.netGrowth})`);
  t.true(r.netGrowth > XS_GROWTH_BOUND_SLOTS * 10, `a leak of ${r.published} objects showed as only ${r.netGrowth} slots`);
});
