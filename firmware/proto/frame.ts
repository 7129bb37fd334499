// One framing for every byte-stream transport (TCP, BLE UART, serial):
//
//   0xA5 | length (u16, big-endian, 1..MAX_PAYLOAD) | payload | CRC-32 (u32, big-endian)
//
// The CRC (zlib's CRC-32, what Espruino's E.CRC32 computes) covers the length and the payload. It
// catches line noise, not attackers: everything after the join is AEAD-protected. On a bad length
// or CRC the decoder drops one byte and hunts for the next 0xA5, so a serial line resynchronises.

import type { Bytes } from "../bytes.ts";

export const FRAME_MAGIC = 0xa5;
export const MAX_PAYLOAD = 1024;
const HEADER = 3;
const TRAILER = 4;

export type Crc32 = (data: Bytes) => number;

export function encodeFrame(payload: Bytes, crc32: Crc32): Bytes {
  if (payload.length < 1 || payload.length > MAX_PAYLOAD) throw new Error("frame: size out of range");
  const out = new Uint8Array(HEADER + payload.length + TRAILER);
  out[0] = FRAME_MAGIC;
  out[1] = payload.length >> 8;
  out[2] = payload.length & 255;
  out.set(payload, HEADER);
  const crc = crc32(out.subarray(1, HEADER + payload.length)) >>> 0;
  const t = HEADER + payload.length;
  out[t] = crc >>> 24;
  out[t + 1] = (crc >>> 16) & 255;
  out[t + 2] = (crc >>> 8) & 255;
  out[t + 3] = crc & 255;
  return out;
}

/** The state of an incremental decoder: bytes of an incomplete frame, and how many bytes were
 *  discarded while hunting for a valid frame (noise, bad CRC, bad length). */
export interface Deframer {
  buf_: Bytes;
  dropped_: number;
  crc32_: Crc32;
}

/** Feeds chunk to the decoder d and returns the payloads of the frames it completed. A plain function
 *  over a plain object: the device keeps one decoder and no class for it. */
export function deframe(d: Deframer, chunk: Bytes): Bytes[] {
  const joined = new Uint8Array(d.buf_.length + chunk.length);
  joined.set(d.buf_, 0);
  joined.set(chunk, d.buf_.length);
  const out: Bytes[] = [];
  let p = 0;
  while (p < joined.length) {
    if (joined[p] !== FRAME_MAGIC) { p++; d.dropped_++; continue; }
    if (joined.length - p < HEADER) break;
    const len = (joined[p + 1] << 8) | joined[p + 2];
    if (len < 1 || len > MAX_PAYLOAD) { p++; d.dropped_++; continue; }
    const end = p + HEADER + len + TRAILER;
    if (joined.length < end) break;
    const t = p + HEADER + len;
    const crc = ((joined[t] << 24) | (joined[t + 1] << 16) | (joined[t + 2] << 8) | joined[t + 3]) >>> 0;
    if ((d.crc32_(joined.subarray(p + 1, t)) >>> 0) !== crc) { p++; d.dropped_++; continue; }
    // A copy made with new Uint8Array(subarray): Espruino's Uint8Array slice() returns a plain Array.
    out.push(new Uint8Array(joined.subarray(p + HEADER, t)));
    p = end;
  }
  d.buf_ = new Uint8Array(joined.subarray(p));
  return out;
}

/** The same decoder as a class, for the gateway and tests: push() bytes as they arrive, get complete
 *  payloads back. */
export class FrameDecoder implements Deframer {
  buf_: Bytes = new Uint8Array(0);
  dropped_ = 0;
  crc32_: Crc32;

  constructor(crc32: Crc32) {
    this.crc32_ = crc32;
  }

  push(chunk: Bytes): Bytes[] {
    return deframe(this, chunk);
  }
}
