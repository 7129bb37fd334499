// The gateway's SymCrypto on node:crypto (SHA-256, HMAC, HKDF, AES-128-CCM with an 8-byte tag)
// and tweetnacl (secretbox). It must agree byte for byte with the device's implementation
// (firmware/crypto/device.ts); test/crypto.test.ts checks both against published vectors and
// against each other.

import { createCipheriv, createDecipheriv, createHash, createHmac, hkdfSync, randomBytes, timingSafeEqual } from "node:crypto";
import nacl from "tweetnacl";
import { decipherSecret, secretInput } from "./secret-bytes.ts";
import type { Bytes } from "../../firmware/bytes.ts";
import type { SymCrypto } from "../../firmware/crypto/types.ts";
import { SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305 } from "../../firmware/crypto/types.ts";

const CCM_KEY_LEN = 16;
const CCM_NONCE_LEN = 13;
const CCM_TAG_LEN = 8;

function bytes(b: Uint8Array | ArrayBuffer): Bytes {
  return b instanceof ArrayBuffer ? new Uint8Array(b) : new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

/** Constant-time comparison; different lengths are simply unequal (node's own throws). */
export function timingSafeEqualBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  return timingSafeEqual(a, b);
}

function ccmSeal(key: Bytes, nonce: Bytes, pt: Bytes): Bytes {
  if (key.length !== CCM_KEY_LEN || nonce.length !== CCM_NONCE_LEN) throw new Error("aes-ccm: key must be 16 bytes and nonce 13");
  const c = createCipheriv("aes-128-ccm", key, nonce, { authTagLength: CCM_TAG_LEN });
  // A copy: node 20 mishandles a view whose ArrayBuffer has no storage (see ccmOpen). In memory of
  // its own, zeroed after: the plaintext can be an SA's seed (SaInstall).
  const input = secretInput(pt);
  try {
    return bytes(Buffer.concat([c.update(input), c.final(), c.getAuthTag()]));
  } finally {
    input.fill(0);
  }
}

function ccmOpen(key: Bytes, nonce: Bytes, sealed: Bytes): Bytes | undefined {
  if (key.length !== CCM_KEY_LEN || nonce.length !== CCM_NONCE_LEN || sealed.length < CCM_TAG_LEN) return undefined;
  const split = sealed.length - CCM_TAG_LEN;
  // Node 20's CCM decipher skips tag verification when the ciphertext it is given is a view on a
  // zero-length ArrayBuffer (it accepts any tag). An empty message is therefore checked here by
  // recomputing its tag, and every other input is copied into a Buffer first.
  if (split === 0) return timingSafeEqualBytes(ccmSeal(key, nonce, new Uint8Array(0)), sealed) ? new Uint8Array(0) : undefined;
  try {
    const d = createDecipheriv("aes-128-ccm", key, nonce, { authTagLength: CCM_TAG_LEN });
    d.setAuthTag(sealed.subarray(split));
    return decipherSecret(d, Buffer.from(sealed.subarray(0, split)));
  } catch {
    return undefined;
  }
}

/** NaCl secretbox_easy layout, tag || ciphertext, as firmware/crypto/secretbox.ts. */
function secretboxSeal(key: Bytes, nonce: Bytes, pt: Bytes): Bytes {
  if (key.length !== nacl.secretbox.keyLength || nonce.length !== nacl.secretbox.nonceLength) {
    throw new Error("secretbox: key must be 32 bytes and nonce 24");
  }
  return nacl.secretbox(pt, nonce, key);
}

function secretboxOpen(key: Bytes, nonce: Bytes, sealed: Bytes): Bytes | undefined {
  if (key.length !== nacl.secretbox.keyLength || nonce.length !== nacl.secretbox.nonceLength) return undefined;
  if (sealed.length < nacl.secretbox.overheadLength) return undefined;
  return nacl.secretbox.open(sealed, nonce, key) ?? undefined;
}

/** The gateway's crypto: SymCrypto, always able to say which suites it runs. */
export type GatewayCrypto = SymCrypto & { suites(): number[] };

export function nodeCrypto(): GatewayCrypto {
  return {
    sha256: (data) => bytes(createHash("sha256").update(data).digest()),
    hmacSha256: (key, data) => bytes(createHmac("sha256", key).update(data).digest()),
    hkdf: (salt, ikm, info, length) => {
      if (!(Number.isInteger(length) && length >= 0 && length <= 255 * 32)) throw new Error("hkdf: length must be an integer from 0 to 8160");
      if (length === 0) return new Uint8Array(0);
      return bytes(hkdfSync("sha256", ikm, salt, info, length));
    },
    suites: () => [SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305],
    seal: (suite, key, nonce, pt) => {
      if (suite === SUITE_AES_CCM_16_64_128) return ccmSeal(key, nonce, pt);
      if (suite === SUITE_XSALSA20_POLY1305) return secretboxSeal(key, nonce, pt);
      throw new Error(`unsupported suite ${suite}`);
    },
    open: (suite, key, nonce, sealed) => {
      if (suite === SUITE_AES_CCM_16_64_128) return ccmOpen(key, nonce, sealed);
      if (suite === SUITE_XSALSA20_POLY1305) return secretboxOpen(key, nonce, sealed);
      return undefined;
    },
    random: (n) => bytes(randomBytes(n)),
  };
}
