// Handsets on the real interpreter, made the way a user makes them: the bundle goes in with
// `keyproxy flash`'s code and the identity with `keyproxy provision`'s, over a real pseudo-terminal
// to the interpreter's console. Flashing is done once per board and bundle (kept on disk between
// test processes): the flashed flash image is then copied for each handset (as a production line
// would clone a golden image), and each handset is provisioned on its own.

import { createHash } from "node:crypto";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, utimesSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { flashDevice } from "../flash/flash.ts";
import { provisionDevice } from "../flash/provision.ts";
import { EspruinoSerial } from "../flash/serial.ts";
import { bootZero, PACKET_UNANSWERED, RealDevice } from "./device.ts";
import { locateInterpreter } from "./locate.ts";

/** How long the interpreter may take to answer one line over the pty: a board answers in
 *  milliseconds, but a 32-bit build under qemu on a loaded machine can take seconds. */
export const INTERPRETER_ANSWER_MS = 20_000;
/** Tries at flashing an image or provisioning a handset when the host's console damaged the work:
 *  the interpreter crashed, or a byte typed into it was lost (the Linux build's console thread:
 *  docs/INTERPRETER.md). Any other failure fails at once. */
const HOST_FAULT_ATTEMPTS = 3;

/** What the Linux build's console did to a flash or a provisioning, if its console shows it; undefined
 *  for a failure of the firmware's or keyproxy's own. `keyproxy flash` and `provision` type lines whose
 *  answers come back between markers the device assembles (`"<kp"+N+">"`, flash/serial.ts): a marker
 *  that comes back damaged, or a syntax or reference error from one of those lines, is a byte the
 *  console lost, since the same line is typed the same way on every run. A CRC that does not check
 *  out is the same loss inside a Storage literal; flash and provision refuse it (their own check). */
export function hostFault(lines: readonly string[], error: Error): string | undefined {
  const crash = lines.find((l) => /^\[harness\] the interpreter exited \(SIG/.test(l));
  if (crash) return `the interpreter crashed (${crash})`;
  const marker = lines.find((l) => /<\/?kp\d+(?![\d>]|!>)/.test(l));
  if (marker) return `a console byte was lost: the answer came back as ${JSON.stringify(marker.slice(0, 80))}`;
  const uncaught = lines.find((l) => /^Uncaught (SyntaxError|ReferenceError)\b/.test(l));
  if (uncaught) return `a console byte was lost: ${JSON.stringify(uncaught.slice(0, 80))}`;
  if (/verification failed|garbled answer/.test(error.message)) return `a console byte was lost: ${error.message.slice(0, 120)}`;
  if (PACKET_UNANSWERED.test(error.message)) return `a packet's start was lost on the way in: ${error.message.slice(0, 120)}`;
  return undefined;
}

const images = new Map<string, Promise<string>>();

/** An error that says where it happened and what the device printed last (its console is the only
 *  witness of what the interpreter was doing). */
function withConsole(dev: RealDevice, doing: string, e: Error): Error {
  const tail = dev.lines.slice(-12).map((l) => `  | ${l.slice(0, 160)}`).join("\n");
  return new Error(`${doing}: ${e.message}\n${dev.name}'s console, last lines (boot ${dev.boots}):\n${tail}`);
}

function tempDir(prefix: string): string {
  return mkdtempSync(path.join(tmpdir(), prefix));
}

/** Where flashed images are kept between test processes (KEYPROXY_IMAGE_CACHE, else a folder in
 *  the system's temporary directory). */
function imageCacheDir(): string {
  return process.env.KEYPROXY_IMAGE_CACHE ?? path.join(tmpdir(), "keyproxy-flashed-images");
}

/** What a flashed image depends on: the board, the bundle, the interpreter binary, and the code that
 *  flashes it (flash/, and .boot0 from interpreter/device.ts). Any change there is another image. */
function imageKey(board: string, bits: number, bundle: string, bin: string): string {
  const h = createHash("sha256").update(`${board}\0${bits}\0${bootZero(board)}\0`).update(bundle, "latin1");
  h.update(readFileSync(bin));
  const here = path.dirname(fileURLToPath(import.meta.url));
  const flashCode = readdirSync(path.join(here, "../flash")).filter((f) => f.endsWith(".ts")).sort().map((f) => path.join(here, "../flash", f));
  for (const file of [...flashCode, path.join(here, "device.ts"), path.join(here, "handsets.ts")]) h.update(readFileSync(file));
  return h.digest("hex").slice(0, 32);
}

/** The flash file of a device of this board holding .boot0 (bootZero: RNG seed, BLE stand-ins) and
 *  the bundle as .bootcde, flashed over serial. Made once per board, bundle, interpreter and flashing
 *  code, and kept on disk for the next test process: every byte typed at the Linux build's console is
 *  a chance for its console thread to crash the interpreter (docs/INTERPRETER.md), and a flash types
 *  the whole bundle. Tests of flashing itself (test/real-app, test/real-ble-flash) flash their own. */
export function flashedImage(board: string, bundle: string, bits: 32 | 64 = 32): Promise<string> {
  const key = `${board}/${bits}/${bundle.length}/${bundle}`;
  let image = images.get(key);
  if (!image) {
    image = (async () => {
      const bin = locateInterpreter(board, bits);
      if (bin instanceof Error) throw bin;
      const cached = path.join(imageCacheDir(), `${board}-${bits}-${imageKey(board, bits, bundle, bin.bin)}.flash`);
      if (existsSync(cached)) {
        const now = new Date();
        utimesSync(cached, now, now); // in use: not pruned (below)
        return cached;
      }
      const made = await flashFresh(board, bundle, bits);
      mkdirSync(imageCacheDir(), { recursive: true });
      // Written whole or not at all: a copy, then a rename over the final name.
      const part = `${cached}.${process.pid}.part`;
      copyFileSync(made, part);
      renameSync(part, cached);
      pruneImages();
      return cached;
    })();
    images.set(key, image);
    image.catch(() => images.delete(key));
  }
  return image;
}

/** Images of older code (another key) pile up: those unused for IMAGE_UNUSED_DAYS go. */
const IMAGE_UNUSED_DAYS = 7;

function pruneImages(): void {
  const dir = imageCacheDir();
  const before = Date.now() - IMAGE_UNUSED_DAYS * 86_400_000;
  for (const f of readdirSync(dir)) {
    const file = path.join(dir, f);
    try {
      if (statSync(file).mtimeMs < before) rmSync(file, { force: true });
    } catch {
      // Gone already (another test process pruned it): nothing to do.
    }
  }
}

/** Flashes a fresh device of the board; its flash file. The Linux build's console is fed by a thread
 *  of its own (targets/linux): under qemu it has crashed (SIGSEGV) or lost a byte while taking a
 *  flash's stream of long lines; a board's UART does not. That is the host's fault, not the
 *  firmware's: up to HOST_FAULT_ATTEMPTS tries, each said aloud. */
async function flashFresh(board: string, bundle: string, bits: 32 | 64): Promise<string> {
  for (let attempt = 1; ; attempt++) {
    const dev = new RealDevice({ board, bits, dir: tempDir(`kp-image-${board}-`), name: `image-${board}` });
    try {
      await flashImage(dev, board, bundle);
      return dev.flashFile;
    } catch (e) {
      const fault = hostFault(dev.lines, e as Error);
      if (!fault || attempt >= HOST_FAULT_ATTEMPTS) throw withConsole(dev, `flashing the ${board} image`, e as Error);
      console.log(`# ${dev.name}: while being flashed, ${fault}; flashing a fresh one again (${attempt + 1} of ${HOST_FAULT_ATTEMPTS})`);
    } finally {
      await dev.powerOff();
    }
  }
}

async function flashImage(dev: RealDevice, board: string, bundle: string): Promise<void> {
  await dev.start();
  await dev.withSerial(async (tty) => {
    const link = await EspruinoSerial.open({ path: tty, baudRate: 115200, answerMs: INTERPRETER_ANSWER_MS, firstAnswerMs: INTERPRETER_ANSWER_MS });
    try {
      await link.writeFile(".boot0", new Uint8Array(Buffer.from(bootZero(board), "latin1")));
    } finally {
      await link.close();
    }
    await flashDevice({ port: tty, board, bundle, baudRate: 115200, answerMs: INTERPRETER_ANSWER_MS });
  });
}

export interface HandsetOptions {
  board: string;
  bundle: string;
  /** The gateway's data directory: provisioning enters the handset in its registry. */
  dataDir: string;
  id: string;
  /** host:port written into kp.cfg: TCP boards connect there, the BLE stand-ins' radio link too. */
  gateway: string;
  /** Desired registration lifetime (kp.cfg "life"). */
  lifetime?: number;
  /** Provisioned with --ble-repl (kp.cfg "repl"). */
  bleRepl?: boolean;
  /** Provisioned with Wi-Fi settings (kp.cfg "wifi"). */
  wifi?: { ssid: string; password: string };
  bits?: 32 | 64;
  echo?: boolean;
}

/** A flashed, provisioned handset, powered and booted into its firmware. An interpreter whose console
 *  fails while it is provisioned (the host's console thread, as in flashedImage) gets another try on a fresh
 *  copy of the image, with --replace: a crash before the commit rolled the registry back, one after it
 *  (during the clean-up or the reboot) left the registry with the key the fresh copy never got. */
export async function provisionedHandset(o: HandsetOptions): Promise<RealDevice> {
  const image = await flashedImage(o.board, o.bundle, o.bits);
  for (let attempt = 1; ; attempt++) {
    const dev = new RealDevice({ board: o.board, bits: o.bits, dir: tempDir(`kp-real-${o.id}-`), name: o.id, flashImage: image, echo: o.echo });
    try {
      await dev.start();
      await dev.withSerial((tty) => provisionDevice({ port: tty, board: o.board, id: o.id, gateway: o.gateway, dataDir: o.dataDir, lifetime: o.lifetime, bleRepl: o.bleRepl, wifi: o.wifi, replace: attempt > 1, baudRate: 115200, answerMs: INTERPRETER_ANSWER_MS }));
      return dev;
    } catch (e) {
      await dev.powerOff();
      const fault = hostFault(dev.lines, e as Error);
      if (!fault || attempt >= HOST_FAULT_ATTEMPTS) throw withConsole(dev, `provisioning ${o.id}`, e as Error);
      console.log(`# ${dev.name}: while being provisioned, ${fault}; provisioning a fresh copy again (${attempt + 1} of ${HOST_FAULT_ATTEMPTS})`);
    }
  }
}
