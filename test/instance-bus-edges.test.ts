// The instance bus (gateway/instances/bus.ts) at its edges, where Stryker's first run over it found no
// test looking: a message addressed to one topic's reader arriving on another, presence where no
// presence belongs, the freshness window to the millisecond, the replay memory's bounds, the QoS and
// retain flags as the broker sees them, what a clean stop leaves retained, a failing message handler,
// a send after the stop; and each refusal of bus-messages.ts in its own words. On the in-process
// broker (aedes); test/instance-bus.test.ts has the bus's main cases.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import type { IPublishPacket } from "mqtt";
import nacl from "tweetnacl";
import * as cbor from "../gateway/encoding/cbor.ts";
import { startBroker, type EmbeddedBroker } from "../gateway/monitor/embedded-broker.ts";
import { BUS_MAX_AGE_MS, BUS_TOPIC_ROOT, busKeyPurpose, busTopics } from "../gateway/instances/bus.ts";
import { BUS_VERSION, decodeBusMessage, MalformedBusMessage, type BusMessage } from "../gateway/instances/bus-messages.ts";
import { encodeMessage, Msg } from "../firmware/proto/messages.ts";
import { until } from "./support/harness.ts";
import { busListener, closeBusNodes, crash, joinBus, marker, newBusKey, sealAsInsider, type BusNode } from "./support/bus-nodes.ts";

// ---- the codec's refusals, in words ------------------------------------------------------------

const refusedAs = (w: unknown, message: string) => assert.throws(() => decodeBusMessage(w), (e: unknown) => e instanceof MalformedBusMessage && (e as Error).message === message, JSON.stringify(w));
const head = [BUS_VERSION, "i1", "i2", 0];

test("bus messages: each refusal says what is wrong", () => {
  for (const w of [[], [BUS_VERSION, "i1", "i2", 0], "msg", new Map()]) refusedAs(w, "not a bus message");
  refusedAs([2, "i1", "i2", 0, 3, "d"], "bus message version 2, this instance speaks 1");
  refusedAs(["1", "i1", "i2", 0, 3, "d"], "bus message version string, this instance speaks 1");
  for (const h of [[BUS_VERSION, 5, "i2", 0, 3], [BUS_VERSION, "i1", null, 0, 3], [BUS_VERSION, "i1", "i2", 1.5, 3], [BUS_VERSION, "i1", "i2", "0", 3], [BUS_VERSION, "i1", "i2", 0, 12]]) {
    refusedAs([...h, "d"], "malformed bus message header");
  }
  refusedAs([...head, 3, 5], "malformed device in a bus message");
  refusedAs([...head, 3, "x".repeat(257)], "malformed device in a bus message");
  assert.equal((decodeBusMessage([...head, 3, "x".repeat(256)]).body as { dev: string }).dev.length, 256, "256 characters is the longest name");
  refusedAs([...head, 1, "d", "bytes"], "malformed frame in a bus message");
  refusedAs([...head, 6, "epoch"], "malformed epoch in a bus message");
  refusedAs([...head, 5, "d", 1, 5, false], "malformed reason in a bus message");
  for (const disconnect of ["yes", 1, null]) refusedAs([...head, 5, "d", 1, "why", disconnect], "malformed endAll");
  refusedAs([...head, 5, "d", -1, "why", true], "malformed endAll");
  refusedAs([...head, 3, "d", "extra"], "a bus message with 2 fields where 1 belong");
  refusedAs([...head, 10, "d", 0, 9], "malformed accepted");
  refusedAs([...head, 0, "d", "not an array"], "a bus message carries something that is not an inner message");
  refusedAs([...head, 0, "d", [Msg.JoinReject]], `a bus message carries message type ${Msg.JoinReject}, which is not an inner message`);
  assert.throws(() => decodeBusMessage([...head, 0, "d", [Msg.Bye]]), (e: unknown) => e instanceof MalformedBusMessage && /^a bus message carries a malformed inner message: .+/.test((e as Error).message));
  const install = (role: number) => encodeMessage({ t: Msg.SaInstall, rid: 3, spi: 9, peer: "a", app: "chat", suite: 1, seed: new Uint8Array(32), role, lifetime: 60, limit: 10, replaces: 0 });
  refusedAs([...head, 9, "d", install(0)], "an installOnAccept that does not carry a new SA's SaInstall for its responder");
});

test("the bus's names, as docs/PROTOCOL.md gives them: the topics and the key's purpose (every instance of a domain derives alike)", () => {
  const doc = readFileSync(new URL("../docs/PROTOCOL.md", import.meta.url), "utf8");
  const t = busTopics("a.example");
  assert.equal(BUS_TOPIC_ROOT, "keyproxy-instances/v1");
  assert.deepEqual([t.to("i1"), t.all, t.presence("i1"), t.presenceAny, t.presencePrefix], [
    "keyproxy-instances/v1/a.example/to/i1", "keyproxy-instances/v1/a.example/all", "keyproxy-instances/v1/a.example/presence/i1",
    "keyproxy-instances/v1/a.example/presence/+", "keyproxy-instances/v1/a.example/presence/",
  ]);
  for (const topic of ["keyproxy-instances/v1/<domain>/to/<instance>", "keyproxy-instances/v1/<domain>/all", "keyproxy-instances/v1/<domain>/presence/<instance>"]) assert.ok(doc.includes(`\`${topic}\``), topic);
  assert.equal(busTopics("a/b+#").to("i/1"), "keyproxy-instances/v1/a%2Fb%2B%23/to/i%2F1", "levels escaped");
  // Store.derivedKey puts "keyproxy/" in front (gateway/registry/store.ts).
  assert.equal(busKeyPurpose("a.example"), "instance-bus/v1/a.example");
  assert.ok(doc.includes("`keyproxy/instance-bus/v1/<domain>`"));
});

// ---- the bus on a broker -------------------------------------------------------------------------

/** What only a holder of the domain's key can make: a bus message of its choosing, sealed. */
const sealed = (key: Uint8Array, w: unknown[]): Buffer => sealAsInsider(key, cbor.encode(w));

function opened(key: Uint8Array, wire: IPublishPacket["payload"]): BusMessage {
  const payload = typeof wire === "string" ? Buffer.from(wire) : wire;
  const plain = nacl.secretbox.open(payload.subarray(24), payload.subarray(0, 24), key);
  assert.ok(plain, "opens under the domain's key");
  return decodeBusMessage(cbor.decode(plain));
}

const LINKED = 3;
const ONLINE = 6;
const GONE = 7;

const devs = (n: BusNode) => n.messages.map((m) => (m.body.k === "linked" ? m.body.dev : m.body.k));

describe("the instance bus at its edges", { timeout: 60_000 }, () => {
  let broker: EmbeddedBroker;
  before(async () => {
    broker = await startBroker({ host: "127.0.0.1", port: 0 });
  });
  after(async () => {
    await closeBusNodes();
    await broker.close();
  });

  test("a message is for the reader of the topic it came on: one for me on the broadcast topic, or one for all on my topic, is refused", async () => {
    const key = newBusKey();
    const d = "e1.example";
    const t = busTopics(d);
    const [i1, i2] = [await joinBus(broker.url, d, "e1-i1", key), await joinBus(broker.url, d, "e1-i2", key)];
    const eve = await busListener(broker.url);
    await eve.client.publishAsync(t.all, sealed(key, [BUS_VERSION, "e1-i1", "e1-i2", Date.now(), LINKED, "for-i2-on-all"]), { qos: 1 });
    await until(() => i2.refusals().length === 1, "i2 to judge it");
    assert.match(i2.refusals()[0], /^a message for "e1-i2" on keyproxy-instances\/v1\/e1\.example\/all$/);
    await eve.client.publishAsync(t.to("e1-i2"), sealed(key, [BUS_VERSION, "e1-i1", "", Date.now(), LINKED, "for-all-on-i2"]), { qos: 1 });
    await until(() => i2.refusals().length === 2, "i2 to judge it");
    assert.match(i2.refusals()[1], /^a message for "" on keyproxy-instances\/v1\/e1\.example\/to\/e1-i2$/);
    await marker(i1, i2, "control");
    assert.deepEqual(devs(i2), ["control"]);
    assert.equal(i2.bus.isOnline("e1-i2"), true, "an instance counts itself online");
    assert.equal(i2.bus.isOnline("e1-i3"), false);
  });

  test("presence only on the sender's own presence topic and only of presence kinds: a gone on a message topic, or a message on a presence topic, is refused", async () => {
    const key = newBusKey();
    const d = "e2.example";
    const t = busTopics(d);
    const [i1, i2] = [await joinBus(broker.url, d, "e2-i1", key), await joinBus(broker.url, d, "e2-i2", key)];
    await until(() => i2.bus.isOnline("e2-i1"), "i2 to see i1");
    const eve = await busListener(broker.url);
    const i1Gone = [BUS_VERSION, "e2-i1", "", Date.now(), GONE, i1.bus.epoch];
    for (const topic of [t.to("e2-i2"), t.all]) await eve.client.publishAsync(topic, sealed(key, i1Gone), { qos: 1 });
    await until(() => i2.refusals().length === 2, "i2 to judge both");
    assert.deepEqual(i2.refusals(), ["a presence message outside the presence topics", "a presence message outside the presence topics"]);
    assert.equal(i2.bus.isOnline("e2-i1"), true, "i1 is not taken for gone");
    await eve.client.publishAsync(t.presence("e2-i1"), sealed(key, [BUS_VERSION, "e2-i1", "", Date.now(), LINKED, "on-presence"]), { qos: 1 });
    await until(() => i2.refusals().length === 3, "i2 to judge it");
    assert.equal(i2.refusals()[2], "a presence message on another instance's topic, or of kind linked");
    await marker(i1, i2, "control");
    assert.deepEqual(devs(i2), ["control"], "the message on the presence topic was not delivered");
  });

  test("presence: the same run announced again is told once; a gone of an instance never seen online is told, for a takeover", async () => {
    const key = newBusKey();
    const d = "e3.example";
    const t = busTopics(d);
    const eve = await busListener(broker.url);
    // A run that died before this instance started: its last-will is what the broker keeps.
    const deadEpoch = new Uint8Array(randomBytes(16));
    await eve.client.publishAsync(t.presence("e3-dead"), sealed(key, [BUS_VERSION, "e3-dead", "", Date.now(), GONE, deadEpoch]), { qos: 1, retain: true });
    const i1 = await joinBus(broker.url, d, "e3-i1", key);
    await until(() => i1.presence.some(([i]) => i === "e3-dead"), "i1 to hear of the dead run");
    assert.deepEqual(i1.presence.filter(([i]) => i === "e3-dead"), [["e3-dead", false]]);

    const i2 = await joinBus(broker.url, d, "e3-i2", key);
    await until(() => i1.bus.isOnline("e3-i2"), "i1 to see i2");
    // i2's run says online again, newer, same epoch (as after a reconnect whose last-will nobody heard).
    const received = i1.bus.stats.received;
    await eve.client.publishAsync(t.presence("e3-i2"), sealed(key, [BUS_VERSION, "e3-i2", "", Date.now() + 1000, ONLINE, i2.bus.epoch]), { qos: 1 });
    await until(() => i1.bus.stats.received > received, "i1 to hear it");
    await marker(i2, i1, "control");
    assert.deepEqual(i1.presence.filter(([i]) => i === "e3-i2"), [["e3-i2", true]]);
    await eve.client.publishAsync(t.presence("e3-dead"), Buffer.alloc(0), { qos: 1, retain: true });
  });

  test("the freshness window to the millisecond, in the receiver's clock: 60 s old either way is taken, a millisecond more is not", async () => {
    const key = newBusKey();
    const d = "e4.example";
    const t = busTopics(d);
    const now = 1_800_000_000_000;
    const i2 = await joinBus(broker.url, d, "e4-i2", key, { nowMs: () => now });
    const eve = await busListener(broker.url);
    const at = (sentAtMs: number, tag: string) => eve.client.publishAsync(t.to("e4-i2"), sealed(key, [BUS_VERSION, "e4-i1", "e4-i2", sentAtMs, LINKED, tag]), { qos: 1 });
    await at(now - BUS_MAX_AGE_MS, "oldest");
    await at(now + BUS_MAX_AGE_MS, "newest");
    await at(now - BUS_MAX_AGE_MS - 1, "too-old");
    await at(now + BUS_MAX_AGE_MS + 1, "too-new");
    await until(() => i2.messages.length + i2.refusals().length === 4, "i2 to judge all four");
    assert.deepEqual(devs(i2), ["oldest", "newest"]);
    assert.deepEqual(i2.refusals(), [
      "a message 60 s old (more than 60 s either way: replayed, or the instances' clocks disagree)",
      "a message -60 s old (more than 60 s either way: replayed, or the instances' clocks disagree)",
    ]);
  });

  test("the replay memory forgets what is past twice the window, and holds at most 200,000 nonces", async () => {
    const key = newBusKey();
    const d = "e5.example";
    const t = busTopics(d);
    let now = 1_800_000_000_000;
    const i2 = await joinBus(broker.url, d, "e5-i2", key, { nowMs: () => now });
    const seen = (i2.bus as unknown as { seen: Map<string, number> }).seen; // test-only access
    const eve = await busListener(broker.url);
    const send = async (tag: string) => {
      const before = i2.messages.length;
      await eve.client.publishAsync(t.to("e5-i2"), sealed(key, [BUS_VERSION, "e5-i1", "e5-i2", now, LINKED, tag]), { qos: 1 });
      await until(() => i2.messages.length === before + 1, `i2 to take ${tag}`);
    };
    await send("first");
    now += 2 * BUS_MAX_AGE_MS;
    await send("second");
    assert.equal(seen.size, 2, "exactly twice the window: still remembered");
    now += 1;
    await send("third");
    assert.equal(seen.size, 2, "the first is past twice the window and forgotten");

    // A flood of fresh nonces, all inside the window: the memory stops at its capacity.
    const remember = (i2.bus as unknown as { remember(n: string): void }).remember.bind(i2.bus);
    for (let i = 0; i < 200_000; i++) remember(`flood-${i}`);
    assert.equal(seen.size, 200_000, "at capacity, the oldest make room: the two messages' nonces went first");
    assert.equal(seen.has("flood-0"), true);
    remember("one-more");
    assert.equal(seen.size, 200_000);
    assert.deepEqual([seen.has("flood-0"), seen.has("flood-1"), seen.has("one-more")], [false, true, true]);
  });

  test("on the wire: SA frames at QoS 0 and the rest at QoS 1; a clean stop leaves a retained, sealed gone of its run", async () => {
    const key = newBusKey();
    const d = "e6.example";
    const t = busTopics(d);
    const i2 = await joinBus(broker.url, d, "e6-i2", key);
    const i1 = await joinBus(broker.url, d, "e6-i1", key);
    const eve = await busListener(broker.url);
    await eve.capture(t.to("e6-i2"));
    i1.bus.send("e6-i2", { k: "frame", dev: "dv", payload: Uint8Array.of(1) });
    i1.bus.send("e6-i2", { k: "deviceFrame", dev: "dv", payload: Uint8Array.of(2) });
    i1.bus.send("e6-i2", { k: "linked", dev: "dv" });
    i1.bus.send("e6-i2", { k: "deliver", dev: "dv", m: { t: Msg.Bye, spi: 7 } });
    await until(() => eve.heard.length === 4 && i2.messages.length === 4, "all four");
    assert.deepEqual(eve.heard.map((p) => [opened(key, p.payload).body.k, p.qos]), [["frame", 0], ["deviceFrame", 0], ["linked", 1], ["deliver", 1]]);
    assert.equal(i1.bus.stats.sent, 4);

    const epoch = i1.bus.epoch;
    await i1.bus.close();
    await until(() => i2.presence.some(([i, on]) => i === "e6-i1" && !on), "i2 to hear i1 gone");
    const late = await busListener(broker.url);
    await late.capture(t.presence("e6-i1"));
    await until(() => late.heard.length === 1, "the retained presence");
    assert.equal(late.heard[0].retain, true);
    const gone = opened(key, late.heard[0].payload);
    assert.deepEqual({ from: gone.from, to: gone.to, body: gone.body }, { from: "e6-i1", to: "", body: { k: "gone", epoch } });

    // A send after the stop is lost and said, never thrown.
    i1.bus.send("e6-i2", { k: "linked", dev: "after-close" });
    i1.bus.send("", { k: "unlinked", dev: "after-close" });
    await until(() => i1.events("instance-bus-send-failed").length === 2, "the lost sends to be logged");
    assert.deepEqual(i1.events("instance-bus-send-failed").map((e) => [e.to, e.kind]), [["e6-i2", "linked"], ["all", "unlinked"]]);
    await late.client.publishAsync(t.presence("e6-i1"), Buffer.alloc(0), { qos: 1, retain: true });
  });

  test("a crash leaves the last-will retained: an instance that starts later hears the run gone", async () => {
    const key = newBusKey();
    const d = "e7.example";
    const i1 = await joinBus(broker.url, d, "e7-i1", key);
    const early = await busListener(broker.url);
    await early.capture(busTopics(d).presence("e7-i1"));
    await until(() => early.heard.length === 1, "the retained online");
    const online = opened(key, early.heard[0].payload);
    assert.deepEqual([early.heard[0].retain, online.from, online.to, online.body], [true, "e7-i1", "", { k: "online", epoch: i1.bus.epoch }]);
    crash(i1);
    const late = await busListener(broker.url);
    await late.capture(busTopics(d).presence("e7-i1"));
    await until(() => late.heard.some((p) => opened(key, p.payload).body.k === "gone"), "the last-will");
    const will = late.heard.find((p) => opened(key, p.payload).body.k === "gone")!;
    assert.equal(will.retain, true);
    assert.deepEqual(((m) => [m.from, m.to, m.body])(opened(key, will.payload)), ["e7-i1", "", { k: "gone", epoch: i1.bus.epoch }]);
    const i2 = await joinBus(broker.url, d, "e7-i2", key);
    await until(() => i2.presence.length > 0, "i2 to hear of i1");
    assert.deepEqual(i2.presence, [["e7-i1", false]]);
    await late.client.publishAsync(busTopics(d).presence("e7-i1"), Buffer.alloc(0), { qos: 1, retain: true });
  });

  test("a message handler that throws is logged with the sender and kind, and the bus goes on; a payload too short to be sealed is refused as such", async () => {
    const key = newBusKey();
    const d = "e8.example";
    const got: string[] = [];
    const i2 = await joinBus(broker.url, d, "e8-i2", key, {
      onMessage: (m) => {
        if (m.body.k === "linked" && m.body.dev === "boom") throw new Error("the handler broke");
        if (m.body.k === "linked") got.push(m.body.dev);
      },
    });
    const i1 = await joinBus(broker.url, d, "e8-i1", key);
    i1.bus.send("e8-i2", { k: "linked", dev: "boom" });
    i1.bus.send("e8-i2", { k: "linked", dev: "after" });
    await until(() => got.includes("after"), "the next message");
    const failed = i2.events("instance-bus-handler-failed");
    assert.equal(failed.length, 1);
    assert.deepEqual([failed[0].from, failed[0].kind, failed[0].reason], ["e8-i1", "linked", "the handler broke"]);

    const eve = await busListener(broker.url);
    for (const n of [1, 24 + 15]) await eve.client.publishAsync(busTopics(d).to("e8-i2"), Buffer.alloc(n, 1), { qos: 1 });
    await until(() => i2.refusals().length === 2, "both judged");
    assert.deepEqual(i2.refusals(), ["too short to be a sealed bus message", "too short to be a sealed bus message"]);
    await eve.client.publishAsync(busTopics(d).to("e8-i2"), Buffer.alloc(24 + 16, 1), { qos: 1 });
    await until(() => i2.refusals().length === 3, "judged");
    assert.match(i2.refusals()[2], /does not open under the domain's bus key/, "nonce and tag alone: long enough, and opened");
  });
});
