// --json on the commands that list or show (issue 13, scope 2): one JSON document on stdout, whatever
// the strings in it hold (no raw control characters: escaped as JSON, DEL, C1 and bidi included), no
// key material, and the human output as it was.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { openStore } from "../gateway/gateway.ts";
import { BOARDS } from "../boards/index.ts";
import { runCli } from "./support/run-cli.ts";
import { tempDir } from "./support/harness.ts";

/** What a terminal would act on, raw: C0, DEL, C1, LS/PS, bidi controls. */
const RAW_CONTROL = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;

/** stdout as the one JSON document it must be, with nothing raw a terminal would act on. */
function oneDocument(stdout: string): any {
  assert.ok(stdout.endsWith("\n"), "ends with a newline");
  assert.doesNotMatch(stdout.slice(0, -1), RAW_CONTROL);
  assert.doesNotMatch(stdout.slice(0, -1), /\n/, "one line: one document");
  return JSON.parse(stdout);
}

test("device list --json: every device, strings escaped, no root key; the human listing unchanged", async () => {
  const dir = tempDir("kp-json-dev-");
  const hostile = "evil\x1b[2J\u009b31m\u202e\x7fid";
  const keys = [randomBytes(16), randomBytes(16)];
  const store = await openStore(dir);
  try {
    await store.addDevice("plain-1", keys[0], "puckjs", 1_800_000_000);
    // Written by another tool: the CLI would refuse this id, the registry holds it all the same.
    await store.addDevice(hostile, keys[1], "esp32", 1_800_000_000);
  } finally {
    await store.close();
  }
  const r = await runCli(["device", "list", "--json", "--data-dir", dir]);
  assert.equal(r.code, 0, r.stderr);
  const doc = oneDocument(r.stdout);
  assert.equal(doc.dataDir, dir);
  const byId = new Map(doc.devices.map((d: any) => [d.id, d]));
  assert.deepEqual([...byId.keys()].sort(), ["plain-1", hostile].sort());
  assert.deepEqual(byId.get("plain-1"), {
    id: "plain-1", board: "puckjs", createdAt: "2027-01-15T08:00:00.000Z", revokedAt: null, joinCounter: 0,
    registration: "not-registered", registeredUntil: null, firmware: null, memoryUsed: null, memoryPool: BOARDS.puckjs.vars,
  });
  for (const k of keys) {
    assert.ok(!r.stdout.toLowerCase().includes(k.toString("hex")), "no root key in hex");
    assert.ok(!r.stdout.includes(k.toString("base64").replace(/=+$/, "")), "no root key in base64");
  }

  const human = await runCli(["device", "list", "--data-dir", dir]);
  assert.equal(human.code, 0, human.stderr);
  assert.match(human.stdout, /^plain-1 {13} puckjs {5}joins=0 {6}not registered$/m);
  assert.throws(() => JSON.parse(human.stdout));
});

test("device list --json on an empty registry: a document with no devices, not a sentence", async () => {
  const dir = tempDir("kp-json-empty-");
  await (await openStore(dir)).close();
  const r = await runCli(["device", "list", "--json", "--data-dir", dir]);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(oneDocument(r.stdout).devices, []);
});

test("policy list --json: the default and every rule; the human listing unchanged", async () => {
  const dir = tempDir("kp-json-pol-");
  for (const args of [["default", "allow"], ["allow", "--from", "group:ops", "--to", "*", "--app", "chat"], ["deny", "--from", "*@evil.example", "--to", "bob"]]) {
    const r = await runCli(["policy", ...args, "--data-dir", dir]);
    assert.equal(r.code, 0, r.stderr);
  }
  const r = await runCli(["policy", "list", "--json", "--data-dir", dir]);
  assert.equal(r.code, 0, r.stderr);
  const doc = oneDocument(r.stdout);
  assert.equal(doc.default, "allow");
  assert.deepEqual(doc.rules.map(({ id, ...rest }: any) => (assert.equal(typeof id, "number"), rest)), [
    { action: "allow", from: "group:ops", to: "*", app: "chat" },
    { action: "deny", from: "*@evil.example", to: "bob", app: "*" },
  ]);
  const human = await runCli(["policy", "list", "--data-dir", dir]);
  assert.match(human.stdout, /^default: allow\n +\d+ {2}allow group:ops -> \* {2}app chat\n +\d+ {2}deny {2}\*@evil\.example -> bob {2}app \*\n$/);
});

test("fleet show --json: the fleet, its list and the gateways certified, all public; never the CA key", async () => {
  const fleetDir = join(tempDir("kp-json-fleet-"), "fleet");
  const gwDir = tempDir("kp-json-gw-");
  for (const args of [["create", "--id", "json.example"], ["issue-gateway", "--id", "gw1.example", "--data-dir", gwDir], ["revoke-device", "--name", "mallory@gw1.example"]]) {
    const r = await runCli(["fleet", ...args, "--fleet-dir", fleetDir]);
    assert.equal(r.code, 0, r.stderr);
  }
  const r = await runCli(["fleet", "show", "--json", "--fleet-dir", fleetDir]);
  assert.equal(r.code, 0, r.stderr);
  const doc = oneDocument(r.stdout);
  assert.equal(doc.fleet, "json.example");
  assert.match(doc.caPublicKey, /^[0-9a-f]{64}$/);
  assert.equal(doc.revocationList.serial, 2);
  assert.deepEqual(doc.revocationList.devices, ["mallory@gw1.example"]);
  assert.equal(doc.revocationList.stale, false);
  assert.deepEqual(doc.gateways.map((g: any) => [g.id, g.expired]), [["gw1.example", false]]);
  assert.match(doc.gateways[0].certId, /^[0-9a-f]+$/);
  const caSeed = readFileSync(join(fleetDir, "ca.key"), "utf8").trim().toLowerCase();
  assert.ok(caSeed.length >= 32 && !r.stdout.toLowerCase().includes(caSeed), "the CA key is not in the output");
  for (const f of ["gateway.key", "gateway.x25519"]) {
    const secret = readFileSync(join(gwDir, f)).toString("hex");
    assert.ok(!r.stdout.includes(secret.slice(0, 32)), `nothing of ${f}`);
  }

  const human = await runCli(["fleet", "show", "--fleet-dir", fleetDir]);
  assert.match(human.stdout, /^fleet "json\.example" in .*\n  CA public key [0-9a-f]{64}\nrevocation list serial 2, /);
});

test("--json is refused where there is nothing to list (exit 2)", async () => {
  const dir = tempDir("kp-json-refuse-");
  for (const args of [["device", "remove", "--id", "x", "--json", "--data-dir", dir], ["policy", "allow", "--from", "a", "--to", "b", "--json", "--data-dir", dir], ["fleet", "create", "--id", "f.example", "--json", "--fleet-dir", join(dir, "f")]]) {
    const r = await runCli(args);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, /--json is for/);
  }
});
