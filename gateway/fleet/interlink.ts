// The interlink: request/response between gateways over MQTT, with the broker trusted with nothing.
//
// Topics (one MQTT level per gateway id, which is its domain):
//   keyproxy-cose/v1/interlink/<id>/requests      requests addressed to <id>            QoS 1
//   keyproxy-cose/v1/interlink/<id>/responses     responses and errors addressed to <id> QoS 1
//   keyproxy-cose/v1/interlink/<id>/certificate   <id>'s gateway certificate, retained   QoS 1
//
// Instances (InterlinkOptions.instance: a domain served by several gateway processes at once). Unset,
// everything is as above, byte for byte. Set, the process subscribes to
//   $share/kp-<id>/keyproxy-cose/v1/interlink/<id>/requests   the domain's requests, each to ONE instance
//   keyproxy-cose/v1/interlink/<id>/i/<instance>/requests      requests pinned to it, and channel messages
//   keyproxy-cose/v1/interlink/<id>/i/<instance>/responses     answers to what it sent
//   keyproxy-cose/v1/interlink/<id>/responses                  answers from peers older than instances
// and names itself in every envelope it signs (field 12). An answer goes to the asking instance's own
// responses topic when the request named one, else to <id>/responses as before. A shared subscription
// works with MQTT 3.1.1 clients too in Mosquitto 2.0 (checked: 2.0.11 hands them out in turn); aedes
// 1.x has none, so instances need Mosquitto (or another broker with $share). A channel is between two
// processes: the opening's two signed envelopes name each side's instance, the channel keeps the
// peer's, and every message on it goes to that instance's own requests topic (answers to its own
// responses topic). A channel opening without an instance named is refused by an instance
// ("no-handler": the peer then sends signed envelopes, which any instance can take), and an instance
// whose opening is answered without one resets that channel and does the same: a peer older than
// instances would send channel messages to the shared topic, to any instance. A request on a channel
// pinned to a peer instance that times out ends that channel ("the peer instance did not answer"), so
// the next opening goes through the shared topic to a live instance. An instance that restarted asks
// for a reset of a channel it forgot at the sending instance's own topic when the message's MQTT 5
// responseTopic names one (a hint for where the signed reset goes, nothing more), else at the sender's
// domain (any of its instances). request() takes any instance;
// RequestOptions.instance pins one (its channel, opened to its own topic if need be) and requestTo()
// says which instance answered.
//
// Retained messages are this gateway's to keep: its certificate, and whatever publishRetained was
// given (the fleet's revocation list it holds) are published again at every reconnect, because a
// broker restarted without persistence (Mosquitto's default) forgets them, and a gateway started
// after that could not reach this one ("no certificate published").
//
// Every message is an envelope: COSE_Sign1 (EdDSA) by the sending gateway's certified Ed25519 key over
//   { 0: "KP interlink v1", 1: from, 2: to, 3: sessionId (bstr 16), 4: msgId (bstr 16), 5: type,
//     6: ts (seconds), 7: kind (0 request, 1 response, 2 error), 8: body (bstr), 9: ephemeral X25519
//     key (bstr 32, only when the body is encrypted), 10: re (the request's msgId, responses only),
//     11: the sender's gateway certificate, 12: fromInstance (text, only from an instance) }
// The body is the CBOR of the value; a secret body is encrypted to the recipient's certified X25519
// key, HPKE-style (one-shot base mode, built from node:crypto parts):
//   eph      = fresh X25519 key pair
//   ss       = X25519(eph, recipient)
//   key||iv  = HKDF-SHA256(salt = eph.pub || recipient.pub, ikm = ss, info = "KP interlink body v1", 32 + 12)
//   body     = AES-256-GCM(key, iv, aad = cbor(["KP interlink v1", from, to, sessionId, msgId, type, ts, kind, re]))
// AES-256-GCM from node:crypto: no new dependency, hardware AES, and since every message has its own
// ephemeral key (so its own AEAD key) a nonce can never repeat. The AAD binds the ciphertext to its
// header, and the outer signature binds everything to the sender.
//
// MQTT 5 responseTopic and correlationData are set when the connection is MQTT 5 (Mosquitto), for
// tools such as `mosquitto_sub -V 5` (and as the hint above). They are never relied on: the broker could rewrite them. The
// reply always goes to the signed `from`'s responses topic and is matched by the signed `re`. The
// in-process broker (aedes 1.x) speaks MQTT 3.1.1 only, so protocolVersion 4 must work too, and does.
//
// Receiving, in this order; the first failure rejects the message with a code and a reason and changes
// nothing (no dedupe entry, no handler call, no pending request touched):
//   size -> COSE/CBOR shape -> signature under the key in the sender certificate (read, not yet
//   trusted) -> sender certificate (PeerTrust: the verifier) -> addressed to us -> timestamp within
//   maxSkew and above the dedupe floor -> msgId not seen -> body decrypts -> (responses) a pending
//   request with that msgId, from that gateway, in that session.
// The signature comes before the verifier so that a forgery costs no verifier work and leaves its
// cache as it was: the certificate's own signature covers neither its CWT tag nor its unprotected
// header, so one genuine certificate has endless byte forms, each judged and cached apart.
// Only then is the msgId recorded, and the handler runs. A broker redelivery (QoS 1 dup) or a replay
// within the window is a "duplicate": the handler does not run again; for a request whose answer is
// ready, the same signed answer bytes are sent again (idempotent). A replay from outside the window is
// "stale". The dedupe window is bounded: entries older than maxSkew are dropped (such timestamps are
// refused anyway), and when it is full the oldest entry goes and the floor rises to its timestamp.
//
// Pairwise channels (gateway/fleet/channel.ts, on by default): the first request to a peer opens a
// channel with it (two signed envelopes, kp.channel.open, with an ephemeral X25519 exchange); every
// later envelope between the two, either way, travels as one AES-256-GCM message of that channel, with
// no signature and no per-message key agreement. Receiving one, in this order: size -> COSE_Encrypt0
// shape -> a channel of ours, still accepted, from that sender to us -> the peer's certificate still
// good (judged again when the verifier's answer runs out or the trust changed) -> it opens -> the
// envelope's fields -> then as above from "addressed to us" on. A channel message for a channel we do
// not know (we restarted, or ended it) is refused ("unknown-channel") and its claimed sender is asked,
// in a signed kp.channel.reset (at most one per sender per second, ten in all), to drop that channel: it then sends
// its pending requests again on a new one. A peer that does not know kp.channel.open (an older gateway)
// gets signed envelopes, as before, for ten minutes before it is asked again.

import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from "node:crypto";
import mqtt, { type IClientOptions, type MqttClient } from "mqtt";
import { tuneMqttSocket } from "../mqtt/socket.ts";
import { toHex } from "../../firmware/bytes.ts";
import { decipherSecret } from "../crypto/secret-bytes.ts";
import { decode, encode } from "../encoding/cbor.ts";
import { CoseError, decodeDeterministic, parseSign1, signSign1, verifySign1 } from "../encoding/cose.ts";
import type { Ed25519KeyPair } from "../crypto/ed25519.ts";
import { FleetError, generateX25519, generateX25519KeyObject, isGatewayId, readGatewayCertificateUnverified, x25519Agree, x25519SharedSecret, type X25519KeyPair } from "./fleet.ts";
import {
  CHANNEL_ID_LENGTH,
  combinedSecret,
  kemDecapsulate,
  kemEncapsulate,
  kemKeyPair,
  type ChannelKeyAgreement,
  CHANNEL_OPEN_TYPE,
  CHANNEL_RESET_TYPE,
  ChannelError,
  DEFAULT_CHANNEL_LIFETIME,
  directionKey,
  isChannelMessage,
  openAnswerBody,
  openRequestBody,
  PairwiseChannel,
  parseChannelMessage,
  readOpenAnswer,
  readOpenRequest,
  readResetBody,
  transcriptHash,
  type ChannelHeader,
} from "./channel.ts";
import type { Logger } from "../log/logger.ts";

// ---------------------------------------------------------------------------------------------------
// public types

export type InterlinkErrorCode =
  | "too-large"
  | "malformed"
  | "untrusted-peer" // the sender's certificate is not good (verifier status in the reason)
  | "bad-signature"
  | "wrong-recipient"
  | "stale" // timestamp outside the window: a delayed message or a replay
  | "duplicate" // msgId seen already: a broker redelivery or a replay within the window
  | "decrypt-failed"
  | "unknown-channel" // a channel message for no channel of ours (we restarted, or it ended)
  | "downgrade" // a channel opening without the ML-KEM-768 half that this side's "hybrid-only" requires
  | "unsolicited" // a response to no pending request
  | "no-handler"
  | "remote-error"
  | "timeout"
  | "closed";

export class InterlinkError extends Error {
  readonly code: InterlinkErrorCode;
  /** For "remote-error": the code the peer answered with. */
  readonly remoteCode?: string;
  constructor(code: InterlinkErrorCode, message: string, options?: { cause?: unknown; remoteCode?: string }) {
    super(message, options);
    this.name = "InterlinkError";
    this.code = code;
    if (options?.remoteCode !== undefined) this.remoteCode = options.remoteCode;
  }
}

/** A peer gateway as its verified certificate describes it. */
export interface GatewayPeer {
  gatewayId: string;
  signingKey: Uint8Array;
  encryptionKey: Uint8Array;
  /** How long this judgement may be relied on (the verifier's validUntil). */
  validUntil: number;
}

/** Decides whether a gateway certificate is good now (gateway/fleet/verifier.ts checkerTrust). Throws InterlinkError "untrusted-peer" if not. */
export interface PeerTrust {
  gateway(cert: Uint8Array, now: number): Promise<GatewayPeer>;
  /** Goes up whenever earlier judgements may no longer hold (a newer revocation list). Without it, a
   *  channel's peer is judged again at every message. */
  epoch?(): number;
}

export interface InterlinkIdentity {
  gatewayId: string;
  signing: Ed25519KeyPair;
  encryption: X25519KeyPair;
  certificate: Uint8Array;
}

export interface InterlinkRequest {
  from: string;
  sessionId: Uint8Array;
  msgId: Uint8Array;
  type: string;
  ts: number;
  body: unknown;
  /** The request's body came encrypted. */
  secret: boolean;
  /** The sending process's instance, when it named one (signed, or recorded in the channel's opening). */
  fromInstance?: string;
}

/** What a handler answers; secret defaults to the request's own secrecy. */
export interface HandlerResult {
  body: unknown;
  secret?: boolean;
}

export type Handler = (req: InterlinkRequest) => HandlerResult | Promise<HandlerResult>;

export interface Rejection {
  code: InterlinkErrorCode;
  reason: string;
  topic: string;
  from?: string;
  msgId?: string;
}

export interface InterlinkOptions {
  /** mqtt://host:port of the broker. */
  url: string;
  identity: InterlinkIdentity;
  trust: PeerTrust;
  /** Seconds since the epoch (tests pass a clock they control). */
  now?: () => number;
  /** 5 (default) or 4 for MQTT 3.1.1 brokers such as aedes; "auto" tries 5 and falls back to 4 when
   *  the broker refuses it ("Unacceptable protocol version"). */
  protocolVersion?: 4 | 5 | "auto";
  /** Largest accepted clock difference, seconds (default 60). */
  maxSkew?: number;
  /** Most msgIds remembered (default 10,000). */
  dedupeCapacity?: number;
  requestTimeoutMs?: number;
  /** How long to wait for a peer's retained certificate (default 5,000 ms). */
  certificateTimeoutMs?: number;
  /** Largest envelope accepted, bytes (default 65,536). */
  maxEnvelopeBytes?: number;
  log?: Logger;
  /** Passed to mqtt.connect (clientId, clean, credentials ...). */
  mqtt?: IClientOptions;
  /** Pairwise channels with peers (default true); false: every envelope signed, as before channels. */
  pairwiseChannels?: boolean;
  /** Seconds a channel is used for sending (default 3,600). */
  channelLifetime?: number;
  /** The channels' key agreement: the fleet's policy when it names one, else "hybrid" (ML-KEM-768
   *  costs about a millisecond once per channel, so every channel gets it whenever both sides can). */
  keyAgreement?: ChannelKeyAgreement;
  /** This process's instance name, when the domain runs several gateway processes at once (the
   *  gateway's --instance; isInstanceName). Requests to the domain are then shared among its instances
   *  (MQTT shared subscription), each instance also has topics of its own, and every envelope it signs
   *  names it (field 12). Unset: one process per domain, exactly as before. */
  instance?: string;
}

export const TOPIC_ROOT = "keyproxy-cose/v1/interlink";
export const requestsTopic = (id: string): string => `${TOPIC_ROOT}/${id}/requests`;
export const responsesTopic = (id: string): string => `${TOPIC_ROOT}/${id}/responses`;
export const certificateTopic = (id: string): string => `${TOPIC_ROOT}/${id}/certificate`;
/** One instance's own topics: requests pinned to it (and every channel message to it), and the answers
 *  to what it sent. */
export const instanceRequestsTopic = (id: string, instance: string): string => `${TOPIC_ROOT}/${id}/i/${instance}/requests`;
export const instanceResponsesTopic = (id: string, instance: string): string => `${TOPIC_ROOT}/${id}/i/${instance}/responses`;
/** The shared subscription through which a domain's instances take turns at its requests: the group is
 *  named after the domain (a share name may hold neither "/", "+" nor "#", which no gateway id does). */
export const sharedRequestsSubscription = (id: string): string => `$share/kp-${id}/${requestsTopic(id)}`;

/** An instance name: one MQTT topic level, the same rule as the gateway's --instance. */
const INSTANCE_NAME = /^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/;
export const isInstanceName = (s: unknown): s is string => typeof s === "string" && INSTANCE_NAME.test(s);

// ---------------------------------------------------------------------------------------------------
// envelope

const ENVELOPE_TYPE = "KP interlink v1";
const BODY_INFO = new TextEncoder().encode("KP interlink body v1");
const ID_LENGTH = 16;
const GCM_TAG = 16;
const MAX_TYPE_LENGTH = 64;

export const Kind = { Request: 0, Response: 1, Error: 2 } as const;
export type Kind = (typeof Kind)[keyof typeof Kind];

export interface Envelope {
  from: string;
  to: string;
  sessionId: Uint8Array;
  msgId: Uint8Array;
  type: string;
  ts: number;
  kind: Kind;
  /** CBOR of the body, or its ciphertext when ephemeral is set. */
  body: Uint8Array;
  ephemeral?: Uint8Array;
  re?: Uint8Array;
  senderCert: Uint8Array;
  /** The sending process's instance (field 12), when the sender runs as one of several instances. */
  fromInstance?: string;
}

function aad(e: Envelope): Uint8Array {
  return encode([ENVELOPE_TYPE, e.from, e.to, e.sessionId, e.msgId, e.type, e.ts, e.kind, e.re ?? null]);
}

function bodyKey(shared: Uint8Array, ephemeralPub: Uint8Array, recipientPub: Uint8Array): { key: Buffer; iv: Buffer } {
  const salt = new Uint8Array(64);
  salt.set(ephemeralPub, 0);
  salt.set(recipientPub, 32);
  const okm = Buffer.from(hkdfSync("sha256", shared, salt, BODY_INFO, 44));
  shared.fill(0);
  return { key: okm.subarray(0, 32), iv: okm.subarray(32) };
}

/** Encrypts e.body in place of itself to the recipient's X25519 key; sets e.ephemeral. */
export function encryptBody(e: Envelope, recipientEncryptionKey: Uint8Array): void {
  const eph = generateX25519();
  e.ephemeral = eph.publicKey;
  const { key, iv } = bodyKey(x25519SharedSecret(eph.secretKey, recipientEncryptionKey), eph.publicKey, recipientEncryptionKey);
  eph.secretKey.fill(0);
  const c = createCipheriv("aes-256-gcm", key, iv);
  c.setAAD(aad(e));
  e.body = new Uint8Array(Buffer.concat([c.update(e.body), c.final(), c.getAuthTag()]));
  key.fill(0);
}

/** The plaintext of an encrypted body, or InterlinkError "decrypt-failed". */
export function decryptBody(e: Envelope, own: X25519KeyPair): Uint8Array {
  if (!e.ephemeral) return e.body;
  if (e.body.length < GCM_TAG) throw new InterlinkError("decrypt-failed", "encrypted body is shorter than its tag");
  let shared: Uint8Array;
  try {
    shared = x25519SharedSecret(own.secretKey, e.ephemeral);
  } catch {
    throw new InterlinkError("decrypt-failed", "ephemeral key is not a usable X25519 key");
  }
  const { key, iv } = bodyKey(shared, e.ephemeral, own.publicKey);
  try {
    const d = createDecipheriv("aes-256-gcm", key, iv);
    d.setAAD(aad(e));
    d.setAuthTag(e.body.subarray(e.body.length - GCM_TAG));
    return decipherSecret(d, e.body.subarray(0, e.body.length - GCM_TAG));
  } catch {
    throw new InterlinkError("decrypt-failed", "encrypted body does not authenticate (wrong key or altered)");
  } finally {
    key.fill(0);
  }
}

export function signEnvelope(e: Envelope, seed: Uint8Array): Uint8Array {
  const m = new Map<number, unknown>([
    [0, ENVELOPE_TYPE],
    [1, e.from],
    [2, e.to],
    [3, e.sessionId],
    [4, e.msgId],
    [5, e.type],
    [6, e.ts],
    [7, e.kind],
    [8, e.body],
  ]);
  if (e.ephemeral) m.set(9, e.ephemeral);
  if (e.re) m.set(10, e.re);
  m.set(11, e.senderCert);
  if (e.fromInstance !== undefined) m.set(12, e.fromInstance);
  return signSign1(encode(m), seed);
}

const bad = (why: string): InterlinkError => new InterlinkError("malformed", why);

/** Reads an envelope WITHOUT checking its signature (the sender's key comes from senderCert). */
export function parseEnvelope(bytes: Uint8Array): Envelope {
  let m: unknown;
  try {
    m = decodeDeterministic(parseSign1(bytes).payload, "interlink envelope");
  } catch (e) {
    throw new InterlinkError("malformed", `not an interlink envelope: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
  if (!(m instanceof Map) || m.get(0) !== ENVELOPE_TYPE) throw bad("not an interlink v1 envelope");
  return envelopeFrom({
    from: m.get(1), to: m.get(2), sessionId: m.get(3), msgId: m.get(4), type: m.get(5), ts: m.get(6), kind: m.get(7),
    body: m.get(8), ephemeral: m.get(9), re: m.get(10), senderCert: m.get(11), fromInstance: m.get(12),
  });
}

/** An envelope from its fields as read off the wire (a signed envelope's map, or a channel message's
 *  header and plaintext), each checked; InterlinkError "malformed" names the first one wrong. */
function envelopeFrom(f: Record<"from" | "to" | "sessionId" | "msgId" | "type" | "ts" | "kind" | "body" | "ephemeral" | "re" | "senderCert" | "fromInstance", unknown>): Envelope {
  const isId = (v: unknown): v is Uint8Array => v instanceof Uint8Array && v.length === ID_LENGTH;
  const { from, to, type, ts, kind, body, ephemeral, re, senderCert, fromInstance } = f;
  if (!isGatewayId(from) || !isGatewayId(to)) throw bad("envelope from and to must be gateway ids");
  if (!isId(f.sessionId) || !isId(f.msgId)) throw bad(`envelope sessionId and msgId must be ${ID_LENGTH} bytes`);
  if (typeof type !== "string" || type.length === 0 || type.length > MAX_TYPE_LENGTH) throw bad(`envelope type must be 1-${MAX_TYPE_LENGTH} characters`);
  if (typeof ts !== "number" || !Number.isSafeInteger(ts) || ts < 0) throw bad("envelope ts must be whole seconds");
  if (kind !== Kind.Request && kind !== Kind.Response && kind !== Kind.Error) throw bad("envelope kind must be 0, 1 or 2");
  if (!(body instanceof Uint8Array)) throw bad("envelope body must be bytes");
  if (ephemeral !== undefined && !(ephemeral instanceof Uint8Array && ephemeral.length === 32)) throw bad("envelope ephemeral key must be 32 bytes");
  if ((kind === Kind.Request) !== (re === undefined) || (re !== undefined && !isId(re))) throw bad("envelope re must be present exactly on responses and errors");
  if (!(senderCert instanceof Uint8Array)) throw bad("envelope must carry the sender's certificate");
  if (fromInstance !== undefined && !isInstanceName(fromInstance)) throw bad("envelope fromInstance must be an instance name (1-63 of A-Z a-z 0-9 _ -, not starting with _ or -)");
  const e: Envelope = { from, to, sessionId: f.sessionId, msgId: f.msgId, type, ts, kind, body, senderCert };
  if (ephemeral !== undefined) e.ephemeral = ephemeral as Uint8Array;
  if (re !== undefined) e.re = re as Uint8Array;
  if (fromInstance !== undefined) e.fromInstance = fromInstance;
  return e;
}

/** The signing key a sender certificate names, read WITHOUT judging the certificate (the verifier
 *  does that next); an unreadable certificate is "untrusted-peer", as the verifier would call it. */
function claimedSigningKey(cert: Uint8Array): Uint8Array {
  try {
    return readGatewayCertificateUnverified(cert).signingKey;
  } catch (err) {
    if (err instanceof FleetError) throw new InterlinkError("untrusted-peer", `sender certificate is unreadable: ${err.message}`);
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------------
// the dedupe window

interface Seen {
  ts: number;
  /** The signed answer to a request, kept so a redelivered request gets the same bytes again. */
  answer?: { topic: string; bytes: Uint8Array };
}

/** msgIds seen lately, bounded in time (maxSkew) and in count (capacity). */
export class DedupeWindow {
  private readonly seen = new Map<string, Seen>();
  /** Timestamps at or below this are refused: their msgIds may have been forgotten. */
  private floor = -1;

  constructor(
    private readonly capacity: number,
    private readonly maxSkew: number,
  ) {}

  get size(): number {
    return this.seen.size;
  }

  /** Why this message may not be taken, or undefined if it may. Changes nothing. */
  refuse(key: string, ts: number, now: number): { code: "stale" | "duplicate"; reason: string; seen?: Seen } | undefined {
    if (Math.abs(ts - now) > this.maxSkew) return { code: "stale", reason: `timestamp ${ts} is more than ${this.maxSkew} s from now (${now}): delayed or replayed` };
    if (ts <= this.floor) return { code: "stale", reason: `timestamp ${ts} is at or below the dedupe floor ${this.floor}: replayed or too late` };
    const s = this.seen.get(key);
    if (s) return { code: "duplicate", reason: "message id already seen: a broker redelivery or a replay", seen: s };
    return undefined;
  }

  record(key: string, ts: number, now: number): Seen {
    for (const [k, s] of this.seen) {
      if (s.ts >= now - this.maxSkew) break; // roughly oldest first; the rest are refused by time anyway
      this.seen.delete(k);
    }
    while (this.seen.size >= this.capacity) {
      const [k, s] = this.seen.entries().next().value as [string, Seen];
      this.floor = Math.max(this.floor, s.ts);
      this.seen.delete(k);
    }
    const entry: Seen = { ts };
    this.seen.set(key, entry);
    return entry;
  }
}

// ---------------------------------------------------------------------------------------------------
// the interlink

interface Pending {
  to: string;
  /** The instance of `to` the request was pinned to (RequestOptions.instance). */
  instance?: string;
  sessionId: string;
  resolve: (v: Answer) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
  /** The request as sent on a channel (its id), kept to send it again on a new channel if the peer
   *  no longer knows that one (kp.channel.reset). */
  sent?: { channel: string; envelope: Envelope };
}

export interface RequestOptions {
  /** Defaults to a fresh random one. */
  sessionId?: Uint8Array;
  /** Encrypt the body to the recipient gateway (a channel always does). */
  secret?: boolean;
  timeoutMs?: number;
  /** Send to this instance of `to` only (its channel, opened to its own topic if need be). Unset: any
   *  instance (the newest channel with one, else the domain's shared requests topic). */
  instance?: string;
}

/** An answer and the peer's instance that gave it (undefined: the peer runs as one process, or is
 *  older than instances). */
export interface Answer {
  body: unknown;
  instance?: string;
}

/** A channel of ours with the judgement of its peer's certificate. */
interface ChannelEntry {
  channel: PairwiseChannel;
  peer?: GatewayPeer;
  /** PeerTrust.epoch when the peer was judged (-1: never). */
  epoch: number;
}

/** Channels are hybrid whenever both sides can, unless the fleet's policy says "x25519". */
const DEFAULT_CHANNEL_KEY_AGREEMENT: ChannelKeyAgreement = "hybrid";
/** Channels kept per peer, of both directions: an older one is ended when a newer one comes. */
const CHANNELS_PER_PEER = 4;
/** Seconds a peer that does not know kp.channel.open gets signed envelopes before it is asked again. */
const LEGACY_PEER_SECONDS = 600;
/** Claimed senders remembered for the reset rate limit (one reset per sender per second). */
const RESET_MEMORY = 1024;
/** Resets signed per second in all: junk claiming ever new senders costs at most this many signatures. */
const RESETS_PER_SECOND = 10;
/** How often channels past their end are wiped, ms. */
const SWEEP_MS = 60_000;

export class Interlink {
  private readonly handlers = new Map<string, Handler>();
  private readonly pending = new Map<string, Pending>();
  private readonly peerCerts = new Map<string, Uint8Array>();
  /** Certificate lookups under way, one per peer however many requests wait for it. */
  private readonly fetching = new Map<string, Promise<Uint8Array>>();
  private readonly rejectListeners = new Set<(r: Rejection) => void>();
  private readonly watched = new Map<string, (payload: Uint8Array) => void>();
  /** Retained messages published again at every reconnect: topic -> the latest payload. */
  private readonly retained = new Map<string, Uint8Array>();
  private readonly dedupe: DedupeWindow;
  private readonly now: () => number;
  /** Pairwise channels by id (hex). */
  private readonly channels = new Map<string, ChannelEntry>();
  /** Channel openings under way, one per peer. */
  private readonly opening = new Map<string, Promise<PairwiseChannel | undefined>>();
  /** Peers without channels (an older gateway), until when. */
  private readonly legacyPeers = new Map<string, number>();
  /** When a reset was last sent to a claimed sender. */
  private readonly resetSent = new Map<string, number>();
  private resetBudget = { second: 0, left: RESETS_PER_SECOND };
  private readonly sweepTimer: NodeJS.Timeout;
  private closed = false;
  readonly stats = { accepted: 0, rejected: {} as Partial<Record<InterlinkErrorCode, number>>, channelsOpened: 0, channelsAccepted: 0, channelResets: 0, siblingAnswers: 0 };

  private constructor(
    private readonly client: MqttClient,
    private readonly opts: InterlinkOptions,
  ) {
    this.now = opts.now ?? (() => Math.floor(Date.now() / 1000));
    this.dedupe = new DedupeWindow(opts.dedupeCapacity ?? 10_000, opts.maxSkew ?? 60);
    this.sweepTimer = setInterval(() => this.sweepChannels(), SWEEP_MS);
    this.sweepTimer.unref();
  }

  get gatewayId(): string {
    return this.opts.identity.gatewayId;
  }

  /** Connects, subscribes to its own requests and responses and publishes its certificate (retained). */
  static async connect(opts: InterlinkOptions): Promise<Interlink> {
    if (opts.protocolVersion === "auto") {
      try {
        return await Interlink.connect({ ...opts, protocolVersion: 5 });
      } catch (e) {
        if ((e as { code?: unknown }).code !== 1) throw e; // 1: unacceptable protocol version
        return Interlink.connect({ ...opts, protocolVersion: 4 });
      }
    }
    const id = opts.identity.gatewayId;
    if (!isGatewayId(id)) throw new InterlinkError("malformed", `gateway id "${id}" cannot name an MQTT topic level`);
    if (opts.instance !== undefined && !isInstanceName(opts.instance)) throw new InterlinkError("malformed", `instance "${String(opts.instance)}" is not an instance name (1-63 of A-Z a-z 0-9 _ -, not starting with _ or -)`);
    const protocolVersion = opts.protocolVersion ?? 5;
    const client = await mqtt.connectAsync(opts.url, {
      protocolVersion,
      clientId: `kp-interlink-${id}-${toHex(new Uint8Array(randomBytes(4)))}`,
      reconnectPeriod: 1000,
      connectTimeout: 5000,
      ...opts.mqtt,
    });
    // The interlink is request/response: its socket sends at once, gathered per batch of input
    // (docs/BENCHMARKS.md, "Sessions across gateways").
    tuneMqttSocket(client);
    const link = new Interlink(client, opts);
    client.on("message", (topic, payload, packet) => void link.receive(topic, new Uint8Array(payload), packet.properties?.responseTopic));
    // Every later "connect" is a reconnect (the client resubscribes by itself).
    client.on("connect", () => link.republish());
    await client.subscribeAsync(Interlink.subscriptions(id, opts.instance));
    await link.publishRetained(certificateTopic(id), opts.identity.certificate);
    return link;
  }

  /** What a gateway subscribes to. One process: its requests and responses topics. An instance: the
   *  domain's requests through the shared subscription (each reaches one instance), its own two topics,
   *  and the domain's responses topic, where an older peer, which knows nothing of instances, answers
   *  (every instance gets those; the one that asked takes it, the others let it go). */
  private static subscriptions(id: string, instance: string | undefined): Record<string, { qos: 1 }> {
    if (instance === undefined) return { [requestsTopic(id)]: { qos: 1 }, [responsesTopic(id)]: { qos: 1 } };
    return {
      [sharedRequestsSubscription(id)]: { qos: 1 },
      [responsesTopic(id)]: { qos: 1 },
      [instanceRequestsTopic(id, instance)]: { qos: 1 },
      [instanceResponsesTopic(id, instance)]: { qos: 1 },
    };
  }

  /** This process's instance name, if it runs as one of several (InterlinkOptions.instance). */
  get instance(): string | undefined {
    return this.opts.instance;
  }

  /** Registers the handler for one request type (replacing any earlier one). */
  handle(type: string, handler: Handler): void {
    if (type === CHANNEL_OPEN_TYPE || type === CHANNEL_RESET_TYPE) throw new InterlinkError("malformed", `request type "${type}" is the interlink's own`);
    this.handlers.set(type, handler);
  }

  /** Subscribes to a topic outside the interlink's own (the fleet's revocation list, say) and hands
   *  every message on it to fn, which must judge it: nothing on such a topic is trusted by this class. */
  async watch(topic: string, fn: (payload: Uint8Array) => void): Promise<void> {
    this.watched.set(topic, fn);
    await this.client.subscribeAsync(topic, { qos: 1 });
  }

  /** Publishes a retained message (QoS 1) and waits for the broker to take it; it is published again
   *  at every reconnect (the latest payload given for the topic). */
  async publishRetained(topic: string, payload: Uint8Array): Promise<void> {
    this.republishOnReconnect(topic, payload);
    await this.client.publishAsync(topic, Buffer.from(payload), { qos: 1, retain: true });
  }

  /** Sets what is published, retained, on `topic` at every reconnect, without publishing it now. */
  republishOnReconnect(topic: string, payload: Uint8Array): void {
    this.retained.set(topic, new Uint8Array(payload));
  }

  /** After a reconnect: every retained message of ours again, for a broker that may have lost them. */
  private republish(): void {
    if (this.closed) return;
    this.opts.log?.info("interlink-reconnected", { gateway: this.gatewayId, republished: [...this.retained.keys()].join(" ") });
    for (const [topic, payload] of this.retained) {
      this.client.publishAsync(topic, Buffer.from(payload), { qos: 1, retain: true }).catch((e: unknown) => {
        this.opts.log?.warn("interlink-republish-failed", { topic, reason: e instanceof Error ? e.message : String(e) });
      });
    }
  }

  /** Calls fn for every rejected message; returns the function that stops it. */
  onReject(fn: (r: Rejection) => void): () => void {
    this.rejectListeners.add(fn);
    return () => this.rejectListeners.delete(fn);
  }

  /** msgIds currently remembered (for tests and metrics). */
  get dedupeSize(): number {
    return this.dedupe.size;
  }

  get pendingCount(): number {
    return this.pending.size;
  }

  /** Live pairwise channels (both directions, all peers). */
  get channelCount(): number {
    return this.channels.size;
  }

  /** Sends a request to gateway `to` and resolves with its answer's body. */
  async request(to: string, type: string, body: unknown, o: RequestOptions = {}): Promise<unknown> {
    return (await this.requestTo(to, type, body, o)).body;
  }

  /** As request(), and says which instance of `to` answered (to pin later requests to it with
   *  RequestOptions.instance). */
  async requestTo(to: string, type: string, body: unknown, o: RequestOptions = {}): Promise<Answer> {
    if (type === CHANNEL_OPEN_TYPE || type === CHANNEL_RESET_TYPE) throw new InterlinkError("malformed", `request type "${type}" is the interlink's own`);
    return this.send(to, type, body, o, true);
  }

  private async send(to: string, type: string, body: unknown, o: RequestOptions, viaChannel: boolean): Promise<Answer> {
    if (this.closed) throw new InterlinkError("closed", "interlink is closed");
    if (!isGatewayId(to)) throw new InterlinkError("malformed", `"${to}" is not a gateway id`);
    if (typeof type !== "string" || type.length === 0 || type.length > MAX_TYPE_LENGTH) throw new InterlinkError("malformed", `request type must be 1-${MAX_TYPE_LENGTH} characters`);
    if (o.instance !== undefined && !isInstanceName(o.instance)) throw new InterlinkError("malformed", `instance "${String(o.instance)}" is not an instance name`);
    const sessionId = o.sessionId ?? new Uint8Array(randomBytes(ID_LENGTH));
    if (!(sessionId instanceof Uint8Array) || sessionId.length !== ID_LENGTH) throw new InterlinkError("malformed", `sessionId must be ${ID_LENGTH} bytes`);
    // A channel at hand is taken without awaiting anything, so that a request made just before
    // close() (a bye as the gateway stops) is published before the client ends, as a signed one is.
    const resolve = (): PairwiseChannel | undefined | Promise<PairwiseChannel | undefined> => (viaChannel ? this.channelTo(to, o.instance) : undefined);
    let found = resolve();
    let channel = found instanceof Promise ? await found : found;
    // Ended while we waited (the peer's certificate went bad, a newer channel replaced it): once more.
    if (channel?.isEnded && !this.closed) {
      found = resolve();
      channel = found instanceof Promise ? await found : found;
    }
    if (channel?.isEnded || this.closed) throw new InterlinkError("closed", "interlink closed before the request went out");
    const peer = o.secret && !channel ? await this.peer(to) : undefined;
    const e: Envelope = {
      from: this.gatewayId,
      to,
      sessionId,
      msgId: new Uint8Array(randomBytes(ID_LENGTH)),
      type,
      ts: this.now(),
      kind: Kind.Request,
      body: encode(body),
      senderCert: this.opts.identity.certificate,
    };
    if (this.opts.instance !== undefined) e.fromInstance = this.opts.instance;
    const sent = channel ? { channel: channel.idHex, envelope: { ...e } } : undefined;
    let bytes: Uint8Array;
    if (channel) {
      bytes = channel.seal(e);
    } else {
      if (peer) encryptBody(e, peer.encryptionKey);
      bytes = signEnvelope(e, this.opts.identity.signing.seed);
    }
    const key = toHex(e.msgId);
    const ms = o.timeoutMs ?? this.opts.requestTimeoutMs ?? 10_000;
    const answer = new Promise<Answer>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(key);
        if (sent) this.peerInstanceSilent(sent.channel);
        reject(new InterlinkError("timeout", `no answer from "${to}" to ${type} within ${ms} ms`));
      }, ms);
      const p: Pending = { to, sessionId: toHex(sessionId), resolve, reject, timer, sent };
      if (o.instance !== undefined) p.instance = o.instance;
      this.pending.set(key, p);
    });
    // The answer may fail (closed, timed out) while the publish is still under way: it is handled
    // here too, so that a failed publish leaves no unhandled rejection behind.
    answer.catch(() => undefined);
    try {
      await this.publish(this.requestsTopicFor(to, channel ? channel.peerInstance : o.instance), bytes, { responseTopic: this.ownResponsesTopic(), correlationData: e.msgId });
    } catch (err) {
      const p = this.pending.get(key);
      if (p) clearTimeout(p.timer);
      this.pending.delete(key);
      throw this.closed ? new InterlinkError("closed", "interlink closed before the request went out", { cause: err }) : err;
    }
    return answer;
  }

  /** Where a request to `to` goes: that instance's own topic, or the domain's (shared among its
   *  instances, if it has several). */
  private requestsTopicFor(to: string, instance: string | undefined): string {
    return instance === undefined ? requestsTopic(to) : instanceRequestsTopic(to, instance);
  }

  /** Where answers to this process go: its instance's own topic, or the domain's. */
  private ownResponsesTopic(): string {
    return this.opts.instance === undefined ? responsesTopic(this.gatewayId) : instanceResponsesTopic(this.gatewayId, this.opts.instance);
  }

  /** A request on a channel pinned to one peer instance got no answer in time: that instance is
   *  presumed dead (or cut off), so its channel ends and the next request opens a new one through the
   *  domain's shared topic, which reaches a live instance. Requests still waiting on it keep their own
   *  timers, as before. A channel with a peer that runs as one process is left as it was. */
  private peerInstanceSilent(channelHex: string): void {
    const entry = this.channels.get(channelHex);
    if (entry && entry.channel.peerInstance !== undefined) this.endChannel(entry.channel, "the peer instance did not answer");
  }

  /** Closes the connection; pending requests fail with "closed", every channel's keys are wiped. */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.sweepTimer);
    for (const [k, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new InterlinkError("closed", "interlink closed before the answer came"));
      this.pending.delete(k);
    }
    try {
      await this.client.endAsync(); // what was published already goes out first
    } finally {
      for (const { channel } of this.channels.values()) channel.end();
      this.channels.clear();
    }
  }

  // --- pairwise channels ----------------------------------------------------------------------------

  /** The channel to send to `to` on (to that instance of it, if one is named), opened if need be;
   *  undefined: signed envelopes (channels off, or a peer without them). Synchronous when a channel is
   *  at hand and its peer's judgement fresh. */
  private channelTo(to: string, instance?: string): PairwiseChannel | undefined | Promise<PairwiseChannel | undefined> {
    if (this.opts.pairwiseChannels === false) return undefined;
    const now = this.now();
    const legacyUntil = this.legacyPeers.get(to);
    if (legacyUntil !== undefined) {
      if (now < legacyUntil) return undefined;
      this.legacyPeers.delete(to);
    }
    const entry = this.newestChannel(to, now, instance);
    if (!entry) return this.openOnce(to, instance);
    // A successor goes to the same peer instance: the old channel's requests are answered there.
    if (entry.channel.due(now)) this.openOnce(to, entry.channel.peerInstance).catch(() => undefined); // it carries on meanwhile; a failed renewal is tried again at the next send
    if (this.judgedNow(entry, now)) return entry.channel;
    return this.judge(entry, now).then(() => entry.channel);
  }

  /** The newest channel with `to` (with that instance of it, if one is named) that may send now. */
  private newestChannel(to: string, now: number, instance?: string): ChannelEntry | undefined {
    let best: ChannelEntry | undefined;
    for (const entry of this.channels.values()) {
      if (instance !== undefined && entry.channel.peerInstance !== instance) continue;
      if (entry.channel.peer === to && entry.channel.canSend(now) && (!best || entry.channel.createdAt >= best.channel.createdAt)) best = entry;
    }
    return best;
  }

  private openOnce(to: string, instance?: string): Promise<PairwiseChannel | undefined> {
    const key = instance === undefined ? to : `${to}/${instance}`;
    let p = this.opening.get(key);
    if (!p) {
      p = this.openChannel(to, instance).finally(() => this.opening.delete(key));
      this.opening.set(key, p);
    }
    return p;
  }

  /** The initiator's side of the handshake (channel.ts): to the domain's requests topic (shared among
   *  its instances), or to one instance's own. */
  private async openChannel(to: string, instance?: string): Promise<PairwiseChannel | undefined> {
    await this.peer(to); // a peer whose certificate is not good is refused here, not after a timeout
    const policy = this.opts.keyAgreement ?? DEFAULT_CHANNEL_KEY_AGREEMENT;
    const eph = generateX25519KeyObject();
    const kem = policy === "x25519" ? undefined : kemKeyPair();
    try {
      return await this.finishOpening(to, instance, policy, eph, kem);
    } finally {
      kem?.secretKey.fill(0); // whatever the answer: the ML-KEM secret is used at most once
    }
  }

  private async finishOpening(to: string, instance: string | undefined, policy: ChannelKeyAgreement, eph: ReturnType<typeof generateX25519KeyObject>, kem: { publicKey: Uint8Array; secretKey: Uint8Array } | undefined): Promise<PairwiseChannel | undefined> {
    const channelId = new Uint8Array(randomBytes(CHANNEL_ID_LENGTH));
    let answer: unknown;
    let answeredBy: string | undefined;
    try {
      ({ body: answer, instance: answeredBy } = await this.send(to, CHANNEL_OPEN_TYPE, openRequestBody({ channelId, ephemeral: eph.publicKey, kemKey: kem?.publicKey }), instance === undefined ? {} : { instance }, false));
    } catch (e) {
      if (e instanceof InterlinkError && e.code === "remote-error" && e.remoteCode === "no-handler") {
        this.legacyPeers.set(to, this.now() + LEGACY_PEER_SECONDS);
        this.opts.log?.info("interlink-channel-unsupported", { peer: to, retryInSeconds: LEGACY_PEER_SECONDS });
        return undefined;
      }
      throw e;
    }
    let a;
    try {
      a = readOpenAnswer(answer);
    } catch (e) {
      throw new InterlinkError("malformed", `"${to}" answered the channel opening wrongly: ${(e as Error).message}`);
    }
    if (toHex(a.channelId) !== toHex(channelId) || toHex(a.peerEphemeral) !== toHex(eph.publicKey)) {
      throw new InterlinkError("malformed", `"${to}" answered another channel opening than ours`);
    }
    if (a.kemCiphertext && !kem) throw new InterlinkError("malformed", `"${to}" answered with an ML-KEM-768 ciphertext to a classical channel opening`);
    if (instance !== undefined && answeredBy !== instance) throw new InterlinkError("malformed", `the channel opening sent to instance "${instance}" of "${to}" was answered by ${answeredBy === undefined ? "no instance" : `instance "${answeredBy}"`}`);
    if (this.opts.instance !== undefined && answeredBy === undefined) return this.declineChannel(to, channelId);
    if (!a.kemCiphertext && policy === "hybrid-only") {
      throw new InterlinkError("downgrade", `"${to}" opened the channel with X25519 alone, and this gateway's policy requires X25519 + ML-KEM-768`);
    }
    const cert = this.peerCerts.get(to); // set when its signed answer was accepted just now
    if (!cert) throw new InterlinkError("untrusted-peer", `no certificate held for "${to}"`);
    const kemShared = a.kemCiphertext && kem ? kemDecapsulate(a.kemCiphertext, kem.secretKey) : undefined;
    const h = { initiator: this.gatewayId, responder: to, channelId, initiatorEphemeral: eph.publicKey, responderEphemeral: a.ephemeral, ...(kemShared ? { kemKey: kem!.publicKey, kemCiphertext: a.kemCiphertext } : {}) };
    const channel = this.makeChannel(h, eph.privateKey, a.ephemeral, kemShared, cert, true, answeredBy);
    this.stats.channelsOpened++;
    this.opts.log?.info("interlink-channel-opened", { peer: to, channel: channel.idHex.slice(0, 8), keyAgreement: channel.hybrid ? "x25519-mlkem768" : "x25519", ...(answeredBy === undefined ? {} : { peerInstance: answeredBy }) });
    return channel;
  }

  /**
   * An instance opened a channel and the peer's answer named no instance: the peer runs as one
   * process, possibly of an older version. Such a peer would send its own requests on the channel to
   * the domain's shared topic, where they reach any instance, not necessarily this one. So the peer is
   * asked to drop the channel (kp.channel.reset, which every version takes) and gets signed envelopes,
   * which any instance can read, for LEGACY_PEER_SECONDS, as a peer without channels does.
   */
  private declineChannel(to: string, channelId: Uint8Array): undefined {
    this.legacyPeers.set(to, this.now() + LEGACY_PEER_SECONDS);
    this.opts.log?.info("interlink-channel-unsupported", { peer: to, retryInSeconds: LEGACY_PEER_SECONDS, why: "the peer names no instance" });
    this.send(to, CHANNEL_RESET_TYPE, new Map([["c", channelId]]), { timeoutMs: 5000 }, false).catch(() => undefined);
    return undefined;
  }

  /** The responder's side of the handshake: the request came signed and passed every check. */
  private acceptChannel(req: InterlinkRequest, senderCert: Uint8Array): HandlerResult {
    // An instance takes channels only from peers that name their instance: one that does not (one
    // process, possibly older) would send the channel's messages to the shared topic, to any instance.
    // "no-handler" is what every version takes as "no channels here": it sends signed envelopes.
    if (this.opts.instance !== undefined && req.fromInstance === undefined) throw new InterlinkError("no-handler", `no handler for request type "${req.type}" from a gateway that names no instance (this domain runs several)`);
    let r;
    try {
      r = readOpenRequest(req.body);
    } catch (e) {
      throw new InterlinkError("malformed", (e as Error).message);
    }
    if (this.channels.has(toHex(r.channelId))) throw new InterlinkError("malformed", "channel id already in use");
    const policy = this.opts.keyAgreement ?? DEFAULT_CHANNEL_KEY_AGREEMENT;
    if (!r.kemKey && policy === "hybrid-only") throw new InterlinkError("downgrade", "channel opening offers X25519 alone, and this gateway's policy requires X25519 + ML-KEM-768");
    let kem: { cipherText: Uint8Array; sharedSecret: Uint8Array } | undefined;
    try {
      kem = r.kemKey && policy !== "x25519" ? kemEncapsulate(r.kemKey) : undefined;
    } catch (e) {
      throw new InterlinkError("malformed", (e as Error).message);
    }
    const eph = generateX25519KeyObject();
    const h = { initiator: req.from, responder: this.gatewayId, channelId: r.channelId, initiatorEphemeral: r.ephemeral, responderEphemeral: eph.publicKey, ...(kem ? { kemKey: r.kemKey, kemCiphertext: kem.cipherText } : {}) };
    const channel = this.makeChannel(h, eph.privateKey, r.ephemeral, kem?.sharedSecret, senderCert, false, req.fromInstance);
    this.stats.channelsAccepted++;
    this.opts.log?.info("interlink-channel-accepted", { peer: req.from, channel: channel.idHex.slice(0, 8), keyAgreement: channel.hybrid ? "x25519-mlkem768" : "x25519", ...(req.fromInstance === undefined ? {} : { peerInstance: req.fromInstance }) });
    return { body: openAnswerBody({ channelId: r.channelId, ephemeral: eph.publicKey, peerEphemeral: r.ephemeral, kemCiphertext: kem?.cipherText }), secret: false };
  }

  private makeChannel(h: Parameters<typeof transcriptHash>[0], own: Parameters<typeof x25519Agree>[0], peerEphemeral: Uint8Array, kemShared: Uint8Array | undefined, peerCert: Uint8Array, initiated: boolean, peerInstance: string | undefined): PairwiseChannel {
    let x25519: Uint8Array;
    try {
      x25519 = x25519Agree(own, peerEphemeral);
    } catch {
      kemShared?.fill(0);
      throw new InterlinkError("malformed", "channel ephemeral key is not a usable X25519 key");
    }
    const shared = combinedSecret(x25519, kemShared);
    const th = transcriptHash(h);
    const peer = initiated ? h.responder : h.initiator;
    const channel = new PairwiseChannel({
      channelId: h.channelId,
      self: this.gatewayId,
      peer,
      peerCert,
      sendKey: directionKey(shared, th, this.gatewayId),
      receiveKey: directionKey(shared, th, peer),
      createdAt: this.now(),
      lifetime: this.opts.channelLifetime ?? DEFAULT_CHANNEL_LIFETIME,
      initiated,
      hybrid: kemShared !== undefined,
      ...(peerInstance === undefined ? {} : { peerInstance }),
    });
    for (const secret of [shared, x25519, kemShared]) secret?.fill(0);
    this.keepChannel(channel);
    return channel;
  }

  /** Adds a channel; the oldest of that peer's (that peer process's: of its instance, if it has one)
   *  go beyond CHANNELS_PER_PEER, so that a domain's many instances do not end each other's channels. */
  private keepChannel(channel: PairwiseChannel): void {
    const same = [...this.channels.values()].filter((e) => e.channel.peer === channel.peer && e.channel.peerInstance === channel.peerInstance).sort((x, y) => x.channel.createdAt - y.channel.createdAt);
    while (same.length >= CHANNELS_PER_PEER) this.endChannel((same.shift() as ChannelEntry).channel, "replaced");
    this.channels.set(channel.idHex, { channel, epoch: -1 });
  }

  private endChannel(channel: PairwiseChannel, why: string): void {
    channel.end();
    this.channels.delete(channel.idHex);
    this.opts.log?.info("interlink-channel-ended", { peer: channel.peer, channel: channel.idHex.slice(0, 8), why, ...(channel.peerInstance === undefined ? {} : { peerInstance: channel.peerInstance }) });
  }

  /** The channel's peer judged good now, or the channel ended and InterlinkError "untrusted-peer". */
  private async judge(entry: ChannelEntry, now: number): Promise<GatewayPeer> {
    const judged = this.judgedNow(entry, now);
    if (judged) return judged;
    const epoch = this.opts.trust.epoch?.() ?? -2;
    let peer: GatewayPeer;
    try {
      peer = await this.opts.trust.gateway(entry.channel.peerCert, now);
      if (peer.gatewayId !== entry.channel.peer) throw new InterlinkError("untrusted-peer", `the channel's certificate names "${peer.gatewayId}"`);
    } catch (e) {
      this.endChannel(entry.channel, "peer no longer trusted");
      this.failPending(entry.channel.idHex, e);
      throw e instanceof InterlinkError ? e : new InterlinkError("untrusted-peer", e instanceof Error ? e.message : String(e));
    }
    entry.peer = peer;
    entry.epoch = epoch;
    return peer;
  }

  /** The channel's peer as judged earlier, if that judgement still holds (same trust epoch, and the
   *  verifier's answer not run out); undefined: judge it again. */
  private judgedNow(entry: ChannelEntry, now: number): GatewayPeer | undefined {
    const epoch = this.opts.trust.epoch?.();
    return entry.peer && epoch !== undefined && entry.epoch === epoch && now < entry.peer.validUntil ? entry.peer : undefined;
  }

  /**
   * Judges every channel's peer again now, and ends those whose certificate is no longer good (their
   * pending requests fail "untrusted-peer"). Called when a newer fleet revocation list arrives, so a
   * revoked gateway's channels end then, not at their next message.
   */
  async revalidateChannels(): Promise<void> {
    const now = this.now();
    await Promise.all([...this.channels.values()].map((entry) => this.judge(entry, now).catch(() => undefined)));
  }

  private failPending(channelHex: string, why: unknown): void {
    for (const [k, p] of this.pending) {
      if (p.sent?.channel !== channelHex) continue;
      clearTimeout(p.timer);
      this.pending.delete(k);
      p.reject(why instanceof InterlinkError ? why : new InterlinkError("untrusted-peer", why instanceof Error ? why.message : String(why)));
    }
  }

  /** Ends channels past their end (lifetime and grace): their keys are wiped. */
  private sweepChannels(): void {
    const now = this.now();
    const grace = this.opts.maxSkew ?? 60;
    for (const { channel } of [...this.channels.values()]) if (!channel.canReceive(now, grace)) this.endChannel(channel, "expired");
  }

  /** A message on a channel we do not know: ask its claimed sender, in a signed request, to drop it;
   *  to the sending instance's own topic when the message's MQTT 5 responseTopic names one (senderInstance). */
  private askReset(h: ChannelHeader, senderInstance: string | undefined): void {
    if (h.to !== this.gatewayId || this.closed) return;
    const now = this.now();
    const sender = senderInstance === undefined ? h.from : `${h.from}/${senderInstance}`;
    const last = this.resetSent.get(sender);
    if (last !== undefined && now - last < 1) return;
    if (this.resetBudget.second !== now) this.resetBudget = { second: now, left: RESETS_PER_SECOND };
    if (this.resetBudget.left <= 0) return;
    this.resetBudget.left--;
    if (this.resetSent.size >= RESET_MEMORY) this.resetSent.delete(this.resetSent.keys().next().value as string);
    this.resetSent.set(sender, now);
    this.send(h.from, CHANNEL_RESET_TYPE, new Map([["c", h.channelId]]), { timeoutMs: 5000, ...(senderInstance === undefined ? {} : { instance: senderInstance }) }, false).catch(() => undefined);
  }

  /**
   * The instance that sent a message, as its MQTT 5 responseTopic says (its own responses topic), or
   * undefined. A channel message does not name its sender's instance, and a channel we do not know
   * cannot tell us; this hint only chooses where a reset goes (the reset itself is signed, and whoever
   * takes it checks that the channel is its own with us), so a false one costs what a lost reset
   * does: the sender's request times out.
   */
  private instanceHint(from: string, responseTopic: string | undefined): string | undefined {
    const prefix = `${TOPIC_ROOT}/${from}/i/`;
    if (responseTopic === undefined || !responseTopic.startsWith(prefix) || !responseTopic.endsWith("/responses")) return undefined;
    const instance = responseTopic.slice(prefix.length, -"/responses".length);
    return isInstanceName(instance) ? instance : undefined;
  }

  /** The peer no longer knows one of our channels: end it, and send its pending requests again on a new one. */
  private onReset(req: InterlinkRequest): HandlerResult {
    let id: Uint8Array;
    try {
      id = readResetBody(req.body);
    } catch (e) {
      throw new InterlinkError("malformed", (e as Error).message);
    }
    const entry = this.channels.get(toHex(id));
    if (entry && entry.channel.peer === req.from) {
      this.stats.channelResets++;
      this.endChannel(entry.channel, "the peer no longer knows it");
      void this.resendPending(entry.channel.idHex, req.from);
    }
    return { body: new Map(), secret: false };
  }

  private async resendPending(channelHex: string, to: string): Promise<void> {
    const waiting = [...this.pending.values()].filter((p) => p.sent?.channel === channelHex);
    if (waiting.length === 0) return;
    // They were all on one channel, so with one peer instance; if pinned to it, the new channel is too.
    const pinned = waiting.find((p) => p.instance !== undefined)?.instance;
    let channel: PairwiseChannel | undefined;
    try {
      channel = await this.channelTo(to, pinned);
    } catch (e) {
      this.failPending(channelHex, e);
      return;
    }
    for (const p of waiting) {
      const sent = p.sent as NonNullable<Pending["sent"]>;
      const e = sent.envelope;
      let bytes: Uint8Array;
      if (channel && channel.canSend(this.now())) {
        bytes = channel.seal(e);
        sent.channel = channel.idHex;
      } else {
        bytes = signEnvelope({ ...e, senderCert: this.opts.identity.certificate }, this.opts.identity.signing.seed);
        delete p.sent;
      }
      await this.publish(this.requestsTopicFor(to, p.sent ? channel?.peerInstance : p.instance), bytes, { responseTopic: this.ownResponsesTopic(), correlationData: e.msgId }).catch(() => undefined);
    }
  }

  // --- receiving ------------------------------------------------------------------------------------

  private reject(r: Rejection): void {
    this.stats.rejected[r.code] = (this.stats.rejected[r.code] ?? 0) + 1;
    this.opts.log?.warn("interlink-rejected", { code: r.code, reason: r.reason, topic: r.topic, from: r.from, msgId: r.msgId });
    for (const fn of this.rejectListeners) {
      try {
        fn(r);
      } catch {
        // a listener must not break receiving
      }
    }
  }

  /** A signed envelope, its signature and sender judged. */
  private async readSigned(bytes: Uint8Array, now: number, seen: (e: Envelope) => void): Promise<{ e: Envelope; peer: GatewayPeer }> {
    const e = parseEnvelope(bytes);
    seen(e);
    const signingKey = claimedSigningKey(e.senderCert);
    try {
      verifySign1(bytes, signingKey);
    } catch (err) {
      if (err instanceof CoseError && err.code === "bad-signature") throw new InterlinkError("bad-signature", `envelope signature does not verify under the key in "${e.from}"'s certificate`);
      throw new InterlinkError("malformed", err instanceof Error ? err.message : String(err));
    }
    const peer = await this.opts.trust.gateway(e.senderCert, now);
    if (peer.gatewayId !== e.from) throw new InterlinkError("untrusted-peer", `envelope says from "${e.from}" but carries the certificate of "${peer.gatewayId}"`);
    if (toHex(peer.signingKey) !== toHex(signingKey)) throw new InterlinkError("untrusted-peer", `the key certified for "${e.from}" is not the one that signed`);
    return { e, peer };
  }

  /** A channel message, opened on its channel, its peer still judged good. */
  private async readOnChannel(bytes: Uint8Array, now: number, seen: (e: Envelope) => void, responseTopic: string | undefined): Promise<{ e: Envelope; peer: GatewayPeer; channel: PairwiseChannel }> {
    let h: ChannelHeader;
    try {
      h = parseChannelMessage(bytes);
    } catch (err) {
      throw new InterlinkError("malformed", err instanceof Error ? err.message : String(err));
    }
    const entry = this.channels.get(toHex(h.channelId));
    if (!entry || !entry.channel.canReceive(now, this.opts.maxSkew ?? 60)) {
      this.askReset(h, this.instanceHint(h.from, responseTopic));
      throw new InterlinkError("unknown-channel", `no channel ${toHex(h.channelId).slice(0, 8)} with "${h.from}" here (ended, or this gateway restarted): the sender is asked to open a new one`);
    }
    if (h.to !== this.gatewayId) throw new InterlinkError("wrong-recipient", `channel message is addressed to "${h.to}", not to us`);
    const peer = await this.judge(entry, now);
    let plain;
    try {
      plain = entry.channel.open(h);
    } catch (err) {
      throw new InterlinkError(err instanceof ChannelError ? err.code : "decrypt-failed", err instanceof Error ? err.message : String(err));
    }
    const e = envelopeFrom({ ...plain, re: plain.re, from: h.from, to: h.to, ephemeral: undefined, senderCert: entry.channel.peerCert, fromInstance: entry.channel.peerInstance });
    seen(e);
    return { e, peer, channel: entry.channel };
  }

  /** responseTopic: the MQTT 5 property, a routing hint at most (instanceHint), never trusted. */
  private async receive(topic: string, bytes: Uint8Array, responseTopic?: string): Promise<void> {
    const watcher = this.watched.get(topic);
    if (watcher) {
      try {
        watcher(bytes);
      } catch (e) {
        this.opts.log?.warn("interlink-watch-failed", { topic, error: e instanceof Error ? e.message : String(e) });
      }
      return;
    }
    const inst = this.opts.instance;
    const isRequest = topic === requestsTopic(this.gatewayId) || (inst !== undefined && topic === instanceRequestsTopic(this.gatewayId, inst));
    if (!isRequest && topic !== responsesTopic(this.gatewayId) && (inst === undefined || topic !== instanceResponsesTopic(this.gatewayId, inst))) return; // a certificate lookup
    let e: Envelope | undefined;
    try {
      const max = this.opts.maxEnvelopeBytes ?? 65_536;
      if (bytes.length > max) throw new InterlinkError("too-large", `envelope of ${bytes.length} bytes is above ${max}`);
      const now = this.now();
      const read: { e: Envelope; peer: GatewayPeer; channel?: PairwiseChannel } = isChannelMessage(bytes)
        ? await this.readOnChannel(bytes, now, (x) => (e = x), responseTopic)
        : await this.readSigned(bytes, now, (x) => (e = x));
      e = read.e;
      const { peer, channel } = read;
      if ((e.kind === Kind.Request) !== isRequest) throw new InterlinkError("malformed", `a ${isRequest ? "response" : "request"} on the ${isRequest ? "requests" : "responses"} topic`);
      if (e.to !== this.gatewayId) throw new InterlinkError("wrong-recipient", `envelope is addressed to "${e.to}", not to us`);
      if (channel && (e.type === CHANNEL_OPEN_TYPE || e.type === CHANNEL_RESET_TYPE)) throw new InterlinkError("malformed", `${e.type} must come signed, not on a channel`);
      const key = `${e.from} ${toHex(e.msgId)}`;
      const refused = this.dedupe.refuse(key, e.ts, now);
      if (refused) {
        // Idempotent: a redelivered request whose answer is ready gets the very same answer again.
        if (refused.code === "duplicate" && refused.seen?.answer) await this.client.publishAsync(refused.seen.answer.topic, Buffer.from(refused.seen.answer.bytes), { qos: 1 });
        throw new InterlinkError(refused.code, refused.reason);
      }
      const plain = decryptBody(e, this.opts.identity.encryption);
      let body: unknown;
      try {
        body = decode(plain);
      } catch {
        throw new InterlinkError("malformed", "envelope body is not CBOR");
      }
      if (isRequest) {
        const seen = this.dedupe.record(key, e.ts, now);
        this.stats.accepted++;
        this.peerCerts.set(e.from, e.senderCert); // verified and good: where later requests to it are encrypted
        const req: InterlinkRequest = { from: e.from, sessionId: e.sessionId, msgId: e.msgId, type: e.type, ts: e.ts, body, secret: channel !== undefined || e.ephemeral !== undefined };
        if (e.fromInstance !== undefined) req.fromInstance = e.fromInstance;
        await this.answer(req, peer, seen, channel, e.senderCert);
        return;
      }
      const p = e.re ? this.pending.get(toHex(e.re)) : undefined;
      if (!p || p.to !== e.from || p.sessionId !== toHex(e.sessionId)) {
        // The domain's responses topic reaches every instance: an older peer answers there, to
        // whichever instance asked. Another instance's answer is not ours to refuse.
        if (inst !== undefined && topic === responsesTopic(this.gatewayId)) {
          this.stats.siblingAnswers++;
          return;
        }
        throw new InterlinkError("unsolicited", "response matches no pending request (from that gateway, in that session)");
      }
      this.dedupe.record(key, e.ts, now);
      this.stats.accepted++;
      this.peerCerts.set(e.from, e.senderCert);
      this.pending.delete(toHex(e.re as Uint8Array));
      clearTimeout(p.timer);
      if (e.kind === Kind.Error) {
        const m = body instanceof Map ? body : new Map();
        const code = String(m.get("code") ?? "error");
        p.reject(new InterlinkError("remote-error", `"${e.from}" answered ${code}: ${String(m.get("message") ?? "")}`, { remoteCode: code }));
      } else {
        p.resolve(e.fromInstance === undefined ? { body } : { body, instance: e.fromInstance });
      }
    } catch (err) {
      const ie = err instanceof InterlinkError ? err : new InterlinkError("malformed", err instanceof Error ? err.message : String(err));
      const seenEnvelope = e as Envelope | undefined;
      this.reject({ code: ie.code, reason: ie.message, topic, from: seenEnvelope?.from, msgId: seenEnvelope ? toHex(seenEnvelope.msgId) : undefined });
    }
  }

  private async answer(req: InterlinkRequest, peer: GatewayPeer, seen: Seen, channel: PairwiseChannel | undefined, senderCert: Uint8Array): Promise<void> {
    let kind: Kind = Kind.Response;
    let result: HandlerResult;
    try {
      result = await this.handleRequest(req, senderCert);
    } catch (err) {
      kind = Kind.Error;
      // Our own errors say what was wrong; anything else stays in our log, the peer learns only "internal".
      const known = err instanceof InterlinkError;
      if (!known) this.opts.log?.error("interlink-handler-failed", { type: req.type, from: req.from, error: err instanceof Error ? err.message : String(err) });
      result = { body: new Map([["code", known ? err.code : "internal"], ["message", known ? err.message : "internal error"]]), secret: false };
    }
    const e: Envelope = {
      from: this.gatewayId,
      to: req.from,
      sessionId: req.sessionId,
      msgId: new Uint8Array(randomBytes(ID_LENGTH)),
      type: req.type,
      ts: this.now(),
      kind,
      body: encode(result.body),
      re: req.msgId,
      senderCert: this.opts.identity.certificate,
    };
    if (this.opts.instance !== undefined) e.fromInstance = this.opts.instance;
    let bytes: Uint8Array;
    if (channel && channel.canSend(e.ts)) {
      bytes = channel.seal(e); // the answer goes back on the channel its request came on
    } else {
      if (result.secret ?? req.secret) encryptBody(e, peer.encryptionKey);
      bytes = signEnvelope(e, this.opts.identity.signing.seed);
    }
    // To the instance that asked, when it named itself; else to the domain, as before instances.
    const topic = req.fromInstance === undefined ? responsesTopic(req.from) : instanceResponsesTopic(req.from, req.fromInstance);
    seen.answer = { topic, bytes };
    await this.publish(topic, bytes, { correlationData: req.msgId });
  }

  private async handleRequest(req: InterlinkRequest, senderCert: Uint8Array): Promise<HandlerResult> {
    if (req.type === CHANNEL_OPEN_TYPE) {
      if (this.opts.pairwiseChannels === false) throw new InterlinkError("no-handler", `no handler for request type "${req.type}"`);
      return this.acceptChannel(req, senderCert);
    }
    if (req.type === CHANNEL_RESET_TYPE) return this.onReset(req);
    const handler = this.handlers.get(req.type);
    if (!handler) throw new InterlinkError("no-handler", `no handler for request type "${req.type}"`);
    return handler(req);
  }

  // --- sending --------------------------------------------------------------------------------------

  private async publish(topic: string, bytes: Uint8Array, props: { responseTopic?: string; correlationData: Uint8Array }): Promise<void> {
    const v5 = (this.opts.protocolVersion ?? 5) === 5;
    await this.client.publishAsync(topic, Buffer.from(bytes), {
      qos: 1,
      ...(v5 ? { properties: { ...(props.responseTopic ? { responseTopic: props.responseTopic } : {}), correlationData: Buffer.from(props.correlationData) } } : {}),
    });
  }

  /** A peer's keys: its certificate (learned from its messages or its retained topic), judged by PeerTrust. */
  async peer(id: string): Promise<GatewayPeer> {
    let cert = this.peerCerts.get(id);
    if (!cert) {
      let pending = this.fetching.get(id);
      if (!pending) {
        pending = this.fetchCertificate(id).finally(() => this.fetching.delete(id));
        this.fetching.set(id, pending);
      }
      cert = await pending;
      this.peerCerts.set(id, cert);
    }
    const peer = await this.opts.trust.gateway(cert, this.now());
    if (peer.gatewayId !== id) {
      this.peerCerts.delete(id);
      throw new InterlinkError("untrusted-peer", `the certificate published for "${id}" names "${peer.gatewayId}"`);
    }
    return peer;
  }

  private async fetchCertificate(id: string): Promise<Uint8Array> {
    const topic = certificateTopic(id);
    const ms = this.opts.certificateTimeoutMs ?? 5000;
    return new Promise<Uint8Array>((resolve, reject) => {
      const onMessage = (t: string, payload: Buffer): void => {
        if (t !== topic) return;
        done();
        resolve(new Uint8Array(payload));
      };
      const timer = setTimeout(() => {
        done();
        reject(new InterlinkError("untrusted-peer", `no certificate published for "${id}" within ${ms} ms`));
      }, ms);
      const done = (): void => {
        clearTimeout(timer);
        this.client.removeListener("message", onMessage);
        this.client.unsubscribe(topic);
      };
      this.client.on("message", onMessage);
      this.client.subscribe(topic, { qos: 1 });
    });
  }
}
