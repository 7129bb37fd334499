// The real-interpreter tier: the BLE central carries handsets' links (issue 10, scope 1, acceptance
// point one). Three handsets run the unmodified puckjs and banglejs2 bundles on the real interpreter,
// flashed and provisioned as a user does; the radio between them and the gateway's central is the
// double at @stoprocent/noble's API (test/support/ble-double.ts), each of whose peripherals is a
// handset's BLE stand-in (one TCP connection = one BLE connection, interpreter/device.ts). Everything
// else runs for real: the central's scanning by name, its connection limit, piecing, the link
// server's reassembly, reconnects with backoff. All three join and register; two hold a session
// through the central; one walks out of range in the middle of it and comes back (the session is
// called again if the gateway ended it meanwhile); no frame is lost
// (every message and echo arrives once, in order) or reused (the gateway drops none as replayed,
// join counters only go up). Twice: with the central inside the gateway (`keyproxy gateway --ble`),
// and on its own (`keyproxy ble-bridge`) in front of a gateway process started through the CLI with
// --bridge-listen, the bridge authenticated with the key file that gateway made.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { Gateway } from "../gateway/gateway.ts";
import { Logger } from "../gateway/log/logger.ts";
import type { RealDevice } from "../interpreter/device.ts";
import { provisionedHandset } from "../interpreter/handsets.ts";
import path from "node:path";
import { BridgeClient } from "../gateway/ble/bridge-client.ts";
import { readBridgeKey } from "../gateway/ble/bridge-key.ts";
import type { CentralSettings } from "../gateway/ble/central.ts";
import { BleDouble, DoublePeripheral, freePort, tcpBacking } from "./support/ble-double.ts";
import { tempDir } from "./support/harness.ts";
import { CLI, startGatewayProcess } from "./support/process.ts";
import { chatApp, chatState, chatUp, converse, echoes, messages } from "./support/chat-app.ts";
import { bundleFor, realTest } from "./support/real.ts";

type Status = { state: string; registered: boolean; joins: number; dropped: number; sas: number };

async function until(what: string, cond: () => Promise<boolean> | boolean, ms = 60_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Where the central runs, and what the test reads of the gateway. */
interface Placement {
  /** The central's settings, changed as the operator's flags would. */
  settings: CentralSettings;
  events(e: string): Record<string, unknown>[];
  /** The central's log records (the gateway's, or the bridge's own log). */
  centralEvents(e: string): Record<string, unknown>[];
  /** Whether the device's link is up at the gateway now. */
  linked(id: string): boolean;
  /** Whether the central shows the handset's radio connected (the gateway's own view where it has one). */
  radioConnected(id: string): boolean | undefined;
  stop(): Promise<void>;
}

const CENTRAL = { maxConnections: 2, holdMs: 20_000, connectTimeoutMs: 10_000, backoff: { baseMs: 500, maxMs: 4000 } };

/** keyproxy gateway --ble, the central in the gateway's process (here: this one, with the double). */
async function inGateway(dataDir: string, radio: BleDouble): Promise<Placement> {
  const logs: Record<string, unknown>[] = [];
  const gw = await Gateway.start({ dataDir, listen: { host: "127.0.0.1", port: 0 }, log: new Logger((l) => logs.push(JSON.parse(l))), ble: { noble: radio, settings: CENTRAL } });
  return {
    settings: gw.ble!.settings,
    events: (e) => logs.filter((r) => r.event === e),
    centralEvents: (e) => logs.filter((r) => r.event === e),
    linked: (id) => gw.links.links.has(id),
    radioConnected: (id) => gw.radios.forDevice(id)?.connected,
    stop: () => gw.stop(),
  };
}

/** keyproxy ble-bridge in front of a gateway process started through the CLI with --bridge-listen:
 *  the bridge here (with the double), authenticated with the key file the gateway made. */
async function throughBridge(dataDir: string, radio: BleDouble): Promise<Placement> {
  const keyFile = path.join(tempDir("kp-real-bridge-key-"), "bridge.key");
  const gw = await startGatewayProcess(dataDir, 0, ["--no-mqtt", "--no-fleet", "--bridge-listen", "127.0.0.1:0", "--bridge-key-file", keyFile]);
  const listen = String(gw.events("bridge-listening")[0].listen);
  const bridgeLogs: Record<string, unknown>[] = [];
  const bridge = new BridgeClient({ noble: radio, key: readBridgeKey(keyFile), gateway: { host: "127.0.0.1", port: Number(listen.slice(listen.lastIndexOf(":") + 1)) }, name: "shed", log: new Logger((l) => bridgeLogs.push(JSON.parse(l))), central: CENTRAL });
  await bridge.start();
  await bridge.connected;
  const last = (id: string) => gw.lines.flatMap((l) => { try { const r = JSON.parse(l); return (r.event === "joined" || r.event === "link-closed") && r.device === id ? [r.event] : []; } catch { return []; } }).pop();
  return {
    settings: bridge.central.settings,
    events: (e) => gw.events(e),
    centralEvents: (e) => bridgeLogs.filter((r) => r.event === e),
    linked: (id) => last(id) === "joined",
    radioConnected: (id) => bridge.central.radios().find((r) => r.name === `kp-${id}`)?.connected,
    stop: async () => {
      await bridge.stop();
      await gw.stop();
    },
  };
}

for (const [where, place] of [["in the gateway (--ble)", inGateway], ["through a bridge (ble-bridge, --bridge-listen)", throughBridge]] as const) {
realTest(`a BLE central ${where} in front of three handsets (puckjs, banglejs2): all register, two hold a session, one walks out of range and back, no frame lost or reused`, ["puckjs", "banglejs2"], async () => {
  const dataDir = tempDir("kp-real-ble-");
  const radio = new BleDouble(200);
  // Two slots for three handsets: the third waits its turn (rotation after 20 s held).
  const gw = await place(dataDir, radio);
  const events = (e: string) => gw.events(e);
  const devices: RealDevice[] = [];
  try {
    const plan = [["puckjs", "bpuck"], ["banglejs2", "bbangle"], ["puckjs", "bpuck2"]] as const;
    const peripherals = new Map<string, DoublePeripheral>();
    for (const [board, id] of plan) {
      const port = await freePort();
      const dev = await provisionedHandset({ board, bundle: await bundleFor(board), dataDir, id, gateway: `127.0.0.1:${port}` });
      devices.push(dev);
      const name = await dev.eval<string>("NRF.name");
      assert.equal(name, `kp-${id}`, "the handset advertises the name provisioning gave it");
      peripherals.set(id, radio.add(new DoublePeripheral(`c0ffee0000${devices.length.toString(16).padStart(2, "0")}`, { localName: name }, -55, tcpBacking(port))));
    }
    const [puck, bangle, puck2] = devices;

    // All three join and register, two at a time.
    for (const d of devices) await d.waitFor(/^KP registered for/, 180_000);
    assert.ok(radio.maxConnected <= 2, `the connection limit held: ${radio.maxConnected} at once`);
    for (const [, id] of plan) assert.ok(events("registered").some((e) => e.device === id), `${id} registered at the gateway`);
    for (const p of peripherals.values()) assert.ok(p.writes.every((w) => w.length <= 20), "every write fits one ATT write at the default MTU");

    // Then a slot for each (as --ble-max-connections 3 would give): bpuck calls bbangle through the
    // central, across the two boards, while bpuck2 stays linked beside them.
    const r = spawnSync(process.execPath, [CLI, "policy", "allow", "--from", "bpuck", "--to", "bbangle", "--app", "chat", "--data-dir", dataDir], { encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    gw.settings.maxConnections = 3;
    await until("all three linked", () => plan.every(([, id]) => gw.linked(id)), 180_000);
    for (const d of [puck, bangle]) await chatApp(d);
    assert.equal(await puck.eval(`KP.connect("bbangle", "chat")`), true);
    await Promise.all([puck, bangle].map((d) => chatUp(d, "the session up", 60_000)));
    await converse(puck, 3, { timeoutMs: 180_000 });

    // bbangle walks out of range mid-session, then comes back: its link returns through the central,
    // and bpuck calls it again (the gateway ended the session when its link stayed away).
    const away = peripherals.get("bbangle")!;
    const joinsBefore = events("joined").filter((e) => e.device === "bbangle").length;
    away.walkAway();
    await until("bbangle's link gone at the gateway", () => !gw.linked("bbangle"), 30_000);
    assert.equal(gw.radioConnected("bbangle"), false, "monitoring shows its radio disconnected");
    // Away long enough for the central to try and fail: it backs off, and tries again.
    await until("a reconnect to bbangle failed while away", () => gw.centralEvents("ble-disconnected").some((e) => e.handset === "kp-bbangle" && /^connecting failed/.test(String(e.reason))), 60_000);
    away.comeBack();
    await until("bbangle joined again", () => events("joined").filter((e) => e.device === "bbangle").length > joinsBefore, 120_000);
    await bangle.when("KP.status().registered", "bbangle registered again", 120_000);
    if ((await chatState(puck)).spi === 0 || (await chatState(bangle)).spi === 0) {
      await Promise.all([puck, bangle].map((d) => d.when("T.spi===0", `the old session closed at ${d.name}`, 120_000)));
      assert.equal(await puck.eval(`KP.connect("bbangle", "chat")`), true);
    }
    await Promise.all([puck, bangle].map((d) => chatUp(d, "the session up again", 120_000)));
    await converse(puck, 3, { first: 3, timeoutMs: 180_000 });

    const a = await chatState(puck);
    const b = await chatState(bangle);
    assert.deepEqual(a.got, echoes(6), "every echo arrived once, in order");
    assert.deepEqual(b.got, messages(6), "every message arrived once, in order");
    // Nothing reused: the gateway dropped no frame (a replayed or altered one would be), and join
    // counters went only up, each used once.
    assert.deepEqual(events("frame dropped"), [], "the gateway dropped no frame");
    for (const [, id] of plan) {
      const counters = events("joined").filter((e) => e.device === id).map((e) => Number(e.counter));
      assert.ok(counters.length >= 1);
      assert.deepEqual(counters, [...counters].sort((x, y) => x - y), `${id}: join counters only go up`);
      assert.equal(new Set(counters).size, counters.length, `${id}: no join counter used twice`);
    }
    for (const d of [puck, puck2, bangle]) assert.equal((await d.eval<Status>("KP.status()")).dropped, 0, `${d.name} dropped no frame`);
    assert.equal(gw.radioConnected("bbangle"), true);
  } finally {
    await Promise.all(devices.map((d) => d.powerOff()));
    await gw.stop();
  }
}, 600_000);
}
