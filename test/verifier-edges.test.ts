// The verifier (gateway/fleet/verifier.ts) at its edges: each status it can answer, with its exact
// reason and validity; each refusal of a signed answer; the certificate checker's cache (what it keeps,
// for how long, against which clock, how many); and its glue to the interlink, on a real broker.
// Written for the mutants that survived `npm run mutation -- gateway/fleet/trust` (docs/MUTATION.md).

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { toHex } from "../firmware/bytes.ts";
import { generateEd25519, type Ed25519KeyPair } from "../gateway/crypto/ed25519.ts";
import { encode } from "../gateway/encoding/cbor.ts";
import { parseSign1, signSign1 } from "../gateway/encoding/cose.ts";
import { issueCertificate, readCertificateUnverified } from "../gateway/encoding/cwt.ts";
import { Fleet, generateX25519, readGatewayCertificateUnverified } from "../gateway/fleet/fleet.ts";
import { Interlink, InterlinkError, type InterlinkIdentity } from "../gateway/fleet/interlink.ts";
import { startBroker, type EmbeddedBroker } from "../gateway/monitor/embedded-broker.ts";
import {
  AnswerError,
  CertificateChecker,
  certificateHash,
  checkerTrust,
  localSource,
  remoteSource,
  serveVerifier,
  signAnswer,
  Verifier,
  verifyAnswer,
  VERIFY_REQUEST_TYPE,
  type AnswerSource,
  type VerificationAnswer,
} from "../gateway/fleet/verifier.ts";

const T0 = 1_800_000_000;
const LIST_LIFETIME = 86_400;
const dirs: string[] = [];
after(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });

function fleetDir(): string {
  const d = mkdtempSync(join(tmpdir(), "kp-verifier-"));
  dirs.push(d);
  return join(d, "fleet");
}

interface Rig {
  fleet: Fleet;
  key: Ed25519KeyPair;
  verifier: Verifier;
  south: { signing: Ed25519KeyPair; cert: Uint8Array };
  device: (o?: { sub?: string; nbf?: number; exp?: number; seed?: Uint8Array; iss?: string }) => Uint8Array;
  gatewayCert: (id: string, o?: { nbf?: number; lifetime?: number; fleet?: Fleet }) => { signing: Ed25519KeyPair; cert: Uint8Array };
}

function rig(o: { list?: boolean; maxAnswerLifetime?: number } = {}): Rig {
  const fleet = Fleet.create(fleetDir(), "acme", T0, LIST_LIFETIME);
  const key = generateEd25519();
  const verifier = new Verifier({ anchor: fleet.anchor, key, verifierId: "verifier.example", maxAnswerLifetime: o.maxAnswerLifetime });
  if (o.list ?? true) verifier.updateRevocationList(fleet.signedList());
  const gatewayCert = (id: string, g: { nbf?: number; lifetime?: number; fleet?: Fleet } = {}) => {
    const signing = generateEd25519();
    const cert = (g.fleet ?? fleet).issueGateway(id, { signingKey: signing.publicKey, encryptionKey: generateX25519().publicKey }, g.nbf ?? T0, g.lifetime ?? 10_000);
    return { signing, cert };
  };
  const south = gatewayCert("south.example");
  const device = (d: { sub?: string; nbf?: number; exp?: number; seed?: Uint8Array; iss?: string } = {}) =>
    issueCertificate({ iss: d.iss ?? "south.example", sub: d.sub ?? "lamp", iat: d.nbf ?? T0, nbf: d.nbf ?? T0, exp: d.exp ?? T0 + 3600, cti: new Uint8Array(randomBytes(16)), publicKey: generateEd25519().publicKey }, d.seed ?? south.signing.seed);
  return { fleet, key, verifier, south, device, gatewayCert };
}

/** The same COSE_Sign1 (with or without the CWT tag) with another alg in its protected header. */
function withAlg(cert: Uint8Array, alg: number): Uint8Array {
  const tagged = cert[0] === 0xd8 && cert[1] === 0x3d;
  const p = parseSign1(tagged ? cert.subarray(2) : cert);
  const body = encode([encode(new Map([[1, alg]])), new Map(), p.payload, p.signature]);
  return Uint8Array.of(...(tagged ? [0xd8, 0x3d] : []), 0xd2, ...body);
}

const verdict = (a: VerificationAnswer) => ({ status: a.status, subject: a.subject, reason: a.reason, validUntil: a.validUntil });

// ---------------------------------------------------------------------------------------------------
// Verifier.check

test("the verifier's options and its clock: whole seconds only, and a zero answer lifetime means a good answer no one may cache", () => {
  const fleet = Fleet.create(fleetDir(), "acme", T0);
  for (const bad of [-1, 1.5, Number.NaN]) {
    assert.throws(() => new Verifier({ anchor: fleet.anchor, key: generateEd25519(), verifierId: "v", maxAnswerLifetime: bad }), { name: "TypeError", message: "maxAnswerLifetime must be whole seconds" });
  }
  const r = rig({ maxAnswerLifetime: 0 });
  const a = r.verifier.check(r.south.cert, [], T0 + 5);
  assert.deepEqual(verdict(a), { status: "good", subject: "south.example", reason: "valid", validUntil: T0 + 5 });
  for (const bad of [Number.NaN, Number.POSITIVE_INFINITY, "1800000000" as unknown as number]) {
    assert.throws(() => r.verifier.check(r.south.cert, [], bad), { name: "TypeError", message: "now must be a finite number of seconds" });
  }
});

test("a certificate that is not bytes is malformed, about no one, and hashed as nothing", () => {
  const r = rig();
  const a = r.verifier.check("cert" as unknown as Uint8Array, [], T0);
  assert.deepEqual(verdict(a), { status: "malformed", subject: "", reason: "certificate must be bytes", validUntil: T0 });
  assert.deepEqual(a.certHash, new Uint8Array(createHash("sha256").update(new Uint8Array(0)).digest()));
  assert.equal(a.revocationSerial, 1);
  assert.equal(a.verifierId, "verifier.example");
  assert.equal(a.checkedAt, T0);
});

test("gateway certificates: each status with its reason; only a good one has a validity beyond now", () => {
  const r = rig();
  const now = T0 + 10;
  const good = r.verifier.check(r.south.cert, [], now);
  assert.deepEqual(verdict(good), { status: "good", subject: "south.example", reason: "valid", validUntil: now + 300 });
  assert.deepEqual(good.certHash, certificateHash(r.south.cert));

  const other = Fleet.create(fleetDir(), "other", T0);
  assert.deepEqual(verdict(r.verifier.check(r.gatewayCert("west.example", { fleet: other }).cert, [], now)),
    { status: "unknown-issuer", subject: "west.example", reason: 'gateway certificate is from fleet "other", not "acme"', validUntil: now });
  const forger = Fleet.create(fleetDir(), "acme", T0); // same fleet id, another CA key
  assert.deepEqual(verdict(r.verifier.check(r.gatewayCert("west.example", { fleet: forger }).cert, [], now)),
    { status: "bad-signature", subject: "west.example", reason: "gateway certificate is not signed by the fleet CA", validUntil: now });
  assert.deepEqual(verdict(r.verifier.check(withAlg(r.south.cert, -7), [], now)),
    { status: "malformed", subject: "south.example", reason: "COSE_Sign1 alg -7 is not accepted; only EdDSA (-8)", validUntil: now });

  const later = r.gatewayCert("late.example", { nbf: T0 + 100 });
  assert.equal(r.verifier.check(later.cert, [], T0 + 99).status, "not-yet-valid");
  assert.equal(r.verifier.check(later.cert, [], T0 + 99).reason, `gateway certificate is not valid before ${T0 + 100}`);
  assert.equal(r.verifier.check(later.cert, [], T0 + 100).status, "good");
  // Valid while nbf <= now < exp.
  assert.equal(r.verifier.check(r.south.cert, [], T0 + 9_999).status, "good");
  assert.deepEqual(verdict(r.verifier.check(r.south.cert, [], T0 + 10_000)),
    { status: "expired", subject: "south.example", reason: `gateway certificate expired at ${T0 + 10_000}`, validUntil: T0 + 10_000 });
});

test("a good answer lasts until the first of: the certificate's end, the list's next update, the answer lifetime", () => {
  const r = rig({ maxAnswerLifetime: 100_000 });
  assert.equal(r.verifier.check(r.south.cert, [], T0).validUntil, T0 + 10_000, "the certificate's exp");
  const long = r.gatewayCert("long.example", { lifetime: 1_000_000 });
  assert.equal(r.verifier.check(long.cert, [], T0).validUntil, T0 + LIST_LIFETIME, "the list's nextUpdate");
  const device = r.device({ exp: T0 + 50 });
  assert.equal(r.verifier.check(device, [r.south.cert], T0).validUntil, T0 + 50, "the device certificate's exp");
  assert.equal(r.verifier.check(r.device(), [r.south.cert], T0).validUntil, T0 + 3600);
});

test("the revocation list: none, stale, or issued in the future: no good answer, and the reason says which", () => {
  const none = rig({ list: false });
  assert.deepEqual(verdict(none.verifier.check(none.south.cert, [], T0)), { status: "revocation-unknown", subject: "south.example", reason: "the verifier holds no revocation list", validUntil: T0 });
  assert.equal(none.verifier.revocationSerial, 0);
  assert.equal(none.verifier.check(none.south.cert, [], T0).revocationSerial, 0);

  const r = rig();
  const longer = r.gatewayCert("long.example", { lifetime: 10 * LIST_LIFETIME });
  assert.equal(r.verifier.check(longer.cert, [], T0 + LIST_LIFETIME - 1).status, "good");
  assert.deepEqual(verdict(r.verifier.check(longer.cert, [], T0 + LIST_LIFETIME)),
    { status: "revocation-unknown", subject: "long.example", reason: `the revocation list (serial 1) went stale at ${T0 + LIST_LIFETIME}`, validUntil: T0 + LIST_LIFETIME });

  // A list issued ahead of the verifier's clock (the CA's clock ahead, or ours behind).
  r.verifier.updateRevocationList(r.fleet.revoke({}, T0 + 500));
  assert.deepEqual(verdict(r.verifier.check(r.south.cert, [], T0 + 499)),
    { status: "revocation-unknown", subject: "south.example", reason: `the revocation list (serial 2) is issued in the future (${T0 + 500})`, validUntil: T0 + 499 });
  assert.equal(r.verifier.check(r.south.cert, [], T0 + 500).status, "good");
});

test("a gateway revoked by name, or its certificate by id: revoked, and the reason names the list", () => {
  const r = rig();
  const byId = rig();
  byId.verifier.updateRevocationList(byId.fleet.revoke({ certIds: [toHex(readGatewayCertificateUnverified(byId.south.cert).cti)] }, T0));
  const a = byId.verifier.check(byId.south.cert, [], T0 + 1);
  assert.deepEqual(verdict(a), { status: "revoked", subject: "south.example", reason: `gateway certificate ${toHex(readGatewayCertificateUnverified(byId.south.cert).cti)} is revoked (list serial 2)`, validUntil: T0 + 1 });
  assert.equal(byId.verifier.check(byId.gatewayCert("south.example").cert, [], T0 + 1).status, "good", "another certificate of the same gateway is not revoked by id");

  r.verifier.updateRevocationList(r.fleet.revoke({ gateways: ["south.example"] }, T0));
  assert.deepEqual(verdict(r.verifier.check(r.south.cert, [], T0 + 1)), { status: "revoked", subject: "south.example", reason: 'gateway "south.example" is revoked (list serial 2)', validUntil: T0 + 1 });
});

test("device certificates: each status with its reason, judged through the issuing gateway's certificate in the chain", () => {
  const r = rig();
  const now = T0 + 1;
  const lamp = r.device();
  assert.deepEqual(verdict(r.verifier.check(lamp, [r.south.cert], now)), { status: "good", subject: "lamp@south.example", reason: "valid", validUntil: now + 300 });

  const garbage = new Uint8Array([0xd8, 0x3d, 0xd2, 0x80]);
  const m = r.verifier.check(garbage, [r.south.cert], now);
  assert.equal(m.status, "malformed");
  assert.equal(m.subject, "");
  assert.ok(m.reason.length > 0 && m.reason !== "certificate is malformed");

  assert.deepEqual(verdict(r.verifier.check(lamp, [], now)),
    { status: "unknown-issuer", subject: "lamp@south.example", reason: 'no certificate for the issuing gateway "south.example" in the chain', validUntil: now });
  const north = r.gatewayCert("north.example");
  assert.equal(r.verifier.check(lamp, [north.cert], now).status, "unknown-issuer", "another gateway's certificate does not issue it");

  // Not signed by the gateway the chain certifies; signed under another alg.
  assert.deepEqual(verdict(r.verifier.check(r.device({ seed: north.signing.seed }), [r.south.cert], now)),
    { status: "bad-signature", subject: "lamp@south.example", reason: 'device certificate is not signed by gateway "south.example"', validUntil: now });
  assert.deepEqual(verdict(r.verifier.check(withAlg(lamp, -7), [r.south.cert], now)),
    { status: "bad-signature", subject: "lamp@south.example", reason: 'device certificate is not signed by gateway "south.example"', validUntil: now });

  assert.deepEqual(verdict(r.verifier.check(r.device({ nbf: T0 + 50, exp: T0 + 60 }), [r.south.cert], now)),
    { status: "not-yet-valid", subject: "lamp@south.example", reason: `device certificate: certificate is not valid before ${T0 + 50}`, validUntil: now });
  assert.deepEqual(verdict(r.verifier.check(r.device({ exp: T0 + 1 }), [r.south.cert], now)),
    { status: "expired", subject: "lamp@south.example", reason: `device certificate: certificate expired at ${T0 + 1}`, validUntil: now });

  // Its gateway no longer good: the device's answer says so, with the gateway's reason.
  const late = r.gatewayCert("south.example", { nbf: T0 + 100 });
  assert.deepEqual(verdict(r.verifier.check(lamp, [late.cert], now)),
    { status: "not-yet-valid", subject: "lamp@south.example", reason: `issuing gateway "south.example": gateway certificate is not valid before ${T0 + 100}`, validUntil: now });
});

test("the chain: the first certificate naming the issuer is the one, whatever comes before or after it", () => {
  const r = rig();
  const lamp = r.device();
  const north = r.gatewayCert("north.example");
  const expiredSouth = r.gatewayCert("south.example", { lifetime: 1 });
  const now = T0 + 5;
  assert.equal(r.verifier.check(lamp, [new Uint8Array([1, 2, 3]), north.cert, r.south.cert], now).status, "good", "bytes that are no certificate, and another gateway's, are passed over");
  assert.equal(r.verifier.check(lamp, [r.south.cert, expiredSouth.cert], now).status, "good", "the first match is judged, not a later one");
  assert.equal(r.verifier.check(lamp, [expiredSouth.cert, r.south.cert], now).status, "expired", "the first match is judged, not a later good one");
});

test("a device revoked by name, or its certificate by id", () => {
  const r = rig();
  const lamp = r.device();
  const cti = toHex(readCertificateUnverified(lamp).cti);
  r.verifier.updateRevocationList(r.fleet.revoke({ certIds: [cti] }, T0));
  assert.deepEqual(verdict(r.verifier.check(lamp, [r.south.cert], T0 + 1)), { status: "revoked", subject: "lamp@south.example", reason: `device certificate ${cti} is revoked (list serial 2)`, validUntil: T0 + 1 });
  assert.equal(r.verifier.check(r.device(), [r.south.cert], T0 + 1).status, "good", "its next certificate is not revoked by id");
  r.verifier.updateRevocationList(r.fleet.revoke({ devices: ["lamp@south.example"] }, T0));
  assert.deepEqual(verdict(r.verifier.check(r.device(), [r.south.cert], T0 + 1)).reason, 'device "lamp@south.example" is revoked (list serial 3)');
  assert.equal(r.verifier.check(r.device({ sub: "fan" }), [r.south.cert], T0 + 1).status, "good");
});


// ---------------------------------------------------------------------------------------------------
// the signed answer

function answerMap(over: Record<number, unknown> = {}): Map<number, unknown> {
  const m = new Map<number, unknown>([
    [0, "KP verifier answer"], [1, "good"], [2, "south.example"], [3, T0], [4, T0 + 10], [5, new Uint8Array(32)], [6, "valid"], [7, 1], [8, "verifier.example"],
  ]);
  for (const [k, v] of Object.entries(over)) m.set(Number(k), v);
  return m;
}

test("a signed answer reads back field for field, and a checkedAt of 0 is a time like any other", () => {
  const key = generateEd25519();
  const a: VerificationAnswer = { status: "expired", subject: "x@y.example", checkedAt: 0, validUntil: 0, certHash: new Uint8Array(32).fill(3), reason: "why", revocationSerial: 0, verifierId: "v" };
  assert.deepEqual(verifyAnswer(signAnswer(a, key.seed), key.publicKey), a);
  for (const status of ["good", "revoked", "expired", "not-yet-valid", "bad-signature", "unknown-issuer", "malformed", "revocation-unknown"]) {
    assert.equal(verifyAnswer(signSign1(encode(answerMap({ 1: status })), key.seed), key.publicKey).status, status);
  }
});

test("a signed answer is refused when it is not the verifier's, not an answer, or any field is of the wrong kind", () => {
  const key = generateEd25519();
  const signed = (m: unknown) => signSign1(encode(m), key.seed);
  const refused = (bytes: Uint8Array, message: string | RegExp) =>
    assert.throws(() => verifyAnswer(bytes, key.publicKey), (e: Error) => e instanceof AnswerError && e.name === "AnswerError" && (typeof message === "string" ? e.message === message : message.test(e.message)));
  assert.throws(() => verifyAnswer(signed(answerMap()), generateEd25519().publicKey), (e: Error) => e instanceof AnswerError && e.message === "verifier answer is not signed by the verifier's key" && (e.cause as { code?: string }).code === "bad-signature");
  assert.throws(() => verifyAnswer(Uint8Array.of(1, 2), key.publicKey), (e: Error) => e instanceof AnswerError && /^verifier answer is malformed: / .test(e.message) && e.cause !== undefined);
  refused(signSign1(Uint8Array.of(0xa1, 0x01), key.seed), /^verifier answer is malformed: .*verifier answer/);
  refused(signed([1, 2]), "not a verifier answer");
  refused(signed(answerMap({ 0: "KP verifier answers" })), "not a verifier answer");
  refused(signed(new Map([[1, "good"]])), "not a verifier answer");
  const wrong = "verifier answer has fields of the wrong kind";
  for (const over of [
    { 1: "fine" }, { 1: 1 },
    { 2: 5 },
    { 3: -1 }, { 3: 1.5 }, { 3: "1" }, { 3: 2 ** 53 },
    { 4: T0 - 1 }, { 4: -1 },
    { 5: new Uint8Array(31) }, { 5: new Uint8Array(33) }, { 5: "00".repeat(32) },
    { 6: 6 },
    { 7: -1 }, { 7: 0.5 },
    { 8: 8 },
  ]) refused(signed(answerMap(over)), wrong);
});

// ---------------------------------------------------------------------------------------------------
// the certificate checker

/** An answer source that counts its calls, answering as `answer` does. */
function counting(answer: AnswerSource): AnswerSource & { calls: number } {
  const f = (async (cert, chain, now) => {
    f.calls++;
    return answer(cert, chain, now);
  }) as AnswerSource & { calls: number };
  f.calls = 0;
  return f;
}

test("the checker keeps a good answer while now < validUntil and no earlier than the skew allows, and asks again after", async () => {
  const r = rig();
  const src = counting(localSource(r.verifier));
  const c = new CertificateChecker({ source: src, verifierPublicKey: r.key.publicKey });
  assert.equal((await c.check(r.south.cert, [], T0)).status, "good");
  assert.equal(c.size, 1);
  await c.check(r.south.cert, [], T0 + 299);
  assert.equal(src.calls, 1, "cached until validUntil");
  await c.check(r.south.cert, [], T0 - 60);
  assert.equal(src.calls, 1, "a clock up to the skew behind checkedAt still uses it");
  assert.equal((await c.check(r.south.cert, [], T0 - 61)).status, "not-yet-valid", "further behind: asked again, and judged at that time");
  assert.equal(src.calls, 2);
  assert.equal(c.size, 0, "the answer it could no longer use is gone");
  const c2 = new CertificateChecker({ source: src, verifierPublicKey: r.key.publicKey });
  await c2.check(r.south.cert, [], T0);
  const a = await c2.check(r.south.cert, [], T0 + 300);
  assert.equal(src.calls, 4, "at validUntil it is no longer used");
  assert.equal(a.checkedAt, T0 + 300);
  assert.equal(c2.size, 1);
});

test("the checker refuses an answer about another certificate or from too far from its clock, and caches nothing it refused", async () => {
  const r = rig();
  const other = r.gatewayCert("other.example").cert;
  const c = new CertificateChecker({ source: async (_cert, chain, now) => r.verifier.answer(other, chain, now), verifierPublicKey: r.key.publicKey });
  await assert.rejects(c.check(r.south.cert, [], T0), (e: Error) => e instanceof AnswerError && e.message === "verifier answered about another certificate");
  assert.equal(c.size, 0);
  const earlier = r.gatewayCert("earlier.example", { nbf: T0 - 1000 }).cert; // valid at every clock tried
  for (const [skew, ok] of [[60, true], [-60, true], [61, false], [-61, false]] as const) {
    const s = new CertificateChecker({ source: async (cert, chain, now) => r.verifier.answer(cert, chain, now + skew), verifierPublicKey: r.key.publicKey });
    if (ok) assert.equal((await s.check(earlier, [], T0)).checkedAt, T0 + skew, `${skew} s off: taken`);
    else await assert.rejects(s.check(earlier, [], T0), (e: Error) => e instanceof AnswerError && e.message === `verifier answer was made at ${T0 + skew}, too far from now (${T0})`);
  }
  const narrow = new CertificateChecker({ source: async (cert, chain, now) => r.verifier.answer(cert, chain, now + 5), verifierPublicKey: r.key.publicKey, maxSkew: 4 });
  await assert.rejects(narrow.check(r.south.cert, [], T0), /too far from now/);
});

test("only a good answer with time left is cached; the oldest goes when the cache is full", async () => {
  const r = rig();
  const revokedList = rig();
  revokedList.verifier.updateRevocationList(revokedList.fleet.revoke({ gateways: ["south.example"] }, T0));
  const bad = new CertificateChecker({ source: localSource(revokedList.verifier), verifierPublicKey: revokedList.key.publicKey });
  assert.equal((await bad.check(revokedList.south.cert, [], T0)).status, "revoked");
  assert.equal(bad.size, 0, "not cached: revoked");

  const zero = rig({ maxAnswerLifetime: 0 });
  const z = new CertificateChecker({ source: localSource(zero.verifier), verifierPublicKey: zero.key.publicKey });
  assert.equal((await z.check(zero.south.cert, [], T0)).status, "good");
  assert.equal(z.size, 0, "not cached: good, but valid until now");

  const src = counting(localSource(r.verifier));
  const small = new CertificateChecker({ source: src, verifierPublicKey: r.key.publicKey, maxEntries: 2 });
  const certs = [r.south.cert, r.gatewayCert("b.example").cert, r.gatewayCert("c.example").cert];
  for (const cert of certs) await small.check(cert, [], T0);
  assert.equal(small.size, 2);
  await small.check(certs[2], [], T0);
  await small.check(certs[1], [], T0);
  assert.equal(src.calls, 3, "the two newest are kept");
  await small.check(certs[0], [], T0);
  assert.equal(src.calls, 4, "the oldest was dropped");
});

test("a signed answer that is not good is never cached, whatever validity it claims", async () => {
  const r = rig();
  const c = new CertificateChecker({
    source: async (cert, _chain, now) => signAnswer({ status: "revoked", subject: "south.example", checkedAt: now, validUntil: now + 100, certHash: certificateHash(cert), reason: "revoked", revocationSerial: 1, verifierId: "v" }, r.key.seed),
    verifierPublicKey: r.key.publicKey,
  });
  assert.equal((await c.check(r.south.cert, [], T0)).status, "revoked");
  assert.equal(c.size, 0);
});

test("an answer from an older list than the one held is asked again, then refused; clear() empties the cache and moves the generation on", async () => {
  const r = rig();
  let held = 2;
  const src = counting(localSource(r.verifier)); // its verifier holds serial 1
  const c = new CertificateChecker({ source: src, verifierPublicKey: r.key.publicKey, minSerial: () => held, staleRetries: 2, staleRetryMs: 1 });
  await assert.rejects(c.check(r.south.cert, [], T0), (e: Error) => e instanceof AnswerError && e.message === "the verifier answered from revocation list serial 1, older than the one held here (2)");
  assert.equal(src.calls, 3, "asked once and again twice");
  assert.equal(c.size, 0);
  held = 1;
  assert.equal((await c.check(r.south.cert, [], T0)).status, "good");
  // The default: 5 retries, 200 ms apart.
  held = 2;
  const d = new CertificateChecker({ source: counting(localSource(r.verifier)), verifierPublicKey: r.key.publicKey, minSerial: () => held });
  const started = Date.now();
  const late = d.check(r.gatewayCert("x.example").cert, [], T0);
  setTimeout(() => { r.verifier.updateRevocationList(r.fleet.revoke({}, T0)); }, 250);
  assert.equal((await late).revocationSerial, 2, "the newer list reached the verifier between two tries");
  assert.ok(Date.now() - started >= 350, "tries were 200 ms apart");

  assert.equal(c.size, 1);
  const g = c.generation;
  c.clear();
  assert.equal(c.size, 0);
  assert.equal(c.generation, g + 1);
  c.clear();
  assert.equal(c.generation, g + 2);
});

// ---------------------------------------------------------------------------------------------------
// the verifier over the interlink, on a real broker

let broker: EmbeddedBroker;
before(async () => { broker = await startBroker({ host: "127.0.0.1", port: 0 }); });
after(async () => { await broker.close(); });

async function linked(r: Rig, id: string, checker: CertificateChecker): Promise<{ link: Interlink; identity: InterlinkIdentity }> {
  const signing = generateEd25519();
  const encryption = generateX25519();
  const certificate = r.fleet.issueGateway(id, { signingKey: signing.publicKey, encryptionKey: encryption.publicKey }, T0, 10_000);
  const identity = { gatewayId: id, signing, encryption, certificate };
  const link = await Interlink.connect({ url: broker.url, identity, trust: checkerTrust(checker), now: () => T0, protocolVersion: 4, requestTimeoutMs: 3000 });
  return { link, identity };
}

test("served over the interlink: a verify request of the wrong shape is refused as malformed; an answer that is not bytes is refused by the asker; peer trust follows the checker", async () => {
  const r = rig();
  const checker = new CertificateChecker({ source: localSource(r.verifier), verifierPublicKey: r.key.publicKey });
  const suffix = toHex(new Uint8Array(randomBytes(3)));
  const v = await linked(r, `v-${suffix}.example`, checker);
  const asker = await linked(r, `a-${suffix}.example`, checker);
  const liar = await linked(r, `l-${suffix}.example`, checker);
  try {
    serveVerifier(v.link, r.verifier, () => T0);
    for (const body of [5, new Map<string, unknown>([["cert", "x"], ["chain", []]]), new Map<string, unknown>([["cert", r.south.cert], ["chain", "x"]]), new Map<string, unknown>([["chain", []]])]) {
      await assert.rejects(asker.link.request(v.identity.gatewayId, VERIFY_REQUEST_TYPE, body), (e: Error) => e instanceof InterlinkError && e.code === "remote-error" && e.remoteCode === "malformed" && /verify request body must be \{cert: bytes, chain: \[bytes\]\}/.test(e.message));
    }
    const lamp = r.device();
    const signed = await remoteSource(asker.link, v.identity.gatewayId)(lamp, [r.south.cert], T0);
    assert.equal(verifyAnswer(signed, r.key.publicKey).status, "good");
    const mixed = await asker.link.request(v.identity.gatewayId, VERIFY_REQUEST_TYPE, new Map<string, unknown>([["cert", lamp], ["chain", ["not bytes", 7, r.south.cert]]]));
    assert.equal(verifyAnswer(mixed as Uint8Array, r.key.publicKey).status, "good", "entries that are not bytes are left out of the chain");

    liar.link.handle(VERIFY_REQUEST_TYPE, () => ({ body: 5 }));
    await assert.rejects(remoteSource(asker.link, liar.identity.gatewayId)(lamp, [], T0), (e: Error) => e instanceof AnswerError && e.message === "verifier answered with something other than bytes");

    const trust = checkerTrust(checker);
    const peer = await trust.gateway(r.south.cert, T0);
    const claims = readGatewayCertificateUnverified(r.south.cert);
    assert.deepEqual(peer, { gatewayId: "south.example", signingKey: claims.signingKey, encryptionKey: claims.encryptionKey, validUntil: T0 + 300 });
    const e0 = trust.epoch!();
    assert.equal(e0, checker.generation);
    checker.clear();
    assert.equal(trust.epoch!(), e0 + 1);
    r.verifier.updateRevocationList(r.fleet.revoke({ gateways: ["south.example"] }, T0));
    checker.clear();
    await assert.rejects(trust.gateway(r.south.cert, T0), (e: Error) => e instanceof InterlinkError && e.code === "untrusted-peer" && e.message === 'peer certificate is revoked: gateway "south.example" is revoked (list serial 2)');
  } finally {
    await Promise.all([v.link.close(), asker.link.close(), liar.link.close()]);
  }
});
