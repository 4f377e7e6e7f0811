/*
 * Firmware updates on the ESP32: the inactive OTA slot (embedded:update), the
 * bootloader's app-rollback controls (ESP-IDF through the XS FFI), and the
 * native SHA-256 the update agent hashes the image with.
 *
 * embedded:update checks no signature: the core's update agent (core/update)
 * verifies the signed manifest before open() and the image digest before
 * complete(), and only then is the new slot made bootable. The image is written
 * in append mode ("a"), so the slot is erased as it fills rather than all at
 * once up front (a multi-second stall). close() before complete() aborts the
 * write (esp_ota_abort) and leaves the running image and boot partition alone.
 *
 * Rollback needs CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE=y in the sdkconfig: the
 * bootloader then starts a new image as "pending verify" and, if it restarts
 * before esp_ota_mark_app_valid_cancel_rollback(), marks it aborted and starts
 * the previous one. That is what makes a power cut during the trial safe.
 */
import Update, { type Updater } from "embedded:update";
import Flash, { type Flash as FlashPartition } from "embedded:storage/flash";
import FFI from "mc/ffi";
import type { UpdateSink } from "../core/ports";
import type { BootControl } from "../core/update";

/** The glue mcconfig generates for these entries of hardware/esp32.json's "ffi". */
interface EspOta {
  esp_ota_mark_app_valid_cancel_rollback(): number;
  esp_ota_mark_app_invalid_rollback_and_reboot(): number;
  esp_restart(): void;
}

/** The partition the next update goes to, as ESP-IDF names it for flash.open(). */
const NEXT_SLOT = "nextota";

export class DeviceUpdateSink implements UpdateSink {
  /** Bytes the inactive slot holds: pass to UpdateAgentOptions.maxImageBytes. */
  readonly capacity: number;
  #partition: FlashPartition | undefined;
  #updater: Updater | undefined;

  constructor() {
    const partition = Flash.open({ path: NEXT_SLOT });
    try {
      this.capacity = partition.status().size;
    } finally {
      partition.close();
    }
  }

  open(byteLength: number): void {
    this.cancel();
    if (!(byteLength > 0 && byteLength <= this.capacity)) throw new RangeError(`image of ${byteLength} bytes does not fit the ${this.capacity}-byte slot`);
    const partition = Flash.open({ path: NEXT_SLOT, mode: "r+" });
    try {
      this.#updater = Update.open({ partition, mode: "a" });
      this.#partition = partition;
    } catch (e) {
      partition.close();
      throw e;
    }
  }

  write(chunk: Uint8Array): void {
    if (!this.#updater) throw new Error("update: not open");
    this.#updater.write(chunk);
  }

  complete(): void {
    const updater = this.#updater;
    if (!updater) throw new Error("update: not open");
    try {
      updater.complete();
    } finally {
      this.#release();
    }
  }

  cancel(): void {
    this.#release();
  }

  #release(): void {
    const updater = this.#updater;
    const partition = this.#partition;
    this.#updater = undefined;
    this.#partition = undefined;
    try {
      updater?.close();
    } finally {
      partition?.close();
    }
  }
}

/** ESP-IDF app rollback. rollback() and restart() do not return on the device. */
export function createBootControl(): BootControl {
  const natives = new FFI() as unknown as EspOta;
  return {
    confirm(): void {
      const err = natives.esp_ota_mark_app_valid_cancel_rollback();
      if (err !== 0) throw new Error(`esp_ota_mark_app_valid_cancel_rollback: ${err}`);
    },
    rollback(_reason: string): void {
      natives.esp_ota_mark_app_invalid_rollback_and_reboot();
      // Only reached when there is no previous image to go back to: restart into whatever the bootloader picks.
      natives.esp_restart();
    },
    restart(): void {
      natives.esp_restart();
    },
  };
}

/** The update agent uses the same native SHA-256 adapter as the camera. */
export { createSha256 as deviceSha256 } from "./cipher";
