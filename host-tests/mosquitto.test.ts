/*
 * Mosquitto, configured like AWS IoT Core (tools/mosquitto.ts), as a broker of
 * the user's own: `npm start` with --broker runs rings, snapshots and the
 * access story end to end through it; its per-thing ACL refuses another
 * thing's topics; a refused certificate is reported by name; every session
 * ends with a DISCONNECT.
 */
import test from "ava";
import { execFile } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { ensureDevPki, issueRogueCredentials, issueThingCredentials, type DevPki } from "../tools/pki";
import { mosquittoExecutable, startMosquitto, type RunningMosquitto } from "../tools/mosquitto";
import { joinBroker, type BrokerSettings } from "../tools/lib/broker";
import { MqttFailureError } from "../modules/host/mqtt-failure";

function simulate(args: string[]): Promise<{ code: number; out: string; ms: number }> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    execFile(process.execPath, ["--import=tsx", "tools/simulator.ts", ...args], { timeout: 90_000, env: { ...process.env, DOORWARD_BUTTON_PORT: "0" } }, (error, stdout, stderr) => {
      resolve({ code: error ? (typeof error.code === "number" ? error.code : 1) : 0, out: stdout + stderr, ms: Date.now() - t0 });
    });
  });
}

const brokerArgs = (pki: DevPki, port: number) => ["--broker", `127.0.0.1:${port}`, "--broker-ca", pki.ca.certPath, "--broker-cert", pki.service.certPath, "--broker-key", pki.service.keyPath];

const settings = (pki: DevPki, m: RunningMosquitto, creds: { certPem: string; keyPem: string }, clientId: string, ca = pki.ca.certPem): BrokerSettings =>
  ({ host: m.host, port: m.port, ca, cert: creds.certPem, key: creds.keyPem, clientId });

const messages = (client: import("mqtt").MqttClient) => {
  const got: string[] = [];
  client.on("message", (topic) => got.push(topic));
  return got;
};

const publish = (client: import("mqtt").MqttClient, topic: string) =>
  new Promise<void>((resolve, reject) => client.publish(topic, "x", { qos: 1 }, (e) => (e ? reject(e) : resolve())));

let home: string;
let pki: DevPki;
let broker: RunningMosquitto;

test.before(async () => {
  if (!mosquittoExecutable()) throw new Error("mosquitto is not installed: apt-get install -y mosquitto (.ci/run does this)");
  home = fs.mkdtempSync(path.join(os.tmpdir(), "dw-mosq-"));
  pki = await ensureDevPki(path.join(home, "pki"));
  broker = await startMosquitto(pki, { dir: path.join(home, "mosquitto") });
});

test.after.always(async () => {
  await broker?.stop();
});

test.serial("npm start --broker: rings, snapshots and a revocation end to end through mosquitto; every session ends with DISCONNECT", async (t) => {
  const run = await simulate(["--home", home, "--rings", "1", "--exit", "--demo-access", "--quiet", ...brokerArgs(pki, broker.port)]);
  t.is(run.code, 0, run.out);
  t.regex(run.out, new RegExp(`broker mqtts://127\\.0\\.0\\.1:${broker.port} \\(yours; no stand-in started\\)`));
  t.notRegex(run.out, /stand-in for AWS IoT Core/);
  t.regex(run.out, /cloud ✔ verified ring from doorward-sim-1 seq=1 boot=1 \(tweetnacl ✔ OpenSSL ✔\)/);
  t.regex(run.out, /guest: request a snapshot → REFUSED \(revoked\)/);
  t.regex(run.out, /3 of 3 rings verified end to end, 0 rejected, 4 of 4 snapshots decrypted/);
  t.notRegex(run.out, /DeprecationWarning/, "no SNI is sent for an IP endpoint");

  await broker.waitForLog(/Client doorward-sim-1 disconnected\./);
  const log = broker.log();
  for (const id of ["doorward-sim-1", "doorward-cloud-sim", "doorward-cloud-sim-snapshots", "doorward-cloud-apps"]) {
    t.regex(log, new RegExp(`New client connected from [^\\n]* as ${id} \\(`), `${id} used this broker`);
    t.regex(log, new RegExp(`Client ${id} disconnected\\.\\n`), `${id} sent DISCONNECT`);
    t.notRegex(log, new RegExp(`Client ${id} closed its connection`), `${id} did not just drop the socket`);
  }
  t.notRegex(log, /Denied (PUBLISH|SUBSCRIBE)/, "the device and the tools stay inside the policy");
  t.notRegex(log, /Sending PUBLISH to \S+ \([^)]*\) '[^']*'[^\n]*will/i);
});

test.serial("npm start --broker --demo-update: a signed update through Jobs and streams played on mosquitto, and a refused downgrade", async (t) => {
  const run = await simulate(["--home", home, "--rings", "0", "--exit", "--quiet", "--demo-update", ...brokerArgs(pki, broker.port)]);
  t.is(run.code, 0, run.out);
  t.regex(run.out, /update: ✔ device now runs version 2 \(was 1\); job SUCCEEDED; \d+ KiB\/s over the broker/);
  t.regex(run.out, /update: ✔ downgrade refused: REJECTED reason=downgrade/);
  t.regex(run.out, /1 of 1 rings verified end to end, 0 rejected/);
  t.regex(broker.log(), /New client connected from [^\n]* as doorward-cloud-jobs \(/);
});

test.serial("a bundle that names another broker is reported, not ignored, and nothing waits forever", async (t) => {
  // The home was provisioned for this mosquitto: without --broker there is no cloud side for it.
  const noFlags = await simulate(["--home", home, "--rings", "1", "--exit", "--quiet"]);
  t.is(noFlags.code, 1, noFlags.out);
  t.regex(noFlags.out, new RegExp(`device doorward-sim-1 is provisioned for the broker 127\\.0\\.0\\.1:${broker.port}: give the cloud side's settings`));

  // The same mosquitto under another name is another endpoint than the bundle's: refused, naming both.
  const renamed = await simulate(["--home", home, "--rings", "1", "--exit", "--quiet", "--broker", `localhost:${broker.port}`, ...brokerArgs(pki, broker.port).slice(2)]);
  t.is(renamed.code, 1, renamed.out);
  t.regex(renamed.out, new RegExp(`device doorward-sim-1 is provisioned for 127\\.0\\.0\\.1:${broker.port}, not for mqtts://localhost:${broker.port}: provision it for this broker`));

  // A broker that is not there: the run names it and ends.
  const closed = await new Promise<number>((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
  const gone = await simulate(["--home", home, "--rings", "1", "--exit", "--quiet", ...brokerArgs(pki, closed)]);
  t.is(gone.code, 1, gone.out);
  t.regex(gone.out, new RegExp(`cloud side could not join: broker mqtts://127\\.0\\.0\\.1:${closed} is unreachable \\(ECONNREFUSED\\)`));
  t.true(gone.ms < 30_000, `ended in ${gone.ms} ms`);

  const fresh = fs.mkdtempSync(path.join(os.tmpdir(), "dw-mosq-gone-"));
  fs.cpSync(path.join(home, "pki"), path.join(fresh, "pki"), { recursive: true });
  const none = await simulate(["--home", fresh, "--rings", "1", "--exit", "--quiet", ...brokerArgs(pki, closed)]);
  t.is(none.code, 1, none.out);
  t.regex(none.out, new RegExp(`cloud side could not join: broker mqtts://127\\.0\\.0\\.1:${closed} is unreachable \\(ECONNREFUSED\\)`));
  t.true(none.ms < 30_000, `ended in ${none.ms} ms`);
});

test.serial("a device that cannot join: npm start --exit gives up at its deadline and names the refusal", async (t) => {
  // A second mosquitto on a PKI of its own: the cloud side is given its CA, the device knows only its home's.
  const other = await ensureDevPki(fs.mkdtempSync(path.join(os.tmpdir(), "dw-mosq-other-pki-")));
  const second = await startMosquitto(other, { dir: fs.mkdtempSync(path.join(os.tmpdir(), "dw-mosq-other-")) });
  try {
    const h = fs.mkdtempSync(path.join(os.tmpdir(), "dw-mosq-refused-"));
    const run = await simulate(["--home", h, "--rings", "1", "--exit", "--quiet", ...brokerArgs(other, second.port)]);
    t.is(run.code, 1, run.out);
    t.regex(run.out, new RegExp(`device doorward-sim-1 did not come online within 20 s at mqtts://127\\.0\\.0\\.1:${second.port}: tls: broker 127\\.0\\.0\\.1:${second.port} presented a certificate the given CA does not vouch for`));
    t.true(run.ms < 60_000, `ended in ${run.ms} ms`);
  } finally {
    await second.stop();
  }
});

test.serial("the ACL keeps a thing to its own topics, as AWS IoT's policy does", async (t) => {
  const a = await issueThingCredentials(pki.dir, "thing-a");
  const service = await joinBroker(settings(pki, broker, pki.service, "doorward-cloud-acl"), { subscribe: ["doorward/+/events"] });
  const thing = await joinBroker(settings(pki, broker, a, "thing-a"), { subscribe: ["doorward/thing-a/commands", "doorward/thing-b/commands"] });
  const toService = messages(service.client);
  const toThing = messages(thing.client);

  await publish(thing.client, "doorward/thing-b/events");
  await publish(service.client, "doorward/thing-b/commands");
  // The allowed pair last: once both arrive, the refused ones had their chance.
  await publish(thing.client, "doorward/thing-a/events");
  await publish(service.client, "doorward/thing-a/commands");
  await broker.waitForLog(/Denied PUBLISH from thing-a \([^)]*'doorward\/thing-b\/events'/);
  const deadline = Date.now() + 5000;
  while ((toService.length < 1 || toThing.length < 1) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));

  t.deepEqual(toService, ["doorward/thing-a/events"], "an event on another thing's topic never reaches the cloud");
  t.deepEqual(toThing, ["doorward/thing-a/commands"], "another thing's commands are not delivered, though mosquitto grants the SUBSCRIBE");
  await thing.close();
  await service.close();
});

test.serial("a broker that refuses the certificate, or whose own certificate does not verify, is reported by name", async (t) => {
  const rogue = await issueRogueCredentials(pki.dir, "thing-r");
  const refused = await t.throwsAsync(joinBroker(settings(pki, broker, rogue, "thing-r"), { timeoutMs: 5000 }));
  t.true(refused instanceof MqttFailureError);
  t.is((refused as MqttFailureError).kind, "client-certificate-refused");
  t.regex(refused!.message, new RegExp(`^broker mqtts://127\\.0\\.0\\.1:${broker.port} refused the client certificate \\(TLS alert: unknown ca\\)`));

  const untrusted = await t.throwsAsync(joinBroker(settings(pki, broker, pki.service, "doorward-cloud-x", rogue.caPem), { timeoutMs: 5000 }));
  t.is((untrusted as MqttFailureError).kind, "broker-certificate-untrusted");
  t.regex(untrusted!.message, /presented a certificate the given CA does not vouch for \(SELF_SIGNED_CERT_IN_CHAIN/);
});
