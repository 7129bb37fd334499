// The gateway's own reader of the frame format (docs/PROTOCOL.md §1, firmware/proto/frame.ts), for
// bytes from peers nobody has authenticated yet. Same format and the same one-byte resynchronisation
// as the device's deframe(), plus what a server facing the internet needs and a handset does not (so
// the device's bundle stays as small as it is):
//
// - the largest payload the connection's state can legitimately carry is asked for before every
//   header: a length above it is dropped as cheaply as a bad magic byte, before any byte waits for
//   it and before any CRC is computed (an unjoined peer can only send a JoinRequest, some 250 bytes at
//   most, so "A5 04 00" from it is not a 1 KB candidate to buffer and CRC);
// - every CRC failure is reported, so the connection can count it against its bad-frame budget (an
//   attacker can make a resynchroniser CRC one candidate per few bytes it sends);
// - frames are handed over one by one as they complete, so a frame that changes the connection's
//   state (a join) changes the limit for the very next header, and a connection closed by one frame
//   reads nothing after it.

import { FRAME_MAGIC, MAX_PAYLOAD, type Crc32 } from "../../firmware/proto/frame.ts";

const HEADER = 3;
const TRAILER = 4;

export interface DeframerHooks {
  /** The largest payload acceptable now (1..MAX_PAYLOAD). */
  maxPayload(): number;
  /** One complete frame, CRC checked. */
  onFrame(payload: Uint8Array): void;
  /** A candidate frame whose CRC did not match. */
  onCrcFailure(): void;
  /** True once the connection is closed: nothing more is read. */
  stopped(): boolean;
}

export class LinkDeframer {
  /** Bytes of a frame not complete yet: never more than one frame of the largest size allowed. */
  private pending: Uint8Array = new Uint8Array(0);
  /** Bytes thrown away while hunting for a frame (noise, impossible lengths, bad CRCs). */
  discarded = 0;

  constructor(private crc32: Crc32, private hooks: DeframerHooks) {}

  push(chunk: Uint8Array): void {
    const h = this.hooks;
    let bytes = chunk;
    if (this.pending.length) {
      bytes = new Uint8Array(this.pending.length + chunk.length);
      bytes.set(this.pending, 0);
      bytes.set(chunk, this.pending.length);
    }
    let p = 0;
    while (p < bytes.length && !h.stopped()) {
      if (bytes[p] !== FRAME_MAGIC) { p++; this.discarded++; continue; }
      if (bytes.length - p < HEADER) break;
      const len = (bytes[p + 1] << 8) | bytes[p + 2];
      if (len < 1 || len > Math.min(MAX_PAYLOAD, h.maxPayload())) { p++; this.discarded++; continue; }
      const end = p + HEADER + len + TRAILER;
      if (bytes.length < end) break;
      const t = p + HEADER + len;
      const crc = ((bytes[t] << 24) | (bytes[t + 1] << 16) | (bytes[t + 2] << 8) | bytes[t + 3]) >>> 0;
      if ((this.crc32(bytes.subarray(p + 1, t)) >>> 0) !== crc) {
        p++;
        this.discarded++;
        h.onCrcFailure();
        continue;
      }
      const payload = bytes.slice(p + HEADER, t);
      p = end;
      h.onFrame(payload);
    }
    // A copy, so a large chunk is not kept alive by the few bytes of it still pending.
    this.pending = h.stopped() ? new Uint8Array(0) : bytes.slice(p);
  }
}
