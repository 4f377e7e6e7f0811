/*
 * Local stand-in for AWS IoT Core: an aedes MQTT broker behind Node's TLS server on
 * 127.0.0.1, enforcing what AWS would enforce, so that tests and the simulator fail
 * here first instead of in the cloud.
 *
 * What it enforces, and how a refusal looks to the client:
 * - Mutual TLS against the dev CA only (tools/pki.ts). No client certificate, one from
 *   another CA, one not for client auth, an expired one (Node's X.509 check; whether
 *   AWS checks device certificate expiry is not confirmed here) or a revoked one: the
 *   socket is closed during or right after the handshake.
 * - Client ID = certificate CN for a thing; for the cloud service, its CN or CN-<suffix>
 *   (several backend workers). At most 128 bytes. Otherwise CONNACK 5 (not authorized)
 *   or 2 (identifier rejected), then close. AWS may simply close instead; either way the
 *   client never gets a session.
 * - At most one CONNECT per connectIntervalMs (default 1000 ms) per client ID, counted
 *   from the last accepted one: CONNACK 3 (server unavailable), then close.
 * - A second connection with a client ID already connected takes over (aedes does what
 *   AWS does: the older one is disconnected).
 * - Topic policy (tools/standin/policy.ts). An unauthorized PUBLISH closes the
 *   connection without PUBACK, as AWS does. An unauthorized SUBSCRIBE also closes it by
 *   default (what AWS does for MQTT 3.1.1 clients); subscribeDenial: "suback-failure"
 *   answers SUBACK 0x80 instead.
 * - Payload over maxPayloadBytes (default 131072 = 128 KB, AWS's fixed limit): closed.
 * - QoS 2 PUBLISH or SUBSCRIBE: AWS sends no PUBACK/SUBACK. Waiting for an ack that
 *   never comes would make tests slow, so the stand-in closes the connection, which
 *   the client sees as the same thing: the operation never completes.
 * - Optional requireSni: AWS refuses connections without SNI. Off by default because
 *   a client connecting to 127.0.0.1 sends none unless given servername: "localhost".
 *
 * - A browser cannot present a client certificate in practice, so the WebSocket
 *   listener (./standin/wss.ts) hands over connections that name themselves with an
 *   app token instead; the same client ID, policy and limit checks then apply.
 * - Lifecycle events, as AWS publishes them: $aws/events/presence/connected/<clientId>
 *   and .../disconnected/<clientId> for every thing (not retained; AWS's are not).
 * - Named device shadows, get and update (./standin/shadow.ts), in RAM: where a
 *   device anchors its access-list generation outside its flash.
 *
 * Every refusal is counted in `stats`, kept in `stats.refusals` and emitted as
 * "refused", so tests can assert why something failed, not just that it did.
 */

import { EventEmitter } from "node:events";
import { X509Certificate } from "node:crypto";
import net from "node:net";
import type { Duplex } from "node:stream";
import path from "node:path";
import tls from "node:tls";
import { fileURLToPath } from "node:url";
import { Aedes } from "aedes";
import type { AedesPublishPacket, AuthenticateError, Client, PublishPacket, Subscription } from "aedes";
import { ensureDevPki, issueThingCredentials, roleOfSubject, type Credentials, type DevPki } from "./pki";
import { appClientIdBase, mayPublish, maySubscribe, PRESENCE_PREFIX, type Identity } from "./standin/policy";
import { ShadowService } from "./standin/shadow";
import { portOption, runAsEntry, UserError, type Parsed } from "./lib/cli";

export { appClientIdBase, type Identity } from "./standin/policy";

/** AWS IoT Core's payload limit; it cannot be raised there. */
export const MAX_PAYLOAD_BYTES = 131072;
/** AWS IoT Core's client ID limit. */
export const MAX_CLIENT_ID_BYTES = 128;
export const LOOPBACK = "127.0.0.1";

export type RefusalStage = "tls" | "connect" | "publish" | "subscribe";

export type RefusalReason =
  // tls
  | "no-client-certificate"
  | "untrusted-certificate"
  | "certificate-expired"
  | "certificate-revoked"
  | "sni-missing"
  | "tls-error"
  // connect
  | "unknown-role"
  | "client-id-mismatch"
  | "client-id-too-long"
  | "connect-throttled"
  | "token-missing"
  | "token-invalid"
  // publish / subscribe
  | "topic-not-allowed"
  | "topic-too-deep"
  | "malformed-topic"
  | "payload-too-large"
  | "qos2-not-supported";

export interface Refusal {
  stage: RefusalStage;
  reason: RefusalReason;
  /** MQTT client ID, once known (connect stage on). */
  clientId?: string;
  /** Who the certificate says the client is, once known. */
  identity?: Identity;
  /** PUBLISH topic or SUBSCRIBE filter. */
  topic?: string;
  qos?: number;
  /** PUBLISH payload length. */
  bytes?: number;
  /** Human-readable detail (e.g. the TLS error code). */
  detail: string;
  /** Date.now() when refused. */
  at: number;
}

export interface StandinStats {
  tlsRefused: number;
  connectionsAccepted: number;
  connectionsRefused: number;
  publishesAccepted: number;
  publishesRefused: number;
  subscriptionsAccepted: number;
  subscriptionsRefused: number;
  /** Every refusal, oldest first. */
  refusals: Refusal[];
}

export interface StandinMessage {
  clientId: string;
  identity: Identity;
  topic: string;
  payload: Buffer;
  qos: number;
  retain: boolean;
}

export interface StandinOptions {
  /** Result of ensureDevPki(); if absent, ensureDevPki(pkiDir) is called. */
  pki?: DevPki;
  /** Default: <repo>/.doorward/pki. */
  pkiDir?: string;
  /** Default 0 (ephemeral). The stand-in always listens on 127.0.0.1 only. */
  port?: number;
  /** Serve this certificate instead of pki.server, e.g. issueRogueCredentials(dir, "localhost", "server") to test a device's pinning. */
  serverCredentials?: { certPem: string; keyPem: string };
  /** Default MAX_PAYLOAD_BYTES (131072). */
  maxPayloadBytes?: number;
  /** Minimum time between accepted CONNECTs for one client ID. Default 1000; 0 disables. */
  connectIntervalMs?: number;
  /** Refuse TLS connections without SNI, as AWS does. Default false. */
  requireSni?: boolean;
  /** OpenSSL cipher list for TLS 1.2 (Node's default otherwise, which includes the RSA-key-exchange AES-CBC suites Moddable offers). */
  ciphers?: string;
  /** What an unauthorized SUBSCRIBE gets. Default "disconnect". */
  subscribeDenial?: "disconnect" | "suback-failure";
  /** One line per accepted connection, refusal and message. Default: silent. */
  log?: (line: string) => void;
  /**
   * Where an accepted publish goes next (AWS: the rules engine). The client's PUBACK is sent
   * only after this settles, and after the message reached the stand-in's own subscribers and
   * "message" listeners: a broker that dies in between has acknowledged nothing, so the client
   * sends again. A rejection closes the client's session without a PUBACK.
   */
  route?: (message: StandinMessage) => Promise<void>;
}

/** Options for mqtt.js's connect() that reach this stand-in with the given credentials. */
export interface MqttTlsOptions {
  protocol: "mqtts";
  host: string;
  port: number;
  servername: string;
  ca: string;
  cert: string;
  key: string;
  clientId: string;
  rejectUnauthorized: true;
  reconnectPeriod: number;
  connectTimeout: number;
  protocolVersion: 4;
}

interface Session {
  identity: Identity;
  /** The client certificate's, or "token:<user>" for an app. */
  fingerprint256: string;
}

/**
 * How a connection handed over by another listener proves who it is: called with
 * the CONNECT's client ID, username and password; returns the identity (and what
 * stands for its certificate fingerprint) or why it is refused.
 */
export type StreamAuthenticator = (
  clientId: string,
  username: string | undefined,
  password: Buffer | undefined,
) => { identity: Identity; fingerprint256: string } | { reason: RefusalReason; detail: string };


const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const DEFAULT_PKI_DIR = path.join(REPO_ROOT, ".doorward", "pki");

function normaliseFingerprint(value: string): string {
  if (value.includes("-----BEGIN")) return new X509Certificate(value).fingerprint256;
  return value.toUpperCase();
}

/**
 * Node's TLS server destroys a socket whose client certificate fails verification with
 * a bare "socket hang up"; the reason is on the socket's authorizationError. A missing
 * certificate is refused inside OpenSSL and shows up as the error itself.
 */
function classifyTlsError(err: NodeJS.ErrnoException, socket: tls.TLSSocket | undefined): { reason: RefusalReason; detail: string } {
  const authError = socket?.authorizationError === undefined ? undefined : String(socket.authorizationError);
  const detail = authError ?? err.code ?? err.message;
  const text = `${authError ?? ""} ${err.code ?? ""} ${err.message}`.toUpperCase();
  if (text.includes("PEER_DID_NOT_RETURN_A_CERTIFICATE") || text.includes("NO_CERTIFICATE")) return { reason: "no-client-certificate", detail };
  if (text.includes("CERT_HAS_EXPIRED") || text.includes("CERT_NOT_YET_VALID")) return { reason: "certificate-expired", detail };
  if (authError !== undefined || text.includes("CERTIFICATE_VERIFY_FAILED") || text.includes("UNKNOWN_CA")) return { reason: "untrusted-certificate", detail };
  return { reason: "tls-error", detail };
}

function refusalError(reason: RefusalReason): Error {
  return new Error(`refused: ${reason}`);
}

/** CONNACK return codes (MQTT 3.1.1): 2 identifier rejected, 3 server unavailable, 5 not authorized. */
function connackError(reason: RefusalReason, returnCode: 2 | 3 | 5): AuthenticateError {
  return Object.assign(new Error(`refused: ${reason}`), { returnCode }) as unknown as AuthenticateError;
}

export class Standin extends EventEmitter {
  readonly host = LOOPBACK;
  port = 0;
  readonly pki: DevPki;
  readonly stats: StandinStats = {
    tlsRefused: 0,
    connectionsAccepted: 0,
    connectionsRefused: 0,
    publishesAccepted: 0,
    publishesRefused: 0,
    subscriptionsAccepted: 0,
    subscriptionsRefused: 0,
    refusals: [],
  };

  #server: tls.Server;
  #broker: Aedes;
  /** Named shadows (get/update), as AWS IoT keeps them: the devices' access anchors live here. */
  readonly shadows = new ShadowService();
  #sockets = new Set<net.Socket>();
  #sessions = new WeakMap<Client, Session>();
  #streamAuth = new WeakMap<object, StreamAuthenticator>();
  #lastConnect = new Map<string, number>();
  #revoked = new Set<string>();
  #closed = false;
  #options: Required<Omit<StandinOptions, "pki" | "pkiDir" | "serverCredentials" | "log" | "port" | "ciphers" | "route">> & Pick<StandinOptions, "log" | "route">;

  /** Use startStandin(). */
  constructor(pki: DevPki, broker: Aedes, options: StandinOptions) {
    super();
    this.pki = pki;
    this.#broker = broker;
    this.#options = {
      maxPayloadBytes: options.maxPayloadBytes ?? MAX_PAYLOAD_BYTES,
      connectIntervalMs: options.connectIntervalMs ?? 1000,
      requireSni: options.requireSni ?? false,
      subscribeDenial: options.subscribeDenial ?? "disconnect",
      log: options.log,
      route: options.route,
    };
    const server = options.serverCredentials ?? pki.server;
    this.#server = tls.createServer({
      key: server.keyPem,
      cert: server.certPem,
      ca: [pki.ca.certPem],
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: "TLSv1.2",
      ...(options.ciphers ? { ciphers: options.ciphers } : {}),
    });
    this.#server.on("connection", (socket: net.Socket) => {
      // MQTT packets are small and latency-bound: don't let Nagle hold a PUBACK back for the next write.
      socket.setNoDelay(true);
      this.#sockets.add(socket);
      socket.once("close", () => this.#sockets.delete(socket));
    });
    this.#server.on("tlsClientError", (err: NodeJS.ErrnoException, socket: tls.TLSSocket) => {
      this.#refuse({ stage: "tls", ...classifyTlsError(err, socket) });
    });
    this.#server.on("secureConnection", (socket: tls.TLSSocket) => this.#onSecureConnection(socket));
    this.#wireBroker();
  }

  get url(): string {
    return `mqtts://${this.host}:${this.port}`;
  }

  get caPem(): string {
    return this.pki.ca.certPem;
  }

  /** @internal */
  async listen(port: number): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.#server.once("error", reject);
      this.#server.listen(port, LOOPBACK, () => {
        this.#server.off("error", reject);
        resolve();
      });
    });
    this.port = (this.#server.address() as net.AddressInfo).port;
  }

  /** mqtt.js connect options for these credentials (client ID defaults to the certificate's name). */
  clientOptions(creds: Pick<Credentials, "certPem" | "keyPem" | "name">, overrides: Partial<MqttTlsOptions> = {}): MqttTlsOptions {
    return {
      protocol: "mqtts",
      host: this.host,
      port: this.port,
      servername: "localhost",
      ca: this.caPem,
      cert: creds.certPem,
      key: creds.keyPem,
      clientId: creds.name,
      rejectUnauthorized: true,
      reconnectPeriod: 0,
      connectTimeout: 5000,
      protocolVersion: 4,
      ...overrides,
    };
  }

  /**
   * Take a connection that another listener accepted (the WebSocket one): its
   * identity comes from `authenticate` at CONNECT instead of a TLS peer certificate.
   */
  handleStream(stream: Duplex, authenticate: StreamAuthenticator): void {
    if (this.#closed) {
      stream.destroy();
      return;
    }
    this.#streamAuth.set(stream, authenticate);
    this.#broker.handle(stream);
  }

  /** Record a refusal made by another listener (e.g. a WebSocket upgrade refused). */
  refuse(r: Omit<Refusal, "at">): void {
    this.#refuse(r);
  }

  /** Connected sessions: client ID and identity. */
  clients(): Array<{ clientId: string; identity: Identity }> {
    const out: Array<{ clientId: string; identity: Identity }> = [];
    const all = (this.#broker as unknown as { clients: Record<string, Client> }).clients;
    for (const id of Object.keys(all)) {
      const session = this.#sessions.get(all[id]);
      if (session && all[id].connected) out.push({ clientId: id, identity: session.identity });
    }
    return out;
  }

  /** Like AWS DeleteConnection: cut the session now; nothing stops a reconnect. Returns whether one was open. */
  disconnect(clientId: string): boolean {
    const client = (this.#broker as unknown as { clients: Record<string, Client | undefined> }).clients[clientId];
    if (!client) return false;
    client.close();
    return true;
  }

  /**
   * Deactivate a certificate (by PEM or fingerprint256): new TLS connections with it are
   * refused and open sessions using it are closed. Returns how many sessions were closed.
   */
  revokeCertificate(certPemOrFingerprint: string): number {
    const fp = normaliseFingerprint(certPemOrFingerprint);
    this.#revoked.add(fp);
    let closed = 0;
    const all = (this.#broker as unknown as { clients: Record<string, Client> }).clients;
    for (const id of Object.keys(all)) {
      if (this.#sessions.get(all[id])?.fingerprint256 === fp) {
        all[id].close();
        closed++;
      }
    }
    return closed;
  }

  /** Publish as AWS itself would (no policy check), e.g. a Jobs notification in a test. */
  publish(topic: string, payload: string | Uint8Array, options: { qos?: 0 | 1; retain?: boolean } = {}): Promise<void> {
    const packet: PublishPacket = {
      cmd: "publish",
      topic,
      payload: typeof payload === "string" ? Buffer.from(payload) : Buffer.from(payload),
      qos: options.qos ?? 1,
      retain: options.retain ?? false,
      dup: false,
    };
    return new Promise((resolve, reject) => this.#broker.publish(packet, (err) => (err ? reject(err) : resolve())));
  }

  /**
   * Resolve with the first refusal (past or future) that `match` accepts; reject after
   * timeoutMs. Make `match` specific (client ID, topic) so an older refusal is not taken.
   */
  waitForRefusal(match: (r: Refusal) => boolean = () => true, timeoutMs = 3000): Promise<Refusal> {
    const past = this.stats.refusals.find(match);
    if (past) return Promise.resolve(past);
    return new Promise((resolve, reject) => {
      const onRefused = (r: Refusal) => {
        if (!match(r)) return;
        clearTimeout(timer);
        this.off("refused", onRefused);
        resolve(r);
      };
      const timer = setTimeout(() => {
        this.off("refused", onRefused);
        reject(new Error(`no matching refusal within ${timeoutMs} ms`));
      }, timeoutMs);
      this.on("refused", onRefused);
    });
  }

  /** Stop listening, cut every socket (including half-open handshakes) and close the broker. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const serverClosed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    for (const socket of this.#sockets) socket.destroy();
    await serverClosed;
    await new Promise<void>((resolve) => this.#broker.close(() => resolve()));
  }

  // ------------------------------------------------------------------ internals

  #refuse(r: Omit<Refusal, "at">): void {
    const refusal: Refusal = { ...r, at: Date.now() };
    this.stats.refusals.push(refusal);
    if (r.stage === "tls") this.stats.tlsRefused++;
    else if (r.stage === "connect") this.stats.connectionsRefused++;
    else if (r.stage === "publish") this.stats.publishesRefused++;
    else this.stats.subscriptionsRefused++;
    const who = r.clientId ? ` ${r.clientId}` : "";
    const topic = r.topic ? ` ${r.topic}` : "";
    this.#options.log?.(`refused ${r.stage}${who}${topic}: ${r.reason} (${r.detail})`);
    this.emit("refused", refusal);
  }

  /** AWS's lifecycle event, with the members an app needs (AWS adds more: principalIdentifier, sessionIdentifier, ...). */
  #presence(eventType: "connected" | "disconnected", clientId: string, client?: Client): Promise<void> {
    if (this.#closed) return Promise.resolve();
    // AWS names how a session ended: a DISCONNECT packet, or the connection dropping (aedes marks the first).
    const reason = eventType === "disconnected" ? { disconnectReason: (client as { _disconnected?: boolean } | undefined)?._disconnected ? "CLIENT_INITIATED_DISCONNECT" : "CONNECTION_LOST" } : {};
    const body = { clientId, timestamp: Date.now(), eventType, versionNumber: 0, ...reason };
    return this.publish(`${PRESENCE_PREFIX}/${eventType}/${clientId}`, JSON.stringify(body), { qos: 1 }).catch(() => {});
  }

  #onSecureConnection(socket: tls.TLSSocket): void {
    socket.on("error", () => {}); // errors after handoff are aedes's; before it, a refused socket may still report a reset
    if (this.#closed) {
      socket.destroy();
      return;
    }
    if (this.#options.requireSni && !socket.servername) {
      this.#refuse({ stage: "tls", reason: "sni-missing", detail: "client sent no server_name extension" });
      socket.destroy();
      return;
    }
    const cert = socket.getPeerCertificate();
    if (!socket.authorized || !cert || !cert.fingerprint256) {
      this.#refuse({ stage: "tls", reason: "untrusted-certificate", detail: String(socket.authorizationError ?? "no peer certificate") });
      socket.destroy();
      return;
    }
    if (this.#revoked.has(cert.fingerprint256)) {
      this.#refuse({ stage: "tls", reason: "certificate-revoked", detail: cert.fingerprint256 });
      socket.destroy();
      return;
    }
    this.#broker.handle(socket);
  }

  #wireBroker(): void {
    const broker = this.#broker;
    const opts = this.#options;

    broker.authenticate = (client, username, password, done) => {
      const clientId = client.id;
      let identity: Identity;
      let fingerprint256: string;
      const external = this.#streamAuth.get(client.conn);
      if (external) {
        const verdict = external(clientId, username, password);
        if ("reason" in verdict) {
          this.#refuse({ stage: "connect", reason: verdict.reason, clientId, detail: verdict.detail });
          return done(connackError(verdict.reason, 5), false);
        }
        ({ identity, fingerprint256 } = verdict);
      } else {
        const socket = client.conn as tls.TLSSocket;
        const cert = socket.getPeerCertificate();
        const { role, name } = roleOfSubject(cert?.subject as { OU?: string; CN?: string } | undefined);
        if ((role !== "thing" && role !== "service") || !name) {
          this.#refuse({ stage: "connect", reason: "unknown-role", clientId, detail: `certificate OU/CN not a thing or service` });
          return done(connackError("unknown-role", 5), false);
        }
        identity = { role, name };
        fingerprint256 = cert.fingerprint256;
      }
      const { role, name } = identity;
      if (Buffer.byteLength(clientId) > MAX_CLIENT_ID_BYTES) {
        this.#refuse({ stage: "connect", reason: "client-id-too-long", clientId, identity, detail: `${Buffer.byteLength(clientId)} bytes` });
        return done(connackError("client-id-too-long", 2), false);
      }
      const appBase = role === "app" ? appClientIdBase(identity.thing ?? "", name) : "";
      const idMatches = role === "thing" ? clientId === name
        : role === "app" ? clientId === appBase || clientId.startsWith(`${appBase}:`)
        : clientId === name || clientId.startsWith(`${name}-`);
      if (!idMatches) {
        this.#refuse({ stage: "connect", reason: "client-id-mismatch", clientId, identity, detail: role === "app" ? `an app's client ID is ${appBase}[:suffix]` : `certificate CN is ${name}` });
        return done(connackError("client-id-mismatch", 5), false);
      }
      const now = Date.now();
      const last = this.#lastConnect.get(clientId);
      if (opts.connectIntervalMs > 0 && last !== undefined && now - last < opts.connectIntervalMs) {
        this.#refuse({ stage: "connect", reason: "connect-throttled", clientId, identity, detail: `${now - last} ms after the previous CONNECT` });
        return done(connackError("connect-throttled", 3), false);
      }
      this.#lastConnect.set(clientId, now);
      this.#sessions.set(client, { identity, fingerprint256 });
      done(null, true);
    };

    broker.authorizePublish = (client, packet, done) => {
      if (!client) return done(null); // the stand-in itself (publish(), $SYS)
      const session = this.#sessions.get(client);
      const base = { stage: "publish" as const, clientId: client.id, identity: session?.identity, topic: packet.topic, qos: packet.qos };
      const bytes = packet.payload ? packet.payload.length : 0;
      if (!session) {
        this.#refuse({ ...base, reason: "unknown-role", bytes, detail: "no authenticated session" });
        return done(refusalError("unknown-role"));
      }
      if (packet.qos === 2) {
        this.#refuse({ ...base, reason: "qos2-not-supported", bytes, detail: "AWS IoT supports QoS 0 and 1 only" });
        return done(refusalError("qos2-not-supported"));
      }
      if (bytes > opts.maxPayloadBytes) {
        this.#refuse({ ...base, reason: "payload-too-large", bytes, detail: `${bytes} > ${opts.maxPayloadBytes} bytes` });
        return done(refusalError("payload-too-large"));
      }
      const verdict = mayPublish(session.identity, packet.topic);
      if (!verdict.ok) {
        this.#refuse({ ...base, reason: verdict.reason, bytes, detail: `${session.identity.role} ${session.identity.name} may not publish here` });
        return done(refusalError(verdict.reason));
      }
      // Route first, acknowledge after: aedes itself writes a QoS 1 PUBACK before it delivers the
      // message, so a crash in between would lose a message its sender saw acknowledged. The
      // stand-in delivers it here; aedes's own delivery after the PUBACK is then skipped.
      publishNow(packet as AedesPublishPacket, client, (err) => {
        if (err) return done(err);
        const message: StandinMessage = {
          clientId: client.id, identity: session.identity, topic: packet.topic,
          payload: Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload), qos: packet.qos, retain: packet.retain,
        };
        Promise.resolve(opts.route ? opts.route(message) : undefined).then(
          () => {
            routed.add(packet);
            done(null);
          },
          (e: unknown) => done(e instanceof Error ? e : new Error(String(e))),
        );
      });
    };
    // aedes's publish(packet, client, done) also takes the sending client (its typings list only the two-argument form).
    type PublishWithClient = (packet: AedesPublishPacket, client: Client | null, done: (err?: Error) => void) => void;
    const routed = new WeakSet<object>();
    const publishNow = broker.publish.bind(broker) as unknown as PublishWithClient;
    (broker as unknown as { publish: unknown }).publish = (packet: AedesPublishPacket, client: Client | null | ((err?: Error) => void), done?: (err?: Error) => void) => {
      const callback = typeof client === "function" ? client : done;
      if (routed.has(packet)) {
        routed.delete(packet);
        return callback?.();
      }
      return publishNow(packet, typeof client === "function" ? null : client, callback ?? (() => {}));
    };

    broker.authorizeSubscribe = (client, sub: Subscription, done) => {
      const session = this.#sessions.get(client);
      const base = { stage: "subscribe" as const, clientId: client.id, identity: session?.identity, topic: sub.topic, qos: sub.qos };
      if (!session) {
        this.#refuse({ ...base, reason: "unknown-role", detail: "no authenticated session" });
        return done(refusalError("unknown-role"));
      }
      if (sub.qos === 2) {
        this.#refuse({ ...base, reason: "qos2-not-supported", detail: "AWS IoT sends no SUBACK for QoS 2" });
        return done(refusalError("qos2-not-supported"));
      }
      const verdict = maySubscribe(session.identity, sub.topic);
      if (!verdict.ok) {
        this.#refuse({ ...base, reason: verdict.reason, detail: `${session.identity.role} ${session.identity.name} may not subscribe here` });
        return opts.subscribeDenial === "suback-failure" ? done(null, null) : done(refusalError(verdict.reason));
      }
      this.stats.subscriptionsAccepted++;
      done(null, sub);
    };

    broker.on("clientReady", (client: Client) => {
      const session = this.#sessions.get(client);
      if (!session) return;
      this.stats.connectionsAccepted++;
      opts.log?.(`connected ${client.id} (${session.identity.role} ${session.identity.name})`);
      this.emit("accepted", { clientId: client.id, identity: session.identity });
      if (session.identity.role === "thing") void this.#presence("connected", client.id);
    });

    broker.on("clientDisconnect", (client: Client) => {
      const session = this.#sessions.get(client);
      if (!session) return;
      opts.log?.(`disconnected ${client.id}`);
      this.emit("disconnected", { clientId: client.id, identity: session.identity });
      if (session.identity.role === "thing") void this.#presence("disconnected", client.id, client);
    });

    broker.on("publish", (packet: AedesPublishPacket, client: Client | null) => {
      if (!client) return;
      const session = this.#sessions.get(client);
      if (!session) return;
      this.stats.publishesAccepted++;
      const payload = Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload);
      opts.log?.(`message ${client.id} → ${packet.topic} (${payload.length} bytes, QoS ${packet.qos})`);
      const message: StandinMessage = {
        clientId: client.id,
        identity: session.identity,
        topic: packet.topic,
        payload,
        qos: packet.qos,
        retain: packet.retain,
      };
      this.emit("message", message);
      // The policy has already confined the publisher to its own $aws/things/<thing>/ subtree.
      const answers = this.shadows.handle(packet.topic, payload);
      for (const a of answers ?? []) void this.publish(a.topic, a.payload).catch(() => {});
    });
  }
}

export interface Standin {
  on(event: "refused", listener: (r: Refusal) => void): this;
  on(event: "accepted" | "disconnected", listener: (e: { clientId: string; identity: Identity }) => void): this;
  on(event: "message", listener: (m: StandinMessage) => void): this;
  once(event: "refused", listener: (r: Refusal) => void): this;
  once(event: "accepted" | "disconnected", listener: (e: { clientId: string; identity: Identity }) => void): this;
  once(event: "message", listener: (m: StandinMessage) => void): this;
}

/** Start a stand-in on 127.0.0.1 (port 0 = ephemeral). Resolves once it is listening. */
export async function startStandin(options: StandinOptions = {}): Promise<Standin> {
  const pki = options.pki ?? (await ensureDevPki(options.pkiDir ?? DEFAULT_PKI_DIR));
  const broker = await Aedes.createBroker({
    id: "doorward-standin",
    maxClientsIdLength: MAX_CLIENT_ID_BYTES,
    connectTimeout: 10_000,
  });
  const standin = new Standin(pki, broker, options);
  try {
    await standin.listen(options.port ?? 0);
  } catch (err) {
    await standin.close();
    throw err;
  }
  return standin;
}

// ------------------------------------------------------------------ CLI

const CLI = {
  name: "standin",
  usage: `usage: npx tsx tools/standin.ts [--port N] [--pki DIR] [--thing NAME ...]

The local stand-in for AWS IoT Core: MQTT 3.1.1 over mutual TLS on 127.0.0.1, with
AWS's client-ID, policy, size and rate rules. It runs until Ctrl-C.

  --port N       TCP port to listen on (default 8883, or DOORWARD_BROKER_PORT; 0 = any free one)
  --pki DIR      the development PKI: CA, server and service certificates, created on first use
                 (default .doorward/pki, or DOORWARD_PKI_DIR)
  --thing NAME   issue (or reuse) a thing certificate for NAME and print its paths; repeatable
                 (also DOORWARD_THINGS=name1,name2)
  -h, --help     this text`,
  options: { port: { type: "string" }, pki: { type: "string" }, thing: { type: "string", multiple: true } },
} as const;

async function main(args: Parsed<typeof CLI.options>): Promise<void> {
  const port = args.values.port !== undefined ? portOption("port", args.values.port) : process.env.DOORWARD_BROKER_PORT !== undefined ? portOption("port (DOORWARD_BROKER_PORT)", process.env.DOORWARD_BROKER_PORT) : 8883;
  const pkiDir = path.resolve(args.values.pki ?? process.env.DOORWARD_PKI_DIR ?? DEFAULT_PKI_DIR);
  const pki = await ensureDevPki(pkiDir, { progress: (line) => console.log(`${line} ...`) });
  const things = [...(args.values.thing ?? []), ...(process.env.DOORWARD_THINGS ?? "").split(",")].map((s) => s.trim()).filter(Boolean);
  let standin: Standin;
  try {
    standin = await startStandin({ pki, port, log: (line) => console.log(`[standin] ${line}`) });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "EADDRINUSE") throw new UserError(`port ${port} on ${LOOPBACK} is already in use (another stand-in or broker?): stop it, or pick another with --port N (0 = any free port)`);
    if (code === "EACCES") throw new UserError(`port ${port} needs privileges on this system: pick one above 1023 with --port N`);
    throw e;
  }
  const lines = [
    `AWS IoT stand-in listening on ${standin.url} (mutual TLS, MQTT 3.1.1)`,
    `PKI directory ${pki.dir}${pki.created ? " (created now)" : ""}`,
    `  CA certificate       ${pki.ca.certPath} (trust anchor for clients and devices; DER: ${path.join(pki.dir, "ca.cert.der")})`,
    `  server certificate   ${pki.server.certPath} (SAN localhost, 127.0.0.1)`,
    `  cloud service        ${pki.service.certPath} / ${pki.service.keyPath} (client ID "${pki.service.name}" or "${pki.service.name}-<suffix>")`,
  ];
  for (const thing of things) {
    const creds = await issueThingCredentials(pki.dir, thing);
    lines.push(`  thing ${thing.padEnd(14)} ${creds.certPath} / ${creds.keyPath} (DER alongside)`);
  }
  if (things.length === 0) lines.push(`  things: add --thing NAME to issue credentials for a device`);
  console.log(lines.join("\n"));
  const stop = () => {
    void standin.close().then(() => process.exit(0));
  };
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
}

runAsEntry(import.meta.url, CLI, main);
