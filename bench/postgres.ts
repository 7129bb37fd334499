// PostgreSQL for the benchmarks: a fresh database for one run of the gateway's registry, and the CPU
// time the server spends on it.
//
// The server is the one KEYPROXY_BENCH_POSTGRES_URL names (an admin URL able to CREATE DATABASE), else
// a throwaway cluster this process starts, as test/support/postgres.ts does for the tests (initdb in a
// temporary directory, trust on loopback only, a free port on 127.0.0.1, owned by the `postgres` system
// user when we are root; stopped and deleted when the process exits), with one difference: the tests'
// cluster runs with fsync off, this one with the server's defaults, since a gateway's registry commits
// durably and what that costs is part of what is measured.
//
// The server's CPU is read from /proc, so it is only known when the server runs on this machine: the
// postmaster (found as the parent of our own backend) and all its children (the backends serving the
// gateway's pool, the WAL writer, the checkpointer, ...), their exact run time from /proc/<pid>/schedstat,
// plus the postmaster's cutime + cstime for children that already ended (10 ms ticks).

import { execFile, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { promisify } from "node:util";
import pg from "pg";

const run = promisify(execFile);

/** The admin URL of an existing server the benchmarks may create databases on. */
export const BENCH_POSTGRES_URL_ENV = "KEYPROXY_BENCH_POSTGRES_URL";

export interface BenchDatabase {
  /** postgres://... of the new, empty database. */
  url: string;
  /** The server's version and the settings that decide what a commit costs. */
  server: { version: string; fsync: string; synchronousCommit: string };
  /** The server's CPU time so far (µs, all its processes), or undefined when it is not on this machine. */
  serverCpuUs(): number | undefined;
  /** Drops the database (its connections cut first). */
  drop(): Promise<void>;
}

/** The admin URL of KEYPROXY_BENCH_POSTGRES_URL's server, else of a throwaway cluster started once
 *  per process (bench/registry-engines.ts starts one and hands it to each run it forks). */
export async function benchPostgresServer(log: (s: string) => void): Promise<string> {
  return process.env[BENCH_POSTGRES_URL_ENV] || (await throwawayCluster(log));
}

/** A fresh database on benchPostgresServer(). */
export async function benchDatabase(log: (s: string) => void): Promise<BenchDatabase> {
  const admin = await benchPostgresServer(log);
  const name = `kp_bench_${randomBytes(6).toString("hex")}`;
  const client = new pg.Client({ connectionString: admin });
  await client.connect();
  try {
    await client.query(`CREATE DATABASE ${name}`);
    const backend = (await client.query<{ pid: number }>("SELECT pg_backend_pid() AS pid")).rows[0].pid;
    const setting = async (s: string) => (await client.query<{ v: string }>(`SELECT current_setting('${s}') AS v`)).rows[0].v;
    const server = { version: await setting("server_version"), fsync: await setting("fsync"), synchronousCommit: await setting("synchronous_commit") };
    const postmaster = parentOf(backend);
    const url = new URL(admin);
    url.pathname = `/${name}`;
    return {
      url: url.toString(),
      server,
      serverCpuUs: () => (postmaster === undefined ? undefined : processTreeCpuUs(postmaster)),
      drop: () => asAdmin(admin, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`),
    };
  } finally {
    await client.end();
  }
}

async function asAdmin(admin: string, sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: admin });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}

// ---- the server's CPU, from /proc ----------------------------------------------------------------------

/** Fields of /proc/<pid>/stat after the command name (which may hold spaces): index 0 is field 3. */
function statFields(pid: number): string[] | undefined {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    return s.slice(s.lastIndexOf(")") + 2).split(" ");
  } catch {
    return undefined;
  }
}

/** The parent of a process on this machine; undefined when the pid is not ours to see (another host). */
function parentOf(pid: number): number | undefined {
  const f = statFields(pid);
  return f ? Number(f[1]) : undefined;
}

const TICK_US = 1e6 / 100; // USER_HZ is 100 on Linux.

/** A process's own run time in µs (schedstat's first field is nanoseconds on the CPU). */
function runTimeUs(pid: number): number {
  try {
    return Number(fs.readFileSync(`/proc/${pid}/schedstat`, "utf8").split(" ")[0]) / 1000;
  } catch {
    return 0; // it ended between the listing and the read: its time is in the parent's cutime now
  }
}

/** The postmaster's run time, its children's, and (in ticks) that of its children that ended. */
function processTreeCpuUs(postmaster: number): number | undefined {
  const own = statFields(postmaster);
  if (!own) return undefined;
  // Fields 16 and 17 (cutime, cstime): the children the postmaster has waited for.
  let us = runTimeUs(postmaster) + (Number(own[13]) + Number(own[14])) * TICK_US;
  for (const entry of fs.readdirSync("/proc")) {
    const pid = Number(entry);
    if (!Number.isInteger(pid) || pid === postmaster) continue;
    if (parentOf(pid) === postmaster) us += runTimeUs(pid);
  }
  return us;
}

// ---- a throwaway cluster --------------------------------------------------------------------------------

let cluster: Promise<string> | undefined;

function postgresBin(): string {
  const root = "/usr/lib/postgresql";
  const versions = fs.existsSync(root) ? fs.readdirSync(root).filter((v) => fs.existsSync(path.join(root, v, "bin", "initdb"))).sort((a, b) => Number(b) - Number(a)) : [];
  if (!versions.length) throw new Error(`no PostgreSQL server here: set ${BENCH_POSTGRES_URL_ENV} to an admin URL, or install Debian's postgresql (initdb under /usr/lib/postgresql/*/bin)`);
  return path.join(root, versions[0], "bin");
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((resolve) => s.listen(0, "127.0.0.1", resolve));
  const { port } = s.address() as net.AddressInfo;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

/** Starts the cluster once per process; resolves with its admin URL. */
function throwawayCluster(log: (s: string) => void): Promise<string> {
  return (cluster ??= startCluster(log));
}

async function startCluster(log: (s: string) => void): Promise<string> {
  const bin = postgresBin();
  // PostgreSQL refuses to run as root: then the cluster belongs to the `postgres` system user.
  const asRoot = process.getuid?.() === 0;
  const owner = asRoot ? { uid: Number(spawnSync("id", ["-u", "postgres"], { encoding: "utf8" }).stdout), gid: Number(spawnSync("id", ["-g", "postgres"], { encoding: "utf8" }).stdout) } : undefined;
  if (owner && !(owner.uid > 0)) throw new Error(`running as root without a \`postgres\` system user to own a cluster: set ${BENCH_POSTGRES_URL_ENV} instead`);
  const as = (cmd: string, args: string[]): [string, string[]] => (owner ? ["runuser", ["-u", "postgres", "--", cmd, ...args]] : [cmd, args]);

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kp-bench-postgres-"));
  const data = path.join(dir, "data");
  const socket = path.join(dir, "socket");
  fs.mkdirSync(socket);
  if (owner) {
    fs.chownSync(dir, owner.uid, owner.gid);
    fs.chownSync(socket, owner.uid, owner.gid);
  }
  const stop = () => {
    spawnSync(...as(path.join(bin, "pg_ctl"), ["-D", data, "-m", "immediate", "-w", "stop"]), { stdio: "ignore" });
    fs.rmSync(dir, { recursive: true, force: true });
  };
  process.once("exit", stop);
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.once(signal, () => {
      stop();
      process.kill(process.pid, signal);
    });
  }
  const port = await freePort();
  log(`postgres: a throwaway cluster (${bin}) on 127.0.0.1:${port}, the server's default durability (fsync on)`);
  await run(...as(path.join(bin, "initdb"), ["-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"]));
  await run(...as(path.join(bin, "pg_ctl"), ["-D", data, "-l", path.join(dir, "server.log"), "-o", `-p ${port} -k ${socket} -c listen_addresses=127.0.0.1`, "-w", "start"]));
  return `postgres://postgres@127.0.0.1:${port}/postgres`;
}
