// Secrets written into a git work tree (issue 13): every command that writes key material to a file
// warns on stderr, once, when that file or directory is inside a work tree and not ignored there,
// naming the path and the fix; it never refuses and its exit code does not change. No warning when
// the path is ignored, outside any work tree, or when there is no git on the machine.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { runCli } from "./support/run-cli.ts";
import { startGatewayProcess } from "./support/process.ts";
import { EmulatedDevice } from "../emulator/device.ts";
import { attachPty } from "../emulator/serial.ts";
import { tempDir, until } from "./support/harness.ts";

const FIX = "add it to .gitignore or write it outside the repository";

/** A fresh git work tree (its own repository, whatever surrounds the temporary directory). */
function repo(gitignore?: string): string {
  const dir = tempDir("kp-git-");
  execFileSync("git", ["init", "-q", dir]);
  if (gitignore !== undefined) writeFileSync(join(dir, ".gitignore"), gitignore);
  return dir;
}

/** The warnings in stderr that name path. */
function warningsAbout(stderr: string, path: string): string[] {
  return stderr.split("\n").filter((l) => l.includes("warning") && l.includes(path));
}

test("fleet create inside a work tree: one warning naming the CA key and the fix; exit 0, the fleet made", async () => {
  const dir = repo();
  const fleetDir = join(dir, "fleet");
  const r = await runCli(["fleet", "create", "--id", "acme", "--fleet-dir", fleetDir]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /created fleet "acme"/);
  const w = warningsAbout(r.stderr, join(fleetDir, "ca.key"));
  assert.equal(w.length, 1, r.stderr);
  assert.ok(w[0].includes(FIX) && w[0].includes("fleet CA key"), w[0]);
});

test("no warning when the path is ignored, outside any work tree, or when git is not installed", async () => {
  const ignored = repo("fleet/\n");
  let r = await runCli(["fleet", "create", "--id", "acme", "--fleet-dir", join(ignored, "fleet")]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr, "");

  const outside = tempDir("kp-nogit-");
  assert.throws(() => execFileSync("git", ["-C", outside, "rev-parse", "--show-toplevel"], { stdio: "ignore" }), "the temporary directory is in no work tree");
  r = await runCli(["fleet", "create", "--id", "acme", "--fleet-dir", join(outside, "fleet")]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr, "");

  // A work tree, but no git to ask: nothing to warn with, and nothing fails.
  const noGit = repo();
  r = await runCli(["fleet", "create", "--id", "acme", "--fleet-dir", join(noGit, "fleet")], { env: { PATH: tempDir("kp-empty-path-") } });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr, "");
});

test("device add inside a work tree: the provisioning file, and the data directory it created; later only the file", async () => {
  const dir = repo();
  const dataDir = join(dir, "data");
  let r = await runCli(["device", "add", "--id", "d1", "--out", join(dir, "d1.json"), "--data-dir", dataDir]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(warningsAbout(r.stderr, join(dir, "d1.json")).length, 1, r.stderr);
  assert.equal(warningsAbout(r.stderr, dataDir).filter((l) => !l.includes("d1.json")).length, 1, r.stderr);
  assert.ok(r.stderr.includes(FIX));

  // The data directory is there now: whoever made it was warned. The new file still is one.
  r = await runCli(["device", "add", "--id", "d2", "--out", join(dir, "d2.json"), "--data-dir", dataDir]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(warningsAbout(r.stderr, join(dir, "d2.json")).length, 1, r.stderr);
  assert.equal(r.stderr.split("\n").filter(Boolean).length, 1, r.stderr);

  // A provisioning file inside the data directory the same command creates: the directory is named, once.
  const fresh = join(dir, "fresh-data");
  r = await runCli(["device", "add", "--id", "d4", "--out", join(fresh, "d4.json"), "--data-dir", fresh]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr.split("\n").filter(Boolean).length, 1, r.stderr);
  assert.equal(warningsAbout(r.stderr, fresh).length, 1, r.stderr);

  const ignoredFiles = repo("*.kp.json\n");
  r = await runCli(["device", "add", "--id", "d3", "--out", join(ignoredFiles, "d3.kp.json"), "--data-dir", join(tempDir("kp-nogit-"), "data")]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr, "", "an ignored provisioning file, a data directory outside any work tree");
});

test("a data directory that a command creates inside a work tree: fleet issue-gateway, policy, gateway", async () => {
  const dir = repo();
  const fleetDir = join(tempDir("kp-nogit-"), "fleet");
  assert.equal((await runCli(["fleet", "create", "--id", "acme", "--fleet-dir", fleetDir])).code, 0);

  const issued = join(dir, "north");
  let r = await runCli(["fleet", "issue-gateway", "--id", "north.example", "--fleet-dir", fleetDir, "--data-dir", issued]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(warningsAbout(r.stderr, issued).length, 1, r.stderr);
  assert.ok(r.stderr.includes(FIX));

  const policyDir = join(dir, "policy-data");
  r = await runCli(["policy", "default", "deny", "--data-dir", policyDir]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(warningsAbout(r.stderr, policyDir).length, 1, r.stderr);
  // The same directory again: it existed before this command, no warning.
  r = await runCli(["policy", "default", "allow", "--data-dir", policyDir]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr, "");

  const gwDir = join(dir, "gw-data");
  const gw = await startGatewayProcess(gwDir, 0, ["--no-mqtt"]);
  try {
    await until(() => gw.lines.some((l) => l.includes("warning") && l.includes(gwDir)), "the gateway's warning about its new data directory", 20_000);
    assert.ok(gw.lines.some((l) => l.includes(FIX)));
  } finally {
    await gw.stop();
  }
  // Ignored: the gateway says nothing about it.
  const quiet = repo("gw-data/\n");
  const gw2 = await startGatewayProcess(join(quiet, "gw-data"), 0, ["--no-mqtt"]);
  await gw2.stop();
  assert.ok(!gw2.lines.some((l) => l.includes("warning")), gw2.lines.join("\n"));
});

test("provision inside a work tree: the registry it creates there is named once", async () => {
  const dev = new EmulatedDevice({ board: "emulator", storageDir: tempDir("kp-git-prov-"), name: "git-prov" });
  const pty = await attachPty(dev);
  try {
    const dir = repo();
    const dataDir = join(dir, "registry");
    const r = await runCli(["provision", "--port", pty.path, "--board", "emulator", "--id", "p1", "--data-dir", dataDir, "--gateway", "127.0.0.1:7447", "--no-reboot"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(warningsAbout(r.stderr, dataDir).length, 1, r.stderr);
    assert.ok(r.stderr.includes(FIX), r.stderr);
  } finally {
    await pty.close();
    dev.powerOff();
  }
});
