/*
 * Updates end to end on real parts: the stand-in broker over mutual TLS on
 * loopback, the unchanged Doorbell with the update agent plugged in through
 * its public options (subscriptions, onMessage, send), the Jobs/streams
 * service playing AWS inside the broker, and the simulated flash. Covers the
 * wiring the simulator uses (demoUpdate: update, then a refused downgrade)
 * and measures update throughput for a 1 MB image.
 */
import test from "ava";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Doorbell } from "../modules/core/doorbell";
import { createHostClock } from "../modules/host/clock";
import { hostRandom } from "../modules/host/random";
import { TEST_RECORD_TAG } from "./update-support";
import { FileStore } from "../modules/host/file-store";
import { HostMqttTransport } from "../modules/host/mqtt-transport";
import { hostSha256, openSimFirmware, type HostSlots } from "../modules/host/update-sink";
import { UpdateAgent, updateSubscriptions, type UpdateAgentOptions, type UpdateEvent } from "../modules/core/update";
import type { TrustedKeys } from "../modules/core/release";
import { ensureDevPki, issueThingCredentials, type DevPki, type IssuedCredentials } from "../tools/pki";
import { startStandin, type Standin } from "../tools/standin";
import { UpdateService, demoUpdate, firmwareJobDocument } from "../tools/update-service";
import { builtInKeys, ensureDevReleaseKey, signImage } from "../tools/release";
import { makeSimImage } from "../modules/host/update-sink";

const THING = "upd-e2e";
const BOARD = "host/sim";
let pki: DevPki;
let creds: IssuedCredentials;
let standin: Standin;
let home: string;

test.before(async () => {
  home = fs.mkdtempSync(path.join(os.tmpdir(), "dw-upd-e2e-"));
  pki = await ensureDevPki(path.join(home, "pki"));
  creds = await issueThingCredentials(pki.dir, THING);
  standin = await startStandin({ pki, connectIntervalMs: 0 });
});

test.after.always(async () => {
  await standin?.close();
});

/**
 * The simulated device as the simulator should wire it: on every (re)start,
 * open the flash, read the booted image's version, build Doorbell + agent.
 */
class SimDevice {
  doorbell: Doorbell | undefined;
  agent: UpdateAgent | undefined;
  slots: HostSlots | undefined;
  version = 0;
  boots: number[] = [];
  events: UpdateEvent[] = [];
  #dir: string;
  #keys: TrustedKeys;
  #agentOptions: Partial<UpdateAgentOptions>;

  constructor(dir: string, keys: TrustedKeys, agentOptions: Partial<UpdateAgentOptions> = {}) {
    this.#dir = dir;
    this.#keys = keys;
    this.#agentOptions = agentOptions;
  }

  boot(): void {
    const fw = openSimFirmware(path.join(this.#dir, "flash"), { board: BOARD, factoryVersion: 1 });
    this.slots = fw.slots;
    this.version = fw.info.version;
    this.boots.push(fw.info.version);
    const store = new FileStore(path.join(this.#dir, "nvs"));
    const clock = createHostClock();
    const log = () => {};
    let doorbell!: Doorbell;
    const agent = new UpdateAgent({
      thing: THING,
      board: BOARD,
      runningVersion: fw.info.version,
      releaseKeys: this.#keys,
      store,
      recordTag: TEST_RECORD_TAG,
      sink: fw.slots,
      boot: fw.slots,
      clock,
      log,
      createDigest: hostSha256,
      publish: (topic, payload) => doorbell.send(topic, payload, 0),
      healthCheck: () => fw.info.healthy && doorbell.link.online,
      maxImageBytes: fw.slots.capacity,
      restartDelayMs: 50,
      onEvent: (e) => this.events.push(e),
      ...this.#agentOptions,
    });
    doorbell = new Doorbell({
      thing: THING,
      signingSeed: new Uint8Array(32).fill(9),
      clock,
      random: hostRandom,
      store,
      transport: new HostMqttTransport({ host: "127.0.0.1", port: standin.port, servername: "localhost", clientId: THING, ca: pki.ca.certPem, cert: creds.certPem, key: creds.keyPem }),
      log,
      noncePoolSize: 1,
      subscriptions: updateSubscriptions(THING),
      onMessage: (topic, payload) => {
        if (agent.handles(topic)) agent.onMessage(topic, payload);
      },
    });
    fw.slots.onRestart = () => {
      // The device restarts: everything in RAM goes; flash stays.
      agent.stop();
      doorbell.stop();
      setTimeout(() => this.boot(), 20);
    };
    this.agent = agent;
    this.doorbell = doorbell;
    doorbell.start();
    agent.start();
  }

  stop(): void {
    this.agent?.stop();
    this.doorbell?.stop();
  }
}

async function until(predicate: () => boolean, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > end) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 10));
  }
}

test.serial("demoUpdate: a signed update reaches the device over its one connection, then a downgrade is refused", async (t) => {
  const dir = fs.mkdtempSync(path.join(home, "demo-"));
  const key = ensureDevReleaseKey(home);
  const device = new SimDevice(dir, builtInKeys(key));
  device.boot();
  await until(() => device.doorbell!.link.online);
  const lines: string[] = [];
  const result = await demoUpdate({ standin, thing: THING, home, board: BOARD, version: () => device.version, say: (l) => lines.push(l), timeoutMs: 30_000 });
  t.log(lines.join("\n"));
  t.true(result.updated);
  t.is(result.from, 1);
  t.is(result.to, 2);
  t.is(device.version, 2);
  t.deepEqual(device.boots, [1, 2]);
  t.true(result.downgradeRefused);
  t.is(result.downgradeReason, "downgrade");
  t.is(device.agent!.floor, 2);
  // Nothing but the device's own topics was used: the broker refused nothing.
  t.deepEqual(standin.stats.refusals.filter((r) => r.clientId === THING), []);
  device.stop();
});

test.serial("throughput: a 1 MB image through the stand-in's streams on loopback", async (t) => {
  const key = ensureDevReleaseKey(home);
  const results: string[] = [];
  for (const [blockSize, blocksPerRequest] of [[4096, 4], [16384, 4], [65536, 2]] as const) {
    const dir = fs.mkdtempSync(path.join(home, `tp-${blockSize}-`));
    const device = new SimDevice(dir, builtInKeys(key), { blockSize, blocksPerRequest });
    device.boot();
    await until(() => device.doorbell!.link.online);
    const service = UpdateService.attach(standin);
    const image = makeSimImage({ board: BOARD, version: 2, healthy: true, size: 1024 * 1024 });
    const release = signImage(image, { key, version: 2, board: BOARD });
    const stream = `tp-${blockSize}`;
    service.createStream(stream, image);
    service.createJob(THING, `tp-job-${blockSize}`, firmwareJobDocument(release, { id: stream }));
    const done = await service.waitForTerminal(THING, `tp-job-${blockSize}`, 60_000);
    t.is(done.status, "SUCCEEDED", JSON.stringify(done.statusDetails));
    const downloaded = device.events.find((e) => e.type === "downloaded") as Extract<UpdateEvent, { type: "downloaded" }>;
    t.is(downloaded.bytes, image.length);
    const bps = (downloaded.bytes * 1000) / downloaded.ms;
    const st = service.streamStats(stream)!;
    results.push(`${blockSize / 1024} KiB blocks × ${blocksPerRequest} per request: ${(bps / 1024).toFixed(0)} KiB/s (device, first request to last block: ${downloaded.ms.toFixed(0)} ms; ${st.requests} GetStream requests)`);
    t.true(bps > 50 * 1024, `at least 50 KiB/s on loopback (got ${(bps / 1024).toFixed(0)})`);
    await until(() => device.version === 2);
    service.close();
    device.stop();
    await new Promise((r) => setTimeout(r, 50));
  }
  t.log(`update throughput, 1 MiB image, mutual TLS on 127.0.0.1:\n  ${results.join("\n  ")}`);
});
