// Session benchmarks (design.md flow 4, sessions inside one gateway), for `npm run bench`:
//
// 1. The gateway under load: one gateway in its own process (real TCP on loopback, its SQLite file on
//    the host's temp directory), 100 handsets connecting in pairs, all pairs at once in rounds, then
//    one pair at a time. A setup is connect() on the caller until both devices got onConnect (the
//    gateway says Connected only after both confirmed their SA keys). Measured: setups per second
//    (wall clock), the gateway process's CPU time per setup (process.cpuUsage in that process, so the
//    handsets' own work is not in it) and the setup latency. The handsets are the firmware's Handset
//    engine run in Node (as test/support/harness.ts runs it), with the device crypto on the model of
//    Espruino's natives: 100 QuickJS devices would make the load generator, not the gateway, the thing
//    measured.
// 2. The raw crypto one setup needs on the gateway (seed and SPI, two confirm-tag checks, 4 link
//    frames opened and 5 sealed), on gateway/crypto/symmetric.ts, timed in the same run: what the gateway's
//    CPU per setup is compared with.
// 3. The device's own work for one setup, as caller and as callee, and for one message on the SA
//    (bench/device-ops.ts), in one emulated device, next to one tweetnacl X25519 in the same device
//    and run.
//
// Run alone: `node --import tsx bench/sessions.ts` prints the measurements as JSON. Knobs:
// KEYPROXY_BENCH_GATEWAY_ONLY=1 runs part 1 alone (no emulator), with the gateway target of
// bench/targets.ts; KEYPROXY_BENCH_ROUNDS=<n> counts n rounds instead of 16 (a quicker look);
// KEYPROXY_BENCH_GATEWAY_PROFILE=<dir> writes the gateway process's CPU profile there;
// KEYPROXY_BENCH_REGISTRY=postgres puts the gateway's registry in a fresh PostgreSQL database instead of
// its SQLite file (bench/postgres.ts: KEYPROXY_BENCH_POSTGRES_URL's server, else a throwaway cluster)
// and adds the server's CPU per setup to the results.

import { fork, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import nacl from "tweetnacl";
import { EmulatedDevice } from "../emulator/device.ts";
import { createEspruinoCrypto, crc32 } from "../emulator/espruino-crypto.ts";
import { ctEqual, type Bytes } from "../firmware/bytes.ts";
import * as deviceCbor from "../firmware/cbor.ts";
import { deviceCrypto } from "../firmware/crypto/device.ts";
import { espruinoNatives } from "../firmware/crypto/natives.ts";
import { SUITE_AES_CCM_16_64_128, type SymCrypto } from "../firmware/crypto/types.ts";
import { Handset, type Platform } from "../firmware/handset.ts";
import { encodeFrame } from "../firmware/proto/frame.ts";
import { deriveSaKeys, DIR_DOWN, DIR_UP, frameNonce, saConfirmTag, type Codec, type LinkKeys } from "../firmware/proto/keys.ts";
import { newLink, sealMessage, type Link } from "../firmware/proto/link.ts";
import { encodeMessage, Msg, type InnerMessage } from "../firmware/proto/messages.ts";
import * as gatewayCbor from "../gateway/encoding/cbor.ts";
import { nodeCrypto } from "../gateway/crypto/symmetric.ts";
import { Gateway, openStore } from "../gateway/gateway.ts";
import { Logger } from "../gateway/log/logger.ts";
import { Policy } from "../gateway/registry/policy.ts";
import { DEFAULT_SESSIONS } from "../gateway/sessions/session-broker.ts";
import { zlib } from "../gateway/link/crc32.ts";
import { benchDatabase, type BenchDatabase } from "./postgres.ts";
import { buildBenchBundle, bytesLiteral, COUNTER_SOURCE, DEVICE_BOARD, DEVICE_ID, loadTweetnacl, MESSAGE_BYTES, storageParent, type NativeCalls } from "./device-run.ts";
import { answerJoinAndRegister, onlyMessage, openInner } from "./gateway-side.ts";
import { gatewaySetupTarget } from "./targets.ts";
import { DEFAULT_TIMING, deviceTask, nodeTask, runInterleaved, type Timing } from "./timing.ts";

const THIS_FILE = fileURLToPath(import.meta.url);
/** argv[2] that makes this file the gateway process (see gatewayProcess). */
const GATEWAY_FLAG = "--bench-gateway-process";
/** argv[2] that makes this file the echo process of timeTransportFloor. */
const ECHO_FLAG = "--bench-echo-process";
/** The gateway process's PostgreSQL URL, when its registry is there (in the environment, not argv:
 *  a URL may hold a password). */
const GATEWAY_DATABASE_ENV = "KEYPROXY_BENCH_GATEWAY_DATABASE";

/** Where the gateway's registry is: its data directory's SQLite file (the default), or PostgreSQL. */
export type BenchRegistry = "sqlite" | "postgres";

export const SESSION_APP = "bench";
/** A peer id of the same length as DEVICE_ID: it is in the ConnectRequest, Incoming and SaInstall. */
const PEER_ID = "puck-0b5e44d8";

export interface GatewayLoadOptions {
  handsets: number;
  /** Rounds in which every pair connects at once, after warmUpRounds that are not counted. */
  rounds: number;
  warmUpRounds: number;
  /** Setups one pair at a time (after a few warm-up setups that are not counted). */
  sequential: number;
  /** Where the gateway's registry is; SQLite when absent. */
  registry?: BenchRegistry;
}

export const DEFAULT_LOAD: GatewayLoadOptions = { handsets: 100, rounds: 16, warmUpRounds: 3, sequential: 200 };

export interface Latency {
  setups: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
}

export interface GatewaySessionResults {
  handsets: number;
  pairs: number;
  rounds: number;
  /** Setups in the counted concurrent rounds. */
  setups: number;
  /** Setups over the summed wall time of the counted rounds (connect to the last onConnect). */
  setupsPerSecond: number;
  /** The gateway process's CPU time (user + system) per setup, over all counted rounds, and the
   *  per-round values. */
  gatewayCpuUsPerSetup: number;
  gatewayCpuUsPerSetupRounds: number[];
  /** The part of gatewayCpuUsPerSetup spent in the kernel (system time): the sockets' reads and
   *  writes, SQLite's file I/O. */
  gatewaySystemUsPerSetup: number;
  /** Gateway CPU time ÷ wall time during the rounds: 1.0 means the gateway was the bottleneck. */
  gatewayBusy: number;
  /** The same for the process running the 100 handsets (the load generator). */
  loadBusy: number;
  concurrent: Latency;
  sequential: Latency;
  /** The raw crypto of one setup on the gateway, timed in this process. */
  rawCrypto: Timing;
  /** Link messages the gateway opens and seals per setup. */
  messages: { opened: number; sealed: number };
  /** Where the gateway's SQLite file was, and its file system. */
  dataDirFs: string;
  /** One audit record committed alone as Store.audit() commits it (WAL, synchronous=FULL), on the same
   *  file system: wall and CPU time per insert. What a setup's session-up record cost before issue 14. */
  auditInsert: { wallUs: number; cpuUs: number; inserts: number };
  /** One audit record as a setup writes it now (Store.auditBatched): queued with perBatch others and
   *  group-committed in one transaction at synchronous=NORMAL; CPU time per record. */
  auditBatched: { cpuUs: number; records: number; perBatch: number };
  /** The sockets alone: a process that answers each message of a setup's size with one message, over
   *  as many loopback connections as the gateway has, as many in flight: its CPU per message answered
   *  (one read, one write). A setup is 4 frames read and 5 written. */
  transportFloor: { cpuUsPerMessage: number; messages: number };
  /** Warnings and errors the gateway logged during the run (must be none). */
  gatewayWarnings: number;
  /** Only with the registry in PostgreSQL: the server, and its CPU time during the counted rounds'
   *  setups (all its processes, measured as the gateway's). auditInsert and auditBatched above were
   *  then timed on PostgreSQL too (a fresh database of the same server). */
  postgres?: PostgresRunResults;
}

export interface PostgresRunResults {
  server: BenchDatabase["server"];
  /** Undefined when the server is not on this machine (its processes cannot be read). */
  serverCpuUsPerSetup: number | undefined;
  serverCpuUsPerSetupRounds: number[];
}

export interface DeviceSessionSuite {
  suite: number;
  caller: Timing;
  callee: Timing;
  /** Handset.send of MESSAGE_BYTES on the installed SA. */
  protectOnSa: Timing;
  natives: { caller: NativeCalls; callee: NativeCalls; protectOnSa: NativeCalls };
}

export interface DeviceSessionResults {
  board: string;
  bundleBytes: number;
  suites: DeviceSessionSuite[];
  /** tweetnacl nacl-fast.js scalarMult, in the same device, interleaved with the session tasks. */
  x25519: Timing;
  /** One bridged native call each, in the same device (for the Espruino estimate). */
  sha256Of64: Timing;
  aesEcbBlock: Timing;
}

export interface SessionResults {
  gateway: GatewaySessionResults;
  device: DeviceSessionResults;
}

// ---- small helpers ---------------------------------------------------------------------------------

/** Nearest-rank percentile of already sorted values. */
function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

export function latency(ms: number[]): Latency {
  const s = [...ms].sort((a, b) => a - b);
  return { setups: s.length, p50Ms: percentile(s, 50), p99Ms: percentile(s, 99), maxMs: s[s.length - 1] };
}

export function fileSystemOf(dir: string): string {
  try {
    // /proc/mounts: the longest mount point that contains dir.
    const mounts = fs.readFileSync("/proc/mounts", "utf8").split("\n").map((l) => l.split(" ")).filter((f) => f.length > 2);
    const real = fs.realpathSync(dir);
    let best = { point: "", type: "unknown" };
    for (const f of mounts) if ((real === f[1] || real.startsWith(f[1] === "/" ? "/" : f[1] + "/")) && f[1].length > best.point.length) best = { point: f[1], type: f[2] };
    return `${best.type} (${best.point})`;
  } catch {
    return "unknown";
  }
}

// ---- the gateway's side of one setup, for the device benchmark ----------------------------------------


interface SetupFrames {
  spi: number;
  suite: number;
  seed: Bytes;
  /** What the gateway sends the caller (sealed at 1, 2) and the callee (1, 2, 3), as gateway/sessions/session-broker.ts. */
  caller: { install: Bytes; connected: Bytes };
  callee: { incoming: Bytes; install: Bytes; connected: Bytes };
}

/** The gateway's frames of one setup between DEVICE_ID and PEER_ID on a device whose link keys are
 *  keys (the benchmark's device plays both parts, each on a fresh link). */
function setupFrames(c: SymCrypto, cbor: Codec, keys: LinkKeys, saSuite: number): SetupFrames {
  const seed = c.random(32);
  const spi = 0x5a5a0001;
  const sa = { spi, app: SESSION_APP, suite: saSuite, lifetime: DEFAULT_SESSIONS.lifetime, limit: DEFAULT_SESSIONS.limit, replaces: 0 };
  const frame = (link: Link, m: InnerMessage) => encodeFrame(sealMessage(c, cbor, link, m), zlib.crc32);
  const toCaller = newLink(keys, false);
  const toCallee = newLink(keys, false);
  return {
    suite: saSuite,
    spi,
    seed,
    caller: {
      install: frame(toCaller, { t: Msg.SaInstall, rid: 1, peer: PEER_ID, role: 0, seed, ...sa }),
      connected: frame(toCaller, { t: Msg.Connected, spi, replaces: 0 }),
    },
    callee: {
      incoming: frame(toCallee, { t: Msg.Incoming, rid: 7, from: PEER_ID, app: SESSION_APP, suite: saSuite }),
      install: frame(toCallee, { t: Msg.SaInstall, rid: 7, peer: PEER_ID, role: 1, seed, ...sa }),
      connected: frame(toCallee, { t: Msg.Connected, spi, replaces: 0 }),
    },
  };
}

/** Throws unless the device's frames are what gateway/sessions/session-broker.ts accepts: a ConnectRequest (or an
 *  accepting Answer) and an SaConfirm whose tag verifies for the role. */
function checkSetup(c: SymCrypto, cbor: Codec, keys: LinkKeys, f: SetupFrames, role: 0 | 1, sent: Bytes[]): void {
  const rx = newLink(keys, false);
  if (role === 0) {
    const m = openInner(c, cbor, rx, sent[0], Msg.ConnectRequest);
    if (m.t !== Msg.ConnectRequest || m.peer !== PEER_ID || m.from !== DEVICE_ID || m.app !== SESSION_APP) throw new Error("gateway side: wrong ConnectRequest");
  } else {
    const m = openInner(c, cbor, rx, sent[0], Msg.Answer);
    if (m.t !== Msg.Answer || m.rid !== 7 || !m.accept) throw new Error("gateway side: the callee did not accept");
  }
  const confirm = openInner(c, cbor, rx, sent[1], Msg.SaConfirm);
  if (confirm.t !== Msg.SaConfirm || confirm.spi !== f.spi || !ctEqual(saConfirmTag(c, cbor, f.seed, f.spi, f.suite, role), confirm.tag)) {
    throw new Error(`gateway side: the ${role === 0 ? "caller" : "callee"}'s key confirmation does not verify`);
  }
}

/** Throws unless frame is an SaData frame on f's SPI that the peer (the responder) opens to pt. */
function checkOnSa(c: SymCrypto, cbor: Codec, f: SetupFrames, suite: number, frame: Bytes, pt: Bytes): void {
  const m = onlyMessage(frame, cbor);
  if (m.t !== Msg.SaData || m.spi !== f.spi) throw new Error("gateway side: the protected message is not an SaData frame on the SA");
  // The initiator sends with the SA's up key; the nonce binds direction, SPI and sequence number.
  const k = deriveSaKeys(c, cbor, f.seed, f.spi, suite, 1);
  const opened = c.open(suite, k.up, frameNonce(suite, DIR_UP, m.spi, m.seq), m.sealed);
  if (!opened || !ctEqual(opened, pt)) throw new Error("gateway side: the peer cannot open the device's SA frame");
}

// ---- device side, in the emulator ---------------------------------------------------------------------

/** The device's work for one setup as caller and as callee, for each suite (link and SA alike), and
 *  one X25519, in one emulated device, interleaved. Each operation is first checked against the
 *  gateway's side once. */
export async function runDeviceSessions(suites: number[], log: (s: string) => void): Promise<DeviceSessionResults> {
  log("sessions, device side: building bench/device-entry.ts for the emulator ...");
  const bundle = await buildBenchBundle();
  const storageDir = fs.mkdtempSync(path.join(storageParent().dir, "kp-bench-"));
  const dev = new EmulatedDevice({ board: DEVICE_BOARD, storageDir, name: "bench-sessions" });
  try {
    await dev.boot();
    dev.eval(bundle.code);
    dev.eval(COUNTER_SOURCE);
    const c = nodeCrypto();
    const pairs = suites.map((s, i) => [s, suites.length - i]);
    const pt = c.random(MESSAGE_BYTES);
    dev.eval(`var MESSAGE = ${bytesLiteral(pt)};`);
    const prepared = suites.map((suite) => {
      const v = `S_${suite < 0 ? "m" + -suite : suite}`;
      const rootKey = c.random(16);
      dev.eval(`var ${v} = kpBench.make(); ${v}.configure(${JSON.stringify(DEVICE_ID)}, ${bytesLiteral(rootKey)}, ${suite}, ${JSON.stringify(pairs)});`);
      const answers = answerJoinAndRegister(c, gatewayCbor, rootKey, dev.eval(`${v}.joinRequest()`) as Bytes, Math.floor(Date.now() / 1000));
      if (dev.eval(`${v}.joinAccept(${bytesLiteral(answers.acceptFrame)})`) !== true) throw new Error("the device refused the gateway's accept");
      const f = setupFrames(c, gatewayCbor, answers.keys, suite);
      dev.eval(
        `var ${v}_CALLER = [${bytesLiteral(f.caller.install)}, ${bytesLiteral(f.caller.connected)}];` +
          `var ${v}_CALLEE = [${bytesLiteral(f.callee.incoming)}, ${bytesLiteral(f.callee.install)}, ${bytesLiteral(f.callee.connected)}];`,
      );
      const caller = `${v}.sessionCaller(${JSON.stringify(PEER_ID)}, ${JSON.stringify(SESSION_APP)}, ${v}_CALLER[0], ${v}_CALLER[1])`;
      const callee = `${v}.sessionCallee(${v}_CALLEE[0], ${v}_CALLEE[1], ${v}_CALLEE[2])`;
      const protect = `${v}.protectOnSa(MESSAGE)`;
      checkSetup(c, gatewayCbor, answers.keys, f, 0, dev.eval(caller) as Bytes[]);
      checkOnSa(c, gatewayCbor, f, suite, dev.eval(protect) as Bytes, pt);
      checkSetup(c, gatewayCbor, answers.keys, f, 1, dev.eval(callee) as Bytes[]);
      const natives = {
        caller: dev.eval(`kpCountNatives(function () { ${caller}; })`) as NativeCalls,
        callee: dev.eval(`kpCountNatives(function () { ${callee}; })`) as NativeCalls,
        protectOnSa: dev.eval(`kpCountNatives(function () { ${protect}; })`) as NativeCalls,
      };
      const tasks = [deviceTask(dev, `${suite} caller`, caller), deviceTask(dev, `${suite} callee`, callee), deviceTask(dev, `${suite} protectOnSa`, protect)];
      return { suite, natives, tasks };
    });

    loadTweetnacl(dev, "nacl-fast.js", "naclFast");
    const sk = nacl.randomBytes(32);
    const pk = nacl.scalarMult.base(nacl.randomBytes(32));
    dev.eval(`var SK = ${bytesLiteral(sk)}, PK = ${bytesLiteral(pk)}, CM = require("crypto"), SHA_IN = new Uint8Array(64), AES_KEY = new Uint8Array(16), AES_IN = new Uint8Array(16);`);
    if (!Buffer.from(nacl.scalarMult(sk, pk)).equals(dev.eval("naclFast.scalarMult(SK, PK)") as Uint8Array)) throw new Error("nacl-fast scalarMult in the device disagrees with Node");

    const tasks = [
      ...prepared.flatMap((p) => p.tasks),
      deviceTask(dev, "x25519", "naclFast.scalarMult(SK, PK)"),
      deviceTask(dev, "sha256", "CM.SHA256(SHA_IN)"),
      deviceTask(dev, "aes", `CM.AES.encrypt(AES_IN, AES_KEY, { mode: "ECB" })`),
    ];
    log(`sessions, device side: timing ${tasks.length} operations, ${DEFAULT_TIMING.repetitions} interleaved rounds`);
    const t = runInterleaved(tasks);
    return {
      board: DEVICE_BOARD,
      bundleBytes: bundle.bytes,
      suites: prepared.map((p) => ({ suite: p.suite, caller: t[`${p.suite} caller`], callee: t[`${p.suite} callee`], protectOnSa: t[`${p.suite} protectOnSa`], natives: p.natives })),
      x25519: t.x25519,
      sha256Of64: t.sha256,
      aesEcbBlock: t.aes,
    };
  } finally {
    dev.powerOff();
    fs.rmSync(storageDir, { recursive: true, force: true });
  }
}

// ---- the raw crypto of one setup on the gateway ---------------------------------------------------------

/** The link messages of one setup: what the gateway opens (from the devices) and seals (to them). */
function setupMessages(saSuite: number): { opened: InnerMessage[]; sealed: InnerMessage[] } {
  const seed = new Uint8Array(32);
  const tag = new Uint8Array(16);
  const spi = 0x5a5a0001;
  const sa = { spi, app: SESSION_APP, suite: saSuite, seed, lifetime: DEFAULT_SESSIONS.lifetime, limit: DEFAULT_SESSIONS.limit, replaces: 0 };
  return {
    opened: [
      { t: Msg.ConnectRequest, rid: 1, peer: PEER_ID, app: SESSION_APP, from: DEVICE_ID },
      { t: Msg.Answer, rid: 1, accept: true },
      { t: Msg.SaConfirm, rid: 1, spi, tag },
      { t: Msg.SaConfirm, rid: 1, spi, tag },
    ],
    sealed: [
      { t: Msg.Incoming, rid: 1, from: DEVICE_ID, app: SESSION_APP, suite: saSuite },
      { t: Msg.SaInstall, rid: 1, peer: PEER_ID, role: 0, ...sa },
      { t: Msg.SaInstall, rid: 1, peer: DEVICE_ID, role: 1, ...sa },
      { t: Msg.Connected, spi, replaces: 0 },
      { t: Msg.Connected, spi, replaces: 0 },
    ],
  };
}

/** A timing task for the gateway's crypto primitives of one setup, AES-CCM links and SA, on
 *  gateway/crypto/symmetric.ts: seed and SPI from the RNG, the two confirm tags computed and compared in
 *  constant time, the 4 incoming link frames opened and the 5 outgoing ones sealed (plaintexts of
 *  the real messages' sizes). No CBOR, framing, sockets, SQLite or logging: those are the rest. */
function rawCryptoTask(c: SymCrypto) {
  const suite = SUITE_AES_CCM_16_64_128;
  const keys: LinkKeys = { suite, up: c.random(16), down: c.random(16) };
  const m = setupMessages(suite);
  const inPlain = m.opened.map((x) => gatewayCbor.encode(encodeMessage(x)));
  const outPlain = m.sealed.map((x) => gatewayCbor.encode(encodeMessage(x)));
  const inNonces = inPlain.map((_, i) => frameNonce(suite, DIR_UP, 0, i + 1));
  const outNonces = outPlain.map((_, i) => frameNonce(suite, DIR_DOWN, 0, i + 1));
  const inSealed = inPlain.map((p, i) => c.seal(suite, keys.up, inNonces[i], p));
  const seed = c.random(32);
  const spi = 0x5a5a0001;
  const tags = [saConfirmTag(c, gatewayCbor, seed, spi, suite, 0), saConfirmTag(c, gatewayCbor, seed, spi, suite, 1)];
  const one = (): boolean => {
    c.random(32);
    c.random(4);
    let ok = true;
    for (let i = 0; i < inSealed.length; i++) ok = c.open(suite, keys.up, inNonces[i], inSealed[i]) !== undefined && ok;
    for (let i = 0; i < outPlain.length; i++) c.seal(suite, keys.down, outNonces[i], outPlain[i]);
    for (let role = 0; role < 2; role++) ok = ctEqual(saConfirmTag(c, gatewayCbor, seed, spi, suite, role), tags[role]) && ok;
    return ok;
  };
  if (!one()) throw new Error("raw setup crypto: a frame or a confirm tag did not verify");
  return { task: nodeTask("raw setup crypto", one), messages: { opened: m.opened.length, sealed: m.sealed.length } };
}

// ---- the gateway process ----------------------------------------------------------------------------

type ToGateway = { k: "cpu"; id: number } | { k: "stop" };
type FromGateway =
  | { k: "ready"; port: number; host: string }
  | { k: "cpu"; id: number; usage: NodeJS.CpuUsage; warnings: number; firstWarnings: string[]; stats: Record<string, number> }
  | { k: "failed"; message: string };

/** This file run as the gateway process: a Gateway on dataDir (its registry in the PostgreSQL database
 *  GATEWAY_DATABASE_ENV names, when set), answering CPU-time queries over IPC.
 *  Log records are formatted as usual but not written anywhere (writing 100 handsets' records to a
 *  terminal would measure the terminal); warnings and errors are counted. */
async function gatewayProcess(dataDir: string, database: string | undefined): Promise<void> {
  const send = (m: FromGateway) => process.send?.(m);
  let warnings = 0;
  const firstWarnings: string[] = [];
  const log = new Logger(() => {});
  log.subscribe((r) => {
    if (r.level === "info") return;
    warnings++;
    if (firstWarnings.length < 5) firstWarnings.push(`${r.event}: ${String(r.reason ?? "")}`);
  });
  let gw: Gateway;
  try {
    gw = await Gateway.start({ dataDir, database, listen: { host: "127.0.0.1", port: 0 }, log });
  } catch (e) {
    send({ k: "failed", message: e instanceof Error ? e.message : String(e) });
    process.disconnect?.();
    return;
  }
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await gw.stop();
    // Exit explicitly: Gateway.stop() closes the links after the broker, and each closed link starts
    // the broker's 30 s grace timer again, which would keep this process alive that long.
    process.exit(0);
  };
  // The benchmark went away: stop too.
  process.on("disconnect", () => void stop());
  process.on("message", (m: ToGateway) => {
    if (m.k === "cpu") send({ k: "cpu", id: m.id, usage: process.cpuUsage(), warnings, firstWarnings, stats: { ...gw.sessions.stats } });
    else if (m.k === "stop") void stop();
  });
  send({ k: "ready", port: gw.address.port, host: gw.address.host });
}

/** The parent's handle on the gateway process. */
export class GatewayProcess {
  private nextId = 0;
  private waiting = new Map<number, (m: Extract<FromGateway, { k: "cpu" }>) => void>();
  private exited: Promise<number | null>;

  private constructor(private child: ChildProcess, readonly address: { host: string; port: number }) {
    this.exited = new Promise((r) => child.once("exit", (code) => r(code)));
    child.on("message", (m: FromGateway) => {
      if (m.k !== "cpu") return;
      this.waiting.get(m.id)?.(m);
      this.waiting.delete(m.id);
    });
  }

  /** database: the registry's PostgreSQL URL; without it, the data directory's SQLite file. */
  static start(dataDir: string, database?: string): Promise<GatewayProcess> {
    // tsx loads the TypeScript in the child as in this process, however the benchmark was started.
    // KEYPROXY_BENCH_GATEWAY_PROFILE=<dir> writes the gateway process's CPU profile there (--cpu-prof).
    const profile = process.env.KEYPROXY_BENCH_GATEWAY_PROFILE;
    const execArgv = ["--import", "tsx", ...(profile ? ["--cpu-prof", "--cpu-prof-dir", profile] : [])];
    const env = { ...process.env };
    delete env[GATEWAY_DATABASE_ENV];
    if (database) env[GATEWAY_DATABASE_ENV] = database;
    const child = fork(THIS_FILE, [GATEWAY_FLAG, dataDir], { execArgv, env, stdio: ["ignore", "inherit", "inherit", "ipc"] });
    return new Promise((resolve, reject) => {
      const fail = (why: string) => {
        child.kill();
        reject(new Error(`the gateway process did not start: ${why}`));
      };
      const timer = setTimeout(() => fail("no answer in 30 s"), 30_000);
      child.once("exit", (code) => fail(`exited with ${code}`));
      child.once("message", (m: FromGateway) => {
        clearTimeout(timer);
        child.removeAllListeners("exit");
        if (m.k === "ready") resolve(new GatewayProcess(child, { host: m.host, port: m.port }));
        else fail(m.k === "failed" ? m.message : `unexpected message ${m.k}`);
      });
    });
  }

  /** The gateway process's CPU time so far (µs, user + system) and its warning count. */
  sample(): Promise<{ cpuUs: number; systemUs: number; warnings: number; firstWarnings: string[]; stats: Record<string, number> }> {
    const id = ++this.nextId;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error("the gateway process did not answer a CPU query in 10 s"));
      }, 10_000);
      this.waiting.set(id, (m) => {
        clearTimeout(timer);
        resolve({ cpuUs: m.usage.user + m.usage.system, systemUs: m.usage.system, warnings: m.warnings, firstWarnings: m.firstWarnings, stats: m.stats });
      });
      this.child.send({ k: "cpu", id } satisfies ToGateway);
    });
  }

  /** Stops the gateway (it closes its links and its SQLite file) and waits for the process to end;
   *  kills it if it has not ended in 10 s. */
  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    if (this.child.connected) this.child.send({ k: "stop" } satisfies ToGateway);
    const timer = setTimeout(() => this.child.kill(), 10_000);
    await this.exited;
    clearTimeout(timer);
  }
}

// ---- the handsets -----------------------------------------------------------------------------------

/** One handset: the firmware's engine in Node over a real socket, with hooks the rounds set. */
export interface LoadHandset {
  id: string;
  h: Handset;
  socket: net.Socket;
  /** The last lines the engine logged (for a failure message; the engine never logs key material). */
  lines: string[];
  up: ((spi: number, peer: string) => void) | null;
  closed: ((spi: number) => void) | null;
}

function espruinoModelCrypto(): SymCrypto {
  const { cryptoModule } = createEspruinoCrypto({ aesEcbCbc: true, aesCcm: false });
  return deviceCrypto(espruinoNatives(cryptoModule, undefined, { hwRand: () => randomBytes(4).readUInt32LE(0) }), []);
}

export function connectHandset(address: { host: string; port: number }, id: string, rootKey: Bytes): Promise<LoadHandset> {
  let ctr = 0;
  const lines: string[] = [];
  const p: Platform = {
    crypto: espruinoModelCrypto(),
    cbor: deviceCbor,
    crc32,
    counter: (n) => (n === undefined ? ctr : (ctr = n)),
    now: () => Date.now() / 1000,
    setTimeout: (fn, ms) => setTimeout(fn, ms),
    clearTimeout: (t) => clearTimeout(t),
    log: (l) => {
      lines.push(l);
      if (lines.length > 10) lines.shift();
    },
  };
  const h = new Handset({ id, rootKey, lifetime: 600, suite: SUITE_AES_CCM_16_64_128, suites: [[SUITE_AES_CCM_16_64_128, 1]] }, p);
  return new Promise((resolve, reject) => {
    const socket = net.connect(address.port, address.host, () => {
      socket.setNoDelay(true);
      const lh: LoadHandset = { id, h, socket, lines, up: null, closed: null };
      h.onRequest = () => true;
      h.onConnect = (spi, peer) => lh.up?.(spi, peer);
      h.onClose = (spi) => lh.closed?.(spi);
      h.up({ write: (b) => void socket.write(b) });
      resolve(lh);
    });
    socket.on("data", (b) => h.receive(new Uint8Array(b.buffer, b.byteOffset, b.length)));
    socket.on("close", () => h.down());
    socket.on("error", reject);
  });
}

export async function until(cond: () => boolean, what: string, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const SETUP_TIMEOUT_MS = DEFAULT_SESSIONS.answerTimeoutMs + 5000;

/** One setup: caller.connect(callee) until both got onConnect for the same SPI. Resolves with the
 *  latency and the SPI; rejects when the gateway refuses or nothing happens in time. The names are the
 *  ones each end knows the other by: the ids inside one gateway, name@domain across gateways. */
export function setup(
  caller: LoadHandset,
  callee: LoadHandset,
  o: { callerName?: string; calleeName?: string; timeoutMs?: number } = {},
): Promise<{ ms: number; spi: number }> {
  const callerName = o.callerName ?? caller.id;
  const calleeName = o.calleeName ?? callee.id;
  return new Promise((resolve, reject) => {
    let callerSpi = 0;
    let calleeSpi = 0;
    let timer: NodeJS.Timeout | undefined;
    const t0 = performance.now();
    const finish = (err?: Error) => {
      clearTimeout(timer);
      caller.up = null;
      callee.up = null;
      if (err) reject(err);
      else resolve({ ms: performance.now() - t0, spi: callerSpi });
    };
    const check = () => {
      if (!callerSpi || !calleeSpi) return;
      finish(callerSpi === calleeSpi ? undefined : new Error(`${caller.id} and ${callee.id} got different SPIs`));
    };
    caller.up = (spi, peer) => {
      if (peer !== calleeName) return finish(new Error(`${caller.id} connected to ${peer}, not ${calleeName}`));
      callerSpi = spi;
      check();
    };
    callee.up = (spi, peer) => {
      if (peer !== callerName) return finish(new Error(`${callee.id} connected to ${peer}, not ${callerName}`));
      calleeSpi = spi;
      check();
    };
    timer = setTimeout(
      () => finish(new Error(`setup ${caller.id} -> ${calleeName} did not complete (caller's last code ${caller.h.lastCode}; last lines: ${caller.lines.slice(-3).join(" | ")})`)),
      o.timeoutMs ?? SETUP_TIMEOUT_MS,
    );
    if (!caller.h.connect(calleeName, SESSION_APP)) finish(new Error(`${caller.id} is not linked`));
  });
}

/** Ends a session from the caller's side; resolves when both ends were told (SaClosed). */
export function teardown(caller: LoadHandset, callee: LoadHandset, spi: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const gone = new Set<string>();
    const timer = setTimeout(() => reject(new Error(`session ${spi} between ${caller.id} and ${callee.id} did not close`)), SETUP_TIMEOUT_MS);
    const seen = (who: LoadHandset) => (s: number) => {
      if (s !== spi) return;
      gone.add(who.id);
      if (gone.size < 2) return;
      clearTimeout(timer);
      caller.closed = null;
      callee.closed = null;
      resolve();
    };
    caller.closed = seen(caller);
    callee.closed = seen(callee);
    if (caller.h.close(spi)) return;
    clearTimeout(timer);
    reject(new Error(`${caller.id} has no SA ${spi}`));
  });
}

/** Wall and CPU time of one audit insert by gateway/registry/store.ts, in a fresh store under parent
 *  (its registry in database when given: a fresh PostgreSQL database). */
export async function timeAuditInserts(parent: string, inserts: number, database?: string): Promise<{ wallUs: number; cpuUs: number; inserts: number }> {
  const dir = fs.mkdtempSync(path.join(parent, "kp-bench-audit-"));
  const store = await openStore(dir, database);
  try {
    const write = (i: number) => store.audit(Math.floor(Date.now() / 1000), "bench-001", "session-up", `peer=bench-002 app=${SESSION_APP} spi=${i.toString(16).padStart(8, "0")}`);
    for (let i = 0; i < 20; i++) await write(i); // warm-up
    const cpu = process.cpuUsage();
    const t0 = performance.now();
    for (let i = 0; i < inserts; i++) await write(i);
    const wallUs = ((performance.now() - t0) * 1000) / inserts;
    const used = process.cpuUsage(cpu);
    return { wallUs, cpuUs: (used.user + used.system) / inserts, inserts };
  } finally {
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** CPU time of one audit record as the session broker writes it (Store.auditBatched): perBatch records
 *  queued, then their group commit awaited, batches times, in a fresh store under parent. */
export async function timeBatchedAudit(parent: string, batches: number, perBatch: number, database?: string): Promise<{ cpuUs: number; records: number; perBatch: number }> {
  const dir = fs.mkdtempSync(path.join(parent, "kp-bench-audit-"));
  const store = await openStore(dir, database);
  try {
    const batch = async (b: number) => {
      for (let i = 0; i < perBatch; i++) store.auditBatched(Math.floor(Date.now() / 1000), "bench-001", "session-up", `peer=bench-002 app=${SESSION_APP} spi=${(b * perBatch + i).toString(16).padStart(8, "0")}`);
      await store.auditCommitted();
    };
    await batch(0); // warm-up
    let cpuUs = 0;
    for (let b = 1; b <= batches; b++) {
      const cpu = process.cpuUsage();
      await batch(b);
      const used = process.cpuUsage(cpu);
      cpuUs += used.user + used.system;
    }
    return { cpuUs: cpuUs / (batches * perBatch), records: batches * perBatch, perBatch };
  } finally {
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** This file run as the echo process: every chunk read is answered with one write of the same size. */
function echoProcess(): void {
  const server = net.createServer((s) => {
    s.setNoDelay(true);
    s.on("data", (b) => s.write(Buffer.alloc(b.length)));
    s.on("error", () => {});
  });
  server.listen(0, "127.0.0.1", () => process.send?.({ port: (server.address() as net.AddressInfo).port }));
  process.on("message", (m: string) => (m === "cpu" ? process.send?.({ usage: process.cpuUsage() }) : process.exit(0)));
  process.on("disconnect", () => process.exit(0));
}

/** The CPU an event loop spends to read one small message from a loopback TCP connection and write
 *  one back, with connections and messages in flight as in the rounds (bench/sessions.ts forks an
 *  echo process): the floor under the gateway's CPU per frame, before any parsing or crypto. */
export async function timeTransportFloor(connections: number, inFlight: number, rounds: number, perRound: number, bytes = 80): Promise<{ cpuUsPerMessage: number; messages: number }> {
  const child = fork(THIS_FILE, [ECHO_FLAG], { execArgv: ["--import", "tsx"], stdio: ["ignore", "inherit", "inherit", "ipc"] });
  const sockets: net.Socket[] = [];
  try {
    const port = await new Promise<number>((resolve, reject) => {
      child.once("message", (m: { port: number }) => resolve(m.port));
      child.once("exit", (code) => reject(new Error(`the echo process exited with ${code}`)));
    });
    for (let i = 0; i < connections; i++) {
      sockets.push(await new Promise<net.Socket>((resolve) => {
        const s = net.connect(port, "127.0.0.1", () => resolve(s));
        s.setNoDelay(true);
      }));
    }
    const cpu = () => new Promise<number>((resolve) => {
      child.once("message", (m: { usage: NodeJS.CpuUsage }) => resolve(m.usage.user + m.usage.system));
      child.send("cpu");
    });
    // Each of inFlight connections sends, waits for the answer, sends again: perRound times a round.
    const exchange = (s: net.Socket) => new Promise<void>((resolve) => {
      let answered = 0;
      const onData = () => {
        if (++answered < perRound) return void s.write(Buffer.alloc(bytes));
        s.off("data", onData);
        resolve();
      };
      s.on("data", onData);
      s.write(Buffer.alloc(bytes));
    });
    let cpuUs = 0;
    const warmUp = 3;
    for (let r = 0; r < warmUp + rounds; r++) {
      const before = await cpu();
      await Promise.all(sockets.slice(0, inFlight).map(exchange));
      const after = await cpu();
      if (r >= warmUp) cpuUs += after - before;
    }
    const messages = rounds * inFlight * perRound;
    return { cpuUsPerMessage: cpuUs / messages, messages };
  } finally {
    for (const s of sockets) s.destroy();
    child.kill();
  }
}

/** Provisions the handsets in a fresh data directory (and, with o.registry "postgres", a fresh
 *  PostgreSQL database), starts the gateway process on it, joins and registers every handset, runs the
 *  rounds and the sequential setups, stops everything. */
export async function runGatewaySessions(log: (s: string) => void, o: GatewayLoadOptions = DEFAULT_LOAD): Promise<GatewaySessionResults> {
  if (o.handsets < 2 || o.handsets % 2) throw new Error("the handsets come in pairs");
  const registry = o.registry ?? "sqlite";
  if (registry !== "sqlite" && registry !== "postgres") throw new Error(`the registry is sqlite or postgres, not ${String(registry)}`);
  const c = nodeCrypto();
  const raw = rawCryptoTask(c);
  // The data directory is where a gateway's would be: on the host's disk (SQLite syncs each commit).
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "kp-bench-gateway-"));
  const ids = Array.from({ length: o.handsets }, (_, i) => `bench-${String(i + 1).padStart(3, "0")}`);
  const keys = ids.map(() => c.random(16));
  let gateway: GatewayProcess | undefined;
  const handsets: LoadHandset[] = [];
  const databases: BenchDatabase[] = [];
  const freshDatabase = async () => {
    const db = await benchDatabase(log);
    databases.push(db);
    return db;
  };
  try {
    const db = registry === "postgres" ? await freshDatabase() : undefined;
    const store = await openStore(dataDir, db?.url);
    try {
      await store.atomically(async () => {
        for (const [i, id] of ids.entries()) await store.addDevice(id, keys[i], "emulator", Math.floor(Date.now() / 1000));
      });
      await new Policy(store).setDefault("allow");
    } finally {
      await store.close();
    }
    gateway = await GatewayProcess.start(dataDir, db?.url);
    log(`sessions, gateway: ${o.handsets} handsets (firmware engine in Node) joining and registering with the gateway process`);
    handsets.push(...(await Promise.all(ids.map((id, i) => connectHandset(gateway!.address, id, keys[i])))));
    await until(() => handsets.every((x) => x.h.status().registered), "every handset to register", 60_000);
    const pairs = Array.from({ length: o.handsets / 2 }, (_, i) => ({ caller: handsets[2 * i], callee: handsets[2 * i + 1] }));

    log(`sessions, gateway: ${o.rounds} rounds of ${pairs.length} setups at once (after ${o.warmUpRounds} warm-up rounds)`);
    const concurrentMs: number[] = [];
    const perRoundCpu: number[] = [];
    const perRoundServerCpu: number[] = [];
    let serverCpuUs: number | undefined = db ? 0 : undefined;
    let cpuUs = 0;
    let systemUs = 0;
    let loadCpuUs = 0;
    let wallMs = 0;
    for (let r = 0; r < o.warmUpRounds + o.rounds; r++) {
      const before = await gateway.sample();
      const serverBefore = db?.serverCpuUs();
      const loadBefore = process.cpuUsage();
      const t0 = performance.now();
      const done = await Promise.all(pairs.map((p) => setup(p.caller, p.callee)));
      const t1 = performance.now();
      const load = process.cpuUsage(loadBefore);
      const serverAfter = db?.serverCpuUs();
      const after = await gateway.sample();
      await Promise.all(pairs.map((p, i) => teardown(p.caller, p.callee, done[i].spi)));
      // Warm-up rounds: the JIT, SQLite's page cache, the sockets' buffers.
      if (r < o.warmUpRounds) continue;
      concurrentMs.push(...done.map((d) => d.ms));
      perRoundCpu.push((after.cpuUs - before.cpuUs) / pairs.length);
      if (serverBefore !== undefined && serverAfter !== undefined && serverCpuUs !== undefined) {
        perRoundServerCpu.push((serverAfter - serverBefore) / pairs.length);
        serverCpuUs += serverAfter - serverBefore;
      } else serverCpuUs = undefined;
      cpuUs += after.cpuUs - before.cpuUs;
      systemUs += after.systemUs - before.systemUs;
      loadCpuUs += load.user + load.system;
      wallMs += t1 - t0;
    }

    const warmUp = Math.min(10, pairs.length);
    log(`sessions, gateway: ${o.sequential} setups one at a time (after ${warmUp} warm-up setups)`);
    const sequentialMs: number[] = [];
    for (let i = 0; i < warmUp + o.sequential; i++) {
      const p = pairs[i % pairs.length];
      const d = await setup(p.caller, p.callee);
      await teardown(p.caller, p.callee, d.spi);
      if (i >= warmUp) sequentialMs.push(d.ms);
    }

    const end = await gateway.sample();
    if (end.warnings > 0) throw new Error(`the gateway logged ${end.warnings} warnings during the run, e.g. ${end.firstWarnings.join("; ")}`);
    const setups = pairs.length * o.rounds;
    log(`sessions, gateway machine: timing the raw crypto of one setup`);
    const rawTiming = runInterleaved([raw.task])[raw.task.name];
    // On PostgreSQL, each in a fresh database (a registry is sealed under its own data directory's KEK).
    const auditInsert = await timeAuditInserts(path.dirname(dataDir), 200, db && (await freshDatabase()).url);
    const auditBatched = await timeBatchedAudit(path.dirname(dataDir), 10, o.handsets / 2, db && (await freshDatabase()).url);
    log(`sessions, gateway machine: the sockets alone (an echo process, ${o.handsets} connections, ${pairs.length} messages in flight)`);
    const transportFloor = await timeTransportFloor(o.handsets, pairs.length, o.rounds, 10);
    return {
      handsets: o.handsets,
      pairs: pairs.length,
      rounds: o.rounds,
      setups,
      setupsPerSecond: setups / (wallMs / 1000),
      gatewayCpuUsPerSetup: cpuUs / setups,
      gatewayCpuUsPerSetupRounds: perRoundCpu,
      gatewaySystemUsPerSetup: systemUs / setups,
      gatewayBusy: cpuUs / 1000 / wallMs,
      loadBusy: loadCpuUs / 1000 / wallMs,
      concurrent: latency(concurrentMs),
      sequential: latency(sequentialMs),
      rawCrypto: rawTiming,
      messages: raw.messages,
      dataDirFs: fileSystemOf(dataDir),
      auditInsert,
      auditBatched,
      transportFloor,
      gatewayWarnings: end.warnings,
      ...(db && {
        postgres: {
          server: db.server,
          serverCpuUsPerSetup: serverCpuUs === undefined ? undefined : serverCpuUs / setups,
          serverCpuUsPerSetupRounds: perRoundServerCpu,
        },
      }),
    };
  } finally {
    for (const x of handsets) x.socket.destroy();
    await gateway?.stop();
    for (const d of databases) await d.drop();
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
}

/** Both halves, for bench/run.ts. */
export async function runSessions(suites: number[], log: (s: string) => void, o: GatewayLoadOptions = DEFAULT_LOAD): Promise<SessionResults> {
  const device = await runDeviceSessions(suites, log);
  const gateway = await runGatewaySessions(log, o);
  return { gateway, device };
}


if (process.argv[1] === THIS_FILE && process.argv[2] === GATEWAY_FLAG) {
  void gatewayProcess(process.argv[3], process.env[GATEWAY_DATABASE_ENV] || undefined);
} else if (process.argv[1] === THIS_FILE && process.argv[2] === ECHO_FLAG) {
  echoProcess();
} else if (process.argv[1] === THIS_FILE) {
  const log = (s: string) => process.stderr.write(s + "\n");
  const rounds = Number(process.env.KEYPROXY_BENCH_ROUNDS) || DEFAULT_LOAD.rounds;
  const registry = process.env.KEYPROXY_BENCH_REGISTRY as BenchRegistry | undefined;
  const load: GatewayLoadOptions = { ...DEFAULT_LOAD, rounds, ...(registry && { registry }) };
  if (registry && registry !== "sqlite" && registry !== "postgres") throw new Error(`KEYPROXY_BENCH_REGISTRY is sqlite or postgres, not ${registry}`);
  const run = process.env.KEYPROXY_BENCH_GATEWAY_ONLY
    ? runGatewaySessions(log, load).then((gateway) => ({ gateway, target: gatewaySetupTarget(gateway) }))
    : runSessions([SUITE_AES_CCM_16_64_128], log, load);
  run.then(
    (r) => process.stdout.write(JSON.stringify(r, null, 2) + "\n"),
    (e: unknown) => {
      process.stderr.write(`session bench failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
      process.exitCode = 1;
    },
  );
}
