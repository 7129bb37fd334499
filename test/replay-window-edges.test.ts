// The replay window (firmware/proto/replay.ts) at the edges the set-based model in proto.test.ts
// seldom draws: the largest sequence number, a jump of exactly the window's size (JavaScript
// shifts by 32 as by 0, so this one needs its own branch), and what recording returns. Written for
// the mutants that survived `npm run mutation -- firmware/proto/replay.ts` (docs/MUTATION.md).
import { test } from "node:test";
import assert from "node:assert/strict";
import { newWindow, replay, WINDOW_SIZE } from "../firmware/proto/replay.ts";

test("the largest sequence number, 2^32 - 1, is valid; 2^32 is not", () => {
  const w = newWindow();
  assert.equal(replay(w, 0xffffffff, false), "ok");
  assert.equal(replay(w, 0xffffffff, true), "ok");
  assert.equal(replay(w, 0xffffffff, false), "replayed");
  assert.equal(replay(w, 0x100000000, false), "invalid");
});

test("a jump of exactly the window size forgets every earlier mark", () => {
  const w = newWindow();
  for (const s of [1, 2, 3]) replay(w, s, true);
  replay(w, 3 + WINDOW_SIZE, true);
  assert.deepEqual(w, { top: 3 + WINDOW_SIZE, bits: 1 });
  // Each of the 31 numbers below the new top is fresh: none was seen.
  for (let s = 4; s < 3 + WINDOW_SIZE; s++) assert.equal(replay(w, s, false), "ok", `seq ${s}`);
  assert.equal(replay(w, 3, false), "too-old");
});

test("a jump of one less than the window size keeps the oldest mark at the window's edge", () => {
  const w = newWindow();
  replay(w, 1, true);
  replay(w, WINDOW_SIZE, true);
  assert.equal(replay(w, 1, false), "replayed");
  assert.equal(replay(w, 2, false), "ok");
});

test("recording answers ok, whether the number moves the top or fills the window", () => {
  const w = newWindow();
  assert.equal(replay(w, 10, true), "ok");
  assert.equal(replay(w, 7, true), "ok");
  assert.deepEqual(w, { top: 10, bits: 0b1001 });
});
