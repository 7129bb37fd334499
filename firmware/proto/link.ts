// The protected link between a device and its gateway after a join: each direction has its own key,
// a sequence number that only goes up (never reused under one key) and a replay window.
// The same code runs on both ends; only which direction is "ours" differs.

import type { Bytes } from "../bytes.ts";
import type { SymCrypto } from "../crypto/types.ts";
import { DIR_DOWN, DIR_UP, frameNonce, type Codec, type LinkKeys } from "./keys.ts";
import { decodeMessage, encodeMessage, Msg, type InnerMessage, type LinkFrame, type Message } from "./messages.ts";
import { acceptSeq, checkSeq, newWindow, type ReplayWindow } from "./replay.ts";

/** The last sequence number a sender may use; after it the link must be joined again. */
export const MAX_SEQ = 0xffffffff;

export interface Link {
  keys: LinkKeys;
  /** Direction byte of the frames this end sends. */
  txDir: number;
  /** Sequence number of the last frame sent (0: none yet). */
  txSeq: number;
  rx: ReplayWindow;
}

export function newLink(keys: LinkKeys, isDevice: boolean): Link {
  return { keys: keys, txDir: isDevice ? DIR_UP : DIR_DOWN, txSeq: 0, rx: newWindow() };
}

/** The encoded Link frame carrying msg. Throws when the sequence space is spent (join again). */
export function sealMessage(c: SymCrypto, cbor: Codec, link: Link, msg: InnerMessage): Bytes {
  if (link.txSeq >= MAX_SEQ) throw new Error("link: sequence numbers exhausted, join again");
  const seq = ++link.txSeq;
  const key = link.txDir === DIR_UP ? link.keys.up : link.keys.down;
  const sealed = c.seal(link.keys.suite, key, frameNonce(link.keys.suite, link.txDir, 0, seq), cbor.encode(encodeMessage(msg)));
  return cbor.encode(encodeMessage({ t: Msg.Link, seq: seq, sealed: sealed }));
}

/** The inner message of a received Link frame, or the reason it was dropped. State changes only
 *  when the frame is authentic and fresh. */
export function openMessage(c: SymCrypto, cbor: Codec, link: Link, f: LinkFrame): InnerMessage | Error {
  const fresh = checkSeq(link.rx, f.seq);
  if (fresh !== "ok") return new Error(fresh === "replayed" ? "replayed frame" : fresh === "too-old" ? "frame older than the replay window" : "invalid sequence number");
  const rxDir = link.txDir === DIR_UP ? DIR_DOWN : DIR_UP;
  const key = rxDir === DIR_UP ? link.keys.up : link.keys.down;
  const plain = c.open(link.keys.suite, key, frameNonce(link.keys.suite, rxDir, 0, f.seq), f.sealed);
  if (!plain) return new Error("frame failed authentication");
  let m: Message | Error;
  try {
    m = decodeMessage(cbor.decode(plain));
  } catch (e) {
    m = new Error("authentic frame with malformed content: " + (e as Error).message);
  }
  // An authentic frame consumes its sequence number even when its content is bad: it was sent once.
  acceptSeq(link.rx, f.seq);
  if (m instanceof Error) return m;
  if (m.t < Msg.RegisterRequest) return new Error("outer message type " + m.t + " inside the link");
  return m as InnerMessage;
}

export function wipeLink(link: Link): void {
  link.keys.up.fill(0);
  link.keys.down.fill(0);
}
