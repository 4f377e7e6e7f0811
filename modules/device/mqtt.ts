/*
 * Builds the device's MqttTransport from the SDK's ECMA-419 classes.
 *
 * Binds ./mqtt-session to embedded:network/mqtt/client, the TLS socket
 * (embedded:io/socket/tcp/tls over embedded:io/socket/tcp, TLS 1.2, the SDK's
 * JavaScript TLS) and ./resolver, with this device's identity: client ID =
 * thing name, client certificate and RSA key from the identity store, and the
 * trusted roots either from the identity store ("ca", a development broker)
 * or from the firmware's resources (Amazon Root CA 1 and 3 for AWS IoT).
 */
import MQTTClient from "embedded:network/mqtt/client";
import TCP from "embedded:io/socket/tcp";
import TLSSocket from "embedded:io/socket/tcp/tls";
import Resource from "Resource";
import type { Clock, Log, MqttTransport } from "../core/ports";
import type { DeviceIdentity } from "./identity";
import type { DeviceSettings } from "./settings";
import NetResolver from "./resolver";
import { Mqtt419Transport, type Client419Constructor, type Der, type SocketConstructor } from "./mqtt-session";

export interface DeviceMqttOptions {
  thing: string;
  settings: DeviceSettings;
  identity: DeviceIdentity;
  clock: Clock;
  log: Log;
}

function trustAnchors(settings: DeviceSettings, identity: DeviceIdentity): Der[] {
  if (identity.ca) return [identity.ca];
  return settings.trustAnchors.map((name) => {
    if (!Resource.exists(name)) throw new Error(`mqtt: trust anchor resource ${name} is not in the firmware (see certs/README.md)`);
    return new Resource(name);
  });
}

export function createMqttTransport(options: DeviceMqttOptions): MqttTransport {
  const { settings, identity, clock, log } = options;
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
      trustAnchors: trustAnchors(settings, identity),
    },
    io: {
      // The published typings of these two disagree with the SDK's implementation
      // (see Client419 in ./mqtt-session, which describes what the code does).
      client: MQTTClient as unknown as Client419Constructor,
      tls: TLSSocket as unknown as SocketConstructor,
      tcp: TCP,
      resolver: NetResolver,
    },
    schedule: (callback, delayMs) => clock.schedule(callback, delayMs),
    timeValid: () => clock.wallTime() !== undefined,
    log,
  });
}
