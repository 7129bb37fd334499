// The throwaway PostgreSQL cluster the tests and the benchmarks share (test/support/postgres-cluster.ts):
// its durability is the caller's (the benchmarks must measure durable commits, the tests need none), it
// is gone when its process exits or is cut short by SIGTERM, and one whose process was killed outright
// is reaped by the next start. The clusters here are started in child processes where the test is
// about the process's end, and in this one otherwise.

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { CLUSTER_PREFIX, OWNER_PID, postgresBin, reapOrphans, serverOptions, throwawayCluster, withAdmin } from "./support/postgres-cluster.ts";
import { tempDir } from "./support/harness.ts";

const CLUSTER_MODULE = join(dirname(fileURLToPath(import.meta.url)), "support", "postgres-cluster.ts");

/** Whether PostgreSQL is installed to start a cluster with; with CI=true its absence is a failure. */
function clusterPossible(t: { skip(reason: string): void }): boolean {
  if (postgresBin()) return true;
  const reason = "no /usr/lib/postgresql/*/bin/initdb here to start a throwaway cluster with";
  if (process.env.CI === "true") throw new Error(`CI=true and ${reason}`);
  t.skip(reason);
  return false;
}

/** The pid of a process that has ended. */
function deadPid(): number {
  const child = spawnSync(process.execPath, ["-e", ""]);
  assert.ok(child.pid);
  return child.pid;
}

/** Whether something accepts connections on the loopback port. */
function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    socket.once("connect", () => (socket.destroy(), resolve(true)));
    socket.once("error", () => resolve(false));
  });
}

test("the server options: without fsync, fsync and full_page_writes are off; with it, the server's defaults stand", () => {
  const off = serverOptions(5432, "/tmp/s", false);
  assert.match(off, /-c fsync=off/);
  assert.match(off, /-c full_page_writes=off/);
  const on = serverOptions(5432, "/tmp/s", true);
  assert.doesNotMatch(on, /fsync|full_page_writes/);
  for (const o of [off, on]) assert.match(o, /^-p 5432 -k \/tmp\/s -c listen_addresses=127\.0\.0\.1/, "loopback only, the socket in the cluster's directory");
});

test("the reaper deletes the cluster directories of dead processes only, and leaves one still being set up", () => {
  const root = tempDir("kp-reap-");
  try {
    const dir = (name: string, ownerPid?: number) => {
      mkdirSync(join(root, name));
      if (ownerPid !== undefined) writeFileSync(join(root, name, OWNER_PID), String(ownerPid));
      return join(root, name);
    };
    const orphan = dir(`${CLUSTER_PREFIX}orphan`, deadPid());
    const ours = dir(`${CLUSTER_PREFIX}ours`, process.pid);
    const settingUp = dir(`${CLUSTER_PREFIX}setting-up`);
    const notACluster = dir("kp-something-else", deadPid());
    // No server runs in these directories: pg_ctl (here, not even installed) fails quietly, and the
    // directory goes all the same.
    reapOrphans(join(root, "no-bin"), root);
    assert.equal(existsSync(orphan), false, "a dead process's cluster is gone");
    assert.equal(existsSync(ours), true, "a live process's cluster stays");
    assert.equal(existsSync(settingUp), true, "a cluster without its owner's pid yet is being set up");
    assert.equal(existsSync(notACluster), true, "what is not a cluster of ours is not touched");
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test("the durability is the caller's: fsync on for the benchmarks, off for the tests, one cluster each per process", async (t) => {
  if (!clusterPossible(t)) return;
  const show = (url: string) => withAdmin(url, async (c) => (await c.query<{ fsync: string; fpw: string }>("SELECT current_setting('fsync') AS fsync, current_setting('full_page_writes') AS fpw")).rows[0]);
  const durable = await throwawayCluster({ fsync: true });
  const quick = await throwawayCluster({ fsync: false });
  assert.notEqual(durable, quick);
  assert.deepEqual(await show(durable), { fsync: "on", fpw: "on" });
  assert.deepEqual(await show(quick), { fsync: "off", fpw: "off" });
  assert.equal(await throwawayCluster({ fsync: true }), durable, "started once per process");
});

/** A child process that starts a throwaway cluster, prints its port and directory, and then exits
 *  (end "exit") or waits to be killed (end "wait"). */
function clusterChild(end: "exit" | "wait") {
  const code = `
    import { throwawayCluster, withAdmin } from ${JSON.stringify(CLUSTER_MODULE)};
    const url = await throwawayCluster({ fsync: false });
    const data = await withAdmin(url, async (c) => (await c.query("SHOW data_directory")).rows[0].data_directory);
    console.log(JSON.stringify({ port: Number(new URL(url).port), dir: data.replace(/\\/data$/, "") }));
    ${end === "wait" ? "setInterval(() => {}, 1000);" : ""}
  `;
  const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", code], { stdio: ["ignore", "pipe", "inherit"] });
  const started = new Promise<{ port: number; dir: string }>((resolve, reject) => {
    let out = "";
    child.stdout.on("data", (b: Buffer) => {
      out += b.toString();
      if (out.includes("\n")) resolve(JSON.parse(out.slice(0, out.indexOf("\n"))) as { port: number; dir: string });
    });
    child.once("exit", (code, signal) => reject(new Error(`the child ended (${code ?? signal}) before its cluster started`)));
  });
  const ended = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  return { child, started, ended };
}

for (const end of ["exit", "SIGTERM"] as const) {
  test(`a process's cluster is stopped and deleted when the process ends (${end})`, async (t) => {
    if (!clusterPossible(t)) return;
    const c = clusterChild(end === "exit" ? "exit" : "wait");
    t.after(() => c.child.kill("SIGKILL"));
    const { port, dir } = await c.started;
    assert.ok(dir.includes(CLUSTER_PREFIX), dir);
    if (end === "SIGTERM") {
      assert.equal(await accepts(port), true, "the server runs while its process does");
      c.child.kill("SIGTERM");
    }
    await c.ended;
    assert.equal(existsSync(dir), false, "its directory is gone");
    assert.equal(await accepts(port), false, "its server is gone");
  });
}

test("a cluster whose process was killed outright (SIGKILL) is stopped and deleted when the next one starts", async (t) => {
  if (!clusterPossible(t)) return;
  const killed = clusterChild("wait");
  t.after(() => killed.child.kill("SIGKILL"));
  const { port, dir } = await killed.started;
  killed.child.kill("SIGKILL");
  await killed.ended;
  assert.equal(existsSync(dir), true, "no exit handler ran");
  assert.equal(await accepts(port), true, "and the server still runs");
  const next = clusterChild("exit");
  t.after(() => next.child.kill("SIGKILL"));
  await next.started;
  assert.equal(existsSync(dir), false, "the next start deleted its directory");
  assert.equal(await accepts(port), false, "and stopped its server");
  await next.ended;
});
