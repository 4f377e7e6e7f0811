/*
 * The device Camera: the sensor's own JPEG encoder through Moddable's
 * embedded:io/image/in/camera (ESP32-S3 boards with PSRAM: xiao_esp32s3_sense
 * OV2640, m5atom_s3r_m12 OV3660, lilygo_t_camera_plus_s3 OV2640).
 *
 * Where the frame lives: the esp32-camera driver keeps three frame buffers in
 * PSRAM (CAMERA_FB_IN_PSRAM, fb_count 3, grab latest). With format
 * "buffer/disposable", read() hands JS a host buffer pointing into one of
 * them, so capture() returns a Uint8Array over PSRAM with no copy. That
 * buffer stays ours until release() (or the next capture) closes it and gives
 * it back to the driver; the snapshot pipeline only ever takes subarray views
 * of it. Only the sealed chunks are in the XS heap.
 *
 * The sensor is started on demand and stopped after the frame (the bell is
 * idle almost always), and the first frames after a start are dropped while
 * auto-exposure settles. Resolution is requested at construction; JPEG
 * quality is a build define (manifest "defines": {"camera": {"jpeg_quality"}}).
 */
import Camera419, { type DisposableFrame } from "embedded:io/image/in/camera";
import type { Camera } from "../core/ports";

export interface DeviceCameraOptions {
  /** Requested frame size; the driver picks the nearest it supports. Default 640×480 (VGA). */
  width?: number;
  height?: number;
  /** Frames dropped after a start while exposure settles. Default 3. */
  warmupFrames?: number;
  /** Keep the sensor streaming between captures (faster, more power). Default false. */
  keepRunning?: boolean;
}

interface PendingCapture {
  resolve: (frame: Uint8Array) => void;
  reject: (error: Error) => void;
}

export class DeviceCamera implements Camera {
  readonly width: number;
  readonly height: number;
  #camera: Camera419;
  #warmup: number;
  #keepRunning: boolean;
  #running = false;
  #skip = 0;
  #frame: DisposableFrame | undefined;
  #pending: PendingCapture | undefined;

  constructor(options: DeviceCameraOptions = {}) {
    this.#warmup = options.warmupFrames ?? 3;
    this.#keepRunning = options.keepRunning ?? false;
    const self = this;
    this.#camera = new Camera419({
      width: options.width ?? 640,
      height: options.height ?? 480,
      imageType: "jpeg",
      format: "buffer/disposable",
      onReadable() {
        self.#onReadable();
      },
    });
    this.width = this.#camera.width;
    this.height = this.#camera.height;
    if (this.#keepRunning) this.#start();
  }

  capture(): Promise<Uint8Array> {
    this.#closeFrame();
    if (this.#pending) return Promise.reject(new Error("camera: a capture is already waiting"));
    return new Promise((resolve, reject) => {
      this.#pending = { resolve, reject };
      if (!this.#running) this.#start();
    });
  }

  /** Give the frame buffer back to the driver, and abandon a capture still waiting. */
  release(): void {
    this.#closeFrame();
    const pending = this.#pending;
    this.#pending = undefined;
    if (pending) {
      if (!this.#keepRunning) this.#stop();
      pending.reject(new Error("camera: capture abandoned"));
    }
  }

  close(): void {
    this.release();
    this.#stop();
    this.#camera.close();
  }

  #start(): void {
    this.#skip = this.#warmup;
    this.#running = true;
    this.#camera.start();
  }

  #stop(): void {
    if (!this.#running) return;
    this.#running = false;
    this.#camera.stop();
  }

  #closeFrame(): void {
    const frame = this.#frame;
    this.#frame = undefined;
    frame?.close();
  }

  #onReadable(): void {
    const frame = this.#camera.read() as DisposableFrame | undefined;
    if (!frame) return;
    if (!this.#pending || this.#skip > 0) {
      if (this.#skip > 0) this.#skip--;
      // Not wanted: hand it straight back, or the driver runs out of buffers and stalls.
      frame.close();
      if (!this.#pending && !this.#keepRunning) this.#stop();
      return;
    }
    const pending = this.#pending;
    this.#pending = undefined;
    this.#frame = frame;
    if (!this.#keepRunning) this.#stop();
    pending.resolve(new Uint8Array(frame));
  }
}
