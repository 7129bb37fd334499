// The verifier (seed 003 Fig. 3, verification server 20): "is this certificate valid now?", answered
// from the validity window, the signature chain up to the fleet CA and the fleet's revocation list,
// and signed by the verifier's own Ed25519 key so the answer can travel (checklist 9-10).
//
// Two kinds of certificate reach it:
//   - a gateway certificate (gateway/fleet/fleet.ts): iss = fleet id, signed by the fleet CA;
//   - a device certificate (gateway/encoding/cwt.ts): iss = gateway id, signed by that gateway's key, which the
//     chain's gateway certificate (sub = that gateway id) certifies. The device's name is sub@iss.
//
// Answer (COSE_Sign1 by the verifier over a CBOR map):
//   { 0: "KP verifier answer", 1: status, 2: subject, 3: checkedAt, 4: validUntil,
//     5: SHA-256 of the certificate asked about, 6: reason, 7: revocation list serial, 8: verifier id }
//
// Only a "good" answer may be cached, and only while now < validUntil = min(certificate exp, each
// chain certificate's exp, the revocation list's nextUpdate, checkedAt + maxAnswerLifetime). That is
// the bound on how long a revocation takes to bite once the verifier holds the new list (docs/FLEET.md).

import { createHash } from "node:crypto";
import { toHex } from "../../firmware/bytes.ts";
import { encode } from "../encoding/cbor.ts";
import { decodeDeterministic, signSign1, verifySign1, CoseError } from "../encoding/cose.ts";
import { CertError, readCertificateUnverified, verifyCertificate } from "../encoding/cwt.ts";
import type { Ed25519KeyPair } from "../crypto/ed25519.ts";
import {
  acceptRevocationList,
  deviceName,
  FleetError,
  readGatewayCertificateUnverified,
  verifyGatewayCertificateSignature,
  type GatewayCertClaims,
  type RevocationList,
  type TrustAnchor,
} from "./fleet.ts";
import type { GatewayPeer, Interlink, PeerTrust } from "./interlink.ts";
import { InterlinkError } from "./interlink.ts";

export type VerificationStatus =
  | "good"
  | "revoked"
  | "expired"
  | "not-yet-valid"
  | "bad-signature"
  | "unknown-issuer"
  | "malformed"
  | "revocation-unknown"; // no revocation list, or only a stale one: the verifier cannot say "good"

const STATUSES: readonly VerificationStatus[] = ["good", "revoked", "expired", "not-yet-valid", "bad-signature", "unknown-issuer", "malformed", "revocation-unknown"];

export interface VerificationAnswer {
  status: VerificationStatus;
  /** Gateway id, or "name@domain" for a device; "" when the certificate could not be read at all. */
  subject: string;
  checkedAt: number;
  /** Trust a "good" answer only while now < validUntil. For any other status it equals checkedAt. */
  validUntil: number;
  /** SHA-256 of the certificate the answer is about: binds the answer to the question. */
  certHash: Uint8Array;
  /** A sentence for logs and errors (no key material). */
  reason: string;
  /** Serial of the revocation list the answer was based on (0: none). */
  revocationSerial: number;
  verifierId: string;
}

export interface VerifierOptions {
  anchor: TrustAnchor;
  /** Signs the answers. */
  key: Ed25519KeyPair;
  verifierId: string;
  /** Longest a "good" answer may be cached, seconds (default 300). */
  maxAnswerLifetime?: number;
}

export const DEFAULT_MAX_ANSWER_LIFETIME = 300;
const ANSWER_TYPE = "KP verifier answer";

export function certificateHash(cert: Uint8Array): Uint8Array {
  return new Uint8Array(createHash("sha256").update(cert).digest());
}

type Verdict = { status: VerificationStatus; subject: string; reason: string; validUntil: number };

export class Verifier {
  private list: RevocationList | undefined;
  private readonly maxAnswerLifetime: number;

  constructor(private readonly opts: VerifierOptions) {
    this.maxAnswerLifetime = opts.maxAnswerLifetime ?? DEFAULT_MAX_ANSWER_LIFETIME;
    if (!Number.isSafeInteger(this.maxAnswerLifetime) || this.maxAnswerLifetime < 0) throw new TypeError("maxAnswerLifetime must be whole seconds");
  }

  get revocationSerial(): number {
    return this.list?.serial ?? 0;
  }

  /**
   * Takes a newer signed revocation list. Throws FleetError (bad-signature, unknown-issuer, malformed,
   * rollback for a serial not above the held one) and then keeps the list it had.
   */
  updateRevocationList(signed: Uint8Array): RevocationList {
    const next = acceptRevocationList(this.list, signed, this.opts.anchor.fleetId, this.opts.anchor.caPublicKey);
    this.list = next;
    return next;
  }

  /** The verdict, unsigned. chain: gateway certificates that may have issued cert (order does not matter). */
  check(cert: Uint8Array, chain: readonly Uint8Array[], now: number): VerificationAnswer {
    if (typeof now !== "number" || !Number.isFinite(now)) throw new TypeError("now must be a finite number of seconds");
    const v = this.judge(cert, chain, now);
    return {
      status: v.status,
      subject: v.subject,
      checkedAt: now,
      validUntil: v.status === "good" ? Math.min(v.validUntil, now + this.maxAnswerLifetime) : now,
      certHash: certificateHash(cert instanceof Uint8Array ? cert : new Uint8Array(0)),
      reason: v.reason,
      revocationSerial: this.revocationSerial,
      verifierId: this.opts.verifierId,
    };
  }

  /** The verdict signed by the verifier: what travels (seed 003 M8a/M8b). */
  answer(cert: Uint8Array, chain: readonly Uint8Array[], now: number): Uint8Array {
    return signAnswer(this.check(cert, chain, now), this.opts.key.seed);
  }

  private judge(cert: Uint8Array, chain: readonly Uint8Array[], now: number): Verdict {
    if (!(cert instanceof Uint8Array)) return { status: "malformed", subject: "", reason: "certificate must be bytes", validUntil: now };
    let gateway: GatewayCertClaims | undefined;
    try {
      gateway = readGatewayCertificateUnverified(cert);
    } catch {
      gateway = undefined;
    }
    return gateway ? this.judgeGateway(cert, gateway, now) : this.judgeDevice(cert, chain, now);
  }

  private judgeGateway(cert: Uint8Array, unverified: GatewayCertClaims, now: number): Verdict {
    const subject = unverified.sub;
    const no = (status: VerificationStatus, reason: string): Verdict => ({ status, subject, reason, validUntil: now });
    if (unverified.iss !== this.opts.anchor.fleetId) return no("unknown-issuer", `gateway certificate is from fleet "${unverified.iss}", not "${this.opts.anchor.fleetId}"`);
    let claims: GatewayCertClaims;
    try {
      claims = verifyGatewayCertificateSignature(cert, this.opts.anchor.caPublicKey);
    } catch (e) {
      if (e instanceof FleetError && e.code === "bad-signature") return no("bad-signature", "gateway certificate is not signed by the fleet CA");
      return no("malformed", e instanceof Error ? e.message : "gateway certificate is malformed");
    }
    if (now < claims.nbf) return no("not-yet-valid", `gateway certificate is not valid before ${claims.nbf}`);
    if (now >= claims.exp) return no("expired", `gateway certificate expired at ${claims.exp}`);
    const list = this.freshList(now);
    if (typeof list === "string") return no("revocation-unknown", list);
    if (list.gateways.includes(claims.sub)) return no("revoked", `gateway "${claims.sub}" is revoked (list serial ${list.serial})`);
    if (list.certIds.includes(toHex(claims.cti))) return no("revoked", `gateway certificate ${toHex(claims.cti)} is revoked (list serial ${list.serial})`);
    return { status: "good", subject, reason: "valid", validUntil: Math.min(claims.exp, list.nextUpdate) };
  }

  private judgeDevice(cert: Uint8Array, chain: readonly Uint8Array[], now: number): Verdict {
    let unverified: { iss: string; sub: string };
    try {
      unverified = readCertificateUnverified(cert);
    } catch (e) {
      return { status: "malformed", subject: "", reason: e instanceof Error ? e.message : "certificate is malformed", validUntil: now };
    }
    const subject = deviceName(unverified.sub, unverified.iss);
    const no = (status: VerificationStatus, reason: string): Verdict => ({ status, subject, reason, validUntil: now });
    // The issuing gateway's certificate: the one in the chain naming the device certificate's issuer.
    let issuer: { cert: Uint8Array; claims: GatewayCertClaims } | undefined;
    for (const c of chain) {
      try {
        const claims = readGatewayCertificateUnverified(c);
        if (claims.sub === unverified.iss) issuer = { cert: c, claims };
      } catch {
        // not a gateway certificate: not a candidate
      }
      if (issuer) break;
    }
    if (!issuer) return no("unknown-issuer", `no certificate for the issuing gateway "${unverified.iss}" in the chain`);
    const up = this.judgeGateway(issuer.cert, issuer.claims, now);
    if (up.status !== "good") return no(up.status, `issuing gateway "${unverified.iss}": ${up.reason}`);
    let claims;
    try {
      claims = verifyCertificate(cert, issuer.claims.signingKey, now);
    } catch (e) {
      if (e instanceof CertError) {
        if (e.code === "bad-signature" || e.code === "bad-alg") return no("bad-signature", `device certificate is not signed by gateway "${unverified.iss}"`);
        if (e.code === "expired" || e.code === "not-yet-valid") return no(e.code, `device certificate: ${e.message}`);
      }
      return no("malformed", e instanceof Error ? e.message : "device certificate is malformed");
    }
    const list = this.freshList(now) as RevocationList; // judgeGateway said good, so it is fresh
    if (list.devices.includes(subject)) return no("revoked", `device "${subject}" is revoked (list serial ${list.serial})`);
    if (list.certIds.includes(toHex(claims.cti))) return no("revoked", `device certificate ${toHex(claims.cti)} is revoked (list serial ${list.serial})`);
    return { status: "good", subject, reason: "valid", validUntil: Math.min(claims.exp, up.validUntil) };
  }

  /** The held list if it may be relied on now, else why not. */
  private freshList(now: number): RevocationList | string {
    if (!this.list) return "the verifier holds no revocation list";
    if (now >= this.list.nextUpdate) return `the revocation list (serial ${this.list.serial}) went stale at ${this.list.nextUpdate}`;
    if (now < this.list.issuedAt) return `the revocation list (serial ${this.list.serial}) is issued in the future (${this.list.issuedAt})`;
    return this.list;
  }
}

// ---------------------------------------------------------------------------------------------------
// the signed answer

export function signAnswer(a: VerificationAnswer, verifierSeed: Uint8Array): Uint8Array {
  return signSign1(
    encode(
      new Map<number, unknown>([
        [0, ANSWER_TYPE],
        [1, a.status],
        [2, a.subject],
        [3, a.checkedAt],
        [4, a.validUntil],
        [5, a.certHash],
        [6, a.reason],
        [7, a.revocationSerial],
        [8, a.verifierId],
      ]),
    ),
  verifierSeed);
}

export class AnswerError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "AnswerError";
  }
}

/** Checks the verifier's signature and the answer's shape. Throws AnswerError. */
export function verifyAnswer(signed: Uint8Array, verifierPublicKey: Uint8Array): VerificationAnswer {
  let m: unknown;
  try {
    m = decodeDeterministic(verifySign1(signed, verifierPublicKey).payload, "verifier answer");
  } catch (e) {
    if (e instanceof CoseError && e.code === "bad-signature") throw new AnswerError("verifier answer is not signed by the verifier's key", { cause: e });
    throw new AnswerError(`verifier answer is malformed: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
  if (!(m instanceof Map) || m.get(0) !== ANSWER_TYPE) throw new AnswerError("not a verifier answer");
  const a = {
    status: m.get(1),
    subject: m.get(2),
    checkedAt: m.get(3),
    validUntil: m.get(4),
    certHash: m.get(5),
    reason: m.get(6),
    revocationSerial: m.get(7),
    verifierId: m.get(8),
  };
  const whole = (x: unknown): x is number => typeof x === "number" && Number.isSafeInteger(x) && x >= 0;
  if (
    !STATUSES.includes(a.status as VerificationStatus) ||
    typeof a.subject !== "string" ||
    !whole(a.checkedAt) ||
    !whole(a.validUntil) ||
    a.validUntil < a.checkedAt ||
    !(a.certHash instanceof Uint8Array) ||
    a.certHash.length !== 32 ||
    typeof a.reason !== "string" ||
    !whole(a.revocationSerial) ||
    typeof a.verifierId !== "string"
  ) {
    throw new AnswerError("verifier answer has fields of the wrong kind");
  }
  return a as VerificationAnswer;
}

// ---------------------------------------------------------------------------------------------------
// the gateway's side: ask, check, cache

/** Where signed answers come from: a Verifier in the same process, or one across the interlink. */
export type AnswerSource = (cert: Uint8Array, chain: readonly Uint8Array[], now: number) => Promise<Uint8Array>;

export function localSource(verifier: Verifier): AnswerSource {
  return async (cert, chain, now) => verifier.answer(cert, chain, now);
}

export interface CertificateCheckerOptions {
  source: AnswerSource;
  verifierPublicKey: Uint8Array;
  /** Most answers kept (default 1024); the oldest goes first. */
  maxEntries?: number;
  /** How far checkedAt may be from our clock, seconds (default 60). */
  maxSkew?: number;
  /** The serial of the revocation list the asker holds: an answer made from an older list is not
   *  taken (asked again, `staleRetries` times, `staleRetryMs` apart, then refused), so a verifier in
   *  another process that has not yet seen the newest list cannot vouch for a revoked certificate. */
  minSerial?: () => number;
  staleRetries?: number;
  staleRetryMs?: number;
}

/**
 * What a gateway consults for every remote certificate. Each answer is checked (signature, bound to the
 * certificate asked about, checkedAt near our clock); "good" answers are cached by certificate hash
 * until their validUntil and never longer. Nothing else is cached, so a rejected certificate leaves
 * the cache exactly as it was.
 */
export class CertificateChecker {
  private readonly cache = new Map<string, VerificationAnswer>();
  private readonly maxEntries: number;
  private readonly maxSkew: number;
  private generationCount = 0;

  constructor(private readonly opts: CertificateCheckerOptions) {
    this.maxEntries = opts.maxEntries ?? 1024;
    this.maxSkew = opts.maxSkew ?? 60;
  }

  get size(): number {
    return this.cache.size;
  }

  /** The verifier's answer about cert, from the cache while it may be, else asked afresh. */
  async check(cert: Uint8Array, chain: readonly Uint8Array[], now: number): Promise<VerificationAnswer> {
    const hash = certificateHash(cert);
    const key = toHex(hash);
    const cached = this.cache.get(key);
    if (cached && now < cached.validUntil && now >= cached.checkedAt - this.maxSkew) return cached;
    if (cached) this.cache.delete(key); // it ran out: no longer allowed
    const a = await this.ask(cert, chain, now);
    if (toHex(a.certHash) !== key) throw new AnswerError("verifier answered about another certificate");
    if (Math.abs(a.checkedAt - now) > this.maxSkew) throw new AnswerError(`verifier answer was made at ${a.checkedAt}, too far from now (${now})`);
    if (a.status === "good" && now < a.validUntil) {
      if (this.cache.size >= this.maxEntries) this.cache.delete(this.cache.keys().next().value as string);
      this.cache.set(key, a);
    }
    return a;
  }

  /** A signed answer from the source, from a revocation list at least as new as minSerial(). */
  private async ask(cert: Uint8Array, chain: readonly Uint8Array[], now: number): Promise<VerificationAnswer> {
    for (let attempt = 0; ; attempt++) {
      const a = verifyAnswer(await this.opts.source(cert, chain, now), this.opts.verifierPublicKey);
      const min = this.opts.minSerial?.() ?? 0;
      if (a.revocationSerial >= min) return a;
      if (attempt >= (this.opts.staleRetries ?? 5)) throw new AnswerError(`the verifier answered from revocation list serial ${a.revocationSerial}, older than the one held here (${min})`);
      await new Promise((r) => setTimeout(r, this.opts.staleRetryMs ?? 200));
    }
  }

  /** Forget every answer (e.g. when a newer revocation list arrives at this gateway). */
  clear(): void {
    this.cache.clear();
    this.generationCount++;
  }

  /** Goes up with every clear(): a judgement made in an earlier generation must be made again. */
  get generation(): number {
    return this.generationCount;
  }
}

// ---------------------------------------------------------------------------------------------------
// interlink glue: the verifier served to other gateways, and peer trust for the interlink

export const VERIFY_REQUEST_TYPE = "kp.verify";

/** Serves verifier answers over the interlink: body {cert: bstr, chain: [bstr]}, answer: the signed bytes. */
export function serveVerifier(link: Interlink, verifier: Verifier, now: () => number): void {
  link.handle(VERIFY_REQUEST_TYPE, (req) => {
    const body = req.body;
    if (!(body instanceof Map) || !(body.get("cert") instanceof Uint8Array) || !Array.isArray(body.get("chain"))) {
      throw new InterlinkError("malformed", "verify request body must be {cert: bytes, chain: [bytes]}");
    }
    const chain = (body.get("chain") as unknown[]).filter((c): c is Uint8Array => c instanceof Uint8Array);
    return { body: verifier.answer(body.get("cert") as Uint8Array, chain, now()) };
  });
}

/** An AnswerSource that asks a verifier served by the gateway (or standalone verifier) verifierId. */
export function remoteSource(link: Interlink, verifierId: string): AnswerSource {
  return async (cert, chain) => {
    const r = await link.request(verifierId, VERIFY_REQUEST_TYPE, new Map<string, unknown>([["cert", cert], ["chain", [...chain]]]));
    if (!(r instanceof Uint8Array)) throw new AnswerError("verifier answered with something other than bytes");
    return r;
  };
}

/**
 * Peer trust for the interlink: a gateway's certificate is trusted when the checker says "good", and
 * then its keys are read from the certificate the verifier vouched for.
 */
export function checkerTrust(checker: CertificateChecker): PeerTrust {
  return {
    async gateway(cert: Uint8Array, now: number): Promise<GatewayPeer> {
      const a = await checker.check(cert, [], now);
      if (a.status !== "good") throw new InterlinkError("untrusted-peer", `peer certificate is ${a.status}: ${a.reason}`);
      const claims = readGatewayCertificateUnverified(cert); // the verifier checked exactly these bytes
      return { gatewayId: claims.sub, signingKey: claims.signingKey, encryptionKey: claims.encryptionKey, validUntil: a.validUntil };
    },
    epoch: () => checker.generation,
  };
}
