/*
 * Nothing the device (or the provisioning tool) prints contains a secret.
 *
 * Everything is captured: the provisioning CLI's output and errors (create
 * and feed, including the device's own log and the key-file warning), the
 * vault opening at the next boot, a mutual-TLS connect to the local stand-in
 * with the identity read back from the vault, and three rings acknowledged by
 * the broker. The capture is then searched for any 8-byte fragment of the
 * SSID, passphrase, device seed, client key, client certificate and CA, raw,
 * in hex and in base64/base64url at every alignment. The thing name is public
 * and is allowed where it also appears inside the certificate.
 */
import test from "ava";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Doorbell } from "../modules/core/doorbell";
import { createHostClock } from "../modules/host/clock";
import { hostRandom } from "../modules/host/random";
import { MemoryStore } from "../modules/host/file-store";
import { createHostLog } from "../modules/host/log";
import { HostMqttTransport } from "../modules/host/mqtt-transport";
import { toHex, utf8Encode } from "../modules/core/bytes";
import { ensureDevPki, issueThingCredentials } from "../tools/pki";
import { startStandin } from "../tools/standin";
import { main, openSimulatedDevice, type CliIo } from "../tools/provision";
import { findLeaks, type SecretSample } from "./vault-support";
import { pemOf } from "../modules/host/pem";

const THING = "doorward-log-test";
const SSID = "Flat-4B-Guest-Network";
const PASSWORD = "correct horse battery staple";

const pem = (der: Uint8Array, label: string): string => pemOf(label, der);

test("no secret or 8-byte fragment of one appears in anything printed during provisioning, boot, connect and rings", async (t) => {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), "dw-logs-"));
  const captured: string[] = [];
  const capture = (source: string) => (line: string) => captured.push(`${source}: ${line}`);
  const pki = await ensureDevPki(path.join(home, "pki"));
  const passwordFile = path.join(home, "wifi.txt");
  fs.writeFileSync(passwordFile, PASSWORD + "\n", { mode: 0o600 });

  // Provisioning over the simulator's channel, every line of output captured.
  const io: CliIo = { out: capture("cli"), err: capture("cli-err"), readStdin: async () => new Uint8Array(0), env: {} };
  t.is(await main(["create", "--home", home, "--thing", THING, "--wifi-ssid", SSID, "--wifi-password-file", passwordFile], io), 0, captured.join("\n"));
  t.is(await main(["feed", "--home", home, "--bundle", path.join(home, "bundles", `${THING}.json`)], io), 0, captured.join("\n"));

  // The next boot: open the vault, read the identity, connect, ring.
  const log = createHostLog(capture("device"), "debug");
  const device = openSimulatedDevice({ home, thing: THING, log, warn: capture("device-warn") });
  t.true(device.provisioning.status().provisioned);
  const id = device.provisioning.identity();
  const standin = await startStandin({ pki, connectIntervalMs: 0, log: capture("broker") });
  t.teardown(() => standin.close());
  const doorbell = new Doorbell({
    thing: id.thing,
    signingSeed: id.signingSeed,
    clock: createHostClock(),
    random: hostRandom,
    store: new MemoryStore(),
    transport: new HostMqttTransport({
      host: "127.0.0.1",
      port: standin.port,
      servername: id.endpoint.host,
      clientId: id.thing,
      ca: pem(id.tls.certificate, "CERTIFICATE"),
      cert: pem(id.tls.clientCertificates[0], "CERTIFICATE"),
      key: pem(id.tls.clientKey, "PRIVATE KEY"),
    }),
    log,
    noncePoolSize: 2,
  });
  t.teardown(() => doorbell.stop());
  doorbell.start();
  const deadline = Date.now() + 15_000;
  while (!doorbell.link.online && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.true(doorbell.link.online, "connected to the stand-in with the identity from the vault");
  const rings = [doorbell.press(), doorbell.press(), doorbell.press()];
  await Promise.race([Promise.all(rings.map((r) => r.acked)), new Promise((_, reject) => setTimeout(() => reject(new Error("rings not acknowledged within 15 s")), 15_000))]);
  doorbell.stop();
  t.is(toHex(doorbell.signer.publicKey), toHex(id.publicKey));

  // What was captured is real: provisioning, vault, connect and rings all logged something.
  const text = captured.join("\n");
  for (const expected of [/cli: .*provisioned/, /device: \[info\] vault open secrets=11 damaged=0/, /device-warn: .*DEVELOPMENT ONLY/, /device: \[info\] link online/, /device: \[info\] ring seq=3/]) {
    t.regex(text, expected);
  }

  const creds = await issueThingCredentials(path.join(home, "pki"), THING);
  t.is(toHex(creds.keyDer), toHex(id.tls.clientKey), "the stored key is the issued one");
  const secrets: SecretSample[] = [
    { label: "Wi-Fi SSID", bytes: utf8Encode(SSID) },
    { label: "Wi-Fi passphrase", bytes: utf8Encode(PASSWORD) },
    { label: "device seed", bytes: id.signingSeed },
    { label: "client key", bytes: id.tls.clientKey },
    { label: "client certificate", bytes: id.tls.clientCertificates[0] },
    { label: "CA certificate", bytes: id.tls.certificate },
  ];
  const leaks = findLeaks(text, secrets, [utf8Encode(THING)]);
  t.deepEqual(leaks, [], leaks.join("\n"));
  if (process.env.DW_SHOW_LOG) t.log(text);
  t.log(`${captured.length} lines (${text.length} characters) captured across provisioning, boot, connect and ${rings.length} rings: no fragment of ${secrets.length} secrets`);

  // The same search finds a leak when there is one.
  const leaky = `${text}\ndevice: [debug] seed=${toHex(id.signingSeed.subarray(10, 18))}`;
  t.deepEqual(findLeaks(leaky, secrets, [utf8Encode(THING)]), ["device seed: hex of bytes 10..18"]);
});
