// The interlink at its edges (docs/MUTATION.md, gateway/fleet/interlink.ts): every envelope field at
// and past its limit, the body encryption recomputed from its description (docs/PROTOCOL.md), the
// dedupe window's edges, and then, in process over the in-process broker (aedes, MQTT 3.1.1) and a
// private Mosquitto for MQTT 5: the arguments of request(), its timeouts on node:test's mock clock,
// close(), every refusal with its code and the reason an operator reads, remote errors, the
// certificate lookups, watched topics, and what is retained and published again after a broker
// restart, all with pairwise channels off. Waits are for events (a rejection, a message, a log record), never sleeps.

import { test, mock, after } from "node:test";
import assert from "node:assert/strict";
import net, { createServer, type AddressInfo } from "node:net";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createDecipheriv, hkdfSync, randomBytes } from "node:crypto";
import { Aedes } from "aedes";
import mqtt, { type MqttClient } from "mqtt";
import { toHex } from "../firmware/bytes.ts";
import { decode, encode } from "../gateway/encoding/cbor.ts";
import { parseSign1, signSign1 } from "../gateway/encoding/cose.ts";
import { generateEd25519, type Ed25519KeyPair } from "../gateway/crypto/ed25519.ts";
import { Fleet, generateX25519, readGatewayCertificateUnverified, x25519SharedSecret, type X25519KeyPair } from "../gateway/fleet/fleet.ts";
import {
  certificateTopic,
  decryptBody,
  DedupeWindow,
  encryptBody,
  Interlink,
  InterlinkError,
  Kind,
  parseEnvelope,
  requestsTopic,
  responsesTopic,
  signEnvelope,
  type Envelope,
  type GatewayPeer,
  type InterlinkIdentity,
  type InterlinkOptions,
  type PeerTrust,
  type Rejection,
} from "../gateway/fleet/interlink.ts";
import { CertificateChecker, checkerTrust, localSource, Verifier } from "../gateway/fleet/verifier.ts";
import { Logger, type LogRecord } from "../gateway/log/logger.ts";
import { findMosquitto, startMosquitto } from "./support/mosquitto.ts";

const T0 = 1_800_000_000;
const tmpDirs: string[] = [];
after(() => {
  for (const d of tmpDirs) rmSync(d, { recursive: true, force: true });
});
function tmp(prefix: string): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  tmpDirs.push(d);
  return d;
}

const id16 = (fill: number): Uint8Array => new Uint8Array(16).fill(fill);
const anIdentity = (() => {
  const fleet = Fleet.create(tmp("kp-il-edges-"), "acme", T0);
  const signing = generateEd25519();
  const encryption = generateX25519();
  return { fleet, signing, encryption, certificate: fleet.issueGateway("a.example", { signingKey: signing.publicKey, encryptionKey: encryption.publicKey }, T0) };
})();

// ---------------------------------------------------------------------------------------------------
// the envelope, without a broker

/** The fields of a request envelope from a.example to b.example, by their labels (docs/PROTOCOL.md). */
function fields(): Map<number, unknown> {
  return new Map<number, unknown>([
    [0, "KP interlink v1"],
    [1, "a.example"],
    [2, "b.example"],
    [3, id16(3)],
    [4, id16(4)],
    [5, "echo"],
    [6, T0],
    [7, 0],
    [8, encode("hi")],
    [11, anIdentity.certificate],
  ]);
}

function signed(m: unknown): Uint8Array {
  return signSign1(encode(m), anIdentity.signing.seed);
}

/** parseEnvelope's refusal of these fields: always "malformed", and the reason. */
function refusal(m: unknown): string {
  try {
    parseEnvelope(signed(m));
  } catch (e) {
    assert.ok(e instanceof InterlinkError, `an InterlinkError, not ${String(e)}`);
    assert.equal(e.code, "malformed");
    assert.equal(e.name, "InterlinkError");
    return e.message;
  }
  assert.fail("the envelope was accepted");
}

function withField(label: number, value: unknown): Map<number, unknown> {
  const m = fields();
  if (value === undefined) m.delete(label);
  else m.set(label, value);
  return m;
}

test("topics are keyproxy-cose/v1/interlink/<gateway id>/(requests|responses|certificate)", () => {
  assert.equal(requestsTopic("gw.example"), "keyproxy-cose/v1/interlink/gw.example/requests");
  assert.equal(responsesTopic("gw.example"), "keyproxy-cose/v1/interlink/gw.example/responses");
  assert.equal(certificateTopic("gw.example"), "keyproxy-cose/v1/interlink/gw.example/certificate");
  assert.equal(new InterlinkError("closed", "x").name, "InterlinkError");
});

test("an envelope carries exactly its fields: 9 only when encrypted, 10 only on answers", () => {
  const e: Envelope = { from: "a.example", to: "b.example", sessionId: id16(3), msgId: id16(4), type: "echo", ts: T0, kind: Kind.Request, body: encode("hi"), senderCert: anIdentity.certificate };
  const labels = (bytes: Uint8Array) => [...(decode(parseSign1(bytes).payload) as Map<number, unknown>).keys()].sort((a, b) => a - b);
  const request = signEnvelope(e, anIdentity.signing.seed);
  assert.deepEqual(labels(request), [0, 1, 2, 3, 4, 5, 6, 7, 8, 11]);
  assert.equal((decode(parseSign1(request).payload) as Map<number, unknown>).get(0), "KP interlink v1");
  const parsed = parseEnvelope(request);
  assert.deepEqual(Object.keys(parsed).sort(), ["body", "from", "kind", "msgId", "senderCert", "sessionId", "to", "ts", "type"]);
  assert.deepEqual(labels(signEnvelope({ ...e, kind: Kind.Response, re: id16(5) }, anIdentity.signing.seed)), [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11]);
  const answer = parseEnvelope(signEnvelope({ ...e, kind: Kind.Response, re: id16(5), ephemeral: new Uint8Array(32).fill(7) }, anIdentity.signing.seed));
  assert.equal(toHex(answer.re ?? new Uint8Array()), toHex(id16(5)));
  assert.equal(toHex(answer.ephemeral ?? new Uint8Array()), toHex(new Uint8Array(32).fill(7)));
});

test("parseEnvelope refuses each field past its edge with its own reason, and takes the edge itself", () => {
  // Not COSE at all, or a payload that is not deterministic CBOR: the parser's reason, with the cause.
  try {
    parseEnvelope(Uint8Array.of(1, 2, 3));
    assert.fail("accepted");
  } catch (e) {
    assert.ok(e instanceof InterlinkError && e.code === "malformed");
    assert.match(e.message, /^not an interlink envelope: not a COSE_Sign1_Tagged message/);
    assert.ok(e.cause instanceof Error, "the parser's error is kept as the cause");
  }
  const nonDeterministic = signSign1(Uint8Array.of(0xa1, 0x18, 0x00, 0x01), anIdentity.signing.seed); // {0: 1} with a long-form key
  assert.throws(() => parseEnvelope(nonDeterministic), (e: unknown) => e instanceof InterlinkError && e.code === "malformed" && /^not an interlink envelope: .*interlink envelope/.test(e.message));

  assert.equal(refusal(["KP interlink v1"]), "not an interlink v1 envelope");
  assert.equal(refusal(withField(0, "KP interlink v2")), "not an interlink v1 envelope");
  const ids = "envelope from and to must be gateway ids";
  assert.equal(refusal(withField(1, "not a domain/")), ids);
  assert.equal(refusal(withField(2, "not a domain/")), ids);
  const idLength = "envelope sessionId and msgId must be 16 bytes";
  assert.equal(refusal(withField(3, new Uint8Array(15))), idLength);
  assert.equal(refusal(withField(4, new Uint8Array(17))), idLength);
  assert.equal(refusal(withField(3, new Array(16).fill(1))), idLength, "16 numbers are not 16 bytes");
  const typeLength = "envelope type must be 1-64 characters";
  assert.equal(refusal(withField(5, "")), typeLength);
  assert.equal(refusal(withField(5, "t".repeat(65))), typeLength);
  assert.equal(refusal(withField(5, 5)), typeLength);
  assert.equal(parseEnvelope(signed(withField(5, "t".repeat(64)))).type, "t".repeat(64));
  const whole = "envelope ts must be whole seconds";
  assert.equal(refusal(withField(6, -1)), whole);
  assert.equal(refusal(withField(6, 1.5)), whole);
  assert.equal(refusal(withField(6, "5")), whole);
  assert.equal(parseEnvelope(signed(withField(6, 0))).ts, 0);
  assert.equal(refusal(withField(7, 3)), "envelope kind must be 0, 1 or 2");
  assert.equal(refusal(withField(8, "hi")), "envelope body must be bytes");
  const eph = "envelope ephemeral key must be 32 bytes";
  assert.equal(refusal(withField(9, new Uint8Array(31))), eph);
  assert.equal(refusal(withField(9, new Array(32).fill(1))), eph);
  const re = "envelope re must be present exactly on responses and errors";
  assert.equal(refusal(withField(10, id16(9))), re, "a request with re");
  assert.equal(refusal(withField(7, 1)), re, "a response without re");
  const response = withField(7, 2);
  response.set(10, new Uint8Array(15));
  assert.equal(refusal(response), re, "re of the wrong length");
  assert.equal(refusal(withField(11, "cert")), "envelope must carry the sender's certificate");
  assert.equal(refusal(withField(11, undefined)), "envelope must carry the sender's certificate");
});

/** Recomputes an encrypted body's plaintext from docs/PROTOCOL.md with node:crypto alone. */
function openBySpec(e: Envelope, recipient: X25519KeyPair): Uint8Array {
  const eph = e.ephemeral as Uint8Array;
  const shared = x25519SharedSecret(recipient.secretKey, eph);
  const okm = Buffer.from(hkdfSync("sha256", shared, Buffer.concat([eph, recipient.publicKey]), "KP interlink body v1", 44));
  const d = createDecipheriv("aes-256-gcm", okm.subarray(0, 32), okm.subarray(32));
  d.setAAD(encode(["KP interlink v1", e.from, e.to, e.sessionId, e.msgId, e.type, e.ts, e.kind, e.re ?? null]));
  d.setAuthTag(e.body.subarray(e.body.length - 16));
  return new Uint8Array(Buffer.concat([d.update(e.body.subarray(0, e.body.length - 16)), d.final()]));
}

test("an encrypted body is HPKE-style AES-256-GCM bound to its header, as documented", () => {
  const recipient = generateX25519();
  for (const e of [
    { from: "a.example", to: "b.example", sessionId: id16(1), msgId: id16(2), type: "echo", ts: T0, kind: Kind.Request, body: encode("secret"), senderCert: anIdentity.certificate },
    { from: "a.example", to: "b.example", sessionId: id16(1), msgId: id16(2), type: "echo", ts: T0, kind: Kind.Response, re: id16(7), body: encode("secret"), senderCert: anIdentity.certificate },
  ] as Envelope[]) {
    encryptBody(e, recipient.publicKey);
    assert.equal(decode(openBySpec(e, recipient)), "secret");
    assert.equal(decode(decryptBody({ ...e }, recipient)), "secret");
  }
});

test("decryptBody: the tag's length is the edge, every failure is decrypt-failed with its reason, and the body key is wiped", () => {
  const recipient = generateX25519();
  const base: Envelope = { from: "a.example", to: "b.example", sessionId: id16(1), msgId: id16(2), type: "echo", ts: T0, kind: Kind.Request, body: new Uint8Array(0), senderCert: anIdentity.certificate };
  const empty = { ...base };
  encryptBody(empty, recipient.publicKey);
  assert.equal(empty.body.length, 16, "an empty plaintext is its tag alone");
  assert.equal(decryptBody(empty, recipient).length, 0);
  const fails = (e: Envelope, reason: string) =>
    assert.throws(() => decryptBody(e, recipient), (err: unknown) => err instanceof InterlinkError && err.code === "decrypt-failed" && err.message === reason);
  fails({ ...empty, body: empty.body.subarray(1) }, "encrypted body is shorter than its tag");
  fails({ ...empty, ephemeral: new Uint8Array(32) }, "ephemeral key is not a usable X25519 key");
  const altered = { ...empty, body: Uint8Array.from(empty.body) };
  altered.body[0] ^= 1;
  fails(altered, "encrypted body does not authenticate (wrong key or altered)");
  fails({ ...empty, ts: T0 + 1 }, "encrypted body does not authenticate (wrong key or altered)");

  // The 44 bytes of HKDF output (key || iv) are zero once the body is open or refused.
  const made: Buffer[] = [];
  const from = Buffer.from;
  (Buffer as unknown as { from: (...a: unknown[]) => Buffer }).from = (...a: unknown[]) => {
    const b = (from as (...x: unknown[]) => Buffer).apply(Buffer, a);
    if (a[0] instanceof ArrayBuffer && b.length === 44) made.push(b);
    return b;
  };
  try {
    decryptBody(empty, recipient);
    assert.throws(() => decryptBody(altered, recipient));
  } finally {
    Buffer.from = from;
  }
  assert.equal(made.length, 2);
  for (const okm of made) assert.ok(okm.subarray(0, 32).every((b) => b === 0), "the AES key is wiped");
});

test("the dedupe window: a timestamp exactly maxSkew away is fresh, an entry exactly maxSkew old is kept, and 0 is a timestamp", () => {
  const d = new DedupeWindow(10, 60);
  assert.equal(d.refuse("z", 0, 0), undefined, "nothing is below the floor of an empty window");
  d.record("z", 0, 0);
  assert.equal(d.refuse("z", 0, 0)?.code, "duplicate");
  assert.equal(d.refuse("a", T0 - 60, T0), undefined);
  assert.equal(d.refuse("a", T0 + 60, T0), undefined);
  const r = d.refuse("a", T0 - 61, T0);
  assert.equal(r?.code, "stale");
  assert.equal(r?.reason, `timestamp ${T0 - 61} is more than 60 s from now (${T0}): delayed or replayed`);
  const w = new DedupeWindow(10, 60);
  w.record("a", T0, T0);
  w.record("b", T0 + 60, T0 + 60);
  assert.equal(w.size, 2, "an entry exactly maxSkew old is still remembered");
  assert.equal(w.refuse("a", T0, T0 + 60)?.code, "duplicate");
  w.record("c", T0 + 61, T0 + 61);
  assert.equal(w.size, 2, "one more second and it goes");
});

// ---------------------------------------------------------------------------------------------------
// over a broker

interface AedesBroker {
  url: string;
  port: number;
  subscriptions: { client: string; topic: string; qos: number }[];
  unsubscriptions: { client: string; topic: string }[];
  clients: string[];
  /** Closes it and starts a new, empty one on the same port (a restart without persistence). */
  restart(): Promise<void>;
  close(): Promise<void>;
}

async function startAedes(): Promise<AedesBroker> {
  let broker: Aedes;
  let server: net.Server;
  const b = {
    url: "",
    port: 0,
    subscriptions: [] as AedesBroker["subscriptions"],
    unsubscriptions: [] as AedesBroker["unsubscriptions"],
    clients: [] as string[],
  };
  const start = async (port: number) => {
    broker = await Aedes.createBroker();
    broker.on("client", (c) => b.clients.push(c.id));
    broker.on("subscribe", (subs, c) => {
      for (const s of subs) b.subscriptions.push({ client: c?.id ?? "", topic: s.topic, qos: s.qos });
    });
    broker.on("unsubscribe", (topics, c) => {
      for (const t of topics) b.unsubscriptions.push({ client: c?.id ?? "", topic: t });
    });
    server = createServer(broker.handle);
    await new Promise<void>((r) => server.listen(port, "127.0.0.1", () => r()));
    return (server.address() as AddressInfo).port;
  };
  const stop = async () => {
    await new Promise<void>((r) => broker.close(() => r()));
    await new Promise<void>((r) => server.close(() => r()));
  };
  b.port = await start(0);
  b.url = `mqtt://127.0.0.1:${b.port}`;
  return {
    ...b,
    get subscriptions() {
      return b.subscriptions;
    },
    get unsubscriptions() {
      return b.unsubscriptions;
    },
    get clients() {
      return b.clients;
    },
    restart: async () => {
      await stop();
      await start(b.port);
    },
    close: stop,
  };
}

interface Gw {
  identity: InterlinkIdentity;
  link: Interlink;
  records: LogRecord[];
  calls: number;
}

interface World {
  clock: { now: number };
  fleet: Fleet;
  verifier: Verifier;
  verifierKey: Ed25519KeyPair;
  url: string;
  pv: 4 | 5;
  links: Interlink[];
  clients: MqttClient[];
}

function makeWorld(url: string, pv: 4 | 5): World {
  const fleet = Fleet.create(tmp("kp-il-edges-"), "acme", T0);
  const verifierKey = generateEd25519();
  const verifier = new Verifier({ anchor: fleet.anchor, key: verifierKey, verifierId: "verifier" });
  verifier.updateRevocationList(fleet.signedList());
  return { clock: { now: T0 }, fleet, verifier, verifierKey, url, pv, links: [], clients: [] };
}

async function closeWorld(w: World): Promise<void> {
  for (const l of w.links) await l.close();
  for (const c of w.clients) await c.endAsync();
}

const suffix = () => toHex(new Uint8Array(randomBytes(3)));

function identityFor(w: World, id: string, now = T0): InterlinkIdentity {
  const signing = generateEd25519();
  const encryption = generateX25519();
  return { gatewayId: id, signing, encryption, certificate: w.fleet.issueGateway(id, { signingKey: signing.publicKey, encryptionKey: encryption.publicKey }, now, 10_000) };
}

function realTrust(w: World): PeerTrust {
  return checkerTrust(new CertificateChecker({ source: localSource(w.verifier), verifierPublicKey: w.verifierKey.publicKey }));
}

async function gateway(w: World, id: string, o: Partial<InterlinkOptions> & { logged?: boolean } = {}): Promise<Gw> {
  const identity = o.identity ?? identityFor(w, id);
  const records: LogRecord[] = [];
  const log = new Logger(() => {});
  log.subscribe((r) => records.push(r));
  const link = await Interlink.connect({
    url: w.url,
    identity,
    trust: realTrust(w),
    now: () => w.clock.now,
    protocolVersion: w.pv,
    requestTimeoutMs: 5000,
    certificateTimeoutMs: 3000,
    log: o.logged === false ? undefined : log,
    // These tests pin down the signed envelopes, envelope by envelope; the pairwise channel has its
    // own (test/interlink-channel.test.ts), and test/interlink.test.ts runs its cases both ways.
    pairwiseChannels: false,
    ...o,
  });
  w.links.push(link);
  const gw: Gw = { identity, link, records, calls: 0 };
  link.handle("echo", (req) => {
    gw.calls++;
    return { body: new Map<string, unknown>([["echo", req.body], ["secret", req.secret]]) };
  });
  return gw;
}

async function spyOn(w: World, topics: string[]): Promise<{ client: MqttClient; seen: { topic: string; bytes: Uint8Array; qos: number; props?: { responseTopic?: string; correlationData?: Buffer } }[]; next: (topic: string) => Promise<Uint8Array> }> {
  const client = await mqtt.connectAsync(w.url, { protocolVersion: w.pv, reconnectPeriod: 0 });
  w.clients.push(client);
  const seen: { topic: string; bytes: Uint8Array; qos: number; props?: { responseTopic?: string; correlationData?: Buffer } }[] = [];
  const waiting: { topic: string; resolve: (b: Uint8Array) => void }[] = [];
  client.on("message", (topic, payload, packet) => {
    const bytes = new Uint8Array(payload);
    seen.push({ topic, bytes, qos: packet.qos, props: packet.properties });
    const i = waiting.findIndex((x) => x.topic === topic);
    if (i >= 0) waiting.splice(i, 1)[0].resolve(bytes);
  });
  if (topics.length) await client.subscribeAsync(topics, { qos: 1 });
  return {
    client,
    seen,
    next: (topic) => bounded(new Promise((resolve) => waiting.push({ topic, resolve })), `a message on ${topic}`),
  };
}

function nextRejection(link: Interlink): Promise<Rejection> {
  let stop: () => void = () => undefined;
  const r = new Promise<Rejection>((resolve) => {
    stop = link.onReject((x) => {
      stop();
      resolve(x);
    });
  });
  return bounded(r, "a rejection").finally(() => stop());
}

async function nextRecord(gw: Gw, event: string): Promise<LogRecord> {
  await until(() => gw.records.some((r) => r.event === event), `a log record "${event}"`);
  return gw.records.find((r) => r.event === event) as LogRecord;
}

/** An envelope signed by `from`, addressed to `to`. */
function envelope(w: World, from: InterlinkIdentity, to: string, o: Partial<Envelope> = {}, seed = from.signing.seed): Uint8Array {
  return signEnvelope({ from: from.gatewayId, to, sessionId: id16(1), msgId: new Uint8Array(randomBytes(16)), type: "echo", ts: w.clock.now, kind: Kind.Request, body: encode("hi"), senderCert: from.certificate, ...o }, seed);
}

/** Publishes raw bytes to a topic and returns the link's reason for refusing them. */
async function refused(spy: MqttClient, link: Interlink, topic: string, bytes: Uint8Array): Promise<Rejection> {
  const r = nextRejection(link);
  await spy.publishAsync(topic, Buffer.from(bytes), { qos: 1 });
  return r;
}

const flush = () => new Promise<void>((r) => setImmediate(r));

// Waits end in a failure rather than a hang: a test that waits for something that never comes must
// still close its clients, or its process would never exit.
const GIVE_UP_MS = 20_000;

/** Resolves when cond holds; fails, naming what did not happen, after GIVE_UP_MS. */
async function until(cond: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + GIVE_UP_MS;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`${what} did not happen`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** p, or a failure naming what did not come after GIVE_UP_MS. */
function bounded<T>(p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const giveUp = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what} did not come`)), GIVE_UP_MS)));
  return Promise.race([p, giveUp]).finally(() => clearTimeout(timer));
}

test("in process (aedes): answers, refusals, remote errors, request arguments, timeouts and close", { timeout: 60_000 }, async (t) => {
  const broker = await startAedes();
  const w = makeWorld(broker.url, 4);
  try {
    const sfx = suffix();
    const northId = `north-${sfx}.example`;
    const southId = `south-${sfx}.example`;
    const eastId = `east-${sfx}.example`;
    const east = identityFor(w, eastId); // a gateway the test plays by hand
    let trustMode: "real" | "plain-error" | "other-key" = "real";
    const real = realTrust(w);
    const trust: PeerTrust = {
      async gateway(cert: Uint8Array, now: number): Promise<GatewayPeer> {
        if (trustMode === "plain-error") throw new Error("verifier unreachable");
        const p = await real.gateway(cert, now);
        return trustMode === "other-key" ? { ...p, signingKey: generateEd25519().publicKey } : p;
      },
    };
    const north = await gateway(w, northId, { trust, maxEnvelopeBytes: 3000 });
    const south = await gateway(w, southId);
    const spy = await spyOn(w, [requestsTopic(southId), responsesTopic(northId), requestsTopic(eastId), responsesTopic(eastId)]);

    await t.test("a secret first request fetches the peer's retained certificate: one lookup, QoS 1, undone after", async () => {
      const listeners = (north.link as unknown as { client: MqttClient }).client.listenerCount("message");
      const rejections: Rejection[] = [];
      const stop = north.link.onReject((r) => rejections.push(r));
      const a = (await north.link.request(southId, "echo", "S", { secret: true })) as Map<string, unknown>;
      stop();
      assert.deepEqual([a.get("echo"), a.get("secret")], ["S", true]);
      assert.deepEqual(rejections, [], "the certificate that came on its topic is no envelope to refuse");
      const northClient = (north.link as unknown as { client: { options: { clientId: string } } }).client.options.clientId;
      assert.deepEqual(
        broker.subscriptions.filter((s) => s.topic === certificateTopic(southId)),
        [{ client: northClient, topic: certificateTopic(southId), qos: 1 }],
      );
      assert.ok(broker.unsubscriptions.some((u) => u.client === northClient && u.topic === certificateTopic(southId)), "unsubscribed once it came");
      assert.equal((north.link as unknown as { client: MqttClient }).client.listenerCount("message"), listeners, "no listener left behind");
    });

    await t.test("plain answers stay plain; accepted and remembered are counted", async () => {
      const before = { n: north.link.stats.accepted, s: south.link.stats.accepted };
      const answerOnWire = spy.next(responsesTopic(northId));
      const a = (await north.link.request(southId, "echo", "P")) as Map<string, unknown>;
      assert.deepEqual([a.get("echo"), a.get("secret")], ["P", false]);
      assert.equal(parseEnvelope(await answerOnWire).ephemeral, undefined);
      assert.deepEqual({ n: north.link.stats.accepted, s: south.link.stats.accepted }, { n: before.n + 1, s: before.s + 1 });
      const small = await gateway(w, `small-${sfx}.example`, { dedupeCapacity: 2 });
      const smallId = small.identity.gatewayId;
      assert.equal(small.link.dedupeSize, 0);
      await north.link.request(smallId, "echo", 1);
      assert.equal(small.link.dedupeSize, 1);
      await north.link.request(smallId, "echo", 2);
      await north.link.request(smallId, "echo", 3);
      assert.equal(small.link.dedupeSize, 2, "dedupeCapacity 2 holds");
    });

    await t.test("handler failures: internal ones logged here and 'internal' there, in the clear; known ones said as they are", async () => {
      south.link.handle("boom", () => {
        throw new Error("disk on fire");
      });
      const errorOnWire = spy.next(responsesTopic(northId));
      await assert.rejects(north.link.request(southId, "boom", 1, { secret: true }), (e: unknown) => e instanceof InterlinkError && e.code === "remote-error" && e.message === `"${southId}" answered internal: internal error`);
      assert.equal(parseEnvelope(await errorOnWire).ephemeral, undefined, "an error answer is not encrypted");
      const rec = south.records.find((r) => r.event === "interlink-handler-failed");
      assert.ok(rec, "logged");
      assert.deepEqual([rec.level, rec.type, rec.from, rec.error], ["error", "boom", northId, "disk on fire"]);
      south.records.length = 0;
      await assert.rejects(north.link.request(southId, "nope", 1), (e: unknown) => e instanceof InterlinkError && e.message === `"${southId}" answered no-handler: no handler for request type "nope"`);
      south.link.handle("refuse", () => {
        throw new InterlinkError("untrusted-peer", "not you");
      });
      await assert.rejects(north.link.request(southId, "refuse", 1), (e: unknown) => e instanceof InterlinkError && e.message === `"${southId}" answered untrusted-peer: not you`);
      assert.deepEqual(south.records.filter((r) => r.event === "interlink-handler-failed"), [], "known errors are no handler failure");
    });

    await t.test("remote error bodies, and responses from the wrong gateway or session, as north reads them", async () => {
      const answer = async (body: unknown, o: { from?: InterlinkIdentity; sessionId?: Uint8Array; kind?: Kind } = {}) => {
        const incoming = spy.next(requestsTopic(eastId));
        const p = north.link.request(eastId, "echo", 1, { sessionId: id16(6) });
        p.catch(() => undefined);
        const req = parseEnvelope(await incoming);
        const from = o.from ?? east;
        const bytes = envelope(w, from, northId, { kind: o.kind ?? Kind.Error, re: req.msgId, sessionId: o.sessionId ?? req.sessionId, body: encode(body) });
        await spy.client.publishAsync(responsesTopic(northId), Buffer.from(bytes), { qos: 1 });
        return p;
      };
      const remote = (msg: string) => (e: unknown) => e instanceof InterlinkError && e.code === "remote-error" && e.message === msg;
      await assert.rejects(answer(new Map([["code", "busy"], ["message", "try later"]])), remote(`"${eastId}" answered busy: try later`));
      await assert.rejects(answer(new Map([["code", "busy"]])), remote(`"${eastId}" answered busy: `));
      await assert.rejects(answer(5), remote(`"${eastId}" answered error: `));
      assert.equal(north.link.pendingCount, 0);

      // A response from another gateway, or in another session, matches nothing: the request still
      // waits, and its true answer is taken after.
      const unsolicited = "response matches no pending request (from that gateway, in that session)";
      for (const o of [{ from: identityFor(w, `west-${sfx}.example`) }, { sessionId: id16(7) }]) {
        const incoming = spy.next(requestsTopic(eastId));
        const p = north.link.request(eastId, "echo", 1, { sessionId: id16(6) });
        const req = parseEnvelope(await incoming);
        const r = nextRejection(north.link);
        const wrong = envelope(w, o.from ?? east, northId, { kind: Kind.Response, re: req.msgId, sessionId: o.sessionId ?? req.sessionId });
        await spy.client.publishAsync(responsesTopic(northId), Buffer.from(wrong), { qos: 1 });
        const got = await r;
        assert.deepEqual([got.code, got.reason], ["unsolicited", unsolicited]);
        assert.equal(north.link.pendingCount, 1, "the request still waits");
        const right = envelope(w, east, northId, { kind: Kind.Response, re: req.msgId, sessionId: req.sessionId, body: encode("ok") });
        await spy.client.publishAsync(responsesTopic(northId), Buffer.from(right), { qos: 1 });
        assert.equal(await p, "ok");
      }
    });

    await t.test("refusals at north: each code, the reason an operator reads, and the log record", async () => {
      const reqTopic = requestsTopic(northId);
      // Size: the limit itself is taken, one byte more is too large.
      const sized = (n: number) => {
        for (let pad = 0; pad < 3000; pad++) {
          const b = envelope(w, east, northId, { body: encode("x".repeat(pad)) });
          if (b.length === n) return b;
        }
        throw new Error(`no envelope of ${n} bytes`);
      };
      const atLimit = sized(3000);
      const overLimit = sized(3001);
      let r = await refused(spy.client, north.link, reqTopic, overLimit);
      assert.deepEqual([r.code, r.reason], ["too-large", "envelope of 3001 bytes is above 3000"]);
      const acceptedBefore = north.link.stats.accepted;
      const answered = spy.next(responsesTopic(eastId));
      await spy.client.publishAsync(reqTopic, Buffer.from(atLimit), { qos: 1 });
      await answered;
      assert.equal(north.link.stats.accepted, acceptedBefore + 1, "an envelope of exactly the limit is taken");

      const kindMismatch = envelope(w, east, northId, { kind: Kind.Response, re: id16(2) });
      r = await refused(spy.client, north.link, reqTopic, kindMismatch);
      assert.deepEqual([r.code, r.reason], ["malformed", "a response on the requests topic"]);
      r = await refused(spy.client, north.link, responsesTopic(northId), envelope(w, east, northId));
      assert.deepEqual([r.code, r.reason], ["malformed", "a request on the responses topic"]);

      // A signature under another algorithm: COSE's reason, as "malformed", never "bad-signature".
      const payload = parseSign1(envelope(w, east, northId)).payload;
      const es256 = new Uint8Array([0xd2, ...encode([encode(new Map([[1, -7]])), new Map(), payload, new Uint8Array(64)])]);
      r = await refused(spy.client, north.link, reqTopic, es256);
      assert.deepEqual([r.code, r.reason], ["malformed", "COSE_Sign1 alg -7 is not accepted; only EdDSA (-8)"]);

      r = await refused(spy.client, north.link, reqTopic, envelope(w, { ...east, certificate: Uint8Array.of(1, 2, 3) }, northId));
      assert.deepEqual([r.code, r.reason], ["untrusted-peer", "sender certificate is unreadable: not a COSE_Sign1_Tagged message (expected CBOR tag 18)"]);

      trustMode = "other-key";
      r = await refused(spy.client, north.link, reqTopic, envelope(w, east, northId));
      assert.deepEqual([r.code, r.reason], ["untrusted-peer", `the key certified for "${eastId}" is not the one that signed`]);
      trustMode = "plain-error";
      r = await refused(spy.client, north.link, reqTopic, envelope(w, east, northId));
      assert.deepEqual([r.code, r.reason], ["malformed", "verifier unreachable"]);
      trustMode = "real";

      r = await refused(spy.client, north.link, reqTopic, envelope(w, east, southId));
      assert.deepEqual([r.code, r.reason], ["wrong-recipient", `envelope is addressed to "${southId}", not to us`]);

      // A body that is not CBOR, under a good signature: refused, and no handler runs with nothing.
      r = await refused(spy.client, north.link, reqTopic, envelope(w, east, northId, { body: Uint8Array.of(0xff) }));
      assert.deepEqual([r.code, r.reason], ["malformed", "envelope body is not CBOR"]);

      // Stale: never answered again, whatever was kept.
      r = await refused(spy.client, north.link, reqTopic, envelope(w, east, northId, { ts: w.clock.now - 61 }));
      assert.equal(r.code, "stale");

      // The record an operator reads, with who and which message; a stopped listener hears nothing.
      let heard = 0;
      const stop = north.link.onReject(() => heard++);
      stop();
      north.records.length = 0;
      const bad = envelope(w, east, southId);
      await refused(spy.client, north.link, reqTopic, bad);
      assert.equal(heard, 0);
      const rec = north.records.find((x) => x.event === "interlink-rejected");
      assert.ok(rec);
      assert.deepEqual(
        { level: rec.level, code: rec.code, reason: rec.reason, topic: rec.topic, from: rec.from, msgId: rec.msgId },
        { level: "warn", code: "wrong-recipient", reason: `envelope is addressed to "${southId}", not to us`, topic: reqTopic, from: eastId, msgId: toHex(parseEnvelope(bad).msgId) },
      );
      assert.equal(north.link.stats.rejected["wrong-recipient"], 2);
    });

    await t.test("a redelivered request gets the same answer again at QoS 1; a redelivered response is a duplicate", async () => {
      const req = envelope(w, east, northId);
      const first = spy.next(responsesTopic(eastId));
      await spy.client.publishAsync(requestsTopic(northId), Buffer.from(req), { qos: 1 });
      const answer = await first;
      const again = spy.next(responsesTopic(eastId));
      const r = await refused(spy.client, north.link, requestsTopic(northId), req);
      assert.equal(r.code, "duplicate");
      assert.equal(toHex(await again), toHex(answer));
      const copies = spy.seen.filter((s) => s.topic === responsesTopic(eastId) && toHex(s.bytes) === toHex(answer));
      assert.deepEqual(copies.map((c) => c.qos), [1, 1]);

      // north's own request answered by east twice: the second copy is a duplicate, nothing sent.
      const incoming = spy.next(requestsTopic(eastId));
      const p = north.link.request(eastId, "echo", 1);
      const asked = parseEnvelope(await incoming);
      const reply = envelope(w, east, northId, { kind: Kind.Response, re: asked.msgId, sessionId: asked.sessionId, body: encode("once") });
      await spy.client.publishAsync(responsesTopic(northId), Buffer.from(reply), { qos: 1 });
      assert.equal(await p, "once");
      const d = await refused(spy.client, north.link, responsesTopic(northId), reply);
      assert.deepEqual([d.code, d.reason], ["duplicate", "message id already seen: a broker redelivery or a replay"]);
    });

    await t.test("request() refuses bad arguments before anything is sent", async () => {
      const malformed = (msg: string) => (e: unknown) => e instanceof InterlinkError && e.code === "malformed" && e.message === msg;
      await assert.rejects(north.link.request("a/b", "echo", 1), malformed(`"a/b" is not a gateway id`));
      await assert.rejects(north.link.request(southId, "", 1), malformed("request type must be 1-64 characters"));
      await assert.rejects(north.link.request(southId, "t".repeat(65), 1), malformed("request type must be 1-64 characters"));
      await assert.rejects(north.link.request(southId, 5 as unknown as string, 1), malformed("request type must be 1-64 characters"));
      await assert.rejects(north.link.request(southId, "echo", 1, { sessionId: new Uint8Array(15) }), malformed("sessionId must be 16 bytes"));
      await assert.rejects(north.link.request(southId, "echo", 1, { sessionId: new Array(16).fill(1) as unknown as Uint8Array }), malformed("sessionId must be 16 bytes"));
      assert.equal(north.link.pendingCount, 0);
      const long = "t".repeat(64);
      south.link.handle(long, (req) => ({ body: toHex(req.sessionId) }));
      assert.equal(await north.link.request(southId, long, 1, { sessionId: id16(8) }), toHex(id16(8)));
    });

    await t.test("request timeouts: the option, the link's default, and 10 s, on the mock clock", async () => {
      const nobody = `nobody-${sfx}.example`;
      const bare = await gateway(w, `bare-${sfx}.example`, { requestTimeoutMs: undefined });
      const settles = async (p: Promise<unknown>) => {
        let done: unknown = "pending";
        p.then(
          () => (done = "resolved"),
          (e: unknown) => (done = e),
        );
        await flush();
        await flush();
        return done;
      };
      const cases: [Interlink, number | undefined, number][] = [
        [bare.link, 50, 50],
        [bare.link, undefined, 10_000],
        [north.link, undefined, 5000],
        [north.link, 70, 70],
      ];
      for (const [link, timeoutMs, ms] of cases) {
        mock.timers.enable({ apis: ["setTimeout"] });
        try {
          const p = link.request(nobody, "echo", 1, timeoutMs === undefined ? {} : { timeoutMs });
          p.catch(() => undefined);
          await flush();
          for (let i = 0; link.pendingCount === 0; i++) {
            if (i > 100_000) throw new Error("the request never went out");
            await flush();
          }
          // the publish is acknowledged without timers; then the clock runs
          mock.timers.tick(ms - 1);
          assert.equal(await settles(p), "pending", `still waiting 1 ms before ${ms} ms`);
          mock.timers.tick(1);
          const e = await settles(p);
          assert.ok(e instanceof InterlinkError && e.code === "timeout", `timed out at ${ms} ms`);
          assert.equal(e.message, `no answer from "${nobody}" to echo within ${ms} ms`);
        } finally {
          mock.timers.reset();
        }
        assert.equal(link.pendingCount, 0);
      }
    });

    await t.test("close(): a pending request fails as closed, later ones too, and a publish cut short by it says so", async () => {
      const g = await gateway(w, `closing-${sfx}.example`);
      const waiting = g.link.request(`nobody-${sfx}.example`, "echo", 1, { timeoutMs: 60_000 });
      waiting.catch(() => undefined);
      await until(() => g.link.pendingCount === 1, "the first request");
      // A publish the broker has not acknowledged when close() comes, and that then fails.
      const client = (g.link as unknown as { client: MqttClient }).client;
      let failPublish: (e: Error) => void = () => {};
      const original = client.publishAsync.bind(client);
      client.publishAsync = (() => new Promise((_, reject) => (failPublish = reject))) as typeof client.publishAsync;
      const cut = g.link.request(`nobody-${sfx}.example`, "echo", 2, { timeoutMs: 60_000 });
      cut.catch(() => undefined);
      await until(() => g.link.pendingCount === 2, "the second request");
      client.publishAsync = original;
      await g.link.close();
      await assert.rejects(waiting, (e: unknown) => e instanceof InterlinkError && e.code === "closed" && e.message === "interlink closed before the answer came");
      const cause = new Error("connection lost");
      failPublish(cause);
      await assert.rejects(cut, (e: unknown) => e instanceof InterlinkError && e.code === "closed" && e.message === "interlink closed before the request went out" && e.cause === cause);
      assert.equal(g.link.pendingCount, 0);
      await assert.rejects(g.link.request(southId, "echo", 1), (e: unknown) => e instanceof InterlinkError && e.code === "closed" && e.message === "interlink is closed");
    });

    await t.test("a publish that fails while open fails the request with its own error and leaves nothing pending", async () => {
      const g = await gateway(w, `failing-${sfx}.example`);
      const client = (g.link as unknown as { client: MqttClient }).client;
      const original = client.publishAsync.bind(client);
      const boom = new Error("publish refused");
      client.publishAsync = (() => Promise.reject(boom)) as typeof client.publishAsync;
      try {
        await assert.rejects(g.link.request(southId, "echo", 1, { timeoutMs: 60_000 }), (e: unknown) => e === boom);
      } finally {
        client.publishAsync = original;
      }
      assert.equal(g.link.pendingCount, 0);
    });
  } finally {
    await closeWorld(w);
    await broker.close();
  }
});

test("in process (aedes): connecting, the certificate lookups, watched topics, and what is published again after a broker restart", { timeout: 60_000 }, async (t) => {
  const broker = await startAedes();
  const w = makeWorld(broker.url, 4);
  // Every socket the interlink opens is told to send at once (Nagle off).
  const noDelay: { socket: net.Socket; on: boolean | undefined }[] = [];
  const setNoDelay = net.Socket.prototype.setNoDelay;
  net.Socket.prototype.setNoDelay = function (this: net.Socket, on?: boolean) {
    noDelay.push({ socket: this, on });
    return setNoDelay.call(this, on);
  };
  try {
    const sfx = suffix();
    const southId = `south-${sfx}.example`;

    await t.test("connect: the id must name a topic level; the client id and MQTT options; auto falls back to 3.1.1 only when 5 is refused as such", async () => {
      await assert.rejects(
        Interlink.connect({ url: w.url, identity: { ...identityFor(w, `x-${sfx}.example`), gatewayId: "a/b" }, trust: realTrust(w) }),
        (e: unknown) => e instanceof InterlinkError && e.code === "malformed" && e.message === `gateway id "a/b" cannot name an MQTT topic level`,
      );
      // MQTT 5 is the default, and aedes refuses it.
      await assert.rejects(Interlink.connect({ url: w.url, identity: identityFor(w, `v5-${sfx}.example`), trust: realTrust(w), mqtt: { reconnectPeriod: 0 } }), (e: unknown) => (e as { code?: unknown }).code === 1);
      const auto = await gateway(w, `auto-${sfx}.example`, { protocolVersion: "auto" });
      assert.match(broker.clients.at(-1) ?? "", new RegExp(`^kp-interlink-auto-${sfx}\\.example-[0-9a-f]{8}$`));
      assert.ok(noDelay.some((n) => n.socket === (auto.link as unknown as { client: MqttClient }).client.stream && n.on === true), "Nagle off");
      await gateway(w, `named-${sfx}.example`, { mqtt: { clientId: `chosen-${sfx}` } });
      assert.equal(broker.clients.at(-1), `chosen-${sfx}`);

      // A broker that refuses MQTT 5 for another reason (not authorised): no second try with 3.1.1.
      const levels: number[] = [];
      const refusing = createServer((s) => {
        s.on("data", (b) => {
          if (b[0] !== 0x10) return;
          let i = 1;
          while (b[i] & 0x80) i++;
          const level = b[i + 1 + 2 + 4];
          levels.push(level);
          s.end(level === 5 ? Buffer.from([0x20, 0x03, 0x00, 0x87, 0x00]) : Buffer.from([0x20, 0x02, 0x00, 0x05]));
        });
        s.on("error", () => undefined);
      });
      await new Promise<void>((r) => refusing.listen(0, "127.0.0.1", () => r()));
      try {
        const url = `mqtt://127.0.0.1:${(refusing.address() as AddressInfo).port}`;
        await assert.rejects(Interlink.connect({ url, identity: identityFor(w, `r-${sfx}.example`), trust: realTrust(w), protocolVersion: "auto", mqtt: { reconnectPeriod: 0 } }), (e: unknown) => (e as { code?: unknown }).code === 135);
        assert.deepEqual(levels, [5]);
      } finally {
        await new Promise<void>((r) => refusing.close(() => r()));
      }
    });

    await t.test("the interlink's clock is the system's when none is given", async () => {
      const open: PeerTrust = {
        async gateway(cert: Uint8Array): Promise<GatewayPeer> {
          const c = readGatewayCertificateUnverified(cert);
          return { gatewayId: c.sub, signingKey: c.signingKey, encryptionKey: c.encryptionKey, validUntil: c.exp };
        },
      };
      const a = await gateway(w, `clock-a-${sfx}.example`, { now: undefined, trust: open });
      const b = await gateway(w, `clock-b-${sfx}.example`, { now: undefined, trust: open });
      const spy = await spyOn(w, [requestsTopic(b.identity.gatewayId)]);
      const seen = spy.next(requestsTopic(b.identity.gatewayId));
      const before = Math.floor(Date.now() / 1000);
      assert.equal(((await a.link.request(b.identity.gatewayId, "echo", 1)) as Map<string, unknown>).get("echo"), 1);
      const after = Math.floor(Date.now() / 1000);
      const ts = parseEnvelope(await seen).ts;
      assert.ok(ts >= before && ts <= after, `ts ${ts} in [${before}, ${after}]`);
    });

    const south = await gateway(w, southId);
    const north = await gateway(w, `north-${sfx}.example`, { certificateTimeoutMs: 300 });
    const northId = north.identity.gatewayId;
    const spy = await spyOn(w, []);

    await t.test("a certificate learned from a peer's own message is used without a lookup", async () => {
      const loneId = `lone-${sfx}.example`;
      const lone = await gateway(w, loneId);
      await spy.client.publishAsync(certificateTopic(loneId), Buffer.alloc(0), { qos: 1, retain: true }); // the retained certificate gone
      await lone.link.request(northId, "echo", 1);
      const a = (await north.link.request(loneId, "echo", "s", { secret: true })) as Map<string, unknown>;
      assert.equal(a.get("secret"), true);
    });

    await t.test("no certificate published: refused after the lookup's time; once it is, the next lookup finds it", async () => {
      const lateId = `late-${sfx}.example`;
      await assert.rejects(north.link.request(lateId, "echo", 1, { secret: true }), (e: unknown) => e instanceof InterlinkError && e.code === "untrusted-peer" && e.message === `no certificate published for "${lateId}" within 300 ms`);
      await gateway(w, lateId);
      assert.equal(((await north.link.request(lateId, "echo", 2, { secret: true })) as Map<string, unknown>).get("echo"), 2);
    });

    await t.test("a certificate published under another gateway's name is refused and forgotten", async () => {
      const wrongId = `wrong-${sfx}.example`;
      await spy.client.publishAsync(certificateTopic(wrongId), Buffer.from(south.identity.certificate), { qos: 1, retain: true });
      await assert.rejects(north.link.request(wrongId, "echo", 1, { secret: true }), (e: unknown) => e instanceof InterlinkError && e.code === "untrusted-peer" && e.message === `the certificate published for "${wrongId}" names "${southId}"`);
      await gateway(w, wrongId); // publishes its own, retained, over the wrong one
      assert.equal(((await north.link.request(wrongId, "echo", 3, { secret: true })) as Map<string, unknown>).get("echo"), 3);
    });

    await t.test("a lookup waits for its own topic, whatever else arrives meanwhile", async () => {
      const slowId = `slow-${sfx}.example`;
      const slowNorth = await gateway(w, `slow-north-${sfx}.example`, { certificateTimeoutMs: 20_000 });
      const subscribed = broker.subscriptions.length;
      const p = slowNorth.link.request(slowId, "echo", 4, { secret: true });
      p.catch(() => undefined);
      await until(() => broker.subscriptions.slice(subscribed).some((s) => s.topic === certificateTopic(slowId)), "the lookup's subscription");
      await south.link.request(slowNorth.identity.gatewayId, "echo", "meanwhile");
      await gateway(w, slowId);
      assert.equal(((await p) as Map<string, unknown>).get("echo"), 4);
    });

    await t.test("watched topics: every payload to the watcher, subscribed at QoS 1; a throwing watcher is logged and changes nothing", async () => {
      const topic = `keyproxy-cose/v1/fleet-${sfx}/revocations`;
      const got: string[] = [];
      let throwing = true;
      const subscribed = broker.subscriptions.length;
      await south.link.watch(topic, (payload) => {
        got.push(Buffer.from(payload).toString());
        if (throwing) throw new Error("not a list");
      });
      assert.deepEqual(broker.subscriptions.slice(subscribed).map((s) => [s.topic, s.qos]), [[topic, 1]]);
      const rejections: Rejection[] = [];
      const stop = south.link.onReject((r) => rejections.push(r));
      await spy.client.publishAsync(topic, Buffer.from("one"), { qos: 1 });
      const rec = await nextRecord(south, "interlink-watch-failed");
      assert.deepEqual([rec.level, rec.topic, rec.error], ["warn", topic, "not a list"]);
      throwing = false;
      await spy.client.publishAsync(topic, Buffer.from("two"), { qos: 1 });
      await until(() => got.length === 2, "the second watched message");
      stop();
      assert.deepEqual(got, ["one", "two"]);
      assert.deepEqual(rejections, [], "a watched topic is not the interlink's to judge");
      // Without a log, a throwing watcher is still contained.
      const quiet = await gateway(w, `quiet-${sfx}.example`, { logged: false });
      let calls = 0;
      await quiet.link.watch(topic, () => {
        calls++;
        throw new Error("not a list");
      });
      await spy.client.publishAsync(topic, Buffer.from("three"), { qos: 1 });
      await until(() => calls === 1, "the quiet watcher's call");
      await flush();
    });

    await t.test("after a broker restart without persistence: the certificate and every retained message are published again", async () => {
      const extra = `keyproxy-cose/v1/fleet-${sfx}/list`;
      const later = `keyproxy-cose/v1/fleet-${sfx}/later`;
      const failing = `keyproxy-cose/v1/fleet-${sfx}/failing`;
      await south.link.publishRetained(extra, new TextEncoder().encode("list-1"));
      south.link.republishOnReconnect(later, new TextEncoder().encode("later-1"));
      const quiet = await gateway(w, `quiet2-${sfx}.example`, { logged: false });
      quiet.link.republishOnReconnect(failing, new TextEncoder().encode("x"));
      quiet.link.republishOnReconnect(later + "-quiet", new TextEncoder().encode("q"));
      for (const g of [south, quiet]) {
        const c = (g.link as unknown as { client: MqttClient }).client;
        const original = c.publishAsync.bind(c);
        c.publishAsync = ((topic: string, ...rest: unknown[]) => (topic === failing ? Promise.reject(new Error("broker said no")) : (original as (...a: unknown[]) => Promise<unknown>)(topic, ...rest))) as typeof c.publishAsync;
      }
      south.link.republishOnReconnect(failing, new TextEncoder().encode("x"));
      const retainedNow = await retainedOn(w.url, [extra, later]);
      assert.deepEqual(retainedNow, { [extra]: "list-1" }, "publishRetained publishes now, retained; republishOnReconnect does not");

      const sockets = noDelay.length;
      south.records.length = 0;
      await broker.restart();
      const rec = await nextRecord(south, "interlink-reconnected");
      assert.deepEqual([rec.level, rec.gateway, rec.republished], ["info", southId, [certificateTopic(southId), extra, later, failing].join(" ")]);
      const warn = await nextRecord(south, "interlink-republish-failed");
      assert.deepEqual([warn.level, warn.topic, warn.reason], ["warn", failing, "broker said no"]);
      const cert = certificateTopic(southId);
      // Each retained message is republished on its own: ask until all four are back (or give up).
      const deadline = Date.now() + GIVE_UP_MS;
      let seen = await retainedOn(w.url, [cert, extra, later, later + "-quiet"], "latin1");
      while (Object.keys(seen).length < 4 && Date.now() < deadline) seen = await retainedOn(w.url, [cert, extra, later, later + "-quiet"], "latin1");
      assert.equal(seen[cert], Buffer.from(south.identity.certificate).toString("latin1"));
      assert.deepEqual([seen[extra], seen[later], seen[later + "-quiet"]], ["list-1", "later-1", "q"]);
      const southSocket = (south.link as unknown as { client: MqttClient }).client.stream;
      assert.ok(noDelay.slice(sockets).some((n) => n.socket === southSocket && n.on === true), "Nagle off on the new socket too");
    });
  } finally {
    net.Socket.prototype.setNoDelay = setNoDelay;
    await closeWorld(w);
    await broker.close();
  }
});

/** The retained payloads a fresh subscriber gets on these topics (topics with none are left out). */
async function retainedOn(url: string, topics: string[], encoding: BufferEncoding = "utf8"): Promise<Record<string, string>> {
  const c = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0 });
  const got: Record<string, string> = {};
  c.on("message", (topic, payload, packet) => {
    if (packet.retain && payload.length) got[topic] = payload.toString(encoding);
  });
  await c.subscribeAsync(topics, { qos: 1 });
  // Retained messages come before the answer to a later request on a topic of our own.
  const marker = `kp-marker-${suffix()}`;
  const done = new Promise<void>((r) => c.on("message", (topic) => topic === marker && r()));
  await c.subscribeAsync(marker, { qos: 1 });
  await c.publishAsync(marker, Buffer.from("."), { qos: 1 });
  await bounded(done, "the marker message");
  await c.endAsync();
  return got;
}

test("over MQTT 5 (a private Mosquitto): responseTopic and correlationData are set for tools, at QoS 1; never with 3.1.1", { timeout: 60_000 }, async (t) => {
  const binary = findMosquitto();
  if (!binary) {
    t.skip("no Mosquitto here (.ci/run installs it): the MQTT 5 properties were not checked");
    return;
  }
  const mosquitto = await startMosquitto(binary);
  const w = makeWorld(mosquitto.url, 5);
  try {
    const sfx = suffix();
    const north = await gateway(w, `north-${sfx}.example`, { protocolVersion: undefined });
    const south = await gateway(w, `south-${sfx}.example`, { protocolVersion: undefined });
    const northId = north.identity.gatewayId;
    const southId = south.identity.gatewayId;
    const spy = await spyOn(w, [requestsTopic(southId), responsesTopic(northId)]);
    const req = spy.next(requestsTopic(southId));
    const res = spy.next(responsesTopic(northId));
    await north.link.request(southId, "echo", 1);
    const [reqBytes, resBytes] = [await req, await res];
    const onWire = (bytes: Uint8Array) => spy.seen.find((s) => toHex(s.bytes) === toHex(bytes));
    const r = onWire(reqBytes);
    assert.equal(r?.qos, 1);
    assert.equal(r?.props?.responseTopic, responsesTopic(northId));
    assert.equal(toHex(new Uint8Array(r?.props?.correlationData ?? [])), toHex(parseEnvelope(reqBytes).msgId));
    const a = onWire(resBytes);
    assert.equal(a?.qos, 1);
    assert.equal(a?.props?.responseTopic, undefined, "an answer names no response topic");
    assert.equal(toHex(new Uint8Array(a?.props?.correlationData ?? [])), toHex(parseEnvelope(reqBytes).msgId), "the answer's correlation data is its request's msgId");

    // Gateways on MQTT 3.1.1 through the same broker: no properties at all.
    const old = await gateway(w, `old-${sfx}.example`, { protocolVersion: 4 });
    const oldSouth = await gateway(w, `oldsouth-${sfx}.example`, { protocolVersion: 4 });
    const spy2 = await spyOn(w, [requestsTopic(oldSouth.identity.gatewayId), responsesTopic(old.identity.gatewayId)]);
    const req2 = spy2.next(requestsTopic(oldSouth.identity.gatewayId));
    const res2 = spy2.next(responsesTopic(old.identity.gatewayId));
    await old.link.request(oldSouth.identity.gatewayId, "echo", 1);
    await req2;
    await res2;
    for (const s of spy2.seen) {
      assert.equal(s.props?.responseTopic, undefined);
      assert.equal(s.props?.correlationData, undefined);
    }
  } finally {
    await closeWorld(w);
    await mosquitto.kill();
  }
});
