/*
 * A simulated doorbell flash + update agent wired straight to the update
 * service in one process (no broker), for the agent, refusal and power-cut
 * tests. Messages cross with setImmediate, as over a socket; a device that is
 * "off" sends and hears nothing. Each powerOn() builds fresh objects over the
 * same directories, exactly as a reboot re-reads flash.
 */
import fs from "node:fs";
import nacl from "tweetnacl";
import { keyedTag, readJsonRecord } from "../modules/core/record";
import os from "node:os";
import path from "node:path";
import { FileStore } from "../modules/host/file-store";
import { createHostClock } from "../modules/host/clock";
import { FaultPlan, HostSlots, PowerCut, faultyStore, hostSha256, makeSimImage, readSimImage, type BootedImage, type SimImageInfo } from "../modules/host/update-sink";
import { UpdateAgent, UPDATE_KV, type UpdateAgentOptions, type UpdateEvent } from "../modules/core/update";
import type { TrustedKeys } from "../modules/core/release";
import { UpdateService, type JobExecution } from "../tools/update-service";
import { releaseKeyFromSeed, type ReleaseKey } from "../tools/release";

export const THING = "upd-porch";
/** The MAC of the anti-rollback records; a device derives it from its vault key provider. */
export const TEST_RECORD_TAG = keyedTag("doorward/update-records/v1", new Uint8Array(32).fill(0x5a), (d) => nacl.hash(d));
export const BOARD = "host/sim";

export function testKey(fill: number): ReleaseKey {
  return releaseKeyFromSeed(new Uint8Array(32).fill(fill));
}

/** MQTT topic-filter match (+ one level, # the rest). */
export function topicMatches(filter: string, topic: string): boolean {
  const f = filter.split("/");
  const t = topic.split("/");
  for (let i = 0; i < f.length; i++) {
    if (f[i] === "#") return true;
    if (i >= t.length) return false;
    if (f[i] !== "+" && f[i] !== t[i]) return false;
  }
  return f.length === t.length;
}

export interface Session {
  slots: HostSlots;
  booted: BootedImage;
  info: SimImageInfo;
  agent: UpdateAgent;
  events: UpdateEvent[];
  logs: string[];
  alive: boolean;
  /** Powered on under the fault plan: dead once the plan trips. */
  faulty: FaultPlan | undefined;
  restarted: Promise<"restart" | "rollback">;
}

/** On, and not killed by a power cut. */
function live(s: Session): boolean {
  return s.alive && !s.faulty?.tripped;
}

export interface WorldOptions {
  keys: TrustedKeys;
  factoryVersion?: number;
  plan?: FaultPlan;
  capacity?: number;
  agent?: Partial<UpdateAgentOptions>;
}

export class World {
  readonly root = fs.mkdtempSync(path.join(os.tmpdir(), "dw-upd-"));
  readonly flashDir = path.join(this.root, "flash");
  readonly nvsDir = path.join(this.root, "nvs");
  readonly service: UpdateService;
  readonly factory: Uint8Array;
  session: Session | undefined;
  /** Every image the device ever booted, in order. */
  boots: Array<{ version: number; trial: boolean; rolledBack: boolean; image: Uint8Array; floor: number | undefined }> = [];
  #o: WorldOptions;

  constructor(options: WorldOptions) {
    this.#o = options;
    this.factory = makeSimImage({ board: BOARD, version: options.factoryVersion ?? 1, healthy: true, size: 8 * 1024 });
    this.service = new UpdateService({
      deliver: (topic, payload) => {
        setImmediate(() => {
          const s = this.session;
          if (!s || !live(s)) return;
          if (s.agent.topics.subscriptions.some((f) => topicMatches(f, topic))) s.agent.onMessage(topic, payload);
        });
      },
    });
  }

  get store(): FileStore {
    return new FileStore(this.nvsDir);
  }

  /** The stored anti-rollback floor, read straight from flash (undefined when missing or not authentic). */
  floor(): number | undefined {
    const r = readJsonRecord(this.store, UPDATE_KV.floor, "upd-floor", { tag: TEST_RECORD_TAG });
    return r.state === "ok" ? ((r.value as { version: number }).version) : undefined;
  }

  powerOn(): Session {
    const plan = this.#o.plan && !this.#o.plan.tripped ? this.#o.plan : undefined;
    const slots = new HostSlots(this.flashDir, { capacity: this.#o.capacity, faults: plan });
    if (!slots.record()) slots.installFactory(this.factory);
    const booted = slots.powerOn();
    const info = readSimImage(booted.image);
    this.boots.push({ version: info.version, trial: booted.trial, rolledBack: booted.rolledBack, image: booted.image, floor: this.floor() });
    const events: UpdateEvent[] = [];
    const logs: string[] = [];
    let restartedResolve!: (why: "restart" | "rollback") => void;
    const restarted = new Promise<"restart" | "rollback">((r) => (restartedResolve = r));
    const store = plan ? faultyStore(new FileStore(this.nvsDir), plan) : new FileStore(this.nvsDir);
    const session = { slots, booted, info, events, logs, alive: true, faulty: plan, restarted } as Session;
    session.agent = new UpdateAgent({
      thing: THING,
      board: BOARD,
      runningVersion: info.version,
      releaseKeys: this.#o.keys,
      store,
      recordTag: TEST_RECORD_TAG,
      sink: slots,
      boot: slots,
      clock: createHostClock(),
      log: (level, message, fields) => logs.push(`${level} ${message} ${JSON.stringify(fields ?? {})}`),
      createDigest: hostSha256,
      healthCheck: () => info.healthy,
      publish: (topic, payload) => {
        if (!live(session)) return new Promise<void>(() => {});
        setImmediate(() => this.service.handle(topic, payload));
        return Promise.resolve();
      },
      onEvent: (e) => events.push(e),
      restartDelayMs: 5,
      requestTimeoutMs: 300,
      healthTimeoutMs: 2000,
      pollIntervalMs: 0,
      maxImageBytes: slots.capacity,
      // Many jobs in a few seconds: the verify rate limit has its own test.
      verifyRate: { burst: 1e9, everyMs: 1 },
      ...this.#o.agent,
    });
    slots.onRestart = (why) => {
      session.alive = false;
      session.agent.stop();
      restartedResolve(why);
    };
    this.session = session;
    session.agent.start();
    return session;
  }

  powerOff(): void {
    const s = this.session;
    if (!s) return;
    s.alive = false;
    s.agent.stop();
    this.session = undefined;
  }

  /**
   * Run the device (through restarts and power cuts) until the job ends in the
   * cloud and the device has gone quiet. Bounded in power cycles and time.
   */
  async settle(jobId: string, options: { timeoutMs?: number; maxPowerCycles?: number } = {}): Promise<JobExecution> {
    const deadline = Date.now() + (options.timeoutMs ?? 15_000);
    for (let cycle = 0; cycle < (options.maxPowerCycles ?? 12); cycle++) {
      if (!this.session) {
        try {
          this.powerOn();
        } catch (e) {
          if (!(e instanceof PowerCut)) throw e;
          this.session = undefined;
          continue;
        }
      }
      const s = this.session!;
      const outcome = await new Promise<"terminal" | "restart" | "cut" | "timeout">((resolve) => {
        const poll = setInterval(() => {
          const e = this.service.execution(THING, jobId);
          if (s.faulty?.tripped && s.alive) {
            clearInterval(poll);
            resolve("cut");
          } else if (!s.alive) {
            clearInterval(poll);
            resolve("restart");
          } else if (e && !["QUEUED", "IN_PROGRESS"].includes(e.status)) {
            clearInterval(poll);
            resolve("terminal");
          } else if (Date.now() > deadline) {
            clearInterval(poll);
            resolve("timeout");
          }
        }, 2);
      });
      if (outcome === "timeout") throw new Error(`job ${jobId} did not settle: ${this.service.execution(THING, jobId)?.status}\n${s.logs.join("\n")}`);
      if (outcome === "terminal") {
        await new Promise((r) => setTimeout(r, 30)); // let the answer to the terminal report land
        if (this.session === s && s.alive) return this.service.execution(THING, jobId)!;
      }
      this.powerOff();
    }
    throw new Error(`job ${jobId} did not settle within the power-cycle bound`);
  }
}
