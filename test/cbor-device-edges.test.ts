// The edges of the device's CBOR codec (firmware/cbor.ts, the full build as Node runs it) that the
// RFC 8949 vectors in test/cbor.test.ts do not reach: UTF-8 both ways against Node's own (TextDecoder
// with fatal, Buffer) at every length boundary and on random input, every proper prefix of a
// message refused as truncated (not as something else), the reserved heads and their texts, maps
// with negative keys, tags' numbers, and what the encoder refuses. Written to kill the mutants that
// survived `npm run mutation -- firmware/cbor.ts` (docs/MUTATION.md); the core build's refusals are
// test/cbor-core.test.ts's.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { fromHex, toHex } from "../firmware/bytes.ts";
import { decode, encode, Tagged } from "../firmware/cbor.ts";

const hex = toHex;
const h = (s: string): Uint8Array => fromHex(s.replace(/ /g, ""))!;
const cborError = (message: string) => ({ message: "cbor: " + message });
/** A text string item (major type 3) around raw bytes, valid UTF-8 or not. */
const textItem = (b: Uint8Array): Uint8Array => new Uint8Array([...(b.length < 24 ? [0x60 | b.length] : [0x78, b.length]), ...b]);
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

describe("UTF-8 on the device's codec", () => {
  test("decoding: each length's first and last code point taken; overlong forms, surrogates and beyond U+10FFFF refused", () => {
    const good = ["7f", "c280", "dfbf", "e0a080", "ed9fbf", "ee8080", "efbfbf", "f0908080", "f48fbfbf"];
    const bad = ["80", "c0af", "c1bf", "e080af", "e09fbf", "eda080", "edbfbf", "f08fbfbf", "f4908080", "f5808080", "f8888080", "84808080", "8c808080", "fc808080", "ff", "c2", "e282", "f09080", "c241", "e28241"];
    for (const x of good) assert.equal(decode(textItem(h(x))), strictUtf8.decode(h(x)), x);
    for (const x of bad) {
      assert.throws(() => strictUtf8.decode(h(x)), TypeError, `Node refuses ${x} too`);
      assert.throws(() => decode(textItem(h("41" + x))), cborError("invalid UTF-8"), x);
    }
  });

  test("decoding agrees with a strict UTF-8 decoder on random bytes", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 40 }), (b) => {
        let want: string | undefined;
        try {
          want = strictUtf8.decode(b);
        } catch {
          want = undefined;
        }
        let got: string | undefined;
        try {
          got = decode(textItem(b));
        } catch (e) {
          assert.equal((e as Error).message, "cbor: invalid UTF-8");
          got = undefined;
        }
        assert.equal(got, want);
      }),
      { numRuns: 2000 },
    );
  });

  test("encoding: every length's boundaries and surrogate pairs as Node writes them; lone surrogates refused", () => {
    for (const s of ["\u007f", "\u0080", "\u07ff", "\u0800", "\ud7ff", "\ue000", "\uffff", "\u{10000}", "\u{10ffff}", "a\u{1f600}b", "\u00e9\u4e2d"]) {
      const b = new Uint8Array(Buffer.from(s, "utf8"));
      assert.equal(hex(encode(s)), hex(textItem(b)), JSON.stringify(s));
      assert.equal(decode(encode(s)), s);
    }
    for (const s of ["\ud800", "a\ud800", "\ud800a", "\udc00", "\udfff", "\ud83d\ud83d", "\ue000\udc00", "\udc00\udc00", "\ud800\ue000"]) {
      assert.throws(() => encode(s), cborError("lone surrogate in text"), JSON.stringify(s));
    }
  });

  test("encoding agrees with Node on any well-formed text", () => {
    fc.assert(
      fc.property(fc.string({ unit: "grapheme", maxLength: 30 }), (s) => {
        assert.equal(hex(encode(s)), hex(textItem(new Uint8Array(Buffer.from(s, "utf8")))));
      }),
      { numRuns: 1000 },
    );
  });
});

describe("decoding refusals", () => {
  test("every proper prefix of a message is refused as truncated, whatever it cuts", () => {
    const value = [1, -300, "text", h("0102030405"), { a: [true, null], "-1": 65536 }, 4294967296, 1.5, new Tagged(7, h("aa")), "\u00e9", [[], {}]];
    const bytes = encode(value);
    assert.deepEqual(hex(encode(decode(bytes))), hex(bytes));
    for (let n = 0; n < bytes.length; n++) assert.throws(() => decode(bytes.subarray(0, n)), cborError("truncated input"), `${n} of ${bytes.length} bytes`);
    // Items that declare more than is left, after other bytes (the check counts from where it is).
    for (const x of ["82 01 43 01", "82 01 a1 01", "82 01 9a 00000004 01", "82 01 fb 3ff0", "82 01 f9 3c", "82 01 1a 0001", "82 01 d8", "82 01 7f 61"]) {
      assert.throws(() => decode(h(x)), cborError("truncated input"), x);
    }
  });

  test("reserved heads, a misplaced break and bad chunks say so", () => {
    for (const [x, why] of [
      ["1c", "reserved head 28"], ["3d", "reserved head 29"], ["5c", "reserved head 28"], ["7e", "reserved head 30"],
      ["9c", "reserved head 28"], ["bd", "reserved head 29"], ["dc00", "reserved head 28"],
      ["fc" + "00".repeat(16), "reserved head 28"], ["fd" + "00".repeat(16), "reserved head 29"], ["fe", "reserved head 30"],
      ["ff", "unexpected break"], ["1f", "bad indefinite length"], ["3f", "bad indefinite length"], ["df00", "bad indefinite length"],
      ["5f 61 61 ff", "bad string chunk"], ["7f 5f ff ff", "bad string chunk"], ["f8 10", "simple value 16 in two bytes"],
    ] as const) {
      assert.throws(() => decode(h(x)), cborError(why), x);
    }
    assert.throws(() => decode("a0" as unknown as Uint8Array), cborError("not bytes"));
  });

  test("maps take integer keys of either sign and text keys; other keys are refused", () => {
    assert.deepEqual(decode(h("a2 20 00 01 61 61")), { "-1": 0, "1": "a" });
    assert.deepEqual(decode(h("a1 61 61 01")), { a: 1 });
    assert.deepEqual(decode(h("82 a1 61 61 01 02")), [{ a: 1 }, 2]);
    assert.deepEqual(decode(h("bf 20 00 ff")), { "-1": 0 });
    for (const x of ["a1 41 61 00", "a1 80 00", "a1 f5 00", "a1 c1 00 00"]) assert.throws(() => decode(h(x)), cborError("bad map key"), x);
    assert.throws(() => decode(h("a2 01 00 61 31 00")), cborError("duplicate map key"), "1 and \"1\" are one key on the device");
  });
});

describe("encoding refusals", () => {
  test("tag numbers: whole and non-negative, up to 2^53 - 1", () => {
    assert.equal(hex(encode(new Tagged(2 ** 53 - 1, 0))), "db001fffffffffffff00");
    for (const t of [-1, 1.5, 2 ** 53, NaN, "7"]) assert.throws(() => encode(new Tagged(t as number, 0)), cborError("tag must be an integer >= 0"), String(t));
  });

  test("only plain objects become maps", () => {
    assert.equal(hex(encode({ a: 1 })), "a1616101");
    class Point {
      x = 1;
    }
    for (const v of [new Point(), new Date(0), new Map([[1, 2]])]) assert.throws(() => encode(v), cborError("cannot encode object"), String(v));
  });
});
