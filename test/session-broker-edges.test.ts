// The session broker's edges, in process (issue 11, finding 9: the survivors of its mutation run,
// docs/MUTATION.md). The broker runs on fakes of what the gateway gives it: a registry of
// registrations the test sets, a policy that allows all but the pairs a test denies, links that are
// up or down, a random source whose 4-byte draws (the SPIs) a test may choose, and node:test's mock
// clock for every timer (callee answer, key confirmation, rekey point, lifetime, overlap, grace).
// The registry and the policy answer asynchronously, as the real ones do: a request that reads them
// is awaited (the broker's handle returns its promise), and what a timer starts is waited for with
// settle().
// What is checked is what a device, the gateway and an operator see: the messages sent to each
// device, the frames relayed, the stats monitoring publishes, the log records and the audit trail.
// Every assert.ok has a message: without one, a failing assert.ok reads its expression back from the
// tsx-compiled source, which can take minutes (docs/MUTATION.md).
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import * as gcbor from "../gateway/encoding/cbor.ts";
import { nodeCrypto } from "../gateway/crypto/symmetric.ts";
import { Logger, type LogRecord } from "../gateway/log/logger.ts";
import { spiText } from "../gateway/log/protocol-names.ts";
import { SessionBroker, type SessionDeps, type SessionSettings } from "../gateway/sessions/session-broker.ts";
import { DEFAULT_MATCHING } from "../gateway/sessions/matching.ts";
import type { Policy } from "../gateway/registry/policy.ts";
import type { Store } from "../gateway/registry/store.ts";
import type { LiveSession, SessionSharing } from "../gateway/sessions/shared.ts";
import { SUITE_AES_CCM_16_64_128 as AES, SUITE_XSALSA20_POLY1305 as XSALSA } from "../firmware/crypto/types.ts";
import { saConfirmTag } from "../firmware/proto/keys.ts";
import { CloseReason, ErrorCode, Msg, type InnerMessage, type SaInstall } from "../firmware/proto/messages.ts";

const APP = "chat";
const GATEWAY = "gw1";
const DEVICES = ["dev-a", "dev-b", "dev-c", "dev-d"];

/** Short times, so that the edges are easy to name: rekey point at 80 s, end at 105 s. */
const SETTINGS: SessionSettings = { lifetime: 100, limit: 50, answerTimeoutMs: 1000, graceMs: 5000, overlapMs: 2000, matching: DEFAULT_MATCHING };
const REKEY_MS = 80_000;
const END_MS = 105_000;

/** A message the broker sent, read field by field. */
type Sent = { to: string; m: InnerMessage & Record<string, unknown>; seed?: Uint8Array };

interface RigOptions {
  spiTaken?: (spi: number) => boolean;
  onEndAll?: SessionDeps["onEndAll"];
  /** Registry and policy lookups wait in Rig.held until the test answers them. */
  holdLookups?: boolean;
  /** One instance among several (gateway/sessions/shared.ts): the domain's table of SAs. */
  sharing?: SessionSharing;
  /** 4-byte draws queued before the broker is made (its first request id's). */
  firstDraws?: number[];
}

interface Rig {
  broker: SessionBroker;
  clock: { s: number };
  regs: Map<string, { expiresAt: number; suites: number[][] }>;
  linked: Set<string>;
  /** "caller>callee" pairs the policy refuses. */
  denied: Set<string>;
  /** SPIs the next 4-byte draws give, in order (then real random bytes). */
  spiDraws: number[];
  sent: Sent[];
  relayed: [string, Uint8Array][];
  logs: LogRecord[];
  audits: { device: string | null; event: string; detail: string }[];
  /** The events of the audit records written with their own synchronous commit (Store.audit); the
   *  others were batched (Store.auditBatched). */
  durable: string[];
  /** With holdLookups: the lookups asked for and not answered yet, each with its answer. */
  held: { what: string; answer(): void }[];
  events(name: string): LogRecord[];
  to(dev: string, t: Msg): Sent["m"][];
  /** A message from dev, once the broker has done with it (it may wait for the registry). */
  handle(dev: string, m: InnerMessage): Promise<void>;
  /** Once what timers started (the gateway's own rekey) has had its registry answers and acted on
   *  them: the fakes answer at once, so one turn of the event loop runs every continuation. */
  settle(): Promise<void>;
  /** dev asks for a session with peer (the callee's name; callee: its id when the name is not);
   *  answers the Incoming the callee got, if any. */
  call(dev: string, peer: string, rid?: number, callee?: string): Promise<Sent["m"] | undefined>;
  answer(dev: string, rid: number, accept: boolean): void;
  tag(spi: number, role: number): Uint8Array;
  confirm(dev: string, spi: number, tag?: Uint8Array): void;
  /** caller calls callee, the callee accepts: the SPI given out (not confirmed yet). */
  install(caller: string, callee: string): Promise<number>;
  /** install, and both devices confirm: the SPI of an SA that is up. */
  connect(caller: string, callee: string): Promise<number>;
  frame(dev: string, spi: number, payload?: Uint8Array): void;
}

const be32 = (n: number) => new Uint8Array([n >>> 24, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff]);

function rig(t: TestContext, o: RigOptions = {}): Rig {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const clock = { s: 1_000_000 };
  const regs = new Map(DEVICES.map((id) => [id, { expiresAt: clock.s + 3600, suites: [[AES, 1]] }]));
  const linked = new Set(DEVICES);
  const denied = new Set<string>();
  const spiDraws: number[] = [...(o.firstDraws ?? [])];
  const sent: Sent[] = [];
  const relayed: [string, Uint8Array][] = [];
  const logs: LogRecord[] = [];
  const audits: Rig["audits"] = [];
  const durable: string[] = [];
  const held: Rig["held"] = [];
  /** A lookup's answer as the registry gives it: later (a promise), or when the test says (held). */
  const lookup = <T>(what: string, value: () => T): Promise<T> => {
    if (!o.holdLookups) return Promise.resolve(value());
    return new Promise((resolve) => held.push({ what, answer: () => resolve(value()) }));
  };
  const inner = nodeCrypto();
  const crypto = { ...inner, random: (n: number) => (n === 4 && spiDraws.length ? be32(spiDraws.shift()!) : inner.random(n)) };
  const log = new Logger(() => {});
  log.subscribe((r) => logs.push(r));
  const deps: SessionDeps = {
    store: {
      getRegistration: (id: string) => lookup(`registration of ${id}`, () => regs.get(id)),
      audit: async (_ts: number, device: string | null, event: string, detail: string) => {
        durable.push(event);
        audits.push({ device, event, detail });
      },
      auditBatched: (_ts: number, device: string | null, event: string, detail: string) => audits.push({ device, event, detail }),
    } as unknown as Store,
    policy: {
      permits: (caller: string, callee: string) => lookup(`policy ${caller}>${callee}`, () => !denied.has(`${caller}>${callee}`)),
    } as unknown as Policy,
    log,
    crypto,
    cbor: gcbor,
    now: () => clock.s,
    send: (to, m) => {
      // The seed as it was sent (the gateway wipes its own copy later, which is the same array).
      sent.push({ to, m: m as Sent["m"], seed: m.t === Msg.SaInstall ? m.seed.slice() : undefined });
      return linked.has(to);
    },
    relay: (to, payload) => {
      if (!linked.has(to)) return false;
      relayed.push([to, payload]);
      return true;
    },
    isLinked: (id) => linked.has(id),
    settings: SETTINGS,
    gatewayId: GATEWAY,
    ...(o.spiTaken ? { spiTaken: o.spiTaken } : {}),
    ...(o.onEndAll ? { onEndAll: o.onEndAll } : {}),
    ...(o.sharing ? { sharing: o.sharing } : {}),
  };
  const broker = new SessionBroker(deps);
  t.after(() => broker.close());

  const to = (dev: string, type: Msg) => sent.filter((s) => s.to === dev && s.m.t === type).map((s) => s.m);
  const r: Rig = {
    broker, clock, regs, linked, denied, spiDraws, sent, relayed, logs, audits, durable, held,
    events: (name) => logs.filter((l) => l.event === name),
    to,
    handle: async (dev, m) => {
      await broker.handle(dev, m);
    },
    settle: () => new Promise((resolve) => setImmediate(resolve)),
    call: async (dev, peer, rid = 7, callee = peer) => {
      const before = to(callee, Msg.Incoming).length;
      await r.handle(dev, { t: Msg.ConnectRequest, rid, peer, app: APP, from: dev });
      return to(callee, Msg.Incoming)[before];
    },
    answer: (dev, rid, accept) => void broker.handle(dev, { t: Msg.Answer, rid, accept }),
    tag: (spi, role) => {
      const install = [...sent].reverse().find((s) => s.m.t === Msg.SaInstall && s.m.spi === spi);
      assert.ok(install?.seed, `an SaInstall for ${spiText(spi)}`);
      return saConfirmTag(crypto, gcbor, install.seed, spi, install.m.suite as number, role);
    },
    confirm: (dev, spi, tag) => {
      const install = [...sent].reverse().find((s) => s.to === dev && s.m.t === Msg.SaInstall && s.m.spi === spi);
      void broker.handle(dev, { t: Msg.SaConfirm, rid: 0, spi, tag: tag ?? r.tag(spi, install ? (install.m.role as number) : 0) });
    },
    install: async (caller, callee) => {
      const incoming = await r.call(caller, callee);
      assert.ok(incoming, `${callee} is asked`);
      r.answer(callee, incoming.rid as number, true);
      await r.settle(); // with several instances the SPI is claimed first (RigOptions.sharing)
      const installs = to(caller, Msg.SaInstall);
      return installs[installs.length - 1].spi as number;
    },
    connect: async (caller, callee) => {
      const spi = await r.install(caller, callee);
      r.confirm(caller, spi);
      r.confirm(callee, spi);
      assert.equal(to(caller, Msg.Connected).at(-1)?.spi, spi, "the SA is up");
      return spi;
    },
    frame: (dev, spi, payload = new Uint8Array([1, 2, 3])) => broker.relay(dev, { t: Msg.SaData, spi, seq: 1, sealed: payload }, payload),
  };
  return r;
}

const fields = (rec: Record<string, unknown> | undefined, ...keys: string[]) => Object.fromEntries(keys.map((k) => [k, rec?.[k]]));

// ---- requests ---------------------------------------------------------------------------------------

test("a peer named name@<this gateway> is this gateway's device; a name in another domain is not found", async (t) => {
  const r = rig(t);
  assert.ok(await r.call("dev-a", `dev-b@${GATEWAY}`, 1, "dev-b"), "dev-b@gw1 reaches dev-b");
  assert.equal(await r.call("dev-a", "dev-b@elsewhere", 2, "dev-b"), undefined, "dev-b@elsewhere is not dev-b");
  assert.deepEqual(r.to("dev-a", Msg.Error), [{ t: Msg.Error, rid: 2, code: ErrorCode.NotFound }]);
  assert.equal(r.events("session-not-found")[0]?.reason, "no such registered device");
  assert.equal(r.events("session-not-found")[0]?.peer, "dev-b@elsewhere");
});

test("a message that is not a session request is logged with its type, and nothing is sent", async (t) => {
  const r = rig(t);
  await r.handle("dev-a", { t: Msg.DeregisterRequest, rid: 3 });
  assert.deepEqual(fields(r.events("session-message-rejected")[0], "level", "device", "reason"), { level: "warn", device: "dev-a", reason: "message type 18 is not a session request" });
  assert.equal(r.sent.length, 0);
});

test("a caller claiming another identity is refused as spoofed, counted and audited", async (t) => {
  const r = rig(t);
  await r.handle("dev-a", { t: Msg.ConnectRequest, rid: 4, peer: "dev-b", app: APP, from: "dev-c" });
  assert.deepEqual(r.to("dev-a", Msg.Error), [{ t: Msg.Error, rid: 4, code: ErrorCode.Spoofed }]);
  assert.equal(r.to("dev-b", Msg.Incoming).length, 0, "the callee is not contacted");
  assert.deepEqual(r.audits, [{ device: "dev-a", event: "spoofing", detail: "claimed dev-c" }]);
  assert.deepEqual(fields(r.events("session-spoofing")[0], "device", "claimed", "peer", "app"), { device: "dev-a", claimed: "dev-c", peer: "dev-b", app: APP });
  assert.equal(r.broker.stats.requested, 1);
  assert.equal(r.broker.stats.refused, 1);
});

test("a caller whose registration is missing, or ends now, is not registered; one second more is", async (t) => {
  const r = rig(t);
  r.regs.get("dev-a")!.expiresAt = r.clock.s; // the instant it ends: no longer registered
  assert.equal(await r.call("dev-a", "dev-b", 5), undefined, "an expired caller reaches nobody");
  r.regs.delete("dev-c");
  assert.equal(await r.call("dev-c", "dev-b", 6), undefined, "an unregistered caller reaches nobody");
  assert.deepEqual(r.to("dev-a", Msg.Error), [{ t: Msg.Error, rid: 5, code: ErrorCode.NotRegistered }]);
  assert.deepEqual(r.to("dev-c", Msg.Error), [{ t: Msg.Error, rid: 6, code: ErrorCode.NotRegistered }]);
  const rec = r.events("session-rejected");
  assert.equal(rec.length, 2);
  assert.deepEqual(fields(rec[0], "level", "device", "peer", "app", "reason"), { level: "warn", device: "dev-a", peer: "dev-b", app: APP, reason: "caller is not registered" });
  assert.deepEqual({ requested: r.broker.stats.requested, refused: r.broker.stats.refused }, { requested: 2, refused: 2 });

  r.regs.get("dev-a")!.expiresAt = r.clock.s + 1;
  assert.ok(await r.call("dev-a", "dev-b", 8), "a registration valid one more second counts");
  // The callee's registration is read the same way.
  r.regs.get("dev-d")!.expiresAt = r.clock.s;
  assert.equal(await r.call("dev-a", "dev-d", 9), undefined, "a callee whose registration ends now is not found");
  assert.equal(r.events("session-not-found").at(-1)?.reason, "no such registered device");
});

test("every refusal before the callee gets the same answer, with its own reason for the operator", async (t) => {
  const r = rig(t);
  r.denied.add("dev-a>dev-b");
  r.linked.delete("dev-d");
  const cases: [string, string, string][] = [
    ["dev-b", "session-denied", "policy denies it"],
    ["dev-a", "session-not-found", "a device cannot call itself"],
    ["nobody", "session-not-found", "no such registered device"],
    ["dev-d", "session-not-found", "the callee is not connected"],
  ];
  let rid = 10;
  for (const [peer, event, reason] of cases) {
    const logged = r.logs.length;
    assert.equal(await r.call("dev-a", peer, ++rid), undefined, `${peer} is not asked`);
    assert.deepEqual(r.to("dev-a", Msg.Error).at(-1), { t: Msg.Error, rid, code: ErrorCode.NotFound }, peer);
    const rec = r.logs.slice(logged);
    assert.equal(rec.length, 1, `one record for ${peer}`);
    assert.deepEqual(fields(rec[0], "event", "level", "device", "peer", "app", "reason"), { event, level: "info", device: "dev-a", peer, app: APP, reason });
  }
  assert.equal(r.to("dev-a", Msg.Incoming).length, 0, "calling itself does not ask the caller");
  assert.deepEqual(fields(r.broker.stats, "requested", "refused", "denied", "noMatch"), { requested: 4, refused: 4, denied: 1, noMatch: 0 });
});

test("no common suite: the caller is told, the callee never contacted, and it is counted", async (t) => {
  const r = rig(t);
  r.regs.get("dev-c")!.suites = [[XSALSA, 1]];
  assert.equal(await r.call("dev-a", "dev-c", 21), undefined);
  assert.deepEqual(r.to("dev-a", Msg.Error), [{ t: Msg.Error, rid: 21, code: ErrorCode.NoCommonSuite }]);
  assert.equal(r.sent.filter((s) => s.to === "dev-c").length, 0);
  assert.deepEqual(fields(r.events("session-no-match")[0], "device", "peer", "app", "reason"), {
    device: "dev-a", peer: "dev-c", app: APP, reason: "no cipher suite both devices registered; the callee was not contacted",
  });
  assert.deepEqual(fields(r.broker.stats, "noMatch", "refused", "denied"), { noMatch: 1, refused: 1, denied: 0 });
});

test("a callee that does not answer in time: the caller is refused at the deadline, and a late answer is dropped", async (t) => {
  const r = rig(t);
  const incoming = await r.call("dev-a", "dev-b", 31);
  assert.deepEqual(incoming, { t: Msg.Incoming, rid: incoming?.rid, from: "dev-a", app: APP, suite: AES });
  assert.deepEqual(fields(r.events("session-requested")[0], "device", "peer", "app", "suite"), { device: "dev-a", peer: "dev-b", app: APP, suite: AES });
  t.mock.timers.tick(SETTINGS.answerTimeoutMs - 1);
  assert.equal(r.to("dev-a", Msg.Error).length, 0, "not before the deadline");
  t.mock.timers.tick(1);
  assert.deepEqual(r.to("dev-a", Msg.Error), [{ t: Msg.Error, rid: 31, code: ErrorCode.Rejected }]);
  assert.equal(r.events("session-rejected")[0]?.reason, "the callee did not answer in time");
  assert.deepEqual(fields(r.broker.stats, "rejected", "refused"), { rejected: 1, refused: 1 });

  r.answer("dev-b", incoming!.rid as number, true);
  assert.equal(r.to("dev-a", Msg.SaInstall).length, 0, "a late answer installs nothing");
  assert.deepEqual(fields(r.events("session-answer-dropped")[0], "level", "device", "reason"), { level: "warn", device: "dev-b", reason: "an answer to no pending request (late or unknown)" });
});

test("a callee that declines: the caller is refused, counted once, and no timer refuses it again", async (t) => {
  const r = rig(t);
  const incoming = await r.call("dev-a", "dev-b", 41);
  r.answer("dev-b", incoming!.rid as number, false);
  t.mock.timers.tick(SETTINGS.answerTimeoutMs);
  assert.deepEqual(r.to("dev-a", Msg.Error), [{ t: Msg.Error, rid: 41, code: ErrorCode.Rejected }]);
  assert.equal(r.events("session-rejected")[0]?.reason, "the callee declined");
  assert.deepEqual(fields(r.broker.stats, "rejected", "refused"), { rejected: 1, refused: 1 });
});

test("two requests waiting at one callee get distinct request ids, and each answer reaches its own caller", async (t) => {
  const r = rig(t);
  const first = await r.call("dev-a", "dev-b", 51);
  const second = await r.call("dev-c", "dev-b", 52);
  assert.notEqual(first?.rid, second?.rid);
  r.answer("dev-b", second!.rid as number, true);
  r.answer("dev-b", first!.rid as number, false);
  assert.equal(r.to("dev-c", Msg.SaInstall)[0]?.rid, 52, "dev-c's request is installed");
  assert.deepEqual(r.to("dev-a", Msg.Error), [{ t: Msg.Error, rid: 51, code: ErrorCode.Rejected }]);
});

test("the request ids the gateway gives callees count on from a random start: positive 31-bit integers, as a handset's own", async (t) => {
  const callRids = async (r: Rig) => {
    const rids: number[] = [];
    for (const [i, callee] of ["dev-b", "dev-c", "dev-d"].entries()) rids.push((await r.call("dev-a", callee, 80 + i))?.rid as number);
    return rids;
  };
  // Espruino's integers are 32-bit signed: a rid past 2^31 - 1 would not survive a handset's arithmetic.
  // One rig (and mock clock) per subtest.
  await t.test("past 2^31 - 1 it goes on at 1, never 0", async (t) => assert.deepEqual(await callRids(rig(t, { firstDraws: [0xfffffffc] })), [0x7fffffff, 1, 2]));
  await t.test("from the lowest start", async (t) => assert.deepEqual(await callRids(rig(t, { firstDraws: [0xffffffff] })), [1, 2, 3]));
  // Drawn: two instances' brokers calling one device do not give it the same rids.
  const starts = new Set<number>();
  for (let i = 0; i < 4; i++) {
    await t.test(`drawn start ${i}`, async (t) => {
      const [first, second, third] = await callRids(rig(t));
      assert.deepEqual([second, third], [first + 1, first + 2], "consecutive");
      assert.ok(first >= 1 && third <= 0x7fffffff, `in range: ${first}`);
      starts.add(first);
    });
  }
  assert.ok(starts.size > 1, "the start is drawn");
});

// ---- SPIs --------------------------------------------------------------------------------------------

test("an SPI is never 0, never one a session here holds, never one held across gateways, and big-endian from the draw", async (t) => {
  const across = new Set([0x0a0b0c0d]);
  const r = rig(t, { spiTaken: (spi) => across.has(spi) });
  r.spiDraws.push(0, 0x01020304);
  assert.equal(await r.install("dev-a", "dev-b"), 0x01020304, "0 is drawn again");
  r.spiDraws.push(0x01020304, 0x0a0b0c0d, 0xfffffffe);
  assert.equal(await r.install("dev-c", "dev-d"), 0xfffffffe, "the local SA's SPI and the one across gateways are skipped");
  assert.deepEqual(r.sent.filter((s) => s.m.t === Msg.SaInstall).map((s) => s.m.spi), [0x01020304, 0x01020304, 0xfffffffe, 0xfffffffe]);
});

test("without a session hook (no spiTaken) SPIs are drawn all the same", async (t) => {
  const r = rig(t);
  r.spiDraws.push(0, 0x11111111);
  assert.equal(await r.install("dev-a", "dev-b"), 0x11111111);
});

// ---- key confirmation --------------------------------------------------------------------------------

test("Connected only after both devices confirm, whichever confirms first; then the seed is wiped", async (t) => {
  const r = rig(t);
  const spi = await r.install("dev-a", "dev-b");
  const installs = r.sent.filter((s) => s.m.t === Msg.SaInstall);
  assert.deepEqual(installs.map((s) => [s.to, s.m.role, s.m.peer, s.m.rid, s.m.replaces]), [["dev-a", 0, "dev-b", 7, 0], ["dev-b", 1, "dev-a", installs[1].m.rid, 0]]);
  r.confirm("dev-b", spi);
  assert.equal(r.to("dev-a", Msg.Connected).length + r.to("dev-b", Msg.Connected).length, 0, "the responder alone is not enough");
  r.frame("dev-b", spi);
  assert.equal(r.events("frame dropped")[0]?.reason, "SA frame before both devices confirmed");
  r.confirm("dev-a", spi);
  for (const dev of ["dev-a", "dev-b"]) assert.deepEqual(r.to(dev, Msg.Connected), [{ t: Msg.Connected, spi, replaces: 0 }], dev);
  assert.deepEqual(fields(r.events("session-up")[0], "device", "peer", "app", "spi", "replaces"), { device: "dev-a", peer: "dev-b", app: APP, spi: spiText(spi), replaces: undefined });
  assert.deepEqual(r.audits.at(-1), { device: "dev-a", event: "session-up", detail: `peer=dev-b app=${APP} spi=${spiText(spi)}` });
  assert.equal(r.broker.stats.up, 1);
  assert.ok((installs[0].m.seed as Uint8Array).every((b) => b === 0), "the gateway's seed is zeroed once both hold the keys");

  r.confirm("dev-a", spi);
  assert.equal(r.to("dev-a", Msg.Connected).length, 1, "a second confirmation changes nothing");
  assert.equal(r.events("session-confirm-dropped").at(-1)?.reason, "no SA awaiting this device's confirmation");
});

test("a confirmation from a device that is not party to the SA is dropped and does not end it", async (t) => {
  const r = rig(t);
  const spi = await r.install("dev-a", "dev-b");
  // dev-c sends the responder's genuine tag (as if it had learnt it): it is still not a party.
  r.confirm("dev-c", spi, r.tag(spi, 1));
  r.confirm("dev-c", spi, r.tag(spi, 0));
  assert.deepEqual(r.events("session-confirm-dropped").map((l) => fields(l, "level", "device", "spi", "reason")), [
    { level: "warn", device: "dev-c", spi: spiText(spi), reason: "no SA awaiting this device's confirmation" },
    { level: "warn", device: "dev-c", spi: spiText(spi), reason: "no SA awaiting this device's confirmation" },
  ]);
  assert.equal(r.events("session-aborted").length, 0);
  r.confirm("dev-a", spi);
  r.confirm("dev-b", spi);
  assert.equal(r.to("dev-b", Msg.Connected).length, 1, "the parties still bring it up");
});

test("a confirmation for an SPI nobody holds is dropped with a record, and nothing else happens", async (t) => {
  const r = rig(t);
  await r.handle("dev-a", { t: Msg.SaConfirm, rid: 0, spi: 0x12345678, tag: new Uint8Array(8) });
  assert.deepEqual(fields(r.events("session-confirm-dropped")[0], "level", "device", "spi", "reason"), { level: "warn", device: "dev-a", spi: "0x12345678", reason: "no SA awaiting this device's confirmation" });
  assert.equal(r.sent.length, 0);
});

test("a confirmation in the other role's tag does not verify: the SA is aborted at both ends and its seed wiped", async (t) => {
  const r = rig(t);
  const spi = await r.install("dev-a", "dev-b");
  r.confirm("dev-a", spi, r.tag(spi, 1));
  assert.equal(r.events("session-confirm-dropped")[0]?.reason, "key confirmation does not verify");
  for (const dev of ["dev-a", "dev-b"]) assert.deepEqual(r.to(dev, Msg.SaClosed), [{ t: Msg.SaClosed, spi, reason: CloseReason.PeerGone }], dev);
  assert.deepEqual(fields(r.events("session-aborted")[0], "level", "device", "peer", "spi", "reason"), { level: "warn", device: "dev-a", peer: "dev-b", spi: spiText(spi), reason: "a key confirmation did not verify" });
  assert.deepEqual(fields(r.broker.stats, "failed", "ended", "up"), { failed: 1, ended: 1, up: 0 });
  const install = r.sent.find((s) => s.m.t === Msg.SaInstall)!;
  assert.ok((install.m.seed as Uint8Array).every((b) => b === 0), "the seed of an aborted SA is zeroed");
  assert.equal(r.broker.sessions.size, 0);
});

test("devices that do not confirm in time: the SA is aborted at the deadline, logged and audited", async (t) => {
  const r = rig(t);
  const spi = await r.install("dev-a", "dev-b");
  r.confirm("dev-a", spi);
  t.mock.timers.tick(SETTINGS.answerTimeoutMs - 1);
  assert.equal(r.to("dev-a", Msg.SaClosed).length, 0, "not before the deadline");
  t.mock.timers.tick(1);
  assert.deepEqual(r.to("dev-b", Msg.SaClosed), [{ t: Msg.SaClosed, spi, reason: CloseReason.PeerGone }]);
  assert.equal(r.events("session-aborted")[0]?.reason, "the devices did not confirm their keys in time");
  assert.deepEqual(fields(r.events("session-down")[0], "device", "peer", "app", "spi", "reason"), { device: "dev-a", peer: "dev-b", app: APP, spi: spiText(spi), reason: "the devices did not confirm their keys in time" });
  assert.deepEqual(r.audits.at(-1), { device: "dev-a", event: "session-down", detail: `peer=dev-b spi=${spiText(spi)} the devices did not confirm their keys in time` });
  assert.deepEqual(fields(r.broker.stats, "failed", "ended"), { failed: 1, ended: 1 });
  assert.ok(r.sent.find((s) => s.m.t === Msg.SaInstall)!.m.seed instanceof Uint8Array, "an SaInstall was sent");
  assert.ok((r.sent.find((s) => s.m.t === Msg.SaInstall)!.m.seed as Uint8Array).every((b) => b === 0), "the seed is zeroed");
});

// ---- rekey -------------------------------------------------------------------------------------------

test("the gateway rekeys an SA at 80% of its lifetime, and the old SA routes frames for the overlap only", async (t) => {
  const r = rig(t);
  const spi = await r.connect("dev-a", "dev-b");
  t.mock.timers.tick(REKEY_MS - 1);
  assert.equal(r.to("dev-a", Msg.SaInstall).length, 1, "not before the rekey point");
  t.mock.timers.tick(1);
  await r.settle();
  assert.deepEqual(fields(r.events("session-rekey-due")[0], "device", "peer", "spi", "reason"), { device: "dev-a", peer: "dev-b", spi: spiText(spi), reason: "80% of the SA's lifetime is over" });
  const next = r.to("dev-a", Msg.SaInstall)[1];
  assert.deepEqual([next?.replaces, next?.rid, r.to("dev-b", Msg.SaInstall)[1]?.replaces], [spi, 0, spi]);
  assert.equal(r.broker.stats.rekeyed, 1);
  const fresh = next!.spi as number;
  r.confirm("dev-a", fresh);
  r.confirm("dev-b", fresh);
  assert.deepEqual(r.to("dev-b", Msg.Connected).at(-1), { t: Msg.Connected, spi: fresh, replaces: spi });
  assert.deepEqual(fields(r.events("session-rekeyed")[0], "device", "peer", "spi", "replaces"), { device: "dev-a", peer: "dev-b", spi: spiText(fresh), replaces: spiText(spi) });
  assert.deepEqual(r.audits.at(-1), { device: "dev-a", event: "session-rekeyed", detail: `peer=dev-b app=${APP} spi=${spiText(fresh)}` });
  assert.equal(r.broker.stats.up, 2);

  // The old SA is retiring: no second replacement, frames in flight still pass.
  await r.handle("dev-a", { t: Msg.Rekey, rid: 0, spi });
  assert.deepEqual(fields(r.events("session-rekey-ignored")[0], "level", "device", "spi", "reason"), { level: "info", device: "dev-a", spi: spiText(spi), reason: "the SA was already replaced" });
  r.frame("dev-a", spi);
  assert.equal(r.relayed.length, 1, "a frame on the old SPI within the overlap is relayed");
  t.mock.timers.tick(SETTINGS.overlapMs - 1);
  r.frame("dev-a", spi);
  assert.equal(r.relayed.length, 2, "still within the overlap");
  t.mock.timers.tick(1);
  r.frame("dev-a", spi);
  assert.equal(r.relayed.length, 2, "after the overlap the old SPI is gone");
  assert.equal(r.events("frame dropped").at(-1)?.reason, "SA frame for an unknown SPI");
  // Retired, not closed: neither device was told the old SA ended, now or at its lifetime's end. The
  // replacement's own lifetime runs out in that time (its rekey, asked for by its timer, finds it gone
  // once the registry answers): the one SaClosed is its expiry.
  t.mock.timers.tick(END_MS);
  await r.settle();
  assert.deepEqual(r.to("dev-a", Msg.SaClosed).filter((m) => m.spi === spi), []);
  assert.deepEqual(r.to("dev-a", Msg.SaClosed), [{ t: Msg.SaClosed, spi: fresh, reason: CloseReason.Expired }]);
  assert.equal(r.broker.sessions.size, 0);
});

test("an SA ended while its replacement is being confirmed: the replacement still comes up", async (t) => {
  const r = rig(t);
  const old = await r.connect("dev-a", "dev-b");
  await r.handle("dev-a", { t: Msg.Rekey, rid: 0, spi: old });
  const fresh = r.to("dev-a", Msg.SaInstall).at(-1)!.spi as number;
  await r.handle("dev-b", { t: Msg.Bye, spi: old });
  r.confirm("dev-a", fresh);
  r.confirm("dev-b", fresh);
  assert.deepEqual(r.to("dev-a", Msg.Connected).at(-1), { t: Msg.Connected, spi: fresh, replaces: old });
  assert.deepEqual([...r.broker.sessions.keys()], [fresh]);
});

test("an SA whose replacement never comes up ends at its lifetime (+5 s) as expired", async (t) => {
  const r = rig(t);
  const spi = await r.connect("dev-a", "dev-b");
  t.mock.timers.tick(REKEY_MS); // the replacement is offered, and never confirmed: aborted
  await r.settle();
  assert.equal(r.to("dev-a", Msg.SaInstall).length, 2, "the replacement is offered");
  t.mock.timers.tick(SETTINGS.answerTimeoutMs);
  assert.equal(r.events("session-aborted").length, 1);
  t.mock.timers.tick(END_MS - REKEY_MS - SETTINGS.answerTimeoutMs - 1);
  assert.deepEqual(r.to("dev-a", Msg.SaClosed).filter((m) => m.spi === spi), [], "not before lifetime + 5 s");
  t.mock.timers.tick(1);
  for (const dev of ["dev-a", "dev-b"]) assert.deepEqual(r.to(dev, Msg.SaClosed).filter((m) => m.spi === spi), [{ t: Msg.SaClosed, spi, reason: CloseReason.Expired }], dev);
  assert.equal(r.events("session-down").at(-1)?.reason, "lifetime over");
});

test("either party may ask for a rekey; a stranger, an unknown SPI or an unconfirmed SA may not", async (t) => {
  const r = rig(t);
  const ab = await r.connect("dev-a", "dev-b");
  const cd = await r.connect("dev-c", "dev-d");
  const installs = () => r.sent.filter((s) => s.m.t === Msg.SaInstall).length;

  const before = installs();
  await r.handle("dev-c", { t: Msg.Rekey, rid: 0, spi: ab });
  await r.handle("dev-c", { t: Msg.Rekey, rid: 0, spi: 0x0badf00d });
  assert.equal(installs(), before, "nothing installed for a stranger or an unknown SPI");
  assert.deepEqual(r.events("session-rekey-rejected").map((l) => fields(l, "level", "device", "spi", "reason")), [
    { level: "warn", device: "dev-c", spi: spiText(ab), reason: "no SA with this SPI for this device" },
    { level: "warn", device: "dev-c", spi: "0x0badf00d", reason: "no SA with this SPI for this device" },
  ]);

  await r.handle("dev-a", { t: Msg.Rekey, rid: 0, spi: ab });
  assert.equal(r.to("dev-b", Msg.SaInstall).at(-1)?.replaces, ab, "the initiator may ask");
  await r.handle("dev-d", { t: Msg.Rekey, rid: 0, spi: cd });
  assert.equal(r.to("dev-c", Msg.SaInstall).at(-1)?.replaces, cd, "the responder may ask");
  assert.equal(r.broker.stats.rekeyed, 2);

  // The replacement is not up yet: a rekey of it is ignored, with its reason.
  const fresh = r.to("dev-a", Msg.SaInstall).at(-1)!.spi as number;
  const now = installs();
  await r.handle("dev-b", { t: Msg.Rekey, rid: 0, spi: fresh });
  assert.equal(installs(), now);
  assert.deepEqual(fields(r.events("session-rekey-ignored")[0], "level", "device", "spi", "reason"), { level: "info", device: "dev-b", spi: spiText(fresh), reason: "the SA is not confirmed yet" });
});

test("both ends asking at once get one replacement; an unrelated SA being set up does not hold a rekey back", async (t) => {
  const r = rig(t);
  const ab = await r.connect("dev-a", "dev-b");
  t.mock.timers.tick(REKEY_MS - 500);
  await r.install("dev-c", "dev-d"); // confirming, unrelated
  await r.handle("dev-a", { t: Msg.Rekey, rid: 0, spi: ab });
  assert.equal(r.to("dev-a", Msg.SaInstall).length, 2, "the rekey is not held back by another SA's setup");
  await r.handle("dev-b", { t: Msg.Rekey, rid: 0, spi: ab });
  t.mock.timers.tick(500); // the gateway's own timer too, while the replacement is still being confirmed
  await r.settle();
  assert.equal(r.to("dev-a", Msg.SaInstall).filter((m) => m.replaces === ab).length, 1, "one replacement");
  assert.equal(r.broker.stats.rekeyed, 1);
});

test("an SPI drawn again after its SA is gone is a new SA: the old one's replacement does not block its rekey", async (t) => {
  const r = rig(t);
  r.spiDraws.push(0x100, 0x200);
  const old = await r.connect("dev-a", "dev-b");
  await r.handle("dev-a", { t: Msg.Rekey, rid: 0, spi: old });
  r.confirm("dev-a", 0x200);
  r.confirm("dev-b", 0x200);
  t.mock.timers.tick(SETTINGS.overlapMs); // 0x100 is gone; 0x200 (replaces 0x100) is up
  r.spiDraws.push(0x100);
  assert.equal(await r.connect("dev-c", "dev-d"), 0x100);
  await r.handle("dev-c", { t: Msg.Rekey, rid: 0, spi: 0x100 });
  assert.equal(r.to("dev-c", Msg.SaInstall).at(-1)?.replaces, 0x100, "dev-c's SA is replaced");
});

test("a rekey checks policy and both registrations afresh: if any no longer allows it, the SA ends", async (t) => {
  for (const [what, spoil] of [
    ["the policy", (r: Rig) => r.denied.add("dev-a>dev-b")],
    ["the initiator's registration", (r: Rig) => r.regs.delete("dev-a")],
    ["the responder's registration", (r: Rig) => { r.regs.get("dev-b")!.expiresAt = r.clock.s; }],
  ] as const) {
    const r = rig(t);
    const spi = await r.connect("dev-a", "dev-b");
    spoil(r);
    await r.handle("dev-b", { t: Msg.Rekey, rid: 0, spi });
    assert.equal(r.to("dev-a", Msg.SaInstall).length, 1, `no replacement when ${what} refuses`);
    assert.deepEqual(r.to("dev-a", Msg.SaClosed), [{ t: Msg.SaClosed, spi, reason: CloseReason.PeerGone }], what);
    assert.equal(r.events("session-down")[0]?.reason, "policy or registration no longer allows this session", what);
    assert.equal(r.broker.stats.rekeyed, 0);
    r.broker.close();
    t.mock.timers.reset();
  }
});

// ---- ends --------------------------------------------------------------------------------------------

test("a session's up, rekey and down records are batched evidence, not a synchronous commit each; a spoofing attempt's is durable", async (t) => {
  const r = rig(t);
  const spi = await r.connect("dev-a", "dev-b");
  await r.handle("dev-a", { t: Msg.Rekey, rid: 0, spi });
  const next = r.to("dev-a", Msg.SaInstall).at(-1)!.spi as number;
  r.confirm("dev-a", next);
  r.confirm("dev-b", next);
  await r.handle("dev-b", { t: Msg.Bye, spi: next });
  assert.deepEqual(r.audits.map((a) => a.event), ["session-up", "session-rekeyed", "session-down"]);
  assert.deepEqual(r.durable, [], "no session record waits for its own commit");
  await r.handle("dev-c", { t: Msg.ConnectRequest, rid: 1, peer: "dev-d", app: APP, from: "dev-a" });
  assert.deepEqual(r.durable, ["spoofing"]);
});

test("a rekey whose registry answers come after its SA was replaced installs nothing more", async (t) => {
  const r = rig(t, { holdLookups: true });
  /** Runs p to its end, answering every lookup it asks for. */
  const answering = async <T>(p: Promise<T>): Promise<T> => {
    let done = false;
    void p.finally(() => (done = true));
    while (!done) {
      await r.settle();
      for (const h of r.held.splice(0)) h.answer();
    }
    return p;
  };
  const ab = await answering(r.connect("dev-a", "dev-b"));
  const first = r.handle("dev-a", { t: Msg.Rekey, rid: 0, spi: ab });
  const second = r.handle("dev-b", { t: Msg.Rekey, rid: 0, spi: ab });
  await r.settle();
  assert.equal(r.held.length, 6, "both rekeys wait for the registry");
  for (const h of r.held.splice(0, 3)) h.answer();
  await first;
  const fresh = r.to("dev-a", Msg.SaInstall).at(-1)!;
  assert.equal(fresh.replaces, ab);
  // Both ends confirm the replacement before the second rekey's answers come back.
  r.confirm("dev-a", fresh.spi as number);
  r.confirm("dev-b", fresh.spi as number);
  assert.equal(r.to("dev-a", Msg.Connected).at(-1)?.spi, fresh.spi, "the replacement is up");
  for (const h of r.held.splice(0)) h.answer();
  await second;
  assert.equal(r.to("dev-a", Msg.SaInstall).length, 2, "the SA and one replacement: the late rekey found its SA replaced");
  assert.equal(r.broker.stats.rekeyed, 1);
});

test("a ConnectRequest asks for both registrations and the policy at once, not one after another", async (t) => {
  const r = rig(t, { holdLookups: true });
  const handled = r.handle("dev-a", { t: Msg.ConnectRequest, rid: 7, peer: "dev-b", app: APP, from: "dev-a" });
  await r.settle();
  assert.deepEqual(r.held.map((h) => h.what).sort(), ["policy dev-a>dev-b", "registration of dev-a", "registration of dev-b"], "all three asked before any is answered");
  assert.equal(r.to("dev-b", Msg.Incoming).length, 0, "nothing sent before the answers");
  for (const h of r.held.splice(0)) h.answer();
  await handled;
  assert.equal(r.to("dev-b", Msg.Incoming).length, 1, "the callee is asked");
});

test("a bye from a party ends the SA at both ends; from a stranger or for an unknown SPI it is dropped", async (t) => {
  const r = rig(t);
  const spi = await r.connect("dev-a", "dev-b");
  await r.handle("dev-c", { t: Msg.Bye, spi });
  await r.handle("dev-a", { t: Msg.Bye, spi: 0x0badf00d });
  assert.deepEqual(r.events("session-bye-dropped").map((l) => fields(l, "level", "device", "spi", "reason")), [
    { level: "warn", device: "dev-c", spi: spiText(spi), reason: "no SA with this SPI for this device" },
    { level: "warn", device: "dev-a", spi: "0x0badf00d", reason: "no SA with this SPI for this device" },
  ]);
  assert.equal(r.to("dev-a", Msg.SaClosed).length, 0, "the SA lives on");
  await r.handle("dev-b", { t: Msg.Bye, spi });
  for (const dev of ["dev-a", "dev-b"]) assert.deepEqual(r.to(dev, Msg.SaClosed), [{ t: Msg.SaClosed, spi, reason: CloseReason.Bye }], dev);
  assert.equal(r.events("session-down")[0]?.reason, "bye from dev-b");
  assert.equal(r.broker.stats.ended, 1);
  t.mock.timers.tick(END_MS);
  await r.settle();
  assert.equal(r.to("dev-a", Msg.SaInstall).length, 1, "an ended SA is never rekeyed");
});

test("a bye for SPI 0 (a rebooted device) ends all its SAs and tells the hook, with the reason", async (t) => {
  const gone: [string, number, string][] = [];
  const r = rig(t, { onEndAll: (dev, reason, why) => gone.push([dev, reason, why]) });
  const ab = await r.connect("dev-a", "dev-b");
  const cb = await r.connect("dev-c", "dev-b");
  await r.handle("dev-b", { t: Msg.Bye, spi: 0 });
  assert.deepEqual(gone, [["dev-b", CloseReason.PeerGone, "the device restarted and holds no SAs"]]);
  assert.deepEqual(r.to("dev-a", Msg.SaClosed), [{ t: Msg.SaClosed, spi: ab, reason: CloseReason.PeerGone }]);
  assert.deepEqual(r.to("dev-c", Msg.SaClosed), [{ t: Msg.SaClosed, spi: cb, reason: CloseReason.PeerGone }]);
  assert.deepEqual(r.events("session-down").map((l) => l.reason), ["the device restarted and holds no SAs", "the device restarted and holds no SAs"]);
});

test("endAll ends only the device's own SAs, whichever side it is on, and works without a hook", async (t) => {
  const r = rig(t);
  const ab = await r.connect("dev-a", "dev-b");
  const cd = await r.connect("dev-c", "dev-d");
  r.broker.endAll("dev-d", CloseReason.Deregistered, "deregistered");
  assert.deepEqual(r.to("dev-c", Msg.SaClosed), [{ t: Msg.SaClosed, spi: cd, reason: CloseReason.Deregistered }]);
  assert.deepEqual(r.to("dev-a", Msg.SaClosed), [], "dev-a's SA with dev-b is not dev-d's");
  assert.deepEqual([...r.broker.sessions.keys()], [ab]);
});

test("endAll and requests waiting: the callee gone refuses its caller; the caller gone withdraws its request", async (t) => {
  const r = rig(t);
  const toB = await r.call("dev-a", "dev-b", 61);
  const toD = await r.call("dev-c", "dev-d", 62);
  r.broker.endAll("dev-b", CloseReason.Revoked, "revoked");
  assert.deepEqual(r.to("dev-a", Msg.Error), [{ t: Msg.Error, rid: 61, code: ErrorCode.Rejected }]);
  assert.equal(r.broker.stats.refused, 1);
  r.answer("dev-b", toB!.rid as number, true);
  assert.equal(r.to("dev-a", Msg.SaInstall).length, 0, "the request went with the callee");

  r.broker.endAll("dev-c", CloseReason.PeerGone, "link lost");
  assert.deepEqual(r.to("dev-c", Msg.Error), [], "a caller that is gone is not answered");
  r.answer("dev-d", toD!.rid as number, true);
  assert.equal(r.to("dev-d", Msg.SaInstall).length, 0, "the request went with the caller");
  assert.equal(r.events("session-answer-dropped").length, 2);
  t.mock.timers.tick(SETTINGS.answerTimeoutMs);
  assert.deepEqual(r.to("dev-c", Msg.Error), [], "and its timer was stopped");
  assert.equal(r.broker.stats.refused, 1);
});

test("endAll of an unrelated device leaves a waiting request alone", async (t) => {
  const r = rig(t);
  const incoming = await r.call("dev-a", "dev-b", 71);
  r.broker.endAll("dev-c", CloseReason.PeerGone, "link lost");
  r.answer("dev-b", incoming!.rid as number, true);
  assert.equal(r.to("dev-a", Msg.SaInstall).length, 1);
});

test("a lost link ends the device's SAs after the grace period, unless the link comes back", async (t) => {
  const r = rig(t);
  const spi = await r.connect("dev-a", "dev-b");
  r.broker.linkDown("dev-b");
  t.mock.timers.tick(1000);
  r.broker.linkDown("dev-b"); // reported again: the first timer still counts, and stays stoppable
  r.broker.linkUp("dev-b");
  t.mock.timers.tick(SETTINGS.graceMs * 2);
  assert.deepEqual(r.to("dev-a", Msg.SaClosed), [], "back within the grace period");

  r.broker.linkDown("dev-b");
  t.mock.timers.tick(SETTINGS.graceMs - 1);
  assert.deepEqual(r.to("dev-a", Msg.SaClosed), [], "not before the grace period is over");
  t.mock.timers.tick(1);
  assert.deepEqual(r.to("dev-a", Msg.SaClosed), [{ t: Msg.SaClosed, spi, reason: CloseReason.PeerGone }]);
  assert.equal(r.events("session-down")[0]?.reason, "link lost for longer than the grace period");
});

// ---- relay -------------------------------------------------------------------------------------------

test("SA frames go byte for byte to the other party only, and every drop is counted with its reason", async (t) => {
  const r = rig(t);
  const spi = await r.connect("dev-a", "dev-b");
  const fromA = new Uint8Array([0xa]);
  const fromB = new Uint8Array([0xb]);
  r.frame("dev-a", spi, fromA);
  r.frame("dev-b", spi, fromB);
  assert.deepEqual(r.relayed, [["dev-b", fromA], ["dev-a", fromB]]);
  assert.equal(r.broker.stats.relayed, 2);

  r.frame("dev-c", spi);
  r.frame("dev-a", 0x0badf00d);
  r.linked.delete("dev-b");
  r.frame("dev-a", spi);
  assert.equal(r.relayed.length, 2, "nothing more relayed");
  assert.deepEqual(r.events("frame dropped").map((l) => fields(l, "level", "device", "spi", "reason")), [
    { level: "warn", device: "dev-c", spi: spiText(spi), reason: "SA frame from a device that is not party to the SPI" },
    { level: "warn", device: "dev-a", spi: "0x0badf00d", reason: "SA frame for an unknown SPI" },
  ]);
  assert.deepEqual(fields(r.broker.stats, "relayed", "relayDropped"), { relayed: 2, relayDropped: 3 });
});

test("the stats start at zero, every counter there", async (t) => {
  const r = rig(t);
  assert.deepEqual(r.broker.stats, { requested: 0, up: 0, refused: 0, failed: 0, rejected: 0, denied: 0, noMatch: 0, rekeyed: 0, ended: 0, relayed: 0, relayDropped: 0 });
});

// ---- one instance among several ---------------------------------------------------------------------

/** The domain's table as the broker sees it: claims answered at once, or held until the test says. */
function heldClaims() {
  const claims: { spi: number; answer(ok: boolean): void; fail(e: Error): void }[] = [];
  const ended: number[] = [];
  const sharing = {
    hold: false,
    instance: "i1",
    claim: (s: LiveSession) => (sharing.hold ? new Promise<boolean>((resolve, reject) => claims.push({ spi: s.spi, answer: resolve, fail: reject })) : Promise.resolve(true)),
    up: () => {},
    ended: (spi: number) => void ended.push(spi),
    stillHome: () => Promise.resolve(true),
    peerMoved: () => {},
    othersOnline: () => true,
    installOnAccept: (_callee: string, _m: SaInstall): void => {},
    // Nothing claimed ahead: every SPI is claimed when needed (Instances' reserve: test/instances.test.ts).
    takeReserved: (): number | undefined => undefined,
  };
  return { sharing, claims, ended };
}

test("with several instances, both ends asking for a rekey while the new SPI is being claimed make one replacement", async (t) => {
  const { sharing, claims } = heldClaims();
  const r = rig(t, { sharing });
  const spi = await r.connect("dev-a", "dev-b");
  sharing.hold = true;
  void r.broker.handle("dev-a", { t: Msg.Rekey, rid: 0, spi });
  void r.broker.handle("dev-b", { t: Msg.Rekey, rid: 0, spi });
  await r.settle();
  await r.settle();
  assert.equal(claims.length, 1, "one SPI claimed for the replacement");
  claims[0].answer(true);
  await r.settle();
  assert.equal(r.to("dev-a", Msg.SaInstall).filter((m) => m.replaces === spi).length, 1, "one replacement installed");
  assert.equal(r.broker.stats.rekeyed, 1);
});

test("with several instances, a replaced SA leaves the domain's table when it is replaced, not after the overlap", async (t) => {
  const { sharing, ended } = heldClaims();
  const r = rig(t, { sharing });
  const spi = await r.connect("dev-a", "dev-b");
  await r.handle("dev-a", { t: Msg.Rekey, rid: 0, spi });
  await r.settle();
  const next = r.to("dev-a", Msg.SaInstall).find((m) => m.replaces === spi)!.spi as number;
  r.confirm("dev-a", next);
  r.confirm("dev-b", next);
  await r.settle();
  assert.deepEqual(ended, [spi], "out of the table as its replacement is up (an instance taking over must not revive it)");
  assert.ok(r.broker.sessions.has(spi), "while it still routes stragglers here for the overlap");
});


/** heldClaims, with every callee linked at another instance, which holds its SaInstall (as given, and
 *  the seed as it was then: the broker may wipe the array later). */
function calleesElsewhere() {
  const h = heldClaims();
  const installs: { callee: string; m: SaInstall; seed: Uint8Array }[] = [];
  h.sharing.installOnAccept = (callee, m) => void installs.push({ callee, m, seed: m.seed.slice() });
  return { ...h, installs };
}

test("with several instances, the SPI is claimed before the callee is asked, and a callee at another instance is given its SaInstall there as it accepts", async (t) => {
  const { sharing, claims, installs } = calleesElsewhere();
  sharing.hold = true;
  const r = rig(t, { sharing });
  const asking = r.call("dev-a", "dev-b");
  await r.settle();
  assert.equal(claims.length, 1, "the SPI is being claimed");
  assert.equal(r.to("dev-b", Msg.Incoming).length, 0, "the callee is asked only once it is");
  claims[0].answer(true);
  const incoming = await asking;
  assert.ok(incoming, "then the callee is asked");
  assert.equal(installs.length, 1, "and its instance holds its SaInstall");
  const held = installs[0];
  assert.deepEqual(fields(held.m as unknown as Record<string, unknown>, "rid", "spi", "peer", "role", "replaces"), { rid: incoming.rid, spi: claims[0].spi, peer: "dev-a", role: 1, replaces: 0 });
  assert.equal(r.to("dev-b", Msg.SaInstall).length + r.to("dev-a", Msg.SaInstall).length, 0, "no key goes to a device before the answer");
  await r.broker.acceptedWithInstall("dev-b", incoming.rid as number, held.m.spi);
  const mine = r.to("dev-a", Msg.SaInstall);
  assert.equal(mine.length, 1, "the caller gets its SaInstall");
  assert.equal(mine[0].spi, held.m.spi);
  assert.deepEqual(r.sent.find((x) => x.to === "dev-a" && x.m.t === Msg.SaInstall)!.seed, held.seed, "one seed for both ends");
  assert.equal(r.to("dev-b", Msg.SaInstall).length, 0, "the callee is not sent a second SaInstall");
  r.confirm("dev-a", held.m.spi);
  r.confirm("dev-b", held.m.spi, r.tag(held.m.spi, 1));
  assert.equal(r.to("dev-b", Msg.Connected).at(-1)?.spi, held.m.spi, "the SA is up at both ends");
  assert.ok(held.m.seed.every((b) => b === 0), "the seed is wiped once both confirmed");
});

test("with several instances, a callee that answered before its instance held the SaInstall is sent it by the home", async (t) => {
  const { sharing, installs } = calleesElsewhere();
  const r = rig(t, { sharing });
  const incoming = await r.call("dev-a", "dev-b");
  assert.equal(installs.length, 1);
  r.answer("dev-b", incoming!.rid as number, true); // a plain answer: its instance had no SaInstall to give
  const theirs = r.to("dev-b", Msg.SaInstall);
  assert.equal(theirs.length, 1, "the home sends the callee its SaInstall");
  assert.equal(theirs[0].spi, installs[0].m.spi);
  assert.equal(r.to("dev-a", Msg.SaInstall)[0]?.spi, installs[0].m.spi);
});

test("with several instances, a claim the registry does not answer refuses the caller, and the callee is never asked", async (t) => {
  const { sharing, claims, installs } = calleesElsewhere();
  sharing.hold = true;
  const r = rig(t, { sharing });
  const asking = r.call("dev-a", "dev-b");
  await r.settle();
  claims[0].fail(new Error("connection lost"));
  assert.equal(await asking, undefined, "no Incoming");
  assert.deepEqual(r.to("dev-a", Msg.Error), [{ t: Msg.Error, rid: 7, code: ErrorCode.Rejected }]);
  assert.match(String(r.events("registry-error")[0]?.reason), /no SPI claimed, the callee was not asked: connection lost/);
  assert.equal(installs.length, 0);
  assert.equal(r.broker.stats.refused, 1, "one refusal");
  t.mock.timers.tick(SETTINGS.answerTimeoutMs);
  assert.equal(r.to("dev-a", Msg.Error).length, 1, "and no second refusal at the timeout");
});

test("with several instances, a declined request gives its claimed SPI back and wipes the seed; so does one whose caller went while the SPI was claimed", async (t) => {
  const { sharing, claims, ended, installs } = calleesElsewhere();
  sharing.hold = true;
  const r = rig(t, { sharing });
  const asking = r.call("dev-a", "dev-b", 7);
  await r.settle();
  claims[0].answer(true);
  const first = await asking;
  r.answer("dev-b", first!.rid as number, false);
  assert.deepEqual(ended, [claims[0].spi], "the claim goes back at once");
  assert.ok(installs[0].m.seed.every((b) => b === 0), "the held seed is wiped");
  const second = r.call("dev-c", "dev-d", 8);
  await r.settle();
  r.broker.endAll("dev-c", CloseReason.PeerGone, "the caller restarted");
  claims[1].answer(true);
  assert.equal(await second, undefined, "the callee is not asked");
  assert.deepEqual(ended, [claims[0].spi, claims[1].spi], "the claim goes back when it returns");
  assert.equal(installs.length, 1, "and nothing more is held");
  assert.equal(r.sent.filter((x) => x.m.t === Msg.SaInstall).length, 0, "no key went to a device");
});

test("with several instances, a callee given its held SaInstall after its request timed out is told that SA is closed", async (t) => {
  const { sharing, ended, installs } = calleesElsewhere();
  const r = rig(t, { sharing });
  const incoming = await r.call("dev-a", "dev-b");
  t.mock.timers.tick(SETTINGS.answerTimeoutMs);
  assert.deepEqual(r.to("dev-a", Msg.Error), [{ t: Msg.Error, rid: 7, code: ErrorCode.Rejected }]);
  const spi = installs[0].m.spi;
  assert.deepEqual(ended, [spi], "the timeout gives the SPI back");
  await r.broker.acceptedWithInstall("dev-b", incoming!.rid as number, spi);
  assert.deepEqual(r.to("dev-b", Msg.SaClosed), [{ t: Msg.SaClosed, spi, reason: CloseReason.PeerGone }]);
  assert.equal(r.events("session-stray-closed")[0]?.reason, "the callee accepted after its request timed out");
  assert.equal(r.to("dev-a", Msg.SaInstall).length, 0, "the caller, refused already, gets nothing");
});
