// The authenticated ephemeral key exchange that two gateways run in their devices' names (design.md
// flow 5; seed 004 E3 "proxy on both sides"; SIGMA with the MAC-then-sign of EDHOC, RFC 9528).
//
//   msg1  I -> R  {sessionId, from, to, app, suites, eA}
//   msg2  R -> I  {sessionId, eB, suite, cert_R, gatewayCert_R, sig_R, mac_R}
//   msg3  I -> R  {sessionId, cert_I, gatewayCert_I, sig_I, mac_I}
//   msg4  R -> I  {sessionId, mac_4}                       key confirmation: "R accepted msg3"
//
//   TH1 = H(msg1)                      TH2 = H([TH1, eB, suite])
//   PRK = HKDF-Extract(salt = TH2, X25519(e, E))          (the shared secret is wiped right after)
//   mac_R = HMAC(K(PRK, "mac2", TH2), [label, TH2, to, H(cert_R), H(gatewayCert_R)])
//   sig_R = Ed25519(identity key of `to`, [label, TH2, H(cert_R), H(gatewayCert_R), mac_R])
//   TH3 = H([TH2, cert_R, gatewayCert_R, sig_R, mac_R])
//   mac_I, sig_I likewise over TH3 and `from`, with the initiator's certificates
//   TH4 = H([TH3, cert_I, gatewayCert_I, sig_I, mac_I])
//   SA seed = K(PRK, "seed", TH4, 32), SPI = K(PRK, "spi", TH4, 4), mac_4 = HMAC(K(PRK, "mac4", TH4), TH4)
//
// Each signature is made with the identity key the gateway keeps for its device (devices.identity_seed),
// whose public half is in the device certificate; each certificate chain is judged by the verifier
// (validity, chain to the fleet CA, fleet revocation list) and its subject must be the name asked for.
// A man in the middle who swaps eA or eB changes TH2, so neither the signature nor the MAC verifies.
//
// The identities travel in the clear (this is SIGMA, not SIGMA-I's identity protection): the interlink
// may encrypt its bodies to the peer gateway when that matters.
//
// The two sides are explicit state objects (in the manner of lakers, the EDHOC library): each message
// either moves the state forward or is refused with an ExchangeError, and a refused message changes
// nothing, so a forged message from an attacker cannot kill an exchange the genuine peer will finish.

import { createHash, createHmac, createPublicKey, diffieHellman, generateKeyPairSync, randomBytes, type KeyObject } from "node:crypto";
import { ctEqual } from "../firmware/bytes.ts";
import { encode } from "./cbor.ts";
import { decodeDeterministic } from "./cose.ts";
import { readCertificateUnverified } from "./cwt.ts";
import { ed25519Sign, ed25519Verify } from "./ed25519.ts";
import { isDeviceName } from "./fleet.ts";
import { DEFAULT_MATCHING, matchSettings, suiteCandidates, type MatchOptions } from "./matching.ts";
import type { CertificateChecker } from "./verifier.ts";

export const SESSION_ID_LENGTH = 16;
export const X25519_PUBLIC_LENGTH = 32;
export const SA_SEED_LENGTH = 32;
const HASH_LENGTH = 32;
const SIGNATURE_LENGTH = 64;
/** How long an exchange may wait for its next message, seconds. */
export const DEFAULT_EXCHANGE_TIMEOUT = 30;

export type ExchangeErrorCode =
  | "malformed" // not a message of this exchange
  | "unexpected" // a message this side is not waiting for (a replay, or out of order)
  | "replay" // a msg1 whose session id was already seen
  | "timeout"
  | "untrusted-certificate" // the verifier did not say "good"
  | "wrong-peer" // a good certificate, but for another name than the one asked for
  | "bad-mac"
  | "bad-signature"
  | "no-common-suite"
  | "bad-suite"; // the responder chose a suite the initiator did not offer

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
}

export interface Msg2 {
  sessionId: Uint8Array;
  eB: Uint8Array;
  suite: number;
  cert: Uint8Array;
  gatewayCert: Uint8Array;
  sig: Uint8Array;
  mac: Uint8Array;
}

export interface Msg3 {
  sessionId: Uint8Array;
  cert: Uint8Array;
  gatewayCert: Uint8Array;
  sig: Uint8Array;
  mac: Uint8Array;
}

export interface Msg4 {
  sessionId: Uint8Array;
  mac: Uint8Array;
}

const isBytes = (v: unknown, len?: number): v is Uint8Array => v instanceof Uint8Array && (len === undefined || v.length === len);
const isText = (v: unknown): v is string => typeof v === "string" && v.length > 0 && v.length <= 256;
const isInt32 = (n: unknown): n is number => Number.isSafeInteger(n) && (n as number) >= -0x80000000 && (n as number) <= 0x7fffffff;
/** [suite, priority] pairs: suites are COSE-style algorithm ids (negative for private use). */
const isSuites = (v: unknown): v is number[][] =>
  Array.isArray(v) && v.length <= 16 && v.every((p) => Array.isArray(p) && p.length === 2 && isInt32(p[0]) && Number.isSafeInteger(p[1]) && p[1] >= 0 && p[1] < 65536);
const isCert = (v: unknown): v is Uint8Array => isBytes(v) && v.length > 0 && v.length <= 4096;

export function encodeMsg1(m: Msg1): Uint8Array {
  return encode([1, m.sessionId, m.from, m.to, m.app, m.suites, m.eA]);
}
export function encodeMsg2(m: Msg2): Uint8Array {
  return encode([2, m.sessionId, m.eB, m.suite, m.cert, m.gatewayCert, m.sig, m.mac]);
}
export function encodeMsg3(m: Msg3): Uint8Array {
  return encode([3, m.sessionId, m.cert, m.gatewayCert, m.sig, m.mac]);
}
export function encodeMsg4(m: Msg4): Uint8Array {
  return encode([4, m.sessionId, m.mac]);
}

/** The array of a message of the given type and length, or an ExchangeError "malformed". */
function readArray(bytes: Uint8Array, type: number, length: number): unknown[] {
  let v: unknown;
  try {
    v = decodeDeterministic(bytes, `exchange message ${type}`);
  } catch (e) {
    throw new ExchangeError("malformed", e instanceof Error ? e.message : `exchange message ${type} is not CBOR`, { cause: e });
  }
  if (!Array.isArray(v) || v.length !== length || v[0] !== type) throw new ExchangeError("malformed", `not an exchange message ${type}`);
  if (!isBytes(v[1], SESSION_ID_LENGTH)) throw new ExchangeError("malformed", `exchange message ${type}: session id must be ${SESSION_ID_LENGTH} bytes`);
  return v;
}

export function decodeMsg1(bytes: Uint8Array): Msg1 {
  const v = readArray(bytes, 1, 7);
  const [, sessionId, from, to, app, suites, eA] = v;
  if (!isDeviceName(from) || !isDeviceName(to)) throw new ExchangeError("malformed", "message 1: from and to must be device names (name@domain)");
  if (!isText(app)) throw new ExchangeError("malformed", "message 1: app must be a short non-empty string");
  if (!isSuites(suites)) throw new ExchangeError("malformed", "message 1: suites must be [suite, priority] pairs");
  if (!isBytes(eA, X25519_PUBLIC_LENGTH)) throw new ExchangeError("malformed", `message 1: eA must be ${X25519_PUBLIC_LENGTH} bytes`);
  return { sessionId: sessionId as Uint8Array, from, to, app, suites, eA };
}

export function decodeMsg2(bytes: Uint8Array): Msg2 {
  const [, sessionId, eB, suite, cert, gatewayCert, sig, mac] = readArray(bytes, 2, 8);
  if (!isBytes(eB, X25519_PUBLIC_LENGTH)) throw new ExchangeError("malformed", `message 2: eB must be ${X25519_PUBLIC_LENGTH} bytes`);
  if (!isInt32(suite)) throw new ExchangeError("malformed", "message 2: suite must be a 32-bit integer");
  if (!isCert(cert) || !isCert(gatewayCert)) throw new ExchangeError("malformed", "message 2: certificates must be byte strings");
  if (!isBytes(sig, SIGNATURE_LENGTH) || !isBytes(mac, HASH_LENGTH)) throw new ExchangeError("malformed", "message 2: sig must be 64 bytes and mac 32");
  return { sessionId: sessionId as Uint8Array, eB, suite, cert, gatewayCert, sig, mac };
}

export function decodeMsg3(bytes: Uint8Array): Msg3 {
  const [, sessionId, cert, gatewayCert, sig, mac] = readArray(bytes, 3, 6);
  if (!isCert(cert) || !isCert(gatewayCert)) throw new ExchangeError("malformed", "message 3: certificates must be byte strings");
  if (!isBytes(sig, SIGNATURE_LENGTH) || !isBytes(mac, HASH_LENGTH)) throw new ExchangeError("malformed", "message 3: sig must be 64 bytes and mac 32");
  return { sessionId: sessionId as Uint8Array, cert, gatewayCert, sig, mac };
}

export function decodeMsg4(bytes: Uint8Array): Msg4 {
  const [, sessionId, mac] = readArray(bytes, 4, 3);
  if (!isBytes(mac, HASH_LENGTH)) throw new ExchangeError("malformed", "message 4: mac must be 32 bytes");
  return { sessionId: sessionId as Uint8Array, mac };
}

// ---------------------------------------------------------------------------------------------------
// the key schedule

const sha256 = (b: Uint8Array): Uint8Array => new Uint8Array(createHash("sha256").update(b).digest());
const hmac = (key: Uint8Array, data: Uint8Array): Uint8Array => new Uint8Array(createHmac("sha256", key).update(data).digest());

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

const th2Of = (th1: Uint8Array, eB: Uint8Array, suite: number): Uint8Array => sha256(encode([th1, eB, suite]));

/** What a side's MAC covers: the transcript, the name being proved, and the certificates proving it. */
function macInput(label: string, th: Uint8Array, name: string, cert: Uint8Array, gatewayCert: Uint8Array): Uint8Array {
  return encode([label, th, name, sha256(cert), sha256(gatewayCert)]);
}
function sigInput(label: string, th: Uint8Array, cert: Uint8Array, gatewayCert: Uint8Array, mac: Uint8Array): Uint8Array {
  return encode([label, th, sha256(cert), sha256(gatewayCert), mac]);
}

// X25519 on node:crypto with the ephemeral kept as a KeyObject (docs/FLEET.md: parsing raw secrets
// per call is what costs). The raw secret never leaves node:crypto.
const X25519_SPKI_PREFIX = Uint8Array.of(0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00);

interface Ephemeral {
  privateKey: KeyObject;
  publicKey: Uint8Array;
}

function ephemeral(): Ephemeral {
  const { privateKey, publicKey } = generateKeyPairSync("x25519");
  return { privateKey, publicKey: new Uint8Array(publicKey.export({ format: "der", type: "spki" }).subarray(X25519_SPKI_PREFIX.length)) };
}

/** PRK = HKDF-Extract(TH2, X25519(own, peer)). A low-order peer key (zero secret) is refused. */
function extract(own: KeyObject, peer: Uint8Array, th2: Uint8Array): Uint8Array {
  const der = new Uint8Array(X25519_SPKI_PREFIX.length + X25519_PUBLIC_LENGTH);
  der.set(X25519_SPKI_PREFIX, 0);
  der.set(peer, X25519_SPKI_PREFIX.length);
  let ss: Buffer;
  try {
    ss = diffieHellman({ privateKey: own, publicKey: createPublicKey({ key: Buffer.from(der), format: "der", type: "spki" }) });
  } catch (e) {
    throw new ExchangeError("malformed", "ephemeral public key is not usable (low order)", { cause: e });
  }
  let acc = 0;
  for (const b of ss) acc |= b;
  if (acc === 0) throw new ExchangeError("malformed", "ephemeral public key is of low order (shared secret would be zero)");
  const prk = hmac(th2, ss);
  ss.fill(0);
  return prk;
}

// ---------------------------------------------------------------------------------------------------
// the parties

/** A device as its gateway presents it in the exchange. */
export interface LocalParty {
  /** "name@domain". */
  name: string;
  /** The identity key the gateway keeps for the device; its public half is in cert. */
  identitySeed: Uint8Array;
  /** The device certificate (gateway/cwt.ts), signed by this gateway. */
  cert: Uint8Array;
  /** This gateway's certificate from the fleet CA (gateway/fleet.ts). */
  gatewayCert: Uint8Array;
}

export interface ExchangeDeps {
  /** Judges the peer's certificate chain (a Verifier with the fleet revocation list behind it). */
  checker: CertificateChecker;
  /** Seconds since the epoch. */
  now: () => number;
  /** Seconds an exchange may wait for its next message (default DEFAULT_EXCHANGE_TIMEOUT). */
  timeout?: number;
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
  /** Seed for the SA (firmware/proto/keys.ts derives the per-direction keys). The holder wipes it. */
  seed: Uint8Array;
  spi: number;
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
  const mac4 = hmac(expand(prk, "mac4", th4, HASH_LENGTH), encode(["KP exchange msg4", th4]));
  return { seed, spi, mac4 };
}

function checkSession(expected: Uint8Array, got: Uint8Array, what: string): void {
  if (!ctEqual(expected, got)) throw new ExchangeError("unexpected", `${what} belongs to another exchange`);
}

type InitiatorState =
  | { s: "wait-msg2" }
  | { s: "wait-msg4"; prk: Uint8Array; th4: Uint8Array; result: ExchangeResult; mac4: Uint8Array; peer: string }
  | { s: "done" }
  | { s: "failed"; reason: string };

/** The initiating gateway's side, in the name of its device `self`. */
export class Initiator {
  readonly msg1: Msg1;
  private state: InitiatorState = { s: "wait-msg2" };
  private readonly th1: Uint8Array;
  private readonly deadline: number;

  constructor(
    private readonly deps: ExchangeDeps,
    private readonly self: LocalParty,
    to: string,
    app: string,
    suites: number[][],
    private readonly e: Ephemeral = ephemeral(),
  ) {
    if (!isDeviceName(self.name) || !isDeviceName(to)) throw new ExchangeError("malformed", "from and to must be device names (name@domain)");
    if (!isText(app) || !isSuites(suites)) throw new ExchangeError("malformed", "app must be a short string and suites [suite, priority] pairs");
    this.msg1 = { sessionId: new Uint8Array(randomBytes(SESSION_ID_LENGTH)), from: self.name, to, app, suites, eA: e.publicKey };
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

  /** Verifies msg2 and answers with msg3. On any error the state is as before. */
  async onMsg2(m: Msg2): Promise<Msg3> {
    this.expect("wait-msg2", "message 2");
    checkSession(this.msg1.sessionId, m.sessionId, "message 2");
    if (!this.msg1.suites.some((p) => p[0] === m.suite)) throw new ExchangeError("bad-suite", `the responder chose suite ${m.suite}, which was not offered`);
    const th2 = th2Of(this.th1, m.eB, m.suite);
    const prk = extract(this.e.privateKey, m.eB, th2);
    try {
      // MAC first: it needs no verifier round trip, and a substituted eB fails here already.
      const k2 = expand(prk, "mac2", th2, HASH_LENGTH);
      if (!ctEqual(hmac(k2, macInput("KP exchange mac2", th2, this.msg1.to, m.cert, m.gatewayCert)), m.mac)) {
        throw new ExchangeError("bad-mac", "message 2: MAC does not verify (altered transcript or ephemeral key)");
      }
      const peerKey = await trustedPeerKey(this.deps, m.cert, m.gatewayCert, this.msg1.to);
      if (!ed25519Verify(peerKey, sigInput("KP exchange sig2", th2, m.cert, m.gatewayCert, m.mac), m.sig)) {
        throw new ExchangeError("bad-signature", `message 2: signature does not verify under ${this.msg1.to}'s certified key`);
      }
      // The await above let other messages in: only one of them may move the state.
      this.expect("wait-msg2", "message 2");
      const th3 = sha256(encode([th2, m.cert, m.gatewayCert, m.sig, m.mac]));
      const k3 = expand(prk, "mac3", th3, HASH_LENGTH);
      const mac = hmac(k3, macInput("KP exchange mac3", th3, this.self.name, this.self.cert, this.self.gatewayCert));
      const sig = ed25519Sign(this.self.identitySeed, sigInput("KP exchange sig3", th3, this.self.cert, this.self.gatewayCert, mac));
      const th4 = sha256(encode([th3, this.self.cert, this.self.gatewayCert, sig, mac]));
      const { seed, spi, mac4 } = deriveResult(prk, th4);
      const result: ExchangeResult = { sessionId: this.msg1.sessionId, role: "initiator", self: this.self.name, peer: this.msg1.to, app: this.msg1.app, suite: m.suite, seed, spi };
      this.state = { s: "wait-msg4", prk, th4, result, mac4, peer: this.msg1.to };
      return { sessionId: this.msg1.sessionId, cert: this.self.cert, gatewayCert: this.self.gatewayCert, sig, mac };
    } catch (e) {
      prk.fill(0);
      throw e;
    }
  }

  /** Verifies the responder's key confirmation; the result is the SA to install. */
  onMsg4(m: Msg4): ExchangeResult {
    this.expect("wait-msg4", "message 4");
    const st = this.state as Extract<InitiatorState, { s: "wait-msg4" }>;
    checkSession(this.msg1.sessionId, m.sessionId, "message 4");
    if (!ctEqual(st.mac4, m.mac)) throw new ExchangeError("bad-mac", "message 4: key confirmation does not verify");
    st.prk.fill(0);
    this.state = { s: "done" };
    return st.result;
  }

  /** Ends the exchange (a refusal from the peer, a timeout): key material is wiped. */
  abort(reason: string): void {
    if (this.state.s === "wait-msg4") {
      this.state.prk.fill(0);
      this.state.result.seed.fill(0);
    }
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
   * its ephemeral, MACs and signs. Throws ExchangeError (replay, wrong-peer, no-common-suite,
   * malformed) and then records nothing; only an answered msg1 marks its session id as seen.
   */
  constructor(
    private readonly deps: ResponderDeps,
    readonly msg1: Msg1,
    private readonly self: LocalCallee,
    e: Ephemeral = ephemeral(),
  ) {
    if (msg1.to !== self.name) throw new ExchangeError("wrong-peer", `message 1 is for "${msg1.to}", not "${self.name}"`);
    if (deps.seen.has(msg1.sessionId)) throw new ExchangeError("replay", "message 1 repeats a session id already seen");
    const match = matchSettings(suiteCandidates(msg1.suites), suiteCandidates(self.suites), deps.matching ?? DEFAULT_MATCHING);
    if (!match) throw new ExchangeError("no-common-suite", "no cipher suite both devices registered");
    const suite = match.callee.id as number;
    const th1 = sha256(encodeMsg1(msg1));
    const th2 = th2Of(th1, e.publicKey, suite);
    const prk = extract(e.privateKey, msg1.eA, th2);
    if (!deps.seen.admit(msg1.sessionId, deps.now())) {
      prk.fill(0);
      throw new ExchangeError("replay", "message 1 repeats a session id already seen");
    }
    const mac = hmac(expand(prk, "mac2", th2, HASH_LENGTH), macInput("KP exchange mac2", th2, self.name, self.cert, self.gatewayCert));
    const sig = ed25519Sign(self.identitySeed, sigInput("KP exchange sig2", th2, self.cert, self.gatewayCert, mac));
    this.msg2 = { sessionId: msg1.sessionId, eB: e.publicKey, suite, cert: self.cert, gatewayCert: self.gatewayCert, sig, mac };
    const th3 = sha256(encode([th2, self.cert, self.gatewayCert, sig, mac]));
    this.state = { s: "wait-msg3", prk, th3 };
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

  /** Verifies msg3; the result is the SA to install and msg4 the confirmation to send. */
  async onMsg3(m: Msg3): Promise<{ msg4: Msg4; result: ExchangeResult }> {
    const st = this.expect("message 3");
    checkSession(this.msg1.sessionId, m.sessionId, "message 3");
    const k3 = expand(st.prk, "mac3", st.th3, HASH_LENGTH);
    if (!ctEqual(hmac(k3, macInput("KP exchange mac3", st.th3, this.msg1.from, m.cert, m.gatewayCert)), m.mac)) {
      throw new ExchangeError("bad-mac", "message 3: MAC does not verify (altered transcript or ephemeral key)");
    }
    const peerKey = await trustedPeerKey(this.deps, m.cert, m.gatewayCert, this.msg1.from);
    if (!ed25519Verify(peerKey, sigInput("KP exchange sig3", st.th3, m.cert, m.gatewayCert, m.mac), m.sig)) {
      throw new ExchangeError("bad-signature", `message 3: signature does not verify under ${this.msg1.from}'s certified key`);
    }
    this.expect("message 3");
    const th4 = sha256(encode([st.th3, m.cert, m.gatewayCert, m.sig, m.mac]));
    const { seed, spi, mac4 } = deriveResult(st.prk, th4);
    st.prk.fill(0);
    this.state = { s: "done" };
    const result: ExchangeResult = { sessionId: this.msg1.sessionId, role: "responder", self: this.self.name, peer: this.msg1.from, app: this.msg1.app, suite: this.msg2.suite, seed, spi };
    return { msg4: { sessionId: this.msg1.sessionId, mac: mac4 }, result };
  }

  abort(reason: string): void {
    if (this.state.s === "wait-msg3") this.state.prk.fill(0);
    this.state = { s: "failed", reason };
  }
}
