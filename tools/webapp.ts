/*
 * Serves the owner web app (webapp/) from the stand-in's WSS listener, so the page
 * and its MQTT WebSocket share one origin and one certificate.
 *
 * The page is bundled on start with esbuild (mqtt.js, tweetnacl, the core modules
 * it reuses) and served from memory. Two small endpoints stand in for an owner's
 * backend, and both hand out broker credentials only, never a key:
 * - POST /api/setup {code, owner}: the one-time code the simulator printed lets a
 *   browser that made its own owner keys take the doorbell over. The development
 *   owner signs a list naming those keys (ownership moves only by signature), the
 *   device confirms, and the browser gets the owner's app token.
 * - POST /api/invite {user}, with the owner's app token as bearer: an app token for
 *   a guest, to put in an invitation. Letting the guest in is still the owner's
 *   signed list and the device's decision.
 * On AWS the same two jobs fall to a Cognito identity pool or a custom authorizer
 * and the function that issues its tokens.
 */
import { randomBytes, timingSafeEqual } from "node:crypto";
import fs from "node:fs";
import type http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";
import { isUserId, userFromJson, userToJson, type AccessUser } from "../modules/core/access";
import type { Json } from "../modules/core/canonical";
import { toBase64Url } from "../modules/core/bytes";
import { writePrivateFile } from "../modules/host/key-file";
import type { Standin } from "./standin";
import { AppTokens, startWssListener, type WssListener } from "./standin/wss";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const WEBAPP = path.join(REPO, "webapp");
const MAX_BODY_BYTES = 8192;

/** Bundle the page's script: one IIFE, no source map, nothing fetched at run time. */
export async function buildWebApp(): Promise<string> {
  const out = await esbuild.build({
    entryPoints: [path.join(WEBAPP, "main.ts")],
    bundle: true,
    write: false,
    platform: "browser",
    format: "iife",
    target: "es2022",
    legalComments: "none",
    logLevel: "silent",
  });
  return out.outputFiles[0].text;
}

/** The app-token secret, made once per home (0600), so tokens in browsers outlive a restart. */
export function loadAppTokens(home: string): AppTokens {
  const file = path.join(home, "app-tokens.key");
  if (!fs.existsSync(file)) {
    fs.mkdirSync(home, { recursive: true });
    writePrivateFile(file, new Uint8Array(randomBytes(32)));
  }
  return new AppTokens(new Uint8Array(fs.readFileSync(file)));
}

export interface HandOverResult {
  ok: boolean;
  /** The device's reason code when it refused. */
  reason?: string;
  gen: number;
  users: AccessUser[];
}

export interface WebAppOptions {
  standin: Standin;
  home: string;
  thing: string;
  deviceSignPublicKey: Uint8Array;
  deviceBoxPublicKey: Uint8Array;
  /** Have the current owner sign a list naming this new owner, and wait for the device. */
  handOver: (owner: AccessUser) => Promise<HandOverResult>;
  port?: number;
}

export interface WebApp {
  origin: string;
  /** Opens once: the page makes owner keys and takes the doorbell over. */
  setupUrl: string;
  wss: WssListener;
  tokens: AppTokens;
  close(): Promise<void>;
}

function readJson(req: http.IncomingMessage): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let size = 0;
    req.on("data", (b: Buffer) => {
      size += b.length;
      if (size > MAX_BODY_BYTES) {
        reject(new Error("request too large"));
        req.destroy();
      } else parts.push(b);
    });
    req.on("end", () => {
      try {
        const v = JSON.parse(Buffer.concat(parts).toString("utf8")) as unknown;
        if (typeof v !== "object" || v === null || Array.isArray(v)) throw new Error("not an object");
        resolve(v as Record<string, unknown>);
      } catch {
        reject(new Error("the request body is not a JSON object"));
      }
    });
    req.on("error", reject);
  });
}

function send(res: http.ServerResponse, status: number, body: Json | string, type = "application/json"): void {
  res.writeHead(status, {
    "content-type": type === "application/json" ? "application/json; charset=utf-8" : type,
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
  });
  res.end(typeof body === "string" ? body : JSON.stringify(body));
}

export async function startWebApp(o: WebAppOptions): Promise<WebApp> {
  const [script, page] = await Promise.all([buildWebApp(), fs.promises.readFile(path.join(WEBAPP, "index.html"), "utf8")]);
  const tokens = loadAppTokens(o.home);
  let setupCode: Buffer | undefined = randomBytes(18);
  const code = toBase64Url(new Uint8Array(setupCode));

  const setup = async (body: Record<string, unknown>): Promise<[number, Json]> => {
    const given = Buffer.from(typeof body.code === "string" ? body.code : "");
    const expected = setupCode ? Buffer.from(code) : undefined;
    if (!expected) return [410, { error: "this setup link was used already; the doorbell has its owner (restart npm start for a new link only while the development owner still owns it)" }];
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return [403, { error: "the setup code is wrong" }];
    let owner: AccessUser;
    try {
      owner = userFromJson(body.owner);
    } catch (e) {
      return [400, { error: `the owner's public keys are malformed: ${(e as Error).message}` }];
    }
    if (owner.role !== "owner") return [400, { error: "the new owner must have the owner role" }];
    setupCode = undefined;
    const r = await o.handOver(owner);
    if (!r.ok) return [409, { error: `the doorbell refused the new owner: ${r.reason ?? "no reason given"}` }];
    return [200, {
      thing: o.thing,
      deviceSignPublicKey: toBase64Url(o.deviceSignPublicKey),
      deviceBoxPublicKey: toBase64Url(o.deviceBoxPublicKey),
      token: tokens.issue({ thing: o.thing, user: owner.id, owner: true }),
      gen: r.gen,
      users: r.users.map(userToJson),
    }];
  };

  const invite = async (req: http.IncomingMessage, body: Record<string, unknown>): Promise<[number, Json]> => {
    const bearer = /^Bearer (\S+)$/.exec(req.headers.authorization ?? "")?.[1];
    const checked = bearer ? tokens.check(bearer) : { ok: false as const, detail: "no app token" };
    if (!checked.ok || !checked.claims.owner || checked.claims.thing !== o.thing) return [403, { error: "only the owner's app may make invitations" }];
    if (!isUserId(body.user)) return [400, { error: "a user id is 1-24 of a-z, 0-9, '.', '_' or '-', starting with a letter or digit" }];
    return [200, { token: tokens.issue({ thing: o.thing, user: body.user, owner: false }) }];
  };

  const onRequest = (req: http.IncomingMessage, res: http.ServerResponse) => {
    const url = (req.url ?? "/").split("?")[0];
    if (req.method === "GET" && (url === "/" || url === "/index.html")) return send(res, 200, page, "text/html; charset=utf-8");
    if (req.method === "GET" && url === "/favicon.ico") return send(res, 204, "", "image/x-icon");
    if (req.method === "GET" && url === "/app.js") return send(res, 200, script, "text/javascript; charset=utf-8");
    if (req.method === "POST" && (url === "/api/setup" || url === "/api/invite")) {
      readJson(req)
        .then((body) => (url === "/api/setup" ? setup(body) : invite(req, body)))
        .then(([status, body]) => send(res, status, body), (e: Error) => send(res, 400, { error: e.message }));
      return;
    }
    send(res, 404, { error: "not found" });
  };

  const wss = await startWssListener({ standin: o.standin, tokens, port: o.port, onRequest });
  return {
    origin: wss.origin,
    setupUrl: `${wss.origin}/#setup=${code}`,
    wss,
    tokens,
    close: () => wss.close(),
  };
}
