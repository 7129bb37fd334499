// Secrets written into a git work tree are one "git add ." away from a commit, and from there from
// every clone of the repository. The commands that write key material (the fleet CA key, provisioning
// files, a new data directory) call warnIfUnignoredInGitTree afterwards: a warning on stderr, never a
// refusal and never a different exit code (the operator may know better, e.g. a private repository).
// Git decides what "inside" and "ignored" mean (nested repositories, .git files of worktrees,
// global excludes), so git is asked; without git on this machine there is nothing to warn about.

import { spawnSync } from "node:child_process";
import { existsSync, statSync } from "node:fs";
import { dirname, resolve, sep } from "node:path";
import { forTerminal } from "../gateway/log/terminal.ts";

/** The paths warned about by this process: each is named once, and nothing beneath one of them again. */
const warned = new Set<string>();

/** git's answer, or undefined when git is absent or fails (not a work tree, a repository it will not
 *  read): then no warning. A minimal environment: a GIT_DIR or GIT_WORK_TREE of the caller's would
 *  make git answer about another repository than the one around path. */
function git(args: string[], cwd: string): { status: number; stdout: string } | undefined {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("GIT_")));
  const r = spawnSync("git", args, { cwd, env, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"], timeout: 10_000 });
  if (r.error || r.status === null) return undefined;
  return { status: r.status, stdout: r.stdout };
}

/** The work tree holding path and whether git ignores path there; undefined when path is in none
 *  (or git cannot say). */
export function gitExposure(path: string): { workTree: string; ignored: boolean } | undefined {
  const abs = resolve(path);
  const isDir = existsSync(abs) && statSync(abs).isDirectory();
  let cwd = isDir ? abs : dirname(abs);
  while (!existsSync(cwd) && dirname(cwd) !== cwd) cwd = dirname(cwd);
  const top = git(["rev-parse", "--show-toplevel"], cwd);
  if (!top || top.status !== 0 || !top.stdout.trim()) return undefined;
  // Inside the .git directory itself git answers nothing useful; nothing there is ever committed.
  const inside = git(["rev-parse", "--is-inside-work-tree"], cwd);
  if (!inside || inside.stdout.trim() !== "true") return undefined;
  // Exit 0: ignored; 1: not ignored; anything else (128: an error): cannot say, so no warning.
  const check = git(["check-ignore", "-q", "--", abs], cwd);
  if (!check || (check.status !== 0 && check.status !== 1)) return undefined;
  return { workTree: top.stdout.trim(), ignored: check.status === 0 };
}

/** A warning on stderr when path, which holds what (secrets), lies in a git work tree and is not
 *  ignored there. Once per path, and not for a path inside one already named. */
export function warnIfUnignoredInGitTree(path: string, what: string): void {
  const abs = resolve(path);
  for (const w of warned) if (abs === w || abs.startsWith(w + sep)) return;
  const exposure = gitExposure(abs);
  if (!exposure || exposure.ignored) return;
  warned.add(abs);
  console.error(forTerminal(`keyproxy: warning: ${path} holds ${what} and is inside the git work tree ${exposure.workTree}, not ignored: add it to .gitignore or write it outside the repository`));
}

/** What a gateway's data directory holds, for the warning. */
export const DATA_DIR_SECRETS = "the gateway's keys, its registry of device root keys (keyproxy.db) and the key that seals them (keyproxy.kek)";

/** For a command that may create a gateway's data directory: call before, and call what it returns
 *  after, the work. The directory is warned about only if this command created it: one that was
 *  there before was warned about (or chosen knowingly) by whoever made it. */
export function noteNewDataDir(dataDir: string): () => void {
  const existed = existsSync(dataDir);
  return () => {
    if (!existed && existsSync(dataDir)) warnIfUnignoredInGitTree(dataDir, DATA_DIR_SECRETS);
  };
}
