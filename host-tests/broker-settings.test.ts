/*
 * The cloud side's one set of broker settings (tools/lib/broker.ts): flags or
 * one config file, checked on the way in; joining the broker is bounded, and
 * each way a broker says no is named.
 */
import test from "ava";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { ensureDevPki, issueThingCredentials } from "../tools/pki";
import { HostMqttTransport } from "../modules/host/mqtt-transport";
import { startStandin } from "../tools/standin";
import { brokerFromFlags, brokerShadows, isAwsIotEndpoint, joinBroker, parseBrokerEndpoint, type BrokerSettings } from "../tools/lib/broker";
import { describeMqttFailure, MqttFailureError } from "../modules/host/mqtt-failure";

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dw-broker-"));
const pkiReady = ensureDevPki(path.join(dir, "pki"));

test("no broker flag: the caller's default (the stand-in)", (t) => {
  t.is(brokerFromFlags({}), undefined);
});

test("endpoints: host, host:port, mqtts:// URL; anything else is refused by name", (t) => {
  t.deepEqual(parseBrokerEndpoint("mqtt.example.net"), { host: "mqtt.example.net", port: 8883 });
  t.deepEqual(parseBrokerEndpoint("mqtts://10.0.0.2:8884"), { host: "10.0.0.2", port: 8884 });
  for (const bad of ["", "mqtt.example.net:0", "mqtt.example.net:70000", "http://x", "a b"]) {
    t.throws(() => parseBrokerEndpoint(bad), { message: /broker endpoint must be HOST or HOST:PORT/ }, bad);
  }
});

test("named shadows: AWS IoT endpoints keep their own, any other broker gets the simulator's; --broker-shadows overrides, anything else is refused", (t) => {
  for (const aws of ["a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com", "A1B2-ATS.IOT.US-EAST-1.AMAZONAWS.COM", "a1b2-ats.iot.cn-north-1.amazonaws.com.cn"]) {
    t.true(isAwsIotEndpoint(aws), aws);
    t.is(brokerShadows(aws), "aws", aws);
    t.is(brokerShadows(aws, "local"), "local", `${aws} with --broker-shadows local`);
  }
  for (const plain of ["127.0.0.1", "localhost", "mqtt.example.net", "iot.eu-west-1.amazonaws.com", "a1b2.iot.eu-west-1.amazonaws.com.evil.net", "a1b2.s3.eu-west-1.amazonaws.com", "::1"]) {
    t.false(isAwsIotEndpoint(plain), plain);
    t.is(brokerShadows(plain), "local", plain);
    t.is(brokerShadows(plain, "aws"), "aws", `${plain} with --broker-shadows aws`);
  }
  for (const bad of ["", "AWS", "both", "none"]) t.throws(() => brokerShadows("mqtt.example.net", bad), { message: /--broker-shadows must be local or aws/ }, bad);
});

test("a config file gives the same settings as the flags; its paths are relative to it, and flags win", async (t) => {
  const pki = await pkiReady;
  const conf = path.join(pki.dir, "broker.json");
  fs.writeFileSync(conf, JSON.stringify({ endpoint: "broker.example.net:8884", ca: "ca.cert.pem", cert: "service.cert.pem", key: "service.key.pem" }));
  const fromFile = brokerFromFlags({ "broker-config": conf })!;
  const fromFlags = brokerFromFlags({ broker: "broker.example.net:8884", "broker-ca": pki.ca.certPath, "broker-cert": pki.service.certPath, "broker-key": pki.service.keyPath })!;
  t.deepEqual(fromFile, fromFlags);
  t.is(fromFile.clientId, "doorward-cloud", "client ID from the certificate's CN");
  t.is(fromFile.ca, pki.ca.certPem);
  const overridden = brokerFromFlags({ "broker-config": conf, broker: "other.example.net", "broker-client-id": "doorward-cloud-7" })!;
  t.is(overridden.host, "other.example.net");
  t.is(overridden.port, 8883);
  t.is(overridden.clientId, "doorward-cloud-7");
});

test("bad settings are refused with the file and the member named", async (t) => {
  const pki = await pkiReady;
  const write = (name: string, text: string) => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, text);
    return f;
  };
  t.throws(() => brokerFromFlags({ broker: "b.example.net" }), { message: /a broker needs --broker-ca/ });
  t.throws(() => brokerFromFlags({ "broker-config": path.join(dir, "missing.json") }), { message: /cannot read the broker config .*missing\.json: ENOENT/ });
  t.throws(() => brokerFromFlags({ "broker-config": write("bad.json", "{") }), { message: /bad\.json is not JSON/ });
  t.throws(() => brokerFromFlags({ "broker-config": write("extra.json", '{"endpoint":"b","host":"x"}') }), { message: /unknown member "host"/ });
  t.throws(() => brokerFromFlags({ "broker-config": write("nocert.json", JSON.stringify({ endpoint: "b.example.net", ca: pki.ca.certPath, key: pki.service.keyPath })) }), { message: /needs --broker-cert \(or "cert" in .*nocert\.json\)/ });
  t.throws(() => brokerFromFlags({ broker: "b.example.net", "broker-ca": pki.service.keyPath, "broker-cert": pki.service.certPath, "broker-key": pki.service.keyPath }), { message: /the broker CA .* is not PEM/ });
  t.throws(() => brokerFromFlags({ broker: "b.example.net", "broker-ca": pki.ca.certPath, "broker-cert": pki.service.certPath, "broker-key": pki.service.certPath }), { message: /the broker key .* is not PEM/ });
});

test("the refusals are told apart: unreachable, CONNACK, TLS alert, untrusted broker", (t) => {
  const b = "mqtts://b:1";
  t.is(describeMqttFailure(b, Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" })).kind, "unreachable");
  t.is(describeMqttFailure(b, Object.assign(new Error("Connection refused: Not authorized"), { code: 5 })).kind, "connect-refused");
  t.is(describeMqttFailure(b, Object.assign(new Error("Connection refused: Identifier rejected"), { code: 2 })).message, "broker mqtts://b:1 refused the connection: CONNACK 2 (Connection refused: Identifier rejected): client identifier rejected");
  t.is(describeMqttFailure(b, Object.assign(new Error("...:tlsv13 alert certificate required:..."), { code: "ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED" })).message, "broker mqtts://b:1 refused the client certificate (TLS alert: certificate required)");
  t.is(describeMqttFailure(b, Object.assign(new Error("unable to verify the first certificate"), { code: "UNABLE_TO_VERIFY_LEAF_SIGNATURE" })).kind, "broker-certificate-untrusted");
  t.is(describeMqttFailure(b, new Error("something else")).kind, "other");
});

test("joining the stand-in: a filter its policy refuses is named, by disconnect or by SUBACK 0x80", async (t) => {
  const pki = await pkiReady;
  const settings = (port: number, suffix: string): BrokerSettings => ({ host: "127.0.0.1", port, servername: "localhost", ca: pki.ca.certPem, cert: pki.service.certPem, key: pki.service.keyPem, clientId: `${pki.service.name}-${suffix}` });
  const closing = await startStandin({ pki, connectIntervalMs: 0 });
  const answering = await startStandin({ pki, connectIntervalMs: 0, subscribeDenial: "suback-failure" });
  try {
    const joined = await joinBroker(settings(closing.port, "ok"), { subscribe: ["doorward/+/events"] });
    await joined.close();
    const byClose = await t.throwsAsync(joinBroker(settings(closing.port, "a"), { subscribe: ["doorward/+/events", "doorward/+/commands"] }));
    t.is((byClose as MqttFailureError).kind, "policy-refused");
    t.is(byClose!.message, `broker mqtts://127.0.0.1:${closing.port} closed the connection on SUBSCRIBE doorward/+/commands: its policy refuses it to doorward-cloud-a`);
    const bySuback = await t.throwsAsync(joinBroker(settings(answering.port, "b"), { subscribe: ["doorward/+/commands"] }));
    t.is((bySuback as MqttFailureError).kind, "policy-refused");
    t.regex(bySuback!.message, /refused SUBSCRIBE doorward\/\+\/commands \(SUBACK 0x80\)/);
    const wrongId = await t.throwsAsync(joinBroker({ ...settings(closing.port, "c"), clientId: "doorward-sim-1" }));
    t.is((wrongId as MqttFailureError).kind, "connect-refused");
  } finally {
    await closing.close();
    await answering.close();
  }
});

test("a broker that never answers: the join gives up at its deadline and says what it waited for", async (t) => {
  const pki = await pkiReady;
  const sockets = new Set<net.Socket>();
  const silent = net.createServer((s) => sockets.add(s)).listen(0, "127.0.0.1");
  await new Promise((r) => silent.once("listening", r));
  const port = (silent.address() as net.AddressInfo).port;
  try {
    const t0 = Date.now();
    const e = await t.throwsAsync(joinBroker({ host: "127.0.0.1", port, ca: pki.ca.certPem, cert: pki.service.certPem, key: pki.service.keyPem, clientId: "doorward-cloud-t" }, { timeoutMs: 800 }));
    t.is((e as MqttFailureError).kind, "timeout");
    t.is(e!.message, `broker mqtts://127.0.0.1:${port}: no answer to CONNECT within 800 ms`);
    t.true(Date.now() - t0 < 5000);
  } finally {
    for (const s of sockets) s.destroy();
    silent.close();
  }
});

test("the device's transport ends its session with DISCONNECT: the broker reports a client-initiated close, not a lost connection", async (t) => {
  const pki = await pkiReady;
  const standin = await startStandin({ pki, connectIntervalMs: 0 });
  const thing = await issueThingCredentials(pki.dir, "clean-1");
  // What the stand-in publishes as AWS's lifecycle events (apps subscribe to them; the service identity may not).
  const events: Array<{ eventType: string; disconnectReason?: string }> = [];
  const publish = standin.publish.bind(standin);
  standin.publish = ((topic: string, payload: string | Uint8Array, o?: { qos?: 0 | 1 }) => {
    if (topic.startsWith("$aws/events/presence/")) events.push(JSON.parse(String(payload)));
    return publish(topic, payload as never, o as never);
  }) as typeof standin.publish;
  const session = async (end: (transport: HostMqttTransport) => void) => {
    const transport = new HostMqttTransport({ host: "127.0.0.1", port: standin.port, servername: "localhost", clientId: "clean-1", ca: pki.ca.certPem, cert: thing.certPem, key: thing.keyPem });
    await new Promise<void>((resolve, reject) => transport.connect({ onConnect: () => resolve(), onClose: (r) => reject(new Error(r)), onMessage: () => {} }));
    const before = events.length;
    end(transport);
    const deadline = Date.now() + 5000;
    while (!events.slice(before).some((e) => e.eventType === "disconnected") && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    return events.slice(before).find((e) => e.eventType === "disconnected");
  };
  try {
    t.like(await session((tr) => tr.close()), { disconnectReason: "CLIENT_INITIATED_DISCONNECT" });
    t.like(await session(() => standin.disconnect("clean-1")), { disconnectReason: "CONNECTION_LOST" }, "the check tells the two apart");
  } finally {
    await standin.close();
  }
});
