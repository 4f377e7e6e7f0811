/*
 * Time check: whether an answer from the network clock may set the device's.
 *
 * SNTP is unauthenticated, so anyone on the path can answer it. The device
 * therefore trusts an answer only as far as it can cross-check it:
 *   - never below the floor: the firmware's build date, raised by the owner's
 *     authenticated commands (./commands timeFloor), so the clock cannot be
 *     wound back to before what the owner has vouched for;
 *   - the first answer of a boot, with nothing else to compare, is taken as
 *     it is (it may still not go below the floor);
 *   - after that, the clock the device already has is the reference: the
 *     monotonic clock says how much time has passed since it was set, so an
 *     answer may differ from where the clock should be by at most a small
 *     step plus the crystal's drift over that time. A larger difference moves
 *     the clock by that bound only, toward the answer: a forged reply a day
 *     ahead moves it by seconds, and a persistent forger walks it at that
 *     rate, one query at a time.
 * Nothing that matters for access rests on this alone: revocations ignore the
 * clock, and replays are refused by counters (see ./commands).
 *
 * Pure functions, so the device's SNTP client (modules/device/sntp) and the
 * host tests share one judgement.
 */

/** Largest correction applied at once after the first sync of a boot. */
export const NTP_MAX_STEP_MS = 2000;
/** Drift allowed on top, per elapsed time: 500 ppm, far above an ESP32 crystal's ±10-40 ppm. */
export const NTP_DRIFT_PPM = 500;

/** The device clock's last setting: wall time then, and the monotonic clock then. */
export interface TimeReference {
  wallMs: number;
  monotonicMs: number;
}

export type TimeVerdict =
  /** Take the answer as it is. */
  | { action: "set"; wallMs: number }
  /** The answer is too far from the clock: move by the bound only. */
  | { action: "step"; wallMs: number; offsetMs: number; boundMs: number }
  | { action: "refuse"; reason: string };

export interface TimeCheckOptions {
  /** Answers below this (ms since the epoch) are refused. */
  floorMs: number;
  /** The monotonic clock now. */
  monotonicMs: number;
  /** The clock's last setting in this boot; absent before the first. */
  reference?: TimeReference;
  maxStepMs?: number;
  driftPpm?: number;
}

/** The most an answer may differ from the reference-extrapolated time after elapsedMs. */
export function allowedOffsetMs(elapsedMs: number, maxStepMs = NTP_MAX_STEP_MS, driftPpm = NTP_DRIFT_PPM): number {
  return maxStepMs + Math.ceil((Math.max(0, elapsedMs) * driftPpm) / 1e6);
}

export function checkNetworkTime(answerMs: number, o: TimeCheckOptions): TimeVerdict {
  if (!Number.isFinite(answerMs)) return { action: "refuse", reason: "the answer is not a time" };
  if (answerMs < o.floorMs) return { action: "refuse", reason: "the answer is before the time floor" };
  const ref = o.reference;
  if (!ref) return { action: "set", wallMs: answerMs };
  const elapsed = o.monotonicMs - ref.monotonicMs;
  const expected = ref.wallMs + elapsed;
  const offsetMs = answerMs - expected;
  const boundMs = allowedOffsetMs(elapsed, o.maxStepMs, o.driftPpm);
  if (Math.abs(offsetMs) <= boundMs) return { action: "set", wallMs: answerMs };
  const wallMs = Math.max(o.floorMs, expected + Math.sign(offsetMs) * boundMs);
  return { action: "step", wallMs, offsetMs, boundMs };
}
