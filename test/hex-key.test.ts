// The text format of keyproxy's 32-byte key files (gateway/files/hex-key.ts): 64 hex digits in either
// case around any whitespace are the key; anything else is not, and nothing of it is guessed.

import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { parseHexKey } from "../gateway/files/hex-key.ts";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const whitespace = fc.string({ unit: fc.constantFrom(" ", "\n", "\r", "\t"), maxLength: 3 });

test("64 hex digits, in either case and around whitespace, are the key they spell", () => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 32, maxLength: 32 }), fc.boolean(), whitespace, whitespace, (key, capitals, before, after) => {
      const text = capitals ? hex(key).toUpperCase() : hex(key);
      assert.deepEqual(parseHexKey(before + text + after), new Uint8Array(key));
    }),
  );
  assert.deepEqual(parseHexKey("0123456789abcdefABCDEF".padEnd(64, "0")), Uint8Array.from(Buffer.from("0123456789abcdefABCDEF".padEnd(64, "0"), "hex")));
});

test("anything else is not a key: too short, too long, odd, a non-hex digit, whitespace inside", () => {
  const good = "ab".repeat(32);
  for (const text of ["", "\n", good.slice(1), good.slice(2), good + "a", good + "ab", `${good.slice(0, 63)}g`, `0x${good.slice(2)}`, `${good.slice(0, 32)} ${good.slice(32)}`, `${good}\n${good}`]) {
    assert.equal(parseHexKey(text), undefined, JSON.stringify(text));
  }
  fc.assert(
    fc.property(fc.string({ maxLength: 80 }), (text) => {
      const key = parseHexKey(text);
      assert.equal(key === undefined, !/^[0-9a-fA-F]{64}$/.test(text.trim()));
    }),
  );
});

test("the key has memory of its own: no copy of it left in Node's shared pool of small buffers", () => {
  const key = parseHexKey("ab".repeat(32))!;
  assert.equal(key.byteOffset, 0);
  assert.equal(key.buffer.byteLength, 32, "a pooled buffer would sit in an 8 KiB slab shared with other data");
});
