// The capable-peer SDK (sdk/peer.ts) with a domain that runs several instances (issue 12, scope 2):
// a.example runs two in-process instances on one PostgreSQL registry, carol@c.example is a capable
// peer, all on Mosquitto (the interlink reaches a domain of instances through an MQTT shared
// subscription, which aedes lacks: KEYPROXY_TEST_MQTT_URL, as CI runs it, else a private Mosquitto).
//
// Each SA across domains runs at one instance of a.example, and every message about it must reach that
// one: the peer pins its requests to the instance that answered its message 1, or that sent the one it
// answered. Without the pin a request goes to the domain's shared subscription, to whichever instance
// the broker picks, which need not run the SA. When the instance running an SA stops, another takes it
// over and says so (kp.x.moved); the peer sends to that one from then on, and the SA carries on. When
// none takes it over, the peer's SA ends after the grace period, as a gateway's does.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { SUITE_AES_CCM_16_64_128 as AES } from "../firmware/crypto/types.ts";
import { CloseReason } from "../firmware/proto/messages.ts";
import type { CrossGateway } from "../gateway/crossgw/cross-gateway.ts";
import { movedBody, XGW_MOVED } from "../gateway/crossgw/messages.ts";
import { generateEd25519 } from "../gateway/crypto/ed25519.ts";
import { issueCertificate } from "../gateway/encoding/cwt.ts";
import { Fleet, generateX25519, loadGatewayCredentials } from "../gateway/fleet/fleet.ts";
import { Interlink, InterlinkError } from "../gateway/fleet/interlink.ts";
import { CertificateChecker, checkerTrust, localSource, Verifier } from "../gateway/fleet/verifier.ts";
import { CapablePeer, type PeerSession } from "../sdk/peer.ts";
import { fleetDataDir } from "./support/fleet-rig.ts";
import { provision, startGateway, tempDir, until, type TestGateway } from "./support/harness.ts";
import { instanceDataDir } from "./support/instance-rig.ts";
import { sharedSubscriptionBroker, skipWithoutBrokerOrDatabase } from "./support/mosquitto.ts";
import { testDatabase, type TestDatabase } from "./support/postgres.ts";
import { sessionHandset, type SessionHandset } from "./support/session-rig.ts";

const DOMAIN = "a.example";
const APP = "chat";
const text = (s: string) => new Uint8Array(Buffer.from(s, "latin1"));
const now = () => Math.floor(Date.now() / 1000);
/** How long carol's SA waits for another instance to take it over when its own does not answer. */
const GRACE_MS = 2000;

describe("the capable-peer SDK with a domain running several instances", { timeout: 120_000 }, () => {
  let broker: Awaited<ReturnType<typeof sharedSubscriptionBroker>>;
  let url: string | undefined;
  let db: TestDatabase | undefined;
  let fleet: Fleet;
  let firstDir = "";
  const instances = new Map<string, TestGateway>();
  const handsets: SessionHandset[] = [];
  const targets = new Map<string, string>();
  let peer: CapablePeer;
  let peerLink: Interlink;
  let verifier: Verifier;
  let verifierKey: ReturnType<typeof generateEd25519>;
  const links: Interlink[] = [];
  /** Carol's sessions, as they came up, and what each received. */
  const inbox = new Map<PeerSession, string[]>();

  async function startInstance(name: string): Promise<TestGateway> {
    const dataDir = firstDir ? instanceDataDir(firstDir) : fleetDataDir(DOMAIN, fleet, now);
    firstDir ||= dataDir;
    const { credentials } = loadGatewayCredentials(dataDir, DOMAIN, now(), false);
    const t = await startGateway({
      dataDir, database: db!.url, id: DOMAIN, instance: name, now, mqtt: { url: url!, metricsSeconds: 3600 },
      fleet: { credentials, recheckMs: 0 },
    });
    instances.set(name, t);
    return t;
  }

  async function handset(id: string, at: string): Promise<SessionHandset> {
    targets.set(id, at);
    const h = await sessionHandset(instances.get(at)!.gw, id, await provision(instances.get(at)!.gw, id), { target: () => instances.get(targets.get(id)!)!.gw.address });
    handsets.push(h);
    await until(() => h.h.status().registered, `${id} registered`);
    return h;
  }

  /** An interlink of `domain` (its own certificate from the fleet), as one of its instances if named. */
  async function interlinkOf(domain: string, instance?: string): Promise<Interlink> {
    const signing = generateEd25519();
    const encryption = generateX25519();
    const certificate = fleet.issueGateway(domain, { signingKey: signing.publicKey, encryptionKey: encryption.publicKey }, now());
    const checker = new CertificateChecker({ source: localSource(verifier), verifierPublicKey: verifierKey.publicKey });
    const link = await Interlink.connect({
      url: url!, identity: { gatewayId: domain, signing, encryption, certificate }, trust: checkerTrust(checker), now, protocolVersion: 5, requestTimeoutMs: 10_000,
      ...(instance === undefined ? {} : { instance }),
    });
    links.push(link);
    return link;
  }

  /** Handset h calls carol; resolves with carol's session once it is up at both ends. */
  async function callCarol(h: SessionHandset): Promise<PeerSession> {
    const up = new Promise<PeerSession>((resolve) => (peer.onSession = resolve));
    assert.equal(h.h.connect("carol@c.example", APP), true);
    const s = await Promise.race([up, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`carol never had a session with ${h.id}`)), 15_000))]);
    inbox.set(s, []);
    s.onMessage = (d) => inbox.get(s)!.push(Buffer.from(d).toString("latin1"));
    await until(() => h.h.sas.some((x) => x.ready && x.spi === s.spi), `${h.id}'s SA with carol ready`);
    return s;
  }

  /** One message each way between handset h and carol's session s, each arriving once. */
  async function exchangeWithCarol(h: SessionHandset, s: PeerSession, tag: string): Promise<void> {
    await s.send(text(`${tag} to ${h.id}`));
    await until(() => h.inbox.includes(`${tag} to ${h.id}`), `carol's "${tag}" at ${h.id}`);
    assert.equal(h.h.send(s.spi, text(`${tag} from ${h.id}`)), true);
    await until(() => inbox.get(s)!.includes(`${tag} from ${h.id}`), `${h.id}'s "${tag}" at carol`);
    assert.equal(h.inbox.filter((m) => m === `${tag} to ${h.id}`).length, 1);
    assert.equal(inbox.get(s)!.filter((m) => m === `${tag} from ${h.id}`).length, 1);
  }

  const takenOver = (name: string) => (instances.get(name)!.gw.hook as CrossGateway).stats.takenOver;

  before(async (t) => {
    broker = await sharedSubscriptionBroker();
    url = broker?.url;
    if (!url) return;
    db = await testDatabase(t as never);
    if (!db) return;
    fleet = Fleet.create(tempDir("kp-sdk-inst-fleet-"), "kp-fleet", now());
    await startInstance("a1");
    await startInstance("a2");
    await instances.get("a1")!.gw.policy.setDefault("allow");
    // carol@c.example: her own keys, a gateway certificate for her domain and a certificate for her name.
    verifierKey = generateEd25519();
    verifier = new Verifier({ anchor: fleet.anchor, key: verifierKey, verifierId: "verifier.kp" });
    verifier.updateRevocationList(fleet.signedList());
    const signing = generateEd25519();
    const encryption = generateX25519();
    const gatewayCert = fleet.issueGateway("c.example", { signingKey: signing.publicKey, encryptionKey: encryption.publicKey }, now());
    const identity = generateEd25519();
    const cert = issueCertificate({ iss: "c.example", sub: "carol", iat: now(), nbf: now(), exp: now() + 3600, cti: new Uint8Array(16).fill(7), publicKey: identity.publicKey }, signing.seed);
    const checker = new CertificateChecker({ source: localSource(verifier), verifierPublicKey: verifierKey.publicKey });
    peerLink = await Interlink.connect({
      url, identity: { gatewayId: "c.example", signing, encryption, certificate: gatewayCert }, trust: checkerTrust(checker), now, protocolVersion: 5, requestTimeoutMs: 10_000,
    });
    peer = new CapablePeer({ interlink: peerLink, self: { name: "carol@c.example", identitySeed: identity.seed, cert, gatewayCert }, suites: [[AES, 1]], checker, now, graceMs: GRACE_MS });
    peer.onRequest = (_from, app) => app === APP;
  });

  after(async () => {
    for (const h of handsets) h.close();
    await peer?.close();
    await peerLink?.close();
    for (const l of links) await l.close();
    for (const t of instances.values()) await t.gw.stop().catch(() => undefined);
    await db?.drop();
    await broker?.kill();
  });

  const skipped = (t: { skip(m: string): void }) => skipWithoutBrokerOrDatabase(t, url, db);

  test("carol sends each SA's messages to the instance that runs it: the one that called her, or answered her call", async (t) => {
    if (skipped(t)) return;
    const bob = await handset("bob", "a2");
    const alice = await handset("alice", "a1");
    // bob's SA runs at a2; then a1 opens the newest channel with carol as alice calls her. A request
    // carol did not pin would go to a1, which does not run bob's SA.
    const withBob = await callCarol(bob);
    const withAlice = await callCarol(alice);
    assert.equal(withBob.peerInstance, "a2");
    assert.equal(withAlice.peerInstance, "a1");
    await exchangeWithCarol(bob, withBob, "first");
    await exchangeWithCarol(alice, withAlice, "first");
    // Carol calls: her message 3, confirmation and frames go to the instance that answered message 1.
    const dave = await handset("dave", "a2");
    dave.h.onRequest = (from, app) => from === "carol@c.example" && app === APP;
    for (let i = 0; i < 4; i++) {
      const s = await peer.connect("dave@a.example", APP);
      inbox.set(s, []);
      s.onMessage = (d) => inbox.get(s)!.push(Buffer.from(d).toString("latin1"));
      assert.ok(s.peerInstance === "a1" || s.peerInstance === "a2", `the SA runs at an instance (${s.peerInstance})`);
      await until(() => dave.h.sas.some((x) => x.ready && x.spi === s.spi), "dave's SA with carol ready");
      await exchangeWithCarol(dave, s, `call ${i}`);
      await s.close();
      await until(() => dave.closed.some(([spi, why]) => spi === s.spi && why === CloseReason.Bye), "dave told of carol's bye");
    }
  });

  test("the instance running an SA stops: the other takes it over and tells carol (kp.x.moved), and the SA carries on", async (t) => {
    if (skipped(t)) return;
    const bob = handsets.find((h) => h.id === "bob")!;
    const withBob = [...inbox.keys()].find((s) => s.peer === "bob@a.example")!;
    const spi = withBob.spi;
    assert.equal(withBob.peerInstance, "a2");
    const closed: CloseReason[] = [];
    withBob.onClose = (r) => closed.push(r);
    targets.set("bob", "a1");
    await instances.get("a2")!.gw.stop();
    instances.delete("a2");
    await until(() => bob.h.status().state === "down", "bob's link gone with a2");
    await bob.reconnect();
    await until(() => bob.h.status().state === "linked", "bob rejoined at a1");
    await until(() => withBob.peerInstance === "a1", "carol told that a1 runs the SA now", 15_000);
    assert.equal(takenOver("a1"), 1, "a1 took the SA over");
    assert.equal(withBob.spi, spi, "the same SA");
    await exchangeWithCarol(bob, withBob, "after a2 stopped");
    assert.deepEqual(closed, [], "the SA did not end at carol");
    assert.deepEqual(bob.closed.filter(([s]) => s === spi), [], "nor at bob");
  });

  test("kp.x.moved is taken only from the SA's own peer domain, as one of its instances: anyone else's is refused and the SA stays where it runs", async (t) => {
    if (skipped(t)) return;
    const withAlice = [...inbox.keys()].find((s) => s.peer === "alice@a.example")!;
    assert.equal(withAlice.peerInstance, "a1");
    // A process certified by the fleet for a.example that names no instance.
    const lone = await interlinkOf(DOMAIN);
    await assert.rejects(lone.request("c.example", XGW_MOVED, movedBody(withAlice.spi)), (e: unknown) => e instanceof InterlinkError && /names no instance/.test(e.message));
    // An instance of another domain, certified by the fleet, is not party to the SA.
    const other = await interlinkOf("d.example", "d1");
    await assert.rejects(other.request("c.example", XGW_MOVED, movedBody(withAlice.spi)), (e: unknown) => e instanceof InterlinkError && /"d\.example" is not party/.test(e.message));
    // An SPI carol does not hold.
    const a9 = await interlinkOf(DOMAIN, "a9");
    await assert.rejects(a9.request("c.example", XGW_MOVED, movedBody((withAlice.spi ^ 1) >>> 0 || 1)), (e: unknown) => e instanceof InterlinkError && /no SA with this SPI/.test(e.message));
    assert.equal(withAlice.peerInstance, "a1", "the SA still runs at a1");
    // The lone process above took a.example's unpinned requests too: it goes before the SA is used.
    for (const l of [lone, other, a9]) await l.close();
    await exchangeWithCarol(handsets.find((h) => h.id === "alice")!, withAlice, "after the refused moves");
  });

  test("an SA moved to an instance that then does not answer: carol's request times out, the SA waits the grace period for another takeover, then ends", async (t) => {
    if (skipped(t)) return;
    const withAlice = [...inbox.keys()].find((s) => s.peer === "alice@a.example")!;
    const closed: CloseReason[] = [];
    withAlice.onClose = (r) => closed.push(r);
    // An instance of a.example (certified for its domain) says it runs the SA now, and never answers.
    const a9 = await interlinkOf(DOMAIN, "a9");
    await a9.request("c.example", XGW_MOVED, movedBody(withAlice.spi));
    assert.equal(withAlice.peerInstance, "a9");
    await a9.close();
    await assert.rejects(withAlice.send(text("to nobody")), (e: unknown) => e instanceof InterlinkError && e.code === "timeout");
    assert.equal(withAlice.state, "up", "it waits for a takeover first");
    await until(() => closed.length === 1, "carol's SA ended after the grace period", GRACE_MS + 5000);
    assert.deepEqual(closed, [CloseReason.PeerGone]);
    assert.equal(withAlice.state, "closed");
  });
});
