// The frame decoder every byte-stream transport uses (firmware/proto/frame.ts). It never throws: bad
// bytes are dropped while it hunts for the next frame, so any exception is a crash. Its buffer must
// stay bounded (at most one incomplete frame), whatever arrives.

import { encodeFrame, FrameDecoder, MAX_PAYLOAD } from "../../firmware/proto/frame.ts";
import { zlib } from "../../gateway/link/crc32.ts";
import { messageSeeds } from "../seeds.ts";
import type { Target } from "../target.ts";

/** An incomplete frame: the magic, the length, at most MAX_PAYLOAD payload bytes and 3 of the CRC. */
const MAX_BUFFERED = 3 + MAX_PAYLOAD + 3;

export const frameTarget: Target = {
  name: "frame",
  about: "FrameDecoder.push (firmware/proto/frame.ts): byte streams in random chunks",
  async setup(rng) {
    const payloads = messageSeeds(rng);
    const frames = payloads.map((p) => encodeFrame(p, zlib.crc32));
    // Streams of several frames, a maximal one, and noise before a frame.
    const seeds = [...frames, concat(frames.slice(0, 4)), encodeFrame(rng.bytes(MAX_PAYLOAD), zlib.crc32), concat([rng.bytes(5), frames[3]])];
    return {
      seeds: () => seeds,
      run(input) {
        const d = new FrameDecoder(zlib.crc32);
        let got = 0;
        // The same bytes in chunks cut where the input's own bytes say: deterministic, and every cut
        // point gets tried across inputs.
        for (let p = 0; p < input.length; ) {
          const n = 1 + ((input[p] * 7 + p) % 64);
          got += d.push(input.subarray(p, p + n)).length;
          if (d.buf_.length > MAX_BUFFERED) throw new Error(`invariant: decoder buffers ${d.buf_.length} bytes`);
          p += n;
        }
        return got > 0 ? "accepted" : "rejected";
      },
      isRejection: () => false,
    };
  },
};

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}
