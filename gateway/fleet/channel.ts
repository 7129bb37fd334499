// The pairwise channel between two gateways: trust paid once per gateway pair, not once per message.
//
// Without it every interlink envelope is signed (Ed25519) and, when secret, encrypted to the
// recipient's certified X25519 key with a fresh ephemeral: a session setup across gateways cost the
// two gateways 10 signatures, 10 verifications, 6 key pairs and 10 shared secrets (docs/BENCHMARKS.md).
// With it, two gateways authenticate each other once, with their fleet certificates and an ephemeral
// X25519 exchange, and every later envelope between them is one AES-256-GCM seal under a key of that
// channel. docs/PROTOCOL.md, "Pairwise channel between gateways", is the full description.
//
// The handshake rides on two ordinary signed envelopes (gateway/fleet/interlink.ts), so it inherits
// their checks (signature under the certified key, the verifier's judgement of the certificate,
// addressed to us, timestamp window, msgId dedupe):
//   request  kp.channel.open  I -> R  body {c: channelId (16), e: eI (32)}
//   response                  R -> I  body {c: channelId, e: eR (32), p: eI}
// Each signature covers both identities (the envelope's from and to), and R's covers eI too (`p`), so
// each side has signed both ephemerals under its own name for the other's name: the signed
// Diffie-Hellman of ISO/IEC 9798-3 with identities inside the signatures, which a man in the middle
// cannot splice (neither an unknown-key-share nor a misbinding: swapping an ephemeral breaks a
// signature, and a signature made for another peer names that peer).
//   TH           = SHA-256(cbor(["KP channel v1", I, R, channelId, eI, eR]))
//   key(sender)  = HKDF-SHA256(salt = TH, ikm = X25519(e, E), info = cbor(["KP channel v1", "key", sender]), 32)
// One key per direction, named by the sending gateway's id, so the two directions never share a key
// and neither side can be confused about its role.
//
// Hybrid post-quantum (the fleet's key-agreement policy, as for the exchange between gateways): the
// request may also carry an ML-KEM-768 encapsulation key `k` (FIPS 203), and the answer then the
// ciphertext `m` encapsulated to it. The two secrets are combined as TLS's X25519MLKEM768 does, by
// concatenation (ML-KEM's first), and the transcript covers both:
//   TH  = SHA-256(cbor(["KP channel v1", I, R, channelId, eI, eR, k, m]))       (k, m only when hybrid)
//   ikm = ML-KEM.Decaps(m) || X25519(e, E)
// `k` is inside I's signature and `m` inside R's, so neither can be stripped on the way: a
// "hybrid-only" gateway refuses a channel without them ("downgrade"), a "hybrid" one takes either.
//
// A message on the channel is a COSE_Encrypt0 (RFC 9052 §5.2), AES-256-GCM (alg 3):
//   16([protected = bstr .cbor {1: 3, 4: channelId, -65537: from, -65538: to, -65539: seq}, {}, ciphertext])
//   nonce     = 4 zero bytes || seq, 8 bytes big-endian   (seq = 1, 2, 3 ... per direction; never reused)
//   AAD       = Enc_structure ["Encrypt0", protected, h'']
//   plaintext = cbor({3: sessionId, 4: msgId, 5: type, 6: ts, 7: kind, 8: body, 10: re (responses)})
// The keys live only in this process's memory and each channel's come from a fresh ephemeral
// exchange, so a restart can never bring back a (key, seq) pair: nonces cannot repeat across reboots.
// A replayed channel message opens (it is genuine) and is then refused by the interlink's msgId and
// timestamp window, exactly as a replayed signed envelope is.
//
// Lifetime: a channel is used for sending for `lifetime` seconds (default one hour) and at most
// MAX_SEQ messages; a new one is opened before that (at 80% of the lifetime), and the old one is still
// accepted for `grace` seconds after its end (the interlink's clock skew), then its keys are wiped.
// It also ends at once when the peer's certificate is no longer good (Interlink.revalidateChannels,
// called when a newer fleet revocation list arrives, and at each use once the verifier's answer ran out).

import { createCipheriv, createDecipheriv, createHash, hkdfSync } from "node:crypto";
import { ml_kem768 } from "@noble/post-quantum/ml-kem.js";
import { ctEqual } from "../../firmware/bytes.ts";
import { decipherSecret } from "../crypto/secret-bytes.ts";
import { encode } from "../encoding/cbor.ts";
import { decodeDeterministic } from "../encoding/cose.ts";
import { isGatewayId } from "./fleet.ts";

export const CHANNEL_OPEN_TYPE = "kp.channel.open";
export const CHANNEL_RESET_TYPE = "kp.channel.reset";
export const CHANNEL_ID_LENGTH = 16;
export const X25519_LENGTH = 32;
/** ML-KEM-768 (FIPS 203): encapsulation key and ciphertext lengths. */
export const MLKEM768_KEY_LENGTH = 1184;
export const MLKEM768_CIPHERTEXT_LENGTH = 1088;

/** The key agreement a gateway's channels offer and accept: the fleet's policy for the exchange. */
export type ChannelKeyAgreement = "x25519" | "hybrid" | "hybrid-only";
/** Seconds a channel is used for sending. */
export const DEFAULT_CHANNEL_LIFETIME = 3600;
/** The last sequence number a channel may use: then a new channel is opened. */
export const MAX_SEQ = 0xffffffff;
/** A new channel is opened once the current one has lived this share of its lifetime. */
export const RENEW_AT = 0.8;

const LABEL = "KP channel v1";
const ENCRYPT0_TAG_HEAD = 0xd0; // CBOR tag 16: COSE_Encrypt0_Tagged
const ALG_A256GCM = 3;
const H_ALG = 1;
const H_KID = 4;
const H_FROM = -65537;
const H_TO = -65538;
const H_SEQ = -65539;
const GCM_TAG = 16;
const EMPTY = new Uint8Array(0);

export class ChannelError extends Error {
  readonly code: "malformed" | "decrypt-failed";
  constructor(code: "malformed" | "decrypt-failed", message: string) {
    super(message);
    this.name = "ChannelError";
    this.code = code;
  }
}

// ---------------------------------------------------------------------------------------------------
// the handshake's bodies and key schedule

export interface OpenRequest {
  channelId: Uint8Array;
  ephemeral: Uint8Array;
  /** ML-KEM-768 encapsulation key: present when the initiator offers the hybrid. */
  kemKey?: Uint8Array;
}

export interface OpenAnswer {
  channelId: Uint8Array;
  ephemeral: Uint8Array;
  /** The initiator's ephemeral, echoed so that the responder's signature covers both. */
  peerEphemeral: Uint8Array;
  /** ML-KEM-768 ciphertext to the request's key: present when the responder took the hybrid. */
  kemCiphertext?: Uint8Array;
}

const isBytes = (v: unknown, n: number): v is Uint8Array => v instanceof Uint8Array && v.length === n;

export function openRequestBody(r: OpenRequest): Map<string, Uint8Array> {
  const m = new Map([["c", r.channelId], ["e", r.ephemeral]]);
  if (r.kemKey) m.set("k", r.kemKey);
  return m;
}

export function openAnswerBody(a: OpenAnswer): Map<string, Uint8Array> {
  const m = new Map([["c", a.channelId], ["e", a.ephemeral], ["p", a.peerEphemeral]]);
  if (a.kemCiphertext) m.set("m", a.kemCiphertext);
  return m;
}

/** Checks that `body` is a map of exactly the `required` keys and at most the one `optional`. */
function onlyKeys(body: unknown, required: string[], optional: string, what: string): Map<unknown, unknown> {
  const shape = `{${[...required, `${optional}?`].join(", ")}}`;
  if (!(body instanceof Map)) throw new ChannelError("malformed", `${what} must be ${shape}`);
  const allowed = body.size === required.length || (body.size === required.length + 1 && body.has(optional));
  if (!allowed || !required.every((k) => body.has(k))) throw new ChannelError("malformed", `${what} must be ${shape}`);
  return body;
}

function channelIdAndKey(m: Map<unknown, unknown>): { channelId: Uint8Array; ephemeral: Uint8Array } {
  const channelId: unknown = m.get("c");
  const ephemeral: unknown = m.get("e");
  if (!isBytes(channelId, CHANNEL_ID_LENGTH)) throw new ChannelError("malformed", `channel id must be ${CHANNEL_ID_LENGTH} bytes`);
  if (!isBytes(ephemeral, X25519_LENGTH)) throw new ChannelError("malformed", `channel ephemeral key must be ${X25519_LENGTH} bytes`);
  return { channelId, ephemeral };
}

export function readOpenRequest(body: unknown): OpenRequest {
  const m = onlyKeys(body, ["c", "e"], "k", "channel open");
  const r: OpenRequest = channelIdAndKey(m);
  const kemKey: unknown = m.get("k");
  if (kemKey !== undefined && !isBytes(kemKey, MLKEM768_KEY_LENGTH)) throw new ChannelError("malformed", `channel open's ML-KEM-768 key must be ${MLKEM768_KEY_LENGTH} bytes`);
  if (kemKey) r.kemKey = kemKey;
  return r;
}

export function readOpenAnswer(body: unknown): OpenAnswer {
  const m = onlyKeys(body, ["c", "e", "p"], "m", "channel open answer");
  const peerEphemeral: unknown = m.get("p");
  if (!isBytes(peerEphemeral, X25519_LENGTH)) throw new ChannelError("malformed", `channel open answer's echoed key must be ${X25519_LENGTH} bytes`);
  const a: OpenAnswer = { ...channelIdAndKey(m), peerEphemeral };
  const kemCiphertext: unknown = m.get("m");
  if (kemCiphertext !== undefined && !isBytes(kemCiphertext, MLKEM768_CIPHERTEXT_LENGTH)) throw new ChannelError("malformed", `channel open answer's ML-KEM-768 ciphertext must be ${MLKEM768_CIPHERTEXT_LENGTH} bytes`);
  if (kemCiphertext) a.kemCiphertext = kemCiphertext;
  return a;
}

export function readResetBody(body: unknown): Uint8Array {
  if (!(body instanceof Map) || body.size !== 1 || !isBytes(body.get("c"), CHANNEL_ID_LENGTH)) throw new ChannelError("malformed", "channel reset must be {c: channel id}");
  return body.get("c") as Uint8Array;
}

export interface Handshake {
  initiator: string;
  responder: string;
  channelId: Uint8Array;
  initiatorEphemeral: Uint8Array;
  responderEphemeral: Uint8Array;
  /** Both present for a hybrid channel, neither for a classical one. */
  kemKey?: Uint8Array;
  kemCiphertext?: Uint8Array;
}

export function transcriptHash(h: Handshake): Uint8Array {
  const fields: unknown[] = [LABEL, h.initiator, h.responder, h.channelId, h.initiatorEphemeral, h.responderEphemeral];
  if (h.kemKey && h.kemCiphertext) fields.push(h.kemKey, h.kemCiphertext);
  return new Uint8Array(createHash("sha256").update(encode(fields)).digest());
}

/** A fresh ML-KEM-768 key pair (@noble/post-quantum, as the exchange's). */
export function kemKeyPair(): { publicKey: Uint8Array; secretKey: Uint8Array } {
  return ml_kem768.keygen();
}

/** Encapsulation to a channel opening's key; an unusable key (FIPS 203's modulus check) is malformed. */
export function kemEncapsulate(kemKey: Uint8Array): { cipherText: Uint8Array; sharedSecret: Uint8Array } {
  try {
    return ml_kem768.encapsulate(kemKey);
  } catch {
    throw new ChannelError("malformed", "channel open's ML-KEM-768 key is not a valid encapsulation key");
  }
}

export function kemDecapsulate(cipherText: Uint8Array, secretKey: Uint8Array): Uint8Array {
  return ml_kem768.decapsulate(cipherText, secretKey);
}

/** The key-derivation input: ML-KEM's secret first, then X25519's, as X25519MLKEM768 concatenates them. */
export function combinedSecret(x25519: Uint8Array, kem?: Uint8Array): Uint8Array {
  if (!kem) return x25519;
  const out = new Uint8Array(kem.length + x25519.length);
  out.set(kem, 0);
  out.set(x25519, kem.length);
  return out;
}

/** The key of the direction `sender` sends in. The shared secret stays the caller's to wipe. */
export function directionKey(shared: Uint8Array, transcript: Uint8Array, sender: string): Buffer {
  return Buffer.from(hkdfSync("sha256", shared, transcript, encode([LABEL, "key", sender]), 32));
}

// ---------------------------------------------------------------------------------------------------
// messages on the channel

/** An interlink envelope's fields that travel inside the channel's ciphertext. */
export interface ChannelPlaintext {
  sessionId: Uint8Array;
  msgId: Uint8Array;
  type: string;
  ts: number;
  kind: number;
  /** CBOR of the body. */
  body: Uint8Array;
  re?: Uint8Array;
}

/** What can be read of a channel message before it is opened. */
export interface ChannelHeader {
  channelId: Uint8Array;
  from: string;
  to: string;
  seq: number;
  protectedBytes: Uint8Array;
  ciphertext: Uint8Array;
}

/** Whether bytes are a channel message (COSE_Encrypt0) rather than a signed envelope (COSE_Sign1). */
export function isChannelMessage(bytes: Uint8Array): boolean {
  return bytes.length > 0 && bytes[0] === ENCRYPT0_TAG_HEAD;
}

function nonce(seq: number): Buffer {
  const n = Buffer.alloc(12);
  n.writeUIntBE(seq, 6, 6); // seq < 2^32: the top bytes stay zero
  return n;
}

function aad(protectedBytes: Uint8Array): Uint8Array {
  return encode(["Encrypt0", protectedBytes, EMPTY]);
}

const bad = (why: string): ChannelError => new ChannelError("malformed", why);

/** Takes a channel message apart WITHOUT opening it. */
export function parseChannelMessage(bytes: Uint8Array): ChannelHeader {
  if (!isChannelMessage(bytes)) throw bad("not a channel message (expected CBOR tag 16, COSE_Encrypt0)");
  let outer: unknown;
  let header: unknown;
  try {
    outer = decodeDeterministic(bytes.subarray(1), "channel message");
    if (!Array.isArray(outer) || outer.length !== 3) throw bad("channel message must be an array of 3 items");
    if (!(outer[0] instanceof Uint8Array)) throw bad("channel message protected header must be a byte string");
    header = decodeDeterministic(outer[0], "channel message protected header");
  } catch (e) {
    if (e instanceof ChannelError) throw e;
    throw bad(e instanceof Error ? e.message : String(e));
  }
  const [protectedBytes, unprotected, ciphertext] = outer as unknown[];
  if (!(unprotected instanceof Map) || unprotected.size !== 0) throw bad("channel message unprotected header must be empty");
  if (!(ciphertext instanceof Uint8Array) || ciphertext.length < GCM_TAG) throw bad("channel message ciphertext must be bytes, at least its tag");
  if (!(header instanceof Map) || header.size !== 5 || header.get(H_ALG) !== ALG_A256GCM) throw bad("channel message protected header must be {1: 3 (A256GCM), 4, -65537, -65538, -65539}");
  const channelId: unknown = header.get(H_KID);
  const from: unknown = header.get(H_FROM);
  const to: unknown = header.get(H_TO);
  const seq: unknown = header.get(H_SEQ);
  if (!isBytes(channelId, CHANNEL_ID_LENGTH)) throw bad(`channel id must be ${CHANNEL_ID_LENGTH} bytes`);
  if (!isGatewayId(from) || !isGatewayId(to)) throw bad("channel message from and to must be gateway ids");
  if (typeof seq !== "number" || !Number.isSafeInteger(seq) || seq < 1 || seq > MAX_SEQ) throw bad(`channel message seq must be 1-${MAX_SEQ}`);
  return { channelId, from, to, seq, protectedBytes: protectedBytes as Uint8Array, ciphertext };
}

function encodePlaintext(p: ChannelPlaintext): Uint8Array {
  const m = new Map<number, unknown>([
    [3, p.sessionId],
    [4, p.msgId],
    [5, p.type],
    [6, p.ts],
    [7, p.kind],
    [8, p.body],
  ]);
  if (p.re) m.set(10, p.re);
  return encode(m);
}

function readPlaintext(bytes: Uint8Array): ChannelPlaintext {
  let m: unknown;
  try {
    m = decodeDeterministic(bytes, "channel plaintext");
  } catch (e) {
    throw bad(e instanceof Error ? e.message : String(e));
  }
  if (!(m instanceof Map) || m.size < 6 || m.size > 7) throw bad("channel plaintext must be a map of 6 or 7 fields");
  const p: ChannelPlaintext = {
    sessionId: m.get(3) as Uint8Array,
    msgId: m.get(4) as Uint8Array,
    type: m.get(5) as string,
    ts: m.get(6) as number,
    kind: m.get(7) as number,
    body: m.get(8) as Uint8Array,
  };
  if (m.has(10)) p.re = m.get(10) as Uint8Array;
  if ([...m.keys()].some((k) => ![3, 4, 5, 6, 7, 8, 10].includes(k as number))) throw bad("channel plaintext has unknown fields");
  return p; // each field's shape is checked by the interlink, as for a signed envelope
}

// ---------------------------------------------------------------------------------------------------
// one channel

export interface ChannelInit {
  channelId: Uint8Array;
  self: string;
  peer: string;
  /** The peer's gateway certificate, judged again while the channel lives. */
  peerCert: Uint8Array;
  sendKey: Buffer;
  receiveKey: Buffer;
  /** Seconds since the epoch. */
  createdAt: number;
  lifetime: number;
  /** Whether this side opened it. */
  initiated: boolean;
  /** Whether its keys came from X25519 + ML-KEM-768. */
  hybrid?: boolean;
  /** The peer's instance (InterlinkOptions.instance), when the peer named one in the opening: a channel
   *  is between two processes, so its messages go to that instance's own topic. */
  peerInstance?: string;
  /** Messages already sent under these keys: 0 (the default) for every channel the interlink makes;
   *  tests start near MAX_SEQ to reach the end without sealing 2^32 messages. */
  sent?: number;
}

export class PairwiseChannel {
  readonly id: Uint8Array;
  readonly idHex: string;
  readonly self: string;
  readonly peer: string;
  readonly peerCert: Uint8Array;
  readonly createdAt: number;
  readonly lifetime: number;
  readonly initiated: boolean;
  readonly hybrid: boolean;
  readonly peerInstance?: string;
  private sendKey: Buffer;
  private receiveKey: Buffer;
  private seq = 0;
  private ended = false;

  constructor(i: ChannelInit) {
    this.id = new Uint8Array(i.channelId);
    this.idHex = Buffer.from(i.channelId).toString("hex");
    this.self = i.self;
    this.peer = i.peer;
    this.peerCert = i.peerCert;
    this.sendKey = i.sendKey;
    this.receiveKey = i.receiveKey;
    this.createdAt = i.createdAt;
    this.lifetime = i.lifetime;
    this.initiated = i.initiated;
    this.hybrid = i.hybrid ?? false;
    if (i.peerInstance !== undefined) this.peerInstance = i.peerInstance;
    this.seq = i.sent ?? 0;
  }

  get isEnded(): boolean {
    return this.ended;
  }

  get sent(): number {
    return this.seq;
  }

  /** May carry a new message at `now`. */
  canSend(now: number): boolean {
    return !this.ended && this.seq < MAX_SEQ && now < this.createdAt + this.lifetime;
  }

  /** Time to open its successor. */
  due(now: number): boolean {
    return this.seq >= MAX_SEQ * RENEW_AT || now >= this.createdAt + this.lifetime * RENEW_AT;
  }

  /** Still accepted from the peer at `now`: its lifetime and `grace` seconds more. */
  canReceive(now: number, grace: number): boolean {
    return !this.ended && now < this.createdAt + this.lifetime + grace;
  }

  seal(p: ChannelPlaintext): Uint8Array {
    if (this.ended || this.seq >= MAX_SEQ) throw new Error("channel is used up"); // callers check canSend first
    const seq = ++this.seq;
    const protectedBytes = encode(new Map<number, unknown>([
      [H_ALG, ALG_A256GCM],
      [H_KID, this.id],
      [H_FROM, this.self],
      [H_TO, this.peer],
      [H_SEQ, seq],
    ]));
    const c = createCipheriv("aes-256-gcm", this.sendKey, nonce(seq));
    c.setAAD(aad(protectedBytes));
    const ciphertext = Buffer.concat([c.update(encodePlaintext(p)), c.final(), c.getAuthTag()]);
    const body = encode([protectedBytes, new Map(), new Uint8Array(ciphertext)]);
    const out = new Uint8Array(1 + body.length);
    out[0] = ENCRYPT0_TAG_HEAD;
    out.set(body, 1);
    return out;
  }

  /** The plaintext of a message of this channel from the peer, or ChannelError; changes nothing. */
  open(h: ChannelHeader): ChannelPlaintext {
    if (this.ended) throw new ChannelError("decrypt-failed", "channel has ended");
    if (!ctEqual(h.channelId, this.id) || h.from !== this.peer || h.to !== this.self) throw new ChannelError("decrypt-failed", "message is not of this channel's receiving direction");
    let plain: Uint8Array;
    try {
      const d = createDecipheriv("aes-256-gcm", this.receiveKey, nonce(h.seq));
      d.setAAD(aad(h.protectedBytes));
      d.setAuthTag(h.ciphertext.subarray(h.ciphertext.length - GCM_TAG));
      plain = decipherSecret(d, h.ciphertext.subarray(0, h.ciphertext.length - GCM_TAG));
    } catch {
      throw new ChannelError("decrypt-failed", "channel message does not authenticate (altered, or made with other keys)");
    }
    return readPlaintext(plain);
  }

  /** Ends the channel: its keys are wiped and it neither sends nor opens anything again. */
  end(): void {
    this.ended = true;
    this.sendKey.fill(0);
    this.receiveKey.fill(0);
  }
}
