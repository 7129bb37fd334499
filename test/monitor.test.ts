// Monitoring over MQTT (docs/MONITORING.md). Against the in-process broker (aedes, gateway/monitor/embedded-broker.ts,
// run here in the test process so that it outlives a killed gateway) always, and against Mosquitto when
// KEYPROXY_TEST_MQTT_URL names one (CI starts it in .ci/run): a gateway process started through the
// CLI, two Puck.js handsets on the real bundle; the retained status and device states, events and
// metrics; `keyproxy monitor`; a restart; SIGKILL and the last-will; and a scan of every MQTT payload
// and every log line for every secret the gateway holds.
import { onEachBroker } from "./support/brokers.ts";
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import net from "node:net";
import { randomBytes } from "node:crypto";
import fc from "fast-check";
import { connect, type MqttClient } from "mqtt";
import { buildFirmware } from "../flash/build.ts";
import { startSim } from "../emulator/sim.ts";
import { openStore, Gateway } from "../gateway/gateway.ts";
import { startBroker } from "../gateway/monitor/embedded-broker.ts";
import { loadOrCreateGatewayKey } from "../gateway/fleet/identity.ts";
import { Logger } from "../gateway/log/logger.ts";
import { escapeTopicLevel, unescapeTopicLevel, parseTopic, topics, Outbox, type DeviceState, type GatewayStatus, type Metrics } from "../gateway/monitor/monitor.ts";
import { FleetView } from "../cli/monitor-cmd.ts";
import { CLI, startGatewayProcess, type GatewayProcess } from "./support/process.ts";
import { forms, leaks } from "./support/leaks.ts";
import { tempDir, until } from "./support/harness.ts";

// ---- helpers --------------------------------------------------------------------------------------

type Received = { topic: string; payload: Buffer; retain: boolean };

/** A client that records every message on keyproxy/#, from the moment it has subscribed. */
async function recorder(url: string): Promise<{ client: MqttClient; messages: Received[] }> {
  const messages: Received[] = [];
  const client = connect(url, { protocolVersion: 4, reconnectPeriod: 500 });
  client.on("message", (topic, payload, p) => messages.push({ topic, payload: Buffer.from(payload), retain: p.retain }));
  client.on("error", () => {});
  await new Promise<void>((resolve, reject) => {
    client.once("connect", () => client.subscribe("keyproxy/#", { qos: 1 }, (e) => (e ? reject(e) : resolve())));
    client.once("error", reject);
  });
  return { client, messages };
}

/** What the broker holds retained under a gateway's topics, as a new subscriber sees it. */
async function retained(url: string, gatewayId: string): Promise<Map<string, string>> {
  const r = await recorder(url);
  await new Promise((res) => setTimeout(res, 400));
  await r.client.endAsync();
  const prefix = topics.status(gatewayId).replace(/status$/, "");
  const out = new Map<string, string>();
  for (const m of r.messages) if (m.retain && m.topic.startsWith(prefix)) out.set(m.topic, m.payload.toString());
  return out;
}

function json<T>(s: string | undefined): T {
  assert.ok(s !== undefined && s.length > 0, "a retained message is there");
  return JSON.parse(s) as T;
}

/** Runs the CLI, returns its exit code and output. */
function runCli(args: string[], ms = 20000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (b) => (stdout += b));
    child.stderr.on("data", (b) => (stderr += b));
    const t = setTimeout(() => { child.kill("SIGKILL"); reject(new Error(`keyproxy ${args.join(" ")} did not finish:\n${stdout}\n${stderr}`)); }, ms);
    child.once("exit", (code) => { clearTimeout(t); resolve({ code, stdout, stderr }); });
  });
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

// ---- topics and the outbox ------------------------------------------------------------------------

test("topic levels: wildcards, separators and control characters are escaped, one-to-one", async () => {
  assert.equal(escapeTopicLevel("gateway.local"), "gateway.local");
  assert.equal(escapeTopicLevel("a/b+c#d%e\u0000"), "a%2Fb%2Bc%23d%25e%00");
  assert.equal(topics.deviceState("lab/+", "sim#1"), "keyproxy/v1/lab%2F%2B/devices/sim%231/state");
  assert.deepEqual(parseTopic("keyproxy/v1/lab%2F%2B/devices/sim%231/state"), { kind: "device", gateway: "lab/+", device: "sim#1" });
  assert.equal(parseTopic("keyproxy/v1/x/devices/y/other"), undefined);
  assert.equal(parseTopic("other/v1/x/status"), undefined);
  fc.assert(fc.property(fc.string({ unit: "binary" }), fc.string({ unit: "binary" }), (gw, dev) => {
    const e = escapeTopicLevel(gw);
    assert.ok(!/[/+#\u0000]/.test(e), "no separator, wildcard or NUL survives");
    assert.equal(unescapeTopicLevel(e), gw);
    for (const kind of ["status", "events", "metrics"] as const) assert.deepEqual(parseTopic(topics[kind](gw)), { kind, gateway: gw });
    assert.deepEqual(parseTopic(topics.deviceState(gw, dev)), { kind: "device", gateway: gw, device: dev });
  }), { numRuns: 500 });
});

test("the outbox is bounded: events are dropped and counted, retained states coalesce and survive", async () => {
  let connected = false;
  const sent: string[] = [];
  const box = new Outbox(5, (m, done) => { sent.push(`${m.topic}=${m.payload}`); done(); }, () => connected);
  for (let i = 0; i < 3; i++) box.push({ topic: "s/a", payload: `a${i}`, qos: 1, retain: true });
  for (let i = 0; i < 10; i++) box.push({ topic: "e", payload: `e${i}`, qos: 0, retain: false });
  assert.equal(box.queued, 5, "never more than the limit waits");
  assert.equal(box.dropped, 6);
  box.push({ topic: "s/b", payload: "b", qos: 1, retain: true });
  assert.equal(box.queued, 5);
  assert.equal(box.dropped, 7, "a new state displaces an event, and that is counted");
  connected = true;
  box.pump();
  assert.deepEqual(sent, ["s/a=a2", "e=e1", "e=e2", "e=e3", "s/b=b"]);
  assert.equal(box.published, 5);
  assert.equal(box.queued, 0);
});

test("a gateway whose broker is away starts, keeps working and stops at once; drops are counted", async () => {
  const port = await freePort(); // nothing listens there
  const lines: string[] = [];
  const gw = await Gateway.start({ dataDir: tempDir(), listen: { host: "127.0.0.1", port: 0 }, log: new Logger((l) => lines.push(l)), mqtt: { url: `mqtt://user:hunter2@127.0.0.1:${port}`, queueLimit: 20 } });
  for (let i = 0; i < 100; i++) gw.log.info("noise", { i });
  const p = gw.monitoring!.publisher;
  assert.ok(p.outbox.queued <= 20, `queue bounded (${p.outbox.queued})`);
  assert.ok(p.outbox.dropped >= 80, `drops counted (${p.outbox.dropped})`);
  await until(() => lines.some((l) => l.includes("mqtt-unavailable")), "the publisher says the broker is away");
  const t0 = Date.now();
  await gw.stop();
  assert.ok(Date.now() - t0 < 5000, "stop does not hang on an absent broker");
  assert.ok(!lines.some((l) => l.includes("hunter2")), "broker credentials are never logged");
});

test("the embedded broker's address taken: an error that says so, or (the CLI default) publish to the broker there", async () => {
  const other = await startBroker({ host: "127.0.0.1", port: 0 });
  const rec = await recorder(other.url);
  const lines: string[] = [];
  try {
    const dataDir = tempDir();
    await assert.rejects(
      Gateway.start({ dataDir, listen: { host: "127.0.0.1", port: 0 }, log: new Logger((l) => lines.push(l)), mqtt: { embedded: { host: "127.0.0.1", port: other.port } } }),
      /embedded MQTT broker cannot listen on 127\.0\.0\.1:\d+: the port is in use/,
    );
    const gw = await Gateway.start({ dataDir, listen: { host: "127.0.0.1", port: 0 }, id: "shared", log: new Logger((l) => lines.push(l)), mqtt: { embedded: { host: "127.0.0.1", port: other.port }, orUseExisting: true } });
    try {
      await until(() => rec.messages.some((m) => m.topic === topics.status("shared") && JSON.parse(m.payload.toString()).state === "online"), "the status on the broker that was there");
      assert.ok(lines.some((l) => l.includes('"event":"mqtt-broker-not-started"')));
    } finally {
      await gw.stop();
    }
  } finally {
    await rec.client.endAsync();
    await other.close();
  }
});

test("the monitor's view: built from messages alone, robust to junk on the broker", async () => {
  const v = new FleetView(2);
  const status: GatewayStatus = { state: "online", since: "2030-01-01T00:00:00.000Z", version: "0.1.0", listen: "127.0.0.1:7447", run: "r" };
  const dev: DeviceState = { device: "d/1", board: "puckjs", online: true, registered: true, registeredUntil: new Date(Date.now() + 200_500).toISOString(), revoked: false, joinCounter: 3, lastJoin: null, joinRejects: 0, framesDropped: 1, firmware: "0.1.0-3ca9ccef", memoryUsed: 943, memoryTotal: 2630 };
  assert.match(v.apply(topics.status("g+1"), Buffer.from(JSON.stringify(status)))!, /gateway g\+1 online/);
  assert.match(v.apply(topics.deviceState("g+1", "d/1"), Buffer.from(JSON.stringify(dev)))!, /handset d\/1 @ g\+1: linked, registered, (199|200)s left/);
  for (let i = 0; i < 3; i++) v.apply(topics.events("g+1"), Buffer.from(JSON.stringify({ ts: new Date().toISOString(), level: "info", event: `e${i}` })));
  assert.equal(v.apply(topics.events("g+1"), Buffer.from("not json")), undefined);
  assert.equal(v.apply("keyproxy/v1/g/unknown", Buffer.from("{}")), undefined);
  const out = v.render("title");
  assert.match(out, /^g\+1 +online/m);
  assert.match(out, /^HANDSETS @ g\+1$/m);
  assert.match(out, /^d\/1 +linked +\d+s left +puckjs +3 +0 +1 +0\.1\.0-3ca9ccef +943\/2630$/m);
  assert.ok(!out.includes(" e0"), "only the newest events are kept");
  assert.ok(out.includes(" e2"));
  v.apply(topics.status("g+1"), Buffer.from(JSON.stringify({ ...status, state: "offline" })));
  assert.match(v.render("t"), /^d\/1 +unknown +/m, "a handset of an offline gateway is not shown as linked");
  v.apply(topics.deviceState("g+1", "d/1"), Buffer.alloc(0));
  assert.ok(!/^d\/1/m.test(v.render("t")), "a cleared retained state removes the handset");
});

// ---- end to end, per broker -----------------------------------------------------------------------

const firmware = buildFirmware({ board: "puckjs", outDir: tempDir("kp-build-") });

async function endToEnd(url: string): Promise<void> {
  const build = await firmware;
  assert.ok(build.ok, build.problems.join("\n"));
  // Wildcards and a separator in the id: the topics must escape them. Such an id cannot be a domain,
  // so this gateway runs without the fleet (sessions across gateways are test/crossgw-e2e.test.ts's).
  const gatewayId = `lab/+#-${randomBytes(3).toString("hex")}`;
  const dataDir = tempDir("kp-mon-");
  const rec = await recorder(url);
  const procs: GatewayProcess[] = [];
  const outputs: string[] = [];
  let gw: GatewayProcess | undefined;
  let sim: Awaited<ReturnType<typeof startSim>> | undefined;
  const statusTopic = topics.status(gatewayId);
  const stateOf = (m: Map<string, string>, dev: string) => json<DeviceState>(m.get(topics.deviceState(gatewayId, dev)));
  try {
    gw = await startGatewayProcess(dataDir, 0, ["--mqtt", url, "--id", gatewayId, "--metrics", "1", "--no-fleet"]);
    procs.push(gw);
    sim = await startSim({ dataDir, gateway: { host: "127.0.0.1", port: gw.port }, count: 2, board: "puckjs", bundle: build.code, lifetime: 600 });
    const live = () => {
      const m = new Map<string, string>();
      for (const x of rec.messages) m.set(x.topic, x.payload.toString());
      return m;
    };
    await until(() => {
      const m = live();
      return ["sim-1", "sim-2"].every((d) => { const s = m.get(topics.deviceState(gatewayId, d)); return !!s && JSON.parse(s).online && JSON.parse(s).registered; });
    }, "both handsets online and registered on MQTT", 30000);

    // Retained, as a new subscriber sees it.
    let r = await retained(url, gatewayId);
    const first = json<GatewayStatus>(r.get(statusTopic));
    assert.equal(first.state, "online");
    assert.equal(first.listen, `127.0.0.1:${gw.port}`);
    const store = await openStore(dataDir);
    const regs = [(await store.getRegistration("sim-1"))!, (await store.getRegistration("sim-2"))!];
    await store.close();
    for (const [i, d] of ["sim-1", "sim-2"].entries()) {
      const s = stateOf(r, d);
      assert.deepEqual({ online: s.online, registered: s.registered, board: s.board, joinCounter: s.joinCounter }, { online: true, registered: true, board: "puckjs", joinCounter: 1 });
      assert.equal(s.registeredUntil, new Date(regs[i].expiresAt * 1000).toISOString());
      // What the handset reported when it registered: the bundle's id, its variables in use, and the
      // board's pool beside them.
      assert.equal(s.firmware, build.firmware, "the firmware id the build gave the bundle");
      assert.match(s.firmware!, /^\d+\.\d+\.\d+[^ ]*-[0-9a-f]{8}$/);
      assert.equal(s.memoryUsed, regs[i].memoryUsed, "the variables in use the handset reported");
      assert.ok(s.memoryUsed! > 0 && s.memoryUsed! <= 2630, `a real count from process.memory(): ${s.memoryUsed}`);
      assert.equal(s.memoryTotal, 2630, "Puck.js's variable pool (boards/index.ts)");
    }
    // Events: one per log record, in order.
    const events = rec.messages.filter((m) => m.topic === topics.events(gatewayId)).map((m) => JSON.parse(m.payload.toString()));
    assert.deepEqual(events.filter((e) => e.event === "joined").map((e) => e.device).sort(), ["sim-1", "sim-2"]);
    assert.deepEqual(events.filter((e) => e.event === "registered").map((e) => e.device).sort(), ["sim-1", "sim-2"]);
    // The metrics follow a registration within a second (metricsSoon), so the message that counts the
    // second registration may come after both states said registered; the one before it counted one.
    const metricsMessages = () => rec.messages.filter((m) => m.topic === topics.metrics(gatewayId)).map((m) => JSON.parse(m.payload.toString()) as Metrics);
    await until(() => metricsMessages().some((x) => x.devicesRegistered === 2), "metrics count both registrations", 5000);
    const metrics = metricsMessages().find((x) => x.devicesRegistered === 2)!;
    assert.deepEqual({ joins: metrics.joins, devicesLinked: metrics.devicesLinked, devicesKnown: metrics.devicesKnown }, { joins: 2, devicesLinked: 2, devicesKnown: 2 });

    // The monitor shows the fleet.
    const mon = await runCli(["monitor", "--mqtt", url, "--once"]);
    outputs.push(mon.stdout, mon.stderr);
    assert.equal(mon.code, 0, mon.stderr);
    assert.match(mon.stdout, new RegExp(`^${gatewayId.replace(/[+#/]/g, "\\$&")} +online`, "m"));
    for (const d of ["sim-1", "sim-2"]) assert.match(mon.stdout, new RegExp(`^${d} +linked +\\d+s left +puckjs +1 .* ${build.firmware.replace(/\./g, "\\.")} +\\d+/2630$`, "m"));
    const follow = await runCli(["monitor", "--mqtt", url, "--for", "1"]);
    outputs.push(follow.stdout, follow.stderr);
    assert.equal(follow.code, 0, follow.stderr);
    assert.match(follow.stdout, /^handset sim-1 @ .*: linked, registered/m, "plain lines when stdout is not a terminal");

    // A clean stop: status offline ("stopped"), and the handsets shown unlinked.
    sim.stop();
    sim = undefined;
    assert.equal(await gw.stop(), 0);
    r = await retained(url, gatewayId);
    assert.deepEqual([json<GatewayStatus>(r.get(statusTopic)).state, json<GatewayStatus>(r.get(statusTopic)).reason], ["offline", "stopped"]);
    for (const d of ["sim-1", "sim-2"]) assert.equal(stateOf(r, d).online, false);

    // Restart on the same data directory: online with a new since and run; device states from the registry.
    gw = await startGatewayProcess(dataDir, 0, ["--mqtt", url, "--id", gatewayId, "--no-fleet"]);
    procs.push(gw);
    await until(() => rec.messages.some((m) => m.topic === statusTopic && JSON.parse(m.payload.toString()).state === "online" && JSON.parse(m.payload.toString()).run !== first.run), "the restarted gateway's status", 10000);
    await new Promise((res) => setTimeout(res, 300));
    r = await retained(url, gatewayId);
    const second = json<GatewayStatus>(r.get(statusTopic));
    assert.equal(second.state, "online");
    assert.notEqual(second.run, first.run);
    assert.ok(Date.parse(second.since!) > Date.parse(first.since!), "a new since");
    for (const [i, d] of ["sim-1", "sim-2"].entries()) {
      const s = stateOf(r, d);
      assert.deepEqual({ online: s.online, registered: s.registered, joinCounter: s.joinCounter, lastJoin: s.lastJoin }, { online: false, registered: true, joinCounter: 1, lastJoin: null });
      assert.equal(s.registeredUntil, new Date(regs[i].expiresAt * 1000).toISOString(), "a device registered before shows its registration");
      assert.deepEqual([s.firmware, s.memoryUsed], [build.firmware, regs[i].memoryUsed], "and what it reported then, from the registry");
    }

    // SIGKILL: the broker publishes the last-will, retained.
    await gw.stop("SIGKILL");
    gw = undefined;
    await until(() => rec.messages.some((m) => m.topic === statusTopic && JSON.parse(m.payload.toString()).reason === "connection lost"), "the last-will", 30000);
    r = await retained(url, gatewayId);
    const will = json<GatewayStatus>(r.get(statusTopic));
    assert.deepEqual([will.state, will.run, will.reason], ["offline", second.run, "connection lost"]);
    const afterKill = await runCli(["monitor", "--mqtt", url, "--once"]);
    outputs.push(afterKill.stdout, afterKill.stderr);
    assert.match(afterKill.stdout, /^sim-1 +unknown /m);

    // No key material anywhere: root keys, identity seeds, the gateway's signing seed.
    const secrets = new Map<string, Uint8Array>();
    const s2 = await openStore(dataDir);
    for (const d of ["sim-1", "sim-2"]) {
      const row = (await s2.getDevice(d))!;
      secrets.set(`${d} root key`, row.rootKey);
      assert.ok(row.identitySeed, `${d} has an identity`);
      secrets.set(`${d} identity seed`, row.identitySeed!);
    }
    await s2.close();
    secrets.set("gateway signing seed", loadOrCreateGatewayKey(dataDir).key.seed);
    const logLines = procs.flatMap((p) => p.lines);
    assert.ok(logLines.some((l) => l.includes('"event":"registered"')) && logLines.some((l) => l.includes('"event":"gateway-stopped"')), "both runs' logs are scanned");
    const haystacks = [...rec.messages.flatMap((m) => [Buffer.from(m.topic), m.payload]), ...logLines.map((l) => Buffer.from(l)), ...outputs.map((o) => Buffer.from(o))];
    assert.ok(rec.messages.length > 20, `enough to scan (${rec.messages.length} messages)`);
    assert.deepEqual(leaks(secrets, haystacks), []);
    // The scan itself can fail: a secret planted in any form is found.
    for (const f of forms(secrets.get("sim-1 root key")!)) assert.deepEqual(leaks(secrets, [Buffer.concat([Buffer.from("x"), f, Buffer.from("y")])]), ["sim-1 root key"]);
  } finally {
    sim?.stop();
    await gw?.stop("SIGKILL");
    await rec.client.endAsync();
  }
}

onEachBroker("end to end over the in-process broker (aedes): states, events, metrics, monitor, restart, last-will, no key material", "end to end over Mosquitto (KEYPROXY_TEST_MQTT_URL): the same", endToEnd);

// ---- the first run --------------------------------------------------------------------------------

test("first run: keyproxy gateway --demo boots handsets on the embedded broker and narrates them", async () => {
  const dataDir = tempDir("kp-demo-");
  const child = spawn(process.execPath, [CLI, "gateway", "--data-dir", dataDir, "--listen", "127.0.0.1:0", "--mqtt-listen", "127.0.0.1:0", "--demo", "2"], { stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (b) => (stdout += b));
  child.stderr.on("data", (b) => (stderr += b));
  try {
    await until(() => /registered sim-1 /.test(stdout) && /registered sim-2 /.test(stdout), `both demo handsets registered:\n${stdout}\n${stderr}`, 30000);
    assert.match(stdout, /^\d\d:\d\d:\d\d joined sim-1 counter=\d+/m);
    const url = /monitoring on MQTT at (mqtt:\/\/\S+);/.exec(stdout)?.[1];
    assert.ok(url, `the demo says where to watch:\n${stdout}`);
    assert.match(stdout, /mosquitto_sub -h 127\.0\.0\.1 -p \d+ -t 'keyproxy\/#' -v/);
    const mon = await runCli(["monitor", "--mqtt", url, "--once"]);
    assert.equal(mon.code, 0, mon.stderr);
    assert.match(mon.stdout, /^gateway\.local +online/m);
    assert.match(mon.stdout, /^HANDSETS @ gateway\.local$/m);
    assert.match(mon.stdout, /^sim-2 +linked +\d+s left/m);
    // Once both are registered, the handsets talk: an end-to-end session, an echo, a bye.
    await until(() => /sim-1: hung up/.test(stdout) && /sim-2: session 0x[0-9a-f]{8} closed: bye/.test(stdout), `the demo handsets talk:\n${stdout}\n${stderr}`, 30000);
    assert.match(stdout, /session-up sim-1 peer=sim-2 app=demo/);
    for (const i of [1, 2, 3]) assert.match(stdout, new RegExp(`sim-1: got "echo: hello ${i}" from sim-2`));
    assert.equal(stderr, "", "in the demo, the JSON log goes to the data directory, not the terminal");
  } finally {
    const code = await new Promise<number | null>((res) => { if (child.exitCode !== null) res(child.exitCode); child.once("exit", res); child.kill("SIGTERM"); });
    assert.equal(code, 0, `the demo stops cleanly:\n${stderr}`);
  }
});
