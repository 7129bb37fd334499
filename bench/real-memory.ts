// Memory on the real Espruino interpreter: process.memory().usage of each board's unmodified bundle,
// in the 32-bit interpreter sized like the board (../shared/espruino), flashed and provisioned as a
// user does it, against a gateway process. test/real-memory.test.ts checks the budgets with it;
//
//   node --import tsx bench/real-memory.ts [--write] [board ...]
//
// prints the table; --write puts it into docs/BENCHMARKS.md (its "Memory on the real interpreter"
// section, between markers, replaced on each run).
//
// What is measured, all as `process.memory().usage` (which collects garbage first: live variables):
//
// - empty: the interpreter with the test's stand-ins and nothing of keyproxy. The same boot file
//   .boot0 the handsets get (the E.hwRand seed and, on BLE boards, the Bluetooth/NRF stand-ins) and
//   the same provisioned kp.cfg, no bundle (.bootcde). On BLE boards the stand-ins' radio link is up
//   (connected to a listener of ours), so the stand-ins hold what they hold in a handset; as on a
//   board, the console (REPL) is then on "Bluetooth", so this device is read through the link, with
//   the very line eval() types on a handset's console.
// - rest: a handset joined and registered, nothing else going on. The gateway was told the usage
//   (RegisterRequest.memory); this is read on the console after that.
// - 1 SA / 4 SAs: a session (policy allow, the callee's KP.onRequest accepts, the caller
//   KP.connect()s), caller and callee; then three more between the same two handsets.
// - join peak / rekey peak: the most variables live at any point of a join (from the radio link
//   coming up to "registered"; the highest of the boot's join and two more asked for with KP.join()
//   from a timer)
//   and of a rekey (from the send that asks for it to both ends' new SA
//   up). process.memory() has no high-water mark, so a probe appended to .boot0 (outside the bundle,
//   which stays unmodified) wraps the natives the bundle takes as its Platform and uses inside every
//   step: E.CRC32, getTime, print, E.hwRand, require("crypto").SHA256 and AES.encrypt/decrypt (or
//   the global AES.ccm* on Bangle.js 2), Bluetooth.write. Each wrapped call, after the native returns,
//   samples process.memory().usage and keeps the highest. The probe's own variables are taken out by
//   measuring the rise over a sample the same probe takes at rest, from a timer (not from a console
//   line, whose own variables the flow does not have): peak = rest (or 1 SA) + (highest - that sample).
//   The timer's own record (about 5 variables) is in that sample, so a peak may read up to ~5 low.
//
// keyproxy's own variables = usage - empty.

import { createServer, type Server, type Socket } from "node:net";
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { BOARDS } from "../boards/index.ts";
import { BLE_BOARDS, bootZero, evalLine, RealDevice } from "../interpreter/device.ts";
import { CLI } from "../test/support/process.ts";
import { tempDir } from "../test/support/harness.ts";
import { realRig, bundleFor } from "../test/support/real.ts";

export interface BoardMemory {
  board: string;
  total: number;
  empty: number;
  rest: number;
  /** caller, callee */
  sa1: [number, number];
  sa4: [number, number];
  joinPeak: number;
  rekeyPeak: number;
  bundleBytes: number;
}

/** keyproxy's own variables for a usage figure. */
export const own = (m: BoardMemory, usage: number): number => usage - m.empty;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Seqs of the lines typed over the link: each new (a line runs at most once per seq, evalLine),
 *  above any a RealDevice reaches on the empty interpreter, and of three digits as they have always
 *  been (the seq is in the line several times, and the line is live while it measures, so its
 *  length moves the empty figure a little). */
let linkSeq = 900;

/** The console line RealDevice.eval types (the same line, so that the same variables are live when
 *  it measures), for a device whose console is on the radio link. */
function evalOverLink(sock: Socket, expr: string, timeoutMs = 20_000): Promise<unknown> {
  const seq = ++linkSeq;
  const line = evalLine(seq, expr);
  return new Promise((resolve, reject) => {
    let rx = "";
    const timer = setTimeout(() => { sock.off("data", on); reject(new Error(`no answer over the link to ${expr}: ${rx.slice(-300)}`)); }, timeoutMs);
    const on = (d: Buffer) => {
      rx += d.toString("latin1");
      const m = new RegExp(`<kd${seq}(!?)>([\\s\\S]*?)</kd${seq}!?>`).exec(rx);
      if (!m) return;
      clearTimeout(timer);
      sock.off("data", on);
      if (m[1]) reject(new Error(m[2]));
      else resolve(JSON.parse(m[2]));
    };
    sock.on("data", on);
    sock.write(Buffer.from(line, "latin1"));
  });
}

/** usage of the empty interpreter with the test's stand-ins (see above): the median of three reads. */
export async function emptyUsage(board: string): Promise<number> {
  const ble = BLE_BOARDS.has(board);
  let server: Server | undefined;
  const conns: Socket[] = [];
  const connected = new Promise<Socket>((resolve) => {
    server = createServer((s) => { conns.push(s); resolve(s); });
  });
  await new Promise<void>((r) => server!.listen(0, "127.0.0.1", () => r()));
  const port = (server!.address() as { port: number }).port;
  const dev = new RealDevice({ board, dir: tempDir(`kp-empty-${board}-`), name: `empty-${board}` });
  try {
    await dev.start();
    const cfg = { id: "empty", key: "00112233445566778899aabbccddeeff", gw: `127.0.0.1:${port}`, life: 3600 };
    await dev.eval(`require("Storage").write(".boot0",${JSON.stringify(bootZero(board))})&&require("Storage").write("kp.cfg",${JSON.stringify(JSON.stringify(cfg))})`);
    await dev.reboot();
    const reads: number[] = [];
    if (ble) {
      const sock = await connected;
      await sleep(300);
      for (let i = 0; i < 3; i++) reads.push((await evalOverLink(sock, "process.memory().usage")) as number);
    } else {
      await sleep(300);
      for (let i = 0; i < 3; i++) reads.push((await dev.memory()).usage);
    }
    return reads.sort((a, b) => a - b)[1];
  } finally {
    await dev.powerOff();
    for (const c of conns) c.destroy();
    server!.close();
  }
}

/** The peak probe (see above), appended to .boot0 after the stand-ins. */
export const PEAK_PROBE = `(function(){
var M=global.KPM={pk:0,at:0,n:0},pm=process.memory;
function s(){var u=pm().usage;M.n++;if(u>M.pk)M.pk=u;}
function w(o,k){var f=o[k];if(typeof f!="function")return;o[k]=function(a,b,c,d,e){var r=f.call(o,a,b,c,d,e);s();return r;};}
w(E,"CRC32");w(E,"hwRand");w(global,"getTime");w(global,"print");
var C=require("crypto");if(C){w(C,"SHA256");if(C.AES){w(C.AES,"encrypt");w(C.AES,"decrypt");}}
if(global.AES){w(AES,"ccmEncrypt");w(AES,"ccmDecrypt");}
if(global.Bluetooth)w(Bluetooth,"write");
M.rest=function(){setTimeout(function(){M.at=pm().usage;},1);};
})();`;

async function until(what: string, f: () => Promise<boolean>, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    if (await f()) return;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(150);
  }
}

/** Rest, sessions and peaks of one board's bundle (two handsets of that board on one gateway). */
export async function measureBoard(board: string): Promise<BoardMemory> {
  const empty = await emptyUsage(board);
  const bundle = await bundleFor(board);
  // A small message limit so that a rekey is asked for after a few sends (REKEY_AT of 10).
  const rig = await realRig(["--no-mqtt", "--no-fleet", "--sa-limit", "10"]);
  try {
    const a = await rig.handset(board, `m-${board}-a`);
    const b = await rig.handset(board, `m-${board}-b`);
    await a.waitFor(/^KP registered/, 30_000);
    await b.waitFor(/^KP registered/, 30_000);
    await sleep(300);
    const usage = async (d: RealDevice) => (await d.memory()).usage;
    const rest = Math.max(await usage(a), await usage(b));
    execFileSync(process.execPath, [CLI, "policy", "allow", "--from", a.name, "--to", b.name, "--app", "chat", "--data-dir", rig.dataDir], { stdio: "ignore" });
    await b.eval("KP.onRequest=function(){return true}");
    const ready = (d: RealDevice, n: number) => d.eval<boolean>(`KP.sas.length===${n}&&KP.sas.every(function(s){return s.ready})`);
    const sas = async (n: number): Promise<[number, number]> => {
      for (let i = (await a.eval<number>("KP.sas.length")); i < n; i++) {
        await a.eval(`KP.connect(${JSON.stringify(b.name)},"chat")`);
        await until(`SA ${i + 1}`, async () => (await ready(a, i + 1)) && (await ready(b, i + 1)));
      }
      await sleep(300);
      return [await usage(a), await usage(b)];
    };
    const sa1 = await sas(1);
    const sa4 = await sas(4);

    // Peaks: the probe goes into a's .boot0, and a starts again (its SAs end: a fresh boot holds none).
    await a.eval(`require("Storage").write(".boot0",require("Storage").read(".boot0")+${JSON.stringify(PEAK_PROBE)})`);
    const since = a.lines.length;
    await a.reboot();
    await a.waitFor(/^KP registered/, 30_000, since);
    let joinHigh = await a.eval<number>("KPM.pk");
    // The peak depends on how the frames arrive (in one piece or several): two more joins, asked for
    // on the console (KP.join() joins again from "linked"), and the highest of the three. Each is
    // started from a timer, as the rest sample is taken: run inside the console line, a join's
    // synchronous part would count the line's own variables, which the device's flow does not have.
    for (let i = 0; i < 2; i++) {
      const mark = a.lines.length;
      await a.eval("(KPM.pk=0,setTimeout(function(){KP.join();},1),1)");
      await a.waitFor(/^KP registered/, 30_000, mark);
      joinHigh = Math.max(joinHigh, await a.eval<number>("KPM.pk"));
    }
    await sleep(300);
    await a.eval("KPM.rest()");
    await sleep(200);
    const restSample = await a.eval<number>("KPM.at");
    const joinPeak = rest + (joinHigh - restSample);
    // One SA again, then sends up to the rekey threshold; the send that crosses it asks for the rekey.
    await until("b's old SAs to end", async () => (await b.eval<number>("KP.sas.length")) === 0);
    await a.eval(`KP.connect(${JSON.stringify(b.name)},"chat")`);
    await until("the SA", async () => (await ready(a, 1)) && (await ready(b, 1)));
    await sleep(300);
    for (let i = 0; i < 8; i++) await a.eval("KP.send(KP.sas[0].spi,E.toUint8Array('hello'))");
    await a.eval("KPM.rest()");
    await sleep(200);
    const saSample = await a.eval<number>("KPM.at");
    const mark = a.lines.length;
    await a.eval("(KPM.pk=0,KP.send(KP.sas[0].spi,E.toUint8Array('hello')))");
    await a.waitFor(/^KP sa up/, 30_000, mark);
    await until("the rekey at both ends", async () => (await a.eval<number>("KP.sas.filter(function(s){return s.ready}).length")) === 2 && (await b.eval<number>("KP.sas.filter(function(s){return s.ready}).length")) === 2);
    const rekeyHigh = await a.eval<number>("KPM.pk");
    const rekeyPeak = sa1[0] + (rekeyHigh - saSample);
    return { board, total: BOARDS[board].vars, empty, rest, sa1, sa4, joinPeak, rekeyPeak, bundleBytes: bundle.length };
  } finally {
    await rig.stop();
  }
}

/** The table for docs/BENCHMARKS.md: usage, and keyproxy's own variables in brackets. */
export function table(rows: BoardMemory[]): string {
  const c = (m: BoardMemory, u: number) => `${u} (${own(m, u)})`;
  const out = [
    "| board | variables | empty + stand-ins | at rest | 1 SA caller / callee | 4 SAs caller / callee | join peak | rekey peak |",
    "|---|---|---|---|---|---|---|---|",
  ];
  for (const m of rows) {
    out.push(`| ${m.board} | ${m.total} | ${m.empty} | ${c(m, m.rest)} | ${c(m, m.sa1[0])} / ${c(m, m.sa1[1])} | ${c(m, m.sa4[0])} / ${c(m, m.sa4[1])} | ${c(m, m.joinPeak)} | ${c(m, m.rekeyPeak)} |`);
  }
  return out.join("\n");
}

const START = "<!-- real-memory:start (bench/real-memory.ts --write replaces this section) -->";
const END = "<!-- real-memory:end -->";

/** The "Memory on the real interpreter" section of docs/BENCHMARKS.md. */
export function section(rows: BoardMemory[], date: string, load: number[]): string {
  return `${START}
## Memory on the real interpreter

Made by \`node --import tsx bench/real-memory.ts --write\` (the same measurement
\`node --import tsx --test test/real-memory.test.ts\` checks against each board's budget in
boards/index.ts), ${date}, load average ${load.map((l) => l.toFixed(2)).join(" → ")}: each board's
unmodified bundle in the 32-bit Espruino 2v29 interpreter sized like the board (../shared/espruino;
the ESP32 runs on the Puck.js-sized one, 2,630 variables of 13 bytes), flashed and provisioned as a
user does, two handsets of the board on one gateway process. Each cell is
\`process.memory().usage\` (live variables, garbage collected first) and, in brackets, keyproxy's own:
usage minus "empty".

${table(rows)}

- empty + stand-ins: the same .boot0 (E.hwRand seed; on BLE boards the Bluetooth/NRF stand-ins with
  their radio link up) and kp.cfg, no bundle. About 84 of it is the interpreter itself; the BLE
  stand-ins' TCP socket and closures are most of the rest. On the ESP32 keyproxy opens its own socket,
  so it counts as keyproxy's.
- at rest: joined and registered. 1 SA: one session open (caller / callee); 4 SAs: four between the
  same two handsets.
- peaks: the highest sample of a probe appended to .boot0 that wraps the natives the bundle uses at
  every step (E.CRC32, getTime, print, E.hwRand, SHA256, AES, Bluetooth.write) and samples
  \`process.memory()\` after each call; taken as the rise over a sample the same probe takes at rest
  (or with one SA) plus that figure. Join: the highest of the boot's join and two more, from the link
  coming up to "registered" (the register included). Rekey: from the send that asks for it to the
  new SA up at both ends (gateway \`--sa-limit 10\`). Peaks vary by a few tens of variables from run
  to run with how the frames arrive (in one piece or in 20-byte notifications).
- The emulator's variable figure is a model that reads the Puck.js about 60% high; no budget uses it
  (docs/EMULATOR.md "Memory").
${END}`;
}

if (process.argv[1] && path.resolve(process.argv[1]) === path.resolve(new URL(import.meta.url).pathname)) {
  const args = process.argv.slice(2);
  const write = args.includes("--write");
  const named = args.filter((a) => !a.startsWith("--"));
  const boards = named.length ? named : ["puckjs", "banglejs2", "esp32"];
  const load = [os.loadavg()[0]];
  const rows: BoardMemory[] = [];
  for (const b of boards) rows.push(await measureBoard(b));
  load.push(os.loadavg()[0]);
  process.stdout.write(table(rows) + "\n");
  if (write) {
    const file = fileURLToPath(new URL("../docs/BENCHMARKS.md", import.meta.url));
    const doc = readFileSync(file, "utf8");
    const text = section(rows, new Date().toISOString().replace(/\.\d+Z$/, "Z"), load);
    const i = doc.indexOf(START);
    const j = doc.indexOf(END);
    writeFileSync(file, i >= 0 && j > i ? doc.slice(0, i) + text + doc.slice(j + END.length) : doc.trimEnd() + "\n\n" + text + "\n");
  }
}
