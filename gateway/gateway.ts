// A gateway: the registry and its SQLite file, the gateway's signing key, the link server and the
// registrar, started together on a data directory.

import { mkdirSync, chmodSync } from "node:fs";
import { join } from "node:path";
import * as cbor from "./cbor.ts";
import { nodeCrypto } from "./crypto.ts";
import { loadOrCreateGatewayKey } from "./identity.ts";
import { LinkServer } from "./link-server.ts";
import { Logger } from "./log.ts";
import { startMonitoring, type MqttOptions, type Monitoring } from "./monitor.ts";
import { DEFAULT_POLICY, Registrar, type RegistrationPolicy } from "./registrar.ts";
import { Store } from "./store.ts";
import type { SymCrypto } from "../firmware/crypto/types.ts";

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
  crypto?: SymCrypto;
  /** Monitoring over MQTT (docs/MONITORING.md): a broker URL, or the embedded broker. Default: none. */
  mqtt?: MqttOptions;
}

/** Opens (creating if needed) the data directory: owner-only, since it holds root keys. */
export function openStore(dataDir: string): Store {
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  chmodSync(dataDir, 0o700);
  return new Store(join(dataDir, DB_FILE));
}

export class Gateway {
  private constructor(
    readonly store: Store,
    readonly links: LinkServer,
    readonly address: { host: string; port: number },
    readonly id: string,
    readonly log: Logger,
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
      const registrar = new Registrar({ store, log, crypto, gatewayId: id, gatewayKey: key, policy: { ...DEFAULT_POLICY, ...opts.policy }, now });
      const links = new LinkServer({ store, log, crypto, cbor, now, onRequest: (dev, m) => registrar.handle(dev, m) });
      const want = opts.listen ?? DEFAULT_LISTEN;
      const address = await links.listen(want.host, want.port);
      const gw = new Gateway(store, links, address, id, log);
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

  async stop(): Promise<void> {
    await this.links.close();
    await this.monitoring?.stop(); // after the links (their last states), before the store closes
    this.store.close();
    this.log.info("gateway-stopped", { id: this.id });
  }
}
