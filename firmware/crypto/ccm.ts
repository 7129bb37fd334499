// AES-CCM (RFC 3610, NIST SP 800-38C) on the board's native AES: the CBC-MAC as ONE native CBC
// call (zero IV, over B0 || encoded AAD || padded payload; the MAC is the last block) and the
// keystream as ONE native ECB call over all counter blocks A0..An. Our suite is 13-byte nonce
// (L = 2), 8-byte tag, no additional data; the tag length, nonce length and AAD are generic so
// the published RFC 3610 vectors run unchanged. Espruino subset only (design.md §5).

import type { Bytes } from "../bytes.ts";
import { ctEqual } from "../bytes.ts";

/** Espruino's require("crypto").AES: encrypt(data, key, {mode, iv}) returns an ArrayBuffer. CCM needs
 *  its ECB and CBC modes only (CTR is never used: Espruino's CTR ignores the IV). */
export interface EspruinoAes {
  encrypt(data: Bytes, key: Bytes, options: { mode: string; iv?: Bytes }): ArrayBuffer;
}

const ZERO_IV = new Uint8Array(16);

/** CCM both ways in one function, straight-line (Espruino reads the text of every function it
 *  makes and every branch it passes, and every function that lives for good costs variables, so there
 *  are no helpers, and no byte loops but for the last few bytes).
 *  Sealing returns ciphertext || tag and throws, echoing no input, on parameters CCM does not allow;
 *  opening returns the plaintext, or undefined when the input is malformed or the tag does not verify. */
export function ccm(aes: EspruinoAes, key: Bytes, nonce: Bytes, input: Bytes, tagLen: number, open: boolean, aad?: Bytes): Bytes | undefined {
  const a = aad || new Uint8Array(0);
  const lBytes = 15 - nonce.length;
  const len = open ? input.length - tagLen : input.length;
  // Only the two-byte AAD length form (RFC 3610 §2.2): our messages carry none.
  const paramsOk = nonce.length >= 7 && nonce.length <= 13 && tagLen >= 4 && tagLen <= 16 && tagLen % 2 === 0 && a.length < 0xff00;
  // The message length must fit the L-byte length field (and the counter two bytes: 1 MiB at most).
  const lengthOk = len >= 0 && len < 0xfff00 && (lBytes >= 4 || len < 1 << (8 * lBytes));
  if (!paramsOk || !lengthOk) {
    if (open) return undefined;
    throw new Error(paramsOk ? "ccm: message too long" : "ccm: bad parameters");
  }

  // S0 || S1 .. Sn: the keystream for counter blocks A0..An, n = ceil(len / 16), in one ECB call.
  // A0 is flags || nonce || 0, copied natively into every block (doubling), then each block's
  // counter i written into its last byte (and the one before it past 255 blocks). The counter
  // blocks are let go at once: a board's pool is small, and each native call needs its output in
  // one piece.
  const blocks = 1 + ((len + 15) >> 4);
  let ctr: Bytes | undefined = new Uint8Array(16 * blocks);
  ctr[0] = lBytes - 1;
  ctr.set(nonce, 1);
  for (let k = 16; k < ctr.length; k *= 2) ctr.set(ctr.subarray(0, Math.min(k, ctr.length - k)), k);
  for (let b = 1; b < blocks; b++) ctr[16 * b + 15] = b;
  for (let b = 256; b < blocks; b++) ctr[16 * b + 14] = b >> 8;
  const s = new Uint8Array(aes.encrypt(ctr, key, { mode: "ECB" }));
  ctr = undefined;
  // The keystream as 32-bit words: XOR is bytewise, so words give the same bytes on any endianness,
  // in a quarter of the interpreted steps.
  const sw = new Uint32Array(s.buffer);

  // One buffer for both jobs: the CBC-MAC input B0 || encoded AAD || text || zero padding, whose
  // text is XORed with the keystream in place, after the MAC when sealing (the MAC is over the
  // plaintext) and before it when opening.
  const aadBlockLen = a.length ? (a.length + 2 + 15) & ~15 : 0;
  const at = 16 + aadBlockLen;
  const m = new Uint8Array(at + ((len + 15) & ~15));
  m[0] = (a.length ? 0x40 : 0) | (((tagLen - 2) / 2) << 3) | (lBytes - 1);
  m.set(nonce, 1);
  m[15] = len & 255;
  m[14] = len >> 8;
  if (lBytes > 2) m[13] = len >> 16;
  if (a.length) {
    m[16] = a.length >> 8;
    m[17] = a.length & 255;
    m.set(a, 18);
  }
  m.set(input.subarray(0, len), at);
  let chain = open ? undefined : new Uint8Array(aes.encrypt(m, key, { mode: "CBC", iv: ZERO_IV }));
  // The text starts on a block boundary of m, S1 at word 4 of s; then the last few bytes. Not for
  // fewer than 4 bytes: Espruino takes a view's length 0 as "the rest of the buffer".
  if (len >= 4) {
    const xw = new Uint32Array(m.buffer, at, len >> 2);
    for (let i = 0; i < xw.length; i++) xw[i] ^= sw[i + 4];
  }
  for (let i = len & ~3; i < len; i++) m[at + i] ^= s[16 + i];
  if (!chain) chain = new Uint8Array(aes.encrypt(m, key, { mode: "CBC", iv: ZERO_IV }));
  // T: the first tagLen bytes of the last CBC block (RFC 3610 §2.2), XORed with S0 (the whole
  // block, in four words).
  const last = chain.length - 16;
  const cw = new Uint32Array(chain.buffer, last, 4);
  cw[0] ^= sw[0];
  cw[1] ^= sw[1];
  cw[2] ^= sw[2];
  cw[3] ^= sw[3];
  const t = chain.subarray(last, last + tagLen);
  s.fill(0);
  let out: Bytes | undefined;
  if (!open) {
    out = new Uint8Array(len + tagLen);
    out.set(m.subarray(at, at + len));
    out.set(t, len);
  } else if (ctEqual(t, input.subarray(len))) out = new Uint8Array(m.subarray(at, at + len));
  // The plaintext of a frame that did not verify is never handed out, and not left in the heap.
  m.fill(0);
  chain.fill(0);
  return out;
}

/** Returns ciphertext || tag. */
export function ccmSeal(aes: EspruinoAes, key: Bytes, nonce: Bytes, pt: Bytes, tagLen: number, aad?: Bytes): Bytes {
  return ccm(aes, key, nonce, pt, tagLen, false, aad) as Bytes;
}

/** Returns the plaintext, or undefined. */
export function ccmOpen(aes: EspruinoAes, key: Bytes, nonce: Bytes, sealed: Bytes, tagLen: number, aad?: Bytes): Bytes | undefined {
  return ccm(aes, key, nonce, sealed, tagLen, true, aad);
}
