// The device's cost on the real Espruino interpreter in instructions, not seconds: each operation of
// bench/real-device.ts (the same bench bundle, the same gateway answers) counted by valgrind's
// callgrind in the 64-bit Puck.js-sized interpreter, next to one tweetnacl X25519 counted the same
// way. Instruction counts are the same from run to run whatever else the machine is doing, so the
// ratios here are repeatable where the timed ones (bench/real-device.ts) move with the load;
// on this interpreter they agree with the timed ratios of a quiet machine within a few percent.
//
//   node --import tsx bench/real-instructions.ts [--runs N]
//
// Each operation runs N times (default 12) in one interpreter process started from a fresh Storage
// holding the bench bundle; the same process without the loop is subtracted. Needs valgrind
// (Debian: apt-get install valgrind). Not part of `npm test`; a few minutes.

import { execFileSync, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { buildFirmware } from "../flash/build.ts";
import * as gatewayCbor from "../gateway/encoding/cbor.ts";
import { nodeCrypto } from "../gateway/crypto/symmetric.ts";
import { locateInterpreter } from "../interpreter/locate.ts";
import { bytesLiteral, DEVICE_ID } from "./device-run.ts";
import { answerJoinAndRegister } from "./gateway-side.ts";
import { REAL_BOARD, REAL_TARGETS, setupFrames } from "./real-device.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const SUITE = 10;

export interface InstructionCounts {
  interpreter: string;
  runs: number;
  /** Millions of instructions per run of each operation, and per X25519. */
  mi: Record<"joinRequest" | "joinAccept" | "register" | "caller" | "callee" | "protectOnSa" | "x25519", number>;
}

/** Writes a file into the interpreter's Storage in pieces small enough for a Puck.js-sized pool. */
function writeToStorage(bin: string, dir: string, name: string, text: string): void {
  const step = 8000;
  for (let o = 0; o < text.length; o += step) {
    const size = o === 0 ? `, ${text.length}` : "";
    fs.writeFileSync(path.join(dir, "w.js"), `require("Storage").write(${JSON.stringify(name)}, ${JSON.stringify(text.slice(o, o + step))}, ${o}${size});\n`);
    execFileSync(bin, ["w.js"], { cwd: dir, stdio: "ignore", timeout: 60_000 });
  }
}

/** Instructions the interpreter runs for a script (callgrind's total), start-up included. */
function instructions(bin: string, dir: string, script: string): number {
  fs.writeFileSync(path.join(dir, "run.js"), script);
  const r = spawnSync("valgrind", ["--tool=callgrind", "--callgrind-out-file=/dev/null", bin, "run.js"], { cwd: dir, encoding: "latin1", timeout: 1_800_000 });
  const m = /refs:\s*([\d,]+)/.exec(r.stderr ?? "");
  if (!m) throw new Error(`valgrind gave no count: ${(r.stderr ?? "").slice(-400)}`);
  if (/Uncaught|ERROR/.test(r.stdout ?? "")) throw new Error(`the script failed in the interpreter: ${(r.stdout ?? "").slice(-400)}`);
  return Number(m[1].replace(/,/g, ""));
}

export async function countInstructions(runs = 12, log: (s: string) => void = () => {}): Promise<InstructionCounts> {
  if (spawnSync("valgrind", ["--version"]).status !== 0) throw new Error("valgrind is not installed (Debian: apt-get install valgrind)");
  const found = locateInterpreter(REAL_BOARD, 64);
  if (found instanceof Error) throw found;
  const bin = found.bin;
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "kp-instructions-"));
  try {
    const built = await buildFirmware({ board: REAL_BOARD, entry: path.join(ROOT, "bench", "device-real-entry.ts"), outDir: work, budget: 1 << 20 });
    if (built.problems.length) throw new Error(built.problems.join("\n"));
    writeToStorage(bin, work, "kpbench.js", built.code);
    writeToStorage(bin, work, "nacl.js", fs.readFileSync(path.join(ROOT, "node_modules", "tweetnacl", "nacl-fast.min.js"), "latin1"));
    // A fixed hwRand, so that the JoinRequest the gateway answers below is the one each script makes.
    const c = nodeCrypto();
    const root = new Uint8Array(16).fill(7);
    const load = `E.hwRand = function () { return 0x5a17c3e9; };\n(function () { eval(require("Storage").read("kpbench.js")); })();\nvar OPS = kpBench.make(); OPS.configure(${JSON.stringify(DEVICE_ID)}, ${bytesLiteral(root)}, ${SUITE}, [[${SUITE}, 1]]);\n`;
    fs.writeFileSync(path.join(work, "req.js"), load + `print("REQ" + JSON.stringify(OPS.joinRequest(true)));\n`);
    const reqOut = execFileSync(bin, ["req.js"], { cwd: work, encoding: "latin1", timeout: 60_000 });
    const request = new Uint8Array(JSON.parse(/REQ(\[[^\]]*\])/.exec(reqOut)![1]) as number[]);
    const answers = answerJoinAndRegister(c, gatewayCbor, root, request, Math.floor(Date.now() / 1000));
    const f = setupFrames(c, gatewayCbor, answers.keys, SUITE);
    const ready = load + [
      `var ACCEPT = ${bytesLiteral(answers.acceptFrame)}, REGISTER_OK = ${bytesLiteral(answers.registerOkFrame)}, MESSAGE = new Uint8Array(64);`,
      `var CALLER = [${f.caller.map(bytesLiteral).join(",")}], CALLEE = [${f.callee.map(bytesLiteral).join(",")}];`,
      `OPS.joinRequest(true); if (OPS.joinAccept(ACCEPT) !== true) throw new Error("the accept was refused");`,
      `OPS.sessionCaller("peer-5e1d0b77", "bench", CALLER[0], CALLER[1]); process.memory();`,
      "",
    ].join("\n");
    const ops: Record<string, string> = {
      joinRequest: "OPS.joinRequest(true)",
      joinAccept: "OPS.joinAccept(ACCEPT)",
      register: "OPS.register(REGISTER_OK)",
      caller: `OPS.sessionCaller("peer-5e1d0b77", "bench", CALLER[0], CALLER[1])`,
      callee: "OPS.sessionCallee(CALLEE[0], CALLEE[1], CALLEE[2])",
      protectOnSa: "OPS.protectOnSa(MESSAGE)",
    };
    // The loop collects garbage every 4 runs, as bench/real-device.ts does between its chunks.
    const loop = (statement: string, n: number) => `for (var i = 0; i < ${n}; i++) { ${statement}; if (i % 4 === 3) process.memory(); }\n`;
    const mi = {} as InstructionCounts["mi"];
    const base = instructions(bin, work, ready + loop("0", runs));
    for (const [name, statement] of Object.entries(ops)) {
      mi[name as keyof InstructionCounts["mi"]] = (instructions(bin, work, ready + loop(statement, runs)) - base) / runs / 1e6;
      log(`${name}: ${mi[name as keyof InstructionCounts["mi"]].toFixed(2)} M instructions`);
    }
    const nacl = `(function () { global.module = { exports: {} }; eval(require("Storage").read("nacl.js")); global.naclFast = module.exports; delete global.module; })();\nvar SK = new Uint8Array(32).fill(9), PK = naclFast.scalarMult.base(new Uint8Array(32).fill(5)); process.memory();\n`;
    mi.x25519 = (instructions(bin, work, nacl + "naclFast.scalarMult(SK, PK);\n") - instructions(bin, work, nacl)) / 1e6;
    log(`x25519: ${mi.x25519.toFixed(0)} M instructions`);
    return { interpreter: path.basename(bin), runs, mi };
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

export function instructionTable(r: InstructionCounts): string {
  const x = r.mi.x25519;
  const row = (name: string, mi: number, target: number) => `| ${name} | ${mi.toFixed(2)} | **${Math.round(x / mi).toLocaleString("en-US")}×** | ≥ ${target.toLocaleString("en-US")}× | ${x / mi >= target ? "met" : "NOT met"} |`;
  return [
    "| X25519 ÷ | M instructions | measured | target | |",
    "|---|---|---|---|---|",
    row("join (JoinRequest + JoinAccept)", r.mi.joinRequest + r.mi.joinAccept, REAL_TARGETS.join),
    row("session setup as caller", r.mi.caller, REAL_TARGETS.caller),
    row("session setup as callee", r.mi.callee, REAL_TARGETS.callee),
    row("protect 64 B (KP.send on an SA)", r.mi.protectOnSa, REAL_TARGETS.protect),
    `| (register, for reference) | ${r.mi.register.toFixed(2)} | ${Math.round(x / r.mi.register).toLocaleString("en-US")}× | | |`,
    `| one X25519 (tweetnacl nacl-fast \`scalarMult\`) | ${x.toFixed(0)} | 1× | | |`,
  ].join("\n");
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const i = process.argv.indexOf("--runs");
  const runs = i > 0 ? Number(process.argv[i + 1]) : 12;
  countInstructions(runs, (s) => console.error(s))
    .then((r) => console.log(`${r.interpreter}, ${r.runs} runs per operation, callgrind instruction counts:\n\n${instructionTable(r)}`))
    .catch((e: unknown) => {
      console.error(`real-instructions bench failed: ${e instanceof Error ? e.message : String(e)}`);
      process.exit(1);
    });
}
