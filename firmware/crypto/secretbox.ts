// NaCl secretbox (XSalsa20-Poly1305), ported from TweetNaCl-js (nacl.js, "Ported in 2014 by
// Dmitry Chestnykh and Devi Mandiri. Public domain.", derived from TweetNaCl 20140427 by
// D. J. Bernstein et al., http://tweetnacl.cr.yp.to/). Only what secretbox needs: no public-key
// code. Output layout is NaCl's crypto_secretbox_easy: tag (16) || ciphertext, so libsodium and
// tweetnacl interoperate unchanged. Espruino subset only (design.md §5); every function is
// declared before use because Espruino does not hoist.

import type { Bytes } from "../bytes.ts";
import { ctEqual } from "../bytes.ts";
import type { AeadImpl } from "./device.ts";
import { SUITE_XSALSA20_POLY1305 } from "./types.ts";

const KEY_LEN = 32;
const NONCE_LEN = 24;
const TAG_LEN = 16;

// "expand 32-byte k"
const SIGMA = new Uint8Array([101, 120, 112, 97, 110, 100, 32, 51, 50, 45, 98, 121, 116, 101, 32, 107]);

function rotl(x: number, c: number): number {
  return (x << c) | (x >>> (32 - c));
}

function ld32(x: Bytes, i: number): number {
  return x[i] | (x[i + 1] << 8) | (x[i + 2] << 16) | (x[i + 3] << 24);
}

function st32(x: Bytes, j: number, u: number): void {
  for (let i = 0; i < 4; i++) {
    x[j + i] = u & 255;
    u >>>= 8;
  }
}

/** The Salsa20 core (hsalsa = false: 64-byte block) or HSalsa20 (hsalsa = true: 32-byte key). */
function core(out: Bytes, inp: Bytes, k: Bytes, hsalsa: boolean): void {
  const w = new Uint32Array(16);
  const x = new Uint32Array(16);
  const y = new Uint32Array(16);
  const t = new Uint32Array(4);
  for (let i = 0; i < 4; i++) {
    x[5 * i] = ld32(SIGMA, 4 * i);
    x[1 + i] = ld32(k, 4 * i);
    x[6 + i] = ld32(inp, 4 * i);
    x[11 + i] = ld32(k, 16 + 4 * i);
  }
  for (let i = 0; i < 16; i++) y[i] = x[i];
  for (let i = 0; i < 20; i++) {
    for (let j = 0; j < 4; j++) {
      for (let m = 0; m < 4; m++) t[m] = x[(5 * j + 4 * m) % 16];
      t[1] ^= rotl((t[0] + t[3]) | 0, 7);
      t[2] ^= rotl((t[1] + t[0]) | 0, 9);
      t[3] ^= rotl((t[2] + t[1]) | 0, 13);
      t[0] ^= rotl((t[3] + t[2]) | 0, 18);
      for (let m = 0; m < 4; m++) w[4 * j + ((j + m) % 4)] = t[m];
    }
    for (let m = 0; m < 16; m++) x[m] = w[m];
  }
  if (hsalsa) {
    // HSalsa20 outputs the diagonal and the input words without the feed-forward.
    for (let i = 0; i < 4; i++) {
      st32(out, 4 * i, x[5 * i]);
      st32(out, 16 + 4 * i, x[6 + i]);
    }
  } else {
    for (let i = 0; i < 16; i++) st32(out, 4 * i, (x[i] + y[i]) | 0);
  }
}

/** XORs `data` with the XSalsa20 keystream for (key, nonce), starting at block 0. */
function xsalsa20Xor(key: Bytes, nonce: Bytes, data: Bytes): Bytes {
  const subkey = new Uint8Array(32);
  core(subkey, nonce, key, true);
  const z = new Uint8Array(16);
  for (let i = 0; i < 8; i++) z[i] = nonce[16 + i];
  const block = new Uint8Array(64);
  const out = new Uint8Array(data.length);
  for (let pos = 0; pos < data.length; pos += 64) {
    core(block, z, subkey, false);
    const n = data.length - pos < 64 ? data.length - pos : 64;
    for (let i = 0; i < n; i++) out[pos + i] = data[pos + i] ^ block[i];
    // 64-bit little-endian block counter in z[8..15].
    let u = 1;
    for (let i = 8; i < 16; i++) {
      u = (u + z[i]) | 0;
      z[i] = u & 255;
      u >>>= 8;
    }
  }
  subkey.fill(0);
  block.fill(0);
  return out;
}

function add1305(h: Uint32Array, c: Uint32Array): void {
  let u = 0;
  for (let j = 0; j < 17; j++) {
    u = (u + ((h[j] + c[j]) | 0)) | 0;
    h[j] = u & 255;
    u >>>= 8;
  }
}

const MINUS_P = new Uint32Array([5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 252]);

/** Poly1305 of m under the 32-byte one-time key k (TweetNaCl's radix-2^8 version). */
function poly1305(m: Bytes, k: Bytes): Bytes {
  const x = new Uint32Array(17);
  const r = new Uint32Array(17);
  const h = new Uint32Array(17);
  const c = new Uint32Array(17);
  const g = new Uint32Array(17);
  for (let j = 0; j < 16; j++) r[j] = k[j];
  r[3] &= 15;
  r[4] &= 252;
  r[7] &= 15;
  r[8] &= 252;
  r[11] &= 15;
  r[12] &= 252;
  r[15] &= 15;
  let pos = 0;
  let n = m.length;
  while (n > 0) {
    for (let j = 0; j < 17; j++) c[j] = 0;
    let j = 0;
    for (; j < 16 && j < n; j++) c[j] = m[pos + j];
    c[j] = 1;
    pos += j;
    n -= j;
    add1305(h, c);
    for (let i = 0; i < 17; i++) {
      x[i] = 0;
      for (let q = 0; q < 17; q++) x[i] = (x[i] + ((h[q] * (q <= i ? r[i - q] : (320 * r[i + 17 - q]) | 0)) | 0)) | 0;
    }
    for (let i = 0; i < 17; i++) h[i] = x[i];
    let u = 0;
    for (let q = 0; q < 16; q++) {
      u = (u + h[q]) | 0;
      h[q] = u & 255;
      u >>>= 8;
    }
    u = (u + h[16]) | 0;
    h[16] = u & 3;
    u = (5 * (u >>> 2)) | 0;
    for (let q = 0; q < 16; q++) {
      u = (u + h[q]) | 0;
      h[q] = u & 255;
      u >>>= 8;
    }
    u = (u + h[16]) | 0;
    h[16] = u;
  }
  // Reduce mod 2^130 - 5 in constant time, then add the second half of the key.
  for (let j = 0; j < 17; j++) g[j] = h[j];
  add1305(h, MINUS_P);
  const s = -(h[16] >>> 7) | 0;
  for (let j = 0; j < 17; j++) h[j] ^= s & (g[j] ^ h[j]);
  for (let j = 0; j < 16; j++) c[j] = k[j + 16];
  c[16] = 0;
  add1305(h, c);
  const out = new Uint8Array(TAG_LEN);
  for (let j = 0; j < 16; j++) out[j] = h[j];
  r.fill(0);
  h.fill(0);
  g.fill(0);
  return out;
}

/** secretbox_easy: tag || ciphertext. The first 32 keystream bytes key Poly1305. */
export function secretbox(key: Bytes, nonce: Bytes, pt: Bytes): Bytes {
  if (key.length !== KEY_LEN || nonce.length !== NONCE_LEN) throw new Error("secretbox: bad key or nonce length");
  const buf = new Uint8Array(32 + pt.length);
  buf.set(pt, 32);
  const x = xsalsa20Xor(key, nonce, buf);
  buf.fill(0);
  const out = new Uint8Array(TAG_LEN + pt.length);
  out.set(poly1305(x.subarray(32), x.subarray(0, 32)), 0);
  out.set(x.subarray(32), TAG_LEN);
  x.fill(0);
  return out;
}

/** secretbox_open_easy: the plaintext, or undefined for a bad length or a tag that does not verify. */
export function secretboxOpen(key: Bytes, nonce: Bytes, sealed: Bytes): Bytes | undefined {
  if (key.length !== KEY_LEN || nonce.length !== NONCE_LEN || sealed.length < TAG_LEN) return undefined;
  const buf = new Uint8Array(32 + sealed.length - TAG_LEN);
  buf.set(sealed.subarray(TAG_LEN), 32);
  const x = xsalsa20Xor(key, nonce, buf);
  buf.fill(0);
  const tag = poly1305(sealed.subarray(TAG_LEN), x.subarray(0, 32));
  const ok = ctEqual(tag, sealed.subarray(0, TAG_LEN));
  if (!ok) {
    x.fill(0);
    return undefined;
  }
  const pt = new Uint8Array(x.subarray(32));
  x.fill(0);
  return pt;
}

export const secretboxSuite: AeadImpl = {
  suite: SUITE_XSALSA20_POLY1305,
  seal: secretbox,
  open: secretboxOpen,
};
