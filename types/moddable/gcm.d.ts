/*
 * "gcm" (modules/crypt/etc/gcm.js) and the "crypt" BlockCipher it runs on.
 *
 * Neither is declared by @moddable/typings 5.6.0 nor by the SDK 8.2 typings
 * (whose crypt.d.ts has Digest only; ./crypt.d.ts mirrors that), so this file
 * adds them; the `declare module "crypt"` below merges with ./crypt.d.ts.
 * Written from the SDK sources: BlockCipher("AES", key) takes the key as an
 * ArrayBuffer of 16, 24 or 32 bytes; GCM.process(data, buffer, iv, aad, true)
 * returns ciphertext ‖ tag as a new ArrayBuffer. The iv must be an ArrayBuffer
 * (GCM appends the counter with XS's ArrayBuffer.prototype.concat) and so must
 * the aad (GHASH reads it with xsmcToArrayBuffer); data may be any buffer view.
 */
declare module "crypt" {
  export class BlockCipher {
    constructor(cipher: "AES" | "DES" | "TDES", key: ArrayBuffer);
    encrypt(data: ArrayBuffer | ArrayBufferView, result?: ArrayBuffer): ArrayBuffer;
    decrypt(data: ArrayBuffer | ArrayBufferView, result?: ArrayBuffer): ArrayBuffer;
    get keySize(): number;
    get blockSize(): number;
  }
}

declare module "gcm" {
  import type { BlockCipher } from "crypt";

  export default class GCM {
    constructor(cipher: BlockCipher, tagLength?: number);
    init(iv: ArrayBuffer, aad?: ArrayBuffer): void;
    encrypt(data: ArrayBuffer | ArrayBufferView, buffer?: ArrayBuffer): ArrayBuffer;
    decrypt(data: ArrayBuffer | ArrayBufferView, buffer?: ArrayBuffer): ArrayBuffer;
    close(): ArrayBuffer;
    /** Encrypt: ciphertext ‖ tag. Decrypt: plaintext, or undefined if the tag does not match. */
    process(data: ArrayBuffer | ArrayBufferView, buffer: ArrayBuffer | undefined, iv: ArrayBuffer, aad: ArrayBuffer | undefined, encrypt: true): ArrayBuffer;
    process(data: ArrayBuffer | ArrayBufferView, buffer: ArrayBuffer | undefined, iv: ArrayBuffer, aad: ArrayBuffer | undefined, encrypt: false): ArrayBuffer | undefined;
  }
}
