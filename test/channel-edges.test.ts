// The pairwise channel at its edges (gateway/fleet/channel.ts; docs/MUTATION.md): every refusal of the
// message parser and of the plaintext reader with the reason an operator reads, each field at and past
// its limit, the direction checks of open(), the reset body, the ML-KEM halves (an invalid key, the
// order of the combined secret) and the key schedule recomputed from docs/PROTOCOL.md §9.

import { test } from "node:test";
import assert from "node:assert/strict";
import { createCipheriv, createHash, hkdfSync, randomBytes } from "node:crypto";
import { decode, encode } from "../gateway/encoding/cbor.ts";
import {
  ChannelError,
  combinedSecret,
  directionKey,
  kemDecapsulate,
  kemEncapsulate,
  kemKeyPair,
  MAX_SEQ,
  openAnswerBody,
  openRequestBody,
  PairwiseChannel,
  parseChannelMessage,
  readOpenAnswer,
  readOpenRequest,
  readResetBody,
  transcriptHash,
} from "../gateway/fleet/channel.ts";

const T0 = 1_800_000_000;
const ID = new Uint8Array(16).fill(7);

function channels(): { a: PairwiseChannel; b: PairwiseChannel; up: Buffer } {
  const up = Buffer.from(randomBytes(32));
  const down = Buffer.from(randomBytes(32));
  const common = { channelId: ID, peerCert: new Uint8Array(1), createdAt: T0, lifetime: 100 };
  return {
    a: new PairwiseChannel({ ...common, self: "a.example", peer: "b.example", sendKey: Buffer.from(up), receiveKey: Buffer.from(down), initiated: true }),
    b: new PairwiseChannel({ ...common, self: "b.example", peer: "a.example", sendKey: Buffer.from(down), receiveKey: Buffer.from(up), initiated: false }),
    up,
  };
}

const header = (over: [number, unknown][] = [], drop: number[] = []): Map<number, unknown> => {
  const h = new Map<number, unknown>([[1, 3], [4, ID], [-65537, "a.example"], [-65538, "b.example"], [-65539, 1]]);
  for (const k of drop) h.delete(k);
  for (const [k, v] of over) h.set(k, v);
  return h;
};

/** A COSE_Encrypt0_Tagged from its three parts, as the wire carries it. */
const message = (protectedBytes: unknown, unprotected: unknown = new Map(), ciphertext: unknown = new Uint8Array(16)): Uint8Array =>
  Uint8Array.of(0xd0, ...encode([protectedBytes, unprotected, ciphertext]));

/** A message sealed by hand under `key` as §9 describes, around any plaintext bytes. */
function sealedByHand(key: Buffer, plaintext: Uint8Array, seq = 1): Uint8Array {
  const protectedBytes = encode(header([[-65539, seq]]));
  const nonce = Buffer.alloc(12);
  nonce.writeUInt32BE(seq, 8);
  const c = createCipheriv("aes-256-gcm", key, nonce);
  c.setAAD(encode(["Encrypt0", protectedBytes, new Uint8Array(0)]));
  return message(protectedBytes, new Map(), new Uint8Array(Buffer.concat([c.update(plaintext), c.final(), c.getAuthTag()])));
}

const refusedAs = (f: () => unknown, code: "malformed" | "decrypt-failed", why: RegExp) =>
  assert.throws(f, (e: unknown) => e instanceof ChannelError && e.code === code && why.test(e.message), String(why));

test("parseChannelMessage: each refusal with its reason", () => {
  const ok = encode(header());
  assert.equal(parseChannelMessage(message(ok)).seq, 1, "the edge itself parses: a ciphertext of just its tag");
  refusedAs(() => parseChannelMessage(new Uint8Array(0)), "malformed", /not a channel message \(expected CBOR tag 16/);
  refusedAs(() => parseChannelMessage(Uint8Array.of(0xd2, 0x80)), "malformed", /not a channel message/);
  refusedAs(() => parseChannelMessage(Uint8Array.of(0xd0, ...encode([ok, new Map()]))), "malformed", /array of 3 items/);
  refusedAs(() => parseChannelMessage(Uint8Array.of(0xd0, ...encode([ok, new Map(), new Uint8Array(16), 1]))), "malformed", /array of 3 items/);
  refusedAs(() => parseChannelMessage(Uint8Array.of(0xd0, ...encode("x"))), "malformed", /array of 3 items/);
  refusedAs(() => parseChannelMessage(message("header")), "malformed", /protected header must be a byte string/);
  refusedAs(() => parseChannelMessage(Uint8Array.of(0xd0, 0xff)), "malformed", /not valid CBOR/);
  refusedAs(() => parseChannelMessage(message(Uint8Array.of(0xa1, 0x01, 0x03, 0x00))), "malformed", /protected header is not deterministically|not valid CBOR/);
  refusedAs(() => parseChannelMessage(message(ok, new Map([[5, new Uint8Array(12)]]))), "malformed", /unprotected header must be empty/);
  refusedAs(() => parseChannelMessage(message(ok, [])), "malformed", /unprotected header must be empty/);
  refusedAs(() => parseChannelMessage(message(ok, new Map(), new Uint8Array(15))), "malformed", /ciphertext must be bytes, at least its tag/);
  refusedAs(() => parseChannelMessage(message(ok, new Map(), "ciphertext")), "malformed", /ciphertext must be bytes/);
  const shape = /protected header must be \{1: 3 \(A256GCM\), 4, -65537, -65538, -65539\}/;
  refusedAs(() => parseChannelMessage(message(encode(header([[1, 1]])))), "malformed", shape);
  refusedAs(() => parseChannelMessage(message(encode(header([[9, 0]])))), "malformed", shape);
  refusedAs(() => parseChannelMessage(message(encode(header([], [1])))), "malformed", shape);
  refusedAs(() => parseChannelMessage(message(encode([1, 3]))), "malformed", shape);
  refusedAs(() => parseChannelMessage(message(encode(header([[4, new Uint8Array(15)]])))), "malformed", /channel id must be 16 bytes/);
  refusedAs(() => parseChannelMessage(message(encode(header([[4, "id"]])))), "malformed", /channel id must be 16 bytes/);
  refusedAs(() => parseChannelMessage(message(encode(header([[-65537, "a/b"]])))), "malformed", /from and to must be gateway ids/);
  refusedAs(() => parseChannelMessage(message(encode(header([[-65538, 7]])))), "malformed", /from and to must be gateway ids/);
  for (const seq of [0, -1, MAX_SEQ + 1, 1.5, "1"]) refusedAs(() => parseChannelMessage(message(encode(header([[-65539, seq]])))), "malformed", new RegExp(`seq must be 1-${MAX_SEQ}`));
  assert.equal(parseChannelMessage(message(encode(header([[-65539, MAX_SEQ]])))).seq, MAX_SEQ, "the last sequence number parses");
});

test("the plaintext: exactly the envelope's fields, 6 or 7 of them, in deterministic CBOR", () => {
  const { b, up } = channels();
  const fields = (extra: [number, unknown][] = [], drop: number[] = []) => {
    const m = new Map<number, unknown>([[3, new Uint8Array(16)], [4, new Uint8Array(16)], [5, "echo"], [6, T0], [7, 0], [8, encode(1)]]);
    for (const k of drop) m.delete(k);
    for (const [k, v] of extra) m.set(k, v);
    return encode(m);
  };
  assert.equal(b.open(parseChannelMessage(sealedByHand(up, fields()))).type, "echo");
  assert.deepEqual(b.open(parseChannelMessage(sealedByHand(up, fields([[10, new Uint8Array(16).fill(4)]])))).re, new Uint8Array(16).fill(4));
  refusedAs(() => b.open(parseChannelMessage(sealedByHand(up, fields([], [8])))), "malformed", /map of 6 or 7 fields/);
  refusedAs(() => b.open(parseChannelMessage(sealedByHand(up, fields([[10, new Uint8Array(16)], [11, 1]])))), "malformed", /map of 6 or 7 fields/);
  refusedAs(() => b.open(parseChannelMessage(sealedByHand(up, fields([[9, 1]])))), "malformed", /unknown fields/);
  refusedAs(() => b.open(parseChannelMessage(sealedByHand(up, encode([1, 2, 3, 4, 5, 6])))), "malformed", /map of 6 or 7 fields/);
  refusedAs(() => b.open(parseChannelMessage(sealedByHand(up, Uint8Array.of(0xff)))), "malformed", /not valid CBOR/);
});

test("open(): only the channel's own receiving direction, and nothing once ended", () => {
  const { a, b } = channels();
  const genuine = parseChannelMessage(a.seal({ sessionId: new Uint8Array(16), msgId: new Uint8Array(16), type: "t", ts: T0, kind: 0, body: encode(0) }));
  assert.equal(b.open(genuine).type, "t");
  const direction = /not of this channel's receiving direction/;
  refusedAs(() => b.open({ ...genuine, channelId: new Uint8Array(16) }), "decrypt-failed", direction);
  refusedAs(() => b.open({ ...genuine, from: "c.example" }), "decrypt-failed", direction);
  refusedAs(() => b.open({ ...genuine, to: "c.example" }), "decrypt-failed", direction);
  refusedAs(() => b.open({ ...genuine, seq: 2 }), "decrypt-failed", /does not authenticate/);
  b.end();
  refusedAs(() => b.open(genuine), "decrypt-failed", /channel has ended/);
  assert.equal(b.isEnded, true);
  assert.equal(a.sent, 1);
  assert.ok(a.canSend(T0) && !b.canSend(T0) && !b.canReceive(T0, 60), "an ended channel neither sends nor receives");
});

test("the reset body: exactly {c: 16 bytes}", () => {
  assert.deepEqual(readResetBody(new Map([["c", ID]])), ID);
  for (const bad of [new Map([["c", ID.subarray(1)]]), new Map<string, unknown>([["c", ID], ["d", 1]]), new Map(), "c", new Map([["x", ID]])] as unknown[]) refusedAs(() => readResetBody(bad), "malformed", /channel reset must be \{c: channel id\}/);
});

test("the key schedule recomputed from PROTOCOL §9, classical and hybrid", () => {
  const h = { initiator: "a.example", responder: "b.example", channelId: ID, initiatorEphemeral: new Uint8Array(32).fill(1), responderEphemeral: new Uint8Array(32).fill(2) };
  const sha = (b: Uint8Array) => new Uint8Array(createHash("sha256").update(b).digest());
  assert.deepEqual(transcriptHash(h), sha(encode(["KP channel v1", "a.example", "b.example", ID, h.initiatorEphemeral, h.responderEphemeral])));
  const k = new Uint8Array(1184).fill(3);
  const m = new Uint8Array(1088).fill(4);
  assert.deepEqual(transcriptHash({ ...h, kemKey: k, kemCiphertext: m }), sha(encode(["KP channel v1", "a.example", "b.example", ID, h.initiatorEphemeral, h.responderEphemeral, k, m])));
  assert.deepEqual(transcriptHash({ ...h, kemKey: k }), transcriptHash(h), "one half alone is no hybrid");
  const shared = new Uint8Array(32).fill(5);
  const th = transcriptHash(h);
  assert.deepEqual(new Uint8Array(directionKey(shared, th, "a.example")), new Uint8Array(hkdfSync("sha256", shared, th, encode(["KP channel v1", "key", "a.example"]), 32)));
  const kem = new Uint8Array(32).fill(6);
  assert.deepEqual(combinedSecret(shared, kem), Uint8Array.of(...kem, ...shared), "ML-KEM's secret first, as X25519MLKEM768");
  assert.equal(combinedSecret(shared), shared);
});

test("ML-KEM-768 halves: encapsulation to a genuine key agrees, an invalid key is malformed", () => {
  const pair = kemKeyPair();
  const { cipherText, sharedSecret } = kemEncapsulate(pair.publicKey);
  assert.deepEqual(kemDecapsulate(cipherText, pair.secretKey), sharedSecret);
  refusedAs(() => kemEncapsulate(new Uint8Array(1184).fill(0xff)), "malformed", /not a valid encapsulation key/);
});

test("seal(): sequence numbers 1, 2, 3 ... and the decoded message as given", () => {
  const { a, b } = channels();
  for (let seq = 1; seq <= 3; seq++) {
    const bytes = a.seal({ sessionId: new Uint8Array(16), msgId: new Uint8Array(16).fill(seq), type: "t", ts: T0 + seq, kind: 1, body: encode(seq), re: new Uint8Array(16) });
    const h = parseChannelMessage(bytes);
    assert.equal(h.seq, seq);
    const p = b.open(h);
    assert.deepEqual([p.ts, p.kind, decode(p.body)], [T0 + seq, 1, seq]);
  }
  assert.equal(a.sent, 3);
});

test("the last sequence numbers: renewal due at 80% of MAX_SEQ, the last one sealed, then nothing more", () => {
  const { a, b } = channels();
  const near = (sent: number) => new PairwiseChannel({ channelId: ID, self: "a.example", peer: "b.example", peerCert: new Uint8Array(1), sendKey: Buffer.alloc(32, 1), receiveKey: Buffer.alloc(32, 2), createdAt: T0, lifetime: 100, initiated: true, sent });
  const renewAt = Math.ceil(MAX_SEQ * 0.8);
  assert.equal(near(renewAt - 1).due(T0), false);
  assert.equal(near(renewAt).due(T0), true, "due at 80% of the sequence space, whatever the clock says");
  assert.equal(near(MAX_SEQ - 1).canSend(T0), true);
  const last = near(MAX_SEQ - 1);
  const bytes = last.seal({ sessionId: new Uint8Array(16), msgId: new Uint8Array(16), type: "t", ts: T0, kind: 0, body: encode(0) });
  assert.equal(parseChannelMessage(bytes).seq, MAX_SEQ, "the last sequence number is used");
  assert.equal(last.canSend(T0), false, "and then the channel sends nothing more");
  assert.throws(() => last.seal({ sessionId: new Uint8Array(16), msgId: new Uint8Array(16), type: "t", ts: T0, kind: 0, body: encode(0) }), /channel is used up/);
  assert.equal(a.sent, 0);
  assert.equal(a.hybrid, false, "a channel is classical unless made hybrid");
  void b;
});

test("the opening's bodies carry exactly the halves given, and ChannelError names itself", () => {
  const c = new Uint8Array(16).fill(1);
  const e = new Uint8Array(32).fill(2);
  assert.deepEqual([...openRequestBody({ channelId: c, ephemeral: e }).keys()], ["c", "e"]);
  assert.deepEqual([...openAnswerBody({ channelId: c, ephemeral: e, peerEphemeral: e }).keys()], ["c", "e", "p"]);
  assert.deepStrictEqual(readOpenAnswer(new Map([["c", c], ["e", e], ["p", e]])), { channelId: c, ephemeral: e, peerEphemeral: e }, "no kemCiphertext key at all on a classical answer");
  assert.deepStrictEqual(readOpenRequest(new Map([["c", c], ["e", e]])), { channelId: c, ephemeral: e });
  const k = new Uint8Array(1184);
  const refused = (f: () => unknown, why: RegExp) => assert.throws(f, (x: unknown) => x instanceof ChannelError && x.name === "ChannelError" && why.test(x.message));
  refused(() => readOpenRequest(new Map<string, unknown>([["c", c], ["e", e], ["k", k], ["x", 1]])), /^channel open must be \{c, e, k\?\}$/);
  refused(() => readOpenRequest(new Set(["c", "e"])), /^channel open must be \{c, e, k\?\}$/);
  refused(() => readOpenAnswer(new Map<string, unknown>([["c", c], ["e", e], ["p", e], ["m", new Uint8Array(1088)], ["x", 1]])), /^channel open answer must be \{c, e, p, m\?\}$/);
  refused(() => parseChannelMessage(Uint8Array.of(0xd0, 0xff)), /^channel message is not valid CBOR$/);
  refused(() => parseChannelMessage(Uint8Array.of(0xd0, ...encode([Uint8Array.of(0xff), new Map(), new Uint8Array(16)]))), /^channel message protected header is not valid CBOR$/);
  const { b, up } = channels();
  refused(() => b.open(parseChannelMessage(sealedByHand(up, Uint8Array.of(0xff)))), /^channel plaintext is not valid CBOR$/);
});
