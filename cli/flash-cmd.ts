// `keyproxy flash`: a firmware bundle into a device's Storage over its serial console.
import { existsSync, readFileSync } from "node:fs";
import cliProgress from "cli-progress";
import { BOARDS, getBoard } from "../boards/index.ts";
import { buildFirmware } from "../flash/build.ts";
import { flashDevice, FlashInterrupted, hex, type FlashStep } from "../flash/flash.ts";
import { answerTimeoutMs, consolePort, parse, positiveInt, UsageError } from "./args.ts";
import { EXIT_INTERRUPTED, onCtrlC, shellWords } from "./interrupt.ts";

const HELP = `usage: keyproxy flash --port <tty or ble:name> --board <id>
                      [--bundle <file> | --app <file>]
                      [--baud <n>] [--answer-timeout <s>] [--no-reboot]

Writes the firmware into the device's Storage as .bootcde over its serial
console (or its Bluetooth UART), checks it by CRC-32 and reboots the device
into it. The bundle is
built for --board (with --app, with that application, as keyproxy build --app
makes it) unless --bundle is given. The running firmware is only replaced once
the new one is on the device and verified (docs/OPERATIONS.md).

  --port <tty>     the serial device, e.g. /dev/ttyUSB0 (Puck.js: Serial1 on
                   D28/D29); keyproxy ports lists them. Or ble:<name> or
                   ble:<address> (Puck.js, Bangle.js 2): over Bluetooth LE, as
                   the Espruino IDE does, from a machine with a BLE adapter
                   (docs/HARDWARE.md); a handset running keyproxy answers
                   there only if provisioned with --ble-repl
  --board <id>     ${Object.keys(BOARDS).join(", ")}; the device must report
                   the same board
  --bundle <file>  a bundle made by keyproxy build, with or without --app
                   (default: build it now)
  --app <file>     build the firmware with this application (firmware/api.ts)
                   and flash that
  --baud <n>       line speed (default: the board's, e.g. 9600 for Puck.js,
                   115200 for ESP32)
  --answer-timeout <s>
                   how long the device may take to answer one request
                   (default 5; more for a slow device or link)
  --no-reboot      leave the device running what it runs now

Ctrl-C stops after the chunk being written and says what the device holds (a
second Ctrl-C quits at once).

Exit codes: 0 flashed and verified, 1 failed (the message says what the device
holds; a --port that does not exist or is busy is one of these), 2 usage error,
130 interrupted by Ctrl-C.`;

const STEP_TEXT: Record<FlashStep, string> = {
  connect: "connecting",
  check: "checking the board",
  stop: "stopping the running firmware",
  transfer: "writing",
  verify: "verifying",
  switch: "switching to the new firmware",
  reboot: "rebooting",
};

export async function flashCommand(argv: string[]): Promise<number> {
  const o = parse(argv, {
    port: { type: "string" },
    board: { type: "string" },
    bundle: { type: "string" },
    app: { type: "string" },
    baud: { type: "string" },
    "answer-timeout": { type: "string" },
    "no-reboot": { type: "boolean" },
    help: { type: "boolean", short: "h" },
  });
  if (o.help) {
    console.log(HELP);
    return 0;
  }
  if (!o.port) throw new UsageError("--port <tty or ble:name> is required");
  if (!o.board) throw new UsageError("--board <id> is required");
  let board;
  try {
    board = getBoard(o.board);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  consolePort(o.port, board);
  const baudRate = o.baud === undefined ? undefined : positiveInt(o.baud, "--baud", 0);
  const answerMs = answerTimeoutMs(o["answer-timeout"]);
  let bundle: string;
  if (o.bundle && o.app) throw new UsageError("--bundle and --app do not go together: a bundle built with --app already holds its application");
  if (o.app && !existsSync(o.app)) throw new UsageError(`no application at ${o.app}`);
  if (o.bundle) {
    if (!existsSync(o.bundle)) throw new UsageError(`no bundle at ${o.bundle}`);
    bundle = readFileSync(o.bundle, "utf8");
  } else {
    const r = await buildFirmware({ board: board.id, app: o.app });
    if (!r.ok) {
      const why = r.problems.length > 0 ? r.problems.join("\n") : `${r.bytes} bytes, over the budget of ${r.budget}`;
      console.error(`keyproxy flash: the ${board.id} firmware${o.app ? ` with ${o.app}` : ""} does not build:\n${why}`);
      return 1;
    }
    bundle = r.code;
  }

  // Progress on stderr, and only for a person watching: never in a pipe or a log.
  const bar = process.stderr.isTTY
    ? new cliProgress.SingleBar({ stream: process.stderr, format: "{step} [{bar}] {value}/{total} bytes", hideCursor: true }, cliProgress.Presets.shades_classic)
    : undefined;
  let started = false;
  const again = `run \`keyproxy flash ${shellWords(argv)}\` again`;
  const ctrlC = onCtrlC("flash", `the device may hold a partial bundle, which it will not start: ${again}`);
  try {
    const r = await flashDevice({
      port: o.port,
      board: board.id,
      bundle,
      baudRate,
      answerMs,
      reboot: !o["no-reboot"],
      signal: ctrlC.signal,
      onStep: (s) => {
        if (!bar) return;
        if (!started) bar.start(Buffer.byteLength(bundle), 0, { step: STEP_TEXT[s] });
        started = true;
        bar.update({ step: STEP_TEXT[s] });
      },
      onProgress: (n) => bar?.update(n),
    });
    bar?.stop();
    console.log(`flashed ${r.bytes} bytes to the ${board.id} on ${o.port} (Espruino ${r.espruinoVersion}), CRC ${hex(r.crc)} verified${o["no-reboot"] ? "; not rebooted" : "; rebooted"}`);
    return 0;
  } catch (e) {
    bar?.stop();
    if (e instanceof FlashInterrupted) {
      console.error(`keyproxy flash: ${e.message}${e.flashAgain ? `; ${again}` : ""}`);
      return EXIT_INTERRUPTED;
    }
    // A --port that does not exist, or that another program holds, is exit 1 too, not a usage error
    // (2): the command line was right, the machine is not ready; the message names the ports there are,
    // or who holds this one.
    console.error(`keyproxy flash: ${(e as Error).message}`);
    return 1;
  } finally {
    ctrlC.dispose();
  }
}
