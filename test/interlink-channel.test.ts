// The pairwise channel between gateways (gateway/fleet/channel.ts, docs/PROTOCOL.md "Pairwise channel
// between gateways"): its message format recomputed from the description, property tests of its parser
// and of tampering, and then two interlinks over the in-process broker (aedes) on a clock the test
// holds: a man in the middle, revocation, a restarted peer, an older peer without channels, renewal at
// the end of a channel's lifetime. Replays and broker redelivery on the channel are in
// test/interlink.test.ts, which runs every case on channels and on signed envelopes.

import { test, after } from "node:test";
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
  ChannelError,
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
import { Interlink, InterlinkError, requestsTopic, responsesTopic, type InterlinkIdentity, type Rejection } from "../gateway/fleet/interlink.ts";
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
  const server = createServer(broker.handle);
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

async function gateway(w: World, id: InterlinkIdentity, o: { channels?: boolean; lifetime?: number; keyAgreement?: ChannelKeyAgreement } = {}): Promise<Gw> {
  const checker = new CertificateChecker({ source: localSource(w.verifier), verifierPublicKey: w.verifierKey.publicKey });
  const records: LogRecord[] = [];
  const log = new Logger(() => {});
  log.subscribe((r) => records.push(r));
  const link = await Interlink.connect({
    url: w.url, identity: id, trust: checkerTrust(checker), now: () => w.clock.now, protocolVersion: 4, log,
    requestTimeoutMs: 3000, certificateTimeoutMs: 2000, pairwiseChannels: o.channels, channelLifetime: o.lifetime, keyAgreement: o.keyAgreement,
  });
  w.links.push(link);
  const gw: Gw = { identity: id, link, checker, calls: 0, records };
  link.handle("echo", (req) => {
    gw.calls++;
    return { body: req.body };
  });
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
      assert.equal((await refused(w, north, genuine.bytes, responsesTopic(north.identity.gatewayId))).code, "wrong-recipient");
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
      const { parseEnvelope, signEnvelope } = await import("../gateway/fleet/interlink.ts");
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
      const channelId = (decode((decode(lastOnChannel(w, requestsTopic(southId))!.bytes.subarray(1)) as Uint8Array[])[0]) as Map<number, unknown>).get(4) as Uint8Array;
      // Eve asks north, in a genuine signed request of her own, to drop the north-south channel.
      const { signEnvelope, Kind } = await import("../gateway/fleet/interlink.ts");
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
      const junk = (from: string) => new PairwiseChannel({
        channelId: new Uint8Array(randomBytes(16)), self: from, peer: southId, peerCert: new Uint8Array(1),
        sendKey: Buffer.from(randomBytes(32)), receiveKey: Buffer.from(randomBytes(32)), createdAt: w.clock.now, lifetime: 3600, initiated: true,
      }).seal(message());
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
      const { parseEnvelope } = await import("../gateway/fleet/interlink.ts");
      assert.equal(readOpenRequest(decode(parseEnvelope(opening.bytes).body)).kemKey?.length, 1184, "the opening offers an ML-KEM-768 key");
      assert.equal(readOpenAnswer(decode(parseEnvelope(answer.bytes).body)).kemCiphertext?.length, 1088, "the answer encapsulates to it");
      assert.deepEqual([agreement(both.north), agreement(both.south)], [["x25519-mlkem768"], ["x25519-mlkem768"]]);
      // Stripping the ML-KEM key from the signed opening on the way breaks north's signature.
      const e = parseEnvelope(opening.bytes);
      const { signEnvelope } = await import("../gateway/fleet/interlink.ts");
      const stripped = signEnvelope({ ...e, msgId: new Uint8Array(randomBytes(16)), body: encode(new Map([["c", new Uint8Array(16).fill(1)], ["e", new Uint8Array(32).fill(9)]])) }, generateEd25519().seed);
      assert.equal((await refused(w, both.south, stripped)).code, "bad-signature");

      const defaults = await pairOfGateways(w);
      assert.equal(await defaults.north.link.request(defaults.southId, "echo", 0), 0);
      assert.deepEqual([agreement(defaults.north), agreement(defaults.south)], [["x25519-mlkem768"], ["x25519-mlkem768"]], "hybrid by default");

      const mixed = await pairOfGateways(w, { north: "hybrid", south: "x25519" });
      assert.equal(await mixed.north.link.request(mixed.southId, "echo", 1), 1);
      assert.deepEqual([agreement(mixed.north), agreement(mixed.south)], [["x25519"], ["x25519"]], "a classical peer ignores the ML-KEM key");

      const strictCaller = await pairOfGateways(w, { north: "hybrid-only", south: "x25519" });
      await assert.rejects(strictCaller.north.link.request(strictCaller.southId, "echo", 1), (err: unknown) => err instanceof InterlinkError && err.code === "downgrade");
      assert.equal(strictCaller.north.link.channelCount, 0);

      const strictCallee = await pairOfGateways(w, { north: "x25519", south: "hybrid-only" });
      await assert.rejects(strictCallee.north.link.request(strictCallee.southId, "echo", 1), (err: unknown) => err instanceof InterlinkError && err.code === "remote-error" && err.remoteCode === "downgrade");
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
