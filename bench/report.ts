// Turns one run's measurements into docs/BENCHMARKS.md (also printed). Every number in the page comes
// from the same run; the prose around them is fixed and says what they do and do not mean.

import { SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305 } from "../firmware/crypto/types.ts";
import type { DeviceResults, NativeCalls, SuiteTimings } from "./device-run.ts";
import { MESSAGE_BYTES } from "./device-run.ts";
import { renderRealDevice, type RealDeviceResults } from "./real-device.ts";
import type { NodeResults, NodeSuiteTimings } from "./node-run.ts";
import type { CrossGatewayResults, CryptoOp } from "./crossgw.ts";
import type { EmulatedSessionResults } from "./sessions-emulated.ts";
import type { DeviceSessionResults, GatewaySessionResults, Latency, SessionResults } from "./sessions.ts";
import { AUDIT_BATCH_MS } from "../gateway/registry/store.ts";
import { gatewaySetupTarget, type TargetResult } from "./targets.ts";
import type { Timing } from "./timing.ts";

export interface RunInfo {
  command: string;
  date: string;
  cpus: number;
  cpuModel: string;
  /** The 1-minute load average when the run started and when it ended: other work on the machine. */
  load: [number, number];
  node: string;
  platform: string;
  quickjs: string;
  tweetnacl: string;
  repetitions: number;
  wallSeconds: number;
}

/** design.md §1, measured on a real Espruino 2v29 interpreter (x86 build). */
export const ESPRUINO = {
  x25519Ms: [1015, 2990] as const,
  secretbox64Ms: [3, 17] as const,
  sha256Of64Us: 70,
  aesEcb48Us: 6,
};

const SUITE_NAMES: Record<number, string> = {
  [SUITE_AES_CCM_16_64_128]: "AES-CCM-16-64-128",
  [SUITE_XSALSA20_POLY1305]: "XSalsa20-Poly1305",
};
/** How the device runs each suite. */
const DEVICE_SUITE_NOTES: Record<number, string> = {
  [SUITE_AES_CCM_16_64_128]: " (native AES)",
  [SUITE_XSALSA20_POLY1305]: " (secretbox in JS)",
};

function suiteName(s: number, onDevice = true): string {
  return (SUITE_NAMES[s] ?? `suite ${s}`) + (onDevice ? (DEVICE_SUITE_NOTES[s] ?? "") : "");
}

// ---- formatting ----------------------------------------------------------------------------------

function us(x: number): string {
  if (x < 10) return x.toFixed(1);
  return Math.round(x).toLocaleString("en-US");
}

function range(t: Timing): string {
  return `${us(t.minUs)}-${us(t.maxUs)}`;
}

function times(x: number): string {
  return `${x < 10 ? x.toFixed(1) : Math.round(x).toLocaleString("en-US")}×`;
}

function natives(n: NativeCalls): string {
  return `${n.sha256} / ${n.aes}`;
}

/** A Markdown table with padded columns, readable as plain text too. Column 0 is left-aligned, the
 *  others right-aligned. */
function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(" | ")} |`;
  const rule = `|${widths.map((w, i) => (i === 0 ? `:${"-".repeat(w + 1)}` : `${"-".repeat(w + 1)}:`)).join("|")}|`;
  return [line(header), rule, ...rows.map(line)].join("\n");
}

// ---- derived numbers -----------------------------------------------------------------------------

interface Operation {
  name: string;
  median: (s: SuiteTimings) => number;
  calls: (s: SuiteTimings) => NativeCalls;
}

const sumCalls = (a: NativeCalls, b: NativeCalls): NativeCalls => ({ sha256: a.sha256 + b.sha256, aes: a.aes + b.aes });

/** The three operations the ratios are about. A join is both of its halves. */
const OPERATIONS: Operation[] = [
  { name: "join (request + accept)", median: (s) => s.joinRequest.medianUs + s.joinAccept.medianUs, calls: (s) => sumCalls(s.natives.joinRequest, s.natives.joinAccept) },
  { name: "register", median: (s) => s.register.medianUs, calls: (s) => s.natives.register },
  { name: `protect a ${MESSAGE_BYTES}-byte message`, median: (s) => s.protect.medianUs, calls: (s) => s.natives.protect },
];

/** An estimate of X25519 ÷ operation on the real interpreter, from this run and design.md §1:
 *  Espruino is taken to run every piece of JavaScript slower than QuickJS here by the one factor
 *  X25519 shows (x25519RealMs ÷ measured), and each native call to cost what design.md measured.
 *  The emulator's own cost of the natives (a host round trip each) is taken out first, and so is the
 *  Storage write of the join counter, whose cost in real flash nobody here has measured. */
function espruinoRatio(d: DeviceResults, op: Operation, s: SuiteTimings, x25519RealMs: number): number {
  const storage = op === OPERATIONS[0] ? d.persistCounter.medianUs : 0;
  return estimateRatio({ opUs: op.median(s) - storage, calls: op.calls(s), x25519Us: d.x25519.naclFast.medianUs, sha256Us: d.sha256Of64.medianUs, aesUs: d.aesEcbBlock.medianUs }, x25519RealMs);
}

/** One operation measured in the emulator, with what it takes to estimate it on Espruino. */
interface Measured {
  opUs: number;
  calls: NativeCalls;
  /** X25519 (nacl-fast) and one bridged native call each, in the same device. */
  x25519Us: number;
  sha256Us: number;
  aesUs: number;
}

/** The estimate of espruinoRatio, for any measured operation. */
function estimateRatio(m: Measured, x25519RealMs: number): number {
  const bridged = m.calls.sha256 * m.sha256Us + m.calls.aes * m.aesUs;
  const jsUs = Math.max(0, m.opUs - bridged);
  const slowdown = (x25519RealMs * 1000) / m.x25519Us;
  const realOpUs = jsUs * slowdown + m.calls.sha256 * ESPRUINO.sha256Of64Us + m.calls.aes * ESPRUINO.aesEcb48Us;
  return (x25519RealMs * 1000) / realOpUs;
}

/** "a×" or "a×-b×" for the estimate at both ends of design.md's X25519 range. */
function estimateRange(m: Measured): string {
  const a = estimateRatio(m, ESPRUINO.x25519Ms[0]);
  const b = estimateRatio(m, ESPRUINO.x25519Ms[1]);
  const lo = Math.min(a, b);
  const hi = Math.max(a, b);
  return Math.round(lo) === Math.round(hi) ? times(lo) : `${times(lo)}-${times(hi)}`;
}

// ---- the page ------------------------------------------------------------------------------------

function headlineTable(d: DeviceResults): string {
  const rows: string[][] = [];
  for (const s of d.suites) {
    for (const op of OPERATIONS) {
      const m = op.median(s);
      rows.push([
        `${op.name}, ${suiteName(s.suite)}`,
        us(m),
        times(d.x25519.naclFast.medianUs / m),
        times(d.x25519.nacl.medianUs / m),
      ]);
    }
  }
  return table(["device operation (emulator)", "median µs", "X25519 (nacl-fast) ÷ op", "X25519 (nacl.js) ÷ op"], rows);
}

function deviceTable(d: DeviceResults): string {
  const rows: string[][] = [];
  for (const s of d.suites) {
    const name = suiteName(s.suite);
    rows.push([`join: request (persist counter, nonce, tag, frame); ${name}`, us(s.joinRequest.medianUs), range(s.joinRequest), natives(s.natives.joinRequest)]);
    rows.push([`  of which: persist the counter in Storage`, us(d.persistCounter.medianUs), range(d.persistCounter), "0 / 0"]);
    rows.push([`join: accept (decode, check tag, derive keys); ${name}`, us(s.joinAccept.medianUs), range(s.joinAccept), natives(s.natives.joinAccept)]);
    rows.push([`register (seal request, open RegisterOk with ${s.certificateBytes}-byte cert); ${name}`, us(s.register.medianUs), range(s.register), natives(s.natives.register)]);
    rows.push([`protect a ${MESSAGE_BYTES}-byte message (seal, Link frame, transport frame); ${name}`, us(s.protect.medianUs), range(s.protect), natives(s.natives.protect)]);
  }
  rows.push(["X25519, tweetnacl nacl-fast.js `scalarMult`", us(d.x25519.naclFast.medianUs), range(d.x25519.naclFast), "-"]);
  rows.push(["X25519, tweetnacl nacl.js `scalarMult`", us(d.x25519.nacl.medianUs), range(d.x25519.nacl), "-"]);
  return table(["operation", "median µs", "range µs", "native calls (SHA-256 / AES)"], rows);
}

function estimateTable(d: DeviceResults): string {
  const rows: string[][] = [];
  for (const s of d.suites) {
    for (const op of OPERATIONS) {
      const a = espruinoRatio(d, op, s, ESPRUINO.x25519Ms[0]);
      const b = espruinoRatio(d, op, s, ESPRUINO.x25519Ms[1]);
      const lo = Math.min(a, b);
      const hi = Math.max(a, b);
      rows.push([
        `${op.name}, ${suiteName(s.suite)}`,
        times(d.x25519.naclFast.medianUs / op.median(s)),
        Math.round(lo) === Math.round(hi) ? times(lo) : `${times(lo)}-${times(hi)}`,
      ]);
    }
  }
  return table(["X25519 (nacl-fast) ÷ operation", "emulator (measured)", "Espruino (estimate)"], rows);
}

function calibrationTable(d: DeviceResults): string {
  const slow = (realMs: number, t: Timing) => times((realMs * 1000) / t.medianUs);
  return table(["in the emulator", "median µs", "on Espruino (design.md §1)", "Espruino ÷ emulator"], [
    ["X25519, nacl-fast.js", us(d.x25519.naclFast.medianUs), `${ESPRUINO.x25519Ms[0].toLocaleString("en-US")}-${ESPRUINO.x25519Ms[1].toLocaleString("en-US")} ms (fastest variant)`, `${slow(ESPRUINO.x25519Ms[0], d.x25519.naclFast)}-${slow(ESPRUINO.x25519Ms[1], d.x25519.naclFast)}`],
    [`secretbox ${MESSAGE_BYTES} B, nacl-fast.js`, us(d.secretbox64.naclFast.medianUs), `${ESPRUINO.secretbox64Ms[0]}-${ESPRUINO.secretbox64Ms[1]} ms`, `${slow(ESPRUINO.secretbox64Ms[0], d.secretbox64.naclFast)}-${slow(ESPRUINO.secretbox64Ms[1], d.secretbox64.naclFast)}`],
    [`secretbox ${MESSAGE_BYTES} B, nacl.js`, us(d.secretbox64.nacl.medianUs), `${ESPRUINO.secretbox64Ms[0]}-${ESPRUINO.secretbox64Ms[1]} ms`, `${slow(ESPRUINO.secretbox64Ms[0], d.secretbox64.nacl)}-${slow(ESPRUINO.secretbox64Ms[1], d.secretbox64.nacl)}`],
    ["native SHA-256 of 64 B (one bridged call)", us(d.sha256Of64.medianUs), `${(ESPRUINO.sha256Of64Us / 1000).toFixed(2)} ms`, times(ESPRUINO.sha256Of64Us / d.sha256Of64.medianUs)],
    ["native AES-ECB, one block (one bridged call)", us(d.aesEcbBlock.medianUs), `${(ESPRUINO.aesEcb48Us / 1000).toFixed(3)} ms (48 B)`, times(ESPRUINO.aesEcb48Us / d.aesEcbBlock.medianUs)],
  ]);
}

function nodeTable(n: NodeResults): string {
  const rows: string[][] = [];
  const x = n.x25519.nodeCrypto.medianUs;
  const add = (name: string, m: number) => rows.push([name, us(m), times(x / m)]);
  for (const s of n.suites as NodeSuiteTimings[]) {
    const name = suiteName(s.suite, false);
    add(`join (request + accept), ${name}`, s.joinRequest.medianUs + s.joinAccept.medianUs);
    add(`register, ${name}`, s.register.medianUs);
    add(`protect a ${MESSAGE_BYTES}-byte message, ${name}`, s.protect.medianUs);
  }
  rows.push(["X25519, node:crypto `diffieHellman`", us(x), "1.0×"]);
  rows.push(["X25519, tweetnacl (nacl-fast) in Node", us(n.x25519.tweetnacl.medianUs), times(x / n.x25519.tweetnacl.medianUs)]);
  return table(["the same operation on the gateway machine (Node)", "median µs", "X25519 (node:crypto) ÷ op"], rows);
}

// ---- sessions --------------------------------------------------------------------------------------

function percent(x: number): string {
  return `${Math.round(x * 100)}%`;
}

function ms(x: number): string {
  return x < 10 ? x.toFixed(2) : x < 100 ? x.toFixed(1) : Math.round(x).toLocaleString("en-US");
}

function sessionMeasured(sd: DeviceSessionResults, t: Timing, calls: NativeCalls): Measured {
  return { opUs: t.medianUs, calls, x25519Us: sd.x25519.medianUs, sha256Us: sd.sha256Of64.medianUs, aesUs: sd.aesEcbBlock.medianUs };
}

function sessionDeviceTable(sd: DeviceSessionResults): string {
  const rows: string[][] = [];
  const x = sd.x25519.medianUs;
  for (const s of sd.suites) {
    const name = suiteName(s.suite);
    const add = (what: string, t: Timing, calls: NativeCalls) =>
      rows.push([`${what}; ${name}`, us(t.medianUs), range(t), natives(calls), times(x / t.medianUs), estimateRange(sessionMeasured(sd, t, calls))]);
    add("session setup as caller", s.caller, s.natives.caller);
    add("session setup as callee", s.callee, s.natives.callee);
    add(`protect a ${MESSAGE_BYTES}-byte message on the SA`, s.protectOnSa, s.natives.protectOnSa);
  }
  rows.push(["X25519, nacl-fast.js `scalarMult`, same device", us(x), range(sd.x25519), "-", "1.0×", "1.0×"]);
  return table(["device operation (emulator)", "median µs", "range µs", "SHA-256 / AES calls", "X25519 ÷ op", "Espruino (estimate)"], rows);
}

function sessionGatewayTable(g: GatewaySessionResults, n: NodeResults): string {
  const rounds = g.gatewayCpuUsPerSetupRounds;
  const target = gatewaySetupTarget(g);
  return table(["on the gateway", "value"], [
    [`setups per second, ${g.pairs} pairs at once (wall clock over ${g.setups.toLocaleString("en-US")} setups)`, Math.round(g.setupsPerSecond).toLocaleString("en-US")],
    ["gateway CPU per setup (user + system, mean over the rounds)", `${us(g.gatewayCpuUsPerSetup)} µs`],
    ["  of which in the kernel (system time: sockets, SQLite's file I/O)", `${us(g.gatewaySystemUsPerSetup)} µs`],
    [`  per round (${rounds.length} rounds), lowest-highest`, `${us(Math.min(...rounds))}-${us(Math.max(...rounds))} µs`],
    ["  so one core, never waiting, could do (1 s ÷ CPU per setup)", `${Math.round(1e6 / g.gatewayCpuUsPerSetup).toLocaleString("en-US")} setups/s`],
    ["gateway process busy during the rounds (its CPU ÷ wall time)", percent(g.gatewayBusy)],
    ["handsets' process (the load) busy during the rounds", percent(g.loadBusy)],
    ["raw crypto of one setup on the gateway (median; below)", `${us(g.rawCrypto.medianUs)} µs`],
    ["**gateway CPU per setup ÷ its raw crypto**", `**${times(target.measured)}**`],
    [`target (issue 14): ${target.what}`, target.met ? "met" : `**not met** (${times(target.measured)})`],
    ["gateway CPU per setup, in X25519s (node:crypto, from \"Gateway machine\" above)", (g.gatewayCpuUsPerSetup / n.x25519.nodeCrypto.medianUs).toFixed(1)],
    [`a setup's audit record as written now: batched, ${g.auditBatched.perBatch} per commit (WAL, synchronous=NORMAL), mean of ${g.auditBatched.records}`, `${us(g.auditBatched.cpuUs)} µs CPU`],
    [`the same record committed alone, as before (WAL, synchronous=FULL, ${g.dataDirFs}), mean of ${g.auditInsert.inserts}`, `${us(g.auditInsert.wallUs)} µs wall, ${us(g.auditInsert.cpuUs)} µs CPU`],
    [`the sockets alone: CPU to read one message and write one (echo process, loopback, ${g.pairs} in flight)`, `${us(g.transportFloor.cpuUsPerMessage)} µs`],
  ]);
}

function latencyTable(g: GatewaySessionResults): string {
  const row = (what: string, l: Latency) => [what, l.setups.toLocaleString("en-US"), ms(l.p50Ms), ms(l.p99Ms), ms(l.maxMs)];
  return table(["setup latency, connect() to onConnect at both ends", "setups", "p50 ms", "p99 ms", "max ms"], [
    row("one pair at a time", g.sequential),
    row(`${g.pairs} pairs at once`, g.concurrent),
  ]);
}

/** What limited the setups per second in this run: the gateway's CPU, or neither (its audit records
 *  are group-committed, so no setup waits for a disk sync on the gateway's thread). */
function throughputText(g: GatewaySessionResults): string {
  if (g.gatewayBusy >= 0.8) {
    return `The gateway process was busy ${percent(g.gatewayBusy)} of the rounds' wall time, so the setups per second are close
to what one gateway process (one thread) does on this machine.`;
  }
  return `Neither the gateway process (busy ${percent(g.gatewayBusy)} of the rounds' wall time) nor the handsets' (${percent(g.loadBusy)}) was
saturated: the rest went to waiting, for the other work on this machine (load average above) and for
the round trips between the processes, so the setups per second are a floor, not the gateway's limit.`;
}

/** Why the gateway's CPU per setup is where it is next to its raw crypto, from this run's figures. */
function setupCostText(g: GatewaySessionResults): string {
  const target = gatewaySetupTarget(g);
  const transport = g.transportFloor.cpuUsPerMessage * (g.messages.opened + g.messages.sealed) / 2;
  const verdict = target.met
    ? `The target of issue 14 (at most ${target.ceiling}× the raw crypto) is met in this run.`
    : `The target of issue 14 (at most ${target.ceiling}× the raw crypto) is **not met**: ${times(target.measured)} in this run.`;
  return `${verdict}
Before issue 14's changes the same benchmark measured 1,035 µs of CPU per setup, 9.6× a raw crypto
of 108 µs (each session record then its own synchronous FULL commit on the gateway's thread,
one insert 13% of a setup's CPU, and every registry statement prepared anew on each call). A setup's
audit record is now queued and group-committed with the others of the same ${AUDIT_BATCH_MS} ms at synchronous=NORMAL
(${us(g.auditBatched.cpuUs)} µs of CPU each here, against ${us(g.auditInsert.cpuUs)} µs committed alone), and the registry's and the
policy's statements are prepared once.

What remains, next to the ${us(target.ceiling * g.rawCrypto.medianUs)} µs that ${target.ceiling}× the raw crypto allows here. The sockets alone cost
${us(g.transportFloor.cpuUsPerMessage)} µs of CPU per message read and answered on this machine (an echo process over loopback TCP,
last row of the table), and a setup reads ${g.messages.opened} frames and writes ${g.messages.sealed}: about ${us(transport)} µs before a byte is
parsed. The raw crypto is timed alone, in a tight loop; the same calls inside the gateway, between
socket reads and other work, cost more (in CPU profiles of the gateway during issue 14's runs,
\`KEYPROXY_BENCH_GATEWAY_PROFILE\`, node:crypto's share came to about 1.5-2× the raw figure per setup).
About half of the CPU per setup is the protocol's bookkeeping, spread thin: CBOR (each frame decoded by
the device's strict codec, then by cbor-x) and framing of nine frames, the registrations and the
policy read from SQLite on every ConnectRequest (six statements in one read transaction, read each
time because \`keyproxy policy\` and \`keyproxy device\` change them from another process), log records,
timers and garbage collection; none of them is large alone. ${target.ceiling}× on this machine would need both fewer system calls
per setup (several frames per write, or another transport than one TCP write per frame) and most of
that bookkeeping gone, not one cheaper part.`;
}

/** The two load generators against the same gateway process, side by side. */
function bothVariantsTable(g: GatewaySessionResults, e: EmulatedSessionResults): string {
  const rounds = (r: number[]) => `${us(Math.min(...r))}-${us(Math.max(...r))} µs`;
  const lat = (l: Latency) => `${ms(l.p50Ms)} / ${ms(l.p99Ms)} ms`;
  return table(["50 pairs connecting at once", "Node handsets", "emulated handsets"], [
    ["the 100 handsets", "firmware's `Handset` engine in Node", `firmware bundle (\`${e.board}\`, ${e.bundleBytes.toLocaleString("en-US")} B) in QuickJS`],
    ["run alone", "`node --import tsx bench/sessions.ts`", "`node --import tsx bench/sessions-emulated.ts`"],
    ["counted rounds (setups)", `${g.rounds} (${g.setups.toLocaleString("en-US")})`, `${e.rounds} (${e.setups.toLocaleString("en-US")})`],
    ["setups per second (wall clock)", Math.round(g.setupsPerSecond).toLocaleString("en-US"), Math.round(e.setupsPerSecond).toLocaleString("en-US")],
    ["gateway CPU per setup (user + system, mean)", `${us(g.gatewayCpuUsPerSetup)} µs`, `${us(e.gatewayCpuUsPerSetup)} µs`],
    ["  per round, lowest-highest", rounds(g.gatewayCpuUsPerSetupRounds), rounds(e.gatewayCpuUsPerSetupRounds)],
    ["gateway process busy (its CPU ÷ wall time)", percent(g.gatewayBusy), percent(e.gatewayBusy)],
    ["load generator's process busy", percent(g.loadBusy), percent(e.emulatorBusy)],
    ["latency, connect to both confirmed, p50 / p99", lat(g.concurrent), lat(e.bothConfirmed)],
    ["latency, connect to the caller's onConnect, p50 / p99", "-", lat(e.callerConnected)],
  ]);
}

/** The gateway's CPU per setup under the two load generators, with the idle background measured in
 *  the emulated run; the wording follows the numbers. */
function cpuComparisonText(g: GatewaySessionResults, e: EmulatedSessionResults): string {
  const ratio = e.gatewayCpuUsPerSetup / g.gatewayCpuUsPerSetup;
  const idlePerSetup = e.gatewayIdleCpuUsPerSecond / e.setupsPerSecond;
  const idle = `Idle, with all ${e.handsets} devices registered, the gateway
process used ${us(e.gatewayIdleCpuUsPerSecond)} µs of CPU per second (timers, sockets): about ${us(idlePerSetup)} µs per setup at the
emulated variant's pace${idlePerSetup < 0.1 * Math.abs(e.gatewayCpuUsPerSetup - g.gatewayCpuUsPerSetup) ? ", so that background explains almost none of the difference" : ""}.`;
  const spread = (r: number[]) => Math.max(...r) / Math.min(...r);
  if (Math.abs(ratio - 1) <= 0.25 || ratio < 1) {
    return `The gateway's CPU per setup is about the same under both (emulated ÷ Node ${ratio.toFixed(2)}, while one variant's
rounds alone range ${spread(g.gatewayCpuUsPerSetupRounds).toFixed(1)}× and ${spread(e.gatewayCpuUsPerSetupRounds).toFixed(1)}×): it is the gateway's own cost, whoever the
handsets are. ${idle}`;
  }
  return `The gateway's CPU per setup is ${ratio.toFixed(1)}× higher under the emulated handsets. ${idle} The
difference is most likely the setups arriving spread out rather than bunched, so each of the gateway's
wake-ups handles fewer frames (not measured separately here). The Node variant's figure is the
better estimate of the gateway's own cost per setup.`;
}

function emulatedSection(info: RunInfo, ss: SessionResults, e: EmulatedSessionResults): string {
  const g = ss.gateway;
  const ccm = ss.device.suites.find((x) => x.suite === SUITE_AES_CCM_16_64_128) ?? ss.device.suites[0];
  return `### The same gateway under 100 emulated handsets running the firmware bundle

\`bench/sessions-emulated.ts\` runs the same gateway process (forked as above, its own SQLite registry,
policy default allow), but the ${e.handsets} handsets are \`EmulatedDevice\`s (\`emulator/device.ts\`) running the real
firmware bundle for board \`${e.board}\` (${e.bundleBytes.toLocaleString("en-US")} bytes, built by \`flash/build.ts\` \`buildFirmware\` in the run),
provisioned into the gateway's registry and booted by \`emulator/sim.ts\` \`startSim\` as \`keyproxy sim\` does (${(e.bootMs / 1000).toFixed(1)} s to
boot all ${e.handsets}, ${(e.registerMs / 1000).toFixed(1)} s more until every one was registered). The application is typed into each device's
console (\`device.eval\`): callees \`KP.onRequest = function () { return true; }\`; at both ends \`KP.onConnect\`
pushes \`getTime()\` (in the emulator, the host's clock), the SPI and the peer onto a global array, read
back with \`eval\` after the round, and prints a marker the host counts, so nothing polls the devices
during a round. In each of ${e.rounds} rounds (after warm-up rounds) the host calls \`KP.connect\` on all ${e.pairs} callers
in one synchronous burst, noting the host time just before each; a setup's latency runs from there
until \`onConnect\` at both ends (the callee's is its confirmation); the round's wall time from the first
\`KP.connect\` to the last \`onConnect\`. Each pair is checked to be on one SPI with each other, then the
callers end the sessions with \`KP.close\` and both ends' \`onClose\` are awaited before the next round.
The gateway's CPU is sampled as above, across the setups only.

${bothVariantsTable(g, e)}

What each measures. The Node variant is the gateway's throughput with a light load generator: its
handsets skip the interpreter, so the gateway gets the larger share of the ${info.cpus} CPUs. The emulated variant
is the whole system as the firmware runs it: the ${e.handsets} QuickJS interpreters run in the benchmark's one
process, on the same ${info.cpus} CPUs as the gateway, and that process was busy ${percent(e.emulatorBusy)} of the rounds' wall time
(the gateway ${percent(e.gatewayBusy)})${e.emulatorBusy >= 0.9 ? ": the devices, not the gateway, set the pace" : ""}. The emulator's own cost
shares the machine with the gateway, so the emulated setups per second are a **lower bound** on the
gateway's throughput, and its latencies include the devices' own time (a setup is ${us(ccm.caller.medianUs)} µs of
interpreter work as caller and ${us(ccm.callee.medianUs)} µs as callee, table above, and the ${e.handsets} devices take their
turns on one thread).

${cpuComparisonText(g, e)}

The emulated variant's two latency rows differ by ${ms(e.bothConfirmed.p50Ms - e.callerConnected.p50Ms)} ms at p50: the caller's \`onConnect\` usually
comes after the callee's. Its figures show that the real bundle, with the
application typed into the console, completed every setup and every close of every round with no
warning from the gateway and no uncaught error in any device.
`;
}

/** "On the gateway": the gateway process under the Node handsets (bench/sessions.ts, part 1). cpus:
 *  the machine's; n: the node run, for X25519 on this machine. */
export function gatewaySessionsSubsection(cpus: number, g: GatewaySessionResults, n: NodeResults): string {
  const cryptoShare = g.rawCrypto.medianUs / g.gatewayCpuUsPerSetup;
  const auditShare = g.auditBatched.cpuUs / g.gatewayCpuUsPerSetup;
  return `### On the gateway: setups per second, CPU per setup, latency

The gateway runs in its own process (\`bench/sessions.ts\` forks it): the production \`Gateway\` (link
server, registrar, session broker, its SQLite registry on ${g.dataDirFs}), on loopback TCP. ${g.handsets}
handsets, provisioned in its registry and allowed to reach one another (policy default allow), join and
register first. They are the firmware's \`Handset\` engine run in Node, with the device crypto on Node's
model of Espruino's natives, as \`test/support/harness.ts\` runs it, so that the load generator stays light
(the device's time is in the table above; the next subsection runs ${g.handsets} emulated devices instead). Callees
accept in \`onRequest\`. A setup is timed from \`connect()\` on the caller until \`onConnect\` fired on both
devices, which the gateway triggers only after both confirmations verified. In each of ${g.rounds} rounds (after
warm-up rounds that are not counted) all ${g.pairs} pairs connect at once; all sessions are closed (bye)
before the next round. Then ${g.sequential.setups} setups follow one pair at a time. The gateway's CPU time is
\`process.cpuUsage()\` in the gateway process across each round's setups (not the teardowns); its log
records are built as usual but written nowhere. The machine has ${cpus} CPUs, shared by the gateway's
process and the handsets'.

${sessionGatewayTable(g, n)}

${latencyTable(g)}

The raw crypto is what a setup needs of \`gateway/crypto/symmetric.ts\` and nothing else: the seed (32 random bytes)
and the SPI (4), both confirmation tags derived (\`saConfirmTag\`, as the broker calls it) and compared in
constant time, ${g.messages.opened} link frames opened and ${g.messages.sealed} sealed (AES-128-CCM, plaintexts the size of the real
messages), timed in this process (median of ${g.rawCrypto.samplesUs.length} repetitions, ${range(g.rawCrypto)} µs).

What this says: crypto, timed alone, is about ${percent(cryptoShare)} of the gateway's CPU per setup; the setup's
audit record is ${percent(auditShare)} of it. ${setupCostText(g)}

${throughputText(g)}
Setups per second depend on what else the machine is doing; the CPU per setup much less.

One pair at a time, a setup's latency is its six one-way trips on loopback (ConnectRequest, Incoming,
Answer, SaInstall, SaConfirm, Connected); the audit record's commit comes later; with ${g.pairs} pairs at once the
requests queue on the gateway's one thread, so a typical setup waits for about half the round.

Not measured here: radio and real network time (loopback TCP only); the device's time under this
load (the handsets run in Node here; the emulated variant below); teardowns, rekeys and
relayed data on the gateway; writing the log (records are built, not written) and MQTT monitoring
(off); sessions across gateways (design.md flow 5: below). \`KEYPROXY_BENCH_GATEWAY_PROFILE=<dir>\` writes a CPU
profile of the gateway process for a closer look.
`;
}

function sessionsSection(info: RunInfo, ss: SessionResults, n: NodeResults, e: EmulatedSessionResults): string {
  const g = ss.gateway;
  const sd = ss.device;
  const ccm = sd.suites.find((x) => x.suite === SUITE_AES_CCM_16_64_128) ?? sd.suites[0];
  const per = (t: Timing) => Math.round(sd.x25519.medianUs / t.medianUs).toLocaleString("en-US");
  return `## Sessions inside one gateway (design.md flow 4)

A session setup: the caller names its peer (ConnectRequest); the gateway checks the caller's
registration and the policy, matches suites and asks the callee (Incoming, Answer); it draws one
32-byte seed and sends it to both (SaInstall); each device expands it into the SA's keys with HKDF
and proves it holds them (SaConfirm); when both confirmations verify, the gateway tells both
(Connected). Nobody does public-key crypto: the gateway's share is a random seed, two confirmation
tags and nine protected link frames, the device's three HKDFs and four or five frames.

### On the device, next to one X25519

The handset's own work for one setup, step for step as \`firmware/handset.ts\` does it, in
\`bench/device-ops.ts\` (\`sessionCaller\`, \`sessionCallee\`, \`protectOnSa\`), bundled as above and run in a
second emulated device of the same run (board \`${sd.board}\`, bench bundle ${sd.bundleBytes.toLocaleString("en-US")} bytes), with one tweetnacl
X25519 and the bridged natives timed in that same device, interleaved with them. The gateway's frames
are computed in Node (\`gateway/crypto/symmetric.ts\`, cbor-x); before anything is timed, the gateway side opens the
device's ConnectRequest and Answer, checks both SaConfirm tags, and opens the device's SA frame with
the peer's keys. Each setup runs on a fresh link, as the register operation does, so the gateway's
frames stay fresh. The steps: as caller, seal the ConnectRequest; open the SaInstall, derive the SA
keys and the confirmation tag, seal the SaConfirm; open the Connected. As callee, open the Incoming
and seal the Answer, then the same from the SaInstall on. Protecting a message on the SA is
\`Handset.send\`: seal, SaData frame, transport frame. The last column is X25519 ÷ op on Espruino,
estimated as in "QuickJS is not Espruino" above, with this device's own X25519 and native-call times.

On the AES-CCM link and SA every board has, one X25519 costs the device as much time as
**${per(ccm.caller)} session setups as caller or ${per(ccm.callee)} as callee** (a device running its own authenticated key
exchange would need at least two X25519s, and signatures, per session).

${sessionDeviceTable(sd)}

${gatewaySessionsSubsection(info.cpus, g, n)}
${emulatedSection(info, ss, e)}`;
}

// ---- sessions across gateways ----------------------------------------------------------------------

/** A per-setup count: whole numbers as such, anything else with two decimals. */
function count(x: number): string {
  return Math.abs(x - Math.round(x)) < 1e-9 ? String(Math.round(x)) : x.toFixed(2);
}

/** What a counted node:crypto call is, in words. */
function opName(op: CryptoOp): string {
  const [type, what, ...rest] = op.op.split(" ");
  const curve = type === "ed25519" ? "Ed25519" : type === "x25519" ? "X25519" : type;
  const format = rest.join(" ");
  const fmt: Record<string, string> = { der: what === "createPrivateKey" ? "from DER (PKCS#8)" : "from DER (SPKI)", jwk: "from JWK", "from-private": "derived from the private KeyObject" };
  const exported: Record<string, string> = { pkcs8: "DER (PKCS#8)", spki: "DER (SPKI)", jwk: "JWK" };
  switch (what) {
    case "sign":
      return `${curve} sign, ${Math.round(op.meanBytes).toLocaleString("en-US")}-byte message (mean)`;
    case "verify":
      return `${curve} verify, ${Math.round(op.meanBytes).toLocaleString("en-US")}-byte message (mean)`;
    case "dh":
      return `${curve} shared secret (\`diffieHellman\`)`;
    case "keygen":
      return `${curve} key pair (\`generateKeyPairSync\`)`;
    case "createPrivateKey":
      return `${curve} private key parsed ${fmt[format] ?? format}`;
    case "createPublicKey":
      return `${curve} public key ${format === "from-private" ? fmt[format] : `imported ${fmt[format] ?? format}`}`;
    case "export":
      return `${curve} ${rest[0]} key exported as ${exported[rest[1] ?? ""] ?? rest[1]}`;
    default:
      return op.op;
  }
}

/** "Ed25519 sign 10, verify 10; X25519 key pair 6, shared secret 10" from the curve operations. */
function curveCounts(x: CrossGatewayResults): string {
  const by = (type: string, what: string, word: string) => {
    const n = x.ops.filter((o) => o.op === `${type} ${what}`).reduce((t, o) => t + o.perSetup.total, 0);
    return n ? `${word} ${count(n)}` : "";
  };
  const ed = [by("ed25519", "sign", "sign"), by("ed25519", "verify", "verify")].filter(Boolean).join(", ");
  const xx = [by("x25519", "keygen", "key pair"), by("x25519", "dh", "shared secret")].filter(Boolean).join(", ");
  return [ed && `Ed25519 ${ed}`, xx && `X25519 ${xx}`].filter(Boolean).join("; ");
}

function crossOpsTable(x: CrossGatewayResults): string {
  const rows: string[][] = x.ops.map((o) => [
    `${o.curve ? "" : "  "}${opName(o)}`,
    count(o.perSetup.a),
    count(o.perSetup.b),
    count(o.perSetup.total),
    us(o.timing.medianUs),
    range(o.timing),
    us(o.perSetup.total * o.timing.medianUs),
  ]);
  const handling = x.cryptoUsPerSetup.asCalled - x.cryptoUsPerSetup.curveOnly;
  rows.push(["curve operations alone (KeyObjects at hand)", "", "", "", "", "", us(x.cryptoUsPerSetup.curveOnly)]);
  rows.push(["  key handling: raw keys in and out of KeyObjects", "", "", "", "", "", us(handling)]);
  rows.push(["**all of it, as the gateways call it: one setup's raw public-key crypto**", "", "", "", "", "", `**${us(x.cryptoUsPerSetup.asCalled)}**`]);
  return table(["node:crypto call (indented: key handling)", "at A", "at B", "per setup", "median µs", "range µs", "µs per setup"], rows);
}

function crossThroughputTable(x: CrossGatewayResults, inside: GatewaySessionResults): string {
  const [a, b] = x.gateways;
  const both = a.cpuUsPerSetup + b.cpuUsPerSetup;
  const rounds = (g: { cpuUsPerSetupRounds: number[] }) => `${us(Math.min(...g.cpuUsPerSetupRounds))}-${us(Math.max(...g.cpuUsPerSetupRounds))} µs`;
  const rows: string[][] = [
    [`setups per second, ${x.pairs} pairs at once (wall clock over ${x.setups.toLocaleString("en-US")} setups)`, Math.round(x.setupsPerSecond).toLocaleString("en-US")],
    ["crypto bound: 1 s ÷ one setup's raw public-key crypto, as the gateways call it (table below)", `${Math.round(x.boundSetupsPerSecond.asCalled).toLocaleString("en-US")} setups/s`],
    ["**setups per second ÷ crypto bound**", `**${(x.setupsPerSecond / x.boundSetupsPerSecond.asCalled).toFixed(2)}**`],
    ["  the same bound with the curve operations alone (KeyObjects kept), and the ratio to it", `${Math.round(x.boundSetupsPerSecond.curveOnly).toLocaleString("en-US")} setups/s, ${(x.setupsPerSecond / x.boundSetupsPerSecond.curveOnly).toFixed(2)}`],
    [`CPU per setup, ${a.id} (the callers' gateway; user + system, mean over the rounds)`, `${us(a.cpuUsPerSetup)} µs`],
    [`  per round (${a.cpuUsPerSetupRounds.length} rounds), lowest-highest`, rounds(a)],
    [`CPU per setup, ${b.id} (the callees' gateway)`, `${us(b.cpuUsPerSetup)} µs`],
    [`  per round, lowest-highest`, rounds(b)],
    ["**both gateways' CPU per setup ÷ one setup's raw public-key crypto**", `**${times(both / x.cryptoUsPerSetup.asCalled)}**`],
    ["  ÷ the curve operations alone", times(both / x.cryptoUsPerSetup.curveOnly)],
    [`CPU per setup one pair at a time (${x.sequential.setups} setups), ${a.id} / ${b.id}`, `${us(a.cpuUsPerSequentialSetup)} / ${us(b.cpuUsPerSequentialSetup)} µs`],
    ["gateway processes busy during the rounds (CPU ÷ wall time), A / B", `${percent(a.busy)} / ${percent(b.busy)}`],
    [`benchmark's process busy (the 100 handsets${x.broker.kind === "aedes" ? " and the aedes broker" : ""})`, percent(x.loadBusy)],
  ];
  if (x.broker.cpuUsPerSetup !== undefined) rows.push(["Mosquitto's CPU per setup (its process, from /proc)", `${us(x.broker.cpuUsPerSetup)} µs`]);
  rows.push(
    ["interlink envelopes received per setup, A / B (requests and answers, on the pairwise channel)", `${count(a.envelopesPerSetup)} / ${count(b.envelopesPerSetup)}`],
    [`one audit record in SQLite (WAL, synchronous=FULL, ${x.dataDirFs}), mean of ${x.auditInsert.inserts}`, `${us(x.auditInsert.wallUs)} µs wall, ${us(x.auditInsert.cpuUs)} µs CPU`],
    ["for comparison: gateway CPU per setup inside one gateway (above)", `${us(inside.gatewayCpuUsPerSetup)} µs`],
  );
  return table(["across gateways", "value"], rows);
}

/** Issue 14, scope 1: the three targets beside what this run measured. */
export interface Scope1Target {
  what: string;
  target: string;
  measured: number;
  met: boolean;
}

/** One gateway's share of a setup's raw public-key crypto: its own calls × their medians. */
function gatewayCryptoUs(x: CrossGatewayResults, side: "a" | "b", curveOnly: boolean): number {
  return x.ops.filter((o) => !curveOnly || o.curve).reduce((sum, o) => sum + o.perSetup[side] * o.timing.medianUs, 0);
}

export function scope1Targets(x: CrossGatewayResults, inside: GatewaySessionResults): Scope1Target[] {
  const [a, b] = x.gateways;
  const bound = x.setupsPerSecond / x.boundSetupsPerSecond.asCalled;
  const perGateway = (g: typeof a, side: "a" | "b") => g.cpuUsPerSetup / gatewayCryptoUs(x, side, false);
  const insideRatio = inside.gatewayCpuUsPerSetup / inside.rawCrypto.medianUs;
  return [
    { what: "setups per second across gateways ÷ the crypto bound", target: "≥ 0.8", measured: bound, met: bound >= 0.8 },
    { what: `${a.id}'s CPU per setup ÷ its share of the raw crypto`, target: "≤ 2×", measured: perGateway(a, "a"), met: perGateway(a, "a") <= 2 },
    { what: `${b.id}'s CPU per setup ÷ its share of the raw crypto`, target: "≤ 2×", measured: perGateway(b, "b"), met: perGateway(b, "b") <= 2 },
    { what: "inside one gateway: CPU per setup ÷ its raw crypto", target: "≤ 3×", measured: insideRatio, met: insideRatio <= 3 },
  ];
}

/** Where the scope-1 targets stand, next to the run before the pairwise channels (docs/BENCHMARKS.md
 *  of 2026-12-05, commit 33a8403: 116 setups/s, bound 552/s, 6,352 and 6,491 µs per setup). */
function scope1Text(x: CrossGatewayResults): string {
  const [a, b] = x.gateways;
  const shareA = gatewayCryptoUs(x, "a", false);
  return `The pairwise channel took the crypto a setup needs from 10 signatures, 10 verifications, 6 key pairs
and 10 shared secrets down to the exchange's own, so the bound rose from 552 to ${Math.round(x.boundSetupsPerSecond.asCalled).toLocaleString("en-US")} setups/s. The setups
themselves went from 116 to ${Math.round(x.setupsPerSecond)} per second, and each gateway's CPU per setup from about 6,400 µs to
${us(a.cpuUsPerSetup)} / ${us(b.cpuUsPerSetup)} µs. That is still ${times(a.cpuUsPerSetup / shareA)} its own ${us(shareA)} µs of public-key crypto: what is left is the protocol
around it (the device links' frames and sockets, the MQTT packets and their acknowledgments, CBOR, the
exchange's transcript and MACs, log records and monitoring; below). The targets need that cut by
about another ${Math.round(a.cpuUsPerSetup / shareA / 2)}×, and no single part of it is that large (CPU profiles of both gateways,
\`KEYPROXY_BENCH_GATEWAY_PROFILE\`; the MQTT sockets already send each batch of packets in one write): **not met**.`;
}

function scope1Table(x: CrossGatewayResults, inside: GatewaySessionResults): string {
  return table(
    ["issue 14, scope 1 (measured in this run)", "target", "measured", "status"],
    scope1Targets(x, inside).map((t) => [t.what, t.target, t.what.startsWith("setups") ? t.measured.toFixed(2) : times(t.measured), t.met ? "met" : "**not met**"]),
  );
}

function crossLatencyTable(x: CrossGatewayResults): string {
  const row = (what: string, l: Latency) => [what, l.setups.toLocaleString("en-US"), ms(l.p50Ms), ms(l.p99Ms), ms(l.maxMs)];
  const rt = x.mqttRoundTrip;
  const defaults = x.broker.kind === "mosquitto" ? "Mosquitto without `set_tcp_nodelay`" : "aedes without `noDelay`";
  const now = x.broker.kind === "mosquitto" ? "the run's Mosquitto, `set_tcp_nodelay true`" : "the run's aedes, gateway/monitor/embedded-broker.ts's `noDelay` server";
  return table(["latency", "count", "p50 ms", "p99 ms", "max ms"], [
    row("setup, connect() to onConnect at both ends: one pair at a time", x.sequential),
    row(`setup, ${x.pairs} pairs at once`, x.concurrent),
    row(`MQTT round trip, a ${rt.payloadBytes}-byte QoS 1 request and its QoS 1 answer: (a) no TCP_NODELAY, mqtt.js defaults and ${defaults} (the interlink before it set it)`, rt.nagle),
    row(`  (b) TCP_NODELAY on both clients only, ${defaults}`, rt.clientsOnly),
    row(`  **(c) TCP_NODELAY on both clients, with their writes gathered as keyproxy's own clients do (gateway/mqtt/socket.ts), and on the broker (${now}): as keyproxy runs now**`, rt.clientsAndBroker),
  ]);
}

/** Why a setup takes as long as it does, one pair at a time and all at once; the wording follows the
 *  measured round trips and CPU times. */
function crossLatencyText(x: CrossGatewayResults): string {
  const rt = x.mqttRoundTrip;
  const [a, b] = x.gateways;
  const p50 = x.sequential.p50Ms;
  // Five crossings in sequence: two and a half request/answer round trips.
  const crossings = 2.5 * rt.clientsAndBroker.p50Ms;
  const cpuMs = (a.cpuUsPerSequentialSetup + b.cpuUsPerSequentialSetup) / 1000;
  const brokerNow = x.broker.kind === "mosquitto" ? "Mosquitto runs here with `set_tcp_nodelay true`, as docs/FLEET.md recommends" : "the embedded broker's server sets `noDelay` (gateway/monitor/embedded-broker.ts)";
  const parts: string[] = [];
  parts.push(`One pair at a time, a setup crosses the broker five times in sequence, two and a half round trips:
message 1 of the exchange and its answer, message 3 and its answer, then the two gateways'
confirmations, sent in parallel (a gateway tells its device Connected when the other gateway's
confirmation arrives; the answers to the confirmations come after), each a QoS 1 publish. In all, a
setup sends ${x.gateways.map((g) => count(g.envelopesPerSetup)).join(" + ")} envelopes through the broker, five of them one after the other. The interlink sets
TCP_NODELAY on its socket at every (re)connect (gateway/mqtt/socket.ts, which also gathers what it
writes while it handles one batch of input into one system call) and ${brokerNow}, so a round trip costs what row (c) shows, ${ms(rt.clientsAndBroker.p50Ms)} ms at
p50: the five crossings take about ${ms(crossings)} ms, ${percent(crossings / p50)} of the ${ms(p50)} ms p50 setup.`);
  if (rt.nagle.p50Ms >= 5 * rt.clientsAndBroker.p50Ms && rt.nagle.p50Ms >= 10) {
    const half = rt.clientsOnly.p50Ms >= 0.3 * rt.nagle.p50Ms && rt.clientsOnly.p50Ms <= 0.7 * rt.nagle.p50Ms;
    parts.push(`Without TCP_NODELAY (row (a), mqtt.js's defaults and the broker's) a round trip takes ${ms(rt.nagle.p50Ms)} ms, mostly
waiting: with Nagle's algorithm on, a small packet written while an earlier one is still unacknowledged
(an answer written right after the PUBACK of the request it answers) waits for the other end's delayed
ACK, up to 40 ms on Linux. With it on the clients only (row (b)) a round trip still takes ${ms(rt.clientsOnly.p50Ms)} ms${half ? ": one such wait on the clients' side and one on the broker's per round trip, as the rows show" : ""}${rt.clientsOnly.p50Ms >= 5 * rt.clientsAndBroker.p50Ms ? ", so the broker needs it too" : ""}. The same five crossings would take about ${ms(2.5 * rt.nagle.p50Ms)} ms with Nagle's algorithm everywhere and
about ${ms(2.5 * rt.clientsOnly.p50Ms)} ms with TCP_NODELAY on the interlink's side only (a broker with default settings).`);
  }
  const mostlyCpu = cpuMs >= 0.5 * p50 && crossings <= 0.25 * p50;
  const inRounds = (a.cpuUsPerSetup + b.cpuUsPerSetup) / 1000;
  parts.push(`What remains is the work on the way. The two gateways' CPU per setup one pair at a time is
${us(a.cpuUsPerSequentialSetup)} µs at ${a.id} and ${us(b.cpuUsPerSequentialSetup)} µs at ${b.id}, ${ms(cpuMs)} ms together (${percent(cpuMs / p50)} of the p50 setup), measured
from just before \`connect()\` until their interlink is quiet, so with the answers to the confirmations,
the audit commits and the log records that come after \`onConnect\`, and with the work of each process's
background threads (V8's compiler and garbage collector: \`process.cpuUsage()\` counts every thread)${cpuMs > 1.1 * inRounds ? `; more than per setup with ${x.pairs} pairs at once (${ms(inRounds)} ms)` : ""}.${
    cpuMs + crossings <= p50
      ? ` Most of it is on the setup's path, as each gateway waits for the other's message before it goes on; the
remaining ${ms(p50 - cpuMs - crossings)} ms or so are the devices' link round trips on the way (${b.id} asks its device whether it
takes the call; after message 4, ${a.id}'s device installs its keys and confirms them; then each device is
told Connected), the handsets' work in the benchmark's process, and the hand-offs between the
processes' event loops.`
      : ` Together with the crossings that is more than the p50 setup: the two processes run on separate cores,
partly at once (each installs the keys in its own device and checks its confirmation; their background
threads), and part of that CPU time comes after \`onConnect\`. Also on the path: the devices' link round trips (${b.id} asks its device
whether it takes the call; after message 4, ${a.id}'s device installs its keys and confirms them; then each
device is told Connected) and the handsets' work in the benchmark's process.`
  }${mostlyCpu ? " **The broker crossings are now a small part of the setup latency one pair at a time; most of it is the gateways' own work.**" : ""}`);
  const roundMs = (x.pairs / x.setupsPerSecond) * 1000;
  parts.push(`With ${x.pairs} pairs at once, a round of ${x.pairs} setups lasted ${ms(roundMs)} ms on average (${x.pairs} ÷ the setups per
second) and the p50 setup ${ms(x.concurrent.p50Ms)} ms: the setups queue for the gateways' CPU, and the processes for this
machine's cores (below).`);
  return parts.join("\n\n");
}

/** What limited the setups per second in this run. */
function crossThroughputText(info: RunInfo, x: CrossGatewayResults): string {
  const [a, b] = x.gateways;
  const brokerBusy = x.broker.cpuUsPerSetup !== undefined ? (x.broker.cpuUsPerSetup * x.setupsPerSecond) / 1e6 : 0;
  const total = a.busy + b.busy + x.loadBusy + brokerBusy;
  const who = `the two gateways (${percent(a.busy)} and ${percent(b.busy)} busy), the handsets' process (${percent(x.loadBusy)})${brokerBusy ? ` and Mosquitto (${percent(brokerBusy)})` : ""}`;
  if (total >= 0.75 * info.cpus) {
    return `Throughput: ${who} together kept about ${total.toFixed(1)} of this machine's ${info.cpus} CPUs busy during the rounds, so the
setups per second are what this machine does with all of it on board, not one gateway's limit. The
crypto bound is one core's worth: a core doing nothing but one setup's public-key operations at both
gateways. Each gateway process runs its JavaScript on one thread, so two of them can use two cores.`;
  }
  return `Throughput: ${who} used about ${total.toFixed(1)} of this machine's ${info.cpus} CPUs during the rounds; the rest of
the wall time went to waiting (the round trips above, the audit commits on the gateways' threads, other
work on the machine), so the setups per second are a floor, not the gateways' limit. The crypto bound is
one core's worth: a core doing nothing but one setup's public-key operations at both gateways.`;
}

/** What the key-handling rows are, as far as this run shows it. */
function keyHandlingText(x: CrossGatewayResults): string {
  const has = (op: string) => x.ops.some((o) => o.op === op);
  const parts: string[] = [];
  if (!x.ops.some((o) => o.op.includes("createPrivateKey"))) {
    parts.push(` No private key was parsed during the rounds: \`gateway/crypto/ed25519.ts\` and \`gateway/fleet/fleet.ts\` keep the
KeyObjects of the secrets used again (\`SecretKeyCache\`) and of the key pairs they make, and take public keys as JWK.`);
  }
  if (has("x25519 createPublicKey der") || has("x25519 export public spki")) {
    parts.push(` The DER (SPKI) rows are X25519 public keys going in or out of KeyObjects as SPKI rather than JWK.`);
  } else if (has("x25519 createPublicKey jwk") || has("x25519 export public jwk")) {
    parts.push(` X25519 public keys go in and out of KeyObjects as JWK: the interlink's per-message keys
(\`gateway/fleet/fleet.ts\`) and the exchange's ephemerals (\`gateway/crossgw/exchange.ts\`, its own X25519 code: its private
ephemeral stays a KeyObject).`);
  }
  if (has("x25519 export private pkcs8")) {
    parts.push(` The PKCS#8 export is \`gateway/fleet/fleet.ts\`'s \`generateX25519\`, which hands the secret of each key pair
it makes (an encrypted interlink envelope's) out as bytes it can wipe, keeping the KeyObject for its use.`);
  }
  return parts.join("");
}

/** Re-wraps the prose paragraphs of a Markdown text at about `width` columns (the numbers and clauses
 *  put into them vary in length); tables, headings and lists stay as they are. */
function reflow(text: string, width = 105): string {
  return text
    .split("\n\n")
    .map((block) => {
      if (/^\s*[|#-]/.test(block) || block.trim() === "") return block;
      const lines: string[] = [];
      let line = "";
      for (const word of block.split(/\s+/).filter(Boolean)) {
        if (line && line.length + 1 + word.length > width) {
          lines.push(line);
          line = word;
        } else line = line ? `${line} ${word}` : word;
      }
      if (line) lines.push(line);
      return lines.join("\n");
    })
    .join("\n\n");
}

export function crossGatewaySection(info: RunInfo, x: CrossGatewayResults, inside: GatewaySessionResults): string {
  return reflow(crossGatewayText(info, x, inside)).trimEnd() + "\n";
}

function crossGatewayText(info: RunInfo, x: CrossGatewayResults, inside: GatewaySessionResults): string {
  const both = x.gateways[0].cpuUsPerSetup + x.gateways[1].cpuUsPerSetup;
  const ratio = x.setupsPerSecond / x.boundSetupsPerSecond.asCalled;
  const cryptoShare = x.cryptoUsPerSetup.asCalled / both;
  const auditShare = x.auditInsert.cpuUs / (both / 2);
  const b = x.broker;
  const brokerText =
    b.kind === "mosquitto"
      ? `${b.version}, in ${b.where}, started for this run: ${b.config ?? "our configuration"}; stopped at the end. TCP_NODELAY on
the broker's side: ${b.noDelay}${/true/.test(b.noDelay) ? " (Mosquitto's default is false), as docs/FLEET.md recommends for the interlink" : ""}`
      : `${b.version}, ${b.where}${b.note ? ` (${b.note})` : ""}; TCP_NODELAY on the broker's side: ${b.noDelay}`;
  return `## Sessions across gateways (design.md flow 5)

A device calls a device in another domain by name (\`callee-001@b.example\`). Its gateway runs the
SIGMA-I exchange of \`gateway/crossgw/exchange.ts\` with the callee's gateway over the interlink (MQTT envelopes
on the two gateways' pairwise channel, opened once in the warm-up: \`gateway/fleet/channel.ts\`, \`gateway/fleet/interlink.ts\`),
each in its own device's name, after the callee's gateway asked its device; both derive the same seed
and SPI, install it in their own device, check its confirmation, tell each other, and say Connected
(\`gateway/crossgw/cross-gateway.ts\`). The devices do exactly what they do inside one gateway; all the public-key
work is the gateways'.

**${Math.round(x.setupsPerSecond).toLocaleString("en-US")} setups per second across gateways with ${x.pairs} pairs at once: ${ratio.toFixed(2)} of the crypto bound**
(${Math.round(x.boundSetupsPerSecond.asCalled).toLocaleString("en-US")} setups/s: 1 s ÷ the raw cost of the X25519 and Ed25519 operations one setup needs at both
gateways, made as the gateways make them, timed in this run). The gateways' CPU per setup is
**${times(both / x.cryptoUsPerSetup.asCalled)} that raw crypto**. Counted per setup at both gateways: ${curveCounts(x)}.

${scope1Table(x, inside)}

${scope1Text(x)}

### How it is measured

\`bench/crossgw.ts\` creates a fleet (\`Fleet.create\`) and sets up two gateways, a.example and b.example,
as \`keyproxy fleet issue-gateway --data-dir\` does (keys, a certificate from the fleet CA, the trust
anchor and the current revocation list in each data directory); it provisions ${x.pairs} callers in
a.example's registry and ${x.pairs} callees in b.example's (policy default allow) and starts each gateway in its
own process (\`bench/crossgw-gateway.ts\`, forked): the production \`Gateway\` with \`GatewayOptions.fleet\`
(its own in-process verifier and the interlink) and MQTT monitoring on the same broker, its SQLite
registry on ${x.dataDirFs}. The broker: ${brokerText}. The interlink spoke ${b.protocol}. The handsets are
the firmware's \`Handset\` engine in Node, as in the sessions above, in the benchmark's process; the
callees accept. A setup is timed from \`connect("callee-NNN@b.example")\` on the caller until
\`onConnect\` fired at both devices. In each of ${x.rounds} rounds (after ${x.warmUpRounds} warm-up rounds, which also fetch each
gateway's certificate for the other and fill their certificate checkers' caches) all ${x.pairs} pairs connect at once,
and every session is closed before the next round; then ${x.sequential.setups} setups follow one pair at a time. Each
gateway's CPU is \`process.cpuUsage()\` in its process, from just before a round's first \`connect()\`
until its interlink is quiet after the last \`onConnect\` (the answers to the last confirmations are
part of the setup); the teardowns are not in it. One pair at a time, the same from just before each
\`connect()\`. Log records are built and published to MQTT (as with
\`--mqtt\`), not written. The machine has ${info.cpus} CPUs, shared by both gateways, the broker and the handsets.
Last, with the gateways stopped, two mqtt.js clients time ${x.mqttRoundTrip.nagle.setups} request/answer round trips per row (QoS 1 both
ways, as the interlink sends them, one at a time): (a) and (b) through ${x.mqttRoundTrip.defaultBroker},
started just for them, (c) through the run's broker.

The crypto is counted, not guessed. Each gateway process wraps node:crypto's \`sign\`, \`verify\`,
\`diffieHellman\`, \`generateKeyPairSync\`, \`createPrivateKey\`, \`createPublicKey\` and KeyObject \`export\`
before any gateway module is loaded (\`bench/crypto-count.ts\`; \`module.syncBuiltinESMExports()\` makes the
gateway's named imports see the wrappers) and counts the calls during the counted rounds; "per setup"
is calls ÷ setups. Each kind of call is then timed in the benchmark's process, after the gateways and
the broker stopped, as the gateways make it: same curve, same key format (DER or JWK), messages of the
mean length signed and verified, median of ${x.ops[0]?.timing.samplesUs.length ?? 0} repetitions interleaved across the kinds (OpenSSL ${x.openssl}).
The crypto bound is 1 s ÷ Σ (count × median). The rows marked as key handling are the price of keeping
keys as raw bytes: parsing them into KeyObjects and exporting them back; without them, the curve
operations alone (KeyObjects made once and kept) give the second bound.${keyHandlingText(x)} Every interlink envelope, a
request or its answer, travels on the pairwise channel the two gateways opened in the warm-up (one
AES-256-GCM seal, no public-key operation: docs/FLEET.md, "Pairwise channels"); the exchange itself makes one
ephemeral key pair and one shared secret at each gateway and signs and verifies once in each device's
name, and that is all the public-key work a setup needs. Before the channel (issue 14), every envelope
was signed and verified and every secret one encrypted to a fresh ephemeral: 10 signatures, 10
verifications, 6 key pairs and 10 shared secrets per setup, 116 setups/s at 0.21 of its own bound.

${crossThroughputTable(x, inside)}

${crossOpsTable(x)}

${crossLatencyTable(x)}

### Where the time goes beyond the crypto

CPU. The public-key crypto, as called, is ${percent(cryptoShare)} of the two gateways' CPU per setup. The rest is the
protocol around it, at each gateway: the interlink envelopes (CBOR encoding and deterministic decoding,
the channel's COSE_Encrypt0 and AES-256-GCM, the exchange's transcript
hashes and MACs), the MQTT client (QoS 1 packets and their acknowledgments) and the monitoring record
published for every log line; the verifier checks (each device certificate goes through the certificate
checker, which hashes it even when the good answer is cached); the SQLite audit record each gateway
queues when the session is up (group-committed with the others of the last 100 ms; one insert committed
alone would be ${percent(auditShare)} of a gateway's CPU per setup here); the device's side of the setup as inside one gateway (registry
lookups, link frames, the confirmation tag); timers and log records. \`KEYPROXY_BENCH_GATEWAY_PROFILE=<dir>\`
writes both gateway processes' CPU profiles for a closer look.

${crossLatencyText(x)}

${crossThroughputText(info, x)}

Not measured here: a network between the gateways and the broker (everything is on loopback, plain MQTT
without TLS); the devices' own time (as inside one gateway, above); teardowns (a bye crosses the
interlink too), rekeys and relayed SA data; the first contact between two gateways and fresh verifier
answers (the warm-up rounds take them; a cached "good" answer lasts at most 5 minutes, so a gateway
pays for a signed verifier answer and its verification again every 5 minutes per certificate); the
periodic re-check of live sessions (every 30 s, against cached answers); a remote verifier; writing the
log. Run alone: \`node --import tsx bench/crossgw.ts\` (JSON); \`KEYPROXY_BENCH_BROKER=aedes\` or \`=mosquitto\`
chooses the broker.
`;
}

function targetsTable(targets: TargetResult[]): string {
  return table(
    ["target (bench/targets.ts)", "floor", "measured", "status"],
    targets.map((t) => [t.what, times(t.floor), times(t.measured), t.met ? "met" : "MISSED"]),
  );
}

export function renderReport(
  info: RunInfo,
  d: DeviceResults,
  n: NodeResults,
  sessions: SessionResults,
  emulated: EmulatedSessionResults,
  crossgw: CrossGatewayResults,
  curves: string,
  targets: TargetResult[],
  real: RealDeviceResults | { skipped: string },
): string {
  const ccm = d.suites.find((s) => s.suite === SUITE_AES_CCM_16_64_128) ?? d.suites[0];
  const ratio = (op: Operation) => Math.round(d.x25519.naclFast.medianUs / op.median(ccm)).toLocaleString("en-US");
  return `# Benchmarks

Generated by \`${info.command}\` (bench/run.ts); every number on this page comes from one run. Timing is
noisy: each figure is the median of ${info.repetitions} repetitions of a loop sized to about 150 ms, with the range
over the repetitions beside it. Performance targets live here, never in tests.

- date: ${info.date}
- machine: ${info.cpus} CPUs (nproc), ${info.cpuModel}, ${info.platform}; load average
  ${info.load[0].toFixed(2)} at the start, ${info.load[1].toFixed(2)} at the end (other work on the machine shows up as noise)
- Node ${info.node}, quickjs-emscripten ${info.quickjs}, tweetnacl ${info.tweetnacl}
- device: \`emulator/device.ts\`, board \`${d.board}\` (Espruino Linux-build natives: SHA-256 and AES ECB/CBC, as on a Puck.js),
  bench bundle ${d.bundleBytes.toLocaleString("en-US")} bytes minified, Storage on ${d.storageOnTmpfs ? "tmpfs (/dev/shm)" : "the host's temp directory (disk)"}
- wall time of the whole run: ${info.wallSeconds.toFixed(0)} s

${"ops" in real ? renderRealDevice(real, info.command) : `## On the real Espruino interpreter\n\nNOT RUN: ${real.skipped}\n`}
## The device never does public-key crypto: what it does instead, next to one X25519

keyproxy's gateway does the key exchange; the handset only joins (HMACs and HKDFs on the native
SHA-256), registers (one sealed request, one opened answer) and protects its messages (one AEAD on the
native AES). A join here is both of its halves (the sum of their medians, detailed below). One X25519
scalar multiplication, the smallest piece of public-key work a device doing its own key exchange would
need (it needs at least two, plus signatures), is measured in the **same emulated device in the same
run**, so the ratio compares like with like.

On the AES-CCM link every board has, the device time of one X25519 (tweetnacl's nacl-fast.js) buys
**${ratio(OPERATIONS[0])} complete joins, ${ratio(OPERATIONS[1])} registrations or ${ratio(OPERATIONS[2])} protected ${MESSAGE_BYTES}-byte messages**
(and, measured in a second device of the same run, ${sessionRatio(sessions)} session setups with another device: see "Sessions" below);
on a real Espruino the gap is wider still (see "QuickJS is not Espruino" below).

${headlineTable(d)}

Targets (ratios from this run; \`npm run bench\` exits non-zero when one is missed):

${targetsTable(targets)}

## Device side, in the emulator

Each operation is the handset's own work (\`firmware/handset.ts\`), step for step, in \`bench/device-ops.ts\`,
bundled with the firmware's modules by \`flash/build.ts\` (so it passes the same Espruino-subset lint and
gate) and run in one \`EmulatedDevice\`. What the gateway sends (the JoinAccept, a RegisterOk carrying
a certificate issued by \`gateway/encoding/cwt.ts\`) is computed in Node with \`gateway/crypto/symmetric.ts\` and
\`gateway/encoding/cbor.ts\`; before anything is timed, the gateway checks the device's JoinRequest tag, opens its
RegisterRequest and its protected message, and the device's tweetnacl results are compared with
Node's. "native calls" is how many SHA-256 and AES calls one operation makes (counted in an untimed
run).

${deviceTable(d)}

## Gateway machine, for context

The same operations (\`bench/device-ops.ts\`) on the gateway's SymCrypto (\`gateway/crypto/symmetric.ts\`: node:crypto,
tweetnacl for secretbox) and codec (cbor-x), with the join counter in memory, and one X25519 with node:crypto and with tweetnacl. On the
gateway a join costs about as much as ${((n.suites[0].joinRequest.medianUs + n.suites[0].joinAccept.medianUs) / n.x25519.nodeCrypto.medianUs).toFixed(1)} X25519s: there public-key crypto is cheap, which is why it belongs there.

${nodeTable(n)}

## QuickJS is not Espruino

The emulator runs the firmware in QuickJS, a bytecode interpreter far faster than Espruino's, which
interprets the source text as it goes. The absolute times above are therefore not device times; the
ratio, measured in one interpreter in one run, is the portable result. The table compares this run
with what design.md §1 measured on a real Espruino 2v29 interpreter (x86 build; a 64 MHz Cortex-M4
is slower still):

${calibrationTable(d)}

By X25519, JavaScript runs ${slowdownText(d)} slower on Espruino than here (design.md does not say which
tweetnacl variant its secretbox figure used; the range it gives overlaps this one). A native call,
though, is only a few times slower or even faster there: in the emulator each one is a round trip out
of the WebAssembly VM into Node. So the emulator overweights the natives, which are a large part of
what keyproxy's operations do and none of what X25519 does: **where natives are involved, the measured
ratio understates the real one.** An estimate, not a measurement: take the emulator's cost of the
natives (count × the bridged cost above) and of the counter's Storage write out of each operation,
scale the rest by the factor X25519 shows (either end of design.md's range), add design.md's native
times back (0.07 ms per SHA-256, 0.006 ms per AES call). The join's Storage write is left out of the
estimate: its cost in real flash is not known here.

${estimateTable(d)}

## What is measured and what is not

Measured: the device's CPU work for each operation, in the firmware's own code, inside the emulator,
including its native SHA-256 and AES calls, the Uint8Array and CBOR work around them, the transport
frame and its CRC, and (in the join request) writing and reading back the join counter in Storage.

Not measured:

- real device time: QuickJS is not Espruino (above); design.md §1 has the real-interpreter numbers;
- Storage as flash: the emulator writes a host file (temp file, fsync, rename${d.storageOnTmpfs ? ", on tmpfs here" : ""}); a real flash
  write, and the occasional page erase or compaction, costs differently. It is shown as its own row;
- radio and transport time, round trips, retries and timers: only computation is timed;
- the gateway's share of each operation (its own tags, key derivation, certificate signing);
- memory: see docs/EMULATOR.md for the variable estimate (tweetnacl alone takes 1,461-2,082 of a
  Puck.js's 2,630 variables);
- a full key exchange: one X25519 is the floor of what a device would pay, not the total (an
  authenticated exchange adds a second scalar multiplication and signatures).

${sessionsSection(info, sessions, n, emulated)}
${crossGatewaySection(info, crossgw, sessions.gateway)}
${curves.trimEnd()}
`;
}

/** X25519 ÷ one session setup as caller, AES-CCM, in the sessions' device. */
function sessionRatio(ss: SessionResults): string {
  const s = ss.device.suites.find((x) => x.suite === SUITE_AES_CCM_16_64_128) ?? ss.device.suites[0];
  return Math.round(ss.device.x25519.medianUs / s.caller.medianUs).toLocaleString("en-US");
}

function slowdownText(d: DeviceResults): string {
  const lo = (ESPRUINO.x25519Ms[0] * 1000) / d.x25519.naclFast.medianUs;
  const hi = (ESPRUINO.x25519Ms[1] * 1000) / d.x25519.naclFast.medianUs;
  return `${Math.round(lo)}-${Math.round(hi)} times`;
}
