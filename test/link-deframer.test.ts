// The gateway's frame reader for unauthenticated peers (gateway/link/deframer.ts) against the device's
// (firmware/proto/frame.ts deframe): the same frames and the same one-byte resynchronisation on any
// bytes in any chunks, plus what only the gateway does: a length above what the connection may carry
// now dropped before any byte waits for it or any CRC is computed, every CRC failure reported, the
// limit asked again after each frame, nothing read once the connection stopped, and never more than
// one frame's bytes pending.

import { test } from "node:test";
import assert from "node:assert/strict";
import { crc32 as zlibCrc32 } from "node:zlib";
import fc from "fast-check";
import { encodeFrame, FrameDecoder, FRAME_MAGIC, MAX_PAYLOAD } from "../firmware/proto/frame.ts";
import { LinkDeframer, type DeframerHooks } from "../gateway/link/deframer.ts";

const HEADER = 3;
const TRAILER = 4;
const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

/** A deframer whose CRC calls are counted, with what it handed over. */
function reader(opts: { max?: () => number; onFrame?: (payload: Uint8Array) => void; stopped?: () => boolean } = {}) {
  const seen = { frames: [] as string[], crcFailures: 0, crcCalls: 0 };
  const crc = (b: Uint8Array) => {
    seen.crcCalls++;
    return zlibCrc32(b) >>> 0;
  };
  const hooks: DeframerHooks = {
    maxPayload: opts.max ?? (() => MAX_PAYLOAD),
    onFrame: (p) => {
      seen.frames.push(hex(p));
      opts.onFrame?.(p);
    },
    onCrcFailure: () => seen.crcFailures++,
    stopped: opts.stopped ?? (() => false),
  };
  const d = new LinkDeframer(crc, hooks);
  return { d, seen, pending: () => (d as unknown as { pending: Uint8Array }).pending };
}

const crc = (b: Uint8Array) => zlibCrc32(b) >>> 0;

/** A stream of good frames, corrupted frames and noise (the magic byte included), and how to cut it. */
const stream = fc
  .array(
    fc.oneof(
      fc.record({ kind: fc.constant("frame" as const), payload: fc.uint8Array({ minLength: 1, maxLength: 200 }) }),
      fc.record({ kind: fc.constant("corrupt" as const), payload: fc.uint8Array({ minLength: 1, maxLength: 200 }), at: fc.nat() }),
      fc.record({ kind: fc.constant("noise" as const), bytes: fc.uint8Array({ maxLength: 12 }), magic: fc.boolean() }),
    ),
    { maxLength: 10 },
  )
  .map((items) => {
    const parts: number[] = [];
    for (const it of items) {
      if (it.kind === "noise") parts.push(...(it.magic ? [FRAME_MAGIC, ...it.bytes] : it.bytes));
      else {
        const f = encodeFrame(it.payload, crc);
        if (it.kind === "corrupt") f[it.at % f.length] ^= 0x21;
        parts.push(...f);
      }
    }
    return Uint8Array.from(parts);
  });
const cuts = fc.array(fc.integer({ min: 1, max: 300 }), { minLength: 1, maxLength: 8 });

function feed(push: (chunk: Uint8Array) => void, all: Uint8Array, sizes: number[]): void {
  for (let p = 0, i = 0; p < all.length; i++) {
    const n = sizes[i % sizes.length];
    push(all.subarray(p, p + n));
    p += n;
  }
}

test("on any bytes in any chunks, the gateway's reader hands over what the device's would, and drops as many bytes", () => {
  fc.assert(
    fc.property(stream, cuts, (all, sizes) => {
      const device = new FrameDecoder(crc);
      const deviceFrames: string[] = [];
      feed((c) => deviceFrames.push(...device.push(c).map(hex)), all, sizes);
      const { d, seen, pending } = reader();
      feed((c) => d.push(c), all, sizes);
      assert.deepEqual(seen.frames, deviceFrames);
      assert.equal(d.discarded, device.dropped_);
      assert.deepEqual(pending(), device.buf_, "the same incomplete frame waits");
      // Every CRC computed either handed a frame over or was reported as a failure.
      assert.equal(seen.crcFailures, seen.crcCalls - seen.frames.length);
    }),
  );
});

test("a length above what the connection may carry now is dropped at once: no byte waits for it, no CRC is computed", () => {
  const { d, seen, pending } = reader({ max: () => 250 });
  const big = encodeFrame(new Uint8Array(251).fill(7), crc);
  d.push(big.subarray(0, HEADER));
  assert.equal(pending().length, 0, "not a candidate: its first byte is dropped and the next two hold no magic");
  assert.equal(d.discarded, HEADER);
  d.push(big.subarray(HEADER));
  assert.equal(seen.crcCalls, 0);
  assert.deepEqual(seen.frames, []);
  // Exactly the limit is a frame.
  const most = new Uint8Array(250).fill(9);
  d.push(encodeFrame(most, crc));
  assert.deepEqual(seen.frames, [hex(most)]);
  assert.equal(seen.crcCalls, 1);
  // A limit above the format's own is held to the format's.
  const over = reader({ max: () => 70_000 });
  const field = MAX_PAYLOAD + 1;
  over.d.push(Uint8Array.of(FRAME_MAGIC, field >> 8, field & 255, 1, 2, 3));
  assert.equal(over.pending().length, 0);
  assert.equal(over.d.discarded, 6);
});

test("a length field of 0 is noise even under a valid CRC; each payload handed over has memory of its own", () => {
  const body = Uint8Array.of(0, 0);
  const c = crc(body);
  const empty = Uint8Array.of(FRAME_MAGIC, ...body, c >>> 24, (c >>> 16) & 255, (c >>> 8) & 255, c & 255);
  const payloads: Uint8Array[] = [];
  const { d, seen } = reader({ onFrame: (p) => payloads.push(p) });
  const one = Uint8Array.of(42);
  d.push(Uint8Array.from([...empty, ...encodeFrame(one, crc)]));
  assert.deepEqual(seen.frames, [hex(one)]);
  assert.equal(d.discarded, empty.length);
  assert.equal(payloads[0].buffer.byteLength, 1, "a copy: a view would keep the whole chunk alive with the frame");
});

test("the limit is asked again after each frame: a frame that raises it lets the next, in the same chunk, through", () => {
  let limit = 10;
  const { d, seen } = reader({ max: () => limit, onFrame: () => (limit = MAX_PAYLOAD) });
  const small = new Uint8Array(10).fill(1);
  const large = new Uint8Array(400).fill(2);
  d.push(Uint8Array.from([...encodeFrame(small, crc), ...encodeFrame(large, crc)]));
  assert.deepEqual(seen.frames, [hex(small), hex(large)]);
  // And the other way: a frame that lowers it drops the next one at its header.
  let limit2 = MAX_PAYLOAD;
  const lowered = reader({ max: () => limit2, onFrame: () => (limit2 = 10) });
  lowered.d.push(Uint8Array.from([...encodeFrame(large, crc), ...encodeFrame(large, crc)]));
  assert.deepEqual(lowered.seen.frames, [hex(large)]);
  assert.equal(lowered.seen.crcCalls, 1);
});

test("once the connection stopped, nothing more is read: not the rest of the chunk, not later chunks, nothing kept", () => {
  let closed = false;
  const { d, seen, pending } = reader({ onFrame: () => (closed = true), stopped: () => closed });
  const a = new Uint8Array([1, 2, 3]);
  const b = new Uint8Array([4, 5, 6]);
  const fb = encodeFrame(b, crc);
  d.push(Uint8Array.from([...encodeFrame(a, crc), ...encodeFrame(b, crc), ...fb.subarray(0, 5)]));
  assert.deepEqual(seen.frames, [hex(a)]);
  assert.equal(pending().length, 0);
  d.push(encodeFrame(b, crc));
  assert.deepEqual(seen.frames, [hex(a)]);
  assert.equal(seen.crcCalls, 1);
  assert.equal(d.discarded, 0);
});

test("never more than one frame's bytes pending, and those in memory of their own, not the chunk's", () => {
  fc.assert(
    fc.property(stream, cuts, fc.integer({ min: 1, max: MAX_PAYLOAD }), (all, sizes, max) => {
      const { d, pending } = reader({ max: () => max });
      feed((c) => {
        const before = new Uint8Array(c.length + 64);
        before.set(c, 32);
        d.push(before.subarray(32, 32 + c.length));
        const left = pending();
        assert.ok(left.length < HEADER + max + TRAILER, `${left.length} bytes pending with a limit of ${max}`);
        assert.equal(left.byteLength, left.buffer.byteLength, "a copy, not a view keeping the chunk alive");
      }, all, sizes);
    }),
  );
});
