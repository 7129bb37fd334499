import { chmodSync, closeSync, existsSync, mkdirSync, openSync, writeSync } from "node:fs";
import { join } from "node:path";
import { Gateway, DEFAULT_LISTEN, type FleetOptions } from "../gateway/gateway.ts";
import { KEY_AGREEMENT_POLICIES, type KeyAgreementPolicy } from "../gateway/crossgw/exchange.ts";
import { DEFAULT_RECHECK_MS } from "../gateway/crossgw/cross-gateway.ts";
import { DEFAULT_SESSIONS } from "../gateway/sessions/session-broker.ts";
import { DEV_FLEET_DIR, DEV_FLEET_WARNING, Fleet, FLEET_FILE, isGatewayId, loadGatewayCredentials } from "../gateway/fleet/fleet.ts";
import { DEFAULT_BROKER_LISTEN } from "../gateway/monitor/embedded-broker.ts";
import { Logger } from "../gateway/log/logger.ts";
import { DEFAULT_CENTRAL, type CentralSettings } from "../gateway/ble/central.ts";
import { loadNoble } from "../gateway/ble/load-noble.ts";
import { loadOrCreateBridgeKey } from "../gateway/ble/bridge-key.ts";
import { LIFETIME_CEILING } from "../gateway/registry/registrar.ts";
import { DEFAULT_LINK_LIMITS as LIMITS, type LinkLimits } from "../gateway/link/limits.ts";
import type { MqttOptions } from "../gateway/monitor/monitor.ts";
import { brokerUrl, helpRows, hostPort, parse, positiveInt, UsageError } from "./args.ts";
import { DEFAULT_DATA_DIR } from "./config.ts";
import { noteNewDataDir } from "./git-worktree.ts";
import { describeEvent } from "./monitor-cmd.ts";
import { httpOptions, TOKEN_ENV, viewUrl } from "./console-cmd.ts";
import { forTerminal } from "../gateway/log/terminal.ts";
import type { EmulatedDevice } from "../emulator/device.ts";

// Defined with the config files, which look for keyproxy.json there; exported here as before.
export { DEFAULT_DATA_DIR };

const HELP = `usage: keyproxy gateway [options]

Runs a gateway on embedded defaults: the registry is a SQLite file under the
data directory (default ${DEFAULT_DATA_DIR}, created owner-only), devices
connect on --listen (default ${DEFAULT_LISTEN.host}:${DEFAULT_LISTEN.port}), and it publishes its monitoring
(docs/MONITORING.md) to an embedded MQTT broker on ${DEFAULT_BROKER_LISTEN.host}:${DEFAULT_BROKER_LISTEN.port} (or, if
a broker is already there, to that one). Over the same broker it reaches the
other gateways of its fleet, for sessions across gateways (docs/FLEET.md): its
certificate and the fleet's trust anchor come from "keyproxy fleet
issue-gateway --data-dir"; a gateway with none makes a development fleet of its
own and says so loudly. One gateway at a time on a data directory, and one per
--id on a broker (one per --instance of it, when a domain runs several processes
on one PostgreSQL registry): a second is refused. Logs are JSON lines on stderr.
Stop with Ctrl-C.

${helpRows([
  ["--data-dir <dir>", "where the registry and the gateway's keys and certificate live"],
  ["--db <url>", "the registry in PostgreSQL (postgres://user@host/db) instead of the data directory's SQLite file; the key-encryption key stays in the data directory (keyproxy db copy moves an SQLite registry there)"],
  ["--listen <host:port>", "device link address (port 0: any free port)"],
  ["--id <domain>", "the gateway's name: its domain, so its devices are name@<domain> across the fleet (default: kept from the last run, else gateway.local)"],
  ["--instance <name>", "run as this instance of the domain, beside others on the same --db postgres://... and --mqtt broker; each instance has its own data directory holding copies of the domain's gateway.key and keyproxy.kek (docs/SCALING.md, \"Instances of a domain\"); the broker must support shared subscriptions (Mosquitto does) when the fleet is on"],
  ["--max-lifetime <s>", `longest registration granted, seconds (default 86400, at most ${LIFETIME_CEILING}: 20 days)`],
  ["--min-lifetime <s>", "shortest registration granted, seconds (default 60)"],
  ["--mqtt <url>", "publish monitoring to this broker (e.g. mqtt://127.0.0.1:1883) instead of an embedded one"],
  ["--mqtt-listen <host:port>", "the embedded broker's address (port 0: any free port)"],
  ["--no-mqtt", "no monitoring, no broker"],
  ["--metrics <s>", "seconds between metrics messages (default 10)"],
  ["--metrics-listen <host:port>", "serve Prometheus metrics (/metrics) and a health check (/healthz) over HTTP on this address (default: off; docs/MONITORING.md)"],
  ["--http <host:port>", "serve the web fleet view of this gateway on this address (default: off; docs/MONITORING.md, \"Web fleet view\")"],
  ["--http-token-file <path>", `a file holding the token the fleet view's viewers must give (else ${TOKEN_ENV}); required when --http is not a loopback address`],
  ["--no-fleet", "no sessions across gateways: devices reach only devices of this gateway"],
  ["--sa-lifetime <s>", `lifetime of a session's keys, seconds (default ${DEFAULT_SESSIONS.lifetime}); devices rekey at 80%`],
  ["--sa-limit <n>", `messages per direction before a session's keys must be replaced (default ${DEFAULT_SESSIONS.limit})`],
  ["--recheck <s>", `how often every session across gateways is judged again against the fleet's revocation list, seconds (default ${DEFAULT_RECHECK_MS / 1000})`],
  ["--verifier <id>", 'ask the fleet\'s verifier running on its own ("keyproxy verifier --id <id>") about remote certificates, instead of the one in this gateway'],
  ["--key-agreement <policy>", "key agreement of the exchange with other gateways: x25519 (default), hybrid (X25519 + ML-KEM-768 whenever the other gateway does it too) or hybrid-only (refuse any exchange without ML-KEM-768); give every gateway of a fleet the same (docs/FLEET.md)"],
  ["--ble", "also carry Bluetooth LE handsets' links with this machine's adapter (needs the optional package @stoprocent/noble and a usable adapter: docs/HARDWARE.md)"],
  ["--ble-max-connections <n>", `handsets connected over Bluetooth at once (default ${DEFAULT_CENTRAL.maxConnections}); the others wait their turn`],
  ["--ble-hold <s>", `while others wait, a handset keeps its Bluetooth connection at least this long before it is let go for the next (default ${DEFAULT_CENTRAL.holdMs / 1000})`],
  ["--bridge-listen <host:port>", "take handsets' links from BLE bridges (keyproxy ble-bridge) on this address; needs --bridge-key-file"],
  ["--bridge-key-file <file>", "the key bridges must prove (32 bytes, hex, mode 0600); made when missing: copy it to each bridge"],
  ["--demo <n>", "also boot n emulated Puck.js handsets (the real firmware bundle) against this gateway and print what happens in plain words; the JSON log goes to <data-dir>/gateway.log"],
])}

Limits on the device port, for whoever can reach it (docs/OPERATIONS.md,
"Limits"):
${helpRows([
  ["--join-deadline <s>", `a connection must have joined this long after it opened (default ${LIMITS.joinDeadlineMs / 1000})`],
  ["--unjoined-idle <s>", `a connection that has not joined and sends nothing this long is closed (default ${LIMITS.unjoinedIdleMs / 1000})`],
  ["--max-connections <n>", `connections at once, joined or not (default ${LIMITS.maxConnections}); held under what ulimit -n leaves, with a warning`],
  ["--max-unjoined <n>", `connections at once that have not joined yet (default ${LIMITS.maxUnjoined}); when full, the oldest of them is closed to make room for a new one`],
  ["--max-unjoined-per-source <n>", `of those, from one IPv4 address or IPv6 /64 (default ${LIMITS.maxUnjoinedPerSource}); joined connections do not count, so many devices behind one NAT are fine`],
  ["--limit-loopback", "hold connections from this machine to --max-unjoined-per-source too (by default a BLE bridge or simulator on the gateway may bring any number of handsets at once)"],
  ["--max-bad-frames <n>", `malformed, unauthenticated or bad-CRC frames and rejected joins one connection may send; the next closes it (default ${LIMITS.maxBadFrames})`],
  ["--join-failures <n>", `failed joins naming one device from one source before that source waits to try that device again (default ${LIMITS.joinFailuresBeforeBackoff}); the wait starts at ${LIMITS.joinBackoffBaseMs / 1000} s and doubles`],
  ["--join-backoff-max <s>", `the longest such wait (default ${LIMITS.joinBackoffMaxMs / 1000})`],
])}`;

/** The limit flags' values, as GatewayOptions.limits: only those given (the rest keep their defaults). */
export function linkLimitsFromFlags(o: Record<string, string | boolean | undefined>): Partial<LinkLimits> {
  const out: Partial<LinkLimits> = {};
  const flag = (name: string, key: Exclude<keyof LinkLimits, "exemptLoopback">, unitMs: number) => {
    const v = o[name];
    if (typeof v === "string") out[key] = positiveInt(v, `--${name}`, 0) * unitMs;
  };
  flag("join-deadline", "joinDeadlineMs", 1000);
  flag("unjoined-idle", "unjoinedIdleMs", 1000);
  flag("max-connections", "maxConnections", 1);
  flag("max-unjoined", "maxUnjoined", 1);
  flag("max-unjoined-per-source", "maxUnjoinedPerSource", 1);
  flag("max-bad-frames", "maxBadFrames", 1);
  flag("join-failures", "joinFailuresBeforeBackoff", 1);
  flag("join-backoff-max", "joinBackoffMaxMs", 1000);
  if (o["limit-loopback"] === true) out.exemptLoopback = false;
  if ((out.joinBackoffMaxMs ?? LIMITS.joinBackoffMaxMs) < LIMITS.joinBackoffBaseMs) throw new UsageError(`--join-backoff-max is at least ${LIMITS.joinBackoffBaseMs / 1000} s`);
  return out;
}

/** The BLE central's flags, as GatewayOptions.ble's settings; undefined without --ble (then its
 *  other flags are a usage error: they would do nothing). */
export function bleSettingsFromFlags(o: Record<string, string | boolean | undefined>): Partial<CentralSettings> | undefined {
  const given = ["ble-max-connections", "ble-hold"].filter((f) => o[f] !== undefined);
  if (o.ble !== true) {
    if (given.length) throw new UsageError(`--${given[0]} is about the Bluetooth central, which only --ble starts`);
    return undefined;
  }
  return {
    maxConnections: positiveInt(o["ble-max-connections"] as string | undefined, "--ble-max-connections", DEFAULT_CENTRAL.maxConnections),
    holdMs: positiveInt(o["ble-hold"] as string | undefined, "--ble-hold", DEFAULT_CENTRAL.holdMs / 1000) * 1000,
  };
}

/** --bridge-listen and --bridge-key-file: both or neither. */
export function bridgeFlagsFrom(o: Record<string, string | boolean | undefined>): { listen: { host: string; port: number }; keyFile: string } | undefined {
  const listen = o["bridge-listen"] as string | undefined;
  const keyFile = o["bridge-key-file"] as string | undefined;
  if (listen === undefined && keyFile === undefined) return undefined;
  if (listen === undefined) throw new UsageError("--bridge-key-file goes with --bridge-listen <host:port>");
  if (keyFile === undefined) throw new UsageError("--bridge-listen needs --bridge-key-file <file>: the key bridges must prove (made there when missing)");
  return { listen: hostPort(listen, "--bridge-listen"), keyFile };
}

/** The bridge key, made when its file does not exist (said in the log, never the key). */
function bridgeKey(file: string, log: Logger): Uint8Array {
  try {
    const { key, created } = loadOrCreateBridgeKey(file);
    if (created) log.info("bridge-key-created", { file, next: "copy this file to each bridge (mode 0600)" });
    return key;
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

export async function gatewayCommand(argv: string[]): Promise<number> {
  const o = parse(argv, {
    "data-dir": { type: "string" },
    db: { type: "string" },
    listen: { type: "string" },
    id: { type: "string" },
    instance: { type: "string" },
    "max-lifetime": { type: "string" },
    "min-lifetime": { type: "string" },
    mqtt: { type: "string" },
    "mqtt-listen": { type: "string" },
    "no-mqtt": { type: "boolean" },
    metrics: { type: "string" },
    "metrics-listen": { type: "string" },
    http: { type: "string" },
    "http-token-file": { type: "string" },
    "no-fleet": { type: "boolean" },
    "sa-lifetime": { type: "string" },
    "sa-limit": { type: "string" },
    recheck: { type: "string" },
    verifier: { type: "string" },
    "key-agreement": { type: "string" },
    demo: { type: "string" },
    "join-deadline": { type: "string" },
    "unjoined-idle": { type: "string" },
    "max-connections": { type: "string" },
    "max-unjoined": { type: "string" },
    "max-unjoined-per-source": { type: "string" },
    "max-bad-frames": { type: "string" },
    "join-failures": { type: "string" },
    "join-backoff-max": { type: "string" },
    "limit-loopback": { type: "boolean" },
    ble: { type: "boolean" },
    "bridge-listen": { type: "string" },
    "bridge-key-file": { type: "string" },
    "ble-max-connections": { type: "string" },
    "ble-hold": { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  if (o.help) {
    console.log(HELP);
    return 0;
  }
  const policy = { maxLifetime: positiveInt(o["max-lifetime"], "--max-lifetime", 86400), minLifetime: positiveInt(o["min-lifetime"], "--min-lifetime", 60) };
  if (policy.minLifetime > policy.maxLifetime) throw new UsageError("--min-lifetime is above --max-lifetime");
  if (policy.maxLifetime > LIFETIME_CEILING) throw new UsageError(`--max-lifetime is at most ${LIFETIME_CEILING} s (20 days): devices renew with timers, which cannot run longer`);
  if ([o.mqtt !== undefined, o["mqtt-listen"] !== undefined, o["no-mqtt"] === true].filter(Boolean).length > 1) {
    throw new UsageError("--mqtt, --mqtt-listen and --no-mqtt exclude each other");
  }
  if (o.mqtt !== undefined) brokerUrl(o.mqtt, "--mqtt");
  const metricsSeconds = positiveInt(o.metrics, "--metrics", 10);
  const mqtt: MqttOptions | undefined = o["no-mqtt"]
    ? undefined
    : o.mqtt !== undefined
      ? { url: o.mqtt, metricsSeconds }
      : o["mqtt-listen"] !== undefined
        ? { embedded: hostPort(o["mqtt-listen"], "--mqtt-listen"), metricsSeconds }
        // The default address may be taken by a broker already (Mosquitto, another gateway): use it.
        : { embedded: DEFAULT_BROKER_LISTEN, orUseExisting: true, metricsSeconds };
  const http = httpOptions(o);
  if (http && !mqtt) throw new UsageError("--http shows what the gateway publishes over MQTT, which --no-mqtt turns off: drop one of them");
  const demo = o.demo === undefined ? 0 : positiveInt(o.demo, "--demo", 2);
  const dataDir = o["data-dir"] ?? DEFAULT_DATA_DIR;
  const sessions = { lifetime: positiveInt(o["sa-lifetime"], "--sa-lifetime", DEFAULT_SESSIONS.lifetime), limit: positiveInt(o["sa-limit"], "--sa-limit", DEFAULT_SESSIONS.limit) };
  if (sessions.lifetime > LIFETIME_CEILING) throw new UsageError(`--sa-lifetime is at most ${LIFETIME_CEILING} s (20 days)`);
  const recheckMs = positiveInt(o.recheck, "--recheck", DEFAULT_RECHECK_MS / 1000) * 1000;
  const limits = linkLimitsFromFlags(o);
  const bleSettings = bleSettingsFromFlags(o);
  const bridgeFlags = bridgeFlagsFrom(o);
  const fleetOn = mqtt !== undefined && !o["no-fleet"];
  if (fleetOn && o.id !== undefined && !isGatewayId(o.id)) throw new UsageError(`--id "${o.id}" is not a domain name (letters, digits, - _ and dots), which the fleet names devices by; pick one, or pass --no-fleet`);
  if ((o["no-fleet"] || o["no-mqtt"]) && (o.recheck !== undefined || o.verifier !== undefined)) throw new UsageError("--recheck and --verifier are about sessions across gateways, which --no-fleet and --no-mqtt turn off");
  if (o.verifier !== undefined && !isGatewayId(o.verifier)) throw new UsageError(`--verifier wants the verifier's id (a domain name), got "${o.verifier}"`);
  if (o.instance !== undefined && (o.db === undefined || o.mqtt === undefined)) {
    throw new UsageError("--instance runs one of several gateway processes of a domain: they share --db postgres://... and a broker (--mqtt <url>)");
  }
  const keyAgreement = o["key-agreement"] as KeyAgreementPolicy | undefined;
  if (keyAgreement !== undefined && !KEY_AGREEMENT_POLICIES.includes(keyAgreement)) throw new UsageError(`--key-agreement wants ${KEY_AGREEMENT_POLICIES.join(", ")}, got "${keyAgreement}"`);
  if ((o["no-fleet"] || o["no-mqtt"]) && keyAgreement !== undefined) throw new UsageError("--key-agreement is about sessions across gateways, which --no-fleet and --no-mqtt turn off");

  // In the demo, stdout is for people: the JSON log goes to a file next to the registry.
  // Read before the demo's log file or the gateway makes the directory.
  const warnIfNew = noteNewDataDir(dataDir);
  let logFd: number | undefined;
  let log: Logger | undefined;
  if (demo) {
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    chmodSync(dataDir, 0o700);
    logFd = openSync(join(dataDir, "gateway.log"), "a", 0o600);
    const fd = logFd;
    log = new Logger((line) => writeSync(fd, line + "\n"));
  }

  // Listen for Ctrl-C / SIGTERM from the start: one that arrives while the demo boots still stops cleanly.
  const stopRequested = new Promise<void>((resolve) => {
    process.once("SIGINT", () => resolve());
    process.once("SIGTERM", () => resolve());
  });
  const listen = o.listen ? hostPort(o.listen, "--listen") : undefined;
  const metricsListen = o["metrics-listen"] !== undefined ? hostPort(o["metrics-listen"], "--metrics-listen") : undefined;
  // Loaded only when asked for: the library is optional, and so is an adapter.
  const ble = bleSettings ? { noble: await loadNoble(), settings: bleSettings } : undefined;
  const bridges = bridgeFlags ? { listen: bridgeFlags.listen, key: bridgeKey(bridgeFlags.keyFile, log ?? new Logger()) } : undefined;
  const gw = await Gateway.start({
    ble,
    bridges,
    dataDir,
    database: o.db,
    listen,
    id: o.id,
    instance: o.instance,
    policy,
    mqtt,
    log,
    sessions,
    limits,
    metricsListen,
    http,
    fleet: fleetOn ? (id) => ({ ...fleetOptions(dataDir, id, recheckMs, log ?? new Logger(), demo > 0), verifier: o.verifier, keyAgreement }) : undefined,
  }).catch((e: NodeJS.ErrnoException) => {
    throw addressInUse(e, listen ?? DEFAULT_LISTEN) ?? e;
  });
  warnIfNew();
  let stopDemo: (() => void) | undefined;
  try {
    if (demo) stopDemo = await startDemo(gw, dataDir, demo);
  } catch (e) {
    await gw.stop();
    throw e;
  }
  await stopRequested;
  stopDemo?.();
  await gw.stop();
  if (demo) process.stdout.write("gateway stopped\n");
  if (logFd !== undefined) closeSync(logFd);
  return 0;
}

/** The gateway's fleet credentials from its data directory; without any, a development fleet of its
 *  own, announced loudly (stderr; the demo's narrative on stdout) and in the log every time the
 *  gateway starts with it. */
function fleetOptions(dataDir: string, id: string, recheckMs: number, log: Logger, demo: boolean): FleetOptions {
  if (!isGatewayId(id)) throw new UsageError(`the gateway id "${id}" (kept from an earlier run) is not a domain name, which the fleet names devices by: pass --id <domain>, or --no-fleet`);
  const { credentials, devFleetCreated } = loadGatewayCredentials(dataDir, id, Math.floor(Date.now() / 1000), true);
  const devDir = join(dataDir, DEV_FLEET_DIR);
  const devFleet = existsSync(join(devDir, FLEET_FILE)) ? Fleet.open(devDir) : undefined;
  const usingDevFleet = devFleet !== undefined && Buffer.compare(devFleet.anchor.caPublicKey, credentials.anchor.caPublicKey) === 0;
  if (usingDevFleet) {
    if (demo) process.stdout.write(`demo: no fleet configured, so this gateway made a development fleet of its own (fine for a demo, not for production: docs/FLEET.md)\n`);
    else process.stderr.write(`\nWARNING: ${DEV_FLEET_WARNING}\n\n`);
    log.warn("dev-fleet", { created: devFleetCreated, fleet: credentials.anchor.fleetId, dir: devDir, reason: DEV_FLEET_WARNING });
  }
  return { credentials, devFleet: usingDevFleet ? devFleet : undefined, recheckMs };
}

/** The first-run demo: n emulated Puck.js handsets against gw, narrated on stdout. */
async function startDemo(gw: Gateway, dataDir: string, n: number): Promise<() => void> {
  // Loaded only for the demo: the firmware build and the emulator are not part of a gateway.
  const { buildFirmware } = await import("../flash/build.ts");
  const { startSim } = await import("../emulator/sim.ts");
  // Device ids, reasons and the handsets' console lines are not ours to send to a terminal raw.
  const say = (s: string) => process.stdout.write(forTerminal(s) + "\n");
  say(`keyproxy gateway "${gw.id}": devices connect on ${gw.address.host}:${gw.address.port}; registry and JSON log in ${dataDir}`);
  const m = gw.monitoring;
  if (m) {
    const u = new URL(m.url);
    say(`monitoring on MQTT at ${m.url}; watch it with`);
    say(`  mosquitto_sub -h ${u.hostname.replace(/^\[|\]$/g, "")} -p ${u.port || 1883} -t 'keyproxy/#' -v`);
    say(`  npx keyproxy monitor${m.url === "mqtt://127.0.0.1:1883" ? "" : ` --mqtt ${m.url}`}`);
  }
  if (gw.web) say(`web fleet view on ${viewUrl(gw.web.address)}`);
  say(`demo: building the Puck.js firmware and booting ${n} emulated handset${n === 1 ? "" : "s"} (Ctrl-C stops everything)`);
  const build = await buildFirmware({ board: "puckjs", outDir: join(dataDir, "sim", "build") });
  if (!build.ok) throw new Error(`the puckjs firmware does not build:\n${build.problems.join("\n")}`);
  // Only what a person wants to see on a first run: what happened to each handset and its sessions.
  const unsubscribe = gw.log.subscribe((rec) => {
    if (typeof rec.device === "string" || rec.event.startsWith("session")) say(describeEvent(rec));
  });
  // The handsets' own console lines that the demo application prints (below).
  const onLog = (id: string, line: string) => {
    if (line.startsWith("demo:")) say(`${id}: ${line.slice(6)}`);
  };
  const sim = await startSim({ dataDir, gateway: gw.address, count: n, board: "puckjs", bundle: build.code, lifetime: 3600, onLog });
  let stopped = false;
  if (n >= 2) void talk(gw, sim.devices, say, () => stopped).catch((e) => say(`demo: ${(e as Error).message}`));
  return () => {
    stopped = true;
    unsubscribe();
    sim.stop();
  };
}

/** sim-1 calls sim-2 for the application "demo", sends three messages, and hangs up; sim-2 echoes.
 *  The applications are installed over each handset's console, as a user would type them. */
async function talk(gw: Gateway, devices: EmulatedDevice[], say: (s: string) => void, stopped: () => boolean): Promise<void> {
  const { callerApp, echoApp, whenRegistered } = await import("../emulator/sim.ts");
  const [caller, callee] = devices;
  if (!(await whenRegistered(caller, 30_000, stopped)) || !(await whenRegistered(callee, 30_000, stopped))) return;
  if (!(await gw.policy.rules()).some((r) => r.subject === "sim-1" && r.object === "sim-2" && r.app === "demo")) {
    await gw.policy.add("sim-1", "sim-2", "demo", "allow");
    say("demo: policy now allows sim-1 -> sim-2 for the application \"demo\" (keyproxy policy list)");
  }
  callee.eval(echoApp("demo"));
  caller.eval(callerApp("sim-2", "demo"));
}

/** The device link's address taken (EADDRINUSE), most often by a gateway already running: the error
 *  names the address and the option that moves this one elsewhere. Exit 1 through main(), not 2: the
 *  command line is right, the machine is busy. (The embedded broker says the same of its own address.) */
function addressInUse(e: NodeJS.ErrnoException & { address?: string; port?: number }, link: { host: string; port: number }): Error | undefined {
  if (e.code !== "EADDRINUSE") return undefined;
  return new Error(`cannot listen on ${e.address ?? link.host}:${e.port ?? link.port}: the address is in use (another gateway? use --listen <host:port>)`);
}
