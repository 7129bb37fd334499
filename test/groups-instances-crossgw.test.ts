// A group kept by a domain of instances, with a member in another domain (gateway/crossgw/groups-remote.ts
// with gateway/sessions/groups.ts GroupSharing): a.example runs two in-process instances on one
// PostgreSQL registry, b.example one gateway, in one fleet on Mosquitto (the interlink reaches a domain
// of instances through an MQTT shared subscription, which aedes lacks: KEYPROXY_TEST_MQTT_URL, as CI
// runs it, else a private Mosquitto). The keeper (a1) watches bob@b.example and keys him; b.example
// answers the keeper's instance, not any instance of a.example: bob's confirmation, his status and his
// frames reach a1. When a1 stops, a2 keeps the group, watches bob anew and replaces the key as a rekey
// does; bob's gateway then sends to a2.
//
// Then the other way round: a member whose own gateway runs several instances (b.example on three,
// a.example one process). The instance the home's watch reached holds the member's watch and the
// routes of its keys, claimed in b.example's table, so the device may link to any instance; the home
// sends that instance everything about the member, and watches anew when it stops answering.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { Msg } from "../firmware/proto/messages.ts";
import { Fleet, loadGatewayCredentials } from "../gateway/fleet/fleet.ts";
import type { GroupLink } from "../gateway/crossgw/groups-remote.ts";
import { fleetDataDir } from "./support/fleet-rig.ts";
import { provision, startGateway, tempDir, until, type TestGateway } from "./support/harness.ts";
import { instanceDataDir } from "./support/instance-rig.ts";
import { sharedSubscriptionBroker, skipWithoutBrokerOrDatabase } from "./support/mosquitto.ts";
import { testDatabase, type TestDatabase } from "./support/postgres.ts";
import { sessionHandset, type SessionHandset } from "./support/session-rig.ts";

const text = (s: string) => new Uint8Array(Buffer.from(s, "latin1"));
const now = () => Math.floor(Date.now() / 1000);
const BOB = "bob@b.example";

/** Gateways in one fleet on Mosquitto (one domain of them as instances on one PostgreSQL database),
 *  and handsets that can move between a domain's instances. */
function fleetWorld() {
  let broker: Awaited<ReturnType<typeof sharedSubscriptionBroker>>;
  let url: string | undefined;
  let db: TestDatabase | undefined;
  let fleet: Fleet;
  let firstDir = "";
  const gws = new Map<string, TestGateway>();
  const devs = new Map<string, SessionHandset>();
  const targets = new Map<string, string>();
  const gw = (n: string) => gws.get(n)!.gw;
  const dev = (n: string) => devs.get(n)!;

  /** A gateway of `domain` named `name`; with `instance`, one of the domain's instances (the first
   *  one's data directory is copied for the others). */
  async function start(name: string, domain: string, o: { instance?: boolean } = {}): Promise<TestGateway> {
    let dataDir: string;
    if (o.instance && firstDir) dataDir = instanceDataDir(firstDir);
    else {
      dataDir = fleetDataDir(domain, fleet, now);
      if (o.instance) firstDir = dataDir;
    }
    const { credentials } = loadGatewayCredentials(dataDir, domain, now(), false);
    const t = await startGateway({
      dataDir, id: domain, now, mqtt: { url: url!, metricsSeconds: 3600 }, fleet: { credentials, recheckMs: 0 }, sessions: { overlapMs: 300 },
      ...(o.instance ? { database: db!.url, instance: name } : {}),
    });
    await t.gw.policy.setDefault("allow");
    gws.set(name, t);
    return t;
  }

  async function handset(id: string, at: string): Promise<SessionHandset> {
    targets.set(id, at);
    const local = id.split("@")[0];
    const h = await sessionHandset(gw(at), local, await provision(gw(at), local), { target: () => gw(targets.get(id)!).address });
    devs.set(id, h);
    await until(() => h.h.status().registered, `${id} registered`);
    return h;
  }

  /** One message each way between two members under the group key, each arriving once. */
  async function exchange(a: string, b: string, spi: number, tag: string): Promise<void> {
    for (const [from, to] of [[a, b], [b, a]]) {
      const msg = `${tag} from ${from}`;
      assert.equal(dev(from).h.send(spi, text(msg)), true, `${from} may send`);
      await until(() => dev(to).inbox.includes(msg), `"${msg}" at ${to}`, 10_000);
      assert.equal(dev(to).inbox.filter((m) => m === msg).length, 1, `"${msg}" arrived once`);
    }
  }

  /** Mosquitto (CI's, or a private one) and a database; false when either is missing here. */
  async function setUp(t: unknown): Promise<boolean> {
    broker = await sharedSubscriptionBroker();
    url = broker?.url;
    if (!url) return false;
    db = await testDatabase(t as never);
    if (!db) return false;
    fleet = Fleet.create(tempDir("kp-grp-inst-fleet-"), "kp-fleet", now());
    return true;
  }

  async function tearDown(): Promise<void> {
    for (const h of devs.values()) h.close();
    for (const t of gws.values()) await t.gw.stop().catch(() => undefined);
    await db?.drop();
    await broker?.kill();
  }

  const skipped = (t: { skip(m: string): void }) => skipWithoutBrokerOrDatabase(t, url, db);

  return { gws, targets, gw, dev, start, handset, exchange, setUp, tearDown, skipped };
}

describe("a group kept by a domain of instances, with a member in another domain", { timeout: 120_000 }, () => {
  const { gws, gw, dev, start, handset, setUp, tearDown, skipped, ...w } = fleetWorld();
  const exchange = (spi: number, tag: string) => w.exchange("ana", BOB, spi, tag);

  /** Waits until one a.example instance keys ops (other than `not`) and ana and bob hold it. */
  async function keyed(not = 0): Promise<{ spi: number; keeper: string }> {
    let r = { spi: 0, keeper: "" };
    await until(() => {
      const k = ["a1", "a2"].filter((n) => gws.has(n) && gw(n).groups.currentSpi("ops") !== 0);
      r = k.length === 1 ? { spi: gw(k[0]).groups.currentSpi("ops"), keeper: k[0] } : { spi: 0, keeper: "" };
      return r.spi !== 0 && r.spi !== not && ["ana", BOB].every((m) => dev(m).h.sas.some((s) => s.spi === r.spi && s.ready));
    }, "ops keyed for ana and bob", 20_000);
    return r;
  }

  before(async (t) => {
    if (!(await setUp(t))) return;
    await start("a1", "a.example", { instance: true });
    await start("a2", "a.example", { instance: true });
    await start("b", "b.example");
  });

  after(tearDown);

  test("the keeper keys bob@b.example with ana (at the other instance); bob's gateway answers the keeper's instance", async (t) => {
    if (skipped(t)) return;
    await handset("ana", "a2");
    await handset(BOB, "b");
    await gw("a2").groups.create("ops", "chat");
    for (const m of ["ana", BOB]) await gw("a2").groups.add("ops", m);
    const { spi, keeper } = await keyed();
    assert.equal(keeper, "a1", "a1, the smallest name online, keeps the group");
    await exchange(spi, "first");
    assert.deepEqual((gw("b").groups.remote as GroupLink).routesOf("bob"), [spi]);
  });

  test("bob's gateway reports him gone and back to the keeper's instance: the key is replaced without him, then with him", async (t) => {
    if (skipped(t)) return;
    const before = gw("a1").groups.currentSpi("ops");
    // bob restarts (a Bye for SA 0: "I hold no SAs"): his gateway tells the watching home he is down.
    assert.equal(dev(BOB).h.request_({ t: Msg.Bye, spi: 0 }, false), true);
    await until(() => gw("a1").groups.currentSpi("ops") !== before, "the keeper took bob out (fewer than two members: no key)", 10_000);
    assert.equal(gw("a1").groups.currentSpi("ops"), 0);
    // He registers again: his gateway tells the keeper he is up, and the group is keyed with him.
    assert.equal(dev(BOB).h.register(), true);
    const { spi, keeper } = await keyed(before);
    assert.equal(keeper, "a1");
    await exchange(spi, "after bob came back");
  });

  test("the keeper stops: a2 watches bob anew, replaces the key as a rekey does, and bob's gateway follows", async (t) => {
    if (skipped(t)) return;
    const old = gw("a1").groups.currentSpi("ops");
    const connected: [string, number, number][] = [];
    for (const m of ["ana", BOB]) dev(m).h.onConnect = (spi, _peer, _app, replaces) => connected.push([m, spi, replaces]);
    await gw("a1").stop();
    gws.delete("a1");
    const { spi, keeper } = await keyed(old);
    assert.equal(keeper, "a2");
    assert.deepEqual(connected.filter(([, s]) => s === spi).map(([m, , r]) => [m, r]).sort(), [["ana", old], [BOB, old]], "each member was told the new key replaces the old one");
    await exchange(spi, "under a2's key");
    assert.deepEqual([...dev("ana").closed, ...dev(BOB).closed].filter(([s]) => s === old), [], "the old key was replaced, not ended");
  });
});

describe("a group member whose own gateway runs several instances", { timeout: 120_000 }, () => {
  const { gws, targets, gw, dev, start, handset, setUp, tearDown, skipped, ...w } = fleetWorld();
  const exchange = (spi: number, tag: string) => w.exchange("alice", BOB, spi, tag);
  const link = (n: string) => gw(n).groups.remote as GroupLink;

  /** Waits until the home keys ops (other than `not`) and alice and bob hold it. */
  async function keyed(not = 0): Promise<number> {
    let spi = 0;
    await until(() => {
      spi = gw("a").groups.currentSpi("ops");
      return spi !== 0 && spi !== not && ["alice", BOB].every((m) => dev(m).h.sas.some((s) => s.spi === spi && s.ready));
    }, "ops keyed for alice and bob", 30_000);
    return spi;
  }

  /** The instance of b.example that holds bob's route for the key (the one the home's watch reached). */
  const holder = (spi: number) => ["b1", "b2", "b3"].filter((n) => gws.has(n) && link(n).routesOf("bob").includes(spi));

  before(async (t) => {
    if (!(await setUp(t))) return;
    await start("a", "a.example");
    for (const n of ["b1", "b2", "b3"]) await start(n, "b.example", { instance: true });
  });

  after(tearDown);

  test("bob is keyed through the instance the home's watch reached, and his frames cross to it from the instance he is linked to", async (t) => {
    if (skipped(t)) return;
    await handset("alice", "a");
    await handset(BOB, "b1");
    await gw("a").groups.create("ops", "chat");
    for (const m of ["alice", BOB]) await gw("a").groups.add("ops", m);
    const spi = await keyed();
    await exchange(spi, "first");
    const [at] = holder(spi);
    assert.ok(at, "one instance of b.example holds bob's route");
    // bob moves to an instance that neither holds the route nor handed him the key: it finds where
    // the route is in the domain's table, and his group SA carries on across b's bus.
    const other = ["b1", "b2", "b3"].find((n) => n !== at && n !== targets.get(BOB))!;
    targets.set(BOB, other);
    await dev(BOB).dropLink();
    await dev(BOB).reconnect();
    await until(() => dev(BOB).h.status().state === "linked" && gw(other).links.links.has("bob") && gw(at).instances!.isLinked("bob"), `bob linked at ${other}`);
    await exchange(spi, `bob at ${other}, his route at ${at}`);
    // A new key goes to the same instance; bob's confirmation crosses to it too.
    assert.equal(dev("alice").h.request_({ t: Msg.Rekey, rid: 0, spi }, false), true);
    const next = await keyed(spi);
    assert.deepEqual(holder(next), [at], "the new key's route is where the watch is");
    await exchange(next, "after the rekey");
    // bob restarts and registers again where he is linked: the instance holding the watch hears of it
    // on b's bus and tells the home he is up again.
    assert.equal(dev(BOB).h.request_({ t: Msg.Bye, spi: 0 }, false), true);
    await until(() => gw("a").groups.currentSpi("ops") === 0, "the home took bob out (fewer than two members: no key)", 10_000);
    assert.equal(dev(BOB).h.register(), true);
    await exchange(await keyed(next), "after bob's restart");
  });

  test("the instance holding bob's route stops: the home's request to it times out, and bob is watched and keyed anew through another", async (t) => {
    if (skipped(t)) return;
    const old = gw("a").groups.currentSpi("ops");
    const [at] = holder(old);
    await gw(at).stop();
    gws.delete(at);
    // alice's next message goes to bob through the gone instance: its time-out takes bob out, and the
    // home watches him again through any instance of b.example.
    assert.equal(dev("alice").h.send(old, text("into the void")), true);
    const spi = await keyed(old);
    assert.deepEqual(holder(spi).length, 1);
    await exchange(spi, "through another instance");
  });
});

