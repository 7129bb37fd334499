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
 *  its SHA-256, fill and typed-array set are native), straight-line: each hash input is one buffer
 *  whose 64-byte pad block is filled natively with ipad (opad), and only the key's own words are
 *  XORed in, 32 bits at a time (at most 8 steps for our 16- and 32-byte keys; K0's zero padding
 *  XORs to the pad itself). XOR is bytewise, so words give the same bytes on any endianness. */
export function hmacSha256(this: Hasher, key: Bytes, data: Bytes): Bytes {
  // K0's key part (hashed first when longer than the block), aligned at 0 and padded to whole words,
  // at least one: Espruino takes a view's length 0 as "the rest of the buffer".
  const k = key.length > BLOCK ? this.sha256(key) : key;
  const k0 = new Uint8Array(((k.length + 3) & ~3) || 4);
  k0.set(k);
  const kw = new Uint32Array(k0.buffer);
  const n = kw.length;
  // (K0 ^ ipad) || data, and (K0 ^ opad) || inner.
  const inner = new Uint8Array(BLOCK + data.length);
  inner.fill(0x36, 0, BLOCK);
  const iw = new Uint32Array(inner.buffer, 0, n);
  const outer = new Uint8Array(BLOCK + HASH_LEN);
  outer.fill(0x5c, 0, BLOCK);
  const ow = new Uint32Array(outer.buffer, 0, n);
  for (let i = 0; i < n; i++) {
    iw[i] ^= kw[i];
    ow[i] ^= kw[i];
  }
  inner.set(data, BLOCK);
  const h = this.sha256(inner);
  outer.set(h, BLOCK);
  const mac = this.sha256(outer);
  inner.fill(0);
  outer.fill(0);
  h.fill(0);
  k0.fill(0);
  return mac;
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
