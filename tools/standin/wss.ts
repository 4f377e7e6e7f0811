/*
 * The stand-in's MQTT-over-WebSocket (WSS) listener, for browsers.
 *
 * A browser can speak MQTT only over a WebSocket, and in practice cannot present a
 * client certificate (no API chooses one; a test browser has none). So this listener
 * takes identity from one of two places, in this order:
 * - a TLS client certificate from the dev CA, if the client offered one: the same
 *   thing or service identity as on the MQTT port;
 * - otherwise an app token as the CONNECT password, issued by AppTokens to one user
 *   of one thing (the owner's at setup, a guest's with an invitation).
 * Either way the connection is handed to the stand-in, which applies the same client
 * ID rule, per-identity topic policy and limits as on the MQTT port.
 *
 * The token plays the part of what AWS IoT does for browsers: a custom authorizer (a
 * Lambda function that reads the token from the MQTT password and returns a policy)
 * or a Cognito identity whose IAM role the connection is signed with (SigV4). Either
 * way the policy it yields is the stand-in's "app" policy (./policy.ts).
 *
 * The listener also serves plain HTTPS requests (the owner web app's page) through
 * onRequest, so a browser that trusts the page trusts the WebSocket too: one origin.
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import https from "node:https";
import type http from "node:http";
import type net from "node:net";
import type tls from "node:tls";
import { WebSocketServer, createWebSocketStream } from "ws";
import { canonicalBytes, parseCanonical } from "../../modules/core/canonical";
import { concatBytes, fromBase64Url, toBase64Url, utf8Encode } from "../../modules/core/bytes";
import { isUserId } from "../../modules/core/access";
import { isThingName } from "../../modules/core/topics";
import { roleOfSubject } from "../pki";
import { LOOPBACK, MAX_PAYLOAD_BYTES, type Standin, type StreamAuthenticator } from "../standin";
import type { Identity } from "./policy";

const TOKEN_PREFIX = "dwt1";
const TOKEN_DOMAIN = utf8Encode("doorward/app-token/v1\n");
export const WSS_PATH = "/mqtt";

/** What an app token grants: one user of one thing. */
export interface AppTokenClaims {
  thing: string;
  user: string;
  owner: boolean;
}

/** Issues and checks app tokens: HMAC-SHA256 under a secret only the stand-in holds. */
export class AppTokens {
  #secret: Uint8Array;

  constructor(secret: Uint8Array) {
    if (secret.length < 32) throw new RangeError("app tokens: the secret must be at least 32 bytes");
    this.#secret = secret.slice();
  }

  issue(claims: AppTokenClaims): string {
    if (!isThingName(claims.thing) || !isUserId(claims.user)) throw new TypeError("app tokens: bad thing name or user id");
    const body = toBase64Url(canonicalBytes({ owner: claims.owner, thing: claims.thing, user: claims.user }));
    return `${TOKEN_PREFIX}.${body}.${this.#mac(body)}`;
  }

  /** The claims of a genuine token, or why it is not one. */
  check(token: string): { ok: true; claims: AppTokenClaims } | { ok: false; detail: string } {
    const parts = token.split(".");
    if (parts.length !== 3 || parts[0] !== TOKEN_PREFIX) return { ok: false, detail: "not an app token" };
    const expected = Buffer.from(this.#mac(parts[1]));
    const given = Buffer.from(parts[2]);
    if (expected.length !== given.length || !timingSafeEqual(expected, given)) return { ok: false, detail: "token signature does not verify" };
    const doc = parseCanonical(fromBase64Url(parts[1]), 512) as Record<string, unknown>;
    if (!isThingName(doc.thing) || !isUserId(doc.user) || typeof doc.owner !== "boolean") return { ok: false, detail: "token claims malformed" };
    return { ok: true, claims: { thing: doc.thing, user: doc.user, owner: doc.owner } };
  }

  #mac(body: string): string {
    return toBase64Url(new Uint8Array(createHmac("sha256", this.#secret).update(concatBytes(TOKEN_DOMAIN, utf8Encode(body))).digest()));
  }
}

export interface WssListenerOptions {
  standin: Standin;
  tokens: AppTokens;
  /** Default 0 (ephemeral). Listens on 127.0.0.1 only. */
  port?: number;
  /** Plain HTTPS requests (anything but the WebSocket upgrade). Default: 404. */
  onRequest?: (req: http.IncomingMessage, res: http.ServerResponse) => void;
}

export interface WssListener {
  port: number;
  /** wss://localhost:<port>/mqtt: "localhost" because the dev server certificate names it. */
  url: string;
  /** https://localhost:<port>/ */
  origin: string;
  close(): Promise<void>;
}

/** Identity from a verified client certificate, if the browser (or a tool) offered one. */
function certificateIdentity(socket: tls.TLSSocket): { identity: Identity; fingerprint256: string } | undefined {
  if (!socket.authorized) return undefined;
  const cert = socket.getPeerCertificate();
  if (!cert?.fingerprint256) return undefined;
  const { role, name } = roleOfSubject(cert.subject as { OU?: string; CN?: string } | undefined);
  if ((role !== "thing" && role !== "service") || !name) return undefined;
  return { identity: { role, name }, fingerprint256: cert.fingerprint256 };
}

function tokenAuthenticator(tokens: AppTokens): StreamAuthenticator {
  return (_clientId, _username, password) => {
    if (!password || password.length === 0) return { reason: "token-missing", detail: "no client certificate and no app token as the MQTT password" };
    let verdict;
    try {
      verdict = tokens.check(password.toString("utf8"));
    } catch {
      verdict = { ok: false as const, detail: "token claims malformed" };
    }
    if (!verdict.ok) return { reason: "token-invalid", detail: verdict.detail };
    const { thing, user, owner } = verdict.claims;
    return { identity: { role: "app", name: user, thing, owner }, fingerprint256: `token:${thing}:${user}` };
  };
}

export async function startWssListener(o: WssListenerOptions): Promise<WssListener> {
  const { standin } = o;
  const pki = standin.pki;
  const sockets = new Set<net.Socket>();
  const server = https.createServer({
    key: pki.server.keyPem,
    cert: pki.server.certPem,
    ca: [pki.ca.certPem],
    // Ask for a certificate, but a browser without one still gets in (with a token).
    requestCert: true,
    rejectUnauthorized: false,
    minVersion: "TLSv1.2",
  });
  const wss = new WebSocketServer({ noServer: true, maxPayload: MAX_PAYLOAD_BYTES + 1024 });
  const byToken = tokenAuthenticator(o.tokens);
  server.on("connection", (socket: net.Socket) => {
    socket.setNoDelay(true);
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  });
  server.on("request", (req, res) => {
    if (o.onRequest) o.onRequest(req, res);
    else res.writeHead(404).end();
  });
  server.on("upgrade", (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
    const path = (req.url ?? "").split("?")[0];
    if (path !== WSS_PATH) {
      socket.end("HTTP/1.1 404 Not Found\r\n\r\n");
      return;
    }
    const fromCert = certificateIdentity(req.socket as tls.TLSSocket);
    wss.handleUpgrade(req, socket, head, (ws) => {
      const stream = createWebSocketStream(ws);
      stream.on("error", () => {}); // a browser closing its tab is not an error of ours
      standin.handleStream(stream, fromCert ? () => fromCert : byToken);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(o.port ?? 0, LOOPBACK, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    url: `wss://localhost:${port}${WSS_PATH}`,
    origin: `https://localhost:${port}`,
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const client of wss.clients) client.terminate();
      for (const socket of sockets) socket.destroy();
      wss.close();
      await closed;
    },
  };
}
