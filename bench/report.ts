// Turns one run's measurements into docs/BENCHMARKS.md (also printed). Every number in the page comes
// from the same run; the prose around them is fixed and says what they do and do not mean.

import { SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305 } from "../firmware/crypto/types.ts";
import type { DeviceResults, NativeCalls, SuiteTimings } from "./device-run.ts";
import { MESSAGE_BYTES } from "./device-run.ts";
import type { NodeResults, NodeSuiteTimings } from "./node-run.ts";
import type { TargetResult } from "./targets.ts";
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
  const calls = op.calls(s);
  const bridged = calls.sha256 * d.sha256Of64.medianUs + calls.aes * d.aesEcbBlock.medianUs;
  const storage = op === OPERATIONS[0] ? d.persistCounter.medianUs : 0;
  const jsUs = Math.max(0, op.median(s) - bridged - storage);
  const slowdown = (x25519RealMs * 1000) / d.x25519.naclFast.medianUs;
  const realOpUs = jsUs * slowdown + calls.sha256 * ESPRUINO.sha256Of64Us + calls.aes * ESPRUINO.aesEcb48Us;
  return (x25519RealMs * 1000) / realOpUs;
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

function targetsTable(targets: TargetResult[]): string {
  return table(
    ["target (bench/targets.ts)", "floor", "measured", "status"],
    targets.map((t) => [t.what, times(t.floor), times(t.measured), t.met ? "met" : "MISSED"]),
  );
}

export function renderReport(info: RunInfo, d: DeviceResults, n: NodeResults, targets: TargetResult[]): string {
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

## The device never does public-key crypto: what it does instead, next to one X25519

keyproxy's gateway does the key exchange; the handset only joins (HMACs and HKDFs on the native
SHA-256), registers (one sealed request, one opened answer) and protects its messages (one AEAD on the
native AES). A join here is both of its halves (the sum of their medians, detailed below). One X25519
scalar multiplication, the smallest piece of public-key work a device doing its own key exchange would
need (it needs at least two, plus signatures), is measured in the **same emulated device in the same
run**, so the ratio compares like with like.

On the AES-CCM link every board has, the device time of one X25519 (tweetnacl's nacl-fast.js) buys
**${ratio(OPERATIONS[0])} complete joins, ${ratio(OPERATIONS[1])} registrations or ${ratio(OPERATIONS[2])} protected ${MESSAGE_BYTES}-byte messages**;
on a real Espruino the gap is wider still (see "QuickJS is not Espruino" below).

${headlineTable(d)}

Targets (ratios from this run; \`npm run bench\` exits non-zero when one is missed):

${targetsTable(targets)}

## Device side, in the emulator

Each operation is the handset's own work (\`firmware/handset.ts\`), step for step, in \`bench/device-ops.ts\`,
bundled with the firmware's modules by \`flash/build.ts\` (so it passes the same Espruino-subset lint and
gate) and run in one \`EmulatedDevice\`. What the gateway sends (the JoinAccept, a RegisterOk carrying
a certificate issued by \`gateway/cwt.ts\`) is computed in Node with \`gateway/crypto.ts\` and
\`gateway/cbor.ts\`; before anything is timed, the gateway checks the device's JoinRequest tag, opens its
RegisterRequest and its protected message, and the device's tweetnacl results are compared with
Node's. "native calls" is how many SHA-256 and AES calls one operation makes (counted in an untimed
run).

${deviceTable(d)}

## Gateway machine, for context

The same operations (\`bench/device-ops.ts\`) on the gateway's SymCrypto (\`gateway/crypto.ts\`: node:crypto,
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

## Sessions (issue: sessions inside one gateway)

Not measured yet. Device-to-device sessions inside one gateway (design.md §3, flow 4) are not
implemented; when they are, this section will give the device-side cost of installing a security
association and of protecting a frame on it, next to the same X25519.
`;
}

function slowdownText(d: DeviceResults): string {
  const lo = (ESPRUINO.x25519Ms[0] * 1000) / d.x25519.naclFast.medianUs;
  const hi = (ESPRUINO.x25519Ms[1] * 1000) / d.x25519.naclFast.medianUs;
  return `${Math.round(lo)}-${Math.round(hi)} times`;
}
