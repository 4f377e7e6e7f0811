/*
 * The host's one DER → PEM encoder: OpenSSL reads what it writes back to the
 * same bytes, also when the base64 is a whole number of 64-character lines
 * (a dev root CA of 864 bytes is one; a blank line there broke every TLS
 * connection of the simulator).
 */
import test from "ava";
import tls from "node:tls";
import { X509Certificate } from "node:crypto";
import { pemOf } from "../modules/host/pem";

test("certificates of every length class round-trip through OpenSSL, with no empty line", (t) => {
  const ders = tls.rootCertificates.map((p) => new X509Certificate(p).raw);
  const byClass = new Map<number, Buffer>();
  for (const d of ders) if (!byClass.has(d.length % 48)) byClass.set(d.length % 48, d);
  t.true(byClass.has(0), "a certificate whose base64 fills its last line exactly");
  t.true(byClass.size > 8);
  for (const [rest, der] of byClass) {
    const pem = pemOf("CERTIFICATE", new Uint8Array(der));
    t.notRegex(pem, /\n\n/, `length ${der.length} (mod 48 = ${rest})`);
    t.true(pem.split("\n").every((l) => l.length <= 64));
    t.deepEqual(new X509Certificate(pem).raw, der, `length ${der.length}`);
  }
});
