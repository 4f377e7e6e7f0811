import test from "ava";
import fc from "fast-check";
import { Debouncer } from "../modules/core/debounce";

function run(edges: Array<[number, boolean]>, quietMs = 50): number {
  let now = 0;
  let presses = 0;
  const d = new Debouncer({ quietMs, now: () => now, onPress: () => presses++ });
  for (const [t, pressed] of edges) {
    now = t;
    d.edge(pressed);
  }
  return presses;
}

test("a bounce burst on press and on release gives one ring", (t) => {
  const press: Array<[number, boolean]> = [[1000, true], [1001, false], [1002, true], [1004, false], [1005, true]];
  const release: Array<[number, boolean]> = [[1400, false], [1401, true], [1403, false], [1404, true], [1406, false]];
  t.is(run([...press, ...release]), 1);
});

test("two real presses separated by a quiet gap give two rings", (t) => {
  t.is(run([[0, true], [200, false], [600, true], [800, false]]), 2);
});

test("property: any number of presses, each with bounce shorter than the quiet time, rings once per press", (t) => {
  fc.assert(
    fc.property(
      fc.array(fc.record({ bounces: fc.integer({ min: 0, max: 8 }), holdMs: fc.integer({ min: 60, max: 2000 }), gapMs: fc.integer({ min: 60, max: 2000 }) }), { minLength: 1, maxLength: 20 }),
      fc.integer({ min: 1, max: 5 }),
      (presses, bounceStep) => {
        const edges: Array<[number, boolean]> = [];
        let now = 10_000;
        for (const p of presses) {
          // Press with bounce, each bounce edge bounceStep ms apart (well under 50 ms in total).
          edges.push([now, true]);
          for (let i = 0; i < p.bounces; i++) edges.push([(now += bounceStep), i % 2 === 0 ? false : true]);
          if (p.bounces % 2 === 1) edges.push([(now += bounceStep), true]);
          now += p.holdMs;
          edges.push([now, false]);
          for (let i = 0; i < p.bounces; i++) edges.push([(now += bounceStep), i % 2 === 0]);
          if (p.bounces % 2 === 1) edges.push([(now += bounceStep), false]);
          now += p.gapMs;
        }
        return run(edges) === presses.length;
      },
    ),
    { numRuns: 500 },
  );
  t.pass();
});
