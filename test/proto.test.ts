// Protocol building blocks against reference models: the replay window, the framing, the message table.
import { test } from "node:test";
import assert from "node:assert/strict";
import { crc32 } from "node:zlib";
import fc from "fast-check";
import { newWindow, replay, WINDOW_SIZE } from "../firmware/proto/replay.ts";
import { encodeFrame, FrameDecoder, MAX_PAYLOAD } from "../firmware/proto/frame.ts";
import { decodeMessage, encodeMessage, Msg, type Message } from "../firmware/proto/messages.ts";
import { deriveLinkKeys, deriveSaKeys, frameNonce, saConfirmTag, DIR_DOWN, DIR_UP } from "../firmware/proto/keys.ts";
import { crypt, type Link } from "../firmware/proto/link.ts";
import * as deviceCbor from "../firmware/cbor.ts";
import { nodeCrypto } from "../gateway/crypto/symmetric.ts";
import { SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305 } from "../firmware/crypto/types.ts";

const crc = (b: Uint8Array) => crc32(b) >>> 0;

test("replay window accepts exactly what a set-based model accepts", () => {
  fc.assert(
    fc.property(fc.array(fc.oneof(fc.integer({ min: 0, max: 80 }), fc.integer({ min: 0, max: 0xffffffff })), { maxLength: 200 }), (seqs) => {
      const w = newWindow();
      const seen = new Set<number>();
      let top = 0;
      for (const s of seqs) {
        const modelOk = s >= 1 && !seen.has(s) && s > top - WINDOW_SIZE;
        const ok = replay(w, s, false) === "ok";
        assert.equal(ok, modelOk, `seq ${s} after ${[...seen].join(",")}`);
        if (ok) {
          replay(w, s, true);
          seen.add(s);
          top = Math.max(top, s);
        }
      }
    }),
    { numRuns: 500 },
  );
});

test("replay window names why a frame is dropped", () => {
  const w = newWindow();
  assert.equal(replay(w, 0, false), "invalid");
  assert.equal(replay(w, 1.5, false), "invalid");
  assert.equal(replay(w, 2 ** 32, false), "invalid");
  replay(w, 100, true);
  assert.equal(replay(w, 100, false), "replayed");
  assert.equal(replay(w, 68, false), "too-old");
  assert.equal(replay(w, 69, false), "ok");
});

test("frames survive any chunking, noise between frames and corrupted frames", () => {
  fc.assert(
    fc.property(
      fc.array(fc.record({ payload: fc.uint8Array({ minLength: 1, maxLength: 300 }), noise: fc.uint8Array({ maxLength: 20 }), corrupt: fc.boolean() }), { minLength: 1, maxLength: 8 }),
      fc.array(fc.integer({ min: 1, max: 64 }), { minLength: 1, maxLength: 10 }),
      (items, cuts) => {
        const parts: number[] = [];
        const expected: string[] = [];
        for (const it of items) {
          // Noise must not contain the magic byte, or it may legitimately start a frame.
          for (const b of it.noise) parts.push(b === 0xa5 ? 0 : b);
          const f = encodeFrame(it.payload, crc);
          if (it.corrupt) f[3 + (it.payload.length >> 1)] ^= 0x40;
          else expected.push(Buffer.from(it.payload).toString("hex"));
          parts.push(...f);
        }
        const all = Uint8Array.from(parts);
        const dec = new FrameDecoder(crc);
        const got: string[] = [];
        let p = 0;
        for (let i = 0; p < all.length; i++) {
          const n = cuts[i % cuts.length];
          for (const pl of dec.push(all.subarray(p, p + n))) got.push(Buffer.from(pl).toString("hex"));
          p += n;
        }
        // A corrupted frame is dropped; it may hide a following good frame only by containing a
        // fake header, which our payload bytes can do, so compare as a subsequence.
        let j = 0;
        for (const g of got) {
          while (j < expected.length && expected[j] !== g) j++;
          assert.ok(j < expected.length, "decoder produced a payload that was never sent intact");
          j++;
        }
        if (!items.some((x) => x.corrupt)) assert.deepEqual(got, expected);
      },
    ),
    { numRuns: 300 },
  );
});

test("frame decoder rejects oversize lengths and keeps bounded state", () => {
  assert.throws(() => encodeFrame(new Uint8Array(MAX_PAYLOAD + 1), crc), /out of range/);
  assert.throws(() => encodeFrame(new Uint8Array(0), crc), /out of range/);
  const dec = new FrameDecoder(crc);
  // A header that claims 0xffff bytes is noise: dropped at once, not waited for.
  assert.deepEqual(dec.push(Uint8Array.from([0xa5, 0xff, 0xff, 1, 2, 3])), []);
  assert.equal(dec.buf_.length, 0);
  assert.equal(dec.dropped_, 6);
  const good = encodeFrame(Uint8Array.from([7]), crc);
  assert.deepEqual(dec.push(good).map((b) => [...b]), [[7]]);
});

test("every message encodes to its wire array and back", () => {
  const b = (n: number) => new Uint8Array(n).fill(n);
  const msgs = [
    { t: Msg.JoinRequest, id: "dev-1", ctr: 7, nonce: b(16), suite: 10, tag: b(16) },
    { t: Msg.JoinAccept, nonce: b(16), tag: b(16) },
    { t: Msg.JoinReject },
    { t: Msg.Link, seq: 1, sealed: b(9) },
    { t: Msg.RegisterRequest, rid: 1, lifetime: 3600, suites: [[10, 2], [-65537, 1]], wantCert: true, firmware: "0.1.0-3ca9ccef", memory: 943 },
    { t: Msg.RegisterRequest, rid: 1, lifetime: 60, suites: [], wantCert: false, firmware: "unknown", memory: 0 },
    { t: Msg.RegisterOk, rid: 1, granted: 600, certId: b(16), cert: null },
    { t: Msg.DeregisterRequest, rid: 2 },
    { t: Msg.DeregisterOk, rid: 2 },
    { t: Msg.CertQuery, rid: 3, name: "dev-2" },
    { t: Msg.CertAnswer, rid: 3, cert: b(100) },
    { t: Msg.Error, rid: 3, code: 2 },
  ] as Message[];
  for (const m of msgs) assert.deepEqual(decodeMessage(encodeMessage(m)), m);
});

test("malformed wire arrays are refused with a reason", () => {
  const cases: [unknown, RegExp][] = [
    [42, /not a message array/],
    [[], /not a message array/],
    [[99], /unknown type 99/],
    [["1"], /unknown type/],
    [[Msg.JoinRequest, "d", 1, new Uint8Array(16), 10], /needs 5 fields, got 4/],
    [[Msg.JoinRequest, "", 1, new Uint8Array(16), 10, new Uint8Array(16)], /bad id/],
    [[Msg.JoinRequest, "d", -1, new Uint8Array(16), 10, new Uint8Array(16)], /bad ctr/],
    [[Msg.JoinRequest, "d", 1.5, new Uint8Array(16), 10, new Uint8Array(16)], /bad ctr/],
    [[Msg.JoinRequest, "d", 1, "nonce", 10, new Uint8Array(16)], /bad nonce/],
    [[Msg.RegisterRequest, 1, 60, [[10]], true, "fw", 0], /bad suites/],
    [[Msg.RegisterRequest, 1, 60, [[10, 1]], 1, "fw", 0], /bad wantCert/],
    [[Msg.RegisterRequest, 1, 60, [[10, 1]], true], /needs 6 fields, got 4/],
    [[Msg.RegisterRequest, 1, 60, [[10, 1]], true, "", 0], /bad firmware/],
    [[Msg.RegisterRequest, 1, 60, [[10, 1]], true, "x".repeat(65), 0], /bad firmware/],
    [[Msg.RegisterRequest, 1, 60, [[10, 1]], true, "fw", -1], /bad memory/],
    [[Msg.RegisterRequest, 1, 60, [[10, 1]], true, "fw", 1.5], /bad memory/],
    [[Msg.CertQuery, 1, "x".repeat(65)], /bad name/],
  ];
  for (const [w, re] of cases) {
    const r = decodeMessage(w);
    assert.ok(r instanceof Error, `accepted ${JSON.stringify(w)}`);
    assert.match(r.message, re);
  }
  assert.throws(() => encodeMessage({ t: Msg.DeregisterOk, rid: -1 }), /bad field rid/);
});

test("nonces differ in direction, SPI and sequence number, and fit the suite", () => {
  const n = (d: number, s: number, q: number, suite = 10) => Buffer.from(frameNonce(suite, d, s, q)).toString("hex");
  assert.equal(n(0, 0, 1), "00000000000000000000000001");
  assert.equal(n(1, 0x01020304, 0xfffffffe), "01" + "01020304" + "00000000" + "fffffffe");
  assert.notEqual(n(0, 0, 1), n(1, 0, 1));
  assert.notEqual(n(0, 1, 1), n(0, 0, 1));
  assert.equal(frameNonce(-65537, 0, 0, 1).length, 24);
});

test("crypt() seals and opens with exactly frameNonce's nonces, for links and SAs, both suites and directions", () => {
  const c = nodeCrypto();
  fc.assert(
    fc.property(fc.boolean(), fc.boolean(), fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 0, max: 1000 }), fc.uint8Array({ maxLength: 40 }), (secretbox, up, spi, start, plain) => {
      const suite = secretbox ? SUITE_XSALSA20_POLY1305 : SUITE_AES_CCM_16_64_128;
      const keys = { suite, up: c.random(secretbox ? 32 : 16), down: c.random(secretbox ? 32 : 16) };
      const tx: Link = { keys_: keys, txDir_: up ? DIR_UP : DIR_DOWN, txSeq_: start, rx_: { top: 0, bits: 0 } };
      const frame = deviceCbor.decode(crypt(c, deviceCbor, tx, spi, 0, plain, false) as Uint8Array) as unknown[];
      const seq = start + 1;
      const dir = up ? DIR_UP : DIR_DOWN;
      const sealed = frame[frame.length - 1] as Uint8Array;
      assert.deepEqual(Buffer.from(sealed), Buffer.from(c.seal(suite, up ? keys.up : keys.down, frameNonce(suite, dir, spi, seq), plain)));
      assert.deepEqual(frame.slice(0, -1), spi ? [5, spi, seq] : [4, seq]);
      // The other end opens it with the other direction's view of the same link.
      const rx: Link = { keys_: keys, txDir_: up ? DIR_DOWN : DIR_UP, txSeq_: 0, rx_: { top: 0, bits: 0 } };
      assert.deepEqual(Buffer.from(crypt(c, deviceCbor, rx, spi, seq, sealed, true) as Uint8Array), Buffer.from(plain));
      assert.equal(crypt(c, deviceCbor, rx, spi, seq, sealed, true), 1, "a replay is refused");
    }),
    { numRuns: 200 },
  );
});

test("saConfirmTag is exactly the tag deriveSaKeys gives each role", () => {
  const c = nodeCrypto();
  for (const role of [0, 1]) {
    const seed = c.random(32);
    const spi = 0x01020304 + role;
    for (const suite of [SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305]) {
      assert.deepEqual(Buffer.from(saConfirmTag(c, deviceCbor, seed, spi, suite, role)), Buffer.from(deriveSaKeys(c, deviceCbor, seed, spi, suite, role).confirm));
      assert.notDeepEqual(Buffer.from(saConfirmTag(c, deviceCbor, seed, spi, suite, role)), Buffer.from(saConfirmTag(c, deviceCbor, seed, spi, suite, 1 - role)));
    }
  }
});

// The key schedule as docs/PROTOCOL.md writes it: one HKDF per secret, its output cut into the keys
// (and an SA's two confirmation tags), written out here with node:crypto's HKDF.
test("the link and SA keys are the HKDF outputs docs/PROTOCOL.md defines, byte for byte", () => {
  const c = nodeCrypto();
  const e = deviceCbor.encode;
  const none = new Uint8Array(0);
  const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: 16, maxLength: 16 }), fc.uint8Array({ minLength: 16, maxLength: 16 }), fc.uint8Array({ minLength: 16, maxLength: 16 }),
      fc.nat(0xffffffff), fc.constantFrom(SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305), fc.constantFrom(0, 1),
      (root, nD, nG, n, suite, role) => {
        const len = suite === SUITE_XSALSA20_POLY1305 ? 32 : 16;
        const linkOkm = hex(c.hkdf(Buffer.concat([nD, nG]), root, e(["KP1 link keys", "dev-1", n, suite]), 2 * len));
        const link = deriveLinkKeys(c, deviceCbor, root, "dev-1", n, nD, nG, suite);
        assert.equal(hex(link.up) + hex(link.down), linkOkm);
        const seed = Buffer.concat([root, nD]);
        const saOkm = hex(c.hkdf(none, seed, e(["KP1 sa keys", n, suite]), 2 * len + 32));
        const sa = deriveSaKeys(c, deviceCbor, seed, n, suite, role);
        assert.equal(hex(sa.up) + hex(sa.down), saOkm.slice(0, 4 * len));
        assert.equal(hex(sa.confirm), saOkm.slice(4 * len + 32 * role, 4 * len + 32 * role + 32));
      },
    ),
    { numRuns: 100 },
  );
});
