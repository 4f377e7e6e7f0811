/*
 * Activation and health: a fully downloaded image is activated only if its
 * SHA-256 matches the signed one. The KV state "activating" is written before
 * the sink makes the new slot bootable, so a power cut at any point leaves a
 * bootable, verified image. The new image runs first on trial: only after it
 * has reached the cloud (a job-status round trip) and passed the local health
 * check does it confirm itself to the bootloader, and only then is the
 * anti-rollback floor raised. A trial that fails rolls back.
 */
import { bytesEqual, fromHex, toHex } from "./bytes";
import { newActive, type Active, type SavedState, type UpdateContext } from "./update-protocol";

/** A downloaded image: check its digest, record the intent, make it bootable, restart. */
export function activate(c: UpdateContext, a: Active): void {
  const o = c.o;
  const m = a.manifest!;
  a.cancelTimer?.();
  const ms = o.clock.monotonic() - a.startedAt;
  c.emit({ type: "downloaded", job: a.job, bytes: a.bytes, ms });
  const digest = a.digest!.digest();
  if (!bytesEqual(digest, fromHex(m.sha256))) return c.refuse(a.job, "digest-mismatch", `image SHA-256 ${toHex(digest).slice(0, 16)}… is not the signed ${m.sha256.slice(0, 16)}…`);
  // Verified. Record the intent first: whatever the power does next, the next boot knows what was happening.
  try {
    c.saveState({ phase: "activating", job: a.job, version: m.version, attempts: a.attempts + 1 });
  } catch (e) {
    return c.fail(a.job, "activation-failed", `could not record activation: ${String(e)}`);
  }
  try {
    o.sink.complete();
    a.opened = false;
  } catch (e) {
    return c.fail(a.job, "activation-failed", String(e));
  }
  a.phase = "activating";
  c.report(a.job, "IN_PROGRESS", { step: "activating", version: String(m.version) });
  c.emit({ type: "activating", job: a.job, version: m.version });
  o.log("info", "update: image verified and made bootable; restarting", { job: a.job, version: m.version, ms: Math.round(ms) });
  o.clock.schedule(() => c.guard(() => {
    if (c.stopped()) return;
    o.boot.restart();
  }), o.restartDelayMs ?? 1000);
}

/** First boot of a new image: report to the cloud, run the self-test, then confirm it or roll back. */
export async function trial(c: UpdateContext, st: SavedState): Promise<void> {
  const o = c.o;
  const a = newActive(st.job, "trial", st.attempts);
  c.setActive(a);
  c.emit({ type: "trial", job: st.job, version: st.version });
  o.log("info", "update: running a new image on trial", { job: st.job, version: st.version });
  // Health, part 1: the new image reaches the cloud and gets an answer (TLS, MQTT, policy all work).
  const token = c.report(st.job, "IN_PROGRESS", { step: "booted", version: String(st.version) });
  const answer = await c.answer(token, o.healthTimeoutMs ?? 300_000);
  if (c.active() !== a || c.stopped()) return;
  if (!answer) return rollback(c, st, "no answer from the cloud");
  // Health, part 2: the local self-test.
  let healthy = false;
  let why = "self-test failed";
  try {
    healthy = await (o.healthCheck?.() ?? true);
  } catch (e) {
    why = `self-test threw: ${String(e)}`;
  }
  if (c.active() !== a || c.stopped()) return;
  if (!healthy) return rollback(c, st, why);
  try {
    o.boot.confirm();
    // Only now, with the image confirmed to the bootloader, may the floor rise.
    c.setFloor(st.version);
  } catch (e) {
    o.log("error", "update: confirming the new image failed", { reason: String(e) });
    return;
  }
  c.emit({ type: "confirmed", job: st.job, version: st.version });
  c.finish(st.job, "SUCCEEDED", "confirmed", `running version ${st.version}`, { version: String(st.version) });
}

export function rollback(c: UpdateContext, st: SavedState, why: string): void {
  const o = c.o;
  o.log("error", "update: trial image unhealthy; rolling back", { job: st.job, version: st.version, why });
  c.emit({ type: "rolling-back", job: st.job, version: st.version, why });
  c.safe("state", () => c.saveState({ ...st, phase: "trial", failure: why }));
  c.setActive(undefined);
  c.safe("rollback", () => o.boot.rollback(why));
}
