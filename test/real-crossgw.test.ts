// The real-interpreter tier, sessions across gateways: a fleet made with the CLI, two gateway
// processes in their own domains on one MQTT broker (Mosquitto when KEYPROXY_TEST_MQTT_URL names one,
// as in CI; else the in-process broker), a Puck.js behind one and a Bangle.js 2 behind the other, both
// on the real interpreter. Each calls the other by name@domain; messages cross a rekey; bye ends it.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { startBroker, type EmbeddedBroker } from "../gateway/monitor/embedded-broker.ts";
import type { RealDevice } from "../interpreter/device.ts";
import { realRig, realTest, type RealRig } from "./support/real.ts";
import { CLI } from "./support/process.ts";
import { tempDir } from "./support/harness.ts";

const APP = `(function(){
global.T = { spi: 0, ups: 0, got: [], closed: [], peer: "" };
KP.onRequest = function (from, app) { return app === "chat"; };
KP.onConnect = function (spi, peer, app, replaces) { T.spi = spi; T.ups++; T.peer = peer; };
KP.onMessage = function (d, spi) { var s = E.toString(d); T.got.push(s); if (s.substr(0, 3) !== "re:") KP.send(spi, E.toUint8Array("re:" + s)); };
KP.onClose = function (spi, reason) { T.closed.push(reason); T.spi = 0; };
return 1; })()`;
type AppState = { spi: number; ups: number; got: string[]; closed: number[]; peer: string };

function cli(args: string[]): void {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: "utf8" });
  assert.equal(r.status, 0, `keyproxy ${args.join(" ")}:\n${r.stderr}`);
}

async function until(what: string, cond: () => Promise<boolean>, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function call(caller: RealDevice, callee: RealDevice, calleeAddress: string, n: number): Promise<void> {
  const app = (d: RealDevice) => d.eval<AppState>("T");
  for (const d of [caller, callee]) await d.eval(APP);
  assert.equal(await caller.eval(`KP.connect(${JSON.stringify(calleeAddress)}, "chat")`), true);
  await until(`${caller.name} -> ${calleeAddress} up`, async () => (await app(caller)).spi !== 0 && (await app(callee)).spi !== 0, 45_000);
  for (let i = 0; i < n; i++) {
    assert.equal(await caller.eval(`KP.send(T.spi, E.toUint8Array("x${i}"))`), true);
    await until(`echo of x${i}`, async () => (await app(caller)).got.includes(`re:x${i}`), 20_000);
  }
  const a = await app(caller);
  const b = await app(callee);
  assert.deepEqual(b.got, Array.from({ length: n }, (_, i) => `x${i}`));
  assert.ok(a.ups >= 2 && b.ups >= 2, `the SA was replaced during the call: ${a.ups}/${b.ups}`);
  assert.equal(await caller.eval("KP.close(T.spi)"), true);
  await until("bye at both ends", async () => (await app(callee)).closed.length > 0 && (await caller.eval<{ sas: number }>("KP.status()")).sas === 0);
  assert.deepEqual((await app(callee)).closed, [1]);
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
