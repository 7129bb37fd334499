// A small CBOR (RFC 8949) codec for the device. Espruino subset only (design.md §5): no Map, no
// BigInt, no hoisting, so every function is declared before it is first used.
//
// Encoding is deterministic (RFC 8949 §4.2.1): shortest heads, definite lengths, object keys in
// insertion order. The gateway's cbor-x wrapper (gateway/encoding/cbor.ts) produces the same bytes for the
// types we send, because MAC inputs are CBOR arrays built on both sides.
//
// Decoding is strict and bounded, because its input comes from the air: exactly one item, at most
// MAX_DEPTH nested containers, every declared length checked against the bytes that remain before
// anything is allocated, strict UTF-8, no duplicate map keys. Every failure is Error("cbor: ...").

import { concat } from "./bytes.ts";

declare const KP_CBOR_FULL: boolean | undefined;
/** Espruino's E (its native text conversions), on a board only. */
declare const E: { toUint8Array(s: string): Uint8Array; toString(b: Uint8Array): string };
/** Set by `keyproxy build` in every device bundle (flash/build.ts), unset in Node: where the codec
 *  tests `typeof KP_FIRMWARE`, the build folds the test to true and drops the Node path. */
declare const KP_FIRMWARE: string | undefined;
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
//
// Shaped for an interpreter, within a Puck.js's variables. Espruino runs the source text: every
// statement and call costs about as much as a native SHA-256 of a few bytes, and it reads the text of
// every closure it makes and of every branch it passes over. Every function that lives for good costs
// variables, though (about 7, and one per parameter). So: a few module functions (not closures made
// afresh by every call), the common kinds first, rare kinds after them; the heads' bytes gather in one
// plain array that becomes a Uint8Array only when a byte or text string has to follow, so a message is
// a few native copies, not one typed array per item; ASCII text goes through E.toUint8Array/E.toString.

/** The encoder's output so far: the bytes of heads not yet flushed, then the finished pieces. */
interface Out {
  s_: number[];
  c_: Uint8Array[];
}

/** Full UTF-8 (full builds only; a core build carries ASCII alone: every name in the protocol is). */
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

/** Appends finished bytes after the heads gathered so far. */
function piece(w: Out, b: Uint8Array): void {
  if (w.s_.length) {
    w.c_.push(new Uint8Array(w.s_));
    w.s_ = [];
  }
  w.c_.push(b);
}

/** A head whose argument takes 2, 4 or 8 bytes (m: the major type, shifted). */
function longHead(w: Out, m: number, n: number): void {
  if (n < 65536) w.s_.push(m | 25, n >> 8, n & 255);
  else if (n < 4294967296) w.s_.push(m | 26, n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255);
  else {
    // Division, not shifts, for the high word: shifts are 32-bit and n may have up to 53 bits.
    const hi = Math.floor(n / 4294967296);
    const lo = n % 4294967296;
    w.s_.push(m | 27, hi >>> 24, (hi >>> 16) & 255, (hi >>> 8) & 255, hi & 255, lo >>> 24, (lo >>> 16) & 255, (lo >>> 8) & 255, lo & 255);
  }
}

/** The kinds the protocol does not send often: negative integers beyond the fast path's reach,
 *  floats, non-ASCII text, maps, tags, and what cannot be encoded. Pushes what it can itself; for a
 *  head item() must write, returns [major, argument, bytes after it, items after it]. */
function rareItem(w: Out, v: any, depth: number): [number, number, Uint8Array | undefined, unknown[] | undefined] | undefined {
  if (v === false || v === true || v === null || v === undefined) {
    w.s_.push(v === false ? 0xf4 : v ? 0xf5 : v === null ? 0xf6 : 0xf7);
    return undefined;
  }
  if (typeof v === "number") {
    if (!FULL) throw new Error("cbor: unsupported number");
    // Every other number goes out as a float64: the device never sends floats, so we do not
    // carry the code to find the shortest float form. Decoders read it back exactly.
    const f = new Uint8Array(9);
    f[0] = 0xfb;
    new DataView(f.buffer).setFloat64(1, v);
    piece(w, f);
    return undefined;
  }
  if (typeof v === "string") {
    if (FULL && utf8Encode) {
      const b = utf8Encode(v);
      return [3, b.length, b, undefined];
    }
    throw new Error("cbor: unsupported non-ASCII text");
  }
  // A container: the depth limit also stops cycles, which would otherwise recurse forever.
  if (depth >= MAX_DEPTH) throw new Error("cbor: nested deeper than " + MAX_DEPTH);
  if (FULL && v instanceof Tagged) {
    const t = v.tag;
    if (!(typeof t === "number" && t >= 0 && t <= 9007199254740991 && Math.floor(t) === t)) throw new Error("cbor: tag must be an integer >= 0");
    return [6, t, undefined, [v.value]];
  }
  if (v && typeof v === "object" && v.constructor === Object) {
    const keys = Object.keys(v);
    const kids: unknown[] = [];
    for (const k of keys) kids.push(k, v[k]);
    return [5, keys.length, undefined, kids];
  }
  throw new Error("cbor: cannot encode " + typeof v);
}

/** One item: its head (major type and argument, in the shortest form, §4.2.1), then its bytes or
 *  its items. The protocol's kinds are decided here in few steps; the rest in rareItem. */
function item(w: Out, v: any, depth: number): void {
  let major = 0;
  let n = v;
  let b: Uint8Array | undefined;
  let kids: unknown[] | undefined;
  if (typeof v === "number" && (v < 0 ? -1 - v : v) <= 9007199254740991 && Math.floor(v) === v) {
    if (v < 0) {
      major = 1;
      n = -1 - v;
    }
  } else if (typeof v === "string" && !/[^\x00-\x7f]/.test(v)) {
    // ASCII (Espruino's regular expressions take this class): one native call on a board.
    if (typeof KP_FIRMWARE !== "undefined") b = E.toUint8Array(v);
    else {
      b = new Uint8Array(v.length);
      for (let i = 0; i < v.length; i++) b[i] = v.charCodeAt(i);
    }
    major = 3;
    n = b.length;
  } else if (v instanceof Uint8Array) {
    b = v;
    major = 2;
    n = v.length;
  } else if (Array.isArray(v) && depth < MAX_DEPTH) {
    major = 4;
    n = v.length;
    kids = v;
  } else {
    const x = rareItem(w, v, depth);
    if (!x) return;
    major = x[0];
    n = x[1];
    b = x[2];
    kids = x[3];
  }
  const m = major << 5;
  if (n < 24) w.s_.push(m | n);
  else if (n < 256) w.s_.push(m | 24, n);
  else longHead(w, m, n);
  if (b) piece(w, b);
  if (kids) for (const x of kids) item(w, x, depth + 1);
}

/** Encodes v deterministically. */
export function encode(v: unknown): Uint8Array {
  const w: Out = { s_: [], c_: [] };
  item(w, v, 0);
  if (w.s_.length) w.c_.push(new Uint8Array(w.s_));
  // A single piece is always one this call made (a byte string has a head before it).
  return w.c_.length === 1 ? w.c_[0] : concat(w.c_);
}

// ---- decoding ----
//
// The same shape: module functions over one reader (the input and the position).

/** The input and the position in it. */
interface In {
  b_: Uint8Array;
  p_: number;
}

/** The next n bytes (a view, no copy). n may be any Number up to 2^64, so compare, never allocate first.
 *  Full builds only: the core codec reads its strings and heads inline. */
function take(r: In, n: number): Uint8Array {
  if (n > r.b_.length - r.p_) throw new Error("cbor: truncated input");
  r.p_ += n;
  return r.b_.subarray(r.p_ - n, r.p_);
}

/** The argument of a head. 8-byte arguments beyond 2^53 become the nearest Number (one rounding,
 *  in the addition), so integers that large lose their low bits: none of our messages use them.
 *  Reads its bytes itself rather than through take(): one function fewer alive on a core build. */
function arg(r: In, ai: number): number {
  if (ai < 24) return ai;
  if (ai > 27) throw new Error("cbor: reserved head " + ai);
  // 1, 2 or 4 bytes; an 8-byte argument is its high 4 bytes, then its low 4.
  const n = ai === 27 ? 4 : 1 << (ai - 24);
  if (n > r.b_.length - r.p_) throw new Error("cbor: truncated input");
  const b = r.b_;
  const p = r.p_;
  r.p_ = p + n;
  const v = n === 1 ? b[p] : n === 2 ? (b[p] << 8) | b[p + 1] : ((b[p] << 24) | (b[p + 1] << 16) | (b[p + 2] << 8) | b[p + 3]) >>> 0;
  return ai === 27 ? v * 4294967296 + arg(r, 26) : v;
}

/** Strict UTF-8 decoding (full builds only): undefined for malformed input instead of guessing. */
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

/** Text from its bytes: ASCII through one native call on a board; anything else is UTF-8 on a full
 *  build and refused on a core one. */
function text(x: Uint8Array): string {
  let s = "";
  if (typeof KP_FIRMWARE !== "undefined") s = E.toString(x);
  else for (let i = 0; i < x.length; i++) s += String.fromCharCode(x[i]);
  if (!/[^\x00-\x7f]/.test(s)) return s;
  if (FULL && utf8Decode) {
    const u = utf8Decode(x);
    if (u === undefined) throw new Error("cbor: invalid UTF-8");
    return u;
  }
  throw new Error("cbor: unsupported non-ASCII text");
}

// Full-codec helpers exist only when the build carries the full codec (a helper declared
// unconditionally would stay in the core bundle even when unused).
const float = FULL ? (r: In, n: number): number => {
  if (n === 2) {
    // IEEE 754 binary16, which DataView lacks.
    const x = take(r, 2);
    const h = (x[0] << 8) | x[1];
    const e = (h >> 10) & 31;
    const m = h & 1023;
    const v = e === 0 ? m * 5.960464477539063e-8 : e === 31 ? (m ? NaN : Infinity) : (m + 1024) * Math.pow(2, e - 25);
    return h & 0x8000 ? -v : v;
  }
  // Copy first: a DataView over the input's own buffer would need its byteOffset, and copying 8 bytes is cheap.
  const t = new Uint8Array(n);
  t.set(take(r, n));
  const d = new DataView(t.buffer);
  return n === 4 ? d.getFloat32(0) : d.getFloat64(0);
} : null;

/** True (and consumed) when the next byte is the break that ends an indefinite-length item. */
const atBreak = FULL ? (r: In): boolean => {
  if (take(r, 1)[0] === 0xff) return true;
  r.p_--;
  return false;
} : null;

/** An indefinite-length byte or text string: its definite chunks of the same type (§3.2.3). */
const chunks = FULL ? (r: In, major: number): Uint8Array | string => {
  const parts: Uint8Array[] = [];
  let s = "";
  while (atBreak && !atBreak(r)) {
    const ib = r.b_[r.p_++];
    if (ib >> 5 !== major || (ib & 31) === 31) throw new Error("cbor: bad string chunk");
    const x = take(r, arg(r, ib & 31));
    // Each text chunk must be valid UTF-8 on its own: a character may not straddle chunks.
    if (major === 2) parts.push(x);
    else s += text(x);
  }
  return major === 2 ? concat(parts) : s;
} : null;

/** Every item decodeItem does not take itself (below it, since it recurses into decodeItem). */
let rareDecode: (r: In, major: number, ai: number, depth: number) => unknown;

/** One item. The protocol's kinds (integers, byte and ASCII strings, arrays) in few steps and little
 *  text: Espruino reads a function's whole text on every call, returns included, so the rare kinds
 *  live in rareDecode. */
function decodeItem(r: In, depth: number): any {
  if (r.p_ >= r.b_.length) throw new Error("cbor: truncated input");
  const ib = r.b_[r.p_++];
  const major = ib >> 5;
  const ai = ib & 31;
  if (ai > 27 || major > 4 || (major === 4 && depth >= MAX_DEPTH)) return rareDecode(r, major, ai, depth);
  const n = ai < 24 ? ai : arg(r, ai);
  if (major === 0) return n;
  if (major === 1) return -1 - n;
  // An array's element takes at least one byte: a huge declared count fails before anything is made.
  if (n > r.b_.length - r.p_) throw new Error("cbor: truncated input");
  if (major === 4) {
    const a: unknown[] = [];
    for (let i = 0; i < n; i++) a.push(decodeItem(r, depth + 1));
    return a;
  }
  r.p_ += n;
  const x = r.b_.subarray(r.p_ - n, r.p_);
  return major === 2 ? x : text(x);
}

rareDecode = (r: In, major: number, ai: number, depth: number): unknown => {
  if (major === 7) {
    if (ai >= 20 && ai < 24) return SIMPLE_VALUES[ai - 20];
    if (FULL && float) {
      if (ai < 20) return new Simple(ai);
      if (ai === 24) {
        const s = take(r, 1)[0];
        if (s < 32) throw new Error("cbor: simple value " + s + " in two bytes");
        return new Simple(s);
      }
      if (ai < 28) return float(r, 1 << (ai - 24));
    }
    throw new Error(ai === 31 ? "cbor: unexpected break" : FULL ? "cbor: reserved head " + ai : "cbor: unsupported simple value or float");
  }
  if (major === 2 || major === 3) {
    // Here only with ai 28..31: 28..30 are reserved (arg throws), 31 is an indefinite length.
    if (ai !== 31) arg(r, ai);
    if (FULL && chunks) return chunks(r, major);
    throw new Error("cbor: unsupported indefinite length");
  }
  if (ai === 31 && (major < 2 || major === 6)) throw new Error("cbor: bad indefinite length");
  if (major < 2) arg(r, ai);
  if (depth >= MAX_DEPTH) throw new Error("cbor: nested deeper than " + MAX_DEPTH);
  if (major === 6) {
    if (FULL) {
      const tag = arg(r, ai);
      return new Tagged(tag, decodeItem(r, depth + 1));
    }
    throw new Error("cbor: unsupported tag");
  }
  // An array (4) or a map (5). A definite count is checked against the bytes left (an element takes at
  // least one byte, a map entry two) before the loop, so a huge declared count fails at once.
  if (ai === 31 && !FULL) throw new Error("cbor: unsupported indefinite length");
  const count = ai === 31 ? -1 : arg(r, ai);
  if (count >= 0 && (major === 4 ? count : count * 2) > r.b_.length - r.p_) throw new Error("cbor: truncated input");
  if (major === 4) {
    const a: unknown[] = [];
    for (let i = 0; FULL && atBreak && count < 0 ? !atBreak(r) : i < count; i++) a.push(decodeItem(r, depth + 1));
    return a;
  }
  const o: any = {};
  for (let i = 0; FULL && atBreak && count < 0 ? !atBreak(r) : i < count; i++) {
    if (r.p_ >= r.b_.length) throw new Error("cbor: truncated input");
    const km = r.b_[r.p_] >> 5;
    if (km !== 0 && km !== 1 && km !== 3) throw new Error("cbor: bad map key");
    const k = String(decodeItem(r, depth + 1));
    // Rejected rather than overwritten: two readers must never disagree about what a message says.
    if (Object.prototype.hasOwnProperty.call(o, k) || k === "__proto__") throw new Error("cbor: duplicate map key");
    o[k] = decodeItem(r, depth + 1);
  }
  return o;
};

/** Decodes exactly one CBOR item. Byte strings are views into b (no copy), except indefinite ones. */
export function decode(b: Uint8Array): any {
  if (!(b instanceof Uint8Array)) throw new Error("cbor: not bytes");
  const r: In = { b_: b, p_: 0 };
  const v = decodeItem(r, 0);
  if (r.p_ !== b.length) throw new Error("cbor: trailing bytes");
  return v;
}
