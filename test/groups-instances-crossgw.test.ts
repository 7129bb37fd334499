// A group kept by a domain of instances, with a member in another domain (gateway/crossgw/groups-remote.ts
// with gateway/sessions/groups.ts GroupSharing): a.example runs two in-process instances on one
// PostgreSQL registry, b.example one gateway, in one fleet on Mosquitto (the interlink reaches a domain
// of instances through an MQTT shared subscription, which aedes lacks: KEYPROXY_TEST_MQTT_URL, as CI
// runs it, else a private Mosquitto). The keeper (a1) watches bob@b.example and keys him; b.example
// answers the keeper's instance, not any instance of a.example: bob's confirmation, his status and his
// frames reach a1. When a1 stops, a2 keeps the group, watches bob anew and replaces the key as a rekey
// does; bob's gateway then sends to a2.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { Msg } from "../firmware/proto/messages.ts";
import { Fleet, loadGatewayCredentials } from "../gateway/fleet/fleet.ts";
import type { GroupLink } from "../gateway/crossgw/groups-remote.ts";
import { fleetDataDir } from "./support/fleet-rig.ts";
import { provision, startGateway, tempDir, until, type TestGateway } from "./support/harness.ts";
import { findMosquitto, startMosquitto, type PrivateMosquitto } from "./support/mosquitto.ts";
import { testDatabase, type TestDatabase } from "./support/postgres.ts";
import { sessionHandset, type SessionHandset } from "./support/session-rig.ts";

const text = (s: string) => new Uint8Array(Buffer.from(s, "latin1"));
const now = () => Math.floor(Date.now() / 1000);
/** What an instance's data directory copies from the first one's: the domain's keys and certificates. */
const NOT_COPIED = /^(keyproxy\.db.*|gateway\.lock|gateway\.log)$/;
const BOB = "bob@b.example";

describe("a group kept by a domain of instances, with a member in another domain", { timeout: 120_000 }, () => {
  let mosquitto: PrivateMosquitto | undefined;
  let url: string | undefined;
  let db: TestDatabase | undefined;
  let fleet: Fleet;
  let firstDir = "";
  const gws = new Map<string, TestGateway>();
  const devs = new Map<string, SessionHandset>();
  const targets = new Map<string, string>();

  async function start(name: string, domain: string, o: { instance?: boolean } = {}): Promise<TestGateway> {
    let dataDir: string;
    if (o.instance && firstDir) {
      dataDir = tempDir("kp-grp-inst-");
      for (const f of readdirSync(firstDir)) if (!NOT_COPIED.test(f) && statSync(join(firstDir, f)).isFile()) copyFileSync(join(firstDir, f), join(dataDir, f));
    } else {
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

  const gw = (n: string) => gws.get(n)!.gw;
  const dev = (n: string) => devs.get(n)!;

  async function handset(id: string, at: string): Promise<SessionHandset> {
    targets.set(id, at);
    const local = id.split("@")[0];
    const h = await sessionHandset(gw(at), local, await provision(gw(at), local), { target: () => gw(targets.get(id)!).address });
    devs.set(id, h);
    await until(() => h.h.status().registered, `${id} registered`);
    return h;
  }

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

  async function exchange(spi: number, tag: string): Promise<void> {
    for (const [from, to] of [["ana", BOB], [BOB, "ana"]]) {
      const msg = `${tag} from ${from}`;
      assert.equal(dev(from).h.send(spi, text(msg)), true, `${from} may send`);
      await until(() => dev(to).inbox.includes(msg), `"${msg}" at ${to}`, 10_000);
      assert.equal(dev(to).inbox.filter((m) => m === msg).length, 1, `"${msg}" arrived once`);
    }
  }

  before(async (t) => {
    url = process.env.KEYPROXY_TEST_MQTT_URL;
    if (!url) {
      const bin = findMosquitto();
      if (!bin) {
        if (process.env.CI === "true") throw new Error("CI=true and no Mosquitto: .ci/run installs it and sets KEYPROXY_TEST_MQTT_URL");
        return;
      }
      mosquitto = await startMosquitto(bin);
      url = mosquitto.url;
    }
    db = await testDatabase(t as never);
    if (!db) return;
    fleet = Fleet.create(tempDir("kp-grp-inst-fleet-"), "kp-fleet", now());
    await start("a1", "a.example", { instance: true });
    await start("a2", "a.example", { instance: true });
    await start("b", "b.example");
  });

  after(async () => {
    for (const h of devs.values()) h.close();
    for (const t of gws.values()) await t.gw.stop().catch(() => undefined);
    await db?.drop();
    await mosquitto?.kill();
  });

  const skipped = (t: { skip(m: string): void }) => {
    if (db && url) return false;
    t.skip(url ? "no PostgreSQL" : "no Mosquitto here (.ci/run installs it): a domain of instances needs shared subscriptions");
    return true;
  };

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
