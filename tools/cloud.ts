/*
 * The cloud side, as a reference consumer: what an owner's backend does with a
 * doorbell's messages. It connects to the broker with the service identity,
 * receives every thing's events, and verifies each one twice: with the
 * reference verifier (tweetnacl) and with OpenSSL through Node's crypto. It
 * de-duplicates at-least-once redeliveries by (thing, seq). With a state file
 * its replay marks survive a restart, and a device whose counters went
 * backwards (flash written back) is raised as an alert, never dropped quietly.
 */
import type { MqttClient } from "mqtt";
import { BROKER_OPTIONS, BROKER_USAGE, brokerFromFlags, brokerName, closeClient, joinBroker, type BrokerSettings } from "./lib/broker";
import { MqttFailureError } from "../modules/host/mqtt-failure";
import { EventVerifier, FileReplayState, ReplayStateError, type Verdict } from "./verifier";
import { openEnvelope } from "../modules/core/events";
import { opensslVerify } from "./openssl-ed25519";
import { TOPIC_ROOT } from "../modules/core/topics";
import { waitForMatch } from "./wait-for";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { ensureDevPki } from "./pki";
import { fromHex } from "../modules/core/bytes";
import { portOption, runAsEntry, UserError } from "./lib/cli";

/** Where and as whom a cloud-side tool connects: the shared broker settings (./lib/broker). */
export type CloudOptions = BrokerSettings;

export interface ReceivedEvent {
  topic: string;
  payload: Uint8Array;
  verdict: Verdict;
  /** True when OpenSSL also accepted the signature (only computed when the payload parsed). */
  openssl: boolean | undefined;
  /** A redelivery of an event already accepted, byte for byte. */
  duplicate: boolean;
  /** Why the owner must look at this device: its boot or sequence counter went backwards. */
  alert: string | undefined;
  receivedAt: number;
}

/**
 * Connect with the service identity and subscribe one filter: how every cloud-side
 * tool joins the broker. Resolves once the subscription is granted; a refusal or a
 * silent broker rejects, naming the broker and what it refused.
 */
export async function connectService(options: CloudOptions, filter: string, onMessage: (topic: string, payload: Uint8Array) => void): Promise<MqttClient> {
  return (await joinBroker(options, { subscribe: [filter], onMessage })).client;
}

export interface CloudConsumerOptions {
  /** Keep the replay marks in this file (see tools/verifier), so a restart cannot be fed old events. */
  stateFile?: string;
  /** Told of every alert as it arrives (default: a line on stderr). */
  onAlert?: (e: ReceivedEvent) => void;
}

export class CloudConsumer {
  readonly verifier: EventVerifier;
  readonly received: ReceivedEvent[] = [];
  /** Events that raised an alert, in arrival order. */
  readonly alerts: ReceivedEvent[] = [];
  duplicates = 0;
  #onAlert: (e: ReceivedEvent) => void;
  #client: MqttClient | undefined;
  #keys = new Map<string, Uint8Array>();
  #listeners = new Set<(e: ReceivedEvent) => void>();

  constructor(options: CloudConsumerOptions = {}) {
    this.verifier = new EventVerifier({}, { state: options.stateFile ? new FileReplayState(options.stateFile) : undefined });
    this.#onAlert = options.onAlert ?? ((e) => process.stderr.write(`cloud: ALERT ${e.verdict.event?.thing ?? "?"}: ${e.alert}\n`));
  }

  register(thing: string, publicKey: Uint8Array): void {
    this.verifier.register(thing, publicKey);
    this.#keys.set(thing, publicKey);
  }

  onEvent(listener: (e: ReceivedEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  async connect(options: CloudOptions): Promise<void> {
    this.#client = await connectService(options, `${TOPIC_ROOT}/+/events`, (topic, payload) => void this.accept(topic, payload));
  }

  /** Resolves with the first event matching the predicate (already received or future). */
  waitFor(predicate: (e: ReceivedEvent) => boolean, timeoutMs = 10_000): Promise<ReceivedEvent> {
    return waitForMatch(this.received, (l) => this.onEvent(l), predicate, timeoutMs, "event");
  }

  close(): Promise<void> {
    return this.#client ? closeClient(this.#client) : Promise.resolve();
  }

  /** One message from the events subscription (also fed directly by tests and by replays of captured traffic). */
  accept(topic: string, payload: Uint8Array): ReceivedEvent {
    const verdict = this.verifier.verify(payload, { topic });
    let openssl: boolean | undefined;
    try {
      const { event, signature, message } = openEnvelope(payload);
      const key = this.#keys.get(event.thing);
      openssl = key ? opensslVerify(message, signature, key) : undefined;
    } catch {
      openssl = undefined;
    }
    // The verifier remembers what it accepted (across restarts too, with a state file).
    const duplicate = !verdict.ok && verdict.redelivery === true;
    if (duplicate) this.duplicates++;
    const alert = verdict.ok ? verdict.alert : verdict.reason === "rollback" ? verdict.detail : undefined;
    const e: ReceivedEvent = { topic, payload, verdict, openssl, duplicate, alert, receivedAt: performance.now() };
    this.received.push(e);
    if (alert) {
      this.alerts.push(e);
      this.#onAlert(e);
    }
    for (const l of [...this.#listeners]) l(e);
    return e;
  }
}

// ------------------------------------------------------------------ CLI

const CLI = {
  name: "cloud",
  usage: `usage: npx tsx tools/cloud.ts (--port N [--host H] [--pki DIR] | broker options) [--key THING=HEX ...] [--state FILE]

The reference cloud consumer on its own: connects to a running broker with the cloud
service's identity, subscribes to every thing's events and prints one line per event,
checked with tweetnacl and OpenSSL (an event from a thing whose key is not given is
printed as unknown). Runs until Ctrl-C. With --port, the local stand-in
(npx tsx tools/standin.ts) and the development PKI; with the broker options, any broker.

  --port N          the broker's port
  --host H          the broker's address (default 127.0.0.1)
  --pki DIR         where the CA and the service certificate are (default .doorward/pki)
  --key THING=HEX   a thing's Ed25519 public key (64 hex digits); repeatable
  --state FILE      keep the replay marks in FILE across restarts (created if missing);
                    without it a restarted consumer would accept replays
  -h, --help        this text

${BROKER_USAGE}`,
  options: { port: { type: "string" }, host: { type: "string" }, pki: { type: "string" }, key: { type: "string", multiple: true }, state: { type: "string" }, ...BROKER_OPTIONS },
} as const;

/** The stand-in's settings from --port/--host/--pki and the development PKI. */
async function standinSettings(values: { port?: string; host?: string; pki?: string }): Promise<BrokerSettings> {
  const port = portOption("port", values.port);
  if (port === 0) throw new UserError("--port must be the broker's port, not 0");
  const dir = path.resolve(values.pki ?? path.join(path.dirname(fileURLToPath(import.meta.url)), "..", ".doorward", "pki"));
  if (!fs.existsSync(path.join(dir, "ca.cert.pem"))) throw new UserError(`no development PKI in ${dir}: start the stand-in first, or give --pki DIR`);
  const pki = await ensureDevPki(dir);
  return { host: values.host ?? "127.0.0.1", port, servername: "localhost", clientId: pki.service.name, ca: pki.ca.certPem, cert: pki.service.certPem, key: pki.service.keyPem };
}

runAsEntry(import.meta.url, CLI, async ({ values }) => {
  const own = brokerFromFlags(values);
  if (own && (values.port !== undefined || values.host !== undefined || values.pki !== undefined)) throw new UserError("give --port/--host/--pki (the stand-in) or the broker options, not both");
  const settings = own ?? (await standinSettings(values));
  const keys = (values.key ?? []).map((k) => {
    const m = /^([a-zA-Z0-9:_-]{1,128})=([0-9a-fA-F]{64})$/.exec(k);
    if (!m) throw new UserError(`--key must be THING=<64 hex digits>, got ${JSON.stringify(k)}`);
    return [m[1], fromHex(m[2])] as const;
  });
  let cloud: CloudConsumer;
  try {
    cloud = new CloudConsumer({ stateFile: values.state, onAlert: (e) => process.stdout.write(`${e.topic} ALERT ${e.alert}\n`) });
  } catch (e) {
    if (e instanceof ReplayStateError) throw new UserError(e.message);
    throw e;
  }
  for (const [thing, key] of keys) cloud.register(thing, key);
  cloud.onEvent((e) => {
    const v = e.verdict;
    const what = v.ok ? `✔ ${v.event.thing} ${v.event.type} seq=${v.event.seq} (OpenSSL ${e.openssl ? "✔" : "✘"})` : `✘ ${v.reason}: ${v.detail}${e.duplicate ? " (a redelivery)" : ""}`;
    process.stdout.write(`${e.topic} ${what}\n`);
  });
  try {
    await cloud.connect({ ...settings, clientId: `${settings.clientId}-cli-${process.pid}` });
  } catch (e) {
    if (!(e instanceof MqttFailureError)) throw e;
    throw new UserError(e.kind === "unreachable" && !own ? `${e.message}: start the stand-in (npx tsx tools/standin.ts --port ${settings.port})` : e.message);
  }
  process.stdout.write(`listening for events on ${brokerName(settings)}\n`);
  process.once("SIGINT", () => void cloud.close().then(() => process.exit(0)));
});
