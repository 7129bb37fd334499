// `keyproxy ble-bridge`: a BLE central on its own, next to the handsets, carrying their links to a
// gateway elsewhere over an authenticated connection (gateway/ble/bridge-client.ts).
import { hostname } from "node:os";
import { helpRows, hostPort, parse, UsageError } from "./args.ts";
import { bleSettingsFromFlags } from "./gateway-cmd.ts";
import { BridgeClient } from "../gateway/ble/bridge-client.ts";
import { readBridgeKey } from "../gateway/ble/bridge-key.ts";
import { isBridgeName, MAX_BRIDGE_NAME } from "../gateway/ble/bridge-protocol.ts";
import { DEFAULT_CENTRAL } from "../gateway/ble/central.ts";
import { loadNoble } from "../gateway/ble/load-noble.ts";
import { Logger } from "../gateway/log/logger.ts";

const HELP = `usage: keyproxy ble-bridge --gateway <host:port> --bridge-key-file <file>
       [--name <name>] [--ble-max-connections <n>] [--ble-hold <s>]

Runs a Bluetooth LE central near the handsets (a small board such as a
Raspberry Pi) and carries each handset's link to a gateway elsewhere, which
takes bridges with "keyproxy gateway --bridge-listen <addr> --bridge-key-file
<file>". Bridge and gateway prove the same 32-byte key to each other, and every
message between them is sealed; the bridge never holds a link key, so it can
neither read nor forge the handsets' frames (docs/OPERATIONS.md, "Bluetooth").
Needs the optional package @stoprocent/noble and a usable adapter
(docs/HARDWARE.md). Logs are JSON lines on stderr. Stop with Ctrl-C.

${helpRows([
  ["--gateway <host:port>", "the gateway's --bridge-listen address"],
  ["--bridge-key-file <file>", "the bridge key, a copy of the gateway's file (mode 0600)"],
  ["--name <name>", `this bridge's name in the gateway's logs and monitoring (1-${MAX_BRIDGE_NAME} letters, digits, . _ -; default: the host name)`],
  ["--ble-max-connections <n>", `handsets connected at once (default ${DEFAULT_CENTRAL.maxConnections}); the others wait their turn`],
  ["--ble-hold <s>", `while others wait, a handset keeps its connection at least this long (default ${DEFAULT_CENTRAL.holdMs / 1000})`],
])}`;

export async function bleBridgeCommand(argv: string[]): Promise<number> {
  const o = parse(argv, {
    gateway: { type: "string" },
    "bridge-key-file": { type: "string" },
    name: { type: "string" },
    "ble-max-connections": { type: "string" },
    "ble-hold": { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  if (o.help) {
    console.log(HELP);
    return 0;
  }
  if (o.gateway === undefined) throw new UsageError("--gateway <host:port> is required: the gateway's --bridge-listen address");
  const gateway = hostPort(o.gateway, "--gateway");
  if (gateway.port === 0) throw new UsageError("--gateway wants the gateway's port, not 0");
  if (o["bridge-key-file"] === undefined) throw new UsageError("--bridge-key-file <file> is required: a copy of the gateway's bridge key (its --bridge-key-file)");
  const name = o.name ?? hostname().split(".")[0].replace(/[^A-Za-z0-9._-]/g, "-").slice(0, MAX_BRIDGE_NAME);
  if (!isBridgeName(name)) throw new UsageError(`--name "${name}" is not 1-${MAX_BRIDGE_NAME} letters, digits, . _ - (and not "ble", the gateway's own central)`);
  const central = bleSettingsFromFlags({ ...o, ble: true });
  let key: Uint8Array;
  try {
    key = readBridgeKey(o["bridge-key-file"]);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const stopRequested = new Promise<void>((resolve) => {
    process.once("SIGINT", () => resolve());
    process.once("SIGTERM", () => resolve());
  });
  const noble = await loadNoble();
  const bridge = new BridgeClient({ noble, key, gateway, name, log: new Logger(), central });
  await bridge.start();
  // The bridge's own timers do not hold the process: this does, until Ctrl-C.
  const alive = setInterval(() => {}, 1 << 30);
  await stopRequested;
  clearInterval(alive);
  await bridge.stop();
  return 0;
}
