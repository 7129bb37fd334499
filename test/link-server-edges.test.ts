// The link server's edges, in process (issue 11, finding 9: the survivors of its mutation run,
// docs/MUTATION.md): each connection is a fake socket handed to the server's listener, and every
// timer is node:test's mock clock, so the deadlines, the flush and the join backoff are reached by
// ticking, never by waiting. What is checked is what a peer, the gateway and an operator see: the
// frames written, the socket ended or destroyed, onLink/onInner/onSaData, the stats monitoring
// publishes and the log records. Every assert.ok has a message: without one, a failing assert.ok
// reads its expression back from the tsx-compiled source, which hung a mutant's run here.
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { EventEmitter, once } from "node:events";
import net from "node:net";
import { randomBytes } from "node:crypto";
import * as gcbor from "../gateway/encoding/cbor.ts";
import { nodeCrypto } from "../gateway/crypto/symmetric.ts";
import { Connection, LinkServer, type LinkServerDeps } from "../gateway/link/server.ts";
import { Logger, type LogRecord } from "../gateway/log/logger.ts";
import { openStore } from "../gateway/gateway.ts";
import type { LinkLimits } from "../gateway/link/limits.ts";
import { SUITE_AES_CCM_16_64_128 as AES } from "../firmware/crypto/types.ts";
import { deriveLinkKeys, joinTag, JOIN_NONCE_BYTES } from "../firmware/proto/keys.ts";
import { MAX_SEQ, newLink, openMessage, sealMessage, type Link } from "../firmware/proto/link.ts";
import { decodeMessage, encodeMessage, Msg, type InnerMessage, type Message, type SaData } from "../firmware/proto/messages.ts";
import { tempDir } from "./support/harness.ts";
import { frame, payloadsOf } from "./support/session-rig.ts";

const crypto = nodeCrypto();
const PEER = "192.0.2.1";

/** What the server needs of a net.Socket, recording what it does to it. setTimeout behaves like
 *  net.Socket's: 0 disarms the idle timer, and only an armed timer can fire. */
class FakeSocket extends EventEmitter {
  written: Uint8Array[] = [];
  ended = false;
  destroyed = false;
  noDelay: boolean | undefined;
  idleMs = 0;
  constructor(readonly remoteAddress: string) {
    super();
  }
  setNoDelay(v = true): this { this.noDelay = v; return this; }
  setTimeout(ms: number, cb?: () => void): this {
    this.idleMs = ms;
    if (cb) this.once("timeout", cb);
    return this;
  }
  /** The idle timer running out, as net.Socket reports it. */
  idle(): void { if (this.idleMs > 0) this.emit("timeout"); }
  write(b: Uint8Array): boolean { this.written.push(new Uint8Array(b)); return true; }
  end(): this { this.ended = true; return this; }
  destroy(): this { this.destroyed = true; return this; }
  /** Bytes from the peer. */
  send(bytes: Uint8Array): void { this.emit("data", Buffer.from(bytes)); }
  /** The decoded messages written to the peer. */
  messages(): Message[] {
    return this.written.flatMap((w) => payloadsOf(w)).map((p) => decodeMessage(gcbor.decode(p)) as Message);
  }
}

interface Rig {
  srv: LinkServer;
  logs: LogRecord[];
  inner: [string, InnerMessage][];
  saData: [string, SaData, Uint8Array][];
  linkEvents: [string, boolean][];
  clock: { ms: number };
  store: LinkServerDeps["store"];
  connect(address?: string): FakeSocket;
  events(name: string): LogRecord[];
}

/** A server with a fresh registry, the mock clock for its timers and a clock of its own for the join
 *  throttle and the summarised logs. */
async function rig(t: TestContext, limits: Partial<LinkLimits> = {}): Promise<Rig> {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const store = await openStore(tempDir());
  const logs: LogRecord[] = [];
  const log = new Logger(() => {});
  log.subscribe((r) => logs.push(r));
  const r: Rig = {
    logs,
    inner: [],
    saData: [],
    linkEvents: [],
    clock: { ms: 1_000_000 },
    store,
    srv: undefined as unknown as LinkServer,
    connect(address = PEER) {
      const s = new FakeSocket(address);
      (r.srv as unknown as { server: net.Server }).server.emit("connection", s);
      return s;
    },
    events: (name) => logs.filter((l) => l.event === name),
  };
  r.srv = new LinkServer({
    store, log, crypto, cbor: gcbor, now: () => 0,
    onInner: (id, m) => void r.inner.push([id, m]),
    onSaData: (id, m, p) => void r.saData.push([id, m, p]),
    onLink: (id, up) => r.linkEvents.push([id, up]),
    limits, nowMs: () => r.clock.ms, descriptorLimit: 1 << 20,
  });
  t.after(() => store.close());
  return r;
}

async function provision(r: Rig, id: string): Promise<Uint8Array> {
  const key = new Uint8Array(randomBytes(16));
  await r.store.addDevice(id, key, "emulator", 0);
  return key;
}

/** Lets a join's registry reads finish: they answer within the current turn of the event loop
 *  (SQLite), so one turn later the join's answer has gone out. setImmediate is not mocked. */
const settle = () => new Promise<void>((resolve) => setImmediate(resolve));

interface JoinOpts { suite?: number; nonce?: Uint8Array; tagKey?: Uint8Array }

function joinFrame(id: string, key: Uint8Array, ctr: number, o: JoinOpts = {}): { bytes: Uint8Array; nonce: Uint8Array } {
  const suite = o.suite ?? AES;
  const nonce = o.nonce ?? new Uint8Array(randomBytes(JOIN_NONCE_BYTES));
  const tag = joinTag(crypto, gcbor, o.tagKey ?? key, id, ctr, nonce, suite);
  return { bytes: frame(gcbor.encode(encodeMessage({ t: Msg.JoinRequest, id, ctr, nonce, suite, tag }))), nonce };
}

/** Joins s as id and answers the device's end of the new link. */
async function join(s: FakeSocket, id: string, key: Uint8Array, ctr: number): Promise<Link> {
  const { bytes, nonce } = joinFrame(id, key, ctr);
  s.send(bytes);
  await settle();
  const accept = s.messages().at(-1)!;
  assert.equal(accept.t, Msg.JoinAccept, "the join was accepted");
  const nonceG = (accept as { nonce: Uint8Array }).nonce;
  return newLink(deriveLinkKeys(crypto, gcbor, key, id, ctr, nonce, nonceG, AES), true);
}

const sealed = (link: Link, m: InnerMessage) => frame(sealMessage(crypto, gcbor, link, m));
const isZero = (b: Uint8Array) => b.every((x) => x === 0);

// ---- frames by state ------------------------------------------------------------------------------

test("SaData from a linked device reaches onSaData byte for byte; on an unjoined connection it is dropped, logged and counted", async (t) => {
  const r = await rig(t);
  const payload = gcbor.encode(encodeMessage({ t: Msg.SaData, spi: 7, seq: 1, sealed: new Uint8Array([1, 2, 3]) }));
  const unjoined = r.connect();
  unjoined.send(frame(payload));
  assert.equal(r.saData.length, 0);
  assert.equal(r.srv.stats.framesDropped, 1);
  const drop = r.events("frame dropped");
  assert.equal(drop.length, 1);
  assert.equal(drop[0].reason, `message type ${Msg.SaData} not expected in state awaiting-join`);
  assert.equal(drop[0].peer, PEER);

  const s = r.connect("192.0.2.2");
  await join(s, "dev-a", await provision(r, "dev-a"), 1);
  s.send(frame(payload));
  assert.equal(r.saData.length, 1);
  assert.equal(r.saData[0][0], "dev-a");
  assert.equal(r.saData[0][1].spi, 7);
  assert.deepEqual(r.saData[0][2], payload);
  assert.equal(r.srv.stats.framesDropped, 1, "the linked SaData was not dropped");
});

test("a Link frame on an unjoined connection is dropped as unexpected, never opened", async (t) => {
  const r = await rig(t);
  const s = r.connect();
  s.send(frame(gcbor.encode(encodeMessage({ t: Msg.Link, seq: 1, sealed: new Uint8Array(24) }))));
  assert.equal(r.srv.stats.framesDropped, 1);
  assert.equal(r.events("frame dropped")[0].reason, `message type ${Msg.Link} not expected in state awaiting-join`);
  assert.equal(s.destroyed, false);
});

test("an outer message a device never sends, on a linked connection, is dropped as unexpected, not opened as a Link frame", async (t) => {
  const r = await rig(t);
  const s = r.connect();
  await join(s, "dev-u", await provision(r, "dev-u"), 1);
  s.send(frame(gcbor.encode(encodeMessage({ t: Msg.JoinReject }))));
  assert.equal(r.srv.stats.framesDropped, 1);
  const drop = r.events("frame dropped")[0];
  assert.equal(drop.reason, `message type ${Msg.JoinReject} not expected in state linked`);
  assert.equal(drop.device, "dev-u");
  assert.equal(r.inner.length, 0);
});

test("once linked, an authentic inner message longer than any JoinRequest reaches onInner and is counted", async (t) => {
  const r = await rig(t);
  const s = r.connect();
  const dev = await join(s, "dev-b", await provision(r, "dev-b"), 1);
  const cert = new Uint8Array(randomBytes(1000));
  s.send(sealed(dev, { t: Msg.CertAnswer, rid: 5, cert }));
  assert.equal(r.inner.length, 1);
  assert.equal(r.inner[0][0], "dev-b");
  assert.deepEqual((r.inner[0][1] as { cert: Uint8Array }).cert, cert);
  assert.equal(r.srv.stats.framesIn, 1);
  assert.equal(r.srv.stats.framesDropped, 0);
});

test("malformed frames count against the budget: the one past it closes the connection, which is logged", async (t) => {
  const r = await rig(t, { maxBadFrames: 2 });
  const s = r.connect();
  const garbage = frame(new Uint8Array([0xff]));
  s.send(garbage);
  s.send(garbage);
  assert.equal(s.destroyed, false, "at the budget, still open");
  assert.equal(r.srv.stats.framesDropped, 2);
  s.send(garbage);
  assert.equal(s.destroyed, true);
  assert.equal(r.srv.stats.framesDropped, 3);
  const malformed = r.events("malformed frame");
  assert.equal(malformed.length, 3);
  assert.equal(malformed[0].peer, PEER);
  assert.equal(typeof malformed[0].reason, "string", "the decoder's reason");
  const closed = r.events("unjoined-closed");
  assert.equal(closed.length, 1);
  assert.equal(closed[0].reason, "too many bad frames");
  assert.equal(closed[0].peer, PEER);
  assert.equal(closed[0].count, 1);
  assert.deepEqual(r.linkEvents, [], "a connection that never joined is no link going down");
});

// ---- joins ----------------------------------------------------------------------------------------

test("a join is accepted only after its counter is stored; stats, onLink and the log say so, with no key in it", async (t) => {
  const r = await rig(t);
  const key = await provision(r, "dev-c");
  const s = r.connect();
  const writtenAtAdvance: number[] = [];
  const advance = r.store.advanceJoinCounter.bind(r.store);
  r.store.advanceJoinCounter = (id, ctr) => {
    writtenAtAdvance.push(s.written.length);
    return advance(id, ctr);
  };
  await join(s, "dev-c", key, 3);
  assert.deepEqual(writtenAtAdvance, [0], "nothing went out before the counter was stored");
  assert.equal((await r.store.getDevice("dev-c"))!.joinCounter, 3);
  assert.equal(r.srv.stats.joins, 1);
  assert.deepEqual(r.linkEvents, [["dev-c", true]]);
  assert.equal(s.idleMs, 0, "the unjoined idle timer is disarmed");
  assert.deepEqual(r.srv.connectionCount, { all: 1, unjoined: 0 });
  const joined = r.events("joined");
  assert.equal(joined.length, 1);
  assert.equal(joined[0].device, "dev-c");
  assert.equal(joined[0].counter, 3);
  const hex = Buffer.from(key).toString("hex");
  assert.ok(!JSON.stringify(r.logs).includes(hex), "no root key in the log");
});

/** Sends one join and returns the refusal's log record, having checked what every refusal shares:
 *  a bare JoinReject, the count, no link, the stored counter unchanged, the connection still open. */
async function refused(r: Rig, s: FakeSocket, bytes: Uint8Array, id: string): Promise<LogRecord> {
  const rejectsBefore = r.srv.stats.joinRejects;
  const counterBefore = (await r.store.getDevice(id))?.joinCounter;
  s.send(bytes);
  await settle();
  assert.equal(s.messages().at(-1)!.t, Msg.JoinReject);
  assert.equal(r.srv.stats.joinRejects, rejectsBefore + 1);
  assert.equal((await r.store.getDevice(id))?.joinCounter, counterBefore);
  assert.equal(r.srv.links.has(id), false);
  assert.deepEqual(r.linkEvents, []);
  const rec = r.events("join-rejected").at(-1)!;
  assert.equal(rec.device, id);
  assert.equal(rec.peer, PEER);
  return rec;
}

test("each refused join is logged with its own reason, whatever the request gets right", async (t) => {
  const r = await rig(t);
  const key = await provision(r, "dev-d");
  const s = r.connect();
  assert.equal((await refused(r, s, joinFrame("dev-d", key, 1, { suite: 99 }).bytes, "dev-d")).reason, "unsupported link suite 99");
  assert.equal((await refused(r, s, joinFrame("dev-d", key, 1, { nonce: new Uint8Array(JOIN_NONCE_BYTES - 1) }).bytes, "dev-d")).reason, "join nonce has the wrong length");
  assert.equal((await refused(r, s, joinFrame("nobody", key, 1).bytes, "nobody")).reason, "unknown device");
  // Even a tag made with the decoy key, against which unknown ids are checked, is refused.
  assert.equal((await refused(r, s, joinFrame("nobody", key, 1, { tagKey: r.srv.decoyRootKey }).bytes, "nobody")).reason, "unknown device");
  assert.equal((await refused(r, s, joinFrame("dev-d", new Uint8Array(16), 1).bytes, "dev-d")).reason, "join MAC does not verify (wrong root key or altered request)");
  assert.equal(r.srv.stats.joinRejects, 5);
  assert.equal(s.destroyed, false, "within the bad-frame budget");

  const key2 = await provision(r, "dev-e");
  await r.store.revokeDevice("dev-e", 0, "test");
  assert.equal((await refused(r, s, joinFrame("dev-e", key2, 1).bytes, "dev-e")).reason, "device revoked");
});

test("a replayed join counter is refused, and so is a join whose counter the registry will not store", async (t) => {
  const r = await rig(t);
  const key = await provision(r, "dev-f");
  await r.store.advanceJoinCounter("dev-f", 4);
  const s = r.connect();
  assert.equal((await refused(r, s, joinFrame("dev-f", key, 4).bytes, "dev-f")).reason, "replayed join: counter 4 is not above 4");
  // Another gateway process took counter 5 between the read and the write.
  r.store.advanceJoinCounter = async () => false;
  assert.equal((await refused(r, s, joinFrame("dev-f", key, 5).bytes, "dev-f")).reason, "replayed join: counter 5 already used");
});

test("rejected joins past the bad-frame budget close the connection, with that reason", async (t) => {
  const r = await rig(t, { maxBadFrames: 1 });
  const s = r.connect();
  s.send(joinFrame("nobody", new Uint8Array(16), 1).bytes);
  await settle();
  assert.equal(s.destroyed, false);
  s.send(joinFrame("nobody", new Uint8Array(16), 2).bytes);
  await settle();
  assert.equal(s.destroyed, true);
  assert.equal(r.events("unjoined-closed")[0].reason, "too many rejected joins");
});

test("a throttled join gets its JoinReject flushed before the close, and is counted twice", async (t) => {
  const r = await rig(t, { joinFailuresBeforeBackoff: 1, joinBackoffBaseMs: 1000, joinBackoffMaxMs: 4000 });
  const key = await provision(r, "dev-g");
  const first = r.connect();
  first.send(joinFrame("dev-g", new Uint8Array(16), 1).bytes);
  await settle();
  assert.equal(r.events("join-rejected")[0].backoffMs, 1000);
  const second = r.connect();
  second.send(joinFrame("dev-g", key, 1).bytes);
  await settle();
  assert.equal(second.messages().at(-1)!.t, Msg.JoinReject);
  assert.equal(r.srv.stats.joinsThrottled, 1);
  assert.equal(r.srv.stats.joinRejects, 2);
  assert.equal(r.events("join-rejected").length, 1, "a throttled join is not logged one by one");
  assert.equal((await r.store.getDevice("dev-g"))!.joinCounter, 0);
  assert.equal(second.ended, true, "ended, so the JoinReject goes out");
  assert.equal(second.destroyed, false);
  assert.equal(r.events("unjoined-closed")[0].reason, "join attempts from this source for this device are backing off");
  t.mock.timers.tick(2000);
  assert.equal(second.destroyed, true, "and destroyed in the end");
  // Past the wait the genuine device joins.
  r.clock.ms += 1000;
  await join(r.connect(), "dev-g", key, 1);
});

test("a join as another device on a linked connection: counted, logged with both names, closed, the first link reported down", async (t) => {
  const r = await rig(t);
  const s = r.connect();
  await join(s, "dev-h", await provision(r, "dev-h"), 1);
  const keyI = await provision(r, "dev-i");
  s.send(joinFrame("dev-i", keyI, 1).bytes);
  await settle();
  assert.equal(r.srv.stats.joinRejects, 1);
  const rec = r.events("join-rejected").at(-1)!;
  assert.equal(rec.device, "dev-h");
  assert.equal(rec.claimed, "dev-i");
  assert.equal(rec.peer, PEER);
  assert.equal(rec.reason, "a join as another device on a linked connection");
  assert.equal(s.destroyed, true);
  assert.deepEqual(r.linkEvents, [["dev-h", true], ["dev-h", false]]);
  assert.equal(r.events("link-closed").at(-1)!.reason, "a second identity on one connection");
  assert.equal((await r.store.getDevice("dev-i"))!.joinCounter, 0);
});

test("a device joining again on its own connection stays linked there; its old link keys are wiped", async (t) => {
  const r = await rig(t);
  const key = await provision(r, "dev-j");
  const s = r.connect();
  await join(s, "dev-j", key, 1);
  const conn = r.srv.links.get("dev-j")!;
  const oldLink = (conn.state as { link: Link }).link;
  await join(s, "dev-j", key, 2);
  assert.equal(s.destroyed, false);
  assert.equal(r.srv.links.get("dev-j"), conn);
  assert.ok(isZero(oldLink.keys_.up) && isZero(oldLink.keys_.down), "the first link's keys are wiped");
  assert.ok(!isZero((conn.state as { link: Link }).link.keys_.up), "the new link has keys");
  assert.equal(r.srv.stats.joins, 2);
  assert.deepEqual(r.linkEvents, [["dev-j", true], ["dev-j", true]]);
  assert.deepEqual(r.events("link-closed"), []);
});

test("a newer join on another connection replaces the link: the old connection closes, logged, the device never reported down", async (t) => {
  const r = await rig(t);
  const key = await provision(r, "dev-k");
  const a = r.connect();
  await join(a, "dev-k", key, 1);
  const oldLink = (r.srv.links.get("dev-k")!.state as { link: Link }).link;
  const b = r.connect("192.0.2.9");
  const dev = await join(b, "dev-k", key, 2);
  assert.equal(a.destroyed, true);
  assert.equal(a.ended, false);
  assert.ok(isZero(oldLink.keys_.up) && isZero(oldLink.keys_.down), "the replaced link's keys are wiped");
  const closed = r.events("link-closed");
  assert.equal(closed.length, 1);
  assert.equal(closed[0].device, "dev-k");
  assert.equal(closed[0].reason, "replaced by a newer join");
  assert.deepEqual(r.linkEvents, [["dev-k", true], ["dev-k", true]]);
  // The newer connection carries the link.
  assert.equal(r.srv.sendTo("dev-k", { t: Msg.DeregisterOk, rid: 9 }), true);
  const m = openMessage(crypto, gcbor, dev, b.messages().at(-1) as Parameters<typeof openMessage>[3]);
  assert.deepEqual(m, { t: Msg.DeregisterOk, rid: 9 });
  assert.deepEqual(r.srv.connectionCount, { all: 1, unjoined: 0 });
});

// ---- closing --------------------------------------------------------------------------------------

test("a linked connection closed by its peer: destroyed, keys wiped, reported down, logged as link-closed", async (t) => {
  const r = await rig(t);
  const s = r.connect();
  await join(s, "dev-l", await provision(r, "dev-l"), 1);
  const link = (r.srv.links.get("dev-l")!.state as { link: Link }).link;
  s.emit("close");
  assert.equal(s.destroyed, true);
  assert.equal(s.ended, false);
  assert.ok(isZero(link.keys_.up) && isZero(link.keys_.down), "the closed link's keys are wiped");
  assert.deepEqual(r.linkEvents, [["dev-l", true], ["dev-l", false]]);
  const closed = r.events("link-closed");
  assert.equal(closed.length, 1);
  assert.equal(closed[0].device, "dev-l");
  assert.equal(closed[0].reason, "peer closed");
  assert.deepEqual(r.events("unjoined-closed"), []);
  assert.equal(r.srv.links.size, 0);
  assert.equal(r.srv.sendTo("dev-l", { t: Msg.DeregisterOk, rid: 1 }), false);
});

test("an unjoined connection closed by its peer is summarised, and no link goes down", async (t) => {
  const r = await rig(t);
  const s = r.connect();
  s.emit("close");
  assert.equal(s.destroyed, true);
  assert.deepEqual(r.linkEvents, []);
  assert.deepEqual(r.events("link-closed"), []);
  const rec = r.events("unjoined-closed")[0];
  assert.equal(rec.reason, "peer closed");
  assert.equal(rec.peer, PEER);
  assert.deepEqual(r.srv.connectionCount, { all: 0, unjoined: 0 });
});

test("unjoined deadlines on the mock clock: the join deadline at its edge, the idle timer, neither once joined", async (t) => {
  const r = await rig(t, { joinDeadlineMs: 300, unjoinedIdleMs: 200 });
  const slow = r.connect();
  assert.equal(slow.idleMs, 200);
  t.mock.timers.tick(299);
  assert.equal(slow.destroyed, false);
  t.mock.timers.tick(1);
  assert.equal(slow.destroyed, true);
  assert.equal(r.events("unjoined-closed")[0].reason, "not joined within 300 ms");
  const quiet = r.connect();
  quiet.idle();
  assert.equal(quiet.destroyed, true);
  assert.equal(r.srv.stats.unjoinedTimedOut, 2);
  const s = r.connect();
  await join(s, "dev-m", await provision(r, "dev-m"), 1);
  s.idle();
  t.mock.timers.tick(1000);
  assert.equal(s.destroyed, false);
  assert.equal(r.srv.stats.unjoinedTimedOut, 2);
});

test("disconnect ends a live link after what was written, destroys it 2 s later, and says whether there was one", async (t) => {
  const r = await rig(t);
  assert.equal(r.srv.disconnect("nobody", "revoked"), false);
  const s = r.connect();
  await join(s, "dev-n", await provision(r, "dev-n"), 1);
  assert.equal(r.srv.disconnect("dev-n", "device revoked"), true);
  assert.equal(s.ended, true);
  assert.equal(s.destroyed, false);
  assert.deepEqual(r.linkEvents, [["dev-n", true], ["dev-n", false]]);
  assert.equal(r.events("link-closed")[0].reason, "device revoked");
  t.mock.timers.tick(1999);
  assert.equal(s.destroyed, false);
  t.mock.timers.tick(1);
  assert.equal(s.destroyed, true);
  assert.equal(r.srv.disconnect("dev-n", "again"), false);
});

test("the gateway stopping closes every connection with that reason", async (t) => {
  const r = await rig(t);
  const s = r.connect();
  await join(s, "dev-o", await provision(r, "dev-o"), 1);
  const u = r.connect();
  await r.srv.close();
  assert.equal(s.destroyed && u.destroyed, true);
  assert.equal(r.events("link-closed")[0].reason, "gateway stopping");
  assert.deepEqual(r.srv.connectionCount, { all: 0, unjoined: 0 });
});

// ---- sending --------------------------------------------------------------------------------------

test("sendTo and relayTo: false without a live link; with one, the message sealed, the SA payload framed byte for byte", async (t) => {
  const r = await rig(t);
  assert.equal(r.srv.sendTo("nobody", { t: Msg.DeregisterOk, rid: 1 }), false);
  assert.equal(r.srv.relayTo("nobody", new Uint8Array([1])), false);
  const s = r.connect();
  const dev = await join(s, "dev-p", await provision(r, "dev-p"), 1);
  assert.equal(r.srv.sendTo("dev-p", { t: Msg.DeregisterOk, rid: 2 }), true);
  assert.deepEqual(openMessage(crypto, gcbor, dev, s.messages().at(-1) as Parameters<typeof openMessage>[3]), { t: Msg.DeregisterOk, rid: 2 });
  const payload = gcbor.encode(encodeMessage({ t: Msg.SaData, spi: 3, seq: 9, sealed: new Uint8Array([4, 5]) }));
  const before = s.written.length;
  assert.equal(r.srv.relayTo("dev-p", payload), true);
  assert.equal(s.written.length, before + 1);
  assert.deepEqual(s.written.at(-1), frame(payload));
});

test("nothing is written on a closed connection, and nothing sealed on an unjoined one", async (t) => {
  const r = await rig(t);
  const s = r.connect();
  await join(s, "dev-q", await provision(r, "dev-q"), 1);
  const conn = r.srv.links.get("dev-q")!;
  conn.close("test");
  const n = s.written.length;
  conn.send({ t: Msg.JoinReject });
  conn.sendInner({ t: Msg.DeregisterOk, rid: 1 });
  assert.equal(s.written.length, n);

  const raw = new FakeSocket(PEER);
  const unjoined = new Connection(r.srv, raw as unknown as net.Socket, PEER);
  unjoined.sendInner({ t: Msg.DeregisterOk, rid: 1 });
  assert.deepEqual(raw.written, []);
  assert.equal(raw.destroyed, false, "an unjoined connection is not closed by a message it cannot carry");
  unjoined.close("test");
});

test("a link whose sequence space is spent is closed when something must be sent on it", async (t) => {
  const r = await rig(t);
  const s = r.connect();
  await join(s, "dev-r", await provision(r, "dev-r"), 1);
  (r.srv.links.get("dev-r")!.state as { link: Link }).link.txSeq_ = MAX_SEQ;
  const n = s.written.length;
  assert.equal(r.srv.sendTo("dev-r", { t: Msg.DeregisterOk, rid: 1 }), true);
  assert.equal(s.written.length, n);
  assert.equal(s.destroyed, true);
  assert.equal(r.events("link-closed")[0].reason, "link: sequence exhausted");
  assert.deepEqual(r.linkEvents, [["dev-r", true], ["dev-r", false]]);
});

// ---- accepting ------------------------------------------------------------------------------------

test("the per-source count follows each connection out, joined or not: the limit holds exactly", async (t) => {
  const r = await rig(t, { maxUnjoinedPerSource: 2 });
  const key = await provision(r, "dev-s");
  const a = r.connect();
  const b = r.connect();
  await join(a, "dev-s", key, 1);
  a.emit("close");
  const c = r.connect();
  assert.equal(c.destroyed, false, "b and c: two unjoined from this source");
  const d = r.connect();
  assert.equal(d.destroyed, true, "a third is refused");
  assert.equal(r.srv.stats.connectionsRefused, 1);
  assert.deepEqual(r.srv.connectionCount, { all: 2, unjoined: 2 });
  b.emit("close");
  const e = r.connect();
  assert.equal(e.destroyed, false);
  assert.equal(r.connect().destroyed, true, "c and e hold the source's two places");
  assert.equal(r.srv.stats.connectionsRefused, 2);
});

test("sockets: no Nagle delay on accepted ones; a late error on an accepted or a refused one is absorbed", async (t) => {
  const r = await rig(t, { maxUnjoinedPerSource: 1, exemptLoopback: false });
  const s = r.connect();
  assert.equal(s.noDelay, true);
  const refusedSock = r.connect();
  assert.equal(refusedSock.destroyed, true);
  assert.doesNotThrow(() => refusedSock.emit("error", new Error("ECONNRESET")));
  assert.doesNotThrow(() => s.emit("error", new Error("ECONNRESET")));
  assert.equal(r.events("connection-refused")[0].reason, "1 connections from this source have not joined yet (the limit)");
});

test("listening: false before listen and after close; a port in use makes listen reject", async (t) => {
  const store = await openStore(tempDir());
  t.after(() => store.close());
  const deps = { store, log: new Logger(() => {}), crypto, cbor: gcbor, now: () => 0, onInner: () => {}, onSaData: () => {}, onLink: () => {}, descriptorLimit: 1 << 20 };
  const a = new LinkServer(deps);
  const b = new LinkServer(deps);
  assert.equal(a.listening, false);
  const { port } = await a.listen("127.0.0.1", 0);
  t.after(() => (a.listening ? a.close() : undefined));
  assert.equal(a.listening, true);
  // Waited for by the server's error event, so that a listen() whose promise never settles fails
  // here rather than hanging the test.
  let outcome: unknown = "pending";
  b.listen("127.0.0.1", port).then((v) => { outcome = v; }, (e: Error) => { outcome = e; });
  await once((b as unknown as { server: net.Server }).server, "error");
  await new Promise((r) => setImmediate(r));
  assert.match(String(outcome), /EADDRINUSE/);
  await a.close();
  assert.equal(a.listening, false);
});
