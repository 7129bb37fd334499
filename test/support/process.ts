// A gateway as a separate OS process, started through the real CLI, as a user would run it.
import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";

export const CLI = fileURLToPath(new URL("../../bin/keyproxy.js", import.meta.url));

export interface GatewayProcess {
  child: ChildProcess;
  port: number;
  lines: string[];
  events(event: string): Record<string, any>[];
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/** `nodeArgs` go to Node before the CLI (a benchmark's --cpu-prof). */
export function startGatewayProcess(dataDir: string, port = 0, extra: string[] = [], nodeArgs: string[] = []): Promise<GatewayProcess> {
  const child = spawn(process.execPath, [...nodeArgs, CLI, "gateway", "--data-dir", dataDir, "--listen", `127.0.0.1:${port}`, ...extra], { stdio: ["ignore", "pipe", "pipe"] });
  const lines: string[] = [];
  let buf = "";
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`gateway did not start:\n${lines.join("\n")}`)), 20000);
    child.stderr!.on("data", (b: Buffer) => {
      buf += b.toString();
      let i: number;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        lines.push(line);
        let rec: Record<string, any> | undefined;
        try { rec = JSON.parse(line); } catch { /* not a log record */ }
        if (rec?.event === "gateway-started") {
          clearTimeout(timer);
          const listen = String(rec.listen);
          resolve({
            child,
            port: Number(listen.slice(listen.lastIndexOf(":") + 1)),
            lines,
            events: (e) => lines.flatMap((l) => { try { const r = JSON.parse(l); return r.event === e ? [r] : []; } catch { return []; } }),
            stop: (signal = "SIGTERM") => new Promise((res) => { if (child.exitCode !== null) res(child.exitCode); child.once("exit", (code) => res(code)); child.kill(signal); }),
          });
        }
      }
    });
    child.once("exit", (code) => { clearTimeout(timer); reject(new Error(`gateway exited with ${code}:\n${lines.join("\n")}`)); });
  });
}
