// `keyproxy monitor`: a live view of the fleet from MQTT. It subscribes to keyproxy/v1/# on a broker
// and keeps what the gateways publish there (docs/MONITORING.md): their retained status, each
// handset's retained state, recent events and metrics. On a terminal it redraws a compact table in
// place; otherwise it prints one plain line per change (and the table at the end of --once / --for).
// Everything on the broker is someone else's text (anyone who can publish there chooses topics and
// payloads): every line and every table cell goes through forTerminal before it is printed.

import { connect, type MqttClient } from "mqtt";
import { parseTopic, redactUrl, topics, type DeviceState, type GatewayStatus, type Metrics } from "../gateway/monitor/monitor.ts";
import { DEFAULT_BROKER_LISTEN } from "../gateway/monitor/embedded-broker.ts";
import { forTerminal } from "../gateway/log/terminal.ts";
import { brokerUrl, parse, positiveInt, UsageError } from "./args.ts";

export const DEFAULT_MQTT_URL = `mqtt://${DEFAULT_BROKER_LISTEN.host}:${DEFAULT_BROKER_LISTEN.port}`;

const HELP = `usage: keyproxy monitor [--mqtt <url>] [--once] [--for <s>] [--events <n>]

Shows the fleet as its gateways publish it over MQTT (topics keyproxy/v1/#):
every gateway's status, every handset's state, recent events. On a terminal the
table is redrawn in place; otherwise each change is printed as a line. Stop
with Ctrl-C.

  --mqtt <url>   the broker (default ${DEFAULT_MQTT_URL}, where
                 "keyproxy gateway" starts its embedded one)
  --once         print the retained state once and exit
  --for <s>      run for s seconds, then print the table and exit
  --events <n>   recent events kept in the table (default 8)`;

type LogEvent = { ts?: string; level?: string; event?: string } & Record<string, unknown>;

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

interface GatewayView {
  status?: GatewayStatus;
  metrics?: Metrics;
}

/** What the monitor knows, built from MQTT messages alone. */
export class FleetView {
  readonly gateways = new Map<string, GatewayView>();
  /** Keyed by gateway, then device. */
  readonly devices = new Map<string, Map<string, DeviceState>>();
  readonly events: { gateway: string; rec: LogEvent }[] = [];

  constructor(private keepEvents = 8) {}

  private gw(id: string): GatewayView {
    let g = this.gateways.get(id);
    if (!g) this.gateways.set(id, (g = {}));
    return g;
  }

  /** Applies one message; returns a line describing the change for people (control characters
   *  escaped), or undefined. Payloads that are not ours or not JSON are ignored: the monitor must
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
          return `gateway ${t.gateway}: status cleared`;
        }
        this.gw(t.gateway).status = body as GatewayStatus;
        const s = body as GatewayStatus;
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
        return `handset ${t.device} @ ${t.gateway}: ${this.link(t.gateway, d)}, ${registration(d, Date.now())}, board ${d.board}, join counter ${d.joinCounter}`;
      }
    }
  }

  /** A handset's link state means something only while its gateway is online. */
  link(gateway: string, d: DeviceState): string {
    if (this.gateways.get(gateway)?.status?.state !== "online") return "unknown (gateway offline)";
    return d.online ? "linked" : "not linked";
  }

  render(title: string, now = Date.now()): string {
    const out: string[] = [title, ""];
    const gws = [...this.gateways.entries()].sort((a, b) => a[0].localeCompare(b[0]));
    out.push(...table(
      ["GATEWAY", "STATE", "SINCE", "DEVICE LINK", "LINKED", "JOINS", "REJECTS", "FRAMES IN", "DROPPED"],
      gws.map(([id, g]) => [
        id,
        g.status?.state ?? "?",
        typeof g.status?.since === "string" ? g.status.since.slice(0, 19).replace("T", " ") : "-",
        g.status?.listen ?? "-",
        String([...(this.devices.get(id)?.values() ?? [])].filter((d) => d.online && g.status?.state === "online").length),
        num(g.metrics?.joins),
        num(g.metrics?.joinRejects),
        num(g.metrics?.framesIn),
        num(g.metrics?.framesDropped),
      ]),
    ));
    out.push("");
    const rows: string[][] = [];
    for (const [gw, m] of [...this.devices.entries()].sort((a, b) => a[0].localeCompare(b[0]))) {
      for (const [id, d] of [...m.entries()].sort((a, b) => a[0].localeCompare(b[0]))) {
        rows.push([id, gw, this.link(gw, d), registration(d, now), d.board, String(d.joinCounter), String(d.joinRejects), String(d.framesDropped), d.firmware ?? "-", memory(d)]);
      }
    }
    out.push(...table(["HANDSET", "GATEWAY", "LINK", "REGISTRATION", "BOARD", "JOIN CTR", "REJECTS", "DROPPED", "FIRMWARE", "MEMORY"], rows));
    out.push("", "RECENT EVENTS");
    if (!this.events.length) out.push("  (none yet)");
    for (const e of this.events) out.push(`  ${forTerminal(e.gateway)}  ${describeEvent(e.rec)}`);
    // Each entry is one line: a newline inside one is shown escaped, never starts a line of its own.
    return out.map(forTerminal).join("\n");
  }
}

function num(n: number | undefined): string {
  return n === undefined ? "-" : String(n);
}

/** Variables in use of the pool, as the device last reported (at its registration). */
function memory(d: { memoryUsed?: number | null; memoryTotal?: number | null }): string {
  if (!d.memoryUsed) return "-";
  return d.memoryTotal ? `${d.memoryUsed}/${d.memoryTotal}` : String(d.memoryUsed);
}

function registration(d: DeviceState, now: number): string {
  if (d.revoked) return "revoked";
  if (!d.registeredUntil) return "not registered";
  const left = Math.floor((Date.parse(d.registeredUntil) - now) / 1000);
  return left > 0 ? `registered, ${left}s left` : "registration expired";
}

/** Escaped before the widths are measured, so that a hostile cell only widens its own column. */
function table(head: string[], raw: string[][]): string[] {
  const rows = raw.map((r) => r.map((c) => forTerminal(String(c))));
  if (!rows.length) return [head.join("  "), "  (none)"];
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) => r.map((c, i) => c.padEnd(w[i])).join("  ").trimEnd();
  return [line(head), ...rows.map(line)];
}

export async function monitorCommand(argv: string[]): Promise<number> {
  const o = parse(argv, {
    mqtt: { type: "string" },
    once: { type: "boolean" },
    for: { type: "string" },
    events: { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  if (o.help) {
    console.log(HELP);
    return 0;
  }
  if (o.once && o.for) throw new UsageError("--once and --for exclude each other");
  const url = brokerUrl(o.mqtt ?? DEFAULT_MQTT_URL, "--mqtt");
  const seconds = o.for === undefined ? undefined : positiveInt(o.for, "--for", 1);
  const view = new FleetView(positiveInt(o.events, "--events", 8));
  const tty = process.stdout.isTTY === true && !o.once;
  const title = () => `keyproxy monitor  ${redactUrl(url)}  ${new Date().toTimeString().slice(0, 8)}`;

  const client: MqttClient = connect(url, { protocolVersion: 4, reconnectPeriod: o.once ? 0 : 2000, connectTimeout: 5000, clientId: `keyproxy-monitor-${process.pid}-${Date.now().toString(36)}` });
  let lastError = "";
  client.on("error", (e) => { lastError = e.message; });

  let redraw: NodeJS.Timeout | undefined;
  const draw = () => {
    redraw = undefined;
    process.stdout.write(`\x1b[H\x1b[2J${view.render(title())}\n`);
  };
  let lastMessage = Date.now();
  client.on("message", (topic, payload) => {
    lastMessage = Date.now();
    const line = view.apply(topic, payload);
    if (tty) redraw ??= setTimeout(draw, 200);
    else if (line && !o.once) console.log(line);
  });

  if (o.once) {
    // Retained messages arrive right after the subscription; wait until they have stopped coming.
    const ok = await new Promise<boolean>((resolve) => {
      const fail = setTimeout(() => resolve(false), 5000);
      client.once("connect", () => {
        client.subscribe(topics.all, { qos: 1 }, (err) => {
          if (err) return resolve(false);
          clearTimeout(fail);
          lastMessage = Date.now();
          const quiet = setInterval(() => {
            if (Date.now() - lastMessage >= 300) {
              clearInterval(quiet);
              resolve(true);
            }
          }, 50);
        });
      });
    });
    client.end(true);
    if (!ok) {
      console.error(forTerminal(`keyproxy monitor: cannot reach the MQTT broker at ${redactUrl(url)}${lastError ? `: ${lastError}` : ""}`));
      return 1;
    }
    console.log(view.render(title()));
    return 0;
  }

  client.on("connect", () => client.subscribe(topics.all, { qos: 1 }));
  if (tty) draw();
  else console.log(`keyproxy monitor: watching ${redactUrl(url)} (${topics.all})`);
  const ticker = tty ? setInterval(draw, 1000) : undefined;
  let deadline: NodeJS.Timeout | undefined;
  await new Promise<void>((resolve) => {
    if (seconds !== undefined) deadline = setTimeout(resolve, seconds * 1000);
    process.once("SIGINT", () => resolve());
    process.once("SIGTERM", () => resolve());
  });
  // A Ctrl-C before --for's end: its timer would otherwise keep the process alive until then.
  clearTimeout(deadline);
  clearInterval(ticker);
  if (redraw) clearTimeout(redraw);
  client.end(true);
  if (tty) draw();
  else console.log(view.render(title()));
  return 0;
}
