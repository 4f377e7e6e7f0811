/* Token buckets (core/budget): bursts, refill over time, the cap, waits, and one bucket per sender. */
import test from "ava";
import { BucketsByKey, TokenBucket } from "../modules/core/budget";

const clockAt = () => {
  const c = { now: 0, monotonic: () => c.now };
  return c;
};

test("a bucket gives its burst, then one token per period, never more than its capacity", (t) => {
  const clock = clockAt();
  const b = new TokenBucket({ capacity: 3, everyMs: 1000, clock });
  t.deepEqual([b.take(), b.take(), b.take(), b.take()], [true, true, true, false]);
  t.is(b.waitMs(), 1000);
  clock.now = 400;
  t.false(b.take());
  t.is(b.waitMs(), 600);
  clock.now = 1000;
  t.true(b.take());
  t.false(b.take());
  clock.now = 100_000;
  t.is(b.tokens, 3, "capped at the capacity after a long idle");
  t.throws(() => new TokenBucket({ capacity: 0, everyMs: 1000, clock }), { instanceOf: RangeError });
  t.throws(() => new TokenBucket({ capacity: 1, everyMs: 0, clock }), { instanceOf: RangeError });
});

test("buckets by key: each sender has its own; the least recently used is forgotten beyond maxKeys", (t) => {
  const clock = clockAt();
  const b = new BucketsByKey({ capacity: 1, everyMs: 1000, clock, maxKeys: 2 });
  t.true(b.take("a"));
  t.false(b.take("a"));
  t.true(b.take("b"), "another sender is not affected");
  t.true(b.take("c"), "a third sender pushes out the least recently used");
  t.false(b.take("c"));
  t.true(b.take("a"), "a was forgotten, so it starts full again");
});
