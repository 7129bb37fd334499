// The interlink between gateways over a real MQTT broker: the in-process broker (aedes, MQTT 3.1.1) on
// a free localhost port always, and Mosquitto (MQTT 5) when KEYPROXY_TEST_MQTT_URL names one (CI).
// Every rejection is shown with its reason and with no state change: no handler call, the dedupe window
// and the verifier cache as they were.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { createServer, type AddressInfo } from "node:net";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { Aedes } from "aedes";
import mqtt, { type MqttClient } from "mqtt";
import { toHex } from "../firmware/bytes.ts";
import { issueCertificate } from "../gateway/encoding/cwt.ts";
import { encode } from "../gateway/encoding/cbor.ts";
import { generateEd25519, type Ed25519KeyPair } from "../gateway/crypto/ed25519.ts";
import { Fleet, generateX25519, type X25519KeyPair } from "../gateway/fleet/fleet.ts";
import {
  DedupeWindow,
  Interlink,
  InterlinkError,
  Kind,
  parseEnvelope,
  requestsTopic,
  responsesTopic,
  signEnvelope,
  type InterlinkIdentity,
  type Rejection,
} from "../gateway/fleet/interlink.ts";
import { isChannelMessage } from "../gateway/fleet/channel.ts";
import { CertificateChecker, checkerTrust, localSource, remoteSource, serveVerifier, Verifier, verifyAnswer } from "../gateway/fleet/verifier.ts";

const T0 = 1_800_000_000;
const tmpDirs: string[] = [];
after(() => {
  for (const d of tmpDirs) rmSync(d, { recursive: true, force: true });
});

async function startAedes(): Promise<{ url: string; close: () => Promise<void> }> {
  const broker = await Aedes.createBroker();
  const server = createServer(broker.handle);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const { port } = server.address() as AddressInfo;
  return {
    url: `mqtt://127.0.0.1:${port}`,
    close: async () => {
      await new Promise<void>((r) => broker.close(() => r()));
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

interface Gw {
  identity: InterlinkIdentity;
  link: Interlink;
  checker: CertificateChecker;
  calls: number;
}

interface World {
  clock: { now: number };
  fleet: Fleet;
  verifier: Verifier;
  verifierKey: Ed25519KeyPair;
  north: Gw;
  south: Gw;
  spy: MqttClient;
  spied: { topic: string; bytes: Uint8Array; props?: { responseTopic?: string; correlationData?: Buffer } }[];
  suffix: string;
  url: string;
  pv: 4 | 5;
  /** Pairwise channels on (the default), or every envelope signed. */
  channels: boolean;
  close: () => Promise<void>;
}

function identityFor(fleet: Fleet, id: string, now: number, lifetime = 10_000): InterlinkIdentity & { enc: X25519KeyPair } {
  const signing = generateEd25519();
  const encryption = generateX25519();
  const certificate = fleet.issueGateway(id, { signingKey: signing.publicKey, encryptionKey: encryption.publicKey }, now, lifetime);
  return { gatewayId: id, signing, encryption, certificate, enc: encryption };
}

async function connectGw(w: Pick<World, "clock" | "verifier" | "verifierKey" | "url" | "pv" | "channels">, identity: InterlinkIdentity): Promise<Gw> {
  const checker = new CertificateChecker({ source: localSource(w.verifier), verifierPublicKey: w.verifierKey.publicKey });
  const link = await Interlink.connect({ url: w.url, identity, trust: checkerTrust(checker), now: () => w.clock.now, protocolVersion: w.pv, requestTimeoutMs: 3000, certificateTimeoutMs: 2000, pairwiseChannels: w.channels });
  const gw: Gw = { identity, link, checker, calls: 0 };
  link.handle("echo", (req) => {
    gw.calls++;
    return { body: new Map<string, unknown>([["echo", req.body], ["from", req.from], ["secret", req.secret]]) };
  });
  return gw;
}

async function makeWorld(url: string, pv: 4 | 5, channels: boolean): Promise<World> {
  const dir = mkdtempSync(join(tmpdir(), "kp-interlink-"));
  tmpDirs.push(dir);
  const clock = { now: T0 };
  const suffix = toHex(new Uint8Array(randomBytes(3))); // a shared broker keeps retained topics across runs
  const fleet = Fleet.create(dir, "acme", T0);
  const verifierKey = generateEd25519();
  const verifier = new Verifier({ anchor: fleet.anchor, key: verifierKey, verifierId: "verifier" });
  verifier.updateRevocationList(fleet.signedList());
  const base = { clock, verifier, verifierKey, url, pv, channels };
  const north = await connectGw(base, identityFor(fleet, `north-${suffix}.example`, T0));
  const south = await connectGw(base, identityFor(fleet, `south-${suffix}.example`, T0));
  const spy = await mqtt.connectAsync(url, { protocolVersion: pv, reconnectPeriod: 0 });
  const spied: World["spied"] = [];
  spy.on("message", (topic, payload, packet) => spied.push({ topic, bytes: new Uint8Array(payload), props: packet.properties }));
  await spy.subscribeAsync([requestsTopic(south.identity.gatewayId), responsesTopic(north.identity.gatewayId)], { qos: 1 });
  return {
    ...base,
    fleet,
    north,
    south,
    spy,
    spied,
    suffix,
    close: async () => {
      await north.link.close();
      await south.link.close();
      await spy.endAsync();
    },
  };
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

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** State that no rejected message may change. */
function snapshot(w: World) {
  return { calls: w.south.calls, dedupe: w.south.link.dedupeSize, cache: w.south.checker.size, pending: w.south.link.pendingCount, accepted: w.south.link.stats.accepted };
}

/** Publishes raw bytes to south's requests topic and returns south's reason for refusing them. */
async function refusedBySouth(w: World, bytes: Uint8Array, dup = false): Promise<Rejection> {
  const before = snapshot(w);
  const rejection = nextRejection(w.south.link);
  await w.spy.publishAsync(requestsTopic(w.south.identity.gatewayId), Buffer.from(bytes), { qos: 1, dup });
  const r = await rejection;
  assert.deepEqual(snapshot(w), before, `no state change for a ${r.code} message`);
  return r;
}

function craft(w: World, sender: InterlinkIdentity, o: { to?: string; ts?: number; seed?: Uint8Array; from?: string } = {}): Uint8Array {
  return signEnvelope(
    {
      from: o.from ?? sender.gatewayId,
      to: o.to ?? w.south.identity.gatewayId,
      sessionId: new Uint8Array(randomBytes(16)),
      msgId: new Uint8Array(randomBytes(16)),
      type: "echo",
      ts: o.ts ?? w.clock.now,
      kind: Kind.Request,
      body: encode("hi"),
      senderCert: sender.certificate,
    },
    o.seed ?? sender.signing.seed,
  );
}

function variants(): { name: string; pv: 4 | 5; broker: () => Promise<{ url: string; close: () => Promise<void> }>; skip?: string }[] {
  const url = process.env.KEYPROXY_TEST_MQTT_URL;
  return [
    { name: "in-process broker (aedes, MQTT 3.1.1)", pv: 4, broker: startAedes },
    {
      name: "Mosquitto (MQTT 5)",
      pv: 5,
      broker: async () => ({ url: url as string, close: async () => {} }),
      skip: url ? undefined : "KEYPROXY_TEST_MQTT_URL is not set: no external broker to test against (CI sets it to a Mosquitto)",
    },
  ];
}

for (const v of variants()) for (const channels of [true, false]) {
  test(`interlink over ${v.name}, ${channels ? "on pairwise channels" : "every envelope signed"}`, { skip: v.skip }, async (t) => {
    const broker = await v.broker();
    const w = await makeWorld(broker.url, v.pv, channels);
    try {
      const northId = w.north.identity.gatewayId;
      const southId = w.south.identity.gatewayId;

      await t.test("request/response; a secret body crosses the broker encrypted", async () => {
        const plain = (await w.north.link.request(southId, "echo", "PLAINTEXT-MARKER")) as Map<string, unknown>;
        // On a channel every body is encrypted, whether the caller asked for secrecy or not.
        assert.deepEqual([plain.get("echo"), plain.get("from"), plain.get("secret")], ["PLAINTEXT-MARKER", northId, w.channels]);
        const secret = (await w.north.link.request(southId, "echo", "SECRET-MARKER", { secret: true })) as Map<string, unknown>;
        assert.deepEqual([secret.get("echo"), secret.get("secret")], ["SECRET-MARKER", true]);
        await sleep(100);
        const wire = w.spied.map((s) => Buffer.from(s.bytes).toString("latin1")).join("|");
        if (w.channels) {
          assert.ok(!wire.includes("PLAINTEXT-MARKER"), "on a channel a body the caller did not call secret is encrypted too");
          const onChannel = w.spied.filter((s) => isChannelMessage(s.bytes));
          assert.equal(onChannel.length, 4, "both requests and both answers went on the channel");
          assert.equal(w.spied.length, 6, "and the channel's opening, a signed request and its signed answer");
          assert.equal(w.north.link.stats.channelsOpened, 1);
          assert.equal(w.south.link.stats.channelsAccepted, 1);
        } else {
          assert.ok(wire.includes("PLAINTEXT-MARKER"), "the spy does see plain bodies (so the check below can fail)");
          assert.equal(w.north.link.channelCount, 0);
        }
        assert.ok(!wire.includes("SECRET-MARKER"), "the secret request and its answer are encrypted on the wire");
        assert.equal(w.south.calls, 2);
        if (w.pv === 5) {
          // MQTT 5 properties are set for tools (never trusted): responseTopic and the request's msgId.
          const req = w.spied.find((s) => s.topic === requestsTopic(southId));
          assert.ok(req);
          assert.equal(req.props?.responseTopic, responsesTopic(northId));
          assert.equal(toHex(new Uint8Array(req.props?.correlationData ?? [])), toHex(parseEnvelope(req.bytes).msgId));
        }
        // And south can ask north back (either side may start).
        const back = (await w.south.link.request(northId, "echo", 7, { secret: true })) as Map<string, unknown>;
        assert.equal(back.get("echo"), 7);
      });

      await t.test("remote errors and timeouts are clear", async () => {
        await assert.rejects(w.north.link.request(southId, "nope", 1), (e: unknown) => e instanceof InterlinkError && e.code === "remote-error" && /no handler for request type "nope"/.test(e.message));
        w.south.link.handle("boom", () => {
          throw new Error("database exploded at /secret/path");
        });
        await assert.rejects(w.north.link.request(southId, "boom", 1), (e: unknown) => e instanceof InterlinkError && e.code === "remote-error" && /internal error/.test(e.message) && !/secret\/path/.test(e.message));
        // A gateway nobody has heard of: with channels, its certificate is looked for before a channel
        // is opened, and not found; without, the request goes out and nobody answers.
        await assert.rejects(
          w.north.link.request(`nobody-${w.suffix}.example`, "echo", 1, { timeoutMs: 300 }),
          (e: unknown) => e instanceof InterlinkError && (w.channels ? e.code === "untrusted-peer" && /no certificate published/.test(e.message) : e.code === "timeout"),
        );
        assert.equal(w.north.link.pendingCount, 0);
      });

      await t.test("a message redelivered by the broker (QoS 1 dup) runs nothing again and gets the same answer", async () => {
        w.spied.length = 0;
        await w.north.link.request(southId, "echo", "once");
        await sleep(50);
        const req = w.spied.find((s) => s.topic === requestsTopic(southId));
        const answer = w.spied.find((s) => s.topic === responsesTopic(northId));
        assert.ok(req && answer);
        const northBefore = { accepted: w.north.link.stats.accepted, dupes: w.north.link.stats.rejected.duplicate ?? 0 };
        const r = await refusedBySouth(w, req.bytes, true);
        assert.equal(r.code, "duplicate");
        assert.match(r.reason, /already seen: a broker redelivery or a replay/);
        await sleep(100);
        const resent = w.spied.filter((s) => s.topic === responsesTopic(northId));
        assert.equal(resent.length, 2, "the answer went out again");
        assert.equal(toHex(resent[1].bytes), toHex(answer.bytes), "byte for byte the same answer");
        // ...and north, which had its answer already, refuses the second copy without any change.
        assert.equal(w.north.link.stats.accepted, northBefore.accepted);
        assert.equal(w.north.link.stats.rejected.duplicate, northBefore.dupes + 1);
      });

      await t.test("a replayed message: refused within the window (duplicate) and after it (stale)", async () => {
        const req = w.spied.find((s) => s.topic === requestsTopic(southId));
        assert.ok(req);
        assert.equal((await refusedBySouth(w, req.bytes)).code, "duplicate");
        w.clock.now += 120;
        const r = await refusedBySouth(w, req.bytes);
        assert.equal(r.code, "stale");
        assert.match(r.reason, /more than 60 s from now/);
        w.clock.now -= 120;
        // A fresh message from the future is refused the same way.
        assert.equal((await refusedBySouth(w, craft(w, w.north.identity, { ts: w.clock.now + 600 }))).code, "stale");
      });

      await t.test("a forged signature is refused", async () => {
        const r = await refusedBySouth(w, craft(w, w.north.identity, { seed: generateEd25519().seed }));
        assert.equal(r.code, "bad-signature");
        assert.match(r.reason, /does not verify under/);
        // A flipped bit in a genuine envelope's signature.
        const genuine = craft(w, w.north.identity);
        genuine[genuine.length - 1] ^= 1;
        assert.equal((await refusedBySouth(w, genuine)).code, "bad-signature");
        // Someone else's certificate under our name.
        const r2 = await refusedBySouth(w, craft(w, w.north.identity, { from: `mallory-${w.suffix}.example` }));
        assert.equal(r2.code, "untrusted-peer");
        assert.match(r2.reason, /carries the certificate of/);
      });

      await t.test("a forged envelope carrying a re-encoding of a genuine certificate never reaches the verifier (found by npm run fuzz)", async () => {
        // The signature covers neither the CWT tag nor the unprotected header of a certificate, so one
        // genuine certificate has endless byte forms the verifier judges good, each cached apart. A
        // forgery carrying one must be refused before the verifier is asked: refusedBySouth checks
        // that the certificate cache, like everything else, is as it was.
        const cert = w.north.identity.certificate;
        assert.deepEqual([...cert.subarray(0, 7)], [0xd8, 0x3d, 0xd2, 0x84, 0x43, 0xa1, 0x01], "61(18([h'a10127', ...]))");
        assert.equal(cert[8], 0xa0, "an empty unprotected header");
        const untagged = cert.slice(2);
        const withHeader = new Uint8Array([...cert.subarray(0, 8), 0xa1, 0x18, 0x64, 0xf5, ...cert.subarray(9)]); // {100: true}
        for (const senderCert of [untagged, withHeader]) {
          const forged = signEnvelope(
            { from: w.north.identity.gatewayId, to: w.south.identity.gatewayId, sessionId: new Uint8Array(randomBytes(16)), msgId: new Uint8Array(randomBytes(16)), type: "echo", ts: w.clock.now, kind: Kind.Request, body: encode("hi"), senderCert },
            generateEd25519().seed,
          );
          const r = await refusedBySouth(w, forged);
          assert.equal(r.code, "bad-signature");
        }
      });

      await t.test("a certificate from another CA, an expired certificate and a revoked gateway are refused", async () => {
        const dir = mkdtempSync(join(tmpdir(), "kp-rival-"));
        tmpDirs.push(dir);
        const rival = identityFor(Fleet.create(dir, "rival", T0), `east-${w.suffix}.example`, T0);
        let r = await refusedBySouth(w, craft(w, rival));
        assert.equal(r.code, "untrusted-peer");
        assert.match(r.reason, /unknown-issuer: gateway certificate is from fleet "rival"/);
        const sameName = identityFor(Fleet.create(join(dir, "acme2"), "acme", T0), `east-${w.suffix}.example`, T0);
        r = await refusedBySouth(w, craft(w, sameName));
        assert.match(r.reason, /bad-signature: gateway certificate is not signed by the fleet CA/);
        const expired = identityFor(w.fleet, `old-${w.suffix}.example`, T0 - 1000, 500);
        r = await refusedBySouth(w, craft(w, expired));
        assert.equal(r.code, "untrusted-peer");
        assert.match(r.reason, /expired/);
        const west = identityFor(w.fleet, `west-${w.suffix}.example`, T0);
        w.verifier.updateRevocationList(w.fleet.revoke({ gateways: [west.gatewayId] }, w.clock.now));
        r = await refusedBySouth(w, craft(w, west));
        assert.equal(r.code, "untrusted-peer");
        assert.match(r.reason, /revoked: gateway "west-.*" is revoked/);
      });

      await t.test("wrong recipient, malformed and unsolicited messages are refused", async () => {
        let r = await refusedBySouth(w, craft(w, w.north.identity, { to: `east-${w.suffix}.example` }));
        assert.equal(r.code, "wrong-recipient");
        r = await refusedBySouth(w, Uint8Array.of(0xd2, 0x84, 0x40));
        assert.equal(r.code, "malformed");
        // A response nobody asked for, on north's responses topic.
        const e = parseEnvelope(craft(w, w.south.identity, { to: northId }));
        const unsolicited = signEnvelope({ ...e, kind: Kind.Response, re: new Uint8Array(16) }, w.south.identity.signing.seed);
        const before = { dedupe: w.north.link.dedupeSize, accepted: w.north.link.stats.accepted };
        const rej = nextRejection(w.north.link);
        await w.spy.publishAsync(responsesTopic(northId), Buffer.from(unsolicited), { qos: 1 });
        assert.equal((await rej).code, "unsolicited");
        assert.deepEqual({ dedupe: w.north.link.dedupeSize, accepted: w.north.link.stats.accepted }, before);
      });

      await t.test("the verifier served over the interlink: a revoked device gets a signed 'revoked'", async () => {
        serveVerifier(w.south.link, w.verifier, () => w.clock.now);
        const remote = new CertificateChecker({ source: remoteSource(w.north.link, southId), verifierPublicKey: w.verifierKey.publicKey });
        const device = generateEd25519();
        const cert = issueCertificate({ iss: southId, sub: "lamp", iat: T0, nbf: T0, exp: T0 + 3600, cti: new Uint8Array(16).fill(9), publicKey: device.publicKey }, w.south.identity.signing.seed);
        assert.equal((await remote.check(cert, [w.south.identity.certificate], w.clock.now)).status, "good");
        assert.equal(remote.size, 1);
        w.verifier.updateRevocationList(w.fleet.revoke({ devices: [`lamp@${southId}`] }, w.clock.now));
        remote.clear();
        const a = await remote.check(cert, [w.south.identity.certificate], w.clock.now);
        assert.equal(a.status, "revoked");
        assert.match(a.reason, /device "lamp@south-.*" is revoked/);
        assert.equal(remote.size, 0, "a revoked answer is not cached");
        // The signed bytes themselves, as they came over the interlink.
        const signed = (await remoteSource(w.north.link, southId)(cert, [w.south.identity.certificate], w.clock.now)) as Uint8Array;
        assert.equal(verifyAnswer(signed, w.verifierKey.publicKey).status, "revoked");
      });
    } finally {
      await w.close();
      await broker.close();
    }
  });
}

test("the dedupe window is bounded: it forgets by age and by count, and then refuses what it may have forgotten", () => {
  const d = new DedupeWindow(3, 60);
  assert.equal(d.refuse("a", T0, T0), undefined);
  d.record("a", T0, T0);
  assert.equal(d.refuse("a", T0, T0)?.code, "duplicate");
  d.record("b", T0 + 1, T0 + 1);
  d.record("c", T0 + 2, T0 + 2);
  d.record("d", T0 + 3, T0 + 3); // full: "a" goes, the floor rises to its timestamp
  assert.equal(d.size, 3);
  const r = d.refuse("a", T0, T0 + 3);
  assert.equal(r?.code, "stale", "forgotten, but still refused");
  assert.match(r?.reason ?? "", /dedupe floor/);
  assert.equal(d.refuse("e", T0 + 3, T0 + 3), undefined);
  d.record("e", T0 + 100, T0 + 100); // everything older than 60 s is dropped
  assert.equal(d.size, 1);
  assert.equal(d.refuse("b", T0 + 1, T0 + 100)?.code, "stale");
});
