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

/** CCM both ways in one function (helpers inside: they cost device variables only while it runs).
 *  Sealing returns ciphertext || tag and throws, echoing no input, on parameters CCM does not allow;
 *  opening returns the plaintext, or undefined when the input is malformed or the tag does not verify. */
export function ccm(aes: EspruinoAes, key: Bytes, nonce: Bytes, input: Bytes, tagLen: number, open: boolean, aad?: Bytes): Bytes | undefined {
  const a = aad || new Uint8Array(0);
  const lBytes = 15 - nonce.length;
  const len = open ? input.length - tagLen : input.length;
  // Only the two-byte AAD length form (RFC 3610 §2.2): our messages carry none.
  const paramsOk = nonce.length >= 7 && nonce.length <= 13 && tagLen >= 4 && tagLen <= 16 && tagLen % 2 === 0 && a.length < 0xff00;
  // The message length must fit the L-byte length field.
  const lengthOk = len >= 0 && (lBytes >= 4 || len < 1 << (8 * lBytes));
  if (!paramsOk || !lengthOk) {
    if (open) return undefined;
    throw new Error(paramsOk ? "ccm: message too long" : "ccm: bad parameters");
  }

  /** T: the first tagLen bytes of the CBC-MAC over B0 || AAD || message (RFC 3610 §2.2). */
  function cbcMac(msg: Bytes): Bytes {
    const aadBlockLen = a.length ? (a.length + 2 + 15) & ~15 : 0;
    const m = new Uint8Array(16 + aadBlockLen + ((msg.length + 15) & ~15));
    m[0] = (a.length ? 0x40 : 0) | (((tagLen - 2) / 2) << 3) | (lBytes - 1);
    m.set(nonce, 1);
    for (let i = 0, n = msg.length; i < lBytes; i++, n = Math.floor(n / 256)) m[15 - i] = n & 255;
    if (a.length) {
      m[16] = a.length >> 8;
      m[17] = a.length & 255;
      m.set(a, 18);
    }
    m.set(msg, 16 + aadBlockLen);
    const chain = new Uint8Array(aes.encrypt(m, key, { mode: "CBC", iv: ZERO_IV }));
    const t = new Uint8Array(chain.subarray(chain.length - 16, chain.length - 16 + tagLen));
    chain.fill(0);
    m.fill(0);
    return t;
  }

  // S0 || S1 .. Sn: the keystream for counter blocks A0..An, n = ceil(len / 16), in one ECB call.
  const blocks = 1 + ((len + 15) >> 4);
  const ctr = new Uint8Array(16 * blocks);
  for (let b = 0; b < blocks; b++) {
    const o = 16 * b;
    ctr[o] = lBytes - 1;
    ctr.set(nonce, o + 1);
    for (let i = 0, c = b; i < lBytes && c > 0; i++, c = Math.floor(c / 256)) ctr[o + 15 - i] = c & 255;
  }
  const s = new Uint8Array(aes.encrypt(ctr, key, { mode: "ECB" }));

  const out = new Uint8Array(open ? len : len + tagLen);
  for (let i = 0; i < len; i++) out[i] = input[i] ^ s[16 + i];
  const t = cbcMac(open ? out : input);
  for (let i = 0; i < tagLen; i++) t[i] ^= s[i];
  s.fill(0);
  if (!open) {
    out.set(t, len);
    t.fill(0);
    return out;
  }
  const ok = ctEqual(t, input.subarray(len));
  t.fill(0);
  if (ok) return out;
  out.fill(0);
  return undefined;
}

/** Returns ciphertext || tag. */
export function ccmSeal(aes: EspruinoAes, key: Bytes, nonce: Bytes, pt: Bytes, tagLen: number, aad?: Bytes): Bytes {
  return ccm(aes, key, nonce, pt, tagLen, false, aad) as Bytes;
}

/** Returns the plaintext, or undefined. */
export function ccmOpen(aes: EspruinoAes, key: Bytes, nonce: Bytes, sealed: Bytes, tagLen: number, aad?: Bytes): Bytes | undefined {
  return ccm(aes, key, nonce, sealed, tagLen, true, aad);
}
