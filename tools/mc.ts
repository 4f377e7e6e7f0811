/*
 * Build, flash, simulate and provision Doorward with the Moddable SDK: what the
 * npm scripts call (`npm run build:xiao`, `flash:xiao`, `sim:lin`, `provision`...).
 *
 *   npx tsx tools/mc.ts check [board]
 *   npx tsx tools/mc.ts build|flash|debug <board> --broker <prefix>-ats.iot.<region>.amazonaws.com [--broker-port 8883|443] [--development [--dev-vault-key]]
 *   npx tsx tools/mc.ts sim [--thing NAME] [--rings N] [--no-build]
 *   npx tsx tools/mc.ts compile <board>
 *   npx tsx tools/mc.ts provision --port /dev/ttyACM0 --bundle FILE [--keep]
 *   npx tsx tools/mc.ts provision-sim --bundle FILE [--keep]
 *   npx tsx tools/mc.ts typecheck [board|lin]
 *
 * Every command that needs the SDK checks for it first and stops with a
 * message naming the missing piece: MODDABLE (the SDK checkout), mcconfig on
 * PATH (its built tools), IDF_PATH (ESP-IDF, for a board), the repository's
 * TypeScript 6 (mcconfig compiles the .ts modules with the tsc it finds on
 * PATH, so this puts node_modules/.bin first). The builds:
 *  - build/flash: `mcconfig -i -m -p <board>`, an instrumented release build.
 *    Not -d: its console carries the log as text and the provisioning protocol
 *    (modules/device/provision-serial), where a -d build's would carry xsbug's.
 *    build adds `-t build` (no flashing).
 *  - debug: `mcconfig -d -m -p <board> console=xsbug` for xsbug; it cannot be
 *    provisioned over the console, so provision with a build first.
 *  - sim: `mcconfig -d -m -p lin -t build -o build/sim provisionFile=<DOORWARD_HOME
 *    or repo/.doorward>/lin/bundle.json`, then tools/sim-lin.ts runs it: the
 *    stand-in, provisioning, mcsim (under Xvfb without a display) and the
 *    cloud consumer that verifies each ring. provision-sim puts a bundle of
 *    your own at that path, which the simulator reads and deletes.
 *  - compile: a board's JavaScript stage without ESP-IDF: mcconfig writes the
 *    makefile, and its own targets for mc.xs.c and mc.resources.c run tsc,
 *    xsc, xsl and mcrez. It finds everything the SDK's tools can find, short of
 *    the C compile and the link.
 * The broker endpoint is compiled in (it is the egress allowlist's MQTT entry),
 * so a board build needs --broker (or DOORWARD_BROKER).
 *
 * typecheck sees exactly what mcconfig's tsc sees, per platform: mcconfig is
 * run without -m, which writes the tsconfig-base.json (the manifest's module
 * mapping for that platform as `paths`, the SDK's typings) and the mc.ffi.d.ts
 * of that platform's "ffi" functions, and tsc checks every module mcconfig
 * would compile against them. `npm test`'s device check uses the npm
 * @moddable/typings instead, and cannot tell one platform's files from another's.
 */
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import tty from "node:tty";
import { fileURLToPath } from "node:url";
import nacl from "tweetnacl";
import ts from "typescript";
import { AWS_IOT_ATS_ENDPOINT } from "../modules/core/egress";
import { parseReply, sendBundle, ProvisionError, type Reply } from "../modules/device/provision-serial";
import { parseCommandLine, UserError as UsageError, wantsHelp } from "./lib/cli";
import { runSimLin, SimError } from "./sim-lin";

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
/** The SDK and ESP-IDF versions this was written and checked against. */
export const MODDABLE_VERSION = "8.2.3";
export const ESP_IDF_VERSION = "v6.0";

export interface BoardTarget {
  /** The short name the npm scripts use. */
  name: string;
  /** mcconfig -p value. */
  platform: string;
  /** The key of manifest.json "platforms" that the platform matches. */
  manifestKey: string;
  esp32: boolean;
}

export const BOARDS: readonly BoardTarget[] = [
  { name: "xiao", platform: "esp32/xiao_esp32s3_sense", manifestKey: "esp32/xiao_esp32s3_sense", esp32: true },
  { name: "m5atom", platform: "esp32/m5atom_s3r_m12", manifestKey: "esp32/m5atom_s3r_m12", esp32: true },
  { name: "lilygo", platform: "esp32/lilygo_t_camera_plus_s3", manifestKey: "esp32/lilygo_t_camera_plus_s3", esp32: true },
  // A custom target: mcconfig takes the directory of its manifest after "esp32:".
  { name: "esp32cam", platform: "esp32:./hardware/targets/esp32cam", manifestKey: "esp32/esp32cam", esp32: true },
  { name: "lin", platform: "lin", manifestKey: "lin", esp32: false },
];

/** Where the simulator looks for a bundle (passed to it as provisionFile=): under $DOORWARD_HOME, default <repo>/.doorward. */
export function simBundlePath(env: NodeJS.ProcessEnv): string {
  return path.join(env.DOORWARD_HOME ? path.resolve(env.DOORWARD_HOME) : path.join(REPO, ".doorward"), "lin", "bundle.json");
}

export class SetupError extends Error {
  override name = "SetupError";
}
/** A mistake in the command line or its values: one line, exit code 2. */
export { UsageError };

export function findBoard(name: string | undefined): BoardTarget {
  const b = BOARDS.find((x) => x.name === name || x.manifestKey === name || x.platform === name);
  if (!b) throw new UsageError(`unknown board ${JSON.stringify(name ?? "")}: one of ${BOARDS.map((x) => x.name).join(", ")}`);
  return b;
}

function onPath(command: string, env: NodeJS.ProcessEnv): string | undefined {
  for (const dir of (env.PATH ?? "").split(path.delimiter)) {
    if (!dir) continue;
    const file = path.join(dir, command);
    try {
      fs.accessSync(file, fs.constants.X_OK);
      if (fs.statSync(file).isFile()) return file;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** The environment mcconfig runs in: the repository's TypeScript first on PATH. */
export function toolEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return { ...env, PATH: [path.join(REPO, "node_modules", ".bin"), env.PATH ?? ""].join(path.delimiter) };
}

/** The SDK checkout, or SetupError saying MODDABLE is missing. */
export function requireModdable(env: NodeJS.ProcessEnv): string {
  const moddable = env.MODDABLE;
  if (!moddable) {
    throw new SetupError(
      `MODDABLE is not set: install the Moddable SDK ${MODDABLE_VERSION} (documentation/Moddable SDK - Getting Started.md in github.com/Moddable-OpenSource/moddable) and export MODDABLE=<its directory>`,
    );
  }
  if (!fs.existsSync(path.join(moddable, "examples", "manifest_base.json"))) {
    throw new SetupError(`MODDABLE=${moddable} is not a Moddable SDK checkout (examples/manifest_base.json is missing)`);
  }
  return moddable;
}

/** Throws SetupError naming the first missing piece for this board (undefined: the SDK only). */
export function requireSdk(env: NodeJS.ProcessEnv, board?: BoardTarget): void {
  const moddable = requireModdable(env);
  const ext = toolEnv(env);
  if (!onPath("mcconfig", ext)) {
    throw new SetupError(`mcconfig is not on PATH: build the SDK tools, then add ${path.join(moddable, "build", "bin", process.platform === "darwin" ? "mac" : "lin", "release")} to PATH`);
  }
  if (!fs.existsSync(path.join(REPO, "node_modules", ".bin", "tsc"))) {
    throw new SetupError("TypeScript 6 is missing from node_modules (mcconfig compiles the .ts modules with it): run npm install");
  }
  if (board?.esp32) {
    const idf = env.IDF_PATH;
    if (!idf) {
      throw new SetupError(
        `ESP-IDF is not set up: IDF_PATH is not set. Install ESP-IDF ${ESP_IDF_VERSION} (what Moddable SDK ${MODDABLE_VERSION} expects; $MODDABLE/documentation/devices/esp32.md) and export IDF_PATH=<its directory>`,
      );
    }
    if (!fs.existsSync(path.join(idf, "export.sh"))) throw new SetupError(`IDF_PATH=${idf} is not an ESP-IDF checkout (export.sh is missing)`);
  }
}

interface Parsed {
  command: string;
  positional: string[];
  values: Map<string, string>;
  flags: Set<string>;
  /** Everything after "--": passed to mcconfig as is. */
  extra: string[];
}

const OPTIONS = {
  broker: { type: "string" }, "broker-port": { type: "string" }, port: { type: "string" }, bundle: { type: "string" },
  "dev-vault-key": { type: "boolean" }, development: { type: "boolean" }, keep: { type: "boolean" },
  thing: { type: "string" }, rings: { type: "string" }, "press-every": { type: "string" }, budget: { type: "string" },
  "no-build": { type: "boolean" }, measure: { type: "boolean" },
} as const;

/** Manifests that run the simulator inside a board family's XS budget (creation values, no heap growth). */
export const BUDGETS: Record<string, string> = { s3: "hardware/budget/lin-s3.json", esp32cam: "hardware/budget/lin-esp32cam.json" };

function parseArgs(argv: string[]): Parsed {
  const { values, positionals, rest } = parseCommandLine({ name: "mc", usage: USAGE, options: OPTIONS, positionals: { max: 2 } }, argv);
  const [command = "", ...positional] = positionals;
  const p: Parsed = { command, positional, values: new Map(), flags: new Set(), extra: rest };
  for (const [k, v] of Object.entries(values)) {
    if (typeof v === "string") p.values.set(`--${k}`, v);
    else if (v === true) p.flags.add(`--${k}`);
  }
  return p;
}

/** The mcconfig arguments for a command (exported for the tests and for --help). */
export function mcconfigArgs(command: "build" | "flash" | "debug" | "sim", board: BoardTarget, options: { broker?: string; brokerPort?: string; devVaultKey?: boolean; development?: boolean; extra?: string[]; env?: NodeJS.ProcessEnv }): string[] {
  const args: string[] = [];
  if (command === "sim") {
    // -t build: the SDK's default lin target would pkill every mcsim and serial2xsbug on the machine and launch xsbug.
    args.push("-d", "-m", "-p", "lin", "-t", "build", "-o", path.join(REPO, "build", "sim"), `provisionFile=${simBundlePath(options.env ?? {})}`);
    return [...args, ...(options.extra ?? [])];
  }
  args.push(command === "debug" ? "-d" : "-i", "-m", "-p", board.platform);
  if (command === "build") args.push("-t", "build");
  if (command === "debug") args.push("console=xsbug");
  if (options.broker) args.push(`broker=${options.broker}`);
  if (options.brokerPort) args.push(`brokerPort=${options.brokerPort}`);
  if (options.development && command !== "debug") args.push("development=1");
  if (options.devVaultKey) args.push("devVaultKey=1");
  return [...args, ...(options.extra ?? [])];
}

function brokerFor(p: Parsed, env: NodeJS.ProcessEnv): { broker: string; brokerPort?: string } {
  const broker = (p.values.get("--broker") ?? env.DOORWARD_BROKER ?? "").toLowerCase();
  if (!broker) {
    throw new UsageError("give your AWS IoT endpoint: --broker <prefix>-ats.iot.<region>.amazonaws.com (aws iot describe-endpoint --endpoint-type iot:Data-ATS), or set DOORWARD_BROKER");
  }
  if (!AWS_IOT_ATS_ENDPOINT.test(broker)) throw new UsageError(`--broker ${JSON.stringify(broker)} is not an AWS IoT ATS data endpoint (<prefix>-ats.iot.<region>.amazonaws.com)`);
  const port = p.values.get("--broker-port");
  if (port !== undefined && port !== "8883" && port !== "443") throw new UsageError("--broker-port must be 8883 (or 443, which needs the ALPN entry in config.doorward.egress)");
  return port === undefined ? { broker } : { broker, brokerPort: port };
}

export interface CliIo {
  out(line: string): void;
  err(line: string): void;
  env: NodeJS.ProcessEnv;
  /** Run a program with the terminal; resolves to its exit code. */
  run(command: string, args: string[], env: NodeJS.ProcessEnv, cwd?: string): Promise<number>;
  /** The simulator session (tools/sim-lin.ts). */
  sim(options: Parameters<typeof runSimLin>[0]): Promise<number>;
}

const USAGE = `usage: npx tsx tools/mc.ts <command> [board] [options] [-- more mcconfig arguments]

boards: ${BOARDS.filter((b) => b.esp32).map((b) => b.name).join(", ")} (and lin, the simulator)

  check [board]            what is installed, what is missing
  build <board> --broker <prefix>-ats.iot.<region>.amazonaws.com [--broker-port 8883|443] [--development [--dev-vault-key]]
                           mcconfig -i -m -p <board> -t build   (needs MODDABLE, mcconfig, IDF_PATH)
  flash <board> --broker ...   build and flash the board connected over USB (UPLOAD_PORT=<tty> to choose it)
  debug <board> --broker ...   a -d build for xsbug (cannot be provisioned over the console)
  sim [--thing NAME] [--rings N] [--press-every MS] [--measure] [--budget s3|esp32cam] [--no-build]
                           the firmware in Moddable's Linux simulator: mcconfig -d -m -p lin -t build,
                           the local AWS IoT stand-in, provisioning on first run, mcsim (under Xvfb
                           when there is no DISPLAY), its log, and each ring verified; --rings N stops
                           after N verified rings; --measure reports the XS stack and heap peaks;
                           --budget runs inside a board family's creation values, with no heap growth
  compile <board>          the JavaScript stage of a board build (tsc, xsc, xsl, mcrez) without ESP-IDF
  provision --port <tty> --bundle <file> [--keep]
                           send a bundle (npx tsx tools/provision.ts create ...) over the board's console;
                           the file is erased afterwards unless --keep
  provision-sim --bundle <file> [--keep]
                           hand a bundle to the simulator (<DOORWARD_HOME or .doorward>/lin/bundle.json)
  typecheck [board|lin]    type-check every platform (or one) exactly as mcconfig's tsc will

--development: a development build (development=1): it says so at every boot and must never hold production secrets.
--dev-vault-key: esp32cam only, with --development (or debug) only: keep the vault key in plain flash (no flash
                 encryption); a production build with it is refused.
SDK ${MODDABLE_VERSION}, ESP-IDF ${ESP_IDF_VERSION}.`;

export async function main(argv: string[], io: CliIo): Promise<number> {
  try {
    if (wantsHelp(argv)) {
      io.out(USAGE);
      return 0;
    }
    const p = parseArgs(argv);
    if (!p.command || p.command === "help") {
      io.out(USAGE);
      return 0;
    }
    switch (p.command) {
      case "check":
        return check(p, io);
      case "build":
      case "flash":
      case "debug": {
        const board = findBoard(p.positional[0]);
        if (!board.esp32) throw new UsageError(`${p.command} is for a board; the simulator is "sim"`);
        const { broker, brokerPort } = brokerFor(p, io.env);
        if (p.flags.has("--dev-vault-key") && board.name !== "esp32cam") throw new UsageError("--dev-vault-key applies to esp32cam only (the S3 boards keep the vault key in eFuses)");
        const development = p.flags.has("--development") || p.command === "debug";
        if (p.flags.has("--dev-vault-key") && !development) {
          throw new UsageError("a production build of the ESP32-CAM cannot keep its vault key in plain flash: turn on flash and NVS encryption (hardware/README.md), or add --development for a development build that is never given production secrets");
        }
        requireSdk(io.env, board);
        const args = mcconfigArgs(p.command, board, { broker, brokerPort, devVaultKey: p.flags.has("--dev-vault-key"), development: p.flags.has("--development"), extra: p.extra });
        io.out(`mcconfig ${args.join(" ")}`);
        return await io.run("mcconfig", args, toolEnv(io.env));
      }
      case "sim": {
        requireSdk(io.env);
        const rings = Number(p.values.get("--rings") ?? 0);
        if (!Number.isInteger(rings) || rings < 0) throw new UsageError("--rings takes a whole number");
        const press = p.values.get("--press-every");
        if (press !== undefined && !/^[1-9][0-9]{2,7}$/.test(press)) throw new UsageError("--press-every takes milliseconds, 100 or more");
        const budget = p.values.get("--budget");
        if (budget !== undefined && !BUDGETS[budget]) throw new UsageError(`--budget is one of ${Object.keys(BUDGETS).join(", ")}`);
        return await io.sim({
          repo: REPO,
          home: path.dirname(path.dirname(simBundlePath(io.env))),
          thing: p.values.get("--thing") ?? io.env.DOORWARD_THING ?? "doorward-lin-1",
          env: toolEnv(io.env),
          rings,
          noBuild: p.flags.has("--no-build"),
          extra: p.extra,
          measure: p.flags.has("--measure"),
          ...(press === undefined ? {} : { pressEveryMs: Number(press) }),
          ...(budget === undefined ? {} : { manifest: path.join(REPO, BUDGETS[budget]) }),
          out: io.out,
          err: io.err,
        });
      }
      case "compile":
        return await compile(p, io);
      case "provision":
        return await provision(p, io);
      case "provision-sim":
        return provisionSim(p, io);
      case "typecheck":
        return await typecheck(p, io);
      default:
        throw new UsageError(`unknown command "${p.command}" (see --help)`);
    }
  } catch (e) {
    if (e instanceof UsageError) {
      io.err(`mc: ${e.message}`);
      return 2;
    }
    if (e instanceof SetupError || e instanceof ProvisionError || e instanceof SimError) {
      io.err(`mc: ${e.message}`);
      return 1;
    }
    io.err(`mc: ${e instanceof Error ? e.message : String(e)}`);
    return 1;
  }
}

function check(p: Parsed, io: CliIo): number {
  const board = p.positional[0] ? findBoard(p.positional[0]) : undefined;
  const env = io.env;
  const rows: Array<[boolean, string]> = [
    [Boolean(env.MODDABLE && fs.existsSync(path.join(env.MODDABLE, "examples", "manifest_base.json"))), `MODDABLE: the Moddable SDK ${MODDABLE_VERSION} checkout (${env.MODDABLE ?? "not set"})`],
    [Boolean(onPath("mcconfig", toolEnv(env))), "mcconfig on PATH (the SDK's built tools)"],
    [fs.existsSync(path.join(REPO, "node_modules", ".bin", "tsc")), "TypeScript 6 in node_modules (npm install)"],
  ];
  if (!board || board.esp32) rows.push([Boolean(env.IDF_PATH && fs.existsSync(path.join(env.IDF_PATH, "export.sh"))), `IDF_PATH: ESP-IDF ${ESP_IDF_VERSION} (${env.IDF_PATH ?? "not set"})${board ? "" : " (boards only)"}`]);
  for (const [ok, what] of rows) io.out(`${ok ? "ok     " : "missing"}  ${what}`);
  try {
    requireSdk(env, board);
    return 0;
  } catch (e) {
    io.err(`mc: ${(e as Error).message}`);
    return 1;
  }
}

function readBundle(p: Parsed): { file: string; bytes: Uint8Array } {
  const file = p.values.get("--bundle");
  if (!file) throw new UsageError("--bundle <file> is required (make one with npx tsx tools/provision.ts create ...)");
  const abs = path.resolve(file);
  if (!fs.existsSync(abs)) throw new UsageError(`${abs} does not exist`);
  return { file: abs, bytes: new Uint8Array(fs.readFileSync(abs)) };
}

/** Overwrite, then delete: the bundle holds the Wi-Fi passphrase and the TLS private key. */
function erase(file: string): void {
  const size = fs.statSync(file).size;
  fs.writeFileSync(file, Buffer.alloc(size));
  fs.unlinkSync(file);
}

function provisionSim(p: Parsed, io: CliIo): number {
  const { file, bytes } = readBundle(p);
  const target = simBundlePath(io.env);
  fs.mkdirSync(path.dirname(target), { recursive: true, mode: 0o700 });
  const tmp = `${target}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, bytes, { mode: 0o600, flag: "wx" });
  fs.renameSync(tmp, target);
  bytes.fill(0);
  if (!p.flags.has("--keep")) erase(file);
  io.out(`bundle placed at ${target}: the simulator reads and deletes it within a second (npm run sim:lin)`);
  return 0;
}

async function provision(p: Parsed, io: CliIo): Promise<number> {
  const port = p.values.get("--port");
  if (!port) throw new UsageError("--port <tty> is required (e.g. /dev/ttyACM0 for the S3 boards' USB, /dev/ttyUSB0 for an ESP32-CAM-MB)");
  const { file, bytes } = readBundle(p);
  if (!fs.existsSync(port)) throw new SetupError(`${port} does not exist: is the board plugged in? (ls /dev/ttyACM* /dev/ttyUSB*)`);
  const stty = spawnSync("stty", [process.platform === "darwin" ? "-f" : "-F", port, "115200", "raw", "-echo"], { encoding: "utf8" });
  if (stty.status !== 0) throw new SetupError(`cannot configure ${port}: ${(stty.stderr || stty.error?.message || "stty failed").trim()} (are you in the dialout group?)`);
  const fd = fs.openSync(port, fs.constants.O_RDWR | fs.constants.O_NOCTTY);
  // A tty stream polls the port. fs.createReadStream would park a blocking read() in Node's thread
  // pool, and a port that never answers would then keep the process alive after its error.
  const stream = new tty.ReadStream(fd);
  io.out(`talking to the device on ${port}: HELLO, up to 4 tries 3 s apart ...`);
  const queue: Reply[] = [];
  const waiting: Array<(r: Reply | undefined) => void> = [];
  let partial = "";
  stream.on("data", (chunk) => {
    partial += chunk.toString("latin1");
    const lines = partial.split(/\r?\n|\r/);
    partial = lines.pop() ?? "";
    for (const line of lines) {
      const reply = parseReply(line);
      if (!reply) {
        if (line.trim()) io.err(`device> ${line}`);
        continue;
      }
      const w = waiting.shift();
      if (w) w(reply);
      else queue.push(reply);
    }
  });
  try {
    const result = await sendBundle({
      bundle: bytes,
      sha512: (d) => nacl.hash(d),
      writeLine: (line) => fs.writeSync(fd, line + "\r\n"),
      nextReply: (timeoutMs) =>
        queue.length
          ? Promise.resolve(queue.shift())
          : new Promise((resolve) => {
              const timer = setTimeout(() => {
                waiting.splice(waiting.indexOf(done), 1);
                resolve(undefined);
              }, timeoutMs);
              const done = (r: Reply | undefined) => {
                clearTimeout(timer);
                resolve(r);
              };
              waiting.push(done);
            }),
      progress: (m) => io.out(m),
    });
    io.out(`provisioned ${result.thing}; device public key ${result.publicKey}`);
    io.out("it now joins Wi-Fi, sets its clock from NTP and connects to AWS IoT: watch doorward/" + result.thing + "/events in the AWS IoT MQTT test client");
    if (!p.flags.has("--keep")) {
      erase(file);
      io.out(`${file} erased (it held the Wi-Fi passphrase and the private key)`);
    }
    return 0;
  } finally {
    bytes.fill(0);
    stream.destroy(); // closes fd
  }
}

// ------------------------------------------------------------------ what mcconfig generates, per platform

/** mcconfig's arguments for generating (no -m) a platform's build files into outDir. */
export function generateArgs(board: BoardTarget, outDir: string, env: NodeJS.ProcessEnv): string[] {
  if (!board.esp32) return ["-d", "-p", "lin", "-o", outDir, `provisionFile=${simBundlePath(env)}`];
  return ["-i", "-p", board.platform, "-t", "build", "-o", outDir, "broker=abc123example-ats.iot.eu-west-1.amazonaws.com"];
}

/** The directory holding the makefile mcconfig generated under outDir. */
function generatedDir(outDir: string): string {
  const found: string[] = [];
  const walk = (dir: string) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      if (e.isDirectory()) walk(path.join(dir, e.name));
      else if (e.name === "makefile") found.push(dir);
    }
  };
  walk(path.join(outDir, "tmp"));
  if (found.length !== 1) throw new SetupError(`expected one generated makefile under ${outDir}/tmp, found ${found.length}`);
  return found[0];
}

/** Run mcconfig without -m in a clean build/<kind>/<board> and return the generated directory. */
async function generate(io: CliIo, board: BoardTarget, kind: string): Promise<string | number> {
  const outDir = path.join(REPO, "build", kind, board.name);
  fs.rmSync(outDir, { recursive: true, force: true });
  fs.mkdirSync(outDir, { recursive: true });
  const args = generateArgs(board, outDir, io.env);
  io.out(`mcconfig ${args.join(" ")}`);
  const code = await io.run("mcconfig", args, toolEnv(io.env));
  if (code !== 0) return code;
  return generatedDir(outDir);
}

/** mcconfig's per-module tsconfigs (one <name>-tsconfig.json each, under the modules directory, beside tsconfig-base.json). */
export function generatedTsconfigs(modulesDir: string): string[] {
  const files: string[] = [];
  const walk = (dir: string) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith("-tsconfig.json")) files.push(p);
    }
  };
  walk(modulesDir);
  return files.sort();
}

/**
 * The diagnostics mcconfig's `tsc -p <module>-tsconfig.json` runs would print, one run per module.
 * Each run is its own program, so a global one module's imports declare (the SDK's worker typings
 * declare `self`) is not there for another module: checking all modules in one program would miss
 * that. Modules whose programs pull in the same declaration files are checked together, which
 * gives the same answer in a few programs instead of one per module.
 */
export function checkLikeMcconfig(tsconfigs: string[]): { diagnostics: string; errors: number; programs: number } {
  const parseHost: ts.ParseConfigFileHost = { ...ts.sys, onUnRecoverableConfigFileDiagnostic: (d) => { throw new SetupError(ts.flattenDiagnosticMessageText(d.messageText, "\n")); } };
  const configs = tsconfigs.map((file) => {
    const parsed = ts.getParsedCommandLineOfConfigFile(file, undefined, parseHost);
    if (!parsed) throw new SetupError(`cannot read ${file}`);
    return parsed;
  });
  if (configs.length === 0) return { diagnostics: "", errors: 0, programs: 0 };
  const options: ts.CompilerOptions = { ...configs[0].options, noEmit: true, outDir: undefined, rootDir: undefined, sourceMap: false };
  const host = ts.createCompilerHost(options);
  const cache = new Map<string, ts.SourceFile | undefined>();
  const getSourceFile = host.getSourceFile.bind(host);
  host.getSourceFile = (name, lang, onError) => {
    if (!cache.has(name)) cache.set(name, getSourceFile(name, lang, onError));
    return cache.get(name);
  };
  const groups = new Map<string, string[]>();
  let previous: ts.Program | undefined;
  for (const c of configs) {
    previous = ts.createProgram({ rootNames: c.fileNames, options, host, oldProgram: previous });
    const declarations = previous.getSourceFiles().filter((sf) => sf.isDeclarationFile).map((sf) => sf.fileName).sort().join("\n");
    groups.set(declarations, [...(groups.get(declarations) ?? []), ...c.fileNames]);
  }
  const seen = new Set<string>();
  const out: ts.Diagnostic[] = [];
  for (const roots of groups.values()) {
    previous = ts.createProgram({ rootNames: roots, options, host, oldProgram: previous });
    for (const d of ts.getPreEmitDiagnostics(previous)) {
      const key = `${d.file?.fileName}:${d.start}:${d.code}`;
      if (!seen.has(key)) {
        seen.add(key);
        out.push(d);
      }
    }
  }
  const formatHost: ts.FormatDiagnosticsHost = { getCanonicalFileName: (f) => f, getCurrentDirectory: () => REPO, getNewLine: () => "\n" };
  return {
    diagnostics: ts.formatDiagnostics(out, formatHost),
    errors: out.filter((d) => d.category === ts.DiagnosticCategory.Error).length,
    programs: groups.size,
  };
}

async function typecheck(p: Parsed, io: CliIo): Promise<number> {
  requireSdk(io.env);
  const boards = p.positional[0] ? [findBoard(p.positional[0])] : BOARDS;
  const failed: string[] = [];
  for (const board of boards) {
    const dir = await generate(io, board, "typecheck");
    if (typeof dir === "number") {
      failed.push(`${board.name} (mcconfig exit ${dir})`);
      continue;
    }
    const modules = path.join(dir, "modules");
    if (!fs.existsSync(path.join(modules, "tsconfig-base.json"))) throw new SetupError(`mcconfig wrote no ${path.join(modules, "tsconfig-base.json")}: is this SDK ${MODDABLE_VERSION}?`);
    const tsconfigs = generatedTsconfigs(modules);
    const result = checkLikeMcconfig(tsconfigs);
    io.out(`${board.name}: ${tsconfigs.length} modules, each as mcconfig's tsc -p ${path.join(modules, "<module>-tsconfig.json")} (${result.programs} programs), with ${path.join(dir, "mc.ffi.d.ts")}: ${result.errors} errors`);
    if (result.diagnostics) io.err(result.diagnostics.trimEnd());
    if (result.errors) failed.push(board.name);
  }
  if (failed.length) {
    io.err(`mc: typecheck failed for ${failed.join(", ")}`);
    return 1;
  }
  io.out(`typecheck ok: ${boards.map((b) => b.name).join(", ")}`);
  return 0;
}

async function compile(p: Parsed, io: CliIo): Promise<number> {
  const board = findBoard(p.positional[0]);
  requireSdk(io.env);
  if (!board.esp32) {
    const outDir = path.join(REPO, "build", "compile", "lin");
    fs.rmSync(outDir, { recursive: true, force: true });
    fs.mkdirSync(outDir, { recursive: true });
    const args = ["-d", "-m", "-p", "lin", "-t", "build", "-o", outDir, `provisionFile=${simBundlePath(io.env)}`];
    io.out(`mcconfig ${args.join(" ")}`);
    return await io.run("mcconfig", args, toolEnv(io.env));
  }
  const dir = await generate(io, board, "compile");
  if (typeof dir === "number") return dir;
  // The makefile insists on an ESP-IDF checkout only to name its version and to make sdkconfig.h, which the
  // JavaScript stage does not use: both are given on the command line.
  const targets = [path.join(dir, "mc.xs.c"), path.join(dir, "mc.resources.c")];
  const args = ["-f", path.join(dir, "makefile"), `IDF_PATH=${dir}`, `IDF_VERSION=${ESP_IDF_VERSION}`, "SDKCONFIG_H=", ...targets];
  io.out(`make ${args.join(" ")}`);
  const code = await io.run("make", args, toolEnv(io.env), dir);
  if (code !== 0) return code;
  for (const t of targets) io.out(`${t}: ${fs.statSync(t).size} bytes`);
  return 0;
}

function processIo(): CliIo {
  return {
    out: (line) => process.stdout.write(line + "\n"),
    err: (line) => process.stderr.write(line + "\n"),
    env: process.env,
    sim: runSimLin,
    run: (command, args, env, cwd = REPO) =>
      new Promise((resolve) => {
        const child = spawn(command, args, { cwd, env, stdio: "inherit" });
        child.on("error", (e) => {
          process.stderr.write(`mc: cannot run ${command}: ${e.message}\n`);
          resolve(127);
        });
        child.on("exit", (code, signal) => resolve(code ?? (signal ? 128 : 1)));
      }),
  };
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2), processIo()).then((code) => process.exit(code));
}
