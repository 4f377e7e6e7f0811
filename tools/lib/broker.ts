/*
 * Which broker the cloud-side tools talk to, and how they join it: the one
 * place the simulator, the cloud consumer, the snapshot consumer, the owner's
 * relay and the update service get their endpoint, CA, certificate and key.
 *
 * Settings come from flags or from one JSON config file (paths in it are
 * relative to the file), flags winning:
 *
 *   --broker HOST[:PORT]   endpoint (port 8883 unless given)
 *   --broker-ca FILE       PEM: the CA the broker's certificate chains to
 *   --broker-cert FILE     PEM: the service identity's client certificate
 *   --broker-key FILE      PEM: its private key
 *   --broker-client-id ID  client ID base (default: the certificate's CN)
 *   --broker-servername N  TLS SNI name (default: the endpoint's host)
 *   --broker-config FILE   {"endpoint", "ca", "cert", "key", "clientId"?, "servername"?}
 *
 * The simulator also takes --broker-shadows local|aws (brokerShadows below):
 * whether it answers the device's named-shadow requests itself. AWS IoT Core
 * keeps the shadows, and a client must not answer in its name there.
 *
 * Joining is bounded: every connect and subscribe has a deadline, and every
 * refusal names the broker and what it refused (./mqtt-failure). Closing sends
 * an MQTT DISCONNECT, so the broker ends the session cleanly and fires no will.
 */
import fs from "node:fs";
import path from "node:path";
import { X509Certificate } from "node:crypto";
import mqtt, { type IClientOptions, type MqttClient } from "mqtt";
import { describeMqttFailure, MqttFailureError } from "../../modules/host/mqtt-failure";
import { UserError } from "./cli";

export const DEFAULT_MQTTS_PORT = 8883;

/** Everything a service-identity connection needs. PEM strings, not paths. */
export interface BrokerSettings {
  host: string;
  port: number;
  ca: string;
  cert: string;
  key: string;
  /** Client ID, or its base when a tool opens several connections (base-suffix). */
  clientId: string;
  /** TLS SNI name; AWS IoT refuses connections without it. Default: host. */
  servername?: string;
}

/** The flags, as given (all optional). */
export interface BrokerFlags {
  broker?: string;
  "broker-ca"?: string;
  "broker-cert"?: string;
  "broker-key"?: string;
  "broker-client-id"?: string;
  "broker-servername"?: string;
  "broker-config"?: string;
}

export const BROKER_FLAGS = ["broker", "broker-ca", "broker-cert", "broker-key", "broker-client-id", "broker-servername", "broker-config"] as const;

/** For a node:util parseArgs spec: spread into a command's options. */
export const BROKER_OPTIONS = Object.fromEntries(BROKER_FLAGS.map((f) => [f, { type: "string" as const }])) as Record<(typeof BROKER_FLAGS)[number], { type: "string" }>;

export const BROKER_USAGE = `broker (default: the local stand-in):
  --broker HOST[:PORT]       the broker's endpoint (port ${DEFAULT_MQTTS_PORT} unless given)
  --broker-ca FILE           PEM: the CA its certificate chains to
  --broker-cert FILE         PEM: the cloud service's client certificate
  --broker-key FILE          PEM: that certificate's private key
  --broker-client-id ID      client ID (default: the certificate's CN)
  --broker-servername NAME   TLS server name (default: the endpoint's host)
  --broker-config FILE       the same as JSON: {"endpoint", "ca", "cert", "key", "clientId", "servername"}`;

/** A setting the user gave that cannot work: printed as one line by the command layer (./cli). */
export class BrokerSettingsError extends UserError {
  override name = "BrokerSettingsError";
}

/** True when any broker flag was given: the tool is to use that broker, not the stand-in. */
export function brokerRequested(flags: BrokerFlags): boolean {
  return BROKER_FLAGS.some((f) => flags[f] !== undefined);
}

export function parseBrokerEndpoint(text: string): { host: string; port: number } {
  const m = /^(?:mqtts:\/\/)?([A-Za-z0-9.-]+|\[[0-9a-fA-F:]+\])(?::(\d{1,5}))?\/?$/.exec(text.trim());
  const port = m?.[2] === undefined ? DEFAULT_MQTTS_PORT : Number(m[2]);
  if (!m || port < 1 || port > 65535) throw new BrokerSettingsError(`broker endpoint must be HOST or HOST:PORT (got ${JSON.stringify(text)})`);
  return { host: m[1].replace(/^\[|\]$/g, ""), port };
}

function readPem(file: string, what: string, label: RegExp): string {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (e) {
    throw new BrokerSettingsError(`cannot read the broker ${what} ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  if (!label.test(text)) throw new BrokerSettingsError(`the broker ${what} ${file} is not PEM (expected ${label.source.replace(/\\/g, "")})`);
  return text;
}

const CERT_PEM = /-----BEGIN CERTIFICATE-----/;
const KEY_PEM = /-----BEGIN (RSA |EC )?PRIVATE KEY-----/;

/** The CN of a PEM certificate, for the default client ID. */
function commonName(certPem: string): string | undefined {
  try {
    return /(?:^|\n)CN=([^\n]+)/.exec(new X509Certificate(certPem).subject)?.[1];
  } catch {
    return undefined;
  }
}

/**
 * Resolve flags (and the config file they may name) into settings. Returns
 * undefined when no broker was asked for, so the caller uses its default.
 */
export function brokerFromFlags(flags: BrokerFlags): BrokerSettings | undefined {
  if (!brokerRequested(flags)) return undefined;
  let file: Record<string, unknown> = {};
  let base = process.cwd();
  const configPath = flags["broker-config"];
  if (configPath !== undefined) {
    let text: string;
    try {
      text = fs.readFileSync(configPath, "utf8");
    } catch (e) {
      throw new BrokerSettingsError(`cannot read the broker config ${configPath}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    try {
      file = JSON.parse(text) as Record<string, unknown>;
    } catch (e) {
      throw new BrokerSettingsError(`the broker config ${configPath} is not JSON: ${(e as Error).message}`);
    }
    if (typeof file !== "object" || file === null || Array.isArray(file)) throw new BrokerSettingsError(`the broker config ${configPath} must be a JSON object`);
    const known = new Set(["endpoint", "ca", "cert", "key", "clientId", "servername"]);
    for (const k of Object.keys(file)) if (!known.has(k)) throw new BrokerSettingsError(`the broker config ${configPath} has an unknown member "${k}" (known: ${[...known].join(", ")})`);
    for (const k of Object.keys(file)) if (typeof file[k] !== "string") throw new BrokerSettingsError(`the broker config ${configPath}: "${k}" must be a string`);
    base = path.dirname(path.resolve(configPath));
  }
  const pick = (flag: keyof BrokerFlags, member: string): { value: string; relativeTo: string } | undefined =>
    flags[flag] !== undefined ? { value: flags[flag]!, relativeTo: process.cwd() } : typeof file[member] === "string" ? { value: file[member] as string, relativeTo: base } : undefined;
  const need = (flag: keyof BrokerFlags, member: string) => {
    const v = pick(flag, member);
    if (!v) throw new BrokerSettingsError(`a broker needs --${flag}${configPath ? ` (or "${member}" in ${configPath})` : ""}`);
    return v;
  };
  const endpoint = parseBrokerEndpoint(need("broker", "endpoint").value);
  const file_ = (flag: keyof BrokerFlags, member: string) => {
    const v = need(flag, member);
    return path.resolve(v.relativeTo, v.value);
  };
  const ca = readPem(file_("broker-ca", "ca"), "CA", CERT_PEM);
  const cert = readPem(file_("broker-cert", "cert"), "certificate", CERT_PEM);
  const key = readPem(file_("broker-key", "key"), "key", KEY_PEM);
  const clientId = pick("broker-client-id", "clientId")?.value ?? commonName(cert);
  if (!clientId) throw new BrokerSettingsError("the broker certificate has no CN to use as client ID: give --broker-client-id");
  const servername = pick("broker-servername", "servername")?.value;
  return { host: endpoint.host, port: endpoint.port, ca, cert, key, clientId, ...(servername ? { servername } : {}) };
}

/** AWS IoT Core's data endpoints: <prefix>.iot.<region>.amazonaws.com (and .com.cn in the China regions). */
export function isAwsIotEndpoint(host: string): boolean {
  return /^[a-z0-9-]+(?:\.[a-z0-9-]+)*\.iot\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?\.?$/i.test(host);
}

/** Who answers the device's named-shadow requests: the simulator itself, or the broker (AWS's shadow service). */
export type ShadowAnswerer = "local" | "aws";

/**
 * The simulator plays the shadows only where no shadow service exists: a plain
 * broker (Mosquitto and the like) has none, and on AWS IoT Core a client
 * answering shadow topics would impersonate AWS. `flag` (--broker-shadows) wins;
 * without it, AWS endpoints get "aws" and every other endpoint "local".
 */
export function brokerShadows(host: string, flag?: string): ShadowAnswerer {
  if (flag === undefined) return isAwsIotEndpoint(host) ? "aws" : "local";
  if (flag === "local" || flag === "aws") return flag;
  throw new BrokerSettingsError(`--broker-shadows must be local or aws (got ${JSON.stringify(flag)})`);
}

/** SNI carries names only (RFC 6066): an IP address endpoint sends none unless a servername is given. */
function isHostName(host: string): boolean {
  return !/^[\d.]+$/.test(host) && !host.includes(":");
}

/** How a broker is named in messages. */
export function brokerName(s: Pick<BrokerSettings, "host" | "port">): string {
  return `mqtts://${s.host.includes(":") ? `[${s.host}]` : s.host}:${s.port}`;
}

export interface JoinOptions {
  /** Appended to the client ID base as base-suffix (several connections of one service). */
  suffix?: string;
  /** Filters to subscribe at QoS 1 once connected. */
  subscribe?: string[];
  onMessage?: (topic: string, payload: Uint8Array) => void;
  /** Deadline for CONNACK and every SUBACK, together. Default 10 s. */
  timeoutMs?: number;
  /** Reconnect after a drop once joined (default true: the consumers outlive a broker restart). */
  reconnect?: boolean;
}

/** A joined service connection. close() sends DISCONNECT (bounded: the socket is dropped after 2 s). */
export interface BrokerConnection {
  client: MqttClient;
  clientId: string;
  close(): Promise<void>;
}

/**
 * Connect with the service identity and subscribe; resolves once every
 * subscription is granted, rejects with a MqttFailureError naming the broker
 * and the refusal otherwise.
 */
export function joinBroker(settings: BrokerSettings, options: JoinOptions = {}): Promise<BrokerConnection> {
  const broker = brokerName(settings);
  const clientId = options.suffix ? `${settings.clientId}-${options.suffix}` : settings.clientId;
  const timeoutMs = options.timeoutMs ?? 10_000;
  const mqttOptions: IClientOptions = {
    protocol: "mqtts", host: settings.host, port: settings.port, clientId,
    ca: settings.ca, cert: settings.cert, key: settings.key, ...((settings.servername ?? isHostName(settings.host)) ? { servername: settings.servername ?? settings.host } : {}),
    rejectUnauthorized: true, clean: true, reconnectPeriod: 0, connectTimeout: timeoutMs + 1000, protocolVersion: 4,
  };
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(mqttOptions);
    let settled = false;
    let stage = "CONNECT";
    let lastError: unknown;
    const fail = (error: MqttFailureError) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      client.end(true);
      reject(error);
    };
    const timer = setTimeout(() => fail(new MqttFailureError({ kind: "timeout", message: `broker ${broker}: no answer to ${stage} within ${timeoutMs} ms` })), timeoutMs);
    // Latency-bound small packets: don't let Nagle hold them.
    client.on("connect", () => (client.stream as { setNoDelay?: (on: boolean) => void } | undefined)?.setNoDelay?.(true));
    client.on("message", (topic, buf) => options.onMessage?.(topic, new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength)));
    client.on("error", (e) => {
      lastError = e;
      if (!settled) fail(new MqttFailureError(describeMqttFailure(broker, e)));
    });
    client.on("close", () => {
      if (settled) return;
      fail(new MqttFailureError(lastError
        ? describeMqttFailure(broker, lastError)
        : stage === "CONNECT"
          ? { kind: "closed", message: `broker ${broker} closed the connection before CONNACK: it refused the certificate or the client ID ${clientId}` }
          : { kind: "policy-refused", message: `broker ${broker} closed the connection on ${stage}: its policy refuses it to ${clientId}` }));
    });
    client.once("connect", async () => {
      try {
        for (const filter of options.subscribe ?? []) {
          stage = `SUBSCRIBE ${filter}`;
          await new Promise<void>((ok, no) => {
            client.subscribe(filter, { qos: 1 }, (err, granted) => {
              // mqtt.js reports a SUBACK 0x80 either as an error ("Subscribe error") or in granted, by version.
              if (err && !/subscribe error/i.test(err.message)) no(err);
              else if (err || granted?.some((g) => g.qos === 128)) no(new MqttFailureError({ kind: "policy-refused", message: `broker ${broker} refused SUBSCRIBE ${filter} (SUBACK 0x80): its policy does not allow it to ${clientId}` }));
              else ok();
            });
          });
        }
      } catch (e) {
        fail(e instanceof MqttFailureError ? e : new MqttFailureError(describeMqttFailure(broker, e)));
        return;
      }
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (options.reconnect !== false) client.options.reconnectPeriod = 1000;
      resolve({ client, clientId, close: () => closeClient(client) });
    });
  });
}

/** End a session with DISCONNECT, so the broker sees a clean close and fires no will; drop the socket if that takes over 2 s. */
export function closeClient(client: MqttClient, graceMs = 2000): Promise<void> {
  return new Promise((resolve) => {
    if (client.disconnected || (!client.connected && !client.reconnecting)) {
      client.end(true, {}, () => resolve());
      return;
    }
    const late = setTimeout(() => client.end(true, {}, () => resolve()), graceMs);
    client.end(false, {}, () => {
      clearTimeout(late);
      resolve();
    });
  });
}
