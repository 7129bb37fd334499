// Memory measured, not estimated: each board's unmodified bundle in the 32-bit Espruino interpreter
// sized like the board, its process.memory().usage at rest, with one SA, with four, and at the peak of
// a join and of a rekey, held to the board's budget (boards/index.ts) as keyproxy's own variables:
// usage minus that of the empty interpreter with the test's stand-ins. How each figure is taken:
// bench/real-memory.ts. The table goes to stdout (docs/BENCHMARKS.md records it).
import assert from "node:assert/strict";
import { BOARDS } from "../boards/index.ts";
import { measureBoard, own, table, type BoardMemory } from "../bench/real-memory.ts";
import { interpreterCrashes } from "../interpreter/device.ts";
import { realTest, REAL_BOARDS } from "./support/real.ts";

const rows: BoardMemory[] = [];

/** Every budget a board's figures must keep (own variables); failures listed together. */
function overBudget(m: BoardMemory): string[] {
  const b = BOARDS[m.board].budget;
  const out: string[] = [];
  const check = (what: string, usage: number, limit: number) => {
    if (own(m, usage) > limit) out.push(`${m.board} ${what}: ${own(m, usage)} own variables (usage ${usage} - empty ${m.empty}), budget ${limit}`);
  };
  check("at rest", m.rest, b.varsAtRest);
  check("with one SA (caller)", m.sa1[0], b.varsOneSa);
  check("with one SA (callee)", m.sa1[1], b.varsOneSa);
  check("with four SAs (caller)", m.sa4[0], b.varsLoaded);
  check("with four SAs (callee)", m.sa4[1], b.varsLoaded);
  check("at the peak of a join", m.joinPeak, b.varsLoaded);
  check("at the peak of a rekey", m.rekeyPeak, b.varsLoaded);
  return out;
}

/** Tries at measuring a board when the interpreter itself crashes on the way. */
const MEASURE_ATTEMPTS = 3;

/** The board's figures; measured again, said aloud, when the interpreter itself crashed on the way
 *  (a crash signal: the Linux build's console thread, docs/INTERPRETER.md, as interpreter/handsets.ts
 *  retries flashing and provisioning for): a host fault, not a measurement. Anything else, or a
 *  third crash, fails. */
async function measure(board: string): Promise<BoardMemory> {
  for (let attempt = 1; ; attempt++) {
    const crashes = interpreterCrashes();
    try {
      return await measureBoard(board);
    } catch (e) {
      if (interpreterCrashes() === crashes || attempt >= MEASURE_ATTEMPTS) throw e;
      const message = e instanceof Error ? e.message : String(e);
      console.log(`# ${board}: the interpreter crashed while being measured (${message.split("\n")[0]}); measuring again (${attempt + 1} of ${MEASURE_ATTEMPTS})`);
    }
  }
}

for (const board of REAL_BOARDS) {
  realTest(`${board}: keyproxy's own variables within the board's budget at rest, with 1 and 4 SAs, at the peak of a join and of a rekey`, [board], async () => {
    const m = await measure(board);
    rows.push(m);
    process.stdout.write(`\n${table([m])}\n`);
    // The figures are what they claim to be: an empty interpreter holds something, keyproxy more, a
    // session more again, four more than one, and the peaks at least what they rise from.
    assert.ok(m.empty > 0 && m.rest > m.empty, `empty ${m.empty}, at rest ${m.rest}`);
    assert.ok(m.sa1[0] > m.rest && m.sa1[1] > m.rest, `one SA ${m.sa1}, at rest ${m.rest}`);
    assert.ok(m.sa4[0] > m.sa1[0] && m.sa4[1] > m.sa1[1], `four SAs ${m.sa4}, one ${m.sa1}`);
    assert.ok(m.joinPeak > m.rest && m.rekeyPeak > m.sa1[0], `join peak ${m.joinPeak}, rekey peak ${m.rekeyPeak}`);
    assert.ok(m.bundleBytes <= BOARDS[board].budget.bundleBytes, `${m.bundleBytes} bytes`);
    assert.deepEqual(overBudget(m), []);
    if (board === "puckjs") {
      // issue 9's targets for a Puck.js, whatever its budget says.
      assert.ok(own(m, m.rest) <= 700, `Puck.js at rest: ${own(m, m.rest)} own variables, target 700`);
      assert.ok(Math.max(own(m, m.sa1[0]), own(m, m.sa1[1])) <= 760, `Puck.js with one SA: ${own(m, m.sa1[0])} / ${own(m, m.sa1[1])} own variables, target 760`);
    }
  }, 600_000);
}
