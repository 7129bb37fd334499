// The real CLI as a long-running child whose output is read while it runs (keyproxy monitor): wait
// for a line, stop it with a signal, read everything it printed.
import { spawn, type ChildProcess } from "node:child_process";
import { CLI } from "./process.ts";

export interface WatchedCli {
  child: ChildProcess;
  /** Everything printed so far on stdout and stderr. */
  readonly stdout: string;
  readonly stderr: string;
  /** Resolves when stdout matches re (counting matches: the n-th one), or rejects after ms. */
  waitFor(re: RegExp, n?: number, ms?: number): Promise<void>;
  /** SIGTERM (a clean stop for keyproxy monitor), then the exit code. */
  stop(): Promise<number | null>;
}

export function watchCli(args: string[], opts: { command?: string[] } = {}): WatchedCli {
  const argv = opts.command ?? [process.execPath, CLI, ...args];
  const child = spawn(argv[0], argv.slice(1), { stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  const waiters = new Set<() => void>();
  const changed = () => { for (const w of [...waiters]) w(); };
  child.stdout!.on("data", (b) => { stdout += b; changed(); });
  child.stderr!.on("data", (b) => { stderr += b; changed(); });
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => { changed(); resolve(code); }));
  return {
    child,
    get stdout() { return stdout; },
    get stderr() { return stderr; },
    waitFor(re, n = 1, ms = 30_000) {
      const global = new RegExp(re.source, re.flags.includes("g") ? re.flags : re.flags + "g");
      const seen = () => (stdout.match(global) ?? []).length >= n;
      return new Promise((resolve, reject) => {
        const check = () => {
          if (seen()) return done(resolve);
          if (child.exitCode !== null) done(() => reject(new Error(`exited (${child.exitCode}) before ${re} (x${n}):\n${stdout}\n${stderr}`)));
        };
        const timer = setTimeout(() => done(() => reject(new Error(`timed out waiting for ${re} (x${n}):\n${stdout}\n${stderr}`))), ms);
        const done = (f: () => void) => { clearTimeout(timer); waiters.delete(check); f(); };
        waiters.add(check);
        check();
      });
    },
    stop() {
      if (child.exitCode === null) child.kill("SIGTERM");
      return exited;
    },
  };
}
