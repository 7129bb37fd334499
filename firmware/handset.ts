// The handset's protocol engine: join, then register, over whatever byte stream the board has.
// It touches no Espruino global: the board entry (firmware/targets/) hands it a Platform, so the same
// code runs on the device, in the emulator and in Node tests.
//
// States (explicit, as in lakers): down -> joining -> linked (registering -> registered).

import { ctEqual, toHex, type Bytes } from "./bytes.ts";
import type { SymCrypto } from "./crypto/types.ts";
import { encodeFrame, FrameDecoder, type Crc32 } from "./proto/frame.ts";
import { deriveLinkKeys, joinAcceptTag, joinRequestTag, JOIN_NONCE_BYTES, type Codec } from "./proto/keys.ts";
import { newLink, openMessage, sealMessage, wipeLink, type Link } from "./proto/link.ts";
import { decodeMessage, encodeMessage, Msg, type InnerMessage, type Message } from "./proto/messages.ts";

export interface HandsetConfig {
  id: string;
  rootKey: Bytes;
  /** Desired registration lifetime, seconds. */
  lifetime: number;
  /** Link suite (the board's preferred AEAD). */
  suite: number;
  /** [suite, priority] pairs registered for sessions. */
  suites: number[][];
}

export interface Platform {
  crypto: SymCrypto;
  cbor: Codec;
  crc32: Crc32;
  /** The last join counter persisted (0 if none). */
  loadCounter(): number;
  /** Persists n and reads it back; false if it is not durable. Called BEFORE n is used. */
  storeCounter(n: number): boolean;
  /** Local seconds (not a trusted wall clock). */
  now(): number;
  after(ms: number, fn: () => void): number;
  cancel(id: number): void;
  log(line: string): void;
}

export const JOIN_TIMEOUT_MS = 5000;
export const REQUEST_TIMEOUT_MS = 8000;
const MAX_BACKOFF_MS = 60000;

interface Down { k: "down" }
interface Joining { k: "joining"; ctr: number; nonce: Bytes }
interface Linked { k: "linked"; ctr: number; link: Link }
type LinkState = Down | Joining | Linked;

export interface Registration {
  certId: Bytes;
  /** Local time (Platform.now) at which the registration and its certificate expire. */
  expiresAt: number;
}

export class Handset {
  cfg: HandsetConfig;
  p: Platform;
  st: LinkState = { k: "down" };
  reg: Registration | null = null;
  send: ((b: Bytes) => void) | null = null;
  decoder: FrameDecoder;
  timer = 0;
  renewTimer = 0;
  failures = 0;
  rid = 0;
  /** Outstanding request id, 0 when none. */
  pending = 0;
  joins = 0;
  dropped = 0;
  /** Type of the last answer and its error code (0 unless an Error): for the console and tests. */
  last = { t: 0, code: 0 };

  constructor(cfg: HandsetConfig, p: Platform) {
    this.cfg = cfg;
    this.p = p;
    this.decoder = new FrameDecoder(p.crc32);
  }

  /** The transport is up: start a join. */
  up(send: (b: Bytes) => void): void {
    this.send = send;
    this.decoder = new FrameDecoder(this.p.crc32);
    this.join();
  }

  /** The transport is gone: forget the link keys. */
  down(): void {
    this.send = null;
    this.reset();
  }

  reset(): void {
    if (this.st.k === "linked") wipeLink(this.st.link);
    this.st = { k: "down" };
    this.pending = 0;
    this.p.cancel(this.timer);
    this.p.cancel(this.renewTimer);
  }

  status(): { state: string; registered: boolean; expiresIn: number; certId: string; joins: number; dropped: number } {
    const r = this.reg;
    const live = !!r && r.expiresAt > this.p.now();
    return {
      state: this.st.k,
      registered: live,
      expiresIn: live && r ? Math.round(r.expiresAt - this.p.now()) : 0,
      certId: r ? toHex(r.certId) : "",
      joins: this.joins,
      dropped: this.dropped,
    };
  }

  transmit(m: Message): void {
    if (this.send) this.send(encodeFrame(this.p.cbor.encode(encodeMessage(m)), this.p.crc32));
  }

  /** Retry after a failure, backing off exponentially (2 s, 4 s, ... 60 s) with jitter. */
  retryLater(): void {
    this.reset();
    this.failures++;
    const base = Math.min(MAX_BACKOFF_MS, 1000 << Math.min(this.failures, 6));
    const ms = base / 2 + (this.p.crypto.random(1)[0] / 255) * (base / 2);
    this.timer = this.p.after(ms, () => this.join());
  }

  join(): void {
    this.reset();
    if (!this.send) return;
    // The counter is made durable before it is used: after a power cut the next join uses a higher
    // one, so the gateway never accepts the same counter twice and link keys are never repeated.
    const ctr = this.p.loadCounter() + 1;
    if (!this.p.storeCounter(ctr)) {
      this.p.log("KP join counter not persisted");
      this.retryLater();
      return;
    }
    const nonce = this.p.crypto.random(JOIN_NONCE_BYTES);
    const c = this.cfg;
    this.st = { k: "joining", ctr: ctr, nonce: nonce };
    this.timer = this.p.after(JOIN_TIMEOUT_MS, () => this.retryLater());
    this.transmit({ t: Msg.JoinRequest, id: c.id, ctr: ctr, nonce: nonce, suite: c.suite, tag: joinRequestTag(this.p.crypto, this.p.cbor, c.rootKey, c.id, ctr, nonce, c.suite) });
  }

  receive(bytes: Bytes): void {
    const frames = this.decoder.push(bytes);
    for (const f of frames) this.onFrame(f);
  }

  onFrame(payload: Bytes): void {
    let m: Message | Error;
    try {
      m = decodeMessage(this.p.cbor.decode(payload));
    } catch (e) {
      m = e as Error;
    }
    if (m instanceof Error) { this.drop(m.message); return; }
    const s = this.st;
    if (m.t === Msg.JoinAccept && s.k === "joining") this.onAccept(s, m.nonce, m.tag);
    else if (m.t === Msg.JoinReject && s.k === "joining") { this.p.log("KP join rejected"); this.retryLater(); }
    else if (m.t === Msg.Link && s.k === "linked") {
      const inner = openMessage(this.p.crypto, this.p.cbor, s.link, m);
      if (inner instanceof Error) this.drop(inner.message);
      else this.onInner(inner);
    } else this.drop("unexpected message " + m.t + " in state " + s.k);
  }

  drop(why: string): void {
    this.dropped++;
    this.p.log("KP drop: " + why);
  }

  onAccept(s: Joining, nonceG: Bytes, tag: Bytes): void {
    const c = this.cfg;
    const expect = joinAcceptTag(this.p.crypto, this.p.cbor, c.rootKey, c.id, s.ctr, s.nonce, c.suite, nonceG);
    if (!ctEqual(expect, tag)) { this.drop("join accept failed authentication"); return; }
    this.p.cancel(this.timer);
    const keys = deriveLinkKeys(this.p.crypto, this.p.cbor, c.rootKey, c.id, s.ctr, s.nonce, nonceG, c.suite);
    this.st = { k: "linked", ctr: s.ctr, link: newLink(keys, true) };
    this.failures = 0;
    this.joins++;
    this.p.log("KP joined " + c.id);
    this.register();
  }

  request(m: InnerMessage): boolean {
    const s = this.st;
    if (s.k !== "linked" || !this.send) return false;
    let frame: Bytes;
    try {
      frame = sealMessage(this.p.crypto, this.p.cbor, s.link, m);
    } catch (e) {
      this.p.log("KP " + (e as Error).message);
      this.join();
      return false;
    }
    this.send(encodeFrame(frame, this.p.crc32));
    this.p.cancel(this.timer);
    this.timer = this.p.after(REQUEST_TIMEOUT_MS, () => this.retryLater());
    return true;
  }

  nextRid(): number {
    this.rid = (this.rid % 0x7fffffff) + 1;
    this.pending = this.rid;
    return this.rid;
  }

  register(): boolean {
    const c = this.cfg;
    return this.request({ t: Msg.RegisterRequest, rid: this.nextRid(), lifetime: c.lifetime, suites: c.suites, wantCert: true });
  }

  deregister(): boolean {
    return this.request({ t: Msg.DeregisterRequest, rid: this.nextRid() });
  }

  /** Asks for a peer's certificate (answered only with one valid now). */
  certQuery(name: string): boolean {
    return this.request({ t: Msg.CertQuery, rid: this.nextRid(), name: name });
  }

  onInner(m: InnerMessage): void {
    if (!("rid" in m) || m.rid !== this.pending) { this.drop("answer to no outstanding request"); return; }
    this.pending = 0;
    this.p.cancel(this.timer);
    this.last = { t: m.t, code: m.t === Msg.Error ? m.code : 0 };
    if (m.t === Msg.RegisterOk) {
      // Keep only what the device needs: the certificate id and when it runs out.
      this.reg = { certId: m.certId, expiresAt: this.p.now() + m.granted };
      this.p.log("KP registered for " + m.granted + "s");
      this.p.cancel(this.renewTimer);
      // Renew at 80% of the granted lifetime, as DHCP and SIP clients do.
      this.renewTimer = this.p.after(Math.max(1000, m.granted * 800), () => { this.register(); });
    } else if (m.t === Msg.DeregisterOk) {
      this.reg = null;
      this.p.cancel(this.renewTimer);
      this.p.log("KP deregistered");
    } else if (m.t === Msg.CertAnswer) this.p.log("KP certificate " + m.cert.length + " bytes");
    else if (m.t === Msg.Error) this.p.log("KP request " + m.rid + " failed: code " + m.code);
    else this.drop("unexpected answer " + m.t);
  }
}
