/*
 * Who answers the device's named shadows on a broker given with --broker: the
 * simulator joins as <base>-shadows and answers them only where the broker has
 * no shadow service of its own. The stand-in plays that broker here; it keeps
 * shadows as AWS does, so the device is served either way and the test sees
 * only whether the simulator stepped in.
 */
import test from "ava";
import { execFile } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { ensureDevPki } from "../tools/pki";
import { startStandin } from "../tools/standin";

async function run(shadows: "local" | "aws") {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), `dw-shadows-${shadows}-`));
  const pki = await ensureDevPki(path.join(home, "pki"));
  const standin = await startStandin({ pki, connectIntervalMs: 0 });
  const clients: string[] = [];
  standin.on("accepted", (e: { clientId: string }) => clients.push(e.clientId));
  const args = ["--home", home, "--rings", "1", "--exit", "--quiet", "--broker-shadows", shadows,
    "--broker", `127.0.0.1:${standin.port}`, "--broker-servername", "localhost", "--broker-ca", pki.ca.certPath, "--broker-cert", pki.service.certPath, "--broker-key", pki.service.keyPath];
  const out = await new Promise<string>((resolve) => {
    execFile(process.execPath, ["--import=tsx", "tools/simulator.ts", ...args], { timeout: 90_000, env: { ...process.env, DOORWARD_BUTTON_PORT: "0" } }, (_e, stdout, stderr) => resolve(stdout + stderr));
  });
  await standin.close();
  return { out, clients };
}

test("--broker-shadows aws: the simulator leaves the shadows to the broker and never joins to answer them", async (t) => {
  const { out, clients } = await run("aws");
  t.regex(out, /named shadows: the broker's own shadow service answers them/, out);
  t.regex(out, /1 of 1 rings verified end to end/, out);
  t.false(clients.some((c) => c.endsWith("-shadows")), clients.join(", "));
});

test("--broker-shadows local: the simulator joins as <base>-shadows and answers them", async (t) => {
  const { out, clients } = await run("local");
  t.regex(out, /named shadows: answered by the simulator/, out);
  t.true(clients.some((c) => c.endsWith("-shadows")), clients.join(", "));
});
