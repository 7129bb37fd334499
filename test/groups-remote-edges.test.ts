// Group SAs across gateways at their edges (gateway/crossgw/groups-remote.ts): what a gateway refuses
// of another's group messages, in the words each refusal gives, and that a refused message changes
// nothing. test/groups-crossgw.test.ts runs the group itself; here team@a.example has alice (at
// a.example) and bob (at b.example), and the test speaks as either gateway over the real interlink.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { CloseReason, Msg, type InnerMessage } from "../firmware/proto/messages.ts";
import { startBroker, type EmbeddedBroker } from "../gateway/monitor/embedded-broker.ts";
import { Fleet } from "../gateway/fleet/fleet.ts";
import type { GroupLink } from "../gateway/crossgw/groups-remote.ts";
import * as gm from "../gateway/crossgw/group-messages.ts";
import * as gcbor from "../gateway/encoding/cbor.ts";
import { fleetGateway } from "./support/fleet-rig.ts";
import { Clock, provision, tempDir, until, type TestGateway } from "./support/harness.ts";
import { sessionHandset, stopGateway, type SessionHandset } from "./support/session-rig.ts";

describe("group messages across gateways, refused at their edges", () => {
  let broker: EmbeddedBroker;
  let fleetDir: string;
  let a: TestGateway;
  let b: TestGateway;
  let alice: SessionHandset;
  let bob: SessionHandset;
  let spi = 0;
  const clock = new Clock();

  before(async () => {
    broker = await startBroker({ host: "127.0.0.1", port: 0 });
    fleetDir = tempDir("kp-grp-edges-");
    const fleet = Fleet.create(fleetDir, "kp-fleet", clock.now());
    a = await fleetGateway("a.example", fleet, broker, clock.now);
    b = await fleetGateway("b.example", fleet, broker, clock.now);
    alice = await sessionHandset(a.gw, "alice", await provision(a.gw, "alice"));
    bob = await sessionHandset(b.gw, "bob", await provision(b.gw, "bob"));
    await until(() => alice.h.status().registered && bob.h.status().registered, "both registered");
    await a.gw.groups.create("team", "chat");
    for (const m of ["alice", "bob@b.example"]) await a.gw.groups.add("team", m);
    await until(() => {
      spi = a.gw.groups.currentSpi("team");
      return spi !== 0 && [alice, bob].every((d) => d.h.sas.some((s) => s.spi === spi && s.ready));
    }, "team keyed", 10_000);
  });

  after(async () => {
    alice?.close();
    bob?.close();
    for (const t of [a, b]) if (t) await stopGateway(t);
    await broker?.close();
    rmSync(fleetDir, { recursive: true, force: true });
  });

  /** What each side holds of the group, which no refused message may change. */
  const state = async () => ({
    spi: a.gw.groups.currentSpi("team"),
    members: (await a.gw.groups.list()).find((g) => g.name === "team")!.members,
    bobRoutes: (b.gw.groups.remote as GroupLink).routesOf("bob"),
    bobSas: bob.h.sas.map((s) => s.spi),
    aliceSas: alice.h.sas.map((s) => s.spi),
  });

  async function refusedBy(from: TestGateway, to: string, type: string, body: unknown, message: string): Promise<void> {
    const before = await state();
    await assert.rejects(from.gw.interlink!.request(to, type, body, { secret: true }), (e: unknown) => e instanceof Error && e.message === `"${to}" answered malformed: ${message}`, message);
    assert.deepEqual(await state(), before, `nothing changed: ${message}`);
  }

  const install = (over: Partial<InnerMessage & { t: Msg.SaInstall }> = {}): InnerMessage => ({
    t: Msg.SaInstall, rid: 0, spi: 0x7700_0001, peer: "team@a.example", app: "chat", suite: 1, seed: new Uint8Array(32).fill(5), role: 2, lifetime: 3600, limit: 1000, replaces: 0, ...over,
  } as InnerMessage);

  test("the member's gateway takes a group key only from the group's own domain, where its policy allows, on a free SPI", async () => {
    const to = gm.XGW_GROUP_TO;
    await refusedBy(a, "b.example", to, gm.messageBody("bob@b.example", install({ peer: "team@c.example" })), `${to}: refused: the group team@c.example is not of a.example's domain`);
    await refusedBy(a, "b.example", to, gm.messageBody("bob@b.example", install({ spi })), `${to}: refused: the SPI is taken here`);
    await b.gw.policy.setDefault("deny");
    try {
      await refusedBy(a, "b.example", to, gm.messageBody("bob@b.example", install()), `${to}: refused: policy does not let this group reach the device`);
    } finally {
      await b.gw.policy.setDefault("allow");
    }
    const refusals = b.events("group-install-refused").map((e) => [e.device, e.group, e.reason]);
    assert.deepEqual(refusals, [
      ["bob", "team@c.example", "the group team@c.example is not of a.example's domain"],
      ["bob", "team@a.example", "the SPI is taken here"],
      ["bob", "team@a.example", "policy does not let this group reach the device"],
    ]);
  });

  test("the member's gateway relays to its device only on a route the sending home keyed: frames and notices of other SPIs, homes or devices are refused", async () => {
    const to = gm.XGW_GROUP_TO;
    const frame = (s: number) => gcbor.encode([Msg.SaData, s, 1, new Uint8Array(24)]);
    const noRoute = `${to}: no group SA of a.example with this SPI at bob@b.example`;
    await refusedBy(a, "b.example", to, gm.frameBody("bob@b.example", frame(spi + 1)), noRoute);
    await refusedBy(a, "b.example", to, gm.frameBody("bob@b.example", Uint8Array.of(1, 2, 3)), noRoute);
    await refusedBy(a, "b.example", to, gm.messageBody("bob@b.example", { t: Msg.Connected, spi: spi + 1, replaces: 0 }), noRoute);
    await refusedBy(a, "b.example", to, gm.messageBody("bob@b.example", { t: Msg.SaClosed, spi: spi + 1, reason: 1 }), noRoute);
    await refusedBy(a, "b.example", to, gm.messageBody("bob@b.example", { t: Msg.Bye, spi }), `${to}: message type ${Msg.Bye} is not for a member`);
    await refusedBy(a, "b.example", to, gm.frameBody("bob@a.example", frame(spi)), `${to}: bob@a.example is not a device of b.example`);
    // b's own device, on b's route, but said by b to itself as if it were the home: the route is a's.
    await refusedBy(b, "b.example", to, gm.frameBody("bob@b.example", frame(spi)), `${to}: no group SA of b.example with this SPI at bob@b.example`);
  });

  test("the home takes from a member's gateway only a member's messages, and frames of a group key it holds", async () => {
    const from = gm.XGW_GROUP_FROM;
    await refusedBy(b, "a.example", from, gm.messageBody("bob@b.example", install()), `${from}: message type ${Msg.SaInstall} is not a member's`);
    await refusedBy(b, "a.example", from, gm.messageBody("bob@b.example", { t: Msg.Connected, spi, replaces: 0 }), `${from}: message type ${Msg.Connected} is not a member's`);
    await refusedBy(b, "a.example", from, gm.frameBody("bob@b.example", gcbor.encode([Msg.SaData, spi + 1, 1, new Uint8Array(24)])), `${from}: not a frame of a group key here`);
    await refusedBy(b, "a.example", from, gm.frameBody("bob@b.example", Uint8Array.of(0xff)), `${from}: not a frame of a group key here`);
  });

  /** Waits until team has a key other than `not`, held ready by each of `holders`; returns its SPI. */
  async function rekeyed(not: number, holders: SessionHandset[]): Promise<number> {
    let now = 0;
    await until(() => {
      now = a.gw.groups.currentSpi("team");
      return now !== 0 && now !== not && holders.every((d) => d.h.sas.some((s) => s.spi === now && s.ready));
    }, "team keyed anew", 10_000);
    return now;
  }

  test("the home takes a member's Rekey from its gateway: the group gets a new key, the member included", async () => {
    const before = a.gw.groups.currentSpi("team");
    assert.equal(await b.gw.interlink!.request("a.example", gm.XGW_GROUP_FROM, gm.messageBody("bob@b.example", { t: Msg.Rekey, rid: 0, spi: before }), { secret: true }), 0);
    spi = await rekeyed(before, [alice, bob]);
  });

  test("a member's gateway's word on its own device: down closes its group SA until it is up again; revoked takes it out of the group", async () => {
    const link = a.gw.groups.remote as GroupLink;
    const suites = link.reported("bob@b.example")!.suites;
    assert.ok(suites.length > 0, "bob's registered suites, as his gateway answered the watch");
    const status = (up: boolean, revoked: boolean) => b.gw.interlink!.request("a.example", gm.XGW_GROUP_STATUS, gm.statusBody("bob@b.example", { up, suites }, revoked), { secret: true });
    const members = async () => (await a.gw.groups.list()).find((g) => g.name === "team")!.members;

    assert.equal(await status(false, false), 0);
    assert.deepEqual(link.reported("bob@b.example"), { up: false, suites });
    await until(() => bob.closed.some(([s, reason]) => s === spi && reason === CloseReason.PeerGone), "bob's group SA closed", 10_000);
    assert.deepEqual(await members(), ["alice", "bob@b.example"], "but bob stays a member");

    assert.equal(await status(true, false), 0);
    assert.deepEqual(link.reported("bob@b.example"), { up: true, suites });
    spi = await rekeyed(spi, [alice, bob]);

    assert.equal(await status(true, true), 0);
    assert.deepEqual(link.reported("bob@b.example"), { up: false, suites }, "revoked is down, whatever up says");
    await until(async () => (await members()).length === 1, "bob out of the group", 10_000);
    assert.deepEqual(await members(), ["alice"]);
    assert.equal(a.events("group-member-revoked").filter((e) => e.device === "bob@b.example").length, 1);
  });

  test("a watch tells a home nothing about a device unless the group is the asking gateway's own and the policy lets it reach the device: every other answer is that of an unknown device", async () => {
    const watch = (member: string, group: string) => a.gw.interlink!.request("b.example", gm.XGW_GROUP_WATCH, gm.watchBody(member, group, "chat"), { secret: true }).then(gm.readWatchAnswer);
    const nothing = { up: false, suites: [] };
    assert.equal((await watch("bob@b.example", "team@a.example")).up, true, "the genuine watch: bob is up");
    assert.deepEqual(await watch("bob@b.example", "team@c.example"), nothing, "a group of another domain than the asker's");
    assert.deepEqual(await watch("nobody@b.example", "team@a.example"), nothing, "a device b does not have");
    assert.deepEqual(await watch("bob@c.example", "team@a.example"), nothing, "a device of another domain");
    await b.gw.policy.setDefault("deny");
    try {
      assert.deepEqual(await watch("bob@b.example", "team@a.example"), nothing, "the policy does not let the group reach bob");
    } finally {
      await b.gw.policy.setDefault("allow");
    }
  });

  test("a member's Bye on its group SA: its gateway forgets the route at once (another device's Bye on it does nothing), and the home takes it out of the key", async () => {
    // bob left the group above (revoked at the home); dora, at b.example too, takes his place.
    const dora = await sessionHandset(b.gw, "dora", await provision(b.gw, "dora"));
    try {
      await until(() => dora.h.status().registered, "dora registered");
      await a.gw.groups.add("team", "dora@b.example");
      spi = await rekeyed(spi, [alice, dora]);
      const link = b.gw.groups.remote as GroupLink;
      assert.deepEqual(link.routesOf("dora"), [spi]);
      // bob, linked at the same gateway, says Bye on dora's SPI: not his, so her route stays.
      assert.equal(bob.h.request_({ t: Msg.Bye, spi }, false), true);
      await until(() => b.events("session-bye-dropped").some((e) => e.device === "bob"), "bob's Bye dropped at his gateway");
      assert.deepEqual(link.routesOf("dora"), [spi], "dora's route stays");
      assert.equal(dora.h.request_({ t: Msg.Bye, spi }, false), true);
      await until(() => link.routesOf("dora").length === 0, "dora's route forgotten at her gateway");
      await until(() => a.events("group-member-out").some((e) => e.device === "dora@b.example" && e.reason === "bye"), "dora out of the key at the home", 10_000);
      // The home's SaClosed that follows finds no route at her gateway: nothing more reaches her on it.
      await until(() => a.events("group-remote-failed").some((e) => e.device === "dora@b.example" && String(e.reason).includes("no group SA")), "the home's SaClosed refused at dora's gateway", 10_000);
      assert.ok(!dora.closed.some(([s]) => s === spi), "dora got nothing on the SA after her own Bye");
      const frame = gcbor.encode([Msg.SaData, spi, 1, new Uint8Array(24)]);
      await refusedBy(a, "b.example", gm.XGW_GROUP_TO, gm.frameBody("dora@b.example", frame), `${gm.XGW_GROUP_TO}: no group SA of a.example with this SPI at dora@b.example`);
      assert.ok((await a.gw.groups.list()).find((g) => g.name === "team")!.members.includes("dora@b.example"), "still a member: out of the key until she registers again");
    } finally {
      dora.close();
    }
  });
});
