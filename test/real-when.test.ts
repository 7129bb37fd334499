// RealDevice.when(): a test waits for a condition on the device with one typed line, not a poll of
// evals (each line typed at the Linux build's console risks its console thread's race, docs/
// INTERPRETER.md "A byte lost, or a crash"). It must still see the condition, pass on what the
// device throws, give up at its timeout, and leave no watch running on the device.
import assert from "node:assert/strict";
import { RealDevice } from "../interpreter/device.ts";
import { tempDir } from "./support/harness.ts";
import { realTest } from "./support/real.ts";

const watchesLeft = `Object.keys(global).filter(function(k){return k.indexOf("__kw")===0;}).length`;

realTest("when(): one typed line waits for a condition on the device, passes on what it throws, and gives up at its timeout", ["puckjs"], async () => {
  const dev = new RealDevice({ board: "puckjs", dir: tempDir("kp-when-"), name: "when" });
  try {
    await dev.start();
    // True 1.5 s from now: the wait sees it, and types one line for it (the watch), not a poll.
    await dev.eval(`(function(){global.later=0;setTimeout(function(){global.later=7;},1500);return 1;})()`);
    const typed = dev.evals;
    const started = Date.now();
    await dev.when("global.later===7", "later");
    assert.ok(Date.now() - started >= 1000, "it waited for the condition to hold");
    assert.equal(dev.evals - typed, 1, "one line typed for the whole wait");
    assert.equal(await dev.eval(watchesLeft), 0, "the watch stopped once it held");

    // Two watches at once, each answered by its own mark.
    await dev.eval(`(function(){global.a=0;global.b=0;setTimeout(function(){global.b=1;},300);setTimeout(function(){global.a=1;},900);return 1;})()`);
    await Promise.all([dev.when("global.a===1", "a"), dev.when("global.b===1", "b")]);

    // What the condition throws on the device is the wait's error.
    await assert.rejects(dev.when("nothingHere.x", "a missing global"), /waiting for a missing global: .*nothingHere/);
    assert.equal(await dev.eval(watchesLeft), 0, "a watch that threw stopped");

    // Never true: the wait gives up at its timeout, naming the condition, and ends its watch.
    await assert.rejects(dev.when("global.later===8", "eight", 1500), /timed out waiting for eight \(global\.later===8\) within 1500 ms/);
    assert.equal(await dev.eval(watchesLeft), 0, "the watch ended with the wait");

    // A condition the harness cannot type as one line is refused before anything is typed.
    await assert.rejects(dev.when("1\n+1", "two lines"), /one line/);
  } finally {
    await dev.powerOff();
  }
});
