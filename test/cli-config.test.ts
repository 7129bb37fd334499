// Settings from a config file and the environment (issue 13, scope 2; cli/config.ts), through the real
// CLI: flag > KEYPROXY_<FLAG> > --config file > <data-dir>/keyproxy.json > default; the data directory
// found first; bad input named by file and key, exit 2, nothing changed; no value quoted that could
// hold a password.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { runCli } from "./support/run-cli.ts";
import { tempDir } from "./support/harness.ts";

function writeJson(path: string, value: unknown): string {
  writeFileSync(path, typeof value === "string" ? value : JSON.stringify(value));
  return path;
}

/** `device add` and the gateway address it wrote into the provisioning file: --gateway as resolved. */
async function addedGateway(args: string[], env: Record<string, string> = {}, cwd?: string): Promise<{ gw: string; out: string }> {
  const out = join(tempDir("kp-cfg-out-"), "dev.kp.json");
  const r = await runCli(["device", "add", "--id", "d1", "--out", out, ...args], { env, cwd });
  assert.equal(r.code, 0, r.stderr);
  return { gw: JSON.parse(readFileSync(out, "utf8")).gw, out };
}

test("precedence: flag > KEYPROXY_<FLAG> > --config file > the data directory's keyproxy.json > default", async () => {
  const fresh = () => join(tempDir("kp-cfg-prec-"), "data");
  const withDirFile = () => {
    const d = tempDir("kp-cfg-prec-dir-");
    writeJson(join(d, "keyproxy.json"), { gateway: "dir.example:1" });
    return d;
  };
  const config = writeJson(join(tempDir("kp-cfg-file-"), "kp.json"), { gateway: "config.example:2" });
  const env = { KEYPROXY_GATEWAY: "env.example:3" };

  assert.equal((await addedGateway(["--data-dir", fresh()])).gw, "127.0.0.1:7447", "default");
  assert.equal((await addedGateway(["--data-dir", withDirFile()])).gw, "dir.example:1", "data directory's keyproxy.json");
  assert.equal((await addedGateway(["--data-dir", withDirFile(), "--config", config])).gw, "config.example:2", "--config beats keyproxy.json");
  assert.equal((await addedGateway(["--data-dir", withDirFile()], { KEYPROXY_CONFIG: config })).gw, "config.example:2", "KEYPROXY_CONFIG names the file");
  assert.equal((await addedGateway(["--data-dir", withDirFile(), "--config", config], env)).gw, "env.example:3", "environment beats files");
  assert.equal((await addedGateway(["--data-dir", withDirFile(), "--config", config, "--gateway", "flag.example:4"], env)).gw, "flag.example:4", "flag beats all");
});

test("the data directory comes from flag > environment > --config, and its keyproxy.json is read from there", async () => {
  const root = tempDir("kp-cfg-dd-");
  const [fromConfig, fromEnv, fromFlag] = ["c", "e", "f"].map((n) => {
    mkdirSync(join(root, n));
    writeJson(join(root, n, "keyproxy.json"), { gateway: `${n}.example:7447` });
    return join(root, n);
  });
  const config = writeJson(join(root, "kp.json"), { "data-dir": fromConfig });
  assert.equal((await addedGateway(["--config", config])).gw, "c.example:7447");
  assert.ok(existsSync(join(fromConfig, "keyproxy.db")), "the registry is where the config file says");
  assert.equal((await addedGateway(["--config", config], { KEYPROXY_DATA_DIR: fromEnv })).gw, "e.example:7447");
  assert.equal((await addedGateway(["--config", config, "--data-dir", fromFlag], { KEYPROXY_DATA_DIR: fromEnv })).gw, "f.example:7447");

  // The default data directory, ./keyproxy-data, has its keyproxy.json read too.
  const cwd = tempDir("kp-cfg-cwd-");
  mkdirSync(join(cwd, "keyproxy-data"));
  writeJson(join(cwd, "keyproxy-data", "keyproxy.json"), { gateway: "default-dir.example:7447" });
  assert.equal((await addedGateway([], {}, cwd)).gw, "default-dir.example:7447");
});

/** Runs a command that would change the registry with a bad setting: exit 2, a message naming
 *  `names`, nothing quoted from `secret`, and nothing made in the data directory. */
async function refused(args: string[], names: (string | RegExp)[], env: Record<string, string> = {}, secret = "s3cret"): Promise<void> {
  const dir = join(tempDir("kp-cfg-bad-"), "data");
  const r = await runCli(["policy", "default", "deny", "--data-dir", dir, ...args], { env });
  assert.equal(r.code, 2, `${args.join(" ")}: ${r.stdout}${r.stderr}`);
  for (const n of names) assert.ok(typeof n === "string" ? r.stderr.includes(n) : n.test(r.stderr), `"${n}" in ${r.stderr}`);
  assert.match(r.stderr, /see "keyproxy policy --help"/);
  assert.ok(!r.stderr.includes(secret), `no value quoted: ${r.stderr}`);
  assert.ok(!existsSync(dir), "nothing made");
}

test("a bad --config file is a usage error naming the file and the key, and changes nothing", async () => {
  const d = tempDir("kp-cfg-bad-files-");
  const file = (name: string, text: string) => writeJson(join(d, name), text);
  await refused(["--config", join(d, "missing.json")], [join(d, "missing.json"), "no such file"]);
  await refused(["--config", d], [d, "it is a directory"]);
  await refused(["--config", file("broken.json", '{"listen": "s3cret"')], [join(d, "broken.json"), "is not JSON"]);
  // The parser's own message would quote the text around the mistake.
  await refused(["--config", file("token.json", '{\n  "listen": s3cret}')], [join(d, "token.json"), "is not JSON"]);
  await refused(["--config", file("array.json", '["s3cret"]')], [join(d, "array.json"), "must hold a JSON object"]);
  await refused(["--config", file("unknown.json", '{"lisen": "s3cret"}')], [join(d, "unknown.json"), 'unknown key "lisen"']);
  await refused(["--config", file("type.json", '{"mqtt": {"password": "s3cret"}}')], [join(d, "type.json"), '"mqtt" wants a string']);
  await refused(["--config", file("bool.json", '{"no-mqtt": "s3cret"}')], [join(d, "bool.json"), '"no-mqtt" wants true or false']);
  // What a command acts on is typed each time, never taken from a file.
  await refused(["--config", file("id.json", '{"id": "s3cret"}')], [join(d, "id.json"), 'unknown key "id"']);
  await refused([], [join(d, "gone.json"), "no such file"], { KEYPROXY_CONFIG: join(d, "gone.json") });
});

test("a bad keyproxy.json in the data directory is refused the same way; a missing one is fine", async () => {
  const dir = tempDir("kp-cfg-bad-dir-");
  writeJson(join(dir, "keyproxy.json"), { listen: 7447, "no-fleet": 1 });
  const r = await runCli(["policy", "default", "deny", "--data-dir", dir]);
  assert.equal(r.code, 2, r.stderr);
  assert.ok(r.stderr.includes(join(dir, "keyproxy.json")) && r.stderr.includes('"no-fleet" wants true or false'), r.stderr);
  assert.deepEqual(readdirSync(dir), ["keyproxy.json"], "no registry made");

  writeJson(join(dir, "keyproxy.json"), { "data-dir": "/elsewhere" });
  const moved = await runCli(["policy", "default", "deny", "--data-dir", dir]);
  assert.equal(moved.code, 2);
  assert.match(moved.stderr, /"data-dir" cannot be set in the data directory's own config file/);
});

test("a bad KEYPROXY_ boolean names the variable, exit 2; other KEYPROXY_ variables are not ours and are left alone", async () => {
  const r = await runCli(["gateway", "--data-dir", tempDir("kp-cfg-env-")], { env: { KEYPROXY_NO_MQTT: "s3cret" } });
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /KEYPROXY_NO_MQTT wants 1 or 0/);
  assert.ok(!r.stderr.includes("s3cret"));
  const dir = tempDir("kp-cfg-env-other-");
  const ok = await runCli(["policy", "default", "deny", "--data-dir", dir], { env: { KEYPROXY_TEST_SOMETHING: "x", KEYPROXY_ID: "not-a-setting" } });
  assert.equal(ok.code, 0, ok.stderr);
});

test("a bad value from a file or the environment is traced to it in the message", async () => {
  const config = writeJson(join(tempDir("kp-cfg-origin-"), "kp.json"), { metrics: 0 });
  const r = await runCli(["gateway", "--data-dir", tempDir("kp-cfg-origin-dd-"), "--no-mqtt", "--config", config]);
  assert.equal(r.code, 2, r.stderr);
  assert.ok(r.stderr.includes(`--metrics wants a positive whole number, got "0" (--metrics came from ${config})`), r.stderr);
  const e = await runCli(["gateway", "--data-dir", tempDir("kp-cfg-origin-dd-"), "--no-mqtt"], { env: { KEYPROXY_METRICS: "x" } });
  assert.match(e.stderr, /--metrics came from KEYPROXY_METRICS/);
});

test("a flag overrides a file's choice among --mqtt, --mqtt-listen and --no-mqtt instead of clashing with it", async () => {
  const config = writeJson(join(tempDir("kp-cfg-excl-"), "kp.json"), { "no-mqtt": true });
  // --metrics 0 is checked just after the clash would be: its error shows the clash did not happen.
  const r = await runCli(["gateway", "--data-dir", tempDir("kp-cfg-excl-dd-"), "--config", config, "--mqtt-listen", "127.0.0.1:0", "--metrics", "0"]);
  assert.equal(r.code, 2, r.stderr);
  assert.doesNotMatch(r.stderr, /exclude each other/);
  assert.match(r.stderr, /--metrics wants a positive whole number/);
});

test("a broker URL from a config file is never printed with its password", async () => {
  const d = tempDir("kp-cfg-secret-");
  // Malformed: the usage error quotes it without the part before "@".
  const bad = writeJson(join(d, "bad.json"), { mqtt: "user:s3cret@broker.example" });
  const fleetDir = join(d, "fleet");
  assert.equal((await runCli(["fleet", "create", "--id", "f.example", "--fleet-dir", fleetDir])).code, 0);
  const r = await runCli(["fleet", "publish", "--fleet-dir", fleetDir, "--config", bad]);
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /--mqtt wants a broker URL/);
  assert.ok(!r.stderr.includes("s3cret"), r.stderr);
  // Well formed, and unreachable: the monitor's error names the broker, redacted.
  const good = writeJson(join(d, "good.json"), { mqtt: "mqtt://user:s3cret@127.0.0.1:9" });
  const m = await runCli(["monitor", "--once", "--config", good]);
  assert.equal(m.code, 1, m.stderr);
  assert.match(m.stderr, /cannot reach the MQTT broker at mqtt:\/\/127\.0\.0\.1:9/);
  assert.ok(!(m.stdout + m.stderr).includes("s3cret"));
});

test("fleet takes only its own settings: KEYPROXY_DATA_DIR does not turn issue-gateway into an install, KEYPROXY_MQTT does not break show", async () => {
  const d = tempDir("kp-cfg-fleet-");
  const fleetDir = join(d, "fleet");
  const env = { KEYPROXY_DATA_DIR: join(d, "gw"), KEYPROXY_MQTT: "mqtt://127.0.0.1:9", KEYPROXY_FLEET_DIR: fleetDir };
  assert.equal((await runCli(["fleet", "create", "--id", "f.example"], { env })).code, 0);
  const out = join(d, "gw.cert");
  const r = await runCli(["fleet", "issue-gateway", "--id", "gw.example", "--signing-key", "11".repeat(32), "--encryption-key", "22".repeat(32), "--out", out], { env });
  assert.equal(r.code, 0, r.stderr);
  assert.ok(existsSync(out) && !existsSync(join(d, "gw")));
  const show = await runCli(["fleet", "show"], { env });
  assert.equal(show.code, 0, show.stderr);
  assert.match(show.stdout, /^fleet "f\.example"/);
});
