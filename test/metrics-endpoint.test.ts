// The Prometheus endpoint (gateway/monitor/prometheus.ts, docs/MONITORING.md "Prometheus"): a real
// gateway in this process with --metrics-listen on 127.0.0.1:0, scraped with fetch(); handsets that
// join, register and set up sessions move the counters, gauges and the setup histogram; /healthz
// follows the gateway's state; other paths and methods are refused; no device id reaches a scrape.
// Then the real CLI: `keyproxy gateway --metrics-listen` answers, and a port in use is a sentence.
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { rmSync } from "node:fs";
import { Clock, nodeHandset, provision, startGateway, tempDir, until, type TestGateway } from "./support/harness.ts";
import { fleetGateway } from "./support/fleet-rig.ts";
import { startBroker } from "../gateway/monitor/embedded-broker.ts";
import { Fleet } from "../gateway/fleet/fleet.ts";
import { sessionHandset, stopGateway, type SessionHandset } from "./support/session-rig.ts";
import { startGatewayProcess } from "./support/process.ts";
import { runCli } from "./support/run-cli.ts";
import { gatewayHealth, SetupTimer } from "../gateway/monitor/prometheus.ts";
import type { LogRecord } from "../gateway/log/logger.ts";

const LOOPBACK_ANY_PORT = { host: "127.0.0.1", port: 0 };

/** The samples of a Prometheus text exposition: "name{labels}" (as written) -> value. */
function parseExposition(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$/.exec(line);
    assert.ok(m, `an exposition line: ${line}`);
    samples.set(m[1], Number(m[2]));
  }
  return samples;
}

function metricsUrl(t: TestGateway, path: string): string {
  const a = t.gw.metrics!.address;
  return `http://${a.host}:${a.port}${path}`;
}

async function scrape(t: TestGateway): Promise<{ samples: Map<string, number>; text: string }> {
  const res = await fetch(metricsUrl(t, "/metrics"));
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
  const text = await res.text();
  return { samples: parseExposition(text), text };
}

/** Scrapes until pred holds of the samples (the counters move as the gateway handles frames). */
async function scrapeUntil(t: TestGateway, what: string, pred: (s: Map<string, number>) => boolean): Promise<Map<string, number>> {
  const end = Date.now() + 5000;
  for (;;) {
    const { samples } = await scrape(t);
    if (pred(samples)) return samples;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test("metrics: a handset's join moves the joins counter, the connection gauge and registrations; no device id in a scrape", async () => {
  const t = await startGateway({ metricsListen: LOOPBACK_ANY_PORT });
  let h: Awaited<ReturnType<typeof nodeHandset>> | undefined;
  try {
    const before = (await scrape(t)).samples;
    assert.equal(before.get("keyproxy_joins_total"), 0);
    assert.equal(before.get('keyproxy_link_connections{state="joined"}'), 0);
    assert.equal(before.get('keyproxy_registrations_total{kind="new"}'), 0);
    // Without a fleet there is no list: its gauges have no sample at all (not a misleading 0).
    assert.equal([...before.keys()].some((k) => k.startsWith("keyproxy_revocation_list")), false);

    const id = "metrics-handset-7f3a";
    h = await nodeHandset(t.gw, id, await provision(t.gw, id));
    await until(() => h!.h.status().registered, "the handset to register");
    const after = await scrapeUntil(t, "the join in the metrics", (s) => s.get("keyproxy_joins_total") === 1);
    assert.equal(after.get('keyproxy_link_connections{state="joined"}'), 1);
    assert.equal(after.get('keyproxy_registrations_total{kind="new"}'), 1);
    assert.equal(after.get("keyproxy_join_rejects_total"), 0);
    assert.ok((after.get("keyproxy_frames_in_total") ?? 0) >= 2, "the join and the registration came in as frames");

    // A join naming a device that does not exist: rejected, counted, and its name is nowhere.
    const ghost = "ghost-device-91c2";
    const g = await nodeHandset(t.gw, ghost, new Uint8Array(16));
    await until(() => t.events("join-rejected").length > 0, "the ghost's join to be rejected");
    g.close();
    const rejected = await scrapeUntil(t, "the rejected join in the metrics", (s) => s.get("keyproxy_join_rejects_total") === 1);
    assert.equal(rejected.get("keyproxy_joins_total"), 1);
    const { text } = await scrape(t);
    assert.equal(text.includes(id), false, "the device id is not in the exposition");
    assert.equal(text.includes(ghost), false, "a tried name is not in the exposition");

    h.close();
    await scrapeUntil(t, "the link gauge back to 0", (s) => s.get('keyproxy_link_connections{state="joined"}') === 0);
  } finally {
    h?.close();
    await stopGateway(t);
  }
});

test("metrics: a session inside the gateway moves requested, up and SAs, and is timed; a refused one is counted", async () => {
  const t = await startGateway({ metricsListen: LOOPBACK_ANY_PORT });
  const devs: SessionHandset[] = [];
  try {
    await t.gw.policy.setDefault("allow");
    for (const id of ["caller-a1", "callee-b2"]) devs.push(await sessionHandset(t.gw, id, await provision(t.gw, id)));
    await until(() => devs.every((d) => d.h.status().registered), "both handsets registered");
    const [a, b] = devs;
    b.h.onRequest = () => true;
    assert.equal(a.h.connect(b.id, "chat"), true);
    await until(() => a.h.sas.some((s) => s.ready) && b.h.sas.some((s) => s.ready), "an SA between the two");
    const up = await scrapeUntil(t, "the SA in the metrics", (s) => s.get('keyproxy_session_setups_up_total{scope="local"}') === 1);
    assert.equal(up.get('keyproxy_session_setups_requested_total{scope="local"}'), 1);
    assert.equal(up.get('keyproxy_sas{scope="local"}'), 1);
    assert.equal(up.get('keyproxy_session_setup_seconds_count{scope="local"}'), 1, "the setup was timed");
    assert.equal(up.get('keyproxy_session_setup_seconds_bucket{le="+Inf",scope="local"}'), 1);
    assert.equal(up.get('keyproxy_session_setups_refused_total{scope="local"}'), 0);
    assert.equal(up.has('keyproxy_sas{scope="across"}'), false, "no fleet, no across series");

    // A call to a name nobody has: refused, counted, not timed.
    assert.equal(a.h.connect("nobody-here", "chat"), true);
    const refused = await scrapeUntil(t, "the refusal in the metrics", (s) => s.get('keyproxy_session_setups_refused_total{scope="local"}') === 1);
    assert.equal(refused.get('keyproxy_session_setups_requested_total{scope="local"}'), 2);
    assert.equal(refused.get('keyproxy_session_setup_seconds_count{scope="local"}'), 1);
  } finally {
    for (const d of devs) d.close();
    await stopGateway(t);
  }
});

test("metrics: with the fleet on, the across series and the revocation list's serial and age (by the gateway's clock)", async () => {
  const clock = new Clock();
  const broker = await startBroker(LOOPBACK_ANY_PORT);
  const fleetDir = tempDir("kp-metrics-fleet-");
  let t: TestGateway | undefined;
  try {
    const fleet = Fleet.create(fleetDir, "kp-metrics-fleet", clock.now());
    t = await fleetGateway("north.example", fleet, broker, clock.now, { metricsListen: LOOPBACK_ANY_PORT });
    const first = (await scrape(t)).samples;
    assert.equal(first.get('keyproxy_revocation_list_serial{fleet="kp-metrics-fleet"}'), 1);
    assert.equal(first.get('keyproxy_revocation_list_age_seconds{fleet="kp-metrics-fleet"}'), 0);
    assert.equal(first.get('keyproxy_sas{scope="across"}'), 0);
    assert.equal(first.get('keyproxy_session_setups_requested_total{scope="across"}'), 0);
    clock.advance(3600);
    const later = (await scrape(t)).samples;
    assert.equal(later.get('keyproxy_revocation_list_age_seconds{fleet="kp-metrics-fleet"}'), 3600);
  } finally {
    if (t) await stopGateway(t);
    await broker.close();
    rmSync(fleetDir, { recursive: true, force: true });
  }
});

test("healthz: 200 ok while serving, 503 with the reason once the link port is closed; other paths 404, other methods 405", async () => {
  const t = await startGateway({ metricsListen: LOOPBACK_ANY_PORT });
  try {
    const ok = await fetch(metricsUrl(t, "/healthz"));
    assert.equal(ok.status, 200);
    assert.equal(await ok.text(), "ok\n", "no MQTT: nothing said of a broker");
    const head = await fetch(metricsUrl(t, "/healthz"), { method: "HEAD" });
    assert.equal(head.status, 200);

    for (const path of ["/", "/metrics/", "/health", "/healthz/x", "/../etc/passwd"]) {
      const r = await fetch(metricsUrl(t, path));
      assert.equal(r.status, 404, path);
      await r.arrayBuffer();
    }
    const post = await fetch(metricsUrl(t, "/metrics"), { method: "POST", body: "x" });
    assert.equal(post.status, 405);
    assert.equal(post.headers.get("allow"), "GET, HEAD");
    await post.arrayBuffer();

    // The link port stops listening (as it does first thing when the gateway stops): unhealthy.
    await t.gw.links.close();
    const down = await fetch(metricsUrl(t, "/healthz"));
    assert.equal(down.status, 503);
    assert.equal(await down.text(), "unavailable: the link server is not listening\n");
  } finally {
    await stopGateway(t);
  }
});

test("healthz: with MQTT the body says whether the broker is connected, and health does not depend on it", async () => {
  const t = await startGateway({ metricsListen: LOOPBACK_ANY_PORT, mqtt: { embedded: LOOPBACK_ANY_PORT } });
  try {
    await until(() => t.events("mqtt-connected").length > 0, "the publisher to connect");
    const r = await fetch(metricsUrl(t, "/healthz"));
    assert.equal(r.status, 200);
    assert.equal(await r.text(), "ok\nmqtt broker: connected\n");
  } finally {
    await stopGateway(t);
  }
});

test("gatewayHealth: stopping, a closed registry or a closed link port is unhealthy; MQTT is reported, not judged", () => {
  const serving = { stopping: false, registryOpen: true, linkListening: true };
  assert.deepEqual(gatewayHealth(serving), { ok: true, mqtt: undefined });
  assert.deepEqual(gatewayHealth({ ...serving, mqttConnected: false }), { ok: true, mqtt: false });
  assert.deepEqual(gatewayHealth({ ...serving, stopping: true }), { ok: false, reason: "the gateway is stopping" });
  assert.deepEqual(gatewayHealth({ ...serving, registryOpen: false }), { ok: false, reason: "the registry is closed" });
  assert.deepEqual(gatewayHealth({ ...serving, linkListening: false }), { ok: false, reason: "the link server is not listening" });
});

test("SetupTimer: pairs a request with its SA, drops refused ones, ignores rekeys, and stays bounded", () => {
  let ms = 0;
  const seen: [string, number][] = [];
  const timer = new SetupTimer((scope, s) => seen.push([scope, s]), () => ms);
  const rec = (event: string, device: string, peer: string): LogRecord => ({ ts: "", level: "info", event, device, peer });
  timer.onRecord(rec("session-requested", "a", "b"));
  ms = 250;
  timer.onRecord(rec("session-up", "a", "b"));
  timer.onRecord(rec("xsession-requested", "a", "b@south"));
  ms = 1250;
  timer.onRecord(rec("xsession-up", "a", "b@south"));
  assert.deepEqual(seen, [["local", 0.25], ["across", 1]]);

  timer.onRecord(rec("session-requested", "a", "c"));
  timer.onRecord(rec("session-rejected", "a", "c"));
  timer.onRecord(rec("session-up", "a", "c"));
  timer.onRecord(rec("session-rekeyed", "a", "b"));
  assert.equal(seen.length, 2, "a refused request and a rekey are not timed");
  assert.equal(timer.pending, 0);

  // Requests that never come up (anyone may send many) do not grow the table without bound.
  for (let i = 0; i < 5000; i++) timer.onRecord(rec("session-requested", `d${i}`, "b"));
  assert.ok(timer.pending <= 1000, `${timer.pending} clocks kept`);
  ms += 61_000;
  timer.onRecord(rec("session-requested", "late", "b"));
  assert.equal(timer.pending, 1, "clocks older than a minute are forgotten");
});

test("CLI: keyproxy gateway --metrics-listen serves /metrics", async () => {
  const dir = tempDir("kp-metrics-cli-");
  const gw = await startGatewayProcess(`${dir}/data`, 0, ["--no-mqtt", "--metrics-listen", "127.0.0.1:0"]);
  try {
    const serving = gw.events("metrics-serving");
    assert.equal(serving.length, 1);
    const res = await fetch(`http://${serving[0].listen}/metrics`);
    assert.equal(res.status, 200);
    const samples = parseExposition(await res.text());
    assert.equal(samples.get("keyproxy_joins_total"), 0);
    const health = await fetch(`http://${serving[0].listen}/healthz`);
    assert.equal(health.status, 200);
    await health.arrayBuffer();
  } finally {
    assert.equal(await gw.stop(), 0);
  }
});

test("CLI: --metrics-listen on a port in use is a sentence naming the address and the flag, exit 1", async () => {
  const taken = net.createServer();
  await new Promise<void>((r) => taken.listen(0, "127.0.0.1", () => r()));
  const port = (taken.address() as net.AddressInfo).port;
  try {
    const r = await runCli(["gateway", "--data-dir", `${tempDir("kp-metrics-inuse-")}/data`, "--listen", "127.0.0.1:0", "--no-mqtt", "--metrics-listen", `127.0.0.1:${port}`]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, new RegExp(`cannot serve metrics on 127\\.0\\.0\\.1:${port}: the address is in use .*--metrics-listen`));
    assert.doesNotMatch(r.stderr, /^\s+at /m, "no stack trace");
  } finally {
    await new Promise((r) => taken.close(r));
  }
});
