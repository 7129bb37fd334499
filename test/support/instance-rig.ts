// Instances of one domain in a test, as an operator sets them up (docs/SCALING.md): each further
// instance's data directory is a copy of the first one's files (the domain's gateway key, KEK, fleet
// certificate, trust anchor and revocation list), without its database, lock or log.
import { copyFileSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { Gateway, type GatewayOptions } from "../../gateway/gateway.ts";
import { Logger } from "../../gateway/log/logger.ts";
import { tempDir } from "./harness.ts";

const NOT_COPIED = /^(keyproxy\.db.*|gateway\.lock|gateway\.log)$/;

/** Copies the domain's files from `from` into `to`. */
export function copyDomainFiles(from: string, to: string): void {
  for (const f of readdirSync(from)) if (!NOT_COPIED.test(f) && statSync(join(from, f)).isFile()) copyFileSync(join(from, f), join(to, f));
}

/** A fresh directory holding a copy of the domain's files from the first instance's `first`. */
export function instanceDataDir(first: string, prefix = "kp-instance-"): string {
  const dir = tempDir(prefix);
  copyDomainFiles(first, dir);
  return dir;
}

export interface InProcessInstance {
  name: string;
  gw: Gateway;
  dataDir: string;
  /** Its log records, as JSON lines. */
  logs: string[];
}

/** An in-process instance `name` of `domain` on the PostgreSQL `database` and the broker at `url`,
 *  listening on a free loopback port; its data directory copies `first`'s, or is a new first one. */
export async function startInProcessInstance(o: { name: string; domain: string; database: string; url: string; first?: string; options?: Partial<GatewayOptions> }): Promise<InProcessInstance> {
  const dataDir = o.first ? instanceDataDir(o.first) : tempDir();
  const logs: string[] = [];
  const gw = await Gateway.start({
    dataDir, database: o.database, id: o.domain, instance: o.name, mqtt: { url: o.url, metricsSeconds: 3600 },
    listen: { host: "127.0.0.1", port: 0 }, log: new Logger((l) => logs.push(l)), ...o.options,
  });
  return { name: o.name, gw, dataDir, logs };
}
