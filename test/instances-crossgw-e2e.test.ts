// Sessions across domains whose gateways run as several instances (issue 12, scope 2): a.example runs
// three `keyproxy gateway --instance` processes and b.example two, each domain on its own PostgreSQL
// registry, with their fleet certificates (the same for every instance of a domain). The interlink
// reaches a domain through an MQTT shared subscription, so the broker must have them: Mosquitto
// (KEYPROXY_TEST_MQTT_URL, and b.example on the bridged KEYPROXY_TEST_MQTT_BRIDGED_URL, as CI runs them;
// else a private Mosquitto for both, when one is installed). Handsets join instances at random; pairs
// across the two domains set up SAs, so that the exchange, the callee's answer, the key confirmations
// and the frames cross instances on each side as well as the interlink; the SAs are rekeyed and
// carry on. Then an instance of b.example running SAs across domains is killed with SIGKILL, and one
// of a.example is stopped: another instance of its domain takes their SAs over from their rows and
// tells the other domain (kp.x.moved), the handsets rejoin, and the SAs carry on and rekey.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { openStore } from "../gateway/gateway.ts";
import { Policy } from "../gateway/registry/policy.ts";
import type { Store } from "../gateway/registry/store.ts";
import { CloseReason } from "../firmware/proto/messages.ts";
import { spiText } from "../gateway/log/protocol-names.ts";
import { tempDir, until } from "./support/harness.ts";
import { copyDomainFiles } from "./support/instance-rig.ts";
import { findMosquitto, startMosquitto, type PrivateMosquitto } from "./support/mosquitto.ts";
import { startGatewayProcess, type GatewayProcess } from "./support/process.ts";
import { testDatabase, type TestDatabase } from "./support/postgres.ts";
import { runCli } from "./support/run-cli.ts";
import { connectPair, exchange, sessionHandset, type SessionHandset } from "./support/session-rig.ts";

const APP = "chat";
const LIMIT = 10; // messages per direction: a device asks for a rekey at 8
const text = (s: string) => new Uint8Array(Buffer.from(s, "latin1"));

interface Domain {
  name: string;
  db: TestDatabase;
  store: Store;
  instances: Map<string, GatewayProcess>;
}

describe("sessions across domains, each domain running several instances", { timeout: 300_000 }, () => {
  let mosquitto: PrivateMosquitto | undefined;
  const domains = new Map<string, Domain>();
  const handsets: SessionHandset[] = [];
  const run = randomBytes(3).toString("hex");
  const fleetDir = tempDir("kp-ixe2e-fleet-");

  async function startDomain(name: string, url: string, names: string[], t: unknown): Promise<Domain | undefined> {
    const db = await testDatabase(t as never);
    if (!db) return undefined;
    const dirs = names.map(() => tempDir("kp-ixe2e-"));
    const issued = await runCli(["fleet", "issue-gateway", "--fleet-dir", fleetDir, "--id", name, "--data-dir", dirs[0]]);
    assert.equal(issued.code, 0, issued.stderr);
    const d: Domain = { name, db, store: undefined as unknown as Store, instances: new Map() };
    domains.set(name, d);
    for (const [i, inst] of names.entries()) {
      if (i > 0) copyDomainFiles(dirs[0], dirs[i]);
      const p = await startGatewayProcess(dirs[i], 0, ["--id", name, "--instance", inst, "--db", db.url, "--mqtt", url, "--sa-limit", String(LIMIT), "--metrics", "3600"]);
      d.instances.set(inst, p);
      await until(() => p.events("interlink-started").length === 1, `${inst}.${name}'s interlink`, 15_000);
    }
    d.store = await openStore(dirs[0], db.url);
    await new Policy(d.store).setDefault("allow");
    return d;
  }

  const live = (d: Domain) => [...d.instances.values()].filter((p) => p.child.exitCode === null && p.child.signalCode === null);

  async function addHandset(d: Domain, id: string): Promise<SessionHandset> {
    const key = new Uint8Array(randomBytes(16));
    await d.store.addDevice(id, key, "puckjs", Math.floor(Date.now() / 1000));
    const target = () => {
      const l = live(d);
      return { host: "127.0.0.1", port: l[Math.floor(Math.random() * l.length)].port };
    };
    // The first link round-robin over the instances (every path between instances taken for sure),
    // later ones at random, as behind a load balancer.
    const first = live(d)[handsets.filter((x) => x.id.startsWith(id.slice(0, 2))).length % live(d).length];
    const h = await sessionHandset({ address: { host: "127.0.0.1", port: first.port } }, id, key, { target });
    handsets.push(h);
    return h;
  }

  before(async (t) => {
    let a = process.env.KEYPROXY_TEST_MQTT_URL;
    let b = process.env.KEYPROXY_TEST_MQTT_BRIDGED_URL ?? a;
    if (!a) {
      const bin = findMosquitto();
      if (!bin) return;
      mosquitto = await startMosquitto(bin);
      a = b = mosquitto.url;
    }
    const created = await runCli(["fleet", "create", "--id", `kp-ixe2e-${run}`, "--fleet-dir", fleetDir]);
    assert.equal(created.code, 0, created.stderr);
    if (!(await startDomain(`a-${run}.example`, a, ["a1", "a2", "a3"], t))) return;
    await startDomain(`b-${run}.example`, b!, ["b1", "b2"], t);
  });

  after(async () => {
    for (const h of handsets) h.close();
    for (const d of domains.values()) {
      for (const p of d.instances.values()) await p.stop("SIGTERM");
      await d.store?.close();
      await d.db.drop();
    }
    await mosquitto?.kill();
  });

  /** The two domains, their handsets and the newest SA of each pair the first test made. */
  function afterFirstTest() {
    const A = domains.get(`a-${run}.example`);
    const B = domains.get(`b-${run}.example`);
    if (!A || !B) return undefined;
    const as = handsets.filter((h) => h.id.startsWith("ha"));
    const bs = handsets.filter((h) => h.id.startsWith("hb"));
    const pairs = as.map((a, i) => [a, bs[i], a.h.sas.filter((s) => s.ready).at(-1)!.spi] as const);
    return { A, B, as, bs, pairs };
  }

  /** The handsets whose link went with a stopped instance connect again (to a live one). */
  async function rejoin(hs: SessionHandset[]): Promise<void> {
    for (const h of hs) {
      if (h.h.status().state !== "down" && !h.socket.destroyed) continue;
      await until(() => h.h.status().state === "down", `${h.id}'s link gone`);
      await h.reconnect();
    }
  }

  /** The instance of d that runs the most of these SAs across domains (its xsession events say so),
   *  and the pairs whose SA it runs. */
  function busiestHome<P extends readonly [SessionHandset, SessionHandset, number]>(d: Domain, pairs: P[]) {
    const homeOf = (spi: number) => [...d.instances].find(([, p]) => [...p.events("xsession-up"), ...p.events("xsession-rekeyed")].some((e) => e.spi === spiText(spi)))?.[0];
    const homes = pairs.map(([, , spi]) => homeOf(spi));
    const victim = [...d.instances.keys()].sort((x, y) => homes.filter((h) => h === y).length - homes.filter((h) => h === x).length)[0];
    return { victim, homes, hit: pairs.filter((_, i) => homes[i] === victim) };
  }

  const events = (d: Domain, e: string) => [...d.instances.values()].flatMap((p) => p.events(e));

  test("pairs across domains set up, rekey and exchange, their messages crossing instances on both sides", async (t) => {
    const A = domains.get(`a-${run}.example`);
    const B = domains.get(`b-${run}.example`);
    if (!A || !B) return t.skip(mosquitto || process.env.KEYPROXY_TEST_MQTT_URL ? "no PostgreSQL" : "no Mosquitto here (the interlink of instances needs shared subscriptions, which the in-process broker lacks)");
    const as: SessionHandset[] = [];
    const bs: SessionHandset[] = [];
    for (let i = 0; i < 4; i++) as.push(await addHandset(A, `ha${i}`));
    for (let i = 0; i < 4; i++) bs.push(await addHandset(B, `hb${i}`));
    await until(() => [...as, ...bs].every((h) => h.h.status().registered), "every handset registered", 15_000);
    const pairs: [SessionHandset, SessionHandset, number][] = [];
    for (let i = 0; i < 4; i++) pairs.push([as[i], bs[i], await connectPair(as[i], bs[i], APP, `${bs[i].id}@${B.name}`)]);
    for (const [a, b, spi] of pairs) await exchange(a, b, spi, "first");
    // The callee's gateway instance that took message 1 (shared subscription) is not always where the
    // callee is linked: its Incoming, the Answer and the key confirmation then crossed b's instances.
    assert.equal(events(A, "xsession-up").length + events(B, "xsession-up").length, 8, "each SA up at both domains' gateways once");
    // A rekey of each: the answering side's device asks past the limit's rekey point.
    for (const [a, b, spi] of pairs) {
      for (let i = 0; i < LIMIT - 2; i++) assert.equal(b.h.send(spi, text(`r${i}`)), true);
      await until(() => a.h.sas.some((s) => s.ready && s.spi !== spi) && b.h.sas.some((s) => s.ready && s.spi !== spi), `${a.id}'s SA rekeyed`, 15_000);
      const next = b.h.sas.find((s) => s.ready && s.spi !== spi)!.spi;
      await exchange(a, b, next, "rekeyed");
    }
    for (const h of [...as, ...bs]) assert.deepEqual(h.closed.filter(([, r]) => r !== CloseReason.Expired), [], `no SA ended at ${h.id}`);
  });

  /** Each of these SAs is rekeyed (its `asker` sends past the rekey point) and carries on; the newest. */
  async function rekeyed(pairs: (readonly [SessionHandset, SessionHandset, number])[], asker: "a" | "b", tag: string): Promise<[SessionHandset, SessionHandset, number][]> {
    const out: [SessionHandset, SessionHandset, number][] = [];
    // The replacement: up, and not itself replaced.
    const replacement = (h: SessionHandset, spi: number) => h.h.sas.find((s) => s.ready && !s.by && s.spi !== spi);
    for (const [a, b, spi] of pairs) {
      const from = asker === "a" ? a : b;
      // Up to the rekey point (the device asks as it sends past it), counting what it sent on it already.
      for (let i = 0; i < LIMIT - 2 && from.h.send(spi, text(`${tag}${i}`)); i++);
      await until(() => !!replacement(a, spi) && !!replacement(b, spi), `${a.id}'s SA ${spiText(spi)} rekeyed (${tag})`, 20_000);
      const next = replacement(b, spi)!.spi;
      assert.equal(replacement(a, spi)!.spi, next, "the same replacement at both devices");
      await exchange(a, b, next, tag);
      out.push([a, b, next]);
    }
    return out;
  }

  test("an instance running SAs across domains is killed: another takes them over, tells the other domain, and they carry on and rekey", async (t) => {
    const sides = afterFirstTest();
    if (!sides) return t.skip("no PostgreSQL or no Mosquitto (see above)");
    const { A, B, as, bs, pairs } = sides;
    // The b instance that runs the most of them (it took their message 1) is killed.
    const { victim, hit, homes } = busiestHome(B, pairs);
    assert.ok(hit.length > 0, `an SA across domains runs at ${victim}: homes ${homes.join(",")}`);
    await B.instances.get(victim)!.stop("SIGKILL");
    B.instances.delete(victim);
    await rejoin(bs);
    await until(() => bs.every((h) => h.h.status().state === "linked"), "b's handsets linked again", 5000);
    // One live b instance took each over and told a.example's instance that runs it (kp.x.moved).
    for (const [, , spi] of hit) {
      await until(() => events(B, "xsession-taken-over").some((e) => e.spi === spiText(spi)), `SA ${spiText(spi)} taken over at b`, 10_000);
      await until(() => events(A, "xsession-peer-moved").some((e) => e.spi === spiText(spi)), `a.example told where SA ${spiText(spi)} runs now`, 10_000);
    }
    assert.equal(events(B, "xsession-taken-over").length, hit.length, "each taken over once");
    for (const [a, b, spi] of pairs) await exchange(a, b, spi, "after the kill");
    // The callee's side asks for the rekey: its new home's notice reaches a's, which runs the exchange
    // with the new home.
    await rekeyed(hit, "b", "rekey after the kill");
    for (const h of [...as, ...bs]) assert.deepEqual(h.closed.filter(([, r]) => r !== CloseReason.Expired), [], `no SA ended at ${h.id}`);
  });

  test("an instance running SAs across domains is stopped: another takes them over and they carry on and rekey", async (t) => {
    const sides = afterFirstTest();
    if (!sides) return t.skip("no PostgreSQL or no Mosquitto (see above)");
    const { A, B, as, bs } = sides;
    // The pairs' SAs now (the last test replaced some).
    const pairs = as.map((a, i) => [a, bs[i], a.h.sas.find((s) => s.ready && !s.by)!.spi] as const);
    // The callers' side runs each SA where its caller was linked when it called.
    const { victim, hit, homes } = busiestHome(A, pairs);
    assert.ok(hit.length > 0, `an SA across domains runs at ${victim}: homes ${homes.join(",")}`);
    assert.equal(await A.instances.get(victim)!.stop("SIGTERM"), 0, "a clean stop");
    A.instances.delete(victim);
    await rejoin(as);
    for (const [, , spi] of hit) await until(() => events(B, "xsession-peer-moved").some((e) => e.spi === spiText(spi) && e.gateway === A.name), `b.example told where SA ${spiText(spi)} runs now`, 10_000);
    for (const [a, b, spi] of pairs) await exchange(a, b, spi, "after the stop");
    // The caller's side asks: its new home runs the exchange itself.
    await rekeyed(hit, "a", "rekey after the stop");
    for (const h of [...as, ...bs]) assert.deepEqual(h.closed.filter(([, r]) => r !== CloseReason.Expired), [], `no SA ended at ${h.id}`);
  });

  test("a device revoked by the fleet (revoke-device --mqtt) is revoked at every instance: its SA ends at both ends, its joins are refused", async (t) => {
    const A = domains.get(`a-${run}.example`);
    const B = domains.get(`b-${run}.example`);
    if (!A || !B) return t.skip("no PostgreSQL or no Mosquitto (see above)");
    const a = handsets.find((h) => h.id === "ha0")!;
    const b = handsets.find((h) => h.id === "hb0")!;
    const spi = await connectPair(a, b, APP, `${b.id}@${B.name}`);
    const url = process.env.KEYPROXY_TEST_MQTT_BRIDGED_URL ?? process.env.KEYPROXY_TEST_MQTT_URL ?? mosquitto!.url;
    const out = await runCli(["fleet", "revoke-device", "--fleet-dir", fleetDir, "--name", `${a.id}@${A.name}`, "--mqtt", url]);
    assert.equal(out.code, 0, out.stderr);
    await until(() => b.closed.some(([s, r]) => s === spi && r === CloseReason.Revoked), `${b.id}'s SA ended (revoked)`, 10_000);
    await until(() => a.h.status().state !== "linked", `${a.id}'s link closed`, 10_000);
    // Every live instance of a.example took the list; the registry says revoked, once.
    await until(() => live(A).every((p) => p.events("revocation-list").length > 0), "every a.example instance took the list", 10_000);
    assert.ok((await A.store.getDevice(a.id))!.revokedAt !== null, "revoked in the domain's registry");
    assert.equal(events(A, "device-revoked").filter((e) => e.device === a.id).length, 1, "revoked once, by one instance");
    // Its attempts to join again, at whichever instance, are refused.
    await a.reconnect().catch(() => undefined);
    await until(() => events(A, "join-rejected").some((e) => e.device === a.id && e.reason === "device revoked"), "a refused join", 15_000);
  });
});

