#!/usr/bin/env node
// `node scripts/mutation-survivors.mjs <report.json> <test file> ...`: re-tests only the survivors of a
// Stryker JSON report (reports/mutation/*.json) against the given test files, without a whole run
// (docs/MUTATION.md). Each surviving or uncovered mutant is applied alone to its file, from the
// source the report holds, the tests run one file at a time until one fails, and the file is put
// back. Run it in a copy of the tree (one made with `git archive`), never in a shared working tree:
// it rewrites source files while it runs.
import { spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";

const [reportFile, ...tests] = process.argv.slice(2);
if (!reportFile || !tests.length) {
  console.error("usage: node scripts/mutation-survivors.mjs <report.json> <test file> ...");
  process.exit(2);
}
const report = JSON.parse(readFileSync(reportFile, "utf8"));

/** Offset in source of a Stryker location (lines and columns count from 1). */
function offsetOf(source, { line, column }) {
  const lines = source.split("\n");
  let at = 0;
  for (let i = 0; i < line - 1; i++) at += lines[i].length + 1;
  return at + column - 1;
}

/** A test that runs longer than this under a mutant hangs on it: it fails, and the mutant counts as
 *  killed, as Stryker counts a timeout (KP_SURVIVOR_TIMEOUT_MS, default 1 minute). --test-force-exit:
 *  a mutant that leaves a handle open (a broker, a client that never ends) must not hold the run. */
const TIMEOUT_MS = Number(process.env.KP_SURVIVOR_TIMEOUT_MS ?? 60_000);
const testArgs = (t) => ["-n", "19", process.execPath, "--import", "tsx", "--test", `--test-timeout=${TIMEOUT_MS}`, "--test-force-exit", t];

const killedBy = () => tests.find((t) => spawnSync("nice", testArgs(t), { stdio: "ignore" }).status !== 0);

let killed = 0;
const left = [];
for (const [file, { source, mutants }] of Object.entries(report.files)) {
  const current = readFileSync(file, "utf8");
  try {
    for (const m of mutants) {
      if (m.status !== "Survived" && m.status !== "NoCoverage") continue;
      const from = offsetOf(source, m.location.start);
      const to = offsetOf(source, m.location.end);
      writeFileSync(file, source.slice(0, from) + m.replacement + source.slice(to));
      if (killedBy()) killed++;
      else left.push(`${file}:${m.location.start.line} ${m.mutatorName} -> ${m.replacement.slice(0, 70)}`);
    }
  } finally {
    writeFileSync(file, current);
  }
}
console.log(`killed ${killed}, still surviving ${left.length}`);
for (const l of left) console.log(`  ${l}`);
