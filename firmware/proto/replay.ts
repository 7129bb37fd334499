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

/** The window check and update in one function (one live function on the device, not two).
 *  record false: "ok", or why the frame must be dropped without opening it; nothing changes.
 *  record true: marks seq as seen and returns "ok". Only after record-false said "ok" and the frame
 *  authenticated, so a forged frame can never move the window. */
export function replay(w: ReplayWindow, seq: number, record: boolean): "ok" | "replayed" | "too-old" | "invalid" {
  if (!(seq >= 1 && seq <= 0xffffffff) || seq !== Math.floor(seq)) return "invalid";
  const d = w.top - seq;
  if (record) {
    if (d < 0) {
      w.bits = -d >= WINDOW_SIZE ? 1 : ((w.bits << -d) | 1) >>> 0;
      w.top = seq;
    } else w.bits = (w.bits | (1 << d)) >>> 0;
    return "ok";
  }
  if (d < 0) return "ok";
  if (d >= WINDOW_SIZE) return "too-old";
  return (w.bits >>> d) & 1 ? "replayed" : "ok";
}
