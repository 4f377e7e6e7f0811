/*
 * Device settings: the manifest's config, checked once at start.
 *
 * mcconfig bakes manifest.json's "config" (merged with the board's
 * hardware/<board>.json) into the firmware as "mc/config"; main.ts passes that
 * object here. Everything is validated up front so that a wrong pin or a
 * placeholder endpoint fails at boot with a message, not later as a silent
 * misbehaviour. A few top-level keys can be given on the mcconfig command line
 * (`thing=door-1 broker=abc-ats.iot.eu-west-1.amazonaws.com brokerPort=8883`),
 * which is how one manifest serves many devices during development.
 *
 * Platform-free, so the host tests check the shipped manifest against it.
 */
import type { LogLevel } from "../core/ports";
import { isThingName } from "../core/topics";

export interface ButtonSettings {
  /** GPIO of the bell push. Required on hardware; absent on the simulator. */
  pin?: number;
  /** The push pulls the line low when pressed (with the internal pull-up). Default true. */
  activeLow?: boolean;
  /** Simulator only: press the virtual button this often (ms); 0 never. */
  simulatedPressEveryMs?: number;
}

export interface BrokerSettings {
  host: string;
  port: number;
  /** TLS SNI and certificate name check. AWS IoT refuses connections without SNI. */
  serverName: string;
  /** ALPN protocol; AWS IoT on port 443 needs "x-amzn-mqtt-ca", port 8883 needs none. */
  alpn?: string;
}

export interface DeviceSettings {
  board: string;
  /** Thing name (= MQTT client ID) used when the identity store does not name one. */
  thing: string;
  broker: BrokerSettings;
  keepAliveSeconds: number;
  /** Resource names of the trusted root CAs (DER), tried in order. */
  trustAnchors: string[];
  /** Date.now() below this is "no trusted time". */
  timeFloorMs: number;
  logLevel: LogLevel;
  button: ButtonSettings;
}

/** AWS IoT's limit on the MQTT keep-alive. */
export const MAX_KEEP_ALIVE_SECONDS = 1200;
const LOG_LEVELS: readonly string[] = ["debug", "info", "warn", "error"];
const HOST = /^[A-Za-z0-9.-]{1,253}$/;
const PLACEHOLDER = /[<>]/;

export class SettingsError extends Error {}

function record(value: unknown, name: string): Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw new SettingsError(`config: ${name} must be an object`);
  return value as Record<string, unknown>;
}

function integer(value: unknown, name: string, min: number, max: number): number {
  const n = typeof value === "string" && /^[0-9]+$/.test(value) ? Number(value) : value;
  if (typeof n !== "number" || !Number.isInteger(n) || n < min || n > max) throw new SettingsError(`config: ${name} must be an integer ${min}-${max}`);
  return n;
}

function host(value: unknown, name: string): string {
  if (typeof value !== "string" || PLACEHOLDER.test(value)) {
    throw new SettingsError(`config: ${name} is not set (give your AWS IoT endpoint, e.g. mcconfig ... broker=<prefix>-ats.iot.<region>.amazonaws.com)`);
  }
  if (!HOST.test(value)) throw new SettingsError(`config: ${name} is not a host name`);
  return value;
}

/** Build the settings from mc/config. Throws SettingsError naming the first bad key. */
export function parseSettings(config: Record<string, unknown>): DeviceSettings {
  const dw = record(config.doorward, "doorward");
  const broker = record(dw.broker, "doorward.broker");
  const button = record(dw.button ?? {}, "doorward.button");

  const thing = config.thing ?? dw.thing;
  if (!isThingName(thing)) throw new SettingsError("config: doorward.thing must be 1-128 characters of [a-zA-Z0-9:_-]");

  const brokerHost = host(config.broker ?? broker.host, "doorward.broker.host");
  const serverName = broker.serverName === undefined || config.broker !== undefined ? brokerHost : host(broker.serverName, "doorward.broker.serverName");
  const alpn = broker.alpn;
  if (alpn !== undefined && (typeof alpn !== "string" || alpn.length === 0 || alpn.length > 255)) throw new SettingsError("config: doorward.broker.alpn must be a protocol name");

  const anchors = dw.trustAnchors;
  if (!Array.isArray(anchors) || anchors.length === 0 || !anchors.every((a) => typeof a === "string" && a.length > 0)) {
    throw new SettingsError("config: doorward.trustAnchors must list at least one CA resource name");
  }

  const logLevel = dw.logLevel ?? "info";
  if (typeof logLevel !== "string" || !LOG_LEVELS.includes(logLevel)) throw new SettingsError("config: doorward.logLevel must be debug, info, warn or error");

  const board = dw.board;
  if (typeof board !== "string" || board.length === 0) throw new SettingsError("config: doorward.board is missing (the platform's hardware/<board>.json sets it)");

  const buttonSettings: ButtonSettings = {};
  if (button.pin !== undefined) buttonSettings.pin = integer(button.pin, "doorward.button.pin", 0, 48);
  if (button.activeLow !== undefined) {
    if (typeof button.activeLow !== "boolean") throw new SettingsError("config: doorward.button.activeLow must be true or false");
    buttonSettings.activeLow = button.activeLow;
  }
  if (button.simulatedPressEveryMs !== undefined) {
    buttonSettings.simulatedPressEveryMs = integer(button.simulatedPressEveryMs, "doorward.button.simulatedPressEveryMs", 0, 86_400_000);
  }

  return {
    board,
    thing,
    broker: {
      host: brokerHost,
      port: integer(config.brokerPort ?? broker.port, "doorward.broker.port", 1, 65535),
      serverName,
      ...(alpn === undefined ? {} : { alpn: alpn as string }),
    },
    keepAliveSeconds: integer(dw.keepAliveSeconds ?? 300, "doorward.keepAliveSeconds", 1, MAX_KEEP_ALIVE_SECONDS),
    trustAnchors: anchors as string[],
    timeFloorMs: integer(dw.timeFloorMs, "doorward.timeFloorMs", 1, Number.MAX_SAFE_INTEGER),
    logLevel: logLevel as LogLevel,
    button: buttonSettings,
  };
}
