import { Gateway, DEFAULT_LISTEN } from "../gateway/gateway.ts";
import { hostPort, parse, positiveInt } from "./args.ts";

export const DEFAULT_DATA_DIR = "./keyproxy-data";

const HELP = `usage: keyproxy gateway [--data-dir <dir>] [--listen <host:port>] [--id <name>] [--max-lifetime <s>]

Runs a gateway on embedded defaults: the registry is a SQLite file under the data directory
(default ${DEFAULT_DATA_DIR}, created owner-only), devices connect on --listen
(default ${DEFAULT_LISTEN.host}:${DEFAULT_LISTEN.port}). Logs are JSON lines on stderr. Stop with Ctrl-C.

  --data-dir <dir>       where the registry and the gateway's signing key live
  --listen <host:port>   device link address (port 0: any free port)
  --id <name>            the gateway's name in the certificates it issues (default: kept from the last run, else gateway.local)
  --max-lifetime <s>     longest registration granted, seconds (default 86400)
  --min-lifetime <s>     shortest registration granted, seconds (default 60)`;

export async function gatewayCommand(argv: string[]): Promise<number> {
  const o = parse(argv, {
    "data-dir": { type: "string" },
    listen: { type: "string" },
    id: { type: "string" },
    "max-lifetime": { type: "string" },
    "min-lifetime": { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  if (o.help) {
    console.log(HELP);
    return 0;
  }
  const policy = { maxLifetime: positiveInt(o["max-lifetime"], "--max-lifetime", 86400), minLifetime: positiveInt(o["min-lifetime"], "--min-lifetime", 60) };
  if (policy.minLifetime > policy.maxLifetime) throw new Error("--min-lifetime is above --max-lifetime");
  const gw = await Gateway.start({
    dataDir: o["data-dir"] ?? DEFAULT_DATA_DIR,
    listen: o.listen ? hostPort(o.listen, "--listen") : undefined,
    id: o.id,
    policy,
  });
  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once("SIGINT", stop);
    process.once("SIGTERM", stop);
  });
  await gw.stop();
  return 0;
}
