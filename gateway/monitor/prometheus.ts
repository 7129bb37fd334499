// The gateway's Prometheus endpoint (docs/MONITORING.md, "Prometheus"), off unless asked for
// (`keyproxy gateway --metrics-listen <host:port>`, GatewayOptions.metricsListen):
//
//   GET /metrics   the Prometheus text exposition (prom-client): counters, gauges, a histogram
//   GET /healthz   200 "ok" while the registry is open and the link port listens, else 503 and why
//   anything else  404 (405 for a method other than GET or HEAD)
//
// One definition of every count: the counters are the ones the gateway keeps already (LinkServer,
// Registrar, SessionBroker and CrossGateway `stats`), read at scrape time, never counted again here.
// The one thing measured here is the setup latency, from the log records the gateway writes anyway.
//
// No label names a device (an id in a label is an existence oracle for whoever scrapes, and a series
// per name anyone may try is unbounded cardinality) and nothing here reads key material: only the
// counters above, map sizes, and the revocation list's serial and issue time.

import http from "node:http";
import { performance } from "node:perf_hooks";
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import type { Logger, LogRecord } from "../log/logger.ts";

/** What the endpoint reads; each a live object of the gateway, read at scrape time. */
export interface MetricsSources {
  links: {
    readonly stats: { joins: number; joinRejects: number; framesIn: number; framesDropped: number; connectionsRefused: number };
    readonly connectionCount: { all: number; unjoined: number };
  };
  registrar: { readonly stats: { registered: number; renewed: number } };
  sessions: { readonly stats: SetupStats & { relayDropped: number }; readonly sessions: { size: number } };
  /** Sessions across gateways, while the fleet is on. */
  across: () => ({ readonly stats: SetupStats & { relayDropped: number }; readonly sessions: { size: number } } | undefined);
  /** The fleet's revocation list this gateway holds, if any. */
  revocationList: () => { fleetId: string; serial: number; issuedAt: number } | undefined;
  /** Seconds since the epoch (the gateway's clock, which judges the list too). */
  now: () => number;
  /** The gateway's log: session-requested/-up records time the setups. */
  log: Logger;
}

interface SetupStats { requested: number; up: number; refused: number; failed: number; rekeyed: number }

export type Health = { ok: true; mqtt?: boolean } | { ok: false; reason: string };

/** What /healthz says of a gateway in these states: the first problem found, else ok (MQTT's state
 *  is told, not judged: monitoring being away does not stop devices from being served). */
export function gatewayHealth(s: { stopping: boolean; registryOpen: boolean; linkListening: boolean; mqttConnected?: boolean }): Health {
  if (s.stopping) return { ok: false, reason: "the gateway is stopping" };
  if (!s.registryOpen) return { ok: false, reason: "the registry is closed" };
  if (!s.linkListening) return { ok: false, reason: "the link server is not listening" };
  return { ok: true, mqtt: s.mqttConnected };
}

/** Latency buckets, seconds: a setup inside one gateway takes milliseconds; across gateways, round
 *  trips over the broker; the slowest give up at the answer timeouts (10 s each by default). */
const SETUP_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

type Scope = "local" | "across";
const SCOPES: Record<string, Scope> = { "session-": "local", "xsession-": "across" };

/** How long a request may wait for its SA before it is forgotten (longer than any setup can take),
 *  and how many may wait at once: the table must stay small whatever devices send. */
const SETUP_FORGET_MS = 60_000;
const SETUP_MAX_WAITING = 1000;

/** Times session setups from the log: a "session-requested" record starts a clock for the caller and
 *  callee, the next "session-up" of that pair stops it (the xsession- records likewise, across
 *  gateways). A refusal, failure or abort for the pair drops its clock. Rekeys are not setups and
 *  are not timed. Pairing is by caller and callee: two calls between the same two devices at once
 *  are matched first come, first served. */
export class SetupTimer {
  /** Every running clock by id, oldest first (a Map keeps insertion order, and clocks start in time
   *  order): forgetting the old ones looks only at the front. */
  private byAge = new Map<number, { pair: string; t0: number }>();
  /** The running clocks of each caller-callee pair, oldest first. */
  private byPair = new Map<string, number[]>();
  private nextId = 0;

  constructor(private observe: (scope: Scope, seconds: number) => void, private clockMs: () => number = () => performance.now()) {}

  onRecord(rec: LogRecord): void {
    const prefix = rec.event.startsWith("xsession-") ? "xsession-" : rec.event.startsWith("session-") ? "session-" : undefined;
    if (!prefix || typeof rec.device !== "string" || typeof rec.peer !== "string") return;
    const scope = SCOPES[prefix];
    const what = rec.event.slice(prefix.length);
    const pair = JSON.stringify([scope, rec.device, rec.peer]);
    if (what === "requested") this.start(pair);
    else if (what === "up") {
      const t0 = this.take(pair);
      if (t0 !== undefined) this.observe(scope, (this.clockMs() - t0) / 1000);
    } else if (what === "rejected" || what === "failed" || what === "aborted") this.take(pair);
  }

  /** Clocks running now (for tests: the table stays bounded). */
  get pending(): number {
    return this.byAge.size;
  }

  private start(pair: string): void {
    const t0 = this.clockMs();
    for (const [id, c] of this.byAge) {
      if (c.t0 >= t0 - SETUP_FORGET_MS && this.byAge.size < SETUP_MAX_WAITING) break;
      this.forget(id);
    }
    const id = this.nextId++;
    this.byAge.set(id, { pair, t0 });
    const ids = this.byPair.get(pair) ?? [];
    ids.push(id);
    this.byPair.set(pair, ids);
  }

  /** The start of the pair's oldest running clock, which stops. */
  private take(pair: string): number | undefined {
    const id = this.byPair.get(pair)?.[0];
    if (id === undefined) return undefined;
    const t0 = this.byAge.get(id)!.t0;
    this.forget(id);
    return t0;
  }

  /** Stops a clock that is the oldest of its pair (every clock this class stops is). */
  private forget(id: number): void {
    const c = this.byAge.get(id)!;
    this.byAge.delete(id);
    const ids = this.byPair.get(c.pair)!;
    ids.shift();
    if (!ids.length) this.byPair.delete(c.pair);
  }
}

/** A counter whose value is one of the gateway's own counts, read at scrape time. */
function countedBy(registry: Registry, name: string, help: string, labelNames: string[], read: () => [Record<string, string>, number][]): void {
  new Counter({
    name, help, labelNames, registers: [registry],
    collect() {
      this.reset();
      for (const [labels, value] of read()) this.inc(labels, value);
    },
  });
}

/** A gauge read at scrape time. */
function gaugedBy(registry: Registry, name: string, help: string, labelNames: string[], read: () => [Record<string, string>, number][]): void {
  new Gauge({
    name, help, labelNames, registers: [registry],
    collect() {
      this.reset();
      for (const [labels, value] of read()) this.set(labels, value);
    },
  });
}

/** The registry of one gateway's metrics (its own, not prom-client's global one: several gateways may
 *  run in one process). Returns it and the function that stops timing setups. */
export function gatewayMetrics(s: MetricsSources): { registry: Registry; stop: () => void } {
  const registry = new Registry();
  const bothScopes = <T>(read: (x: T) => number, local: T, across: T | undefined): [Record<string, string>, number][] =>
    across === undefined ? [[{ scope: "local" }, read(local)]] : [[{ scope: "local" }, read(local)], [{ scope: "across" }, read(across)]];
  const perScope = (read: (x: { stats: SetupStats & { relayDropped: number }; sessions: { size: number } }) => number) => () => bothScopes(read, s.sessions, s.across());
  const one = (read: () => number) => (): [Record<string, string>, number][] => [[{}, read()]];

  countedBy(registry, "keyproxy_joins_total", "Joins the link server accepted.", [], one(() => s.links.stats.joins));
  countedBy(registry, "keyproxy_join_rejects_total", "Joins the link server refused (unknown or revoked device, bad MAC, replayed counter, throttled).", [], one(() => s.links.stats.joinRejects));
  countedBy(registry, "keyproxy_registrations_total", "Registrations granted: kind=\"new\" (none held before) or \"renewal\".", ["kind"], () => [
    [{ kind: "new" }, s.registrar.stats.registered],
    [{ kind: "renewal" }, s.registrar.stats.renewed],
  ]);
  countedBy(registry, "keyproxy_session_setups_requested_total", "Session requests from this gateway's devices; scope=\"local\" (inside this gateway) or \"across\" (to another gateway's device).", ["scope"], perScope((x) => x.stats.requested));
  countedBy(registry, "keyproxy_session_setups_up_total", "SAs that came up (both ends confirmed their keys), new sessions and rekeys alike.", ["scope"], perScope((x) => x.stats.up));
  countedBy(registry, "keyproxy_session_setups_refused_total", "Session requests refused (policy, unknown or unregistered peer, no common suite, declined, no answer).", ["scope"], perScope((x) => x.stats.refused));
  countedBy(registry, "keyproxy_session_setups_failed_total", "SA setups that failed after the request was accepted (keys not confirmed in time or wrongly, the exchange with the other gateway failed).", ["scope"], perScope((x) => x.stats.failed));
  countedBy(registry, "keyproxy_session_rekeys_total", "SA replacements started (rekeys).", ["scope"], perScope((x) => x.stats.rekeyed));
  countedBy(registry, "keyproxy_frames_in_total", "Frames received from devices on the link port.", [], one(() => s.links.stats.framesIn));
  countedBy(registry, "keyproxy_frames_dropped_total", "Frames dropped on the link port (malformed, unauthenticated, bad CRC, replayed).", [], one(() => s.links.stats.framesDropped));
  countedBy(registry, "keyproxy_sa_frames_dropped_total", "SA frames not relayed (unknown SPI, not a party to it, before confirmation, the peer unreachable).", ["scope"], perScope((x) => x.stats.relayDropped));
  countedBy(registry, "keyproxy_link_connections_refused_total", "Connections the link port refused at its limits.", [], one(() => s.links.stats.connectionsRefused));

  gaugedBy(registry, "keyproxy_sas", "SAs this gateway keeps now (replaced ones still carrying stragglers included).", ["scope"], perScope((x) => x.sessions.size));
  gaugedBy(registry, "keyproxy_link_connections", "Connections open on the link port now: state=\"joined\" or \"unjoined\".", ["state"], () => {
    const c = s.links.connectionCount;
    return [[{ state: "joined" }, c.all - c.unjoined], [{ state: "unjoined" }, c.unjoined]];
  });
  const list = () => {
    const l = s.revocationList();
    return l ? [{ fleet: l.fleetId }, l] as const : undefined;
  };
  gaugedBy(registry, "keyproxy_revocation_list_serial", "Serial of the fleet revocation list held (absent without a fleet).", ["fleet"], () => {
    const l = list();
    return l ? [[l[0], l[1].serial]] : [];
  });
  gaugedBy(registry, "keyproxy_revocation_list_age_seconds", "Seconds since the held revocation list was issued (absent without a fleet).", ["fleet"], () => {
    const l = list();
    return l ? [[l[0], s.now() - l[1].issuedAt]] : [];
  });

  const setups = new Histogram({ name: "keyproxy_session_setup_seconds", help: "Time from a device's session request to its SA being up (new sessions, not rekeys).", labelNames: ["scope"], buckets: SETUP_BUCKETS, registers: [registry] });
  const timer = new SetupTimer((scope, seconds) => setups.observe({ scope }, seconds));
  const unsubscribe = s.log.subscribe((rec) => timer.onRecord(rec));
  return { registry, stop: unsubscribe };
}

/** The metrics port was taken: says which address and which flag moves it. */
export class MetricsAddressInUse extends Error {}

export interface MetricsServer {
  readonly address: { host: string; port: number };
  close(): Promise<void>;
}

/** Answers one request: /metrics, /healthz, or 404 (405 for other methods). */
async function answer(req: http.IncomingMessage, res: http.ServerResponse, registry: Registry, health: () => Health): Promise<void> {
  const path = (req.url ?? "/").split("?")[0];
  const head = req.method === "HEAD";
  const send = (status: number, type: string, body: string, extra: Record<string, string> = {}) => {
    res.writeHead(status, { "content-type": type, "cache-control": "no-store", ...extra });
    res.end(head ? undefined : body);
  };
  if (req.method !== "GET" && !head) return send(405, "text/plain; charset=utf-8", "only GET and HEAD\n", { allow: "GET, HEAD" });
  if (path === "/metrics") return send(200, registry.contentType, await registry.metrics());
  if (path === "/healthz") {
    const h = health();
    if (!h.ok) return send(503, "text/plain; charset=utf-8", `unavailable: ${h.reason}\n`);
    return send(200, "text/plain; charset=utf-8", h.mqtt === undefined ? "ok\n" : `ok\nmqtt broker: ${h.mqtt ? "connected" : "not connected"}\n`);
  }
  send(404, "text/plain; charset=utf-8", "not found: try /metrics or /healthz\n");
}

/** Serves registry and health on host:port (port 0: any free port). */
export function serveMetrics(listen: { host: string; port: number }, registry: Registry, health: () => Health): Promise<MetricsServer> {
  const server = http.createServer((req, res) => {
    answer(req, res, registry, health).catch(() => {
      // A collect that threw: no partial exposition, and nothing of the error (it stays in the process).
      if (!res.headersSent) res.writeHead(500, { "content-type": "text/plain; charset=utf-8" });
      res.end("metrics unavailable\n");
    });
  });
  // A scraper's idle keep-alive connection must not hold the gateway's stop.
  server.keepAliveTimeout = 5000;
  return new Promise((resolve, reject) => {
    server.once("error", (e: NodeJS.ErrnoException) => {
      reject(e.code === "EADDRINUSE"
        ? new MetricsAddressInUse(`cannot serve metrics on ${listen.host}:${listen.port}: the address is in use (another gateway? use --metrics-listen <host:port>)`)
        : e);
    });
    server.listen(listen.port, listen.host, () => {
      const a = server.address() as import("node:net").AddressInfo;
      resolve({
        address: { host: a.address, port: a.port },
        close: () => new Promise<void>((r) => {
          server.close(() => r());
          server.closeIdleConnections();
        }),
      });
    });
  });
}
