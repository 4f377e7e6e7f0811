/*
 * Proof on the wire, in the host simulation: the whole firmware (bootFirmware,
 * as tools/simulator.ts runs it) on the local stand-in over mutual TLS, with
 * the simulator's egress (manifest.json's development allowlist plus the
 * stand-in). Code inside the device then tries to reach a would-be phone-home
 * server on another loopback port, directly and through a transport of its
 * own: every attempt is refused, the phone-home listener receives zero
 * connections, the refusals reach the owner's backend as a signed audit event
 * (verified with tweetnacl and OpenSSL) and the firmware's status shows the
 * counts. The same device still rings. A production build of the same device
 * refuses to boot on its development trust store, before any connection.
 */
import test from "ava";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { bootFirmware, type RunningFirmware } from "../modules/core/firmware";
import { EgressConfigError, EgressGuard, EgressRefusedError, parseEgressConfig } from "../modules/core/egress";
import type { DeviceIdentity } from "../modules/core/provisioning";
import { createHostClock } from "../modules/host/clock";
import { HostEgress, simulatorEgress } from "../modules/host/egress";
import { FileStore } from "../modules/host/file-store";
import { openKeyFile } from "../modules/host/key-file";
import { HostMqttTransport } from "../modules/host/mqtt-transport";
import { hostRandom } from "../modules/host/random";
import { CloudConsumer } from "../tools/cloud";
import { ensureDevPki, type DevPki } from "../tools/pki";
import { devicePaths, main as provisionCli } from "../tools/provision";
import { startStandin, type Standin } from "../tools/standin";
import { pemOf as pem } from "../modules/host/pem";

const THING = "egress-wire-1";
let home: string;
let pki: DevPki;
let standin: Standin;
let cloud: CloudConsumer;
let phoneHome: net.Server;
let phonePort: number;
let phoneConnections = 0;

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function until(predicate: () => boolean, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > end) throw new Error("timed out");
    await pause(10);
  }
}

test.before(async () => {
  home = fs.mkdtempSync(path.join(os.tmpdir(), "dw-egress-wire-"));
  pki = await ensureDevPki(path.join(home, "pki"));
  standin = await startStandin({ pki, connectIntervalMs: 0 });
  // The device's first run: a bundle from the local CA, fed over its local channel (as the simulator does).
  const io = { out: () => {}, err: () => {}, readStdin: async () => new TextEncoder().encode("correct-horse-battery"), env: process.env };
  const bundle = path.join(home, "bundles", `${THING}.json`);
  if ((await provisionCli(["create", "--home", home, "--thing", THING, "--wifi-ssid", "doorward-sim", "--wifi-password-stdin", "--out", bundle, "--force"], io)) !== 0) throw new Error("create failed");
  if ((await provisionCli(["feed", "--home", home, "--bundle", bundle], io)) !== 0) throw new Error("feed failed");
  phoneHome = net.createServer((socket) => {
    phoneConnections++;
    socket.destroy();
  });
  await new Promise<void>((resolve) => phoneHome.listen(0, "127.0.0.1", resolve));
  phonePort = (phoneHome.address() as net.AddressInfo).port;
  cloud = new CloudConsumer();
  await cloud.connect({ host: "127.0.0.1", port: standin.port, servername: "localhost", clientId: `${pki.service.name}-egress`, ca: pki.ca.certPem, cert: pki.service.certPem, key: pki.service.keyPem });
});

test.after.always(async () => {
  await cloud?.close();
  await standin?.close();
  await new Promise((resolve) => phoneHome?.close(resolve));
});

function boot(guard: EgressGuard, egress: HostEgress | undefined, built: string[] = []) {
  const paths = devicePaths(home, THING);
  return bootFirmware({
    clock: createHostClock(),
    random: hostRandom,
    vaultStore: new FileStore(paths.vaultDir),
    store: new FileStore(paths.nvsDir),
    keys: openKeyFile(paths.keyFile, { warn: () => {} }),
    log: () => {},
    egress: guard,
    transport: (id: DeviceIdentity, g) => {
      built.push(id.thing);
      if (g !== guard || !egress) throw new Error("the firmware must hand its transport the same guard");
      return new HostMqttTransport({
        host: "127.0.0.1", port: standin.port, servername: id.endpoint.host, clientId: id.thing, egress,
        ca: pem("CERTIFICATE", id.tls.certificate), cert: pem("CERTIFICATE", id.tls.clientCertificates[0]), key: pem("PRIVATE KEY", id.tls.clientKey),
      });
    },
  });
}

test.serial("code inside the simulated device cannot reach a phone-home listener; the owner gets a signed report; the bell still rings", async (t) => {
  const egress = simulatorEgress({ standinPort: standin.port });
  const booted = boot(egress.guard, egress);
  t.is(booted.state, "running");
  const firmware = booted as RunningFirmware;
  cloud.register(THING, firmware.identity.publicKey);
  await until(() => firmware.doorbell.link.online);
  const connectedBefore = standin.stats.connectionsAccepted;

  // 1. A rogue module using the device's own way out, with several spellings of the phone-home address.
  const session = { clientId: THING, ca: pki.ca.certPem, cert: pki.service.certPem, key: pki.service.keyPem, keepaliveSeconds: 60, connectTimeoutMs: 2000 };
  for (const host of ["127.0.0.1", "127.1", "2130706433", "localhost", "::ffff:127.0.0.1"]) {
    t.throws(() => egress.connectMqtt({ host, port: phonePort, requester: "device/rogue" }, session), { instanceOf: EgressRefusedError }, host);
  }
  // 2. A transport of its own towards the phone-home server, retried by a Link-like loop.
  const exfil = new HostMqttTransport({ host: "127.0.0.1", port: phonePort, clientId: THING, ca: pki.ca.certPem, cert: pki.service.certPem, key: pki.service.keyPem, egress });
  for (let i = 0; i < 3; i++) {
    const reason = await new Promise<string>((resolve) => exfil.connect({ onConnect: () => resolve("connected?!"), onMessage: () => {}, onClose: resolve }));
    t.regex(reason, /refused \(wrong-port\)/);
  }

  // The refusals arrive at the owner's backend as a signed audit event from this device.
  const got = await cloud.waitFor((e) => e.verdict.ok && e.verdict.event.thing === THING && e.verdict.event.type === "audit" && e.verdict.event.report === "egress-refused", 15_000);
  t.true(got.verdict.ok);
  t.true(got.openssl, "OpenSSL verifies the report's signature too");
  const event = (got.verdict as { event: Record<string, any> }).event;
  const rows = event.refused as Array<{ destination: string; requester: string; reason: string; count: number }>;
  t.true(rows.some((r) => r.destination === `127.0.0.1:${phonePort}` && r.requester === "device/rogue"), JSON.stringify(rows));
  t.true(rows.every((r) => r.count >= 1));
  t.true(event.total >= 1);

  // The status view shows the counts.
  await until(() => firmware.status().egress?.refused === 8);
  const status = firmware.status().egress!;
  t.is(status.refused, 8);
  t.true(status.reportsSent >= 1);
  t.true(status.allowed >= 1, "the stand-in itself was allowed");
  const count = (destination: string, requester: string) => status.top.find((r) => r.destination === destination && r.requester === requester)?.count;
  t.is(count(`127.0.0.1:${phonePort}`, "host/mqtt-transport"), 3);
  t.is(count(`127.0.0.1:${phonePort}`, "device/rogue"), 1);
  t.is(count(`2130706433:${phonePort}`, "device/rogue"), 1);

  // The bell still works on the allowed path.
  const ring = firmware.doorbell.press();
  const verified = await cloud.waitFor((e) => e.verdict.ok && e.verdict.event.thing === THING && e.verdict.event.seq === ring.seq);
  t.true(verified.openssl);

  await pause(500);
  t.is(phoneConnections, 0, "the would-be phone-home server received zero connections");
  t.is(standin.stats.connectionsAccepted, connectedBefore, "and nothing reconnected anywhere else");
  firmware.stop();
});

test.serial("control: allowlist the phone-home port and the same listener sees the connection", async (t) => {
  const base = simulatorEgress({ standinPort: phonePort });
  const before = phoneConnections;
  const client = base.connectMqtt({ host: "127.0.0.1", port: phonePort, requester: "test/control" }, { clientId: THING, ca: pki.ca.certPem, cert: pki.service.certPem, key: pki.service.keyPem, keepaliveSeconds: 60, connectTimeoutMs: 2000 });
  client.on("error", () => {});
  await until(() => phoneConnections > before, 5000);
  client.end(true);
  t.is(phoneConnections - before, 1);
});

test.serial("a production build of the same device refuses to start on its development trust store, before any transport exists", async (t) => {
  const production = new EgressGuard(parseEgressConfig({
    broker: "abc123xyz-ats.iot.eu-west-1.amazonaws.com",
    doorward: { egress: { profile: "production", allow: [{ host: "<prefix>-ats.iot.<region>.amazonaws.com", port: 8883, purpose: "mqtt" }, { host: "time.aws.com", port: 123, purpose: "ntp" }] } },
  }));
  const built: string[] = [];
  const accepted = standin.stats.connectionsAccepted;
  const tls = standin.stats.tlsRefused;
  t.throws(() => boot(production, undefined, built), { instanceOf: EgressConfigError, message: /not Amazon Root CA 1 or 3/ });
  t.deepEqual(built, [], "no transport was built");
  await pause(200);
  t.is(standin.stats.connectionsAccepted, accepted);
  t.is(standin.stats.tlsRefused, tls);
  // And the development entries themselves can never make it into a production guard.
  t.throws(() => parseEgressConfig({
    broker: "abc123xyz-ats.iot.eu-west-1.amazonaws.com",
    doorward: { egress: { profile: "production", allow: [{ host: "<prefix>-ats.iot.<region>.amazonaws.com", port: 8883, purpose: "mqtt" }, { host: "time.aws.com", port: 123, purpose: "ntp" }], development: [{ host: "127.0.0.1", port: standin.port, purpose: "mqtt" }] } },
  }), { instanceOf: EgressConfigError, message: /development/ });
});
