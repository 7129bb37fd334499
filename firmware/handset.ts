// The handset's protocol engine: join, register, and end-to-end sessions with other devices, over
// whatever byte stream the board has. It touches no Espruino global: the board entry
// (firmware/targets/) hands it a Platform, so the same code runs on the device, in the emulator and in
// Node tests.
//
// States (explicit, as in lakers): down -> joining -> linked (registering -> registered).
// Sessions: an SA table looked up by SPI (seed 004 §3.3-3.4); each SA is the same record as the link
// (keys per direction, sequence number, replay window) with its SPI in every nonce.
//
// Memory: on a Puck.js every live function costs variables (docs/EMULATOR.md), so this is one class
// with few methods, and the Platform is Espruino's own natives passed as they are.

import { ctEqual, type Bytes } from "./bytes.ts";
import type { SymCrypto } from "./crypto/types.ts";
import { deframe, encodeFrame, type Crc32, type Deframer } from "./proto/frame.ts";
import { deriveLinkKeys, deriveSaKeys, joinTag, DIR_GROUP, DIR_UP, JOIN_NONCE_BYTES, ROLE_GROUP, type Codec } from "./proto/keys.ts";
import { crypt, type Link } from "./proto/link.ts";
import { decodeMessage, encodeMessage, Msg, type InnerMessage, type Message } from "./proto/messages.ts";

export interface HandsetConfig {
  id: string;
  rootKey: Bytes;
  /** Desired registration lifetime, seconds. */
  lifetime: number;
  /** Link suite (the board's preferred AEAD). */
  suite: number;
  /** [suite, priority] pairs registered for sessions; priority 1 is the best. */
  suites: number[][];
}

/** What the engine needs from its board. On Espruino: getTime, setTimeout, clearTimeout, print,
 *  E.CRC32 and process.memory themselves, plus one Storage function for the join counter. */
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
  /** The firmware's id, reported with each registration (on Espruino the build's KP_FIRMWARE:
   *  flash/build.ts). Absent: "unknown". */
  firmware?: string;
  /** Espruino's process.memory as it is: `usage` is the variables in use, reported with each
   *  registration. Absent where unknown (0 is reported). */
  memory?(): { usage: number };
}

/** A byte-stream transport: write() takes bytes (Espruino's Bluetooth.write does, as it is). */
export interface Port {
  write(b: Bytes): void;
}

/** One security association with a peer device. */
export interface Sa {
  spi: number;
  peer: string;
  app: string;
  link: Link;
  /** Local times it expires and by which to ask for its replacement; messages received so far (the
   *  limit counts each direction). */
  expiresAt: number;
  rekeyAt: number;
  limit: number;
  rx: number;
  /** Both devices confirmed (Connected received). */
  ready: boolean;
  /** The SPI of the SA that replaced this one, and when this one stops accepting frames (0: never). */
  by: number;
  retireAt: number;
  /** A rekey has been asked for. */
  rekeying: boolean;
}

declare const KP_GROUPS: boolean | undefined;
/** Whether this build carries group SAs (as in proto/link.ts: flash/build.ts makes it a literal). */
const GROUPS = typeof KP_GROUPS === "undefined" || KP_GROUPS;

export const JOIN_TIMEOUT_MS = 5000;
export const REQUEST_TIMEOUT_MS = 8000;
/** How long a replaced SA still accepts frames that were in flight. */
export const SA_OVERLAP_S = 10;
/** Rekey when this fraction of an SA's lifetime or message limit is used. */
export const REKEY_AT = 0.8;
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
  decoder_: Deframer;
  /** The join or request timeout, and the renewal timer (0: none). */
  timer_: any = 0;
  renew_: any = 0;
  failures_ = 0;
  rid_ = 0;
  /** Outstanding request id, 0 when none. */
  pending_ = 0;
  joins_ = 0;
  dropped_ = 0;
  /** The SA table. */
  sas: Sa[] = [];
  /** Type of the last answer and its error code (0 unless an Error): for the console and tests. */
  lastType = 0;
  lastCode = 0;
  /** Application hooks. onRequest decides an incoming session (default: refuse). */
  // (Declared only: a hook costs a device variable once the application sets it, not before.)
  declare onRequest?: (from: string, app: string) => boolean;
  declare onConnect?: (spi: number, peer: string, app: string, replaces: number) => void;
  declare onMessage?: (data: Bytes, spi: number, peer: string, app: string) => void;
  declare onClose?: (spi: number, reason: number) => void;

  constructor(cfg: HandsetConfig, p: Platform) {
    this.cfg_ = cfg;
    this.p_ = p;
    this.decoder_ = { buf_: new Uint8Array(0), dropped_: 0, crc32_: p.crc32 };
  }

  /** The transport is up: start a join. */
  up(port: Port): void {
    this.port = port;
    this.decoder_.buf_ = new Uint8Array(0);
    this.join();
  }

  /** The transport is gone: forget the link keys (SAs survive a short outage; the gateway ends
   *  them if the link stays down past its grace period). */
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
    if (all) this.renew_in_(0);
  }

  /** (Re)arms the renewal timer, or stops it (ms 0). Its closure is made here, in a scope that holds
   *  nothing else: a closure keeps its whole scope alive on Espruino (the message that granted the
   *  registration, and the frame buffer under it, would stay with it until the renewal). */
  renew_in_(ms: number): void {
    const p = this.p_;
    if (this.renew_) p.clearTimeout(this.renew_);
    this.renew_ = ms ? p.setTimeout(() => { this.renew_ = 0; this.register(); }, ms) : 0;
  }

  /** Arms the join or request timeout (timer_), after which we join again (with backoff unless
   *  fresh). As renew_in_, its closure's scope holds nothing but ms and fresh. */
  later_(ms: number, fresh?: boolean): void {
    const p = this.p_;
    if (this.timer_) p.clearTimeout(this.timer_);
    this.timer_ = p.setTimeout(() => this.join(!fresh), ms);
  }

  status(): { state: string; registered: boolean; expiresIn: number; certId: Bytes | null; joins: number; dropped: number; sas: number } {
    const r = this.reg_;
    const left = r ? Math.round(r.expiresAt - this.p_.now()) : 0;
    return { state: this.st_.k, registered: left > 0, expiresIn: left > 0 ? left : 0, certId: r ? r.certId : null, joins: this.joins_, dropped: this.dropped_, sas: this.sas.length };
  }

  /** Joins now, or after a failure (backoff) again after an exponential backoff (2 s, 4 s, ... 60 s)
   *  with jitter. */
  join(backoff?: boolean): void {
    const p = this.p_;
    const c = this.cfg_;
    this.reset_(false);
    if (backoff) {
      this.failures_++;
      const base = Math.min(MAX_BACKOFF_MS, 1000 << Math.min(this.failures_, 6));
      this.later_(base / 2 + (p.crypto.random(1)[0] / 255) * (base / 2), true);
      return;
    }
    if (!this.port) return;
    // The counter is made durable before it is used: after a power cut the next join uses a higher
    // one, so the gateway never accepts the same counter twice and link keys are never repeated.
    const ctr = p.counter() + 1;
    if (p.counter(ctr) !== ctr) {
      p.log("KP ctr not saved");
      this.join(true);
      return;
    }
    const nonce = p.crypto.random(JOIN_NONCE_BYTES);
    this.st_ = { k: "joining", ctr: ctr, nonce: nonce };
    this.later_(JOIN_TIMEOUT_MS);
    const tag = joinTag(p.crypto, p.cbor, c.rootKey, c.id, ctr, nonce, c.suite);
    this.port.write(encodeFrame(p.cbor.encode(encodeMessage({ t: Msg.JoinRequest, id: c.id, ctr: ctr, nonce: nonce, suite: c.suite, tag: tag })), p.crc32));
  }

  /** The SA with this SPI (following replacements when asked), dropping any whose time is up. With
   *  drop set, deletes that SA and the ones it replaced instead (keys wiped). */
  sa_(spi: number, follow: boolean, drop?: boolean): Sa | undefined {
    const now = this.p_.now();
    let found: Sa | undefined;
    if (drop) for (const s of this.sas) if (s.spi === spi || s.by === spi) s.expiresAt = 0;
    for (let i = this.sas.length - 1; i >= 0; i--) {
      const s = this.sas[i];
      if (now >= s.expiresAt || (s.retireAt && now >= s.retireAt)) {
        s.link.keys_.up.fill(0);
        s.link.keys_.down.fill(0);
        this.sas.splice(i, 1);
      } else if (s.spi === spi) found = s;
    }
    return found && follow && found.by ? this.sa_(found.by, true) : found;
  }

  /** Bytes from the transport: whole frames are decoded and acted on. Whatever is dropped is counted
   *  and logged with a short reason (a number for link drops: DROP_REASONS in proto/link.ts). */
  receive(bytes: Bytes): void {
    const p = this.p_;
    const c = this.cfg_;
    for (const f of deframe(this.decoder_, bytes)) {
      let m: Message | Error | Bytes | number;
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
          const keys = deriveLinkKeys(p.crypto, p.cbor, c.rootKey, c.id, s.ctr, s.nonce, m.nonce, c.suite);
          this.st_ = { k: "linked", ctr: s.ctr, link: { keys_: keys, txDir_: DIR_UP, txSeq_: 0, rx_: { top: 0, bits: 0 } } };
          this.failures_ = 0;
          // After a boot the device holds no SAs: the gateway ends whatever it had (spi 0: all).
          if (!this.joins_++) this.request_({ t: Msg.Bye, spi: 0 }, false);
          p.log("KP joined " + c.id);
          this.register();
        }
      } else if (m.t === Msg.JoinReject && s.k === "joining") {
        p.log("KP join rejected");
        this.join(true);
      } else if (m.t === Msg.SaData && s.k === "linked") {
        // End-to-end data from a peer, relayed by the gateway.
        const sa = this.sa_(m.spi, false);
        // Drop reasons beyond the link's (1-6): 7 the SA's message limit is used up, 8 no such SA.
        const data = sa ? (sa.rx < sa.limit ? crypt(p.crypto, p.cbor, sa.link, m.spi, m.seq, m.sealed, true) : 7) : 8;
        if (typeof data === "number") drop = "sa " + data;
        else if (sa) {
          sa.rx++;
          if (this.onMessage) this.onMessage(data, sa.by || sa.spi, sa.peer, sa.app);
        }
      } else if (m.t === Msg.Link && s.k === "linked") {
        m = crypt(p.crypto, p.cbor, s.link, 0, m.seq, m.sealed, true);
        if (typeof m !== "number") {
          try {
            m = decodeMessage(p.cbor.decode(m));
          } catch (e) {
            m = 5;
          }
        }
        if (typeof m === "number" || m instanceof Error || m.t < Msg.RegisterRequest) drop = "link " + (typeof m === "number" ? m : 5);
        else drop = this.inner_(m as InnerMessage);
      } else drop = "msg " + m.t + " in " + s.k;
      if (drop) {
        this.dropped_++;
        p.log("KP drop: " + drop);
      }
    }
  }

  /** An authentic message from the gateway: returns why it was dropped, or "". */
  inner_(a: InnerMessage): string {
    const p = this.p_;
    if (a.t === Msg.Incoming) {
      // The callee decides (seed 003 step 2118): the application's hook, or no.
      this.request_({ t: Msg.Answer, rid: a.rid, accept: !!this.onRequest && this.onRequest(a.from, a.app) === true }, false);
      return "";
    }
    if ("rid" in a && a.rid && a.rid === this.pending_) {
      this.pending_ = 0;
      p.clearTimeout(this.timer_);
      this.timer_ = 0;
      this.lastType = a.t;
      this.lastCode = a.t === Msg.Error ? a.code : 0;
    } else if (a.t !== Msg.SaInstall && a.t !== Msg.Connected && a.t !== Msg.SaClosed) return "stray answer";
    if (a.t === Msg.RegisterOk) {
      // Keep only what the device needs: the certificate id and when it runs out.
      // (A copy: a.certId is a view into the whole received frame, which would stay alive with it.)
      this.reg_ = { certId: new Uint8Array(a.certId), expiresAt: p.now() + a.granted };
      p.log("KP registered for " + a.granted + "s");
      // Renew at 80% of the granted lifetime, as DHCP and SIP clients do.
      this.renew_in_(Math.max(1000, a.granted * 800));
    } else if (a.t === Msg.DeregisterOk) {
      this.reg_ = null;
      this.renew_in_(0);
      p.log("KP deregistered");
    } else if (a.t === Msg.SaInstall) {
      // Key distribution: expand the seed, install the SA (not ready until Connected), confirm.
      // Role 0 sends up, 1 down (DIR_UP 0, DIR_DOWN 1); ROLE_GROUP + i is group member i, which sends
      // and receives under the one group key with its sender index in the nonce. A build without
      // groups confirms a group key with a role 0 or 1 tag, which the gateway refuses: it is left
      // out (SaClosed) and never seals under a key whose nonces it would not keep apart.
      const keys = deriveSaKeys(p.crypto, p.cbor, a.seed, a.spi, a.suite, GROUPS ? a.role : a.role & 1);
      const link: Link = { keys_: keys, txDir_: GROUPS && a.role >= ROLE_GROUP ? DIR_GROUP : a.role, txSeq_: 0, rx_: { top: 0, bits: 0 } };
      if (GROUPS && a.role >= ROLE_GROUP) {
        link.me_ = a.role - ROLE_GROUP;
        link.rxs_ = [];
      }
      const sa: Sa = {
        spi: a.spi, peer: a.peer, app: a.app, link: link,
        expiresAt: p.now() + a.lifetime, rekeyAt: p.now() + a.lifetime * REKEY_AT, limit: a.limit, rx: 0, ready: false, by: 0, retireAt: 0, rekeying: false,
      };
      this.sas.push(sa);
      this.request_({ t: Msg.SaConfirm, rid: a.rid, spi: a.spi, tag: keys.confirm }, false);
      a.seed.fill(0);
    } else if (a.t === Msg.Connected) {
      const sa = this.sa_(a.spi, false);
      if (!sa) return "connected: no SA";
      sa.ready = true;
      if (a.replaces) {
        // Rekey: send on the new SA from now on; the old ones take frames in flight a little longer.
        for (const o of this.sas) {
          if (o.spi === a.replaces || (o.by && o.by === a.replaces)) {
            o.by = a.spi;
            if (!o.retireAt) o.retireAt = p.now() + SA_OVERLAP_S;
          }
        }
      }
      p.log("KP sa up " + sa.peer);
      if (this.onConnect) this.onConnect(a.spi, sa.peer, sa.app, a.replaces);
    } else if (a.t === Msg.SaClosed) {
      this.sa_(a.spi, false, true);
      if (this.onClose) this.onClose(a.spi, a.reason);
    } else if (a.t === Msg.CertAnswer) p.log("KP cert " + a.cert.length);
    else if (a.t === Msg.Error) p.log("KP error " + a.code);
    else return "answer " + a.t;
    return "";
  }

  /** Sends an inner message over the link. A request (answer expected) gets a fresh request id and a
   *  timeout that leads to a new join; a reply or notice goes as it is. */
  request_(m: InnerMessage, answer: boolean): boolean {
    const p = this.p_;
    const s = this.st_;
    if (s.k !== "linked" || !this.port) return false;
    if (answer) {
      this.rid_ = (this.rid_ % 0x7fffffff) + 1;
      (m as { rid: number }).rid = this.pending_ = this.rid_;
    }
    let frame: Bytes;
    try {
      frame = crypt(p.crypto, p.cbor, s.link, 0, 0, p.cbor.encode(encodeMessage(m)), false) as Bytes;
    } catch (e) {
      p.log("KP " + (e as Error).message);
      this.join();
      return false;
    }
    this.port.write(encodeFrame(frame, p.crc32));
    if (answer) this.later_(REQUEST_TIMEOUT_MS);
    return true;
  }

  /** Registers (or renews) for the configured lifetime, or for `lifetime` seconds; register(0)
   *  deregisters, as SIP's Expires: 0 does. Each registration reports the firmware id and the
   *  variables in use, for the operator (docs/MONITORING.md). */
  register(lifetime?: number): boolean {
    const c = this.cfg_;
    const p = this.p_;
    return this.request_({
      t: Msg.RegisterRequest, rid: 0, lifetime: lifetime === undefined ? c.lifetime : lifetime, suites: c.suites, wantCert: true,
      firmware: p.firmware || "unknown", memory: p.memory ? p.memory().usage : 0,
    }, true);
  }

  /** Asks for a peer's certificate (answered only with one valid now). */
  certQuery(name: string): boolean {
    return this.request_({ t: Msg.CertQuery, rid: 0, name: name }, true);
  }

  /** Asks for a session with a peer, by name, for an application. onConnect fires when both ends
   *  hold the keys; a refusal ends up in lastCode (2 unknown or not allowed, 6 no common suite,
   *  7 declined). */
  connect(peer: string, app: string): boolean {
    return this.request_({ t: Msg.ConnectRequest, rid: 0, peer: peer, app: app, from: this.cfg_.id }, true);
  }

  /** Sends data to the peer of an SA (after a rekey, the old SPI still works: it follows the new
   *  one). False when there is no such SA, or it is used up; asks for a rekey in good time. */
  send(spi: number, data: Bytes): boolean {
    const p = this.p_;
    const sa = this.sa_(spi, true);
    if (!sa || !sa.ready || !this.port || sa.link.txSeq_ >= sa.limit) return false;
    if (!sa.rekeying && (sa.link.txSeq_ >= sa.limit * REKEY_AT || p.now() >= sa.rekeyAt)) {
      // Seed 001 re-keying, before the lifetime or the message limit runs out; either end may ask.
      // A notice, not a request: if the peer asked at the same moment, the gateway makes one
      // replacement for both, and each end learns of it from SaInstall and Connected.
      sa.rekeying = this.request_({ t: Msg.Rekey, rid: 0, spi: sa.spi }, false);
    }
    this.port.write(encodeFrame(crypt(p.crypto, p.cbor, sa.link, sa.spi, 0, data, false) as Bytes, p.crc32));
    return true;
  }

  /** Ends a session: the gateway tells the peer, and both ends delete the SA. */
  close(spi: number): boolean {
    const sa = this.sa_(spi, true);
    if (!sa) return false;
    this.sa_(sa.spi, false, true);
    return this.request_({ t: Msg.Bye, spi: sa.spi }, false);
  }
}
