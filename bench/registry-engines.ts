// The registry's engines side by side (issue 12): bench/sessions.ts's gateway under load
// (KEYPROXY_BENCH_GATEWAY_ONLY=1: one gateway process, 100 Node handsets, rounds of 50 setups at once,
// then setups one at a time) with its registry
//   a. in SQLite, on this checkout,
//   b. in PostgreSQL, on this checkout (a fresh database per run, on one server for the whole run),
//   c. in SQLite, on another checkout given with --before <dir> (e.g. `git worktree add /tmp/kp-before
//      bead46a`, the registry before it became asynchronous, node_modules linked from this one),
// interleaved: each repetition runs the three, each in a fresh process, in an order rotated from one
// repetition to the next, so that a change in the machine's load falls on all three alike. Ratios are
// taken within a repetition (b/a and a/c of the same repetition), then their median across repetitions.
//
// Usage: node --import tsx bench/registry-engines.ts [--before <dir>] [--repeats <n>] > results.json
// Prints every run's results (and the load average before and after each) as JSON on stdout, and the
// summary as a markdown table on stderr. KEYPROXY_BENCH_ROUNDS passes on to each run;
// KEYPROXY_BENCH_POSTGRES_URL names an existing server instead of a throwaway cluster (bench/postgres.ts).

import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { benchPostgresServer, BENCH_POSTGRES_URL_ENV } from "./postgres.ts";
import type { GatewaySessionResults } from "./sessions.ts";
import { median } from "./timing.ts";

const HERE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

interface Variant {
  key: "a" | "b" | "c";
  what: string;
  root: string;
  env: Record<string, string>;
}

interface Run {
  variant: Variant["key"];
  repetition: number;
  loadAverageBefore: string;
  loadAverageAfter: string;
  wallS: number;
  gateway: GatewaySessionResults;
}

function loadAverage(): string {
  return fs.readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
}

function parseArgs(argv: string[]): { before?: string; repeats: number } {
  let before: string | undefined;
  let repeats = 3;
  for (let i = 0; i < argv.length; i++) {
    const value = argv[i + 1];
    if (argv[i] === "--before" && value) {
      before = path.resolve(value);
      i++;
    } else if (argv[i] === "--repeats" && value && Number.isInteger(Number(value)) && Number(value) > 0) {
      repeats = Number(value);
      i++;
    } else throw new Error(`usage: registry-engines.ts [--before <checkout>] [--repeats <n>]; not understood: ${argv[i]}`);
  }
  if (before && !fs.existsSync(path.join(before, "bench", "sessions.ts"))) throw new Error(`--before ${before}: no bench/sessions.ts there`);
  if (before && !fs.existsSync(path.join(before, "node_modules"))) throw new Error(`--before ${before}: no node_modules there (link this checkout's)`);
  return { before, repeats };
}

/** One run of bench/sessions.ts in the variant's checkout, in its own process. */
function runOnce(v: Variant, log: (s: string) => void): Promise<{ gateway: GatewaySessionResults; wallS: number }> {
  const t0 = Date.now();
  const child = spawn(process.execPath, ["--import", "tsx", "bench/sessions.ts"], {
    cwd: v.root,
    env: { ...process.env, KEYPROXY_BENCH_GATEWAY_ONLY: "1", ...v.env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stdout.on("data", (b: Buffer) => (out += b));
  child.stderr.on("data", (b: Buffer) => (err += b));
  return new Promise((resolve, reject) => {
    child.once("error", reject);
    child.once("exit", (code) => {
      if (code !== 0) return reject(new Error(`${v.key} (${v.what}) exited with ${code}: ${err.trim().split("\n").slice(-5).join(" | ")}`));
      log(`  ${v.key} done in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
      resolve({ gateway: (JSON.parse(out) as { gateway: GatewaySessionResults }).gateway, wallS: (Date.now() - t0) / 1000 });
    });
  });
}

interface Figure {
  name: string;
  of: (g: GatewaySessionResults) => number | undefined;
  digits: number;
}

const FIGURES: Figure[] = [
  { name: "gateway CPU per setup, µs (user + system)", of: (g) => g.gatewayCpuUsPerSetup, digits: 0 },
  { name: "  of which system time, µs", of: (g) => g.gatewaySystemUsPerSetup, digits: 0 },
  { name: "PostgreSQL server CPU per setup, µs (all its processes)", of: (g) => g.postgres?.serverCpuUsPerSetup, digits: 0 },
  { name: "setups per second, 50 pairs at once", of: (g) => g.setupsPerSecond, digits: 0 },
  { name: "latency p50, 50 pairs at once, ms", of: (g) => g.concurrent.p50Ms, digits: 1 },
  { name: "latency p99, 50 pairs at once, ms", of: (g) => g.concurrent.p99Ms, digits: 1 },
  { name: "latency p50, one pair at a time, ms", of: (g) => g.sequential.p50Ms, digits: 2 },
  { name: "latency p99, one pair at a time, ms", of: (g) => g.sequential.p99Ms, digits: 2 },
  { name: "raw crypto of one setup, µs (median, timed in the run)", of: (g) => g.rawCrypto.medianUs, digits: 0 },
];

function fmt(x: number | undefined, digits: number): string {
  return x === undefined || Number.isNaN(x) ? "-" : x.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

/** Median over the repetitions, with the lowest and highest beside it. */
function spread(xs: number[], digits: number): string {
  if (!xs.length) return "-";
  const lo = Math.min(...xs);
  const hi = Math.max(...xs);
  return xs.length === 1 ? fmt(xs[0], digits) : `${fmt(median(xs), digits)} (${fmt(lo, digits)}-${fmt(hi, digits)})`;
}

/** The summary table: each figure's median (range) per variant, and the ratios b/a and a/c, each taken
 *  within one repetition, as the median (range) over the repetitions. */
function summary(runs: Run[], variants: Variant[], repeats: number): string {
  const of = (key: Variant["key"], rep: number) => runs.find((r) => r.variant === key && r.repetition === rep)?.gateway;
  const has = (key: Variant["key"]) => variants.some((v) => v.key === key);
  const ratio = (f: Figure, num: Variant["key"], den: Variant["key"]) => {
    const xs: number[] = [];
    for (let rep = 0; rep < repeats; rep++) {
      const n = of(num, rep);
      const d = of(den, rep);
      const x = n && d ? (f.of(n) ?? NaN) / (f.of(d) ?? NaN) : NaN;
      if (Number.isFinite(x)) xs.push(x);
    }
    return xs.length ? spread(xs, 2) : "-";
  };
  const head = ["", ...variants.map((v) => `${v.key}: ${v.what}`), ...(has("b") ? ["b/a"] : []), ...(has("c") ? ["a/c"] : [])];
  const lines = [`| ${head.join(" | ")} |`, `|${head.map((_, i) => (i ? "---:" : ":---")).join("|")}|`];
  for (const f of FIGURES) {
    const cells = variants.map((v) => spread(runs.filter((r) => r.variant === v.key).map((r) => f.of(r.gateway)).filter((x): x is number => x !== undefined), f.digits));
    lines.push(`| ${[f.name, ...cells, ...(has("b") ? [ratio(f, "b", "a")] : []), ...(has("c") ? [ratio(f, "a", "c")] : [])].join(" | ")} |`);
  }
  return lines.join("\n");
}

async function main(): Promise<void> {
  const log = (s: string) => process.stderr.write(s + "\n");
  const { before, repeats } = parseArgs(process.argv.slice(2));
  // One server for every PostgreSQL run; each run makes its own database on it.
  const postgres = await benchPostgresServer(log);
  const variants: Variant[] = [
    { key: "a", what: "SQLite", root: HERE, env: {} },
    { key: "b", what: "PostgreSQL", root: HERE, env: { KEYPROXY_BENCH_REGISTRY: "postgres", [BENCH_POSTGRES_URL_ENV]: postgres } },
    ...(before ? [{ key: "c" as const, what: `SQLite, ${path.basename(before)}`, root: before, env: {} }] : []),
  ];
  const runs: Run[] = [];
  const started = new Date().toISOString();
  for (let rep = 0; rep < repeats; rep++) {
    // Rotated: a b c, then b c a, then c a b, ...
    const order = variants.map((_, i) => variants[(i + rep) % variants.length]);
    log(`repetition ${rep + 1} of ${repeats}: ${order.map((v) => v.key).join(" ")}`);
    for (const v of order) {
      const loadAverageBefore = loadAverage();
      const { gateway, wallS } = await runOnce(v, log);
      runs.push({ variant: v.key, repetition: rep, loadAverageBefore, loadAverageAfter: loadAverage(), wallS, gateway });
    }
  }
  // The variants without their environment: a server's URL may hold a password.
  const described = variants.map(({ key, what, root }) => ({ key, what, root }));
  process.stdout.write(JSON.stringify({ started, ended: new Date().toISOString(), variants: described, repeats, runs }, null, 2) + "\n");
  log("\n" + summary(runs, variants, repeats));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  main().catch((e: unknown) => {
    process.stderr.write(`registry-engines failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exitCode = 1;
  });
}
