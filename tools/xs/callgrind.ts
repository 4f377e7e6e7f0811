/*
 * Counts the x86 instructions one core operation costs on XS, with valgrind's callgrind.
 *
 * The XS meter (tools/xs/core.ts) is cheap and exact but counts XS steps, not
 * machine work (about 40 instructions per unit for tweetnacl signing, but
 * native-heavy code can differ); instructions are the proxy the ESP32 time
 * model uses. Method, as in the measured facts on XS crypto costs: a fresh
 * worker runs the setup, then the operation N times in one run, once for
 * N = low and once for N = high; the
 * per-operation cost is (total(high) - total(low)) / (high - low), which
 * cancels process start, module loading and setup. Used by `npm run bench`.
 * Totals repeat exactly on a quiet machine; under load the worker's pipe I/O
 * with Node can shift them by a few hundred instructions, which only matters
 * for operations under ~1 M instructions.
 *
 *   const r = await countInstructions({
 *     setup: `state.signer = ...; for (let i = 0; i < 3; i++) state.signer.precompute();`,
 *     operation: `state.signer.sign(state.message);`,
 *   });
 *   r.perOperation  // instructions for one online sign
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startXsCore } from "./core";

export interface CallgrindOptions {
  /** Run body executed once before the measured run (same helpers as XsCore.run). Must prepare state for `high` operations. */
  setup: string;
  /** Body of one operation; it runs `n` times in a loop inside a single run, with `i` as the iteration index. May use await. */
  operation: string;
  /** Passed to setup and operation as `args`. */
  args?: unknown;
  /** Repetition counts; default [1, 3]. */
  counts?: [low: number, high: number];
  coreDir?: string;
  /** valgrind executable; default "valgrind". */
  valgrind?: string;
  /** Wall-clock bound per run under valgrind; default 10 minutes. */
  timeoutMs?: number;
}

export interface CallgrindResult {
  /** x86 instructions for one operation. */
  perOperation: number;
  /** Whole-process instruction totals for each repetition count. */
  totals: { n: number; instructions: number }[];
}

export function valgrindAvailable(valgrind = "valgrind"): boolean {
  const probe = spawnSync(valgrind, ["--version"], { encoding: "utf8" });
  return probe.status === 0 && /^valgrind/.test(probe.stdout);
}

/** The "totals:" (or "summary:") Ir figure of a callgrind output file. */
export function callgrindTotal(text: string): number {
  const match = /^totals:\s+(\d+)/m.exec(text) ?? /^summary:\s+(\d+)/m.exec(text);
  if (!match) throw new Error("callgrind output has no totals line");
  return Number(match[1]);
}

async function totalFor(options: CallgrindOptions, n: number, dir: string): Promise<number> {
  const outFile = join(dir, `callgrind.${n}.out`);
  const xs = await startXsCore({
    name: `callgrind-${n}`,
    coreDir: options.coreDir,
    timeoutMs: options.timeoutMs ?? 600_000,
    stdout: "ignore",
    wrapper: { command: options.valgrind ?? "valgrind", args: ["--tool=callgrind", "-q", `--callgrind-out-file=${outFile}`] },
  });
  try {
    await xs.run(options.setup, options.args);
    await xs.run(`for (let i = 0; i < ${n}; i++) {\n${options.operation}\n}`, options.args);
  } catch (error) {
    xs.worker.terminate();
    throw error;
  }
  // callgrind writes its file when the worker exits.
  const code = await xs.worker.close();
  if (code !== 0) throw new Error(`worker under callgrind exited with ${code}`);
  return callgrindTotal(readFileSync(outFile, "utf8"));
}

export async function countInstructions(options: CallgrindOptions): Promise<CallgrindResult> {
  const [low, high] = options.counts ?? [1, 3];
  if (!(Number.isInteger(low) && Number.isInteger(high) && low >= 0 && high > low && high <= 1000)) {
    throw new RangeError("counts must be integers with 0 <= low < high <= 1000");
  }
  if (!valgrindAvailable(options.valgrind)) throw new Error("valgrind is not installed or not runnable");
  const dir = mkdtempSync(join(tmpdir(), "doorward-callgrind-"));
  try {
    // One after the other: two valgrinds at once would only slow each other down.
    const lowTotal = await totalFor(options, low, dir);
    const highTotal = await totalFor(options, high, dir);
    return {
      perOperation: Math.round((highTotal - lowTotal) / (high - low)),
      totals: [
        { n: low, instructions: lowTotal },
        { n: high, instructions: highTotal },
      ],
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
