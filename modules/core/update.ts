/*
 * The update agent: signed firmware updates over AWS IoT Jobs and MQTT file
 * delivery (streams), on the one MQTT connection the doorbell already has.
 *
 * A job document names a signed release (./release) and the stream that holds
 * the image. The agent checks everything it can before writing a byte: shape,
 * signature present, key known, board, version above the stored floor, size;
 * then one Ed25519 verify of the manifest (the only one per update: seconds on
 * an ESP32, see docs/updates.md). It then streams the image block by block into
 * the inactive slot (UpdateSink) while hashing it, and activates only if the
 * SHA-256 matches the signed one. Every refusal is reported with a reason on
 * the job's update topic and leaves the running firmware untouched.
 *
 * Activation is written so that a power cut at any point leaves a bootable,
 * verified image: the KV state "activating" is written before the sink makes
 * the new slot bootable, the new image runs first on trial, and only after it
 * has reached the cloud (a job-status round trip) and passed the local health
 * check does it confirm itself to the bootloader; only then is the
 * anti-rollback floor raised. A trial image that fails, or a power cut during
 * the trial, returns to the previous image, which reports the job FAILED.
 *
 * Jobs served here (job document "operation"):
 *   doorward.firmware      {release: {manifest, sig}, stream: {id, file, version?}}
 *   doorward.release-keys  {keys: {keySet, sigs}}   (release key rotation)
 *
 * This file runs the job protocol (Jobs topics, verdicts, replays, boot
 * reconciliation); ./update-protocol holds its topics and types,
 * ./update-stream the image download, ./update-activation the activation and
 * the trial image's health check.
 *
 * The agent talks to the world only through a publish function and
 * onMessage(), so it plugs into the Doorbell's public API (send / onMessage /
 * subscriptions) without the Doorbell knowing about updates.
 */
import { TokenBucket } from "./budget";
import { canonicalBytes, jsonNestsDeeper, type Json } from "./canonical";
import { fromHex, toHex, utf8Decode } from "./bytes";
import { encodeJsonRecord, readJsonRecord } from "./record";
import { checkKeyUpdate, manifestMessage, naclVerify, readRelease, releaseKeyId, type TrustedKeys } from "./release";
import { assertThingName } from "./topics";
import { trial } from "./update-activation";
import { StreamDownload } from "./update-stream";
import {
  DONE_KEEP,
  detailText,
  FIRMWARE_OPERATION,
  isRecord,
  JOB_ID,
  KEYS_OPERATION,
  MAX_MESSAGE_DEPTH,
  newActive,
  STREAM_ID,
  UPDATE_KV,
  updateTopics,
  peerText,
  type Active,
  type Answer,
  type DoneEntry,
  type FailureReason,
  type JobStatus,
  type RefusalReason,
  type SavedState,
  type StreamRef,
  type UpdateAgentOptions,
  type UpdateContext,
  type UpdateEvent,
} from "./update-protocol";

export type { BootControl } from "./ports";
export {
  FIRMWARE_OPERATION,
  fromBase64,
  KEYS_OPERATION,
  UPDATE_KV,
  updateSubscriptions,
  updateTopics,
  type FailureReason,
  type JobStatus,
  type RefusalReason,
  type UpdateAgentOptions,
  type UpdateEvent,
} from "./update-protocol";

const FLOOR_KIND = "upd-floor";
const KEYS_KIND = "upd-keys";

function isCount(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

export class UpdateAgent {
  readonly thing: string;
  readonly topics: ReturnType<typeof updateTopics>;
  readonly stats = { requests: 0, blocks: 0, bytes: 0, retries: 0, verifies: 0 };
  #o: UpdateAgentOptions;
  /** Fail closed: until the stored floor has been read, no version is high enough. */
  #floor = Number.MAX_SAFE_INTEGER;
  /** The highest release-key serial this device has trusted: a stored key set below it is refused. */
  #keySerialFloor = 0;
  #trusted: TrustedKeys;
  #active: Active | undefined;
  #answers = new Map<string, (answer: Answer | undefined) => void>();
  #counter = 0;
  #download: StreamDownload;
  #context: UpdateContext;
  #started = false;
  #stopped = false;
  #getSentAt: number | undefined;
  #cancelPoll: (() => void) | undefined;
  #verifies: TokenBucket;

  constructor(options: UpdateAgentOptions) {
    this.#o = options;
    const rate = options.verifyRate ?? { burst: 3, everyMs: 20 * 60_000 };
    this.#verifies = new TokenBucket({ capacity: rate.burst, everyMs: rate.everyMs, clock: options.clock });
    this.thing = assertThingName(options.thing);
    this.topics = updateTopics(this.thing);
    if (!Number.isSafeInteger(options.runningVersion) || options.runningVersion < 0) throw new RangeError("runningVersion must be a whole number");
    if (typeof options.recordTag !== "function") throw new TypeError("recordTag is required: the anti-rollback records must be authenticated");
    const bs = this.#blockSize;
    if (!Number.isInteger(bs) || bs < 256 || bs > 65536) throw new RangeError("blockSize must be 256-65536");
    this.#trusted = options.releaseKeys;
    this.#context = {
      o: options,
      topics: this.topics,
      stats: this.stats,
      blockSize: bs,
      active: () => this.#active,
      setActive: (a) => {
        this.#active = a;
      },
      stopped: () => this.#stopped,
      setFloor: (version) => {
        this.#storeFloor(version);
        this.#floor = version;
      },
      token: (prefix) => this.#token(prefix),
      report: (job, status, details) => this.#report(job, status, details),
      answer: (token, timeoutMs) => this.#answer(token, timeoutMs),
      emit: (event) => this.#emit(event),
      refuse: (job, reason, detail, extra) => this.#refuse(job, reason, detail, extra),
      fail: (job, reason, detail, extra) => this.#fail(job, reason, detail, extra),
      finish: (job, status, reason, detail, extra) => this.#finish(job, status, reason, detail, extra),
      guard: (fn) => this.#guard(fn),
      safe: (what, fn) => this.#safe(what, fn),
      saveState: (s) => this.#saveState(s),
      write: (key, value) => this.#write(key, value),
    };
    this.#download = new StreamDownload(this.#context);
  }

  /** The largest inbound message worth decoding: a job document (AWS caps them at 32 KB) or one base64 stream block. */
  get #maxMessageBytes(): number {
    return Math.max(48 * 1024, Math.ceil(this.#blockSize / 3) * 4 + 1024);
  }

  get #blockSize(): number {
    return this.#o.blockSize ?? 4096;
  }

  /** The anti-rollback floor: the highest version confirmed healthy on this device. */
  get floor(): number {
    return this.#floor;
  }

  get trustedKeyIds(): string[] {
    return this.#trusted.keys.map((k) => releaseKeyId(k));
  }

  status() {
    const a = this.#active;
    return {
      runningVersion: this.#o.runningVersion,
      floor: this.#floor,
      keySerial: this.#trusted.serial,
      job: a?.job ?? null,
      phase: a?.phase ?? "idle",
      bytes: a?.bytes ?? 0,
      size: a?.manifest?.size ?? 0,
    };
  }

  /** Whether a topic belongs to the agent (route it to onMessage). */
  handles(topic: string): boolean {
    return topic.startsWith(`$aws/things/${this.thing}/jobs/`) || topic.startsWith(`$aws/things/${this.thing}/streams/`);
  }

  /**
   * Boot-time reconciliation, then ask for the next job. Call once after the
   * Doorbell is constructed (the request waits in its outbox until online).
   */
  start(): void {
    if (this.#started) return;
    this.#started = true;
    this.#stopped = false;
    try {
      this.#loadTrust();
      this.#reconcile();
    } catch (e) {
      this.#o.log("error", "update: boot reconciliation failed", { reason: String(e) });
    }
    this.#pollNext();
    this.#schedulePoll();
  }

  stop(): void {
    this.#stopped = true;
    this.#cancelPoll?.();
    this.#active?.cancelTimer?.();
    for (const resolve of [...this.#answers.values()]) resolve(undefined);
    this.#answers.clear();
  }

  /** Optional hook: call when the link comes online, so a job announced while offline is fetched at once. */
  linkOnline(): void {
    this.#getSentAt = undefined;
    if (!this.#active) this.#pollNext();
  }

  onMessage(topic: string, payload: Uint8Array): void {
    if (this.#stopped || !this.handles(topic)) return;
    try {
      // Refuse before decoding: a 128 KB message costs RAM to decode, and deep nesting would overflow the native stack in JSON.parse.
      if (payload.length > this.#maxMessageBytes) {
        this.#o.log("warn", "update: message too large", { topic, bytes: payload.length });
        return;
      }
      if (jsonNestsDeeper(payload, MAX_MESSAGE_DEPTH)) {
        this.#o.log("warn", "update: message nests too deeply", { topic });
        return;
      }
      let doc: unknown;
      try {
        doc = JSON.parse(utf8Decode(payload));
      } catch {
        this.#o.log("warn", "update: unparsable message", { topic });
        return;
      }
      if (!isRecord(doc)) return;
      const levels = topic.split("/");
      const feature = levels[3];
      const rest = levels.slice(4).join("/");
      if (feature === "jobs") {
        if (rest === "notify-next") this.#onNext(doc, true);
        else if (rest === "$next/get/accepted") this.#onNextAnswer(doc);
        else if (rest === "$next/get/rejected") {
          this.#getSentAt = undefined;
          this.#o.log("warn", "update: $next/get rejected", { code: peerText(doc.code ?? "") });
        } else if (levels.length === 7 && levels[5] === "update") this.#onUpdateAnswer(levels[4], levels[6] === "accepted", doc);
      } else if (feature === "streams" && levels.length === 7 && levels[6] === "json") {
        if (levels[5] === "data") this.#download.onBlock(levels[4], doc);
        else if (levels[5] === "rejected") this.#download.onRejected(levels[4], doc);
      }
    } catch (e) {
      this.#o.log("error", "update: message handler failed", { topic, reason: String(e) });
    }
  }

  // ------------------------------------------------------------------ persistence

  #read(key: string): unknown {
    try {
      const bytes = this.#o.store.read(key);
      return bytes ? JSON.parse(utf8Decode(bytes)) : undefined;
    } catch (e) {
      this.#o.log("error", "update: unreadable record ignored", { key, reason: String(e) });
      return undefined;
    }
  }

  #write(key: string, value: Json): void {
    this.#o.store.write(key, canonicalBytes(value));
  }

  #state(): SavedState | undefined {
    const s = this.#read(UPDATE_KV.state);
    if (!isRecord(s) || typeof s.job !== "string" || typeof s.version !== "number" || typeof s.attempts !== "number") return undefined;
    if (s.phase !== "downloading" && s.phase !== "activating" && s.phase !== "trial") return undefined;
    return s as unknown as SavedState;
  }

  #saveState(s: SavedState): void {
    this.#write(UPDATE_KV.state, s as unknown as Json);
  }

  #done(): DoneEntry[] {
    const d = this.#read(UPDATE_KV.done);
    return Array.isArray(d) ? (d.filter((e) => isRecord(e) && typeof e.job === "string") as unknown as DoneEntry[]) : [];
  }

  /**
   * The anti-rollback records, each a framed record with a MAC (recordTag):
   * upd.floor {keySerial, version} and upd.keys {keys, serial}. Flash can be
   * written by hand or restored from an old dump, so neither is taken on its
   * word alone:
   *   - the floor is never below the running image once it is confirmed (not
   *     on trial): a restored older floor changes nothing, and on release
   *     builds the bootloader's eFuse secure_version stops an older image
   *     from booting at all;
   *   - a key set is used only if it authenticates and its serial is at least
   *     the floor record's keySerial; deleting, replacing or restoring an
   *     older one leaves the built-in keys only if they are that new, and
   *     otherwise no key at all: every update is refused until a new image.
   */
  #loadTrust(): void {
    const o = this.#o;
    const options = { tag: o.recordTag, maxDepth: 2 };
    const floorRead = readJsonRecord(o.store, UPDATE_KV.floor, FLOOR_KIND, options);
    let stored: { version: number; keySerial: number } | undefined;
    if (floorRead.state === "ok" && isRecord(floorRead.value) && isCount(floorRead.value.version) && isCount(floorRead.value.keySerial)) {
      stored = { version: floorRead.value.version, keySerial: floorRead.value.keySerial };
    } else if (floorRead.state !== "missing") {
      o.log("error", "update: the floor record does not authenticate (written or restored by hand?); the running image is the floor", { reason: floorRead.state === "damaged" ? floorRead.reason : "shape" });
    }
    const st = this.#state();
    const onTrial = st !== undefined && st.phase !== "downloading" && st.version === o.runningVersion;
    const confirmed = onTrial ? undefined : o.runningVersion;
    const version = Math.max(stored?.version ?? -1, confirmed ?? -1);
    // Fail closed: a trial image with no readable floor takes no update until it has confirmed itself.
    this.#floor = version < 0 ? Number.MAX_SAFE_INTEGER : version;
    this.#keySerialFloor = Math.max(stored?.keySerial ?? 0, o.releaseKeys.serial);

    const keysRead = readJsonRecord(o.store, UPDATE_KV.keys, KEYS_KIND, options);
    let storedKeys: TrustedKeys | undefined;
    if (keysRead.state === "ok" && isRecord(keysRead.value) && isCount(keysRead.value.serial) && Array.isArray(keysRead.value.keys) && keysRead.value.keys.length > 0) {
      try {
        storedKeys = { serial: keysRead.value.serial, keys: (keysRead.value.keys as string[]).map((k) => fromHex(k)) };
      } catch {
        storedKeys = undefined;
      }
    }
    if (keysRead.state !== "missing" && !storedKeys) o.log("error", "update: the stored release key set does not authenticate; ignored");
    if (storedKeys && storedKeys.serial > o.releaseKeys.serial && storedKeys.serial >= this.#keySerialFloor) this.#trusted = storedKeys;
    else if (o.releaseKeys.serial >= this.#keySerialFloor) this.#trusted = o.releaseKeys;
    else {
      this.#trusted = { serial: this.#keySerialFloor, keys: [] };
      o.log("error", "update: the release key set this device last trusted is missing, damaged or older; refusing every update", { keySerial: this.#keySerialFloor });
    }
    if (this.#floor !== Number.MAX_SAFE_INTEGER && this.#trusted.keys.length > 0 && (stored?.version !== this.#floor || stored.keySerial !== this.#trusted.serial)) {
      this.#storeFloor(this.#floor);
    }
    if (o.runningVersion < this.#floor) o.log("warn", "update: running an image below the anti-rollback floor (flashed by hand?)", { running: o.runningVersion, floor: this.#floor });
  }

  /** The floor record, with the key serial in force. Throws if the store does. */
  #storeFloor(version: number): void {
    this.#keySerialFloor = Math.max(this.#keySerialFloor, this.#trusted.serial);
    this.#o.store.write(UPDATE_KV.floor, encodeJsonRecord(FLOOR_KIND, { keySerial: this.#keySerialFloor, version }, { tag: this.#o.recordTag }));
  }

  /** Run a timer or promise continuation; an exception there has nowhere to go but the log. */
  #guard(fn: () => void): void {
    try {
      fn();
    } catch (e) {
      this.#o.log("error", "update: internal error", { reason: String(e) });
    }
  }

  #safe(what: string, fn: () => void): void {
    try {
      fn();
    } catch (e) {
      this.#o.log("error", `update: ${what} failed`, { reason: String(e) });
    }
  }

  // ------------------------------------------------------------------ boot

  #reconcile(): void {
    const o = this.#o;
    const st = this.#state();
    if (!st) return;
    if (st.phase === "downloading") {
      // Power cut mid-download: the boot slot never changed; the partial image is abandoned and the job retried.
      o.log("warn", "update: download was interrupted; the job will be retried", { job: st.job, attempts: st.attempts });
      this.#safe("cancel", () => o.sink.cancel());
      return;
    }
    if (o.runningVersion === st.version) {
      if (st.phase === "activating") this.#saveState({ ...st, phase: "trial" });
      trial(this.#context, st).catch((e: unknown) => o.log("error", "update: trial failed", { reason: String(e) }));
      return;
    }
    if (st.phase === "trial") {
      // The trial image gave up, or the power failed during its trial: the bootloader went back.
      const reason: FailureReason = st.failure ? "health-check-failed" : "rolled-back";
      this.#finish(st.job, "FAILED", reason, st.failure ?? "the new image did not confirm itself; the bootloader restored the previous image", { version: String(st.version) });
      return;
    }
    // "activating" but still on the old image: complete() never took effect (power cut), or the new
    // image died before it could run. Either way the old image is intact; retry the job, boundedly.
    o.log("warn", "update: activation did not take effect; the job will be retried", { job: st.job, attempts: st.attempts });
  }

  #schedulePoll(): void {
    const every = this.#o.pollIntervalMs ?? 3_600_000;
    if (every <= 0 || this.#stopped) return;
    this.#cancelPoll = this.#o.clock.schedule(() => this.#guard(() => {
      if (!this.#active) this.#pollNext();
      this.#schedulePoll();
    }), every);
  }

  /** One $next/get at a time, so a long offline spell cannot pile requests into the outbox. */
  #pollNext(): void {
    const now = this.#o.clock.monotonic();
    const every = this.#o.pollIntervalMs ?? 3_600_000;
    if (this.#getSentAt !== undefined && (every <= 0 || now - this.#getSentAt < every)) return;
    this.#getSentAt = now;
    this.#send(this.topics.getNext, { clientToken: this.#token("n") });
  }

  // ------------------------------------------------------------------ jobs

  #token(prefix: string): string {
    return `${prefix}${++this.#counter}`;
  }

  #send(topic: string, doc: Json): void {
    this.#o.publish(topic, canonicalBytes(doc)).catch((e: unknown) => this.#o.log("warn", "update: publish failed", { topic, reason: String(e) }));
  }

  #report(job: string, status: JobStatus, details: Record<string, string>): string {
    const token = this.#token(status === "IN_PROGRESS" ? "p" : "t");
    const statusDetails: Record<string, string> = {};
    for (const k of Object.keys(details)) statusDetails[k] = detailText(details[k]);
    this.#send(this.topics.update(job), { status, statusDetails, clientToken: token });
    return token;
  }

  #answer(token: string, timeoutMs: number): Promise<Answer | undefined> {
    return new Promise((resolve) => {
      const cancel = this.#o.clock.schedule(() => {
        this.#answers.delete(token);
        resolve(undefined);
      }, timeoutMs);
      this.#answers.set(token, (answer) => {
        cancel();
        this.#answers.delete(token);
        resolve(answer);
      });
    });
  }

  #onUpdateAnswer(job: string, accepted: boolean, doc: Record<string, unknown>): void {
    const token = typeof doc.clientToken === "string" ? doc.clientToken : "";
    const code = typeof doc.code === "string" ? doc.code : undefined;
    this.#answers.get(token)?.({ accepted, code });
    if (token.startsWith("t")) this.#settle(job);
    const a = this.#active;
    if (!accepted && a && a.job === job && (code === "InvalidStateTransition" || code === "ResourceNotFound" || code === "TerminalStateReached") && a.phase !== "trial") {
      this.#o.log("warn", "update: the job ended in the cloud; abandoning it", { job, code });
      this.#abandon(a);
    }
  }

  #onNextAnswer(doc: Record<string, unknown>): void {
    this.#getSentAt = undefined;
    this.#onNext(doc, false);
  }

  #onNext(doc: Record<string, unknown>, notification: boolean): void {
    const execution = doc.execution;
    const a = this.#active;
    if (!isRecord(execution)) {
      // No pending job. If ours is still downloading, the cloud cancelled or removed it.
      if (notification && a && (a.phase === "downloading" || a.phase === "verifying")) this.#abandon(a);
      return;
    }
    const job = execution.jobId;
    if (typeof job !== "string" || !JOB_ID.test(job)) {
      this.#o.log("warn", "update: job with an invalid ID ignored");
      return;
    }
    if (a) {
      if (a.job !== job && notification && (a.phase === "downloading" || a.phase === "verifying")) this.#abandon(a);
      else return;
    }
    this.#consider(job, execution.jobDocument);
  }

  /** Drop the active job without a report (the cloud already ended it). The running firmware is untouched. */
  #abandon(a: Active): void {
    a.cancelTimer?.();
    if (a.opened) this.#safe("cancel", () => this.#o.sink.cancel());
    const st = this.#state();
    if (st && st.job === a.job) this.#safe("state", () => this.#o.store.delete(UPDATE_KV.state));
    if (this.#active === a) this.#active = undefined;
  }

  #consider(job: string, doc: unknown): void {
    const previous = this.#done().find((e) => e.job === job);
    if (previous) {
      const st = this.#state();
      if (st && st.job === job) this.#safe("state", () => this.#o.store.delete(UPDATE_KV.state));
      if (previous.settled) {
        // Already finished and acknowledged by the Jobs service: a replay. Refuse; record nothing.
        this.#o.log("warn", "update: replayed job refused", { job });
        this.#report(job, "REJECTED", { reason: "replayed-job", detail: `job already ended ${previous.status}` });
        this.#emit({ type: "refused", job, reason: "replayed-job", detail: `job already ended ${previous.status}` });
      } else {
        // Our terminal report may have been lost (power cut): send the same verdict again.
        this.#report(job, previous.status, { reason: previous.reason, repeat: "true" });
      }
      return;
    }
    const operation = isRecord(doc) && typeof doc.operation === "string" ? doc.operation : "";
    this.#emit({ type: "job", job, operation });
    if (!isRecord(doc)) return this.#refuse(job, "malformed-job", "job document is not an object");
    if (operation === KEYS_OPERATION) return this.#keysJob(job, doc);
    if (operation !== FIRMWARE_OPERATION) return this.#refuse(job, "unsupported-operation", `operation "${operation}"`);
    this.#firmwareJob(job, doc);
  }

  #refuse(job: string, reason: RefusalReason, detail: string, extra: Record<string, string> = {}): void {
    this.#finish(job, "REJECTED", reason, detail, extra);
  }

  #fail(job: string, reason: FailureReason, detail: string, extra: Record<string, string> = {}): void {
    this.#finish(job, "FAILED", reason, detail, extra);
  }

  /** End a job: abandon any partial image, forget its state, remember the verdict, report it. */
  #finish(job: string, status: JobStatus, reason: string, detail: string, extra: Record<string, string> = {}): void {
    const a = this.#active;
    if (a && a.job === job) {
      a.cancelTimer?.();
      if (a.opened) this.#safe("cancel", () => this.#o.sink.cancel());
      a.opened = false;
      this.#active = undefined;
    }
    // The verdict is recorded before the state is forgotten: a power cut in between leaves a job
    // that is both finished and in progress, which the next boot resolves by finishing it again.
    this.#safe("record", () => {
      const done = this.#done().filter((e) => e.job !== job);
      done.push({ job, status, reason, settled: false });
      this.#write(UPDATE_KV.done, done.slice(-DONE_KEEP) as unknown as Json);
    });
    const st = this.#state();
    if (st && st.job === job) this.#safe("state", () => this.#o.store.delete(UPDATE_KV.state));
    this.#report(job, status, { reason, detail, ...extra });
    const level = status === "SUCCEEDED" ? "info" : "warn";
    this.#o.log(level, `update: job ${status}`, { job, reason });
    if (status === "REJECTED") this.#emit({ type: "refused", job, reason: reason as RefusalReason, detail });
    else if (status === "FAILED") this.#emit({ type: "failed", job, reason: reason as FailureReason, detail });
  }

  #settle(job: string): void {
    this.#safe("record", () => {
      const done = this.#done();
      const e = done.find((d) => d.job === job);
      if (!e || e.settled) return;
      e.settled = true;
      this.#write(UPDATE_KV.done, done as unknown as Json);
    });
  }

  #emit(event: UpdateEvent): void {
    try {
      this.#o.onEvent?.(event);
    } catch (e) {
      this.#o.log("warn", "update: event listener threw", { reason: String(e) });
    }
  }

  // ------------------------------------------------------------------ firmware

  #firmwareJob(job: string, doc: Record<string, unknown>): void {
    const o = this.#o;
    const release = readRelease(doc.release);
    if (!release.ok) return this.#refuse(job, "malformed-manifest", release.problem);
    const s = doc.stream;
    if (!isRecord(s) || typeof s.id !== "string" || !STREAM_ID.test(s.id) || !Number.isInteger(s.file) || (s.file as number) < 0 || (s.file as number) > 255) {
      return this.#refuse(job, "malformed-job", "stream must be {id, file 0-255, version?}");
    }
    if (s.version !== undefined && !Number.isSafeInteger(s.version)) return this.#refuse(job, "malformed-job", "stream version must be an integer");
    const stream: StreamRef = { id: s.id, file: s.file as number, version: s.version as number | undefined };
    const m = release.manifest;
    const details = { version: String(m.version), label: m.label };
    if (!release.signature) return this.#refuse(job, "unsigned", "release carries no signature", details);
    const key = this.#trusted.keys.find((k) => releaseKeyId(k) === m.keyId);
    if (!key) return this.#refuse(job, "unknown-key", `key ${m.keyId} is not a trusted release key`, details);
    if (m.board !== o.board) return this.#refuse(job, "wrong-board", `release is for ${m.board}, this is ${o.board}`, details);
    if (m.version < this.#floor) return this.#refuse(job, "downgrade", `version ${m.version} is below the floor ${this.#floor}`, details);
    if (m.version === this.#floor) return this.#refuse(job, "not-newer", `version ${m.version} is already installed`, details);
    if (m.minVersion > o.runningVersion) return this.#refuse(job, "base-too-old", `needs version ${m.minVersion} or later first`, details);
    if (m.size > (o.maxImageBytes ?? 16 * 1024 * 1024)) return this.#refuse(job, "too-large", `${m.size} bytes does not fit the update slot`, details);

    const st = this.#state();
    const attempts = st && st.job === job ? st.attempts : 0;
    if (attempts >= (o.maxAttempts ?? 3)) return this.#fail(job, "interrupted", `${attempts} attempts were cut short`, details);

    const a = newActive(job, "verifying", attempts);
    a.manifest = m;
    a.stream = stream;
    this.#active = a;
    this.#report(job, "IN_PROGRESS", { step: "verifying", ...details });
    const signature = release.signature;
    // The one Ed25519 verify of this update: seconds of curve work, so off the message handler (on the
    // worker when there is one), and at most a few an hour whoever publishes job notifications.
    const verified = (good: boolean) => this.#guard(() => {
      if (this.#active !== a || this.#stopped) return;
      if (!good) return this.#refuse(job, "bad-signature", `signature does not verify under key ${m.keyId}`, details);
      this.#download.start(a);
    });
    this.#whenVerifyAllowed(a, () => {
      this.stats.verifies++;
      const message = manifestMessage(m);
      if (o.crypto) {
        o.crypto.verify(message, signature, key).then(verified, () => verified(false));
        return;
      }
      let good = false;
      try {
        good = (o.verify ?? naclVerify)(message, signature, key);
      } catch {
        good = false;
      }
      verified(good);
    });
  }

  /** Run `verify` once the job may pay for a signature check: at once, or when the rate allows, if the job is still ours. */
  #whenVerifyAllowed(a: Active, verify: () => void): void {
    const wait = this.#verifies.waitMs();
    if (wait > 0) this.#o.log("warn", "update: signature checks are rate-limited; the job waits", { job: a.job, ms: wait });
    a.cancelTimer = this.#o.clock.schedule(() => this.#guard(() => {
      a.cancelTimer = undefined;
      if (this.#active !== a || this.#stopped) return;
      if (!this.#verifies.take()) return this.#whenVerifyAllowed(a, verify);
      verify();
    }), wait);
  }

  // ------------------------------------------------------------------ release keys

  #keysJob(job: string, doc: Record<string, unknown>): void {
    const a = newActive(job, "keys", 0);
    this.#active = a;
    this.#report(job, "IN_PROGRESS", { step: "verifying" });
    // Several verifies, on this machine: rare (a release-key rotation), and rate-limited like the manifest's.
    this.#whenVerifyAllowed(a, () => this.#guard(() => {
      if (this.#active !== a || this.#stopped) return;
      // With no trusted key (a damaged key record), nothing can authorise a new set.
      if (this.#trusted.keys.length === 0) return this.#refuse(job, "unauthorized", "this device trusts no release key (its key record is damaged)");
      const verdict = checkKeyUpdate(doc.keys, this.#trusted, this.#o.verify ?? naclVerify);
      if (!verdict.ok) return this.#refuse(job, verdict.reason, verdict.detail);
      try {
        // The set first, then the floor naming its serial: after a cut between them the set is newer than the floor asks, which is fine.
        this.#o.store.write(UPDATE_KV.keys, encodeJsonRecord(KEYS_KIND, { keys: verdict.keys.keys.map((k) => toHex(k)), serial: verdict.keys.serial }, { tag: this.#o.recordTag }));
        this.#trusted = verdict.keys;
        if (this.#floor !== Number.MAX_SAFE_INTEGER) this.#storeFloor(this.#floor);
      } catch (e) {
        return this.#fail(job, "write-failed", String(e));
      }
      this.#emit({ type: "keys", job, serial: verdict.keys.serial });
      this.#finish(job, "SUCCEEDED", "keys-updated", `release key set ${verdict.keys.serial}: ${this.trustedKeyIds.join(" ")}`);
    }));
  }
}
