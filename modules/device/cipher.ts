/*
 * Snapshot crypto on the device: AES-256-GCM and SHA-256 from the SDK's
 * native `crypt` module, behind the ports of core/snapshot (Aead,
 * Sha256Factory).
 *
 * Bulk encryption of a 100 KB frame in JS would take seconds on XS; here AES
 * (kcl fips197), GHASH and SHA-256 run in C, and JS only moves buffers. The
 * GCM composition is the SDK's own "gcm" module (the one its TLS uses for
 * AES-GCM suites), not a re-implementation. A cipher object is made per
 * chunk: the key schedule is microseconds next to 8 KB of AES, and no key
 * stays cached in native memory after the snapshot.
 *
 * GCM reads the key, nonce and AAD as whole ArrayBuffers (xsmcToArrayBuffer,
 * and XS's ArrayBuffer.prototype.concat on the nonce), so those small values
 * are copied into exact-size buffers; the plaintext, which may be a view into
 * the camera's PSRAM frame, is passed as is (Mode.encrypt accepts views).
 *
 * `crypt` is imported as a namespace and BlockCipher taken from it with a
 * cast: the SDK's own typings, which mcconfig compiles against, declare only
 * Digest in "crypt", so a named import of BlockCipher fails there even though
 * the module exports it (modules/crypt/digest/crypt.js). The cast's target
 * type is whatever GCM's constructor takes, which is types/moddable/gcm.d.ts
 * here and unchecked under mcconfig (no typings for "gcm").
 */
import GCM from "gcm";
import * as crypt from "crypt";
import type { Aead, DigestStream, Sha256Factory } from "../core/ports";

type BlockCipherConstructor = new (cipher: "AES", key: ArrayBuffer) => ConstructorParameters<typeof GCM>[0];
const BlockCipher = (crypt as unknown as { BlockCipher: BlockCipherConstructor }).BlockCipher;

function exactBuffer(bytes: Uint8Array): ArrayBuffer {
  return bytes.slice().buffer as ArrayBuffer;
}

/** The view's own buffer when it spans all of it, else a copy: Digest.write is declared to take an ArrayBuffer. */
function wholeBuffer(data: Uint8Array): ArrayBuffer {
  const buffer = data.buffer;
  if (buffer instanceof ArrayBuffer && data.byteOffset === 0 && data.byteLength === buffer.byteLength) return buffer;
  return data.slice().buffer as ArrayBuffer;
}

export function createAesGcm(): Aead {
  return {
    seal(key, nonce, plaintext, aad) {
      if (key.length !== 32) throw new TypeError("aes-256-gcm: key must be 32 bytes");
      if (nonce.length !== 12) throw new TypeError("aes-256-gcm: nonce must be 12 bytes");
      const keyBuffer = exactBuffer(key);
      const gcm = new GCM(new BlockCipher("AES", keyBuffer));
      new Uint8Array(keyBuffer).fill(0); // BlockCipher keeps its own copy
      return new Uint8Array(gcm.process(plaintext, undefined, exactBuffer(nonce), exactBuffer(aad), true));
    },
  };
}

export const createSha256: Sha256Factory = (): DigestStream => {
  const digest = new crypt.Digest("SHA256");
  return {
    update(data) {
      digest.write(wholeBuffer(data));
    },
    digest() {
      return new Uint8Array(digest.close());
    },
  };
};
