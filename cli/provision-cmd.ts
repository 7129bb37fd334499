// `keyproxy provision`: a device's identity and fresh root key into its Storage and the registry.
import { readFileSync } from "node:fs";
import cliProgress from "cli-progress";
import { BOARDS, getBoard, type BoardProfile } from "../boards/index.ts";
import { blePortTarget } from "../flash/ble-line.ts";
import { provisionDevice, ProvisionError, ProvisionInterrupted, type ProvisionStep } from "../flash/provision.ts";
import { DEFAULT_LISTEN } from "../gateway/gateway.ts";
import { answerTimeoutMs, consolePort, hostPort, parse, positiveInt, UsageError } from "./args.ts";
import { checkDeviceId } from "./device-cmd.ts";
import { DEFAULT_DATA_DIR } from "./gateway-cmd.ts";
import { EXIT_INTERRUPTED, onCtrlC, shellWords } from "./interrupt.ts";
import { noteNewDataDir } from "./git-worktree.ts";

const HELP = `usage: keyproxy provision --port <tty or ble:name> --id <name> [--board <id>]
                          [--gateway <host:port>] [options]
       keyproxy provision --port <tty or ble:name> --board <id> --recover

Makes a fresh root key on this machine (CSPRNG), writes the device's
configuration (kp.cfg: id, key, gateway, lifetime) into its Storage over the
serial console (or its Bluetooth UART) and enters the device in the
gateway's registry, as one operation: if any step fails, both are rolled back
and the message says so. The key is never printed or logged. The device is
rebooted at the end so its firmware starts with the new identity (flash the
firmware first: keyproxy flash).

  --port <tty>           the serial device, e.g. /dev/ttyUSB0 (keyproxy ports
                         lists them), or ble:<name or address> (Puck.js,
                         Bangle.js 2), which needs --key-over-ble
  --key-over-ble         accept that over Bluetooth the new root key (and a
                         Wi-Fi password) crosses the air unencrypted: anyone in
                         radio range with a sniffer can record it. Serial does
                         not have this exposure; prefer it
  --id <name>            the device's id (letters, digits, . _ -)
  --board <id>           ${Object.keys(BOARDS).join(", ")} (default puckjs);
                         the device must report the same board
  --gateway <host:port>  where TCP boards connect (default
                         ${DEFAULT_LISTEN.host}:${DEFAULT_LISTEN.port}), written into kp.cfg
  --lifetime <s>         registration lifetime the device asks for (default
                         3600)
  --data-dir <dir>       the gateway's data directory, i.e. its registry
                         (default ${DEFAULT_DATA_DIR})
  --replace              re-provision an id that is already registered: its
                         old key stops working
  --wifi-ssid <name>     ESP32: the Wi-Fi network it joins before it opens TCP;
                         its password from --wifi-password-file <file> or
                         KEYPROXY_WIFI_PASSWORD, never the command line (ps and
                         the shell history show it). Stored in kp.cfg with the
                         root key, and like it never printed or logged
  --ble-repl             development only (Puck.js, Bangle.js 2): a Bluetooth
                         central that is not keyproxy's, such as the Espruino
                         IDE, gets the REPL, and so can read the root key
                         (default: the REPL never goes to Bluetooth)
  --recover              only settle a provisioning that was cut short on this
                         device (finish or undo it)
  --baud <n>             line speed (default: the board's)
  --answer-timeout <s>   how long the device may take to answer one request
                         (default 5; more for a slow device or link)
  --no-reboot            do not reboot the device at the end

Ctrl-C stops at the next step: before the commit both sides are rolled back,
after it the device is left provisioned but not rebooted; the message says
which (a second Ctrl-C quits at once).

Exit codes: 0 provisioned, 1 failed with nothing changed or everything rolled
back (a --port that does not exist or is busy too), 2 usage error, 3 cut short
in a way that needs the device reconnected and "keyproxy provision --recover"
run, 130 interrupted by Ctrl-C.`;

export const EXIT_NEEDS_RECOVERY = 3;

/** Where a Wi-Fi password may come from besides a file: never a flag's value. */
export const WIFI_PASSWORD_ENV = "KEYPROXY_WIFI_PASSWORD";

/** --wifi-ssid and its password, checked as WPA2-Personal takes them. No message quotes the password. */
function wifiSettings(board: BoardProfile, ssid: string | undefined, passwordFile: string | undefined): { ssid: string; password: string } | undefined {
  if (ssid === undefined) {
    if (passwordFile !== undefined) throw new UsageError("--wifi-password-file goes with --wifi-ssid <name>");
    return undefined;
  }
  if (!board.transports.includes("wifi")) throw new UsageError(`--wifi-ssid is for boards that join a Wi-Fi network (esp32); ${board.id} does not`);
  const bytes = Buffer.byteLength(ssid, "utf8");
  if (bytes < 1 || bytes > 32) throw new UsageError(`--wifi-ssid wants a network name of 1 to 32 bytes, got ${bytes}`);
  let password: string | undefined;
  if (passwordFile !== undefined) {
    try {
      password = readFileSync(passwordFile, "utf8").replace(/\r?\n$/, "");
    } catch (e) {
      throw new UsageError(`cannot read the Wi-Fi password file ${passwordFile}: ${(e as NodeJS.ErrnoException).code ?? "unreadable"}`);
    }
  } else password = process.env[WIFI_PASSWORD_ENV];
  if (password === undefined) throw new UsageError(`--wifi-ssid needs the network's password: in a file given with --wifi-password-file <file>, or in ${WIFI_PASSWORD_ENV} (never on the command line, where ps and the shell history show it)`);
  if (!/^[\x20-\x7e]{8,63}$/.test(password) && !/^[0-9a-fA-F]{64}$/.test(password)) {
    throw new UsageError(`the Wi-Fi password (${passwordFile ?? WIFI_PASSWORD_ENV}) is not one WPA2 takes: 8 to 63 printable ASCII characters, or 64 hex digits (${password.length} characters given)`);
  }
  return { ssid, password };
}

export async function provisionCommand(argv: string[]): Promise<number> {
  const o = parse(argv, {
    port: { type: "string" },
    id: { type: "string" },
    board: { type: "string" },
    gateway: { type: "string" },
    lifetime: { type: "string" },
    "data-dir": { type: "string" },
    db: { type: "string" },
    replace: { type: "boolean" },
    "ble-repl": { type: "boolean" },
    "key-over-ble": { type: "boolean" },
    "wifi-ssid": { type: "string" },
    "wifi-password-file": { type: "string" },
    recover: { type: "boolean" },
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
  const recoverOnly = !!o.recover;
  const id = recoverOnly ? (o.id ?? "") : checkDeviceId(o.id);
  let board;
  try {
    board = getBoard(o.board ?? "puckjs");
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  consolePort(o.port, board);
  if (o["key-over-ble"] && blePortTarget(o.port) === undefined) throw new UsageError("--key-over-ble goes with --port ble:<name>");
  if (o["ble-repl"] && !board.transports.includes("ble-uart")) throw new UsageError(`--ble-repl is for boards that reach their gateway over Bluetooth; ${board.id} does not`);
  const wifi = wifiSettings(board, o["wifi-ssid"], o["wifi-password-file"]);
  const gateway = o.gateway ?? `${DEFAULT_LISTEN.host}:${DEFAULT_LISTEN.port}`;
  hostPort(gateway, "--gateway");
  const dataDir = o["data-dir"] ?? DEFAULT_DATA_DIR;
  const answerMs = answerTimeoutMs(o["answer-timeout"]);
  const lifetime = positiveInt(o.lifetime, "--lifetime", 3600);
  const baudRate = o.baud === undefined ? undefined : positiveInt(o.baud, "--baud", 0);

  const steps: ProvisionStep[] = ["connect", "recover", "prepare", "stage", "verify", "decide", "switch", "commit", "cleanup", "reboot"];
  const bar = process.stderr.isTTY
    ? new cliProgress.SingleBar({ stream: process.stderr, format: "provisioning [{bar}] {step}", hideCursor: true }, cliProgress.Presets.shades_classic)
    : undefined;
  bar?.start(steps.length, 0, { step: "" });
  const recoverCmd = `keyproxy provision ${shellWords(["--port", o.port, "--board", board.id, "--data-dir", dataDir, "--recover"])}`;
  const warnIfNew = noteNewDataDir(dataDir);
  const ctrlC = onCtrlC("provision", `the registry holds only what was committed (the database drops the rest); run \`${recoverCmd}\` to bring the device in line with it`);
  try {
    const r = await provisionDevice({
      port: o.port,
      board: board.id,
      id,
      gateway,
      dataDir,
      database: o.db,
      lifetime,
      replace: !!o.replace,
      bleRepl: !!o["ble-repl"],
      keyOverBle: !!o["key-over-ble"],
      wifi,
      recoverOnly,
      baudRate,
      answerMs,
      reboot: !o["no-reboot"],
      signal: ctrlC.signal,
      onStep: (s) => bar?.update(steps.indexOf(s) + 1, { step: s }),
    });
    bar?.stop();
    if (r.recovered) {
      const what = r.recovered.outcome === "rolled-forward" ? "finished (the registry had committed it)" : "undone (the registry had not committed it)";
      console.log(`an interrupted provisioning of ${r.recovered.id} on ${o.port} was ${what}`);
    } else if (recoverOnly) {
      console.log(`nothing to recover on ${o.port}`);
    }
    if (r.id) console.log(`provisioned ${r.id} (${r.board}) on ${o.port}${r.replaced ? ", replacing its old key" : ""}; registry ${dataDir}`);
    warnIfNew();
    return 0;
  } catch (e) {
    bar?.stop();
    if (e instanceof ProvisionInterrupted) {
      console.error(`keyproxy provision: ${e.message}; ${nextAfterInterrupt(e, argv, recoverCmd)}`);
      return EXIT_INTERRUPTED;
    }
    console.error(`keyproxy provision: ${(e as Error).message}`);
    return e instanceof ProvisionError && e.state === "needs-recovery" ? EXIT_NEEDS_RECOVERY : 1;
  } finally {
    ctrlC.dispose();
  }
}

/** The command that takes an interrupted provisioning on from where it was left. */
function nextAfterInterrupt(e: ProvisionInterrupted, argv: string[], recoverCmd: string): string {
  if (e.state === "needs-recovery") return `to settle the device: ${recoverCmd}`;
  if (e.state === "provisioned") return "nothing to run again";
  return `to provision it: run \`keyproxy provision ${shellWords(argv)}\` again`;
}
