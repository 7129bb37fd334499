// What a gateway trusts, and how it learns that this changed (gateway/fleet/trust.ts): the revocation
// lists it is offered (from its file, the fleet's retained MQTT topic, its own development fleet), the
// one it keeps and republishes, and what each refusal leaves unchanged. On a real broker (the
// in-process one) with a real interlink. Written for the mutants that survived `npm run mutation --
// gateway/fleet/trust` (docs/MUTATION.md).

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import mqtt from "mqtt";
import { generateEd25519 } from "../gateway/crypto/ed25519.ts";
import { Fleet, gatewayPublicKeys, generateX25519, installGatewayCertificate, readRevocationListUnverified } from "../gateway/fleet/fleet.ts";
import { Interlink } from "../gateway/fleet/interlink.ts";
import { FleetTrust, HELD_LIST_FILE, publishRevocationList, revocationTopic, REVOCATION_TOPIC_ROOT } from "../gateway/fleet/trust.ts";
import { checkerTrust } from "../gateway/fleet/verifier.ts";
import { startVerifierService } from "../gateway/fleet/verifier-service.ts";
import { Logger } from "../gateway/log/logger.ts";
import { startBroker, type EmbeddedBroker } from "../gateway/monitor/embedded-broker.ts";

const T0 = 1_800_000_000;
const dirs: string[] = [];
after(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });
const fresh = (): string => {
  const d = mkdtempSync(join(tmpdir(), "kp-trust-"));
  dirs.push(d);
  return d;
};

let broker: EmbeddedBroker;
before(async () => { broker = await startBroker({ host: "127.0.0.1", port: 0 }); });
after(async () => { await broker.close(); });

function world(o: { fleetId?: string } = {}) {
  const fleet = Fleet.create(join(fresh(), "fleet"), o.fleetId ?? `acme-${Math.random().toString(16).slice(2, 8)}`, T0);
  const dataDir = fresh();
  const lines: Record<string, unknown>[] = [];
  const log = new Logger((l) => lines.push(JSON.parse(l) as Record<string, unknown>));
  const trust = () => new FleetTrust({ dataDir, anchor: fleet.anchor, log, now: () => T0, verifierId: "gw.example" });
  const events = (e: string) => lines.filter((l) => l.event === e);
  return { fleet, dataDir, lines, log, trust, events };
}

test("the topic is the fleet's, under keyproxy-cose/v1/fleet", () => {
  assert.equal(REVOCATION_TOPIC_ROOT, "keyproxy-cose/v1/fleet");
  assert.equal(revocationTopic("acme"), "keyproxy-cose/v1/fleet/acme/revocation");
  const w = world({ fleetId: "acme" });
  assert.equal(w.trust().topic, "keyproxy-cose/v1/fleet/acme/revocation");
});

test("a newer list is taken: kept on disk, the cached answers dropped, the listeners told, the log says where from", () => {
  const w = world();
  const t = w.trust();
  assert.equal(t.list?.serial, undefined, "no file, no list");
  const heard: number[] = [];
  const stop = t.onList((l) => heard.push(l.serial));
  assert.equal(t.offer(w.fleet.signedList(), "mqtt"), true);
  assert.equal(t.list?.serial, 1);
  assert.deepEqual(readFileSync(join(w.dataDir, HELD_LIST_FILE)), Buffer.from(w.fleet.signedList()), "kept on disk");
  const g = t.checker.generation;
  const newer = w.fleet.revoke({ devices: ["lamp@a.example"], gateways: ["bad.example"] }, T0);
  assert.equal(t.offer(newer, "mqtt"), true);
  assert.equal(t.checker.generation, g + 1, "the checker's answers are dropped");
  assert.equal(t.verifier.revocationSerial, 2);
  assert.deepEqual(heard, [1, 2]);
  const rec = w.events("revocation-list").at(-1)!;
  assert.deepEqual({ source: rec.source, serial: rec.serial, devices: rec.devices, gateways: rec.gateways, certIds: rec.certIds, nextUpdate: rec.nextUpdate },
    { source: "mqtt", serial: 2, devices: 1, gateways: 1, certIds: 0, nextUpdate: new Date((T0 + 86_400) * 1000).toISOString() });
  stop();
  t.offer(w.fleet.revoke({}, T0), "mqtt");
  assert.deepEqual(heard, [1, 2], "a listener stopped hears nothing more");
});

test("the held list again is ignored without a word; an older one, a forged one or junk is refused with a log line and changes nothing", () => {
  const w = world();
  const t = w.trust();
  const first = w.fleet.signedList();
  t.offer(first, "mqtt");
  const second = w.fleet.revoke({}, T0);
  t.offer(second, "mqtt");
  const g = t.checker.generation;
  const onDisk = readFileSync(join(w.dataDir, HELD_LIST_FILE));
  const warned = () => w.events("revocation-list-rejected").length;

  assert.equal(t.offer(second, "mqtt"), false, "a redelivery");
  assert.equal(warned(), 0, "not worth a warning");
  assert.equal(t.offer(first, "file"), false);
  assert.equal(warned(), 1);
  assert.deepEqual(w.events("revocation-list-rejected")[0], { ...w.events("revocation-list-rejected")[0], source: "file", reason: "revocation list serial 1 is not above the held serial 2" });
  const forger = Fleet.create(join(fresh(), "f"), w.fleet.fleetId, T0);
  assert.equal(t.offer(forger.revoke({}, T0), "mqtt"), false);
  assert.match(String(w.events("revocation-list-rejected").at(-1)!.reason), /does not verify/);
  assert.equal(t.offer(Uint8Array.of(1, 2, 3), "mqtt"), false);
  assert.equal(warned(), 3);
  assert.equal(t.list?.serial, 2);
  assert.equal(t.checker.generation, g, "no answer was dropped");
  assert.deepEqual(readFileSync(join(w.dataDir, HELD_LIST_FILE)), onDisk, "the file is as it was");
});

test("a restarted gateway starts from the list on its disk and takes no older one", () => {
  const w = world();
  w.trust().offer(w.fleet.signedList(), "mqtt");
  const newer = w.fleet.revoke({}, T0);
  w.trust().offer(newer, "mqtt");
  const again = w.trust();
  assert.equal(again.list?.serial, 2, "from the file");
  assert.equal(w.events("revocation-list").at(-1)!.source, "file");
  assert.equal(again.offer(readFileSync(join(w.fleet.dir, "revocation.cose")), "mqtt"), false, "the same");
  writeFileSync(join(w.dataDir, HELD_LIST_FILE), "junk");
  const junk = w.trust();
  assert.equal(junk.list, undefined, "a held file that does not verify is not taken");
  assert.match(String(w.events("revocation-list-rejected").at(-1)!.reason), /COSE_Sign1/);
});

test("a listener that throws is logged, and the others still hear; a list that cannot be saved is still taken, and logged", () => {
  const w = world();
  const t = w.trust();
  const heard: number[] = [];
  t.onList(() => { throw new Error("listener broke"); });
  t.onList((l) => heard.push(l.serial));
  t.offer(w.fleet.signedList(), "mqtt");
  assert.deepEqual(heard, [1]);
  assert.equal(w.events("revocation-list-listener-failed")[0].reason, "listener broke");
  rmSync(w.dataDir, { recursive: true });
  assert.equal(t.offer(w.fleet.revoke({}, T0), "mqtt"), true);
  assert.equal(t.list?.serial, 2);
  assert.match(String(w.events("revocation-list-not-saved")[0].reason), /ENOENT/);
});

async function attached(fleet: Fleet, t: FleetTrust): Promise<Interlink> {
  const signing = generateEd25519();
  const encryption = generateX25519();
  const certificate = fleet.issueGateway("gw.example", { signingKey: signing.publicKey, encryptionKey: encryption.publicKey }, T0);
  const link = await Interlink.connect({ url: broker.url, identity: { gatewayId: "gw.example", signing, encryption, certificate }, trust: checkerTrust(t.checker), now: () => T0, protocolVersion: 4 });
  await t.attach(link);
  return link;
}

const serialOf = (b: Buffer): number => {
  try {
    return readRevocationListUnverified(new Uint8Array(b)).serial;
  } catch {
    return -1;
  }
};

test("attached to the interlink: the held list is published retained, newer lists from the topic are taken, and an older one there is answered with the newest", async () => {
  const w = world();
  const first = w.fleet.signedList(); // serial 1: what a replay would carry
  const t = w.trust();
  t.offer(w.fleet.revoke({}, T0), "mqtt"); // serial 2, held
  const link = await attached(w.fleet, t);
  const watcher = await mqtt.connectAsync(broker.url, { protocolVersion: 4 });
  const seen: number[] = [];
  const arrived = (serial: number) => new Promise<void>((resolve) => watcher.on("message", (_topic, payload) => { if (serialOf(payload) === serial) resolve(); }));
  watcher.on("message", (_topic, payload) => seen.push(serialOf(payload)));
  try {
    const two = arrived(2);
    await watcher.subscribeAsync(t.topic, { qos: 1 });
    await two;
    assert.equal(seen[0], 2, "the held list, retained");

    const serials: number[] = [];
    t.onList((l) => serials.push(l.serial));
    await publishRevocationList(broker.url, w.fleet.fleetId, w.fleet.revoke({ devices: ["x@y.example"] }, T0));
    for (let i = 0; i < 100 && t.list?.serial !== 3; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(t.list?.serial, 3, "a newer list from the topic is taken");

    // An older list retained on the topic (a replay): refused, and the newest published over it.
    const three = arrived(3);
    await watcher.publishAsync(t.topic, Buffer.from(first), { qos: 1, retain: true });
    await three;
    assert.equal(t.list?.serial, 3);
    assert.deepEqual(serials, [3]);
    assert.equal(w.events("revocation-list-rejected").at(-1)!.reason, "revocation list serial 1 is not above the held serial 3");
  } finally {
    t.close();
    await watcher.endAsync();
    await link.close();
  }
});

test("a development fleet's gateway takes its own list at start and re-signs it at half its lifetime", async () => {
  const w = world();
  const dev = Fleet.create(join(fresh(), "dev"), "dev-gw", T0, 120); // refreshed 60 s after it was issued
  let now = T0;
  const t = new FleetTrust({ dataDir: w.dataDir, anchor: dev.anchor, log: w.log, now: () => now, verifierId: "gw.example", devFleet: dev });
  assert.equal(t.list?.serial, 1);
  assert.equal(w.events("revocation-list")[0].source, "dev-fleet");
  assert.ok(existsSync(join(w.dataDir, HELD_LIST_FILE)));
  now = T0 + 59; // one second before it is due
  const link = await attached(dev, t);
  try {
    const held = () => t.list; // read afresh: the timer replaces it
    for (let i = 0; i < 150 && held()?.serial !== 2; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(held()?.serial, 2, "re-signed when due");
    assert.equal(held()?.issuedAt, T0 + 59);
    assert.equal(w.events("revocation-list").at(-1)!.source, "dev-fleet");
  } finally {
    t.close();
    await link.close();
  }
});

test("the local checker answers from the held list; with no list held nothing is published, and a list published by the fleet CLI stays retained for gateways that start later", async () => {
  const w = world();
  const t = w.trust();
  const link = await attached(w.fleet, t);
  const watcher = await mqtt.connectAsync(broker.url, { protocolVersion: 4 });
  try {
    const some = w.fleet.issueGateway("other.example", { signingKey: generateEd25519().publicKey, encryptionKey: generateX25519().publicKey }, T0);
    assert.equal((await t.checker.check(some, [], T0)).status, "revocation-unknown", "no list held: nothing is good");
    const seen: Buffer[] = [];
    watcher.on("message", (_topic, payload) => seen.push(payload));
    await watcher.subscribeAsync(t.topic, { qos: 1 });
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(seen, [], "nothing held, nothing published");
    assert.equal(w.events("revocation-list-not-published").length, 0);

    await publishRevocationList(broker.url, w.fleet.fleetId, w.fleet.signedList());
    for (let i = 0; i < 100 && !t.list; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal((await t.checker.check(some, [], T0)).status, "good", "judged with the list taken");
    const later = await mqtt.connectAsync(broker.url, { protocolVersion: 4 });
    try {
      const got = new Promise<Buffer>((resolve) => later.on("message", (_topic, payload) => resolve(payload)));
      await later.subscribeAsync(revocationTopic(w.fleet.fleetId), { qos: 1 });
      assert.equal(serialOf(await got), 1, "retained for a subscriber that comes later");
    } finally {
      await later.endAsync();
    }
    // Offered again from its file or refused from MQTT for another reason: not published again.
    const before = seen.length;
    const forger = Fleet.create(join(fresh(), "forger"), w.fleet.fleetId, T0);
    t.offer(forger.revoke({}, T0), "mqtt");
    t.offer(w.fleet.signedList(), "file");
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(seen.length, before, "only an older list on the topic is answered with the held one");
  } finally {
    t.close();
    await watcher.endAsync();
    await link.close();
  }
});

test("a development fleet's refresh is not early: at half its lifetime, never more than 24 days ahead, and not after close()", async () => {
  const w = world();
  for (const [lifetime, now, what] of [[300, T0 + 59, "due at 150 s, not at 60"], [100 * 86_400, T0, "due in 50 days: capped at 24.8, not due now"]] as const) {
    const dev = Fleet.create(join(fresh(), "dev"), "dev-gw", T0, lifetime);
    const t = new FleetTrust({ dataDir: fresh(), anchor: dev.anchor, log: w.log, now: () => now, verifierId: "gw.example", devFleet: dev });
    const link = await attached(dev, t);
    try {
      await new Promise((r) => setTimeout(r, 1500));
      assert.equal(t.list?.serial, 1, what);
    } finally {
      t.close();
      await link.close();
    }
  }
  const dev = Fleet.create(join(fresh(), "dev"), "dev-gw", T0, 120);
  const t = new FleetTrust({ dataDir: fresh(), anchor: dev.anchor, log: w.log, now: () => T0 + 59, verifierId: "gw.example", devFleet: dev });
  const link = await attached(dev, t);
  t.close(); // due in 1 s: the timer goes with close()
  try {
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(t.list?.serial, 1);
  } finally {
    await link.close();
  }
});

test("a verifier on its own (keyproxy verifier): gateways' remote checkers ask it, take only answers from a list as new as theirs, and drop their answers with every newer list", async () => {
  const w = world();
  const vDir = fresh();
  installGatewayCertificate(vDir, w.fleet.issueGateway("verify.example", gatewayPublicKeys(vDir), T0), w.fleet.anchor);
  writeFileSync(join(vDir, HELD_LIST_FILE), w.fleet.signedList());
  const service = await startVerifierService({ dataDir: vDir, id: "verify.example", url: broker.url, log: w.log, now: () => T0 });
  const t = w.trust();
  t.offer(w.fleet.signedList(), "file");
  const link = await attached(w.fleet, t);
  try {
    assert.equal(w.events("verifier-started")[0].id, "verify.example");
    assert.equal(w.events("verifier-started")[0].revocationSerial, 1);
    const remote = await t.remoteChecker(link, "verify.example");
    const some = w.fleet.issueGateway("other.example", { signingKey: generateEd25519().publicKey, encryptionKey: generateX25519().publicKey }, T0);
    const a = await remote.check(some, [], T0);
    assert.deepEqual([a.status, a.verifierId, remote.size], ["good", "verify.example", 1]);
    // A newer list reaches this gateway first: its remote answers go, and the verifier's (from serial 1) are refused.
    const g = remote.generation;
    t.offer(w.fleet.revoke({ gateways: ["other.example"] }, T0), "mqtt");
    assert.equal(remote.generation, g + 1);
    assert.equal(remote.size, 0);
    await assert.rejects(remote.check(some, [], T0), /the verifier answered from revocation list serial 1, older than the one held here \(2\)/);
    // Once the verifier has it too, it answers from it.
    service.trust.offer(w.fleet.signedList(), "mqtt");
    assert.equal((await remote.check(some, [], T0)).status, "revoked");
  } finally {
    t.close();
    await link.close();
    await service.stop();
  }
  assert.equal(w.events("verifier-stopped")[0].id, "verify.example");
});

test("a verifier on its own needs its certificate from the fleet: without one it refuses to start, and makes no development fleet or key of its own", async () => {
  const w = world();
  const vDir = fresh();
  const outcome = await startVerifierService({ dataDir: vDir, id: "verify.example", url: broker.url, log: w.log, now: () => T0 }).then(
    async (service) => { await service.stop(); return "started"; },
    (e: Error & { code?: string }) => e,
  );
  assert.ok(outcome instanceof Error, "it started");
  assert.equal(outcome.code, "missing");
  assert.ok(outcome.message.includes(`${join(vDir, "gateway.cwt")} does not exist: issue one with "keyproxy fleet issue-gateway"`), outcome.message);
  assert.deepEqual(readdirSync(vDir), [], "nothing made in its data directory");
  assert.deepEqual(w.events("verifier-started"), []);
});
