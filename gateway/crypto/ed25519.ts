// Ed25519 (RFC 8032) on node:crypto, with keys as raw bytes: a 32-byte seed (RFC 8032's "private key")
// and a 32-byte public key. node:crypto only speaks DER/PEM/JWK, so a seed is wrapped in the fixed
// PKCS#8 prefix for Ed25519 (RFC 8410: for this one curve the DER around the key never varies) and a
// public key in a JWK (RFC 8037 OKP, the same key as from its SPKI). The seed is not put in a JWK: that
// would make it a string, which cannot be wiped.
//
// Errors never carry key bytes: messages say what was wrong with the shape, not what the value was.
//
// Parsing a raw key into a KeyObject is what costs, not the curve operation: with OpenSSL 3 a PKCS#8
// private key takes about ten signatures' time to parse, an SPKI public key about one verification's,
// a JWK public key a tenth of that (bench/curves.ts, bench/crossgw.ts, docs/BENCHMARKS.md). So seeds
// used again are kept as KeyObjects (SecretKeyCache below) and public keys are imported as JWK.

import { createHmac, createPrivateKey, createPublicKey, randomBytes, sign, verify, type KeyObject } from "node:crypto";

export interface Ed25519KeyPair {
  /** The 32-byte secret seed. Whoever holds it can sign: keep it out of logs and wipe it when done. */
  seed: Uint8Array;
  /** The 32-byte encoded public point A. */
  publicKey: Uint8Array;
}

export const ED25519_SEED_LENGTH = 32;
export const ED25519_PUBLIC_KEY_LENGTH = 32;
export const ED25519_SIGNATURE_LENGTH = 64;

// PrivateKeyInfo { version 0, AlgorithmIdentifier { id-Ed25519 1.3.101.112 }, OCTET STRING { OCTET STRING seed } }
const PKCS8_PREFIX = Uint8Array.of(
  0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
);
// SubjectPublicKeyInfo { AlgorithmIdentifier { id-Ed25519 }, BIT STRING (0 unused bits) publicKey }
const SPKI_PREFIX = Uint8Array.of(0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00);

function isBytes(v: unknown): v is Uint8Array {
  return v instanceof Uint8Array;
}

// ---------------------------------------------------------------------------------------------------
// KeyObjects kept for secret keys used again

/** Most KeyObjects a SecretKeyCache keeps (and most one-time fingerprints it remembers). */
export const KEY_CACHE_CAPACITY = 1024;

// Fingerprints are HMAC-SHA256 under a key drawn at start and never shown: they say nothing about a
// secret outside this process, and the cache holds no copy of the raw secret in the JavaScript heap
// (a Map key string could never be wiped).
const FINGERPRINT_KEY = randomBytes(32);

/** A keyed fingerprint of raw key bytes (for this process only). */
export function keyFingerprint(raw: Uint8Array): string {
  return createHmac("sha256", FINGERPRINT_KEY).update(raw).digest("base64");
}

/**
 * KeyObjects for raw secret keys, so that a key used again (the gateway's signing and encryption keys,
 * the identity keys it holds for its devices, the verifier's and the CA's keys) is parsed once, not on
 * every signature or shared secret (docs/BENCHMARKS.md: the parsing cost more than the curve itself).
 *
 * - Bounded: at most `capacity` KeyObjects; when full, the one used least recently goes.
 * - Only keys seen twice are kept: the first use parses and remembers only the key's fingerprint, the
 *   second keeps the KeyObject. A one-time secret (an ephemeral key) is therefore never held here
 *   beyond the call that used it, and a stream of one-time keys cannot push the long-lived keys out.
 *   The fingerprints of keys seen once are bounded likewise (the oldest forgotten first).
 * - Keyed by keyFingerprint: neither the raw secret nor anything derived from it that could be used
 *   outside this process is a Map key. Nothing here is ever logged.
 * - Contents, not identity: a key wiped or changed in place is a different key here.
 */
export class SecretKeyCache {
  private readonly keys = new Map<string, KeyObject>();
  private readonly seenOnce = new Set<string>();

  constructor(readonly capacity: number = KEY_CACHE_CAPACITY) {
    if (!Number.isSafeInteger(capacity) || capacity < 1) throw new RangeError("SecretKeyCache capacity must be a positive integer");
  }

  /** KeyObjects held now. */
  get size(): number {
    return this.keys.size;
  }

  /** The KeyObject for raw: a held one, else parse(raw) (kept if raw was seen before). parse's errors
   *  pass through and change nothing. */
  get(raw: Uint8Array, parse: (raw: Uint8Array) => KeyObject): KeyObject {
    const id = keyFingerprint(raw);
    const held = this.keys.get(id);
    if (held) {
      // Most recently used last, so that eviction takes the least recently used.
      this.keys.delete(id);
      this.keys.set(id, held);
      return held;
    }
    const key = parse(raw);
    if (this.seenOnce.delete(id)) {
      if (this.keys.size >= this.capacity) this.keys.delete(this.keys.keys().next().value as string);
      this.keys.set(id, key);
    } else {
      if (this.seenOnce.size >= this.capacity) this.seenOnce.delete(this.seenOnce.values().next().value as string);
      this.seenOnce.add(id);
    }
    return key;
  }

  /** Forgets every key. */
  clear(): void {
    this.keys.clear();
    this.seenOnce.clear();
  }
}

/** Ed25519 private keys used again (see SecretKeyCache). */
const privateKeys = new SecretKeyCache();

/** Empties the Ed25519 private-key cache (tests compare the cached path with the uncached one). */
export function clearEd25519KeyCache(): void {
  privateKeys.clear();
}

// ---------------------------------------------------------------------------------------------------

function checkSeed(seed: Uint8Array): void {
  if (!isBytes(seed) || seed.length !== ED25519_SEED_LENGTH) {
    throw new TypeError(`Ed25519 seed must be ${ED25519_SEED_LENGTH} bytes`);
  }
}

/** The KeyObject for a seed, parsed (from its PKCS#8 DER) or kept from an earlier use. */
function privateKeyFromSeed(seed: Uint8Array): KeyObject {
  checkSeed(seed);
  return privateKeys.get(seed, parsePrivateKey);
}

function parsePrivateKey(seed: Uint8Array): KeyObject {
  const der = new Uint8Array(PKCS8_PREFIX.length + ED25519_SEED_LENGTH);
  der.set(PKCS8_PREFIX, 0);
  der.set(seed, PKCS8_PREFIX.length);
  try {
    return createPrivateKey({ key: Buffer.from(der.buffer, der.byteOffset, der.length), format: "der", type: "pkcs8" });
  } finally {
    der.fill(0); // the DER copy holds the seed; do not leave it in the heap
  }
}

/** A public key as a KeyObject, imported as a JWK (RFC 8037 OKP): the same key as from its SPKI DER,
 *  at a tenth of the cost (no OpenSSL decoder involved). Public, so nothing to wipe or keep. */
function publicKeyObject(publicKey: Uint8Array): KeyObject {
  return createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: Buffer.from(publicKey.buffer, publicKey.byteOffset, publicKey.length).toString("base64url") }, format: "jwk" });
}

function rawPublicKey(key: KeyObject): Uint8Array {
  const spki = key.export({ format: "der", type: "spki" });
  if (spki.length !== SPKI_PREFIX.length + ED25519_PUBLIC_KEY_LENGTH) {
    throw new Error("unexpected Ed25519 SubjectPublicKeyInfo length from node:crypto");
  }
  return new Uint8Array(spki.subarray(SPKI_PREFIX.length));
}

/** The key pair for a given seed. The returned seed is a copy: wiping it does not touch the argument. */
export function ed25519FromSeed(seed: Uint8Array): Ed25519KeyPair {
  // Parsed, not through the cache: a key pair being made is not a key being used again yet.
  checkSeed(seed);
  const publicKey = rawPublicKey(createPublicKey(parsePrivateKey(seed)));
  return { seed: new Uint8Array(seed), publicKey };
}

/** A fresh key pair from a CSPRNG seed. */
export function generateEd25519(): Ed25519KeyPair {
  const seed = randomBytes(ED25519_SEED_LENGTH);
  try {
    return ed25519FromSeed(seed);
  } finally {
    seed.fill(0);
  }
}

/** The 64-byte signature R || S over msg (PureEdDSA: the message itself, not a hash of it). Deterministic. */
export function ed25519Sign(seed: Uint8Array, msg: Uint8Array): Uint8Array {
  if (!isBytes(msg)) throw new TypeError("Ed25519 message must be a Uint8Array");
  return new Uint8Array(sign(null, msg, privateKeyFromSeed(seed)));
}

/**
 * True only for a valid signature. Anything malformed (wrong lengths, a public key that is not a point,
 * non-bytes) is simply false: a verifier must not be made to throw by its input.
 */
export function ed25519Verify(publicKey: Uint8Array, msg: Uint8Array, sig: Uint8Array): boolean {
  // The checks are inside the try too: an object can pass instanceof and still throw when its length
  // is read (a Proxy of a Uint8Array does).
  try {
    if (!isBytes(publicKey) || !isBytes(msg) || !isBytes(sig)) return false;
    if (publicKey.length !== ED25519_PUBLIC_KEY_LENGTH || sig.length !== ED25519_SIGNATURE_LENGTH) return false;
    return verify(null, msg, publicKeyObject(publicKey), sig);
  } catch {
    return false;
  }
}
