// Group SAs inside one gateway (issue 14, scope 3; docs/PROTOCOL.md §5d): the firmware's own Handset
// engine in Node over real TCP (test/support/session-rig.ts) against an in-process gateway. Three
// members get one key and each other's messages; a member that leaves, or is revoked, is cut off: its
// SA is closed and the next message, handed to it directly, does not open; a member that joins
// cannot open what was sent before; the suite is one every member registered; a member cannot send
// with another's sender index; a change made by `keyproxy group` in another process is applied. The
// last test runs the Puck.js bundle built with --groups in the emulator, with an AES ledger per device.

import { after, describe, test } from "node:test";
import { rmSync } from "node:fs";
import { EmulatedDevice, type AesObservation } from "../emulator/device.ts";
import { provisionEmulated } from "../emulator/sim.ts";
import { buildFirmware } from "../flash/build.ts";
import { AesLedger, describeReuse } from "./support/aes-ledger.ts";
import assert from "node:assert/strict";
import { SUITE_AES_CCM_16_64_128 as AES, SUITE_XSALSA20_POLY1305 as XSALSA } from "../firmware/crypto/types.ts";
import { CloseReason } from "../firmware/proto/messages.ts";
import { KeyGroups } from "../gateway/registry/key-groups.ts";
import type { SessionSettings } from "../gateway/sessions/session-broker.ts";
import { Msg } from "../firmware/proto/messages.ts";
import { openTestRegistry, provision, startGateway, tempDir, testDatabaseOf, until, type TestGateway } from "./support/harness.ts";
import { saDataIn, sessionHandset, stopGateway, type SessionHandset } from "./support/session-rig.ts";

const text = (s: string) => new Uint8Array(Buffer.from(s, "latin1"));
const HI = 2 ** 32;

interface Rig {
  t: TestGateway;
  devs: Map<string, SessionHandset>;
  dev(id: string): SessionHandset;
  close(): Promise<void>;
}

async function rig(devices: { id: string; suites?: number[][] }[], sessions: Partial<SessionSettings> = {}): Promise<Rig> {
  const t = await startGateway({ sessions });
  const devs = new Map<string, SessionHandset>();
  const r: Rig = {
    t, devs,
    dev: (id) => devs.get(id) as SessionHandset,
    close: async () => {
      for (const d of devs.values()) d.close();
      await stopGateway(t);
    },
  };
  try {
    for (const d of devices) devs.set(d.id, await sessionHandset(t.gw, d.id, await provision(t.gw, d.id), { suites: d.suites }));
    await until(() => [...devs.values()].every((d) => d.h.status().registered), "every handset registered");
  } catch (e) {
    await r.close();
    throw e;
  }
  return r;
}

/** Waits until the group has a key (other than `not`) that every one of `members` holds, confirmed. */
async function keyed(r: Rig, group: string, members: string[], not = 0): Promise<number> {
  const holds = (id: string, spi: number) => r.dev(id).h.sas.some((s) => s.spi === spi && s.ready);
  await until(() => {
    const spi = r.t.gw.groups.currentSpi(group);
    return spi !== 0 && spi !== not && members.every((m) => holds(m, spi));
  }, `group ${group} keyed for ${members.join(", ")}`);
  return r.t.gw.groups.currentSpi(group);
}

/** Sends from one member; resolves with the SaData frame it wrote, once every other member got it. */
async function sendToGroup(r: Rig, from: string, spi: number, msg: string, to: string[]): Promise<Uint8Array> {
  const sender = r.dev(from);
  const before = sender.sent.length;
  assert.equal(sender.h.send(spi, text(msg)), true, `${from} may send ${msg}`);
  const frame = sender.sent.slice(before).find((f) => saDataIn(f)) as Uint8Array;
  assert.ok(frame, "the handset wrote an SA frame");
  await until(() => to.every((m) => r.dev(m).inbox.includes(msg)), `${msg} to reach ${to.join(", ")}`);
  for (const m of to) assert.equal(r.dev(m).inbox.filter((x) => x === msg).length, 1, `${msg} reached ${m} once`);
  assert.ok(!sender.inbox.includes(msg), "the sender does not get its own message back");
  return frame;
}

/** Hands a frame to a handset directly (as a gateway that relayed it anyway would): whether it opened. */
function opens(d: SessionHandset, frame: Uint8Array, msg: string): boolean {
  const dropped = d.h.status().dropped;
  d.h.receive(frame);
  if (d.inbox.includes(msg)) return true;
  assert.equal(d.h.status().dropped, dropped + 1, "the frame was dropped");
  return false;
}

describe("group SAs in one gateway", () => {
  const rigs: Rig[] = [];
  after(async () => {
    for (const r of rigs) await r.close();
  });

  test("three members share one key: each one's message reaches the two others once, relayed as ciphertext", async () => {
    const r = await rig([{ id: "alice" }, { id: "bob" }, { id: "carol" }]);
    rigs.push(r);
    const g = r.t.gw.groups;
    await g.create("team", "chat");
    for (const m of ["alice", "bob", "carol"]) await g.add("team", m);
    const spi = await keyed(r, "team", ["alice", "bob", "carol"]);
    for (const m of ["alice", "bob", "carol"]) {
      const sa = r.dev(m).h.sas.find((s) => s.spi === spi)!;
      assert.equal(sa.peer, `team@${r.t.gw.id}`);
      assert.equal(sa.app, "chat");
    }
    const indices = ["alice", "bob", "carol"].map((m) => r.dev(m).h.sas.find((s) => s.spi === spi)!.link.me_);
    assert.deepEqual([...indices].sort(), [0, 1, 2], "each member has its own sender index");
    const f = await sendToGroup(r, "alice", spi, "hello team", ["bob", "carol"]);
    const m = saDataIn(f)!;
    assert.equal(Math.floor(m.seq / HI), indices[0], "the frame carries alice's sender index");
    assert.ok(!Buffer.from(m.sealed).includes(Buffer.from("hello team")), "ciphertext only");
    await sendToGroup(r, "bob", spi, "hi alice", ["alice", "carol"]);
    await sendToGroup(r, "carol", spi, "hi both", ["alice", "bob"]);
    assert.equal(r.t.events("group-up").length, 1);
  });

  test("a member that leaves is closed at once and cannot open the next message; the others get a new key", async () => {
    const r = await rig([{ id: "a1" }, { id: "b1" }, { id: "c1" }]);
    rigs.push(r);
    const g = r.t.gw.groups;
    await g.create("crew", "chat");
    for (const m of ["a1", "b1", "c1"]) await g.add("crew", m);
    const old = await keyed(r, "crew", ["a1", "b1", "c1"]);
    await sendToGroup(r, "a1", old, "before", ["b1", "c1"]);
    assert.equal(await g.remove("crew", "c1"), true);
    await until(() => r.dev("c1").closed.some(([spi, reason]) => spi === old && reason === CloseReason.Removed), "c1's SA closed as removed");
    assert.ok(!r.dev("c1").h.sas.some((s) => s.spi === old), "c1 deleted the old key");
    const fresh = await keyed(r, "crew", ["a1", "b1"], old);
    assert.ok(!r.dev("c1").h.sas.some((s) => s.spi === fresh), "c1 never got the new key");
    // The old SPI still works for send(): it follows the new key (as a pairwise rekey does).
    const next = await sendToGroup(r, "a1", old, "after", ["b1"]);
    assert.equal(saDataIn(next)!.spi, fresh, "sent under the new key");
    assert.equal(opens(r.dev("c1"), next, "after"), false, "the leaver cannot open the next message");
    assert.ok(r.dev("c1").lines.includes("KP drop: sa 8"), "it holds no SA for it");
  });

  test("a member that joins gets a new key and cannot open what was sent before", async () => {
    const r = await rig([{ id: "a2" }, { id: "b2" }, { id: "d2" }]);
    rigs.push(r);
    const g = r.t.gw.groups;
    await g.create("club", "chat");
    for (const m of ["a2", "b2"]) await g.add("club", m);
    const old = await keyed(r, "club", ["a2", "b2"]);
    const earlier = await sendToGroup(r, "a2", old, "earlier", ["b2"]);
    await g.add("club", "d2");
    const fresh = await keyed(r, "club", ["a2", "b2", "d2"], old);
    assert.notEqual(fresh, old);
    assert.equal(opens(r.dev("d2"), earlier, "earlier"), false, "the new member cannot open an earlier message");
    await sendToGroup(r, "d2", fresh, "new here", ["a2", "b2"]);
  });

  test("a revoked member leaves every group it is in, is cut off, and the rest are rekeyed", async () => {
    const r = await rig([{ id: "a3" }, { id: "b3" }, { id: "c3" }]);
    rigs.push(r);
    const g = r.t.gw.groups;
    await g.create("g1", "chat");
    await g.create("g2", "chat");
    for (const m of ["a3", "b3", "c3"]) await g.add("g1", m);
    for (const m of ["a3", "b3", "c3"]) await g.add("g2", m);
    const old1 = await keyed(r, "g1", ["a3", "b3", "c3"]);
    const old2 = await keyed(r, "g2", ["a3", "b3", "c3"]);
    assert.equal(await r.t.gw.revokeDevice("c3", "lost"), true);
    await until(() => [old1, old2].every((spi) => r.dev("c3").closed.some(([s, reason]) => s === spi && reason === CloseReason.Revoked)), "c3's group SAs closed as revoked");
    const new1 = await keyed(r, "g1", ["a3", "b3"], old1);
    await keyed(r, "g2", ["a3", "b3"], old2);
    assert.deepEqual((await g.list()).map((x) => x.members), [["a3", "b3"], ["a3", "b3"]], "the revoked device is in no group");
    const next = await sendToGroup(r, "b3", new1, "without c3", ["a3"]);
    assert.equal(opens(r.dev("c3"), next, "without c3"), false);
    assert.equal(r.t.events("group-member-revoked").length, 1);
  });

  test("seed 003's matching: the group's suite is one every member registered, or it is not keyed and the log says why", async () => {
    const r = await rig([{ id: "x1", suites: [[XSALSA, 1], [AES, 2]] }, { id: "x2", suites: [[XSALSA, 1], [AES, 1]] }, { id: "x3", suites: [[AES, 1]] }, { id: "x4", suites: [[XSALSA, 1]] }]);
    rigs.push(r);
    const g = r.t.gw.groups;
    await g.create("both", "chat");
    await g.add("both", "x1");
    await g.add("both", "x2");
    const spi = await keyed(r, "both", ["x1", "x2"]);
    assert.equal(r.t.events("group-keys-distributed").at(-1)!.suite, XSALSA, "the suite both put first");
    await g.add("both", "x3");
    const aes = await keyed(r, "both", ["x1", "x2", "x3"], spi);
    assert.equal(r.t.events("group-keys-distributed").at(-1)!.suite, AES, "the one suite all three registered");
    await g.create("none", "chat");
    await g.add("none", "x3");
    await g.add("none", "x4");
    await until(() => r.t.events("group-no-common-suite").length === 1, "the unkeyable group reported");
    assert.equal(g.currentSpi("none"), 0);
    assert.ok(aes);
  });

  test("a member cannot send with another member's sender index: the gateway drops the frame", async () => {
    const r = await rig([{ id: "s1" }, { id: "s2" }, { id: "s3" }]);
    rigs.push(r);
    const g = r.t.gw.groups;
    await g.create("idx", "chat");
    for (const m of ["s1", "s2", "s3"]) await g.add("idx", m);
    const spi = await keyed(r, "idx", ["s1", "s2", "s3"]);
    const s1 = r.dev("s1");
    const mine = s1.h.sas.find((s) => s.spi === spi)!.link.me_ as number;
    const other = (mine + 1) % 3;
    const before = s1.sent.length;
    // A frame sealed as member `other` would be (the key is shared): only the gateway's check stops it.
    const link = s1.h.sas.find((s) => s.spi === spi)!.link;
    link.me_ = other;
    s1.h.send(spi, text("posing"));
    link.me_ = mine;
    const forged = saDataIn(s1.sent.slice(before).find((f) => saDataIn(f))!)!;
    assert.equal(Math.floor(forged.seq / HI), other);
    await until(() => r.t.events("frame dropped").some((e) => /another member's sender index/.test(String(e.reason))), "the gateway's drop");
    await sendToGroup(r, "s1", spi, "honest", ["s2", "s3"]);
    for (const m of ["s2", "s3"]) assert.ok(!r.dev(m).inbox.includes("posing"));
  });

  test("the gateway counts the frames it relays: at 80% of the limit it gives the group a new key, before any member's own count asks", async () => {
    const r = await rig([{ id: "l1" }, { id: "l2" }, { id: "l3" }], { limit: 10 });
    rigs.push(r);
    const g = r.t.gw.groups;
    await g.create("busy", "chat");
    for (const m of ["l1", "l2", "l3"]) await g.add("busy", m);
    const old = await keyed(r, "busy", ["l1", "l2", "l3"]);
    // Three each: no member sends 8 (its own rekey point), but the group's frames reach 8.
    for (let i = 0; i < 3; i++) for (const [from, to] of [["l1", ["l2", "l3"]], ["l2", ["l1", "l3"]], ["l3", ["l1", "l2"]]] as const) await sendToGroup(r, from, old, `${from}-${i}`, [...to]);
    const fresh = await keyed(r, "busy", ["l1", "l2", "l3"], old);
    assert.match(String(r.t.events("group-rekey-due").at(-1)!.reason), /message limit/);
    await sendToGroup(r, "l1", fresh, "on the new key", ["l2", "l3"]);
  });

  test("a member and the gateway's count asking for a new key at once make one replacement", async () => {
    const r = await rig([{ id: "k1" }, { id: "k2" }], { limit: 10 });
    rigs.push(r);
    const g = r.t.gw.groups;
    await g.create("once", "chat");
    for (const m of ["k1", "k2"]) await g.add("once", m);
    const old = await keyed(r, "once", ["k1", "k2"]);
    // The 8th frame reaches the gateway's rekey point; k1's 9th send carries its own Rekey first.
    for (let i = 0; i < 9; i++) assert.equal(r.dev("k1").h.send(old, text(`k-${i}`)), true);
    await keyed(r, "once", ["k1", "k2"], old);
    await until(() => r.dev("k2").inbox.length === 9, "every message, across the rekey");
    assert.equal(r.t.events("group-keys-distributed").length, 2, "the first key and one replacement");
  });

  test("a member that closes the group's SA is left out until it registers again, and the others get a key it never had", async () => {
    const r = await rig([{ id: "y1" }, { id: "y2" }, { id: "y3" }]);
    rigs.push(r);
    const g = r.t.gw.groups;
    await g.create("quiet", "chat");
    for (const m of ["y1", "y2", "y3"]) await g.add("quiet", m);
    const old = await keyed(r, "quiet", ["y1", "y2", "y3"]);
    assert.equal(r.dev("y3").h.close(old), true);
    const fresh = await keyed(r, "quiet", ["y1", "y2"], old);
    assert.ok(!r.dev("y3").h.sas.some((s) => s.spi === fresh));
    // Registering again brings it back, with another new key.
    assert.equal(r.dev("y3").h.register(), true);
    await keyed(r, "quiet", ["y1", "y2", "y3"], fresh);
  });

  test("a member that does not confirm in time is left out, and the others get a key it was not given", async () => {
    const r = await rig([{ id: "z1" }, { id: "z2" }, { id: "z3" }], { answerTimeoutMs: 500 });
    rigs.push(r);
    // z3 takes every key but never confirms one (its SaConfirm is swallowed).
    const z3 = r.dev("z3").h;
    const send = z3.request_.bind(z3);
    z3.request_ = (m, answer) => (m.t === Msg.SaConfirm ? true : send(m, answer));
    const g = r.t.gw.groups;
    await g.create("slow", "chat");
    for (const m of ["z1", "z2", "z3"]) await g.add("slow", m);
    await until(() => r.t.events("group-confirm-timeout").length === 1, "the confirmation timeout");
    assert.equal(r.t.events("group-confirm-timeout")[0].devices, "z3");
    const spi = await keyed(r, "slow", ["z1", "z2"]);
    assert.ok(!z3.sas.some((s) => s.spi === spi), "z3 was not given the key the others use");
    await sendToGroup(r, "z1", spi, "without z3", ["z2"]);
  });

  test("a change made by keyproxy group in another process is applied by the running gateway", async () => {
    const r = await rig([{ id: "p1" }, { id: "p2" }, { id: "p3" }]);
    rigs.push(r);
    await r.t.gw.groups.create("ops", "chat");
    for (const m of ["p1", "p2", "p3"]) await r.t.gw.groups.add("ops", m);
    const old = await keyed(r, "ops", ["p1", "p2", "p3"]);
    // Another connection to the registry, as the CLI opens it.
    const other = await openTestRegistry(r.t.dataDir);
    try {
      assert.equal(await new KeyGroups(other).remove("ops", "p3"), true);
    } finally {
      await other.close();
    }
    await until(() => r.dev("p3").closed.some(([spi]) => spi === old), "p3's SA closed", 8000);
    await keyed(r, "ops", ["p1", "p2"], old);
  });
});

// ---- the --groups bundle itself, in the emulator (docs/EMULATOR.md) --------------------------------------

/** The group application, typed at each emulated handset's console. */
const EMU_APP = `
global.G = 0; global.GOT = []; global.CLOSED = [];
KP.onConnect = function (spi, peer) { if (peer.indexOf("band@") === 0) G = spi; };
KP.onMessage = function (d) { GOT.push(E.toString(d)); };
KP.onClose = function (spi, reason) { CLOSED.push([spi, reason]); };
1`;

test("puckjs, built with --groups, in the emulator: three members, each message to the others once, a member taken out is closed; no device uses a (key, counter block) twice", async () => {
  const built = await buildFirmware({ board: "puckjs", outDir: tempDir("kp-groups-build-"), groups: true });
  assert.ok(built.ok, built.problems.join("\n"));
  const t = await startGateway();
  const storage = tempDir("kp-groups-dev-");
  const uncaught: string[] = [];
  const ledgers = new Map<string, AesLedger>();
  const devs = new Map<string, EmulatedDevice>();
  try {
    for (const id of ["e1", "e2", "e3"]) {
      const dev = new EmulatedDevice({ board: "puckjs", storageDir: `${storage}/${id}`, gateway: t.gw.address, name: id });
      await provisionEmulated(dev, t.dataDir, id, "puckjs", t.gw.address, 3600, await testDatabaseOf(t.dataDir));
      dev.storage.write(".bootcde", built.code);
      const ledger = new AesLedger();
      dev.on("aes", (o: AesObservation) => ledger.observeDevice(o));
      dev.on("uncaught", (e: string) => uncaught.push(`${id}: ${e}`));
      ledgers.set(id, ledger);
      devs.set(id, dev);
      await dev.boot();
    }
    const d = (id: string) => devs.get(id) as EmulatedDevice;
    await until(() => [...devs.values()].every((x) => x.eval("KP.status().registered") === true), "every emulated handset registered", 15_000);
    for (const x of devs.values()) x.eval(EMU_APP);
    const g = t.gw.groups;
    await g.create("band", "chat");
    for (const id of ["e1", "e2", "e3"]) await g.add("band", id);
    const spiAt = (id: string) => d(id).eval("G") as number;
    await until(() => spiAt("e1") !== 0 && ["e2", "e3"].every((id) => spiAt(id) === spiAt("e1")), "the group key at all three", 15_000);
    const first = spiAt("e1");
    const got = (id: string) => d(id).eval("GOT") as string[];
    for (const [from, to] of [["e1", ["e2", "e3"]], ["e2", ["e1", "e3"]], ["e3", ["e1", "e2"]]] as const) {
      for (let i = 0; i < 3; i++) assert.equal(d(from).eval(`KP.send(G, E.toUint8Array("${from}-${i}"))`), true);
      await until(() => to.every((id) => [0, 1, 2].every((i) => got(id).includes(`${from}-${i}`))), `${from}'s messages delivered`, 15_000);
    }
    for (const id of ["e1", "e2", "e3"]) assert.equal(got(id).length, 6, `${id} got the others' six messages, once each`);

    await g.remove("band", "e3");
    await until(() => (d("e3").eval("CLOSED") as number[][]).some(([s, r]) => s === first && r === CloseReason.Removed), "e3 closed as removed", 15_000);
    await until(() => spiAt("e1") !== first && spiAt("e2") === spiAt("e1"), "a new key for e1 and e2", 15_000);
    assert.equal(d("e1").eval(`KP.send(G, E.toUint8Array("after"))`), true);
    await until(() => got("e2").includes("after"), "e2 got it", 15_000);
    assert.ok(!got("e3").includes("after"));
    assert.equal(d("e3").eval("KP.sas.length"), 0, "e3 holds no group key");

    for (const [id, ledger] of ledgers) {
      assert.deepEqual(ledger.unexpected, [], `${id} used AES only for CCM`);
      assert.deepEqual(ledger.reuses().map(describeReuse), [], `${id}: no (key, counter block) or (key, nonce) twice`);
    }
    assert.deepEqual(uncaught, []);
  } finally {
    for (const x of devs.values()) x.powerOff();
    await stopGateway(t);
    rmSync(storage, { recursive: true, force: true });
  }
});

test("a Puck.js built without --groups is offered a group key: its confirmation does not verify, it is left out and closed, and it never seals a group frame", async () => {
  const withGroups = await buildFirmware({ board: "puckjs", outDir: tempDir("kp-groups-build-"), groups: true });
  const without = await buildFirmware({ board: "puckjs", outDir: tempDir("kp-nogroups-build-") });
  assert.ok(withGroups.ok && without.ok);
  const t = await startGateway({ sessions: { answerTimeoutMs: 2000 } });
  const storage = tempDir("kp-groups-dev-");
  const devs = new Map<string, EmulatedDevice>();
  try {
    for (const [id, code] of [["n1", withGroups.code], ["n2", withGroups.code], ["old", without.code]] as const) {
      const dev = new EmulatedDevice({ board: "puckjs", storageDir: `${storage}/${id}`, gateway: t.gw.address, name: id });
      await provisionEmulated(dev, t.dataDir, id, "puckjs", t.gw.address, 3600, await testDatabaseOf(t.dataDir));
      dev.storage.write(".bootcde", code);
      devs.set(id, dev);
      await dev.boot();
    }
    const d = (id: string) => devs.get(id) as EmulatedDevice;
    await until(() => [...devs.values()].every((x) => x.eval("KP.status().registered") === true), "every emulated handset registered", 15_000);
    for (const x of devs.values()) x.eval(EMU_APP);
    const g = t.gw.groups;
    await g.create("band", "chat");
    for (const id of ["n1", "n2", "old"]) await g.add("band", id);
    await until(() => t.events("group-confirm-dropped").some((e) => e.device === "old"), "old's confirmation refused", 15_000);
    await until(() => g.currentSpi("band") !== 0 && ["n1", "n2"].every((id) => d(id).eval("G") === g.currentSpi("band")), "the group keyed without old", 15_000);
    assert.equal(t.events("group-up").at(-1)!.members, "n1,n2");
    await until(() => d("old").eval("KP.sas.length") === 0, "old holds no group SA", 15_000);
    assert.equal(d("old").eval("G"), 0, "old never had a group SA up");
    // Its renewal, with the same firmware, does not bring it back (and rekey the group) for nothing.
    const offers = t.events("group-keys-distributed").length;
    const renewals = t.events("renewed").filter((e) => e.device === "old").length;
    assert.equal(d("old").eval("KP.register()"), true);
    await until(() => t.events("renewed").filter((e) => e.device === "old").length > renewals, "old renewed", 15_000);
    assert.equal(t.events("group-keys-distributed").length, offers, "no new key offered for old's renewal");
    assert.equal(d("n1").eval(`KP.send(G, E.toUint8Array("hi"))`), true);
    await until(() => (d("n2").eval("GOT") as string[]).includes("hi"), "n2 got it", 15_000);
  } finally {
    for (const x of devs.values()) x.powerOff();
    await stopGateway(t);
    rmSync(storage, { recursive: true, force: true });
  }
});
