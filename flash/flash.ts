// Flashing: a firmware bundle into a device's Storage as .bootcde, over its serial console, so that the
// device boots it.
//
// Espruino's Storage has no rename, so "write a new file, then switch" has to be a copy. We make the
// copy the only moment the old firmware is at risk, and make it short and local to the device:
//   1. the bundle goes into a staging file (STAGING_FILE) over the slow serial line, chunk by chunk,
//      and is checked by the device's own E.CRC32; the running .bootcde is not touched while the
//      seconds-long transfer happens, so a cut cable or a bad chunk leaves the old firmware whole;
//   2. one line then has the device copy the staging file into .bootcde itself
//      (`s.write(".bootcde", s.read(staging))`: flash to flash, the staging file is memory-mapped, no
//      RAM copy), and we check .bootcde's CRC. Only a power cut during that copy (milliseconds) can
//      leave .bootcde damaged, and the verified staging file is still there to copy again;
//   3. the staging file is erased and the device rebooted into the new firmware.
// Room: the staging file must fit next to the old .bootcde (we compact() first when that makes room).
// When the new .bootcde also fits beside them, the copy is one write (Espruino erases the old file and
// writes the new one). When it does not (a full-size bundle in a Puck.js's 40 KB), the same device-side
// line erases the old .bootcde and compacts before copying: the window without a bootable .bootcde is
// then the compaction plus the copy, still on the device alone, with the verified staging file kept.
// The copy never runs while a compaction could move the staging file under it: compact() comes first
// in the line, read() after it.

import type { Noble } from "../gateway/ble/noble-api.ts";
import { getBoard, type BoardProfile } from "../boards/index.ts";
import { CHUNK_BYTES, crc32, ESPRUINO_BOARD, EspruinoSerial, SerialError, SIZED_LINUX_BOARD } from "./serial.ts";

export const BOOT_FILE = ".bootcde";
export const STAGING_FILE = "kp.fw.new";
/** Espruino's per-file flash cost: a 32-byte header, data rounded up to 4 bytes. */
const flashCost = (bytes: number) => 32 + Math.ceil(bytes / 4) * 4;

export class FlashError extends Error {}

/** The caller's signal fired (Ctrl-C): we stopped between two lines, with the device idle at its
 *  prompt, and the message says what it holds. `flashAgain`: whether the firmware still has to go on. */
export class FlashInterrupted extends FlashError {
  constructor(message: string, readonly flashAgain: boolean) {
    super(message);
  }
}

export type FlashStep = "connect" | "check" | "stop" | "transfer" | "verify" | "switch" | "reboot";

export interface FlashOptions {
  port: string;
  board: string;
  /** The bundle text, as `keyproxy build` makes it. */
  bundle: string;
  /** Default: the board's serial baud rate (115200 where the board has no serial profile). */
  baudRate?: number;
  /** How long the device may take to answer one request (default flash/serial.ts ANSWER_MS, and
   *  FIRST_ANSWER_MS for the first): more for a slow device or link. */
  answerMs?: number;
  /** For a `ble:` port: the BLE library, or a test double at its API (default @stoprocent/noble). */
  noble?: Noble;
  /** Files as Espruino packets (2v25+) rather than Storage.write lines. Default: over Bluetooth where
   *  the device has them, never over serial (flash/serial.ts OpenOptions.packets). */
  packets?: boolean;
  /** Default: the board's budget.bundleBytes. */
  budgetBytes?: number;
  /** Called with bytes written so far during the transfer, and at each step. */
  onProgress?: (written: number, total: number) => void;
  onStep?: (step: FlashStep) => void | Promise<void>;
  /** Default true: reboot into the new firmware at the end. */
  reboot?: boolean;
  /** Stop at the next safe point (between two chunks, or two steps) and throw FlashInterrupted. The
   *  switch to the new firmware is one step, never cut: once begun it runs to its verified end. */
  signal?: AbortSignal;
}

export interface FlashResult {
  board: string;
  bytes: number;
  crc: number;
  espruinoVersion: string;
}

/** What the device says it is; rejects a board other than the one asked for. */
export async function checkBoard(link: EspruinoSerial, board: BoardProfile): Promise<string> {
  const env = await link.call<{ BOARD?: string; VERSION?: string }>(`{BOARD:process.env.BOARD,VERSION:process.env.VERSION}`);
  const want = ESPRUINO_BOARD[board.id] ?? board.id.toUpperCase();
  if (!env || (env.BOARD !== want && !(SIZED_LINUX_BOARD[board.id] ?? []).includes(String(env.BOARD)))) {
    throw new FlashError(`the device on ${link.path} is a ${env?.BOARD ?? "device of unknown kind"}, not a ${want} (${board.name}); check --board and --port`);
  }
  return String(env.VERSION ?? "unknown");
}

export function bundleBytes(bundle: string): Uint8Array {
  // Bundles are ASCII (esbuild's charset=ascii); anything else would be stored as UTF-8 by Espruino.
  return new Uint8Array(Buffer.from(bundle, "utf8"));
}

export async function flashDevice(o: FlashOptions): Promise<FlashResult> {
  const board = getBoard(o.board);
  const data = bundleBytes(o.bundle);
  const budget = o.budgetBytes ?? board.budget.bundleBytes;
  if (data.length > budget) {
    throw new FlashError(`the bundle is ${data.length} bytes, over ${board.name}'s budget of ${budget} bytes; nothing was written`);
  }
  const want = crc32(data);
  const chunks = Math.ceil(data.length / CHUNK_BYTES);
  let reached: FlashStep = "connect";
  let written = 0;
  const stopIfAsked = () => {
    if (o.signal?.aborted) throw interrupted(reached, Math.ceil(written / CHUNK_BYTES), chunks);
  };
  const step = async (s: FlashStep) => {
    stopIfAsked();
    reached = s;
    await o.onStep?.(s);
  };

  await step("connect");
  const link = await EspruinoSerial.open({ path: o.port, baudRate: o.baudRate ?? board.serial?.baud ?? 115200, answerMs: o.answerMs, firstAnswerMs: o.answerMs, noble: o.noble, packets: o.packets });
  try {
    await step("check");
    const version = await checkBoard(link, board);

    // Stop the running firmware: reset() clears the interpreter and does not run .bootcde.
    await step("stop");
    await link.command("reset()");
    await link.waitForPrompt(Math.max(3000, link.answerMs));

    const s = `require("Storage")`;
    const cost = flashCost(data.length);
    // A staging file left by a cut transfer is garbage: erase it before measuring.
    await link.call(`${s}.erase(${JSON.stringify(STAGING_FILE)})`);
    let free = await link.call<number>(`${s}.getFree()`);
    if (free < 2 * cost) {
      await link.call(`${s}.compact()`, 30_000);
      free = await link.call<number>(`${s}.getFree()`);
    }
    if (free < cost) {
      throw new FlashError(`not enough free Storage on the device: the bundle needs ${cost} bytes for its staging copy, ${free} are free; nothing was changed`);
    }
    // Room for the staging file and the new .bootcde side by side: the copy replaces .bootcde in one
    // write. Otherwise (a full-size Puck.js bundle in its 40 KB) the old .bootcde is erased and the
    // Storage compacted just before the copy, in the same device-side line.
    const roomy = free >= 2 * cost;

    await step("transfer");
    o.onProgress?.(0, data.length);
    await link.writeFile(STAGING_FILE, data, (n) => {
      written = n;
      o.onProgress?.(n, data.length);
      // Thrown from here, it stops writeFile between two chunks, each one whole on the device.
      if (n < data.length) stopIfAsked();
    });

    await step("verify");
    const staged = await link.fileCrc(STAGING_FILE);
    if (staged !== want) {
      await link.call(`${s}.erase(${JSON.stringify(STAGING_FILE)})`).catch(() => {});
      throw new FlashError(`verification failed: the device stored a bundle with CRC ${hex(staged)}, expected ${hex(want)}; ${BOOT_FILE} was not touched`);
    }

    await step("switch");
    let booted: number | null = null;
    for (let attempt = 0; attempt < 2 && booted !== want; attempt++) {
      const makeRoom = roomy ? "" : `${s}.erase(${JSON.stringify(BOOT_FILE)});${s}.compact();`;
      await link.call(`(function(){${makeRoom}return ${s}.write(${JSON.stringify(BOOT_FILE)},${s}.read(${JSON.stringify(STAGING_FILE)}));})()`, 30_000);
      booted = await link.fileCrc(BOOT_FILE);
    }
    if (booted !== want) {
      // Never leave firmware that fails its check where the device would boot it. The verified
      // staging copy stays for a later attempt.
      await link.call(`${s}.erase(${JSON.stringify(BOOT_FILE)})`).catch(() => {});
      throw new FlashError(`verification failed: ${BOOT_FILE} has CRC ${hex(booted)} after copying, expected ${hex(want)}; it was erased, the device will boot to a bare prompt; flash again`);
    }
    await link.call(`${s}.erase(${JSON.stringify(STAGING_FILE)})`);

    if (o.reboot !== false) {
      await step("reboot");
      await link.command("E.reboot()", 500);
      await link.waitForPrompt(Math.max(5000, link.answerMs)).catch((e: Error) => {
        throw new FlashError(`flashed and verified (CRC ${hex(want)}), but after E.reboot() ${e.message}`);
      });
    }
    return { board: board.id, bytes: data.length, crc: want, espruinoVersion: version };
  } finally {
    await link.close();
  }
}

/** What an interrupted flash left on the device, by the last step begun. */
function interrupted(reached: FlashStep, chunksWritten: number, chunks: number): FlashInterrupted {
  const runsAgain = `its ${BOOT_FILE} is unchanged and runs again when the device reboots (power-cycle it)`;
  switch (reached) {
    case "connect":
    case "check":
      return new FlashInterrupted("flash interrupted before anything was changed on the device", true);
    case "stop":
      return new FlashInterrupted(`flash interrupted before the transfer: nothing was written, but the running firmware was stopped for flashing; ${runsAgain}`, true);
    case "transfer":
      return new FlashInterrupted(`flash interrupted after ${chunksWritten} of ${chunks} chunks: the device holds ${chunksWritten < chunks ? "a partial" : "an unverified"} bundle (${STAGING_FILE}), which it will not start; ${runsAgain}`, true);
    case "verify":
      return new FlashInterrupted(`flash interrupted after all ${chunks} chunks were written and verified, before the switch: the device holds the bundle (${STAGING_FILE}) but will not start it; ${runsAgain}`, true);
    default:
      return new FlashInterrupted(`flash interrupted after the new firmware was written and verified, before the reboot: the device starts it when it reboots (power-cycle it)`, false);
  }
}

export const hex = (n: number | null): string => (n === null ? "none (no file)" : "0x" + (n >>> 0).toString(16).padStart(8, "0"));

export { SerialError };
