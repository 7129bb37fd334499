// What the monitoring publisher reads from the registry (gateway/monitor/monitor.ts): a record about a
// device that cannot have changed its row (a session's) publishes its state from the row last read,
// without a statement; a record that may have (a revocation) reads it again, and so does the periodic
// refresh, which is how a change made by another process shows. On PostgreSQL each of those reads was
// a round trip, and a session's records were most of an instance's statements per setup.
//
// An in-process gateway on the registry engine of the run (harness.ts), the in-process broker, and the
// firmware's Handset engine in Node over TCP (test/support/session-rig.ts).
import { test } from "node:test";
import assert from "node:assert/strict";
import mqtt from "mqtt";
import { startBroker } from "../gateway/monitor/embedded-broker.ts";
import { escapeTopicLevel, leavesRegistryAlone, TOPIC_ROOT, topics, type DeviceState } from "../gateway/monitor/monitor.ts";
import { provision, startGateway, until } from "./support/harness.ts";
import { sessionHandset, stopGateway } from "./support/session-rig.ts";

const APP = "chat";

test("which records read the registry again: a session's do not, a join's and a revocation's do", () => {
  for (const e of ["session-requested", "session-keys-distributed", "session-down", "xsession-down", "link-closed", "frame dropped", "malformed frame"]) assert.equal(leavesRegistryAlone(e), true, e);
  for (const e of ["joined", "join-rejected", "registered", "renewed", "deregistered", "device-revoked", "group-member-revoked", "anything-new"]) assert.equal(leavesRegistryAlone(e), false, e);
});

test("a session's records publish states from the row last read; a revocation and the periodic refresh read the registry again", async () => {
  const broker = await startBroker({ host: "127.0.0.1", port: 0 });
  const url = broker.url;
  const t = await startGateway({ mqtt: { url, metricsSeconds: 1 } });
  const watcher = await mqtt.connectAsync(url);
  const devs: Awaited<ReturnType<typeof sessionHandset>>[] = [];
  try {
    const states = new Map<string, DeviceState>();
    let metrics = 0;
    watcher.on("message", (topic, payload) => {
      if (topic === topics.metrics(t.gw.id)) metrics++;
      for (const d of ["mon-a", "mon-b"]) if (topic === topics.deviceState(t.gw.id, d) && payload.length) states.set(d, JSON.parse(payload.toString()));
    });
    await watcher.subscribeAsync([`${TOPIC_ROOT}/${escapeTopicLevel(t.gw.id)}/devices/+/state`, topics.metrics(t.gw.id)]);
    await t.gw.policy.setDefault("allow");
    for (const id of ["mon-a", "mon-b"]) devs.push(await sessionHandset(t.gw, id, await provision(t.gw, id)));
    const [a, b] = devs;
    await until(() => devs.every((d) => d.h.status().registered) && ["mon-a", "mon-b"].every((d) => states.get(d)?.registered && states.get(d)?.online), "both registered and online on MQTT");
    // One periodic refresh after the joins and registrations (metrics follow it): whatever reads their
    // records overlapped, every row is read and kept by then.
    const seen = metrics;
    await until(() => metrics > seen + 1, "a periodic refresh after the registrations", 10_000);

    // Reads of a device's row and registration by anyone, counted on the gateway's own store.
    const reads: string[] = [];
    const store = t.gw.store;
    const info = store.getDeviceInfo.bind(store);
    const registration = store.getRegistration.bind(store);
    store.getDeviceInfo = (id) => (reads.push(`device ${id}`), info(id));
    store.getRegistration = (id) => (reads.push(`registration ${id}`), registration(id));
    // The session's records name both devices; their states (unchanged) are built from the rows read
    // when they registered. The broker reads the two registrations itself, to check the request.
    b.h.onRequest = () => true;
    const before = t.logs.length;
    assert.equal(a.h.connect("mon-b", APP), true);
    await until(() => a.h.sas.some((s) => s.ready) && b.h.sas.some((s) => s.ready), "an SA between them");
    const spi = a.h.sas.find((s) => s.ready)!.spi;
    a.h.close(spi);
    await until(() => !b.h.sas.some((s) => s.spi === spi), "the SA closed at both ends");
    await until(() => t.logs.slice(before).some((l) => l.includes('"session-down"')), "the session's last record");
    await new Promise((r) => setTimeout(r, 50)); // the publisher's flush runs on setImmediate
    const recorded = t.logs.slice(before).map((l) => JSON.parse(l)).filter((r) => r.device === "mon-a" || r.device === "mon-b");
    assert.ok(recorded.length >= 2 && recorded.every((r) => leavesRegistryAlone(r.event)), `session records only: ${recorded.map((r) => r.event).join(", ")}`);
    assert.deepEqual(reads, ["registration mon-a", "registration mon-b"], "the broker's two reads; none by the publisher");

    // Any other record about a device reads its row again, once: the next session's records use it.
    reads.length = 0;
    t.gw.log.warn("join-rejected", { device: "mon-a", reason: "a replayed join (written by the test)" });
    await until(() => reads.includes("device mon-a"), "the record read mon-a's row again");
    assert.equal(a.h.connect("mon-b", APP), true);
    await until(() => a.h.sas.filter((s) => s.ready).length === 1 && b.h.sas.filter((s) => s.ready).length === 1, "a second SA");
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(reads.filter((r) => r.startsWith("device")), ["device mon-a"], `one read of the row, kept for the session's records: ${reads.join(", ")}`);

    // A revocation changes the row: its record reads it again, and the state says so.
    reads.length = 0;
    assert.equal(await t.gw.revokeDevice("mon-b", "lost"), true);
    await until(() => states.get("mon-b")?.revoked === true, "mon-b shown revoked");
    assert.ok(reads.includes("device mon-b"), `the revocation's record read the row: ${reads.join(", ")}`);

    // A change by another process (no record here): the periodic refresh (every second here) reads
    // every device and drops the rows kept, so the next session record does not bring back the old one.
    const expiresAt = t.clock.now() + 5;
    await store.query("UPDATE registrations SET expires_at = ? WHERE device_id = ?", [expiresAt, "mon-a"]);
    await until(() => states.get("mon-a")?.registeredUntil === new Date(expiresAt * 1000).toISOString(), "the refresh shows mon-a's new expiry", 10_000);
  } finally {
    for (const d of devs) d.close();
    await watcher.endAsync();
    await stopGateway(t);
    await broker.close();
  }
});
