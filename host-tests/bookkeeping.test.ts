/*
 * A damaged or missing bookkeeping record never stops the bell: the whole firmware
 * (bootFirmware over file-backed flash) boots over a dw.seq.hw, dw.boot or dw.acl.hw
 * that is garbage, bit-flipped or gone, resumes at a sequence number above anything
 * it ever issued, delivers the rings still queued in flash, rings, and reports the
 * recovery in a signed audit event.
 */
import test from "ava";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { bootFirmware, type RunningFirmware } from "../modules/core/firmware";
import { openEnvelope, type DoorEvent } from "../modules/core/events";
import { utf8Encode } from "../modules/core/bytes";
import type { MqttHandlers, MqttTransport } from "../modules/core/ports";
import { BOOT_KEY, SEQ_KEY } from "../modules/core/sequence";
import { REPLAY_KEY } from "../modules/core/commands";
import { createHostClock } from "../modules/host/clock";
import { hostRandom } from "../modules/host/random";
import { FileStore } from "../modules/host/file-store";
import { openKeyFile } from "../modules/host/key-file";
import { devicePaths } from "../tools/provision";
import { provisionIfNeeded } from "../tools/sim-device";
import { EventVerifier } from "../tools/verifier";

const THING = "ledger-porch";
let template = "";

test.before(async () => {
  template = fs.mkdtempSync(path.join(os.tmpdir(), "dw-bookkeeping-"));
  await provisionIfNeeded(template, THING);
});
test.after.always(() => {
  if (template) fs.rmSync(template, { recursive: true, force: true });
});

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** A broker that acknowledges at once when up, and refuses every connection when down. */
function broker(up: boolean) {
  const published: Array<{ topic: string; payload: Uint8Array }> = [];
  const transport: MqttTransport = {
    connect(h: MqttHandlers) {
      if (up) h.onConnect();
      else h.onClose("ECONNREFUSED");
    },
    publish(topic, payload) {
      published.push({ topic, payload });
      return Promise.resolve();
    },
    subscribe: () => Promise.resolve(),
    close() {},
  };
  return { transport, published };
}

function boot(home: string, transport: MqttTransport): RunningFirmware {
  const paths = devicePaths(home, THING);
  const fw = bootFirmware({
    clock: createHostClock(), random: hostRandom, vaultStore: new FileStore(paths.vaultDir), store: new FileStore(paths.nvsDir),
    keys: openKeyFile(paths.keyFile, { warn: () => {} }), log: () => {}, transport: () => transport,
  });
  if (fw.state !== "running") throw new Error(`firmware did not start: ${fw.state}`);
  return fw as RunningFirmware;
}

function events(fw: RunningFirmware, published: Array<{ topic: string; payload: Uint8Array }>): DoorEvent[] {
  const verifier = new EventVerifier({ [THING]: fw.doorbell.signer.publicKey });
  return published.filter((p) => p.topic.endsWith("/events")).map((p) => {
    const verdict = verifier.verify(p.payload);
    if (!verdict.ok) throw new Error(`event does not verify: ${verdict.detail}`);
    return openEnvelope(p.payload).event;
  });
}

interface Case {
  name: string;
  /** Boot 1 was online (its rings left flash) or offline (they are still queued). */
  online: boolean;
  damage: (nvs: string) => void;
  /** The signed audit report expected (the owner's time floor in dw.acl.hw is only a floor: a damaged one reads as none). */
  report?: string;
}

const write = (nvs: string, key: string, bytes: Uint8Array | string) => fs.writeFileSync(path.join(nvs, key), typeof bytes === "string" ? utf8Encode(bytes) : bytes);
const flip = (nvs: string, key: string) => {
  const b = fs.readFileSync(path.join(nvs, key));
  b[Math.floor(b.length / 2)] ^= 0x04;
  fs.writeFileSync(path.join(nvs, key), b);
};
const remove = (nvs: string, key: string) => fs.rmSync(path.join(nvs, key));

const cases: Case[] = [
  { name: "dw.seq.hw garbage, rings still queued", online: false, damage: (d) => write(d, SEQ_KEY, "12x"), report: "sequence-recovered" },
  { name: "dw.seq.hw one bit flipped, rings still queued", online: false, damage: (d) => flip(d, SEQ_KEY), report: "sequence-recovered" },
  { name: "dw.seq.hw missing, every ring already delivered", online: true, damage: (d) => remove(d, SEQ_KEY), report: "sequence-recovered" },
  { name: "dw.boot garbage", online: false, damage: (d) => write(d, BOOT_KEY, new Uint8Array([0xff, 0x00, 0x13])), report: "sequence-recovered" },
  { name: "dw.boot missing, every ring already delivered", online: true, damage: (d) => remove(d, BOOT_KEY), report: "sequence-recovered" },
  { name: "both counters missing, every ring already delivered", online: true, damage: (d) => { remove(d, SEQ_KEY); remove(d, BOOT_KEY); }, report: "sequence-recovered" },
  { name: "dw.acl.hw garbage, rings still queued", online: false, damage: (d) => write(d, REPLAY_KEY, "{\"owner\":") },
];

for (const c of cases) {
  test.serial(`${c.name}: the bell starts, rings above every earlier number and reports the recovery`, async (t) => {
    t.timeout(60_000);
    const home = fs.mkdtempSync(path.join(os.tmpdir(), "dw-bookkeeping-case-"));
    t.teardown(() => fs.rmSync(home, { recursive: true, force: true }));
    fs.cpSync(template, home, { recursive: true });
    const nvs = devicePaths(home, THING).nvsDir;

    const first = broker(c.online);
    const fw1 = boot(home, first.transport);
    const earlier = [fw1.doorbell.press(), fw1.doorbell.press(), fw1.doorbell.press()];
    await sleep(50);
    fw1.stop();
    const issued = Math.max(...earlier.map((r) => r.seq));

    c.damage(nvs);

    const second = broker(true);
    let fw2: RunningFirmware;
    try {
      fw2 = boot(home, second.transport);
    } catch (e) {
      t.fail(`the firmware did not start: ${String(e)}`);
      return;
    }
    const ring = fw2.doorbell.press();
    for (let i = 0; i < (c.report ? 100 : 10) && !events(fw2, second.published).some((e) => e.type === "audit"); i++) await sleep(50);
    fw2.stop();
    t.true(ring.seq > issued, `new ring seq ${ring.seq} is not above ${issued}, issued before the damage`);
    t.true(ring.event.boot > fw1.doorbell.sequence.boot, "the boot number moved on");
    const got = events(fw2, second.published);
    const rings = got.filter((e) => e.type === "ring").map((e) => e.seq);
    if (!c.online) t.deepEqual(rings.slice(0, 3), earlier.map((r) => r.seq), "the rings queued in flash were delivered");
    t.true(rings.includes(ring.seq), "the new ring was delivered");
    if (c.report) {
      const audit = got.find((e) => e.type === "audit" && e.report === c.report);
      t.truthy(audit, `a signed "${c.report}" audit event: ${JSON.stringify(got.filter((e) => e.type === "audit"))}`);
    }
    for (let i = 1; i < got.length; i++) t.true(got[i].seq > got[i - 1].seq, "sequence numbers rise");
  });
}

test.serial("intact counters: no recovery is reported", async (t) => {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), "dw-bookkeeping-case-"));
  t.teardown(() => fs.rmSync(home, { recursive: true, force: true }));
  fs.cpSync(template, home, { recursive: true });
  const fresh = boot(home, broker(true).transport);
  t.is(fresh.doorbell.sequence.recovery, undefined, "a new device is not a damaged one");
  t.is(fresh.doorbell.press().seq, 1);
  fresh.stop();
  const b = broker(true);
  const fw = boot(home, b.transport);
  t.is(fw.doorbell.sequence.recovery, undefined);
  fw.doorbell.press();
  await sleep(300);
  fw.stop();
  t.deepEqual(events(fw, b.published).filter((e) => e.type === "audit"), []);
});
