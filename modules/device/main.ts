/*
 * The Moddable entry module ("device/main", named by the manifest's
 * creation.main): wires the device adapters into the core's Doorbell.
 *
 * The runtime calls the default export once its setup modules are done: on
 * ESP32, setup/network has joined Wi-Fi and, when the clock was unset, fetched
 * the time over SNTP. Everything device-specific is chosen by the manifest:
 * on the simulator "device/button" and "device/random" are the -sim modules.
 * A device that is not provisioned, or whose config is wrong, logs why and
 * stays offline rather than run half-configured.
 */
import config from "mc/config";
import { Doorbell } from "../core/doorbell";
import { createButton } from "./button";
import { DeviceClock } from "./clock";
import { IdentityError, loadIdentity, type DeviceIdentity } from "./identity";
import { createLog } from "./log";
import { createMqttTransport } from "./mqtt";
import { createRandom } from "./random";
import { parseSettings, SettingsError, type DeviceSettings } from "./settings";
import { createSha512 } from "./sha512";
import { openStore } from "./store";

/** Held for the life of the program so nothing the doorbell owns (the button's pin, its timers) is collected. */
let running: Doorbell | undefined;

export default function main(): void {
  if (running) return;
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

  let identity: DeviceIdentity;
  try {
    identity = loadIdentity();
  } catch (e) {
    if (!(e instanceof IdentityError)) throw e;
    log("error", "not provisioned: staying offline", { reason: e.message });
    return;
  }
  const thing = identity.thing ?? settings.thing;
  if (identity.thing !== undefined && identity.thing !== settings.thing) log("info", "thing name from the identity store", { thing });
  if (clock.wallTime() === undefined) log("warn", "no trusted time yet: TLS cannot start until the clock is set", { floor: settings.timeFloorMs });

  let doorbell: Doorbell;
  try {
    doorbell = new Doorbell({
      thing,
      signingSeed: identity.signingSeed,
      clock,
      random: createRandom(),
      store: openStore(),
      transport: createMqttTransport({ thing, settings, identity, clock, log }),
      button: createButton(settings.button),
      log,
      sha512: createSha512(),
    });
  } catch (e) {
    // A missing resource, a corrupt store, a pin the board lacks: say so and stay up rather than boot-loop.
    log("error", "cannot start", { reason: e instanceof Error ? e.message : String(e) });
    return;
  }
  log("info", "doorward device", { board: settings.board, thing, broker: settings.broker.host, port: settings.broker.port });
  running = doorbell;
  doorbell.start();
}
