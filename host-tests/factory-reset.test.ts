/*
 * Factory reset erases everything the firmware wrote, so a reset device given
 * to a new owner starts as new: no queued events of the old thing, no counters,
 * no replay marks. Proof of concept: the old owner's rings are queued while
 * offline, the device is reset and provisioned as the new owner's thing, and
 * the new owner's ring arrives at the broker (which, like AWS IoT, drops a
 * session that publishes outside its own thing's topics). A reset cut short by
 * power loss is finished at the next boot.
 */
import test from "ava";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import nacl from "tweetnacl";
import { bootFirmware, type RunningFirmware, type WaitingFirmware } from "../modules/core/firmware";
import { encodeBundle, Provisioning, type DeviceIdentity, type ProvisioningBundle } from "../modules/core/provisioning";
import type { KeyValueStore, MqttHandlers, MqttTransport } from "../modules/core/ports";
import { FACTORY_RESET_KEEPS, RESETS_KEY, RESET_MARK } from "../modules/core/provisioning";
import { UPDATE_KV } from "../modules/core/update-protocol";
import { Vault } from "../modules/core/vault";
import { MemoryStore } from "../modules/host/file-store";
import { hostRandom } from "../modules/host/random";
import { issueThingCredentials } from "../tools/pki";
import { EventVerifier } from "../tools/verifier";
import { PowerCut, cloneStore } from "./vault-support";
import { ManualClock } from "./helpers/manual-clock";

const KEY = new Uint8Array(32).fill(0x42);
const keys = { storageKey: () => KEY.slice() };
let oldOwner: ProvisioningBundle;
let newOwner: ProvisioningBundle;

function owner() {
  return { signKey: nacl.sign.keyPair().publicKey, boxKey: nacl.box.keyPair().publicKey };
}

test.before(async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dw-reset-pki-"));
  const a = await issueThingCredentials(dir, "porch-old");
  const b = await issueThingCredentials(dir, "porch-new");
  oldOwner = { thing: "porch-old", wifi: { ssid: "Old-Home", password: "old owner passphrase" }, endpoint: "localhost", cert: a.certDer, key: a.keyDer, ca: a.caDer, owner: owner() };
  newOwner = { thing: "porch-new", wifi: { ssid: "New-Home", password: "new owner passphrase" }, endpoint: "localhost", cert: b.certDer, key: b.keyDer, ca: b.caDer, owner: owner() };
});

/** A broker that, like AWS IoT under the thing policy, closes a session that publishes outside doorward/<its thing>/. */
class Broker {
  up = false;
  received: Array<{ topic: string; payload: Uint8Array }> = [];
  refused: string[] = [];
  transport(thing: string): MqttTransport {
    const broker = this;
    let handlers: MqttHandlers | undefined;
    let open = false;
    const drop = (reason: string) => {
      if (!open) return;
      open = false;
      queueMicrotask(() => handlers?.onClose(reason));
    };
    return {
      connect(h) {
        handlers = h;
        if (broker.up) {
          open = true;
          queueMicrotask(() => h.onConnect());
        } else queueMicrotask(() => h.onClose("network unreachable"));
      },
      publish(topic, payload) {
        if (!open) return Promise.reject(new Error("not connected"));
        // The device policy: its own doorward/ subtree and its access-anchor shadow (docs/aws-policy.json).
        if (!topic.startsWith(`doorward/${thing}/`) && !topic.startsWith(`$aws/things/${thing}/shadow/name/doorward-acl/`)) {
          broker.refused.push(topic);
          drop("not authorized");
          return Promise.reject(new Error("not authorized"));
        }
        broker.received.push({ topic, payload: payload.slice() });
        return Promise.resolve();
      },
      subscribe: () => Promise.resolve(),
      close: () => drop("closed"),
    };
  }
}

/** Two stores on one power supply: the cut comes after `left` writes or deletes in all, whichever store they hit. */
class Power {
  ops = 0;
  dead = false;
  constructor(public left = Number.POSITIVE_INFINITY) {}
  store(inner: KeyValueStore): KeyValueStore {
    const alive = () => {
      if (this.dead) throw new PowerCut("power is off");
    };
    const step = () => {
      alive();
      if (this.left <= 0) {
        this.dead = true;
        throw new PowerCut(`power cut before operation ${this.ops}`);
      }
      this.left--;
      this.ops++;
    };
    return {
      read: (k) => (alive(), inner.read(k)),
      keys: () => (alive(), inner.keys()),
      write: (k, v) => (step(), inner.write(k, v)),
      delete: (k) => (step(), inner.delete(k)),
    };
  }
}

const settle = async () => { for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r)); };

function boot(flash: { vault: KeyValueStore; store: KeyValueStore }, clock: ManualClock, broker: Broker) {
  return bootFirmware({
    clock, random: hostRandom, vaultStore: flash.vault, store: flash.store, keys, log: () => {},
    transport: (identity: DeviceIdentity) => broker.transport(identity.thing),
  });
}

/** Run the clock in steps so reconnect back-offs and nonce precomputation get their turns. */
async function run(clock: ManualClock, ms: number) {
  for (let t = 0; t < ms; t += 500) {
    clock.advance(500);
    await settle();
  }
}

test.serial("PoC: after a factory reset and a new owner, the new owner's rings arrive", async (t) => {
  const flash = { vault: new MemoryStore(), store: new MemoryStore() };
  const clock = new ManualClock();
  const broker = new Broker();
  const first = boot(flash, clock, broker) as WaitingFirmware;
  first.provisioning.accept(encodeBundle(oldOwner));
  const old = boot(flash, clock, broker) as RunningFirmware;
  t.is(old.state, "running");
  // The old owner rings while the network is down: the rings wait in the outbox, in flash.
  for (let i = 0; i < 3; i++) old.doorbell.press();
  await run(clock, 2000);
  t.true(old.doorbell.outbox.durableDepth >= 3);
  old.stop();

  old.provisioning.factoryReset();
  const leftAfterReset = flash.store.keys().filter((k) => !FACTORY_RESET_KEEPS.includes(k));
  const waiting = boot(flash, clock, broker) as WaitingFirmware;
  t.is(waiting.state, "unprovisioned");
  waiting.provisioning.accept(encodeBundle(newOwner));

  broker.up = true;
  const fresh = boot(flash, clock, broker) as RunningFirmware;
  t.is(fresh.identity.thing, "porch-new");
  const verifier = new EventVerifier({ "porch-new": fresh.identity.publicKey });
  await run(clock, 3000);
  fresh.doorbell.press();
  await run(clock, 30_000);
  fresh.stop();
  const rings = broker.received
    .map((m) => verifier.verify(m.payload, { topic: m.topic }))
    .filter((v) => v.ok && v.event.type === "ring" && v.event.thing === "porch-new");
  t.is(rings.length, 1, "the new owner's ring arrived and verified");
  t.deepEqual(broker.refused, [], "nothing of the old thing was sent");
  t.deepEqual(leftAfterReset, [], "nothing the firmware wrote is left");
  t.is(fresh.doorbell.sequence.boot, 1, "the counters start again");
});

test("the reset keeps only the update anti-rollback records and the count of resets, and says so", (t) => {
  const store = new MemoryStore();
  const vaultStore = new MemoryStore();
  for (const k of ["dw.boot", "dw.seq.hw", "dw.acl.hw", "ob.1", "ob.1.1", "ob-ledger", "upd.state", "upd.done", "anything.else", ...FACTORY_RESET_KEEPS]) store.write(k, Uint8Array.of(1));
  const lines: string[] = [];
  const vault = Vault.open({ store: vaultStore, keys, random: hostRandom });
  const prov = new Provisioning({ vault, random: hostRandom, store, log: (level, message) => lines.push(`${level} ${message}`) });
  prov.accept(encodeBundle(oldOwner));
  prov.factoryReset();
  t.deepEqual(store.keys(), [...FACTORY_RESET_KEEPS].sort());
  t.deepEqual(vaultStore.keys(), []);
  t.deepEqual([...FACTORY_RESET_KEEPS].sort(), [UPDATE_KV.floor, UPDATE_KV.keys, RESETS_KEY].sort());
  t.true(lines.some((l) => /factory reset/.test(l)));
});

test("a factory reset cut short at any write is finished at the next boot", (t) => {
  const base = { vault: new MemoryStore(), store: new MemoryStore() };
  const prov = new Provisioning({ vault: Vault.open({ store: base.vault, keys, random: hostRandom }), random: hostRandom, store: base.store });
  prov.accept(encodeBundle(oldOwner));
  for (const k of ["dw.boot", "dw.seq.hw", "ob.1", "ob-ledger", "dw.acl.hw"]) base.store.write(k, Uint8Array.of(9));
  // Count the writes and deletes a whole reset makes, then cut power before each of them in turn.
  const probe = new Power();
  const probeDisk = { vault: cloneStore(base.vault), store: cloneStore(base.store) };
  new Provisioning({ vault: Vault.open({ store: probe.store(probeDisk.vault), keys, random: hostRandom }), random: hostRandom, store: probe.store(probeDisk.store) }).factoryReset();
  const total = probe.ops;
  t.true(total > 10);
  let cutsSeen = 0;
  for (let cut = 0; cut < total; cut++) {
    const disk = { vault: cloneStore(base.vault), store: cloneStore(base.store) };
    const power = new Power(cut);
    try {
      new Provisioning({ vault: Vault.open({ store: power.store(disk.vault), keys, random: hostRandom }), random: hostRandom, store: power.store(disk.store) }).factoryReset();
    } catch (e) {
      if (!(e instanceof PowerCut)) throw e;
      cutsSeen++;
    }
    // Reboot over what reached flash.
    const after = new Provisioning({ vault: Vault.open({ store: disk.vault, keys, random: hostRandom }), random: hostRandom, store: disk.store });
    const s = after.status();
    const left = disk.store.keys().filter((k) => !FACTORY_RESET_KEEPS.includes(k));
    if (s.state === "provisioned") {
      // Cut before the reset began: nothing may be half gone.
      t.deepEqual(left.sort(), ["dw.acl.hw", "dw.boot", "dw.seq.hw", "ob-ledger", "ob.1"], `cut ${cut}`);
      t.is(after.resets(), 0, `cut ${cut}`);
    } else {
      t.is(s.state, "unprovisioned", `cut ${cut}`);
      t.deepEqual(left, [], `cut ${cut}: the reset was finished`);
      t.false(disk.store.keys().includes(RESET_MARK));
      t.is(after.resets(), 1, `cut ${cut}: the count of resets moved on once`);
    }
  }
  t.true(cutsSeen > 0);
});
