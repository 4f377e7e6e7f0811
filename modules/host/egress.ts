/*
 * The host's one way out: the only host module that may import a
 * network-capable Node module or mqtt.js (tools/import-rules.ts enforces it).
 *
 * connectMqtt() asks the core's EgressGuard first. A refused destination
 * throws before anything else happens: no DNS look-up, no socket. An allowed
 * one is dialled by this module itself, with Node's TLS, to the normalised
 * host and the checked port, and handed to mqtt.js as a ready stream. mqtt.js
 * never gets to choose where to connect, so none of its own routes out
 * (`servers`, `socksProxy`, the MQTTJS_SOCKS_PROXY environment variable,
 * WebSocket URLs, unix sockets) is reachable from the device code, and its own
 * reconnects go back through the same checked builder.
 *
 * The allowlist comes from manifest.json, exactly as mcconfig merges it for a
 * platform (the simulator is "lin", a development build); the development
 * profile may add the stand-in wherever it listens now.
 */
import dns from "node:dns";
import fs from "node:fs";
import path from "node:path";
import tls from "node:tls";
import { fileURLToPath } from "node:url";
import { MqttClient, type IClientOptions } from "mqtt";
import type { Log } from "../core/ports";
import {
  EgressConfigError, EgressGuard, EgressRefusedError, normaliseHost, parseEgressConfig, withDevelopmentEntries,
  type Allowlist, type EgressVerdict,
} from "../core/egress";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
export const MANIFEST_PATH = path.join(REPO, "manifest.json");

export interface MqttDestination {
  host: string;
  port: number;
  /** Which module asks: reported with a refusal. */
  requester: string;
}

/** Everything a session needs except where it goes, which is not the caller's to set beyond host and port. */
export interface HostMqttSessionOptions {
  clientId: string;
  /** PEM. */
  ca: string | string[];
  cert: string;
  key: string;
  /** SNI name. Default: the checked host when it is a name. */
  servername?: string;
  keepaliveSeconds: number;
  connectTimeoutMs: number;
}

export type LookupFunction = NonNullable<tls.ConnectionOptions["lookup"]>;

export interface HostEgressOptions {
  /** DNS for allowed names (default dns.lookup); a test passes a spy. Only ever asked for the checked name. */
  lookup?: LookupFunction;
}

export class HostEgress {
  readonly guard: EgressGuard;
  #lookup: LookupFunction;

  constructor(guard: EgressGuard, options: HostEgressOptions = {}) {
    this.guard = guard;
    this.#lookup = options.lookup ?? (dns.lookup as unknown as LookupFunction);
  }

  /** Check, then connect. Throws EgressRefusedError (nothing contacted) for a destination the allowlist does not hold. */
  connectMqtt(destination: MqttDestination, options: HostMqttSessionOptions): MqttClient {
    const verdict = this.guard.check({ host: destination.host, port: destination.port, purpose: "mqtt", requester: destination.requester });
    if (!verdict.allowed) throw new EgressRefusedError(verdict.reason, verdict.destination);
    const approved = verdict;
    const clientOptions: IClientOptions = {
      clientId: options.clientId,
      clean: true,
      keepalive: options.keepaliveSeconds,
      reconnectPeriod: 0,
      connectTimeout: options.connectTimeoutMs,
      protocolVersion: 4,
      queueQoSZero: false,
    };
    return new MqttClient((client) => this.#dial(approved, options, client), clientOptions);
  }

  #dial(approved: Extract<EgressVerdict, { allowed: true }>, options: HostMqttSessionOptions, client: MqttClient): tls.TLSSocket {
    const lookup = this.#lookup;
    const socket = tls.connect({
      host: approved.host,
      port: approved.port,
      ...(approved.kind === "name" || options.servername ? { servername: options.servername ?? approved.host } : {}),
      ca: options.ca,
      cert: options.cert,
      key: options.key,
      rejectUnauthorized: true,
      minVersion: "TLSv1.2",
      ...(approved.entry.alpn ? { ALPNProtocols: [approved.entry.alpn] } : {}),
      // Resolve only the name that was checked, whatever asks.
      lookup: ((hostname: string, opts: unknown, callback: (...args: unknown[]) => void) => {
        if (hostname !== approved.host) {
          callback(new EgressRefusedError("not-allowlisted", hostname));
          return;
        }
        (lookup as unknown as (h: string, o: unknown, c: (...args: unknown[]) => void) => void)(hostname, opts, callback);
      }) as unknown as LookupFunction,
    });
    // A ring is one small packet: send it now rather than let Nagle wait for more (lwIP on the device sends at once too).
    socket.setNoDelay(true);
    const early = (error: Error) => {
      client.emit("error", error);
      socket.end();
    };
    socket.on("error", early);
    socket.once("secureConnect", () => socket.off("error", early));
    return socket;
  }
}

// ------------------------------------------------------------------ the allowlist from manifest.json

type JsonObject = Record<string, unknown>;

function isObject(v: unknown): v is JsonObject {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** mcmanifest.js matchPlatform: the first key matching the longest prefix of the platform name. */
function matchPlatform(platforms: unknown, name: string): JsonObject | undefined {
  if (!isObject(platforms)) return undefined;
  const parts = name.split("/");
  while (parts.length) {
    const partial = parts.join("/");
    for (const key of Object.keys(platforms)) {
      if (key.endsWith("/*") ? partial.startsWith(key.slice(0, -1)) : partial === key) return platforms[key] as JsonObject;
    }
    parts.length -= 1;
  }
  return platforms["..."] as JsonObject | undefined;
}

/** mcmanifest.js mergeProperties, for "config": objects merge, everything else replaces. */
function merge(target: JsonObject, source: unknown): JsonObject {
  if (!isObject(source)) return target;
  for (const [k, v] of Object.entries(source)) {
    if (isObject(v) && isObject(target[k])) merge(target[k] as JsonObject, v);
    else target[k] = structuredClone(v);
  }
  return target;
}

/** The config mcconfig bakes into mc/config for a platform (local includes only: the SDK's are not in the repo). */
export function manifestConfig(platform: string, manifestPath = MANIFEST_PATH): JsonObject {
  const config: JsonObject = {};
  const visit = (file: string) => {
    const json = JSON.parse(fs.readFileSync(file, "utf8")) as JsonObject;
    const section = matchPlatform(json.platforms, platform);
    if (section?.error) throw new EgressConfigError(`manifest: ${String(section.error)}`);
    const includes = [...[json.include ?? []].flat(), ...[section?.include ?? []].flat()] as string[];
    for (const inc of includes) if (!inc.startsWith("$(")) visit(path.resolve(path.dirname(file), inc));
    merge(config, json.config);
    merge(config, section?.config);
  };
  visit(manifestPath);
  return config;
}

/** The allowlist a build for this platform carries ("lin" is the simulator: development). */
export function manifestAllowlist(platform: string, manifestPath = MANIFEST_PATH): Allowlist {
  return parseEgressConfig(manifestConfig(platform, manifestPath));
}

/**
 * The simulator's egress: the manifest's development allowlist plus the broker
 * of this run: the stand-in on its current loopback port, or the broker the
 * user named (the endpoint the simulated device was provisioned for).
 */
export function simulatorEgress(options: { standinPort?: number; broker?: { host: string; port: number }; log?: Log; lookup?: LookupFunction; manifestPath?: string }): HostEgress {
  const broker = options.broker ?? (options.standinPort === undefined ? undefined : { host: "127.0.0.1", port: options.standinPort });
  if (!broker) throw new EgressConfigError("egress: the simulator needs a broker (the stand-in's port or the user's endpoint)");
  const local = normaliseHost(broker.host);
  // A broker elsewhere is what a lin build with broker=<host> carries; one on this machine is a development entry.
  const allowlist = local.ok && (local.host === "127.0.0.1" || local.host === "localhost")
    ? withDevelopmentEntries(manifestAllowlist("lin", options.manifestPath), [{ host: local.host, port: broker.port, purpose: "mqtt" }])
    : parseEgressConfig({ ...manifestConfig("lin", options.manifestPath), broker: broker.host, brokerPort: broker.port });
  return new HostEgress(new EgressGuard(allowlist, { log: options.log }), { lookup: options.lookup });
}

/**
 * For a transport built without a guard (tests wiring a Doorbell by hand): a
 * development allowlist holding exactly that one loopback destination. Anything
 * else throws: off loopback, a guard must be given.
 */
export function loopbackEgress(host: string, port: number): HostEgress {
  const n = normaliseHost(host);
  if (!n.ok || (n.host !== "127.0.0.1" && n.host !== "localhost")) {
    throw new EgressConfigError(`egress: ${String(host)} is not loopback: pass the firmware's egress guard`);
  }
  const empty: Allowlist = Object.freeze({ profile: "development" as const, entries: Object.freeze([]) });
  return new HostEgress(new EgressGuard(withDevelopmentEntries(empty, [{ host: n.host, port, purpose: "mqtt" }])));
}
