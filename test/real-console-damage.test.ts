// The real-interpreter harness when a byte typed into the console is lost on the way. The Linux
// build's console thread races its main loop over the IO queue (docs/INTERPRETER.md, "A byte lost or
// a crash"): now and then one byte of a line never reaches the REPL, or reaches it as another byte.
// A fresh-clone CI run lost the "n" of "(function" in an eval's line and the eval never answered; a
// byte lost inside a string literal runs a different expression and answers wrongly. The race itself
// cannot be had on demand, so the cable here loses one chosen byte of one line, deterministically,
// on the way into the real interpreter; the harness must get the right answer anyway, with the
// expression run exactly once, wherever the byte was.
import assert from "node:assert/strict";
import { consoleFaults, RealDevice } from "../interpreter/device.ts";
import { tempDir } from "./support/harness.ts";
import { realTest } from "./support/real.ts";

/** A cable that loses one byte of the next line typed that contains `marker` (or of every such line,
 *  with loseAlways): the byte `at(line)`. */
function lossyCable(): { wire: (typed: string) => string; loseOnce: (marker: string, at: (line: string) => number) => void; loseAlways: (marker: string, at: (line: string) => number) => void } {
  let armed: { marker: string; at: (line: string) => number; always?: boolean } | undefined;
  return {
    wire(typed) {
      if (!armed || !typed.includes(armed.marker)) return typed;
      const i = armed.at(typed);
      if (!armed.always) armed = undefined;
      assert.ok(i >= 0 && i < typed.length, "the byte to lose is in the line");
      return typed.slice(0, i) + typed.slice(i + 1);
    },
    loseOnce(marker, at) {
      armed = { marker, at };
    },
    loseAlways(marker, at) {
      armed = { marker, at, always: true };
    },
  };
}

// The damaged eval's timeout: a line left waiting for a bracket is only noticed when it runs out, so
// the cases that lose one wait this long once, and then as long again at most for the retyped line
// (under qemu on a loaded machine an eval can take seconds).
const DAMAGED_EVAL_MS = 10_000;

realTest("an eval whose line loses a byte on the way in still answers right, and its expression runs once", ["puckjs"], async () => {
  const cable = lossyCable();
  const dev = new RealDevice({ board: "puckjs", dir: tempDir("kp-damage-"), name: "damaged-console", wire: cable.wire });
  try {
    await dev.start();
    // Each case counts its runs in a global of its own and answers with a string that shows both
    // the count and that the literal arrived whole.
    const cases: { name: string; at: (line: string) => number }[] = [
      // As in the CI run: the "n" of the line's first "function".
      { name: "first", at: (l) => l.indexOf("function") + 2 },
      // Inside the expression's string literal: the old line ran with "ABCEFGH" and answered it.
      { name: "literal", at: (l) => l.indexOf("ABCDEFGH") + 3 },
      // The "n" of the last "function" before the expression.
      { name: "inner", at: (l) => l.lastIndexOf("function(){") + 2 },
      // The line's last closing bracket: the REPL waits for it and runs nothing.
      { name: "bracket", at: (l) => l.lastIndexOf(")") },
      // The newline: the REPL waits for it.
      { name: "newline", at: (l) => l.lastIndexOf("\n") },
    ];
    for (const c of cases) {
      const counter = `global.kpHits_${c.name}`;
      cable.loseOnce(`kpHits_${c.name}`, c.at);
      const answer = await dev.eval<string>(`(${counter}=(${counter}|0)+1)+"ABCDEFGH"`, DAMAGED_EVAL_MS);
      assert.equal(answer, "1ABCDEFGH", `${c.name}: the right answer, the expression run once`);
      assert.equal(await dev.eval(counter), 1, `${c.name}: run once, however often its line was typed`);
    }
    // The console record says what happened, each time.
    assert.ok(dev.lines.filter((l) => l.startsWith("[harness]")).length >= cases.length, dev.lines.join("\n"));

    // Damaged every time it is typed: the eval fails, having run nothing, and counts as a console
    // fault (after which the tier runs a test again: test/support/real.ts).
    const faults = consoleFaults();
    cable.loseAlways("kpHits_always", (l) => l.indexOf("ABCDEFGH") + 3);
    await assert.rejects(dev.eval(`(global.kpHits_always=(global.kpHits_always|0)+1)+"ABCDEFGH"`, DAMAGED_EVAL_MS), /failed its checksum 4 times in a row/);
    assert.equal(consoleFaults(), faults + 1, "one console fault counted");
    cable.loseOnce("nothing-matches-this", () => 0);
    assert.equal(await dev.eval("typeof global.kpHits_always"), "undefined", "the damaged line never ran");
  } finally {
    await dev.powerOff();
  }
});
