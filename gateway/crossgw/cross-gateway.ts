// Sessions across gateways (design.md flows 5, 7, 8, 9; seed 004 E3: a key exchange proxy on both
// sides; seed 000 claim 11: routing by domain; seed 001: re-keying).
//
// A device asks its gateway for "bob@b.example". The caller's gateway (A) sees a domain other than its
// own and runs the exchange of gateway/crossgw/exchange.ts with b.example's gateway (B) over the interlink, in
// the caller's name; B asks its device (Incoming/Answer) before it answers, so a refusal, a denial and
// an unknown name all look alike to A. On success each gateway hands the derived seed to its own
// device (SaInstall), checks that device's key confirmation (SaConfirm), tells the other gateway, and
// once both devices confirmed each sends Connected to its own device. SA frames then cross the
// interlink signed but not encrypted: they are end-to-end protected already and neither gateway can
// alter them undetected. The interlink bodies are gateway/crossgw/messages.ts's.
//
//   A                                            B
//   ConnectRequest(bob@b.example) from alice
//   --- kp.x.1 {msg1, terms} ----------------->  checks bob, policy, suites; Incoming -> bob, Answer
//   <----------------------- {msg2, terms} ---  (or {refused: "not-found" | "rejected" | "no-common-suite"})
//   --- kp.x.3 {msg3} ------------------------>  SaInstall -> bob
//   <-------------------------------- {msg4} ---
//   SaInstall -> alice
//   SaConfirm <- alice; --- kp.x.confirmed --->  SaConfirm <- bob; <--- kp.x.confirmed ---
//   Connected -> alice                           Connected -> bob
//   SaData <-> --------- kp.x.sa {spi, frame} <-> SaData
//   Bye / SaClosed ----- kp.x.bye {spi} ------->  SaClosed
//
// Rekey (seed 001): the SA's initiating gateway always runs the new exchange (msg1 names the SPI it
// replaces), so both devices asking at once make one replacement; a Rekey from the responding side's
// device becomes a kp.x.rekey notice to the initiating gateway. The responder's gateway does not ask
// its device again (it accepted this peer already) but checks policy, registration and both
// certificates afresh, as for a new session. The old SA keeps carrying frames in flight for the
// overlap, as inside one gateway.
//
// Instances (gateway/instances/): a domain may run several processes. Each SA across domains runs at
// one of them on each side, and every message about it is pinned to the other side's process
// (InterlinkRequestOptions.instance). When that process dies or stops, another instance of its domain
// takes the SA over from its row (LiveSession.across) and says so with kp.x.moved; requests to the
// old process that time out meanwhile make the SA wait for that notice, for the grace period a device
// has to rejoin, and then it ends.
//
// Revocation: every live SA is judged again (both devices' certificates, through the verifier) when
// a newer fleet revocation list arrives and every `recheckMs`; one that is no longer good ends at both
// ends with reason Revoked. A list naming one of our own devices revokes it here (its joins are
// refused from then on); one naming this gateway ends all of its sessions across gateways.

import { ctEqual } from "../../firmware/bytes.ts";
import { REKEY_AT, REQUEST_TIMEOUT_MS } from "../../firmware/handset.ts";
import { saConfirmTag } from "../../firmware/proto/keys.ts";
import { CloseReason, ErrorCode, Msg, type InnerMessage, type SaData } from "../../firmware/proto/messages.ts";
import * as cbor from "../encoding/cbor.ts";
import * as xm from "./messages.ts";
import { spiText } from "../log/protocol-names.ts";
import { decodeMsg1, decodeMsg2, decodeMsg3, decodeMsg4, encodeMsg1, encodeMsg2, encodeMsg3, encodeMsg4, ExchangeError, Initiator, refusesKeyAgreement, Responder, SeenSessions, type ExchangeDeps, type ExchangeResult, type KeyAgreementPolicy, type LocalParty } from "./exchange.ts";
import { localDeviceId, splitDeviceName, type RevocationList } from "../fleet/fleet.ts";
import type { SessionHook, SessionHookContext } from "../sessions/hook.ts";
import { InterlinkError, type Interlink, type InterlinkRequest } from "../fleet/interlink.ts";
import { matchSettings, suiteCandidates } from "../sessions/matching.ts";
import type { CertificateChecker } from "../fleet/verifier.ts";
import type { LiveSession } from "../sessions/shared.ts";

export { XGW_BYE, XGW_CONFIRMED, XGW_MSG1, XGW_MSG3, XGW_SA } from "./messages.ts";

/** Rids for Incoming from this module start here, so they never meet the session broker's (1 .. 2^31-1). */
const RID_BASE = 0x80000000;
/** A device gives up on a request after REQUEST_TIMEOUT_MS (and rejoins): its gateway answers a cross-
 *  gateway connect or certificate query well before that, whatever the other gateway does. */
export const CONNECT_BUDGET_MS = REQUEST_TIMEOUT_MS - 1000;
/** How long the callee's gateway waits for its device's answer: inside the caller's budget. */
const CALLEE_ANSWER_MS = CONNECT_BUDGET_MS - 2000;
/** The answering side's gateway asks the initiating side for a rekey of an SA still up at this
 *  fraction of its lifetime: later than the initiating side's own rekey point (REKEY_AT), so that it
 *  asks only when that side did not rekey on time (a capable peer rekeys only when it sends). */
export const ANSWERING_SIDE_REKEY_AT = (1 + REKEY_AT) / 2;
/** Default interval of the periodic re-judging of live SAs' certificates. */
export const DEFAULT_RECHECK_MS = 30_000;

export interface CrossGatewayOptions {
  /** The interlink of this gateway (its identity's gatewayId must be the gateway id, i.e. its domain). */
  interlink: Interlink;
  /** This gateway's certificate from the fleet CA: it travels with every device certificate. */
  gatewayCert: Uint8Array;
  /** Judges the other gateway's device certificates (a Verifier holding the fleet revocation list). */
  checker: CertificateChecker;
  /** How often every live SA's certificates are judged again, ms (default 30 s; 0: only when a new
   *  revocation list arrives). This bounds how long a revocation that never reached us takes to bite. */
  recheckMs?: number;
  /** The fleet's key-agreement policy for the exchange (default "x25519"; docs/FLEET.md). */
  keyAgreement?: KeyAgreementPolicy;
}

const REFUSAL_CODE: Record<xm.Refusal, ErrorCode> = { "not-found": ErrorCode.NotFound, rejected: ErrorCode.Rejected, "no-common-suite": ErrorCode.NoCommonSuite };

/** One SA between a device of ours and a device behind another gateway. */
interface CrossSession {
  spi: number;
  /** Our device's id, and the peer's "name@domain". */
  device: string;
  peer: string;
  peerGateway: string;
  /** The peer gateway's process that runs this SA with us, when that domain runs several instances:
   *  everything about the SA goes to it (RequestOptions.instance). */
  peerInstance?: string;
  app: string;
  suite: number;
  role: 0 | 1;
  terms: xm.SaTerms;
  /** The SPI this SA replaces (a rekey), or 0. */
  replaces: number;
  /** Both devices' certificates as the exchange presented them: judged again on every revocation list. */
  certs: { own: Uint8Array; peer: Uint8Array; peerGateway: Uint8Array };
  /** Held only until our device confirmed; then wiped. */
  seed: Uint8Array | null;
  localConfirmed: boolean;
  remoteConfirmed: boolean;
  state: "confirming" | "up" | "retiring";
  /** A replacement is being set up (by us, or asked of the initiating gateway). */
  rekeying: boolean;
  timer: NodeJS.Timeout | null;
  /** Fires at the SA's rekey point while it is up (maybeUp). */
  rekeyTimer: NodeJS.Timeout | null;
  /** The peer's process did not answer: waiting for another of its domain to take the SA over. */
  silence: NodeJS.Timeout | null;
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
  peerInstance?: string;
  terms: xm.SaTerms;
  timer: NodeJS.Timeout;
}

/** The hook for GatewayOptions.sessionHook. */
export function crossGatewayHook(opts: CrossGatewayOptions): (ctx: SessionHookContext) => SessionHook {
  return (ctx) => new CrossGateway(ctx, opts);
}

/** ExchangeErrors become interlink errors the peer can read; they carry no key material. */
function asInterlinkError(e: unknown): unknown {
  return e instanceof ExchangeError ? new InterlinkError("malformed", `exchange refused (${e.code}): ${e.message}`, { cause: e }) : e;
}

function stopTimers(s: CrossSession): void {
  if (s.timer) clearTimeout(s.timer);
  if (s.rekeyTimer) clearTimeout(s.rekeyTimer);
  if (s.silence) clearTimeout(s.silence);
  s.timer = s.rekeyTimer = s.silence = null;
}

const reasonOf = (e: unknown): string => (e instanceof Error ? `${e.name}: ${e.message}` : String(e));

export class CrossGateway implements SessionHook {
  readonly sessions = new Map<number, CrossSession>();
  readonly stats = { requested: 0, up: 0, rekeyed: 0, refused: 0, failed: 0, revoked: 0, relayed: 0, relayDropped: 0, ended: 0, certQueries: 0, takenOver: 0, peerMoved: 0 };
  private readonly answers = new Map<string, WaitingAnswer>(); // key: callee + "/" + rid
  private readonly exchanges = new Map<string, WaitingMsg3>(); // key: session id, hex
  /** SPIs the peer gateway confirmed before our side installed them (the interlink does not order
   *  a response and a later request); consumed by install. */
  private readonly earlyConfirmed = new Map<number, string>();
  private readonly seen = new SeenSessions();
  private readonly exchangeDeps: ExchangeDeps;
  private readonly recheckTimer: NodeJS.Timeout | undefined;
  private rid = 0;
  private closed = false;
  /** This gateway is on the fleet's revocation list: no exchange is started or answered. */
  private selfRevoked = false;

  constructor(
    private readonly ctx: SessionHookContext,
    private readonly opts: CrossGatewayOptions,
  ) {
    if (opts.interlink.gatewayId !== ctx.gatewayId) throw new TypeError(`the interlink speaks for "${opts.interlink.gatewayId}", the gateway is "${ctx.gatewayId}"`);
    this.exchangeDeps = { checker: opts.checker, now: ctx.now, timeout: Math.ceil(ctx.settings.answerTimeoutMs / 1000) + 30, keyAgreement: opts.keyAgreement };
    const link = opts.interlink;
    const exchangeHandler = (f: (req: InterlinkRequest) => Promise<{ body: unknown; secret?: boolean }>) => (req: InterlinkRequest) =>
      f(req).catch((e: unknown) => Promise.reject(asInterlinkError(e)));
    link.handle(xm.XGW_MSG1, exchangeHandler((req) => this.onMsg1(req)));
    link.handle(xm.XGW_MSG3, exchangeHandler((req) => this.onMsg3(req)));
    link.handle(xm.XGW_CONFIRMED, (req) => this.onConfirmed(req));
    link.handle(xm.XGW_SA, (req) => this.onSaFrame(req));
    link.handle(xm.XGW_BYE, (req) => this.onBye(req));
    link.handle(xm.XGW_REKEY, (req) => this.onRekeyNotice(req));
    link.handle(xm.XGW_CERT, (req) => this.onCertQuery(req));
    link.handle(xm.XGW_MOVED, (req) => this.onMoved(req));
    const every = opts.recheckMs ?? DEFAULT_RECHECK_MS;
    if (every > 0) {
      this.recheckTimer = setInterval(() => void this.recheck("periodic check"), every);
      this.recheckTimer.unref();
    }
  }

  // --- from our devices ----------------------------------------------------------------------------

  handle(deviceId: string, m: InnerMessage): boolean {
    switch (m.t) {
      case Msg.ConnectRequest: {
        const target = this.foreign(m.peer);
        // A name in our own domain, a bare name, or a spoofed caller: the session broker's business.
        if (!target || m.from !== deviceId) return false;
        void this.connect(deviceId, m.rid, m.peer, target, m.app);
        return true;
      }
      case Msg.CertQuery: {
        const target = this.foreign(m.name);
        if (!target) return false;
        void this.certQuery(deviceId, m.rid, m.name, target);
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
        this.rekeyAsked(s);
        return true;
      }
      case Msg.Bye: {
        // SPI 0 (the device restarted) is the broker's: it ends every session, ours through deviceGone.
        const s = m.spi === 0 ? undefined : this.sessions.get(m.spi);
        if (!s || s.device !== deviceId) return false;
        this.end(s, CloseReason.Bye, `bye from ${deviceId}`, true);
        return true;
      }
      default:
        return false;
    }
  }

  /** The domain of a name in another domain than ours, or undefined. */
  private foreign(name: string): string | undefined {
    if (localDeviceId(name, this.ctx.gatewayId) !== undefined) return undefined;
    return splitDeviceName(name)?.domain;
  }

  relay(deviceId: string, m: SaData, payload: Uint8Array): boolean {
    const s = this.sessions.get(m.spi);
    // Another device's SPI: the broker's to judge (its local SPIs are drawn independently of ours).
    if (!s || s.device !== deviceId) return false;
    if (s.state === "confirming") {
      this.stats.relayDropped++;
      this.ctx.log.warn("frame dropped", { device: deviceId, spi: spiText(m.spi), reason: "SA frame before both devices confirmed" });
      return true;
    }
    const to = s.peerInstance;
    this.opts.interlink
      .request(s.peerGateway, xm.XGW_SA, xm.frameBody(s.spi, payload), { instance: to })
      .then(() => {
        this.stats.relayed++;
        if (s.silence && s.peerInstance === to) this.peerHeard(s);
      })
      .catch((e: unknown) => {
        this.stats.relayDropped++;
        this.ctx.log.warn("frame dropped", { device: deviceId, spi: spiText(m.spi), reason: `the peer gateway did not take it: ${e instanceof Error ? e.message : String(e)}` });
        if (e instanceof InterlinkError && e.code === "timeout") this.peerSilent(s, to);
      });
    return true;
  }

  /** Every SA here counts, retiring ones too: they still route frames in flight by their SPI. */
  holdsSpi(spi: number): boolean {
    return this.sessions.has(spi);
  }

  deviceGone(deviceId: string, reason: CloseReason, why: string): void {
    this.endWhere((s) => s.device === deviceId, reason, why);
    for (const [key, w] of [...this.answers]) if (key.startsWith(`${deviceId}/`)) w.resolve(false);
  }

  /** The gateway stops: the other gateways are told that our SAs end (they end them at their devices
   *  instead of leaving them to run out), then everything here is dropped. An instance with another
   *  of its domain online ends nothing: their rows stay, and that one takes them over and tells the
   *  other gateways (kp.x.moved), while our devices rejoin it or another. */
  close(): void {
    if (this.closed) return;
    if (this.ctx.sharing?.othersOnline()) {
      if (this.sessions.size) this.ctx.log.info("xsessions-handed-over", { sessions: this.sessions.size, reason: "this instance stops; another of the domain takes its SAs across domains over" });
    } else {
      this.endWhere(() => true, CloseReason.PeerGone, "the gateway stopped");
    }
    this.closed = true;
    if (this.recheckTimer) clearInterval(this.recheckTimer);
    for (const s of this.sessions.values()) {
      stopTimers(s);
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

  // --- instances: an SA's process changes -----------------------------------------------------------

  /** Runs on SAs across domains that another instance of this domain ran (it is gone or stopped):
   *  each as if set up here, its lifetime and rekey point kept. The other domain's process is told
   *  (kp.x.moved); a device of ours not linked anywhere gets the grace period to come back. Returns
   *  the rows it cannot run (no detail: an older or damaged row; or over), which the caller ends. */
  adopt(rows: LiveSession[]): LiveSession[] {
    const unrunnable: LiveSession[] = [];
    const now = this.ctx.now();
    for (const r of rows) {
      if (this.sessions.has(r.spi)) continue;
      const device = r.initiator.includes("@") ? r.responder : r.initiator;
      const peer = device === r.initiator ? r.responder : r.initiator;
      const peerGateway = splitDeviceName(peer)?.domain;
      const a = r.across;
      if (this.closed || !a || !r.up || !peerGateway || device.includes("@") || r.expiresAt <= now) {
        unrunnable.push(r);
        continue;
      }
      const s: CrossSession = {
        spi: r.spi, device, peer, peerGateway, peerInstance: a.peerInstance, app: r.app, suite: r.suite, role: a.role,
        terms: { lifetime: a.lifetime, limit: a.limit }, replaces: 0, certs: { own: a.ownCert, peer: a.peerCert, peerGateway: a.peerGatewayCert },
        seed: null, localConfirmed: true, remoteConfirmed: true, state: "up", rekeying: false, timer: null, rekeyTimer: null, silence: null,
      };
      this.sessions.set(s.spi, s);
      const left = r.expiresAt - now;
      s.timer = setTimeout(() => this.end(s, CloseReason.Expired, "lifetime over", false), (left + 5) * 1000);
      const rekeyAt = r.expiresAt - a.lifetime + a.lifetime * (a.role === 0 ? REKEY_AT : ANSWERING_SIDE_REKEY_AT);
      s.rekeyTimer = setTimeout(() => this.rekeyOnTime(s), Math.max(1, rekeyAt - now) * 1000);
      if (!this.ctx.isLinked(device)) this.ctx.sessions.linkDown(device);
      this.stats.takenOver++;
      this.ctx.log.info("xsession-taken-over", { device, peer, app: s.app, spi: spiText(s.spi), gateway: peerGateway, peerInstance: s.peerInstance });
      this.opts.interlink.request(peerGateway, xm.XGW_MOVED, xm.movedBody(s.spi), { instance: s.peerInstance }).catch((e: unknown) => {
        if (this.sessions.get(s.spi) !== s) return;
        // Its process is gone too: another of its domain may take it over and tell us; else it ends.
        if (e instanceof InterlinkError && e.code === "timeout") return this.peerSilent(s, s.peerInstance);
        this.end(s, CloseReason.PeerGone, `the peer gateway no longer runs it: ${reasonOf(e)}`, false);
      });
    }
    return unrunnable;
  }

  /** Forgets every SA not in `spis` without ending it: another instance of this domain runs it now
   *  (it took it over while this one was cut off from the broker). */
  keepOnly(spis: Set<number>): void {
    for (const s of [...this.sessions.values()]) if (!spis.has(s.spi)) this.forget(s, "another instance took this SA over while this one was cut off from the broker");
  }

  private forget(s: CrossSession, why: string): void {
    if (this.sessions.get(s.spi) !== s) return;
    this.sessions.delete(s.spi);
    stopTimers(s);
    if (s.seed) s.seed.fill(0);
    this.ctx.log.warn("xsession-home-moved", { device: s.device, peer: s.peer, spi: spiText(s.spi), reason: why });
  }

  /** A request to the other domain's process that runs this SA timed out: it may be gone, and the
   *  instance that takes the SA over there will say so (kp.x.moved). The SA waits for that for the
   *  grace period, in which its frames are lost, and then ends. A peer that is one process has no
   *  instance to take over: its SAs run out by their own timers. */
  private peerSilent(s: CrossSession, asked: string | undefined): void {
    if (asked === undefined || this.sessions.get(s.spi) !== s || s.peerInstance !== asked || s.silence || s.state === "retiring") return;
    this.ctx.log.warn("xsession-peer-silent", { device: s.device, peer: s.peer, spi: spiText(s.spi), peerInstance: asked, reason: "the peer gateway's instance did not answer: waiting for another of its domain to take the SA over" });
    s.silence = setTimeout(() => {
      s.silence = null;
      if (s.peerInstance === asked) this.end(s, CloseReason.PeerGone, `the peer gateway's instance ${asked} did not answer, and no other took the SA over`, false);
    }, this.ctx.settings.graceMs);
  }

  private peerHeard(s: CrossSession): void {
    if (s.silence) clearTimeout(s.silence);
    s.silence = null;
  }

  /** The other domain's instance that sends this runs the SA from now on. */
  private onMoved(req: InterlinkRequest): { body: unknown } {
    const spi = xm.readMoved(req.body);
    if (req.fromInstance === undefined) throw new InterlinkError("malformed", `${xm.XGW_MOVED} from a gateway that names no instance`);
    const s = this.peerSession(req, spi);
    if (!s) throw new InterlinkError("malformed", `${xm.XGW_MOVED}: no SA with this SPI here`);
    const from = s.peerInstance;
    s.peerInstance = req.fromInstance;
    this.peerHeard(s);
    this.stats.peerMoved++;
    this.ctx.sharing?.peerMoved(spi, req.fromInstance);
    this.ctx.log.info("xsession-peer-moved", { device: s.device, peer: s.peer, spi: spiText(spi), gateway: req.from, from, to: req.fromInstance });
    return { body: 0 };
  }

  // --- revocation ----------------------------------------------------------------------------------

  /** A newer fleet revocation list was accepted (the checker's cache is already cleared). */
  revocationList(list: RevocationList): void {
    const self = this.ctx.gatewayId;
    const why = `on the fleet revocation list (serial ${list.serial})`;
    if (list.gateways.includes(self) && !this.selfRevoked) {
      this.selfRevoked = true;
      this.ctx.log.error("gateway-revoked", { gateway: self, reason: `this gateway is ${why}: sessions across gateways end and none start` });
      this.endWhere(() => true, CloseReason.Revoked, `this gateway is ${why}`);
    }
    for (const name of list.devices) {
      const id = splitDeviceName(name)?.domain === self ? localDeviceId(name, self) : undefined;
      if (id) void this.ctx.revokeDevice(id, `${name} is ${why}`).catch((e) => this.ctx.log.error("registry-error", { device: id, reason: reasonOf(e) }));
    }
    void this.recheck(`revocation list serial ${list.serial}`);
  }

  /** Judges both certificates of every SA again; an SA whose certificates are no longer good ends at
   *  both ends. A verifier that cannot answer counts as "not good": revocation fails closed. */
  async recheck(why: string): Promise<void> {
    const now = this.ctx.now();
    // All at once: with a verifier in another process each judgement is a round trip, and the bound
    // on revocation should not grow with the number of SAs.
    const all = [...this.sessions.values()];
    const problems = await Promise.all(all.map((s) => this.judge(s, now)));
    for (const [i, s] of all.entries()) {
      const problem = problems[i];
      if (!problem || this.sessions.get(s.spi) !== s) continue;
      if (s.state === "retiring") {
        // Replaced already: the devices retire it themselves; it only stops carrying stragglers.
        this.forgetRetired(s);
        continue;
      }
      this.stats.revoked++;
      this.ctx.log.warn("xsession-revoked", { device: s.device, peer: s.peer, spi: spiText(s.spi), reason: `${problem} (${why})` });
      this.end(s, CloseReason.Revoked, problem, true);
    }
  }

  /** Why an SA's certificates are no longer good, or "" when both still are. */
  private async judge(s: CrossSession, now: number): Promise<string> {
    const check = async (cert: Uint8Array, chain: Uint8Array, whose: string): Promise<string> => {
      try {
        const a = await this.opts.checker.check(cert, [chain], now);
        return a.status === "good" ? "" : `${whose} certificate is ${a.status}: ${a.reason}`;
      } catch (e) {
        return `${whose} certificate could not be judged: ${reasonOf(e)}`;
      }
    };
    return (await check(s.certs.peer, s.certs.peerGateway, s.peer)) || (await check(s.certs.own, this.opts.gatewayCert, `${s.device}@${this.ctx.gatewayId}`));
  }

  // --- the caller's side ---------------------------------------------------------------------------

  /** A registered, unrevoked device of ours as the exchange presents it, or why not. */
  private async localParty(deviceId: string): Promise<{ party: LocalParty; suites: number[][] } | string> {
    const reg = await this.ctx.store.getRegistration(deviceId);
    if (!reg || reg.expiresAt <= this.ctx.now()) return "not registered";
    const dev = await this.ctx.store.getDevice(deviceId);
    if (!dev || dev.revokedAt !== null) return "revoked or unknown";
    if (!dev.identitySeed || !reg.cert) return "registered without a certificate";
    return { party: { name: `${deviceId}@${this.ctx.gatewayId}`, identitySeed: dev.identitySeed, cert: reg.cert, gatewayCert: this.opts.gatewayCert }, suites: reg.suites };
  }

  private get ownTerms(): xm.SaTerms {
    return { lifetime: this.ctx.settings.lifetime, limit: this.ctx.settings.limit };
  }

  private async connect(caller: string, rid: number, peer: string, domain: string, app: string): Promise<void> {
    const { ctx } = this;
    this.stats.requested++;
    const fail = (code: ErrorCode, event: string, reason: string): void => {
      ctx.log.info(event, { device: caller, peer, app, reason });
      ctx.send(caller, { t: Msg.Error, rid, code });
    };
    const own = await this.localParty(caller);
    if (typeof own === "string") {
      this.stats.refused++;
      return fail(own === "not registered" ? ErrorCode.NotRegistered : ErrorCode.NotFound, "xsession-rejected", `caller is ${own}`);
    }
    if (!(await ctx.policy.permits(caller, peer, app))) {
      this.stats.refused++;
      return fail(ErrorCode.NotFound, "xsession-denied", "policy denies it");
    }
    if (this.selfRevoked) {
      this.stats.refused++;
      return fail(ErrorCode.Rejected, "xsession-rejected", "this gateway is revoked");
    }
    ctx.log.info("xsession-requested", { device: caller, peer, app, gateway: domain });
    try {
      const out = await this.initiate(own, peer, domain, app, 0, CONNECT_BUDGET_MS);
      if ("refused" in out) {
        this.stats.refused++;
        return fail(REFUSAL_CODE[out.refused], "xsession-rejected", `the peer gateway answered ${out.refused}`);
      }
      await this.install(out.result, caller, { gateway: domain, instance: out.instance }, rid, out.terms);
    } catch (e) {
      this.stats.failed++;
      // An unknown domain has no certified gateway to answer: to the device it is an unknown name.
      const unknownDomain = e instanceof InterlinkError && e.code === "untrusted-peer" && /no certificate published/.test(e.message);
      ctx.log.warn("xsession-failed", { device: caller, peer, app, gateway: domain, reason: reasonOf(e) });
      ctx.send(caller, { t: Msg.Error, rid, code: unknownDomain ? ErrorCode.NotFound : ErrorCode.Rejected });
    }
  }

  /** Runs the exchange as the initiator, in `own`'s name: the result to install, or the callee side's
   *  refusal. Throws ExchangeError or InterlinkError; key material is wiped on every way out. */
  private async initiate(own: { party: LocalParty; suites: number[][] }, peer: string, domain: string, app: string, replaces: number, budgetMs: number, instance?: string): Promise<{ result: ExchangeResult; terms: xm.SaTerms; instance?: string } | { refused: xm.Refusal }> {
    const init = new Initiator(this.exchangeDeps, own.party, peer, app, own.suites, { replaces });
    const sessionId = init.msg1.sessionId;
    const started = Date.now();
    const left = () => Math.max(1, budgetMs - (Date.now() - started));
    try {
      // Any instance of the peer's domain may answer message 1 (its shared subscription picks one);
      // message 3 and everything after go to that one, which holds the exchange.
      const answer1 = await this.opts.interlink.requestTo(domain, xm.XGW_MSG1, xm.connectBody(encodeMsg1(init.msg1), this.ownTerms), { sessionId, secret: true, timeoutMs: left(), instance });
      const a2 = xm.readConnectAnswer(answer1.body);
      if ("refused" in a2) {
        init.abort(`refused: ${a2.refused}`);
        return a2;
      }
      // The callee's gateway may only shorten what we offered.
      const terms = { lifetime: Math.min(a2.lifetime, this.ownTerms.lifetime), limit: Math.min(a2.limit, this.ownTerms.limit) };
      const msg3 = await init.onMsg2(decodeMsg2(a2.msg2));
      const a4 = xm.readFinished(await this.opts.interlink.request(domain, xm.XGW_MSG3, xm.finishBody(encodeMsg3(msg3)), { sessionId, secret: true, timeoutMs: left(), instance: answer1.instance }));
      return { result: init.onMsg4(decodeMsg4(a4)), terms, instance: answer1.instance };
    } catch (e) {
      init.abort("failed");
      throw e;
    }
  }

  // --- rekey ----------------------------------------------------------------------------------------

  /** Our device asked for a new SA before this one runs out. */
  private rekeyAsked(s: CrossSession): void {
    const { ctx } = this;
    if (s.state !== "up" || s.rekeying) {
      ctx.log.info("xsession-rekey-ignored", { device: s.device, spi: spiText(s.spi), reason: s.state === "up" ? "a replacement is already being set up" : `the SA is ${s.state}` });
      return;
    }
    s.rekeying = true;
    if (s.role === 0) {
      void this.rekey(s);
      return;
    }
    // The initiating gateway runs every rekey of an SA: ask it to.
    this.opts.interlink.request(s.peerGateway, xm.XGW_REKEY, xm.rekeyBody(s.spi), { instance: s.peerInstance }).catch((e: unknown) => {
      s.rekeying = false;
      ctx.log.warn("xsession-rekey-failed", { device: s.device, peer: s.peer, spi: spiText(s.spi), reason: `the peer gateway did not take the rekey notice: ${reasonOf(e)}` });
    });
  }

  /** The SA reached its rekey point with no replacement under way: the initiating side's gateway runs
   *  the rekey, the answering side's asks it to (rekeyAsked), as when a device asks. */
  private rekeyOnTime(s: CrossSession): void {
    s.rekeyTimer = null;
    if (this.sessions.get(s.spi) !== s || s.state !== "up" || s.rekeying) return;
    this.ctx.log.info("xsession-rekey-due", { device: s.device, peer: s.peer, spi: spiText(s.spi), reason: "the SA reached its rekey point" });
    this.rekeyAsked(s);
  }

  /** As the SA's initiator: a new exchange whose msg1 names the SPI it replaces. On failure the old SA
   *  runs on until its lifetime or limit. */
  private async rekey(s: CrossSession): Promise<void> {
    const { ctx } = this;
    // Another instance may have taken this SA over while this one was cut off from the broker.
    if (ctx.sharing && !(await ctx.sharing.stillHome(s.spi).catch(() => true))) return this.forget(s, "another instance runs this SA now (found before its rekey)");
    const own = await this.localParty(s.device);
    if (typeof own === "string" || !(await ctx.policy.permits(s.device, s.peer, s.app)) || this.selfRevoked) {
      this.end(s, CloseReason.PeerGone, typeof own === "string" ? `rekey refused: the device is ${own}` : "rekey refused: policy no longer allows this session", true);
      return;
    }
    try {
      // To the peer's process that runs the SA it replaces: only that one knows it.
      const out = await this.initiate(own, s.peer, s.peerGateway, s.app, s.spi, ctx.settings.answerTimeoutMs + 5000, s.peerInstance);
      if ("refused" in out) throw new Error(`the peer gateway answered ${out.refused}`);
      if (this.sessions.get(s.spi) !== s) {
        out.result.seed.fill(0); // the old SA ended meanwhile: nothing to replace
        return;
      }
      this.stats.rekeyed++;
      await this.install(out.result, s.device, { gateway: s.peerGateway, instance: out.instance }, 0, out.terms);
    } catch (e) {
      s.rekeying = false;
      this.stats.failed++;
      ctx.log.warn("xsession-rekey-failed", { device: s.device, peer: s.peer, spi: spiText(s.spi), reason: reasonOf(e) });
    }
  }

  private onRekeyNotice(req: InterlinkRequest): { body: unknown } {
    const spi = xm.readRekey(req.body);
    const s = this.peerSession(req, spi);
    if (!s || s.role !== 0) throw new InterlinkError("malformed", `${xm.XGW_REKEY}: no SA with this SPI that we initiated`);
    if (s.state === "up" && !s.rekeying) {
      s.rekeying = true;
      void this.rekey(s);
    }
    return { body: 0 };
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
      this.answers.set(key, { resolve: done, timer: setTimeout(() => done(false), Math.min(this.ctx.settings.answerTimeoutMs, CALLEE_ANSWER_MS)) });
    });
    this.ctx.send(callee, { t: Msg.Incoming, rid, from, app, suite });
    return { rid, accepted };
  }

  private async onMsg1(req: InterlinkRequest): Promise<{ body: unknown }> {
    const { ctx } = this;
    const { msg1: raw, ...offered } = xm.readConnect(req.body);
    const msg1 = decodeMsg1(raw);
    // A gateway speaks only for its own devices: msg1.from must be in the sender's domain.
    if (splitDeviceName(msg1.from)?.domain !== req.from) throw new InterlinkError("untrusted-peer", `"${req.from}" cannot call in the name of "${msg1.from}"`);
    const refuse = (why: xm.Refusal, reason: string): { body: unknown } => {
      this.stats.refused++;
      ctx.log.info(why === "not-found" ? "xsession-not-found" : "xsession-rejected", { device: msg1.to, peer: msg1.from, app: msg1.app, reason });
      return { body: xm.refusalBody(why) };
    };
    const target = splitDeviceName(msg1.to);
    const callee = target && target.domain === ctx.gatewayId ? target.name : undefined;
    const local = callee ? await this.localParty(callee) : "not in this domain";
    // One answer for every reason, so the caller learns nothing about the callee (seed 002 [0055]).
    if (!callee || typeof local === "string") return refuse("not-found", `callee is ${typeof local === "string" ? local : "unknown"}`);
    if (this.selfRevoked) return refuse("not-found", "this gateway is revoked");
    if (!(await ctx.policy.permits(msg1.from, callee, msg1.app))) return refuse("not-found", "policy denies it");
    if (!ctx.isLinked(callee)) return refuse("not-found", "the callee is not connected");
    const match = matchSettings(suiteCandidates(msg1.suites), suiteCandidates(local.suites), ctx.settings.matching);
    if (!match) return refuse("no-common-suite", "no cipher suite both devices registered; the callee was not contacted");
    if (this.seen.has(msg1.sessionId)) throw new ExchangeError("replay", "message 1 repeats a session id already seen");
    // Before the callee hears of it: a fleet that requires the hybrid answers no classical exchange.
    if (refusesKeyAgreement(this.exchangeDeps.keyAgreement, msg1)) throw new ExchangeError("downgrade", "message 1 offers X25519 alone, and this gateway's policy requires X25519 + ML-KEM-768");
    let rid = 0;
    if (msg1.replaces) {
      // A rekey: the SA it replaces must be ours with this very peer, app and gateway, and up.
      const old = this.sessions.get(msg1.replaces);
      if (!old || old.peerGateway !== req.from || old.role !== 1 || old.device !== callee || old.peer !== msg1.from || old.app !== msg1.app || old.state !== "up") {
        return refuse("not-found", "a rekey of no SA of ours with this peer");
      }
    } else {
      const asked = this.ask(callee, msg1.from, msg1.app, match.callee.id as number);
      if (!(await asked.accepted)) return refuse("rejected", "the callee declined or did not answer");
      rid = asked.rid;
    }
    const responder = new Responder({ ...this.exchangeDeps, seen: this.seen, matching: ctx.settings.matching }, msg1, { ...local.party, name: msg1.to, suites: local.suites });
    const terms = { lifetime: Math.min(offered.lifetime, this.ownTerms.lifetime), limit: Math.min(offered.limit, this.ownTerms.limit) };
    const key = Buffer.from(msg1.sessionId).toString("hex");
    const timer = setTimeout(() => {
      this.exchanges.delete(key);
      responder.abort("message 3 did not come in time");
    }, (this.exchangeDeps.timeout ?? 30) * 1000);
    this.exchanges.set(key, { responder, callee, calleeRid: rid, peerGateway: req.from, peerInstance: req.fromInstance, terms, timer });
    return { body: xm.acceptBody(encodeMsg2(responder.msg2), terms) };
  }

  private async onMsg3(req: InterlinkRequest): Promise<{ body: unknown }> {
    const msg3 = decodeMsg3(xm.readFinish(req.body));
    const key = Buffer.from(msg3.sessionId).toString("hex");
    const x = this.exchanges.get(key);
    if (!x || x.peerGateway !== req.from) throw new ExchangeError("unexpected", "message 3 for no exchange waiting for it");
    const { msg4, result } = await x.responder.onMsg3(msg3);
    clearTimeout(x.timer);
    this.exchanges.delete(key);
    if (result.replaces) {
      const old = this.sessions.get(result.replaces);
      if (old && old.state === "up") {
        old.rekeying = true;
        this.stats.rekeyed++;
      }
    }
    await this.install(result, x.callee, { gateway: req.from, instance: x.peerInstance }, x.calleeRid, x.terms);
    return { body: xm.finishedBody(encodeMsg4(msg4)) };
  }

  // --- both sides ----------------------------------------------------------------------------------

  /** An SPI held at this gateway already (here, by its broker, or, with several instances, anywhere in
   *  the domain: claimed in its database). */
  private async spiTaken(r: ExchangeResult, device: string, terms: xm.SaTerms, peerInstance: string | undefined): Promise<boolean> {
    const here = () => this.closed || this.sessions.has(r.spi) || this.ctx.sessions.sessions.has(r.spi);
    const sharing = this.ctx.sharing;
    if (here() || !sharing) return here();
    // What another instance needs to run the SA on if this one goes (adopt).
    const across = { role: r.role === "initiator" ? 0 as const : 1 as const, lifetime: terms.lifetime, limit: terms.limit, peerInstance, ownCert: r.ownCert, peerCert: r.peerCert, peerGatewayCert: r.peerGatewayCert };
    const row = { spi: r.spi, initiator: device, responder: r.peer, app: r.app, suite: r.suite, expiresAt: this.ctx.now() + terms.lifetime, up: false, home: sharing.instance, across };
    if (!(await sharing.claim(row))) return true;
    if (!here()) return false;
    sharing.ended(r.spi);
    return true;
  }

  /** The key transfer of seed 004: the derived seed to our own device. */
  private async install(r: ExchangeResult, device: string, peer: { gateway: string; instance?: string }, rid: number, terms: xm.SaTerms): Promise<void> {
    const { ctx } = this;
    const peerGateway = peer.gateway;
    const role = r.role === "initiator" ? 0 : 1;
    if (await this.spiTaken(r, device, terms, peer.instance)) {
      // A derived SPI that is taken here (odds 2^-32 per SA): refuse rather than mix two SAs.
      r.seed.fill(0);
      ctx.log.warn("xsession-failed", { device, peer: r.peer, reason: "the derived SPI is in use at this gateway" });
      if (role === 0 && !r.replaces) ctx.send(device, { t: Msg.Error, rid, code: ErrorCode.Rejected });
      void this.opts.interlink.request(peerGateway, xm.XGW_BYE, xm.byeBody(r.spi, CloseReason.PeerGone), { instance: peer.instance }).catch(() => undefined);
      return;
    }
    const s: CrossSession = {
      spi: r.spi, device, peer: r.peer, peerGateway, peerInstance: peer.instance, app: r.app, suite: r.suite, role, terms, replaces: r.replaces,
      certs: { own: r.ownCert, peer: r.peerCert, peerGateway: r.peerGatewayCert },
      seed: r.seed, localConfirmed: false, remoteConfirmed: this.earlyConfirmed.get(r.spi) === peerGateway, state: "confirming", rekeying: false, timer: null, rekeyTimer: null, silence: null,
    };
    this.earlyConfirmed.delete(r.spi);
    this.sessions.set(s.spi, s);
    s.timer = setTimeout(() => this.end(s, CloseReason.PeerGone, "the devices did not confirm their keys in time", true), ctx.settings.answerTimeoutMs);
    ctx.send(device, { t: Msg.SaInstall, rid, spi: s.spi, peer: s.peer, app: s.app, suite: s.suite, seed: r.seed, role, lifetime: terms.lifetime, limit: terms.limit, replaces: s.replaces });
    ctx.log.info("xsession-keys-distributed", { device, peer: s.peer, app: s.app, spi: spiText(s.spi), suite: s.suite, keyAgreement: r.keyAgreement, gateway: peerGateway, replaces: s.replaces ? spiText(s.replaces) : undefined });
  }

  private confirmLocal(s: CrossSession, tag: Uint8Array): void {
    const { ctx } = this;
    if (s.state !== "confirming" || !s.seed) {
      ctx.log.warn("session-confirm-dropped", { device: s.device, spi: spiText(s.spi), reason: "no SA awaiting this device's confirmation" });
      return;
    }
    if (!ctEqual(saConfirmTag(ctx.crypto, cbor, s.seed, s.spi, s.suite, s.role), tag)) {
      ctx.log.warn("session-confirm-dropped", { device: s.device, spi: spiText(s.spi), reason: "key confirmation does not verify" });
      this.end(s, CloseReason.PeerGone, "a key confirmation did not verify", true);
      return;
    }
    // Our device holds the keys: this gateway no longer needs the seed.
    s.seed.fill(0);
    s.seed = null;
    s.localConfirmed = true;
    this.opts.interlink
      .request(s.peerGateway, xm.XGW_CONFIRMED, xm.confirmedBody(s.spi), { instance: s.peerInstance })
      .catch((e: unknown) => this.end(s, CloseReason.PeerGone, `the peer gateway did not take our confirmation: ${e instanceof Error ? e.message : String(e)}`, false));
    this.maybeUp(s);
  }

  private maybeUp(s: CrossSession): void {
    if (s.state !== "confirming" || !s.localConfirmed || !s.remoteConfirmed || this.sessions.get(s.spi) !== s) return;
    const { ctx } = this;
    if (s.timer) clearTimeout(s.timer);
    s.state = "up";
    ctx.sharing?.up(s.spi);
    s.timer = setTimeout(() => this.end(s, CloseReason.Expired, "lifetime over", false), (s.terms.lifetime + 5) * 1000);
    // A device asks for a rekey only when it sends: without this a quiet SA would run out.
    const rekeyAt = s.role === 0 ? REKEY_AT : ANSWERING_SIDE_REKEY_AT;
    s.rekeyTimer = setTimeout(() => this.rekeyOnTime(s), s.terms.lifetime * rekeyAt * 1000);
    this.stats.up++;
    ctx.send(s.device, { t: Msg.Connected, spi: s.spi, replaces: s.replaces });
    const event = s.replaces ? "xsession-rekeyed" : "xsession-up";
    ctx.log.info(event, { device: s.device, peer: s.peer, app: s.app, spi: spiText(s.spi), gateway: s.peerGateway, replaces: s.replaces ? spiText(s.replaces) : undefined });
    ctx.store.auditBatched(ctx.now(), s.device, s.replaces ? "session-rekeyed" : "session-up", `peer=${s.peer} app=${s.app} spi=${spiText(s.spi)} via=${s.peerGateway}`);
    if (s.replaces) this.retire(s.replaces);
  }

  /** A replaced SA keeps carrying frames in flight for the overlap, then goes (the devices retire
   *  their copies by themselves). */
  private retire(spi: number): void {
    const old = this.sessions.get(spi);
    if (!old) return;
    old.state = "retiring";
    stopTimers(old);
    // Its row goes now, not after the overlap: an instance taking this one's SAs over in between
    // must not revive a replaced SA (the devices drop it with its replacement).
    this.ctx.sharing?.ended(spi);
    old.timer = setTimeout(() => {
      if (this.sessions.get(spi) === old) this.sessions.delete(spi);
    }, this.ctx.settings.overlapMs);
  }

  /** Ends every SA that `which` picks, at both ends; replaced ones go without a word (see end). */
  private endWhere(which: (s: CrossSession) => boolean, reason: CloseReason, why: string): void {
    const picked = [...this.sessions.values()].filter(which);
    for (const s of picked) if (s.state !== "retiring") this.end(s, reason, why, true);
    for (const s of picked) this.forgetRetired(s);
  }

  /** Drops a replaced SA still carrying frames in flight, without a word to anyone: the device drops
   *  it with its replacement (firmware/handset.ts sa_). */
  private forgetRetired(s: CrossSession): void {
    if (this.sessions.get(s.spi) !== s || s.state !== "retiring") return;
    this.sessions.delete(s.spi);
    stopTimers(s);
    this.ctx.sharing?.ended(s.spi);
  }

  /** Ends an SA here, and a replacement of it still being set up, and the SA it replaced if that one
   *  still carries stragglers; notifyPeer tells the other gateway, which ends it at its device. */
  private end(s: CrossSession, reason: CloseReason, why: string, notifyPeer: boolean): void {
    if (this.sessions.get(s.spi) !== s) return;
    this.sessions.delete(s.spi);
    stopTimers(s);
    this.ctx.sharing?.ended(s.spi);
    if (s.seed) s.seed.fill(0);
    const predecessor = s.replaces ? this.sessions.get(s.replaces) : undefined;
    if (predecessor) this.forgetRetired(predecessor);
    this.stats.ended++;
    this.ctx.send(s.device, { t: Msg.SaClosed, spi: s.spi, reason });
    this.ctx.log.info("xsession-down", { device: s.device, peer: s.peer, app: s.app, spi: spiText(s.spi), reason: why });
    this.ctx.store.auditBatched(this.ctx.now(), s.device, "session-down", `peer=${s.peer} spi=${spiText(s.spi)} ${why}`);
    if (notifyPeer && !this.closed) {
      const peerReason = reason === CloseReason.Bye || reason === CloseReason.Revoked ? reason : CloseReason.PeerGone;
      void this.opts.interlink.request(s.peerGateway, xm.XGW_BYE, xm.byeBody(s.spi, peerReason), { instance: s.peerInstance }).catch(() => undefined);
    }
    for (const o of [...this.sessions.values()]) if (o.replaces === s.spi && o.state === "confirming") this.end(o, reason, why, notifyPeer);
  }

  /** Our session with this SPI, if the sending gateway is party to it. */
  private peerSession(req: InterlinkRequest, spi: number): CrossSession | undefined {
    const s = this.sessions.get(spi);
    if (s && s.peerGateway !== req.from) throw new InterlinkError("malformed", `${req.type}: "${req.from}" is not party to this SPI`);
    return s;
  }

  private onConfirmed(req: InterlinkRequest): { body: unknown } {
    const spi = xm.readConfirmed(req.body);
    const s = this.peerSession(req, spi);
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
    const { spi, frame } = xm.readFrame(req.body);
    const s = this.peerSession(req, spi);
    if (!s || s.state === "confirming" || !this.ctx.relay(s.device, frame)) {
      this.stats.relayDropped++;
      throw new InterlinkError("malformed", `${xm.XGW_SA}: no live SA with this SPI here`);
    }
    this.stats.relayed++;
    return { body: 0 };
  }

  private onBye(req: InterlinkRequest): { body: unknown } {
    const { spi, reason } = xm.readBye(req.body);
    const s = this.peerSession(req, spi);
    this.earlyConfirmed.delete(spi);
    if (s) this.end(s, reason, `the peer gateway ${req.from} ended it${reason === CloseReason.Revoked ? " (revoked)" : ""}`, false);
    return { body: 0 };
  }

  // --- certificate queries across domains (seed 000 claims 6, 11) ---------------------------------

  /** Our device asks for the certificate of a device in another domain: its home gateway answers
   *  only with one valid now, and we pass it on only if the verifier says it is good now. */
  private async certQuery(deviceId: string, rid: number, name: string, domain: string): Promise<void> {
    const { ctx } = this;
    this.stats.certQueries++;
    const notFound = (reason: string): void => {
      ctx.log.info("cert-query-not-found", { device: deviceId, name, reason });
      ctx.send(deviceId, { t: Msg.Error, rid, code: ErrorCode.NotFound });
    };
    const own = await ctx.store.getRegistration(deviceId);
    if (!own || own.expiresAt <= ctx.now()) {
      ctx.log.warn("request-rejected", { device: deviceId, reason: "caller is not registered", request: "cert-query" });
      ctx.send(deviceId, { t: Msg.Error, rid, code: ErrorCode.NotRegistered });
      return;
    }
    if (!(await ctx.policy.permits(deviceId, name, "cert"))) return notFound("policy denies it");
    try {
      const body = await this.opts.interlink.request(domain, xm.XGW_CERT, xm.certQueryBody(`${deviceId}@${ctx.gatewayId}`, name), { secret: true, timeoutMs: CONNECT_BUDGET_MS });
      const a = xm.readCertAnswer(body);
      if ("refused" in a) return notFound(`the home gateway answered ${a.refused}`);
      const verdict = await this.opts.checker.check(a.cert, [a.gatewayCert], ctx.now());
      if (verdict.status !== "good") return notFound(`the home gateway's answer is ${verdict.status}: ${verdict.reason}`);
      if (verdict.subject !== name) return notFound(`the home gateway answered with a certificate for "${verdict.subject}"`);
      ctx.log.info("cert-query", { device: deviceId, name, gateway: domain });
      ctx.send(deviceId, { t: Msg.CertAnswer, rid, cert: a.cert });
    } catch (e) {
      notFound(reasonOf(e));
    }
  }

  /** Another gateway asks for one of our devices' certificates: only a certificate valid now, and the
   *  same "not found" for every reason (unknown, expired, revoked, denied). */
  private async onCertQuery(req: InterlinkRequest): Promise<{ body: unknown }> {
    const { ctx } = this;
    const q = xm.readCertQuery(req.body);
    if (splitDeviceName(q.from)?.domain !== req.from) throw new InterlinkError("untrusted-peer", `"${req.from}" cannot ask in the name of "${q.from}"`);
    const id = localDeviceId(q.name, ctx.gatewayId);
    // Every lookup made whatever the answer: the time taken does not tell an unknown device from a denied one.
    const [reg, dev, allowed] = id === undefined ? [undefined, undefined, false] : await Promise.all([ctx.store.getRegistration(id), ctx.store.getDeviceInfo(id), ctx.policy.permits(q.from, id, "cert")]);
    const why =
      id === undefined || !dev ? "no such device here"
      : dev.revokedAt !== null ? "the device is revoked"
      : this.selfRevoked ? "this gateway is revoked"
      : !allowed ? "policy denies it"
      : !reg || reg.expiresAt <= ctx.now() || !reg.cert ? "no certificate valid now"
      : "";
    if (why || !reg?.cert) {
      ctx.log.info("cert-query-not-found", { device: id, name: q.name, from: q.from, reason: why });
      return { body: xm.refusalBody("not-found") };
    }
    ctx.log.info("cert-query", { device: id, name: q.name, from: q.from });
    return { body: xm.certAnswerBody(reg.cert, this.opts.gatewayCert) };
  }
}
