// HMAC-SHA256 (RFC 2104) and HKDF-SHA256 (RFC 5869) on the board's native SHA-256.
// Espruino subset only (design.md §5).

import type { Bytes } from "../bytes.ts";
import { concat } from "../bytes.ts";

const BLOCK = 64;
const HASH_LEN = 32;

/** Anything with a SHA-256: the device's natives, or node's in tests. */
export interface Hasher {
  sha256(d: Bytes): Bytes;
}

/** HMAC-SHA256 with this hasher's SHA-256. Written with `this` so that DeviceCrypto can use this very
 *  function as its method: one live function on the device instead of a method wrapping it.
 *
 *  Shaped for an interpreter (Espruino runs about one simple statement per microsecond or two, while
 *  its SHA-256 and typed-array set are native): the pads are XORed into K0 32 bits at a time (16
 *  steps instead of 64), and each hash input is set natively into one buffer, with no concatenation.
 *  XOR is bytewise, so doing it on 32-bit words with the byte repeated gives the same bytes on any
 *  endianness. */
export function hmacSha256(this: Hasher, key: Bytes, data: Bytes): Bytes {
  // K0: the key (hashed first when longer than the block), zero-padded to the block, aligned at 0.
  const k0 = new Uint8Array(BLOCK);
  k0.set(key.length > BLOCK ? this.sha256(key) : key);
  const kw = new Uint32Array(k0.buffer);
  // K0 ^ ipad for the inner hash over it || data, then ^ (ipad ^ opad) for the outer one over it || inner.
  let h = data;
  for (const pad of [0x36363636, 0x6a6a6a6a]) {
    for (let i = 0; i < BLOCK / 4; i++) kw[i] ^= pad;
    const m = new Uint8Array(BLOCK + h.length);
    m.set(k0);
    m.set(h, BLOCK);
    if (h !== data) h.fill(0);
    h = this.sha256(m);
    m.fill(0);
  }
  k0.fill(0);
  return h;
}

/** RFC 5869 extract-then-expand. An empty salt is HashLen zero bytes, which HMAC's zero padding
 *  makes identical to the empty key, so no special case is needed. */
export function hkdfSha256(this: Hasher, salt: Bytes, ikm: Bytes, info: Bytes, length: number): Bytes {
  if (!(length >= 0 && length <= 255 * HASH_LEN) || length % 1 !== 0) {
    throw new Error("hkdf: bad length");
  }
  const prk = hmacSha256.call(this, salt, ikm);
  const okm = new Uint8Array(length);
  let t: Bytes = new Uint8Array(0);
  for (let i = 1, off = 0; off < length; i++) {
    const next = hmacSha256.call(this, prk, concat([t, info, new Uint8Array([i])]));
    t.fill(0);
    t = next;
    okm.set(length - off < HASH_LEN ? t.subarray(0, length - off) : t, off);
    off += HASH_LEN;
  }
  t.fill(0);
  prk.fill(0);
  return okm;
}
