// The group keeper (gateway/sessions/groups.ts) on its own: a real registry (SQLite, or PostgreSQL with
// KEYPROXY_TEST_ENGINE=postgres), the gateway's crypto and codec, and the two calls a link server
// answers (send an inner message, relay a frame) recorded instead of written to a socket. What
// test/groups.test.ts shows end to end over TCP, this pins down rule by rule, fast enough for mutation
// testing: which messages the keeper takes, who is left out and when, what a registry that cannot be
// read does, and what each change says in the log. The second part drives the keeper among a domain's
// instances through a scripted table of the domain's group keys (DomainTable, below), one rule at a
// time; test/groups-instances.test.ts runs the real one (gateway/instances/, on PostgreSQL).

import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import * as cbor from "../gateway/encoding/cbor.ts";
import { nodeCrypto } from "../gateway/crypto/symmetric.ts";
import { SUITE_AES_CCM_16_64_128 as AES, SUITE_XSALSA20_POLY1305 as XSALSA } from "../firmware/crypto/types.ts";
import { saConfirmTag } from "../firmware/proto/keys.ts";
import { CloseReason, Msg, type InnerMessage, type SaInstall } from "../firmware/proto/messages.ts";
import { Logger } from "../gateway/log/logger.ts";
import { KeyGroups } from "../gateway/registry/key-groups.ts";
import type { Store } from "../gateway/registry/store.ts";
import { GroupKeeper, WAKE_MS, type GroupSharing, type RemoteMembers } from "../gateway/sessions/groups.ts";
import { DEFAULT_SESSIONS, type SessionSettings } from "../gateway/sessions/session-broker.ts";
import { Clock, openTestRegistry, tempDir, until } from "./support/harness.ts";

const GW = "a.example";
const crypto = nodeCrypto();
const HI = 2 ** 32;

interface Member { id: string; suites?: number[][]; firmware?: string }

interface KeeperRig {
  keeper: GroupKeeper;
  store: Store;
  clock: Clock;
  /** What the keeper sent each device, seeds copied as the link server's encoding would. */
  sent: [string, InnerMessage][];
  relayed: [string, Uint8Array][];
  linked: Set<string>;
  events(name: string): Record<string, unknown>[];
  register(m: Member): Promise<void>;
  installs(member: string): SaInstall[];
  /** The member confirms the newest key it was given; returns whether the keeper took the message. */
  confirm(member: string, spi?: number): boolean;
  /** Every member of the newest key confirms it; returns its SPI. */
  confirmAll(): number;
  closed(member: string): [number, number][];
}

const rigs: { keeper: GroupKeeper; store: Store; dir: string }[] = [];
after(async () => {
  for (const r of rigs) {
    r.keeper.close();
    await r.store.close().catch(() => undefined);
    rmSync(r.dir, { recursive: true, force: true });
  }
});

async function keeperRig(members: Member[], opts: { settings?: Partial<SessionSettings>; pollMs?: number; remote?: RemoteMembers; spis?: number[]; taken?: Set<number>; sharing?: GroupSharing } = {}): Promise<KeeperRig> {
  const dir = tempDir("kp-keeper-");
  const store = await openTestRegistry(dir);
  const clock = new Clock();
  const lines: Record<string, unknown>[] = [];
  const sent: [string, InnerMessage][] = [];
  const relayed: [string, Uint8Array][] = [];
  const linked = new Set<string>();
  // SPIs are drawn as 4 random bytes: `spis` are the first ones drawn.
  const spis = opts.spis ?? [];
  const random = (n: number) => (n === 4 && spis.length ? new Uint8Array(Buffer.from(spis.shift()!.toString(16).padStart(8, "0"), "hex")) : crypto.random(n));
  const keeper = new GroupKeeper({
    store, log: new Logger((l) => lines.push(JSON.parse(l))), crypto: { ...crypto, random }, cbor, now: clock.now,
    send: (d, m) => linked.has(d) && sent.push([d, m.t === Msg.SaInstall ? { ...m, seed: m.seed.slice() } : m]) > 0,
    relay: (d, p) => linked.has(d) && relayed.push([d, p]) > 0,
    isLinked: (d) => linked.has(d),
    settings: { ...DEFAULT_SESSIONS, ...opts.settings }, gatewayId: GW, spiTaken: (spi) => opts.taken?.has(spi) ?? false, pollMs: opts.pollMs ?? 3_600_000, sharing: opts.sharing,
  });
  if (opts.remote) keeper.remote = opts.remote;
  rigs.push({ keeper, store, dir });
  const installs = (member: string) => sent.filter(([d, m]) => d === member && m.t === Msg.SaInstall).map(([, m]) => m as SaInstall);
  const confirm = (member: string, spi?: number) => {
    const i = installs(member).filter((x) => spi === undefined || x.spi === spi).at(-1);
    assert.ok(i, `${member} was given a key`);
    return keeper.handle(member, { t: Msg.SaConfirm, rid: 1, spi: i.spi, tag: saConfirmTag(crypto, cbor, i.seed, i.spi, i.suite, i.role) });
  };
  const r: KeeperRig = {
    keeper, store, clock, sent, relayed, linked,
    events: (name) => lines.filter((l) => l.event === name),
    register: async (m) => {
      await store.addDevice(m.id, crypto.random(16), "puckjs", clock.now()).catch(() => undefined);
      await store.putRegistration({ deviceId: m.id, registeredAt: clock.now(), expiresAt: clock.now() + 3600, suites: m.suites ?? [[AES, 1]], certId: null, cert: null, firmware: m.firmware ?? "fw-1", memoryUsed: null });
      linked.add(m.id);
    },
    installs, confirm,
    confirmAll: () => {
      const spi = (sent.filter(([, m]) => m.t === Msg.SaInstall).at(-1)![1] as SaInstall).spi;
      for (const [d] of sent.filter(([, m]) => m.t === Msg.SaInstall && (m as SaInstall).spi === spi)) assert.equal(confirm(d, spi), true);
      return spi;
    },
    closed: (member) => sent.filter(([d, m]) => d === member && m.t === Msg.SaClosed).map(([, m]) => [(m as { spi: number }).spi, (m as { reason: number }).reason]),
  };
  for (const m of members) await r.register(m);
  return r;
}

/** A group of `members`, keyed and confirmed: its SPI. */
async function upGroup(r: KeeperRig, name: string, members: string[]): Promise<number> {
  await r.keeper.create(name, "chat");
  for (const m of members) await r.keeper.add(name, m);
  await r.keeper.settled();
  const spi = r.confirmAll();
  assert.equal(r.keeper.currentSpi(name), spi);
  return spi;
}

describe("the group keeper", () => {
  test("each operator change keys the group before it returns, and says so in the log", async () => {
    const r = await keeperRig([{ id: "a" }, { id: "b" }]);
    assert.equal(r.keeper.currentSpi("team"), 0, "no such group: no key");
    await r.keeper.create("team", "chat");
    assert.deepEqual(r.events("group-changed").map((e) => e.reason), ["group team created for chat"]);
    assert.equal(await r.keeper.add("team", "a"), true);
    assert.equal(r.installs("a").length, 0, "one member alone is not keyed");
    assert.equal(await r.keeper.add("team", "b"), true);
    // No settled() here: add() returns once the group is keyed.
    assert.equal(r.installs("a").length, 1);
    assert.equal(r.installs("b").length, 1);
    const [ia, ib] = [r.installs("a")[0], r.installs("b")[0]];
    assert.equal(ia.spi, ib.spi);
    assert.deepEqual([ia.role, ib.role], [2, 3], "sender indices 0 and 1, in the order the members were added");
    assert.equal(ia.peer, "team@a.example");
    assert.deepEqual(r.events("group-changed").map((e) => e.group), ["team@a.example", "team@a.example", "team@a.example"]);
    assert.deepEqual(r.events("group-changed").slice(1).map((e) => e.reason), ["a added", "b added"]);
    assert.equal(r.keeper.stats.keyed, 0, "not up before every member confirmed");
    r.confirmAll();
    assert.equal(r.keeper.currentSpi("team"), ia.spi);
    assert.equal(r.keeper.stats.keyed, 1);
    assert.equal(r.sent.filter(([, m]) => m.t === Msg.Connected).length, 2);

    // Adding a member twice, or removing one that is not there, changes nothing and says nothing.
    assert.equal(await r.keeper.add("team", "b"), false);
    assert.equal(await r.keeper.remove("team", "zed"), false);
    assert.equal(r.events("group-changed").length, 3);
    assert.equal(r.sent.filter(([, m]) => m.t === Msg.SaInstall).length, 2);

    // Removing one closes its SA at once, before remove() returns.
    assert.equal(await r.keeper.remove("team", "b"), true);
    assert.deepEqual(r.closed("b"), [[ia.spi, CloseReason.Removed]]);
    assert.equal(r.events("group-changed").at(-1)!.reason, "b removed");
    assert.equal(r.keeper.currentSpi("team"), 0, "one member left: the group has no key");
    assert.deepEqual(r.closed("a"), [[ia.spi, CloseReason.PeerGone]]);
    assert.equal(r.events("group-key-down").at(-1)!.reason, "fewer than two members are up");

    // A key being confirmed when a member goes: replaced by none, and nothing else to end.
    await r.keeper.add("team", "b");
    const pending = r.installs("b").at(-1)!.spi;
    await r.keeper.remove("team", "b");
    assert.deepEqual(r.closed("a").at(-1), [pending, CloseReason.Replaced]);
    assert.equal(r.keeper.holdsSpi(pending), false);
    assert.equal(r.events("group-registry-error").length, 0);
  });

  test("a deleted group's key ends at every member; deleting a group that is not there changes nothing", async () => {
    const r = await keeperRig([{ id: "a" }, { id: "b" }, { id: "c" }]);
    const kept = await upGroup(r, "other", ["a", "b"]);
    r.sent.length = 0;
    const spi = await upGroup(r, "crew", ["a", "b", "c"]);
    // Added one by one: the key for a and b was replaced by the one for all three before it was confirmed.
    assert.deepEqual(r.events("group-key-down").map((e) => e.reason), ["a newer key replaces it before it was confirmed"]);
    assert.equal(r.closed("a").length, 1);
    // Nothing changed: a reconciliation (here, a registration renewed) keeps the key.
    await r.keeper.registered("a");
    await r.keeper.settled();
    assert.equal(r.installs("a").length, 2);
    assert.equal(r.keeper.currentSpi("crew"), spi);
    const changes = r.events("group-changed").length;
    assert.equal(await r.keeper.delete("nope"), false);
    assert.equal(r.events("group-changed").length, changes);
    assert.equal(await r.keeper.delete("crew"), true);
    for (const m of ["a", "b", "c"]) assert.deepEqual(r.closed(m).filter(([s]) => s === spi), [[spi, CloseReason.Removed]]);
    assert.equal(r.events("group-changed").at(-1)!.reason, "group crew deleted");
    assert.equal(r.events("group-key-down").at(-1)!.reason, "the group was deleted");
    assert.equal(r.keeper.currentSpi("crew"), 0);
    assert.equal(r.keeper.holdsSpi(spi), false, "the SPI no longer routes frames");
    assert.equal(r.keeper.relay("a", { t: Msg.SaData, spi, seq: 1, sealed: new Uint8Array(8) }, new Uint8Array(8)), false);
    assert.equal(r.events("group-registry-error").length, 0, "a deleted group is reconciled without an error");
    assert.equal(r.keeper.currentSpi("other"), kept, "another group keeps its key");
    assert.ok(!r.closed("a").some(([s]) => s === kept));
  });

  test("the keeper takes a member's SaConfirm, Rekey and Bye for a group key, and nothing else", async () => {
    const r = await keeperRig([{ id: "a" }, { id: "b" }, { id: "x" }]);
    const spi = await upGroup(r, "team", ["a", "b"]);
    assert.equal(r.keeper.handle("a", { t: Msg.Bye, spi: 0 }), false, "a Bye for no SA is not the keeper's");
    assert.equal(r.keeper.handle("a", { t: Msg.SaClosed, spi, reason: CloseReason.Bye }), false, "a device does not send SaClosed");
    assert.equal(r.keeper.handle("a", { t: Msg.Connected, spi, replaces: 0 }), false);
    assert.equal(r.keeper.handle("a", { t: Msg.Rekey, rid: 1, spi: spi ^ 1 }), false, "not a group key's SPI");
    assert.equal(r.keeper.handle("a", { t: Msg.SaConfirm, rid: 1, spi: spi ^ 1, tag: new Uint8Array(8) }), false);
    assert.equal(r.keeper.currentSpi("team"), spi, "none of them changed the key");
    assert.equal(r.sent.filter(([, m]) => m.t === Msg.SaInstall).length, 2);

    // A device that is no member: taken (the SPI is a group key's), refused, and nothing changes.
    assert.equal(r.keeper.handle("x", { t: Msg.Rekey, rid: 1, spi }), true);
    assert.equal(r.keeper.handle("x", { t: Msg.SaConfirm, rid: 1, spi, tag: new Uint8Array(8) }), true);
    assert.equal(r.keeper.handle("x", { t: Msg.Bye, spi }), true);
    const dropped = r.events("group-message-dropped");
    assert.deepEqual(dropped.map((e) => [e.device, e.type, e.reason]), [Msg.Rekey, Msg.SaConfirm, Msg.Bye].map((t) => ["x", t, "not a member of this group key"]));
    await r.keeper.settled();
    assert.equal(r.keeper.currentSpi("team"), spi);
    assert.equal(r.sent.filter(([, m]) => m.t === Msg.SaInstall).length, 2, "no key was replaced");
    assert.equal(r.events("group-confirm-dropped").length, 0);
    // A message the keeper has no rule for, forwarded by a member's gateway: nothing happens.
    r.keeper.fromMember("a", { t: Msg.SaClosed, spi, reason: CloseReason.Bye });
    await r.keeper.settled();
    assert.equal(r.closed("a").length, 0);
    assert.equal(r.keeper.currentSpi("team"), spi);

    // A member's Bye: taken, the member is out and the others get a new key.
    assert.equal(r.keeper.handle("b", { t: Msg.Bye, spi }), true);
    assert.deepEqual(r.closed("b"), [[spi, CloseReason.Bye]]);
  });

  test("a member's Rekey replaces the key in use, and only that one: not a key being confirmed, not one retiring", async () => {
    const r = await keeperRig([{ id: "a" }, { id: "b" }], { settings: { overlapMs: 60_000 } });
    const first = await upGroup(r, "team", ["a", "b"]);
    assert.equal(r.keeper.handle("a", { t: Msg.Rekey, rid: 1, spi: first }), true);
    await r.keeper.settled();
    assert.equal(r.events("group-rekey-due").at(-1)!.reason, "a asked for a new key");
    const second = r.installs("a").at(-1)!.spi;
    assert.notEqual(second, first);
    assert.equal(r.installs("a").at(-1)!.replaces, first);
    // While the new key is being confirmed, asking again (with either SPI) installs nothing more.
    r.keeper.handle("b", { t: Msg.Rekey, rid: 1, spi: second });
    r.keeper.handle("b", { t: Msg.Rekey, rid: 1, spi: first });
    await r.keeper.settled();
    assert.equal(r.installs("a").length, 2);
    assert.equal(r.confirmAll(), second);
    assert.equal(r.keeper.stats.rekeyed, 1);
    assert.equal(r.events("group-rekeyed").length, 1);
    // The replaced key routes frames for the overlap, but a Rekey of it asks for nothing.
    assert.equal(r.keeper.holdsSpi(first), true);
    r.keeper.handle("a", { t: Msg.Rekey, rid: 1, spi: first });
    await r.keeper.settled();
    assert.equal(r.installs("a").length, 2);
    assert.equal(r.events("group-rekey-due").length, 1);

    // Two asks for a new key of the same key: the second, judged after the first's replacement is
    // up, asks for nothing more.
    r.keeper.handle("a", { t: Msg.Rekey, rid: 1, spi: second });
    await r.keeper.settled();
    const third = r.installs("a").at(-1)!.spi;
    r.keeper.handle("b", { t: Msg.Rekey, rid: 1, spi: second });
    assert.equal(r.confirmAll(), third, "confirmed while the second ask waits for the registry");
    await r.keeper.settled();
    assert.equal(r.installs("a").length, 3);
    assert.equal(r.events("group-rekey-due").length, 2);
  });

  test("a member whose link went is out of the key but stays a member; a revoked one leaves every group", async () => {
    const r = await keeperRig([{ id: "a" }, { id: "b" }, { id: "c" }, { id: "loner" }]);
    const spi = await upGroup(r, "g1", ["a", "b", "c"]);
    const before = r.installs("a").length;
    r.linked.delete("c");
    r.keeper.deviceGone("c", CloseReason.PeerGone, "link lost");
    await until(() => r.installs("a").length === before + 1, "the rest rekeyed");
    await r.keeper.settled();
    assert.deepEqual((await r.keeper.list())[0].members, ["a", "b", "c"], "c is still a member");
    assert.equal(r.events("group-member-revoked").length, 0);
    const second = r.confirmAll();
    assert.notEqual(second, spi);
    // Back (linked and registered again): keyed in, with a key it shares with the others.
    r.linked.add("c");
    await r.keeper.registered("c");
    await r.keeper.settled();
    assert.equal(r.installs("c").at(-1)!.replaces, second);
    const third = r.confirmAll();

    // Revoked: out of the key at once, and out of every group.
    await r.keeper.create("g2", "chat");
    for (const m of ["a", "c"]) await r.keeper.add("g2", m);
    await r.keeper.settled();
    r.confirmAll();
    r.keeper.deviceGone("c", CloseReason.Revoked, "stolen");
    assert.ok(r.closed("c").some(([s, reason]) => s === third && reason === CloseReason.Revoked), "closed at once");
    await until(async () => r.events("group-member-revoked").length === 1, "the revocation said");
    const said = r.events("group-member-revoked")[0];
    assert.deepEqual([said.device, said.groups, said.reason], ["c", "g1@a.example,g2@a.example", "stolen"]);
    assert.deepEqual((await r.keeper.list()).map((g) => g.members), [["a", "b"], ["a"]]);
    // A revoked device that is in no group: nothing to say.
    r.keeper.deviceGone("loner", CloseReason.Revoked, "stolen");
    await r.keeper.settled();
    await new Promise((res) => setTimeout(res, 50));
    assert.equal(r.events("group-member-revoked").length, 1);
  });

  test("a registration: a device with none, a group the keeper has not seen yet, firmware whose confirmation failed", async () => {
    const r = await keeperRig([{ id: "a" }, { id: "b" }, { id: "c", firmware: "no-groups" }]);
    // A RegisterRequest that was refused leaves no registration: nothing to key.
    await r.keeper.registered("ghost");
    // A group made by another process (keyproxy group) reaches the keeper with the next registration.
    const other = new KeyGroups(r.store);
    await other.create("ext", "chat", r.clock.now());
    await other.add("ext", "a", r.clock.now());
    await other.add("ext", "b", r.clock.now());
    await r.keeper.registered("a");
    await r.keeper.settled();
    assert.equal(r.installs("a").length, 1, "keyed at a's registration");
    const spi = r.confirmAll();
    // c's firmware cannot confirm a group key: left out, and not offered one again for the same firmware.
    await r.keeper.add("ext", "c");
    await r.keeper.settled();
    const forC = r.installs("c").at(-1)!;
    assert.equal(r.keeper.handle("c", { t: Msg.SaConfirm, rid: 1, spi: forC.spi, tag: new Uint8Array(8) }), true);
    assert.equal(r.events("group-confirm-dropped").at(-1)!.reason, "key confirmation does not verify (firmware built without --groups?)");
    await r.keeper.settled();
    const offers = r.installs("c").length;
    assert.equal(r.installs("a").at(-1)!.replaces, spi, "a and b got a key c never had");
    r.confirmAll();
    await r.keeper.registered("c");
    await r.keeper.settled();
    assert.equal(r.installs("c").length, offers, "the same firmware is not offered a key again");
    await r.register({ id: "c", firmware: "with-groups" });
    await r.keeper.registered("c");
    await r.keeper.settled();
    assert.equal(r.installs("c").length, offers + 1, "new firmware is");
  });

  test("a member that never registered is not keyed; a keeper closed while reading the registry keys nothing", async () => {
    const r = await keeperRig([{ id: "a" }, { id: "b" }]);
    await r.store.addDevice("n", crypto.random(16), "puckjs", r.clock.now());
    const other = new KeyGroups(r.store);
    await other.create("late", "chat", r.clock.now());
    for (const m of ["n", "a", "b"]) await other.add("late", m, r.clock.now());
    await r.keeper.registered("a");
    await r.keeper.settled();
    assert.deepEqual(r.sent.filter(([, m]) => m.t === Msg.SaInstall).map(([d]) => d), ["a", "b"]);
    assert.equal(r.events("group-registry-error").length, 0);
    await other.create("never", "chat", r.clock.now());
    for (const m of ["a", "b"]) await other.add("never", m, r.clock.now());
    const registered = r.keeper.registered("b");
    r.keeper.close();
    await registered;
    await r.keeper.settled();
    assert.equal(r.sent.filter(([, m]) => m.t === Msg.SaInstall).length, 2, "no key after close()");
    assert.equal(r.keeper.currentSpi("never"), 0);
  });

  test("the registry unreadable at start, or at a poll: said in the log", async () => {
    const r = await keeperRig([], { pollMs: 20 });
    const logged: Record<string, unknown>[] = [];
    // A keeper that starts on a registry it cannot read (its first read of the membership version).
    await r.store.close();
    const late = new GroupKeeper({
      store: r.store, log: new Logger((l) => logged.push(JSON.parse(l))), crypto, cbor, now: r.clock.now, send: () => false, relay: () => false,
      isLinked: () => false, settings: DEFAULT_SESSIONS, gatewayId: GW, spiTaken: () => false, pollMs: 3_600_000,
    });
    try {
      await until(() => logged.some((l) => l.event === "group-registry-error"), "the failed first read said", 1000);
      assert.equal(logged.find((l) => l.event === "group-registry-error")!.group, undefined, "no one group's failure");
    } finally {
      late.close();
    }
    // The rig's keeper had read its version before the registry closed: its next poll fails, and says so.
    await until(() => r.events("group-registry-error").length > 0, "the failed poll said", 1000);
    assert.equal(r.events("group-registry-error")[0].group, undefined, "no one group's failure");
  });

  test("the keeper reads the groups only when something may have changed, and only the groups concerned", async () => {
    const r = await keeperRig([{ id: "a" }, { id: "b" }, { id: "c" }], { pollMs: 20 });
    await upGroup(r, "one", ["a", "b"]);
    await r.keeper.create("two", "chat");
    await r.keeper.add("two", "c");
    // Quiet first: a poll that saw these changes may still be reading.
    await new Promise((res) => setTimeout(res, 100));
    await r.keeper.settled();
    const reads = { list: 0, get: [] as string[] };
    const groups = r.keeper.store;
    const get = groups.get.bind(groups);
    // list() reads each group with get(): those reads are the list's, not counted again.
    const list = KeyGroups.prototype.list.bind(Object.assign(Object.create(groups) as KeyGroups, { get }));
    groups.list = () => (reads.list++, list());
    groups.get = (name: string) => (reads.get.push(name), get(name));
    await new Promise((res) => setTimeout(res, 150));
    assert.equal(reads.list, 0, "polls that find the same version read no group");
    await r.keeper.registered("c");
    r.keeper.memberChanged("c");
    await until(() => reads.get.length >= 2, "c's group read twice");
    await r.keeper.settled();
    assert.deepEqual(reads.get, ["two", "two"], "a registration, or news of a member, looks at its own groups only");
  });

  test("a change another process made is found by the poll, one change after another", async () => {
    const r = await keeperRig([{ id: "a" }, { id: "b" }, { id: "c" }], { pollMs: 40 });
    const other = new KeyGroups(r.store);
    await other.create("ops", "chat", r.clock.now());
    await other.add("ops", "a", r.clock.now());
    await other.add("ops", "b", r.clock.now());
    await until(() => r.installs("b").length === 1, "the poll keyed the group", 1000);
    const spi = r.confirmAll();
    await other.add("ops", "c", r.clock.now());
    await until(() => r.installs("c").length === 1, "the poll took c in", 1000);
    assert.equal(r.installs("c")[0].replaces, spi);
  });

  test("a registry that cannot be read is said in the log, once the keeper is closed no longer", async () => {
    const r = await keeperRig([{ id: "a" }, { id: "b" }]);
    await upGroup(r, "team", ["a", "b"]);
    await r.store.close();
    r.keeper.memberChanged("a");
    r.keeper.memberGone("b", CloseReason.Revoked, "stolen");
    await until(() => r.events("group-registry-error").length === 2, "both failures said");
    for (const e of r.events("group-registry-error")) {
      assert.equal(typeof e.reason, "string");
      assert.equal(e.group, undefined, "a failure that is no one group's names none");
    }
    // A reconciliation that cannot read the group names it.
    r.keeper.deviceGone("a", CloseReason.PeerGone, "link lost");
    await r.keeper.settled();
    await until(() => r.events("group-registry-error").some((e) => e.group === "team@a.example"), "the group's failure said");
    const said = r.events("group-registry-error").length;
    r.keeper.close();
    r.keeper.memberChanged("a");
    await new Promise((res) => setTimeout(res, 50));
    assert.equal(r.events("group-registry-error").length, said);
  });

  test("relayed frames: a member's, with its own sender index, once the key is up, to every other member", async () => {
    const r = await keeperRig([{ id: "a" }, { id: "b" }, { id: "c" }, { id: "x" }], { settings: { limit: 10 } });
    await r.keeper.create("team", "chat");
    for (const m of ["a", "b", "c"]) await r.keeper.add("team", m);
    await r.keeper.settled();
    const spi = r.installs("a").at(-1)!.spi;
    const frame = (seq: number) => ({ t: Msg.SaData, spi, seq, sealed: new Uint8Array(4) }) as const;
    const payload = new Uint8Array([1, 2, 3]);
    assert.equal(r.keeper.relay("a", frame(1), payload), true, "taken");
    assert.equal(r.relayed.length, 0, "not before every member confirmed");
    assert.match(String(r.events("frame dropped").at(-1)!.reason), /before every member confirmed/);
    r.confirmAll();
    r.keeper.relay("x", frame(1), payload);
    assert.match(String(r.events("frame dropped").at(-1)!.reason), /not a member of the key/);
    r.keeper.relay("b", frame(1), payload);
    assert.match(String(r.events("frame dropped").at(-1)!.reason), /another member's sender index/);
    assert.equal(r.relayed.length, 0);
    assert.equal(r.keeper.stats.relayDropped, 3);
    r.keeper.relay("b", frame(HI + 1), payload);
    assert.deepEqual(r.relayed.map(([d]) => d).sort(), ["a", "c"]);
    assert.equal(r.keeper.stats.relayed, 2);
    // A member without a link now: counted as dropped.
    r.linked.delete("c");
    r.keeper.relay("a", frame(2), payload);
    assert.equal(r.keeper.stats.relayed, 3);
    assert.equal(r.keeper.stats.relayDropped, 4);
    // The eighth frame relayed (80% of 10) asks for a new key, once.
    r.linked.add("c");
    for (let i = 3; i <= 8; i++) r.keeper.relay("a", frame(i), payload);
    await r.keeper.settled();
    assert.equal(r.events("group-rekey-due").length, 1);
    assert.equal(r.events("group-rekey-due")[0].reason, "80% of the key's message limit is used");
    r.keeper.relay("a", frame(9), payload);
    await r.keeper.settled();
    assert.equal(r.events("group-rekey-due").length, 1);
  });

  test("a member behind another gateway is keyed, sent to and relayed to through the remote members' interface", async () => {
    const out: [string, InnerMessage][] = [];
    const relayedOut: string[] = [];
    const remoteSpis = new Set<number>([0x0badf00d]);
    // As gateway/crossgw/groups-remote.ts reports a member at b.example; the optional parts (this
    // gateway's devices in other domains' groups) are left out: the keeper must do without them.
    const remote: RemoteMembers = {
      active: (m) => m === "bob@b.example",
      suites: (m) => (m === "bob@b.example" ? [[XSALSA, 1], [AES, 2]] : []),
      send: (m, msg) => out.push([m, msg.t === Msg.SaInstall ? { ...msg, seed: msg.seed.slice() } : msg]) > 0,
      relay: (m) => relayedOut.push(m) > 0,
      holdsSpi: (spi) => remoteSpis.has(spi),
    };
    // The first SPIs drawn are no SPI, one held for another domain's group, one a session here holds.
    const spis = [0, 0x0badf00d, 0x01020304, 0x0a0b0c0d];
    const r = await keeperRig([{ id: "a", suites: [[AES, 1], [XSALSA, 2]] }], { remote, spis, taken: new Set([0x01020304]) });
    await r.keeper.create("mix", "chat");
    await r.keeper.add("mix", "a");
    assert.equal(await r.keeper.add("mix", "bob@b.example"), true);
    const toBob = out.find(([m, msg]) => m === "bob@b.example" && msg.t === Msg.SaInstall)![1] as SaInstall;
    const spi = toBob.spi;
    assert.equal(spi, 0x0a0b0c0d, "a new key never takes an SPI that is 0 or held elsewhere");
    assert.equal(spis.length, 0);
    assert.equal(r.events("group-keys-distributed")[0].suite, AES, "the suite whose worse priority is best (1 and 2, against 2 and 1: the first member's order)");
    assert.equal(r.keeper.handle("a", { t: Msg.SaConfirm, rid: 1, spi, tag: saConfirmTag(crypto, cbor, r.installs("a")[0].seed, spi, AES, r.installs("a")[0].role) }), true);
    r.keeper.fromMember("bob@b.example", { t: Msg.SaConfirm, rid: 1, spi, tag: saConfirmTag(crypto, cbor, toBob.seed, spi, AES, toBob.role) });
    assert.equal(r.keeper.currentSpi("mix"), spi);
    assert.ok(out.some(([m, msg]) => m === "bob@b.example" && msg.t === Msg.Connected));
    r.keeper.relay("a", { t: Msg.SaData, spi, seq: 1, sealed: new Uint8Array(4) }, new Uint8Array(4));
    assert.deepEqual(relayedOut, ["bob@b.example"]);
    assert.deepEqual([r.keeper.stats.relayed, r.keeper.stats.relayDropped], [1, 0]);
    const key = r.keeper.keyOf(spi)!;
    r.keeper.relayFrom("bob@b.example", key, HI * (toBob.role - 2) + 1, new Uint8Array(4));
    assert.deepEqual(r.relayed.map(([d]) => d), ["a"]);
    // Frames and messages under SPIs the keeper does not hold are not taken, and nothing throws.
    assert.equal(r.keeper.relay("a", { t: Msg.SaData, spi: spi ^ 1, seq: 1, sealed: new Uint8Array(4) }, new Uint8Array(4)), false);
    assert.equal(r.keeper.handle("a", { t: Msg.Rekey, rid: 1, spi: spi ^ 1 }), false);
    await r.keeper.registered("a");
    r.keeper.deviceGone("nobody", CloseReason.PeerGone, "link lost");
    assert.equal(r.keeper.holdsSpi(spi), true);
    assert.equal(r.keeper.holdsSpi(0x0badf00d), true, "held for another domain's group");
    assert.equal(r.keeper.holdsSpi(0x0badf00e), false);
    delete remote.holdsSpi;
    assert.equal(r.keeper.holdsSpi(0x0badf00d), false, "a remote part that holds no SPIs");
    await r.keeper.settled();
    r.keeper.close();
  });

  test("a key's terms: what each member is given, the audit record when it is up, a confirmation that comes twice", async () => {
    const r = await keeperRig([{ id: "a" }, { id: "b" }], { settings: { lifetime: 600, limit: 5000 } });
    const spi = await upGroup(r, "team", ["a", "b"]);
    const i = r.installs("b")[0];
    assert.deepEqual([i.rid, i.peer, i.app, i.suite, i.role, i.lifetime, i.limit, i.replaces, i.seed.length], [0, "team@a.example", "chat", AES, 3, 600, 5000, 0, 32]);
    assert.notDeepEqual(i.seed, r.installs("a")[0].seed.map(() => 0), "a seed, not zeros");
    assert.deepEqual(i.seed, r.installs("a")[0].seed, "the same seed for every member");
    const dist = r.events("group-keys-distributed")[0];
    assert.deepEqual([dist.group, dist.members, dist.suite, dist.replaces], ["team@a.example", "a,b", AES, undefined]);
    assert.equal(dist.seed, undefined, "no key material in the log");
    const up = r.events("group-up")[0];
    assert.deepEqual([up.group, up.members], ["team@a.example", "a,b"]);
    const audit = (await r.store.query("SELECT event, detail FROM audit WHERE event LIKE 'group-%' ORDER BY id")).rows as { event: string; detail: string }[];
    assert.deepEqual(audit.map((x) => x.event), ["group-up"]);
    assert.match(audit[0].detail, /^group=team@a\.example spi=\S+ members=a,b$/);
    // Confirmed again once it is up: refused, nothing changes.
    assert.equal(r.confirm("a", spi), true);
    assert.equal(r.events("group-confirm-dropped").at(-1)!.reason, "no group key awaiting this member's confirmation");
    assert.equal(r.sent.filter(([, m]) => m.t === Msg.Connected).length, 2);
    assert.equal(r.keeper.currentSpi("team"), spi);
  });

  test("a member whose registration ran out is not up: the others get a key without it, and its old key closes when that one is up", async () => {
    const r = await keeperRig([{ id: "a" }, { id: "b" }, { id: "c" }], { settings: { overlapMs: 30 } });
    const old = await upGroup(r, "team", ["a", "b", "c"]);
    await r.store.putRegistration({ ...(await r.store.getRegistration("c"))!, expiresAt: r.clock.now() + 10 });
    r.clock.advance(10);
    await r.keeper.registered("a");
    await r.keeper.settled();
    assert.deepEqual(r.sent.filter(([, m]) => m.t === Msg.SaInstall && m.spi !== old).map(([d]) => d).slice(-2), ["a", "b"]);
    assert.deepEqual(r.closed("c").filter(([s]) => s === old), [], "still open while the new key is confirmed");
    const fresh = r.confirmAll();
    assert.deepEqual(r.closed("c").filter(([s]) => s === old), [[old, CloseReason.Removed]]);
    const out = r.events("group-member-out").at(-1)!;
    assert.deepEqual([out.device, out.group, out.reason], ["c", "team@a.example", "removed"]);
    assert.equal(r.events("group-rekeyed")[0].replaces !== undefined, true);
    assert.equal(r.keeper.holdsSpi(old), true, "the old key routes frames in flight for the overlap");
    await until(() => !r.keeper.holdsSpi(old), "the old key forgotten after the overlap", 1000);
    assert.equal(r.keeper.holdsSpi(fresh), true);
    assert.deepEqual(r.closed("a").filter(([s]) => s === old), [], "the members that stayed are not told to close it: their SA moved on");
  });

  test("a member that does not confirm in time is left out; the others are keyed without it", async () => {
    const r = await keeperRig([{ id: "a" }, { id: "b" }, { id: "c" }], { settings: { answerTimeoutMs: 40 } });
    await r.keeper.create("slow", "chat");
    for (const m of ["a", "b", "c"]) await r.keeper.add("slow", m);
    await r.keeper.settled();
    const first = r.installs("a").at(-1)!.spi;
    assert.equal(r.confirm("a", first), true);
    assert.equal(r.confirm("b", first), true);
    await until(() => r.events("group-confirm-timeout").length === 1, "the timeout", 1000);
    const said = r.events("group-confirm-timeout")[0];
    assert.deepEqual([said.group, said.devices, said.reason], ["slow@a.example", "c", "members did not confirm the key in time; they are left out until they register again"]);
    await r.keeper.settled();
    const second = r.installs("a").at(-1)!.spi;
    assert.notEqual(second, first);
    assert.equal(r.installs("c").at(-1)!.spi, first, "c is not given the next key");
    r.confirmAll();
    assert.equal(r.keeper.currentSpi("slow"), second);
    await new Promise((res) => setTimeout(res, 80));
    assert.equal(r.events("group-confirm-timeout").length, 1, "the key that was confirmed has no timeout");
  });

  test("a key's lifetime: at 80% a new key is due; a key not replaced by its end closes at every member", async (t) => {
    const r = await keeperRig([{ id: "a" }, { id: "b" }], { settings: { lifetime: 10 } });
    t.mock.timers.enable({ apis: ["setTimeout"] });
    const spi = await upGroup(r, "team", ["a", "b"]);
    t.mock.timers.tick(7_999);
    await r.keeper.settled();
    assert.equal(r.installs("a").length, 1, "not before 80%");
    t.mock.timers.tick(1);
    await r.keeper.settled();
    assert.equal(r.events("group-rekey-due").at(-1)!.reason, "80% of the key's lifetime is over");
    assert.equal(r.installs("a").length, 2);
    // The new key is never confirmed: the old one closes when its lifetime (and 5 s of grace) is over.
    t.mock.timers.tick(6_999);
    assert.equal(r.closed("a").length, 0);
    t.mock.timers.tick(1);
    assert.deepEqual(r.closed("a"), [[spi, CloseReason.Expired]]);
    assert.deepEqual(r.closed("b"), [[spi, CloseReason.Expired]]);
    assert.equal(r.events("group-key-down").at(-1)!.reason, "lifetime over");
    assert.equal(r.keeper.holdsSpi(spi), false);
    // The replacement, still unconfirmed, is what the group waits for: its own timeout leaves both out.
    t.mock.timers.tick(2_999);
    assert.equal(r.events("group-confirm-timeout").length, 0);
    t.mock.timers.tick(1);
    assert.equal(r.events("group-confirm-timeout")[0].devices, "a,b");
  });

  test("seed 003's matching over every member: the suite whose worst priority among them is best", async () => {
    const r = await keeperRig([
      // First member lists AES first, but puts XSALSA first by priority; both registered both.
      { id: "p1", suites: [[AES, 2], [XSALSA, 1]] }, { id: "p2", suites: [[AES, 1], [XSALSA, 1]] },
      // Same priorities at the first member: the other's worse AES decides.
      { id: "q1", suites: [[AES, 1], [XSALSA, 1]] }, { id: "q2", suites: [[AES, 3], [XSALSA, 1]] },
      // The other registered AES twice: its better entry counts.
      { id: "s1", suites: [[AES, 1], [XSALSA, 2]] }, { id: "s2", suites: [[AES, 9], [AES, 1], [XSALSA, 2]] },
      // The other registered AES twice, its better entry first.
      { id: "t1", suites: [[AES, 1], [XSALSA, 2]] }, { id: "t2", suites: [[AES, 1], [AES, 9], [XSALSA, 2]] },
      // Nothing in common.
      { id: "n1", suites: [[AES, 1]] }, { id: "n2", suites: [[XSALSA, 1]] },
    ]);
    const suiteOf = async (name: string, members: string[]) => {
      await r.keeper.create(name, "chat");
      for (const m of members) await r.keeper.add(name, m);
      return r.installs(members[0]).at(-1)?.suite;
    };
    assert.equal(await suiteOf("p", ["p1", "p2"]), XSALSA);
    assert.equal(await suiteOf("q", ["q1", "q2"]), XSALSA);
    assert.equal(await suiteOf("s", ["s1", "s2"]), AES);
    assert.equal(await suiteOf("t", ["t1", "t2"]), AES);
    assert.equal(r.keeper.stats.unkeyable, 0);
    assert.equal(await suiteOf("n", ["n1", "n2"]), undefined);
    assert.equal(r.keeper.stats.unkeyable, 1);
    const said = r.events("group-no-common-suite")[0];
    assert.deepEqual([said.group, said.members, said.reason], ["n@a.example", "n1,n2", "no cipher suite every member registered: the group cannot be keyed with these members"]);
  });

  test("one member down and another up at once: a new key for the new set, though it is as large", async () => {
    const r = await keeperRig([{ id: "a" }, { id: "b" }, { id: "c" }]);
    r.linked.delete("c");
    const spi = await upGroup(r, "team", ["a", "b", "c"]);
    assert.equal(r.installs("c").length, 0);
    r.linked.delete("b");
    r.linked.add("c");
    await r.keeper.registered("c");
    await r.keeper.settled();
    assert.equal(r.installs("c").length, 1);
    assert.equal(r.installs("c")[0].replaces, spi);
    assert.deepEqual(r.sent.filter(([, m]) => m.t === Msg.SaInstall && m.spi !== spi).map(([d]) => d), ["a", "c"]);
  });

  test("a key still being confirmed when a member's registration runs out: ended, and a new one when it is back", async () => {
    const r = await keeperRig([{ id: "a" }, { id: "b" }]);
    await r.keeper.create("team", "chat");
    for (const m of ["a", "b"]) await r.keeper.add("team", m);
    const pending = r.installs("a")[0].spi;
    await r.store.putRegistration({ ...(await r.store.getRegistration("b"))!, expiresAt: r.clock.now() + 10 });
    r.clock.advance(10);
    await r.keeper.registered("a");
    await r.keeper.settled();
    assert.deepEqual(r.closed("a"), [[pending, CloseReason.Replaced]]);
    await r.register({ id: "b" });
    await r.keeper.registered("b");
    await r.keeper.settled();
    assert.equal(r.installs("b").length, 2, "b is back: the pair gets a key");
    assert.notEqual(r.confirmAll(), pending);
  });

  test("a member at another domain, on a gateway outside any fleet: never up, and the rest are keyed", async () => {
    const r = await keeperRig([{ id: "a" }, { id: "b" }]);
    await r.keeper.create("team", "chat");
    for (const m of ["a", "bob@b.example", "b"]) await r.keeper.add("team", m);
    await r.keeper.settled();
    assert.deepEqual(r.sent.filter(([, m]) => m.t === Msg.SaInstall).map(([d]) => d), ["a", "b"]);
    assert.equal(r.events("group-registry-error").length, 0);
  });
});

/** The domain's table of group keys as one instance sees it (gateway/instances/ keeps it in
 *  PostgreSQL; test/groups-instances.test.ts runs that): which instance keeps the groups, the SPIs
 *  claimed, the keys an earlier keeper left. Scripted here so each of the keeper's rules for taking
 *  and leaving the part can be driven on its own. */
/** Waits, without timers (they are mocked here), until cond holds: the keeper's work is promises. */
async function settle(cond: () => boolean, what: string): Promise<void> {
  const end = Date.now() + 5000;
  while (!cond() && Date.now() < end) await new Promise((res) => setImmediate(res));
  assert.ok(cond(), what);
}

class DomainTable implements GroupSharing {
  keeps = false;
  claims: { spi: number; group: string; app: string; suite: number; expiresAt: number }[] = [];
  refuse = 0;
  broken = false;
  ended_: number[] = [];
  left = new Map<string, number>();
  elsewhere = false;
  replaced: [string, number[]][] = [];
  keeping(): boolean { return this.keeps; }
  /** Runs while a claim is being written (another instance takes the part meanwhile, say). */
  onClaim?: () => void;
  async claimGroupKey(spi: number, group: string, app: string, suite: number, expiresAt: number): Promise<boolean> {
    if (this.broken) throw new Error("the domain's table cannot be written");
    this.claims.push({ spi, group, app, suite, expiresAt });
    this.onClaim?.();
    return this.refuse-- <= 0;
  }
  ended(spi: number): void { this.ended_.push(spi); }
  async groupKeys(): Promise<Map<string, number>> {
    if (this.broken) throw new Error("the domain's table cannot be read");
    return new Map(this.left);
  }
  async keptElsewhere(): Promise<boolean> {
    if (this.broken) throw new Error("the domain's table cannot be read");
    return this.elsewhere;
  }
  replacedElsewhere(group: string, keep: number[]): void { this.replaced.push([group, keep]); }
}

/** The domain's instances agree this one keeps the groups: after WAKE_MS it wakes (its n-th
 *  "group-keeper" record) and keys what it has to. */
async function wakeKeeper(r: KeeperRig, table: DomainTable, timers: { tick(ms: number): void }, n: number): Promise<void> {
  table.keeps = true;
  r.keeper.keeperCheck();
  timers.tick(WAKE_MS);
  await settle(() => r.events("group-keeper").length === n, "awake");
  await r.keeper.settled();
}

describe("the group keeper among a domain's instances", () => {
  test("it keys nothing until it keeps the groups, WAKE_MS after it was told so; then it replaces the key an earlier keeper left", async (t) => {
    const table = new DomainTable();
    const r = await keeperRig([{ id: "a" }, { id: "b" }], { sharing: table, settings: { lifetime: 600 } });
    t.mock.timers.enable({ apis: ["setTimeout"] });
    const other = new KeyGroups(r.store);
    await other.create("team", "chat", r.clock.now());
    for (const m of ["a", "b"]) await other.add("team", m, r.clock.now());
    let lists = 0;
    const list = r.keeper.store.list.bind(r.keeper.store);
    r.keeper.store.list = () => (lists++, list());
    await r.keeper.registered("a");
    await r.keeper.settled();
    assert.equal(r.sent.length, 0, "an instance that keeps no groups keys none");
    assert.equal(lists, 0, "and reads none");
    table.left.set("team@a.example", 0x11111111);
    table.keeps = true;
    r.keeper.keeperCheck();
    r.keeper.keeperCheck();
    t.mock.timers.tick(WAKE_MS - 1);
    await r.keeper.settled();
    assert.equal(r.events("group-keeper").length, 0, "not before WAKE_MS");
    t.mock.timers.tick(1);
    await settle(() => r.installs("b").length === 1, "keyed once awake");
    await r.keeper.settled();
    assert.deepEqual(r.events("group-keeper").map((e) => [e.keeping, e.inherited]), [[true, 1]], "woken once");
    const i = r.installs("a")[0];
    assert.equal(i.replaces, 0x11111111, "the key the earlier keeper left is the one replaced");
    assert.deepEqual(table.claims, [{ spi: i.spi, group: "team@a.example", app: "chat", suite: AES, expiresAt: r.clock.now() + 600 }]);
    r.confirmAll();
    assert.deepEqual(table.replaced, [["team@a.example", [i.spi]]]);
    // Back on the bus after a cut in which no other instance kept the groups: it keeps them, and its key.
    r.keeper.rejoined();
    await new Promise((res) => setImmediate(res));
    assert.equal(r.keeper.currentSpi("team"), i.spi);
    // One that did: it starts over from the table (and wakes again after WAKE_MS).
    table.elsewhere = true;
    r.keeper.rejoined();
    await settle(() => r.events("group-keeper").length === 2, "asleep");
    assert.deepEqual([r.events("group-keeper")[1].keeping, r.events("group-keeper")[1].keys], [false, 1]);
    assert.equal(r.keeper.currentSpi("team"), 0);
    assert.equal(r.closed("a").length, 0, "the members are not told: the next keeper's key replaces theirs");
    table.left.set("team@a.example", i.spi);
    t.mock.timers.tick(WAKE_MS);
    await settle(() => r.installs("a").length === 2, "keyed again");
    assert.equal(r.installs("a")[1].replaces, i.spi);
  });

  test("it does not wake when the part went elsewhere meanwhile, or it was closed; it sleeps when the part goes", async (t) => {
    const table = new DomainTable();
    const r = await keeperRig([{ id: "a" }, { id: "b" }], { sharing: table });
    t.mock.timers.enable({ apis: ["setTimeout"] });
    await r.keeper.create("team", "chat");
    for (const m of ["a", "b"]) await r.keeper.add("team", m);
    assert.equal(r.sent.length, 0);
    table.keeps = true;
    r.keeper.keeperCheck();
    table.keeps = false;
    t.mock.timers.tick(WAKE_MS);
    await r.keeper.settled();
    assert.equal(r.events("group-keeper").length, 0, "the part went elsewhere before it woke");
    // Told while waiting that the part went: the wait is called off.
    table.keeps = true;
    r.keeper.keeperCheck();
    table.keeps = false;
    r.keeper.keeperCheck();
    table.keeps = true;
    t.mock.timers.tick(WAKE_MS);
    await r.keeper.settled();
    assert.equal(r.events("group-keeper").length, 0, "the called-off wait does not wake it");
    r.keeper.keeperCheck();
    t.mock.timers.tick(WAKE_MS);
    await settle(() => r.installs("a").length === 1, "awake and keyed");
    r.confirmAll();
    table.keeps = false;
    r.keeper.keeperCheck();
    assert.deepEqual(r.events("group-keeper").at(-1)!.keeping, false);
    assert.equal(r.keeper.currentSpi("team"), 0);
    // Asleep, a rejoin is only a check: nothing to start over, but the part may be this one's now.
    table.elsewhere = true;
    r.keeper.rejoined();
    await new Promise((res) => setImmediate(res));
    assert.equal(r.events("group-keeper").length, 2);
    table.keeps = true;
    r.keeper.rejoined();
    t.mock.timers.tick(WAKE_MS);
    await settle(() => r.events("group-keeper").length === 3, "awake after the rejoin's check");
    table.keeps = false;
    r.keeper.keeperCheck();
    assert.equal(r.events("group-keeper").length, 4);
    // Closed while waiting to wake: it never does.
    table.keeps = true;
    r.keeper.keeperCheck();
    r.keeper.close();
    t.mock.timers.tick(WAKE_MS);
    await new Promise((res) => setImmediate(res));
    assert.equal(r.events("group-keeper").length, 4);
    r.keeper.keeperCheck();
    assert.equal(r.events("group-keeper").length, 4);
  });

  test("an SPI the domain holds already is drawn again; a table that cannot be written or read is said, and keys nothing", async (t) => {
    const table = new DomainTable();
    const r = await keeperRig([{ id: "a" }, { id: "b" }], { sharing: table });
    t.mock.timers.enable({ apis: ["setTimeout"] });
    await wakeKeeper(r, table, t.mock.timers, 1);
    table.refuse = 2;
    await r.keeper.create("team", "chat");
    for (const m of ["a", "b"]) await r.keeper.add("team", m);
    assert.equal(table.claims.length, 3, "two refused, the third taken");
    assert.equal(r.installs("a")[0].spi, table.claims[2].spi);
    r.confirmAll();
    // Nine refusals in a row: given up, and said.
    table.refuse = 9;
    await r.keeper.remove("team", "b");
    await r.keeper.add("team", "b");
    assert.equal(table.claims.length, 12);
    assert.equal(r.events("group-registry-error").at(-1)!.reason, "no free SPI for a new group key after 8 draws");
    assert.equal(r.installs("b").length, 1);
    table.refuse = 0;
    table.broken = true;
    r.keeper.memberChanged("a");
    await settle(() => r.events("group-registry-error").length === 2, "the second failure said");
    assert.equal(r.events("group-registry-error").at(-1)!.reason, "the domain's table cannot be written");
    // A keeper that wakes on a table it cannot read inherits nothing, and says so.
    table.keeps = false;
    r.keeper.keeperCheck();
    table.keeps = true;
    r.keeper.keeperCheck();
    t.mock.timers.tick(WAKE_MS);
    await settle(() => r.events("group-keeper").length === 3, "awake again");
    assert.equal(r.events("group-keeper")[2].inherited, 0);
    const unread = r.events("group-registry-error").filter((e) => e.reason === "the domain's table cannot be read");
    assert.equal(unread.length, 1);
    assert.equal(unread[0].group, undefined);
    // Back on the bus with the table unreadable: said, and it keeps what it has.
    r.keeper.rejoined();
    await settle(() => r.events("group-registry-error").filter((e) => e.reason === "the domain's table cannot be read").length === 2, "the rejoin's failure said");
    assert.equal(r.events("group-keeper").length, 3);
    assert.deepEqual(r.events("group-registry-error").filter((e) => /cannot be read/.test(String(e.reason))).map((e) => e.group), [undefined, undefined], "a failure to read the table is no one group's");
    assert.ok(!table.ended_.includes(undefined as unknown as number), "no SPI was claimed by the failed draws: none to free");
    // Woken with the registry unreadable: said, and nothing keyed.
    table.broken = false;
    table.keeps = false;
    r.keeper.keeperCheck();
    const named = () => r.events("group-registry-error").filter((e) => e.group !== undefined).length;
    const namedBefore = named();
    await r.store.close();
    table.keeps = true;
    r.keeper.keeperCheck();
    t.mock.timers.tick(WAKE_MS);
    await settle(() => r.events("group-keeper").length === 5, "awake on a closed registry");
    await settle(() => r.events("group-registry-error").some((e) => e.group === undefined && !/domain's table|no free SPI/.test(String(e.reason))), "the registry's failure said");
    await r.keeper.settled();
    assert.equal(named(), namedBefore, "no group was read: none is named");
  });

  test("a key that ends, or is retired after its overlap, frees its SPI in the domain's table", async (t) => {
    const table = new DomainTable();
    const r = await keeperRig([{ id: "a" }, { id: "b" }, { id: "c" }], { sharing: table, settings: { overlapMs: 1000 } });
    t.mock.timers.enable({ apis: ["setTimeout"] });
    await wakeKeeper(r, table, t.mock.timers, 1);
    const first = await upGroup(r, "team", ["a", "b"]);
    await r.keeper.add("team", "c");
    const second = r.confirmAll();
    assert.deepEqual(table.ended_, []);
    t.mock.timers.tick(1000);
    assert.deepEqual(table.ended_, [first], "the replaced key, after the overlap");
    await r.keeper.delete("team");
    assert.deepEqual(table.ended_, [first, second]);
  });

  test("only an inherited key's replacement is reported, with its own group's SPIs; a claim that outlived the part frees its SPI", async (t) => {
    const table = new DomainTable();
    const r = await keeperRig([{ id: "a" }, { id: "b" }], { sharing: table });
    t.mock.timers.enable({ apis: ["setTimeout"] });
    await wakeKeeper(r, table, t.mock.timers, 1);
    await r.keeper.create("pair", "chat");
    for (const m of ["a", "b"]) await r.keeper.add("pair", m);
    r.confirmAll();
    assert.deepEqual(table.replaced, [], "a first key replaced nothing");
    // Asleep, then awake with team's key left by another keeper: pair's and team's new keys.
    table.keeps = false;
    r.keeper.keeperCheck();
    const other = new KeyGroups(r.store);
    await other.create("team", "chat", r.clock.now());
    for (const m of ["a", "b"]) await other.add("team", m, r.clock.now());
    table.left.set("team@a.example", 0x22222222);
    const offered = r.installs("a").length;
    await wakeKeeper(r, table, t.mock.timers, 3);
    await settle(() => r.installs("a").length === offered + 2, "both groups keyed");
    const spiOf = (group: string) => r.installs("a").filter((i) => i.peer === `${group}@a.example`).at(-1)!.spi;
    for (const m of ["a", "b"]) r.confirm(m, spiOf("pair"));
    assert.deepEqual(table.replaced, []);
    for (const m of ["a", "b"]) r.confirm(m, spiOf("team"));
    assert.deepEqual(table.replaced, [["team@a.example", [spiOf("team")]]]);
    // The part goes elsewhere while a claim is being written: the claimed SPI is freed, no key sent.
    const sent = r.sent.length;
    table.onClaim = () => {
      table.onClaim = undefined;
      table.keeps = false;
      r.keeper.keeperCheck();
    };
    table.keeps = true;
    await r.keeper.create("late", "chat");
    for (const m of ["a", "b"]) await r.keeper.add("late", m);
    await r.keeper.settled();
    assert.equal(r.sent.length, sent);
    assert.deepEqual(table.ended_, [table.claims.at(-1)!.spi]);
  });
});
