// Monitoring over MQTT, in the spirit of Sparkplug and Tasmota (docs/MONITORING.md). The gateway
// publishes, under keyproxy/v1/<gateway-id>/:
//
//   status                    retained, QoS 1: {state:"online", since, version, listen, run}; the MQTT
//                             last-will puts {state:"offline", ...} there if the connection dies
//   devices/<device-id>/state retained, QoS 1: what the registry and the link server know of a device
//   events                    QoS 0: every log record, as logged (Logger.subscribe)
//   metrics                   retained, QoS 0, periodic: the link server's counters and the publisher's
//                             own (retained so that a new subscriber sees the latest at once)
//
// What it never publishes: root keys, link keys, nonces, tags, identity or signing keys. It reads only
// non-secret columns and log records (which already withhold every byte array).
//
// The publisher must never block or crash the gateway: publishing only queues (bounded, with a drop
// counter); the MQTT client connects and reconnects in the background; its errors are logged once.

import { randomBytes } from "node:crypto";
import { connect, type MqttClient } from "mqtt";
import { tuneMqttSocket } from "../mqtt/socket.ts";
import { BrokerAddressInUse, startBroker, type EmbeddedBroker } from "./embedded-broker.ts";
import { BOARDS } from "../../boards/index.ts";
import type { LinkServer } from "../link/server.ts";
import type { Logger, LogRecord } from "../log/logger.ts";
import type { DeviceSummary, Store } from "../registry/store.ts";
import { jsonForTerminal } from "../log/terminal.ts";
import { PACKAGE_VERSION } from "../package/root.ts";

export const TOPIC_ROOT = "keyproxy/v1";

// ---- topics ---------------------------------------------------------------------------------------

/** Makes a string safe as one MQTT topic level: the wildcards + and #, the separator /, NUL and other
 *  control characters, and % itself become %XX (upper-case hex), so that no id can widen or escape a
 *  subscription, and the mapping is one-to-one (unescapeTopicLevel reverses it). */
export function escapeTopicLevel(s: string): string {
  return s.replace(/[%/+#\u0000-\u001f\u007f]/g, (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase().padStart(2, "0"));
}

export function unescapeTopicLevel(s: string): string {
  return s.replace(/%([0-9A-F]{2})/g, (_m, h: string) => String.fromCharCode(parseInt(h, 16)));
}

export const topics = {
  status: (gw: string) => `${TOPIC_ROOT}/${escapeTopicLevel(gw)}/status`,
  deviceState: (gw: string, device: string) => `${TOPIC_ROOT}/${escapeTopicLevel(gw)}/devices/${escapeTopicLevel(device)}/state`,
  events: (gw: string) => `${TOPIC_ROOT}/${escapeTopicLevel(gw)}/events`,
  metrics: (gw: string) => `${TOPIC_ROOT}/${escapeTopicLevel(gw)}/metrics`,
  /** Everything every gateway publishes. */
  all: `${TOPIC_ROOT}/#`,
};

export type ParsedTopic =
  | { kind: "status" | "events" | "metrics"; gateway: string }
  | { kind: "device"; gateway: string; device: string };

/** The inverse of `topics`: undefined for anything that is not one of ours. */
export function parseTopic(topic: string): ParsedTopic | undefined {
  const p = topic.split("/");
  if (p[0] !== "keyproxy" || p[1] !== "v1" || p.length < 4) return undefined;
  const gateway = unescapeTopicLevel(p[2]);
  if (p.length === 4 && (p[3] === "status" || p[3] === "events" || p[3] === "metrics")) return { kind: p[3], gateway };
  if (p.length === 6 && p[3] === "devices" && p[5] === "state") return { kind: "device", gateway, device: unescapeTopicLevel(p[4]) };
  return undefined;
}

// ---- payloads -------------------------------------------------------------------------------------

export interface GatewayStatus {
  state: "online" | "offline";
  /** When this state began (ISO 8601); absent in the last-will, which is written at connect time. */
  since?: string;
  version: string;
  /** The device link address. */
  listen: string;
  /** Random per gateway run: tells this run's status from an older run's late last-will. */
  run: string;
  /** Why offline: "stopped" (clean shutdown) or "connection lost" (the last-will). */
  reason?: string;
}

/** A BLE handset's radio as the central that carries its link sees it (gateway/ble/central.ts). */
export interface RadioState {
  /** The name it advertises ("kp-" and its id, cut by Espruino when long). */
  name: string;
  /** Its Bluetooth address as the central's library gives it. */
  address: string;
  /** "ble" for the gateway's own central, else the name of the bridge that carries it. */
  via: string;
  connected: boolean;
  /** Signal strength of its last advertisement, dBm (not updated while connected: a connected
   *  handset stops advertising). */
  rssi: number;
  /** When the central last heard from it (an advertisement or link bytes), ISO 8601. */
  lastSeen: string;
}

export interface DeviceState {
  device: string;
  board: string;
  /** Linked to this gateway now (meaningful only while the gateway's status is online). */
  online: boolean;
  registered: boolean;
  /** Registration expiry (ISO 8601), or null when not registered. */
  registeredUntil: string | null;
  revoked: boolean;
  /** The highest join counter accepted (persisted; replay protection). */
  joinCounter: number;
  /** Since this gateway run started: */
  lastJoin: string | null;
  joinRejects: number;
  framesDropped: number;
  /** The firmware id the device reported with its registration (flash/build.ts: version and bundle
   *  hash); null when not registered or never reported. */
  firmware: string | null;
  /** Espruino variables in use when the device last registered (0: the device did not know), and
   *  the board's pool (boards/index.ts); null when unknown. */
  memoryUsed: number | null;
  memoryTotal: number | null;
  /** For a handset whose link came over Bluetooth: its radio. Absent for one on TCP. */
  radio?: RadioState;
}

export interface Metrics {
  ts: string;
  uptime: number;
  joins: number;
  joinRejects: number;
  framesIn: number;
  framesDropped: number;
  devicesKnown: number;
  devicesLinked: number;
  devicesRegistered: number;
  mqttPublished: number;
  mqttDropped: number;
  mqttQueued: number;
  /** SAs the gateway keeps now: inside this gateway, and across gateways (absent without the fleet). */
  sessionsLocal?: number;
  sessionsAcross?: number;
  /** Serial of the fleet revocation list the gateway holds, and when it was issued (ISO 8601), so a
   *  reader can tell its age (both absent without the fleet). */
  revocationSerial?: number;
  revocationIssuedAt?: string;
}

/** Fields of a log record that stay in the gateway's own log, by event: an MQTT subscriber may be
 *  anyone with access to the broker. Why a join was refused ("unknown device" against "join MAC does
 *  not verify") would tell which device ids exist; the peer got one bare JoinReject, and so does the
 *  subscriber: "join-rejected" and the id tried, nothing more. */
const LOCAL_ONLY_FIELDS: Record<string, readonly string[]> = { "join-rejected": ["reason"] };

/** A log record as it is published on the events topic. */
export function publicEvent(rec: LogRecord): LogRecord {
  const withheld = LOCAL_ONLY_FIELDS[rec.event];
  if (!withheld) return rec;
  const out: LogRecord = { ...rec };
  for (const f of withheld) delete out[f];
  return out;
}

// ---- bounded outbox -------------------------------------------------------------------------------

interface Outgoing {
  topic: string;
  payload: string;
  qos: 0 | 1;
  retain: boolean;
}

/** Messages waiting for the broker. At most `limit` wait; a retained message replaces a waiting one
 *  on the same topic (only the latest state matters); past the limit, events (not retained) are
 *  dropped first, and every drop is counted. At most MAX_INFLIGHT are handed to the client at a time, so
 *  the client's own queues stay small too. */
export class Outbox {
  static readonly MAX_INFLIGHT = 64;
  published = 0;
  dropped = 0;
  private waiting: Outgoing[] = [];
  private inflight = 0;
  private idleWaiters: (() => void)[] = [];

  constructor(private limit: number, private send: (m: Outgoing, done: () => void) => void, private canSend: () => boolean) {}

  get queued(): number {
    return this.waiting.length + this.inflight;
  }

  push(m: Outgoing): void {
    if (m.retain) {
      const i = this.waiting.findIndex((w) => w.retain && w.topic === m.topic);
      if (i >= 0) {
        this.waiting[i] = m;
        return this.pump();
      }
    }
    if (this.waiting.length >= this.limit) {
      const victim = this.waiting.findIndex((w) => !w.retain);
      if (!m.retain || victim < 0) {
        this.dropped++;
        return;
      }
      this.waiting.splice(victim, 1);
      this.dropped++;
    }
    this.waiting.push(m);
    this.pump();
  }

  pump(): void {
    while (this.waiting.length && this.inflight < Outbox.MAX_INFLIGHT && this.canSend()) {
      const m = this.waiting.shift() as Outgoing;
      this.inflight++;
      let finished = false;
      this.send(m, () => {
        if (finished) return;
        finished = true;
        this.inflight--;
        this.published++;
        this.pump();
      });
    }
    if (this.queued === 0) for (const w of this.idleWaiters.splice(0)) w();
  }

  /** Resolves when nothing waits or is in flight, or after ms (a broker that is away never answers). */
  drain(ms: number): Promise<void> {
    if (this.queued === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      this.idleWaiters.push(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }
}

// ---- the publisher --------------------------------------------------------------------------------

/** MQTT keepalive of the publisher: a broker declares it gone (and publishes its last-will) after 1.5 times this. */
const KEEPALIVE_SECONDS = 10;

export interface PublisherDeps {
  gatewayId: string;
  /** The device link address, host:port. */
  listen: string;
  store: Store;
  links: LinkServer;
  log: Logger;
  /** Seconds since the epoch (the gateway's clock, which registrations are stamped with). */
  now: () => number;
  /** Session counters for the metrics (read at each tick). */
  sessionMetrics?: () => Pick<Metrics, "sessionsLocal" | "sessionsAcross" | "revocationSerial" | "revocationIssuedAt">;
  /** A BLE handset's radio, when its link came over Bluetooth (gateway/ble/radio-book.ts). */
  radio?: (deviceId: string) => RadioState | undefined;
  /** One instance among several of a domain: it shows the devices linked to it, and clears a
   *  device's retained state when its link leaves (the instance it went to shows it). Otherwise
   *  every device of the registry is shown. */
  onlyLinked?: boolean;
}

export interface PublisherOptions {
  /** Broker URL: mqtt://host:port (or mqtts://, ws://). Credentials in it are never logged. */
  url: string;
  /** Seconds between metrics (default 10). */
  metricsSeconds?: number;
  /** Messages waiting for the broker before drops begin (default 1000). */
  queueLimit?: number;
}

export const VERSION: string = PACKAGE_VERSION;

/** A broker URL without its user name and password, for logs and status. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    u.username = "";
    u.password = "";
    return u.toString().replace(/\/$/, "");
  } catch {
    return "<unparseable broker URL>";
  }
}

interface RunCounters {
  lastJoin: string | null;
  joinRejects: number;
  framesDropped: number;
}

/** What a device's state is built from: its row in the registry and its registration. */
type DeviceRow = Omit<DeviceSummary, "id" | "createdAt">;

/** Log records that come from sessions and links, which never write a device's row or its
 *  registration: their device's state is built from the row last read. Any other record about a device
 *  (joined, registered, revoked, ...) reads the registry again. */
export function leavesRegistryAlone(event: string): boolean {
  return event.startsWith("session-") || event.startsWith("xsession-") || event === "link-closed" || event === "frame dropped" || event === "malformed frame";
}

export class MqttPublisher {
  readonly run = randomBytes(4).toString("hex");
  readonly outbox: Outbox;
  private client: MqttClient;
  private since = new Date().toISOString();
  private startedAt = Date.now();
  private stopping = false;
  private connected = false;
  private complained = false;
  /** Devices whose state must be recomputed, and event counts not yet applied (flushed each tick). */
  private dirty = new Set<string>();
  private pendingCounts = new Map<string, Partial<Record<"joinRejects" | "framesDropped", number>> & { lastJoin?: string }>();
  private flushScheduled = false;
  /** The flush under way (one at a time), and whether devices became dirty during it. */
  private flushing: Promise<void> | null = null;
  private flushAgain = false;
  /** From the registry's last full read (refreshAll): what the metrics say of devices. */
  private deviceCounts = { known: 0, registered: 0 };
  private counters = new Map<string, RunCounters>();
  /** The last state published per device, to publish only changes. */
  private lastState = new Map<string, string>();
  /** What the registry held of each device when last read, for records that cannot have changed it
   *  (leavesRegistryAlone): a session's setup names both devices in several records, and reading the
   *  registry again for each was most of an instance's statements per setup on PostgreSQL. */
  private rows = new Map<string, DeviceRow>();
  /** One set per read of the registry under way: the devices a record said may have changed while it
   *  was (a read may hold what was there before: such a device's row is used once, not kept). */
  private reads = new Set<Set<string>>();
  private unsubscribe: () => void;
  private timer: NodeJS.Timeout;
  private metricsTimer: NodeJS.Timeout | undefined;

  constructor(private d: PublisherDeps, private o: PublisherOptions) {
    const status = topics.status(d.gatewayId);
    const will: GatewayStatus = { state: "offline", version: VERSION, listen: d.listen, run: this.run, reason: "connection lost" };
    this.client = connect(o.url, {
      protocolVersion: 4, // MQTT 3.1.1: what both Mosquitto and aedes speak
      clientId: `keyproxy-gw-${this.run}`,
      clean: true,
      keepalive: KEEPALIVE_SECONDS,
      reconnectPeriod: 2000,
      connectTimeout: 5000,
      queueQoSZero: false,
      will: { topic: status, payload: Buffer.from(JSON.stringify(will)), qos: 1, retain: true },
    });
    tuneMqttSocket(this.client);
    this.outbox = new Outbox(o.queueLimit ?? 1000, (m, done) => this.client.publish(m.topic, m.payload, { qos: m.qos, retain: m.retain }, () => done()), () => this.connected);
    this.client.on("connect", () => this.onConnect());
    this.client.on("close", () => this.onClose("connection closed"));
    this.client.on("error", (e) => this.onClose(e.message));
    this.client.on("message", (topic, payload, packet) => this.onMessage(topic, payload, packet.retain));
    this.unsubscribe = d.log.subscribe((rec) => this.onRecord(rec));
    this.timer = setInterval(() => void this.tick(), (o.metricsSeconds ?? 10) * 1000);
    this.timer.unref();
    this.publishStatus();
    void this.refreshAll();
  }

  /** Whether the broker connection is up now (the health endpoint reports it). */
  get brokerConnected(): boolean {
    return this.connected;
  }

  private onConnect(): void {
    this.connected = true;
    this.complained = false;
    this.d.log.info("mqtt-connected", { broker: redactUrl(this.o.url) });
    // Our own retained topics: to overwrite an older run's late last-will, and to clear the retained
    // state of devices that left the registry while this gateway was down.
    this.client.subscribe([topics.status(this.d.gatewayId), `${TOPIC_ROOT}/${escapeTopicLevel(this.d.gatewayId)}/devices/+/state`], { qos: 1 }, () => {});
    // A clean session forgets nothing we hold: re-send the current status and every device state.
    this.publishStatus();
    this.lastState.clear();
    this.rows.clear();
    void this.refreshAll().then(() => this.outbox.pump());
  }

  private onClose(reason: string): void {
    this.connected = false;
    if (this.stopping || this.complained) return;
    this.complained = true;
    this.d.log.warn("mqtt-unavailable", { broker: redactUrl(this.o.url), reason, retrying: "every 2 s" });
  }

  private onMessage(topic: string, payload: Buffer, retained: boolean): void {
    if (this.stopping) return;
    const t = parseTopic(topic);
    if (!t || t.gateway !== this.d.gatewayId) return;
    if (t.kind === "status") {
      let s: Partial<GatewayStatus> = {};
      try { s = JSON.parse(payload.toString()); } catch { /* cleared or foreign: overwrite it */ }
      if (s.state !== "online" && s.run !== this.run) this.publishStatus();
    } else if (t.kind === "device" && retained && payload.length > 0) {
      const device = t.device;
      this.d.store.getDeviceInfo(device).then((dev) => {
        if (!dev && !this.stopping) this.outbox.push({ topic, payload: "", qos: 1, retain: true });
      }, (e: unknown) => this.d.log.warn("mqtt-publish-failed", { reason: (e as Error).message }));
    }
  }

  private publishStatus(): void {
    const s: GatewayStatus = { state: "online", since: this.since, version: VERSION, listen: this.d.listen, run: this.run };
    this.outbox.push({ topic: topics.status(this.d.gatewayId), payload: JSON.stringify(s), qos: 1, retain: true });
  }

  /** Every log record becomes an event; those about a device also refresh its state. */
  private onRecord(rec: LogRecord): void {
    if (this.stopping) return;
    this.outbox.push({ topic: topics.events(this.d.gatewayId), payload: jsonForTerminal(publicEvent(rec)), qos: 0, retain: false });
    const device = rec.device;
    if (typeof device !== "string") return;
    if (!leavesRegistryAlone(rec.event)) {
      this.rows.delete(device);
      for (const changed of this.reads) changed.add(device);
    }
    // Counted per device only once flush() has seen the device in the registry: a peer can send join
    // requests for any name, and none of those names may grow our maps or the broker's retained set.
    const c = this.pendingCounts.get(device) ?? {};
    if (rec.event === "join-rejected") c.joinRejects = (c.joinRejects ?? 0) + 1;
    else if (rec.event === "frame dropped" || rec.event === "malformed frame") c.framesDropped = (c.framesDropped ?? 0) + 1;
    else if (rec.event === "joined") c.lastJoin = rec.ts;
    this.pendingCounts.set(device, c);
    this.deviceChanged(device);
  }

  /** A device's state is due (its radio connected or left, say): published soon if it changed. */
  deviceChanged(device: string): void {
    if (this.stopping) return;
    this.dirty.add(device);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => void this.flush().catch((e: unknown) => this.d.log.warn("mqtt-publish-failed", { reason: (e as Error).message })));
    }
  }

  /** Publishes the state of every dirty device that changed. Reads the registry (no secret columns
   *  leave this function: DeviceState has none). */
  flush(): Promise<void> {
    this.flushScheduled = false;
    if (this.flushing) {
      this.flushAgain = true;
      return this.flushing;
    }
    const run = async () => {
      do {
        this.flushAgain = false;
        await this.flushOnce();
      } while (this.flushAgain);
    };
    const p = run().finally(() => {
      if (this.flushing === p) this.flushing = null;
    });
    this.flushing = p;
    return p;
  }

  private async flushOnce(): Promise<void> {
    if (this.stopping && !this.dirty.size) return;
    // Taken now: what becomes dirty while the registry answers is for the next round.
    const dirty = [...this.dirty];
    const pending = this.pendingCounts;
    this.dirty.clear();
    this.pendingCounts = new Map();
    for (const id of dirty) this.publishState(id, this.rows.get(id) ?? (await this.readRow(id)), pending.get(id));
  }

  /** What the registry holds of a device now, kept for the records that follow (undefined: none). */
  private async readRow(id: string): Promise<DeviceRow | undefined> {
    const [[dev, reg], changed] = await this.reading(() => Promise.all([this.d.store.getDeviceInfo(id), this.d.store.getRegistration(id)]));
    const row = dev && { ...dev, expiresAt: reg?.expiresAt ?? null, firmware: reg?.firmware ?? null, memoryUsed: reg?.memoryUsed ?? null };
    if (row && !changed.has(id)) this.rows.set(id, row);
    return row;
  }

  /** read's result, and the devices a record said may have changed while it ran. */
  private async reading<T>(read: () => Promise<T>): Promise<[T, Set<string>]> {
    const changed = new Set<string>();
    this.reads.add(changed);
    try {
      return [await read(), changed];
    } finally {
      this.reads.delete(changed);
    }
  }

  /** Publishes a device's state if it changed (or clears it: gone from the registry, or, for an
   *  instance, linked elsewhere). `row` is what the registry holds of it, undefined when nothing. */
  private publishState(id: string, row: DeviceRow | undefined, counts?: Partial<RunCounters>): void {
    if (!row || (this.d.onlyLinked && !this.d.links.links.has(id))) {
      this.rows.delete(id);
      if (this.lastState.delete(id)) this.outbox.push({ topic: topics.deviceState(this.d.gatewayId, id), payload: "", qos: 1, retain: true });
      this.counters.delete(id);
      return;
    }
    const t = this.d.now();
    const run = this.counters.get(id) ?? { lastJoin: null, joinRejects: 0, framesDropped: 0 };
    if (counts) {
      run.joinRejects += counts.joinRejects ?? 0;
      run.framesDropped += counts.framesDropped ?? 0;
      if (counts.lastJoin) run.lastJoin = counts.lastJoin;
    }
    this.counters.set(id, run);
    const state: DeviceState = {
      device: id,
      board: row.board,
      online: this.d.links.links.has(id),
      registered: row.expiresAt !== null && row.expiresAt > t && row.revokedAt === null,
      registeredUntil: row.expiresAt !== null ? new Date(row.expiresAt * 1000).toISOString() : null,
      revoked: row.revokedAt !== null,
      joinCounter: row.joinCounter,
      lastJoin: run.lastJoin,
      joinRejects: run.joinRejects,
      framesDropped: run.framesDropped,
      firmware: row.firmware ?? null,
      memoryUsed: row.memoryUsed ?? null,
      memoryTotal: Object.hasOwn(BOARDS, row.board) ? BOARDS[row.board].vars : null,
    };
    const radio = this.d.radio?.(id);
    if (radio) state.radio = radio;
    const payload = jsonForTerminal(state);
    if (this.lastState.get(id) === payload) return;
    this.lastState.set(id, payload);
    this.outbox.push({ topic: topics.deviceState(this.d.gatewayId, id), payload, qos: 1, retain: true });
    this.metricsSoon();
  }

  /** Every device of the registry is due, and the metrics' device counts are read afresh. */
  private async refreshAll(): Promise<void> {
    try {
      // One read of the whole registry gives every device's state: not two statements per device,
      // which cost an instance of a thousand handsets some 700 statements every tick.
      const [devices, changed] = await this.reading(() => this.d.store.listDevices());
      const t = this.d.now();
      this.deviceCounts = { known: devices.length, registered: devices.filter((x) => x.expiresAt !== null && x.expiresAt > t && x.revokedAt === null).length };
      const byId = new Map(devices.map((d) => [d.id, d]));
      // Rows kept from before are replaced: another process (keyproxy device) may have changed any of
      // them, which this read is here to see.
      this.rows.clear();
      for (const d of devices) {
        if (this.d.onlyLinked && !this.d.links.links.has(d.id)) continue;
        if (!changed.has(d.id)) this.rows.set(d.id, d);
        this.publishState(d.id, d);
      }
      for (const id of [...this.lastState.keys()]) if (!byId.has(id) || (this.d.onlyLinked && !this.d.links.links.has(id))) this.publishState(id, undefined);
      // What events marked meanwhile (their counts) goes out as before.
      await this.flush();
      this.publishMetrics();
    } catch (e) {
      this.d.log.warn("mqtt-publish-failed", { reason: (e as Error).message });
    }
  }

  metrics(): Metrics {
    const s = this.d.links.stats;
    return {
      ts: new Date().toISOString(),
      uptime: Math.round((Date.now() - this.startedAt) / 1000),
      joins: s.joins,
      joinRejects: s.joinRejects,
      framesIn: s.framesIn,
      framesDropped: s.framesDropped,
      devicesKnown: this.deviceCounts.known,
      devicesLinked: this.d.links.links.size,
      devicesRegistered: this.deviceCounts.registered,
      mqttPublished: this.outbox.published,
      mqttDropped: this.outbox.dropped,
      mqttQueued: this.outbox.queued,
      ...this.d.sessionMetrics?.(),
    };
  }

  /** The retained metrics follow a device change within a second, not at the next tick. */
  private metricsSoon(): void {
    if (this.metricsTimer || this.stopping) return;
    this.metricsTimer = setTimeout(() => {
      this.metricsTimer = undefined;
      if (!this.stopping) void this.tick();
    }, 1000);
    this.metricsTimer.unref();
  }

  private publishMetrics(): void {
    this.outbox.push({ topic: topics.metrics(this.d.gatewayId), payload: JSON.stringify(this.metrics()), qos: 0, retain: true });
  }

  /** Periodic: metrics, and every device's state again (registrations expire, and other processes
   *  such as `keyproxy device` change the registry without telling the gateway). */
  private tick(): Promise<void> {
    return this.refreshAll();
  }

  /** Publishes the final device states and status offline (retained), waits for the broker at most
   *  ms, and disconnects. Call before the store closes. */
  async stop(ms = 2000): Promise<void> {
    clearInterval(this.timer);
    clearTimeout(this.metricsTimer);
    await this.flush().catch((e: unknown) => this.d.log.warn("mqtt-publish-failed", { reason: (e as Error).message }));
    this.stopping = true;
    this.unsubscribe();
    const s: GatewayStatus = { state: "offline", since: new Date().toISOString(), version: VERSION, listen: this.d.listen, run: this.run, reason: "stopped" };
    this.outbox.push({ topic: topics.status(this.d.gatewayId), payload: JSON.stringify(s), qos: 1, retain: true });
    await this.outbox.drain(ms);
    // A clean DISCONNECT: the broker discards the last-will (the status above already says offline).
    await new Promise<void>((r) => this.client.end(!this.connected, {}, () => r()));
  }
}

// ---- wiring ---------------------------------------------------------------------------------------

/** GatewayOptions.mqtt: publish to a broker at url, or start the embedded one and publish to it.
 *  With `orUseExisting`, an embedded address that is already taken is taken to be a broker (a
 *  Mosquitto on 1883, another gateway's embedded one) and published to, instead of failing: the
 *  embedded default must not stop a gateway from starting. */
export type MqttOptions = ({ url: string } | { embedded: { host: string; port: number }; orUseExisting?: boolean }) & Omit<PublisherOptions, "url">;

export interface Monitoring {
  /** The broker published to (without credentials). */
  readonly url: string;
  /** The same with credentials, for other clients of this gateway (the interlink). Never log it. */
  readonly connectUrl: string;
  readonly publisher: MqttPublisher;
  stop(): Promise<void>;
}

/** Another gateway with this gateway's id is online on the broker. */
export class GatewayIdInUse extends Error {}

/** How long a gateway waits at start for a broker to answer whether its id is taken, ms. */
const ID_CHECK_CONNECT_MS = 3000;
/** After the subscription is acknowledged, how long a retained status may take to arrive, ms (the
 *  broker sends it right behind the SUBACK; this covers a loaded machine). */
const ID_CHECK_RETAINED_MS = 500;

/** The retained status of gatewayId on the broker at url: undefined when there is none, "unreachable"
 *  when the broker did not answer in time (the gateway then starts anyway, as it always did). */
export async function retainedStatus(url: string, gatewayId: string): Promise<Partial<GatewayStatus> | undefined | "unreachable"> {
  const topic = topics.status(gatewayId);
  // No will and a clean session: this client leaves nothing behind on the broker.
  const client = connect(url, { protocolVersion: 4, clean: true, reconnectPeriod: 0, connectTimeout: ID_CHECK_CONNECT_MS, clientId: `keyproxy-idcheck-${randomBytes(4).toString("hex")}` });
  client.on("error", () => {});
  try {
    return await new Promise((resolve) => {
      const giveUp = setTimeout(() => resolve("unreachable"), ID_CHECK_CONNECT_MS + ID_CHECK_RETAINED_MS);
      client.on("message", (t, payload, packet) => {
        if (t !== topic || !packet.retain) return;
        clearTimeout(giveUp);
        let s: Partial<GatewayStatus> | undefined;
        try { s = payload.length ? JSON.parse(payload.toString()) : undefined; } catch { s = undefined; }
        resolve(s && typeof s === "object" ? s : undefined);
      });
      // Refused or dropped before an answer: no waiting for the timeout.
      client.once("close", () => { clearTimeout(giveUp); resolve("unreachable"); });
      client.once("connect", () => client.subscribe(topic, { qos: 1 }, (err) => {
        if (err) return resolve("unreachable");
        clearTimeout(giveUp);
        setTimeout(() => resolve(undefined), ID_CHECK_RETAINED_MS);
      }));
    });
  } finally {
    client.end(true);
  }
}

/** Refuses to start when another gateway with this id is online on the broker: two would overwrite
 *  each other's retained status and device states (and answer each other's interlink messages). A
 *  gateway that died has its status replaced by its last-will (offline) as soon as the broker notices. */
async function checkIdFree(url: string, deps: PublisherDeps): Promise<void> {
  const status = await retainedStatus(url, deps.gatewayId);
  if (status === "unreachable") {
    deps.log.warn("mqtt-id-not-checked", { broker: redactUrl(url), reason: "the broker did not answer; starting without checking for another gateway with this id" });
    return;
  }
  if (status?.state !== "online") return;
  throw new GatewayIdInUse(
    `another gateway with the id "${deps.gatewayId}" is online on the MQTT broker ${redactUrl(url)} (run ${String(status.run)}, devices on ${String(status.listen)}): ` +
    `give this gateway an id of its own (--id <domain>), or stop the other one first. If that gateway is no longer running, ` +
    `the broker replaces its status with its last-will within ${Math.ceil(KEEPALIVE_SECONDS * 1.5)} s of losing it: start again then`,
  );
}

/** Starts the embedded broker if asked, then the publisher. Never waits long for a broker to answer:
 *  it asks a broker that is there whether another gateway with this id is online (GatewayIdInUse). */
export async function startMonitoring(opts: MqttOptions, deps: PublisherDeps): Promise<Monitoring> {
  let broker: EmbeddedBroker | undefined;
  let url: string;
  if ("embedded" in opts) {
    const { host, port } = opts.embedded;
    try {
      broker = await startBroker(opts.embedded);
      url = broker.url;
      deps.log.info("mqtt-broker-started", { url, embedded: true });
    } catch (e) {
      if (!opts.orUseExisting || !(e instanceof BrokerAddressInUse)) throw e;
      url = `mqtt://${host.includes(":") ? `[${host}]` : host}:${port}`;
      deps.log.warn("mqtt-broker-not-started", { reason: `${host}:${port} is in use`, publishingTo: url });
    }
  } else {
    url = opts.url;
  }
  // A broker this gateway just started holds nothing: any other broker may hold a gateway of our id.
  if (!broker) await checkIdFree(url, deps);
  const publisher = new MqttPublisher(deps, { ...opts, url });
  return {
    url: redactUrl(url),
    connectUrl: url,
    publisher,
    stop: async () => {
      await publisher.stop();
      await broker?.close();
    },
  };
}
