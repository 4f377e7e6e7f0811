/*
 * Canonical JSON: RFC 8785 (JSON Canonicalization Scheme) for the values Doorward uses.
 *
 * Every signed or MACed document is hashed as these exact bytes, so the device,
 * the verifier and any third-party implementation must agree on them to the bit.
 * Rules: object members sorted by UTF-16 code units of their names; no whitespace;
 * strings escaped as RFC 8785 §3.2.2.2 says (\" \\ \b \f \n \r \t, other controls
 * as lowercase \u00xx, everything else literal UTF-8); numbers as ECMAScript
 * Number.prototype.toString (Doorward only emits integers, so this is their
 * plain decimal form). Lone surrogates, non-finite numbers, undefined,
 * functions and nesting deeper than MAX_DEPTH are errors, never guesses.
 */
import { utf8Encode, utf8Decode } from "./bytes";

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export const MAX_DEPTH = 16;

const SHORT_ESCAPES: Record<number, string> = { 8: "\\b", 9: "\\t", 10: "\\n", 12: "\\f", 13: "\\r", 34: "\\\"", 92: "\\\\" };

function quote(s: string): string {
  let out = "\"";
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    const short = SHORT_ESCAPES[c];
    if (short) out += short;
    else if (c < 0x20) out += "\\u00" + (c < 16 ? "0" : "") + c.toString(16);
    else if (c >= 0xd800 && c <= 0xdbff) {
      const d = s.charCodeAt(i + 1);
      if (!(d >= 0xdc00 && d <= 0xdfff)) throw new TypeError("canonical: lone surrogate in string");
      out += s[i] + s[i + 1];
      i++;
    } else if (c >= 0xdc00 && c <= 0xdfff) throw new TypeError("canonical: lone surrogate in string");
    else out += s[i];
  }
  return out + "\"";
}

function serialize(value: unknown, depth: number): string {
  if (depth > MAX_DEPTH) throw new RangeError("canonical: nesting too deep");
  if (value === null) return "null";
  switch (typeof value) {
    case "boolean":
      return value ? "true" : "false";
    case "number":
      if (!Number.isFinite(value)) throw new TypeError("canonical: non-finite number");
      return Object.is(value, -0) ? "0" : String(value);
    case "string":
      return quote(value);
    case "object": {
      if (Array.isArray(value)) {
        let out = "[";
        for (let i = 0; i < value.length; i++) out += (i ? "," : "") + serialize(value[i], depth + 1);
        return out + "]";
      }
      const proto = Object.getPrototypeOf(value);
      if (proto !== Object.prototype && proto !== null) throw new TypeError("canonical: only plain objects");
      const obj = value as Record<string, unknown>;
      const names = Object.keys(obj).sort();
      let out = "{";
      for (let i = 0; i < names.length; i++) {
        const v = obj[names[i]];
        if (v === undefined) throw new TypeError(`canonical: member "${names[i]}" is undefined`);
        out += (i ? "," : "") + quote(names[i]) + ":" + serialize(v, depth + 1);
      }
      return out + "}";
    }
    default:
      throw new TypeError(`canonical: cannot encode ${typeof value}`);
  }
}

export function canonicalString(value: Json): string {
  return serialize(value, 0);
}

export function canonicalBytes(value: Json): Uint8Array {
  return utf8Encode(serialize(value, 0));
}

/**
 * Parse bytes that claim to be canonical JSON. Returns the value only if
 * re-encoding it gives back the same bytes, which rejects duplicate names,
 * whitespace, alternative escapes and number spellings in one check.
 */
export function parseCanonical(bytes: Uint8Array, maxBytes: number): Json {
  if (bytes.length > maxBytes) throw new RangeError(`canonical: document larger than ${maxBytes} bytes`);
  const text = utf8Decode(bytes);
  const value = JSON.parse(text) as Json;
  if (serialize(value, 0) !== text) throw new TypeError("canonical: document is not in canonical form");
  return value;
}

/** True when brackets nest deeper than max, found by a byte scan, so a hostile document never reaches a recursive parser. */
export function jsonNestsDeeper(bytes: Uint8Array, max: number): boolean {
  let depth = 0;
  let inString = false;
  let escaped = false;
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i];
    if (inString) {
      if (escaped) escaped = false;
      else if (b === 0x5c) escaped = true;
      else if (b === 0x22) inString = false;
    } else if (b === 0x22) inString = true;
    else if (b === 0x5b || b === 0x7b) {
      if (++depth > max) return true;
    } else if (b === 0x5d || b === 0x7d) depth--;
  }
  return false;
}
