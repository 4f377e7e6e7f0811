/*
 * A headless simulated doorbell, one process per device, for power-cut tests.
 *
 * It boots the same firmware assembly as tools/simulator.ts (vault → provisioning
 * → access → doorbell, host adapters, file-backed flash under --home) against a
 * broker already listening on 127.0.0.1:<port>, and is driven by stdin lines.
 * SIGKILL is its power cut: everything it keeps is in files written with the
 * store's atomic rename, so a new process over the same --home is the reboot.
 *
 *   node --import=tsx tools/sim-device.ts --home DIR --port N [--thing NAME] [--keepalive S]
 *
 * stdin, one command per line:
 *   ring      one bouncy button press through the debouncer (the real ring path)
 *   status    print the doorbell's status as one JSON line
 *   quit      stop cleanly and exit 0
 * stdout, one fact per line (other lines are the device's own log, prefixed "log "):
 *   ready thing=<name> boot=<n> key=<hex>    booted; the key is the device's Ed25519 public key
 *   recorded seq=<n> boot=<n> stored=<0|1>   a ring was sealed and, if stored=1, is in flash:
 *                                            from this line on it must reach the cloud
 *   acked seq=<n>                            the broker acknowledged that ring
 *   status {...}
 * Lines are written synchronously (stdout is a pipe), so a "recorded" line that
 * was printed describes a flash write that had completed.
 *
 * The first run provisions the device (development certificate from <home>/pki).
 */
import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { bootFirmware } from "../modules/core/firmware";
import type { DeviceIdentity } from "../modules/core/provisioning";
import { createHostClock } from "../modules/host/clock";
import { hostRandom } from "../modules/host/random";
import { FileStore } from "../modules/host/file-store";
import { openKeyFile } from "../modules/host/key-file";
import { createHostLog } from "../modules/host/log";
import { HostMqttTransport } from "../modules/host/mqtt-transport";
import { SimulatedButton } from "../modules/host/button";
import { toBase64Url, toHex } from "../modules/core/bytes";
import { ensureDevPki } from "./pki";
import { devicePaths, main as provisionCli } from "./provision";
import { intOption, parseCommandLine, runAsEntry, UserError, type Parsed } from "./lib/cli";
import { pemOf as pem } from "../modules/host/pem";

export interface SimDeviceArgs {
  home: string;
  thing: string;
  port: number;
  keepaliveSeconds: number;
}

const CLI = {
  name: "sim-device",
  usage: `usage: node --import=tsx tools/sim-device.ts --home DIR --port N [--thing NAME] [--keepalive S]

A headless simulated doorbell, one process per device, for the power-cut tests and the soak.
It connects to a broker already listening on 127.0.0.1:N and reads one command per line
on stdin (ring, status, quit); see the header of tools/sim-device.ts for what it prints.

  --home DIR       its flash (file-backed), provisioned on first run
  --port N         the broker's port on 127.0.0.1
  --thing NAME     the thing name (default doorward-sim-1)
  --keepalive S    MQTT keepalive in seconds, 1-1200 (default 60, AWS's bound is 1200)
  -h, --help       this text`,
  options: { home: { type: "string" }, port: { type: "string" }, thing: { type: "string" }, keepalive: { type: "string" } },
} as const;

/** The options of a parsed command line; throws UserError for a bad one. */
export function parseSimDeviceArgs(argv: string[]): SimDeviceArgs {
  const { values } = parseCommandLine(CLI, argv);
  return simDeviceArgs(values);
}

function simDeviceArgs(v: Parsed<typeof CLI.options>["values"]): SimDeviceArgs {
  if (!v.home) throw new UserError("--home is required (see --help)");
  if (v.port === undefined) throw new UserError("--port is required: the broker's port on 127.0.0.1");
  return {
    home: path.resolve(v.home),
    thing: v.thing ?? "doorward-sim-1",
    port: intOption("port", v.port, { min: 1, max: 65535 }),
    keepaliveSeconds: keepalive(v.keepalive),
  };
}

function keepalive(text: string | undefined): number {
  if (text === undefined) return 60;
  const n = Number(text);
  if (!/^\d+$/.test(text) || n < 1 || n > 1200) throw new UserError(`--keepalive must be 1-1200 s (AWS bound), got ${JSON.stringify(text)}`);
  return n;
}


/** First run: make a bundle with tools/provision.ts and feed it, as a maker would. */
export async function provisionIfNeeded(home: string, thing: string, say: (line: string) => void = () => {}): Promise<void> {
  const paths = devicePaths(home, thing);
  if (fs.existsSync(paths.vaultDir)) return;
  await ensureDevPki(path.join(home, "pki"));
  const passphrase = new Uint8Array(18);
  hostRandom.fill(passphrase);
  const io = {
    out: (line: string) => say(`provision ${line}`),
    err: (line: string) => say(`provision ${line}`),
    readStdin: async () => new TextEncoder().encode(toBase64Url(passphrase)),
    env: process.env,
  };
  const bundle = path.join(home, "bundles", `${thing}.json`);
  if ((await provisionCli(["create", "--home", home, "--thing", thing, "--wifi-ssid", "doorward-sim", "--wifi-password-stdin", "--out", bundle, "--force"], io)) !== 0) throw new Error("provisioning: create failed");
  if ((await provisionCli(["feed", "--home", home, "--bundle", bundle], io)) !== 0) throw new Error("provisioning: feed failed");
}

export async function runSimDevice(args: SimDeviceArgs): Promise<number> {
  const say = (line: string) => process.stdout.write(line + "\n");
  await provisionIfNeeded(args.home, args.thing, (l) => say(`log ${l}`));
  const paths = devicePaths(args.home, args.thing);
  const button = new SimulatedButton();
  const booted = bootFirmware({
    clock: createHostClock(),
    random: hostRandom,
    vaultStore: new FileStore(paths.vaultDir),
    store: new FileStore(paths.nvsDir),
    keys: openKeyFile(paths.keyFile, { warn: () => {} }),
    log: createHostLog((line) => say(`log ${line}`)),
    button,
    transport: (id: DeviceIdentity) => new HostMqttTransport({
      host: "127.0.0.1", port: args.port, servername: id.endpoint.host, clientId: id.thing, keepaliveSeconds: args.keepaliveSeconds,
      ca: pem("CERTIFICATE", id.tls.certificate), cert: pem("CERTIFICATE", id.tls.clientCertificates[0]), key: pem("PRIVATE KEY", id.tls.clientKey),
    }),
  });
  if (booted.state !== "running") {
    say(`failed ${booted.state}: ${booted.status.message}`);
    return 1;
  }
  const doorbell = booted.doorbell;
  const press = doorbell.press.bind(doorbell);
  doorbell.press = () => {
    const ring = press();
    say(`recorded seq=${ring.seq} boot=${ring.event.boot} stored=${ring.stored ? 1 : 0}`);
    void ring.acked.then(() => say(`acked seq=${ring.seq}`));
    return ring;
  };
  say(`ready thing=${booted.identity.thing} boot=${doorbell.sequence.boot} key=${toHex(booted.identity.publicKey)} restored=${doorbell.outbox.depth}`);

  const rl = readline.createInterface({ input: process.stdin });
  return await new Promise<number>((resolve) => {
    let done = false;
    const quit = () => {
      if (done) return;
      done = true;
      rl.close();
      booted.stop();
      resolve(0);
    };
    rl.on("line", (line) => {
      const cmd = line.trim();
      if (cmd === "ring") button.press({ bounces: 2, holdMs: 20 });
      else if (cmd === "status") say(`status ${JSON.stringify(doorbell.status())}`);
      else if (cmd === "quit") quit();
      else if (cmd) say(`log unknown command ${JSON.stringify(cmd)}`);
    });
    rl.on("close", quit);
  });
}

runAsEntry(import.meta.url, CLI, ({ values }) => runSimDevice(simDeviceArgs(values)));
