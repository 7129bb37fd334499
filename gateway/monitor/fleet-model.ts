// What a reader of the monitoring topics knows of the fleet, built from the MQTT messages alone
// (docs/MONITORING.md): every gateway's retained status and metrics, each handset's retained state,
// the recent events, and the sessions those events tell of. One parser of these messages for every
// reader: `keyproxy monitor` draws it as a table (cli/monitor-cmd.ts), the web fleet view as a page
// (gateway/web/). Everything on the broker is someone else's text: the model keeps it as it came, and
// each reader escapes it for where it shows it.

import { parseTopic, type DeviceState, type GatewayStatus, type Metrics, type RadioState } from "./monitor.ts";
import { forTerminal } from "../log/terminal.ts";

export type LogEvent = { ts?: string; level?: string; event?: string } & Record<string, unknown>;

export interface GatewayView {
  status?: GatewayStatus;
  metrics?: Metrics;
}

/** One SA between two parties, as the gateways' session events tell it. A party is named
 *  `device@gateway`: a gateway's own devices by their id and that gateway's, a peer across gateways by
 *  the name its events give (already name@domain), so both gateways of a session name it alike. */
export interface SessionEdge {
  /** The caller and the callee, as above. */
  from: string;
  to: string;
  app: string;
  /** The SA's SPI as every output prints it (0x and eight hex digits). */
  spi: string;
  scope: "local" | "across";
  /** When the SA came up (the event's time), and its replacements since, the last one's time. */
  since: string;
  rekeys: number;
  lastRekey?: string;
  /** The gateways that reported it (a session across gateways is reported by both). */
  gateways: string[];
}

/** Sessions kept at most: a broker anyone can publish to must not grow the model without bound. */
export const MAX_SESSIONS = 2000;

/** One line for a log record / event, for people: "12:00:01 joined sim-1 counter=1 suite=10".
 *  Control characters in it are shown escaped (forTerminal): its ids and reasons are not ours. */
export function describeEvent(rec: LogEvent): string {
  const time = typeof rec.ts === "string" && !Number.isNaN(Date.parse(rec.ts)) ? new Date(rec.ts).toTimeString().slice(0, 8) : "--:--:--";
  const parts = [time, String(rec.event ?? "?")];
  if (typeof rec.device === "string") parts.push(rec.device);
  for (const [k, v] of Object.entries(rec)) {
    if (k === "ts" || k === "level" || k === "event" || k === "device" || v === null || typeof v === "object") continue;
    const s = String(v);
    parts.push(`${k}=${/\s/.test(s) ? JSON.stringify(s) : s}`);
  }
  return forTerminal(parts.join(" "));
}

/** A handset's registration in words: revoked, not registered, the seconds left, or expired. */
export function registration(d: DeviceState, now: number): string {
  if (d.revoked) return "revoked";
  if (!d.registeredUntil) return "not registered";
  const left = Math.floor((Date.parse(d.registeredUntil) - now) / 1000);
  return left > 0 ? `registered, ${left}s left` : "registration expired";
}

/** A BLE handset's radio in a few words: "ble -61dBm" while connected, "ble away 42s" (since the
 *  central last heard it) when not, "-" for a handset on TCP. The fields come from the broker: any
 *  that are not what a gateway publishes make it "?". */
export function radioWords(d: DeviceState, now: number): string {
  const r = d.radio as Partial<RadioState> | undefined;
  if (r === undefined || r === null) return "-";
  if (typeof r !== "object" || typeof r.via !== "string" || typeof r.connected !== "boolean") return "?";
  if (r.connected) return typeof r.rssi === "number" ? `${r.via} ${r.rssi}dBm` : `${r.via} connected`;
  const seen = typeof r.lastSeen === "string" ? Date.parse(r.lastSeen) : Number.NaN;
  return Number.isNaN(seen) ? `${r.via} away` : `${r.via} away ${Math.max(0, Math.round((now - seen) / 1000))}s`;
}

/** The party name of a device of `gateway`, or of a peer named in its events (name@domain already
 *  when across gateways). */
export function partyName(name: string, gateway: string): string {
  return name.includes("@") ? name : `${name}@${gateway}`;
}

/** The fleet as its gateways publish it. */
export class FleetModel {
  readonly gateways = new Map<string, GatewayView>();
  /** Keyed by gateway, then device. */
  readonly devices = new Map<string, Map<string, DeviceState>>();
  readonly events: { gateway: string; rec: LogEvent }[] = [];
  /** Live SAs by key (the two parties and the SPI), oldest first. */
  readonly sessions = new Map<string, SessionEdge>();

  constructor(protected keepEvents = 8) {}

  private gw(id: string): GatewayView {
    let g = this.gateways.get(id);
    if (!g) this.gateways.set(id, (g = {}));
    return g;
  }

  /** Applies one message; returns a line describing the change for people (control characters
   *  escaped), or undefined. Payloads that are not ours or not JSON are ignored: a reader must
   *  survive anything on the broker. */
  apply(topic: string, payload: Buffer): string | undefined {
    const line = this.change(topic, payload);
    return line === undefined ? undefined : forTerminal(line);
  }

  private change(topic: string, payload: Buffer): string | undefined {
    const t = parseTopic(topic);
    if (!t) return undefined;
    let body: any;
    if (payload.length) {
      try {
        body = JSON.parse(payload.toString("utf8"));
      } catch {
        return undefined;
      }
      if (typeof body !== "object" || body === null) return undefined;
    }
    switch (t.kind) {
      case "status": {
        if (!body) {
          this.gateways.delete(t.gateway);
          this.forgetSessionsOf(t.gateway);
          return `gateway ${t.gateway}: status cleared`;
        }
        this.gw(t.gateway).status = body as GatewayStatus;
        const s = body as GatewayStatus;
        // A gateway that stopped or died holds no SA any more.
        if (s.state !== "online") this.forgetSessionsOf(t.gateway);
        return `gateway ${t.gateway} ${s.state}${s.since ? ` since ${s.since}` : ""}${s.reason ? ` (${s.reason})` : ""}${s.listen ? `, devices on ${s.listen}` : ""}${s.version ? `, v${s.version}` : ""}`;
      }
      case "metrics":
        if (body) this.gw(t.gateway).metrics = body as Metrics;
        return undefined;
      case "events": {
        if (!body) return undefined;
        this.gw(t.gateway);
        this.events.push({ gateway: t.gateway, rec: body as LogEvent });
        if (this.events.length > this.keepEvents) this.events.splice(0, this.events.length - this.keepEvents);
        this.sessionEvent(t.gateway, body as LogEvent);
        return `event ${t.gateway} ${describeEvent(body as LogEvent)}`;
      }
      case "device": {
        this.gw(t.gateway);
        let m = this.devices.get(t.gateway);
        if (!m) this.devices.set(t.gateway, (m = new Map()));
        if (!body) {
          m.delete(t.device);
          return `handset ${t.device} @ ${t.gateway}: removed`;
        }
        const d = body as DeviceState;
        m.set(t.device, d);
        const radio = d.radio === undefined ? "" : `, radio ${radioWords(d, Date.now())}`;
        return `handset ${t.device} @ ${t.gateway}: ${this.link(t.gateway, d)}, ${registration(d, Date.now())}, board ${d.board}, join counter ${d.joinCounter}${radio}`;
      }
    }
  }

  /** A handset's link state means something only while its gateway is online. */
  link(gateway: string, d: DeviceState): string {
    if (this.gateways.get(gateway)?.status?.state !== "online") return "unknown (gateway offline)";
    return d.online ? "linked" : "not linked";
  }

  /** Follows the session events (docs/MONITORING.md, "events"): an SA comes up, is replaced by a rekey,
   *  goes down. Events are not retained, so a reader knows the sessions that came up while it listened. */
  private sessionEvent(gateway: string, rec: LogEvent): void {
    const m = /^(x?)session-(up|rekeyed|down)$/.exec(String(rec.event));
    if (!m || typeof rec.device !== "string" || typeof rec.peer !== "string" || typeof rec.spi !== "string") return;
    const from = partyName(rec.device, gateway);
    const to = partyName(rec.peer, gateway);
    const key = (spi: string) => JSON.stringify([from, to].sort().concat(spi));
    const what = m[2];
    if (what === "down") {
      this.sessions.delete(key(rec.spi));
      return;
    }
    const existing = this.sessions.get(key(rec.spi));
    if (existing) {
      // The other gateway of a session across gateways, reporting the same SA.
      if (!existing.gateways.includes(gateway)) existing.gateways.push(gateway);
      return;
    }
    const ts = typeof rec.ts === "string" ? rec.ts : new Date().toISOString();
    const replaced = what === "rekeyed" && typeof rec.replaces === "string" ? this.sessions.get(key(rec.replaces)) : undefined;
    if (replaced) this.sessions.delete(key(rec.replaces as string));
    this.sessions.set(key(rec.spi), {
      from: replaced?.from ?? from,
      to: replaced?.to ?? to,
      app: typeof rec.app === "string" ? rec.app : "",
      spi: rec.spi,
      scope: m[1] ? "across" : "local",
      since: replaced?.since ?? ts,
      rekeys: (replaced?.rekeys ?? 0) + (what === "rekeyed" ? 1 : 0),
      lastRekey: what === "rekeyed" ? ts : undefined,
      gateways: [gateway],
    });
    if (this.sessions.size > MAX_SESSIONS) this.sessions.delete(this.sessions.keys().next().value as string);
  }

  private forgetSessionsOf(gateway: string): void {
    for (const [k, s] of this.sessions) {
      s.gateways = s.gateways.filter((g) => g !== gateway);
      if (!s.gateways.length) this.sessions.delete(k);
    }
  }
}
