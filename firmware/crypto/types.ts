// The one symmetric-crypto interface both sides program against. The device implements it on the
// board's native SHA-256/AES (firmware/crypto/device.ts); the gateway on node:crypto and tweetnacl
// (gateway/crypto/symmetric.ts). Protocol code (join key schedule, link and SA frames) takes a SymCrypto, so
// the key schedule is written once and the two implementations must agree byte for byte.

import type { Bytes } from "../bytes.ts";

/** COSE algorithm 10: AES-CCM, 128-bit key, 64-bit tag, 13-byte nonce (RFC 9053 §4.2). */
export const SUITE_AES_CCM_16_64_128 = 10;
/** NaCl secretbox (XSalsa20-Poly1305), 24-byte nonce, 16-byte tag. COSE private-use id. */
export const SUITE_XSALSA20_POLY1305 = -65537;

export interface SymCrypto {
  sha256(data: Bytes): Bytes;
  hmacSha256(key: Bytes, data: Bytes): Bytes;
  /** RFC 5869 with SHA-256. */
  hkdf(salt: Bytes, ikm: Bytes, info: Bytes, length: number): Bytes;
  /** Suites this side can run. The gateway's crypto has it; on the device it is deviceSuites(). */
  suites?(): number[];
  /** Authenticated encryption without additional data, in the suite's standard layout
   *  (AES-CCM: ciphertext || tag; secretbox: tag || ciphertext, as NaCl). */
  seal(suite: number, key: Bytes, nonce: Bytes, plaintext: Bytes): Bytes;
  /** Returns the plaintext, or undefined when the tag does not verify (never throws on bad input). */
  open(suite: number, key: Bytes, nonce: Bytes, sealed: Bytes): Bytes | undefined;
  random(n: number): Bytes;
}

export function nonceLength(suite: number): number {
  return suite === SUITE_XSALSA20_POLY1305 ? 24 : 13;
}

export function tagLength(suite: number): number {
  return suite === SUITE_XSALSA20_POLY1305 ? 16 : 8;
}
