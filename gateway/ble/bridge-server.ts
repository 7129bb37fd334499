// The gateway's end of bridge connections (`keyproxy gateway --bridge-listen A --bridge-key-file F`):
// each authenticated bridge brings handsets' links, and each link goes to the link server as a TCP
// connection would (LinkServer.acceptTransport), held to the same limits and the same end-to-end
// authentication. The protocol and what a bridge can and cannot do: bridge-protocol.ts.
//
// Bad input from a bridge (not CBOR, a wrong proof, a forged, altered, replayed or reordered message,
// an unknown type) is one log line ("bridge-rejected", never the key) and the bridge connection
// closed; nothing that message says is acted on. Its links close with it, as when a radio goes.

import net from "node:net";
import { listenOn } from "../link/listen.ts";
import type { Logger } from "../log/logger.ts";
import type { LinkServer } from "../link/server.ts";
import {
  BridgeMsg, BridgeProtocolError, decodeHello, decodeMessage, decodeProof, encodeChallenge, encodeMessage, frameMessage,
  MessageReader, newNonce, OpeningChannel, proofOf, sameProof, SealingChannel, sessionKeys, type BridgeMessage, type Hello,
} from "./bridge-protocol.ts";
import { CarriedLink } from "./carried-link.ts";
import { linkAddress } from "./central.ts";
import type { RadioBook } from "./radio-book.ts";

/** A bridge must have proved its key within this long of connecting. */
const HANDSHAKE_MS = 10_000;
/** Connections that have not proved the key, at once: anyone who reaches the port can open them;
 *  beyond this the oldest is closed to make room (as the link server does with unjoined ones). */
export const MAX_UNPROVED = 32;
/** Links one bridge may carry at once (an adapter holds far fewer). */
const MAX_LINKS_PER_BRIDGE = 256;

export interface BridgeServerDeps {
  key: Uint8Array;
  links: LinkServer;
  radios: RadioBook;
  log: Logger;
  /** How long a connection has to prove the key, ms (default HANDSHAKE_MS). */
  handshakeMs?: number;
}

type State =
  | { k: "hello" }
  | { k: "proof"; hello: Hello; gatewayNonce: Uint8Array }
  | { k: "open"; name: string; seal: SealingChannel; opening: OpeningChannel }
  | { k: "closed" };

class BridgeConnection {
  private state: State = { k: "hello" };
  private reader = new MessageReader();
  private readonly carried = new Map<number, CarriedLink>();
  private readonly deadline: NodeJS.Timeout;

  constructor(private readonly server: BridgeServer, private readonly sock: net.Socket) {
    const ms = server.deps.handshakeMs ?? HANDSHAKE_MS;
    this.deadline = setTimeout(() => this.reject(`no proof of the bridge key within ${ms} ms`), ms);
    this.deadline.unref();
    sock.on("data", (b: Buffer) => this.onBytes(b));
    sock.on("error", () => {});
    sock.on("close", () => this.close("the bridge closed the connection"));
  }

  get name(): string | undefined {
    return this.state.k === "open" ? this.state.name : undefined;
  }

  private onBytes(chunk: Buffer): void {
    try {
      for (const m of this.reader.push(chunk)) {
        if (this.state.k === "closed") return;
        this.onMessage(m);
      }
    } catch (e) {
      if (!(e instanceof BridgeProtocolError)) throw e;
      this.reject(e.message);
    }
  }

  private onMessage(m: Uint8Array): void {
    const d = this.server.deps;
    const s = this.state;
    if (s.k === "hello") {
      const hello = decodeHello(m);
      const gatewayNonce = newNonce();
      this.state = { k: "proof", hello, gatewayNonce };
      this.sock.write(frameMessage(encodeChallenge({ nonce: gatewayNonce, proof: proofOf("gateway", d.key, hello.name, hello.nonce, gatewayNonce) })));
    } else if (s.k === "proof") {
      const { proof } = decodeProof(m);
      const expected = proofOf("bridge", d.key, s.hello.name, s.hello.nonce, s.gatewayNonce);
      if (!sameProof(proof, expected)) throw new BridgeProtocolError("the bridge's proof does not verify (a wrong bridge key)");
      const keys = sessionKeys(d.key, s.hello.name, s.hello.nonce, s.gatewayNonce);
      clearTimeout(this.deadline);
      this.state = { k: "open", name: s.hello.name, seal: new SealingChannel(keys.toBridge), opening: new OpeningChannel(keys.toGateway) };
      this.server.opened(this);
      d.log.info("bridge-connected", { bridge: s.hello.name, peer: this.sock.remoteAddress });
    } else if (s.k === "open") {
      this.act(s.name, decodeMessage(s.opening.open(m)));
    }
  }

  /** An authentic, fresh message from the bridge. */
  private act(name: string, m: BridgeMessage): void {
    const d = this.server.deps;
    switch (m.t) {
      case BridgeMsg.Open: {
        if (this.carried.has(m.link)) throw new BridgeProtocolError(`link ${m.link} opened twice`);
        if (this.carried.size >= MAX_LINKS_PER_BRIDGE) throw new BridgeProtocolError(`more than ${MAX_LINKS_PER_BRIDGE} links at once`);
        const id = m.link;
        const link: CarriedLink = new CarriedLink(linkAddress(name, m.address), {
          write: (bytes) => this.send({ t: BridgeMsg.Data, link: id, bytes }),
          close: () => {
            if (this.carried.get(id) !== link) return;
            this.carried.delete(id);
            this.send({ t: BridgeMsg.Close, link: id });
          },
        });
        this.carried.set(id, link);
        d.links.acceptTransport(link);
        return;
      }
      case BridgeMsg.Data:
        // A link the gateway closed a moment ago may still have bytes on the way: dropped.
        this.carried.get(m.link)?.received(m.bytes);
        return;
      case BridgeMsg.Close: {
        const link = this.carried.get(m.link);
        this.carried.delete(m.link);
        link?.carrierClosed();
        return;
      }
      case BridgeMsg.Radio:
        d.radios.update({ ...m.radio, via: name });
        return;
    }
  }

  send(m: BridgeMessage): void {
    if (this.state.k !== "open") return;
    this.sock.write(frameMessage(this.state.seal.seal(encodeMessage(m))));
  }

  private reject(reason: string): void {
    if (this.state.k === "closed") return;
    this.server.deps.log.warn("bridge-rejected", { bridge: this.state.k === "open" ? this.state.name : this.state.k === "proof" ? this.state.hello.name : undefined, peer: this.sock.remoteAddress, reason });
    this.close(reason);
  }

  close(reason: string): void {
    if (this.state.k === "closed") return;
    const name = this.name;
    this.state = { k: "closed" };
    clearTimeout(this.deadline);
    this.sock.destroy();
    for (const link of this.carried.values()) link.carrierClosed();
    this.carried.clear();
    this.server.closed(this, name);
    if (name !== undefined) {
      this.server.deps.radios.forgetVia(name);
      this.server.deps.log.info("bridge-disconnected", { bridge: name, reason });
    }
  }
}

export class BridgeServer {
  private readonly conns = new Set<BridgeConnection>();
  private readonly byName = new Map<string, BridgeConnection>();
  private readonly server: net.Server;

  constructor(readonly deps: BridgeServerDeps) {
    this.server = net.createServer((sock) => {
      sock.setNoDelay(true);
      const unproved = [...this.conns].filter((c) => c.name === undefined);
      if (unproved.length >= MAX_UNPROVED) unproved[0].close("evicted: the oldest connection that had not proved the bridge key, to make room");
      this.conns.add(new BridgeConnection(this, sock));
    });
  }

  listen(host: string, port: number): Promise<{ host: string; port: number }> {
    return listenOn(this.server, host, port);
  }

  /** One connection per bridge name: a newer one (the bridge restarted) replaces the older. */
  opened(c: BridgeConnection): void {
    const name = c.name as string;
    const old = this.byName.get(name);
    this.byName.set(name, c);
    old?.close("replaced by a newer connection of the same bridge");
  }

  closed(c: BridgeConnection, name: string | undefined): void {
    this.conns.delete(c);
    if (name !== undefined && this.byName.get(name) === c) this.byName.delete(name);
  }

  /** Bridges connected and authenticated now. */
  get bridges(): string[] {
    return [...this.byName.keys()];
  }

  async close(): Promise<void> {
    for (const c of [...this.conns]) c.close("gateway stopping");
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}
