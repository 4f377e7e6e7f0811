/*
 * Host crypto for the snapshot pipeline: AES-256-GCM and SHA-256 from
 * node:crypto (OpenSSL), behind the core's Aead and Sha256Factory ports.
 * The device uses Moddable's native `crypt` instead (modules/device/cipher.ts);
 * both produce standard AES-GCM (ciphertext ‖ 16-byte tag), so either side's
 * output opens with the other's code. `open` is for consumers and tests: the
 * device never decrypts footage.
 */
import { createCipheriv, createDecipheriv, createHash } from "node:crypto";
import type { Aead, DigestStream, Sha256Factory } from "../core/snapshot";

const TAG = 16;

function checkKeyNonce(key: Uint8Array, nonce: Uint8Array): void {
  if (key.length !== 32) throw new TypeError("aes-256-gcm: key must be 32 bytes");
  if (nonce.length !== 12) throw new TypeError("aes-256-gcm: nonce must be 12 bytes");
}

export interface HostAead extends Aead {
  /** Plaintext, or undefined if the tag does not verify (tampered, wrong key, nonce or AAD). */
  open(key: Uint8Array, nonce: Uint8Array, sealed: Uint8Array, aad: Uint8Array): Uint8Array | undefined;
}

export const hostAesGcm: HostAead = {
  seal(key, nonce, plaintext, aad) {
    checkKeyNonce(key, nonce);
    const cipher = createCipheriv("aes-256-gcm", key, nonce, { authTagLength: TAG });
    cipher.setAAD(aad);
    const head = cipher.update(plaintext);
    const tail = cipher.final();
    const out = new Uint8Array(head.length + tail.length + TAG);
    out.set(head, 0);
    out.set(tail, head.length);
    out.set(cipher.getAuthTag(), head.length + tail.length);
    return out;
  },
  open(key, nonce, sealed, aad) {
    checkKeyNonce(key, nonce);
    if (sealed.length < TAG) return undefined;
    const decipher = createDecipheriv("aes-256-gcm", key, nonce, { authTagLength: TAG });
    decipher.setAAD(aad);
    decipher.setAuthTag(sealed.subarray(sealed.length - TAG));
    const head = decipher.update(sealed.subarray(0, sealed.length - TAG));
    try {
      const tail = decipher.final();
      const out = new Uint8Array(head.length + tail.length);
      out.set(head, 0);
      out.set(tail, head.length);
      return out;
    } catch {
      head.fill(0);
      return undefined;
    }
  },
};

export const hostSha256: Sha256Factory = (): DigestStream => {
  const hash = createHash("sha256");
  return {
    update(data) {
      hash.update(data);
    },
    digest() {
      return new Uint8Array(hash.digest());
    },
  };
};
