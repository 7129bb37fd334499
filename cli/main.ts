// `keyproxy <command>`: one entry point, one module per command.
import { UsageError } from "./args.ts";
import { linesForTerminal } from "../gateway/log/terminal.ts";

const COMMANDS: Record<string, { summary: string; run: (argv: string[]) => Promise<number> }> = {
  build: { summary: "bundle the firmware for a board and check it against the board's budget", run: async (a) => (await import("../flash/build.ts")).buildCommand(a) },
  gateway: { summary: "run a gateway (SQLite registry, device links, registration)", run: async (a) => (await import("./gateway-cmd.ts")).gatewayCommand(a) },
  device: { summary: "add, list or remove devices in a gateway's registry", run: async (a) => (await import("./device-cmd.ts")).deviceCommand(a) },
  sim: { summary: "boot emulated handsets (the real firmware bundle) against a gateway", run: async (a) => (await import("./sim-cmd.ts")).simCommand(a) },
  flash: { summary: "write a firmware bundle into a device over serial and verify it", run: async (a) => (await import("./flash-cmd.ts")).flashCommand(a) },
  provision: { summary: "give a device its identity and root key over serial, and register it", run: async (a) => (await import("./provision-cmd.ts")).provisionCommand(a) },
  ports: { summary: "list the serial ports a device could be on (for --port)", run: async (a) => (await import("./ports-cmd.ts")).portsCommand(a) },
  monitor: { summary: "live view of the fleet from MQTT", run: async (a) => (await import("./monitor-cmd.ts")).monitorCommand(a) },
  fleet: { summary: "fleet trust: the fleet CA, gateway certificates, revocation", run: async (a) => (await import("./fleet-cmd.ts")).fleetCommand(a) },
  verifier: { summary: "the fleet's verifier on its own, for gateways started with --verifier", run: async (a) => (await import("./verifier-cmd.ts")).verifierCommand(a) },
  policy: { summary: "who may talk to whom: the gateway's permission table", run: async (a) => (await import("./policy-cmd.ts")).policyCommand(a) },
};

export const USAGE = `usage: keyproxy <command> [options]

commands:
${Object.entries(COMMANDS).map(([n, c]) => `  ${n.padEnd(9)} ${c.summary}`).join("\n")}

Run "keyproxy <command> --help" for a command's options.`;

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === "--help" || name === "-h" || name === "help") {
    console.log(USAGE);
    return name ? 0 : 2;
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
      console.error(linesForTerminal(`keyproxy ${name}: ${e.message} (see "keyproxy ${name} --help")`));
      return 2;
    }
    // A message may quote what a device, a file or a broker said.
    console.error(linesForTerminal(`keyproxy ${name}: ${(e as Error).message}`));
    return 1;
  }
}
