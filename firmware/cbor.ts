// A small CBOR (RFC 8949) codec for the device. Espruino subset only (design.md §5): no Map, no
// BigInt, no hoisting, so every function is declared before it is first used.
//
// Encoding is deterministic (RFC 8949 §4.2.1): shortest heads, definite lengths, object keys in
// insertion order. The gateway's cbor-x wrapper (gateway/cbor.ts) produces the same bytes for the
// types we send, because MAC inputs are CBOR arrays built on both sides.
//
// Decoding is strict and bounded, because its input comes from the air: exactly one item, at most
// MAX_DEPTH nested containers, every declared length checked against the bytes that remain before
// anything is allocated, strict UTF-8, no duplicate map keys. Every failure is Error("cbor: ...").

import { concat } from "./bytes.ts";

declare const KP_CBOR_FULL: boolean | undefined;
/** The full codec: floats, tags, unassigned simple values and indefinite lengths. A board short of
 *  bytes builds without them (boards/index.ts, `cbor: "core"`; flash/build.ts defines KP_CBOR_FULL):
 *  the protocol never uses them, and the core codec refuses them with "cbor: unsupported ...".
 *  Unset (Node, tests): full. */
export const FULL = typeof KP_CBOR_FULL === "undefined" || KP_CBOR_FULL;

/** At most this many arrays, maps and tags inside one another (the recursion depth on the device). */
export const MAX_DEPTH = 16;

/** A tagged item (major type 6), e.g. a COSE structure. */
export class Tagged {
  tag: number;
  value: unknown;
  constructor(tag: number, value: unknown) {
    this.tag = tag;
    this.value = value;
  }
}

/** A simple value without a JavaScript meaning (major type 7: 0..19 and 32..255). Decode only:
 *  the device never sends one, so encode() does not carry the code. */
export class Simple {
  value: number;
  constructor(value: number) {
    this.value = value;
  }
}

/** Simple values 20..23 (0xf4..0xf7). */
const SIMPLE_VALUES = [false, true, null, undefined];

// Every failure throws Error("cbor: <reason>"), written out at each place (a shared helper would be
// one more function alive on the device for good).

// ---- encoding ----

/** Encodes v deterministically. Helpers live inside: on the device a function costs variables for
 *  as long as it exists, and these exist only while an encode runs. */
export function encode(v: unknown): Uint8Array {
  const out: Uint8Array[] = [];
  // Full UTF-8, or on a core build ASCII only (every name in the protocol is ASCII).
  const utf8Encode = FULL ? (s: string): Uint8Array => {
    const out: number[] = [];
    for (let i = 0; i < s.length; i++) {
      let c = s.charCodeAt(i);
      if (c >= 0xd800 && c < 0xdc00 && i + 1 < s.length) {
        const d = s.charCodeAt(i + 1);
        if (d >= 0xdc00 && d < 0xe000) {
          c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
          i++;
        }
      }
      // A lone surrogate is not a character: refused, as the gateway refuses it, never sent half-valid.
      if (c >= 0xd800 && c < 0xe000) throw new Error("cbor: lone surrogate in text");
      if (c < 0x80) out.push(c);
      else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
      else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
      else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    }
    return new Uint8Array(out);
  } : null;

  /** The head of an item: major type and argument, in the shortest form (§4.2.1). n is a safe integer >= 0. */
  function head(major: number, n: number): void {
    const ai = n < 24 ? n : n < 256 ? 24 : n < 65536 ? 25 : n < 4294967296 ? 26 : 27;
    const len = ai < 24 ? 0 : 1 << (ai - 24); // 24..27: 1, 2, 4, 8 argument bytes
    const h = new Uint8Array(1 + len);
    h[0] = (major << 5) | ai;
    // Division, not shifts: shifts are 32-bit and the argument may have up to 53 bits.
    for (let i = len; i > 0; i--) {
      h[i] = n % 256;
      n = Math.floor(n / 256);
    }
    out.push(h);
  }
  function isUint(n: unknown): boolean {
    return typeof n === "number" && n >= 0 && n <= 9007199254740991 && Math.floor(n) === n;
  }
  function item(v: any, depth: number): void {
    if (typeof v === "number") {
      if (isUint(v)) head(0, v);
      else if (isUint(-1 - v)) head(1, -1 - v);
      else if (!FULL) throw new Error("cbor: unsupported number");
      else {
        // Every other number goes out as a float64: the device never sends floats, so we do not
        // carry the code to find the shortest float form. Decoders read it back exactly.
        const f = new Uint8Array(9);
        f[0] = 0xfb;
        new DataView(f.buffer).setFloat64(1, v);
        out.push(f);
      }
    } else if (typeof v === "string") {
      let b: Uint8Array;
      if (FULL && utf8Encode) b = utf8Encode(v);
      else {
        b = new Uint8Array(v.length);
        for (let i = 0; i < v.length; i++) {
          if (v.charCodeAt(i) > 127) throw new Error("cbor: unsupported non-ASCII text");
          b[i] = v.charCodeAt(i);
        }
      }
      head(3, b.length);
      out.push(b);
    } else if (v instanceof Uint8Array) {
      head(2, v.length);
      out.push(v);
    } else if (v === false || v === true || v === null || v === undefined) {
      out.push(new Uint8Array([v === false ? 0xf4 : v ? 0xf5 : v === null ? 0xf6 : 0xf7]));
    } else {
      // A container: the depth limit also stops cycles, which would otherwise recurse forever.
      if (depth >= MAX_DEPTH) throw new Error("cbor: nested deeper than " + MAX_DEPTH);
      if (Array.isArray(v)) {
        head(4, v.length);
        for (const x of v) item(x, depth + 1);
      } else if (FULL && v instanceof Tagged) {
        if (!isUint(v.tag)) throw new Error("cbor: tag must be an integer >= 0");
        head(6, v.tag);
        item(v.value, depth + 1);
      } else if (typeof v === "object" && v.constructor === Object) {
        const keys = Object.keys(v);
        head(5, keys.length);
        for (const k of keys) {
          item(k, depth + 1);
          item(v[k], depth + 1);
        }
      } else throw new Error("cbor: cannot encode " + typeof v);
    }
  }
  item(v, 0);
  return concat(out);
}

// ---- decoding ----

/** Decodes exactly one CBOR item. Byte strings are views into b (no copy), except indefinite ones.
 *  As in encode, the helpers live inside and read the input and position from this call's scope. */
export function decode(b: Uint8Array): any {
  if (!(b instanceof Uint8Array)) throw new Error("cbor: not bytes");
  let pos = 0;
  /** Strict UTF-8 decoding: returns undefined for malformed input instead of guessing. */
  // Strict UTF-8, or on a core build ASCII only.
  const utf8Decode = FULL ? (b: Uint8Array): string | undefined => {
    let s = "";
    let i = 0;
    while (i < b.length) {
      const c = b[i++];
      let cp: number;
      let need: number;
      let min: number;
      if (c < 0x80) { s += String.fromCharCode(c); continue; }
      if (c >= 0xc2 && c < 0xe0) { cp = c & 31; need = 1; min = 0x80; }
      else if (c >= 0xe0 && c < 0xf0) { cp = c & 15; need = 2; min = 0x800; }
      else if (c >= 0xf0 && c < 0xf5) { cp = c & 7; need = 3; min = 0x10000; }
      else return undefined;
      if (i + need > b.length) return undefined;
      for (let k = 0; k < need; k++) {
        const d = b[i++];
        if ((d & 0xc0) !== 0x80) return undefined;
        cp = (cp << 6) | (d & 63);
      }
      if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp < 0xe000)) return undefined;
      if (cp >= 0x10000) {
        cp -= 0x10000;
        s += String.fromCharCode(0xd800 + (cp >> 10), 0xdc00 + (cp & 1023));
      } else s += String.fromCharCode(cp);
    }
    return s;
  } : null;

  /** Fails unless n more bytes remain. n may be any Number up to 2^64, so compare, never allocate first. */
  function need(n: number): void {
    if (n > b.length - pos) throw new Error("cbor: truncated input");
  }
  function bytes(n: number): Uint8Array {
    need(n);
    pos += n;
    return b.subarray(pos - n, pos);
  }
  /** An unsigned big-endian integer of 1, 2 or 4 bytes: exact. */
  function uint(n: number): number {
    need(n);
    let v = 0;
    for (let i = 0; i < n; i++) v = v * 256 + b[pos++];
    return v;
  }
  /** The argument of a head. 8-byte arguments beyond 2^53 become the nearest Number (one rounding,
   *  in the addition), so integers that large lose their low bits: none of our messages use them. */
  function arg(ai: number): number {
    if (ai < 24) return ai;
    if (ai < 27) return uint(1 << (ai - 24));
    if (ai === 27) return uint(4) * 4294967296 + uint(4);
    throw new Error("cbor: reserved head " + ai);
  }
  // Full-codec helpers are made only when the build carries the full codec (a helper declared
  // unconditionally would stay in the core bundle even when unused).
  const float = FULL ? (n: number): number => {
    if (n === 2) {
      // IEEE 754 binary16, which DataView lacks.
      const h = uint(2);
      const e = (h >> 10) & 31;
      const m = h & 1023;
      const v = e === 0 ? m * 5.960464477539063e-8 : e === 31 ? (m ? NaN : Infinity) : (m + 1024) * Math.pow(2, e - 25);
      return h & 0x8000 ? -v : v;
    }
    // Copy first: a DataView over the input's own buffer would need its byteOffset, and copying 8 bytes is cheap.
    const t = new Uint8Array(n);
    t.set(bytes(n));
    const d = new DataView(t.buffer);
    return n === 4 ? d.getFloat32(0) : d.getFloat64(0);
  } : null;
  function text(x: Uint8Array): string {
    if (FULL && utf8Decode) {
      const s = utf8Decode(x);
      if (s === undefined) throw new Error("cbor: invalid UTF-8");
      return s;
    }
    let a = "";
    for (let i = 0; i < x.length; i++) {
      if (x[i] > 127) throw new Error("cbor: unsupported non-ASCII text");
      a += String.fromCharCode(x[i]);
    }
    return a;
  }
  /** True (and consumed) when the next byte is the break that ends an indefinite-length item. */
  const atBreak = FULL ? (): boolean => {
    need(1);
    if (b[pos] !== 0xff) return false;
    pos++;
    return true;
  } : null;
  /** A byte or text string, definite or indefinite (then its definite chunks of the same type, §3.2.3). */
  function str(major: number, ai: number): Uint8Array | string {
    if (ai !== 31) {
      const x = bytes(arg(ai));
      return major === 2 ? x : text(x);
    }
    if (FULL && atBreak) {
      const parts: Uint8Array[] = [];
      let s = "";
      while (!atBreak()) {
        const ib = b[pos++];
        if (ib >> 5 !== major || (ib & 31) === 31) throw new Error("cbor: bad string chunk");
        const x = bytes(arg(ib & 31));
        // Each text chunk must be valid UTF-8 on its own: a character may not straddle chunks.
        if (major === 2) parts.push(x);
        else s += text(x);
      }
      return major === 2 ? concat(parts) : s;
    }
    throw new Error("cbor: unsupported indefinite length");
  }
  function item(depth: number): any {
    need(1);
    const ib = b[pos++];
    const major = ib >> 5;
    const ai = ib & 31;
    if (major === 7) {
      if (ai >= 20 && ai < 24) return SIMPLE_VALUES[ai - 20];
      if (FULL && float) {
        if (ai < 20) return new Simple(ai);
        if (ai === 24) {
          const s = uint(1);
          if (s < 32) throw new Error("cbor: simple value " + s + " in two bytes");
          return new Simple(s);
        }
        if (ai < 28) return float(1 << (ai - 24));
      }
      throw new Error(ai === 31 ? "cbor: unexpected break" : FULL ? "cbor: reserved head " + ai : "cbor: unsupported simple value or float");
    }
    if (major === 2 || major === 3) return str(major, ai);
    if (ai === 31 && (major < 2 || major === 6)) throw new Error("cbor: bad indefinite length");
    if (major === 0) return arg(ai);
    if (major === 1) return -1 - arg(ai);
    if (depth >= MAX_DEPTH) throw new Error("cbor: nested deeper than " + MAX_DEPTH);
    if (major === 6) {
      if (FULL) {
        const tag = arg(ai);
        return new Tagged(tag, item(depth + 1));
      }
      throw new Error("cbor: unsupported tag");
    }
    // An array (4) or a map (5). A definite count is checked against the bytes left (an element takes at
    // least one byte, a map entry two) before the loop, so a huge declared count fails at once.
    if (ai === 31 && !FULL) throw new Error("cbor: unsupported indefinite length");
    const count = ai === 31 ? -1 : arg(ai);
    if (count >= 0) need(major === 4 ? count : count * 2);
    if (major === 4) {
      const a: unknown[] = [];
      for (let i = 0; FULL && atBreak && count < 0 ? !atBreak() : i < count; i++) a.push(item(depth + 1));
      return a;
    }
    const o: any = {};
    for (let i = 0; FULL && atBreak && count < 0 ? !atBreak() : i < count; i++) {
      need(1);
      const km = b[pos] >> 5;
      if (km !== 0 && km !== 1 && km !== 3) throw new Error("cbor: bad map key");
      const k = String(item(depth + 1));
      // Rejected rather than overwritten: two readers must never disagree about what a message says.
      if (Object.prototype.hasOwnProperty.call(o, k) || k === "__proto__") throw new Error("cbor: duplicate map key");
      o[k] = item(depth + 1);
    }
    return o;
  }
  const v = item(0);
  if (pos !== b.length) throw new Error("cbor: trailing bytes");
  return v;
}
