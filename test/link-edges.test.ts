// The link and SA frames (firmware/proto/link.ts) where proto.test.ts's round trips do not reach:
// each reason a received frame is dropped, the end of the sequence space (past it a sender would
// reuse a nonce under the same key), authentic frames whose content is not an inner message, and
// the wiping of a link's keys. Written for the mutants that survived `npm run mutation --
// firmware/proto/link.ts` (docs/MUTATION.md).
import { test } from "node:test";
import assert from "node:assert/strict";
import * as deviceCbor from "../firmware/cbor.ts";
import { SUITE_AES_CCM_16_64_128 as AES } from "../firmware/crypto/types.ts";
import { crypt, DROP_REASONS, MAX_SEQ, newLink, openMessage, sealFrame, sealMessage, wipeLink, type Link } from "../firmware/proto/link.ts";
import { encodeMessage, Msg, type LinkFrame } from "../firmware/proto/messages.ts";
import { nodeCrypto } from "../gateway/crypto/symmetric.ts";

const c = nodeCrypto();
const REPLAYED = 1;
const TOO_OLD = 2;
const BAD_SEQ = 3;
const FORGED = 4;
const BAD_CONTENT = 5;
const OUTER_IN_LINK = 6;

/** Both ends of one link: the device seals, the gateway opens. */
function pair(): { device: Link; gateway: Link } {
  const keys = () => ({ suite: AES, up: c.random(16), down: c.random(16) });
  const k = keys();
  return { device: newLink({ ...k, up: new Uint8Array(k.up), down: new Uint8Array(k.down) }, true), gateway: newLink(k, false) };
}

/** The [seq, sealed] of an encoded Link frame. */
function linkFrame(encoded: Uint8Array): LinkFrame {
  const w = deviceCbor.decode(encoded) as [number, number, Uint8Array];
  return { t: Msg.Link, seq: w[1], sealed: w[2] };
}

test("each drop reason: replayed, older than the window, an invalid sequence number, forged", () => {
  const { device, gateway } = pair();
  const frames = Array.from({ length: 40 }, (_, i) => linkFrame(sealFrame(c, deviceCbor, device, 0, new Uint8Array([i]))));
  assert.deepEqual(crypt(c, deviceCbor, gateway, 0, frames[0].seq, frames[0].sealed, true), new Uint8Array([0]));
  assert.equal(crypt(c, deviceCbor, gateway, 0, frames[0].seq, frames[0].sealed, true), REPLAYED);
  const last = frames[39];
  assert.deepEqual(crypt(c, deviceCbor, gateway, 0, last.seq, last.sealed, true), new Uint8Array([39]));
  assert.equal(crypt(c, deviceCbor, gateway, 0, frames[1].seq, frames[1].sealed, true), TOO_OLD);
  assert.equal(crypt(c, deviceCbor, gateway, 0, 0, frames[2].sealed, true), BAD_SEQ);
  assert.equal(crypt(c, deviceCbor, gateway, 0, 2 ** 32, frames[2].sealed, true), BAD_SEQ);
  const forged = new Uint8Array(frames[20].sealed);
  forged[0] ^= 1;
  assert.equal(crypt(c, deviceCbor, gateway, 0, frames[20].seq, forged, true), FORGED);
  // None of the drops moved the window: the genuine frame 20 still opens.
  assert.deepEqual(crypt(c, deviceCbor, gateway, 0, frames[20].seq, frames[20].sealed, true), new Uint8Array([20]));
});

test("the last sequence number is sent once; after it, sealing refuses instead of reusing a nonce", () => {
  const { device, gateway } = pair();
  device.txSeq_ = MAX_SEQ - 1;
  const f = linkFrame(sealFrame(c, deviceCbor, device, 0, new Uint8Array([1])));
  assert.equal(f.seq, MAX_SEQ);
  assert.deepEqual(crypt(c, deviceCbor, gateway, 0, f.seq, f.sealed, true), new Uint8Array([1]));
  assert.throws(() => sealFrame(c, deviceCbor, device, 0, new Uint8Array([2])), /^Error: link: sequence exhausted$/);
  assert.equal(device.txSeq_, MAX_SEQ, "the refusal changed nothing");
});

test("an authentic frame whose content is not an inner message: malformed, or an outer message", () => {
  const { device, gateway } = pair();
  const notCbor = linkFrame(sealFrame(c, deviceCbor, device, 0, new Uint8Array([0xff, 0x00])));
  assert.equal(openMessage(c, deviceCbor, gateway, notCbor), BAD_CONTENT);
  const notAMessage = linkFrame(sealFrame(c, deviceCbor, device, 0, deviceCbor.encode([999, 1])));
  assert.equal(openMessage(c, deviceCbor, gateway, notAMessage), BAD_CONTENT);
  const outer = linkFrame(sealFrame(c, deviceCbor, device, 0, deviceCbor.encode(encodeMessage({ t: Msg.JoinReject }))));
  assert.equal(openMessage(c, deviceCbor, gateway, outer), OUTER_IN_LINK);
  // An inner message opens as itself.
  const inner = linkFrame(sealMessage(c, deviceCbor, device, { t: Msg.DeregisterRequest, rid: 5 }));
  assert.deepEqual(openMessage(c, deviceCbor, gateway, inner), { t: Msg.DeregisterRequest, rid: 5 });
});

test("every drop reason has its own sentence for the logs", () => {
  const sentences = [1, 2, 3, 4, 5, 6, 7, 8].map((d) => DROP_REASONS[d]);
  for (const [i, s] of sentences.entries()) assert.ok(typeof s === "string" && s.length > 10, `reason ${i + 1}`);
  assert.equal(new Set(sentences).size, sentences.length);
});

test("wipeLink zeroes both keys", () => {
  const { device } = pair();
  wipeLink(device);
  assert.ok(device.keys_.up.every((b) => b === 0) && device.keys_.down.every((b) => b === 0));
});
