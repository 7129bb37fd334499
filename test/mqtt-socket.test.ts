// The MQTT sockets' writes gathered per batch of input (gateway/mqtt/socket.ts), on the embedded
// broker (aedes) with MQTT.js clients: a batch of requests, each answered with one packet, leaves the
// answering client in a few system calls instead of one per packet (PUBACK, then answer), and so does
// what the broker forwards; nothing is lost or reordered; a reconnect's new socket is gathered too;
// and a socket tuned with gather: false (the instance bus) writes each packet at once.
// A write is counted where the socket hands data to the kernel's side of Node (`_write` for one chunk,
// `_writev` for several): each is one system call.

import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import mqtt, { type MqttClient } from "mqtt";
import { startBroker } from "../gateway/monitor/embedded-broker.ts";
import { tuneMqttSocket, type SocketTuning } from "../gateway/mqtt/socket.ts";

const BATCH = 20;

type Counted = net.Socket & { _write: (...a: unknown[]) => unknown; _writev?: (...a: unknown[]) => unknown };

/** Counts the system-call writes of every socket `which` picks, until the returned stop() is called. */
function countWrites(which: (sock: net.Socket) => boolean): { readonly count: number; stop(): void } {
  const proto = net.Socket.prototype as unknown as Counted;
  const write = proto._write;
  const writev = proto._writev!;
  let count = 0;
  proto._write = function (this: net.Socket, ...a: unknown[]) {
    if (which(this)) count++;
    return write.apply(this, a);
  };
  proto._writev = function (this: net.Socket, ...a: unknown[]) {
    if (which(this)) count++;
    return writev.apply(this, a);
  };
  return {
    get count() {
      return count;
    },
    stop() {
      proto._write = write;
      proto._writev = writev;
    },
  };
}

/** `asker` publishes BATCH requests at once; `answerer` answers each one as it arrives. Resolves with
 *  the answers in the order the asker got them. */
async function askBatch(asker: MqttClient, answerer: MqttClient, round: string): Promise<string[]> {
  const answers: string[] = [];
  const all = new Promise<void>((resolve) => {
    const onMessage = (topic: string, payload: Buffer): void => {
      if (topic !== `ans/${round}`) return;
      answers.push(payload.toString());
      if (answers.length === BATCH) {
        asker.off("message", onMessage);
        resolve();
      }
    };
    asker.on("message", onMessage);
  });
  const answer = (topic: string, payload: Buffer): void => {
    if (topic === `req/${round}`) answerer.publish(`ans/${round}`, payload, { qos: 1 });
  };
  answerer.on("message", answer);
  for (let i = 0; i < BATCH; i++) asker.publish(`req/${round}`, `m${i}`, { qos: 1 });
  await all;
  answerer.off("message", answer);
  return answers;
}

const expected = Array.from({ length: BATCH }, (_, i) => `m${i}`);
const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 100));

/** A broker, an answerer tuned as asked (subscribed to requests again after each reconnect), and an
 *  asker subscribed to the answers; all closed after the test. */
async function rig(t: TestContext, tuning: SocketTuning, reconnectPeriod = 0): Promise<{ answerer: MqttClient; asker: MqttClient }> {
  const broker = await startBroker({ host: "127.0.0.1", port: 0 });
  t.after(() => broker.close());
  const answerer = await mqtt.connectAsync(broker.url, { protocolVersion: 4, reconnectPeriod });
  const asker = await mqtt.connectAsync(broker.url, { protocolVersion: 4, reconnectPeriod: 0 });
  t.after(() => Promise.all([answerer.endAsync(), asker.endAsync()]));
  tuneMqttSocket(answerer, tuning);
  await answerer.subscribeAsync("req/+", { qos: 1 });
  await asker.subscribeAsync("ans/+", { qos: 1 });
  return { answerer, asker };
}

/** One batch asked and answered, counting the writes of the sockets `which` picks. */
async function countedBatch(asker: MqttClient, answerer: MqttClient, round: string, which: (s: net.Socket) => boolean): Promise<number> {
  const writes = countWrites(which);
  try {
    const answers = await askBatch(asker, answerer, round);
    await settle(); // the last PUBACKs
    assert.deepEqual(answers, expected, "every answer, once, in order");
  } finally {
    writes.stop();
  }
  return writes.count;
}

test("a batch of requests is answered in a few writes, by the client and by the broker, with nothing lost or reordered", async (t) => {
  const { answerer, asker } = await rig(t, {});
  const answererSock = answerer.stream as net.Socket;
  const askerPort = (asker.stream as net.Socket).localPort;
  const toAsker = countWrites((s) => s !== asker.stream && s.remotePort === askerPort);
  let byAnswerer: number;
  try {
    byAnswerer = await countedBatch(asker, answerer, "one", (s) => s === answererSock);
  } finally {
    toAsker.stop();
  }
  // One write per packet would be 2 × BATCH from the answerer (PUBACK and answer) and BATCH + from
  // the broker (to the asker: the answers); gathered, a batch read in one go leaves in one write (a
  // split read costs one more).
  assert.ok(byAnswerer >= 1 && byAnswerer <= 5, `the answerer wrote ${byAnswerer} times for ${BATCH} requests`);
  assert.ok(toAsker.count >= 1 && toAsker.count <= 5, `the broker wrote ${toAsker.count} times to the asker for ${BATCH} answers`);
});

test("after a reconnect the client's new socket is gathered too", async (t) => {
  const { answerer, asker } = await rig(t, {}, 50);
  const first = answerer.stream;
  const reconnected = new Promise<void>((r) => answerer.once("connect", () => r()));
  first.destroy();
  await reconnected;
  assert.notEqual(answerer.stream, first, "MQTT.js made a new socket");
  await answerer.subscribeAsync("req/+", { qos: 1 });
  const sock = answerer.stream as net.Socket;
  const writes = await countedBatch(asker, answerer, "two", (s) => s === sock);
  assert.ok(writes >= 1 && writes <= 5, `the new socket wrote ${writes} times for ${BATCH} requests`);
});

test("gather: false (the instance bus) sends each packet as it is written", async (t) => {
  const { answerer, asker } = await rig(t, { gather: false });
  const sock = answerer.stream as net.Socket;
  const writes = await countedBatch(asker, answerer, "three", (s) => s === sock);
  assert.ok(writes >= BATCH, `${writes} writes for ${BATCH} requests answered one by one`);
});
