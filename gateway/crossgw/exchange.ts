// The authenticated ephemeral key exchange that two gateways run in their devices' names (design.md
// flow 5; seed 004 E3 "proxy on both sides"): SIGMA-I, the identity-protecting SIGMA of IKEv2's
// IKE_AUTH and EDHOC's CIPHERTEXT_2/3, with EDHOC's MAC-then-sign (RFC 9528). docs/PROTOCOL.md,
// "Gateway-to-gateway key exchange", is the full description.
//
//   msg1  I -> R  [1, sessionId, from, to, app, suites, eA, replaces]
//   msg2  R -> I  [2, sessionId, eB, suite, ciphertext2]   ciphertext2 = AEAD(K2, IV2, AAD2, plaintext2)
//   msg3  I -> R  [3, sessionId, ciphertext3]              ciphertext3 = AEAD(K3, IV3, AAD3, plaintext3)
//   msg4  R -> I  [4, sessionId, mac_4]                    key confirmation: "R accepted msg3"
//
//   plaintext2 = cbor([cert_R, gatewayCert_R, sig_R, mac_R])     plaintext3 likewise, the initiator's
//
//   TH1 = H(msg1)                      TH2 = H([TH1, eB, suite])
//   PRK = HKDF-Extract(salt = TH2, X25519(e, E))          (the shared secret is wiped right after)
//   K(label, TH, n) = HKDF-Expand(PRK, cbor(["KP exchange v1", label, TH]), n)
//   K2 = K("k2", TH2, 32), IV2 = K("iv2", TH2, 12), AAD2 = cbor(["KP exchange enc2", TH2])  (AES-256-GCM)
//   mac_R = HMAC(K("mac2", TH2, 32), [label, TH2, to, H(cert_R), H(gatewayCert_R)])
//   sig_R = Ed25519(identity key of `to`, [label, TH2, H(cert_R), H(gatewayCert_R), mac_R])
//   TH3 = H([TH2, plaintext2])                              (over the plaintext, as EDHOC's TH_3)
//   K3, IV3, AAD3 likewise ("k3", "iv3", "KP exchange enc3", TH3); mac_I, sig_I over TH3 and `from`
//   TH4 = H([TH3, plaintext3])
//   SA seed = K("SA seed", TH4, 32), SPI = K("SPI", TH4, 4), mac_4 = HMAC(K("mac4", TH4, 32), ["KP exchange msg4", TH4])
//
// Each signature is made with the identity key the gateway keeps for its device (devices.identity_seed),
// whose public half is in the device certificate; each certificate chain is judged by the verifier
// (validity, chain to the fleet CA, fleet revocation list) and its subject must be the name asked for.
// A man in the middle who swaps eA or eB changes TH2 and the shared secret: msg2 no longer decrypts,
// and were it re-encrypted, neither the MAC nor the signature would verify.
//
// Identity protection: certificates, signatures and MACs travel only inside ciphertext2/3, under keys
// from the ephemeral shared secret, so the broker and any passive observer never see them. The
// initiator reveals its own only in msg3, once it has verified the responder, so an active attacker
// who cannot authenticate as the responder learns nothing of it either; the responder, as in every
// SIGMA-I, shows its identity to whoever sent the msg1 it answers. msg1 itself names `from` and `to`
// (the responder's gateway needs `to` to pick the callee): the caller sends it encrypted to the peer
// gateway's certified key at the interlink, which is outside this module.
//
// Hybrid post-quantum key agreement (fleet policy, ExchangeDeps.keyAgreement): msg1 may also carry an
// ML-KEM-768 encapsulation key ekA (FIPS 203), and msg2 then the ciphertext ctB encapsulated to it.
// The two shared secrets are combined as TLS's X25519MLKEM768 does, by concatenation into the key
// schedule, and the transcript covers both public halves:
//
//   msg1  [1, sessionId, from, to, app, suites, eA, replaces, ekA]      (9 items; 8 without ML-KEM)
//   msg2  [2, sessionId, eB, suite, ciphertext2, ctB]                   (6 items; 5 without)
//   TH2 = H([TH1, eB, suite, ctB])      PRK = HKDF-Extract(TH2, ML-KEM.Decaps(ctB) || X25519(e, E))
//
// Stripping ekA from msg1 or ctB from msg2 on the way changes TH1 or TH2 on one side only, so msg2
// no longer decrypts: a man in the middle cannot downgrade a hybrid exchange to X25519 alone. A
// genuine peer without ML-KEM gets a classical exchange unless the policy is "hybrid-only", which
// refuses it ("downgrade"). Signatures stay Ed25519: this protects the session keys against an
// adversary who records today and has a quantum computer later, not the authentication.
//
// `replaces` is the SPI of the SA this exchange rekeys (0: a new session). It is in TH1, so both
// signatures cover it: nobody can turn a new session into a replacement or the reverse. Whether that
// SA exists, between these devices, is the caller's to check.
//
// The two sides are explicit state objects (in the manner of lakers, the EDHOC library): each message
// either moves the state forward or is refused with an ExchangeError, and a refused message changes
// nothing, so a forged message from an attacker cannot kill an exchange the genuine peer will finish.

import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createHmac,
  createPublicKey,
  diffieHellman,
  randomBytes,
  type KeyObject,
} from "node:crypto";
import { ctEqual } from "../../firmware/bytes.ts";
import { encode } from "../encoding/cbor.ts";
import { decodeDeterministic } from "../encoding/cose.ts";
import { readCertificateUnverified } from "../encoding/cwt.ts";
import { ml_kem768 } from "@noble/post-quantum/ml-kem.js";
import { ed25519Sign, ed25519Verify } from "../crypto/ed25519.ts";
import { decipherSecret, takeSecret } from "../crypto/secret-bytes.ts";
import { generateX25519KeyObject, isDeviceName } from "../fleet/fleet.ts";
import { DEFAULT_MATCHING, matchSettings, suiteCandidates, type MatchOptions } from "../sessions/matching.ts";
import type { CertificateChecker } from "../fleet/verifier.ts";

export const SESSION_ID_LENGTH = 16;
export const X25519_PUBLIC_LENGTH = 32;
export const SA_SEED_LENGTH = 32;
/** ML-KEM-768 (FIPS 203): encapsulation key and ciphertext lengths. */
export const MLKEM768_KEY_LENGTH = 1184;
export const MLKEM768_CIPHERTEXT_LENGTH = 1088;
const HASH_LENGTH = 32;
const SIGNATURE_LENGTH = 64;
const GCM_KEY_LENGTH = 32;
const GCM_IV_LENGTH = 12;
const GCM_TAG_LENGTH = 16;
/** A ciphertext2/3 holds two certificates of at most 4096 bytes, a signature and a MAC: about 8.3 KB. */
const MAX_CIPHERTEXT_LENGTH = 10 * 1024;
/** How long an exchange may wait for its next message, seconds. */
export const DEFAULT_EXCHANGE_TIMEOUT = 30;

export type ExchangeErrorCode =
  | "malformed" // not a message of this exchange (also: a plaintext2/3 of the wrong shape)
  | "unexpected" // a message this side is not waiting for (a replay, or out of order)
  | "replay" // a msg1 whose session id was already seen
  | "timeout"
  | "decrypt-failed" // ciphertext2/3 does not authenticate: altered, or made with other keys (a swapped eA or eB)
  | "untrusted-certificate" // the verifier did not say "good"
  | "wrong-peer" // a good certificate, but for another name than the one asked for
  | "bad-mac"
  | "bad-signature"
  | "no-common-suite"
  | "bad-suite" // the responder chose a suite the initiator did not offer
  | "downgrade"; // the peer does not do the hybrid key agreement this gateway's policy requires

/**
 * The key agreement a gateway offers and accepts (fleet policy: every gateway of a fleet is given the
 * same; docs/FLEET.md "Post-quantum key agreement"):
 * - "x25519": X25519 alone; an ML-KEM key in a msg1 is ignored and the exchange is classical.
 * - "hybrid": X25519 + ML-KEM-768 whenever the peer offers or takes it; classical with a peer that does not.
 * - "hybrid-only": X25519 + ML-KEM-768 always; an exchange without it is refused ("downgrade").
 */
export type KeyAgreementPolicy = "x25519" | "hybrid" | "hybrid-only";
export const KEY_AGREEMENT_POLICIES: readonly KeyAgreementPolicy[] = ["x25519", "hybrid", "hybrid-only"];

/** Every refusal. Messages say what was wrong, never key bytes. */
export class ExchangeError extends Error {
  readonly code: ExchangeErrorCode;
  constructor(code: ExchangeErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "ExchangeError";
    this.code = code;
  }
}

// ---------------------------------------------------------------------------------------------------
// messages

export interface Msg1 {
  sessionId: Uint8Array;
  /** The initiating device, "name@domain". */
  from: string;
  /** The device asked for, "name@domain". */
  to: string;
  app: string;
  /** The caller's registered [suite, priority] pairs. */
  suites: number[][];
  eA: Uint8Array;
  /** The SPI of the SA this exchange rekeys, or 0 for a new session. */
  replaces: number;
  /** The initiator's ML-KEM-768 encapsulation key: present when it offers the hybrid key agreement. */
  kemKey?: Uint8Array;
}

/** The responder's answer; its certificates, signature and MAC are inside `ciphertext`. */
export interface Msg2 {
  sessionId: Uint8Array;
  eB: Uint8Array;
  suite: number;
  ciphertext: Uint8Array;
  /** The ML-KEM-768 ciphertext to msg1's kemKey: present when the responder took the hybrid. */
  kemCiphertext?: Uint8Array;
}

/** The initiator's proof, all of it inside `ciphertext`. */
export interface Msg3 {
  sessionId: Uint8Array;
  ciphertext: Uint8Array;
}

export interface Msg4 {
  sessionId: Uint8Array;
  mac: Uint8Array;
}

const isBytes = (v: unknown, len?: number): v is Uint8Array => v instanceof Uint8Array && (len === undefined || v.length === len);
const isText = (v: unknown): v is string => typeof v === "string" && v.length > 0 && v.length <= 256;
const isInt32 = (n: unknown): n is number => Number.isSafeInteger(n) && (n as number) >= -0x80000000 && (n as number) <= 0x7fffffff;
const isSpi = (n: unknown): n is number => Number.isSafeInteger(n) && (n as number) >= 0 && (n as number) <= 0xffffffff;
/** [suite, priority] pairs: suites are COSE-style algorithm ids (negative for private use). */
const isSuites = (v: unknown): v is number[][] =>
  Array.isArray(v) && v.length <= 16 && v.every((p) => Array.isArray(p) && p.length === 2 && isInt32(p[0]) && Number.isSafeInteger(p[1]) && p[1] >= 0 && p[1] < 65536);
const isCert = (v: unknown): v is Uint8Array => isBytes(v) && v.length > 0 && v.length <= 4096;
const isCiphertext = (v: unknown): v is Uint8Array => isBytes(v) && v.length >= GCM_TAG_LENGTH && v.length <= MAX_CIPHERTEXT_LENGTH;

export function encodeMsg1(m: Msg1): Uint8Array {
  const items = [1, m.sessionId, m.from, m.to, m.app, m.suites, m.eA, m.replaces];
  return encode(m.kemKey ? [...items, m.kemKey] : items);
}
export function encodeMsg2(m: Msg2): Uint8Array {
  const items = [2, m.sessionId, m.eB, m.suite, m.ciphertext];
  return encode(m.kemCiphertext ? [...items, m.kemCiphertext] : items);
}
export function encodeMsg3(m: Msg3): Uint8Array {
  return encode([3, m.sessionId, m.ciphertext]);
}
export function encodeMsg4(m: Msg4): Uint8Array {
  return encode([4, m.sessionId, m.mac]);
}

/** The deterministic CBOR value of `bytes`, or an ExchangeError "malformed". */
function readCbor(bytes: Uint8Array, what: string): unknown {
  try {
    return decodeDeterministic(bytes, what);
  } catch (e) {
    throw new ExchangeError("malformed", e instanceof Error ? e.message : `${what} is not CBOR`, { cause: e });
  }
}

/** The array of a message of the given type and one of the given lengths, or an ExchangeError "malformed". */
function readArray(bytes: Uint8Array, type: number, ...lengths: number[]): unknown[] {
  const v = readCbor(bytes, `exchange message ${type}`);
  if (!Array.isArray(v) || !lengths.includes(v.length) || v[0] !== type) throw new ExchangeError("malformed", `not an exchange message ${type}`);
  if (!isBytes(v[1], SESSION_ID_LENGTH)) throw new ExchangeError("malformed", `exchange message ${type}: session id must be ${SESSION_ID_LENGTH} bytes`);
  return v;
}

export function decodeMsg1(bytes: Uint8Array): Msg1 {
  const [, sessionId, from, to, app, suites, eA, replaces, kemKey] = readArray(bytes, 1, 8, 9);
  if (!isDeviceName(from) || !isDeviceName(to)) throw new ExchangeError("malformed", "message 1: from and to must be device names (name@domain)");
  if (!isText(app)) throw new ExchangeError("malformed", "message 1: app must be a short non-empty string");
  if (!isSuites(suites)) throw new ExchangeError("malformed", "message 1: suites must be [suite, priority] pairs");
  if (!isBytes(eA, X25519_PUBLIC_LENGTH)) throw new ExchangeError("malformed", `message 1: eA must be ${X25519_PUBLIC_LENGTH} bytes`);
  if (!isSpi(replaces)) throw new ExchangeError("malformed", "message 1: replaces must be an SPI (0 to 2^32 - 1)");
  if (kemKey !== undefined && !isBytes(kemKey, MLKEM768_KEY_LENGTH)) throw new ExchangeError("malformed", `message 1: the ML-KEM-768 key must be ${MLKEM768_KEY_LENGTH} bytes`);
  return { sessionId: sessionId as Uint8Array, from, to, app, suites, eA, replaces, ...(kemKey ? { kemKey } : {}) };
}

export function decodeMsg2(bytes: Uint8Array): Msg2 {
  const [, sessionId, eB, suite, ciphertext, kemCiphertext] = readArray(bytes, 2, 5, 6);
  if (!isBytes(eB, X25519_PUBLIC_LENGTH)) throw new ExchangeError("malformed", `message 2: eB must be ${X25519_PUBLIC_LENGTH} bytes`);
  if (!isInt32(suite)) throw new ExchangeError("malformed", "message 2: suite must be a 32-bit integer");
  if (!isCiphertext(ciphertext)) throw new ExchangeError("malformed", `message 2: ciphertext must be ${GCM_TAG_LENGTH} to ${MAX_CIPHERTEXT_LENGTH} bytes`);
  if (kemCiphertext !== undefined && !isBytes(kemCiphertext, MLKEM768_CIPHERTEXT_LENGTH)) throw new ExchangeError("malformed", `message 2: the ML-KEM-768 ciphertext must be ${MLKEM768_CIPHERTEXT_LENGTH} bytes`);
  return { sessionId: sessionId as Uint8Array, eB, suite, ciphertext, ...(kemCiphertext ? { kemCiphertext } : {}) };
}

export function decodeMsg3(bytes: Uint8Array): Msg3 {
  const [, sessionId, ciphertext] = readArray(bytes, 3, 3);
  if (!isCiphertext(ciphertext)) throw new ExchangeError("malformed", `message 3: ciphertext must be ${GCM_TAG_LENGTH} to ${MAX_CIPHERTEXT_LENGTH} bytes`);
  return { sessionId: sessionId as Uint8Array, ciphertext };
}

export function decodeMsg4(bytes: Uint8Array): Msg4 {
  const [, sessionId, mac] = readArray(bytes, 4, 3);
  if (!isBytes(mac, HASH_LENGTH)) throw new ExchangeError("malformed", "message 4: mac must be 32 bytes");
  return { sessionId: sessionId as Uint8Array, mac };
}

/** What plaintext2 and plaintext3 carry: a side's certificates and its proof of the device's key. */
interface Proof {
  cert: Uint8Array;
  gatewayCert: Uint8Array;
  sig: Uint8Array;
  mac: Uint8Array;
}

/** The proof inside a decrypted plaintext, checked as strictly as a message; else "malformed". */
function readProof(plaintext: Uint8Array, n: 2 | 3): Proof {
  const v = readCbor(plaintext, `message ${n}: the plaintext`);
  if (!Array.isArray(v) || v.length !== 4) throw new ExchangeError("malformed", `message ${n}: the plaintext is not [cert, gatewayCert, sig, mac]`);
  const [cert, gatewayCert, sig, mac] = v;
  if (!isCert(cert) || !isCert(gatewayCert)) throw new ExchangeError("malformed", `message ${n}: certificates must be byte strings of 1 to 4096 bytes`);
  if (!isBytes(sig, SIGNATURE_LENGTH) || !isBytes(mac, HASH_LENGTH)) throw new ExchangeError("malformed", `message ${n}: sig must be 64 bytes and mac 32`);
  return { cert, gatewayCert, sig, mac };
}

// ---------------------------------------------------------------------------------------------------
// the key schedule

const sha256 = (b: Uint8Array): Uint8Array => new Uint8Array(createHash("sha256").update(b).digest());
const hmac = (key: Uint8Array, data: Uint8Array): Uint8Array => takeSecret(createHmac("sha256", key).update(data).digest());

/** HKDF-Expand (RFC 5869) for up to one block, which is all this schedule needs. */
function expand(prk: Uint8Array, label: string, th: Uint8Array, length: number): Uint8Array {
  if (length > HASH_LENGTH) throw new RangeError("expand: at most one SHA-256 block");
  const info = encode(["KP exchange v1", label, th]);
  const t = new Uint8Array(info.length + 1);
  t.set(info, 0);
  t[info.length] = 1;
  const out = hmac(prk, t);
  return length === HASH_LENGTH ? out : out.slice(0, length);
}

/** TH2 covers the responder's public halves: eB, and ctB in a hybrid exchange. */
const th2Of = (th1: Uint8Array, eB: Uint8Array, suite: number, kemCiphertext?: Uint8Array): Uint8Array =>
  sha256(encode(kemCiphertext ? [th1, eB, suite, kemCiphertext] : [th1, eB, suite]));
/** TH3 and TH4 hash the plaintext, as EDHOC does: the transcript is what the ends saw, not the wire. */
const nextTh = (th: Uint8Array, plaintext: Uint8Array): Uint8Array => sha256(encode([th, plaintext]));

// AES-256-GCM for ciphertext2/3 (node:crypto: no new dependency, as the interlink's bodies). Both
// sides make a fresh ephemeral for every exchange, and TH2 covers the fresh session id besides, so
// PRK and every key derived from it are new to this exchange; K2 and K3 each seal exactly one
// message, so the derived nonce never repeats under a key.
function aeadParams(prk: Uint8Array, n: 2 | 3, th: Uint8Array): { key: Uint8Array; iv: Uint8Array; aad: Uint8Array } {
  return { key: expand(prk, `k${n}`, th, GCM_KEY_LENGTH), iv: expand(prk, `iv${n}`, th, GCM_IV_LENGTH), aad: encode([`KP exchange enc${n}`, th]) };
}

function seal(prk: Uint8Array, n: 2 | 3, th: Uint8Array, plaintext: Uint8Array): Uint8Array {
  const { key, iv, aad } = aeadParams(prk, n, th);
  try {
    const c = createCipheriv("aes-256-gcm", key, iv, { authTagLength: GCM_TAG_LENGTH });
    c.setAAD(aad);
    return new Uint8Array(Buffer.concat([c.update(plaintext), c.final(), c.getAuthTag()]));
  } finally {
    key.fill(0);
    iv.fill(0);
  }
}

/** The plaintext of ciphertext2/3, or "decrypt-failed" (altered, or sealed under other keys). */
function open(prk: Uint8Array, n: 2 | 3, th: Uint8Array, ciphertext: Uint8Array): Uint8Array {
  if (!isCiphertext(ciphertext)) throw new ExchangeError("malformed", `message ${n}: ciphertext must be ${GCM_TAG_LENGTH} to ${MAX_CIPHERTEXT_LENGTH} bytes`);
  const { key, iv, aad } = aeadParams(prk, n, th);
  const body = ciphertext.length - GCM_TAG_LENGTH;
  try {
    const d = createDecipheriv("aes-256-gcm", key, iv, { authTagLength: GCM_TAG_LENGTH });
    d.setAAD(aad);
    d.setAuthTag(ciphertext.subarray(body));
    return decipherSecret(d, ciphertext.subarray(0, body));
  } catch (e) {
    throw new ExchangeError("decrypt-failed", `message ${n} does not decrypt (altered, or made with another ephemeral key or transcript)`, { cause: e });
  } finally {
    key.fill(0);
    iv.fill(0);
  }
}

/** What a side's MAC covers: the transcript, the name being proved, and the certificates proving it. */
function macInput(label: string, th: Uint8Array, name: string, cert: Uint8Array, gatewayCert: Uint8Array): Uint8Array {
  return encode([label, th, name, sha256(cert), sha256(gatewayCert)]);
}
function sigInput(label: string, th: Uint8Array, cert: Uint8Array, gatewayCert: Uint8Array, mac: Uint8Array): Uint8Array {
  return encode([label, th, sha256(cert), sha256(gatewayCert), mac]);
}

function macOf(prk: Uint8Array, n: 2 | 3, th: Uint8Array, name: string, cert: Uint8Array, gatewayCert: Uint8Array): Uint8Array {
  const key = expand(prk, `mac${n}`, th, HASH_LENGTH);
  const mac = hmac(key, macInput(`KP exchange mac${n}`, th, name, cert, gatewayCert));
  key.fill(0);
  return mac;
}

/** plaintext2/3 of a side: its certificates, the MAC over transcript and name, signed by the device's key. */
function prove(prk: Uint8Array, n: 2 | 3, th: Uint8Array, party: LocalParty): Uint8Array {
  const mac = macOf(prk, n, th, party.name, party.cert, party.gatewayCert);
  const sig = ed25519Sign(party.identitySeed, sigInput(`KP exchange sig${n}`, th, party.cert, party.gatewayCert, mac));
  return encode([party.cert, party.gatewayCert, sig, mac]);
}

/** Checks the peer's proof for `name`: MAC, then certificate chain and name, then signature. */
async function checkProof(deps: ExchangeDeps, prk: Uint8Array, n: 2 | 3, th: Uint8Array, name: string, p: Proof): Promise<void> {
  // MAC first: it needs no verifier round trip (and uses PRK before the await, during which an abort may wipe it).
  if (!ctEqual(macOf(prk, n, th, name, p.cert, p.gatewayCert), p.mac)) {
    throw new ExchangeError("bad-mac", `message ${n}: MAC does not verify (altered transcript or ephemeral key)`);
  }
  const peerKey = await trustedPeerKey(deps, p.cert, p.gatewayCert, name);
  if (!ed25519Verify(peerKey, sigInput(`KP exchange sig${n}`, th, p.cert, p.gatewayCert, p.mac), p.sig)) {
    throw new ExchangeError("bad-signature", `message ${n}: signature does not verify under ${name}'s certified key`);
  }
}

// X25519 on node:crypto with the ephemeral kept as a KeyObject (docs/FLEET.md: parsing raw secrets
// per call is what costs). The raw secret never leaves node:crypto.
// A peer's public key goes into node:crypto as a JWK (RFC 8037 OKP): the same key as its SPKI DER, at
// a tenth of the cost (no OpenSSL decoder: docs/BENCHMARKS.md, "Sessions across gateways"). Our own
// comes out of the key-generation job encoded (generateX25519KeyObject says why not as a JWK).
const publicFromRaw = (raw: Uint8Array): KeyObject =>
  createPublicKey({ key: { kty: "OKP", crv: "X25519", x: Buffer.from(raw.buffer, raw.byteOffset, raw.length).toString("base64url") }, format: "jwk" });

/** An X25519 ephemeral key pair; pass one in only to know the keys (tests). Never use one twice. */
export interface Ephemeral {
  privateKey: KeyObject;
  publicKey: Uint8Array;
}

function ephemeral(): Ephemeral {
  return generateX25519KeyObject();
}

/** PRK = HKDF-Extract(TH2, [kemShared ||] X25519(own, peer)), the ML-KEM secret first as in TLS's
 *  X25519MLKEM768. A low-order peer key (zero secret) is refused. Both secrets are wiped here. */
function extract(own: KeyObject, peer: Uint8Array, th2: Uint8Array, kemShared?: Uint8Array): Uint8Array {
  let ss: Buffer;
  try {
    ss = diffieHellman({ privateKey: own, publicKey: publicFromRaw(peer) });
  } catch (e) {
    kemShared?.fill(0);
    throw new ExchangeError("malformed", "ephemeral public key is not usable (low order)", { cause: e });
  }
  let acc = 0;
  for (const b of ss) acc |= b;
  if (acc === 0) {
    kemShared?.fill(0);
    throw new ExchangeError("malformed", "ephemeral public key is of low order (shared secret would be zero)");
  }
  const ikm = kemShared ? Buffer.concat([kemShared, ss]) : ss;
  const prk = hmac(th2, ikm);
  ss.fill(0);
  ikm.fill(0);
  kemShared?.fill(0);
  return prk;
}

/** A fresh ML-KEM-768 key pair (@noble/post-quantum: audited, FIPS 203; node:crypto has none in Node 20). */
function kemKeyPair(): { publicKey: Uint8Array; secretKey: Uint8Array } {
  return ml_kem768.keygen();
}

/** ML-KEM-768 encapsulation to a peer's key; an unusable key (FIPS 203's modulus check) is "malformed". */
function kemEncapsulate(kemKey: Uint8Array): { cipherText: Uint8Array; sharedSecret: Uint8Array } {
  try {
    return ml_kem768.encapsulate(kemKey);
  } catch (e) {
    throw new ExchangeError("malformed", "message 1: the ML-KEM-768 key is not a valid encapsulation key", { cause: e });
  }
}

/** Whether a responder under `policy` answers this msg1 at all: "hybrid-only" refuses a msg1 without
 *  an ML-KEM key (before its callee is asked anything). */
export function refusesKeyAgreement(policy: KeyAgreementPolicy | undefined, msg1: Msg1): boolean {
  return policy === "hybrid-only" && !msg1.kemKey;
}

// ---------------------------------------------------------------------------------------------------
// the parties

/** A device as its gateway presents it in the exchange. */
export interface LocalParty {
  /** "name@domain". */
  name: string;
  /** The identity key the gateway keeps for the device; its public half is in cert. */
  identitySeed: Uint8Array;
  /** The device certificate (gateway/encoding/cwt.ts), signed by this gateway. */
  cert: Uint8Array;
  /** This gateway's certificate from the fleet CA (gateway/fleet/fleet.ts). */
  gatewayCert: Uint8Array;
}

export interface ExchangeDeps {
  /** Judges the peer's certificate chain (a Verifier with the fleet revocation list behind it). */
  checker: CertificateChecker;
  /** Seconds since the epoch. */
  now: () => number;
  /** Seconds an exchange may wait for its next message (default DEFAULT_EXCHANGE_TIMEOUT). */
  timeout?: number;
  /** The fleet's key-agreement policy (default "x25519"). */
  keyAgreement?: KeyAgreementPolicy;
}

/** What both sides end with: the same seed and SPI, to be installed in each side's own device. */
export interface ExchangeResult {
  sessionId: Uint8Array;
  role: "initiator" | "responder";
  /** Our device, and the peer device whose certificate the verifier vouched for. */
  self: string;
  peer: string;
  app: string;
  suite: number;
  /** The key agreement the exchange ran: "x25519-mlkem768" when both sides did ML-KEM-768. */
  keyAgreement: "x25519" | "x25519-mlkem768";
  /** Seed for the SA (firmware/proto/keys.ts derives the per-direction keys). The holder wipes it. */
  seed: Uint8Array;
  spi: number;
  /** msg1's `replaces`, authenticated by both sides: the SPI this SA replaces, 0 for a new session. */
  replaces: number;
  /** The certificates the exchange presented: our device's, and the peer's device and gateway
   *  certificates the verifier judged good (to be judged again when the revocation list changes). */
  ownCert: Uint8Array;
  peerCert: Uint8Array;
  peerGatewayCert: Uint8Array;
}

/** Checks a peer's certificate chain and name, then returns its identity public key. */
async function trustedPeerKey(deps: ExchangeDeps, cert: Uint8Array, gatewayCert: Uint8Array, expectedName: string): Promise<Uint8Array> {
  let answer;
  try {
    answer = await deps.checker.check(cert, [gatewayCert], deps.now());
  } catch (e) {
    throw new ExchangeError("untrusted-certificate", `the verifier could not judge the peer certificate: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
  if (answer.status !== "good") throw new ExchangeError("untrusted-certificate", `peer certificate is ${answer.status}: ${answer.reason}`);
  if (answer.subject !== expectedName) throw new ExchangeError("wrong-peer", `peer certificate is for "${answer.subject}", not "${expectedName}"`);
  return readCertificateUnverified(cert).publicKey; // the verifier judged exactly these bytes
}

function deriveResult(prk: Uint8Array, th4: Uint8Array): { seed: Uint8Array; spi: number; mac4: Uint8Array } {
  const seed = expand(prk, "SA seed", th4, SA_SEED_LENGTH);
  const s = expand(prk, "SPI", th4, 4);
  // SPI 0 means "no SA" in the device protocol (a Bye with SPI 0 ends all): never derive it.
  const spi = ((s[0] << 24) | (s[1] << 16) | (s[2] << 8) | s[3]) >>> 0 || 1;
  const k4 = expand(prk, "mac4", th4, HASH_LENGTH);
  const mac4 = hmac(k4, encode(["KP exchange msg4", th4]));
  k4.fill(0);
  return { seed, spi, mac4 };
}

function checkSession(expected: Uint8Array, got: Uint8Array, what: string): void {
  if (!ctEqual(expected, got)) throw new ExchangeError("unexpected", `${what} belongs to another exchange`);
}

type InitiatorState =
  | { s: "wait-msg2" }
  | { s: "wait-msg4"; result: ExchangeResult; mac4: Uint8Array }
  | { s: "done" }
  | { s: "failed"; reason: string };

/** The initiating gateway's side, in the name of its device `self`. */
export class Initiator {
  readonly msg1: Msg1;
  private state: InitiatorState = { s: "wait-msg2" };
  private readonly th1: Uint8Array;
  private readonly deadline: number;
  private readonly e: Ephemeral;
  /** The ML-KEM-768 secret key when the hybrid is offered; wiped when the exchange ends. */
  private readonly kemSecret?: Uint8Array;

  /** `replaces`: the SPI of the SA this exchange rekeys (default 0, a new session). `ephemeral` and
   *  `kem` are for tests that must know the keys: never pass the same ones twice. */
  constructor(
    private readonly deps: ExchangeDeps,
    private readonly self: LocalParty,
    to: string,
    app: string,
    suites: number[][],
    options: { replaces?: number; ephemeral?: Ephemeral; kem?: { publicKey: Uint8Array; secretKey: Uint8Array } } = {},
  ) {
    const replaces = options.replaces ?? 0;
    if (!isDeviceName(self.name) || !isDeviceName(to)) throw new ExchangeError("malformed", "from and to must be device names (name@domain)");
    if (!isText(app) || !isSuites(suites)) throw new ExchangeError("malformed", "app must be a short string and suites [suite, priority] pairs");
    if (!isSpi(replaces)) throw new ExchangeError("malformed", "replaces must be an SPI (0 to 2^32 - 1)");
    this.e = options.ephemeral ?? ephemeral();
    // `options.kem` only to know the keys (tests): never use one twice.
    const kem = (deps.keyAgreement ?? "x25519") === "x25519" ? undefined : options.kem ?? kemKeyPair();
    this.kemSecret = kem?.secretKey;
    this.msg1 = { sessionId: new Uint8Array(randomBytes(SESSION_ID_LENGTH)), from: self.name, to, app, suites, eA: this.e.publicKey, replaces, ...(kem ? { kemKey: kem.publicKey } : {}) };
    this.th1 = sha256(encodeMsg1(this.msg1));
    this.deadline = deps.now() + (deps.timeout ?? DEFAULT_EXCHANGE_TIMEOUT);
  }

  get status(): InitiatorState["s"] {
    return this.state.s;
  }

  private expect(s: InitiatorState["s"], what: string): void {
    if (this.state.s !== s) throw new ExchangeError("unexpected", `${what} arrived while the exchange is ${this.state.s}`);
    if (this.deps.now() >= this.deadline) throw new ExchangeError("timeout", `${what} arrived after the exchange timed out`);
  }

  /** Decrypts and verifies msg2 and answers with msg3. On any error the state is as before. */
  async onMsg2(m: Msg2): Promise<Msg3> {
    this.expect("wait-msg2", "message 2");
    checkSession(this.msg1.sessionId, m.sessionId, "message 2");
    if (!this.msg1.suites.some((p) => p[0] === m.suite)) throw new ExchangeError("bad-suite", `the responder chose suite ${m.suite}, which was not offered`);
    if (m.kemCiphertext && !this.kemSecret) throw new ExchangeError("malformed", "message 2 carries an ML-KEM ciphertext, but none was offered");
    if (!m.kemCiphertext && this.deps.keyAgreement === "hybrid-only") {
      throw new ExchangeError("downgrade", "the responder answered with X25519 alone, and this gateway's policy requires X25519 + ML-KEM-768");
    }
    const th2 = th2Of(this.th1, m.eB, m.suite, m.kemCiphertext);
    // Decapsulation never fails (FIPS 203's implicit rejection): an altered ctB gives another secret,
    // and msg2 then does not decrypt. The secret key stays for the genuine msg2 until the exchange ends.
    const kemShared = m.kemCiphertext ? ml_kem768.decapsulate(m.kemCiphertext, this.kemSecret!) : undefined;
    const prk = extract(this.e.privateKey, m.eB, th2, kemShared);
    try {
      // Decryption first: a substituted eB or an altered byte fails here, before any verifier round trip.
      const plaintext2 = open(prk, 2, th2, m.ciphertext);
      const peer = readProof(plaintext2, 2);
      await checkProof(this.deps, prk, 2, th2, this.msg1.to, peer);
      // The await above let other messages in: only one of them may move the state.
      this.expect("wait-msg2", "message 2");
      // Only now, the responder proved, does our device's identity leave this gateway (SIGMA-I).
      const th3 = nextTh(th2, plaintext2);
      const plaintext3 = prove(prk, 3, th3, this.self);
      const ciphertext = seal(prk, 3, th3, plaintext3);
      const { seed, spi, mac4 } = deriveResult(prk, nextTh(th3, plaintext3));
      const m1 = this.msg1;
      const result: ExchangeResult = {
        sessionId: m1.sessionId, role: "initiator", self: this.self.name, peer: m1.to, app: m1.app, suite: m.suite, seed, spi, replaces: m1.replaces,
        keyAgreement: m.kemCiphertext ? "x25519-mlkem768" : "x25519",
        ownCert: this.self.cert, peerCert: peer.cert, peerGatewayCert: peer.gatewayCert,
      };
      this.state = { s: "wait-msg4", result, mac4 };
      this.kemSecret?.fill(0);
      return { sessionId: m1.sessionId, ciphertext };
    } finally {
      prk.fill(0); // everything still needed (seed, mac4) is derived
    }
  }

  /** Verifies the responder's key confirmation; the result is the SA to install. */
  onMsg4(m: Msg4): ExchangeResult {
    this.expect("wait-msg4", "message 4");
    const st = this.state as Extract<InitiatorState, { s: "wait-msg4" }>;
    checkSession(this.msg1.sessionId, m.sessionId, "message 4");
    if (!ctEqual(st.mac4, m.mac)) throw new ExchangeError("bad-mac", "message 4: key confirmation does not verify");
    this.state = { s: "done" };
    return st.result;
  }

  /** Ends the exchange (a refusal from the peer, a timeout): key material is wiped. */
  abort(reason: string): void {
    if (this.state.s === "wait-msg4") this.state.result.seed.fill(0);
    this.kemSecret?.fill(0);
    this.state = { s: "failed", reason };
  }
}

/**
 * Session ids the responder has seen, so that a replayed msg1 is refused even after its exchange
 * ended. Entries are kept for `ttl` seconds (longer than any exchange lasts), at most `max` of them.
 */
export class SeenSessions {
  private readonly seen = new Map<string, number>();
  constructor(private readonly ttl = 10 * DEFAULT_EXCHANGE_TIMEOUT, private readonly max = 100_000) {}

  /** True the first time a session id is offered (and records it); false for a repeat. */
  admit(sessionId: Uint8Array, now: number): boolean {
    for (const [k, at] of this.seen) {
      if (at + this.ttl > now && this.seen.size < this.max) break; // insertion order: the rest are newer
      this.seen.delete(k);
    }
    const key = Buffer.from(sessionId).toString("hex");
    if (this.seen.has(key)) return false;
    this.seen.set(key, now);
    return true;
  }

  has(sessionId: Uint8Array): boolean {
    return this.seen.has(Buffer.from(sessionId).toString("hex"));
  }
}

export interface ResponderDeps extends ExchangeDeps {
  seen: SeenSessions;
  matching?: MatchOptions;
}

/** The callee as its gateway knows it: the party plus its registered suites. */
export interface LocalCallee extends LocalParty {
  suites: number[][];
}

type ResponderState =
  | { s: "wait-msg3"; prk: Uint8Array; th3: Uint8Array }
  | { s: "done" }
  | { s: "failed"; reason: string };

/** The responding gateway's side, in the name of its device msg1.to. */
export class Responder {
  readonly msg2: Msg2;
  private state: ResponderState;
  private readonly deadline: number;

  /**
   * Answers msg1 for the callee: picks the suite (seed 003: the callee's priority by default), makes
   * its ephemeral, MACs, signs and encrypts. Throws ExchangeError (replay, wrong-peer,
   * no-common-suite, malformed) and then records nothing; only an answered msg1 marks its session id
   * as seen.
   */
  constructor(
    private readonly deps: ResponderDeps,
    readonly msg1: Msg1,
    private readonly self: LocalCallee,
    e: Ephemeral = ephemeral(),
  ) {
    if (!isSpi(msg1.replaces)) throw new ExchangeError("malformed", "message 1: replaces must be an SPI (0 to 2^32 - 1)");
    if (msg1.to !== self.name) throw new ExchangeError("wrong-peer", `message 1 is for "${msg1.to}", not "${self.name}"`);
    if (deps.seen.has(msg1.sessionId)) throw new ExchangeError("replay", "message 1 repeats a session id already seen");
    const match = matchSettings(suiteCandidates(msg1.suites), suiteCandidates(self.suites), deps.matching ?? DEFAULT_MATCHING);
    if (!match) throw new ExchangeError("no-common-suite", "no cipher suite both devices registered");
    const suite = match.callee.id as number;
    const policy = deps.keyAgreement ?? "x25519";
    if (refusesKeyAgreement(policy, msg1)) throw new ExchangeError("downgrade", "message 1 offers X25519 alone, and this gateway's policy requires X25519 + ML-KEM-768");
    const kem = msg1.kemKey && policy !== "x25519" ? kemEncapsulate(msg1.kemKey) : undefined;
    const th2 = th2Of(sha256(encodeMsg1(msg1)), e.publicKey, suite, kem?.cipherText);
    const prk = extract(e.privateKey, msg1.eA, th2, kem?.sharedSecret);
    if (!deps.seen.admit(msg1.sessionId, deps.now())) {
      prk.fill(0);
      throw new ExchangeError("replay", "message 1 repeats a session id already seen");
    }
    const plaintext2 = prove(prk, 2, th2, self);
    this.msg2 = { sessionId: msg1.sessionId, eB: e.publicKey, suite, ciphertext: seal(prk, 2, th2, plaintext2), ...(kem ? { kemCiphertext: kem.cipherText } : {}) };
    this.state = { s: "wait-msg3", prk, th3: nextTh(th2, plaintext2) };
    this.deadline = deps.now() + (deps.timeout ?? DEFAULT_EXCHANGE_TIMEOUT);
  }

  get status(): ResponderState["s"] {
    return this.state.s;
  }

  private expect(what: string): Extract<ResponderState, { s: "wait-msg3" }> {
    if (this.state.s !== "wait-msg3") throw new ExchangeError("unexpected", `${what} arrived while the exchange is ${this.state.s}`);
    if (this.deps.now() >= this.deadline) throw new ExchangeError("timeout", `${what} arrived after the exchange timed out`);
    return this.state;
  }

  /** Decrypts and verifies msg3; the result is the SA to install and msg4 the confirmation to send. */
  async onMsg3(m: Msg3): Promise<{ msg4: Msg4; result: ExchangeResult }> {
    const st = this.expect("message 3");
    checkSession(this.msg1.sessionId, m.sessionId, "message 3");
    const plaintext3 = open(st.prk, 3, st.th3, m.ciphertext);
    const peer = readProof(plaintext3, 3);
    await checkProof(this.deps, st.prk, 3, st.th3, this.msg1.from, peer);
    this.expect("message 3"); // also: an abort during the await wiped st.prk
    const { seed, spi, mac4 } = deriveResult(st.prk, nextTh(st.th3, plaintext3));
    st.prk.fill(0);
    this.state = { s: "done" };
    const m1 = this.msg1;
    const result: ExchangeResult = {
      sessionId: m1.sessionId, role: "responder", self: this.self.name, peer: m1.from, app: m1.app, suite: this.msg2.suite, seed, spi, replaces: m1.replaces,
      keyAgreement: this.msg2.kemCiphertext ? "x25519-mlkem768" : "x25519",
      ownCert: this.self.cert, peerCert: peer.cert, peerGatewayCert: peer.gatewayCert,
    };
    return { msg4: { sessionId: m1.sessionId, mac: mac4 }, result };
  }

  abort(reason: string): void {
    if (this.state.s === "wait-msg3") this.state.prk.fill(0);
    this.state = { s: "failed", reason };
  }
}
