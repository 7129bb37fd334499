// The real-interpreter tier, sessions across gateways: a fleet made with the CLI, two gateway
// processes in their own domains on one MQTT broker (Mosquitto when KEYPROXY_TEST_MQTT_URL names one,
// as in CI; else the in-process broker), a Puck.js behind one and a Bangle.js 2 behind the other, both
// on the real interpreter. Each calls the other by name@domain; messages cross a rekey; bye ends it.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { startBroker, type EmbeddedBroker } from "../gateway/monitor/embedded-broker.ts";
import type { RealDevice } from "../interpreter/device.ts";
import { chatApp, chatReset, chatState, chatUp, converse, echoes, messages } from "./support/chat-app.ts";
import { realRig, realTest, type RealRig } from "./support/real.ts";
import { CLI } from "./support/process.ts";
import { tempDir } from "./support/harness.ts";

function cli(args: string[]): void {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: "utf8" });
  assert.equal(r.status, 0, `keyproxy ${args.join(" ")}:\n${r.stderr}`);
}

/** caller calls callee by name@domain, n messages go each way across the two gateways (the callee
 *  echoes each; test/support/chat-app.ts), then the caller says bye. */
async function call(caller: RealDevice, callee: RealDevice, calleeAddress: string, n: number): Promise<void> {
  for (const d of [caller, callee]) await chatReset(d);
  assert.equal(await caller.eval(`KP.connect(${JSON.stringify(calleeAddress)}, "chat")`), true);
  await Promise.all([caller, callee].map((d) => chatUp(d, `${caller.name} -> ${calleeAddress} up`, 45_000)));
  await converse(caller, n, { timeoutMs: n * 20_000 });
  const a = await chatState(caller);
  const b = await chatState(callee);
  assert.deepEqual(b.got, messages(n), "the callee got every message once, in order");
  assert.deepEqual(a.got, echoes(n), "the caller got every echo once, in order");
  assert.ok(a.ups >= 2 && b.ups >= 2, `the SA was replaced during the call: ${a.ups}/${b.ups}`);
  assert.equal(await caller.eval("KP.close(T.spi)"), true);
  await Promise.all([callee.when("T.closed.length>0", "bye at the callee"), caller.when("KP.status().sas===0", "bye at the caller")]);
  assert.deepEqual((await chatState(callee)).closed, [1]);
}

realTest("sessions across two gateway processes: Puck.js and Bangle.js 2 call each other by name@domain, rekey, bye", ["puckjs", "banglejs2"], async () => {
  const run = randomBytes(3).toString("hex");
  const north = `n-${run}.example`;
  const south = `s-${run}.example`;
  let broker: EmbeddedBroker | undefined;
  let url = process.env.KEYPROXY_TEST_MQTT_URL;
  if (!url) {
    broker = await startBroker({ host: "127.0.0.1", port: 0 });
    url = broker.url;
  }
  const fleetDir = tempDir("kp-real-fleet-");
  cli(["fleet", "create", "--id", `kp-real-${run}`, "--fleet-dir", fleetDir]);
  const rigs: RealRig[] = [];
  try {
    const side = async (domain: string, policy: string[][]) => {
      const dataDir = tempDir("kp-real-xgw-");
      cli(["fleet", "issue-gateway", "--fleet-dir", fleetDir, "--id", domain, "--data-dir", dataDir]);
      for (const [from, to] of policy) cli(["policy", "allow", "--from", from, "--to", to, "--app", "chat", "--data-dir", dataDir]);
      const rig = await realRig(["--id", domain, "--mqtt", url!, "--sa-limit", "10", "--metrics", "60"], dataDir);
      rigs.push(rig);
      return rig;
    };
    const n = await side(north, [["puck", `bangle@${south}`], [`bangle@${south}`, "puck"]]);
    const s = await side(south, [[`puck@${north}`, "bangle"], ["bangle", `puck@${north}`]]);
    const puck = await n.handset("puckjs", "puck");
    const bangle = await s.handset("banglejs2", "bangle");
    for (const d of [puck, bangle]) await d.waitFor(/^KP registered for/, 30_000);
    for (const d of [puck, bangle]) await chatApp(d);
    await call(puck, bangle, `bangle@${south}`, 12);
    await call(bangle, puck, `puck@${north}`, 12);
    assert.ok(n.gw.events("xsession-rekeyed").length >= 2 && s.gw.events("xsession-rekeyed").length >= 2, "both gateways rekeyed both calls");
    assert.equal((await puck.eval<{ dropped: number }>("KP.status()")).dropped, 0);
    assert.equal((await bangle.eval<{ dropped: number }>("KP.status()")).dropped, 0);
  } finally {
    for (const r of rigs) await r.stop();
    await broker?.close();
  }
}, 600_000);
