// The fleet's trust material at its edges (gateway/fleet/fleet.ts): names, X25519's refusals, gateway
// certificates and revocation lists with every claim or entry of the wrong kind (as the CA would never
// sign them, but a CA key in the wrong hands or a bug could), and the files of a fleet and a gateway
// when they are missing, altered or mismatched. Each refusal with its code and exact text. Written for
// the mutants that survived `npm run mutation -- gateway/fleet/trust` (docs/MUTATION.md).

import { after, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { toHex } from "../firmware/bytes.ts";
import { generateEd25519 } from "../gateway/crypto/ed25519.ts";
import { encode } from "../gateway/encoding/cbor.ts";
import { decodeDeterministic, parseSign1, signSign1 } from "../gateway/encoding/cose.ts";
import { KEY_FILE, loadOrCreateGatewayKey } from "../gateway/fleet/identity.ts";
import {
  acceptRevocationList,
  DEV_FLEET_WARNING,
  Fleet,
  FleetError,
  gatewayPublicKeys,
  generateX25519,
  installGatewayCertificate,
  isDeviceName,
  isFleetId,
  isGatewayId,
  issueGatewayCertificate,
  loadGatewayCredentials,
  loadOrCreateEncryptionKey,
  readGatewayCertificateUnverified,
  readRevocationListUnverified,
  readTrustAnchor,
  signRevocationList,
  verifyGatewayCertificateSignature,
  verifyRevocationList,
  x25519SharedSecret,
  type GatewayCertClaims,
  type RevocationList,
} from "../gateway/fleet/fleet.ts";

const T0 = 1_800_000_000;
const dirs: string[] = [];
after(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });
function fresh(): string {
  const d = mkdtempSync(join(tmpdir(), "kp-fleet-edges-"));
  dirs.push(d);
  return d;
}

/** fn throws a FleetError with this code and exactly this message (or one matching it). */
function refused(fn: () => unknown, code: string, message: string | RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof FleetError, `a FleetError, not ${String(e)}`);
    assert.equal(e.name, "FleetError");
    assert.equal(e.code, code);
    if (typeof message === "string") assert.equal(e.message, message);
    else assert.match(e.message, message);
    return true;
  });
}

// ---------------------------------------------------------------------------------------------------
// names

test("names: ids are whole-string matches, of strings only, within their lengths", () => {
  assert.equal(isGatewayId(`${"a".repeat(63)}.${"b".repeat(63)}.${"c".repeat(63)}.${"d".repeat(61)}`), true, "253 characters");
  assert.equal(isGatewayId(`${"a".repeat(63)}.${"b".repeat(63)}.${"c".repeat(63)}.${"d".repeat(62)}`), false, "254 characters");
  for (const notString of [["a.example"], 5, null, undefined, { length: 1 }]) {
    assert.equal(isGatewayId(notString), false, String(notString));
    assert.equal(isFleetId(notString), false, String(notString));
    assert.equal(isDeviceName(notString), false, String(notString));
  }
  for (const ok of ["acme", "a", "A.b_c-9", "x".repeat(64)]) assert.equal(isFleetId(ok), true, ok);
  for (const bad of ["", "x".repeat(65), "bad id", "acme!", "!acme", "ac/me", "acme\n"]) assert.equal(isFleetId(bad), false, JSON.stringify(bad));
  for (const ok of ["lamp@a.example", `${"n".repeat(64)}@b.example`, "a.b_c-1@x"]) assert.equal(isDeviceName(ok), true, ok);
  for (const bad of ["lamp", "@a.example", "x y@a.example", `${"n".repeat(65)}@a.example`, "lamp@", "lamp@a/b", "lamp@interlink", "la!mp@a.example"]) assert.equal(isDeviceName(bad), false, JSON.stringify(bad));
});

// ---------------------------------------------------------------------------------------------------
// X25519

test("X25519 refuses keys of the wrong size by type, and a low-order public key as malformed", () => {
  const a = generateX25519();
  assert.throws(() => x25519SharedSecret(new Uint8Array(31), a.publicKey), { name: "TypeError", message: "X25519 secret key must be 32 bytes" });
  assert.throws(() => x25519SharedSecret("k".repeat(32) as unknown as Uint8Array, a.publicKey), { name: "TypeError", message: "X25519 secret key must be 32 bytes" });
  assert.throws(() => x25519SharedSecret(a.secretKey, new Uint8Array(33)), { name: "TypeError", message: "X25519 public key must be 32 bytes" });
  assert.throws(() => x25519SharedSecret(a.secretKey, [...a.publicKey] as unknown as Uint8Array), { name: "TypeError", message: "X25519 public key must be 32 bytes" });
  // Points of small order (RFC 7748 §6.1; the list libsodium refuses): 0, 1, and a point of order 8.
  const order8 = Uint8Array.from(Buffer.from("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800", "hex"));
  for (const low of [new Uint8Array(32), Uint8Array.of(1, ...new Uint8Array(31)), order8]) {
    refused(() => x25519SharedSecret(a.secretKey, low), "malformed", "X25519 public key is of low order (shared secret would be zero)");
  }
});

// ---------------------------------------------------------------------------------------------------
// gateway certificates

function claims(over: Partial<GatewayCertClaims> = {}): GatewayCertClaims {
  return { iss: "acme", sub: "south.example", iat: T0, nbf: T0, exp: T0 + 10, cti: new Uint8Array(16).fill(1), signingKey: new Uint8Array(32).fill(2), encryptionKey: new Uint8Array(32).fill(3), ...over };
}

test("a gateway certificate is not issued with a claim of the wrong kind, nor with exp at or before nbf", () => {
  const ca = generateEd25519();
  assert.ok(issueGatewayCertificate(claims(), ca.seed).length > 0);
  const cases: [Partial<GatewayCertClaims>, string][] = [
    [{ iss: "bad id" }, "gateway certificate iss must be a fleet id (1-64 letters, digits, . _ -)"],
    [{ sub: "a/b" }, "gateway certificate sub must be a gateway id (a domain name)"],
    [{ iat: -1 }, "gateway certificate iat must be whole seconds"],
    [{ nbf: 1.5 }, "gateway certificate nbf must be whole seconds"],
    [{ exp: "1" as unknown as number }, "gateway certificate exp must be whole seconds"],
    [{ exp: Number.MAX_SAFE_INTEGER + 2 }, "gateway certificate exp must be whole seconds"],
    [{ cti: new Uint8Array(15) }, "gateway certificate cti must be 16 bytes"],
    [{ cti: "x".repeat(16) as unknown as Uint8Array }, "gateway certificate cti must be 16 bytes"],
    [{ signingKey: new Uint8Array(31) }, "gateway certificate signing key must be 32 bytes"],
    [{ signingKey: "k".repeat(32) as unknown as Uint8Array }, "gateway certificate signing key must be 32 bytes"],
    [{ encryptionKey: new Uint8Array(33) }, "gateway certificate encryption key must be 32 bytes"],
    [{ encryptionKey: "k".repeat(32) as unknown as Uint8Array }, "gateway certificate encryption key must be 32 bytes"],
    [{ exp: T0 }, "gateway certificate exp must be after nbf"],
    [{ exp: T0 - 1 }, "gateway certificate exp must be after nbf"],
  ];
  for (const [over, message] of cases) refused(() => issueGatewayCertificate(claims(over), ca.seed), "malformed", message);
  // The largest NumericDate is still one.
  assert.equal(readGatewayCertificateUnverified(issueGatewayCertificate(claims({ exp: Number.MAX_SAFE_INTEGER }), ca.seed)).exp, Number.MAX_SAFE_INTEGER);
  assert.equal(readGatewayCertificateUnverified(issueGatewayCertificate(claims({ iat: 0, nbf: 0 }), ca.seed)).nbf, 0);
});

/** A CA-signed gateway certificate over any claims map (as a CA would never sign it). */
function signedClaims(m: unknown, caSeed: Uint8Array, tagged = true): Uint8Array {
  const s = signSign1(encode(m), caSeed);
  return tagged ? Uint8Array.of(0xd8, 0x3d, ...s) : s;
}

test("a gateway certificate whose signed claims are of the wrong kind is refused as malformed, whoever signed it", () => {
  const ca = generateEd25519();
  const good = issueGatewayCertificate(claims(), ca.seed);
  const payload = parseSign1(good.subarray(2)).payload;
  assert.deepEqual(verifyGatewayCertificateSignature(good.subarray(2), ca.publicKey), verifyGatewayCertificateSignature(good, ca.publicKey), "with or without the CWT tag");
  refused(() => verifyGatewayCertificateSignature(signedClaims([1, 2], ca.seed), ca.publicKey), "malformed", "gateway certificate claims must be a CBOR map");
  refused(() => verifyGatewayCertificateSignature(signedClaims(new Map([[1, "acme"]]), ca.seed), ca.publicKey), "malformed", "gateway certificate cnf (8) must be a map");
  assert.throws(() => readGatewayCertificateUnverified(Uint8Array.of(0xd2, ...encode([encode(new Map([[1, -8]])), new Map(), Uint8Array.of(0xff), new Uint8Array(64)]))),
    (e: unknown) => e instanceof FleetError && e.code === "malformed" && e.message === "gateway certificate claims is not valid CBOR" && e.cause !== undefined);
  refused(() => readGatewayCertificateUnverified("cert" as unknown as Uint8Array), "malformed", "certificate must be given as bytes");
  // The keys inside cnf and -65601 are read as COSE_Keys, and say which one is wrong.
  const m = new Map<number, unknown>([...(decodeMap(payload))]);
  m.set(8, new Map([[1, new Map<number, unknown>([[1, 1], [3, -8], [-1, 6], [-2, new Uint8Array(31)]])]]));
  refused(() => verifyGatewayCertificateSignature(signedClaims(m, ca.seed), ca.publicKey), "malformed", /gateway certificate signing key \(cnf\)/);
  const m2 = new Map<number, unknown>([...(decodeMap(payload))]);
  m2.set(-65601, new Map<number, unknown>([[1, 1], [-1, 6], [-2, new Uint8Array(32)]]));
  refused(() => verifyGatewayCertificateSignature(signedClaims(m2, ca.seed), ca.publicKey), "malformed", /gateway certificate encryption key \(-65601\)/);
});

function decodeMap(b: Uint8Array): Map<number, unknown> {
  return decodeDeterministic(b, "claims") as Map<number, unknown>;
}

test("a gateway certificate signed by another key is bad-signature; one under another alg is malformed; each keeps its cause", () => {
  const ca = generateEd25519();
  const cert = issueGatewayCertificate(claims(), ca.seed);
  assert.throws(() => verifyGatewayCertificateSignature(cert, generateEd25519().publicKey), (e: unknown) => e instanceof FleetError && e.code === "bad-signature" && (e.cause as { code?: string }).code === "bad-signature");
  const p = parseSign1(cert.subarray(2));
  const es256 = Uint8Array.of(0xd2, ...encode([encode(new Map([[1, -7]])), new Map(), p.payload, p.signature]));
  assert.throws(() => verifyGatewayCertificateSignature(es256, ca.publicKey), (e: unknown) => e instanceof FleetError && e.code === "malformed" && e.message === "COSE_Sign1 alg -7 is not accepted; only EdDSA (-8)" && (e.cause as { code?: string }).code === "bad-alg");
  assert.equal(readGatewayCertificateUnverified(es256).sub, "south.example", "read for display, unverified");
});

// ---------------------------------------------------------------------------------------------------
// revocation lists

function list(over: Partial<RevocationList> = {}): RevocationList {
  return { fleetId: "acme", serial: 1, issuedAt: T0, nextUpdate: T0 + 60, certIds: [], devices: [], gateways: [], ...over };
}

test("a revocation list is not signed with an entry or field of the wrong kind", () => {
  const ca = generateEd25519();
  const cases: [Partial<RevocationList>, string][] = [
    [{ fleetId: "bad id" }, "revocation list fleet id is not a fleet id"],
    [{ serial: 0 }, "revocation list serial must be a positive whole number"],
    [{ serial: 1.5 }, "revocation list serial must be a positive whole number"],
    [{ serial: 2 ** 53 }, "revocation list serial must be a positive whole number"],
    [{ issuedAt: -1 }, "revocation list times must be whole seconds"],
    [{ nextUpdate: 0.5 }, "revocation list times must be whole seconds"],
    [{ nextUpdate: T0 }, "revocation list nextUpdate must be after issuedAt"],
    [{ nextUpdate: T0 - 1 }, "revocation list nextUpdate must be after issuedAt"],
    [{ certIds: ["abc"] }, "revocation list certificate ids must be lowercase hex"],
    [{ certIds: ["AB"] }, "revocation list certificate ids must be lowercase hex"],
    [{ certIds: ["zz"] }, "revocation list certificate ids must be lowercase hex"],
    [{ certIds: ["a"] }, "revocation list certificate ids must be lowercase hex"],
    [{ certIds: ["ab".repeat(65)] }, "revocation list certificate ids must be lowercase hex"],
    [{ certIds: ["xab"] }, "revocation list certificate ids must be lowercase hex"],
    [{ certIds: ["abx"] }, "revocation list certificate ids must be lowercase hex"],
    [{ devices: ["lamp"] }, "revocation list devices must be name@domain"],
    [{ gateways: ["a/b"] }, "revocation list gateways must be gateway ids"],
  ];
  for (const [over, message] of cases) refused(() => signRevocationList(list(over), ca.seed), "malformed", message);
  const ok = verifyRevocationList(signRevocationList(list({ certIds: ["ab".repeat(64), "00"], devices: ["b@x.example", "a@x.example", "a@x.example"] }), ca.seed), "acme", ca.publicKey);
  assert.deepEqual(ok.certIds, ["00", "ab".repeat(64)], "sorted");
  assert.deepEqual(ok.devices, ["a@x.example", "b@x.example"], "sorted, each once");
});

test("a revocation list holds at most 100,000 entries, counted across its three kinds", () => {
  const ca = generateEd25519();
  const ids = (n: number) => Array.from({ length: n }, (_, i) => i.toString(16).padStart(8, "0"));
  const names = (n: number) => Array.from({ length: n }, (_, i) => `d${i}@a.example`);
  const gws = (n: number) => Array.from({ length: n }, (_, i) => `g${i}.example`);
  const full = signRevocationList(list({ certIds: ids(40_000), devices: names(40_000), gateways: gws(20_000) }), ca.seed);
  assert.equal(verifyRevocationList(full, "acme", ca.publicKey).gateways.length, 20_000, "100,000: taken");
  refused(() => signRevocationList(list({ certIds: ids(40_000), devices: names(40_000), gateways: gws(20_001) }), ca.seed), "malformed", "revocation list holds more than 100000 entries");
});

test("a revocation list whose signed payload is of the wrong kind is refused as malformed; another fleet's is unknown-issuer; an older serial is a rollback", () => {
  const ca = generateEd25519();
  const signed = (m: unknown) => signSign1(encode(m), ca.seed);
  const base = (): Map<number, unknown> => new Map<number, unknown>([[0, "KP revocation list"], [1, "acme"], [2, 1], [3, T0], [4, T0 + 60], [5, []], [6, []], [7, []]]);
  assert.equal(verifyRevocationList(signed(base()), "acme", ca.publicKey).serial, 1);
  const wrong = (k: number, v: unknown) => { const m = base(); m.set(k, v); return signed(m); };
  refused(() => verifyRevocationList(signed([1]), "acme", ca.publicKey), "malformed", "not a keyproxy revocation list");
  refused(() => verifyRevocationList(wrong(0, "KP revocation lists"), "acme", ca.publicKey), "malformed", "not a keyproxy revocation list");
  refused(() => verifyRevocationList(wrong(5, "00"), "acme", ca.publicKey), "malformed", "revocation list certificate ids must be byte strings");
  refused(() => verifyRevocationList(wrong(5, ["00"]), "acme", ca.publicKey), "malformed", "revocation list certificate ids must be byte strings");
  refused(() => verifyRevocationList(wrong(6, "a@b.example"), "acme", ca.publicKey), "malformed", "revocation list devices and gateways must be arrays");
  refused(() => verifyRevocationList(wrong(7, "b.example"), "acme", ca.publicKey), "malformed", "revocation list devices and gateways must be arrays");
  refused(() => verifyRevocationList(wrong(2, 0), "acme", ca.publicKey), "malformed", "revocation list serial must be a positive whole number");
  refused(() => verifyRevocationList(wrong(7, [5]), "acme", ca.publicKey), "malformed", "revocation list gateways must be gateway ids");
  assert.throws(() => verifyRevocationList(signSign1(Uint8Array.of(0xa1, 0x01), ca.seed), "acme", ca.publicKey),
    (e: unknown) => e instanceof FleetError && e.code === "malformed" && e.message === "revocation list is not valid CBOR" && e.cause !== undefined);
  refused(() => verifyRevocationList(signed(base()), "other", ca.publicKey), "unknown-issuer", 'revocation list is for fleet "acme", not "other"');
  refused(() => verifyRevocationList(signed(base()), "acme", generateEd25519().publicKey), "bad-signature", /does not verify/);
  refused(() => readRevocationListUnverified(Uint8Array.of(1, 2, 3)), "malformed", /COSE_Sign1/);

  const held = verifyRevocationList(signed(base()), "acme", ca.publicKey);
  refused(() => acceptRevocationList(held, signed(base()), "acme", ca.publicKey), "rollback", "revocation list serial 1 is not above the held serial 1");
  assert.equal(acceptRevocationList(held, wrong(2, 2), "acme", ca.publicKey).serial, 2);
  assert.equal(acceptRevocationList(undefined, signed(base()), "acme", ca.publicKey).serial, 1);
});

// ---------------------------------------------------------------------------------------------------
// the fleet's files

test("a fleet is created only with a valid id, in a directory holding no fleet, and its files are what the docs say", () => {
  refused(() => Fleet.create(join(fresh(), "f"), "bad id", T0), "malformed", 'fleet id "bad id" must be 1-64 letters, digits, dots, dashes or underscores');
  for (const existing of ["ca.key", "fleet.json"]) {
    const dir = join(fresh(), "f");
    mkdirSync(dir);
    writeFileSync(join(dir, existing), "x");
    refused(() => Fleet.create(dir, "acme", T0), "exists", `${dir} already holds a fleet; refusing to overwrite it`);
  }
  const dir = join(fresh(), "f");
  const fleet = Fleet.create(dir, "acme", T0);
  assert.match(readFileSync(join(dir, "ca.key"), "utf8"), /^[0-9a-f]{64}\n$/);
  assert.deepEqual(JSON.parse(readFileSync(join(dir, "fleet.json"), "utf8")), { fleetId: "acme", caPublicKey: toHex(fleet.anchor.caPublicKey) });
  assert.ok(readFileSync(join(dir, "fleet.json"), "utf8").endsWith("}\n"));
  assert.deepEqual(fleet.issuedGateways(), []);
});

test("a fleet's files missing, altered or mismatched: each refused with the file and the reason", () => {
  const dir = join(fresh(), "f");
  const fleet = Fleet.create(dir, "acme", T0);
  const anchorFile = join(dir, "fleet.json");
  const anchorText = readFileSync(anchorFile, "utf8");
  const keyFile = join(dir, "ca.key");
  const keyText = readFileSync(keyFile, "utf8");

  for (const [text, code, message] of [
    ["{", "malformed", `${anchorFile} is not JSON`],
    [JSON.stringify({ fleetId: "bad id", caPublicKey: toHex(fleet.anchor.caPublicKey) }), "malformed", `${anchorFile} must hold a fleetId and a 32-byte hex caPublicKey`],
    [JSON.stringify({ fleetId: "acme", caPublicKey: 5 }), "malformed", `${anchorFile} must hold a fleetId and a 32-byte hex caPublicKey`],
    [JSON.stringify({ fleetId: "acme", caPublicKey: "ab".repeat(31) }), "malformed", `${anchorFile} must hold a fleetId and a 32-byte hex caPublicKey`],
    [JSON.stringify({ fleetId: "acme" }), "malformed", `${anchorFile} must hold a fleetId and a 32-byte hex caPublicKey`],
  ] as const) {
    writeFileSync(anchorFile, text);
    refused(() => readTrustAnchor(anchorFile), code, message);
  }
  writeFileSync(anchorFile, anchorText);
  refused(() => readTrustAnchor(join(dir, "none.json")), "missing", `${join(dir, "none.json")} does not exist`);

  for (const text of ["ab".repeat(31), "ab".repeat(33), `x${"ab".repeat(32)}`, `${"ab".repeat(32)}x`, "AB".repeat(31)]) {
    writeFileSync(keyFile, text);
    refused(() => Fleet.open(dir), "malformed", `${keyFile} is not a 32-byte hex key`);
  }
  // The CA's key restored by hand in capitals, without its newline: the same key.
  writeFileSync(keyFile, keyText.trim().toUpperCase());
  assert.deepEqual(Fleet.open(dir).anchor, fleet.anchor);
  writeFileSync(keyFile, `${toHex(generateEd25519().seed)}\n`);
  refused(() => Fleet.open(dir), "malformed", `${keyFile} does not match the CA key in fleet.json`);
  rmSync(keyFile);
  refused(() => Fleet.open(dir), "missing", `${keyFile} does not exist`);
  writeFileSync(keyFile, keyText);
  assert.equal(Fleet.open(dir).fleetId, "acme");
  rmSync(join(dir, "revocation.cose"));
  refused(() => fleet.signedList(), "missing", `${join(dir, "revocation.cose")} does not exist`);
});

test("issuing and revoking: ids, lifetimes and certificate ids of the wrong kind are refused, and a revoked gateway gets no certificate", () => {
  const dir = join(fresh(), "f");
  const fleet = Fleet.create(dir, "acme", T0);
  const keys = { signingKey: generateEd25519().publicKey, encryptionKey: generateX25519().publicKey };
  refused(() => fleet.issueGateway("a/b", keys, T0), "malformed", 'gateway id "a/b" must be a domain name (letters, digits, - _ and dots)');
  for (const lifetime of [0, -1, 1.5]) refused(() => fleet.issueGateway("g.example", keys, T0, lifetime), "malformed", "certificate lifetime must be a positive whole number of seconds");
  assert.equal(readGatewayCertificateUnverified(fleet.issueGateway("g.example", keys, T0, 1)).exp, T0 + 1, "one second is a lifetime");
  refused(() => fleet.revoke({ gateways: ["a/b"] }, T0), "malformed", '"a/b" is not a gateway id');
  refused(() => fleet.revoke({ devices: ["lamp"] }, T0), "malformed", '"lamp" is not a device name (name@domain)');
  for (const id of ["abc", "AB", "ab".repeat(65), "xab", "abx", ""]) refused(() => fleet.revoke({ certIds: [id] }, T0), "malformed", `"${id}" is not a certificate id (lowercase hex)`);
  assert.equal(fleet.currentList().serial, 1, "nothing was signed by the refused revocations");
  fleet.revoke({ certIds: ["ab".repeat(64)], gateways: ["bad.example"] }, T0);
  refused(() => fleet.issueGateway("bad.example", keys, T0), "malformed", 'gateway "bad.example" is revoked in this fleet; it cannot get a certificate');

  writeFileSync(join(dir, "gateways", "notes.txt"), "not a certificate");
  fleet.issueGateway("a.example", keys, T0);
  assert.deepEqual(fleet.issuedGateways().map((g) => g.gatewayId), ["a.example", "g.example"], "by id, sorted, .cwt files only");
  assert.deepEqual(fleet.issuedGateways()[1].certificate, new Uint8Array(readFileSync(join(dir, "gateways", "g.example.cwt"))));
  rmSync(join(dir, "gateways"), { recursive: true });
  assert.deepEqual(fleet.issuedGateways(), []);
});

// ---------------------------------------------------------------------------------------------------
// a gateway's credentials

test("a certificate is installed in a gateway's data directory only if it is from the anchor's fleet and certifies that directory's keys", () => {
  const fleet = Fleet.create(join(fresh(), "f"), "acme", T0);
  const dataDir = join(fresh(), "gw");
  const mine = gatewayPublicKeys(dataDir);
  const theirs = { signingKey: generateEd25519().publicKey, encryptionKey: generateX25519().publicKey };
  refused(() => installGatewayCertificate(dataDir, fleet.issueGateway("south.example", theirs, T0), fleet.anchor), "malformed", `certificate for "south.example" does not certify the keys in ${dataDir}`);
  refused(() => installGatewayCertificate(dataDir, fleet.issueGateway("south.example", { ...mine, encryptionKey: theirs.encryptionKey }, T0), fleet.anchor), "malformed", /does not certify the keys/);
  refused(() => installGatewayCertificate(dataDir, fleet.issueGateway("south.example", { ...mine, signingKey: theirs.signingKey }, T0), fleet.anchor), "malformed", /does not certify the keys/);
  refused(() => installGatewayCertificate(dataDir, fleet.issueGateway("south.example", mine, T0), { fleetId: "other", caPublicKey: fleet.anchor.caPublicKey }), "unknown-issuer", 'certificate is from fleet "acme", not "other"');
  const other = Fleet.create(join(fresh(), "f"), "acme", T0);
  refused(() => installGatewayCertificate(dataDir, other.issueGateway("south.example", mine, T0), fleet.anchor), "bad-signature", /does not verify/);
  const claims = installGatewayCertificate(dataDir, fleet.issueGateway("south.example", mine, T0), fleet.anchor);
  assert.equal(claims.sub, "south.example");
  assert.match(readFileSync(join(dataDir, "gateway.x25519"), "utf8"), /^[0-9a-f]{64}\n$/);
});

test("a gateway's credentials: its certificate must exist, name it and certify its keys; a lone gateway's own fleet is named after it", () => {
  const fleet = Fleet.create(join(fresh(), "f"), "acme", T0);
  const dataDir = join(fresh(), "gw");
  refused(() => loadGatewayCredentials(dataDir, "south.example", T0, false), "missing", `${join(dataDir, "gateway.cwt")} does not exist: issue one with "keyproxy fleet issue-gateway"`);
  installGatewayCertificate(dataDir, fleet.issueGateway("south.example", gatewayPublicKeys(dataDir), T0), fleet.anchor);
  assert.equal(loadGatewayCredentials(dataDir, "south.example", T0, false).devFleetCreated, false);
  refused(() => loadGatewayCredentials(dataDir, "north.example", T0, false), "malformed", `${join(dataDir, "gateway.cwt")} is for gateway "south.example", not "north.example"`);
  // Its encryption key replaced behind its back: the certificate no longer certifies it.
  const encFile = join(dataDir, "gateway.x25519");
  const enc = readFileSync(encFile, "utf8");
  writeFileSync(encFile, `${toHex(generateX25519().secretKey)}\n`);
  refused(() => loadGatewayCredentials(dataDir, "south.example", T0, false), "malformed", `${join(dataDir, "gateway.cwt")} does not certify this gateway's keys`);
  writeFileSync(encFile, "not a key");
  refused(() => loadOrCreateEncryptionKey(dataDir), "malformed", `${encFile} is not a 32-byte hex key`);
  writeFileSync(encFile, enc);
  const keyFile = join(dataDir, "gateway.key");
  writeFileSync(keyFile, `${toHex(generateEd25519().seed)}\n`);
  refused(() => loadGatewayCredentials(dataDir, "south.example", T0, false), "malformed", `${join(dataDir, "gateway.cwt")} does not certify this gateway's keys`);

  const lone = join(fresh(), "lone");
  const longId = `${"l".repeat(63)}.example`;
  const { credentials, devFleetCreated } = loadGatewayCredentials(lone, longId, T0, true);
  assert.equal(devFleetCreated, true);
  assert.equal(credentials.anchor.fleetId, `dev-${longId}`.slice(0, 64), "dev-<id>, cut to a fleet id's 64 characters");
  assert.equal(loadGatewayCredentials(join(fresh(), "lone2"), "a_b.example", T0, true).credentials.anchor.fleetId, "dev-a_b.example");
  assert.match(DEV_FLEET_WARNING, /^NO FLEET CONFIGURED: .*No other gateway trusts it, and its CA key sits beside it in the data directory\. .*`keyproxy fleet create`/);
});

test("the gateway's signing key: made once (hex and a newline, 0600), then read; a file that is not one is refused by name", () => {
  const dataDir = fresh();
  const made = loadOrCreateGatewayKey(dataDir);
  assert.equal(made.created, true);
  const file = join(dataDir, KEY_FILE);
  assert.equal(readFileSync(file, "utf8"), `${toHex(made.key.seed)}\n`);
  const again = loadOrCreateGatewayKey(dataDir);
  assert.equal(again.created, false);
  assert.deepEqual(again.key.publicKey, made.key.publicKey);
  for (const text of ["ab".repeat(31), `x${"ab".repeat(32)}`, `${"ab".repeat(32)}x`, "AB".repeat(33)]) {
    writeFileSync(file, text);
    assert.throws(() => loadOrCreateGatewayKey(dataDir), { message: `${file} is not a 32-byte hex Ed25519 seed; refusing to start` });
  }
  writeFileSync(file, ` ${toHex(made.key.seed).toUpperCase()}\r\n`);
  assert.deepEqual(loadOrCreateGatewayKey(dataDir).key.publicKey, made.key.publicKey, "the same seed in capitals, around other whitespace");
});
