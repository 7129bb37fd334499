// `keyproxy monitor`: a live view of the fleet from MQTT. It subscribes to keyproxy/v1/# on a broker
// and keeps what the gateways publish there (docs/MONITORING.md): their retained status, each
// handset's retained state, recent events and metrics. On a terminal it redraws a compact table in
// place; otherwise it prints one plain line per change (and the table at the end of --once / --for).
// Everything on the broker is someone else's text (anyone who can publish there chooses topics and
// payloads): every line and every table cell goes through forTerminal before it is printed.

import { connect, type MqttClient } from "mqtt";
import { redactUrl, topics, type DeviceState } from "../gateway/monitor/monitor.ts";
import { describeEvent, FleetModel, radioWords } from "../gateway/monitor/fleet-model.ts";
import { DEFAULT_BROKER_LISTEN } from "../gateway/monitor/embedded-broker.ts";
import { forTerminal } from "../gateway/log/terminal.ts";
import { brokerUrl, parse, positiveInt, UsageError } from "./args.ts";

export const DEFAULT_MQTT_URL = `mqtt://${DEFAULT_BROKER_LISTEN.host}:${DEFAULT_BROKER_LISTEN.port}`;

const HELP = `usage: keyproxy monitor [--mqtt <url>] [--once] [--for <s>] [--events <n>]

Shows the fleet as its gateways publish it over MQTT (topics keyproxy/v1/#):
every gateway's status, every handset's state, recent events. On a terminal the
table is redrawn in place; otherwise each change is printed as a line. Every
line is cut to the terminal's width (80 columns when not a terminal). A broker
that is away is retried every 2 s, and the monitor says so. Stop with Ctrl-C.

  --mqtt <url>   the broker (default ${DEFAULT_MQTT_URL}, where
                 "keyproxy gateway" starts its embedded one)
  --once         print the retained state once and exit
  --for <s>      run for s seconds, then print the table and exit
  --events <n>   recent events kept in the table (default 8)`;

// The model (one parser of the monitoring messages) is shared with the web fleet view.
export { describeEvent };

/** What the monitor knows, built from MQTT messages alone (FleetModel), drawn as a table. */
export class FleetView extends FleetModel {
  /** The table, every line of it at most width columns: values are kept short, columns narrowed
   *  with an ellipsis when they still do not fit, a line never wrapped. notice: a line under the
   *  title (the broker's state), blank when undefined. */
  render(title: string, now = Date.now(), width = DEFAULT_WIDTH, notice?: string): string {
    const out: string[] = [title, notice ?? ""];
    const gws = [...this.gateways.entries()].sort((a, b) => a[0].localeCompare(b[0]));
    out.push(...table(
      ["GATEWAY", "STATE", "SINCE", "LISTEN", "LINKED", "JOINS", "REJ", "FRAMES", "DROP"],
      gws.map(([id, g]) => [
        id,
        g.status?.state ?? "?",
        since(g.status?.since, now),
        g.status?.listen ?? "-",
        String([...(this.devices.get(id)?.values() ?? [])].filter((d) => d.online && g.status?.state === "online").length),
        num(g.metrics?.joins),
        num(g.metrics?.joinRejects),
        num(g.metrics?.framesIn),
        num(g.metrics?.framesDropped),
      ]),
      width,
      [0, 3],
    ));
    // One table per gateway: the gateway's id, often the widest value, is in its heading, not in every row.
    const byGateway = [...this.devices.entries()].filter(([, m]) => m.size).sort((a, b) => a[0].localeCompare(b[0]));
    if (!byGateway.length) out.push("", "HANDSETS", "  (none)");
    for (const [gw, m] of byGateway) {
      const rows = [...m.entries()].sort((a, b) => a[0].localeCompare(b[0])).map(([id, d]) => [id, this.shortLink(gw, d), shortRegistration(d, now), d.board, String(d.joinCounter), String(d.joinRejects), String(d.framesDropped), d.firmware ?? "-", memory(d)]);
      // A RADIO column only for a gateway that has handsets on Bluetooth (gateway/ble/).
      const radios = [...m.values()].some((d) => d.radio !== undefined);
      if (radios) [...m.entries()].sort((a, b) => a[0].localeCompare(b[0])).forEach(([, d], i) => rows[i].push(radioWords(d, now)));
      const head = ["HANDSET", "LINK", "REGISTERED", "BOARD", "JOINS", "REJ", "DROP", "FIRMWARE", "MEM", ...(radios ? ["RADIO"] : [])];
      out.push("", `HANDSETS @ ${gw}`, ...table(head, rows, width, [0, 7]));
    }
    out.push("", "RECENT EVENTS");
    if (!this.events.length) out.push("  (none yet)");
    for (const e of this.events) out.push(`  ${forTerminal(e.gateway)}  ${describeEvent(e.rec)}`);
    // Each entry is one line: a newline inside one is shown escaped, never starts a line of its own.
    return out.map((l) => fitLine(forTerminal(l), width)).join("\n");
  }

  /** link(), in a table cell: the gateway's state is in the gateway table above. */
  private shortLink(gateway: string, d: DeviceState): string {
    return this.gateways.get(gateway)?.status?.state === "online" ? (d.online ? "linked" : "not linked") : "unknown";
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

/** registration(), in a table cell. */
function shortRegistration(d: DeviceState, now: number): string {
  if (d.revoked) return "revoked";
  if (!d.registeredUntil) return "no";
  const left = Math.floor((Date.parse(d.registeredUntil) - now) / 1000);
  return left > 0 ? `${left}s left` : "expired";
}

/** A gateway's status time, local: the time of day when it is today, else the date. */
function since(iso: unknown, now: number): string {
  if (typeof iso !== "string" || Number.isNaN(Date.parse(iso))) return "-";
  const t = new Date(iso);
  const today = new Date(now).toDateString() === t.toDateString();
  return today ? t.toTimeString().slice(0, 8) : `${t.getFullYear()}-${String(t.getMonth() + 1).padStart(2, "0")}-${String(t.getDate()).padStart(2, "0")}`;
}

/** The width the monitor's lines fit in when the terminal's is not known (stdout is a pipe or a file). */
export const DEFAULT_WIDTH = 80;
/** A column is never narrowed below this: one character and the ellipsis say there is something. */
const MIN_COLUMN = 4;
/** Names are narrowed first, but not below this: enough of one to tell it from its neighbours. */
const ELASTIC_FLOOR = 8;
const ELLIPSIS = "\u2026";

/** Characters a terminal shows two columns wide: CJK, Hangul, full-width forms, most emoji. */
const WIDE = /[\u1100-\u115f\u2e80-\u303e\u3041-\u33ff\u3400-\u4dbf\u4e00-\u9fff\ua000-\ua4cf\uac00-\ud7a3\uf900-\ufaff\ufe30-\ufe4f\uff00-\uff60\uffe0-\uffe6\u{1f300}-\u{1f64f}\u{1f900}-\u{1f9ff}\u{20000}-\u{3fffd}]/u;
/** Characters that take no column of their own: combining marks, zero-width joiners and spaces. */
const ZERO = /[\p{Mn}\p{Me}\u200b-\u200d\ufe00-\ufe0f]/u;

function charWidth(c: string): number {
  return ZERO.test(c) ? 0 : WIDE.test(c) ? 2 : 1;
}

/** The columns s takes on a terminal (s already through forTerminal: no control characters). */
export function displayWidth(s: string): number {
  let w = 0;
  for (const c of s) w += charWidth(c);
  return w;
}

/** s cut to at most width columns, an ellipsis where it was cut. */
export function fitLine(s: string, width: number): string {
  if (displayWidth(s) <= width) return s;
  let out = "";
  let w = 0;
  for (const c of s) {
    const cw = charWidth(c);
    if (w + cw > width - 1) break;
    out += c;
    w += cw;
  }
  return out + ELLIPSIS;
}

/** Escaped before the widths are measured, so that a hostile cell only widens its own column; and
 *  fitted into width: the gaps between columns narrowed to one space; then the elastic columns (names,
 *  addresses: long, and recognisable from their start) narrowed down to ELASTIC_FLOOR, widest first,
 *  their values cut with an ellipsis; on a terminal narrower still, they go on narrowing down to
 *  MIN_COLUMN, and only then do the other columns. */
function table(head: string[], raw: string[][], width: number, elastic: readonly number[] = [0]): string[] {
  const rows = raw.map((r) => r.map((c) => forTerminal(String(c))));
  const w = head.map((h, i) => Math.max(displayWidth(h), ...rows.map((r) => displayWidth(r[i]))));
  const total = (gap: number) => w.reduce((a, b) => a + b, 0) + gap * (w.length - 1);
  const gap = total(2) <= width ? 2 : 1;
  const narrow = (columns: readonly number[], floor: number) => {
    while (total(gap) > width) {
      const candidates = columns.filter((i) => w[i] > floor);
      if (!candidates.length) return;
      const widest = candidates.reduce((a, b) => (w[b] > w[a] ? b : a));
      w[widest]--;
    }
  };
  narrow(elastic, ELASTIC_FLOOR);
  narrow(elastic, MIN_COLUMN);
  narrow(w.map((_, i) => i), MIN_COLUMN);
  const cell = (c: string, i: number) => {
    const v = fitLine(c, w[i]);
    return v + " ".repeat(Math.max(0, w[i] - displayWidth(v)));
  };
  const lines = [head, ...rows].map((r) => r.map(cell).join(" ".repeat(gap)).trimEnd());
  return rows.length ? lines : [...lines, "  (none)"];
}

/** The width to fit: the terminal's when stdout is one that says, else DEFAULT_WIDTH. Read at every
 *  draw: the terminal may have been resized. */
function outputWidth(): number {
  const c = process.stdout.isTTY ? process.stdout.columns : undefined;
  return typeof c === "number" && c > 0 ? c : DEFAULT_WIDTH;
}

function clock(ms: number): string {
  return new Date(ms).toTimeString().slice(0, 8);
}

/** The connection to the broker as the operator needs to know it: since when it has been unreachable
 *  (not yet reached, or lost), and when it came back. Named by its redacted URL: never a password. */
export class BrokerLink {
  private downSince: number | undefined;
  private everConnected = false;
  private lastError = "";

  constructor(private readonly url: string) {}

  error(e: Error): void {
    this.lastError = e.message;
  }

  /** A connection attempt failed or the connection was lost: a line when that is news, once per outage. */
  down(now = Date.now()): string | undefined {
    if (this.downSince !== undefined) return undefined;
    this.downSince = now;
    return this.notice();
  }

  /** Connected: a line saying so, and after an outage for how long the broker was away. */
  up(now = Date.now()): string {
    const was = this.downSince;
    const again = this.everConnected;
    this.downSince = undefined;
    this.everConnected = true;
    this.lastError = "";
    if (!again) return `broker ${redactUrl(this.url)} connected at ${clock(now)}`;
    return `broker ${redactUrl(this.url)} reconnected at ${clock(now)}${was === undefined ? "" : ` (unreachable for ${Math.round((now - was) / 1000)}s)`}`;
  }

  /** While the broker is away: what to show under the title; undefined while connected. The error
   *  last, where a narrow terminal cuts it first. */
  notice(): string | undefined {
    if (this.downSince === undefined) return undefined;
    return forTerminal(`broker ${redactUrl(this.url)} unreachable since ${clock(this.downSince)}; retrying${this.lastError ? ` (${this.lastError})` : ""}`);
  }
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
  const title = () => `keyproxy monitor  ${redactUrl(url)}  ${clock(Date.now())}`;
  /** One line of output, fitted: every line the monitor prints is at most the terminal's width. */
  const say = (line: string) => console.log(fitLine(forTerminal(line), outputWidth()));
  const broker = new BrokerLink(url);
  const table = () => view.render(title(), Date.now(), outputWidth(), broker.notice());

  const client: MqttClient = connect(url, { protocolVersion: 4, reconnectPeriod: o.once ? 0 : 2000, connectTimeout: 5000, clientId: `keyproxy-monitor-${process.pid}-${Date.now().toString(36)}` });
  let lastError = "";
  client.on("error", (e) => {
    lastError = e.message;
    broker.error(e);
  });

  let redraw: NodeJS.Timeout | undefined;
  const draw = () => {
    redraw = undefined;
    process.stdout.write(`\x1b[H\x1b[2J${table()}\n`);
  };
  let lastMessage = Date.now();
  client.on("message", (topic, payload) => {
    lastMessage = Date.now();
    const line = view.apply(topic, payload);
    if (tty) redraw ??= setTimeout(draw, 200);
    else if (line && !o.once) say(line);
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
    console.log(table());
    return 0;
  }

  // Every change of the connection is news: a line of its own, or the notice under the title.
  const brokerChange = (line: string | undefined) => {
    if (line === undefined) return;
    if (tty) redraw ??= setTimeout(draw, 0);
    else say(line);
  };
  client.on("connect", () => {
    brokerChange(broker.up());
    client.subscribe(topics.all, { qos: 1 });
  });
  // "close" after every failed attempt as after a lost connection; the line only once per outage.
  let stopping = false;
  client.on("close", () => {
    if (!stopping) brokerChange(broker.down());
  });
  if (tty) draw();
  else say(`keyproxy monitor: watching ${redactUrl(url)} (${topics.all})`);
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
  stopping = true;
  client.end(true);
  if (tty) draw();
  else console.log(table());
  return 0;
}
