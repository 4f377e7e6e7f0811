/*
 * SHA-512 from the SDK's native `crypt` Digest, as the core's Sha512 port.
 *
 * The signer hashes on every press (the online half of a signature) and when
 * topping up its nonce pool; the native digest is far faster than tweetnacl's
 * JavaScript one on XS. One Digest is reused, reset before each message.
 */
import { Digest } from "crypt";
import type { Sha512 } from "../core/ports";

/** The declared Digest.write takes an ArrayBuffer; hand it one without copying when the view already spans one. */
function wholeBuffer(data: Uint8Array): ArrayBuffer {
  const buffer = data.buffer;
  if (buffer instanceof ArrayBuffer && data.byteOffset === 0 && data.byteLength === buffer.byteLength) return buffer;
  return data.slice().buffer;
}

export function createSha512(): Sha512 {
  const digest = new Digest("SHA512");
  return (data) => {
    digest.reset();
    digest.write(wholeBuffer(data));
    return new Uint8Array(digest.close());
  };
}
