// Issue 11, finding 2, end to end as an operator runs it: one identity per device-link connection.
// A gateway process started through the CLI, two devices entered with `keyproxy device add` (their
// root keys read from the provisioning files it writes), monitoring on a real MQTT broker (the
// in-process broker always; Mosquitto when KEYPROXY_TEST_MQTT_URL names one, as CI does). One raw
// TCP connection joins as X with X's genuine key, then as Y with Y's genuine key. The gateway must
// close that connection; X's retained device state must say it is no longer linked (and Y's that
// it never was); a fresh connection must then join as X. The in-process test of the same rule is in
// test/link-server.test.ts. Every wait is for an event (a frame, a close, an MQTT message).
import { onEachBroker } from "./support/brokers.ts";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";
import { promisify } from "node:util";
import { crc32 } from "node:zlib";
import mqtt from "mqtt";
import * as gcbor from "../gateway/encoding/cbor.ts";
import { nodeCrypto } from "../gateway/crypto/symmetric.ts";
import { topics, type DeviceState } from "../gateway/monitor/monitor.ts";
import { SUITE_AES_CCM_16_64_128 as AES } from "../firmware/crypto/types.ts";
import { encodeFrame, FrameDecoder } from "../firmware/proto/frame.ts";
import { joinTag, JOIN_NONCE_BYTES } from "../firmware/proto/keys.ts";
import { decodeMessage, encodeMessage, Msg, type Message } from "../firmware/proto/messages.ts";
import { CLI, startGatewayProcess } from "./support/process.ts";
import { tempDir, until } from "./support/harness.ts";

const crc = (b: Uint8Array) => crc32(b) >>> 0;
const crypto = nodeCrypto();
/** Generous: the machine is shared and the gateway is another process. None of these is a timing assertion. */
const WAIT_MS = 15_000;

/** `keyproxy device add`: enters id in the registry of dataDir; its root key, from the provisioning file. */
async function deviceAdd(dataDir: string, id: string): Promise<Uint8Array> {
  const out = join(tempDir("kp-lid-prov-"), `${id}.kp.json`);
  await promisify(execFile)(process.execPath, [CLI, "device", "add", "--id", id, "--out", out, "--data-dir", dataDir]);
  const file = JSON.parse(readFileSync(out, "utf8")) as { id: string; key: string };
  assert.equal(file.id, id);
  return new Uint8Array(Buffer.from(file.key, "hex"));
}

/** A JoinRequest as a device makes it: a fresh nonce, the tag under its root key. */
function joinRequest(id: string, rootKey: Uint8Array, ctr: number): { bytes: Uint8Array; nonce: Uint8Array } {
  const nonce = new Uint8Array(randomBytes(JOIN_NONCE_BYTES));
  const tag = joinTag(crypto, gcbor, rootKey, id, ctr, nonce, AES);
  return { bytes: encodeFrame(gcbor.encode(encodeMessage({ t: Msg.JoinRequest, id, ctr, nonce, suite: AES, tag })), crc), nonce };
}

/** A raw TCP connection to the device port: the messages it received, and whether it was closed. */
interface Link {
  socket: net.Socket;
  received: Message[];
  closed: boolean;
}

function connect(port: number): Promise<Link> {
  return new Promise((resolve, reject) => {
    const decoder = new FrameDecoder(crc);
    const l: Link = { socket: undefined as unknown as net.Socket, received: [], closed: false };
    l.socket = net.connect(port, "127.0.0.1", () => resolve(l));
    l.socket.on("data", (b: Buffer) => {
      for (const p of decoder.push(new Uint8Array(b))) {
        const m = decodeMessage(gcbor.decode(p));
        if (!(m instanceof Error)) l.received.push(m);
      }
    });
    l.socket.on("close", () => { l.closed = true; });
    l.socket.on("error", (e) => (l.socket.connecting ? reject(e) : undefined));
  });
}

/** Sends a join as id and waits for the gateway's answer; asserts it is a JoinAccept whose tag proves
 *  the gateway holds id's root key. */
async function joinAs(l: Link, id: string, rootKey: Uint8Array, ctr: number): Promise<void> {
  const before = l.received.length;
  const req = joinRequest(id, rootKey, ctr);
  l.socket.write(req.bytes);
  await until(() => l.received.length > before || l.closed, `the gateway's answer to a join as ${id}`, WAIT_MS);
  const answer = l.received[before];
  assert.equal(answer?.t, Msg.JoinAccept, `a JoinAccept for ${id} (got ${answer ? `message type ${answer.t}` : l.closed ? "a closed connection" : "nothing"})`);
  if (answer.t !== Msg.JoinAccept) return;
  assert.deepEqual(answer.tag, joinTag(crypto, gcbor, rootKey, id, ctr, req.nonce, AES, answer.nonce), "the accept is tagged under the device's root key");
}

/** Each device state the gateway published (live, as a subscriber sees it), by device, in order. */
async function watchStates(url: string, gatewayId: string, ids: string[]): Promise<{ states: Map<string, DeviceState[]>; end(): Promise<void> }> {
  const c = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0 });
  const states = new Map<string, DeviceState[]>(ids.map((id) => [id, []]));
  const byTopic = new Map(ids.map((id) => [topics.deviceState(gatewayId, id), id]));
  c.on("message", (topic, payload) => {
    const id = byTopic.get(topic);
    if (id !== undefined && payload.length > 0) states.get(id)!.push(JSON.parse(payload.toString()) as DeviceState);
  });
  await c.subscribeAsync([...byTopic.keys()], { qos: 1 });
  return { states, end: () => c.endAsync() };
}

/** The retained state of a device now: what a subscriber that arrives later is given. The broker
 *  sends retained messages right after the SUBACK; a QoS 1 publish of our own and its PUBACK after
 *  that bound the wait for them, without a sleep. */
async function retainedState(url: string, gatewayId: string, id: string): Promise<DeviceState | undefined> {
  const topic = topics.deviceState(gatewayId, id);
  const c = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0 });
  try {
    let got: DeviceState | undefined;
    c.on("message", (t, payload, packet) => {
      if (t === topic && packet.retain && payload.length > 0) got = JSON.parse(payload.toString()) as DeviceState;
    });
    await c.subscribeAsync(topic, { qos: 1 });
    await c.publishAsync(`kp-test/${randomBytes(4).toString("hex")}`, "x", { qos: 1 });
    return got;
  } finally {
    await c.endAsync();
  }
}

async function secondIdentity(url: string): Promise<void> {
  const dataDir = tempDir("kp-lid-");
  const gatewayId = `lid-${randomBytes(3).toString("hex")}.example`;
  const X = "dev-x";
  const Y = "dev-y";
  const keyX = await deviceAdd(dataDir, X);
  const keyY = await deviceAdd(dataDir, Y);
  const gw = await startGatewayProcess(dataDir, 0, ["--mqtt", url, "--id", gatewayId, "--no-fleet", "--metrics", "60"]);
  const links: Link[] = [];
  let watch: Awaited<ReturnType<typeof watchStates>> | undefined;
  try {
    watch = await watchStates(url, gatewayId, [X, Y]);
    const last = (id: string) => watch!.states.get(id)!.at(-1);
    await until(() => last(X)?.online === false && last(Y)?.online === false, "both devices' states on the broker, neither linked", WAIT_MS);

    // One connection joins as X, with X's genuine key.
    const attacker = await connect(gw.port);
    links.push(attacker);
    await joinAs(attacker, X, keyX, 1);
    await until(() => last(X)?.online === true, "X's state: linked", WAIT_MS);
    const seenOnline = watch.states.get(X)!.length;

    // The same connection then joins as Y, with Y's genuine key.
    const afterFirst = attacker.received.length;
    attacker.socket.write(joinRequest(Y, keyY, 1).bytes);
    await until(() => attacker.closed || attacker.received.length > afterFirst, "the gateway's answer to a second identity on the connection", WAIT_MS);
    assert.deepEqual(attacker.received.slice(afterFirst).map((m) => m.t), [], `no answer to the join as Y on X's connection (the message types that came back; ${Msg.JoinAccept} is a JoinAccept)`);
    assert.equal(attacker.closed, true, "the gateway closed the connection");
    assert.match(String(gw.events("link-closed").find((e) => e.device === X)?.reason), /a second identity on one connection/);

    // The monitor says X is no longer linked: published after the link went, and retained.
    await until(() => watch!.states.get(X)!.slice(seenOnline).some((s) => s.online === false), "X's state: not linked", WAIT_MS);
    const retainedX = await retainedState(url, gatewayId, X);
    assert.equal(retainedX?.online, false, `X's retained state says it is not linked: ${JSON.stringify(retainedX)}`);
    assert.equal(retainedX?.joinCounter, 1);
    // Y's join changed nothing: never linked, its counter unused.
    const retainedY = await retainedState(url, gatewayId, Y);
    assert.deepEqual([retainedY?.online, retainedY?.joinCounter], [false, 0], `Y's retained state: never linked, no join counted: ${JSON.stringify(retainedY)}`);

    // A fresh connection joins as X (the next counter); the monitor shows it linked again.
    const fresh = await connect(gw.port);
    links.push(fresh);
    await joinAs(fresh, X, keyX, 2);
    await until(() => last(X)?.online === true && last(X)?.joinCounter === 2, "X's state: linked again", WAIT_MS);
    const again = await retainedState(url, gatewayId, X);
    assert.deepEqual([again?.online, again?.joinCounter], [true, 2], `X's retained state after the fresh join: ${JSON.stringify(again)}`);
    assert.equal(fresh.closed, false, "the fresh connection stays up");
  } finally {
    for (const l of links) l.socket.destroy();
    await watch?.end();
    assert.equal(await gw.stop(), 0, "the gateway stops cleanly");
  }
}

onEachBroker("a connection that joins as X and then as Y is closed; X's retained state says not linked; X joins again on a fresh connection (in-process broker)", "the same over Mosquitto (KEYPROXY_TEST_MQTT_URL)", secondIdentity);
