// Sessions across gateways (design.md flow 5; seed 004 E3: a key exchange proxy on both sides).
//
// A device asks its gateway for "bob@b.example". The caller's gateway (A) sees a domain other than its
// own and runs the exchange of gateway/exchange.ts with b.example's gateway (B) over the interlink, in
// the caller's name; B asks its device (Incoming/Answer) before it answers, so a refusal, a denial and
// an unknown name all look alike to A. On success each gateway hands the derived seed to its own
// device (SaInstall), checks that device's key confirmation (SaConfirm), tells the other gateway, and
// once both devices confirmed each sends Connected to its own device. SA frames then cross the
// interlink signed but not encrypted: they are end-to-end protected already and neither gateway can
// alter them undetected.
//
//   A                                            B
//   ConnectRequest(bob@b.example) from alice
//   --- kp.x.1 {msg1} ------------------------>  checks bob, policy, suites; Incoming -> bob, Answer
//   <-------------------------------- {msg2} ---  (or {refused: "not-found" | "rejected" | "no-common-suite"})
//   --- kp.x.3 {msg3} ------------------------>  SaInstall -> bob
//   <-------------------------------- {msg4} ---
//   SaInstall -> alice
//   SaConfirm <- alice; --- kp.x.confirmed --->  SaConfirm <- bob; <--- kp.x.confirmed ---
//   Connected -> alice                           Connected -> bob
//   SaData <-> --------- kp.x.sa {spi, frame} <-> SaData
//   Bye / SaClosed ----- kp.x.bye {spi} ------->  SaClosed
//
// Not here yet (the broker does these for local sessions): rekey of a cross-gateway SA, the lost-link
// grace period, and the capable-peer SDK (gateway/peer-sdk.ts) that would speak msg1..msg4 itself.

import { ctEqual, toHex } from "../firmware/bytes.ts";
import { saConfirmTag } from "../firmware/proto/keys.ts";
import { CloseReason, ErrorCode, Msg, type InnerMessage, type SaData } from "../firmware/proto/messages.ts";
import * as cbor from "./cbor.ts";
import {
  decodeMsg1,
  decodeMsg2,
  decodeMsg3,
  decodeMsg4,
  encodeMsg1,
  encodeMsg2,
  encodeMsg3,
  encodeMsg4,
  ExchangeError,
  Initiator,
  Responder,
  SeenSessions,
  type ExchangeDeps,
  type ExchangeResult,
  type LocalParty,
} from "./exchange.ts";
import { isGatewayId } from "./fleet.ts";
import type { SessionHook, SessionHookContext } from "./gateway.ts";
import { InterlinkError, type Interlink, type InterlinkRequest } from "./interlink.ts";
import { matchSettings, suiteCandidates } from "./matching.ts";
import type { CertificateChecker } from "./verifier.ts";

export const XGW_MSG1 = "kp.x.1";
export const XGW_MSG3 = "kp.x.3";
export const XGW_CONFIRMED = "kp.x.confirmed";
export const XGW_SA = "kp.x.sa";
export const XGW_BYE = "kp.x.bye";

/** Rids for Incoming from this module start here, so they never meet the session broker's (1 .. 2^31-1). */
const RID_BASE = 0x80000000;

export interface CrossGatewayOptions {
  /** The interlink of this gateway (its identity's gatewayId must be the gateway id, i.e. its domain). */
  interlink: Interlink;
  /** This gateway's certificate from the fleet CA: it travels with every device certificate. */
  gatewayCert: Uint8Array;
  /** Judges the other gateway's device certificates (a Verifier holding the fleet revocation list). */
  checker: CertificateChecker;
}

type Refusal = "not-found" | "rejected" | "no-common-suite";
const REFUSAL_CODE: Record<Refusal, ErrorCode> = { "not-found": ErrorCode.NotFound, rejected: ErrorCode.Rejected, "no-common-suite": ErrorCode.NoCommonSuite };

/** One SA between a device of ours and a device behind another gateway. */
interface CrossSession {
  spi: number;
  /** Our device's id, and the peer's "name@domain". */
  device: string;
  peer: string;
  peerGateway: string;
  app: string;
  suite: number;
  role: 0 | 1;
  /** Held only until our device confirmed; then wiped. */
  seed: Uint8Array | null;
  localConfirmed: boolean;
  remoteConfirmed: boolean;
  state: "confirming" | "up";
  timer: NodeJS.Timeout | null;
}

interface WaitingAnswer {
  resolve: (accept: boolean) => void;
  timer: NodeJS.Timeout;
}

interface WaitingMsg3 {
  responder: Responder;
  callee: string;
  calleeRid: number;
  peerGateway: string;
  timer: NodeJS.Timeout;
}

/** The hook for GatewayOptions.sessionHook. */
export function crossGatewayHook(opts: CrossGatewayOptions): (ctx: SessionHookContext) => SessionHook {
  return (ctx) => new CrossGateway(ctx, opts);
}

/** "name@domain" split, or undefined. */
function splitName(s: string): { name: string; domain: string } | undefined {
  const at = s.lastIndexOf("@");
  if (at <= 0) return undefined;
  const domain = s.slice(at + 1);
  return isGatewayId(domain) ? { name: s.slice(0, at), domain } : undefined;
}

function bytesField(body: unknown, what: string): Uint8Array {
  if (!(body instanceof Uint8Array)) throw new InterlinkError("malformed", `${what} body must be bytes`);
  return body;
}

function spiField(body: unknown, what: string): { spi: number; m: Map<unknown, unknown> } {
  const spi = body instanceof Map ? body.get("spi") : undefined;
  if (!(body instanceof Map) || typeof spi !== "number" || !Number.isSafeInteger(spi) || spi <= 0 || spi > 0xffffffff) {
    throw new InterlinkError("malformed", `${what} body must be a map with an spi`);
  }
  return { spi, m: body };
}

/** ExchangeErrors become interlink errors the peer can read; they carry no key material. */
function asInterlinkError(e: unknown): unknown {
  return e instanceof ExchangeError ? new InterlinkError("malformed", `exchange refused (${e.code}): ${e.message}`, { cause: e }) : e;
}

export class CrossGateway implements SessionHook {
  readonly sessions = new Map<number, CrossSession>();
  readonly stats = { requested: 0, up: 0, refused: 0, failed: 0, relayed: 0, relayDropped: 0, ended: 0 };
  private readonly answers = new Map<string, WaitingAnswer>(); // key: callee + "/" + rid
  private readonly exchanges = new Map<string, WaitingMsg3>(); // key: session id, hex
  /** SPIs the peer gateway confirmed before our side installed them (the interlink does not order
   *  a response and a later request); consumed by install. */
  private readonly earlyConfirmed = new Map<number, string>();
  private readonly seen = new SeenSessions();
  private readonly exchangeDeps: ExchangeDeps;
  private rid = 0;
  private closed = false;

  constructor(
    private readonly ctx: SessionHookContext,
    private readonly opts: CrossGatewayOptions,
  ) {
    if (opts.interlink.gatewayId !== ctx.gatewayId) throw new TypeError(`the interlink speaks for "${opts.interlink.gatewayId}", the gateway is "${ctx.gatewayId}"`);
    this.exchangeDeps = { checker: opts.checker, now: ctx.now, timeout: Math.ceil(ctx.settings.answerTimeoutMs / 1000) + 30 };
    const link = opts.interlink;
    link.handle(XGW_MSG1, (req) => this.onMsg1(req).catch((e: unknown) => Promise.reject(asInterlinkError(e))));
    link.handle(XGW_MSG3, (req) => this.onMsg3(req).catch((e: unknown) => Promise.reject(asInterlinkError(e))));
    link.handle(XGW_CONFIRMED, (req) => this.onConfirmed(req));
    link.handle(XGW_SA, (req) => this.onSaFrame(req));
    link.handle(XGW_BYE, (req) => this.onBye(req));
  }

  // --- from our devices ----------------------------------------------------------------------------

  handle(deviceId: string, m: InnerMessage): boolean {
    switch (m.t) {
      case Msg.ConnectRequest: {
        const target = splitName(m.peer);
        // A name in our own domain, a bare name, or a spoofed caller: the session broker's business.
        if (!target || target.domain === this.ctx.gatewayId || m.from !== deviceId) return false;
        void this.connect(deviceId, m.rid, m.peer, target.domain, m.app);
        return true;
      }
      case Msg.Answer: {
        const w = this.answers.get(`${deviceId}/${m.rid}`);
        if (!w) return false;
        w.resolve(m.accept);
        return true;
      }
      case Msg.SaConfirm: {
        const s = this.sessions.get(m.spi);
        if (!s || s.device !== deviceId) return false;
        this.confirmLocal(s, m.tag);
        return true;
      }
      case Msg.Rekey: {
        const s = this.sessions.get(m.spi);
        if (!s || s.device !== deviceId) return false;
        // Not built yet: the device keeps its SA until it ends; a new connect makes a new one.
        // A Rekey is a notice: nothing to answer; the SA runs until its lifetime or limit.
        this.ctx.log.warn("xsession-rekey-unsupported", { device: deviceId, spi: m.spi, reason: "rekey of a cross-gateway SA is not implemented" });
        return true;
      }
      case Msg.Bye: {
        if (m.spi === 0) {
          // The device restarted: its cross-gateway SAs end too, and the broker ends the local ones.
          for (const s of [...this.sessions.values()]) if (s.device === deviceId) this.end(s, CloseReason.PeerGone, "the device restarted and holds no SAs", true);
          return false;
        }
        const s = this.sessions.get(m.spi);
        if (!s || s.device !== deviceId) return false;
        this.end(s, CloseReason.Bye, `bye from ${deviceId}`, true);
        return true;
      }
      default:
        return false;
    }
  }

  relay(deviceId: string, m: SaData, payload: Uint8Array): boolean {
    const s = this.sessions.get(m.spi);
    // Another device's SPI: the broker's to judge (its local SPIs are drawn independently of ours).
    if (!s || s.device !== deviceId) return false;
    if (s.state !== "up") {
      this.stats.relayDropped++;
      this.ctx.log.warn("frame dropped", { device: deviceId, spi: m.spi, reason: "SA frame before both devices confirmed" });
      return true;
    }
    this.opts.interlink
      .request(s.peerGateway, XGW_SA, new Map<string, unknown>([["spi", s.spi], ["frame", payload]]))
      .then(() => this.stats.relayed++)
      .catch((e: unknown) => {
        this.stats.relayDropped++;
        this.ctx.log.warn("frame dropped", { device: deviceId, spi: m.spi, reason: `the peer gateway did not take it: ${e instanceof Error ? e.message : String(e)}` });
      });
    return true;
  }

  deviceGone(deviceId: string): void {
    for (const s of [...this.sessions.values()]) if (s.device === deviceId) this.end(s, CloseReason.Deregistered, "deregistered", true);
  }

  close(): void {
    this.closed = true;
    for (const s of this.sessions.values()) {
      if (s.timer) clearTimeout(s.timer);
      if (s.seed) s.seed.fill(0);
    }
    for (const w of this.answers.values()) {
      clearTimeout(w.timer);
      w.resolve(false);
    }
    for (const x of this.exchanges.values()) {
      clearTimeout(x.timer);
      x.responder.abort("gateway stopped");
    }
    this.sessions.clear();
    this.answers.clear();
    this.exchanges.clear();
  }

  // --- the caller's side ---------------------------------------------------------------------------

  /** A registered device of ours as the exchange presents it, or why not. */
  private localParty(deviceId: string): { party: LocalParty; suites: number[][] } | string {
    const reg = this.ctx.store.getRegistration(deviceId);
    if (!reg || reg.expiresAt <= this.ctx.now()) return "not registered";
    const dev = this.ctx.store.getDevice(deviceId);
    if (!dev || dev.revokedAt !== null) return "revoked or unknown";
    if (!dev.identitySeed || !reg.cert) return "registered without a certificate";
    return { party: { name: `${deviceId}@${this.ctx.gatewayId}`, identitySeed: dev.identitySeed, cert: reg.cert, gatewayCert: this.opts.gatewayCert }, suites: reg.suites };
  }

  private async connect(caller: string, rid: number, peer: string, domain: string, app: string): Promise<void> {
    const { ctx } = this;
    this.stats.requested++;
    const fail = (code: ErrorCode, event: string, reason: string): void => {
      ctx.log.info(event, { device: caller, peer, app, reason });
      ctx.send(caller, { t: Msg.Error, rid, code });
    };
    const own = this.localParty(caller);
    if (typeof own === "string") {
      this.stats.refused++;
      return fail(own === "not registered" ? ErrorCode.NotRegistered : ErrorCode.NotFound, "xsession-rejected", `caller is ${own}`);
    }
    if (!ctx.policy.permits(caller, peer, app)) {
      this.stats.refused++;
      return fail(ErrorCode.NotFound, "xsession-denied", "policy denies it");
    }
    let init: Initiator | undefined;
    try {
      init = new Initiator(this.exchangeDeps, own.party, peer, app, own.suites);
      const sessionId = init.msg1.sessionId;
      ctx.log.info("xsession-requested", { device: caller, peer, app, gateway: domain });
      const a2 = await this.opts.interlink.request(domain, XGW_MSG1, encodeMsg1(init.msg1), { sessionId, timeoutMs: ctx.settings.answerTimeoutMs + 5000 });
      if (a2 instanceof Map) {
        const why = a2.get("refused") as Refusal;
        this.stats.refused++;
        init.abort(`refused: ${String(why)}`);
        return fail(REFUSAL_CODE[why] ?? ErrorCode.NotFound, "xsession-rejected", `the peer gateway answered ${String(why)}`);
      }
      const msg3 = await init.onMsg2(decodeMsg2(bytesField(a2, "message 2")));
      const a4 = await this.opts.interlink.request(domain, XGW_MSG3, encodeMsg3(msg3), { sessionId });
      const result = init.onMsg4(decodeMsg4(bytesField(a4, "message 4")));
      this.install(result, caller, domain, rid, 0);
    } catch (e) {
      this.stats.failed++;
      init?.abort("failed");
      // A message, never key bytes: ExchangeError and InterlinkError say what was wrong with the shape.
      const reason = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
      ctx.log.warn("xsession-failed", { device: caller, peer, app, gateway: domain, reason });
      ctx.send(caller, { t: Msg.Error, rid, code: ErrorCode.Rejected });
    }
  }

  // --- the callee's side ---------------------------------------------------------------------------

  private nextRid(): number {
    this.rid = (this.rid + 1) % 0x7fffffff;
    return RID_BASE + this.rid;
  }

  /** Asks our device whether it takes the call; false when it declines or does not answer in time. */
  private ask(callee: string, from: string, app: string, suite: number): { rid: number; accepted: Promise<boolean> } {
    const rid = this.nextRid();
    const key = `${callee}/${rid}`;
    const accepted = new Promise<boolean>((resolve) => {
      const done = (accept: boolean): void => {
        const w = this.answers.get(key);
        if (!w) return;
        clearTimeout(w.timer);
        this.answers.delete(key);
        resolve(accept);
      };
      this.answers.set(key, { resolve: done, timer: setTimeout(() => done(false), this.ctx.settings.answerTimeoutMs) });
    });
    this.ctx.send(callee, { t: Msg.Incoming, rid, from, app, suite });
    return { rid, accepted };
  }

  private async onMsg1(req: InterlinkRequest): Promise<{ body: unknown }> {
    const { ctx } = this;
    const msg1 = decodeMsg1(bytesField(req.body, "message 1"));
    // A gateway speaks only for its own devices: msg1.from must be in the sender's domain.
    if (splitName(msg1.from)?.domain !== req.from) throw new InterlinkError("untrusted-peer", `"${req.from}" cannot call in the name of "${msg1.from}"`);
    const refuse = (why: Refusal, reason: string): { body: unknown } => {
      this.stats.refused++;
      ctx.log.info(why === "not-found" ? "xsession-not-found" : "xsession-rejected", { device: msg1.to, peer: msg1.from, app: msg1.app, reason });
      return { body: new Map([["refused", why]]) };
    };
    const target = splitName(msg1.to);
    const callee = target && target.domain === ctx.gatewayId ? target.name : undefined;
    const local = callee ? this.localParty(callee) : "not in this domain";
    // One answer for every reason, so the caller learns nothing about the callee (seed 002 [0055]).
    if (!callee || typeof local === "string") return refuse("not-found", `callee is ${typeof local === "string" ? local : "unknown"}`);
    if (!ctx.policy.permits(msg1.from, callee, msg1.app)) return refuse("not-found", "policy denies it");
    if (!ctx.isLinked(callee)) return refuse("not-found", "the callee is not connected");
    const match = matchSettings(suiteCandidates(msg1.suites), suiteCandidates(local.suites), ctx.settings.matching);
    if (!match) return refuse("no-common-suite", "no cipher suite both devices registered; the callee was not contacted");
    if (this.seen.has(msg1.sessionId)) throw new ExchangeError("replay", "message 1 repeats a session id already seen");
    const { rid, accepted } = this.ask(callee, msg1.from, msg1.app, match.callee.id as number);
    if (!(await accepted)) return refuse("rejected", "the callee declined or did not answer");
    const responder = new Responder({ ...this.exchangeDeps, seen: this.seen, matching: ctx.settings.matching }, msg1, { ...local.party, name: msg1.to, suites: local.suites });
    const key = toHex(msg1.sessionId);
    const timer = setTimeout(() => {
      this.exchanges.delete(key);
      responder.abort("message 3 did not come in time");
    }, (this.exchangeDeps.timeout ?? 30) * 1000);
    this.exchanges.set(key, { responder, callee, calleeRid: rid, peerGateway: req.from, timer });
    return { body: encodeMsg2(responder.msg2) };
  }

  private async onMsg3(req: InterlinkRequest): Promise<{ body: unknown }> {
    const msg3 = decodeMsg3(bytesField(req.body, "message 3"));
    const key = toHex(msg3.sessionId);
    const x = this.exchanges.get(key);
    if (!x || x.peerGateway !== req.from) throw new ExchangeError("unexpected", "message 3 for no exchange waiting for it");
    const { msg4, result } = await x.responder.onMsg3(msg3);
    clearTimeout(x.timer);
    this.exchanges.delete(key);
    this.install(result, x.callee, req.from, x.calleeRid, 1);
    return { body: encodeMsg4(msg4) };
  }

  // --- both sides ----------------------------------------------------------------------------------

  /** The key transfer of seed 004: the derived seed to our own device. */
  private install(r: ExchangeResult, device: string, peerGateway: string, rid: number, role: 0 | 1): void {
    const { ctx } = this;
    if (this.closed || this.sessions.has(r.spi) || ctx.sessions.sessions.has(r.spi)) {
      // A derived SPI that is taken here (odds 2^-32 per SA): refuse rather than mix two SAs.
      r.seed.fill(0);
      ctx.log.warn("xsession-failed", { device, peer: r.peer, reason: "the derived SPI is in use at this gateway" });
      if (role === 0) ctx.send(device, { t: Msg.Error, rid, code: ErrorCode.Rejected });
      void this.opts.interlink.request(peerGateway, XGW_BYE, new Map<string, unknown>([["spi", r.spi], ["reason", CloseReason.PeerGone]])).catch(() => undefined);
      return;
    }
    const s: CrossSession = {
      spi: r.spi, device, peer: r.peer, peerGateway, app: r.app, suite: r.suite, role, seed: r.seed,
      localConfirmed: false, remoteConfirmed: this.earlyConfirmed.get(r.spi) === peerGateway, state: "confirming", timer: null,
    };
    this.earlyConfirmed.delete(r.spi);
    this.sessions.set(s.spi, s);
    s.timer = setTimeout(() => this.end(s, CloseReason.PeerGone, "the devices did not confirm their keys in time", true), ctx.settings.answerTimeoutMs);
    const { lifetime, limit } = ctx.settings;
    ctx.send(device, { t: Msg.SaInstall, rid, spi: s.spi, peer: s.peer, app: s.app, suite: s.suite, seed: r.seed, role, lifetime, limit, replaces: 0 });
    ctx.log.info("xsession-keys-distributed", { device, peer: s.peer, app: s.app, spi: s.spi, suite: s.suite, gateway: peerGateway });
  }

  private confirmLocal(s: CrossSession, tag: Uint8Array): void {
    const { ctx } = this;
    if (s.state !== "confirming" || !s.seed) {
      ctx.log.warn("session-confirm-dropped", { device: s.device, spi: s.spi, reason: "no SA awaiting this device's confirmation" });
      return;
    }
    if (!ctEqual(saConfirmTag(ctx.crypto, cbor, s.seed, s.spi, s.role), tag)) {
      ctx.log.warn("session-confirm-dropped", { device: s.device, spi: s.spi, reason: "key confirmation does not verify" });
      this.end(s, CloseReason.PeerGone, "a key confirmation did not verify", true);
      return;
    }
    // Our device holds the keys: this gateway no longer needs the seed.
    s.seed.fill(0);
    s.seed = null;
    s.localConfirmed = true;
    this.opts.interlink
      .request(s.peerGateway, XGW_CONFIRMED, new Map<string, unknown>([["spi", s.spi]]))
      .catch((e: unknown) => this.end(s, CloseReason.PeerGone, `the peer gateway did not take our confirmation: ${e instanceof Error ? e.message : String(e)}`, false));
    this.maybeUp(s);
  }

  private maybeUp(s: CrossSession): void {
    if (s.state !== "confirming" || !s.localConfirmed || !s.remoteConfirmed || !this.sessions.has(s.spi)) return;
    const { ctx } = this;
    if (s.timer) clearTimeout(s.timer);
    s.state = "up";
    s.timer = setTimeout(() => this.end(s, CloseReason.Expired, "lifetime over", false), (ctx.settings.lifetime + 5) * 1000);
    this.stats.up++;
    ctx.send(s.device, { t: Msg.Connected, spi: s.spi, replaces: 0 });
    ctx.log.info("xsession-up", { device: s.device, peer: s.peer, app: s.app, spi: s.spi, gateway: s.peerGateway });
    ctx.store.audit(ctx.now(), s.device, "session-up", `peer=${s.peer} app=${s.app} spi=${s.spi.toString(16).padStart(8, "0")} via=${s.peerGateway}`);
  }

  /** Ends an SA here; notifyPeer tells the other gateway, which ends it at its device. */
  private end(s: CrossSession, reason: CloseReason, why: string, notifyPeer: boolean): void {
    if (this.sessions.get(s.spi) !== s) return;
    this.sessions.delete(s.spi);
    if (s.timer) clearTimeout(s.timer);
    if (s.seed) s.seed.fill(0);
    this.stats.ended++;
    this.ctx.send(s.device, { t: Msg.SaClosed, spi: s.spi, reason });
    this.ctx.log.info("xsession-down", { device: s.device, peer: s.peer, app: s.app, spi: s.spi, reason: why });
    this.ctx.store.audit(this.ctx.now(), s.device, "session-down", `peer=${s.peer} spi=${s.spi.toString(16).padStart(8, "0")} ${why}`);
    if (notifyPeer && !this.closed) {
      const peerReason = reason === CloseReason.Bye ? CloseReason.Bye : CloseReason.PeerGone;
      void this.opts.interlink.request(s.peerGateway, XGW_BYE, new Map<string, unknown>([["spi", s.spi], ["reason", peerReason]])).catch(() => undefined);
    }
  }

  /** A session of ours with this SPI that the sending gateway is party to. */
  private peerSession(req: InterlinkRequest, what: string): { s: CrossSession | undefined; spi: number; m: Map<unknown, unknown> } {
    const { spi, m } = spiField(req.body, what);
    const s = this.sessions.get(spi);
    if (s && s.peerGateway !== req.from) throw new InterlinkError("malformed", `${what}: "${req.from}" is not party to this SPI`);
    return { s, spi, m };
  }

  private onConfirmed(req: InterlinkRequest): { body: unknown } {
    const { s, spi } = this.peerSession(req, XGW_CONFIRMED);
    if (!s) {
      // Our install may still be on its way (msg4's answer and this request travel separately).
      if (this.earlyConfirmed.size < 1024) this.earlyConfirmed.set(spi, req.from);
      return { body: 0 };
    }
    s.remoteConfirmed = true;
    this.maybeUp(s);
    return { body: 0 };
  }

  private onSaFrame(req: InterlinkRequest): { body: unknown } {
    const { s, m } = this.peerSession(req, XGW_SA);
    const frame = m.get("frame");
    if (!(frame instanceof Uint8Array)) throw new InterlinkError("malformed", `${XGW_SA}: frame must be bytes`);
    if (!s || s.state !== "up" || !this.ctx.relay(s.device, frame)) {
      this.stats.relayDropped++;
      throw new InterlinkError("malformed", `${XGW_SA}: no live SA with this SPI here`);
    }
    this.stats.relayed++;
    return { body: 0 };
  }

  private onBye(req: InterlinkRequest): { body: unknown } {
    const { s, spi, m } = this.peerSession(req, XGW_BYE);
    this.earlyConfirmed.delete(spi);
    if (s) this.end(s, m.get("reason") === CloseReason.Bye ? CloseReason.Bye : CloseReason.PeerGone, `the peer gateway ${req.from} ended it`, false);
    return { body: 0 };
  }
}
