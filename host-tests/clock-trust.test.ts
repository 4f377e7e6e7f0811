/*
 * The clock is not a trust root: a forged SNTP reply a day ahead moves the
 * device clock by seconds only, and even with the clock a day ahead the
 * owner's revoke is enforced at once while the ex's commands (stamped from the
 * shifted clock) are refused. Accepted commands write no flash.
 */
import test from "ava";
import { performance } from "node:perf_hooks";
import { TimeSync, SNTP_TIME } from "../modules/device/sntp";
import { checkNetworkTime, allowedOffsetMs, NTP_MAX_STEP_MS } from "../modules/core/time-check";
import { AccessTestbed, MemorySecretStore, OwnerApp, createUserKeys } from "../tools/owner-app";
import { MemoryStore } from "../modules/host/file-store";
import { ManualClock } from "./helpers/manual-clock";
import type { KeyValueStore, SecretStore } from "../modules/core/ports";
import { REPLAY_KEY } from "../modules/core/commands";

const DAY = 86_400_000;
const FLOOR = 1_735_689_600_000;

function syncWith(clock: ManualClock, answers: number[]) {
  let now = 0;
  const set: number[] = [];
  const logs: string[] = [];
  const sync = new TimeSync({
    host: "time.aws.com",
    resolve: (_h, done) => done("203.0.113.7"),
    sntp: class {
      constructor(_o: { host: string }, cb: (m: number, v?: unknown) => void) {
        const seconds = answers.shift();
        clock.schedule(() => cb(SNTP_TIME, seconds), 10);
      }
    },
    setTime: (s) => {
      now = s * 1000 - clock.monotonic();
      set.push(s * 1000);
    },
    now: () => now + clock.monotonic(),
    monotonic: () => clock.monotonic(),
    schedule: (cb, ms) => clock.schedule(cb, ms),
    floorMs: FLOOR,
    log: (level, message, fields) => logs.push(`${level} ${message} ${JSON.stringify(fields ?? {})}`),
  });
  return { sync, set, logs, wall: () => now + clock.monotonic() };
}

test("a forged SNTP reply a day ahead moves the clock by the bound only", (t) => {
  const clock = new ManualClock();
  const real = 1_790_000_000; // seconds
  const resync = 6 * 3600;
  const s = syncWith(clock, [real, real + resync + 86_400, real + 2 * resync + 86_400]);
  s.sync.start();
  clock.advance(100);
  t.is(s.set[0], real * 1000, "the first answer of a boot is taken");
  const before = s.wall();
  clock.advance(resync * 1000);
  const expected = before + resync * 1000;
  const moved = s.wall() - expected;
  t.true(moved > 0 && moved <= allowedOffsetMs(resync * 1000), `moved ${moved} ms, bound ${allowedOffsetMs(resync * 1000)} ms`);
  t.true(moved < 60_000, "seconds, not a day");
  t.true(s.logs.some((l) => l.startsWith("warn time: NTP answer disagrees")));
  // A persistent forger walks it by the bound per query, so a day takes months at one query every six hours.
  clock.advance(resync * 1000);
  t.true(s.wall() - (expected + resync * 1000) < 2 * allowedOffsetMs(resync * 1000) + 1000);
});

test("time check: the floor (and the owner's vouched floor) refuses; small differences are taken", (t) => {
  t.is(checkNetworkTime(FLOOR - 1, { floorMs: FLOOR, monotonicMs: 0 }).action, "refuse");
  t.deepEqual(checkNetworkTime(FLOOR + 5, { floorMs: FLOOR, monotonicMs: 0 }), { action: "set", wallMs: FLOOR + 5 });
  const reference = { wallMs: FLOOR + DAY, monotonicMs: 1000 };
  t.deepEqual(checkNetworkTime(FLOOR + DAY + 60_000 + 500, { floorMs: FLOOR, monotonicMs: 61_000, reference }), { action: "set", wallMs: FLOOR + DAY + 60_500 });
  const back = checkNetworkTime(FLOOR + 10, { floorMs: FLOOR, monotonicMs: 61_000, reference });
  t.is(back.action, "step");
  t.is(back.action === "step" && back.wallMs, FLOOR + DAY + 60_000 - allowedOffsetMs(60_000));
  t.true(allowedOffsetMs(0) === NTP_MAX_STEP_MS);
  t.is(checkNetworkTime(Number.NaN, { floorMs: FLOOR, monotonicMs: 0 }).action, "refuse");
});

test("sntp: an answer below the owner's vouched floor is refused", (t) => {
  const clock = new ManualClock();
  let now = 0;
  const set: number[] = [];
  const vouched = 1_790_000_000_000;
  const sync = new TimeSync({
    host: "time.aws.com",
    resolve: (_h, done) => done("203.0.113.7"),
    sntp: class {
      constructor(_o: { host: string }, cb: (m: number, v?: unknown) => void) {
        clock.schedule(() => cb(SNTP_TIME, vouched / 1000 - 86_400), 10);
      }
    },
    setTime: (s) => set.push((now = s * 1000)),
    now: () => now,
    monotonic: () => clock.monotonic(),
    schedule: (cb, ms) => clock.schedule(cb, ms),
    floorMs: FLOOR,
    vouchedFloorMs: () => vouched,
    log: () => {},
  });
  sync.start();
  clock.advance(100);
  t.deepEqual(set, [], "a day before what the owner vouched for: not set");
  t.false(sync.synced);
  sync.stop();
});

test("with the device clock a day ahead, the owner's revoke is enforced within the budget and the ex's commands are refused", (t) => {
  const clock = new ManualClock();
  const realWall = clock.wall!;
  const tb = new AccessTestbed({ clock });
  const ex = tb.addUser("ex", "resident");
  const other = tb.addUser("other", "viewer");
  ex.gen = other.gen = tb.access.generation;
  t.true(tb.send(ex, ex.command("snapshot")).ok);
  // The owner's phone keeps real time; the device's clock is moved a day ahead by a forged reply.
  const owner = new OwnerApp({ keys: tb.ownerKeys, thing: tb.thing, deviceBoxPublicKey: tb.device.publicKey, now: () => realWall + clock.now, gen: tb.access.generation, users: tb.owner.users });
  clock.wall = realWall + DAY;
  // The ex stamps commands from the shifted clock (the device's), as the review did.
  const stashed = [ex.command("snapshot"), ex.command("chime-test"), ex.command("stream-start", { seconds: 60 })];
  t.true(tb.send(ex, ex.command("snapshot")).ok, "before the revoke, the ex is still a user");
  clock.advance(1000);

  const revoke = owner.revoke("ex");
  const t0 = performance.now();
  const r = tb.access.handleCommand(revoke.payload);
  const refused = tb.access.handleCommand(stashed[0].payload);
  const ms = performance.now() - t0;
  owner.read(r.reply);
  t.true(r.ok, `${r.reason}: ${r.detail}`);
  t.is(refused.reason, "revoked");
  t.true(ms < 100, `revoke and first refusal took ${ms.toFixed(2)} ms (budget 1 s)`);
  for (const made of stashed.slice(1)) t.is(tb.send(ex, made).reason, "revoked");
  t.is(tb.send(ex, ex.command("snapshot", {}, { gen: tb.access.generation })).reason, "revoked");
  t.is(tb.access.list.user("ex"), undefined);
  // Revoke-all too, from a phone a day behind the device.
  // (A grant is not clock-free: the owner's list update is refused as expired while the clock is wrong.)
  t.is(tb.send(owner, owner.addUser(createUserKeys("late", "viewer").identity)).reason, "expired");
  const all = tb.send(owner, owner.revokeAll());
  t.true(all.ok, `${all.reason}: ${all.detail}`);
  t.is(tb.send(other, other.command("snapshot", {}, { gen: tb.access.generation })).reason, "revoked");
  t.deepEqual(tb.access.list.users().map((u) => u.id), ["owner"]);
});

test("with the device clock a day behind, the owner's revoke still lands", (t) => {
  const clock = new ManualClock();
  const realWall = clock.wall!;
  const tb = new AccessTestbed({ clock });
  const ex = tb.addUser("ex", "viewer");
  const owner = new OwnerApp({ keys: tb.ownerKeys, thing: tb.thing, deviceBoxPublicKey: tb.device.publicKey, now: () => realWall + clock.now, gen: tb.access.generation });
  clock.advance(1000);
  // A reboot with no owner floor stored yet (none is until an access change after it), and the clock a day behind.
  tb.store.delete(REPLAY_KEY);
  clock.wall = realWall - DAY;
  tb.boot();
  const r = tb.send(owner, owner.revoke("ex"));
  t.true(r.ok, `${r.reason}: ${r.detail}`);
  t.is(tb.send(ex, ex.command("snapshot", {}, { gen: tb.access.generation })).reason, "revoked");
});

test("a revoke is applied even before the device has any trusted time", (t) => {
  const clock = new ManualClock();
  const tb = new AccessTestbed({ clock });
  const ex = tb.addUser("ex", "viewer");
  const owner = new OwnerApp({ keys: tb.ownerKeys, thing: tb.thing, deviceBoxPublicKey: tb.device.publicKey, now: () => 1_790_000_000_000, gen: tb.access.generation });
  clock.wall = undefined;
  tb.boot();
  t.true(tb.send(owner, owner.revoke("ex")).ok);
  t.is(tb.send(ex, ex.command("snapshot", {}, { gen: tb.access.generation })).reason, "revoked");
});

function countingStores() {
  const store = new MemoryStore();
  const secrets = new MemorySecretStore();
  const writes: string[] = [];
  const s: KeyValueStore = {
    read: (k) => store.read(k),
    write: (k, v) => {
      writes.push(`kv ${k}`);
      store.write(k, v);
    },
    delete: (k) => {
      writes.push(`kv-delete ${k}`);
      store.delete(k);
    },
    keys: () => store.keys(),
  };
  const sec: SecretStore = {
    get: (n) => secrets.get(n),
    set: (n, v) => {
      writes.push(`secret ${n}`);
      secrets.set(n, v);
    },
    delete: (n) => {
      writes.push(`secret-delete ${n}`);
      secrets.delete(n);
    },
  };
  return { store: s, secrets: sec, writes };
}

test("accepted commands cause no flash write; access changes do", (t) => {
  const clock = new ManualClock();
  const c = countingStores();
  const tb = new AccessTestbed({ clock, store: c.store, secrets: c.secrets });
  const viewer = tb.addUser("viewer-1", "viewer");
  viewer.gen = tb.access.generation;
  c.writes.length = 0;
  let accepted = 0;
  for (let i = 0; i < 20; i++) {
    clock.advance(1000);
    const round = [[viewer, viewer.command("snapshot")], [tb.owner, tb.owner.command("chime-test")], [viewer, viewer.command("stream-start", { seconds: 5 })], [viewer, viewer.command("stream-stop")]] as const;
    for (const [app, made] of round) if (tb.send(app, made).ok) accepted++;
  }
  t.true(accepted >= 40, `accepted ${accepted}`);
  t.deepEqual(c.writes, [], "no flash write for any accepted command");
  t.true(tb.send(tb.owner, tb.owner.revoke("viewer-1")).ok);
  t.true(c.writes.length > 0, "a revocation is stored");
});
