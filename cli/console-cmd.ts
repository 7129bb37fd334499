// `keyproxy console`: the web fleet view (gateway/web/) for a whole fleet, from MQTT. It subscribes to
// keyproxy/v1/# on a broker, as `keyproxy monitor` does, and serves the page over HTTP until stopped.
// `keyproxy gateway --http` serves the same page for its own gateway; the flags for both are read here.

import { readFileSync } from "node:fs";
import { topics, redactUrl } from "../gateway/monitor/monitor.ts";
import { FleetViewConfigError, checkToken, requireTokenOffLoopback, serveBrokerFleetView } from "../gateway/web/fleet-server.ts";
import { DEFAULT_KEEP_EVENTS } from "../gateway/web/fleet-feed.ts";
import { brokerUrl, helpRows, hostPort, parse, positiveInt, UsageError } from "./args.ts";
import { DEFAULT_MQTT_URL } from "./monitor-cmd.ts";

/** The environment variable holding the fleet view's token itself (a file is --http-token-file). */
export const TOKEN_ENV = "KEYPROXY_HTTP_TOKEN";
export const DEFAULT_HTTP = "127.0.0.1:8080";

const HELP = `usage: keyproxy console [--mqtt <url>] [--http <host:port>]
                        [--http-token-file <path>] [--events <n>]

Serves the web fleet view for every gateway on an MQTT broker: gateways,
handsets, sessions as a graph of who talks to whom, recent events and the
revocation list's age, live in a browser (docs/MONITORING.md, "Web fleet
view"). Read-only. Stop with Ctrl-C.

${helpRows([
  ["--mqtt <url>", `the broker the gateways publish to (default ${DEFAULT_MQTT_URL})`],
  ["--http <host:port>", `where to serve the page (default ${DEFAULT_HTTP}; port 0: any free port)`],
  ["--http-token-file <path>", `a file holding the token viewers must give (else ${TOKEN_ENV}); required when --http is not a loopback address`],
  ["--events <n>", `recent events shown (default ${DEFAULT_KEEP_EVENTS})`],
])}`;

export interface HttpOptions {
  listen: { host: string; port: number };
  token?: string;
  flag: string;
}

/** The fleet view's address and token from --http, --http-token-file and KEYPROXY_HTTP_TOKEN; undefined
 *  without --http. Refuses (exit 2) an address off loopback without a token, and a weak token. */
export function httpOptions(o: { http?: string; "http-token-file"?: string }, env: NodeJS.ProcessEnv = process.env): HttpOptions | undefined {
  if (o.http === undefined) {
    if (o["http-token-file"] !== undefined) throw new UsageError("--http-token-file is the token of the fleet view: it needs --http <host:port>");
    return undefined;
  }
  const listen = hostPort(o.http, "--http");
  listen.host = listen.host.replace(/^\[(.*)\]$/, "$1");
  let token: string | undefined;
  let from = "";
  const file = o["http-token-file"];
  if (file !== undefined) {
    try {
      token = readFileSync(file, "utf8");
    } catch (e) {
      throw new UsageError(`cannot read the token file ${file} (--http-token-file): ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : (e as Error).message}`);
    }
    from = `the file ${file}`;
  } else if (env[TOKEN_ENV]) {
    token = env[TOKEN_ENV];
    from = TOKEN_ENV;
  }
  try {
    const out: HttpOptions = { listen, token: token === undefined ? undefined : checkToken(token, from), flag: "--http" };
    requireTokenOffLoopback(out);
    return out;
  } catch (e) {
    if (e instanceof FleetViewConfigError) throw new UsageError(e.message);
    throw e;
  }
}

/** How people reach the view: a URL to open (without the token: it is theirs to add). */
export function viewUrl(address: { host: string; port: number }): string {
  const host = address.host.includes(":") ? `[${address.host}]` : address.host;
  return `http://${host}:${address.port}/`;
}

export async function consoleCommand(argv: string[]): Promise<number> {
  const o = parse(argv, {
    mqtt: { type: "string" },
    http: { type: "string" },
    "http-token-file": { type: "string" },
    events: { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  if (o.help) {
    console.log(HELP);
    return 0;
  }
  const url = brokerUrl(o.mqtt ?? DEFAULT_MQTT_URL, "--mqtt");
  const http = httpOptions({ ...o, http: o.http ?? DEFAULT_HTTP })!;
  const keepEvents = positiveInt(o.events, "--events", DEFAULT_KEEP_EVENTS);
  const stopRequested = new Promise<void>((resolve) => {
    process.once("SIGINT", () => resolve());
    process.once("SIGTERM", () => resolve());
  });
  const view = await serveBrokerFleetView({ ...http, url, topic: topics.all, title: `fleet on ${redactUrl(url)}`, keepEvents });
  console.log(`keyproxy console: the fleet view is on ${viewUrl(view.address)}${http.token ? " (open it with ?token=<token> once)" : ""}, following ${redactUrl(url)} (${topics.all})`);
  await stopRequested;
  await view.close();
  return 0;
}
