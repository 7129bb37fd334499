// Node's model of Espruino's native crypto, for Node tests and for the device emulator.
//
// What it models, from Espruino's libs/crypto/jswrap_crypto.c (which wraps mbedtls 2.x):
//
// - require("crypto").SHA256(msg) returns a 32-byte ArrayBuffer.
// - require("crypto").AES.encrypt/decrypt(message, key, options), options {iv, mode}; mode is one of
//   "CBC" (default), "CFB", "CTR", "OFB", "ECB"; iv defaults to 16 zero bytes (a shorter iv fills
//   the front and leaves the rest zero). The result is an ArrayBuffer of the message's length.
//   The quirks are modelled on purpose, because firmware must not come to depend on them:
//     * CBC on a length that is not a multiple of 16 fails with "Invalid input length".
//     * ECB runs only whole 16-byte blocks; a trailing partial block stays zero in the output.
//     * CTR IGNORES the iv: the counter always starts at zero.
//     * CFB is mbedtls' CFB8.
//     * OFB is accepted by name but not implemented: "Feature unavailable".
//     * decrypt() keys mbedtls with the *decryption* key schedule for every mode, but CTR and CFB
//       run the forward cipher. So decrypt in those two modes does not invert encrypt; it runs
//       AES rounds over the decryption round keys. We reproduce that with a small software AES
//       built the way mbedtls builds its contexts (mbedtls_aes_setkey_enc / _setkey_dec).
//     * A key that is not 16, 24 or 32 bytes fails with "Unknown error: -0x20"
//       (MBEDTLS_ERR_AES_INVALID_KEY_LENGTH has no message in jswrap_crypto_error_to_str).
//   Espruino reports mbedtls errors with jsError(); we raise them as Error exceptions, which is
//   how the design notes (and the measurements behind design.md §5) describe the failure. An
//   unknown mode is a real exception there too (jsExceptionHere).
// - Bangle.js 2's global AES.ccmEncrypt/ccmDecrypt (only when opts.aesCcm). We could not find its
//   source in the reference index; the signature below is the one Espruino's documentation and
//   public examples use (`AES.ccmEncrypt(msg, key, nonce, tagLen) -> {data, tag}`), and
//   `AES.ccmDecrypt(msg, key, nonce, tag) -> ArrayBuffer`. ASSUMED: ccmDecrypt throws on a tag
//   that does not verify, and both reject a key that is not 16 bytes (the nRF52840's CryptoCell
//   runs AES-128 only), a nonce outside 7..13 bytes and a tag length outside 4,6,..,16. There is
//   no additional data.
// - E.CRC32(data): the zlib CRC-32, as an unsigned 32-bit number.
//
// Inputs may be ArrayBuffers, typed arrays or DataViews (their own window only), plain arrays of
// numbers (each taken & 255, as Espruino's iterators do) or strings (char codes & 255).

import { createCipheriv, createDecipheriv, createHash } from "node:crypto";
import { zlib } from "../gateway/link/crc32.ts";

export type AesObservation = {
  op:
    | "ecb-encrypt"
    | "ecb-decrypt"
    | "cbc-encrypt"
    | "cbc-decrypt"
    | "cfb-encrypt"
    | "cfb-decrypt"
    | "ctr"
    | "ccm-encrypt"
    | "ccm-decrypt";
  key: Uint8Array;
  iv?: Uint8Array;
  nonce?: Uint8Array;
  input: Uint8Array;
};

export interface EspruinoCryptoOptions {
  /** require("crypto").AES exists (Puck.js, ESP32, Linux builds). */
  aesEcbCbc: boolean;
  /** Bangle.js 2's global AES.ccmEncrypt/ccmDecrypt exists. */
  aesCcm: boolean;
  /** Called for every AES call that reaches the cipher, with copies of key, iv/nonce and input. */
  observe?: (o: AesObservation) => void;
}

/** Bytes of anything Espruino's JSV_GET_AS_CHAR_ARRAY / jsvIterateCallbackToBytes accept. */
function toBytes(v: unknown, what: string): Uint8Array {
  if (v instanceof ArrayBuffer) return new Uint8Array(v.slice(0));
  if (ArrayBuffer.isView(v)) return new Uint8Array(v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength));
  if (Array.isArray(v)) {
    const out = new Uint8Array(v.length);
    for (let i = 0; i < v.length; i++) out[i] = Number(v[i]) & 255;
    return out;
  }
  if (typeof v === "string") {
    const out = new Uint8Array(v.length);
    for (let i = 0; i < v.length; i++) out[i] = v.charCodeAt(i) & 255;
    return out;
  }
  throw new TypeError(`${what}: expected an ArrayBuffer, typed array, array or string, got ${v === null ? "null" : typeof v}`);
}

function toArrayBuffer(b: Uint8Array): ArrayBuffer {
  const ab = new ArrayBuffer(b.length);
  new Uint8Array(ab).set(b);
  return ab;
}

// ---------------------------------------------------------------------------------------------
// A small software AES in mbedtls' shape: an encryption or decryption round-key schedule, and
// the forward and (equivalent) inverse ciphers over whichever schedule the context holds.

const SBOX = new Uint8Array(256);
const INV_SBOX = new Uint8Array(256);

function xtime(b: number): number {
  return ((b << 1) ^ (b & 0x80 ? 0x1b : 0)) & 0xff;
}

function gmul(a: number, b: number): number {
  let r = 0;
  while (b) {
    if (b & 1) r ^= a;
    a = xtime(a);
    b >>= 1;
  }
  return r;
}

(function buildSbox(): void {
  // p walks the multiplicative group by 3, q by its inverse; affine transform of q gives S(p).
  let p = 1;
  let q = 1;
  do {
    p = p ^ xtime(p);
    q ^= q << 1;
    q ^= q << 2;
    q ^= q << 4;
    q &= 0xff;
    if (q & 0x80) q ^= 0x09;
    const rot = (x: number, s: number) => ((x << s) | (x >> (8 - s))) & 0xff;
    SBOX[p] = q ^ rot(q, 1) ^ rot(q, 2) ^ rot(q, 3) ^ rot(q, 4) ^ 0x63;
  } while (p !== 1);
  SBOX[0] = 0x63;
  for (let i = 0; i < 256; i++) INV_SBOX[SBOX[i]] = i;
})();

interface AesContext {
  rounds: number;
  /** (rounds + 1) round keys of 16 bytes, in the order the cipher uses them. */
  rk: Uint8Array;
}

function expandEncryptionKey(key: Uint8Array): AesContext {
  const nk = key.length / 4;
  const rounds = nk + 6;
  const words = 4 * (rounds + 1);
  const rk = new Uint8Array(words * 4);
  rk.set(key);
  let rcon = 1;
  for (let i = nk; i < words; i++) {
    let t0 = rk[4 * i - 4], t1 = rk[4 * i - 3], t2 = rk[4 * i - 2], t3 = rk[4 * i - 1];
    if (i % nk === 0) {
      const x = t0;
      t0 = SBOX[t1] ^ rcon; t1 = SBOX[t2]; t2 = SBOX[t3]; t3 = SBOX[x];
      rcon = xtime(rcon);
    } else if (nk > 6 && i % nk === 4) {
      t0 = SBOX[t0]; t1 = SBOX[t1]; t2 = SBOX[t2]; t3 = SBOX[t3];
    }
    const b = 4 * (i - nk);
    rk[4 * i] = rk[b] ^ t0;
    rk[4 * i + 1] = rk[b + 1] ^ t1;
    rk[4 * i + 2] = rk[b + 2] ^ t2;
    rk[4 * i + 3] = rk[b + 3] ^ t3;
  }
  return { rounds, rk };
}

function invMixColumnsInPlace(s: Uint8Array, off: number): void {
  for (let c = 0; c < 4; c++) {
    const o = off + 4 * c;
    const a0 = s[o], a1 = s[o + 1], a2 = s[o + 2], a3 = s[o + 3];
    s[o] = gmul(a0, 14) ^ gmul(a1, 11) ^ gmul(a2, 13) ^ gmul(a3, 9);
    s[o + 1] = gmul(a0, 9) ^ gmul(a1, 14) ^ gmul(a2, 11) ^ gmul(a3, 13);
    s[o + 2] = gmul(a0, 13) ^ gmul(a1, 9) ^ gmul(a2, 14) ^ gmul(a3, 11);
    s[o + 3] = gmul(a0, 11) ^ gmul(a1, 13) ^ gmul(a2, 9) ^ gmul(a3, 14);
  }
}

/** mbedtls_aes_setkey_dec: the encryption keys reversed, InvMixColumns on all but the outer two. */
function expandDecryptionKey(key: Uint8Array): AesContext {
  const enc = expandEncryptionKey(key);
  const n = enc.rounds;
  const rk = new Uint8Array(enc.rk.length);
  for (let r = 0; r <= n; r++) rk.set(enc.rk.subarray(16 * (n - r), 16 * (n - r) + 16), 16 * r);
  for (let r = 1; r < n; r++) invMixColumnsInPlace(rk, 16 * r);
  return { rounds: n, rk };
}

/** The forward cipher (mbedtls_internal_aes_encrypt) over the context's round keys. */
function forwardBlock(ctx: AesContext, input: Uint8Array): Uint8Array {
  const s = new Uint8Array(16);
  const t = new Uint8Array(16);
  for (let i = 0; i < 16; i++) s[i] = input[i] ^ ctx.rk[i];
  for (let r = 1; r <= ctx.rounds; r++) {
    // SubBytes + ShiftRows: row k of column c comes from column c + k.
    for (let c = 0; c < 4; c++) for (let k = 0; k < 4; k++) t[4 * c + k] = SBOX[s[4 * ((c + k) % 4) + k]];
    if (r < ctx.rounds) {
      for (let c = 0; c < 4; c++) {
        const o = 4 * c;
        const a0 = t[o], a1 = t[o + 1], a2 = t[o + 2], a3 = t[o + 3];
        const all = a0 ^ a1 ^ a2 ^ a3;
        t[o] = a0 ^ all ^ xtime(a0 ^ a1);
        t[o + 1] = a1 ^ all ^ xtime(a1 ^ a2);
        t[o + 2] = a2 ^ all ^ xtime(a2 ^ a3);
        t[o + 3] = a3 ^ all ^ xtime(a3 ^ a0);
      }
    }
    for (let i = 0; i < 16; i++) s[i] = t[i] ^ ctx.rk[16 * r + i];
  }
  return s;
}

/** The equivalent inverse cipher (mbedtls_internal_aes_decrypt) over a decryption schedule. */
function inverseBlock(ctx: AesContext, input: Uint8Array): Uint8Array {
  const s = new Uint8Array(16);
  const t = new Uint8Array(16);
  for (let i = 0; i < 16; i++) s[i] = input[i] ^ ctx.rk[i];
  for (let r = 1; r <= ctx.rounds; r++) {
    // InvSubBytes + InvShiftRows: row k of column c comes from column c - k.
    for (let c = 0; c < 4; c++) for (let k = 0; k < 4; k++) t[4 * c + k] = INV_SBOX[s[4 * ((c - k + 4) % 4) + k]];
    if (r < ctx.rounds) invMixColumnsInPlace(t, 0);
    for (let i = 0; i < 16; i++) s[i] = t[i] ^ ctx.rk[16 * r + i];
  }
  return s;
}

/** mbedtls_aes_crypt_ecb: MBEDTLS_AES_ENCRYPT runs the forward rounds, DECRYPT the inverse ones,
 *  whatever schedule the context was keyed with. */
function ecbBlock(ctx: AesContext, forward: boolean, input: Uint8Array): Uint8Array {
  return forward ? forwardBlock(ctx, input) : inverseBlock(ctx, input);
}

class EspruinoCryptoError extends Error {}

/** What jswrap_crypto_error reports for an mbedtls error code. */
function mbedtlsError(code: number): EspruinoCryptoError {
  if (code === -0x0022) return new EspruinoCryptoError("Invalid input length");
  if (code === -0x0080 /* MBEDTLS_ERR_MD_FEATURE_UNAVAILABLE */) return new EspruinoCryptoError("Feature unavailable");
  return new EspruinoCryptoError(`Unknown error: -0x${(-code).toString(16)}`);
}

type Mode = "CBC" | "CFB" | "CTR" | "OFB" | "ECB";

function aesCrypt(
  message: unknown,
  keyArg: unknown,
  options: unknown,
  encrypt: boolean,
  observe: ((o: AesObservation) => void) | undefined,
): ArrayBuffer {
  const iv = new Uint8Array(16);
  let ivGiven: Uint8Array | undefined;
  let mode: Mode = "CBC";
  if (options !== null && typeof options === "object") {
    const o = options as { iv?: unknown; mode?: unknown };
    if (o.iv !== undefined && o.iv !== null) {
      ivGiven = toBytes(o.iv, "AES iv");
      iv.set(ivGiven.subarray(0, 16));
    }
    if (o.mode !== undefined) {
      const m = String(o.mode);
      if (m !== "CBC" && m !== "CFB" && m !== "CTR" && m !== "OFB" && m !== "ECB") {
        throw new EspruinoCryptoError(`Unknown Crypto mode ${JSON.stringify(m)}`);
      }
      mode = m;
    }
  } else if (options !== undefined) {
    throw new EspruinoCryptoError("'options' must be undefined, or an Object");
  }
  const msg = toBytes(message, "AES message");
  const key = toBytes(keyArg, "AES key");
  if (key.length !== 16 && key.length !== 24 && key.length !== 32) throw mbedtlsError(-0x0020);
  const ctx = encrypt ? expandEncryptionKey(key) : expandDecryptionKey(key);
  const out = new Uint8Array(msg.length);

  const report = (op: AesObservation["op"], withIv: Uint8Array | undefined) => {
    if (observe) observe({ op, key: key.slice(), iv: withIv ? withIv.slice() : undefined, input: msg.slice() });
  };

  switch (mode) {
    case "CBC": {
      report(encrypt ? "cbc-encrypt" : "cbc-decrypt", iv);
      if (msg.length % 16) throw mbedtlsError(-0x0022);
      const chain = iv.slice();
      for (let off = 0; off < msg.length; off += 16) {
        const block = msg.subarray(off, off + 16);
        if (encrypt) {
          const x = new Uint8Array(16);
          for (let i = 0; i < 16; i++) x[i] = block[i] ^ chain[i];
          const c = ecbBlock(ctx, true, x);
          out.set(c, off);
          chain.set(c);
        } else {
          const p = ecbBlock(ctx, false, block);
          for (let i = 0; i < 16; i++) out[off + i] = p[i] ^ chain[i];
          chain.set(block);
        }
      }
      break;
    }
    case "CFB": {
      // mbedtls_aes_crypt_cfb8: always the forward rounds, over whatever schedule was keyed.
      report(encrypt ? "cfb-encrypt" : "cfb-decrypt", iv);
      const reg = iv.slice();
      for (let i = 0; i < msg.length; i++) {
        const ks = forwardBlock(ctx, reg);
        const c = (out[i] = ks[0] ^ msg[i]);
        reg.copyWithin(0, 1);
        reg[15] = encrypt ? c : msg[i];
      }
      break;
    }
    case "CTR": {
      // jswrap_crypto zeroes nonce_counter and never reads options.iv for CTR.
      report("ctr", ivGiven);
      const counter = new Uint8Array(16);
      for (let off = 0; off < msg.length; off += 16) {
        const ks = forwardBlock(ctx, counter);
        for (let i = 0; i < 16 && off + i < msg.length; i++) out[off + i] = msg[off + i] ^ ks[i];
        for (let i = 15; i >= 0; i--) if (++counter[i] & 0xff) break; else counter[i] = 0;
      }
      break;
    }
    case "ECB": {
      report(encrypt ? "ecb-encrypt" : "ecb-decrypt", undefined);
      for (let off = 0; off + 15 < msg.length; off += 16) out.set(ecbBlock(ctx, encrypt, msg.subarray(off, off + 16)), off);
      break;
    }
    case "OFB":
      throw mbedtlsError(-0x0080);
  }
  return toArrayBuffer(out);
}

// ---------------------------------------------------------------------------------------------
// Bangle.js 2's AES-CCM (nRF52840 CryptoCell). Standard CCM, so node:crypto models it exactly.

function ccmParams(key: Uint8Array, nonce: Uint8Array, tagLen: number, fn: string): void {
  if (key.length !== 16) throw new EspruinoCryptoError(`${fn}: key must be 16 bytes, got ${key.length}`);
  if (nonce.length < 7 || nonce.length > 13) throw new EspruinoCryptoError(`${fn}: nonce must be 7 to 13 bytes, got ${nonce.length}`);
  if (!(tagLen >= 4 && tagLen <= 16 && tagLen % 2 === 0)) throw new EspruinoCryptoError(`${fn}: tag length must be 4, 6, ... 16, got ${tagLen}`);
}

function makeAesGlobal(observe: ((o: AesObservation) => void) | undefined) {
  return {
    ccmEncrypt(msgArg: unknown, keyArg: unknown, nonceArg: unknown, tagLenArg: unknown): { data: ArrayBuffer; tag: ArrayBuffer } {
      const msg = toBytes(msgArg, "AES.ccmEncrypt message");
      const key = toBytes(keyArg, "AES.ccmEncrypt key");
      const nonce = toBytes(nonceArg, "AES.ccmEncrypt nonce");
      const tagLen = Number(tagLenArg);
      ccmParams(key, nonce, tagLen, "AES.ccmEncrypt");
      if (observe) observe({ op: "ccm-encrypt", key: key.slice(), nonce: nonce.slice(), input: msg.slice() });
      const c = createCipheriv("aes-128-ccm", key, nonce, { authTagLength: tagLen });
      // Buffer.from: node 20's CCM mishandles views on a zero-length ArrayBuffer (toBytes makes those).
      const data = Buffer.concat([c.update(Buffer.from(msg)), c.final()]);
      return { data: toArrayBuffer(data), tag: toArrayBuffer(c.getAuthTag()) };
    },
    ccmDecrypt(msgArg: unknown, keyArg: unknown, nonceArg: unknown, tagArg: unknown): ArrayBuffer {
      const msg = toBytes(msgArg, "AES.ccmDecrypt message");
      const key = toBytes(keyArg, "AES.ccmDecrypt key");
      const nonce = toBytes(nonceArg, "AES.ccmDecrypt nonce");
      const tag = toBytes(tagArg, "AES.ccmDecrypt tag");
      ccmParams(key, nonce, tag.length, "AES.ccmDecrypt");
      if (observe) observe({ op: "ccm-decrypt", key: key.slice(), nonce: nonce.slice(), input: msg.slice() });
      let plain: Buffer;
      try {
        const d = createDecipheriv("aes-128-ccm", key, nonce, { authTagLength: tag.length });
        d.setAuthTag(tag);
        // Buffer.from: with a view on a zero-length ArrayBuffer node 20 skips the tag check.
        plain = Buffer.concat([d.update(Buffer.from(msg)), d.final()]);
      } catch {
        throw new EspruinoCryptoError("AES.ccmDecrypt: authentication failed");
      }
      return toArrayBuffer(plain);
    },
  };
}

export function createEspruinoCrypto(opts: EspruinoCryptoOptions): { cryptoModule: any; aesGlobal: any | undefined } {
  const observe = opts.observe;
  const cryptoModule: any = {
    SHA256(message: unknown): ArrayBuffer {
      return toArrayBuffer(createHash("sha256").update(toBytes(message, "SHA256 message")).digest());
    },
  };
  if (opts.aesEcbCbc) {
    cryptoModule.AES = {
      encrypt: (message: unknown, key: unknown, options?: unknown) => aesCrypt(message, key, options, true, observe),
      decrypt: (message: unknown, key: unknown, options?: unknown) => aesCrypt(message, key, options, false, observe),
    };
  }
  return { cryptoModule, aesGlobal: opts.aesCcm ? makeAesGlobal(observe) : undefined };
}

/** E.CRC32: the zlib CRC-32 of the bytes, an unsigned 32-bit number (one host definition for the
 *  gateway, the serial client and this model: gateway/link/crc32.ts). */
export const crc32 = zlib.crc32;
