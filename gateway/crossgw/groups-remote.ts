// Group SAs across gateways (issue 14, scope 3; docs/PROTOCOL.md §5d), over the interlink. One object
// plays both parts a gateway can have:
//
// - home of a group with members in other domains (RemoteMembers for its GroupKeeper): it asks each
//   such member's gateway whether the member is up and what it registered (kp.g.watch), hears of every
//   change (kp.g.status), sends the member its keys and notices (kp.g.to, encrypted to that gateway)
//   and the group's frames (kp.g.to), and takes the member's confirmations, rekey requests, byes and
//   frames (kp.g.from);
// - gateway of a member of another domain's group: it answers watches and reports its device's
//   registrations and departures to the homes watching it (a revocation says so: the home takes the
//   device out of the group, fleet-wide), hands the home's messages and frames to its device, and
//   forwards what its device sends under a group SPI to the group's home.
//
// A home that runs several instances keeps its groups at one of them (gateway/sessions/groups.ts): the
// member side answers it and sends it its device's messages, frames and status at the instance that
// watched or sent (the envelope's fromInstance), not at any instance of the home's domain. A member's
// gateway that runs several instances keeps the watch and the keys it hands on at the instance that
// answered the watch; the home sends it everything about that member (and watches anew when it stops
// answering), and every instance reports a registration it sees to the watches it holds. The device
// may be linked at any of them: its instance sends its group messages and frames to the one holding
// the key's route (gateway/instances/).
//
// A gateway speaks only for its own devices (a status or message about "x@d" is taken only from d),
// and installs only groups of the sending gateway's own domain, when its policy allows the group to
// reach the device for that application (keyproxy policy allow --from team@home --to dev --app chat).

import { CloseReason, Msg, decodeMessage, type InnerMessage, type SaData } from "../../firmware/proto/messages.ts";
import * as cbor from "../encoding/cbor.ts";
import { localDeviceId, splitDeviceName, type RevocationList } from "../fleet/fleet.ts";
import { InterlinkError, type Interlink, type InterlinkRequest } from "../fleet/interlink.ts";
import { spiText } from "../log/protocol-names.ts";
import type { GroupKeeper, RemoteMembers } from "../sessions/groups.ts";
import type { SessionHookContext } from "../sessions/hook.ts";
import * as gm from "./group-messages.ts";

/** Homes that may watch one device at once (each is a gateway with a group the device is in). */
const MAX_WATCHERS = 64;
/** After a watch that failed, how long before the member's gateway is asked again. */
const WATCH_RETRY_MS = 2000;
/** After a watch answered "not up", how long before it is asked again: a device that comes up is
 *  reported at once, but one whose gateway did not let the group reach it (yet) is not. */
const WATCH_RECHECK_MS = 30_000;

export class GroupLink implements RemoteMembers {
  /** Home side: what each remote member's gateway last reported, and, when that gateway runs several
   *  instances, the one that answered the watch: everything about the member goes there, since only
   *  it knows the watch and the keys it handed on. */
  private readonly status = new Map<string, gm.MemberStatus>();
  private readonly memberAt = new Map<string, string>();
  private readonly watching = new Set<string>();
  /** Member side: the homes watching each of our devices (home -> the instance that watched, if it
   *  runs several), and our devices' group SPIs (with the home's instance that keyed them). */
  private readonly watchers = new Map<string, Map<string, string | undefined>>();
  private readonly routes = new Map<number, { home: string; device: string; instance: string | undefined }>();
  private readonly retries = new Set<NodeJS.Timeout>();
  private closed = false;

  constructor(
    private readonly ctx: SessionHookContext,
    private readonly keeper: GroupKeeper,
    private readonly interlink: Interlink,
  ) {
    interlink.handle(gm.XGW_GROUP_WATCH, (req) => this.onWatch(req));
    interlink.handle(gm.XGW_GROUP_STATUS, (req) => this.onStatus(req));
    interlink.handle(gm.XGW_GROUP_TO, (req) => this.onTo(req));
    interlink.handle(gm.XGW_GROUP_FROM, (req) => this.onFrom(req));
  }

  close(): void {
    this.closed = true;
    for (const t of this.retries) clearTimeout(t);
    this.retries.clear();
  }

  // ---- home side: RemoteMembers ------------------------------------------------------------------

  /** What the member's gateway last said of it (undefined: nothing yet), for monitoring and tests. */
  reported(member: string): gm.MemberStatus | undefined {
    return this.status.get(member);
  }

  active(member: string, group?: { name: string; app: string }): boolean {
    const s = this.status.get(member);
    if (!s && group) this.watch(member, group);
    return s?.up ?? false;
  }

  suites(member: string): number[][] {
    return this.status.get(member)?.suites ?? [];
  }

  send(member: string, m: InnerMessage): boolean {
    return this.toMember(member, gm.messageBody(member, m), true, `message ${m.t}`);
  }

  relay(member: string, payload: Uint8Array): boolean {
    return this.toMember(member, gm.frameBody(member, payload), false, "frame");
  }

  private toMember(member: string, body: unknown, secret: boolean, what: string): boolean {
    const domain = splitDeviceName(member)?.domain;
    if (!domain || this.closed) return false;
    const at = this.memberAt.get(member);
    this.interlink.request(domain, gm.XGW_GROUP_TO, body, { secret, ...pin(at) }).catch((e: unknown) => {
      this.failed(member, what, e);
      if (at !== undefined && e instanceof InterlinkError && e.code === "timeout") this.instanceLost(member, at);
    });
    return true;
  }

  /** The member's gateway's instance that held its watch and keys did not answer (it died): the member
   *  is out of its keys, and is watched anew through any instance of its domain. */
  private instanceLost(member: string, at: string): void {
    if (this.memberAt.get(member) !== at) return;
    this.memberAt.delete(member);
    this.status.delete(member);
    this.watching.delete(member);
    this.keeper.memberGone(member, CloseReason.PeerGone, `its gateway's instance ${at} did not answer`);
  }

  /** A fleet revocation list: members of our groups in other domains that it names leave them. */
  revocationList(list: RevocationList): void {
    for (const name of list.devices) {
      if (splitDeviceName(name)?.domain === this.ctx.gatewayId) continue; // ours: revoked through revokeDevice
      this.status.set(name, { up: false, suites: [] });
      this.keeper.memberGone(name, CloseReason.Revoked, `${name} is on the fleet revocation list (serial ${list.serial})`);
    }
  }

  private watch(member: string, group: { name: string; app: string }): void {
    const domain = splitDeviceName(member)?.domain;
    if (!domain || this.watching.has(member) || this.closed) return;
    this.watching.add(member);
    this.interlink
      .requestTo(domain, gm.XGW_GROUP_WATCH, gm.watchBody(member, group.name, group.app), { secret: true })
      .then(({ body, instance }) => {
        const s = gm.readWatchAnswer(body);
        if (instance === undefined) this.memberAt.delete(member);
        else this.memberAt.set(member, instance);
        this.status.set(member, s);
        this.keeper.memberChanged(member);
        if (!s.up) this.watchAgain(member, WATCH_RECHECK_MS, true);
      })
      .catch((e: unknown) => {
        this.failed(member, "watch", e);
        // Asked again a little later: the member's gateway may not be up yet.
        this.watchAgain(member, WATCH_RETRY_MS, false);
      });
  }

  /** Forgets the watch (and, unless the member's gateway reported since, what it said) after ms, so
   *  that the next look at the member's groups asks again. */
  private watchAgain(member: string, ms: number, onlyIfStill: boolean): void {
    const said = this.status.get(member);
    const t = setTimeout(() => {
      this.retries.delete(t);
      if (this.closed) return;
      if (onlyIfStill && this.status.get(member) !== said) return; // a status arrived meanwhile
      this.watching.delete(member);
      this.status.delete(member);
      this.keeper.memberChanged(member);
    }, ms);
    t.unref();
    this.retries.add(t);
  }

  private failed(member: string, what: string, e: unknown): void {
    this.ctx.log.warn("group-remote-failed", { device: member, reason: `${what} to the member's gateway failed: ${e instanceof Error ? e.message : String(e)}` });
  }

  /** A message about `member` from gateway `from`: refused unless `from` is the member's own. */
  private ownMember(type: string, member: string, from: string): void {
    if (splitDeviceName(member)?.domain !== from) throw new InterlinkError("malformed", `${type}: ${from} may speak only for its own devices, not ${member}`);
  }

  private onStatus(req: InterlinkRequest): { body: unknown } {
    const s = gm.readStatus(req.body);
    this.ownMember(gm.XGW_GROUP_STATUS, s.member, req.from);
    this.status.set(s.member, { up: s.up && !s.revoked, suites: s.suites });
    if (s.revoked) this.keeper.memberGone(s.member, CloseReason.Revoked, `revoked at its gateway ${req.from}`);
    else if (!s.up) this.keeper.memberGone(s.member, CloseReason.PeerGone, `gone at its gateway ${req.from}`);
    else this.keeper.memberChanged(s.member);
    return { body: 0 };
  }

  private onFrom(req: InterlinkRequest): { body: unknown } {
    const c = gm.readCarried(gm.XGW_GROUP_FROM, req.body);
    this.ownMember(gm.XGW_GROUP_FROM, c.member, req.from);
    if (c.msg) {
      if (c.msg.t !== Msg.SaConfirm && c.msg.t !== Msg.Rekey && c.msg.t !== Msg.Bye) throw new InterlinkError("malformed", `${gm.XGW_GROUP_FROM}: message type ${c.msg.t} is not a member's`);
      this.keeper.fromMember(c.member, c.msg);
      return { body: 0 };
    }
    const f = saDataOf(c.frame as Uint8Array);
    const key = f && this.keeper.keyOf(f.spi);
    if (!f || !key) throw new InterlinkError("malformed", `${gm.XGW_GROUP_FROM}: not a frame of a group key here`);
    this.keeper.relayFrom(c.member, key, f.seq, c.frame as Uint8Array);
    return { body: 0 };
  }

  // ---- member side ------------------------------------------------------------------------------

  private async statusOf(deviceId: string): Promise<gm.MemberStatus> {
    const r = await this.ctx.store.getRegistration(deviceId);
    const up = !!r && r.expiresAt > this.ctx.now() && this.ctx.isLinked(deviceId);
    return { up, suites: r?.suites ?? [] };
  }

  /** A home asks about our device for one of its groups. Answered only where our policy lets that
   *  group reach the device for its application: any other gateway learns nothing (the answer an
   *  unknown device gets), as a refused call learns nothing. */
  private async onWatch(req: InterlinkRequest): Promise<{ body: unknown }> {
    const w = gm.readWatch(req.body);
    const id = localDeviceId(w.member, this.ctx.gatewayId);
    const allowed = !!id && splitDeviceName(w.group)?.domain === req.from && !!(await this.ctx.store.getDeviceInfo(id)) && (await this.ctx.policy.permits(w.group, id, w.app));
    if (!id || !allowed) return { body: gm.watchAnswerBody({ up: false, suites: [] }) };
    // The latest watch from a home says where it keeps its groups now (a new keeper watches anew).
    const homes = this.watchers.get(id) ?? new Map<string, string | undefined>();
    if (homes.size < MAX_WATCHERS || homes.has(req.from)) homes.set(req.from, req.fromInstance);
    this.watchers.set(id, homes);
    return { body: gm.watchAnswerBody(await this.statusOf(id)) };
  }

  private async onTo(req: InterlinkRequest): Promise<{ body: unknown }> {
    const c = gm.readCarried(gm.XGW_GROUP_TO, req.body);
    const id = localDeviceId(c.member, this.ctx.gatewayId);
    if (!id) throw new InterlinkError("malformed", `${gm.XGW_GROUP_TO}: ${c.member} is not a device of ${this.ctx.gatewayId}`);
    if (c.frame) {
      const f = saDataOf(c.frame);
      const r = f && this.routes.get(f.spi);
      if (!r || r.home !== req.from || r.device !== id || !this.ctx.relay(id, c.frame)) throw new InterlinkError("malformed", `${gm.XGW_GROUP_TO}: no group SA of ${req.from} with this SPI at ${c.member}`);
      return { body: 0 };
    }
    const m = c.msg as InnerMessage;
    if (m.t === Msg.SaInstall) await this.install(req.from, req.fromInstance, id, m, await this.ctx.policy.permits(m.peer, id, m.app));
    else if (m.t === Msg.Connected || m.t === Msg.SaClosed) {
      const r = this.routes.get(m.spi);
      if (!r || r.home !== req.from || r.device !== id) throw new InterlinkError("malformed", `${gm.XGW_GROUP_TO}: no group SA of ${req.from} with this SPI at ${c.member}`);
      if (m.t === Msg.SaClosed) this.forgetRoute(m.spi);
      else if (m.replaces) this.retireRoute(m.replaces, req.from, id);
      this.ctx.send(id, m);
    } else throw new InterlinkError("malformed", `${gm.XGW_GROUP_TO}: message type ${m.t} is not for a member`);
    return { body: 0 };
  }

  /** The replaced key's SPI routes frames in flight for the overlap, as at the home, then goes. */
  private retireRoute(spi: number, home: string, deviceId: string): void {
    const r = this.routes.get(spi);
    if (!r || r.home !== home || r.device !== deviceId) return;
    const t = setTimeout(() => {
      this.retries.delete(t);
      if (this.routes.get(spi) === r) this.forgetRoute(spi);
    }, this.ctx.settings.overlapMs);
    t.unref();
    this.retries.add(t);
  }

  /** With several instances of this domain, the route's row (claimed at install) goes with it. */
  private forgetRoute(spi: number): void {
    if (this.routes.delete(spi)) this.ctx.sharing?.ended(spi);
  }

  /** Our device's group SPIs (those of other domains' groups), for monitoring and tests. */
  routesOf(deviceId: string): number[] {
    return [...this.routes].filter(([, r]) => r.device === deviceId).map(([spi]) => spi);
  }

  /** A group key for our device from the group's home: only a group of that gateway's own domain,
   *  only if our policy lets the group reach the device for its application, only on an SPI that is
   *  free at this gateway. With several instances of this domain the SPI is claimed in its table, as
   *  a group key's (gateway/instances/live-table.ts): the device's instance, wherever it links, then
   *  sends its group messages and frames here, where the route is. */
  private async install(home: string, instance: string | undefined, deviceId: string, m: InnerMessage & { t: Msg.SaInstall }, allowed: boolean): Promise<void> {
    const { ctx } = this;
    let why =
      splitDeviceName(m.peer)?.domain !== home ? `the group ${m.peer} is not of ${home}'s domain`
      : !allowed ? "policy does not let this group reach the device"
      : ctx.sessions.sessions.has(m.spi) || this.keeper.keys.has(m.spi) || this.routes.has(m.spi) ? "the SPI is taken here"
      : "";
    const sharing = ctx.sharing;
    if (!why && sharing) {
      const row = { spi: m.spi, initiator: "", responder: m.peer, app: m.app, suite: m.suite, expiresAt: ctx.now() + m.lifetime, up: true, home: sharing.instance };
      if (!(await sharing.claim(row))) why = "the SPI is taken in this domain";
    }
    if (why) {
      ctx.log.warn("group-install-refused", { device: deviceId, group: m.peer, app: m.app, spi: spiText(m.spi), reason: why });
      throw new InterlinkError("malformed", `${gm.XGW_GROUP_TO}: refused: ${why}`);
    }
    this.routes.set(m.spi, { home, device: deviceId, instance });
    ctx.send(deviceId, m);
  }

  /** Our device's message about a group SA of another domain: true when taken (forwarded home). */
  fromDevice(deviceId: string, m: InnerMessage): boolean {
    const spi = (m as { spi?: number }).spi ?? 0;
    const r = this.routes.get(spi);
    if (!r || r.device !== deviceId) return false;
    if (m.t === Msg.Bye) this.forgetRoute(spi);
    const name = `${deviceId}@${this.ctx.gatewayId}`;
    this.interlink.request(r.home, gm.XGW_GROUP_FROM, gm.messageBody(name, m), { secret: true, ...pin(r.instance) }).catch((e: unknown) => this.failed(name, `message ${m.t} home to ${r.home}`, e));
    return true;
  }

  /** Our device's frame under a group SPI of another domain: forwarded to the group's home. */
  frameFromDevice(deviceId: string, m: SaData, payload: Uint8Array): boolean {
    const r = this.routes.get(m.spi);
    if (!r || r.device !== deviceId) return false;
    const name = `${deviceId}@${this.ctx.gatewayId}`;
    this.interlink.request(r.home, gm.XGW_GROUP_FROM, gm.frameBody(name, payload), pin(r.instance)).catch((e: unknown) => this.failed(name, `frame home to ${r.home}`, e));
    return true;
  }

  /** Our device registered: the homes watching it hear it is up (and what it registered). */
  registered(deviceId: string): void {
    // With several instances every one hears of each registration; only those holding a watch answer.
    if (!this.watchers.has(deviceId) || this.closed) return;
    this.statusOf(deviceId).then((s) => this.tellWatchers(deviceId, s, false), (e: unknown) => this.failed(deviceId, "its status", e));
  }

  /** Our device is gone (reboot, lost link, deregistration, revocation): its group SPIs here are
   *  forgotten and the homes watching it hear of it; a revocation takes it out of their groups. */
  deviceGone(deviceId: string, reason: CloseReason): void {
    // Its group SAs close here at once (before a revoked device's link is cut), as pairwise ones do.
    for (const [spi, r] of [...this.routes]) {
      if (r.device !== deviceId) continue;
      this.forgetRoute(spi);
      this.ctx.send(deviceId, { t: Msg.SaClosed, spi, reason });
    }
    // Down, even if it is still linked (a reboot): it holds no group key now, and gets a new one when
    // it registers again.
    this.tellWatchers(deviceId, { up: false, suites: [] }, reason === CloseReason.Revoked);
  }

  holdsSpi(spi: number): boolean {
    return this.routes.has(spi);
  }

  private tellWatchers(deviceId: string, s: gm.MemberStatus, revoked: boolean): void {
    const homes = this.watchers.get(deviceId);
    if (!homes || this.closed) return;
    const name = `${deviceId}@${this.ctx.gatewayId}`;
    for (const [home, instance] of homes) {
      this.interlink.request(home, gm.XGW_GROUP_STATUS, gm.statusBody(name, s, revoked), { secret: true, ...pin(instance) }).catch((e: unknown) => this.failed(name, `status to ${home}`, e));
    }
  }
}

/** Request options that send to one instance of the home's domain, when it named one. */
const pin = (instance: string | undefined): { instance?: string } => (instance === undefined ? {} : { instance });

/** The SaData in a frame payload, or undefined. */
function saDataOf(payload: Uint8Array): SaData | undefined {
  try {
    const m = decodeMessage(cbor.decode(payload));
    return !(m instanceof Error) && m.t === Msg.SaData ? m : undefined;
  } catch {
    return undefined;
  }
}
