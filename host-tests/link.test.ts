import test from "ava";
import { Link, MIN_CONNECT_INTERVAL_MS } from "../modules/core/link";
import type { MqttHandlers, MqttTransport } from "../modules/core/ports";
import { ManualClock } from "./helpers/manual-clock";
import { seededRandom } from "./helpers/crypto";

/** A broker that is down: every connect attempt fails at once. Records when each CONNECT was tried. */
class DownBroker implements MqttTransport {
  attempts: number[] = [];
  up = false;
  constructor(private clock: ManualClock) {}
  connect(h: MqttHandlers) {
    this.attempts.push(this.clock.now);
    if (this.up) h.onConnect();
    else h.onClose("ECONNREFUSED");
  }
  publish() { return Promise.reject(new Error("down")); }
  subscribe() { return Promise.resolve(); }
  close() {}
}

test("reconnects back off exponentially with jitter and never CONNECT twice within a second", (t) => {
  const clock = new ManualClock();
  const broker = new DownBroker(clock);
  const link = new Link({ transport: broker, clock, random: seededRandom("link"), log: () => {}, maxDelayMs: 30_000 });
  link.start();
  clock.advance(10 * 60_000);
  const gaps = broker.attempts.slice(1).map((at, i) => at - broker.attempts[i]);
  t.true(broker.attempts.length > 10, `only ${broker.attempts.length} attempts in 10 minutes`);
  t.true(gaps.every((g) => g >= MIN_CONNECT_INTERVAL_MS), `a gap below 1 s: ${Math.min(...gaps)}`);
  t.true(gaps.every((g) => g <= 30_000), "delay capped");
  t.true(new Set(gaps).size > gaps.length / 2, "jittered, not lockstep");
  t.true(gaps.slice(-10).reduce((a, b) => a + b) > gaps.slice(0, 3).reduce((a, b) => a + b), "later gaps grow");
  t.is(link.state, "waiting");
  t.is(link.lastCloseReason, "ECONNREFUSED");

  broker.up = true;
  clock.advance(60_000);
  t.is(link.state, "online");
  t.is(link.attempts, 0, "a success resets the backoff");
});

test("a broker that drops the session right after CONNECT still gets at most one CONNECT per second", (t) => {
  const clock = new ManualClock();
  let handlers: MqttHandlers | undefined;
  const attempts: number[] = [];
  const flappy: MqttTransport = {
    connect(h) { attempts.push(clock.now); handlers = h; h.onConnect(); h.onClose("kicked"); },
    publish: () => Promise.resolve(), subscribe: () => Promise.resolve(), close() {},
  };
  const link = new Link({ transport: flappy, clock, random: { fill: (b) => b.fill(0) }, log: () => {} });
  link.start();
  clock.advance(20_000);
  t.truthy(handlers);
  const gaps = attempts.slice(1).map((at, i) => at - attempts[i]);
  t.true(gaps.length >= 10);
  t.true(gaps.every((g) => g >= MIN_CONNECT_INTERVAL_MS), `gaps: ${gaps.join(",")}`);
});

test("stop() cancels the pending retry", (t) => {
  const clock = new ManualClock();
  const broker = new DownBroker(clock);
  const link = new Link({ transport: broker, clock, random: seededRandom("s"), log: () => {} });
  link.start();
  link.stop();
  clock.advance(120_000);
  t.is(broker.attempts.length, 1);
  t.is(link.state, "closed");
});
