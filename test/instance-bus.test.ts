// The MQTT bus between the instances of one domain (gateway/instances/bus.ts, bus-messages.ts).
//
// Properties of the message codec (fast-check): decoding anything throws nothing but
// MalformedBusMessage and yields only well-formed messages; every valid message survives
// encode -> CBOR -> decode. Then the bus itself on the in-process broker, with a raw MQTT client in the
// role of anyone on the broker: delivery to one instance and to all, exactly once; refusal of replays,
// of messages sealed under another key, of stale ones, of messages on the wrong topic and of presence
// on another instance's topic or an alias of its own, and of sealed but malformed messages; presence
// from the retained "online" and the last-will, where an old run's "online" or "gone" changes nothing
// and a run that reconnects is back; two domains on one broker do not hear each other.
//
// No sleeps: every message the bus receives ends in exactly one of onMessage, onPresence (or nothing,
// for its own) or an "instance-bus-refused" log line, synchronously in the same call, so waiting for
// the refusal (or for the receive count) proves the handler was not called for it.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import * as cbor from "../gateway/encoding/cbor.ts";
import { startBroker, type EmbeddedBroker } from "../gateway/monitor/embedded-broker.ts";
import { BUS_MAX_AGE_MS, busTopics } from "../gateway/instances/bus.ts";
import { BUS_VERSION, decodeBusMessage, encodeBusMessage, MalformedBusMessage, type BusBody, type BusMessage } from "../gateway/instances/bus-messages.ts";
import { encodeMessage, Msg, type InnerMessage, type SaInstall } from "../firmware/proto/messages.ts";
import { until } from "./support/harness.ts";
import { busListener, closeBusNodes, crash, joinBus, marker, mqttOf, newBusKey, sealAsInsider, type BusNode } from "./support/bus-nodes.ts";

// ---- the codec ------------------------------------------------------------------------------------

const KIND_NAMES = ["deliver", "frame", "fromDevice", "linked", "unlinked", "endAll", "online", "gone", "deviceFrame", "installOnAccept", "accepted", "registered"];

/** decodeBusMessage(w), which must either throw MalformedBusMessage or give a message whose every
 *  field has its kind (so a receiver can use it as typed). */
function decodesCleanly(w: unknown): void {
  let m: BusMessage;
  try {
    m = decodeBusMessage(w);
  } catch (e) {
    if (e instanceof MalformedBusMessage) return;
    throw e;
  }
  assert.equal(typeof m.from, "string");
  assert.equal(typeof m.to, "string");
  assert.ok(Number.isSafeInteger(m.sentAtMs));
  assert.ok(m.body !== null && typeof m.body === "object", `a decoded message without a body: ${String(m.body)}`);
  assert.ok(KIND_NAMES.includes(m.body.k), `a decoded message of kind ${String(m.body.k)}`);
  // What was accepted encodes again: every field the body's kind needs is there and of its kind.
  assert.deepEqual(decodeBusMessage(cbor.decode(cbor.encode(encodeBusMessage(m)))), m);
}

/** Text of minLength..maxLength UTF-16 units without surrogates: the CBOR codec refuses lone ones,
 *  and without pairs the length is what the codec counts. */
const text = (minLength: number, maxLength: number) => fc.string({ unit: "binary", minLength, maxLength }).filter((s) => !/[\ud800-\udfff]/.test(s));
const u32 = fc.nat(0xffffffff);
/** A record with Object's prototype, as the decoder builds it (deepEqual compares prototypes). */
const rec = <T,>(model: { [K in keyof T]: fc.Arbitrary<T[K]> }) => fc.record(model, { noNullPrototype: true });
const bytes = fc.uint8Array({ maxLength: 40 });

const innerMessage: fc.Arbitrary<InnerMessage> = fc.oneof(
  rec({ t: fc.constant(Msg.Bye as const), spi: u32 }),
  rec({ t: fc.constant(Msg.SaClosed as const), spi: u32, reason: u32 }),
  rec({ t: fc.constant(Msg.Answer as const), rid: u32, accept: fc.boolean() }),
  rec({ t: fc.constant(Msg.ConnectRequest as const), rid: u32, peer: text(1, 64), app: text(1, 64), from: text(1, 64) }),
  rec({ t: fc.constant(Msg.RegisterOk as const), rid: u32, granted: u32, certId: bytes, cert: fc.option(bytes, { nil: null }) }),
  rec({
    t: fc.constant(Msg.RegisterRequest as const), rid: u32, lifetime: u32,
    suites: fc.array(fc.tuple(fc.integer({ min: -1000, max: 1000 }), fc.nat(100)), { maxLength: 8 }),
    wantCert: fc.boolean(), firmware: text(1, 64), memory: u32,
  }),
  rec({ t: fc.constant(Msg.SaConfirm as const), rid: u32, spi: u32, tag: bytes }),
) as fc.Arbitrary<InnerMessage>;

/** An SaInstall with the role and replaces given (installOnAccept takes only role 1, replaces 0). */
function saInstall(role: fc.Arbitrary<number>, replaces: fc.Arbitrary<number>): fc.Arbitrary<SaInstall> {
  return rec({
    t: fc.constant(Msg.SaInstall as const), rid: u32, spi: u32, peer: text(1, 64), app: text(1, 64), suite: fc.nat(100),
    seed: fc.uint8Array({ minLength: 32, maxLength: 32 }), role, lifetime: u32, limit: u32, replaces,
  });
}

const device = text(0, 256);
const busBody: fc.Arbitrary<BusBody> = fc.oneof(
  rec({ k: fc.constantFrom("deliver" as const, "fromDevice" as const), dev: device, m: innerMessage }),
  rec({ k: fc.constantFrom("frame" as const, "deviceFrame" as const), dev: device, payload: fc.uint8Array({ maxLength: 300 }) }),
  rec({ k: fc.constantFrom("linked" as const, "unlinked" as const, "registered" as const), dev: device }),
  rec({ k: fc.constant("endAll" as const), dev: device, reason: u32, why: text(0, 256), disconnect: fc.boolean() }),
  rec({ k: fc.constantFrom("online" as const, "gone" as const), epoch: fc.uint8Array({ minLength: 16, maxLength: 16 }) }),
  rec({ k: fc.constant("installOnAccept" as const), dev: device, m: saInstall(fc.constant(1), fc.constant(0)) }),
  rec({ k: fc.constant("accepted" as const), dev: device, rid: fc.integer({ min: 1, max: 0xffffffff }), spi: fc.integer({ min: 1, max: 0xffffffff }) }),
);
const busMessage: fc.Arbitrary<BusMessage> = rec({
  // n + 0: a -0 would come back as 0 (CBOR has no integer -0), which deepEqual tells apart.
  from: text(0, 40), to: text(0, 40), sentAtMs: fc.maxSafeInteger().map((n) => n + 0), body: busBody,
});

/** A kind field as a sender could write it: the real ones, numbers around them, and keys every array
 *  has (`KINDS["length"]` is a number, `KINDS["at"]` a function: neither is a kind). */
const kindField = fc.oneof(
  fc.integer({ min: -2, max: 12 }),
  fc.constantFrom("length", "at", "constructor", "0", "3", 1.5, -0, null),
  fc.anything(),
);

describe("bus messages: the codec", () => {
  test("decoding arbitrary arrays throws nothing but MalformedBusMessage", () => {
    fc.assert(fc.property(fc.array(fc.anything(), { maxLength: 12 }), decodesCleanly), { numRuns: 2000 });
    fc.assert(fc.property(fc.anything(), decodesCleanly), { numRuns: 500 });
  });

  test("decoding a right header with any kind and any fields throws nothing but MalformedBusMessage", () => {
    const header = fc.tuple(fc.constantFrom(BUS_VERSION, 0, 2), fc.oneof(fc.string(), fc.anything()), fc.string(), fc.oneof(fc.maxSafeInteger(), fc.double()), kindField);
    const field = fc.oneof(fc.string({ maxLength: 300 }), fc.uint8Array({ maxLength: 20 }), fc.integer(), fc.boolean(), innerMessage.map((m) => encodeMessage(m)), fc.anything());
    fc.assert(
      fc.property(header, fc.array(field, { maxLength: 5 }), (h, f) => decodesCleanly([...h, ...f])),
      { numRuns: 3000 },
    );
  });

  test("decoding whatever random or damaged CBOR decodes to throws nothing but MalformedBusMessage", () => {
    const decodable = (b: Uint8Array): unknown[] => {
      try {
        return [cbor.decode(b)];
      } catch {
        return []; // not CBOR at all: the bus refuses it before decodeBusMessage
      }
    };
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (b) => {
        // A CBOR array head of 5..8 items first, so that random bytes reach the fields now and then.
        for (const w of [...decodable(b), ...decodable(new Uint8Array([0x85 + (b[0] ?? 0) % 4, ...b]))]) decodesCleanly(w);
      }),
      { numRuns: 3000 },
    );
    fc.assert(
      fc.property(busMessage, fc.array(fc.tuple(fc.nat(), fc.nat(255)), { minLength: 1, maxLength: 4 }), (m, damage) => {
        const b = cbor.encode(encodeBusMessage(m));
        for (const [at, v] of damage) b[at % b.length] = v;
        for (const w of decodable(b)) decodesCleanly(w);
      }),
      { numRuns: 2000 },
    );
  });

  test("every valid message survives encode -> CBOR -> decode unchanged", () => {
    fc.assert(
      fc.property(busMessage, (m) => {
        assert.deepEqual(decodeBusMessage(cbor.decode(cbor.encode(encodeBusMessage(m)))), m);
      }),
      { numRuns: 2000 },
    );
  });

  test("a sending time of -0 (a CBOR float) is the time 0: the message encodes back to what was decoded", () => {
    const m = decodeBusMessage([BUS_VERSION, "i1", "i2", -0, 11, "dev"]);
    assert.ok(Object.is(m.sentAtMs, 0));
    assert.deepEqual(decodeBusMessage(cbor.decode(cbor.encode(encodeBusMessage(m)))), m);
  });

  test("examples, some of them found by the properties above: each is refused as malformed", () => {
    for (const kind of ["length", "at", "0", 8, -1, 1.5]) {
      assert.throws(() => decodeBusMessage([BUS_VERSION, "i1", "i2", 0, kind, "d"]), MalformedBusMessage, `kind ${String(kind)}`);
    }
    // An endAll whose reason is no CloseReason: it would go on into every SaClosed sent for it.
    for (const reason of [Number.NaN, -1, 1.5, Infinity]) {
      assert.throws(() => decodeBusMessage([BUS_VERSION, "i1", "", 0, 5, "d", reason, "why", false]), MalformedBusMessage, `reason ${reason}`);
    }
    // installOnAccept holds only a new SA's SaInstall for its responder: not the initiator's, not a
    // rekey's, not another message.
    const install = (role: number, replaces: number) => encodeMessage({ t: Msg.SaInstall, rid: 3, spi: 9, peer: "a", app: "chat", suite: 1, seed: new Uint8Array(32), role, lifetime: 60, limit: 10, replaces });
    assert.ok(decodeBusMessage([BUS_VERSION, "i1", "i2", 0, 9, "d", install(1, 0)]), "a responder's new SaInstall is taken");
    for (const [m, what] of [[install(0, 0), "the initiator's"], [install(1, 5), "a rekey's"], [encodeMessage({ t: Msg.Bye, spi: 9 }), "a Bye"]] as const) {
      assert.throws(() => decodeBusMessage([BUS_VERSION, "i1", "i2", 0, 9, "d", m]), MalformedBusMessage, what);
    }
    // accepted names a request and an SA: neither is 0 (no request, no SA) or past 32 bits.
    for (const [rid, spi] of [[0, 9], [3, 0], [2 ** 32, 9], [3, -1], [3, 1.5]]) {
      assert.throws(() => decodeBusMessage([BUS_VERSION, "i1", "i2", 0, 10, "d", rid, spi]), MalformedBusMessage, `accepted ${rid} ${spi}`);
    }
    // A device name past the codec's limit.
    assert.throws(() => decodeBusMessage([BUS_VERSION, "i1", "i2", 0, 3, "x".repeat(257)]), MalformedBusMessage, "a long device name");
    // Values whose string conversion throws, where an error message would name them.
    const unprintable = [{ toString: 0 }, Object.create(null) as object];
    for (const v of unprintable) {
      assert.throws(() => decodeBusMessage([v, "i1", "i2", 0, 0, "d", [Msg.Bye, 1]]), MalformedBusMessage, "as the version");
      assert.throws(() => decodeBusMessage([BUS_VERSION, "i1", "i2", 0, 0, "d", [v, 1]]), MalformedBusMessage, "as an inner message's type");
    }
  });
});

// ---- the bus on a broker --------------------------------------------------------------------------

const devsOf = (n: BusNode) => n.messages.map((m) => (m.body.k === "linked" || m.body.k === "unlinked" ? `${m.body.k}:${m.body.dev}` : m.body.k));

describe("the instance bus on a broker", { timeout: 60_000 }, () => {
  let broker: EmbeddedBroker;
  const [D1, D2, D3, D4, D5, D7, D8, D9] = ["d1.example", "d2.example", "d3.example", "d4.example", "d5.example", "d7.example", "d8.example", "d9.example"];

  before(async () => {
    broker = await startBroker({ host: "127.0.0.1", port: 0 });
  });
  after(async () => {
    await closeBusNodes();
    await broker.close();
  });

  test("a message to one instance and one to all arrive once each, from whom and for whom they were sent", async () => {
    const key = newBusKey();
    const [i1, i2] = [await joinBus(broker.url, D1, "d1-i1", key), await joinBus(broker.url, D1, "d1-i2", key)];
    await until(() => i1.bus.isOnline("d1-i2") && i2.bus.isOnline("d1-i1"), "each to see the other online");
    i1.bus.send("d1-i2", { k: "deliver", dev: "dev-a", m: { t: Msg.Bye, spi: 7 } });
    i1.bus.send("", { k: "unlinked", dev: "dev-b" });
    await marker(i1, i2, "last");
    assert.deepEqual(devsOf(i2), ["deliver", "unlinked:dev-b", "linked:last"]);
    assert.deepEqual(i2.messages[0], { from: "d1-i1", to: "d1-i2", sentAtMs: i2.messages[0].sentAtMs, body: { k: "deliver", dev: "dev-a", m: { t: Msg.Bye, spi: 7 } } });
    assert.equal(i2.messages[1].to, "");
    // The sender's own broadcast comes back to it and is dropped. The broker sent it to i1 when it
    // sent it to i2, before i2 had it and so before i2's broadcast below: i1 has judged it by then.
    await marker(i2, i1, "from-i2", true);
    assert.deepEqual(devsOf(i1), ["linked:from-i2"]);
    assert.deepEqual([...i1.refusals(), ...i2.refusals()], []);
  });

  test("a captured message published again is refused as seen before", async () => {
    const key = newBusKey();
    const topics = busTopics(D2);
    const [i1, i2] = [await joinBus(broker.url, D2, "d2-i1", key), await joinBus(broker.url, D2, "d2-i2", key)];
    const eve = await busListener(broker.url);
    await eve.capture(topics.to("d2-i2"));
    await marker(i1, i2, "original");
    await until(() => eve.heard.length === 1, "the eavesdropper to capture it");
    await eve.client.publishAsync(eve.heard[0].topic, eve.heard[0].payload, { qos: 1 });
    await until(() => i2.refusals().length === 1, "the replay to be judged");
    assert.match(i2.refusals()[0], /seen before/);
    await marker(i1, i2, "after");
    assert.deepEqual(devsOf(i2), ["linked:original", "linked:after"]);
    assert.equal(i2.bus.stats.refused, 1);
  });

  test("a message sealed under another key is refused; so is one older than BUS_MAX_AGE_MS", async () => {
    const key = newBusKey();
    const i2 = await joinBus(broker.url, D3, "d3-i2", key);
    const forger = await joinBus(broker.url, D3, "d3-forger", newBusKey());
    // Its own presence was refused already (under the wrong key): count from here.
    await until(() => i2.refusals().length === 1, "the forger's presence to be refused");
    forger.bus.send("d3-i2", { k: "linked", dev: "forged" });
    await until(() => i2.refusals().length === 2, "the forged message to be judged");
    assert.match(i2.refusals()[1], /does not open under the domain's bus key/);

    // A sender whose clock says it is past the freshness window (presence has no age check: it joins).
    const stale = await joinBus(broker.url, D3, "d3-stale", key, { nowMs: () => Date.now() - BUS_MAX_AGE_MS - 10_000 });
    await until(() => i2.bus.isOnline("d3-stale"), "the stale sender's presence");
    stale.bus.send("d3-i2", { k: "linked", dev: "stale" });
    await until(() => i2.refusals().length === 3, "the stale message to be judged");
    assert.match(i2.refusals()[2], /70 s old/);
    // Just inside the window is fine (the check is on age, not on the sender being slow).
    const late = await joinBus(broker.url, D3, "d3-late", key, { nowMs: () => Date.now() - BUS_MAX_AGE_MS + 10_000 });
    await marker(late, i2, "late-but-fresh");
    assert.deepEqual(devsOf(i2), ["linked:late-but-fresh"]);
  });

  test("a message on a topic it was not sent to is refused, and presence on another instance's topic too", async () => {
    const key = newBusKey();
    const topics = busTopics(D4);
    const [i1, i2, i3] = [await joinBus(broker.url, D4, "d4-i1", key), await joinBus(broker.url, D4, "d4-i2", key), await joinBus(broker.url, D4, "d4-i3", key)];
    const eve = await busListener(broker.url);
    await eve.capture(topics.to("d4-i1"));
    await eve.capture(topics.presence("d4-i3"));
    await until(() => eve.heard.length === 1, "i3's retained online");
    i3.bus.send("d4-i1", { k: "linked", dev: "for-i1" });
    await until(() => eve.heard.length === 2 && i1.messages.length === 1, "i3's message to i1");
    const forI1 = eve.heard[1].payload;
    const i3Online = eve.heard[0].payload;
    const judged = (n: number) => until(() => i2.refusals().length === n, `${n} refusals at i2`);

    // i3's message for i1 on i2's topic: i2 has not seen its nonce, so only the topic check can refuse it.
    await eve.client.publishAsync(topics.to("d4-i2"), forI1, { qos: 1 });
    await judged(1);
    assert.match(i2.refusals()[0], /a message for "d4-i1" on .*\/to\/d4-i2$/);
    // The same on the broadcast topic (i1 and i3 refuse it there too: a message for one is not for all).
    await eve.client.publishAsync(topics.all, forI1, { qos: 1 });
    await judged(2);
    assert.match(i2.refusals()[1], /a message for "d4-i1" on .*\/all$/);
    // i3's presence on i2's presence topic, and on i2's message topic.
    await eve.client.publishAsync(topics.presence("d4-i2"), i3Online, { qos: 1 });
    await judged(3);
    assert.match(i2.refusals()[2], /presence message on another instance's topic/);
    await eve.client.publishAsync(topics.to("d4-i2"), i3Online, { qos: 1 });
    await judged(4);
    assert.match(i2.refusals()[3], /presence message outside the presence topics/);
    // i3's presence on a topic that unescapes to i3's name but is not its topic (%64 is "d"): a
    // retained copy there would outlive i3's last-will, which replaces only the real one.
    await eve.client.publishAsync(`${topics.presencePrefix}%64${"d4-i3".slice(1)}`, i3Online, { qos: 1 });
    await judged(5);
    assert.match(i2.refusals()[4], /presence message on another instance's topic/);
    // An empty payload (a cleared retained topic) is refused, not crashed on.
    await eve.client.publishAsync(topics.to("d4-i2"), Buffer.alloc(0), { qos: 1 });
    await judged(6);
    assert.match(i2.refusals()[5], /empty message/);

    await marker(i3, i2, "control");
    assert.deepEqual(devsOf(i2), ["linked:control"]);
    assert.deepEqual(i2.presence.filter(([i]) => i === "d4-i3"), [["d4-i3", true]]);
  });

  test("a message sealed under the domain's key but malformed is refused whole", async () => {
    const key = newBusKey();
    const topics = busTopics(D7);
    const [i1, i2] = [await joinBus(broker.url, D7, "d7-i1", key), await joinBus(broker.url, D7, "d7-i2", key)];
    const eve = await busListener(broker.url);
    const header = [BUS_VERSION, "d7-i1", "d7-i2", Date.now()];
    const bad: [string, Uint8Array, RegExp][] = [
      ["not CBOR", new Uint8Array([0xff, 0x00]), /not CBOR/],
      ["a kind that is an array's key, not an index", cbor.encode([...header, "length"]), /malformed bus message header/],
      ["a deliver without its inner message", cbor.encode([...header, 0, "dev"]), /1 fields where 2 belong/],
      ["a deliver of an outer message", cbor.encode([...header, 0, "dev", [Msg.JoinReject]]), /not an inner message/],
    ];
    for (const [i, [what, plain, why]] of bad.entries()) {
      await eve.client.publishAsync(topics.to("d7-i2"), sealAsInsider(key, plain), { qos: 1 });
      await until(() => i2.refusals().length === i + 1, `i2 to judge ${what}`);
      assert.match(i2.refusals()[i], why, what);
    }
    await marker(i1, i2, "control");
    assert.deepEqual(devsOf(i2), ["linked:control"]);
  });

  test("presence: online, a crash's last-will, and an old run's online or gone replayed later change nothing", async () => {
    const key = newBusKey();
    const topics = busTopics(D5);
    const i1 = await joinBus(broker.url, D5, "d5-i1", key);
    const eve = await busListener(broker.url);
    await eve.capture(topics.presence("d5-i2"));
    const i2 = await joinBus(broker.url, D5, "d5-i2", key);
    await until(() => i1.presence.some(([i, on]) => i === "d5-i2" && on), "i1 to see i2 online");
    await until(() => eve.heard.length === 1, "i2's online");
    const run1Online = eve.heard[0].payload;

    crash(i2);
    await until(() => i1.presence.some(([i, on]) => i === "d5-i2" && !on), "i2's last-will at i1");
    assert.equal(i1.bus.isOnline("d5-i2"), false);
    await until(() => eve.heard.length === 2, "the eavesdropper to hear the last-will");
    const run1Gone = eve.heard[1].payload;

    // i2 comes back: a new run, a new epoch.
    const i2b = await joinBus(broker.url, D5, "d5-i2", key);
    await until(() => i1.bus.isOnline("d5-i2"), "i1 to see i2's new run online");
    assert.notDeepEqual(i2b.bus.epoch, i2.bus.epoch);
    await until(() => eve.heard.length === 3, "the eavesdropper to hear the new run's online");
    const run2Online = eve.heard[2].payload;
    const seen = i1.presence.length;
    const received = () => i1.bus.stats.received;

    // The first run's last-will, replayed: i2's new run stays online.
    let before = received();
    await eve.client.publishAsync(topics.presence("d5-i2"), run1Gone, { qos: 1 });
    await until(() => received() > before, "i1 to judge the old gone");
    assert.equal(i1.bus.isOnline("d5-i2"), true);
    assert.equal(i1.presence.length, seen);

    // The first run's online, replayed: still the new run that i1 follows, so that the new run's own
    // last-will is believed when it comes.
    before = received();
    await eve.client.publishAsync(topics.presence("d5-i2"), run1Online, { qos: 1 });
    await until(() => received() > before, "i1 to judge the old online");
    crash(i2b);
    await until(() => !i1.bus.isOnline("d5-i2"), "the new run's last-will to be believed");
    assert.deepEqual(i1.presence.slice(seen), [["d5-i2", false]]);

    // After the last run is gone, neither its own online nor the first run's, replayed, brings it back.
    before = received();
    await eve.client.publishAsync(topics.presence("d5-i2"), run2Online, { qos: 1 });
    await eve.client.publishAsync(topics.presence("d5-i2"), run1Online, { qos: 1 });
    await until(() => received() >= before + 2, "i1 to judge the replayed onlines");
    assert.equal(i1.bus.isOnline("d5-i2"), false);
    assert.deepEqual(i1.presence.slice(seen), [["d5-i2", false]]);
  });

  test("a run whose connection broke, so that the broker published its last-will, is online again when it reconnects", async () => {
    const key = newBusKey();
    const i1 = await joinBus(broker.url, D8, "d8-i1", key);
    const i2 = await joinBus(broker.url, D8, "d8-i2", key);
    await until(() => i1.bus.isOnline("d8-i2"), "i1 to see i2 online");
    // The connection drops without a DISCONNECT; the client reconnects by itself (reconnectPeriod).
    mqttOf(i2).stream.destroy();
    await until(() => i1.presence.some(([i, on]) => i === "d8-i2" && !on), "i2's last-will at i1");
    // Same run, same epoch: its new "online" is newer than the one its last-will followed.
    await until(() => i1.bus.isOnline("d8-i2"), "i2 to be online again at i1", 15_000);
    assert.deepEqual(i1.presence.filter(([i]) => i === "d8-i2"), [["d8-i2", true], ["d8-i2", false], ["d8-i2", true]]);
    await marker(i1, i2, "after-reconnect");
  });

  test("a presence handler that throws is logged, and the bus goes on", async () => {
    const key = newBusKey();
    const i1 = await joinBus(broker.url, D9, "d9-i1", key, { breakPresenceHandler: true });
    const i2 = await joinBus(broker.url, D9, "d9-i2", key);
    await until(() => i1.events("instance-bus-handler-failed").length === 1, "the handler's failure to be logged");
    assert.match(String(i1.events("instance-bus-handler-failed")[0].reason), /presence handler broke on d9-i2/);
    assert.equal(i1.bus.isOnline("d9-i2"), true);
    await marker(i2, i1, "still-listening");
  });

  test("two domains with their own keys on one broker: neither hears nor accepts the other's traffic", async () => {
    const [keyA, keyB] = [newBusKey(), newBusKey()];
    const [a1, a2] = [await joinBus(broker.url, "a6.example", "x1", keyA), await joinBus(broker.url, "a6.example", "x2", keyA)];
    const [b1, b2] = [await joinBus(broker.url, "b6.example", "x1", keyB), await joinBus(broker.url, "b6.example", "x2", keyB)];
    const eve = await busListener(broker.url);
    await eve.capture(busTopics("a6.example").to("x2"));

    await marker(a1, a2, "a-direct");
    await marker(a1, a2, "a-all", true);
    await marker(b1, b2, "b-direct");
    await marker(b1, b2, "b-all", true);
    assert.deepEqual(devsOf(a2), ["linked:a-direct", "linked:a-all"]);
    assert.deepEqual(devsOf(b2), ["linked:b-direct", "linked:b-all"]);
    // Nothing of A's even reached B (it would have been refused): not its messages, not its presence.
    assert.deepEqual([...b1.refusals(), ...b2.refusals(), ...a1.refusals(), ...a2.refusals()], []);
    assert.deepEqual(b1.bus.others, ["x2"]);

    // A's sealed message put on B's topic for the same instance name: it does not open under B's key.
    await until(() => eve.heard.length === 1, "A's message to be captured");
    await eve.client.publishAsync(busTopics("b6.example").to("x2"), eve.heard[0].payload, { qos: 1 });
    await until(() => b2.refusals().length === 1, "B to judge A's message");
    assert.match(b2.refusals()[0], /does not open under the domain's bus key/);
    assert.deepEqual(devsOf(b2), ["linked:b-direct", "linked:b-all"]);
  });
});
