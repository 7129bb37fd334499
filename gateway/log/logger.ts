// Structured logging: one JSON object per line. Byte arrays are never written out, whatever a caller
// passes, so a key cannot reach a log by mistake; ids meant for humans are passed as hex strings.
// Every record is also an event: subscribers (monitoring over MQTT, tests) get the same object the
// log line was made from, after the same withholding. A line is JSON with every control character
// escaped (gateway/log/terminal.ts): values come from devices and peers, and the log is read on terminals.

import { jsonForTerminal } from "./terminal.ts";

export type Level = "info" | "warn" | "error";
export type Fields = Record<string, string | number | boolean | null | undefined | Uint8Array>;

export type LogRecord = { ts: string; level: Level; event: string } & Record<string, unknown>;

export class Logger {
  private sink: (line: string) => void;
  private subscribers = new Set<(rec: LogRecord) => void>();

  constructor(sink: (line: string) => void = (l) => process.stderr.write(l + "\n")) {
    this.sink = sink;
  }

  log(level: Level, event: string, fields: Fields = {}): void {
    const rec: Record<string, unknown> = { ts: new Date().toISOString(), level, event };
    for (const [k, v] of Object.entries(fields)) {
      if (v === undefined) continue;
      rec[k] = v instanceof Uint8Array ? `<${v.length} bytes withheld>` : v;
    }
    this.sink(jsonForTerminal(rec));
    for (const s of this.subscribers) {
      try {
        s(rec as LogRecord);
      } catch {
        // A failing subscriber must not break logging or the code that logged.
      }
    }
  }

  /** Calls fn with every record from now on; returns the function that unsubscribes. */
  subscribe(fn: (rec: LogRecord) => void): () => void {
    this.subscribers.add(fn);
    return () => this.subscribers.delete(fn);
  }

  info(event: string, fields?: Fields): void { this.log("info", event, fields); }
  warn(event: string, fields?: Fields): void { this.log("warn", event, fields); }
  error(event: string, fields?: Fields): void { this.log("error", event, fields); }
}
