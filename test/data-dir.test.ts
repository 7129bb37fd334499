// The data directory (issue 11, finding 6), through the CLI as an operator runs it: the registry's
// files are owner-only whatever the umask; commands that only use a registry refuse a directory that
// has none and create nothing there; one gateway per data directory (an OS lock, gone with its
// holder); one gateway per id on a broker (in-process broker always, Mosquitto when
// KEYPROXY_TEST_MQTT_URL names one).
import { onEachBroker } from "./support/brokers.ts";
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { openStore } from "../gateway/gateway.ts";
import { retainedStatus } from "../gateway/monitor/monitor.ts";
import { CLI, startGatewayProcess } from "./support/process.ts";
import { tempDir } from "./support/harness.ts";

/** Runs the CLI (under a shell umask when given); its exit code and output. */
function runCli(args: string[], umask?: string, ms = 30000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const [cmd, argv] = umask === undefined
    ? [process.execPath, [CLI, ...args]]
    : ["sh", ["-c", `umask ${umask} && exec "$0" "$@"`, process.execPath, CLI, ...args]];
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (b) => (stdout += b));
    child.stderr.on("data", (b) => (stderr += b));
    const t = setTimeout(() => { child.kill("SIGKILL"); reject(new Error(`keyproxy ${args.join(" ")} did not finish:\n${stdout}\n${stderr}`)); }, ms);
    child.once("exit", (code) => { clearTimeout(t); resolve({ code, stdout, stderr }); });
  });
}

const mode = (path: string) => (statSync(path).mode & 0o777).toString(8);

test("the registry, its -wal and -shm, are 0600 and the directory 0700, made so by the gateway and by device add, whatever the umask", async () => {
  // A gateway on a fresh directory, under the most permissive umask.
  const fresh = join(tempDir("kp-perm-"), "data");
  const gw = await new Promise<Awaited<ReturnType<typeof startGatewayProcess>>>((resolve, reject) => {
    // startGatewayProcess spawns node itself: run it with umask 000 by setting it in this process for the spawn.
    const old = process.umask(0o000);
    try {
      startGatewayProcess(fresh, 0, ["--no-mqtt"]).then(resolve, reject);
    } finally {
      process.umask(old);
    }
  });
  try {
    for (const f of ["keyproxy.db", "keyproxy.db-wal", "keyproxy.db-shm"]) {
      assert.ok(existsSync(join(fresh, f)), `${f} exists while the gateway runs`);
      assert.equal(mode(join(fresh, f)), "600", f);
    }
    assert.equal(mode(fresh), "700");
  } finally {
    assert.equal(await gw.stop(), 0);
  }

  // A directory an older gateway left world-readable: the next gateway fixes it.
  const old = tempDir("kp-perm-old-");
  await (await openStore(old)).close();
  chmodSync(old, 0o755);
  chmodSync(join(old, "keyproxy.db"), 0o644);
  const again = await startGatewayProcess(old, 0, ["--no-mqtt"]);
  try {
    for (const f of ["keyproxy.db", "keyproxy.db-wal", "keyproxy.db-shm"]) assert.equal(mode(join(old, f)), "600", f);
    assert.equal(mode(old), "700");
  } finally {
    await again.stop();
  }

  // keyproxy device add makes the registry too.
  const added = join(tempDir("kp-perm-add-"), "data");
  const out = join(tempDir("kp-perm-out-"), "dev.kp.json");
  const r = await runCli(["device", "add", "--id", "dev-1", "--out", out, "--data-dir", added], "000");
  assert.equal(r.code, 0, r.stderr);
  assert.equal(mode(join(added, "keyproxy.db")), "600");
  assert.equal(mode(added), "700");
  assert.equal(mode(out), "600");
});

test("read-only commands on a directory without a registry fail clearly (exit 2) and create nothing", async () => {
  const root = tempDir("kp-noreg-");
  const typo = join(root, "keyproxy-dta");
  const empty = join(root, "empty");
  mkdirSync(empty, { mode: 0o755 });
  chmodSync(empty, 0o755);
  const notRegistry = join(root, "other");
  mkdirSync(notRegistry, { mode: 0o755 });
  chmodSync(notRegistry, 0o755);
  writeFileSync(join(notRegistry, "keyproxy.db"), "not a database, whatever it is\n", { mode: 0o644 });
  const commands = [["device", "list"], ["policy", "list"], ["device", "remove", "--id", "dev-1"]];
  for (const [dir, why] of [[typo, "no such directory"], [empty, "it holds no keyproxy.db"], [notRegistry, "its keyproxy.db is not a keyproxy registry"]]) {
    for (const c of commands) {
      const r = await runCli([...c, "--data-dir", dir]);
      assert.equal(r.code, 2, `${c.join(" ")} on ${dir}: ${r.stdout}${r.stderr}`);
      assert.ok(r.stderr.includes(`no registry at ${dir}: ${why}; run \`keyproxy gateway --data-dir ${dir}\``), r.stderr);
      assert.ok(r.stderr.includes("keyproxy provision"), r.stderr);
    }
  }
  assert.ok(!existsSync(typo), "the mistyped directory was not created");
  assert.deepEqual(readdirSync(empty), [], "nothing made in an empty directory");
  assert.equal(mode(empty), "755", "nor its mode changed");
  assert.deepEqual(readdirSync(notRegistry), ["keyproxy.db"]);
  assert.equal(readFileSync(join(notRegistry, "keyproxy.db"), "utf8"), "not a database, whatever it is\n");
  assert.equal(mode(notRegistry), "755");
  assert.equal(mode(join(notRegistry, "keyproxy.db")), "644");
});

test("one gateway per data directory: a second is refused with the fix; read-only commands still work; the lock dies with its holder", async () => {
  const dir = tempDir("kp-lock-");
  const first = await startGatewayProcess(dir, 0, ["--no-mqtt"]);
  try {
    const second = await runCli(["gateway", "--data-dir", dir, "--listen", "127.0.0.1:0", "--no-mqtt"]);
    assert.equal(second.code, 1, second.stderr);
    assert.match(second.stderr, /another keyproxy gateway is running on the data directory .*: stop it first, or give this gateway a data directory of its own \(--data-dir\)/);
    assert.ok(!second.stderr.includes('"event":"gateway-started"'));
    const list = await runCli(["device", "list", "--data-dir", dir]);
    assert.equal(list.code, 0, list.stderr);
    assert.match(list.stdout, /no devices in/);
    const policy = await runCli(["policy", "list", "--data-dir", dir]);
    assert.equal(policy.code, 0, policy.stderr);
  } finally {
    // Killed, not stopped: the lock must not outlive a crashed gateway.
    await first.stop("SIGKILL");
  }
  const next = await startGatewayProcess(dir, 0, ["--no-mqtt"]);
  assert.equal(await next.stop(), 0);
});

// ---- one gateway per id on a broker ----------------------------------------------------------------

async function duplicateId(url: string): Promise<void> {
  const id = `dup-${randomBytes(3).toString("hex")}.example`;
  const first = await startGatewayProcess(tempDir("kp-dup-a-"), 0, ["--mqtt", url, "--id", id, "--no-fleet"]);
  let retry: Awaited<ReturnType<typeof startGatewayProcess>> | undefined;
  try {
    let status: Awaited<ReturnType<typeof retainedStatus>>;
    // Polled through the broker: the first gateway publishes its status once its client has connected.
    for (let i = 0; ; i++) {
      status = await retainedStatus(url, id);
      if (typeof status === "object" && status.state === "online") break;
      if (i > 20) assert.fail(`the first gateway's status never came online: ${JSON.stringify(status)}`);
    }
    const run = (status as { run: string }).run;
    const secondDir = tempDir("kp-dup-b-");
    const second = await runCli(["gateway", "--data-dir", secondDir, "--listen", "127.0.0.1:0", "--mqtt", url, "--id", id, "--no-fleet"]);
    assert.equal(second.code, 1, second.stderr);
    assert.match(second.stderr, new RegExp(`another gateway with the id "${id.replace(/\./g, "\\.")}" is online on the MQTT broker .*: give this gateway an id of its own \\(--id <domain>\\), or stop the other one first`));
    const after = await retainedStatus(url, id);
    assert.deepEqual([typeof after === "object" && after.state, typeof after === "object" && after.run], ["online", run], "the first gateway's status is untouched");
    // Once the first has stopped (status offline), the same id is free.
    assert.equal(await first.stop(), 0);
    retry = await startGatewayProcess(secondDir, 0, ["--mqtt", url, "--id", id, "--no-fleet"]);
  } finally {
    await first.stop();
    await retry?.stop();
  }
}

onEachBroker("one gateway per id on a broker (in-process broker): a second is refused with the fix and clobbers nothing", "one gateway per id on Mosquitto (KEYPROXY_TEST_MQTT_URL): the same", duplicateId);
