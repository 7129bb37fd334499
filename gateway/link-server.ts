// The gateway end of every device link: a TCP listener speaking the framed protocol. Each connection
// is an explicit state machine: awaiting-join -> linked -> closed. Nothing a peer sends before it has
// proved the root key can change stored state, and nothing it sends afterwards can, unless authentic
// and fresh.

import net from "node:net";
import { zlib } from "./zlib-crc.ts";
import { ctEqual } from "../firmware/bytes.ts";
import { encodeFrame, FrameDecoder } from "../firmware/proto/frame.ts";
import { deriveLinkKeys, joinTag, JOIN_NONCE_BYTES, type Codec } from "../firmware/proto/keys.ts";
import { DROP_REASONS, newLink, openMessage, sealMessage, wipeLink, type Link } from "../firmware/proto/link.ts";
import { decodeMessage, encodeMessage, Msg, type InnerMessage, type JoinRequest, type Message, type SaData } from "../firmware/proto/messages.ts";
import type { GatewayCrypto } from "./crypto.ts";
import type { Logger } from "./log.ts";
import type { Store } from "./store.ts";

type ConnState =
  | { k: "awaiting-join" }
  | { k: "linked"; deviceId: string; link: Link }
  | { k: "closed" };

export interface LinkServerDeps {
  store: Store;
  log: Logger;
  crypto: GatewayCrypto;
  cbor: Codec;
  now: () => number;
  /** An authenticated, fresh inner message from a device. Answers go out with LinkServer.sendTo. */
  onInner: (deviceId: string, m: InnerMessage) => void;
  /** An SA frame from a linked device, with its exact payload bytes for relaying. */
  onSaData: (deviceId: string, m: SaData, payload: Uint8Array) => void;
  /** A device's link came up (a successful join) or went away. */
  onLink: (deviceId: string, up: boolean) => void;
}

/** Counters a monitor can read; every dropped input is counted by its reason. */
export interface LinkStats {
  joins: number;
  joinRejects: number;
  framesIn: number;
  framesDropped: number;
}

/** Malformed or unauthenticated frames tolerated on one connection before it is closed. */
const MAX_BAD_FRAMES = 16;

export class Connection {
  state: ConnState = { k: "awaiting-join" };
  private decoder = new FrameDecoder(zlib.crc32);
  private bad = 0;

  constructor(private server: LinkServer, readonly socket: net.Socket) {}

  get deviceId(): string | undefined {
    return this.state.k === "linked" ? this.state.deviceId : undefined;
  }

  onBytes(chunk: Uint8Array): void {
    for (const payload of this.decoder.push(chunk)) {
      if (this.state.k === "closed") return;
      this.onFrame(payload);
    }
  }

  private onFrame(payload: Uint8Array): void {
    const d = this.server.deps;
    let m: Message | Error;
    try {
      m = decodeMessage(d.cbor.decode(payload));
    } catch (e) {
      m = e as Error;
    }
    if (m instanceof Error) return this.reject("malformed frame", m.message);
    if (m.t === Msg.JoinRequest) return this.onJoin(m);
    if (m.t === Msg.SaData && this.state.k === "linked") return d.onSaData(this.state.deviceId, m, payload);
    if (m.t === Msg.Link && this.state.k === "linked") {
      const s = this.state;
      const inner = openMessage(d.crypto, d.cbor, s.link, m);
      if (typeof inner === "number") return this.reject("frame dropped", DROP_REASONS[inner]);
      this.server.stats.framesIn++;
      d.onInner(s.deviceId, inner);
      return;
    }
    this.reject("frame dropped", `message type ${m.t} not expected in state ${this.state.k}`);
  }

  private reject(event: string, reason: string): void {
    this.server.stats.framesDropped++;
    this.server.deps.log.warn(event, { device: this.deviceId, peer: this.socket.remoteAddress, reason });
    if (++this.bad > MAX_BAD_FRAMES) this.close("too many bad frames");
  }

  send(m: Message): void {
    const d = this.server.deps;
    if (this.state.k !== "closed") this.socket.write(encodeFrame(d.cbor.encode(encodeMessage(m)), zlib.crc32));
  }

  sendInner(m: InnerMessage): void {
    if (this.state.k !== "linked") return;
    const d = this.server.deps;
    try {
      this.socket.write(encodeFrame(sealMessage(d.crypto, d.cbor, this.state.link, m), zlib.crc32));
    } catch (e) {
      this.close((e as Error).message);
    }
  }

  /** Join (design.md flow 2). Every check happens before any state changes; the MAC is checked before
   *  the counter so that nobody without the root key learns anything about counters. */
  private onJoin(m: JoinRequest): void {
    const d = this.server.deps;
    const refuse = (reason: string) => {
      this.server.stats.joinRejects++;
      d.log.warn("join-rejected", { device: m.id, peer: this.socket.remoteAddress, reason });
      // The same bare JoinReject whatever the reason: an unauthenticated peer learns nothing.
      this.send({ t: Msg.JoinReject });
      if (++this.bad > MAX_BAD_FRAMES) this.close("too many rejected joins");
    };
    const dev = d.store.getDevice(m.id);
    if (!dev) return refuse("unknown device");
    if (dev.revokedAt !== null) return refuse("device revoked");
    if (d.crypto.suites().indexOf(m.suite) < 0) return refuse(`unsupported link suite ${m.suite}`);
    if (m.nonce.length !== JOIN_NONCE_BYTES) return refuse("join nonce has the wrong length");
    const expected = joinTag(d.crypto, d.cbor, dev.rootKey, m.id, m.ctr, m.nonce, m.suite);
    if (!ctEqual(expected, m.tag)) return refuse("join MAC does not verify (wrong root key or altered request)");
    if (m.ctr <= dev.joinCounter) return refuse(`replayed join: counter ${m.ctr} is not above ${dev.joinCounter}`);
    // Persist the counter before answering: after a gateway crash the same request is still a replay.
    if (!d.store.advanceJoinCounter(m.id, m.ctr)) return refuse(`replayed join: counter ${m.ctr} already used`);
    const nonceG = d.crypto.random(JOIN_NONCE_BYTES);
    const keys = deriveLinkKeys(d.crypto, d.cbor, dev.rootKey, m.id, m.ctr, m.nonce, nonceG, m.suite);
    if (this.state.k === "linked") wipeLink(this.state.link);
    this.state = { k: "linked", deviceId: m.id, link: newLink(keys, false) };
    this.server.adopt(this);
    this.server.stats.joins++;
    d.onLink(m.id, true);
    this.send({ t: Msg.JoinAccept, nonce: nonceG, tag: joinTag(d.crypto, d.cbor, dev.rootKey, m.id, m.ctr, m.nonce, m.suite, nonceG) });
    d.log.info("joined", { device: m.id, counter: m.ctr, suite: m.suite, peer: this.socket.remoteAddress });
  }

  /** Closes the link. flush: what was written already still goes out (the SaClosed messages before a
   *  revocation closes a link), then the socket ends; otherwise it is destroyed at once. */
  close(reason: string, flush = false): void {
    if (this.state.k === "closed") return;
    const id = this.deviceId;
    if (this.state.k === "linked") wipeLink(this.state.link);
    this.state = { k: "closed" };
    const wasLive = !!id && this.server.links.get(id) === this;
    this.server.forget(this, id);
    if (flush) {
      this.socket.end();
      setTimeout(() => this.socket.destroy(), 2000).unref();
    } else this.socket.destroy();
    if (wasLive) this.server.deps.onLink(id as string, false);
    this.server.deps.log.info("link-closed", { device: id, reason });
  }
}

export class LinkServer {
  readonly stats: LinkStats = { joins: 0, joinRejects: 0, framesIn: 0, framesDropped: 0 };
  /** The live link of each joined device: one per device, the newest wins. */
  readonly links = new Map<string, Connection>();
  private conns = new Set<Connection>();
  private server: net.Server;

  constructor(readonly deps: LinkServerDeps) {
    this.server = net.createServer((sock) => this.accept(sock));
  }

  listen(host: string, port: number): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(port, host, () => {
        const a = this.server.address() as net.AddressInfo;
        resolve({ host: a.address, port: a.port });
      });
    });
  }

  private accept(sock: net.Socket): void {
    sock.setNoDelay(true);
    const c = new Connection(this, sock);
    this.conns.add(c);
    sock.on("data", (b) => c.onBytes(new Uint8Array(b.buffer, b.byteOffset, b.length)));
    sock.on("error", () => {});
    sock.on("close", () => c.close("peer closed"));
  }

  adopt(c: Connection): void {
    const id = c.deviceId as string;
    const old = this.links.get(id);
    this.links.set(id, c);
    if (old && old !== c) old.close("replaced by a newer join");
  }

  /** Sends an inner message to a device over its live link; false when it has none. */
  sendTo(deviceId: string, m: InnerMessage): boolean {
    const c = this.links.get(deviceId);
    if (!c) return false;
    c.sendInner(m);
    return true;
  }

  /** Sends an outer payload (an SA frame, byte for byte) to a device; false when it has no link. */
  relayTo(deviceId: string, payload: Uint8Array): boolean {
    const c = this.links.get(deviceId);
    if (!c || c.state.k !== "linked") return false;
    c.socket.write(encodeFrame(payload, zlib.crc32));
    return true;
  }

  /** Closes a device's live link (it was revoked, say) after what was sent to it has gone out; false
   *  when it has none. */
  disconnect(deviceId: string, reason: string): boolean {
    const c = this.links.get(deviceId);
    if (!c) return false;
    c.close(reason, true);
    return true;
  }

  forget(c: Connection, id: string | undefined): void {
    this.conns.delete(c);
    if (id && this.links.get(id) === c) this.links.delete(id);
  }

  async close(): Promise<void> {
    for (const c of [...this.conns]) c.close("gateway stopping");
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}
