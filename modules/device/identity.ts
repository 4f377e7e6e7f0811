/*
 * The device identity: who this doorbell is and the secrets that prove it.
 *
 * Read from the preference store (NVS), domain "dw.id", where provisioning
 * writes them once: the thing name, the AWS IoT client certificate (DER), its
 * RSA private key (PKCS#8 DER: the SDK's TLS client can only sign with RSA) and
 * the 32-byte Ed25519 seed that signs events. An optional "ca" (DER) replaces
 * the built-in trust anchors, for a development broker with its own CA.
 *
 * Nothing is hard-coded and nothing here is logged. NVS is not encrypted by
 * default, so for now these sit in flash in the clear: an encrypted vault
 * replaces this module in a later issue, behind the same function.
 */
import Preference from "preference";

export const IDENTITY_DOMAIN = "dw.id";

export interface DeviceIdentity {
  /** Thing name, if provisioning stored one; otherwise the config's is used. */
  thing?: string;
  /** Client certificate, DER. */
  certificate: ArrayBuffer;
  /** Client private key, PKCS#8 DER (RSA). */
  privateKey: ArrayBuffer;
  /** Ed25519 signing seed, 32 bytes. */
  signingSeed: Uint8Array;
  /** Trust anchor override, DER. */
  ca?: ArrayBuffer;
}

export class IdentityError extends Error {}

function der(name: string, required: true): ArrayBuffer;
function der(name: string, required: false): ArrayBuffer | undefined;
function der(name: string, required: boolean): ArrayBuffer | undefined {
  const value = Preference.get(IDENTITY_DOMAIN, name);
  if (value === undefined) {
    if (required) throw new IdentityError(`identity: ${IDENTITY_DOMAIN}/${name} is not provisioned`);
    return undefined;
  }
  // Every DER structure we store is a SEQUENCE.
  if (!(value instanceof ArrayBuffer) || value.byteLength < 2 || new Uint8Array(value)[0] !== 0x30) {
    throw new IdentityError(`identity: ${IDENTITY_DOMAIN}/${name} is not DER`);
  }
  return value;
}

/** Throws IdentityError naming the first missing or malformed item (never its value). */
export function loadIdentity(): DeviceIdentity {
  const thing = Preference.get(IDENTITY_DOMAIN, "thing");
  if (thing !== undefined && typeof thing !== "string") throw new IdentityError(`identity: ${IDENTITY_DOMAIN}/thing is not a string`);
  const certificate = der("cert", true);
  const privateKey = der("key", true);
  const seed = Preference.get(IDENTITY_DOMAIN, "seed");
  if (seed === undefined) throw new IdentityError(`identity: ${IDENTITY_DOMAIN}/seed is not provisioned`);
  if (!(seed instanceof ArrayBuffer) || seed.byteLength !== 32) throw new IdentityError(`identity: ${IDENTITY_DOMAIN}/seed must be 32 bytes`);
  const ca = der("ca", false);
  return {
    ...(thing === undefined ? {} : { thing }),
    certificate,
    privateKey,
    signingSeed: new Uint8Array(seed),
    ...(ca === undefined ? {} : { ca }),
  };
}
