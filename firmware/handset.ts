// The handset's protocol engine: join, then register, over whatever byte stream the board has.
// It touches no Espruino global: the board entry (firmware/targets/) hands it a Platform, so the same
// code runs on the device, in the emulator and in Node tests.
//
// States (explicit, as in lakers): down -> joining -> linked (registering -> registered).
//
// Memory: on a Puck.js every live function costs variables (docs/EMULATOR.md), so this is one class
// with few methods, and the Platform is Espruino's own natives passed as they are.

import { ctEqual, type Bytes } from "./bytes.ts";
import type { SymCrypto } from "./crypto/types.ts";
import { encodeFrame, FrameDecoder, type Crc32 } from "./proto/frame.ts";
import { deriveLinkKeys, joinTag, JOIN_NONCE_BYTES, type Codec } from "./proto/keys.ts";
import { newLink, openMessage, sealMessage, type Link } from "./proto/link.ts";
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

/** What the engine needs from its board. On Espruino: getTime, setTimeout, clearTimeout, print and
 *  E.CRC32 themselves, plus the two Storage functions for the join counter. */
export interface Platform {
  crypto: SymCrypto;
  cbor: Codec;
  crc32: Crc32;
  /** The join counter in durable storage. counter() reads it (0 if none); counter(n) persists n,
   *  reads it back and returns it, or -1 if it is not durable. The engine calls counter(n) BEFORE n
   *  is used. */
  counter(n?: number): number;
  /** Local seconds (not a trusted wall clock). */
  now(): number;
  setTimeout(fn: () => void, ms: number): any;
  clearTimeout(id: any): void;
  log(line: string): void;
}

/** A byte-stream transport: write() takes bytes (Espruino's Bluetooth.write does, as it is). */
export interface Port {
  write(b: Bytes): void;
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
  cfg_: HandsetConfig;
  p_: Platform;
  st_: LinkState = { k: "down" };
  reg_: Registration | null = null;
  /** The transport while it is up: Espruino's Bluetooth, a net socket wrapper, or a test's port. */
  port: Port | null = null;
  decoder_: FrameDecoder;
  /** The join or request timeout, and the renewal timer (0: none). */
  timer_: any = 0;
  renew_: any = 0;
  failures_ = 0;
  rid_ = 0;
  /** Outstanding request id, 0 when none. */
  pending_ = 0;
  joins_ = 0;
  dropped_ = 0;
  /** Type of the last answer and its error code (0 unless an Error): for the console and tests. */
  lastType = 0;
  lastCode = 0;

  constructor(cfg: HandsetConfig, p: Platform) {
    this.cfg_ = cfg;
    this.p_ = p;
    this.decoder_ = new FrameDecoder(p.crc32);
  }

  /** The transport is up: start a join. */
  up(port: Port): void {
    this.port = port;
    this.decoder_ = new FrameDecoder(this.p_.crc32);
    this.join();
  }

  /** The transport is gone: forget the link keys. */
  down(): void {
    this.port = null;
    this.reset_(true);
  }

  /** Back to "down": link keys wiped, timers stopped (the renewal timer too when all is set). */
  reset_(all: boolean): void {
    const p = this.p_;
    if (this.st_.k === "linked") {
      this.st_.link.keys_.up.fill(0);
      this.st_.link.keys_.down.fill(0);
    }
    this.st_ = { k: "down" };
    this.pending_ = 0;
    if (this.timer_) p.clearTimeout(this.timer_);
    this.timer_ = 0;
    if (all && this.renew_) {
      p.clearTimeout(this.renew_);
      this.renew_ = 0;
    }
  }

  status(): { state: string; registered: boolean; expiresIn: number; certId: Bytes | null; joins: number; dropped: number } {
    const r = this.reg_;
    const left = r ? Math.round(r.expiresAt - this.p_.now()) : 0;
    return { state: this.st_.k, registered: left > 0, expiresIn: left > 0 ? left : 0, certId: r ? r.certId : null, joins: this.joins_, dropped: this.dropped_ };
  }

  /** After a failure: join again after an exponential backoff (2 s, 4 s, ... 60 s) with jitter. */
  retry_(): void {
    this.reset_(false);
    this.failures_++;
    const base = Math.min(MAX_BACKOFF_MS, 1000 << Math.min(this.failures_, 6));
    this.timer_ = this.p_.setTimeout(() => this.join(), base / 2 + (this.p_.crypto.random(1)[0] / 255) * (base / 2));
  }

  join(): void {
    const p = this.p_;
    const c = this.cfg_;
    this.reset_(false);
    if (!this.port) return;
    // The counter is made durable before it is used: after a power cut the next join uses a higher
    // one, so the gateway never accepts the same counter twice and link keys are never repeated.
    const ctr = p.counter() + 1;
    if (p.counter(ctr) !== ctr) {
      p.log("KP ctr not saved");
      this.retry_();
      return;
    }
    const nonce = p.crypto.random(JOIN_NONCE_BYTES);
    this.st_ = { k: "joining", ctr: ctr, nonce: nonce };
    this.timer_ = p.setTimeout(() => this.retry_(), JOIN_TIMEOUT_MS);
    const tag = joinTag(p.crypto, p.cbor, c.rootKey, c.id, ctr, nonce, c.suite);
    this.port.write(encodeFrame(p.cbor.encode(encodeMessage({ t: Msg.JoinRequest, id: c.id, ctr: ctr, nonce: nonce, suite: c.suite, tag: tag })), p.crc32));
  }

  /** Bytes from the transport: whole frames are decoded and acted on. Whatever is dropped is counted
   *  and logged with a short reason (a number for link drops: DROP_REASONS in proto/link.ts). */
  receive(bytes: Bytes): void {
    const p = this.p_;
    const c = this.cfg_;
    for (const f of this.decoder_.push(bytes)) {
      let m: Message | Error | number;
      try {
        m = decodeMessage(p.cbor.decode(f));
      } catch (e) {
        m = e as Error;
      }
      const s = this.st_;
      let drop = "";
      if (m instanceof Error) drop = m.message;
      else if (m.t === Msg.JoinAccept && s.k === "joining") {
        if (!ctEqual(joinTag(p.crypto, p.cbor, c.rootKey, c.id, s.ctr, s.nonce, c.suite, m.nonce), m.tag)) drop = "bad accept";
        else {
          p.clearTimeout(this.timer_);
          this.timer_ = 0;
          this.st_ = { k: "linked", ctr: s.ctr, link: newLink(deriveLinkKeys(p.crypto, p.cbor, c.rootKey, c.id, s.ctr, s.nonce, m.nonce, c.suite), true) };
          this.failures_ = 0;
          this.joins_++;
          p.log("KP joined " + c.id);
          this.register();
        }
      } else if (m.t === Msg.JoinReject && s.k === "joining") {
        p.log("KP join rejected");
        this.retry_();
      } else if (m.t === Msg.Link && s.k === "linked") {
        const a = openMessage(p.crypto, p.cbor, s.link, m);
        if (typeof a === "number") drop = "link " + a;
        else if (!("rid" in a) || a.rid !== this.pending_) drop = "stray answer";
        else {
          // The answer to our outstanding request.
          this.pending_ = 0;
          p.clearTimeout(this.timer_);
          this.timer_ = 0;
          this.lastType = a.t;
          this.lastCode = a.t === Msg.Error ? a.code : 0;
          if (a.t === Msg.RegisterOk) {
            // Keep only what the device needs: the certificate id and when it runs out.
            this.reg_ = { certId: a.certId, expiresAt: p.now() + a.granted };
            p.log("KP registered for " + a.granted + "s");
            if (this.renew_) p.clearTimeout(this.renew_);
            // Renew at 80% of the granted lifetime, as DHCP and SIP clients do.
            this.renew_ = p.setTimeout(() => { this.renew_ = 0; this.register(); }, Math.max(1000, a.granted * 800));
          } else if (a.t === Msg.DeregisterOk) {
            this.reg_ = null;
            if (this.renew_) p.clearTimeout(this.renew_);
            this.renew_ = 0;
            p.log("KP deregistered");
          } else if (a.t === Msg.CertAnswer) p.log("KP cert " + a.cert.length);
          else if (a.t === Msg.Error) p.log("KP error " + a.code);
          else drop = "answer " + a.t;
        }
      } else drop = "msg " + m.t + " in " + s.k;
      if (drop) {
        this.dropped_++;
        p.log("KP drop: " + drop);
      }
    }
  }

  /** Sends a request over the link with a fresh request id; an unanswered one leads to a new join. */
  request_(m: InnerMessage): boolean {
    const p = this.p_;
    const s = this.st_;
    if (s.k !== "linked" || !this.port) return false;
    this.rid_ = (this.rid_ % 0x7fffffff) + 1;
    (m as { rid: number }).rid = this.pending_ = this.rid_;
    let frame: Bytes;
    try {
      frame = sealMessage(p.crypto, p.cbor, s.link, m);
    } catch (e) {
      p.log("KP " + (e as Error).message);
      this.join();
      return false;
    }
    this.port.write(encodeFrame(frame, p.crc32));
    if (this.timer_) p.clearTimeout(this.timer_);
    this.timer_ = p.setTimeout(() => this.retry_(), REQUEST_TIMEOUT_MS);
    return true;
  }

  register(): boolean {
    const c = this.cfg_;
    return this.request_({ t: Msg.RegisterRequest, rid: 0, lifetime: c.lifetime, suites: c.suites, wantCert: true });
  }

  deregister(): boolean {
    return this.request_({ t: Msg.DeregisterRequest, rid: 0 });
  }

  /** Asks for a peer's certificate (answered only with one valid now). */
  certQuery(name: string): boolean {
    return this.request_({ t: Msg.CertQuery, rid: 0, name: name });
  }
}
