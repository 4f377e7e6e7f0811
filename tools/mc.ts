/*
 * Build, flash, simulate and provision Doorward with the Moddable SDK: what the
 * npm scripts call (`npm run build:xiao`, `flash:xiao`, `sim:lin`, `provision`...).
 *
 *   npx tsx tools/mc.ts check [board]
 *   npx tsx tools/mc.ts build|flash|debug <board> --broker <prefix>-ats.iot.<region>.amazonaws.com [--broker-port 8883|443] [--dev-vault-key]
 *   npx tsx tools/mc.ts sim
 *   npx tsx tools/mc.ts provision --port /dev/ttyACM0 --bundle FILE [--keep]
 *   npx tsx tools/mc.ts provision-sim --bundle FILE [--keep]
 *   npx tsx tools/mc.ts typecheck [board]
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
 *  - sim: `mcconfig -d -m -p lin provisionFile=<DOORWARD_HOME or repo/.doorward>/lin/bundle.json`;
 *    provision-sim puts a bundle at that path, which the simulator reads and
 *    deletes.
 * The broker endpoint is compiled in (it is the egress allowlist's MQTT entry),
 * so a board build needs --broker (or DOORWARD_BROKER).
 *
 * typecheck re-checks the device sources the way mcconfig will, against the
 * SDK's own typings in $MODDABLE/typings (which differ from the npm
 * @moddable/typings that `npm test` uses), before a long build.
 */
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import nacl from "tweetnacl";
import { AWS_IOT_ATS_ENDPOINT } from "../modules/core/egress";
import { parseReply, sendBundle, ProvisionError, type Reply } from "../modules/device/provision-serial";
import { parseCommandLine, UserError as UsageError, wantsHelp } from "./lib/cli";

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
  "dev-vault-key": { type: "boolean" }, keep: { type: "boolean" },
} as const;

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
export function mcconfigArgs(command: "build" | "flash" | "debug" | "sim", board: BoardTarget, options: { broker?: string; brokerPort?: string; devVaultKey?: boolean; extra?: string[]; env?: NodeJS.ProcessEnv }): string[] {
  const args: string[] = [];
  if (command === "sim") {
    args.push("-d", "-m", "-p", "lin", `provisionFile=${simBundlePath(options.env ?? {})}`);
    return [...args, ...(options.extra ?? [])];
  }
  args.push(command === "debug" ? "-d" : "-i", "-m", "-p", board.platform);
  if (command === "build") args.push("-t", "build");
  if (command === "debug") args.push("console=xsbug");
  if (options.broker) args.push(`broker=${options.broker}`);
  if (options.brokerPort) args.push(`brokerPort=${options.brokerPort}`);
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
  run(command: string, args: string[], env: NodeJS.ProcessEnv): Promise<number>;
}

const USAGE = `usage: npx tsx tools/mc.ts <command> [board] [options] [-- more mcconfig arguments]

boards: ${BOARDS.filter((b) => b.esp32).map((b) => b.name).join(", ")} (and lin, the simulator)

  check [board]            what is installed, what is missing
  build <board> --broker <prefix>-ats.iot.<region>.amazonaws.com [--broker-port 8883|443] [--dev-vault-key]
                           mcconfig -i -m -p <board> -t build   (needs MODDABLE, mcconfig, IDF_PATH)
  flash <board> --broker ...   build and flash the board connected over USB (UPLOAD_PORT=<tty> to choose it)
  debug <board> --broker ...   a -d build for xsbug (cannot be provisioned over the console)
  sim                      mcconfig -d -m -p lin: the firmware in Moddable's Linux simulator
  provision --port <tty> --bundle <file> [--keep]
                           send a bundle (npx tsx tools/provision.ts create ...) over the board's console;
                           the file is erased afterwards unless --keep
  provision-sim --bundle <file> [--keep]
                           hand a bundle to the simulator (<DOORWARD_HOME or .doorward>/lin/bundle.json)
  typecheck [board]        type-check the device code against $MODDABLE/typings, as mcconfig will

--dev-vault-key: esp32cam only, development only: keep the vault key in plain flash (no flash encryption).
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
        requireSdk(io.env, board);
        const args = mcconfigArgs(p.command, board, { broker, brokerPort, devVaultKey: p.flags.has("--dev-vault-key"), extra: p.extra });
        io.out(`mcconfig ${args.join(" ")}`);
        return await io.run("mcconfig", args, toolEnv(io.env));
      }
      case "sim": {
        requireSdk(io.env);
        const args = mcconfigArgs("sim", findBoard("lin"), { extra: p.extra, env: io.env });
        io.out(`mcconfig ${args.join(" ")}`);
        io.out(`provision it with: npm run provision:sim -- --bundle <file>   (it polls ${simBundlePath(io.env)})`);
        return await io.run("mcconfig", args, toolEnv(io.env));
      }
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
    if (e instanceof SetupError || e instanceof ProvisionError) {
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
  const stream = fs.createReadStream("", { fd, autoClose: false });
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
    stream.destroy();
    fs.closeSync(fd);
  }
}

// ------------------------------------------------------------------ typecheck against the SDK's typings

/** Specifier → typings file (without .d.ts), the way examples/manifest_typings.json maps them. */
function sdkTypingPaths(moddable: string): Record<string, string[]> {
  const typings = path.join(moddable, "typings");
  const paths: Record<string, string[]> = {};
  const add = (prefix: string, dir: string) => {
    const abs = path.join(typings, dir);
    if (!fs.existsSync(abs)) return;
    for (const f of fs.readdirSync(abs)) if (f.endsWith(".d.ts")) paths[prefix + f.slice(0, -5)] ??= [path.join(abs, f.slice(0, -5))];
  };
  add("", ".");
  add("mc/", "mc");
  add("pins/", "pins");
  add("embedded:io/", "embedded_io");
  add("embedded:io/socket/", "embedded_io/socket");
  add("embedded:network/", "embedded_network");
  add("embedded:network/mqtt/", "embedded_network/mqtt");
  add("embedded:network/interface/", "embedded_network/interface");
  add("embedded:network/dns/resolver/", "embedded_network/dns/resolver");
  add("embedded:", "embedded");
  add("embedded:storage/", "embedded/storage");
  add("embedded:provider/", "embedded_provider");
  // Modules without typings resolve to their JavaScript source, as under mcconfig (implicitly any).
  const js: Record<string, string> = {
    "embedded:io/socket/tcp/tls": "typings/embedded_io/socket/tls",
    gcm: "modules/crypt/etc/gcm",
    "embedded:io/image/in/camera": "modules/io/imagein/camera/esp32/camera",
  };
  for (const [spec, file] of Object.entries(js)) paths[spec] ??= [path.join(moddable, file)];
  return paths;
}

async function typecheck(p: Parsed, io: CliIo): Promise<number> {
  const board = p.positional[0] ? findBoard(p.positional[0]) : undefined;
  const moddable = requireModdable(io.env);
  if (!fs.existsSync(path.join(moddable, "typings"))) throw new SetupError(`MODDABLE=${moddable} has no typings/ directory (SDK ${MODDABLE_VERSION} or later is needed)`);
  const device = path.join(REPO, "modules", "device");
  const sim = new Set(["board-sim.ts", "button-sim.ts", "random-sim.ts", "vault-key-sim.ts"]);
  const files = fs.readdirSync(device).filter((f) => f.endsWith(".ts") && !f.endsWith(".d.ts") && (board?.name === "lin" ? true : board ? !sim.has(f) : true)).map((f) => path.join(device, f));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "doorward-typecheck-"));
  const tsconfig = {
    compilerOptions: {
      // What mcconfig's generated tsconfig-base.json holds, plus manifest.json's typescript.tsconfig.
      forceConsistentCasingInFileNames: true, module: "preserve", resolveJsonModule: true, lib: ["es2025"], target: "es2025",
      noImplicitAny: false, noEmit: true,
      types: [path.join(moddable, "xs", "includes", "xs"), path.join(moddable, "typings", "global")],
      paths: { ...sdkTypingPaths(moddable), tweetnacl: [path.join(REPO, "modules", "vendor", "tweetnacl")] },
    },
    files,
  };
  const config = path.join(dir, "tsconfig.json");
  fs.writeFileSync(config, JSON.stringify(tsconfig, null, 1));
  io.out(`tsc -p ${config}  (${files.length} device modules against ${path.join(moddable, "typings")})`);
  const code = await io.run("tsc", ["-p", config], toolEnv(io.env));
  fs.rmSync(dir, { recursive: true, force: true });
  return code;
}

function processIo(): CliIo {
  return {
    out: (line) => process.stdout.write(line + "\n"),
    err: (line) => process.stderr.write(line + "\n"),
    env: process.env,
    run: (command, args, env) =>
      new Promise((resolve) => {
        const child = spawn(command, args, { cwd: REPO, env, stdio: "inherit" });
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
