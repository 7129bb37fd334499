// The protected link between a device and its gateway after a join: each direction has its own key,
// a sequence number that only goes up (never reused under one key) and a replay window.
// The same code runs on both ends; only which direction is "ours" differs.

import type { Bytes } from "../bytes.ts";
import type { SymCrypto } from "../crypto/types.ts";
import { SUITE_XSALSA20_POLY1305 } from "../crypto/types.ts";
import { DIR_DOWN, DIR_GROUP, DIR_UP, MAX_SENDERS, type Codec, type LinkKeys } from "./keys.ts";
import { decodeMessage, encodeMessage, Msg, type InnerMessage, type LinkFrame, type Message } from "./messages.ts";
import { replay, type ReplayWindow } from "./replay.ts";

declare const KP_GROUPS: boolean | undefined;
/** Whether this build carries group SAs: always in Node; on a device only when built with --groups
 *  (flash/build.ts defines KP_GROUPS), so a bundle without groups pays no byte for them. esbuild
 *  folds the test where it is used when the define makes it a literal. */
export const GROUPS = typeof KP_GROUPS === "undefined" || KP_GROUPS;

/** The last sequence number a sender may use; after it the link must be joined again. */
export const MAX_SEQ = 0xffffffff;

/** Why a received frame was dropped. Numbers, not sentences, to keep the device bundle small;
 *  DROP_REASONS spells them out for logs. */
export const enum Drop {
  Replayed = 1,
  TooOld = 2,
  BadSeq = 3,
  Forged = 4,
  BadContent = 5,
  OuterInLink = 6,
}

export const DROP_REASONS: { [d: number]: string } = {
  1: "replayed frame",
  2: "frame older than the replay window",
  3: "invalid sequence number",
  4: "frame failed authentication",
  5: "authentic frame with malformed content",
  6: "outer message inside the link",
  7: "the SA's message limit is used up",
  8: "no SA with this SPI",
};

export interface Link {
  keys_: LinkKeys;
  /** Direction byte of the frames this end sends. */
  txDir_: number;
  /** Sequence number of the last frame sent (0: none yet). */
  txSeq_: number;
  rx_: ReplayWindow;
  /** Group SAs only (txDir_ DIR_GROUP): this member's sender index, and one replay window per sender,
   *  by index, each made on its sender's first authentic frame (so at most MAX_SENDERS). */
  me_?: number;
  rxs_?: ReplayWindow[];
}

export function newLink(keys: LinkKeys, isDevice: boolean): Link {
  return { keys_: keys, txDir_: isDevice ? DIR_UP : DIR_DOWN, txSeq_: 0, rx_: { top: 0, bits: 0 } };
}

/** Seals or opens one frame of a link (spi 0) or SA, in one function (one live function on the
 *  device, not three). Sealing (open false) returns the encoded outer frame, a Link frame or an SaData
 *  frame, under the next sequence number, and throws when the sequence space is spent (join or rekey
 *  again). Opening returns the plaintext, or why it was dropped; the replay window moves only for a
 *  frame that is fresh and authentic. The nonce is (direction, spi, seq) (docs/PROTOCOL.md §4). */
export function crypt(c: SymCrypto, cbor: Codec, link: Link, spi: number, seq: number, data: Bytes, open: boolean): Bytes | Drop {
  const k = link.keys_;
  // A group frame's seq carries its sender's index above the 32-bit sequence number, and the nonce's
  // bytes 5-8 (zero on a link or pairwise SA) carry the index: members never share a nonce. (GROUPS
  // is written out at each use: a build without groups folds each one away.)
  let from = GROUPS && link.txDir_ === DIR_GROUP ? link.me_ as number : 0;
  if (open) {
    if (GROUPS) {
      from = Math.floor(seq / 4294967296);
      seq -= from * 4294967296;
      // Pairwise, the high part must be 0. In a group, an index past the bound or our own (a frame of
      // ours reflected back) is refused.
      if (link.txDir_ === DIR_GROUP ? from >= MAX_SENDERS || from === link.me_ : from) return Drop.BadSeq;
      // A group keeps one window per sender: the sender's stands in for this frame.
      if (link.txDir_ === DIR_GROUP) link.rx_ = (link.rxs_ as ReplayWindow[])[from] || { top: 0, bits: 0 };
    }
    const fresh = replay(link.rx_, seq, false);
    if (fresh !== "ok") return fresh === "replayed" ? Drop.Replayed : fresh === "too-old" ? Drop.TooOld : Drop.BadSeq;
  } else {
    if (link.txSeq_ >= MAX_SEQ) throw new Error("link: sequence exhausted");
    seq = ++link.txSeq_;
  }
  // Sealing uses this end's direction, opening the other one's; a group has one direction.
  const dir = GROUPS && link.txDir_ === DIR_GROUP ? DIR_GROUP : open === (link.txDir_ === DIR_UP) ? DIR_DOWN : DIR_UP;
  const n = new Uint8Array(k.suite === SUITE_XSALSA20_POLY1305 ? 24 : 13);
  n[0] = dir;
  n[1] = spi >>> 24; n[2] = (spi >>> 16) & 255; n[3] = (spi >>> 8) & 255; n[4] = spi & 255;
  if (GROUPS) n[8] = from; // below MAX_SENDERS: one byte
  n[9] = seq >>> 24; n[10] = (seq >>> 16) & 255; n[11] = (seq >>> 8) & 255; n[12] = seq & 255;
  const key = dir === DIR_DOWN ? k.down : k.up;
  if (!open) {
    const sealed = c.seal(k.suite, key, n, data);
    return cbor.encode(encodeMessage(spi ? { t: Msg.SaData, spi: spi, seq: GROUPS ? seq + from * 4294967296 : seq, sealed: sealed } : { t: Msg.Link, seq: seq, sealed: sealed }));
  }
  const plain = c.open(k.suite, key, n, data);
  if (!plain) return Drop.Forged;
  replay(link.rx_, seq, true);
  if (GROUPS && link.txDir_ === DIR_GROUP) (link.rxs_ as ReplayWindow[])[from] = link.rx_;
  return plain;
}

/** The encoded outer frame carrying plain, sealed as the next frame of this link or SA. */
export function sealFrame(c: SymCrypto, cbor: Codec, link: Link, spi: number, plain: Bytes): Bytes {
  return crypt(c, cbor, link, spi, 0, plain, false) as Bytes;
}

/** The plaintext of a received Link (spi 0) or SA frame, or why it was dropped. */
export function openFrame(c: SymCrypto, cbor: Codec, link: Link, spi: number, seq: number, sealed: Bytes): Bytes | Drop {
  return crypt(c, cbor, link, spi, seq, sealed, true);
}

/** The encoded Link frame carrying msg. */
export function sealMessage(c: SymCrypto, cbor: Codec, link: Link, msg: InnerMessage): Bytes {
  return sealFrame(c, cbor, link, 0, cbor.encode(encodeMessage(msg)));
}

/** The inner message of a received Link frame, or why it was dropped. An authentic frame with bad
 *  content still consumes its sequence number: it was sent once. */
export function openMessage(c: SymCrypto, cbor: Codec, link: Link, f: LinkFrame): InnerMessage | Drop {
  const plain = openFrame(c, cbor, link, 0, f.seq, f.sealed);
  if (typeof plain === "number") return plain;
  let m: Message | Error;
  try {
    m = decodeMessage(cbor.decode(plain));
  } catch (e) {
    m = e as Error;
  }
  if (m instanceof Error) return Drop.BadContent;
  if (m.t < Msg.RegisterRequest) return Drop.OuterInLink;
  return m as InnerMessage;
}

export function wipeLink(link: Link): void {
  link.keys_.up.fill(0);
  link.keys_.down.fill(0);
}
