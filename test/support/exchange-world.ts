// Two gateways of one fleet, a verifier and a device on each side, for the tests of the exchange
// between gateways (gateway/crossgw/exchange.ts) that run it in-process: test/exchange-spec.test.ts
// and test/exchange-lifecycle.test.ts. Also the key schedule as docs/PROTOCOL.md §8 states it,
// written out again here (not imported), so that the tests can check what each side computes.
import assert from "node:assert/strict";
import { createDecipheriv, createCipheriv, createHash, createHmac, createPublicKey, diffieHellman, generateKeyPairSync, type KeyObject } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305 } from "../../firmware/crypto/types.ts";
import { encode } from "../../gateway/encoding/cbor.ts";
import { issueCertificate } from "../../gateway/encoding/cwt.ts";
import { generateEd25519, type Ed25519KeyPair } from "../../gateway/crypto/ed25519.ts";
import { encodeMsg1, ExchangeError, Initiator, SeenSessions, type Ephemeral, type ExchangeErrorCode, type KeyAgreementPolicy, type LocalCallee, type LocalParty, type Msg1, type Msg2, type ResponderDeps } from "../../gateway/crossgw/exchange.ts";
import { Fleet, generateX25519 } from "../../gateway/fleet/fleet.ts";
import { CertificateChecker, localSource, Verifier, type AnswerSource } from "../../gateway/fleet/verifier.ts";

export const T0 = 1_800_000_000;
export const AES = SUITE_AES_CCM_16_64_128;
export const XS = SUITE_XSALSA20_POLY1305;

export interface World {
  dir: string;
  verifier: Verifier;
  verifierKey: Ed25519KeyPair;
  clock: { t: number };
  alice: LocalParty;
  bob: LocalCallee;
  /** The identity public keys in Alice's and Bob's certificates. */
  aliceKey: Uint8Array;
  bobKey: Uint8Array;
}

function device(fleet: Fleet, gatewayId: string, id: string): { party: LocalParty; identity: Ed25519KeyPair } {
  const gateway = generateEd25519();
  const gatewayCert = fleet.issueGateway(gatewayId, { signingKey: gateway.publicKey, encryptionKey: generateX25519().publicKey }, T0, 86_400);
  const identity = generateEd25519();
  const cert = issueCertificate({ iss: gatewayId, sub: id, iat: T0, nbf: T0, exp: T0 + 3600, cti: new Uint8Array(16).fill(id.length), publicKey: identity.publicKey }, gateway.seed);
  return { party: { name: `${id}@${gatewayId}`, identitySeed: identity.seed, cert, gatewayCert }, identity };
}

/** Alice at a.example calls Bob at b.example; Bob prefers XSalsa20 (priority 1), Alice AES. */
export function world(): World {
  const dir = mkdtempSync(join(tmpdir(), "kp-exchange-"));
  const fleet = Fleet.create(dir, "kp-fleet", T0);
  const verifierKey = generateEd25519();
  const verifier = new Verifier({ anchor: fleet.anchor, key: verifierKey, verifierId: "verifier.kp" });
  verifier.updateRevocationList(fleet.signedList());
  const a = device(fleet, "a.example", "alice");
  const b = device(fleet, "b.example", "bob");
  return {
    dir, verifier, verifierKey, clock: { t: T0 + 10 },
    alice: a.party, aliceKey: a.identity.publicKey,
    bob: { ...b.party, suites: [[AES, 2], [XS, 1]] }, bobKey: b.identity.publicKey,
  };
}

export function done(w: World): void {
  rmSync(w.dir, { recursive: true, force: true });
}

/** Fresh dependencies for one side (a CertificateChecker caches answers); `source` replaces the verifier. */
export function deps(w: World, o: { source?: AnswerSource; keyAgreement?: KeyAgreementPolicy; timeout?: number } = {}): ResponderDeps {
  return {
    checker: new CertificateChecker({ source: o.source ?? localSource(w.verifier), verifierPublicKey: w.verifierKey.publicKey }),
    now: () => w.clock.t,
    seen: new SeenSessions(),
    ...(o.keyAgreement ? { keyAgreement: o.keyAgreement } : {}),
    ...(o.timeout !== undefined ? { timeout: o.timeout } : {}),
  };
}

/** Alice's side, offering AES (her priority 1) and XSalsa20. */
export function start(w: World, options: ConstructorParameters<typeof Initiator>[5] = {}, d: ResponderDeps = deps(w)): Initiator {
  return new Initiator(d, w.alice, "bob@b.example", "chat", [[AES, 1], [XS, 2]], options);
}

/** Asserts that `p` is refused with `code` and, when given, a message matching `reason`; returns the error. */
export async function refused(p: Promise<unknown> | (() => unknown), code: ExchangeErrorCode, reason?: RegExp): Promise<ExchangeError> {
  let caught: unknown;
  try {
    await (typeof p === "function" ? p() : p);
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof ExchangeError, `expected an ExchangeError ${code}, got ${String(caught)}`);
  assert.equal(caught.code, code, caught.message);
  if (reason) assert.match(caught.message, reason);
  return caught;
}

// ---------------------------------------------------------------------------------------------------
// docs/PROTOCOL.md §8's key schedule

export const sha256 = (b: Uint8Array): Uint8Array => new Uint8Array(createHash("sha256").update(b).digest());
export const hmac = (key: Uint8Array, data: Uint8Array): Uint8Array => new Uint8Array(createHmac("sha256", key).update(data).digest());
/** K(label, TH, n) = HKDF-Expand(PRK, cbor(["KP exchange v1", label, TH]), n), n <= 32. */
export const K = (prk: Uint8Array, label: string, th: Uint8Array, n: number): Uint8Array =>
  hmac(prk, new Uint8Array([...encode(["KP exchange v1", label, th]), 1])).slice(0, n);

/** An X25519 ephemeral whose secret half the test holds. */
export function knownEphemeral(): Ephemeral {
  const { privateKey, publicKey } = generateKeyPairSync("x25519");
  return { privateKey, publicKey: new Uint8Array(Buffer.from(publicKey.export({ format: "jwk" }).x as string, "base64url")) };
}

function x25519(secret: KeyObject, peer: Uint8Array): Uint8Array {
  const publicKey = createPublicKey({ key: { kty: "OKP", crv: "X25519", x: Buffer.from(peer).toString("base64url") }, format: "jwk" });
  return new Uint8Array(diffieHellman({ privateKey: secret, publicKey }));
}

/** TH2 and PRK of a classical run, from the initiator's ephemeral secret and msg2 as sent. */
export function schedule(msg1: Msg1, msg2: Msg2, initiatorSecret: KeyObject): { th2: Uint8Array; prk: Uint8Array } {
  const th2 = sha256(encode([sha256(encodeMsg1(msg1)), msg2.eB, msg2.suite]));
  return { th2, prk: hmac(th2, x25519(initiatorSecret, msg2.eB)) };
}

/** AES-256-GCM under K("k<n>"), K("iv<n>") and AAD cbor(["KP exchange enc<n>", TH]). */
export function gcmOpen(prk: Uint8Array, n: 2 | 3, th: Uint8Array, ciphertext: Uint8Array): Uint8Array {
  const d = createDecipheriv("aes-256-gcm", K(prk, `k${n}`, th, 32), K(prk, `iv${n}`, th, 12));
  d.setAAD(encode([`KP exchange enc${n}`, th])).setAuthTag(ciphertext.subarray(-16));
  return new Uint8Array(Buffer.concat([d.update(ciphertext.subarray(0, -16)), d.final()]));
}
export function gcmSeal(prk: Uint8Array, n: 2 | 3, th: Uint8Array, plaintext: Uint8Array): Uint8Array {
  const c = createCipheriv("aes-256-gcm", K(prk, `k${n}`, th, 32), K(prk, `iv${n}`, th, 12));
  c.setAAD(encode([`KP exchange enc${n}`, th]));
  return new Uint8Array(Buffer.concat([c.update(plaintext), c.final(), c.getAuthTag()]));
}
