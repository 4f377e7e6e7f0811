/*
 * The one command-line layer every tool in tools/ shares, on Node's own
 * `util.parseArgs`. It gives each command the same behaviour: `--help` (or
 * `-h`) anywhere before `--` prints the command's usage and exits 0; an
 * unknown flag, a missing value or a stray argument is refused with one line
 * naming the command and exit code 2; and a UserError thrown by the command
 * itself (a bad value, a busy port, a missing file) is printed the same way,
 * as one line without a stack trace. Only errors nobody expected keep their
 * stack: they are bugs, and the stack is what a bug report needs.
 */
import { parseArgs } from "node:util";
import path from "node:path";
import { fileURLToPath } from "node:url";

/** A mistake by the person at the keyboard: printed as one line, exit code 2. */
export class UserError extends Error {
  override name = "UserError";
}

export interface OptionSpec {
  type: "string" | "boolean";
  short?: string;
  multiple?: boolean;
}

export type Options = Record<string, OptionSpec>;

/** What a command accepts, and the text `--help` prints. */
export interface CommandSpec<O extends Options> {
  /** The name errors start with, e.g. "standin". */
  name: string;
  /** The whole `--help` text: how to call it, every option, what it does. */
  usage: string;
  options: O;
  /** How many plain arguments (sub-command included) it takes. Default none. */
  positionals?: { min?: number; max?: number };
}

type ValueOf<S extends OptionSpec> = S["type"] extends "boolean" ? (S["multiple"] extends true ? boolean[] : boolean) : S["multiple"] extends true ? string[] : string;

export interface Parsed<O extends Options> {
  values: { [K in keyof O]?: ValueOf<O[K]> };
  positionals: string[];
  /** Everything after a bare `--`, untouched. */
  rest: string[];
}

/** Where a command writes, so tests can run one in-process. */
export interface Io {
  out(text: string): void;
  err(text: string): void;
}

export const processIo: Io = {
  out: (text) => process.stdout.write(text.endsWith("\n") ? text : text + "\n"),
  err: (text) => process.stderr.write(text.endsWith("\n") ? text : text + "\n"),
};

/** True when `--help` or `-h` comes before any `--`. */
export function wantsHelp(argv: readonly string[]): boolean {
  for (const a of argv) {
    if (a === "--") return false;
    if (a === "--help" || a === "-h") return true;
  }
  return false;
}

/** Parse argv against the spec; every refusal is a UserError with a one-line message. */
export function parseCommandLine<O extends Options>(spec: CommandSpec<O>, argv: readonly string[]): Parsed<O> {
  const cut = argv.indexOf("--");
  const mine = cut < 0 ? [...argv] : argv.slice(0, cut);
  const rest = cut < 0 ? [] : argv.slice(cut + 1);
  let result: { values: Record<string, unknown>; positionals: string[] };
  try {
    result = parseArgs({ args: mine, options: { ...spec.options, help: { type: "boolean", short: "h" } }, strict: true, allowPositionals: true }) as typeof result;
  } catch (e) {
    throw new UserError(`${parseErrorLine(e)} (see --help)`);
  }
  delete result.values.help;
  for (const key of Object.keys(result.values)) {
    const option = spec.options[key];
    if (option?.type === "string" && !option.multiple && mine.filter((a) => a === `--${key}` || a.startsWith(`--${key}=`)).length > 1) {
      throw new UserError(`--${key} given twice (see --help)`);
    }
  }
  const min = spec.positionals?.min ?? 0;
  const max = spec.positionals?.max ?? 0;
  if (result.positionals.length > max) {
    throw new UserError(`unexpected argument ${JSON.stringify(result.positionals[max])} (see --help)`);
  }
  if (result.positionals.length < min) throw new UserError(`missing argument${min - result.positionals.length > 1 ? "s" : ""} (see --help)`);
  return { values: result.values as Parsed<O>["values"], positionals: result.positionals, rest };
}

function parseErrorLine(e: unknown): string {
  const err = e as { code?: string; message?: string };
  const message = String(err.message ?? e).split("\n")[0];
  switch (err.code) {
    case "ERR_PARSE_ARGS_UNKNOWN_OPTION": {
      const m = /Unknown option '([^']+)'/.exec(message);
      return `unknown option ${m ? m[1] : message}`;
    }
    case "ERR_PARSE_ARGS_INVALID_OPTION_VALUE": {
      const m = /Option '(?:-\w, )?(--[^' ]+)/.exec(message);
      return m ? (/does not take an argument/.test(message) ? `${m[1]} takes no value` : `${m[1]} needs a value`) : message;
    }
    default:
      return message;
  }
}

/** A whole number in [min, max] from an option's text, or a UserError naming the option. */
export function intOption(name: string, text: string | undefined, range: { min: number; max: number }, fallback?: number): number {
  // An option is named by its flag; a plain argument by its upper-case name in the usage.
  const label = /^[A-Z]/.test(name) ? name : `--${name}`;
  if (text === undefined) {
    if (fallback === undefined) throw new UserError(`${label} is required`);
    return fallback;
  }
  const n = Number(text);
  if (!/^-?\d+$/.test(text.trim()) || !Number.isSafeInteger(n) || n < range.min || n > range.max) {
    throw new UserError(`${label} must be a whole number from ${range.min} to ${range.max} (got ${JSON.stringify(text)})`);
  }
  return n;
}

/** A TCP port (0 = any free one). */
export function portOption(name: string, text: string | undefined, fallback?: number): number {
  return intOption(name, text, { min: 0, max: 65535 }, fallback);
}

/** The one line a UserError becomes. */
export function userErrorLine(command: string, e: UserError): string {
  return `${command}: ${e.message}`;
}

/**
 * Run a command: help, parsing and error reporting as described above. The body
 * returns an exit code, or nothing when it keeps running (a server) and will end
 * the process itself.
 */
export async function runCommand<O extends Options>(
  spec: CommandSpec<O>,
  argv: readonly string[],
  body: (args: Parsed<O>) => Promise<number | void> | number | void,
  io: Io = processIo,
): Promise<number | undefined> {
  if (wantsHelp(argv)) {
    io.out(spec.usage);
    return 0;
  }
  try {
    const args = parseCommandLine(spec, argv);
    const code = await body(args);
    return code === undefined ? undefined : code;
  } catch (e) {
    if (e instanceof UserError) {
      io.err(userErrorLine(spec.name, e));
      return 2;
    }
    const file = fileErrorLine(e);
    if (file) {
      io.err(`${spec.name}: ${file}`);
      return 2;
    }
    io.err(`${spec.name}: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    return 1;
  }
}

const FILE_ERRORS: Record<string, string> = {
  ENOENT: "no such file or directory",
  EACCES: "permission denied",
  EPERM: "not permitted",
  EEXIST: "already exists",
  EISDIR: "is a directory",
  ENOTDIR: "a part of the path is not a directory",
};

/**
 * A file-system error about a path (a file the user named that is missing,
 * unreadable or in the way) as one line; undefined for anything else.
 */
export function fileErrorLine(e: unknown): string | undefined {
  const err = e as NodeJS.ErrnoException;
  if (!(e instanceof Error) || typeof err.code !== "string" || typeof err.path !== "string" || !(err.code in FILE_ERRORS)) return undefined;
  return `${err.path}: ${FILE_ERRORS[err.code]}`;
}

/** True when the module at this URL is the script Node was started with. */
export function isEntry(moduleUrl: string): boolean {
  const entry = process.argv[1];
  return Boolean(entry) && path.resolve(entry) === fileURLToPath(moduleUrl);
}

/** `runCommand` for a script's entry point: sets the exit code, exits once done. */
export function runAsEntry<O extends Options>(moduleUrl: string, spec: CommandSpec<O>, body: (args: Parsed<O>) => Promise<number | void> | number | void): void {
  if (!isEntry(moduleUrl)) return;
  void runCommand(spec, process.argv.slice(2), body).then((code) => {
    if (code !== undefined) {
      process.exitCode = code;
      // Let pending writes flush, then end even if a handle (a socket, a timer) stays open.
      setImmediate(() => process.exit(code));
    }
  });
}

/**
 * The entry point of a module that is a library, not a command: run bare or
 * with `--help`, it says what it is for and which commands use it; any
 * argument is refused.
 */
export function libraryEntry(moduleUrl: string, name: string, about: string): void {
  runAsEntry(moduleUrl, { name, usage: about, options: {} }, () => {
    processIo.out(about);
    return 0;
  });
}
