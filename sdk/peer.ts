// The capable-peer SDK (design.md §2 "capable peer"; seed 004 E1/E2: peer terminal 6 with its own
// IKE): a Node program with its own key pair and certificate runs the key exchange of
// gateway/crossgw/exchange.ts itself against a handset's gateway, and then seals and opens the SA frames
// itself, so no gateway ever holds its keys.
//
// To the fleet it looks like a gateway with one device: it speaks the interlink under a gateway
// certificate for its own domain (from the fleet CA: `keyproxy fleet issue-gateway --data-dir`), and
// presents a device certificate for its name signed by that gateway key. It calls (connect) and can
// be called (onRequest), with the interlink messages of gateway/crossgw/messages.ts. Its own key
// confirmation is immediate: it installed the keys itself.
//
// Like a handset it keeps each SA within its lifetime and message limit (the smaller of its own and
// the other gateway's), and asks for a new SA at 80% of either; rekeys run as between gateways (the
// SA's initiator runs the exchange) and the application keeps one PeerSession object throughout.
// Like a gateway it judges every SA's certificates again when a newer fleet revocation list arrives.
//
// A domain may run several gateway processes (instances, gateway/instances/). Each SA runs at one of
// them, so everything about it goes to that one (PeerSession.peerInstance): the instance that
// answered the peer's message 1, or that sent the one the peer answered. When it dies or stops,
// another instance takes the SA over and says so (kp.x.moved), and the peer follows; when none does
// within the grace period after that instance stopped answering, the SA ends.

import { randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { SymCrypto } from "../firmware/crypto/types.ts";
import { REKEY_AT } from "../firmware/handset.ts";
import { DIR_DOWN, DIR_UP, deriveSaKeys } from "../firmware/proto/keys.ts";
import { openFrame, sealFrame, wipeLink, type Link } from "../firmware/proto/link.ts";
import { CloseReason, Msg } from "../firmware/proto/messages.ts";
import * as cbor from "../gateway/encoding/cbor.ts";
import * as xm from "../gateway/crossgw/messages.ts";
import { nodeCrypto } from "../gateway/crypto/symmetric.ts";
import { issueCertificate } from "../gateway/encoding/cwt.ts";
import { ed25519FromSeed, generateEd25519 } from "../gateway/crypto/ed25519.ts";
import { decodeMsg1, decodeMsg2, decodeMsg3, decodeMsg4, encodeMsg1, encodeMsg2, encodeMsg3, encodeMsg4, ExchangeError, Initiator, Responder, SeenSessions, type ExchangeResult, type KeyAgreementPolicy, type LocalParty } from "../gateway/crossgw/exchange.ts";
import { loadGatewayCredentials, splitDeviceName } from "../gateway/fleet/fleet.ts";
import { createFileDurably } from "../gateway/files/durable.ts";
import { parseHexKey } from "../gateway/files/hex-key.ts";
import { FleetTrust } from "../gateway/fleet/trust.ts";
import { Interlink, InterlinkError, type InterlinkRequest } from "../gateway/fleet/interlink.ts";
import { Logger } from "../gateway/log/logger.ts";
import { matchSettings, suiteCandidates } from "../gateway/sessions/matching.ts";
import { DEFAULT_SESSIONS } from "../gateway/sessions/session-broker.ts";
import { checkerTrust, type CertificateChecker } from "../gateway/fleet/verifier.ts";
import { spiText } from "../gateway/log/protocol-names.ts";

export interface CapablePeerOptions {
  /** The peer's interlink (identity: its domain and the fleet's certificate for it). */
  interlink: Interlink;
  /** Its name ("name@domain", domain = the interlink's gateway id), identity key and certificates. */
  self: LocalParty;
  /** [suite, priority] pairs it can run. */
  suites: number[][];
  /** Judges the other side's certificate chain. */
  checker: CertificateChecker;
  now?: () => number;
  /** Symmetric crypto for the SA frames (default node:crypto and tweetnacl). */
  crypto?: SymCrypto;
  /** How long to wait for the other side's device to confirm, ms (default 10,000). */
  confirmTimeoutMs?: number;
  /** With a domain of instances: how long an SA whose instance there stopped answering waits for
   *  another to take it over (kp.x.moved) before it ends, ms (default 30,000, a gateway's grace). */
  graceMs?: number;
  /** The SA lifetime (seconds) and message limit it offers; the other gateway may only lower them. */
  lifetime?: number;
  limit?: number;
  /** How long a replaced SA still opens frames in flight, ms (default 10,000). */
  overlapMs?: number;
  /** The fleet's key-agreement policy for the exchange (default "x25519"; docs/FLEET.md,
   *  "Post-quantum key agreement"): a peer in a fleet that requires the hybrid must say so too. */
  keyAgreement?: KeyAgreementPolicy;
}

/** Keys of one SA generation (a rekey makes the next one). */
interface Generation {
  spi: number;
  link: Link;
  terms: xm.SaTerms;
  /** Seconds: when this generation's lifetime ends. */
  expiresAt: number;
  /** Frames opened under these keys. */
  received: number;
  remoteConfirmed: boolean;
}

/** One SA the peer holds itself. Its SPI changes at each rekey; the object stays. */
export class PeerSession {
  /** Application data from the other end, in order of arrival. */
  onMessage?: (data: Uint8Array) => void;
  onClose?: (reason: CloseReason) => void;
  state: "confirming" | "up" | "closed" = "confirming";
  /** The other domain's process that runs this SA there, when that domain runs several instances
   *  (undefined: it runs as one process). Every message about the SA goes to it; it changes when
   *  another instance takes the SA over and says so (kp.x.moved). */
  peerInstance: string | undefined;
  /** Set while the SA waits for another instance to take it over (its own did not answer). */
  private silence: NodeJS.Timeout | undefined;
  private current: Generation;
  /** A replacement set up but not yet confirmed by the other end. */
  private next: Generation | undefined;
  /** Replaced generations, still opening frames in flight until the overlap ends. */
  private readonly retired = new Map<number, { g: Generation; timer: NodeJS.Timeout }>();
  private rekeying = false;
  /** Senders waiting for a replacement SA (send() past the limit while a rekey runs). */
  private readonly replacedWaiters = new Set<() => void>();
  private upWaiter: { resolve: () => void; reject: (e: Error) => void; timer: NodeJS.Timeout } | undefined;

  constructor(
    private readonly owner: CapablePeer,
    /** 0: this peer initiated the SA (it runs the rekeys), 1: it answered. */
    readonly role: 0 | 1,
    readonly peer: string,
    readonly peerGateway: string,
    readonly app: string,
    readonly suite: number,
    first: Generation,
    /** The certificates the exchange presented, judged again on every revocation list. */
    readonly certs: { peer: Uint8Array; peerGateway: Uint8Array },
  ) {
    this.current = first;
  }

  /** The SPI frames are sent under now. */
  get spi(): number {
    return this.current.spi;
  }

  /** Sends data to the other end (sealed here; the gateways relay what they cannot read). Asks for a
   *  new SA at 80% of the lifetime or limit; past either, waits for the replacement (up to the
   *  confirmation timeout) and fails if none comes. */
  async send(data: Uint8Array): Promise<void> {
    if (this.state !== "up") throw new Error(`SA ${spiText(this.spi)} is ${this.state}`);
    let g = this.current;
    const usedUp = () => g.link.txSeq_ >= g.terms.limit || this.owner.now() >= g.expiresAt;
    if (!this.rekeying && (g.link.txSeq_ >= g.terms.limit * REKEY_AT || this.owner.now() >= g.expiresAt - g.terms.lifetime * (1 - REKEY_AT))) {
      this.rekeying = true;
      void this.owner.rekey(this).catch(() => {
        this.rekeying = false;
        this.wakeSenders();
      });
    }
    if (usedUp()) {
      if (this.rekeying) await this.replaced(this.owner.confirmTimeoutMs);
      if (this.state !== "up") throw new Error(`SA ${spiText(this.spi)} is ${this.state}`);
      g = this.current;
      if (usedUp()) throw new Error(`SA ${spiText(g.spi)} is used up (its limit or lifetime is reached and no replacement came)`);
    }
    const frame = sealFrame(this.owner.crypto, cbor, g.link, g.spi, data);
    await this.tell(xm.XGW_SA, xm.frameBody(g.spi, frame));
  }

  /** Ends the SA here and at the other end. */
  async close(): Promise<void> {
    if (this.state === "closed") return;
    const spi = this.spi;
    this.end(CloseReason.Bye);
    await this.tell(xm.XGW_BYE, xm.byeBody(spi, CloseReason.Bye));
  }

  /** @internal a request about this SA to the other gateway's process that runs it. One that instance
   *  does not answer makes the SA wait for another of its domain to take it over (kp.x.moved), for the
   *  grace period, and then end, as a gateway's SA does. */
  async tell(type: string, body: unknown): Promise<unknown> {
    const asked = this.peerInstance;
    try {
      return await this.owner.interlink.request(this.peerGateway, type, body, asked === undefined ? {} : { instance: asked });
    } catch (e) {
      if (asked !== undefined && e instanceof InterlinkError && e.code === "timeout") this.peerSilent(asked);
      throw e;
    }
  }

  /** @internal the other domain's process that runs the SA now: another instance took it over
   *  (kp.x.moved), or the one that answered its rekey. */
  moved(to: string | undefined): void {
    this.peerInstance = to;
    if (this.silence) clearTimeout(this.silence);
    this.silence = undefined;
  }

  private peerSilent(asked: string): void {
    if (this.silence || this.state === "closed" || this.peerInstance !== asked) return;
    this.silence = setTimeout(() => {
      this.silence = undefined;
      if (this.peerInstance === asked) this.end(CloseReason.PeerGone);
    }, this.owner.graceMs);
    this.silence.unref();
  }

  /** @internal an SA frame payload from the other gateway, under any SPI of this session. */
  receive(spi: number, payload: Uint8Array): void {
    const g = spi === this.current.spi ? this.current : spi === this.next?.spi ? this.next : this.retired.get(spi)?.g;
    if (this.state !== "up" || !g) throw new InterlinkError("malformed", "SA frame for no live SA here");
    let w: unknown;
    try {
      w = cbor.decode(payload);
    } catch {
      throw new InterlinkError("malformed", "SA frame is not CBOR");
    }
    if (!Array.isArray(w) || w[0] !== Msg.SaData || w[1] !== spi || typeof w[2] !== "number" || !(w[3] instanceof Uint8Array)) {
      throw new InterlinkError("malformed", "not an SA frame for this SPI");
    }
    if (g.received >= g.terms.limit) throw new InterlinkError("malformed", "SA frame past the SA's message limit");
    const plain = openFrame(this.owner.crypto, cbor, g.link, spi, w[2], w[3]);
    if (typeof plain === "number") throw new InterlinkError("malformed", `SA frame dropped (reason ${plain})`);
    g.received++;
    this.onMessage?.(plain);
  }

  /** @internal the other end's device confirmed the keys of `spi`. */
  confirmed(spi: number): void {
    if (spi === this.current.spi) {
      this.current.remoteConfirmed = true;
      if (this.state !== "confirming") return;
      this.state = "up";
      if (this.upWaiter) {
        clearTimeout(this.upWaiter.timer);
        this.upWaiter.resolve();
      }
    } else if (spi === this.next?.spi) {
      // The replacement is up at both ends: send under it from now on; the old keys open stragglers.
      const old = this.current;
      this.current = this.next;
      this.next = undefined;
      this.rekeying = false;
      this.retired.set(old.spi, { g: old, timer: setTimeout(() => this.drop(old), this.owner.overlapMs).unref() });
      this.wakeSenders();
    }
  }

  /** Resolves when a replacement is in use, the session ends, or ms pass. */
  private replaced(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.replacedWaiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.replacedWaiters.add(done);
    });
  }

  private wakeSenders(): void {
    for (const w of [...this.replacedWaiters]) w();
  }

  /** @internal a replacement generation (a rekey), not used for sending until the other end confirms. */
  replaceWith(g: Generation): void {
    if (this.next) this.drop(this.next);
    this.next = g;
    if (g.remoteConfirmed) this.confirmed(g.spi);
  }

  /** @internal resolves once both ends hold the keys. */
  whenUp(ms: number): Promise<void> {
    if (this.state === "up") return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.upWaiter = {
        resolve, reject,
        timer: setTimeout(() => {
          this.end(CloseReason.PeerGone);
          reject(new Error("the other end did not confirm its keys in time"));
        }, ms),
      };
      if (this.current.remoteConfirmed) this.confirmed(this.current.spi);
    });
  }

  /** @internal every SPI this session answers to. */
  spis(): number[] {
    return [this.current.spi, ...(this.next ? [this.next.spi] : []), ...this.retired.keys()];
  }

  /** @internal */
  end(reason: CloseReason): void {
    if (this.state === "closed") return;
    this.state = "closed";
    if (this.silence) clearTimeout(this.silence);
    for (const g of [this.current, this.next, ...[...this.retired.values()].map((r) => r.g)]) if (g) this.drop(g);
    if (this.upWaiter) clearTimeout(this.upWaiter.timer);
    this.wakeSenders();
    this.onClose?.(reason);
  }

  private drop(g: Generation): void {
    wipeLink(g.link);
    const r = this.retired.get(g.spi);
    if (r) clearTimeout(r.timer);
    this.retired.delete(g.spi);
    this.owner.forget(g.spi, this);
  }
}

/** What CapablePeer.start needs: a data directory set up by `keyproxy fleet issue-gateway --id <domain>
 *  --data-dir <dir>`, the peer's name in that domain and the fleet's MQTT broker. */
export interface CapablePeerStartOptions {
  dataDir: string;
  /** The peer's device name ("carol"); its domain is the certificate's gateway id. */
  name: string;
  /** The domain (gateway id) the fleet certified for this peer. */
  domain: string;
  /** mqtt://host:port of the broker the fleet's gateways use. */
  mqtt: string;
  suites?: number[][];
  /** How long the peer's own device certificate is valid, seconds (default one day). */
  certLifetime?: number;
  log?: Logger;
  lifetime?: number;
  limit?: number;
  /** The fleet's key-agreement policy (default "x25519"): give the peer its fleet's. */
  keyAgreement?: KeyAgreementPolicy;
}

const IDENTITY_FILE = "peer-identity.key";
const AES_CCM = 10; // SUITE_AES_CCM_16_64_128: what every handset can run

export class CapablePeer {
  /** Decides an incoming call (default: refuse), as a handset's onRequest does. */
  onRequest?: (from: string, app: string) => boolean;
  /** An incoming call that is now up. */
  onSession?: (s: PeerSession) => void;
  readonly crypto: SymCrypto;
  readonly interlink: Interlink;
  readonly now: () => number;
  readonly overlapMs: number;
  readonly confirmTimeoutMs: number;
  readonly graceMs: number;
  private readonly sessions = new Map<number, PeerSession>();
  /** Exchanges we answer, by session id, with the other domain's process that runs them. */
  private readonly responders = new Map<string, { r: Responder; terms: xm.SaTerms; instance: string | undefined }>();
  private readonly earlyConfirmed = new Set<number>();
  private readonly seen = new SeenSessions();
  private readonly terms: xm.SaTerms;
  /** Set by start(): what it opened, closed by close(). */
  private owned: { trust: FleetTrust } | undefined;

  constructor(private readonly opts: CapablePeerOptions) {
    this.crypto = opts.crypto ?? nodeCrypto();
    this.interlink = opts.interlink;
    this.now = opts.now ?? (() => Math.floor(Date.now() / 1000));
    this.overlapMs = opts.overlapMs ?? DEFAULT_SESSIONS.overlapMs;
    this.confirmTimeoutMs = opts.confirmTimeoutMs ?? 10_000;
    this.graceMs = opts.graceMs ?? DEFAULT_SESSIONS.graceMs;
    this.terms = { lifetime: opts.lifetime ?? DEFAULT_SESSIONS.lifetime, limit: opts.limit ?? DEFAULT_SESSIONS.limit };
    if (splitDeviceName(opts.self.name)?.domain !== opts.interlink.gatewayId) throw new TypeError(`"${opts.self.name}" is not a name in the interlink's domain "${opts.interlink.gatewayId}"`);
    const wrap = (f: (req: InterlinkRequest) => Promise<{ body: unknown }> | { body: unknown }) => async (req: InterlinkRequest) => {
      try {
        return await f(req);
      } catch (e) {
        throw e instanceof ExchangeError ? new InterlinkError("malformed", `exchange refused (${e.code}): ${e.message}`) : e;
      }
    };
    const link = opts.interlink;
    link.handle(xm.XGW_MSG1, wrap((req) => this.onMsg1(req)));
    link.handle(xm.XGW_MSG3, wrap((req) => this.onMsg3(req)));
    link.handle(xm.XGW_CONFIRMED, (req) => this.withSession(req, xm.readConfirmed(req.body), (s, spi) => s.confirmed(spi), (spi) => this.earlyConfirmed.add(spi)));
    link.handle(xm.XGW_SA, (req) => {
      const { spi, frame } = xm.readFrame(req.body);
      return this.withSession(req, spi, (s) => s.receive(spi, frame));
    });
    link.handle(xm.XGW_BYE, (req) => {
      const { spi, reason } = xm.readBye(req.body);
      return this.withSession(req, spi, (s) => s.end(reason), () => undefined);
    });
    link.handle(xm.XGW_REKEY, (req) => this.withSession(req, xm.readRekey(req.body), (s) => void this.rekey(s).catch(() => undefined)));
    link.handle(xm.XGW_MOVED, (req) => this.onMoved(req));
  }

  /**
   * A peer from its data directory: the fleet's certificate for its domain and the trust anchor (from
   * `keyproxy fleet issue-gateway --id <domain> --data-dir <dir>`), its own identity key (made there
   * on first start, mode 0600) and a device certificate for name@domain that it signs itself. It
   * listens for the fleet's revocation lists and judges its SAs again on each.
   */
  static async start(o: CapablePeerStartOptions): Promise<CapablePeer> {
    const log = o.log ?? new Logger(() => undefined);
    const now = () => Math.floor(Date.now() / 1000);
    const { credentials } = loadGatewayCredentials(o.dataDir, o.domain, now(), false);
    const identity = loadOrCreateIdentity(o.dataDir);
    const t = now();
    const cert = issueCertificate(
      { iss: o.domain, sub: o.name, iat: t, nbf: t, exp: t + (o.certLifetime ?? 86_400), cti: new Uint8Array(randomBytes(16)), publicKey: identity.publicKey },
      credentials.signing.seed,
    );
    const trust = new FleetTrust({ dataDir: o.dataDir, anchor: credentials.anchor, log, now, verifierId: o.domain });
    const interlink = await Interlink.connect({ url: o.mqtt, identity: credentials, trust: checkerTrust(trust.checker), now, log, protocolVersion: "auto", keyAgreement: o.keyAgreement });
    const peer = new CapablePeer({
      interlink, checker: trust.checker, now, lifetime: o.lifetime, limit: o.limit, keyAgreement: o.keyAgreement,
      self: { name: `${o.name}@${o.domain}`, identitySeed: identity.seed, cert, gatewayCert: credentials.certificate },
      suites: o.suites ?? [[AES_CCM, 1]],
    });
    peer.owned = { trust };
    trust.onList(() => void peer.recheck());
    trust.onList(() => void interlink.revalidateChannels());
    await trust.attach(interlink);
    return peer;
  }

  private get deps() {
    return { checker: this.opts.checker, now: this.now, seen: this.seen, keyAgreement: this.opts.keyAgreement };
  }

  /** Calls `peer` ("name@domain") for app; resolves with the SA once both ends hold the keys. */
  async connect(peer: string, app: string): Promise<PeerSession> {
    const domain = splitDeviceName(peer)?.domain;
    if (!domain) throw new TypeError(`"${peer}" is not a device name (name@domain)`);
    const out = await this.initiate(peer, domain, app, 0, undefined);
    const s = new PeerSession(this, 0, out.result.peer, domain, app, out.result.suite, this.generation(out.result, out.terms), { peer: out.result.peerCert, peerGateway: out.result.peerGatewayCert });
    s.peerInstance = out.instance;
    this.adopt(s);
    await s.whenUp(this.confirmTimeoutMs);
    return s;
  }

  /** Closes every SA (telling the other ends), and what start() opened. */
  async close(): Promise<void> {
    const all = new Set(this.sessions.values());
    await Promise.allSettled([...all].map((s) => s.close()));
    for (const x of this.responders.values()) x.r.abort("closed");
    this.responders.clear();
    if (this.owned) {
      this.owned.trust.close();
      await this.interlink.close();
    }
  }

  /** Judges every SA's peer certificate again; one no longer good ends at both ends (Revoked). */
  async recheck(): Promise<void> {
    for (const s of new Set(this.sessions.values())) {
      let problem = "";
      try {
        const a = await this.opts.checker.check(s.certs.peer, [s.certs.peerGateway], this.now());
        if (a.status !== "good") problem = `${a.status}: ${a.reason}`;
      } catch (e) {
        problem = e instanceof Error ? e.message : String(e);
      }
      if (!problem || s.state === "closed") continue;
      const spi = s.spi;
      s.end(CloseReason.Revoked);
      void s.tell(xm.XGW_BYE, xm.byeBody(spi, CloseReason.Revoked)).catch(() => undefined);
    }
  }

  /** @internal */
  forget(spi: number, s: PeerSession): void {
    if (this.sessions.get(spi) === s) this.sessions.delete(spi);
  }

  /** @internal a new SA for s: this peer runs the exchange if it initiated s, else asks the other
   *  gateway to (the initiating side runs every rekey of an SA). */
  async rekey(s: PeerSession): Promise<void> {
    if (s.state !== "up") return;
    if (s.role === 1) {
      await s.tell(xm.XGW_REKEY, xm.rekeyBody(s.spi));
      return;
    }
    // The replacement is run by the process that runs the SA at the other side.
    const out = await this.initiate(s.peer, s.peerGateway, s.app, s.spi, s.peerInstance);
    if (s.state !== "up") {
      out.result.seed.fill(0);
      return;
    }
    s.moved(out.instance);
    this.install(s, out.result, out.terms);
  }

  /** Runs the exchange with `peer`'s gateway. A domain running several instances answers message 1
   *  from any of them unless `instance` names one; message 3 and everything about the SA after it go
   *  to the one that answered (it holds the exchange's state and then runs the SA). */
  private async initiate(peer: string, domain: string, app: string, replaces: number, instance: string | undefined): Promise<{ result: ExchangeResult; terms: xm.SaTerms; instance: string | undefined }> {
    const init = new Initiator(this.deps, this.opts.self, peer, app, this.opts.suites, { replaces });
    const sessionId = init.msg1.sessionId;
    const pin = (i: string | undefined) => (i === undefined ? {} : { instance: i });
    try {
      const answer2 = await this.interlink.requestTo(domain, xm.XGW_MSG1, xm.connectBody(encodeMsg1(init.msg1), this.terms), { sessionId, secret: true, timeoutMs: 20_000, ...pin(instance) });
      const a2 = xm.readConnectAnswer(answer2.body);
      if ("refused" in a2) throw new Error(`${peer} refused: ${a2.refused}`);
      const terms = { lifetime: Math.min(a2.lifetime, this.terms.lifetime), limit: Math.min(a2.limit, this.terms.limit) };
      const msg3 = await init.onMsg2(decodeMsg2(a2.msg2));
      const a4 = xm.readFinished(await this.interlink.request(domain, xm.XGW_MSG3, xm.finishBody(encodeMsg3(msg3)), { sessionId, secret: true, ...pin(answer2.instance) }));
      return { result: init.onMsg4(decodeMsg4(a4)), terms, instance: answer2.instance };
    } catch (e) {
      init.abort("failed");
      throw e;
    }
  }

  /** Our own keys, straight from the exchange result; the seed is wiped at once. */
  private generation(r: ExchangeResult, terms: xm.SaTerms): Generation {
    if (this.sessions.has(r.spi)) {
      r.seed.fill(0);
      throw new Error("the derived SPI is already in use here");
    }
    const role = r.role === "initiator" ? 0 : 1;
    const keys = deriveSaKeys(this.crypto, cbor, r.seed, r.spi, r.suite, role);
    r.seed.fill(0);
    keys.confirm.fill(0);
    const link: Link = { keys_: { suite: keys.suite, up: keys.up, down: keys.down }, txDir_: role === 0 ? DIR_UP : DIR_DOWN, txSeq_: 0, rx_: { top: 0, bits: 0 } };
    const remoteConfirmed = this.earlyConfirmed.delete(r.spi);
    return { spi: r.spi, link, terms, expiresAt: this.now() + terms.lifetime, received: 0, remoteConfirmed };
  }

  /** Registers a session's SPI and confirms our keys to the other gateway (we installed them). */
  private adopt(s: PeerSession): void {
    this.sessions.set(s.spi, s);
    void s.tell(xm.XGW_CONFIRMED, xm.confirmedBody(s.spi)).catch(() => s.end(CloseReason.PeerGone));
  }

  /** A rekey's keys for an existing session. */
  private install(s: PeerSession, r: ExchangeResult, terms: xm.SaTerms): void {
    const g = this.generation(r, terms);
    this.sessions.set(g.spi, s);
    s.replaceWith(g);
    void s.tell(xm.XGW_CONFIRMED, xm.confirmedBody(g.spi)).catch(() => s.end(CloseReason.PeerGone));
  }

  private withSession(req: InterlinkRequest, spi: number, f: (s: PeerSession, spi: number) => void, unknown?: (spi: number) => void): { body: unknown } {
    const s = this.sessions.get(spi);
    if (s && s.peerGateway !== req.from) throw new InterlinkError("malformed", `"${req.from}" is not party to this SPI`);
    if (!s) {
      if (!unknown) throw new InterlinkError("malformed", "no SA with this SPI here");
      unknown(spi);
    } else f(s, spi);
    return { body: 0 };
  }

  /** Another instance of the SA's other domain took it over (the one that ran it died or stopped): it
   *  runs the SA from now on. Only the SA's own peer domain may say so, and only as one of its
   *  instances (signed, or on its channel: the envelope's instance, not the body's). */
  private onMoved(req: InterlinkRequest): { body: unknown } {
    const spi = xm.readMoved(req.body);
    const to = req.fromInstance;
    if (to === undefined) throw new InterlinkError("malformed", `${xm.XGW_MOVED} from a gateway that names no instance`);
    return this.withSession(req, spi, (s) => s.moved(to));
  }

  private async onMsg1(req: InterlinkRequest): Promise<{ body: unknown }> {
    const { msg1: raw, ...offered } = xm.readConnect(req.body);
    const msg1 = decodeMsg1(raw);
    if (splitDeviceName(msg1.from)?.domain !== req.from) throw new InterlinkError("untrusted-peer", `"${req.from}" cannot call in the name of "${msg1.from}"`);
    // As a gateway does: the suites are matched before the application is asked, and a refusal says
    // only "not found" or "rejected". A rekey of an SA we answered is not asked again.
    if (msg1.to !== this.opts.self.name) return { body: xm.refusalBody("not-found") };
    if (!matchSettings(suiteCandidates(msg1.suites), suiteCandidates(this.opts.suites))) return { body: xm.refusalBody("no-common-suite") };
    if (msg1.replaces) {
      const old = this.sessions.get(msg1.replaces);
      if (!old || old.role !== 1 || old.state !== "up" || old.peer !== msg1.from || old.app !== msg1.app || old.peerGateway !== req.from) return { body: xm.refusalBody("not-found") };
    } else if (!this.onRequest?.(msg1.from, msg1.app)) return { body: xm.refusalBody("rejected") };
    const r = new Responder(this.deps, msg1, { ...this.opts.self, suites: this.opts.suites });
    const terms = { lifetime: Math.min(offered.lifetime, this.terms.lifetime), limit: Math.min(offered.limit, this.terms.limit) };
    const key = Buffer.from(msg1.sessionId).toString("hex");
    this.responders.set(key, { r, terms, instance: req.fromInstance });
    // The responder refuses a late msg3 by itself; this only keeps the table from growing.
    setTimeout(() => {
      if (this.responders.get(key)?.r === r) this.responders.delete(key);
    }, 60_000).unref();
    return { body: xm.acceptBody(encodeMsg2(r.msg2), terms) };
  }

  private async onMsg3(req: InterlinkRequest): Promise<{ body: unknown }> {
    const msg3 = decodeMsg3(xm.readFinish(req.body));
    const key = Buffer.from(msg3.sessionId).toString("hex");
    const x = this.responders.get(key);
    if (!x || splitDeviceName(x.r.msg1.from)?.domain !== req.from) throw new ExchangeError("unexpected", "message 3 for no exchange waiting for it");
    const { msg4, result } = await x.r.onMsg3(msg3);
    this.responders.delete(key);
    const old = result.replaces ? this.sessions.get(result.replaces) : undefined;
    if (old && old.state === "up") {
      old.moved(x.instance);
      this.install(old, result, x.terms);
    } else {
      const s = new PeerSession(this, 1, result.peer, req.from, result.app, result.suite, this.generation(result, x.terms), { peer: result.peerCert, peerGateway: result.peerGatewayCert });
      s.peerInstance = x.instance;
      this.adopt(s);
      s.whenUp(this.confirmTimeoutMs).then(() => this.onSession?.(s), () => undefined);
    }
    return { body: xm.finishedBody(encodeMsg4(msg4)) };
  }
}

/** The peer's own Ed25519 identity key in its data directory (mode 0600), made on first start. */
function loadOrCreateIdentity(dataDir: string) {
  const file = join(dataDir, IDENTITY_FILE);
  if (!existsSync(file)) {
    const pair = generateEd25519();
    // On the disk before anything is signed with it; one another process made meanwhile wins.
    if (createFileDurably(file, Buffer.from(pair.seed).toString("hex") + "\n", 0o600)) return pair;
  }
  const seed = parseHexKey(readFileSync(file, "utf8"));
  if (!seed) throw new Error(`${file} is not a 32-byte hex Ed25519 seed`);
  return ed25519FromSeed(seed);
}
