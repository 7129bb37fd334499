// Structured logging: one JSON object per line. Byte arrays are never written out, whatever a caller
// passes, so a key cannot reach a log by mistake; ids meant for humans are passed as hex strings.

export type Level = "info" | "warn" | "error";
export type Fields = Record<string, string | number | boolean | null | undefined | Uint8Array>;

export class Logger {
  private sink: (line: string) => void;

  constructor(sink: (line: string) => void = (l) => process.stderr.write(l + "\n")) {
    this.sink = sink;
  }

  log(level: Level, event: string, fields: Fields = {}): void {
    const rec: Record<string, unknown> = { ts: new Date().toISOString(), level, event };
    for (const [k, v] of Object.entries(fields)) {
      if (v === undefined) continue;
      rec[k] = v instanceof Uint8Array ? `<${v.length} bytes withheld>` : v;
    }
    this.sink(JSON.stringify(rec));
  }

  info(event: string, fields?: Fields): void { this.log("info", event, fields); }
  warn(event: string, fields?: Fields): void { this.log("warn", event, fields); }
  error(event: string, fields?: Fields): void { this.log("error", event, fields); }
}
