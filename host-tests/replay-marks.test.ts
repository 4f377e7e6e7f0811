/*
 * Command counters at the edges: a counter far beyond any app's wall-millisecond count
 * is refused instead of becoming a mark that locks its sender out.
 */
import test from "ava";
import { AccessTestbed, ManualClock } from "../tools/owner-app";
import { MAX_COMMAND_LIFETIME_MS } from "../modules/core/commands";

function bed() {
  const clock = new ManualClock();
  const tb = new AccessTestbed({ clock });
  const viewer = tb.addUser("viewer-1", "viewer");
  viewer.gen = tb.access.generation;
  return { tb, clock, viewer };
}

test("ctr = 2^53-1 is refused, and does not lock its sender out", (t) => {
  const { tb, viewer } = bed();
  const huge = tb.send(viewer, viewer.command("snapshot", {}, { ctr: Number.MAX_SAFE_INTEGER }));
  t.false(huge.ok);
  t.is(huge.reason, "malformed");
  t.is(tb.access.replay.highWater("viewer-1"), 0, "no mark was stored");
  // The app's own counter after such a mistake is wall milliseconds again.
  const next = tb.send(viewer, viewer.command("snapshot", {}, { ctr: tb.now() }));
  t.true(next.ok, JSON.stringify(next));
});

test("a counter no further ahead than a command may live is accepted", (t) => {
  const { tb, viewer } = bed();
  t.true(tb.send(viewer, viewer.command("snapshot", {}, { ctr: tb.now() + MAX_COMMAND_LIFETIME_MS })).ok);
});

