/*
 * Ed25519 verification through Node's crypto (OpenSSL), independent of tweetnacl.
 * The cloud consumer and the tests check every signature with both, which proves
 * the device's signatures are standard Ed25519 and not merely tweetnacl-compatible.
 */
import crypto from "node:crypto";

export function opensslVerify(message: Uint8Array, signature: Uint8Array, publicKey: Uint8Array): boolean {
  const key = crypto.createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: Buffer.from(publicKey).toString("base64url") }, format: "jwk" });
  return crypto.verify(null, message, key, signature);
}
