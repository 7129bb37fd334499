// One gateway suite, two engines (issue 12): the files below run as they are everywhere else (on
// SQLite, as part of `npm test`), and again here with KEYPROXY_TEST_ENGINE=postgres, which puts every
// in-process gateway's registry in a fresh PostgreSQL database (test/support/harness.ts). A file
// passes on PostgreSQL when its every test passes there; in CI none may be skipped.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { testDatabase } from "./support/postgres.ts";

/** The gateway's own tests: registry, links, registration, sessions, groups, fleet, monitoring. */
const GATEWAY_SUITE = [
  "test/gateway.test.ts",
  "test/link-server.test.ts",
  "test/registrar-answers.test.ts",
  "test/join-oracle.test.ts",
  "test/sessions.test.ts",
  "test/groups.test.ts",
  "test/group-keeper.test.ts",
  "test/crossgw.test.ts",
  "test/groups-crossgw.test.ts",
  "test/monitor.test.ts",
  "test/monitor-reads.test.ts",
];

interface Outcome {
  code: number | null;
  pass: number;
  fail: number;
  skipped: number;
  failures: string[];
  /** The end of what it printed, for a run that printed no counts. */
  output: string;
}

function withoutTestContext(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const { NODE_TEST_CONTEXT: _, ...rest } = env;
  return rest;
}

function runOnPostgres(file: string): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", "--test", "--test-reporter=tap", file], {
      // Without the runner's NODE_TEST_CONTEXT: the child is a test run of its own, reporting in TAP.
      env: { ...withoutTestContext(process.env), KEYPROXY_TEST_ENGINE: "postgres" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    child.stdout.on("data", (b) => (out += b));
    child.stderr.on("data", (b) => (out += b));
    child.on("error", reject);
    child.on("close", (code) => {
      const count = (what: string) => Number(new RegExp(`^# ${what} (\\d+)$`, "m").exec(out)?.[1] ?? NaN);
      const failures = out.split("\n").filter((l) => /^\s*not ok /.test(l) || /^\s+error: /.test(l)).slice(0, 20);
      resolve({ code, pass: count("pass"), fail: count("fail"), skipped: count("skipped"), failures, output: out.slice(-2000) });
    });
  });
}

for (const file of GATEWAY_SUITE) {
  test(`${file} passes with the registry in PostgreSQL`, { timeout: 900_000 }, async (t) => {
    // Skipped here (with the reason) only where no PostgreSQL can be had; with CI=true this fails.
    const probe = await testDatabase(t);
    if (!probe) return;
    await probe.drop();
    const r = await runOnPostgres(file);
    assert.equal(r.fail, 0, `failures on PostgreSQL:\n${r.failures.join("\n") || r.output}`);
    // In CI every service a test wants is there (.ci/run), so nothing may be skipped; elsewhere a test
    // may be skipped for a missing service (a Mosquitto), as it is on SQLite.
    if (process.env.CI === "true") assert.equal(r.skipped, 0, "no test may be skipped on PostgreSQL in CI");
    assert.ok(r.pass > 0, "the file ran its tests");
    assert.equal(r.code, 0);
  });
}
