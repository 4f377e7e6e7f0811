/*
 * `provision feed` reads bounded input: a bundle from /dev/zero or from a stdin that
 * never ends is refused once it passes the bundle size limit, with one clear line,
 * instead of being read forever. The real tool runs as its own process.
 */
import test from "ava";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { spawn } from "node:child_process";

function runFeed(bundle: string, stdin: "zero" | "ignore", timeoutMs: number): Promise<{ code: number | null; err: string; killed: boolean }> {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), "dw-feed-"));
  const zero = stdin === "zero" ? fs.openSync("/dev/zero", "r") : "ignore";
  const child = spawn(process.execPath, ["--import=tsx", "tools/provision.ts", "feed", "--home", home, "--bundle", bundle], { stdio: [zero, "ignore", "pipe"] });
  if (typeof zero === "number") fs.closeSync(zero);
  let err = "";
  child.stderr!.on("data", (d: Buffer) => (err += d.toString()));
  let killed = false;
  const timer = setTimeout(() => {
    killed = true;
    child.kill("SIGKILL");
  }, timeoutMs);
  return new Promise((resolve) => child.once("exit", (code) => {
    clearTimeout(timer);
    fs.rmSync(home, { recursive: true, force: true });
    resolve({ code, err, killed });
  }));
}

test("feed --bundle /dev/zero is refused as too large instead of read forever", async (t) => {
  t.timeout(60_000);
  const r = await runFeed("/dev/zero", "ignore", 30_000);
  t.false(r.killed, "the tool returned by itself");
  t.not(r.code, 0);
  t.regex(r.err, /larger than \d+ bytes/);
});

test("feed --bundle - with an endless stdin is refused as too large instead of read forever", async (t) => {
  t.timeout(60_000);
  const r = await runFeed("-", "zero", 30_000);
  t.false(r.killed, "the tool returned by itself");
  t.not(r.code, 0);
  t.regex(r.err, /more than \d+ bytes/);
});
