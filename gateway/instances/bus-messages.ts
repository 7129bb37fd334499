// What the instances of one domain tell each other over the MQTT bus (bus.ts), one definition per
// message, used by the sender and the receiver. On the wire a message is a CBOR array
// [version, from, to, sentAtMs, kind, ...fields], sealed by the bus; decodeBusMessage checks every
// field's kind before anyone sees it, so a message that opened but is malformed is refused whole.

import { decodeMessage, encodeMessage, Msg, type InnerMessage, type SaInstall } from "../../firmware/proto/messages.ts";

export const BUS_VERSION = 1;

/** To the instance a device is linked to: send this inner message to the device over its link. */
export interface Deliver { k: "deliver"; dev: string; m: InnerMessage }
/** To the instance a device is linked to: write this SA frame (an outer payload) to the device. */
export interface Frame { k: "frame"; dev: string; payload: Uint8Array }
/** To an SA's home: this SA frame came from a device linked at the sender, for an SA with a device of
 *  another domain (the home sends it on over the interlink). */
export interface DeviceFrame { k: "deviceFrame"; dev: string; payload: Uint8Array }
/** To an SA's home (the instance that runs it): this session message came from a device linked here. */
export interface FromDevice { k: "fromDevice"; dev: string; m: InnerMessage }
/** To all: the device's link is now at the sender (linked), or left it (unlinked). */
export interface Linked { k: "linked"; dev: string }
export interface Unlinked { k: "unlinked"; dev: string }
/** To all: every SA of the device ends (a reboot's bye, a deregistration, a revocation); with
 *  `disconnect`, its link closes too (revocation). */
export interface EndAll { k: "endAll"; dev: string; reason: number; why: string; disconnect: boolean }
/** Retained at the sender's presence topic: online in this run (epoch), or, as the sender's MQTT
 *  last-will, gone (the broker lost it: a crash, a kill -9, a cut cable). */
export interface Online { k: "online"; epoch: Uint8Array }
export interface Gone { k: "gone"; epoch: Uint8Array }

/** To the instance a callee is linked to, after the Incoming and before its answer: hold this SaInstall
 *  (role 1) and give it to the callee the moment it accepts; drop it if it declines. */
export interface InstallOnAccept { k: "installOnAccept"; dev: string; m: SaInstall }
/** To the home of request `rid`: the callee accepted it and was given the held SaInstall of SA `spi`
 *  (in place of a fromDevice Answer: the home does not send it that SaInstall again). */
export interface Accepted { k: "accepted"; dev: string; rid: number; spi: number }
/** To all: the device registered (or renewed) at the sender; the instance keeping the domain's group
 *  keys takes it into its groups' keys (gateway/sessions/groups.ts). */
export interface Registered { k: "registered"; dev: string }

export type BusBody = Deliver | Frame | FromDevice | Linked | Unlinked | EndAll | Online | Gone | DeviceFrame | InstallOnAccept | Accepted | Registered;
export interface BusMessage { from: string; to: string; sentAtMs: number; body: BusBody }

// Kinds are appended, never renumbered: an instance of an older version refuses a kind it does not
// know (instance-bus-refused), and the sender falls back (docs/PROTOCOL.md, "The instance bus").
const KINDS = ["deliver", "frame", "fromDevice", "linked", "unlinked", "endAll", "online", "gone", "deviceFrame", "installOnAccept", "accepted", "registered"] as const;

export class MalformedBusMessage extends Error {}

export function encodeBusMessage(msg: BusMessage): unknown[] {
  const b = msg.body;
  const head = [BUS_VERSION, msg.from, msg.to, msg.sentAtMs, KINDS.indexOf(b.k)];
  switch (b.k) {
    case "deliver":
    case "fromDevice":
      return [...head, b.dev, encodeMessage(b.m)];
    case "frame":
    case "deviceFrame":
      return [...head, b.dev, b.payload];
    case "linked":
    case "unlinked":
    case "registered":
      return [...head, b.dev];
    case "endAll":
      return [...head, b.dev, b.reason, b.why, b.disconnect];
    case "online":
    case "gone":
      return [...head, b.epoch];
    case "installOnAccept":
      return [...head, b.dev, encodeMessage(b.m)];
    case "accepted":
      return [...head, b.dev, b.rid, b.spi];
  }
}

export function decodeBusMessage(w: unknown): BusMessage {
  if (!Array.isArray(w) || w.length < 5) throw new MalformedBusMessage("not a bus message");
  const [version, from, to, sentAtMs, kind, ...f] = w as unknown[];
  if (version !== BUS_VERSION) throw new MalformedBusMessage(`bus message version ${typeof version === "number" ? version : typeof version}, this instance speaks ${BUS_VERSION}`);
  // An index, not any key: KINDS["length"] or KINDS["at"] is no kind, and would leave the body undefined.
  const k = typeof kind === "number" && Number.isInteger(kind) ? KINDS[kind] : undefined;
  if (typeof from !== "string" || typeof to !== "string" || typeof sentAtMs !== "number" || !Number.isSafeInteger(sentAtMs) || k === undefined) throw new MalformedBusMessage("malformed bus message header");
  // + 0: a -0 (a CBOR float) is the time 0, as the sender's encoder would write it.
  return { from, to, sentAtMs: sentAtMs + 0, body: decodeBody(k, f) };
}

function decodeBody(k: (typeof KINDS)[number], f: unknown[]): BusBody {
  const dev = () => str(f[0], "device");
  switch (k) {
    case "deliver":
    case "fromDevice":
      expectFields(f, 2);
      return { k, dev: dev(), m: inner(f[1]) };
    case "frame":
    case "deviceFrame":
      expectFields(f, 2);
      return { k, dev: dev(), payload: bytes(f[1], "frame") };
    case "linked":
    case "unlinked":
    case "registered":
      expectFields(f, 1);
      return { k, dev: dev() };
    case "endAll": {
      expectFields(f, 4);
      const [, reason, , disconnect] = f;
      // The reason goes on into SaClosed messages, where only an unsigned integer encodes.
      if (typeof reason !== "number" || !Number.isSafeInteger(reason) || reason < 0 || typeof disconnect !== "boolean") throw new MalformedBusMessage("malformed endAll");
      return { k, dev: dev(), reason, why: str(f[2], "reason"), disconnect };
    }
    case "online":
    case "gone":
      expectFields(f, 1);
      return { k, epoch: bytes(f[0], "epoch") };
    case "installOnAccept": {
      expectFields(f, 2);
      const m = inner(f[1]);
      if (m.t !== Msg.SaInstall || m.role !== 1 || m.replaces !== 0) throw new MalformedBusMessage("an installOnAccept that does not carry a new SA's SaInstall for its responder");
      return { k, dev: dev(), m };
    }
    case "accepted": {
      expectFields(f, 3);
      const [, rid, spi] = f;
      if (!isU32(rid) || !isU32(spi) || rid === 0 || spi === 0) throw new MalformedBusMessage("malformed accepted");
      return { k, dev: dev(), rid, spi };
    }
  }
}

const isU32 = (v: unknown): v is number => typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= 0xffffffff;

function expectFields(f: unknown[], n: number): void {
  if (f.length !== n) throw new MalformedBusMessage(`a bus message with ${f.length} fields where ${n} belong`);
}

function str(v: unknown, what: string): string {
  if (typeof v !== "string" || v.length > 256) throw new MalformedBusMessage(`malformed ${what} in a bus message`);
  return v;
}

function bytes(v: unknown, what: string): Uint8Array {
  if (!(v instanceof Uint8Array)) throw new MalformedBusMessage(`malformed ${what} in a bus message`);
  return v;
}

function inner(v: unknown): InnerMessage {
  // decodeMessage writes the type into its error text, and a type that is an object without a
  // usable toString would throw a TypeError there: only a number is a message type at all.
  if (!Array.isArray(v) || typeof v[0] !== "number") throw new MalformedBusMessage("a bus message carries something that is not an inner message");
  const m = decodeMessage(v);
  if (m instanceof Error) throw new MalformedBusMessage(`a bus message carries a malformed inner message: ${m.message}`);
  // Only what travels inside a link: a join or an SA frame is never an inner message.
  if (m.t < Msg.RegisterRequest) throw new MalformedBusMessage(`a bus message carries message type ${m.t}, which is not an inner message`);
  return m as InnerMessage;
}
