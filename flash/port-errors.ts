// Errors about the line to a device's console, in words that name the fix.

import { existsSync } from "node:fs";
import { describeHolders, describePorts, DIALOUT_HINT } from "./ports.ts";

/** The line to the device failed: it would not open, closed, or the device did not answer. */
export class SerialError extends Error {}

/** Why a serial port would not open. */
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
