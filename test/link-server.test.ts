// The link server against an attacker who can reach its port (issue 11, findings 2 and 4): one
// identity per connection, and the limits on connections, unjoined time, bad input and failed joins
// (gateway/link/limits.ts, docs/OPERATIONS.md "Limits"). Each limit is set small through
// GatewayOptions.limits; every test waits for the event it is about, none measures time.
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { randomBytes } from "node:crypto";
import * as gcbor from "../gateway/encoding/cbor.ts";
import { nodeCrypto } from "../gateway/crypto/symmetric.ts";
import { DEFAULT_LINK_LIMITS, JOIN_REQUEST_MAX_PAYLOAD, RESERVED_DESCRIPTORS, sourceKey } from "../gateway/link/limits.ts";
import { LinkServer } from "../gateway/link/server.ts";
import { Logger } from "../gateway/log/logger.ts";
import { openStore } from "../gateway/gateway.ts";
import { SUITE_AES_CCM_16_64_128 as AES } from "../firmware/crypto/types.ts";
import { joinTag, JOIN_NONCE_BYTES } from "../firmware/proto/keys.ts";
import { CloseReason, encodeMessage, ErrorCode, Msg } from "../firmware/proto/messages.ts";
import { linkLimitsFromFlags } from "../cli/gateway-cmd.ts";
import { UsageError } from "../cli/args.ts";
import { nodeHandset, provision, startGateway, tempDir, until, type TestGateway } from "./support/harness.ts";
import { frame, payloadsOf, sessionHandset, stopGateway } from "./support/session-rig.ts";

const crypto = nodeCrypto();

/** A JoinRequest frame for id under rootKey with counter ctr, as a device makes it. */
function joinFrame(id: string, rootKey: Uint8Array, ctr: number): Uint8Array {
  const nonce = new Uint8Array(randomBytes(JOIN_NONCE_BYTES));
  const tag = joinTag(crypto, gcbor, rootKey, id, ctr, nonce, AES);
  return frame(gcbor.encode(encodeMessage({ t: Msg.JoinRequest, id, ctr, nonce, suite: AES, tag })));
}

interface Peer {
  socket: net.Socket;
  /** Payloads of the frames received. */
  received: Uint8Array[];
  closed: boolean;
}

/** A raw TCP peer from a chosen loopback address (Linux answers on all of 127/8): the per-source
 *  limits see 127.0.0.2 as another host than 127.0.0.1. */
function peer(t: TestGateway, localAddress = "127.0.0.1"): Promise<Peer> {
  return new Promise((resolve, reject) => {
    const p: Peer = { socket: undefined as unknown as net.Socket, received: [], closed: false };
    p.socket = net.connect({ port: t.gw.address.port, host: t.gw.address.host, localAddress }, () => resolve(p));
    p.socket.on("data", (b) => p.received.push(...payloadsOf(new Uint8Array(b))));
    p.socket.on("close", () => { p.closed = true; });
    p.socket.on("error", (e) => (p.socket.connecting ? reject(e) : undefined));
  });
}

/** Why connections were closed, in order: joined ones ("link-closed") and unjoined ones ("unjoined-closed",
 *  summarised: the first of each second). */
const closedReasons = (t: TestGateway) =>
  t.logs.map((l) => JSON.parse(l)).filter((r) => r.event === "link-closed" || r.event === "unjoined-closed").map((r) => String(r.reason));
const isJoinReject = (payload: Uint8Array) => payload.length === 2 && payload[1] === Msg.JoinReject;

// ---- finding 2: one connection, one identity ------------------------------------------------------

test("a join as another device on a linked connection closes it: the first device is unlinked at once, its sessions take the grace path, nothing more goes out", async () => {
  const t = await startGateway({ sessions: { graceMs: 100, answerTimeoutMs: 60_000 } });
  await t.gw.policy.setDefault("allow");
  const x = await sessionHandset(t.gw, "dev-x", await provision(t.gw, "dev-x"));
  const z = await sessionHandset(t.gw, "dev-z", await provision(t.gw, "dev-z"));
  const keyY = await provision(t.gw, "dev-y");
  try {
    await until(() => x.h.status().registered && z.h.status().registered, "both registered");
    x.h.onRequest = () => true;
    assert.equal(z.h.connect("dev-x", "chat"), true);
    await until(() => x.h.sas.some((s) => s.ready) && z.h.sas.some((s) => s.ready), "a session between dev-z and dev-x");
    const spi = z.h.sas[0].spi;
    const receivedBefore = x.received.length;

    // The same TCP connection now joins as dev-y, with dev-y's genuine key.
    x.socket.write(joinFrame("dev-y", keyY, 1));
    await until(() => !t.gw.links.links.has("dev-x"), "dev-x no longer linked");
    await until(() => x.h.status().state === "down", "the connection closed");
    assert.equal(t.gw.links.links.has("dev-y"), false, "nor is dev-y linked on it");
    assert.equal((await t.gw.store.getDevice("dev-y"))!.joinCounter, 0, "dev-y's join changed nothing");
    assert.match(closedReasons(t).at(-1)!, /a second identity on one connection/);

    // A call to dev-x fails at once with the "not linked" answer (NotFound), not after a timeout.
    z.h.lastType = 0;
    assert.equal(z.h.connect("dev-x", "chat"), true);
    await until(() => z.h.lastType === Msg.Error, "the answer to a call to dev-x");
    assert.equal(z.h.lastCode, ErrorCode.NotFound);
    assert.equal(t.events("session-not-found").at(-1)!.reason, "the callee is not connected");
    // dev-x's session took the link-lost path: past the grace period dev-z is told.
    await until(() => z.closed.length === 1, "dev-z told its session ended");
    assert.deepEqual(z.closed, [[spi, CloseReason.PeerGone]]);
    assert.match(String(t.events("session-down").at(-1)!.reason), /link lost for longer than the grace period/);
    // Nothing went out on that socket after the second join: no JoinAccept, no Incoming for dev-x.
    assert.equal(x.received.length, receivedBefore);
  } finally {
    x.close();
    z.close();
    await stopGateway(t);
  }
});

test("a device joining again as itself on its own connection stays linked", async () => {
  const t = await startGateway();
  const key = await provision(t.gw, "dev-s");
  const d = await nodeHandset(t.gw, "dev-s", key);
  try {
    await until(() => d.h.status().registered, "registration");
    d.socket.write(joinFrame("dev-s", key, 2));
    await until(async () => (await t.gw.store.getDevice("dev-s"))!.joinCounter === 2, "the second join accepted");
    assert.equal(t.gw.links.links.get("dev-s")?.socket.remotePort, d.socket.localPort, "the same connection carries the link");
  } finally {
    d.close();
    await stopGateway(t);
  }
});

// ---- finding 4: unjoined connections are bounded in time ------------------------------------------

test("a JoinRequest trickled a byte at a time is closed at the join deadline", async () => {
  const t = await startGateway({ limits: { joinDeadlineMs: 300, unjoinedIdleMs: 60_000 } });
  const key = await provision(t.gw, "dev-tr");
  const p = await peer(t);
  const bytes = joinFrame("dev-tr", key, 1);
  let i = 0;
  // One byte every 100 ms: the whole request would take some 7 s; nothing here waits for that.
  const trickle = setInterval(() => (i < bytes.length && !p.closed ? p.socket.write(bytes.subarray(i, ++i)) : clearInterval(trickle)), 100);
  try {
    await until(() => p.closed, "the connection closed");
    assert.ok(i < bytes.length, "closed before the request was complete");
    assert.match(closedReasons(t).at(-1)!, /not joined within 300 ms/);
    assert.equal(t.gw.links.stats.unjoinedTimedOut, 1);
    assert.equal((await t.gw.store.getDevice("dev-tr"))!.joinCounter, 0);
  } finally {
    clearInterval(trickle);
    p.socket.destroy();
    await stopGateway(t);
  }
});

test("an unjoined connection that sends nothing is closed; a joined one is not", async () => {
  const t = await startGateway({ limits: { unjoinedIdleMs: 200 } });
  const d = await nodeHandset(t.gw, "dev-i", await provision(t.gw, "dev-i"));
  try {
    await until(() => d.h.status().registered, "registration");
    const p = await peer(t);
    await until(() => p.closed, "the idle connection closed");
    assert.match(closedReasons(t).at(-1)!, /sent nothing for 200 ms before joining/);
    // The joined handset has been idle longer than that (it registered before the peer connected).
    assert.equal(t.gw.links.links.has("dev-i"), true);
    assert.equal(d.h.status().state, "linked");
  } finally {
    d.close();
    await stopGateway(t);
  }
});

// ---- finding 4: how many connections --------------------------------------------------------------

test("unjoined connections per source are capped; another source, and joined connections, are not held to it", async () => {
  // The loopback addresses stand for remote hosts here: the exemption for this machine is off.
  const t = await startGateway({ limits: { maxUnjoinedPerSource: 2, exemptLoopback: false } });
  const peers: Peer[] = [];
  const d1 = await nodeHandset(t.gw, "dev-1", await provision(t.gw, "dev-1"));
  const key2 = await provision(t.gw, "dev-2");
  try {
    await until(() => d1.h.status().registered, "dev-1 registered (from 127.0.0.1)");
    for (let i = 0; i < 3; i++) peers.push(await peer(t, "127.0.0.2"));
    await until(() => peers[2].closed, "the third unjoined connection from 127.0.0.2 refused");
    assert.deepEqual(peers.map((p) => p.closed), [false, false, true]);
    assert.equal(t.gw.links.stats.connectionsRefused, 1);
    assert.match(String(t.events("connection-refused")[0].reason), /2 connections from this source have not joined yet/);
    assert.equal(t.events("connection-refused")[0].count, 1);
    // 127.0.0.1 is another source: its device still gets in, and a joined connection frees its slot.
    const d2 = await nodeHandset(t.gw, "dev-2", key2);
    await until(() => d2.h.status().registered, "dev-2 registered");
    d2.close();
    await until(() => !t.gw.links.links.has("dev-2"), "dev-2's connection gone");
    // From 127.0.0.2, a join on one of the two held connections frees a slot for a new one.
    const key3 = await provision(t.gw, "dev-3");
    peers[0].socket.write(joinFrame("dev-3", key3, 1));
    await until(() => t.gw.links.links.has("dev-3"), "dev-3 joined from 127.0.0.2");
    const again = await peer(t, "127.0.0.2");
    peers.push(again);
    assert.deepEqual(t.gw.links.connectionCount, { all: 4, unjoined: 2 });
    assert.equal(again.closed, false);
  } finally {
    for (const p of peers) p.socket.destroy();
    d1.close();
    await stopGateway(t);
  }
});

test("a full unjoined pool closes its oldest connection to make room; only when every connection has joined is a newcomer refused", async () => {
  const t = await startGateway({ limits: { maxConnections: 3, maxUnjoined: 1 } });
  const peers: Peer[] = [];
  const d = await nodeHandset(t.gw, "dev-c", await provision(t.gw, "dev-c"));
  try {
    await until(() => d.h.status().registered, "registration");
    peers.push(await peer(t, "127.0.0.2"), await peer(t, "127.0.0.3"));
    await until(() => peers[0].closed, "the older unjoined connection evicted");
    assert.match(closedReasons(t).at(-1)!, /evicted, the oldest unjoined connection/);
    // The newcomer, a device, joins on the room it was given.
    peers[1].socket.write(joinFrame("dev-c2", await provision(t.gw, "dev-c2"), 1));
    await until(() => t.gw.links.links.has("dev-c2"), "the newcomer joined");
    // Two joined, and the gateway holds three: a third and a fourth connection, the fourth evicting
    // the third, then joining; then the gateway is full of joined connections.
    peers.push(await peer(t, "127.0.0.4"), await peer(t, "127.0.0.5"));
    await until(() => peers[2].closed, "the third evicted by the fourth");
    peers[3].socket.write(joinFrame("dev-c3", await provision(t.gw, "dev-c3"), 1));
    await until(() => t.gw.links.links.has("dev-c3"), "the fourth joined");
    peers.push(await peer(t, "127.0.0.6"));
    await until(() => peers[4].closed, "a newcomer refused: every connection has joined");
    assert.match(String(t.events("connection-refused")[0].reason), /all 3 connections have joined \(the limit is 3\)/);
    assert.deepEqual([t.gw.links.stats.unjoinedEvicted, t.gw.links.stats.connectionsRefused], [2, 1]);
    assert.deepEqual(t.gw.links.connectionCount, { all: 3, unjoined: 0 });
    assert.equal(d.h.status().state, "linked", "no joined connection was touched");
  } finally {
    for (const p of peers) p.socket.destroy();
    d.close();
    await stopGateway(t);
  }
});

test("connections from this machine are not held to the per-source limit unless asked", async () => {
  const t = await startGateway({ limits: { maxUnjoinedPerSource: 1 } });
  const peers: Peer[] = [];
  try {
    for (let i = 0; i < 3; i++) peers.push(await peer(t, "127.0.0.2"));
    await until(() => t.gw.links.connectionCount.unjoined === 3, "three unjoined connections from 127.0.0.2");
    assert.equal(t.gw.links.stats.connectionsRefused, 0);
  } finally {
    for (const p of peers) p.socket.destroy();
    await stopGateway(t);
  }
});

// ---- finding 4: bad input -------------------------------------------------------------------------

test("frames with bad CRCs count against the bad-frame budget and close the connection", async () => {
  const t = await startGateway({ limits: { maxBadFrames: 4 } });
  const p = await peer(t);
  try {
    // The resynchroniser's worst case: a header claiming a long payload every 3 bytes, never a valid
    // CRC, so every candidate is CRC'd and fails.
    const churn = new Uint8Array(3 * 400 + 300);
    for (let i = 0; i + 3 <= 1200; i += 3) churn.set([0xa5, 0x00, 0xf0], i);
    p.socket.write(churn);
    await until(() => p.closed, "the connection closed");
    assert.match(closedReasons(t).at(-1)!, /too many frames with a bad CRC/);
    assert.equal(t.gw.links.stats.crcFailures, 5, "closed on the fifth failure: no more CRCs after it");
  } finally {
    p.socket.destroy();
    await stopGateway(t);
  }
});

test("a length no JoinRequest can have is dropped before any CRC, on an unjoined connection", async () => {
  const t = await startGateway();
  const p = await peer(t);
  try {
    // A well-formed frame, valid CRC and all, of a length only a joined device may send.
    const big = frame(new Uint8Array(JOIN_REQUEST_MAX_PAYLOAD + 1));
    assert.equal(big.includes(0xa5, 1), false, "no other frame start inside it");
    p.socket.write(big);
    // Then a small malformed frame, whose rejection tells us the big one has been read.
    p.socket.write(frame(Uint8Array.from([0x00])));
    await until(() => t.events("malformed frame").length >= 1, "the small frame rejected");
    assert.equal(t.events("malformed frame").length, 1, "the long frame was never decoded");
    assert.equal(t.gw.links.stats.crcFailures, 0);
  } finally {
    p.socket.destroy();
    await stopGateway(t);
  }
});

// ---- finding 4: failed joins for one device id ----------------------------------------------------

test("failed joins for one id back a source off; the real device from its own address still joins at once", async () => {
  let ms = 1_000_000;
  const t = await startGateway({ limits: { joinFailuresBeforeBackoff: 2, joinBackoffBaseMs: 1000, joinBackoffMaxMs: 8000 }, nowMs: () => ms });
  const key = await provision(t.gw, "dev-v");
  const wrong = new Uint8Array(16).fill(9);
  const counter = { value: 0 };
  const peers: Peer[] = [];
  try {
    const attacker = await peer(t, "127.0.0.2");
    peers.push(attacker);
    attacker.socket.write(joinFrame("dev-v", wrong, 1));
    attacker.socket.write(joinFrame("dev-v", wrong, 2));
    await until(() => t.events("join-rejected").length === 2, "two failed joins");
    assert.deepEqual(t.events("join-rejected").map((r) => r.backoffMs), [undefined, 1000], "the second starts a 1 s backoff");
    // Now even a genuine request from that source is refused unchecked, and the connection closed.
    attacker.socket.write(joinFrame("dev-v", key, 3));
    await until(() => attacker.closed, "the backing-off source's connection closed");
    assert.equal(t.gw.links.stats.joinsThrottled, 1);
    assert.ok(isJoinReject(attacker.received.at(-1)!), "answered with the same bare JoinReject");
    assert.equal((await t.gw.store.getDevice("dev-v"))!.joinCounter, 0, "nothing checked, nothing stored");
    assert.equal(t.events("join-rejected").length, 2, "a refusal in backoff is counted, not logged");

    // The real device, from 127.0.0.1, is not held to the attacker's backoff.
    const d = await nodeHandset(t.gw, "dev-v", key, 600, counter);
    await until(() => d.h.status().registered, "the real device registered");
    d.close();

    // Past the backoff the source may try again.
    ms += 1000;
    const later = await peer(t, "127.0.0.2");
    peers.push(later);
    later.socket.write(joinFrame("dev-v", key, 10));
    await until(async () => (await t.gw.store.getDevice("dev-v"))!.joinCounter === 10, "a join after the backoff accepted");
  } finally {
    for (const p of peers) p.socket.destroy();
    await stopGateway(t);
  }
});

test("closes of unjoined connections and refusals are logged one record a second at most, with their count", async () => {
  let ms = 5_000_000;
  const t = await startGateway({ limits: { maxUnjoinedPerSource: 1, exemptLoopback: false }, nowMs: () => ms });
  const peers: Peer[] = [];
  try {
    const closeThree = async () => {
      for (let i = 0; i < 3; i++) {
        const p = await peer(t, "127.0.0.2");
        peers.push(p);
        p.socket.destroy();
        await until(() => t.gw.links.connectionCount.all === 0, "the gateway saw it close");
      }
    };
    await closeThree();
    assert.deepEqual(t.events("unjoined-closed").map((r) => [r.reason, r.count]), [["peer closed", 1]], "the first at once, the next two counted");
    ms += 1000;
    await closeThree();
    assert.deepEqual(t.events("unjoined-closed").map((r) => r.count), [1, 3], "a second later: that one, and the two before it");
    // Refusals likewise: over the per-source limit of 1, three newcomers refused, one record.
    const held = await peer(t, "127.0.0.2");
    peers.push(held);
    for (let i = 0; i < 3; i++) {
      const p = await peer(t, "127.0.0.2");
      peers.push(p);
      await until(() => p.closed, "a refusal");
    }
    assert.equal(t.gw.links.stats.connectionsRefused, 3);
    assert.deepEqual(t.events("connection-refused").map((r) => r.count), [1]);
    assert.equal(t.events("link-closed").length, 0, "no joined connection closed");
  } finally {
    for (const p of peers) p.socket.destroy();
    await stopGateway(t);
  }
});

test("the connection limit is held under the process's descriptor limit, and the log says so", async () => {
  const store = await openStore(tempDir("kp-fds-"));
  const lines: string[] = [];
  const deps = {
    store, log: new Logger((l) => lines.push(l)), crypto, cbor: gcbor, now: () => 0,
    onInner: () => {}, onSaData: () => {}, onLink: () => {},
  };
  try {
    // A process allowed 256 descriptors (the finding's): 300 connections would fail accept() for all.
    const small = new LinkServer({ ...deps, descriptorLimit: 256 });
    assert.equal(small.limits.maxConnections, 256 - RESERVED_DESCRIPTORS);
    const warning = JSON.parse(lines.at(-1)!);
    assert.equal(warning.event, "link-limits");
    assert.match(warning.reason, /at most 192 connections, not 4096: the process may open 256 descriptors/);
    // Room enough: the limit stays as asked, and nothing is said.
    const roomy = new LinkServer({ ...deps, descriptorLimit: 100_000 });
    assert.equal(roomy.limits.maxConnections, DEFAULT_LINK_LIMITS.maxConnections);
    assert.equal(lines.length, 1);
  } finally {
    await store.close();
  }
});

// ---- the flags ------------------------------------------------------------------------------------

test("the gateway's limit flags: seconds and counts, defaults when absent, a sentence when wrong", async () => {
  assert.deepEqual(linkLimitsFromFlags({}), {});
  assert.deepEqual(linkLimitsFromFlags({ "limit-loopback": true }), { exemptLoopback: false });
  assert.deepEqual(
    linkLimitsFromFlags({ "join-deadline": "3", "unjoined-idle": "2", "max-connections": "1000", "max-unjoined": "100", "max-unjoined-per-source": "4", "max-bad-frames": "8", "join-failures": "3", "join-backoff-max": "30" }),
    { joinDeadlineMs: 3000, unjoinedIdleMs: 2000, maxConnections: 1000, maxUnjoined: 100, maxUnjoinedPerSource: 4, maxBadFrames: 8, joinFailuresBeforeBackoff: 3, joinBackoffMaxMs: 30000 },
  );
  assert.throws(() => linkLimitsFromFlags({ "max-connections": "0" }), UsageError);
  assert.throws(() => linkLimitsFromFlags({ "join-deadline": "soon" }), /--join-deadline wants a positive whole number/);
});

test("sources: IPv4 as it is, IPv4-mapped IPv6 as IPv4, IPv6 by its /64", async () => {
  assert.equal(sourceKey("10.1.2.3"), "10.1.2.3");
  assert.equal(sourceKey("::ffff:10.1.2.3"), "10.1.2.3");
  assert.equal(sourceKey("2001:db8:0:1:aaaa::1"), "2001:db8:0:1::/64");
  assert.equal(sourceKey("2001:db8:0:1:bbbb:cccc:dddd:eeee"), "2001:db8:0:1::/64");
  assert.equal(sourceKey("::1"), "0:0:0:0::/64");
  assert.equal(sourceKey(undefined), "unknown");
});
