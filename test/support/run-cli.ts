// The real CLI as a child process, for the tests of its command line (test/cli-*.test.ts): its exit
// code and output, run in a directory of its own and with no KEYPROXY_ variables but those given.
import { spawn } from "node:child_process";
import { CLI } from "./process.ts";
import { tempDir } from "./harness.ts";

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function runCli(args: string[], opts: { env?: Record<string, string>; cwd?: string; timeoutMs?: number } = {}): Promise<CliResult> {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("KEYPROXY_")));
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ["ignore", "pipe", "pipe"], env: { ...env, ...opts.env }, cwd: opts.cwd ?? tempDir("kp-cli-cwd-") });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (b) => (stdout += b));
    child.stderr.on("data", (b) => (stderr += b));
    // A command that waits for Ctrl-C where it should have failed: a finding, not a hung test run.
    const t = setTimeout(() => { child.kill("SIGKILL"); reject(new Error(`keyproxy ${args.join(" ")} did not finish:\n${stdout}\n${stderr}`)); }, opts.timeoutMs ?? 60_000);
    child.once("exit", (code) => { clearTimeout(t); resolve({ code, stdout, stderr }); });
  });
}
