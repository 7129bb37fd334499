// A gateway: the registry and its SQLite file, the gateway's signing key, the link server and the
// registrar, started together on a data directory.

import { mkdirSync, chmodSync, existsSync } from "node:fs";
import { join } from "node:path";
import * as cbor from "./encoding/cbor.ts";
import { nodeCrypto, type GatewayCrypto } from "./crypto/symmetric.ts";
import { CrossGateway, DEFAULT_RECHECK_MS } from "./crossgw/cross-gateway.ts";
import type { KeyAgreementPolicy } from "./crossgw/exchange.ts";
import type { Fleet, GatewayCredentials } from "./fleet/fleet.ts";
import { FleetTrust } from "./fleet/trust.ts";
import { lockDataDir, type DataDirLock } from "./registry/data-dir-lock.ts";
import { loadOrCreateGatewayKey } from "./fleet/identity.ts";
import { Interlink } from "./fleet/interlink.ts";
import { checkerTrust } from "./fleet/verifier.ts";
import { BridgeServer } from "./ble/bridge-server.ts";
import { BleCentral, type CentralSettings } from "./ble/central.ts";
import { CarriedLink } from "./ble/carried-link.ts";
import type { Noble } from "./ble/noble-api.ts";
import { RadioBook } from "./ble/radio-book.ts";
import { LinkServer } from "./link/server.ts";
import type { LinkLimits } from "./link/limits.ts";
import { Logger } from "./log/logger.ts";
import { escapeTopicLevel, GatewayIdInUse, redactUrl, retainedStatus, startMonitoring, TOPIC_ROOT, type MqttOptions, type Monitoring } from "./monitor/monitor.ts";
import { gatewayHealth, gatewayMetrics, serveMetrics, type MetricsServer } from "./monitor/prometheus.ts";
import { serveBrokerFleetView, type FleetViewServer } from "./web/fleet-server.ts";
import { Policy } from "./registry/policy.ts";
import { DEFAULT_POLICY, LIFETIME_CEILING, Registrar, type RegistrationPolicy } from "./registry/registrar.ts";
import { DEFAULT_SESSIONS, SessionBroker, type SessionSettings } from "./sessions/session-broker.ts";
import type { SessionHook, SessionHookContext } from "./sessions/hook.ts";
import { GroupKeeper } from "./sessions/groups.ts";
import { GroupLink } from "./crossgw/groups-remote.ts";
import { Instances } from "./instances/instances.ts";
import { isDatabaseUrl, NotARegistry, Store, type StoreOptions } from "./registry/store.ts";
import { KEK_FILE, KEK_FILE_ENV } from "./registry/kek.ts";
import { CloseReason, Msg, type InnerMessage, type SaData } from "../firmware/proto/messages.ts";

export const DB_FILE = "keyproxy.db";
export const DEFAULT_LISTEN = { host: "127.0.0.1", port: 7447 };

export interface GatewayOptions {
  dataDir: string;
  /** The registry in PostgreSQL (postgres://...) instead of the data directory's SQLite file; the
   *  key-encryption key stays in the data directory (docs/OPERATIONS.md, "PostgreSQL"). */
  database?: string;
  listen?: { host: string; port: number };
  /** Gateway name, written into the certificates it issues (iss). Default: stored, else "gateway.local". */
  id?: string;
  /** This process's name among several instances of the domain (docs/SCALING.md, "Instances of a
   *  domain"): they share the PostgreSQL registry (`database`) and talk over the MQTT broker (`mqtt`).
   *  Default: none, a lone gateway. */
  instance?: string;
  policy?: Partial<RegistrationPolicy>;
  /** Seconds since the epoch; tests pass a clock they control. */
  now?: () => number;
  log?: Logger;
  /** The gateway's symmetric crypto (default node:crypto and tweetnacl); tests wrap it to observe. */
  crypto?: GatewayCrypto;
  /** Monitoring over MQTT (docs/MONITORING.md): a broker URL, or the embedded broker. Default: none. */
  mqtt?: MqttOptions;
  /** SA lifetime, message limit, timeouts and suite matching (gateway/sessions/session-broker.ts). */
  sessions?: Partial<SessionSettings>;
  /** Extra session handling offered every session message and SA frame first (cross-gateway sessions:
   *  gateway/crossgw/cross-gateway.ts). Default: none, and sessions stay inside this gateway. */
  sessionHook?: (ctx: SessionHookContext) => SessionHook;
  /** Sessions across gateways (docs/FLEET.md): this gateway's fleet credentials. Needs `mqtt`: the
   *  interlink to other gateways runs over the same broker. Default: none. */
  fleet?: FleetOptions | ((gatewayId: string) => FleetOptions);
  /** What the link port allows peers that have not joined (gateway/link/limits.ts, docs/OPERATIONS.md
   *  "Limits"). Default: DEFAULT_LINK_LIMITS. */
  limits?: Partial<LinkLimits>;
  /** Milliseconds for the link server's join backoff (default Date.now); tests pass a clock they control. */
  nowMs?: () => number;
  /** Serve Prometheus metrics and a health check over HTTP on this address (docs/MONITORING.md,
   *  "Prometheus"; port 0: any free port). Default: none. */
  metricsListen?: { host: string; port: number };
  /** Serve the web fleet view of this gateway over HTTP (docs/MONITORING.md, "Web fleet view"; port 0:
   *  any free port). It shows what the gateway publishes over MQTT, so it needs `mqtt`. A token is
   *  required when the address is not loopback. Default: none. */
  http?: { listen: { host: string; port: number }; token?: string };
  /** Carry BLE handsets' links with this process's own central (docs/OPERATIONS.md, "Bluetooth"):
   *  the library (loadNoble in gateway/ble/load-noble.ts, or a test's double) and the central's
   *  settings. Default: none. */
  ble?: { noble: Noble; settings?: Partial<CentralSettings> };
  /** Take handsets' links from BLE bridges elsewhere (`keyproxy ble-bridge`) on this address, each
   *  bridge authenticated with this 32-byte key (gateway/ble/bridge-protocol.ts). Default: none. */
  bridges?: { listen: { host: string; port: number }; key: Uint8Array; handshakeMs?: number };
}

export interface FleetOptions {
  credentials: GatewayCredentials;
  /** A lone development gateway's own fleet (loadGatewayCredentials made it): it re-signs its list. */
  devFleet?: Fleet;
  /** How often every live SA across gateways is judged again, ms (default 30 s). */
  recheckMs?: number;
  /** Longest a verifier's "good" answer is cached, seconds (default 300). */
  maxAnswerLifetime?: number;
  /** The interlink's MQTT version (default "auto": 5, or 3.1.1 where the broker refuses 5). */
  protocolVersion?: 4 | 5 | "auto";
  /** The fleet's key-agreement policy for exchanges with other gateways (default "x25519"). */
  keyAgreement?: KeyAgreementPolicy;
  /** Ask the verifier on its own with this id (gateway/fleet/verifier-service.ts) about remote device
   *  certificates, instead of the in-process one. */
  verifier?: string;
}

/** Makes the data directory if needed, owner-only since it holds root keys. */
function ownDataDir(dataDir: string): void {
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  chmodSync(dataDir, 0o700);
}

/** Opens (creating if needed) the data directory and its registry, owner-only: for the commands that
 *  make a registry (the gateway, provisioning, adding a device). */
/** A --db that is not a PostgreSQL URL: the SQLite registry is always the data directory's own file. */
function checkDatabaseUrl(database: string | undefined): void {
  if (database !== undefined && !isDatabaseUrl(database)) throw new Error(`--db wants a PostgreSQL URL (postgres://user@host/database), not "${database.slice(0, 80)}"; without --db the registry is the data directory's ${DB_FILE}`);
}

export async function openStore(dataDir: string, database?: string, opts: Pick<StoreOptions, "busyTimeoutMs" | "onConnectionLost"> = {}): Promise<Store> {
  checkDatabaseUrl(database);
  ownDataDir(dataDir);
  // In PostgreSQL, the KEK stays in the data directory: on each instance's own disk, never in the database.
  if (database) return Store.open(database, { kekFile: process.env[KEK_FILE_ENV] ?? join(dataDir, KEK_FILE), onConnectionLost: opts.onConnectionLost });
  return Store.open(join(dataDir, DB_FILE), opts);
}

/** A data directory without a registry, given to a command that only uses one. */
export class NoRegistry extends Error {}

/** Opens the registry of a data directory that has one, creating and changing nothing: for the
 *  commands that read or edit a registry (a --data-dir with a typo must not become a new, empty one). */
export async function openRegistry(dataDir: string, database?: string): Promise<Store> {
  checkDatabaseUrl(database);
  if (database) return Store.open(database, { create: false, kekFile: process.env[KEK_FILE_ENV] ?? join(dataDir, KEK_FILE) });
  const file = join(dataDir, DB_FILE);
  const fix = `run \`keyproxy gateway --data-dir ${dataDir}\` or \`keyproxy provision --data-dir ${dataDir}\` first, or check --data-dir`;
  if (!existsSync(file)) throw new NoRegistry(`no registry at ${dataDir}: ${existsSync(dataDir) ? `it holds no ${DB_FILE}` : "no such directory"}; ${fix}`);
  try {
    return await Store.open(file, { create: false });
  } catch (e) {
    if (e instanceof NotARegistry) throw new NoRegistry(`no registry at ${dataDir}: its ${DB_FILE} is not a keyproxy registry; ${fix}`);
    throw e;
  }
}

/** Fleet trust, the interlink over the gateway's broker, and the cross-gateway hook on top. */
async function startFleet(f: FleetOptions, gw: Gateway, ctx: SessionHookContext, url: string, dataDir: string, instance: string | undefined): Promise<CrossGateway> {
  const { credentials } = f;
  if (credentials.gatewayId !== gw.id) throw new Error(`the fleet certificate is for gateway "${credentials.gatewayId}", this gateway is "${gw.id}"`);
  const trust = new FleetTrust({ dataDir, anchor: credentials.anchor, log: gw.log, now: ctx.now, verifierId: gw.id, devFleet: f.devFleet, maxAnswerLifetime: f.maxAnswerLifetime });
  const interlink = await Interlink.connect({
    url, identity: credentials, trust: checkerTrust(trust.checker), now: ctx.now, log: gw.log, protocolVersion: f.protocolVersion ?? "auto", instance,
    keyAgreement: f.keyAgreement, // the channels follow the fleet's policy where it names one (else hybrid when both can)
  });
  try {
    const checker = f.verifier ? await trust.remoteChecker(interlink, f.verifier) : trust.checker;
    const cross = new CrossGateway(ctx, { interlink, gatewayCert: credentials.certificate, checker, recheckMs: f.recheckMs ?? DEFAULT_RECHECK_MS, keyAgreement: f.keyAgreement });
    trust.onList((list) => cross.revocationList(list));
    // Group SAs with members in other domains, and our devices in other domains' groups.
    const groupLink = new GroupLink(ctx, gw.groups, interlink);
    gw.groups.remote = groupLink;
    trust.onList((list) => groupLink.revocationList(list));
    // A revoked peer gateway's pairwise channel ends as the list arrives, not at its next message.
    trust.onList(() => void interlink.revalidateChannels());
    // The list held from the last run applies at once (a device revoked while we were down).
    if (trust.list) cross.revocationList(trust.list);
    if (trust.list) groupLink.revocationList(trust.list);
    await trust.attach(interlink);
    gw.interlink = interlink;
    gw.trust = trust;
    gw.log.info("interlink-started", { gateway: gw.id, fleet: credentials.anchor.fleetId, revocationSerial: trust.list?.serial ?? 0, verifier: f.verifier ?? "in-process", keyAgreement: f.keyAgreement ?? "x25519" });
    return cross;
  } catch (e) {
    trust.close();
    await interlink.close();
    throw e;
  }
}

/** Revokes a device: registry first (its joins are refused from now on), then its sessions end and
 *  its link closes (after the SaClosed messages went out). */
async function revoke(store: Store, sessions: SessionBroker, links: LinkServer, log: Logger, now: () => number, deviceId: string, why: string, instances?: Instances): Promise<boolean> {
  if (!(await store.revokeDevice(deviceId, now(), why))) return false;
  log.warn("device-revoked", { device: deviceId, reason: why });
  sessions.endAll(deviceId, CloseReason.Revoked, `revoked: ${why}`);
  links.disconnect(deviceId, "device revoked");
  // At the domain's other instances too: the SAs they run end, and a link the device has there closes.
  instances?.endAllElsewhere(deviceId, CloseReason.Revoked, `revoked: ${why}`, true);
  return true;
}

/** Every process on one PostgreSQL registry (the instances of a domain) signs with the same gateway
 *  key, so that a device's certificate does not depend on which instance issued it: the first one
 *  records its public key, and one with another key is refused before it issues anything. */
async function sameGatewayKey(store: Store, publicKey: Uint8Array, dataDir: string): Promise<void> {
  const mine = Buffer.from(publicKey).toString("hex");
  await store.query("INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO NOTHING", [GATEWAY_PUBLIC_KEY, mine]);
  const recorded = await store.getMeta(GATEWAY_PUBLIC_KEY);
  if (recorded !== mine) throw new Error(`${join(dataDir, "gateway.key")} is not the gateway key this registry's other instances sign with: copy gateway.key (and keyproxy.kek) from the data directory of an instance of this domain`);
}

const GATEWAY_PUBLIC_KEY = "gateway_public_key";

/** An instance's name: what a hostname label may be, since it names MQTT topics and log records. */
const INSTANCE_NAME = /^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/;

/** The bus to the domain's other instances (gateway/instances/), checked for what it needs first. */
async function startInstance(opts: GatewayOptions, id: string, store: Store, log: Logger, now: () => number): Promise<Instances> {
  const instance = opts.instance as string;
  if (!INSTANCE_NAME.test(instance)) throw new Error(`--instance "${instance.slice(0, 80)}" must be 1 to 63 letters, digits, - and _, starting with a letter or digit`);
  if (store.engine !== "postgres") throw new Error("instances of a domain share its registry: --instance needs --db postgres://...");
  if (!opts.mqtt) throw new Error("instances of a domain talk over MQTT: --instance needs --mqtt");
  if (opts.sessionHook) throw new Error("an instance runs sessions across gateways with the fleet (GatewayOptions.fleet), not with a sessionHook");
  const url = "url" in opts.mqtt ? opts.mqtt.url : undefined;
  if (!url) throw new Error("instances of a domain share one broker: --instance needs --mqtt <url>, not the embedded broker of one of them");
  // Before the bus says "online": a second process under a name that is online must change nothing
  // (its presence, and the "gone" it would say at its stop, would make the others take the SAs of
  // the running one over).
  const status = await retainedStatus(url, monitoringId(id, instance));
  if (status !== "unreachable" && status?.state === "online") throw new GatewayIdInUse(`instance "${instance}" of ${id} is online on the MQTT broker ${redactUrl(url)} already: give this one a name of its own (--instance), or stop the other first`);
  const instances = await Instances.start({ domain: id, instance, url, store, log, now, graceMs: sessionSettings(opts.sessions).graceMs });
  log.info("instance-started", { domain: id, instance, others: instances.others.join(",") });
  return instances;
}

/** The name an instance publishes its monitoring under: its own, beside the domain's other instances. */
function monitoringId(id: string, instance: string | undefined): string {
  return instance === undefined ? id : `${instance}.${id}`;
}

/** Session settings with defaults, the SA lifetime held under the ceiling timers allow. */
function sessionSettings(s: Partial<SessionSettings> | undefined): SessionSettings {
  const out = { ...DEFAULT_SESSIONS, ...s };
  if (!(out.lifetime >= 1 && out.lifetime <= LIFETIME_CEILING)) throw new Error(`session lifetime must be 1 to ${LIFETIME_CEILING} seconds, got ${out.lifetime}`);
  return out;
}

export class Gateway {
  private constructor(
    readonly store: Store,
    readonly links: LinkServer,
    readonly address: { host: string; port: number },
    readonly id: string,
    readonly log: Logger,
    readonly sessions: SessionBroker,
    readonly policy: Policy,
    private readonly lock: DataDirLock,
  ) {}

  static async start(opts: GatewayOptions): Promise<Gateway> {
    const log = opts.log ?? new Logger();
    const now = opts.now ?? (() => Math.floor(Date.now() / 1000));
    ownDataDir(opts.dataDir);
    // Before the registry is touched: a second gateway on this directory changes nothing.
    const lock = lockDataDir(opts.dataDir);
    let store: Store;
    try {
      store = await openStore(opts.dataDir, opts.database, { onConnectionLost: (reason) => log.warn("registry-connection-lost", { reason }) });
    } catch (e) {
      lock.release();
      throw e;
    }
    // What polls the registry on a timer, to be stopped before the store closes if the start fails.
    let groupKeeper: GroupKeeper | undefined;
    let instances: Instances | undefined;
    try {
      const id = opts.id ?? (await store.getMeta("gateway_id")) ?? "gateway.local";
      await store.setMeta("gateway_id", id);
      if (opts.instance !== undefined) instances = await startInstance(opts, id, store, log, now);
      const { key, created } = loadOrCreateGatewayKey(opts.dataDir);
      if (created) log.info("gateway-key-created", { file: join(opts.dataDir, "gateway.key") });
      if (store.engine === "postgres") await sameGatewayKey(store, key.publicKey, opts.dataDir);
      const crypto = opts.crypto ?? nodeCrypto();
      const policy = new Policy(store);
      // The broker and the link server need each other: the broker sends through the links, the links
      // hand session messages and SA frames to the broker.
      let links: LinkServer | undefined;
      const send = (dev: string, m: InnerMessage) => links!.sendTo(dev, m);
      const relay = (dev: string, payload: Uint8Array) => links!.relayTo(dev, payload);
      const isLinked = (dev: string) => links!.links.has(dev);
      // With several instances the broker reaches a device wherever in the domain it is linked.
      const domainWide = instances && {
        send: (dev: string, m: InnerMessage) => instances!.send(dev, m),
        relay: (dev: string, payload: Uint8Array) => instances!.relay(dev, payload),
        isLinked: (dev: string) => instances!.isLinked(dev),
      };
      const settings = sessionSettings(opts.sessions);
      let hook: SessionHook | undefined;
      let groups: GroupKeeper | undefined;
      // Whenever the broker ends every session of a device, the hook ends that device's others, and
      // the device leaves its group keys.
      const onEndAll = (dev: string, reason: CloseReason, why: string) => {
        hook?.deviceGone(dev, reason, why);
        groups?.deviceGone(dev, reason, why);
      };
      // One SPI space per device: a local SA never takes an SPI held by an SA across gateways or a
      // group key.
      const spiTaken = (spi: number) => (hook?.holdsSpi?.(spi) ?? false) || (groups?.holdsSpi(spi) ?? false);
      const sessions = new SessionBroker({ store, policy, log, crypto, cbor, now, send, relay, isLinked, ...domainWide, settings, gatewayId: id, onEndAll, spiTaken, sharing: instances });
      // With several instances, one keeps the domain's groups and reaches their members wherever linked.
      groupKeeper = groups = new GroupKeeper({
        store, log, crypto, cbor, now, send, relay, isLinked, ...domainWide, settings, gatewayId: id, sharing: instances,
        spiTaken: (spi) => sessions.sessions.has(spi) || (hook?.holdsSpi?.(spi) ?? false),
      });
      const revokeDevice = (dev: string, why: string) => revoke(store, sessions, links!, log, now, dev, why, instances);
      const ctx: SessionHookContext = { gatewayId: id, store, policy, log, crypto, now, sessions, settings, send, relay, isLinked, ...domainWide, sharing: instances, revokeDevice };
      if (opts.fleet && (opts.sessionHook || !opts.mqtt)) throw new Error(opts.sessionHook ? "fleet and sessionHook exclude each other" : "sessions across gateways need MQTT (the interlink runs over it)");
      hook = opts.sessionHook?.(ctx);
      const answerRequest = async (dev: string, m: InnerMessage) => {
        links!.sendTo(dev, await registrar.handle(dev, m));
        // After its answer: a member that registered gets its groups' keys (from whichever instance
        // keeps them).
        if (m.t !== Msg.RegisterRequest) return;
        instances?.registered(dev);
        await groups!.registered(dev);
      };
      const registrar = new Registrar({
        store, log, crypto, permissions: policy, gatewayId: id, gatewayKey: key, policy: { ...DEFAULT_POLICY, ...opts.policy }, now,
        onDeregistered: (dev) => {
          sessions.endAll(dev, CloseReason.Deregistered, "deregistered");
          instances?.endAllElsewhere(dev, CloseReason.Deregistered, "deregistered", false);
        },
      });
      // A device's message or SA frame for what this process runs: from its own link, or sent on by
      // another instance of the domain where the device is linked (gateway/instances/). From its own
      // link, a session message about an SA another instance runs goes there instead.
      const ownMessage = (dev: string, m: InnerMessage, fromOwnLink: boolean): void | Promise<void> => {
        if (groups!.handle(dev, m) || hook?.handle(dev, m)) return;
        if (fromOwnLink && instances?.handleInner(dev, m)) return;
        if (m.t >= Msg.ConnectRequest) return sessions.handle(dev, m);
        return answerRequest(dev, m);
      };
      const deviceMessage = (dev: string, m: InnerMessage) => ownMessage(dev, m, false);
      const deviceFrame = (dev: string, m: SaData, payload: Uint8Array): void => {
        if (!groups!.relay(dev, m, payload) && !hook?.relay(dev, m, payload)) sessions.relay(dev, m, payload);
      };
      links = new LinkServer({
        store, log, crypto, cbor, now, limits: opts.limits, nowMs: opts.nowMs,
        // Synchronous where nothing waits for the registry (most session messages), so the frames
        // behind this one are not held back for nothing (gateway/link/server.ts, inOrder).
        onInner: (dev, m) => ownMessage(dev, m, true),
        onSaData: (dev, m, payload) =>
          groups!.relay(dev, m, payload) || hook?.relay(dev, m, payload) ||
          // An SA another instance runs: relayed from its row in the domain's database.
          (instances && !sessions.sessions.has(m.spi) ? instances.relayFrame(dev, m, payload) : sessions.relay(dev, m, payload)),
        onLink: (dev, up) => {
          // A link carried over Bluetooth: from now on this device's monitoring shows that radio.
          const transport = up ? links!.links.get(dev)?.socket : undefined;
          if (transport instanceof CarriedLink) radios.bind(dev, transport.remoteAddress);
          if (up) sessions.linkUp(dev);
          else sessions.linkDown(dev);
          instances?.linkChanged(dev, up);
        },
      });
      const radios = new RadioBook((dev) => gw.monitoring?.publisher.deviceChanged(dev));
      const want = opts.listen ?? DEFAULT_LISTEN;
      const address = await links.listen(want.host, want.port);
      // SAs across domains taken over from a gone instance run on in its CrossGateway (none without a fleet).
      const across = () => (hook instanceof CrossGateway ? hook : undefined);
      instances?.attach(links, sessions, {
        deviceMessage, deviceFrame,
        // The keeper takes the device into its groups; every instance tells the other domains' homes
        // that watch it from there (gateway/crossgw/groups-remote.ts).
        memberRegistered: (dev) => groups!.registered(dev),
        keeperChanged: (rejoined) => (rejoined ? groups!.rejoined() : groups!.keeperCheck()),
        adoptAcross: (rows) => across()?.adopt(rows) ?? rows,
        keepOnlyAcross: (spis) => across()?.keepOnly(spis),
      });
      const gw = new Gateway(store, links, address, id, log, sessions, policy, lock);
      gw.instances = instances;
      gw.radios = radios;
      gw.hook = hook;
      gw.groups = groups;
      gw.revokeDevice = revokeDevice;
      // Before "gateway-started", so that the record is the first event on MQTT.
      const sessionMetrics = () => ({
        sessionsLocal: sessions.sessions.size,
        sessionsAcross: gw.hook instanceof CrossGateway ? gw.hook.sessions.size : undefined,
        revocationSerial: gw.trust?.list?.serial,
        revocationIssuedAt: gw.trust?.list ? new Date(gw.trust.list.issuedAt * 1000).toISOString() : undefined,
      });
      if (opts.mqtt) gw.monitoring = await startMonitoring(opts.mqtt, { gatewayId: monitoringId(id, opts.instance), onlyLinked: instances !== undefined, listen: `${address.host}:${address.port}`, store, links, log, now, sessionMetrics, radio: (dev) => radios.forDevice(dev) }).catch(async (e) => { await links.close(); throw e; });
      if (opts.fleet && gw.monitoring) {
        try {
          const fleet = typeof opts.fleet === "function" ? opts.fleet(id) : opts.fleet;
          hook = gw.hook = await startFleet(fleet, gw, ctx, gw.monitoring.connectUrl, opts.dataDir, opts.instance);
        } catch (e) {
          await links.close();
          await gw.monitoring.stop();
          throw e;
        }
      }
      if (opts.metricsListen) {
        try {
          await gw.serveMetrics(opts.metricsListen, registrar, now);
        } catch (e) {
          await gw.stopServices();
          throw e;
        }
      }
      if (opts.http) {
        try {
          await gw.serveWeb(opts.http);
        } catch (e) {
          await gw.stopServices();
          gw.stopMetrics?.();
          await gw.metrics?.close();
          throw e;
        }
      }
      if (opts.ble || opts.bridges) {
        try {
          if (opts.bridges) await gw.listenForBridges(opts.bridges);
          if (opts.ble) await gw.startBle(opts.ble);
        } catch (e) {
          await gw.stopServices();
          gw.stopMetrics?.();
          await gw.metrics?.close();
          await gw.web?.close();
          throw e;
        }
      }
      // Every part is up, sessions across gateways included: SAs of gone instances can be taken over.
      instances?.ready();
      log.info("gateway-started", { id, instance: opts.instance, listen: `${address.host}:${address.port}`, dataDir: opts.dataDir });
      return gw;
    } catch (e) {
      groupKeeper?.close();
      await instances?.close();
      await store.close();
      lock.release();
      throw e;
    }
  }

  /** Revokes a device of this gateway: its joins are refused from now on, its registration goes, every
   *  session it has (here and across gateways) ends and its link is closed. False if it was revoked
   *  already or is unknown. */
  revokeDevice!: (deviceId: string, why: string) => Promise<boolean>;

  /** MQTT monitoring, when GatewayOptions.mqtt asked for it. */
  monitoring?: Monitoring;
  /** The session hook: GatewayOptions.sessionHook's, or the CrossGateway that GatewayOptions.fleet made. */
  hook?: SessionHook;
  /** The group SAs whose home is this gateway (keyproxy group; docs/PROTOCOL.md §5d). */
  groups!: GroupKeeper;
  /** With GatewayOptions.instance: this instance's part in its domain. */
  instances?: Instances;
  /** With GatewayOptions.fleet: the link to other gateways and what this gateway trusts. */
  interlink?: Interlink;
  trust?: FleetTrust;
  /** With GatewayOptions.metricsListen: the Prometheus endpoint. */
  metrics?: MetricsServer;
  private stopMetrics?: () => void;
  /** With GatewayOptions.http: the web fleet view. */
  web?: FleetViewServer;
  /** The radios of BLE handsets whose links this gateway carries (its own central's, or bridges'). */
  radios!: RadioBook;
  /** With GatewayOptions.ble: this process's BLE central. */
  ble?: BleCentral;
  /** With GatewayOptions.bridges: where BLE bridges bring their handsets' links. */
  bridgeServer?: BridgeServer;
  bridgeAddress?: { host: string; port: number };
  /** From the moment stop() is called: the health check says so at once. */
  private stopping = false;

  /** The Prometheus endpoint over this gateway's own counters (gateway/monitor/prometheus.ts). */
  private async serveMetrics(listen: { host: string; port: number }, registrar: Registrar, now: () => number): Promise<void> {
    const { registry, stop } = gatewayMetrics({
      links: this.links,
      registrar,
      sessions: this.sessions,
      across: () => (this.hook instanceof CrossGateway ? this.hook : undefined),
      revocationList: () => this.trust?.list,
      now,
      log: this.log,
    });
    this.stopMetrics = stop;
    try {
      this.metrics = await serveMetrics(listen, registry, () => this.health());
    } catch (e) {
      stop();
      throw e;
    }
    this.log.info("metrics-serving", { listen: `${this.metrics.address.host}:${this.metrics.address.port}` });
  }

  /** The web fleet view of this gateway, from its own monitoring topics (gateway/web/). */
  private async serveWeb(http: NonNullable<GatewayOptions["http"]>): Promise<void> {
    if (!this.monitoring) throw new Error("the web fleet view shows what the gateway publishes over MQTT: it needs monitoring (GatewayOptions.mqtt)");
    this.web = await serveBrokerFleetView({
      ...http,
      url: this.monitoring.connectUrl,
      topic: `${TOPIC_ROOT}/${escapeTopicLevel(this.id)}/#`,
      title: `gateway ${this.id}`,
    });
    this.log.info("web-serving", { listen: `${this.web.address.host}:${this.web.address.port}`, token: http.token !== undefined });
  }

  /** The gateway's own BLE central: each handset's link goes to the link server as a TCP one would. */
  private async startBle(ble: NonNullable<GatewayOptions["ble"]>): Promise<void> {
    const central = new BleCentral({
      noble: ble.noble,
      log: this.log,
      settings: ble.settings,
      onLink: (link) => this.links.acceptTransport(link),
      onRadio: (r) => this.radios.update(r),
    });
    await central.start();
    this.ble = central;
    this.log.info("ble-started", { maxConnections: central.settings.maxConnections, holdMs: central.settings.holdMs });
  }

  private async listenForBridges(b: NonNullable<GatewayOptions["bridges"]>): Promise<void> {
    const server = new BridgeServer({ key: b.key, links: this.links, radios: this.radios, log: this.log, handshakeMs: b.handshakeMs });
    this.bridgeAddress = await server.listen(b.listen.host, b.listen.port);
    this.bridgeServer = server;
    this.log.info("bridge-listening", { listen: `${this.bridgeAddress.host}:${this.bridgeAddress.port}` });
  }

  private health() {
    return gatewayHealth({
      stopping: this.stopping,
      registryOpen: !this.store.closed,
      linkListening: this.links.listening,
      mqttConnected: this.monitoring?.publisher.brokerConnected,
    });
  }

  async stop(): Promise<void> {
    this.stopping = true;
    // First: its viewers and its broker client go before the broker does.
    await this.web?.close();
    await this.stopServices();
    // Last: a scrape while the gateway stops is told so (503), and reads no closed store.
    this.stopMetrics?.();
    await this.metrics?.close();
    await this.store.close();
    this.lock.release();
    this.log.info("gateway-stopped", { id: this.id });
  }

  /** Everything but the metrics endpoint, the store and the lock. */
  private async stopServices(): Promise<void> {
    // The radio first: no handset's link arrives while the links close.
    await this.ble?.stop();
    await this.bridgeServer?.close();
    // Links first: closing them reports each device's link as lost to the broker, which would start
    // grace timers if it were closed already.
    await this.links.close();
    this.sessions.close();
    this.groups.close();
    // Its SAs across gateways end (the other gateways are told); with several instances, before the
    // bus closes, so that their devices linked at other instances are told too.
    this.hook?.close();
    // After the links: their "unlinked" went out. Saying "gone" lets another instance take this one's
    // SAs over at once (the SAs are not ended: their devices kept them and rejoin elsewhere).
    await this.instances?.close();
    this.trust?.close();
    await this.interlink?.close().catch(() => undefined);
    await this.monitoring?.stop(); // after the links (their last states), before the store closes
  }
}
