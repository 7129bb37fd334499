// Several instances of one domain (issue 12, scope 2; docs/SCALING.md "Instances of a domain"):
// three in-process gateways of a.example on one PostgreSQL registry and one MQTT broker, with the
// firmware's Handset engine in Node over TCP. Sessions between handsets linked to different
// instances; a handset that moves to another instance mid-session; a rekey run by the SA's home; the
// home stopping, another instance taking its SAs over and the SA carrying on; a revocation at one
// instance reaching the device's link and SAs at the others. The same with kill -9, across processes
// and on Mosquitto, is test/instances-e2e.test.ts.

import { after, before, describe, test } from "node:test";
import mqtt from "mqtt";
import assert from "node:assert/strict";
import { Gateway } from "../gateway/gateway.ts";
import { GatewayIdInUse } from "../gateway/monitor/monitor.ts";
import { SPI_RESERVE } from "../gateway/instances/instances.ts";
import { LiveTable, RESERVED } from "../gateway/instances/live-table.ts";
import { startBroker, type EmbeddedBroker } from "../gateway/monitor/embedded-broker.ts";
import { CloseReason, Msg, type InnerMessage, type SaInstall } from "../firmware/proto/messages.ts";
import { spiText } from "../gateway/log/protocol-names.ts";
import { provision, until } from "./support/harness.ts";
import { startInProcessInstance } from "./support/instance-rig.ts";
import { testDatabase, type TestDatabase } from "./support/postgres.ts";
import { connectPair, exchange, sessionHandset, type SessionHandset } from "./support/session-rig.ts";

const DOMAIN = "a.example";
const APP = "chat";
const LIMIT = 10; // messages per direction: a device asks for a rekey at 8
const text = (s: string) => new Uint8Array(Buffer.from(s, "latin1"));

interface Instance {
  name: string;
  gw: Gateway;
  logs: string[];
  events(e: string): Record<string, unknown>[];
}

describe("instances of one domain on PostgreSQL and one broker", { timeout: 120_000 }, () => {
  let db: TestDatabase | undefined;
  let broker: EmbeddedBroker;
  const instances: Instance[] = [];
  const handsets: SessionHandset[] = [];
  let firstDir = "";

  async function startInstance(name: string): Promise<Instance> {
    // Every instance holds the domain's gateway key and KEK (docs/SCALING.md).
    const { gw, logs, dataDir } = await startInProcessInstance({ name, domain: DOMAIN, database: db!.url, url: broker.url, first: firstDir || undefined, options: { sessions: { limit: LIMIT } } });
    firstDir ||= dataDir;
    const i = { name, gw, logs, events: (e: string) => logs.map((l) => JSON.parse(l) as Record<string, unknown>).filter((r) => r.event === e) };
    instances.push(i);
    return i;
  }

  const byName = (n: string) => instances.find((i) => i.name === n)!;

  async function handset(id: string, at: string): Promise<SessionHandset> {
    const key = await provision(byName(at).gw, id);
    let target = at;
    const h = await sessionHandset(byName(at).gw, id, key, { target: () => byName(target).gw.address });
    (h as SessionHandset & { moveTo(n: string): void }).moveTo = (n: string) => (target = n);
    handsets.push(h);
    return h;
  }
  const moveTo = (h: SessionHandset, n: string) => (h as SessionHandset & { moveTo(n: string): void }).moveTo(n);

  before(async (t) => {
    db = await testDatabase(t as never);
    if (!db) return;
    broker = await startBroker({ host: "127.0.0.1", port: 0 });
    await startInstance("i1");
    await startInstance("i2");
    await startInstance("i3");
    await byName("i1").gw.policy.setDefault("allow");
  });

  after(async () => {
    for (const h of handsets) h.close();
    for (const i of instances) await i.gw.stop().catch(() => undefined);
    await broker?.close();
    await db?.drop();
  });

  test("a session between handsets linked to different instances, its frames relayed over the bus", async (t) => {
    if (!db) return t.skip("no PostgreSQL");
    const alice = await handset("alice", "i1");
    const bob = await handset("bob", "i2");
    await until(() => alice.h.status().registered && bob.h.status().registered, "both registered");
    // i1 learns that bob is linked at i2 from the bus.
    await until(() => byName("i1").gw.instances!.isLinked("bob"), "i1 to know bob is linked (at i2)");
    const spi = await connectPair(alice, bob, APP);
    await exchange(alice, bob, spi, "hello from i1");
    // Home: i1 (the caller's); i2 relayed bob's frame without running the SA.
    assert.ok(byName("i1").gw.sessions.sessions.has(spi), "the SA runs at the caller's instance");
    assert.ok(!byName("i2").gw.sessions.sessions.has(spi), "and only there");
    assert.ok(byName("i2").gw.instances!.stats.framesOut >= 1, "i2 sent bob's frame over the bus");
    // i1 claimed the SPI while bob decided, and i2 held bob's SaInstall and gave it as bob accepted.
    assert.equal(byName("i2").gw.instances!.stats.installsGiven, 1, "bob's keys came from i2's hold, once");
  });

  test("SPIs claimed ahead: a setup takes one without waiting for the database and its row gets the SA's terms; a reservation never comes up, and is given back alone", async (t) => {
    if (!db) return t.skip("no PostgreSQL");
    const reservedAt = async (home: string) => Number((await byName("i1").gw.store.row("SELECT count(*) AS n FROM live_sessions WHERE home = ? AND initiator = ?", [home, RESERVED]))!.n);
    const i1 = byName("i1");
    await until(() => i1.gw.instances!.spisInReserve >= SPI_RESERVE / 2, "i1's reserve claimed");
    assert.equal(await reservedAt("i1"), i1.gw.instances!.spisInReserve, "every SPI in i1's reserve is a row of i1's");
    const claims: number[] = [];
    const claim = i1.gw.instances!.claim.bind(i1.gw.instances!);
    i1.gw.instances!.claim = (s) => (claims.push(s.spi), claim(s));
    t.after(() => delete (i1.gw.instances as { claim?: unknown }).claim);
    const kim = await handset("kim", "i1");
    const lou = await handset("lou", "i2");
    await until(() => kim.h.status().registered && lou.h.status().registered && i1.gw.instances!.isLinked("lou"), "both registered, i1 knowing lou is at i2");
    const spi = await connectPair(kim, lou, APP);
    await exchange(kim, lou, spi, "on an SPI claimed ahead");
    assert.deepEqual(claims, [], "no SPI claimed on the setup's path");
    await until(async () => (await i1.gw.store.row("SELECT up FROM live_sessions WHERE spi = ?", [spi]))?.up == 1, "the SA's row up");
    const row = (await i1.gw.store.row("SELECT initiator, responder, app, home FROM live_sessions WHERE spi = ?", [spi]))!;
    assert.deepEqual({ ...row }, { initiator: "kim", responder: "lou", app: APP, home: "i1" });
    kim.close();
    lou.close();

    // A reservation never comes up, and a stopping instance deletes its own.
    const i4 = await startInstance("i4");
    await until(() => i4.gw.instances!.spisInReserve >= SPI_RESERVE / 2, "i4's reserve claimed");
    const table = new LiveTable(i4.gw.store, "i4");
    const [unused] = await table.reserve([0x7e57_0001], Math.floor(Date.now() / 1000) + 60);
    assert.equal(unused, 0x7e57_0001);
    await table.markUp(unused);
    assert.equal(Number((await i4.gw.store.row("SELECT up FROM live_sessions WHERE spi = ?", [unused]))!.up), 0, "a reservation with no terms stays down");
    assert.equal(await table.assign({ spi: unused, initiator: "x", responder: "y", app: APP, suite: 1, expiresAt: Math.floor(Date.now() / 1000) + 60, up: false, home: "i4" }), true);
    assert.equal(await table.assign({ spi: unused, initiator: "x", responder: "y", app: APP, suite: 1, expiresAt: Math.floor(Date.now() / 1000) + 60, up: false, home: "i4" }), false, "terms are given once");
    // Given back: the reservations only, not an SA that took one.
    const before = await reservedAt("i4");
    assert.deepEqual(await table.reserve([0x7e57_0002, 0x7e57_0001], Math.floor(Date.now() / 1000) + 60), [0x7e57_0002], "an SPI the domain holds is not claimed twice");
    assert.equal(await reservedAt("i4"), before + 1);
    await table.releaseReserved();
    assert.equal(await reservedAt("i4"), 0, "every reservation of i4's released");
    assert.ok(await i4.gw.store.row("SELECT spi FROM live_sessions WHERE spi = ?", [unused]), "the SA on a reserved SPI kept");
    await table.remove(unused);
    await i4.gw.stop();
    instances.splice(instances.indexOf(i4), 1);
    assert.equal(await reservedAt("i4"), 0, "no reservation of i4's left once it stopped (released by it, or by the instance taking its rows over)");
  });

  test("a callee's instance that holds no SaInstall (as one of an older version, which refuses installOnAccept): the home sends it after the plain answer", async (t) => {
    if (!db) return t.skip("no PostgreSQL");
    const old = byName("i3").gw.instances! as unknown as { hold: (...a: unknown[]) => void };
    old.hold = () => {}; // what an older version does with a kind it refuses: nothing
    t.after(() => delete (old as { hold?: unknown }).hold);
    const gina = await handset("gina", "i1");
    const hank = await handset("hank", "i3");
    await until(() => gina.h.status().registered && hank.h.status().registered && byName("i1").gw.instances!.isLinked("hank"), "both registered, i1 knowing hank is at i3");
    const spi = await connectPair(gina, hank, APP);
    await exchange(gina, hank, spi, "without a held SaInstall");
    assert.equal(byName("i3").gw.instances!.stats.installsGiven, 0, "nothing was held at i3");
    assert.ok(byName("i1").gw.sessions.sessions.has(spi), "the SA runs at the caller's instance");
    gina.close();
    hank.close();
  });

  test("a held SaInstall is wiped, never given, when its callee links anew or its request's route runs out", async (t) => {
    if (!db) return t.skip("no PostgreSQL");
    // White-box: the hold as installOnAccept makes it, at i2 for a callee linked there.
    const ivy = await handset("ivy", "i2");
    await until(() => ivy.h.status().registered, "ivy registered at i2");
    const i2 = byName("i2").gw.instances! as unknown as {
      learn(home: string, dev: string, m: InnerMessage): void;
      hold(home: string, dev: string, m: SaInstall): void;
      held: Map<string, { until: number }>;
      sweepOrphans(): Promise<void>;
    };
    const holdFor = (rid: number): SaInstall => {
      i2.learn("i1", "ivy", { t: Msg.Incoming, rid, from: "someone", app: APP, suite: 10 });
      const m: SaInstall = { t: Msg.SaInstall, rid, spi: 0x1000 + rid, peer: "someone", app: APP, suite: 10, seed: new Uint8Array(32).fill(0x5a), role: 1, lifetime: 600, limit: LIMIT, replaces: 0 };
      i2.hold("i1", "ivy", m);
      assert.ok(i2.held.has(`ivy/${rid}`), "held");
      return m;
    };
    const linkedAgain = holdFor(901);
    byName("i2").gw.instances!.linkChanged("ivy", true); // a new join of ivy at i2
    assert.ok(!i2.held.has("ivy/901"), "dropped on the new link");
    assert.ok(linkedAgain.seed.every((b) => b === 0), "and its seed wiped");
    const routeOver = holdFor(902);
    i2.held.get("ivy/902")!.until = Date.now() - 1; // the 60 s answer route is over
    await i2.sweepOrphans();
    assert.ok(!i2.held.has("ivy/902"), "dropped at the sweep");
    assert.ok(routeOver.seed.every((b) => b === 0), "and its seed wiped");
    assert.ok(!ivy.h.sas.some((s) => s.spi === 0x1000 + 901 || s.spi === 0x1000 + 902), "ivy was given neither");
    ivy.close();
  });

  test("a handset moves to another instance mid-session: its SA carries on, and a rekey is run by the home", async (t) => {
    if (!db) return t.skip("no PostgreSQL");
    const alice = handsets.find((h) => h.id === "alice")!;
    const bob = handsets.find((h) => h.id === "bob")!;
    const spi = alice.h.sas.find((s) => s.ready)!.spi;
    moveTo(bob, "i3");
    await bob.dropLink();
    await bob.reconnect();
    await until(() => bob.h.status().state === "linked" && byName("i1").gw.instances!.isLinked("bob") && byName("i3").gw.links.links.has("bob"), "bob linked at i3");
    await exchange(bob, alice, spi, "from i3");
    // Past the limit's rekey point: the device asks, its instance (i3) sends the Rekey to the home (i1).
    for (let i = 0; i < LIMIT - 2; i++) assert.equal(bob.h.send(spi, text(`m${i}`)), true);
    await until(() => bob.h.sas.some((s) => s.ready && s.spi !== spi) && alice.h.sas.some((s) => s.ready && s.spi !== spi), "a new SA at both ends after the rekey");
    const next = bob.h.sas.find((s) => s.ready && s.spi !== spi)!.spi;
    assert.ok(byName("i1").gw.sessions.sessions.has(next), "the home ran the rekey");
    assert.ok(byName("i3").gw.instances!.stats.forwarded >= 1, "i3 forwarded bob's session messages to the home");
    await exchange(bob, alice, next, "after the rekey");
  });

  test("the home stops: another instance takes its SAs over, and the SA carries on where the devices rejoin", async (t) => {
    if (!db) return t.skip("no PostgreSQL");
    const alice = handsets.find((h) => h.id === "alice")!;
    const bob = handsets.find((h) => h.id === "bob")!;
    const spi = alice.h.sas.filter((s) => s.ready).at(-1)!.spi;
    const home = byName("i1");
    moveTo(alice, "i2");
    await home.gw.stop();
    instances.splice(instances.indexOf(home), 1);
    await until(() => alice.h.status().state === "down", "alice's link gone with i1");
    await alice.reconnect();
    await until(() => alice.h.status().state === "linked", "alice rejoined at i2");
    await until(() => [byName("i2"), byName("i3")].some((i) => i.gw.sessions.sessions.has(spi)), "the SA taken over by i2 or i3");
    const takers = [byName("i2"), byName("i3")].filter((i) => i.gw.sessions.sessions.has(spi));
    assert.equal(takers.length, 1, "exactly one instance took the SA over");
    await exchange(alice, bob, spi, "after the home left");
    assert.deepEqual(alice.closed, [], "no SA ended at alice");
    assert.deepEqual(bob.closed.filter(([s]) => s === spi), [], "nor at bob");
  });

  test("a revocation at one instance ends the device's SAs and closes its link at the others", async (t) => {
    if (!db) return t.skip("no PostgreSQL");
    const alice = handsets.find((h) => h.id === "alice")!; // at i2
    const bob = handsets.find((h) => h.id === "bob")!; // at i3
    const spi = alice.h.sas.filter((s) => s.ready).at(-1)!.spi;
    assert.equal(await byName("i3").gw.revokeDevice("alice", "lost"), true);
    await until(() => alice.closed.some(([s, r]) => s === spi && r === CloseReason.Revoked), "alice told her SA ended (revoked)");
    await until(() => bob.closed.some(([s, r]) => s === spi && r === CloseReason.Revoked), "bob told the SA ended (revoked)");
    await until(() => !byName("i2").gw.links.links.has("alice"), "alice's link at i2 closed");
  });

  test("a second process under an instance name that is online is refused before it says anything on the bus", async (t) => {
    if (!db) return t.skip("no PostgreSQL");
    const before = instances.length;
    await assert.rejects(startInstance("i2"), (e: Error) => e instanceof GatewayIdInUse && /instance "i2" of a\.example is online/.test(e.message));
    assert.equal(instances.length, before);
    assert.ok(byName("i3").gw.instances!.others.includes("i2"), "i3 still sees i2 online");
  });

  test("an instance cut off from the broker: another takes its SAs over, and on reconnecting it forgets them", async (t) => {
    if (!db) return t.skip("no PostgreSQL");
    const carol = await handset("carol", "i2");
    const dave = await handset("dave", "i3");
    await until(() => carol.h.status().registered && dave.h.status().registered && byName("i2").gw.instances!.isLinked("dave"), "carol and dave registered, i2 knowing where dave is");
    const spi = await connectPair(carol, dave, APP);
    const i2 = byName("i2");
    assert.ok(i2.gw.sessions.sessions.has(spi), "the SA runs at i2, carol's instance");
    // Only i2's bus connection drops (its links stay): the broker publishes i2's last-will.
    (i2.gw.instances as unknown as { bus: { client: { stream: { destroy(): void } } } }).bus.client.stream.destroy();
    await until(() => byName("i3").gw.sessions.sessions.has(spi), "i3 took the SA over on i2's last-will");
    await until(() => i2.events("instance-resynced").length > 0, "i2 back on the bus, read again from the registry");
    assert.ok(!i2.gw.sessions.sessions.has(spi), "i2 forgot the SA it no longer runs");
    // Its SPIs claimed ahead went with the takeover (unconfirmed rows): it forgot them too.
    assert.equal(i2.gw.instances!.spisInReserve, 0, "i2's reserve forgotten");
    assert.equal(Number((await i2.gw.store.row("SELECT count(*) AS n FROM live_sessions WHERE home = 'i2' AND initiator = ?", [RESERVED]))!.n), 0, "and no reservation of i2's left in the table");
    await exchange(carol, dave, spi, "after the cut");
  });

  test("an instance started after another died (its last-will retained) starts and takes part", async (t) => {
    if (!db) return t.skip("no PostgreSQL");
    // i1 stopped earlier: the broker holds its "gone", which reaches i4 as it subscribes, before the
    // gateway around it is ready.
    const i4 = await startInstance("i4");
    await until(() => i4.gw.instances!.others.includes("i3"), "i4 sees i3 online");
    const erin = await handset("erin", "i4");
    const frank = handset("frank", "i3");
    const f = await frank;
    await until(() => erin.h.status().registered && f.h.status().registered && i4.gw.instances!.isLinked("frank"), "erin and frank registered");
    const spi = await connectPair(erin, f, APP);
    await exchange(erin, f, spi, "from i4");
    assert.deepEqual(i4.events("registry-error").concat(i4.events("instance-bus-handler-failed")), [], "nothing of it failed at i4");
  });

  test("both ends ask for a rekey at once, one of them through another instance: one replacement", async (t) => {
    if (!db) return t.skip("no PostgreSQL");
    const erin = handsets.find((h) => h.id === "erin")!; // at i4, the SA's home
    const frank = handsets.find((h) => h.id === "frank")!; // at i3
    const spi = erin.h.sas.filter((s) => s.ready).at(-1)!.spi;
    const home = byName("i4");
    const before = home.gw.sessions.stats.rekeyed;
    // Each side reaches its rekey point in the same turn: both Rekeys are on their way together.
    for (let i = 0; i < LIMIT - 2; i++) {
      assert.equal(erin.h.send(spi, text(`e${i}`)), true);
      assert.equal(frank.h.send(spi, text(`f${i}`)), true);
    }
    await until(() => erin.h.sas.some((s) => s.ready && s.spi !== spi) && frank.h.sas.some((s) => s.ready && s.spi !== spi), "the replacement up at both ends");
    await until(() => !home.gw.sessions.sessions.has(spi), "the old SA gone from its home after the overlap", 15_000);
    assert.equal(home.gw.sessions.stats.rekeyed - before, 1, "one replacement");
    assert.equal(home.events("session-keys-distributed").filter((e) => e.replaces === spiText(spi)).length, 1, "one key distribution replacing it");
  });

  test("monitoring: each device's retained state is shown by the instance it is linked to, and by no other", async (t) => {
    if (!db) return t.skip("no PostgreSQL");
    /** Device -> the instances whose retained state for it the broker holds now. */
    const retained = async (): Promise<Map<string, string[]>> => {
      const client = await mqtt.connectAsync(broker.url, { protocolVersion: 4 });
      try {
        const shown = new Map<string, string[]>();
        const marker = `kp-test/marker/${Date.now()}`;
        let marked = false;
        client.on("message", (topic, payload, packet) => {
          marked ||= topic === marker;
          const m = /^keyproxy\/v1\/([^/]+)\.a\.example\/devices\/([^/]+)\/state$/.exec(topic);
          if (!m || !packet.retain || payload.length === 0) return;
          shown.set(m[2], [...(shown.get(m[2]) ?? []), m[1]]);
        });
        await client.subscribeAsync(["keyproxy/v1/+/devices/+/state", marker]);
        // The retained states come with the subscription, before anything published after it.
        await client.publishAsync(marker, "x");
        await until(() => marked, "the marker behind the retained states");
        return shown;
      } finally {
        await client.endAsync();
      }
    };
    const linkedAt = (id: string) => instances.filter((i) => i.gw.links.links.has(id)).map((i) => i.name);
    const wrong = (shown: Map<string, string[]>) => handsets.filter((h) => JSON.stringify(shown.get(h.id) ?? []) !== JSON.stringify(linkedAt(h.id)));
    // A link made moments ago is published as soon as its instance has read the device's row: the
    // retained states are read again until they settle (a loaded machine), then checked.
    let shown = await retained();
    for (let tries = 0; wrong(shown).length && tries < 50; tries++) {
      await new Promise((r) => setTimeout(r, 100));
      shown = await retained();
    }
    for (const h of handsets) assert.deepEqual(shown.get(h.id) ?? [], linkedAt(h.id), `${h.id}: shown by ${linkedAt(h.id).join(",") || "no instance"} only`);
    assert.ok(handsets.some((h) => (shown.get(h.id) ?? []).length === 1), "some device is shown");
  });
});

