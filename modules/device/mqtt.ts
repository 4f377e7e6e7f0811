/*
 * Builds the device's MqttTransport from the SDK's ECMA-419 classes.
 *
 * Binds ./mqtt-session to the classes ./egress hands out (the ECMA-419 MQTT
 * client, the TLS socket over TCP, TLS 1.2 with the SDK's JavaScript TLS, and
 * ./resolver), each of which checks the egress allowlist before it touches
 * DNS or a socket, with this device's identity: client ID = thing name, client
 * certificate and RSA key from the identity store, and the trusted roots either
 * from the identity store ("ca", a development broker) or from the firmware's
 * resources (Amazon Root CA 1 and 3 for AWS IoT). A production build refuses
 * any other trust anchor: it throws before a transport exists.
 */
import Resource from "Resource";
import type { Clock, Log, MqttTransport } from "../core/ports";
import { EgressConfigError, trustAnchorNamesProblem, trustStoreProblem } from "../core/egress";
import type { DeviceIdentity } from "./identity";
import type { DeviceSettings } from "./settings";
import { deviceEgress, type DeviceEgress } from "./egress";
import { Mqtt419Transport, type Der } from "./mqtt-session";

/** Reported with every refusal: which module asked. */
export const REQUESTER = "device/mqtt";

export interface DeviceMqttOptions {
  thing: string;
  settings: DeviceSettings;
  identity: DeviceIdentity;
  clock: Clock;
  log: Log;
  /** Default: the device's one egress, from mc/config. */
  egress?: DeviceEgress;
}

function trustAnchors(settings: DeviceSettings, identity: DeviceIdentity, egress: DeviceEgress): Der[] {
  const profile = egress.guard.profile;
  const names = trustAnchorNamesProblem(profile, settings.trustAnchors);
  if (names) throw new EgressConfigError(`mqtt: ${names}`);
  if (identity.ca) {
    // A development CA in the identity store would let a local broker stand in for AWS: not in production.
    const problem = trustStoreProblem(profile, [new Uint8Array(identity.ca)]);
    if (problem) throw new EgressConfigError(`mqtt: production build refuses the provisioned CA: ${problem}`);
    return [identity.ca];
  }
  return settings.trustAnchors.map((name) => {
    if (!Resource.exists(name)) throw new Error(`mqtt: trust anchor resource ${name} is not in the firmware (see certs/README.md)`);
    return new Resource(name);
  });
}

export function createMqttTransport(options: DeviceMqttOptions): MqttTransport {
  const { settings, identity, clock, log } = options;
  const egress = options.egress ?? deviceEgress({ log });
  const broker = settings.broker;
  return new Mqtt419Transport({
    host: broker.host,
    port: broker.port,
    clientId: options.thing,
    serverName: broker.serverName,
    ...(broker.alpn ? { alpn: broker.alpn } : {}),
    keepAliveSeconds: settings.keepAliveSeconds,
    credentials: {
      certificate: identity.certificate,
      privateKey: identity.privateKey,
      trustAnchors: trustAnchors(settings, identity, egress),
    },
    io: egress.mqttIo(REQUESTER),
    schedule: (callback, delayMs) => clock.schedule(callback, delayMs),
    timeValid: () => clock.wallTime() !== undefined,
    log,
  });
}
