// The real-interpreter tier: every firmware flow on the unmodified bundles of puckjs, banglejs2 and
// esp32, each handset flashed and provisioned over a pty as a user does, against a gateway process.
// Sessions: each board is caller once and callee once; every session rekeys (by message count, or
// by time) and ends with a bye.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import type { RealDevice } from "../interpreter/device.ts";
import { realRig, realTest, REAL_BOARDS, type RealRig } from "./support/real.ts";
import { chatApp, chatReset, chatState, chatUp, converse, echoes, messages } from "./support/chat-app.ts";
import { CLI } from "./support/process.ts";

type Status = { state: string; registered: boolean; joins: number; dropped: number; sas: number };

function policy(rig: RealRig, from: string, to: string): void {
  const r = spawnSync(process.execPath, [CLI, "policy", "allow", "--from", from, "--to", to, "--app", "chat", "--data-dir", rig.dataDir], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
}

async function until(what: string, cond: () => Promise<boolean>, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const status = (d: RealDevice) => d.eval<Status>("KP.status()");

/** caller calls callee, and n messages go each way (the callee echoes each; test/support/chat-app.ts),
 *  then the caller says bye. Both handsets run the chat application already. Returns how many times
 *  each end saw an SA come up (2 or more: a rekey happened). */
async function session(caller: RealDevice, callee: RealDevice, n: number, gapMs = 0): Promise<{ callerUps: number; calleeUps: number }> {
  for (const d of [caller, callee]) await chatReset(d);
  assert.equal(await caller.eval(`KP.connect(${JSON.stringify(callee.name)}, "chat")`), true);
  await Promise.all([caller, callee].map((d) => chatUp(d, `${caller.name} -> ${callee.name} up`)));
  await converse(caller, n, { gapMs, timeoutMs: n * (gapMs + 15_000) });
  const a = await chatState(caller);
  const b = await chatState(callee);
  assert.deepEqual(b.got, messages(n), "the callee got every message once, in order");
  assert.deepEqual(a.got, echoes(n), "the caller got every echo once, in order");
  assert.equal(await caller.eval("KP.close(T.spi)"), true);
  await Promise.all([caller.when("KP.status().sas===0", "no SA left at the caller"), callee.when("KP.status().sas===0&&T.closed.length>0", "the callee closed")]);
  assert.deepEqual((await chatState(callee)).closed, [1], "the callee was told: bye");
  return { callerUps: a.ups, calleeUps: b.ups };
}

realTest("sessions inside one gateway: every board as caller and as callee, a rekey by message count, bye", REAL_BOARDS, async () => {
  // A message limit of 10 per direction: each side asks for a rekey at 8.
  const rig = await realRig(["--no-mqtt", "--no-fleet", "--sa-limit", "10"]);
  try {
    // One after another: provisioning waits for each answer, and a loaded machine slows qemu down.
    const puck = await rig.handset("puckjs", "puck");
    const bangle = await rig.handset("banglejs2", "bangle");
    const esp = await rig.handset("esp32", "esp");
    for (const d of [puck, bangle, esp]) await d.waitFor(/^KP registered for/, 30_000);
    for (const d of [puck, bangle, esp]) await chatApp(d);
    policy(rig, "puck", "bangle");
    policy(rig, "bangle", "esp");
    policy(rig, "esp", "puck");
    for (const [caller, callee] of [[puck, bangle], [bangle, esp], [esp, puck]] as const) {
      const ups = await session(caller, callee, 12);
      assert.ok(ups.callerUps >= 2 && ups.calleeUps >= 2, `${caller.name} -> ${callee.name}: the SA was replaced (rekey) during the session: ${JSON.stringify(ups)}`);
    }
    assert.ok(rig.gw.events("session-rekeyed").length >= 3, "the gateway rekeyed each session");
    assert.ok(rig.gw.events("session-down").filter((e) => /bye/.test(String(e.reason))).length >= 3, "each session ended with a bye");
    for (const d of [puck, bangle, esp]) assert.equal((await status(d)).dropped, 0, `${d.name} dropped nothing`);
  } finally {
    await rig.stop();
  }
}, 600_000);

realTest("a rekey by time: an SA past 80% of its lifetime is replaced on the next send", ["puckjs", "esp32"], async () => {
  const rig = await realRig(["--no-mqtt", "--no-fleet", "--sa-lifetime", "6"]);
  try {
    const esp = await rig.handset("esp32", "esp");
    const puck = await rig.handset("puckjs", "puck");
    for (const d of [esp, puck]) await d.waitFor(/^KP registered for/, 30_000);
    for (const d of [esp, puck]) await chatApp(d);
    policy(rig, "esp", "puck");
    // Messages 1.5 s apart: the fourth send is past 4.8 s (80% of 6 s) and asks for the new SA.
    const ups = await session(esp, puck, 5, 1500);
    assert.ok(ups.callerUps >= 2 && ups.calleeUps >= 2, `the SA was replaced before its lifetime ran out: ${JSON.stringify(ups)}`);
    assert.ok(rig.gw.events("session-rekeyed").length >= 1);
  } finally {
    await rig.stop();
  }
}, 300_000);

realTest("register, renew before the registration runs out, and deregister", ["banglejs2"], async () => {
  const rig = await realRig(["--no-mqtt", "--no-fleet", "--min-lifetime", "5"]);
  try {
    const dev = await rig.handset("banglejs2", "b1", { lifetime: 5 });
    await dev.waitFor(/^KP registered for 5s$/, 30_000);
    // The handset renews at 80% of the granted lifetime (4 s), by itself.
    await until("a renewal", async () => rig.gw.events("renewed").some((e) => e.device === "b1"), 20_000);
    assert.equal((await status(dev)).registered, true);
    assert.equal(await dev.eval("KP.register(0)"), true);
    await dev.waitFor(/^KP deregistered$/, 15_000);
    assert.equal((await status(dev)).registered, false);
    assert.ok(rig.gw.events("deregistered").some((e) => e.device === "b1" && e.existed === true));
  } finally {
    await rig.stop();
  }
}, 300_000);
