// Group SAs at a group's home gateway (issue 14, scope 3; docs/PROTOCOL.md §5d).
//
// A group ("name@<this gateway's domain>") has one key at a time, shared by the members that are up
// (registered and linked, here or behind another gateway). The keeper:
// - keys the group when two or more members are up: one fresh seed, a fresh SPI, SaInstall to each
//   member with its sender index (role ROLE_GROUP + i), and Connected to all once every member has
//   confirmed the key (as a pairwise SA, seed 003/004);
// - replaces the key whenever the set of members that are up changes (join, leave, revocation, a
//   member's reboot or lost link), when a member asks (Rekey), and before the lifetime or the message
//   limit runs out. A member that left gets SaClosed for the key it held at once, and no frame is
//   relayed to or from it from then on: it never receives the next key. A member that joins gets only
//   the new key: it never had the old one;
// - relays each group frame, byte for byte, to every other member of its key (it cannot read them),
//   after checking that the sender is a member and uses its own sender index;
// - applies seed 003's matching to the group: the suite is one that every member registered.
//
// Members behind other gateways are reached through RemoteMembers (gateway/crossgw/groups-remote.ts
// implements it over the interlink); everything else here is one gateway's.
//
// A domain running several instances (gateway/instances/) keeps its group keys at one of them
// (GroupSharing): the keeper claims each key's SPI in the domain's table, reaches members wherever
// they are linked, and is sent what members linked elsewhere send under a group SPI. The others keep
// none. A new keeper (the old one stopped, died, or a new instance took the part) replaces each
// group's key that the old one left in the table, as a rekey does (SaInstall and Connected with
// `replaces`). Members in other domains are reached as from one gateway: their gateways answer the
// keeper's instance (gateway/crossgw/groups-remote.ts), whether they run as one process or several.

import { ctEqual } from "../../firmware/bytes.ts";
import type { SymCrypto } from "../../firmware/crypto/types.ts";
import { REKEY_AT } from "../../firmware/handset.ts";
import { ROLE_GROUP, saConfirmTag, type Codec } from "../../firmware/proto/keys.ts";
import { CloseReason, Msg, type InnerMessage, type SaData } from "../../firmware/proto/messages.ts";
import { localDeviceId } from "../fleet/fleet.ts";
import type { Logger } from "../log/logger.ts";
import { CLOSE_REASON_NAMES, spiText } from "../log/protocol-names.ts";
import { GroupError, KeyGroups, type KeyGroup } from "../registry/key-groups.ts";
import type { RegistrationRow, Store } from "../registry/store.ts";
import { overlap, suiteCandidates, type Candidate } from "./matching.ts";
import type { SessionSettings } from "./session-broker.ts";

/** How often the keeper looks for membership changes made by another process (`keyproxy group`). */
export const GROUP_POLL_MS = 2000;
/** With several instances, how long one that became the groups' keeper waits before it keys them. */
export const WAKE_MS = 1000;

/** Members of this gateway's groups that are devices of other gateways. */
export interface RemoteMembers {
  /** Whether the member is up at its gateway (registered and linked), as last reported; `group`
   *  (its full name and application) is what to ask the member's gateway about when nothing is known. */
  active(member: string, group?: { name: string; app: string }): boolean;
  /** The [suite, priority] pairs it registered, as its gateway reported them. */
  suites(member: string): number[][];
  /** Delivers a message to the member over its gateway; false when it cannot now. */
  send(member: string, m: InnerMessage): boolean;
  /** Delivers a group frame to the member over its gateway; false when it cannot now. */
  relay(member: string, payload: Uint8Array): boolean;
  // The other part of the same object: this gateway's devices in other domains' groups.
  /** A message from our device about a group SA of another domain: true when taken. */
  fromDevice?(deviceId: string, m: InnerMessage): boolean;
  /** A frame from our device under a group SPI of another domain: true when taken. */
  frameFromDevice?(deviceId: string, m: SaData, payload: Uint8Array): boolean;
  registered?(deviceId: string): void;
  deviceGone?(deviceId: string, reason: CloseReason): void;
  holdsSpi?(spi: number): boolean;
  close?(): void;
}

export interface GroupDeps {
  store: Store;
  log: Logger;
  crypto: SymCrypto;
  cbor: Codec;
  now: () => number;
  send: (deviceId: string, m: InnerMessage) => boolean;
  relay: (deviceId: string, payload: Uint8Array) => boolean;
  isLinked: (deviceId: string) => boolean;
  settings: SessionSettings;
  gatewayId: string;
  /** SPIs held elsewhere at this gateway (the session broker's, sessions across gateways). */
  spiTaken: (spi: number) => boolean;
  pollMs?: number;
  /** Set when this gateway is one of several instances of its domain. */
  sharing?: GroupSharing;
}

/** The domain's instances, as a keeper among them sees them (gateway/instances/instances.ts). */
export interface GroupSharing {
  /** Whether this instance keeps the domain's group keys now (one does at a time). */
  keeping(): boolean;
  /** Claims a new group key's SPI for the domain, kept here: false when the domain holds it already. */
  claimGroupKey(spi: number, group: string, app: string, suite: number, expiresAt: number): Promise<boolean>;
  /** The key ended, or its overlap after a replacement did: its SPI is free again. */
  ended(spi: number): void;
  /** The newest key of each group (full name -> SPI) in the domain's table, from earlier keepers too. */
  groupKeys(): Promise<Map<string, number>>;
  /** Whether the table holds a group key another instance claimed (it kept the groups for a while). */
  keptElsewhere(): Promise<boolean>;
  /** The group's keys that an earlier keeper left in the table are replaced now: every one but `keep`
   *  (this keeper's) is forgotten. */
  replacedElsewhere(group: string, keep: number[]): void;
}

/** One group key as the home gateway sees it. */
interface GroupKey {
  spi: number;
  group: string;
  app: string;
  suite: number;
  /** Held only until every member confirmed; then wiped. */
  seed: Uint8Array | null;
  /** Member -> its sender index under this key. */
  members: Map<string, number>;
  confirmed: Set<string>;
  state: "confirming" | "up" | "retiring";
  /** The SPI this key replaces, or 0. */
  replaces: number;
  /** Frames relayed under this key: the gateway sees every one, so it rekeys before the limit. */
  relayed: number;
  /** A member was taken out of this key: it holds it, so the others must not use it longer. */
  lostMember: boolean;
  timer: NodeJS.Timeout | null;
  rekeyTimer: NodeJS.Timeout | null;
}

interface GroupState {
  /** The key in use, and the one being installed to replace it. */
  current?: GroupKey;
  next?: GroupKey;
  /** Members left out until they register again: they failed to confirm a key, or closed it. */
  stale: Set<string>;
}

const HI = 4294967296;

export class GroupKeeper {
  readonly store: KeyGroups;
  /** Every key that routes frames, by SPI. */
  readonly keys = new Map<number, GroupKey>();
  private groups = new Map<string, GroupState>();
  /** Devices of this gateway whose confirmation did not verify, with the firmware they registered
   *  then (firmware without --groups does so every time): they are not offered a key again until
   *  they register with other firmware. */
  private refusedFirmware = new Map<string, string | null>();
  /** The membership version last acted on (undefined until read at start). */
  private version: number | undefined;
  private poll: NodeJS.Timeout;
  private polling = false;
  private closed = false;
  /** Each group's reconciliation under way: one at a time per group, in the order asked. */
  private reconciling = new Map<string, Promise<void>>();
  /** The firmware each member of this gateway registered with, as last read (refusedFirmware). */
  private firmwareSeen = new Map<string, string | null>();
  /** With several instances: whether this one keeps the groups now (wake, sleep), and the keys an
   *  earlier keeper left, by group full name, which the first key here replaces. */
  private awake = false;
  private inherited = new Map<string, number>();
  private waking: NodeJS.Timeout | undefined;
  readonly stats = { keyed: 0, rekeyed: 0, unkeyable: 0, relayed: 0, relayDropped: 0 };
  /** Members behind other gateways (set when the gateway joins its fleet); without it they are
   *  never up. */
  remote?: RemoteMembers;

  constructor(private d: GroupDeps) {
    this.store = new KeyGroups(d.store);
    void this.store.version().then((v) => (this.version ??= v), (e) => this.failed("", e));
    this.poll = setInterval(() => void this.checkStore(), d.pollMs ?? GROUP_POLL_MS);
    this.poll.unref();
  }

  /** "name@<this domain>": the name members see (SaInstall.peer). */
  fullName(group: string): string {
    return `${group}@${this.d.gatewayId}`;
  }

  // ---- operator API (keyproxy group, Gateway.groups) --------------------------------------------

  async create(name: string, app: string): Promise<void> {
    await this.store.create(name, app, this.d.now());
    await this.afterChange(name, `group ${name} created for ${app}`);
  }

  async delete(name: string): Promise<boolean> {
    const gone = await this.store.delete(name);
    if (gone) await this.afterChange(name, `group ${name} deleted`);
    return gone;
  }

  async add(name: string, member: string): Promise<boolean> {
    const added = await this.store.add(name, this.memberName(member), this.d.now());
    if (added) await this.afterChange(name, `${member} added`);
    return added;
  }

  async remove(name: string, member: string): Promise<boolean> {
    const removed = await this.store.remove(name, this.memberName(member));
    if (removed) await this.afterChange(name, `${member} removed`);
    return removed;
  }

  list(): Promise<KeyGroup[]> {
    return this.store.list();
  }

  /** Resolves when every reconciliation asked for so far is done (tests, and the operator API). */
  async settled(): Promise<void> {
    while (this.reconciling.size) await Promise.all(this.reconciling.values());
  }

  /** The SPI of the group's key in use (0: none), for tests and monitoring. */
  currentSpi(name: string): number {
    return this.groups.get(name)?.current?.spi ?? 0;
  }

  /** A member as stored: a device of this gateway by its bare id, any other as name@domain. */
  private memberName(member: string): string {
    return localDeviceId(member, this.d.gatewayId) ?? member;
  }

  private async afterChange(name: string, what: string): Promise<void> {
    this.version = await this.store.version();
    this.d.log.info("group-changed", { group: this.fullName(name), reason: what });
    this.reconcile(name);
    await this.reconciling.get(name);
  }

  /** A change another process made (keyproxy group, another instance): every group is looked at again. */
  private async checkStore(): Promise<void> {
    if (this.polling || this.version === undefined) return;
    this.polling = true;
    try {
      const v = await this.store.version();
      if (v === this.version || this.closed) return;
      this.version = v;
      const names = new Set([...(await this.store.list()).map((g) => g.name), ...this.groups.keys()]);
      for (const name of names) this.reconcile(name);
    } catch (e) {
      this.failed("", e);
    } finally {
      this.polling = false;
    }
  }

  /** The registry could not be read: said, and tried again at the next change or poll. */
  private failed(group: string, e: unknown): void {
    if (!this.closed) this.d.log.error("group-registry-error", { group: group ? this.fullName(group) : undefined, reason: (e as Error).message });
  }

  // ---- events from the gateway ------------------------------------------------------------------

  /** Session messages about a group key: true when taken. */
  handle(deviceId: string, m: InnerMessage): boolean {
    if (m.t !== Msg.SaConfirm && m.t !== Msg.Rekey && !(m.t === Msg.Bye && m.spi !== 0)) return false;
    const key = this.keys.get(m.spi);
    if (!key) return this.remote?.fromDevice?.(deviceId, m) ?? false;
    this.fromMember(deviceId, m, key);
    return true;
  }

  /** A message about key from a member (here, or forwarded by the member's gateway). */
  fromMember(member: string, m: InnerMessage, key = this.keys.get((m as { spi: number }).spi)): void {
    const d = this.d;
    if (!key || !key.members.has(member)) {
      d.log.warn("group-message-dropped", { device: member, type: m.t, reason: "not a member of this group key" });
      return;
    }
    if (m.t === Msg.SaConfirm) this.confirm(member, key, m.tag);
    else if (m.t === Msg.Rekey) {
      if (key.state === "up" && this.groups.get(key.group)?.current === key) this.reconcile(key.group, `${member} asked for a new key`, key);
    } else if (m.t === Msg.Bye) {
      // The member closed the group's SA: it is left out (and so cannot read what follows) until it
      // registers again.
      this.groups.get(key.group)?.stale.add(member);
      this.drop(key, member, CloseReason.Bye);
      this.reconcile(key.group);
    }
  }

  /** A device of this gateway registered (or renewed): its groups take it in if it is not yet. */
  async registered(deviceId: string): Promise<void> {
    this.remote?.registered?.(deviceId);
    await this.memberRegistered(deviceId);
  }

  /** A device of this domain registered here or, with several instances, at another one. */
  async memberRegistered(deviceId: string): Promise<void> {
    // An instance that keeps no groups reads nothing for them: every registration reaches the keeper.
    if (this.d.sharing && !this.awake) return;
    const firmware = (await this.d.store.getRegistration(deviceId))?.firmware ?? null;
    if (this.refusedFirmware.has(deviceId) && this.refusedFirmware.get(deviceId) === firmware) return;
    this.refusedFirmware.delete(deviceId);
    for (const g of await this.store.list()) {
      if (!g.members.includes(deviceId)) continue;
      this.groups.get(g.name)?.stale.delete(deviceId);
      this.reconcile(g.name);
    }
  }

  /** Every session of a device of this gateway ended (reboot, lost link, deregistration,
   *  revocation): it is out of every group key now, and a revoked one out of every group. */
  deviceGone(deviceId: string, reason: CloseReason, why: string): void {
    this.remote?.deviceGone?.(deviceId, reason);
    this.memberGone(deviceId, reason, why);
  }

  /** What a member's gateway reported of it changed (up, or its suites): its groups are looked at. */
  memberChanged(member: string): void {
    this.store.list().then((groups) => {
      for (const g of groups) if (g.members.includes(member)) this.reconcile(g.name);
    }, (e) => this.failed("", e));
  }

  /** A member (here or elsewhere) is gone; revoked: its membership goes too (fleet-wide revocation). */
  memberGone(member: string, reason: CloseReason, why: string): void {
    // Out of every key at once; its membership goes (revoked) before the groups are keyed again.
    for (const key of [...this.keys.values()]) if (key.members.has(member)) this.drop(key, member, reason);
    const membership = reason === CloseReason.Revoked ? this.leaveEverywhere(member, why) : Promise.resolve();
    void membership.then(() => {
      for (const name of [...this.groups.keys()]) this.reconcile(name);
    }, (e) => this.failed("", e));
  }

  private async leaveEverywhere(member: string, why: string): Promise<void> {
    const left = await this.store.removeEverywhere(member);
    if (!left.length) return;
    this.version = await this.store.version();
    this.d.log.warn("group-member-revoked", { device: member, groups: left.map((g) => this.fullName(g)).join(","), reason: why });
  }

  /** A group frame from a member: relayed to every other member of its key. True when the SPI is a
   *  group key's (relayed or dropped here). */
  relay(deviceId: string, m: SaData, payload: Uint8Array): boolean {
    const key = this.keys.get(m.spi);
    if (!key) return this.remote?.frameFromDevice?.(deviceId, m, payload) ?? false;
    this.relayFrom(deviceId, key, m.seq, payload);
    return true;
  }

  /** The relay itself (also for frames a member's gateway forwarded). */
  relayFrom(member: string, key: GroupKey, seq: number, payload: Uint8Array): void {
    const d = this.d;
    const index = key.members.get(member);
    // The sender index travels in the frame: a member may only send with its own, so no member can
    // make its frames look like another's to the others.
    const reason = index === undefined ? "group frame from a device that is not a member of the key" : key.state === "confirming" ? "group frame before every member confirmed" : Math.floor(seq / HI) !== index ? "group frame with another member's sender index" : "";
    if (reason) {
      this.stats.relayDropped++;
      d.log.warn("frame dropped", { device: member, spi: spiText(key.spi), reason });
      return;
    }
    key.relayed++;
    for (const other of key.members.keys()) {
      if (other === member) continue;
      if (this.relayTo(other, payload)) this.stats.relayed++;
      else this.stats.relayDropped++;
    }
    if (key.state === "up" && key.relayed === Math.floor(d.settings.limit * REKEY_AT) && this.groups.get(key.group)?.current === key) {
      this.reconcile(key.group, `${REKEY_AT * 100}% of the key's message limit is used`, key);
    }
  }

  /** The key with this SPI, for frames and messages a member's gateway forwards. */
  keyOf(spi: number): GroupKey | undefined {
    return this.keys.get(spi);
  }

  holdsSpi(spi: number): boolean {
    return this.keys.has(spi) || (this.remote?.holdsSpi?.(spi) ?? false);
  }

  /** With several instances: whether this one keeps the domain's groups may have changed (an instance
   *  came or went). One that starts keeping waits WAKE_MS first, so that an instance just started
   *  hears which others are online before it takes the part; one that stops forgets its keys at once,
   *  without ending them at the members: the new keeper's keys replace them. */
  keeperCheck(): void {
    const sharing = this.d.sharing;
    if (!sharing || this.closed) return;
    if (!sharing.keeping()) {
      if (this.waking) clearTimeout(this.waking);
      this.waking = undefined;
      if (this.awake) this.sleep();
      return;
    }
    if (this.awake || this.waking) return;
    this.waking = setTimeout(() => {
      this.waking = undefined;
      if (!this.closed && sharing.keeping()) void this.wake();
    }, WAKE_MS);
    this.waking.unref();
  }

  /** This instance is back on the bus after being cut off: while it was away another instance may have
   *  kept the groups (the others saw it gone), so a keeper starts over from the domain's table, as a
   *  new keeper does, replacing the newest key of each group. A short cut, in which no other instance
   *  claimed a group key, changes nothing. */
  rejoined(): void {
    if (!this.awake) return this.keeperCheck();
    this.d.sharing!.keptElsewhere().then((other) => {
      if (!other || !this.awake) return;
      this.sleep();
      this.keeperCheck();
    }, (e: unknown) => this.failed("", e));
  }

  private async wake(): Promise<void> {
    try {
      this.inherited = await this.d.sharing!.groupKeys();
    } catch (e) {
      this.failed("", e);
      this.inherited = new Map();
    }
    if (this.closed || !this.d.sharing!.keeping()) return;
    this.awake = true;
    this.d.log.info("group-keeper", { keeping: true, inherited: this.inherited.size });
    for (const g of await this.store.list().catch((e: unknown) => (this.failed("", e), []))) this.reconcile(g.name);
  }

  private sleep(): void {
    this.awake = false;
    this.d.log.info("group-keeper", { keeping: false, keys: this.keys.size });
    this.forgetKeys();
  }

  /** Every key goes from memory, its seed wiped; its members are not told. */
  private forgetKeys(): void {
    for (const k of this.keys.values()) {
      stopTimers(k);
      k.seed?.fill(0);
      k.seed = null;
    }
    this.keys.clear();
    this.groups.clear();
  }

  close(): void {
    this.closed = true;
    if (this.waking) clearTimeout(this.waking);
    clearInterval(this.poll);
    this.remote?.close?.();
    this.forgetKeys();
  }

  // ---- keying -----------------------------------------------------------------------------------

  /** Brings the group's key in line with its membership: members removed or gone are dropped at once;
   *  when the members that are up differ from the key's (or `rekey` says why a new key is due), a new
   *  key is installed for them. */
  /** rekey: why a new key is due, and for which key (`worn`): by the time this reconciliation runs,
   *  that key may have been replaced already (another reason asked first), and then none is due. */
  private reconcile(name: string, rekey?: string, worn?: GroupKey): void {
    if (this.d.sharing && !this.awake) return;
    const before = this.reconciling.get(name) ?? Promise.resolve();
    const next = before.then(() => this.reconcileNow(name, rekey, worn)).catch((e) => this.failed(name, e));
    this.reconciling.set(name, next);
    void next.then(() => {
      if (this.reconciling.get(name) === next) this.reconciling.delete(name);
    });
  }

  /** The registrations of the group's members of this gateway, read once for one reconciliation. */
  private async localRegistrations(g: KeyGroup | undefined): Promise<Map<string, RegistrationRow>> {
    const regs = new Map<string, RegistrationRow>();
    for (const m of g?.members ?? []) {
      if (m.includes("@")) continue;
      const r = await this.d.store.getRegistration(m);
      if (r) regs.set(m, r);
      this.firmwareSeen.set(m, r?.firmware ?? null);
    }
    return regs;
  }

  private async reconcileNow(name: string, rekey?: string, worn?: GroupKey): Promise<void> {
    const d = this.d;
    const g = await this.store.get(name);
    const regs = await this.localRegistrations(g);
    if (this.closed) return;
    let st = this.groups.get(name);
    // Judged now, after the registry answered: the worn key may have been replaced meanwhile.
    if (worn && st?.current !== worn) rekey = undefined;
    if (!g && !st) return;
    if (!g) {
      for (const key of [...this.keys.values()]) if (key.group === name) this.end(key, CloseReason.Removed, "the group was deleted");
      this.groups.delete(name);
      return;
    }
    if (!st) this.groups.set(name, (st = { stale: new Set() }));
    for (const key of [...this.keys.values()]) {
      if (key.group !== name) continue;
      for (const member of [...key.members.keys()]) if (!g.members.includes(member)) this.drop(key, member, CloseReason.Removed);
    }
    const up = g.members.filter((m) => !st.stale.has(m) && this.isUp(m, g, regs));
    const keyed = st.next ?? st.current;
    // A key a member was taken out of is replaced even if the rest are the same: that member holds it.
    if (!rekey && keyed && !keyed.lostMember && sameMembers(keyed, up)) return;
    // A rekey asked for while a replacement for these members is being installed: that one will do
    // (the members, the gateway's count and its timer may all ask at once).
    if (rekey && st.next && !st.next.lostMember && sameMembers(st.next, up)) return;
    if (!rekey && !keyed && up.length < 2) return;
    if (st.next) this.end(st.next, CloseReason.Replaced, "a newer key replaces it before it was confirmed");
    if (up.length < 2) {
      if (st.current) this.end(st.current, CloseReason.PeerGone, "fewer than two members are up");
      return;
    }
    const suite = this.suiteFor(up, regs);
    if (suite === undefined) {
      this.stats.unkeyable++;
      d.log.error("group-no-common-suite", { group: this.fullName(name), members: up.join(","), reason: "no cipher suite every member registered: the group cannot be keyed with these members" });
      return;
    }
    if (rekey) d.log.info("group-rekey-due", { group: this.fullName(name), reason: rekey });
    const spi = await this.freshSpi(g, suite);
    // The claim waited for the database: this instance may have stopped keeping meanwhile.
    if (spi === undefined || this.closed || (d.sharing && !this.awake)) {
      if (spi !== undefined) d.sharing?.ended(spi);
      return;
    }
    this.install(g, st, up, suite, spi);
  }

  private isUp(member: string, g: KeyGroup, regs: Map<string, RegistrationRow>): boolean {
    const d = this.d;
    if (member.includes("@")) return this.remote?.active(member, { name: this.fullName(g.name), app: g.app }) ?? false;
    const r = regs.get(member);
    return !!r && r.expiresAt > d.now() && d.isLinked(member);
  }

  private suitesOf(member: string, regs: Map<string, RegistrationRow>): number[][] {
    if (member.includes("@")) return this.remote?.suites(member) ?? [];
    return regs.get(member)?.suites ?? [];
  }

  /** Seed 003's matching over every member: a suite of the first member that each of the others
   *  registered a match for, the one whose worst priority among the members is best (ties: the first
   *  member's order). */
  private suiteFor(members: string[], regs: Map<string, RegistrationRow>): number | undefined {
    const mode = this.d.settings.matching.mode;
    const all = members.map((m) => suiteCandidates(this.suitesOf(m, regs)));
    let best: { id: number; worst: number } | undefined;
    for (const c of all[0]) {
      let worst = c.priority ?? Infinity;
      const everyone = all.slice(1).every((cands) => {
        const match = cands.filter((x: Candidate) => overlap(c.setting, x.setting, mode)).sort((a, b) => (a.priority ?? Infinity) - (b.priority ?? Infinity))[0];
        if (match) worst = Math.max(worst, match.priority ?? Infinity);
        return !!match;
      });
      if (everyone && (!best || worst < best.worst)) best = { id: c.id as number, worst };
    }
    return best?.id;
  }

  /** An SPI no SA of this gateway holds; with several instances, claimed for the domain (undefined:
   *  the claim failed, said in the log). */
  private async freshSpi(g: KeyGroup, suite: number): Promise<number | undefined> {
    for (let tries = 0; ; tries++) {
      const b = this.d.crypto.random(4);
      const spi = ((b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]) >>> 0;
      if (spi === 0 || this.holdsSpi(spi) || this.d.spiTaken(spi)) continue;
      if (!this.d.sharing) return spi;
      try {
        if (await this.d.sharing.claimGroupKey(spi, this.fullName(g.name), g.app, suite, this.d.now() + this.d.settings.lifetime)) return spi;
      } catch (e) {
        this.failed(g.name, e);
        return undefined;
      }
      // Taken in the domain: draw again (a handful of times at most, at any realistic load).
      if (tries >= 8) {
        this.failed(g.name, new Error("no free SPI for a new group key after 8 draws"));
        return undefined;
      }
    }
  }

  /** A fresh key for `members`, replacing the group's current one (if any) once all confirm. */
  private install(g: KeyGroup, st: GroupState, members: string[], suite: number, spi: number): void {
    const d = this.d;
    const key: GroupKey = {
      spi, group: g.name, app: g.app, suite, seed: d.crypto.random(32), members: new Map(members.map((m, i) => [m, i])),
      confirmed: new Set(), state: "confirming", replaces: st.current?.spi ?? this.inherited.get(this.fullName(g.name)) ?? 0, relayed: 0, lostMember: false, timer: null, rekeyTimer: null,
    };
    this.keys.set(key.spi, key);
    st.next = key;
    key.timer = setTimeout(() => this.confirmTimeout(key), d.settings.answerTimeoutMs);
    for (const [member, i] of key.members) {
      this.sendTo(member, {
        t: Msg.SaInstall, rid: 0, spi: key.spi, peer: this.fullName(g.name), app: g.app, suite, seed: key.seed as Uint8Array,
        role: ROLE_GROUP + i, lifetime: d.settings.lifetime, limit: d.settings.limit, replaces: key.replaces,
      });
    }
    d.log.info("group-keys-distributed", { group: this.fullName(g.name), spi: spiText(key.spi), suite, members: members.join(","), replaces: key.replaces ? spiText(key.replaces) : undefined });
  }

  private confirm(member: string, key: GroupKey, tag: Uint8Array): void {
    const d = this.d;
    const st = this.groups.get(key.group);
    if (key.state !== "confirming" || !key.seed || !st) {
      d.log.warn("group-confirm-dropped", { device: member, spi: spiText(key.spi), reason: "no group key awaiting this member's confirmation" });
      return;
    }
    const index = key.members.get(member) as number;
    if (!ctEqual(saConfirmTag(d.crypto, d.cbor, key.seed, key.spi, key.suite, ROLE_GROUP + index), tag)) {
      // It holds the seed but proved nothing: it is left out and the others get a key it never had.
      d.log.warn("group-confirm-dropped", { device: member, spi: spiText(key.spi), reason: "key confirmation does not verify (firmware built without --groups?)" });
      st.stale.add(member);
      if (!member.includes("@")) this.refusedFirmware.set(member, this.firmwareSeen.get(member) ?? null);
      this.reconcile(key.group);
      return;
    }
    key.confirmed.add(member);
    if (key.confirmed.size < key.members.size) return;
    key.seed.fill(0);
    key.seed = null;
    stopTimers(key);
    key.state = "up";
    key.timer = setTimeout(() => this.end(key, CloseReason.Expired, "lifetime over"), (d.settings.lifetime + 5) * 1000);
    key.rekeyTimer = setTimeout(() => {
      key.rekeyTimer = null;
      if (st.current === key && !st.next) this.reconcile(key.group, `${REKEY_AT * 100}% of the key's lifetime is over`, key);
    }, d.settings.lifetime * REKEY_AT * 1000);
    const old = st.current;
    st.current = key;
    st.next = undefined;
    for (const m of key.members.keys()) this.sendTo(m, { t: Msg.Connected, spi: key.spi, replaces: key.replaces });
    if (key.replaces) this.stats.rekeyed++;
    else this.stats.keyed++;
    const event = key.replaces ? "group-rekeyed" : "group-up";
    d.log.info(event, { group: this.fullName(key.group), spi: spiText(key.spi), members: [...key.members.keys()].join(","), replaces: key.replaces ? spiText(key.replaces) : undefined });
    d.store.auditBatched(d.now(), null, event, `group=${this.fullName(key.group)} spi=${spiText(key.spi)} members=${[...key.members.keys()].join(",")}`);
    if (old) this.retire(old, key);
    else if (this.inherited.delete(this.fullName(key.group))) {
      d.sharing?.replacedElsewhere(this.fullName(key.group), [...this.keys.values()].filter((k) => k.group === key.group).map((k) => k.spi));
    }
  }

  /** The replaced key routes frames in flight among the members that kept their place, for the
   *  overlap; any other member's SA closes now. */
  private retire(old: GroupKey, by: GroupKey): void {
    for (const m of [...old.members.keys()]) if (!by.members.has(m)) this.drop(old, m, CloseReason.Removed);
    old.state = "retiring";
    stopTimers(old);
    old.timer = setTimeout(() => {
      this.keys.delete(old.spi);
      this.d.sharing?.ended(old.spi);
    }, this.d.settings.overlapMs);
  }

  private confirmTimeout(key: GroupKey): void {
    const st = this.groups.get(key.group);
    if (!st || st.next !== key) return;
    const silent = [...key.members.keys()].filter((m) => !key.confirmed.has(m));
    this.d.log.warn("group-confirm-timeout", { group: this.fullName(key.group), spi: spiText(key.spi), devices: silent.join(","), reason: "members did not confirm the key in time; they are left out until they register again" });
    for (const m of silent) st.stale.add(m);
    this.reconcile(key.group);
  }

  /** Takes one member out of a key: its SA closes, and no frame goes to or from it under this key. */
  private drop(key: GroupKey, member: string, reason: CloseReason): void {
    if (!key.members.delete(member)) return;
    key.confirmed.delete(member);
    key.lostMember = true;
    this.sendTo(member, { t: Msg.SaClosed, spi: key.spi, reason });
    this.d.log.info("group-member-out", { group: this.fullName(key.group), device: member, spi: spiText(key.spi), reason: CLOSE_REASON_NAMES[reason] ?? String(reason) });
  }

  /** Ends a key at every member. */
  private end(key: GroupKey, reason: CloseReason, why: string): void {
    if (!this.keys.delete(key.spi)) return;
    this.d.sharing?.ended(key.spi);
    stopTimers(key);
    key.seed?.fill(0);
    key.seed = null;
    for (const m of key.members.keys()) this.sendTo(m, { t: Msg.SaClosed, spi: key.spi, reason });
    const st = this.groups.get(key.group);
    if (st?.current === key) st.current = undefined;
    if (st?.next === key) st.next = undefined;
    this.d.log.info("group-key-down", { group: this.fullName(key.group), spi: spiText(key.spi), reason: why });
  }

  private sendTo(member: string, m: InnerMessage): boolean {
    if (member.includes("@")) return this.remote?.send(member, m) ?? false;
    return this.d.send(member, m);
  }

  private relayTo(member: string, payload: Uint8Array): boolean {
    if (member.includes("@")) return this.remote?.relay(member, payload) ?? false;
    return this.d.relay(member, payload);
  }
}

function sameMembers(key: GroupKey, up: string[]): boolean {
  return key.members.size === up.length && up.every((m) => key.members.has(m));
}

function stopTimers(k: GroupKey): void {
  if (k.timer) clearTimeout(k.timer);
  if (k.rekeyTimer) clearTimeout(k.rekeyTimer);
  k.timer = k.rekeyTimer = null;
}

export { GroupError };
