// Group keys in a domain that runs several instances (gateway/sessions/groups.ts GroupSharing,
// gateway/instances/instances.ts; docs/SCALING.md): three in-process instances of a.example on one
// PostgreSQL registry and one MQTT broker, with the firmware's Handset engine in Node over TCP, each
// member linked to another instance. One instance keeps the domain's groups (the online one with the
// smallest name): it claims each key's SPI in the domain's table, reaches every member wherever it is
// linked, and gets what the members send under the key from their instances. A member that leaves is
// cut off; when the keeper stops, the next one replaces the key as a rekey does, and messages flow on;
// a keeper cut off from the broker starts over from the table when it is back.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { Gateway } from "../gateway/gateway.ts";
import { startBroker, type EmbeddedBroker } from "../gateway/monitor/embedded-broker.ts";
import { CloseReason } from "../firmware/proto/messages.ts";
import { provision, until } from "./support/harness.ts";
import { startInProcessInstance } from "./support/instance-rig.ts";
import { testDatabase, type TestDatabase } from "./support/postgres.ts";
import { saDataIn, sessionHandset, type SessionHandset } from "./support/session-rig.ts";

const DOMAIN = "a.example";
const text = (s: string) => new Uint8Array(Buffer.from(s, "latin1"));

interface Instance {
  name: string;
  gw: Gateway;
  logs: string[];
}

describe("group keys in a domain of instances", { timeout: 120_000 }, () => {
  let db: TestDatabase | undefined;
  let broker: EmbeddedBroker;
  const instances = new Map<string, Instance>();
  const handsets = new Map<string, SessionHandset>();
  const targets = new Map<string, string>();
  let firstDir = "";

  async function startInstance(name: string): Promise<Instance> {
    const i = await startInProcessInstance({ name, domain: DOMAIN, database: db!.url, url: broker.url, first: firstDir || undefined });
    firstDir ||= i.dataDir;
    instances.set(name, i);
    return i;
  }

  const gw = (n: string) => instances.get(n)!.gw;
  const dev = (id: string) => handsets.get(id)!;
  /** The group's key as its keeper has it, and which instance that is. */
  const keeperOf = (group: string) => [...instances.values()].filter((i) => i.gw.groups.currentSpi(group) !== 0);

  async function member(id: string, at: string): Promise<SessionHandset> {
    targets.set(id, at);
    const h = await sessionHandset(gw(at), id, await provision(gw(at), id), { target: () => gw(targets.get(id)!).address });
    handsets.set(id, h);
    return h;
  }

  /** Waits until one instance keys the group (other than `not`) and every one of `members` holds it. */
  async function keyed(group: string, members: string[], not = 0): Promise<number> {
    let spi = 0;
    await until(() => {
      const k = keeperOf(group);
      spi = k.length === 1 ? k[0].gw.groups.currentSpi(group) : 0;
      return spi !== 0 && spi !== not && members.every((m) => dev(m).h.sas.some((s) => s.spi === spi && s.ready));
    }, `group ${group} keyed for ${members.join(", ")}`, 15_000);
    return spi;
  }

  /** One member sends; resolves with the frame once every one of `to` got the message, once. */
  async function sendToGroup(from: string, spi: number, msg: string, to: string[]): Promise<Uint8Array> {
    const before = dev(from).sent.length;
    assert.equal(dev(from).h.send(spi, text(msg)), true, `${from} may send ${msg}`);
    const frame = dev(from).sent.slice(before).find((f) => saDataIn(f)) as Uint8Array;
    await until(() => to.every((m) => dev(m).inbox.includes(msg)), `${msg} to reach ${to.join(", ")}`);
    for (const m of to) assert.equal(dev(m).inbox.filter((x) => x === msg).length, 1, `${msg} reached ${m} once`);
    return frame;
  }

  before(async (t) => {
    db = await testDatabase(t as never);
    if (!db) return;
    broker = await startBroker({ host: "127.0.0.1", port: 0 });
    for (const n of ["i1", "i2", "i3"]) await startInstance(n);
  });

  after(async () => {
    for (const h of handsets.values()) h.close();
    for (const i of instances.values()) await i.gw.stop().catch(() => undefined);
    await broker?.close();
    await db?.drop();
  });

  test("one instance keeps the group: members linked to three instances share its key and each other's messages", async (t) => {
    if (!db) return t.skip("no PostgreSQL");
    await member("ana", "i2");
    await member("ben", "i3");
    await member("cy", "i1");
    await until(() => [...handsets.values()].every((h) => h.h.status().registered), "every member registered");
    // Made at an instance that does not keep groups: the keeper sees the change at its next poll.
    const g = gw("i2").groups;
    await g.create("ops", "chat");
    for (const m of ["ana", "ben", "cy"]) await g.add("ops", m);
    const spi = await keyed("ops", ["ana", "ben", "cy"]);
    assert.deepEqual(keeperOf("ops").map((i) => i.name), ["i1"], "i1, the smallest name online, keeps it");
    const indices = ["ana", "ben", "cy"].map((m) => dev(m).h.sas.find((s) => s.spi === spi)!.link.me_);
    assert.deepEqual([...indices].sort(), [0, 1, 2], "each member has its own sender index");
    await sendToGroup("ana", spi, "from ana at i2", ["ben", "cy"]);
    await sendToGroup("ben", spi, "from ben at i3", ["ana", "cy"]);
    await sendToGroup("cy", spi, "from cy at i1", ["ana", "ben"]);
    assert.ok(gw("i2").instances!.stats.framesOut >= 1 && gw("i3").instances!.stats.framesOut >= 1, "i2 and i3 sent their members' frames to the keeper");
    assert.ok(!dev("ana").inbox.includes("from ana at i2"), "no member gets its own message back");
  });

  test("a member that leaves is cut off at once: it cannot open the next message, the others get a new key", async (t) => {
    if (!db) return t.skip("no PostgreSQL");
    const old = gw("i1").groups.currentSpi("ops");
    await gw("i3").groups.remove("ops", "cy");
    await until(() => dev("cy").closed.some(([s, why]) => s === old && why === CloseReason.Removed), "cy's key closed");
    const spi = await keyed("ops", ["ana", "ben"], old);
    assert.ok(!dev("cy").h.sas.some((s) => s.spi === spi), "cy never got the new key");
    const frame = await sendToGroup("ana", spi, "after cy left", ["ben"]);
    // Handed to cy directly, as a relay that ignored the change would: it does not open.
    const dropped = dev("cy").h.status().dropped;
    dev("cy").h.receive(frame);
    assert.ok(!dev("cy").inbox.includes("after cy left"));
    assert.equal(dev("cy").h.status().dropped, dropped + 1, "cy dropped the frame");
  });

  test("the keeper stops: the next instance replaces the group's key as a rekey does, and messages flow on", async (t) => {
    if (!db) return t.skip("no PostgreSQL");
    const old = gw("i1").groups.currentSpi("ops");
    const closed = (m: string) => dev(m).closed.filter(([s]) => s === old);
    const connected: [string, number, number][] = [];
    for (const m of ["ana", "ben"]) dev(m).h.onConnect = (spi, _peer, _app, replaces) => connected.push([m, spi, replaces]);
    await gw("i1").stop();
    instances.delete("i1");
    const spi = await keyed("ops", ["ana", "ben"], old);
    assert.deepEqual(keeperOf("ops").map((i) => i.name), ["i2"], "i2 keeps it now");
    assert.deepEqual(connected.filter(([, s]) => s === spi).map(([m, , r]) => [m, r]).sort(), [["ana", old], ["ben", old]], "each member was told the new key replaces the old one");
    assert.deepEqual([...closed("ana"), ...closed("ben")], [], "the old key was replaced, not ended");
    await sendToGroup("ben", spi, "under i2's key", ["ana"]);
    await sendToGroup("ana", spi, "ana answers", ["ben"]);
    // i1's row of the old key is gone once the new key is up.
    const row = await gw("i2").store.row("SELECT home FROM live_sessions WHERE spi = ?", [old]);
    assert.equal(row, undefined, "the replaced key's row is gone");
  });

  test("a member that registers at an instance that does not keep the group is keyed in: the keeper hears of it over the bus", async (t) => {
    if (!db) return t.skip("no PostgreSQL");
    const old = gw("i2").groups.currentSpi("ops");
    await gw("i3").groups.add("ops", "dee");
    // Added while not linked anywhere: the keeper's next poll sees the change and keys nobody new.
    await new Promise((r) => setTimeout(r, 2500));
    assert.equal(gw("i2").groups.currentSpi("ops"), old, "nothing changed while dee was away");
    await member("dee", "i3");
    const spi = await keyed("ops", ["ana", "ben", "dee"], old);
    await sendToGroup("dee", spi, "dee from i3", ["ana", "ben"]);
  });

  test("the keeper is cut off from the broker: another keeps the group meanwhile, and on its return one key again holds all members", async (t) => {
    if (!db) return t.skip("no PostgreSQL");
    assert.deepEqual(keeperOf("ops").map((i) => i.name), ["i2"]);
    const before = gw("i2").groups.currentSpi("ops");
    const i2 = instances.get("i2")!;
    // Only i2's bus connection drops (its links stay): the broker publishes its last-will, and i3 keeps
    // the group for the members it can reach.
    // It stays away 4 s (longer than a keeper waits before it takes the part).
    const client = (gw("i2").instances as unknown as { bus: { client: { options: { reconnectPeriod: number }; stream: { destroy(): void } } } }).bus.client;
    client.options.reconnectPeriod = 4000;
    client.stream.destroy();
    await until(() => gw("i3").groups.currentSpi("ops") !== 0, "i3 keeps the group while i2 is away", 15_000);
    await until(() => i2.logs.some((l) => l.includes('"instance-resynced"')), "i2 back on the bus");
    // Back, i2 (its name sorts first) keeps the group again: it starts over from the table.
    const spi = await keyed("ops", ["ana", "ben", "dee"], before);
    assert.deepEqual(keeperOf("ops").map((i) => i.name), ["i2"]);
    await sendToGroup("ana", spi, "after i2 came back", ["ben", "dee"]);
    await sendToGroup("dee", spi, "dee too", ["ana", "ben"]);
  });
});
