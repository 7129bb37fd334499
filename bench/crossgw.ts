// Sessions across gateways (design.md flow 5), for `npm run bench` (issue 4):
//
// 1. Two gateways, a.example and b.example, certified by one fleet CA, each in its own process
//    (bench/crossgw-gateway.ts, forked), both on one MQTT broker: a Mosquitto of our own (started on a
//    free port with a temporary configuration, persistence off, stopped at the end) when the
//    `mosquitto` binary is on PATH or at /usr/sbin/mosquitto, else the in-process aedes broker
//    (gateway/monitor/embedded-broker.ts) in this process. KEYPROXY_BENCH_BROKER=aedes|mosquitto forces one.
//    Configured as docs/FLEET.md recommends: Mosquitto with `set_tcp_nodelay true`; the aedes broker as
//    gateway/monitor/embedded-broker.ts makes it (its server sets noDelay). The interlink sets TCP_NODELAY on its own
//    socket and gathers its writes per batch of input (gateway/mqtt/socket.ts).
//    N callers registered at A, N callees at B: the firmware's Handset engine run in Node, as in
//    bench/sessions.ts. A setup is the caller's connect("callee-NNN@b.example") until onConnect fired
//    at both devices. Measured: setups per second with all pairs at once in rounds (after warm-up
//    rounds), the setup latency one pair at a time and all at once, and each gateway process's CPU
//    time per setup (process.cpuUsage in that process, across the rounds' setups, and across the
//    setups one pair at a time). Then one QoS 1 request and its answer between two mqtt.js clients,
//    one at a time: with Nagle's algorithm everywhere, with TCP_NODELAY on the clients only (both on a
//    second broker of the same kind with its default settings, started for these rows), and with it on
//    the clients, tuned as the interlink's socket is, and on the run's broker (as the interlink runs).
// 2. The crypto bound. Each gateway process counts its node:crypto public-key calls (Ed25519 sign and
//    verify, X25519 key pairs and shared secrets, and the parsing of raw keys into KeyObjects and the
//    exports out of them: bench/crypto-count.ts) across the counted rounds; divided by the setups,
//    that is what one setup needs. Each kind of call is then timed here, in this process, in the same
//    run, as the gateway makes it (same key types, same DER or JWK formats, messages of the mean
//    length signed): the sum, count × median, is the raw public-key cost of one setup across both
//    gateways, and 1 s ÷ that is the crypto bound on setups per second. The same without the parsing
//    and exporting (KeyObjects made once and kept) is shown for context.
//
// Run alone: `node --import tsx bench/crossgw.ts` prints the measurements as JSON.

import { fork, spawn, spawnSync, type ChildProcess } from "node:child_process";
import { createPrivateKey, createPublicKey, diffieHellman, generateKeyPairSync, randomBytes, sign, verify } from "node:crypto";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import mqtt from "mqtt";
import { Aedes } from "aedes";
import { startBroker } from "../gateway/monitor/embedded-broker.ts";
import { tuneMqttSocket } from "../gateway/mqtt/socket.ts";
import { Fleet, gatewayPublicKeys, installGatewayCertificate } from "../gateway/fleet/fleet.ts";
import { HELD_LIST_FILE } from "../gateway/fleet/trust.ts";
import { openStore } from "../gateway/gateway.ts";
import { Policy } from "../gateway/registry/policy.ts";
import { nodeCrypto } from "../gateway/crypto/symmetric.ts";
import { CONNECT_BUDGET_MS } from "../gateway/crossgw/cross-gateway.ts";
import { addCounts, diffCounts, type OpCounts } from "./crypto-count.ts";
import type { FromGateway, GatewayArgs, GatewaySample, ToGateway } from "./crossgw-gateway.ts";
import { connectHandset, fileSystemOf, latency, setup, teardown, timeAuditInserts, until, type Latency, type LoadHandset } from "./sessions.ts";
import { DEFAULT_TIMING, nodeTask, runInterleaved, type Timing, type TimingOptions } from "./timing.ts";

const THIS_FILE = fileURLToPath(import.meta.url);
const GATEWAY_ENTRY = fileURLToPath(new URL("./crossgw-gateway.ts", import.meta.url));

export const DOMAIN_A = "a.example";
export const DOMAIN_B = "b.example";

export interface CrossGatewayOptions {
  /** Caller-callee pairs: callers at a.example, callees at b.example. */
  pairs: number;
  /** Rounds in which every pair connects at once, after warmUpRounds that are not counted. */
  rounds: number;
  warmUpRounds: number;
  /** Setups one pair at a time (after a few warm-up setups that are not counted). */
  sequential: number;
  /** Repetitions and length of the primitives' timing loops. */
  timing: TimingOptions;
}

export const DEFAULT_CROSS: CrossGatewayOptions = { pairs: 50, rounds: 12, warmUpRounds: 3, sequential: 150, timing: DEFAULT_TIMING };

export interface BrokerInfo {
  kind: "mosquitto" | "aedes";
  /** "mosquitto 2.0.11", "aedes 1.2.0". */
  version: string;
  /** Where it ran: its own process (and the binary), or this process. */
  where: string;
  /** The interlink's MQTT version as the gateways negotiated it ("auto"). */
  protocol: string;
  /** Why Mosquitto was not used, when it was looked for and not used. */
  note?: string;
  /** Mosquitto's binary and the configuration we gave it, when it is the broker. */
  binary?: string;
  config?: string;
  /** How TCP_NODELAY is set on the broker's side of its connections. */
  noDelay: string;
  /** Mosquitto's own CPU time per setup (from /proc), when it ran in its own process. */
  cpuUsPerSetup?: number;
}

export interface GatewayLoad {
  id: string;
  /** CPU time (user + system) of the gateway process per setup, over the counted rounds. */
  cpuUsPerSetup: number;
  cpuUsPerSetupRounds: number[];
  /** Its CPU time ÷ wall time of the rounds. */
  busy: number;
  /** CPU time of the gateway process per setup one pair at a time (from just before connect() until
   *  its interlink is quiet; the benchmark's IPC queries in between included). */
  cpuUsPerSequentialSetup: number;
  /** node:crypto public-key calls per setup at this gateway (calls and message bytes ÷ setups). */
  opsPerSetup: OpCounts;
  /** Interlink envelopes this gateway accepted per setup (requests and answers). */
  envelopesPerSetup: number;
}

/** One kind of node:crypto call: how often a setup makes it, and what one costs here. */
export interface CryptoOp {
  op: string;
  /** A curve operation (sign, verify, key pair, shared secret); else key handling (parse, export). */
  curve: boolean;
  perSetup: { a: number; b: number; total: number };
  /** Mean length of the messages signed or verified, bytes (0 for the others). */
  meanBytes: number;
  timing: Timing;
}

export interface CrossGatewayResults {
  broker: BrokerInfo;
  pairs: number;
  rounds: number;
  warmUpRounds: number;
  /** Setups in the counted rounds. */
  setups: number;
  /** Setups over the summed wall time of the counted rounds (first connect to the last onConnect). */
  setupsPerSecond: number;
  gateways: [GatewayLoad, GatewayLoad];
  /** This process (the handsets, and the aedes broker when it is the one) busy during the rounds. */
  loadBusy: number;
  concurrent: Latency;
  sequential: Latency;
  /** One QoS 1 request and its QoS 1 answer between two mqtt.js clients through a broker, one at a time:
   *  (a) Nagle's algorithm everywhere: mqtt.js's defaults on the clients, a broker of the same kind
   *      with its default settings (Mosquitto without set_tcp_nodelay; aedes on a plain net.Server),
   *      started just for (a) and (b): how the interlink ran before it set TCP_NODELAY;
   *  (b) TCP_NODELAY on both clients only, through that same default broker;
   *  (c) TCP_NODELAY on both clients, through the run's broker (set_tcp_nodelay true; startBroker's
   *      noDelay server): as the interlink runs now, with the broker set up as the docs recommend. */
  mqttRoundTrip: { payloadBytes: number; defaultBroker: string; nagle: Latency; clientsOnly: Latency; clientsAndBroker: Latency };
  ops: CryptoOp[];
  /** Σ count × median over all calls (as the gateway makes them), and over the curve operations only. */
  cryptoUsPerSetup: { asCalled: number; curveOnly: number };
  /** 1 s ÷ the above: setups per second if a setup cost only that, on one core. */
  boundSetupsPerSecond: { asCalled: number; curveOnly: number };
  openssl: string;
  /** One audit record committed as gateway/registry/store.ts does it, on the data directories' file system. */
  auditInsert: { wallUs: number; cpuUs: number; inserts: number };
  dataDirFs: string;
  gatewayWarnings: number;
}

// ---- the broker -------------------------------------------------------------------------------------

interface RunningBroker {
  url: string;
  info: Omit<BrokerInfo, "protocol" | "cpuUsPerSetup">;
  /** CPU time of the broker's own process so far, µs (Mosquitto only). */
  cpuUs?: () => number | undefined;
  close(): Promise<void>;
}

function findMosquitto(): string | undefined {
  for (const dir of (process.env.PATH ?? "").split(path.delimiter).filter(Boolean)) {
    const f = path.join(dir, "mosquitto");
    try {
      fs.accessSync(f, fs.constants.X_OK);
      return f;
    } catch {
      // not here
    }
  }
  try {
    fs.accessSync("/usr/sbin/mosquitto", fs.constants.X_OK);
    return "/usr/sbin/mosquitto";
  } catch {
    return undefined;
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

/** user + system CPU time of a process, µs, from /proc/<pid>/stat (Linux), else undefined. */
function procCpuUs(pid: number, ticksPerSecond: number): number | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return ((Number(fields[11]) + Number(fields[12])) / ticksPerSecond) * 1e6;
  } catch {
    return undefined;
  }
}

/** The line docs/FLEET.md recommends (and .ci/run uses) for Mosquitto under the interlink. */
const MOSQUITTO_NODELAY = "set_tcp_nodelay true";

async function startMosquitto(bin: string, extraConfig: string[] = []): Promise<RunningBroker> {
  const help = spawnSync(bin, ["-h"], { encoding: "utf8", timeout: 5000 });
  const version = /mosquitto version (\S+)/.exec(`${help.stdout ?? ""}${help.stderr ?? ""}`)?.[1];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kp-bench-mosquitto-"));
  const port = await freePort();
  const conf = path.join(dir, "mosquitto.conf");
  fs.writeFileSync(conf, [`listener ${port} 127.0.0.1`, "allow_anonymous true", "persistence false", "log_dest stderr", "log_type error", "log_type warning", ...extraConfig, ""].join("\n"));
  const child: ChildProcess = spawn(bin, ["-c", conf], { stdio: ["ignore", "ignore", "pipe"] });
  const stderr: string[] = [];
  child.stderr?.setEncoding("utf8").on("data", (s: string) => {
    stderr.push(s);
    if (stderr.length > 20) stderr.shift();
  });
  let exited = false;
  child.once("exit", () => (exited = true));
  const cleanup = () => fs.rmSync(dir, { recursive: true, force: true });
  const end = Date.now() + 10_000;
  while (!(await canConnect(port))) {
    if (exited || Date.now() > end) {
      child.kill();
      cleanup();
      throw new Error(`mosquitto (${bin}) did not start on 127.0.0.1:${port}: ${exited ? `it exited with ${child.exitCode}` : "no connection in 10 s"}; ${stderr.join("").trim().slice(-300)}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  const tck = Number(spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).stdout?.trim()) || 100;
  return {
    url: `mqtt://127.0.0.1:${port}`,
    info: { kind: "mosquitto", version: version ? `mosquitto ${version}` : "mosquitto (version unknown)", where: `its own process (${bin})`, binary: bin,
      config: `a listener on 127.0.0.1 (a free port), allow_anonymous true, persistence false${extraConfig.length ? `, ${extraConfig.join(", ")}` : ""}; everything else Mosquitto's defaults`,
      noDelay: extraConfig.includes(MOSQUITTO_NODELAY) ? `\`${MOSQUITTO_NODELAY}\`` : "Mosquitto's default (`set_tcp_nodelay false`)" },
    cpuUs: () => (child.pid === undefined ? undefined : procCpuUs(child.pid, tck)),
    close: async () => {
      if (!exited) {
        const gone = new Promise((r) => child.once("exit", r));
        child.kill("SIGTERM");
        const t = setTimeout(() => child.kill("SIGKILL"), 5000);
        await gone;
        clearTimeout(t);
      }
      cleanup();
    },
  };
}

function aedesVersion(): string {
  try {
    const pkg = path.join(path.dirname(fileURLToPath(import.meta.resolve("aedes"))), "package.json");
    return `aedes ${(JSON.parse(fs.readFileSync(pkg, "utf8")) as { version: string }).version}`;
  } catch {
    return "aedes (version unknown)";
  }
}

/** An aedes broker on a plain net.Server, Node's default (no TCP_NODELAY): gateway/monitor/embedded-broker.ts as it was
 *  before it set noDelay, for the round trips (a) and (b) only. */
async function startAedesDefault(): Promise<{ url: string; close(): Promise<void> }> {
  const aedes = await Aedes.createBroker();
  const server = net.createServer(aedes.handle);
  const sockets = new Set<net.Socket>();
  server.on("connection", (c) => {
    sockets.add(c);
    c.on("close", () => sockets.delete(c));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `mqtt://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    close: async () => {
      await new Promise<void>((r) => aedes.close(() => r()));
      for (const c of sockets) c.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

async function startAedes(note?: string): Promise<RunningBroker> {
  const b = await startBroker({ host: "127.0.0.1", port: 0 });
  return {
    url: b.url,
    info: { kind: "aedes", version: aedesVersion(), where: "in the benchmark's main process (gateway/monitor/embedded-broker.ts startBroker), with the handsets", noDelay: "gateway/monitor/embedded-broker.ts's server sets `noDelay`", note },
    close: () => b.close(),
  };
}

async function startBenchBroker(log: (s: string) => void): Promise<RunningBroker> {
  const want = process.env.KEYPROXY_BENCH_BROKER;
  if (want === "aedes") return startAedes("KEYPROXY_BENCH_BROKER=aedes");
  const bin = findMosquitto();
  if (!bin) {
    if (want === "mosquitto") throw new Error("KEYPROXY_BENCH_BROKER=mosquitto, but no mosquitto binary on PATH or at /usr/sbin/mosquitto");
    return startAedes("no mosquitto binary on PATH or at /usr/sbin/mosquitto");
  }
  try {
    return await startMosquitto(bin, [MOSQUITTO_NODELAY]);
  } catch (e) {
    if (want === "mosquitto") throw e;
    const why = e instanceof Error ? e.message : String(e);
    log(`sessions across gateways: ${why}; using the in-process aedes broker instead`);
    return startAedes(`mosquitto was found but did not start: ${why}`);
  }
}

// ---- the gateway processes ------------------------------------------------------------------------------

class GatewayProcess {
  private nextId = 0;
  private readonly waiting = new Map<number, (s: GatewaySample) => void>();
  private readonly exited: Promise<number | null>;

  private constructor(
    private readonly child: ChildProcess,
    readonly id: string,
    readonly address: { host: string; port: number },
    readonly protocolVersion: number,
  ) {
    this.exited = new Promise((r) => child.once("exit", (code) => r(code)));
    child.on("message", (m: FromGateway) => {
      if (m.k !== "sample") return;
      this.waiting.get(m.id)?.(m.sample);
      this.waiting.delete(m.id);
    });
  }

  static start(args: GatewayArgs): Promise<GatewayProcess> {
    // KEYPROXY_BENCH_GATEWAY_PROFILE=<dir> writes each gateway process's CPU profile there, as in
    // bench/sessions.ts.
    const profile = process.env.KEYPROXY_BENCH_GATEWAY_PROFILE;
    const execArgv = ["--import", "tsx", ...(profile ? ["--cpu-prof", "--cpu-prof-dir", profile] : [])];
    const child = fork(GATEWAY_ENTRY, [JSON.stringify(args)], { execArgv, stdio: ["ignore", "inherit", "inherit", "ipc"] });
    return new Promise((resolve, reject) => {
      const fail = (why: string) => {
        child.kill();
        reject(new Error(`the gateway process for ${args.id} did not start: ${why}`));
      };
      const timer = setTimeout(() => fail("no answer in 30 s"), 30_000);
      child.once("exit", (code) => fail(`exited with ${code}`));
      child.once("message", (m: FromGateway) => {
        clearTimeout(timer);
        child.removeAllListeners("exit");
        if (m.k === "ready") resolve(new GatewayProcess(child, args.id, { host: m.host, port: m.port }, m.protocolVersion));
        else fail(m.k === "failed" ? m.message : `unexpected message ${m.k}`);
      });
    });
  }

  sample(): Promise<GatewaySample> {
    const id = ++this.nextId;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`the gateway process for ${this.id} did not answer a query in 10 s`));
      }, 10_000);
      this.waiting.set(id, (s) => {
        clearTimeout(timer);
        resolve(s);
      });
      this.child.send({ k: "sample", id } satisfies ToGateway);
    });
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    if (this.child.connected) this.child.send({ k: "stop" } satisfies ToGateway);
    const timer = setTimeout(() => this.child.kill(), 10_000);
    await this.exited;
    clearTimeout(timer);
  }
}

/** Samples both gateways until cond holds for both samples (nothing in flight, say); the samples. */
async function settle(gws: GatewayProcess[], cond: (s: GatewaySample) => boolean, what: string): Promise<GatewaySample[]> {
  const end = Date.now() + 15_000;
  for (;;) {
    const s = await Promise.all(gws.map((g) => g.sample()));
    if (s.every(cond)) return s;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what} (${s.map((x, i) => `${gws[i].id}: ${x.pending} pending, ${x.sessions} sessions`).join("; ")})`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

// ---- the primitives, timed here ----------------------------------------------------------------------

const isCurveOp = (op: string): boolean => / (sign|verify|dh|keygen)$/.test(op);

/** A timing task doing what one counted call did: same key type, same argument format. */
function cryptoOpTask(op: string, meanBytes: number) {
  const [type, what, ...rest] = op.split(" ");
  if (type !== "ed25519" && type !== "x25519") throw new Error(`crypto bound: no timing for "${op}" (a key type the benchmark does not know)`);
  const pair = () => generateKeyPairSync(type as "ed25519");
  const a = pair();
  const b = pair();
  const msg = new Uint8Array(randomBytes(Math.max(1, Math.round(meanBytes))));
  const pkcs8 = a.privateKey.export({ format: "der", type: "pkcs8" });
  const spki = b.publicKey.export({ format: "der", type: "spki" });
  const jwkPrivate = a.privateKey.export({ format: "jwk" });
  const jwkPublic = b.publicKey.export({ format: "jwk" });
  let fn: (() => unknown) | undefined;
  const format = rest.join(" ");
  if (what === "sign" && type === "ed25519") fn = () => sign(null, msg, a.privateKey);
  else if (what === "verify" && type === "ed25519") {
    const sig = sign(null, msg, a.privateKey);
    fn = () => {
      if (!verify(null, msg, a.publicKey, sig)) throw new Error("crypto bound: a signature did not verify");
    };
  } else if (what === "dh" && type === "x25519") fn = () => diffieHellman({ privateKey: a.privateKey, publicKey: b.publicKey });
  else if (what === "keygen") fn = () => generateKeyPairSync(type as "x25519");
  else if (what === "createPrivateKey" && format === "der") fn = () => createPrivateKey({ key: pkcs8, format: "der", type: "pkcs8" });
  else if (what === "createPrivateKey" && format === "jwk") fn = () => createPrivateKey({ key: jwkPrivate, format: "jwk" });
  else if (what === "createPublicKey" && format === "der") fn = () => createPublicKey({ key: spki, format: "der", type: "spki" });
  else if (what === "createPublicKey" && format === "jwk") fn = () => createPublicKey({ key: jwkPublic, format: "jwk" });
  else if (what === "createPublicKey" && format === "from-private") fn = () => createPublicKey(a.privateKey);
  else if (what === "export" && format === "private pkcs8") fn = () => a.privateKey.export({ format: "der", type: "pkcs8" });
  else if (what === "export" && format === "public spki") fn = () => b.publicKey.export({ format: "der", type: "spki" });
  else if (what === "export" && format === "private jwk") fn = () => a.privateKey.export({ format: "jwk" });
  else if (what === "export" && format === "public jwk") fn = () => b.publicKey.export({ format: "jwk" });
  if (!fn) throw new Error(`crypto bound: no timing for "${op}"`);
  fn();
  return nodeTask(op, fn);
}

/** Per-setup counts at A and B, each kind timed in this process (interleaved, as bench/timing.ts does). */
function timeOps(a: OpCounts, b: OpCounts, setups: number, timing: TimingOptions): CryptoOp[] {
  const both = addCounts(a, b);
  const names = Object.keys(both).sort((x, y) => Number(isCurveOp(y)) - Number(isCurveOp(x)) || x.localeCompare(y));
  const meanBytes = (op: string) => (both[op].bytes ? both[op].bytes / both[op].calls : 0);
  const timed = runInterleaved(names.map((op) => cryptoOpTask(op, meanBytes(op))), timing);
  return names.map((op) => ({
    op,
    curve: isCurveOp(op),
    perSetup: { a: (a[op]?.calls ?? 0) / setups, b: (b[op]?.calls ?? 0) / setups, total: both[op].calls / setups },
    meanBytes: meanBytes(op),
    timing: timed[op],
  }));
}

// ---- a round trip through the broker ------------------------------------------------------------------

export const ROUND_TRIP_PAYLOAD = 600;

/** n request/answer round trips, one at a time, between two mqtt.js clients through the broker at url,
 *  both QoS 1 as the interlink sends them (the asker publishes on the answerer's topic; the answerer
 *  publishes the answer on the asker's). Their sockets: Node's defaults, TCP_NODELAY alone, or tuned as
 *  keyproxy's own clients are (gateway/mqtt/socket.ts: TCP_NODELAY, writes gathered per batch of input). */
async function mqttRoundTrips(url: string, protocolVersion: 4 | 5, n: number, sockets: "defaults" | "noDelay" | "keyproxy"): Promise<Latency> {
  const tag = randomBytes(4).toString("hex");
  const opts = { protocolVersion, reconnectPeriod: 0, connectTimeout: 5000 };
  const asker = await mqtt.connectAsync(url, { ...opts, clientId: `kp-bench-ask-${tag}` });
  const answerer = await mqtt.connectAsync(url, { ...opts, clientId: `kp-bench-answer-${tag}` });
  try {
    if (sockets === "noDelay") for (const c of [asker, answerer]) (c.stream as unknown as net.Socket).setNoDelay(true);
    if (sockets === "keyproxy") for (const c of [asker, answerer]) tuneMqttSocket(c);
    const [ask, answer] = [`kp-bench/${tag}/ask`, `kp-bench/${tag}/answer`];
    const payload = randomBytes(ROUND_TRIP_PAYLOAD);
    answerer.on("message", (_t, p) => void answerer.publishAsync(answer, p, { qos: 1 }));
    await answerer.subscribeAsync(ask, { qos: 1 });
    let waiting: (() => void) | undefined;
    asker.on("message", () => waiting?.());
    await asker.subscribeAsync(answer, { qos: 1 });
    const ms: number[] = [];
    for (let i = 0; i < n + 5; i++) {
      const t0 = performance.now();
      const got = new Promise<void>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error("no answer through the broker in 5 s")), 5000);
        waiting = () => {
          clearTimeout(t);
          resolve();
        };
      });
      await asker.publishAsync(ask, payload, { qos: 1 });
      await got;
      if (i >= 5) ms.push(performance.now() - t0);
    }
    return latency(ms);
  } finally {
    await Promise.all([asker.endAsync(), answerer.endAsync()]);
  }
}

// ---- the run -----------------------------------------------------------------------------------------

/** Provisions a fleet, two gateways and their handsets, runs the rounds and the sequential setups,
 *  stops everything, then times the primitives the setups were counted to need. */
export async function runCrossGatewayBench(log: (s: string) => void, o: CrossGatewayOptions = DEFAULT_CROSS): Promise<CrossGatewayResults> {
  const c = nodeCrypto();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "kp-bench-xgw-"));
  const now = Math.floor(Date.now() / 1000);
  const sides = [
    { domain: DOMAIN_A, prefix: "caller" },
    { domain: DOMAIN_B, prefix: "callee" },
  ].map((s) => ({
    ...s,
    dataDir: path.join(tmp, s.domain),
    ids: Array.from({ length: o.pairs }, (_, i) => `${s.prefix}-${String(i + 1).padStart(3, "0")}`),
    keys: Array.from({ length: o.pairs }, () => c.random(16)),
  }));
  let broker: RunningBroker | undefined;
  const gateways: GatewayProcess[] = [];
  const handsets: LoadHandset[] = [];
  try {
    // What `keyproxy fleet create` and `keyproxy fleet issue-gateway --data-dir` do, then the devices
    // provisioned in each registry and a policy that lets every device reach every other.
    const fleet = Fleet.create(path.join(tmp, "fleet"), "kp-bench-fleet", now);
    for (const s of sides) {
      installGatewayCertificate(s.dataDir, fleet.issueGateway(s.domain, gatewayPublicKeys(s.dataDir), now), fleet.anchor);
      fs.writeFileSync(path.join(s.dataDir, HELD_LIST_FILE), fleet.signedList());
      const store = await openStore(s.dataDir);
      try {
        await store.atomically(async () => {
          for (const [i, id] of s.ids.entries()) await store.addDevice(id, s.keys[i], "emulator", now);
        });
        await new Policy(store).setDefault("allow");
      } finally {
        await store.close();
      }
    }
    broker = await startBenchBroker(log);
    log(`sessions across gateways: broker ${broker.info.version} (${broker.info.kind === "mosquitto" ? "own process" : "in this process"}), gateways ${DOMAIN_A} and ${DOMAIN_B} in their own processes`);
    gateways.push(...(await Promise.all(sides.map((s) => GatewayProcess.start({ dataDir: s.dataDir, id: s.domain, brokerUrl: broker!.url })))));
    const [gwA, gwB] = gateways;
    log(`sessions across gateways: ${o.pairs} callers at ${DOMAIN_A}, ${o.pairs} callees at ${DOMAIN_B} joining and registering`);
    for (const [i, s] of sides.entries()) handsets.push(...(await Promise.all(s.ids.map((id, j) => connectHandset(gateways[i].address, id, s.keys[j])))));
    await until(() => handsets.every((x) => x.h.status().registered), "every handset to register", 60_000);
    const pairs = Array.from({ length: o.pairs }, (_, i) => ({
      caller: handsets[i],
      callerName: `${sides[0].ids[i]}@${DOMAIN_A}`,
      callee: handsets[o.pairs + i],
      calleeName: `${sides[1].ids[i]}@${DOMAIN_B}`,
    }));
    const idle = (s: GatewaySample) => s.pending === 0;
    const closed = (s: GatewaySample) => s.pending === 0 && s.sessions === 0;

    log(`sessions across gateways: ${o.rounds} rounds of ${o.pairs} setups at once (after ${o.warmUpRounds} warm-up rounds)`);
    const concurrentMs: number[] = [];
    const perRound: number[][] = [[], []];
    const cpu = [0, 0];
    let counts: OpCounts[] = [{}, {}];
    const envelopes = [0, 0];
    let loadCpuUs = 0;
    let brokerCpuUs: number | undefined = 0;
    let wallMs = 0;
    let sampledMs = 0;
    for (let r = 0; r < o.warmUpRounds + o.rounds; r++) {
      const before = await Promise.all(gateways.map((g) => g.sample()));
      const brokerBefore = broker.cpuUs?.();
      const loadBefore = process.cpuUsage();
      const t0 = performance.now();
      const done = await Promise.all(pairs.map((p) => setup(p.caller, p.callee, { callerName: p.callerName, calleeName: p.calleeName, timeoutMs: CONNECT_BUDGET_MS + 5000 })));
      const t1 = performance.now();
      const load = process.cpuUsage(loadBefore);
      // The devices are connected, but answers to the last interlink requests (the confirmations) may
      // still be on their way: they belong to the setup, so wait for them before sampling.
      const after = await settle(gateways, idle, "the interlink to go quiet after a round");
      const t2 = performance.now();
      const brokerAfter = broker.cpuUs?.();
      await Promise.all(pairs.map((p, i) => teardown(p.caller, p.callee, done[i].spi)));
      await settle(gateways, closed, "every session across gateways to close");
      if (r < o.warmUpRounds) continue; // the JIT, the checkers' caches, SQLite's page cache, sockets
      concurrentMs.push(...done.map((d) => d.ms));
      for (let g = 0; g < 2; g++) {
        const used = after[g].usage.user + after[g].usage.system - (before[g].usage.user + before[g].usage.system);
        cpu[g] += used;
        perRound[g].push(used / o.pairs);
        counts[g] = addCounts(counts[g], diffCounts(before[g].counts, after[g].counts));
        envelopes[g] += after[g].accepted - before[g].accepted;
      }
      brokerCpuUs = brokerCpuUs !== undefined && brokerBefore !== undefined && brokerAfter !== undefined ? brokerCpuUs + brokerAfter - brokerBefore : undefined;
      loadCpuUs += load.user + load.system;
      wallMs += t1 - t0;
      sampledMs += t2 - t0;
    }

    const warmUp = Math.min(10, o.pairs);
    log(`sessions across gateways: ${o.sequential} setups one at a time (after ${warmUp} warm-up setups)`);
    const sequentialMs: number[] = [];
    const sequentialCpu = [0, 0];
    for (let i = 0; i < warmUp + o.sequential; i++) {
      const p = pairs[i % pairs.length];
      const before = await Promise.all(gateways.map((g) => g.sample()));
      const d = await setup(p.caller, p.callee, { callerName: p.callerName, calleeName: p.calleeName, timeoutMs: CONNECT_BUDGET_MS + 5000 });
      const after = await settle(gateways, idle, "the interlink to go quiet after a setup");
      await teardown(p.caller, p.callee, d.spi);
      await settle(gateways, closed, "the session to close at both gateways");
      if (i < warmUp) continue;
      sequentialMs.push(d.ms);
      for (let g = 0; g < 2; g++) sequentialCpu[g] += after[g].usage.user + after[g].usage.system - (before[g].usage.user + before[g].usage.system);
    }

    const end = await Promise.all(gateways.map((g) => g.sample()));
    const warnings = end.reduce((n, s) => n + s.warnings, 0);
    if (warnings > 0) throw new Error(`the gateways logged ${warnings} warnings during the run, e.g. ${end.flatMap((s) => s.firstWarnings).join("; ")}`);
    const setups = o.pairs * o.rounds;
    const per = (x: OpCounts): OpCounts => Object.fromEntries(Object.entries(x).map(([k, v]) => [k, { calls: v.calls / setups, bytes: v.bytes / setups }]));
    const protocols = new Set(gateways.map((g) => g.protocolVersion));
    const protocol = [...protocols].map((v) => (v === 5 ? "MQTT 5" : v === 4 ? "MQTT 3.1.1" : "unknown")).join(" / ");
    const results = {
      broker: { ...broker.info, protocol, cpuUsPerSetup: brokerCpuUs === undefined || !broker.cpuUs ? undefined : brokerCpuUs / setups },
      pairs: o.pairs,
      rounds: o.rounds,
      warmUpRounds: o.warmUpRounds,
      setups,
      setupsPerSecond: setups / (wallMs / 1000),
      gateways: [gwA, gwB].map((g, i) => ({
        id: g.id,
        cpuUsPerSetup: cpu[i] / setups,
        cpuUsPerSetupRounds: perRound[i],
        busy: cpu[i] / 1000 / sampledMs,
        cpuUsPerSequentialSetup: sequentialCpu[i] / o.sequential,
        opsPerSetup: per(counts[i]),
        envelopesPerSetup: envelopes[i] / setups,
      })) as [GatewayLoad, GatewayLoad],
      loadBusy: loadCpuUs / 1000 / wallMs,
      concurrent: latency(concurrentMs),
      sequential: latency(sequentialMs),
      gatewayWarnings: warnings,
      dataDirFs: fileSystemOf(tmp),
    };
    // Everything stopped before the primitives are timed: nothing else competes for the CPU then.
    for (const x of handsets) x.socket.destroy();
    handsets.length = 0;
    await Promise.all(gateways.map((g) => g.stop()));
    gateways.length = 0;
    log("sessions across gateways: MQTT round trips through the broker");
    const version = gwA.protocolVersion === 4 ? 4 : 5;
    // (a) and (b) through a second broker of the same kind with its default settings; (c) through the
    // run's broker, the one the gateways used.
    const defaultBroker = broker.info.binary ? await startMosquitto(broker.info.binary) : await startAedesDefault();
    const withoutBrokerNoDelay = await (async () => {
      try {
        return { nagle: await mqttRoundTrips(defaultBroker.url, version, 100, "defaults"), clientsOnly: await mqttRoundTrips(defaultBroker.url, version, 100, "noDelay") };
      } finally {
        await defaultBroker.close();
      }
    })();
    const mqttRoundTrip = {
      payloadBytes: ROUND_TRIP_PAYLOAD,
      defaultBroker: broker.info.binary ? "a second Mosquitto, same binary and configuration without `set_tcp_nodelay`" : "a second aedes on a plain `net.Server` (Node's default, no `noDelay`)",
      ...withoutBrokerNoDelay,
      clientsAndBroker: await mqttRoundTrips(broker.url, version, 100, "keyproxy"),
    };
    await broker.close();
    broker = undefined;

    log("sessions across gateways: timing the public-key operations one setup was counted to need");
    const ops = timeOps(counts[0], counts[1], setups, o.timing);
    const sum = (rows: CryptoOp[]) => rows.reduce((t, r) => t + r.perSetup.total * r.timing.medianUs, 0);
    const asCalled = sum(ops);
    const curveOnly = sum(ops.filter((r) => r.curve));
    const auditInsert = await timeAuditInserts(tmp, 200);
    return {
      ...results,
      mqttRoundTrip,
      ops,
      cryptoUsPerSetup: { asCalled, curveOnly },
      boundSetupsPerSecond: { asCalled: 1e6 / asCalled, curveOnly: 1e6 / curveOnly },
      openssl: process.versions.openssl,
      auditInsert,
    };
  } finally {
    for (const x of handsets) x.socket.destroy();
    await Promise.all(gateways.map((g) => g.stop()));
    await broker?.close();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

if (process.argv[1] === THIS_FILE) {
  const log = (s: string) => process.stderr.write(s + "\n");
  runCrossGatewayBench(log).then(
    (r) => process.stdout.write(JSON.stringify(r, null, 2) + "\n"),
    (e: unknown) => {
      process.stderr.write(`cross-gateway bench failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
      process.exitCode = 1;
    },
  );
}
