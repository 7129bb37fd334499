// The board's native crypto, behind one small interface so the same firmware code runs on the
// device, in the emulator and in Node tests. Board entries (firmware/targets/) build it from the
// Espruino globals with espruinoNatives(); nothing in here reaches for a global itself.
// Espruino subset only (design.md §5).

import type { Bytes } from "../bytes.ts";
import { concat } from "../bytes.ts";

export interface Natives {
  sha256(d: Bytes): Bytes;
  /** AES-ECB encryption over whole 16-byte blocks (require("crypto").AES, mode "ECB"). */
  aesEcb?: (key: Bytes, data: Bytes) => Bytes;
  /** AES-CBC encryption; data must be whole blocks (require("crypto").AES, mode "CBC"). */
  aesCbc?: (key: Bytes, iv: Bytes, data: Bytes) => Bytes;
  /** Native AES-CCM without additional data (Bangle.js 2): returns ciphertext || tag. */
  ccmSeal?: (key: Bytes, nonce: Bytes, pt: Bytes, tagLen: number) => Bytes;
  /** Native AES-CCM open: the plaintext, or undefined when the tag does not verify. */
  ccmOpen?: (key: Bytes, nonce: Bytes, sealed: Bytes, tagLen: number) => Bytes | undefined;
  random(n: number): Bytes;
}

/** Wraps Espruino's require("crypto") (cryptoModule), Bangle.js 2's global AES (aesGlobal, or
 *  undefined) and E, all passed in by the board entry. Natives return ArrayBuffers; we hand back
 *  Uint8Arrays. CTR mode is never used: Espruino's CTR ignores the IV. */
export function espruinoNatives(cryptoModule: any, aesGlobal: any, E: any): Natives {
  const n: Natives = {
    sha256: (d: Bytes) => new Uint8Array(cryptoModule.SHA256(d)),
    random: (len: number) => {
      // E.hwRand() gives 32 bits of hardware noise per call.
      const out = new Uint8Array(len);
      let r = 0;
      for (let i = 0; i < len; i++) {
        if ((i & 3) === 0) r = E.hwRand();
        out[i] = (r >>> (8 * (i & 3))) & 255;
      }
      return out;
    },
  };
  const AES = cryptoModule.AES;
  if (AES) {
    n.aesEcb = (key: Bytes, data: Bytes) => new Uint8Array(AES.encrypt(data, key, { mode: "ECB" }));
    n.aesCbc = (key: Bytes, iv: Bytes, data: Bytes) => new Uint8Array(AES.encrypt(data, key, { iv: iv, mode: "CBC" }));
  }
  if (aesGlobal && aesGlobal.ccmEncrypt) {
    n.ccmSeal = (key: Bytes, nonce: Bytes, pt: Bytes, tagLen: number) => {
      const r = aesGlobal.ccmEncrypt(pt, key, nonce, tagLen);
      return concat([new Uint8Array(r.data), new Uint8Array(r.tag)]);
    };
    n.ccmOpen = (key: Bytes, nonce: Bytes, sealed: Bytes, tagLen: number) => {
      if (sealed.length < tagLen) return undefined;
      const split = sealed.length - tagLen;
      try {
        return new Uint8Array(aesGlobal.ccmDecrypt(sealed.subarray(0, split), key, nonce, sealed.subarray(split)));
      } catch (e) {
        // A tag that does not verify throws; to our callers that is simply "not authentic".
        return undefined;
      }
    };
  }
  return n;
}
