// The bridge connection: a BLE bridge near the handsets (`keyproxy ble-bridge`) carries their links to
// a gateway elsewhere (`keyproxy gateway --bridge-listen`) over one TCP connection. One definition of
// every message, used by both ends (bridge-client.ts, bridge-server.ts).
//
// Trust. Bridge and gateway share a 32-byte bridge key (a 0600 file each, bridge-key.ts). Each proves
// it to the other before anything is carried: a mutual challenge-response (HMAC-SHA256 over both
// sides' fresh 32-byte nonces and the bridge's name, compared in constant time), and from the same key
// and nonces both derive one AES-256-GCM key per direction (HKDF-SHA256). Every message after that is
// sealed with its direction's key under a counter that starts at 0 and goes up by one: a message that
// does not open, or whose counter is not the next one (replayed, dropped, reordered), closes the
// connection. The bridge key is never sent, logged or put in an error.
//
// What a bridge cannot do: read or forge link frames. It carries the same frames as a TCP link,
// sealed end to end with link keys derived from each handset's root key, which only the gateway and
// the handset hold. A bridge (or whoever holds its key) can drop, delay or cut links, as anyone on a
// radio path can, and sees which handsets are linked and how much they send; no more.
//
// Framing on TCP: each message is a 4-byte big-endian length and that many bytes (at most
// MAX_MESSAGE). Handshake messages are CBOR arrays; after it, each is a CBOR [counter, sealed], and
// what is sealed is a CBOR map with "t" (the message type).

import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes, timingSafeEqual } from "node:crypto";
import * as cbor from "../encoding/cbor.ts";
import type { RadioState } from "../monitor/monitor.ts";

export const BRIDGE_KEY_BYTES = 32;
export const BRIDGE_NONCE_BYTES = 32;
/** A frame of the link protocol is far smaller; a bridge message carries at most a few. */
export const MAX_MESSAGE = 64 * 1024;
/** Longest bridge name (it is in logs and in monitoring's "via"). */
export const MAX_BRIDGE_NAME = 64;
const PROTOCOL_VERSION = 1;
const TAG_BYTES = 16;

/** A message that breaks the protocol: the connection closes, and nothing it says is acted on. */
export class BridgeProtocolError extends Error {}

// ---- the handshake ----------------------------------------------------------------------------

/** Bridge -> gateway: who it is, and its nonce. */
export interface Hello { v: number; name: string; nonce: Uint8Array }
/** Gateway -> bridge: its nonce, and its proof of the key over both nonces. */
export interface Challenge { nonce: Uint8Array; proof: Uint8Array }
/** Bridge -> gateway: its proof of the key. */
export interface Proof { proof: Uint8Array }

export function newNonce(): Uint8Array {
  return new Uint8Array(randomBytes(BRIDGE_NONCE_BYTES));
}

export function encodeHello(name: string, nonce: Uint8Array): Uint8Array {
  return cbor.encode([PROTOCOL_VERSION, name, nonce]);
}

export function decodeHello(b: Uint8Array): Hello {
  const a = decodeArray(b, 3, "hello");
  const [v, name, nonce] = a;
  if (v !== PROTOCOL_VERSION) throw new BridgeProtocolError(`bridge protocol version ${String(v)} (this gateway speaks ${PROTOCOL_VERSION})`);
  if (!isBridgeName(name)) throw new BridgeProtocolError(`bridge name is not 1-${MAX_BRIDGE_NAME} letters, digits, . _ - (nor "ble")`);
  return { v, name, nonce: bytes(nonce, BRIDGE_NONCE_BYTES, "hello nonce") };
}

export function encodeChallenge(c: Challenge): Uint8Array {
  return cbor.encode([c.nonce, c.proof]);
}

export function decodeChallenge(b: Uint8Array): Challenge {
  const [nonce, proof] = decodeArray(b, 2, "challenge");
  return { nonce: bytes(nonce, BRIDGE_NONCE_BYTES, "challenge nonce"), proof: bytes(proof, 32, "gateway proof") };
}

export function encodeProof(p: Proof): Uint8Array {
  return cbor.encode([p.proof]);
}

export function decodeProof(b: Uint8Array): Proof {
  const [proof] = decodeArray(b, 1, "proof");
  return { proof: bytes(proof, 32, "bridge proof") };
}

export function isBridgeName(name: unknown): name is string {
  // "ble" is the gateway's own central in monitoring (central.ts, OWN_CENTRAL).
  return typeof name === "string" && name.length >= 1 && name.length <= MAX_BRIDGE_NAME && /^[A-Za-z0-9._-]+$/.test(name) && name !== "ble";
}

/** Each side's proof of the key: different labels, so that one side's proof is never the other's. */
export function proofOf(side: "gateway" | "bridge", key: Uint8Array, name: string, bridgeNonce: Uint8Array, gatewayNonce: Uint8Array): Uint8Array {
  const h = createHmac("sha256", key);
  h.update(`keyproxy bridge v${PROTOCOL_VERSION} ${side} proof\0${name}\0`);
  h.update(bridgeNonce);
  h.update(gatewayNonce);
  return new Uint8Array(h.digest());
}

/** Constant-time comparison of two proofs. */
export function sameProof(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

/** Both directions' keys, from the bridge key and both nonces. */
export function sessionKeys(key: Uint8Array, name: string, bridgeNonce: Uint8Array, gatewayNonce: Uint8Array): { toGateway: Uint8Array; toBridge: Uint8Array } {
  const okm = new Uint8Array(hkdfSync("sha256", key, Buffer.concat([bridgeNonce, gatewayNonce]), `keyproxy bridge v${PROTOCOL_VERSION} keys\0${name}`, 64));
  return { toGateway: okm.slice(0, 32), toBridge: okm.slice(32) };
}

// ---- sealed messages --------------------------------------------------------------------------

export const enum BridgeMsg {
  /** bridge -> gateway: a handset's link is up. */
  Open = 1,
  /** either way: bytes of a link. */
  Data = 2,
  /** either way: a link is gone. */
  Close = 3,
  /** bridge -> gateway: a handset's radio. */
  Radio = 4,
}

export type BridgeMessage =
  | { t: BridgeMsg.Open; link: number; address: string }
  | { t: BridgeMsg.Data; link: number; bytes: Uint8Array }
  | { t: BridgeMsg.Close; link: number }
  | { t: BridgeMsg.Radio; radio: Omit<RadioState, "via"> };

const MAX_LINK_ID = 0xffffffff;

export function encodeMessage(m: BridgeMessage): Uint8Array {
  switch (m.t) {
    case BridgeMsg.Open: return cbor.encode({ t: m.t, l: m.link, a: m.address });
    case BridgeMsg.Data: return cbor.encode({ t: m.t, l: m.link, b: m.bytes });
    case BridgeMsg.Close: return cbor.encode({ t: m.t, l: m.link });
    case BridgeMsg.Radio: return cbor.encode({ t: m.t, r: [m.radio.name, m.radio.address, m.radio.connected, m.radio.rssi, m.radio.lastSeen] });
  }
}

/** One sealed message's plaintext, checked field by field. */
export function decodeMessage(b: Uint8Array): BridgeMessage {
  let v: unknown;
  try {
    v = cbor.decode(b);
  } catch (e) {
    throw new BridgeProtocolError(`not CBOR: ${(e as Error).message}`);
  }
  if (!(v instanceof Map)) throw new BridgeProtocolError("a message is not a map");
  const o = Object.fromEntries([...v].filter(([k]) => typeof k === "string")) as Record<string, unknown>;
  const link = () => {
    if (!Number.isInteger(o.l) || (o.l as number) < 0 || (o.l as number) > MAX_LINK_ID) throw new BridgeProtocolError("link id is not a whole number 0 to 2^32-1");
    return o.l as number;
  };
  switch (o.t) {
    case BridgeMsg.Open:
      if (typeof o.a !== "string" || !/^[0-9A-Fa-f:]{1,64}$/.test(o.a)) throw new BridgeProtocolError("open: address is not 1-64 hex digits and colons");
      return { t: BridgeMsg.Open, link: link(), address: o.a };
    case BridgeMsg.Data:
      if (!(o.b instanceof Uint8Array) || o.b.length === 0) throw new BridgeProtocolError("data: no bytes");
      return { t: BridgeMsg.Data, link: link(), bytes: o.b };
    case BridgeMsg.Close:
      return { t: BridgeMsg.Close, link: link() };
    case BridgeMsg.Radio: {
      const r = o.r;
      if (!Array.isArray(r) || r.length !== 5) throw new BridgeProtocolError("radio: not [name, address, connected, rssi, lastSeen]");
      const [name, address, connected, rssi, lastSeen] = r;
      if (typeof name !== "string" || name.length > 64) throw new BridgeProtocolError("radio: name is not a string of at most 64");
      if (typeof address !== "string" || !/^[0-9A-Fa-f:]{1,64}$/.test(address)) throw new BridgeProtocolError("radio: address is not 1-64 hex digits and colons");
      if (typeof connected !== "boolean" || !Number.isInteger(rssi) || typeof lastSeen !== "string" || Number.isNaN(Date.parse(lastSeen))) throw new BridgeProtocolError("radio: connected, rssi or lastSeen of the wrong type");
      return { t: BridgeMsg.Radio, radio: { name, address, connected, rssi: rssi as number, lastSeen } };
    }
    default:
      throw new BridgeProtocolError(`unknown message type ${String(o.t)}`);
  }
}

/** One direction of the sealed channel: AES-256-GCM, the nonce the direction's counter. */
export class SealingChannel {
  private counter = 0;

  constructor(private readonly key: Uint8Array) {}

  seal(plain: Uint8Array): Uint8Array {
    const n = this.counter++;
    const c = createCipheriv("aes-256-gcm", this.key, nonceOf(n));
    c.setAAD(counterBytes(n));
    const body = Buffer.concat([c.update(plain), c.final(), c.getAuthTag()]);
    return cbor.encode([n, new Uint8Array(body)]);
  }
}

export class OpeningChannel {
  private expected = 0;

  constructor(private readonly key: Uint8Array) {}

  /** The plaintext of the next message; a BridgeProtocolError when it is replayed, out of order,
   *  forged or altered. The counter moves on only for a message that opened. */
  open(wire: Uint8Array): Uint8Array {
    const [n, body] = decodeArray(wire, 2, "sealed message");
    if (!Number.isInteger(n) || (n as number) < 0) throw new BridgeProtocolError("sealed message: counter is not a whole number");
    if (n !== this.expected) throw new BridgeProtocolError(`${(n as number) < this.expected ? "replayed" : "out of order"}: counter ${n as number}, expected ${this.expected}`);
    if (!(body instanceof Uint8Array) || body.length < TAG_BYTES) throw new BridgeProtocolError("sealed message: too short");
    const d = createDecipheriv("aes-256-gcm", this.key, nonceOf(n as number));
    d.setAAD(counterBytes(n as number));
    d.setAuthTag(body.subarray(body.length - TAG_BYTES));
    let plain: Buffer;
    try {
      plain = Buffer.concat([d.update(body.subarray(0, body.length - TAG_BYTES)), d.final()]);
    } catch {
      throw new BridgeProtocolError(`forged or altered: message ${n as number} does not open under the session key`);
    }
    this.expected++;
    return new Uint8Array(plain);
  }
}

function nonceOf(n: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUIntBE(n, 6, 6);
  return b;
}

function counterBytes(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
}

function decodeArray(b: Uint8Array, n: number, what: string): unknown[] {
  let v: unknown;
  try {
    v = cbor.decode(b);
  } catch (e) {
    throw new BridgeProtocolError(`${what}: not CBOR (${(e as Error).message})`);
  }
  if (!Array.isArray(v) || v.length !== n) throw new BridgeProtocolError(`${what}: not an array of ${n}`);
  return v;
}

function bytes(v: unknown, n: number, what: string): Uint8Array {
  if (!(v instanceof Uint8Array) || v.length !== n) throw new BridgeProtocolError(`${what} is not ${n} bytes`);
  return v;
}

// ---- framing ----------------------------------------------------------------------------------

export function frameMessage(body: Uint8Array): Buffer {
  const head = Buffer.alloc(4);
  head.writeUInt32BE(body.length);
  return Buffer.concat([head, body]);
}

/** Cuts the TCP stream into messages; a length over MAX_MESSAGE is a protocol error. */
export class MessageReader {
  private buf: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Uint8Array[] {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    const out: Uint8Array[] = [];
    while (this.buf.length >= 4) {
      const len = this.buf.readUInt32BE(0);
      if (len > MAX_MESSAGE) throw new BridgeProtocolError(`a message of ${len} bytes (at most ${MAX_MESSAGE})`);
      if (this.buf.length < 4 + len) break;
      out.push(new Uint8Array(this.buf.subarray(4, 4 + len)));
      this.buf = this.buf.subarray(4 + len);
    }
    return out;
  }
}
