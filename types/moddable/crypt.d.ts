/*
 * "crypt" (modules/crypt/digest): native digests.
 *
 * Missing from @moddable/typings 5.6.0. Declared exactly as the SDK 8.2 typings
 * declare it (typings/crypt.d.ts), because mcconfig type-checks the same
 * sources against those: anything looser here would pass `npm test` and fail
 * on the build machine. The native write() also accepts typed-array views,
 * but neither declaration says so, so callers pass an ArrayBuffer.
 */
declare module "crypt" {
  type DigestType = "MD5" | "SHA1" | "SHA224" | "SHA256" | "SHA384" | "SHA512";

  export class Digest {
    constructor(type: DigestType);
    write(message: string | ArrayBuffer): void;
    close(): ArrayBuffer;
    reset(): void;
    get blockSize(): number;
    get outputSize(): number;
    update(message: string | ArrayBuffer): void;
  }
}
