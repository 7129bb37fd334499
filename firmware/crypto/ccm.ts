// AES-CCM (RFC 3610, NIST SP 800-38C) on the board's native AES: the CBC-MAC as ONE native CBC
// call (zero IV, over B0 || encoded AAD || padded payload; the MAC is the last block) and the
// keystream as ONE native ECB call over all counter blocks A0..An. Our suite is 13-byte nonce
// (L = 2), 8-byte tag, no additional data; the tag length, nonce length and AAD are generic so
// the published RFC 3610 vectors run unchanged. Espruino subset only (design.md §5).

import type { Bytes } from "../bytes.ts";
import { ctEqual, wipe } from "../bytes.ts";

/** The two native AES calls CCM is built on. */
export interface AesBlockNatives {
  aesEcb: (key: Bytes, data: Bytes) => Bytes;
  aesCbc: (key: Bytes, iv: Bytes, data: Bytes) => Bytes;
}

const ZERO_IV = new Uint8Array(16);

function checkParams(nonce: Bytes, tagLen: number, aadLen: number): void {
  if (nonce.length < 7 || nonce.length > 13) throw new Error("ccm: bad nonce length");
  if (!(tagLen >= 4 && tagLen <= 16 && tagLen % 2 === 0)) throw new Error("ccm: bad tag length");
  // Only the two-byte AAD length form (RFC 3610 §2.2): our messages carry none.
  if (aadLen >= 0xff00) throw new Error("ccm: aad too long");
}

/** One byte past the largest message length field L (= 15 - nonce length) can hold. */
function fitsLength(nonceLen: number, msgLen: number): boolean {
  const lBytes = 15 - nonceLen;
  return lBytes >= 4 || msgLen < 1 << (8 * lBytes);
}

/** T: the first tagLen bytes of the CBC-MAC over B0 || AAD || message (RFC 3610 §2.2). */
function cbcMac(aes: AesBlockNatives, key: Bytes, nonce: Bytes, aad: Bytes, msg: Bytes, tagLen: number): Bytes {
  const lBytes = 15 - nonce.length;
  const aadBlockLen = aad.length ? (aad.length + 2 + 15) & ~15 : 0;
  const msgBlockLen = (msg.length + 15) & ~15;
  const input = new Uint8Array(16 + aadBlockLen + msgBlockLen);
  input[0] = (aad.length ? 0x40 : 0) | (((tagLen - 2) / 2) << 3) | (lBytes - 1);
  input.set(nonce, 1);
  for (let i = 0, len = msg.length; i < lBytes; i++, len = Math.floor(len / 256)) input[15 - i] = len & 255;
  if (aad.length) {
    input[16] = aad.length >> 8;
    input[17] = aad.length & 255;
    input.set(aad, 18);
  }
  input.set(msg, 16 + aadBlockLen);
  const chain = aes.aesCbc(key, ZERO_IV, input);
  const t = new Uint8Array(chain.subarray(chain.length - 16, chain.length - 16 + tagLen));
  wipe(chain);
  wipe(input);
  return t;
}

/** S0 || S1 .. Sn: the keystream for A0..An, n = ceil(msgLen / 16), in one native ECB call. */
function keystream(aes: AesBlockNatives, key: Bytes, nonce: Bytes, msgLen: number): Bytes {
  const lBytes = 15 - nonce.length;
  const blocks = 1 + ((msgLen + 15) >> 4);
  const ctr = new Uint8Array(16 * blocks);
  for (let b = 0; b < blocks; b++) {
    const o = 16 * b;
    ctr[o] = lBytes - 1;
    ctr.set(nonce, o + 1);
    for (let i = 0, c = b; i < lBytes && c > 0; i++, c = Math.floor(c / 256)) ctr[o + 15 - i] = c & 255;
  }
  return aes.aesEcb(key, ctr);
}

/** Returns ciphertext || tag. Throws (without echoing any input) on parameters CCM does not allow. */
export function ccmSeal(aes: AesBlockNatives, key: Bytes, nonce: Bytes, pt: Bytes, tagLen: number, aad?: Bytes): Bytes {
  const a = aad || new Uint8Array(0);
  checkParams(nonce, tagLen, a.length);
  if (!fitsLength(nonce.length, pt.length)) throw new Error("ccm: message too long");
  const t = cbcMac(aes, key, nonce, a, pt, tagLen);
  const s = keystream(aes, key, nonce, pt.length);
  const out = new Uint8Array(pt.length + tagLen);
  for (let i = 0; i < pt.length; i++) out[i] = pt[i] ^ s[16 + i];
  for (let i = 0; i < tagLen; i++) out[pt.length + i] = t[i] ^ s[i];
  wipe(s);
  wipe(t);
  return out;
}

/** Returns the plaintext, or undefined when the input is malformed or the tag does not verify. */
export function ccmOpen(aes: AesBlockNatives, key: Bytes, nonce: Bytes, sealed: Bytes, tagLen: number, aad?: Bytes): Bytes | undefined {
  const a = aad || new Uint8Array(0);
  if (nonce.length < 7 || nonce.length > 13 || !(tagLen >= 4 && tagLen <= 16 && tagLen % 2 === 0)) return undefined;
  if (a.length >= 0xff00 || sealed.length < tagLen || !fitsLength(nonce.length, sealed.length - tagLen)) return undefined;
  const len = sealed.length - tagLen;
  const s = keystream(aes, key, nonce, len);
  const pt = new Uint8Array(len);
  for (let i = 0; i < len; i++) pt[i] = sealed[i] ^ s[16 + i];
  const t = cbcMac(aes, key, nonce, a, pt, tagLen);
  for (let i = 0; i < tagLen; i++) t[i] ^= s[i];
  wipe(s);
  const ok = ctEqual(t, sealed.subarray(len));
  wipe(t);
  if (!ok) {
    wipe(pt);
    return undefined;
  }
  return pt;
}
