// `keyproxy verifier`: the fleet's verifier on its own (gateway/fleet/verifier-service.ts, docs/FLEET.md).
import { Logger } from "../gateway/log/logger.ts";
import { isGatewayId } from "../gateway/fleet/fleet.ts";
import { startVerifierService } from "../gateway/fleet/verifier-service.ts";
import { brokerUrl, parse, UsageError } from "./args.ts";

const HELP = `usage: keyproxy verifier --id <verifier-id> --data-dir <dir> --mqtt <url>

Runs the fleet's verifier on its own: it answers "is this certificate good
now?" (validity, chain to the fleet CA, the fleet's revocation list) over the
interlink, with answers signed by its certified key, for gateways started with
--verifier <verifier-id>. Set it up like a gateway: "keyproxy fleet
issue-gateway --id <verifier-id> --data-dir <dir>". It takes every newer
revocation list from the broker. Logs are JSON lines on stderr. Stop with
Ctrl-C.

  --id <verifier-id>  the id its certificate names
  --data-dir <dir>    its keys, certificate, trust anchor and the newest
                      revocation list
  --mqtt <url>        the fleet's broker, e.g. mqtt://127.0.0.1:1883`;

export async function verifierCommand(argv: string[]): Promise<number> {
  const o = parse(argv, {
    id: { type: "string" },
    "data-dir": { type: "string" },
    mqtt: { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  if (o.help) {
    console.log(HELP);
    return 0;
  }
  if (!o.id || !isGatewayId(o.id)) throw new UsageError("--id <verifier-id> is required, a domain name (letters, digits, - _ and dots)");
  if (!o["data-dir"]) throw new UsageError("--data-dir <dir> is required");
  if (!o.mqtt) throw new UsageError("--mqtt <url> is required, a broker URL such as mqtt://127.0.0.1:1883");
  brokerUrl(o.mqtt, "--mqtt");
  const stopRequested = new Promise<void>((resolve) => {
    process.once("SIGINT", () => resolve());
    process.once("SIGTERM", () => resolve());
  });
  const service = await startVerifierService({ dataDir: o["data-dir"], id: o.id, url: o.mqtt, log: new Logger() });
  await stopRequested;
  await service.stop();
  return 0;
}
