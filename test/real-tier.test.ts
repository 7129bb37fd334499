// The real-interpreter tier says so when it cannot run: without an interpreter its tests are reported
// as skipped with the reason and how to get one, and with CI=true they fail.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";

const JOIN_TEST = fileURLToPath(new URL("./real-join.test.ts", import.meta.url));

function run(env: Record<string, string>) {
  const e: NodeJS.ProcessEnv = { ...process.env, KEYPROXY_ESPRUINO: "/nonexistent/keyproxy-no-interpreter", ...env };
  delete e.NODE_TEST_CONTEXT; // run as a test file of its own, not as part of this one
  if (env.CI === undefined) delete e.CI;
  return spawnSync(process.execPath, ["--import", "tsx", "--test", JOIN_TEST], { env: e, encoding: "utf8", timeout: 120_000 });
}

test("without an interpreter the tier is reported as not run, with the reason and the way to get one", () => {
  const r = run({});
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /real-interpreter tier NOT RUN: no 32-bit Espruino interpreter for \w+ found in \/nonexistent\/keyproxy-no-interpreter/);
  assert.match(r.stdout, /# SKIP not run: .*interpreter\/build\.sh/);
  assert.match(r.stdout, /# skipped 3/);
  assert.match(r.stdout, /# pass 0/);
});

test("with CI=true a missing interpreter fails the tier", () => {
  const r = run({ CI: "true" });
  assert.notEqual(r.status, 0);
  assert.match(r.stdout, /# fail 3/);
  assert.match(r.stdout, /CI=true and the real-interpreter tier cannot run/);
});
