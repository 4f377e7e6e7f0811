/*
 * The README's "Flash onto a dev board" guide and docs/aws.md, held to what
 * they claim.
 *
 * Every command in their code blocks ends with what it needs: "# needs SDK",
 * "# needs board", "# needs AWS" (nothing here has those), or "# tested", and
 * each "# tested" command is run here, as written, with only the state
 * directory redirected (DOORWARD_HOME, a temp dir, instead of .doorward/).
 * tools/mc.ts is run without the SDK and with a stand-in SDK (an empty
 * checkout, a fake ESP-IDF, and an mcconfig that records its arguments), so
 * its messages for each missing piece and the mcconfig command lines it would
 * run are checked. The AWS IoT policy is evaluated against the topics the
 * firmware uses, for its own thing and for another.
 */
import test from "ava";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { topicsFor } from "../modules/core/topics";
import { updateTopics } from "../modules/core/update";
import { anchorSubscriptions, anchorTopics } from "../modules/core/acl-anchor";
import { parseBundle } from "../modules/core/provisioning";
import { endpointAllowed, parseSettings } from "../modules/device/settings";
import { BOARDS, ESP_IDF_VERSION, MODDABLE_VERSION, REPO, mcconfigArgs } from "../tools/mc";
import { displayProblem } from "../tools/sim-lin";
import { policyAllows, type IotAction, type PolicyDocument } from "../tools/standin/aws-policy";
import { firmwareJobDocument } from "../tools/update-service";
import { createRequire } from "node:module";

const README = fs.readFileSync(path.join(REPO, "README.md"), "utf8");
const AWS_DOC = fs.readFileSync(path.join(REPO, "docs", "aws.md"), "utf8");
const MARKERS = ["# tested", "# needs SDK", "# needs board", "# needs AWS"];

function guideSection(): string {
  const start = README.indexOf("## Flash onto a dev board");
  if (start < 0) return "";
  const next = README.indexOf("\n## ", start + 5);
  return README.slice(start, next < 0 ? undefined : next);
}

/** Commands in ```sh blocks, continuation lines joined. */
function commandsOf(markdown: string): string[] {
  const out: string[] = [];
  for (const block of markdown.matchAll(/```sh\n([\s\S]*?)```/g)) {
    let current = "";
    for (const raw of block[1].split("\n")) {
      const line = raw.trimEnd();
      if (!current && (!line.trim() || line.trim().startsWith("#"))) continue;
      current += (current ? " " : "") + line.trim();
      if (line.endsWith("\\")) {
        current = current.slice(0, -1).trimEnd();
        continue;
      }
      out.push(current);
      current = "";
    }
  }
  return out;
}

const markerOf = (command: string) => MARKERS.filter((m) => command.includes(m));
const bare = (command: string) => command.replace(/\s+#.*$/, "").trim();

function tmp(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** Run a shell command line the way a reader would (sh, from the repository), with a bounded time. */
function sh(line: string, env: NodeJS.ProcessEnv, input?: string) {
  return spawnSync("sh", ["-c", line], { cwd: REPO, env, input, encoding: "utf8", timeout: 120_000 });
}

/** The environment with no trace of an SDK (whatever the machine running the tests has). */
function noSdkEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env = { ...process.env, ...extra };
  delete env.MODDABLE;
  delete env.IDF_PATH;
  env.PATH = (env.PATH ?? "").split(path.delimiter).filter((d) => !fs.existsSync(path.join(d, "mcconfig"))).join(path.delimiter);
  return env;
}

/** A stand-in SDK: enough for tools/mc.ts to get past its checks, and an mcconfig that writes its cwd and argv to $MC_RECORD. */
function fakeSdk(): { env: NodeJS.ProcessEnv; record: string; moddable: string; idf: string } {
  const root = tmp("dw-fake-sdk-");
  const moddable = path.join(root, "moddable");
  fs.mkdirSync(path.join(moddable, "examples"), { recursive: true });
  fs.writeFileSync(path.join(moddable, "examples", "manifest_base.json"), "{}");
  const idf = path.join(root, "esp-idf");
  fs.mkdirSync(idf);
  fs.writeFileSync(path.join(idf, "export.sh"), "");
  const bin = path.join(root, "bin");
  fs.mkdirSync(bin);
  const record = path.join(root, "mcconfig.args");
  fs.writeFileSync(path.join(bin, "mcconfig"), '#!/bin/sh\nprintf "%s\\n" "$PWD" "$@" > "$MC_RECORD"\n', { mode: 0o755 });
  const env = noSdkEnv({ MC_RECORD: record });
  env.PATH = [bin, env.PATH].join(path.delimiter);
  return { env, record, moddable, idf };
}

const mc = (args: string[], env: NodeJS.ProcessEnv) => spawnSync(process.execPath, ["--import=tsx", path.join(REPO, "tools", "mc.ts"), ...args], { cwd: REPO, env, encoding: "utf8", timeout: 60_000 });

test("the guide exists, names the SDK and ESP-IDF versions tools/mc.ts checks for, and covers every board", (t) => {
  const guide = guideSection();
  t.true(guide.length > 2000, "README has a 'Flash onto a dev board' section");
  t.true(guide.includes(`Moddable SDK ${MODDABLE_VERSION}`));
  t.true(guide.includes(`ESP-IDF ${ESP_IDF_VERSION}`));
  for (const b of BOARDS.filter((x) => x.esp32)) t.true(guide.includes(`\`${b.name}\``), `the board table names ${b.name}`);
  for (const needle of ["docs/aws.md", "npm run provision", "doorward/<thing>/events", "npm run sim:lin"]) t.true(guide.includes(needle), needle);
});

test("every command in the guide and in docs/aws.md says what it needs, and every '# tested' one is run by this file", (t) => {
  const commands = [...commandsOf(guideSection()), ...commandsOf(AWS_DOC)];
  t.true(commands.length >= 20, `found ${commands.length} commands`);
  for (const c of commands) t.is(markerOf(c).length, 1, `exactly one of ${MARKERS.join(", ")}: ${c}`);
  const tested = commands.filter((c) => markerOf(c)[0] === "# tested").map(bare).sort();
  t.deepEqual(tested, Object.keys(TESTED).sort(), "the '# tested' commands are exactly the ones below");
  // The check itself can fail.
  t.deepEqual(markerOf("npm run flash:xiao -- --broker x"), []);
  t.deepEqual(commandsOf("```sh\nfoo \\\n  bar   # needs SDK\n# a comment\n```\n"), ["foo bar   # needs SDK"]);
});

/**
 * A scratch folder that looks like the repository to `npx tsx tools/...` (its code copied or linked in),
 * so a command the doc runs in the reader's working folder writes its files here, not in the tree.
 */
function scratchRepo(prefix: string): string {
  const dir = tmp(prefix);
  // tools/ is copied: a command knows it is the entry point by its own path, which a link would change.
  fs.cpSync(path.join(REPO, "tools"), path.join(dir, "tools"), { recursive: true });
  for (const name of ["modules", "node_modules", "package.json", "tsconfig.json", "hardware", "manifest.json", "types", "assets", "certs"]) {
    if (fs.existsSync(path.join(REPO, name))) fs.symlinkSync(path.join(REPO, name), path.join(dir, name));
  }
  return dir;
}

/** The release the update section of docs/aws.md signs: a release key and an image in a scratch folder, then its sign line. */
let releaseFolder: Promise<string> | undefined;
const SIGN_LINE = "npx tsx tools/release.ts sign --key release.key --image fw.bin --version 43 --board esp32/xiao_esp32s3_sense --label 1.4.3";
function signedRelease(): Promise<string> {
  releaseFolder ??= (async () => {
    const dir = scratchRepo("dw-guide-release-");
    const run = (line: string) => spawnSync("sh", ["-c", line], { cwd: dir, encoding: "utf8", timeout: 120_000 });
    for (const line of ["npx tsx tools/release.ts keygen --out .", "npx tsx tools/release.ts sim-image --version 43 --board esp32/xiao_esp32s3_sense --out fw.bin", SIGN_LINE]) {
      const r = run(line);
      if (r.status !== 0) throw new Error(`${line}: ${r.stdout}${r.stderr}`);
    }
    return dir;
  })();
  return releaseFolder;
}

/** The commands the documents mark "# tested", and how each is run and checked here. */
const TESTED: Record<string, (t: import("ava").ExecutionContext) => Promise<void> | void> = {
  "npm run check:sdk -- xiao": (t) => {
    const line = "npm run check:sdk -- xiao";
    const none = sh(line, noSdkEnv());
    t.is(none.status, 1, none.stdout + none.stderr);
    t.regex(none.stderr, /MODDABLE is not set: install the Moddable SDK 8\.2\.3/);
    const sdk = fakeSdk();
    const noIdf = sh(line, { ...sdk.env, MODDABLE: sdk.moddable });
    t.is(noIdf.status, 1);
    t.regex(noIdf.stderr, /ESP-IDF is not set up: IDF_PATH is not set/, "with the SDK present, what is missing is ESP-IDF");
    t.regex(noIdf.stdout, /missing +IDF_PATH/);
    const all = sh(line, { ...sdk.env, MODDABLE: sdk.moddable, IDF_PATH: sdk.idf });
    t.is(all.status, 0, all.stderr);
    t.regex(all.stdout, /ok +MODDABLE/);
  },
  "npx tsx tools/standin.ts": async (t) => {
    t.timeout(200_000);
    const pki = tmp("dw-guide-standin-");
    // Its own process group, so that stopping it stops npx's children too (and nothing else).
    const child = spawn("sh", ["-c", "exec npx tsx tools/standin.ts"], { cwd: REPO, env: { ...process.env, DOORWARD_BROKER_PORT: "0", DOORWARD_PKI_DIR: pki }, stdio: ["ignore", "pipe", "pipe"], detached: true });
    const exited = new Promise<void>((resolve) => child.on("exit", () => resolve()));
    let out = "";
    const up = await new Promise<boolean>((resolve) => {
      // First it makes three RSA keys: seconds alone, minutes on a loaded machine. What is tested is that it comes up.
      const timer = setTimeout(() => resolve(false), 170_000);
      child.stdout.on("data", (d) => {
        out += d;
        if (/AWS IoT stand-in listening on mqtts:\/\/127\.0\.0\.1:\d+/.test(out)) {
          clearTimeout(timer);
          resolve(true);
        }
      });
      child.on("exit", () => resolve(false));
    });
    process.kill(-child.pid!, "SIGTERM");
    await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
    child.stdout.destroy();
    child.stderr.destroy();
    t.true(up, out);
    t.true(fs.existsSync(path.join(pki, "ca.cert.der")), "it made the development CA the simulator's bundle trusts");
  },
  "echo 'sim-passphrase' | npx tsx tools/provision.ts create --thing doorward-lin-1 --wifi-ssid simulator --wifi-password-stdin --endpoint localhost": (t) => {
    const home = tmp("dw-guide-home-");
    const r = sh("echo 'sim-passphrase' | npx tsx tools/provision.ts create --thing doorward-lin-1 --wifi-ssid simulator --wifi-password-stdin --endpoint localhost", { ...process.env, DOORWARD_HOME: home });
    t.is(r.status, 0, r.stderr);
    const bundle = parseBundle(new Uint8Array(fs.readFileSync(path.join(home, "bundles", "doorward-lin-1.json"))));
    t.is(bundle.thing, "doorward-lin-1");
    // The simulator build accepts that endpoint: lin's broker is 127.0.0.1 with TLS name localhost.
    const lin = parseSettings(linConfig());
    t.true(endpointAllowed({ host: bundle.endpoint, port: undefined }, lin.broker));
    t.false(r.stdout.includes("sim-passphrase") || r.stderr.includes("sim-passphrase"));
  },
  "npm run provision:sim -- --bundle .doorward/bundles/doorward-lin-1.json": (t) => {
    const home = tmp("dw-guide-home-");
    fs.mkdirSync(path.join(home, "bundles"));
    const src = path.join(home, "bundles", "doorward-lin-1.json");
    fs.writeFileSync(src, '{"kind":"doorward-provisioning"}', { mode: 0o600 });
    const r = sh(`npm run provision:sim -- --bundle ${src}`, { ...process.env, DOORWARD_HOME: home });
    t.is(r.status, 0, r.stderr);
    const placed = path.join(home, "lin", "bundle.json");
    t.is(fs.readFileSync(placed, "utf8"), '{"kind":"doorward-provisioning"}');
    t.is(fs.statSync(placed).mode & 0o777, 0o600);
    t.false(fs.existsSync(src), "the source bundle is erased");
  },
  'sed -e "s/REGION/$AWS_REGION/g" -e "s/ACCOUNT_ID/$ACCOUNT_ID/g" docs/aws-policy.json > doorward-policy.json': (t) => {
    const out = path.join(tmp("dw-guide-policy-"), "doorward-policy.json");
    const r = sh(`sed -e "s/REGION/$AWS_REGION/g" -e "s/ACCOUNT_ID/$ACCOUNT_ID/g" docs/aws-policy.json > ${out}`, { ...process.env, AWS_REGION: "eu-west-1", ACCOUNT_ID: "123456789012" });
    t.is(r.status, 0, r.stderr);
    const text = fs.readFileSync(out, "utf8");
    t.notRegex(text, /REGION|ACCOUNT_ID/);
    const policy = JSON.parse(text);
    t.true(policy.Statement.every((s: { Resource: string | string[] }) => [s.Resource].flat().every((r) => r.startsWith("arn:aws:iot:eu-west-1:123456789012:"))));
  },
  "npx tsx tools/provision.ts csr --thing $THING": (t) => {
    const home = tmp("dw-guide-home-");
    const r = sh("npx tsx tools/provision.ts csr --thing $THING", { ...process.env, DOORWARD_HOME: home, THING: "doorward-porch-1" });
    t.is(r.status, 0, r.stderr);
    const dir = path.join(home, "aws", "doorward-porch-1");
    t.regex(fs.readFileSync(path.join(dir, "doorward-porch-1.csr.pem"), "utf8"), /BEGIN CERTIFICATE REQUEST/);
    t.is(fs.statSync(path.join(dir, "doorward-porch-1.key.pem")).mode & 0o777, 0o600);
    // The paths docs/aws.md then uses are the ones csr wrote.
    t.true(AWS_DOC.includes(".doorward/aws/$THING/$THING.csr.pem") && AWS_DOC.includes(".doorward/aws/$THING/$THING.key.pem"));
  },
};

function linConfig(): Record<string, unknown> {
  // The same merge as device-manifest.test.ts, reduced to what lin needs: root config, hardware/lin.json, root's lin section.
  const m = JSON.parse(fs.readFileSync(path.join(REPO, "manifest.json"), "utf8"));
  const lin = JSON.parse(fs.readFileSync(path.join(REPO, "hardware", "lin.json"), "utf8"));
  const merge = (a: Record<string, any>, b: Record<string, any>): Record<string, any> => {
    for (const [k, v] of Object.entries(b)) a[k] = v && typeof v === "object" && !Array.isArray(v) && a[k] && typeof a[k] === "object" ? merge(a[k], v) : structuredClone(v);
    return a;
  };
  return merge(merge(merge({}, lin.config), m.config), m.platforms.lin.config);
}

TESTED[SIGN_LINE] = async (t) => {
  const dir = await signedRelease();
  const manifest = JSON.parse(fs.readFileSync(path.join(dir, "fw.bin.manifest.json"), "utf8")) as { manifest: { version: number; board: string; label: string; size: number }; sig: string };
  t.like(manifest.manifest, { version: 43, board: "esp32/xiao_esp32s3_sense", label: "1.4.3", size: fs.statSync(path.join(dir, "fw.bin")).size });
  t.is(manifest.sig.length, 86);
};
TESTED[`jq -c '{operation: "doorward.firmware", release: ., stream: {id: "doorward-fw-43", file: 0}}' fw.bin.manifest.json > job.json`] = async (t) => {
  const dir = await signedRelease();
  const line = commandsOf(AWS_DOC).map(bare).find((c) => c.startsWith("jq "))!;
  const r = spawnSync("sh", ["-c", line], { cwd: dir, encoding: "utf8", timeout: 30_000 });
  t.is(r.status, 0, r.stderr);
  const release = JSON.parse(fs.readFileSync(path.join(dir, "fw.bin.manifest.json"), "utf8"));
  t.deepEqual(JSON.parse(fs.readFileSync(path.join(dir, "job.json"), "utf8")), firmwareJobDocument(release, { id: "doorward-fw-43", file: 0 }), "the job document the update service would make");
};
TESTED["npx esbuild tools/fleet-verifier-lambda.ts --bundle --platform=node --format=cjs --outfile=build/lambda/index.js && (cd build/lambda && zip -q ../verifier.zip index.js)"] = (t) => {
  const dir = scratchRepo("dw-guide-lambda-");
  const line = commandsOf(AWS_DOC).map(bare).find((c) => c.startsWith("npx esbuild "))!;
  const r = spawnSync("sh", ["-c", line], { cwd: dir, encoding: "utf8", timeout: 120_000 });
  t.is(r.status, 0, r.stdout + r.stderr);
  const listing = spawnSync("unzip", ["-l", path.join(dir, "build", "verifier.zip")], { encoding: "utf8" });
  t.regex(listing.stdout, /\bindex\.js\n/, "the zip holds index.js, which --handler index.handler names");
  const handler = createRequire(import.meta.url)(path.join(dir, "build", "lambda", "index.js")).handler;
  t.is(typeof handler, "function");
};

for (const [command, run] of Object.entries(TESTED)) test(`guide command runs: ${command}`, run);

test("tools/mc.ts: each missing piece is named, and with everything present the mcconfig command lines are the documented ones", (t) => {
  const broker = "abc123example-ats.iot.eu-west-1.amazonaws.com";
  const noBroker = mc(["build", "xiao"], noSdkEnv());
  t.is(noBroker.status, 2);
  t.regex(noBroker.stderr, /give your AWS IoT endpoint: --broker/);
  t.regex(mc(["build", "xiao", "--broker", "mqtt.example.com"], noSdkEnv()).stderr, /not an AWS IoT ATS data endpoint/);
  const noSdk = mc(["build", "xiao", "--broker", broker], noSdkEnv());
  t.is(noSdk.status, 1);
  t.regex(noSdk.stderr, /MODDABLE is not set/);
  const sdk = fakeSdk();
  t.regex(mc(["build", "xiao", "--broker", broker], { ...sdk.env, MODDABLE: path.join(sdk.moddable, "nope") }).stderr, /not a Moddable SDK checkout/);
  const noIdf = mc(["flash", "xiao", "--broker", broker], { ...sdk.env, MODDABLE: sdk.moddable });
  t.is(noIdf.status, 1);
  t.regex(noIdf.stderr, /ESP-IDF is not set up: IDF_PATH is not set\. Install ESP-IDF v6\.0/);
  t.false(fs.existsSync(sdk.record), "mcconfig was not run");
  t.regex(mc(["flash", "xiao", "--broker", broker], { ...sdk.env, MODDABLE: sdk.moddable, IDF_PATH: path.join(sdk.idf, "nope") }).stderr, /not an ESP-IDF checkout/);
  const noMc = mc(["sim"], { ...noSdkEnv(), MODDABLE: sdk.moddable });
  t.regex(noMc.stderr, /mcconfig is not on PATH/);

  const env = { ...sdk.env, MODDABLE: sdk.moddable, IDF_PATH: sdk.idf, DOORWARD_HOME: "/home/maker/dw" };
  const ran = (args: string[]) => {
    fs.rmSync(sdk.record, { force: true });
    const r = mc(args, env);
    t.is(r.status, 0, r.stderr);
    const [cwd, ...argv] = fs.readFileSync(sdk.record, "utf8").trimEnd().split("\n");
    t.is(fs.realpathSync(cwd), fs.realpathSync(REPO), "mcconfig runs from the repository (manifest.json, relative target paths)");
    return argv;
  };
  t.deepEqual(ran(["build", "xiao", "--broker", broker]), ["-i", "-m", "-p", "esp32/xiao_esp32s3_sense", "-t", "build", `broker=${broker}`]);
  t.deepEqual(ran(["flash", "m5atom", "--broker", broker, "--broker-port", "443"]), ["-i", "-m", "-p", "esp32/m5atom_s3r_m12", `broker=${broker}`, "brokerPort=443"]);
  t.deepEqual(ran(["debug", "lilygo", "--broker", broker]), ["-d", "-m", "-p", "esp32/lilygo_t_camera_plus_s3", "console=xsbug", `broker=${broker}`]);
  t.deepEqual(ran(["flash", "esp32cam", "--broker", broker, "--development", "--dev-vault-key"]), ["-i", "-m", "-p", "esp32:./hardware/targets/esp32cam", `broker=${broker}`, "development=1", "devVaultKey=1"]);
  // The simulator builds with -t build (the SDK's default lin target pkills every mcsim and starts xsbug), then needs mcsim.
  t.deepEqual(mcconfigArgs("sim", BOARDS.find((b) => b.name === "lin")!, { env, extra: ["-x"] }), ["-d", "-m", "-p", "lin", "-t", "build", "-o", path.join(REPO, "build", "sim"), "provisionFile=/home/maker/dw/lin/bundle.json", "-x"]);
  fs.rmSync(sdk.record, { force: true });
  const noMcsim = mc(["sim"], { ...env, IDF_PATH: undefined, DISPLAY: ":9" });
  t.is(noMcsim.status, 1);
  t.regex(noMcsim.stderr, /mcsim is not on PATH/);
  t.false(fs.existsSync(sdk.record), "nothing is built when the simulator cannot run");
  const emptyBin = tmp("dw-no-x-");
  t.regex(displayProblem({ PATH: emptyBin }) ?? "", /no DISPLAY and no Xvfb on PATH.*apt-get install xvfb/);
  fs.writeFileSync(path.join(emptyBin, "Xvfb"), "#!/bin/sh\n", { mode: 0o755 });
  t.is(displayProblem({ PATH: emptyBin }), undefined, "Xvfb is enough without a display");
  t.is(displayProblem({ PATH: "", DISPLAY: ":0" }), undefined);
  t.is(mc(["flash", "xiao", "--broker", broker, "--dev-vault-key"], env).status, 2, "--dev-vault-key is for the ESP32-CAM only");
  // A production build (build or flash without --development) of the ESP32-CAM never keeps its vault key in plain flash.
  for (const command of ["build", "flash"]) {
    fs.rmSync(sdk.record, { force: true });
    const refused = mc([command, "esp32cam", "--broker", broker, "--dev-vault-key"], env);
    t.is(refused.status, 2, command);
    t.regex(refused.stderr, /production build of the ESP32-CAM cannot keep its vault key in plain flash/);
    t.false(fs.existsSync(sdk.record), "nothing is built");
  }
  t.is(mc(["build", "esp8266", "--broker", broker], env).status, 2);
});

test("npm scripts: build, flash and debug for every board, the simulator, provisioning and the SDK checks", (t) => {
  const scripts: Record<string, string> = JSON.parse(fs.readFileSync(path.join(REPO, "package.json"), "utf8")).scripts;
  for (const b of BOARDS.filter((x) => x.esp32)) {
    for (const cmd of ["build", "flash", "debug"]) t.is(scripts[`${cmd}:${b.name}`], `tsx tools/mc.ts ${cmd} ${b.name}`);
  }
  t.is(scripts["sim:lin"], "tsx tools/mc.ts sim");
  t.is(scripts.provision, "tsx tools/mc.ts provision");
  t.is(scripts["provision:sim"], "tsx tools/mc.ts provision-sim");
  t.is(scripts["check:sdk"], "tsx tools/mc.ts check");
  t.is(scripts["typecheck:sdk"], "tsx tools/mc.ts typecheck");
  // Every npm script the guide mentions exists.
  for (const m of guideSection().matchAll(/npm run ([a-z0-9:-]+)/g)) {
    const name = m[1].replace(/<board>$/, "");
    if (name.endsWith(":")) t.true(Object.keys(scripts).some((s) => s.startsWith(name)), name);
    else t.truthy(scripts[name], name);
  }
});

// ------------------------------------------------------------------ the AWS IoT policy

interface Statement { Effect: string; Action: string; Resource: string | string[]; Condition?: unknown }

/** The policy through the one evaluator the stand-in enforces it with (tools/standin/aws-policy). */
function allowed(policy: PolicyDocument, action: IotAction, resource: string, thing: string): boolean {
  const m = /^arn:aws:iot:([^:]*):([^:]*):(?:client|topic|topicfilter)\/(.*)$/s.exec(resource)!;
  return policyAllows(policy, action, m[3], { region: m[1], account: m[2], thingName: thing, clientId: thing, attached: true });
}

test("the AWS IoT policy lets a device use its own topics (events, snapshots, replies, commands, jobs, streams, its access anchor) and nothing of another thing's", (t) => {
  const policy = JSON.parse(fs.readFileSync(path.join(REPO, "docs", "aws-policy.json"), "utf8").replaceAll("REGION", "eu-west-1").replaceAll("ACCOUNT_ID", "123456789012"));
  const arn = (kind: string, name: string) => `arn:aws:iot:eu-west-1:123456789012:${kind}/${name}`;
  for (const s of policy.Statement as Statement[]) {
    for (const r of [s.Resource].flat()) t.true(r.includes("${iot:Connection.Thing.ThingName}"), `every resource is confined to the thing: ${r}`);
  }
  const me = "doorward-porch-1";
  const other = "doorward-gate-2";
  const mine = topicsFor(me);
  const upd = updateTopics(me);
  const anchor = anchorTopics(me);
  const publishes = [mine.events, mine.snapshots, mine.replies, upd.getNext, upd.update("job-7"), upd.streamGet("fw-12"), anchor.get, anchor.update];
  const subscriptions = [mine.commands, ...upd.subscriptions, ...anchorSubscriptions(me)];
  const receives = [mine.commands, upd.notifyNext, `${upd.getNext}/accepted`, `$aws/things/${me}/streams/fw-12/data/json`, anchor.getAccepted, anchor.getRejected];
  t.true(allowed(policy, "iot:Connect", arn("client", me), me));
  t.false(allowed(policy, "iot:Connect", arn("client", other), me), "a second client ID");
  for (const topic of publishes) {
    t.true(allowed(policy, "iot:Publish", arn("topic", topic), me), topic);
    t.false(allowed(policy, "iot:Publish", arn("topic", topic.replace(me, other)), me), `not ${other}'s`);
  }
  for (const filter of subscriptions) {
    t.true(allowed(policy, "iot:Subscribe", arn("topicfilter", filter), me), filter);
    t.false(allowed(policy, "iot:Subscribe", arn("topicfilter", filter.replace(me, other)), me));
  }
  for (const topic of receives) t.true(allowed(policy, "iot:Receive", arn("topic", topic), me), topic);
  for (const topic of [`$aws/things/${me}/shadow/update`, `$aws/things/${me}/shadow/name/other/update`, "doorward/+/events", `doorward/${other}/commands`]) {
    t.false(allowed(policy, "iot:Publish", arn("topic", topic), me), topic);
    t.false(allowed(policy, "iot:Subscribe", arn("topicfilter", topic), me), topic);
  }
  const connect = (policy.Statement as Statement[]).find((s) => s.Action === "iot:Connect")!;
  t.deepEqual(connect.Condition, { Bool: { "iot:Connection.Thing.IsAttached": "true" } });
});
