// The real CLI on a terminal of a given width: script(1) gives it a pseudo-terminal, so that
// process.stdout.isTTY and .columns are what an operator's terminal would give (keyproxy monitor's
// redrawn table). Its output is what the terminal received: escapes, \r\n.
import { spawn } from "node:child_process";
import { CLI } from "./process.ts";

export function onTerminal(columns: number, args: string[]): Promise<{ code: number | null; output: string }> {
  const quote = (s: string) => `'${s.replace(/'/g, "'\\''")}'`;
  const inner = `stty cols ${columns} rows 50; exec ${[process.execPath, CLI, ...args].map(quote).join(" ")}`;
  return new Promise((resolve, reject) => {
    const child = spawn("script", ["-qfec", inner, "/dev/null"], { stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (b) => (output += b));
    child.stderr.on("data", (b) => (output += b));
    const t = setTimeout(() => { child.kill("SIGKILL"); reject(new Error(`keyproxy ${args.join(" ")} on a terminal did not finish:\n${output}`)); }, 60_000);
    child.once("exit", (code) => { clearTimeout(t); resolve({ code, output }); });
  });
}

/** The screens a redrawing command drew (each after its clear-screen), as lines. */
export function screens(output: string): string[][] {
  return output.split("\x1b[H\x1b[2J").slice(1).map((s) => s.replace(/\r\n$/, "").split("\r\n"));
}
