/*
 * "embedded:io/image/in/camera" (modules/io/imagein/camera): the draft
 * ECMA-419 ImageIn camera, ESP32-S3 boards with PSRAM.
 *
 * Missing from @moddable/typings 5.6.0 and from the SDK 8.2 typings as well,
 * so mcconfig's own type-check needs this file too (see docs/camera.md).
 * Written from the SDK's esp32/camera.js and camera.c: with format
 * "buffer/disposable", read() returns a host buffer that points straight into
 * the driver's frame buffer in PSRAM (no copy) and must be close()d to give
 * that buffer back to the driver; after close() it is detached (length 0).
 */
declare module "embedded:io/image/in/camera" {
  /** A frame handed out by read() with format "buffer/disposable". Usable wherever an ArrayBuffer is (new Uint8Array(frame)). */
  export interface DisposableFrame extends ArrayBuffer {
    close(): void;
  }

  export interface CameraOptions {
    /** Requested size; the driver picks the closest frame size it supports (read width/height after construction). */
    width?: number;
    height?: number;
    /** "jpeg" for the sensor's own JPEG encoder (OV2640, OV3660); throws if the sensor has none. */
    imageType: "jpeg" | number;
    format?: "buffer" | "buffer/disposable";
    /** A frame is ready: call read(). */
    onReadable?: (this: Camera, count: number) => void;
  }

  export default class Camera {
    constructor(options: CameraOptions);
    close(): void;
    /** With "buffer/disposable": a DisposableFrame, or undefined if none is ready. With "buffer": copies into `buffer` (or a new ArrayBuffer). */
    read(buffer?: ArrayBuffer): DisposableFrame | ArrayBuffer | undefined;
    start(): void;
    stop(): void;
    format: "buffer" | "buffer/disposable";
    readonly imageType: "jpeg" | number;
    readonly width: number;
    readonly height: number;
    readonly identification: { model?: string; [k: string]: unknown };
    readonly configuration: Record<string, unknown>;
    configure(options: { brightness?: number; contrast?: number; saturation?: number; sharpness?: number; denoise?: number; whiteBalance?: number }): void;
  }
}
