/*
 * The doorbell: wires the ports into the ring path.
 *
 * press → debounce → ring event {v,type,thing,boot,seq,time} → Ed25519 signature
 * (online half only, from a precomputed nonce) → outbox → QoS 1 publish on
 * doorward/<thing>/events. Everything slow (nonce precomputation) happens while
 * the bell is idle, scheduled through the one clock; the press itself does a
 * canonical encode, one SHA-512 and a little BigInt arithmetic.
 *
 * With a HeavyCrypto port on a second core (./heavy-crypto) the pool is kept
 * full by the worker, one nonce at a time, whatever the main machine is doing.
 * The nonce policy then has two more rules:
 *  - the last `nonceReserve` nonces are for rings only: a snapshot, status or
 *    audit event that finds only the reserve waits (emitWhenReady) for the
 *    worker's next nonce, so it never takes the nonce the next press needs;
 *  - a press that finds the pool empty does not block for a full sign: its
 *    event is stamped at the press and signed with a nonce made for it on the
 *    worker, ahead of every refill. Counted (signer.stats.waited) and logged.
 */
import type { Button, Clock, KeyValueStore, Log, MqttTransport, Random, Sha512 } from "./ports";
import { Debouncer } from "./debounce";
import { sealEvent, signingMessage, EVENT_VERSION, type DoorEvent, type EventType } from "./events";
import type { Json } from "./canonical";
import { Link } from "./link";
import { Outbox, type OutboxKind, type OutboxOptions } from "./outbox";
import { SequenceCounter } from "./sequence";
import { Ed25519Signer } from "./signer";
import type { HeavyCrypto } from "./heavy-crypto";
import { assertThingName, topicsFor } from "./topics";

/** How long to wait before asking again when precomputation was deferred. */
const PRECOMPUTE_RETRY_MS = 500;
/** How long a drop report waits for a precomputed nonce before it is signed anyway. */
const REPORT_RETRY_MS = 1000;
/** At most one drop report per this interval: a flood of drops becomes one report with the totals. */
const REPORT_MIN_INTERVAL_MS = 30_000;
/**
 * Pool and reserve (see `npm run bench`, device timeline): with one nonce per
 * ~3.6 s from the worker on the device model, 8 nonces carry 5 rings with
 * their snapshots in a minute, and 2 held back for rings cover a visitor who
 * presses twice while a grant's verify holds the worker.
 */
export const DEFAULT_NONCE_POOL = 8;
export const DEFAULT_NONCE_RESERVE = 2;

export type OutboxSettings = Pick<OutboxOptions, "flashBytes" | "capacity" | "volatileCapacity" | "window">;

export interface DoorbellOptions {
  thing: string;
  /** The device's Ed25519 seed (32 bytes), from the secret store. */
  signingSeed: Uint8Array;
  /** The matching public key, if stored: saves deriving it at boot. */
  signingPublicKey?: Uint8Array;
  clock: Clock;
  random: Random;
  store: KeyValueStore;
  transport: MqttTransport;
  log: Log;
  button?: Button;
  sha512?: Sha512;
  noncePoolSize?: number;
  /** Nonces held back for rings (default DEFAULT_NONCE_RESERVE, at most poolSize - 1). */
  nonceReserve?: number;
  /**
   * Where nonce points are made. With a concurrent one (a worker), refills run
   * at once and in parallel, and an empty pool never blocks a press; without
   * one, precomputation runs on this machine while idle, as `mayPrecompute` allows.
   */
  crypto?: HeavyCrypto;
  debounceMs?: number;
  /** Idle time before topping up the nonce pool, so precomputation never competes with a burst of activity. */
  precomputeDelayMs?: number;
  /**
   * Asked before each idle nonce precomputation, which blocks a single-threaded
   * engine for seconds on the device: return false to defer it (e.g. while a
   * snapshot is streaming).
   */
  mayPrecompute?: () => boolean;
  /** False while no true entropy source feeds `random`: no nonce is made, events are signed deterministically (see ./signer). */
  entropyReady?: () => boolean;
  /** Called synchronously at each recognised press, before signing: drive the chime and LED from here. */
  onPress?: () => void;
  /** Called when a ring's event has been sealed (signed bytes ready). */
  onRing?: (ring: RingRecord) => void;
  /** Extra topic filters to subscribe (the commands topic is always subscribed). */
  subscriptions?: string[];
  /** The link came up (first connect and every reconnect). */
  onOnline?: () => void;
  /** Inbound messages (commands, shadow deltas, jobs): routed by the features that own those topics. */
  onMessage?: (topic: string, payload: Uint8Array) => void;
  /** Outbox limits (see ./outbox): flash budget in bytes, durable and volatile entries, publishes in flight. */
  outbox?: OutboxSettings;
}

export interface SentEvent {
  seq: number;
  event: DoorEvent;
  payload: Uint8Array;
  /** Resolves on the broker's PUBACK (possibly after reconnects). Never settles if the full outbox dropped it. */
  acked: Promise<void>;
  /** In flash when emit() returned: it survives a power cut. */
  stored: boolean;
}
export type RingRecord = SentEvent;

export class Doorbell {
  readonly thing: string;
  readonly topics: ReturnType<typeof topicsFor>;
  readonly sequence: SequenceCounter;
  readonly signer: Ed25519Signer;
  readonly link: Link;
  /** Signed events are written to flash before they are sent (the same store as the sequence marks). */
  readonly outbox: Outbox;
  rings = 0;
  /** Audit reports waiting for start() and a precomputed nonce. */
  #audits: Array<Record<string, Json>> = [];
  #auditPending: (() => void) | undefined;
  #options: DoorbellOptions;
  #debouncer: Debouncer;
  #cancelPrecompute: (() => void) | undefined;
  #started = false;
  #reportPending: (() => void) | undefined;
  #lastReportAt = -Infinity;
  #crypto: HeavyCrypto | undefined;
  #refilling = false;
  #retryTopUp: (() => void) | undefined;
  /** Events waiting for a nonce beyond the reserve, oldest first. */
  /** Events waiting for a nonce; called with true, one signs without one (deterministically). */
  #waiting: Array<(force?: boolean) => boolean> = [];
  readonly nonceReserve: number;

  constructor(options: DoorbellOptions) {
    this.#options = options;
    this.thing = assertThingName(options.thing);
    this.topics = topicsFor(this.thing);
    // The outbox first: if a counter copy is damaged, what it holds is part of the evidence for where to resume.
    this.outbox = new Outbox({
      ...options.outbox,
      transport: options.transport,
      log: options.log,
      store: options.store,
      onDrop: () => this.#scheduleDropReport(Math.max(0, this.#lastReportAt + REPORT_MIN_INTERVAL_MS - options.clock.monotonic())),
      onStall: (reason) => this.link.drop(reason),
    });
    this.sequence = new SequenceCounter(options.store, { evidence: { highestSeq: this.outbox.highestSeq, highestBoot: this.outbox.ledger.boot, ranBefore: this.outbox.foundInFlash } });
    this.outbox.noteBoot(this.sequence.boot, this.sequence.highWater);
    const recovered = this.sequence.recovery;
    if (recovered) {
      options.log("error", "sequence counter damaged or missing: recovered", { basis: recovered.basis, seq: recovered.seq, boot: recovered.boot, found: JSON.stringify(recovered.found) });
      this.report({ report: "sequence-recovered", basis: recovered.basis, found: recovered.found, resumed: recovered.seq });
    }
    this.signer = new Ed25519Signer(options.signingSeed, {
      random: options.random,
      boot: this.sequence.boot,
      publicKey: options.signingPublicKey,
      sha512: options.sha512,
      poolSize: options.noncePoolSize ?? DEFAULT_NONCE_POOL,
      onRngFailure: (reason) => options.log("error", "RNG failed its health tests: no more precomputed nonces this boot, every event is signed deterministically", { reason }),
      entropyReady: options.entropyReady,
    });
    this.nonceReserve = Math.max(0, Math.min(options.nonceReserve ?? DEFAULT_NONCE_RESERVE, this.signer.poolSize - 1));
    this.#crypto = options.crypto?.concurrent ? options.crypto : undefined;
    this.link = new Link({
      transport: options.transport,
      clock: options.clock,
      random: options.random,
      log: options.log,
      subscriptions: [this.topics.commands, ...(options.subscriptions ?? [])],
      onOnline: () => {
        this.outbox.flush(true);
        options.onOnline?.();
      },
      onOffline: () => this.outbox.linkLost(),
      onMessage: (topic, payload) => options.onMessage?.(topic, payload),
    });
    this.#debouncer = new Debouncer({
      quietMs: options.debounceMs,
      now: () => options.clock.monotonic(),
      onPress: () => this.#pressed(),
    });
  }

  start(): void {
    if (this.#started) return;
    this.#started = true;
    this.#options.log("info", "doorbell starting", { thing: this.thing, boot: this.sequence.boot });
    this.#options.button?.start((pressed) => this.#debouncer.edge(pressed));
    this.link.start();
    this.#schedulePrecompute(0);
    if (this.outbox.needsReport()) this.#scheduleDropReport(0);
    if (this.#audits.length) this.#scheduleAudits(0);
  }

  /**
   * Queue a signed audit event about the device itself (a recovery at boot, say). It is
   * signed once the bell is started and a precomputed nonce is ready (bounded wait), so
   * a report never costs a press the slow path.
   */
  report(fields: Record<string, Json>): void {
    this.#audits.push(fields);
    if (this.#started) this.#scheduleAudits(0);
  }

  #scheduleAudits(delayMs: number): void {
    if (this.#auditPending) return;
    this.#auditPending = this.#options.clock.schedule(() => {
      this.#auditPending = undefined;
      if (!this.#started) return;
      if (this.spareNonces === 0 && delayMs < 8 * REPORT_RETRY_MS) return this.#scheduleAudits(delayMs + REPORT_RETRY_MS);
      for (const fields of this.#audits.splice(0)) {
        try {
          this.emit("audit", fields);
        } catch (e) {
          this.#options.log("error", "audit report failed", { reason: String(e) });
        }
      }
    }, delayMs);
  }

  stop(): void {
    this.#started = false;
    this.#cancelPrecompute?.();
    this.#retryTopUp?.();
    this.#retryTopUp = undefined;
    this.#waiting = [];
    this.#reportPending?.();
    this.#reportPending = undefined;
    this.#auditPending?.();
    this.#auditPending = undefined;
    this.#options.button?.stop();
    this.link.stop();
  }

  /** A raw button edge (for adapters that cannot call the Button port themselves). */
  edge(pressed: boolean): void {
    this.#debouncer.edge(pressed);
  }

  /** A debounced press: the ring path. */
  press(): RingRecord {
    this.#options.onPress?.();
    const ring = this.emit("ring", {});
    this.#ringed(ring);
    return ring;
  }

  #ringed(ring: RingRecord): void {
    this.#options.log("info", "ring", { seq: ring.seq, online: this.link.online });
    this.#options.onRing?.(ring);
  }

  /** The button's path: with a worker and an empty pool, the ring is signed when its own nonce arrives. */
  #pressed(): void {
    const crypto = this.#crypto;
    if (!crypto || this.signer.ready > 0) {
      this.press();
      return;
    }
    this.#options.onPress?.();
    const time = this.#options.clock.wallTime() ?? null;
    this.#options.log("warn", "nonce pool empty: ring waits for a nonce from the worker", {});
    void this.#sealWithOwnNonce(crypto, time);
  }

  async #sealWithOwnNonce(crypto: HeavyCrypto, time: number | null): Promise<void> {
    const event = this.#event("ring", {}, time);
    let sealed: Uint8Array | null = null;
    try {
      const signature = await this.signer.signWhenReady(signingMessage(event), crypto);
      sealed = sealEvent(event, { publicKey: this.signer.publicKey, sign: () => signature });
    } catch (e) {
      // The worker failed or is gone: the ring is still signed, here, on the slow path (#queue logs it).
      this.#options.log("error", "crypto worker failed; ring signed on this machine", { reason: String((e as Error)?.message ?? e) });
      this.#workerGone();
    }
    if (!this.#started) return;
    try {
      this.#ringed(this.#queue(event, sealed, "ring"));
    } catch (e) {
      this.#options.log("error", "ring could not be signed", { reason: String((e as Error)?.message ?? e) });
    }
  }

  /** Nonces an event other than a ring may take now (those beyond the reserve). */
  get spareNonces(): number {
    return Math.max(0, this.signer.ready - this.nonceReserve);
  }

  /**
   * Seal a signed event and queue it on the events topic: the one way anything
   * (rings, snapshot manifests, audit reports) leaves the device as an event.
   */
  emit(type: EventType, fields: Record<string, Json>): SentEvent {
    return this.#emit(type, fields, type);
  }

  /**
   * emit(), for events that can wait: with a worker, an event other than a ring
   * that finds only the reserve left waits for the next refill instead of
   * taking a ring's nonce. Its time is the moment of the call; its seq is
   * given when it is sealed. Without a worker it is emit().
   */
  emitWhenReady(type: EventType, fields: Record<string, Json>): Promise<SentEvent> {
    if (!this.#crypto || (this.#waiting.length === 0 && (type === "ring" || this.spareNonces > 0))) {
      try {
        return Promise.resolve(this.emit(type, fields));
      } catch (e) {
        return Promise.reject(e);
      }
    }
    const time = this.#options.clock.wallTime() ?? null;
    return new Promise<SentEvent>((resolve, reject) => {
      this.#waiting.push((force) => {
        if (!force && (type === "ring" ? this.signer.ready === 0 : this.spareNonces === 0)) return false;
        try {
          resolve(this.#queue(this.#event(type, fields, time), null, type));
        } catch (e) {
          reject(e);
        }
        return true;
      });
      this.#topUp();
    });
  }

  #event(type: EventType, fields: Record<string, Json>, time: number | null): DoorEvent {
    return {
      ...fields,
      v: EVENT_VERSION,
      type,
      thing: this.thing,
      boot: this.sequence.boot,
      seq: this.sequence.next(),
      time,
    };
  }

  #emit(type: EventType, fields: Record<string, Json>, kind: OutboxKind, covers?: number, coversUnreadable?: number): SentEvent {
    return this.#queue(this.#event(type, fields, this.#options.clock.wallTime() ?? null), null, kind, covers, coversUnreadable);
  }

  /** Sign (unless already signed), store and send one event; then start refilling. */
  #queue(event: DoorEvent, sealed: Uint8Array | null, kind: OutboxKind, covers?: number, coversUnreadable?: number): SentEvent {
    const slowBefore = this.signer.stats.slow;
    const payload = sealed ?? sealEvent(event, this.signer);
    if (this.signer.stats.slow !== slowBefore) this.#options.log("warn", "nonce pool empty: event signed on the slow path", { seq: event.seq });
    if (event.type === "ring") this.rings++;
    let resolveAcked!: () => void;
    const acked = new Promise<void>((resolve) => (resolveAcked = resolve));
    const stored = this.outbox.add({ topic: this.topics.events, payload, seq: event.seq, onAcked: resolveAcked, durable: true, kind, covers, coversUnreadable });
    this.outbox.flush(this.link.online);
    if (this.#crypto) this.#topUp();
    else this.#schedulePrecompute(this.#options.precomputeDelayMs ?? 250);
    return { seq: event.seq, event, payload, acked, stored };
  }

  /** Queue any payload for QoS 1 delivery through the outbox; resolves on PUBACK. */
  send(topic: string, payload: Uint8Array, seq: number): Promise<void> {
    let resolveAcked!: () => void;
    const acked = new Promise<void>((resolve) => (resolveAcked = resolve));
    this.outbox.add({ topic, payload, seq, onAcked: resolveAcked });
    this.outbox.flush(this.link.online);
    return acked;
  }

  status() {
    return {
      thing: this.thing,
      boot: this.sequence.boot,
      link: this.link.state,
      linkStatus: this.link.status(),
      rings: this.rings,
      outbox: this.outbox.depth,
      outboxStored: this.outbox.durableDepth,
      outboxDropped: this.outbox.dropped,
      noncesReady: this.signer.ready,
      noncesMaking: this.signer.inFlight,
      signatures: { ...this.signer.stats },
    };
  }

  /**
   * Tell the cloud what the full outbox dropped: one signed audit event that
   * supersedes any earlier unsent one, outside the outbox's capacity.
   */
  #scheduleDropReport(delayMs: number): void {
    if (this.#reportPending) return;
    this.#reportPending = this.#options.clock.schedule(() => {
      this.#reportPending = undefined;
      if (!this.#started || !this.outbox.needsReport()) return;
      // Wait for a precomputed nonce rather than block seconds on the slow path (bounded: the pool refills while idle).
      if (this.spareNonces === 0 && delayMs < 8 * REPORT_RETRY_MS) return this.#scheduleDropReport(delayMs + REPORT_RETRY_MS);
      const l = this.outbox.ledger;
      this.#lastReportAt = this.#options.clock.monotonic();
      try {
        this.#emit("audit", {
          report: "outbox-overflow",
          dropped: l.drops - l.acked,
          total: l.drops,
          rings: l.rings,
          lost: l.recent.map(([seq, kind]) => [seq, kind]),
          // The ledger itself was found unreadable: what it counted before is gone, so the totals restart.
          ...(l.unreadable > l.unreadableAcked ? { ledger: "unreadable" } : {}),
        }, "report", l.drops, l.unreadable);
      } catch (e) {
        this.#options.log("error", "drop report failed", { reason: String(e) });
      }
    }, delayMs);
  }

  /** Keep one refill on the worker while the pool has room; serve waiting events as nonces arrive. */
  #topUp(): void {
    const crypto = this.#crypto;
    if (!crypto || !this.#started || this.#refilling) return;
    if (!this.signer.noncesPossible) {
      // No nonce can be made (the RNG failed its health tests, or no entropy source runs yet): what waits is
      // signed deterministically now rather than held, and refills are tried again later unless the RNG failed for good.
      while (this.#waiting.length > 0) this.#waiting.shift()!(true);
      if (this.signer.rngFailure === undefined && !this.#retryTopUp) {
        this.#retryTopUp = this.#options.clock.schedule(() => {
          this.#retryTopUp = undefined;
          this.#topUp();
        }, PRECOMPUTE_RETRY_MS);
      }
      return;
    }
    this.#serveWaiting();
    if (this.signer.ready + this.signer.inFlight >= this.signer.poolSize) return;
    this.#refilling = true;
    const priority = this.signer.ready <= this.nonceReserve ? "urgent" : "refill";
    this.signer.refill(crypto, priority).then(
      () => {
        this.#refilling = false;
        this.#topUp();
      },
      (e) => {
        this.#refilling = false;
        this.#options.log("error", "nonce refill failed", { reason: String((e as Error)?.message ?? e) });
        if (!crypto.available) this.#workerGone();
        else this.#options.clock.schedule(() => this.#topUp(), PRECOMPUTE_RETRY_MS);
      },
    );
  }

  /** The worker is gone for good: back to the single-machine design (idle precompute here), nothing held. */
  #workerGone(): void {
    const crypto = this.#crypto;
    if (!crypto || crypto.available) return;
    this.#crypto = undefined;
    this.#options.log("warn", "crypto worker gone: nonces are precomputed on this machine while idle", {});
    while (this.#waiting.length > 0) this.#waiting.shift()!(true);
    this.#schedulePrecompute(this.#options.precomputeDelayMs ?? 250);
  }

  #serveWaiting(): void {
    while (this.#waiting.length > 0 && this.#waiting[0]()) this.#waiting.shift();
  }

  /** Top the nonce pool up one nonce at a time on this machine, yielding to the event loop between nonces. */
  #schedulePrecompute(delayMs: number): void {
    if (this.#crypto) {
      this.#topUp();
      return;
    }
    this.#cancelPrecompute?.();
    this.#cancelPrecompute = this.#options.clock.schedule(() => {
      this.#cancelPrecompute = undefined;
      if (!this.#started) return;
      if (this.#options.mayPrecompute && !this.#options.mayPrecompute()) {
        this.#schedulePrecompute(PRECOMPUTE_RETRY_MS);
        return;
      }
      if (this.signer.precompute()) this.#schedulePrecompute(0);
    }, delayMs);
  }
}
