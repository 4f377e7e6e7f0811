/*
 * The stand-in's device shadows: AWS IoT's named-shadow get and update, as far
 * as Doorward uses them (the access anchor, modules/core/acl-anchor), kept in
 * RAM for the life of the stand-in.
 *
 *   $aws/things/<thing>/shadow/name/<name>/get     → .../get/accepted {state, metadata, version, timestamp}
 *                                                    or .../get/rejected {code: 404, message}
 *   $aws/things/<thing>/shadow/name/<name>/update  → .../update/accepted {state, metadata, version, timestamp}
 *                                                    or .../update/rejected {code: 400, message}
 * An update merges `state.reported` (and `state.desired`) member by member, as
 * AWS does; a member set to null is removed. Pure, so it can be tested alone.
 */

type Doc = Record<string, unknown>;

export interface ShadowReply {
  topic: string;
  payload: string;
}

const SHADOW_TOPIC = /^\$aws\/things\/([^/]+)\/shadow\/name\/([a-zA-Z0-9:_-]{1,64})\/(get|update)$/;

function isDoc(v: unknown): v is Doc {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function merge(into: Doc, patch: Doc): Doc {
  const out: Doc = { ...into };
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else if (isDoc(v) && isDoc(out[k])) out[k] = merge(out[k] as Doc, v);
    else out[k] = v;
  }
  return out;
}

export class ShadowService {
  #shadows = new Map<string, { state: Doc; version: number }>();

  /** The answers to a publish on a shadow request topic; undefined for any other topic. */
  handle(topic: string, payload: Uint8Array, now = Date.now()): ShadowReply[] | undefined {
    const m = SHADOW_TOPIC.exec(topic);
    if (!m) return undefined;
    const [, thing, name, op] = m;
    const key = `${thing}/${name}`;
    const base = `$aws/things/${thing}/shadow/name/${name}/${op}`;
    const timestamp = Math.floor(now / 1000);
    const shadow = this.#shadows.get(key);
    if (op === "get") {
      if (!shadow) return [{ topic: `${base}/rejected`, payload: JSON.stringify({ code: 404, message: `No shadow exists with name: '${name}'`, timestamp }) }];
      return [{ topic: `${base}/accepted`, payload: JSON.stringify({ state: shadow.state, metadata: {}, version: shadow.version, timestamp }) }];
    }
    let doc: unknown;
    try {
      doc = JSON.parse(Buffer.from(payload).toString("utf8"));
    } catch {
      doc = undefined;
    }
    const state = isDoc(doc) ? doc.state : undefined;
    if (!isDoc(state) || Object.keys(state).some((k) => k !== "reported" && k !== "desired") || !Object.values(state).every((v) => v === null || isDoc(v))) {
      return [{ topic: `${base}/rejected`, payload: JSON.stringify({ code: 400, message: "Missing required node: state", timestamp }) }];
    }
    const next = { state: merge(shadow?.state ?? {}, state as Doc), version: (shadow?.version ?? 0) + 1 };
    this.#shadows.set(key, next);
    return [{ topic: `${base}/accepted`, payload: JSON.stringify({ state, metadata: {}, version: next.version, timestamp }) }];
  }

  /** Remove a shadow, as the account could (tests use it to show what that leaves). */
  delete(thing: string, name: string): void {
    this.#shadows.delete(`${thing}/${name}`);
  }
}
