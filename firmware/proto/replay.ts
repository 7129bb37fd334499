// 32-entry sliding replay window (RFC 4303 §3.4.3 style) for one direction of a link or SA.
// Sequence numbers start at 1; 0 is never valid. Callers check() before opening a frame and
// accept() only after the AEAD tag verified, so a forged frame cannot move the window.

export const WINDOW_SIZE = 32;

export interface ReplayWindow {
  /** Highest sequence number accepted so far (0: none yet). */
  top: number;
  /** Bit i set: sequence number top - i has been accepted. */
  bits: number;
}

export function newWindow(): ReplayWindow {
  return { top: 0, bits: 0 };
}

/** "ok", or why the frame must be dropped without opening it. */
export function checkSeq(w: ReplayWindow, seq: number): "ok" | "replayed" | "too-old" | "invalid" {
  if (!(seq >= 1 && seq <= 0xffffffff) || seq !== Math.floor(seq)) return "invalid";
  if (seq > w.top) return "ok";
  const d = w.top - seq;
  if (d >= WINDOW_SIZE) return "too-old";
  return (w.bits >>> d) & 1 ? "replayed" : "ok";
}

/** Records seq as seen. Only call after checkSeq returned "ok" and the frame authenticated. */
export function acceptSeq(w: ReplayWindow, seq: number): void {
  if (seq > w.top) {
    const shift = seq - w.top;
    w.bits = shift >= WINDOW_SIZE ? 1 : ((w.bits << shift) | 1) >>> 0;
    w.top = seq;
  } else {
    w.bits = (w.bits | (1 << (w.top - seq))) >>> 0;
  }
}
