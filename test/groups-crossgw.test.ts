// Group SAs across gateways (issue 14, scope 3; gateway/crossgw/groups-remote.ts): two in-process
// gateways in their own domains, each in one fleet over the in-process MQTT broker (as
// test/crossgw.test.ts), with the firmware's Handset engine in Node behind each. The group
// team@a.example has three members on the two gateways: alice and carol at a.example, bob at
// b.example. Each one's message reaches the two others; a member that leaves cannot open the next
// message; a member revoked by the fleet's list is cut off at every gateway and leaves the group.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { CloseReason, Msg } from "../firmware/proto/messages.ts";
import { startBroker, type EmbeddedBroker } from "../gateway/monitor/embedded-broker.ts";
import { Fleet } from "../gateway/fleet/fleet.ts";
import type { GroupLink } from "../gateway/crossgw/groups-remote.ts";
import * as gm from "../gateway/crossgw/group-messages.ts";
import * as gcbor from "../gateway/encoding/cbor.ts";
import { publishRevocationList } from "../gateway/fleet/trust.ts";
import { fleetGateway } from "./support/fleet-rig.ts";
import { Clock, provision, tempDir, until, type TestGateway } from "./support/harness.ts";
import { saDataIn, sessionHandset, stopGateway, type SessionHandset } from "./support/session-rig.ts";

const text = (s: string) => new Uint8Array(Buffer.from(s, "latin1"));
const MEMBERS = ["alice", "carol", "bob@b.example"];

describe("group SAs across gateways: team@a.example with members at a.example and b.example", () => {
  let broker: EmbeddedBroker;
  let fleetDir: string;
  let fleet: Fleet;
  let a: TestGateway;
  let b: TestGateway;
  const devs = new Map<string, SessionHandset>();
  const clock = new Clock();
  const dev = (name: string) => devs.get(name) as SessionHandset;

  before(async () => {
    broker = await startBroker({ host: "127.0.0.1", port: 0 });
    fleetDir = tempDir("kp-grp-fleet-");
    fleet = Fleet.create(fleetDir, "kp-fleet", clock.now());
    // A short overlap: a replaced key stops routing frames (here and at bob's gateway) within the test.
    a = await fleetGateway("a.example", fleet, broker, clock.now, { sessions: { overlapMs: 300 } });
    b = await fleetGateway("b.example", fleet, broker, clock.now, { sessions: { overlapMs: 300 } });
    for (const id of ["alice", "carol"]) devs.set(id, await sessionHandset(a.gw, id, await provision(a.gw, id)));
    devs.set("bob@b.example", await sessionHandset(b.gw, "bob", await provision(b.gw, "bob")));
    await until(() => [...devs.values()].every((d) => d.h.status().registered), "every handset registered");
  });

  after(async () => {
    for (const d of devs.values()) d.close();
    for (const t of [a, b]) if (t) await stopGateway(t);
    await broker?.close();
    rmSync(fleetDir, { recursive: true, force: true });
  });

  /** Waits until team has a key (other than `not`) that each of `members` holds, confirmed. */
  async function keyed(members: string[], not = 0): Promise<number> {
    const holds = (m: string, spi: number) => dev(m).h.sas.some((s) => s.spi === spi && s.ready);
    await until(() => {
      const spi = a.gw.groups.currentSpi("team");
      return spi !== 0 && spi !== not && members.every((m) => holds(m, spi));
    }, `team keyed for ${members.join(", ")}`, 10_000);
    return a.gw.groups.currentSpi("team");
  }

  async function sendToGroup(from: string, spi: number, msg: string, to: string[]): Promise<Uint8Array> {
    const sender = dev(from);
    const before = sender.sent.length;
    assert.equal(sender.h.send(spi, text(msg)), true, `${from} may send ${msg}`);
    const frame = sender.sent.slice(before).find((f) => saDataIn(f)) as Uint8Array;
    await until(() => to.every((m) => dev(m).inbox.includes(msg)), `${msg} to reach ${to.join(", ")}`, 10_000);
    for (const m of to) assert.equal(dev(m).inbox.filter((x) => x === msg).length, 1, `${msg} reached ${m} once`);
    return frame;
  }

  let first = 0;

  test("three members on two gateways share one key; each one's message reaches the two others", async () => {
    await a.gw.groups.create("team", "chat");
    for (const m of MEMBERS) await a.gw.groups.add("team", m);
    first = await keyed(MEMBERS);
    assert.equal(dev("bob@b.example").h.sas.find((s) => s.spi === first)!.peer, "team@a.example");
    await sendToGroup("alice", first, "from alice", ["carol", "bob@b.example"]);
    await sendToGroup("bob@b.example", first, "from bob", ["alice", "carol"]);
    await sendToGroup("carol", first, "from carol", ["alice", "bob@b.example"]);
  });

  test("a rekey: bob's gateway routes the new key's SPI, and forgets the old one after the overlap", async () => {
    const link = b.gw.groups.remote as GroupLink;
    assert.deepEqual(link.routesOf("bob"), [first]);
    // alice asks for a new key (as her handset does at 80% of its limit).
    assert.equal(dev("alice").h.request_({ t: Msg.Rekey, rid: 0, spi: first }, false), true);
    const fresh = await keyed(MEMBERS, first);
    await sendToGroup("bob@b.example", fresh, "on the new key", ["alice", "carol"]);
    await until(() => link.routesOf("bob").length === 1, "the old SPI forgotten at bob's gateway", 10_000);
    assert.deepEqual(link.routesOf("bob"), [fresh]);
    first = fresh;
  });

  test("the member at the other gateway leaves: its SA closes, the others get a new key, and it cannot open the next message", async () => {
    const bob = dev("bob@b.example");
    assert.equal(await a.gw.groups.remove("team", "bob@b.example"), true);
    await until(() => bob.closed.some(([spi, reason]) => spi === first && reason === CloseReason.Removed), "bob's SA closed as removed", 10_000);
    const fresh = await keyed(["alice", "carol"], first);
    const next = await sendToGroup("alice", fresh, "bob is gone", ["carol"]);
    const dropped = bob.h.status().dropped;
    bob.h.receive(next);
    assert.ok(!bob.inbox.includes("bob is gone"), "the leaver cannot open the next message");
    assert.equal(bob.h.status().dropped, dropped + 1);
    first = fresh;
  });

  test("a member revoked by the fleet's list is cut off at both gateways and taken out of the group", async () => {
    const bob = dev("bob@b.example");
    await a.gw.groups.add("team", "bob@b.example");
    const withBob = await keyed(MEMBERS, first);
    const earlier = await sendToGroup("carol", withBob, "bob is back", ["alice", "bob@b.example"]);
    assert.ok(earlier);
    await publishRevocationList(broker.url, fleet.fleetId, fleet.revoke({ devices: ["bob@b.example"] }, clock.now()));
    await until(() => bob.closed.some(([spi, reason]) => spi === withBob && reason === CloseReason.Revoked), "bob's group SA closed as revoked", 10_000);
    const fresh = await keyed(["alice", "carol"], withBob);
    assert.deepEqual((await a.gw.groups.list()).find((g) => g.name === "team")!.members, ["alice", "carol"], "bob left the group at its home");
    // Each gateway acts on the list on its own: b's revocation is committed when it logs it.
    await until(() => b.events("device-revoked").some((e) => e.device === "bob"), "bob revoked at b", 10_000);
    assert.notEqual((await b.gw.store.getDevice("bob"))!.revokedAt, null, "bob is revoked at his own gateway");
    const next = await sendToGroup("alice", fresh, "after revocation", ["carol"]);
    bob.h.receive(next);
    assert.ok(!bob.inbox.includes("after revocation"));
  });

  test("a member revoked at its own gateway alone: the home hears it and takes it out of the group", async () => {
    const dave = await sessionHandset(b.gw, "dave", await provision(b.gw, "dave"));
    devs.set("dave@b.example", dave);
    await until(() => dave.h.status().registered, "dave registered");
    const before = a.gw.groups.currentSpi("team");
    await a.gw.groups.add("team", "dave@b.example");
    const withDave = await keyed(["alice", "carol", "dave@b.example"], before);
    assert.equal(await b.gw.revokeDevice("dave", "stolen"), true);
    await until(() => dave.closed.some(([spi, reason]) => spi === withDave && reason === CloseReason.Revoked), "dave's group SA closed as revoked", 10_000);
    await keyed(["alice", "carol"], withDave);
    assert.deepEqual((await a.gw.groups.list()).find((g) => g.name === "team")!.members, ["alice", "carol"]);
    assert.equal(a.events("group-member-revoked").filter((e) => e.device === "dave@b.example").length, 1);
  });

  test("a gateway speaks only for its own devices: b's claims about a's members, or its frames in their names, are refused and change nothing", async () => {
    const spi = a.gw.groups.currentSpi("team");
    const members = (await a.gw.groups.list()).find((g) => g.name === "team")!.members;
    const refused = async (type: string, body: unknown) => {
      await assert.rejects(b.gw.interlink!.request("a.example", type, body, { secret: true }), /may speak only for its own devices/, type);
    };
    await refused(gm.XGW_GROUP_STATUS, gm.statusBody("carol@a.example", { up: false, suites: [] }, true));
    await refused(gm.XGW_GROUP_FROM, gm.messageBody("alice@a.example", { t: Msg.Bye, spi }));
    await refused(gm.XGW_GROUP_FROM, gm.frameBody("alice@a.example", gcbor.encode([Msg.SaData, spi, 1, new Uint8Array(24)])));
    // Malformed bodies: a clear refusal each, nothing acted on.
    for (const [type, body] of [[gm.XGW_GROUP_STATUS, new Map([["member", "x"]])], [gm.XGW_GROUP_FROM, new Map<string, unknown>([["member", "bob@b.example"], ["msg", new Uint8Array([1, 2])], ["frame", new Uint8Array([3])]])], [gm.XGW_GROUP_WATCH, 7]] as const) {
      await assert.rejects(b.gw.interlink!.request("a.example", type, body, { secret: true }), /malformed|must|required|map/, type);
    }
    assert.equal(a.gw.groups.currentSpi("team"), spi, "the key did not change");
    assert.deepEqual((await a.gw.groups.list()).find((g) => g.name === "team")!.members, members, "nor the membership");
  });

  test("a member's gateway that does not let the group reach its device: the device is never keyed, and its status is not told", async () => {
    await b.gw.policy.setDefault("deny");
    const erin = await sessionHandset(b.gw, "erin", await provision(b.gw, "erin"));
    devs.set("erin@b.example", erin);
    await until(() => erin.h.status().registered, "erin registered");
    await a.gw.groups.create("spy", "chat");
    for (const m of ["alice", "carol", "erin@b.example"]) await a.gw.groups.add("spy", m);
    const holds = (m: string, spi: number) => dev(m).h.sas.some((s) => s.spi === spi && s.ready);
    await until(() => {
      const spi = a.gw.groups.currentSpi("spy");
      return spi !== 0 && holds("alice", spi) && holds("carol", spi);
    }, "spy keyed for alice and carol", 10_000);
    // b's answer about erin: after it, the group is as it will stay.
    const link = a.gw.groups.remote as GroupLink;
    await until(() => link.reported("erin@b.example") !== undefined, "b's answer about erin", 10_000);
    assert.deepEqual(link.reported("erin@b.example"), { up: false, suites: [] }, "b told nothing about erin");
    const offers = a.events("group-keys-distributed").filter((e) => e.group === "spy@a.example");
    assert.ok(offers.length >= 1 && offers.every((e) => e.members === "alice,carol"), `erin was never offered the key: ${offers.map((e) => e.members).join(" / ")}`);
    assert.equal(b.events("group-install-refused").length, 0, "so her gateway had nothing to refuse");
    assert.ok(!erin.h.sas.some((s) => s.peer === "spy@a.example"));
    await b.gw.policy.setDefault("allow");
  });
});
