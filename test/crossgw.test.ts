// Sessions across gateways (gateway/crossgw.ts, design.md flow 5): two in-process gateways in the
// domains a.example and b.example, trusting each other through one fleet CA, talking over the
// in-process MQTT broker; a Node handset (the firmware's Handset engine over real TCP) on each. Alice
// connects to "bob@b.example" by name, they exchange messages both ways, and a bye ends it at both.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { toHex } from "../firmware/bytes.ts";
import { CloseReason, ErrorCode, Msg } from "../firmware/proto/messages.ts";
import { startBroker, type EmbeddedBroker } from "../gateway/broker.ts";
import { crossGatewayHook, type CrossGateway } from "../gateway/crossgw.ts";
import { issueCertificate } from "../gateway/cwt.ts";
import { generateEd25519 } from "../gateway/ed25519.ts";
import { Fleet, generateX25519 } from "../gateway/fleet.ts";
import { loadOrCreateGatewayKey } from "../gateway/identity.ts";
import { Interlink } from "../gateway/interlink.ts";
import { CapablePeer, type PeerSession } from "../gateway/peer-sdk.ts";
import { SUITE_AES_CCM_16_64_128 as AES } from "../firmware/crypto/types.ts";
import { CertificateChecker, checkerTrust, localSource, Verifier } from "../gateway/verifier.ts";
import { Clock, provision, startGateway, tempDir, until, type TestGateway } from "./support/harness.ts";
import { innerMessages, recordingCrypto, sessionHandset, stopGateway, type SessionHandset } from "./support/session-rig.ts";

const APP = "chat";
const text = (s: string) => new Uint8Array(Buffer.from(s, "latin1"));
/** SAs a handset still holds (a closed one is only marked, and swept on its next lookup). */
const live = (d: SessionHandset) => d.h.sas.filter((s) => s.expiresAt > 0);

interface Side {
  t: TestGateway;
  link: Interlink;
  dev: SessionHandset;
  /** Plaintexts of every seal the gateway made, in order (what it sent its device). */
  seals: { suite: number; plaintext: Uint8Array }[];
  cross: () => CrossGateway;
  checker: CertificateChecker;
}

/** A gateway for `domain` with a certificate from the fleet, its interlink and one registered handset. */
async function side(domain: string, deviceId: string, fleet: Fleet, verifier: Verifier, verifierPublicKey: Uint8Array, broker: EmbeddedBroker, clock: Clock): Promise<Side> {
  const dataDir = tempDir("kp-xgw-");
  // The gateway's signing key (it signs its device certificates) is the one the fleet certifies.
  const { key } = loadOrCreateGatewayKey(dataDir);
  const encryption = generateX25519();
  const certificate = fleet.issueGateway(domain, { signingKey: key.publicKey, encryptionKey: encryption.publicKey }, clock.now());
  const checker = new CertificateChecker({ source: localSource(verifier), verifierPublicKey });
  const link = await Interlink.connect({
    url: broker.url, identity: { gatewayId: domain, signing: key, encryption, certificate }, trust: checkerTrust(checker),
    now: clock.now, protocolVersion: 4, requestTimeoutMs: 15_000,
  });
  const rec = recordingCrypto();
  const t = await startGateway({ dataDir, id: domain, now: clock.now, crypto: rec.crypto, sessionHook: crossGatewayHook({ interlink: link, gatewayCert: certificate, checker }) });
  t.gw.policy.setDefault("allow");
  const dev = await sessionHandset(t.gw, deviceId, provision(t.gw, deviceId));
  await until(() => dev.h.status().registered, `${deviceId} registered`);
  return { t, link, dev, seals: rec.seals, cross: () => t.gw.hook as CrossGateway, checker };
}

describe("sessions across gateways", () => {
  let broker: EmbeddedBroker;
  let fleetDir: string;
  let a: Side;
  let b: Side;
  let fleet: Fleet;
  let verifier: Verifier;
  const clock = new Clock();

  before(async () => {
    broker = await startBroker({ host: "127.0.0.1", port: 0 });
    fleetDir = tempDir("kp-xgw-fleet-");
    fleet = Fleet.create(fleetDir, "kp-fleet", clock.now());
    const verifierKey = generateEd25519();
    verifier = new Verifier({ anchor: fleet.anchor, key: verifierKey, verifierId: "verifier.kp" });
    verifier.updateRevocationList(fleet.signedList());
    a = await side("a.example", "alice", fleet, verifier, verifierKey.publicKey, broker, clock);
    b = await side("b.example", "bob", fleet, verifier, verifierKey.publicKey, broker, clock);
  });

  after(async () => {
    for (const s of [a, b]) {
      if (!s) continue;
      s.dev.close();
      await stopGateway(s.t);
      await s.link.close();
    }
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
    await until(() => a.dev.h.sas.some((s) => s.ready) && b.dev.h.sas.some((s) => s.ready), "an SA at both ends", 10_000);
    const sa = a.dev.h.sas.find((s) => s.ready)!;
    const sb = b.dev.h.sas.find((s) => s.ready)!;
    assert.equal(sa.spi, sb.spi, "one SPI at both ends (each gateway derived it)");
    assert.equal(sa.peer, "bob@b.example");
    assert.equal(sb.peer, "alice@a.example");
    assert.deepEqual(asked, ["alice@a.example chat"], "bob was asked once, with the caller's full name");
    // Each gateway installed the same seed in its own device: the device's key confirmation verified
    // at both gateways, so the keys match (the seeds themselves are wiped by then).
    const installs = (s: Side) => innerMessages(s.seals).filter((m) => m[0] === Msg.SaInstall);
    const [ia] = installs(a);
    const [ib] = installs(b);
    assert.ok(ia && ib, "each gateway sent its device one SaInstall");
    assert.equal(toHex(ia[6] as Uint8Array), toHex(ib[6] as Uint8Array), "the same derived seed on both sides");
    assert.deepEqual([ia[7], ib[7]], [0, 1], "alice is the initiator, bob the responder");

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

  test('a declining callee is "rejected" and an unknown name "not found", as inside one gateway; nothing is installed', async () => {
    b.dev.h.onRequest = () => false;
    const before = innerMessages(a.seals).filter((m) => m[0] === Msg.SaInstall).length;
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

  // Last in this suite: it revokes alice.
  test("a revoked caller is refused at msg3: no SA is installed on either side", async () => {
    b.dev.h.onRequest = () => true;
    verifier.updateRevocationList(fleet.revoke({ devices: ["alice@a.example"] }, clock.now()));
    // A gateway clears its cached verifier answers when a newer revocation list arrives (docs/FLEET.md).
    b.checker.clear();
    const installsAt = (s: Side) => innerMessages(s.seals).filter((m) => m[0] === Msg.SaInstall).length;
    const before = [installsAt(a), installsAt(b)];
    a.dev.h.lastType = 0;
    assert.equal(a.dev.h.connect("bob@b.example", APP), true);
    await until(() => a.dev.h.lastType === Msg.Error, "alice's answer", 10_000);
    assert.equal(a.dev.h.lastCode, ErrorCode.Rejected);
    assert.deepEqual([installsAt(a), installsAt(b)], before, "no SaInstall at either gateway");
    const failed = a.t.events("xsession-failed").at(-1);
    assert.match(String(failed?.reason), /revoked/);
    assert.equal(live(b.dev).length, 0);
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
    const verifierKey = generateEd25519();
    const verifier = new Verifier({ anchor: fleet.anchor, key: verifierKey, verifierId: "verifier.kp" });
    verifier.updateRevocationList(fleet.signedList());
    a = await side("a.example", "alice", fleet, verifier, verifierKey.publicKey, broker, clock);
    b = await side("b.example", "bob", fleet, verifier, verifierKey.publicKey, broker, clock);
    // carol@c.example: her own keys, a gateway certificate for her domain and a certificate for her name.
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
    peer = new CapablePeer({ interlink: peerLink, self: { name: "carol@c.example", identitySeed: identity.seed, cert, gatewayCert }, suites: [[AES, 1]], checker, now: clock.now });
  });

  after(async () => {
    await peer?.close();
    await peerLink?.close();
    for (const s of [a, b]) {
      if (!s) continue;
      s.dev.close();
      await stopGateway(s.t);
      await s.link.close();
    }
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

  test("alice@a.example's handset calls carol (capable peer); carol accepts, data crosses, alice's bye reaches carol", async () => {
    const asked: string[] = [];
    peer.onRequest = (from, app) => {
      asked.push(from);
      return from === "alice@a.example" && app === APP;
    };
    const up = new Promise<PeerSession>((resolve) => (peer.onSession = resolve));
    assert.equal(a.dev.h.connect("carol@c.example", APP), true);
    const s = await up;
    await until(() => a.dev.h.sas.some((x) => x.ready && x.spi === s.spi), "alice's SA ready");
    assert.deepEqual(asked, ["alice@a.example"]);
    const got: string[] = [];
    const closed: number[] = [];
    s.onMessage = (d) => got.push(Buffer.from(d).toString("latin1"));
    s.onClose = (r) => closed.push(r);
    assert.equal(a.dev.h.send(s.spi, text("hi carol")), true);
    await until(() => got.includes("hi carol"), "alice's message at carol");
    await s.send(text("hi alice"));
    await until(() => a.dev.inbox.includes("hi alice"), "carol's message at alice");
    assert.equal(a.dev.h.close(s.spi), true);
    await until(() => closed.length === 1, "carol told of alice's bye");
    assert.deepEqual(closed, [CloseReason.Bye]);
    assert.equal(s.state, "closed");
    await assert.rejects(s.send(text("too late")), /closed/);
  });
});
