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
  cfg_: HandsetConfig;
  p_: Platform;
  st_: LinkState = { k: "down" };
  reg_: Registration | null = null;
  send: ((b: Bytes) => void) | null = null;
  decoder_: FrameDecoder;
  timer_ = 0;
  renewTimer_ = 0;
  failures_ = 0;
  rid_ = 0;
  /** Outstanding request id, 0 when none. */
  pending_ = 0;
  joins_ = 0;
  dropped_ = 0;
  /** Type of the last answer and its error code (0 unless an Error): for the console and tests. */
  last = { t: 0, code: 0 };

  constructor(cfg: HandsetConfig, p: Platform) {
    this.cfg_ = cfg;
    this.p_ = p;
    this.decoder_ = new FrameDecoder(p.crc32);
  }

  /** The transport is up: start a join. */
  up(send: (b: Bytes) => void): void {
    this.send = send;
    this.decoder_ = new FrameDecoder(this.p_.crc32);
    this.join();
  }

  /** The transport is gone: forget the link keys. */
  down(): void {
    this.send = null;
    this.reset_();
  }

  reset_(): void {
    if (this.st_.k === "linked") wipeLink(this.st_.link);
    this.st_ = { k: "down" };
    this.pending_ = 0;
    this.p_.cancel(this.timer_);
    this.p_.cancel(this.renewTimer_);
  }

  status(): { state: string; registered: boolean; expiresIn: number; certId: string; joins: number; dropped: number } {
    const r = this.reg_;
    const live = !!r && r.expiresAt > this.p_.now();
    return {
      state: this.st_.k,
      registered: live,
      expiresIn: live && r ? Math.round(r.expiresAt - this.p_.now()) : 0,
      certId: r ? toHex(r.certId) : "",
      joins: this.joins_,
      dropped: this.dropped_,
    };
  }

  transmit_(m: Message): void {
    if (this.send) this.send(encodeFrame(this.p_.cbor.encode(encodeMessage(m)), this.p_.crc32));
  }

  /** Retry after a failure, backing off exponentially (2 s, 4 s, ... 60 s) with jitter. */
  retryLater_(): void {
    this.reset_();
    this.failures_++;
    const base = Math.min(MAX_BACKOFF_MS, 1000 << Math.min(this.failures_, 6));
    const ms = base / 2 + (this.p_.crypto.random(1)[0] / 255) * (base / 2);
    this.timer_ = this.p_.after(ms, () => this.join());
  }

  join(): void {
    this.reset_();
    if (!this.send) return;
    // The counter is made durable before it is used: after a power cut the next join uses a higher
    // one, so the gateway never accepts the same counter twice and link keys are never repeated.
    const ctr = this.p_.loadCounter() + 1;
    if (!this.p_.storeCounter(ctr)) {
      this.p_.log("KP ctr not saved");
      this.retryLater_();
      return;
    }
    const nonce = this.p_.crypto.random(JOIN_NONCE_BYTES);
    const c = this.cfg_;
    this.st_ = { k: "joining", ctr: ctr, nonce: nonce };
    this.timer_ = this.p_.after(JOIN_TIMEOUT_MS, () => this.retryLater_());
    this.transmit_({ t: Msg.JoinRequest, id: c.id, ctr: ctr, nonce: nonce, suite: c.suite, tag: joinRequestTag(this.p_.crypto, this.p_.cbor, c.rootKey, c.id, ctr, nonce, c.suite) });
  }

  receive(bytes: Bytes): void {
    const frames = this.decoder_.push(bytes);
    for (const f of frames) this.onFrame_(f);
  }

  onFrame_(payload: Bytes): void {
    let m: Message | Error;
    try {
      m = decodeMessage(this.p_.cbor.decode(payload));
    } catch (e) {
      m = e as Error;
    }
    if (m instanceof Error) { this.drop_(m.message); return; }
    const s = this.st_;
    if (m.t === Msg.JoinAccept && s.k === "joining") this.onAccept_(s, m.nonce, m.tag);
    else if (m.t === Msg.JoinReject && s.k === "joining") { this.p_.log("KP join rejected"); this.retryLater_(); }
    else if (m.t === Msg.Link && s.k === "linked") {
      const inner = openMessage(this.p_.crypto, this.p_.cbor, s.link, m);
      if (typeof inner === "number") this.drop_("link " + inner);
      else this.onInner_(inner);
    } else this.drop_("msg " + m.t + " in " + s.k);
  }

  drop_(why: string): void {
    this.dropped_++;
    this.p_.log("KP drop: " + why);
  }

  onAccept_(s: Joining, nonceG: Bytes, tag: Bytes): void {
    const c = this.cfg_;
    const expect = joinAcceptTag(this.p_.crypto, this.p_.cbor, c.rootKey, c.id, s.ctr, s.nonce, c.suite, nonceG);
    if (!ctEqual(expect, tag)) { this.drop_("bad accept"); return; }
    this.p_.cancel(this.timer_);
    const keys = deriveLinkKeys(this.p_.crypto, this.p_.cbor, c.rootKey, c.id, s.ctr, s.nonce, nonceG, c.suite);
    this.st_ = { k: "linked", ctr: s.ctr, link: newLink(keys, true) };
    this.failures_ = 0;
    this.joins_++;
    this.p_.log("KP joined " + c.id);
    this.register();
  }

  request_(m: InnerMessage): boolean {
    const s = this.st_;
    if (s.k !== "linked" || !this.send) return false;
    let frame: Bytes;
    try {
      frame = sealMessage(this.p_.crypto, this.p_.cbor, s.link, m);
    } catch (e) {
      this.p_.log("KP " + (e as Error).message);
      this.join();
      return false;
    }
    this.send(encodeFrame(frame, this.p_.crc32));
    this.p_.cancel(this.timer_);
    this.timer_ = this.p_.after(REQUEST_TIMEOUT_MS, () => this.retryLater_());
    return true;
  }

  nextRid_(): number {
    this.rid_ = (this.rid_ % 0x7fffffff) + 1;
    this.pending_ = this.rid_;
    return this.rid_;
  }

  register(): boolean {
    const c = this.cfg_;
    return this.request_({ t: Msg.RegisterRequest, rid: this.nextRid_(), lifetime: c.lifetime, suites: c.suites, wantCert: true });
  }

  deregister(): boolean {
    return this.request_({ t: Msg.DeregisterRequest, rid: this.nextRid_() });
  }

  /** Asks for a peer's certificate (answered only with one valid now). */
  certQuery(name: string): boolean {
    return this.request_({ t: Msg.CertQuery, rid: this.nextRid_(), name: name });
  }

  onInner_(m: InnerMessage): void {
    if (!("rid" in m) || m.rid !== this.pending_) { this.drop_("stray answer"); return; }
    this.pending_ = 0;
    this.p_.cancel(this.timer_);
    this.last = { t: m.t, code: m.t === Msg.Error ? m.code : 0 };
    if (m.t === Msg.RegisterOk) {
      // Keep only what the device needs: the certificate id and when it runs out.
      this.reg_ = { certId: m.certId, expiresAt: this.p_.now() + m.granted };
      this.p_.log("KP registered for " + m.granted + "s");
      this.p_.cancel(this.renewTimer_);
      // Renew at 80% of the granted lifetime, as DHCP and SIP clients do.
      this.renewTimer_ = this.p_.after(Math.max(1000, m.granted * 800), () => { this.register(); });
    } else if (m.t === Msg.DeregisterOk) {
      this.reg_ = null;
      this.p_.cancel(this.renewTimer_);
      this.p_.log("KP deregistered");
    } else if (m.t === Msg.CertAnswer) this.p_.log("KP cert " + m.cert.length);
    else if (m.t === Msg.Error) this.p_.log("KP error " + m.code);
    else this.drop_("answer " + m.t);
  }
}
