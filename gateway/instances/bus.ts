// The MQTT bus between the instances of one domain (docs/SCALING.md, "Instances of a domain").
//
// Each instance has its own topic (`.../to/<instance>`), all share one broadcast topic (`.../all`),
// and each keeps a retained presence (`.../presence/<instance>`): "online" with a random epoch for
// this run, replaced by its MQTT last-will, "gone" with the same epoch, when the broker loses it. A
// "gone" whose epoch is not the run that is known online is an old one and changes nothing, and so
// does an "online" no newer (by its sentAtMs) than the newest one heard from that instance: a replay.
//
// Every message is sealed (XSalsa20-Poly1305, a random 24-byte nonce) under a key derived from the
// domain's key-encryption key, which only the domain's instances hold: the broker and anyone on it can
// drop or delay messages, not read, forge or alter them. A replayed message is refused by its nonce
// within the freshness window and by its age after it (instances keep their clocks within a few
// seconds, as NTP does); presence is exempt from the age check, a last-will being as old as its run.

import { randomBytes } from "node:crypto";
import mqtt, { type MqttClient } from "mqtt";
import { tuneMqttSocket } from "../mqtt/socket.ts";
import nacl from "tweetnacl";
import * as cbor from "../encoding/cbor.ts";
import type { Logger } from "../log/logger.ts";
import { escapeTopicLevel } from "../monitor/monitor.ts";
import { decodeBusMessage, encodeBusMessage, type BusBody, type BusMessage } from "./bus-messages.ts";

export const BUS_TOPIC_ROOT = "keyproxy-instances/v1";
/** A message older (or newer) than this by the receiver's clock is refused, ms. */
export const BUS_MAX_AGE_MS = 60_000;
/** How many nonces are remembered at most (the freshness window's worth at a high rate). */
const SEEN_CAPACITY = 200_000;
const NONCE_BYTES = nacl.secretbox.nonceLength;

export const busTopics = (domain: string) => {
  const root = `${BUS_TOPIC_ROOT}/${escapeTopicLevel(domain)}`;
  return {
    to: (instance: string) => `${root}/to/${escapeTopicLevel(instance)}`,
    all: `${root}/all`,
    presence: (instance: string) => `${root}/presence/${escapeTopicLevel(instance)}`,
    presenceAny: `${root}/presence/+`,
    presencePrefix: `${root}/presence/`,
  };
};

/** The purpose string of the bus key (Store.derivedKey): one key per domain. */
export const busKeyPurpose = (domain: string): string => `instance-bus/v1/${domain}`;

export interface BusOptions {
  url: string;
  domain: string;
  instance: string;
  /** 32 bytes every instance of the domain derives alike (busKeyPurpose). */
  key: Uint8Array;
  log: Logger;
  /** A message for this instance (or all), opened and checked. */
  onMessage: (m: BusMessage) => void;
  /** Another instance came online, or is gone. */
  onPresence: (instance: string, online: boolean) => void;
  /** After a reconnection: messages sent meanwhile may be lost, and the broker may have published
   *  this instance's last-will (then others took over what it ran). */
  onReconnect?: () => void;
  nowMs?: () => number;
}

export class InstanceBus {
  private readonly topics: ReturnType<typeof busTopics>;
  private readonly seen = new Map<string, number>();
  /** The epoch of each other instance's run that is online. */
  private readonly online = new Map<string, string>();
  /** The sentAtMs of the newest "online" heard from each other instance, kept after it is gone. */
  private readonly lastOnlineAt = new Map<string, number>();
  private readonly nowMs: () => number;
  readonly stats = { sent: 0, received: 0, refused: 0 };

  /** private constructor: see connect. `epoch` names this run in its presence and last-will. */
  private constructor(private readonly client: MqttClient, private readonly o: BusOptions, readonly epoch: Uint8Array) {
    this.topics = busTopics(o.domain);
    this.nowMs = o.nowMs ?? Date.now;
  }

  /** Connects with its last-will set, subscribes, and says it is online. */
  static async connect(o: BusOptions): Promise<InstanceBus> {
    const t = busTopics(o.domain);
    const nowMs = o.nowMs ?? Date.now;
    const epoch = new Uint8Array(randomBytes(16));
    const will = seal(o.key, { from: o.instance, to: "", sentAtMs: nowMs(), body: { k: "gone", epoch } });
    const client = await mqtt.connectAsync(o.url, {
      protocolVersion: 4,
      clientId: `kp-instance-${o.instance.slice(0, 40)}-${randomBytes(4).toString("hex")}`,
      reconnectPeriod: 1000,
      connectTimeout: 5000,
      keepalive: 10,
      will: { topic: t.presence(o.instance), payload: Buffer.from(will), qos: 1, retain: true },
    });
    const bus = new InstanceBus(client, o, epoch);
    // Frames are small and latency-bound: no Nagle delay behind the broker's ACKs, and each write sent
    // as it is made (gathering them cost the frames across instances time: gateway/mqtt/socket.ts).
    tuneMqttSocket(client, { gather: false });
    client.on("message", (topic, payload) => bus.receive(topic, new Uint8Array(payload)));
    client.on("connect", () => {
      void bus.announce();
      o.onReconnect?.();
    });
    client.on("error", (e) => o.log.warn("instance-bus-error", { reason: e.message }));
    await client.subscribeAsync({ [t.to(o.instance)]: { qos: 1 }, [t.all]: { qos: 1 }, [t.presenceAny]: { qos: 1 } });
    await bus.announce();
    return bus;
  }

  /** The instances known online now (not this one). */
  get others(): string[] {
    return [...this.online.keys()];
  }

  isOnline(instance: string): boolean {
    return instance === this.o.instance || this.online.has(instance);
  }

  /** Sends body to one instance ("" : all of them). Never throws: a lost message is logged. SA frames
   *  travel at QoS 0, as on a device's own link: lost only when this connection drops. Everything
   *  else at QoS 1: the broker acknowledges it, the client sends it again after a reconnect, and the
   *  broker keeps it in order with the rest (a QoS 0 message can overtake QoS 1 ones the broker holds
   *  back for a busy receiver, which a frame may and a device's "linked" and its answers may not). */
  send(to: string, body: BusBody): void {
    const bytes = seal(this.o.key, { from: this.o.instance, to, sentAtMs: this.nowMs(), body });
    this.stats.sent++;
    const qos = body.k === "frame" || body.k === "deviceFrame" ? 0 : 1;
    this.client.publishAsync(to ? this.topics.to(to) : this.topics.all, Buffer.from(bytes), { qos }).catch((e: unknown) => {
      this.o.log.warn("instance-bus-send-failed", { to: to || "all", kind: body.k, reason: e instanceof Error ? e.message : String(e) });
    });
  }

  /** Says "gone" itself (a clean stop: the others take over at once), then disconnects. */
  async close(): Promise<void> {
    const gone = seal(this.o.key, { from: this.o.instance, to: "", sentAtMs: this.nowMs(), body: { k: "gone", epoch: this.epoch } });
    if (this.client.connected) await this.client.publishAsync(this.topics.presence(this.o.instance), Buffer.from(gone), { qos: 1, retain: true }).catch(() => undefined);
    await this.client.endAsync();
  }

  private async announce(): Promise<void> {
    const online = seal(this.o.key, { from: this.o.instance, to: "", sentAtMs: this.nowMs(), body: { k: "online", epoch: this.epoch } });
    await this.client.publishAsync(this.topics.presence(this.o.instance), Buffer.from(online), { qos: 1, retain: true }).catch((e: unknown) => {
      this.o.log.warn("instance-bus-send-failed", { to: "presence", kind: "online", reason: e instanceof Error ? e.message : String(e) });
    });
  }

  private receive(topic: string, payload: Uint8Array): void {
    this.stats.received++;
    let m: BusMessage;
    try {
      m = this.check(topic, payload);
    } catch (e) {
      this.stats.refused++;
      this.o.log.warn("instance-bus-refused", { reason: (e as Error).message });
      return;
    }
    if (m.from === this.o.instance) return; // our own broadcast or presence
    if (m.body.k === "online" || m.body.k === "gone") return this.presence(m.from, m.body.k, m.body.epoch, m.sentAtMs);
    try {
      this.o.onMessage(m);
    } catch (e) {
      this.o.log.error("instance-bus-handler-failed", { from: m.from, kind: m.body.k, reason: (e as Error).message });
    }
  }

  /** Opens and judges a message; throws saying why it is refused. */
  private check(topic: string, payload: Uint8Array): BusMessage {
    if (payload.length === 0) throw new Error("an empty message (a cleared retained topic)");
    const m = open(this.o.key, payload);
    const isPresence = topic.startsWith(this.topics.presencePrefix);
    if (isPresence) {
      // Its sender's own topic exactly, not one that merely unescapes to its name ("%64" for "d"):
      // a retained copy on such an alias would outlive the sender's last-will.
      if (topic !== this.topics.presence(m.from) || (m.body.k !== "online" && m.body.k !== "gone")) throw new Error(`a presence message on another instance's topic, or of kind ${m.body.k}`);
      return m;
    }
    if (m.body.k === "online" || m.body.k === "gone") throw new Error("a presence message outside the presence topics");
    const toMe = topic === this.topics.to(this.o.instance) && m.to === this.o.instance;
    const toAll = topic === this.topics.all && m.to === "";
    if (!toMe && !toAll) throw new Error(`a message for "${m.to}" on ${topic}`);
    const age = this.nowMs() - m.sentAtMs;
    if (Math.abs(age) > BUS_MAX_AGE_MS) throw new Error(`a message ${Math.round(age / 1000)} s old (more than ${BUS_MAX_AGE_MS / 1000} s either way: replayed, or the instances' clocks disagree)`);
    const nonce = Buffer.from(payload.subarray(0, NONCE_BYTES)).toString("base64");
    if (this.seen.has(nonce)) throw new Error("a message seen before (replayed)");
    this.remember(nonce);
    return m;
  }

  private remember(nonce: string): void {
    const now = this.nowMs();
    this.seen.set(nonce, now);
    // Oldest first (insertion order): what is past the age window can no longer be replayed unseen.
    for (const [n, at] of this.seen) {
      if (now - at <= 2 * BUS_MAX_AGE_MS && this.seen.size <= SEEN_CAPACITY) break;
      this.seen.delete(n);
    }
  }

  private presence(from: string, kind: "online" | "gone", epoch: Uint8Array, sentAtMs: number): void {
    const e = Buffer.from(epoch).toString("hex");
    if (kind === "online") {
      // Presence has no age or nonce check, so an "online" no newer than the last one heard is a
      // replay (or the retained copy heard again): an old run's would make this instance follow that
      // run's epoch and so ignore the live run's last-will, and a gone run's would bring it back.
      // A run that reconnects announces itself anew, with a newer sentAtMs.
      const last = this.lastOnlineAt.get(from);
      if (last !== undefined && sentAtMs <= last) return;
      this.lastOnlineAt.set(from, sentAtMs);
      const known = this.online.get(from);
      this.online.set(from, e);
      if (known !== e) this.tellPresence(from, true);
      return;
    }
    const known = this.online.get(from);
    // A last-will of an earlier run (replayed, or retained from before it came back) changes nothing.
    if (known !== undefined && known !== e) return;
    this.online.delete(from);
    this.tellPresence(from, false);
  }

  /** A handler that throws must not escape into the MQTT client's reading: it would end the process
   *  as an uncaught exception (or, where one is caught, leave the client reading nothing more). */
  private tellPresence(instance: string, online: boolean): void {
    try {
      this.o.onPresence(instance, online);
    } catch (e) {
      this.o.log.error("instance-bus-handler-failed", { from: instance, kind: online ? "online" : "gone", reason: (e as Error).message });
    }
  }
}

function seal(key: Uint8Array, m: BusMessage): Uint8Array {
  const nonce = new Uint8Array(randomBytes(NONCE_BYTES));
  const box = nacl.secretbox(cbor.encode(encodeBusMessage(m)), nonce, key);
  const out = new Uint8Array(NONCE_BYTES + box.length);
  out.set(nonce);
  out.set(box, NONCE_BYTES);
  return out;
}

function open(key: Uint8Array, sealed: Uint8Array): BusMessage {
  if (sealed.length < NONCE_BYTES + nacl.secretbox.overheadLength) throw new Error("too short to be a sealed bus message");
  const plain = nacl.secretbox.open(sealed.subarray(NONCE_BYTES), sealed.subarray(0, NONCE_BYTES), key);
  if (!plain) throw new Error("a message that does not open under the domain's bus key (another domain's, or forged or altered)");
  let w: unknown;
  try {
    w = cbor.decode(plain);
  } catch {
    throw new Error("a sealed bus message that is not CBOR");
  }
  return decodeBusMessage(w);
}
