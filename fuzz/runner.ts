// Runs one target for n inputs and applies the three oracles to every input:
//   crash         an exception other than the parser's documented rejection
//   hang          one input using more than hangMs of CPU time (measured per input), or more than
//                 stuckMs of wall time (an input waiting for something that never comes: 10 minutes,
//                 because a nice-19 process on this loaded machine has gone a minute unscheduled); an input
//                 that never finishes is caught by a watchdog thread, which prints it and kills the
//                 process. CPU time, not wall time, because the full run shares a loaded machine at
//                 nice 19: a process that gets no CPU for seconds is not a parser that loops.
//   state change  the owner's snapshot differs after a rejected input
// Every finding keeps the input (hex), the seed and the input's index.

import { Worker } from "node:worker_threads";
import { performance } from "node:perf_hooks";
import { generate, SeedPool } from "./mutate.ts";
import { Rng } from "./rng.ts";
import type { Target, TargetInstance } from "./target.ts";

export interface Finding {
  kind: "crash" | "hang" | "state change";
  target: string;
  seed: number;
  index: number;
  input: string;
  detail: string;
}

export interface TargetResult {
  target: string;
  inputs: number;
  rejected: number;
  accepted: number;
  /** CPU time of the slowest input, µs (the process's: for link-tcp it includes the gateway's work). */
  slowestUs: number;
  slowestInput: string;
  crashes: number;
  hangs: number;
  stateChanges: number;
  findings: Finding[];
  seconds: number;
}

export interface RunOptions {
  count: number;
  seed: number;
  /** An input using more CPU time than this is a hang (default 1,000 ms). */
  hangMs?: number;
  /** An input taking more wall time than this is a hang too (default 10 minutes). */
  stuckMs?: number;
  /** An input still running after this much CPU time, or stuckMs of wall time, kills the run
   *  (default 10 s of CPU; 0: no watchdog). */
  watchdogMs?: number;
  /** Findings kept per kind (default 5); all are counted. */
  keep?: number;
  onProgress?: (done: number) => void;
}

const toHex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.length).toString("hex");

function describe(e: unknown): string {
  if (e instanceof Error) return `${e.constructor.name}: ${e.message}\n${(e.stack ?? "").split("\n").slice(1, 6).join("\n")}`;
  return `non-Error thrown: ${String(e)}`;
}

/** The watchdog: a thread that sees the current input through shared memory and, if one input has
 *  used more than ms of the process's CPU time (the watchdog itself idles) or stuckMs of wall time,
 *  prints it with the seed and kills the process (a synchronous endless loop cannot be interrupted
 *  from inside). */
class Watchdog {
  private readonly ctl = new Int32Array(new SharedArrayBuffer(16)); // [generation, running, length]
  private readonly buf = new Uint8Array(new SharedArrayBuffer(1 << 16));
  private readonly worker: Worker;

  constructor(target: string, seed: number, ms: number, stuckMs: number) {
    const code = `
      const { workerData } = require("node:worker_threads");
      const fs = require("node:fs");
      const { ctl, buf, target, seed, ms, stuckMs } = workerData;
      const cpuMs = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1000; };
      let last = -1, since = Date.now(), cpuSince = cpuMs();
      setInterval(() => {
        const gen = Atomics.load(ctl, 0);
        if (gen !== last || Atomics.load(ctl, 1) === 0) { last = gen; since = Date.now(); cpuSince = cpuMs(); return; }
        const cpu = cpuMs() - cpuSince, wall = Date.now() - since;
        if (cpu < ms && wall < stuckMs) return;
        const n = Atomics.load(ctl, 2);
        const hex = Buffer.from(buf.slice(0, n)).toString("hex");
        fs.writeSync(2, "\\nHANG: target " + target + ", seed " + seed + ", input " + gen + " still running after " + Math.round(cpu) + " ms of CPU time, " + wall + " ms of wall time\\ninput (hex" + (n === buf.length ? ", first 64 KB" : "") + "): " + hex + "\\n");
        process.kill(process.pid, "SIGKILL");
      }, 1000);
    `;
    this.worker = new Worker(code, { eval: true, workerData: { ctl: this.ctl, buf: this.buf, target, seed, ms, stuckMs } });
    this.worker.unref();
  }

  begin(index: number, input: Uint8Array): void {
    const n = Math.min(input.length, this.buf.length);
    this.buf.set(input.subarray(0, n));
    Atomics.store(this.ctl, 2, n);
    Atomics.store(this.ctl, 0, index);
    Atomics.store(this.ctl, 1, 1);
  }

  end(): void {
    Atomics.store(this.ctl, 1, 0);
  }

  async stop(): Promise<void> {
    await this.worker.terminate();
  }
}

export async function runTarget(target: Target, o: RunOptions): Promise<TargetResult> {
  const hangMs = o.hangMs ?? 1000;
  const stuckMs = o.stuckMs ?? 600_000;
  const keep = o.keep ?? 5;
  const rng = new Rng(o.seed);
  const started = performance.now();
  const inst: TargetInstance = await target.setup(new Rng(o.seed ^ 0x5eed));
  const watchdog = (o.watchdogMs ?? 10_000) > 0 ? new Watchdog(target.name, o.seed, o.watchdogMs ?? 10_000, Math.max(stuckMs, o.watchdogMs ?? 10_000)) : undefined;
  const pool = new SeedPool();
  const r: TargetResult = { target: target.name, inputs: 0, rejected: 0, accepted: 0, slowestUs: 0, slowestInput: "", crashes: 0, hangs: 0, stateChanges: 0, findings: [], seconds: 0 };
  const found = (kind: Finding["kind"], index: number, input: Uint8Array, detail: string): void => {
    if (kind === "crash") r.crashes++;
    else if (kind === "hang") r.hangs++;
    else r.stateChanges++;
    if (r.findings.filter((f) => f.kind === kind).length < keep) r.findings.push({ kind, target: target.name, seed: o.seed, index, input: toHex(input), detail });
  };
  let before = await inst.snapshot?.();
  try {
    for (let i = 0; i < o.count; i++) {
      if (inst.prepare && (await inst.prepare())) before = await inst.snapshot?.();
      const input = inst.generate?.(rng) ?? generate(rng, inst.seeds(), pool).input;
      watchdog?.begin(i, input);
      let outcome: "accepted" | "rejected" | "crash";
      let error: unknown;
      const t0 = performance.now();
      const cpu0 = process.cpuUsage();
      try {
        const ran = inst.run(input);
        outcome = ran instanceof Promise ? await ran : ran;
      } catch (e) {
        error = e;
        outcome = inst.isRejection(e) ? "rejected" : "crash";
      }
      const cpu = process.cpuUsage(cpu0);
      const us = cpu.user + cpu.system;
      const wallMs = performance.now() - t0;
      watchdog?.end();
      r.inputs++;
      if (us > r.slowestUs) {
        r.slowestUs = us;
        r.slowestInput = input.length > 64 ? toHex(input.subarray(0, 64)) + "..." : toHex(input);
      }
      if (us > hangMs * 1000 || wallMs > stuckMs) found("hang", i, input, `took ${Math.round(us / 1000)} ms of CPU time (limit ${hangMs} ms), ${Math.round(wallMs)} ms of wall time (limit ${stuckMs} ms)`);
      if (outcome === "crash") {
        found("crash", i, input, describe(error));
        outcome = "rejected";
      }
      if (outcome === "accepted") r.accepted++;
      else r.rejected++;
      if (inst.snapshot) {
        const after = await inst.snapshot();
        const same = inst.sameState ? inst.sameState(before as string, after) : after === before;
        if (outcome === "rejected" && !same) found("state change", i, input, `before: ${before}\nafter:  ${after}`);
        before = after;
      }
      if (o.onProgress && i > 0 && i % 100_000 === 0) o.onProgress(i);
    }
  } finally {
    await watchdog?.stop();
    await inst.close?.();
  }
  r.seconds = (performance.now() - started) / 1000;
  return r;
}

export const fmt = (n: number): string => n.toLocaleString("en-US");

export function table(results: TargetResult[]): string {
  const head = ["target", "inputs", "rejected", "accepted", "slowest µs (CPU)", "crashes", "hangs", "state changes", "seconds"];
  const rows = results.map((r) => [r.target, fmt(r.inputs), fmt(r.rejected), fmt(r.accepted), fmt(Math.round(r.slowestUs)), String(r.crashes), String(r.hangs), String(r.stateChanges), r.seconds.toFixed(1)]);
  const lines = [head, head.map(() => "---"), ...rows].map((cells) => `| ${cells.join(" | ")} |`);
  return lines.join("\n");
}

