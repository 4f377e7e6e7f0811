/*
 * Commands with a grant's curve work on a worker (submitCommand), and the
 * rate limits that keep any one sender from buying seconds of CPU.
 *
 * The worker is runCryptoJob, run when the test says, so a revoke can be made
 * to arrive while a grant's verify is still out.
 */
import test from "ava";
import { AccessTestbed, ManualClock, createUserKeys } from "../tools/owner-app";
import { manualWorker } from "./helpers/manual-worker";
import type { AccessControlOptions } from "../modules/core/commands";
import { signedListToJson } from "../modules/core/access";

function bed(access: Partial<AccessControlOptions> = {}) {
  const w = manualWorker();
  const clock = new ManualClock();
  const tb = new AccessTestbed({ clock, access: { crypto: w.crypto, ...access } });
  const resident = tb.addUser("resident-1", "resident");
  tb.owner.gen = resident.gen = tb.access.generation;
  return { tb, clock, resident, ...w };
}

test("a revoke that arrives while a grant is being verified is in force at once, and the grant signed before it is refused", async (t) => {
  const { tb, resident, jobs, work } = bed();
  const guest = createUserKeys("guest", "viewer");
  let grant: Awaited<ReturnType<typeof tb.access.submitCommand>> | undefined;
  void tb.access.submitCommand(tb.owner.addUser(guest.identity).payload).then((o) => (grant = o));
  t.deepEqual(jobs.map((j) => j.op), ["verify"], "the grant's verify is on the worker");

  // The resident is still served meanwhile, and the revoke takes effect before submitCommand returns.
  t.true((await tb.access.submitCommand(resident.command("snapshot").payload)).ok);
  const revoking = tb.access.submitCommand(tb.owner.revoke("resident-1").payload);
  t.is(tb.access.list.user("resident-1"), undefined, "revoked in the same call, with the verify still out");
  const revoked = await revoking;
  t.true(revoked.ok);
  const refused = await tb.access.submitCommand(resident.command("snapshot", {}, { gen: tb.access.generation }).payload);
  t.false(refused.ok);
  t.is(refused.reason, "revoked");
  t.is(grant, undefined);

  await work();
  await new Promise((r) => setImmediate(r));
  t.truthy(grant);
  t.false(grant!.ok);
  t.is(grant!.reason, "stale-generation");
  t.is(tb.access.list.user("guest"), undefined);
  t.is(tb.access.list.user("resident-1"), undefined, "the grant in flight did not bring the revoked user back");
  t.is(jobs.length, 0, "no box.before was paid for a grant already void");
});

test("revoking a user whose grant is still being verified voids that grant: the revoke wins, as it would have after the grant", async (t) => {
  const { tb, work } = bed();
  const guest = createUserKeys("guest", "viewer");
  const granting = tb.access.submitCommand(tb.owner.addUser(guest.identity).payload);
  const revoke = await tb.access.submitCommand(tb.owner.revoke("guest").payload);
  t.true(revoke.ok, revoke.detail);
  await work();
  const grant = await granting;
  t.false(grant.ok);
  t.is(grant.reason, "stale-generation");
  t.regex(grant.detail!, /revocation arrived/);
  t.is(tb.access.list.user("guest"), undefined);
  const refused = await tb.access.submitCommand(tb.app(guest).command("snapshot").payload);
  t.false(refused.ok, "the guest never gets in");
  // Nothing pending now: revoking someone unknown is refused as before.
  t.is((await tb.access.submitCommand(tb.owner.revoke("nobody").payload)).reason, "malformed");
});

test("a grant on the worker: applied when nothing changed meanwhile; a second grant in flight is busy", async (t) => {
  const { tb, jobs, work } = bed();
  const guest = createUserKeys("guest", "viewer");
  const first = tb.access.submitCommand(tb.owner.addUser(guest.identity).payload);
  const second = await tb.access.submitCommand(tb.owner.addUser(createUserKeys("other", "viewer").identity).payload);
  t.false(second.ok);
  t.is(second.reason, "busy");
  t.is(await work(), "verify");
  t.is(await work(), "before", "one box.before for the one new user");
  const outcome = await first;
  t.true(outcome.ok, outcome.detail);
  t.truthy(tb.access.list.user("guest"));
  const guestApp = tb.app(guest);
  t.true((await tb.access.submitCommand(guestApp.command("snapshot").payload)).ok, "the keys derived on the worker authenticate the guest");
});

test("commands are rate-limited per sender; revocations never are", async (t) => {
  const { tb, clock, resident } = bed({ senderRate: { burst: 3, everyMs: 1000 } });
  for (let i = 0; i < 3; i++) t.true(tb.send(resident, resident.command("snapshot")).ok, `snapshot ${i}`);
  const limited = tb.send(resident, resident.command("snapshot"));
  t.is(limited.reason, "busy");
  t.regex(limited.detail!, /too many commands from this sender/);
  t.true(tb.send(tb.owner, tb.owner.command("snapshot")).ok, "another sender is not affected");
  clock.advance(1000);
  t.true(tb.send(resident, resident.command("snapshot")).ok, "a token back after a second");
  for (let i = 0; i < 5; i++) tb.send(tb.owner, tb.owner.command("snapshot"));
  t.is(tb.send(tb.owner, tb.owner.command("snapshot")).reason, "busy");
  t.true(tb.send(tb.owner, tb.owner.revoke("resident-1")).ok, "the owner's revoke goes through with an empty bucket");
  t.is(tb.access.list.user("resident-1"), undefined);
});

test("signed lists are verified a few times per period at most; lists refused by the cheap checks cost no token", async (t) => {
  // Two tokens: the bed's own grant of the resident took the first.
  const { tb, clock } = bed({ grantRate: { burst: 2, everyMs: 60_000 } });
  const guest = createUserKeys("guest", "viewer");
  const signed = tb.owner.signList([...tb.owner.users, guest.identity], tb.access.generation + 1);
  const forged = signedListToJson({ list: signed.list, signature: signed.signature.map((b, i) => (i === 0 ? b ^ 1 : b)) });
  t.is(tb.send(tb.owner, tb.owner.command("access-update", { list: forged })).reason, "bad-signature", "verified (a token spent), and refused");
  const stale = tb.send(tb.owner, tb.owner.updateList(tb.owner.users, { listGen: 1 }));
  t.is(stale.reason, "stale-generation", "refused before any verify: no token needed");
  const next = tb.send(tb.owner, tb.owner.addUser(guest.identity));
  t.is(next.reason, "busy");
  t.regex(next.detail!, /too many signed lists/);
  t.is(tb.access.list.user("guest"), undefined);
  clock.advance(60_000);
  t.true(tb.send(tb.owner, tb.owner.addUser(guest.identity)).ok, "a token back after the period");
  t.truthy(tb.access.list.user("guest"));
});
