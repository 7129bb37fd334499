// The BLE bridge protocol's messages (gateway/ble/bridge-protocol.ts), field by field: every message
// encodes and decodes to itself, and each field that is not what the protocol says is refused by a
// BridgeProtocolError that names it (test/ble-bridge.test.ts runs the protocol end to end, and
// fuzz/targets/bridge.ts feeds the decoders random bytes).

import { test } from "node:test";
import assert from "node:assert/strict";
import * as cbor from "../gateway/encoding/cbor.ts";
import {
  BRIDGE_NONCE_BYTES, BridgeMsg, BridgeProtocolError, decodeChallenge, decodeHello, decodeMessage, decodeProof, encodeChallenge, encodeHello, encodeMessage, encodeProof, isBridgeName, MAX_BRIDGE_NAME, type BridgeMessage,
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
  for (const a of ["", "x".repeat(5), "c0ffee00000g", "c0:ff:ee 00", "a".repeat(65), "c0ffee\x1b[2J", 7]) {
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
  for (const address of ["c0ffee00000z", "", 1]) refused(() => radio([good[0], address, ...good.slice(2)]), "radio: address is not 1-64 hex digits and colons");
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
  assert.ok(isBridgeName("n".repeat(MAX_BRIDGE_NAME)) && isBridgeName("a.b_c-1"));
  refused(() => decodeHello(cbor.encode([1, "porch", nonce.subarray(1)])), `hello nonce is not ${BRIDGE_NONCE_BYTES} bytes`);
  refused(() => decodeChallenge(cbor.encode([nonce, proof.subarray(1)])), "gateway proof is not 32 bytes");
  refused(() => decodeChallenge(cbor.encode(["nonce", proof])), `challenge nonce is not ${BRIDGE_NONCE_BYTES} bytes`);
  refused(() => decodeChallenge(cbor.encode([nonce])), "challenge: not an array of 2");
  refused(() => decodeProof(cbor.encode([new Uint8Array(33)])), "bridge proof is not 32 bytes");
  refused(() => decodeProof(cbor.encode({ proof })), "proof: not an array of 1");
});
