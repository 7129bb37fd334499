// Every keyproxy message, defined once for the device and the gateway (docs/PROTOCOL.md).
//
// On the wire a message is a CBOR array: [type, field1, field2, ...]. FIELDS below gives each type's
// field names and kinds in wire order; encodeMessage/decodeMessage are the only code that maps between
// the wire array and the object, and decodeMessage checks every field's kind before anyone sees it.

import type { Bytes } from "../bytes.ts";

export const enum Msg {
  // Outside the link (plaintext frames):
  JoinRequest = 1,
  JoinAccept = 2,
  JoinReject = 3,
  Link = 4,
  // Inside the link (the plaintext of a Link frame):
  RegisterRequest = 16,
  RegisterOk = 17,
  DeregisterRequest = 18,
  DeregisterOk = 19,
  CertQuery = 20,
  CertAnswer = 21,
  Error = 31,
}

/** Error codes in an Error message. A policy denial and an unknown name share NotFound on purpose. */
export const enum ErrorCode {
  Malformed = 1,
  NotFound = 2,
  NotRegistered = 3,
  Unsupported = 4,
  Internal = 5,
}

export interface JoinRequest { t: Msg.JoinRequest; id: string; ctr: number; nonce: Bytes; suite: number; tag: Bytes }
export interface JoinAccept { t: Msg.JoinAccept; nonce: Bytes; tag: Bytes }
export interface JoinReject { t: Msg.JoinReject }
export interface LinkFrame { t: Msg.Link; seq: number; sealed: Bytes }
/** lifetime: desired registration lifetime in seconds (devices have no trusted clock). */
export interface RegisterRequest { t: Msg.RegisterRequest; rid: number; lifetime: number; suites: number[][]; wantCert: boolean }
/** granted: seconds from now; the certificate's validity is exactly that long. */
export interface RegisterOk { t: Msg.RegisterOk; rid: number; granted: number; certId: Bytes; cert: Bytes | null }
export interface DeregisterRequest { t: Msg.DeregisterRequest; rid: number }
export interface DeregisterOk { t: Msg.DeregisterOk; rid: number }
export interface CertQuery { t: Msg.CertQuery; rid: number; name: string }
export interface CertAnswer { t: Msg.CertAnswer; rid: number; cert: Bytes }
export interface ErrorMessage { t: Msg.Error; rid: number; code: number }

export type OuterMessage = JoinRequest | JoinAccept | JoinReject | LinkFrame;
export type InnerMessage = RegisterRequest | RegisterOk | DeregisterRequest | DeregisterOk | CertQuery | CertAnswer | ErrorMessage;
export type Message = OuterMessage | InnerMessage;

// Field kinds: u unsigned int, i signed int, t text (1..64 chars), b bytes, n bytes or null,
// B boolean, s suite list [[suite, priority], ...] (at most 8).
const FIELDS: { [t: number]: [string[], string] } = {};
FIELDS[Msg.JoinRequest] = [["id", "ctr", "nonce", "suite", "tag"], "tubib"];
FIELDS[Msg.JoinAccept] = [["nonce", "tag"], "bb"];
FIELDS[Msg.JoinReject] = [[], ""];
FIELDS[Msg.Link] = [["seq", "sealed"], "ub"];
FIELDS[Msg.RegisterRequest] = [["rid", "lifetime", "suites", "wantCert"], "uusB"];
FIELDS[Msg.RegisterOk] = [["rid", "granted", "certId", "cert"], "uubn"];
FIELDS[Msg.DeregisterRequest] = [["rid"], "u"];
FIELDS[Msg.DeregisterOk] = [["rid"], "u"];
FIELDS[Msg.CertQuery] = [["rid", "name"], "ut"];
FIELDS[Msg.CertAnswer] = [["rid", "cert"], "ub"];
FIELDS[Msg.Error] = [["rid", "code"], "uu"];

function isInt(v: unknown): boolean {
  return typeof v === "number" && v === Math.floor(v) && v <= 9007199254740991 && v >= -9007199254740991;
}

function fieldOk(kind: string, v: unknown): boolean {
  if (kind === "u") return isInt(v) && (v as number) >= 0;
  if (kind === "i") return isInt(v);
  if (kind === "t") return typeof v === "string" && v.length >= 1 && v.length <= 64;
  if (kind === "b") return v instanceof Uint8Array;
  if (kind === "n") return v === null || v instanceof Uint8Array;
  if (kind === "B") return v === true || v === false;
  if (kind === "s") {
    if (!Array.isArray(v) || v.length > 8) return false;
    for (const p of v) if (!Array.isArray(p) || p.length !== 2 || !isInt(p[0]) || !isInt(p[1]) || p[1] < 0) return false;
    return true;
  }
  return false;
}

/** The wire array for a message (then CBOR-encoded by the caller's codec). */
export function encodeMessage(m: Message): unknown[] {
  const def = FIELDS[m.t];
  if (!def) throw new Error("msg: unknown type " + m.t);
  const out: unknown[] = [m.t];
  const o = m as unknown as { [k: string]: unknown };
  for (let i = 0; i < def[0].length; i++) {
    const v = o[def[0][i]];
    if (!fieldOk(def[1][i], v)) throw new Error("msg: bad field " + def[0][i]);
    out.push(v);
  }
  return out;
}

/** The message in a decoded wire array, or an Error saying what is wrong with it. */
export function decodeMessage(w: unknown): Message | Error {
  if (!Array.isArray(w) || w.length < 1) return new Error("msg: not a message array");
  const def = FIELDS[w[0] as number];
  if (!isInt(w[0]) || !def) return new Error("msg: unknown type " + String(w[0]));
  if (w.length !== def[0].length + 1) return new Error("msg: type " + w[0] + " needs " + def[0].length + " fields, got " + (w.length - 1));
  const o: { [k: string]: unknown } = { t: w[0] };
  for (let i = 0; i < def[0].length; i++) {
    if (!fieldOk(def[1][i], w[i + 1])) return new Error("msg: type " + w[0] + " has a bad " + def[0][i]);
    o[def[0][i]] = w[i + 1];
  }
  return o as unknown as Message;
}
