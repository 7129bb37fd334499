// A handset on the real Espruino interpreter: one Linux build of Espruino sized like the board
// (interpreter/locate.ts), in a folder of its own (its flash, and so its Storage, is ./espruino.flash
// there), with its console (the REPL) on standard input and output, as a board's is on its serial port.
//
// What the harness adds, and nothing more:
// - power: start, a power cut (SIGKILL), and a restart when the interpreter exits by itself. The Linux
//   build answers E.reboot() with "Not implemented" and exits; a board restarts, so we start it again
//   on the same flash;
// - a serial cable: withSerial() puts the console behind a real pseudo-terminal for the time of a
//   `keyproxy flash` or `keyproxy provision`, which then speak to it exactly as to a board;
// - a way for the test to type: eval() sends one line, echo off, and reads its printed answer, the
//   protocol flash/serial.ts uses, guarded against the byte the Linux build's console thread loses
//   now and then (evalLine): a damaged line runs nothing and is typed again;
// - on BLE boards, the Bluetooth and NRF objects the Linux build lacks (BLE_STAND_INS below), written
//   into .boot0 like any boot file, so the firmware bundle itself runs unmodified.

import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { EventEmitter } from "node:events";
import { copyFileSync, existsSync, mkdirSync } from "node:fs";
import path from "node:path";
import { crc32 } from "node:zlib";
import { openPty, type Pty } from "../emulator/serial.ts";
import { locateInterpreter } from "./locate.ts";

export const FLASH_FILE = "espruino.flash";

/** The Linux build's "Ctrl-C again to exit" window is 5 s: Ctrl-Cs are typed at least this far apart. */
const CTRL_C_GAP_MS = 5500;
const UART_PIECE = 32;
const UART_PIECE_MS = 3;
/** How many times one eval's line is typed again after it arrived damaged (each time, provably,
 *  nothing of it ran) before the eval fails: a damaged line is the Linux build's console thread
 *  (docs/INTERPRETER.md); several in a row are that thread in a bad streak, or an interpreter out
 *  of memory that cannot make the function's text. */
const RETYPES = 3;
/** How often a condition given to when() is checked on the device. */
const WATCH_EVERY_MS = 100;
/** Ends a statement the REPL holds open (evalNow): a newline, then more closing brackets than one
 *  lost byte can leave open, then a newline. */
const STATEMENT_END = "\n})]\n";

/** Boards whose firmware talks over the BLE UART: their bundle needs the stand-ins. */
export const BLE_BOARDS = new Set(["puckjs", "banglejs2"]);

/** Bluetooth and NRF as a Puck.js or Bangle.js 2 has them, over a TCP connection standing in for the
 *  radio link (the Linux build has require("net"); a board does not, but a board has a radio). The
 *  peer is the address in kp.cfg's "gw" (the gateway's link server, or a test's relay in front of it).
 *  What a board does, and so what this does:
 *  - when a central connects, the console (the REPL) moves to Bluetooth: incoming bytes go to the
 *    REPL and the REPL's output goes to the central, unless the code moves the console elsewhere;
 *    NRF emits "connect". Here "Bluetooth" as a console is LoopbackB: bytes for the REPL are written
 *    to LoopbackA, and what the REPL prints comes out of LoopbackA;
 *  - incoming bytes reach Bluetooth.on("data") only while the console is elsewhere, in pieces of at
 *    most 20 bytes (one notification at the default ATT MTU of 23);
 *  - when the central disconnects, a console that was on Bluetooth returns to the default (USB here);
 *    NRF emits "disconnect" with reason 19 (remote user terminated). Then we "advertise" again: the
 *    central reconnects after half a second. No central there (the Linux build's net.connect throws
 *    at once when the port refuses): we advertise on, trying again every half second, so that a
 *    test's central (the BLE double) decides when to connect, as a board's central does.
 *  - Bluetooth.setConsole() moves the console to Bluetooth; Bluetooth.inject(d) hands d on as if the
 *    central had sent it: to the REPL while the console is on Bluetooth, else (a moment later, as a
 *    board's input queue does) to Bluetooth.on("data").
 *  NRF.setAdvertising(data, {name}) keeps the name as NRF.name, where the BLE double of a test's
 *  radio reads what the handset advertises (test/support/ble-double.ts).
 *  E.getConsole() answers "LoopbackB" where a board would answer "Bluetooth". Not modelled: a console
 *  forced elsewhere (E.setConsole(d, {force: true})) still moves here, and a board clears the REPL's
 *  input line when the console moves to or from Bluetooth.
 *  The stand-ins' own variables are part of the baseline the memory tests subtract. */
export const BLE_STAND_INS = `(function(){
var s;
global.Bluetooth={write:function(d){if(s)s.write(typeof d=="string"?d:E.toString(d));},setConsole:function(){LoopbackB.setConsole();},
inject:function(d){if(E.getConsole()=="LoopbackB")LoopbackB.inject(d);else setTimeout(function(){Bluetooth.emit("data",d);},0);}};
global.NRF={setAdvertising:function(a,o){NRF.name=o&&o.name;}};
LoopbackA.on("data",function(d){if(s&&E.getConsole()=="LoopbackB")s.write(d);});
function up(){
var c=require("Storage").readJSON("kp.cfg",1);if(!c||!c.gw)return;var i=c.gw.lastIndexOf(":");
var k;try{k=require("net").connect({host:c.gw.substr(0,i),port:parseInt(c.gw.substr(i+1),10)},function(){s=k;LoopbackB.setConsole();NRF.emit("connect","c0:ff:ee:00:00:01 public");});}catch(e){setTimeout(up,500);return;}
k.on("data",function(d){for(var o=0;o<d.length;o+=20){var p=d.substr(o,20);if(E.getConsole()=="LoopbackB")LoopbackA.write(p);else Bluetooth.emit("data",p);}});
k.on("error",function(){});
k.on("close",function(){var was=s;s=undefined;if(was){if(E.getConsole()=="LoopbackB")USB.setConsole();NRF.emit("disconnect",19);}setTimeout(up,500);});
}
setTimeout(up,10);
})();`;

/** Boards that join Wi-Fi before they open TCP: their bundle needs the Wi-Fi stand-in. */
export const WIFI_BOARDS = new Set(["esp32"]);

/** require("Wifi") as an ESP32 has it, for the Linux build, which has TCP but no radio: connect(ssid,
 *  {password}, cb) joins after a moment, emits "connected" and calls cb(null); "disconnected" is
 *  emitted when the network drops, which a test causes with drop(). The network's name and password
 *  are kept (a test compares them with what it provisioned) and never printed. What is not modelled:
 *  a wrong password or a network out of range (a board calls cb with an error), and the TCP
 *  connections a board loses with its network (here they stay up until the firmware ends them). */
export const WIFI_STAND_IN = `Modules.addCached("Wifi",function(){
var W=exports;W.connect=function(n,o,cb){setTimeout(function(){W.ssid=n;W.password=o&&o.password;W.joins=(W.joins|0)+1;W.emit("connected",{});if(cb)cb(null);},20);};
W.drop=function(){W.ssid=undefined;W.emit("disconnected",{});};
});`;

/** .boot0 for a device: a seed for E.hwRand (the Linux build's is a pseudo-random generator: without
 *  a seed of its own every device, and every boot, would draw the same numbers; a board's is a true
 *  RNG), then the BLE stand-ins where the board has BLE, the Wi-Fi one where it has Wi-Fi. */
export function bootZero(board: string): string {
  const seed = `E.srand((E.CRC32(require("Storage").read("kp.cfg")||"")^Math.round(getTime()*1000))|0);`;
  if (BLE_BOARDS.has(board)) return `${seed}\n${BLE_STAND_INS}\n`;
  return WIFI_BOARDS.has(board) ? `${seed}\n${WIFI_STAND_IN}\n` : `${seed}\n`;
}

export interface RealDeviceOptions {
  board: string;
  /** The device's folder (created if missing): its flash file lives there. */
  dir: string;
  /** For log lines and errors. */
  name?: string;
  /** 32 (default) for behaviour and memory, 64 for speed. */
  bits?: 32 | 64;
  /** A flash image to start from (copied into dir). */
  flashImage?: string;
  /** Print console lines to stderr (also with KEYPROXY_INTERPRETER_LOG=1). */
  echo?: boolean;
  /** What the cable does to each string typed, on its way to the console (default: nothing). For
   *  tests of the harness itself: a byte lost as the Linux build's console thread loses one. */
  wire?: (typed: string) => string;
}

interface Pending {
  seq: number;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
  /** The line as typed, to type again if it arrives damaged, and how often that has been done. */
  line: string;
  retypes: number;
}

/**
 * The console line eval() types for `expr`, its answer tagged with `seq`. The Linux build's console
 * thread now and then loses or replaces one byte of what is typed (docs/INTERPRETER.md, "A byte lost,
 * or a crash"), and Espruino runs a line as it parses it, so a damaged line could run half of itself
 * or a different expression. Hence:
 * - the work is the body of a function f, and the line runs f only if E.CRC32 of f's text is the
 *   CRC-32 computed here: a damaged body prints <kdN?> and runs nothing; damage outside it is a
 *   syntax or reference error before f is called, or leaves the REPL waiting for a bracket.
 *   Espruino keeps a one-line body's source as "function () {" + body + "}", but gives a body that
 *   spans lines back with "\n  " after its "{" and "\n" before its "}" (a multi-line expression
 *   never matched: the first fresh-clone CI run with this line). So an expression of several lines
 *   (an application typed at the console) goes instead as a string literal s, run as eval(s)() only
 *   if E.CRC32(s) matches; every byte outside printable ASCII is typed as an escape, so s holds
 *   exactly the Latin-1 bytes the CRC is over. That form holds the source twice while it runs (about
 *   20 variables more on a Puck.js), which the memory figures, taken with one-line expressions, do
 *   not pay;
 * - f runs at most once per seq, however often the line is typed (global.__kd keeps the last seq
 *   run), so the harness may type it again on any sign of damage without running anything twice.
 * The tags are split ("<kd"+N+">") so that a line echoed back (its echo-off byte lost) never reads
 * as its own answer.
 */
export function evalLine(seq: number, expr: string): string {
  const tag = (mark: string) => `"<kd"+${seq}+"${mark}>"`;
  const body = `if(global.__kd===${seq})return;global.__kd=${seq};` +
    `var r;try{r=JSON.stringify(${expr});}catch(e){print(${tag("!")}+e+"</kd"+${seq}+"!>");return;}print(${tag("")}+r+"</kd"+${seq}+">");`;
  if (!/[\n\r]/.test(expr)) {
    const sum = crc32(Buffer.from(`function () {${body}}`, "latin1")) >>> 0;
    return `\x10(function(f){if(E.CRC32(""+f)===${sum})f();else print(${tag("?")})})(function(){${body}})\n`;
  }
  const source = `(function(){${body}})`;
  const sum = crc32(Buffer.from(source, "latin1")) >>> 0;
  return `\x10(function(s){if(E.CRC32(s)===${sum})eval(s)();else print(${tag("?")})})(${latin1Literal(source)})\n`;
}

/** A string literal holding exactly text, on one line of printable ASCII: quotes and backslashes
 *  escaped, every other byte as \xHH. Text beyond Latin-1 has no single byte per character to check. */
function latin1Literal(text: string): string {
  let out = '"';
  for (const ch of text) {
    const c = ch.codePointAt(0)!;
    if (c > 0xff) throw new Error(`an eval's expression must be Latin-1 (it is checked byte by byte): ${JSON.stringify(ch)} is not`);
    out += ch === '"' || ch === "\\" ? `\\${ch}` : c >= 0x20 && c < 0x7f ? ch : `\\x${c.toString(16).padStart(2, "0")}`;
  }
  return out + '"';
}

const ESCAPES = /\x1b\[[0-9;]*[A-Za-z]/g;

/** Signals with which an interpreter dies of its own accord (the harness only ever sends SIGKILL,
 *  SIGTERM or Ctrl-C). */
const CRASH_SIGNALS = new Set(["SIGSEGV", "SIGBUS", "SIGILL", "SIGABRT", "SIGFPE"]);
let crashes = 0;

/** How many interpreters of this process have crashed so far (test/support/real.ts asks whether one
 *  crashed during a test: docs/INTERPRETER.md, "A crash of the interpreter itself"). */
export function interpreterCrashes(): number {
  return crashes;
}

let evalsDamagedOut = 0;
let packetsUnanswered = 0;

/** Espruino's file packets (2v25+) are answered ACK or NAK within 5 s of their start, the NAK by its
 *  own timeout when the rest never comes (jsiPacketTimeoutHandler, src/jsinteractive.c). A packet that
 *  a live interpreter answers neither way within INTERPRETER_ANSWER_MS never had its start (DLE SOH)
 *  taken: the bytes were lost on the way in, the Linux build's console thread (docs/INTERPRETER.md).
 *  A test that sends packets itself reports it here, for a rerun (consoleFaults). */
export function notePacketUnanswered(): void {
  packetsUnanswered++;
}

/** The error a packet sender (flash/serial.ts) gives when no ACK or NAK came. */
export const PACKET_UNANSWERED = /did not acknowledge a packet within/;

/** Crashes, evals failed because their line arrived damaged every time it was typed (RETYPES + 1
 *  times in a row), and packets a live interpreter never answered (notePacketUnanswered): all are
 *  the Linux build's console thread (docs/INTERPRETER.md), which has damaged a line three times in a
 *  row just before it crashed. test/support/real.ts runs a test again after any of them. An
 *  interpreter out of memory also fails its checksums, but every time: a rerun fails the same way. */
export function consoleFaults(): number {
  return crashes + evalsDamagedOut + packetsUnanswered;
}

export class RealDevice extends EventEmitter {
  readonly board: string;
  readonly dir: string;
  readonly name: string;
  readonly bin: string;
  readonly bits: 32 | 64;
  /** Every console line since the device was made, escape sequences and prompts removed. */
  readonly lines: string[] = [];
  /** How many times the interpreter has started, and the index in lines where the last start began. */
  boots = 0;
  bootLine = 0;
  /** How many evals have been typed (a retyped line not counted again). */
  evals = 0;
  private child: ChildProcessWithoutNullStreams | undefined;
  private exited: Promise<void> = Promise.resolve();
  private wanted = false;
  private rx = "";
  private partial = "";
  private seq = 0;
  private pending: Pending | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private pty: Pty | undefined;
  private readonly echo: boolean;
  private readonly wire: (typed: string) => string;
  private typing: Promise<void> = Promise.resolve();
  private lastCtrlC = -Infinity;
  private watches = 0;
  private lastTypedAt = 0;

  constructor(o: RealDeviceOptions) {
    super();
    this.board = o.board;
    this.dir = o.dir;
    this.name = o.name ?? path.basename(o.dir);
    this.bits = o.bits ?? 32;
    const found = locateInterpreter(o.board, this.bits);
    if (found instanceof Error) throw found;
    this.bin = found.bin;
    this.echo = o.echo ?? process.env.KEYPROXY_INTERPRETER_LOG === "1";
    this.wire = o.wire ?? ((typed) => typed);
    mkdirSync(this.dir, { recursive: true });
    if (o.flashImage) copyFileSync(o.flashImage, path.join(this.dir, FLASH_FILE));
  }

  get running(): boolean {
    return !!this.child && this.child.exitCode === null && this.child.signalCode === null;
  }

  get flashFile(): string {
    return path.join(this.dir, FLASH_FILE);
  }

  /** Powers the device on: the interpreter runs its boot files, then waits at its prompt (resolves
   *  when it answers there, unless waitForPrompt is false: code that never returns keeps it busy). */
  async start(waitForPrompt = true): Promise<void> {
    this.wanted = true;
    if (!this.running) this.spawn();
    if (waitForPrompt) await this.eval("1", 30_000);
  }

  private spawn(): void {
    const child = spawn(this.bin, [], { cwd: this.dir, stdio: ["pipe", "pipe", "pipe"] });
    this.child = child;
    this.boots++;
    this.bootLine = this.lines.length;
    this.exited = new Promise<void>((r) => child.once("exit", () => r()));
    child.stdin.on("error", () => {}); // EPIPE after a power cut
    child.stderr.on("data", () => {}); // the Linux build's start-up warnings
    child.stdout.on("data", (d: Buffer) => this.output(d.toString("latin1")));
    child.once("exit", (code, signal) => {
      if (this.child !== child) return;
      this.child = undefined;
      if (signal && CRASH_SIGNALS.has(signal)) crashes++;
      // In the console record, so that a test's failure shows a restart it did not ask for.
      // How long before the exit the harness last typed: the console thread's race (docs/INTERPRETER.md)
      // needs bytes arriving.
      const typed = this.lastTypedAt ? `, ${Date.now() - this.lastTypedAt} ms after the harness last typed` : "";
      this.lines.push(`[harness] the interpreter exited (${signal ?? `code ${code}`}${typed})${this.wanted ? "; starting it again on the same flash" : ""}`);
      if (this.echo) process.stderr.write(`${this.name}: ${this.lines[this.lines.length - 1]}\n`);
      this.failPending(`${this.name}: the interpreter stopped`);
      this.emit("stopped");
      // E.reboot() (or a crash): a board comes back up on the same flash.
      if (this.wanted) setTimeout(() => { if (this.wanted && !this.running) this.spawn(); }, 20);
    });
  }

  private output(s: string): void {
    this.pty?.write(s);
    this.rx += s;
    this.answer();
    this.partial += s;
    let i: number;
    while ((i = this.partial.indexOf("\n")) >= 0) {
      const line = this.partial.slice(0, i).replace(ESCAPES, "").replace(/\r/g, "").replace(/^>+/, "");
      this.partial = this.partial.slice(i + 1);
      if (line.trim() === "") continue;
      this.lines.push(line);
      if (this.echo) process.stderr.write(`${this.name}: ${line}\n`);
      this.emit("line", line);
      // An eval's line that arrived damaged outside its checked body fails to parse before anything
      // of it runs (evalLine). Typing it again is safe whatever threw: it runs at most once.
      if (this.pending && line.startsWith("Uncaught ")) this.retype(this.pending, `its line may have arrived damaged: ${line.slice(0, 100)}`);
    }
  }

  /** Cuts the power: nothing more runs, nothing more is written. */
  async powerOff(): Promise<void> {
    this.wanted = false;
    const c = this.child;
    if (c && this.running) {
      c.kill("SIGKILL");
      await this.exited;
    }
    this.failPending(`${this.name}: powered off`);
  }

  /** A power cut and the power back: the interpreter starts again on the same flash. */
  async reboot(): Promise<void> {
    await this.powerOff();
    await this.start();
  }

  /** Types bytes into the console (a test's hand on the keyboard, or the pty's other end), in order.
   *  One thing is changed: Ctrl-Cs are kept CTRL_C_GAP_MS apart. The Linux build exits on a second
   *  Ctrl-C on an empty input line within 5 s (src/jsinteractive.c, `#ifndef EMBEDDED`), where a board
   *  only clears the line; `keyproxy flash` and `provision` begin every session with one. */
  type(s: string): void {
    this.typing = this.typing.then(async () => {
      let rest = s;
      for (let i = rest.indexOf("\x03"); i >= 0; i = rest.indexOf("\x03")) {
        await this.write(rest.slice(0, i));
        const wait = this.lastCtrlC + CTRL_C_GAP_MS - Date.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        await this.write("\x03");
        this.lastCtrlC = Date.now();
        rest = rest.slice(i + 1);
      }
      await this.write(rest);
    });
  }

  /** Types one of the harness's own lines (an eval's, or STATEMENT_END) in a single write, after
   *  whatever is being typed: the console thread's race (docs/INTERPRETER.md, "A byte lost, or a
   *  crash") crashed the interpreter about a third as often with lines written whole as with lines
   *  typed at a UART's pace (measured there). */
  private typeLine(line: string): void {
    this.typing = this.typing.then(() => this.write(line, true));
  }

  /** At about a UART's pace (UART_PIECE bytes every UART_PIECE_MS, some 115,200 baud), unless whole:
   *  the Linux target reads its console on a thread of its own, into the queue its main loop
   *  empties, and a 2 KB burst (a flash's Storage line) has crashed it under qemu (SIGSEGV); a board's
   *  UART never delivers faster than its baud rate. */
  private async write(typed: string, whole = false): Promise<void> {
    const s = this.wire(typed);
    if (whole) {
      this.child?.stdin.write(Buffer.from(s, "latin1"));
      this.lastTypedAt = Date.now();
      return;
    }
    for (let o = 0; o < s.length; o += UART_PIECE) {
      this.child?.stdin.write(Buffer.from(s.slice(o, o + UART_PIECE), "latin1"));
      this.lastTypedAt = Date.now();
      if (o + UART_PIECE < s.length) await new Promise((r) => setTimeout(r, UART_PIECE_MS));
    }
  }

  /** Runs an expression at the prompt, echo off, and resolves with its value as JSON carries it.
   *  One at a time (queued), as on a serial line. */
  eval<T = unknown>(expr: string, timeoutMs = 20_000): Promise<T> {
    const run = this.queue.then(() => this.evalNow<T>(expr, timeoutMs));
    this.queue = run.catch(() => {});
    return run;
  }

  private evalNow<T>(expr: string, timeoutMs: number): Promise<T> {
    if (!this.running) return Promise.reject(new Error(`${this.name}: the device is off`));
    const seq = ++this.seq;
    this.evals++;
    const line = evalLine(seq, expr);
    return new Promise<T>((resolve, reject) => {
      const p: Pending = { seq, resolve: resolve as (v: unknown) => void, reject, timer: undefined as unknown as NodeJS.Timeout, line, retypes: 0 };
      const giveUp = () => {
        if (this.pending !== p) return;
        this.pending = undefined;
        reject(new Error(`${this.name}: no answer to ${JSON.stringify(expr.slice(0, 80))} within ${timeoutMs} ms, nor within as long again after the harness ended whatever the REPL held and typed the line again; last lines:\n${this.lines.slice(-8).join("\n")}`));
      };
      // No answer and no error: the line may have lost a closing bracket or its newline, and then
      // the REPL waits for the rest of the statement, which no retyped line completes. End it once
      // ("\n" runs a line that only lost its newline; the closers make anything still open a syntax
      // error, so nothing of it runs), type the line again and wait as long once more. An eval that
      // was merely slow answers as before; the closers then cost one SyntaxError on the console.
      p.timer = setTimeout(() => {
        if (this.pending !== p) return;
        this.lines.push(`[harness] no answer to eval ${seq} within ${timeoutMs} ms; ending whatever the REPL holds and typing the line again`);
        if (this.echo) process.stderr.write(`${this.name}: ${this.lines[this.lines.length - 1]}\n`);
        this.typeLine(STATEMENT_END);
        this.typeLine(line);
        p.timer = setTimeout(giveUp, timeoutMs);
      }, timeoutMs);
      this.pending = p;
      this.typeLine(line);
    });
  }

  private answer(): void {
    const p = this.pending;
    if (!p) {
      if (this.rx.length > 8192) this.rx = this.rx.slice(-1024);
      return;
    }
    const damaged = new RegExp(`<kd${p.seq}\\?>`).exec(this.rx);
    if (damaged) {
      this.rx = this.rx.slice(damaged.index + damaged[0].length);
      this.retype(p, "its line arrived damaged (its checksum did not match)", true);
      return;
    }
    const ok = new RegExp(`<kd${p.seq}>([\\s\\S]*?)</kd${p.seq}>`).exec(this.rx);
    const err = new RegExp(`<kd${p.seq}!>([\\s\\S]*?)</kd${p.seq}!>`).exec(this.rx);
    if (!ok && !err) return;
    this.rx = this.rx.slice(((ok ?? err)!.index) + (ok ?? err)![0].length);
    this.pending = undefined;
    clearTimeout(p.timer);
    if (err) p.reject(new Error(`${this.name}: ${err[1]}`));
    else {
      try {
        p.resolve(ok![1] === "undefined" ? undefined : JSON.parse(ok![1]));
      } catch {
        p.reject(new Error(`${this.name}: not JSON: ${ok![1].slice(0, 200)}`));
      }
    }
  }

  /** Types a pending eval's line again after a sign that it arrived damaged (evalLine: a damaged
   *  line runs nothing, an intact one runs once however often it is typed). A checksum that keeps
   *  failing fails the eval; other signs (an Uncaught error, which the firmware may print too) stop
   *  being acted on and leave the eval to its timeout. */
  private retype(p: Pending, why: string, checksumFailed = false): void {
    if (p.retypes >= RETYPES) {
      // Damage that often in a row: the console thread in a bad streak (one has preceded a crash),
      // or an interpreter that cannot hold the function's text (out of memory), which its last
      // lines may say. Counted as a console fault (a rerun: consoleFaults), which out of memory
      // fails again.
      if (!checksumFailed) return;
      evalsDamagedOut++;
      this.failPending(`${this.name}: the line of eval ${p.seq} failed its checksum ${p.retypes + 1} times in a row (damaged each time, or the interpreter could not make the function's text: out of memory?); last lines:\n${this.lines.slice(-8).join("\n")}`);
      return;
    }
    p.retypes++;
    this.lines.push(`[harness] eval ${p.seq}: ${why}; typing the line again (it runs at most once)`);
    if (this.echo) process.stderr.write(`${this.name}: ${this.lines[this.lines.length - 1]}\n`);
    this.typeLine(p.line);
  }

  private failPending(why: string): void {
    const p = this.pending;
    if (!p) return;
    this.pending = undefined;
    clearTimeout(p.timer);
    p.reject(new Error(why));
  }

  /**
   * Resolves once `condition`, a one-line JavaScript expression, is true on the device; rejects when
   * it throws there, when the interpreter stops, or when it is still false after timeoutMs.
   *
   * One line is typed, not one eval per poll: the device checks the condition itself every
   * WATCH_EVERY_MS and prints a mark when it holds. Every line typed at the Linux build's console
   * is a chance for its console thread to race the main loop (docs/INTERPRETER.md, "A byte lost,
   * or a crash"), and a test that polled with evals typed hundreds of lines while the firmware
   * was busiest. The mark is output, which that race does not touch; should it still go missing,
   * one eval at the timeout asks the condition itself before failing.
   */
  async when(condition: string, what: string, timeoutMs = 30_000): Promise<void> {
    if (/[\n\r]/.test(condition)) throw new Error("when(): the condition must be one line");
    const n = ++this.watches;
    const slot = `global.__kw${n}`;
    const mark = new RegExp(`^<kw${n}(>|!(.*)>)$`);
    const stop = `if(${slot}){clearInterval(${slot});delete ${slot};}`;
    let cancel = () => {};
    const seen = new Promise<string>((resolve, reject) => {
      const done = (f: () => void) => {
        clearTimeout(timer);
        this.off("line", onLine);
        this.off("stopped", onStop);
        f();
      };
      const onLine = (l: string) => { if (mark.test(l)) done(() => resolve(l)); };
      const onStop = () => done(() => reject(new Error(`${this.name}: the interpreter stopped while waiting for ${what}`)));
      const timer = setTimeout(() => done(() => resolve("")), timeoutMs);
      this.on("line", onLine);
      this.on("stopped", onStop);
      cancel = () => done(() => resolve(""));
    });
    seen.catch(() => {}); // awaited below, unless the eval that sets the watch fails first
    // The mark is split ("<kw"+n+">") so that the echo of the line itself never reads as it.
    await this.eval(`(function(){${slot}=setInterval(function(){var ok;try{ok=!!(${condition});}catch(e){ok=e;}` +
      `if(ok){${stop}print("<kw"+${n}+(ok===true?">":"!"+ok+">"));}},${WATCH_EVERY_MS});return 1;})()`).catch((e: Error) => {
      cancel();
      throw e;
    });
    const line = await seen;
    const thrown = mark.exec(line)?.[2];
    if (thrown !== undefined) throw new Error(`${this.name}: waiting for ${what}: ${thrown}`);
    if (line) return;
    if (await this.eval<boolean>(`(function(){${stop}return !!(${condition});})()`)) return;
    throw new Error(`${this.name}: timed out waiting for ${what} (${condition}) within ${timeoutMs} ms; last lines:\n${this.lines.slice(-8).join("\n")}`);
  }

  /** process.memory() as the device reports it (it collects garbage first). */
  memory(): Promise<{ free: number; usage: number; total: number; blocksize: number }> {
    return this.eval("process.memory()");
  }

  /** Resolves with the first console line that matches, from index `since` of lines on (default:
   *  since the interpreter last started). */
  waitFor(re: RegExp, timeoutMs = 20_000, since = this.bootLine): Promise<string> {
    const seen = this.lines.slice(since).find((l) => re.test(l));
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.off("line", onLine);
        reject(new Error(`${this.name}: no console line matching ${re} within ${timeoutMs} ms; last lines:\n${this.lines.slice(-10).join("\n")}`));
      }, timeoutMs);
      const onLine = (l: string) => {
        if (!re.test(l)) return;
        clearTimeout(timer);
        this.off("line", onLine);
        resolve(l);
      };
      this.on("line", onLine);
    });
  }

  /** Puts the console behind a real pseudo-terminal while fn runs: fn gets its path (what
   *  `keyproxy flash --port` and `keyproxy provision --port` open). The device stays powered. */
  async withSerial<T>(fn: (tty: string) => Promise<T>): Promise<T> {
    if (!this.running) await this.start();
    await this.queue;
    const pty = await openPty();
    pty.onData((s) => this.type(s));
    this.pty = pty;
    try {
      return await fn(pty.path);
    } finally {
      this.pty = undefined;
      await pty.close();
    }
  }
}

/** Whether an interpreter for the board can be had here (for test tiers that must say so). */
export function interpreterAvailable(board: string, bits: 32 | 64 = 32): true | string {
  const r = locateInterpreter(board, bits);
  return r instanceof Error ? r.message : true;
}

export function flashExists(dir: string): boolean {
  return existsSync(path.join(dir, FLASH_FILE));
}
