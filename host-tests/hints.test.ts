/*
 * Every hint the tools print works when followed, and no step leaves a
 * newcomer waiting in silence:
 * - the first `npm start` says it is generating keys before it does, and never
 *   tells the user to run a step it runs itself;
 * - a second simulator on the same home is refused in one line while the first
 *   runs (its lock names the pid), a stale lock is taken over, and a reset
 *   device is provisioned again by the next `npm start` instead of being sent
 *   back to reset;
 * - an unknown line at the prompt explains the keys and does not ring;
 * - `provision.ts create` for a board's bundle points at the board, and `feed`
 *   refuses that bundle without erasing it;
 * - the serial provisioner ends with its error, on a port that never answers
 *   and on one that refuses.
 */
import test from "ava";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { main as provision, type CliIo } from "../tools/provision";
import { lockHome, LOCK_NAME, refuseIfLocked } from "../tools/lib/home-lock";
import { UserError } from "../tools/lib/cli";
import { issueThingCredentials } from "../tools/pki";

const THING = "doorward-sim-1";

interface Run {
  code: number | null;
  out: string;
  err: string;
}

function tool(file: string, args: string[], timeoutMs = 300_000): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ["--import=tsx", file, ...args], { env: { ...process.env, DOORWARD_BUTTON_PORT: "0" }, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, out, err });
    });
  });
}

async function cli(args: string[], stdin = new Uint8Array(0)): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const io: CliIo = { out: (l) => out.push(l), err: (l) => err.push(l), readStdin: async () => stdin, env: {} };
  const code = await provision(args, io);
  return { code, out: out.join("\n"), err: err.join("\n") };
}

/** A pid that belonged to a process that has exited. */
function deadPid(): number {
  const r = spawnSync(process.execPath, ["-e", "process.stdout.write(String(process.pid))"], { encoding: "utf8" });
  return Number(r.stdout);
}

/** An interactive simulator: lines as they come, and a way to wait for one. */
function interactive(home: string) {
  const child: ChildProcess = spawn(process.execPath, ["--import=tsx", "tools/simulator.ts", "--home", home, "--rings", "0", "--quiet"], {
    env: { ...process.env, DOORWARD_BUTTON_PORT: "0" },
    stdio: ["pipe", "pipe", "pipe"],
  });
  const lines: string[] = [];
  const waiters: Array<{ re: RegExp; resolve: (l: string) => void; reject: (e: Error) => void }> = [];
  const onLine = (line: string) => {
    lines.push(line);
    for (const w of [...waiters]) {
      if (w.re.test(line)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(line);
      }
    }
  };
  readline.createInterface({ input: child.stdout! }).on("line", onLine);
  readline.createInterface({ input: child.stderr! }).on("line", onLine);
  const exited = new Promise<number | null>((resolve) => child.on("close", resolve));
  // A simulator that died fails the wait at once, with what it said.
  void exited.then((code) => {
    for (const w of waiters.splice(0)) w.reject(new Error(`the simulator exited (${code}) before a line matching ${w.re}:\n${lines.join("\n")}`));
  });
  return {
    lines,
    send: (text: string) => child.stdin!.write(text),
    // Generous: the web app is bundled on start, slow on a loaded machine. A simulator that dies fails at once.
    waitFor(re: RegExp, timeoutMs = 300_000): Promise<string> {
      const seen = lines.find((l) => re.test(l));
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const w = { re, resolve, reject };
        waiters.push(w);
        setTimeout(() => reject(new Error(`no line matching ${re} in:\n${lines.join("\n")}`)), timeoutMs).unref();
      });
    },
    exited,
    kill: () => child.kill("SIGKILL"),
  };
}

test.serial("npm start: progress before key generation, no hint for a step it takes itself; one simulator per home; unknown keys do not ring; a reset device is provisioned again", async (t) => {
  t.timeout(900_000);
  const home = fs.mkdtempSync(path.join(os.tmpdir(), "dw-hints-"));

  // First run.
  const first = await tool("tools/simulator.ts", ["--home", home, "--rings", "1", "--exit"]);
  t.is(first.code, 0, first.out + first.err);
  const lines = first.out.split("\n");
  const announced = lines.findIndex((l) => /^first run: making the development PKI in .* \(RSA-2048 keys/.test(l));
  const caKey = lines.findIndex((l) => /generating an RSA-2048 key for the Doorward Dev Root CA/.test(l));
  const standin = lines.findIndex((l) => /^stand-in for AWS IoT Core/.test(l));
  t.true(announced === 0, `the first line says what is coming:\n${first.out}`);
  t.true(caKey > announced && caKey < standin, "each key is announced before it is generated");
  t.regex(first.out, /generating an RSA-2048 key for the thing doorward-sim-1/);
  t.notRegex(first.out, /provision\.ts feed/, "the simulator feeds its bundle itself");
  t.regex(first.out, /1 of 1 rings verified end to end/);

  // A running simulator holds the home.
  const sim = interactive(home);
  try {
    await sim.waitFor(/press Enter to ring/);
    t.true(fs.existsSync(path.join(home, LOCK_NAME)));
    const second = await tool("tools/simulator.ts", ["--home", home, "--rings", "1", "--exit"]);
    t.is(second.code, 2, second.out + second.err);
    t.regex(second.err, /^simulator: .* is in use by another simulator \(pid \d+, since .*their sequence numbers would collide.*--home DIR/);
    t.is(second.err.trim().split("\n").length, 1);
    t.notRegex(second.out, /stand-in for AWS IoT Core/, "refused before it starts anything");
    const resetWhileRunning = await cli(["reset", "--home", home, "--thing", THING, "--yes"]);
    t.is(resetWhileRunning.code, 2);
    t.regex(resetWhileRunning.err, /is in use by another simulator/);

    // An unknown line explains the keys and does not ring; Enter rings.
    const ringsBefore = sim.lines.filter((l) => /cloud ✔ verified ring/.test(l)).length;
    sim.send("x\n");
    await sim.waitFor(/"x" is not a key here \(no ring\)\. press Enter to ring/);
    sim.send("help\n");
    await sim.waitFor(/^press Enter to ring .* h: this help/);
    await new Promise((r) => setTimeout(r, 1000));
    t.is(sim.lines.filter((l) => /cloud ✔ verified ring/.test(l)).length, ringsBefore, "no ring for an unknown line");
    t.false(sim.lines.some((l) => /chime/.test(l)));
    sim.send("\n");
    await sim.waitFor(/cloud ✔ verified ring from doorward-sim-1 seq=/);
    sim.send("q\n");
    t.is(await sim.exited, 0, sim.lines.join("\n"));
  } finally {
    sim.kill();
  }
  t.false(fs.existsSync(path.join(home, LOCK_NAME)), "the lock goes with the simulator");

  // Reset, a stale lock left by a crash, then npm start again: it provisions, it does not say "reset" again.
  const reset = await cli(["reset", "--home", home, "--thing", THING, "--yes"]);
  t.is(reset.code, 0, reset.err);
  t.regex(reset.out, /npm start provisions it again by itself/);
  const stale = deadPid();
  fs.writeFileSync(path.join(home, LOCK_NAME), JSON.stringify({ pid: stale, startedAt: "earlier" }));
  const again = await tool("tools/simulator.ts", ["--home", home, "--rings", "1", "--exit"]);
  t.is(again.code, 0, again.out + again.err);
  t.regex(again.out, new RegExp(`pid ${stale}, had left .* behind; taken over`));
  t.regex(again.out, /provisioning doorward-sim-1 \(it was reset\)/);
  t.notRegex(again.out, /provision\.ts reset/);
  t.regex(again.out, /1 of 1 rings verified end to end/);
});

test("the home lock: a live holder is named, a dead one is taken over, release removes only its own lock", (t) => {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), "dw-lock-"));
  const file = path.join(home, LOCK_NAME);
  // This process is alive, so a lock naming it is held.
  const holder = spawn(process.execPath, ["-e", "setTimeout(() => {}, 60000)"], { stdio: "ignore" });
  try {
    fs.writeFileSync(file, JSON.stringify({ pid: holder.pid, startedAt: "now" }));
    const e = t.throws(() => lockHome(home), { instanceOf: UserError });
    t.regex(e?.message ?? "", new RegExp(`pid ${holder.pid}`));
    t.throws(() => refuseIfLocked(home), { instanceOf: UserError });
  } finally {
    holder.kill("SIGKILL");
  }
  const dead = deadPid();
  fs.writeFileSync(file, JSON.stringify({ pid: dead, startedAt: "then" }));
  t.notThrows(() => refuseIfLocked(home), "a dead holder does not block");
  const lock = lockHome(home);
  t.is(lock.staleFrom, dead);
  t.is(JSON.parse(fs.readFileSync(file, "utf8")).pid, process.pid);
  t.notThrows(() => refuseIfLocked(home), "this process may change its own device");
  t.throws(() => lockHome(home), { instanceOf: UserError }, "held by this process: a second taker is refused");
  lock.release();
  t.false(fs.existsSync(file));
  // An empty lock is one being written right now: held, not stale.
  fs.writeFileSync(file, "");
  t.throws(() => lockHome(home), { instanceOf: UserError, message: /starting/ });
});

test("create for a board points at the board; feed refuses that bundle and leaves it as it was", async (t) => {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), "dw-hints-aws-"));
  const pw = path.join(home, "wifi.txt");
  fs.writeFileSync(pw, "correct horse battery staple\n");
  const aws = await issueThingCredentials(path.join(home, "other-ca"), "front-door");
  const bundle = path.join(home, "front-door.json");
  const made = await cli(["create", "--home", home, "--thing", "front-door", "--wifi-ssid", "Home", "--wifi-password-file", pw,
    "--endpoint", "abc123-ats.iot.eu-west-1.amazonaws.com", "--cert", aws.certPath, "--key", aws.keyPath, "--ca", aws.caPath, "--out", bundle]);
  t.is(made.code, 0, made.err);
  t.regex(made.out, /is for a board: send it over USB/);
  t.regex(made.out, new RegExp(`npm run provision -- --port <tty> --bundle ${bundle.replace(/[.]/g, "\\.")}`));
  t.notRegex(made.out, /provision\.ts feed/);
  const before = fs.readFileSync(bundle);

  const fed = await cli(["feed", "--home", home, "--bundle", bundle]);
  t.is(fed.code, 2);
  t.regex(fed.err, /certificate is not from the development CA in .* \(AWS-issued, for a board\?\), so it is not for the simulated device; it was left as it was\. Send it to the board: npm run provision -- --port <tty> --bundle /);
  t.deepEqual(fs.readFileSync(bundle), before, "the board's bundle is untouched");
  const status = await cli(["status", "--home", home, "--thing", "front-door"]);
  t.regex(status.out, /unprovisioned/);

  // A bundle for the local stand-in says where it can go, each way erasing it.
  const local = await cli(["create", "--home", home, "--thing", "doorward-sim-2", "--wifi-ssid", "Home", "--wifi-password-file", pw]);
  t.is(local.code, 0, local.err);
  t.regex(local.out, /the simulated device of npm start: {2}npx tsx tools\/provision\.ts feed --bundle /);
  t.regex(local.out, /Moddable's simulator \(npm run sim:lin\): {2}npm run provision:sim -- --bundle /);
});

// ---- the serial provisioner, against a pseudo-terminal ----

const hasPty = spawnSync("python3", ["-c", "import pty"]).status === 0;

/** A pty whose far end runs `script` (python): the "board". Resolves with the port's path. */
function fakeBoard(script: string): Promise<{ port: string; stop: () => void }> {
  const child = spawn("python3", ["-u", "-c", `
import os, pty, sys, select
m, s = pty.openpty()
print(os.ttyname(s), flush=True)
buf = b""
def reply(line):
    os.write(m, (line + "\\r\\n").encode())
while True:
    r, _, _ = select.select([m], [], [], 1)
    if not r: continue
    buf += os.read(m, 4096)
    while b"\\n" in buf:
        line, buf = buf.split(b"\\n", 1)
        line = line.decode(errors="replace").strip()
${script}
`], { stdio: ["ignore", "pipe", "inherit"] });
  return new Promise((resolve, reject) => {
    child.stdout.once("data", (d) => resolve({ port: String(d).trim(), stop: () => child.kill("SIGKILL") }));
    child.once("error", reject);
  });
}

const serialTest = hasPty ? test : test.skip;

serialTest("the serial provisioner ends with its error: a port that never answers, and a device that refuses", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dw-serial-"));
  const bundle = path.join(dir, "bundle.json");
  fs.writeFileSync(bundle, "{}\n", { mode: 0o600 });

  const silent = await fakeBoard("        pass");
  try {
    const started = Date.now();
    const r = await tool("tools/mc.ts", ["provision", "--port", silent.port, "--bundle", bundle, "--keep"], 60_000);
    t.is(r.code, 1, `exit ${r.code} after ${Date.now() - started} ms: ${r.out}${r.err}`);
    t.regex(r.out, /talking to the device on .*HELLO/);
    t.regex(r.err, /^mc: no answer from the device to "DWPROV1 HELLO" after 4 tries/m);
  } finally {
    silent.stop();
  }

  const refusing = await fakeBoard(`        if line.startswith("DWPROV1 HELLO"): reply("DWPROV1 STATE unprovisioned waiting for a bundle")
        elif line.startswith("DWPROV1 BEGIN"): reply("DWPROV1 ERR bundle too large")`);
  try {
    const r = await tool("tools/mc.ts", ["provision", "--port", refusing.port, "--bundle", bundle], 60_000);
    t.is(r.code, 1, r.out + r.err);
    t.regex(r.out, /device: unprovisioned \(waiting for a bundle\)/);
    t.regex(r.err, /^mc: device refused: bundle too large/m);
    t.true(fs.existsSync(bundle), "a bundle the device refused is kept");
  } finally {
    refusing.stop();
  }
});
