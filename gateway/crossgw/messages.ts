// The interlink messages of sessions across gateways (design.md flow 5): one definition for the
// gateway's side (gateway/crossgw/cross-gateway.ts) and the capable peer's (sdk/peer.ts). Each body is a
// CBOR map with text keys; every decoder checks every field and throws InterlinkError "malformed", so
// a handler only ever sees a well-formed body. The key-exchange messages themselves (msg1..msg4) are
// gateway/crossgw/exchange.ts's; here they travel as byte strings.
//
//   type              request body                          answer body
//   kp.x.1            {msg1, lifetime, limit}      secret   {msg2, lifetime, limit} | {refused}
//   kp.x.3            {msg3}                       secret   {msg4}
//   kp.x.confirmed    {spi}                                 0
//   kp.x.sa           {spi, frame}                          0
//   kp.x.bye          {spi, reason}                         0
//   kp.x.rekey        {spi}                                 0
//   kp.x.moved        {spi}                                 0
//   kp.x.cert         {from, name}                 secret   {cert, gatewayCert} | {refused}
//
// kp.x.moved comes only from a domain running several instances: the instance that sends it runs the
// SA from now on (its home died or stopped, and it took the SA over; gateway/instances/). The instance
// is the envelope's own, signed or carried on the pairwise channel (fromInstance), not the body's.
//
// Between two gateways with a pairwise channel every body travels sealed on it (gateway/fleet/channel.ts).
// Without one, "secret" bodies are encrypted to the receiving gateway's certified key
// (gateway/fleet/interlink.ts), so the broker never learns who calls whom; the others carry only an SPI
// and end-to-end sealed frames.

import { CloseReason } from "../../firmware/proto/messages.ts";
import { isDeviceName } from "../fleet/fleet.ts";
import { InterlinkError } from "../fleet/interlink.ts";

export const XGW_MSG1 = "kp.x.1";
export const XGW_MSG3 = "kp.x.3";
export const XGW_CONFIRMED = "kp.x.confirmed";
export const XGW_SA = "kp.x.sa";
export const XGW_BYE = "kp.x.bye";
export const XGW_REKEY = "kp.x.rekey";
export const XGW_CERT = "kp.x.cert";
export const XGW_MOVED = "kp.x.moved";

/** Why a callee's gateway refused, as the caller's device learns it (nothing more). */
export type Refusal = "not-found" | "rejected" | "no-common-suite";
const REFUSALS: readonly Refusal[] = ["not-found", "rejected", "no-common-suite"];

/** The SA parameters both gateways install: the smaller of each side's settings. */
export interface SaTerms {
  /** Seconds. */
  lifetime: number;
  /** Messages per direction. */
  limit: number;
}

const MAX_MESSAGE = 16 * 1024;
const MAX_CERT = 4096;
const MAX_FRAME = 4096;

const bad = (type: string, why: string): InterlinkError => new InterlinkError("malformed", `${type}: ${why}`);

function fields(type: string, body: unknown): Map<unknown, unknown> {
  if (!(body instanceof Map)) throw bad(type, "body must be a map");
  return body;
}

function bytes(type: string, m: Map<unknown, unknown>, key: string, max: number): Uint8Array {
  const v = m.get(key);
  if (!(v instanceof Uint8Array) || v.length === 0 || v.length > max) throw bad(type, `${key} must be 1 to ${max} bytes`);
  return v;
}

function uint(type: string, m: Map<unknown, unknown>, key: string, min: number, max: number): number {
  const v = m.get(key);
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min || v > max) throw bad(type, `${key} must be a whole number from ${min} to ${max}`);
  return v;
}

const spiOf = (type: string, m: Map<unknown, unknown>): number => uint(type, m, "spi", 1, 0xffffffff);

function refusalOf(m: Map<unknown, unknown>): Refusal | undefined {
  const r = m.get("refused");
  if (r === undefined) return undefined;
  return REFUSALS.includes(r as Refusal) ? (r as Refusal) : "not-found";
}

function terms(type: string, m: Map<unknown, unknown>): SaTerms {
  return { lifetime: uint(type, m, "lifetime", 1, 0x7fffffff), limit: uint(type, m, "limit", 1, 0x7fffffff) };
}

const map = (entries: [string, unknown][]): Map<string, unknown> => new Map(entries);

// --- kp.x.1 ------------------------------------------------------------------------------------------

export const connectBody = (msg1: Uint8Array, t: SaTerms) => map([["msg1", msg1], ["lifetime", t.lifetime], ["limit", t.limit]]);
export function readConnect(body: unknown): { msg1: Uint8Array } & SaTerms {
  const m = fields(XGW_MSG1, body);
  return { msg1: bytes(XGW_MSG1, m, "msg1", MAX_MESSAGE), ...terms(XGW_MSG1, m) };
}

export const acceptBody = (msg2: Uint8Array, t: SaTerms) => map([["msg2", msg2], ["lifetime", t.lifetime], ["limit", t.limit]]);
export const refusalBody = (why: Refusal) => map([["refused", why]]);
export function readConnectAnswer(body: unknown): ({ msg2: Uint8Array } & SaTerms) | { refused: Refusal } {
  const m = fields(XGW_MSG1, body);
  const refused = refusalOf(m);
  if (refused) return { refused };
  return { msg2: bytes(XGW_MSG1, m, "msg2", MAX_MESSAGE), ...terms(XGW_MSG1, m) };
}

// --- kp.x.3 ------------------------------------------------------------------------------------------

export const finishBody = (msg3: Uint8Array) => map([["msg3", msg3]]);
export const readFinish = (body: unknown): Uint8Array => bytes(XGW_MSG3, fields(XGW_MSG3, body), "msg3", MAX_MESSAGE);
export const finishedBody = (msg4: Uint8Array) => map([["msg4", msg4]]);
export const readFinished = (body: unknown): Uint8Array => bytes(XGW_MSG3, fields(XGW_MSG3, body), "msg4", MAX_MESSAGE);

// --- SA notices ----------------------------------------------------------------------------------------

export const confirmedBody = (spi: number) => map([["spi", spi]]);
export const readConfirmed = (body: unknown): number => spiOf(XGW_CONFIRMED, fields(XGW_CONFIRMED, body));

export const frameBody = (spi: number, frame: Uint8Array) => map([["spi", spi], ["frame", frame]]);
export function readFrame(body: unknown): { spi: number; frame: Uint8Array } {
  const m = fields(XGW_SA, body);
  return { spi: spiOf(XGW_SA, m), frame: bytes(XGW_SA, m, "frame", MAX_FRAME) };
}

export const byeBody = (spi: number, reason: CloseReason) => map([["spi", spi], ["reason", reason]]);
/** The reason a device hears: a bye stays a bye, a revocation a revocation, anything else "peer gone". */
export function readBye(body: unknown): { spi: number; reason: CloseReason } {
  const m = fields(XGW_BYE, body);
  const r = m.get("reason");
  return { spi: spiOf(XGW_BYE, m), reason: r === CloseReason.Bye || r === CloseReason.Revoked ? r : CloseReason.PeerGone };
}

export const rekeyBody = (spi: number) => map([["spi", spi]]);
export const readRekey = (body: unknown): number => spiOf(XGW_REKEY, fields(XGW_REKEY, body));

export const movedBody = (spi: number) => map([["spi", spi]]);
export const readMoved = (body: unknown): number => spiOf(XGW_MOVED, fields(XGW_MOVED, body));

// --- kp.x.cert -------------------------------------------------------------------------------------------

export const certQueryBody = (from: string, name: string) => map([["from", from], ["name", name]]);
export function readCertQuery(body: unknown): { from: string; name: string } {
  const m = fields(XGW_CERT, body);
  const from = m.get("from");
  const name = m.get("name");
  if (!isDeviceName(from) || !isDeviceName(name)) throw bad(XGW_CERT, "from and name must be device names (name@domain)");
  return { from, name };
}

export const certAnswerBody = (cert: Uint8Array, gatewayCert: Uint8Array) => map([["cert", cert], ["gatewayCert", gatewayCert]]);
export function readCertAnswer(body: unknown): { cert: Uint8Array; gatewayCert: Uint8Array } | { refused: Refusal } {
  const m = fields(XGW_CERT, body);
  const refused = refusalOf(m);
  if (refused) return { refused };
  return { cert: bytes(XGW_CERT, m, "cert", MAX_CERT), gatewayCert: bytes(XGW_CERT, m, "gatewayCert", MAX_CERT) };
}
