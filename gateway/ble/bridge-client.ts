// A BLE bridge on its own (`keyproxy ble-bridge --gateway host:port --bridge-key-file F`): the central
// (central.ts) runs next to the handsets, and their links go to a gateway elsewhere over one
// authenticated, sealed connection (bridge-protocol.ts). The bridge holds no link key: it moves the
// link's frames as they are, and cannot read or forge them.
//
// While the gateway is unreachable no handset is carried (a link that comes up is let go at once, and
// the central backs off from it); the bridge reconnects to the gateway with backoff and jitter.

import net from "node:net";
import type { Logger } from "../log/logger.ts";
import type { RadioState } from "../monitor/monitor.ts";
import { backoffMs, type BackoffSettings } from "./backoff.ts";
import {
  BridgeMsg, BridgeProtocolError, decodeChallenge, decodeMessage, encodeHello, encodeMessage, encodeProof, frameMessage,
  MessageReader, newNonce, OpeningChannel, proofOf, sameProof, SealingChannel, sessionKeys, type BridgeMessage,
} from "./bridge-protocol.ts";
import type { CarriedLink } from "./carried-link.ts";
import { BleCentral, type CentralSettings } from "./central.ts";
import type { Noble } from "./noble-api.ts";

export interface BridgeClientOptions {
  noble: Noble;
  key: Uint8Array;
  gateway: { host: string; port: number };
  /** This bridge's name: the gateway logs it and monitoring shows it as each handset's "via". */
  name: string;
  log: Logger;
  central?: Partial<CentralSettings>;
  /** Reconnecting to the gateway (default 1 s doubling to 30 s). */
  backoff?: BackoffSettings;
  /** A radio's RSSI and last-seen time go to the gateway at most this often, ms (default 10 s);
   *  a change of connected goes at once. */
  radioEveryMs?: number;
}

interface Session {
  sock: net.Socket;
  seal: SealingChannel;
  opening: OpeningChannel;
}

export class BridgeClient {
  readonly central: BleCentral;
  private session: Session | undefined;
  private readonly carried = new Map<number, CarriedLink>();
  private nextLink = 0;
  private failures = 0;
  private stopped = false;
  private retry: NodeJS.Timeout | undefined;
  private readonly radioSent = new Map<string, { at: number; connected: boolean }>();
  private sock: net.Socket | undefined;
  /** Resolves at the first successful handshake (tests wait for it). */
  readonly connected: Promise<void>;
  private markConnected!: () => void;

  constructor(private readonly o: BridgeClientOptions) {
    this.connected = new Promise((r) => (this.markConnected = r));
    this.central = new BleCentral({
      noble: o.noble,
      log: o.log,
      settings: o.central,
      via: o.name,
      onLink: (link) => this.carry(link),
      onRadio: (r) => this.radio(r),
    });
  }

  async start(): Promise<void> {
    this.connect();
    await this.central.start();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.retry) clearTimeout(this.retry);
    await this.central.stop();
    this.sock?.destroy();
  }

  private connect(): void {
    if (this.stopped) return;
    const nonce = newNonce();
    const reader = new MessageReader();
    const sock = net.connect(this.o.gateway.port, this.o.gateway.host, () => {
      sock.setNoDelay(true);
      sock.write(frameMessage(encodeHello(this.o.name, nonce)));
    });
    this.sock = sock;
    let why = "the gateway closed the connection";
    sock.on("error", (e) => (why = e.message));
    sock.on("close", () => this.lost(sock, why));
    sock.on("data", (b: Buffer) => {
      try {
        for (const m of reader.push(b)) {
          if (!this.session || this.session.sock !== sock) {
            const c = decodeChallenge(m);
            if (!sameProof(c.proof, proofOf("gateway", this.o.key, this.o.name, nonce, c.nonce))) {
              throw new BridgeProtocolError("the gateway did not prove the bridge key: a different key on the two sides, or not a keyproxy gateway");
            }
            sock.write(frameMessage(encodeProof({ proof: proofOf("bridge", this.o.key, this.o.name, nonce, c.nonce) })));
            const keys = sessionKeys(this.o.key, this.o.name, nonce, c.nonce);
            this.session = { sock, seal: new SealingChannel(keys.toGateway), opening: new OpeningChannel(keys.toBridge) };
            this.failures = 0;
            this.radioSent.clear();
            this.o.log.info("bridge-connected", { gateway: `${this.o.gateway.host}:${this.o.gateway.port}`, bridge: this.o.name });
            this.markConnected();
            for (const r of this.central.radios()) this.radio(r);
          } else {
            this.act(decodeMessage(this.session.opening.open(m)));
          }
        }
      } catch (e) {
        if (!(e instanceof BridgeProtocolError)) throw e;
        this.o.log.warn("bridge-rejected", { gateway: `${this.o.gateway.host}:${this.o.gateway.port}`, reason: e.message });
        why = e.message;
        sock.destroy();
      }
    });
  }

  /** The gateway's message: bytes for a handset, or a link it let go. */
  private act(m: BridgeMessage): void {
    if (m.t === BridgeMsg.Data) {
      this.carried.get(m.link)?.write(m.bytes);
    } else if (m.t === BridgeMsg.Close) {
      const link = this.carried.get(m.link);
      this.carried.delete(m.link);
      link?.destroy();
    } else {
      throw new BridgeProtocolError(`message type ${m.t} does not go from a gateway to a bridge`);
    }
  }

  private send(m: BridgeMessage): boolean {
    const s = this.session;
    if (!s) return false;
    s.sock.write(frameMessage(s.seal.seal(encodeMessage(m))));
    return true;
  }

  /** A handset's link from the central: carried to the gateway, or let go while there is none. */
  private carry(link: CarriedLink): void {
    const address = link.remoteAddress.split(" ").pop() as string;
    const id = this.nextLink++ >>> 0;
    if (!this.send({ t: BridgeMsg.Open, link: id, address })) {
      link.destroy();
      return;
    }
    this.carried.set(id, link);
    link.on("data", (b: Buffer) => this.send({ t: BridgeMsg.Data, link: id, bytes: new Uint8Array(b) }));
    link.on("close", () => {
      if (this.carried.get(id) !== link) return;
      this.carried.delete(id);
      this.send({ t: BridgeMsg.Close, link: id });
    });
  }

  private radio(r: RadioState): void {
    const last = this.radioSent.get(r.address);
    const now = Date.now();
    if (last && last.connected === r.connected && now - last.at < (this.o.radioEveryMs ?? 10_000)) return;
    if (this.send({ t: BridgeMsg.Radio, radio: { name: r.name, address: r.address, connected: r.connected, rssi: Math.round(r.rssi), lastSeen: r.lastSeen } })) {
      this.radioSent.set(r.address, { at: now, connected: r.connected });
    }
  }

  private lost(sock: net.Socket, why: string): void {
    if (this.sock !== sock) return;
    const wasOpen = this.session?.sock === sock;
    this.session = undefined;
    for (const link of this.carried.values()) link.destroy();
    this.carried.clear();
    if (this.stopped) return;
    this.failures++;
    const wait = backoffMs(this.failures, this.o.backoff ?? { baseMs: 1000, maxMs: 30_000 });
    this.o.log.warn(wasOpen ? "bridge-disconnected" : "bridge-unreachable", { gateway: `${this.o.gateway.host}:${this.o.gateway.port}`, reason: why, retryInMs: wait });
    this.retry = setTimeout(() => this.connect(), wait);
    this.retry.unref();
  }
}
