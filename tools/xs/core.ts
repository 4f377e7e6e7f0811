/*
 * Runs Doorward's platform-free core on the real XS engine.
 *
 * One xsnap worker (./worker) holds a Compartment whose global object has only
 * the language's built-ins (no TextEncoder, no print, no issueCommand): what a
 * core module sees on the device. Its module hooks ask this Node process for
 * every import; ./resolve applies mcconfig's rules and refuses anything the
 * device would not have, and core .ts files are transpiled one by one with
 * esbuild's transform (no bundling, so each module is loaded and linked by XS
 * itself, as on the device).
 *
 * Harness code ("run bodies") executes outside that compartment, in the
 * worker's own realm, as the body of an async function that receives
 * { importNow, args, state, measure, compartment }. Each run is one XS crank, so its meter
 * counts exactly what happened in it: set up in one run, measure in the next.
 *
 *   const xs = await startXsCore();
 *   const { value, meter } = await xs.run(`
 *     const { canonicalBytes } = importNow("core/canonical");
 *     return canonicalBytes(args.doc);`, { doc: { b: 1, a: [true] } });
 *   await xs.close();
 *
 * Values cross between Node and XS as JSON in which Uint8Array, bigint and
 * undefined are preserved (other objects become plain JSON; an undefined
 * array element arrives as a hole). A run is bounded by the meter limit (the
 * worker exits) and by a wall-clock timeout (the worker is killed).
 */
import { readFileSync, statSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { transform } from "esbuild";
import { moduleFile, resolveSpecifier, type ModuleRoots } from "./resolve";
import { startXsWorker, type XsMeterUsage, type XsWorker, type XsWorkerOptions } from "./worker";

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

export const DEFAULT_ROOTS: ModuleRoots = Object.freeze({
  coreDir: join(repoRoot, "modules", "core"),
  naclFile: join(repoRoot, "modules", "vendor", "tweetnacl.js"),
  harness: Object.freeze({ deterministic: join(repoRoot, "tools", "xs", "deterministic.ts") }),
});

export interface XsCoreOptions {
  /** Directory served as "core/*". Default modules/core; tests point it at fixtures. */
  coreDir?: string;
  /** Meter units one run may use before the worker dies. Default 2e9 (a full tweetnacl sign is ~22 M). */
  meteringLimit?: number;
  /** Wall-clock bound on one run, after which the worker is killed. Default 60 s. */
  timeoutMs?: number;
  name?: string;
  /** Where XS print() goes. Default "inherit". */
  stdout?: "inherit" | "ignore";
  /** Run the worker under another program (see ./callgrind). */
  wrapper?: XsWorkerOptions["wrapper"];
}

export interface XsRunMeter extends XsMeterUsage {
  /** Meter units of the run body alone, from its first statement until its promise settled (excludes argument and result transport). */
  body: number;
}

export interface XsRunResult<T> {
  value: T;
  meter: XsRunMeter;
}

export class XsRunError extends Error {
  override name = "XsRunError";
  constructor(
    message: string,
    /** The XS exception's own name, message and stack (when XS provides one). */
    readonly xs: { name: string; message: string; stack?: string },
    readonly meter?: XsRunMeter,
  ) {
    super(message);
  }
}

export interface XsCore {
  /** Run an async function body on XS. See the module comment for what it can use. */
  run<T = unknown>(body: string, args?: unknown): Promise<XsRunResult<T>>;
  /** Full specifiers served so far, in load order (a module loads again after a compartment reset). */
  readonly loaded: readonly string[];
  /** How many times a failed top-level import replaced the core compartment with a fresh one. */
  readonly compartmentResets: number;
  readonly worker: XsWorker;
  close(): Promise<void>;
}

// ---- values across the boundary: JSON with tagged bytes, bigints and undefined ----

export function encodeValue(value: unknown): string {
  return JSON.stringify({ v: value }, (_key, v: unknown) => {
    if (v instanceof Uint8Array) return { $u8: Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("hex") };
    if (typeof v === "bigint") return { $bigint: v.toString() };
    if (v === undefined) return { $undefined: true };
    return v;
  });
}

export function decodeValue(text: string): unknown {
  const doc = JSON.parse(text, (_key, v: unknown) => {
    if (v && typeof v === "object" && !Array.isArray(v)) {
      const o = v as Record<string, unknown>;
      if (typeof o.$u8 === "string") return new Uint8Array(Buffer.from(o.$u8, "hex"));
      if (typeof o.$bigint === "string") return BigInt(o.$bigint);
      if (o.$undefined === true) return undefined;
    }
    return v;
  }) as { v?: unknown };
  return doc.v;
}

/** Evaluated once in the worker's realm. Uses the worker's own globals (TextEncoder, issueCommand, resetMeter), which the core compartment does not get. */
const BOOTSTRAP = String.raw`(function () {
  "use strict";
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();
  const host = (request) => {
    const reply = JSON.parse(decoder.decode(issueCommand(encoder.encode(JSON.stringify(request)).buffer)));
    if (reply.refused !== undefined) throw new Error(reply.refused);
    return reply;
  };
  const HEX = "0123456789abcdef";
  const toHex = (u8) => { let s = ""; for (let i = 0; i < u8.length; i++) s += HEX[u8[i] >> 4] + HEX[u8[i] & 15]; return s; };
  const fromHex = (h) => { const out = new Uint8Array(h.length / 2); for (let i = 0; i < out.length; i++) out[i] = parseInt(h.substr(2 * i, 2), 16); return out; };
  const encode = (value) => JSON.stringify({ v: value }, function (key, v) {
    if (v instanceof Uint8Array) return { $u8: toHex(v) };
    if (typeof v === "bigint") return { $bigint: v.toString() };
    if (v === undefined) return { $undefined: true };
    return v;
  });
  const decode = (text) => JSON.parse(text, function (key, v) {
    if (v && typeof v === "object" && !Array.isArray(v)) {
      if (typeof v.$u8 === "string") return fromHex(v.$u8);
      if (typeof v.$bigint === "string") return BigInt(v.$bigint);
      if (v.$undefined === true) return undefined;
    }
    return v;
  }).v;
  const makeCompartment = () => new Compartment({
    globals: {},
    resolveHook(specifier, referrer) { return host({ op: "resolve", specifier, referrer }).specifier; },
    loadNowHook(specifier) { return { source: new ModuleSource(host({ op: "load", specifier }).source) }; },
  });
  let compartment = makeCompartment();
  const importNow = (specifier) => {
    const full = host({ op: "resolve", specifier, referrer: null }).specifier;
    try {
      return compartment.importNow(full);
    } catch (e) {
      // This XS keeps a failed module as a record whose later imports throw an empty
      // null-prototype object instead of the reason; a fresh compartment reports it again.
      compartment = makeCompartment();
      host({ op: "reset" });
      throw e;
    }
  };
  /** Meter units of one synchronous call, without disturbing the crank's total. */
  const measure = (fn) => {
    const limit = currentMeterLimit();
    const before = resetMeter(limit, 0);
    const value = fn();
    const compute = resetMeter(limit, 0);
    resetMeter(limit, before + compute);
    return { value, compute };
  };
  const state = {};
  const describe = (e) => {
    try {
      return {
        name: (e && typeof e.name === "string" && e.name) || "Error",
        message: e && e.message !== undefined ? String(e.message) : String(e),
        stack: e && typeof e.stack === "string" ? e.stack : undefined,
      };
    } catch {
      return { name: "Error", message: "thrown value cannot be described: " + Object.prototype.toString.call(e) };
    }
  };
  globalThis.__xsCoreRun = (id, fn, argsText) => {
    const args = decode(argsText);
    const limit = currentMeterLimit();
    const before = resetMeter(limit, 0);
    const stop = () => { const body = resetMeter(limit, 0); resetMeter(limit, before + body); return body; };
    let promise;
    try { promise = fn({ importNow, args, state, measure, compartment }); } catch (e) { promise = Promise.reject(e); }
    const fail = (body, error) => host({ op: "result", id, ok: false, body, error: describe(error) });
    promise.then(
      (value) => {
        const body = stop();
        let text;
        try { text = encode(value); } catch (e) { return fail(body, e); }
        host({ op: "result", id, ok: true, body, value: text });
      },
      (error) => fail(stop(), error),
    );
  };
})();
`;

interface RunOutcome {
  ok: boolean;
  body: number;
  value?: string;
  error?: { name: string; message: string; stack?: string };
}

type HostRequest =
  | { op: "resolve"; specifier: string; referrer: string | null }
  | { op: "load"; specifier: string }
  | { op: "reset" }
  | ({ op: "result"; id: number } & RunOutcome);

const transpiled = new Map<string, { stamp: string; code: string }>();

async function javascriptFor(file: string, loader: "ts" | "js"): Promise<string> {
  const source = readFileSync(file, "utf8");
  if (loader === "js") return source;
  const info = statSync(file);
  const stamp = `${info.mtimeMs}:${info.size}`;
  const cached = transpiled.get(file);
  if (cached?.stamp === stamp) return cached.code;
  // Per-file transform, like mcconfig's tsc: imports stay imports for XS to link.
  const result = await transform(source, {
    loader: "ts",
    format: "esm",
    target: "esnext",
    sourcefile: relative(repoRoot, file),
    tsconfigRaw: { compilerOptions: { verbatimModuleSyntax: true, useDefineForClassFields: true } },
  });
  transpiled.set(file, { stamp, code: result.code });
  return result.code;
}

export async function startXsCore(options: XsCoreOptions = {}): Promise<XsCore> {
  const roots: ModuleRoots = { ...DEFAULT_ROOTS, coreDir: options.coreDir ?? DEFAULT_ROOTS.coreDir };
  const timeoutMs = options.timeoutMs ?? 60_000;
  const loaded: string[] = [];
  let resets = 0;
  const outcomes = new Map<number, RunOutcome>();
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();

  async function answer(request: HostRequest): Promise<unknown> {
    try {
      switch (request.op) {
        case "resolve":
          return { specifier: resolveSpecifier(request.specifier, request.referrer ?? undefined, roots) };
        case "load": {
          const { file, loader } = moduleFile(request.specifier, roots);
          const source = await javascriptFor(file, loader);
          loaded.push(request.specifier);
          return { source };
        }
        case "reset":
          resets++;
          return {};
        case "result":
          outcomes.set(request.id, { ok: request.ok, body: request.body, value: request.value, error: request.error });
          return {};
      }
    } catch (error) {
      // Sent back as an exception inside XS, so it surfaces at the import that caused it.
      return { refused: (error as Error).message };
    }
  }

  const worker = startXsWorker({
    name: options.name ?? "xs-core",
    meteringLimit: options.meteringLimit,
    stdout: options.stdout,
    wrapper: options.wrapper,
    async handleCommand(bytes) {
      const request = JSON.parse(decoder.decode(bytes)) as HostRequest;
      return encoder.encode(JSON.stringify(await answer(request)));
    },
  });
  try {
    await worker.evaluate(BOOTSTRAP);
  } catch (error) {
    worker.terminate();
    throw error;
  }

  let nextId = 1;
  async function run<T>(body: string, args?: unknown): Promise<XsRunResult<T>> {
    const id = nextId++;
    const script = `__xsCoreRun(${id}, async ({ importNow, args, state, measure, compartment }) => {\n${body}\n}, ${JSON.stringify(encodeValue(args))});`;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        worker.terminate();
        reject(new Error(`XS run ${id} took longer than ${timeoutMs} ms; worker killed`));
      }, timeoutMs);
    });
    let evaluation;
    try {
      evaluation = await Promise.race([worker.evaluate(script), timeout]);
    } finally {
      clearTimeout(timer);
    }
    const outcome = outcomes.get(id);
    outcomes.delete(id);
    if (!outcome) {
      throw new Error(`XS run ${id} did not settle within its crank (it awaited something XS never resolved)`);
    }
    const meter: XsRunMeter = { ...evaluation.meter, body: outcome.body };
    if (!outcome.ok) {
      const xs = outcome.error ?? { name: "Error", message: "unknown" };
      throw new XsRunError(`XS ${xs.name}: ${xs.message}`, xs, meter);
    }
    return { value: decodeValue(outcome.value ?? "{}") as T, meter };
  }

  return {
    run,
    loaded,
    get compartmentResets() {
      return resets;
    },
    worker,
    async close() {
      await worker.close();
    },
  };
}
