// npm run fuzz [-- --target <name>] [--count <n>] [--seed <n>]
// Runs every target (or one) for n inputs each (default 1,000,000), one after another, and prints a
// table. Exits 1 when any crash, hang or state change was found, with each finding's input in hex
// and the seed that reproduces the run; 0 otherwise. docs/FUZZING.md describes targets and oracles.

import { randomBytes } from "node:crypto";
import { fmt, runTarget, table, type TargetResult } from "./runner.ts";
import { TARGETS } from "./targets/index.ts";

interface Args {
  targets: string[];
  count: number;
  seed: number;
}

function usage(why: string): never {
  process.stderr.write(`${why}\nusage: npm run fuzz -- [--target <name>[,<name>...]] [--count <n>] [--seed <n>]\ntargets: ${TARGETS.map((t) => t.name).join(", ")}\n`);
  process.exit(2);
}

function parseArgs(argv: string[]): Args {
  const a: Args = { targets: TARGETS.map((t) => t.name), count: 1_000_000, seed: randomBytes(4).readUInt32BE(0) };
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i + 1];
    if (argv[i] === "--target" && v) a.targets = v.split(",");
    else if (argv[i] === "--count" && v && /^\d+$/.test(v)) a.count = Number(v);
    else if (argv[i] === "--seed" && v && /^\d+$/.test(v)) a.seed = Number(v) >>> 0;
    else usage(`unknown or incomplete argument: ${argv[i]}`);
    i++;
  }
  for (const t of a.targets) if (!TARGETS.some((x) => x.name === t)) usage(`no target named "${t}"`);
  return a;
}

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2));
  const started = Date.now();
  process.stdout.write(`fuzz: seed ${a.seed}, ${fmt(a.count)} inputs per target, targets ${a.targets.join(", ")}\n`);
  const results: TargetResult[] = [];
  for (const name of a.targets) {
    const target = TARGETS.find((t) => t.name === name)!;
    process.stdout.write(`${name}: ${target.about}\n`);
    const r = await runTarget(target, {
      count: a.count,
      seed: a.seed,
      // Progress every 100,000 inputs, so a run stopped early still says how far each target got.
      onProgress: (i) => process.stdout.write(`  ${fmt(i)} / ${fmt(a.count)} at ${new Date().toISOString()}\n`),
    });
    process.stdout.write(`  ${fmt(r.inputs)} inputs in ${r.seconds.toFixed(1)} s: ${fmt(r.rejected)} rejected, ${fmt(r.accepted)} accepted, slowest ${fmt(Math.round(r.slowestUs))} µs, ${r.crashes} crashes, ${r.hangs} hangs, ${r.stateChanges} state changes\n`);
    for (const f of r.findings) process.stdout.write(`  ${f.kind.toUpperCase()} (target ${f.target}, seed ${f.seed}, input #${f.index}):\n    input (hex): ${f.input}\n    ${f.detail.replace(/\n/g, "\n    ")}\n`);
    results.push(r);
  }
  process.stdout.write(`\n${table(results)}\n\nseed ${a.seed}; ${((Date.now() - started) / 1000).toFixed(1)} s in all\n`);
  const bad = results.some((r) => r.crashes + r.hangs + r.stateChanges > 0);
  if (bad) process.stdout.write(`FOUND PROBLEMS: rerun with --seed ${a.seed} to reproduce\n`);
  process.exitCode = bad ? 1 : 0;
}

await main();
