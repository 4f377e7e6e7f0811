/*
 * A fleet's cloud-side verifier as an AWS Lambda function, fed by an AWS IoT
 * rule, on the same verifier code as every other consumer (./event-verifier).
 *
 * The rule hands over the payload base64-encoded, because a signature is over
 * exact bytes and a rule that re-encodes JSON would change them:
 *
 *   SELECT encode(*, 'base64') AS payload, topic() AS topic FROM 'doorward/+/events'   (RULE_SQL)
 *
 * Each invocation returns the verdict and logs it as one JSON line (CloudWatch
 * Logs), so a rejected or rolled-back event is visible and can be alarmed on.
 * It never throws for a bad event: the IoT rule would retry it, and a forged
 * event stays forged. Device keys come from DOORWARD_THING_KEYS, a JSON object
 * {"<thing>": "<Ed25519 public key, 64 hex digits>"}. Replay marks live in the
 * ReplayState the handler is given; the deployed default keeps them in memory,
 * per warm container, so a fleet that needs them across containers passes a
 * shared store (docs/aws.md).
 *
 *   npx esbuild tools/fleet-verifier-lambda.ts --bundle --platform=node --format=cjs --outfile=build/lambda/index.js
 */
import { EventVerifier, type ReplayState, type Verdict } from "./event-verifier";
import { fromHex } from "../modules/core/bytes";
import { isThingName } from "../modules/core/topics";

/** The IoT rule's statement (docs/aws.md deploys it). */
export const RULE_SQL = "SELECT encode(*, 'base64') AS payload, topic() AS topic FROM 'doorward/+/events'";

/** What the IoT rule's SELECT hands to the function. */
export interface IotRuleEvent {
  /** The MQTT payload, base64. */
  payload: string;
  /** The topic it was published on. */
  topic: string;
}

export type FleetVerdict =
  | { ok: true; thing: string; type: string; boot: number; seq: number; alert?: string }
  | { ok: false; reason: string; detail: string; thing?: string; seq?: number; redelivery?: boolean };

export interface HandlerOptions {
  keys: Record<string, Uint8Array>;
  state?: ReplayState;
  /** Where each verdict goes as one JSON line (default console.log: CloudWatch Logs). */
  log?: (line: string) => void;
}

/** The registry of device keys from DOORWARD_THING_KEYS; throws, naming the entry, when one is malformed. */
export function keysFromEnv(text: string | undefined): Record<string, Uint8Array> {
  if (!text) throw new Error("DOORWARD_THING_KEYS is not set: a JSON object {\"<thing>\": \"<64 hex digits>\"}");
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new Error(`DOORWARD_THING_KEYS is not JSON: ${(e as Error).message}`);
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) throw new Error("DOORWARD_THING_KEYS must be a JSON object");
  const keys: Record<string, Uint8Array> = {};
  for (const [thing, hex] of Object.entries(doc)) {
    if (!isThingName(thing)) throw new Error(`DOORWARD_THING_KEYS: ${JSON.stringify(thing)} is not a thing name`);
    if (typeof hex !== "string" || !/^[0-9a-fA-F]{64}$/.test(hex)) throw new Error(`DOORWARD_THING_KEYS: the key of ${thing} must be 64 hex digits`);
    keys[thing] = fromHex(hex);
  }
  return keys;
}

function decodePayload(event: unknown): { payload: Uint8Array; topic: string } | string {
  const e = event as Partial<IotRuleEvent> | null;
  if (typeof e !== "object" || e === null) return "the rule sent no object";
  if (typeof e.topic !== "string") return "the rule sent no topic (SELECT ... topic() AS topic)";
  if (typeof e.payload !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(e.payload)) return "the rule sent no base64 payload (SELECT encode(*, 'base64') AS payload)";
  return { payload: new Uint8Array(Buffer.from(e.payload, "base64")), topic: e.topic };
}

function summarise(v: Verdict): FleetVerdict {
  if (v.ok) return { ok: true, thing: v.event.thing, type: v.event.type, boot: v.event.boot, seq: v.event.seq, ...(v.alert ? { alert: v.alert } : {}) };
  return { ok: false, reason: v.reason, detail: v.detail, ...(v.event ? { thing: v.event.thing, seq: v.event.seq } : {}), ...(v.redelivery ? { redelivery: true } : {}) };
}

/** A Lambda handler over one verifier; its marks outlive single invocations while the container is warm. */
export function createHandler(options: HandlerOptions): (event: IotRuleEvent) => Promise<FleetVerdict> {
  const verifier = new EventVerifier(options.keys, { state: options.state });
  const log = options.log ?? ((line: string) => console.log(line));
  return async (event) => {
    const decoded = decodePayload(event);
    const verdict: FleetVerdict = typeof decoded === "string"
      ? { ok: false, reason: "format", detail: decoded }
      : summarise(verifier.verify(decoded.payload, { topic: decoded.topic }));
    log(JSON.stringify({ doorward: "event-verdict", ...verdict }));
    return verdict;
  };
}

let deployed: ((event: IotRuleEvent) => Promise<FleetVerdict>) | undefined;

/** The deployed entry point: keys from DOORWARD_THING_KEYS, marks in memory. */
export const handler = (event: IotRuleEvent): Promise<FleetVerdict> => {
  deployed ??= createHandler({ keys: keysFromEnv(process.env.DOORWARD_THING_KEYS) });
  return deployed(event);
};
