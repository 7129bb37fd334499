// `keyproxy ports`: the serial ports a device could be on, for --port.
import { formatPort, listSerialPorts, NO_PORTS_HINT, SERIAL_DIRS_ENV, whereWeLooked } from "../flash/ports.ts";
import { parse, printJson } from "./args.ts";

const HELP = `usage: keyproxy ports [--json]

Lists the serial ports a device can be on, one per line, to pass to
keyproxy flash and keyproxy provision as --port: the stable
/dev/serial/by-id/* names (with the tty each points to), then the
/dev/ttyUSB* (USB-serial adapters, e.g. on ESP32 boards) and /dev/ttyACM*
(USB CDC) that have no such name, and on macOS /dev/cu.*. Linux's /dev/ttyS*
are left out, as the Espruino tools do.

  --json   a JSON array of {"path", "target"?} instead

${SERIAL_DIRS_ENV}=<dir>[:<dir>...] scans these directories instead of
/dev (for tests, and for systems that keep their devices elsewhere).

Exit codes: 0 ports listed, 1 no serial ports found (the message says what to
check), 2 usage error.`;

export async function portsCommand(argv: string[]): Promise<number> {
  const o = parse(argv, { json: { type: "boolean" }, help: { type: "boolean", short: "h" } });
  if (o.help) {
    console.log(HELP);
    return 0;
  }
  const ports = listSerialPorts();
  if (o.json) printJson(ports);
  else for (const p of ports) console.log(formatPort(p));
  if (ports.length > 0) return 0;
  // On stderr, so that --json's stdout stays an (empty) array a script can read.
  console.error(`keyproxy ports: no serial ports found (looked at ${whereWeLooked()}); ${NO_PORTS_HINT}`);
  return 1;
}
