// Suite matching (seed 003 §5.4, checklist 18-22), with the seed's worked examples.
import { test } from "node:test";
import assert from "node:assert/strict";
import { matchSettings, overlap, suiteCandidates, type Candidate, type Setting } from "../gateway/sessions/matching.ts";
import { SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305 } from "../firmware/crypto/types.ts";

const A: Setting = { alg: "AES-CCM", keyBits: 128, hash: "CBC-MAC-64" };
const B: Setting = { alg: "XSalsa20", keyBits: 256, hash: "Poly1305" };
const C: Setting = { alg: "ChaCha20", keyBits: 256, hash: "Poly1305" };

test("exact matching needs every item equal: entries differing only in the hash do not match (checklist 19)", () => {
  assert.deepEqual(overlap(A, { ...A }, "exact"), { alg: "AES-CCM", keyBits: 128, hash: "CBC-MAC-64" });
  assert.equal(overlap(A, { ...A, hash: "CBC-MAC-128" }, "exact"), undefined);
  assert.equal(overlap(A, { ...A, keyBits: 256 }, "exact"), undefined);
  assert.equal(matchSettings([{ setting: A, priority: 1 }], [{ setting: { ...A, hash: "GMAC" }, priority: 1 }]), undefined);
});

test("range matching: {A, >=64, hash A|B} and {A, >=128, hash B|C} resolve to {A, 128, B} (checklist 20)", () => {
  const t30: Setting = { alg: "A", keyBits: { min: 64 }, hash: ["A", "B"] };
  const t40: Setting = { alg: "A", keyBits: { min: 128 }, hash: ["B", "C"] };
  assert.deepEqual(overlap(t30, t40, "range"), { alg: "A", keyBits: 128, hash: "B" });
  const m = matchSettings([{ setting: t30 }], [{ setting: t40 }], { mode: "range", chooser: { by: "priority", favour: "callee" } });
  assert.deepEqual(m?.setting, { alg: "A", keyBits: 128, hash: "B" });
  // Disjoint ranges or sets do not match.
  assert.equal(overlap(t30, { ...t40, keyBits: { min: 16, max: 32 } }, "range"), undefined);
  assert.equal(overlap(t30, { ...t40, hash: ["C"] }, "range"), undefined);
});

test("receiver first: matches 802-814 and 804-812 with 812 = 1 and 814 = 2 choose setting B (checklist 21, Fig. 13)", () => {
  const t30: Candidate[] = [
    { setting: A, priority: 1, id: 802 },
    { setting: B, priority: 2, id: 804 },
    { setting: C, priority: 3, id: 806 },
  ];
  const t40: Candidate[] = [
    { setting: B, priority: 1, id: 812 },
    { setting: A, priority: 2, id: 814 },
  ];
  const m = matchSettings(t30, t40)!;
  assert.equal(m.setting.alg, "XSalsa20");
  assert.equal(m.caller.id, 804);
  assert.equal(m.callee.id, 812);
  // The same tables with the caller favoured choose A (802-814): the ranking decides, not the order.
  assert.equal(matchSettings(t30, t40, { mode: "exact", chooser: { by: "priority", favour: "caller" } })!.caller.id, 802);
});

test("a configured criterion picks exactly one setting without priorities (checklist 22)", () => {
  const mine: Candidate[] = [{ setting: A }, { setting: B }];
  assert.equal(matchSettings(mine, mine, { mode: "exact", chooser: { by: "strongest" } })!.setting.keyBits, 256);
  assert.equal(matchSettings(mine, mine, { mode: "exact", chooser: { by: "lightest" } })!.setting.alg, "AES-CCM");
});

test("no common setting means no match (checklist 18)", () => {
  assert.equal(matchSettings([{ setting: A, priority: 1 }], [{ setting: B, priority: 1 }]), undefined);
  assert.equal(matchSettings([], [{ setting: B, priority: 1 }]), undefined);
});

test("registered suites become candidates; unknown suites are left out", () => {
  const c = suiteCandidates([[SUITE_AES_CCM_16_64_128, 1], [999, 2], [SUITE_XSALSA20_POLY1305, 3]]);
  assert.deepEqual(c.map((x) => x.id), [SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305]);
  const puck = suiteCandidates([[SUITE_AES_CCM_16_64_128, 1]]);
  const bangle = suiteCandidates([[SUITE_XSALSA20_POLY1305, 1], [SUITE_AES_CCM_16_64_128, 2]]);
  assert.equal(matchSettings(puck, bangle)!.callee.id, SUITE_AES_CCM_16_64_128);
});
