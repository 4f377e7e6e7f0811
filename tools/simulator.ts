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
 */
import http from "node:http";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";
import { Doorbell } from "../modules/core/doorbell";
import { createHostClock } from "../modules/host/clock";
import { hostRandom } from "../modules/host/random";
import { FileStore } from "../modules/host/file-store";
import { createHostLog } from "../modules/host/log";
import { HostMqttTransport } from "../modules/host/mqtt-transport";
import { SimulatedButton } from "../modules/host/button";
import { ensureDevPki, issueThingCredentials } from "./pki";
import { startStandin } from "./standin";
import { CloudConsumer } from "./cloud";
import { toHex } from "../modules/core/bytes";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

interface SimOptions {
  home: string;
  thing: string;
  rings: number;
  exit: boolean;
  buttonPort: number;
  quiet: boolean;
}

function parseArgs(argv: string[]): SimOptions {
  const o: SimOptions = {
    home: process.env.DOORWARD_HOME ?? path.join(REPO, ".doorward"),
    thing: process.env.DOORWARD_THING ?? "doorward-sim-1",
    rings: 1,
    exit: false,
    buttonPort: Number(process.env.DOORWARD_BUTTON_PORT ?? 8080),
    quiet: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === "--rings") o.rings = Number(value());
    else if (a === "--exit") o.exit = true;
    else if (a === "--home") o.home = path.resolve(value());
    else if (a === "--thing") o.thing = value();
    else if (a === "--button-port") o.buttonPort = Number(value());
    else if (a === "--quiet") o.quiet = true;
    else if (a === "--help" || a === "-h") {
      process.stdout.write("usage: npm start -- [--rings N] [--exit] [--home DIR] [--thing NAME] [--button-port PORT] [--quiet]\n");
      process.exit(0);
    } else throw new Error(`unknown option ${a} (try --help)`);
  }
  if (!Number.isInteger(o.rings) || o.rings < 0) throw new Error("--rings takes a whole number");
  return o;
}

export async function runSimulator(o: SimOptions): Promise<number> {
  const say = (line: string) => process.stdout.write(line + "\n");
  const pkiDir = path.join(o.home, "pki");
  const pki = await ensureDevPki(pkiDir);
  const creds = await issueThingCredentials(pkiDir, o.thing);
  const standin = await startStandin({ pki });
  say(`stand-in for AWS IoT Core on mqtts://127.0.0.1:${standin.port} (mutual TLS, dev CA in ${pkiDir})`);

  const store = new FileStore(path.join(o.home, "things", o.thing, "nvs"));
  // Development identity until provisioning lands: a seed the simulated device makes itself.
  let seed = store.read("id.seed");
  if (!seed) {
    seed = new Uint8Array(32);
    hostRandom.fill(seed);
    store.write("id.seed", seed);
  }
  const clock = createHostClock();
  const button = new SimulatedButton();
  const pressedAt = new Map<number, number>();
  const doorbell = new Doorbell({
    thing: o.thing,
    signingSeed: seed,
    clock,
    random: hostRandom,
    store,
    transport: new HostMqttTransport({ host: "127.0.0.1", port: standin.port, servername: "localhost", clientId: o.thing, ca: pki.ca.certPem, cert: creds.certPem, key: creds.keyPem }),
    button,
    log: createHostLog((line) => { if (!o.quiet) say(`  device ${line}`); }),
    onRing: (ring) => pressedAt.set(ring.seq, clock.monotonic()),
  });

  const cloud = new CloudConsumer();
  cloud.register(o.thing, doorbell.signer.publicKey);
  await cloud.connect({ host: "127.0.0.1", port: standin.port, servername: "localhost", clientId: `${pki.service.name}-sim`, ca: pki.ca.certPem, cert: pki.service.certPem, key: pki.service.keyPem });
  let verified = 0;
  let rejected = 0;
  cloud.onEvent((e) => {
    if (e.verdict.ok && e.openssl) {
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

  doorbell.start();
  say(`doorbell ${o.thing} boot=${doorbell.sequence.boot} device key ${toHex(doorbell.signer.publicKey)}`);

  const online = new Promise<void>((resolve) => {
    const poll = setInterval(() => { if (doorbell.link.online) { clearInterval(poll); resolve(); } }, 20);
  });
  await online;
  for (let i = 0; i < o.rings; i++) {
    say(`button pressed${o.rings > 1 ? ` (${i + 1}/${o.rings})` : ""}`);
    button.press();
    await new Promise((r) => setTimeout(r, 300));
  }

  const shutdown = async () => {
    doorbell.stop();
    await cloud.close();
    await standin.close();
  };

  if (o.exit) {
    const deadline = Date.now() + 15_000;
    while (verified + rejected < o.rings && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    await shutdown();
    say(`${verified} of ${o.rings} rings verified end to end, ${rejected} rejected`);
    return verified === o.rings && rejected === 0 ? 0 : 1;
  }

  const server = http.createServer((req, res) => {
    if (req.method === "POST" && req.url === "/press") {
      button.press();
      res.writeHead(202).end("ring\n");
    } else if (req.method === "GET" && req.url === "/status") {
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ ...doorbell.status(), verified, rejected }) + "\n");
    } else res.writeHead(404).end("POST /press or GET /status\n");
  });
  await new Promise<void>((resolve) => {
    server.once("error", (e: NodeJS.ErrnoException) => { say(`button endpoint not started (${e.code}); keyboard only`); resolve(); });
    server.listen(o.buttonPort, "127.0.0.1", () => { say(`button endpoint: curl -X POST http://127.0.0.1:${o.buttonPort}/press`); resolve(); });
  });
  say("press Enter to ring, type s + Enter for status, q + Enter to quit");
  const rl = readline.createInterface({ input: process.stdin });
  await new Promise<void>((resolve) => {
    rl.on("line", (line) => {
      const cmd = line.trim();
      if (cmd === "q") resolve();
      else if (cmd === "s") say(JSON.stringify({ ...doorbell.status(), verified, rejected }));
      else button.press();
    });
    rl.on("close", resolve);
    process.once("SIGINT", resolve);
  });
  rl.close();
  server.close();
  await shutdown();
  return 0;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  runSimulator(parseArgs(process.argv.slice(2))).then(
    (code) => process.exit(code),
    (e) => { process.stderr.write(`simulator: ${(e as Error).message}\n`); process.exit(1); },
  );
}
