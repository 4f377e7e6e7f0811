/*
 * The AWS side of firmware updates, for the local stand-in: AWS IoT Jobs (the
 * device MQTT API) and MQTT-based file delivery (streams), played inside the
 * broker the way AWS plays them, so a device under test uses exactly the topics
 * and JSON it would use against AWS, on its one connection.
 *
 * Jobs ($aws/things/<thing>/jobs/...): notify-next when the next pending
 * execution changes; $next/get → $next/get/accepted {execution}; <jobId>/update
 * {status, statusDetails, clientToken} → update/accepted {executionState} or
 * update/rejected {code, message} (InvalidStateTransition once terminal,
 * ResourceNotFound, InvalidRequest for bad statusDetails: AWS wants a map of
 * strings). Executions move QUEUED → IN_PROGRESS → SUCCEEDED/FAILED/REJECTED.
 *
 * Streams ($aws/things/<thing>/streams/<streamId>/...): get/json {c, s, f, l,
 * o, n, b} → one data/json {c, f, l, i, p} per block, p in base64 (AWS's own
 * downloader library base64-decodes "p"; the developer guide calls it hex);
 * describe/json → description/json {c, s, d, r: [{f, z}]}; errors on
 * rejected/json {o: code, m, c}. Limits as AWS documents them: block size
 * 256-131072, at most 128 KB of blocks per request, "b" a hex bitmap relative
 * to "o", a client token of at most 64 bytes.
 *
 * Every status update is recorded (`updates`) so tests assert what the device
 * reported, and hooks (`faults`) drop or alter blocks in transit, or withhold
 * job-status answers. `demoUpdate()` is what `npm start` calls to deliver a
 * signed update and then a refused downgrade.
 */
import type { Standin, StandinMessage } from "./standin";
import { joinBroker, type BrokerSettings } from "./lib/broker";
import { makeSimImage } from "../modules/host/update-sink";
import { ensureDevReleaseKey, signImage, type ReleaseKey } from "./release";
import { FIRMWARE_OPERATION, KEYS_OPERATION } from "../modules/core/update";
import type { KeyUpdate, SignedRelease } from "../modules/core/release";
import { libraryEntry } from "./lib/cli";

export type ExecutionStatus = "QUEUED" | "IN_PROGRESS" | "SUCCEEDED" | "FAILED" | "REJECTED" | "CANCELED";
const TERMINAL = new Set<ExecutionStatus>(["SUCCEEDED", "FAILED", "REJECTED", "CANCELED"]);
const DEVICE_STATUSES = new Set(["IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED"]);
const DETAIL_KEY = /^[a-zA-Z0-9:_-]{1,128}$/;

export interface JobExecution {
  thing: string;
  jobId: string;
  status: ExecutionStatus;
  document: unknown;
  statusDetails: Record<string, string>;
  queuedAt: number;
  lastUpdatedAt: number;
  versionNumber: number;
  executionNumber: number;
}

export interface StatusUpdate {
  thing: string;
  jobId: string;
  status: string;
  statusDetails: Record<string, string>;
  clientToken?: string;
  accepted: boolean;
  code?: string;
  at: number;
}

export interface StreamStats {
  requests: number;
  blocks: number;
  bytes: number;
  firstRequestAt?: number;
  lastBlockAt?: number;
}

interface StreamRecord {
  id: string;
  version: number;
  description: string;
  files: Map<number, Uint8Array>;
  stats: StreamStats;
}

export interface ServiceFaults {
  /** Return false to lose block `index` of this response in transit. */
  deliverBlock?: (streamId: string, fileId: number, index: number) => boolean;
  /** Change a block's bytes in transit (a tampering broker or a bad CDN). */
  alterBlock?: (streamId: string, fileId: number, index: number, bytes: Uint8Array) => Uint8Array;
  /** false: record job-status updates but never answer them. */
  answerUpdates?: boolean;
}

export interface UpdateServiceOptions {
  /** How the service's messages reach devices (attach() wires standin.publish). */
  deliver: (topic: string, payload: Uint8Array, qos: 0 | 1) => Promise<void> | void;
  log?: (line: string) => void;
}

const enc = new TextEncoder();
const json = (v: unknown) => enc.encode(JSON.stringify(v));
const seconds = () => Math.floor(Date.now() / 1000);

/** A job document for a signed firmware release held in a stream. */
export function firmwareJobDocument(release: SignedRelease, stream: { id: string; file?: number; version?: number }): Record<string, unknown> {
  return { operation: FIRMWARE_OPERATION, release, stream: { id: stream.id, file: stream.file ?? 0, ...(stream.version === undefined ? {} : { version: stream.version }) } };
}

/** A job document for a release key rotation. */
export function keysJobDocument(update: KeyUpdate): Record<string, unknown> {
  return { operation: KEYS_OPERATION, keys: update };
}

export class UpdateService {
  readonly updates: StatusUpdate[] = [];
  readonly stats = { requests: 0, blocks: 0, bytes: 0, jobMessages: 0 };
  faults: ServiceFaults = {};
  #o: UpdateServiceOptions;
  #jobs = new Map<string, JobExecution[]>();
  #streams = new Map<string, StreamRecord>();
  #listeners = new Set<() => void>();
  #detach: (() => void) | undefined;

  constructor(options: UpdateServiceOptions) {
    this.#o = options;
  }

  /** Play Jobs and streams inside a stand-in: requests from things in, answers published as AWS (no policy check). */
  static attach(standin: Standin, options: { log?: (line: string) => void } = {}): UpdateService {
    const service = new UpdateService({ deliver: (topic, payload, qos) => standin.publish(topic, payload, { qos }), log: options.log });
    const onMessage = (m: StandinMessage) => {
      if (m.identity.role !== "thing") return;
      const levels = m.topic.split("/");
      if (levels[0] !== "$aws" || levels[1] !== "things" || levels[2] !== m.identity.name) return;
      service.handle(m.topic, new Uint8Array(m.payload.buffer, m.payload.byteOffset, m.payload.byteLength));
    };
    standin.on("message", onMessage);
    service.#detach = () => standin.off("message", onMessage);
    return service;
  }

  /**
   * Play Jobs and streams on a broker of the user's own, as the service identity:
   * requests from every thing in through $aws/things/+/jobs/# and /streams/#,
   * answers published back. The broker's policy (tools/mosquitto.ts) decides who
   * may send what; the service's own answers come back on the same filters and
   * are not requests, so handle() passes them by.
   */
  static async join(settings: BrokerSettings, options: { log?: (line: string) => void } = {}): Promise<UpdateService> {
    let service!: UpdateService;
    const connection = await joinBroker(settings, {
      suffix: "jobs",
      subscribe: ["$aws/things/+/jobs/#", "$aws/things/+/streams/#"],
      onMessage: (topic, payload) => service.handle(topic, payload),
    });
    service = new UpdateService({
      deliver: (topic, payload, qos) => new Promise<void>((resolve, reject) => connection.client.publish(topic, Buffer.from(payload), { qos }, (e) => (e ? reject(e) : resolve()))),
      log: options.log,
    });
    service.#detach = () => void connection.close();
    return service;
  }

  close(): void {
    this.#detach?.();
    this.#detach = undefined;
  }

  // ---------------------------------------------------------------- control plane (what a fleet operator calls)

  /** CreateStream / UpdateStream: a new version each time the files change. */
  createStream(id: string, files: Uint8Array | Uint8Array[] | Map<number, Uint8Array>, description = ""): { id: string; version: number } {
    const map = files instanceof Map ? files : new Map((Array.isArray(files) ? files : [files]).map((f, i) => [i, f] as [number, Uint8Array]));
    const old = this.#streams.get(id);
    const record: StreamRecord = { id, version: (old?.version ?? 0) + 1, description, files: map, stats: { requests: 0, blocks: 0, bytes: 0 } };
    this.#streams.set(id, record);
    return { id, version: record.version };
  }

  streamStats(id: string): StreamStats | undefined {
    return this.#streams.get(id)?.stats;
  }

  /** CreateJob for one thing: queued, and announced on notify-next if it is now the thing's next job. */
  createJob(thing: string, jobId: string, document: unknown): JobExecution {
    const list = this.#jobs.get(thing) ?? [];
    if (list.some((e) => e.jobId === jobId)) throw new Error(`job ${jobId} already exists for ${thing}`);
    const before = this.#next(thing);
    const now = seconds();
    const execution: JobExecution = { thing, jobId, status: "QUEUED", document, statusDetails: {}, queuedAt: now, lastUpdatedAt: now, versionNumber: 1, executionNumber: 1 };
    list.push(execution);
    this.#jobs.set(thing, list);
    this.#announceIfChanged(thing, before);
    this.#changed();
    return execution;
  }

  /** CancelJob: the execution ends CANCELED; the device hears a new notify-next. */
  cancelJob(thing: string, jobId: string): void {
    const e = this.execution(thing, jobId);
    if (!e || TERMINAL.has(e.status)) return;
    const before = this.#next(thing);
    e.status = "CANCELED";
    e.lastUpdatedAt = seconds();
    this.#announceIfChanged(thing, before);
    this.#changed();
  }

  execution(thing: string, jobId: string): JobExecution | undefined {
    return this.#jobs.get(thing)?.find((e) => e.jobId === jobId);
  }

  /** Re-send a job's notify-next as it was (an attacker or a glitch replaying an old announcement). */
  replayNotification(thing: string, jobId: string, status: ExecutionStatus = "QUEUED"): void {
    const e = this.execution(thing, jobId);
    if (!e) throw new Error(`no job ${jobId}`);
    void this.#publish(`$aws/things/${thing}/jobs/notify-next`, { timestamp: seconds(), execution: { ...this.#describe(e), status } }, 1);
  }

  /** Resolve with the first recorded status update matching `match` (past or future). */
  waitForUpdate(match: (u: StatusUpdate) => boolean, timeoutMs = 10_000): Promise<StatusUpdate> {
    return this.#waitFor(() => this.updates.find(match), timeoutMs, "status update");
  }

  /** Resolve once the execution reaches a terminal status. */
  waitForTerminal(thing: string, jobId: string, timeoutMs = 10_000): Promise<JobExecution> {
    return this.#waitFor(() => {
      const e = this.execution(thing, jobId);
      return e && TERMINAL.has(e.status) ? e : undefined;
    }, timeoutMs, `end of job ${jobId}`);
  }

  #waitFor<T>(probe: () => T | undefined, timeoutMs: number, what: string): Promise<T> {
    const now = probe();
    if (now !== undefined) return Promise.resolve(now);
    return new Promise((resolve, reject) => {
      const listener = () => {
        const v = probe();
        if (v === undefined) return;
        clearTimeout(timer);
        this.#listeners.delete(listener);
        resolve(v);
      };
      const timer = setTimeout(() => {
        this.#listeners.delete(listener);
        reject(new Error(`no ${what} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#listeners.add(listener);
    });
  }

  #changed(): void {
    for (const l of [...this.#listeners]) l();
  }

  // ---------------------------------------------------------------- data plane (device requests)

  /** A message a thing published under $aws/things/<thing>/. */
  handle(topic: string, payload: Uint8Array): void {
    const levels = topic.split("/");
    if (levels[0] !== "$aws" || levels[1] !== "things" || levels.length < 5) return;
    const thing = levels[2];
    let request: Record<string, unknown>;
    try {
      const parsed = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(payload)) as unknown;
      if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new Error("not an object");
      request = parsed as Record<string, unknown>;
    } catch {
      if (levels[3] === "jobs") void this.#publish(`${topic}/rejected`, { code: "InvalidJson", message: "request is not a JSON object", timestamp: seconds() }, 1);
      else if (levels[3] === "streams" && levels.length === 7) void this.#publish(`$aws/things/${thing}/streams/${levels[4]}/rejected/json`, { o: "InvalidJson", m: "request is not a JSON object" }, 1);
      return;
    }
    if (levels[3] === "jobs") {
      this.stats.jobMessages++;
      const rest = levels.slice(4).join("/");
      if (rest === "$next/get") this.#getNext(thing, request);
      else if (levels.length === 6 && levels[5] === "update") this.#update(thing, levels[4], request);
    } else if (levels[3] === "streams" && levels.length === 7 && levels[6] === "json") {
      if (levels[5] === "get") this.#getStream(thing, levels[4], request);
      else if (levels[5] === "describe") this.#describeStream(thing, levels[4], request);
    }
  }

  #next(thing: string): JobExecution | undefined {
    const list = (this.#jobs.get(thing) ?? []).filter((e) => !TERMINAL.has(e.status));
    return list.find((e) => e.status === "IN_PROGRESS") ?? list.find((e) => e.status === "QUEUED");
  }

  #describe(e: JobExecution): Record<string, unknown> {
    return {
      jobId: e.jobId,
      status: e.status,
      queuedAt: e.queuedAt,
      lastUpdatedAt: e.lastUpdatedAt,
      versionNumber: e.versionNumber,
      executionNumber: e.executionNumber,
      jobDocument: e.document,
      ...(Object.keys(e.statusDetails).length ? { statusDetails: e.statusDetails } : {}),
    };
  }

  #announceIfChanged(thing: string, before: JobExecution | undefined): void {
    const after = this.#next(thing);
    if (after === before) return;
    const doc = after ? { timestamp: seconds(), execution: this.#describe(after) } : { timestamp: seconds() };
    void this.#publish(`$aws/things/${thing}/jobs/notify-next`, doc, 1);
  }

  #getNext(thing: string, request: Record<string, unknown>): void {
    const next = this.#next(thing);
    const answer: Record<string, unknown> = { timestamp: seconds() };
    if (typeof request.clientToken === "string") answer.clientToken = request.clientToken;
    if (next) answer.execution = this.#describe(next);
    void this.#publish(`$aws/things/${thing}/jobs/$next/get/accepted`, answer, 1);
  }

  #update(thing: string, jobId: string, request: Record<string, unknown>): void {
    const token = typeof request.clientToken === "string" ? request.clientToken : undefined;
    const status = String(request.status ?? "");
    const details = request.statusDetails;
    const record: StatusUpdate = { thing, jobId, status, statusDetails: {}, clientToken: token, accepted: false, at: Date.now() };
    const reject = (code: string, message: string, e?: JobExecution) => {
      record.code = code;
      this.updates.push(record);
      this.#o.log?.(`job ${jobId} on ${thing}: ${status} rejected (${code})`);
      this.#changed();
      if (this.faults.answerUpdates === false) return;
      const answer: Record<string, unknown> = { code, message, timestamp: seconds(), ...(token ? { clientToken: token } : {}) };
      if (e) answer.executionState = { status: e.status, statusDetails: e.statusDetails, versionNumber: e.versionNumber };
      void this.#publish(`$aws/things/${thing}/jobs/${jobId}/update/rejected`, answer, 1);
    };
    if (details !== undefined) {
      if (typeof details !== "object" || details === null || Array.isArray(details)) return reject("InvalidRequest", "statusDetails must be a map");
      for (const [k, v] of Object.entries(details)) {
        if (!DETAIL_KEY.test(k) || typeof v !== "string" || v.length === 0 || v.length > 1024) return reject("InvalidRequest", `statusDetails.${k} must be a string of 1-1024 characters`);
        record.statusDetails[k] = v;
      }
    }
    const e = this.execution(thing, jobId);
    if (!e) return reject("ResourceNotFound", `no job execution ${jobId} for ${thing}`);
    if (!DEVICE_STATUSES.has(status)) return reject("InvalidRequest", `status ${status} cannot be set by a device`);
    if (TERMINAL.has(e.status)) return reject("InvalidStateTransition", `job execution is ${e.status}`, e);
    const before = this.#next(thing);
    e.status = status as ExecutionStatus;
    if (details !== undefined) e.statusDetails = { ...record.statusDetails }; // given: replaces; absent: unchanged
    e.versionNumber++;
    e.lastUpdatedAt = seconds();
    record.accepted = true;
    this.updates.push(record);
    this.#o.log?.(`job ${jobId} on ${thing}: ${status} ${JSON.stringify(record.statusDetails)}`);
    if (this.faults.answerUpdates !== false) {
      void this.#publish(`$aws/things/${thing}/jobs/${jobId}/update/accepted`, {
        executionState: { status: e.status, statusDetails: e.statusDetails, versionNumber: e.versionNumber },
        timestamp: seconds(),
        ...(token ? { clientToken: token } : {}),
      }, 1);
    }
    this.#announceIfChanged(thing, before);
    this.#changed();
  }

  #streamError(thing: string, streamId: string, code: string, message: string, token?: string): void {
    void this.#publish(`$aws/things/${thing}/streams/${streamId}/rejected/json`, { o: code, m: message, ...(token ? { c: token } : {}) }, 1);
  }

  #describeStream(thing: string, streamId: string, request: Record<string, unknown>): void {
    const token = typeof request.c === "string" ? request.c : undefined;
    const s = this.#streams.get(streamId);
    if (!s) return this.#streamError(thing, streamId, "ResourceNotFound", `no stream ${streamId}`, token);
    const r = [...s.files].map(([f, bytes]) => ({ f, z: bytes.length }));
    void this.#publish(`$aws/things/${thing}/streams/${streamId}/description/json`, { ...(token ? { c: token } : {}), s: s.version, d: s.description, r }, 1);
  }

  #getStream(thing: string, streamId: string, request: Record<string, unknown>): void {
    const token = typeof request.c === "string" ? request.c : undefined;
    if (token !== undefined && new TextEncoder().encode(token).length > 64) return this.#streamError(thing, streamId, "InvalidRequest", "client token longer than 64 bytes");
    const s = this.#streams.get(streamId);
    if (!s) return this.#streamError(thing, streamId, "ResourceNotFound", `no stream ${streamId}`, token);
    s.stats.requests++;
    s.stats.firstRequestAt ??= performance.now();
    this.stats.requests++;
    if (request.s !== undefined && request.s !== s.version) return this.#streamError(thing, streamId, "VersionMismatch", `stream is at version ${s.version}`, token);
    const f = request.f;
    const file = typeof f === "number" ? s.files.get(f) : undefined;
    if (!file || typeof f !== "number") return this.#streamError(thing, streamId, "ResourceNotFound", `no file ${String(f)} in stream ${streamId}`, token);
    const l = request.l;
    if (typeof l !== "number" || !Number.isInteger(l) || l < 256 || l > 131072) return this.#streamError(thing, streamId, "BlockSizeOutOfBounds", "block size must be 256-131072", token);
    const o = request.o ?? 0;
    const blocksInFile = Math.ceil(file.length / l);
    if (typeof o !== "number" || !Number.isInteger(o) || o < 0 || o >= blocksInFile) return this.#streamError(thing, streamId, "OffsetOutOfBounds", `block offset ${String(o)} is outside the file (${blocksInFile} blocks)`, token);
    const perRequest = Math.max(1, Math.floor(131072 / l));
    const nRaw = request.n ?? perRequest;
    if (typeof nRaw !== "number" || !Number.isInteger(nRaw) || nRaw < 0 || nRaw > 98304) return this.#streamError(thing, streamId, "BlockCountLimitExceeded", "n must be 0-98304", token);
    let wanted: number[] = [];
    if (typeof request.b === "string") {
      const hex = request.b.replace(/^0x/i, "");
      if (!/^[0-9a-fA-F]*$/.test(hex) || hex.length % 2 || hex.length / 2 >= 12288) return this.#streamError(thing, streamId, "BlockBitmapLimitExceeded", "bad bitmap", token);
      for (let byte = 0; byte < hex.length / 2; byte++) {
        const v = parseInt(hex.substr(byte * 2, 2), 16);
        for (let bit = 0; bit < 8; bit++) if (v & (1 << bit)) wanted.push(o + byte * 8 + bit);
      }
    } else {
      for (let i = o; i < o + (nRaw || perRequest); i++) wanted.push(i);
    }
    wanted = wanted.filter((i) => i < blocksInFile).slice(0, Math.min(nRaw || perRequest, perRequest));
    for (const i of wanted) {
      let bytes = file.subarray(i * l, Math.min((i + 1) * l, file.length));
      if (this.faults.alterBlock) bytes = this.faults.alterBlock(streamId, f, i, bytes);
      if (this.faults.deliverBlock && !this.faults.deliverBlock(streamId, f, i)) continue;
      s.stats.blocks++;
      s.stats.bytes += bytes.length;
      s.stats.lastBlockAt = performance.now();
      this.stats.blocks++;
      this.stats.bytes += bytes.length;
      const doc = { ...(token ? { c: token } : {}), f, l: bytes.length, i, p: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64") };
      void this.#publish(`$aws/things/${thing}/streams/${streamId}/data/json`, doc, 0);
    }
  }

  async #publish(topic: string, doc: unknown, qos: 0 | 1): Promise<void> {
    try {
      await this.#o.deliver(topic, json(doc), qos);
    } catch (e) {
      this.#o.log?.(`deliver ${topic} failed: ${(e as Error).message}`);
    }
  }
}

// ------------------------------------------------------------------ npm start demo

export interface DemoOptions {
  /** Where the Jobs service plays: inside this stand-in, or (without one) on `broker` as the service identity. */
  standin?: Standin;
  broker?: BrokerSettings;
  thing: string;
  /** Simulator home: the dev release key lives in <home>/release (the device must trust it: builtInKeys(ensureDevReleaseKey(home))). */
  home: string;
  board: string;
  /** The version the simulated device runs right now (changes after it restarts into the update). */
  version: () => number;
  say?: (line: string) => void;
  /** Size of the simulated image. Default 256 KB. */
  imageBytes?: number;
  timeoutMs?: number;
  service?: UpdateService;
  key?: ReleaseKey;
}

export interface DemoResult {
  from: number;
  to: number;
  updated: boolean;
  downgradeRefused: boolean;
  downgradeReason: string | undefined;
  bytesPerSecond: number;
}

/**
 * Deliver a signed update (version + 1) to the simulated device through the
 * stand-in, wait until it runs it, then offer a correctly signed older version
 * and show it refused.
 */
export async function demoUpdate(o: DemoOptions): Promise<DemoResult> {
  const say = o.say ?? ((line: string) => process.stdout.write(line + "\n"));
  const key = o.key ?? ensureDevReleaseKey(o.home);
  const service = o.service ?? (o.standin ? UpdateService.attach(o.standin) : o.broker ? await UpdateService.join(o.broker) : undefined);
  if (!service) throw new Error("update demo: needs the stand-in or a broker to play AWS IoT Jobs on");
  const timeoutMs = o.timeoutMs ?? 60_000;
  const stamp = Date.now().toString(36);
  try {
    const from = o.version();
    const to = from + 1;
    const image = makeSimImage({ board: o.board, version: to, healthy: true, size: o.imageBytes ?? 256 * 1024 });
    const release = signImage(image, { key, version: to, board: o.board, label: `1.0.${to}` });
    const streamId = `dw-fw-${to}-${stamp}`;
    const stream = service.createStream(streamId, image, `Doorward ${release.manifest.label}`);
    const jobId = `fw-${to}-${stamp}`;
    say(`update: release ${release.manifest.label} (version ${to}, ${image.length} bytes) signed by release key ${key.keyId}; job ${jobId} queued`);
    service.createJob(o.thing, jobId, firmwareJobDocument(release, { id: streamId, version: stream.version }));
    const done = await service.waitForTerminal(o.thing, jobId, timeoutMs);
    const st = service.streamStats(streamId);
    const bytesPerSecond = st && st.firstRequestAt !== undefined && st.lastBlockAt !== undefined && st.lastBlockAt > st.firstRequestAt ? (st.bytes * 1000) / (st.lastBlockAt - st.firstRequestAt) : 0;
    const deadline = Date.now() + timeoutMs;
    while (o.version() !== to && Date.now() < deadline && done.status === "SUCCEEDED") await new Promise((r) => setTimeout(r, 50));
    const updated = done.status === "SUCCEEDED" && o.version() === to;
    say(updated
      ? `update: ✔ device now runs version ${to} (was ${from}); job ${done.status}; ${(bytesPerSecond / 1024).toFixed(0)} KiB/s over ${o.standin ? "the stand-in" : "the broker"}`
      : `update: ✘ job ${done.status} ${JSON.stringify(done.statusDetails)}; device runs version ${o.version()}`);

    const older = Math.max(1, o.version() - 1);
    const oldImage = makeSimImage({ board: o.board, version: older, healthy: true, size: 32 * 1024 });
    const oldRelease = signImage(oldImage, { key, version: older, board: o.board, label: `1.0.${older}` });
    const oldStream = `dw-fw-${older}-${stamp}-old`;
    service.createStream(oldStream, oldImage);
    const downJob = `fw-down-${older}-${stamp}`;
    say(`update: offering version ${older}, correctly signed, as job ${downJob} (a downgrade)`);
    service.createJob(o.thing, downJob, firmwareJobDocument(oldRelease, { id: oldStream }));
    const down = await service.waitForTerminal(o.thing, downJob, timeoutMs);
    const downgradeReason = down.statusDetails.reason;
    const downgradeRefused = down.status === "REJECTED" && (downgradeReason === "downgrade" || downgradeReason === "not-newer");
    say(downgradeRefused
      ? `update: ✔ downgrade refused: ${down.status} reason=${downgradeReason} (${down.statusDetails.detail}); device still runs version ${o.version()}`
      : `update: ✘ downgrade not refused: ${down.status} ${JSON.stringify(down.statusDetails)}`);
    return { from, to, updated, downgradeRefused, downgradeReason, bytesPerSecond };
  } finally {
    if (!o.service) service.close();
  }
}

libraryEntry(import.meta.url, "update-service", `tools/update-service.ts is a library, not a command.

The AWS side of firmware updates for the local stand-in: AWS IoT Jobs and MQTT file
streams, played inside the broker. npm start -- --demo-update uses it to deliver a signed
update and then offer a refused downgrade; tools/release.ts signs releases.`);
