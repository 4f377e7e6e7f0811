/*
 * What a board gives the firmware: the contract of "device/board".
 *
 * main.ts is the same program on every platform; what differs is chosen by the
 * manifest, which maps "device/board" to ./board on ESP32 targets (GPIO, Wi-Fi,
 * camera, OTA slots, eFuse or flash-encrypted vault key, the serial console)
 * and to ./board-sim on the Linux simulator (the host's network and clock, a
 * file as the provisioning channel, the LED and chime as log lines, a
 * development vault key). Both export openBoard() returning this shape; the
 * manifest test checks their exports match.
 */
import type { Aead, BootControl, Camera, Log, Random, Sha256Factory, UpdateSink } from "../core/ports";
import type { KeyProvider } from "../core/vault";
import type { ChipState } from "../core/chip-lock";
import type { BundleFiles } from "./provision-file";
import type { ConsolePort } from "./provision-serial";
import type { DeviceSettings } from "./settings";
import type { NetworkLink } from "./wifi";

/** The device's Random ("device/random"), which knows whether a true entropy source feeds it. */
export interface DeviceRandom extends Random {
  /** A true entropy source feeds it now: the boot-time noise source, or the running radio. */
  entropyReady(): boolean;
  /** Hand the boot-time noise source (the SAR ADC) back: call before Wi-Fi or a peripheral that shares it starts. */
  releaseBootSource(): void;
  /** The radio is running: its noise feeds the hardware RNG from now on. */
  radioRunning(): void;
}

export interface BoardUpdate {
  sink: UpdateSink;
  boot: BootControl;
  /** Bytes the inactive OTA slot holds. */
  capacity: number;
}

export interface Board {
  /** The vault's key, and a few words on where it comes from (for the boot log). */
  keys: KeyProvider;
  keyKind: string;
  /** The network, joined with the provisioned Wi-Fi credentials (the simulator ignores them). */
  network(credentials: { ssid: string; password: string }): NetworkLink;
  /** Local provisioning channels this platform has. */
  console?: ConsolePort;
  files?: BundleFiles;
  /** Outputs, when the board has them wired (true = lit / sounding). */
  led?: (on: boolean) => void;
  chime?: (on: boolean) => void;
  camera?: Camera;
  cipher?: Aead;
  sha256?: Sha256Factory;
  update?: BoardUpdate;
  /** The chip's locks as its eFuses say ("device/chip-lock"); throws when they cannot be read. */
  chip: () => ChipState;
}

export interface OpenBoardOptions {
  settings: DeviceSettings;
  log: Log;
  random: DeviceRandom;
  schedule: (callback: () => void, delayMs: number) => () => void;
}
