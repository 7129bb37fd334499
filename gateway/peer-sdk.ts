// The capable-peer SDK (design.md §2 "capable peer"; seed 004 E1/E2: peer terminal 6 with its own
// IKE): a Node program with its own key pair and certificate runs the key exchange of
// gateway/exchange.ts itself against a handset's gateway, and then seals and opens the SA frames
// itself, so no gateway ever holds its keys.
//
// To the fleet it looks like a gateway with one device: it speaks the interlink under a gateway
// certificate for its own domain (from the fleet CA), and presents a device certificate for its name
// signed by that gateway key. It calls (connect) and can be called (onRequest), with the messages
// gateway/crossgw.ts speaks: kp.x.1 and kp.x.3 for the exchange, kp.x.confirmed, kp.x.sa, kp.x.bye.
// Its own key confirmation is immediate: it installed the keys itself.
//
// Not here yet: rekey, and SA lifetime and message limits on this side (the handset enforces its own).

import { toHex } from "../firmware/bytes.ts";
import type { SymCrypto } from "../firmware/crypto/types.ts";
import { DIR_DOWN, DIR_UP, deriveSaKeys } from "../firmware/proto/keys.ts";
import { openFrame, sealFrame, wipeLink, type Link } from "../firmware/proto/link.ts";
import { CloseReason, Msg } from "../firmware/proto/messages.ts";
import * as cbor from "./cbor.ts";
import { nodeCrypto } from "./crypto.ts";
import { XGW_BYE, XGW_CONFIRMED, XGW_MSG1, XGW_MSG3, XGW_SA } from "./crossgw.ts";
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
  type ExchangeResult,
  type LocalParty,
} from "./exchange.ts";
import { InterlinkError, type Interlink, type InterlinkRequest } from "./interlink.ts";
import { matchSettings, suiteCandidates } from "./matching.ts";
import type { CertificateChecker } from "./verifier.ts";

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
}

/** One SA the peer holds itself. */
export class PeerSession {
  /** Application data from the other end, in order of arrival. */
  onMessage?: (data: Uint8Array) => void;
  onClose?: (reason: CloseReason) => void;
  state: "confirming" | "up" | "closed" = "confirming";
  private remoteConfirmed = false;
  private upWaiters: { resolve: () => void; reject: (e: Error) => void; timer: NodeJS.Timeout } | undefined;

  constructor(
    private readonly owner: CapablePeer,
    readonly spi: number,
    readonly peer: string,
    readonly peerGateway: string,
    readonly app: string,
    readonly suite: number,
    private readonly link: Link,
  ) {}

  /** Sends data to the other end (sealed here; the gateways relay what they cannot read). */
  async send(data: Uint8Array): Promise<void> {
    if (this.state !== "up") throw new Error(`SA ${this.spi} is ${this.state}`);
    const frame = sealFrame(this.owner.crypto, cbor, this.link, this.spi, data);
    await this.owner.interlink.request(this.peerGateway, XGW_SA, new Map<string, unknown>([["spi", this.spi], ["frame", frame]]));
  }

  /** Ends the SA here and at the other end. */
  async close(): Promise<void> {
    if (this.state === "closed") return;
    this.end(CloseReason.Bye);
    await this.owner.interlink.request(this.peerGateway, XGW_BYE, new Map<string, unknown>([["spi", this.spi], ["reason", CloseReason.Bye]]));
  }

  /** @internal an SA frame payload from the other gateway. */
  receive(payload: Uint8Array): void {
    if (this.state !== "up") throw new InterlinkError("malformed", "SA frame before both ends confirmed");
    let w: unknown;
    try {
      w = cbor.decode(payload);
    } catch {
      throw new InterlinkError("malformed", "SA frame is not CBOR");
    }
    if (!Array.isArray(w) || w[0] !== Msg.SaData || w[1] !== this.spi || typeof w[2] !== "number" || !(w[3] instanceof Uint8Array)) {
      throw new InterlinkError("malformed", "not an SA frame for this SPI");
    }
    const plain = openFrame(this.owner.crypto, cbor, this.link, this.spi, w[2], w[3]);
    if (typeof plain === "number") throw new InterlinkError("malformed", `SA frame dropped (reason ${plain})`);
    this.onMessage?.(plain);
  }

  /** @internal the other end's device confirmed its keys. */
  confirmed(): void {
    this.remoteConfirmed = true;
    if (this.state !== "confirming") return;
    this.state = "up";
    if (this.upWaiters) {
      clearTimeout(this.upWaiters.timer);
      this.upWaiters.resolve();
    }
  }

  /** @internal resolves once both ends hold the keys. */
  whenUp(ms: number): Promise<void> {
    if (this.state === "up") return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.upWaiters = { resolve, reject, timer: setTimeout(() => { this.end(CloseReason.PeerGone); reject(new Error("the other end did not confirm its keys in time")); }, ms) };
      if (this.remoteConfirmed) this.confirmed();
    });
  }

  /** @internal */
  end(reason: CloseReason): void {
    if (this.state === "closed") return;
    this.state = "closed";
    wipeLink(this.link);
    if (this.upWaiters) clearTimeout(this.upWaiters.timer);
    this.owner.forget(this.spi);
    this.onClose?.(reason);
  }
}

export class CapablePeer {
  /** Decides an incoming call (default: refuse), as a handset's onRequest does. */
  onRequest?: (from: string, app: string) => boolean;
  /** An incoming call that is now up. */
  onSession?: (s: PeerSession) => void;
  readonly crypto: SymCrypto;
  readonly interlink: Interlink;
  private readonly sessions = new Map<number, PeerSession>();
  private readonly responders = new Map<string, Responder>();
  private readonly earlyConfirmed = new Set<number>();
  private readonly seen = new SeenSessions();
  private readonly now: () => number;

  constructor(private readonly opts: CapablePeerOptions) {
    this.crypto = opts.crypto ?? nodeCrypto();
    this.interlink = opts.interlink;
    this.now = opts.now ?? (() => Math.floor(Date.now() / 1000));
    const domain = opts.self.name.slice(opts.self.name.lastIndexOf("@") + 1);
    if (domain !== opts.interlink.gatewayId) throw new TypeError(`"${opts.self.name}" is not in the interlink's domain "${opts.interlink.gatewayId}"`);
    const wrap = (f: (req: InterlinkRequest) => Promise<{ body: unknown }> | { body: unknown }) => async (req: InterlinkRequest) => {
      try {
        return await f(req);
      } catch (e) {
        throw e instanceof ExchangeError ? new InterlinkError("malformed", `exchange refused (${e.code}): ${e.message}`) : e;
      }
    };
    opts.interlink.handle(XGW_MSG1, wrap((req) => this.onMsg1(req)));
    opts.interlink.handle(XGW_MSG3, wrap((req) => this.onMsg3(req)));
    opts.interlink.handle(XGW_CONFIRMED, (req) => this.withSession(req, (s) => s.confirmed(), (spi) => this.earlyConfirmed.add(spi)));
    opts.interlink.handle(XGW_SA, (req) => this.withSession(req, (s, m) => s.receive(m.get("frame") as Uint8Array)));
    opts.interlink.handle(XGW_BYE, (req) => this.withSession(req, (s, m) => s.end(m.get("reason") === CloseReason.Bye ? CloseReason.Bye : CloseReason.PeerGone), () => undefined));
  }

  private get deps() {
    return { checker: this.opts.checker, now: this.now, seen: this.seen };
  }

  /** Calls `peer` ("name@domain") for app; resolves with the SA once both ends hold the keys. */
  async connect(peer: string, app: string): Promise<PeerSession> {
    const domain = peer.slice(peer.lastIndexOf("@") + 1);
    const init = new Initiator(this.deps, this.opts.self, peer, app, this.opts.suites);
    const sessionId = init.msg1.sessionId;
    try {
      const a2 = await this.interlink.request(domain, XGW_MSG1, encodeMsg1(init.msg1), { sessionId, timeoutMs: 20_000 });
      if (a2 instanceof Map) throw new Error(`${peer} refused: ${String(a2.get("refused"))}`);
      if (!(a2 instanceof Uint8Array)) throw new Error("message 2 must be bytes");
      const msg3 = await init.onMsg2(decodeMsg2(a2));
      const a4 = await this.interlink.request(domain, XGW_MSG3, encodeMsg3(msg3), { sessionId });
      if (!(a4 instanceof Uint8Array)) throw new Error("message 4 must be bytes");
      const s = this.install(init.onMsg4(decodeMsg4(a4)), domain);
      await s.whenUp(this.opts.confirmTimeoutMs ?? 10_000);
      return s;
    } catch (e) {
      init.abort("failed");
      throw e;
    }
  }

  /** Closes every SA (telling the other ends). The interlink stays the caller's to close. */
  async close(): Promise<void> {
    await Promise.allSettled([...this.sessions.values()].map((s) => s.close()));
    for (const r of this.responders.values()) r.abort("closed");
    this.responders.clear();
  }

  /** @internal */
  forget(spi: number): void {
    this.sessions.delete(spi);
  }

  /** Our own keys, straight from the exchange result; we confirm at once. */
  private install(r: ExchangeResult, peerGateway: string): PeerSession {
    const role = r.role === "initiator" ? 0 : 1;
    const keys = deriveSaKeys(this.crypto, cbor, r.seed, r.spi, r.suite, role);
    r.seed.fill(0);
    keys.confirm.fill(0);
    const link: Link = { keys_: { suite: keys.suite, up: keys.up, down: keys.down }, txDir_: role === 0 ? DIR_UP : DIR_DOWN, txSeq_: 0, rx_: { top: 0, bits: 0 } };
    const s = new PeerSession(this, r.spi, r.peer, peerGateway, r.app, r.suite, link);
    if (this.sessions.has(r.spi)) throw new Error("the derived SPI is already in use here");
    this.sessions.set(r.spi, s);
    if (this.earlyConfirmed.delete(r.spi)) s.confirmed();
    void this.interlink.request(peerGateway, XGW_CONFIRMED, new Map<string, unknown>([["spi", r.spi]])).catch(() => s.end(CloseReason.PeerGone));
    return s;
  }

  private withSession(req: InterlinkRequest, f: (s: PeerSession, m: Map<unknown, unknown>) => void, unknown?: (spi: number) => void): { body: unknown } {
    const m = req.body;
    const spi = m instanceof Map ? m.get("spi") : undefined;
    if (!(m instanceof Map) || typeof spi !== "number") throw new InterlinkError("malformed", "body must be a map with an spi");
    const s = this.sessions.get(spi);
    if (s && s.peerGateway !== req.from) throw new InterlinkError("malformed", `"${req.from}" is not party to this SPI`);
    if (!s) {
      if (!unknown) throw new InterlinkError("malformed", "no SA with this SPI here");
      unknown(spi);
    } else f(s, m);
    return { body: 0 };
  }

  private async onMsg1(req: InterlinkRequest): Promise<{ body: unknown }> {
    if (!(req.body instanceof Uint8Array)) throw new InterlinkError("malformed", "message 1 must be bytes");
    const msg1 = decodeMsg1(req.body);
    if (msg1.from.slice(msg1.from.lastIndexOf("@") + 1) !== req.from) throw new InterlinkError("untrusted-peer", `"${req.from}" cannot call in the name of "${msg1.from}"`);
    // As a gateway does: the suites are matched before the application is asked, and a refusal says
    // only "not found" or "rejected".
    if (msg1.to !== this.opts.self.name) return { body: new Map([["refused", "not-found"]]) };
    if (!matchSettings(suiteCandidates(msg1.suites), suiteCandidates(this.opts.suites))) return { body: new Map([["refused", "no-common-suite"]]) };
    if (!this.onRequest?.(msg1.from, msg1.app)) return { body: new Map([["refused", "rejected"]]) };
    const r = new Responder(this.deps, msg1, { ...this.opts.self, suites: this.opts.suites });
    const key = toHex(msg1.sessionId);
    this.responders.set(key, r);
    // The responder refuses a late msg3 by itself; this only keeps the table from growing.
    setTimeout(() => {
      if (this.responders.get(key) === r) this.responders.delete(key);
    }, 60_000).unref();
    return { body: encodeMsg2(r.msg2) };
  }

  private async onMsg3(req: InterlinkRequest): Promise<{ body: unknown }> {
    if (!(req.body instanceof Uint8Array)) throw new InterlinkError("malformed", "message 3 must be bytes");
    const msg3 = decodeMsg3(req.body);
    const key = toHex(msg3.sessionId);
    const r = this.responders.get(key);
    if (!r || r.msg1.from.slice(r.msg1.from.lastIndexOf("@") + 1) !== req.from) throw new ExchangeError("unexpected", "message 3 for no exchange waiting for it");
    const { msg4, result } = await r.onMsg3(msg3);
    this.responders.delete(key);
    const s = this.install(result, req.from);
    s.whenUp(this.opts.confirmTimeoutMs ?? 10_000).then(() => this.onSession?.(s), () => undefined);
    return { body: encodeMsg4(msg4) };
  }
}
