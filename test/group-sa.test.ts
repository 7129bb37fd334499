// Group SAs in the firmware's protocol code (docs/PROTOCOL.md §5d): one key for every member, each
// member's own sequence space carried in the nonce, one replay window per sender, and the
// confirmation tag of each member. The gateway's side and the handsets end to end are in
// test/groups.test.ts.

import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import * as deviceCbor from "../firmware/cbor.ts";
import { SUITE_AES_CCM_16_64_128 as AES, SUITE_XSALSA20_POLY1305 as XSALSA } from "../firmware/crypto/types.ts";
import { deriveSaKeys, frameNonce, saConfirmTag, DIR_GROUP, DIR_UP, MAX_SENDERS, ROLE_GROUP, type LinkKeys } from "../firmware/proto/keys.ts";
import { crypt, type Link } from "../firmware/proto/link.ts";
import { WINDOW_SIZE } from "../firmware/proto/replay.ts";
import { nodeCrypto } from "../gateway/crypto/symmetric.ts";

const c = nodeCrypto();
const SPI = 0x0a0b0c0d;
const HI = 2 ** 32;

/** Member `me`'s view of a group SA, as the handset installs it (firmware/handset.ts, SaInstall). */
function member(keys: LinkKeys, me: number): Link {
  return { keys_: keys, txDir_: DIR_GROUP, txSeq_: 0, rx_: { top: 0, bits: 0 }, me_: me, rxs_: [] };
}

function groupKeys(suite = AES): LinkKeys {
  return deriveSaKeys(c, deviceCbor, c.random(32), SPI, suite, ROLE_GROUP);
}

/** The [spi, seq, sealed] of a frame a member seals. */
function seal(l: Link, text: string): { seq: number; sealed: Uint8Array } {
  const w = deviceCbor.decode(crypt(c, deviceCbor, l, SPI, 0, new TextEncoder().encode(text), false) as Uint8Array) as unknown[];
  return { seq: w[2] as number, sealed: w[3] as Uint8Array };
}

function open(l: Link, f: { seq: number; sealed: Uint8Array }): string | number {
  const r = crypt(c, deviceCbor, l, SPI, f.seq, f.sealed, true);
  return typeof r === "number" ? r : new TextDecoder().decode(r);
}

test("a group frame is sealed under the group key with the sender's index in the nonce and above its seq", () => {
  for (const suite of [AES, XSALSA]) {
    const keys = groupKeys(suite);
    const a = member(keys, 3);
    const f = seal(a, "hi");
    assert.equal(f.seq, 3 * HI + 1, "the wire seq carries sender 3, sequence number 1");
    const expected = c.seal(suite, keys.up, frameNonce(suite, DIR_GROUP, SPI, 1, 3), new TextEncoder().encode("hi"));
    assert.deepEqual(Buffer.from(f.sealed), Buffer.from(expected));
    assert.equal(Buffer.from(frameNonce(AES, DIR_GROUP, SPI, 1, 3)).toString("hex"), "02" + "0a0b0c0d" + "00000003" + "00000001");
  }
});

test("two members' first frames never share a nonce: the same seq under one key, different senders", () => {
  const keys = groupKeys();
  const a = seal(member(keys, 0), "x");
  const b = seal(member(keys, 1), "x");
  assert.notDeepEqual(Buffer.from(a.sealed), Buffer.from(b.sealed));
  assert.notEqual(Buffer.from(frameNonce(AES, DIR_GROUP, SPI, 1, 0)).toString("hex"), Buffer.from(frameNonce(AES, DIR_GROUP, SPI, 1, 1)).toString("hex"));
});

test("every other member opens a frame once; a replay, a reflected frame and a sender past the bound are refused", () => {
  const keys = groupKeys();
  const [a, b, d] = [member(keys, 0), member(keys, 1), member(keys, 2)];
  const f = seal(a, "to all");
  assert.equal(open(b, f), "to all");
  assert.equal(open(d, f), "to all");
  assert.equal(open(b, f), 1, "replayed");
  assert.equal(open(a, f), 3, "a member's own frame reflected back to it");
  const forged = { seq: MAX_SENDERS * HI + 1, sealed: f.sealed };
  assert.equal(open(b, forged), 3, "a sender index past MAX_SENDERS");
  assert.equal(b.rxs_!.length, 1, "no window was made for the refused frames");
  // Moving a frame to another sender's index changes its nonce: it no longer authenticates.
  assert.equal(open(d, { seq: 1 * HI + 1, sealed: seal(a, "moved").sealed }), 4);
  assert.equal(d.rxs_![1], undefined, "a forged frame made no window");
});

test("a pairwise SA refuses a seq with a sender part, as before groups", () => {
  const keys = deriveSaKeys(c, deviceCbor, c.random(32), SPI, AES, 0);
  const tx: Link = { keys_: keys, txDir_: DIR_UP, txSeq_: 0, rx_: { top: 0, bits: 0 } };
  const rx: Link = { keys_: keys, txDir_: 1, txSeq_: 0, rx_: { top: 0, bits: 0 } };
  const f = seal(tx, "p");
  assert.equal(f.seq, 1);
  assert.equal(open(rx, { seq: HI + 1, sealed: f.sealed }), 3);
  assert.equal(open(rx, f), "p");
});

test("each member's confirmation tag is its own, and roles 0 and 1 keep the tags they had", () => {
  const seed = c.random(32);
  for (const suite of [AES, XSALSA]) {
    const n = suite === XSALSA ? 32 : 16;
    // Before groups the SA's HKDF output was 2n + 32 bytes long; its tags are unchanged.
    const before = c.hkdf(new Uint8Array(0), seed, deviceCbor.encode(["KP1 sa keys", SPI, suite]), 2 * n + 32);
    for (const role of [0, 1]) assert.deepEqual(Buffer.from(saConfirmTag(c, deviceCbor, seed, SPI, suite, role)), Buffer.from(before.subarray(2 * n + 16 * role, 2 * n + 16 * role + 16)));
    const tags = new Set<string>();
    for (let i = 0; i < MAX_SENDERS; i++) {
      const k = deriveSaKeys(c, deviceCbor, seed, SPI, suite, ROLE_GROUP + i);
      assert.deepEqual(Buffer.from(k.up), Buffer.from(before.subarray(0, n)), "one group key for every member");
      tags.add(Buffer.from(k.confirm).toString("hex"));
    }
    assert.equal(tags.size, MAX_SENDERS);
  }
});

// The property: a receiver keeps one window per sender, so each sender's frames are judged against
// that sender's history alone. Model: per sender, the set of seqs accepted and the highest; a frame is
// accepted when it is new and no more than WINDOW_SIZE - 1 below its own sender's highest.
test("property: per-sender replay windows accept each (sender, seq) at most once, independently of other senders", () => {
  fc.assert(
    fc.property(
      fc.array(fc.record({ sender: fc.integer({ min: 1, max: 5 }), seq: fc.integer({ min: 1, max: 80 }) }), { minLength: 1, maxLength: 120 }),
      (deliveries) => {
        const keys = groupKeys();
        const rx = member(keys, 0);
        const seen = new Map<number, { top: number; got: Set<number> }>();
        for (const { sender, seq } of deliveries) {
          const tx = member(keys, sender);
          tx.txSeq_ = seq - 1;
          const f = seal(tx, `${sender}/${seq}`);
          const m = seen.get(sender) ?? { top: 0, got: new Set<number>() };
          const fresh = !m.got.has(seq) && seq > m.top - WINDOW_SIZE;
          const r = open(rx, f);
          assert.equal(r, fresh ? `${sender}/${seq}` : seq <= m.top - WINDOW_SIZE ? 2 : 1, `sender ${sender} seq ${seq}`);
          if (fresh) {
            m.got.add(seq);
            m.top = Math.max(m.top, seq);
          }
          seen.set(sender, m);
        }
        assert.ok(rx.rxs_!.filter(Boolean).length <= 5, "no more windows than senders heard");
      },
    ),
    { numRuns: 150 },
  );
});
