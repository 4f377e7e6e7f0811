/*
 * Provisioning over the serial console: the board's local channel.
 *
 * While the device is unprovisioned it listens on its USB/UART console for one
 * bundle (core/provisioning) and hands it to Provisioning.accept(). Physical
 * access is the credential: nothing listens on the network before
 * provisioning, and a provisioned device ignores the console until a factory
 * reset. The console also carries the device log, so the protocol is ASCII
 * lines with a prefix, and everything else on the line is noise to both ends:
 *
 *   host → device                         device → host
 *   DWPROV1 HELLO                         DWPROV1 STATE <state> <message>
 *   DWPROV1 BEGIN <bytes> <digest>        DWPROV1 READY <bytes per chunk>
 *   DWPROV1 DATA <index> <base64url>      DWPROV1 ACK <index>
 *   DWPROV1 END                           DWPROV1 OK <thing> <device public key, hex>
 *                                         DWPROV1 ERR <reason>
 *
 * The digest is the first 16 bytes of SHA-512 over the bundle, in hex: a
 * console that drops or flips a byte is caught before anything is stored.
 * One chunk is in flight at a time (the host waits for its ACK), which is the
 * flow control a UART console without handshake lines needs; a repeated chunk
 * (its ACK was lost) is acknowledged again and not appended twice. A transfer
 * idle for 30 s is dropped and its buffer wiped. Replies name problems, never
 * values: the bundle holds the Wi-Fi passphrase and the TLS private key.
 *
 * Both ends are here, platform-free: the device side runs over a ConsolePort
 * (ESP_getc through the XS FFI on a board, see ./board), the host side
 * (sendBundle) over a tty in tools/mc.ts, and the host tests join the two.
 */
import type { Log, Sha512 } from "../core/ports";
import { fromBase64Url, toBase64Url, toHex, wipe } from "../core/bytes";
import { BUNDLE_MAX_BYTES } from "../core/provisioning";

export const PREFIX = "DWPROV1";
/** Bundle bytes per DATA line: 128 base64url characters, well under MAX_LINE. */
export const CHUNK_BYTES = 96;
/** Longer lines are noise (or an attack on the line buffer) and are dropped whole. */
export const MAX_LINE = 200;
export const IDLE_TIMEOUT_MS = 30_000;
const DIGEST_BYTES = 16;

/** The console, as the device sees it. */
export interface ConsolePort {
  /** Bytes received since the last call (at most max), or undefined when there are none. */
  read(max: number): Uint8Array | undefined;
  /** Send one line; the port adds the line ending. */
  writeLine(line: string): void;
}

/** What the device side needs of core/provisioning's Provisioning. */
export interface BundleAcceptor {
  status(): { provisioned: boolean; state: string; message: string };
  accept(bundle: Uint8Array): { thing: string; publicKey: Uint8Array };
}

export function bundleDigest(bundle: Uint8Array, sha512: Sha512): string {
  return toHex(sha512(bundle).subarray(0, DIGEST_BYTES));
}

/** Keep a reply on one line and free of anything a terminal would interpret. */
function oneLine(text: string): string {
  return text.replace(/[^\x20-\x7e]/g, "?").slice(0, MAX_LINE - 20);
}

// ------------------------------------------------------------------ device

export interface ConsoleProvisionerOptions {
  port: ConsolePort;
  provisioning: BundleAcceptor;
  sha512: Sha512;
  schedule: (callback: () => void, delayMs: number) => () => void;
  /** Monotonic milliseconds, for the idle timeout. */
  now: () => number;
  log: Log;
  /** The bundle is stored: the caller boots the firmware. */
  onProvisioned: (result: { thing: string; publicKey: Uint8Array }) => void;
  /** Console poll interval. Default 10 ms: a UART's 256-byte buffer must not overflow. */
  pollMs?: number;
}

interface Transfer {
  buffer: Uint8Array;
  received: number;
  next: number;
  digest: string;
  lastAt: number;
}

export class ConsoleProvisioner {
  #options: ConsoleProvisionerOptions;
  #line: number[] = [];
  #overlong = false;
  #transfer: Transfer | undefined;
  #cancel: (() => void) | undefined;
  #running = false;

  constructor(options: ConsoleProvisionerOptions) {
    this.#options = options;
  }

  start(): void {
    if (this.#running) return;
    this.#running = true;
    this.#sendState();
    this.#poll();
  }

  stop(): void {
    this.#running = false;
    this.#cancel?.();
    this.#cancel = undefined;
    this.#drop();
  }

  /** Feed received bytes (the poll loop does; exposed for tests). */
  receive(bytes: Uint8Array): void {
    for (const b of bytes) {
      if (b === 0x0a || b === 0x0d) {
        if (!this.#overlong && this.#line.length > 0) this.#handle(String.fromCharCode(...this.#line));
        this.#line.length = 0;
        this.#overlong = false;
      } else if (this.#line.length >= MAX_LINE) {
        this.#overlong = true;
      } else if (!this.#overlong) {
        this.#line.push(b);
      }
    }
  }

  #poll(): void {
    if (!this.#running) return;
    const t = this.#transfer;
    if (t && this.#options.now() - t.lastAt > IDLE_TIMEOUT_MS) {
      this.#drop();
      this.#reply("ERR transfer idle for 30 s: abandoned; send the bundle again");
    }
    for (let i = 0; i < 8 && this.#running; i++) {
      const bytes = this.#options.port.read(256);
      if (!bytes || bytes.length === 0) break;
      this.receive(bytes);
    }
    if (this.#running) this.#cancel = this.#options.schedule(() => this.#poll(), this.#options.pollMs ?? 10);
  }

  #handle(line: string): void {
    if (!line.startsWith(PREFIX + " ")) return;
    const words = line.slice(PREFIX.length + 1).trim().split(/ +/);
    switch (words[0]) {
      case "HELLO":
        this.#sendState();
        return;
      case "BEGIN":
        this.#begin(words);
        return;
      case "DATA":
        this.#data(words);
        return;
      case "END":
        this.#end();
        return;
      default:
        this.#reply("ERR unknown command");
    }
  }

  #begin(words: string[]): void {
    this.#drop();
    if (this.#options.provisioning.status().provisioned) {
      this.#reply("ERR already provisioned: a factory reset is needed before another bundle");
      return;
    }
    const length = /^[0-9]{1,6}$/.test(words[1] ?? "") ? Number(words[1]) : NaN;
    const digest = words[2] ?? "";
    if (!(length >= 1 && length <= BUNDLE_MAX_BYTES)) {
      this.#reply(`ERR bundle length must be 1-${BUNDLE_MAX_BYTES} bytes`);
      return;
    }
    if (!new RegExp(`^[0-9a-f]{${DIGEST_BYTES * 2}}$`).test(digest)) {
      this.#reply("ERR digest must be 32 lowercase hex digits");
      return;
    }
    this.#transfer = { buffer: new Uint8Array(length), received: 0, next: 0, digest, lastAt: this.#options.now() };
    this.#options.log("info", "provisioning: receiving a bundle on the console", { bytes: length });
    this.#reply(`READY ${CHUNK_BYTES}`);
  }

  #data(words: string[]): void {
    const t = this.#transfer;
    if (!t) {
      this.#reply("ERR no transfer: send BEGIN first");
      return;
    }
    const index = /^[0-9]{1,4}$/.test(words[1] ?? "") ? Number(words[1]) : NaN;
    if (index === t.next - 1) {
      // Its ACK was lost: acknowledge again, append nothing.
      this.#reply(`ACK ${index}`);
      return;
    }
    if (index !== t.next) {
      this.#drop();
      this.#reply("ERR chunk out of order: transfer abandoned");
      return;
    }
    let chunk: Uint8Array;
    try {
      chunk = fromBase64Url(words[2] ?? "");
    } catch {
      this.#drop();
      this.#reply("ERR chunk is not base64url: transfer abandoned");
      return;
    }
    if (chunk.length === 0 || chunk.length > CHUNK_BYTES || t.received + chunk.length > t.buffer.length) {
      wipe(chunk);
      this.#drop();
      this.#reply("ERR chunk does not fit the announced length: transfer abandoned");
      return;
    }
    t.buffer.set(chunk, t.received);
    wipe(chunk);
    t.received += chunk.length;
    t.next++;
    t.lastAt = this.#options.now();
    this.#reply(`ACK ${index}`);
  }

  #end(): void {
    const t = this.#transfer;
    if (!t) {
      this.#reply("ERR no transfer: send BEGIN first");
      return;
    }
    this.#transfer = undefined;
    try {
      if (t.received !== t.buffer.length) {
        this.#reply(`ERR received ${t.received} of ${t.buffer.length} bytes: send the bundle again`);
        return;
      }
      if (bundleDigest(t.buffer, this.#options.sha512) !== t.digest) {
        this.#reply("ERR digest mismatch (the line corrupted the bundle): send it again");
        return;
      }
      let result: { thing: string; publicKey: Uint8Array };
      try {
        result = this.#options.provisioning.accept(t.buffer);
      } catch (e) {
        this.#reply(`ERR ${oneLine(e instanceof Error ? e.message : String(e))}`);
        return;
      }
      this.#reply(`OK ${result.thing} ${toHex(result.publicKey)}`);
      this.stop();
      this.#options.onProvisioned(result);
    } finally {
      wipe(t.buffer);
    }
  }

  #sendState(): void {
    const s = this.#options.provisioning.status();
    this.#reply(`STATE ${s.state} ${oneLine(s.message)}`);
  }

  #drop(): void {
    if (this.#transfer) wipe(this.#transfer.buffer);
    this.#transfer = undefined;
  }

  #reply(text: string): void {
    this.#options.port.writeLine(`${PREFIX} ${text}`);
  }
}

// ------------------------------------------------------------------ host

export type Reply =
  | { kind: "state"; state: string; message: string }
  | { kind: "ready"; chunkBytes: number }
  | { kind: "ack"; index: number }
  | { kind: "ok"; thing: string; publicKey: string }
  | { kind: "err"; message: string };

/** A device reply, or undefined for any other console line (the device log). */
export function parseReply(line: string): Reply | undefined {
  const at = line.indexOf(PREFIX + " ");
  if (at < 0) return undefined;
  const body = line.slice(at + PREFIX.length + 1).replace(/[\r\n]+$/, "");
  const [word, ...rest] = body.split(" ");
  switch (word) {
    case "STATE":
      return { kind: "state", state: rest[0] ?? "", message: rest.slice(1).join(" ") };
    case "READY":
      return { kind: "ready", chunkBytes: Number(rest[0]) };
    case "ACK":
      return { kind: "ack", index: Number(rest[0]) };
    case "OK":
      return { kind: "ok", thing: rest[0] ?? "", publicKey: rest[1] ?? "" };
    case "ERR":
      return { kind: "err", message: rest.join(" ") };
    default:
      return undefined;
  }
}

/** The lines that carry one bundle. */
export function frameBundle(bundle: Uint8Array, sha512: Sha512): { begin: string; data: string[]; end: string } {
  if (bundle.length === 0 || bundle.length > BUNDLE_MAX_BYTES) throw new RangeError(`bundle must be 1-${BUNDLE_MAX_BYTES} bytes`);
  const data: string[] = [];
  for (let i = 0, at = 0; at < bundle.length; i++, at += CHUNK_BYTES) {
    data.push(`${PREFIX} DATA ${i} ${toBase64Url(bundle.subarray(at, at + CHUNK_BYTES))}`);
  }
  return { begin: `${PREFIX} BEGIN ${bundle.length} ${bundleDigest(bundle, sha512)}`, data, end: `${PREFIX} END` };
}

export class ProvisionError extends Error {
  override name = "ProvisionError";
}

export interface SendBundleOptions {
  bundle: Uint8Array;
  sha512: Sha512;
  writeLine: (line: string) => void;
  /** The next device reply, or undefined when none came within timeoutMs. */
  nextReply: (timeoutMs: number) => Promise<Reply | undefined>;
  /** Wait per reply, and how often a line is sent again. Defaults 3 s and 4 tries. */
  timeoutMs?: number;
  tries?: number;
  /** The device stores the bundle and makes its key: seconds on an ESP32. Default 90 s. */
  acceptTimeoutMs?: number;
  progress?: (message: string) => void;
}

/** Host side: send a bundle and return what the device reports. Throws ProvisionError with the device's reason. */
export async function sendBundle(o: SendBundleOptions): Promise<{ thing: string; publicKey: string }> {
  const timeout = o.timeoutMs ?? 3000;
  const tries = o.tries ?? 4;
  const frames = frameBundle(o.bundle, o.sha512);

  /** Send a line until a reply passes `want` (other replies are skipped); ERR ends the transfer. */
  const exchange = async <R extends Reply>(line: string, want: (r: Reply) => r is R, waitMs = timeout, attempts = tries): Promise<R> => {
    for (let attempt = 1; attempt <= attempts; attempt++) {
      o.writeLine(line);
      const deadline = Date.now() + waitMs;
      for (;;) {
        const left = deadline - Date.now();
        if (left <= 0) break;
        const reply = await o.nextReply(left);
        if (!reply) break;
        if (want(reply)) return reply;
        if (reply.kind === "err") throw new ProvisionError(`device refused: ${reply.message}`);
      }
    }
    throw new ProvisionError(`no answer from the device to "${line.split(" ").slice(0, 2).join(" ")}" after ${attempts} ${attempts === 1 ? "try" : "tries"} (is it running a build without -d, and unprovisioned?)`);
  };

  const state = await exchange(`${PREFIX} HELLO`, (r): r is Extract<Reply, { kind: "state" }> => r.kind === "state");
  o.progress?.(`device: ${state.state} (${state.message})`);
  if (state.state === "provisioned") throw new ProvisionError("the device is already provisioned: a factory reset is needed first");
  await exchange(frames.begin, (r): r is Extract<Reply, { kind: "ready" }> => r.kind === "ready");
  for (let i = 0; i < frames.data.length; i++) {
    await exchange(frames.data[i], (r): r is Extract<Reply, { kind: "ack" }> => r.kind === "ack" && r.index === i);
    if (i % 10 === 9) o.progress?.(`sent ${Math.min((i + 1) * CHUNK_BYTES, o.bundle.length)} of ${o.bundle.length} bytes`);
  }
  // Sent once: the device ends the transfer on END, so a repeat could only be refused.
  const ok = await exchange(frames.end, (r): r is Extract<Reply, { kind: "ok" }> => r.kind === "ok", o.acceptTimeoutMs ?? 90_000, 1);
  return { thing: ok.thing, publicKey: ok.publicKey };
}
