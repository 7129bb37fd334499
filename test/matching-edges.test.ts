// Suite matching (gateway/sessions/matching.ts) beyond the seed's worked examples (test/matching.test.ts):
// every item of an exact match on its own, range matching's edges (a range meeting another at one
// value, an unbounded range, a single value as a range), whose order a set is read in, who wins a
// tie, what a criterion weighs, and the two suites' own settings. Written for the mutants that
// survived `npm run mutation -- gateway/sessions/matching.ts` (docs/MUTATION.md).

import { test } from "node:test";
import assert from "node:assert/strict";
import { DEFAULT_MATCHING, matchSettings, overlap, suiteCandidates, SUITE_SETTINGS, type Candidate, type MatchOptions, type Setting } from "../gateway/sessions/matching.ts";
import { SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305 } from "../firmware/crypto/types.ts";

const A: Setting = { alg: "AES-CCM", keyBits: 128, hash: "CBC-MAC-64" };
const B: Setting = { alg: "XSalsa20", keyBits: 256, hash: "Poly1305" };
const C: Setting = { alg: "ChaCha20", keyBits: 256, hash: "Poly1305" };
const range = (chooser: MatchOptions["chooser"] = DEFAULT_MATCHING.chooser): MatchOptions => ({ mode: "range", chooser });

test("exact matching: each item must be equal on its own, and a set or a range never matches, on either side", () => {
  assert.equal(overlap(A, { ...A, alg: "AES-GCM" }, "exact"), undefined, "the algorithm alone differs");
  for (const other of [{ ...A, alg: ["AES-CCM"] }, { ...A, hash: ["CBC-MAC-64"] }, { ...A, keyBits: { min: 128, max: 128 } }]) {
    assert.equal(overlap(other, A, "exact"), undefined, JSON.stringify(other));
    assert.equal(overlap(A, other, "exact"), undefined, JSON.stringify(other));
    assert.deepEqual(overlap(other, A, "range"), { alg: "AES-CCM", keyBits: 128, hash: "CBC-MAC-64" }, "where range matching takes it");
  }
  // Nor when both sides hold the very same setting object (two devices registering the same suite
  // share SUITE_SETTINGS' object): a set or a range is still not one value.
  for (const shared of [{ ...A, alg: ["AES-CCM", "AES-GCM"] }, { ...A, hash: ["CBC-MAC-64"] }, { ...A, keyBits: { min: 128 } }]) {
    assert.equal(overlap(shared, shared, "exact"), undefined, JSON.stringify(shared));
  }
  // Exact is the default: a caller offering a set gets no match by default, one in range mode.
  const caller: Candidate[] = [{ setting: { ...A, alg: ["AES-GCM", "AES-CCM"] }, priority: 1 }];
  const callee: Candidate[] = [{ setting: A, priority: 1 }];
  assert.equal(matchSettings(caller, callee), undefined);
  assert.equal(matchSettings(caller, callee, range())?.setting.alg, "AES-CCM");
});

test("range matching: ranges that meet at one value match at it; an unbounded range reaches any key length; one value is a range of one", () => {
  const at = (a: Setting["keyBits"], b: Setting["keyBits"]) => overlap({ ...A, keyBits: a }, { ...A, keyBits: b }, "range")?.keyBits;
  assert.equal(at({ min: 64, max: 128 }, { min: 128 }), 128);
  assert.equal(at({ min: 64, max: 127 }, { min: 128 }), undefined);
  assert.equal(at({ min: 300 }, { min: 64, max: 256 }), undefined, "no maximum is no maximum, not no limit on the other side");
  assert.equal(at({ min: 64 }, { min: 4096 }), 4096);
  assert.equal(at(128, { min: 64 }), 128);
  assert.equal(at(128, { min: 64, max: 127 }), undefined);
  assert.equal(at(128, 256), undefined);
  assert.equal(at(256, 256), 256);
  // Every item must have something in common: the algorithms alone disjoint is no match.
  assert.equal(overlap({ ...A, alg: ["X", "Y"] }, { ...A, alg: ["Z"] }, "range"), undefined);
  assert.equal(overlap({ ...A, hash: ["X"] }, { ...A, hash: ["Z"] }, "range"), undefined);
});

test("a set is read in the favoured side's order: the callee's by default, the caller's when the caller is favoured, the callee's under a criterion", () => {
  const caller: Candidate[] = [{ setting: { alg: ["X", "Y"], keyBits: 128, hash: ["H1", "H2"] }, priority: 1 }];
  const callee: Candidate[] = [{ setting: { alg: ["Y", "X"], keyBits: 128, hash: ["H2", "H1"] }, priority: 1 }];
  assert.deepEqual(overlap(caller[0].setting, callee[0].setting, "range"), { alg: "Y", keyBits: 128, hash: "H2" });
  assert.deepEqual(overlap(caller[0].setting, callee[0].setting, "range", "a"), { alg: "X", keyBits: 128, hash: "H1" });
  assert.deepEqual(matchSettings(caller, callee, range())?.setting, { alg: "Y", keyBits: 128, hash: "H2" });
  assert.deepEqual(matchSettings(caller, callee, range({ by: "priority", favour: "caller" }))?.setting, { alg: "X", keyBits: 128, hash: "H1" });
  assert.deepEqual(matchSettings(caller, callee, range({ by: "strongest" }))?.setting, { alg: "Y", keyBits: 128, hash: "H2" });
});

test("priorities: the favoured side's decides, one without a priority comes last, and a tie falls to the other side's", () => {
  // The callee favoured: its priority 5 beats its candidate without one.
  const caller: Candidate[] = [{ setting: A, priority: 1 }, { setting: B, priority: 2 }];
  assert.equal(matchSettings(caller, [{ setting: A }, { setting: B, priority: 5 }])!.setting.alg, "XSalsa20");
  // A tie on the callee's priority: the caller's decides, either way round.
  assert.equal(matchSettings(caller, [{ setting: A, priority: 1 }, { setting: B, priority: 1 }])!.setting.alg, "AES-CCM");
  assert.equal(matchSettings([{ setting: A, priority: 2 }, { setting: B, priority: 1 }], [{ setting: A, priority: 1 }, { setting: B, priority: 1 }])!.setting.alg, "XSalsa20");
  assert.equal(matchSettings([{ setting: A }, { setting: B, priority: 9 }], [{ setting: A, priority: 1 }, { setting: B, priority: 1 }])!.setting.alg, "XSalsa20", "the caller's candidate without a priority loses the tie");
  // The caller favoured: the same, the other way round.
  const favourCaller: MatchOptions = { mode: "exact", chooser: { by: "priority", favour: "caller" } };
  assert.equal(matchSettings([{ setting: A }, { setting: B, priority: 5 }], caller.map((c) => ({ ...c })), favourCaller)!.setting.alg, "XSalsa20");
  assert.equal(matchSettings([{ setting: A, priority: 1 }, { setting: B, priority: 1 }], [{ setting: A, priority: 2 }, { setting: B, priority: 1 }], favourCaller)!.setting.alg, "XSalsa20");
  assert.equal(matchSettings([{ setting: A, priority: 1 }, { setting: B, priority: 1 }], [{ setting: A, priority: 1 }, { setting: B }], favourCaller)!.setting.alg, "AES-CCM");
});

test("a complete tie falls to the order the pairs are found in: the caller's list, then the callee's", () => {
  const strongest: MatchOptions = { mode: "exact", chooser: { by: "strongest" } };
  assert.equal(matchSettings([{ setting: C }, { setting: B }], [{ setting: B }, { setting: C }], strongest)!.setting.alg, "ChaCha20");
  assert.equal(matchSettings([{ setting: B }, { setting: C }], [{ setting: C }, { setting: B }], strongest)!.setting.alg, "XSalsa20");
  // Under a criterion the priorities play no part, not even in a tie.
  assert.equal(matchSettings([{ setting: C, priority: 9 }, { setting: B, priority: 1 }], [{ setting: B, priority: 1 }, { setting: C, priority: 9 }], strongest)!.setting.alg, "ChaCha20");
});

test("the lightest: AES-CCM with CBC-MAC before XSalsa20 with Poly1305, and a name it does not know after both, whatever the order offered", () => {
  const lightest: MatchOptions = { mode: "exact", chooser: { by: "lightest" } };
  const both = (list: Setting[]) => list.map((setting) => ({ setting }));
  assert.equal(matchSettings(both([B, A]), both([B, A]), lightest)!.setting.alg, "AES-CCM");
  const unknownAlg: Setting = { alg: "Serpent", keyBits: 256, hash: "Poly1305" };
  const unknownHash: Setting = { alg: "XSalsa20", keyBits: 256, hash: "SipHash" };
  assert.equal(matchSettings(both([unknownAlg, B]), both([unknownAlg, B]), lightest)!.setting.alg, "XSalsa20");
  assert.equal(matchSettings(both([unknownHash, B]), both([unknownHash, B]), lightest)!.setting.hash, "Poly1305");
  // The strongest is the longest key, whatever the order.
  assert.equal(matchSettings(both([A, B]), both([A, B]), { mode: "exact", chooser: { by: "strongest" } })!.setting.keyBits, 256);
});

test("the two suites a device can register, as settings; a registered [suite, priority] pair carries both through", () => {
  assert.deepEqual(SUITE_SETTINGS[SUITE_AES_CCM_16_64_128], { alg: "AES-CCM", keyBits: 128, hash: "CBC-MAC-64" });
  assert.deepEqual(SUITE_SETTINGS[SUITE_XSALSA20_POLY1305], { alg: "XSalsa20", keyBits: 256, hash: "Poly1305" });
  assert.deepEqual(suiteCandidates([[SUITE_XSALSA20_POLY1305, 3]]), [{ setting: SUITE_SETTINGS[SUITE_XSALSA20_POLY1305], priority: 3, id: SUITE_XSALSA20_POLY1305 }]);
  assert.deepEqual(DEFAULT_MATCHING, { mode: "exact", chooser: { by: "priority", favour: "callee" } });
});
