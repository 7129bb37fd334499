// The edges of the gateway's own crypto (gateway/crypto), where the published vectors in
// test/crypto.test.ts and test/cose.test.ts do not reach: the key, nonce and length checks of the
// symmetric suites and their exact errors (node:crypto and tweetnacl would refuse some of these
// inputs themselves, with other errors, and would take others: AES-CCM with a 12-byte nonce), HKDF's
// length limits, the suites the gateway names, Ed25519 refusing messages that are not bytes and
// answering false (never throwing) for inputs node:crypto refuses, and the SecretKeyCache's bounds. Written to kill the mutants that survived
// `npm run mutation -- gateway/crypto` (docs/MUTATION.md).
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { createCipheriv, createPrivateKey, randomBytes, type KeyObject } from "node:crypto";
import nacl from "tweetnacl";
import { ed25519Sign, ed25519Verify, generateEd25519, SecretKeyCache } from "../gateway/crypto/ed25519.ts";
import { nodeCrypto } from "../gateway/crypto/symmetric.ts";
import { SUITE_AES_CCM_16_64_128 as AES, SUITE_XSALSA20_POLY1305 as XSALSA } from "../firmware/crypto/types.ts";

const gw = nodeCrypto();
const bytes = (n: number, fill = 0x5a): Uint8Array => new Uint8Array(n).fill(fill);
const CCM_KEY_ERROR = "aes-ccm: key must be 16 bytes and nonce 13";
const SECRETBOX_ERROR = "secretbox: key must be 32 bytes and nonce 24";

/** AES-128-CCM with an 8-byte tag by node:crypto directly, with whatever nonce length OpenSSL takes. */
function opensslCcm(key: Uint8Array, nonce: Uint8Array, pt: Uint8Array): Uint8Array {
  const c = createCipheriv("aes-128-ccm", key, nonce, { authTagLength: 8 });
  return new Uint8Array(Buffer.concat([c.update(pt), c.final(), c.getAuthTag()]));
}

describe("AES-128-CCM on the gateway: only a 16-byte key and a 13-byte nonce", () => {
  const key = bytes(16, 1);
  const nonce = bytes(13, 2);
  const pt = bytes(20, 3);

  test("sealing refuses any other key or nonce length with the one error that names both", () => {
    for (const [k, n] of [[15, 13], [17, 13], [32, 13], [16, 12], [16, 7], [16, 14], [15, 12]]) {
      assert.throws(() => gw.seal(AES, bytes(k), bytes(n), pt), { message: CCM_KEY_ERROR }, `key ${k}, nonce ${n}`);
    }
    assert.equal(gw.seal(AES, key, nonce, pt).length, pt.length + 8);
  });

  test("a message OpenSSL sealed under a 12-byte nonce (it takes 7 to 13) is not opened", () => {
    const n12 = bytes(12, 2);
    const sealed = opensslCcm(key, n12, pt);
    assert.equal(gw.open(AES, key, n12, sealed), undefined);
    // The same call with the right nonce length opens: the refusal above is the length check's.
    assert.deepEqual(gw.open(AES, key, nonce, opensslCcm(key, nonce, pt)), pt);
  });

  test("opening with a wrong key or nonce length answers undefined, never throws, also for an empty message", () => {
    for (const [k, n] of [[15, 13], [17, 13], [16, 12], [16, 14]]) {
      for (const sealed of [bytes(8), bytes(28)]) {
        assert.equal(gw.open(AES, bytes(k), bytes(n), sealed), undefined, `key ${k}, nonce ${n}, ${sealed.length} bytes`);
      }
    }
  });

  test("anything shorter than a tag answers undefined", () => {
    for (let len = 0; len < 8; len++) assert.equal(gw.open(AES, key, nonce, bytes(len)), undefined, `${len} bytes`);
  });
});

describe("XSalsa20-Poly1305 on the gateway: only a 32-byte key and a 24-byte nonce", () => {
  const key = bytes(32, 4);
  const nonce = bytes(24, 5);

  test("sealing refuses other lengths with its own error, not tweetnacl's", () => {
    for (const [k, n] of [[31, 24], [33, 24], [16, 24], [32, 23], [32, 25], [31, 23]]) {
      assert.throws(() => gw.seal(XSALSA, bytes(k), bytes(n), bytes(5)), { message: SECRETBOX_ERROR }, `key ${k}, nonce ${n}`);
    }
  });

  test("opening with other lengths answers undefined where tweetnacl would throw", () => {
    const sealed = nacl.secretbox(bytes(5), nonce, key);
    for (const [k, n] of [[31, 24], [33, 24], [32, 23], [32, 25], [31, 23]]) {
      assert.equal(gw.open(XSALSA, bytes(k), bytes(n), sealed), undefined, `key ${k}, nonce ${n}`);
    }
    assert.deepEqual(gw.open(XSALSA, key, nonce, sealed), bytes(5));
  });
});

describe("suites", () => {
  test("the gateway names AES-CCM first, then XSalsa20-Poly1305", () => {
    assert.deepEqual(gw.suites(), [AES, XSALSA]);
  });

  test("an unknown suite: sealing throws naming it, opening answers undefined even for a valid secretbox", () => {
    const key = bytes(32, 6);
    const nonce = bytes(24, 7);
    for (const suite of [0, 3, 99]) {
      assert.throws(() => gw.seal(suite, key, nonce, bytes(4)), { message: `unsupported suite ${suite}` });
      assert.equal(gw.open(suite, key, nonce, nacl.secretbox(bytes(4), nonce, key)), undefined, `suite ${suite}`);
    }
  });
});

describe("HKDF on the gateway: lengths 0 to 8,160, integers only", () => {
  const salt = bytes(32, 8);
  const ikm = bytes(16, 9);
  const info = bytes(3, 10);
  const LIMIT = "hkdf: length must be an integer from 0 to 8160";

  test("the bounds are taken", () => {
    assert.equal(gw.hkdf(salt, ikm, info, 0).length, 0);
    assert.equal(gw.hkdf(salt, ikm, info, 1).length, 1);
    assert.equal(gw.hkdf(salt, ikm, info, 255 * 32).length, 255 * 32);
  });

  test("anything else is refused with the gateway's own error (node:crypto's would differ)", () => {
    for (const length of [-1, 8161, 1.5, NaN, Infinity]) assert.throws(() => gw.hkdf(salt, ikm, info, length), { message: LIMIT }, String(length));
  });
});

describe("Ed25519 on the gateway: messages and signatures must be bytes", () => {
  const { seed, publicKey } = generateEd25519();
  const text = "sign me";
  const textBytes = new Uint8Array(Buffer.from(text));

  test("signing a string (node:crypto would sign its UTF-8) is refused", () => {
    assert.throws(() => ed25519Sign(seed, text as unknown as Uint8Array), { name: "TypeError", message: "Ed25519 message must be a Uint8Array" });
  });

  test("a valid signature is refused when the message is given as a string or a DataView", () => {
    const sig = ed25519Sign(seed, textBytes);
    assert.equal(ed25519Verify(publicKey, textBytes, sig), true);
    assert.equal(ed25519Verify(publicKey, text as unknown as Uint8Array, sig), false);
    assert.equal(ed25519Verify(publicKey, new DataView(textBytes.buffer) as unknown as Uint8Array, sig), false);
  });

  test("an input that passes the byte checks but makes node:crypto throw is false, not an exception", () => {
    // A Proxy of a Uint8Array is an instance of Uint8Array, yet reading its length throws, and
    // node:crypto's verify refuses it as not an ArrayBufferView: the verifier says false.
    const sig = ed25519Sign(seed, textBytes);
    const proxied = new Proxy(sig, {});
    assert.ok(proxied instanceof Uint8Array);
    assert.throws(() => proxied.length, TypeError);
    assert.equal(ed25519Verify(publicKey, textBytes, proxied), false);
    assert.equal(ed25519Verify(publicKey, new Proxy(textBytes, {}), sig), false);
  });
});

describe("SecretKeyCache bounds", () => {
  const parse = (raw: Uint8Array): KeyObject => createPrivateKey({ key: Buffer.concat([Buffer.from("302e020100300506032b657004220420", "hex"), raw]), format: "der", type: "pkcs8" });
  const keys = ["A", "B", "C"].map(() => new Uint8Array(randomBytes(32)));
  const [A, B, C] = keys;

  test("a capacity of 1 is taken; 0, negative, fractional and unsafe ones are refused", () => {
    assert.equal(new SecretKeyCache(1).capacity, 1);
    for (const c of [0, -1, 1.5, NaN, 2 ** 53]) assert.throws(() => new SecretKeyCache(c), { name: "RangeError", message: "SecretKeyCache capacity must be a positive integer" }, String(c));
  });

  test("the keys seen once are remembered up to the capacity, the oldest forgotten first", () => {
    const run = (uses: Uint8Array[]): number => {
      const cache = new SecretKeyCache(2);
      for (const k of uses) cache.get(k, parse);
      return cache.size;
    };
    assert.equal(run([A, B, A]), 1, "two seen once fit: A's second use keeps it");
    assert.equal(run([A, B, C, A]), 0, "C pushed A out of the keys seen once");
    assert.equal(run([A, B, C, B]), 1, "B is still remembered after C");
  });

  test("clear() forgets the keys held and the keys seen once", () => {
    const cache = new SecretKeyCache(4);
    cache.get(A, parse);
    cache.get(A, parse);
    cache.get(B, parse);
    assert.equal(cache.size, 1);
    cache.clear();
    assert.equal(cache.size, 0);
    cache.get(B, parse);
    assert.equal(cache.size, 0, "B's earlier use was forgotten: this is its first again");
  });
});
