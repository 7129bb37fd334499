// Device certificates: a CWT (RFC 8392) signed as COSE_Sign1 with EdDSA/Ed25519 by the gateway.
//
//   61(18([h'a10127', {4: kid}?, claims, signature]))
//   claims = { 1 iss: tstr (gateway id), 2 sub: tstr (device id), 4 exp, 5 nbf, 6 iat: NumericDate,
//              7 cti: bstr (certificate id), 8 cnf: { 1 COSE_Key: {1: 1, 3: -8, -1: 6, -2: x} } }
//
// The cnf claim (RFC 8747 §3.2) binds the device's Ed25519 public key to its id: that is what the
// certificate certifies. Claims are written in deterministic CBOR (RFC 8949 §4.2.1): map keys in
// bytewise order of their encodings, so 1, 2, 4, 5, 6, 7, 8 and, in the COSE_Key, 1, 3, -1, -2.
//
// NumericDates are whole, non-negative seconds up to 2^53 - 1, always written as CBOR integers
// (RFC 8392 §2 allows floats; we neither write nor accept them, so one instant has one encoding).

import { encode } from "./cbor.ts";
import { decodeDeterministic, verifySign1, parseSign1, signSign1, CoseError, readOkpPublicKey, CRV_ED25519, KEY_ALG, KEY_CRV, KEY_KTY, KEY_X, KTY_OKP, COSE_ALG_EDDSA } from "./cose.ts";
import { ED25519_PUBLIC_KEY_LENGTH } from "../crypto/ed25519.ts";

/** CBOR tag for a CWT (RFC 8392 §6). It must wrap a tagged COSE message, here tag 18. */
export const CWT_TAG = 61;
const CWT_TAG_HEAD = Uint8Array.of(0xd8, 0x3d); // tag 61, the shortest head

const CLAIM_ISS = 1;
const CLAIM_SUB = 2;
const CLAIM_EXP = 4;
const CLAIM_NBF = 5;
const CLAIM_IAT = 6;
const CLAIM_CTI = 7;
const CLAIM_CNF = 8;
const CNF_COSE_KEY = 1;


const MAX_NUMERIC_DATE = Number.MAX_SAFE_INTEGER;
const MAX_CTI_LENGTH = 64;

export interface DeviceCertClaims {
  /** The issuing gateway's id. */
  iss: string;
  /** The device's id. */
  sub: string;
  /** Issued at, NumericDate (seconds since the epoch). */
  iat: number;
  /** Valid from this second on. */
  nbf: number;
  /** Valid up to, not including, this second. */
  exp: number;
  /** The certificate id: random bytes chosen by the issuer. */
  cti: Uint8Array;
  /** The device's 32-byte Ed25519 public key (the cnf claim). */
  publicKey: Uint8Array;
}

export type CertErrorCode = "malformed" | "bad-signature" | "expired" | "not-yet-valid" | "bad-alg";

/** Every way a certificate is refused. Messages describe the problem, never key bytes. */
export class CertError extends Error {
  readonly code: CertErrorCode;
  constructor(code: CertErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "CertError";
    this.code = code;
  }
}

function isBytes(v: unknown): v is Uint8Array {
  return v instanceof Uint8Array;
}

function isNumericDate(v: unknown): v is number {
  return typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= MAX_NUMERIC_DATE;
}

function malformed(message: string): CertError {
  return new CertError("malformed", message);
}

/** The rules every certificate's claims obey, whether we are about to sign them or have just read them. */
function checkClaims(c: DeviceCertClaims): void {
  if (typeof c.iss !== "string" || c.iss.length === 0) throw malformed("certificate iss must be a non-empty string");
  if (typeof c.sub !== "string" || c.sub.length === 0) throw malformed("certificate sub must be a non-empty string");
  for (const name of ["iat", "nbf", "exp"] as const) {
    if (!isNumericDate(c[name])) {
      throw malformed(`certificate ${name} must be whole seconds in 0 .. ${MAX_NUMERIC_DATE}`);
    }
  }
  if (!isBytes(c.cti) || c.cti.length === 0 || c.cti.length > MAX_CTI_LENGTH) {
    throw malformed(`certificate cti must be 1 .. ${MAX_CTI_LENGTH} bytes`);
  }
  if (!isBytes(c.publicKey) || c.publicKey.length !== ED25519_PUBLIC_KEY_LENGTH) {
    throw malformed(`certificate publicKey must be a ${ED25519_PUBLIC_KEY_LENGTH}-byte Ed25519 key`);
  }
}

function encodeClaims(c: DeviceCertClaims): Uint8Array {
  const coseKey = new Map<number, number | Uint8Array>([
    [KEY_KTY, KTY_OKP],
    [KEY_ALG, COSE_ALG_EDDSA],
    [KEY_CRV, CRV_ED25519],
    [KEY_X, new Uint8Array(c.publicKey)],
  ]);
  const claims = new Map<number, unknown>([
    [CLAIM_ISS, c.iss],
    [CLAIM_SUB, c.sub],
    [CLAIM_EXP, c.exp],
    [CLAIM_NBF, c.nbf],
    [CLAIM_IAT, c.iat],
    [CLAIM_CTI, new Uint8Array(c.cti)],
    [CLAIM_CNF, new Map([[CNF_COSE_KEY, coseKey]])],
  ]);
  return encode(claims);
}

function readPublicKeyFromCnf(cnf: unknown): Uint8Array {
  if (!(cnf instanceof Map)) throw malformed("certificate cnf must be a map");
  try {
    return readOkpPublicKey(cnf.get(CNF_COSE_KEY), CRV_ED25519, COSE_ALG_EDDSA, "certificate key (cnf COSE_Key, label 1)");
  } catch (e) {
    throw malformed((e as Error).message);
  }
}

/**
 * Reads the claims from a CWT payload. Claims other than ours are ignored, as RFC 8392 §3 allows;
 * ours must all be present with the right types.
 */
function decodeClaims(payload: Uint8Array): DeviceCertClaims {
  let claims: unknown;
  try {
    claims = decodeDeterministic(payload, "CWT claims");
  } catch (e) {
    throw new CertError("malformed", e instanceof Error ? e.message : "CWT claims are not valid CBOR", { cause: e });
  }
  if (!(claims instanceof Map)) throw malformed("CWT claims must be a CBOR map");
  const iss: unknown = claims.get(CLAIM_ISS);
  const sub: unknown = claims.get(CLAIM_SUB);
  const exp: unknown = claims.get(CLAIM_EXP);
  const nbf: unknown = claims.get(CLAIM_NBF);
  const iat: unknown = claims.get(CLAIM_IAT);
  const cti: unknown = claims.get(CLAIM_CTI);
  if (typeof iss !== "string") throw malformed("certificate iss claim (1) must be a text string");
  if (typeof sub !== "string") throw malformed("certificate sub claim (2) must be a text string");
  if (!isNumericDate(exp)) throw malformed("certificate exp claim (4) must be a NumericDate in whole seconds");
  if (!isNumericDate(nbf)) throw malformed("certificate nbf claim (5) must be a NumericDate in whole seconds");
  if (!isNumericDate(iat)) throw malformed("certificate iat claim (6) must be a NumericDate in whole seconds");
  if (!isBytes(cti)) throw malformed("certificate cti claim (7) must be a byte string");
  const publicKey = readPublicKeyFromCnf(claims.get(CLAIM_CNF));
  const result: DeviceCertClaims = { iss, sub, iat, nbf, exp, cti: new Uint8Array(cti), publicKey };
  checkClaims(result);
  return result;
}

/** The COSE_Sign1_Tagged inside, with the CWT tag 61 removed if it was there. */
function unwrapCwtTag(bytes: Uint8Array): Uint8Array {
  if (!isBytes(bytes)) throw malformed("certificate must be given as bytes");
  if (bytes.length >= 2 && bytes[0] === CWT_TAG_HEAD[0] && bytes[1] === CWT_TAG_HEAD[1]) return bytes.subarray(2);
  return bytes;
}

function certErrorFromCose(e: unknown): unknown {
  if (e instanceof CoseError) return new CertError(e.code, e.message, { cause: e });
  return e;
}

/**
 * Issues a device certificate: the claims as a CWT, signed by the issuer's Ed25519 seed, returned as
 * 61(COSE_Sign1_Tagged). kid, if given, goes in the unprotected header to name the issuer key.
 * Throws CertError "malformed" if the claims could not be read back by verifyCertificate.
 */
export function issueCertificate(claims: DeviceCertClaims, issuerSeed: Uint8Array, kid?: Uint8Array): Uint8Array {
  checkClaims(claims);
  // One we could verify at no moment at all is a mistake, not a certificate.
  if (claims.exp <= claims.nbf) throw malformed("certificate exp must be after nbf");
  const signed = signSign1(encodeClaims(claims), issuerSeed, kid);
  const out = new Uint8Array(CWT_TAG_HEAD.length + signed.length);
  out.set(CWT_TAG_HEAD, 0);
  out.set(signed, CWT_TAG_HEAD.length);
  return out;
}

/**
 * Verifies a device certificate against the issuer's public key and the time now (NumericDate, seconds)
 * and returns its claims. Valid while nbf <= now < exp. Accepts the certificate with or without the
 * CWT tag 61. Throws CertError: "malformed", "bad-alg", "bad-signature" (in that order of checking),
 * then "not-yet-valid" or "expired".
 */
export function verifyCertificate(bytes: Uint8Array, issuerPublicKey: Uint8Array, now: number): DeviceCertClaims {
  // NaN would compare false both ways and so look valid forever: refuse it outright.
  if (typeof now !== "number" || !Number.isFinite(now)) throw new TypeError("now must be a finite number of seconds");
  let payload: Uint8Array;
  try {
    payload = verifySign1(unwrapCwtTag(bytes), issuerPublicKey).payload;
  } catch (e) {
    throw certErrorFromCose(e);
  }
  const claims = decodeClaims(payload);
  if (now < claims.nbf) throw new CertError("not-yet-valid", `certificate is not valid before ${claims.nbf}`);
  if (now >= claims.exp) throw new CertError("expired", `certificate expired at ${claims.exp}`);
  return claims;
}

/**
 * FOR DISPLAY ONLY: reads the claims WITHOUT checking the signature, the algorithm or the validity
 * window, so nothing returned here may be trusted or acted on (anyone can forge such bytes).
 * Use verifyCertificate for every decision. Throws CertError "malformed" for unreadable bytes.
 */
export function readCertificateUnverified(bytes: Uint8Array): DeviceCertClaims {
  let payload: Uint8Array;
  try {
    payload = parseSign1(unwrapCwtTag(bytes)).payload;
  } catch (e) {
    throw certErrorFromCose(e);
  }
  return decodeClaims(payload);
}
