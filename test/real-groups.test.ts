// The real-interpreter tier, group SAs (issue 14, scope 3): three Puck.js bundles built with
// `keyproxy build --groups`, flashed and provisioned as a user does, against one gateway process in a
// fleet (made with the CLI, on Mosquitto when KEYPROXY_TEST_MQTT_URL names one, else the in-process
// broker). The group is made with `keyproxy group` while the gateway runs. One member's message
// reaches the two others; with the group SA and a pairwise SA open, a Puck.js stays within its
// budget; a member taken out is closed and cannot open the next message (handed to it on its
// console); a member revoked by the fleet's list is cut off and leaves the group.
import assert from "node:assert/strict";
import { execFile, spawnSync } from "node:child_process";
import { promisify } from "node:util";
import { randomBytes } from "node:crypto";
import { BOARDS } from "../boards/index.ts";
import { emptyUsage } from "../bench/real-memory.ts";
import { CloseReason } from "../firmware/proto/messages.ts";
import { startBroker, type EmbeddedBroker } from "../gateway/monitor/embedded-broker.ts";
import type { RealDevice } from "../interpreter/device.ts";
import { realRig, realTest, type RealRig } from "./support/real.ts";
import { CLI } from "./support/process.ts";
import { tempDir } from "./support/harness.ts";

/** Each handset's application, typed at its console: the group's SPI (g) apart from a pairwise one
 *  (p), what it got, what closed; and the last bytes it wrote, so that a test can hand its frame to
 *  another handset. */
const APP = `(function(){
global.T = { g: 0, p: 0, got: [], closed: [], last: "" };
KP.onRequest = function (from, app) { return app === "chat"; };
KP.onConnect = function (spi, peer, app, replaces) { if (peer.indexOf("team@") === 0) T.g = spi; else T.p = spi; };
KP.onMessage = function (d, spi) { T.got.push(E.toString(d)); };
KP.onClose = function (spi, reason) { T.closed.push([spi, reason]); };
var port = KP.port, write = port.write;
port.write = function (b) { T.last = btoa(E.toString(b)); write(b); };
return 1; })()`;
type AppState = { g: number; p: number; got: string[]; closed: [number, number][]; last: string };

function cli(args: string[]): string {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: "utf8" });
  assert.equal(r.status, 0, `keyproxy ${args.join(" ")}:\n${r.stderr}`);
  return r.stdout;
}

/** As cli, without blocking this process: the in-process MQTT broker must answer the command. */
async function cliAsync(args: string[]): Promise<void> {
  try {
    await promisify(execFile)(process.execPath, [CLI, ...args], { encoding: "utf8" });
  } catch (e) {
    assert.fail(`keyproxy ${args.join(" ")}:\n${(e as { stderr?: string }).stderr ?? String(e)}`);
  }
}

async function until(what: string, cond: () => Promise<boolean>, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

const app = (d: RealDevice) => d.eval<AppState>("T");

/** Waits until each of `members` holds the same group SPI, other than `not`; that SPI. */
async function keyed(members: RealDevice[], not = 0): Promise<number> {
  // Each member's own watch first (one typed line, not a poll of evals), then the same key at all.
  await Promise.all(members.map((m) => m.when(`T.g!==0&&T.g!==${not}`, `a group key other than ${not} at ${m.name}`, 45_000)));
  let spi = 0;
  await until(`the group key at ${members.map((m) => m.name).join(", ")}`, async () => {
    const gs = await Promise.all(members.map(async (m) => (await app(m)).g));
    spi = gs[0];
    return spi !== 0 && spi !== not && gs.every((g) => g === spi);
  }, 45_000);
  return spi;
}

async function send(from: RealDevice, msg: string, to: RealDevice[]): Promise<string> {
  assert.equal(await from.eval(`KP.send(T.g, E.toUint8Array(${JSON.stringify(msg)}))`), true, `${from.name} sends ${msg}`);
  const frame = (await app(from)).last;
  await Promise.all(to.map((d) => d.when(`T.got.indexOf(${JSON.stringify(msg)})>=0`, `${msg} at ${d.name}`, 20_000)));
  for (const d of to) assert.equal((await app(d)).got.filter((m) => m === msg).length, 1, `${msg} reached ${d.name} once`);
  assert.ok(!(await app(from)).got.includes(msg), "the sender does not get its own message");
  return frame;
}

/** Hands a frame (base64) to a handset on its console: whether it opened it. */
async function opens(d: RealDevice, frame: string, msg: string): Promise<boolean> {
  const dropped = (await d.eval<{ dropped: number }>("KP.status()")).dropped;
  await d.eval(`KP.receive(E.toUint8Array(atob(${JSON.stringify(frame)})))`);
  if ((await app(d)).got.includes(msg)) return true;
  assert.equal((await d.eval<{ dropped: number }>("KP.status()")).dropped, dropped + 1, "the frame was dropped");
  return false;
}

realTest("group SAs on three Puck.js: one message reaches the others; the budget with a group and a pairwise SA; a member that leaves or is revoked is cut off", ["puckjs"], async () => {
  const run = randomBytes(3).toString("hex");
  const domain = `g-${run}.example`;
  let broker: EmbeddedBroker | undefined;
  let url = process.env.KEYPROXY_TEST_MQTT_URL;
  if (!url) {
    broker = await startBroker({ host: "127.0.0.1", port: 0 });
    url = broker.url;
  }
  const fleetDir = tempDir("kp-real-grp-fleet-");
  cli(["fleet", "create", "--id", `kp-real-grp-${run}`, "--fleet-dir", fleetDir]);
  const dataDir = tempDir("kp-real-grp-");
  cli(["fleet", "issue-gateway", "--fleet-dir", fleetDir, "--id", domain, "--data-dir", dataDir]);
  cli(["policy", "allow", "--from", "g1", "--to", "g2", "--app", "chat", "--data-dir", dataDir]);
  let rig: RealRig | undefined;
  try {
    rig = await realRig(["--id", domain, "--mqtt", url, "--metrics", "60"], dataDir);
    // One after another: provisioning waits for each answer, and a loaded machine slows qemu down.
    const g1 = await rig.handset("puckjs", "g1", { groups: true });
    const g2 = await rig.handset("puckjs", "g2", { groups: true });
    const g3 = await rig.handset("puckjs", "g3", { groups: true });
    for (const d of [g1, g2, g3]) await d.waitFor(/^KP registered for/, 30_000);
    // What the test's own application costs g1 (its functions, typed at the console, live in RAM): it
    // is taken out of the memory figure below, which is keyproxy's.
    const beforeApp = (await g1.memory()).usage;
    for (const d of [g1, g2, g3]) await d.eval(APP);
    const appCost = (await g1.memory()).usage - beforeApp;

    // The group, made while the gateway runs: it applies the change within its poll.
    cli(["group", "create", "--group", "team", "--app", "chat", "--data-dir", dataDir]);
    for (const m of ["g1", "g2", "g3"]) cli(["group", "add", "--group", "team", "--device", m, "--data-dir", dataDir]);
    const first = await keyed([g1, g2, g3]);
    await send(g1, "hello team", [g2, g3]);
    await send(g3, "hello from g3", [g1, g2]);

    // The memory figure: g1 with its group SA and a pairwise SA open (to g2).
    assert.equal(await g1.eval(`KP.connect("g2", "chat")`), true);
    await Promise.all([g1, g2].map((d) => d.when("T.p!==0", `the pairwise SA at ${d.name}`)));
    const usage = (await g1.memory()).usage;
    const empty = await emptyUsage("puckjs");
    const own = usage - empty - appCost;
    const budget = BOARDS.puckjs.budget;
    console.log(`# puckjs with a group SA (3 members, 2 messages received) and a pairwise SA open: usage ${usage}, empty ${empty}, the test's application ${appCost}: keyproxy's own ${own} (budgets: one SA ${budget.varsOneSa}, loaded ${budget.varsLoaded}); bundle built with --groups`);
    assert.ok(own <= budget.varsLoaded, `own variables ${own} within the Puck.js's loaded budget ${budget.varsLoaded}`);
    assert.equal(await g1.eval("KP.close(T.p)"), true);

    // g3 leaves: its SA closes at once; g1 and g2 get a new key; g3 cannot open the next message.
    cli(["group", "remove", "--group", "team", "--device", "g3", "--data-dir", dataDir]);
    await g3.when(`T.closed.some(function(c){return c[0]===${first}&&c[1]===${CloseReason.Removed};})`, "g3's group SA closed as removed");
    const second = await keyed([g1, g2], first);
    const next = await send(g1, "g3 has left", [g2]);
    assert.equal(await opens(g3, next, "g3 has left"), false, "the member that left cannot open the next message");

    // g3 joins again (a new key it shares with the two), then the fleet revokes it.
    cli(["group", "add", "--group", "team", "--device", "g3", "--data-dir", dataDir]);
    const third = await keyed([g1, g2, g3], second);
    await cliAsync(["fleet", "revoke-device", "--name", `g3@${domain}`, "--fleet-dir", fleetDir, "--mqtt", url]);
    await g3.when(`T.closed.some(function(c){return c[0]===${third}&&c[1]===${CloseReason.Revoked};})`, "g3's group SA closed as revoked");
    await keyed([g1, g2], third);
    const members = JSON.parse(cli(["group", "list", "--json", "--data-dir", dataDir])).groups[0].members;
    assert.deepEqual(members, ["g1", "g2"], "the revoked member left the group");
    for (const d of [g1, g2]) assert.equal((await d.eval<{ dropped: number }>("KP.status()")).dropped, 0, `${d.name} dropped nothing`);
  } finally {
    await rig?.stop();
    await broker?.close();
  }
}, 900_000);
