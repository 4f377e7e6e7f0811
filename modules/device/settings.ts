/*
 * Device settings: the manifest's config, checked once at start.
 *
 * mcconfig bakes manifest.json's "config" (merged with the board's
 * hardware/<board>.json) into the firmware as "mc/config"; main.ts passes that
 * object here. Everything is validated up front so that a wrong pin or a
 * placeholder endpoint fails at boot with a message, not later as a silent
 * misbehaviour.
 *
 * What the config holds is what is fixed when the firmware is built: the one
 * broker it may reach (its host names the egress allowlist's MQTT entry, see
 * core/egress, which also holds the NTP host), its trust anchors, and the
 * board's wiring. Who the device is
 * (thing name, certificate, Wi-Fi) is not here: it comes from the provisioning
 * bundle, in the vault. A few top-level keys can be given on the mcconfig
 * command line: `broker=<prefix>-ats.iot.<region>.amazonaws.com`,
 * `brokerPort=8883`, and, from tools/mc.ts, `console=xsbug` (a -d build: the
 * serial line belongs to the debugger), `provisionFile=<path>` (simulator) and
 * `pressEveryMs=<ms>` (the simulator's virtual button, for a measured run).
 *
 * Platform-free, so the host tests check the shipped manifest against it.
 */
import type { LogLevel } from "../core/ports";
import { fromHex } from "../core/bytes";

export interface ButtonSettings {
  /** GPIO of the bell push. Required on hardware; absent on the simulator. */
  pin?: number;
  /** The push pulls the line low when pressed (with the internal pull-up). Default true. */
  activeLow?: boolean;
  /** Simulator only: press the virtual button this often (ms); 0 never. */
  simulatedPressEveryMs?: number;
}

/** A GPIO output: the status LED or the chime driver. */
export interface OutputSettings {
  pin: number;
  /** The output is on when the pin is low (an LED to 3.3 V, most relay boards). */
  activeLow: boolean;
}

export interface ChimeSettings extends OutputSettings {
  /** Milliseconds on, off, on, ... starting with on: [150, 150, 300] is "ding-dong" on a buzzer; [200] pulses a relay. */
  pattern: number[];
}

export interface BrokerSettings {
  host: string;
  port: number;
  /** TLS SNI and certificate name check. AWS IoT refuses connections without SNI. */
  serverName: string;
  /** ALPN protocol; AWS IoT on port 443 needs "x-amzn-mqtt-ca", port 8883 needs none. */
  alpn?: string;
}

/**
 * Where wall time comes from. "sntp": the NTP host of the egress allowlist
 * (config.doorward.egress, purpose "ntp"), on boards. "host": the simulator's
 * process already runs on a set clock.
 */
export type TimeSettings = { source: "sntp" } | { source: "host" };

/**
 * The local channel a bundle arrives on while the device is unprovisioned.
 * "serial": the USB/UART console (boards, a build without -d). "file": a file
 * the simulator polls and deletes. "none": no channel (a -d build, whose
 * serial line is the debugger's).
 */
export type ProvisioningChannel = { channel: "serial" } | { channel: "file"; path: string } | { channel: "none"; reason: string };

/** Signed updates (docs/updates.md): absent means this build installs none. */
export interface UpdateSettings {
  /** The Moddable target a release must name, e.g. "esp32/xiao_esp32s3_sense". */
  board: string;
  version: number;
  keySerial: number;
  /** Ed25519 public keys that sign releases. */
  releaseKeys: Uint8Array[];
}

export interface DeviceSettings {
  board: string;
  /** The one MQTT broker this firmware may reach; a provisioned endpoint must name it. */
  broker: BrokerSettings;
  keepAliveSeconds: number;
  /** Resource names of the trusted root CAs (DER), tried in order. */
  trustAnchors: string[];
  /**
   * Trust the CA carried by the provisioning bundle instead of trustAnchors.
   * Only the simulator sets it (its broker is the local stand-in with a dev CA);
   * a board trusts only the roots built into it.
   */
  trustProvisionedCa: boolean;
  /** Date.now() below this is "no trusted time": also the earliest time SNTP may set. */
  timeFloorMs: number;
  time: TimeSettings;
  provisioning: ProvisioningChannel;
  logLevel: LogLevel;
  button: ButtonSettings;
  led?: OutputSettings;
  chime?: ChimeSettings;
  /** The board has a JPEG camera with PSRAM: snapshots follow rings. */
  camera: boolean;
  /** Development builds of a board without key hardware: keep the vault key in plain flash (`devVaultKey=1`). */
  devVaultKey: boolean;
  /** A development build: `development=1` from tools/mc.ts --development, or a -d build (`console=xsbug`). */
  development: boolean;
  update?: UpdateSettings;
  /** The outbox's flash budget in bytes, sized to the board's NVS partition; absent: the core's default. */
  outboxBytes?: number;
  /** A release build (manifest_release.json sets config.doorward.release): production secrets only on a locked chip. */
  release: boolean;
  /** The image's anti-rollback version (config.doorward.secureVersion, equal to CONFIG_BOOTLOADER_APP_SECURE_VERSION). */
  secureVersion?: number;
}

/** AWS IoT's limit on the MQTT keep-alive. */
export const MAX_KEEP_ALIVE_SECONDS = 1200;
/** GPIO numbers the ESP32 family uses (ESP32: 0-39, ESP32-S3: 0-48). */
export const MAX_GPIO = 48;
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

function bool(value: unknown, name: string, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== "boolean") throw new SettingsError(`config: ${name} must be true or false`);
  return value;
}

function output(value: unknown, name: string): OutputSettings | undefined {
  if (value === undefined) return undefined;
  const o = record(value, name);
  return { pin: integer(o.pin, `${name}.pin`, 0, MAX_GPIO), activeLow: bool(o.activeLow, `${name}.activeLow`, false) };
}

function chime(value: unknown): ChimeSettings | undefined {
  const out = output(value, "doorward.chime");
  if (!out) return undefined;
  const raw = (value as Record<string, unknown>).pattern ?? [200];
  if (!Array.isArray(raw) || raw.length < 1 || raw.length > 8) throw new SettingsError("config: doorward.chime.pattern must list 1-8 durations (ms on, off, on, ...)");
  const pattern = raw.map((ms, i) => integer(ms, `doorward.chime.pattern[${i}]`, 10, 2000));
  if (pattern.reduce((a, b) => a + b, 0) > 5000) throw new SettingsError("config: doorward.chime.pattern must last at most 5 s");
  return { ...out, pattern };
}

function time(value: unknown): TimeSettings {
  const t = record(value, "doorward.time");
  if (t.source === "host" || t.source === "sntp") return { source: t.source };
  throw new SettingsError('config: doorward.time.source must be "sntp" or "host"');
}

function provisioning(config: Record<string, unknown>, value: unknown): ProvisioningChannel {
  if (config.console === "xsbug") return { channel: "none", reason: "this is a -d build: the serial line belongs to xsbug; build without -d (npm run build:<board>) to provision" };
  const p = record(value, "doorward.provisioning");
  if (p.channel === "serial") return { channel: "serial" };
  if (p.channel === "file") {
    const path = config.provisionFile ?? p.path;
    if (path === undefined) return { channel: "none", reason: "no provisioning file configured (npm run sim:lin passes provisionFile=...)" };
    if (typeof path !== "string" || !path.startsWith("/") || path.length > 1024) throw new SettingsError("config: provisionFile must be an absolute path");
    return { channel: "file", path };
  }
  throw new SettingsError('config: doorward.provisioning.channel must be "serial" or "file"');
}

function update(value: unknown, board: string): UpdateSettings | undefined {
  if (value === undefined) return undefined;
  const u = record(value, "update");
  const keys = u.releaseKeys;
  if (!Array.isArray(keys) || keys.length === 0 || keys.length > 8 || !keys.every((k) => typeof k === "string" && /^[0-9a-fA-F]{64}$/.test(k))) {
    throw new SettingsError("config: update.releaseKeys must list 1-8 Ed25519 public keys (64 hex digits each)");
  }
  const target = u.board ?? `esp32/${board}`;
  if (typeof target !== "string" || !/^[a-z0-9_]+(\/[a-z0-9_]+)?$/.test(target)) throw new SettingsError("config: update.board must be a Moddable target name");
  return {
    board: target,
    version: integer(u.version, "update.version", 0, 0x7fffffff),
    keySerial: integer(u.keySerial ?? 1, "update.keySerial", 0, 0x7fffffff),
    releaseKeys: (keys as string[]).map((k) => fromHex(k.toLowerCase())),
  };
}

/** Build the settings from mc/config. Throws SettingsError naming the first bad key. */
export function parseSettings(config: Record<string, unknown>): DeviceSettings {
  const dw = record(config.doorward, "doorward");
  const broker = record(dw.broker, "doorward.broker");
  const button = record(dw.button ?? {}, "doorward.button");

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
  if (button.pin !== undefined) buttonSettings.pin = integer(button.pin, "doorward.button.pin", 0, MAX_GPIO);
  if (button.activeLow !== undefined) buttonSettings.activeLow = bool(button.activeLow, "doorward.button.activeLow", true);
  const pressEvery = config.pressEveryMs ?? button.simulatedPressEveryMs;
  if (pressEvery !== undefined) {
    if (button.pin !== undefined) throw new SettingsError("config: pressEveryMs is for the simulator's virtual button; this board has a real one");
    buttonSettings.simulatedPressEveryMs = integer(pressEvery, "doorward.button.simulatedPressEveryMs", 0, 86_400_000);
  }

  const flag = (v: unknown) => v === "1" || v === 1 || v === true;
  const devVaultKey = flag(config.devVaultKey);
  const development = flag(config.development) || config.console === "xsbug";
  // A plain-flash vault key is a development convenience: a production or release build carrying it stops here.
  if (devVaultKey && (!development || dw.release === true)) {
    throw new SettingsError("config: devVaultKey=1 is for development builds only (development=1, tools/mc.ts --development); a production build keeps its vault key in eFuses or under flash encryption");
  }

  const led = output(dw.led, "doorward.led");
  const chimeSettings = chime(dw.chime);
  const pins = [buttonSettings.pin, led?.pin, chimeSettings?.pin].filter((p) => p !== undefined);
  if (new Set(pins).size !== pins.length) throw new SettingsError("config: doorward.button, led and chime must use different pins");

  return {
    board,
    broker: {
      host: brokerHost,
      port: integer(config.brokerPort ?? broker.port, "doorward.broker.port", 1, 65535),
      serverName,
      ...(alpn === undefined ? {} : { alpn: alpn as string }),
    },
    keepAliveSeconds: integer(dw.keepAliveSeconds ?? 300, "doorward.keepAliveSeconds", 1, MAX_KEEP_ALIVE_SECONDS),
    trustAnchors: anchors as string[],
    trustProvisionedCa: bool(dw.trustProvisionedCa, "doorward.trustProvisionedCa", false),
    timeFloorMs: integer(dw.timeFloorMs, "doorward.timeFloorMs", 1, Number.MAX_SAFE_INTEGER),
    time: time(dw.time),
    provisioning: provisioning(config, dw.provisioning),
    logLevel: logLevel as LogLevel,
    button: buttonSettings,
    ...(led ? { led } : {}),
    ...(chimeSettings ? { chime: chimeSettings } : {}),
    camera: bool(dw.camera, "doorward.camera", false),
    devVaultKey,
    development,
    ...(config.update === undefined ? {} : { update: update(config.update, board) }),
    ...(dw.outboxBytes === undefined ? {} : { outboxBytes: integer(dw.outboxBytes, "doorward.outboxBytes", 16 * 1024, 1024 * 1024) }),
    release: bool(dw.release, "doorward.release", false),
    ...(dw.secureVersion === undefined ? {} : { secureVersion: integer(dw.secureVersion, "doorward.secureVersion", 0, 32) }),
  };
}

/** Whether a provisioned endpoint names the broker this firmware allows (by address or by its TLS name). */
export function endpointAllowed(endpoint: { host: string; port: number | undefined }, broker: BrokerSettings): boolean {
  const host = endpoint.host.toLowerCase();
  if (host !== broker.host.toLowerCase() && host !== broker.serverName.toLowerCase()) return false;
  return endpoint.port === undefined || endpoint.port === broker.port;
}
