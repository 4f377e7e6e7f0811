/*
 * The whole doorbell on a laptop: `npm start`.
 *
 * Starts the local AWS IoT stand-in (mutual TLS, per-thing policy), a simulated
 * doorbell running the unchanged core with host adapters, and the cloud-side
 * consumer that verifies every event twice (tweetnacl and OpenSSL). Press Enter
 * to ring, or POST to the local button endpoint; the first ring happens on its
 * own so a newcomer sees one verified end to end within seconds.
 *
 *   npm start                       interactive
 *   npm start -- --rings 3 --exit   ring three times, wait for verification, exit 0/1
 *   npm start -- --broker HOST[:PORT] --broker-ca ca.pem --broker-cert svc.pem --broker-key svc.key
 *                                   your own broker instead of the stand-in (or --broker-config FILE)
 */
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";
import nacl from "tweetnacl";
import { startHostCryptoWorker } from "../modules/host/crypto-worker";
import { bootFirmware, type RunningFirmware } from "../modules/core/firmware";
import { deviceBoxSecretFromSeed } from "../modules/core/access";
import type { DeviceIdentity } from "../modules/core/provisioning";
import { createHostClock } from "../modules/host/clock";
import { hostRandom } from "../modules/host/random";
import { FileStore } from "../modules/host/file-store";
import { openKeyFile } from "../modules/host/key-file";
import { createHostLog } from "../modules/host/log";
import { HostMqttTransport } from "../modules/host/mqtt-transport";
import { simulatorEgress } from "../modules/host/egress";
import { SimulatedButton } from "../modules/host/button";
import { FolderCamera } from "../modules/host/camera";
import { hostAesGcm, hostSha256 } from "../modules/host/cipher";
import { attachSnapshotViewer } from "./snapshot-consumer";
import { openSimFirmware } from "../modules/host/update-sink";
import { builtInKeys, ensureDevReleaseKey } from "./release";
import { demoUpdate } from "./update-service";

/** The simulated board's name: releases signed for it are the only ones it installs. */
const SIM_BOARD = "host/sim";
import { ensureDevPki } from "./pki";
import { startStandin, type Standin } from "./standin";
import { BROKER_OPTIONS, BROKER_USAGE, brokerFromFlags, brokerName, brokerShadows, BrokerSettingsError, closeClient, joinBroker, type BrokerConnection, type BrokerSettings, type ShadowAnswerer } from "./lib/broker";
import { ShadowService } from "./standin/shadow";
import { DEFAULT_ENDPOINT } from "./provision";
import { CloudConsumer } from "./cloud";
import { devicePaths, main as provisionCli, openSimulatedDevice } from "./provision";
import { lockHome } from "./lib/home-lock";
import { AppLink, OwnerApp, UserApp, createUserKeys, keysFromJson, type AppKeys } from "./owner-app";
import { startWebApp, type HandOverResult } from "./webapp";
import type { AccessUser } from "../modules/core/access";
import { bytesEqual, toHex, toBase64Url } from "../modules/core/bytes";
import { intOption, portOption, runAsEntry, type Parsed } from "./lib/cli";
import { pemOf as pem } from "../modules/host/pem";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const DEFAULT_HOME = path.join(REPO, ".doorward");
const PROMPT_HELP = "press Enter to ring · a: owner adds a guest · v: guest asks for a snapshot · r: owner revokes the guest · p: firmware tries to phone home · s: status · h: this help · q: quit";

interface SimOptions {
  home: string;
  thing: string;
  rings: number;
  exit: boolean;
  buttonPort: number;
  quiet: boolean;
  demoAccess: boolean;
  demoUpdate: boolean;
  demoEgress: boolean;
  /** The user's own broker (service identity); undefined: the stand-in. */
  broker?: BrokerSettings;
  /** With a broker: whether the simulator answers the named shadows ("local") or the broker's shadow service does ("aws"). */
  brokerShadows?: ShadowAnswerer;
  /** How long the device may take to come online before the run gives up. Default 20 s. */
  onlineTimeoutMs: number;
}

/** How long a run waits for the device's first session. */
const ONLINE_TIMEOUT_MS = 20_000;

const CLI = {
  name: "simulator",
  usage: `usage: npm start -- [options]

The whole doorbell on this machine: the local AWS IoT stand-in, a simulated doorbell
running the real firmware core, and a cloud consumer verifying every event. The first
run provisions the device under .doorward/. At the prompt: Enter rings, "help" lists
the other keys.

  --rings N          ring N times on start (default 1)
  --exit             wait until every ring is verified, then exit 0 (or 1)
  --demo-access      add a shared user, ring, revoke, ring again
  --demo-update      a signed update through AWS IoT Jobs and streams, then a refused downgrade
  --demo-egress      firmware code tries to phone home and is refused
  --home DIR         where the device keeps its state (default .doorward, or DOORWARD_HOME)
  --thing NAME       the thing name (default doorward-sim-1, or DOORWARD_THING)
  --button-port N    the local HTTP button (default 8080, or DOORWARD_BUTTON_PORT; 0 = any free port)
  --quiet            fewer lines
  -h, --help         this text

${BROKER_USAGE}
  --broker-shadows local|aws  who answers the device's named shadows: the simulator (local)
                             or the broker's shadow service (aws); default aws on an AWS IoT
                             endpoint (*.iot.<region>.amazonaws.com), local on any other`,
  options: {
    rings: { type: "string" }, exit: { type: "boolean" }, home: { type: "string" }, thing: { type: "string" },
    "button-port": { type: "string" }, quiet: { type: "boolean" },
    "demo-access": { type: "boolean" }, "demo-update": { type: "boolean" }, "demo-egress": { type: "boolean" },
    ...BROKER_OPTIONS, "broker-shadows": { type: "string" },
  },
} as const;

function simOptions(args: Parsed<typeof CLI.options>): SimOptions {
  const v = args.values;
  return {
    home: path.resolve(v.home ?? process.env.DOORWARD_HOME ?? DEFAULT_HOME),
    thing: v.thing ?? process.env.DOORWARD_THING ?? "doorward-sim-1",
    rings: intOption("rings", v.rings, { min: 0, max: 1_000_000 }, 1),
    exit: v.exit ?? false,
    buttonPort: portOption("button-port", v["button-port"] ?? process.env.DOORWARD_BUTTON_PORT, 8080),
    quiet: v.quiet ?? false,
    demoAccess: v["demo-access"] ?? false,
    demoUpdate: v["demo-update"] ?? false,
    demoEgress: v["demo-egress"] ?? false,
    ...brokerChoice(v),
    onlineTimeoutMs: ONLINE_TIMEOUT_MS,
  };
}

function brokerChoice(v: Parsed<typeof CLI.options>["values"]): Pick<SimOptions, "broker" | "brokerShadows"> {
  const broker = brokerFromFlags(v);
  if (!broker) {
    if (v["broker-shadows"] !== undefined) throw new BrokerSettingsError("--broker-shadows needs --broker: the stand-in always keeps the shadows");
    return {};
  }
  return { broker, brokerShadows: brokerShadows(broker.host, v["broker-shadows"]) };
}

export async function runSimulator(o: SimOptions): Promise<number> {
  const say = (line: string) => process.stdout.write(line + "\n");
  // Before anything else: a second simulator on this home would run the same device.
  const lock = lockHome(o.home);
  if (lock.staleFrom !== undefined) say(`(a simulator that is no longer running, pid ${lock.staleFrom}, had left ${lock.file} behind; taken over)`);
  try {
    return await runLocked(o, say);
  } finally {
    lock.release();
  }
}

async function runLocked(o: SimOptions, say: (line: string) => void): Promise<number> {
  const pkiDir = path.join(o.home, "pki");
  if (!fs.existsSync(path.join(pkiDir, "ca.cert.pem"))) say(`first run: making the development PKI in ${pkiDir} (RSA-2048 keys: a few seconds each on a busy machine)`);
  const pki = await ensureDevPki(pkiDir, { progress: (line) => say(`  ${line} ...`) });
  let standin: Standin | undefined;
  let service: BrokerSettings;
  let shadowPlayer: BrokerConnection | undefined;
  if (o.broker) {
    service = o.broker;
    say(`broker ${brokerName(service)} (yours; no stand-in started), cloud side as ${service.clientId}`);
    // A plain broker has no device shadows: play the named shadows the device keeps its access anchor in, as the stand-in does.
    // On AWS IoT Core the shadows are AWS's, and answering them would impersonate it.
    say(o.brokerShadows === "aws" ? "named shadows: the broker's own shadow service answers them" : "named shadows: answered by the simulator (the broker has no shadow service)");
    const shadows = new ShadowService();
    if (o.brokerShadows !== "aws") {
      try {
        shadowPlayer = await joinBroker(service, {
          suffix: "shadows",
          subscribe: ["$aws/things/+/shadow/name/+/get", "$aws/things/+/shadow/name/+/update"],
          onMessage: (topic, payload) => {
            for (const a of shadows.handle(topic, payload) ?? []) shadowPlayer?.client.publish(a.topic, a.payload, { qos: 1 });
          },
        });
      } catch (e) {
        say(`cloud side could not join: ${(e as Error).message}`);
        return 1;
      }
    }
  } else {
    standin = await startStandin({ pki });
    service = { host: "127.0.0.1", port: standin.port, servername: "localhost", clientId: pki.service.name, ca: pki.ca.certPem, cert: pki.service.certPem, key: pki.service.keyPem };
    say(`stand-in for AWS IoT Core on mqtts://127.0.0.1:${standin.port} (mutual TLS, dev CA in ${pkiDir})`);
  }
  // The bundle's endpoint is where the device goes. "localhost" without a port is the stand-in, wherever it listens this run.
  const deviceBroker = (id: DeviceIdentity) =>
    id.endpoint.host === DEFAULT_ENDPOINT && id.endpoint.port === undefined && standin
      ? { host: "127.0.0.1", port: standin.port, servername: "localhost" }
      : { host: id.endpoint.host, port: id.endpoint.port ?? 8883, servername: /^[\d.]+$|:/.test(id.endpoint.host) ? undefined : id.endpoint.host };

  // An unprovisioned device (first run, or after provision.ts reset) is provisioned over its local
  // channel, as a maker would with tools/provision.ts. A damaged one is left for the maker to reset.
  const paths = devicePaths(o.home, o.thing);
  const before = fs.existsSync(paths.keyFile) ? openSimulatedDevice({ home: o.home, thing: o.thing, log: () => {}, warn: () => {} }).provisioning.status().state : "unprovisioned";
  if (before === "unprovisioned") await provisionSimulatedDevice(o, say, fs.existsSync(paths.keyFile) ? "it was reset" : "first run");

  const clock = createHostClock();
  const button = new SimulatedButton();
  const pressedAt = new Map<number, number>();
  let lastPressAt = 0;
  const releaseKeys = builtInKeys(ensureDevReleaseKey(o.home));
  // The one way out for the simulated device: the manifest's lin allowlist plus this run's broker.
  const egress = simulatorEgress({ broker: { host: service.host, port: service.port } });
  const log = createHostLog((line) => { if (!o.quiet) say(`  device ${line}`); });
  let firmware!: RunningFirmware;
  let version = 0;
  // The device's second core: nonce points, grant and update verifies run on a worker thread, as on a board.
  const cryptoWorker = startHostCryptoWorker();
  /** Power on: the simulated bootloader picks an image, then the firmware boots on it. An update restarts through here. */
  const powerOn = (): RunningFirmware | undefined => {
    const flash = openSimFirmware(path.join(paths.dir, "flash"), { board: SIM_BOARD });
    version = flash.info.version;
    const booted = bootFirmware({
      clock,
      random: hostRandom,
      vaultStore: new FileStore(paths.vaultDir),
      store: new FileStore(paths.nvsDir),
      keys: openKeyFile(paths.keyFile, { warn: () => {} }),
      log,
      button,
      egress: egress.guard,
      transport: (id: DeviceIdentity) => new HostMqttTransport({
        ...deviceBroker(id), clientId: id.thing, egress,
        ca: pem("CERTIFICATE", id.tls.certificate), cert: pem("CERTIFICATE", id.tls.clientCertificates[0]), key: pem("PRIVATE KEY", id.tls.clientKey),
      }),
      crypto: cryptoWorker.crypto,
      onChime: () => say("  chime ♪ ding-dong"),
      // Time from the recognised press, so signing is inside the figure.
      onPress: () => (lastPressAt = clock.monotonic()),
      onRing: (ring) => pressedAt.set(ring.seq, lastPressAt),
      camera: new FolderCamera({ directory: path.join(REPO, "assets", "samples"), captureDelayMs: 60 }),
      cipher: hostAesGcm,
      sha256: hostSha256,
      update: {
        board: SIM_BOARD, runningVersion: flash.info.version, releaseKeys, sink: flash.slots, boot: flash.slots,
        maxImageBytes: flash.slots.capacity, healthCheck: () => flash.info.healthy && firmware.doorbell.link.online,
      },
    });
    if (booted.state !== "running") {
      say(`device is ${booted.state}: ${booted.status.message}`);
      // Only a damaged device gets here: an unprovisioned one was provisioned above. A reset makes it unprovisioned.
      say(`start it over: npx tsx tools/provision.ts reset --thing ${o.thing} --yes${o.home === DEFAULT_HOME ? "" : ` --home ${o.home}`}, then npm start again (it provisions the reset device by itself)`);
      return undefined;
    }
    flash.slots.onRestart = () => {
      say("device restarting into the image its bootloader selected");
      booted.stop();
      // A real restart takes a moment; it also keeps to AWS's one CONNECT per second.
      setTimeout(() => { if (!powerOn()) say("device failed to boot after restart"); }, 1100);
    };
    firmware = booted;
    say(`firmware version ${version} booted (boot ${booted.doorbell.sequence.boot})`);
    return booted;
  };
  if (!powerOn()) {
    await cryptoWorker.close();
    await shadowPlayer?.close();
    await standin?.close();
    return 1;
  }
  const identity = firmware.identity;
  const target = deviceBroker(identity);
  if (target.host !== service.host || target.port !== service.port) {
    firmware.stop();
    await cryptoWorker.close();
    await shadowPlayer?.close();
    await standin?.close();
    const where = `${identity.endpoint.host}${identity.endpoint.port === undefined ? "" : `:${identity.endpoint.port}`}`;
    say(o.broker
      ? `device ${identity.thing} is provisioned for ${where}, not for ${brokerName(service)}: provision it for this broker (npx tsx tools/provision.ts reset --thing ${identity.thing} --yes, then npm start with the same --broker options), or use another --home`
      : `device ${identity.thing} is provisioned for the broker ${where}: give the cloud side's settings for it (--broker ${where} --broker-ca ... --broker-cert ... --broker-key ..., or --broker-config FILE; see --help)`);
    return 1;
  }

  const cloud = new CloudConsumer();
  cloud.register(identity.thing, identity.publicKey);
  const stopAll = async () => {
    firmware.stop();
    await cryptoWorker.close();
    await cloud.close();
    await shadowPlayer?.close();
    await standin?.close();
  };
  try {
    await cloud.connect({ ...service, clientId: `${service.clientId}-sim` });
  } catch (e) {
    say(`cloud side could not join: ${(e as Error).message}`);
    await stopAll();
    return 1;
  }
  let verified = 0;
  let rejected = 0;
  cloud.onEvent((e) => {
    if (e.verdict.ok && e.openssl && e.verdict.event.type !== "ring") {
      const ev = e.verdict.event;
      const about = ev.type === "snapshot" ? `for ring seq=${String(ev.ring)}` : ev.type === "audit" ? `report ${String(ev.report)}` : ev.type;
      if (!o.quiet) say(`cloud ✔ verified ${ev.type} event seq=${ev.seq} (${about})`);
    } else if (e.verdict.ok && e.openssl) {
      verified++;
      const t0 = pressedAt.get(e.verdict.event.seq);
      const ms = t0 === undefined ? "" : ` ${(performance.now() - t0).toFixed(1)} ms after the press`;
      say(`cloud ✔ verified ${e.verdict.event.type} from ${e.verdict.event.thing} seq=${e.verdict.event.seq} boot=${e.verdict.event.boot} (tweetnacl ✔ OpenSSL ✔)${ms}`);
    } else if (e.duplicate) {
      say(`cloud · duplicate delivery of seq=${(e.verdict as { event?: { seq: number } }).event?.seq} ignored`);
    } else {
      rejected++;
      say(`cloud ✘ REJECTED: ${e.verdict.ok ? "OpenSSL disagreed" : `${e.verdict.reason}: ${e.verdict.detail}`}`);
    }
  });

  say(`doorbell ${identity.thing} boot=${firmware.doorbell.sequence.boot} device key ${toHex(identity.publicKey)} box key ${toHex(nacl.box.keyPair.fromSecretKey(deviceBoxSecretFromSeed(identity.signingSeed)).publicKey)} (secrets in its encrypted vault)`);
  let apps: Awaited<ReturnType<typeof connectApps>>;
  let viewer: Awaited<ReturnType<typeof attachSnapshotViewer>>;
  try {
    apps = await connectApps(o, service, firmware);
    viewer = await attachSnapshotViewer(
      cloud,
      { ...service, clientId: `${service.clientId}-sim-snapshots` },
      { viewer: { user: "owner", footageKey: apps.ownerFootageKey }, outDir: path.join(o.home, "snapshots"), say, pressedAt: (seq) => pressedAt.get(seq) },
    );
  } catch (e) {
    say(`cloud side could not join: ${(e as Error).message}`);
    await stopAll();
    return 1;
  }
  let snapshotsSaved = 0;
  viewer.onResult((r) => { if (r.ok) snapshotsSaved++; });

  const online = await new Promise<boolean>((resolve) => {
    const deadline = Date.now() + o.onlineTimeoutMs;
    const poll = setInterval(() => {
      if (firmware.doorbell.link.online || Date.now() > deadline) {
        clearInterval(poll);
        resolve(firmware.doorbell.link.online);
      }
    }, 20);
  });
  if (!online) {
    const st = firmware.doorbell.link.status();
    say(`device ${identity.thing} did not come online within ${o.onlineTimeoutMs / 1000} s at ${brokerName(target)}: ${st.cause ?? "no attempt yet"}: ${st.reason || "no reason given"}`);
    apps.close();
    await viewer.close?.();
    await stopAll();
    return 1;
  }
  for (let i = 0; i < o.rings; i++) {
    say(`button pressed${o.rings > 1 ? ` (${i + 1}/${o.rings})` : ""}`);
    button.press();
    await new Promise((r) => setTimeout(r, 300));
  }

  if (o.demoAccess) await apps.demo(say, () => button.press());
  if (o.demoUpdate) say("— update demo: a signed release through AWS IoT Jobs and streams, then a refused downgrade —");
  let updateOk = true;
  if (o.demoUpdate) {
    const result = await demoUpdate({ standin, broker: standin ? undefined : service, thing: identity.thing, home: o.home, board: SIM_BOARD, version: () => version, say });
    updateOk = result.updated && result.downgradeRefused;
    // Ring once more on the new firmware.
    const back = Date.now() + o.onlineTimeoutMs;
    while (!firmware.doorbell.link.online && Date.now() < back) await new Promise((r) => setTimeout(r, 20));
    if (!firmware.doorbell.link.online) say(`device did not come back online within ${o.onlineTimeoutMs / 1000} s after the update`);
    say("button pressed (on the updated firmware)");
    button.press();
  }

  const shutdown = async () => {
    await apps.close();
    await viewer.close?.();
    await stopAll();
  };

  /** What a rogue module inside the firmware would do: open a connection somewhere nobody chose. */
  const phoneHome = () => {
    try {
      egress.connectMqtt({ host: "audio-collector.example", port: 443, requester: "sim/phone-home" }, { clientId: identity.thing, ca: "", cert: "", key: "", keepaliveSeconds: 60, connectTimeoutMs: 1000 });
      say("egress ✘ phone-home was NOT refused");
    } catch (e) {
      say(`egress ✔ refused before DNS or a socket: ${(e as Error).message}; refused so far ${egress.guard.status().refused}; a signed audit event reports it to the owner`);
    }
  };
  if (o.demoEgress) phoneHome();

  if (o.exit) {
    const expected = o.rings + (o.demoAccess ? 2 : 0) + (o.demoUpdate ? 1 : 0);
    const deadline = Date.now() + 15_000;
    const expectedSnapshots = expected + apps.snapshotsRequested;
    while ((verified + rejected < expected || snapshotsSaved < expectedSnapshots) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    await shutdown();
    say(`${verified} of ${expected} rings verified end to end, ${rejected} rejected, ${snapshotsSaved} of ${expectedSnapshots} snapshots decrypted`);
    return verified === expected && rejected === 0 && snapshotsSaved === expectedSnapshots && updateOk ? 0 : 1;
  }

  const deviceBoxPublicKey = nacl.box.keyPair.fromSecretKey(deviceBoxSecretFromSeed(identity.signingSeed)).publicKey;
  const webApp = !standin ? undefined : await startWebApp({
    standin, home: o.home, thing: identity.thing, deviceSignPublicKey: identity.publicKey, deviceBoxPublicKey,
    handOver: async (owner) => {
      const r = await apps.handOver(owner);
      if (r.ok) {
        say("owner web app: the doorbell's owner keys are now the ones that browser made; the development owner (this terminal's a/v/r) no longer owns it, and its snapshot viewer stops");
        await viewer.close?.();
      }
      return r;
    },
  });
  if (webApp) {
    say(`owner web app: ${webApp.origin}/ (MQTT over WSS at ${webApp.wss.url}; the page is served with the dev server certificate: trust ${pki.ca.certPath} in the browser or accept the warning)`);
    say(`  take the doorbell over in a browser, once: ${webApp.setupUrl}`);
  } else {
    say("owner web app: not served with --broker (its WebSocket listener is the stand-in's)");
  }

  const server = http.createServer((req, res) => {
    if (req.method === "POST" && req.url === "/press") {
      button.press();
      res.writeHead(202).end("ring\n");
    } else if (req.method === "GET" && req.url === "/status") {
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ ...firmware.status(), version, verified, rejected }) + "\n");
    } else res.writeHead(404).end("POST /press or GET /status\n");
  });
  await new Promise<void>((resolve) => {
    server.once("error", (e: NodeJS.ErrnoException) => { say(`button endpoint not started (${e.code}); keyboard only`); resolve(); });
    server.listen(o.buttonPort, "127.0.0.1", () => {
      say(`button endpoint: curl -X POST http://127.0.0.1:${(server.address() as { port: number }).port}/press`);
      resolve();
    });
  });
  say(PROMPT_HELP);
  const rl = readline.createInterface({ input: process.stdin });
  await new Promise<void>((resolve) => {
    rl.on("line", (line) => {
      const cmd = line.trim();
      if (cmd === "") button.press();
      else if (cmd === "q") resolve();
      else if (cmd === "s") say(JSON.stringify({ ...firmware.status(), version, verified, rejected }));
      else if (cmd === "a") void apps.addGuest(say);
      else if (cmd === "v") void apps.guestCommand(say);
      else if (cmd === "r") void apps.revokeGuest(say);
      else if (cmd === "p") phoneHome();
      // Anything else is a typo or a question, not a visitor: it does not ring.
      else say(`${cmd === "h" || cmd === "help" || cmd === "?" ? "" : `"${cmd}" is not a key here (no ring). `}${PROMPT_HELP}`);
    });
    rl.on("close", resolve);
    process.once("SIGINT", resolve);
  });
  rl.close();
  server.close();
  await webApp?.close();
  await shutdown();
  return 0;
}

/** The local provisioning channel of the simulator: a bundle made by tools/provision.ts, fed once. */
async function provisionSimulatedDevice(o: SimOptions, say: (line: string) => void, why: string): Promise<void> {
  say(`provisioning ${o.thing} (${why}): dev certificate from the local CA, a random simulated Wi-Fi passphrase, a development owner`);
  const passphrase = new Uint8Array(18);
  hostRandom.fill(passphrase);
  const io = {
    out: (line: string) => { if (!o.quiet) say(`  provision ${line}`); },
    err: (line: string) => say(`  provision ${line}`),
    readStdin: async () => new TextEncoder().encode(toBase64Url(passphrase)),
    env: process.env,
  };
  // create's next-step hints are for a person; the simulator takes that step itself, right below.
  const createIo = { ...io, out: (line: string) => { if (/ \.\.\.$/.test(line) || /^bundle for /.test(line)) io.out(line); } };
  const bundle = path.join(o.home, "bundles", `${o.thing}.json`);
  // With a broker of the user's own, the bundle names it; its dev certificate must be trusted there (tools/mosquitto.ts does).
  const endpoint = o.broker ? ["--endpoint", `${o.broker.host}:${o.broker.port}`] : [];
  if ((await provisionCli(["create", "--home", o.home, "--thing", o.thing, "--wifi-ssid", "doorward-sim", "--wifi-password-stdin", ...endpoint, "--out", bundle, "--force"], createIo)) !== 0) throw new Error("provisioning: create failed");
  if ((await provisionCli(["feed", "--home", o.home, "--bundle", bundle], io)) !== 0) throw new Error("provisioning: feed failed");
}

/** The owner's phone and a guest's phone, talking to the device through the cloud relay. */
async function connectApps(o: SimOptions, service: BrokerSettings, firmware: RunningFirmware) {
  const { client } = await joinBroker(service, { suffix: "apps" });
  const thing = firmware.identity.thing;
  const link = new AppLink(client, thing);
  await link.start();
  const deviceBoxPublicKey = nacl.box.keyPair.fromSecretKey(deviceBoxSecretFromSeed(firmware.identity.signingSeed)).publicKey;
  const ownerDoc = JSON.parse(fs.readFileSync(path.join(o.home, "owner", "owner.secret.json"), "utf8")) as { signSeed: string; boxSecret: string };
  const ownerKeys: AppKeys = keysFromJson({ id: "owner", role: "owner", sign: ownerDoc.signSeed, box: ownerDoc.boxSecret });
  const owner = new OwnerApp({ keys: ownerKeys, thing, deviceBoxPublicKey, gen: firmware.access.generation });
  const guestKeys = createUserKeys("guest", "viewer");
  const guest = () => new UserApp({ keys: guestKeys, thing, deviceBoxPublicKey, gen: firmware.access.generation });
  const show = (who: string, what: string, r: { reply: { ok: boolean; reason?: string | null }; authenticated: boolean }) =>
    `${who}: ${what} → ${r.reply.ok ? "accepted" : `REFUSED (${r.reply.reason})`}${r.authenticated ? ", reply sealed by the device" : ""}`;
  const api = {
    ownerFootageKey: owner.footageKey,
    /** Accepted snapshot requests: each yields a snapshot beside the rings'. */
    snapshotsRequested: 0,
    async addGuest(say: (l: string) => void) {
      say("owner adds a shared viewer \"guest\" (owner-signed access list; the device checks the Ed25519 signature once)");
      const r = await link.request(owner, () => owner.addUser(guestKeys.identity), { timeoutMs: 30_000 });
      say(show("owner", "add guest", r));
    },
    async guestCommand(say: (l: string) => void) {
      const app = guest();
      const r = await link.request(app, () => app.command("snapshot"), { retryStale: false });
      say(show("guest", "request a snapshot", r));
      if (r.reply.ok) api.snapshotsRequested++;
    },
    /** Ownership moves only by signature: the current owner signs a list naming the new owner's keys. */
    async handOver(newOwner: AccessUser): Promise<HandOverResult> {
      const others = () => firmware.access.list.users().filter((u) => u.role !== "owner" && u.id !== newOwner.id);
      const r = await link.request(owner, () => owner.updateList([newOwner, ...others()]), { timeoutMs: 30_000 });
      // The old owner's reply key goes with the change, so its reply cannot be sealed for it: the simulator
      // reads the outcome off the device it runs instead.
      const took = bytesEqual(firmware.access.list.owner.signPublicKey, newOwner.signPublicKey);
      return { ok: r.reply.ok && took, reason: r.reply.reason ?? (took ? undefined : "the device kept its owner"), gen: firmware.access.generation, users: firmware.access.list.users() };
    },
    async revokeGuest(say: (l: string) => void) {
      const t0 = performance.now();
      const r = await link.request(owner, () => owner.revoke("guest"));
      say(`${show("owner", "revoke guest", r)} in ${(performance.now() - t0).toFixed(1)} ms round trip`);
    },
    async demo(say: (l: string) => void, ring: () => void) {
      say("— access demo: add a shared user, ring, revoke, ring again —");
      await api.addGuest(say);
      await api.guestCommand(say);
      // Let the requested snapshot finish: a ring during one gets no snapshot of its own (docs/camera.md).
      await new Promise((r) => setTimeout(r, 600));
      ring();
      await new Promise((r) => setTimeout(r, 300));
      await api.revokeGuest(say);
      await api.guestCommand(say);
      ring();
      await new Promise((r) => setTimeout(r, 300));
    },
    close(): Promise<void> {
      link.close();
      return closeClient(client);
    },
  };
  return api;
}

runAsEntry(import.meta.url, CLI, (args) => runSimulator(simOptions(args)));
