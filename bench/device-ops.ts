// The handset's work for a join, a register, protecting one message, and a session with another
// device (its setup as caller and as callee, one message on the SA), step for step as
// firmware/handset.ts does it, on the firmware's own modules, with nothing else around it (no timers,
// no transport, no state machine), so the benchmark times exactly that work.
//
// One definition for both places it runs: bench/device-entry.ts wires it to Espruino's natives and
// Storage inside the emulator; bench/run.ts wires it to the gateway's node:crypto for the comparison.
// It is part of the device bundle, so it stays inside the Espruino subset (design.md §5).
//
// Every check the handset makes is made here too, and a failed one throws: a benchmark of a broken
// protocol stops instead of quietly timing the failure path.

import { ctEqual, type Bytes } from "../firmware/bytes.ts";
import type { SymCrypto } from "../firmware/crypto/types.ts";
import { encodeFrame, FrameDecoder, type Crc32 } from "../firmware/proto/frame.ts";
import { deriveLinkKeys, deriveSaKeys, DIR_UP, frameNonce, joinTag, JOIN_NONCE_BYTES, type Codec, type LinkKeys } from "../firmware/proto/keys.ts";
import { crypt, newLink, openMessage, sealMessage, type Link } from "../firmware/proto/link.ts";
import { decodeMessage, encodeMessage, Msg, type Connected, type Incoming, type InnerMessage, type Message, type SaInstall } from "../firmware/proto/messages.ts";

/** What the operations need of the handset's Platform (firmware/handset.ts), in the same shape. */
export interface OpsPlatform {
  crypto: SymCrypto;
  cbor: Codec;
  crc32: Crc32;
  /** The join counter in durable storage: counter() reads it (0 if none); counter(n) persists n,
   *  reads it back and returns it, or -1 if it is not durable. */
  counter(n?: number): number;
}

export interface DeviceOps {
  /** Sets the identity, root key, link suite and the [suite, priority] pairs to register; forgets
   *  any link. */
  configure(id: string, rootKey: Bytes, suite: number, suites: number[][]): void;
  /** Loads, increments and durably stores the join counter; returns the new value. */
  persistCounter(): number;
  /** Handset.join: persist the counter, draw the nonce, tag the JoinRequest, frame it. With
   *  inRam, the counter only goes up in RAM: the join's CPU work without the Storage write (timed
   *  on its own as persistCounter). */
  joinRequest(inRam?: boolean): Bytes;
  /** Handset.onAccept_: decode the JoinAccept frame, check its tag in constant time, derive the link
   *  keys. The joining state stays, so the same accept can be processed again. */
  joinAccept(frame: Bytes): boolean;
  /** Handset.register, then onInner_ on the answer: seal a RegisterRequest (rid 1) in a Link frame
   *  and open the gateway's RegisterOk frame. Returns the request frame. */
  register(okFrame: Bytes): Bytes;
  /** One application message of plaintext pt protected on the link, framed for the transport. */
  protect(pt: Bytes): Bytes;
  /** The caller's side of one session setup (Handset.connect, then inner_ on the gateway's answers):
   *  seal the ConnectRequest (rid 1), open the SaInstall frame, derive the SA keys, make the confirm
   *  tag and seal the SaConfirm, open the Connected frame and mark the SA ready. On a fresh link each
   *  time, as register() (the gateway's frames are sealed at sequence numbers 1 and 2). Returns the
   *  device's two frames: [ConnectRequest, SaConfirm]. */
  sessionCaller(peer: string, app: string, installFrame: Bytes, connectedFrame: Bytes): Bytes[];
  /** The callee's side of one setup (inner_ on Incoming, SaInstall, Connected): open the Incoming
   *  frame and seal the Answer (accept), then as the caller from the SaInstall on. The gateway's
   *  frames are sealed at 1, 2 and 3. Returns [Answer, SaConfirm]. */
  sessionCallee(incomingFrame: Bytes, installFrame: Bytes, connectedFrame: Bytes): Bytes[];
  /** Handset.send: one message of plaintext pt protected end to end on the SA the last setup
   *  installed (SaData frame, transport frame). */
  protectOnSa(pt: Bytes): Bytes;
}

/** What the handset keeps of an SA (firmware/handset.ts Sa), less the fields only timers use. */
interface BenchSa {
  spi: number;
  peer: string;
  app: string;
  link: Link;
  limit: number;
  ready: boolean;
}

export function deviceOps(p: OpsPlatform): DeviceOps {
  const c = p.crypto;
  const cbor = p.cbor;
  const decoder = new FrameDecoder(p.crc32);
  let id = "";
  let rootKey: Bytes = new Uint8Array(0);
  let suite = 0;
  let regSuites: number[][] = [];
  /** The join in progress (the handset's "joining" state). */
  let joining: { ctr: number; nonce: Bytes } = { ctr: 0, nonce: new Uint8Array(0) };
  let keys: LinkKeys | undefined;
  /** The link a join ends with, as the handset keeps it. */
  let joined: Link | undefined;
  /** The link protect() sends on, made from the first join's keys and kept: its sequence number goes
   *  up with every message, as on the device, however often joinAccept is run again. */
  let dataLink: Link | undefined;
  /** The SA the last session setup installed. */
  let lastSa: BenchSa | undefined;

  /** The one frame in bytes, decoded to a message (Handset.receive + onFrame_). */
  function receiveOne(bytes: Bytes): Message {
    const frames = decoder.push(bytes);
    if (frames.length !== 1) throw new Error("bench: expected one frame, got " + frames.length);
    const m = decodeMessage(cbor.decode(frames[0]));
    if (m instanceof Error) throw m;
    return m;
  }

  function persistCounter(): number {
    const ctr = p.counter() + 1;
    if (p.counter(ctr) !== ctr) throw new Error("bench: counter not saved");
    return ctr;
  }

  function joinRequest(inRam?: boolean): Bytes {
    const ctr = inRam ? joining.ctr + 1 : persistCounter();
    const nonce = c.random(JOIN_NONCE_BYTES);
    joining = { ctr: ctr, nonce: nonce };
    const tag = joinTag(c, cbor, rootKey, id, ctr, nonce, suite);
    return encodeFrame(cbor.encode(encodeMessage({ t: Msg.JoinRequest, id: id, ctr: ctr, nonce: nonce, suite: suite, tag: tag })), p.crc32);
  }

  function joinAccept(frame: Bytes): boolean {
    const m = receiveOne(frame);
    if (m.t !== Msg.JoinAccept) throw new Error("bench: not a JoinAccept");
    const expect = joinTag(c, cbor, rootKey, id, joining.ctr, joining.nonce, suite, m.nonce);
    if (!ctEqual(expect, m.tag)) throw new Error("bench: bad accept tag");
    keys = deriveLinkKeys(c, cbor, rootKey, id, joining.ctr, joining.nonce, m.nonce, suite);
    joined = newLink(keys, true);
    return joined.txSeq_ === 0;
  }

  function register(okFrame: Bytes): Bytes {
    if (!keys) throw new Error("bench: not joined");
    // A fresh link, as right after the join, so the gateway's answer at sequence number 1 is fresh
    // every time (the cost is one small object and a replay window).
    const link = newLink(keys, true);
    const request = encodeFrame(sealMessage(c, cbor, link, { t: Msg.RegisterRequest, rid: 1, lifetime: 3600, suites: regSuites, wantCert: true, firmware: "bench", memory: 0 }), p.crc32);
    const m = receiveOne(okFrame);
    if (m.t !== Msg.Link) throw new Error("bench: not a Link frame");
    const inner = openMessage(c, cbor, link, m);
    if (typeof inner === "number") throw new Error("bench: RegisterOk dropped, reason " + inner);
    if (inner.t !== Msg.RegisterOk || inner.rid !== 1) throw new Error("bench: not the RegisterOk for rid 1");
    // What the handset keeps of it: the certificate id and the granted lifetime.
    if (inner.certId.length === 0 || inner.granted <= 0) throw new Error("bench: empty registration");
    return request;
  }

  // The steps of sealMessage with the payload given as bytes rather than as an inner message:
  // keyproxy has no application message yet, and this is the data path's shape (next sequence
  // number, AEAD under the up key with the (direction, spi 0, seq) nonce, Link frame, transport frame).
  function protect(pt: Bytes): Bytes {
    if (!keys) throw new Error("bench: not joined");
    if (!dataLink) dataLink = newLink(keys, true);
    const link = dataLink;
    const seq = ++link.txSeq_;
    const k = link.keys_;
    const sealed = c.seal(k.suite, k.up, frameNonce(k.suite, DIR_UP, 0, seq), pt);
    return encodeFrame(cbor.encode(encodeMessage({ t: Msg.Link, seq: seq, sealed: sealed })), p.crc32);
  }

  /** The inner message in a frame from the gateway, opened on link; it must be of type t. */
  function receiveInner(link: Link, frame: Bytes, t: number): InnerMessage {
    const m = receiveOne(frame);
    if (m.t !== Msg.Link) throw new Error("bench: not a Link frame");
    const inner = openMessage(c, cbor, link, m);
    if (typeof inner === "number") throw new Error("bench: gateway frame dropped, reason " + inner);
    if (inner.t !== t) throw new Error("bench: expected message " + t + ", got " + inner.t);
    return inner;
  }

  function sealInner(link: Link, m: InnerMessage): Bytes {
    return encodeFrame(sealMessage(c, cbor, link, m), p.crc32);
  }

  /** Handset.inner_ on SaInstall then Connected: expand the seed into the SA's keys, confirm them,
   *  wipe the seed, and on Connected find the SA by SPI and mark it ready. The SA table holds this
   *  one SA (the handset's grows and shrinks with its sessions). Returns the SaConfirm frame. */
  function installAndConnect(link: Link, installFrame: Bytes, connectedFrame: Bytes): Bytes {
    const a = receiveInner(link, installFrame, Msg.SaInstall) as SaInstall;
    const k = deriveSaKeys(c, cbor, a.seed, a.spi, a.suite, a.role);
    const sa: BenchSa = { spi: a.spi, peer: a.peer, app: a.app, link: newLink(k, a.role === 0), limit: a.limit, ready: false };
    const table = [sa];
    const confirm = sealInner(link, { t: Msg.SaConfirm, rid: a.rid, spi: a.spi, tag: k.confirm });
    a.seed.fill(0);
    const done = receiveInner(link, connectedFrame, Msg.Connected) as Connected;
    let found: BenchSa | undefined;
    for (let i = 0; i < table.length; i++) if (table[i].spi === done.spi) found = table[i];
    if (!found) throw new Error("bench: Connected for an unknown SPI");
    found.ready = true;
    lastSa = found;
    return confirm;
  }

  function sessionCaller(peer: string, app: string, installFrame: Bytes, connectedFrame: Bytes): Bytes[] {
    if (!keys) throw new Error("bench: not joined");
    const link = newLink(keys, true);
    const request = sealInner(link, { t: Msg.ConnectRequest, rid: 1, peer: peer, app: app, from: id });
    return [request, installAndConnect(link, installFrame, connectedFrame)];
  }

  function sessionCallee(incomingFrame: Bytes, installFrame: Bytes, connectedFrame: Bytes): Bytes[] {
    if (!keys) throw new Error("bench: not joined");
    const link = newLink(keys, true);
    const incoming = receiveInner(link, incomingFrame, Msg.Incoming) as Incoming;
    // The application's onRequest hook says yes.
    const answer = sealInner(link, { t: Msg.Answer, rid: incoming.rid, accept: true });
    return [answer, installAndConnect(link, installFrame, connectedFrame)];
  }

  function protectOnSa(pt: Bytes): Bytes {
    const sa = lastSa;
    if (!sa || !sa.ready) throw new Error("bench: no SA");
    // Handset.send's checks, less the rekey request (a session this short never needs one).
    if (sa.link.txSeq_ >= sa.limit) throw new Error("bench: the SA is used up");
    return encodeFrame(crypt(c, cbor, sa.link, sa.spi, 0, pt, false) as Bytes, p.crc32);
  }

  return {
    configure: (newId: string, newRootKey: Bytes, newSuite: number, suites: number[][]) => {
      id = newId;
      rootKey = newRootKey;
      suite = newSuite;
      regSuites = suites;
      keys = undefined;
      joined = undefined;
      dataLink = undefined;
      lastSa = undefined;
    },
    persistCounter: persistCounter,
    joinRequest: joinRequest,
    joinAccept: joinAccept,
    register: register,
    protect: protect,
    sessionCaller: sessionCaller,
    sessionCallee: sessionCallee,
    protectOnSa: protectOnSa,
  };
}
