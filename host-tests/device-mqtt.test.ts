/*
 * The device MqttTransport (modules/device/mqtt-session) against a model of the
 * SDK 8.2 ECMA-419 MQTT client (examples/io/tcp/mqttclient/mqttclient.js) and
 * TLS socket. The model keeps the behaviours the transport has to live with:
 * DNS through options.dns.io, the socket built from options.socket, writes
 * that throw "overflow" when a packet exceeds the socket's space, a write
 * return of (space - 8), fragmented publishes ("publishing" state), one-argument
 * onControl, onError with no cause followed by close(), and payload that must
 * be read before parsing continues.
 */
import test from "ava";
import {
  Mqtt419Transport, CONNACK, PUBACK, SUBACK, PUBLISH, SUBSCRIBE, MAX_PAYLOAD_BYTES,
  type Client419, type Client419Options, type Mqtt419Options, type ReadableOptions, type SocketOptions, type WriteOptions,
} from "../modules/device/mqtt-session";
import type { MqttHandlers } from "../modules/core/ports";
import { utf8Encode } from "../modules/core/bytes";
import { ManualClock } from "./helpers/manual-clock";

const OVERHEAD = 8;

class FakeResolver {
  static fail = false;
  constructor(readonly options: Record<string, unknown>) {}
  resolve(request: { host: string; onResolved?: (h: string, a: string) => void; onError?: (h: string) => void }): void {
    queueMicrotask(() => (FakeResolver.fail ? request.onError?.(request.host) : request.onResolved?.(request.host, "192.0.2.10")));
  }
}

class FakeTls {
  static throwOnConstruct: string | undefined;
  static last: FakeTls | undefined;
  constructor(readonly options: SocketOptions) {
    if (FakeTls.throwOnConstruct) throw new Error(FakeTls.throwOnConstruct);
    FakeTls.last = this;
  }
  /** The TLS handshake completed: the socket reports writable space for the first time. */
  handshake(space: number): void {
    this.options.onWritable?.(space);
  }
  drop(): void {
    this.options.onError?.();
  }
}

interface Packet {
  operation: number;
  id?: number;
  topic?: string;
  QoS?: number;
  byteLength?: number;
  data: number[];
  items?: { topic: string; QoS?: number }[];
}

class FakeClient implements Client419 {
  static last: FakeClient;
  state = "resolving";
  space = 0;
  remaining = 0;
  closed = false;
  packets: Packet[] = [];
  autoId = 1;
  #incoming: number[] = [];
  constructor(readonly options: Client419Options) {
    FakeClient.last = this;
    const dns = new options.dns.io(options.dns);
    dns.resolve({
      host: options.host,
      onResolved: (host, address) => {
        if (this.closed) throw new TypeError("resolver answered a closed client");
        this.state = "connecting";
        try {
          new options.socket.io({
            ...options.socket, address, host, port: options.port,
            onReadable: () => {},
            onWritable: (n: number) => this.#socketWritable(n),
            onError: () => this.fail(),
          });
        } catch {
          this.fail();
        }
      },
      onError: () => this.fail(),
    });
  }
  #socketWritable(n: number): void {
    this.space = n;
    if (this.state === "connecting") {
      this.space -= 20; // CONNECT
      this.state = "login";
      return;
    }
    if ((this.state === "connected" || this.state === "publishing") && this.space > OVERHEAD) this.options.onWritable.call(this, this.space - OVERHEAD);
  }
  write(data: Uint8Array | ArrayBuffer | null, options?: WriteOptions): number {
    if (this.closed) throw new TypeError("write on a closed client");
    const bytes = data ? [...new Uint8Array(data instanceof ArrayBuffer ? data : data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength))] : [];
    if (this.state !== "connected") {
      if (this.state !== "publishing" || options || bytes.length > this.remaining) throw new Error("invalid");
      if (bytes.length > this.space) throw new Error("socket overflow");
      this.packets[this.packets.length - 1].data.push(...bytes);
      this.space -= bytes.length;
      this.remaining -= bytes.length;
      if (this.remaining === 0) this.state = "connected";
      return this.space > OVERHEAD ? this.space - OVERHEAD : 0;
    }
    const operation = options?.operation ?? PUBLISH;
    const id = options?.id ?? ++this.autoId;
    if (operation === PUBLISH) {
      const QoS = options?.QoS ?? 0;
      const byteLength = options?.byteLength ?? bytes.length;
      const topic = utf8Encode(options!.topic!).length + 2;
      const payload = topic + byteLength + (QoS ? 2 : 0);
      const length = 1 + (payload < 128 ? 1 : payload < 16384 ? 2 : 3) + topic + bytes.length + (QoS ? 2 : 0);
      if (length > this.space) throw new Error("overflow");
      this.packets.push({ operation, id: QoS ? id : undefined, topic: options!.topic, QoS, byteLength, data: bytes });
      this.space -= length;
      if (bytes.length < byteLength) {
        this.state = "publishing";
        this.remaining = byteLength - bytes.length;
      }
    } else if (operation === SUBSCRIBE) {
      const items = options!.items!;
      const payload = items.length + 2 + items.reduce((n, i) => n + utf8Encode(i.topic).length + 2, 0);
      const length = 1 + (payload < 128 ? 1 : 2) + payload;
      if (length > this.space) throw new Error("overflow");
      this.packets.push({ operation, id, items, data: [] });
      this.space -= length;
    } else throw new Error("unknown");
    return this.space > OVERHEAD ? this.space - OVERHEAD : 0;
  }
  read(count: number): ArrayBuffer | undefined {
    const chunk = this.#incoming.splice(0, count);
    return chunk.length ? Uint8Array.from(chunk).buffer : undefined;
  }
  close(): void {
    this.closed = true;
  }
  // Test controls.
  connack(): void {
    this.state = "connected";
    this.options.onControl.call(this, { operation: CONNACK, id: 0 });
    if (this.space > OVERHEAD) this.options.onWritable.call(this, this.space - OVERHEAD);
  }
  /** Socket space freed by the network. */
  drain(space: number): void {
    this.#socketWritable(space);
  }
  puback(id: number): void {
    this.options.onControl.call(this, { operation: PUBACK, id });
  }
  suback(id: number, code: number): void {
    this.options.onControl.call(this, { operation: SUBACK, id, payload: [code] });
  }
  deliver(topic: string, payload: Uint8Array, fragment: number): void {
    for (let at = 0; at < payload.length; at += fragment) {
      const chunk = [...payload.subarray(at, at + fragment)];
      this.#incoming.push(...chunk);
      const options: ReadableOptions = { more: at + fragment < payload.length };
      if (at === 0) Object.assign(options, { topic, byteLength: payload.length, QoS: 1 });
      this.options.onReadable.call(this, chunk.length, options);
      if (this.#incoming.length) throw new Error("payload left unread: the real client would stall");
    }
  }
  fail(): void {
    this.options.onError.call(this);
    this.close();
  }
}

interface Harness {
  transport: Mqtt419Transport;
  clock: ManualClock;
  events: string[];
  messages: Array<[string, Uint8Array]>;
  handlers: MqttHandlers;
  logs: string[];
}

const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

function harness(overrides: Partial<Mqtt419Options> = {}): Harness {
  FakeResolver.fail = false;
  FakeTls.throwOnConstruct = undefined;
  const clock = new ManualClock();
  const events: string[] = [];
  const messages: Array<[string, Uint8Array]> = [];
  const logs: string[] = [];
  const transport = new Mqtt419Transport({
    host: "abc-ats.iot.eu-west-1.amazonaws.com",
    port: 8883,
    clientId: "door-1",
    credentials: { certificate: Uint8Array.of(0x30, 1).buffer, privateKey: Uint8Array.of(0x30, 2).buffer, trustAnchors: [Uint8Array.of(0x30, 0xa1).buffer, Uint8Array.of(0x30, 0xa3).buffer] },
    io: { client: FakeClient, tls: FakeTls, tcp: "TCP-class", resolver: FakeResolver },
    schedule: (fn, ms) => clock.schedule(fn, ms),
    timeValid: () => clock.wallTime() !== undefined,
    log: (level, message, fields) => logs.push(`${level} ${message} ${JSON.stringify(fields ?? {})}`),
    ...overrides,
  });
  const handlers: MqttHandlers = {
    onConnect: () => events.push("connect"),
    onMessage: (topic, payload) => messages.push([topic, payload]),
    onClose: (reason) => events.push(`close: ${reason}`),
  };
  return { transport, clock, events, messages, handlers, logs };
}

/** Connect all the way to CONNACK with `space` bytes of socket space. */
async function online(h: Harness, space = 4000): Promise<FakeClient> {
  h.transport.connect(h.handlers);
  await tick();
  FakeTls.last!.handshake(space);
  const client = FakeClient.last;
  client.connack();
  return client;
}

const settled = async (p: Promise<unknown>) => {
  let state = "pending";
  p.then(() => (state = "resolved"), () => (state = "rejected"));
  await tick();
  return state;
};

test.serial("session options: client ID, keep-alive, clean session, and the TLS bag AWS needs", async (t) => {
  const h = harness({ alpn: "x-amzn-mqtt-ca", keepAliveSeconds: 1200 });
  await online(h);
  const o = FakeClient.last.options;
  t.is(o.id, "door-1");
  t.is(o.keepAlive, 1_200_000);
  t.true(o.clean);
  t.is(o.port, 8883);
  const s = FakeTls.last!.options;
  t.deepEqual(s.TCP, { io: "TCP-class" });
  const secure = s.secure as Record<string, unknown>;
  t.is(secure.serverName, "abc-ats.iot.eu-west-1.amazonaws.com");
  t.is(secure.protocolVersion, 0x303);
  t.is(secure.applicationLayerProtocolNegotiation, "x-amzn-mqtt-ca");
  t.deepEqual(new Uint8Array(secure.certificate as ArrayBuffer), Uint8Array.of(0x30, 0xa1));
  t.deepEqual((secure.clientCertificates as ArrayBuffer[]).map((c) => new Uint8Array(c)), [Uint8Array.of(0x30, 1)]);
  t.deepEqual(new Uint8Array(secure.clientKey as ArrayBuffer), Uint8Array.of(0x30, 2));
  t.deepEqual(h.events, ["connect"]);
  t.throws(() => harness({ keepAliveSeconds: 1201 }), { instanceOf: RangeError });
  const plain = harness();
  await online(plain);
  t.false("applicationLayerProtocolNegotiation" in (FakeTls.last!.options.secure as object), "no ALPN on 8883");
});

test.serial("QoS 1 publish resolves on its own PUBACK only; QoS 0 once written", async (t) => {
  const h = harness();
  const client = await online(h);
  const a = h.transport.publish("doorward/door-1/events", utf8Encode("ring-a"), 1);
  const b = h.transport.publish("doorward/door-1/events", utf8Encode("ring-b"), 1);
  const [pa, pb] = client.packets;
  t.is(pa.QoS, 1);
  t.not(pa.id, pb.id);
  t.deepEqual(Uint8Array.from(pa.data), utf8Encode("ring-a"));
  client.puback(pb.id!);
  t.is(await settled(a), "pending");
  t.is(await settled(b), "resolved");
  client.puback(pa.id!);
  t.is(await settled(a), "resolved");
  t.is(await settled(h.transport.publish("t/q0", utf8Encode("x"), 0)), "resolved");
  t.is(client.packets[2].id, undefined);
});

test.serial("publishes before CONNACK, QoS 2 and oversized payloads are refused", async (t) => {
  const h = harness();
  await t.throwsAsync(h.transport.publish("t", utf8Encode("x"), 1), { message: "not connected" });
  h.transport.connect(h.handlers);
  await t.throwsAsync(h.transport.subscribe("t"), { message: "not connected" });
  await tick();
  FakeTls.last!.handshake(4000);
  FakeClient.last.connack();
  await t.throwsAsync(h.transport.publish("t", utf8Encode("x"), 2 as 0 | 1), { instanceOf: RangeError });
  await t.throwsAsync(h.transport.publish("t", new Uint8Array(MAX_PAYLOAD_BYTES + 1), 1), { instanceOf: RangeError });
});

test.serial("a payload larger than the socket's space goes out in fragments that each fit", async (t) => {
  const h = harness();
  const client = await online(h, 300);
  const payload = new Uint8Array(5000).map((_, i) => i & 255);
  const done = h.transport.publish("doorward/door-1/snapshots", payload, 1);
  for (let i = 0; i < 100 && client.packets[0]?.data.length !== payload.length; i++) client.drain(300);
  const packet = client.packets[0];
  t.is(packet.byteLength, 5000);
  t.deepEqual(Uint8Array.from(packet.data), payload);
  t.is(client.state, "connected");
  client.puback(packet.id!);
  t.is(await settled(done), "resolved");
});

test.serial("an overflow from a stale space count waits for space instead of failing the session", async (t) => {
  const h = harness();
  const client = await online(h, 100);
  client.space = 10; // spent by the client itself (a PUBACK, a PINGREQ) without a writable report
  const q = h.transport.publish("doorward/door-1/events", new Uint8Array(3), 0);
  t.is(client.packets.length, 0);
  t.is(await settled(q), "pending");
  client.drain(200);
  t.is(client.packets.length, 1);
  t.is(await settled(q), "resolved");
  t.deepEqual(h.events, ["connect"]);
});

test.serial("no more than maxInFlight QoS 1 messages await PUBACK", async (t) => {
  const h = harness({ maxInFlight: 2 });
  const client = await online(h);
  const ps = [1, 2, 3].map((i) => h.transport.publish("t", Uint8Array.of(i), 1));
  t.is(client.packets.length, 2);
  client.puback(client.packets[0].id!);
  t.is(client.packets.length, 3);
  client.puback(client.packets[1].id!);
  client.puback(client.packets[2].id!);
  t.deepEqual(await Promise.all(ps.map(settled)), ["resolved", "resolved", "resolved"]);
});

test.serial("packet IDs stay within 1..65535 and skip an ID still awaiting its PUBACK", async (t) => {
  const h = harness();
  const client = await online(h, 1 << 30);
  const held = h.transport.publish("t", Uint8Array.of(0), 1);
  const heldId = client.packets[0].id!;
  const seen = new Set<number>();
  for (let i = 0; i < 70_000; i++) {
    void h.transport.publish("t", Uint8Array.of(1), 1);
    const id = client.packets[client.packets.length - 1].id!;
    t.true(id >= 1 && id <= 65535, `id ${id}`);
    if (id === heldId) t.fail(`reused ${id} while it awaited PUBACK`);
    seen.add(id);
    client.puback(id);
  }
  t.is(seen.size, 65534, "every other ID was used");
  client.puback(heldId);
  t.is(await settled(held), "resolved");
});

test.serial("subscribe resolves on a granting SUBACK and rejects on 0x80", async (t) => {
  const h = harness();
  const client = await online(h);
  const ok = h.transport.subscribe("doorward/door-1/commands");
  const refused = h.transport.subscribe("doorward/other/commands");
  const [s1, s2] = client.packets;
  t.deepEqual(s1.items, [{ topic: "doorward/door-1/commands", QoS: 1 }]);
  client.suback(s1.id!, 1);
  client.suback(s2.id!, 0x80);
  t.is(await settled(ok), "resolved");
  await t.throwsAsync(refused, { message: /refused/ });
});

test.serial("a lost connection rejects everything pending and reports why", async (t) => {
  const h = harness();
  const client = await online(h, 60);
  const inFlight = h.transport.publish("t", Uint8Array.of(1), 1);
  const queued = h.transport.publish("t", new Uint8Array(500), 1);
  const sub = h.transport.subscribe("t/s");
  client.fail();
  await t.throwsAsync(inFlight, { message: /connection lost/ });
  await t.throwsAsync(queued, { message: /connection lost/ });
  await t.throwsAsync(sub, { message: /connection lost/ });
  t.deepEqual(h.events, ["connect", "close: connection lost"]);
  t.false(h.transport.online);
});

test.serial("close reasons name the stage: DNS, TLS setup, broker refusal, timeout, missing time", async (t) => {
  let h = harness();
  FakeResolver.fail = true;
  h.transport.connect(h.handlers);
  await tick();
  t.deepEqual(h.events, ["close: dns: cannot resolve abc-ats.iot.eu-west-1.amazonaws.com"]);

  h = harness();
  FakeTls.throwOnConstruct = "date validation failed";
  h.transport.connect(h.handlers);
  await tick();
  t.deepEqual(h.events, ["close: tls: date validation failed"]);

  h = harness();
  h.transport.connect(h.handlers);
  await tick();
  FakeTls.last!.handshake(4000);
  FakeClient.last.fail(); // the broker closed the socket instead of CONNACK (AWS refusing a policy or client ID)
  t.deepEqual(h.events, ["close: broker refused the session or closed before CONNACK"]);

  h = harness({ connectTimeoutMs: 10_000 });
  h.transport.connect(h.handlers);
  await tick();
  FakeTls.last!.handshake(4000);
  h.clock.advance(9_999);
  t.deepEqual(h.events, []);
  h.clock.advance(1);
  t.deepEqual(h.events, ["close: timeout while waiting for CONNACK"]);
  h.clock.advance(1);
  t.true(FakeClient.last.closed);

  h = harness();
  h.clock.wall = undefined;
  h.transport.connect(h.handlers);
  t.deepEqual(h.events, [], "reported asynchronously, like every other outcome");
  h.clock.advance(0);
  t.is(h.events.length, 1);
  t.regex(h.events[0], /no trusted time/);
});

test.serial("a session that fails before TLS is up moves to the next trust anchor; success sticks", async (t) => {
  const h = harness({ connectTimeoutMs: 1000 });
  const anchorOf = () => new Uint8Array((FakeTls.last!.options.secure as { certificate: ArrayBuffer }).certificate)[1];
  h.transport.connect(h.handlers);
  await tick();
  t.is(anchorOf(), 0xa1);
  h.clock.advance(1000); // handshake never completed: certificate refused
  h.transport.connect(h.handlers);
  await tick();
  t.is(anchorOf(), 0xa3);
  FakeTls.last!.handshake(4000);
  FakeClient.last.connack();
  FakeClient.last.fail();
  h.transport.connect(h.handlers);
  await tick();
  t.is(anchorOf(), 0xa3, "a session that got through TLS keeps its anchor");
});

test.serial("incoming messages are reassembled from fragments; oversized ones are drained and dropped", async (t) => {
  const h = harness({ maxIncomingBytes: 64 });
  const client = await online(h);
  const body = utf8Encode("x".repeat(50));
  client.deliver("doorward/door-1/commands", body, 7);
  t.is(h.messages.length, 1);
  t.is(h.messages[0][0], "doorward/door-1/commands");
  t.deepEqual(h.messages[0][1], body);
  client.deliver("doorward/door-1/commands", new Uint8Array(100), 30);
  t.is(h.messages.length, 1);
  t.is(h.logs.length, 1);
  t.regex(h.logs[0], /oversized/);
  client.deliver("doorward/door-1/commands", Uint8Array.of(7), 1);
  t.deepEqual(h.messages[1][1], Uint8Array.of(7));
});

test.serial("close() is silent, rejects pending work, and late callbacks from the old client are ignored", async (t) => {
  const h = harness();
  const client = await online(h);
  const p = h.transport.publish("t", Uint8Array.of(1), 1);
  const id = client.packets[0].id!;
  h.transport.close();
  await t.throwsAsync(p, { message: /closed/ });
  t.false(client.closed, "closed on the next turn, never inside one of its own callbacks");
  h.clock.advance(0);
  t.true(client.closed);
  client.puback(id);
  client.connack();
  t.deepEqual(h.events, ["connect"], "no onClose for a close the caller asked for, nothing from the old client");

  // A new connect replaces a session that is still resolving; its late DNS answer is dropped.
  const h2 = harness();
  h2.transport.connect(h2.handlers);
  const first = FakeClient.last;
  h2.transport.connect(h2.handlers);
  const second = FakeClient.last;
  await tick();
  t.is(first.state, "resolving");
  t.is(second.state, "connecting");
  h2.clock.advance(0);
  t.true(first.closed);
  t.false(second.closed);
  t.deepEqual(h2.events, []);
});
