// The wire codec: the device's firmware/cbor.ts and the gateway's gateway/encoding/cbor.ts (cbor-x).
//
// 1. RFC 8949 Appendix A (test/vectors/rfc8949-appendix-a.json): every vector decodes on the device to
//    the published value; every vector whose value the device can send re-encodes to the exact bytes,
//    on both codecs. The decode-only vectors are listed below with the reason.
// 2. Properties (fast-check): the two encoders agree byte for byte and each decodes the other; hostile
//    bytes only ever produce a value or Error("cbor: ..."); depth and length limits hold.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import fc from "fast-check";
import { Decoder, Tag } from "cbor-x";
import { fromHex, toHex } from "../firmware/bytes.ts";
import * as device from "../firmware/cbor.ts";
import * as gateway from "../gateway/encoding/cbor.ts";

const { Tagged, Simple, MAX_DEPTH } = device;

function hex(h: string): Uint8Array {
  const b = fromHex(h.replace(/\s+/g, ""));
  if (!b) throw new Error("bad hex in test: " + h);
  return b;
}

/** Runs f and returns the Error it throws, failing the test if it returns or throws a non-cbor error. */
function cborError(f: () => unknown): Error {
  try {
    f();
  } catch (e) {
    assert.ok(e instanceof Error, "threw a non-Error: " + String(e));
    assert.match(e.message, /^cbor: /, "error without the cbor: prefix: " + e.message);
    return e;
  }
  assert.fail("expected a cbor: error, got a value");
}

/** Either a value or Error("cbor: ..."), nothing else (no TypeError, RangeError, hang ...). */
function valueOrCborError(f: () => unknown): void {
  try {
    f();
  } catch (e) {
    if (!(e instanceof Error) || !e.message.startsWith("cbor: ")) throw new Error("not a cbor: error: " + String(e));
  }
}

// ---------------------------------------------------------------------------------------------------
// RFC 8949 Appendix A

interface Vector {
  hex: string;
  roundtrip: boolean;
  decoded?: unknown;
  diagnostic?: string;
}

// JSON.parse would round the four 20-digit integers; read them as exact BigInt markers instead.
const vectorText = readFileSync(new URL("./vectors/rfc8949-appendix-a.json", import.meta.url), "utf8").replace(
  /("decoded": )(-?\d{16,})(?=[\s,}])/g,
  '$1{ "exactInteger": "$2" }',
);
const VECTORS: Vector[] = JSON.parse(vectorText).vectors;

function isExact(v: unknown): v is { exactInteger: string } {
  return typeof v === "object" && v !== null && "exactInteger" in v;
}

/** A bignum (tag 2 or 3 over big-endian bytes, RFC 8949 §3.4.3) as a BigInt. */
function bignum(t: InstanceType<typeof Tagged>): bigint {
  assert.ok(t.tag === 2 || t.tag === 3, "not a bignum tag: " + t.tag);
  assert.ok(t.value instanceof Uint8Array);
  const n = BigInt("0x0" + toHex(t.value));
  return t.tag === 2 ? n : -1n - n;
}

/** RFC 8949 §8 diagnostic notation of what the device decoder returns. */
function diag(v: unknown): string {
  if (v === undefined) return "undefined";
  if (typeof v === "number") return Number.isNaN(v) ? "NaN" : v === Infinity ? "Infinity" : v === -Infinity ? "-Infinity" : String(v);
  if (typeof v === "string") return JSON.stringify(v);
  if (v instanceof Uint8Array) return "h'" + toHex(v) + "'";
  if (v instanceof Tagged) return v.tag + "(" + diag(v.value) + ")";
  if (v instanceof Simple) return "simple(" + v.value + ")";
  if (Array.isArray(v)) return "[" + v.map(diag).join(", ") + "]";
  if (v !== null && typeof v === "object") {
    return "{" + Object.keys(v).map((k) => JSON.stringify(k) + ": " + diag((v as Record<string, unknown>)[k])).join(", ") + "}";
  }
  return String(v);
}

/** Where the device's data model differs from the published diagnostic, and why. */
const DEVICE_DIAGNOSTIC: Record<string, string> = {
  // Maps decode to plain objects: integer keys become their decimal string (by design, docs in cbor.ts).
  a201020304: '{"1": 2, "3": 4}',
  // An indefinite-length string decodes to its content; the chunking is not kept.
  "5f42010243030405ff": "h'0102030405'",
};

/** roundtrip vectors the device decodes but does not re-encode to the same bytes, and why. */
const DEVICE_DECODE_ONLY: Record<string, string> = {
  "1bffffffffffffffff": "2^64-1 decodes to the nearest Number (2^64), not a safe integer: re-encoded as float64",
  "3bffffffffffffffff": "-2^64 is not a safe integer: re-encoded as float64",
  f90000: "0.0 is integral: the encoder writes the integer 0",
  f98000: "-0.0: the encoder writes the integer 0",
  f93c00: "1.0 is integral: the encoder writes the integer 1",
  f93e00: "half float: the encoder writes every non-integer as float64",
  f97bff: "65504.0 is integral: the encoder writes an integer",
  fa47c35000: "100000.0 is integral: the encoder writes an integer",
  fa7f7fffff: "single float: the encoder writes float64",
  f90001: "half float: the encoder writes float64",
  f90400: "half float: the encoder writes float64",
  f9c400: "-4.0 is integral: the encoder writes an integer",
  f97c00: "half-float Infinity: the encoder writes float64",
  f97e00: "half-float NaN: the encoder writes float64",
  f9fc00: "half-float -Infinity: the encoder writes float64",
  f0: "simple values other than false/true/null/undefined are decode-only on the device",
  f820: "simple values other than false/true/null/undefined are decode-only on the device",
  f8ff: "simple values other than false/true/null/undefined are decode-only on the device",
  a201020304: "integer map keys decode to text keys, which re-encode as text",
};

/** Vectors the gateway refuses although they are well-formed, and why. */
const GATEWAY_REFUSES: Record<string, RegExp> = {
  c074323031332d30332d32315432303a30343a30305a: /tag 0 is not accepted/, // cbor-x would make a Date
  c11a514b67b0: /tag 1 is not accepted/,
  c1fb41d452d9ec200000: /tag 1 is not accepted/,
  "5f42010243030405ff": /cbor-x could not decode/, // cbor-x has no indefinite-length strings
  "7f657374726561646d696e67ff": /cbor-x could not decode/,
};

test("the vector file is the complete Appendix A list", () => {
  assert.equal(VECTORS.length, 82);
  assert.equal(new Set(VECTORS.map((v) => v.hex)).size, 82);
  for (const h of Object.keys(DEVICE_DECODE_ONLY)) assert.ok(VECTORS.some((v) => v.hex === h && v.roundtrip), h);
});

test("RFC 8949 Appendix A: every vector decodes on the device to the published value", () => {
  for (const v of VECTORS) {
    const got = device.decode(hex(v.hex));
    if (v.diagnostic !== undefined) {
      assert.equal(diag(got), DEVICE_DIAGNOSTIC[v.hex] ?? v.diagnostic, v.hex);
    } else if (isExact(v.decoded)) {
      const exact = BigInt(v.decoded.exactInteger);
      if (got instanceof Tagged) assert.equal(bignum(got), exact, v.hex);
      // Integers beyond 2^53 decode to the nearest Number (firmware/cbor.ts readArg).
      else assert.equal(got, Number(exact), v.hex);
    } else {
      assert.deepStrictEqual(got, v.decoded, v.hex);
    }
  }
});

test("RFC 8949 Appendix A: what the device can send re-encodes to the exact bytes, on both codecs", () => {
  let reencoded = 0;
  for (const v of VECTORS) {
    if (!v.roundtrip) continue;
    const value = device.decode(hex(v.hex));
    const encodable = !(v.hex in DEVICE_DECODE_ONLY);
    const again = (() => {
      try {
        return toHex(device.encode(value));
      } catch {
        return "(refused)";
      }
    })();
    if (encodable) {
      assert.equal(again, v.hex, v.hex);
      assert.equal(toHex(gateway.encode(value)), v.hex, "gateway " + v.hex);
      reencoded++;
    } else {
      // Keeps the decode-only list honest: each entry really does not roundtrip.
      assert.notEqual(again, v.hex, v.hex + " roundtrips: remove it from DEVICE_DECODE_ONLY");
    }
  }
  assert.equal(reencoded, 65 - Object.keys(DEVICE_DECODE_ONLY).length);
});

/** Device and gateway results on one footing: Map -> object with decimal keys, bignum -> BigInt, Tag -> Tagged. */
function normalise(v: unknown): unknown {
  if (v instanceof Tagged && (v.tag === 2 || v.tag === 3)) return bignum(v);
  if (v instanceof Tagged || v instanceof Tag) return new Tagged(v.tag as number, normalise(v.value));
  if (v instanceof Uint8Array) return new Uint8Array(v);
  if (Array.isArray(v)) return v.map(normalise);
  const entries: [unknown, unknown][] | null =
    v instanceof Map ? [...v] : v !== null && typeof v === "object" && !(v instanceof Simple) ? Object.entries(v) : null;
  if (!entries) return v;
  const o: Record<string, unknown> = {};
  for (const [k, x] of entries) Object.defineProperty(o, String(k), { value: normalise(x), enumerable: true });
  return o;
}

test("RFC 8949 Appendix A: the gateway decodes what it accepts to the device's value", () => {
  for (const v of VECTORS) {
    const bytes = hex(v.hex);
    if (v.hex in GATEWAY_REFUSES) {
      assert.match(cborError(() => gateway.decode(bytes)).message, GATEWAY_REFUSES[v.hex], v.hex);
      continue;
    }
    if (v.hex.startsWith("f0") || v.hex.startsWith("f8")) {
      // Unassigned simple values: cbor-x has no representation and refuses them.
      cborError(() => gateway.decode(bytes));
      continue;
    }
    assert.deepStrictEqual(normalise(gateway.decode(bytes)), normalise(device.decode(bytes)), v.hex);
  }
});

// ---------------------------------------------------------------------------------------------------
// examples the protocol relies on

test("the gateway keeps integer map keys as a Map, and encodes Map like the device encodes objects", () => {
  const header = new Map<unknown, unknown>([[1, -8], [4, new Uint8Array([0xaa])]]);
  assert.equal(toHex(gateway.encode(header)), "a201270441aa");
  const back = gateway.decode(hex("a201270441aa")) as Map<unknown, unknown>;
  assert.ok(back instanceof Map);
  assert.deepStrictEqual([...back.keys()], [1, 4]);
  assert.deepStrictEqual(back.get(4), new Uint8Array([0xaa]));
  assert.equal(Object.getPrototypeOf(back.get(4)), Uint8Array.prototype);
  assert.equal(toHex(gateway.encode(new Map([["a", 1]]))), toHex(device.encode({ a: 1 })));
  assert.deepStrictEqual(device.decode(hex("a201270441aa")), { 1: -8, 4: new Uint8Array([0xaa]) });
});

test("integer heads are the shortest at every boundary, on both codecs (RFC 8949 §4.2.1)", () => {
  const cases: [number, string][] = [
    [23, "17"], [24, "1818"], [255, "18ff"], [256, "190100"], [65535, "19ffff"], [65536, "1a00010000"],
    [4294967295, "1affffffff"], [4294967296, "1b0000000100000000"], [Number.MAX_SAFE_INTEGER, "1b001fffffffffffff"],
    [-24, "37"], [-25, "3818"], [-256, "38ff"], [-257, "390100"], [-65537, "3a00010000"],
    [-4294967296, "3affffffff"], [-4294967297, "3b0000000100000000"], [-Number.MAX_SAFE_INTEGER, "3b001ffffffffffffe"],
  ];
  for (const [n, h] of cases) {
    assert.equal(toHex(device.encode(n)), h, String(n));
    assert.equal(toHex(gateway.encode(n)), h, "gateway " + n);
    assert.equal(device.decode(hex(h)), n);
    assert.equal(gateway.decode(hex(h)), n);
  }
  // Not safe integers: float64 on both sides.
  for (const n of [0.5, 2 ** 53, -(2 ** 60), NaN, Infinity]) assert.equal(toHex(gateway.encode(n)), toHex(device.encode(n)), String(n));
  assert.equal(toHex(device.encode(0.5)), "fb3fe0000000000000");
  // The gateway writes a BigInt like the equal Number, so a BigInt never sneaks in a longer head.
  assert.equal(toHex(gateway.encode(5n)), "05");
  assert.equal(toHex(gateway.encode(2n ** 64n - 1n)), "1bffffffffffffffff");
});

test("tags: device Tagged and gateway Tag encode alike and decode to each other", () => {
  const sign1 = [new Uint8Array([0xa1, 0x01, 0x27]), {}, new Uint8Array(3), new Uint8Array(2)];
  const d = device.encode(new Tagged(18, sign1));
  assert.equal(toHex(d).slice(0, 4), "d284");
  assert.deepStrictEqual(gateway.encode(gateway.tagged(18, sign1)), d);
  assert.deepStrictEqual(gateway.encode(new Tagged(18, sign1)), d);
  const back = gateway.decode(d) as Tag;
  assert.ok(back instanceof Tag);
  assert.equal(back.tag, 18);
  assert.deepStrictEqual(normalise(back), normalise(device.decode(d)));
});

test("encoders refuse what they cannot represent, with a cbor: error", () => {
  const bad: unknown[] = [() => 1, Symbol("s"), 1n, new Map(), new Set(), new Date(0), new Uint16Array(2), new Tagged(-1, 0), new Tagged(1.5, 0), "\ud800", "a\udc00b", ["\ud800x"]];
  for (const v of bad) cborError(() => device.encode(v));
  for (const v of [() => 1, Symbol("s"), new Set(), new Date(0), new Uint16Array(2), new Tagged(-1, 0), new Map([[1.5, 0]]), "\ud800"]) {
    cborError(() => gateway.encode(v));
  }
  // A cycle is caught by the depth limit instead of overflowing the stack.
  const cyclic: unknown[] = [];
  cyclic.push(cyclic);
  assert.match(cborError(() => device.encode(cyclic)).message, /nested deeper than 16/);
  assert.match(cborError(() => gateway.encode(cyclic)).message, /nested deeper than 16/);
});

test("decoders refuse malformed items with a clear cbor: reason", () => {
  const cases: [string, RegExp][] = [
    ["", /truncated/],
    ["0001", /trailing bytes/],
    ["1c", /reserved head 28/],
    ["1f", /bad indefinite length/],
    ["df00", /bad indefinite length/],
    ["ff", /unexpected break/],
    ["f818", /simple value 24 in two bytes/],
    ["62c328", /invalid UTF-8/],
    ["62eda080", /invalid UTF-8/], // an encoded surrogate
    ["7f61c361bcff", /invalid UTF-8/], // a character split across chunks
    ["5f41016000ff", /bad string chunk/],
    ["5f5f4100ffff", /bad string chunk/],
    ["a2616101616102", /duplicate map key/],
    ["a201006131" + "00", /duplicate map key/], // 1 and "1" are the same object key
    ["a1695f5f70726f746f5f5f00", /duplicate map key/],
    ["a1f600", /bad map key/],
    ["a1410000", /bad map key/],
    ["9f01", /truncated/],
    ["bf0102", /truncated/],
  ];
  for (const [h, why] of cases) {
    const bytes = hex(h);
    assert.match(cborError(() => device.decode(bytes)).message, why, h);
    cborError(() => gateway.decode(bytes));
  }
  cborError(() => device.decode("00" as unknown as Uint8Array));
  cborError(() => gateway.decode([0] as unknown as Uint8Array));
});

// ---------------------------------------------------------------------------------------------------
// (c) limits: depth and declared lengths

function nested(depth: number, open: string, close = ""): Uint8Array {
  return hex(open.repeat(depth) + "00" + close.repeat(depth));
}

test("nesting: 16 containers decode, 17 are refused, on both codecs and for every container kind", () => {
  for (const [open, close] of [["81", ""], ["a16161", ""], ["d860", ""], ["9f", "ff"], ["bf6161", "ff"]]) {
    assert.doesNotThrow(() => device.decode(nested(MAX_DEPTH, open, close)), open);
    assert.doesNotThrow(() => gateway.decode(nested(MAX_DEPTH, open, close)), open);
    assert.match(cborError(() => device.decode(nested(MAX_DEPTH + 1, open, close))).message, /nested deeper than 16/, open);
    assert.match(cborError(() => gateway.decode(nested(MAX_DEPTH + 1, open, close))).message, /nested deeper than 16/, open);
  }
  // A hostile megabyte of openers: refused at depth 17, no stack overflow.
  assert.match(cborError(() => device.decode(new Uint8Array(1 << 20).fill(0x9f))).message, /nested deeper/);
  assert.match(cborError(() => gateway.decode(new Uint8Array(1 << 20).fill(0x81))).message, /nested deeper/);
  let v: unknown = 0;
  for (let i = 0; i < MAX_DEPTH; i++) v = [v];
  assert.deepStrictEqual(device.decode(device.encode(v)), v);
  assert.deepStrictEqual(gateway.encode(v), device.encode(v));
  cborError(() => device.encode([v]));
});

test("huge declared lengths are refused before anything is allocated or decoded", () => {
  const huge = [
    "5bffffffffffffffff", "5b0000000100000000", "7affffffff00", "9bffffffffffffffff00", "9a0000010000",
    "bbffffffffffffffff0000", "ba80000000000000", "b900020000", "5f5bffffffffffffffffff", "7f7a0000ffff61ff",
    "c69b0001000000000000",
  ];
  // Pushes are the decoder's only growth: if a length were trusted, elements would be decoded (pushed)
  // before the input ran out. With the check first, not one element is decoded.
  // (node's mock.method refuses Array.prototype, so the counter is installed by hand)
  const push = Array.prototype.push;
  for (const h of huge) {
    const bytes = hex(h);
    let pushes = 0;
    const e = cborError(() => {
      Array.prototype.push = function (this: unknown[], ...items: unknown[]) {
        pushes++;
        return push.apply(this, items);
      };
      try {
        device.decode(bytes);
      } finally {
        Array.prototype.push = push;
      }
    });
    assert.match(e.message, /truncated/, h);
    assert.equal(pushes, 0, h);
  }
  for (const h of huge) cborError(() => gateway.decode(hex(h)));
});

// ---------------------------------------------------------------------------------------------------
// (a) the two encoders agree, and each decodes the other's bytes

const key = fc.string({ unit: "binary", maxLength: 8 }).filter((k) => k !== "__proto__");
const leaf = fc.oneof(
  fc.integer({ min: -70000, max: 70000 }),
  fc.maxSafeInteger(),
  fc.constantFrom(23, 24, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32, -(2 ** 32), -(2 ** 32) - 1, Number.MAX_SAFE_INTEGER, -Number.MAX_SAFE_INTEGER),
  fc.string({ unit: "binary", maxLength: 40 }),
  fc.uint8Array({ maxLength: 40 }),
  fc.boolean(),
  fc.constant(null),
  fc.constant(undefined),
);
const { value: wireValue } = fc.letrec((tie) => ({
  value: fc.oneof({ maxDepth: 5, depthSize: "small" }, leaf, tie("array"), tie("object")),
  array: fc.array(tie("value"), { maxLength: 6 }),
  object: fc.dictionary(key, tie("value"), { maxKeys: 6, noNullPrototype: true }),
}));

test("property: device.encode and gateway.encode agree byte for byte; each decodes the other's bytes", () => {
  fc.assert(
    fc.property(wireValue, (v) => {
      const d = device.encode(v);
      const g = gateway.encode(v);
      assert.equal(toHex(g), toHex(d));
      assert.deepStrictEqual(device.decode(g), normalise(v));
      assert.deepStrictEqual(normalise(gateway.decode(d)), normalise(v));
    }),
    { numRuns: 2000 },
  );
});

// ---------------------------------------------------------------------------------------------------
// (b) hostile bytes: a value or Error("cbor: ..."), never anything else

test("property: random bytes decode to a value or a cbor: error", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 64 }), (b) => {
      valueOrCborError(() => device.decode(b));
      valueOrCborError(() => gateway.decode(b));
    }),
    { numRuns: 5000 },
  );
});

test("property: truncated and mutated encodings decode to a value or a cbor: error", () => {
  const damaged = fc
    .tuple(wireValue, fc.nat(), fc.nat(255), fc.constantFrom("truncate", "flip", "insert", "delete"))
    .map(([v, at, byte, how]) => {
      const b = device.encode(v);
      const i = b.length ? at % b.length : 0;
      if (how === "truncate") return b.subarray(0, i);
      if (how === "flip") return b.length ? b.map((x, j) => (j === i ? byte : x)) : b;
      const out = Array.from(b);
      if (how === "insert") out.splice(i, 0, byte);
      else out.splice(i, 1);
      return new Uint8Array(out);
    });
  fc.assert(
    fc.property(damaged, (b) => {
      valueOrCborError(() => device.decode(b));
      valueOrCborError(() => gateway.decode(b));
    }),
    { numRuns: 5000 },
  );
});

// ---------------------------------------------------------------------------------------------------
// the gateway's tag policy matches what cbor-x actually does

test("the gateway refuses exactly the tags cbor-x would not hand back as a Tag (probe of cbor-x)", () => {
  const raw = new Decoder({ mapsAsObjects: false, useRecords: false, int64AsNumber: true } as ConstructorParameters<typeof Decoder>[0]);
  const contents = ["40", "00", "80", "a0", "820000", "60"];
  const probe: number[] = [];
  for (let t = 0; t < 0x10100; t++) probe.push(t);
  for (const t of [0x53687264, 55799, 1811939327, 1811939328, 1879048191, 1879052288, 2147483647, 2147483648, 4294967295]) probe.push(t);
  const head = (t: number) => (t < 24 ? (0xc0 | t).toString(16) : t < 256 ? "d8" + toHex(new Uint8Array([t])) : t < 65536 ? "d9" + t.toString(16).padStart(4, "0") : "da" + t.toString(16).padStart(8, "0"));
  let interpreted = 0;
  for (const t of probe) {
    const cborxTurnsItIntoSomethingElse = contents.some((c) => {
      try {
        const v = raw.decode(hex(head(t) + c));
        return !(v instanceof Tag && v.tag === t);
      } catch {
        return true;
      }
    });
    if (!cborxTurnsItIntoSomethingElse || t === 2 || t === 3) continue;
    interpreted++;
    for (const c of contents) {
      const e = cborError(() => gateway.decode(hex(head(t) + c)));
      assert.match(e.message, new RegExp("tag " + t + " is not accepted"), "tag " + t);
    }
  }
  assert.ok(interpreted > 50, "the probe found cbor-x's extensions: " + interpreted);
  // And the tags COSE and CWT use come through as Tag.
  for (const t of [16, 17, 18, 24, 61, 96, 97, 98]) assert.ok(gateway.decode(hex(head(t) + "80")) instanceof Tag, String(t));
});
