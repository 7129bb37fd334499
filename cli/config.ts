// Settings from outside the command line (issue 13): a config file and KEYPROXY_<FLAG> environment
// variables, so that a gateway's address, broker and data directory need not be typed every time.
// Precedence: flag > environment > --config file > <data-dir>/keyproxy.json > the command's default.
//
// Only "settings" come from there: where things are and how a gateway runs (SETTINGS below). What a
// command acts on (--id, --out, --from, --name ...) is always typed: a KEYPROXY_ID left in a shell must
// not pick the device "keyproxy device remove" deletes. No setting is a secret the CLI prints: a broker
// URL may hold a password, and every place that shows one shows it redacted (redactUrl), as do the
// errors here, which name the file and the key but never quote a value.

import { readFileSync } from "node:fs";
import { join } from "node:path";

export const DEFAULT_DATA_DIR = "./keyproxy-data";
/** The config file a data directory may hold, read when present. */
export const DATA_DIR_CONFIG = "keyproxy.json";
/** The environment variable naming a config file, as --config does. */
export const CONFIG_ENV = "KEYPROXY_CONFIG";

type Kind = "string" | "boolean";

/** The flags a config file or the environment may set, and their kinds. A setting applies to every
 *  command that takes that flag (fleet narrows it: cli/fleet-cmd.ts). */
export const SETTINGS: Readonly<Record<string, Kind>> = {
  "data-dir": "string",
  db: "string",
  instance: "string",
  "fleet-dir": "string",
  listen: "string",
  mqtt: "string",
  "mqtt-listen": "string",
  "no-mqtt": "boolean",
  "no-fleet": "boolean",
  metrics: "string",
  "metrics-listen": "string",
  http: "string",
  "http-token-file": "string",
  "max-lifetime": "string",
  "min-lifetime": "string",
  "sa-lifetime": "string",
  "sa-limit": "string",
  recheck: "string",
  verifier: "string",
  "key-agreement": "string",
  "join-deadline": "string",
  "unjoined-idle": "string",
  "max-connections": "string",
  "max-unjoined": "string",
  "max-unjoined-per-source": "string",
  "limit-loopback": "boolean",
  "max-bad-frames": "string",
  "join-failures": "string",
  "join-backoff-max": "string",
  gateway: "string",
  board: "string",
  baud: "string",
  "answer-timeout": "string",
  lifetime: "string",
  events: "string",
  "list-days": "string",
};

/** Flags that choose one of several ways of doing a thing: a layer that sets one of them overrides
 *  whichever a lower layer set (a --mqtt flag beats "no-mqtt": true in a file, instead of clashing). */
const EXCLUSIVE: readonly (readonly string[])[] = [["mqtt", "mqtt-listen", "no-mqtt"]];

export type Value = string | boolean;

/** Settings from one place, and that place's name for messages ("KEYPROXY_LISTEN", "/etc/kp.json"). */
export interface Layer {
  values: Map<string, Value>;
  origin: (key: string) => string;
}

export class ConfigError extends Error {}

/** The environment variable for a flag: KEYPROXY_ and the flag upper-cased, "-" as "_". */
export function envName(flag: string): string {
  return `KEYPROXY_${flag.toUpperCase().replace(/-/g, "_")}`;
}

/** The settings among `wanted` given in the environment. Other KEYPROXY_ variables are not ours to
 *  judge (tests and scripts use the prefix too) and are left alone. */
export function envLayer(wanted: readonly string[], env: NodeJS.ProcessEnv): Layer {
  const values = new Map<string, Value>();
  for (const flag of wanted) {
    const raw = env[envName(flag)];
    if (raw === undefined) continue;
    if (SETTINGS[flag] === "string") {
      if (raw !== "") values.set(flag, raw);
      continue;
    }
    if (/^(1|true|yes)$/i.test(raw)) values.set(flag, true);
    else if (!/^(0|false|no|)$/i.test(raw)) throw new ConfigError(`${envName(flag)} wants 1 or 0 (true or false)`);
  }
  return { values, origin: envName };
}

/** A config file's settings: a JSON object whose keys are flag names without the dashes in front.
 *  `required` false: a file that does not exist is an empty layer (the data directory's own). Every
 *  key is checked whatever the command, so a mistake shows at once, not when some command reads it. */
export function fileLayer(path: string, required: boolean): Layer {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if ((code === "ENOENT" || code === "ENOTDIR") && !required) return { values: new Map(), origin: () => path };
    throw new ConfigError(`cannot read the config file ${path}: ${code === "ENOENT" ? "no such file" : code === "EISDIR" ? "it is a directory" : code === "EACCES" ? "permission denied" : (e as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    // Not the parser's message: it quotes the text around the mistake, which may be a password.
    throw new ConfigError(`the config file ${path} is not JSON${jsonErrorPlace(text, (e as Error).message)}`);
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) throw new ConfigError(`the config file ${path} must hold a JSON object ({"listen": "0.0.0.0:7447", ...})`);
  const values = new Map<string, Value>();
  for (const [key, v] of Object.entries(doc)) {
    const kind = Object.hasOwn(SETTINGS, key) ? SETTINGS[key] : undefined;
    if (kind === undefined) throw new ConfigError(`the config file ${path}: unknown key "${key}" (the keys are these flags: ${Object.keys(SETTINGS).join(", ")})`);
    if (kind === "boolean") {
      if (typeof v !== "boolean") throw new ConfigError(`the config file ${path}: "${key}" wants true or false`);
      if (v) values.set(key, true);
    } else {
      if (typeof v === "number" && Number.isFinite(v)) values.set(key, String(v));
      else if (typeof v === "string") values.set(key, v);
      else throw new ConfigError(`the config file ${path}: "${key}" wants a string${key === "data-dir" || key === "fleet-dir" ? "" : " or a number"}`);
    }
  }
  return { values, origin: () => path };
}

/** " (line L, column C)" where JSON.parse stopped, when its message gives a position; else "". */
function jsonErrorPlace(text: string, message: string): string {
  const m = /position (\d+)/.exec(message);
  if (!m) return /end of JSON input/.test(message) ? " (it ends too soon)" : "";
  const before = text.slice(0, Number(m[1])).split("\n");
  return ` (line ${before.length}, column ${before[before.length - 1].length + 1})`;
}

/** The layers merged, highest first, into the flags' values, for the settings in `wanted` only; and
 *  where each value that did not come from the command line came from. */
export function merge(flags: Record<string, Value | undefined>, layers: readonly Layer[], wanted: readonly string[]): { values: Record<string, Value | undefined>; origins: Map<string, string> } {
  const values = { ...flags };
  const origins = new Map<string, string>();
  const claimed = new Set<readonly string[]>(EXCLUSIVE.filter((g) => g.some((f) => flags[f] !== undefined)));
  for (const layer of layers) {
    const claimedHere: (readonly string[])[] = [];
    for (const flag of wanted) {
      const v = layer.values.get(flag);
      if (v === undefined || values[flag] !== undefined) continue;
      const group = EXCLUSIVE.find((g) => g.includes(flag));
      if (group && claimed.has(group)) continue;
      values[flag] = v;
      origins.set(flag, layer.origin(flag));
      if (group) claimedHere.push(group);
    }
    for (const g of claimedHere) claimed.add(g);
  }
  return { values, origins };
}

/** Every layer below the command line, highest first: the environment, the --config file (flag, else
 *  KEYPROXY_CONFIG) and the data directory's keyproxy.json, found with --data-dir as the layers above
 *  it give it (the file cannot move the directory it lives in). */
export function outsideLayers(flags: Record<string, Value | undefined>, wanted: readonly string[], env: NodeJS.ProcessEnv): Layer[] {
  const layers = [envLayer(wanted, env)];
  const configPath = typeof flags.config === "string" ? flags.config : env[CONFIG_ENV] || undefined;
  if (configPath !== undefined) layers.push(fileLayer(configPath, true));
  if (wanted.includes("data-dir")) {
    const dataDir = merge(flags, layers, ["data-dir"]).values["data-dir"] ?? DEFAULT_DATA_DIR;
    const own = fileLayer(join(String(dataDir), DATA_DIR_CONFIG), false);
    if (own.values.has("data-dir")) throw new ConfigError(`the config file ${join(String(dataDir), DATA_DIR_CONFIG)}: "data-dir" cannot be set in the data directory's own config file`);
    layers.push(own);
  }
  return layers;
}
