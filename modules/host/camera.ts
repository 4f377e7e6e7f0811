/*
 * Host camera: a folder of JPEG files behind the core's Camera port.
 *
 * Each capture() returns the next file in name order, wrapping around, so a
 * simulator session shows different visitors and tests are repeatable. A
 * capture delay stands in for the sensor's exposure and JPEG encoding time
 * (tens to hundreds of ms on an OV2640), which is what lets the ring overtake
 * the snapshot in the simulator as it does on the board.
 */
import fs from "node:fs/promises";
import path from "node:path";
import type { Camera } from "../core/ports";

export interface FolderCameraOptions {
  /** Directory holding *.jpg / *.jpeg files (e.g. assets/samples). */
  directory: string;
  /** Simulated capture time. Default 0. */
  captureDelayMs?: number;
}

export class FolderCamera implements Camera {
  readonly directory: string;
  captures = 0;
  #delayMs: number;
  #files: string[] | undefined;

  constructor(options: FolderCameraOptions) {
    this.directory = options.directory;
    this.#delayMs = options.captureDelayMs ?? 0;
  }

  /** The JPEG files, in the order they will be returned. */
  async files(): Promise<string[]> {
    if (!this.#files) {
      const names = (await fs.readdir(this.directory)).filter((n) => /\.jpe?g$/i.test(n)).sort();
      if (names.length === 0) throw new Error(`camera: no .jpg files in ${this.directory}`);
      this.#files = names.map((n) => path.join(this.directory, n));
    }
    return this.#files;
  }

  async capture(): Promise<Uint8Array> {
    const files = await this.files();
    const file = files[this.captures++ % files.length];
    const [bytes] = await Promise.all([fs.readFile(file), this.#delayMs > 0 ? new Promise((r) => setTimeout(r, this.#delayMs)) : undefined]);
    if (bytes.length < 4 || bytes[0] !== 0xff || bytes[1] !== 0xd8) throw new Error(`camera: ${path.basename(file)} is not a JPEG`);
    return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
}
