// Ed25519 (RFC 8032) on node:crypto, with keys as raw bytes: a 32-byte seed (RFC 8032's "private key")
// and a 32-byte public key. node:crypto only speaks DER/PEM/JWK, so raw keys are wrapped in the fixed
// PKCS#8 / SPKI prefixes for Ed25519 (RFC 8410): for this one curve the DER around the key never varies.
//
// Errors never carry key bytes: messages say what was wrong with the shape, not what the value was.

import { createPrivateKey, createPublicKey, randomBytes, sign, verify, type KeyObject } from "node:crypto";

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

function privateKeyFromSeed(seed: Uint8Array): KeyObject {
  if (!isBytes(seed) || seed.length !== ED25519_SEED_LENGTH) {
    throw new TypeError(`Ed25519 seed must be ${ED25519_SEED_LENGTH} bytes`);
  }
  const der = new Uint8Array(PKCS8_PREFIX.length + ED25519_SEED_LENGTH);
  der.set(PKCS8_PREFIX, 0);
  der.set(seed, PKCS8_PREFIX.length);
  try {
    return createPrivateKey({ key: Buffer.from(der.buffer, der.byteOffset, der.length), format: "der", type: "pkcs8" });
  } finally {
    der.fill(0); // the DER copy holds the seed; do not leave it in the heap
  }
}

function publicKeyObject(publicKey: Uint8Array): KeyObject {
  const der = new Uint8Array(SPKI_PREFIX.length + ED25519_PUBLIC_KEY_LENGTH);
  der.set(SPKI_PREFIX, 0);
  der.set(publicKey, SPKI_PREFIX.length);
  return createPublicKey({ key: Buffer.from(der.buffer, der.byteOffset, der.length), format: "der", type: "spki" });
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
  const publicKey = rawPublicKey(createPublicKey(privateKeyFromSeed(seed)));
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
  if (!isBytes(publicKey) || !isBytes(msg) || !isBytes(sig)) return false;
  if (publicKey.length !== ED25519_PUBLIC_KEY_LENGTH || sig.length !== ED25519_SIGNATURE_LENGTH) return false;
  try {
    return verify(null, msg, publicKeyObject(publicKey), sig);
  } catch {
    return false;
  }
}
