// Sessions inside one gateway with emulated handsets (design.md flow 4), for `npm run bench`: the
// same gateway process as bench/sessions.ts (the production Gateway forked into its own process, real
// TCP on loopback, its SQLite registry on the host's disk, policy default allow), but the 100 handsets
// are EmulatedDevice instances running the real firmware bundle (flash/build.ts), provisioned and
// booted by emulator/sim.ts as `keyproxy sim` does. The application is installed over each device's
// console (device.eval), as a user would type it: callees accept in KP.onRequest, both ends note
// getTime() in KP.onConnect (in the emulator getTime() is the host's clock, the same one this file
// reads) and print a marker the host listens for, so nothing polls the devices during a round.
//
// Measured, over a few rounds in which all 50 pairs connect at once (sessions closed with KP.close
// between rounds): setups per second (from the first KP.connect to the last onConnect at either end),
// the gateway process's CPU time per setup, and the latency from KP.connect on the caller until both
// ends got onConnect. The 100 QuickJS devices run in this process, on the same 2 CPUs as the gateway,
// so the setups per second are a lower bound on what the gateway alone could do.
//
// Run alone: `node --import tsx bench/sessions-emulated.ts` prints the measurements as JSON.

import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import type { EmulatedDevice } from "../emulator/device.ts";
import { startSim } from "../emulator/sim.ts";
import { buildFirmware } from "../flash/build.ts";
import { openStore } from "../gateway/gateway.ts";
import { Policy } from "../gateway/registry/policy.ts";
import { DEFAULT_SESSIONS } from "../gateway/sessions/session-broker.ts";
import { fileSystemOf, GatewayProcess, latency, SESSION_APP, type Latency } from "./sessions.ts";

const THIS_FILE = fileURLToPath(import.meta.url);

export interface EmulatedLoadOptions {
  /** Board of the bundle and the emulated devices ("puckjs": the BLE UART double, 20-byte chunks). */
  board: string;
  handsets: number;
  /** Rounds in which every pair connects at once, after warmUpRounds that are not counted. */
  rounds: number;
  warmUpRounds: number;
}

export const DEFAULT_EMULATED_LOAD: EmulatedLoadOptions = { board: "puckjs", handsets: 100, rounds: 10, warmUpRounds: 2 };

export interface EmulatedSessionResults {
  board: string;
  bundleBytes: number;
  handsets: number;
  pairs: number;
  rounds: number;
  /** Setups in the counted rounds. */
  setups: number;
  /** Building the bundle, booting every device, and every device joined and registered (ms). */
  buildMs: number;
  bootMs: number;
  registerMs: number;
  /** Setups over the summed wall time of the counted rounds (first KP.connect to the last onConnect). */
  setupsPerSecond: number;
  /** The gateway process's CPU time (user + system) per setup, over all counted rounds, and per round. */
  gatewayCpuUsPerSetup: number;
  gatewayCpuUsPerSetupRounds: number[];
  /** The gateway process's CPU time per second with every device linked and registered but idle
   *  (keep-alive timers, sockets), measured over IDLE_MS before the rounds: background that the
   *  per-setup figure includes in proportion to a round's wall time. */
  gatewayIdleCpuUsPerSecond: number;
  /** Gateway CPU time ÷ wall time during the rounds. */
  gatewayBusy: number;
  /** The same for this process, which runs the 100 emulated devices (the load generator). */
  emulatorBusy: number;
  /** KP.connect on the caller until onConnect at both ends. */
  bothConfirmed: Latency;
  /** KP.connect on the caller until onConnect at the caller. */
  callerConnected: Latency;
  dataDirFs: string;
  /** Warnings and errors the gateway logged, and uncaught errors in the devices (must be none). */
  gatewayWarnings: number;
  deviceErrors: number;
}

/** What every device runs, installed over its console. onConnect notes when (getTime(), seconds, the
 *  host's clock in the emulator), on which SPI and with whom; onClose notes the SPI. The printed
 *  markers tell the host that something happened without it polling 100 devices. */
const RECORDER = `
global.UP = []; global.CLOSED = [];
KP.onConnect = function (spi, peer) { UP.push([getTime(), spi, peer]); print("kpb:up"); };
KP.onClose = function (spi) { CLOSED.push(spi); print("kpb:closed"); };
1`;
/** The callee's one extra line: accept every request. */
const CALLEE = `KP.onRequest = function () { return true; }; 1`;

/** The host's clock as the emulator's getTime() reads it, in ms. */
function hostNowMs(): number {
  return performance.timeOrigin + performance.now();
}

/** Counts a device marker across all devices; wait(n) resolves once n were seen since the last reset. */
class MarkerCount {
  private seen = 0;
  private want = 0;
  private wake: (() => void) | null = null;

  constructor(devices: EmulatedDevice[], private readonly marker: string) {
    for (const d of devices) d.on("log", (line: string) => line === marker && this.hit());
  }

  private hit(): void {
    this.seen++;
    if (this.wake && this.seen >= this.want) this.wake();
  }

  reset(): void {
    this.seen = 0;
  }

  wait(n: number, ms: number, what: () => string): Promise<void> {
    if (this.seen >= n) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.wake = null;
        reject(new Error(`timed out waiting for ${what()} (${this.seen} of ${n} "${this.marker}")`));
      }, ms);
      this.want = n;
      this.wake = () => {
        clearTimeout(timer);
        this.wake = null;
        resolve();
      };
    });
  }
}

async function until(cond: () => boolean, what: () => string, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

type UpRecord = [number, number, string];

/** How long the gateway's idle CPU is sampled for. */
const IDLE_MS = 1000;

const SETUP_TIMEOUT_MS = DEFAULT_SESSIONS.answerTimeoutMs + 10_000;

/** Builds the bundle, starts the gateway process on a fresh data directory with policy default allow,
 *  provisions and boots the emulated devices against it, installs the applications, runs the rounds,
 *  stops everything. */
export async function runEmulatedSessions(log: (s: string) => void, o: EmulatedLoadOptions = DEFAULT_EMULATED_LOAD): Promise<EmulatedSessionResults> {
  if (o.handsets < 2 || o.handsets % 2) throw new Error("the handsets come in pairs");
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "kp-bench-gateway-"));
  const outDir = fs.mkdtempSync(path.join(os.tmpdir(), "kp-bench-build-"));
  let gateway: GatewayProcess | undefined;
  let stopSim: (() => void) | undefined;
  try {
    let t = performance.now();
    const build = await buildFirmware({ board: o.board, outDir });
    if (!build.ok) throw new Error(`the ${o.board} bundle did not build: ${build.problems.join("; ")}`);
    const buildMs = performance.now() - t;

    const store = await openStore(dataDir);
    try {
      await new Policy(store).setDefault("allow");
    } finally {
      await store.close();
    }
    gateway = await GatewayProcess.start(dataDir);
    log(`sessions, emulated: ${o.handsets} ${o.board} devices (firmware bundle ${build.bytes} bytes in QuickJS) booting against the gateway process`);
    t = performance.now();
    // The devices' Storage next to the registry, as `keyproxy sim` keeps it.
    const sim = await startSim({ dataDir, gateway: gateway.address, count: o.handsets, board: o.board, bundle: build.code, prefix: "emu" });
    stopSim = sim.stop;
    const devices = sim.devices;
    const bootMs = performance.now() - t;
    log(`sessions, emulated: ${o.handsets} devices booted in ${(bootMs / 1000).toFixed(1)} s; waiting for them to join and register`);
    let deviceErrors = 0;
    const firstErrors: string[] = [];
    for (const d of devices) {
      d.on("uncaught", (e: string) => {
        deviceErrors++;
        if (firstErrors.length < 3) firstErrors.push(`${d.opts.name}: ${e}`);
      });
    }
    t = performance.now();
    const registered = () => devices.filter((d) => d.eval("KP.status().registered") === true).length;
    await until(() => registered() === devices.length, () => `every emulated device to register (${registered()} of ${devices.length} did)`, 60_000);
    const registerMs = performance.now() - t;

    const idleBefore = await gateway.sample();
    const idleT0 = performance.now();
    await new Promise((r) => setTimeout(r, IDLE_MS));
    const idleAfter = await gateway.sample();
    const gatewayIdleCpuUsPerSecond = (idleAfter.cpuUs - idleBefore.cpuUs) / ((performance.now() - idleT0) / 1000);

    const ids = devices.map((d) => d.opts.name!);
    const pairs = Array.from({ length: o.handsets / 2 }, (_, i) => ({ caller: devices[2 * i], callee: devices[2 * i + 1], callerId: ids[2 * i], calleeId: ids[2 * i + 1] }));
    for (const p of pairs) {
      p.caller.eval(RECORDER);
      p.callee.eval(RECORDER);
      p.callee.eval(CALLEE);
    }
    const ups = new MarkerCount(devices, "kpb:up");
    const closes = new MarkerCount(devices, "kpb:closed");

    log(`sessions, emulated: ${o.rounds} rounds of ${pairs.length} setups at once (after ${o.warmUpRounds} warm-up rounds)`);
    const bothMs: number[] = [];
    const callerMs: number[] = [];
    const perRoundCpu: number[] = [];
    let cpuUs = 0;
    let emulatorCpuUs = 0;
    let wallMs = 0;
    for (let r = 0; r < o.warmUpRounds + o.rounds; r++) {
      for (const d of devices) d.eval("UP = []; CLOSED = []; 1");
      ups.reset();
      closes.reset();
      const before = await gateway.sample();
      const emulatorBefore = process.cpuUsage();
      // All connects in one synchronous burst: nothing is delivered to any device in between.
      const t0 = pairs.map((p) => {
        const at = hostNowMs();
        if (p.caller.eval(`KP.connect(${JSON.stringify(p.calleeId)}, ${JSON.stringify(SESSION_APP)})`) !== true) throw new Error(`${p.callerId} is not linked`);
        return at;
      });
      await ups.wait(2 * pairs.length, SETUP_TIMEOUT_MS, () => `round ${r}: onConnect at both ends of every pair`);
      const emulatorCpu = process.cpuUsage(emulatorBefore);
      const after = await gateway.sample();

      // Read back what the devices noted, check each pair got one SA with each other, and close it.
      let roundEnd = 0;
      const roundBoth: number[] = [];
      const roundCaller: number[] = [];
      const spis = pairs.map((p, i) => {
        const a = p.caller.eval("UP") as UpRecord[];
        const b = p.callee.eval("UP") as UpRecord[];
        if (a.length !== 1 || b.length !== 1) throw new Error(`round ${r}: ${p.callerId}/${p.calleeId} connected ${a.length}/${b.length} times`);
        if (a[0][2] !== p.calleeId || b[0][2] !== p.callerId || a[0][1] !== b[0][1]) throw new Error(`round ${r}: ${p.callerId} and ${p.calleeId} are not on one SA with each other`);
        const callerAt = a[0][0] * 1000;
        const both = Math.max(callerAt, b[0][0] * 1000);
        roundEnd = Math.max(roundEnd, both);
        roundBoth.push(both - t0[i]);
        roundCaller.push(callerAt - t0[i]);
        return a[0][1];
      });
      pairs.forEach((p, i) => {
        if (p.caller.eval(`KP.close(${spis[i]})`) !== true) throw new Error(`${p.callerId} has no SA ${spis[i]}`);
      });
      await closes.wait(2 * pairs.length, SETUP_TIMEOUT_MS, () => `round ${r}: onClose at both ends of every pair`);
      if (r < o.warmUpRounds) continue;
      bothMs.push(...roundBoth);
      callerMs.push(...roundCaller);
      perRoundCpu.push((after.cpuUs - before.cpuUs) / pairs.length);
      cpuUs += after.cpuUs - before.cpuUs;
      emulatorCpuUs += emulatorCpu.user + emulatorCpu.system;
      wallMs += roundEnd - Math.min(...t0);
    }

    const end = await gateway.sample();
    if (end.warnings > 0) throw new Error(`the gateway logged ${end.warnings} warnings during the run, e.g. ${end.firstWarnings.join("; ")}`);
    if (deviceErrors > 0) throw new Error(`the emulated devices threw ${deviceErrors} uncaught errors, e.g. ${firstErrors.join("; ")}`);
    const setups = pairs.length * o.rounds;
    return {
      board: o.board,
      bundleBytes: build.bytes,
      handsets: o.handsets,
      pairs: pairs.length,
      rounds: o.rounds,
      setups,
      buildMs,
      bootMs,
      registerMs,
      setupsPerSecond: setups / (wallMs / 1000),
      gatewayCpuUsPerSetup: cpuUs / setups,
      gatewayCpuUsPerSetupRounds: perRoundCpu,
      gatewayIdleCpuUsPerSecond,
      gatewayBusy: cpuUs / 1000 / wallMs,
      emulatorBusy: emulatorCpuUs / 1000 / wallMs,
      bothConfirmed: latency(bothMs),
      callerConnected: latency(callerMs),
      dataDirFs: fileSystemOf(dataDir),
      gatewayWarnings: end.warnings,
      deviceErrors,
    };
  } finally {
    stopSim?.();
    await gateway?.stop();
    fs.rmSync(dataDir, { recursive: true, force: true });
    fs.rmSync(outDir, { recursive: true, force: true });
  }
}

if (process.argv[1] === THIS_FILE) {
  const log = (s: string) => process.stderr.write(s + "\n");
  runEmulatedSessions(log).then(
    (r) => process.stdout.write(JSON.stringify(r, null, 2) + "\n"),
    (e: unknown) => {
      process.stderr.write(`emulated session bench failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
      process.exitCode = 1;
    },
  );
}
