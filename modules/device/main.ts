/*
 * The Moddable entry module ("device/main", named by the manifest's
 * creation.main): the device's adapters handed to the one firmware assembly,
 * core/firmware's bootFirmware (the simulator on a laptop uses the same one).
 *
 * Order at power-up:
 *  1. settings from mc/config (the allowlist, trust anchors, the board's
 *     wiring); a bad config lights the error pattern and stops here; then the
 *     RNG ("device/random"), which turns its boot-time entropy source on
 *     before any key or nonce can be made;
 *  2. the board ("device/board": ./board on ESP32, ./board-sim on lin): vault
 *     key, LED, chime, camera, OTA slots, provisioning channel;
 *  3. bootFirmware: first the chip's locks ("device/chip-lock": a release
 *     build on an unlocked chip stops here, error pattern, every missing lock
 *     on the console), then the vault over its own NVS namespaces, provisioning,
 *     access control, the doorbell, snapshots and updates;
 *  4. unprovisioned or damaged: the provisioning pattern, and the local
 *     channel listens for a bundle (./provision-serial, ./provision-file);
 *     once one is stored, back to 3;
 *  5. provisioned: Wi-Fi with the vault's credentials, then time from the
 *     allowlisted NTP host, then the broker (./bringup holds the MQTT connect
 *     until both are there). The button works from the start: a press before
 *     then chimes and queues a ring stamped `time: null`.
 *
 * Nothing configures the network before this runs: the manifest sets no
 * `ssid` (the SDK's setup/network then does nothing) and `sntp` is empty.
 * Every destination (the broker, the NTP host, their DNS look-ups) goes
 * through ./egress, which checks the build's allowlist first.
 *
 * The modules that differ per platform (device/board, device/button,
 * device/random, device/chip-lock) are imported by their manifest specifier, never by a relative
 * path: mcconfig's tsc follows a relative path to one file on disk, whatever
 * the platform, while the specifier goes through the platform's own mapping,
 * for tsc and XS alike.
 */
import config from "mc/config";
import Time from "time";
import { bootFirmware, type RunningFirmware, type WaitingFirmware } from "../core/firmware";
import { ChipLockError } from "../core/chip-lock";
import type { DeviceIdentity } from "../core/provisioning";
import type { Log } from "../core/ports";
import type { Board } from "./board-api";
import { openBoard } from "device/board";
import { BringUp } from "./bringup";
import { createButton } from "device/button";
import { Chime } from "./chime";
import { DeviceClock } from "./clock";
import { tlsIdentity } from "./identity";
import { StatusLed } from "./led";
import { deviceEgress, type DeviceEgress } from "./egress";
import { createLog } from "./log";
import { createMqttTransport } from "./mqtt";
import { FileProvisioner } from "./provision-file";
import { ConsoleProvisioner } from "./provision-serial";
import { createRandom } from "device/random";
import { endpointAllowed, parseSettings, SettingsError, type DeviceSettings } from "./settings";
import { createSha512 } from "./sha512";
import { startDeviceCryptoWorker } from "./crypto-worker";
import type { HeavyCrypto } from "../core/heavy-crypto";
import { TimeSync } from "./sntp";
import { openStore } from "./store";
import { openVaultStore } from "./vault-store";

interface Device {
  settings: DeviceSettings;
  egress: DeviceEgress;
  clock: DeviceClock;
  log: Log;
  board: Board;
  led: StatusLed;
  chime: Chime | undefined;
  random: ReturnType<typeof createRandom>;
  sha512: ReturnType<typeof createSha512>;
  /** Nonce points, verifies and box.before on the second core; undefined if the worker could not start. */
  crypto: HeavyCrypto | undefined;
}

/** Held for the life of the program, so nothing the firmware owns (pins, timers, sockets) is collected. */
let device: Device | undefined;
let running: RunningFirmware | undefined;
let bringUp: BringUp | undefined;
let listener: { stop(): void } | undefined;

const reason = (e: unknown) => (e instanceof Error ? e.message : String(e));

export default function main(): void {
  if (device) return;
  let settings: DeviceSettings;
  try {
    settings = parseSettings(config);
  } catch (e) {
    if (!(e instanceof SettingsError)) throw e;
    createLog()("error", "bad configuration: staying offline", { reason: e.message });
    return;
  }
  const clock = new DeviceClock({ timeFloorMs: settings.timeFloorMs });
  const log = createLog({ level: settings.logLevel, now: () => clock.monotonic() });
  const schedule = (callback: () => void, delayMs: number) => clock.schedule(callback, delayMs);
  const random = createRandom();
  let egress: DeviceEgress;
  try {
    // The allowlist is checked before anything else exists: a production build with a development entry stops here.
    egress = deviceEgress({ log });
  } catch (e) {
    log("error", "egress allowlist refused: staying offline", { reason: reason(e) });
    return;
  }
  let board: Board;
  try {
    board = openBoard({ settings, log, random, schedule });
  } catch (e) {
    // A pin the board lacks, a missing FFI binding: say so and stay up rather than boot-loop.
    log("error", "board did not start: staying offline", { reason: reason(e) });
    return;
  }
  const led = new StatusLed({
    write: board.led ?? (() => {}),
    schedule,
    onStatus: (status) => log(board.led ? "debug" : "info", "status", { status }),
  });
  const chime = board.chime ? new Chime({ write: board.chime, pattern: settings.chime?.pattern ?? [200], schedule }) : undefined;
  device = { settings, egress, clock, log, board, led, chime, random, sha512: createSha512(), crypto: startCrypto(log) };
  led.set("connecting");
  log("info", "doorward device", { board: settings.board, broker: settings.broker.host, vaultKey: board.keyKind });
  boot(device);
}

/** The crypto worker, or this machine alone (slower to answer, never wrong) if it cannot start. */
function startCrypto(log: Log): HeavyCrypto | undefined {
  try {
    return startDeviceCryptoWorker().crypto;
  } catch (e) {
    log("warn", "crypto worker did not start: curve work runs on the main machine", { reason: reason(e) });
    return undefined;
  }
}

function boot(d: Device): void {
  const { settings, clock, log, board, led } = d;
  let firmware: RunningFirmware | WaitingFirmware;
  try {
    firmware = bootFirmware({
      clock,
      random: d.random,
      vaultStore: openVaultStore(),
      store: openStore(),
      outbox: settings.outboxBytes === undefined ? undefined : { flashBytes: settings.outboxBytes },
      keys: board.keys,
      log,
      // Before the vault opens: a release build on a chip without its locks goes no further (error LED, reasons on the console).
      chipLock: { build: { release: settings.release, secureVersion: settings.secureVersion }, read: board.chip },
      entropyReady: () => d.random.entropyReady(),
      sha512: d.sha512,
      crypto: d.crypto,
      egress: d.egress.guard,
      transport: (identity) => transportFor(d, identity),
      button: createButton(settings.button),
      camera: board.camera,
      cipher: board.cipher,
      sha256: board.sha256,
      update:
        settings.update && board.update
          ? {
              board: settings.update.board,
              runningVersion: settings.update.version,
              releaseKeys: { serial: settings.update.keySerial, keys: settings.update.releaseKeys },
              sink: board.update.sink,
              boot: board.update.boot,
              maxImageBytes: board.update.capacity,
            }
          : undefined,
      onPress: () => led.flash("ring"),
      // The LED confirms delivery: the ring's promise settles on the broker's PUBACK.
      onRing: (ring) => void ring.acked.then(() => led.flash("ring-sent"), () => {}),
      onChime: () => void d.chime?.ring(),
    });
  } catch (e) {
    bringUp?.stop();
    bringUp = undefined;
    log("error", "cannot start", { reason: reason(e) });
    if (e instanceof ChipLockError) {
      // Its own pattern, and the reason again every 30 s for whoever attaches a console later.
      led.set("unlocked");
      const remind = () => {
        log("error", "cannot start", { reason: reason(e) });
        clock.schedule(remind, 30_000);
      };
      clock.schedule(remind, 30_000);
    } else led.set("error");
    return;
  }
  if (firmware.state !== "running") {
    waitForBundle(d, firmware);
    return;
  }
  running = firmware;
  const doorbell = firmware.doorbell;
  if (!settings.update) log("info", "updates disabled: this build names no release keys (config.update)");
  bringUp?.attachLink(doorbell.link);
  bringUp?.start();
}

/** Called by bootFirmware with the provisioned identity: the gated transport to the one allowed broker. */
function transportFor(d: Device, identity: DeviceIdentity) {
  const { settings, clock, log, board, led } = d;
  if (!endpointAllowed(identity.endpoint, settings.broker)) {
    throw new Error(`the provisioned endpoint is not the broker this firmware may reach (${settings.broker.host}:${settings.broker.port}); provision a bundle for it, or build for that endpoint`);
  }
  let gate: BringUp | undefined;
  let time: TimeSync | undefined;
  if (settings.time.source === "sntp") {
    const ntp = d.egress.guard.allowlist.entries.find((e) => e.purpose === "ntp");
    if (!ntp) throw new Error("the egress allowlist names no NTP host, and TLS needs the time (config.doorward.egress)");
    time = new TimeSync({
      host: ntp.host,
      // Both the look-up and the query go through the egress chokepoint, to the allowlisted host only.
      resolve: (host, done) => d.egress.resolve(host, "device/sntp", (address) => done(address)),
      sntp: d.egress.sntpClass(d.random, "device/sntp"),
      setTime: (seconds) => Time.set(seconds),
      now: () => Date.now(),
      monotonic: () => clock.monotonic(),
      schedule: (callback, delayMs) => clock.schedule(callback, delayMs),
      floorMs: settings.timeFloorMs,
      vouchedFloorMs: () => running?.access.timeFloor ?? 0,
      log,
      onSynced: () => gate?.timeChanged(),
    });
  }
  gate = new BringUp({ network: board.network(identity.wifi), time, log, onStatus: (status) => led.set(status) });
  bringUp = gate;
  return gate.gate(createMqttTransport({ thing: identity.thing, settings, identity: tlsIdentity(identity, settings), clock, log, egress: d.egress }));
}

function waitForBundle(d: Device, waiting: WaitingFirmware): void {
  const { settings, clock, log, board, led } = d;
  const vaultProblem = waiting.vault.status().problem;
  // Without a vault key no bundle can be stored: that needs the installer, not a bundle.
  led.set(vaultProblem?.reason === "no-key" ? "error" : "provisioning");
  const schedule = (callback: () => void, delayMs: number) => clock.schedule(callback, delayMs);
  const onProvisioned = (result: { thing: string }) => {
    listener = undefined;
    log("info", "provisioned: starting", { thing: result.thing });
    led.set("connecting");
    clock.schedule(() => boot(d), 0);
  };
  const channel = settings.provisioning;
  if (channel.channel === "serial" && board.console) {
    const p = new ConsoleProvisioner({
      port: board.console, provisioning: waiting.provisioning, sha512: d.sha512, schedule, now: () => clock.monotonic(), log, onProvisioned,
    });
    listener = p;
    p.start();
    log("info", "provisioning: send a bundle on the serial console (npm run provision -- --port <tty> --bundle <file>)");
  } else if (channel.channel === "file" && board.files) {
    const p = new FileProvisioner({ files: board.files, path: channel.path, provisioning: waiting.provisioning, schedule, log, onProvisioned });
    listener = p;
    p.start();
  } else {
    log("warn", "provisioning: no local channel in this build", { reason: channel.channel === "none" ? channel.reason : "the board has no such channel" });
  }
}
