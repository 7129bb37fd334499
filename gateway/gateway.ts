// A gateway: the registry and its SQLite file, the gateway's signing key, the link server and the
// registrar, started together on a data directory.

import { mkdirSync, chmodSync } from "node:fs";
import { join } from "node:path";
import * as cbor from "./cbor.ts";
import { nodeCrypto, type GatewayCrypto } from "./crypto.ts";
import { loadOrCreateGatewayKey } from "./identity.ts";
import { LinkServer } from "./link-server.ts";
import { Logger } from "./log.ts";
import { startMonitoring, type MqttOptions, type Monitoring } from "./monitor.ts";
import { Policy } from "./policy.ts";
import { DEFAULT_POLICY, LIFETIME_CEILING, Registrar, type RegistrationPolicy } from "./registrar.ts";
import { DEFAULT_SESSIONS, SessionBroker, type SessionSettings } from "./sessions.ts";
import { Store } from "./store.ts";
import { CloseReason, Msg, type InnerMessage, type SaData } from "../firmware/proto/messages.ts";

export const DB_FILE = "keyproxy.db";
export const DEFAULT_LISTEN = { host: "127.0.0.1", port: 7447 };

export interface GatewayOptions {
  dataDir: string;
  listen?: { host: string; port: number };
  /** Gateway name, written into the certificates it issues (iss). Default: stored, else "gateway.local". */
  id?: string;
  policy?: Partial<RegistrationPolicy>;
  /** Seconds since the epoch; tests pass a clock they control. */
  now?: () => number;
  log?: Logger;
  /** The gateway's symmetric crypto (default node:crypto and tweetnacl); tests wrap it to observe. */
  crypto?: GatewayCrypto;
  /** Monitoring over MQTT (docs/MONITORING.md): a broker URL, or the embedded broker. Default: none. */
  mqtt?: MqttOptions;
  /** SA lifetime, message limit, timeouts and suite matching (gateway/sessions.ts). */
  sessions?: Partial<SessionSettings>;
  /** Extra session handling offered every session message and SA frame first (cross-gateway sessions:
   *  gateway/crossgw.ts). Default: none, and sessions stay inside this gateway. */
  sessionHook?: (ctx: SessionHookContext) => SessionHook;
}

/** What a session hook may use: the gateway's own parts. */
export interface SessionHookContext {
  gatewayId: string;
  store: Store;
  policy: Policy;
  log: Logger;
  crypto: GatewayCrypto;
  now: () => number;
  sessions: SessionBroker;
  settings: SessionSettings;
  send: (deviceId: string, m: InnerMessage) => boolean;
  relay: (deviceId: string, payload: Uint8Array) => boolean;
  isLinked: (deviceId: string) => boolean;
}

/** Each method returns true when it took the message; false leaves it to the session broker. */
export interface SessionHook {
  handle(deviceId: string, m: InnerMessage): boolean;
  relay(deviceId: string, m: SaData, payload: Uint8Array): boolean;
  /** The device's sessions must end (deregistered). */
  deviceGone(deviceId: string): void;
  close(): void;
}

/** Opens (creating if needed) the data directory: owner-only, since it holds root keys. */
export function openStore(dataDir: string): Store {
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  chmodSync(dataDir, 0o700);
  return new Store(join(dataDir, DB_FILE));
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
  ) {}

  static async start(opts: GatewayOptions): Promise<Gateway> {
    const log = opts.log ?? new Logger();
    const now = opts.now ?? (() => Math.floor(Date.now() / 1000));
    const store = openStore(opts.dataDir);
    try {
      const id = opts.id ?? store.getMeta("gateway_id") ?? "gateway.local";
      store.setMeta("gateway_id", id);
      const { key, created } = loadOrCreateGatewayKey(opts.dataDir);
      if (created) log.info("gateway-key-created", { file: join(opts.dataDir, "gateway.key") });
      const crypto = opts.crypto ?? nodeCrypto();
      const policy = new Policy(store);
      // The broker and the link server need each other: the broker sends through the links, the links
      // hand session messages and SA frames to the broker.
      let links: LinkServer | undefined;
      const send = (dev: string, m: InnerMessage) => links!.sendTo(dev, m);
      const relay = (dev: string, payload: Uint8Array) => links!.relayTo(dev, payload);
      const isLinked = (dev: string) => links!.links.has(dev);
      const settings = sessionSettings(opts.sessions);
      const sessions = new SessionBroker({ store, policy, log, crypto, cbor, now, send, relay, isLinked, settings });
      const hook = opts.sessionHook?.({ gatewayId: id, store, policy, log, crypto, now, sessions, settings, send, relay, isLinked });
      const registrar = new Registrar({
        store, log, crypto, permissions: policy, gatewayId: id, gatewayKey: key, policy: { ...DEFAULT_POLICY, ...opts.policy }, now,
        onDeregistered: (dev) => {
          hook?.deviceGone(dev);
          sessions.endAll(dev, CloseReason.Deregistered, "deregistered");
        },
      });
      links = new LinkServer({
        store, log, crypto, cbor, now,
        onInner: (dev, m) => (m.t >= Msg.ConnectRequest ? hook?.handle(dev, m) || sessions.handle(dev, m) : links!.sendTo(dev, registrar.handle(dev, m))),
        onSaData: (dev, m, payload) => hook?.relay(dev, m, payload) || sessions.relay(dev, m, payload),
        onLink: (dev, up) => (up ? sessions.linkUp(dev) : sessions.linkDown(dev)),
      });
      const want = opts.listen ?? DEFAULT_LISTEN;
      const address = await links.listen(want.host, want.port);
      const gw = new Gateway(store, links, address, id, log, sessions, policy);
      gw.hook = hook;
      // Before "gateway-started", so that the record is the first event on MQTT.
      if (opts.mqtt) gw.monitoring = await startMonitoring(opts.mqtt, { gatewayId: id, listen: `${address.host}:${address.port}`, store, links, log, now }).catch(async (e) => { await links.close(); throw e; });
      log.info("gateway-started", { id, listen: `${address.host}:${address.port}`, dataDir: opts.dataDir });
      return gw;
    } catch (e) {
      store.close();
      throw e;
    }
  }

  /** MQTT monitoring, when GatewayOptions.mqtt asked for it. */
  monitoring?: Monitoring;
  /** The session hook, when GatewayOptions.sessionHook made one. */
  hook?: SessionHook;

  async stop(): Promise<void> {
    // Links first: closing them reports each device's link as lost to the broker, which would start
    // grace timers if it were closed already.
    await this.links.close();
    this.sessions.close();
    this.hook?.close();
    await this.monitoring?.stop(); // after the links (their last states), before the store closes
    this.store.close();
    this.log.info("gateway-stopped", { id: this.id });
  }
}
