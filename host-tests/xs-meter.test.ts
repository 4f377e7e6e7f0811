/*
 * The reader of the simulator's XS instrumentation (tools/xs-meter.ts), on
 * lines as mcsim prints them: the main machine names its samples once, a
 * Worker prints the XS values only, and the peaks kept are per machine.
 */
import test from "ava";
import { describePeaks, XS_INSTRUMENTS, XsPeakTracker } from "../tools/xs-meter";

const KEY = "instruments key: Pixels drawn,Frames drawn,Network bytes read,Network bytes written,Network sockets,Timers,Files,Poco display list used,Piu command List used,Chunk used,Chunk available,Slot used,Slot available,Stack used,Stack available,Garbage collections,Keys used,Modules loaded,Parser used,Floating Point,Promises settled";

test("main and worker samples are told apart and their peaks kept apart; a collection marks the after-collection reading", (t) => {
  const tracker = new XsPeakTracker();
  t.true(tracker.line(KEY));
  t.true(tracker.line("instruments: 0,0,0,0,0,0,0,0,0,0,32768,896,65504,0,131072,0,0,0,0,0,0"));
  t.true(tracker.line("instruments: 0,0,0,0,1,6,0,0,0,170752,302080,389408,396128,13600,131072,2319,73,49,0,6144804,1"));
  t.true(tracker.line("instruments: 32528,32768,50560,65504,7648,131072,102,4,3,0,3784352,0"));
  t.true(tracker.line("instruments: 0,0,2475,1540,1,4,0,0,0,157208,302080,379872,396128,9248,131072,2320,73,49,0,6809,7"));
  t.true(tracker.line("instruments: 24752,32768,56224,65504,7648,131072,188,4,3,0,7568592,0"));
  t.false(tracker.line("3 info vault open secrets=11 damaged=0 collected=0"));
  t.false(tracker.line("instruments: not numbers"));
  const main = tracker.machines.get("main")!;
  t.is(main.samples, 3);
  t.is(main.chunksUsed, 170752);
  t.is(main.chunksReservedFirst, 32768);
  t.is(main.chunksReserved, 302080, "the heap grew");
  t.is(main.slotsUsedBytes, 389408);
  t.is(main.stackPeakBytes, 13600);
  t.is(main.collections, 2320);
  t.is(main.chunksAfterGc, 170752, "the second sample follows collections, so does the third");
  t.is(main.slotsAfterGcBytes, 389408);
  const worker = tracker.machines.get("worker")!;
  t.is(worker.samples, 2);
  t.is(worker.chunksUsed, 32528);
  t.is(worker.slotsUsedBytes, 56224);
  t.is(worker.chunksAfterGc, 24752);
  t.regex(describePeaks(main), /stack peak 425 of 4096 slots; slots in use ≤ 12169 \(12169 after a collection\), reserved 2047 → 12379/);
});

test("before the main machine names its samples, only a worker's XS-only line is understood", (t) => {
  const tracker = new XsPeakTracker();
  t.true(tracker.line("instruments: 0,0,0,0,1,6,0,0,0,170752,302080,389408,396128,13600,131072,2319,73,49,0,6144804,1"));
  t.is(tracker.machines.size, 0);
  t.true(tracker.line("instruments: " + XS_INSTRUMENTS.map((_, i) => i + 1).join(",")));
  t.is(tracker.machines.get("worker")!.chunksUsed, 1);
  t.is(tracker.machines.get("worker")!.stackPeakBytes, 5);
});
