// Fleet trust: X25519 (RFC 7748 vectors), gateway certificates, the revocation list, the verifier and
// its cache, a gateway's credentials and the `keyproxy fleet` command.

import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, statSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { fromHex, toHex } from "../firmware/bytes.ts";
import { issueCertificate } from "../gateway/encoding/cwt.ts";
import { generateEd25519 } from "../gateway/crypto/ed25519.ts";
import {
  acceptRevocationList,
  CA_KEY_FILE,
  DEV_FLEET_DIR,
  Fleet,
  FleetError,
  FLEET_FILE,
  generateX25519,
  isGatewayId,
  issueGatewayCertificate,
  localDeviceId,
  splitDeviceName,
  loadGatewayCredentials,
  readGatewayCertificateUnverified,
  readRevocationListUnverified,
  REVOCATION_FILE,
  signRevocationList,
  verifyGatewayCertificateSignature,
  verifyRevocationList,
  x25519PublicKey,
  x25519SharedSecret,
} from "../gateway/fleet/fleet.ts";
import {
  AnswerError,
  CertificateChecker,
  certificateHash,
  localSource,
  signAnswer,
  Verifier,
  verifyAnswer,
  type AnswerSource,
  type VerificationStatus,
} from "../gateway/fleet/verifier.ts";
import { fleetCommand } from "../cli/fleet-cmd.ts";
import { main } from "../cli/main.ts";

const T0 = 1_800_000_000;
const hex = (h: string): Uint8Array => fromHex(h) as Uint8Array;

function tmp(): string {
  return mkdtempSync(join(tmpdir(), "kp-fleet-"));
}

// ---------------------------------------------------------------------------------------------------
// X25519: RFC 7748 §6.1

test("X25519 matches RFC 7748 §6.1 (Alice and Bob) and refuses a low-order public key", () => {
  const a = hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
  const b = hex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
  assert.equal(toHex(x25519PublicKey(a)), "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
  assert.equal(toHex(x25519PublicKey(b)), "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
  const k = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";
  assert.equal(toHex(x25519SharedSecret(a, x25519PublicKey(b))), k);
  assert.equal(toHex(x25519SharedSecret(b, x25519PublicKey(a))), k);
  assert.throws(() => x25519SharedSecret(a, new Uint8Array(32)), (e: unknown) => e instanceof FleetError && /low order/.test(e.message));
  assert.throws(() => x25519SharedSecret(a, new Uint8Array(31)), TypeError);
});

// ---------------------------------------------------------------------------------------------------
// a fleet on disk

interface World {
  dir: string;
  fleet: Fleet;
  gwSigning: ReturnType<typeof generateEd25519>;
  gwEnc: ReturnType<typeof generateX25519>;
  gwCert: Uint8Array;
  verifierKey: ReturnType<typeof generateEd25519>;
  verifier: Verifier;
}

function world(): World {
  const dir = tmp();
  const fleet = Fleet.create(dir, "acme", T0);
  const gwSigning = generateEd25519();
  const gwEnc = generateX25519();
  const gwCert = fleet.issueGateway("north.example", { signingKey: gwSigning.publicKey, encryptionKey: gwEnc.publicKey }, T0, 1000);
  const verifierKey = generateEd25519();
  const verifier = new Verifier({ anchor: fleet.anchor, key: verifierKey, verifierId: "verifier.acme", maxAnswerLifetime: 300 });
  verifier.updateRevocationList(fleet.signedList());
  return { dir, fleet, gwSigning, gwEnc, gwCert, verifierKey, verifier };
}

function deviceCert(w: World, sub: string, nbf = T0, exp = T0 + 600, signer = w.gwSigning.seed, iss = "north.example"): Uint8Array {
  return issueCertificate({ iss, sub, iat: nbf, nbf, exp, cti: new Uint8Array(16).fill(sub.length), publicKey: generateEd25519().publicKey }, signer);
}

test("names: gateway ids are domains that can be one topic level, not the reserved trees; name@domain splits; name@own-domain is local", () => {
  for (const ok of ["a.example", "gw-1", "north.example.org", "x_y.z"]) assert.equal(isGatewayId(ok), true, ok);
  for (const bad of ["", "interlink", "fleet", "a/b", "a+b", "a#b", "a b", ".a", "a..b", "x".repeat(254)]) assert.equal(isGatewayId(bad), false, bad);
  assert.deepEqual(splitDeviceName("bob@b.example"), { name: "bob", domain: "b.example" });
  assert.equal(splitDeviceName("bob@fleet"), undefined);
  assert.equal(splitDeviceName("bob"), undefined);
  assert.equal(localDeviceId("bob", "a.example"), "bob");
  assert.equal(localDeviceId("bob@a.example", "a.example"), "bob");
  assert.equal(localDeviceId("bob@b.example", "a.example"), undefined);
  assert.equal(localDeviceId("bob@", "a.example"), undefined);
});

test("Fleet.create writes the CA key owner-only, the trust anchor and revocation list serial 1, and refuses to overwrite", () => {
  const dir = tmp();
  try {
    const fleet = Fleet.create(dir, "acme", T0);
    assert.equal(statSync(join(dir, CA_KEY_FILE)).mode & 0o777, 0o600);
    assert.equal(statSync(dir).mode & 0o777, 0o700);
    const anchor = JSON.parse(readFileSync(join(dir, FLEET_FILE), "utf8"));
    assert.equal(anchor.fleetId, "acme");
    assert.equal(anchor.caPublicKey, toHex(fleet.anchor.caPublicKey));
    // The CA key is not in any public file.
    const seed = readFileSync(join(dir, CA_KEY_FILE), "utf8").trim();
    assert.ok(!readFileSync(join(dir, FLEET_FILE), "utf8").includes(seed));
    const list = fleet.currentList();
    assert.deepEqual([list.serial, list.issuedAt, list.nextUpdate, list.devices, list.gateways, list.certIds], [1, T0, T0 + 86400, [], [], []]);
    assert.throws(() => Fleet.create(dir, "acme", T0), (e: unknown) => e instanceof FleetError && e.code === "exists");
    assert.equal(toHex(Fleet.open(dir).anchor.caPublicKey), toHex(fleet.anchor.caPublicKey));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a gateway certificate carries both keys in their own claims and is signed by the fleet CA", () => {
  const w = world();
  try {
    const c = verifyGatewayCertificateSignature(w.gwCert, w.fleet.anchor.caPublicKey);
    assert.equal(c.iss, "acme");
    assert.equal(c.sub, "north.example");
    assert.deepEqual([c.nbf, c.exp], [T0, T0 + 1000]);
    assert.equal(toHex(c.signingKey), toHex(w.gwSigning.publicKey));
    assert.equal(toHex(c.encryptionKey), toHex(w.gwEnc.publicKey));
    // The bytes: CWT tag 61, COSE_Sign1 tag 18; the X25519 COSE_Key under claim -65601 (0x3a 00010040),
    // with crv 4 (X25519); cnf's COSE_Key with crv 6 (Ed25519).
    const h = toHex(w.gwCert);
    assert.ok(h.startsWith("d83dd284"), h.slice(0, 8));
    assert.ok(h.includes("3a00010040a30101200421" + "5820" + toHex(w.gwEnc.publicKey)), "X25519 claim as a COSE_Key {1: 1, -1: 4, -2: x}");
    assert.ok(h.includes("08a101a40101032720062158 20".replace(" ", "") + toHex(w.gwSigning.publicKey)), "cnf COSE_Key {1: 1, 3: -8, -1: 6, -2: x}");
    // Forged: one bit of the signature flipped; or signed by another CA with the same fleet id.
    const forged = new Uint8Array(w.gwCert);
    forged[forged.length - 1] ^= 1;
    assert.throws(() => verifyGatewayCertificateSignature(forged, w.fleet.anchor.caPublicKey), (e: unknown) => e instanceof FleetError && e.code === "bad-signature");
    const other = issueGatewayCertificate({ ...c, cti: new Uint8Array(16) }, generateEd25519().seed);
    assert.throws(() => verifyGatewayCertificateSignature(other, w.fleet.anchor.caPublicKey), (e: unknown) => e instanceof FleetError && e.code === "bad-signature");
    // A device certificate is not a gateway certificate.
    assert.throws(() => readGatewayCertificateUnverified(deviceCert(w, "lamp")), (e: unknown) => e instanceof FleetError && e.code === "malformed");
  } finally {
    rmSync(w.dir, { recursive: true, force: true });
  }
});

test("property: the gateway certificate and revocation list readers refuse any mutation with a FleetError, never a crash", () => {
  const w = world();
  try {
    const list = w.fleet.signedList();
    for (const original of [w.gwCert, list]) {
      fc.assert(
        fc.property(fc.nat(original.length - 1), fc.integer({ min: 1, max: 255 }), (i, x) => {
          const b = new Uint8Array(original);
          b[i] ^= x;
          try {
            if (original === list) verifyRevocationList(b, "acme", w.fleet.anchor.caPublicKey);
            else verifyGatewayCertificateSignature(b, w.fleet.anchor.caPublicKey);
          } catch (e) {
            return e instanceof FleetError;
          }
          return false; // any change must be refused
        }),
        { numRuns: 300 },
      );
    }
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (b) => {
        try {
          readGatewayCertificateUnverified(b);
          readRevocationListUnverified(b);
          return false;
        } catch (e) {
          return e instanceof FleetError;
        }
      }),
      { numRuns: 300 },
    );
  } finally {
    rmSync(w.dir, { recursive: true, force: true });
  }
});

test("revocation list: the serial only goes up, another fleet's or a forged list is refused", () => {
  const w = world();
  try {
    const first = w.fleet.currentList();
    const second = w.fleet.revoke({ devices: ["lamp@north.example"] }, T0 + 10);
    const l2 = acceptRevocationList(first, second, "acme", w.fleet.anchor.caPublicKey);
    assert.equal(l2.serial, 2);
    assert.deepEqual(l2.devices, ["lamp@north.example"]);
    // Rollback: the older list, or the same one again, is refused.
    const oldBytes = signRevocationList(first, readSeed(w.dir));
    assert.throws(() => acceptRevocationList(l2, oldBytes, "acme", w.fleet.anchor.caPublicKey), (e: unknown) => e instanceof FleetError && e.code === "rollback");
    assert.throws(() => acceptRevocationList(l2, second, "acme", w.fleet.anchor.caPublicKey), (e: unknown) => e instanceof FleetError && e.code === "rollback");
    // Another fleet (its own CA): unknown issuer when its key is the anchor but the id differs; bad signature otherwise.
    const otherDir = tmp();
    const other = Fleet.create(otherDir, "rival", T0);
    assert.throws(() => verifyRevocationList(other.signedList(), "acme", w.fleet.anchor.caPublicKey), (e: unknown) => e instanceof FleetError && e.code === "bad-signature");
    assert.throws(() => verifyRevocationList(other.signedList(), "acme", other.anchor.caPublicKey), (e: unknown) => e instanceof FleetError && e.code === "unknown-issuer");
    rmSync(otherDir, { recursive: true, force: true });
    // Entries are kept sorted and unique, so one list has one encoding.
    w.fleet.revoke({ devices: ["lamp@north.example", "fan@north.example"], gateways: ["south.example"] }, T0 + 20);
    const l3 = w.fleet.currentList();
    assert.deepEqual(l3.devices, ["fan@north.example", "lamp@north.example"]);
    assert.deepEqual(l3.gateways, ["south.example"]);
    assert.throws(() => w.fleet.revoke({ devices: ["no-domain"] }, T0), (e: unknown) => e instanceof FleetError && e.code === "malformed");
    assert.equal(w.fleet.currentList().serial, 3, "a refused revoke signs nothing");
  } finally {
    rmSync(w.dir, { recursive: true, force: true });
  }
});

function readSeed(dir: string): Uint8Array {
  return hex(readFileSync(join(dir, CA_KEY_FILE), "utf8").trim());
}

// ---------------------------------------------------------------------------------------------------
// the verifier

function status(w: World, cert: Uint8Array, chain: Uint8Array[], now: number): { status: VerificationStatus; reason: string; validUntil: number; subject: string } {
  return w.verifier.check(cert, chain, now);
}

test("verifier: good gateway and device certificates, validUntil bounded by exp, list and answer lifetime", () => {
  const w = world();
  try {
    const g = status(w, w.gwCert, [], T0 + 1);
    assert.deepEqual([g.status, g.subject, g.validUntil], ["good", "north.example", T0 + 1 + 300]);
    // Near the certificate's end, its exp is the bound.
    assert.equal(status(w, w.gwCert, [], T0 + 900).validUntil, T0 + 1000);
    const dev = deviceCert(w, "lamp", T0, T0 + 100);
    const d = status(w, dev, [w.gwCert], T0 + 1);
    assert.deepEqual([d.status, d.subject, d.validUntil], ["good", "lamp@north.example", T0 + 100]);
    // The list's next update bounds it too.
    const v2 = new Verifier({ anchor: w.fleet.anchor, key: w.verifierKey, verifierId: "v", maxAnswerLifetime: 10 ** 9 });
    v2.updateRevocationList(w.fleet.signedList());
    assert.equal(v2.check(w.gwCert, [], T0 + 1).validUntil, T0 + 86400 > T0 + 1000 ? T0 + 1000 : T0 + 86400);
  } finally {
    rmSync(w.dir, { recursive: true, force: true });
  }
});

test("verifier rejects, each with its reason: forged signature, another CA, expired, revoked device, revoked gateway, no or stale list", () => {
  const w = world();
  const otherDir = tmp();
  try {
    const now = T0 + 5;
    const dev = deviceCert(w, "lamp");
    // forged signature: a device certificate signed by a key that is not the gateway's
    const forgedDev = deviceCert(w, "lamp", T0, T0 + 600, generateEd25519().seed);
    let a = status(w, forgedDev, [w.gwCert], now);
    assert.equal(a.status, "bad-signature");
    assert.match(a.reason, /not signed by gateway "north.example"/);
    const forgedGw = new Uint8Array(w.gwCert);
    forgedGw[forgedGw.length - 3] ^= 0x40;
    assert.equal(status(w, forgedGw, [], now).status, "bad-signature");
    assert.equal(status(w, dev, [forgedGw], now).status, "bad-signature", "a device under a forged gateway certificate");
    // another CA: another fleet's gateway, and a device certificate from a gateway outside the chain
    const other = Fleet.create(otherDir, "rival", T0);
    const rivalGw = other.issueGateway("north.example", { signingKey: w.gwSigning.publicKey, encryptionKey: w.gwEnc.publicKey }, T0);
    a = status(w, rivalGw, [], now);
    assert.equal(a.status, "unknown-issuer");
    assert.match(a.reason, /fleet "rival"/);
    assert.equal(status(w, dev, [rivalGw], now).status, "unknown-issuer");
    assert.equal(status(w, deviceCert(w, "x", T0, T0 + 600, w.gwSigning.seed, "south.example"), [w.gwCert], now).status, "unknown-issuer");
    // expired: the device's certificate, or its gateway's
    a = status(w, deviceCert(w, "old", T0 - 100, T0), [w.gwCert], now);
    assert.equal(a.status, "expired");
    assert.equal(status(w, w.gwCert, [], T0 + 1000).status, "expired");
    assert.equal(status(w, dev, [w.gwCert], T0 + 1000).status, "expired");
    assert.equal(status(w, deviceCert(w, "early", T0 + 50, T0 + 600), [w.gwCert], now).status, "not-yet-valid");
    // malformed
    assert.equal(status(w, Uint8Array.of(1, 2, 3), [], now).status, "malformed");
    // revoked device (by name, by certificate id) and revoked gateway (and what it issued)
    w.verifier.updateRevocationList(w.fleet.revoke({ devices: ["lamp@north.example"] }, now));
    a = status(w, dev, [w.gwCert], now);
    assert.equal(a.status, "revoked");
    assert.match(a.reason, /device "lamp@north.example" is revoked \(list serial 2\)/);
    const fan = deviceCert(w, "fan");
    assert.equal(status(w, fan, [w.gwCert], now).status, "good");
    w.verifier.updateRevocationList(w.fleet.revoke({ certIds: [toHex(new Uint8Array(16).fill(3))] }, now));
    assert.equal(status(w, fan, [w.gwCert], now).status, "revoked", "fan's cti is 03.. (3 letters)");
    w.verifier.updateRevocationList(w.fleet.revoke({ gateways: ["north.example"] }, now));
    a = status(w, w.gwCert, [], now);
    assert.equal(a.status, "revoked");
    assert.match(a.reason, /gateway "north.example" is revoked/);
    a = status(w, deviceCert(w, "door"), [w.gwCert], now);
    assert.equal(a.status, "revoked");
    assert.match(a.reason, /issuing gateway "north.example"/);
    // no list, and a stale list: the verifier cannot say good
    const fresh = new Verifier({ anchor: w.fleet.anchor, key: w.verifierKey, verifierId: "v" });
    assert.equal(fresh.check(w.gwCert, [], now).status, "revocation-unknown");
    const w2 = world();
    assert.equal(w2.verifier.check(w2.gwCert, [], T0 + 86400).status, "expired");
    const longCert = w2.fleet.issueGateway("east.example", { signingKey: w2.gwSigning.publicKey, encryptionKey: w2.gwEnc.publicKey }, T0, 10 ** 6);
    a = w2.verifier.check(longCert, [], T0 + 86400);
    assert.equal(a.status, "revocation-unknown");
    assert.match(a.reason, /stale/);
    rmSync(w2.dir, { recursive: true, force: true });
  } finally {
    rmSync(w.dir, { recursive: true, force: true });
    rmSync(otherDir, { recursive: true, force: true });
  }
});

test("verifier keeps its list when handed a forged, foreign or older one", () => {
  const w = world();
  try {
    w.verifier.updateRevocationList(w.fleet.revoke({}, T0 + 1));
    const held = w.verifier.revocationSerial;
    const forged = new Uint8Array(w.fleet.signedList());
    forged[forged.length - 1] ^= 1;
    assert.throws(() => w.verifier.updateRevocationList(forged), (e: unknown) => e instanceof FleetError && e.code === "bad-signature");
    assert.throws(() => w.verifier.updateRevocationList(w.fleet.signedList()), (e: unknown) => e instanceof FleetError && e.code === "rollback");
    assert.equal(w.verifier.revocationSerial, held);
  } finally {
    rmSync(w.dir, { recursive: true, force: true });
  }
});

test("signed answers: verify under the verifier's key only, bound to the certificate asked about", () => {
  const w = world();
  try {
    const signed = w.verifier.answer(w.gwCert, [], T0 + 1);
    const a = verifyAnswer(signed, w.verifierKey.publicKey);
    assert.equal(a.status, "good");
    assert.equal(toHex(a.certHash), toHex(certificateHash(w.gwCert)));
    assert.equal(a.verifierId, "verifier.acme");
    assert.throws(() => verifyAnswer(signed, generateEd25519().publicKey), (e: unknown) => e instanceof AnswerError && /not signed by the verifier/.test(e.message));
    const t = new Uint8Array(signed);
    t[20] ^= 1;
    assert.throws(() => verifyAnswer(t, w.verifierKey.publicKey), AnswerError);
  } finally {
    rmSync(w.dir, { recursive: true, force: true });
  }
});

test("CertificateChecker caches good answers until validUntil and nothing else; a bad answer leaves the cache unchanged", async () => {
  const w = world();
  try {
    let calls = 0;
    const source: AnswerSource = async (c, ch, now) => {
      calls++;
      return w.verifier.answer(c, ch, now);
    };
    const checker = new CertificateChecker({ source, verifierPublicKey: w.verifierKey.publicKey });
    assert.equal((await checker.check(w.gwCert, [], T0 + 1)).status, "good");
    assert.equal((await checker.check(w.gwCert, [], T0 + 200)).status, "good");
    assert.equal(calls, 1, "the second check within validUntil came from the cache");
    assert.equal(checker.size, 1);
    await checker.check(w.gwCert, [], T0 + 301); // validUntil was T0 + 301: asked again
    assert.equal(calls, 2);
    // Rejections are answered but never cached.
    const forged = deviceCert(w, "lamp", T0, T0 + 600, generateEd25519().seed);
    for (let i = 0; i < 2; i++) assert.equal((await checker.check(forged, [w.gwCert], T0 + 302)).status, "bad-signature");
    assert.equal(calls, 4);
    assert.equal(checker.size, 1, "rejected certificates leave the cache as it was");
    // A source that answers about another certificate, or with another key, or from another time.
    const lying = new CertificateChecker({ source: async (_c, ch, now) => w.verifier.answer(w.gwCert, ch, now), verifierPublicKey: w.verifierKey.publicKey });
    await assert.rejects(lying.check(deviceCert(w, "fan"), [w.gwCert], T0 + 1), /answered about another certificate/);
    assert.equal(lying.size, 0);
    const impostor = generateEd25519();
    const wrongKey = new CertificateChecker({ source: async (c, ch, now) => signAnswer(w.verifier.check(c, ch, now), impostor.seed), verifierPublicKey: w.verifierKey.publicKey });
    await assert.rejects(wrongKey.check(w.gwCert, [], T0 + 1), /not signed by the verifier/);
    assert.equal(wrongKey.size, 0);
    const old = new CertificateChecker({ source: async (c, ch) => w.verifier.answer(c, ch, T0 + 1), verifierPublicKey: w.verifierKey.publicKey });
    await assert.rejects(old.check(w.gwCert, [], T0 + 250), /too far from now/);
    assert.equal(old.size, 0);
    // Bounded: the oldest answer goes first.
    const small = new CertificateChecker({ source: localSource(w.verifier), verifierPublicKey: w.verifierKey.publicKey, maxEntries: 2 });
    for (const n of ["a", "b", "c"]) await small.check(deviceCert(w, n), [w.gwCert], T0 + 1);
    assert.equal(small.size, 2);
  } finally {
    rmSync(w.dir, { recursive: true, force: true });
  }
});

test("CertificateChecker with minSerial: an answer from an older list than the one held is asked again, then refused", async () => {
  const w = world();
  try {
    let calls = 0;
    const source: AnswerSource = async (c, ch, now) => {
      calls++;
      return w.verifier.answer(c, ch, now);
    };
    let held = 2; // the asker took serial 2; the verifier still holds serial 1
    const checker = new CertificateChecker({ source, verifierPublicKey: w.verifierKey.publicKey, minSerial: () => held, staleRetries: 2, staleRetryMs: 5 });
    await assert.rejects(checker.check(w.gwCert, [], T0 + 1), /revocation list serial 1, older than the one held here \(2\)/);
    assert.equal(calls, 3, "asked three times");
    assert.equal(checker.size, 0, "nothing cached");
    // The verifier catches up (after its first, stale answer) while the asker waits: the fresh answer is taken.
    calls = 0;
    const catchingUp: AnswerSource = async (c, ch, now) => {
      const answer = await source(c, ch, now);
      if (calls === 1) w.verifier.updateRevocationList(w.fleet.revoke({}, T0));
      return answer;
    };
    const patient = new CertificateChecker({ source: catchingUp, verifierPublicKey: w.verifierKey.publicKey, minSerial: () => held, staleRetries: 5, staleRetryMs: 5 });
    const a = await patient.check(w.gwCert, [], T0 + 1);
    assert.deepEqual([a.status, a.revocationSerial], ["good", 2]);
    assert.equal(calls, 2, "the stale answer, then the fresh one");
    held = 0;
    assert.equal((await checker.check(w.gwCert, [], T0 + 1)).status, "good", "no minimum, no retry");
  } finally {
    rmSync(w.dir, { recursive: true, force: true });
  }
});

// ---------------------------------------------------------------------------------------------------
// a gateway's credentials

test("a lone gateway creates a development fleet on first start, says so, and reuses it afterwards", () => {
  const dataDir = tmp();
  try {
    const first = loadGatewayCredentials(dataDir, "solo.local", T0, true);
    assert.equal(first.devFleetCreated, true);
    assert.ok(existsSync(join(dataDir, DEV_FLEET_DIR, CA_KEY_FILE)));
    assert.equal(statSync(join(dataDir, "gateway.x25519")).mode & 0o777, 0o600);
    const claims = verifyGatewayCertificateSignature(first.credentials.certificate, first.credentials.anchor.caPublicKey);
    assert.equal(claims.sub, "solo.local");
    assert.equal(toHex(claims.signingKey), toHex(first.credentials.signing.publicKey));
    const again = loadGatewayCredentials(dataDir, "solo.local", T0 + 5, true);
    assert.equal(again.devFleetCreated, false);
    assert.equal(toHex(again.credentials.certificate), toHex(first.credentials.certificate));
    assert.throws(() => loadGatewayCredentials(dataDir, "other.local", T0, true), /is for gateway "solo.local"/);
    const bare = tmp();
    assert.throws(() => loadGatewayCredentials(bare, "x.local", T0, false), (e: unknown) => e instanceof FleetError && e.code === "missing");
    assert.ok(!existsSync(join(bare, DEV_FLEET_DIR)), "without allowDevFleet nothing is created");
    rmSync(bare, { recursive: true, force: true });
  } finally {
    rmSync(dataDir, { recursive: true, force: true });
  }
});

// ---------------------------------------------------------------------------------------------------
// the CLI

async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const log = console.log;
  const error = console.error;
  console.log = (...a: unknown[]) => void out.push(a.join(" "));
  console.error = (...a: unknown[]) => void err.push(a.join(" "));
  try {
    const code = await main(["fleet", ...argv]);
    return { code, out: out.join("\n"), err: err.join("\n") };
  } finally {
    console.log = log;
    console.error = error;
  }
}

test("keyproxy fleet: create, issue-gateway, revoke-device, revoke-gateway, refresh, show, with help and clear errors", async () => {
  const dir = join(tmp(), "fleet");
  const gwDir = tmp();
  try {
    assert.equal((await run(["--help"])).code, 0);
    for (const sub of ["create", "issue-gateway", "revoke-device", "revoke-gateway", "refresh", "show"]) {
      const r = await run([sub, "--help"]);
      assert.equal(r.code, 0);
      assert.match(r.out, new RegExp(`keyproxy fleet ${sub}`));
    }
    let r = await run(["show", "--fleet-dir", dir]);
    assert.equal(r.code, 2);
    assert.match(r.err, /no fleet in/);
    r = await run(["create", "--fleet-dir", dir]);
    assert.deepEqual([r.code, /--id <fleet-id> is required/.test(r.err)], [2, true]);
    r = await run(["create", "--fleet-dir", dir, "--id", "acme"]);
    assert.equal(r.code, 0, r.err);
    const seed = readFileSync(join(dir, CA_KEY_FILE), "utf8").trim();
    assert.ok(!r.out.includes(seed), "the CA key is never printed");
    r = await run(["create", "--fleet-dir", dir, "--id", "acme"]);
    assert.equal(r.code, 1);
    assert.match(r.err, /already holds a fleet/);
    r = await run(["issue-gateway", "--fleet-dir", dir, "--id", "north.example", "--data-dir", gwDir]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /issued gateway certificate for "north.example"/);
    const creds = loadGatewayCredentials(gwDir, "north.example", Math.floor(Date.now() / 1000), false);
    assert.equal(creds.devFleetCreated, false);
    const remote = generateX25519();
    const remoteSign = generateEd25519();
    const out = join(gwDir, "south.cwt");
    r = await run(["issue-gateway", "--fleet-dir", dir, "--id", "south.example", "--signing-key", toHex(remoteSign.publicKey), "--encryption-key", "zz", "--out", out]);
    assert.deepEqual([r.code, /--encryption-key wants a 32-byte public key/.test(r.err)], [2, true]);
    r = await run(["issue-gateway", "--fleet-dir", dir, "--id", "south.example", "--signing-key", toHex(remoteSign.publicKey), "--encryption-key", toHex(remote.publicKey), "--out", out]);
    assert.equal(r.code, 0, r.err);
    assert.equal(readGatewayCertificateUnverified(new Uint8Array(readFileSync(out))).sub, "south.example");
    r = await run(["revoke-device", "--fleet-dir", dir]);
    assert.deepEqual([r.code, /exactly one of --name/.test(r.err)], [2, true]);
    r = await run(["revoke-device", "--fleet-dir", dir, "--name", "lamp"]);
    assert.equal(r.code, 1);
    assert.match(r.err, /not a device name/);
    r = await run(["revoke-device", "--fleet-dir", dir, "--name", "lamp@north.example"]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /serial 2/);
    r = await run(["revoke-gateway", "--fleet-dir", dir, "--id", "south.example"]);
    assert.equal(r.code, 0, r.err);
    r = await run(["refresh", "--fleet-dir", dir]);
    assert.equal(r.code, 0, r.err);
    r = await run(["show", "--fleet-dir", dir]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /fleet "acme"/);
    assert.match(r.out, /serial 4/);
    assert.match(r.out, /revoked devices: lamp@north.example/);
    assert.match(r.out, /revoked gateways: south.example/);
    assert.match(r.out, /north.example/);
    const list = verifyRevocationList(new Uint8Array(readFileSync(join(dir, REVOCATION_FILE))), "acme", Fleet.open(dir).anchor.caPublicKey);
    assert.equal(list.serial, 4);
    // Publishing: usage errors change nothing; a broker that cannot be reached leaves the list signed
    // and says it was not published.
    r = await run(["publish", "--fleet-dir", dir]);
    assert.deepEqual([r.code, /--mqtt <url> is required/.test(r.err)], [2, true]);
    r = await run(["publish", "--fleet-dir", dir, "--mqtt", "not-a-url"]);
    assert.deepEqual([r.code, /--mqtt wants a broker URL/.test(r.err)], [2, true]);
    r = await run(["show", "--fleet-dir", dir, "--mqtt", "mqtt://127.0.0.1:1"]);
    assert.deepEqual([r.code, /--mqtt is for revoke-device, revoke-gateway, refresh and publish/.test(r.err)], [2, true]);
    r = await run(["refresh", "--fleet-dir", dir, "--mqtt", "mqtt://127.0.0.1:1"]);
    assert.equal(r.code, 1);
    assert.match(r.err, /signed but NOT published/);
    assert.equal(Fleet.open(dir).currentList().serial, 5, "the list was signed before the publication failed");
    r = await run(["issue-gateway", "--fleet-dir", dir, "--id", "south.example", "--data-dir", tmp()]);
    assert.equal(r.code, 1);
    assert.match(r.err, /revoked in this fleet/);
    r = await run(["frobnicate"]);
    assert.deepEqual([r.code, /unknown subcommand "frobnicate"/.test(r.err)], [2, true]);
    assert.equal(typeof fleetCommand, "function");
  } finally {
    rmSync(dir, { recursive: true, force: true });
    rmSync(gwDir, { recursive: true, force: true });
  }
});
