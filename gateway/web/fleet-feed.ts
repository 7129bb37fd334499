// The web fleet view's source: an MQTT subscription to the monitoring topics, applied to the one
// model of those messages (gateway/monitor/fleet-model.ts), and turned into the snapshot the page
// draws. `keyproxy console` follows every gateway on a broker (keyproxy/v1/#); a gateway serving its
// own view follows its own topics only.

import { randomBytes } from "node:crypto";
import { connect, type MqttClient } from "mqtt";
import { FleetModel, describeEvent, radioWords, registration, type SessionEdge } from "../monitor/fleet-model.ts";
import { redactUrl, type DeviceState } from "../monitor/monitor.ts";

/** What the page is sent: plain data, every string as it came (the page sets them as text). */
export interface FleetSnapshot {
  title: string;
  /** The server's clock (ISO 8601): the page tells ages against it, not against the viewer's clock. */
  now: string;
  broker: { url: string; connected: boolean; error?: string };
  gateways: {
    id: string;
    state: string;
    since: string | null;
    listen: string | null;
    version: string | null;
    /** The gateway run (random per start): tells one instance from the next. */
    instance: string | null;
    reason: string | null;
    linked: number;
    metrics: Record<string, number | string> | null;
    /** The fleet revocation list the gateway holds: serial, and when it was issued (ISO 8601). */
    revocation: { serial: number; issuedAt: string | null } | null;
  }[];
  handsets: {
    gateway: string;
    id: string;
    link: string;
    registration: string;
    board: string | null;
    firmware: string | null;
    memory: string | null;
    /** A BLE handset's radio ("ble -61dBm", "shed away 42s"); null for a handset on TCP, shown "-". */
    radio: string | null;
    joinCounter: number | null;
  }[];
  sessions: SessionEdge[];
  /** Oldest first. */
  events: { gateway: string; ts: string | null; level: string | null; event: string; text: string }[];
}

export interface FleetSource {
  snapshot(): FleetSnapshot;
  /** fn is called after every change; returns the unsubscribe. */
  subscribe(fn: () => void): () => void;
}

/** Events kept for the page by default. */
export const DEFAULT_KEEP_EVENTS = 50;

const str = (v: unknown): string | null => (typeof v === "string" ? v : null);
const int = (v: unknown): number | null => (typeof v === "number" && Number.isFinite(v) ? v : null);

function memory(d: DeviceState): string | null {
  const used = int(d.memoryUsed);
  if (!used) return null;
  const total = int(d.memoryTotal);
  return total ? `${used}/${total}` : String(used);
}

/** A BLE handset's radio in words (radioWords, as `keyproxy monitor` shows it); null for one on TCP. */
function radio(d: DeviceState, now: number): string | null {
  return d.radio === undefined || d.radio === null ? null : radioWords(d, now);
}

/** The model as the page's snapshot. Every value is checked for its type: a payload on the broker is
 *  anyone's, and the page must get strings and numbers where it expects them. */
export function snapshotOf(model: FleetModel, title: string, broker: FleetSnapshot["broker"], now = Date.now()): FleetSnapshot {
  const gateways = [...model.gateways.entries()].sort((a, b) => a[0].localeCompare(b[0])).map(([id, g]) => {
    const s = g.status;
    const online = s?.state === "online";
    const m = g.metrics;
    const metrics: Record<string, number | string> | null = m && typeof m === "object"
      ? Object.fromEntries(Object.entries(m).filter(([, v]) => typeof v === "number" || typeof v === "string"))
      : null;
    const serial = int(m?.revocationSerial);
    return {
      id,
      state: str(s?.state) ?? "?",
      since: str(s?.since),
      listen: str(s?.listen),
      version: str(s?.version),
      instance: str(s?.run),
      reason: str(s?.reason),
      linked: [...(model.devices.get(id)?.values() ?? [])].filter((d) => online && d.online === true).length,
      metrics,
      revocation: serial === null ? null : { serial, issuedAt: str(m?.revocationIssuedAt) },
    };
  });
  const handsets = [...model.devices.entries()].sort((a, b) => a[0].localeCompare(b[0])).flatMap(([gw, devices]) =>
    [...devices.entries()].sort((a, b) => a[0].localeCompare(b[0])).map(([id, d]) => ({
      gateway: gw,
      id,
      link: model.gateways.get(gw)?.status?.state === "online" ? (d.online === true ? "linked" : "not linked") : "unknown",
      registration: registration(d, now),
      board: str(d.board),
      firmware: str(d.firmware),
      memory: memory(d),
      radio: radio(d, now),
      joinCounter: int(d.joinCounter),
    })));
  const events = model.events.map((e) => ({ gateway: e.gateway, ts: str(e.rec.ts), level: str(e.rec.level), event: String(e.rec.event ?? "?"), text: describeEvent(e.rec) }));
  return { title, now: new Date(now).toISOString(), broker, gateways, handsets, sessions: [...model.sessions.values()], events };
}

/** Follows the monitoring topics on a broker. The client retries every 2 s for as long as it runs. */
export class BrokerFleetSource implements FleetSource {
  readonly model: FleetModel;
  private client: MqttClient;
  private listeners = new Set<() => void>();
  private connected = false;
  private lastError: string | undefined;

  /** topic: the subscription (keyproxy/v1/# for a fleet, one gateway's keyproxy/v1/<id>/#). */
  constructor(private url: string, topic: string, private title: string, keepEvents = DEFAULT_KEEP_EVENTS) {
    this.model = new FleetModel(keepEvents);
    this.client = connect(url, { protocolVersion: 4, clean: true, reconnectPeriod: 2000, connectTimeout: 5000, clientId: `keyproxy-web-${randomBytes(4).toString("hex")}` });
    this.client.on("connect", () => {
      this.connected = true;
      this.lastError = undefined;
      this.client.subscribe(topic, { qos: 1 });
      this.changed();
    });
    this.client.on("close", () => {
      if (!this.connected) return;
      this.connected = false;
      this.changed();
    });
    this.client.on("error", (e) => {
      this.lastError = e.message;
      this.changed();
    });
    this.client.on("message", (t, payload) => {
      this.model.apply(t, payload);
      this.changed();
    });
  }

  snapshot(): FleetSnapshot {
    return snapshotOf(this.model, this.title, { url: redactUrl(this.url), connected: this.connected, error: this.connected ? undefined : this.lastError });
  }

  subscribe(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private changed(): void {
    for (const fn of this.listeners) fn();
  }

  close(): Promise<void> {
    this.listeners.clear();
    return new Promise((r) => this.client.end(true, {}, () => r()));
  }
}
