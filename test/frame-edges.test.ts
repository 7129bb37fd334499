// The framing (firmware/proto/frame.ts) at its limits: a payload of exactly MAX_PAYLOAD bytes, frames
// whose length field is 0 or past the limit even with a valid CRC (else a line could make a handset
// buffer 64 KB, or hand up an empty payload), a header alone that is already invalid, and the count
// of bytes dropped for a bad CRC. Written for the mutants that survived `npm run mutation --
// firmware/proto/frame.ts` (docs/MUTATION.md).
import { test } from "node:test";
import assert from "node:assert/strict";
import { crc32 as zlibCrc32 } from "node:zlib";
import { encodeFrame, FrameDecoder, FRAME_MAGIC, MAX_PAYLOAD } from "../firmware/proto/frame.ts";

const crc = (b: Uint8Array) => zlibCrc32(b) >>> 0;

/** A frame with any length field and payload, its CRC valid (what encodeFrame would refuse to make). */
function rawFrame(lengthField: number, payload: Uint8Array): Uint8Array {
  const body = new Uint8Array([lengthField >> 8, lengthField & 255, ...payload]);
  const c = crc(body);
  return new Uint8Array([FRAME_MAGIC, ...body, c >>> 24, (c >>> 16) & 255, (c >>> 8) & 255, c & 255]);
}

test("a payload of exactly MAX_PAYLOAD bytes is framed and deframed; one more is refused", () => {
  const most = new Uint8Array(MAX_PAYLOAD).map((_, i) => i & 255);
  const out = new FrameDecoder(crc).push(encodeFrame(most, crc));
  assert.equal(out.length, 1);
  assert.deepEqual(out[0], most);
  assert.throws(() => encodeFrame(new Uint8Array(MAX_PAYLOAD + 1), crc), /frame: size out of range/);
  assert.throws(() => encodeFrame(new Uint8Array(0), crc), /frame: size out of range/);
});

test("a length field of 0, or past MAX_PAYLOAD, is noise even under a valid CRC: nothing is handed up or waited for", () => {
  for (const [field, payload] of [[0, new Uint8Array(0)], [MAX_PAYLOAD + 1, new Uint8Array(MAX_PAYLOAD + 1)]] as const) {
    const d = new FrameDecoder(crc);
    const good = encodeFrame(new Uint8Array([7]), crc);
    const out = d.push(new Uint8Array([...rawFrame(field, payload), ...good]));
    assert.deepEqual(out, [new Uint8Array([7])], `length ${field}: only the good frame after it`);
    assert.ok(d.dropped_ > 0, `length ${field}: counted as dropped`);
    assert.equal(d.buf_.length, 0, `length ${field}: nothing held back`);
  }
});

test("a header alone whose length is invalid is dropped at once, not held for more bytes", () => {
  const d = new FrameDecoder(crc);
  assert.deepEqual(d.push(new Uint8Array([FRAME_MAGIC, 0, 0])), []);
  assert.equal(d.dropped_, 3);
  assert.equal(d.buf_.length, 0);
});

test("a frame with a bad CRC counts its bytes as dropped while the decoder hunts past it", () => {
  const d = new FrameDecoder(crc);
  const bad = encodeFrame(new Uint8Array([1, 2, 3]), crc);
  bad[bad.length - 1] ^= 1;
  assert.deepEqual(d.push(bad), []);
  assert.equal(d.dropped_, bad.length);
});
