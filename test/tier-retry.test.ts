// The real tier's reruns (test/support/real.ts rerunAfterHostFault): only after a run during which an
// interpreter crashed, at most RERUNS_AFTER_HOST_FAULT times, and never for a failure of the firmware or
// the test itself. And what makes the harness flash or provision again (interpreter/handsets.ts
// hostFault): the host's console, never the firmware or keyproxy.
import assert from "node:assert/strict";
import { test } from "node:test";
import { hostFault } from "../interpreter/handsets.ts";
import { consoleFaults, notePacketUnanswered, PACKET_UNANSWERED } from "../interpreter/device.ts";
import { RERUNS_AFTER_HOST_FAULT, rerunAfterHostFault } from "./support/real.ts";

test("a failure during which an interpreter crashed runs again, and passes if a rerun passes", async () => {
  let crashes = 0;
  let runs = 0;
  const said: string[] = [];
  await rerunAfterHostFault(async () => {
    runs++;
    if (runs <= RERUNS_AFTER_HOST_FAULT) {
      crashes++;
      throw new Error(`puck: the interpreter stopped (${runs})\nmore`);
    }
  }, () => crashes, (why) => said.push(why));
  assert.equal(runs, 1 + RERUNS_AFTER_HOST_FAULT);
  assert.deepEqual(said, Array.from({ length: RERUNS_AFTER_HOST_FAULT }, (_, i) => `puck: the interpreter stopped (${i + 1})`));
});

test("a failure without a crash fails at once, also in a rerun; the last rerun's failure fails", async () => {
  let runs = 0;
  await assert.rejects(rerunAfterHostFault(async () => { runs++; throw new Error("wrong tag"); }, () => 0, () => {}), /wrong tag/);
  assert.equal(runs, 1);
  // A crash, then a failure without one: the firmware's failure is not run away from.
  let crashes = 0;
  runs = 0;
  await assert.rejects(rerunAfterHostFault(async () => { runs++; if (runs === 1) crashes++; throw new Error(`failure ${runs}`); }, () => crashes, () => {}), /failure 2/);
  assert.equal(runs, 2);
  crashes = 0;
  runs = 0;
  await assert.rejects(rerunAfterHostFault(async () => { runs++; crashes++; throw new Error(`crash ${runs}`); }, () => crashes, () => {}), new RegExp(`crash ${1 + RERUNS_AFTER_HOST_FAULT}`));
  assert.equal(runs, 1 + RERUNS_AFTER_HOST_FAULT);
});

test("flashing or provisioning is tried again only for what the host's console did to it", () => {
  const timeout = new Error("the device on /dev/pts/9 did not answer within 20.5 s");
  // Fresh-clone CI run 17: the ">" of an answer's marker typed as "r"; the Storage write had run.
  assert.match(hostFault(["KP not provisioned: no valid kp.cfg", "<kp41rtrue</kp41>"], timeout) ?? "", /a console byte was lost: the answer came back as "<kp41rtrue/);
  assert.match(hostFault(["<kp7>1</kp7>", "<kp8>true</kp8", "x"], timeout) ?? "", /byte was lost/, "a damaged end marker");
  assert.match(hostFault(["Uncaught ReferenceError: \"fuction\" is not defined"], timeout) ?? "", /byte was lost/);
  assert.match(hostFault(["[harness] the interpreter exited (SIGSEGV)"], timeout) ?? "", /crashed/);
  assert.match(hostFault([], new Error("verification failed: the device stored a bundle with CRC 0x1, expected 0x2")) ?? "", /byte was lost/);
  assert.match(hostFault([], new Error("the device on /dev/pts/3 did not acknowledge a packet within 20.0 s")) ?? "", /packet's start was lost/);
  // Whole answers, errors the device reported and keyproxy's own refusals are not the console's fault.
  assert.equal(hostFault(["<kp7>1</kp7>", "<kp8!>Error: Storage full</kp8!>", "<kp12>null</kp12>"], timeout), undefined);
  assert.equal(hostFault(["KP registered for 3600s"], new Error('device "h1" is already registered; pass --replace to give it a new root key')), undefined);
  assert.equal(hostFault(["Uncaught Error: Unable to write file"], timeout), undefined);
});

test("a packet a live interpreter never answered counts as the console's fault, so the test runs again", () => {
  const before = consoleFaults();
  notePacketUnanswered();
  assert.equal(consoleFaults(), before + 1);
  assert.ok(PACKET_UNANSWERED.test("the device on /dev/pts/0 did not acknowledge a packet within 20.0 s"));
  assert.ok(!PACKET_UNANSWERED.test("the device on /dev/pts/0 did not answer within 20.5 s"), "an eval's timeout is not a packet's");
});
