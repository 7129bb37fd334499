// Instances of a domain under load (issue 12's acceptance; docs/SCALING.md, "Instances of a domain"):
// 1,000 handsets over N `keyproxy gateway --instance` processes of one domain, on one PostgreSQL
// registry and one Mosquitto, at an offered load of session setups per second, for N = 1 and N = 3.
//
// Each run (one N) has a fresh database (bench/postgres.ts: a throwaway cluster with fsync on, or
// KEYPROXY_BENCH_POSTGRES_URL's server), a fresh Mosquitto of its own (so its CPU is read from /proc and
// no retained message of an earlier run is in it) and N instance processes started through the real CLI
// (test/support/process.ts), each with its own data directory holding copies of the first one's
// gateway.key and keyproxy.kek. The handsets are provisioned straight into the shared registry (policy
// default allow) and are the firmware's Handset engine in this process (bench/sessions.ts's
// connectHandset: device crypto on the model of Espruino's natives, real TCP on loopback); each joins
// an instance chosen at random, as behind a TCP load balancer, in batches (an instance closes the oldest
// unjoined connection past 512 at once). They form fixed pairs (caller, callee), so with N = 3 about
// two pairs in three have their ends on different instances.
//
// The load is open-loop: setups are started at the offered rate (a schedule, not a reaction to the
// previous setup's end), each by an idle pair. One cycle: the caller connect()s to the callee, which
// accepts; the setup is done when onConnect fired on both ends (the gateway says Connected only after
// both confirmed their SA keys): that span is the setup latency, on the caller's (this) side. Then one
// message each way on the SA, then the caller's bye (close) until both ends got SaClosed; the pair is
// idle again. A setup due when no pair is idle is counted as skipped (the offered load was not
// sustained). After warm-up seconds, a window of --seconds is measured: the setups started in it give
// the latency; the CPU time of each instance process, of the PostgreSQL server (all its processes) and
// of Mosquitto during the window, divided by the setups completed in it, give the CPU per setup. That
// CPU is per cycle: the setup, its two messages and its bye, which cannot be told apart in an
// open-loop run. Before the load (and 10 s after the last join, whose aftermath takes a few seconds),
// an idle window measures what the same processes spend with the handsets linked and nothing
// happening: mostly each instance's metrics tick, every 10 s, which reads every device of the domain
// from the registry (two statements each). The CPU per setup is given both ways: all of the window's,
// and only what it spent above that idle rate.
//
// The machine has 2 cores: N instances, PostgreSQL, Mosquitto and this load generator share them. The
// load generator's own CPU and event-loop delay are reported so it is visible when it, not the
// gateway, is the limit.
//
// Usage: node --import tsx bench/instances.ts [--instances 1,3] [--handsets 1000] [--rate <setups/s>]
//        [--seconds N] [--warm-up N] [--idle N] [--repeats N] [--metrics <s>] [--no-nodelay]
//        [--quiet-below <cores busy>]
// --instances 0,1,3 adds a run of one gateway without --instance (the lone gateway, on the same registry
// and broker, started alike): what being an instance costs by itself.
// Prints every run's results as JSON on stdout, progress and the summary (markdown) on stderr. With
// --repeats, the runs are interleaved (1, 3, 1, 3, ...) and the summary takes, per N, the run with the
// lowest setup p99. Needs Mosquitto (KEYPROXY_MOSQUITTO, /usr/sbin/mosquitto or on the PATH) and
// PostgreSQL (bench/postgres.ts); without Mosquitto it says so and exits 0 having measured nothing.

import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { monitorEventLoopDelay, performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import mqtt from "mqtt";
import { openStore } from "../gateway/gateway.ts";
import { KEK_FILE } from "../gateway/registry/kek.ts";
import { Policy } from "../gateway/registry/policy.ts";
import { freePort } from "../test/support/postgres-cluster.ts";
import { accepts, findMosquitto } from "../test/support/mosquitto.ts";
import { startGatewayProcess, type GatewayProcess } from "../test/support/process.ts";
import { benchDatabase, type BenchDatabase } from "./postgres.ts";
import { connectHandset, latency, setup, teardown, until, type Latency, type LoadHandset } from "./sessions.ts";

const DOMAIN = "bench.example";
/** Handsets joining at once: under an instance's 512 unjoined connections, with room to spare. */
const JOIN_BATCH = 100;
/** How long a message on an SA may take to arrive before the cycle counts as failed. */
const MESSAGE_TIMEOUT_MS = 10_000;
/** After the joins, before the idle window: the instances are still busy with the joins' aftermath
 *  (monitoring flushes of 1,000 device states, batched audit records) for about 5 s. */
const SETTLE_MS = 10_000;
/** How long the in-flight cycles may take to end after the window. */
const DRAIN_MS = 30_000;

interface Options {
  instances: number[];
  handsets: number;
  rate: number;
  seconds: number;
  warmUp: number;
  idle: number;
  repeats: number;
  /** The instances' --metrics (seconds between metrics ticks), or undefined for their default (10 s). */
  metrics?: number;
  /** Mosquitto's set_tcp_nodelay (on unless --no-nodelay): Nagle off on its client sockets. */
  nodelay: boolean;
  /** Before each run, wait (at most QUIET_WAIT_MS) until the machine's busy CPU over 5 s is below
   *  this many cores (the other work on it has paused). */
  quietBelow?: number;
}

/** How long a run waits for the machine to become quiet (--quiet-below) before it runs anyway. */
const QUIET_WAIT_MS = 2 * 60_000;

const DEFAULTS: Options = { instances: [1, 3], handsets: 1000, rate: 100, seconds: 30, warmUp: 5, idle: 20, repeats: 1, nodelay: true };

const USAGE = "usage: instances.ts [--instances 1,3] [--handsets 1000] [--rate <setups/s>] [--seconds N] [--warm-up N] [--idle N] [--repeats N] [--metrics <s>] [--no-nodelay] [--quiet-below <cores>]";

function parseArgs(argv: string[]): Options {
  const o: Options = { ...DEFAULTS };
  const positive = (flag: string, v: string | undefined, integer = true): number => {
    const n = Number(v);
    if (v === undefined || !Number.isFinite(n) || n <= 0 || (integer && !Number.isInteger(n))) throw new Error(`${flag} needs a positive ${integer ? "integer" : "number"}, not ${v ?? "nothing"}\n${USAGE}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const v = argv[i + 1];
    switch (flag) {
      case "--instances":
        // 0: one gateway without --instance (the lone gateway, on the same registry and broker), to compare.
        o.instances = (v ?? "").split(",").map((x) => (x === "0" ? 0 : positive(flag, x)));
        i++;
        break;
      case "--handsets":
        o.handsets = positive(flag, v);
        if (o.handsets % 2) throw new Error(`--handsets: the handsets come in pairs, ${o.handsets} is odd`);
        i++;
        break;
      case "--rate":
        o.rate = positive(flag, v, false);
        i++;
        break;
      case "--seconds":
        o.seconds = positive(flag, v, false);
        i++;
        break;
      case "--warm-up":
        o.warmUp = positive(flag, v, false);
        i++;
        break;
      case "--idle":
        o.idle = positive(flag, v, false);
        i++;
        break;
      case "--repeats":
        o.repeats = positive(flag, v);
        i++;
        break;
      case "--metrics":
        o.metrics = positive(flag, v);
        i++;
        break;
      case "--quiet-below":
        o.quietBelow = positive(flag, v, false);
        i++;
        break;
      case "--no-nodelay":
        o.nodelay = false;
        break;
      default:
        throw new Error(`not understood: ${flag}\n${USAGE}`);
    }
  }
  return o;
}

// ---- CPU time from /proc ----------------------------------------------------------------------------

const TICK_US = 1e6 / 100; // USER_HZ is 100 on Linux.

/** A process's CPU time so far (utime + stime, all its threads, those that ended included), µs. */
function processCpuUs(pid: number): number {
  const s = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = s.slice(s.lastIndexOf(")") + 2).split(" "); // f[0] is field 3 (state)
  return (Number(f[11]) + Number(f[12])) * TICK_US;
}

/** The machine's busy CPU time so far, all cores (everything but idle and iowait), µs. */
function machineBusyUs(): number {
  const f = fs.readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, , , irq, softirq, steal] = f;
  return (user + nice + system + irq + softirq + steal) * TICK_US;
}

function loadAverage(): string {
  return fs.readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
}

/** The machine's busy cores over the next 5 s. (Not the load average: it lags a minute behind, and
 *  counts this benchmark's own run that just ended.) */
async function busyCoresNow(): Promise<number> {
  const a = machineBusyUs();
  await new Promise((r) => setTimeout(r, 5000));
  return (machineBusyUs() - a) / 5e6;
}

/** Waits until the machine's busy cores are below `below` (other work on it has paused), at most
 *  QUIET_WAIT_MS; says how it went. */
async function waitForQuiet(below: number, log: (s: string) => void): Promise<number> {
  const end = Date.now() + QUIET_WAIT_MS;
  let busy = await busyCoresNow();
  if (busy < below) return busy;
  log(`  waiting for the machine to be quiet: ${busy.toFixed(2)} cores busy, waiting for < ${below}`);
  while (busy >= below && Date.now() < end) busy = await busyCoresNow();
  log(busy < below ? `  quiet enough: ${busy.toFixed(2)} cores busy` : `  still ${busy.toFixed(2)} cores busy after ${QUIET_WAIT_MS / 60_000} min: running anyway`);
  return busy;
}

// ---- Mosquitto ---------------------------------------------------------------------------------------

interface Broker {
  url: string;
  pid: number;
  /** What it logged (errors and warnings only). */
  lines: string[];
  stop(): Promise<void>;
}

/** A throwaway Mosquitto on a free loopback port, as a minimal operator's config would run it. */
async function startBroker(binary: string, nodelay: boolean, dir: string): Promise<Broker> {
  const port = await freePort();
  const conf = path.join(dir, "mosquitto.conf");
  fs.writeFileSync(conf, `listener ${port} 127.0.0.1\nallow_anonymous true\nlog_dest stderr\nlog_type error\nlog_type warning\n${nodelay ? "set_tcp_nodelay true\n" : ""}`);
  const child: ChildProcess = spawn(binary, ["-c", conf], { stdio: ["ignore", "ignore", "pipe"] });
  const lines: string[] = [];
  child.stderr!.on("data", (b: Buffer) => lines.push(...b.toString().split("\n").filter(Boolean)));
  const end = Date.now() + 10_000;
  while (!(await accepts(port))) {
    if (child.exitCode !== null || Date.now() > end) {
      child.kill("SIGKILL");
      throw new Error(`mosquitto did not start on port ${port}: ${lines.join(" | ")}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url: `mqtt://127.0.0.1:${port}`,
    pid: child.pid!,
    lines,
    stop: () => new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      child.once("exit", () => resolve());
      child.kill("SIGTERM");
    }),
  };
}

// ---- the domain's instances ---------------------------------------------------------------------------

interface Instance {
  name: string;
  dir: string;
  proc: GatewayProcess;
  address: { host: string; port: number };
}

/** The lone gateway's name in the results (n = 0: no --instance). */
const LONE = "gw";

/** How a run is named: its number of instances, or the lone gateway. */
const label = (n: number) => (n === 0 ? "lone gateway" : `${n} instance${n > 1 ? "s" : ""}`);

/** N instance processes; the first makes the domain's KEK and gateway key, the others get copies.
 *  n = 0: one gateway without --instance, otherwise started alike. */
async function startInstances(n: number, db: BenchDatabase, brokerUrl: string, parent: string, metrics: number | undefined): Promise<Instance[]> {
  const out: Instance[] = [];
  try {
    for (let i = 0; i < Math.max(1, n); i++) {
      const name = n === 0 ? LONE : `i${i + 1}`;
      const dir = fs.mkdtempSync(path.join(parent, `${name}-`));
      if (i > 0) for (const f of ["gateway.key", KEK_FILE]) fs.copyFileSync(path.join(out[0].dir, f), path.join(dir, f));
      const instance = n === 0 ? [] : ["--instance", name];
      // KEYPROXY_BENCH_GATEWAY_PROFILE=<dir> writes each instance's CPU profile there, as in bench/sessions.ts.
      const profile = process.env.KEYPROXY_BENCH_GATEWAY_PROFILE;
      const nodeArgs = profile ? ["--cpu-prof", `--cpu-prof-dir=${profile}`] : [];
      const proc = await startGatewayProcess(dir, 0, ["--id", DOMAIN, ...instance, "--db", db.url, "--mqtt", brokerUrl, "--no-fleet", ...(metrics ? ["--metrics", String(metrics)] : [])], nodeArgs);
      out.push({ name, dir, proc, address: { host: "127.0.0.1", port: proc.port } });
    }
    return out;
  } catch (e) {
    for (const x of out) await x.proc.stop("SIGKILL");
    throw e;
  }
}

/** The handsets' devices in the shared registry, all allowed to reach one another. */
async function provision(dir: string, db: BenchDatabase, ids: string[], keys: Uint8Array[]): Promise<void> {
  const store = await openStore(dir, db.url);
  try {
    const now = Math.floor(Date.now() / 1000);
    await store.atomically(async () => {
      for (const [i, id] of ids.entries()) await store.addDevice(id, keys[i], "puckjs", now);
    });
    await new Policy(store).setDefault("allow");
  } finally {
    await store.close();
  }
}

/** What the instance logged that is not routine: warnings and errors by event and reason, and the
 *  info events that mean a message or frame went nowhere. */
function unusualLogs(lines: string[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const l of lines) {
    let r: Record<string, unknown>;
    try {
      r = JSON.parse(l) as Record<string, unknown>;
    } catch {
      counts["(not a JSON record)"] = (counts["(not a JSON record)"] ?? 0) + 1;
      continue;
    }
    const dropped = r.event === "instance-delivery-dropped";
    if (r.level === "info" && !dropped) continue;
    const key = `${String(r.level)} ${String(r.event)}${r.reason ? `: ${String(r.reason)}` : ""}`;
    counts[key] = (counts[key] ?? 0) + 1;
  }
  return counts;
}

function eventCount(lines: string[], event: string): number {
  const needle = `"event":"${event}"`;
  return lines.filter((l) => l.includes(needle)).length;
}

/** Each instance's retained metrics as it last published them (its MQTT outbox's drops, its frames
 *  dropped), read once after the run. */
async function retainedMetrics(url: string, instances: Instance[]): Promise<Record<string, Record<string, unknown>>> {
  const out: Record<string, Record<string, unknown>> = {};
  const client = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: 5000 });
  try {
    await new Promise<void>((resolve, reject) => {
      client.once("connect", () => resolve());
      client.once("error", reject);
    });
    client.on("message", (topic, payload) => {
      const who = instances.find((x) => topic === `keyproxy/v1/${x.name === LONE ? DOMAIN : `${x.name}.${DOMAIN}`}/metrics`);
      if (who) out[who.name] = JSON.parse(payload.toString()) as Record<string, unknown>;
    });
    await client.subscribeAsync(`keyproxy/v1/+/metrics`);
    await until(() => instances.every((x) => out[x.name]), "every instance's retained metrics", 5000).catch(() => undefined);
  } finally {
    await client.endAsync();
  }
  return out;
}

// ---- the handsets and the load -------------------------------------------------------------------------

interface Pair {
  caller: LoadHandset;
  callee: LoadHandset;
  /** The instances (index) each end joined. */
  at: [number, number];
}

/** Application data arriving on an SA, per handset id: the cycle waiting for it. */
const arrivals = new Map<string, (spi: number) => void>();

/** Joins every handset at an instance chosen at random, a batch at a time; resolves when all are
 *  registered. Returns the handsets and how many joined each instance. */
async function joinHandsets(instances: Instance[], ids: string[], keys: Uint8Array[], log: (s: string) => void): Promise<{ handsets: LoadHandset[]; perInstance: number[]; at: number[] }> {
  const handsets: LoadHandset[] = [];
  const perInstance = instances.map(() => 0);
  const instanceOf: number[] = [];
  for (let at = 0; at < ids.length; at += JOIN_BATCH) {
    const batch = ids.slice(at, at + JOIN_BATCH).map((id, j) => {
      const k = Math.floor(Math.random() * instances.length);
      perInstance[k]++;
      instanceOf.push(k);
      return connectHandset(instances[k].address, id, keys[at + j]);
    });
    const joined = await Promise.all(batch);
    for (const x of joined) x.h.onMessage = (_data, spi) => arrivals.get(x.id)?.(spi);
    handsets.push(...joined);
    await until(() => joined.every((x) => x.h.status().registered), `handsets ${at + 1}-${at + joined.length} to register`, 60_000);
  }
  log(`  ${handsets.length} handsets registered (per instance: ${perInstance.join(", ")})`);
  return { handsets, perInstance, at: instanceOf };
}

/** Resolves when `to` got application data on spi; rejects after MESSAGE_TIMEOUT_MS. */
function arrival(to: LoadHandset, spi: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      arrivals.delete(to.id);
      reject(new Error(`no message on ${spi} to ${to.id} in ${MESSAGE_TIMEOUT_MS} ms`));
    }, MESSAGE_TIMEOUT_MS);
    arrivals.set(to.id, (s) => {
      if (s !== spi) return;
      clearTimeout(timer);
      arrivals.delete(to.id);
      resolve();
    });
  });
}

const PAYLOAD = new Uint8Array(64).fill(0x61);

type Phase = "setup" | "message" | "bye";

interface CycleRecord {
  pair: Pair;
  startedAt: number;
  /** When the setup completed (both onConnect), or undefined when it failed. */
  setupDoneAt?: number;
  setupMs?: number;
  /** How late the cycle started against its place in the schedule (the load generator's lag). */
  lagMs: number;
  failed?: { phase: Phase; message: string };
}

/** One cycle on an idle pair: setup, one message each way, bye. */
async function cycle(p: Pair, rec: CycleRecord): Promise<void> {
  let phase: Phase = "setup";
  try {
    const { ms, spi } = await setup(p.caller, p.callee);
    rec.setupMs = ms;
    rec.setupDoneAt = performance.now();
    phase = "message";
    const there = arrival(p.callee, spi);
    if (!p.caller.h.send(spi, PAYLOAD)) throw new Error(`${p.caller.id} could not send on ${spi}`);
    await there;
    const back = arrival(p.caller, spi);
    if (!p.callee.h.send(spi, PAYLOAD)) throw new Error(`${p.callee.id} could not send on ${spi}`);
    await back;
    phase = "bye";
    await teardown(p.caller, p.callee, spi);
  } catch (e) {
    rec.failed = { phase, message: (e as Error).message };
    throw e;
  }
}

interface LoadRun {
  records: CycleRecord[];
  /** Setups due when no pair was idle (per schedule position, ms since start). */
  skippedAt: number[];
  /** Pairs left out after a failed cycle (their state is unknown). */
  brokenPairs: number;
  /** Cycles still running after the drain (should be none). */
  stuck: number;
}

/** Offers `rate` setups per second for `totalMs`, calling `mark` at the given offsets (ms from the
 *  start) so the caller can sample CPU exactly at the window's edges; then waits for the cycles
 *  in flight to end. */
async function offerLoad(pairs: Pair[], rate: number, totalMs: number, marks: { atMs: number; mark: () => void }[]): Promise<LoadRun> {
  const idle = [...pairs];
  const records: CycleRecord[] = [];
  const skippedAt: number[] = [];
  let brokenPairs = 0;
  let inFlight = 0;
  let scheduled = 0;
  const pending = [...marks].sort((a, b) => a.atMs - b.atMs);
  const t0 = performance.now();
  await new Promise<void>((finished) => {
    const tick = () => {
      const now = performance.now();
      const elapsed = now - t0;
      while (pending.length && pending[0].atMs <= elapsed) pending.shift()!.mark();
      const due = Math.floor((Math.min(elapsed, totalMs) * rate) / 1000);
      for (; scheduled < due; scheduled++) {
        const placeMs = (scheduled * 1000) / rate;
        const p = idle.shift();
        if (!p) {
          skippedAt.push(placeMs);
          continue;
        }
        const rec: CycleRecord = { pair: p, startedAt: performance.now(), lagMs: performance.now() - (t0 + placeMs) };
        records.push(rec);
        inFlight++;
        cycle(p, rec).then(
          () => idle.push(p),
          () => brokenPairs++,
        ).finally(() => inFlight--);
      }
      if (elapsed >= totalMs) {
        clearInterval(timer);
        finished();
      }
    };
    const timer = setInterval(tick, 1);
  });
  while (pending.length) pending.shift()!.mark();
  await until(() => inFlight === 0, "the cycles in flight to end", DRAIN_MS).catch(() => undefined);
  return { records, skippedAt, brokenPairs, stuck: inFlight };
}

// ---- one run --------------------------------------------------------------------------------------------

interface CpuSample {
  at: number;
  sampleMs: number;
  instances: number[];
  postgres: number | undefined;
  broker: number;
  load: number;
  machine: number;
}

function sampleCpu(instances: Instance[], db: BenchDatabase, broker: Broker): CpuSample {
  const at = performance.now();
  const usage = process.cpuUsage();
  const sample = {
    instances: instances.map((x) => processCpuUs(x.proc.child.pid!)),
    postgres: db.serverCpuUs(),
    broker: processCpuUs(broker.pid),
    load: usage.user + usage.system,
    machine: machineBusyUs(),
  };
  return { at, sampleMs: performance.now() - at, ...sample };
}

export interface RunResult {
  instances: number;
  repetition: number;
  handsets: number;
  handsetsPerInstance: number[];
  offeredPerS: number;
  windowS: number;
  loadAverageBefore: string;
  loadAverageAfter: string;
  /** Setups started in the window, and completed in it (both onConnect). */
  setupsStarted: number;
  setupsCompleted: number;
  achievedPerS: number;
  /** Setups due in the window when no pair was idle. */
  skipped: number;
  failures: { setup: number; message: number; bye: number; first: string[] };
  stuck: number;
  /** connect() to onConnect at both ends, setups started in the window. */
  latency: Latency;
  /** The same, split: both ends on one instance, and on two. */
  latencySameInstance: Latency;
  latencyAcross: Latency | undefined;
  /** The slowest 1% of those setups: when each started (ms into the window) and how long it took, to
   *  tell a periodic cause (a metrics tick every 10 s) from a scattered one. */
  slowest: { atMs: number; ms: number; instances: string }[];
  /** How late the load generator started setups against the schedule (p99, max), ms. */
  lagP99Ms: number;
  lagMaxMs: number;
  /** CPU per completed setup (a whole cycle: setup, two messages, bye), µs: all the CPU of the window,
   *  and what the window spent above the idle rate (the fixed costs, such as each instance's metrics
   *  tick reading every device of the registry, taken out). */
  cpuPerSetupUs: {
    perInstance: number[];
    instancesSum: number;
    postgres: number | undefined;
    broker: number;
    loadGenerator: number;
  };
  cpuAboveIdlePerSetupUs: { perInstance: number[]; instancesSum: number; postgres: number | undefined; broker: number };
  /** How long one CPU sample took (reading /proc for every PostgreSQL process): the load generator
   *  was held this long at the window's two edges. */
  sampleMs: number;
  /** Cores kept busy in the window: each process's CPU ÷ wall time, and the whole machine's. */
  busyCores: { perInstance: number[]; postgres: number | undefined; broker: number; loadGenerator: number; machine: number; others: number | undefined };
  /** CPU per second with the handsets linked and no load, µs/s (= millionths of a core). */
  idleUsPerS: { perInstance: number[]; postgres: number | undefined; broker: number };
  /** The load generator's event-loop delay in the window (p99, max), ms. */
  loopDelayP99Ms: number;
  loopDelayMaxMs: number;
  /** SAs each instance set up (its session-up records, whole run) and what was unusual in its log. */
  sessionUps: number[];
  logs: Record<string, Record<string, number>>;
  metrics: Record<string, Record<string, unknown>>;
  brokerLog: string[];
  postgresServer: BenchDatabase["server"];
}

function perSecond(a: CpuSample, b: CpuSample, pick: (s: CpuSample) => number | undefined): number | undefined {
  const x = pick(a);
  const y = pick(b);
  return x === undefined || y === undefined ? undefined : ((y - x) * 1000) / (b.at - a.at);
}

async function runOnce(n: number, repetition: number, o: Options, mosquitto: string, log: (s: string) => void): Promise<RunResult> {
  const parent = fs.mkdtempSync(path.join(os.tmpdir(), "kp-bench-instances-"));
  const loadAverageBefore = loadAverage();
  let broker: Broker | undefined;
  let db: BenchDatabase | undefined;
  let instances: Instance[] = [];
  const handsets: LoadHandset[] = [];
  try {
    broker = await startBroker(mosquitto, o.nodelay, parent);
    db = await benchDatabase(log);
    instances = await startInstances(n, db, broker.url, parent, o.metrics);
    log(`  ${label(n)} on ${DOMAIN}, PostgreSQL ${db.server.version} (fsync ${db.server.fsync}), Mosquitto pid ${broker.pid}`);
    const ids = Array.from({ length: o.handsets }, (_, i) => `h${String(i + 1).padStart(4, "0")}`);
    const keys = ids.map(() => new Uint8Array(randomBytes(16)));
    await provision(instances[0].dir, db, ids, keys);
    const joined = await joinHandsets(instances, ids, keys, log);
    handsets.push(...joined.handsets);

    log(`  settling for ${SETTLE_MS / 1000} s, then idle for ${o.idle} s (handsets linked, no load)`);
    await new Promise((r) => setTimeout(r, SETTLE_MS));
    const idleA = sampleCpu(instances, db, broker);
    await new Promise((r) => setTimeout(r, o.idle * 1000));
    const idleB = sampleCpu(instances, db, broker);

    // Pairs: consecutive handsets, which joined instances independently at random.
    const pairs: Pair[] = [];
    for (let i = 0; i < handsets.length; i += 2) pairs.push({ caller: handsets[i], callee: handsets[i + 1], at: [joined.at[i], joined.at[i + 1]] });
    log(`  ${o.rate} setups/s offered for ${o.warmUp} s of warm-up and ${o.seconds} s measured`);
    const samples: CpuSample[] = [];
    const delay = monitorEventLoopDelay({ resolution: 1 });
    const windowStart = o.warmUp * 1000;
    const windowEnd = windowStart + o.seconds * 1000;
    const run = await offerLoad(pairs, o.rate, windowEnd, [
      { atMs: windowStart, mark: () => (samples.push(sampleCpu(instances, db!, broker!)), delay.enable()) },
      { atMs: windowEnd, mark: () => (samples.push(sampleCpu(instances, db!, broker!)), delay.disable()) },
    ]);
    const [a, b] = samples;
    const inWindow = (t: number | undefined) => t !== undefined && t >= a.at && t < b.at;
    const started = run.records.filter((r) => inWindow(r.startedAt));
    const completed = run.records.filter((r) => inWindow(r.setupDoneAt)).length;
    const failures = { setup: 0, message: 0, bye: 0, first: [] as string[] };
    for (const r of run.records) {
      if (!r.failed) continue;
      failures[r.failed.phase]++;
      if (failures.first.length < 5) failures.first.push(`${r.failed.phase}: ${r.failed.message}`);
    }
    const wallS = (b.at - a.at) / 1000;
    const per = (d: number | undefined) => (d === undefined ? undefined : d / Math.max(1, completed));
    const cpuPerInstance = instances.map((_, i) => b.instances[i] - a.instances[i]);
    const idleRate = {
      perInstance: instances.map((_, i) => perSecond(idleA, idleB, (s) => s.instances[i])!),
      postgres: perSecond(idleA, idleB, (s) => s.postgres),
      broker: perSecond(idleA, idleB, (s) => s.broker)!,
    };
    const lags = started.map((r) => r.lagMs).sort((x, y) => x - y);
    const pg = a.postgres !== undefined && b.postgres !== undefined ? b.postgres - a.postgres : undefined;
    const metrics = await retainedMetrics(broker.url, instances).catch(() => ({}));
    return {
      instances: n,
      repetition,
      handsets: o.handsets,
      handsetsPerInstance: joined.perInstance,
      offeredPerS: o.rate,
      windowS: wallS,
      loadAverageBefore,
      loadAverageAfter: loadAverage(),
      setupsStarted: started.length,
      setupsCompleted: completed,
      achievedPerS: completed / wallS,
      skipped: run.skippedAt.filter((t) => t >= windowStart && t < windowEnd).length,
      failures,
      stuck: run.stuck,
      latency: latency(started.filter((r) => r.setupMs !== undefined).map((r) => r.setupMs!)),
      latencySameInstance: latency(started.filter((r) => r.setupMs !== undefined && r.pair.at[0] === r.pair.at[1]).map((r) => r.setupMs!)),
      latencyAcross: n > 1 ? latency(started.filter((r) => r.setupMs !== undefined && r.pair.at[0] !== r.pair.at[1]).map((r) => r.setupMs!)) : undefined,
      slowest: started
        .filter((r) => r.setupMs !== undefined)
        .sort((x, y) => y.setupMs! - x.setupMs!)
        .slice(0, Math.ceil(started.length / 100))
        .map((r) => ({ atMs: Math.round(r.startedAt - a.at), ms: Math.round(r.setupMs! * 10) / 10, instances: r.pair.at.map((k) => instances[k].name).join(" -> ") }))
        .sort((x, y) => x.atMs - y.atMs),
      lagP99Ms: lags[Math.max(0, Math.ceil(lags.length * 0.99) - 1)] ?? 0,
      lagMaxMs: lags[lags.length - 1] ?? 0,
      cpuPerSetupUs: {
        perInstance: cpuPerInstance.map((x) => per(x)!),
        instancesSum: per(cpuPerInstance.reduce((s, x) => s + x, 0))!,
        postgres: per(pg),
        broker: per(b.broker - a.broker)!,
        loadGenerator: per(b.load - a.load)!,
      },
      cpuAboveIdlePerSetupUs: {
        perInstance: cpuPerInstance.map((x, i) => per(x - idleRate.perInstance[i] * wallS)!),
        instancesSum: per(cpuPerInstance.reduce((s, x, i) => s + x - idleRate.perInstance[i] * wallS, 0))!,
        postgres: pg === undefined || idleRate.postgres === undefined ? undefined : per(pg - idleRate.postgres * wallS),
        broker: per(b.broker - a.broker - idleRate.broker * wallS)!,
      },
      sampleMs: b.sampleMs,
      busyCores: {
        perInstance: cpuPerInstance.map((x) => x / 1e6 / wallS),
        postgres: pg === undefined ? undefined : pg / 1e6 / wallS,
        broker: (b.broker - a.broker) / 1e6 / wallS,
        loadGenerator: (b.load - a.load) / 1e6 / wallS,
        machine: (b.machine - a.machine) / 1e6 / wallS,
        // What the rest of the machine's work (other processes) took meanwhile.
        others: pg === undefined ? undefined : (b.machine - a.machine - cpuPerInstance.reduce((s, x) => s + x, 0) - pg - (b.broker - a.broker) - (b.load - a.load)) / 1e6 / wallS,
      },
      idleUsPerS: idleRate,
      loopDelayP99Ms: delay.percentile(99) / 1e6,
      loopDelayMaxMs: delay.max / 1e6,
      sessionUps: instances.map((x) => eventCount(x.proc.lines, "session-up")),
      logs: Object.fromEntries(instances.map((x) => [x.name, unusualLogs(x.proc.lines)])),
      metrics,
      brokerLog: broker.lines.slice(-20),
      postgresServer: db.server,
    };
  } finally {
    for (const x of handsets) x.socket.destroy();
    for (const x of instances) await x.proc.stop("SIGTERM");
    await broker?.stop();
    await db?.drop();
    fs.rmSync(parent, { recursive: true, force: true });
  }
}

// ---- the summary ----------------------------------------------------------------------------------------

function fmt(x: number | undefined, digits = 0): string {
  return x === undefined || !Number.isFinite(x) ? "-" : x.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

interface Row {
  name: string;
  of: (r: RunResult) => number | undefined;
  digits: number;
  /** Shown per instance beside the figure (e.g. "412 + 398 + 420"). */
  parts?: (r: RunResult) => number[];
  /** The cell's text, when it is more than the figure. */
  cell?: (r: RunResult) => string;
}

const ROWS: Row[] = [
  { name: "setups per second offered", of: (r) => r.offeredPerS, digits: 0 },
  { name: "setups per second achieved (completed in the window)", of: (r) => r.achievedPerS, digits: 1 },
  { name: "setups skipped (no idle pair) + failed", of: (r) => r.skipped + r.failures.setup + r.failures.message + r.failures.bye, digits: 0 },
  { name: "setup latency p50, ms (connect() to onConnect at both ends)", of: (r) => r.latency.p50Ms, digits: 2 },
  { name: "setup latency p99, ms", of: (r) => r.latency.p99Ms, digits: 2 },
  { name: "setup latency max, ms", of: (r) => r.latency.maxMs, digits: 1 },
  { name: "  p50 / p99, ms, both ends on one instance", of: (r) => r.latencySameInstance.p50Ms, digits: 2, cell: (r) => `${fmt(r.latencySameInstance.p50Ms, 2)} / ${fmt(r.latencySameInstance.p99Ms, 2)}` },
  { name: "  p50 / p99, ms, ends on two instances", of: (r) => r.latencyAcross?.p50Ms, digits: 2, cell: (r) => (r.latencyAcross ? `${fmt(r.latencyAcross.p50Ms, 2)} / ${fmt(r.latencyAcross.p99Ms, 2)}` : "-") },
  { name: "instance CPU per setup, µs, summed over the instances", of: (r) => r.cpuPerSetupUs.instancesSum, digits: 0, parts: (r) => r.cpuPerSetupUs.perInstance },
  { name: "instance CPU per setup, µs, per instance (mean)", of: (r) => r.cpuPerSetupUs.instancesSum / Math.max(1, r.instances), digits: 0 },
  { name: "PostgreSQL CPU per setup, µs (all its processes)", of: (r) => r.cpuPerSetupUs.postgres, digits: 0 },
  { name: "Mosquitto CPU per setup, µs", of: (r) => r.cpuPerSetupUs.broker, digits: 0 },
  { name: "instances + PostgreSQL + Mosquitto per setup, µs", of: (r) => r.cpuPerSetupUs.instancesSum + (r.cpuPerSetupUs.postgres ?? NaN) + r.cpuPerSetupUs.broker, digits: 0 },
  { name: "above idle: instance CPU per setup, µs, summed", of: (r) => r.cpuAboveIdlePerSetupUs.instancesSum, digits: 0, parts: (r) => r.cpuAboveIdlePerSetupUs.perInstance },
  { name: "above idle: PostgreSQL CPU per setup, µs", of: (r) => r.cpuAboveIdlePerSetupUs.postgres, digits: 0 },
  { name: "above idle: Mosquitto CPU per setup, µs", of: (r) => r.cpuAboveIdlePerSetupUs.broker, digits: 0 },
  { name: "idle: instance CPU, ms per s, summed", of: (r) => r.idleUsPerS.perInstance.reduce((s, x) => s + x, 0) / 1000, digits: 1 },
  { name: "idle: PostgreSQL CPU, ms per s", of: (r) => (r.idleUsPerS.postgres === undefined ? undefined : r.idleUsPerS.postgres / 1000), digits: 1 },
  { name: "idle: Mosquitto CPU, ms per s", of: (r) => r.idleUsPerS.broker / 1000, digits: 1 },
  { name: "machine busy in the window, cores (of 2; everything on it)", of: (r) => r.busyCores.machine, digits: 2 },
  { name: "  of which other work than this benchmark's, cores", of: (r) => r.busyCores.others, digits: 2 },
  { name: "load generator CPU per setup, µs (the handsets, this process)", of: (r) => r.cpuPerSetupUs.loadGenerator, digits: 0 },
  { name: "load generator busy, cores", of: (r) => r.busyCores.loadGenerator, digits: 2 },
  { name: "load generator event-loop delay p99, ms", of: (r) => r.loopDelayP99Ms, digits: 1 },
  { name: "load generator start lag p99, ms", of: (r) => r.lagP99Ms, digits: 1 },
];

/** The markdown table: one column per N (its best run: lowest p99), and the ratio of the most
 *  instances to the fewest (the lone gateway, N = 0, is not in the ratio). */
export function summary(best: RunResult[]): string {
  const ofInstances = best.filter((r) => r.instances > 0).sort((x, y) => x.instances - y.instances);
  const first = ofInstances[0];
  const last = ofInstances[ofInstances.length - 1];
  const ratio = ofInstances.length > 1;
  const head = ["", ...best.map((r) => label(r.instances)), ...(ratio ? [`${last.instances} / ${first.instances}`] : [])];
  const lines = [`| ${head.join(" | ")} |`, `|${head.map((_, i) => (i ? "---:" : ":---")).join("|")}|`];
  for (const row of ROWS) {
    const cells = best.map((r) => {
      if (row.cell) return row.cell(r);
      const parts = row.parts?.(r);
      return fmt(row.of(r), row.digits) + (parts && parts.length > 1 ? ` (${parts.map((x) => fmt(x)).join(" + ")})` : "");
    });
    const x = row.of(first);
    const y = row.of(last);
    lines.push(`| ${[row.name, ...cells, ...(ratio ? [x && y !== undefined && !row.cell ? fmt(y / x, 2) : "-"] : [])].join(" | ")} |`);
  }
  return lines.join("\n");
}

/** The code measured: the commit, and the files under gateway/ and cli/ that differ from it. */
function codeMeasured(): { commit: string; changed: string[] } {
  const git = (args: string[]) => spawnSync("git", args, { cwd: fileURLToPath(new URL("..", import.meta.url)), encoding: "utf8" }).stdout?.trim() ?? "";
  return { commit: git(["rev-parse", "--short", "HEAD"]), changed: git(["status", "--porcelain", "--", "gateway", "cli"]).split("\n").filter(Boolean) };
}

async function main(): Promise<void> {
  const log = (s: string) => process.stderr.write(s + "\n");
  const o = parseArgs(process.argv.slice(2));
  const mosquitto = findMosquitto();
  if (!mosquitto) {
    log("bench/instances.ts: no Mosquitto here (KEYPROXY_MOSQUITTO, /usr/sbin/mosquitto or `mosquitto` on the PATH): the broker's CPU could not be measured, so nothing was run. Install Debian's mosquitto.");
    return;
  }
  const runs: RunResult[] = [];
  const started = new Date().toISOString();
  const code = codeMeasured();
  log(`code: ${code.commit}${code.changed.length ? ` with uncommitted changes in ${code.changed.join(", ")}` : ""}`);
  for (let rep = 0; rep < o.repeats; rep++) {
    for (const n of o.instances) {
      if (o.quietBelow !== undefined) await waitForQuiet(o.quietBelow, log);
      log(`run ${rep + 1} of ${o.repeats}: ${label(n)}, ${o.handsets} handsets, load average ${loadAverage()}`);
      const r = await runOnce(n, rep, o, mosquitto, log);
      log(`  ${fmt(r.achievedPerS, 1)} setups/s achieved, p50 ${fmt(r.latency.p50Ms, 2)} ms, p99 ${fmt(r.latency.p99Ms, 2)} ms, instances ${fmt(r.cpuPerSetupUs.instancesSum)} µs/setup, PostgreSQL ${fmt(r.cpuPerSetupUs.postgres)}, Mosquitto ${fmt(r.cpuPerSetupUs.broker)}`);
      runs.push(r);
    }
  }
  const best = o.instances.map((n) => runs.filter((r) => r.instances === n).sort((x, y) => x.latency.p99Ms - y.latency.p99Ms)[0]);
  process.stdout.write(JSON.stringify({ started, ended: new Date().toISOString(), code, options: o, nproc: os.availableParallelism(), runs }, null, 2) + "\n");
  log("\n" + summary(best));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  main().then(
    // The handsets' timers (renewals) and the pg pool may hold the loop: the work is done.
    () => process.exit(process.exitCode ?? 0),
    (e: unknown) => {
      process.stderr.write(`instances bench failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
      process.exit(1);
    },
  );
}
