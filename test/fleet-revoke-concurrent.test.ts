// Several `keyproxy fleet revoke-*` at once on one fleet directory (a script revoking devices in
// parallel): each takes the fleet's lock for its read-sign-write, so no revocation is lost and no
// serial is signed twice. Without it two processes read serial N, both sign N + 1, the file keeps the
// last one, and gateways take whichever N + 1 reaches them first and ignore the other as a
// redelivery: a revocation silently dropped.

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Fleet, FleetError, FLEET_LOCK_FILE, FLEET_LOCK_WAIT_MS } from "../gateway/fleet/fleet.ts";
import { lockFile } from "../gateway/files/lock.ts";

const PROCESSES = 4;
const EACH = 25;

function run(dir: string, who: string, start: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ["--import", "tsx", "test/support/revoke-loop.ts", dir, who, String(EACH), String(start)], { stdio: ["ignore", "ignore", "pipe"] });
    let err = "";
    p.stderr.on("data", (d: Buffer) => (err += d.toString()));
    p.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`${who} exited ${code}: ${err}`))));
  });
}

test(`${PROCESSES} processes revoking ${EACH} devices each in one fleet at once: every revocation is in the list, one serial per revocation`, async () => {
  const dir = join(mkdtempSync(join(tmpdir(), "kp-revoke-")), "fleet");
  Fleet.create(dir, "race", Math.floor(Date.now() / 1000));
  const start = Date.now() + 3000; // after every process has loaded
  await Promise.all(Array.from({ length: PROCESSES }, (_, i) => run(dir, `p${i}`, start)));
  const list = Fleet.open(dir).currentList();
  const expected = Array.from({ length: PROCESSES }, (_, p) => Array.from({ length: EACH }, (_, i) => `p${p}-${i}@a.example`)).flat().sort();
  assert.deepEqual(list.devices, expected, "no revocation lost");
  assert.equal(list.serial, 1 + PROCESSES * EACH, "each revocation signed its own serial");
});

test("a fleet command that cannot get the lock in time fails with busy, naming the directory, and signs nothing", () => {
  assert.equal(FLEET_LOCK_WAIT_MS, 60_000, "the CLI's wait");
  const dir = join(mkdtempSync(join(tmpdir(), "kp-revoke-")), "fleet");
  Fleet.create(dir, "busy", Math.floor(Date.now() / 1000));
  const fleet = Fleet.open(dir, { lockWaitMs: 300 });
  const held = lockFile(join(dir, FLEET_LOCK_FILE), 0); // another command, stuck
  assert.ok(held);
  try {
    assert.throws(() => fleet.revoke({ devices: ["lamp@a.example"] }, Math.floor(Date.now() / 1000)),
      (e: unknown) => e instanceof FleetError && e.code === "busy" && e.message === `another keyproxy fleet command has been changing ${dir} for 0.3 s: try again when it is done`);
  } finally {
    held.release();
  }
  assert.equal(fleet.currentList().serial, 1, "nothing signed");
  assert.equal(fleet.revoke({ devices: ["lamp@a.example"] }, Math.floor(Date.now() / 1000)).length > 0, true, "free again");
});
