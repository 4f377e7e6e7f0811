/*
 * Eclipse Mosquitto configured the way AWS IoT Core behaves for Doorward, so a
 * broker the user already runs can be checked against the same rules as the
 * stand-in: mutual TLS against one CA, the certificate's CN as the identity
 * (use_identity_as_username), a per-thing ACL confining each thing to
 * doorward/<itself>/... and its own $aws/things/<itself>/{jobs,streams}/...
 * and named shadow doorward-acl,
 * the service identity fanning in events, snapshots and replies and sending
 * commands, a 128 KB payload limit and QoS 1 at most.
 *
 * Mosquitto cannot require client ID = CN as AWS does; the ACL keys on the
 * certificate instead, so a thing still reaches only its own topics. An
 * unauthorised PUBLISH is dropped silently (AWS closes the connection) and an
 * unauthorised SUBSCRIBE gets SUBACK 0x80.
 *
 *   npx tsx tools/mosquitto.ts config --port 8883 --out mosquitto.d   write doorward.conf + ACL for the dev PKI
 *   npx tsx tools/mosquitto.ts run [--port N]                          run it in the foreground (Ctrl-C stops)
 */
import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { ensureDevPki, SERVICE_NAME, type DevPki } from "./pki";
import { MAX_PAYLOAD_BYTES } from "./standin";
import { portOption, processIo, runAsEntry, UserError } from "./lib/cli";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

/** Where Debian installs it; PATH is tried first. */
const CANDIDATES = ["mosquitto", "/usr/sbin/mosquitto"];

export interface MosquittoConfigOptions {
  port: number;
  /** PEM files: the CA clients and the broker chain to, and the broker's own certificate and key. */
  caFile: string;
  certFile: string;
  keyFile: string;
  /** The service identity's certificate CN. Default doorward-cloud. */
  serviceName?: string;
  /** Directory for the ACL file; the config names it by absolute path. */
  dir: string;
  /** Log every connect and disconnect (default true: tests read it). */
  logConnections?: boolean;
}

/** The ACL: one pattern block for every identity (%u is the certificate CN), then the service's fan-in. */
export function mosquittoAcl(serviceName = SERVICE_NAME): string {
  return [
    "# Every identity: its own doorward/<cn>/... subtree, its own Jobs and streams topics and its access-anchor shadow.",
    "pattern readwrite doorward/%u/#",
    "pattern readwrite $aws/things/%u/jobs/#",
    "pattern readwrite $aws/things/%u/streams/#",
    "pattern readwrite $aws/things/%u/shadow/name/doorward-acl/#",
    "",
    `# The cloud service: every thing's events, snapshots and replies in; commands out; plays Jobs, streams and shadows.`,
    `user ${serviceName}`,
    "topic read doorward/+/events",
    "topic read doorward/+/snapshots",
    "topic read doorward/+/replies",
    "topic write doorward/+/commands",
    "topic readwrite $aws/things/+/jobs/#",
    "topic readwrite $aws/things/+/streams/#",
    "topic readwrite $aws/things/+/shadow/name/+/#",
    "",
  ].join("\n");
}

export function mosquittoConfig(o: MosquittoConfigOptions): string {
  const acl = path.join(o.dir, "doorward.acl");
  return [
    "# Doorward: AWS IoT Core's rules on Mosquitto 2.",
    "per_listener_settings false",
    "# Run as whoever started it: the dev PKI's keys are readable by that user only.",
    `user ${os.userInfo().username}`,
    "persistence false",
    `listener ${o.port} 127.0.0.1`,
    "protocol mqtt",
    `cafile ${o.caFile}`,
    `certfile ${o.certFile}`,
    `keyfile ${o.keyFile}`,
    "tls_version tlsv1.2",
    "require_certificate true",
    "use_identity_as_username true",
    "allow_anonymous false",
    `acl_file ${acl}`,
    // AWS limits the payload; max_packet_size counts the whole packet, so allow the topic and header on top.
    `max_packet_size ${MAX_PAYLOAD_BYTES + 1024}`,
    "max_qos 1",
    "allow_zero_length_clientid false",
    "log_dest stderr",
    "log_type error",
    "log_type warning",
    "log_type notice",
    "log_type debug",
    ...(o.logConnections === false ? [] : ["log_type information", "connection_messages true"]),
    "",
  ].join("\n");
}

/** Write doorward.conf and doorward.acl into dir for the dev PKI; returns the config path. */
export function writeMosquittoConfig(pki: DevPki, dir: string, port: number, options: { logConnections?: boolean } = {}): string {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const conf = path.join(dir, "doorward.conf");
  fs.writeFileSync(path.join(dir, "doorward.acl"), mosquittoAcl(pki.service.name));
  fs.writeFileSync(conf, mosquittoConfig({ port, caFile: pki.ca.certPath, certFile: pki.server.certPath, keyFile: pki.server.keyPath, dir, serviceName: pki.service.name, ...options }));
  return conf;
}

export function mosquittoExecutable(): string | undefined {
  for (const c of CANDIDATES) {
    if (c.includes("/")) {
      if (fs.existsSync(c)) return c;
      continue;
    }
    for (const dir of (process.env.PATH ?? "").split(path.delimiter)) {
      const p = path.join(dir, c);
      if (dir && fs.existsSync(p)) return p;
    }
  }
  return undefined;
}

export interface RunningMosquitto {
  host: string;
  port: number;
  /** Everything the broker logged so far. */
  log(): string;
  /** Resolves once a line matching re has been logged (or rejects after timeoutMs, quoting the log). */
  waitForLog(re: RegExp, timeoutMs?: number): Promise<string>;
  stop(): Promise<void>;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/**
 * Start mosquitto on a free loopback port with the dev PKI and the AWS-like
 * configuration. Resolves once it listens; rejects with its log if it exits or
 * does not start within timeoutMs.
 */
export async function startMosquitto(pki: DevPki, options: { dir?: string; port?: number; timeoutMs?: number } = {}): Promise<RunningMosquitto> {
  const exe = mosquittoExecutable();
  if (!exe) throw new Error("mosquitto is not installed (Debian: apt-get install mosquitto)");
  const dir = options.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), "doorward-mosquitto-"));
  const timeoutMs = options.timeoutMs ?? 10_000;
  // Another process may take the port between the probe and mosquitto's bind: try a few.
  for (let attempt = 0; ; attempt++) {
    const port = options.port ?? (await freePort());
    const conf = writeMosquittoConfig(pki, dir, port);
    const child = spawn(exe, ["-c", conf], { stdio: ["ignore", "ignore", "pipe"] });
    let text = "";
    const waiters = new Set<() => void>();
    child.stderr!.setEncoding("utf8");
    child.stderr!.on("data", (d: string) => {
      text += d;
      for (const w of [...waiters]) w();
    });
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    const waitForLog = (re: RegExp, ms = timeoutMs) =>
      new Promise<string>((resolve, reject) => {
        const check = () => {
          const m = re.exec(text);
          if (!m) return false;
          waiters.delete(check);
          clearTimeout(timer);
          resolve(m[0]);
          return true;
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`mosquitto did not log ${re} within ${ms} ms; its log:\n${text}`));
        }, ms);
        waiters.add(check);
        check();
      });
    const started = await Promise.race([
      waitForLog(/Opening ipv4 listen socket on port \d+/).then(() => true, () => false),
      exited.then(() => false),
    ]);
    if (started) return running(child, port, () => text, waitForLog, exited);
    child.kill("SIGKILL");
    await exited;
    if (attempt >= 3 || options.port !== undefined || !/Address already in use/.test(text)) {
      throw new Error(`mosquitto did not start on port ${port}: ${text.trim() || "no output"}`);
    }
  }
}

function running(child: ChildProcess, port: number, log: () => string, waitForLog: RunningMosquitto["waitForLog"], exited: Promise<number | null>): RunningMosquitto {
  return {
    host: "127.0.0.1",
    port,
    log,
    waitForLog,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      const late = setTimeout(() => child.kill("SIGKILL"), 3000);
      await exited;
      clearTimeout(late);
    },
  };
}

const CLI = {
  name: "mosquitto",
  usage: `usage: npx tsx tools/mosquitto.ts config [--port N] [--out DIR] [--home DIR]
       npx tsx tools/mosquitto.ts run [--port N] [--home DIR]

Mosquitto 2 with AWS IoT Core's rules for the development PKI (.doorward/pki):
mutual TLS, the certificate's CN as identity, a per-thing ACL, a 128 KB limit, QoS 1.

  config         write doorward.conf and doorward.acl (default into <home>/mosquitto)
  run            run mosquitto on 127.0.0.1 in the foreground and print the npm start line; Ctrl-C stops
  --port N       the listener's port (config: default 8883; run: default any free port)
  --out DIR      where config writes
  --home DIR     the Doorward home holding pki/ (default .doorward, or DOORWARD_HOME)
  -h, --help     this text`,
  options: { port: { type: "string" }, out: { type: "string" }, home: { type: "string" } },
  positionals: { min: 1, max: 1 },
} as const;

runAsEntry(import.meta.url, CLI, async ({ values, positionals }) => {
  const [cmd] = positionals;
  if (cmd !== "config" && cmd !== "run") throw new UserError(`unknown command ${JSON.stringify(cmd)}: config or run (see --help)`);
  const home = path.resolve(values.home ?? process.env.DOORWARD_HOME ?? path.join(REPO, ".doorward"));
  const port = values.port === undefined ? undefined : portOption("port", values.port);
  const pki = await ensureDevPki(path.join(home, "pki"));
  if (cmd === "config") {
    const conf = writeMosquittoConfig(pki, path.resolve(values.out ?? path.join(home, "mosquitto")), port || 8883);
    processIo.out(`${conf}\nrun: mosquitto -c ${conf}`);
    return 0;
  }
  const m = await startMosquitto(pki, { port: port || undefined, dir: path.join(home, "mosquitto") });
  processIo.out(`mosquitto on mqtts://${m.host}:${m.port} (dev CA in ${pki.dir}); Ctrl-C stops`);
  processIo.out(`npm start -- --broker ${m.host}:${m.port} --broker-ca ${pki.ca.certPath} --broker-cert ${pki.service.certPath} --broker-key ${pki.service.keyPath}`);
  await new Promise<void>((resolve) => process.once("SIGINT", () => resolve()));
  await m.stop();
  return 0;
});
