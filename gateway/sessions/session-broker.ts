// Sessions inside one gateway (design.md flows 4, 6, 7, 8; seeds 002, 003, 004, 001).
//
// The caller names its peer; the broker checks that the caller is who its link says (spoofing
// check), checks policy (a denial looks exactly like an unknown name), matches suites before the
// callee is ever contacted, asks the callee, and on acceptance distributes one fresh seed per SA to
// both devices. It reports "connected" only when both devices have confirmed their keys, relays the
// devices' SA frames by SPI without being able to read or alter them undetected, and ends sessions
// on a bye, a link lost for longer than the grace period, a deregistration or a reboot.
//
// Every decision is a structured event (the log records, Logger.subscribe).

import { ctEqual } from "../../firmware/bytes.ts";
import type { SymCrypto } from "../../firmware/crypto/types.ts";
import { REKEY_AT } from "../../firmware/handset.ts";
import { saConfirmTag, type Codec } from "../../firmware/proto/keys.ts";
import { CloseReason, ErrorCode, Msg, type InnerMessage, type SaData, type SaInstall } from "../../firmware/proto/messages.ts";
import { localDeviceId } from "../fleet/fleet.ts";
import type { Logger } from "../log/logger.ts";
import { spiText } from "../log/protocol-names.ts";
import { matchSettings, suiteCandidates, DEFAULT_MATCHING, type MatchOptions } from "./matching.ts";
import type { Policy } from "../registry/policy.ts";
import type { Store } from "../registry/store.ts";
import type { LiveSession, SessionSharing } from "./shared.ts";

export interface SessionSettings {
  /** SA lifetime in seconds (relative: devices have no trusted clock). */
  lifetime: number;
  /** Messages per direction before an SA must be replaced. */
  limit: number;
  /** How long the callee has to accept, and both devices to confirm, in ms. */
  answerTimeoutMs: number;
  /** How long a lost link may stay lost before its sessions end, in ms. */
  graceMs: number;
  /** How long a replaced SA still routes frames in flight, in ms. */
  overlapMs: number;
  matching: MatchOptions;
}

export const DEFAULT_SESSIONS: SessionSettings = {
  lifetime: 3600,
  limit: 100000,
  answerTimeoutMs: 10000,
  graceMs: 30000,
  overlapMs: 10000,
  matching: DEFAULT_MATCHING,
};

export interface SessionDeps {
  store: Store;
  policy: Policy;
  log: Logger;
  crypto: SymCrypto;
  cbor: Codec;
  now: () => number;
  /** Sends an inner message to a device over its link; false when it has none. */
  send: (deviceId: string, m: InnerMessage) => boolean;
  /** Sends a raw outer frame payload to a device; false when it has no link. */
  relay: (deviceId: string, payload: Uint8Array) => boolean;
  isLinked: (deviceId: string) => boolean;
  settings: SessionSettings;
  /** This gateway's id (its domain): "name@<gatewayId>" means the local device "name". */
  gatewayId: string;
  /** Told whenever every session of a device ends (lost link, reboot, deregistration, revocation), so
   *  that sessions kept elsewhere (across gateways) end too. */
  onEndAll?: (deviceId: string, reason: CloseReason, why: string) => void;
  /** SPIs this gateway holds outside this broker (sessions across gateways). A device has one SPI
   *  space: its gateway routes its SA frames by SPI, across gateways first, so a local SA must never
   *  take an SPI that one of the gateway's SAs across gateways holds. */
  spiTaken?: (spi: number) => boolean;
  /** When this gateway is one of several instances of its domain (gateway/instances/): SPIs are
   *  claimed in the domain's database, and each SA's row says which instance runs it. */
  sharing?: SessionSharing;
}

/** One SA as the gateway sees it. */
interface Session {
  spi: number;
  initiator: string;
  responder: string;
  app: string;
  suite: number;
  /** Held only until both devices confirmed; then wiped. */
  seed: Uint8Array | null;
  confirmed: { initiator: boolean; responder: boolean };
  state: "confirming" | "up" | "retiring";
  /** The caller's request id (0 for a rekey's peer) and, for a rekey, the SPI it replaces. */
  callerRid: number;
  replaces: number;
  expiresAt: number;
  timer: NodeJS.Timeout | null;
  /** Fires at the SA's rekey point (REKEY_AT of its lifetime) while it is up. */
  rekeyTimer: NodeJS.Timeout | null;
}

/** With several instances, what a request prepares before the callee is asked: the SA's SPI claimed in
 *  the domain's database and its seed, so that an acceptance installs at once. */
interface Prepared {
  spi: number;
  seed: Uint8Array;
}

/** A connection request waiting for the callee's answer. */
interface Pending {
  caller: string;
  callerRid: number;
  callee: string;
  app: string;
  suite: number;
  calleeRid: number;
  timer: NodeJS.Timeout;
  /** Waiting for the answer, accepted, or dropped (declined, timed out, a party's SAs ended). */
  settled: "open" | "accepted" | "dropped";
  /** Several instances only: the claimed SPI and the seed, before the callee is asked. */
  ready?: Prepared;
}

export class SessionBroker {
  readonly sessions = new Map<number, Session>();
  private pending = new Map<string, Pending>(); // key: callee + "/" + calleeRid
  private lost = new Map<string, NodeJS.Timeout>();
  /** SAs whose replacement is being installed (its SPI claimed) right now. */
  private replacing = new Set<number>();
  private rid = 0;
  /** Since start. `refused`: requests answered with an error, for whatever reason (rejected, denied
   *  and noMatch are some of them); `failed`: SAs given out whose setup was aborted (new or rekey);
   *  `up`: SAs both devices confirmed (new or rekey). */
  readonly stats = { requested: 0, up: 0, refused: 0, failed: 0, rejected: 0, denied: 0, noMatch: 0, rekeyed: 0, ended: 0, relayed: 0, relayDropped: 0 };

  constructor(private d: SessionDeps) {
    // The callee's instance tells requests apart by device and rid (an Incoming's answer route, a held
    // SaInstall): brokers of several instances calling one device must not count the same rids.
    const r = d.crypto.random(4);
    this.rid = (((r[0] << 24) | (r[1] << 16) | (r[2] << 8) | r[3]) >>> 1) % 0x7fffffff;
  }

  /** Session messages from an authenticated device. */
  handle(deviceId: string, m: InnerMessage): void | Promise<void> {
    switch (m.t) {
      case Msg.ConnectRequest:
        // "bob@<our domain>" is our own bob; a name in another domain that reached us (no cross-gateway
        // hook) stays as it is and is not found, like any unknown name.
        return this.connect(deviceId, m.rid, localDeviceId(m.peer, this.d.gatewayId) ?? m.peer, m.app, m.from);
      case Msg.Answer:
        return this.answer(deviceId, m.rid, m.accept);
      case Msg.SaConfirm:
        return this.confirm(deviceId, m.spi, m.tag);
      case Msg.Rekey:
        return this.rekey(deviceId, m.spi);
      case Msg.Bye:
        if (m.spi === 0) return this.endAll(deviceId, CloseReason.PeerGone, "the device restarted and holds no SAs");
        return this.bye(deviceId, m.spi);
      default:
        this.d.log.warn("session-message-rejected", { device: deviceId, reason: `message type ${m.t} is not a session request` });
    }
  }

  private nextRid(): number {
    this.rid = (this.rid % 0x7fffffff) + 1;
    return this.rid;
  }

  /** A live registration of deviceId, or undefined. */
  private async registered(deviceId: string) {
    const r = await this.d.store.getRegistration(deviceId);
    return r && r.expiresAt > this.d.now() ? r : undefined;
  }

  private async connect(caller: string, rid: number, peer: string, app: string, from: string): Promise<void> {
    const d = this.d;
    this.stats.requested++;
    if (from !== caller) {
      // Seed 002's spoofing check: the caller is whoever its authenticated link says it is.
      d.log.warn("session-spoofing", { device: caller, claimed: from, peer, app });
      await d.store.audit(d.now(), caller, "spoofing", `claimed ${from}`);
      this.stats.refused++;
      d.send(caller, { t: Msg.Error, rid, code: ErrorCode.Spoofed });
      return;
    }
    // The lookups at once (on PostgreSQL, on several pooled connections).
    const [own, target, allowed] = await Promise.all([this.registered(caller), this.registered(peer), d.policy.permits(caller, peer, app)]);
    if (!own) {
      d.log.warn("session-rejected", { device: caller, peer, app, reason: "caller is not registered" });
      this.stats.refused++;
      d.send(caller, { t: Msg.Error, rid, code: ErrorCode.NotRegistered });
      return;
    }
    if (!target || !allowed || peer === caller || !d.isLinked(peer)) {
      // One answer for every reason, so the caller learns nothing about the callee (seed 002 [0055]).
      const reason = !allowed ? "policy denies it" : peer === caller ? "a device cannot call itself" : !target ? "no such registered device" : "the callee is not connected";
      if (!allowed) this.stats.denied++;
      this.stats.refused++;
      d.log.info(!allowed ? "session-denied" : "session-not-found", { device: caller, peer, app, reason });
      d.send(caller, { t: Msg.Error, rid, code: ErrorCode.NotFound });
      return;
    }
    const match = matchSettings(suiteCandidates(own.suites), suiteCandidates(target.suites), d.settings.matching);
    if (!match) {
      this.stats.noMatch++;
      this.stats.refused++;
      d.log.info("session-no-match", { device: caller, peer, app, reason: "no cipher suite both devices registered; the callee was not contacted" });
      d.send(caller, { t: Msg.Error, rid, code: ErrorCode.NoCommonSuite });
      return;
    }
    const suite = match.callee.id as number;
    const calleeRid = this.nextRid();
    const key = `${peer}/${calleeRid}`;
    const timer = setTimeout(() => {
      if (!this.pending.delete(key)) return;
      this.drop(p);
      this.stats.rejected++;
      this.stats.refused++;
      d.log.info("session-rejected", { device: caller, peer, app, reason: "the callee did not answer in time" });
      d.send(caller, { t: Msg.Error, rid, code: ErrorCode.Rejected });
    }, d.settings.answerTimeoutMs);
    const p: Pending = { caller, callerRid: rid, callee: peer, app, suite, calleeRid, timer, settled: "open" };
    this.pending.set(key, p);
    // Several instances: the SPI is claimed before the callee is asked, so that its answer leads
    // straight to the keys; a callee linked at another instance has its SaInstall held there, right
    // behind the Incoming, and given to it the moment it accepts: the setup crosses the bus three
    // times in a row instead of five (docs/SCALING.md).
    if (d.sharing && !(await this.prepare(d.sharing, p, key))) return;
    d.log.info("session-requested", { device: caller, peer, app, suite });
    d.send(peer, { t: Msg.Incoming, rid: calleeRid, from: caller, app, suite });
    const r = p.ready;
    if (r) d.sharing?.installOnAccept(peer, this.installFor(r.spi, caller, 1, calleeRid, app, suite, r.seed, 0));
  }

  /** The SPI claimed and the seed drawn for a request (several instances); false when the request
   *  went meanwhile (its SPI is given back) or the claim failed (the caller is refused). */
  private async prepare(sharing: SessionSharing, p: Pending, key: string): Promise<boolean> {
    const d = this.d;
    let spi: number;
    try {
      spi = await this.claimSpi(sharing, p.caller, p.callee, p.app, p.suite);
    } catch (e) {
      d.log.error("registry-error", { device: p.caller, peer: p.callee, reason: `no SPI claimed, the callee was not asked: ${(e as Error).message}` });
      if (this.pending.get(key) === p) {
        this.pending.delete(key);
        clearTimeout(p.timer);
        this.stats.refused++;
        d.send(p.caller, { t: Msg.Error, rid: p.callerRid, code: ErrorCode.Rejected });
      }
      return false;
    }
    if (p.settled === "dropped") {
      sharing.ended(spi);
      return false;
    }
    p.ready = { spi, seed: d.crypto.random(32) };
    return true;
  }

  /** The request will not be installed: its claimed SPI goes back and its seed is wiped. */
  private drop(p: Pending): void {
    p.settled = "dropped";
    if (!p.ready) return; // prepare gives the SPI back when its claim returns
    this.d.sharing?.ended(p.ready.spi);
    p.ready.seed.fill(0);
  }

  /** The callee's answer. `installed`: the SPI of the SaInstall the callee's instance held and gave it
   *  as it accepted (several instances), so that the broker does not send it one again. */
  private answer(callee: string, rid: number, accept: boolean, installed = 0): void | Promise<void> {
    const d = this.d;
    const key = `${callee}/${rid}`;
    const p = this.pending.get(key);
    if (!p) {
      d.log.warn("session-answer-dropped", { device: callee, reason: "an answer to no pending request (late or unknown)" });
      // It accepted too late, but its instance gave it the held SaInstall: the device drops that SA.
      if (installed) this.closeStray(callee, installed, "the callee accepted after its request timed out");
      return;
    }
    this.pending.delete(key);
    clearTimeout(p.timer);
    if (!accept) {
      this.drop(p);
      this.stats.rejected++;
      this.stats.refused++;
      d.log.info("session-rejected", { device: p.caller, peer: callee, app: p.app, reason: "the callee declined" });
      d.send(p.caller, { t: Msg.Error, rid: p.callerRid, code: ErrorCode.Rejected });
      return;
    }
    p.settled = "accepted";
    const r = p.ready;
    // A lone gateway draws the SPI and the seed now.
    if (!r) return this.install(p.caller, p.callee, p.app, p.suite, p.callerRid, p.calleeRid, 0);
    if (installed && installed !== r.spi) this.closeStray(callee, installed, "its instance gave the callee an SA this one did not prepare for the request");
    // At once (the callee's confirmation may come right behind this answer and must find its SA).
    this.installWith(r.spi, p.caller, p.callee, p.app, p.suite, p.callerRid, p.calleeRid, 0, r.seed, installed === r.spi);
  }

  /** The callee's instance gave it the SaInstall held for request rid as it accepted (several instances). */
  acceptedWithInstall(callee: string, rid: number, spi: number): void | Promise<void> {
    return this.answer(callee, rid, true, spi);
  }

  /** A device holds an SA this broker does not run (given before a request it accepted timed out): it is
   *  told the SA is closed, unless an SA of that SPI runs here after all. */
  private closeStray(dev: string, spi: number, reason: string): void {
    if (this.sessions.has(spi)) return;
    this.d.log.info("session-stray-closed", { device: dev, spi: spiText(spi), reason });
    this.d.send(dev, { t: Msg.SaClosed, spi, reason: CloseReason.PeerGone });
  }

  private installFor(spi: number, peer: string, role: number, rid: number, app: string, suite: number, seed: Uint8Array, replaces: number): SaInstall {
    const { lifetime, limit } = this.d.settings;
    return { t: Msg.SaInstall, rid, peer, role, spi, app, suite, seed, lifetime, limit, replaces };
  }

  /** A random SPI that no SA at this gateway holds, here or across gateways: unique among all SAs of
   *  both devices, wherever they were made (the draw comes from d.crypto.random). */
  private freshSpi(): number {
    for (;;) {
      const b = this.d.crypto.random(4);
      const spi = ((b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]) >>> 0;
      if (spi !== 0 && !this.sessions.has(spi) && !this.d.spiTaken?.(spi)) return spi;
    }
  }

  /** Key distribution (seed 003 claims 3-4, seed 004 key transfer): one fresh seed, to both devices.
   *  With several instances, the SPI is first claimed in the domain's database (no other instance
   *  may hand it out); a lone gateway needs no wait. */
  private install(initiator: string, responder: string, app: string, suite: number, callerRid: number, responderRid: number, replaces: number): void | Promise<void> {
    const sharing = this.d.sharing;
    if (!sharing) return this.installWith(this.freshSpi(), initiator, responder, app, suite, callerRid, responderRid, replaces);
    return this.claimSpi(sharing, initiator, responder, app, suite).then(
      (spi) => this.installWith(spi, initiator, responder, app, suite, callerRid, responderRid, replaces),
      (e: unknown) => {
        // The registry did not answer: the setup fails as a timeout would, and nothing was handed out.
        this.stats.failed++;
        this.d.log.error("registry-error", { device: initiator, peer: responder, reason: (e as Error).message });
        if (callerRid) this.d.send(initiator, { t: Msg.Error, rid: callerRid, code: ErrorCode.Rejected });
      },
    );
  }

  /** An SPI no other instance of the domain may hand out: one claimed ahead when there is one at hand
   *  (no wait for the database on the setup's path), else one claimed now. */
  private async claimSpi(sharing: SessionSharing, initiator: string, responder: string, app: string, suite: number): Promise<number> {
    const terms = { initiator, responder, app, suite, expiresAt: this.d.now() + this.d.settings.lifetime, up: false, home: sharing.instance };
    const ahead = sharing.takeReserved(terms, (spi) => spi !== 0 && !this.sessions.has(spi) && !this.d.spiTaken?.(spi));
    if (ahead !== undefined) return ahead;
    for (;;) {
      const spi = this.freshSpi();
      if (await sharing.claim({ spi, ...terms })) return spi;
    }
  }

  /** `seed`: drawn before the answer (prepare), else now; `responderHasIt`: its instance gave the
   *  responder its SaInstall already. */
  private installWith(spi: number, initiator: string, responder: string, app: string, suite: number, callerRid: number, responderRid: number, replaces: number, seed?: Uint8Array, responderHasIt = false): void {
    const d = this.d;
    const s: Session = {
      spi,
      initiator,
      responder,
      app,
      suite,
      seed: seed ?? d.crypto.random(32),
      confirmed: { initiator: false, responder: false },
      state: "confirming",
      callerRid,
      replaces,
      expiresAt: d.now() + d.settings.lifetime,
      timer: null,
      rekeyTimer: null,
    };
    this.sessions.set(s.spi, s);
    s.timer = setTimeout(() => this.abort(s, "the devices did not confirm their keys in time"), d.settings.answerTimeoutMs);
    const given = s.seed as Uint8Array;
    d.send(initiator, this.installFor(spi, responder, 0, callerRid, app, suite, given, replaces));
    if (!responderHasIt) d.send(responder, this.installFor(spi, initiator, 1, responderRid, app, suite, given, replaces));
    d.log.info("session-keys-distributed", { device: initiator, peer: responder, app, spi: spiText(s.spi), suite, replaces: replaces ? spiText(replaces) : undefined });
  }

  private confirm(deviceId: string, spi: number, tag: Uint8Array): void {
    const d = this.d;
    const s = this.sessions.get(spi);
    const role = s && (s.initiator === deviceId ? 0 : s.responder === deviceId ? 1 : -1);
    if (!s || role === undefined || role < 0 || s.state !== "confirming" || !s.seed) {
      d.log.warn("session-confirm-dropped", { device: deviceId, spi: spiText(spi), reason: "no SA awaiting this device's confirmation" });
      return;
    }
    if (!ctEqual(saConfirmTag(d.crypto, d.cbor, s.seed, spi, s.suite, role), tag)) {
      d.log.warn("session-confirm-dropped", { device: deviceId, spi: spiText(spi), reason: "key confirmation does not verify" });
      this.abort(s, "a key confirmation did not verify");
      return;
    }
    if (role === 0) s.confirmed.initiator = true;
    else s.confirmed.responder = true;
    if (!s.confirmed.initiator || !s.confirmed.responder) return;
    // Both hold the keys: the gateway no longer needs the seed.
    s.seed.fill(0);
    s.seed = null;
    if (s.timer) clearTimeout(s.timer);
    s.state = "up";
    d.sharing?.up(spi);
    s.timer = setTimeout(() => this.end(s, CloseReason.Expired, "lifetime over"), (d.settings.lifetime + 5) * 1000);
    // The device asks for a rekey only when it sends: a quiet SA would run out instead of being
    // replaced. The gateway knows the lifetime and runs the key distribution, so it asks on time.
    s.rekeyTimer = setTimeout(() => this.rekeyOnTime(s), d.settings.lifetime * REKEY_AT * 1000);
    this.stats.up++;
    d.send(s.initiator, { t: Msg.Connected, spi, replaces: s.replaces });
    d.send(s.responder, { t: Msg.Connected, spi, replaces: s.replaces });
    d.log.info(s.replaces ? "session-rekeyed" : "session-up", { device: s.initiator, peer: s.responder, app: s.app, spi: spiText(spi), replaces: s.replaces ? spiText(s.replaces) : undefined });
    // Evidence, not state: group-committed with the records queued around it (Store.auditBatched says
    // what a crash or a power cut may lose). Nothing the gateway enforces is read back from the audit log.
    d.store.auditBatched(d.now(), s.initiator, s.replaces ? "session-rekeyed" : "session-up", `peer=${s.responder} app=${s.app} spi=${spiText(spi)}`);
    if (s.replaces) this.retire(s.replaces);
  }

  /** A replaced SA keeps routing frames in flight for the overlap, then goes. */
  private retire(spi: number): void {
    const old = this.sessions.get(spi);
    if (!old) return;
    old.state = "retiring";
    stopTimers(old);
    // Out of the domain's table at once: an instance taking this one's SAs over must not take a
    // replaced SA for a live one (instances that route its stragglers have it cached).
    this.d.sharing?.ended(spi);
    old.timer = setTimeout(() => this.sessions.delete(spi), this.d.settings.overlapMs);
  }

  private abort(s: Session, reason: string): void {
    if (!this.sessions.has(s.spi)) return;
    this.stats.failed++;
    this.d.log.warn("session-aborted", { device: s.initiator, peer: s.responder, spi: spiText(s.spi), reason });
    this.end(s, CloseReason.PeerGone, reason);
  }

  /** Seed 001 re-keying: a new SA for the same peers, app and suite replaces the old one. */
  /** A Rekey is a notice (no answer): both ends learn of the replacement from SaInstall and
   *  Connected, which also covers both ends asking at once. */
  private rekey(deviceId: string, spi: number): void | Promise<void> {
    const d = this.d;
    const s = this.sessions.get(spi);
    if (!s || (s.initiator !== deviceId && s.responder !== deviceId)) {
      d.log.warn("session-rekey-rejected", { device: deviceId, spi: spiText(spi), reason: "no SA with this SPI for this device" });
      return;
    }
    if (s.state !== "up") {
      d.log.info("session-rekey-ignored", { device: deviceId, spi: spiText(spi), reason: s.state === "retiring" ? "the SA was already replaced" : "the SA is not confirmed yet" });
      return;
    }
    return this.replace(s);
  }

  /** The SA reached its rekey point: replaced whether or not traffic flows ("either end may ask",
   *  seed 001; here the gateway asks), unless it is gone, replaced or being replaced already. */
  private rekeyOnTime(s: Session): void {
    s.rekeyTimer = null;
    if (this.sessions.get(s.spi) !== s || s.state !== "up") return;
    this.d.log.info("session-rekey-due", { device: s.initiator, peer: s.responder, spi: spiText(s.spi), reason: `${REKEY_AT * 100}% of the SA's lifetime is over` });
    void this.replace(s);
  }

  /** A new SA for the same peers, app and suite, naming the one it replaces; policy and both
   *  registrations are checked afresh, as for a new session. */
  private replace(s: Session): Promise<void> {
    return this.replaceChecked(s).catch((e) => this.d.log.error("registry-error", { device: s.initiator, spi: spiText(s.spi), reason: (e as Error).message }));
  }

  private async replaceChecked(s: Session): Promise<void> {
    const d = this.d;
    const [allowed, initiator, responder, home] = await Promise.all([
      d.policy.permits(s.initiator, s.responder, s.app), this.registered(s.initiator), this.registered(s.responder), d.sharing ? d.sharing.stillHome(s.spi) : true,
    ]);
    // It may have ended, or been replaced (both ends and the timer may ask), while the registry answered.
    if (this.sessions.get(s.spi) !== s || s.state !== "up") return;
    if (!home) {
      // Another instance took it over (the broker thought this one gone): that one runs it now.
      d.log.warn("session-home-moved", { device: s.initiator, peer: s.responder, spi: spiText(s.spi), reason: "another instance runs this SA now; this one forgets it" });
      this.forget(s);
      return;
    }
    if (!allowed || !initiator || !responder) {
      this.end(s, CloseReason.PeerGone, "policy or registration no longer allows this session");
      return;
    }
    // Both ends (and the gateway's own timer) may ask at once: one replacement per SA, counting one
    // whose SPI is still being claimed in the domain's database.
    if (this.replacing.has(s.spi)) return;
    for (const other of this.sessions.values()) if (other.replaces === s.spi && other.state === "confirming") return;
    this.stats.rekeyed++;
    this.replacing.add(s.spi);
    try {
      await this.install(s.initiator, s.responder, s.app, s.suite, 0, 0, s.spi);
    } finally {
      this.replacing.delete(s.spi);
    }
  }

  private bye(deviceId: string, spi: number): void {
    const s = this.sessions.get(spi);
    if (!s || (s.initiator !== deviceId && s.responder !== deviceId)) {
      this.d.log.warn("session-bye-dropped", { device: deviceId, spi: spiText(spi), reason: "no SA with this SPI for this device" });
      return;
    }
    this.end(s, CloseReason.Bye, `bye from ${deviceId}`);
  }

  /** Ends an SA at both ends: each device still linked is told. */
  end(s: Session, reason: CloseReason, why: string): void {
    if (!this.sessions.delete(s.spi)) return;
    stopTimers(s);
    this.d.sharing?.ended(s.spi);
    if (s.seed) s.seed.fill(0);
    this.stats.ended++;
    for (const dev of [s.initiator, s.responder]) this.d.send(dev, { t: Msg.SaClosed, spi: s.spi, reason });
    this.d.log.info("session-down", { device: s.initiator, peer: s.responder, app: s.app, spi: spiText(s.spi), reason: why });
    this.d.store.auditBatched(this.d.now(), s.initiator, "session-down", `peer=${s.responder} spi=${spiText(s.spi)} ${why}`);
  }

  /** Ends every session of a device (deregistration, revocation, reboot, lost link). */
  endAll(deviceId: string, reason: CloseReason, why: string): void {
    this.d.onEndAll?.(deviceId, reason, why);
    for (const s of [...this.sessions.values()]) if (s.initiator === deviceId || s.responder === deviceId) this.end(s, reason, why);
    for (const [key, p] of [...this.pending]) {
      if (p.caller !== deviceId && p.callee !== deviceId) continue;
      clearTimeout(p.timer);
      this.pending.delete(key);
      this.drop(p);
      if (p.callee !== deviceId) continue;
      this.stats.refused++;
      this.d.send(p.caller, { t: Msg.Error, rid: p.callerRid, code: ErrorCode.Rejected });
    }
  }

  /** The device's link is back: a lost-link timer stops. */
  linkUp(deviceId: string): void {
    const t = this.lost.get(deviceId);
    if (t) clearTimeout(t);
    this.lost.delete(deviceId);
  }

  /** The device's link is gone: its sessions end unless it comes back within the grace period. */
  linkDown(deviceId: string): void {
    if (this.lost.has(deviceId)) return;
    this.lost.set(deviceId, setTimeout(() => {
      this.lost.delete(deviceId);
      // With several instances, the device may have come back at another one.
      if (this.d.sharing && this.d.isLinked(deviceId)) return;
      this.endAll(deviceId, CloseReason.PeerGone, "link lost for longer than the grace period");
    }, this.d.settings.graceMs));
  }

  /** An SA frame from deviceId: forwarded, byte for byte, to the other party of its SPI. */
  relay(deviceId: string, m: SaData, payload: Uint8Array): void {
    const s = this.sessions.get(m.spi);
    const peer = s && (s.initiator === deviceId ? s.responder : s.responder === deviceId ? s.initiator : undefined);
    if (!s || !peer || s.state === "confirming") {
      this.stats.relayDropped++;
      this.d.log.warn("frame dropped", { device: deviceId, spi: spiText(m.spi), reason: !s ? "SA frame for an unknown SPI" : !peer ? "SA frame from a device that is not party to the SPI" : "SA frame before both devices confirmed" });
      return;
    }
    if (this.d.relay(peer, payload)) this.stats.relayed++;
    else this.stats.relayDropped++;
  }

  /** Whether a connection request to callee with this rid waits here for its answer. */
  hasPending(callee: string, rid: number): boolean {
    return this.pending.has(`${callee}/${rid}`);
  }

  /** Takes over SAs another instance ran (it is gone): each runs here from now on as if set up here,
   *  its lifetime and rekey point kept, and a party not linked anywhere gets the grace period to come
   *  back. The seed is long gone: only confirmed SAs are taken over (LiveTable.takeOver). */
  adopt(rows: LiveSession[]): void {
    const d = this.d;
    const now = d.now();
    for (const r of rows) {
      if (this.sessions.has(r.spi) || !r.up) continue;
      const s: Session = {
        spi: r.spi, initiator: r.initiator, responder: r.responder, app: r.app, suite: r.suite, seed: null,
        confirmed: { initiator: true, responder: true }, state: "up", callerRid: 0, replaces: 0, expiresAt: r.expiresAt, timer: null, rekeyTimer: null,
      };
      this.sessions.set(s.spi, s);
      const left = r.expiresAt - now;
      s.timer = setTimeout(() => this.end(s, CloseReason.Expired, "lifetime over"), Math.max(0, left + 5) * 1000);
      const rekeyIn = left - d.settings.lifetime * (1 - REKEY_AT);
      s.rekeyTimer = setTimeout(() => this.rekeyOnTime(s), Math.max(0, rekeyIn) * 1000);
      for (const dev of [s.initiator, s.responder]) if (!d.isLinked(dev)) this.linkDown(dev);
      d.log.info("session-taken-over", { device: s.initiator, peer: s.responder, app: s.app, spi: spiText(s.spi) });
    }
  }

  /** Forgets every SA not in `spis` (another instance runs it now; the registry said so after this
   *  instance was cut off); how many it kept. */
  keepOnly(spis: Set<number>): number {
    for (const s of [...this.sessions.values()]) {
      if (spis.has(s.spi)) continue;
      this.d.log.warn("session-home-moved", { device: s.initiator, peer: s.responder, spi: spiText(s.spi), reason: "another instance took this SA over while this one was cut off from the broker" });
      this.forget(s);
    }
    return this.sessions.size;
  }

  /** Drops an SA without ending it: another instance runs it now. */
  private forget(s: Session): void {
    if (!this.sessions.delete(s.spi)) return;
    stopTimers(s);
    if (s.seed) s.seed.fill(0);
  }

  close(): void {
    for (const s of this.sessions.values()) stopTimers(s);
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.settled = "dropped";
      p.ready?.seed.fill(0);
    }
    for (const t of this.lost.values()) clearTimeout(t);
    this.sessions.clear();
    this.pending.clear();
    this.lost.clear();
  }
}

function stopTimers(s: Session): void {
  if (s.timer) clearTimeout(s.timer);
  if (s.rekeyTimer) clearTimeout(s.rekeyTimer);
  s.timer = s.rekeyTimer = null;
}

