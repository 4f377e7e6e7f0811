/*
 * Every command in tools/ behaves the same at the command line: `--help` prints
 * its usage and exits 0 without doing anything else; an unknown flag is refused
 * with one line naming the command and exit code 2, never a stack trace. Each
 * tool runs as its own process here, as a user would start it. A file in tools/
 * that is neither a listed command nor a listed library fails the test, so a new
 * tool cannot skip the shared parser. Also: the parser's own refusals, and the
 * stand-in's --port with a busy port.
 */
import test from "ava";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { parseCommandLine, runCommand, UserError } from "../tools/lib/cli";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

/** Commands, by file, with the name their errors start with. */
const COMMANDS: Record<string, string> = {
  "tools/bench.ts": "bench",
  "tools/bench/latency.ts": "bench/latency",
  "tools/bench/xs-ring.ts": "bench/xs-ring",
  "tools/cloud.ts": "cloud",
  "tools/make-nacl-esm.ts": "make-nacl-esm",
  "tools/make-sample-jpegs.ts": "make-sample-jpegs",
  "tools/mc.ts": "mc",
  "tools/mosquitto.ts": "mosquitto",
  "tools/owner-app.ts": "owner-app",
  "tools/pki.ts": "pki",
  "tools/provision.ts": "provision",
  "tools/release.ts": "release",
  "tools/sbom.ts": "sbom",
  "tools/sim-device.ts": "sim-device",
  "tools/simulator.ts": "simulator",
  "tools/snapshot-consumer.ts": "snapshot-consumer",
  "tools/soak.ts": "soak",
  "tools/standin.ts": "standin",
  "tools/update-service.ts": "update-service",
  "tools/verifier.ts": "verifier",
};

/** Modules that only other code imports: nobody is told to run them. */
const LIBRARIES = new Set([
  "tools/lib/cli.ts",
  "tools/lib/broker.ts",
  "tools/fleet-verifier-lambda.ts",
  "tools/lib/home-lock.ts",
  "tools/bench/device-timeline.ts",
  "tools/sim-lin.ts",
  "tools/xs-meter.ts",
  "tools/import-rules.ts",
  "tools/openssl-ed25519.ts",
  "tools/wait-for.ts",
  "tools/standin/policy.ts",
  "tools/standin/aws-policy.ts",
  "tools/standin/shadow.ts",
  "tools/standin/wss.ts",
  "tools/standin/app-names.ts",
  "tools/user-app.ts",
  "tools/event-verifier.ts",
  "tools/webapp.ts",
  "tools/bench/xs-commands.ts",
  "tools/bench/xs-snapshot.ts",
  "tools/bench/device-timeline.ts",
  "tools/xs/callgrind.ts",
  "tools/xs/core.ts",
  "tools/xs/deterministic.ts",
  "tools/xs/resolve.ts",
  "tools/xs/worker.ts",
]);

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(file: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    // A scratch home: nothing a tool might create lands in the repository.
    const home = fs.mkdtempSync(path.join(os.tmpdir(), "dw-cli-"));
    const child = spawn(process.execPath, ["--import=tsx", file, ...args], {
      cwd: REPO,
      env: { ...process.env, DOORWARD_HOME: home, DOORWARD_PKI_DIR: path.join(home, "pki"), ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      fs.rmSync(home, { recursive: true, force: true });
      resolve({ code, stdout, stderr });
    });
  });
}

/** Two processes at a time: this machine may have only two cores. */
async function inTurns<T, R>(items: T[], f: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await f(items[i]);
    }
  };
  await Promise.all([worker(), worker()]);
  return results;
}

function listTools(dir = path.join(REPO, "tools")): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const full = path.join(dir, e.name);
    if (e.isDirectory()) return listTools(full);
    return e.name.endsWith(".ts") ? [path.relative(REPO, full)] : [];
  });
}

const STACK_LINE = /^\s+at .+[(:]/m;

test("every file in tools/ is either a command or a library", (t) => {
  const unknown = listTools().filter((f) => !(f in COMMANDS) && !LIBRARIES.has(f));
  t.deepEqual(unknown, [], "add the new file to COMMANDS (with a --help) or to LIBRARIES");
  const gone = [...Object.keys(COMMANDS), ...LIBRARIES].filter((f) => !fs.existsSync(path.join(REPO, f)));
  t.deepEqual(gone, []);
});

test("--help prints the usage and exits 0; an unknown flag is one line and exit 2", async (t) => {
  const files = Object.keys(COMMANDS);
  const results = await inTurns(files, async (file) => ({ file, help: await run(file, ["--help"]), bad: await run(file, ["--no-such-flag"]) }));
  for (const { file, help, bad } of results) {
    const name = COMMANDS[file];
    t.is(help.code, 0, `${file} --help: exit ${help.code}, stderr ${help.stderr}`);
    t.regex(help.stdout, /^(usage: |tools\/\S+ is a library)/, `${file} --help prints its usage`);
    t.true(help.stdout.trim().split("\n").length >= 3, `${file} --help says more than one line`);
    t.is(help.stderr, "", `${file} --help writes nothing to stderr`);
    t.is(bad.code, 2, `${file} --no-such-flag: exit ${bad.code}`);
    t.is(bad.stdout, "", `${file} --no-such-flag does nothing`);
    t.is(bad.stderr, `${name}: unknown option --no-such-flag (see --help)\n`, `${file} --no-such-flag`);
  }
});

test("a bad value for a command is one line without a stack trace", async (t) => {
  const cases: Array<[string, string[], RegExp]> = [
    ["tools/standin.ts", ["--port", "99999"], /^standin: --port must be a whole number from 0 to 65535/],
    ["tools/soak.ts", ["--minutes", "soon"], /^soak: --minutes must be a positive number/],
    ["tools/release.ts", ["verify", "--pub", "missing.pub", "--image", "x", "--manifest", "missing.json"], /^release: cannot read manifest missing\.json: ENOENT/],
    ["tools/owner-app.ts", ["show", "no-such-file.json"], /^owner-app: no-such-file\.json does not exist/],
    ["tools/make-sample-jpegs.ts", ["a", "b"], /^make-sample-jpegs: unexpected argument "b"/],
    ["tools/simulator.ts", ["--rings", "many"], /^simulator: --rings must be a whole number/],
    ["tools/mc.ts", ["frobnicate"], /^mc: unknown command "frobnicate"/],
  ];
  const results = await inTurns(cases, ([file, args]) => run(file, args));
  cases.forEach(([file, args, expected], i) => {
    const r = results[i];
    t.is(r.code, 2, `${file} ${args.join(" ")}: exit ${r.code}: ${r.stderr}`);
    t.regex(r.stderr, expected, `${file} ${args.join(" ")}`);
    t.is(r.stderr.trim().split("\n").length, 1, `${file} ${args.join(" ")}: one line, got ${r.stderr}`);
    t.notRegex(r.stderr, STACK_LINE);
  });
});

test("the stand-in takes --port, and a busy port is one clear line", async (t) => {
  const blocker = net.createServer();
  await new Promise<void>((resolve) => blocker.listen(0, "127.0.0.1", resolve));
  const port = (blocker.address() as net.AddressInfo).port;
  try {
    const r = await run("tools/standin.ts", ["--port", String(port)]);
    t.is(r.code, 2, r.stderr);
    t.regex(r.stderr, new RegExp(`^standin: port ${port} on 127\\.0\\.0\\.1 is already in use .*--port N`));
    t.is(r.stderr.trim().split("\n").length, 1);
    t.notRegex(r.stderr, STACK_LINE);
  } finally {
    blocker.close();
  }
});

// ---- the parser itself, in-process ----

const SPEC = {
  name: "demo",
  usage: "usage: demo [--out FILE] [--force] [ARG]",
  options: { out: { type: "string" }, force: { type: "boolean" }, tag: { type: "string", multiple: true } },
  positionals: { max: 1 },
} as const;

test("the parser refuses what it does not know, in one line each", (t) => {
  const refusal = (argv: string[]) => {
    const e = t.throws(() => parseCommandLine(SPEC, argv), { instanceOf: UserError });
    return e?.message;
  };
  t.is(refusal(["--nope"]), "unknown option --nope (see --help)");
  t.is(refusal(["-x"]), "unknown option -x (see --help)");
  t.is(refusal(["--out"]), "--out needs a value (see --help)");
  t.is(refusal(["--out", "--force"]), "--out needs a value (see --help)");
  t.is(refusal(["--force=yes"]), "--force takes no value (see --help)");
  t.is(refusal(["--out", "a", "--out", "b"]), "--out given twice (see --help)");
  t.is(refusal(["one", "two"]), 'unexpected argument "two" (see --help)');
  const ok = parseCommandLine(SPEC, ["--out", "f", "--tag", "a", "--tag", "b", "arg", "--", "--raw"]);
  t.deepEqual({ ...ok.values }, { out: "f", tag: ["a", "b"] });
  t.deepEqual(ok.positionals, ["arg"]);
  t.deepEqual(ok.rest, ["--raw"]);
});

test("runCommand: --help wins, a UserError is one line with exit 2, a bug keeps its stack", async (t) => {
  const lines: string[] = [];
  const io = { out: (s: string) => lines.push(`out ${s}`), err: (s: string) => lines.push(`err ${s}`) };
  let ran = 0;
  t.is(await runCommand(SPEC, ["--nope", "--help"], () => { ran++; return 0; }, io), 0);
  t.deepEqual(lines.splice(0), [`out ${SPEC.usage}`]);
  t.is(await runCommand(SPEC, ["--", "--help"], () => { ran++; return 0; }, io), 0, "--help after -- is not ours");
  t.is(ran, 1);
  t.is(await runCommand(SPEC, [], () => { throw new UserError("the file is missing"); }, io), 2);
  t.deepEqual(lines.splice(0), ["err demo: the file is missing"]);
  t.is(await runCommand(SPEC, [], () => { throw new TypeError("a bug"); }, io), 1);
  t.regex(lines.splice(0)[0], /^err demo: TypeError: a bug\n\s+at /);
  t.is(await runCommand(SPEC, [], () => { fs.readFileSync(path.join(os.tmpdir(), "dw-no-such-file")); }, io), 2);
  t.regex(lines.splice(0)[0], /^err demo: .*dw-no-such-file: no such file or directory$/);
});
