// `keyproxy <command>`: one entry point, one module per command.
import { helpRows, parse, UsageError, withOrigins } from "./args.ts";
import { linesForTerminal } from "../gateway/log/terminal.ts";
import { PACKAGE_VERSION } from "../gateway/package/root.ts";

/** "keyproxy 0.1.0": the version package.json gives, the one the gateway publishes in its status. */
export const VERSION_LINE = `keyproxy ${PACKAGE_VERSION}`;

const COMMANDS: Record<string, { summary: string; run: (argv: string[]) => Promise<number> }> = {
  build: { summary: "bundle the firmware for a board, checked against its budget", run: async (a) => (await import("../flash/build.ts")).buildCommand(buildArgv(a)) },
  gateway: { summary: "run a gateway (its registry, device links, registration)", run: async (a) => (await import("./gateway-cmd.ts")).gatewayCommand(a) },
  device: { summary: "add, list or remove devices in a gateway's registry", run: async (a) => (await import("./device-cmd.ts")).deviceCommand(a) },
  "ble-bridge": { summary: "carry Bluetooth LE handsets' links to a gateway elsewhere", run: async (a) => (await import("./ble-bridge-cmd.ts")).bleBridgeCommand(a) },
  sim: { summary: "boot emulated handsets (the real firmware bundle) against a gateway", run: async (a) => (await import("./sim-cmd.ts")).simCommand(a) },
  flash: { summary: "write a firmware bundle into a device over serial and verify it", run: async (a) => (await import("./flash-cmd.ts")).flashCommand(a) },
  provision: { summary: "give a device its identity and root key over serial; register it", run: async (a) => (await import("./provision-cmd.ts")).provisionCommand(a) },
  ports: { summary: "list the serial ports a device could be on (for --port)", run: async (a) => (await import("./ports-cmd.ts")).portsCommand(a) },
  monitor: { summary: "live view of the fleet from MQTT", run: async (a) => (await import("./monitor-cmd.ts")).monitorCommand(a) },
  console: { summary: "web fleet view in a browser, for every gateway on an MQTT broker", run: async (a) => (await import("./console-cmd.ts")).consoleCommand(a) },
  fleet: { summary: "fleet trust: the fleet CA, gateway certificates, revocation", run: async (a) => (await import("./fleet-cmd.ts")).fleetCommand(a) },
  verifier: { summary: "the fleet's verifier on its own (for gateway --verifier <id>)", run: async (a) => (await import("./verifier-cmd.ts")).verifierCommand(a) },
  policy: { summary: "who may talk to whom: the gateway's permission table", run: async (a) => (await import("./policy-cmd.ts")).policyCommand(a) },
  db: { summary: "the registry's database: migrate its schema, copy SQLite into PostgreSQL", run: async (a) => (await import("./db-cmd.ts")).dbCommand(a) },
  group: { summary: "groups of handsets that share one group key (one message to many)", run: async (a) => (await import("./group-cmd.ts")).groupCommand(a) },
};

/** Every command's name, for the tests that go over all of them. */
export const COMMAND_NAMES: readonly string[] = Object.keys(COMMANDS);

export const USAGE = `usage: keyproxy <command> [options]
       keyproxy --version

commands:
${helpRows(Object.entries(COMMANDS).map(([n, c]) => [n, c.summary]))}

Run "keyproxy <command> --help" for a command's options. Every command takes
--config <file>; settings also come from KEYPROXY_<FLAG> variables and the data
directory's keyproxy.json (docs/OPERATIONS.md, "Configuration").`;

/** keyproxy build parses its own arguments (flash/build.ts); they are checked here first, as every
 *  other command's are, so that it takes --config and the settings too (its --board). */
function buildArgv(argv: string[]): string[] {
  const o = parse(argv, { board: { type: "string" }, out: { type: "string" }, app: { type: "string" }, groups: { type: "boolean" }, help: { type: "boolean", short: "h" } });
  if (o.help) return ["--help"];
  return [
    ...(o.board === undefined ? [] : ["--board", o.board]), ...(o.out === undefined ? [] : ["--out", o.out]), ...(o.app === undefined ? [] : ["--app", o.app]),
    ...(o.groups ? ["--groups"] : []),
  ];
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === "--version" || name === "-V" || name === "version") {
    console.log(VERSION_LINE);
    return 0;
  }
  if (!name) {
    // A usage error like any other: on stderr, exit 2.
    console.error(USAGE);
    return 2;
  }
  if (name === "--help" || name === "-h" || name === "help") {
    console.log(USAGE);
    return 0;
  }
  const cmd = COMMANDS[name];
  if (!cmd) {
    console.error(`keyproxy: unknown command "${name}"\n\n${USAGE}`);
    return 2;
  }
  try {
    return await cmd.run(rest);
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(linesForTerminal(`keyproxy ${name}: ${withOrigins(e.message)} (see "keyproxy ${name} --help")`));
      return 2;
    }
    // A message may quote what a device, a file or a broker said.
    console.error(linesForTerminal(`keyproxy ${name}: ${(e as Error).message}`));
    return 1;
  }
}
