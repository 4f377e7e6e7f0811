/*
 * The real firmware in Moddable's Linux simulator, end to end: `npm run sim:lin`.
 *
 * It builds the firmware for lin with mcconfig's `-t build` (the SDK's default
 * lin target would `pkill` every mcsim and serial2xsbug on the machine and
 * start xsbug), starts the local AWS IoT stand-in on the port the lin manifest
 * compiles in, provisions the simulated device the first time the way
 * `npm start` does (a dev certificate from the local CA, a random simulated
 * Wi-Fi passphrase, a development owner), then starts mcsim itself and keeps
 * its pid, headless under an Xvfb of its own when there is no DISPLAY. The
 * firmware's log is streamed line by line, and every event it publishes is
 * verified by the cloud consumer (tweetnacl and OpenSSL) against the public
 * key the firmware reported when it was provisioned.
 *
 * The simulator keeps its preferences, which hold the development vault, in
 * its working directory (hardware/lin.json sets file.root to "./"): that is
 * <home>/lin, a 0700 directory, and mcsim runs with umask 077, so the file is
 * created 0600 each time the SDK rewrites it. The SDK's own default is a
 * world-readable /tmp/modpreferences.json.
 */
import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { fromHex, toBase64Url } from "../modules/core/bytes";
import { isThingName } from "../modules/core/topics";
import { hostRandom } from "../modules/host/random";
import { CloudConsumer } from "./cloud";
import { ensureDevPki } from "./pki";
import { main as provisionCli } from "./provision";
import { startStandin, type Standin } from "./standin";
import { describePeaks, XsPeakTracker } from "./xs-meter";

/** Where the lin build's broker and egress allowlist point (manifest.json, platforms.lin). */
export const SIM_BROKER_PORT = 8883;
export const PREFERENCES_FILE = "modpreferences.json";

export interface SimLinOptions {
  repo: string;
  home: string;
  thing: string;
  env: NodeJS.ProcessEnv;
  /** Stop after this many verified rings (0: run until Ctrl-C). */
  rings: number;
  /** Skip mcconfig and run the last build. */
  noBuild: boolean;
  /** More mcconfig arguments. */
  extra: string[];
  /** The virtual button's interval (default: hardware/lin.json's 30 s). */
  pressEveryMs?: number;
  /** Print the XS stack and heap peaks from the build's instrumentation (tools/xs-meter.ts), every 10 rings and at the end. */
  measure?: boolean;
  /** Build with another manifest (one that includes manifest.json), e.g. a board's creation values. */
  manifest?: string;
  out(line: string): void;
  err(line: string): void;
}

export class SimError extends Error {
  override name = "SimError";
}

function onPath(command: string, env: NodeJS.ProcessEnv): boolean {
  return (env.PATH ?? "").split(path.delimiter).some((dir) => {
    if (!dir) return false;
    try {
      fs.accessSync(path.join(dir, command), fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/** The directory the simulated device lives in (preferences, bundle drop, its public key): 0700. */
export function simDeviceDir(home: string): string {
  return path.join(home, "lin");
}

/** The mcconfig arguments of the simulator build: -t build, never the SDK's default lin target. */
export function simBuildArgs(outDir: string, bundlePath: string, extra: string[] = [], options: { pressEveryMs?: number; manifest?: string } = {}): string[] {
  const args = ["-d", "-m", "-p", "lin", "-t", "build", "-o", outDir, `provisionFile=${bundlePath}`];
  if (options.pressEveryMs !== undefined) args.push(`pressEveryMs=${options.pressEveryMs}`);
  if (options.manifest) args.push(options.manifest);
  return [...args, ...extra];
}

/** The newest mc.so under a build directory. */
export function findSimBinary(outDir: string): string | undefined {
  let best: { file: string; mtime: number } | undefined;
  const walk = (dir: string) => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name === "mc.so") {
        const mtime = fs.statSync(p).mtimeMs;
        if (!best || mtime > best.mtime) best = { file: p, mtime };
      }
    }
  };
  walk(path.join(outDir, "bin", "lin"));
  return best?.file;
}

/** What a display-less machine needs, or undefined when mcsim can be started as it is. */
export function displayProblem(env: NodeJS.ProcessEnv): string | undefined {
  if (env.DISPLAY) return undefined;
  if (onPath("Xvfb", env)) return undefined;
  return "there is no DISPLAY and no Xvfb on PATH: mcsim needs an X display. Install Xvfb (Debian/Ubuntu: sudo apt-get install xvfb) or run from a desktop session";
}

/** A headless X server of our own, on a display number it picks (-displayfd), stopped by its pid. */
async function startXvfb(env: NodeJS.ProcessEnv): Promise<{ display: string; child: ChildProcess }> {
  const child = spawn("Xvfb", ["-displayfd", "3", "-nolisten", "tcp", "-screen", "0", "800x600x24"], { env, stdio: ["ignore", "ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stderr!.on("data", (d) => (stderr += String(d)));
  const display = await new Promise<string>((resolve, reject) => {
    let text = "";
    const timer = setTimeout(() => reject(new SimError(`Xvfb did not report a display within 10 s: ${stderr.trim()}`)), 10_000);
    (child.stdio[3] as NodeJS.ReadableStream).on("data", (d) => {
      text += String(d);
      if (text.includes("\n")) {
        clearTimeout(timer);
        resolve(":" + text.trim());
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new SimError(`Xvfb exited (${code}): ${stderr.trim()}`));
    });
    child.once("error", (e) => {
      clearTimeout(timer);
      reject(new SimError(`cannot start Xvfb: ${e.message}`));
    });
  });
  return { display, child };
}

function run(command: string, args: string[], cwd: string, env: NodeJS.ProcessEnv): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { cwd, env, stdio: "inherit" });
    child.once("error", () => resolve(127));
    child.once("exit", (code, signal) => resolve(code ?? (signal ? 128 : 1)));
  });
}

interface DeviceRecord {
  thing: string;
  publicKey: string;
}

function readDeviceRecord(file: string): DeviceRecord | undefined {
  try {
    const r = JSON.parse(fs.readFileSync(file, "utf8")) as DeviceRecord;
    return isThingName(r.thing) && /^[0-9a-f]{64}$/.test(r.publicKey) ? r : undefined;
  } catch {
    return undefined;
  }
}

/** A bundle for the simulated device, made with the provisioning CLI and dropped where the firmware polls. */
async function provisionSimDevice(o: SimLinOptions, bundleTarget: string): Promise<void> {
  const passphrase = new Uint8Array(18);
  hostRandom.fill(passphrase);
  const bundle = path.join(o.home, "bundles", `${o.thing}.json`);
  const io = {
    // The CLI's hint to feed the bundle by hand does not apply: it is placed for the firmware below.
    out: (line: string) => { if (!/feed it now|holds secrets in plain form|tools\/provision\.ts feed|npm run provision:sim/.test(line)) o.out(`  provision ${line}`); },
    err: (line: string) => o.err(`  provision ${line}`),
    readStdin: async () => new TextEncoder().encode(toBase64Url(passphrase)),
    env: o.env,
  };
  const code = await provisionCli(["create", "--home", o.home, "--thing", o.thing, "--wifi-ssid", "doorward-sim", "--wifi-password-stdin", "--endpoint", "localhost", "--out", bundle, "--force"], io);
  passphrase.fill(0);
  if (code !== 0) throw new SimError("provisioning: creating the bundle failed");
  const tmp = `${bundleTarget}.${process.pid}.tmp`;
  fs.copyFileSync(bundle, tmp);
  fs.chmodSync(tmp, 0o600);
  fs.renameSync(tmp, bundleTarget);
  const size = fs.statSync(bundle).size;
  fs.writeFileSync(bundle, Buffer.alloc(size));
  fs.unlinkSync(bundle);
  o.out(`provisioning: bundle for ${o.thing} placed at ${bundleTarget}; the firmware reads and deletes it`);
}

const ACCEPTED = /provisioning: bundle accepted thing="([^"]+)" publicKey="([0-9a-f]{64})"/;

/** Build, start everything, stream the firmware log; resolves to the exit code. */
export async function runSimLin(o: SimLinOptions): Promise<number> {
  const problem = displayProblem(o.env);
  if (problem) throw new SimError(problem);
  if (!onPath("mcsim", o.env)) throw new SimError("mcsim is not on PATH: it is built with the SDK's tools ($MODDABLE/build/bin/lin/release)");
  if (!isThingName(o.thing)) throw new SimError(`not a thing name: ${JSON.stringify(o.thing)}`);
  const deviceDir = simDeviceDir(o.home);
  fs.mkdirSync(deviceDir, { recursive: true, mode: 0o700 });
  fs.chmodSync(deviceDir, 0o700);
  const bundleTarget = path.join(deviceDir, "bundle.json");
  const preferences = path.join(deviceDir, PREFERENCES_FILE);
  const recordFile = path.join(deviceDir, "device.json");
  const outDir = path.join(o.repo, "build", "sim");

  if (!o.noBuild) {
    fs.mkdirSync(outDir, { recursive: true });
    const args = simBuildArgs(outDir, bundleTarget, o.extra, o);
    o.out(`mcconfig ${args.join(" ")}`);
    const code = await run("mcconfig", args, o.repo, o.env);
    if (code !== 0) {
      o.err(`mc: mcconfig failed (exit ${code})`);
      return code;
    }
  }
  const binary = findSimBinary(outDir);
  if (!binary) throw new SimError(`no mc.so under ${outDir}: build it first (npm run sim:lin without --no-build)`);

  const pki = await ensureDevPki(path.join(o.home, "pki"));
  let standin: Standin;
  try {
    standin = await startStandin({ pki, port: SIM_BROKER_PORT });
  } catch (e) {
    throw new SimError(`cannot start the AWS IoT stand-in on 127.0.0.1:${SIM_BROKER_PORT}, the port the lin build connects to (${(e as Error).message}): is another simulator running?`);
  }
  o.out(`stand-in for AWS IoT Core on mqtts://127.0.0.1:${standin.port} (mutual TLS, dev CA in ${pki.dir})`);

  let record = readDeviceRecord(recordFile);
  if (record && record.thing !== o.thing) record = undefined;
  if (fs.existsSync(bundleTarget)) {
    // A bundle of the user's own (npm run provision:sim): a fresh device takes it, and reports its key.
    o.out(`a bundle is waiting at ${bundleTarget}: the simulated device starts afresh and takes it`);
    fs.rmSync(preferences, { force: true });
    fs.rmSync(recordFile, { force: true });
    record = undefined;
  } else if (!record) {
    // A vault whose public key was never recorded cannot be verified against: start the simulated device afresh.
    if (fs.existsSync(preferences)) {
      o.out(`no recorded key for ${o.thing}: the simulated device starts afresh (its old preferences are removed)`);
      fs.rmSync(preferences);
    }
    await provisionSimDevice(o, bundleTarget);
  } else if (fs.existsSync(preferences)) {
    fs.chmodSync(preferences, 0o600);
  }

  const cloud = new CloudConsumer();
  if (record) cloud.register(record.thing, fromHex(record.publicKey));
  await cloud.connect({ host: "127.0.0.1", port: standin.port, servername: "localhost", clientId: `${pki.service.name}-sim-lin`, ca: pki.ca.certPem, cert: pki.service.certPem, key: pki.service.keyPem });

  let xvfb: ChildProcess | undefined;
  let env = { ...o.env };
  if (!o.env.DISPLAY) {
    const x = await startXvfb(o.env);
    xvfb = x.child;
    env = { ...env, DISPLAY: x.display };
    o.out(`Xvfb ${x.display} (pid ${x.child.pid})`);
  }

  // With no debugger listening, each XS machine prints its instrumentation samples on stdout once a second.
  const tracker = new XsPeakTracker();

  // The preferences file is deleted and recreated on every write: the umask is what keeps it private.
  // stdbuf: mcsim's trace() goes through stdio, which would hold a pipe's lines back in 4 KB blocks.
  const umask = process.umask(0o077);
  const lineBuffered = onPath("stdbuf", o.env);
  const mcsim = lineBuffered
    ? spawn("stdbuf", ["-oL", "-eL", "mcsim", binary], { cwd: deviceDir, env, stdio: ["ignore", "pipe", "pipe"] })
    : spawn("mcsim", [binary], { cwd: deviceDir, env, stdio: ["ignore", "pipe", "pipe"] });
  process.umask(umask);
  o.out(`mcsim ${binary} (pid ${mcsim.pid}), working directory ${deviceDir}`);

  let verified = 0;
  let rejected = 0;
  let finish!: (code: number) => void;
  const done = new Promise<number>((resolve) => (finish = resolve));

  cloud.onEvent((e) => {
    if (e.verdict.ok && e.openssl) {
      const ev = e.verdict.event;
      if (ev.type === "ring") verified++;
      o.out(`cloud ✔ verified ${ev.type} from ${ev.thing} seq=${ev.seq} boot=${ev.boot} (tweetnacl ✔ OpenSSL ✔)`);
      if (o.measure && ev.type === "ring" && verified % 10 === 0) for (const [name, p] of tracker.machines) o.out(`xs ${name} after ${verified} rings: ${describePeaks(p)}`);
      if (o.rings > 0 && verified >= o.rings) finish(0);
    } else if (e.duplicate) {
      o.out("cloud · duplicate delivery ignored");
    } else {
      rejected++;
      o.out(`cloud ✘ REJECTED: ${e.verdict.ok ? "OpenSSL disagreed" : `${e.verdict.reason}: ${e.verdict.detail}`}`);
    }
  });

  function onLine(line: string): void {
    if (tracker.line(line)) return;
    o.out(`firmware │ ${line}`);
    const m = ACCEPTED.exec(line);
    if (m) {
      record = { thing: m[1], publicKey: m[2] };
      fs.writeFileSync(recordFile, JSON.stringify(record) + "\n", { mode: 0o600 });
      cloud.register(m[1], fromHex(m[2]));
      o.out(`cloud: registered ${m[1]} with device key ${m[2]}`);
    }
    if (/XS abort|JavaScript stack overflow|memory full|exception: throw/.test(line)) o.err(`mc: the firmware reported: ${line}`);
    // mcsim stays open after the XS machine has aborted: nothing more will come from it.
    if (line.startsWith("XS abort")) finish(1);
  }
  readline.createInterface({ input: mcsim.stdout! }).on("line", onLine);
  readline.createInterface({ input: mcsim.stderr! }).on("line", onLine);
  mcsim.once("exit", (code, signal) => {
    o.err(`mc: mcsim exited (${signal ?? code})`);
    finish(code === 0 ? 1 : (code ?? 1));
  });
  mcsim.once("error", (e) => {
    o.err(`mc: cannot start mcsim: ${e.message}`);
    finish(127);
  });
  const interrupt = () => finish(verified > 0 && rejected === 0 ? 0 : 130);
  process.once("SIGINT", interrupt);
  process.once("SIGTERM", interrupt);

  const code = await done;
  process.off("SIGINT", interrupt);
  process.off("SIGTERM", interrupt);
  if (mcsim.exitCode === null && mcsim.signalCode === null) {
    mcsim.kill("SIGTERM");
    await new Promise((r) => mcsim.once("exit", r));
  }
  if (xvfb && xvfb.exitCode === null) {
    xvfb.kill("SIGTERM");
    await new Promise((r) => xvfb!.once("exit", r));
  }
  await cloud.close();
  await standin.close();
  if (o.measure) {
    for (const [name, p] of tracker.machines) o.out(`xs ${name}: ${describePeaks(p)}`);
    fs.writeFileSync(path.join(outDir, "xs-peaks.json"), JSON.stringify({ rings: verified, ...Object.fromEntries(tracker.machines) }, null, 1) + "\n");
  }
  if (fs.existsSync(preferences)) {
    const mode = fs.statSync(preferences).mode & 0o777;
    if (mode & 0o077) o.err(`mc: ${preferences} is mode ${mode.toString(8)}: it holds the development vault`);
  }
  o.out(`${verified} ring${verified === 1 ? "" : "s"} from the XS firmware verified, ${rejected} rejected`);
  return rejected > 0 ? 1 : code;
}

