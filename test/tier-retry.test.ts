// The real tier's one rerun (test/support/real.ts onceMoreAfterCrash): only after an interpreter
// crash, only once, and never for a failure of the firmware or the test itself.
import assert from "node:assert/strict";
import { test } from "node:test";
import { onceMoreAfterCrash } from "./support/real.ts";

test("a failure during which an interpreter crashed runs once more, and passes if the rerun passes", async () => {
  let crashes = 0;
  let runs = 0;
  const said: string[] = [];
  await onceMoreAfterCrash(async () => {
    runs++;
    if (runs === 1) {
      crashes++;
      throw new Error("puck: the interpreter stopped\nmore");
    }
  }, () => crashes, (why) => said.push(why));
  assert.equal(runs, 2);
  assert.deepEqual(said, ["puck: the interpreter stopped"]);
});

test("a failure without a crash fails at once; a second failure after a crash fails", async () => {
  let runs = 0;
  await assert.rejects(onceMoreAfterCrash(async () => { runs++; throw new Error("wrong tag"); }, () => 0, () => {}), /wrong tag/);
  assert.equal(runs, 1);
  let crashes = 0;
  runs = 0;
  await assert.rejects(onceMoreAfterCrash(async () => { runs++; crashes++; throw new Error(`crash ${runs}`); }, () => crashes, () => {}), /crash 2/);
  assert.equal(runs, 2);
});
