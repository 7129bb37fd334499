// One instance among several of a domain (docs/SCALING.md, "Instances of a domain"): N gateway
// processes share the domain's PostgreSQL registry and talk over the MQTT bus (bus.ts).
//
// A handset links to any instance. Each SA has a home, the instance that set it up (its caller's),
// which runs its timers, rekeys and end; its row in live_sessions names its parties and its home
// (live-table.ts). Anything about a device that is linked elsewhere goes over the bus:
// - the home's messages to a device go to the device's instance (deliver), which sends them;
// - a device's session messages about an SA homed elsewhere go to the home (fromDevice);
// - SA frames go straight from the sender's instance to the receiver's (frame), found from the row:
//   the home is not on the data path, so frames keep flowing while an SA changes home. Instances
//   carry the frames byte for byte; they cannot read them (the SA's keys are the devices').
// When an instance is gone (its last-will) or stopped, one other takes its SAs over; their devices
// rejoin any instance within the grace period and their SAs, which each device kept, carry on. An SA
// with a device of another domain carries on too: its row holds what the taker needs to run it, and
// the other domain's gateway is told where it runs now (kp.x.moved; gateway/crossgw/cross-gateway.ts).
// The domain's group keys are kept at one instance (GroupSharing; gateway/sessions/groups.ts): their
// rows in live_sessions route members' messages and frames to it as an SA's route goes to its home.

import { ROLE_GROUP } from "../../firmware/proto/keys.ts";
import { randomBytes } from "node:crypto";
import type { InnerMessage, SaData, SaInstall } from "../../firmware/proto/messages.ts";
import { CloseReason, decodeMessage, Msg } from "../../firmware/proto/messages.ts";
import * as cbor from "../encoding/cbor.ts";
import type { LinkServer } from "../link/server.ts";
import type { Logger } from "../log/logger.ts";
import { spiText } from "../log/protocol-names.ts";
import type { Store } from "../registry/store.ts";
import type { SessionBroker } from "../sessions/session-broker.ts";
import type { GroupSharing } from "../sessions/groups.ts";
import type { LiveSession, SessionSharing } from "../sessions/shared.ts";
import type { BusMessage } from "./bus-messages.ts";
import { busKeyPurpose, InstanceBus } from "./bus.ts";
import { isGroupKeyRow, LiveTable } from "./live-table.ts";

/** How often an instance looks for SAs whose home is gone unnoticed (it died while no other ran), ms. */
export const ORPHAN_SWEEP_MS = 30_000;
/** How long an answer route or a "no such SA" stays known, ms. */
const ROUTE_MS = 60_000;
const UNKNOWN_SPI_MS = 2_000;
const MAX_ROUTES = 100_000;
/** SPIs an instance keeps claimed ahead of need (LiveTable.reserve), and below how many it claims
 *  more, in one statement: a burst larger than that waits for its claims, as without a reserve. */
export const SPI_RESERVE = 32;
const SPI_RESERVE_LOW = 16;
/** After a failed reservation, how long until the next try (a setup meanwhile claims its own SPI). */
const SPI_RESERVE_RETRY_MS = 5_000;

export interface InstancesOptions {
  domain: string;
  instance: string;
  /** The broker the bus runs over (the gateway's monitoring broker). */
  url: string;
  store: Store;
  log: Logger;
  now: () => number;
  /** How long a device that lost its link may take to come back (SessionSettings.graceMs). */
  graceMs: number;
}

/** The gateway's own handling of what a device sends (gateway.ts), and of its SAs across domains. */
export interface OwnHandling {
  deviceMessage(dev: string, m: InnerMessage): void | Promise<void>;
  deviceFrame(dev: string, m: SaData, payload: Uint8Array): void;
  /** Runs on SAs across domains taken over from a gone instance; returns those it cannot run (they end). */
  adoptAcross(rows: LiveSession[]): LiveSession[];
  /** Forgets every SA across domains not in `spis` (another instance runs it now). */
  keepOnlyAcross(spis: Set<number>): void;
  /** A device registered at another instance (its groups' keeper takes it in; other domains' groups
   *  watching it from here hear it is up). */
  memberRegistered(dev: string): void | Promise<void>;
  /** An instance came or went, or this one is back on the bus after being cut off (`rejoined`): which
   *  one keeps the domain's groups may have changed, or another kept them meanwhile. */
  keeperChanged(rejoined?: boolean): void;
}

/** What an instance knows of an SA homed elsewhere: enough to route its messages and frames. A group
 *  key's has no initiator and the group's name as responder (isGroupKeyRow). */
interface Route {
  home: string;
  initiator: string;
  responder: string;
  up: boolean;
}

/** The SA frame in an outer payload, or undefined. */
function saDataIn(payload: Uint8Array): SaData | undefined {
  try {
    const m = decodeMessage(cbor.decode(payload));
    return !(m instanceof Error) && m.t === Msg.SaData ? m : undefined;
  } catch {
    return undefined;
  }
}

/** An SaInstall held for a callee linked here, from the home that asked (installOnAccept). */
interface Held {
  home: string;
  dev: string;
  m: SaInstall;
  until: number;
}

/** A device name with a domain is another domain's (this domain's own devices are stored bare). */
const acrossDomains = (r: LiveSession): boolean => r.initiator.includes("@") || r.responder.includes("@");

export class Instances implements SessionSharing, GroupSharing {
  readonly instance: string;
  private readonly table: LiveTable;
  /** Devices linked at other instances: device -> instance. */
  private readonly elsewhere = new Map<string, string>();
  private readonly routes = new Map<number, Route>();
  private readonly answerRoutes = new Map<string, { home: string; until: number }>();
  /** SaInstalls held for callees linked here until they answer (installOnAccept), by device/rid. */
  private readonly held = new Map<string, Held>();
  private readonly unknownSpis = new Map<number, number>();
  private readonly closesWaiting = new Map<string, { spi: number; until: number }[]>();
  private bus!: InstanceBus;
  private own!: OwnHandling;
  private links!: LinkServer;
  private sessions!: SessionBroker;
  private sweep: NodeJS.Timeout | undefined;
  /** Writes to the live tables under way: a stop waits for them before the store closes. */
  private readonly writing = new Set<Promise<unknown>>();
  /** SPIs claimed ahead (takeReserved); `reserveRun` counts the times it was emptied, so that a claim
   *  under way across one does not add SPIs whose rows may have gone. */
  private reserved: number[] = [];
  private reserving = false;
  private reserveRun = 0;
  private reserveAfter = 0;
  private closed = false;
  /** Bus events that came before ready(); undefined from then on. */
  private early: (() => void)[] | undefined = [];
  /** `installsGiven`: SaInstalls held here for a callee and given to it as it accepted (installOnAccept). */
  readonly stats = { delivered: 0, framesOut: 0, framesIn: 0, forwarded: 0, dropped: 0, takenOver: 0, installsGiven: 0 };

  private constructor(private readonly o: InstancesOptions) {
    this.instance = o.instance;
    this.table = new LiveTable(o.store, o.instance);
  }

  /** Opens the bus; attach() and then ready() must follow before any device links. */
  static async start(o: InstancesOptions): Promise<Instances> {
    const me = new Instances(o);
    // Links this instance had in an earlier run are gone with it.
    await me.table.forgetLinksOf(o.instance);
    for (const [dev, at] of await me.table.links()) if (at !== o.instance) me.elsewhere.set(dev, at);
    me.bus = await InstanceBus.connect({
      url: o.url, domain: o.domain, instance: o.instance, key: await o.store.derivedKey(busKeyPurpose(o.domain)), log: o.log,
      // What arrives before ready() (a dead instance's retained last-will, at once) waits for it.
      onMessage: (m) => me.whenReady(() => me.onBus(m)),
      onPresence: (inst, online) =>
        me.whenReady(() => {
          if (online) o.log.info("instance-online", { instance: inst });
          else void me.instanceGone(inst);
          me.own.keeperChanged();
        }),
      onReconnect: () => me.whenReady(() => void me.resync()),
    });
    return me;
  }

  /** The link server and the broker, which need this as much as it needs them, and the gateway's own
   *  handling of a device's message or SA frame (its groups, sessions across gateways and broker),
   *  for those sent here by the instance where the device is linked. */
  attach(links: LinkServer, sessions: SessionBroker, own: OwnHandling): void {
    this.links = links;
    this.sessions = sessions;
    this.own = own;
  }

  /** Everything of the gateway is up (sessions across domains too, which take SAs over): what the bus
   *  said meanwhile is handled, then the SAs an earlier run of this instance ran and every SA whose
   *  home is gone unnoticed are taken over. */
  ready(): void {
    const early = this.early;
    this.early = undefined;
    for (const fn of early ?? []) fn();
    // The earlier run's reservations go with its unconfirmed SAs; the reserve is claimed after that.
    void this.takeOver(this.instance).then(() => this.topUpReserve());
    this.own.keeperChanged();
    this.sweep = setInterval(() => void this.sweepOrphans(), ORPHAN_SWEEP_MS);
    this.sweep.unref();
  }

  /** Runs fn now if ready, else at ready(). */
  private whenReady(fn: () => void): void {
    if (this.early) this.early.push(fn);
    else fn();
  }

  get others(): string[] {
    return this.bus.others;
  }

  // ---- a device anywhere in the domain ------------------------------------------------------------

  isLinked(dev: string): boolean {
    return this.links.links.has(dev) || this.elsewhere.has(dev);
  }

  send(dev: string, m: InnerMessage): boolean {
    if (this.links.sendTo(dev, m)) return true;
    const at = this.elsewhere.get(dev);
    if (at === undefined) return false;
    this.bus.send(at, { k: "deliver", dev, m });
    return true;
  }

  relay(dev: string, payload: Uint8Array): boolean {
    if (this.links.relayTo(dev, payload)) return true;
    const at = this.elsewhere.get(dev);
    if (at === undefined) return false;
    this.stats.framesOut++;
    this.bus.send(at, { k: "frame", dev, payload });
    return true;
  }

  // ---- SessionSharing: the broker's rows ----------------------------------------------------------

  claim(s: LiveSession): Promise<boolean> {
    return this.table.claim(s);
  }

  /** How many SPIs are claimed ahead now. */
  get spisInReserve(): number {
    return this.reserved.length;
  }

  takeReserved(terms: Omit<LiveSession, "spi">, usable: (spi: number) => boolean): number | undefined {
    let spi: number | undefined;
    while ((spi = this.reserved.pop()) !== undefined && !usable(spi)) this.ended(spi);
    this.topUpReserve();
    if (spi === undefined) return undefined;
    const taken = spi;
    // The SA's terms are written behind the setup, on the same connection as its later writes (up, end),
    // so before them; frames cannot be relayed to it before it is up, which comes later still.
    this.track(
      this.table.assign({ spi: taken, ...terms }).then(
        (mine) => mine || this.registryError("terms", taken, new Error("the reservation was taken over while this instance seemed gone")),
        (e: unknown) => this.registryError("terms", taken, e),
      ),
    );
    return taken;
  }

  /** Claims SPIs ahead while the reserve is low (one claim at a time, none after a failure for a while). */
  private topUpReserve(): void {
    if (this.closed || this.reserving || this.reserved.length >= SPI_RESERVE_LOW || Date.now() < this.reserveAfter) return;
    this.reserving = true;
    const run = this.reserveRun;
    const spis = Array.from({ length: SPI_RESERVE - this.reserved.length }, () => randomBytes(4).readUInt32BE(0)).filter((x) => x !== 0);
    const claiming = this.table.reserve(spis, this.o.now() + 86_400).then(
      (got) => {
        if (run === this.reserveRun && !this.closed) this.reserved.push(...got);
        else if (!this.closed) for (const spi of got) this.ended(spi); // claimed for a reserve since forgotten (close() releases them all)
      },
      (e: unknown) => {
        this.reserveAfter = Date.now() + SPI_RESERVE_RETRY_MS;
        this.o.log.error("registry-error", { reason: `SPIs not claimed ahead (each setup claims its own meanwhile): ${(e as Error).message}` });
      },
    ).finally(() => (this.reserving = false));
    this.track(claiming);
  }

  /** Forgets the reserve: after the bus was cut, another instance may have taken this one's rows over. */
  private emptyReserve(): void {
    this.reserved = [];
    this.reserveRun++;
  }

  up(spi: number): void {
    this.track(this.table.markUp(spi).catch((e: unknown) => this.registryError("up", spi, e)));
  }

  ended(spi: number): void {
    this.track(this.table.remove(spi).catch((e: unknown) => this.registryError("ended", spi, e)));
  }

  stillHome(spi: number): Promise<boolean> {
    return this.table.stillHome(spi);
  }

  peerMoved(spi: number, peerInstance: string): void {
    this.track(this.table.peerMoved(spi, peerInstance).catch((e: unknown) => this.registryError("peer moved", spi, e)));
  }

  othersOnline(): boolean {
    return !this.closed && this.bus.others.length > 0;
  }

  // ---- GroupSharing: the domain's group keys, kept at one instance ----------------------------------

  /** The online instance with the smallest name keeps the domain's group keys. Every instance sees the
   *  same ones online (their presence is retained on the bus), so they agree once the bus has settled. */
  keeping(): boolean {
    return !this.closed && this.bus.others.every((o) => this.instance < o);
  }

  claimGroupKey(spi: number, group: string, app: string, suite: number, expiresAt: number): Promise<boolean> {
    return this.table.claim({ spi, initiator: "", responder: group, app, suite, expiresAt, up: true, home: this.instance });
  }

  groupKeys(): Promise<Map<string, number>> {
    return this.table.groupKeys();
  }

  keptElsewhere(): Promise<boolean> {
    return this.table.groupKeysHomedElsewhere(this.o.domain);
  }

  replacedElsewhere(group: string, keep: number[]): void {
    this.track(this.table.forgetGroupKeys(group, keep).catch((e: unknown) => this.o.log.error("registry-error", { group, reason: `replaced group keys not forgotten: ${(e as Error).message}` })));
  }

  /** A device registered here: the instance keeping the groups hears of it. */
  registered(dev: string): void {
    this.bus.send("", { k: "registered", dev });
  }

  installOnAccept(callee: string, m: SaInstall): void {
    const at = this.links.links.has(callee) ? undefined : this.elsewhere.get(callee);
    if (at !== undefined) this.bus.send(at, { k: "installOnAccept", dev: callee, m });
  }

  // ---- events of this instance's links and devices -------------------------------------------------

  /** A device's link here came up or went: the database and the other instances are told. */
  linkChanged(dev: string, up: boolean): void {
    if (up) this.elsewhere.delete(dev);
    // A new link is a new join: what was held for the device's old one is of no use.
    this.dropHeld((h) => h.dev === dev);
    // After the JoinAccept the link server writes right behind this call: the device takes link
    // messages only once it has that.
    if (up) queueMicrotask(() => this.sendWaitingCloses(dev));
    const write = up ? this.table.linked(dev, this.o.now()) : this.table.unlinked(dev);
    this.track(write.catch((e: unknown) => this.o.log.error("registry-error", { device: dev, reason: `live link not recorded: ${(e as Error).message}` })));
    this.bus.send("", { k: up ? "linked" : "unlinked", dev });
  }

  /** Every SA of the device ends at every other instance too (its own are ended by the caller). */
  endAllElsewhere(dev: string, reason: CloseReason, why: string, disconnect: boolean): void {
    this.bus.send("", { k: "endAll", dev, reason, why, disconnect });
  }

  /** A session message from a device linked here about an SA (or a request) homed at another
   *  instance: sent there. True when taken; false leaves it to this instance's broker. */
  handleInner(dev: string, m: InnerMessage): boolean {
    switch (m.t) {
      case Msg.Answer: {
        if (this.sessions.hasPending(dev, m.rid)) return false;
        const key = `${dev}/${m.rid}`;
        const route = this.answerRoutes.get(key);
        if (!route) return false;
        this.answerRoutes.delete(key);
        const held = this.held.get(key);
        this.held.delete(key);
        if (held && held.home === route.home && m.accept) {
          // The home learns first, then the callee gets its keys: its confirmation follows the answer.
          this.bus.send(route.home, { k: "accepted", dev, rid: m.rid, spi: held.m.spi });
          this.giveHeld(dev, held);
          return true;
        }
        held?.m.seed.fill(0);
        this.forward(route.home, dev, m);
        return true;
      }
      case Msg.SaConfirm:
      case Msg.Rekey:
        return this.toHome(dev, m.spi, m);
      case Msg.Bye:
        // A reboot ("I hold no SAs"): every instance ends the device's SAs it runs; this one's broker too.
        if (m.spi === 0) {
          this.endAllElsewhere(dev, CloseReason.PeerGone, "the device restarted and holds no SAs", false);
          return false;
        }
        return this.toHome(dev, m.spi, m);
      default:
        return false;
    }
  }

  /** An SA frame from a device linked here whose SA this instance does not run: relayed to the other
   *  party wherever it is linked, from the SA's row. Always taken (a frame nobody knows is dropped here). */
  relayFrame(dev: string, m: SaData, payload: Uint8Array): true {
    const route = this.routes.get(m.spi);
    if (route) this.relayBy(route, dev, m.spi, payload);
    else void this.lookUp(m.spi).then((r) => (r ? this.relayBy(r, dev, m.spi, payload) : this.drop(dev, m.spi, "SA frame for an unknown SPI")));
    return true;
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.sweep) clearInterval(this.sweep);
    this.dropHeld(() => true);
    this.emptyReserve();
    // The links' last rows (unlinked, as the links closed) before the store closes; the reservations
    // after any claim under way.
    await Promise.all(this.writing);
    await this.table.releaseReserved().catch((e: unknown) => this.o.log.error("registry-error", { reason: `SPIs claimed ahead not given back: ${(e as Error).message}` }));
    await this.bus?.close();
  }

  private track(p: Promise<unknown>): void {
    this.writing.add(p);
    void p.finally(() => this.writing.delete(p));
  }

  /** After the bus was cut: what was broadcast meanwhile is read again from the registry (where each
   *  device is linked), this instance's own links are recorded and announced again, and an SA that
   *  another instance took over while this one seemed gone is forgotten here (the registry says whose
   *  it is). */
  private async resync(): Promise<void> {
    if (this.closed) return;
    this.emptyReserve();
    try {
      // The forgotten reserve's rows, if no other instance took them over meanwhile.
      await this.table.releaseReserved();
      const links = await this.table.links();
      this.elsewhere.clear();
      for (const [dev, at] of links) if (at !== this.instance && !this.links.links.has(dev)) this.elsewhere.set(dev, at);
      this.routes.clear();
      // The others may have thought this instance gone and forgotten its links: they are said again.
      for (const dev of this.links.links.keys()) this.linkChanged(dev, true);
      const homedHere = new Set(await this.table.spisHomedHere());
      const kept = this.sessions.keepOnly(homedHere);
      this.own.keepOnlyAcross(homedHere);
      this.o.log.info("instance-resynced", { linkedElsewhere: this.elsewhere.size, sessionsKept: kept });
      this.own.keeperChanged(true);
    } catch (e) {
      this.o.log.error("registry-error", { reason: `live links and SAs not read again after the bus reconnected: ${(e as Error).message}` });
    }
  }

  // ---- inside --------------------------------------------------------------------------------------

  private relayBy(r: Route, dev: string, spi: number, payload: Uint8Array): void {
    if (isGroupKeyRow(r)) {
      // A group key: the instance keeping it checks the sender and relays to every other member.
      if (r.home === this.instance) return this.drop(dev, spi, "group frame for a key this instance does not keep");
      this.stats.framesOut++;
      this.bus.send(r.home, { k: "deviceFrame", dev, payload });
      return;
    }
    const peer = r.initiator === dev ? r.responder : r.responder === dev ? r.initiator : undefined;
    if (!peer) return this.drop(dev, spi, "SA frame from a device that is not party to the SPI");
    if (!r.up) return this.drop(dev, spi, "SA frame before both devices confirmed");
    if (peer.includes("@")) {
      // A device of another domain: only the SA's home has the interlink state to send it on.
      if (r.home === this.instance) return this.drop(dev, spi, "SA frame for an SA across domains this instance no longer runs");
      this.stats.framesOut++;
      this.bus.send(r.home, { k: "deviceFrame", dev, payload });
      return;
    }
    if (!this.relay(peer, payload)) this.drop(dev, spi, "the other party is not linked anywhere");
  }

  private drop(dev: string, spi: number, reason: string): void {
    this.stats.dropped++;
    this.o.log.warn("frame dropped", { device: dev, spi: spiText(spi), reason });
  }

  private toHome(dev: string, spi: number, m: InnerMessage): boolean {
    if (this.sessions.sessions.has(spi)) return false;
    const route = this.routes.get(spi);
    if (route) {
      this.forward(route.home, dev, m);
      return true;
    }
    void this.lookUp(spi).then((r) => {
      if (r && r.home !== this.instance) this.forward(r.home, dev, m);
      // Unknown, or ours without being in memory: the broker says why it drops it.
      else void Promise.resolve(this.own.deviceMessage(dev, m)).catch(() => undefined);
    });
    return true;
  }

  /** An SaInstall held for a callee here, given as it accepted. */
  private giveHeld(dev: string, held: Held): void {
    this.learn(held.home, dev, held.m);
    if (this.links.sendTo(dev, held.m)) {
      this.stats.delivered++;
      this.stats.installsGiven++;
    } else this.dropDelivery(held.home, dev, held.m.t);
    held.m.seed.fill(0); // sealed into the link frame already
  }

  /** Wipes and forgets the held SaInstalls that `which` picks. */
  private dropHeld(which: (h: Held) => boolean): void {
    for (const [k, h] of this.held) {
      if (!which(h)) continue;
      h.m.seed.fill(0);
      this.held.delete(k);
    }
  }

  /** An SaInstall to hold until the callee answers the Incoming that came before it. Dropped when the
   *  callee is not linked here, or has answered already (its answer went to the home as it is, and the
   *  home sends the SaInstall itself), or when the request is not answered while its route lasts. */
  private hold(home: string, dev: string, m: SaInstall): void {
    const key = `${dev}/${m.rid}`;
    const route = this.answerRoutes.get(key);
    const now = Date.now();
    this.dropHeld((h) => h.until < now);
    if (!this.links.links.has(dev) || !route || route.home !== home) {
      m.seed.fill(0);
      return;
    }
    this.held.get(key)?.m.seed.fill(0); // the one it replaces
    this.held.set(key, { home, dev, m, until: route.until });
  }

  private forward(home: string, dev: string, m: InnerMessage): void {
    this.stats.forwarded++;
    this.bus.send(home, { k: "fromDevice", dev, m });
  }

  /** The SA's route from the database (cached); undefined when the domain has no such SA. */
  private async lookUp(spi: number): Promise<Route | undefined> {
    const until = this.unknownSpis.get(spi);
    if (until !== undefined && until > Date.now()) return undefined;
    try {
      const row = await this.table.session(spi);
      if (!row) {
        // A device sending frames for an SPI no one knows must not cost a query each.
        if (this.unknownSpis.size > 10_000) this.unknownSpis.clear();
        this.unknownSpis.set(spi, Date.now() + UNKNOWN_SPI_MS);
        return undefined;
      }
      const r: Route = { home: row.home, initiator: row.initiator, responder: row.responder, up: row.up };
      if (row.up && this.bus.isOnline(row.home)) this.remember(spi, r);
      return r;
    } catch (e) {
      this.registryError("lookup", spi, e);
      return undefined;
    }
  }

  private onBus(m: BusMessage): void {
    const b = m.body;
    switch (b.k) {
      case "deliver":
        if (!this.links.links.has(b.dev)) return this.dropDelivery(m.from, b.dev, b.m.t);
        this.learn(m.from, b.dev, b.m);
        this.stats.delivered++;
        this.links.sendTo(b.dev, b.m);
        return;
      case "frame":
        this.stats.framesIn++;
        if (!this.links.relayTo(b.dev, b.payload)) this.dropDelivery(m.from, b.dev, Msg.SaData);
        return;
      case "deviceFrame": {
        this.stats.framesIn++;
        const m = saDataIn(b.payload);
        if (!m) return this.o.log.warn("instance-bus-refused", { device: b.dev, reason: "a device frame that is not an SA frame" });
        this.own.deviceFrame(b.dev, m, b.payload);
        return;
      }
      case "installOnAccept":
        this.hold(m.from, b.dev, b.m);
        return;
      case "accepted":
        void Promise.resolve(this.sessions.acceptedWithInstall(b.dev, b.rid, b.spi)).catch((e: unknown) => this.o.log.error("registry-error", { device: b.dev, reason: (e as Error).message }));
        return;
      case "fromDevice":
        if (b.m.t !== Msg.Answer && b.m.t !== Msg.SaConfirm && b.m.t !== Msg.Rekey && b.m.t !== Msg.Bye) {
          this.o.log.warn("instance-bus-refused", { from: m.from, reason: `message type ${b.m.t} is not a session message for an SA's home` });
          return;
        }
        void Promise.resolve(this.own.deviceMessage(b.dev, b.m)).catch((e: unknown) => this.o.log.error("registry-error", { device: b.dev, reason: (e as Error).message }));
        return;
      case "registered":
        void Promise.resolve(this.own.memberRegistered(b.dev)).catch((e: unknown) => this.o.log.error("registry-error", { device: b.dev, reason: (e as Error).message }));
        return;
      case "linked":
        if (!this.links.links.has(b.dev)) this.elsewhere.set(b.dev, m.from);
        this.sessions.linkUp(b.dev);
        this.sendWaitingCloses(b.dev);
        return;
      case "unlinked":
        if (this.elsewhere.get(b.dev) !== m.from) return; // it has linked somewhere since
        this.elsewhere.delete(b.dev);
        this.sessions.linkDown(b.dev);
        return;
      case "endAll":
        this.sessions.endAll(b.dev, b.reason, b.why);
        if (b.disconnect) this.links.disconnect(b.dev, b.why);
        return;
      default:
        return;
    }
  }

  /** Routes are a cache: one whose SaClosed went to another instance is never removed here, so the
   *  cache is emptied when it grows past any live count (a miss costs one registry read). */
  private remember(spi: number, r: Route): void {
    if (this.routes.size >= MAX_ROUTES) this.routes.clear();
    this.routes.set(spi, r);
  }

  private dropDelivery(from: string, dev: string, type: number): void {
    this.stats.dropped++;
    this.o.log.info("instance-delivery-dropped", { device: dev, from, type, reason: "the device is no longer linked here" });
  }

  /** What a message from an SA's home to a device linked here tells about routing the device's answers. */
  private learn(home: string, dev: string, m: InnerMessage): void {
    const now = Date.now();
    if (m.t === Msg.Incoming) {
      for (const [k, r] of this.answerRoutes) if (r.until < now) this.answerRoutes.delete(k);
      this.answerRoutes.set(`${dev}/${m.rid}`, { home, until: now + ROUTE_MS });
    } else if (m.t === Msg.SaInstall) {
      this.unknownSpis.delete(m.spi);
      if (m.role >= ROLE_GROUP) this.remember(m.spi, { home, initiator: "", responder: m.peer, up: false });
      else this.remember(m.spi, { home, initiator: m.role === 0 ? dev : m.peer, responder: m.role === 0 ? m.peer : dev, up: false });
    } else if (m.t === Msg.Connected) {
      const r = this.routes.get(m.spi);
      if (r) r.up = true;
    } else if (m.t === Msg.SaClosed) {
      this.routes.delete(m.spi);
    }
  }

  /** An instance is gone: its devices' links with it, and one instance (whichever updates first) takes
   *  its SAs over. */
  private async instanceGone(gone: string): Promise<void> {
    if (this.closed || gone === this.instance) return;
    for (const [dev, at] of [...this.elsewhere]) {
      if (at !== gone) continue;
      this.elsewhere.delete(dev);
      this.sessions.linkDown(dev);
    }
    for (const [spi, r] of [...this.routes]) if (r.home === gone) this.routes.delete(spi);
    for (const [k, r] of [...this.answerRoutes]) if (r.home === gone) this.answerRoutes.delete(k);
    this.dropHeld((h) => h.home === gone);
    try {
      await this.table.forgetLinksOf(gone);
    } catch (e) {
      this.o.log.error("registry-error", { instance: gone, reason: `links of a gone instance not forgotten: ${(e as Error).message}` });
    }
    await this.takeOver(gone);
  }

  private async takeOver(from: string): Promise<void> {
    try {
      // A gone keeper's group keys stay in the table, whoever's they are now: the next keeper replaces
      // them. Another domain's group key was a route of the gone instance's to a device of ours: it
      // died with it (that group's home keys the device anew), so its row goes.
      const all = await this.table.takeOver(from);
      for (const r of all) if (isGroupKeyRow(r) && !r.responder.endsWith(`@${this.o.domain}`)) this.ended(r.spi);
      const rows = all.filter((r) => !isGroupKeyRow(r));
      if (this.closed) return;
      // An SA with a device of another domain runs on here with that domain's process, which is told
      // (kp.x.moved); one whose row lacks what that needs ends (its device is told).
      const inside = rows.filter((r) => !acrossDomains(r));
      const unrunnable = this.own.adoptAcross(rows.filter(acrossDomains));
      if (rows.length || from !== this.instance) this.o.log.warn("instance-gone", { instance: from, takenOver: rows.length - unrunnable.length, endedAcrossDomains: unrunnable.length });
      this.stats.takenOver += rows.length - unrunnable.length;
      this.sessions.adopt(inside);
      for (const r of unrunnable) {
        this.closeWhenLinked(r.initiator.includes("@") ? r.responder : r.initiator, r.spi);
        this.ended(r.spi);
      }
    } catch (e) {
      this.o.log.error("registry-error", { instance: from, reason: `SAs of a gone instance not taken over: ${(e as Error).message}` });
    }
  }

  /** Tells a device that an SA ended, now if it is linked anywhere in the domain, else when it links
   *  again (its instance died with the SA: it is rejoining), within the grace period. */
  private closeWhenLinked(dev: string, spi: number): void {
    const close = () => this.send(dev, { t: Msg.SaClosed, spi, reason: CloseReason.PeerGone });
    if (close()) return;
    const waiting = this.closesWaiting.get(dev) ?? [];
    waiting.push({ spi, until: Date.now() + this.o.graceMs });
    this.closesWaiting.set(dev, waiting);
  }

  /** The device linked (here or elsewhere): the SaClosed it missed go out. */
  private sendWaitingCloses(dev: string): void {
    const waiting = this.closesWaiting.get(dev);
    if (!waiting) return;
    this.closesWaiting.delete(dev);
    const now = Date.now();
    for (const w of waiting) if (w.until >= now) this.send(dev, { t: Msg.SaClosed, spi: w.spi, reason: CloseReason.PeerGone });
  }

  private async sweepOrphans(): Promise<void> {
    if (this.closed) return;
    const now = Date.now();
    for (const [dev, waiting] of [...this.closesWaiting]) if (waiting.every((w) => w.until < now)) this.closesWaiting.delete(dev);
    this.dropHeld((h) => h.until < now); // a callee that never answered: its seed does not wait for the next hold
    try {
      for (const home of await this.table.orphanHomes([this.instance, ...this.bus.others])) await this.takeOver(home);
    } catch (e) {
      this.o.log.error("registry-error", { reason: `orphaned SAs not looked for: ${(e as Error).message}` });
    }
  }

  private registryError(what: string, spi: number, e: unknown): void {
    this.o.log.error("registry-error", { spi: spiText(spi), reason: `live SA ${what}: ${(e as Error).message}` });
  }
}
