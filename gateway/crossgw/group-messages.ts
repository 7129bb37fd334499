// The interlink messages of group SAs across gateways (docs/PROTOCOL.md §5d): between a group's home
// gateway and the gateway of a member in another domain. One definition for both sides; each body is
// a CBOR map with text keys, and every decoder checks every field and throws InterlinkError
// "malformed", so a handler only ever sees a well-formed body.
//
//   type         from     request body                              answer body
//   kp.g.watch   home     {member, group, app}            secret    {up, suites}
//   kp.g.status  member's {member, up, suites, revoked}             0
//   kp.g.to      home     {member, msg | frame}         secret (msg)  0
//   kp.g.from    member's {member, msg | frame}         secret (msg)  0
//
// member is always "name@<member's domain>". msg is one inner message, encoded as the device link
// carries it (firmware/proto/messages.ts): SaInstall, Connected or SaClosed to the member;
// SaConfirm, Rekey or Bye from it. An SaInstall holds the group seed, so messages go encrypted to the
// receiving gateway; frames are end-to-end sealed already and go as they are.

import { decodeMessage, encodeMessage, type InnerMessage } from "../../firmware/proto/messages.ts";
import * as cbor from "../encoding/cbor.ts";
import { isDeviceName } from "../fleet/fleet.ts";
import { InterlinkError } from "../fleet/interlink.ts";

export const XGW_GROUP_WATCH = "kp.g.watch";
export const XGW_GROUP_STATUS = "kp.g.status";
export const XGW_GROUP_TO = "kp.g.to";
export const XGW_GROUP_FROM = "kp.g.from";

const MAX_MSG = 1024;
const MAX_FRAME = 4096;
const MAX_SUITES = 8;

const bad = (type: string, why: string): InterlinkError => new InterlinkError("malformed", `${type}: ${why}`);
const map = (entries: [string, unknown][]): Map<string, unknown> => new Map(entries);

function fields(type: string, body: unknown): Map<unknown, unknown> {
  if (!(body instanceof Map)) throw bad(type, "body must be a map");
  return body;
}

function member(type: string, m: Map<unknown, unknown>): string {
  const v = m.get("member");
  if (!isDeviceName(v)) throw bad(type, "member must be a device name (name@domain)");
  return v;
}

function flag(type: string, m: Map<unknown, unknown>, key: string): boolean {
  const v = m.get(key);
  if (v !== true && v !== false) throw bad(type, `${key} must be true or false`);
  return v;
}

function suites(type: string, m: Map<unknown, unknown>): number[][] {
  const v = m.get("suites");
  const ok = Array.isArray(v) && v.length <= MAX_SUITES && v.every((p) => Array.isArray(p) && p.length === 2 && Number.isSafeInteger(p[0]) && Number.isSafeInteger(p[1]) && p[1] >= 0);
  if (!ok) throw bad(type, `suites must be at most ${MAX_SUITES} [suite, priority] pairs`);
  return v as number[][];
}

export interface MemberStatus {
  up: boolean;
  suites: number[][];
}

export const watchBody = (name: string, group: string, app: string) => map([["member", name], ["group", group], ["app", app]]);
/** member: the device watched; group ("name@home") and app: what it would be keyed for, so that the
 *  member's gateway answers only where its policy lets that group reach the device. */
export function readWatch(body: unknown): { member: string; group: string; app: string } {
  const m = fields(XGW_GROUP_WATCH, body);
  const group = m.get("group");
  const app = m.get("app");
  if (!isDeviceName(group)) throw bad(XGW_GROUP_WATCH, "group must be name@domain");
  if (typeof app !== "string" || !/^[A-Za-z0-9._-]{1,32}$/.test(app)) throw bad(XGW_GROUP_WATCH, "app must be an application name");
  return { member: member(XGW_GROUP_WATCH, m), group, app };
}
export const watchAnswerBody = (s: MemberStatus) => map([["up", s.up], ["suites", s.suites]]);
export function readWatchAnswer(body: unknown): MemberStatus {
  const m = fields(XGW_GROUP_WATCH, body);
  return { up: flag(XGW_GROUP_WATCH, m, "up"), suites: suites(XGW_GROUP_WATCH, m) };
}

export const statusBody = (name: string, s: MemberStatus, revoked: boolean) => map([["member", name], ["up", s.up], ["suites", s.suites], ["revoked", revoked]]);
export function readStatus(body: unknown): MemberStatus & { member: string; revoked: boolean } {
  const m = fields(XGW_GROUP_STATUS, body);
  return { member: member(XGW_GROUP_STATUS, m), up: flag(XGW_GROUP_STATUS, m, "up"), suites: suites(XGW_GROUP_STATUS, m), revoked: flag(XGW_GROUP_STATUS, m, "revoked") };
}

/** kp.g.to and kp.g.from: an inner message, or a frame, for or from one member. */
export const messageBody = (name: string, msg: InnerMessage) => map([["member", name], ["msg", cbor.encode(encodeMessage(msg))]]);
export const frameBody = (name: string, frame: Uint8Array) => map([["member", name], ["frame", frame]]);
export function readCarried(type: string, body: unknown): { member: string; msg?: InnerMessage; frame?: Uint8Array } {
  const m = fields(type, body);
  const name = member(type, m);
  const frame = m.get("frame");
  const msg = m.get("msg");
  if (frame instanceof Uint8Array && msg === undefined) {
    if (frame.length === 0 || frame.length > MAX_FRAME) throw bad(type, `frame must be 1 to ${MAX_FRAME} bytes`);
    return { member: name, frame };
  }
  if (!(msg instanceof Uint8Array) || frame !== undefined || msg.length > MAX_MSG) throw bad(type, `one of msg (at most ${MAX_MSG} bytes) or frame is required`);
  let decoded: unknown;
  try {
    decoded = decodeMessage(cbor.decode(msg));
  } catch (e) {
    throw bad(type, `msg is not CBOR: ${(e as Error).message}`);
  }
  if (decoded instanceof Error) throw bad(type, decoded.message);
  return { member: name, msg: decoded as InnerMessage };
}
