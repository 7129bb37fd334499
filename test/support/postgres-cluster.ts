// A throwaway PostgreSQL cluster, and statements run as the admin of a server: the one piece that both
// the tests (test/support/postgres.ts) and the benchmarks (bench/postgres.ts) start their PostgreSQL
// with. It lives beside the tests' support because bench/ already imports from test/support (the
// harness's tempDir, the real rig), never the other way round.
//
// The cluster: initdb into a temporary directory, trust authentication on loopback only, a free TCP
// port on 127.0.0.1, its socket inside that directory; started once per process (and durability);
// stopped and deleted when the process exits, or is cut short by SIGINT/SIGTERM. PostgreSQL refuses to
// run as root, so as root the cluster belongs to the `postgres` system user (Debian's package creates
// it). Clusters whose process died without its exit handler (SIGKILL) are reaped by the next start.
//
// Durability is the caller's choice: the tests run with fsync off (they need no durability, and the
// shared machine's disks stay quiet), the benchmarks with the server's defaults (fsync on), since a
// gateway's registry commits durably and what that costs is part of what they measure.

import { execFile, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import pg from "pg";

const run = promisify(execFile);

// ---------------------------------------------------------------------------------------------
// Admin statements and scratch databases, on any server

/** Runs `use` on one admin connection to the server, closed after whatever `use` does. */
export async function withAdmin<T>(admin: string, use: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: admin });
  await client.connect();
  try {
    return await use(client);
  } finally {
    await client.end();
  }
}

/** One statement as the server's admin, on a connection of its own. */
export async function asAdmin(admin: string, sql: string): Promise<void> {
  await withAdmin(admin, (client) => client.query(sql));
}

export interface ScratchDatabase {
  /** postgres://... of the new, empty database: the admin URL with its path replaced. */
  url: string;
  /** Drops the database (its connections are cut first). Idempotent. */
  drop(): Promise<void>;
}

/** CREATE DATABASE <prefix><random hex> on the admin URL's server. The prefix must be a plain SQL
 *  identifier (the caller's constant: it is written into the statement as it is). */
export async function scratchDatabase(admin: string, prefix: string): Promise<ScratchDatabase> {
  const name = `${prefix}${randomBytes(6).toString("hex")}`;
  await asAdmin(admin, `CREATE DATABASE ${name}`);
  const url = new URL(admin);
  url.pathname = `/${name}`;
  let dropped: Promise<void> | undefined;
  return {
    url: url.toString(),
    drop: () => (dropped ??= asAdmin(admin, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)),
  };
}

// ---------------------------------------------------------------------------------------------
// The throwaway cluster

export interface ClusterOptions {
  /** false: fsync and full_page_writes off (tests: no durability needed, quiet disks). true: the
   *  server's defaults, fsync on (benchmarks: a durable commit is what they measure). */
  fsync: boolean;
  /** Told the cluster's binaries and port just before it starts. */
  log?: (line: string) => void;
}

/** The cluster directory's name starts so: how the reaper knows the clusters of this module. */
export const CLUSTER_PREFIX = "kp-postgres-";
/** The process a cluster belongs to, written in its directory. */
export const OWNER_PID = "owner.pid";

const clusters = new Map<boolean, Promise<string>>();

/** The admin URL (postgres://postgres@127.0.0.1:<port>/postgres) of this process's throwaway cluster
 *  with that durability, started on the first call. Rejects, and keeps rejecting, with the reason when
 *  none can start here: no PostgreSQL installed, root without a `postgres` user, initdb or pg_ctl failing. */
export function throwawayCluster(options: ClusterOptions): Promise<string> {
  let cluster = clusters.get(options.fsync);
  if (!cluster) clusters.set(options.fsync, (cluster = startCluster(options)));
  return cluster;
}

/** initdb and friends from Debian's packages, the newest version when there are several. */
export function postgresBin(): string | undefined {
  const root = "/usr/lib/postgresql";
  if (!existsSync(root)) return undefined;
  const versions = readdirSync(root)
    .filter((v) => existsSync(join(root, v, "bin", "initdb")))
    .sort((a, b) => Number(b) - Number(a));
  return versions.length ? join(root, versions[0], "bin") : undefined;
}

/** A loopback port nobody listens on now. */
export async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((resolve) => s.listen(0, "127.0.0.1", resolve));
  const { port } = s.address() as net.AddressInfo;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

/** The postgres server options: loopback only, the socket in the cluster's directory, and (without
 *  fsync) the two settings that make commits skip the disk. */
export function serverOptions(port: number, socket: string, fsync: boolean): string {
  const noDurability = fsync ? "" : " -c fsync=off -c full_page_writes=off";
  return `-p ${port} -k ${socket} -c listen_addresses=127.0.0.1${noDurability}`;
}

type Owner = { uid: number; gid: number } | "self";

/** The system user the cluster runs as, when we are root (PostgreSQL will not). */
function clusterOwner(): Owner | undefined {
  if (process.getuid?.() !== 0) return "self";
  const id = (flag: string) => spawnSync("id", [flag, "postgres"], { encoding: "utf8" });
  const uid = id("-u");
  const gid = id("-g");
  if (uid.status !== 0 || gid.status !== 0) return undefined;
  return { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
}

function runAs(owner: Owner, cmd: string, args: string[]): [string, string[]] {
  return owner === "self" ? [cmd, args] : ["runuser", ["-u", "postgres", "--", cmd, ...args]];
}

/** Stops the cluster in dir (if it runs at all) and deletes the directory. */
function stopCluster(bin: string, owner: Owner, dir: string): void {
  const [cmd, args] = runAs(owner, join(bin, "pg_ctl"), ["-D", join(dir, "data"), "-m", "immediate", "-w", "stop"]);
  spawnSync(cmd, args, { stdio: "ignore" });
  rmSync(dir, { recursive: true, force: true });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Stops the clusters of processes that died without their exit handler (SIGKILL, a runner that killed
 *  them): on a shared machine a server left running holds memory until someone notices. A directory
 *  without its owner's pid is being set up right now and is left alone. */
export function reapOrphans(bin: string, inDir = tmpdir()): void {
  const owner = clusterOwner() ?? "self";
  for (const name of readdirSync(inDir)) {
    if (!name.startsWith(CLUSTER_PREFIX)) continue;
    const dir = join(inDir, name);
    let pid: number;
    try {
      pid = Number(readFileSync(join(dir, OWNER_PID), "utf8"));
    } catch {
      continue;
    }
    if (Number.isInteger(pid) && pid > 0 && !alive(pid)) stopCluster(bin, owner, dir);
  }
}

/** Runs stop when the process exits, and when SIGINT or SIGTERM cut it short (then dies of that signal
 *  as it would have). Returns the function that takes all three back. */
function stopAtExit(stop: () => void): () => void {
  const bySignal = (signal: NodeJS.Signals) => () => {
    stop();
    process.kill(process.pid, signal);
  };
  const onInt = bySignal("SIGINT");
  const onTerm = bySignal("SIGTERM");
  process.once("exit", stop);
  process.once("SIGINT", onInt);
  process.once("SIGTERM", onTerm);
  return () => {
    process.off("exit", stop);
    process.off("SIGINT", onInt);
    process.off("SIGTERM", onTerm);
  };
}

async function startCluster({ fsync, log }: ClusterOptions): Promise<string> {
  const bin = postgresBin();
  if (!bin) throw new Error("there is no /usr/lib/postgresql/*/bin/initdb here");
  const owner = clusterOwner();
  if (!owner) throw new Error("we run as root without a `postgres` system user to own a cluster");

  reapOrphans(bin);
  const dir = mkdtempSync(join(tmpdir(), CLUSTER_PREFIX));
  const stop = () => stopCluster(bin, owner, dir);
  const notAtExit = stopAtExit(stop);
  writeFileSync(join(dir, OWNER_PID), String(process.pid));
  const data = join(dir, "data");
  const socket = join(dir, "socket");
  mkdirSync(socket);
  if (owner !== "self") {
    chownSync(dir, owner.uid, owner.gid);
    chownSync(socket, owner.uid, owner.gid);
  }
  const asOwner = (cmd: string, args: string[]) => runAs(owner, cmd, args);

  try {
    // initdb's pg_hba.conf with -A trust lets in the local socket, 127.0.0.1 and ::1 only.
    await run(...asOwner(join(bin, "initdb"), ["-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"]));
    const port = await freePort();
    log?.(`postgres: a throwaway cluster (${bin}) on 127.0.0.1:${port}, ${fsync ? "the server's default durability (fsync on)" : "fsync off"}`);
    await run(...asOwner(join(bin, "pg_ctl"), ["-D", data, "-l", join(dir, "server.log"), "-o", serverOptions(port, socket, fsync), "-w", "start"]));
    return `postgres://postgres@127.0.0.1:${port}/postgres`;
  } catch (e) {
    notAtExit();
    stop();
    const err = e as { stderr?: string; message?: string };
    throw new Error(`a throwaway cluster did not start: ${(err.stderr || err.message || String(e)).trim()}`);
  }
}
