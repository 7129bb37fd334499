// The BLE bridge protocol's messages (gateway/ble/bridge-protocol.ts), field by field: every message
// encodes and decodes to itself, and each field that is not what the protocol says is refused by a
// BridgeProtocolError that names it (test/ble-bridge.test.ts runs the protocol end to end, and
// fuzz/targets/bridge.ts feeds the decoders random bytes).

import { test } from "node:test";
import assert from "node:assert/strict";
import * as cbor from "../gateway/encoding/cbor.ts";
import { createHmac, hkdfSync } from "node:crypto";
import {
  BRIDGE_NONCE_BYTES, BridgeMsg, BridgeProtocolError, decodeChallenge, decodeHello, decodeMessage, decodeProof, encodeChallenge, encodeHello, encodeMessage, encodeProof, frameMessage, isBridgeName,
  MAX_BRIDGE_NAME, MAX_MESSAGE, MessageReader, OpeningChannel, proofOf, sameProof, SealingChannel, sessionKeys, type BridgeMessage,
} from "../gateway/ble/bridge-protocol.ts";

const refused = (f: () => unknown, message: string) => assert.throws(f, (e: unknown) => e instanceof BridgeProtocolError && (e as Error).message === message);
const nonce = new Uint8Array(BRIDGE_NONCE_BYTES).fill(7);
const proof = new Uint8Array(32).fill(9);
/** What the CBOR decoder says of bytes that are not CBOR, as the refusals quote it. */
function cborError(b: Uint8Array): string {
  try {
    cbor.decode(b);
  } catch (e) {
    return (e as Error).message;
  }
  throw new Error("that was CBOR");
}
const NOT_CBOR = Uint8Array.of(0xff);

test("every message decodes to what was encoded", () => {
  const messages: BridgeMessage[] = [
    { t: BridgeMsg.Open, link: 0, address: "c0ffee000001" },
    { t: BridgeMsg.Open, link: 0xffffffff, address: "C0:FF:EE:00:00:01" },
    { t: BridgeMsg.Data, link: 5, bytes: new Uint8Array([1, 2, 3]) },
    { t: BridgeMsg.Close, link: 5 },
    { t: BridgeMsg.Radio, radio: { name: "kp-porch", address: "c0ffee000001", connected: true, rssi: -61, lastSeen: "2026-12-07T12:00:00.000Z" } },
  ];
  for (const m of messages) assert.deepEqual(decodeMessage(encodeMessage(m)), m);
  assert.deepEqual(decodeHello(encodeHello("porch", nonce)), { v: 1, name: "porch", nonce });
  assert.deepEqual(decodeChallenge(encodeChallenge({ nonce, proof })), { nonce, proof });
  assert.deepEqual(decodeProof(encodeProof({ proof })), { proof });
});

test("a sealed message with a field that is not the protocol's is refused by name", () => {
  const raw = (o: Record<string, unknown>) => cbor.encode(o);
  refused(() => decodeMessage(NOT_CBOR), `not CBOR: ${cborError(NOT_CBOR)}`);
  refused(() => decodeMessage(cbor.encode([1, 2])), "a message is not a map");
  refused(() => decodeMessage(raw({ t: 9, l: 1 })), "unknown message type 9");
  for (const l of [-1, 1.5, 0x100000000, "1", undefined]) refused(() => decodeMessage(raw({ t: BridgeMsg.Close, l })), "link id is not a whole number 0 to 2^32-1");
  // An address is what a radio calls a handset: hex digits and colons, 1 to 64 of them.
  for (const a of ["", "x".repeat(5), "x0ffee000001", "c0ffee00000g", "c0:ff:ee 00", "a".repeat(65), "c0ffee\x1b[2J", 7]) {
    refused(() => decodeMessage(raw({ t: BridgeMsg.Open, l: 1, a })), "open: address is not 1-64 hex digits and colons");
  }
  assert.equal((decodeMessage(raw({ t: BridgeMsg.Open, l: 1, a: "a".repeat(64) })) as { address: string }).address.length, 64);
  for (const b of [undefined, new Uint8Array(0), "bytes"]) refused(() => decodeMessage(raw({ t: BridgeMsg.Data, l: 1, b })), "data: no bytes");
  const radio = (r: unknown) => decodeMessage(raw({ t: BridgeMsg.Radio, r }));
  const good = ["kp-porch", "c0ffee000001", true, -61, "2026-12-07T12:00:00.000Z"];
  refused(() => radio(good.slice(0, 4)), "radio: not [name, address, connected, rssi, lastSeen]");
  refused(() => radio("kp-porch"), "radio: not [name, address, connected, rssi, lastSeen]");
  for (const name of [5, "n".repeat(65)]) refused(() => radio([name, ...good.slice(1)]), "radio: name is not a string of at most 64");
  assert.equal((radio(["n".repeat(64), ...good.slice(1)]) as { radio: { name: string } }).radio.name.length, 64);
  for (const address of ["c0ffee00000z", "zc0ffee000001", "", 1]) refused(() => radio([good[0], address, ...good.slice(2)]), "radio: address is not 1-64 hex digits and colons");
  for (const [i, v] of [[2, "yes"], [3, -61.5], [3, "-61"], [4, "yesterday"], [4, 0]] as const) {
    const r = [...good];
    r[i] = v;
    refused(() => radio(r), "radio: connected, rssi or lastSeen of the wrong type");
  }
});

test("the handshake's messages: the version, the bridge's name, and each nonce and proof at its length", () => {
  refused(() => decodeHello(cbor.encode([1, "porch"])), "hello: not an array of 3");
  refused(() => decodeHello(NOT_CBOR), `hello: not CBOR (${cborError(NOT_CBOR)})`);
  refused(() => decodeHello(cbor.encode([2, "porch", nonce])), "bridge protocol version 2 (this gateway speaks 1)");
  for (const name of ["", "ble", "a b", "n".repeat(MAX_BRIDGE_NAME + 1), "evil\x1b[2J", 5]) {
    refused(() => decodeHello(cbor.encode([1, name, nonce])), `bridge name is not 1-${MAX_BRIDGE_NAME} letters, digits, . _ - (nor "ble")`);
  }
  assert.ok(isBridgeName("n".repeat(MAX_BRIDGE_NAME)) && isBridgeName("a.b_c-1") && isBridgeName("p"));
  // A value that is no string but reads as a name when made one: still no name.
  assert.equal(isBridgeName({ toString: () => "porch", length: 5 }), false);
  assert.equal(isBridgeName(["porch"]), false);
  refused(() => decodeHello(cbor.encode([1, ["porch"], nonce])), `bridge name is not 1-${MAX_BRIDGE_NAME} letters, digits, . _ - (nor "ble")`);
  refused(() => decodeHello(cbor.encode([1, "porch", nonce.subarray(1)])), `hello nonce is not ${BRIDGE_NONCE_BYTES} bytes`);
  refused(() => decodeChallenge(cbor.encode([nonce, proof.subarray(1)])), "gateway proof is not 32 bytes");
  refused(() => decodeChallenge(cbor.encode(["nonce", proof])), `challenge nonce is not ${BRIDGE_NONCE_BYTES} bytes`);
  refused(() => decodeChallenge(cbor.encode([nonce])), "challenge: not an array of 2");
  refused(() => decodeProof(cbor.encode([new Uint8Array(33)])), "bridge proof is not 32 bytes");
  refused(() => decodeProof(cbor.encode({ proof })), "proof: not an array of 1");
});

// ---- keys, proofs and the sealed channel -------------------------------------------------------

const bridgeNonce = new Uint8Array(BRIDGE_NONCE_BYTES).fill(1);
const gatewayNonce = new Uint8Array(BRIDGE_NONCE_BYTES).fill(2);
const bridgeKey = new Uint8Array(32).map((_, i) => i);

test("each side's proof is HMAC-SHA256 under the bridge key over its own label, the name and both nonces: one side's is never the other's", () => {
  // The construction as the protocol states it, written out here on its own.
  const expected = (side: string) => new Uint8Array(createHmac("sha256", bridgeKey).update(`keyproxy bridge v1 ${side} proof\0porch\0`).update(bridgeNonce).update(gatewayNonce).digest());
  const gateway = proofOf("gateway", bridgeKey, "porch", bridgeNonce, gatewayNonce);
  const bridge = proofOf("bridge", bridgeKey, "porch", bridgeNonce, gatewayNonce);
  assert.deepEqual(gateway, expected("gateway"));
  assert.deepEqual(bridge, expected("bridge"));
  assert.equal(sameProof(gateway, bridge), false, "a gateway's proof sent back is no bridge's proof");
  assert.equal(sameProof(gateway, proofOf("gateway", bridgeKey, "porch2", bridgeNonce, gatewayNonce)), false, "the name is in it");
  assert.equal(sameProof(gateway, proofOf("gateway", bridgeKey, "porch", gatewayNonce, bridgeNonce)), false, "so is each nonce in its place");
  assert.equal(sameProof(gateway, proofOf("gateway", new Uint8Array(32), "porch", bridgeNonce, gatewayNonce)), false, "and the key");
  assert.equal(sameProof(gateway, new Uint8Array(gateway)), true);
  assert.equal(sameProof(gateway, gateway.subarray(0, 31)), false, "a shorter proof is no proof (and does not throw)");
});

test("the session keys: HKDF-SHA256 of the bridge key, salted with both nonces, bound to the name; one key per direction", () => {
  const okm = new Uint8Array(hkdfSync("sha256", bridgeKey, Buffer.concat([bridgeNonce, gatewayNonce]), "keyproxy bridge v1 keys\0porch", 64));
  const keys = sessionKeys(bridgeKey, "porch", bridgeNonce, gatewayNonce);
  assert.deepEqual(keys, { toGateway: okm.slice(0, 32), toBridge: okm.slice(32) });
  assert.notDeepEqual(keys.toGateway, keys.toBridge);
  assert.notDeepEqual(sessionKeys(bridgeKey, "porch2", bridgeNonce, gatewayNonce).toGateway, keys.toGateway);
  assert.notDeepEqual(sessionKeys(bridgeKey, "porch", gatewayNonce, bridgeNonce).toGateway, keys.toGateway);
});

test("the sealed channel: messages open in order, once each; a replay, a gap, a forgery or a wrong shape is refused and the counter stays", () => {
  const { toGateway, toBridge } = sessionKeys(bridgeKey, "porch", bridgeNonce, gatewayNonce);
  const seal = new SealingChannel(toGateway);
  const open = new OpeningChannel(toGateway);
  const plain = (i: number) => encodeMessage({ t: BridgeMsg.Close, link: i });
  const wires = [0, 1, 2, 3].map((i) => seal.seal(plain(i)));
  assert.deepEqual((cbor.decode(wires[2]) as unknown[])[0], 2, "the counter goes up by one");
  assert.deepEqual(open.open(wires[0]), plain(0));
  assert.deepEqual(open.open(wires[1]), plain(1));
  refused(() => open.open(wires[0]), "replayed: counter 0, expected 2");
  refused(() => open.open(wires[1]), "replayed: counter 1, expected 2");
  refused(() => open.open(wires[3]), "out of order: counter 3, expected 2");
  refused(() => new OpeningChannel(toBridge).open(wires[0]), "forged or altered: message 0 does not open under the session key");
  // The counter is in the nonce and the associated data: the same body under another counter does not open.
  const body = (cbor.decode(wires[2]) as unknown[])[1] as Uint8Array;
  refused(() => open.open(cbor.encode([2, (cbor.decode(wires[3]) as unknown[])[1]])), "forged or altered: message 2 does not open under the session key");
  for (const n of [-1, 1.5, "2", null]) refused(() => open.open(cbor.encode([n, body])), "sealed message: counter is not a whole number");
  for (const b of [body.subarray(0, 15), "body", 2]) refused(() => open.open(cbor.encode([2, b])), "sealed message: too short");
  refused(() => open.open(cbor.encode([2])), "sealed message: not an array of 2");
  refused(() => open.open(cbor.encode([2, body, 0])), "sealed message: not an array of 2");
  assert.deepEqual(open.open(wires[2]), plain(2), "after all that, the next message still opens");
  assert.deepEqual(open.open(wires[3]), plain(3));

  // An empty plaintext seals to the tag alone, 16 bytes, which is not too short.
  const empty = new SealingChannel(toBridge).seal(new Uint8Array(0));
  assert.equal(((cbor.decode(empty) as unknown[])[1] as Uint8Array).length, 16);
  assert.deepEqual(new OpeningChannel(toBridge).open(empty), new Uint8Array(0));
});

test("framing: a 4-byte length and the message; a stream cut anywhere gives the same messages; more than 64 KiB is refused", () => {
  const messages = [Uint8Array.of(1), new Uint8Array(300).fill(5), new Uint8Array(0), new Uint8Array(MAX_MESSAGE).fill(9)];
  const stream = Buffer.concat(messages.map(frameMessage));
  assert.deepEqual([...stream.subarray(0, 5)], [0, 0, 0, 1, 1]);
  for (const cut of [1, 3, 4, 5, 7, 200, 310, 4000]) {
    const reader = new MessageReader();
    const got: Uint8Array[] = [];
    for (let i = 0; i < stream.length; i += cut) got.push(...reader.push(stream.subarray(i, i + cut)));
    assert.deepEqual(got.map((m) => m.length), messages.map((m) => m.length), `in pieces of ${cut}`);
    assert.deepEqual(got, messages, `in pieces of ${cut}`);
  }
  const tooLong = Buffer.alloc(4);
  tooLong.writeUInt32BE(MAX_MESSAGE + 1);
  assert.throws(() => new MessageReader().push(tooLong), (e: unknown) => e instanceof BridgeProtocolError && (e as Error).message === `a message of ${MAX_MESSAGE + 1} bytes (at most ${MAX_MESSAGE})`);
  const reader = new MessageReader();
  assert.deepEqual(reader.push(frameMessage(Uint8Array.of(7, 8)).subarray(0, 5)), [], "a message not yet whole waits");
  assert.deepEqual(reader.push(Buffer.of(8)), [Uint8Array.of(7, 8)]);
});
