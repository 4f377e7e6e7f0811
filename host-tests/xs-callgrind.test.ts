/*
 * tools/xs/callgrind.ts: instruction counts of one XS operation repeat and
 * scale with the work. Skipped where valgrind is not installed.
 *
 * Counts repeat exactly on a quiet machine, but the worker's pipe I/O with
 * Node (how reads happen to be split) can move a process total by a few
 * hundred instructions under load, hence the 0.2% tolerance.
 */
import test from "ava";
import { countInstructions, valgrindAvailable } from "../tools/xs/callgrind";

const setup = `state.c = importNow("core/canonical");
  state.doc = { v: 1, type: "ring", thing: "doorward-front-01", boot: 7, seq: 4242, time: 1767225600000 };`;

(valgrindAvailable() ? test : test.skip)("callgrind counts repeat (within 0.2%) and double with double the work", async (t) => {
  const once = await countInstructions({ setup, operation: `state.c.canonicalBytes(state.doc);` });
  const again = await countInstructions({ setup, operation: `state.c.canonicalBytes(state.doc);` });
  const twice = await countInstructions({ setup, operation: `state.c.canonicalBytes(state.doc); state.c.canonicalBytes(state.doc);` });
  t.log(`canonicalBytes(ring header): ${once.perOperation} x86 instructions on XS`);
  t.true(Math.abs(again.perOperation - once.perOperation) < once.perOperation * 0.002, `${again.perOperation} vs ${once.perOperation}`);
  t.true(once.perOperation > 10_000, "an encode is thousands of instructions, not noise");
  t.true(Math.abs(twice.perOperation / once.perOperation - 2) < 0.02, `twice/once = ${twice.perOperation / once.perOperation}`);
});
