// The interlink addressed to instances (gateway/fleet/interlink.ts, InterlinkOptions.instance): a
// domain served by several gateway processes at once. Its requests reach one instance each through an
// MQTT shared subscription, answers go back to the instance that asked, requests can be pinned to one
// instance, and a channel to an instance that died ends after one timeout so that the next request
// reaches a live one. aedes (the in-process broker) has no shared subscriptions, so every test here
// runs on a private Mosquitto (test/support/mosquitto.ts) and is skipped where there is none.
//
// Spreading: Mosquitto 2.0 hands a shared subscription's messages to its members in turn (checked on
// 2.0.11, for MQTT 5 and 3.1.1 clients alike). The tests assert only that every request was handled
// exactly once in all and that each instance got at least one of N; with turns that is certain for
// N >= 2, and even a broker choosing at random would leave one instance empty with probability 2^(1-N)
// (N = 10 openings, 2^-9; N = 20 signed requests, 2^-19).
//
// The old behaviour (no instance) is test/interlink.test.ts, test/interlink-channel.test.ts and
// test/interlink-edges.test.ts, unchanged.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import mqtt, { type MqttClient } from "mqtt";
import { toHex } from "../firmware/bytes.ts";
import { decode, encode } from "../gateway/encoding/cbor.ts";
import { parseSign1 } from "../gateway/encoding/cose.ts";
import { generateEd25519, type Ed25519KeyPair } from "../gateway/crypto/ed25519.ts";
import { Fleet, generateX25519 } from "../gateway/fleet/fleet.ts";
import {
  certificateTopic,
  instanceRequestsTopic,
  instanceResponsesTopic,
  Interlink,
  InterlinkError,
  isInstanceName,
  Kind,
  parseEnvelope,
  requestsTopic,
  responsesTopic,
  sharedRequestsSubscription,
  signEnvelope,
  TOPIC_ROOT,
  type InterlinkIdentity,
  type Rejection,
} from "../gateway/fleet/interlink.ts";
import { CHANNEL_RESET_TYPE, isChannelMessage, openAnswerBody, readOpenRequest } from "../gateway/fleet/channel.ts";
import { CertificateChecker, checkerTrust, localSource, Verifier } from "../gateway/fleet/verifier.ts";
import { Logger, type LogRecord } from "../gateway/log/logger.ts";
import { findMosquitto, startMosquitto, type PrivateMosquitto } from "./support/mosquitto.ts";
import { until } from "./support/harness.ts";

const T0 = 1_800_000_000;
const tmpDirs: string[] = [];
after(() => {
  for (const d of tmpDirs) rmSync(d, { recursive: true, force: true });
});

const MOSQUITTO = findMosquitto();
const NO_MOSQUITTO = MOSQUITTO ? undefined : "no Mosquitto here (.ci/run installs it): shared subscriptions need it, aedes has none";

// ---------------------------------------------------------------------------------------------------
// a fleet, its verifier, and gateways (the fixtures of test/interlink-channel.test.ts)

interface Gw {
  name: string;
  link: Interlink;
  calls: number;
  records: LogRecord[];
  rejections: Rejection[];
}

interface World {
  clock: { now: number };
  fleet: Fleet;
  verifier: Verifier;
  verifierKey: Ed25519KeyPair;
  mosquitto: PrivateMosquitto;
  gateways: Gw[];
  identities: Map<string, InterlinkIdentity>;
}

async function makeWorld(): Promise<World> {
  const dir = mkdtempSync(join(tmpdir(), "kp-il-instances-"));
  tmpDirs.push(dir);
  const fleet = Fleet.create(dir, "acme", T0);
  const verifierKey = generateEd25519();
  const verifier = new Verifier({ anchor: fleet.anchor, key: verifierKey, verifierId: "verifier" });
  verifier.updateRevocationList(fleet.signedList());
  const mosquitto = await startMosquitto(MOSQUITTO as string);
  return { clock: { now: T0 }, fleet, verifier, verifierKey, mosquitto, gateways: [], identities: new Map() };
}

async function closeWorld(w: World): Promise<void> {
  for (const g of w.gateways) await g.link.close().catch(() => undefined);
  await w.mosquitto.kill();
}

/** The domain's one identity: every instance of a domain holds the same gateway key and certificate. */
function identityOf(w: World, id: string): InterlinkIdentity {
  let identity = w.identities.get(id);
  if (!identity) {
    const signing = generateEd25519();
    const encryption = generateX25519();
    const certificate = w.fleet.issueGateway(id, { signingKey: signing.publicKey, encryptionKey: encryption.publicKey }, T0, 100_000);
    identity = { gatewayId: id, signing, encryption, certificate };
    w.identities.set(id, identity);
  }
  return identity;
}

/** A gateway of domain `id`, one of its instances when `instance` is given; its "echo" answers with
 *  what it got and which process it is. */
async function gateway(w: World, id: string, o: { instance?: string; channels?: boolean; protocolVersion?: 4 | 5 | "auto" } = {}): Promise<Gw> {
  const checker = new CertificateChecker({ source: localSource(w.verifier), verifierPublicKey: w.verifierKey.publicKey });
  const records: LogRecord[] = [];
  const log = new Logger(() => {});
  log.subscribe((r) => records.push(r));
  const link = await Interlink.connect({
    url: w.mosquitto.url, identity: identityOf(w, id), trust: checkerTrust(checker), now: () => w.clock.now, log,
    protocolVersion: o.protocolVersion ?? "auto", requestTimeoutMs: 5000, certificateTimeoutMs: 3000, pairwiseChannels: o.channels,
    ...(o.instance === undefined ? {} : { instance: o.instance }),
  });
  const gw: Gw = { name: o.instance ?? id, link, calls: 0, records, rejections: [] };
  link.onReject((r) => gw.rejections.push(r));
  link.handle("echo", (req) => {
    gw.calls++;
    return { body: new Map<string, unknown>([["echo", req.body], ["by", gw.name], ["askedBy", req.fromInstance ?? null]]) };
  });
  w.gateways.push(gw);
  return gw;
}

const field = (body: unknown, k: string): unknown => (body as Map<string, unknown>).get(k);
const noRejections = (w: World): void => assert.deepEqual(w.gateways.flatMap((g) => g.rejections.map((r) => `${g.name}: ${r.code} ${r.reason}`)), []);

// ---------------------------------------------------------------------------------------------------
// without a broker

test("an instance's topics, its shared subscription, and the instance names taken", () => {
  assert.equal(instanceRequestsTopic("b.example", "b1"), "keyproxy-cose/v1/interlink/b.example/i/b1/requests");
  assert.equal(instanceResponsesTopic("b.example", "b1"), "keyproxy-cose/v1/interlink/b.example/i/b1/responses");
  assert.equal(sharedRequestsSubscription("b.example"), "$share/kp-b.example/keyproxy-cose/v1/interlink/b.example/requests");
  for (const ok of ["b1", "B", "eu-west_2", "x".repeat(63)]) assert.ok(isInstanceName(ok), ok);
  for (const bad of ["", "-b", "_b", "b/1", "b+", "b#", "b.1", "x".repeat(64), 7, undefined]) assert.ok(!isInstanceName(bad), String(bad));
});

test("fromInstance is envelope field 12, signed; absent, the envelope is byte for byte as before; any other value is malformed", () => {
  const signing = generateEd25519();
  const e = { from: "a.example", to: "b.example", sessionId: new Uint8Array(16).fill(1), msgId: new Uint8Array(16).fill(2), type: "echo", ts: T0, kind: Kind.Request, body: encode("hi"), senderCert: new Uint8Array([1, 2, 3]) };
  const labels = (bytes: Uint8Array) => [...(decode(parseSign1(bytes).payload) as Map<number, unknown>).keys()];
  assert.deepEqual(labels(signEnvelope(e, signing.seed)), [0, 1, 2, 3, 4, 5, 6, 7, 8, 11], "no field 12 without an instance");
  assert.equal(parseEnvelope(signEnvelope(e, signing.seed)).fromInstance, undefined);
  const named = signEnvelope({ ...e, fromInstance: "a1" }, signing.seed);
  assert.deepEqual(labels(named), [0, 1, 2, 3, 4, 5, 6, 7, 8, 11, 12]);
  assert.equal(parseEnvelope(named).fromInstance, "a1");
  for (const bad of ["", "a/1", 7, new Uint8Array(2), "-a"]) {
    assert.throws(() => parseEnvelope(signEnvelope({ ...e, fromInstance: bad as string }, signing.seed)), (x: unknown) => x instanceof InterlinkError && x.code === "malformed" && /fromInstance must be an instance name/.test(x.message), String(bad));
  }
});

test("an instance name that cannot be a topic level is refused at connect, before any connection", async () => {
  const w = { fleet: Fleet.create(mkdtempSync(join(tmpdir(), "kp-il-instances-")), "acme", T0) };
  const signing = generateEd25519();
  const encryption = generateX25519();
  const identity = { gatewayId: "b.example", signing, encryption, certificate: w.fleet.issueGateway("b.example", { signingKey: signing.publicKey, encryptionKey: encryption.publicKey }, T0) };
  const trust = { gateway: () => Promise.reject(new Error("not reached")) };
  // Port 9 (discard): nothing listens there, so a connection attempt would fail differently.
  await assert.rejects(Interlink.connect({ url: "mqtt://127.0.0.1:9", identity, trust, instance: "b/1" }), (e: unknown) => e instanceof InterlinkError && e.code === "malformed" && /instance "b\/1" is not an instance name/.test(e.message));
});

// ---------------------------------------------------------------------------------------------------
// on a private Mosquitto

test("requests to a domain of two instances: each handled by exactly one instance, both get some (channels and signed, MQTT 5 and 3.1.1)", { skip: NO_MOSQUITTO, timeout: 120_000 }, async () => {
  const w = await makeWorld();
  try {
    for (const pv of ["auto", 4] as const) {
      const b1 = await gateway(w, `b${pv}.example`, { instance: "b1", protocolVersion: pv });
      const b2 = await gateway(w, `b${pv}.example`, { instance: "b2", protocolVersion: pv });
      const b = [b1, b2];
      // Ten requester processes (instances of a.example), one request each: ten channel openings
      // through the shared topic, after which each requester's request rides its channel. Then a second
      // round on the same channels: more channels with one domain than CHANNELS_PER_PEER (4), but each
      // with another process of it, so none ends another's.
      const requesters = await Promise.all(Array.from({ length: 10 }, (_, i) => gateway(w, `a${pv}.example`, { instance: `r${i}`, protocolVersion: pv })));
      for (const round of [0, 1]) {
        const answers = await Promise.all(requesters.map((r, i) => r.link.requestTo(`b${pv}.example`, "echo", i)));
        assert.equal(b1.calls + b2.calls, 10 * (round + 1), "every request handled exactly once");
        for (const [i, a] of answers.entries()) {
          assert.equal(field(a.body, "echo"), i);
          assert.equal(a.instance, field(a.body, "by"), "the answer names the instance that answered");
          assert.equal(field(a.body, "askedBy"), `r${i}`, "the handler saw the asking instance");
        }
      }
      assert.ok(b1.calls > 0 && b2.calls > 0, `both instances handled some: ${b1.calls} and ${b2.calls}`);
      assert.equal(b1.link.stats.channelsAccepted + b2.link.stats.channelsAccepted, 10, "every opening reached one instance, and only one");
      assert.equal(b1.link.channelCount + b2.link.channelCount, 10, "no channel ended");

      // Twenty signed requests from one process with channels off: each goes through the shared topic.
      const before = b1.calls + b2.calls;
      const [c1, c2] = [b1.calls, b2.calls];
      const signer = await gateway(w, `s${pv}.example`, { instance: "s1", channels: false, protocolVersion: pv });
      await Promise.all(Array.from({ length: 20 }, (_, i) => signer.link.request(`b${pv}.example`, "echo", i)));
      assert.equal(b1.calls + b2.calls, before + 20, "every signed request handled exactly once");
      assert.ok(b1.calls > c1 && b2.calls > c2, `both instances took signed requests: ${b1.calls - c1} and ${b2.calls - c2}`);
      assert.ok(b.every((g) => g.link.dedupeSize > 0));
    }
    noRejections(w);
  } finally {
    await closeWorld(w);
  }
});

test("two instances of the requesting domain: each gets its own answers, none the other's, no unsolicited refusal", { skip: NO_MOSQUITTO, timeout: 60_000 }, async () => {
  const w = await makeWorld();
  try {
    await gateway(w, "b.example", { instance: "b1" });
    await gateway(w, "b.example", { instance: "b2" });
    const a1 = await gateway(w, "a.example", { instance: "a1" });
    const a2 = await gateway(w, "a.example", { instance: "a2" });
    for (const channels of [true, false]) {
      const a = channels ? [a1, a2] : [await gateway(w, "a.example", { instance: "a3", channels: false }), await gateway(w, "a.example", { instance: "a4", channels: false })];
      const asked = a.map((g) => Array.from({ length: 10 }, (_, i) => g.link.requestTo("b.example", "echo", `${g.name}-${i}`)));
      for (const [k, g] of a.entries()) {
        for (const [i, answer] of (await Promise.all(asked[k])).entries()) {
          assert.equal(field(answer.body, "echo"), `${g.name}-${i}`, "its own answer");
          assert.equal(field(answer.body, "askedBy"), g.name);
        }
        assert.equal(g.link.pendingCount, 0);
      }
    }
    // Every answer went to its asker's own topic: none to the domain's, which every instance gets.
    assert.deepEqual(w.gateways.map((g) => g.link.stats.siblingAnswers), w.gateways.map(() => 0));
    noRejections(w);
  } finally {
    await closeWorld(w);
  }
});

test("a request pinned to an instance reaches that instance, on a channel or signed", { skip: NO_MOSQUITTO, timeout: 60_000 }, async () => {
  const w = await makeWorld();
  try {
    const b1 = await gateway(w, "b.example", { instance: "b1" });
    const b2 = await gateway(w, "b.example", { instance: "b2" });
    for (const channels of [true, false]) {
      const a = await gateway(w, "a.example", { instance: channels ? "a1" : "a2", channels });
      for (const target of [b2, b1, b2]) {
        const before = [b1.calls, b2.calls];
        for (let i = 0; i < 3; i++) {
          const answer = await a.link.requestTo("b.example", "echo", i, { instance: target.name });
          assert.equal(answer.instance, target.name);
          assert.equal(field(answer.body, "by"), target.name);
        }
        assert.equal(target.calls - before[target === b1 ? 0 : 1], 3, `all three reached ${target.name}`);
        assert.equal((target === b1 ? b2 : b1).calls, before[target === b1 ? 1 : 0], "none reached the other");
      }
      if (channels) {
        assert.equal(a.link.stats.channelsOpened, 2, "one channel to each instance, each opened on its own topic");
        // Each end's log names the channel (8 hex digits) and the peer's instance.
        const opened = a.records.filter((r) => r.event === "interlink-channel-opened");
        assert.deepEqual(opened.map((r) => [r.peer, r.peerInstance]), [["b.example", "b2"], ["b.example", "b1"]]);
        for (const [k, b] of [b2, b1].entries()) {
          const accepted = b.records.filter((r) => r.event === "interlink-channel-accepted");
          assert.deepEqual(accepted.map((r) => [r.peer, r.peerInstance, r.channel]), [["a.example", "a1", opened[k].channel]]);
          assert.match(String(opened[k].channel), /^[0-9a-f]{8}$/);
        }
      }
    }
    assert.deepEqual([w.gateways[0].link.instance, w.gateways[2].link.instance], ["b1", "a1"]);
    await assert.rejects(w.gateways[2].link.request("b.example", "echo", 1, { instance: "b/1" }), (e: unknown) => e instanceof InterlinkError && e.code === "malformed" && e.message === 'instance "b/1" is not an instance name');
    // Openings to two instances at once are two openings, each answered by its own instance.
    const fresh = await gateway(w, "a.example", { instance: "a3" });
    const both = await Promise.all(["b1", "b2", "b1"].map((instance) => fresh.link.requestTo("b.example", "echo", instance, { instance })));
    assert.deepEqual(both.map((x) => [x.instance, field(x.body, "by")]), [["b1", "b1"], ["b2", "b2"], ["b1", "b1"]]);
    assert.equal(fresh.link.stats.channelsOpened, 2);
    noRejections(w);
  } finally {
    await closeWorld(w);
  }
});

test("an instance that dies: the request on its channel times out once, the channel ends, the next request reaches the live instance", { skip: NO_MOSQUITTO, timeout: 60_000 }, async () => {
  const w = await makeWorld();
  try {
    const b1 = await gateway(w, "b.example", { instance: "b1" });
    const b2 = await gateway(w, "b.example", { instance: "b2" });
    const a = await gateway(w, "a.example", { instance: "a1" });
    const first = await a.link.requestTo("b.example", "echo", 1);
    const [dead, live] = first.instance === "b1" ? [b1, b2] : [b2, b1];
    assert.equal(field(first.body, "by"), dead.name);
    // Its TCP connection cut with no DISCONNECT and no reconnection, as when the process is killed;
    // then wait until the broker has seen it go (and dropped its share of the domain's requests).
    const client = (dead.link as unknown as { client: MqttClient }).client;
    const clientId = client.options.clientId as string;
    client.end(true);
    await until(() => w.mosquitto.lines.some((l) => l.includes(clientId) && /closed its connection|disconnect/i.test(l)), `the broker dropping ${clientId}`, 10_000);

    await assert.rejects(a.link.request("b.example", "echo", 2, { timeoutMs: 1500 }), (e: unknown) => e instanceof InterlinkError && e.code === "timeout");
    const ended = a.records.filter((r) => r.event === "interlink-channel-ended");
    assert.deepEqual(ended.map((r) => [r.why, r.peerInstance]), [["the peer instance did not answer", dead.name]]);
    assert.equal(a.link.channelCount, 0);

    const callsBefore = live.calls;
    const next = await a.link.requestTo("b.example", "echo", 3);
    assert.equal(next.instance, live.name, "a new channel, opened through the shared topic, to the live instance");
    assert.equal(live.calls, callsBefore + 1);
    noRejections(w);
  } finally {
    await closeWorld(w);
  }
});

test("an instance restarted under the same name: requests on the channels it forgot are answered after a reset, sent to each asking instance, by that instance", { skip: NO_MOSQUITTO, timeout: 60_000 }, async () => {
  const w = await makeWorld();
  try {
    const b1 = await gateway(w, "b.example", { instance: "b1" });
    await gateway(w, "b.example", { instance: "b2" });
    const a = [await gateway(w, "a.example", { instance: "a1" }), await gateway(w, "a.example", { instance: "a2" })];
    for (const g of a) assert.equal((await g.link.requestTo("b.example", "echo", 1, { instance: "b1" })).instance, "b1");
    await b1.link.close();
    const again = await gateway(w, "b.example", { instance: "b1" });
    const spy = await mqtt.connectAsync(w.mosquitto.url, { protocolVersion: 5, reconnectPeriod: 0 });
    const resets: string[] = [];
    spy.on("message", (topic, payload) => {
      const bytes = new Uint8Array(payload);
      if (topic.endsWith("/requests") && !isChannelMessage(bytes) && parseEnvelope(bytes).type === CHANNEL_RESET_TYPE) resets.push(topic);
    });
    await spy.subscribeAsync(`${TOPIC_ROOT}/a.example/#`, { qos: 1 });
    // b1 knows no channel now: it refuses each message and asks for a reset, signed, sent to the
    // instance that the message's MQTT 5 responseTopic names (the channel message itself does not say),
    // so each asking instance ends its channel and sends its request again on a new one to b1.
    const answers = await Promise.all(a.map((g) => g.link.requestTo("b.example", "echo", g.name, { instance: "b1" })));
    for (const [k, answer] of answers.entries()) {
      assert.equal(answer.instance, "b1");
      assert.equal(field(answer.body, "echo"), a[k].name);
      assert.ok(a[k].records.some((r) => r.event === "interlink-channel-ended" && r.why === "the peer no longer knows it" && r.peerInstance === "b1"), `${a[k].name} ended its channel`);
      assert.equal(a[k].link.stats.channelsOpened, 2);
      assert.equal(a[k].link.stats.channelResets, 1, `${a[k].name} got its own reset`);
    }
    assert.equal(again.calls, 2);
    assert.deepEqual(again.rejections.map((r) => r.code), ["unknown-channel", "unknown-channel"]);
    await until(() => resets.length === 2, "both resets seen on the broker");
    assert.deepEqual(resets.sort(), ["a1", "a2"].map((i) => instanceRequestsTopic("a.example", i)), "each reset on its asking instance's own topic, none on the shared one");
    await spy.endAsync();
  } finally {
    await closeWorld(w);
  }
});

test("peers that name no instance (one process, or older): signed envelopes both ways, no channel, every request answered", { skip: NO_MOSQUITTO, timeout: 60_000 }, async () => {
  const w = await makeWorld();
  try {
    const b1 = await gateway(w, "b.example", { instance: "b1" });
    const b2 = await gateway(w, "b.example", { instance: "b2" });
    const single = await gateway(w, "a.example");
    // A one-process gateway opening a channel to an instance is told "no handler" and sends signed
    // envelopes, through the shared topic, answered to its domain's responses topic as before.
    const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => single.link.requestTo("b.example", "echo", i)));
    assert.deepEqual(answers.map((a) => field(a.body, "echo")), Array.from({ length: 20 }, (_, i) => i));
    assert.ok(answers.every((a) => a.instance === field(a.body, "by")), "signed answers name their instance");
    assert.equal(b1.calls + b2.calls, 20);
    assert.ok(b1.calls > 0 && b2.calls > 0);
    assert.deepEqual([single.link.channelCount, b1.link.channelCount, b2.link.channelCount], [0, 0, 0]);
    assert.ok(single.records.some((r) => r.event === "interlink-channel-unsupported"));

    // An instance opening a channel to a one-process gateway: the answer names no instance, so the
    // instance asks it to drop that channel and sends signed envelopes.
    const c = await gateway(w, "c.example");
    for (let i = 0; i < 3; i++) assert.equal(field(await b1.link.request("c.example", "echo", i), "echo"), i);
    assert.equal(c.calls, 3);
    assert.equal(b1.records.filter((r) => r.event === "interlink-channel-unsupported" && r.why === "the peer names no instance").length, 1, "declined once: the next requests go signed without asking again");
    await until(() => c.link.channelCount === 0, "c.example dropping the channel it accepted", 10_000);
    assert.equal(b1.link.channelCount, 0);
    assert.ok(c.records.some((r) => r.event === "interlink-channel-ended" && r.why === "the peer no longer knows it"));
    noRejections(w);

    // A peer older than instances answers to the domain's responses topic, which every instance gets:
    // the instances that did not ask let such an answer go, without a refusal; a process that runs
    // alone still refuses it ("unsolicited"), as before.
    const cId = identityOf(w, "c.example");
    const stray = signEnvelope({ from: "c.example", to: "b.example", sessionId: new Uint8Array(randomBytes(16)), msgId: new Uint8Array(randomBytes(16)), type: "echo", ts: w.clock.now, kind: Kind.Response, body: encode("x"), re: new Uint8Array(randomBytes(16)), senderCert: cId.certificate }, cId.signing.seed);
    const spy = await mqtt.connectAsync(w.mosquitto.url, { protocolVersion: 5, reconnectPeriod: 0 });
    try {
      await spy.publishAsync(responsesTopic("b.example"), Buffer.from(stray), { qos: 1 });
      await until(() => b1.link.stats.siblingAnswers === 1 && b2.link.stats.siblingAnswers === 1, "both instances letting the stray answer go");
      noRejections(w);
      const refused = new Promise<Rejection>((resolve) => c.link.onReject(resolve));
      const strayToC = signEnvelope({ from: "b.example", to: "c.example", sessionId: new Uint8Array(randomBytes(16)), msgId: new Uint8Array(randomBytes(16)), type: "echo", ts: w.clock.now, kind: Kind.Response, body: encode("x"), re: new Uint8Array(randomBytes(16)), senderCert: identityOf(w, "b.example").certificate }, identityOf(w, "b.example").signing.seed);
      await spy.publishAsync(responsesTopic("c.example"), Buffer.from(strayToC), { qos: 1 });
      assert.equal((await refused).code, "unsolicited");
    } finally {
      await spy.endAsync();
    }
  } finally {
    await closeWorld(w);
  }
});

test("fromInstance cannot be forged: it is under the signature (a channel takes its peer instance from the signed opening), and altering it breaks verification", { skip: NO_MOSQUITTO, timeout: 60_000 }, async () => {
  const w = await makeWorld();
  try {
    const b1 = await gateway(w, "b.example", { instance: "b1" });
    await gateway(w, "b.example", { instance: "b2" });
    const a = identityOf(w, "a.example");
    const signed = signEnvelope({ from: "a.example", to: "b.example", sessionId: new Uint8Array(randomBytes(16)), msgId: new Uint8Array(randomBytes(16)), type: "echo", ts: w.clock.now, kind: Kind.Request, body: encode("hi"), senderCert: a.certificate, fromInstance: "a1" }, a.signing.seed);
    // The same message with field 12 rewritten ("a1" -> "a2", same length) and the signature kept.
    const forged = Buffer.from(signed);
    const at = forged.lastIndexOf(Buffer.from([0x0c, 0x62, 0x61, 0x31])); // 12: "a1", the payload's last field
    assert.ok(at > 0);
    forged.write("a2", at + 2);
    assert.equal(parseEnvelope(new Uint8Array(forged)).fromInstance, "a2", "the forgery parses");
    const spy = await mqtt.connectAsync(w.mosquitto.url, { protocolVersion: 5, reconnectPeriod: 0 });
    try {
      const refused = new Promise<Rejection>((resolve) => b1.link.onReject(resolve));
      await spy.publishAsync(instanceRequestsTopic("b.example", "b1"), forged, { qos: 1 });
      const r = await refused;
      assert.equal(r.code, "bad-signature");
      assert.equal(b1.calls, 0, "the handler did not run");
      assert.equal(b1.link.dedupeSize, 0);
      // The genuine one is taken, and its answer goes to a1's own responses topic.
      const answered = new Promise<Uint8Array>((resolve) => spy.on("message", (_t, p) => resolve(new Uint8Array(p))));
      await spy.subscribeAsync(instanceResponsesTopic("a.example", "a1"), { qos: 1 });
      await spy.publishAsync(instanceRequestsTopic("b.example", "b1"), Buffer.from(signed), { qos: 1 });
      const answer = parseEnvelope(await answered);
      assert.equal(answer.fromInstance, "b1");
      assert.equal(toHex(answer.re as Uint8Array), toHex(parseEnvelope(signed).msgId));
      assert.equal(b1.calls, 1);
    } finally {
      await spy.endAsync();
    }
    assert.equal(requestsTopic("b.example"), "keyproxy-cose/v1/interlink/b.example/requests");
  } finally {
    await closeWorld(w);
  }
});

test("a channel opening pinned to an instance is taken only from that instance: another one's answer, or one naming none, opens no channel", { skip: NO_MOSQUITTO, timeout: 60_000 }, async () => {
  const w = await makeWorld();
  try {
    const a = await gateway(w, "a.example");
    const b = identityOf(w, "b.example");
    // b.example's instance b1 is played here: it answers each opening properly but for its instance field.
    const player = await mqtt.connectAsync(w.mosquitto.url, { protocolVersion: 5, reconnectPeriod: 0 });
    let answerAs: string | undefined = "b2";
    player.on("message", (_topic, payload) => {
      const e = parseEnvelope(new Uint8Array(payload));
      const open = readOpenRequest(decode(e.body));
      const body = openAnswerBody({ channelId: open.channelId, ephemeral: generateX25519().publicKey, peerEphemeral: open.ephemeral });
      const answer = signEnvelope({ from: "b.example", to: e.from, sessionId: e.sessionId, msgId: new Uint8Array(randomBytes(16)), type: e.type, ts: w.clock.now, kind: Kind.Response, body: encode(body), re: e.msgId, senderCert: b.certificate, ...(answerAs === undefined ? {} : { fromInstance: answerAs }) }, b.signing.seed);
      void player.publishAsync(responsesTopic(e.from), Buffer.from(answer), { qos: 1 });
    });
    await player.subscribeAsync(instanceRequestsTopic("b.example", "b1"), { qos: 1 });
    await player.publishAsync(certificateTopic("b.example"), Buffer.from(b.certificate), { qos: 1, retain: true });
    try {
      for (const [as, by] of [["b2", 'instance "b2"'], [undefined, "no instance"]] as const) {
        answerAs = as;
        await assert.rejects(a.link.requestTo("b.example", "echo", 1, { instance: "b1" }), (e: unknown) =>
          e instanceof InterlinkError && e.code === "malformed" && e.message === `the channel opening sent to instance "b1" of "b.example" was answered by ${by}`);
        assert.deepEqual([a.link.channelCount, a.link.stats.channelsOpened], [0, 0], `answered by ${by}: no channel`);
      }
    } finally {
      await player.endAsync();
    }
  } finally {
    await closeWorld(w);
  }
});
