// The gateway-to-gateway key exchange (gateway/crossgw/exchange.ts): a full run gives both sides the same SA
// seed and SPI; every attack is refused with a clear reason and leaves the refusing side's state as it
// was, which each test proves by finishing the genuine exchange afterwards. Messages 2 and 3 are
// encrypted (SIGMA-I): to forge their insides, a test chooses one ephemeral of the run and computes
// the keys itself, with its own copy of the key schedule as docs/PROTOCOL.md states it.

import { test } from "node:test";
import assert from "node:assert/strict";
import { createCipheriv, createDecipheriv, createHash, createHmac, createPublicKey, diffieHellman, generateKeyPairSync, type KeyObject } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { ml_kem768 } from "@noble/post-quantum/ml-kem.js";
import { toHex } from "../firmware/bytes.ts";
import { SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305 } from "../firmware/crypto/types.ts";
import { decode, encode } from "../gateway/encoding/cbor.ts";
import { issueCertificate, readCertificateUnverified } from "../gateway/encoding/cwt.ts";
import { generateEd25519, type Ed25519KeyPair } from "../gateway/crypto/ed25519.ts";
import {
  decodeMsg1,
  decodeMsg2,
  decodeMsg3,
  decodeMsg4,
  encodeMsg1,
  encodeMsg2,
  encodeMsg3,
  encodeMsg4,
  ExchangeError,
  Initiator,
  Responder,
  SeenSessions,
  type Ephemeral,
  type ExchangeErrorCode,
  type ExchangeResult,
  type KeyAgreementPolicy,
  type LocalCallee,
  type LocalParty,
  type Msg1,
  type Msg2,
  type Msg3,
  type ResponderDeps,
} from "../gateway/crossgw/exchange.ts";
import { Fleet, generateX25519 } from "../gateway/fleet/fleet.ts";
import { CertificateChecker, localSource, Verifier } from "../gateway/fleet/verifier.ts";

const T0 = 1_800_000_000;
const AES = SUITE_AES_CCM_16_64_128;
const XS = SUITE_XSALSA20_POLY1305;

interface GatewayKeys {
  signing: Ed25519KeyPair;
  cert: Uint8Array;
}

interface World {
  dirs: string[];
  fleet: Fleet;
  verifier: Verifier;
  verifierKey: Ed25519KeyPair;
  clock: { t: number };
  a: GatewayKeys;
  b: GatewayKeys;
  alice: LocalParty;
  bob: LocalCallee;
}

function tmp(): string {
  return mkdtempSync(join(tmpdir(), "kp-exchange-"));
}

function gatewayKeys(fleet: Fleet, id: string): GatewayKeys {
  const signing = generateEd25519();
  return { signing, cert: fleet.issueGateway(id, { signingKey: signing.publicKey, encryptionKey: generateX25519().publicKey }, T0, 86_400) };
}

function device(gw: GatewayKeys, gatewayId: string, id: string, nbf = T0, exp = T0 + 3600, identity = generateEd25519()): LocalParty {
  const cert = issueCertificate({ iss: gatewayId, sub: id, iat: nbf, nbf, exp, cti: new Uint8Array(16).fill(id.length), publicKey: identity.publicKey }, gw.signing.seed);
  return { name: `${id}@${gatewayId}`, identitySeed: identity.seed, cert, gatewayCert: gw.cert };
}

function world(): World {
  const dir = tmp();
  const fleet = Fleet.create(dir, "kp-fleet", T0);
  const verifierKey = generateEd25519();
  const verifier = new Verifier({ anchor: fleet.anchor, key: verifierKey, verifierId: "verifier.kp" });
  verifier.updateRevocationList(fleet.signedList());
  const a = gatewayKeys(fleet, "a.example");
  const b = gatewayKeys(fleet, "b.example");
  return {
    dirs: [dir],
    fleet,
    verifier,
    verifierKey,
    clock: { t: T0 + 10 },
    a,
    b,
    alice: device(a, "a.example", "alice"),
    // Bob prefers XSalsa20 (priority 1); the callee's priority decides (seed 003 V2).
    bob: { ...device(b, "b.example", "bob"), suites: [[AES, 2], [XS, 1]] },
  };
}

function done(w: World): void {
  for (const d of w.dirs) rmSync(d, { recursive: true, force: true });
}

/** A fresh checker: CertificateChecker caches good answers, and each test sets its own revocations. */
function deps(w: World): ResponderDeps {
  return {
    checker: new CertificateChecker({ source: localSource(w.verifier), verifierPublicKey: w.verifierKey.publicKey }),
    now: () => w.clock.t,
    seen: new SeenSessions(),
  };
}

function start(w: World, options: { replaces?: number; ephemeral?: Ephemeral; kem?: { publicKey: Uint8Array; secretKey: Uint8Array } } = {}, keyAgreement?: KeyAgreementPolicy): Initiator {
  return new Initiator({ ...deps(w), keyAgreement }, w.alice, "bob@b.example", "chat", [[AES, 1], [XS, 2]], options);
}

async function refused(p: Promise<unknown> | (() => unknown), code: ExchangeErrorCode, reason?: RegExp): Promise<void> {
  await assert.rejects(
    async () => (typeof p === "function" ? p() : p),
    (e: unknown) => {
      assert.ok(e instanceof ExchangeError, `expected an ExchangeError, got ${String(e)}`);
      assert.equal(e.code, code, e.message);
      if (reason) assert.match(e.message, reason);
      return true;
    },
  );
}

/** Runs the rest of an exchange from msg2, checks both sides agree, and returns both results. */
async function finish(init: Initiator, resp: Responder): Promise<{ i: ExchangeResult; r: ExchangeResult }> {
  const msg3 = await init.onMsg2(resp.msg2);
  const { msg4, result: r } = await resp.onMsg3(msg3);
  const i = init.onMsg4(msg4);
  assert.equal(toHex(i.seed), toHex(r.seed));
  assert.equal(i.spi, r.spi);
  assert.equal(init.status, "done");
  assert.equal(resp.status, "done");
  return { i, r };
}

// ---------------------------------------------------------------------------------------------------
// the test's own key schedule (docs/PROTOCOL.md, "Gateway-to-gateway key exchange")

const sha256 = (b: Uint8Array): Uint8Array => new Uint8Array(createHash("sha256").update(b).digest());
const hmac = (key: Uint8Array, data: Uint8Array): Uint8Array => new Uint8Array(createHmac("sha256", key).update(data).digest());
const kdf = (prk: Uint8Array, label: string, th: Uint8Array, n: number): Uint8Array =>
  hmac(prk, new Uint8Array(Buffer.concat([encode(["KP exchange v1", label, th]), Uint8Array.of(1)]))).slice(0, n);

/** An ephemeral whose secret half the test holds. */
function knownEphemeral(): Ephemeral {
  const { privateKey, publicKey } = generateKeyPairSync("x25519");
  return { privateKey, publicKey: new Uint8Array(Buffer.from(publicKey.export({ format: "jwk" }).x as string, "base64url")) };
}

function x25519(secret: KeyObject, peer: Uint8Array): Uint8Array {
  const publicKey = createPublicKey({ key: { kty: "OKP", crv: "X25519", x: Buffer.from(peer).toString("base64url") }, format: "jwk" });
  return new Uint8Array(diffieHellman({ privateKey: secret, publicKey }));
}

function gcm(prk: Uint8Array, n: 2 | 3, th: Uint8Array): { key: Uint8Array; iv: Uint8Array; aad: Uint8Array } {
  return { key: kdf(prk, `k${n}`, th, 32), iv: kdf(prk, `iv${n}`, th, 12), aad: encode([`KP exchange enc${n}`, th]) };
}

function gcmSeal(prk: Uint8Array, n: 2 | 3, th: Uint8Array, plaintext: Uint8Array): Uint8Array {
  const { key, iv, aad } = gcm(prk, n, th);
  const c = createCipheriv("aes-256-gcm", key, iv).setAAD(aad);
  return new Uint8Array(Buffer.concat([c.update(plaintext), c.final(), c.getAuthTag()]));
}

function gcmOpen(prk: Uint8Array, n: 2 | 3, th: Uint8Array, ciphertext: Uint8Array): Uint8Array {
  const { key, iv, aad } = gcm(prk, n, th);
  const d = createDecipheriv("aes-256-gcm", key, iv).setAAD(aad).setAuthTag(ciphertext.subarray(-16));
  return new Uint8Array(Buffer.concat([d.update(ciphertext.subarray(0, -16)), d.final()]));
}

/**
 * The keys of one run, from one of its ephemeral secrets: the test reads msg2 and msg3 as the two
 * ends do, and seals forged insides that only a holder of the keys could make.
 */
class Keys {
  private readonly prk: Uint8Array;
  private readonly th2: Uint8Array;
  private readonly th3: Uint8Array;
  readonly plaintext2: Uint8Array;

  /** kemSecret: the initiator's ML-KEM-768 decapsulation key, for a hybrid run (docs/PROTOCOL.md). */
  constructor(msg1: Msg1, private readonly msg2: Msg2, secret: KeyObject, peerPublic: Uint8Array, kemSecret?: Uint8Array) {
    const ct = msg2.kemCiphertext;
    this.th2 = sha256(encode(ct ? [sha256(encodeMsg1(msg1)), msg2.eB, msg2.suite, ct] : [sha256(encodeMsg1(msg1)), msg2.eB, msg2.suite]));
    const dh = x25519(secret, peerPublic);
    // The ML-KEM secret first, then X25519's, as TLS's X25519MLKEM768 concatenates them.
    this.prk = hmac(this.th2, ct && kemSecret ? new Uint8Array([...ml_kem768.decapsulate(ct, kemSecret), ...dh]) : dh);
    this.plaintext2 = gcmOpen(this.prk, 2, this.th2, msg2.ciphertext);
    this.th3 = sha256(encode([this.th2, this.plaintext2]));
  }

  /** [cert, gatewayCert, sig, mac] of the responder. */
  get inner2(): Uint8Array[] {
    return decode(this.plaintext2) as Uint8Array[];
  }
  reseal2(plaintext: Uint8Array): Msg2 {
    return { ...this.msg2, ciphertext: gcmSeal(this.prk, 2, this.th2, plaintext) };
  }
  plaintext3(msg3: Msg3): Uint8Array {
    return gcmOpen(this.prk, 3, this.th3, msg3.ciphertext);
  }
  inner3(msg3: Msg3): Uint8Array[] {
    return decode(this.plaintext3(msg3)) as Uint8Array[];
  }
  reseal3(msg3: Msg3, plaintext: Uint8Array): Msg3 {
    return { ...msg3, ciphertext: gcmSeal(this.prk, 3, this.th3, plaintext) };
  }
  /** The SA seed and SPI as the document derives them from TH4. */
  result(msg3: Msg3): { seed: Uint8Array; spi: number } {
    const th4 = sha256(encode([this.th3, this.plaintext3(msg3)]));
    const s = kdf(this.prk, "SPI", th4, 4);
    return { seed: kdf(this.prk, "SA seed", th4, 32), spi: Buffer.from(s).readUInt32BE(0) || 1 };
  }
}

/** A Responder whose ephemeral the test chose, and the keys of its run. */
function knownResponder(d: ResponderDeps, msg1: Msg1, callee: LocalCallee): { resp: Responder; keys: Keys } {
  const e = knownEphemeral();
  const resp = new Responder(d, msg1, callee, e);
  return { resp, keys: new Keys(msg1, resp.msg2, e.privateKey, msg1.eA) };
}

function flipped(b: Uint8Array, at: number, mask = 1): Uint8Array {
  const c = new Uint8Array(b);
  c[at] ^= mask;
  return c;
}

const contains = (hay: Uint8Array, needle: Uint8Array): boolean => Buffer.from(hay).indexOf(Buffer.from(needle)) !== -1;

// ---------------------------------------------------------------------------------------------------

test("a full run: both gateways derive the same SA seed and SPI, the callee's suite priority wins, peers are the certified names", async () => {
  const w = world();
  try {
    const init = start(w);
    // Every message crosses the interlink as bytes: round-trip each through its codec.
    const msg1 = decodeMsg1(encodeMsg1(init.msg1));
    const resp = new Responder(deps(w), msg1, w.bob);
    const msg3 = await init.onMsg2(decodeMsg2(encodeMsg2(resp.msg2)));
    const { msg4, result: r } = await resp.onMsg3(decodeMsg3(encodeMsg3(msg3)));
    const i = init.onMsg4(decodeMsg4(encodeMsg4(msg4)));
    assert.equal(i.seed.length, 32);
    assert.equal(toHex(i.seed), toHex(r.seed));
    assert.equal(i.spi, r.spi);
    assert.ok(i.spi > 0);
    assert.equal(i.suite, XS, "Bob's priority 1, though Alice preferred AES");
    assert.equal(r.suite, XS);
    assert.deepEqual([i.role, i.self, i.peer, i.app, i.replaces], ["initiator", "alice@a.example", "bob@b.example", "chat", 0]);
    assert.deepEqual([r.role, r.self, r.peer, r.app, r.replaces], ["responder", "bob@b.example", "alice@a.example", "chat", 0]);
    // The certificates each side judged, for judging again on a new revocation list.
    assert.deepEqual([toHex(i.ownCert), toHex(i.peerCert), toHex(i.peerGatewayCert)], [toHex(w.alice.cert), toHex(w.bob.cert), toHex(w.b.cert)]);
    assert.deepEqual([toHex(r.ownCert), toHex(r.peerCert), toHex(r.peerGatewayCert)], [toHex(w.bob.cert), toHex(w.alice.cert), toHex(w.a.cert)]);
    // A second run has fresh ephemerals: a different seed.
    const init2 = start(w);
    const resp2 = new Responder(deps(w), init2.msg1, w.bob);
    const m3 = await init2.onMsg2(resp2.msg2);
    const other = (await resp2.onMsg3(m3)).result;
    assert.notEqual(toHex(other.seed), toHex(i.seed));
  } finally {
    done(w);
  }
});

test("the key schedule is the one docs/PROTOCOL.md gives: the test's own copy, from either ephemeral, opens both messages and derives the same SA", async () => {
  const w = world();
  try {
    const eA = knownEphemeral();
    const init = start(w, { ephemeral: eA, replaces: 7 });
    const { resp, keys } = knownResponder(deps(w), init.msg1, w.bob);
    const msg3 = await init.onMsg2(resp.msg2);
    const { result } = await resp.onMsg3(msg3);
    const fromA = new Keys(init.msg1, resp.msg2, eA.privateKey, resp.msg2.eB);
    assert.equal(toHex(fromA.plaintext2), toHex(keys.plaintext2));
    assert.deepEqual(keys.inner2.slice(0, 2).map(toHex), [toHex(w.bob.cert), toHex(w.b.cert)]);
    assert.deepEqual(fromA.inner3(msg3).slice(0, 2).map(toHex), [toHex(w.alice.cert), toHex(w.a.cert)]);
    const derived = fromA.result(msg3);
    assert.equal(toHex(derived.seed), toHex(result.seed));
    assert.equal(derived.spi, result.spi);
  } finally {
    done(w);
  }
});

test("a forged signature is refused (bad-signature) and the initiator still accepts the genuine msg2", async () => {
  const w = world();
  try {
    const init = start(w);
    const { resp, keys } = knownResponder(deps(w), init.msg1, w.bob);
    // Correctly encrypted, MAC intact, one bit of Bob's signature flipped.
    const [cert, gatewayCert, sig, mac] = keys.inner2;
    await refused(init.onMsg2(keys.reseal2(encode([cert, gatewayCert, flipped(sig, 10), mac]))), "bad-signature", /bob@b\.example/);
    // Signed by a key that is not the one in Bob's certificate (the gateway kept another device's key).
    const impostor = new Responder(deps(w), init.msg1, { ...w.bob, identitySeed: generateEd25519().seed });
    await refused(init.onMsg2(impostor.msg2), "bad-signature");
    assert.equal(init.status, "wait-msg2");
    // On msg3 too: a flipped signature bit from Alice's side.
    const msg3 = await init.onMsg2(resp.msg2);
    const [cert3, gatewayCert3, sig3, mac3] = keys.inner3(msg3);
    await refused(resp.onMsg3(keys.reseal3(msg3, encode([cert3, gatewayCert3, flipped(sig3, 0, 0x80), mac3]))), "bad-signature", /alice@a\.example/);
    assert.equal(resp.status, "wait-msg3");
    const { msg4, result } = await resp.onMsg3(msg3);
    assert.equal(init.onMsg4(msg4).spi, result.spi);
  } finally {
    done(w);
  }
});

test("inside a correctly encrypted message: a wrong MAC is bad-mac, a plaintext of the wrong shape malformed, on both sides", async () => {
  const w = world();
  try {
    const init = start(w);
    const { resp, keys } = knownResponder(deps(w), init.msg1, w.bob);
    const [cert, gatewayCert, sig, mac] = keys.inner2;
    const badShapes = (c: Uint8Array, g: Uint8Array, s: Uint8Array, m: Uint8Array): Uint8Array[] => [
      Uint8Array.of(0xff, 0x00), // not CBOR
      encode([c, g, s]), // three fields
      encode([c, g, s, m, m]), // five
      encode([new Uint8Array(0), g, s, m]), // an empty certificate
      encode([c, new Uint8Array(4097), s, m]), // a certificate too long
      encode([c, g, s.subarray(0, 63), m]), // a short signature
      encode([c, g, s, m.subarray(0, 31)]), // a short MAC
      encode([c, "gateway", s, m]), // text where bytes belong
      encode({ cert: c }), // not an array
    ];
    await refused(init.onMsg2(keys.reseal2(encode([cert, gatewayCert, sig, flipped(mac, 31)]))), "bad-mac", /message 2/);
    for (const p of badShapes(cert, gatewayCert, sig, mac)) await refused(init.onMsg2(keys.reseal2(p)), "malformed", /message 2/);
    assert.equal(init.status, "wait-msg2");
    const msg3 = await init.onMsg2(resp.msg2);
    const [c3, g3, s3, m3] = keys.inner3(msg3);
    await refused(resp.onMsg3(keys.reseal3(msg3, encode([c3, g3, s3, flipped(m3, 0)]))), "bad-mac", /message 3/);
    for (const p of badShapes(c3, g3, s3, m3)) await refused(resp.onMsg3(keys.reseal3(msg3, p)), "malformed", /message 3/);
    assert.equal(resp.status, "wait-msg3");
    const { msg4, result } = await resp.onMsg3(msg3);
    assert.equal(init.onMsg4(msg4).spi, result.spi);
  } finally {
    done(w);
  }
});

test("identity protection: no device certificate, device name, identity key, signature or MAC appears in the msg2 and msg3 wire bytes", async () => {
  const w = world();
  try {
    const init = start(w);
    const { resp, keys } = knownResponder(deps(w), init.msg1, w.bob);
    const msg3 = await init.onMsg2(resp.msg2);
    const wire = [encodeMsg2(resp.msg2), encodeMsg3(msg3)];
    const plain = [keys.plaintext2, keys.plaintext3(msg3)];
    const [, , sigR, macR] = keys.inner2;
    const [, , sigI, macI] = keys.inner3(msg3);
    const secret: [string, Uint8Array][] = [
      ["Bob's certificate", w.bob.cert],
      ["Alice's certificate", w.alice.cert],
      ["b.example's gateway certificate", w.b.cert],
      ["a.example's gateway certificate", w.a.cert],
      ["Bob's name in his certificate (CBOR text)", encode("bob")],
      ["Alice's name in her certificate (CBOR text)", encode("alice")],
      ["Bob's identity key", readCertificateUnverified(w.bob.cert).publicKey],
      ["Alice's identity key", readCertificateUnverified(w.alice.cert).publicKey],
      ["Bob's signature", sigR],
      ["Alice's signature", sigI],
      ["Bob's MAC", macR],
      ["Alice's MAC", macI],
    ];
    for (const [what, bytes] of secret) {
      // The needle is really there to be found: in the plaintexts the two ends see.
      assert.ok(plain.some((p) => contains(p, bytes)), `${what} is in a plaintext`);
      for (const m of wire) assert.ok(!contains(m, bytes), `${what} shows on the wire`);
    }
    for (const name of ["bob@b.example", "alice@a.example"]) for (const m of wire) assert.ok(!contains(m, new TextEncoder().encode(name)), `${name} shows on the wire`);
    const { msg4, result } = await resp.onMsg3(msg3);
    assert.equal(init.onMsg4(msg4).spi, result.spi);
  } finally {
    done(w);
  }
});

test("flipping any byte of ciphertext2 or ciphertext3 is refused (decrypt-failed), as is cutting or extending it; the genuine message still completes the run", async () => {
  const w = world();
  try {
    const init = start(w);
    const resp = new Responder(deps(w), init.msg1, w.bob);
    const c2 = resp.msg2.ciphertext;
    for (let at = 0; at < c2.length; at++) {
      await refused(init.onMsg2({ ...resp.msg2, ciphertext: flipped(c2, at, 1 << at % 8) }), "decrypt-failed", /message 2/);
    }
    await refused(init.onMsg2({ ...resp.msg2, ciphertext: c2.subarray(0, c2.length - 1) }), "decrypt-failed");
    await refused(init.onMsg2({ ...resp.msg2, ciphertext: new Uint8Array([...c2, 0]) }), "decrypt-failed");
    await refused(init.onMsg2({ ...resp.msg2, ciphertext: c2.subarray(0, 15) }), "malformed", /ciphertext/);
    assert.equal(init.status, "wait-msg2");
    const msg3 = await init.onMsg2(resp.msg2);
    const c3 = msg3.ciphertext;
    for (let at = 0; at < c3.length; at++) {
      await refused(resp.onMsg3({ ...msg3, ciphertext: flipped(c3, at, 0x80 >> at % 8) }), "decrypt-failed", /message 3/);
    }
    await refused(resp.onMsg3({ ...msg3, ciphertext: c3.subarray(1) }), "decrypt-failed");
    assert.equal(resp.status, "wait-msg3");
    const { msg4, result } = await resp.onMsg3(msg3);
    assert.equal(init.onMsg4(msg4).spi, result.spi);
  } finally {
    done(w);
  }
});

test("replaces: carried in msg1, authenticated through TH1, returned by both sides; out-of-range values are refused", async () => {
  const w = world();
  try {
    const init = start(w, { replaces: 0x12345678 });
    const msg1 = decodeMsg1(encodeMsg1(init.msg1));
    assert.equal(msg1.replaces, 0x12345678);
    // Changed on the way (a new session made a replacement, another SA named): Bob's gateway answers
    // the changed msg1, and Alice's gateway cannot even decrypt that answer.
    for (const replaces of [0, 0x12345679, 0xffffffff]) {
      await refused(init.onMsg2(new Responder(deps(w), { ...msg1, replaces }, w.bob).msg2), "decrypt-failed");
    }
    assert.equal(init.status, "wait-msg2");
    const { i, r } = await finish(init, new Responder(deps(w), msg1, w.bob));
    assert.equal(i.replaces, 0x12345678);
    assert.equal(r.replaces, 0x12345678);
    // The largest SPI is fine; anything beyond an unsigned 32-bit integer is not.
    assert.equal(start(w, { replaces: 0xffffffff }).msg1.replaces, 0xffffffff);
    for (const bad of [-1, 2 ** 32, 1.5, Number.NaN]) {
      await refused(async () => start(w, { replaces: bad }), "malformed", /replaces/);
      const wire = encode([1, msg1.sessionId, msg1.from, msg1.to, msg1.app, msg1.suites, msg1.eA, bad]);
      await refused(async () => decodeMsg1(wire), "malformed");
      await refused(async () => new Responder(deps(w), { ...msg1, replaces: bad }, w.bob), "malformed", /replaces/);
    }
    // The old seven-field msg1, without replaces, is not a msg1.
    await refused(async () => decodeMsg1(encode([1, msg1.sessionId, msg1.from, msg1.to, msg1.app, msg1.suites, msg1.eA])), "malformed");
  } finally {
    done(w);
  }
});

test("a certificate chain from another CA is refused (untrusted-certificate, unknown issuer)", async () => {
  const w = world();
  const rivalDir = tmp();
  w.dirs.push(rivalDir);
  try {
    // Same gateway id and keys, certified by a rival fleet: the chain does not reach our CA.
    const rival = Fleet.create(rivalDir, "rival", T0);
    const rivalB = { signing: w.b.signing, cert: rival.issueGateway("b.example", { signingKey: w.b.signing.publicKey, encryptionKey: generateX25519().publicKey }, T0, 86_400) };
    const init = start(w);
    const forged = new Responder({ ...deps(w) }, init.msg1, { ...w.bob, gatewayCert: rivalB.cert });
    await refused(init.onMsg2(forged.msg2), "untrusted-certificate", /unknown-issuer/);
    assert.equal(init.status, "wait-msg2");
    // A whole rival gateway issuing its own "bob@b.example": its device certificate does not verify either.
    const rivalSigning = generateEd25519();
    const rivalGw = { signing: rivalSigning, cert: rival.issueGateway("b.example", { signingKey: rivalSigning.publicKey, encryptionKey: generateX25519().publicKey }, T0, 86_400) };
    const fakeBob = { ...device(rivalGw, "b.example", "bob"), suites: w.bob.suites };
    await refused(init.onMsg2(new Responder(deps(w), init.msg1, fakeBob).msg2), "untrusted-certificate", /unknown-issuer/);
    await finish(init, new Responder(deps(w), init.msg1, w.bob));
  } finally {
    done(w);
  }
});

test("an expired device certificate is refused (untrusted-certificate, expired), on either side", async () => {
  const w = world();
  try {
    const init = start(w);
    const expiredBob = { ...device(w.b, "b.example", "bob", T0 - 7200, T0 - 3600), suites: w.bob.suites };
    await refused(init.onMsg2(new Responder(deps(w), init.msg1, expiredBob).msg2), "untrusted-certificate", /expired/);
    assert.equal(init.status, "wait-msg2");
    // Alice's expires while Bob's gateway waits: the clock moves past it before msg3 is judged.
    const shortAlice = device(w.a, "a.example", "alice", T0, T0 + 20);
    const init2 = new Initiator(deps(w), shortAlice, "bob@b.example", "chat", [[XS, 1]]);
    const resp2 = new Responder(deps(w), init2.msg1, w.bob);
    const msg3 = await init2.onMsg2(resp2.msg2);
    w.clock.t = T0 + 25;
    await refused(resp2.onMsg3(msg3), "untrusted-certificate", /expired/);
    assert.equal(resp2.status, "wait-msg3");
    w.clock.t = T0 + 10;
    await finish(init, new Responder(deps(w), init.msg1, w.bob));
  } finally {
    done(w);
  }
});

test("a revoked device is refused (untrusted-certificate, revoked), and the refusal changes nothing", async () => {
  const w = world();
  try {
    const init = start(w);
    const resp = new Responder(deps(w), init.msg1, w.bob);
    const msg3 = await init.onMsg2(resp.msg2);
    w.verifier.updateRevocationList(w.fleet.revoke({ devices: ["alice@a.example"] }, w.clock.t));
    await refused(resp.onMsg3(msg3), "untrusted-certificate", /revoked/);
    assert.equal(resp.status, "wait-msg3");
    // And Bob revoked, seen from Alice's side.
    w.verifier.updateRevocationList(w.fleet.revoke({ devices: ["bob@b.example"] }, w.clock.t));
    const init2 = start(w);
    await refused(init2.onMsg2(new Responder(deps(w), init2.msg1, w.bob).msg2), "untrusted-certificate", /device "bob@b\.example" is revoked/);
    assert.equal(init2.status, "wait-msg2");
  } finally {
    done(w);
  }
});

test("a device under a revoked gateway is refused (untrusted-certificate, revoked issuing gateway)", async () => {
  const w = world();
  try {
    w.verifier.updateRevocationList(w.fleet.revoke({ gateways: ["b.example"] }, w.clock.t));
    const init = start(w);
    await refused(init.onMsg2(new Responder(deps(w), init.msg1, w.bob).msg2), "untrusted-certificate", /issuing gateway "b\.example".*revoked/);
    assert.equal(init.status, "wait-msg2");
    // The other direction: Alice's gateway revoked, Bob's gateway refuses msg3.
    const w2 = world();
    w.dirs.push(...w2.dirs);
    const init2 = start(w2);
    const resp2 = new Responder(deps(w2), init2.msg1, w2.bob);
    const msg3 = await init2.onMsg2(resp2.msg2);
    w2.verifier.updateRevocationList(w2.fleet.revoke({ gateways: ["a.example"] }, w2.clock.t));
    await refused(resp2.onMsg3(msg3), "untrusted-certificate", /issuing gateway "a\.example".*revoked/);
    assert.equal(resp2.status, "wait-msg3");
  } finally {
    done(w);
  }
});

test("replayed messages are refused: msg1 by session id, msg2/msg3/msg4 by state", async () => {
  const w = world();
  try {
    const d = deps(w);
    const init = start(w);
    const resp = new Responder(d, init.msg1, w.bob);
    await refused(async () => new Responder(d, init.msg1, w.bob), "replay");
    const msg3 = await init.onMsg2(resp.msg2);
    await refused(init.onMsg2(resp.msg2), "unexpected", /wait-msg4/);
    const { msg4, result } = await resp.onMsg3(msg3);
    await refused(resp.onMsg3(msg3), "unexpected", /done/);
    const r = init.onMsg4(msg4);
    await refused(async () => init.onMsg4(msg4), "unexpected", /done/);
    assert.equal(r.spi, result.spi);
    // Still refused after the exchange ended: the session id stays remembered.
    await refused(async () => new Responder(d, init.msg1, w.bob), "replay");
    // A message from another exchange is not accepted by this one.
    const other = start(w);
    const otherResp = new Responder(d, other.msg1, w.bob);
    const fresh = start(w);
    await refused(fresh.onMsg2(otherResp.msg2), "unexpected", /another exchange/);
    assert.equal(fresh.status, "wait-msg2");
  } finally {
    done(w);
  }
});

test("a man in the middle substituting eA or eB is refused (decrypt-failed / bad-signature); the genuine run still completes", async () => {
  const w = world();
  try {
    const init = start(w);
    // Mallory swaps eA towards Bob: Bob's answer is sealed under keys Alice does not have.
    const mallory = new Initiator(deps(w), w.alice, "bob@b.example", "chat", [[AES, 1], [XS, 2]]);
    const towardsBob = { ...init.msg1, eA: mallory.msg1.eA };
    const bobFooled = new Responder(deps(w), towardsBob, w.bob);
    await refused(init.onMsg2(bobFooled.msg2), "decrypt-failed");
    // Mallory swaps eB with her own and seals and MACs correctly (she knows that shared secret), but can
    // only sign with her own key over Bob's certificate.
    const malloryAsBob = new Responder(deps(w), init.msg1, { ...w.bob, identitySeed: generateEd25519().seed });
    await refused(init.onMsg2(malloryAsBob.msg2), "bad-signature");
    // Bare substitution of eB in Bob's msg2.
    const swapped: Msg2 = { ...bobFooled.msg2, sessionId: init.msg1.sessionId, eB: malloryAsBob.msg2.eB };
    await refused(init.onMsg2(swapped), "decrypt-failed");
    assert.equal(init.status, "wait-msg2");
    // Towards Bob: a msg3 computed on the other leg does not decrypt at Bob's gateway.
    const resp = new Responder(deps(w), init.msg1, w.bob);
    const other = start(w);
    const otherResp = new Responder(deps(w), other.msg1, w.bob);
    const foreign3 = await other.onMsg2(otherResp.msg2);
    await refused(resp.onMsg3({ ...foreign3, sessionId: init.msg1.sessionId }), "decrypt-failed");
    await finish(init, resp);
  } finally {
    done(w);
  }
});

test("wrong names, unoffered suites, no common suite, timeouts and low-order keys are refused", async () => {
  const w = world();
  try {
    const init = start(w);
    const d = deps(w); // shared by the refusals below and the genuine answer at the end
    // A good certificate for someone else: carol@b.example answering for bob.
    const carol = { ...device(w.b, "b.example", "carol"), suites: w.bob.suites };
    await refused(async () => new Responder(d, init.msg1, carol), "wrong-peer");
    await refused(init.onMsg2(new Responder(deps(w), { ...init.msg1, to: carol.name }, carol).msg2), "decrypt-failed");
    // Bob's gateway presenting Carol's certificate in Bob's name: all verifies but the subject.
    await refused(init.onMsg2(new Responder(deps(w), init.msg1, { ...carol, name: "bob@b.example" }).msg2), "wrong-peer", /carol@b\.example/);
    const onlyAes = new Initiator(deps(w), w.alice, "bob@b.example", "chat", [[AES, 1]]);
    const r = new Responder(deps(w), onlyAes.msg1, w.bob);
    assert.equal(r.msg2.suite, AES);
    await refused(onlyAes.onMsg2({ ...r.msg2, suite: XS }), "bad-suite");
    await refused(async () => new Responder(d, init.msg1, { ...w.bob, suites: [[99, 1]] }), "no-common-suite");
    // The all-zero point is of low order: the shared secret would be zero.
    await refused(async () => new Responder(d, { ...init.msg1, eA: new Uint8Array(32) }, w.bob), "malformed", /low order/);
    await refused(init.onMsg2({ ...r.msg2, sessionId: init.msg1.sessionId, suite: XS, eB: new Uint8Array(32) }), "malformed", /low order/);
    // The refusals above recorded nothing: the genuine msg1, same session id, is still answered.
    const resp = new Responder(d, init.msg1, w.bob);
    w.clock.t += 31;
    await refused(init.onMsg2(resp.msg2), "timeout");
    w.clock.t -= 31;
    await finish(init, resp);
  } finally {
    done(w);
  }
});

test("property: the message decoders refuse any mutation with an ExchangeError, never a crash", async () => {
  const w = world();
  try {
    const init = start(w, { replaces: 0xdeadbeef });
    const resp = new Responder(deps(w), init.msg1, w.bob);
    const msg3 = await init.onMsg2(resp.msg2);
    const samples: [Uint8Array, (b: Uint8Array) => unknown][] = [
      [encodeMsg1(init.msg1), decodeMsg1],
      [encodeMsg2(resp.msg2), decodeMsg2],
      [encodeMsg3(msg3), decodeMsg3],
      [encodeMsg4({ sessionId: init.msg1.sessionId, mac: new Uint8Array(32) }), decodeMsg4],
    ];
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 3 }), fc.nat(), fc.integer({ min: 1, max: 255 }), fc.boolean(), (which, pos, flip, cut) => {
        const [bytes, decodeFn] = samples[which];
        const b = new Uint8Array(bytes);
        const at = pos % b.length;
        const input = cut ? b.subarray(0, at) : (b[at] ^= flip, b);
        try {
          decodeFn(input);
          return true; // some flips land inside byte strings and still decode: that is the AEAD's and MAC's job
        } catch (e) {
          return e instanceof ExchangeError && e.code === "malformed";
        }
      }),
      { numRuns: 2000 },
    );
  } finally {
    done(w);
  }
});

// ---------------------------------------------------------------------------------------------------
// hybrid post-quantum key agreement: X25519 + ML-KEM-768 (fleet policy, docs/FLEET.md)

const hex = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, "hex"));

test("ML-KEM-768 is FIPS 203's: NIST ACVP known answers for KeyGen, Encaps and Decaps (implicit rejection included)", () => {
  const v = JSON.parse(readFileSync(new URL("./vectors/ml-kem-768-acvp.json", import.meta.url), "utf8"));
  for (const t of v.keyGen) {
    const keys = ml_kem768.keygen(new Uint8Array([...hex(t.d), ...hex(t.z)]));
    assert.equal(toHex(keys.publicKey), t.ek, `keyGen ${t.tcId}: ek`);
    assert.equal(toHex(keys.secretKey), t.dk, `keyGen ${t.tcId}: dk`);
  }
  for (const t of v.encapsulation) {
    const { cipherText, sharedSecret } = ml_kem768.encapsulate(hex(t.ek), hex(t.m));
    assert.equal(toHex(cipherText), t.c, `encapsulation ${t.tcId}: c`);
    assert.equal(toHex(sharedSecret), t.k, `encapsulation ${t.tcId}: k`);
  }
  // Some of these ciphertexts are not valid: Decaps must then return its implicit-rejection key.
  for (const t of v.decapsulation.tests) assert.equal(toHex(ml_kem768.decapsulate(hex(t.c), hex(v.decapsulation.dk))), t.k, `decapsulation ${t.tcId}`);
});

/** A hybrid run end to end under the two sides' policies; both results. */
async function hybridRun(w: World, initiatorPolicy: KeyAgreementPolicy, responderPolicy: KeyAgreementPolicy) {
  const init = start(w, {}, initiatorPolicy);
  const msg1 = decodeMsg1(encodeMsg1(init.msg1));
  const resp = new Responder({ ...deps(w), keyAgreement: responderPolicy }, msg1, w.bob);
  const msg3 = await init.onMsg2(decodeMsg2(encodeMsg2(resp.msg2)));
  const { msg4, result: r } = await resp.onMsg3(msg3);
  const i = init.onMsg4(msg4);
  assert.equal(toHex(i.seed), toHex(r.seed));
  assert.equal(i.keyAgreement, r.keyAgreement);
  return { init, resp, i, r };
}

test("hybrid: two gateways that do ML-KEM-768 agree on X25519 + ML-KEM-768; either side without it gets X25519 alone", async () => {
  const w = world();
  try {
    const both = await hybridRun(w, "hybrid", "hybrid");
    assert.equal(both.i.keyAgreement, "x25519-mlkem768");
    assert.equal(both.init.msg1.kemKey?.length, 1184);
    assert.equal(both.resp.msg2.kemCiphertext?.length, 1088);
    assert.equal((await hybridRun(w, "hybrid", "hybrid-only")).i.keyAgreement, "x25519-mlkem768");
    const classicalResponder = await hybridRun(w, "hybrid", "x25519");
    assert.equal(classicalResponder.i.keyAgreement, "x25519");
    assert.equal(classicalResponder.resp.msg2.kemCiphertext, undefined, "an ignored offer gets no ciphertext");
    const classicalInitiator = await hybridRun(w, "x25519", "hybrid");
    assert.equal(classicalInitiator.i.keyAgreement, "x25519");
    assert.equal(classicalInitiator.init.msg1.kemKey, undefined, "nothing offered");
  } finally {
    done(w);
  }
});

test("hybrid: the key schedule is docs/PROTOCOL.md's: TH2 covers ctB and PRK takes the ML-KEM secret before X25519's", async () => {
  const w = world();
  try {
    const eA = knownEphemeral();
    const kem = ml_kem768.keygen();
    const init = start(w, { ephemeral: eA, kem: { publicKey: kem.publicKey, secretKey: new Uint8Array(kem.secretKey) } }, "hybrid");
    const resp = new Responder({ ...deps(w), keyAgreement: "hybrid" }, init.msg1, w.bob);
    const msg3 = await init.onMsg2(resp.msg2);
    const { result } = await resp.onMsg3(msg3);
    const keys = new Keys(init.msg1, resp.msg2, eA.privateKey, resp.msg2.eB, kem.secretKey);
    assert.deepEqual(keys.inner2.slice(0, 2).map(toHex), [toHex(w.bob.cert), toHex(w.b.cert)]);
    const derived = keys.result(msg3);
    assert.equal(toHex(derived.seed), toHex(result.seed));
    // Without the ML-KEM secret (X25519 alone over the same transcript) msg2 does not open.
    assert.throws(() => new Keys(init.msg1, resp.msg2, eA.privateKey, resp.msg2.eB), /authenticate/);
  } finally {
    done(w);
  }
});

test("hybrid-only refuses a classical peer (downgrade): the responder before answering, the initiator at msg2", async () => {
  const w = world();
  try {
    const classical = start(w, {}, "x25519");
    await refused(() => new Responder({ ...deps(w), keyAgreement: "hybrid-only" }, classical.msg1, w.bob), "downgrade", /requires X25519 \+ ML-KEM-768/);
    const strict = start(w, {}, "hybrid-only");
    const resp = new Responder({ ...deps(w), keyAgreement: "x25519" }, strict.msg1, w.bob);
    await refused(strict.onMsg2(resp.msg2), "downgrade");
    assert.equal(strict.status, "wait-msg2", "a refused msg2 changes nothing");
  } finally {
    done(w);
  }
});

test("hybrid: a man in the middle cannot downgrade: stripping ekA from msg1 or ctB from msg2 makes msg2 fail to decrypt", async () => {
  const w = world();
  try {
    // ekA stripped on the way: the responder answers classically, but its TH1 is not the initiator's.
    const init = start(w, {}, "hybrid");
    const { kemKey: _dropped, ...stripped } = decodeMsg1(encodeMsg1(init.msg1));
    const resp = new Responder({ ...deps(w), keyAgreement: "hybrid" }, stripped, w.bob);
    assert.equal(resp.msg2.kemCiphertext, undefined);
    await refused(init.onMsg2(resp.msg2), "decrypt-failed");
    // ctB stripped on the way back: the initiator's TH2 and PRK are not the responder's.
    const init2 = start(w, {}, "hybrid");
    const resp2 = new Responder({ ...deps(w), keyAgreement: "hybrid" }, init2.msg1, w.bob);
    const { kemCiphertext: _ct, ...msg2 } = resp2.msg2;
    await refused(init2.onMsg2(msg2), "decrypt-failed");
    // ... or altered: implicit rejection gives another secret, and msg2 does not decrypt either.
    await refused(init2.onMsg2({ ...resp2.msg2, kemCiphertext: flipped(resp2.msg2.kemCiphertext!, 100) }), "decrypt-failed");
    // The genuine msg2 still completes the exchange.
    const msg3 = await init2.onMsg2(resp2.msg2);
    const { msg4 } = await resp2.onMsg3(msg3);
    assert.equal(init2.onMsg4(msg4).keyAgreement, "x25519-mlkem768");
    // A ciphertext nobody asked for is refused.
    const plain = start(w, {}, "x25519");
    const resp3 = new Responder({ ...deps(w), keyAgreement: "x25519" }, plain.msg1, w.bob);
    await refused(plain.onMsg2({ ...resp3.msg2, kemCiphertext: resp2.msg2.kemCiphertext }), "malformed", /none was offered/);
  } finally {
    done(w);
  }
});

test("hybrid: msg1 and msg2 decoders take the ML-KEM fields only at their exact lengths", () => {
  const w = world();
  try {
    const init = start(w, {}, "hybrid");
    const bytes = encodeMsg1(init.msg1);
    assert.equal(toHex(decodeMsg1(bytes).kemKey!), toHex(init.msg1.kemKey!));
    const short = encode([1, init.msg1.sessionId, init.msg1.from, init.msg1.to, init.msg1.app, init.msg1.suites, init.msg1.eA, 0, new Uint8Array(1183)]);
    assert.throws(() => decodeMsg1(short), (e: unknown) => e instanceof ExchangeError && e.code === "malformed" && /1184 bytes/.test(e.message));
    const resp = new Responder({ ...deps(w), keyAgreement: "hybrid" }, init.msg1, w.bob);
    const m2 = resp.msg2;
    const long = encode([2, m2.sessionId, m2.eB, m2.suite, m2.ciphertext, new Uint8Array(1089)]);
    assert.throws(() => decodeMsg2(long), (e: unknown) => e instanceof ExchangeError && e.code === "malformed" && /1088 bytes/.test(e.message));
    // A key that fails FIPS 203's modulus check is refused by the responder, not encapsulated to.
    const bad = { ...init.msg1, kemKey: new Uint8Array(1184).fill(0xff) };
    assert.throws(() => new Responder({ ...deps(w), keyAgreement: "hybrid" }, bad, w.bob), (e: unknown) => e instanceof ExchangeError && e.code === "malformed");
  } finally {
    done(w);
  }
});
