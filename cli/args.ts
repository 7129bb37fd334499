// Shared argument helpers: every command parses strictly and fails with a sentence, not a stack.
import { blePortTarget } from "../flash/ble-line.ts";
import { parseArgs, type ParseArgsConfig } from "node:util";
import { ConfigError, merge, outsideLayers, SETTINGS, type Value } from "./config.ts";
import { jsonForTerminal } from "../gateway/log/terminal.ts";

export class UsageError extends Error {}

type Options = NonNullable<ParseArgsConfig["options"]>;

/** Every command takes --config <file> (cli/config.ts). */
const CONFIG_OPTION = { config: { type: "string" } } as const;

/** Where the values of the last parse came from, when not from the command line: for messages. */
let origins = new Map<string, string>();

/** What parse returns: node:util's parseArgs values for these options. Named, so that the declaration
 *  emit (npm run build:dist) can write the type, which it cannot infer in node:util's private names. */
type Parsed<T extends Options> = ReturnType<typeof parseArgs<{ options: T }>>["values"];

/** The command line, strictly, with the settings among its flags filled in from the environment and
 *  config files (cli/config.ts). `settings`: which flags may come from there; by default every flag
 *  of the command that is a setting. A mistake anywhere is a UsageError (exit 2). */
export function parse<T extends Options>(argv: string[], options: T, settings?: readonly string[], env: NodeJS.ProcessEnv = process.env): Parsed<T> {
  origins = new Map();
  let flags: Record<string, Value | undefined>;
  try {
    flags = parseArgs({ args: argv, options: { ...options, ...CONFIG_OPTION }, strict: true, allowPositionals: false }).values as Record<string, Value | undefined>;
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const wanted = settings ?? Object.keys(options).filter((f) => Object.hasOwn(SETTINGS, f));
  for (const f of wanted) {
    // A programming mistake, caught by the test over every command: a setting's kind is the flag's.
    if (options[f]?.type !== SETTINGS[f]) throw new Error(`--${f} is not a ${SETTINGS[f]} setting of this command`);
  }
  if (flags.help) return flags as unknown as Parsed<T>;
  try {
    const merged = merge(flags, outsideLayers(flags, wanted, env), wanted);
    origins = merged.origins;
    return merged.values as unknown as Parsed<T>;
  } catch (e) {
    if (e instanceof ConfigError) throw new UsageError(e.message);
    throw e;
  }
}

/** message, with where each flag it names got its value when that was not the command line: a bad
 *  value from a config file is found where it is. */
export function withOrigins(message: string): string {
  const notes = [...origins].filter(([flag]) => new RegExp(`--${flag}(?![\\w-])`).test(message)).map(([flag, from]) => `--${flag} came from ${from}`);
  return notes.length ? `${message} (${notes.join("; ")})` : message;
}

export function hostPort(s: string, flag: string): { host: string; port: number } {
  const i = s.lastIndexOf(":");
  const port = Number(s.slice(i + 1));
  if (i < 1 || !Number.isInteger(port) || port < 0 || port > 65535) throw new UsageError(`${flag} wants host:port, got "${s}"`);
  return { host: s.slice(0, i), port };
}

export function positiveInt(s: string | undefined, flag: string, dflt: number): number {
  if (s === undefined) return dflt;
  const n = Number(s);
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`${flag} wants a positive whole number, got "${s}"`);
  return n;
}

/** A broker URL for flag, checked; a bad one is quoted without what a password may hide in it. */
export function brokerUrl(s: string, flag: string): string {
  if (!/^(mqtts?|wss?):\/\/./.test(s)) throw new UsageError(`${flag} wants a broker URL such as mqtt://127.0.0.1:1883, got "${s.replace(/^[^@]*@/, "***@")}"`);
  return s;
}

/** --answer-timeout <s>: how long a device on a serial console may take to answer one request, in ms
 *  (undefined: flash/serial.ts's defaults). */
/** --port: a serial device, or ble:<name or address> (flash/ble-line.ts); a bare "ble:" is a usage
 *  error. With a ble: port, a board that has no Bluetooth is one too. */
export function consolePort(port: string | undefined, board: { id: string; transports: readonly string[] }): string {
  if (!port) throw new UsageError("--port <tty or ble:name> is required");
  let ble: string | undefined;
  try {
    ble = blePortTarget(port);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  if (ble !== undefined && !board.transports.includes("ble-uart")) throw new UsageError(`--port ble:... is for boards with a Bluetooth UART (puckjs, banglejs2); ${board.id} has none: use its serial port`);
  return port;
}

export function answerTimeoutMs(s: string | undefined): number | undefined {
  return s === undefined ? undefined : positiveInt(s, "--answer-timeout", 0) * 1000;
}

/** value as the one JSON document a --json command prints: strings escaped as JSON does, and the
 *  characters JSON leaves raw that a terminal would act on (DEL, C1, bidi) escaped too. */
export function printJson(value: unknown): void {
  process.stdout.write(jsonForTerminal(value) + "\n");
}

/** Help texts fit an 80-column terminal. */
export const HELP_WIDTH = 80;

/** Rows of "name  what it does", the descriptions aligned (at nameWidth, by default the longest
 *  name's) and wrapped within HELP_WIDTH. */
export function helpRows(rows: readonly (readonly [string, string])[], indent = 2, nameWidth = Math.max(...rows.map(([n]) => n.length))): string {
  const lead = indent + nameWidth + 2;
  return rows.map(([name, text]) => wrapText(text, HELP_WIDTH - lead).map((line, i) => `${" ".repeat(i ? lead : indent)}${i ? "" : name.padEnd(nameWidth + 2)}${line}`).join("\n")).join("\n");
}

/** text broken into lines of at most width characters, at spaces. */
export function wrapText(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(/\s+/).filter(Boolean)) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  if (line) lines.push(line);
  return lines;
}
