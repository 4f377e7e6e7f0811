/*
 * The TLS credentials the MQTT transport (./mqtt) connects with, taken from the
 * provisioned identity.
 *
 * There is no plaintext identity any more: the thing name, client certificate,
 * RSA key and CA arrive in a provisioning bundle and live only in the vault
 * (core/provisioning); bootFirmware reads them and hands them here. This module
 * only reshapes them (ArrayBuffers, as the SDK's `secure` option bag wants)
 * and decides which CA to trust:
 *  - a board trusts only the roots built into its firmware (config
 *    doorward.trustAnchors, Amazon Root CA 1 and 3): the bundle's CA is not
 *    passed on (and a production build has already refused a bundle whose CA
 *    is not one of those roots: core/firmware, core/egress);
 *  - the simulator (doorward.trustProvisionedCa) trusts the bundle's CA, the
 *    local stand-in's development CA.
 * The Ed25519 seed never comes here: it stays with the signer.
 */
import type { DeviceIdentity as ProvisionedIdentity } from "../core/provisioning";
import type { DeviceSettings } from "./settings";

/** What ./mqtt needs to authenticate and to authenticate the broker. */
export interface DeviceIdentity {
  thing: string;
  /** Client certificate, DER. */
  certificate: ArrayBuffer;
  /** Client private key, PKCS#8 DER (RSA). */
  privateKey: ArrayBuffer;
  /** Trust anchor replacing the firmware's built-in roots (simulator only), DER. */
  ca?: ArrayBuffer;
}

function buffer(bytes: Uint8Array): ArrayBuffer {
  return bytes.slice().buffer as ArrayBuffer;
}

export function tlsIdentity(id: ProvisionedIdentity, settings: DeviceSettings): DeviceIdentity {
  const out: DeviceIdentity = { thing: id.thing, certificate: buffer(id.tls.clientCertificates[0]), privateKey: buffer(id.tls.clientKey) };
  if (settings.trustProvisionedCa) out.ca = buffer(id.tls.certificate);
  return out;
}
