// PostgreSQL for the benchmarks: a fresh database for one run of the gateway's registry, and the CPU
// time the server spends on it.
//
// The server is the one KEYPROXY_BENCH_POSTGRES_URL names (an admin URL able to CREATE DATABASE), else
// a throwaway cluster this process starts, the one the tests start too (test/support/postgres-cluster.ts:
// initdb in a temporary directory, trust on loopback only, a free port on 127.0.0.1, owned by the
// `postgres` system user when we are root; stopped and deleted when the process exits), with one
// difference: the tests' cluster runs with fsync off, this one with the server's defaults (fsync on),
// since a gateway's registry commits durably and what that costs is part of what is measured.
//
// The server's CPU is read from /proc, so it is only known when the server runs on this machine: the
// postmaster (found as the parent of our own backend) and all its children (the backends serving the
// gateway's pool, the WAL writer, the checkpointer, ...), their exact run time from /proc/<pid>/schedstat,
// plus the postmaster's cutime + cstime for children that already ended (10 ms ticks).

import * as fs from "node:fs";
import { scratchDatabase, throwawayCluster, withAdmin } from "../test/support/postgres-cluster.ts";

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
  return process.env[BENCH_POSTGRES_URL_ENV] || (await durableCluster(log));
}

/** A fresh database on benchPostgresServer(). */
export async function benchDatabase(log: (s: string) => void): Promise<BenchDatabase> {
  const admin = await benchPostgresServer(log);
  const db = await scratchDatabase(admin, "kp_bench_");
  const { server, postmaster } = await serverFacts(admin).catch(async (e: unknown) => {
    await db.drop().catch(() => undefined); // no database left behind for a run that never starts; the first error is the one to tell
    throw e;
  });
  return {
    ...db,
    server,
    serverCpuUs: () => (postmaster === undefined ? undefined : processTreeCpuUs(postmaster)),
  };
}

/** The settings that decide what a commit costs, and the postmaster (the parent of our backend) when
 *  the server runs on this machine. */
async function serverFacts(admin: string): Promise<{ server: BenchDatabase["server"]; postmaster: number | undefined }> {
  return withAdmin(admin, async (client) => {
    const backend = (await client.query<{ pid: number }>("SELECT pg_backend_pid() AS pid")).rows[0].pid;
    const setting = async (s: string) => (await client.query<{ v: string }>(`SELECT current_setting('${s}') AS v`)).rows[0].v;
    return {
      server: { version: await setting("server_version"), fsync: await setting("fsync"), synchronousCommit: await setting("synchronous_commit") },
      postmaster: parentOf(backend),
    };
  });
}

/** The throwaway cluster, durable as a gateway's registry is; the reason it cannot start, with the way out. */
async function durableCluster(log: (s: string) => void): Promise<string> {
  try {
    return await throwawayCluster({ fsync: true, log });
  } catch (e) {
    throw new Error(`no PostgreSQL for the benchmark: ${(e as Error).message} (set ${BENCH_POSTGRES_URL_ENV} to an admin URL, or install Debian's postgresql)`);
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
