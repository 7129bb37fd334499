// The gateway's BLE central (gateway/ble/), fast: no interpreter. The radio is the double at
// @stoprocent/noble's API (test/support/ble-double.ts); behind each of its peripherals runs the
// firmware's Handset engine in Node, so joins, registrations and every frame are real, and the
// central's own logic runs as it does over a real adapter: piecing, the link server's reassembly,
// several handsets, the connection limit and rotation, reconnects with backoff, a handset walking out
// of range mid-session and coming back.
import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import { test } from "node:test";
import { randomBytes } from "node:crypto";
import { BLE_NAME_PREFIX } from "../firmware/proto/ble.ts";
import { backoffMs } from "../gateway/ble/backoff.ts";
import { BleCentral, centralSettings, MAX_HANDSETS } from "../gateway/ble/central.ts";
import { Logger } from "../gateway/log/logger.ts";
import { loadNoble, poweredOn } from "../gateway/ble/load-noble.ts";
import type { Noble } from "../gateway/ble/noble-api.ts";
import { pieces } from "../gateway/ble/nus.ts";
import { bleSettingsFromFlags } from "../cli/gateway-cmd.ts";
import { UsageError } from "../cli/args.ts";
import { FleetView } from "../cli/monitor-cmd.ts";
import { radioWords } from "../gateway/monitor/fleet-model.ts";
import type { DeviceState } from "../gateway/monitor/monitor.ts";
import { EngineHandset } from "./support/engine-handset.ts";
import { BleDouble, DoublePeripheral } from "./support/ble-double.ts";
import { provision, startGateway, until, type TestGateway } from "./support/harness.ts";

test("pieces: a frame is cut into writes of MTU - 3 bytes, in order, nothing lost", () => {
  const bytes = new Uint8Array(randomBytes(95));
  const at23 = pieces(bytes, null);
  assert.deepEqual(at23.map((p) => p.length), [20, 20, 20, 20, 15]);
  assert.deepEqual(Buffer.concat(at23), Buffer.from(bytes));
  assert.deepEqual(pieces(bytes, 247).map((p) => p.length), [95], "one write at a negotiated MTU of 247");
  assert.deepEqual(pieces(bytes, 50).map((p) => p.length), [47, 47, 1]);
  for (const bad of [0, 10, 22.5, Number.NaN, undefined]) assert.deepEqual(pieces(bytes, bad).map((p) => p.length), [20, 20, 20, 20, 15], `MTU ${bad}: the default`);
  assert.deepEqual(pieces(new Uint8Array(0), null), []);
});

test("backoff: none after no failure, then doubling up to the ceiling, between half and all of it", () => {
  const s = { baseMs: 1000, maxMs: 60_000 };
  assert.equal(backoffMs(0, s, () => 1), 0);
  assert.deepEqual([1, 2, 3, 4].map((n) => backoffMs(n, s, () => 1)), [1000, 2000, 4000, 8000]);
  assert.deepEqual([1, 2, 3, 4].map((n) => backoffMs(n, s, () => 0)), [500, 1000, 2000, 4000]);
  assert.equal(backoffMs(40, s, () => 1), 60_000);
  assert.equal(backoffMs(1000, s, () => 0), 30_000);
});

test("central settings: a bad number is a clear error", () => {
  assert.throws(() => centralSettings({ maxConnections: 0 }), /maxConnections must be a positive whole number, got 0/);
  assert.throws(() => centralSettings({ holdMs: 1.5 }), /holdMs must be a positive whole number/);
  assert.throws(() => centralSettings({ backoff: { baseMs: 5000, maxMs: 1000 } }), /baseMs is above backoff.maxMs/);
  assert.equal(centralSettings({}).maxConnections, 4);
});

test("loading the library: missing, or no usable adapter, is an error that names the fix", async () => {
  await assert.rejects(loadNoble(100, () => Promise.reject(new Error("Cannot find package '@stoprocent/noble'"))), /optional package @stoprocent\/noble.*npm install @stoprocent\/noble/);
  const adapter = (state: string) => Object.assign(new EventEmitter(), { state }) as unknown as Noble;
  await assert.rejects(poweredOn(adapter("unknown"), 20), /not ready \(state "unknown"\).*rfkill.*setcap cap_net_raw,cap_net_admin\+eip/);
  const later = adapter("unknown");
  const p = poweredOn(later, 5000);
  (later as unknown as EventEmitter).emit("stateChange", "unsupported");
  await assert.rejects(p, /no Bluetooth LE adapter.*bluetoothd/);
  const good = adapter("unknown");
  const q = poweredOn(good, 5000);
  (good as unknown as EventEmitter).emit("stateChange", "poweredOn");
  assert.equal(await q, good);
});

interface Rig {
  t: TestGateway;
  radio: BleDouble;
  handsets: EngineHandset[];
  peripherals: DoublePeripheral[];
  stop(): Promise<void>;
}

async function rig(n: number, settings: Record<string, unknown>, mtu: number | null = null): Promise<Rig> {
  const radio = new BleDouble(50);
  // A peripheral that is no keyproxy handset: the central leaves it alone.
  radio.add(new DoublePeripheral("aa0000000001", { localName: "Puck.js 1a2b" }, -50, { open: () => Promise.reject(new Error("must not be opened")), cancel: () => {} }));
  const t = await startGateway({ ble: { noble: radio, settings: { tickMs: 20, backoff: { baseMs: 50, maxMs: 400 }, ...settings } } });
  const handsets: EngineHandset[] = [];
  const peripherals: DoublePeripheral[] = [];
  for (let i = 0; i < n; i++) {
    const id = `ble-${i}`;
    const h = new EngineHandset(id, await provision(t.gw, id));
    handsets.push(h);
    peripherals.push(radio.add(new DoublePeripheral(`c0ffee00000${i}`, { localName: `${BLE_NAME_PREFIX}${id}` }, -40 - i, h, mtu)));
  }
  return { t, radio, handsets, peripherals, stop: () => t.gw.stop() };
}

test("in the gateway: three handsets over two connection slots all join and register, by turns; every write fits the MTU", async () => {
  const r = await rig(3, { maxConnections: 2, holdMs: 300 });
  try {
    await until(() => r.handsets.every((h) => h.lines.some((l) => /^KP registered/.test(l))), "all three registered", 20_000);
    assert.ok(r.radio.maxConnected <= 2, `at most two connected at once, saw ${r.radio.maxConnected}`);
    assert.ok(r.t.events("ble-rotated").length >= 1, "a handset was let go for another's turn");
    for (const p of r.peripherals) {
      assert.ok(p.writes.length > 0);
      assert.ok(p.writes.every((w) => w.length <= 20), "every write fits one ATT write at the default MTU");
    }
    assert.ok(r.peripherals.some((p) => p.writes.some((w) => w.length === 20)), "frames longer than one write were cut");
    assert.ok(r.t.events("ble-handset-seen").every((e) => e.handset !== "Puck.js 1a2b"), "only keyproxy's names are taken");
    assert.equal(r.radio.peripherals[0].connections, 0);
    for (const e of r.t.events("joined")) assert.match(String(e.peer), /^ble c0ffee00000\d$/);
  } finally {
    await r.stop();
  }
});

test("in the gateway: at a negotiated MTU writes are longer, and a handset's state in monitoring shows its radio", async () => {
  const r = await rig(1, {}, 185);
  try {
    await until(() => r.handsets[0].lines.some((l) => /^KP registered/.test(l)), "registered", 10_000);
    assert.ok(r.peripherals[0].writes.some((w) => w.length > 20), "a write of more than 20 bytes at MTU 185");
    assert.ok(r.peripherals[0].writes.every((w) => w.length <= 182));
    const radio = r.t.gw.radios.forDevice("ble-0");
    assert.equal(radio?.connected, true);
    assert.equal(radio?.name, "kp-ble-0");
    assert.equal(radio?.via, "ble");
    assert.equal(radio?.rssi, -40);
  } finally {
    await r.stop();
  }
});

test("in the gateway: a handset walks out of range mid-session, the central backs off, and it comes back and joins again", async () => {
  const r = await rig(1, { stableMs: 60_000, connectTimeoutMs: 300 });
  try {
    const [h] = r.handsets;
    const p = r.peripherals[0];
    await until(() => h.lines.some((l) => /^KP registered/.test(l)), "registered", 10_000);
    const joinsBefore = r.t.events("joined").length;
    p.walkAway();
    await until(() => r.t.gw.radios.forDevice("ble-0")?.connected === false, "the radio shown disconnected", 5000);
    await until(() => !r.t.gw.links.links.has("ble-0"), "the link closed at the gateway", 5000);
    // Out of range for a while: tries fail and back off.
    await until(() => r.t.events("ble-disconnected").some((e) => Number(e.failures) >= 2), "a failed reconnect, backing off", 10_000);
    const waits = r.t.events("ble-disconnected").map((e) => Number(e.retryInMs)).filter((x) => x > 0);
    assert.ok(waits.length >= 2);
    p.comeBack();
    await until(() => r.t.events("joined").length > joinsBefore, "joined again", 10_000);
    await until(() => h.lines.filter((l) => /^KP registered/.test(l)).length >= 2, "registered again", 10_000);
    assert.equal(r.t.gw.radios.forDevice("ble-0")?.connected, true);
    assert.equal(r.t.events("frame dropped").length, 0, "no frame dropped by the gateway");
    const counters = r.t.events("joined").map((e) => Number(e.counter));
    assert.deepEqual(counters, [...counters].sort((a, b) => a - b), "join counters only go up");
    assert.equal(new Set(counters).size, counters.length, "no join counter used twice");
  } finally {
    await r.stop();
  }
});

test("in the gateway: a link the gateway drops drops the radio too, and the central retries with backoff", async () => {
  const r = await rig(1, {});
  try {
    await until(() => r.handsets[0].lines.some((l) => /^KP registered/.test(l)), "registered", 10_000);
    assert.ok(r.t.gw.links.disconnect("ble-0", "test"));
    await until(() => r.t.events("ble-disconnected").length >= 1, "the radio let go", 5000);
    await until(() => r.t.events("joined").length >= 2, "joined again", 10_000);
  } finally {
    await r.stop();
  }
});

test("monitoring: a handset's radio in `keyproxy monitor`, escaped like everything from the broker", () => {
  const view = new FleetView();
  const now = Date.parse("2026-01-01T12:00:00Z");
  view.apply("keyproxy/v1/gw/status", Buffer.from(JSON.stringify({ state: "online", since: "2026-01-01T11:00:00Z", version: "x", listen: "l", run: "r" })));
  const state = (id: string, radio: unknown) => Buffer.from(JSON.stringify({ device: id, board: "puckjs", online: true, registered: false, registeredUntil: null, revoked: false, joinCounter: 1, lastJoin: null, joinRejects: 0, framesDropped: 0, firmware: null, memoryUsed: null, memoryTotal: null, radio }));
  view.apply("keyproxy/v1/gw/devices/near/state", state("near", { name: "kp-near", address: "c0ffee000001", via: "ble", connected: true, rssi: -61, lastSeen: "2026-01-01T12:00:00Z" }));
  view.apply("keyproxy/v1/gw/devices/gone/state", state("gone", { name: "kp-gone", address: "c0ffee000002", via: "bridge\x1b[31m-red", connected: false, rssi: -80, lastSeen: "2026-01-01T11:59:18Z" }));
  view.apply("keyproxy/v1/gw/devices/odd/state", state("odd", { via: 7 }));
  const out = view.render("t", now, 200);
  assert.match(out, /near .* ble -61dBm/);
  assert.match(out, /gone .* bridge\\x1b\[31m-red away 42s/, "a hostile name is shown escaped");
  assert.match(out, /odd .* \?$/m);
  assert.doesNotMatch(out, /\x1b/, "no raw escape reaches the terminal");
  const d = { radio: undefined } as unknown as DeviceState;
  assert.equal(radioWords(d, now), "-");
});

test("CLI: the Bluetooth flags' errors", async () => {
  assert.equal(bleSettingsFromFlags({}), undefined);
  assert.throws(() => bleSettingsFromFlags({ "ble-hold": "5" }), (e: Error) => e instanceof UsageError && /--ble-hold is about the Bluetooth central, which only --ble starts/.test(e.message));
  assert.throws(() => bleSettingsFromFlags({ ble: true, "ble-max-connections": "0" }), UsageError);
  assert.throws(() => bleSettingsFromFlags({ ble: true, "ble-hold": "soon" }), UsageError);
  assert.deepEqual(bleSettingsFromFlags({ ble: true, "ble-max-connections": "7", "ble-hold": "30" }), { maxConnections: 7, holdMs: 30_000 });
});

test("the central keeps at most MAX_HANDSETS handsets heard from the air, and says so once", async () => {
  const radio = new BleDouble(20);
  const refuse = { open: () => Promise.reject(new Error("not in range")), cancel: () => {} };
  for (let i = 0; i <= MAX_HANDSETS; i++) radio.add(new DoublePeripheral(`ee${i.toString(16).padStart(10, "0")}`, { localName: `kp-fake-${i}` }, -90, refuse));
  const lines: string[] = [];
  const central = new BleCentral({ noble: radio, log: new Logger((l) => lines.push(l)), onLink: () => assert.fail("no link"), settings: { tickMs: 20 } });
  await central.start();
  try {
    await until(() => lines.some((l) => l.includes("ble-too-many-handsets")), "the warning", 5000);
    // One more round of advertisements after the warning: still no more handsets kept.
    let heard = 0;
    radio.on("discover", () => heard++);
    await until(() => heard > MAX_HANDSETS + 1, "another round of advertisements", 5000);
    assert.equal(central.radios().length, MAX_HANDSETS);
    assert.equal(lines.filter((l) => l.includes("ble-too-many-handsets")).length, 1);
  } finally {
    await central.stop();
  }
});
