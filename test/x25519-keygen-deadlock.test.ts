// Node 20's node:crypto can deadlock a thread that exports a key it has just generated: the
// generation job's destructor locks the key's mutex, the JWK export holds that mutex while it
// allocates, and a garbage collection inside that allocation runs the destructor (docs/FUZZING.md).
// With the public key exported as a JWK after generateKeyPairSync, this loop stopped within 2,000 to
// 31,000 pairs (5-7 s) in every try; gateway/fleet/fleet.ts now has the generation job encode it instead.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const PAIRS = 60_000;
/** No progress line for this long means the loop is stuck (it prints every 500 pairs, about 10 ms). */
const STUCK_MS = 20_000;
const LOOP = fileURLToPath(new URL("./support/keygen-loop.ts", import.meta.url));

test("making X25519 key pairs under garbage-collection pressure never deadlocks", async () => {
  const child = spawn(process.execPath, ["--max-semi-space-size=1", "--import", "tsx", LOOP, String(PAIRS)], { stdio: ["ignore", "pipe", "pipe"] });
  let made = 0;
  let stderr = "";
  let lastProgress = Date.now();
  child.stdout.on("data", (b: Buffer) => {
    const lines = b.toString().trim().split("\n");
    made = Number(lines[lines.length - 1]);
    lastProgress = Date.now();
  });
  child.stderr.on("data", (b: Buffer) => (stderr += b.toString()));
  const outcome = await new Promise<string>((resolve) => {
    const watchdog = setInterval(() => {
      if (Date.now() - lastProgress <= STUCK_MS) return;
      child.kill("SIGKILL"); // a deadlocked thread answers nothing gentler
      resolve(`stuck after ${made} key pairs`);
    }, 250);
    child.on("exit", (code, signal) => {
      clearInterval(watchdog);
      resolve(code === 0 ? "done" : `exited with ${code ?? signal}: ${stderr}`);
    });
  });
  assert.equal(outcome, "done");
  assert.equal(made, PAIRS);
});
