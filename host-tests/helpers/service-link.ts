/* The cloud service's own MQTT session to a stand-in, and a bounded wait: what the tests that drive a doorbell through a real broker share. */
import mqtt, { type MqttClient } from "mqtt";
import type { DevPki } from "../../tools/pki";

/** Connects as the dev PKI's cloud service (client ID `<service>-<suffix>`) over mutual TLS; rejects on the first error. */
export function connectService(pki: DevPki, port: number, suffix: string): Promise<MqttClient> {
  return new Promise<MqttClient>((resolve, reject) => {
    const c = mqtt.connect({
      protocol: "mqtts", host: "127.0.0.1", port, servername: "localhost", clientId: `${pki.service.name}-${suffix}`,
      ca: pki.ca.certPem, cert: pki.service.certPem, key: pki.service.keyPem, rejectUnauthorized: true, reconnectPeriod: 0, protocolVersion: 4,
    });
    c.once("connect", () => resolve(c));
    c.once("error", reject);
  });
}

/** Polls `predicate` every 5 ms; throws "timed out" after `timeoutMs`. */
export async function until(predicate: () => boolean, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > end) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 5));
  }
}
