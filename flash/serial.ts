// The host side of an Espruino serial console: open the port, stop what runs, ask the interpreter
// questions and get typed answers back, write Storage files in chunks and check them by CRC.
//
// Espruino's console is a REPL that echoes what it is sent. A line that starts with DLE (\x10) is run
// with echo off, as the Espruino IDE and tools send code, so nothing we send (a root key included)
// comes back across the line. Answers come back through print(): every request wraps its expression
// so that the device prints `<kpN>JSON</kpN>` (or `<kpN!>message</kpN!>` when it throws), N being the
// request's sequence number, and we read exactly that out of whatever else the device prints (its
// firmware's log lines, a boot banner). The markers are assembled on the device ("<kp"+N+">"), so an
// echo of the request itself can never be taken for its answer.
//
// Flow control is stop-and-wait: one line out, its answer back, then the next. The device is idle
// (back at its prompt) whenever a line arrives, so its small serial input buffer never has to hold more
// than one line, whatever the port's own flow control. We also ask the tty for XON/XOFF, which
// Espruino's serial ports speak.

import { existsSync } from "node:fs";
import { SerialPort } from "serialport";
import { zlib } from "../gateway/link/crc32.ts";
import { describeHolders, describePorts, DIALOUT_HINT } from "./ports.ts";

/** What the REPL answers in process.env.BOARD, per board profile id. */
export const ESPRUINO_BOARD: Record<string, string> = {
  puckjs: "PUCKJS",
  banglejs2: "BANGLEJS2",
  esp32: "ESP32",
  emulator: "LINUX",
};

/** What the Linux builds of Espruino sized like a board answer (interpreter/build.sh and
 *  ../shared/espruino): the real interpreter the firmware is judged on, so `keyproxy flash` and
 *  `keyproxy provision` accept them for the board they stand in for (the 64-bit builds, for timing,
 *  add "64"). An ESP32 runs on the Puck-sized build where no ESP32-sized one was built (same natives). */
export const SIZED_LINUX_BOARD: Record<string, string[]> = {
  puckjs: ["KP_PUCK", "KP_PUCK64"],
  banglejs2: ["KP_BANGLE", "KP_BANGLE64"],
  esp32: ["KP_ESP32", "KP_ESP3264", "KP_PUCK", "KP_PUCK64"],
};

/** How long a device may take to answer the first question after the port opens. */
export const FIRST_ANSWER_MS = 3000;
/** How long one request may take beyond the time its bytes need on the wire. */
export const ANSWER_MS = 5000;
/** Raw bytes per Storage write line: about 0.6 s on a 9600-baud Puck.js, a few dozen Espruino
 *  variables for the line while it is parsed. */
export const CHUNK_BYTES = 512;

export class SerialError extends Error {}

/** CRC-32 (IEEE 802.3, reflected, as Espruino's E.CRC32 and zlib compute it), unsigned. */
export const crc32 = zlib.crc32;

/** A JavaScript string literal holding these bytes, readable by Espruino: printable ASCII as is, every
 *  other byte as \xHH. Control bytes never travel raw, so a 0x03 in the data cannot become a Ctrl-C
 *  and a 0x11/0x13 cannot become flow control. */
export function jsByteString(bytes: Uint8Array): string {
  let s = '"';
  for (const b of bytes) {
    if (b === 0x22 || b === 0x5c) s += "\\" + String.fromCharCode(b);
    else if (b >= 0x20 && b < 0x7f) s += String.fromCharCode(b);
    else s += "\\x" + b.toString(16).padStart(2, "0");
  }
  return s + '"';
}

/** Why a port would not open, in words that name the fix. */
export function openError(path: string, err: Error): SerialError {
  if (!existsSync(path)) return new SerialError(`${path} does not exist; ${describePorts()}`);
  // serialport's flock says "Cannot lock port" (EAGAIN); a TIOCEXCL tty says EBUSY.
  if (/Cannot lock port|Resource busy|EBUSY/i.test(err.message)) {
    return new SerialError(`${path} is busy: ${describeHolders(path)}; a serial console serves one program at a time, close the other one first`);
  }
  if (/Permission denied|EACCES/i.test(err.message)) {
    return new SerialError(`cannot open ${path}: permission denied; ${DIALOUT_HINT}`);
  }
  return new SerialError(`cannot open ${path}: ${err.message}`);
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

interface Pending {
  seq: number;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export interface OpenOptions {
  path: string;
  baudRate: number;
  /** Default FIRST_ANSWER_MS. */
  firstAnswerMs?: number;
  /** Default ANSWER_MS. */
  answerMs?: number;
}

export class EspruinoSerial {
  private rx = "";
  private seq = 0;
  private pending: Pending | undefined;
  private heardAnything = false;
  private closedBecause: string | undefined;
  readonly answerMs: number;

  private constructor(
    private readonly port: SerialPort,
    readonly path: string,
    readonly baudRate: number,
    answerMs: number,
  ) {
    this.answerMs = answerMs;
    port.on("data", (d: Buffer) => this.receive(d.toString("latin1")));
    port.on("close", () => this.fail(`the serial line to ${path} closed`));
    port.on("error", (e: Error) => this.fail(`serial error on ${path}: ${e.message}`));
  }

  /** Opens the port and makes sure an Espruino interpreter answers on it (Ctrl-C first, so a
   *  half-typed line or a running loop does not swallow the question). */
  static async open(o: OpenOptions): Promise<EspruinoSerial> {
    const port = await new Promise<SerialPort>((resolve, reject) => {
      // lock: an exclusive flock(2) on the tty (serialport's default, asked for here so that it stays):
      // two programs on one console interleave their lines, and two flashers corrupt the device.
      const p = new SerialPort({ path: o.path, baudRate: o.baudRate, xon: true, xoff: true, lock: true, autoOpen: false });
      p.open((err) => (err ? reject(openError(o.path, err)) : resolve(p)));
    });
    const link = new EspruinoSerial(port, o.path, o.baudRate, o.answerMs ?? ANSWER_MS);
    try {
      await link.interrupt();
      await link.call("1", o.firstAnswerMs ?? FIRST_ANSWER_MS);
    } catch (e) {
      await link.close();
      throw e;
    }
    return link;
  }

  /** Ctrl-C: Espruino stops running code and drops the line typed so far. */
  async interrupt(): Promise<void> {
    await this.send("\x03");
    await sleep(100);
    this.rx = "";
  }

  get open(): boolean {
    return this.closedBecause === undefined && this.port.isOpen;
  }

  /** Runs `expr` on the device (one line, echo off) and resolves with its value, carried back as JSON
   *  (undefined stays undefined). A device-side exception rejects with its message, unless `secret`,
   *  in which case the message (which could quote the line) is withheld. */
  async call<T = unknown>(expr: string, timeoutMs?: number, secret = false): Promise<T> {
    if (this.pending) throw new Error("EspruinoSerial: one request at a time");
    if (this.closedBecause) throw new SerialError(this.closedBecause);
    const seq = ++this.seq;
    const tag = `"<kp"+${seq}+">"`;
    const endTag = `"</kp"+${seq}+">"`;
    const line =
      `\x10(function(){var r;try{r=JSON.stringify(${expr});}` +
      `catch(e){print("<kp"+${seq}+"!>"+e+"</kp"+${seq}+"!>");return;}print(${tag}+r+${endTag});})()\n`;
    // Time for the bytes to cross the wire (10 bits a byte) on top of the device's own time.
    const wireMs = Math.ceil((line.length * 10 * 1000) / this.baudRate);
    const wait = (timeoutMs ?? this.answerMs) + wireMs;
    const answer = new Promise<unknown>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending = undefined;
        reject(new SerialError(this.heardAnything
          ? `the device on ${this.path} did not answer within ${(wait / 1000).toFixed(1)} s`
          : `no device answered on ${this.path} within ${(wait / 1000).toFixed(1)} s (is it powered, at ${this.baudRate} baud, with its console on this port?)`));
      }, wait);
      this.pending = { seq, resolve, reject, timer };
    });
    answer.catch(() => {}); // observed below; keeps a failed send from leaving it unhandled
    try {
      await this.send(line);
    } catch (e) {
      this.settle((p) => p.reject(e as Error));
    }
    const v = await answer.catch((e: Error) => {
      if (secret && !(e instanceof SerialError)) throw new SerialError("the device refused the request");
      throw e;
    });
    return v as T;
  }

  /** Sends a line with echo off and gives the device `settleMs` to act on it, without waiting for an
   *  answer: for reset() and E.reboot(), after which the interpreter that would answer is gone. */
  async command(code: string, settleMs = 300): Promise<void> {
    if (this.closedBecause) throw new SerialError(this.closedBecause);
    await this.send(`\x10${code}\n`);
    await sleep(settleMs);
    this.rx = "";
  }

  /** Waits until the device answers again (after a reset or reboot). */
  async waitForPrompt(timeoutMs: number): Promise<void> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      try {
        await this.call("1", Math.min(1000, Math.max(100, until - Date.now())));
        return;
      } catch (e) {
        if (!(e instanceof SerialError) || !this.open || Date.now() >= until) {
          throw e instanceof SerialError && this.open
            ? new SerialError(`the device on ${this.path} did not come back within ${(timeoutMs / 1000).toFixed(1)} s`)
            : e;
        }
      }
    }
  }

  /** Writes a whole Storage file in chunks: the first creates it at its full size (Espruino then only
   *  fills in the erased flash, it never rewrites a page per chunk), the rest fill it in. Then checks
   *  the device's CRC of what it stored. onChunk(bytesWritten) reports progress. */
  async writeFile(name: string, data: Uint8Array, onChunk?: (written: number) => void, secret = false): Promise<void> {
    const n = JSON.stringify(name);
    if (data.length === 0) {
      await this.call(`require("Storage").write(${n},"")`, undefined, secret);
    }
    for (let off = 0; off < data.length; off += CHUNK_BYTES) {
      const chunk = jsByteString(data.subarray(off, off + CHUNK_BYTES));
      const args = off === 0 ? `${n},${chunk},0,${data.length}` : `${n},${chunk},${off}`;
      const ok = await this.call(`require("Storage").write(${args})`, undefined, secret);
      if (ok !== true) throw new SerialError(`the device could not write ${name} at offset ${off} (Storage full?)`);
      onChunk?.(Math.min(off + CHUNK_BYTES, data.length));
    }
  }

  /** The device's CRC-32 of a Storage file (unsigned), or null when the file does not exist. */
  async fileCrc(name: string): Promise<number | null> {
    const n = JSON.stringify(name);
    const v = await this.call<number | null>(`(function(s){return s===undefined?null:E.CRC32(s)>>>0;})(require("Storage").read(${n}))`);
    return v === null ? null : v >>> 0;
  }

  async close(): Promise<void> {
    this.fail("the serial line was closed");
    if (!this.port.isOpen) return;
    // Bounded like send(): a port whose line died may never report the close.
    await new Promise<void>((r) => {
      const timer = setTimeout(r, this.answerMs);
      this.port.close(() => {
        clearTimeout(timer);
        r();
      });
    });
  }

  // ---- internals ------------------------------------------------------------------------------

  /** Writes s and waits until it has left. Bounded: on a line that died mid-write the write or drain
   *  callback may never come, and an unbounded wait would hang the caller with nothing left to wake
   *  it; so after the time the bytes need on the wire plus the answer time it fails with a clear error. */
  private send(s: string): Promise<void> {
    const limitMs = this.answerMs + Math.ceil((s.length * 10 * 1000) / this.baudRate);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new SerialError(`cannot write to ${this.path}: the line did not take the bytes within ${(limitMs / 1000).toFixed(1)} s`)), limitMs);
      const done = (e?: Error | null) => {
        clearTimeout(timer);
        if (e) reject(new SerialError(`cannot write to ${this.path}: ${e.message}`));
        else resolve();
      };
      this.port.write(Buffer.from(s, "latin1"), (err) => (err ? done(err) : this.port.drain((e) => done(e))));
    });
  }

  private receive(s: string): void {
    this.heardAnything = true;
    this.rx += s;
    const p = this.pending;
    if (!p) {
      // Nobody is asking: keep only a tail, in case an answer's start arrived early.
      if (this.rx.length > 4096) this.rx = this.rx.slice(-1024);
      return;
    }
    const ok = new RegExp(`<kp${p.seq}>([\\s\\S]*?)</kp${p.seq}>`).exec(this.rx);
    const err = new RegExp(`<kp${p.seq}!>([\\s\\S]*?)</kp${p.seq}!>`).exec(this.rx);
    if (ok) {
      this.rx = this.rx.slice(ok.index + ok[0].length);
      let value: unknown;
      try {
        value = ok[1] === "undefined" ? undefined : JSON.parse(ok[1]);
      } catch {
        this.settle((q) => q.reject(new SerialError(`garbled answer from the device on ${this.path}`)));
        return;
      }
      this.settle((q) => q.resolve(value));
    } else if (err) {
      this.rx = this.rx.slice(err.index + err[0].length);
      this.settle((q) => q.reject(new Error(`the device says: ${err[1].slice(0, 200)}`)));
    } else if (this.rx.length > 1 << 20) {
      this.rx = this.rx.slice(-4096);
    }
  }

  private settle(fn: (p: Pending) => void): void {
    const p = this.pending;
    if (!p) return;
    this.pending = undefined;
    clearTimeout(p.timer);
    fn(p);
  }

  private fail(why: string): void {
    if (this.closedBecause === undefined) this.closedBecause = why;
    this.settle((p) => p.reject(new SerialError(why)));
  }
}
