// One gateway process of bench/crossgw.ts: a Gateway with fleet credentials (sessions across gateways
// over the interlink on the benchmark's MQTT broker), answering the benchmark's queries over IPC.
//
// node:crypto's public-key functions are wrapped (bench/crypto-count.ts) BEFORE any gateway module is
// loaded: the gateway's modules are imported with import() below, after the counters are in place.
// Only node builtins and crypto-count.ts are imported statically.
//
// Started by bench/crossgw.ts with fork(); argv[2] is a JSON GatewayArgs. Log records are built as
// usual but written nowhere unless KEYPROXY_BENCH_GATEWAY_LOG is set (monitoring still publishes them to MQTT, as a gateway with --mqtt does);
// warnings and errors are counted.

import type { Gateway as GatewayType } from "../gateway/gateway.ts";
import type { CrossGateway } from "../gateway/crossgw/cross-gateway.ts";
import { installCryptoCounters, type OpCounts } from "./crypto-count.ts";

const counters = installCryptoCounters();

export interface GatewayArgs {
  dataDir: string;
  id: string;
  brokerUrl: string;
}

export type ToGateway = { k: "sample"; id: number } | { k: "stop" };

export interface GatewaySample {
  usage: NodeJS.CpuUsage;
  counts: OpCounts;
  warnings: number;
  firstWarnings: string[];
  /** Interlink requests of ours still waiting for their answer. */
  pending: number;
  /** Sessions across gateways this gateway holds, and exchanges waiting for message 3. */
  sessions: number;
  /** Interlink envelopes accepted so far (requests and answers). */
  accepted: number;
  cross: Record<string, number>;
}

export type FromGateway =
  | { k: "ready"; host: string; port: number; protocolVersion: number }
  | { k: "sample"; id: number; sample: GatewaySample }
  | { k: "failed"; message: string };

async function main(args: GatewayArgs): Promise<void> {
  const send = (m: FromGateway) => process.send?.(m);
  const { Gateway } = await import("../gateway/gateway.ts");
  const { Logger } = await import("../gateway/log/logger.ts");
  const { loadGatewayCredentials } = await import("../gateway/fleet/fleet.ts");
  let warnings = 0;
  const firstWarnings: string[] = [];
  // KEYPROXY_BENCH_GATEWAY_LOG=1 writes the records to stderr (for a closer look; it costs time).
  const log = new Logger(process.env.KEYPROXY_BENCH_GATEWAY_LOG ? (l) => process.stderr.write(`${args.id} ${l}\n`) : () => {});
  log.subscribe((r) => {
    if (r.level === "info") return;
    warnings++;
    if (firstWarnings.length < 5) firstWarnings.push(`${r.event}: ${String(r.reason ?? r.code ?? "")}`);
  });
  let gw: GatewayType;
  try {
    const { credentials } = loadGatewayCredentials(args.dataDir, args.id, Math.floor(Date.now() / 1000), false);
    gw = await Gateway.start({
      dataDir: args.dataDir,
      id: args.id,
      listen: { host: "127.0.0.1", port: 0 },
      log,
      // Monitoring as an operator runs it; the metrics timer is out of the way.
      mqtt: { url: args.brokerUrl, metricsSeconds: 3600 },
      fleet: { credentials, protocolVersion: "auto" },
    });
  } catch (e) {
    send({ k: "failed", message: e instanceof Error ? e.message : String(e) });
    process.disconnect?.();
    return;
  }
  const cross = gw.hook as CrossGateway;
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await gw.stop();
    // As bench/sessions.ts: closed links would start the broker's grace timers and keep us alive.
    process.exit(0);
  };
  process.on("disconnect", () => void stop());
  process.on("message", (m: ToGateway) => {
    if (m.k === "stop") return void stop();
    if (m.k !== "sample") return;
    const sample: GatewaySample = {
      usage: process.cpuUsage(),
      counts: counters.snapshot(),
      warnings,
      firstWarnings,
      pending: gw.interlink?.pendingCount ?? 0,
      sessions: cross.sessions.size,
      accepted: gw.interlink?.stats.accepted ?? 0,
      cross: { ...cross.stats },
    };
    send({ k: "sample", id: m.id, sample });
  });
  // Which MQTT version the interlink settled on ("auto": 5, or 3.1.1 where the broker refuses 5).
  const protocolVersion = (gw.interlink as unknown as { opts: { protocolVersion?: number } }).opts.protocolVersion ?? 5;
  send({ k: "ready", host: gw.address.host, port: gw.address.port, protocolVersion });
}

void main(JSON.parse(process.argv[2]) as GatewayArgs);
