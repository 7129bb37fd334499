// The board's native crypto: Espruino's own objects, passed in by the board entry (firmware/targets/)
// and used as they are. No wrapper closures: on a 2,630-variable Puck.js every function object that
// stays alive costs variables. Tests pass Node's model of the same objects (emulator/espruino-crypto.ts).
// Espruino subset only (design.md §5).

export interface Natives {
  /** require("crypto"): SHA256(), and AES.encrypt/decrypt where the board has them. */
  crypto: any;
  /** Bangle.js 2's global AES with ccmEncrypt/ccmDecrypt, or undefined. */
  aes: any;
  /** Espruino's E, for hwRand(). */
  E: any;
}

export function espruinoNatives(cryptoModule: any, aesGlobal: any, E: any): Natives {
  return { crypto: cryptoModule, aes: aesGlobal, E: E };
}
