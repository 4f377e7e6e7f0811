/*
 * DER to PEM for the host's TLS clients: the device identity holds DER (as the
 * Moddable TLS client wants it), Node's TLS options take PEM. Base64 in lines
 * of 64 characters, and never an empty line: when the base64 length is a
 * multiple of 64, a naive line break leaves one before the END line, and
 * OpenSSL then fails to read the certificate (a dev root CA of exactly 864
 * bytes is such a case).
 */
export function pemOf(label: string, der: Uint8Array): string {
  const b64 = Buffer.from(der.buffer, der.byteOffset, der.byteLength).toString("base64");
  return `-----BEGIN ${label}-----\n${(b64.match(/.{1,64}/g) ?? []).join("\n")}\n-----END ${label}-----\n`;
}
