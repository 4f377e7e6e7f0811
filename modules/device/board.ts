/*
 * The ESP32 boards: "device/board" on every esp32/* platform (./board-api).
 *
 * Everything here is chosen by the board's hardware/<board>.json: the LED and
 * chime pins (plain GPIO outputs: PWM would compete with the camera for LEDC
 * timer 0), whether there is a camera, the vault key (./vault-key is the eFuse
 * HMAC on the S3, the flash-encryption-gated stored key on the classic ESP32),
 * Wi-Fi through the SDK's ECMA-419 interface, the OTA slots of the board's
 * partition table, and the console as the provisioning channel.
 *
 * The console is read with the runtime's own ESP_getc, bound through the XS
 * FFI: it is what the SDK's `console` module reads, and it works on UART
 * (classic ESP32) and USB-Serial-JTAG (S3) alike. It returns bytes only in a
 * build without -d but with the console on (mcconfig -i: what
 * `npm run build:<board>` makes); in a -d build the line is xsbug's, so
 * tools/mc.ts passes console=xsbug and ./settings turns the channel off. Replies
 * go out through trace(), which such a build prints on the same console.
 *
 * A part that fails to start (a camera without PSRAM, a partition table
 * without OTA slots) is logged and left out; the doorbell still rings.
 */
import Digital from "embedded:io/digital";
import WiFi from "embedded:network/interface/wifi";
import FFI from "mc/ffi";
import type { Camera } from "../core/ports";
import type { Board, BoardUpdate, DeviceRandom, OpenBoardOptions } from "./board-api";
import { DeviceCamera } from "./camera";
import { createAesGcm, createSha256 } from "./cipher";
import type { ConsolePort } from "./provision-serial";
import type { OutputSettings } from "./settings";
import { createBootControl, DeviceUpdateSink } from "./update-sink";
import { createVaultKeyProvider } from "device/vault-key";
import { readChipState } from "device/chip-lock";
import { WifiLink, type NetworkLink, type Wifi419Constructor } from "./wifi";

/** The glue mcconfig generates for hardware/esp32.json's "ffi" entry. */
interface EspConsole {
  ESP_getc(): number;
}

function output(settings: OutputSettings): (on: boolean) => void {
  const io = new Digital({ pin: settings.pin, mode: Digital.Output });
  const write = (on: boolean) => io.write(on !== settings.activeLow ? 1 : 0);
  write(false);
  return write;
}

function serialConsole(): ConsolePort {
  const natives = new FFI() as unknown as EspConsole;
  return {
    read(max) {
      let bytes: number[] | undefined;
      while (!bytes || bytes.length < max) {
        const c = natives.ESP_getc();
        if (c < 0) break;
        (bytes ??= []).push(c & 0xff);
      }
      return bytes ? Uint8Array.from(bytes) : undefined;
    },
    writeLine(line) {
      trace(line + "\n");
    },
  };
}

function updatePorts(log: OpenBoardOptions["log"]): BoardUpdate | undefined {
  try {
    const sink = new DeviceUpdateSink();
    return { sink, boot: createBootControl(), capacity: sink.capacity };
  } catch (e) {
    log("warn", "updates disabled: no OTA slot (the partition table needs ota_0 and ota_1)", { reason: e instanceof Error ? e.message : String(e) });
    return undefined;
  }
}

/**
 * The boot-time entropy source (./random) shares the SAR ADC with the radio
 * and, on the classic ESP32, I2S0 with the camera: it is handed back before
 * either starts, and the radio's noise takes over once Wi-Fi is up.
 */
function entropyAware(link: NetworkLink, random: DeviceRandom): NetworkLink {
  return {
    get state() {
      return link.state;
    },
    start(onChange) {
      random.releaseBootSource();
      link.start((state) => {
        if (state === "up") random.radioRunning();
        onChange(state);
      });
    },
    stop: () => link.stop(),
  };
}

function entropyAwareCamera(camera: Camera, random: DeviceRandom): Camera {
  return {
    capture() {
      random.releaseBootSource();
      return camera.capture();
    },
    release: camera.release ? () => camera.release!() : undefined,
  };
}

export function openBoard(options: OpenBoardOptions): Board {
  const { settings, log, random, schedule } = options;
  const { keys, kind } = createVaultKeyProvider({ random, log, allowPlainKey: settings.devVaultKey });
  const board: Board = {
    keys,
    keyKind: kind,
    network: (credentials) =>
      entropyAware(new WifiLink({
        io: WiFi as unknown as Wifi419Constructor,
        ssid: credentials.ssid,
        password: credentials.password,
        schedule,
        random,
        log,
      }), random),
    chip: readChipState,
  };
  if (settings.provisioning.channel === "serial") board.console = serialConsole();
  if (settings.led) board.led = output(settings.led);
  if (settings.chime) board.chime = output(settings.chime);
  if (settings.camera) {
    try {
      board.camera = entropyAwareCamera(new DeviceCamera(), random);
      board.cipher = createAesGcm();
      board.sha256 = createSha256;
    } catch (e) {
      log("error", "camera did not start: rings go out without snapshots", { reason: e instanceof Error ? e.message : String(e) });
    }
  }
  board.sha256 ??= createSha256;
  if (settings.update) board.update = updatePorts(log);
  return board;
}
