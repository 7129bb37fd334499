// The gateway's CBOR codec: cbor-x, configured and fenced so that it speaks exactly the dialect of the
// device's codec (firmware/cbor.ts).
//
// Encoding: deterministic (RFC 8949 §4.2.1) and byte-identical to the device for every type both
// have: integers, text, byte strings, arrays, text-keyed objects, booleans, null, undefined, tags,
// float64. Two things cbor-x would otherwise do differently are handled before it sees the value:
//   - integers of 2^32 and more (in magnitude) would come out as float64; we pass them as BigInt so
//     they get the 8-byte integer head, like the device;
//   - a small BigInt would get the 8-byte head too (not the shortest); we pass it as a Number.
// On top of the device, the gateway encodes `Map` (keys as given: integers and text, for COSE headers
// and CWT claims) and BigInt beyond 2^53 (8-byte head, or tag 2/3 beyond 64 bits).
//
// Decoding: strict and bounded, with the device's rules. The input is first decoded by the device
// codec itself, which rejects anything malformed, truncated, nested deeper than 16, with trailing
// bytes, invalid UTF-8, duplicate keys or keys that are not integers or text, so both sides accept
// exactly the same messages; only then does cbor-x build the value, with maps as `Map` so integer
// keys survive. Tags that cbor-x would turn into something else (Date, Set, RegExp, shared or
// packed references, records, typed arrays ...) are refused, so every tag reaches the caller as a
// cbor-x `Tag`, except bignums (tags 2 and 3), which become BigInt. Integers beyond 2^53 decode to
// the nearest Number, as on the device. Byte strings decode as plain Uint8Array copies. Every error
// is Error("cbor: ...").
//
// Tags: this module re-exports cbor-x's `Tag` (fields `tag` and `value`, like the device's `Tagged`;
// note its constructor takes (value, tag)). Use `tagged(tag, value)` to build one in the device's order.

import { Encoder, Tag } from "cbor-x";
import { decode as strictDecode, MAX_DEPTH, Tagged } from "../../firmware/cbor.ts";

export { Tag };

/** A tag in the device's argument order: tagged(18, [...]) is COSE_Sign1_Tagged. */
export function tagged(tag: number, value: unknown): Tag {
  return new Tag(value, tag);
}

const codec = new Encoder({
  useRecords: false, // no record/structure extension (tags 0xdfff ...)
  mapsAsObjects: false, // decode CBOR maps as Map, so integer keys stay integers
  useTag259ForMaps: false, // a Map encodes as a plain map, not tag 259
  variableMapSize: true, // shortest map heads (otherwise always a 16-bit count)
  tagUint8Array: false, // Uint8Array/Buffer are plain byte strings, not tag 64
  useFloat32: 0, // non-integers always as float64, like the device
  int64AsNumber: true, // 8-byte integers as the nearest Number (not BigInt), like the device
  bundleStrings: false,
  pack: false,
  structuredClone: false, // no value sharing (tags 28/29)
} as ConstructorParameters<typeof Encoder>[0]);

function fail(why: string): never {
  throw new Error("cbor: " + why);
}

const UINT32_LIMIT = 4294967296;
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** A copy of v that cbor-x encodes byte for byte like the device codec, or a cbor: error. */
function prepare(v: unknown, depth: number): unknown {
  if (typeof v === "number") {
    // Integers cbor-x writes as float64 although an integer head fits: hand them over as BigInt.
    if (Number.isSafeInteger(v) && (v >= UINT32_LIMIT || v < -UINT32_LIMIT)) return BigInt(v);
    return v;
  }
  if (typeof v === "bigint") {
    if (v >= -BigInt(Number.MAX_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER)) return prepare(Number(v), depth);
    return v;
  }
  if (typeof v === "string") {
    // cbor-x and the device write a lone surrogate differently (U+FFFD or three bytes): refuse it.
    if (LONE_SURROGATE.test(v)) fail("text with a lone surrogate");
    return v;
  }
  if (typeof v === "boolean" || v === null || v === undefined) return v;
  if (v instanceof Uint8Array) return v;
  if (depth >= MAX_DEPTH) fail("nested deeper than " + MAX_DEPTH);
  if (Array.isArray(v)) return v.map((x) => prepare(x, depth + 1));
  if (v instanceof Tag || v instanceof Tagged) {
    const tag = v.tag as number;
    if (!Number.isSafeInteger(tag) || tag < 0 || tag >= UINT32_LIMIT) fail("tag must be an integer in [0, 2^32)");
    return new Tag(prepare(v.value, depth + 1), tag);
  }
  if (v instanceof Map) {
    const m = new Map<unknown, unknown>();
    for (const [k, x] of v) {
      if (typeof k !== "string" && !Number.isSafeInteger(k)) fail("map keys must be integers or text");
      m.set(prepare(k, depth + 1), prepare(x, depth + 1));
    }
    return m;
  }
  if (typeof v === "object" && Object.getPrototypeOf(v) === Object.prototype) {
    const o: Record<string, unknown> = {};
    for (const k of Object.keys(v)) {
      // defineProperty, not o[k] = ...: a "__proto__" key must stay an ordinary key.
      Object.defineProperty(o, k, { value: prepare((v as Record<string, unknown>)[k], depth + 1), enumerable: true, writable: true, configurable: true });
    }
    return o;
  }
  return fail("cannot encode " + (typeof v === "object" ? Object.prototype.toString.call(v) : typeof v));
}

export function encode(v: unknown): Uint8Array {
  const prepared = prepare(v, 0);
  try {
    // A plain copy: cbor-x returns a Buffer view into its own reusable buffer.
    return new Uint8Array(codec.encode(prepared));
  } catch (e) {
    return fail("cbor-x could not encode: " + (e instanceof Error ? e.message : String(e)));
  }
}

/** True for tag numbers cbor-x decodes into something other than a Tag (cbor-x 1.6, decode.js:
 *  currentExtensions and currentExtensionRanges). test/cbor.test.ts checks this list against cbor-x. */
function cborxInterprets(tag: number): boolean {
  return (
    tag <= 1 || // Date
    (tag >= 4 && tag <= 6) || // decimal fraction, bigfloat, packed reference
    tag === 14 || tag === 15 || // bundled strings
    (tag >= 27 && tag <= 29) || // generic object (RegExp, Error), value sharing
    tag === 51 || // packed table
    (tag >= 64 && tag <= 87) || // typed arrays
    tag === 105 || // legacy record
    (tag >= 216 && tag <= 255) || // packed prefixes and suffixes
    tag === 258 || tag === 259 || // Set, explicit Map
    (tag >= 27647 && tag <= 32767) || // packed prefixes and suffixes
    tag === 55799 || // self-described CBOR (unwrapped)
    (tag >= 0xdff9 && tag <= 0xffff) || // bundled strings, record definitions, records
    tag === 0x53687264 || // shared data
    (tag >= 1811939328 && tag <= 2147483647) // packed prefixes and suffixes
  );
}

/** Refuses the tags cbor-x would interpret, walking the device codec's decoding of the same bytes. */
function checkTags(v: unknown): void {
  if (v instanceof Tagged) {
    const bignum = v.tag === 2 || v.tag === 3;
    if (bignum ? !(v.value instanceof Uint8Array) : cborxInterprets(v.tag)) fail("tag " + v.tag + " is not accepted here");
    checkTags(v.value);
  } else if (Array.isArray(v)) {
    for (const x of v) checkTags(x);
  } else if (v !== null && typeof v === "object" && !(v instanceof Uint8Array)) {
    for (const k of Object.keys(v)) checkTags((v as Record<string, unknown>)[k]);
  }
}

/** cbor-x hands out Buffers that may share memory with the input: give callers their own Uint8Array. */
function plainBytes(v: unknown): unknown {
  if (v instanceof Uint8Array) return new Uint8Array(v);
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) v[i] = plainBytes(v[i]);
    return v;
  }
  if (v instanceof Map) {
    for (const [k, x] of v) v.set(k, plainBytes(x));
    return v;
  }
  if (v instanceof Tag) {
    v.value = plainBytes(v.value);
    return v;
  }
  return v;
}

export function decode(b: Uint8Array): unknown {
  if (!(b instanceof Uint8Array)) fail("input must be a Uint8Array");
  checkTags(strictDecode(b));
  let v: unknown;
  try {
    // cbor-x caches a DataView on its input object: give it a private copy, not the caller's array.
    v = codec.decode(new Uint8Array(b));
  } catch (e) {
    // The device codec accepted the bytes, so this is a form cbor-x does not support (indefinite-length
    // byte or text strings).
    return fail("cbor-x could not decode: " + (e instanceof Error ? e.message : String(e)));
  }
  return plainBytes(v);
}
