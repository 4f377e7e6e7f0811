/*
 * Byte helpers the core needs on every engine.
 *
 * XS on a device has no global TextEncoder or Buffer, so UTF-8, hex and
 * base64url live here, written once, with strict decoders: malformed input
 * throws rather than being silently repaired.
 */

export function utf8Encode(text: string): Uint8Array {
  const out: number[] = [];
  for (let i = 0; i < text.length; i++) {
    let c = text.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff) {
      const d = i + 1 < text.length ? text.charCodeAt(i + 1) : 0;
      if (d < 0xdc00 || d > 0xdfff) throw new TypeError("utf8: lone surrogate");
      c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
      i++;
    } else if (c >= 0xdc00 && c <= 0xdfff) {
      throw new TypeError("utf8: lone surrogate");
    }
    if (c < 0x80) out.push(c);
    else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
    else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
  }
  return Uint8Array.from(out);
}

/** Strict UTF-8 decode: overlong forms, surrogates, truncation and stray continuation bytes all throw. */
export function utf8Decode(bytes: Uint8Array): string {
  let s = "";
  let i = 0;
  while (i < bytes.length) {
    const b = bytes[i];
    let need: number, cp: number, min: number;
    if (b < 0x80) { s += String.fromCharCode(b); i++; continue; }
    else if (b >= 0xc2 && b <= 0xdf) { need = 1; cp = b & 0x1f; min = 0x80; }
    else if (b >= 0xe0 && b <= 0xef) { need = 2; cp = b & 0x0f; min = 0x800; }
    else if (b >= 0xf0 && b <= 0xf4) { need = 3; cp = b & 0x07; min = 0x10000; }
    else throw new TypeError("utf8: invalid lead byte");
    if (i + need >= bytes.length) throw new TypeError("utf8: truncated");
    for (let k = 1; k <= need; k++) {
      const c = bytes[i + k];
      if ((c & 0xc0) !== 0x80) throw new TypeError("utf8: invalid continuation");
      cp = (cp << 6) | (c & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) throw new TypeError("utf8: invalid code point");
    s += String.fromCodePoint(cp);
    i += need + 1;
  }
  return s;
}

const HEX = "0123456789abcdef";
export function toHex(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i++) s += HEX[bytes[i] >> 4] + HEX[bytes[i] & 15];
  return s;
}
export function fromHex(text: string): Uint8Array {
  if (text.length % 2 || !/^[0-9a-f]*$/.test(text)) throw new TypeError("hex: expected lowercase hex of even length");
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.substr(i * 2, 2), 16);
  return out;
}

const B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
/** RFC 4648 §5 base64url, no padding. */
export function toBase64Url(bytes: Uint8Array): string {
  let s = "";
  let i = 0;
  for (; i + 2 < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | (bytes[i + 1] << 8) | bytes[i + 2];
    s += B64URL[n >> 18] + B64URL[(n >> 12) & 63] + B64URL[(n >> 6) & 63] + B64URL[n & 63];
  }
  const rest = bytes.length - i;
  if (rest === 1) {
    const n = bytes[i] << 16;
    s += B64URL[n >> 18] + B64URL[(n >> 12) & 63];
  } else if (rest === 2) {
    const n = (bytes[i] << 16) | (bytes[i + 1] << 8);
    s += B64URL[n >> 18] + B64URL[(n >> 12) & 63] + B64URL[(n >> 6) & 63];
  }
  return s;
}
/** Strict: rejects padding, other alphabets, and non-canonical trailing bits. */
export function fromBase64Url(text: string): Uint8Array {
  if (text.length % 4 === 1) throw new TypeError("base64url: bad length");
  const out = new Uint8Array(Math.floor((text.length * 3) / 4));
  let acc = 0, bits = 0, o = 0;
  for (let i = 0; i < text.length; i++) {
    const v = B64URL.indexOf(text[i]);
    if (v < 0) throw new TypeError("base64url: bad character");
    acc = (acc << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (acc >> bits) & 255;
    }
  }
  if (acc & ((1 << bits) - 1)) throw new TypeError("base64url: non-canonical trailing bits");
  return out;
}

export function concatBytes(...parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}

/** Constant-time equality for MACs and digests. */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}

/** Overwrite secret material we are done with. Best effort: JS may have copied it. */
export function wipe(bytes: Uint8Array): void {
  bytes.fill(0);
}

/** Write n as 4 big-endian bytes at r[at]. */
export function writeU32(r: Uint8Array, at: number, n: number): void {
  r[at] = (n >>> 24) & 255;
  r[at + 1] = (n >>> 16) & 255;
  r[at + 2] = (n >>> 8) & 255;
  r[at + 3] = n & 255;
}

/** Read 4 big-endian bytes at r[at] as an unsigned integer. */
export function readU32(r: Uint8Array, at: number): number {
  return ((r[at] << 24) >>> 0) + (r[at + 1] << 16) + (r[at + 2] << 8) + r[at + 3];
}

/** 8-byte big-endian encoding of a non-negative safe integer. */
export function u64be(n: number): Uint8Array {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError("u64be: not a non-negative safe integer");
  const out = new Uint8Array(8);
  let hi = Math.floor(n / 0x100000000), lo = n >>> 0;
  for (let i = 7; i >= 4; i--) { out[i] = lo & 255; lo >>>= 8; }
  for (let i = 3; i >= 0; i--) { out[i] = hi & 255; hi >>>= 8; }
  return out;
}
