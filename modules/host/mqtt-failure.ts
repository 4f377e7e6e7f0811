/*
 * Why an MQTT session to a broker failed, in words a user can act on.
 *
 * A broker refuses in a handful of ways, and each surfaces differently in Node:
 * a TLS alert when it rejects the client certificate, a verification code when
 * its own certificate does not chain to the CA we were given, a CONNACK return
 * code, a SUBACK 0x80, or a bare close. Every host-side MQTT user (the
 * simulated device's transport and the cloud-side tools) reports through this
 * one function, so the same refusal reads the same everywhere.
 */

export type MqttFailureKind =
  | "unreachable"
  | "broker-certificate-untrusted"
  | "client-certificate-refused"
  | "connect-refused"
  | "policy-refused"
  | "closed"
  | "timeout"
  | "other";

export interface MqttFailure {
  kind: MqttFailureKind;
  /** One line, naming the broker and what it refused. */
  message: string;
}

/** Node's codes for a server certificate that does not verify under the given CA or name. */
const UNTRUSTED_SERVER = new Set([
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE", "UNABLE_TO_GET_ISSUER_CERT", "UNABLE_TO_GET_ISSUER_CERT_LOCALLY", "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT", "CERT_HAS_EXPIRED", "CERT_NOT_YET_VALID", "ERR_TLS_CERT_ALTNAME_INVALID", "CERT_SIGNATURE_FAILURE",
]);

/** CONNACK return codes of MQTT 3.1.1, §3.2.2.3. */
const CONNACK: Record<number, string> = {
  1: "unacceptable protocol version",
  2: "client identifier rejected",
  3: "server unavailable (AWS also answers this when one client ID connects more than once a second)",
  4: "bad user name or password",
  5: "not authorized: the policy refuses this identity or client ID",
};

export function describeMqttFailure(broker: string, error: unknown): MqttFailure {
  const e = (error ?? {}) as { code?: unknown; message?: unknown };
  const code = typeof e.code === "string" ? e.code : typeof e.code === "number" ? e.code : undefined;
  const text = typeof e.message === "string" ? e.message : String(error);
  if (code === "ECONNREFUSED" || code === "ENOTFOUND" || code === "EHOSTUNREACH" || code === "ENETUNREACH" || code === "EAI_AGAIN") {
    return { kind: "unreachable", message: `broker ${broker} is unreachable (${code})` };
  }
  if (typeof code === "string" && UNTRUSTED_SERVER.has(code)) {
    return { kind: "broker-certificate-untrusted", message: `broker ${broker} presented a certificate the given CA does not vouch for (${code}: ${text})` };
  }
  if ((typeof code === "string" && /^ERR_SSL_.*ALERT/.test(code)) || /alert (unknown ca|bad certificate|certificate (required|unknown|revoked|expired)|access denied|handshake failure)/i.test(text)) {
    const alert = /alert ([a-z ]+?)(?::|$)/i.exec(text)?.[1] ?? String(code);
    return { kind: "client-certificate-refused", message: `broker ${broker} refused the client certificate (TLS alert: ${alert})` };
  }
  if (typeof code === "number" && CONNACK[code]) {
    return { kind: "connect-refused", message: `broker ${broker} refused the connection: CONNACK ${code} (${text}): ${CONNACK[code]}` };
  }
  if (/connack timeout|timed out/i.test(text)) return { kind: "timeout", message: `broker ${broker}: no CONNACK in time (${text})` };
  if (/not authori[sz]ed/i.test(text)) return { kind: "connect-refused", message: `broker ${broker} refused the connection: ${text}` };
  return { kind: "other", message: `broker ${broker}: ${text}` };
}

/** An error that carries its kind, so callers and tests can tell refusals apart without parsing the text. */
export class MqttFailureError extends Error {
  readonly kind: MqttFailureKind;
  constructor(failure: MqttFailure) {
    super(failure.message);
    this.name = "MqttFailureError";
    this.kind = failure.kind;
  }
}
