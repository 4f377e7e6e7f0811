/*
 * "embedded:update" and "embedded:storage/flash" (modules/io/update, modules/io/flash):
 * the ECMA-419 OTA writer and the flash partition it writes to.
 *
 * Both are missing from @moddable/typings 5.6.0. Declared as the SDK 8.2 typings
 * declare them (typings/embedded/update.d.ts, typings/embedded/storage/flash.d.ts),
 * with the SDK's ByteBuffer spelled out, because mcconfig checks the device sources
 * against those: anything looser here would pass `npm run typecheck` and fail on the
 * build machine. On ESP32, open({partition}) takes a Flash opened with path
 * "nextota" (esp_ota_get_next_update_partition); mode "a" writes sequentially and
 * erases as it goes; close() before complete() aborts (esp_ota_abort); complete()
 * runs esp_ota_end (which re-validates the written image) and
 * esp_ota_set_boot_partition. Nothing here checks a signature.
 */
declare module "embedded:storage/flash" {
  export interface FlashOpenOptions {
    path: string;
    mode?: "r" | "r+";
  }

  export interface FlashStatus {
    size: number;
    blockLength: number;
    blocks: number;
    writeAlign: number;
    eraseValue: number;
  }

  export class Flash {
    close(): void;
    eraseBlock(start: number, end?: number): void;
    read(byteLength: number, byteOffset: number): ArrayBuffer;
    read(buffer: ArrayBufferLike | ArrayBufferView, byteOffset: number): number;
    write(buffer: ArrayBufferLike | ArrayBufferView, byteOffset: number): void;
    status(): FlashStatus;
    format: "buffer";
  }

  const FlashStorage: {
    open(options: FlashOpenOptions): Flash;
    [Symbol.iterator](): IterableIterator<string>;
  };

  export default FlashStorage;
}

declare module "embedded:update" {
  import type { Flash } from "embedded:storage/flash";

  export interface UpdateOpenOptions {
    partition: Flash;
    mode?: "a" | "w";
    byteLength?: number;
  }

  export interface Updater {
    close(): void;
    complete(): void;
    write(bytes: ArrayBufferLike | ArrayBufferView): void;
    write(bytes: ArrayBufferLike | ArrayBufferView, byteOffset: number): void;
    format: "buffer";
  }

  const Update: {
    open(options: UpdateOpenOptions): Updater;
  };

  export default Update;
}
