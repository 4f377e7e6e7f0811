/*
 * The device MqttTransport: one ECMA-419 MQTT session over mutual TLS.
 *
 * Built on the SDK's embedded:network/mqtt/client (examples/io/tcp/mqttclient)
 * over embedded:io/socket/tcp/tls. That client writes straight into the socket
 * and throws when a packet does not fit the space the socket reports, keeps no
 * retransmit store, allocates packet IDs past 65535, and reports errors with no
 * cause. This module supplies what the port promises on top of it:
 *  - publishes and subscribes queue until the session is up and are written
 *    only within the reported writable space, large payloads in fragments;
 *  - packet IDs stay in 1..65535 and skip IDs still awaiting an ack; at most
 *    maxInFlight QoS 1 messages are unacknowledged (AWS allows 100);
 *  - QoS 1 publish resolves on its PUBACK, subscribe on a SUBACK that grants it,
 *    and both reject when the session ends first;
 *  - onClose gets a reason naming the stage that failed (DNS, TCP/TLS, the
 *    broker refusing the session, or a lost connection), found by watching the
 *    resolver and the TLS socket the client creates.
 * It never reconnects: the core's Link owns retry timing.
 *
 * Platform-free: the SDK classes are passed in (see ./mqtt), so the host tests
 * run it against a model of the SDK client.
 */
import type { Log, MqttHandlers, MqttTransport } from "../core/ports";
import { utf8Encode } from "../core/bytes";

/** MQTT 3.1.1 control packet types, as the SDK client numbers its operations. */
export const CONNACK = 2;
export const PUBLISH = 3;
export const PUBACK = 4;
export const SUBSCRIBE = 8;
export const SUBACK = 9;

/** AWS IoT Core's payload limit; larger publishes are refused here rather than by a disconnect. */
export const MAX_PAYLOAD_BYTES = 128 * 1024;
const SUBACK_FAILURE = 0x80;

/** The client's onControl message (the published typings wrongly declare two arguments). */
export interface ControlMessage {
  operation: number;
  id?: number;
  /** SUBACK return codes. */
  payload?: ArrayLike<number>;
}

export interface ReadableOptions {
  more?: boolean;
  /** Present on the first fragment of each message. */
  topic?: string;
  byteLength?: number;
  QoS?: number;
}

export interface WriteOptions {
  operation?: number;
  id?: number;
  topic?: string;
  QoS?: number;
  retain?: boolean;
  byteLength?: number;
  items?: { topic: string; QoS?: number }[];
}

/** The SDK 8.2 ECMA-419 MQTT client as it behaves (examples/io/tcp/mqttclient/mqttclient.js). */
export interface Client419 {
  write(data: Uint8Array | ArrayBuffer | null, options?: WriteOptions): number;
  read(count: number): ArrayBuffer | undefined;
  close(): void;
}

export interface Client419Options {
  host: string;
  port: number;
  id: string;
  clean: boolean;
  /** Milliseconds. */
  keepAlive: number;
  dns: { io: ResolverConstructor };
  socket: Record<string, unknown> & { io: SocketConstructor };
  onControl(this: Client419, message: ControlMessage): void;
  onReadable(this: Client419, count: number, options: ReadableOptions): void;
  onWritable(this: Client419, count: number): void;
  onError(this: Client419): void;
}

export type Client419Constructor = new (options: Client419Options) => Client419;

export interface ResolverLike {
  resolve(options: { host: string; onResolved?: (host: string, address: string) => void; onError?: (host: string) => void }): void;
  close?(): void;
}
export type ResolverConstructor = new (options: Record<string, unknown>) => ResolverLike;

/** Options the client hands its socket: ours (the bag) plus address, port and its callbacks. */
export interface SocketOptions extends Record<string, unknown> {
  onWritable?: (count: number) => void;
  onReadable?: (count: number) => void;
  onError?: () => void;
}
export type SocketConstructor = new (options: SocketOptions) => object;

/** A DER blob: an ArrayBuffer, or a Moddable Resource/HostBuffer. */
export type Der = ArrayBuffer | { readonly byteLength: number };

export interface Mqtt419Options {
  host: string;
  port: number;
  /** MQTT client ID; for AWS IoT, the thing name. */
  clientId: string;
  /** SNI and certificate name. Default: host. */
  serverName?: string;
  /** ALPN protocol, e.g. "x-amzn-mqtt-ca" for AWS IoT on port 443. */
  alpn?: string;
  /** 1-1200 (AWS IoT's limit). Default 300. */
  keepAliveSeconds?: number;
  /** Give up on a session that is not up after this long. Default 45 s (above the client's own 30 s TCP/TLS limit). */
  connectTimeoutMs?: number;
  /** Unacknowledged QoS 1 publishes allowed at once. Default 20. */
  maxInFlight?: number;
  /** Incoming messages larger than this are read and dropped. Default 16 KB. */
  maxIncomingBytes?: number;
  credentials: {
    certificate: Der;
    privateKey: Der;
    /** Trusted roots, tried in turn: a session that fails before TLS is up moves on to the next. */
    trustAnchors: readonly Der[];
  };
  io: {
    client: Client419Constructor;
    tls: SocketConstructor;
    tcp: unknown;
    resolver: ResolverConstructor;
  };
  schedule: (callback: () => void, delayMs: number) => () => void;
  /** TLS checks certificate dates against Date.now(): without trusted time every handshake fails. */
  timeValid?: () => boolean;
  log?: Log;
}

type Stage = "resolving" | "connecting" | "tls" | "online";

interface Pending {
  kind: "publish" | "subscribe";
  topic: string;
  payload: Uint8Array;
  qos: 0 | 1;
  id: number;
  /** Bytes of the payload already written. */
  sent: number;
  started: boolean;
  resolve: () => void;
  reject: (error: Error) => void;
}

interface Incoming {
  topic: string;
  /** Undefined while draining a message too large to keep. */
  buffer: Uint8Array | undefined;
  byteLength: number;
  received: number;
}

interface Session {
  client: Client419 | undefined;
  handlers: MqttHandlers;
  stage: Stage;
  writable: number;
  queue: Pending[];
  awaiting: Map<number, Pending>;
  incoming: Incoming | undefined;
  tlsError: string | undefined;
  cancelTimeout: () => void;
}

function remainingLengthSize(n: number): number {
  return n < 128 ? 1 : n < 16384 ? 2 : n < 2097152 ? 3 : 4;
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

export class Mqtt419Transport implements MqttTransport {
  readonly keepAliveSeconds: number;
  readonly connectTimeoutMs: number;
  readonly maxInFlight: number;
  readonly maxIncomingBytes: number;
  /** Index of the trust anchor the next session uses. */
  anchor = 0;
  #options: Mqtt419Options;
  #session: Session | undefined;
  #nextId = 1;

  constructor(options: Mqtt419Options) {
    const keepAlive = options.keepAliveSeconds ?? 300;
    if (!(Number.isInteger(keepAlive) && keepAlive >= 1 && keepAlive <= 1200)) throw new RangeError("mqtt: keep-alive must be 1-1200 s (AWS IoT limit)");
    if (options.credentials.trustAnchors.length === 0) throw new RangeError("mqtt: at least one trust anchor is required");
    if (!options.clientId) throw new RangeError("mqtt: client ID required");
    this.#options = options;
    this.keepAliveSeconds = keepAlive;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 45_000;
    this.maxInFlight = Math.max(1, Math.min(options.maxInFlight ?? 20, 100));
    this.maxIncomingBytes = options.maxIncomingBytes ?? 16 * 1024;
  }

  /** True between CONNACK and the end of the session. */
  get online(): boolean {
    return this.#session?.stage === "online";
  }

  connect(handlers: MqttHandlers): void {
    if (this.#session) this.#end(this.#session, "replaced by a new connect", false);
    const o = this.#options;
    const session: Session = {
      client: undefined,
      handlers,
      stage: "resolving",
      writable: 0,
      queue: [],
      awaiting: new Map(),
      incoming: undefined,
      tlsError: undefined,
      cancelTimeout: () => {},
    };
    this.#session = session;

    if (o.timeValid && !o.timeValid()) {
      this.#endLater(session, "no trusted time: TLS certificate checks need the clock set (SNTP)");
      return;
    }
    session.cancelTimeout = o.schedule(() => {
      if (this.#session === session) this.#fail(session, `timeout while ${session.stage === "tls" ? "waiting for CONNACK" : session.stage}`);
    }, this.connectTimeoutMs);

    const transport = this;
    const anchors = o.credentials.trustAnchors;
    try {
      session.client = new o.io.client({
        host: o.host,
        port: o.port,
        id: o.clientId,
        clean: true,
        keepAlive: this.keepAliveSeconds * 1000,
        dns: { io: this.#watchResolver(session, o.io.resolver) },
        socket: {
          io: this.#watchSocket(session, o.io.tls),
          TCP: { io: o.io.tcp },
          secure: {
            certificate: anchors[this.anchor % anchors.length],
            clientCertificates: [o.credentials.certificate],
            clientKey: o.credentials.privateKey,
            serverName: o.serverName ?? o.host,
            protocolVersion: 0x303,
            ...(o.alpn ? { applicationLayerProtocolNegotiation: o.alpn } : {}),
          },
        },
        onControl(msg) {
          transport.#onControl(session, msg);
        },
        onReadable(count, options) {
          transport.#onReadable(session, this, count, options);
        },
        onWritable(count) {
          if (transport.#session !== session) return;
          session.writable = count;
          transport.#pump(session);
        },
        onError() {
          if (transport.#session === session) transport.#fail(session, transport.#errorReason(session));
        },
      });
    } catch (e) {
      this.#endLater(session, `mqtt client: ${message(e)}`);
    }
  }

  publish(topic: string, payload: Uint8Array, qos: 0 | 1): Promise<void> {
    const session = this.#session;
    if (!session || session.stage !== "online") return Promise.reject(new Error("not connected"));
    if (qos !== 0 && qos !== 1) return Promise.reject(new RangeError("mqtt: QoS must be 0 or 1 (AWS IoT has no QoS 2)"));
    if (payload.length > MAX_PAYLOAD_BYTES) return Promise.reject(new RangeError("mqtt: payload larger than 128 KB"));
    return new Promise((resolve, reject) => {
      session.queue.push({ kind: "publish", topic, payload, qos, id: 0, sent: 0, started: false, resolve, reject });
      this.#pump(session);
    });
  }

  subscribe(topicFilter: string): Promise<void> {
    const session = this.#session;
    if (!session || session.stage !== "online") return Promise.reject(new Error("not connected"));
    return new Promise((resolve, reject) => {
      session.queue.push({ kind: "subscribe", topic: topicFilter, payload: new Uint8Array(0), qos: 1, id: 0, sent: 0, started: false, resolve, reject });
      this.#pump(session);
    });
  }

  close(): void {
    if (this.#session) this.#end(this.#session, "closed", false);
  }

  /** Wrap the resolver class so the session learns whether DNS succeeded. */
  #watchResolver(session: Session, Resolver: ResolverConstructor): ResolverConstructor {
    const transport = this;
    return class {
      #inner: ResolverLike;
      constructor(options: Record<string, unknown>) {
        this.#inner = new Resolver(options);
      }
      resolve(request: Parameters<ResolverLike["resolve"]>[0]): void {
        this.#inner.resolve({
          host: request.host,
          // A session that has ended drops late answers: the closed client cannot take them.
          onResolved(host, address) {
            if (transport.#session !== session) return;
            if (session.stage === "resolving") session.stage = "connecting";
            request.onResolved?.(host, address);
          },
          onError(host) {
            if (transport.#session === session) transport.#fail(session, `dns: cannot resolve ${host}`);
          },
        });
      }
      close(): void {
        this.#inner.close?.();
      }
    };
  }

  /** Subclass the TLS socket so the session learns when the handshake completed, or why it could not start. */
  #watchSocket(session: Session, Socket: SocketConstructor): SocketConstructor {
    const transport = this;
    return class extends Socket {
      constructor(options: SocketOptions) {
        const onWritable = options.onWritable;
        try {
          super({
            ...options,
            // The TLS socket reports writable space only once its handshake is done.
            onWritable(count: number) {
              if (transport.#session === session && session.stage === "connecting") session.stage = "tls";
              onWritable?.(count);
            },
          });
        } catch (e) {
          // e.g. "date validation failed" when a trust anchor is not valid at Date.now().
          if (transport.#session === session) session.tlsError = message(e);
          throw e;
        }
      }
    };
  }

  #errorReason(session: Session): string {
    switch (session.stage) {
      case "resolving":
        return "dns: lookup failed";
      case "connecting":
        return session.tlsError ? `tls: ${session.tlsError}` : "tcp or tls handshake failed";
      case "tls":
        return "broker refused the session or closed before CONNACK";
      case "online":
        return "connection lost";
    }
  }

  #onControl(session: Session, msg: ControlMessage): void {
    if (this.#session !== session) return;
    switch (msg.operation) {
      case CONNACK:
        if (session.stage === "online") return;
        session.stage = "online";
        session.cancelTimeout();
        session.handlers.onConnect();
        return;
      case PUBACK: {
        const entry = msg.id === undefined ? undefined : session.awaiting.get(msg.id);
        if (!entry || entry.kind !== "publish") return;
        session.awaiting.delete(entry.id);
        entry.resolve();
        this.#pump(session);
        return;
      }
      case SUBACK: {
        const entry = msg.id === undefined ? undefined : session.awaiting.get(msg.id);
        if (!entry || entry.kind !== "subscribe") return;
        session.awaiting.delete(entry.id);
        const code = msg.payload?.[0];
        if (code === undefined || code === SUBACK_FAILURE) entry.reject(new Error(`subscription to ${entry.topic} refused`));
        else entry.resolve();
        this.#pump(session);
        return;
      }
    }
  }

  #onReadable(session: Session, client: Client419, count: number, options: ReadableOptions): void {
    // Always drain: the client parses nothing further until the payload is read.
    const chunk = client.read(count);
    if (this.#session !== session || !chunk) return;
    if (options.topic !== undefined) {
      const byteLength = options.byteLength ?? count;
      session.incoming = {
        topic: options.topic,
        buffer: byteLength <= this.maxIncomingBytes ? new Uint8Array(byteLength) : undefined,
        byteLength,
        received: 0,
      };
    }
    const incoming = session.incoming;
    if (!incoming) return;
    if (incoming.buffer) {
      if (incoming.received + chunk.byteLength > incoming.byteLength) {
        this.#fail(session, "mqtt: message longer than announced");
        return;
      }
      incoming.buffer.set(new Uint8Array(chunk), incoming.received);
    }
    incoming.received += chunk.byteLength;
    if (options.more) return;
    session.incoming = undefined;
    if (!incoming.buffer) {
      this.#options.log?.("warn", "mqtt: oversized message dropped", { topic: incoming.topic, bytes: incoming.byteLength });
      return;
    }
    session.handlers.onMessage(incoming.topic, incoming.received === incoming.byteLength ? incoming.buffer : incoming.buffer.slice(0, incoming.received));
  }

  /** Write queued packets while they fit; called on every writable report, ack and new request. */
  #pump(session: Session): void {
    while (this.#session === session && session.stage === "online" && session.client && session.queue.length) {
      const entry = session.queue[0];
      const client = session.client;
      try {
        if (entry.started) {
          // The rest of a fragmented publish: raw payload bytes.
          const n = Math.min(session.writable, entry.payload.length - entry.sent);
          if (n <= 0) return;
          session.writable = client.write(entry.payload.slice(entry.sent, entry.sent + n));
          entry.sent += n;
        } else {
          if (entry.qos === 1 && session.awaiting.size >= this.maxInFlight) return;
          if (!this.#start(session, client, entry)) return;
        }
      } catch (e) {
        if (!entry.started && message(e) === "overflow") {
          // Our count was stale (the client wrote a PUBACK or PINGREQ since); nothing was written.
          session.writable = 0;
          return;
        }
        this.#fail(session, `mqtt client: ${message(e)}`);
        return;
      }
      if (entry.kind === "subscribe" || entry.sent === entry.payload.length) {
        session.queue.shift();
        if (entry.qos === 0) entry.resolve();
      }
    }
  }

  /** Write the first packet of an entry if it fits. Returns false to wait for more writable space. */
  #start(session: Session, client: Client419, entry: Pending): boolean {
    const topic = utf8Encode(entry.topic);
    if (entry.kind === "subscribe") {
      const body = 2 + 2 + topic.length + 1;
      if (1 + remainingLengthSize(body) + body > session.writable) return false;
      entry.id = this.#allocateId(session);
      session.writable = client.write(null, { operation: SUBSCRIBE, id: entry.id, items: [{ topic: entry.topic, QoS: 1 }] });
      entry.started = true;
      session.awaiting.set(entry.id, entry);
      return true;
    }
    const total = entry.payload.length;
    const body = 2 + topic.length + (entry.qos ? 2 : 0) + total;
    const header = 1 + remainingLengthSize(body) + body - total;
    const first = Math.min(total, session.writable - header);
    // Wait until the header and at least one payload byte fit (or the whole of an empty payload).
    if (first < 0 || (first === 0 && total > 0)) return false;
    const id = entry.qos ? this.#allocateId(session) : 0;
    session.writable = client.write(entry.payload.slice(0, first), {
      topic: entry.topic,
      QoS: entry.qos,
      byteLength: total,
      ...(entry.qos ? { id } : {}),
    });
    entry.id = id;
    entry.sent = first;
    entry.started = true;
    if (entry.qos) session.awaiting.set(id, entry);
    return true;
  }

  /** Next packet ID in 1..65535 not awaiting an ack (at most 100 are, so this always finds one). */
  #allocateId(session: Session): number {
    for (;;) {
      const id = this.#nextId;
      this.#nextId = id >= 65535 ? 1 : id + 1;
      if (!session.awaiting.has(id)) return id;
    }
  }

  #fail(session: Session, reason: string): void {
    // A session that never got past TCP/TLS may have been refused over its trust anchor
    // (a failed certificate check ends in a timeout or a reset): try the next one next time.
    if (session.stage === "connecting") this.anchor = (this.anchor + 1) % this.#options.credentials.trustAnchors.length;
    this.#end(session, reason, true);
  }

  #endLater(session: Session, reason: string): void {
    this.#options.schedule(() => {
      if (this.#session === session) this.#end(session, reason, true);
    }, 0);
  }

  #end(session: Session, reason: string, notify: boolean): void {
    if (this.#session !== session) return;
    this.#session = undefined;
    session.cancelTimeout();
    const client = session.client;
    session.client = undefined;
    // Close on the next turn: this often runs inside one of the client's callbacks, and the
    // client keeps using its own state after a callback returns.
    if (client) {
      this.#options.schedule(() => {
        try {
          client.close();
        } catch {
          // Already closed by its own error path.
        }
      }, 0);
    }
    const error = new Error(`session ended: ${reason}`);
    const pending = [...session.awaiting.values(), ...session.queue];
    session.awaiting.clear();
    session.queue.length = 0;
    for (const entry of new Set(pending)) entry.reject(error);
    if (notify) session.handlers.onClose(reason);
  }
}
