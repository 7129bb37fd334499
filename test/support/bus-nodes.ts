// Instances of a domain on the instance bus (gateway/instances/bus.ts), for the bus's tests
// (test/instance-bus.test.ts, test/instance-bus-edges.test.ts): a node records what its bus hands
// it and what it logs; a listener is anyone on the broker, who hears packets with their flags and
// publishes what it likes; an insider holds the domain's key and seals what it likes.
import { randomBytes } from "node:crypto";
import mqtt, { type IPublishPacket, type MqttClient } from "mqtt";
import nacl from "tweetnacl";
import { Logger } from "../../gateway/log/logger.ts";
import { InstanceBus } from "../../gateway/instances/bus.ts";
import type { BusMessage } from "../../gateway/instances/bus-messages.ts";
import { until } from "./harness.ts";

export interface BusNode {
  name: string;
  bus: InstanceBus;
  /** What the bus handed to onMessage (unless the node has a handler of its own). */
  messages: BusMessage[];
  presence: [string, boolean][];
  /** The reasons of this node's "instance-bus-refused" log lines, in order. */
  refusals(): string[];
  /** This node's log records of one event. */
  events(event: string): Record<string, unknown>[];
}

export interface BusListener {
  client: MqttClient;
  heard: IPublishPacket[];
  capture(topic: string): Promise<void>;
}

/** Everything the test connected to the broker, closed by closeBusNodes (in the file's `after`). */
const open: { close(): Promise<void> }[] = [];

export async function closeBusNodes(): Promise<void> {
  for (const c of open.splice(0).reverse()) await c.close().catch(() => undefined);
}

export const newBusKey = (): Uint8Array => new Uint8Array(randomBytes(32));

/** An instance of `domain` on the bus. Each test takes a domain of its own: the retained presence of
 *  another test's instances (under another key) would otherwise be refused there too. */
export async function joinBus(
  url: string, domain: string, instance: string, key: Uint8Array,
  o: { nowMs?: () => number; onMessage?: (m: BusMessage) => void; breakPresenceHandler?: boolean } = {},
): Promise<BusNode> {
  const lines: string[] = [];
  const messages: BusMessage[] = [];
  const presence: [string, boolean][] = [];
  const bus = await InstanceBus.connect({
    url, domain, instance, key, nowMs: o.nowMs, log: new Logger((l) => lines.push(l)),
    onMessage: o.onMessage ?? ((m) => messages.push(m)),
    onPresence: (i, online) => {
      presence.push([i, online]);
      if (o.breakPresenceHandler) throw new Error(`the presence handler broke on ${i}`);
    },
  });
  open.push(bus);
  const events = (e: string) => lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((r) => r.event === e);
  return { name: instance, bus, messages, presence, events, refusals: () => events("instance-bus-refused").map((r) => String(r.reason)) };
}

/** The MQTT client of a bus (test-only access to a private field). */
export const mqttOf = (n: BusNode): MqttClient => (n.bus as unknown as { client: MqttClient }).client;

/** Kills a bus the way a crash does: its TCP connection closes without an MQTT DISCONNECT, so the
 *  broker publishes its last-will; it does not reconnect. */
export function crash(n: BusNode): void {
  const c = mqttOf(n);
  c.options.reconnectPeriod = 0;
  c.stream.destroy();
}

/** A raw MQTT client: anyone on the broker, who can capture and (re)publish sealed bytes. */
export async function busListener(url: string): Promise<BusListener> {
  const client = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0 });
  open.push({ close: () => client.endAsync() });
  const heard: IPublishPacket[] = [];
  client.on("message", (_topic, _payload, packet) => heard.push(packet));
  return { client, heard, capture: async (topic) => void (await client.subscribeAsync(topic, { qos: 1 })) };
}

/** What only a holder of the domain's key can make: any bytes, sealed as the bus seals a message. */
export function sealAsInsider(key: Uint8Array, plain: Uint8Array): Buffer {
  const nonce = new Uint8Array(randomBytes(nacl.secretbox.nonceLength));
  return Buffer.concat([nonce, nacl.secretbox(plain, nonce, key)]);
}

/** Sends a "linked" marker from one node to another (or all) and waits until `to` has it. */
export async function marker(from: BusNode, to: BusNode, tag: string, toAll = false): Promise<void> {
  from.bus.send(toAll ? "" : to.name, { k: "linked", dev: tag });
  await until(() => to.messages.some((m) => m.body.k === "linked" && m.body.dev === tag), `${to.name} to get ${tag}`);
}
