// Fleet trust: one fleet CA key (Ed25519) signs gateway certificates and the revocation list; gateways
// trust each other through it (design.md §2). docs/FLEET.md has the trust model and the file layout.
//
// Gateway certificate: a CWT (RFC 8392) in COSE_Sign1 (RFC 9052), EdDSA, signed by the fleet CA:
//
//   61(18([h'a10127', {}, claims, signature]))
//   claims = { 1 iss: fleet id, 2 sub: gateway id (= its domain), 4 exp, 5 nbf, 6 iat, 7 cti: bstr 16,
//              8 cnf: {1: COSE_Key{1: 1 (OKP), 3: -8, -1: 6 (Ed25519), -2: x}},
//              -65601 kp-enc: COSE_Key{1: 1 (OKP), -1: 4 (X25519), -2: x} }
//
// Two keys, two claims. cnf (RFC 8747) names exactly one proof-of-possession key: the gateway's
// Ed25519 signing key, the same key (<data-dir>/gateway.key) that signs its device certificates, so a
// device certificate chains to the fleet CA through its gateway's certificate. The X25519 key that
// other gateways encrypt to is carried in a private-use claim (-65601, below -65536 as RFC 8392 §9.1
// reserves for private use), as a COSE_Key of its own. Keeping the two keys apart means neither key is
// ever used for both signing and key agreement.
//
// Revocation list: COSE_Sign1 by the fleet CA over
//
//   { 0: "KP revocation list", 1: fleet id, 2: serial (only increases), 3: issued at, 4: next update,
//     5: [revoked certificate ids, bstr, sorted], 6: [revoked devices "name@domain", sorted],
//     7: [revoked gateway ids, sorted] }
//
// NumericDates are whole seconds. Every encoding is deterministic; every error is a FleetError whose
// message describes the shape of the problem, never key bytes.

import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { createPrivateKey, createPublicKey, diffieHellman, generateKeyPairSync, KeyObject, randomBytes } from "node:crypto";
import { fromHex, toHex } from "../../firmware/bytes.ts";
import { takeSecret } from "../crypto/secret-bytes.ts";
import { encode } from "../encoding/cbor.ts";
import { CoseError, decodeDeterministic, parseSign1, readOkpPublicKey, signSign1, verifySign1, CRV_ED25519, CRV_X25519, KEY_ALG, KEY_CRV, KEY_KTY, KEY_X, KTY_OKP, COSE_ALG_EDDSA } from "../encoding/cose.ts";
import { ed25519FromSeed, generateEd25519, keyFingerprint, SecretKeyCache, ED25519_PUBLIC_KEY_LENGTH, type Ed25519KeyPair } from "../crypto/ed25519.ts";
import { createFileDurably, writeFileDurably } from "../files/durable.ts";
import { parseHexKey } from "../files/hex-key.ts";
import { lockFile } from "../files/lock.ts";
import { loadOrCreateGatewayKey } from "./identity.ts";

// ---------------------------------------------------------------------------------------------------
// errors

export type FleetErrorCode =
  | "malformed" // bytes or arguments of the wrong shape
  | "bad-signature" // not signed by the key it claims
  | "unknown-issuer" // issued by another fleet
  | "rollback" // a revocation list older than (or as old as) the one held
  | "exists" // refusing to overwrite fleet files
  | "missing" // a fleet file that should be there is not
  | "busy"; // another process is changing the fleet directory

export class FleetError extends Error {
  readonly code: FleetErrorCode;
  constructor(code: FleetErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "FleetError";
    this.code = code;
  }
}

function malformed(message: string): FleetError {
  return new FleetError("malformed", message);
}

// ---------------------------------------------------------------------------------------------------
// X25519 on node:crypto with raw 32-byte keys (RFC 7748). node:crypto takes no raw keys: a secret is
// wrapped in the fixed PKCS#8 prefix for id-X25519 (1.3.101.110, RFC 8410), a public key in a JWK
// (RFC 8037 OKP; the same key as from its SPKI). Chosen over
// @noble/curves by measurement (bench/curves.ts, docs/FLEET.md): faster on every operation once the
// KeyObjects are kept; wrapping a raw secret per call costs most of that advantage. So (docs/
// BENCHMARKS.md, "Sessions across gateways"): a secret used again (the gateway's own key) is kept as a
// KeyObject (SecretKeyCache, gateway/crypto/ed25519.ts); a key pair generateX25519 made keeps its KeyObject
// for as long as the caller holds the secret array it returned (an ephemeral: used once, then wiped
// and dropped, and never put in the cache); public keys go in and out as JWK, which skips OpenSSL's
// DER decoders and encoders.

export const X25519_KEY_LENGTH = 32;
const X25519_PKCS8_PREFIX = Uint8Array.of(
  0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20,
);

export interface X25519KeyPair {
  /** The 32-byte secret scalar (before clamping, as RFC 7748 keys are stored). Keep it out of logs. */
  secretKey: Uint8Array;
  publicKey: Uint8Array;
}

function isBytes(v: unknown): v is Uint8Array {
  return v instanceof Uint8Array;
}

/** X25519 secrets used again (see SecretKeyCache). */
const x25519Keys = new SecretKeyCache();

/** The KeyObjects of the key pairs generateX25519 made, by the very secret array it returned, with the
 *  fingerprint of the secret it held then: a wiped or altered array no longer matches and is parsed
 *  like any other. An entry goes when its array is garbage-collected. */
const generatedX25519 = new WeakMap<Uint8Array, { key: KeyObject; fingerprint: string }>();

/** Empties the X25519 private-key cache (tests compare the cached path with the uncached one). */
export function clearX25519KeyCache(): void {
  x25519Keys.clear();
}

function x25519PrivateKeyObject(secretKey: Uint8Array): KeyObject {
  if (!isBytes(secretKey) || secretKey.length !== X25519_KEY_LENGTH) throw new TypeError(`X25519 secret key must be ${X25519_KEY_LENGTH} bytes`);
  const generated = generatedX25519.get(secretKey);
  if (generated && generated.fingerprint === keyFingerprint(secretKey)) return generated.key;
  return x25519Keys.get(secretKey, parseX25519PrivateKey);
}

function parseX25519PrivateKey(secretKey: Uint8Array): KeyObject {
  const der = new Uint8Array(X25519_PKCS8_PREFIX.length + X25519_KEY_LENGTH);
  der.set(X25519_PKCS8_PREFIX, 0);
  der.set(secretKey, X25519_PKCS8_PREFIX.length);
  try {
    return createPrivateKey({ key: Buffer.from(der.buffer, der.byteOffset, der.length), format: "der", type: "pkcs8" });
  } finally {
    der.fill(0);
  }
}

/** A public key imported as a JWK (RFC 8037 OKP): the same key as from its SPKI DER, at a tenth of the cost. */
function x25519PublicKeyObject(publicKey: Uint8Array): KeyObject {
  if (!isBytes(publicKey) || publicKey.length !== X25519_KEY_LENGTH) throw new TypeError(`X25519 public key must be ${X25519_KEY_LENGTH} bytes`);
  return createPublicKey({ key: { kty: "OKP", crv: "X25519", x: Buffer.from(publicKey.buffer, publicKey.byteOffset, publicKey.length).toString("base64url") }, format: "jwk" });
}

/** The raw 32 bytes of a public KeyObject (its JWK's x). */
function rawX25519PublicKey(key: KeyObject): Uint8Array {
  const x = Buffer.from(String(key.export({ format: "jwk" }).x), "base64url");
  if (x.length !== X25519_KEY_LENGTH) throw new Error("unexpected X25519 public key length from node:crypto");
  return new Uint8Array(x);
}

export function x25519PublicKey(secretKey: Uint8Array): Uint8Array {
  return rawX25519PublicKey(createPublicKey(x25519PrivateKeyObject(secretKey)));
}

const X25519_SPKI_PREFIX = Uint8Array.of(0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00);

/**
 * A fresh X25519 key pair: the private key as a KeyObject, the public key raw.
 *
 * The public key is encoded by the key-generation job itself, never exported from the KeyObject
 * afterwards. Why: in Node 20 the job's destructor locks the new key's mutex, and exporting a key as
 * JWK holds that mutex while it allocates. A garbage collection during that allocation can collect the
 * finished job, and the thread then waits forever for a mutex it holds itself (docs/FUZZING.md:
 * the exchange fuzz target stopped this way; test/x25519-keygen-deadlock.test.ts makes it happen within seconds).
 */
export function generateX25519KeyObject(): { privateKey: KeyObject; publicKey: Uint8Array } {
  // @types/node types only both-encoded or neither; node:crypto returns the private half as a KeyObject.
  const pair = generateKeyPairSync("x25519", { publicKeyEncoding: { type: "spki", format: "der" } } as {}) as unknown as { privateKey: KeyObject; publicKey: Buffer };
  const { privateKey, publicKey: spki } = pair;
  if (!(privateKey instanceof KeyObject) || !Buffer.isBuffer(spki)) throw new Error("unexpected X25519 key pair from node:crypto");
  const prefixOk = spki.length === X25519_SPKI_PREFIX.length + X25519_KEY_LENGTH && X25519_SPKI_PREFIX.every((b, i) => spki[i] === b);
  if (!prefixOk) throw new Error("unexpected X25519 SubjectPublicKeyInfo from node:crypto");
  return { privateKey, publicKey: new Uint8Array(spki.subarray(X25519_SPKI_PREFIX.length)) };
}

/** A fresh key pair. Made by node:crypto and exported raw; its KeyObject stays with the returned
 *  secret array (generatedX25519), so that using the pair never parses the secret back. */
export function generateX25519(): X25519KeyPair {
  const { privateKey, publicKey } = generateX25519KeyObject();
  const pkcs8 = privateKey.export({ format: "der", type: "pkcs8" });
  if (pkcs8.length !== X25519_PKCS8_PREFIX.length + X25519_KEY_LENGTH) throw new Error("unexpected X25519 PKCS#8 length from node:crypto");
  const secretKey = new Uint8Array(pkcs8.subarray(X25519_PKCS8_PREFIX.length));
  pkcs8.fill(0);
  // The secret leaves as DER (a buffer we can wipe), not as a JWK string (which we could not).
  generatedX25519.set(secretKey, { key: privateKey, fingerprint: keyFingerprint(secretKey) });
  return { secretKey, publicKey };
}

/**
 * The shared secret X25519(secretKey, publicKey). Throws for a low-order public key (the all-zero
 * output RFC 7748 §6.1 tells us to refuse: node:crypto itself fails to derive it).
 */
export function x25519SharedSecret(secretKey: Uint8Array, publicKey: Uint8Array): Uint8Array {
  return x25519Agree(x25519PrivateKeyObject(secretKey), publicKey);
}

/** x25519SharedSecret with the private key as the KeyObject generateX25519KeyObject made (an
 *  ephemeral that never leaves node:crypto). Same refusals. */
export function x25519Agree(privateKey: KeyObject, publicKey: Uint8Array): Uint8Array {
  let out: Buffer;
  try {
    out = diffieHellman({ privateKey, publicKey: x25519PublicKeyObject(publicKey) });
  } catch (e) {
    if (e instanceof TypeError) throw e;
    throw new FleetError("malformed", "X25519 public key is of low order (shared secret would be zero)");
  }
  let zero = 0;
  for (const b of out) zero |= b;
  if (zero === 0) throw new FleetError("malformed", "X25519 public key is of low order (shared secret would be zero)");
  return takeSecret(out); // the caller's to wipe; node:crypto's copy zeroed
}

// ---------------------------------------------------------------------------------------------------
// names

/** A gateway id is its domain: DNS-like labels, usable as one MQTT topic level (no / + # or spaces). */
const GATEWAY_ID_PATTERN = /^[A-Za-z0-9](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*$/;
const FLEET_ID_PATTERN = /^[A-Za-z0-9._-]{1,64}$/;
const DEVICE_NAME_PATTERN = /^[A-Za-z0-9._-]{1,64}@.+$/;

/** Topic levels of keyproxy/v1/ that are not gateways (the interlink's and the fleet's trees). */
const RESERVED_GATEWAY_IDS = new Set(["interlink", "fleet"]);

export function isGatewayId(s: unknown): s is string {
  return typeof s === "string" && s.length <= 253 && GATEWAY_ID_PATTERN.test(s) && !RESERVED_GATEWAY_IDS.has(s);
}

export function isFleetId(s: unknown): s is string {
  return typeof s === "string" && FLEET_ID_PATTERN.test(s);
}

/** "name@domain": how a device is named across the fleet (a device id is unique within its gateway). */
export function isDeviceName(s: unknown): s is string {
  return typeof s === "string" && DEVICE_NAME_PATTERN.test(s) && isGatewayId(s.slice(s.indexOf("@") + 1));
}

export function deviceName(deviceId: string, gatewayId: string): string {
  return `${deviceId}@${gatewayId}`;
}

/** "name@domain" as its two parts, or undefined when s is not a device name. */
export function splitDeviceName(s: string): { name: string; domain: string } | undefined {
  if (!isDeviceName(s)) return undefined;
  const at = s.indexOf("@");
  return { name: s.slice(0, at), domain: s.slice(at + 1) };
}

/** The device id a name means at the gateway gatewayId: a bare id, or "id@gatewayId"; undefined for a
 *  name in another domain (or not a name at all). */
export function localDeviceId(s: string, gatewayId: string): string | undefined {
  if (!s.includes("@")) return s;
  const n = splitDeviceName(s);
  return n && n.domain === gatewayId ? n.name : undefined;
}

// ---------------------------------------------------------------------------------------------------
// gateway certificates

const CWT_TAG_HEAD = Uint8Array.of(0xd8, 0x3d); // tag 61
const CLAIM_ISS = 1;
const CLAIM_SUB = 2;
const CLAIM_EXP = 4;
const CLAIM_NBF = 5;
const CLAIM_IAT = 6;
const CLAIM_CTI = 7;
const CLAIM_CNF = 8;
/** Private-use CWT claim: the gateway's X25519 key-agreement key, as a COSE_Key. */
export const CLAIM_KP_ENCRYPTION_KEY = -65601;
const CNF_COSE_KEY = 1;
export const CERT_ID_LENGTH = 16;
const MAX_NUMERIC_DATE = Number.MAX_SAFE_INTEGER;

export interface GatewayCertClaims {
  /** The fleet id (the issuer). */
  iss: string;
  /** The gateway id, which is its domain. */
  sub: string;
  iat: number;
  nbf: number;
  /** Valid while nbf <= now < exp. */
  exp: number;
  /** Certificate id, 16 random bytes. */
  cti: Uint8Array;
  /** Ed25519: signs interlink envelopes and the gateway's device certificates. */
  signingKey: Uint8Array;
  /** X25519: what other gateways encrypt to. */
  encryptionKey: Uint8Array;
}

function isNumericDate(v: unknown): v is number {
  return typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= MAX_NUMERIC_DATE;
}

function checkGatewayClaims(c: GatewayCertClaims): void {
  if (!isFleetId(c.iss)) throw malformed("gateway certificate iss must be a fleet id (1-64 letters, digits, . _ -)");
  if (!isGatewayId(c.sub)) throw malformed("gateway certificate sub must be a gateway id (a domain name)");
  for (const k of ["iat", "nbf", "exp"] as const) {
    if (!isNumericDate(c[k])) throw malformed(`gateway certificate ${k} must be whole seconds`);
  }
  if (!isBytes(c.cti) || c.cti.length !== CERT_ID_LENGTH) throw malformed(`gateway certificate cti must be ${CERT_ID_LENGTH} bytes`);
  if (!isBytes(c.signingKey) || c.signingKey.length !== ED25519_PUBLIC_KEY_LENGTH) throw malformed("gateway certificate signing key must be 32 bytes");
  if (!isBytes(c.encryptionKey) || c.encryptionKey.length !== X25519_KEY_LENGTH) throw malformed("gateway certificate encryption key must be 32 bytes");
}

function encodeGatewayClaims(c: GatewayCertClaims): Uint8Array {
  // Map keys in deterministic order (RFC 8949 §4.2.1): 1, 2, 4, 5, 6, 7, 8, then -65601.
  return encode(
    new Map<number, unknown>([
      [CLAIM_ISS, c.iss],
      [CLAIM_SUB, c.sub],
      [CLAIM_EXP, c.exp],
      [CLAIM_NBF, c.nbf],
      [CLAIM_IAT, c.iat],
      [CLAIM_CTI, new Uint8Array(c.cti)],
      [CLAIM_CNF, new Map([[CNF_COSE_KEY, new Map<number, unknown>([[KEY_KTY, KTY_OKP], [KEY_ALG, COSE_ALG_EDDSA], [KEY_CRV, CRV_ED25519], [KEY_X, new Uint8Array(c.signingKey)]])]])],
      [CLAIM_KP_ENCRYPTION_KEY, new Map<number, unknown>([[KEY_KTY, KTY_OKP], [KEY_CRV, CRV_X25519], [KEY_X, new Uint8Array(c.encryptionKey)]])],
    ]),
  );
}

function readOkpKey(v: unknown, crv: number, alg: number | undefined, what: string): Uint8Array {
  try {
    return readOkpPublicKey(v, crv, alg, what);
  } catch (e) {
    throw malformed((e as Error).message);
  }
}

function decodeGatewayClaims(payload: Uint8Array): GatewayCertClaims {
  let m: unknown;
  try {
    m = decodeDeterministic(payload, "gateway certificate claims");
  } catch (e) {
    throw new FleetError("malformed", e instanceof Error ? e.message : "gateway certificate claims are not CBOR", { cause: e });
  }
  if (!(m instanceof Map)) throw malformed("gateway certificate claims must be a CBOR map");
  const cnf: unknown = m.get(CLAIM_CNF);
  if (!(cnf instanceof Map)) throw malformed("gateway certificate cnf (8) must be a map");
  const claims: GatewayCertClaims = {
    iss: m.get(CLAIM_ISS) as string,
    sub: m.get(CLAIM_SUB) as string,
    exp: m.get(CLAIM_EXP) as number,
    nbf: m.get(CLAIM_NBF) as number,
    iat: m.get(CLAIM_IAT) as number,
    cti: m.get(CLAIM_CTI) as Uint8Array,
    signingKey: readOkpKey(cnf.get(CNF_COSE_KEY), CRV_ED25519, COSE_ALG_EDDSA, "gateway certificate signing key (cnf)"),
    encryptionKey: readOkpKey(m.get(CLAIM_KP_ENCRYPTION_KEY), CRV_X25519, undefined, `gateway certificate encryption key (${CLAIM_KP_ENCRYPTION_KEY})`),
  };
  checkGatewayClaims(claims);
  return claims;
}

function unwrapCwt(bytes: Uint8Array): Uint8Array {
  if (!isBytes(bytes)) throw malformed("certificate must be given as bytes");
  if (bytes.length >= 2 && bytes[0] === CWT_TAG_HEAD[0] && bytes[1] === CWT_TAG_HEAD[1]) return bytes.subarray(2);
  return bytes;
}

function fromCose(e: unknown): unknown {
  if (e instanceof CoseError) return new FleetError(e.code === "bad-signature" ? "bad-signature" : "malformed", e.message, { cause: e });
  return e;
}

/** Signs a gateway certificate with the fleet CA's seed; returns 61(COSE_Sign1_Tagged). */
export function issueGatewayCertificate(claims: GatewayCertClaims, caSeed: Uint8Array): Uint8Array {
  checkGatewayClaims(claims);
  if (claims.exp <= claims.nbf) throw malformed("gateway certificate exp must be after nbf");
  const signed = signSign1(encodeGatewayClaims(claims), caSeed);
  const out = new Uint8Array(CWT_TAG_HEAD.length + signed.length);
  out.set(CWT_TAG_HEAD, 0);
  out.set(signed, CWT_TAG_HEAD.length);
  return out;
}

/**
 * Checks a gateway certificate's signature against the fleet CA key and returns its claims. It does
 * NOT check the validity window or revocation: that is the verifier's job (gateway/fleet/verifier.ts), which
 * answers with a reason for each. Throws FleetError "malformed" or "bad-signature".
 */
export function verifyGatewayCertificateSignature(bytes: Uint8Array, caPublicKey: Uint8Array): GatewayCertClaims {
  let payload: Uint8Array;
  try {
    payload = verifySign1(unwrapCwt(bytes), caPublicKey).payload;
  } catch (e) {
    throw fromCose(e);
  }
  return decodeGatewayClaims(payload);
}

/** FOR DISPLAY AND ROUTING ONLY: the claims, signature NOT checked. Throws FleetError "malformed". */
export function readGatewayCertificateUnverified(bytes: Uint8Array): GatewayCertClaims {
  let payload: Uint8Array;
  try {
    payload = parseSign1(unwrapCwt(bytes)).payload;
  } catch (e) {
    throw fromCose(e);
  }
  return decodeGatewayClaims(payload);
}

// ---------------------------------------------------------------------------------------------------
// revocation list

const LIST_TYPE = "KP revocation list";
const LIST_TYPE_KEY = 0;
const LIST_FLEET = 1;
const LIST_SERIAL = 2;
const LIST_ISSUED = 3;
const LIST_NEXT_UPDATE = 4;
const LIST_CERT_IDS = 5;
const LIST_DEVICES = 6;
const LIST_GATEWAYS = 7;
const MAX_LIST_ENTRIES = 100_000;

export interface RevocationList {
  fleetId: string;
  /** Strictly increasing from one list to the next: a verifier never goes back to a lower one. */
  serial: number;
  issuedAt: number;
  /** After this instant the list is stale and verifiers stop answering "good". */
  nextUpdate: number;
  /** Hex of revoked certificate ids (cti), device or gateway certificates alike. */
  certIds: string[];
  /** Revoked devices, "name@domain": every certificate of that device, past and future. */
  devices: string[];
  /** Revoked gateways: every certificate of that gateway, and every device certificate it issued. */
  gateways: string[];
}

function sortedUnique(xs: string[]): string[] {
  return [...new Set(xs)].sort();
}

function checkList(l: RevocationList): void {
  if (!isFleetId(l.fleetId)) throw malformed("revocation list fleet id is not a fleet id");
  if (!Number.isSafeInteger(l.serial) || l.serial < 1) throw malformed("revocation list serial must be a positive whole number");
  if (!isNumericDate(l.issuedAt) || !isNumericDate(l.nextUpdate)) throw malformed("revocation list times must be whole seconds");
  if (l.nextUpdate <= l.issuedAt) throw malformed("revocation list nextUpdate must be after issuedAt");
  if (!Array.isArray(l.certIds) || !l.certIds.every((h) => typeof h === "string" && /^[0-9a-f]{2,128}$/.test(h) && h.length % 2 === 0)) {
    throw malformed("revocation list certificate ids must be lowercase hex");
  }
  if (!Array.isArray(l.devices) || !l.devices.every(isDeviceName)) throw malformed("revocation list devices must be name@domain");
  if (!Array.isArray(l.gateways) || !l.gateways.every(isGatewayId)) throw malformed("revocation list gateways must be gateway ids");
  if (l.certIds.length + l.devices.length + l.gateways.length > MAX_LIST_ENTRIES) throw malformed(`revocation list holds more than ${MAX_LIST_ENTRIES} entries`);
}

export function signRevocationList(list: RevocationList, caSeed: Uint8Array): Uint8Array {
  const l: RevocationList = { ...list, certIds: sortedUnique(list.certIds), devices: sortedUnique(list.devices), gateways: sortedUnique(list.gateways) };
  checkList(l);
  const payload = encode(
    new Map<number, unknown>([
      [LIST_TYPE_KEY, LIST_TYPE],
      [LIST_FLEET, l.fleetId],
      [LIST_SERIAL, l.serial],
      [LIST_ISSUED, l.issuedAt],
      [LIST_NEXT_UPDATE, l.nextUpdate],
      [LIST_CERT_IDS, l.certIds.map((h) => fromHex(h) as Uint8Array)],
      [LIST_DEVICES, l.devices],
      [LIST_GATEWAYS, l.gateways],
    ]),
  );
  return signSign1(payload, caSeed);
}

function decodeList(payload: Uint8Array): RevocationList {
  let m: unknown;
  try {
    m = decodeDeterministic(payload, "revocation list");
  } catch (e) {
    throw new FleetError("malformed", e instanceof Error ? e.message : "revocation list is not CBOR", { cause: e });
  }
  if (!(m instanceof Map) || m.get(LIST_TYPE_KEY) !== LIST_TYPE) throw malformed("not a keyproxy revocation list");
  const ids: unknown = m.get(LIST_CERT_IDS);
  const devices: unknown = m.get(LIST_DEVICES);
  const gateways: unknown = m.get(LIST_GATEWAYS);
  if (!Array.isArray(ids) || !ids.every(isBytes)) throw malformed("revocation list certificate ids must be byte strings");
  if (!Array.isArray(devices) || !Array.isArray(gateways)) throw malformed("revocation list devices and gateways must be arrays");
  const l: RevocationList = {
    fleetId: m.get(LIST_FLEET) as string,
    serial: m.get(LIST_SERIAL) as number,
    issuedAt: m.get(LIST_ISSUED) as number,
    nextUpdate: m.get(LIST_NEXT_UPDATE) as number,
    certIds: ids.map((b: Uint8Array) => toHex(b)),
    devices: devices as string[],
    gateways: gateways as string[],
  };
  checkList(l);
  return l;
}

/**
 * Verifies a signed revocation list: signed by the fleet CA (FleetError "bad-signature"), for this fleet
 * ("unknown-issuer"), well formed ("malformed"). Does not look at time or serial: the holder decides
 * (see acceptRevocationList).
 */
export function verifyRevocationList(bytes: Uint8Array, fleetId: string, caPublicKey: Uint8Array): RevocationList {
  let payload: Uint8Array;
  try {
    payload = verifySign1(bytes, caPublicKey).payload;
  } catch (e) {
    throw fromCose(e);
  }
  const list = decodeList(payload);
  if (list.fleetId !== fleetId) throw new FleetError("unknown-issuer", `revocation list is for fleet "${list.fleetId}", not "${fleetId}"`);
  return list;
}

/** The rule a holder applies to a new list: only a strictly higher serial replaces the one it has. */
export function acceptRevocationList(current: RevocationList | undefined, bytes: Uint8Array, fleetId: string, caPublicKey: Uint8Array): RevocationList {
  const next = verifyRevocationList(bytes, fleetId, caPublicKey);
  if (current && next.serial <= current.serial) {
    throw new FleetError("rollback", `revocation list serial ${next.serial} is not above the held serial ${current.serial}`);
  }
  return next;
}

export function readRevocationListUnverified(bytes: Uint8Array): RevocationList {
  try {
    return decodeList(parseSign1(bytes).payload);
  } catch (e) {
    throw fromCose(e);
  }
}

// ---------------------------------------------------------------------------------------------------
// the fleet directory (the CA's side)
//
//   <fleet-dir>/            0700
//     fleet.json            {"fleetId", "caPublicKey" (hex)}: the trust anchor, public
//     ca.key                0600, the CA's Ed25519 seed, hex
//     revocation.cose       the current signed revocation list
//     gateways/<id>.cwt     every gateway certificate issued (a record; public)
//     fleet.lock            held while a process changes the directory (Fleet.locked)

export const FLEET_FILE = "fleet.json";
export const CA_KEY_FILE = "ca.key";
export const REVOCATION_FILE = "revocation.cose";
export const GATEWAYS_DIR = "gateways";
/** Held while a process changes the fleet directory (gateway/files/lock.ts). */
export const FLEET_LOCK_FILE = "fleet.lock";
/** How long a fleet command waits for another one to finish with the directory, ms. The lock has no
 *  queue (a waiter polls), so under a burst of commands one may wait for several others: a minute
 *  covers a script revoking hundreds of devices a few at a time. */
export const FLEET_LOCK_WAIT_MS = 60_000;
/** How long a revocation list is good for unless told otherwise: one day. */
export const DEFAULT_LIST_LIFETIME = 86_400;
/** How long a gateway certificate is good for unless told otherwise: 90 days. */
export const DEFAULT_GATEWAY_CERT_LIFETIME = 90 * 86_400;

export interface TrustAnchor {
  fleetId: string;
  caPublicKey: Uint8Array;
}

export function writeTrustAnchor(file: string, anchor: TrustAnchor): void {
  writeFileDurably(file, JSON.stringify({ fleetId: anchor.fleetId, caPublicKey: toHex(anchor.caPublicKey) }, null, 2) + "\n", 0o644);
}

export function readTrustAnchor(file: string): TrustAnchor {
  if (!existsSync(file)) throw new FleetError("missing", `${file} does not exist`);
  let j: { fleetId?: unknown; caPublicKey?: unknown };
  try {
    j = JSON.parse(readFileSync(file, "utf8")) as typeof j;
  } catch {
    throw malformed(`${file} is not JSON`);
  }
  const key = typeof j.caPublicKey === "string" ? fromHex(j.caPublicKey) : undefined;
  if (!isFleetId(j.fleetId) || !key || key.length !== ED25519_PUBLIC_KEY_LENGTH) throw malformed(`${file} must hold a fleetId and a 32-byte hex caPublicKey`);
  return { fleetId: j.fleetId, caPublicKey: key };
}

function readSeedFile(file: string): Uint8Array {
  if (!existsSync(file)) throw new FleetError("missing", `${file} does not exist`);
  const seed = parseHexKey(readFileSync(file, "utf8"));
  if (!seed) throw malformed(`${file} is not a 32-byte hex key`);
  return seed;
}

/** An open fleet: the CA's key and its files. Only the CA's machine has one. */
export class Fleet {
  private constructor(
    readonly dir: string,
    readonly fleetId: string,
    private readonly ca: Ed25519KeyPair,
    /** How long its changes wait for another fleet command, ms. */
    private readonly lockWaitMs = FLEET_LOCK_WAIT_MS,
  ) {}

  get anchor(): TrustAnchor {
    return { fleetId: this.fleetId, caPublicKey: new Uint8Array(this.ca.publicKey) };
  }

  /** Creates a fleet in dir (which must not hold one): CA key, trust anchor and an empty list, serial 1. */
  static create(dir: string, fleetId: string, now: number, listLifetime = DEFAULT_LIST_LIFETIME): Fleet {
    if (!isFleetId(fleetId)) throw malformed(`fleet id "${fleetId}" must be 1-64 letters, digits, dots, dashes or underscores`);
    if (existsSync(join(dir, CA_KEY_FILE)) || existsSync(join(dir, FLEET_FILE))) throw new FleetError("exists", `${dir} already holds a fleet; refusing to overwrite it`);
    mkdirSync(join(dir, GATEWAYS_DIR), { recursive: true, mode: 0o700 });
    chmodSync(dir, 0o700);
    const ca = generateEd25519();
    if (!createFileDurably(join(dir, CA_KEY_FILE), toHex(ca.seed) + "\n", 0o600)) throw new FleetError("exists", `${dir} already holds a fleet; refusing to overwrite it`);
    writeTrustAnchor(join(dir, FLEET_FILE), { fleetId, caPublicKey: ca.publicKey });
    const fleet = new Fleet(dir, fleetId, ca);
    fleet.writeList({ fleetId, serial: 1, issuedAt: now, nextUpdate: now + listLifetime, certIds: [], devices: [], gateways: [] });
    return fleet;
  }

  /** lockWaitMs: how long its changes wait for another fleet command (default FLEET_LOCK_WAIT_MS). */
  static open(dir: string, o: { lockWaitMs?: number } = {}): Fleet {
    const anchor = readTrustAnchor(join(dir, FLEET_FILE));
    const ca = ed25519FromSeed(readSeedFile(join(dir, CA_KEY_FILE)));
    if (toHex(ca.publicKey) !== toHex(anchor.caPublicKey)) throw malformed(`${join(dir, CA_KEY_FILE)} does not match the CA key in ${FLEET_FILE}`);
    return new Fleet(dir, anchor.fleetId, ca, o.lockWaitMs);
  }

  /** Issues (and records) a certificate for a gateway's two public keys. */
  issueGateway(gatewayId: string, keys: { signingKey: Uint8Array; encryptionKey: Uint8Array }, now: number, lifetime = DEFAULT_GATEWAY_CERT_LIFETIME): Uint8Array {
    if (!isGatewayId(gatewayId)) throw malformed(`gateway id "${gatewayId}" must be a domain name (letters, digits, - _ and dots)`);
    if (!Number.isSafeInteger(lifetime) || lifetime < 1) throw malformed("certificate lifetime must be a positive whole number of seconds");
    // Locked: a revoke-gateway running at the same time either comes first (and this one refuses) or after.
    return this.locked(() => {
      if (this.currentList().gateways.includes(gatewayId)) throw malformed(`gateway "${gatewayId}" is revoked in this fleet; it cannot get a certificate`);
      const cert = issueGatewayCertificate(
        { iss: this.fleetId, sub: gatewayId, iat: now, nbf: now, exp: now + lifetime, cti: new Uint8Array(randomBytes(CERT_ID_LENGTH)), signingKey: keys.signingKey, encryptionKey: keys.encryptionKey },
        this.ca.seed,
      );
      writeFileDurably(join(this.dir, GATEWAYS_DIR, `${gatewayId}.cwt`), cert, 0o644);
      return cert;
    });
  }

  /** The current signed revocation list. */
  signedList(): Uint8Array {
    const file = join(this.dir, REVOCATION_FILE);
    if (!existsSync(file)) throw new FleetError("missing", `${file} does not exist`);
    return new Uint8Array(readFileSync(file));
  }

  currentList(): RevocationList {
    return verifyRevocationList(this.signedList(), this.fleetId, this.ca.publicKey);
  }

  /**
   * Signs the next list: the current entries plus the given ones, serial + 1, issued now. Also how a
   * list is refreshed before its nextUpdate (no additions). Returns the signed list.
   */
  revoke(add: { certIds?: string[]; devices?: string[]; gateways?: string[] }, now: number, listLifetime = DEFAULT_LIST_LIFETIME): Uint8Array {
    for (const d of add.devices ?? []) if (!isDeviceName(d)) throw malformed(`"${d}" is not a device name (name@domain)`);
    for (const g of add.gateways ?? []) if (!isGatewayId(g)) throw malformed(`"${g}" is not a gateway id`);
    for (const c of add.certIds ?? []) if (!/^([0-9a-f]{2}){1,64}$/.test(c)) throw malformed(`"${c}" is not a certificate id (lowercase hex)`);
    // Read, sign and write under the fleet's lock: two processes revoking at once would otherwise both
    // sign serial + 1, and gateways would take one of them and ignore the other as a redelivery.
    return this.locked(() => {
      const cur = this.currentList();
      return this.writeList({
        fleetId: this.fleetId,
        serial: cur.serial + 1,
        issuedAt: now,
        nextUpdate: now + listLifetime,
        certIds: [...cur.certIds, ...(add.certIds ?? [])],
        devices: [...cur.devices, ...(add.devices ?? [])],
        gateways: [...cur.gateways, ...(add.gateways ?? [])],
      });
    });
  }

  /** fn with the fleet directory to this process (another fleet command waits for it, lockWaitMs). */
  private locked<T>(fn: () => T): T {
    const lock = lockFile(join(this.dir, FLEET_LOCK_FILE), this.lockWaitMs);
    if (!lock) throw new FleetError("busy", `another keyproxy fleet command has been changing ${this.dir} for ${this.lockWaitMs / 1000} s: try again when it is done`);
    try {
      return fn();
    } finally {
      lock.release();
    }
  }

  /** Gateway certificates issued so far, newest file per gateway id. */
  issuedGateways(): { gatewayId: string; certificate: Uint8Array }[] {
    const dir = join(this.dir, GATEWAYS_DIR);
    if (!existsSync(dir)) return [];
    return readdirSync(dir)
      .filter((f) => f.endsWith(".cwt"))
      .sort()
      .map((f) => ({ gatewayId: f.slice(0, -4), certificate: new Uint8Array(readFileSync(join(dir, f))) }));
  }

  private writeList(list: RevocationList): Uint8Array {
    const signed = signRevocationList(list, this.ca.seed);
    // On the disk before anyone sees it: a CA that lost this file in a power cut would sign its next
    // list with a serial already published, which gateways take for a redelivery and ignore.
    writeFileDurably(join(this.dir, REVOCATION_FILE), signed, 0o644);
    return signed;
  }
}

// ---------------------------------------------------------------------------------------------------
// a gateway's credentials (the gateway's side), in its data directory:
//
//   gateway.key        0600, Ed25519 seed, hex (gateway/fleet/identity.ts: also signs device certificates)
//   gateway.x25519     0600, X25519 secret, hex
//   gateway.cwt        its certificate from the fleet CA
//   fleet.json         the trust anchor: fleet id and CA public key
//   dev-fleet/         only for a lone development gateway: a fleet of its own (see below)

export const X25519_KEY_FILE = "gateway.x25519";
export const GATEWAY_CERT_FILE = "gateway.cwt";
export const DEV_FLEET_DIR = "dev-fleet";

export interface GatewayCredentials {
  gatewayId: string;
  signing: Ed25519KeyPair;
  encryption: X25519KeyPair;
  certificate: Uint8Array;
  anchor: TrustAnchor;
}

/** The gateway's X25519 key, made on first use (mode 0600); one made meanwhile by another process wins. */
export function loadOrCreateEncryptionKey(dataDir: string): X25519KeyPair {
  const file = join(dataDir, X25519_KEY_FILE);
  if (!existsSync(file)) {
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    const pair = generateX25519();
    if (createFileDurably(file, toHex(pair.secretKey) + "\n", 0o600)) return pair;
    pair.secretKey.fill(0);
  }
  const secretKey = readSeedFile(file);
  return { secretKey, publicKey: x25519PublicKey(secretKey) };
}

/** The public keys a CA needs to certify this gateway, making the keys if they do not exist yet. */
export function gatewayPublicKeys(dataDir: string): { signingKey: Uint8Array; encryptionKey: Uint8Array } {
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const { key } = loadOrCreateGatewayKey(dataDir);
  const enc = loadOrCreateEncryptionKey(dataDir);
  return { signingKey: key.publicKey, encryptionKey: enc.publicKey };
}

/** Puts a certificate and the trust anchor into a gateway's data directory, after checking they fit its keys. */
export function installGatewayCertificate(dataDir: string, certificate: Uint8Array, anchor: TrustAnchor): GatewayCertClaims {
  const claims = verifyGatewayCertificateSignature(certificate, anchor.caPublicKey);
  if (claims.iss !== anchor.fleetId) throw new FleetError("unknown-issuer", `certificate is from fleet "${claims.iss}", not "${anchor.fleetId}"`);
  const mine = gatewayPublicKeys(dataDir);
  if (toHex(mine.signingKey) !== toHex(claims.signingKey) || toHex(mine.encryptionKey) !== toHex(claims.encryptionKey)) {
    throw malformed(`certificate for "${claims.sub}" does not certify the keys in ${dataDir}`);
  }
  writeFileDurably(join(dataDir, GATEWAY_CERT_FILE), certificate, 0o644);
  writeTrustAnchor(join(dataDir, FLEET_FILE), anchor);
  return claims;
}

export const DEV_FLEET_WARNING =
  "NO FLEET CONFIGURED: this gateway created a development fleet of its own and certified itself. " +
  "No other gateway trusts it, and its CA key sits beside it in the data directory. Do not use this in " +
  "production: create a fleet with `keyproxy fleet create` and install a certificate from it.";

/**
 * A gateway's credentials from its data directory. If it has none and allowDevFleet is set, it creates
 * a development fleet of its own in <data-dir>/dev-fleet, certifies itself and says so: the caller
 * must show DEV_FLEET_WARNING loudly when devFleetCreated is true.
 */
export function loadGatewayCredentials(dataDir: string, gatewayId: string, now: number, allowDevFleet: boolean): { credentials: GatewayCredentials; devFleetCreated: boolean } {
  let devFleetCreated = false;
  if (!existsSync(join(dataDir, GATEWAY_CERT_FILE))) {
    if (!allowDevFleet) throw new FleetError("missing", `${join(dataDir, GATEWAY_CERT_FILE)} does not exist: issue one with "keyproxy fleet issue-gateway"`);
    const fleet = Fleet.create(join(dataDir, DEV_FLEET_DIR), `dev-${gatewayId}`.slice(0, 64).replace(/[^A-Za-z0-9._-]/g, "-"), now);
    installGatewayCertificate(dataDir, fleet.issueGateway(gatewayId, gatewayPublicKeys(dataDir), now), fleet.anchor);
    devFleetCreated = true;
  }
  const anchor = readTrustAnchor(join(dataDir, FLEET_FILE));
  const certificate = new Uint8Array(readFileSync(join(dataDir, GATEWAY_CERT_FILE)));
  const claims = verifyGatewayCertificateSignature(certificate, anchor.caPublicKey);
  if (claims.sub !== gatewayId) throw malformed(`${join(dataDir, GATEWAY_CERT_FILE)} is for gateway "${claims.sub}", not "${gatewayId}"`);
  const signing = loadOrCreateGatewayKey(dataDir).key;
  const encryption = loadOrCreateEncryptionKey(dataDir);
  if (toHex(signing.publicKey) !== toHex(claims.signingKey) || toHex(encryption.publicKey) !== toHex(claims.encryptionKey)) {
    throw malformed(`${join(dataDir, GATEWAY_CERT_FILE)} does not certify this gateway's keys`);
  }
  return { credentials: { gatewayId, signing, encryption, certificate, anchor }, devFleetCreated };
}
