/*
 * `npm start` as a newcomer runs it: a fresh home directory, first-run
 * provisioning, rings verified end to end, the access story, then a second
 * start that reuses the provisioned identity and continues the sequence.
 */
import test from "ava";
import { execFile } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

function simulate(args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, ["--import=tsx", "tools/simulator.ts", ...args], { timeout: 120_000, env: { ...process.env, DOORWARD_BUTTON_PORT: "0" } }, (error, stdout, stderr) => {
      resolve({ code: error ? (typeof error.code === "number" ? error.code : 1) : 0, out: stdout + stderr });
    });
  });
}

test("first run provisions, rings verify end to end, a revoked guest is refused; a second run keeps the identity", async (t) => {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), "dw-sim-"));
  const first = await simulate(["--home", home, "--rings", "1", "--exit", "--demo-access"]);
  t.is(first.code, 0, first.out);
  t.regex(first.out, /provisioning doorward-sim-1 \(first run\)/);
  t.regex(first.out, /cloud ✔ verified ring from doorward-sim-1 seq=1 boot=1 \(tweetnacl ✔ OpenSSL ✔\)/);
  t.regex(first.out, /guest: request a snapshot → accepted/);
  t.regex(first.out, /guest: request a snapshot → REFUSED \(revoked\)/);
  t.regex(first.out, /3 of 3 rings verified end to end, 0 rejected, 4 of 4 snapshots decrypted/, "three rings' snapshots and the guest's requested one");
  const key = /device key ([0-9a-f]{64})/.exec(first.out)?.[1];
  t.truthy(key);

  const second = await simulate(["--home", home, "--rings", "1", "--exit", "--quiet", "--demo-update"]);
  t.is(second.code, 0, second.out);
  t.regex(second.out, /update: ✔ device now runs version 2 \(was 1\)/);
  t.regex(second.out, /update: ✔ downgrade refused: REJECTED reason=downgrade/);
  t.notRegex(second.out, /provisioning/);
  t.regex(second.out, new RegExp(`device key ${key}`), "same identity after a restart");
  t.regex(second.out, /verified ring from doorward-sim-1 seq=\d+ boot=3/, "the updated firmware boots and rings");
  const seq = Number(/verified ring from doorward-sim-1 seq=(\d+) boot=2/.exec(second.out)?.[1]);
  t.true(seq > 3, `sequence continued above the first run: ${seq}`);
});
