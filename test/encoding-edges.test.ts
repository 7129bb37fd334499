// The edges of the gateway's encodings (gateway/encoding), where test/cbor.test.ts and
// test/cose.test.ts check codes and round trips but not every refusal: the CBOR codec's BigInt
// boundary, nesting limit for every kind of container, tag and key checks and their texts, the tags
// cbor-x would interpret (each range's ends), tags nested in arrays and maps, byte strings handed out
// as copies of their own; every way COSE_Sign1 is refused, with its code and its exact text; the
// COSE_Key checks of a certificate's cnf; and the claim checks of device certificates, among them a
// verification time that is not a number. Written to kill the mutants that survived
// `npm run mutation -- gateway/encoding` (docs/MUTATION.md).
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { fromHex, toHex } from "../firmware/bytes.ts";
import { decode as deviceDecode, encode as deviceEncode } from "../firmware/cbor.ts";
import { ed25519Sign, generateEd25519 } from "../gateway/crypto/ed25519.ts";
import { decode, encode, tagged } from "../gateway/encoding/cbor.ts";
import { COSE_ALG_EDDSA, CoseError, CRV_ED25519, CRV_X25519, KEY_ALG, KEY_CRV, KEY_D, KEY_KTY, KEY_X, KTY_OKP, parseSign1, readOkpPublicKey, sigStructure1, signSign1, verifySign1 } from "../gateway/encoding/cose.ts";
import { CertError, issueCertificate, readCertificateUnverified, verifyCertificate, type DeviceCertClaims } from "../gateway/encoding/cwt.ts";

const hex = toHex;
const h = (s: string): Uint8Array => fromHex(s)!;
const cborError = (message: string) => ({ name: "Error", message: "cbor: " + message });

describe("gateway CBOR: encoding", () => {
  test("a BigInt within ±(2^53 - 1) encodes as the Number, one beyond keeps every bit", () => {
    assert.equal(hex(encode(5n)), "05");
    assert.equal(hex(encode(-5n)), "24");
    assert.equal(hex(encode(2n ** 53n + 1n)), "1b0020000000000001");
    assert.equal(hex(encode(-(2n ** 53n) - 2n)), "3b0020000000000001");
  });

  test("every kind of container nests 16 deep (as the device decodes), not 17", () => {
    const kinds: [string, (v: unknown) => unknown][] = [
      ["array", (v) => [v]],
      ["tag", (v) => tagged(7, v)],
      ["map", (v) => new Map([[1, v]])],
      ["object", (v) => ({ a: v })],
    ];
    for (const [kind, wrap] of kinds) {
      let v: unknown = 0;
      for (let i = 0; i < 16; i++) v = wrap(v);
      deviceDecode(encode(v));
      assert.throws(() => encode(wrap(v)), cborError("nested deeper than 16"), kind);
    }
  });

  test("refusals name what is wrong", () => {
    assert.throws(() => encode("a\ud800b"), cborError("text with a lone surrogate"));
    for (const tag of [-1, 1.5, 2 ** 32]) assert.throws(() => encode(tagged(tag, 0)), cborError("tag must be an integer in [0, 2^32)"), String(tag));
    assert.equal(hex(encode(tagged(2 ** 32 - 1, 0))), "daffffffff00");
    for (const key of [1.5, {}, true]) assert.throws(() => encode(new Map<unknown, number>([[key, 0]])), cborError("map keys must be integers or text"), String(key));
    assert.throws(() => encode(new Date(0)), cborError("cannot encode [object Date]"));
    assert.throws(() => encode(new (class Point { x = 1; })()), cborError("cannot encode [object Object]"));
    assert.throws(() => encode(Object.create(null)), cborError("cannot encode [object Object]"));
    assert.throws(() => encode(() => 1), cborError("cannot encode function"));
    assert.throws(() => encode(Symbol("s")), cborError("cannot encode symbol"));
  });

  test("plain objects encode their own keys, as the device does, a __proto__ key included", () => {
    const v = JSON.parse('{"a":1,"__proto__":[2],"b":{"c":"d"}}') as unknown;
    assert.equal(hex(encode(v)), hex(deviceEncode(v)));
    assert.equal(hex(encode({ a: 1 })), "a1616101");
    assert.equal(hex(encode(JSON.parse('{"__proto__":1}'))), "a1695f5f70726f746f5f5f01");
    // The device's decoder refuses a "__proto__" key outright (as a duplicate): nothing to pollute.
    assert.throws(() => decode(encode(v)), cborError("duplicate map key"));
  });
});

describe("gateway CBOR: decoding", () => {
  test("the input must be a Uint8Array", () => {
    for (const v of ["a0", [0xa0], null]) assert.throws(() => decode(v as unknown as Uint8Array), cborError("input must be a Uint8Array"));
  });

  test("tags cbor-x would interpret are refused, each range to its ends; their neighbours come back as tags", () => {
    const refused = [0, 1, 4, 5, 6, 14, 15, 27, 28, 29, 51, 64, 87, 105, 216, 255, 258, 259, 27647, 32767, 55799, 0xdff9, 0xffff, 0x53687264, 1811939328, 2147483647];
    const accepted = [7, 13, 16, 26, 30, 50, 52, 63, 88, 104, 106, 215, 256, 257, 260, 27646, 32768, 55798, 55800, 0xdff8, 0x10000, 1811939327, 2147483648];
    for (const tag of refused) assert.throws(() => decode(encode(tagged(tag, "x"))), cborError(`tag ${tag} is not accepted here`), String(tag));
    for (const tag of accepted) {
      const v = decode(encode(tagged(tag, "x"))) as { tag: number; value: unknown };
      assert.deepEqual([v.tag, v.value], [tag, "x"], String(tag));
    }
  });

  test("bignums (tags 2 and 3) only around a byte string", () => {
    assert.equal(decode(encode(tagged(2, h("0100")))), 256n);
    assert.equal(decode(encode(tagged(3, h("0100")))), -257n);
    for (const tag of [2, 3]) assert.throws(() => decode(encode(tagged(tag, "x"))), cborError(`tag ${tag} is not accepted here`));
  });

  test("a refused tag is found inside arrays, maps and tags", () => {
    const date = tagged(1, 0);
    for (const v of [[date], [1, [date]], { a: date }, new Map([[1, date]]), tagged(7, [date])]) {
      assert.throws(() => decode(encode(v)), cborError("tag 1 is not accepted here"));
    }
  });

  test("every byte string decoded is a plain Uint8Array with a buffer of its own", () => {
    const v = decode(encode([h("01"), new Map([[1, h("0202")]]), tagged(7, h("030303")), [h("04")]])) as [Uint8Array, Map<number, Uint8Array>, { value: Uint8Array }, Uint8Array[]];
    const all = [v[0], v[1].get(1)!, v[2].value, v[3][0]];
    assert.deepEqual(all.map(hex), ["01", "0202", "030303", "04"]);
    for (const b of all) {
      assert.equal(Object.getPrototypeOf(b), Uint8Array.prototype);
      assert.equal(b.buffer.byteLength, b.length, "not a view into a shared buffer");
    }
    const top = decode(encode(h("0506"))) as Uint8Array;
    assert.equal(top.buffer.byteLength, 2);
  });
});

// ---- COSE_Sign1 ------------------------------------------------------------------------------------

const signer = generateEd25519();
const payload = h("a10102");

/** 18([protected, unprotected, payload, signature]) with each part chosen, the signature made over
 *  the given protected bytes and payload when it is not given. */
function sign1(parts: { protectedBytes?: unknown; unprotected?: unknown; payload?: unknown; signature?: unknown } = {}): Uint8Array {
  const protectedBytes = "protectedBytes" in parts ? parts.protectedBytes : encode(new Map([[1, COSE_ALG_EDDSA]]));
  const body = "payload" in parts ? parts.payload : payload;
  const signature = "signature" in parts
    ? parts.signature
    : ed25519Sign(signer.seed, sigStructure1(protectedBytes as Uint8Array, body as Uint8Array));
  return new Uint8Array([0xd2, ...encode([protectedBytes, "unprotected" in parts ? parts.unprotected : new Map(), body, signature])]);
}

/** The error f throws, checked to be a `type` with exactly this code and text. */
function refusal<E extends Error & { code: string }>(f: () => unknown, type: new (...args: never[]) => E, code: string, message: string): E {
  let caught: unknown;
  try {
    f();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof type, `expected a ${type.name}, got ${String(caught)}`);
  assert.deepEqual({ name: caught.name, code: caught.code, message: caught.message }, { name: type.name, code, message });
  return caught;
}
const refusedAs = (f: () => unknown, code: string, message: string): CoseError => refusal(f, CoseError, code, message);

describe("COSE_Sign1: every refusal with its code and text", () => {
  test("a well-formed message verifies; without a kid, none is returned", () => {
    const out = verifySign1(sign1(), signer.publicKey);
    assert.deepEqual(Object.keys(out), ["payload"]);
    assert.equal(hex(out.payload), hex(payload));
    assert.equal(hex(verifySign1(signSign1(payload, signer.seed, h("6b6964")), signer.publicKey).kid!), "6b6964");
  });

  test("the shape", () => {
    const v = (b: unknown) => () => verifySign1(b as Uint8Array, signer.publicKey);
    refusedAs(v("d2"), "malformed", "COSE_Sign1 must be given as bytes");
    refusedAs(v(new Uint8Array(0)), "malformed", "not a COSE_Sign1_Tagged message (expected CBOR tag 18)");
    refusedAs(v(h("d1")), "malformed", "not a COSE_Sign1_Tagged message (expected CBOR tag 18)");
    const notCbor = refusedAs(v(h("d2ff")), "malformed", "COSE_Sign1 is not valid CBOR");
    assert.ok(notCbor.cause instanceof Error, "the decoder's error is kept as the cause");
    refusedAs(v(h("d2fb3ff0000000000000")), "malformed", "COSE_Sign1 is not deterministically encoded CBOR (RFC 8949 §4.2.1)");
    refusedAs(v(new Uint8Array([0xd2, ...encode([1, 2, 3])])), "malformed", "COSE_Sign1 must be an array of 4 items");
    refusedAs(v(new Uint8Array([0xd2, ...encode({ a: 1 })])), "malformed", "COSE_Sign1 must be an array of 4 items");
  });

  test("the parts", () => {
    const v = (parts: Parameters<typeof sign1>[0]) => () => verifySign1(sign1(parts), signer.publicKey);
    refusedAs(v({ protectedBytes: "a10127" }), "malformed", "COSE_Sign1 protected header must be a byte string");
    refusedAs(v({ protectedBytes: encode(5) }), "malformed", "COSE_Sign1 protected header must be a CBOR map");
    refusedAs(v({ protectedBytes: h("ff") }), "malformed", "COSE_Sign1 protected header is not valid CBOR");
    refusedAs(v({ unprotected: [] }), "malformed", "COSE_Sign1 unprotected header must be a CBOR map");
    refusedAs(v({ payload: null, signature: new Uint8Array(64) }), "malformed", "COSE_Sign1 with a detached payload is not supported");
    refusedAs(v({ payload: "text", signature: new Uint8Array(64) }), "malformed", "COSE_Sign1 payload must be a byte string");
    refusedAs(v({ signature: new Uint8Array(63) }), "malformed", "COSE_Sign1 signature must be a 64-byte string");
    refusedAs(v({ signature: "x".repeat(64) }), "malformed", "COSE_Sign1 signature must be a 64-byte string");
  });

  test("the headers", () => {
    const v = (parts: Parameters<typeof sign1>[0]) => () => verifySign1(sign1(parts), signer.publicKey);
    refusedAs(v({ unprotected: new Map([[1, COSE_ALG_EDDSA]]) }), "malformed", "COSE header label 1 appears in both buckets");
    refusedAs(v({ protectedBytes: encode(new Map<number, unknown>([[1, COSE_ALG_EDDSA], [2, [9]]])) }), "malformed", "COSE_Sign1 carries critical headers (crit), which are not supported");
    refusedAs(v({ unprotected: new Map([[2, [9]]]) }), "malformed", "COSE_Sign1 carries critical headers (crit), which are not supported");
    refusedAs(v({ unprotected: new Map([[4, "kid"]]) }), "malformed", "COSE kid header must be a byte string");
    refusedAs(v({ protectedBytes: new Uint8Array(0), unprotected: new Map([[1, COSE_ALG_EDDSA]]) }), "bad-alg", "COSE_Sign1 alg must be in the protected header");
    refusedAs(v({ protectedBytes: new Uint8Array(0) }), "bad-alg", "COSE_Sign1 protected header has no alg");
    refusedAs(v({ protectedBytes: encode(new Map([[1, -7]])) }), "bad-alg", "COSE_Sign1 alg -7 is not accepted; only EdDSA (-8)");
    refusedAs(() => verifySign1(sign1(), generateEd25519().publicKey), "bad-signature", "COSE_Sign1 signature does not verify under the given key");
    // parseSign1 takes a message apart without judging its alg or signature.
    assert.equal(parseSign1(sign1({ protectedBytes: new Uint8Array(0) })).protectedHeader.size, 0);
  });

  test("signing refuses a payload or kid that is not bytes", () => {
    assert.throws(() => signSign1("p" as unknown as Uint8Array, signer.seed), { name: "TypeError", message: "COSE_Sign1 payload must be a Uint8Array" });
    assert.throws(() => signSign1(payload, signer.seed, "k" as unknown as Uint8Array), { name: "TypeError", message: "COSE kid must be a Uint8Array" });
  });
});

describe("COSE_Key: an OKP public key", () => {
  const x = new Uint8Array(32).fill(7);
  const key = (entries: [number, unknown][]) => new Map<number, unknown>(entries);
  const good: [number, unknown][] = [[KEY_KTY, KTY_OKP], [KEY_ALG, COSE_ALG_EDDSA], [KEY_CRV, CRV_ED25519], [KEY_X, x]];
  const read = (v: unknown) => () => readOkpPublicKey(v, CRV_ED25519, COSE_ALG_EDDSA, "the key");

  test("a good key gives a copy of x; alg may be absent", () => {
    const out = readOkpPublicKey(key(good), CRV_ED25519, COSE_ALG_EDDSA, "the key");
    assert.equal(hex(out), hex(x));
    assert.notEqual(out, x);
    assert.equal(hex(readOkpPublicKey(key(good.filter(([k]) => k !== KEY_ALG)), CRV_ED25519, undefined, "the key")), hex(x));
  });

  test("each refusal, prefixed with what was read", () => {
    refusedAs(read([1]), "malformed", "the key must be a COSE_Key map");
    refusedAs(read(key(good.map(([k, v]) => [k, k === KEY_KTY ? 2 : v]))), "malformed", "the key must have kty OKP (1)");
    refusedAs(read(key(good.map(([k, v]) => [k, k === KEY_CRV ? CRV_X25519 : v]))), "malformed", "the key must have crv 6");
    refusedAs(read(key(good.map(([k, v]) => [k, k === KEY_ALG ? -7 : v]))), "malformed", "the key has an alg this key may not be used for (-8)");
    refusedAs(() => readOkpPublicKey(key(good), CRV_ED25519, undefined, "the key"), "malformed", "the key has an alg this key may not be used for (none allowed)");
    refusedAs(read(key([...good, [KEY_D, new Uint8Array(32)]])), "malformed", "the key must not contain a private key (d)");
    refusedAs(read(key(good.map(([k, v]) => [k, k === KEY_X ? new Uint8Array(31) : v]))), "malformed", "the key x must be 32 bytes");
    refusedAs(read(key(good.map(([k, v]) => [k, k === KEY_X ? "x".repeat(32) : v]))), "malformed", "the key x must be 32 bytes");
  });
});

// ---- device certificates (CWT) ---------------------------------------------------------------------

const issuer = generateEd25519();
const device = generateEd25519();
const claims: DeviceCertClaims = { iss: "gw.example", sub: "dev-1", iat: 1000, nbf: 1000, exp: 2000, cti: h("0102"), publicKey: device.publicKey };

/** A certificate signed by the issuer over claims written here (a CBOR map), with or without tag 61. */
function certOver(map: Map<number, unknown>, tag61 = true): Uint8Array {
  const signed = signSign1(encode(map), issuer.seed);
  return tag61 ? new Uint8Array([0xd8, 0x3d, ...signed]) : signed;
}
const coseKey = new Map<number, unknown>([[1, 1], [3, -8], [-1, 6], [-2, device.publicKey]]);
const goodClaims = (): Map<number, unknown> => new Map<number, unknown>([[1, "gw.example"], [2, "dev-1"], [4, 2000], [5, 1000], [6, 1000], [7, h("0102")], [8, new Map([[1, coseKey]])]]);

const certRefusedAs = (f: () => unknown, code: string, message: string): CertError => refusal(f, CertError, code, message);

describe("device certificates: claims and their checks", () => {
  test("claims written here verify, with or without tag 61", () => {
    for (const tag61 of [true, false]) assert.equal(verifyCertificate(certOver(goodClaims(), tag61), issuer.publicKey, 1500).sub, "dev-1");
  });

  test("the verification time must be a finite number: NaN would be inside every window", () => {
    const cert = issueCertificate(claims, issuer.seed);
    for (const now of [NaN, Infinity, -Infinity, "1500"]) {
      assert.throws(() => verifyCertificate(cert, issuer.publicKey, now as number), { name: "TypeError", message: "now must be a finite number of seconds" }, String(now));
    }
  });

  test("the validity window's refusals name the instant", () => {
    const cert = issueCertificate(claims, issuer.seed);
    certRefusedAs(() => verifyCertificate(cert, issuer.publicKey, 999), "not-yet-valid", "certificate is not valid before 1000");
    certRefusedAs(() => verifyCertificate(cert, issuer.publicKey, 2000), "expired", "certificate expired at 2000");
  });

  test("a COSE refusal becomes a CertError with the same code and text, its cause kept", () => {
    const cert = issueCertificate(claims, issuer.seed);
    assert.throws(() => verifyCertificate(cert, device.publicKey, 1500), (e: unknown) => {
      assert.ok(e instanceof CertError && e.cause instanceof CoseError);
      assert.deepEqual([e.code, e.message], ["bad-signature", "COSE_Sign1 signature does not verify under the given key"]);
      return true;
    });
    certRefusedAs(() => verifyCertificate("x" as unknown as Uint8Array, issuer.publicKey, 1500), "malformed", "certificate must be given as bytes");
    certRefusedAs(() => verifyCertificate(h("d83d"), issuer.publicKey, 1500), "malformed", "not a COSE_Sign1_Tagged message (expected CBOR tag 18)");
    certRefusedAs(() => verifyCertificate(h("d8"), issuer.publicKey, 1500), "malformed", "not a COSE_Sign1_Tagged message (expected CBOR tag 18)");
    certRefusedAs(() => readCertificateUnverified(h("d83d")), "malformed", "not a COSE_Sign1_Tagged message (expected CBOR tag 18)");
    certRefusedAs(() => readCertificateUnverified("x" as unknown as Uint8Array), "malformed", "certificate must be given as bytes");
    // Only a COSE refusal is wrapped (its cause kept); the certificate's own refusal has no cause.
    assert.throws(() => verifyCertificate("x" as unknown as Uint8Array, issuer.publicKey, 1500), (e: unknown) => e instanceof CertError && e.cause === undefined);
  });

  test("each claim read is checked, in order, with its own text", () => {
    const without = (label: number) => { const m = goodClaims(); m.delete(label); return m; };
    const withClaim = (label: number, v: unknown) => { const m = goodClaims(); m.set(label, v); return m; };
    const cases: [Map<number, unknown>, string][] = [
      [without(1), "certificate iss claim (1) must be a text string"],
      [without(2), "certificate sub claim (2) must be a text string"],
      [withClaim(4, -1), "certificate exp claim (4) must be a NumericDate in whole seconds"],
      [withClaim(5, "1000"), "certificate nbf claim (5) must be a NumericDate in whole seconds"],
      [without(6), "certificate iat claim (6) must be a NumericDate in whole seconds"],
      [withClaim(7, "cti"), "certificate cti claim (7) must be a byte string"],
      [withClaim(8, [1]), "certificate cnf must be a map"],
      [withClaim(8, new Map([[1, new Map<number, unknown>([[1, 1], [-1, 6], [-2, device.publicKey], [-4, h("00")]])]])), "certificate key (cnf COSE_Key, label 1) must not contain a private key (d)"],
      [withClaim(1, ""), "certificate iss must be a non-empty string"],
      [withClaim(2, ""), "certificate sub must be a non-empty string"],
      [withClaim(7, new Uint8Array(0)), "certificate cti must be 1 .. 64 bytes"],
      [withClaim(7, new Uint8Array(65)), "certificate cti must be 1 .. 64 bytes"],
    ];
    for (const [map, message] of cases) {
      certRefusedAs(() => verifyCertificate(certOver(map), issuer.publicKey, 1500), "malformed", message);
      certRefusedAs(() => readCertificateUnverified(certOver(map)), "malformed", message);
    }
    assert.equal(verifyCertificate(certOver(withClaim(7, new Uint8Array(64))), issuer.publicKey, 1500).cti.length, 64);
    certRefusedAs(() => readCertificateUnverified(new Uint8Array([0xd8, 0x3d, ...signSign1(encode([1]), issuer.seed)])), "malformed", "CWT claims must be a CBOR map");
    certRefusedAs(() => readCertificateUnverified(new Uint8Array([0xd8, 0x3d, ...signSign1(h("ff"), issuer.seed)])), "malformed", "CWT claims is not valid CBOR");
    assert.throws(() => readCertificateUnverified(new Uint8Array([0xd8, 0x3d, ...signSign1(h("ff"), issuer.seed)])), (e: unknown) => e instanceof CertError && e.cause instanceof CoseError);
  });

  test("NumericDates: 0 and 2^53 - 1 are taken, fractions, negatives and 2^53 are not", () => {
    const at = (exp: number, nbf = 0) => { const m = goodClaims(); m.set(4, exp); m.set(5, nbf); m.set(6, 0); return certOver(m); };
    assert.equal(verifyCertificate(at(Number.MAX_SAFE_INTEGER), issuer.publicKey, 5).nbf, 0);
    for (const exp of [2 ** 53, 1.5, -1]) {
      certRefusedAs(() => readCertificateUnverified(at(exp)), "malformed", "certificate exp claim (4) must be a NumericDate in whole seconds");
    }
  });

  test("issuing refuses claims it could not read back, each with its text", () => {
    const bad: [Partial<DeviceCertClaims>, string][] = [
      [{ iss: "" }, "certificate iss must be a non-empty string"],
      [{ iss: 5 as unknown as string }, "certificate iss must be a non-empty string"],
      [{ sub: 5 as unknown as string }, "certificate sub must be a non-empty string"],
      [{ iat: -1 }, "certificate iat must be whole seconds in 0 .. 9007199254740991"],
      [{ nbf: 1.5 }, "certificate nbf must be whole seconds in 0 .. 9007199254740991"],
      [{ exp: 2 ** 53 }, "certificate exp must be whole seconds in 0 .. 9007199254740991"],
      [{ cti: new Uint8Array(65) }, "certificate cti must be 1 .. 64 bytes"],
      [{ publicKey: new Uint8Array(31) }, "certificate publicKey must be a 32-byte Ed25519 key"],
      [{ exp: 1000 }, "certificate exp must be after nbf"],
    ];
    for (const [change, message] of bad) certRefusedAs(() => issueCertificate({ ...claims, ...change }, issuer.seed), "malformed", message);
    assert.equal(verifyCertificate(issueCertificate({ ...claims, iat: 0, nbf: 0, cti: new Uint8Array(64) }, issuer.seed), issuer.publicKey, 0).iat, 0);
  });
});
