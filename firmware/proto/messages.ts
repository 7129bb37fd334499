// Every keyproxy message, defined once for the device and the gateway (docs/PROTOCOL.md).
//
// On the wire a message is a CBOR array: [type, field1, field2, ...]. fields() below gives each type's
// field names and kinds in wire order; encodeMessage/decodeMessage are the only code that maps between
// the wire array and the object, and decodeMessage checks every field's kind before anyone sees it.

import type { Bytes } from "../bytes.ts";

export const enum Msg {
  // Outside the link (plaintext frames):
  JoinRequest = 1,
  JoinAccept = 2,
  JoinReject = 3,
  Link = 4,
  /** End-to-end protected data between two devices, relayed by the gateway (docs/PROTOCOL.md §8). */
  SaData = 5,
  // Inside the link (the plaintext of a Link frame):
  RegisterRequest = 16,
  RegisterOk = 17,
  DeregisterRequest = 18,
  DeregisterOk = 19,
  CertQuery = 20,
  CertAnswer = 21,
  Error = 31,
  // Sessions (docs/PROTOCOL.md §8), inside the link:
  ConnectRequest = 32,
  Incoming = 33,
  Answer = 34,
  SaInstall = 35,
  SaConfirm = 36,
  Connected = 37,
  Rekey = 38,
  Bye = 39,
  SaClosed = 40,
}

/** Error codes in an Error message. A policy denial and an unknown name share NotFound on purpose. */
export const enum ErrorCode {
  Malformed = 1,
  NotFound = 2,
  NotRegistered = 3,
  Unsupported = 4,
  Internal = 5,
  /** No cipher suite both devices registered (the callee was not contacted). */
  NoCommonSuite = 6,
  /** The callee declined, or did not answer in time. */
  Rejected = 7,
  /** The request claimed an identity other than the one its link authenticated. */
  Spoofed = 8,
}

/** Why an SA ended (SaClosed.reason). */
export const enum CloseReason {
  Bye = 1,
  PeerGone = 2,
  Deregistered = 3,
  Replaced = 4,
  Expired = 5,
  Revoked = 6,
  /** The device was taken out of the group (a group SA's member). */
  Removed = 7,
}

export interface JoinRequest { t: Msg.JoinRequest; id: string; ctr: number; nonce: Bytes; suite: number; tag: Bytes }
export interface JoinAccept { t: Msg.JoinAccept; nonce: Bytes; tag: Bytes }
export interface JoinReject { t: Msg.JoinReject }
export interface LinkFrame { t: Msg.Link; seq: number; sealed: Bytes }
/** lifetime: desired registration lifetime in seconds (devices have no trusted clock). firmware: the
 *  bundle's id (flash/build.ts); memory: Espruino variables in use when sent, 0 where unknown. */
export interface RegisterRequest { t: Msg.RegisterRequest; rid: number; lifetime: number; suites: number[][]; wantCert: boolean; firmware: string; memory: number }
/** granted: seconds from now; the certificate's validity is exactly that long. */
export interface RegisterOk { t: Msg.RegisterOk; rid: number; granted: number; certId: Bytes; cert: Bytes | null }
export interface DeregisterRequest { t: Msg.DeregisterRequest; rid: number }
export interface DeregisterOk { t: Msg.DeregisterOk; rid: number }
export interface CertQuery { t: Msg.CertQuery; rid: number; name: string }
export interface CertAnswer { t: Msg.CertAnswer; rid: number; cert: Bytes }
export interface ErrorMessage { t: Msg.Error; rid: number; code: number }
export interface SaData { t: Msg.SaData; spi: number; seq: number; sealed: Bytes }
/** from: the identity the caller claims; it must be the one its link authenticated. */
export interface ConnectRequest { t: Msg.ConnectRequest; rid: number; peer: string; app: string; from: string }
export interface Incoming { t: Msg.Incoming; rid: number; from: string; app: string; suite: number }
export interface Answer { t: Msg.Answer; rid: number; accept: boolean }
/** role 0: initiator (sends with the "up" key), 1: responder, ROLE_GROUP (2) + i: member i of a
 *  group SA (peer: the group's name). replaces: the SPI this SA rekeys, or 0. lifetime: seconds;
 *  limit: messages per direction (a group: per member, each way). */
export interface SaInstall { t: Msg.SaInstall; rid: number; spi: number; peer: string; app: string; suite: number; seed: Bytes; role: number; lifetime: number; limit: number; replaces: number }
export interface SaConfirm { t: Msg.SaConfirm; rid: number; spi: number; tag: Bytes }
export interface Connected { t: Msg.Connected; spi: number; replaces: number }
export interface Rekey { t: Msg.Rekey; rid: number; spi: number }
export interface Bye { t: Msg.Bye; spi: number }
export interface SaClosed { t: Msg.SaClosed; spi: number; reason: number }

export type OuterMessage = JoinRequest | JoinAccept | JoinReject | LinkFrame | SaData;
export type InnerMessage =
  | RegisterRequest | RegisterOk | DeregisterRequest | DeregisterOk | CertQuery | CertAnswer | ErrorMessage
  | ConnectRequest | Incoming | Answer | SaInstall | SaConfirm | Connected | Rekey | Bye | SaClosed;
export type Message = OuterMessage | InnerMessage;

// Each type's fields in wire order, as one string: the kinds, then the names. Kinds: u unsigned int,
// i signed int, t text (1..64 chars), b bytes, n bytes or null, B boolean, s suite list
// [[suite, priority], ...] (at most 8). A function, not a table: on Espruino a table would hold every
// string in variables for good (about 75 on a Puck.js); the function's literals stay in flash and
// make one string when asked.
function fields(t: unknown): string | undefined {
  // The device's most frequent first: Espruino tries the cases in order, reading each one it passes.
  switch (t) {
    case Msg.Link: return "ub seq sealed";
    case Msg.SaData: return "uub spi seq sealed";
    case Msg.SaInstall: return "uuttibuuuu rid spi peer app suite seed role lifetime limit replaces";
    case Msg.Connected: return "uu spi replaces";
    case Msg.SaConfirm: return "uub rid spi tag";
    case Msg.ConnectRequest: return "uttt rid peer app from";
    case Msg.Incoming: return "utti rid from app suite";
    case Msg.Answer: return "uB rid accept";
    case Msg.Rekey: return "uu rid spi";
    case Msg.Bye: return "u spi";
    case Msg.SaClosed: return "uu spi reason";
    case Msg.Error: return "uu rid code";
    case Msg.RegisterRequest: return "uusBtu rid lifetime suites wantCert firmware memory";
    case Msg.RegisterOk: return "uubn rid granted certId cert";
    case Msg.CertQuery: return "ut rid name";
    case Msg.CertAnswer: return "ub rid cert";
    case Msg.DeregisterRequest: return "u rid";
    case Msg.DeregisterOk: return "u rid";
    case Msg.JoinRequest: return "tubib id ctr nonce suite tag";
    case Msg.JoinAccept: return "bb nonce tag";
    case Msg.JoinReject: return "";
  }
  return undefined;
}

function fieldOk(kind: string, v: unknown): boolean {
  // The common kinds first, each test only as long as it must be.
  if (kind === "u" || kind === "i") {
    return typeof v === "number" && v === Math.floor(v) && Math.abs(v) <= 9007199254740991 && (kind === "i" || v >= 0);
  }
  if (kind === "b") return v instanceof Uint8Array;
  if (kind === "t") return typeof v === "string" && v.length >= 1 && v.length <= 64;
  if (kind === "n") return v === null || v instanceof Uint8Array;
  if (kind === "B") return v === true || v === false;
  if (kind === "s") {
    if (!Array.isArray(v) || v.length > 8) return false;
    for (const p of v) if (!Array.isArray(p) || p.length !== 2 || !fieldOk("i", p[0]) || !fieldOk("u", p[1])) return false;
    return true;
  }
  return false;
}

/** The wire array for a message (then CBOR-encoded by the caller's codec). */
export function encodeMessage(m: Message): unknown[] {
  const def = fields(m.t);
  if (def === undefined) throw new Error("msg: unknown type " + m.t);
  const names = def.split(" ");
  const out: unknown[] = [m.t];
  const o = m as unknown as { [k: string]: unknown };
  for (let i = 1; i < names.length; i++) {
    const v = o[names[i]];
    const kind = names[0][i - 1];
    // The commonest kind without a call (a call costs the device the callee's whole text), then the rest.
    if (!(kind === "u" ? typeof v === "number" && v >= 0 && v === Math.floor(v) && v <= 9007199254740991 : fieldOk(kind, v))) {
      throw new Error("msg: bad field " + names[i]);
    }
    out.push(v);
  }
  return out;
}

/** The message in a decoded wire array, or an Error saying what is wrong with it. */
export function decodeMessage(w: unknown): Message | Error {
  if (!Array.isArray(w) || w.length < 1) return new Error("msg: not a message array");
  const def = fields(w[0]);
  if (def === undefined) return new Error("msg: unknown type " + String(w[0]));
  const names = def.split(" ");
  const n = names.length - 1;
  if (w.length !== n + 1) return new Error("msg: type " + w[0] + " needs " + n + " fields, got " + (w.length - 1));
  const o: { [k: string]: unknown } = { t: w[0] };
  for (let i = 1; i <= n; i++) {
    const v = w[i];
    const kind = names[0][i - 1];
    // As in encodeMessage: the commonest kind without a call.
    if (!(kind === "u" ? typeof v === "number" && v >= 0 && v === Math.floor(v) && v <= 9007199254740991 : fieldOk(kind, v))) {
      return new Error("msg: type " + w[0] + " has a bad " + names[i]);
    }
    o[names[i]] = v;
  }
  return o as unknown as Message;
}
