// Instances of a domain as an operator runs them (issue 12, scope 2): `keyproxy gateway --instance`
// processes on one PostgreSQL registry and one broker (Mosquitto when KEYPROXY_TEST_MQTT_URL names
// one, as CI does; else the in-process broker), each with its own data directory holding copies of the
// domain's gateway.key and keyproxy.kek. Handsets (the firmware's Handset engine in Node) join
// instances at random, as behind a TCP load balancer; sessions run across instances; the instance
// running SAs is killed with SIGKILL; its handsets rejoin the others within the documented bound
// (docs/SCALING.md) and every SA carries on. No registration is lost and no join counter reused. The
// instance keeping a group is killed too: the next one replaces the key and messages flow on.
// Domain b.example runs 2 instances on the bridged broker (KEYPROXY_TEST_MQTT_BRIDGED_URL) when there
// is one: instances of one domain must share a broker, domains need not.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { copyFileSync } from "node:fs";
import { join } from "node:path";
import { openStore } from "../gateway/gateway.ts";
import { startBroker, type EmbeddedBroker } from "../gateway/monitor/embedded-broker.ts";
import { KEK_FILE } from "../gateway/registry/kek.ts";
import { spiText } from "../gateway/log/protocol-names.ts";
import { KeyGroups } from "../gateway/registry/key-groups.ts";
import { Policy } from "../gateway/registry/policy.ts";
import type { Store } from "../gateway/registry/store.ts";
import { tempDir, until } from "./support/harness.ts";
import { startGatewayProcess, type GatewayProcess } from "./support/process.ts";
import { testDatabase, type TestDatabase } from "./support/postgres.ts";
import { connectPair, exchange, sessionHandset, type SessionHandset } from "./support/session-rig.ts";

/** docs/SCALING.md, "Instances of a domain": a handset of a killed instance is linked again within
 *  this, counted from the kill (its reconnection here is at once, as a load balancer's would be). */
const REJOIN_BOUND_MS = 5000;
const APP = "chat";

interface Domain {
  name: string;
  url: string;
  db: TestDatabase;
  store: Store;
  instances: Map<string, GatewayProcess>;
  handsets: SessionHandset[];
  keys: Map<string, Uint8Array>;
}

describe("instances of a domain as processes: kill -9 and the handsets rejoin elsewhere", { timeout: 240_000 }, () => {
  let broker: EmbeddedBroker | undefined;
  const domains: Domain[] = [];

  async function startDomain(name: string, url: string, instanceNames: string[], t: unknown): Promise<Domain | undefined> {
    const db = await testDatabase(t as never);
    if (!db) return undefined;
    const dirs = instanceNames.map(() => tempDir());
    const instances = new Map<string, GatewayProcess>();
    const d: Domain = { name, url, db, store: undefined as unknown as Store, instances, handsets: [], keys: new Map() };
    domains.push(d);
    for (const [i, inst] of instanceNames.entries()) {
      // The first makes the domain's KEK and gateway key; the others get copies (docs/SCALING.md).
      if (i > 0) for (const f of ["gateway.key", KEK_FILE]) copyFileSync(join(dirs[0], f), join(dirs[i], f));
      instances.set(inst, await startGatewayProcess(dirs[i], 0, ["--id", name, "--instance", inst, "--db", db.url, "--mqtt", url, "--no-fleet", "--metrics", "3600"]));
    }
    d.store = await openStore(dirs[0], db.url);
    await new Policy(d.store).setDefault("allow");
    return d;
  }

  /** A live instance at random: what a load balancer in front of them would pick. */
  const anyInstance = (d: Domain) => () => {
    const live = [...d.instances.values()].filter((p) => p.child.exitCode === null && p.child.signalCode === null);
    return { host: "127.0.0.1", port: live[Math.floor(Math.random() * live.length)].port };
  };

  async function addHandset(d: Domain, id: string): Promise<SessionHandset> {
    const key = new Uint8Array(randomBytes(16));
    await d.store.addDevice(id, key, "puckjs", Math.floor(Date.now() / 1000));
    d.keys.set(id, key);
    const target = anyInstance(d);
    const h = await sessionHandset({ address: target() }, id, key, { target });
    d.handsets.push(h);
    return h;
  }

  before(async (t) => {
    const a = process.env.KEYPROXY_TEST_MQTT_URL ?? (broker = await startBroker({ host: "127.0.0.1", port: 0 })).url;
    await startDomain("a.example", a, ["a1", "a2", "a3"], t);
    const b = process.env.KEYPROXY_TEST_MQTT_BRIDGED_URL;
    if (b && domains.length) await startDomain("b.example", b, ["b1", "b2"], t);
  });

  after(async () => {
    for (const d of domains) {
      for (const h of d.handsets) h.close();
      for (const p of d.instances.values()) await p.stop("SIGTERM");
      await d.store?.close();
      await d.db.drop();
    }
    await broker?.close();
  });

  const homeOf = (d: Domain, spi: number): string | undefined => {
    for (const [name, p] of d.instances) if (p.events("session-up").some((e) => e.spi === spiText(spi))) return name;
    return undefined;
  };

  test("sessions across instances; the instance running them is killed; its handsets rejoin and every SA carries on", async (t) => {
    const d = domains.find((x) => x.name === "a.example");
    if (!d) return t.skip("no PostgreSQL");
    const hs: SessionHandset[] = [];
    for (let i = 0; i < 8; i++) hs.push(await addHandset(d, `h${i}`));
    await until(() => hs.every((h) => h.h.status().registered), "every handset registered", 15_000);
    const pairs: [SessionHandset, SessionHandset, number][] = [];
    for (let i = 0; i < hs.length; i += 2) pairs.push([hs[i], hs[i + 1], await connectPair(hs[i], hs[i + 1], APP)]);
    for (const [a, b, spi] of pairs) await exchange(a, b, spi, "before");
    const counters = new Map<string, number>();
    for (const h of hs) counters.set(h.id, (await d.store.getDevice(h.id))!.joinCounter);

    // The instance that runs the most SAs is the one killed.
    const homes = pairs.map(([, , spi]) => homeOf(d, spi));
    assert.ok(homes.every((h) => h !== undefined), `each SA's home found in the logs: ${homes.join(",")}`);
    const victim = [...d.instances.keys()].sort((x, y) => homes.filter((h) => h === y).length - homes.filter((h) => h === x).length)[0];
    const linkedThere = hs.filter((h) => d.instances.get(victim)!.events("joined").some((e) => e.device === h.id));
    const killedAt = Date.now();
    await d.instances.get(victim)!.stop("SIGKILL");
    d.instances.delete(victim);

    // Its handsets see their link go and come back, at a live instance (anyInstance skips the dead one).
    for (const h of hs) {
      if (h.h.status().state !== "down" && !linkedThere.includes(h)) continue;
      await until(() => h.h.status().state === "down" || h.socket.destroyed, `${h.id}'s link to the killed instance gone`);
      await h.reconnect();
    }
    await until(() => hs.every((h) => h.h.status().state === "linked"), "every handset linked again", REJOIN_BOUND_MS);
    const rejoinMs = Date.now() - killedAt;
    assert.ok(rejoinMs <= REJOIN_BOUND_MS, `rejoined within the bound: ${rejoinMs} ms`);

    // Every SA carries on: taken over where its home died, relayed wherever its devices are now.
    for (const [a, b, spi] of pairs) await exchange(a, b, spi, "after");
    for (const h of hs) assert.deepEqual(h.closed, [], `no SA ended at ${h.id}`);
    const takenOver = [...d.instances.values()].flatMap((p) => p.events("instance-gone")).reduce((n, e) => n + Number(e.takenOver), 0);
    assert.equal(takenOver, homes.filter((h) => h === victim).length, "each SA of the killed instance taken over once");

    // Nothing lost in the registry, and every rejoin used a counter above the last.
    for (const h of hs) {
      const row = await d.store.getDevice(h.id);
      assert.ok(row && row.revokedAt === null, `${h.id} still in the registry`);
      assert.ok((await d.store.getRegistration(h.id))!.expiresAt > Date.now() / 1000, `${h.id}'s registration kept`);
      if (linkedThere.includes(h)) assert.ok(row.joinCounter > counters.get(h.id)!, `${h.id} joined again with a higher counter`);
    }
  });

  test("the instance keeping a group is killed: the next one replaces the group's key, and messages flow on", async (t) => {
    const d = domains.find((x) => x.name === "a.example");
    if (!d) return t.skip("no PostgreSQL");
    const members: SessionHandset[] = [];
    for (let i = 0; i < 3; i++) members.push(await addHandset(d, `g${i}`));
    await until(() => members.every((h) => h.h.status().registered), "every member registered", 15_000);
    // Made in the registry as `keyproxy group` does: the keeper sees it at its next poll.
    const groups = new KeyGroups(d.store);
    await groups.create("crew", APP, Math.floor(Date.now() / 1000));
    for (const h of members) await groups.add("crew", h.id, Math.floor(Date.now() / 1000));
    const groupSa = (h: SessionHandset, not = 0) => h.h.sas.find((s) => s.ready && s.peer === "crew@a.example" && s.spi !== not);
    await until(() => members.every((h) => groupSa(h)?.spi === groupSa(members[0])?.spi && groupSa(h)), "one group key at every member", 15_000);
    const old = groupSa(members[0])!.spi;
    const say = async (tag: string, spi: number) => {
      assert.equal(members[0].h.send(spi, new Uint8Array(Buffer.from(tag, "latin1"))), true);
      await until(() => members.slice(1).every((h) => h.inbox.includes(tag)), `"${tag}" at the two others`, 10_000);
    };
    await say("before the keeper died", old);

    // The keeper: the live instance whose last word on it was "keeping".
    const keeper = [...d.instances].find(([, p]) => p.events("group-keeper").at(-1)?.keeping === true)?.[0];
    assert.ok(keeper, "one live instance keeps the groups");
    const linkedThere = members.filter((h) => d.instances.get(keeper)!.events("joined").some((e) => e.device === h.id));
    await d.instances.get(keeper)!.stop("SIGKILL");
    d.instances.delete(keeper);
    for (const h of linkedThere) {
      await until(() => h.h.status().state === "down" || h.socket.destroyed, `${h.id}'s link to the killed keeper gone`);
      await h.reconnect();
    }
    await until(() => members.every((h) => groupSa(h, old)?.spi === groupSa(members[0], old)?.spi && groupSa(h, old)), "a new group key at every member", 20_000);
    const next = groupSa(members[0], old)!.spi;
    const successor = [...d.instances].find(([, p]) => p.events("group-keeper").some((e) => e.keeping === true && Number(e.inherited) >= 1));
    assert.ok(successor, "a live instance took the part over and found the old key to replace");
    await say("after the keeper died", next);
    for (const h of members) assert.deepEqual(h.closed.filter(([s]) => s === old), [], `${h.id}'s old key was replaced, not ended`);
  });

  test("a second domain on the bridged broker runs its own instances beside the first", async (t) => {
    const d = domains.find((x) => x.name === "b.example");
    if (!d) return t.skip(process.env.KEYPROXY_TEST_MQTT_BRIDGED_URL ? "no PostgreSQL" : "KEYPROXY_TEST_MQTT_BRIDGED_URL is not set: no bridged Mosquitto here (.ci/run starts one)");
    const x = await addHandset(d, "x");
    const y = await addHandset(d, "y");
    await until(() => x.h.status().registered && y.h.status().registered, "both registered", 15_000);
    const spi = await connectPair(x, y, APP);
    await exchange(x, y, spi, "b");
  });
});
