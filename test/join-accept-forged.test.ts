// A handset takes a JoinAccept only with the tag its own root key predicts (firmware/handset.ts,
// "bad accept"). Nothing else would stop it: the accept's nonce is public and the link keys come from
// the root key, so without the check a forged accept would move the device to "linked" on an answer
// nobody authenticated. The firmware's own Handset engine in Node, behind a relay standing where an
// attacker on the link would (test/support/relay.ts).
import { test } from "node:test";
import assert from "node:assert/strict";
import * as gcbor from "../gateway/encoding/cbor.ts";
import type { Gateway } from "../gateway/gateway.ts";
import { Msg } from "../firmware/proto/messages.ts";
import { nodeHandset, provision, startGateway, until } from "./support/harness.ts";
import { startRelay } from "./support/relay.ts";
import { stopGateway } from "./support/session-rig.ts";

const isJoinAccept = (payload: Uint8Array) => (gcbor.decode(payload) as unknown[])[0] === Msg.JoinAccept;

/** The accept with one bit of its tag (the last field, so the last byte) flipped. */
function withForgedTag(accept: Uint8Array): Uint8Array {
  const forged = new Uint8Array(accept);
  forged[forged.length - 1] ^= 0x01;
  return forged;
}

test("a JoinAccept whose tag is wrong is dropped: the device stays joining, and the genuine accept still links it", async () => {
  const t = await startGateway();
  const relay = await startRelay(t.gw.address.port);
  // The gateway's genuine accept is held back; the device gets a forged copy instead.
  let genuine: Uint8Array | undefined;
  relay.onDown = (p) => {
    if (!isJoinAccept(p) || genuine) return p;
    genuine = p;
    return withForgedTag(p);
  };
  // The handset dials the relay instead of the gateway.
  const viaRelay = { address: { host: "127.0.0.1", port: relay.port } } as Gateway;
  const dev = await nodeHandset(viaRelay, "h1", await provision(t.gw, "h1"));
  try {
    // Either outcome of the forged accept ends the wait: a drop, or (without the check) a link.
    await until(() => dev.h.status().dropped > 0 || dev.h.status().state !== "joining", "the forged accept to arrive");
    assert.equal(dev.h.status().state, "joining", "a forged accept does not link the device");
    assert.equal(dev.h.status().dropped, 1);
    assert.ok(dev.lines.includes("KP drop: bad accept"), dev.lines.join("\n"));
    assert.equal(dev.sent.length, 1, "nothing was sent on the strength of the forged accept (only the JoinRequest)");

    // The genuine accept, arriving late but within the join timeout, is still taken: the drop changed
    // nothing the device holds for this join.
    relay.injectDown(relay.frame(genuine!));
    await until(() => dev.h.status().registered, "the device to register after the genuine accept");
    assert.deepEqual(t.events("joined").map((e) => e.counter), [1], "one join: the forged accept cost no counter");
  } finally {
    dev.close();
    await relay.close();
    await stopGateway(t);
  }
});
