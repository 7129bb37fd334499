// The line to an Espruino console that `keyproxy flash` and `keyproxy provision` speak over: a serial
// port (a USB-serial adapter, a board's USB CDC, Serial1 on a Puck.js's D28/D29) or the Nordic UART
// over Bluetooth LE (flash/ble-line.ts). flash/serial.ts's EspruinoSerial speaks the REPL protocol
// over either, unchanged: only how bytes move, how fast, and what to say when nobody answers differ.

import { SerialPort } from "serialport";
import { openError } from "./port-errors.ts";

export interface ConsoleLine {
  /** What the user named (`/dev/ttyACM0`, `ble:kp-alice`): for messages. */
  readonly name: string;
  /** Bytes a second the line carries at best: for how long a write or an answer may take. */
  readonly bytesPerSecond: number;
  /** Why a device may be silent on this line, in words that name what to check. */
  readonly silenceHint: string;
  readonly isOpen: boolean;
  /** Resolves when the bytes have left (handed to the tty and drained, or acknowledged by the radio). */
  write(bytes: Buffer): Promise<void>;
  onData(fn: (s: string) => void): void;
  /** The line went away on its own (cable cut, radio out of range): why, in words. */
  onClose(fn: (why: string) => void): void;
  close(): Promise<void>;
}

/** A serial port at baudRate, locked for this process (two programs on one console interleave their
 *  lines, and two flashers corrupt the device). */
export async function openSerialLine(path: string, baudRate: number, closeWaitMs: number): Promise<ConsoleLine> {
  const port = await new Promise<SerialPort>((resolve, reject) => {
    // lock: an exclusive flock(2) on the tty (serialport's default, asked for here so that it stays).
    // XON/XOFF: Espruino's serial ports speak it.
    const p = new SerialPort({ path, baudRate, xon: true, xoff: true, lock: true, autoOpen: false });
    p.open((err) => (err ? reject(openError(path, err)) : resolve(p)));
  });
  return {
    name: path,
    bytesPerSecond: baudRate / 10, // 8N1: ten bits a byte
    silenceHint: `is it powered, at ${baudRate} baud, with its console on this port?`,
    get isOpen() {
      return port.isOpen;
    },
    write: (bytes) => new Promise((resolve, reject) => {
      port.write(bytes, (err) => (err ? reject(err) : port.drain((e) => (e ? reject(e) : resolve()))));
    }),
    onData: (fn) => port.on("data", (d: Buffer) => fn(d.toString("latin1"))),
    onClose: (fn) => {
      port.on("close", () => fn(`the serial line to ${path} closed`));
      port.on("error", (e: Error) => fn(`serial error on ${path}: ${e.message}`));
    },
    close: async () => {
      if (!port.isOpen) return;
      // Bounded: a port whose line died may never report the close.
      await new Promise<void>((r) => {
        const timer = setTimeout(r, closeWaitMs);
        port.close(() => {
          clearTimeout(timer);
          r();
        });
      });
    },
  };
}
