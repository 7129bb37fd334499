// Sessions across gateways (gateway/crossgw/cross-gateway.ts, design.md flows 5, 7, 8, 9): in-process gateways in
// their own domains, each started with GatewayOptions.fleet (its certificate from one fleet CA, its
// own verifier, the interlink and the fleet's revocation list over the in-process MQTT broker), and a
// Node handset (the firmware's Handset engine over real TCP) behind each. Alice connects to
// "bob@b.example" by name; they exchange messages, rekey, query certificates across domains, lose
// links, and get revoked; a capable peer (sdk/peer.ts) calls and is called.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import mqtt from "mqtt";
import { toHex } from "../firmware/bytes.ts";
import { SUITE_AES_CCM_16_64_128 as AES } from "../firmware/crypto/types.ts";
import { CloseReason, ErrorCode, Msg } from "../firmware/proto/messages.ts";
import { startBroker, type EmbeddedBroker } from "../gateway/monitor/embedded-broker.ts";
import type { CrossGateway } from "../gateway/crossgw/cross-gateway.ts";
import type { KeyAgreementPolicy } from "../gateway/crossgw/exchange.ts";
import { spiText } from "../gateway/log/protocol-names.ts";
import { issueCertificate, readCertificateUnverified } from "../gateway/encoding/cwt.ts";
import { generateEd25519 } from "../gateway/crypto/ed25519.ts";
import { Fleet, generateX25519, loadGatewayCredentials, readRevocationListUnverified } from "../gateway/fleet/fleet.ts";
import { movedBody, XGW_MOVED } from "../gateway/crossgw/messages.ts";
import { publishRevocationList, revocationTopic } from "../gateway/fleet/trust.ts";
import type { SessionSettings } from "../gateway/sessions/session-broker.ts";
import { Interlink, InterlinkError } from "../gateway/fleet/interlink.ts";
import { CapablePeer, type PeerSession } from "../sdk/peer.ts";
import { CertificateChecker, checkerTrust, localSource, Verifier } from "../gateway/fleet/verifier.ts";
import { fleetDataDir, fleetGateway } from "./support/fleet-rig.ts";
import { Logger } from "../gateway/log/logger.ts";
import { startVerifierService, type VerifierService } from "../gateway/fleet/verifier-service.ts";
import { Clock, provision, tempDir, until, type TestGateway } from "./support/harness.ts";
import { innerMessages, recordingCrypto, sessionHandset, stopGateway, type SessionHandset } from "./support/session-rig.ts";

const APP = "chat";
const text = (s: string) => new Uint8Array(Buffer.from(s, "latin1"));
/** SAs a handset still holds (a closed one is only marked, and swept on its next lookup). */
const live = (d: SessionHandset) => d.h.sas.filter((s) => s.expiresAt > 0 && (!s.retireAt || s.retireAt > Date.now() / 1000));
const ready = (d: SessionHandset) => d.h.sas.filter((s) => s.ready && s.expiresAt > 0 && !s.by);

interface Side {
  t: TestGateway;
  dev: SessionHandset;
  /** Plaintexts of every seal the gateway made, in order (what it sent its device). */
  seals: { suite: number; plaintext: Uint8Array }[];
  cross: () => CrossGateway;
}

interface SideOptions {
  sessions?: Partial<SessionSettings>;
  recheckMs?: number;
  verifier?: string;
  keyAgreement?: KeyAgreementPolicy;
}

/** A gateway for `domain` in the fleet (test/support/fleet-rig.ts) with one registered handset. */
async function side(domain: string, deviceId: string, fleet: Fleet, broker: EmbeddedBroker, clock: Clock, o: SideOptions = {}): Promise<Side> {
  const rec = recordingCrypto();
  const t = await fleetGateway(domain, fleet, broker, clock.now, { crypto: rec.crypto, sessions: o.sessions, recheckMs: o.recheckMs, verifier: o.verifier, keyAgreement: o.keyAgreement });
  const dev = await sessionHandset(t.gw, deviceId, await provision(t.gw, deviceId));
  await until(() => dev.h.status().registered, `${deviceId} registered`);
  return { t, dev, seals: rec.seals, cross: () => t.gw.hook as CrossGateway };
}

async function stopSide(s: Side | undefined): Promise<void> {
  if (!s) return;
  s.dev.close();
  await stopGateway(s.t);
}

/** Alice calls bob (both accept) and waits for the SA at both ends; its SPI. */
async function connect(a: Side, b: Side, to = "bob@b.example"): Promise<number> {
  b.dev.h.onRequest = (_from, app) => app === APP;
  const before = new Set(a.dev.h.sas.map((s) => s.spi));
  assert.equal(a.dev.h.connect(to, APP), true);
  await until(() => ready(a.dev).some((s) => !before.has(s.spi)), "alice's SA ready", 10_000);
  const spi = ready(a.dev).find((s) => !before.has(s.spi))!.spi;
  await until(() => ready(b.dev).some((s) => s.spi === spi), "bob's SA ready", 10_000);
  return spi;
}

describe("sessions across gateways", () => {
  let broker: EmbeddedBroker;
  let fleetDir: string;
  let fleet: Fleet;
  let a: Side;
  let b: Side;
  const clock = new Clock();
  // A small message limit, so that a rekey comes after 8 messages; a short grace period.
  const sessions = { limit: 10, graceMs: 300, overlapMs: 2000 };

  before(async () => {
    broker = await startBroker({ host: "127.0.0.1", port: 0 });
    fleetDir = tempDir("kp-xgw-fleet-");
    fleet = Fleet.create(fleetDir, "kp-fleet", clock.now());
    a = await side("a.example", "alice", fleet, broker, clock, { sessions });
    b = await side("b.example", "bob", fleet, broker, clock, { sessions });
  });

  after(async () => {
    await stopSide(a);
    await stopSide(b);
    await broker?.close();
    rmSync(fleetDir, { recursive: true, force: true });
  });

  test("alice@a.example connects to bob@b.example by name; messages cross both ways; a bye ends it at both ends", async () => {
    const asked: string[] = [];
    b.dev.h.onRequest = (from, app) => {
      asked.push(`${from} ${app}`);
      return from === "alice@a.example" && app === APP;
    };
    assert.equal(a.dev.h.connect("bob@b.example", APP), true);
    await until(() => ready(a.dev).length === 1 && ready(b.dev).length === 1, "an SA at both ends", 10_000);
    const [sa] = ready(a.dev);
    const [sb] = ready(b.dev);
    assert.equal(sa.spi, sb.spi, "one SPI at both ends (each gateway derived it)");
    assert.equal(sa.peer, "bob@b.example");
    assert.equal(sb.peer, "alice@a.example");
    assert.deepEqual(asked, ["alice@a.example chat"], "bob was asked once, with the caller's full name");
    const m = a.t.gw.monitoring!.publisher.metrics();
    assert.deepEqual([m.sessionsLocal, m.sessionsAcross, m.revocationSerial], [0, 1, 1], "the metrics count the SA across gateways and name the list held");
    // Each gateway installed the same seed in its own device: the device's key confirmation verified
    // at both gateways, so the keys match (the seeds themselves are wiped by then).
    const installs = (s: Side) => innerMessages(s.seals).filter((m) => m[0] === Msg.SaInstall);
    const [ia] = installs(a);
    const [ib] = installs(b);
    assert.ok(ia && ib, "each gateway sent its device one SaInstall");
    assert.equal(toHex(ia[6] as Uint8Array), toHex(ib[6] as Uint8Array), "the same derived seed on both sides");
    assert.deepEqual([ia[7], ib[7]], [0, 1], "alice is the initiator, bob the responder");
    assert.deepEqual([ia[9], ib[9]], [sessions.limit, sessions.limit], "both devices got the same message limit");

    for (let i = 0; i < 5; i++) {
      assert.equal(a.dev.h.send(sa.spi, text(`a->b ${i}`)), true);
      assert.equal(b.dev.h.send(sb.spi, text(`b->a ${i}`)), true);
    }
    await until(() => b.dev.inbox.length === 5 && a.dev.inbox.length === 5, "five messages each way", 10_000);
    assert.deepEqual(b.dev.inbox, [0, 1, 2, 3, 4].map((i) => `a->b ${i}`));
    assert.deepEqual(a.dev.inbox, [0, 1, 2, 3, 4].map((i) => `b->a ${i}`));
    // Each frame was relayed twice: out of one gateway (counted when the peer gateway took it) and in at the other.
    await until(() => a.cross().stats.relayed === 10 && b.cross().stats.relayed === 10, "every frame relayed out and in");

    assert.equal(a.dev.h.close(sa.spi), true);
    await until(() => b.dev.closed.some(([spi]) => spi === sb.spi), "bob's SA closed by alice's bye", 10_000);
    assert.deepEqual(b.dev.closed.find(([spi]) => spi === sb.spi), [sb.spi, CloseReason.Bye]);
    assert.equal(live(b.dev).length, 0);
    assert.equal(live(a.dev).length, 0);
    await until(() => a.cross().sessions.size === 0 && b.cross().sessions.size === 0, "no cross-gateway session left at either gateway");
  });

  test("rekey across gateways: at 80% of the limit the SA is replaced at both ends, with no message lost or reordered", async () => {
    a.dev.inbox.length = 0;
    b.dev.inbox.length = 0;
    const first = await connect(a, b);
    const rekeyedBefore = [a.t.events("xsession-rekeyed").length, b.t.events("xsession-rekeyed").length];
    // 25 messages each way, five at a time: both ends ask for a rekey at the 8th (either may), the
    // replacement's frames follow the old SPI, and a second rekey follows on the new SA.
    let sent = 0;
    while (sent < 25) {
      for (let i = 0; i < 5; i++, sent++) {
        // While a replacement is on its way, an SA at its limit refuses to send: wait for room.
        await until(() => a.dev.h.send(first, text(`a${sent}`)), `room for alice's message ${sent}`, 10_000);
        await until(() => b.dev.h.send(first, text(`b${sent}`)), `room for bob's message ${sent}`, 10_000);
      }
      await until(() => b.dev.inbox.length === sent && a.dev.inbox.length === sent, `delivery of ${sent}`, 10_000);
    }
    assert.deepEqual(b.dev.inbox, Array.from({ length: 25 }, (_, i) => `a${i}`));
    assert.deepEqual(a.dev.inbox, Array.from({ length: 25 }, (_, i) => `b${i}`));
    const now = ready(a.dev);
    assert.equal(now.length, 1);
    assert.notEqual(now[0].spi, first, "alice sends on a new SA");
    assert.deepEqual(ready(b.dev).map((s) => s.spi), [now[0].spi], "bob moved to the same one");
    const rekeys = a.t.events("xsession-rekeyed").length - rekeyedBefore[0];
    assert.ok(rekeys >= 2, "two rekeys in 25 messages with a limit of 10");
    assert.equal(b.t.events("xsession-rekeyed").length - rekeyedBefore[1], rekeys, "each rekey went up at both gateways, once: both ends asking made one replacement");
    assert.equal(a.dev.h.status().dropped + b.dev.h.status().dropped, 0, "no frame was dropped");
    a.dev.h.close(now[0].spi);
    await until(() => live(a.dev).length === 0 && live(b.dev).length === 0, "both ends closed", 10_000);
  });

  test("certificate queries cross domains: the home gateway answers only with a certificate valid now; an unknown name or domain is not found", async () => {
    a.dev.h.lastType = 0;
    assert.equal(a.dev.h.certQuery("bob@b.example"), true);
    await until(() => a.dev.h.lastType !== 0, "alice's answer", 10_000);
    assert.equal(a.dev.h.lastType, Msg.CertAnswer);
    const answer = innerMessages(a.seals).filter((m) => m[0] === Msg.CertAnswer).at(-1)!;
    const claims = readCertificateUnverified(answer[2] as Uint8Array);
    assert.deepEqual([claims.iss, claims.sub], ["b.example", "bob"]);
    assert.ok(claims.exp > clock.now(), "valid now");

    for (const name of ["nobody@b.example", "bob@nowhere.example"]) {
      a.dev.h.lastType = 0;
      assert.equal(a.dev.h.certQuery(name), true);
      await until(() => a.dev.h.lastType !== 0, `the answer about ${name}`, 10_000);
      assert.deepEqual([a.dev.h.lastType, a.dev.h.lastCode], [Msg.Error, ErrorCode.NotFound], name);
    }
    // A name in the gateway's own domain is its own device.
    a.dev.h.lastType = 0;
    assert.equal(b.dev.h.certQuery("bob@b.example"), true);
    await until(() => b.dev.h.lastType === Msg.CertAnswer, "bob's own certificate");
  });

  test("an unknown domain comes back to the caller as not found, and nothing is installed", async () => {
    a.dev.h.lastType = 0;
    const installs = innerMessages(a.seals).filter((m) => m[0] === Msg.SaInstall).length;
    assert.equal(a.dev.h.connect("bob@nowhere.example", APP), true);
    await until(() => a.dev.h.lastType === Msg.Error, "alice's answer", 10_000);
    assert.equal(a.dev.h.lastCode, ErrorCode.NotFound);
    assert.equal(innerMessages(a.seals).filter((m) => m[0] === Msg.SaInstall).length, installs);
  });

  test('a declining callee is "rejected" and an unknown name "not found", as inside one gateway; nothing is installed', async () => {
    b.dev.h.onRequest = () => false;
    const before = innerMessages(a.seals).filter((m) => m[0] === Msg.SaInstall).length;
    a.dev.h.lastType = 0;
    assert.equal(a.dev.h.connect("bob@b.example", APP), true);
    await until(() => a.dev.h.lastType === Msg.Error, "alice's answer", 10_000);
    assert.equal(a.dev.h.lastCode, ErrorCode.Rejected);
    a.dev.h.lastType = 0;
    assert.equal(a.dev.h.connect("nobody@b.example", APP), true);
    await until(() => a.dev.h.lastType === Msg.Error, "alice's answer", 10_000);
    assert.equal(a.dev.h.lastCode, ErrorCode.NotFound);
    assert.equal(innerMessages(a.seals).filter((m) => m[0] === Msg.SaInstall).length, before, "no SaInstall for a refused call");
    assert.equal(live(a.dev).length, 0);
    assert.ok(b.t.events("xsession-not-found").length >= 1, "B logged why, A's device learned only 'not found'");
  });

  test("kp.x.moved is taken only from the SA's own peer gateway, naming an instance: anyone else's is refused and the SA runs on", async () => {
    const spi = await connect(a, b);
    // a.example runs as one process: it has no instance to move an SA to.
    await assert.rejects(a.t.gw.interlink!.request("b.example", XGW_MOVED, movedBody(spi), { timeoutMs: 5000 }), (e: unknown) => e instanceof InterlinkError && /names no instance/.test(e.message));
    // An instance of c.example, certified by the fleet, is not party to the SA.
    const dir = fleetDataDir("c.example", fleet, clock.now);
    const c = await Interlink.connect({
      url: broker.url, identity: loadGatewayCredentials(dir, "c.example", clock.now(), false).credentials, trust: checkerTrust(b.t.gw.trust!.checker),
      now: clock.now, protocolVersion: 4, instance: "c1", requestTimeoutMs: 5000,
    });
    try {
      await assert.rejects(c.request("b.example", XGW_MOVED, movedBody(spi)), (e: unknown) => e instanceof InterlinkError && /"c\.example" is not party to this SPI/.test(e.message));
    } finally {
      await c.close();
    }
    assert.equal(b.cross().stats.peerMoved, 0, "nothing moved");
    // The SA runs on where it ran.
    assert.equal(a.dev.h.send(spi, text("still here")), true);
    assert.equal(b.dev.h.send(spi, text("still there")), true);
    await until(() => b.dev.inbox.includes("still here") && a.dev.inbox.includes("still there"), "frames both ways", 10_000);
    assert.equal(a.dev.h.close(spi), true);
    await until(() => a.cross().sessions.size === 0 && b.cross().sessions.size === 0, "the SA ended at both gateways");
  });

  test("an SA whose peer process moved to an instance that then does not answer waits the grace period for another to take it over, then ends at its device", async () => {
    const spi = await connect(a, b);
    // An instance of a.example (its domain's own key) says it runs the SA now, and then goes.
    const a9 = await Interlink.connect({
      url: broker.url, identity: loadGatewayCredentials(a.t.dataDir, "a.example", clock.now(), false).credentials, trust: checkerTrust(a.t.gw.trust!.checker),
      now: clock.now, protocolVersion: 4, instance: "a9", requestTimeoutMs: 5000,
    });
    try {
      await a9.request("b.example", XGW_MOVED, movedBody(spi));
    } finally {
      await a9.close();
    }
    assert.equal(b.cross().stats.peerMoved, 1);
    assert.ok(b.t.events("xsession-peer-moved").some((e) => e.spi === spiText(spi) && e.to === "a9"), "bob's gateway logged the move");
    // Bob's next frame goes to a9, which never answers (the interlink's 10 s), and no other instance
    // of a.example takes the SA over within the grace period: it ends at bob.
    assert.equal(b.dev.h.send(spi, text("to nobody")), true);
    await until(() => b.dev.closed.some(([s]) => s === spi), "bob told his SA ended", 20_000);
    assert.deepEqual(b.dev.closed.find(([s]) => s === spi), [spi, CloseReason.PeerGone]);
    assert.ok(b.t.events("xsession-peer-silent").some((e) => e.spi === spiText(spi) && e.peerInstance === "a9"), "it waited first");
    assert.equal(a.dev.h.close(spi), true);
    await until(() => a.cross().sessions.size === 0 && b.cross().sessions.size === 0, "no session left at either gateway");
  });

  test("a link lost for longer than the grace period ends the SA at both gateways and both devices", async () => {
    const spi = await connect(a, b);
    await b.dev.dropLink();
    await until(() => a.dev.closed.some(([s]) => s === spi), "alice told", 10_000);
    assert.deepEqual(a.dev.closed.find(([s]) => s === spi), [spi, CloseReason.PeerGone]);
    await until(() => a.cross().sessions.size === 0 && b.cross().sessions.size === 0, "no session left at either gateway");
    await b.dev.reconnect();
    await until(() => b.dev.h.status().registered, "bob back");
  });
});

describe("revocation across gateways", () => {
  let broker: EmbeddedBroker;
  let fleetDir: string;
  let fleet: Fleet;
  let a: Side;
  let b: Side;
  let c: Side;
  let d: Side;
  const clock = new Clock();

  before(async () => {
    broker = await startBroker({ host: "127.0.0.1", port: 0 });
    fleetDir = tempDir("kp-xgw-fleet-");
    fleet = Fleet.create(fleetDir, "kp-fleet", clock.now());
    a = await side("a.example", "alice", fleet, broker, clock);
    b = await side("b.example", "bob", fleet, broker, clock);
    c = await side("c.example", "carl", fleet, broker, clock);
    d = await side("d.example", "dora", fleet, broker, clock);
  });

  after(async () => {
    for (const s of [a, b, c, d]) await stopSide(s);
    await broker?.close();
    rmSync(fleetDir, { recursive: true, force: true });
  });

  test("a revoked caller is refused: no SA is installed on either side, and the refusal names the reason", async () => {
    // Only b takes this list: d still thinks dora is fine, so the exchange itself must refuse her.
    assert.equal(b.t.gw.trust!.offer(fleet.revoke({ devices: ["dora@d.example"] }, clock.now()), "test"), true);
    const installsAt = (s: Side) => innerMessages(s.seals).filter((m) => m[0] === Msg.SaInstall).length;
    const before = [installsAt(b), installsAt(d)];
    d.dev.h.lastType = 0;
    b.dev.h.onRequest = () => true;
    assert.equal(d.dev.h.connect("bob@b.example", APP), true);
    await until(() => d.dev.h.lastType === Msg.Error, "dora's answer", 10_000);
    assert.equal(d.dev.h.lastCode, ErrorCode.Rejected);
    assert.deepEqual([installsAt(b), installsAt(d)], before, "no SaInstall at either gateway");
    assert.match(String(d.t.events("xsession-failed").at(-1)?.reason), /revoked/);
    assert.equal(live(b.dev).length, 0);
  });

  test("a device revoked by a published list: its sessions end at both gateways, its home gateway refuses its joins", async () => {
    const spi = await connect(a, b);
    const list = fleet.revoke({ devices: ["alice@a.example"] }, clock.now());
    const started = Date.now();
    await publishRevocationList(broker.url, fleet.fleetId, list);
    await until(() => b.dev.closed.some(([s]) => s === spi) && a.t.events("device-revoked").length === 1, "the SA ended at both ends", 5000);
    assert.deepEqual(b.dev.closed.find(([s]) => s === spi), [spi, CloseReason.Revoked]);
    assert.ok(Date.now() - started < 5000);
    assert.equal((await a.t.gw.store.getDevice("alice"))!.revokedAt !== null, true, "alice is revoked in her gateway's registry");
    assert.equal((await a.t.gw.store.getRegistration("alice")), undefined, "and no longer registered");
    await a.dev.reconnect();
    await until(() => a.t.events("join-rejected").some((e) => e.device === "alice" && e.reason === "device revoked"), "alice's next join refused", 10_000);
    assert.equal(a.cross().sessions.size + b.cross().sessions.size, 0);
    // The list every gateway took is the one on disk: a restart starts from it.
    assert.equal(a.t.gw.trust!.list!.serial, b.t.gw.trust!.list!.serial);
  });

  test("a revoked gateway: every session with it ends at the other gateways, and it starts none", async () => {
    const spi = await connect(c, b);
    await publishRevocationList(broker.url, fleet.fleetId, fleet.revoke({ gateways: ["c.example"] }, clock.now()));
    await until(() => b.dev.closed.some(([s]) => s === spi) && c.dev.closed.some(([s]) => s === spi), "the SA ended at both ends", 5000);
    assert.ok(c.t.events("gateway-revoked").length === 1, "c knows it is revoked");
    // b's pairwise channel with c ended as the list arrived, within the same bound (docs/FLEET.md).
    await until(() => b.t.events("interlink-channel-ended").some((e) => e.peer === "c.example" && e.why === "peer no longer trusted"), "b ended its channel with c", 5000);
    c.dev.h.lastType = 0;
    assert.equal(c.dev.h.connect("bob@b.example", APP), true);
    await until(() => c.dev.h.lastType === Msg.Error, "carl's answer", 10_000);
    assert.equal(c.dev.h.lastCode, ErrorCode.Rejected);
  });
});

describe("a verifier on its own (keyproxy verifier)", () => {
  let broker: EmbeddedBroker;
  let fleetDir: string;
  let fleet: Fleet;
  let verifier: VerifierService;
  let a: Side;
  let b: Side;
  const clock = new Clock();
  const logs: string[] = [];

  before(async () => {
    broker = await startBroker({ host: "127.0.0.1", port: 0 });
    fleetDir = tempDir("kp-xgw-fleet-");
    fleet = Fleet.create(fleetDir, "kp-fleet", clock.now());
    verifier = await startVerifierService({ dataDir: fleetDataDir("verify.example", fleet, clock.now), id: "verify.example", url: broker.url, log: new Logger((l) => logs.push(l)), now: clock.now });
    a = await side("a.example", "alice", fleet, broker, clock, { verifier: "verify.example" });
    b = await side("b.example", "bob", fleet, broker, clock, { verifier: "verify.example" });
  });

  after(async () => {
    await stopSide(a);
    await stopSide(b);
    await verifier?.stop();
    await broker?.close();
    rmSync(fleetDir, { recursive: true, force: true });
  });

  test("gateways ask it about every remote certificate; its verdict on a newer list ends the session at both gateways", async () => {
    const spi = await connect(a, b);
    const asked = verifier.interlink.stats.accepted;
    assert.ok(asked >= 2, `both gateways asked the verifier (${asked} requests)`);
    assert.equal(a.t.events("interlink-started")[0].verifier, "verify.example");
    // Only the verifier and b take the list (not alice's own gateway): b ends the SA on the verifier's
    // word alone, and a hears it from b.
    const list = fleet.revoke({ devices: ["alice@a.example"] }, clock.now());
    assert.equal(verifier.trust.offer(list, "test"), true);
    assert.equal(b.t.gw.trust!.offer(list, "test"), true);
    await until(() => b.dev.closed.some(([s]) => s === spi) && a.dev.closed.some(([s]) => s === spi), "the SA ended at both ends", 5000);
    assert.deepEqual(b.dev.closed.find(([s]) => s === spi), [spi, CloseReason.Revoked]);
    assert.match(String(b.t.events("xsession-revoked").at(-1)?.reason), /alice@a\.example certificate is revoked/);
    assert.equal(a.t.events("device-revoked").length, 0, "a never saw the list");
    assert.ok(verifier.interlink.stats.accepted > asked, "b asked the verifier again after the list");
  });
});

describe("a gateway that stops", () => {
  test("tells the other gateway, which ends the SA at its device at once", async () => {
    const broker = await startBroker({ host: "127.0.0.1", port: 0 });
    const fleetDir = tempDir("kp-xgw-fleet-");
    const clock = new Clock();
    const fleet = Fleet.create(fleetDir, "kp-fleet", clock.now());
    const a = await side("a.example", "alice", fleet, broker, clock);
    const b = await side("b.example", "bob", fleet, broker, clock);
    let bStopped = false;
    try {
      const spi = await connect(a, b);
      b.dev.close();
      await stopGateway(b.t);
      bStopped = true;
      await until(() => a.dev.closed.some(([s]) => s === spi), "alice told", 5000);
      assert.deepEqual(a.dev.closed.find(([s]) => s === spi), [spi, CloseReason.PeerGone]);
      assert.equal(a.cross().sessions.size, 0);
    } finally {
      await stopSide(a);
      if (!bStopped) await stopSide(b);
      await broker.close();
      rmSync(fleetDir, { recursive: true, force: true });
    }
  });
});

describe("a revocation list that never arrives", () => {
  test("sessions end once the held list goes stale (at the next periodic check): withholding a list cannot keep a session alive", async () => {
    const broker = await startBroker({ host: "127.0.0.1", port: 0 });
    const fleetDir = tempDir("kp-xgw-fleet-");
    const clock = new Clock();
    const fleet = Fleet.create(fleetDir, "kp-fleet", clock.now(), 600);
    const a = await side("a.example", "alice", fleet, broker, clock, { recheckMs: 200 });
    const b = await side("b.example", "bob", fleet, broker, clock, { recheckMs: 200 });
    try {
      const spi = await connect(a, b);
      clock.advance(599);
      await new Promise((r) => setTimeout(r, 500));
      assert.equal(ready(a.dev).length, 1, "still up while the list is fresh");
      clock.advance(2); // past the list's next update: the verifiers answer revocation-unknown
      await until(() => a.dev.closed.some(([s]) => s === spi) && b.dev.closed.some(([s]) => s === spi), "the SA ended at both ends", 5000);
      assert.match(String(a.t.events("xsession-revoked").at(-1)?.reason), /revocation-unknown/);
    } finally {
      await stopSide(a);
      await stopSide(b);
      await broker.close();
      rmSync(fleetDir, { recursive: true, force: true });
    }
  });
});

describe("the capable-peer SDK", () => {
  let broker: EmbeddedBroker;
  let fleetDir: string;
  let a: Side;
  let b: Side;
  let peer: CapablePeer;
  let peerLink: Interlink;
  const clock = new Clock();

  before(async () => {
    broker = await startBroker({ host: "127.0.0.1", port: 0 });
    fleetDir = tempDir("kp-xgw-fleet-");
    const fleet = Fleet.create(fleetDir, "kp-fleet", clock.now());
    a = await side("a.example", "alice", fleet, broker, clock, { sessions: { limit: 10, overlapMs: 2000 } });
    b = await side("b.example", "bob", fleet, broker, clock);
    // carol@c.example: her own keys, a gateway certificate for her domain and a certificate for her name.
    const verifierKey = generateEd25519();
    const verifier = new Verifier({ anchor: fleet.anchor, key: verifierKey, verifierId: "verifier.kp" });
    verifier.updateRevocationList(fleet.signedList());
    const signing = generateEd25519();
    const encryption = generateX25519();
    const gatewayCert = fleet.issueGateway("c.example", { signingKey: signing.publicKey, encryptionKey: encryption.publicKey }, clock.now());
    const identity = generateEd25519();
    const t = clock.now();
    const cert = issueCertificate({ iss: "c.example", sub: "carol", iat: t, nbf: t, exp: t + 3600, cti: new Uint8Array(16).fill(7), publicKey: identity.publicKey }, signing.seed);
    const checker = new CertificateChecker({ source: localSource(verifier), verifierPublicKey: verifierKey.publicKey });
    peerLink = await Interlink.connect({
      url: broker.url, identity: { gatewayId: "c.example", signing, encryption, certificate: gatewayCert }, trust: checkerTrust(checker),
      now: clock.now, protocolVersion: 4, requestTimeoutMs: 15_000,
    });
    peer = new CapablePeer({ interlink: peerLink, self: { name: "carol@c.example", identitySeed: identity.seed, cert, gatewayCert }, suites: [[AES, 1]], checker, now: clock.now, overlapMs: 2000 });
  });

  after(async () => {
    await peer?.close();
    await peerLink?.close();
    await stopSide(a);
    await stopSide(b);
    await broker?.close();
    rmSync(fleetDir, { recursive: true, force: true });
  });

  test("carol (capable peer) calls bob@b.example's handset: the SA is up at both ends and data crosses both ways", async () => {
    b.dev.h.onRequest = (from, app) => from === "carol@c.example" && app === APP;
    const s = await peer.connect("bob@b.example", APP);
    const got: string[] = [];
    s.onMessage = (d) => got.push(Buffer.from(d).toString("latin1"));
    await until(() => b.dev.h.sas.some((x) => x.ready && x.spi === s.spi), "bob's SA ready");
    assert.equal(b.dev.h.sas.find((x) => x.spi === s.spi)!.peer, "carol@c.example");
    await s.send(text("hello bob, from carol"));
    await until(() => b.dev.inbox.includes("hello bob, from carol"), "carol's message at bob");
    assert.equal(b.dev.h.send(s.spi, text("hello carol")), true);
    await until(() => got.includes("hello carol"), "bob's message at carol");
    await s.close();
    await until(() => b.dev.closed.some(([spi, why]) => spi === s.spi && why === CloseReason.Bye), "bob's SA closed by carol's bye");
  });

  test("alice@a.example's handset calls carol; carol accepts; they rekey (alice's gateway's limit of 10 holds for both) with nothing lost; alice's bye reaches carol", async () => {
    const asked: string[] = [];
    peer.onRequest = (from, app) => {
      asked.push(from);
      return from === "alice@a.example" && app === APP;
    };
    const up = new Promise<PeerSession>((resolve) => (peer.onSession = resolve));
    a.dev.inbox.length = 0;
    assert.equal(a.dev.h.connect("carol@c.example", APP), true);
    const s = await up;
    const first = s.spi;
    await until(() => a.dev.h.sas.some((x) => x.ready && x.spi === first), "alice's SA ready");
    assert.deepEqual(asked, ["alice@a.example"]);
    const got: string[] = [];
    const closed: number[] = [];
    s.onMessage = (d) => got.push(Buffer.from(d).toString("latin1"));
    s.onClose = (r) => closed.push(r);
    // 20 each way with a limit of 10: carol's side asks alice's gateway for the rekeys, alice's device
    // asks its own; either way one replacement at a time, and the PeerSession object stays the same.
    for (let i = 0; i < 20; i++) {
      await until(() => a.dev.h.send(first, text(`to carol ${i}`)), `room for alice's message ${i}`, 10_000);
      await s.send(text(`to alice ${i}`)); // past the limit, it waits for the replacement
      await until(() => got.length === i + 1 && a.dev.inbox.length === i + 1, `delivery of ${i}`, 10_000);
    }
    assert.deepEqual(got, Array.from({ length: 20 }, (_, i) => `to carol ${i}`));
    assert.deepEqual(a.dev.inbox, Array.from({ length: 20 }, (_, i) => `to alice ${i}`));
    assert.notEqual(s.spi, first, "carol sends under a new SPI");
    assert.ok(a.t.events("xsession-rekeyed").length >= 1);
    assert.equal(a.dev.h.close(s.spi), true);
    await until(() => closed.length === 1, "carol told of alice's bye");
    assert.deepEqual(closed, [CloseReason.Bye]);
    assert.equal(s.state, "closed");
    await assert.rejects(s.send(text("too late")), /closed/);
  });
});

describe("one SPI space per device", () => {
  test("a local SA never takes the SPI of an SA across gateways: a draw that collides is drawn again", async () => {
    const broker = await startBroker({ host: "127.0.0.1", port: 0 });
    const fleetDir = tempDir("kp-xgw-fleet-");
    const clock = new Clock();
    const fleet = Fleet.create(fleetDir, "kp-fleet", clock.now());
    // Gateway a's random source, with the next 4-byte draws (the session broker's SPI draws) forced.
    const inner = recordingCrypto();
    const forced: number[] = [];
    const crypto = {
      ...inner.crypto,
      random: (n: number) => {
        const spi = n === 4 ? forced.shift() : undefined;
        return spi === undefined ? inner.crypto.random(n) : new Uint8Array([spi >>> 24, (spi >>> 16) & 255, (spi >>> 8) & 255, spi & 255]);
      },
    };
    const t = await fleetGateway("a.example", fleet, broker, clock.now, { crypto });
    const a: Side = { t, dev: await sessionHandset(t.gw, "alice", await provision(t.gw, "alice")), seals: inner.seals, cross: () => t.gw.hook as CrossGateway };
    const dave = await sessionHandset(t.gw, "dave", await provision(t.gw, "dave"));
    const b = await side("b.example", "bob", fleet, broker, clock);
    try {
      await until(() => a.dev.h.status().registered && dave.h.status().registered, "alice and dave registered");
      const across = await connect(a, b);
      forced.push(across);
      dave.h.onRequest = (from, app) => from === "alice" && app === APP;
      assert.equal(a.dev.h.connect("dave", APP), true);
      await until(() => ready(a.dev).length === 2 && ready(dave).length === 1, "alice's SA with dave", 10_000);
      assert.equal(forced.length, 0, "the broker drew the colliding SPI");
      const local = ready(dave)[0].spi;
      assert.notEqual(local, across, "the local SA got another SPI");
      assert.deepEqual(ready(a.dev).map((s) => s.spi).sort(), [across, local].sort(), "alice holds both, under two SPIs");
      // Each SA carries its own frames to its own peer.
      assert.equal(a.dev.h.send(across, text("to bob")), true);
      assert.equal(a.dev.h.send(local, text("to dave")), true);
      await until(() => b.dev.inbox.includes("to bob") && dave.inbox.includes("to dave"), "each message at its peer", 10_000);
      assert.deepEqual([b.dev.inbox, dave.inbox], [["to bob"], ["to dave"]]);
    } finally {
      dave.close();
      await stopSide(a);
      await stopSide(b);
      await broker.close();
      rmSync(fleetDir, { recursive: true, force: true });
    }
  });
});

describe("a quiet SA across gateways", () => {
  test("is replaced by the initiating side's gateway at 80% of its lifetime, with no traffic, before it expires; both devices move to the new SA", async () => {
    const broker = await startBroker({ host: "127.0.0.1", port: 0 });
    const fleetDir = tempDir("kp-xgw-fleet-");
    const clock = new Clock();
    const fleet = Fleet.create(fleetDir, "kp-fleet", clock.now());
    // 10 s: the rekey point is at 8 s, leaving the exchange and the devices 2 s.
    const lifetime = 10;
    const a = await side("a.example", "alice", fleet, broker, clock, { sessions: { lifetime } });
    const b = await side("b.example", "bob", fleet, broker, clock, { sessions: { lifetime } });
    try {
      // Each Connected as [spi, replaces, whether the replaced SA was still within its lifetime].
      const ups = new Map<SessionHandset, [number, number, boolean][]>();
      for (const d of [a.dev, b.dev]) {
        ups.set(d, []);
        d.h.onConnect = (spi, _peer, _app, replaces) => {
          const old = d.h.sas.find((s) => s.spi === replaces);
          ups.get(d)!.push([spi, replaces, !!old && Date.now() / 1000 < old.expiresAt]);
        };
      }
      const first = await connect(a, b);
      // No traffic from here on. Without the gateway's rekey the SA ends at its lifetime (closed).
      const moved = (d: SessionHandset) => ups.get(d)!.length >= 2 || d.closed.length > 0;
      await until(() => moved(a.dev) && moved(b.dev), "a replacement or the SA's end at both devices", (lifetime + 15) * 1000);
      assert.deepEqual([a.dev.closed, b.dev.closed], [[], []], "neither SA ran out");
      const [ua, ub] = [ups.get(a.dev)![1], ups.get(b.dev)![1]];
      assert.equal(ua[1], first, "alice's new SA replaces the first");
      assert.equal(ub[0], ua[0], "bob moved to the same new SA");
      assert.equal(ub[1], first);
      assert.deepEqual([ua[2], ub[2]], [true, true], "the replaced SA was still within its lifetime at both ends");
      assert.equal(a.t.events("xsession-rekey-due").length, 1, "the initiating side's gateway started it");
      assert.equal(a.dev.h.send(ua[0], text("after")), true);
      await until(() => b.dev.inbox.includes("after"), "a message on the new SA", 10_000);
    } finally {
      await stopSide(a);
      await stopSide(b);
      await broker.close();
      rmSync(fleetDir, { recursive: true, force: true });
    }
  });
});

describe("the revocation list on the broker", () => {
  test("an older list published over the newest one is answered with the newest, so the broker's retained list stays the newest", async () => {
    const broker = await startBroker({ host: "127.0.0.1", port: 0 });
    const fleetDir = tempDir("kp-xgw-fleet-");
    const clock = new Clock();
    const fleet = Fleet.create(fleetDir, "kp-fleet", clock.now());
    const older = fleet.signedList();
    const t = await fleetGateway("a.example", fleet, broker, clock.now);
    const topic = revocationTopic(fleet.fleetId);
    const recorder = await mqtt.connectAsync(broker.url, { protocolVersion: 4 });
    const serials: number[] = [];
    recorder.on("message", (_t, payload) => serials.push(readRevocationListUnverified(new Uint8Array(payload)).serial));
    try {
      await recorder.subscribeAsync(topic, { qos: 1 });
      await until(() => serials.includes(1), "the list the gateway published when it attached");
      const newer = fleet.revoke({ devices: ["nobody@b.example"] }, clock.now());
      await publishRevocationList(broker.url, fleet.fleetId, newer);
      await until(() => t.gw.trust!.list!.serial === 2, "the gateway took serial 2");
      // A replay of serial 1 (or a gateway behind republishing what it holds) takes the retained place.
      await publishRevocationList(broker.url, fleet.fleetId, older);
      await until(() => serials.lastIndexOf(2) > serials.lastIndexOf(1), "the newest list published again after the older one", 5000);
      assert.ok(t.events("revocation-list-rejected").length >= 1, "the gateway refused the older list");
      assert.equal(t.gw.trust!.list!.serial, 2);
    } finally {
      await recorder.endAsync();
      await stopGateway(t);
      await broker.close();
      rmSync(fleetDir, { recursive: true, force: true });
    }
  });
});

describe("post-quantum key agreement across gateways (fleet policy, docs/FLEET.md)", () => {
  let broker: EmbeddedBroker;
  let fleetDir: string;
  let strict: Side; // hybrid-only
  let open: Side; // hybrid
  let classic: Side; // x25519
  const clock = new Clock();

  before(async () => {
    broker = await startBroker({ host: "127.0.0.1", port: 0 });
    fleetDir = tempDir("kp-xgw-pq-");
    const fleet = Fleet.create(fleetDir, "kp-pq-fleet", clock.now());
    strict = await side("pq1.example", "ann", fleet, broker, clock, { keyAgreement: "hybrid-only" });
    open = await side("pq2.example", "ben", fleet, broker, clock, { keyAgreement: "hybrid" });
    classic = await side("old.example", "cat", fleet, broker, clock, { keyAgreement: "x25519" });
  });

  after(async () => {
    for (const s of [strict, open, classic]) await stopSide(s);
    await broker?.close();
    rmSync(fleetDir, { recursive: true, force: true });
  });

  const agreed = (s: Side, spi: number) => s.t.events("xsession-keys-distributed").filter((e) => e.spi === spiText(spi)).map((e) => e.keyAgreement);

  test("two gateways that do ML-KEM-768 run X25519 + ML-KEM-768; one of them and a classical gateway run X25519", async () => {
    const spi = await connect(strict, open, "ben@pq2.example");
    assert.deepEqual([agreed(strict, spi), agreed(open, spi)], [["x25519-mlkem768"], ["x25519-mlkem768"]]);
    const spi2 = await connect(open, classic, "cat@old.example");
    assert.deepEqual([agreed(open, spi2), agreed(classic, spi2)], [["x25519"], ["x25519"]]);
  });

  test("hybrid-only never runs a classical exchange: its callee is not even asked, and its caller's call fails", async () => {
    let asked = 0;
    strict.dev.h.onRequest = () => { asked++; return true; };
    classic.dev.h.lastType = 0;
    assert.equal(classic.dev.h.connect("ann@pq1.example", APP), true);
    await until(() => classic.dev.h.lastType === Msg.Error, "cat's answer", 10_000);
    assert.equal(asked, 0, "ann was not asked");
    classic.dev.h.onRequest = () => true;
    strict.dev.h.lastType = 0;
    const failedBefore = strict.t.events("xsession-failed").length;
    assert.equal(strict.dev.h.connect("cat@old.example", APP), true);
    await until(() => strict.dev.h.lastType === Msg.Error, "ann's answer", 10_000);
    const failed = strict.t.events("xsession-failed").slice(failedBefore);
    assert.match(String(failed[0]?.reason), /requires X25519 \+ ML-KEM-768/);
    assert.equal(ready(strict.dev).filter((s) => s.peer === "cat@old.example").length, 0, "nothing installed");
  });
});
