/*
 * The stand-in acknowledges a publish only after it has routed it: killed between the
 * moment a ring reaches it and the PUBACK, it has acknowledged nothing, so the device
 * keeps the ring and sends it again to the broker that comes back. (aedes on its own
 * writes a QoS 1 PUBACK before it delivers, and a crash there lost a ring the device
 * had seen acknowledged.)
 */
import test from "ava";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Doorbell } from "../modules/core/doorbell";
import { openEnvelope } from "../modules/core/events";
import { createHostClock } from "../modules/host/clock";
import { hostRandom } from "../modules/host/random";
import { FileStore } from "../modules/host/file-store";
import { HostMqttTransport } from "../modules/host/mqtt-transport";
import { ensureDevPki, issueThingCredentials } from "../tools/pki";
import { startStandin, type Standin, type StandinMessage } from "../tools/standin";

const THING = "ack-porch";
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function until(predicate: () => boolean, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > end) return false;
    await sleep(20);
  }
  return true;
}

test("a stand-in killed after a ring reached it but before its PUBACK loses nothing: the device sends the ring again", async (t) => {
  t.timeout(90_000);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dw-ack-"));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const pki = await ensureDevPki(path.join(dir, "pki"));
  const creds = await issueThingCredentials(path.join(dir, "pki"), THING);
  const ringsOf = (list: StandinMessage[]) => list.filter((m) => m.topic.endsWith("/events")).map((m) => openEnvelope(new Uint8Array(m.payload)).event.seq);

  // The first broker routes the first ring nowhere (its route never finishes) and is killed 50 ms after the ring reached it.
  const first: StandinMessage[] = [];
  let killed: Promise<void> | undefined;
  let crashed: Standin | undefined;
  const a = await startStandin({ pki, connectIntervalMs: 0, route: () => new Promise<void>(() => {}) });
  a.on("message", (m) => {
    first.push(m);
    if (!killed && m.topic.endsWith("/events")) killed = sleep(50).then(() => a.close()).then(() => void (crashed = a));
  });
  const port = a.port;
  const doorbell = new Doorbell({
    thing: THING, signingSeed: new Uint8Array(32).fill(8), clock: createHostClock(), random: hostRandom, store: new FileStore(path.join(dir, "nvs")),
    transport: new HostMqttTransport({ host: "127.0.0.1", port, servername: "localhost", clientId: THING, ca: pki.ca.certPem, cert: creds.certPem, key: creds.keyPem }),
    log: () => {},
  });
  doorbell.start();
  t.true(await until(() => doorbell.link.online, 20_000), "online");
  let acked = false;
  const ring = doorbell.press();
  void ring.acked.then(() => (acked = true));
  t.true(await until(() => crashed !== undefined, 10_000), "the broker was killed inside the window");
  t.deepEqual(ringsOf(first), [ring.seq], "the ring had reached the first broker");

  const second: StandinMessage[] = [];
  let b: Standin | undefined;
  for (let i = 0; i < 50 && !b; i++) {
    try {
      b = await startStandin({ pki, port, connectIntervalMs: 0 });
    } catch {
      await sleep(100);
    }
  }
  t.teardown(async () => {
    doorbell.stop();
    await b?.close();
  });
  b!.on("message", (m) => second.push(m));
  const resent = await until(() => ringsOf(second).includes(ring.seq), 60_000);
  t.true(resent, `the ring was sent again to the broker that came back (acknowledged before the kill: ${acked})`);
  t.true(await until(() => acked, 10_000), "and acknowledged by it");
  t.is(doorbell.outbox.depth, 0);
});
