/*
 * The egress allowlist: the doorbell talks to its AWS IoT endpoint, to one NTP
 * host, and to nothing else.
 *
 * The list is fixed at build time (manifest.json config.doorward.egress, read
 * through mc/config on the device and from the same file on the host), checked
 * once, and frozen. A production build holds exactly two entries: the ATS data
 * endpoint of the configured account and region, and the NTP host TLS needs for
 * the time. A development build may add the local stand-in on loopback. A
 * production configuration with anything else, or with a trust anchor other
 * than Amazon Root CA 1 or 3, is refused before anything connects.
 *
 * Matching normalises, then compares exactly. Normalising never maps one name
 * onto another: it lower-cases ASCII and drops one trailing dot, and refuses
 * everything that some parser downstream might read differently from us
 * (non-ASCII, percent signs, userinfo, ports, brackets, IP literals in any form
 * but canonical dotted quad, which is what inet_aton and WHATWG URL parsers
 * would otherwise "helpfully" accept as 127.1 or 0x7f000001). The connection is
 * then made to the normalised name, so what was checked is what is used.
 *
 * Every refusal is counted per (destination, requester, reason) and reported to
 * the owner as a signed audit event, at most one report per interval, so a
 * flood of refused attempts costs one small event a minute on the link.
 * The platform chokepoints (modules/device/egress, modules/host/egress) call
 * check() before any DNS look-up or socket; no other module may reach the
 * network (tools/import-rules.ts enforces that over the tree).
 */
import nacl from "tweetnacl";
import type { Json } from "./canonical";
import type { Clock, Log, Sha512 } from "./ports";
import { toHex } from "./bytes";

export type EgressPurpose = "mqtt" | "ntp";
export const EGRESS_PURPOSES: readonly EgressPurpose[] = ["mqtt", "ntp"];
export type EgressProfile = "production" | "development";

/** AWS IoT on port 443 with a device certificate needs this ALPN protocol; 8883 needs none. */
export const AWS_IOT_ALPN = "x-amzn-mqtt-ca";
export const NTP_PORT = 123;
/** Names longer than this are refused before any parsing. */
export const MAX_RAW_HOST = 255;
const MAX_NAME = 253;
const MAX_LABEL = 63;

/** `<prefix>-ats.iot.<region>.amazonaws.com`: the only production MQTT destination. */
export const AWS_IOT_ATS_ENDPOINT = /^[a-z0-9]{1,63}-ats\.iot\.[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}\.amazonaws\.com$/;

/**
 * SHA-512 of the DER of the two trust anchors a production build may carry
 * (certs/AmazonRootCA1.der, certs/AmazonRootCA3.der; their SHA-256 fingerprints,
 * as Amazon publishes them, are in certs/README.md and checked by the tests).
 * SHA-512 because it is the digest every engine the core runs on has (tweetnacl).
 */
export const AMAZON_ROOTS: readonly { readonly name: string; readonly sha512: string }[] = Object.freeze([
  Object.freeze({ name: "Amazon Root CA 1", sha512: "3eaea0ef755c61cff6ef28dcf476a266e253add5be34d91b0392f5bd3be3765bc8af7443120198b861dcec4135022b04ef220281e4a1d3cdbd07c5c088293567" }),
  Object.freeze({ name: "Amazon Root CA 3", sha512: "91fa2f0317213fcf73db41a1e20f1a4bab7378042a48b406201948e4df10b24517fd276054359c1c53705252d65c083e9d4698ca7e61a830db1a3c4bf0ee12c7" }),
]);
/** Resource names of those anchors in the firmware image (manifest.json resources). */
export const AMAZON_ROOT_RESOURCES: readonly string[] = Object.freeze(["AmazonRootCA1.der", "AmazonRootCA3.der"]);

export interface EgressEntry {
  /** Normalised: lower-case ASCII name without a trailing dot, or a canonical dotted-quad IPv4 address. */
  readonly host: string;
  readonly port: number;
  readonly purpose: EgressPurpose;
  /** ALPN protocol the connection must offer (AWS IoT on 443). */
  readonly alpn?: string;
  /** The local stand-in; never present in a production allowlist. */
  readonly development: boolean;
}

export interface Allowlist {
  readonly profile: EgressProfile;
  readonly entries: readonly EgressEntry[];
}

/** Why a destination was refused. */
export type EgressRefusal =
  | "not-a-string" | "empty" | "too-long" | "not-ascii" | "space-or-control" | "userinfo" | "port-in-host"
  | "percent-encoding" | "ipv6-literal" | "forbidden-character" | "empty-label" | "label-too-long" | "bad-label"
  | "ambiguous-ip" | "bad-port" | "not-allowlisted" | "wrong-port" | "wrong-purpose";

export type NormalisedHost =
  | { ok: true; host: string; kind: "name" | "ipv4" }
  | { ok: false; reason: EgressRefusal };

export class EgressConfigError extends Error {
  override name = "EgressConfigError";
}

/** Thrown by the chokepoints (or handed to callbacks) for a refused destination. */
export class EgressRefusedError extends Error {
  override name = "EgressRefusedError";
  readonly reason: EgressRefusal;
  readonly destination: string;
  constructor(reason: EgressRefusal, destination: string) {
    super(`egress: ${destination} refused (${reason})`);
    this.reason = reason;
    this.destination = destination;
  }
}

const LABEL = /^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$/;
const CANONICAL_OCTET = /^(?:0|[1-9][0-9]{0,2})$/;
/** A last label that makes WHATWG URL and inet_aton treat the whole host as an IPv4 address. */
const NUMERIC_LABEL = /^(?:[0-9]+|0x[0-9a-f]*)$/;
const FORBIDDEN = "/\\?#[]<>^|{}\"'`,;=!$&()*+~";

/**
 * Normalise a host name for exact comparison, or say why it cannot be trusted
 * to mean one thing. Never contacts anything.
 */
export function normaliseHost(raw: unknown): NormalisedHost {
  if (typeof raw !== "string") return { ok: false, reason: "not-a-string" };
  if (raw.length === 0) return { ok: false, reason: "empty" };
  if (raw.length > MAX_RAW_HOST) return { ok: false, reason: "too-long" };
  for (let i = 0; i < raw.length; i++) {
    const c = raw.charCodeAt(i);
    if (c > 0x7e) return { ok: false, reason: "not-ascii" };
    if (c <= 0x20) return { ok: false, reason: "space-or-control" };
  }
  if (raw.includes("@")) return { ok: false, reason: "userinfo" };
  if (raw.includes("%")) return { ok: false, reason: "percent-encoding" };
  if (raw.includes("[") || raw.includes("]") || raw.indexOf(":") !== raw.lastIndexOf(":")) return { ok: false, reason: "ipv6-literal" };
  if (raw.includes(":")) return { ok: false, reason: "port-in-host" };
  for (let i = 0; i < raw.length; i++) if (FORBIDDEN.includes(raw[i])) return { ok: false, reason: "forbidden-character" };

  let host = raw.toLowerCase();
  if (host.endsWith(".")) host = host.slice(0, -1);
  if (host.length === 0) return { ok: false, reason: "empty" };
  if (host.length > MAX_NAME) return { ok: false, reason: "too-long" };
  const labels = host.split(".");
  for (const label of labels) {
    if (label.length === 0) return { ok: false, reason: "empty-label" };
    if (label.length > MAX_LABEL) return { ok: false, reason: "label-too-long" };
  }
  if (NUMERIC_LABEL.test(labels[labels.length - 1])) {
    // Parsers disagree on 127.1, 0177.0.0.1, 0x7f.0.0.1 and 2130706433; only the one spelling they agree on passes.
    if (labels.length === 4 && labels.every((l) => CANONICAL_OCTET.test(l) && Number(l) <= 255)) return { ok: true, host, kind: "ipv4" };
    return { ok: false, reason: "ambiguous-ip" };
  }
  for (const label of labels) if (!LABEL.test(label)) return { ok: false, reason: "bad-label" };
  return { ok: true, host, kind: "name" };
}

function isPort(port: unknown): port is number {
  return typeof port === "number" && Number.isInteger(port) && port >= 1 && port <= 65535;
}

function isLoopback(host: string): boolean {
  return host === "localhost" || host === "127.0.0.1";
}

/** Printable ASCII only, bounded: audit fields and logs must never carry hostile bytes or lone surrogates. */
export function printable(text: string, max = 96): string {
  let out = "";
  for (let i = 0; i < text.length && out.length < max; i++) {
    const c = text.charCodeAt(i);
    out += c >= 0x20 && c <= 0x7e && c !== 0x5c ? text[i] : `\\u${c.toString(16).padStart(4, "0")}`;
  }
  return out.length > max || text.length > max ? `${out.slice(0, max)}...(${text.length})` : out;
}

/** A destination as the audit log shows it: the name as asked for (made printable), and the port. */
export function describeDestination(host: unknown, port?: unknown): string {
  const name = typeof host === "string" ? printable(host) : `<${typeof host}>`;
  return port === undefined ? name : `${name}:${typeof port === "number" ? port : printable(String(port), 16)}`;
}

// ------------------------------------------------------------------ the allowlist

function record(value: unknown, name: string): Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw new EgressConfigError(`egress: ${name} must be an object`);
  return value as Record<string, unknown>;
}

function isPlaceholder(host: unknown): boolean {
  return typeof host === "string" && /[<>]/.test(host);
}

const ENTRY_KEYS = ["host", "port", "purpose", "alpn"];

function parseEntry(value: unknown, where: string, development: boolean): EgressEntry {
  const e = record(value, where);
  for (const key of Object.keys(e)) if (!ENTRY_KEYS.includes(key)) throw new EgressConfigError(`egress: ${where} has an unknown key "${key}"`);
  const n = normaliseHost(e.host);
  if (!n.ok) throw new EgressConfigError(`egress: ${where}.host ${describeDestination(e.host)} is not a host name (${n.reason})`);
  if (!isPort(e.port)) throw new EgressConfigError(`egress: ${where}.port must be an integer 1-65535`);
  if (typeof e.purpose !== "string" || !(EGRESS_PURPOSES as readonly string[]).includes(e.purpose)) throw new EgressConfigError(`egress: ${where}.purpose must be one of ${EGRESS_PURPOSES.join(", ")}`);
  if (e.alpn !== undefined && (typeof e.alpn !== "string" || e.alpn.length === 0 || e.alpn.length > 255)) throw new EgressConfigError(`egress: ${where}.alpn must be a protocol name`);
  return Object.freeze({ host: n.host, port: e.port, purpose: e.purpose as EgressPurpose, ...(e.alpn === undefined ? {} : { alpn: e.alpn as string }), development });
}

/** Why a production allowlist is unacceptable, or undefined. */
export function productionProblem(entries: readonly EgressEntry[]): string | undefined {
  const dev = entries.find((e) => e.development);
  if (dev) return `development entry ${dev.host}:${dev.port} in a production build`;
  const mqtt = entries.filter((e) => e.purpose === "mqtt");
  const ntp = entries.filter((e) => e.purpose === "ntp");
  if (mqtt.length !== 1) return `a production build has exactly one MQTT endpoint (found ${mqtt.length})`;
  if (ntp.length !== 1) return `a production build has exactly one NTP host (found ${ntp.length})`;
  const broker = mqtt[0];
  if (!AWS_IOT_ATS_ENDPOINT.test(broker.host)) return `${broker.host} is not an AWS IoT ATS data endpoint (<prefix>-ats.iot.<region>.amazonaws.com)`;
  if (!((broker.port === 8883 && broker.alpn === undefined) || (broker.port === 443 && broker.alpn === AWS_IOT_ALPN))) {
    return `AWS IoT takes device certificates on port 8883, or on 443 with ALPN ${AWS_IOT_ALPN} (got ${broker.port}${broker.alpn ? ` ALPN ${broker.alpn}` : ""})`;
  }
  const time = ntp[0];
  if (time.port !== NTP_PORT || time.alpn !== undefined) return `the NTP host is reached on UDP port ${NTP_PORT}`;
  for (const e of entries) {
    const n = normaliseHost(e.host);
    if (isLoopback(e.host) || /(?:^|\.)(?:localhost|local|internal|lan|home)$/.test(e.host) || (n.ok && n.kind === "ipv4")) {
      return `${e.host} is a local or literal address: not allowed in a production build`;
    }
  }
  return undefined;
}

function freezeAllowlist(profile: EgressProfile, entries: EgressEntry[]): Allowlist {
  const seen = new Set<string>();
  for (const e of entries) {
    const key = `${e.host}:${e.port}:${e.purpose}`;
    if (seen.has(key)) throw new EgressConfigError(`egress: ${key} is listed twice`);
    seen.add(key);
  }
  if (profile === "production") {
    const problem = productionProblem(entries);
    if (problem) throw new EgressConfigError(`egress: ${problem}`);
  }
  if (entries.length === 0) throw new EgressConfigError("egress: the allowlist is empty");
  return Object.freeze({ profile, entries: Object.freeze(entries.slice()) });
}

/**
 * Build the frozen allowlist from mc/config (the whole config object). The MQTT
 * entry follows the build-time `broker=` / `brokerPort=` overrides, so the
 * endpoint is named once. A placeholder endpoint is an error in production and
 * simply absent in development. Throws EgressConfigError naming the problem.
 */
export function parseEgressConfig(config: Record<string, unknown>): Allowlist {
  const dw = record(config.doorward, "doorward");
  const egress = record(dw.egress, "doorward.egress");
  for (const key of Object.keys(egress)) if (!["profile", "allow", "development"].includes(key)) throw new EgressConfigError(`egress: unknown key "${key}"`);
  const profile = egress.profile;
  if (profile !== "production" && profile !== "development") throw new EgressConfigError('egress: profile must be "production" or "development"');
  if (!Array.isArray(egress.allow)) throw new EgressConfigError("egress: allow must list the endpoints");
  const development = egress.development ?? [];
  if (!Array.isArray(development)) throw new EgressConfigError("egress: development must be a list");
  if (profile === "production" && development.length > 0) throw new EgressConfigError("egress: a production build may not carry development entries");

  const entries: EgressEntry[] = [];
  egress.allow.forEach((value, i) => {
    const raw = record(value, `allow[${i}]`);
    const override = raw.purpose === "mqtt" ? { ...raw, ...(config.broker === undefined ? {} : { host: config.broker }), ...(config.brokerPort === undefined ? {} : { port: Number(config.brokerPort) }) } : raw;
    if (isPlaceholder(override.host)) {
      if (profile === "production") throw new EgressConfigError(`egress: allow[${i}] is a placeholder (${printable(String(override.host))}): build with broker=<prefix>-ats.iot.<region>.amazonaws.com`);
      return;
    }
    entries.push(parseEntry(override, `allow[${i}]`, false));
  });
  development.forEach((value, i) => {
    const entry = parseEntry(value, `development[${i}]`, true);
    if (!isLoopback(entry.host)) throw new EgressConfigError(`egress: development[${i}] ${entry.host} is not the local stand-in (127.0.0.1 or localhost)`);
    entries.push(entry);
  });
  return freezeAllowlist(profile, entries);
}

/** A development allowlist plus the stand-in wherever it listens now (an ephemeral port on the host). */
export function withDevelopmentEntries(allowlist: Allowlist, extra: readonly { host: string; port: number; purpose: EgressPurpose }[]): Allowlist {
  if (allowlist.profile !== "development") throw new EgressConfigError("egress: a production allowlist cannot be extended");
  const entries = allowlist.entries.slice();
  extra.forEach((value, i) => {
    const entry = parseEntry(value, `extra[${i}]`, true);
    if (!isLoopback(entry.host)) throw new EgressConfigError(`egress: ${entry.host} is not the local stand-in (127.0.0.1 or localhost)`);
    if (!entries.some((e) => e.host === entry.host && e.port === entry.port && e.purpose === entry.purpose)) entries.push(entry);
  });
  return freezeAllowlist("development", entries);
}

/** Why these trust anchors (DER) are wrong for the profile, or undefined. Production: Amazon Root CA 1 and 3 only. */
export function trustStoreProblem(profile: EgressProfile, anchors: readonly Uint8Array[], sha512: Sha512 = nacl.hash): string | undefined {
  if (anchors.length === 0) return "no trust anchor";
  if (profile === "development") return undefined;
  for (const der of anchors) {
    const digest = toHex(sha512(der));
    if (!AMAZON_ROOTS.some((r) => r.sha512 === digest)) return `trust anchor ${digest.slice(0, 16)}... is not Amazon Root CA 1 or 3 (a development CA?)`;
  }
  return undefined;
}

/** Why these resource names are wrong for a production trust store, or undefined. */
export function trustAnchorNamesProblem(profile: EgressProfile, names: readonly string[]): string | undefined {
  if (names.length === 0) return "no trust anchor";
  if (profile === "development") return undefined;
  const bad = names.find((n) => !AMAZON_ROOT_RESOURCES.includes(n));
  return bad === undefined ? undefined : `trust anchor resource ${printable(bad)} is not an Amazon root (${AMAZON_ROOT_RESOURCES.join(", ")})`;
}

// ------------------------------------------------------------------ the guard

export interface EgressRequest {
  /** As the caller has it: checked and normalised here. */
  host: unknown;
  port: unknown;
  purpose: EgressPurpose;
  /** Which module asked ("device/mqtt", "device/sntp", ...): reported with every refusal. */
  requester: string;
}

export type EgressVerdict =
  | { allowed: true; host: string; port: number; kind: "name" | "ipv4"; entry: EgressEntry }
  | { allowed: false; reason: EgressRefusal; destination: string };

export interface RefusalCount {
  destination: string;
  requester: string;
  reason: EgressRefusal | "various";
  count: number;
}

export interface EgressReporterOptions {
  /** Seal and queue a signed audit event: (fields) => doorbell.emit("audit", fields). */
  emit: (fields: Record<string, Json>) => void;
  clock: Clock;
  /** At most one report per interval. Default 60 s. */
  intervalMs?: number;
  /** Distinct (destination, requester, reason) rows per report; the rest wait for the next one. Default 4. */
  maxPerReport?: number;
  /**
   * Asked before each report: false defers it by a second (at most 8 times), e.g. while no
   * precomputed nonce is ready and signing would block the engine for seconds.
   */
  mayReport?: () => boolean;
}

export interface EgressGuardOptions {
  log?: Log;
  /** Distinct refusal rows kept; beyond this they are folded into one "(other)" row. Default 32. */
  maxTracked?: number;
}

export interface EgressStatus {
  profile: EgressProfile;
  allowlist: string[];
  checked: number;
  allowed: number;
  refused: number;
  reportsSent: number;
  /** Refusal rows counted but not yet reported. */
  reportsPending: number;
  /** Refusals reported so far (the sum of the counts in sent reports). */
  refusalsReported: number;
  top: RefusalCount[];
}

const OTHER = "(other)";

function rowKey(destination: string, requester: string, reason: string): string {
  return `${destination}\n${requester}\n${reason}`;
}

export class EgressGuard {
  readonly allowlist: Allowlist;
  #log: Log | undefined;
  #maxTracked: number;
  #checked = 0;
  #allowed = 0;
  #refused = 0;
  /** Lifetime counts per row (bounded). */
  #totals = new Map<string, RefusalCount>();
  /** Counts since the last report (bounded). */
  #unreported = new Map<string, RefusalCount>();
  #reporter: Required<EgressReporterOptions> | undefined;
  #cancelReport: (() => void) | undefined;
  #lastReportAt: number | undefined;
  #reportsSent = 0;
  #refusalsReported = 0;

  constructor(allowlist: Allowlist, options: EgressGuardOptions = {}) {
    if (!Object.isFrozen(allowlist) || !Object.isFrozen(allowlist.entries)) throw new EgressConfigError("egress: the allowlist must come from parseEgressConfig (frozen)");
    if (allowlist.profile === "production") {
      const problem = productionProblem(allowlist.entries);
      if (problem) throw new EgressConfigError(`egress: ${problem}`);
    }
    this.allowlist = allowlist;
    this.#log = options.log;
    this.#maxTracked = Math.max(2, options.maxTracked ?? 32);
  }

  static fromConfig(config: Record<string, unknown>, options?: EgressGuardOptions): EgressGuard {
    return new EgressGuard(parseEgressConfig(config), options);
  }

  get profile(): EgressProfile {
    return this.allowlist.profile;
  }

  /** May this module connect to host:port for this purpose? Counts and reports a refusal. */
  check(request: EgressRequest): EgressVerdict {
    this.#checked++;
    const destination = describeDestination(request.host, request.port);
    if (!isPort(request.port)) return this.#refuse(destination, request.requester, "bad-port");
    const n = normaliseHost(request.host);
    if (!n.ok) return this.#refuse(destination, request.requester, n.reason);
    const sameHost = this.allowlist.entries.filter((e) => e.host === n.host);
    if (sameHost.length === 0) return this.#refuse(destination, request.requester, "not-allowlisted");
    const samePort = sameHost.filter((e) => e.port === request.port);
    if (samePort.length === 0) return this.#refuse(destination, request.requester, "wrong-port");
    const entry = samePort.find((e) => e.purpose === request.purpose);
    if (!entry) return this.#refuse(destination, request.requester, "wrong-purpose");
    this.#allowed++;
    return { allowed: true, host: n.host, port: entry.port, kind: n.kind, entry };
  }

  /** May this name be looked up in DNS? Only names the allowlist holds are; the answer is the normalised name. */
  checkName(host: unknown, requester: string): { allowed: true; host: string; kind: "name" | "ipv4" } | { allowed: false; reason: EgressRefusal; destination: string } {
    this.#checked++;
    const destination = describeDestination(host);
    const n = normaliseHost(host);
    if (!n.ok) return this.#refuse(destination, requester, n.reason);
    if (!this.allowlist.entries.some((e) => e.host === n.host)) return this.#refuse(destination, requester, "not-allowlisted");
    this.#allowed++;
    return { allowed: true, host: n.host, kind: n.kind };
  }

  /** The entries a resolved name may be reached on (for pinning the socket to what was checked). */
  entriesFor(host: string): readonly EgressEntry[] {
    return this.allowlist.entries.filter((e) => e.host === host);
  }

  /** Refuse to start on a trust store the profile does not allow. */
  assertTrustStore(anchors: readonly Uint8Array[], sha512?: Sha512): void {
    const problem = trustStoreProblem(this.profile, anchors, sha512);
    if (problem) throw new EgressConfigError(`egress: ${problem}`);
  }

  /** Report refusals from now on as signed audit events (rate-limited). Returns a function that detaches. */
  attachReporter(options: EgressReporterOptions): () => void {
    this.#cancelReport?.();
    this.#cancelReport = undefined;
    const reporter: Required<EgressReporterOptions> = {
      mayReport: options.mayReport ?? (() => true),
      emit: options.emit,
      clock: options.clock,
      intervalMs: Math.max(1000, options.intervalMs ?? 60_000),
      maxPerReport: Math.max(1, Math.min(options.maxPerReport ?? 4, 8)),
    };
    this.#reporter = reporter;
    this.#scheduleReport();
    return () => {
      if (this.#reporter !== reporter) return;
      this.#cancelReport?.();
      this.#cancelReport = undefined;
      this.#reporter = undefined;
    };
  }

  status(): EgressStatus {
    const top = [...this.#totals.values()].sort((a, b) => b.count - a.count).slice(0, 8).map((r) => ({ ...r }));
    return {
      profile: this.profile,
      allowlist: this.allowlist.entries.map((e) => `${e.purpose} ${e.host}:${e.port}${e.alpn ? ` alpn=${e.alpn}` : ""}${e.development ? " (development)" : ""}`),
      checked: this.#checked,
      allowed: this.#allowed,
      refused: this.#refused,
      reportsSent: this.#reportsSent,
      reportsPending: this.#unreported.size,
      refusalsReported: this.#refusalsReported,
      top,
    };
  }

  #refuse(destination: string, requester: unknown, reason: EgressRefusal): { allowed: false; reason: EgressRefusal; destination: string } {
    this.#refused++;
    const who = typeof requester === "string" && requester.length > 0 ? printable(requester, 48) : "(unnamed)";
    const first = this.#bump(this.#totals, destination, who, reason);
    this.#bump(this.#unreported, destination, who, reason);
    // One log line per new row: the counts are in status() and the audit reports.
    if (first) this.#log?.("warn", "egress refused", { destination, requester: who, reason });
    this.#scheduleReport();
    return { allowed: false, reason, destination };
  }

  /** Count one refusal in a bounded table; returns true when the row is new. */
  #bump(table: Map<string, RefusalCount>, destination: string, requester: string, reason: EgressRefusal): boolean {
    const key = rowKey(destination, requester, reason);
    const row = table.get(key);
    if (row) {
      row.count++;
      return false;
    }
    if (table.size < this.#maxTracked - 1) {
      table.set(key, { destination, requester, reason, count: 1 });
      return true;
    }
    const otherKey = rowKey(OTHER, OTHER, "various");
    const other = table.get(otherKey);
    if (other) other.count++;
    else table.set(otherKey, { destination: OTHER, requester: OTHER, reason: "various", count: 1 });
    return false;
  }

  #scheduleReport(deferrals = 0): void {
    const r = this.#reporter;
    if (!r || this.#cancelReport || this.#unreported.size === 0) return;
    const now = r.clock.monotonic();
    const due = this.#lastReportAt === undefined ? 0 : Math.max(0, this.#lastReportAt + r.intervalMs - now);
    // Always from the clock, never inline: a refusal happens inside a transport's connect().
    this.#cancelReport = r.clock.schedule(() => {
      this.#cancelReport = undefined;
      if (deferrals < 8 && !r.mayReport()) {
        this.#cancelReport = r.clock.schedule(() => {
          this.#cancelReport = undefined;
          this.#scheduleReport(deferrals + 1);
        }, 1000);
        return;
      }
      this.#report();
    }, due);
  }

  #report(): void {
    const r = this.#reporter;
    if (!r || this.#unreported.size === 0) return;
    const rows = [...this.#unreported.entries()].sort((a, b) => b[1].count - a[1].count).slice(0, r.maxPerReport);
    for (const [key] of rows) this.#unreported.delete(key);
    this.#lastReportAt = r.clock.monotonic();
    const refused: Json[] = rows.map(([, row]) => ({ destination: row.destination, requester: row.requester, reason: row.reason, count: row.count }));
    const count = rows.reduce((sum, [, row]) => sum + row.count, 0);
    this.#reportsSent++;
    this.#refusalsReported += count;
    try {
      r.emit({ report: "egress-refused", profile: this.profile, refused, count, total: this.#refused, pending: this.#unreported.size });
    } catch (e) {
      this.#log?.("error", "egress audit report failed", { reason: e instanceof Error ? e.message : String(e) });
    }
    this.#scheduleReport();
  }
}
