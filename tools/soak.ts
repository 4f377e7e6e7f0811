/*
 * Reliability soak: `npm run soak` (long), and the harness the fault-injection
 * and XS memory tests run in short form.
 *
 * Chaos run. A simulated doorbell runs as its own process (tools/sim-device.ts)
 * against the real stand-in broker while presses keep coming, and a seeded
 * schedule of faults hits it:
 *   broker restart   the stand-in is closed (every socket cut) and started again on the same port;
 *   power cut        the device process is SIGKILLed, at random, right after a press was asked
 *                    for (mid flash write) or right after a ring was recorded (in flash, unacked),
 *                    then started again over the same flash directory;
 *   mid-publish drop the broker cuts the device's session the moment a ring was handed to the socket.
 * The stand-in plays AWS IoT's front door only: what it accepts is relayed, in order,
 * into a second stand-in that never restarts, where the reference CloudConsumer
 * (tweetnacl + OpenSSL, de-duplication by (thing, seq)) listens. That is where AWS's
 * rules engine would take over; relaying keeps the consumer's own reconnects out of
 * the measurement, so any loss counted is the device's.
 *
 * A press counts once the device printed "recorded seq=N" (after the flash write);
 * presses while the process is dead do not exist. At the end every recorded ring
 * must have been accepted exactly once after de-duplication, in order, with both
 * signature checks passing; the only unrecorded rings allowed are one per power
 * cut, the ring whose flash write completed just before the kill.
 *
 * XS heap run. The unchanged core on the XS engine: rings (each with its nonce
 * precomputed), outbox write/ack churn and link reconnects, measuring live slots
 * after a full GC before and after.
 *
 *   npm run soak -- [--minutes 5] [--seed 7] [--xs-rings 2000] [--xs-churn 20000] [--skip-xs] [--skip-chaos]
 */
import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";
import { fromHex } from "../modules/core/bytes";
import { ensureDevPki, type DevPki } from "./pki";
import { startStandin, type Standin, type StandinMessage } from "./standin";
import { CloudConsumer } from "./cloud";
import { provisionIfNeeded } from "./sim-device";
import { startXsCore } from "./xs/core";
import { DOORBELL_SETUP } from "./bench/xs-ring";
import { intOption, runAsEntry, UserError, type Parsed } from "./lib/cli";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** mulberry32: a reproducible schedule from a seed. */
export function seededRng(seed: number): { next(): number; int(lo: number, hi: number): number; pick<T>(xs: readonly T[]): T } {
  let s = seed >>> 0;
  const next = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return { next, int: (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)), pick: (xs) => xs[Math.floor(next() * xs.length)] };
}

async function until(probe: () => boolean, timeoutMs: number, stepMs = 20): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (!probe()) {
    if (Date.now() > end) return false;
    await sleep(stepMs);
  }
  return true;
}

// ------------------------------------------------------------------ the device process

export interface Recorded {
  seq: number;
  boot: number;
  stored: boolean;
}

/** One power-on of tools/sim-device.ts. SIGKILL is the power cut. */
export class SimDeviceProcess {
  readonly child: ChildProcess;
  boot = 0;
  key: Uint8Array | undefined;
  restored = 0;
  ready = false;
  online = false;
  exited = false;
  readonly recorded: Recorded[] = [];
  readonly log: string[] = [];
  readonly exit: Promise<number | null>;
  #listeners = new Set<(line: string) => void>();

  constructor(o: { home: string; port: number; thing: string; keepaliveSeconds?: number }) {
    this.child = spawn(process.execPath, ["--import=tsx", path.join(REPO, "tools", "sim-device.ts"), "--home", o.home, "--port", String(o.port), "--thing", o.thing, "--keepalive", String(o.keepaliveSeconds ?? 30)], {
      cwd: REPO,
      stdio: ["pipe", "pipe", "pipe"],
    });
    this.child.stdin!.on("error", () => {}); // writing to a process that just lost power
    this.exit = new Promise((resolve) => this.child.once("exit", (code) => {
      this.exited = true;
      this.ready = false;
      this.online = false;
      resolve(code);
    }));
    readline.createInterface({ input: this.child.stdout! }).on("line", (line) => this.#line(line));
    readline.createInterface({ input: this.child.stderr! }).on("line", (line) => this.#keep(`stderr ${line}`));
  }

  #keep(line: string): void {
    this.log.push(line);
    if (this.log.length > 400) this.log.splice(0, this.log.length - 300);
  }

  #line(line: string): void {
    this.#keep(line);
    let m: RegExpExecArray | null;
    if ((m = /^ready thing=\S+ boot=(\d+) key=([0-9a-f]{64}) restored=(\d+)$/.exec(line))) {
      this.boot = Number(m[1]);
      this.key = fromHex(m[2]);
      this.restored = Number(m[3]);
      this.ready = true;
    } else if ((m = /^recorded seq=(\d+) boot=(\d+) stored=([01])$/.exec(line))) {
      this.recorded.push({ seq: Number(m[1]), boot: Number(m[2]), stored: m[3] === "1" });
    } else if (/^log \[info\] link online/.test(line)) this.online = true;
    else if (/^log \[warn\] link (offline|attempt failed)/.test(line)) this.online = false;
    for (const l of [...this.#listeners]) l(line);
  }

  /** Run `fn` synchronously inside the handler of the next line matching `pattern` (so nothing else happens in between). */
  onNext(pattern: RegExp, fn: () => void): () => void {
    const listener = (line: string) => {
      if (!pattern.test(line)) return;
      this.#listeners.delete(listener);
      fn();
    };
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  send(command: string): void {
    if (!this.exited) this.child.stdin!.write(command + "\n");
  }

  async waitReady(timeoutMs = 30_000): Promise<void> {
    if (!(await until(() => this.ready || this.exited, timeoutMs))) throw new Error(`device did not boot within ${timeoutMs} ms:\n${this.log.slice(-20).join("\n")}`);
    if (!this.ready) throw new Error(`device exited while booting:\n${this.log.slice(-20).join("\n")}`);
  }

  async powerCut(): Promise<void> {
    if (!this.exited) this.child.kill("SIGKILL");
    await this.exit;
  }

  async quit(timeoutMs = 5000): Promise<void> {
    this.send("quit");
    const timer = setTimeout(() => this.child.kill("SIGKILL"), timeoutMs);
    await this.exit;
    clearTimeout(timer);
  }
}

// ------------------------------------------------------------------ the broker that fails, and the cloud behind it

/** The stand-in as AWS IoT's front door, restartable on one port, relaying accepted events to a steady cloud-side broker. */
export class FlakyBroker {
  standin: Standin | undefined;
  port = 0;
  restarts = 0;
  relayed = 0;
  #chain: Promise<void> = Promise.resolve();

  constructor(readonly pki: DevPki, readonly cloudSide: Standin) {}

  /** Crashes inside the window between routing a publish and acknowledging it. */
  crashesInWindow = 0;
  #crashNext: ((done: Promise<void>) => void) | undefined;

  async start(): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        this.standin = await startStandin({ pki: this.pki, port: this.port, route: (m) => this.#route(m) });
        break;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EADDRINUSE" || attempt >= 50) throw e;
        await sleep(100);
      }
    }
    this.port = this.standin.port;
  }

  /** The stand-in acknowledges a publish only once this settles: the relay has the message. */
  #route(m: StandinMessage): Promise<void> {
    if (m.identity.role !== "thing" || !m.topic.endsWith("/events")) return Promise.resolve();
    const crash = this.#crashNext;
    if (crash) {
      // The broker dies with this message routed nowhere and unacknowledged.
      this.#crashNext = undefined;
      this.crashesInWindow++;
      crash(this.restart(100));
      return new Promise<void>(() => {});
    }
    const payload = new Uint8Array(m.payload);
    // In order, one at a time, as a rules engine hands them on.
    const relayed = this.#chain.then(() => this.cloudSide.publish(m.topic, payload, { qos: 1 })).then(() => void this.relayed++);
    this.#chain = relayed.catch(() => {});
    return relayed;
  }

  /** Kill the broker when it next routes an event, before it acknowledges it; resolves once it is back. */
  crashOnNextRoute(): Promise<void> {
    return new Promise<void>((resolve) => {
      this.#crashNext = (restarted) => void restarted.then(resolve, resolve);
    });
  }

  /** Forget a pending crashOnNextRoute (nothing was published in time). */
  cancelCrash(): void {
    this.#crashNext = undefined;
  }

  async stop(): Promise<void> {
    const s = this.standin;
    this.standin = undefined;
    await s?.close();
  }

  async restart(downMs: number): Promise<void> {
    await this.stop();
    await sleep(downMs);
    await this.start();
    this.restarts++;
  }

  /** AWS DeleteConnection: cut the thing's session now. */
  disconnect(thing: string): boolean {
    return this.standin?.disconnect(thing) ?? false;
  }

  async drain(): Promise<void> {
    await this.#chain;
  }
}

// ------------------------------------------------------------------ chaos

export interface ChaosOptions {
  seed?: number;
  /** Fault cycles: each is one broker restart, one mid-publish drop and one power cut, in a random order. */
  cycles?: number;
  /** Stop starting cycles after this long (the run still settles). */
  maxMs?: number;
  /** Time allowed at the end for everything recorded to arrive. */
  settleMs?: number;
  /** Pause between presses. */
  pressEveryMs?: [number, number];
  /** Chance that a power cut also damages the flash (a bit flip or a truncated outbox entry, a damaged or missing counter or ledger, a stray key). Default 0. */
  damage?: number;
  home?: string;
  thing?: string;
  log?: (line: string) => void;
}

export interface ChaosReport {
  seed: number;
  elapsedMs: number;
  pressesAsked: number;
  /** Rings the device recorded in flash. */
  presses: number;
  /** Recorded but not in flash (flash refused the write): must be 0. */
  unstored: number;
  brokerRestarts: number;
  powerCuts: number;
  midPublishDrops: number;
  boots: number;
  /** Events the cloud accepted (after de-duplication): rings and audit reports. */
  delivered: number;
  /** Of which rings. */
  ringsDelivered: number;
  /** Recorded rings never accepted. Must be 0. */
  lost: number[];
  /** Rings accepted twice after de-duplication. Must be 0. */
  duplicatesDelivered: number;
  /** Redeliveries the consumer recognised and dropped (at-least-once at work). */
  redeliveries: number;
  /** Messages the consumer rejected that were not recognised duplicates (out of order, bad signature, malformed). Must be 0. */
  rejected: string[];
  /** Accepted by tweetnacl but not by OpenSSL. Must be 0. */
  opensslFailures: number;
  /** Accepted rings the device never printed as recorded: allowed only as the last ring of a boot that lost power. */
  unrecordedDelivered: Array<{ seq: number; boot: number; allowed: boolean }>;
  /** Events that were not rings, drop reports or recovery reports. */
  otherEvents: string[];
  /** Broker kills between routing a ring and acknowledging it. */
  crashesInWindow: number;
  /** Flash damage done at power cuts, by kind. */
  damage: Record<string, number>;
  /** Signed audit reports accepted: drop reports and sequence recoveries. */
  dropReports: number;
  recoveryReports: number;
  /** Recorded rings never delivered that a signed drop report names (or counts, when their seq was unreadable). */
  lostReported: number[];
  /** Recorded rings never delivered and in no signed report. Must be 0. */
  lostUnreported: number[];
  /** Cycles that found the device still offline after the wait. */
  stuck: number;
  ok: boolean;
}

export async function runChaos(o: ChaosOptions = {}): Promise<ChaosReport> {
  const seed = o.seed ?? 1;
  const rng = seededRng(seed);
  const say = o.log ?? (() => {});
  const thing = o.thing ?? "chaos-porch";
  const home = o.home ?? fs.mkdtempSync(path.join(os.tmpdir(), "dw-chaos-"));
  const started = Date.now();
  const pki = await ensureDevPki(path.join(home, "pki"));
  await provisionIfNeeded(home, thing);

  const cloudSide = await startStandin({ pki });
  const cloud = new CloudConsumer();
  await cloud.connect({ host: "127.0.0.1", port: cloudSide.port, servername: "localhost", clientId: `${pki.service.name}-chaos`, ca: pki.ca.certPem, cert: pki.service.certPem, key: pki.service.keyPem });
  const edge = new FlakyBroker(pki, cloudSide);
  await edge.start();

  const devices: SimDeviceProcess[] = [];
  const killedBoots = new Set<number>();
  let device!: SimDeviceProcess;
  const powerOn = async () => {
    device = new SimDeviceProcess({ home, port: edge.port, thing });
    devices.push(device);
    await device.waitReady();
    if (devices.length === 1) cloud.register(thing, device.key!);
    say(`device boot ${device.boot} (restored ${device.restored} from flash)`);
  };
  const counts = { pressesAsked: 0, powerCuts: 0, midPublishDrops: 0, stuck: 0 };
  const damage: Record<string, number> = {};
  const nvs = path.join(home, "things", thing, "nvs");
  const damageFlash = () => {
    const files = fs.readdirSync(nvs).filter((f) => !f.endsWith(".tmp"));
    const entries = files.filter((f) => /^ob\.[otsarp][0-9a-z]+$/.test(f));
    const kinds = ["flip-entry", "truncate-entry", "seq", "boot", "both-counters", "ledger", "stray", "stray-dir", "acl"];
    let kind = rng.pick(kinds);
    // An outbox entry to damage needs one in flash; otherwise pick something that is always there.
    if ((kind === "flip-entry" || kind === "truncate-entry") && entries.length === 0) kind = rng.pick(["seq", "boot", "ledger", "stray"]);
    const file = (name: string) => path.join(nvs, name);
    const flip = (name: string) => {
      if (!fs.existsSync(file(name))) return false;
      const b = fs.readFileSync(file(name));
      if (b.length === 0) return false;
      b[rng.int(0, b.length - 1)] ^= 1 << rng.int(0, 7);
      fs.writeFileSync(file(name), b);
      return true;
    };
    let done = false;
    if (kind === "flip-entry" || kind === "truncate-entry") {
      if (entries.length) {
        const victim = rng.pick(entries);
        if (kind === "flip-entry") done = flip(victim);
        else {
          fs.truncateSync(file(victim), rng.int(0, 20));
          done = true;
        }
      }
    } else if (kind === "seq") done = rng.int(0, 1) ? flip("dw.seq.hw") : (fs.rmSync(file("dw.seq.hw"), { force: true }), true);
    else if (kind === "boot") done = rng.int(0, 1) ? flip("dw.boot") : (fs.rmSync(file("dw.boot"), { force: true }), true);
    else if (kind === "both-counters") {
      fs.rmSync(file("dw.seq.hw"), { force: true });
      fs.writeFileSync(file("dw.boot"), "12x");
      done = true;
    } else if (kind === "ledger") done = flip("ob-ledger");
    else if (kind === "stray") {
      fs.writeFileSync(file(rng.pick(["ob.1~", "ob.123456789abcdef", "ob.7"])), "stray");
      done = true;
    } else if (kind === "stray-dir") {
      fs.mkdirSync(file("ob.3"), { recursive: true });
      done = true;
    } else if (kind === "acl") {
      fs.writeFileSync(file("dw.acl.hw"), "{\"owner\":");
      done = true;
    }
    if (done) damage[kind] = (damage[kind] ?? 0) + 1;
    return done ? kind : "none";
  };

  let pressing = true;
  let stopped = false;
  const presser = (async () => {
    const [lo, hi] = o.pressEveryMs ?? [250, 600];
    while (pressing) {
      await sleep(rng.int(lo, hi));
      if (pressing && device?.ready && !device.exited) {
        device.send("ring");
        counts.pressesAsked++;
      }
    }
  })();

  const powerCut = async () => {
    const variant = rng.int(0, 2);
    if (variant === 1) {
      // Mid press: the flash write may or may not have happened.
      device.send("ring");
      counts.pressesAsked++;
      await sleep(rng.int(0, 6));
    } else if (variant === 2) {
      // Recorded in flash, not yet acknowledged.
      const fired = new Promise<void>((resolve) => device.onNext(/^recorded /, () => { device.child.kill("SIGKILL"); resolve(); }));
      device.send("ring");
      counts.pressesAsked++;
      await Promise.race([fired, sleep(3000)]);
    }
    killedBoots.add(device.boot);
    await device.powerCut();
    counts.powerCuts++;
    const damaged = rng.next() < (o.damage ?? 0) ? damageFlash() : "none";
    say(`power cut (variant ${variant}) at boot ${device.boot}; flash damage: ${damaged}`);
    await sleep(rng.int(50, 400));
    await powerOn();
  };

  const midPublishDrop = async () => {
    if (!device.online) await until(() => device.online || device.exited, 20_000);
    let cut = false;
    const fired = new Promise<void>((resolve) => device.onNext(/^recorded /, () => { cut = edge.disconnect(thing); resolve(); }));
    device.send("ring");
    counts.pressesAsked++;
    await Promise.race([fired, sleep(3000)]);
    if (cut) counts.midPublishDrops++;
    say(`mid-publish drop ${cut ? "done" : "missed (device offline)"}`);
  };

  const brokerRestart = async () => {
    if (rng.int(0, 1) === 1 && device.online) {
      // Killed inside the window between routing a ring and acknowledging it.
      const back = edge.crashOnNextRoute();
      device.send("ring");
      counts.pressesAsked++;
      const crashed = await Promise.race([back.then(() => true), sleep(3000).then(() => false)]);
      if (crashed) {
        say("broker killed between routing a ring and its PUBACK");
        return;
      }
      edge.cancelCrash();
    }
    const down = rng.int(100, 1500);
    await edge.restart(down);
    say(`broker restarted after ${down} ms down`);
  };

  try {
    await powerOn();
    await until(() => device.online, 20_000);
    const cycles = o.cycles ?? 6;
    for (let c = 0; c < cycles && Date.now() - started < (o.maxMs ?? 120_000); c++) {
      const actions = [brokerRestart, midPublishDrop, powerCut];
      for (let i = actions.length - 1; i > 0; i--) {
        const j = rng.int(0, i);
        [actions[i], actions[j]] = [actions[j], actions[i]];
      }
      for (const action of actions) {
        await action();
        // Let the system recover before the next blow, while presses keep coming (bounded).
        if (!(await until(() => device.online, 40_000))) counts.stuck++;
        await sleep(rng.int(200, 1200));
      }
    }
    pressing = false;
    await presser;
    const recordedAll = () => devices.flatMap((d) => d.recorded);
    const accepted = () => new Set(cloud.received.filter((e) => e.verdict.ok).map((e) => (e.verdict.ok ? e.verdict.event.seq : 0)));
    // Everything recorded is delivered, or (flash damage) named in a signed drop report.
    const namedLost = () => {
      const named = new Set<number>();
      for (const e of cloud.received) {
        if (!e.verdict.ok || e.verdict.event.type !== "audit" || e.verdict.event.report !== "outbox-overflow") continue;
        for (const item of (e.verdict.event.lost as Array<[number, string]>) ?? []) named.add(item[0]);
      }
      return named;
    };
    await until(() => {
      const got = accepted();
      const named = namedLost();
      return recordedAll().every((r) => got.has(r.seq) || named.has(r.seq));
    }, o.settleMs ?? 60_000, 50);
    await sleep(300); // a late redelivery would show here
    await edge.drain();
    await device.quit();
    stopped = true;

    const recorded = recordedAll();
    const recordedSeqs = new Set(recorded.map((r) => r.seq));
    const ok = cloud.received.filter((e) => e.verdict.ok);
    const acceptedSeqs = ok.map((e) => (e.verdict.ok ? e.verdict.event.seq : 0));
    const acceptedEvents = ok.map((e) => (e.verdict.ok ? e.verdict.event : undefined)!);
    const seen = new Map<number, number>();
    for (const s of acceptedSeqs) seen.set(s, (seen.get(s) ?? 0) + 1);
    const lost = [...recordedSeqs].filter((s) => !seen.has(s)).sort((a, b) => a - b);
    const maxRecordedOfBoot = new Map<number, number>();
    for (const r of recorded) maxRecordedOfBoot.set(r.boot, Math.max(maxRecordedOfBoot.get(r.boot) ?? 0, r.seq));
    const extrasPerBoot = new Map<number, number>();
    const unrecordedDelivered = acceptedEvents.filter((e) => e.type === "ring" && !recordedSeqs.has(e.seq)).map((e) => {
      const n = (extrasPerBoot.get(e.boot) ?? 0) + 1;
      extrasPerBoot.set(e.boot, n);
      const allowed = killedBoots.has(e.boot) && n === 1 && e.seq > (maxRecordedOfBoot.get(e.boot) ?? 0);
      return { seq: e.seq, boot: e.boot, allowed };
    });
    let inOrder = true;
    for (let i = 1; i < acceptedSeqs.length; i++) if (acceptedSeqs[i] <= acceptedSeqs[i - 1]) inOrder = false;
    const rejected = cloud.received.filter((e) => !e.verdict.ok && !e.duplicate).map((e) => (e.verdict.ok ? "" : `${e.verdict.reason}: ${e.verdict.detail}`));
    // Lost rings: a named seq in a drop report covers its ring; a ring dropped with an unreadable seq (0) covers one more, by count.
    const reports = acceptedEvents.filter((e) => e.type === "audit" && e.report === "outbox-overflow");
    const named = namedLost();
    let unnamedRingDrops = 0;
    const unnamedSeen = new Set<string>();
    for (const r of reports) {
      // Each report lists the last drops; the same unnamed drop appears in every later report until 16 more push it out.
      const list = (r.lost as Array<[number, string]>) ?? [];
      list.forEach(([seq, kind], i) => {
        if (seq === 0 && kind === "ring") {
          const id = `${r.boot}:${Number(r.total) - (list.length - 1 - i)}`;
          if (!unnamedSeen.has(id)) unnamedSeen.add(id), unnamedRingDrops++;
        }
      });
    }
    const lostReported: number[] = [];
    const lostUnreported: number[] = [];
    for (const seq of lost) {
      if (named.has(seq)) lostReported.push(seq);
      else if (unnamedRingDrops > 0) {
        unnamedRingDrops--;
        lostReported.push(seq);
      } else lostUnreported.push(seq);
    }
    const allowedOther = (e: (typeof acceptedEvents)[number]) => e.type === "audit" && (e.report === "outbox-overflow" || e.report === "sequence-recovered");
    if (!inOrder) rejected.push("accepted sequence numbers not increasing");
    const report: ChaosReport = {
      seed,
      elapsedMs: Date.now() - started,
      pressesAsked: counts.pressesAsked,
      presses: recorded.length,
      unstored: recorded.filter((r) => !r.stored).length,
      brokerRestarts: edge.restarts,
      powerCuts: counts.powerCuts,
      midPublishDrops: counts.midPublishDrops,
      boots: devices.length,
      delivered: seen.size,
      ringsDelivered: new Set(acceptedEvents.filter((e) => e.type === "ring").map((e) => e.seq)).size,
      lost,
      duplicatesDelivered: [...seen.values()].filter((n) => n > 1).length,
      redeliveries: cloud.duplicates,
      rejected,
      opensslFailures: ok.filter((e) => e.openssl !== true).length,
      unrecordedDelivered,
      otherEvents: acceptedEvents.filter((e) => e.type !== "ring" && !allowedOther(e)).map((e) => `${e.type} seq=${e.seq} ${JSON.stringify(e)}`),
      stuck: counts.stuck,
      crashesInWindow: edge.crashesInWindow,
      damage,
      dropReports: reports.length,
      recoveryReports: acceptedEvents.filter((e) => e.type === "audit" && e.report === "sequence-recovered").length,
      lostReported,
      lostUnreported,
      ok: false,
    };
    // Without flash damage nothing may be lost at all; with it, nothing may be lost without a signed report.
    const lossOk = (o.damage ?? 0) > 0 ? report.lostUnreported.length === 0 : report.lost.length === 0;
    report.ok = lossOk && report.duplicatesDelivered === 0 && report.rejected.length === 0 && report.opensslFailures === 0
      && report.unstored === 0 && report.unrecordedDelivered.every((u) => u.allowed) && report.otherEvents.length === 0 && report.presses > 0;
    return report;
  } finally {
    pressing = false;
    if (!stopped) for (const d of devices) if (!d.exited) await d.powerCut();
    await cloud.close();
    await edge.stop();
    await cloudSide.close();
    if (!o.home) fs.rmSync(home, { recursive: true, force: true });
  }
}

// ------------------------------------------------------------------ XS heap

export interface XsHeapOptions {
  /** Rings, each with its nonce precomputed first (~22 M meter units apiece). */
  rings?: number;
  /** Outbox write → publish → PUBACK → delete cycles of a pre-signed event, without signing. */
  churn?: number;
  /** Link drops and reconnects (each re-sends what the outbox holds). */
  reconnects?: number;
  /** Work done before the baseline, so one-time allocations (caches, pools, first timers) are not counted as growth. */
  warmup?: number;
  /** Make the transport keep a small object per publish: a deliberate leak, to show the measurement catches one. */
  leak?: boolean;
  log?: (line: string) => void;
}

export interface XsHeapReport {
  rings: number;
  churn: number;
  reconnects: number;
  /** Live slots after a full GC. */
  slotsBefore: number;
  slotsAfter: number;
  /**
   * What the test harness itself kept over the same number of runs with no work in them
   * (the xsnap driver retains about one slot per evaluation): measured, then subtracted.
   */
  harnessSlots: number;
  /** slotsAfter − slotsBefore − harnessSlots: growth due to the doorbell. */
  netGrowth: number;
  runs: number;
  /** Heap bytes the machine has allocated (XS heaps grow, never shrink). */
  allocatedBefore: number;
  allocatedAfter: number;
  /** Rings that had to take the slow path (0 expected). */
  slowPath: number;
  published: number;
  outboxDepth: number;
  storedKeys: number;
  /** Live slots after GC at each checkpoint. */
  trace: number[];
}

/** Live slots the doorbell may gain over a soak, net of the harness: a leak of one slot per ring or reconnect would exceed it many times over. */
export const XS_GROWTH_BOUND_SLOTS = 64;

/** Run body prelude on top of DOORBELL_SETUP: a transport that can be dropped, and a clock we advance by hand. */
const CHURN_SETUP = `
  state.published = 0;
  state.up = true;
  state.leak = args.leak === true;
  state.kept = [];
  state.transport = {
    connect(h) { state.handlers = h; if (state.up) h.onConnect(); else h.onClose("ECONNREFUSED"); },
    publish() { if (!state.up) return Promise.reject(new Error("down")); state.published++; if (state.leak) state.kept.push({ n: state.published }); return Promise.resolve(); },
    subscribe() { return Promise.resolve(); },
    close() {},
  };
  state.advance = (ms) => {
    const end = state.clock.now + ms;
    for (let guard = 0; guard < 10000; guard++) {
      let next;
      for (const t of state.timers) if (!next || t.at < next.at) next = t;
      if (!next || next.at > end) break;
      state.timers.delete(next);
      state.clock.now = next.at;
      next.fn();
    }
    state.clock.now = end;
  };
`;

export async function measureXsHeap(o: XsHeapOptions = {}): Promise<XsHeapReport> {
  const rings = o.rings ?? 100;
  const churn = o.churn ?? 2000;
  const reconnects = o.reconnects ?? 1000;
  const warmup = o.warmup ?? 20;
  const say = o.log ?? (() => {});
  const xs = await startXsCore({ stdout: "ignore", timeoutMs: 30 * 60_000, meteringLimit: 2_000_000_000 });
  const trace: number[] = [];
  let runs = 0;
  const run = (body: string, args?: unknown) => {
    runs++;
    return xs.run(body, args);
  };
  const checkpoint = async () => {
    const r = await run(`gc(); return 0;`);
    trace.push(r.meter.currentHeapCount);
    return r.meter;
  };
  try {
    await xs.run(`${DOORBELL_SETUP}${CHURN_SETUP}
      state.d = state.make(1);
      state.d.start();
      state.advance(1);
      if (!state.d.link.online) throw new Error("link did not come up");
      state.template = (() => { state.d.signer.precompute(); const r = state.d.press(); return r; })();
      state.advance(1000);
      return 0;`, { storedKey: true, leak: o.leak === true });
    // One of each kind of work before the baseline.
    const work = async (kind: "rings" | "churn" | "reconnects", n: number) => {
      const batch = kind === "rings" ? 40 : 5000;
      for (let done = 0; done < n; done += batch) {
        const k = Math.min(batch, n - done);
        if (kind === "rings") {
          await run(`for (let i = 0; i < args.n; i++) { state.d.signer.precompute(); const r = state.d.press(); state.advance(1); await r.acked; state.advance(300); }`, { n: k });
        } else if (kind === "churn") {
          await run(`
            const ob = state.d.outbox;
            for (let i = 0; i < args.n; i++) {
              let acked = false;
              ob.add({ topic: state.d.topics.events, payload: state.template.payload, seq: state.template.seq, durable: true, kind: "ring", onAcked: () => { acked = true; } });
              ob.flush(state.d.link.online);
              await 0; await 0;
              if (!acked) throw new Error("churn entry not acknowledged");
            }`, { n: k });
        } else {
          // Drop the session, queue an event while offline, let the link back off and reconnect: the outbox re-sends.
          await run(`
            const ob = state.d.outbox;
            for (let i = 0; i < args.n; i++) {
              state.up = false;
              state.handlers.onClose("connection lost");
              if (state.d.link.online) throw new Error("link still online after a drop");
              ob.add({ topic: state.d.topics.events, payload: state.template.payload, seq: state.template.seq, durable: true, kind: "ring" });
              ob.flush(state.d.link.online);
              state.up = true;
              state.advance(70000);
              await 0; await 0;
              if (!state.d.link.online) throw new Error("link did not come back: " + state.d.link.state);
              if (ob.depth !== 0) throw new Error("outbox not drained after reconnect: " + ob.depth);
            }`, { n: k });
        }
      }
    };
    await work("rings", Math.min(warmup, rings));
    await work("churn", Math.min(warmup * 10, churn));
    await work("reconnects", Math.min(warmup * 10, reconnects));
    const before = await checkpoint();
    runs = 0;
    say(`XS baseline: ${before.currentHeapCount} live slots, ${before.allocate} bytes allocated`);
    const slices = 4;
    for (let s = 0; s < slices; s++) {
      await work("rings", Math.floor(rings / slices));
      await work("churn", Math.floor(churn / slices));
      await work("reconnects", Math.floor(reconnects / slices));
      const m = await checkpoint();
      say(`XS after slice ${s + 1}/${slices}: ${m.currentHeapCount} live slots`);
    }
    const after = await checkpoint();
    // The control: as many runs again, doing nothing.
    const workRuns = runs;
    for (let i = 0; i < workRuns - 1; i++) await run(`return 0;`);
    const control = await checkpoint();
    const harnessSlots = control.currentHeapCount - after.currentHeapCount;
    const final = (await xs.run(`return { slow: state.d.signer.stats.slow, published: state.published, depth: state.d.outbox.depth, keys: state.store.keys().length };`)).value as { slow: number; published: number; depth: number; keys: number };
    return {
      rings: Math.floor(rings / slices) * slices,
      churn: Math.floor(churn / slices) * slices,
      reconnects: Math.floor(reconnects / slices) * slices,
      slotsBefore: before.currentHeapCount,
      slotsAfter: after.currentHeapCount,
      harnessSlots,
      netGrowth: after.currentHeapCount - before.currentHeapCount - harnessSlots,
      runs: workRuns,
      allocatedBefore: before.allocate,
      allocatedAfter: after.allocate,
      slowPath: final.slow,
      published: final.published,
      outboxDepth: final.depth,
      storedKeys: final.keys,
      trace,
    };
  } finally {
    await xs.close().catch(() => {});
  }
}

// ------------------------------------------------------------------ CLI

const CLI = {
  name: "soak",
  usage: `usage: npm run soak -- [--minutes M] [--cycles N] [--damage P] [--seed N] [--skip-chaos] [--skip-xs] [--xs-rings N] [--xs-churn N]

The long reliability soak: a chaos run (a simulated doorbell process under broker
restarts, power cuts and mid-publish drops, every recorded ring checked at the cloud),
then the XS heap run (rings, outbox churn and reconnects on the real XS engine, live
slots compared before and after). Exits 0 only if both pass.

  --minutes M    length of the chaos run (default 5)
  --cycles N     stop after N fault cycles (each: a broker restart, a mid-publish drop, a power cut)
  --damage P     chance (0-1) that a power cut also damages the flash (default 0): rings may then be
                 lost, but none without a signed drop report
  --seed N       fault schedule seed (default from the clock; printed, so a run can be repeated)
  --skip-chaos   only the XS heap run
  --skip-xs      only the chaos run
  --xs-rings N   rings in the XS heap run (default 2000)
  --xs-churn N   outbox fill/drain cycles in the XS heap run (default 20000; reconnects = half)
  -h, --help     this text`,
  options: {
    minutes: { type: "string" }, cycles: { type: "string" }, damage: { type: "string" }, seed: { type: "string" }, "skip-chaos": { type: "boolean" }, "skip-xs": { type: "boolean" },
    "xs-rings": { type: "string" }, "xs-churn": { type: "string" },
  },
} as const;

async function main(args: Parsed<typeof CLI.options>): Promise<number> {
  const v = args.values;
  const minutes = numberOption("minutes", v.minutes, 5);
  const seed = intOption("seed", v.seed, { min: 0, max: 2 ** 31 - 1 }, Date.now() % 100000);
  const say = (line: string) => process.stdout.write(line + "\n");
  let ok = true;
  if (!v["skip-chaos"]) {
    const cycles = intOption("cycles", v.cycles, { min: 1, max: 1_000_000 }, 1_000_000);
    const damage = numberOption("damage", v.damage, 0);
    if (damage > 1) throw new UserError("--damage is a chance from 0 to 1");
    say(`chaos soak: ${minutes} min, seed ${seed}${cycles < 1_000_000 ? `, ${cycles} cycles` : ""}, flash damage at ${damage * 100}% of power cuts`);
    const report = await runChaos({ seed, cycles, maxMs: minutes * 60_000, settleMs: 120_000, damage, log: (l) => say(`  ${l}`) });
    say(JSON.stringify({ ...report, unrecordedDelivered: report.unrecordedDelivered.length, unrecordedNotAllowed: report.unrecordedDelivered.filter((u) => !u.allowed) }, null, 2));
    say(`presses ${report.presses}, broker restarts ${report.brokerRestarts} (${report.crashesInWindow} between routing and PUBACK), power cuts ${report.powerCuts} (flash damaged at ${Object.values(report.damage).reduce((a, b) => a + b, 0)}), mid-publish drops ${report.midPublishDrops}`);
    say(`rings pressed ${report.presses}, delivered ${report.ringsDelivered} (${report.unrecordedDelivered.length} of them written just before a power cut, never printed), lost ${report.lost.length}, reported ${report.lostReported.length}, lost without a signed report ${report.lostUnreported.length}; duplicates delivered ${report.duplicatesDelivered} (redeliveries de-duplicated: ${report.redeliveries}); drop reports ${report.dropReports}, sequence recoveries reported ${report.recoveryReports}`);
    ok &&= report.ok;
  }
  if (!v["skip-xs"]) {
    const rings = intOption("xs-rings", v["xs-rings"], { min: 1, max: 10_000_000 }, 2000);
    const churn = intOption("xs-churn", v["xs-churn"], { min: 0, max: 10_000_000 }, 20000);
    say(`XS heap soak: ${rings} rings, ${churn} outbox cycles, ${churn / 2} reconnects`);
    const heap = await measureXsHeap({ rings, churn, reconnects: churn / 2, log: (l) => say(`  ${l}`) });
    say(JSON.stringify(heap, null, 2));
    say(`XS heap: ${heap.slotsBefore} → ${heap.slotsAfter} live slots over ${heap.runs} harness runs (harness itself: +${heap.harnessSlots}; doorbell: ${heap.netGrowth >= 0 ? "+" : ""}${heap.netGrowth}), allocated ${heap.allocatedBefore} → ${heap.allocatedAfter} bytes`);
    ok &&= heap.netGrowth <= XS_GROWTH_BOUND_SLOTS && heap.slowPath === 0 && heap.outboxDepth === 0;
  }
  say(ok ? "soak passed" : "SOAK FAILED");
  return ok ? 0 : 1;
}

function numberOption(name: string, text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (text.trim() === "" || !Number.isFinite(n) || n <= 0) throw new UserError(`--${name} must be a positive number (got ${JSON.stringify(text)})`);
  return n;
}

runAsEntry(import.meta.url, CLI, main);
