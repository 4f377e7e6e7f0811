/*
 * A minimal driver for the xsnap-worker binary built by @agoric/xsnap.
 *
 * @agoric/xsnap's own driver needs SES lockdown in the Node process (it calls
 * harden() and assert() as globals), and lockdown freezes every intrinsic of
 * the whole process: Reflect among them, so the reflect-metadata polyfill that
 * @peculiar/x509 (our dev PKI) requires can no longer be installed, and any
 * tool that also runs XS measurements would inherit the breakage. The wire
 * protocol is small, so we speak it directly and leave Node untouched:
 *
 *  - the worker reads netstrings on fd 3 and writes netstrings on fd 4;
 *  - "e<code>" evaluates a script; the reply is ".<meter JSON>\x01<bytes>" or
 *    "!<error text>", after the worker has drained its promise jobs;
 *  - while evaluating, the global issueCommand(ArrayBuffer) sends "?<bytes>"
 *    and blocks until the parent answers "/<bytes>";
 *  - "q" quits.
 *
 * The spawn can be wrapped (valgrind, see ./callgrind) because the worker only
 * needs its fds 3 and 4, which a wrapper passes through.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import type { Readable, Writable } from "node:stream";

/** XS's own deterministic counters for one evaluation (a "crank"). */
export interface XsMeterUsage {
  /** Meter units (roughly, bytecodes and native steps) executed during the crank. */
  compute: number;
  /** Bytes the machine has allocated for its heaps (chunks + slots), after the crank. */
  allocate: number;
  /** Slots in use after the crank. */
  currentHeapCount: number;
}

export interface XsEvaluation {
  reply: Uint8Array;
  meter: XsMeterUsage;
}

export interface XsWorkerOptions {
  /** Shown in errors and in the worker's argv[0]. */
  name?: string;
  /** Meter units one crank may use before the worker exits (code 17). Default 2e9. */
  meteringLimit?: number;
  /** Answers issueCommand() calls made by XS code. */
  handleCommand?: (request: Uint8Array) => Uint8Array | Promise<Uint8Array>;
  /** Where the worker's print() output goes. Default "inherit". */
  stdout?: "inherit" | "ignore";
  stderr?: "inherit" | "ignore";
  /** Run the worker under another program, e.g. valgrind: spawn(wrapper.command, [...wrapper.args, worker, ...]). */
  wrapper?: { command: string; args: string[] };
  /** Use the debug build of the worker. */
  debug?: boolean;
}

export interface XsWorker {
  readonly name: string;
  readonly pid: number | undefined;
  /** Evaluate a script as the worker's global eval would; evaluations run one at a time, in call order. */
  evaluate(code: string): Promise<XsEvaluation>;
  /** Ask the worker to quit and wait for it; resolves with its exit code. */
  close(): Promise<number | null>;
  /** Kill the worker now. */
  terminate(): void;
  /** Settles when the process exits, with its exit code (null if killed by a signal). */
  readonly exited: Promise<number | null>;
}

/** Exit codes of xsnap-worker.c. */
const EXIT_REASONS: Record<number, string> = {
  1: "bad usage",
  2: "I/O error",
  11: "not enough memory",
  12: "stack overflow",
  15: "unhandled exception",
  16: "no more keys",
  17: "too much computation (metering limit reached)",
};

export function xsnapWorkerPath(debug = false): string {
  const platform = process.platform === "linux" ? "lin" : process.platform === "darwin" ? "mac" : undefined;
  if (!platform) throw new Error(`xsnap-worker is not built for ${process.platform}`);
  const url = import.meta.resolve("@agoric/xsnap/package.json");
  return fileURLToPath(new URL(`./xsnap-native/xsnap/build/bin/${platform}/${debug ? "debug" : "release"}/xsnap-worker`, url));
}

const COMMA = 0x2c;
const COLON = 0x3a;
const OK = 0x2e; // "."
const ERROR = 0x21; // "!"
const QUERY = 0x3f; // "?"
const METER_SEPARATOR = 0x01;

/** Incremental netstring decoder: feed chunks, get whole messages. */
class NetstringReader {
  #buffer: Buffer = Buffer.alloc(0);
  feed(chunk: Buffer): Buffer[] {
    this.#buffer = this.#buffer.length ? Buffer.concat([this.#buffer, chunk]) : chunk;
    const messages: Buffer[] = [];
    for (;;) {
      const colon = this.#buffer.indexOf(COLON);
      if (colon < 0) {
        if (this.#buffer.length > 20) throw new Error("xsnap protocol: netstring length prefix too long");
        return messages;
      }
      const lengthText = this.#buffer.subarray(0, colon).toString("latin1");
      if (!/^[0-9]{1,12}$/.test(lengthText)) throw new Error(`xsnap protocol: bad netstring length ${JSON.stringify(lengthText)}`);
      const length = Number(lengthText);
      const end = colon + 1 + length;
      if (this.#buffer.length < end + 1) return messages;
      if (this.#buffer[end] !== COMMA) throw new Error("xsnap protocol: netstring not terminated by a comma");
      messages.push(this.#buffer.subarray(colon + 1, end));
      this.#buffer = this.#buffer.subarray(end + 1);
    }
  }
}

function netstring(...parts: Uint8Array[]): Buffer {
  const body = Buffer.concat(parts);
  return Buffer.concat([Buffer.from(`${body.length}:`, "latin1"), body, Buffer.from(",", "latin1")]);
}

interface Pending {
  resolve(value: XsEvaluation): void;
  reject(error: Error): void;
}

export function startXsWorker(options: XsWorkerOptions = {}): XsWorker {
  const name = options.name ?? "xs-worker";
  if (name.startsWith("-")) throw new Error("worker name cannot start with a hyphen");
  const handleCommand = options.handleCommand ?? ((request: Uint8Array) => request);
  const limit = options.meteringLimit ?? 2e9;
  if (!Number.isInteger(limit) || limit < 1 || limit > 0x7fffffff) {
    throw new RangeError("meteringLimit must be an integer in 1..2^31-1 (the worker parses it with atoi)");
  }
  const workerArgs = [name, "-l", String(limit)];
  const bin = xsnapWorkerPath(options.debug);
  const [command, args] = options.wrapper
    ? [options.wrapper.command, [...options.wrapper.args, bin, ...workerArgs]]
    : [bin, workerArgs];
  const child: ChildProcess = spawn(command, args, {
    stdio: ["ignore", options.stdout ?? "inherit", options.stderr ?? "inherit", "pipe", "pipe"],
  });
  const toWorker = child.stdio[3] as Writable;
  const fromWorker = child.stdio[4] as Readable;
  const reader = new NetstringReader();
  const queue: { code: string; pending: Pending }[] = [];
  let current: Pending | undefined;
  let failure: Error | undefined;
  let closing = false;

  const exited = new Promise<number | null>((resolve) => {
    child.once("exit", (code, signal) => {
      const why = code !== null ? `exited with code ${code}${EXIT_REASONS[code] ? ` (${EXIT_REASONS[code]})` : ""}` : `killed by ${signal}`;
      fail(new Error(`xsnap worker ${name} ${why}`));
      resolve(code);
    });
    child.once("error", (error) => {
      fail(new Error(`xsnap worker ${name} could not start: ${error.message}`));
      resolve(null);
    });
  });
  // A write to a dead worker reports EPIPE here; the exit handler already explains why.
  toWorker.on("error", () => {});

  function fail(error: Error): void {
    failure ??= error;
    current?.reject(failure);
    current = undefined;
    for (const { pending } of queue.splice(0)) pending.reject(failure);
  }

  function next(): void {
    if (current || failure) return;
    const item = queue.shift();
    if (!item) {
      if (closing && child.exitCode === null && child.signalCode === null) toWorker.end(netstring(Buffer.from("q", "latin1")));
      return;
    }
    current = item.pending;
    toWorker.write(netstring(Buffer.from("e", "latin1"), Buffer.from(item.code, "utf8")));
  }

  // Commands are answered strictly in order: the worker blocks on each one.
  let commandChain = Promise.resolve();
  fromWorker.on("data", (chunk: Buffer) => {
    let messages: Buffer[];
    try {
      messages = reader.feed(chunk);
    } catch (error) {
      fail(error as Error);
      child.kill();
      return;
    }
    for (const message of messages) {
      const kind = message[0];
      if (kind === QUERY) {
        const request = Uint8Array.prototype.slice.call(message, 1);
        commandChain = commandChain.then(async () => {
          let reply: Uint8Array;
          try {
            reply = await handleCommand(request);
          } catch (error) {
            // The worker is blocked waiting for an answer; without one it would hang, so stop it.
            fail(new Error(`handleCommand failed: ${(error as Error).message}`));
            child.kill();
            return;
          }
          toWorker.write(netstring(Buffer.from("/", "latin1"), reply));
        });
      } else if (kind === OK || kind === ERROR) {
        // Settle only after every command of this crank has been answered.
        const done = current;
        current = undefined;
        commandChain = commandChain.then(() => {
          if (!done) return;
          if (kind === ERROR) {
            done.reject(new Error(`XS exception in ${name}: ${message.subarray(1).toString("utf8")}`));
          } else {
            const separator = message.indexOf(METER_SEPARATOR, 1);
            const meterJson = separator >= 0 ? message.subarray(1, separator).toString("utf8") : "{}";
            const m = JSON.parse(meterJson) as Partial<XsMeterUsage>;
            done.resolve({
              reply: Uint8Array.prototype.slice.call(message, separator >= 0 ? separator + 1 : 1),
              meter: { compute: m.compute ?? NaN, allocate: m.allocate ?? NaN, currentHeapCount: m.currentHeapCount ?? NaN },
            });
          }
          next();
        });
      } else {
        fail(new Error(`xsnap protocol: unexpected message ${JSON.stringify(message.subarray(0, 40).toString("latin1"))}`));
        child.kill();
        return;
      }
    }
  });

  return {
    name,
    get pid() {
      return child.pid;
    },
    exited,
    evaluate(code: string): Promise<XsEvaluation> {
      return new Promise<XsEvaluation>((resolve, reject) => {
        if (failure) return reject(failure);
        if (closing) return reject(new Error(`xsnap worker ${name} is closing`));
        queue.push({ code, pending: { resolve, reject } });
        next();
      });
    },
    /** Quits once every queued evaluation has finished. */
    async close(): Promise<number | null> {
      if (!closing) {
        closing = true;
        next();
      }
      return exited;
    },
    terminate(): void {
      if (child.exitCode === null && child.signalCode === null) child.kill();
    },
  };
}
