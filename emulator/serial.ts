// The emulated handset's serial console, behind a real pseudo-terminal, so that `keyproxy flash` and
// `keyproxy provision` (and a person with a terminal program) reach it exactly as they reach a Puck.js
// on Serial1 or an ESP32 on its USB serial.
//
// Why a python3 helper: Node has no pty API (opening /dev/ptmx needs grantpt/unlockpt). socat would do
// (`socat pty,raw,echo=0 ...`), but it is one more Debian package for CI to install, and it gives two
// pty ends, one of which the emulator would then have to open as a tty itself. python3's `pty` module
// is on every machine that builds better-sqlite3 and gives us exactly one pty: the helper holds the
// master, relays it to its stdin/stdout (pipes to us), and prints the slave's path, which the client
// opens with the real `serialport` package. The helper also holds the slave open, so the client can
// close and reopen the port (as after a cut cable) without the master seeing a hang-up; killing the
// helper is a cut cable.
//
// The console models the part of Espruino's REPL the tools use (docs/OPERATIONS.md, "The emulated
// handset's serial console"): bytes are echoed as typed; a line is run at \r or \n; a line that starts with \x10 runs
// with echo off (no echo, no "=result", no prompt); Ctrl-C (\x03) drops the line typed so far; a line
// run with echo on prints "=" and its value, then the prompt ">". Uncaught exceptions and everything
// the device prints go to the console too. reset(), load() and E.reboot() are recognised as whole
// lines (they restart the interpreter, which the world cannot do from inside): reset() brings up a
// fresh interpreter that runs .boot0-.boot3 but not .bootcde, as Espruino 2v00+ does; load() and
// E.reboot() boot everything, .bootcde included.
// Packets (Espruino 2v25+, src/jsinteractive.c): DLE SOH, two bytes of type and length, the payload.
// FILE_SEND ({"fn","s"}) and DATA write a file as Espruino does, answering ACK or NAK; as on Espruino a
// DATA packet is ACKed even when Storage could not take it (`ok |= jsfWriteFile(...)`), which only the
// file's CRC then shows. A packet not complete 5 s after its start is answered NAK and dropped, as
// on Espruino. The other packet types (EVAL, EVENT, FILE_RECV) are answered NAK: not modelled
// (docs/EMULATOR.md), and keyproxy does not send them.

import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import type { EmulatedDevice } from "./device.ts";

const ACK = "\x06";
const NAK = "\x15";
const PT_TYPE_MASK = 0xe000;
const PT_SIZE_MASK = 0x1fff;
const PT_FILE_SEND = 0x6000;
const PT_DATA = 0x8000;

/** A packet being received: its two header bytes, then its payload. */
interface PacketIn {
  header: number[];
  data: number[];
  /** Espruino gives a packet 5 s from its start, then answers NAK and goes back to the REPL
   *  (jsiPacketTimeoutHandler): a cut transfer does not leave the console swallowing lines. */
  timeout: NodeJS.Timeout;
}

/** How long Espruino waits for the rest of a packet (src/jsinteractive.c, jsiPacketStart). */
export const PACKET_TIMEOUT_MS = 5000;

/** The file a FILE_SEND packet announced, filled in by DATA packets. */
interface FileUpload {
  fn: string;
  size: number;
  offset: number;
}

const PTY_HELPER = `
import os, pty, select, sys, tty
master, slave = pty.openpty()
tty.setraw(slave)
sys.stdout.write(os.ttyname(slave) + "\\n")
sys.stdout.flush()
out, inp = sys.stdout.fileno(), sys.stdin.fileno()
while True:
    ready, _, _ = select.select([master, inp], [], [])
    if master in ready:
        data = os.read(master, 4096)
        if not data:
            break
        os.write(out, data)
    if inp in ready:
        data = os.read(inp, 4096)
        if not data:
            break
        os.write(master, data)
`;

/** Whole-line commands the console handles itself. */
const RESTART = /^\s*(reset|load|E\.reboot)\(\)\s*;?\s*$/;

function formatValue(v: unknown): string {
  if (v === undefined) return "undefined";
  if (typeof v === "string") return JSON.stringify(v);
  if (typeof v === "function") return "function () {...}";
  if (v instanceof Uint8Array) return `new Uint8Array([${Array.from(v).join(", ")}])`;
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return String(v);
  }
}

/** Espruino's console for one emulated device, speaking through `write`. */
export class SerialConsole {
  private line = "";
  private echoOff = false;
  /** Lines run one after another: a restart is asynchronous. */
  private queue: Promise<void> = Promise.resolve();
  private readonly onLog = (l: string) => this.write(`${l}\r\n`);
  private closed = false;
  /** The last byte was DLE: SOH now starts a packet. */
  private hadDle = false;
  private packet: PacketIn | undefined;
  private upload: FileUpload | undefined;

  constructor(
    readonly device: EmulatedDevice,
    private readonly write: (s: string) => void,
  ) {
    device.on("log", this.onLog);
  }

  /** Bytes from the serial line. */
  input(s: string): void {
    for (const ch of s) {
      if (this.packet) {
        this.packetByte(ch.charCodeAt(0));
        continue;
      }
      if (ch === "\x01" && this.hadDle) {
        this.hadDle = false;
        // Espruino turns echo back on for a packet sent on an empty line (DLE had turned it off).
        if (this.line === "") this.echoOff = false;
        const timeout = setTimeout(() => {
          this.packet = undefined;
          if (!this.closed) this.write(NAK);
        }, PACKET_TIMEOUT_MS);
        timeout.unref();
        this.packet = { header: [], data: [], timeout };
        continue;
      }
      this.hadDle = ch === "\x10";
      if (ch === "\x03") {
        this.line = "";
        this.echoOff = false;
      } else if (ch === "\x10" && this.line === "") {
        this.echoOff = true;
      } else if (ch === "\r" || ch === "\n") {
        if (this.line === "" && !this.echoOff) continue;
        const code = this.line;
        const echo = !this.echoOff;
        this.line = "";
        this.echoOff = false;
        if (echo) this.write("\r\n");
        this.queue = this.queue.then(() => this.run(code, echo)).catch((e: Error) => this.write(`Uncaught ${e.message}\r\n`));
      } else {
        this.line += ch;
        if (!this.echoOff) this.write(ch);
      }
    }
  }

  private packetByte(b: number): void {
    const p = this.packet!;
    if (p.header.length < 2) p.header.push(b);
    else p.data.push(b);
    const flags = p.header.length === 2 ? (p.header[0] << 8) | p.header[1] : -1;
    if (flags < 0 || p.data.length < (flags & PT_SIZE_MASK)) return;
    this.packet = undefined;
    clearTimeout(p.timeout);
    const data = new Uint8Array(p.data);
    // After the lines before it, as Espruino handles its input in order.
    this.queue = this.queue.then(() => this.runPacket(flags & PT_TYPE_MASK, data));
  }

  private runPacket(type: number, data: Uint8Array): void {
    if (this.closed) return;
    if (type === PT_FILE_SEND) {
      this.upload = undefined;
      let head: { fn?: unknown; s?: unknown } | undefined;
      try {
        head = JSON.parse(Buffer.from(data).toString("latin1")) as typeof head;
      } catch {
        head = undefined;
      }
      const ok = !!head && typeof head === "object" && typeof head.fn === "string" && Number(head.s) !== 0 && Number.isInteger(Number(head.s));
      if (ok) this.upload = { fn: head!.fn as string, size: Number(head!.s), offset: 0 };
      this.write(ok ? ACK : NAK);
    } else if (type === PT_DATA && this.upload) {
      const u = this.upload;
      try {
        this.device.writeFilePacket(u.fn, data, u.offset, u.size);
      } catch {
        // Espruino ACKs anyway (see the head of this file): the CRC check finds it.
      }
      u.offset += data.length;
      if (u.offset >= u.size) this.upload = undefined;
      this.write(ACK);
    } else {
      this.write(NAK);
    }
  }

  /** Resolves when every line received so far has run. */
  idle(): Promise<void> {
    return this.queue;
  }

  close(): void {
    this.closed = true;
    if (this.packet) clearTimeout(this.packet.timeout);
    this.device.off("log", this.onLog);
  }

  private async run(code: string, echo: boolean): Promise<void> {
    if (this.closed) return;
    const dev = this.device;
    const restart = RESTART.exec(code);
    if (restart) {
      await restartDevice(dev, restart[1] === "reset");
      if (echo) this.write(">");
      return;
    }
    if (!dev.running) await dev.boot();
    try {
      const v = dev.eval(code);
      if (echo) this.write(`=${formatValue(v)}\r\n>`);
    } catch (e) {
      this.write(`${(e as Error).message}\r\n`);
      if (echo) this.write(">");
    }
  }
}

/** A fresh interpreter; `skipBootcde` is Espruino's reset(): .boot0-.boot3 run, .bootcde does not.
 *  EmulatedDevice.boot() always runs .bootcde, so for reset() it is hidden from that one boot. */
async function restartDevice(dev: EmulatedDevice, skipBootcde: boolean): Promise<void> {
  dev.powerOff();
  if (!skipBootcde) return dev.boot();
  // EmulatedDevice reads its boot files through its host Storage; hide .bootcde for this boot only.
  const store = (dev as unknown as { store: { read(name: string): Uint8Array | undefined } }).store;
  const read = store.read;
  store.read = (name: string) => (name === ".bootcde" ? undefined : read.call(store, name));
  try {
    await dev.boot();
  } finally {
    store.read = read;
  }
}

/** One pseudo-terminal: `path` is the end a serial client opens; we hold the other end. */
export interface Pty {
  path: string;
  /** Bytes to the client. */
  write(s: string): void;
  /** Bytes from the client. */
  onData(fn: (s: string) => void): void;
  /** Cuts the cable: the helper dies, the client sees its port close. */
  cut(): void;
  close(): Promise<void>;
}

export async function openPty(): Promise<Pty> {
  const helper: ChildProcessWithoutNullStreams = spawn("python3", ["-c", PTY_HELPER], { stdio: ["pipe", "pipe", "pipe"] });
  const exited = new Promise<void>((r) => helper.once("exit", () => r()));
  helper.stdin.on("error", () => {}); // EPIPE after a cut
  const path = await new Promise<string>((resolve, reject) => {
    let head = Buffer.alloc(0);
    let stderr = "";
    helper.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    helper.once("error", (e) => reject(new Error(`cannot start python3 for the pty: ${e.message}`)));
    helper.once("exit", (code) => reject(new Error(`pty helper exited (${code}): ${stderr.trim()}`)));
    const onData = (d: Buffer) => {
      head = Buffer.concat([head, d]);
      const nl = head.indexOf(10);
      if (nl < 0) return;
      helper.stdout.off("data", onData);
      helper.stdout.pause();
      resolve(head.subarray(0, nl).toString());
      if (head.length > nl + 1) helper.stdout.unshift(head.subarray(nl + 1));
    };
    helper.stdout.on("data", onData);
  });
  const alive = () => helper.exitCode === null && helper.signalCode === null;
  return {
    path,
    write: (s) => {
      if (alive() && !helper.stdin.destroyed) helper.stdin.write(Buffer.from(s, "latin1"));
    },
    onData: (fn) => {
      helper.stdout.on("data", (d: Buffer) => fn(d.toString("latin1")));
      helper.stdout.resume();
    },
    cut: () => {
      if (alive()) helper.kill("SIGKILL");
    },
    close: async () => {
      if (!alive()) return;
      helper.stdin.end();
      helper.kill("SIGTERM");
      await exited;
    },
  };
}

export interface PtyHandset {
  /** The pty's slave path, e.g. /dev/pts/7: what `keyproxy flash --port` opens. */
  path: string;
  console: SerialConsole;
  /** Cuts the cable: the helper dies, the client sees its port close. */
  cut(): void;
  /** Ends the console and the helper; the device keeps running (power it off yourself). */
  close(): Promise<void>;
}

/** Puts a device's serial console behind a new pseudo-terminal (booting the device if it is off). */
export async function attachPty(device: EmulatedDevice): Promise<PtyHandset> {
  const pty = await openPty();
  const console = new SerialConsole(device, (s) => pty.write(s));
  pty.onData((s) => console.input(s));
  if (!device.running) await device.boot();
  return {
    path: pty.path,
    console,
    cut: () => {
      console.close();
      pty.cut();
    },
    close: async () => {
      console.close();
      await pty.close();
    },
  };
}
