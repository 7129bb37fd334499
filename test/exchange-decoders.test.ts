// The exchange's message decoders (gateway/crossgw/exchange.ts) against docs/PROTOCOL.md §8's field
// table, at every field's edges: what is just inside is taken, what is just outside is refused as
// `malformed` with a sentence naming the field. Written from the document, so that a decoder that
// drifts from it fails here (for `npm run mutation -- gateway/crossgw/exchange.ts`, docs/MUTATION.md).
import assert from "node:assert/strict";
import { test } from "node:test";
import { encode } from "../gateway/encoding/cbor.ts";
import { decodeMsg1, decodeMsg2, decodeMsg3, decodeMsg4, ExchangeError } from "../gateway/crossgw/exchange.ts";

const b = (n: number, fill = 7) => new Uint8Array(n).fill(fill);
const SID = b(16, 1);
const msg1 = (o: Partial<Record<"sid" | "from" | "to" | "app" | "suites" | "eA" | "replaces" | "ekA", unknown>> = {}, extra: unknown[] = []) =>
  encode([1, o.sid ?? SID, o.from ?? "alice@a.example", o.to ?? "bob@b.example", o.app ?? "chat", o.suites ?? [[10, 1]], o.eA ?? b(32), o.replaces ?? 0, ...("ekA" in o ? [o.ekA] : []), ...extra]);
const msg2 = (o: Partial<Record<"sid" | "eB" | "suite" | "ct" | "ctB", unknown>> = {}) =>
  encode([2, o.sid ?? SID, o.eB ?? b(32), o.suite ?? 10, o.ct ?? b(16), ...("ctB" in o ? [o.ctB] : [])]);

/** The decoder refuses the bytes as malformed, saying `why`. */
function refuses(decode: (x: Uint8Array) => unknown, bytes: Uint8Array, why: RegExp, what: string): void {
  assert.throws(() => decode(bytes), (e: unknown) => {
    assert.ok(e instanceof ExchangeError, `${what}: ${String(e)}`);
    assert.equal(e.code, "malformed", what);
    assert.match(e.message, why, what);
    return true;
  });
}

test("message 1: each field at its edges (text 1 and 256 characters, 16 suite pairs, suites of 32 bits, priorities 0 and 65535, SPI up to 2^32 - 1)", () => {
  const ok: [string, Uint8Array][] = [
    ["app of 1", msg1({ app: "a" })],
    ["app of 256", msg1({ app: "a".repeat(256) })],
    ["no suites", msg1({ suites: [] })],
    ["16 suite pairs", msg1({ suites: Array.from({ length: 16 }, (_, i) => [i, i]) })],
    ["suite -2^31 and 2^31 - 1", msg1({ suites: [[-0x80000000, 0], [0x7fffffff, 65535]] })],
    ["replaces 2^32 - 1", msg1({ replaces: 0xffffffff })],
    ["with an ML-KEM key", msg1({ ekA: b(1184) })],
  ];
  for (const [what, bytes] of ok) assert.doesNotThrow(() => decodeMsg1(bytes), what);
  const m = decodeMsg1(msg1({ app: "x".repeat(256), replaces: 0xffffffff, ekA: b(1184, 9) }));
  assert.deepEqual([m.from, m.to, m.app.length, m.replaces, m.kemKey?.length], ["alice@a.example", "bob@b.example", 256, 0xffffffff, 1184]);

  const bad: [string, Uint8Array, RegExp][] = [
    ["not an array", encode({ t: 1 }), /not an exchange message 1/],
    ["7 items", encode([1, SID, "alice@a.example", "bob@b.example", "chat", [[10, 1]], b(32)]), /not an exchange message 1/],
    ["10 items", msg1({ ekA: b(1184) }, [0]), /not an exchange message 1/],
    ["type 2", encode([2, SID, "alice@a.example", "bob@b.example", "chat", [[10, 1]], b(32), 0]), /not an exchange message 1/],
    ["session id of 15", msg1({ sid: b(15) }), /session id must be 16 bytes/],
    ["session id as text", msg1({ sid: "x".repeat(16) }), /session id must be 16 bytes/],
    ["from without a domain", msg1({ from: "alice" }), /from and to must be device names/],
    ["to without a domain", msg1({ to: "bob" }), /from and to must be device names/],
    ["app empty", msg1({ app: "" }), /app must be a short non-empty string/],
    ["app of 257", msg1({ app: "a".repeat(257) }), /app must be a short non-empty string/],
    ["app as bytes", msg1({ app: b(4) }), /app must be a short non-empty string/],
    ["17 suite pairs", msg1({ suites: Array.from({ length: 17 }, () => [10, 1]) }), /suites must be/],
    ["suites not an array", msg1({ suites: 10 }), /suites must be/],
    ["a pair of 3", msg1({ suites: [[10, 1, 2]] }), /suites must be/],
    ["a pair not an array", msg1({ suites: [10] }), /suites must be/],
    ["suite 2^31", msg1({ suites: [[0x80000000, 1]] }), /suites must be/],
    ["suite -2^31 - 1", msg1({ suites: [[-0x80000001, 1]] }), /suites must be/],
    ["suite 1.5", msg1({ suites: [[1.5, 1]] }), /suites must be/],
    ["priority -1", msg1({ suites: [[10, -1]] }), /suites must be/],
    ["priority 65536", msg1({ suites: [[10, 65536]] }), /suites must be/],
    ["priority 0.5", msg1({ suites: [[10, 0.5]] }), /suites must be/],
    ["eA of 31", msg1({ eA: b(31) }), /eA must be 32 bytes/],
    ["eA of 33", msg1({ eA: b(33) }), /eA must be 32 bytes/],
    ["replaces -1", msg1({ replaces: -1 }), /replaces must be an SPI/],
    ["replaces 2^32", msg1({ replaces: 0x100000000 }), /replaces must be an SPI/],
    ["replaces 0.5", msg1({ replaces: 0.5 }), /replaces must be an SPI/],
    ["ML-KEM key of 1183", msg1({ ekA: b(1183) }), /ML-KEM-768 key must be 1184 bytes/],
    ["ML-KEM key as text", msg1({ ekA: "k" }), /ML-KEM-768 key must be 1184 bytes/],
    ["not CBOR", new Uint8Array([0xff, 0x00]), /./],
  ];
  for (const [what, bytes, why] of bad) refuses(decodeMsg1, bytes, why, what);
});

test("message 2: eB of 32, a suite of 32 bits, a ciphertext of 16 to 10,240 bytes, an ML-KEM ciphertext of 1088", () => {
  for (const [what, bytes] of [
    ["ciphertext of 16", msg2({ ct: b(16) })],
    ["ciphertext of 10,240", msg2({ ct: b(10240) })],
    ["suite -2^31", msg2({ suite: -0x80000000 })],
    ["suite 2^31 - 1", msg2({ suite: 0x7fffffff })],
    ["with an ML-KEM ciphertext", msg2({ ctB: b(1088) })],
  ] as [string, Uint8Array][]) assert.doesNotThrow(() => decodeMsg2(bytes), what);
  const m = decodeMsg2(msg2({ suite: -7, ctB: b(1088, 3) }));
  assert.deepEqual([m.suite, m.ciphertext.length, m.kemCiphertext?.length], [-7, 16, 1088]);
  const bad: [string, Uint8Array, RegExp][] = [
    ["4 items", encode([2, SID, b(32), 10]), /not an exchange message 2/],
    ["eB of 31", msg2({ eB: b(31) }), /eB must be 32 bytes/],
    ["suite 2^31", msg2({ suite: 0x80000000 }), /suite must be a 32-bit integer/],
    ["suite -2^31 - 1", msg2({ suite: -0x80000001 }), /suite must be a 32-bit integer/],
    ["suite as text", msg2({ suite: "10" }), /suite must be a 32-bit integer/],
    ["ciphertext of 15", msg2({ ct: b(15) }), /ciphertext must be 16 to 10240 bytes/],
    ["ciphertext of 10,241", msg2({ ct: b(10241) }), /ciphertext must be 16 to 10240 bytes/],
    ["ML-KEM ciphertext of 1087", msg2({ ctB: b(1087) }), /ML-KEM-768 ciphertext must be 1088 bytes/],
  ];
  for (const [what, bytes, why] of bad) refuses(decodeMsg2, bytes, why, what);
});

test("messages 3 and 4: a ciphertext of 16 to 10,240 bytes, a MAC of 32", () => {
  assert.equal(decodeMsg3(encode([3, SID, b(10240)])).ciphertext.length, 10240);
  assert.equal(decodeMsg4(encode([4, SID, b(32)])).mac.length, 32);
  refuses(decodeMsg3, encode([3, SID, b(15)]), /message 3: ciphertext must be 16 to 10240 bytes/, "msg3 of 15");
  refuses(decodeMsg3, encode([3, SID, b(10241)]), /message 3: ciphertext must be 16 to 10240 bytes/, "msg3 of 10,241");
  refuses(decodeMsg3, encode([3, SID]), /not an exchange message 3/, "msg3 without a ciphertext");
  refuses(decodeMsg4, encode([4, SID, b(31)]), /message 4: mac must be 32 bytes/, "msg4 mac of 31");
  refuses(decodeMsg4, encode([4, SID, b(33)]), /message 4: mac must be 32 bytes/, "msg4 mac of 33");
  refuses(decodeMsg4, encode([4, b(17), b(32)]), /session id must be 16 bytes/, "msg4 session id of 17");
});
