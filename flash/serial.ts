// The host side of an Espruino console: open the line (a serial port, or the Nordic UART over
// Bluetooth LE: flash/console-line.ts, flash/ble-line.ts), stop what runs, ask the interpreter
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
// Espruino's serial ports speak; over Bluetooth each write is acknowledged by the device.
// Files go as Storage.write lines over serial and, where the device's Espruino has it (2v25+), as
// packets over Bluetooth (flash/upload-packets.ts): raw bytes, no JavaScript to parse per chunk.

import type { Noble } from "../gateway/ble/noble-api.ts";
import { zlib } from "../gateway/link/crc32.ts";
import { blePortTarget, openBleLine } from "./ble-line.ts";
import { openSerialLine, type ConsoleLine } from "./console-line.ts";
import { SerialError } from "./port-errors.ts";
import { exchangePacket, sendFilePackets, type PacketLine } from "./upload-packets.ts";

export { SerialError };

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

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

interface Pending {
  seq: number;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export interface OpenOptions {
  /** A serial device, or `ble:<name or address>` for the Nordic UART over Bluetooth LE. */
  path: string;
  /** For a serial device. */
  baudRate: number;
  /** Default FIRST_ANSWER_MS. */
  firstAnswerMs?: number;
  /** Default ANSWER_MS. */
  answerMs?: number;
  /** For a `ble:` port: the BLE library, or a test double at its API (default @stoprocent/noble). */
  noble?: Noble;
  /** Write files with Espruino's packet protocol (2v25+) instead of Storage.write lines. Default: over
   *  Bluetooth when the device's Espruino has it, never over serial (flash/upload-packets.ts). */
  packets?: boolean;
}

/** The first Espruino that takes files as packets (EspruinoTools core/codeWriter.js hasPacketUpload). */
export function hasPacketUpload(version: string): boolean {
  const m = /^(\d+)v(\d+)/.exec(version);
  return !!m && (Number(m[1]) > 2 || (Number(m[1]) === 2 && Number(m[2]) >= 25));
}

export class EspruinoSerial {
  private rx = "";
  private seq = 0;
  private pending: Pending | undefined;
  private heardAnything = false;
  private closedBecause: string | undefined;
  /** Waiting for the device's ACK (true) or NAK (false) of a packet, or the line's failure. */
  private packetReply: ((answer: boolean | Error) => void) | undefined;
  /** Whether files go as packets; undefined: decided at the first file, from the device's version. */
  private packets: boolean | undefined;
  readonly answerMs: number;
  /** What the user named: a serial device or a `ble:` port. */
  readonly path: string;

  private constructor(
    private readonly line: ConsoleLine,
    answerMs: number,
    packets: boolean | undefined,
  ) {
    this.answerMs = answerMs;
    this.path = line.name;
    this.packets = packets;
    line.onData((s) => this.receive(s));
    line.onClose((why) => this.fail(why));
  }

  /** Opens the line and makes sure an Espruino interpreter answers on it (Ctrl-C first, so a
   *  half-typed line or a running loop does not swallow the question). */
  static async open(o: OpenOptions): Promise<EspruinoSerial> {
    const answerMs = o.answerMs ?? ANSWER_MS;
    const ble = blePortTarget(o.path) !== undefined;
    const line = ble ? await openBleLine(o.path, { noble: o.noble }) : await openSerialLine(o.path, o.baudRate, answerMs);
    // Over serial, files go as Storage.write lines unless asked otherwise: the way every keyproxy
    // release has flashed, proven on each board. Over Bluetooth, packets where the device has them.
    const link = new EspruinoSerial(line, answerMs, o.packets ?? (ble ? undefined : false));
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
    return this.closedBecause === undefined && this.line.isOpen;
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
    // Time for the bytes to cross the line on top of the device's own time.
    const wireMs = this.wireMs(line.length);
    const wait = (timeoutMs ?? this.answerMs) + wireMs;
    const answer = new Promise<unknown>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending = undefined;
        reject(new SerialError(this.heardAnything
          ? `the device on ${this.path} did not answer within ${(wait / 1000).toFixed(1)} s`
          : `no device answered on ${this.path} within ${(wait / 1000).toFixed(1)} s (${this.line.silenceHint})`));
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
    if (data.length > 0 && (await this.usePackets())) {
      if (this.closedBecause) throw new SerialError(this.closedBecause);
      await sendFilePackets(this.packetLine(), name, data, CHUNK_BYTES, onChunk);
      return;
    }
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

  /** Sends one raw packet (flash/upload-packets.ts) and resolves with the device's answer: true for
   *  ACK, false for NAK. For checking a device's packet handling; files go through writeFile. */
  async sendPacket(type: number, payload: Uint8Array): Promise<boolean> {
    if (this.closedBecause) throw new SerialError(this.closedBecause);
    return exchangePacket(this.packetLine(), type, payload);
  }

  /** The device's CRC-32 of a Storage file (unsigned), or null when the file does not exist. */
  async fileCrc(name: string): Promise<number | null> {
    const n = JSON.stringify(name);
    const v = await this.call<number | null>(`(function(s){return s===undefined?null:E.CRC32(s)>>>0;})(require("Storage").read(${n}))`);
    return v === null ? null : v >>> 0;
  }

  async close(): Promise<void> {
    this.fail("the line was closed");
    await this.line.close();
  }

  // ---- internals ------------------------------------------------------------------------------

  private wireMs(bytes: number): number {
    return Math.ceil((bytes * 1000) / this.line.bytesPerSecond);
  }

  /** Packets if asked for; else decided once, from the Espruino version the device reports. */
  private async usePackets(): Promise<boolean> {
    if (this.packets === undefined) {
      const version = await this.call<string | undefined>("process.env.VERSION");
      this.packets = hasPacketUpload(String(version ?? ""));
    }
    return this.packets;
  }

  /** What the packet sender needs of this line: send bytes, await the device's ACK or NAK. */
  private packetLine(): PacketLine {
    return {
      name: this.path,
      send: (bytes) => this.send(Buffer.from(bytes).toString("latin1")),
      reply: (timeoutMs) => new Promise<boolean>((resolve, reject) => {
        if (this.closedBecause) return reject(new SerialError(this.closedBecause));
        const timer = setTimeout(() => settle(new SerialError(`the device on ${this.path} did not acknowledge a packet within ${(timeoutMs / 1000).toFixed(1)} s`)), timeoutMs);
        const settle = (answer: boolean | Error) => {
          clearTimeout(timer);
          this.packetReply = undefined;
          if (answer instanceof Error) reject(answer);
          else resolve(answer);
        };
        this.packetReply = settle;
      }),
      replyMs: (bytes) => this.answerMs + this.wireMs(bytes),
    };
  }

  /** Writes s and waits until it has left. Bounded: on a line that died mid-write the write or drain
   *  callback may never come, and an unbounded wait would hang the caller with nothing left to wake
   *  it; so after the time the bytes need on the wire plus the answer time it fails with a clear error. */
  private send(s: string): Promise<void> {
    const limitMs = this.answerMs + this.wireMs(s.length);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new SerialError(`cannot write to ${this.path}: the line did not take the bytes within ${(limitMs / 1000).toFixed(1)} s`)), limitMs);
      const done = (e?: Error | null) => {
        clearTimeout(timer);
        // A write that fails is a line that went away under it (EIO on a pty or a USB adapter pulled):
        // said as the lost line it is, whether the close event came first or not.
        if (e) reject(new SerialError(this.closedBecause ?? `the line to ${this.path} was lost while writing (${e.message})`));
        else resolve();
      };
      this.line.write(Buffer.from(s, "latin1")).then(() => done(), (e: Error) => done(e));
    });
  }

  private receive(s: string): void {
    this.heardAnything = true;
    if (this.packetReply) {
      // ACK (0x06) or NAK (0x15): Espruino's only answers to a file packet (src/jsinteractive.c).
      const m = /[\x06\x15]/.exec(s);
      if (m) this.packetReply(m[0] === "\x06");
    }
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
    this.packetReply?.(new SerialError(why));
  }
}
