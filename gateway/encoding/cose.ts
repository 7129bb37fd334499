// COSE_Sign1 (RFC 9052 §4.2) with EdDSA over Ed25519 (RFC 9053 §2.2, alg -8), and nothing else.
//
//   COSE_Sign1_Tagged = #6.18([ protected: bstr .cbor header_map, unprotected: header_map,
//                               payload: bstr, signature: bstr ])
//   Sig_structure     = [ "Signature1", body_protected: bstr, external_aad: bstr, payload: bstr ]
//
// We sign what we emit with protected {1: -8} and, when given, unprotected {4: kid}. On the way in we
// accept any COSE_Sign1 whose protected alg is EdDSA, the way the cose-wg examples do, but refuse what we
// cannot honour: another alg, critical headers (we understand no extensions, RFC 9052 §3.1 "crit"),
// a label in both buckets (§3), a detached payload, and anything that is not deterministic CBOR
// (RFC 8949 §4.2.1: no duplicate map keys, no indefinite lengths, shortest heads, no floats for
// integers). One thing §4.2.1 asks is not checked: the order of map keys. Re-encoding keeps the
// order they came in (the encoder writes a map's keys in the order it holds them), so a map with its
// keys in another order is a second encoding of the same value that is accepted. In a COSE_Sign1 what
// is signed is the bytes as sent, so this lets nobody change a signed header or payload; the
// unprotected header, which anyone on the path can change anyway, is the only place where it gives a
// second form.

import { encode, decode } from "./cbor.ts";
import { ed25519Sign, ed25519Verify, ED25519_SIGNATURE_LENGTH } from "../crypto/ed25519.ts";

/** COSE header labels (RFC 9052 §3.1). */
export const COSE_HEADER_ALG = 1;
export const COSE_HEADER_CRIT = 2;
export const COSE_HEADER_KID = 4;
/** EdDSA (RFC 9053 §2.2). */
export const COSE_ALG_EDDSA = -8;
/** CBOR tag of COSE_Sign1_Tagged. */
export const COSE_SIGN1_TAG = 18;

const SIGN1_CONTEXT = "Signature1";
// 0xd2 is the one-byte head of tag 18; the only encoding deterministic CBOR allows.
const SIGN1_TAG_HEAD = 0xd2;

export type CoseErrorCode = "malformed" | "bad-alg" | "bad-signature";

/** Every way verifySign1 refuses a message. Messages describe the structure, never key bytes. */
export class CoseError extends Error {
  readonly code: CoseErrorCode;
  constructor(code: CoseErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "CoseError";
    this.code = code;
  }
}

/** A COSE_Sign1 taken apart but NOT verified: nothing in it can be trusted yet. */
export interface ParsedSign1 {
  /** The protected header exactly as it was on the wire: the signature covers these bytes. */
  protectedBytes: Uint8Array;
  protectedHeader: Map<unknown, unknown>;
  unprotectedHeader: Map<unknown, unknown>;
  payload: Uint8Array;
  signature: Uint8Array;
  /** From either bucket. */
  kid?: Uint8Array;
}

function isBytes(v: unknown): v is Uint8Array {
  return v instanceof Uint8Array;
}

/** A plain Uint8Array copy, so callers never hold a view into (or a Buffer over) the input. */
function copyBytes(b: Uint8Array): Uint8Array {
  return new Uint8Array(b);
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Decodes CBOR and insists it was deterministic: re-encoding must give the same bytes back. This one
 * check rejects duplicate map keys (the map comes back smaller), indefinite lengths, non-shortest
 * heads, floats that hold integers and trailing bytes, whatever the decoder itself tolerates; map keys
 * in any order pass (see the top of this file).
 */
export function decodeDeterministic(bytes: Uint8Array, what: string): unknown {
  let value: unknown;
  try {
    value = decode(bytes);
  } catch (e) {
    throw new CoseError("malformed", `${what} is not valid CBOR`, { cause: e });
  }
  let again: Uint8Array;
  try {
    again = encode(value);
  } catch (e) {
    throw new CoseError("malformed", `${what} holds CBOR values we do not use`, { cause: e });
  }
  if (!sameBytes(again, bytes)) {
    throw new CoseError("malformed", `${what} is not deterministically encoded CBOR (RFC 8949 §4.2.1)`);
  }
  return value;
}

/** The bytes that EdDSA signs: Sig_structure for COSE_Sign1 with an empty external_aad (RFC 9052 §4.4). */
export function sigStructure1(protectedBytes: Uint8Array, payload: Uint8Array): Uint8Array {
  return encode([SIGN1_CONTEXT, protectedBytes, new Uint8Array(0), payload]);
}

function readHeaderMap(v: unknown, what: string): Map<unknown, unknown> {
  if (!(v instanceof Map)) throw new CoseError("malformed", `${what} must be a CBOR map`);
  return v;
}

/**
 * Takes a COSE_Sign1_Tagged apart and checks its shape and headers, but NOT its algorithm or signature.
 * Use verifySign1 unless you only want to display the contents.
 */
export function parseSign1(bytes: Uint8Array): ParsedSign1 {
  if (!isBytes(bytes)) throw new CoseError("malformed", "COSE_Sign1 must be given as bytes");
  if (bytes.length === 0 || bytes[0] !== SIGN1_TAG_HEAD) {
    throw new CoseError("malformed", "not a COSE_Sign1_Tagged message (expected CBOR tag 18)");
  }
  const body = decodeDeterministic(bytes.subarray(1), "COSE_Sign1");
  if (!Array.isArray(body) || body.length !== 4) {
    throw new CoseError("malformed", "COSE_Sign1 must be an array of 4 items");
  }
  const protectedBytes: unknown = body[0];
  const payload: unknown = body[2];
  const signature: unknown = body[3];
  if (!isBytes(protectedBytes)) throw new CoseError("malformed", "COSE_Sign1 protected header must be a byte string");
  // An empty protected header is sent as a zero-length bstr, never as an encoded empty map (§3).
  const protectedHeader =
    protectedBytes.length === 0
      ? new Map<unknown, unknown>()
      : readHeaderMap(decodeDeterministic(protectedBytes, "COSE_Sign1 protected header"), "COSE_Sign1 protected header");
  const unprotectedHeader = readHeaderMap(body[1], "COSE_Sign1 unprotected header");
  if (payload === null) throw new CoseError("malformed", "COSE_Sign1 with a detached payload is not supported");
  if (!isBytes(payload)) throw new CoseError("malformed", "COSE_Sign1 payload must be a byte string");
  if (!isBytes(signature) || signature.length !== ED25519_SIGNATURE_LENGTH) {
    throw new CoseError("malformed", `COSE_Sign1 signature must be a ${ED25519_SIGNATURE_LENGTH}-byte string`);
  }

  for (const label of unprotectedHeader.keys()) {
    if (protectedHeader.has(label)) {
      throw new CoseError("malformed", `COSE header label ${String(label)} appears in both buckets`);
    }
  }
  // crit names extensions the recipient must understand; we understand none. It also belongs in the
  // protected bucket only, so seeing it anywhere means refusal.
  if (protectedHeader.has(COSE_HEADER_CRIT) || unprotectedHeader.has(COSE_HEADER_CRIT)) {
    throw new CoseError("malformed", "COSE_Sign1 carries critical headers (crit), which are not supported");
  }
  const kid: unknown = protectedHeader.has(COSE_HEADER_KID)
    ? protectedHeader.get(COSE_HEADER_KID)
    : unprotectedHeader.get(COSE_HEADER_KID);
  if (kid !== undefined && !isBytes(kid)) throw new CoseError("malformed", "COSE kid header must be a byte string");

  const parsed: ParsedSign1 = {
    protectedBytes: copyBytes(protectedBytes),
    protectedHeader,
    unprotectedHeader,
    payload: copyBytes(payload),
    signature: copyBytes(signature),
  };
  if (kid !== undefined) parsed.kid = copyBytes(kid);
  return parsed;
}

/**
 * Signs payload as COSE_Sign1 with EdDSA/Ed25519 and returns COSE_Sign1_Tagged bytes:
 * 18([h'a10127', {4: kid} or {}, payload, signature]). Deterministic for a given input.
 */
export function signSign1(payload: Uint8Array, seed: Uint8Array, kid?: Uint8Array): Uint8Array {
  if (!isBytes(payload)) throw new TypeError("COSE_Sign1 payload must be a Uint8Array");
  if (kid !== undefined && !isBytes(kid)) throw new TypeError("COSE kid must be a Uint8Array");
  const protectedBytes = encode(new Map<number, number>([[COSE_HEADER_ALG, COSE_ALG_EDDSA]]));
  const unprotectedHeader = new Map<number, Uint8Array>();
  if (kid !== undefined) unprotectedHeader.set(COSE_HEADER_KID, kid);
  const signature = ed25519Sign(seed, sigStructure1(protectedBytes, payload));
  const body = encode([protectedBytes, unprotectedHeader, payload, signature]);
  const out = new Uint8Array(1 + body.length);
  out[0] = SIGN1_TAG_HEAD;
  out.set(body, 1);
  return out;
}

/**
 * Verifies a COSE_Sign1_Tagged message against an Ed25519 public key and returns its payload (and kid,
 * if any; the kid is a hint only, it is not what makes the message trusted). Throws CoseError:
 * "malformed" for anything that is not a well-formed tagged COSE_Sign1, "bad-alg" unless the protected
 * alg is EdDSA, "bad-signature" when the signature does not verify under publicKey.
 */
export function verifySign1(bytes: Uint8Array, publicKey: Uint8Array): { payload: Uint8Array; kid?: Uint8Array } {
  const msg = parseSign1(bytes);
  // alg must be protected: an unprotected alg could be swapped by anyone on the path (RFC 9052 §3.1).
  const alg = msg.protectedHeader.get(COSE_HEADER_ALG);
  if (alg === undefined) {
    throw new CoseError(
      "bad-alg",
      msg.unprotectedHeader.has(COSE_HEADER_ALG)
        ? "COSE_Sign1 alg must be in the protected header"
        : "COSE_Sign1 protected header has no alg",
    );
  }
  if (alg !== COSE_ALG_EDDSA) {
    throw new CoseError("bad-alg", `COSE_Sign1 alg ${String(alg)} is not accepted; only EdDSA (-8)`);
  }
  if (!ed25519Verify(publicKey, sigStructure1(msg.protectedBytes, msg.payload), msg.signature)) {
    throw new CoseError("bad-signature", "COSE_Sign1 signature does not verify under the given key");
  }
  const out: { payload: Uint8Array; kid?: Uint8Array } = { payload: msg.payload };
  if (msg.kid !== undefined) out.kid = msg.kid;
  return out;
}

// ---- COSE_Key (RFC 9052 §7, RFC 9053 §7.2): the OKP keys in certificates ----

export const KEY_KTY = 1;
export const KEY_ALG = 3;
export const KEY_CRV = -1;
export const KEY_X = -2;
export const KEY_D = -4;
export const KTY_OKP = 1;
export const CRV_X25519 = 4;
export const CRV_ED25519 = 6;

/** The 32-byte public x of an OKP COSE_Key with curve crv and, if the key names one, algorithm alg.
 *  A key carrying a private part (d) is refused: a certificate is public, and one holding a private key
 *  is broken. Throws CoseError "malformed" saying what is wrong, prefixed with what. */
export function readOkpPublicKey(v: unknown, crv: number, alg: number | undefined, what: string): Uint8Array {
  const bad = (m: string) => new CoseError("malformed", `${what} ${m}`);
  if (!(v instanceof Map)) throw bad("must be a COSE_Key map");
  if (v.get(KEY_KTY) !== KTY_OKP) throw bad("must have kty OKP (1)");
  if (v.get(KEY_CRV) !== crv) throw bad(`must have crv ${crv}`);
  if (v.has(KEY_ALG) && v.get(KEY_ALG) !== alg) throw bad(`has an alg this key may not be used for (${alg === undefined ? "none allowed" : alg})`);
  if (v.has(KEY_D)) throw bad("must not contain a private key (d)");
  const x: unknown = v.get(KEY_X);
  if (!(x instanceof Uint8Array) || x.length !== 32) throw bad("x must be 32 bytes");
  return new Uint8Array(x);
}
