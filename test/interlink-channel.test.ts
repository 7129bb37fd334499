// The pairwise channel between gateways (gateway/fleet/channel.ts, docs/PROTOCOL.md "Pairwise channel
// between gateways"): its message format recomputed from the description, property tests of its parser
// and of tampering, and then two interlinks over the in-process broker (aedes) on a clock the test
// holds: a man in the middle, revocation, a restarted peer, an older peer without channels, renewal at
// the end of a channel's lifetime; last, the channel's rules one by one, with a peer played by the
// test where a real one would never misbehave (answers to an opening that are wrong, each in its own
// way). Replays and broker redelivery on the channel are in
// test/interlink.test.ts, which runs every case on channels and on signed envelopes.

import { test, after } from "node:test";
import { createRequire, syncBuiltinESMExports } from "node:module";
import assert from "node:assert/strict";
import { createServer, type AddressInfo } from "node:net";
import { createDecipheriv, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { Aedes } from "aedes";
import mqtt, { type MqttClient } from "mqtt";
import { toHex } from "../firmware/bytes.ts";
import { decode, encode } from "../gateway/encoding/cbor.ts";
import { generateEd25519, type Ed25519KeyPair } from "../gateway/crypto/ed25519.ts";
import { Fleet, generateX25519 } from "../gateway/fleet/fleet.ts";
import {
  CHANNEL_OPEN_TYPE,
  CHANNEL_RESET_TYPE,
  ChannelError,
  openAnswerBody,
  openRequestBody,
  readOpenAnswer,
  readOpenRequest,
  type ChannelKeyAgreement,
  directionKey,
  isChannelMessage,
  PairwiseChannel,
  parseChannelMessage,
  transcriptHash,
  type ChannelPlaintext,
} from "../gateway/fleet/channel.ts";
import { certificateTopic, type Envelope, Interlink, InterlinkError, Kind, parseEnvelope, requestsTopic, responsesTopic, signEnvelope, type InterlinkIdentity, type PeerTrust, type Rejection } from "../gateway/fleet/interlink.ts";
import { CertificateChecker, checkerTrust, localSource, Verifier } from "../gateway/fleet/verifier.ts";
import { Logger, type LogRecord } from "../gateway/log/logger.ts";

const T0 = 1_800_000_000;
const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------------
// the format, without a broker

function pair(lifetime = 3600): { a: PairwiseChannel; b: PairwiseChannel; keys: Buffer[] } {
  const up = Buffer.from(randomBytes(32));
  const down = Buffer.from(randomBytes(32));
  const id = new Uint8Array(randomBytes(16));
  const common = { channelId: id, peerCert: new Uint8Array(1), createdAt: T0, lifetime };
  const a = new PairwiseChannel({ ...common, self: "a.example", peer: "b.example", sendKey: up, receiveKey: down, initiated: true });
  const b = new PairwiseChannel({ ...common, self: "b.example", peer: "a.example", sendKey: Buffer.from(down), receiveKey: Buffer.from(up), initiated: false });
  return { a, b, keys: [up, down] };
}

const message = (over: Partial<ChannelPlaintext> = {}): ChannelPlaintext => ({
  sessionId: new Uint8Array(16).fill(1),
  msgId: new Uint8Array(16).fill(2),
  type: "echo",
  ts: T0,
  kind: 0,
  body: encode("hello"),
  ...over,
});

test("a channel message is COSE_Encrypt0 with AES-256-GCM under the sender's key, nonce 0^4 || seq, AAD the Enc_structure, as documented", () => {
  const { a, b, keys } = pair();
  const first = a.seal(message());
  const second = a.seal(message({ re: new Uint8Array(16).fill(3), kind: 1 }));
  for (const [bytes, seq] of [[first, 1], [second, 2]] as const) {
    assert.equal(bytes[0], 0xd0, "CBOR tag 16");
    const [protectedBytes, unprotected, ciphertext] = decode(bytes.subarray(1)) as [Uint8Array, Map<number, unknown>, Uint8Array];
    const header = decode(protectedBytes) as Map<number, unknown>;
    assert.deepEqual([...header.entries()], [[1, 3], [4, a.id], [-65537, "a.example"], [-65538, "b.example"], [-65539, seq]]);
    assert.equal(unprotected.size, 0);
    const nonce = Buffer.alloc(12);
    nonce.writeUInt32BE(seq, 8);
    const d = createDecipheriv("aes-256-gcm", keys[0], nonce);
    d.setAAD(encode(["Encrypt0", protectedBytes, new Uint8Array(0)]));
    d.setAuthTag(ciphertext.subarray(ciphertext.length - 16));
    const plain = decode(Buffer.concat([d.update(ciphertext.subarray(0, ciphertext.length - 16)), d.final()])) as Map<number, unknown>;
    assert.deepEqual([...plain.keys()], seq === 1 ? [3, 4, 5, 6, 7, 8] : [3, 4, 5, 6, 7, 8, 10]);
  }
  assert.deepEqual(b.open(parseChannelMessage(first)), message());
  assert.deepEqual(b.open(parseChannelMessage(second)).re, new Uint8Array(16).fill(3));
  // Each direction has its own key: a message cannot be reflected to its sender.
  assert.throws(() => a.open(parseChannelMessage(first)), (e: unknown) => e instanceof ChannelError && e.code === "decrypt-failed");
});

test("the key schedule: both sides derive the same direction keys, one per sender, bound to both ephemerals", () => {
  const eI = generateX25519();
  const eR = generateX25519();
  const shared = new Uint8Array(randomBytes(32));
  const h = { initiator: "a.example", responder: "b.example", channelId: new Uint8Array(16).fill(7), initiatorEphemeral: eI.publicKey, responderEphemeral: eR.publicKey };
  const th = transcriptHash(h);
  assert.equal(toHex(th), toHex(transcriptHash({ ...h })));
  assert.notEqual(toHex(directionKey(shared, th, "a.example")), toHex(directionKey(shared, th, "b.example")));
  const hybrid = { ...h, kemKey: new Uint8Array(1184).fill(1), kemCiphertext: new Uint8Array(1088).fill(2) };
  for (const swapped of [{ ...h, responderEphemeral: eI.publicKey }, { ...h, initiator: "c.example" }, { ...h, channelId: new Uint8Array(16) }, hybrid, { ...hybrid, kemKey: new Uint8Array(1184).fill(3) }, { ...hybrid, kemCiphertext: new Uint8Array(1088) }]) {
    assert.notEqual(toHex(transcriptHash(swapped)), toHex(th), "every handshake field is in the transcript");
  }
});

test("the opening's bodies: exactly their fields, the ML-KEM halves at their lengths", () => {
  const c = new Uint8Array(16).fill(1);
  const e = new Uint8Array(32).fill(2);
  const k = new Uint8Array(1184).fill(3);
  const m = new Uint8Array(1088).fill(4);
  assert.deepEqual(readOpenRequest(new Map([["c", c], ["e", e]])), { channelId: c, ephemeral: e });
  assert.deepEqual(readOpenRequest(new Map([["c", c], ["e", e], ["k", k]])).kemKey, k);
  assert.deepEqual(readOpenAnswer(new Map([["c", c], ["e", e], ["p", e], ["m", m]])).kemCiphertext, m);
  const refusedBody = (f: () => unknown, why: RegExp) => assert.throws(f, (x: unknown) => x instanceof ChannelError && x.code === "malformed" && why.test(x.message));
  refusedBody(() => readOpenRequest(new Map([["c", c], ["e", e], ["k", k.subarray(1)]])), /ML-KEM-768 key must be 1184 bytes/);
  refusedBody(() => readOpenRequest(new Map([["c", c], ["e", e], ["x", k]])), /must be \{c, e, k\?\}/);
  refusedBody(() => readOpenRequest(new Map([["c", c]])), /must be \{c, e, k\?\}/);
  refusedBody(() => readOpenRequest(new Map([["c", c.subarray(1)], ["e", e]])), /channel id must be 16 bytes/);
  refusedBody(() => readOpenRequest(new Map([["c", c], ["e", e.subarray(1)]])), /ephemeral key must be 32 bytes/);
  refusedBody(() => readOpenRequest("x"), /must be \{c, e, k\?\}/);
  refusedBody(() => readOpenAnswer(new Map([["c", c], ["e", e], ["p", e], ["m", m.subarray(1)]])), /ciphertext must be 1088 bytes/);
  refusedBody(() => readOpenAnswer(new Map([["c", c], ["e", e], ["p", e.subarray(1)]])), /echoed key must be 32 bytes/);
  refusedBody(() => readOpenAnswer(new Map([["c", c], ["e", e], ["m", m]])), /must be \{c, e, p, m\?\}/);
});

test("end() wipes both keys, and an ended channel neither seals nor opens", () => {
  const { a, b, keys } = pair();
  const bytes = a.seal(message());
  a.end();
  assert.ok(keys.every((k) => k.every((x) => x === 0)), "the keys handed to it are zero");
  assert.throws(() => a.seal(message()));
  b.end();
  assert.throws(() => b.open(parseChannelMessage(bytes)), (e: unknown) => e instanceof ChannelError && e.code === "decrypt-failed");
});

test("lifetime: sends until its end, renews at 80%, is still accepted for the grace after", () => {
  const { a } = pair(100);
  assert.ok(a.canSend(T0 + 99) && !a.canSend(T0 + 100));
  assert.ok(!a.due(T0 + 79) && a.due(T0 + 80));
  assert.ok(a.canReceive(T0 + 159, 60) && !a.canReceive(T0 + 160, 60));
});

test("property: the parser refuses anything that is not a channel message with a ChannelError, and never throws otherwise", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
      try {
        parseChannelMessage(bytes);
      } catch (e) {
        assert.ok(e instanceof ChannelError && e.code === "malformed", String(e));
      }
    }),
    { numRuns: 3000 },
  );
  // Inputs that start as one and go wrong in their CBOR.
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 200 }), (tail) => {
      try {
        parseChannelMessage(Uint8Array.of(0xd0, 0x83, ...tail));
      } catch (e) {
        assert.ok(e instanceof ChannelError, String(e));
      }
    }),
    { numRuns: 3000 },
  );
});

test("property: any change to a sealed message is refused, never opened as something else", () => {
  const { a, b } = pair();
  fc.assert(
    fc.property(fc.string({ maxLength: 40 }), fc.nat(), fc.integer({ min: 1, max: 255 }), (text, at, flip) => {
      const bytes = a.seal(message({ body: encode(text) }));
      const i = at % bytes.length;
      const altered = new Uint8Array(bytes);
      altered[i] ^= flip;
      let opened: ChannelPlaintext | undefined;
      try {
        opened = b.open(parseChannelMessage(altered));
      } catch (e) {
        assert.ok(e instanceof ChannelError, String(e));
      }
      assert.equal(opened, undefined, `byte ${i} changed and it still opened`);
      assert.equal(decode(b.open(parseChannelMessage(bytes)).body), text, "the genuine one opens");
    }),
    { numRuns: 500 },
  );
});

// ---------------------------------------------------------------------------------------------------
// two gateways over the in-process broker

interface Gw {
  identity: InterlinkIdentity;
  link: Interlink;
  checker: CertificateChecker;
  calls: number;
  /** Peer judgements asked of its PeerTrust (every signed envelope, every channel peer judged). */
  judged: number;
  /** validUntil of the last good judgement. */
  validUntil: number;
  /** Set: its PeerTrust throws this instead of judging (a verifier out of reach, say). */
  failTrust?: Error;
  records: LogRecord[];
}

interface World {
  url: string;
  clock: { now: number };
  fleet: Fleet;
  verifier: Verifier;
  verifierKey: Ed25519KeyPair;
  spy: MqttClient;
  spied: { topic: string; bytes: Uint8Array }[];
  links: Interlink[];
  close(): Promise<void>;
}

async function world(): Promise<World> {
  const broker = await Aedes.createBroker();
  // Without TCP_NODELAY, a small write that follows another unacknowledged one waits for the
  // delayed ACK (about 40 ms on Linux loopback): a test that publishes a thousand times would crawl.
  const server = createServer((socket) => {
    socket.setNoDelay(true);
    broker.handle(socket);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const url = `mqtt://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const dir = mkdtempSync(join(tmpdir(), "kp-channel-"));
  dirs.push(dir);
  const fleet = Fleet.create(dir, "acme", T0);
  const verifierKey = generateEd25519();
  const verifier = new Verifier({ anchor: fleet.anchor, key: verifierKey, verifierId: "verifier" });
  verifier.updateRevocationList(fleet.signedList());
  const spy = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0 });
  const spied: World["spied"] = [];
  spy.on("message", (topic, payload) => spied.push({ topic, bytes: new Uint8Array(payload) }));
  await spy.subscribeAsync([requestsTopic("+"), responsesTopic("+")], { qos: 1 });
  const w: World = {
    url, clock: { now: T0 }, fleet, verifier, verifierKey, spy, spied, links: [],
    close: async () => {
      for (const l of w.links) await l.close().catch(() => undefined);
      await spy.endAsync();
      await new Promise<void>((r) => broker.close(() => r()));
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
  return w;
}

function identity(w: World, id: string): InterlinkIdentity {
  const signing = generateEd25519();
  const encryption = generateX25519();
  return { gatewayId: id, signing, encryption, certificate: w.fleet.issueGateway(id, { signingKey: signing.publicKey, encryptionKey: encryption.publicKey }, T0, 100_000) };
}

async function gateway(w: World, id: InterlinkIdentity, o: { channels?: boolean; lifetime?: number; keyAgreement?: ChannelKeyAgreement; noEpoch?: boolean; noLogger?: boolean } = {}): Promise<Gw> {
  const checker = new CertificateChecker({ source: localSource(w.verifier), verifierPublicKey: w.verifierKey.publicKey });
  const records: LogRecord[] = [];
  const log = new Logger(() => {});
  log.subscribe((r) => records.push(r));
  const base = checkerTrust(checker);
  const trust: PeerTrust = {
    gateway: (cert, now) => {
      gw.judged++;
      if (gw.failTrust) return Promise.reject(gw.failTrust);
      return base.gateway(cert, now).then((peer) => {
        gw.validUntil = peer.validUntil;
        return peer;
      });
    },
    ...(o.noEpoch ? {} : { epoch: base.epoch }),
  };
  const link = await Interlink.connect({
    url: w.url, identity: id, trust, now: () => w.clock.now, protocolVersion: 4, ...(o.noLogger ? {} : { log }),
    requestTimeoutMs: 3000, certificateTimeoutMs: 2000, pairwiseChannels: o.channels, channelLifetime: o.lifetime, keyAgreement: o.keyAgreement,
  });
  w.links.push(link);
  const gw: Gw = { identity: id, link, checker, calls: 0, judged: 0, validUntil: 0, records };
  link.handle("echo", (req) => {
    gw.calls++;
    return { body: req.body };
  });
  link.handle("hang", () => new Promise<never>(() => undefined)); // never answered
  return gw;
}

function nextRejection(link: Interlink, ms = 3000): Promise<Rejection> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      stop();
      reject(new Error("no rejection came"));
    }, ms);
    const stop = link.onReject((r) => {
      clearTimeout(timer);
      stop();
      resolve(r);
    });
  });
}

const snapshot = (g: Gw) => ({ calls: g.calls, dedupe: g.link.dedupeSize, pending: g.link.pendingCount, accepted: g.link.stats.accepted, channels: g.link.channelCount });

/** Publishes bytes on `to`'s topic as the broker (or anyone on it) could, and returns the refusal;
 *  nothing may change, but for "unknown-channel", which asks the claimed sender for a reset (one
 *  request of its own, pending until answered). */
async function refused(w: World, to: Gw, bytes: Uint8Array, topic = requestsTopic(to.identity.gatewayId)): Promise<Rejection> {
  const before = snapshot(to);
  const rejection = nextRejection(to.link);
  await w.spy.publishAsync(topic, Buffer.from(bytes), { qos: 1 });
  const r = await rejection;
  const { pending, ...after } = snapshot(to);
  const { pending: pendingBefore, ...rest } = before;
  assert.deepEqual(after, rest, `no state change for a ${r.code} message`);
  if (r.code !== "unknown-channel") assert.equal(pending, pendingBefore);
  return r;
}

async function pairOfGateways(w: World, o: { northChannels?: boolean; southChannels?: boolean; lifetime?: number; north?: ChannelKeyAgreement; south?: ChannelKeyAgreement } = {}) {
  const sfx = toHex(new Uint8Array(randomBytes(3)));
  const north = await gateway(w, identity(w, `north-${sfx}.example`), { channels: o.northChannels, lifetime: o.lifetime, keyAgreement: o.north });
  const south = await gateway(w, identity(w, `south-${sfx}.example`), { channels: o.southChannels, lifetime: o.lifetime, keyAgreement: o.south });
  return { north, south, southId: south.identity.gatewayId, northId: north.identity.gatewayId };
}

/** Waits for a condition that an event on the broker will make true (bounded: fails after 3 s). */
async function until(ok: () => boolean): Promise<void> {
  for (const end = Date.now() + 3000; !ok(); ) {
    if (Date.now() > end) throw new Error("condition not reached within 3 s");
    await new Promise((r) => setImmediate(r));
  }
}

const lastOnChannel = (w: World, topic: string) => [...w.spied].reverse().find((s) => s.topic === topic && isChannelMessage(s.bytes));
/** The channel id a channel message names in its protected header. */
const channelIdOf = (bytes: Uint8Array) => (decode((decode(bytes.subarray(1)) as Uint8Array[])[0]) as Map<number, unknown>).get(4) as Uint8Array;
/** A message on a channel `to` never had, sealed as `from` would. */
const junkOn = (w: World, from: string, to: string) =>
  new PairwiseChannel({
    channelId: new Uint8Array(randomBytes(16)), self: from, peer: to, peerCert: new Uint8Array(1),
    sendKey: Buffer.from(randomBytes(32)), receiveKey: Buffer.from(randomBytes(32)), createdAt: w.clock.now, lifetime: 3600, initiated: true,
  }).seal(message());

test("over a broker: channels between two gateways", async (t) => {
  const w = await world();
  try {
    await t.test("once open, requests and answers either way go on the channel; a second request opens nothing", async () => {
      const { north, south, southId, northId } = await pairOfGateways(w);
      assert.equal(await north.link.request(southId, "echo", 1), 1);
      assert.equal(await north.link.request(southId, "echo", 2), 2);
      assert.equal(await south.link.request(northId, "echo", 3), 3, "the other side uses the same channel");
      assert.deepEqual([north.link.stats.channelsOpened, south.link.stats.channelsOpened, north.link.channelCount, south.link.channelCount], [1, 0, 1, 1]);
    });

    await t.test("a man in the middle: altered headers, ciphertext, another channel's id, a reflected message: all refused, nothing changes", async () => {
      const { north, south, southId } = await pairOfGateways(w);
      await north.link.request(southId, "echo", "x");
      const genuine = lastOnChannel(w, requestsTopic(southId));
      assert.ok(genuine);
      const [protectedBytes, , ciphertext] = decode(genuine.bytes.subarray(1)) as [Uint8Array, unknown, Uint8Array];
      const header = decode(protectedBytes) as Map<number, unknown>;
      const rebuild = (h: Map<number, unknown>, c = ciphertext) => {
        const body = encode([encode(h), new Map(), c]);
        return Uint8Array.of(0xd0, ...body);
      };
      for (const [label, value] of [[-65539, 99], [-65537, `mallory.example`]] as [number, unknown][]) {
        const r = await refused(w, south, rebuild(new Map([...header, [label, value]])));
        assert.equal(r.code, "decrypt-failed", `header ${label} altered`);
      }
      const flipped = new Uint8Array(ciphertext);
      flipped[0] ^= 1;
      assert.equal((await refused(w, south, rebuild(header, flipped))).code, "decrypt-failed");
      // The same bytes sent back to their sender: addressed to south, refused by north.
      const reflected = await refused(w, north, genuine.bytes, responsesTopic(north.identity.gatewayId));
      assert.equal(reflected.code, "wrong-recipient");
      assert.equal(reflected.reason, `channel message is addressed to "${southId}", not to us`);
      const otherId = new Map(header);
      otherId.set(4, new Uint8Array(16).fill(0xee));
      assert.equal((await refused(w, south, rebuild(otherId))).code, "unknown-channel");
      assert.equal(await north.link.request(southId, "echo", "after"), "after", "the channel still works");
    });

    await t.test("a channel opening signed by another fleet gateway in north's name is refused", async () => {
      const { north, south, southId } = await pairOfGateways(w);
      await north.link.request(southId, "echo", 1); // the opening goes out
      const opening = w.spied.find((s) => s.topic === requestsTopic(southId) && !isChannelMessage(s.bytes));
      assert.ok(opening);
      const eve = identity(w, `eve-${toHex(new Uint8Array(randomBytes(3)))}.example`);
      const e = parseEnvelope(opening.bytes);
      assert.equal(e.type, CHANNEL_OPEN_TYPE);
      const forged = signEnvelope({ ...e, msgId: new Uint8Array(randomBytes(16)), senderCert: eve.certificate }, eve.signing.seed);
      const r = await refused(w, south, forged);
      assert.equal(r.code, "untrusted-peer");
      assert.match(r.reason, /carries the certificate of "eve-/);
      void north;
    });

    await t.test("revocation: a newer list ends the revoked peer's channels at once, its pending requests fail, and nothing more passes", async () => {
      const { north, south, southId, northId } = await pairOfGateways(w);
      await north.link.request(southId, "echo", 1);
      assert.equal(north.link.channelCount, 1);
      w.verifier.updateRevocationList(w.fleet.revoke({ gateways: [southId] }, w.clock.now));
      north.checker.clear(); // as FleetTrust.offer does with a newer list
      await north.link.revalidateChannels();
      assert.equal(north.link.channelCount, 0, "north ended its channel with the revoked gateway");
      await assert.rejects(north.link.request(southId, "echo", 2), (e: unknown) => e instanceof InterlinkError && e.code === "untrusted-peer" && /revoked/.test(e.message));
      // South still holds its side: what it sends on it is refused by north, which no longer knows it.
      const r = nextRejection(north.link);
      await assert.rejects(south.link.request(northId, "echo", 3, { timeoutMs: 1500 }));
      assert.ok(["unknown-channel", "untrusted-peer"].includes((await r).code));
    });

    await t.test("revocation without revalidateChannels: the next message on the channel judges the peer again and ends it", async () => {
      const { north, south, southId, northId } = await pairOfGateways(w);
      await north.link.request(southId, "echo", 1);
      w.verifier.updateRevocationList(w.fleet.revoke({ gateways: [southId] }, w.clock.now));
      north.checker.clear();
      const r = nextRejection(north.link);
      await assert.rejects(south.link.request(northId, "echo", 2, { timeoutMs: 1500 }));
      const rej = await r;
      assert.equal(rej.code, "untrusted-peer");
      assert.equal(north.link.channelCount, 0);
    });

    await t.test("a restarted peer: the first request on the channel it forgot is sent again on a new one and answered", async () => {
      const { north, south, southId } = await pairOfGateways(w);
      assert.equal(await north.link.request(southId, "echo", 1), 1);
      await south.link.close();
      const south2 = await gateway(w, south.identity); // same certificate, fresh process: no channels
      const unknown = nextRejection(south2.link);
      assert.equal(await north.link.request(southId, "echo", 2), 2, "answered, not timed out");
      assert.equal((await unknown).code, "unknown-channel");
      assert.equal(north.link.stats.channelResets, 1);
      assert.equal(north.link.stats.channelsOpened, 2);
      assert.equal(south2.calls, 1, "the request ran once, on the new channel");
    });

    await t.test("only the channel's peer can reset it", async () => {
      const { north, south, southId } = await pairOfGateways(w);
      await north.link.request(southId, "echo", 1);
      const eve = await gateway(w, identity(w, `eve-${toHex(new Uint8Array(randomBytes(3)))}.example`));
      const channelId = channelIdOf(lastOnChannel(w, requestsTopic(southId))!.bytes);
      // Eve asks north, in a genuine signed request of her own, to drop the north-south channel.
      const reset = signEnvelope({
        from: eve.identity.gatewayId, to: north.identity.gatewayId, sessionId: new Uint8Array(16), msgId: new Uint8Array(randomBytes(16)),
        type: "kp.channel.reset", ts: w.clock.now, kind: Kind.Request, body: encode(new Map([["c", channelId]])), senderCert: eve.identity.certificate,
      }, eve.identity.signing.seed);
      const answered = new Promise<void>((r) => w.spy.on("message", (topic) => topic === responsesTopic(eve.identity.gatewayId) && r()));
      await w.spy.publishAsync(requestsTopic(north.identity.gatewayId), Buffer.from(reset), { qos: 1 });
      await answered;
      assert.equal(north.link.stats.channelResets, 0);
      assert.equal(north.link.channelCount, 1);
      void south;
    });

    await t.test("junk on unknown channels costs at most one signed reset per claimed sender per second, and ten in all", async () => {
      const { south } = await pairOfGateways(w);
      const southId = south.identity.gatewayId;
      const junk = (from: string) => junkOn(w, from, southId);
      const senders = Array.from({ length: 15 }, (_, i) => `junk${i}-${toHex(new Uint8Array(randomBytes(3)))}.example`);
      w.spied.length = 0;
      for (const from of [senders[0], ...senders]) assert.equal((await refused(w, south, junk(from))).code, "unknown-channel");
      await until(() => w.spied.filter((x) => senders.some((id) => x.topic === requestsTopic(id))).length >= 10);
      const resets = w.spied.filter((x) => senders.some((id) => x.topic === requestsTopic(id)));
      assert.equal(resets.length, 10, "ten resets, the first sender's second message none");
      assert.deepEqual(resets.map((x) => x.topic), senders.slice(0, 10).map((id) => requestsTopic(id)));
    });

    await t.test("hybrid: X25519 + ML-KEM-768 when both offer it, X25519 alone with a classical peer, refused under hybrid-only either way", async () => {
      const agreement = (g: Gw) => g.records.filter((r) => r.event === "interlink-channel-opened" || r.event === "interlink-channel-accepted").map((r) => r.keyAgreement);
      const both = await pairOfGateways(w, { north: "hybrid", south: "hybrid" });
      w.spied.length = 0;
      assert.equal(await both.north.link.request(both.southId, "echo", "pq"), "pq");
      const opening = w.spied.find((x) => x.topic === requestsTopic(both.southId) && !isChannelMessage(x.bytes))!;
      const answer = w.spied.find((x) => x.topic === responsesTopic(both.northId) && !isChannelMessage(x.bytes))!;
      assert.equal(readOpenRequest(decode(parseEnvelope(opening.bytes).body)).kemKey?.length, 1184, "the opening offers an ML-KEM-768 key");
      assert.equal(readOpenAnswer(decode(parseEnvelope(answer.bytes).body)).kemCiphertext?.length, 1088, "the answer encapsulates to it");
      assert.deepEqual([agreement(both.north), agreement(both.south)], [["x25519-mlkem768"], ["x25519-mlkem768"]]);
      // Stripping the ML-KEM key from the signed opening on the way breaks north's signature.
      const e = parseEnvelope(opening.bytes);
      const stripped = signEnvelope({ ...e, msgId: new Uint8Array(randomBytes(16)), body: encode(new Map([["c", new Uint8Array(16).fill(1)], ["e", new Uint8Array(32).fill(9)]])) }, generateEd25519().seed);
      const forged = await refused(w, both.south, stripped);
      assert.equal(forged.code, "bad-signature");
      assert.deepEqual([forged.from, forged.msgId], [both.northId, toHex(parseEnvelope(stripped).msgId)], "the refusal names the envelope it read");

      const defaults = await pairOfGateways(w);
      assert.equal(await defaults.north.link.request(defaults.southId, "echo", 0), 0);
      assert.deepEqual([agreement(defaults.north), agreement(defaults.south)], [["x25519-mlkem768"], ["x25519-mlkem768"]], "hybrid by default");

      const mixed = await pairOfGateways(w, { north: "hybrid", south: "x25519" });
      assert.equal(await mixed.north.link.request(mixed.southId, "echo", 1), 1);
      assert.deepEqual([agreement(mixed.north), agreement(mixed.south)], [["x25519"], ["x25519"]], "a classical peer ignores the ML-KEM key");

      const strictCaller = await pairOfGateways(w, { north: "hybrid-only", south: "x25519" });
      await assert.rejects(strictCaller.north.link.request(strictCaller.southId, "echo", 1), (err: unknown) => err instanceof InterlinkError && err.code === "downgrade" && err.message === `"${strictCaller.southId}" opened the channel with X25519 alone, and this gateway's policy requires X25519 + ML-KEM-768`);
      assert.equal(strictCaller.north.link.channelCount, 0);

      const strictCallee = await pairOfGateways(w, { north: "x25519", south: "hybrid-only" });
      await assert.rejects(strictCallee.north.link.request(strictCallee.southId, "echo", 1), (err: unknown) => err instanceof InterlinkError && err.code === "remote-error" && err.remoteCode === "downgrade" && err.message.endsWith("channel opening offers X25519 alone, and this gateway's policy requires X25519 + ML-KEM-768"));
      assert.equal(strictCallee.south.link.channelCount, 0, "the strict side made no channel");
    });

    await t.test("a peer without channels (an older gateway) gets signed envelopes, and is not asked again at every request", async () => {
      const { north, south, southId } = await pairOfGateways(w, { southChannels: false });
      w.spied.length = 0;
      assert.equal(await north.link.request(southId, "echo", 1), 1);
      assert.equal(await north.link.request(southId, "echo", 2), 2);
      const requests = w.spied.filter((s) => s.topic === requestsTopic(southId));
      assert.equal(requests.length, 3, "one refused opening, then two signed requests");
      assert.ok(requests.every((s) => !isChannelMessage(s.bytes)));
      assert.equal(north.link.channelCount + south.link.channelCount, 0);
    });

    await t.test("without a logger (the option is optional): channels open, are refused by a peer without them, and end when their peer is revoked, with nothing thrown", async () => {
      const sfx = toHex(new Uint8Array(randomBytes(3)));
      const north = await gateway(w, identity(w, `north-${sfx}.example`), { noLogger: true });
      const south = await gateway(w, identity(w, `south-${sfx}.example`), { noLogger: true });
      const old = await gateway(w, identity(w, `old-${sfx}.example`), { noLogger: true, channels: false });
      assert.equal(await north.link.request(south.identity.gatewayId, "echo", 1), 1);
      assert.equal(north.link.channelCount, 1, "opened");
      assert.equal(await north.link.request(old.identity.gatewayId, "echo", 2), 2);
      assert.equal(north.link.channelCount, 1, "none with the peer without channels: it got a signed envelope");
      const waiting = north.link.request(south.identity.gatewayId, "hang", 3, { timeoutMs: 2500 }).then(() => undefined, (e: unknown) => e);
      await until(() => north.link.pendingCount === 1);
      w.verifier.updateRevocationList(w.fleet.revoke({ gateways: [south.identity.gatewayId] }, w.clock.now));
      north.checker.clear();
      await north.link.revalidateChannels();
      assert.equal(north.link.channelCount, 0, "ended: its peer was revoked");
      const e = await waiting;
      assert.ok(e instanceof InterlinkError && e.code === "untrusted-peer", `the request waiting on it failed at once, as untrusted-peer: ${String(e)}`);
    });

    await t.test("renewal: at 80% of its lifetime a new channel opens while the old one carries on; past its end it is refused", async () => {
      const { north, south, southId } = await pairOfGateways(w, { lifetime: 100 });
      await north.link.request(southId, "echo", 1);
      const first = lastOnChannel(w, requestsTopic(southId));
      w.clock.now += 80;
      await north.link.request(southId, "echo", 2); // sent on the old channel; the new one opens meanwhile
      await until(() => north.link.stats.channelsOpened === 2);
      await north.link.request(southId, "echo", 3);
      const third = lastOnChannel(w, requestsTopic(southId));
      assert.notEqual(toHex(parseChannelMessage(third!.bytes).channelId), toHex(parseChannelMessage(first!.bytes).channelId), "the third went on the new channel");
      w.clock.now += 100; // the first channel's end and its grace are past
      assert.equal((await refused(w, south, first!.bytes)).code, "unknown-channel");
      w.clock.now -= 180;
    });
  } finally {
    await w.close();
  }
});

// ---------------------------------------------------------------------------------------------------
// the channel's rules one by one (what mutation testing found unchecked: docs/MUTATION.md)

/** A gateway played by the test under a fleet certificate of its own (published, retained), or
 *  under `id` (a gateway's that stopped): it answers every signed request it gets with what `answer`
 *  says, signed with its key, as a peer could, or not at all when `answer` returns undefined;
 *  channel messages to it are only counted. */
async function scriptedPeer(w: World, answer: (e: Envelope) => { kind: Kind; body: unknown } | undefined, id = identity(w, `scripted-${toHex(new Uint8Array(randomBytes(3)))}.example`)) {
  const client = await mqtt.connectAsync(w.url, { protocolVersion: 4, reconnectPeriod: 0 });
  await client.publishAsync(certificateTopic(id.gatewayId), Buffer.from(id.certificate), { qos: 1, retain: true });
  const got = { signed: [] as Envelope[], onChannel: 0 };
  client.on("message", (_topic, payload) => {
    const bytes = new Uint8Array(payload);
    if (isChannelMessage(bytes)) return void got.onChannel++;
    const e = parseEnvelope(bytes);
    got.signed.push(e);
    const a = answer(e);
    if (!a) return;
    const reply = signEnvelope({ from: id.gatewayId, to: e.from, sessionId: e.sessionId, msgId: new Uint8Array(randomBytes(16)), type: e.type, ts: w.clock.now, kind: a.kind, body: encode(a.body), re: e.msgId, senderCert: id.certificate }, id.signing.seed);
    void client.publishAsync(responsesTopic(e.from), Buffer.from(reply), { qos: 1 });
  });
  await client.subscribeAsync(requestsTopic(id.gatewayId), { qos: 1 });
  return { id: id.gatewayId, got, close: () => client.endAsync() };
}

const remoteError = (code: string) => ({ kind: Kind.Error, body: new Map([["code", code], ["message", "scripted"]]) });
const rejectsWith = (p: Promise<unknown>, code: string, message?: RegExp) =>
  assert.rejects(p, (e: unknown) => e instanceof InterlinkError && e.code === code && (!message || message.test(e.message)));

/** Publishes a signed request from `from` to `to`'s requests topic and returns the answer's envelope and body. */
async function askSigned(w: World, from: InterlinkIdentity, to: string, type: string, body: unknown): Promise<{ e: Envelope; body: unknown }> {
  const msgId = new Uint8Array(randomBytes(16));
  const req = signEnvelope({ from: from.gatewayId, to, sessionId: new Uint8Array(16), msgId, type, ts: w.clock.now, kind: Kind.Request, body: encode(body), senderCert: from.certificate }, from.signing.seed);
  await w.spy.publishAsync(requestsTopic(to), Buffer.from(req), { qos: 1 });
  const topic = responsesTopic(from.gatewayId);
  const find = () => w.spied.map((x) => (x.topic === topic ? parseEnvelope(x.bytes) : undefined)).find((e) => e?.re && toHex(e.re) === toHex(msgId));
  await until(() => find() !== undefined);
  const e = find()!;
  return { e, body: decode(e.body) };
}

const fields = (r: LogRecord | undefined, keys: string[]) => Object.fromEntries(keys.map((k) => [k, (r as Record<string, unknown> | undefined)?.[k]]));

test("over a broker: the channel's rules one by one", async (t) => {
  const w = await world();
  const atStart = w.clock.now;
  try {
    await t.test("the interlink's own request types are neither handled nor requested by an application", async () => {
      const { north, southId } = await pairOfGateways(w);
      for (const type of [CHANNEL_OPEN_TYPE, CHANNEL_RESET_TYPE]) {
        assert.throws(() => north.link.handle(type, () => ({ body: 0 })), (e: unknown) => e instanceof InterlinkError && e.code === "malformed" && e.message === `request type "${type}" is the interlink's own`);
        await rejectsWith(north.link.request(southId, type, 0), "malformed", new RegExp(`^request type "${type}" is the interlink's own$`));
      }
      assert.equal(north.link.channelCount, 0, "nothing was sent");
    });

    await t.test("an opening answered wrongly makes no channel, and says what was wrong", async () => {
      const fresh = async (o: { keyAgreement?: ChannelKeyAgreement } = {}) => gateway(w, identity(w, `north-${toHex(new Uint8Array(randomBytes(3)))}.example`), o);
      const echoing = (over: (open: ReturnType<typeof readOpenRequest>) => Partial<Parameters<typeof openAnswerBody>[0]>) => (e: Envelope) => {
        const open = readOpenRequest(decode(e.body));
        return { kind: Kind.Response, body: openAnswerBody({ channelId: open.channelId, ephemeral: generateX25519().publicKey, peerEphemeral: open.ephemeral, ...over(open) }) };
      };
      const cases: [string, (e: Envelope) => { kind: Kind; body: unknown }, RegExp, ChannelKeyAgreement?][] = [
        ["another channel id", echoing(() => ({ channelId: new Uint8Array(16).fill(7) })), /answered another channel opening than ours$/],
        ["another echoed key", echoing(() => ({ peerEphemeral: new Uint8Array(32).fill(7) })), /answered another channel opening than ours$/],
        ["not an answer to an opening", () => ({ kind: Kind.Response, body: new Map() }), /answered the channel opening wrongly: channel open answer/],
        ["an ML-KEM ciphertext to a classical opening", echoing(() => ({ kemCiphertext: new Uint8Array(1088).fill(1) })), /answered with an ML-KEM-768 ciphertext to a classical channel opening$/, "x25519"],
      ];
      for (const [what, answer, reason, keyAgreement] of cases) {
        const peer = await scriptedPeer(w, answer);
        const north = await fresh({ keyAgreement });
        await rejectsWith(north.link.request(peer.id, "echo", 1), "malformed", reason);
        assert.equal(north.link.channelCount, 0, what);
        assert.equal(peer.got.onChannel, 0, `${what}: nothing sent on a channel`);
        assert.ok(!north.records.some((r) => r.event === "interlink-channel-opened"), what);
        await peer.close();
      }
      // A peer that fails the opening for another reason than "no handler" is no older gateway: the
      // error comes back, and the next request asks for a channel again.
      const failing = await scriptedPeer(w, () => remoteError("internal"));
      const north = await fresh();
      await rejectsWith(north.link.request(failing.id, "echo", 1), "remote-error", /answered internal/);
      await rejectsWith(north.link.request(failing.id, "echo", 2), "remote-error");
      assert.deepEqual(failing.got.signed.map((e) => e.type), [CHANNEL_OPEN_TYPE, CHANNEL_OPEN_TYPE]);
      await failing.close();
    });

    await t.test("a peer without channels is asked again after 600 s, not before", async () => {
      const older = await scriptedPeer(w, (e) => (e.type === CHANNEL_OPEN_TYPE ? remoteError("no-handler") : { kind: Kind.Response, body: decode(e.body) }));
      const north = await gateway(w, identity(w, `north-${toHex(new Uint8Array(randomBytes(3)))}.example`));
      const start = w.clock.now;
      try {
        assert.equal(await north.link.request(older.id, "echo", 1), 1);
        assert.deepEqual(fields(north.records.find((r) => r.event === "interlink-channel-unsupported"), ["peer", "retryInSeconds"]), { peer: older.id, retryInSeconds: 600 });
        w.clock.now = start + 599;
        assert.equal(await north.link.request(older.id, "echo", 2), 2);
        w.clock.now = start + 600;
        assert.equal(await north.link.request(older.id, "echo", 3), 3);
        assert.deepEqual(older.got.signed.map((e) => e.type), [CHANNEL_OPEN_TYPE, "echo", "echo", CHANNEL_OPEN_TYPE, "echo"]);
      } finally {
        w.clock.now = start;
        await older.close();
      }
    });

    await t.test("the responder: a classical opening is taken under hybrid; a bad body, a bad ML-KEM key and a channel id in use are refused in their own words", async () => {
      const { south, southId } = await pairOfGateways(w);
      const caller = identity(w, `caller-${toHex(new Uint8Array(randomBytes(3)))}.example`);
      const channelId = new Uint8Array(randomBytes(16));
      const ephemeral = generateX25519().publicKey;
      const ok = await askSigned(w, caller, southId, CHANNEL_OPEN_TYPE, openRequestBody({ channelId, ephemeral }));
      assert.equal(ok.e.kind, Kind.Response);
      assert.equal(ok.e.ephemeral, undefined, "the answer is signed, not encrypted");
      assert.equal(readOpenAnswer(ok.body).kemCiphertext, undefined, "X25519 alone");
      const accepted = south.records.filter((r) => r.event === "interlink-channel-accepted");
      assert.deepEqual(accepted.map((r) => fields(r, ["peer", "channel", "keyAgreement", "peerInstance"])), [{ peer: caller.gatewayId, channel: toHex(channelId).slice(0, 8), keyAgreement: "x25519", peerInstance: undefined }]);
      assert.ok(!("peerInstance" in accepted[0]));
      const refusal = async (body: unknown) => {
        const a = await askSigned(w, caller, southId, CHANNEL_OPEN_TYPE, body);
        assert.equal(a.e.kind, Kind.Error);
        return [(a.body as Map<string, string>).get("code"), (a.body as Map<string, string>).get("message")];
      };
      assert.deepEqual(await refusal(openRequestBody({ channelId, ephemeral })), ["malformed", "channel id already in use"]);
      const [code, why] = await refusal(new Map([["c", new Uint8Array(16)]]));
      assert.equal(code, "malformed");
      assert.match(why!, /channel open/);
      // An encapsulation key of the right length that FIPS 203's modulus check refuses.
      const [kemCode, kemWhy] = await refusal(openRequestBody({ channelId: new Uint8Array(randomBytes(16)), ephemeral, kemKey: new Uint8Array(1184).fill(0xff) }));
      assert.equal(kemCode, "malformed");
      assert.ok(kemWhy && kemWhy.length > 0);
      // A low-order point: the X25519 secret would be all zero.
      assert.deepEqual(await refusal(openRequestBody({ channelId: new Uint8Array(randomBytes(16)), ephemeral: new Uint8Array(32) })), ["malformed", "channel ephemeral key is not a usable X25519 key"]);
      assert.equal(south.link.channelCount, 1, "only the good opening made a channel");
    });

    await t.test("a peer's judgement is kept while the trust epoch and the verifier's answer hold; a revoked peer gets nothing more", async () => {
      const { north, south, southId } = await pairOfGateways(w);
      const start = w.clock.now;
      try {
        await north.link.request(southId, "echo", 1);
        const judged = north.judged;
        const until = north.validUntil;
        assert.ok(until > start && until - start < 2880, "the answer runs out before the channel is due for renewal");
        await north.link.request(southId, "echo", 2);
        w.clock.now = until - 1;
        await north.link.request(southId, "echo", 3);
        assert.equal(north.judged, judged, "judged once for the channel, then kept");
        w.clock.now = until;
        await north.link.request(southId, "echo", 4);
        assert.equal(north.judged, judged + 1, "judged again when the verifier's answer ran out");
        north.checker.clear(); // a newer revocation list
        await north.link.request(southId, "echo", 5);
        assert.equal(north.judged, judged + 2, "judged again in a new trust epoch");
        // Revoked: north refuses to send at all, it does not find out from the answer. (The list is
        // issued at the clock's start, so that the later cases do not see it issued in the future.)
        w.clock.now = start;
        w.verifier.updateRevocationList(w.fleet.revoke({ gateways: [southId] }, w.clock.now));
        north.checker.clear();
        const calls = south.calls;
        await rejectsWith(north.link.request(southId, "echo", 6), "untrusted-peer", /revoked/);
        assert.equal(south.calls, calls, "the request never reached the revoked peer");
        assert.deepEqual(fields(north.records.find((r) => r.event === "interlink-channel-ended"), ["peer", "why"]), { peer: southId, why: "peer no longer trusted" });
      } finally {
        w.clock.now = start;
      }
    });

    await t.test("without a trust epoch, the channel's peer is judged at every message", async () => {
      const north = await gateway(w, identity(w, `north-${toHex(new Uint8Array(randomBytes(3)))}.example`), { noEpoch: true });
      const south = await gateway(w, identity(w, `south-${toHex(new Uint8Array(randomBytes(3)))}.example`));
      await north.link.request(south.identity.gatewayId, "echo", 1);
      const judged = north.judged;
      await north.link.request(south.identity.gatewayId, "echo", 2);
      assert.equal(north.judged, judged + 2, "once to send, once for the answer");
    });

    await t.test("a request unanswered on a channel to a one-process peer times out and leaves the channel as it was", async () => {
      const { north, southId } = await pairOfGateways(w);
      await north.link.request(southId, "echo", 1);
      await rejectsWith(north.link.request(southId, "hang", 0, { timeoutMs: 300 }), "timeout");
      assert.equal(north.link.channelCount, 1);
      assert.equal(await north.link.request(southId, "echo", 2), 2);
      assert.equal(north.link.stats.channelsOpened, 1);
    });

    await t.test("revalidation fails the requests waiting on a revoked peer's channel at once, and only those", async () => {
      const { north, southId } = await pairOfGateways(w);
      const west = await gateway(w, identity(w, `west-${toHex(new Uint8Array(randomBytes(3)))}.example`));
      const westId = west.identity.gatewayId;
      await north.link.request(southId, "echo", 1);
      await north.link.request(westId, "echo", 1);
      const toSouth = north.link.request(southId, "hang", 0, { timeoutMs: 20_000 });
      const toWest = north.link.request(westId, "hang", 0, { timeoutMs: 1500 });
      await until(() => north.link.pendingCount === 2);
      w.verifier.updateRevocationList(w.fleet.revoke({ gateways: [southId] }, w.clock.now));
      north.checker.clear();
      const before = Date.now();
      await north.link.revalidateChannels();
      await rejectsWith(toSouth, "untrusted-peer", /revoked/);
      assert.ok(Date.now() - before < 10_000, "failed at once, not at its timeout");
      assert.equal(north.link.pendingCount, 1, "the request to west still waits");
      await rejectsWith(toWest, "timeout");
    });

    await t.test("channels to two peers: each request goes on its own peer's channel", async () => {
      const { north, south, southId } = await pairOfGateways(w);
      const west = await gateway(w, identity(w, `west-${toHex(new Uint8Array(randomBytes(3)))}.example`));
      for (let i = 0; i < 3; i++) {
        assert.equal(await north.link.request(southId, "echo", i), i);
        assert.equal(await north.link.request(west.identity.gatewayId, "echo", i), i);
      }
      assert.deepEqual([north.link.stats.channelsOpened, north.link.stats.channelResets, north.link.channelCount, south.calls, west.calls], [2, 0, 2, 3, 3]);
    });

    await t.test("requests made at once to a new peer open one channel", async () => {
      const { north, south, southId } = await pairOfGateways(w);
      assert.deepEqual(await Promise.all([1, 2, 3, 4].map((n) => north.link.request(southId, "echo", n))), [1, 2, 3, 4]);
      assert.deepEqual([north.link.stats.channelsOpened, north.link.channelCount, south.link.channelCount], [1, 1, 1]);
    });

    await t.test("at most four channels per peer: a fifth ends the oldest, as replaced", async () => {
      const { north, south, southId } = await pairOfGateways(w, { lifetime: 100 });
      const west = await gateway(w, identity(w, `west-${toHex(new Uint8Array(randomBytes(3)))}.example`));
      const start = w.clock.now;
      try {
        await north.link.request(west.identity.gatewayId, "echo", 0); // another peer's channel, older than all of south's
        await north.link.request(southId, "echo", 0);
        const first = parseChannelMessage(lastOnChannel(w, requestsTopic(southId))!.bytes).channelId;
        for (let opened = 2; opened <= 5; opened++) {
          w.clock.now += 80; // the newest channel is due: the request opens its successor
          await north.link.request(southId, "echo", opened);
          await until(() => north.link.stats.channelsOpened === 1 + opened).catch((e: Error) => {
            const events = north.records.filter((r) => /channel|reject/.test(r.event)).map((r) => `${r.event} ${String(r.why ?? r.code ?? "")}`);
            throw new Error(`${e.message}: ${north.link.stats.channelsOpened} of ${1 + opened} opened (west's and south's); north logged ${events.join(", ")}`);
          });
        }
        assert.deepEqual([north.link.channelCount, south.link.channelCount], [5, 4], "four with south, and west's");
        const replaced = north.records.filter((r) => r.event === "interlink-channel-ended");
        assert.deepEqual(replaced.map((r) => fields(r, ["peer", "channel", "why"])), [{ peer: southId, channel: toHex(first).slice(0, 8), why: "replaced" }]);
        const opened = north.records.filter((r) => r.event === "interlink-channel-opened" && r.peer === southId);
        assert.equal(opened.length, 5);
        assert.deepEqual(fields(opened[0], ["peer", "channel", "keyAgreement"]), { peer: southId, channel: toHex(first).slice(0, 8), keyAgreement: "x25519-mlkem768" });
        assert.ok(opened.every((r) => !("peerInstance" in r)));
      } finally {
        w.clock.now = start;
      }
    });

    await t.test("the sweep ends channels past their lifetime and grace, and no others; close() ends every channel", async () => {
      const { north, southId } = await pairOfGateways(w, { lifetime: 100 });
      const start = w.clock.now;
      const sweep = () => (north.link as unknown as { sweepChannels(): void }).sweepChannels();
      try {
        await north.link.request(southId, "echo", 1);
        w.clock.now = start + 100 + 59; // within the grace (maxSkew, 60 s)
        sweep();
        assert.equal(north.link.channelCount, 1);
        w.clock.now = start + 100 + 60;
        sweep();
        assert.equal(north.link.channelCount, 0);
        assert.equal(north.records.find((r) => r.event === "interlink-channel-ended")?.why, "expired");
        w.clock.now = start;
        await north.link.request(southId, "echo", 2);
        assert.equal(north.link.channelCount, 1);
        await north.link.close();
        assert.equal(north.link.channelCount, 0);
      } finally {
        w.clock.now = start;
      }
    });

    await t.test("junk on unknown channels: none addressed elsewhere is answered; a sender is asked again a second later, and the budget renews every second", async () => {
      const { south } = await pairOfGateways(w);
      const southId = south.identity.gatewayId;
      const junk = (from: string, to = southId) => junkOn(w, from, to);
      const sfx = toHex(new Uint8Array(randomBytes(3)));
      const [elsewhere, a, b] = ["elsewhere", "a", "b"].map((n) => `junk-${n}-${sfx}.example`);
      const resetsTo = (id: string) => w.spied.filter((x) => x.topic === requestsTopic(id)).length;
      const start = w.clock.now;
      try {
        assert.equal((await refused(w, south, junk(elsewhere, "other.example"))).code, "unknown-channel");
        const unknown = await refused(w, south, junk(a));
        assert.equal(unknown.code, "unknown-channel");
        assert.match(unknown.reason, new RegExp(`^no channel [0-9a-f]{8} with "${a}" here \\(ended, or this gateway restarted\\): the sender is asked to open a new one$`));
        await until(() => resetsTo(a) === 1);
        assert.equal(resetsTo(elsewhere), 0, "a message addressed to another gateway gets no reset");
        w.clock.now = start + 1;
        assert.equal((await refused(w, south, junk(a))).code, "unknown-channel");
        await until(() => resetsTo(a) === 2);
        // Ten resets in one second use up the budget; the next second has ten more.
        const many = Array.from({ length: 10 }, (_, i) => `junk-m${i}-${sfx}.example`);
        w.clock.now = start + 2;
        for (const id of many) await refused(w, south, junk(id));
        await refused(w, south, junk(b));
        await until(() => many.every((id) => resetsTo(id) === 1));
        w.clock.now = start + 3;
        await refused(w, south, junk(b));
        await until(() => resetsTo(b) === 1);
        assert.equal(resetsTo(b), 1, "none in the spent second, one in the next");
      } finally {
        w.clock.now = start;
      }
    });

    await t.test("a channel message that does not parse is malformed, and says why", async () => {
      const { south } = await pairOfGateways(w);
      const r = await refused(w, south, Uint8Array.of(0xd0, 0x80));
      assert.equal(r.code, "malformed");
      assert.ok(r.reason.length > 0 && r.from === undefined);
    });

    await t.test("a reset is answered with an empty map, signed in the clear", async () => {
      const { north } = await pairOfGateways(w);
      const caller = identity(w, `caller-${toHex(new Uint8Array(randomBytes(3)))}.example`);
      const a = await askSigned(w, caller, north.identity.gatewayId, CHANNEL_RESET_TYPE, new Map([["c", new Uint8Array(16)]]));
      assert.equal(a.e.kind, Kind.Response);
      assert.equal(a.e.ephemeral, undefined);
      assert.deepEqual(a.body, new Map());
      const bad = await askSigned(w, caller, north.identity.gatewayId, CHANNEL_RESET_TYPE, new Map());
      assert.equal(bad.e.kind, Kind.Error);
      assert.deepEqual([...(bad.body as Map<string, string>)], [["code", "malformed"], ["message", "channel reset must be {c: channel id}"]]);
    });

    await t.test("an opening or a reset sent on a channel is refused: they must come signed", async () => {
      const { north, south, southId } = await pairOfGateways(w);
      await north.link.request(southId, "echo", 1);
      const channels = (north.link as unknown as { channels: Map<string, { channel: PairwiseChannel }> }).channels;
      const [{ channel }] = [...channels.values()];
      for (const type of [CHANNEL_OPEN_TYPE, CHANNEL_RESET_TYPE]) {
        const r = await refused(w, south, channel.seal(message({ type, msgId: new Uint8Array(randomBytes(16)), ts: w.clock.now })));
        assert.equal(r.code, "malformed");
        assert.equal(r.reason, `${type} must come signed, not on a channel`);
        assert.equal(r.from, north.identity.gatewayId, "the refusal names the sender the channel vouches for");
      }
    });

    await t.test("a restarted peer: every request waiting on the channel it forgot is sent again and answered", async () => {
      const { north, south, southId } = await pairOfGateways(w);
      await north.link.request(southId, "echo", 0);
      await south.link.close();
      const south2 = await gateway(w, south.identity);
      assert.deepEqual(await Promise.all([1, 2, 3].map((n) => north.link.request(southId, "echo", n))), [1, 2, 3]);
      assert.equal(south2.calls, 3, "each ran once");
      assert.equal(north.link.stats.channelsOpened, 2);
      const signedEchoes = w.spied.filter((x) => x.topic === requestsTopic(southId) && !isChannelMessage(x.bytes) && parseEnvelope(x.bytes).type === "echo");
      assert.equal(signedEchoes.length, 0, "sent again on the new channel, not signed");
    });

    /**
     * North has a channel to south and two requests waiting elsewhere: one on a channel to east, one
     * signed to an older gateway; neither is ever answered. South stops and a peer played by the test
     * takes its place under its certificate, answering a channel opening with `answerOpen` and an echo
     * with its body. A request of north's goes out on the channel south forgot, and south's
     * certificate asks north to reset that channel.
     */
    async function resetWhileWaiting(answerOpen: () => { kind: Kind; body: unknown }) {
      const { north, south, southId, northId } = await pairOfGateways(w);
      const east = await gateway(w, identity(w, `east-${toHex(new Uint8Array(randomBytes(3)))}.example`));
      const eastId = east.identity.gatewayId;
      assert.equal(await north.link.request(southId, "echo", 1), 1);
      const older = await scriptedPeer(w, (e) => (e.type === CHANNEL_OPEN_TYPE ? remoteError("no-handler") : undefined));
      const outcome = (p: Promise<unknown>) => p.then(() => "answered", (e: unknown) => (e as InterlinkError).code);
      const elsewhere = [outcome(north.link.request(eastId, "hang", 0)), outcome(north.link.request(older.id, "hang", 0))];
      await until(() => lastOnChannel(w, requestsTopic(eastId)) !== undefined && older.got.signed.some((e) => e.type === "hang"));
      await south.link.close();
      const stand = await scriptedPeer(w, (e) => (e.type === CHANNEL_OPEN_TYPE ? answerOpen() : { kind: Kind.Response, body: decode(e.body) }), south.identity);
      const waiting = north.link.request(southId, "echo", 2);
      await until(() => stand.got.onChannel === 1);
      const channelId = channelIdOf(lastOnChannel(w, requestsTopic(southId))!.bytes);
      const reset = await askSigned(w, south.identity, northId, CHANNEL_RESET_TYPE, new Map([["c", channelId]]));
      assert.equal(reset.e.kind, Kind.Response);
      assert.equal(north.link.stats.channelResets, 1);
      return { north, stand, older, waiting, elsewhere, close: async () => (await stand.close(), await older.close()) };
    }

    await t.test("a reset whose new channel cannot be opened fails the requests that waited on the old one, and only those", async () => {
      const scene = await resetWhileWaiting(() => remoteError("internal"));
      try {
        await rejectsWith(scene.waiting, "remote-error", /answered internal/);
        assert.deepEqual(scene.stand.got.signed.map((e) => e.type), [CHANNEL_OPEN_TYPE], "not sent again in any other way");
        assert.equal(scene.north.link.pendingCount, 2, "the requests to east and to the older gateway wait on");
      } finally {
        await scene.close();
      }
    });

    await t.test("a reset by a peer that no longer has channels sends the waiting requests again as signed envelopes, and only those", async () => {
      const scene = await resetWhileWaiting(() => remoteError("no-handler"));
      try {
        assert.equal(await scene.waiting, 2, "answered, not timed out");
        assert.deepEqual(scene.stand.got.signed.map((e) => e.type), [CHANNEL_OPEN_TYPE, "echo"]);
        assert.equal(scene.older.got.signed.filter((e) => e.type === "hang").length, 1, "the request to the older gateway was not sent again");
        assert.equal(scene.north.link.pendingCount, 2, "the requests to east and to the older gateway wait on");
      } finally {
        await scene.close();
      }
    });

    await t.test("a trust function that fails (a verifier out of reach) ends the channel as untrusted: the requests waiting on it and the next one fail, with its reason", async () => {
      const sfx = toHex(new Uint8Array(randomBytes(3)));
      const north = await gateway(w, identity(w, `north-${sfx}.example`), { noEpoch: true }); // judges at every message
      const south = await gateway(w, identity(w, `south-${sfx}.example`));
      const southId = south.identity.gatewayId;
      assert.equal(await north.link.request(southId, "echo", 1), 1);
      const hanging = north.link.request(southId, "hang", 0);
      await until(() => north.link.pendingCount === 1);
      north.failTrust = new Error("the verifier does not answer");
      await rejectsWith(north.link.request(southId, "echo", 2), "untrusted-peer", /^the verifier does not answer$/);
      await rejectsWith(hanging, "untrusted-peer", /^the verifier does not answer$/);
      assert.deepEqual([north.link.channelCount, north.link.pendingCount, south.calls], [0, 0, 1]);
      assert.equal(north.records.find((r) => r.event === "interlink-channel-ended")?.why, "peer no longer trusted");
    });

    await t.test("a reset with no request waiting ends the channel and opens no other", async () => {
      const { north, south, southId, northId } = await pairOfGateways(w);
      await north.link.request(southId, "echo", 1);
      const channelId = channelIdOf(lastOnChannel(w, requestsTopic(southId))!.bytes);
      assert.equal((await askSigned(w, south.identity, northId, CHANNEL_RESET_TYPE, new Map([["c", channelId]]))).e.kind, Kind.Response);
      assert.deepEqual([north.link.stats.channelResets, north.link.channelCount], [1, 0]);
      await new Promise((r) => setTimeout(r, 300)); // an opening on loopback takes a few milliseconds
      assert.equal(north.link.stats.channelsOpened, 1, "no channel opened for nothing");
      assert.equal(north.link.channelCount, 0);
    });

    await t.test("the reset memory: a sender asked once a second however many come between, at most 1,024 senders held, the oldest forgotten first", async () => {
      const { south } = await pairOfGateways(w);
      const southId = south.identity.gatewayId;
      const memory = (south.link as unknown as { resetSent: Map<string, number> }).resetSent;
      const sfx = toHex(new Uint8Array(randomBytes(3)));
      const resetsTo = (id: string) => w.spied.filter((x) => x.topic === requestsTopic(id)).length;
      const [a, b, c] = ["a", "b", "c"].map((n) => `mem-${n}-${sfx}.example`);
      const start = w.clock.now;
      try {
        for (const from of [a, b, a, c]) await refused(w, south, junkOn(w, from, southId));
        await until(() => resetsTo(c) === 1); // resets go out in order: a's second would have come before c's
        assert.deepEqual([a, b, c].map(resetsTo), [1, 1, 1]);
        let n = 3;
        for (let second = 1; n < 1030; second++) {
          w.clock.now = start + second;
          for (let i = 0; i < 10 && n < 1030; i++, n++) await refused(w, south, junkOn(w, `mem-${n}-${sfx}.example`, southId));
        }
        assert.equal(memory.size, 1024);
        assert.deepEqual([a, b, c, `mem-5-${sfx}.example`, `mem-6-${sfx}.example`, `mem-1029-${sfx}.example`].map((id) => memory.has(id)), [false, false, false, false, true, true]);
      } finally {
        w.clock.now = start;
      }
    });
  } finally {
    w.clock.now = atStart;
    await w.close();
  }
});

test("an opening's secrets are wiped once the channel's keys are derived: the ML-KEM secret key, the ML-KEM, X25519 and combined shared secrets, at both ends", async () => {
  // node:crypto's exports are replaced for the time of one opening (syncBuiltinESMExports carries the
  // change to the modules' named imports), and Uint8Array's fill watched: the test sees the very
  // arrays the interlink held, not copies.
  const crypto = createRequire(import.meta.url)("node:crypto") as typeof import("node:crypto");
  const { hkdfSync, diffieHellman } = crypto;
  const fill = Uint8Array.prototype.fill;
  const keySchedule: { held: Uint8Array; was: Uint8Array }[] = [];
  const x25519: Uint8Array[] = [];
  const wipedWere = new Set<string>(); // what each array zeroed with fill(0) held just before
  const restore = () => {
    Uint8Array.prototype.fill = fill;
    Object.assign(crypto, { hkdfSync, diffieHellman });
    syncBuiltinESMExports();
  };
  const w = await world();
  try {
    const { north, southId } = await pairOfGateways(w);
    const isDirectionKey = (info: unknown) => {
      try {
        return info instanceof Uint8Array && (decode(info) as unknown[])[1] === "key"; // channel.ts directionKey's info
      } catch {
        return false;
      }
    };
    crypto.hkdfSync = ((digest, ikm, salt, info, length) => {
      const held = ikm as Uint8Array;
      if (isDirectionKey(info)) keySchedule.push({ held, was: Uint8Array.from(held) });
      return hkdfSync(digest, ikm, salt, info, length);
    }) as typeof hkdfSync;
    crypto.diffieHellman = ((o) => {
      const out = diffieHellman(o);
      x25519.push(out);
      return out;
    }) as typeof diffieHellman;
    syncBuiltinESMExports();
    Uint8Array.prototype.fill = function (this: Uint8Array, ...a: Parameters<Uint8Array["fill"]>) {
      if (a[0] === 0 && a.length === 1) wipedWere.add(toHex(Uint8Array.from(this)));
      return fill.apply(this, a);
    } as Uint8Array["fill"];
    assert.equal(await north.link.request(southId, "echo", 1), 1);
    restore();
    // Two direction keys at each end, each from the combined secret: ML-KEM's 32 bytes, then X25519's.
    assert.deepEqual(keySchedule.map((k) => k.held.length), [64, 64, 64, 64]);
    assert.equal(x25519.length, 2, "one X25519 at each end");
    for (const { held, was } of keySchedule) {
      assert.ok(held.every((b) => b === 0), "the combined secret wiped");
      assert.ok(wipedWere.has(toHex(was.subarray(0, 32))), "the ML-KEM shared secret wiped");
      assert.ok(wipedWere.has(toHex(was.subarray(32))), "the X25519 shared secret wiped");
    }
    for (const out of x25519) assert.ok(out.every((b) => b === 0), "node:crypto's own X25519 output wiped");
    // FIPS 203: the decapsulation key holds the encapsulation key at byte 1,152; the one sent in the
    // opening is found in a key that was wiped.
    const opening = w.spied.map((x) => (x.topic === requestsTopic(southId) && !isChannelMessage(x.bytes) ? parseEnvelope(x.bytes) : undefined)).find((e) => e?.type === CHANNEL_OPEN_TYPE)!;
    const kemKey = toHex(readOpenRequest(decode(opening.body)).kemKey!);
    assert.ok([...wipedWere].some((k) => k.length === 2 * 2400 && k.slice(2 * 1152, 2 * (1152 + 1184)) === kemKey), "the opening's ML-KEM secret key wiped");
    assert.equal(await north.link.request(southId, "echo", 2), 2, "the channel's own keys are intact");
  } finally {
    restore();
    await w.close();
  }
});
