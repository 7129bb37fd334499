// Every board's bundle within its byte budget. Variables are not checked here: the emulator's figure is
// a model that does not follow the real interpreter (docs/EMULATOR.md "Memory"); each board's variable
// budget is checked on the real interpreter by test/real-memory.test.ts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { BOARDS } from "../boards/index.ts";
import { buildFirmware } from "../flash/build.ts";
import { tempDir } from "./support/harness.ts";

for (const board of Object.values(BOARDS)) {
  test(`${board.id}: bundle within ${board.budget.bundleBytes} bytes`, async () => {
    const build = await buildFirmware({ board: board.id, outDir: tempDir("kp-mem-") });
    assert.ok(build.ok, build.problems.join("\n"));
    assert.ok(build.bytes <= board.budget.bundleBytes, `${build.bytes} bytes, budget ${board.budget.bundleBytes}`);
  });
}
