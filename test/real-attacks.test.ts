// The real-interpreter tier, failure paths: a gateway answer with a wrong tag, malformed, tampered
// and replayed frames (from a relay standing where an attacker on the link would), and a power cut
// between persisting the join counter and sending the join. The Puck.js bundle, unmodified.
import assert from "node:assert/strict";
import { decode } from "../firmware/cbor.ts";
import { realRig, realTest } from "./support/real.ts";
import { startRelay } from "./support/relay.ts";

type Status = { state: string; registered: boolean; joins: number; dropped: number; sas: number };

const JOIN_REQUEST = 1;
const JOIN_ACCEPT = 2;
const LINK = 4;
/** The firmware's link drop reasons (firmware/proto/link.ts Drop). */
const REPLAYED = 1;
const FORGED = 4;

const typeOf = (payload: Uint8Array) => (decode(payload) as unknown[])[0];

realTest("puckjs: a JoinAccept with a wrong tag, malformed, tampered and replayed frames are dropped and change nothing", ["puckjs"], async () => {
  const rig = await realRig();
  const relay = await startRelay(rig.gw.port);
  try {
    // The first JoinAccept's tag is changed in flight (its frame CRC made good again).
    let accepts = 0;
    relay.onDown = (p) => {
      if (typeOf(p) !== JOIN_ACCEPT || accepts++ > 0) return p;
      const bad = new Uint8Array(p);
      bad[bad.length - 1] ^= 1; // the tag is the last field
      return bad;
    };
    const dev = await rig.handset("puckjs", "p1", { gateway: relay.address });
    await dev.waitFor(/^KP drop: bad accept$/, 30_000);
    // Not linked on a forged answer: it times out and joins again with the next counter.
    await dev.waitFor(/^KP registered for/, 30_000);
    const joins = rig.gw.events("joined").filter((e) => e.device === "p1").map((e) => e.counter);
    assert.deepEqual(joins, [1, 2], "the forged accept was not taken: a second join, with a fresh counter");
    const before = await dev.eval<Status>("KP.status()");
    assert.equal(before.state, "linked");

    // A Link frame the gateway sent (the RegisterOk), kept for the replay and the tampering.
    const link = relay.frames.filter((f) => f.dir === "down" && typeOf(f.payload) === LINK).at(-1)!.payload;
    assert.ok(link[2] < 20, "its sequence number is one CBOR byte");
    const mark = dev.lines.length;
    // Malformed: a well-framed payload that is not CBOR of a message.
    relay.injectDown(relay.frame(new Uint8Array([0xff, 0x00, 0x13])));
    // Replayed: the same frame again.
    relay.injectDown(relay.frame(link));
    // Tampered header: a fresh sequence number on the same ciphertext (the nonce depends on it).
    const reseq = new Uint8Array(link);
    reseq[2] += 3;
    relay.injectDown(relay.frame(reseq));
    // Tampered body: one bit of the ciphertext, under yet another fresh sequence number.
    const flipped = new Uint8Array(link);
    flipped[2] += 4;
    flipped[flipped.length - 3] ^= 0x40;
    relay.injectDown(relay.frame(flipped));
    // Noise with a bad CRC: the deframer hunts past it.
    relay.injectDown(new Uint8Array([0xa5, 0x00, 0x02, 0x01, 0x02, 0xde, 0xad, 0xbe, 0xef]));
    await dev.waitFor(/^KP drop: link 4$/, 10_000, mark);
    const drops = () => dev.lines.slice(mark).filter((l) => l.startsWith("KP drop:"));
    for (let i = 0; i < 50 && drops().length < 4; i++) await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(drops().map((l) => l.replace(/^KP drop: (cbor|msg).*$/, "KP drop: malformed")).sort(),
      ["KP drop: link " + FORGED, "KP drop: link " + FORGED, "KP drop: link " + REPLAYED, "KP drop: malformed"].sort());
    const after = await dev.eval<Status>("KP.status()");
    assert.equal(after.state, "linked", "still linked");
    assert.equal(after.registered, true, "still registered");
    assert.equal(after.joins, before.joins, "no new join");
    assert.equal(after.dropped, before.dropped + 4, "each bad frame counted once");
    // The link still works: a renewal goes through.
    assert.equal(await dev.eval("KP.register()"), true);
    await dev.waitFor(/^KP registered for/, 15_000, mark);
    assert.ok(rig.gw.events("renewed").some((e) => e.device === "p1"));
  } finally {
    await relay.close();
    await rig.stop();
  }
}, 300_000);

realTest("puckjs: a power cut between persisting the join counter and sending the join never reuses a counter", ["puckjs"], async () => {
  const rig = await realRig();
  const relay = await startRelay(rig.gw.port);
  try {
    const dev = await rig.handset("puckjs", "p2", { gateway: relay.address });
    await dev.waitFor(/^KP registered for/, 30_000);
    // A boot file of the test's (not the bundle's): once kp.ctr holds 2 and is durable, the power
    // fails. The device prints a mark and spins, so not one more statement of the firmware runs,
    // and the harness cuts the power on that mark.
    await dev.eval(`require("Storage").write(".boot1", ${JSON.stringify(
      `(function(){var S=require("Storage"),w=S.write;S.write=function(n,d){var r=w.apply(S,arguments);if(n=="kp.ctr"&&String(d)=="2"&&S.read("kp.ctr")=="2"){print("TEST power cut at kp.ctr=2");while(1);}return r;};})();`,
    )})`);
    await dev.powerOff();
    const mark = dev.lines.length;
    await dev.start(false);
    await dev.waitFor(/^TEST power cut at kp\.ctr=2$/, 30_000, mark);
    await dev.powerOff();
    assert.equal(dev.lines.slice(mark).some((l) => /KP joined/.test(l)), false);
    await dev.start();
    await dev.waitFor(/^KP registered for/, 30_000);
    assert.equal(await dev.eval(`require("Storage").read("kp.ctr")`), "3", "the next boot used the next counter");
    const sent = relay.frames.filter((f) => f.dir === "up" && typeOf(f.payload) === JOIN_REQUEST).map((f) => decode(f.payload) as unknown[]);
    // JoinRequest: [1, id, ctr, nonce, suite, tag]
    assert.deepEqual(sent.map((m) => m[2]), [1, 3], "counter 2 never left the device; no counter was sent twice");
    const nonces = sent.map((m) => Buffer.from(m[3] as Uint8Array).toString("hex"));
    assert.equal(new Set(nonces).size, nonces.length, "every join nonce is fresh");
    assert.deepEqual(rig.gw.events("joined").filter((e) => e.device === "p2").map((e) => e.counter), [1, 3]);
  } finally {
    await relay.close();
    await rig.stop();
  }
}, 300_000);
