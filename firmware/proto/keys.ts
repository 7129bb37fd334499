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
/** A group SA's one direction: every member sends and receives under the one group key, each with
 *  its own sender index in the nonce (docs/PROTOCOL.md §5d). */
export const DIR_GROUP = 2;
/** The most senders a group SA may have: a sender index is below it, and a member keeps at most this
 *  many replay windows (one per sender it has heard). */
export const MAX_SENDERS = 32;
/** SaInstall.role of a group member: ROLE_GROUP + its sender index (0 and 1 are a pairwise SA's
 *  initiator and responder). */
export const ROLE_GROUP = 2;

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

/** Link keys for one join: one HKDF whose output is cut into the two keys (RFC 5869's own use of
 *  a long output), so a join costs the device two HMACs and one encode, not six and three. The
 *  counter is in the info, so even if both random nonces repeated (a broken RNG), a fresh counter
 *  still gives fresh keys: no (key, nonce) pair can recur. */
export function deriveLinkKeys(c: SymCrypto, cbor: Codec, rootKey: Bytes, id: string, ctr: number, nonceD: Bytes, nonceG: Bytes, suite: number): LinkKeys {
  const n = suite === SUITE_XSALSA20_POLY1305 ? 32 : 16;
  const okm = c.hkdf(concat([nonceD, nonceG]), rootKey, cbor.encode(["KP1 link keys", id, ctr, suite]), 2 * n);
  const keys = { suite: suite, up: new Uint8Array(okm.subarray(0, n)), down: new Uint8Array(okm.subarray(n)) };
  okm.fill(0);
  return keys;
}

/** AEAD nonce from (direction, spi, seq): dir(1) | spi(4) | sender(4) | seq(4), zero-padded to the
 *  suite's nonce length. The link uses spi 0; sender is 0 except on a group SA (dir DIR_GROUP), where
 *  it is the sending member's index. Headers need no AAD: altering one changes the nonce.
 *  The layout for tools and tests; crypt() in link.ts builds the same bytes inline (one function
 *  fewer alive on the device), and test/proto.test.ts proves the two agree. */
export function frameNonce(suite: number, dir: number, spi: number, seq: number, sender?: number): Bytes {
  sender = sender || 0;
  const n = new Uint8Array(suite === SUITE_XSALSA20_POLY1305 ? 24 : 13);
  n[0] = dir;
  n[1] = spi >>> 24; n[2] = (spi >>> 16) & 255; n[3] = (spi >>> 8) & 255; n[4] = spi & 255;
  n[5] = sender >>> 24; n[6] = (sender >>> 16) & 255; n[7] = (sender >>> 8) & 255; n[8] = sender & 255;
  n[9] = seq >>> 24; n[10] = (seq >>> 16) & 255; n[11] = (seq >>> 8) & 255; n[12] = seq & 255;
  return n;
}

/** An SA's key material from the seed the gateway distributed (seed 003: one seed, both devices
 *  expand it), in one HKDF: up (initiator -> responder; a group's one key), down (responder ->
 *  initiator), then the key-confirmation tags of the initiator (role 0), of the responder (role 1)
 *  and of each group member (role ROLE_GROUP + index), 16 bytes each. A tag proves its device holds
 *  the seed and installed this SPI and suite in this role. The output is cut at the tag asked for:
 *  HKDF's output does not depend on its length, so every role sees the same bytes before it. The
 *  info's label, for deriveSaKeys and saConfirmTag: */
const SA_KEYS = "KP1 sa keys";

/** An SA's keys, and the confirmation tag of the device in `role` (0 initiator, 1 responder,
 *  ROLE_GROUP + i group member i). */
export function deriveSaKeys(c: SymCrypto, cbor: Codec, seed: Bytes, spi: number, suite: number, role: number): LinkKeys & { confirm: Bytes } {
  const n = suite === SUITE_XSALSA20_POLY1305 ? 32 : 16;
  const okm = c.hkdf(new Uint8Array(0), seed, cbor.encode([SA_KEYS, spi, suite]), 2 * n + 16 * role + 16);
  const t = 2 * n + 16 * role;
  const keys = {
    suite: suite,
    up: new Uint8Array(okm.subarray(0, n)),
    down: new Uint8Array(okm.subarray(n, 2 * n)),
    confirm: new Uint8Array(okm.subarray(t, t + 16)),
  };
  okm.fill(0);
  return keys;
}

/** The key-confirmation tag alone, as deriveSaKeys makes it (the gateway checks both devices'). */
export function saConfirmTag(c: SymCrypto, cbor: Codec, seed: Bytes, spi: number, suite: number, role: number): Bytes {
  const k = deriveSaKeys(c, cbor, seed, spi, suite, role);
  k.up.fill(0);
  k.down.fill(0);
  return k.confirm;
}
