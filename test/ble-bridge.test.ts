// A BLE bridge on its own (gateway/ble/bridge-client.ts) and the gateway's end of it
// (bridge-server.ts): handsets' links carried over one authenticated, sealed connection, and a bridge
// connection that says anything wrong (a wrong key, a replayed, forged or malformed message) closed
// with one log line, nothing it said acted on, the key in no log. Fast: the radio is the noble-API
// double with the firmware's engine behind each peripheral (as in test/ble-central.test.ts).
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import net from "node:net";
import { join } from "node:path";
import { test } from "node:test";
import { BLE_NAME_PREFIX } from "../firmware/proto/ble.ts";
import { BridgeClient } from "../gateway/ble/bridge-client.ts";
import { MAX_UNPROVED } from "../gateway/ble/bridge-server.ts";
import { loadOrCreateBridgeKey, readBridgeKey } from "../gateway/ble/bridge-key.ts";
import {
  BridgeMsg, decodeChallenge, encodeHello, encodeMessage, encodeProof, frameMessage, MessageReader, newNonce, OpeningChannel, proofOf, SealingChannel, sessionKeys,
} from "../gateway/ble/bridge-protocol.ts";
import { Logger } from "../gateway/log/logger.ts";
import { hostPort, UsageError } from "../cli/args.ts";
import { bridgeFlagsFrom } from "../cli/gateway-cmd.ts";
import { CLI, startGatewayProcess } from "./support/process.ts";
import { EngineHandset } from "./support/engine-handset.ts";
import { BleDouble, DoublePeripheral } from "./support/ble-double.ts";
import { provision, startGateway, tempDir, until, type TestGateway } from "./support/harness.ts";

const KEY = new Uint8Array(randomBytes(32));
const KEY_HEX = Buffer.from(KEY).toString("hex");

async function gatewayWithBridges(): Promise<TestGateway> {
  return startGateway({ bridges: { listen: { host: "127.0.0.1", port: 0 }, key: KEY } });
}

function bridgeLogs(): { log: Logger; lines: string[]; events: (e: string) => Record<string, unknown>[] } {
  const lines: string[] = [];
  return { log: new Logger((l) => lines.push(l)), lines, events: (e) => lines.map((l) => JSON.parse(l)).filter((r) => r.event === e) };
}

test("a bridge carries two handsets' links to a remote gateway: both join and register; monitoring shows the bridge as their radio's way", async () => {
  const t = await gatewayWithBridges();
  const radio = new BleDouble(50);
  const handsets: EngineHandset[] = [];
  for (const id of ["near-1", "near-2"]) handsets.push(new EngineHandset(id, await provision(t.gw, id)));
  handsets.forEach((h, i) => radio.add(new DoublePeripheral(`c0ffee00010${i}`, { localName: `${BLE_NAME_PREFIX}${h.id}` }, -60, h)));
  const b = bridgeLogs();
  const bridge = new BridgeClient({ noble: radio, key: KEY, gateway: t.gw.bridgeAddress!, name: "shed-1", log: b.log, central: { tickMs: 20 } });
  try {
    await bridge.start();
    await until(() => handsets.every((h) => h.lines.some((l) => /^KP registered/.test(l))), "both registered through the bridge", 15_000);
    for (const e of t.events("joined")) assert.match(String(e.peer), /^bridge shed-1 ble c0ffee00010\d$/);
    assert.equal(t.events("bridge-connected")[0].bridge, "shed-1");
    await until(() => t.gw.radios.forDevice("near-1")?.connected === true, "near-1's radio known at the gateway", 5000);
    assert.equal(t.gw.radios.forDevice("near-1")?.via, "shed-1");
    // The bridge goes: its links close at the gateway, its radios are no longer shown connected.
    await bridge.stop();
    await until(() => t.gw.links.links.size === 0, "the links closed", 5000);
    await until(() => t.gw.radios.forDevice("near-1")?.connected === false, "radio shown disconnected", 5000);
    assert.ok(!t.logs.concat(b.lines).some((l) => l.includes(KEY_HEX)), "the bridge key is in no log");
  } finally {
    await bridge.stop();
    await t.gw.stop();
  }
});

test("a bridge with the wrong key carries nothing: the gateway's proof does not verify at the bridge, and a wrong proof closes the connection at the gateway", async () => {
  const t = await gatewayWithBridges();
  const radio = new BleDouble(50);
  const h = new EngineHandset("w-1", await provision(t.gw, "w-1"));
  const p = radio.add(new DoublePeripheral("c0ffee000201", { localName: `${BLE_NAME_PREFIX}w-1` }, -60, h));
  const b = bridgeLogs();
  const wrong = new BridgeClient({ noble: radio, key: new Uint8Array(randomBytes(32)), gateway: t.gw.bridgeAddress!, name: "intruder", log: b.log, central: { tickMs: 20 }, backoff: { baseMs: 50, maxMs: 100 } });
  try {
    await wrong.start();
    await until(() => b.events("bridge-rejected").length >= 2, "refused twice", 5000);
    assert.match(String(b.events("bridge-rejected")[0].reason), /the gateway did not prove the bridge key/);
    assert.equal(t.events("bridge-connected").length, 0);
    assert.equal(t.events("joined").length, 0);
    assert.equal(t.gw.links.connectionCount.all, 0, "no link reached the link server");
    void p;
  } finally {
    await wrong.stop();
  }
  // A raw client answering the gateway's challenge with a made-up proof.
  const c = await rawBridge(t, "guess");
  c.sock.write(frameMessage(encodeProof({ proof: new Uint8Array(randomBytes(32)) })));
  await c.closed;
  await until(() => t.events("bridge-rejected").length === 1, "rejected at the gateway", 5000);
  assert.match(String(t.events("bridge-rejected")[0].reason), /proof does not verify \(a wrong bridge key\)/);
  assert.equal(t.events("bridge-rejected")[0].bridge, "guess");
  assert.ok(!t.logs.some((l) => l.includes(KEY_HEX)));
  await t.gw.stop();
});

/** A bridge connection by hand, up to the gateway's challenge; with key, through the handshake. */
async function rawBridge(t: TestGateway, name: string, key?: Uint8Array) {
  const sock = net.connect(t.gw.bridgeAddress!.port, "127.0.0.1");
  sock.on("error", () => {});
  const closed = new Promise<void>((r) => sock.on("close", () => r()));
  const reader = new MessageReader();
  const inbox: Uint8Array[] = [];
  sock.on("data", (b: Buffer) => inbox.push(...reader.push(b)));
  await new Promise<void>((r) => sock.once("connect", () => r()));
  const nonce = newNonce();
  sock.write(frameMessage(encodeHello(name, nonce)));
  await until(() => inbox.length > 0, "the challenge", 5000);
  const challenge = decodeChallenge(inbox.shift()!);
  let seal: SealingChannel | undefined;
  let opening: OpeningChannel | undefined;
  if (key) {
    sock.write(frameMessage(encodeProof({ proof: proofOf("bridge", key, name, nonce, challenge.nonce) })));
    const keys = sessionKeys(key, name, nonce, challenge.nonce);
    seal = new SealingChannel(keys.toGateway);
    opening = new OpeningChannel(keys.toBridge);
    await until(() => t.events("bridge-connected").some((e) => e.bridge === name), "the bridge accepted", 5000);
  }
  return { sock, closed, inbox, seal, opening };
}

test("a replayed message closes the bridge connection and is not acted on: the link it would open again is not opened", async () => {
  const t = await gatewayWithBridges();
  try {
    const c = await rawBridge(t, "replayer", KEY);
    const open = frameMessage(c.seal!.seal(encodeMessage({ t: BridgeMsg.Open, link: 1, address: "c0ffee000301" })));
    c.sock.write(open);
    await until(() => t.gw.links.connectionCount.all === 1, "one link at the link server", 5000);
    c.sock.write(open);
    await c.closed;
    await until(() => t.events("bridge-rejected").length === 1, "rejected", 5000);
    assert.match(String(t.events("bridge-rejected")[0].reason), /^replayed: counter 0, expected 1$/);
    await until(() => t.gw.links.connectionCount.all === 0, "its links closed with it", 5000);
  } finally {
    await t.gw.stop();
  }
});

test("a forged or altered message closes the bridge connection; nothing in it is acted on", async () => {
  const t = await gatewayWithBridges();
  try {
    const c = await rawBridge(t, "forger", KEY);
    // An Open sealed under a key of the forger's own: the right counter, the wrong key.
    const forged = new SealingChannel(new Uint8Array(randomBytes(32))).seal(encodeMessage({ t: BridgeMsg.Open, link: 7, address: "c0ffee000401" }));
    c.sock.write(frameMessage(forged));
    await c.closed;
    await until(() => t.events("bridge-rejected").length === 1, "rejected", 5000);
    assert.match(String(t.events("bridge-rejected")[0].reason), /^forged or altered: message 0 does not open/);
    assert.equal(t.gw.links.connectionCount.all, 0, "the forged Open opened nothing");

    // A genuine message with one bit flipped in transit.
    const d = await rawBridge(t, "flipper", KEY);
    const sealed = Buffer.from(frameMessage(d.seal!.seal(encodeMessage({ t: BridgeMsg.Open, link: 1, address: "c0ffee000402" }))));
    sealed[sealed.length - 3] ^= 1;
    d.sock.write(sealed);
    await d.closed;
    await until(() => t.events("bridge-rejected").length === 2, "rejected", 5000);
    assert.match(String(t.events("bridge-rejected")[1].reason), /^forged or altered/);
    assert.equal(t.gw.links.connectionCount.all, 0);
  } finally {
    await t.gw.stop();
  }
});

test("malformed input from a bridge: one clear log line, the connection closed", async () => {
  const t = await gatewayWithBridges();
  try {
    const cases: [string, (s: net.Socket) => void, RegExp][] = [
      ["junk hello", (s) => s.write(frameMessage(new Uint8Array([0xff, 0x00, 0x13]))), /^hello: /],
      ["oversized", (s) => s.write(Buffer.from([0x7f, 0xff, 0xff, 0xff])), /^a message of \d+ bytes \(at most 65536\)$/],
      ["bad name", (s) => s.write(frameMessage(encodeHello("no spaces allowed", newNonce()))), /^bridge name is not/],
    ];
    for (const [what, send, reason] of cases) {
      const before = t.events("bridge-rejected").length;
      const sock = net.connect(t.gw.bridgeAddress!.port, "127.0.0.1");
      sock.on("error", () => {});
      const closed = new Promise<void>((r) => sock.on("close", () => r()));
      await new Promise<void>((r) => sock.once("connect", () => r()));
      send(sock);
      await closed;
      await until(() => t.events("bridge-rejected").length === before + 1, `${what} rejected`, 5000);
      assert.match(String(t.events("bridge-rejected")[before].reason), reason, what);
    }
    // After the handshake: a sealed message of an unknown type, and data for a link never opened (dropped, no error).
    const c = await rawBridge(t, "odd", KEY);
    c.sock.write(frameMessage(c.seal!.seal(encodeMessage({ t: BridgeMsg.Data, link: 99, bytes: new Uint8Array([1]) }))));
    c.sock.write(frameMessage(c.seal!.seal(new Uint8Array([0xa1, 0x61, 0x74, 0x18, 0x63]))));
    await c.closed;
    await until(() => t.events("bridge-rejected").some((e) => e.bridge === "odd"), "rejected", 5000);
    assert.match(String(t.events("bridge-rejected").find((e) => e.bridge === "odd")!.reason), /^unknown message type 99$/);
  } finally {
    await t.gw.stop();
  }
});

test("the bridge key file: made 0600 when missing, refused when others may read it or it is not 64 hex digits", async () => {
  const dir = tempDir("kp-bridge-key-");
  const file = join(dir, "bridge.key");
  assert.throws(() => readBridgeKey(file), /no bridge key at .*bridge.key: the gateway makes one/);
  const made = loadOrCreateBridgeKey(file);
  assert.equal(made.created, true);
  assert.equal(statSync(file).mode & 0o777, 0o600);
  assert.deepEqual(loadOrCreateBridgeKey(file), { key: made.key, created: false });
  chmodSync(file, 0o644);
  assert.throws(() => readBridgeKey(file), /may be read by others \(mode 0644\): chmod 600/);
  writeFileSync(file, "abc\n", { mode: 0o600 });
  chmodSync(file, 0o600);
  assert.throws(() => readBridgeKey(file), (e: Error) => /does not hold 32 bytes as 64 hex digits/.test(e.message) && !e.message.includes("abc"));
});

test("the CLI's two placements' flags: errors, and a gateway process that takes a bridge (key file made 0600, never logged)", async () => {
  assert.equal(bridgeFlagsFrom({}), undefined);
  assert.throws(() => bridgeFlagsFrom({ "bridge-listen": "127.0.0.1:7448" }), (e: Error) => e instanceof UsageError && /--bridge-listen needs --bridge-key-file/.test(e.message));
  assert.throws(() => bridgeFlagsFrom({ "bridge-key-file": "k" }), (e: Error) => e instanceof UsageError && /--bridge-key-file goes with --bridge-listen/.test(e.message));
  assert.throws(() => bridgeFlagsFrom({ "bridge-listen": "nowhere", "bridge-key-file": "k" }), UsageError);
  for (const [args, re] of [
    [[], /--gateway <host:port> is required/],
    [["--gateway", "h:0", "--bridge-key-file", "k"], /not 0/],
    [["--gateway", "h:1"], /--bridge-key-file <file> is required/],
    [["--gateway", "h:1", "--bridge-key-file", "/nonexistent/k"], /no bridge key at \/nonexistent\/k/],
    [["--gateway", "h:1", "--bridge-key-file", "k", "--name", "a b"], /--name "a b" is not/],
  ] as [string[], RegExp][]) {
    const r = spawnSync(process.execPath, [CLI, "ble-bridge", ...args], { encoding: "utf8" });
    assert.equal(r.status, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, re);
  }

  const dataDir = tempDir("kp-bridge-gw-");
  const keyFile = join(tempDir("kp-bridge-k-"), "bridge.key");
  const out = join(dataDir, "..", `p1-${process.pid}.json`);
  const add = spawnSync(process.execPath, [CLI, "device", "add", "--id", "p1", "--out", out, "--data-dir", dataDir], { encoding: "utf8" });
  assert.equal(add.status, 0, add.stderr);
  const rootKey = new Uint8Array(Buffer.from(JSON.parse(readFileSync(out, "utf8")).key, "hex"));
  const gw = await startGatewayProcess(dataDir, 0, ["--no-mqtt", "--no-fleet", "--bridge-listen", "127.0.0.1:0", "--bridge-key-file", keyFile]);
  const radio = new BleDouble(50);
  const h = new EngineHandset("p1", rootKey);
  radio.add(new DoublePeripheral("c0ffee000501", { localName: `${BLE_NAME_PREFIX}p1` }, -60, h));
  const b = bridgeLogs();
  try {
    assert.equal(statSync(keyFile).mode & 0o777, 0o600);
    assert.equal(gw.events("bridge-key-created")[0].file, keyFile);
    const listen = String(gw.events("bridge-listening")[0].listen);
    const bridge = new BridgeClient({ noble: radio, key: readBridgeKey(keyFile), gateway: hostPort(listen, "listen"), name: "porch", log: b.log, central: { tickMs: 20 } });
    try {
      await bridge.start();
      await until(() => h.lines.some((l) => /^KP registered/.test(l)), "registered through a bridge to a gateway process", 15_000);
      assert.match(String(gw.events("joined")[0].peer), /^bridge porch ble c0ffee000501$/);
    } finally {
      await bridge.stop();
    }
    const key = readFileSync(keyFile, "utf8").trim();
    assert.ok(!gw.lines.concat(b.lines).some((l) => l.includes(key)), "the bridge key is in no log");
  } finally {
    await gw.stop();
  }
});

test("connections that have not proved the key are bounded: the oldest goes to make room", async () => {
  // A handshake deadline far away: only the bound can close the first connection here.
  const t = await startGateway({ bridges: { listen: { host: "127.0.0.1", port: 0 }, key: KEY, handshakeMs: 600_000 } });
  const socks: net.Socket[] = [];
  try {
    const firstClosed = new Promise<void>((r) => {
      const s = net.connect(t.gw.bridgeAddress!.port, "127.0.0.1");
      s.on("error", () => {});
      s.on("close", () => r());
      socks.push(s);
    });
    await new Promise<void>((r) => socks[0].once("connect", () => r()));
    for (let i = 0; i < MAX_UNPROVED; i++) {
      const s = net.connect(t.gw.bridgeAddress!.port, "127.0.0.1");
      s.on("error", () => {});
      socks.push(s);
      await new Promise<void>((r) => s.once("connect", () => r()));
    }
    await firstClosed;
    // A genuine bridge still gets in.
    const c = await rawBridge(t, "late", KEY);
    assert.ok(t.events("bridge-connected").some((e) => e.bridge === "late"));
    c.sock.destroy();
  } finally {
    for (const s of socks) s.destroy();
    await t.gw.stop();
  }
});
