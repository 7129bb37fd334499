// The real-interpreter tier: Espruino's file packets (2v25+), which `keyproxy flash` and `keyproxy
// provision` use over Bluetooth (flash/upload-packets.ts), sent by the host's own code to the real
// interpreter over a pseudo-terminal, and the same to the emulator's console (emulator/serial.ts), which
// must answer the same: the emulator is where the Bluetooth tests run (test/serial.test.ts "over ble").
// A packet cut short is answered NAK after Espruino's 5 s, and the REPL is back.
import assert from "node:assert/strict";
import { SerialPort } from "serialport";
import { crc32, EspruinoSerial } from "../flash/serial.ts";
import { PT_DATA, PT_FILE_SEND } from "../flash/upload-packets.ts";
import { notePacketUnanswered, PACKET_UNANSWERED, RealDevice } from "../interpreter/device.ts";
import { INTERPRETER_ANSWER_MS } from "../interpreter/handsets.ts";
import { consoleHandset } from "./support/console-handset.ts";
import { tempDir } from "./support/harness.ts";
import { realTest } from "./support/real.ts";

/** Every byte value, control bytes included (DLE, SOH, XON/XOFF, ACK, NAK, ESC, NUL), over several
 *  packets; but the two at which the Linux build may exit, and a board never does
 *  (docs/INTERPRETER.md, "Packets"): 0x04, on which it exits whatever it is reading (jshInputThread,
 *  targets/linux/jshardware.c), and 0x03, which it takes for Ctrl-C when it reads it before it has taken
 *  the packet's start, and then exits as for a second Ctrl-C within 5 s (jsiLoop, `#ifndef EMBEDDED`).
 *  keyproxy's files (the ASCII bundle, kp.cfg's JSON) hold neither. */
const FILE = new Uint8Array(1300).map((_, i) => (i * 7 + (i >> 8)) & 0xff).map((b) => (b === 0x03 || b === 0x04 ? 0x05 : b));
const json = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));

/** What a console answers to the packets keyproxy sends, and to the ones it must refuse. */
async function packetAnswers(tty: string): Promise<Record<string, unknown>> {
  const link = await EspruinoSerial.open({ path: tty, baudRate: 115200, answerMs: INTERPRETER_ANSWER_MS, firstAnswerMs: INTERPRETER_ANSWER_MS, packets: true });
  try {
    const out: Record<string, unknown> = {};
    await link.writeFile("kp.pkt", FILE);
    out.crcMatches = (await link.fileCrc("kp.pkt")) === crc32(FILE);
    out.firstAndLast = await link.call(`(function(s){return [s.charCodeAt(0),s.charCodeAt(3),s.charCodeAt(${FILE.length - 1}),s.length];})(require("Storage").read("kp.pkt"))`);
    // The REPL is still there after the packets, and echo-free lines still answer.
    out.replyAfter = await link.call("1+1");
    // DATA with no file announced: refused.
    out.dataWithoutFile = await link.sendPacket(PT_DATA, new Uint8Array([1, 2, 3]));
    // A file of size 0, or no name: refused.
    out.sizeZero = await link.sendPacket(PT_FILE_SEND, json({ fn: "kp.zero", s: 0 }));
    out.noName = await link.sendPacket(PT_FILE_SEND, json({ s: 4 }));
    // More than Storage holds: announced fine, and the data ACKed although nothing could be stored
    // (src/jsinteractive.c `ok |= jsfWriteFile(...)`): only the CRC check tells.
    out.hugeAnnounced = await link.sendPacket(PT_FILE_SEND, json({ fn: "kp.huge", s: 4_000_000 }));
    out.hugeData = await link.sendPacket(PT_DATA, new Uint8Array(64).fill(0x41));
    out.hugeStored = await link.fileCrc("kp.huge");
    return out;
  } finally {
    await link.close();
  }
}

/** A packet cut short (its header says 10 bytes, 3 come): within Espruino's 5 s the console answers
 *  NAK and is back at the REPL, so lines typed after a cut transfer run again. What it printed. */
async function cutPacket(tty: string): Promise<{ nak: boolean; after: boolean }> {
  const port = await new Promise<SerialPort>((resolve, reject) => {
    const p = new SerialPort({ path: tty, baudRate: 115200, autoOpen: false });
    p.open((err) => (err ? reject(err) : resolve(p)));
  });
  try {
    let seen = "";
    port.on("data", (d: Buffer) => (seen += d.toString("latin1")));
    const until = async (what: RegExp, ms: number) => {
      const end = Date.now() + ms;
      while (!what.test(seen) && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
      return what.test(seen);
    };
    port.write(Buffer.from("\x10\x01\x80\x0aabc", "latin1"));
    const nak = await until(/\x15/, 12_000);
    port.write(Buffer.from('\x10print("back "+(20+22))\n', "latin1"));
    const after = await until(/back 42/, 12_000);
    return { nak, after };
  } finally {
    await new Promise<void>((r) => port.close(() => r()));
  }
}

realTest("puckjs: file packets land byte for byte, and the emulator's console answers every packet as the interpreter does", ["puckjs"], async () => {
  const dev = new RealDevice({ board: "puckjs", dir: tempDir("kp-real-pkt-"), name: "pkt" });
  await dev.start();
  let real: Record<string, unknown>;
  try {
    real = await dev.withSerial(async (tty) => ({ ...(await packetAnswers(tty)), cut: await cutPacket(tty) }));
  } catch (e) {
    // No ACK and no NAK from a live interpreter: the packet's start was lost on the way in (the host's
    // console thread, docs/INTERPRETER.md), which realTest runs again after; anything else fails.
    if (e instanceof Error && PACKET_UNANSWERED.test(e.message)) notePacketUnanswered();
    throw e;
  } finally {
    await dev.powerOff();
  }
  assert.deepEqual(real, {
    crcMatches: true,
    firstAndLast: [FILE[0], FILE[3], FILE[FILE.length - 1], FILE.length],
    replyAfter: 2,
    dataWithoutFile: false,
    sizeZero: false,
    noName: false,
    hugeAnnounced: true,
    hugeData: true,
    hugeStored: null,
    cut: { nak: true, after: true },
  });

  const emulated = await consoleHandset("pty", "pkt");
  try {
    assert.deepEqual({ ...(await packetAnswers(emulated.port)), cut: await cutPacket(emulated.port) }, real);
  } finally {
    await emulated.stop();
  }
});
