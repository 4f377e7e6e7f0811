/*
 * A scripted day on the device model, for `npm run bench`: the real core
 * (Doorbell, signer and nonce policy, AccessControl with its rate limits,
 * QueuedCrypto) run on a virtual clock, with every piece of work charged its
 * XS meter cost on the ESP32-S3 model, on the core that does it.
 *
 * Two machines are modelled. The main machine runs one task at a time, to the
 * end: a press, a command or a timer that arrives while it is busy waits. The
 * worker (second core) runs one crypto job at a time, in the order
 * QueuedCrypto posts them. The same day runs twice:
 *  - one core: today's single-machine design (no crypto port: nonces are
 *    precomputed on the main machine while idle, a grant's verify and
 *    box.before and an update's verify run there, an empty pool is a full sign);
 *  - with the worker: the same code given a HeavyCrypto on the second core.
 *
 * What is charged (costs measured on XS in the same run, turned into ms the
 * way the rest of the bench does: meter units → x86 instructions through the
 * full-sign calibration → 240 MHz, one instruction per cycle, a lower bound):
 *  - signing an event: the ring path, a status event or a snapshot manifest
 *    (three recipients), each without its SHA-512, which is native on the
 *    device; an empty pool on one core: a full sign;
 *  - a nonce: one full sign's worth (main machine on one core, worker otherwise);
 *  - a command: its check as measured (accept, revoke, each kind of refusal);
 *    a grant on one core adds the verify and one box.before per new user;
 *  - an update job: one Ed25519 verify, at most as often as the job
 *    rate limit allows when the agent has one (worker run) — the one-core run is
 *    today's design, which verifies every job it is sent;
 *  - a snapshot: its JS framing (100 KB in 8 KB chunks); the camera and the
 *    uplink take time but no main-machine CPU.
 * Not charged: native AES-GCM, SHA-256 and SHA-512 (hardware or C), message
 * delivery between the machines, and MQTT/TLS work, which both runs share.
 */
import nacl from "tweetnacl";
import { Doorbell, DEFAULT_NONCE_POOL, DEFAULT_NONCE_RESERVE } from "../../modules/core/doorbell";
import { AccessControl, type CommandOutcome } from "../../modules/core/commands";
import { QueuedCrypto, runCryptoJob, type CryptoJob, type CryptoReply, type HeavyCrypto } from "../../modules/core/heavy-crypto";
import { TokenBucket } from "../../modules/core/budget";
import { EVENT_DOMAIN } from "../../modules/core/events";
import type { Clock, MqttTransport } from "../../modules/core/ports";
import { utf8Decode, utf8Encode } from "../../modules/core/bytes";
import { MemoryStore } from "../../modules/host/file-store";
import { MemorySecretStore, OwnerApp, UserApp, createDeviceBoxKeys, createUserKeys } from "../owner-app";
import { SeededRandom } from "../xs/deterministic";
import { startXsCore } from "../xs/core";
import { DOORBELL_SETUP, ESP32_HZ } from "./xs-ring";
import type { CommandCosts } from "./xs-commands";

// ---- costs on the model ----

export interface TimelineCosts {
  /** Main-machine ms. */
  ring: number;
  status: number;
  manifest: number;
  fullSign: number;
  precompute: number;
  verify: number;
  boxBefore: number;
  commandAccept: number;
  grantMac: number;
  revoke: number;
  refusalBadMac: number;
  refusalUnknown: number;
  refusalMalformed: number;
  snapshotFraming: number;
  /** Meter units behind the figures above, for the JSON. */
  units: Record<string, number>;
}

/** Meter the event-signing steps on XS; command and calibration costs come from measureCommandCosts. */
export async function measureTimelineCosts(commands: CommandCosts, snapshotJsPerKb8k: number): Promise<TimelineCosts> {
  const xs = await startXsCore({ name: "xs-timeline", stdout: "ignore", timeoutMs: 10 * 60_000 });
  const u: Record<string, number> = {};
  try {
    await xs.run(DOORBELL_SETUP + `
      const { FootageKeys } = importNow("core/footage-keys");
      const { manifestFields } = importNow("core/snapshot");
      state.signingMessage = importNow("core/events").signingMessage;
      const ring = (n) => ({ generation: 1, footageRecipients: () => Array.from({ length: n }, (_, i) => ({ user: "user-" + i, key: new Uint8Array(32).fill(i + 1) })) });
      state.keys3 = new FootageKeys({ keyring: ring(3), random: new SeededRandom(3) });
      state.manifestFields = manifestFields;
      state.d = state.make(8); state.d.start();
      while (state.d.signer.precompute());`);
    const metered = async (body: string) => {
      const r = await xs.run<{ compute: number; n: number }>(body);
      return r.value;
    };
    // Each event: its cost, and the JS SHA-512 of its R‖A‖M inside it (native on the device).
    const event = async (name: string, make: string) => {
      const { compute, n } = await metered(`
        const fields = ${make};
        const m = measure(() => state.d.emit(fields.type, fields.fields));
        return { compute: m.compute, n: 64 + state.signingMessage(m.value.event).length };`);
      const sha = (await metered(`const input = new Uint8Array(${n}); const m = measure(() => state.nacl.hash(input)); return { compute: m.compute, n: 0 };`)).compute;
      u[name] = compute;
      u[`${name}Sha512`] = sha;
      return compute - sha;
    };
    const ring = await event("ring", `({ type: "ring", fields: {} })`);
    const status = await event("status", `({ type: "status", fields: { snapshot: "request", user: "resident-1" } })`);
    const manifest = await event("manifest", `({ type: "snapshot", fields: state.manifestFields({ ring: 41, id: new Uint8Array(16).fill(2), size: 102400, chunks: 13, chunkBytes: 8192, digest: new Uint8Array(32), wrapping: state.keys3.wrapContentKey(new Uint8Array(32).fill(1), new Uint8Array(16).fill(2)) }) })`);
    u.wrap3 = (await metered(`const m = measure(() => state.keys3.wrapContentKey(new Uint8Array(32).fill(1), new Uint8Array(16).fill(2))); return { compute: m.compute, n: 0 };`)).compute;
    u.precompute = (await metered(`while (state.d.signer.ready) state.d.signer.sign(new Uint8Array(1)); const m = measure(() => state.d.signer.precompute()); return { compute: m.compute, n: 0 };`)).compute;
    u.fullSign = (await metered(`while (state.d.signer.ready) state.d.signer.sign(new Uint8Array(1)); const m = measure(() => state.d.press()); return { compute: m.compute, n: 0 };`)).compute;
    const perUnit = 870e6 / commands.sign;
    const ms = (units: number) => (units * perUnit / ESP32_HZ) * 1000;
    const cost = (prefix: string) => {
      const c = commands.costs.find(([n]) => n.startsWith(prefix));
      if (!c) throw new Error(`timeline: no command cost "${prefix}"`);
      return c[1];
    };
    u.verify = commands.verify;
    u.boxBefore = commands.boxBefore;
    u.grant = cost("grant");
    return {
      ring: ms(ring),
      status: ms(status),
      manifest: ms(manifest + u.wrap3),
      fullSign: ms(u.fullSign),
      precompute: ms(u.precompute),
      verify: ms(commands.verify),
      boxBefore: ms(commands.boxBefore),
      commandAccept: ms(cost("command check")),
      grantMac: ms(Math.max(0, u.grant - commands.verify - commands.boxBefore)),
      revoke: ms(cost("revoke one")),
      refusalBadMac: ms(cost("refusal: bad-mac")),
      refusalUnknown: ms(cost("refusal: unknown-sender")),
      refusalMalformed: ms(cost("refusal: 4000 B")),
      snapshotFraming: ms(snapshotJsPerKb8k * 100),
      units: u,
    };
  } finally {
    await xs.close();
  }
}

// ---- the virtual device ----

const WALL0 = 1_790_000_000_000;

class Machine {
  now = 0;
  #free = 0;
  #seq = 0;
  #events: Array<{ at: number; seq: number; fn: () => void }> = [];
  readonly clock: Clock = {
    monotonic: () => this.now,
    wallTime: () => WALL0 + Math.floor(this.now),
    schedule: (fn, delayMs) => this.at(this.now + Math.max(0, delayMs), fn),
  };

  at(at: number, fn: () => void): () => void {
    const e = { at, seq: this.#seq++, fn };
    let i = this.#events.length;
    while (i > 0 && (this.#events[i - 1].at > at || (this.#events[i - 1].at === at && this.#events[i - 1].seq > e.seq))) i--;
    this.#events.splice(i, 0, e);
    return () => {
      const k = this.#events.indexOf(e);
      if (k >= 0) this.#events.splice(k, 1);
    };
  }

  /** Work on the main machine: time moves on while it computes. */
  charge(ms: number): void {
    this.now += ms;
  }

  /** Run every task due by `until`, one at a time; each waits for the machine to be free. */
  async run(until: number): Promise<void> {
    for (;;) {
      const e = this.#events[0];
      if (!e || e.at > until) break;
      this.#events.shift();
      this.now = Math.max(e.at, this.#free);
      e.fn();
      // Promise continuations started by the task run as part of it.
      await new Promise((r) => setImmediate(r));
      this.#free = this.now;
    }
    this.now = Math.max(this.now, until);
  }
}

/** The second core: one job at a time, each taking its modelled time; replies arrive as main-machine tasks. */
function workerCore(m: Machine, costs: TimelineCosts): QueuedCrypto {
  let free = 0;
  let deliver!: (r: CryptoReply) => void;
  return new QueuedCrypto({
    post(job: CryptoJob) {
      const copy: CryptoJob = { ...job, a: job.a.slice(), b: job.b?.slice(), c: job.c?.slice() };
      const start = Math.max(m.now, free);
      free = start + (copy.op === "point" ? costs.precompute : copy.op === "verify" ? costs.verify : costs.boxBefore);
      const reply = runCryptoJob(copy);
      m.at(free, () => deliver(reply));
    },
    listen(r) {
      deliver = r;
    },
  }, { maxQueued: 32 });
}

function percentile(values: number[], p: number): number {
  if (values.length === 0) return 0;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
}

export interface TimelineRun {
  mode: string;
  presses: number;
  pressToSigned: { worst: number; p99: number; p50: number };
  /** Presses whose ring found no precomputed nonce (a full sign on one core; a nonce made for it on the worker). */
  slowPath: number;
  /** Worst press → signed per pattern of the day. */
  byPattern: Record<string, { presses: number; worst: number; slow: number; lost: number }>;
  /** Presses the debouncer merged with another because the machine handled their edges too late. */
  lost: number;
  revokes: number[];
  revokeWorst: number;
  grantOutcomes: string[];
  updateVerifies: number;
  snapshots: number;
  commands: Record<string, number>;
  mainBusyMs: number;
}

/** One scripted day. Deterministic: seeded randomness, virtual time. */
export async function runDay(kind: "one core" | "with worker", costs: TimelineCosts, mode: string = kind): Promise<TimelineRun> {
  const m = new Machine();
  const random = new SeededRandom(11);
  const crypto: HeavyCrypto | undefined = kind === "with worker" ? workerCore(m, costs) : undefined;
  const thing = "timeline-porch";
  const deviceBox = createDeviceBoxKeys(random);
  const ownerKeys = createUserKeys("owner", "owner", random);
  const residentKeys = createUserKeys("resident-1", "resident", random);
  const guestKeys = createUserKeys("guest", "viewer", random);
  const attackerKeys = createUserKeys("mallory", "viewer", random);
  const now = () => m.clock.wallTime()!;
  const owner = new OwnerApp({ keys: ownerKeys, thing, deviceBoxPublicKey: deviceBox.publicKey, now, random });
  const resident = new UserApp({ keys: residentKeys, thing, deviceBoxPublicKey: deviceBox.publicKey, now, random });
  const attacker = new UserApp({ keys: attackerKeys, thing, deviceBoxPublicKey: deviceBox.publicKey, now, random });
  let busyMs = 0;
  const charge = (ms: number) => {
    m.charge(ms);
    busyMs += ms;
  };

  // The doorbell, with its signer instrumented: each signature charges its event's cost and is timed.
  const transport: MqttTransport = {
    connect: (h) => h.onConnect(),
    publish: () => Promise.resolve(),
    subscribe: () => Promise.resolve(),
    close: () => {},
  };
  let snapshotBusy = false;
  /** Presses the doorbell has taken in, oldest first, each waiting for its ring's signature. */
  const unsigned: Array<{ at: number; pattern: string }> = [];
  const results: Array<{ pattern: string; delay: number; slow: boolean }> = [];
  const ringSigned = (slow: boolean) => {
    const p = unsigned.shift();
    if (!p) throw new Error("timeline: a ring was signed that no press asked for");
    results.push({ pattern: p.pattern, delay: m.now - p.at, slow });
  };
  const doorbell = new Doorbell({
    thing, signingSeed: new Uint8Array(32).fill(21), clock: m.clock, random, store: new MemoryStore(), transport, log: () => {},
    crypto,
    onPress: () => {
      if (arriving) unsigned.push(arriving);
      arriving = undefined;
    },
    onRing: (ring) => void ring.acked.then(() => startSnapshot(ring.seq)),
    mayPrecompute: () => !snapshotBusy,
  });
  const signer = doorbell.signer;
  const domainLength = utf8Encode(EVENT_DOMAIN).length;
  const typeOf = (message: Uint8Array) => (JSON.parse(utf8Decode(message.subarray(domainLength))) as { type: string }).type;
  const eventCost = (type: string) => (type === "ring" ? costs.ring : type === "snapshot" ? costs.manifest : costs.status);
  const sign = signer.sign.bind(signer);
  signer.sign = (message) => {
    const type = typeOf(message);
    const slow = signer.ready === 0;
    charge(slow ? costs.fullSign : eventCost(type));
    if (type === "ring") ringSigned(slow);
    return sign(message);
  };
  const signWhenReady = signer.signWhenReady.bind(signer);
  signer.signWhenReady = async (message, c) => {
    if (signer.ready > 0) return signWhenReady(message, c);
    const signature = await signWhenReady(message, c);
    const type = typeOf(message);
    charge(eventCost(type));
    if (type === "ring") ringSigned(true);
    return signature;
  };
  const precompute = signer.precompute.bind(signer);
  signer.precompute = () => {
    const made = precompute();
    if (made) charge(costs.precompute);
    return made;
  };

  // A snapshot: camera 200 ms, chunks out over 1.5 s (framing on the main machine), then its signed manifest.
  let snapshots = 0;
  function startSnapshot(ring: number): void {
    if (snapshotBusy) return;
    snapshotBusy = true;
    m.clock.schedule(() => {
      charge(costs.snapshotFraming);
      m.clock.schedule(() => {
        void doorbell.emitWhenReady("snapshot", { ring, note: "manifest" }).then(() => {
          snapshots++;
          snapshotBusy = false;
        }, () => (snapshotBusy = false));
      }, 1500);
    }, 200);
  }

  // Commands, wired as the firmware wires them.
  const access = new AccessControl({
    thing, secrets: new MemorySecretStore(), store: new MemoryStore(), random, clock: m.clock, log: () => {},
    deviceBoxSecretKey: deviceBox.secretKey, owner: ownerKeys.identity, crypto,
    // One core: the grant's verify (and box.before, below) on this machine.
    verifySignature: (msg, sig, key) => {
      charge(costs.verify);
      return nacl.sign.detached.verify(msg, sig, key);
    },
  });
  const commandCounts: Record<string, number> = {};
  const grantOutcomes: string[] = [];
  const answer = (outcome: CommandOutcome) => {
    try {
      owner.read(outcome.reply);
    } catch {
      // A reply to someone else.
    }
    const key = outcome.ok ? `${outcome.op} ok` : `${outcome.reason}`;
    commandCounts[key] = (commandCounts[key] ?? 0) + 1;
    if (outcome.op === "access-update") grantOutcomes.push(outcome.ok ? "applied" : `refused: ${outcome.reason}`);
    if (outcome.ok && outcome.action?.type === "snapshot" && !snapshotBusy) {
      void doorbell.emitWhenReady("status", { snapshot: "request", user: outcome.action.user }).then((e) => startSnapshot(e.seq));
    }
    if (outcome.ok && outcome.action?.type === "access-changed") {
      owner.gen = resident.gen = attacker.gen = access.generation;
      if (!crypto) charge(costs.boxBefore * outcome.action.change.added.length);
    }
  };
  const commandCost = (o: CommandOutcome) => {
    if (o.ok) return o.op === "revoke" || o.op === "revoke-all" ? costs.revoke : o.op === "access-update" ? costs.grantMac : costs.commandAccept;
    if (o.reason === "bad-mac" || o.reason === "busy" || o.reason === "replay") return costs.refusalBadMac;
    if (o.reason === "malformed") return costs.refusalMalformed;
    return costs.refusalUnknown;
  };
  const revokeLatencies: number[] = [];
  /** A command arrives at `at`; for a revoke, record arrival → in force. */
  const command = (at: number, make: () => Uint8Array, revokes?: string) => {
    m.at(at, () => {
      const payload = make();
      if (crypto) {
        const pending = access.submitCommand(payload);
        // Everything but a grant's curve work is done (and in force) when submitCommand returns.
        let enforcedAt: number | undefined;
        if (revokes !== undefined) {
          charge(costs.revoke);
          enforcedAt = m.now;
        }
        void pending.then((o) => {
          if (revokes === undefined) charge(commandCost(o));
          else if (o.ok && access.list.user(revokes) === undefined) revokeLatencies.push(enforcedAt! - at);
          answer(o);
        });
      } else {
        const o = access.handleCommand(payload);
        charge(commandCost(o));
        if (revokes !== undefined && o.ok && access.list.user(revokes) === undefined) revokeLatencies.push(m.now - at);
        answer(o);
      }
    });
  };

  // Update jobs: one verify each. One core, today: every job is verified when it arrives. With the
  // worker: on the worker, as often as the agent's rate allows, a newer job replacing one still waiting.
  let updateVerifies = 0;
  const release = nacl.sign.keyPair.fromSeed(new Uint8Array(32).fill(31));
  const manifestMessage = utf8Encode("doorward/release/v1\n" + "x".repeat(300));
  const manifestSig = nacl.sign.detached(manifestMessage, release.secretKey);
  const verifies = new TokenBucket({ capacity: 3, everyMs: 20 * 60_000, clock: m.clock });
  let waitingJob = 0;
  const job = (at: number, genuine: boolean) => {
    m.at(at, () => {
      const sig = genuine ? manifestSig : manifestSig.map((b, i) => (i === 3 ? b ^ 1 : b));
      if (!crypto) {
        m.clock.schedule(() => {
          updateVerifies++;
          charge(costs.verify);
          nacl.sign.detached.verify(manifestMessage, sig, release.publicKey);
        }, 0);
        return;
      }
      const mine = ++waitingJob;
      const attempt = () => {
        if (mine !== waitingJob) return;
        if (!verifies.take()) return void m.clock.schedule(attempt, verifies.waitMs());
        updateVerifies++;
        void crypto.verify(manifestMessage, sig, release.publicKey);
      };
      attempt();
    });
  };

  // Presses: a raw edge and its release; each press is matched with the next ring signature.
  let pressCount = 0;
  let arriving: { at: number; pattern: string } | undefined;
  const lost: Record<string, number> = {};
  const press = (at: number, pattern: string) => {
    pressCount++;
    m.at(at, () => {
      arriving = { at, pattern };
      doorbell.edge(true);
      // Not taken: its edges were handled so late that the debouncer saw them as one bounce.
      if (arriving) lost[pattern] = (lost[pattern] ?? 0) + 1;
      arriving = undefined;
    });
    m.at(at + 80, () => doorbell.edge(false));
  };

  // ---- the day ----
  doorbell.start();
  await m.run(120_000);
  let t = 120_000;
  const s = 1000;
  // A visitor who presses twice in 10 s, three times in the day.
  for (const base of [t, t + 3607 * s, t + 7207 * s]) { press(base, "2 presses in 10 s"); press(base + 10 * s, "2 presses in 10 s"); }
  t += 120 * s;
  // Five presses in 60 s, each with its snapshot.
  for (let i = 0; i < 5; i++) press(t + i * 12 * s, "5 presses in 60 s + snapshots");
  t += 180 * s;
  // The resident is a user; then a grant, with a revoke arriving 2 s into its verify, and a press meanwhile.
  command(t, () => owner.addUser(residentKeys.identity).payload);
  t += 60 * s;
  command(t, () => owner.addUser(guestKeys.identity).payload);
  command(t + 2 * s, () => owner.revoke("resident-1").payload, "resident-1");
  press(t + 4 * s, "during a grant and a revoke");
  t += 60 * s;
  command(t, () => owner.addUser(residentKeys.identity).payload);
  command(t + 30 * s, () => owner.addUser(attackerKeys.identity).payload);
  t += 120 * s;
  // An update job, with presses during its verify.
  job(t, true);
  press(t + 1 * s, "during an update verify");
  press(t + 3 * s, "during an update verify");
  t += 120 * s;
  // A command flood: a listed user (later revoked) hammering snapshot requests, junk and forged MACs, forged job notifications.
  for (let i = 0; i < 100; i++) command(t + i * 100, () => attacker.command("snapshot").payload);
  for (let i = 0; i < 200; i++) {
    command(t + 50 + i * 50, () => {
      // A forged box: one base64 character of it changed, so the MAC fails.
      const bad = attacker.command("snapshot").payload.slice();
      bad[20] = bad[20] === 0x41 ? 0x42 : 0x41;
      return bad;
    });
  }
  for (let i = 0; i < 100; i++) command(t + 25 + i * 100, () => new Uint8Array(4000).fill(0x5b));
  for (let i = 0; i < 10; i++) job(t + i * 6 * s, false);
  press(t + 2 * s, "during a command flood");
  press(t + 5 * s, "during a command flood");
  command(t + 6 * s, () => owner.revoke("mallory").payload, "mallory");
  press(t + 30 * s, "during a command flood");
  t += 240 * s;
  // A ring every 30 s for an hour, each with its snapshot; a grant and a revoke during it.
  for (let i = 0; i < 120; i++) press(t + i * 30 * s, "a ring every 30 s for an hour");
  command(t + 1800 * s, () => owner.addUser(guestKeys.identity).payload);
  command(t + 1801 * s, () => owner.revoke("guest").payload, "guest");
  t += 3700 * s;
  await m.run(t + 8000 * s);
  doorbell.stop();

  const lostCount = Object.values(lost).reduce((a, b) => a + b, 0);
  if (results.length + lostCount !== pressCount || unsigned.length) throw new Error(`timeline: ${pressCount} presses, ${lostCount} lost, but ${results.length} rings signed`);
  const delays = results.map((r) => r.delay);
  const byPattern: TimelineRun["byPattern"] = {};
  let slowPath = 0;
  for (const r of results) {
    const b = (byPattern[r.pattern] ??= { presses: 0, worst: 0, slow: 0, lost: lost[r.pattern] ?? 0 });
    b.presses++;
    b.worst = Math.max(b.worst, r.delay);
    if (r.slow) {
      b.slow++;
      slowPath++;
    }
  }
  return {
    mode,
    presses: pressCount,
    lost: lostCount,
    pressToSigned: { worst: Math.max(...delays), p99: percentile(delays, 99), p50: percentile(delays, 50) },
    slowPath,
    byPattern,
    revokes: revokeLatencies,
    revokeWorst: revokeLatencies.length ? Math.max(...revokeLatencies) : NaN,
    grantOutcomes,
    updateVerifies,
    snapshots,
    commands: commandCounts,
    mainBusyMs: busyMs,
  };
}

/** Every cost times `factor`: the model is a lower bound, and tweetnacl's Float64 code runs 1.3–3× slower on the chip. */
export function scaledCosts(costs: TimelineCosts, factor: number): TimelineCosts {
  const out = { ...costs, units: costs.units };
  for (const k of Object.keys(out) as Array<keyof TimelineCosts>) if (k !== "units") (out[k] as number) = (costs[k] as number) * factor;
  return out;
}

export const TIMELINE_POLICY = { pool: DEFAULT_NONCE_POOL, reserve: DEFAULT_NONCE_RESERVE };
