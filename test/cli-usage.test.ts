// The command line's manners (issue 13, scope 2), through the real CLI as an operator runs it:
// --version; every usage error exits 2 and says where help is; every --help fits 80 columns, and
// fleet's lists its subcommands one line each; an allow rule for every application is pointed out.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { COMMAND_NAMES } from "../cli/main.ts";
import { runCli } from "./support/run-cli.ts";
import { tempDir } from "./support/harness.ts";

const VERSION = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")).version;

test("keyproxy --version and keyproxy version print the package's version, exit 0", async () => {
  for (const arg of ["--version", "version"]) {
    const r = await runCli([arg]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `keyproxy ${VERSION}\n`);
  }
});

/** For each command, a command line missing something it needs (a required option, an option's
 *  value, a subcommand) or giving a value no command could take. Every command must be here. */
const MISSING: Record<string, string[][]> = {
  build: [["build", "--board"]],
  gateway: [["gateway", "--listen"], ["gateway", "--no-mqtt", "--min-lifetime", "100", "--max-lifetime", "50"]],
  device: [["device"], ["device", "add", "--out", "dev.json"], ["device", "remove"], ["device", "add", "--id", "d1", "--out", "dev.json", "--board", "no-such-board"]],
  sim: [["sim", "--count"], ["sim", "--board", "no-such-board", "--data-dir", "REGISTRY"]],
  flash: [["flash", "--board", "puckjs"], ["flash", "--port", "/dev/null", "--board", "puckjs", "--answer-timeout", "soon"]],
  provision: [["provision", "--id", "d1"], ["provision", "--port", "/dev/null", "--id", "d1", "--answer-timeout", "0"], ["provision", "--port", "/dev/null", "--id", "d1", "--lifetime", "0"], ["provision", "--port", "/dev/null", "--id", "d1", "--board", "esp32", "--ble-repl"]],
  ports: [["ports", "extra"]],
  monitor: [["monitor", "--for"], ["monitor", "--mqtt", "not-a-url"]],
  console: [["console", "--http"], ["console", "--http", "0.0.0.0:0"], ["console", "--mqtt", "not-a-url"]],
  fleet: [["fleet"], ["fleet", "create"], ["fleet", "revoke-device"]],
  verifier: [["verifier", "--id", "v.example"]],
  policy: [["policy"], ["policy", "allow", "--from", "a"], ["policy", "default"]],
  db: [["db"], ["db", "copy"], ["db", "copy", "--to", "not-a-url"], ["db", "migrate", "--db", "registry.sqlite"], ["db", "vacuum"]],
  group: [["group"], ["group", "create", "--group", "g"], ["group", "add", "--group", "g", "--data-dir", "REGISTRY"], ["group", "create", "--group", "bad name", "--app", "a", "--data-dir", "REGISTRY"]],
  "ble-bridge": [["ble-bridge"], ["ble-bridge", "--gateway", "h:1"], ["ble-bridge", "--gateway", "h:1", "--bridge-key-file", "/nonexistent/bridge.key"]],
};

/** A data directory holding a registry, for the cases that need one to get as far as their mistake. */
async function registry(): Promise<string> {
  const dir = tempDir("kp-usage-reg-");
  const r = await runCli(["policy", "default", "deny", "--data-dir", dir]);
  assert.equal(r.code, 0, r.stderr);
  return dir;
}

test("usage errors exit 2 on every command and say how to get help: an unknown flag, a missing argument", async () => {
  const reg = await registry();
  const failures: string[] = [];
  const check = async (name: string, args: string[]) => {
    const r = await runCli(args.map((a) => (a === "REGISTRY" ? reg : a)));
    const help = new RegExp(`keyproxy ${name} --help`);
    if (r.code !== 2 || !help.test(r.stderr)) failures.push(`keyproxy ${args.join(" ")}: exit ${r.code}, stderr ${JSON.stringify(r.stderr.slice(0, 300))}`);
  };
  for (const name of COMMAND_NAMES) {
    assert.ok(MISSING[name], `no usage-error case for the command "${name}": add one to MISSING`);
    await check(name, [name, "--no-such-flag"]);
    for (const args of MISSING[name]) await check(name, args);
  }
  for (const sub of [["device", "list"], ["policy", "list"], ["fleet", "show"]]) await check(sub[0], [...sub, "--no-such-flag"]);
  assert.deepEqual(failures, []);
});

test("keyproxy with no command, or an unknown one, is a usage error: exit 2, the usage on stderr", async () => {
  for (const args of [[], ["no-such-command"]]) {
    const r = await runCli(args);
    assert.equal(r.code, 2);
    assert.equal(r.stdout, "");
    assert.match(r.stderr, /Run "keyproxy <command> --help"/);
  }
});

const WIDTH = 80;

async function helpLines(args: string[]): Promise<string[]> {
  const r = await runCli([...args, "--help"]);
  assert.equal(r.code, 0, `${args.join(" ")} --help: ${r.stderr}`);
  assert.ok(r.stdout.trim().length > 0, `${args.join(" ")} --help printed nothing`);
  return r.stdout.replace(/\n$/, "").split("\n");
}

function tooWide(lines: string[]): string[] {
  return lines.filter((l) => l.length > WIDTH);
}

test(`keyproxy --help fits ${WIDTH} columns`, async () => {
  assert.deepEqual(tooWide(await helpLines([])), []);
});

for (const name of COMMAND_NAMES) {
  test(`keyproxy ${name} --help fits ${WIDTH} columns`, async () => {
    assert.deepEqual(tooWide(await helpLines([name])), []);
  });
}

const FLEET_SUBCOMMANDS = ["create", "show", "issue-gateway", "revoke-gateway", "revoke-device", "refresh", "publish"];

test(`every keyproxy fleet <subcommand> --help fits ${WIDTH} columns`, async () => {
  for (const sub of FLEET_SUBCOMMANDS) assert.deepEqual(tooWide(await helpLines(["fleet", sub])), [], sub);
});

test("keyproxy fleet --help: every subcommand on one line of its own, under a group, descriptions aligned", async () => {
  const lines = await helpLines(["fleet"]);
  const columns = new Set<number>();
  for (const sub of FLEET_SUBCOMMANDS) {
    const rows = lines.map((l, i) => ({ l, i })).filter(({ l }) => new RegExp(`^  ${sub} +\\S`).test(l));
    assert.equal(rows.length, 1, `one line for ${sub}`);
    const { l, i } = rows[0];
    columns.add(l.length - l.slice(2 + sub.length).trimStart().length);
    // The next line is another subcommand, a blank line or a group heading: no wrapped continuation.
    assert.ok(!/^ {4,}\S/.test(lines[i + 1] ?? ""), `${sub}'s description is one line: ${JSON.stringify(lines[i + 1])}`);
    // Its group heading: the nearest line above that is not indented.
    const heading = lines.slice(0, i).reverse().find((h) => h.length > 0 && !h.startsWith(" "));
    assert.match(heading ?? "", /:$/, `${sub} is under a group heading`);
  }
  assert.equal(columns.size, 1, "the descriptions start in one column");
});

test("policy allow without --app warns on stderr that the rule allows every application and how to narrow it; exit 0", async () => {
  const dir = tempDir("kp-policy-warn-");
  const wide = await runCli(["policy", "allow", "--from", "alice", "--to", "bob", "--data-dir", dir]);
  assert.equal(wide.code, 0, wide.stderr);
  assert.match(wide.stdout, /^rule \d+: allow alice -> bob app \*$/m);
  assert.match(wide.stderr, /allows every application from alice to bob/);
  assert.match(wide.stderr, /--app <name>/);
  // Narrowed, or a deny: nothing to warn about.
  for (const args of [["allow", "--from", "alice", "--to", "bob", "--app", "chat"], ["deny", "--from", "alice", "--to", "bob"]]) {
    const r = await runCli(["policy", ...args, "--data-dir", dir]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, "", args.join(" "));
  }
  const list = await runCli(["policy", "list", "--data-dir", join(dir)]);
  assert.equal(list.stdout.match(/ allow /g)?.length, 2);
});
