// The KeyObjects kept for raw secret keys (gateway/crypto/ed25519.ts SecretKeyCache, used by ed25519Sign and
// x25519SharedSecret; docs/BENCHMARKS.md has why): the cached path gives byte-identical signatures and
// shared secrets to the uncached one (a fresh parse of the raw key, and @noble/curves), the cache is
// bounded and evicts the key used least recently, a key used once is never kept, and a secret changed
// or wiped in place is never mistaken for the key it was.

import { test } from "node:test";
import assert from "node:assert/strict";
import { createPrivateKey, randomBytes, sign, type KeyObject } from "node:crypto";
import { ed25519, x25519 } from "@noble/curves/ed25519.js";
import { toHex } from "../firmware/bytes.ts";
import { clearEd25519KeyCache, ed25519Sign, ed25519Verify, generateEd25519, KEY_CACHE_CAPACITY, keyFingerprint, SecretKeyCache } from "../gateway/crypto/ed25519.ts";
import { clearX25519KeyCache, generateX25519, x25519PublicKey, x25519SharedSecret } from "../gateway/fleet/fleet.ts";

const bytes = (n: number): Uint8Array => new Uint8Array(randomBytes(n));

/** The uncached path: the seed parsed afresh from its PKCS#8 DER, as gateway/crypto/ed25519.ts did before. */
function uncachedSign(seed: Uint8Array, msg: Uint8Array): Uint8Array {
  const der = Buffer.concat([Buffer.from("302e020100300506032b657004220420", "hex"), seed]);
  return new Uint8Array(sign(null, msg, createPrivateKey({ key: der, format: "der", type: "pkcs8" })));
}

test("Ed25519: the first, second and later signatures with one seed (parsed, then kept) are byte-identical to a fresh parse and to @noble/curves", () => {
  clearEd25519KeyCache();
  for (let k = 0; k < 5; k++) {
    const { seed, publicKey } = generateEd25519();
    for (let i = 0; i < 4; i++) {
      const msg = bytes(1 + 97 * i);
      const sig = ed25519Sign(seed, msg);
      assert.equal(toHex(sig), toHex(uncachedSign(seed, msg)), `use ${i + 1} of key ${k}`);
      assert.equal(toHex(sig), toHex(ed25519.sign(msg, seed)));
      assert.equal(ed25519Verify(publicKey, msg, sig), true);
      assert.equal(ed25519.verify(sig, msg, publicKey), true);
      // The public key path (JWK import) refuses what it must.
      const bad = new Uint8Array(sig);
      bad[5] ^= 1;
      assert.equal(ed25519Verify(publicKey, msg, bad), false);
    }
  }
});

test("Ed25519: a seed changed in place signs with the new key, never the kept one", () => {
  clearEd25519KeyCache();
  const seed = generateEd25519().seed;
  const msg = bytes(64);
  ed25519Sign(seed, msg);
  ed25519Sign(seed, msg); // kept from here on
  seed[0] ^= 0x80;
  assert.equal(toHex(ed25519Sign(seed, msg)), toHex(ed25519.sign(msg, seed)));
  seed.fill(0);
  assert.equal(toHex(ed25519Sign(seed, msg)), toHex(ed25519.sign(msg, seed)));
});

test("X25519: shared secrets with a static key (parsed, then kept) and with generated pairs are byte-identical to @noble/curves", () => {
  clearX25519KeyCache();
  const own = generateX25519();
  // The static key as the gateway loads it from its file: a fresh array, not the one generateX25519 made.
  const loaded = new Uint8Array(own.secretKey);
  assert.equal(toHex(x25519PublicKey(loaded)), toHex(own.publicKey));
  assert.equal(toHex(x25519.getPublicKey(loaded)), toHex(own.publicKey));
  for (let i = 0; i < 6; i++) {
    const eph = generateX25519();
    assert.equal(toHex(x25519.getPublicKey(eph.secretKey)), toHex(eph.publicKey), "the generated pair's public key");
    const sent = x25519SharedSecret(eph.secretKey, own.publicKey);
    const received = x25519SharedSecret(loaded, eph.publicKey);
    assert.equal(toHex(sent), toHex(received), `message ${i}: both ends agree`);
    assert.equal(toHex(sent), toHex(x25519.getSharedSecret(eph.secretKey, own.publicKey)), `message ${i}: as @noble/curves`);
    eph.secretKey.fill(0); // as the interlink wipes its ephemeral
  }
});

test("X25519: a generated secret wiped or changed in place is not mistaken for the generated key", () => {
  clearX25519KeyCache();
  const peer = generateX25519();
  const eph = generateX25519();
  const before = x25519SharedSecret(eph.secretKey, peer.publicKey);
  assert.equal(toHex(before), toHex(x25519.getSharedSecret(eph.secretKey, peer.publicKey)));
  eph.secretKey[5] ^= 0x40; // not a bit X25519 clamping overrides
  assert.equal(toHex(x25519SharedSecret(eph.secretKey, peer.publicKey)), toHex(x25519.getSharedSecret(eph.secretKey, peer.publicKey)));
  assert.notEqual(toHex(x25519SharedSecret(eph.secretKey, peer.publicKey)), toHex(before));
  eph.secretKey.fill(0);
  assert.equal(toHex(x25519SharedSecret(eph.secretKey, peer.publicKey)), toHex(x25519.getSharedSecret(eph.secretKey, peer.publicKey)));
});

/** A SecretKeyCache with a parse function that counts its calls. */
function counted(capacity: number) {
  const cache = new SecretKeyCache(capacity);
  const parses = new Map<string, number>();
  const fake = new Map<string, KeyObject>();
  const get = (raw: Uint8Array): KeyObject =>
    cache.get(raw, (r) => {
      const id = toHex(r);
      parses.set(id, (parses.get(id) ?? 0) + 1);
      // A real KeyObject per parse, so identity shows which parse a returned key came from.
      const k = createPrivateKey({ key: Buffer.concat([Buffer.from("302e020100300506032b657004220420", "hex"), r]), format: "der", type: "pkcs8" });
      fake.set(id, k);
      return k;
    });
  return { cache, get, parses: (raw: Uint8Array) => parses.get(toHex(raw)) ?? 0 };
}

test("SecretKeyCache: a key is kept from its second use on, and then parsed no more", () => {
  const c = counted(4);
  const k = bytes(32);
  const first = c.get(k);
  assert.equal(c.cache.size, 0, "one use: not kept");
  const second = c.get(k);
  assert.notEqual(second, first, "the second use parses again, and keeps that KeyObject");
  assert.equal(c.cache.size, 1);
  for (let i = 0; i < 10; i++) assert.equal(c.get(k), second);
  assert.equal(c.parses(k), 2);
  assert.equal(c.get(new Uint8Array(k)), second, "by contents, not by array");
});

test("SecretKeyCache: keys used once are never kept, and do not push kept keys out", () => {
  const c = counted(2);
  const a = bytes(32);
  c.get(a);
  const kept = c.get(a);
  for (let i = 0; i < 50; i++) c.get(bytes(32)); // one-time keys, many more than the capacity
  assert.equal(c.cache.size, 1, "only the key used twice is held");
  assert.equal(c.get(a), kept);
  assert.equal(c.parses(a), 2);
});

test("SecretKeyCache: bounded; when full, the key used least recently is evicted (and parsed again when next used)", () => {
  const c = counted(2);
  const [a, b, d] = [bytes(32), bytes(32), bytes(32)];
  for (const k of [a, a, b, b]) c.get(k);
  assert.equal(c.cache.size, 2);
  c.get(a); // a is now the most recently used; b the least
  c.get(d);
  c.get(d); // kept: b goes
  assert.equal(c.cache.size, 2);
  assert.deepEqual([c.parses(a), c.parses(b), c.parses(d)], [2, 2, 2]);
  c.get(a);
  c.get(d);
  assert.deepEqual([c.parses(a), c.parses(d)], [2, 2], "a and d are held");
  c.get(b);
  assert.equal(c.parses(b), 3, "b was evicted: parsed again");
  assert.throws(() => new SecretKeyCache(0), RangeError);
  assert.equal(KEY_CACHE_CAPACITY, 1024);
});

test("SecretKeyCache: a parse that throws changes nothing", () => {
  const cache = new SecretKeyCache(2);
  const k = bytes(32);
  assert.throws(() => cache.get(k, () => {
    throw new Error("not a key");
  }), /not a key/);
  assert.equal(cache.size, 0);
  const key = createPrivateKey({ key: Buffer.concat([Buffer.from("302e020100300506032b657004220420", "hex"), k]), format: "der", type: "pkcs8" });
  cache.get(k, () => key);
  assert.equal(cache.size, 0, "the failed parse did not count as a first use");
});

test("keyFingerprint: keyed per process, and says nothing of the key in its output", () => {
  const k = bytes(32);
  assert.equal(keyFingerprint(k), keyFingerprint(new Uint8Array(k)));
  assert.notEqual(keyFingerprint(k), keyFingerprint(bytes(32)));
  assert.ok(!keyFingerprint(k).includes(Buffer.from(k).toString("base64")));
  assert.ok(!keyFingerprint(k).includes(toHex(k)));
});
