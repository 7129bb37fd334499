// A serial line that fails under a write (EIO on a pty whose other end went away, a USB adapter pulled)
// is reported as the lost line it is, whether or not the port's close event came first: found by a
// fresh-clone CI run, where the cut-line flash test over a pty got "cannot write to /dev/pts/0: Error:
// Input/output error, cannot drain" instead of a message that names the lost line.

import { test } from "node:test";
import assert from "node:assert/strict";
import { EspruinoSerial, SerialError } from "../flash/serial.ts";
import type { ConsoleLine } from "../flash/console-line.ts";

/** A line that takes `good` writes, then fails every write as a vanished tty does. */
function failingLine(good: number, closeFirst?: (why: string) => void): ConsoleLine & { closers: ((why: string) => void)[] } {
  let writes = 0;
  const closers: ((why: string) => void)[] = [];
  return {
    name: "/dev/ttyFAKE", bytesPerSecond: 11_520, silenceHint: "check the cable", isOpen: true, closers,
    write: async () => {
      if (++writes > good) {
        closeFirst?.("the line was closed");
        throw new Error("Input/output error, cannot drain");
      }
    },
    onData: () => undefined,
    onClose: (fn) => void closers.push(fn),
    close: async () => undefined,
  };
}

const open = (line: ConsoleLine) => new (EspruinoSerial as unknown as new (l: ConsoleLine, answerMs: number, packets: boolean) => EspruinoSerial)(line, 2000, false);

test("a write that fails is said as a lost line, naming the port and the system's reason", async () => {
  const link = open(failingLine(0));
  await assert.rejects(link.interrupt(), (e: unknown) => e instanceof SerialError && e.message === "the line to /dev/ttyFAKE was lost while writing (Input/output error, cannot drain)");
});

test("when the close event came first, its reason is the one given", async () => {
  const line = failingLine(0, (why) => { for (const fn of line.closers) fn(why); });
  const link = open(line);
  await assert.rejects(link.interrupt(), (e: unknown) => e instanceof SerialError && e.message === "the line was closed");
});
