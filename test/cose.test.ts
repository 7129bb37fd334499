// Ed25519, COSE_Sign1 and device certificates (CWT).
//
// Where a standard publishes bytes we reproduce them: RFC 8032 §7.1 for Ed25519 and cose-wg/Examples
// eddsa-sig-01 for COSE_Sign1. Everywhere else the expected bytes are built by hand in this file, byte
// by byte, and checked against @noble/curves as an independent Ed25519, so our CBOR codec is never
// the only witness of its own output.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import fc from "fast-check";
import { ed25519 as noble } from "@noble/curves/ed25519.js";
import { concat, fromHex, toHex } from "../firmware/bytes.ts";

const utf8Encode = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, "utf8"));
import { ed25519FromSeed, ed25519Sign, ed25519Verify, generateEd25519 } from "../gateway/crypto/ed25519.ts";
import { encode } from "../gateway/encoding/cbor.ts";
import { CoseError, signSign1, sigStructure1, verifySign1 } from "../gateway/encoding/cose.ts";
import {
  CertError,
  issueCertificate,
  readCertificateUnverified,
  verifyCertificate,
  type CertErrorCode,
  type DeviceCertClaims,
} from "../gateway/encoding/cwt.ts";

// ---------------------------------------------------------------------------------------------------
// helpers: hand-made CBOR heads, so expected bytes do not come from the codec under test

function hex(h: string): Uint8Array {
  const b = fromHex(h.replace(/\s+/g, ""));
  if (!b) throw new Error(`bad hex in test: ${h}`);
  return b;
}

function readVectors<T>(name: string): T {
  return JSON.parse(readFileSync(new URL(`./vectors/${name}`, import.meta.url), "utf8")) as T;
}

/** CBOR head for major type (0..7) and argument n (< 2^32), shortest form. */
function head(major: number, n: number): Uint8Array {
  const m = major << 5;
  if (n < 24) return Uint8Array.of(m | n);
  if (n < 0x100) return Uint8Array.of(m | 24, n);
  if (n < 0x10000) return Uint8Array.of(m | 25, n >> 8, n & 255);
  return Uint8Array.of(m | 26, (n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255);
}
const bstr = (b: Uint8Array): Uint8Array => concat([head(2, b.length), b]);
const tstr = (s: string): Uint8Array => concat([head(3, utf8Encode(s).length), utf8Encode(s)]);
const uint = (n: number): Uint8Array => head(0, n);

/** ["Signature1", protected, h'', payload], by hand. */
function handSigStructure(protectedBytes: Uint8Array, payload: Uint8Array): Uint8Array {
  return concat([Uint8Array.of(0x84), tstr("Signature1"), bstr(protectedBytes), bstr(new Uint8Array(0)), bstr(payload)]);
}

/** 18([protected, unprotected, payload, signature]) by hand; unprotected is given already encoded. */
function handSign1(protectedBytes: Uint8Array, unprotected: Uint8Array, payload: Uint8Array, sig: Uint8Array): Uint8Array {
  return concat([Uint8Array.of(0xd2, 0x84), bstr(protectedBytes), unprotected, bstr(payload), bstr(sig)]);
}

/** A COSE_Sign1 signed properly (by noble, over the hand-built Sig_structure) with whatever headers we like. */
function forgeSign1(seed: Uint8Array, protectedBytes: Uint8Array, unprotected: Uint8Array, payload: Uint8Array): Uint8Array {
  const sig = noble.sign(handSigStructure(protectedBytes, payload), seed);
  return handSign1(protectedBytes, unprotected, payload, sig);
}

const PROTECTED_EDDSA = hex("a10127"); // {1: -8}
const EMPTY_MAP = hex("a0");

function flipBit(b: Uint8Array, index: number, bit: number): Uint8Array {
  const out = new Uint8Array(b);
  out[index] ^= 1 << bit;
  return out;
}

function expectCoseError(fn: () => unknown, code: CoseError["code"]): void {
  assert.throws(fn, (e: unknown) => e instanceof CoseError && e.code === code);
}

function expectCertError(fn: () => unknown, code: CertErrorCode): void {
  assert.throws(fn, (e: unknown) => e instanceof CertError && e.code === code);
}

// ---------------------------------------------------------------------------------------------------
// Ed25519

interface Rfc8032Vector {
  name: string;
  seed: string;
  publicKey: string;
  message: string;
  signature: string;
}
const RFC8032 = readVectors<{ vectors: Rfc8032Vector[] }>("rfc8032-ed25519.json").vectors;

test("Ed25519: RFC 8032 §7.1 vectors (public key, signature, verification)", () => {
  assert.equal(RFC8032.length, 4);
  for (const v of RFC8032) {
    const pair = ed25519FromSeed(hex(v.seed));
    assert.equal(toHex(pair.publicKey), v.publicKey, `${v.name}: public key`);
    assert.equal(toHex(ed25519Sign(hex(v.seed), hex(v.message))), v.signature, `${v.name}: signature`);
    assert.equal(ed25519Verify(hex(v.publicKey), hex(v.message), hex(v.signature)), true, `${v.name}: verifies`);
  }
});

test("Ed25519: an RFC 8032 signature fails after any single bit flip of message or signature", () => {
  for (const v of RFC8032) {
    const pk = hex(v.publicKey);
    const msg = hex(v.message);
    const sig = hex(v.signature);
    for (let i = 0; i < sig.length; i++) {
      assert.equal(ed25519Verify(pk, msg, flipBit(sig, i, i % 8)), false, `${v.name}: sig byte ${i}`);
    }
    if (msg.length > 0) assert.equal(ed25519Verify(pk, flipBit(msg, 0, 0), sig), false, `${v.name}: message`);
    assert.equal(ed25519Verify(pk, concat([msg, Uint8Array.of(0)]), sig), false, `${v.name}: longer message`);
  }
});

test("Ed25519: verify returns false, never throws, on malformed input", () => {
  const v = RFC8032[1];
  const pk = hex(v.publicKey);
  const msg = hex(v.message);
  const sig = hex(v.signature);
  assert.equal(ed25519Verify(pk.subarray(0, 31), msg, sig), false, "short key");
  assert.equal(ed25519Verify(concat([pk, Uint8Array.of(0)]), msg, sig), false, "long key");
  assert.equal(ed25519Verify(pk, msg, sig.subarray(0, 63)), false, "short signature");
  assert.equal(ed25519Verify(new Uint8Array(32).fill(0xff), msg, sig), false, "key that is not a curve point");
  assert.equal(ed25519Verify("pk" as unknown as Uint8Array, msg, sig), false, "not bytes");
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 40 }), fc.uint8Array({ maxLength: 16 }), fc.uint8Array({ maxLength: 70 }), (k, m, s) => {
      assert.equal(ed25519Verify(k, m, s), false);
    }),
  );
});

test("Ed25519: generated key pairs sign and verify, and agree with @noble/curves", () => {
  const a = generateEd25519();
  const b = generateEd25519();
  assert.equal(a.seed.length, 32);
  assert.notDeepEqual(a.seed, b.seed);
  assert.deepEqual(a.publicKey, noble.getPublicKey(a.seed));
  const msg = utf8Encode("keyproxy");
  assert.equal(ed25519Verify(a.publicKey, msg, ed25519Sign(a.seed, msg)), true);
  assert.equal(ed25519Verify(b.publicKey, msg, ed25519Sign(a.seed, msg)), false);
});

test("Ed25519: a seed of the wrong length is refused without echoing it", () => {
  const seed = new Uint8Array(31).fill(0xab);
  assert.throws(
    () => ed25519Sign(seed, new Uint8Array(0)),
    (e: unknown) => e instanceof TypeError && !/ab/i.test(e.message) && /32 bytes/.test(e.message),
  );
  assert.throws(() => ed25519FromSeed(new Uint8Array(33)), TypeError);
});

test("Ed25519: node:crypto and @noble/curves produce the same keys and signatures (random seeds)", () => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 32, maxLength: 32 }), fc.uint8Array({ maxLength: 300 }), (seed, msg) => {
      const ours = ed25519FromSeed(seed);
      assert.deepEqual(ours.publicKey, noble.getPublicKey(seed));
      const sig = ed25519Sign(seed, msg);
      assert.deepEqual(sig, noble.sign(msg, seed));
      assert.equal(noble.verify(sig, msg, ours.publicKey), true);
    }),
    { numRuns: 50 },
  );
});

// ---------------------------------------------------------------------------------------------------
// COSE_Sign1

test("COSE: Sig_structure is byte-exact", () => {
  const payload = utf8Encode("This is the content.");
  // Written out from RFC 9052 §4.4: 84, text(10) "Signature1", bstr(3) a10127, bstr(0), bstr(20) payload.
  const expected = hex(
    "84 6a 5369676e617475726531 43 a10127 40 54 546869732069732074686520636f6e74656e742e",
  );
  assert.deepEqual(sigStructure1(PROTECTED_EDDSA, payload), expected);
  assert.deepEqual(sigStructure1(PROTECTED_EDDSA, payload), handSigStructure(PROTECTED_EDDSA, payload));
  const long = new Uint8Array(300).fill(7);
  assert.deepEqual(sigStructure1(PROTECTED_EDDSA, long), handSigStructure(PROTECTED_EDDSA, long));
});

interface CoseWgVector {
  plaintext: string;
  key: { x_hex: string; d_hex: string };
  protected_hex: string;
  unprotected_kid: string;
  cbor: string;
}
const EDDSA_SIG_01 = readVectors<CoseWgVector>("cose-wg-eddsa-sig-01.json");

test("COSE: cose-wg eddsa-sig-01 verifies and its exact bytes are reproduced", () => {
  const v = EDDSA_SIG_01;
  const message = hex(v.cbor);
  const payload = utf8Encode(v.plaintext);
  const got = verifySign1(message, hex(v.key.x_hex));
  assert.deepEqual(got.payload, payload);
  assert.deepEqual(got.kid, utf8Encode(v.unprotected_kid));

  // Its protected header is {1: -8, 3: 0} (alg, content type), so signSign1 (which writes only the alg)
  // cannot emit it; reproduce it from our Sig_structure and our Ed25519 instead.
  const protectedBytes = hex(v.protected_hex);
  const sig = ed25519Sign(hex(v.key.d_hex), sigStructure1(protectedBytes, payload));
  const unprotected = concat([hex("a1 04"), bstr(utf8Encode(v.unprotected_kid))]);
  assert.equal(toHex(handSign1(protectedBytes, unprotected, payload, sig)), toHex(message));
});

test("COSE: signSign1 output is byte-exact, with and without kid, and @noble/curves verifies it", () => {
  const { seed, publicKey } = ed25519FromSeed(hex(RFC8032[2].seed));
  const payload = utf8Encode("payload");
  for (const kid of [undefined, utf8Encode("gw-key-1")]) {
    const msg = signSign1(payload, seed, kid);
    const sig = msg.subarray(msg.length - 64);
    assert.equal(noble.verify(sig, handSigStructure(PROTECTED_EDDSA, payload), publicKey), true);
    const unprotected = kid ? concat([hex("a1 04"), bstr(kid)]) : EMPTY_MAP;
    assert.deepEqual(msg, handSign1(PROTECTED_EDDSA, unprotected, payload, sig));
    assert.deepEqual(signSign1(payload, seed, kid), msg, "deterministic");
    const got = verifySign1(msg, publicKey);
    assert.deepEqual(got.payload, payload);
    assert.deepEqual(got.kid, kid);
  }
});

test("COSE: messages signed by @noble/curves over a hand-built Sig_structure verify (random payloads)", () => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 32, maxLength: 32 }), fc.uint8Array({ maxLength: 600 }), (seed, payload) => {
      const msg = forgeSign1(seed, PROTECTED_EDDSA, EMPTY_MAP, payload);
      assert.deepEqual(verifySign1(msg, noble.getPublicKey(seed)).payload, payload);
    }),
    { numRuns: 50 },
  );
});

test("COSE: rejections", async (t) => {
  const seed = hex(RFC8032[0].seed);
  const pk = hex(RFC8032[0].publicKey);
  const payload = utf8Encode("hello");
  const good = signSign1(payload, seed);
  assert.deepEqual(verifySign1(good, pk).payload, payload, "the baseline verifies");

  await t.test("flipped signature bit", () => expectCoseError(() => verifySign1(flipBit(good, good.length - 1, 3), pk), "bad-signature"));
  await t.test("flipped payload bit", () => {
    const at = good.length - 64 - 2 - 1; // last payload byte, just before the signature's 58 40 head
    expectCoseError(() => verifySign1(flipBit(good, at, 0), pk), "bad-signature");
  });
  await t.test("another key", () => expectCoseError(() => verifySign1(good, hex(RFC8032[1].publicKey)), "bad-signature"));
  await t.test("alg ES256 (-7), correctly signed", () =>
    expectCoseError(() => verifySign1(forgeSign1(seed, hex("a10126"), EMPTY_MAP, payload), pk), "bad-alg"));
  await t.test("alg only in the unprotected header", () =>
    expectCoseError(() => verifySign1(forgeSign1(seed, new Uint8Array(0), hex("a10127"), payload), pk), "bad-alg"));
  await t.test("no alg at all", () =>
    expectCoseError(() => verifySign1(forgeSign1(seed, hex("a0"), EMPTY_MAP, payload), pk), "bad-alg"));
  await t.test("crit header", () =>
    expectCoseError(() => verifySign1(forgeSign1(seed, hex("a2 0127 02 8104"), hex("a10440"), payload), pk), "malformed"));
  await t.test("label in both buckets", () =>
    expectCoseError(() => verifySign1(forgeSign1(seed, PROTECTED_EDDSA, hex("a10127"), payload), pk), "malformed"));
  await t.test("non-shortest integer in the protected header", () =>
    expectCoseError(() => verifySign1(forgeSign1(seed, hex("a1 1801 27"), EMPTY_MAP, payload), pk), "malformed"));
  await t.test("duplicate key in the protected header", () =>
    expectCoseError(() => verifySign1(forgeSign1(seed, hex("a2 0127 0127"), EMPTY_MAP, payload), pk), "malformed"));
  await t.test("kid that is not a byte string", () =>
    expectCoseError(() => verifySign1(forgeSign1(seed, PROTECTED_EDDSA, hex("a1 04 01"), payload), pk), "malformed"));
  await t.test("untagged", () => expectCoseError(() => verifySign1(good.subarray(1), pk), "malformed"));
  await t.test("array of 3", () => expectCoseError(() => verifySign1(hex("d2 83 43a10127 a0 40"), pk), "malformed"));
  await t.test("array of 5", () => {
    const five = concat([hex("d2 85"), good.subarray(2), hex("00")]);
    expectCoseError(() => verifySign1(five, pk), "malformed");
  });
  await t.test("detached payload", () => {
    const sig = good.subarray(good.length - 64);
    assert.throws(
      () => verifySign1(concat([hex("d2 84 43a10127 a0 f6"), bstr(sig)]), pk),
      (e: unknown) => e instanceof CoseError && e.code === "malformed" && /detached/.test(e.message),
    );
  });
  await t.test("short signature", () =>
    expectCoseError(() => verifySign1(concat([hex("d2 84 43a10127 a0"), bstr(payload), bstr(new Uint8Array(63))]), pk), "malformed"));
  await t.test("trailing byte", () => expectCoseError(() => verifySign1(concat([good, hex("00")]), pk), "malformed"));
  await t.test("every truncation", () => {
    for (let n = 0; n < good.length; n++) expectCoseError(() => verifySign1(good.subarray(0, n), pk), "malformed");
  });
});

// ---------------------------------------------------------------------------------------------------
// Device certificates (CWT)

const ISSUER = ed25519FromSeed(hex(RFC8032[2].seed));
const DEVICE = ed25519FromSeed(hex(RFC8032[3].seed));
const NBF = 1_700_000_000;
const LIFETIME = 30 * 24 * 3600;

function sampleClaims(): DeviceCertClaims {
  return {
    iss: "gw.example",
    sub: "puck-42",
    iat: NBF - 5,
    nbf: NBF,
    exp: NBF + LIFETIME,
    cti: hex("00112233445566778899aabbccddeeff"),
    publicKey: DEVICE.publicKey,
  };
}

test("CWT: round trip keeps every claim, exp - nbf is the lifetime asked for", () => {
  const claims = sampleClaims();
  const cert = issueCertificate(claims, ISSUER.seed, utf8Encode("gw-1"));
  const got = verifyCertificate(cert, ISSUER.publicKey, NBF + 10);
  assert.equal(got.iss, claims.iss);
  assert.equal(got.sub, claims.sub);
  assert.equal(got.iat, claims.iat);
  assert.equal(got.nbf, claims.nbf);
  assert.equal(got.exp, claims.exp);
  assert.equal(got.exp - got.nbf, LIFETIME);
  assert.deepEqual(got.cti, claims.cti);
  assert.deepEqual(got.publicKey, DEVICE.publicKey);
  assert.deepEqual(readCertificateUnverified(cert), got);
});

test("CWT: the certificate is 61(18([...])) with exactly the claims bytes RFC 8392/8747 describe", () => {
  const claims = sampleClaims();
  const cert = issueCertificate(claims, ISSUER.seed, utf8Encode("gw-1"));
  const expectedClaims = concat([
    hex("a7"),
    uint(1), tstr(claims.iss),
    uint(2), tstr(claims.sub),
    uint(4), uint(claims.exp),
    uint(5), uint(claims.nbf),
    uint(6), uint(claims.iat),
    uint(7), bstr(claims.cti),
    // cnf: {1: {1: 1 (OKP), 3: -8 (EdDSA), -1: 6 (Ed25519), -2: x}}
    uint(8), hex("a1 01 a4 01 01 03 27 20 06 21"), bstr(DEVICE.publicKey),
  ]);
  const sig = cert.subarray(cert.length - 64);
  assert.equal(noble.verify(sig, handSigStructure(PROTECTED_EDDSA, expectedClaims), ISSUER.publicKey), true);
  const expected = concat([hex("d8 3d"), handSign1(PROTECTED_EDDSA, hex("a1 04 44 67772d31"), expectedClaims, sig)]);
  assert.equal(toHex(cert), toHex(expected));
});

test("CWT: NumericDates beyond 2^32 stay integers (8-byte head), not floats", () => {
  const far = 2 ** 40;
  const cert = issueCertificate({ ...sampleClaims(), exp: far }, ISSUER.seed);
  assert.equal(verifyCertificate(cert, ISSUER.publicKey, far - 1).exp, far);
  assert.ok(toHex(readPayload(cert)).includes("041b0000010000000000"), "exp is 04 1b 00000100 00000000");
  expectCertError(() => verifyCertificate(cert, ISSUER.publicKey, far), "expired");
});

test("CWT: accepted with or without the tag 61 wrapper", () => {
  const cert = issueCertificate(sampleClaims(), ISSUER.seed);
  assert.deepEqual(Array.from(cert.subarray(0, 3)), [0xd8, 0x3d, 0xd2]);
  assert.deepEqual(verifyCertificate(cert.subarray(2), ISSUER.publicKey, NBF), verifyCertificate(cert, ISSUER.publicKey, NBF));
});

test("CWT: validity window is nbf <= now < exp", () => {
  const cert = issueCertificate(sampleClaims(), ISSUER.seed);
  assert.equal(verifyCertificate(cert, ISSUER.publicKey, NBF).sub, "puck-42");
  assert.equal(verifyCertificate(cert, ISSUER.publicKey, NBF + LIFETIME - 1).sub, "puck-42");
  assert.equal(verifyCertificate(cert, ISSUER.publicKey, NBF + LIFETIME - 0.5).sub, "puck-42");
  assert.throws(() => verifyCertificate(cert, ISSUER.publicKey, Number.NaN), TypeError);
});

test("CWT: rejections", async (t) => {
  const claims = sampleClaims();
  const cert = issueCertificate(claims, ISSUER.seed);
  const now = NBF + 100;

  await t.test("flipped signature bit", () =>
    expectCertError(() => verifyCertificate(flipBit(cert, cert.length - 10, 5), ISSUER.publicKey, now), "bad-signature"));
  await t.test("flipped payload bit", () => {
    const at = cert.length - 64 - 2 - 1; // last byte of the device key inside the claims
    expectCertError(() => verifyCertificate(flipBit(cert, at, 0), ISSUER.publicKey, now), "bad-signature");
  });
  await t.test("different issuer key", () =>
    expectCertError(() => verifyCertificate(cert, DEVICE.publicKey, now), "bad-signature"));
  await t.test("alg ES256 in the header", () => {
    const claimsBytes = readPayload(cert);
    const es256 = concat([hex("d8 3d"), forgeSign1(ISSUER.seed, hex("a10126"), EMPTY_MAP, claimsBytes)]);
    expectCertError(() => verifyCertificate(es256, ISSUER.publicKey, now), "bad-alg");
  });
  await t.test("expired", () => expectCertError(() => verifyCertificate(cert, ISSUER.publicKey, claims.exp), "expired"));
  await t.test("not yet valid", () =>
    expectCertError(() => verifyCertificate(cert, ISSUER.publicKey, claims.nbf - 1), "not-yet-valid"));
  await t.test("truncated, at every length", () => {
    for (let n = 0; n < cert.length; n++) {
      expectCertError(() => verifyCertificate(cert.subarray(0, n), ISSUER.publicKey, now), "malformed");
    }
  });
  await t.test("properly signed claims without sub", () => {
    const noSub = concat([hex("a1 01"), tstr("gw.example")]);
    expectCertError(() => verifyCertificate(forgeSign1(ISSUER.seed, PROTECTED_EDDSA, EMPTY_MAP, noSub), ISSUER.publicKey, now), "malformed");
  });
  await t.test("properly signed claims whose key carries a private part", () => {
    const withD = concat([
      hex("a7"), uint(1), tstr("gw"), uint(2), tstr("dev"), uint(4), uint(NBF + 9), uint(5), uint(NBF), uint(6), uint(NBF),
      uint(7), bstr(hex("01")), uint(8), hex("a1 01 a5 01 01 03 27 20 06 21"), bstr(DEVICE.publicKey), hex("23"), bstr(DEVICE.seed),
    ]);
    const signed = forgeSign1(ISSUER.seed, PROTECTED_EDDSA, EMPTY_MAP, withD);
    assert.throws(
      () => verifyCertificate(signed, ISSUER.publicKey, now),
      (e: unknown) => e instanceof CertError && e.code === "malformed" && !e.message.includes(toHex(DEVICE.seed)),
    );
  });
});

/** The claims bytes of a certificate, read by hand: 61(18([h'a10127', {}, claims, sig])). */
function readPayload(cert: Uint8Array): Uint8Array {
  const start = 2 + 2 + 4 + 1; // d83d d284 43a10127 a0
  assert.equal(cert[start], 0x58, "claims fit a one-byte length");
  return cert.subarray(start + 2, start + 2 + cert[start + 1]);
}

test("CWT: issuing refuses claims it could not verify back", () => {
  const base = sampleClaims();
  const bad: Array<Partial<DeviceCertClaims>> = [
    { exp: base.nbf },
    { exp: 2 ** 53 },
    { iat: -1 },
    { nbf: 1.5 },
    { iss: "" },
    { sub: "" },
    { cti: new Uint8Array(0) },
    { publicKey: new Uint8Array(31) },
  ];
  for (const change of bad) {
    expectCertError(() => issueCertificate({ ...base, ...change }, ISSUER.seed), "malformed");
  }
});

test("CWT: random garbage only ever raises CertError", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), fc.boolean(), (junk, withTags) => {
      const bytes = withTags ? concat([hex("d83d d2"), junk]) : junk;
      assert.throws(() => verifyCertificate(bytes, ISSUER.publicKey, NBF), CertError);
      assert.throws(() => readCertificateUnverified(bytes), CertError);
    }),
    { numRuns: 2000 },
  );
});

test("CWT: well-formed CBOR of the wrong shape only ever raises CertError", () => {
  // Garbage that gets past the CBOR decoder, to reach the structure and claims checks.
  const { value } = fc.letrec((tie) => ({
    value: fc.oneof(
      { depthSize: "small" },
      fc.integer({ min: -20, max: 2 ** 33 }),
      fc.string({ maxLength: 8 }),
      fc.uint8Array({ maxLength: 70 }),
      fc.constant(null),
      fc.array(tie("value"), { maxLength: 5 }),
      fc.array(fc.tuple(fc.integer({ min: -5, max: 9 }), tie("value")), { maxLength: 8 }).map((kv) => new Map(kv)),
    ),
  }));
  const headerish = fc.oneof(fc.constant(PROTECTED_EDDSA), value.map((v) => encode(v)), fc.uint8Array({ maxLength: 6 }));
  const claimsish = fc.oneof(value.map((v) => encode(v)), fc.constant(readPayload(issueCertificate(sampleClaims(), ISSUER.seed))));
  fc.assert(
    fc.property(headerish, value, claimsish, fc.uint8Array({ minLength: 64, maxLength: 64 }), (prot, unprot, payload, sig) => {
      const bytes = concat([hex("d83d d2"), encode([prot, unprot, payload, sig])]);
      assert.throws(() => verifyCertificate(bytes, ISSUER.publicKey, NBF), CertError);
      try {
        readCertificateUnverified(bytes);
      } catch (e) {
        assert.ok(e instanceof CertError, String(e));
      }
    }),
    { numRuns: 1000 },
  );
});

test("CWT: any corrupted byte of a valid certificate is refused with CertError", () => {
  const cert = issueCertificate(sampleClaims(), ISSUER.seed, utf8Encode("gw-1"));
  fc.assert(
    fc.property(fc.nat(cert.length - 1), fc.integer({ min: 1, max: 255 }), (at, xor) => {
      const bad = new Uint8Array(cert);
      bad[at] ^= xor;
      // Only the unprotected kid (label at 9, bytes at 11..14) is outside the signature: it is a hint.
      try {
        const got = verifyCertificate(bad, ISSUER.publicKey, NBF);
        assert.deepEqual(got, verifyCertificate(cert, ISSUER.publicKey, NBF));
        assert.ok(at >= 9 && at <= 14, `byte ${at} changed yet the certificate verified`);
      } catch (e) {
        assert.ok(e instanceof CertError, `byte ${at}: ${String(e)}`);
      }
    }),
    { numRuns: 1000 },
  );
});
