// A fresh PostgreSQL database for one test file (CREATE DATABASE kp_test_<random>, dropped after), on
// the server KEYPROXY_TEST_POSTGRES_URL names (an admin URL able to CREATE DATABASE; .ci/run sets it),
// else on a throwaway cluster this process starts once: initdb into a temporary directory, trust
// authentication on loopback only, a free TCP port on 127.0.0.1, its socket inside that directory;
// stopped and deleted when the process exits. PostgreSQL refuses to run as root, so as root the
// cluster belongs to the `postgres` system user (Debian's package creates it).
//
// With neither, testDatabase() returns undefined after t.skip(reason); with CI=true it throws instead:
// a test that cannot reach PostgreSQL must never pass CI as skipped.

import { execFile, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";
import { promisify } from "node:util";
import pg from "pg";

const run = promisify(execFile);

export interface TestDatabase {
  /** postgres://... of the new database, for openPostgres. */
  url: string;
  /** Drops the database (its connections are cut first). Idempotent. */
  drop(): Promise<void>;
}

export async function testDatabase(t?: TestContext): Promise<TestDatabase | undefined> {
  const server = await adminUrl();
  if ("missing" in server) {
    const reason = `no PostgreSQL to test against: ${server.missing} (.ci/run installs Debian's postgresql and sets KEYPROXY_TEST_POSTGRES_URL)`;
    if (process.env.CI === "true") throw new Error(`CI=true and ${reason}`);
    t?.skip(reason);
    return undefined;
  }
  return createDatabase(server.url);
}

async function createDatabase(admin: string): Promise<TestDatabase> {
  const name = `kp_test_${randomBytes(6).toString("hex")}`;
  await asAdmin(admin, `CREATE DATABASE ${name}`);
  const url = new URL(admin);
  url.pathname = `/${name}`;
  let dropped: Promise<void> | undefined;
  return {
    url: url.toString(),
    drop: () => (dropped ??= asAdmin(admin, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)),
  };
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

// ---------------------------------------------------------------------------------------------
// Which server

type Server = { url: string } | { missing: string };
let server: Promise<Server> | undefined;

function adminUrl(): Promise<Server> {
  const named = process.env.KEYPROXY_TEST_POSTGRES_URL;
  if (named) return Promise.resolve({ url: named });
  return (server ??= startCluster());
}

/** initdb and friends from Debian's packages, the newest version when there are several. */
function postgresBin(): string | undefined {
  const root = "/usr/lib/postgresql";
  if (!existsSync(root)) return undefined;
  const versions = readdirSync(root)
    .filter((v) => existsSync(join(root, v, "bin", "initdb")))
    .sort((a, b) => Number(b) - Number(a));
  return versions.length ? join(root, versions[0], "bin") : undefined;
}

/** The system user the cluster runs as, when we are root (PostgreSQL will not). */
function clusterOwner(): Owner | undefined {
  if (process.getuid?.() !== 0) return "self";
  const id = (flag: string) => spawnSync("id", [flag, "postgres"], { encoding: "utf8" });
  const uid = id("-u");
  const gid = id("-g");
  if (uid.status !== 0 || gid.status !== 0) return undefined;
  return { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((resolve) => s.listen(0, "127.0.0.1", resolve));
  const { port } = s.address() as net.AddressInfo;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

type Owner = { uid: number; gid: number } | "self";
const CLUSTER_PREFIX = "kp-postgres-";
/** The test process a cluster belongs to, written in its directory. */
const OWNER_PID = "owner.pid";

function runAs(owner: Owner, cmd: string, args: string[]): [string, string[]] {
  return owner === "self" ? [cmd, args] : ["runuser", ["-u", "postgres", "--", cmd, ...args]];
}

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

/** Stops the clusters of test processes that died without their exit handler (SIGKILL, a runner that
 *  killed them): on a shared machine a server left running holds memory until someone notices. A
 *  directory without its owner's pid is being set up right now and is left alone. */
function reapOrphans(bin: string, owner: Owner): void {
  for (const name of readdirSync(tmpdir())) {
    if (!name.startsWith(CLUSTER_PREFIX)) continue;
    const dir = join(tmpdir(), name);
    let pid: number;
    try {
      pid = Number(readFileSync(join(dir, OWNER_PID), "utf8"));
    } catch {
      continue;
    }
    if (Number.isInteger(pid) && pid > 0 && !alive(pid)) stopCluster(bin, owner, dir);
  }
}

async function startCluster(): Promise<Server> {
  const bin = postgresBin();
  if (!bin) return { missing: "KEYPROXY_TEST_POSTGRES_URL is not set and there is no /usr/lib/postgresql/*/bin/initdb here" };
  const owner = clusterOwner();
  if (!owner) return { missing: "KEYPROXY_TEST_POSTGRES_URL is not set, and we run as root without a `postgres` system user to own a cluster" };

  reapOrphans(bin, owner);
  const dir = mkdtempSync(join(tmpdir(), CLUSTER_PREFIX));
  writeFileSync(join(dir, OWNER_PID), String(process.pid));
  const data = join(dir, "data");
  const socket = join(dir, "socket");
  mkdirSync(socket);
  if (owner !== "self") {
    chownSync(dir, owner.uid, owner.gid);
    chownSync(socket, owner.uid, owner.gid);
  }
  const asOwner = (cmd: string, args: string[]) => runAs(owner, cmd, args);
  const stop = () => stopCluster(bin, owner, dir);

  try {
    // initdb's pg_hba.conf with -A trust lets in the local socket, 127.0.0.1 and ::1 only.
    await run(...asOwner(join(bin, "initdb"), ["-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"]));
    const port = await freePort();
    // Durability is not under test here: fsync off keeps the shared machine's disks quiet.
    const options = `-p ${port} -k ${socket} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off`;
    process.once("exit", stop);
    // A test run cut short (Ctrl-C, the runner's timeout) must not leave a server behind either.
    for (const signal of ["SIGINT", "SIGTERM"] as const) {
      process.once(signal, () => {
        stop();
        process.kill(process.pid, signal);
      });
    }
    await run(...asOwner(join(bin, "pg_ctl"), ["-D", data, "-l", join(dir, "server.log"), "-o", options, "-w", "start"]));
    return { url: `postgres://postgres@127.0.0.1:${port}/postgres` };
  } catch (e) {
    process.off("exit", stop);
    stop();
    const err = e as { stderr?: string; message?: string };
    return { missing: `KEYPROXY_TEST_POSTGRES_URL is not set and a throwaway cluster did not start: ${(err.stderr || err.message || String(e)).trim()}` };
  }
}
