/*
 * Stream download: an update image arrives over AWS IoT MQTT file delivery
 * (streams) in windows of blocks. Each block is decoded, checked against the
 * signed size and written in order to the inactive slot while it is hashed;
 * a silent stream is asked again, boundedly, timed from the request's PUBACK
 * so that an offline spell does not count. When the last block is in, the
 * image goes to ./update-activation.
 */
import { canonicalBytes, type Json } from "./canonical";
import { activate } from "./update-activation";
import { fromBase64, peerText, type Active, type UpdateContext } from "./update-protocol";

export class StreamDownload {
  #c: UpdateContext;
  /** Serial of the latest download, in every request token: answers to an earlier download are ignored. */
  #downloads = 0;

  constructor(context: UpdateContext) {
    this.#c = context;
  }

  /** Open the slot and ask for the first blocks of a verified job. */
  start(a: Active): void {
    const o = this.#c.o;
    const m = a.manifest!;
    try {
      this.#c.saveState({ phase: "downloading", job: a.job, version: m.version, attempts: a.attempts + 1 });
      o.sink.open(m.size);
      a.opened = true;
    } catch (e) {
      return this.#c.fail(a.job, "write-failed", `could not open the update slot: ${String(e)}`);
    }
    a.phase = "downloading";
    a.digest = o.createDigest();
    a.serial = ++this.#downloads;
    a.total = Math.ceil(m.size / this.#c.blockSize);
    a.startedAt = o.clock.monotonic();
    o.log("info", "update: downloading", { job: a.job, version: m.version, bytes: m.size, stream: a.stream!.id });
    this.#request(a);
  }

  #request(a: Active): void {
    if (this.#c.active() !== a || a.phase !== "downloading") return;
    const count = Math.min(this.#c.o.blocksPerRequest ?? 4, a.total - a.next);
    a.windowEnd = a.next + count;
    const stream = a.stream!;
    const req: Record<string, Json> = { c: this.#c.token(`d${a.serial}-`), f: stream.file, l: this.#c.blockSize, o: a.next, n: count };
    if (stream.version !== undefined) req.s = stream.version;
    this.#c.stats.requests++;
    a.cancelTimer?.();
    a.cancelTimer = undefined;
    const sentFor = a.next;
    this.#c.o.publish(this.#c.topics.streamGet(stream.id), canonicalBytes(req)).then(
      () => this.#c.guard(() => {
        // Time the answer from the broker's PUBACK: while offline the request waits in the outbox instead.
        if (this.#c.active() === a && a.phase === "downloading" && a.next === sentFor && !a.cancelTimer) this.#arm(a);
      }),
      () => this.#c.guard(() => {
        if (this.#c.active() === a && a.phase === "downloading") this.#arm(a);
      }),
    );
  }

  #arm(a: Active): void {
    a.cancelTimer?.();
    a.cancelTimer = this.#c.o.clock.schedule(() => this.#c.guard(() => {
      a.cancelTimer = undefined;
      if (this.#c.active() !== a || a.phase !== "downloading") return;
      a.retries++;
      this.#c.stats.retries++;
      if (a.retries > (this.#c.o.maxRetries ?? 8)) return this.#c.fail(a.job, "stream-timeout", `no block ${a.next} after ${a.retries} requests`);
      this.#c.o.log("warn", "update: stream silent; asking again", { job: a.job, block: a.next, retry: a.retries });
      this.#request(a);
    }), this.#c.o.requestTimeoutMs ?? 15_000);
  }

  onBlock(streamId: string, doc: Record<string, unknown>): void {
    const a = this.#c.active();
    if (!a || a.phase !== "downloading" || streamId !== a.stream!.id) return;
    if (typeof doc.c !== "string" || !doc.c.startsWith(`d${a.serial}-`)) return;
    if (doc.f !== a.stream!.file) return;
    const i = doc.i;
    if (typeof i !== "number" || !Number.isInteger(i) || i < a.next || i >= a.windowEnd || a.pending.has(i)) return;
    if (typeof doc.p !== "string") return this.#c.fail(a.job, "stream-error", `block ${i} has no payload`);
    let bytes: Uint8Array;
    try {
      bytes = fromBase64(doc.p);
    } catch {
      return this.#c.fail(a.job, "stream-error", `block ${i} is not base64`);
    }
    if (doc.l !== undefined && doc.l !== bytes.length) return this.#c.fail(a.job, "stream-error", `block ${i} says ${peerText(doc.l)} bytes, carries ${bytes.length}`);
    a.pending.set(i, bytes);
    while (this.#c.active() === a && a.pending.has(a.next)) {
      const block = a.pending.get(a.next)!;
      a.pending.delete(a.next);
      if (!this.#consume(a, block)) return;
    }
    if (this.#c.active() !== a) return;
    if (a.next === a.total) return activate(this.#c, a);
    if (a.next === a.windowEnd) this.#request(a);
    else this.#arm(a);
  }

  /** Write one in-order block to the slot and the digest. False if the job ended. */
  #consume(a: Active, block: Uint8Array): boolean {
    const m = a.manifest!;
    const i = a.next;
    const expected = i === a.total - 1 ? m.size - i * this.#c.blockSize : this.#c.blockSize;
    if (block.length < expected) {
      this.#c.refuse(a.job, "truncated", `block ${i} has ${block.length} of ${expected} bytes; image is ${m.size} bytes`);
      return false;
    }
    if (block.length > expected) {
      this.#c.refuse(a.job, "size-mismatch", `stream is longer than the signed size ${m.size}`);
      return false;
    }
    try {
      this.#c.o.sink.write(block);
    } catch (e) {
      this.#c.fail(a.job, "write-failed", String(e));
      return false;
    }
    a.digest!.update(block);
    a.next++;
    a.bytes += block.length;
    a.retries = 0;
    this.#c.stats.blocks++;
    this.#c.stats.bytes += block.length;
    const quarter = Math.floor((a.bytes * 4) / m.size);
    if (quarter > a.quarter && quarter < 4) {
      a.quarter = quarter;
      this.#c.report(a.job, "IN_PROGRESS", { step: "downloading", progress: String(quarter * 25) });
      this.#c.emit({ type: "progress", job: a.job, bytes: a.bytes, size: m.size });
    }
    return true;
  }

  onRejected(streamId: string, doc: Record<string, unknown>): void {
    const a = this.#c.active();
    if (!a || a.phase !== "downloading" || streamId !== a.stream!.id) return;
    const token = typeof doc.c === "string" ? doc.c : typeof doc.clientToken === "string" ? doc.clientToken : "";
    if (token && !token.startsWith(`d${a.serial}-`)) return;
    const code = typeof doc.o === "string" ? doc.o : typeof doc.code === "string" ? doc.code : "unknown";
    const message = typeof doc.m === "string" ? doc.m : "";
    if ((code === "ResourceNotFound" || code === "OffsetOutOfBounds") && a.bytes < a.manifest!.size) {
      return this.#c.refuse(a.job, "truncated", `stream ended at ${a.bytes} of ${a.manifest!.size} bytes (${code})`);
    }
    if (code === "VersionMismatch") return this.#c.fail(a.job, "stream-changed", message || code);
    this.#c.fail(a.job, "stream-error", `${code}${message ? `: ${message}` : ""}`);
  }
}
