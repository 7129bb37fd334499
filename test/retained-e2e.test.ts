// A broker restarted without persistence (Mosquitto's default) forgets every retained message: each
// gateway's certificate (which other gateways look up before they can talk to it), the fleet's
// revocation list, the monitoring status, device states and metrics. Gateway processes started through the CLI on a private
// Mosquitto that the test kills and starts again, empty: gateway a is up before the restart, gateway
// b starts after it, and b's handset must still reach a's (a session across, by name@domain).
// Puck.js handsets on the real bundle in the emulator, as in test/crossgw-e2e.test.ts.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import mqtt from "mqtt";
import type { EmulatedDevice } from "../emulator/device.ts";
import { startSim } from "../emulator/sim.ts";
import { buildFirmware } from "../flash/build.ts";
import { revocationTopic } from "../gateway/fleet/trust.ts";
import { readRevocationListUnverified } from "../gateway/fleet/fleet.ts";
import { certificateTopic } from "../gateway/fleet/interlink.ts";
import { topics } from "../gateway/monitor/monitor.ts";
import { tempDir, until } from "./support/harness.ts";
import { findMosquitto, startMosquitto, type PrivateMosquitto } from "./support/mosquitto.ts";
import { CLI, startGatewayProcess, type GatewayProcess } from "./support/process.ts";

const MOSQUITTO = findMosquitto();

const APP = `
global.SPI = 0; global.GOT = [];
KP.onRequest = function (from, app) { return app === "chat"; };
KP.onConnect = function (spi) { SPI = spi; };
KP.onMessage = function (d) { GOT.push(E.toString(d)); };
1`;

/** `keyproxy <args>`, which must succeed. */
function ok(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (b: Buffer) => (out += b.toString()));
    child.stderr.on("data", (b: Buffer) => (out += b.toString()));
    child.on("exit", (code) => (code === 0 ? resolve(out) : reject(new Error(`keyproxy ${args.join(" ")} exited with ${code}:\n${out}`))));
  });
}

/** The retained message on `topic` a new subscriber gets, or undefined when the broker holds none
 *  (the broker sends retained messages right after the SUBACK; a ping round trip after that bounds
 *  the wait without a sleep). */
async function retainedOn(url: string, topic: string): Promise<Buffer | undefined> {
  const c = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0 });
  try {
    let got: Buffer | undefined;
    c.on("message", (t, payload, packet) => {
      if (t === topic && packet.retain && payload.length > 0) got = Buffer.from(payload);
    });
    await c.subscribeAsync(topic, { qos: 1 });
    // A QoS 1 publish to a topic of our own and its PUBACK: the broker has sent everything before it.
    await c.publishAsync(`kp-test/${randomBytes(4).toString("hex")}`, "x", { qos: 1 });
    return got;
  } finally {
    await c.endAsync();
  }
}

interface Side {
  gw: GatewayProcess;
  dev: EmulatedDevice;
  stop(): void;
}

describe("retained state after a broker restart without persistence", { skip: !MOSQUITTO && !process.env.CI ? "no mosquitto here (KEYPROXY_MOSQUITTO, /usr/sbin/mosquitto or PATH)" : false }, () => {
  const run = randomBytes(3).toString("hex");
  const fleetId = `kp-retained-${run}`;
  const domA = `a-${run}.example`;
  const domB = `b-${run}.example`;
  const fleetDir = tempDir("kp-retained-fleet-");
  let broker: PrivateMosquitto;
  let bundle: string;
  const sides: Side[] = [];
  const num = (s: Side, expr: string) => s.dev.eval(expr) as number;

  async function side(domain: string, prefix: string, policy: string[][]): Promise<Side> {
    const dataDir = tempDir(`kp-retained-${prefix}-`);
    await ok(["fleet", "issue-gateway", "--fleet-dir", fleetDir, "--id", domain, "--data-dir", dataDir]);
    for (const [from, to] of policy) await ok(["policy", "allow", "--from", from, "--to", to, "--app", "chat", "--data-dir", dataDir]);
    const gw = await startGatewayProcess(dataDir, 0, ["--id", domain, "--mqtt", broker.url, "--metrics", "60"]);
    const s: Side = { gw, dev: undefined as unknown as EmulatedDevice, stop: () => undefined };
    sides.push(s);
    await until(() => gw.events("interlink-started").length === 1, `${domain}'s interlink`, 15_000);
    const sim = await startSim({ dataDir, gateway: { host: "127.0.0.1", port: gw.port }, count: 1, board: "puckjs", bundle, prefix, lifetime: 600 });
    s.dev = sim.devices[0];
    s.stop = () => sim.stop();
    await until(() => s.dev.eval("KP.status().registered") === true, `${prefix}-1 registered`, 15_000);
    s.dev.eval(APP);
    return s;
  }

  before(async () => {
    broker = await startMosquitto(MOSQUITTO ?? "mosquitto");
    await ok(["fleet", "create", "--id", fleetId, "--fleet-dir", fleetDir]);
    const build = await buildFirmware({ board: "puckjs", outDir: tempDir("kp-build-") });
    assert.ok(build.ok, build.problems.join("\n"));
    bundle = build.code;
  });

  after(async () => {
    for (const s of sides) {
      s.stop();
      await s.gw.stop();
    }
    await broker?.kill();
  });

  test("gateway a, up before the restart, publishes its retained state again; gateway b, started after it, reaches a's domain", async () => {
    const a = await side(domA, "alice", [[`bob-1@${domB}`, "alice-1"]]);
    assert.ok(await retainedOn(broker.url, certificateTopic(domA)), "a's certificate is on the broker before the restart");

    await broker.kill();
    const restartedAt = broker.lines.length;
    await broker.start();
    // Gateway a's clients come back by themselves (they retry every second or two): the broker logs
    // each connection with its client id.
    const reconnected = (prefix: string) => broker.lines.slice(restartedAt).some((l) => l.includes("New client connected") && l.includes(` as ${prefix}`));
    await until(() => reconnected(`kp-interlink-${domA}-`) && reconnected("keyproxy-gw-"), "gateway a's interlink and monitoring back on the broker", 15_000);
    await until(() => a.gw.events("interlink-reconnected").length >= 1, "gateway a's interlink republished", 10_000).catch(() => undefined);

    // Gateway b starts after the restart: it finds a's certificate (retained) and b's handset calls a's.
    const b = await side(domB, "bob", [["bob-1", `alice-1@${domA}`]]);
    b.dev.eval(`KP.connect("alice-1@${domA}", "chat")`);
    await until(() => (num(a, "SPI") !== 0 && num(b, "SPI") === num(a, "SPI")) || num(b, "KP.lastType") === 31, "bob's call answered", 20_000);
    const failures = b.gw.events("xsession-failed").map((e) => String(e.reason));
    assert.deepEqual(failures, [], "gateway b reached gateway a");
    assert.notEqual(num(b, "SPI"), 0, "an SA at both ends");
    assert.equal(b.dev.eval('KP.send(SPI, E.toUint8Array("after the restart"))'), true);
    await until(() => num(a, "GOT.length") === 1, "bob's message at alice", 10_000);
    assert.equal(a.dev.eval("GOT[0]"), "after the restart");

    // Everything else retained is back too: the revocation list the gateways hold, a's status.
    const list = await retainedOn(broker.url, revocationTopic(fleetId));
    assert.ok(list, "the fleet's revocation list is retained again");
    assert.equal(readRevocationListUnverified(new Uint8Array(list)).serial, 1);
    const status = await retainedOn(broker.url, topics.status(domA));
    assert.equal(JSON.parse(String(status)).state, "online", "a's monitoring status is retained again");
    const state = await retainedOn(broker.url, topics.deviceState(domA, "alice-1"));
    assert.equal(JSON.parse(String(state)).device, "alice-1", "so is its handset's state");
    // Metrics come every 60 s here (--metrics 60); the device states' republish brings them sooner.
    assert.ok(await retainedOn(broker.url, topics.metrics(domA)), "and its metrics");
  });
});
