// Timing for the benchmark, inside the emulated device and in Node alike: an iteration count chosen so
// one repetition lasts about `targetMs`, several repetitions interleaved across the tasks, and the
// median per operation.
//
// Inside the VM we time with the device's own clock (Date.now(), 1 ms resolution): one repetition of
// ~150 ms keeps the rounding under 1%. The loop is evaluated as one piece of code with the statement
// inlined, so no extra function call is timed with it.

import type { EmulatedDevice } from "../emulator/device.ts";

export interface Timing {
  /** Per-operation time of each repetition, in microseconds. */
  samplesUs: number[];
  medianUs: number;
  minUs: number;
  maxUs: number;
  /** Operations per repetition. */
  iterations: number;
}

export interface TimingOptions {
  repetitions: number;
  /** Length one repetition should have. */
  targetMs: number;
}

export const DEFAULT_TIMING: TimingOptions = { repetitions: 7, targetMs: 150 };

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

function summarise(samplesUs: number[], iterations: number): Timing {
  return { samplesUs, medianUs: median(samplesUs), minUs: Math.min(...samplesUs), maxUs: Math.max(...samplesUs), iterations };
}

/** Finds how many iterations fill targetMs, given a function that times n of them in ms. Starts at
 *  one (a warm-up that also surfaces errors before any loop), doubles until a run lasts 40 ms, then
 *  checks the estimate once at full length (the first runs include one-off costs such as a Storage
 *  file being created, which would leave the repetitions too short). */
function calibrate(timeN: (n: number) => number, targetMs: number): number {
  let n = 1;
  let ms = timeN(n);
  while (ms < 40 && n < 1 << 24) {
    n *= 2;
    ms = timeN(n);
  }
  n = Math.max(1, Math.round((n * targetMs) / Math.max(ms, 1)));
  ms = timeN(n);
  return Math.max(1, Math.round((n * targetMs) / Math.max(ms, 1)));
}

/** One thing to time: timeN(n) runs it n times and returns the elapsed milliseconds. */
export interface Task {
  name: string;
  timeN: (n: number) => number;
}

/** Times `statement` (JavaScript evaluated in the device's global scope) inside the device. An
 *  exception in it ends the benchmark: the statement must succeed to be worth timing. */
export function deviceTask(dev: EmulatedDevice, name: string, statement: string): Task {
  return {
    name,
    timeN: (n) => {
      const ms = dev.eval(`(function () { var t0 = Date.now(); for (var i = 0; i < ${n}; i++) { ${statement}; } return Date.now() - t0; })()`);
      if (typeof ms !== "number") throw new Error(`timing "${statement}" in the device returned ${String(ms)}`);
      return ms;
    },
  };
}

/** Times fn in Node with performance.now(). */
export function nodeTask(name: string, fn: () => unknown): Task {
  return {
    name,
    timeN: (n) => {
      const t0 = performance.now();
      for (let i = 0; i < n; i++) fn();
      return performance.now() - t0;
    },
  };
}

/** Calibrates every task, then runs the repetitions in rounds, one repetition of each task per
 *  round, so that a burst of load on the machine falls on all of them alike rather than on whichever
 *  happened to be running: the ratios between tasks are what the benchmark reports. */
export function runInterleaved(tasks: Task[], opts: TimingOptions = DEFAULT_TIMING): Record<string, Timing> {
  const iterations = tasks.map((t) => calibrate(t.timeN, opts.targetMs));
  const samples: number[][] = tasks.map(() => []);
  for (let r = 0; r < opts.repetitions; r++) {
    tasks.forEach((t, i) => samples[i].push((t.timeN(iterations[i]) * 1000) / iterations[i]));
  }
  const out: Record<string, Timing> = {};
  tasks.forEach((t, i) => {
    if (t.name in out) throw new Error(`two timing tasks are named ${t.name}`);
    out[t.name] = summarise(samples[i], iterations[i]);
  });
  return out;
}
