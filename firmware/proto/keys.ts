// The join key schedule and the AEAD nonces, written once for both sides (docs/PROTOCOL.md §Join).
//
// Every MAC input and HKDF info is a CBOR array that starts with a context label, as COSE builds its
// structures, so no input of one purpose can be mistaken for another's.

import { concat, type Bytes } from "../bytes.ts";
import { SUITE_XSALSA20_POLY1305, type SymCrypto } from "../crypto/types.ts";

export interface Codec {
  encode(v: unknown): Bytes;
  decode(b: Bytes): unknown;
}

/** Bytes of each join nonce and each join tag (128 bits: a MAC forgery costs 2^128 guesses). */
export const JOIN_NONCE_BYTES = 16;
export const JOIN_TAG_BYTES = 16;
/** Direction bytes in every nonce: the two directions of a link or SA never share a nonce. */
export const DIR_UP = 0; // device -> gateway (or SA initiator -> responder)
export const DIR_DOWN = 1;

/** The join MACs (docs/PROTOCOL.md §3). Without nG: the device's proof of the root key over a fresh
 *  counter and nonce. With nG: the gateway's answer, bound to the device's nonce so an old answer
 *  cannot be replayed. The MAC key is derived from the root key, never the root key itself. */
export function joinTag(c: SymCrypto, cbor: Codec, rootKey: Bytes, id: string, ctr: number, nD: Bytes, suite: number, nG?: Bytes): Bytes {
  const k = c.hkdf(new Uint8Array(0), rootKey, cbor.encode(["KP1 join mac"]), 32);
  const fields = nG ? ["KP1 join accept", id, ctr, nD, suite, nG] : ["KP1 join request", id, ctr, nD, suite];
  const t = c.hmacSha256(k, cbor.encode(fields)).subarray(0, JOIN_TAG_BYTES);
  k.fill(0);
  return t;
}

export interface LinkKeys {
  suite: number;
  up: Bytes;
  down: Bytes;
}

/** HKDF-Expand (RFC 5869 §2.3) of at most one hash length, which every key here is: T(1) =
 *  HMAC(PRK, info || 0x01), cut to n bytes. With one HKDF-Extract shared by the keys of one secret,
 *  a set of keys costs one HMAC each plus one, instead of two each: the device's time is in HMACs.
 *  Byte for byte what c.hkdf(salt, ikm, info, n) gives (test/proto.test.ts checks it). */
function expand(c: SymCrypto, prk: Bytes, info: Bytes, n: number): Bytes {
  const t = c.hmacSha256(prk, concat([info, new Uint8Array([1])]));
  const k = new Uint8Array(t.subarray(0, n));
  t.fill(0);
  return k;
}

/** Link keys for one join. The counter is in the info, so even if both random nonces repeated (a
 *  broken RNG), a fresh counter still gives fresh keys: no (key, nonce) pair can recur.
 *  up and down are HKDF(salt empty, link secret, label): both expand one extract of the link secret. */
export function deriveLinkKeys(c: SymCrypto, cbor: Codec, rootKey: Bytes, id: string, ctr: number, nonceD: Bytes, nonceG: Bytes, suite: number): LinkKeys {
  const secretPrk = c.hmacSha256(concat([nonceD, nonceG]), rootKey);
  const secret = expand(c, secretPrk, cbor.encode(["KP1 link", id, ctr, suite]), 32);
  const prk = c.hmacSha256(new Uint8Array(0), secret);
  const n = suite === SUITE_XSALSA20_POLY1305 ? 32 : 16;
  const keys = {
    suite: suite,
    up: expand(c, prk, cbor.encode(["KP1 link up"]), n),
    down: expand(c, prk, cbor.encode(["KP1 link down"]), n),
  };
  secretPrk.fill(0);
  secret.fill(0);
  prk.fill(0);
  return keys;
}

/** AEAD nonce from (direction, spi, seq): dir(1) | spi(4) | zero(4) | seq(4), zero-padded to the
 *  suite's nonce length. The link uses spi 0. Headers need no AAD: altering one changes the nonce.
 *  The layout for tools and tests; crypt() in link.ts builds the same bytes inline (one function
 *  fewer alive on the device), and test/proto.test.ts proves the two agree. */
export function frameNonce(suite: number, dir: number, spi: number, seq: number): Bytes {
  const n = new Uint8Array(suite === SUITE_XSALSA20_POLY1305 ? 24 : 13);
  n[0] = dir;
  n[1] = spi >>> 24; n[2] = (spi >>> 16) & 255; n[3] = (spi >>> 8) & 255; n[4] = spi & 255;
  n[9] = seq >>> 24; n[10] = (seq >>> 16) & 255; n[11] = (seq >>> 8) & 255; n[12] = seq & 255;
  return n;
}

/** The label of an SA's key-confirmation tag (deriveSaKeys and saConfirmTag). */
const SA_CONFIRM = "KP1 sa confirm";

/** An SA's keys from the seed the gateway distributed (seed 003: one seed, both devices expand it).
 *  up: initiator -> responder; down: responder -> initiator. confirm: the key-confirmation tag of the
 *  device in `role` (0 initiator, 1 responder), proving it holds the seed and installed this SPI in
 *  this role. */
export function deriveSaKeys(c: SymCrypto, cbor: Codec, seed: Bytes, spi: number, suite: number, role: number): LinkKeys & { confirm: Bytes } {
  const n = suite === SUITE_XSALSA20_POLY1305 ? 32 : 16;
  // HKDF(salt empty, seed, label) for each key, sharing the one extract of the seed.
  const prk = c.hmacSha256(new Uint8Array(0), seed);
  const keys = {
    suite: suite,
    up: expand(c, prk, cbor.encode(["KP1 sa up", spi, suite]), n),
    down: expand(c, prk, cbor.encode(["KP1 sa down", spi, suite]), n),
    confirm: expand(c, prk, cbor.encode([SA_CONFIRM, spi, role]), 16),
  };
  prk.fill(0);
  return keys;
}

/** The key-confirmation tag alone, as deriveSaKeys makes it (the gateway checks both devices'). */
export function saConfirmTag(c: SymCrypto, cbor: Codec, seed: Bytes, spi: number, role: number): Bytes {
  return c.hkdf(new Uint8Array(0), seed, cbor.encode([SA_CONFIRM, spi, role]), 16);
}
