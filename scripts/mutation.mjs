#!/usr/bin/env node
// `npm run mutation -- [module or file ...]` or `npm run mutation -- --mutate <file>`: mutation testing of one
// module after another (docs/MUTATION.md), each against its own focused test files
// (stryker.config.mjs MODULES). No module: every module, in MODULES order. Runs Stryker under
// `nice -n 19` (other work shares the cores) and stops at the first module whose run fails.
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { MODULES, moduleNamed } from "../stryker.config.mjs";

/** Module names from the arguments: plain names or paths, or `--mutate <path>`. */
function modulesAsked(args) {
  const names = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--mutate") names.push(args[++i]);
    else if (args[i].startsWith("--mutate=")) names.push(args[i].slice("--mutate=".length));
    else if (args[i] === "--help" || args[i] === "-h") usage(0);
    else if (args[i].startsWith("-")) usage(2, `unknown option ${args[i]}`);
    else names.push(args[i]);
  }
  if (names.some((n) => n === undefined)) usage(2, "--mutate needs a module or file");
  // A module's name runs the module; one file of a module runs that file against the module's tests.
  for (const n of names) moduleNamed(n);
  return names.length ? [...new Set(names)] : Object.keys(MODULES);
}

function usage(code, problem) {
  if (problem) console.error(problem);
  console.error(`usage: npm run mutation -- [--mutate] <module or file> ...\nmodules: ${Object.keys(MODULES).join(", ")}`);
  process.exit(code);
}

let modules;
try {
  modules = modulesAsked(process.argv.slice(2));
} catch (e) {
  usage(2, e.message);
}

// The package exports no bin path: its file is found beside the repository's node_modules.
const stryker = fileURLToPath(new URL("../node_modules/@stryker-mutator/core/bin/stryker.js", import.meta.url));
for (const m of modules) {
  console.log(`\n== mutation: ${m} (tests: ${MODULES[moduleNamed(m)].tests.join(" ")})`);
  const r = spawnSync("nice", ["-n", "19", process.execPath, stryker, "run", "stryker.config.mjs"], {
    stdio: "inherit",
    env: { ...process.env, KP_MUTATION_MODULE: m },
  });
  if (r.status !== 0) {
    console.error(`mutation run of ${m} failed (exit ${r.status ?? r.signal})`);
    process.exit(r.status || 1);
  }
}
