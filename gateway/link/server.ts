// The gateway end of every device link: a TCP listener speaking the framed protocol. Each connection
// is an explicit state machine: awaiting-join -> linked -> closed. Nothing a peer sends before it has
// proved the root key can change stored state, and nothing it sends afterwards can, unless authentic
// and fresh. A connection has at most one identity: the first device it joined as. Anyone who can
// reach the port is held to the limits in gateway/link/limits.ts (docs/OPERATIONS.md, "Limits").

import net from "node:net";
import { listenOn } from "./listen.ts";
import { zlib } from "./crc32.ts";
import { ctEqual } from "../../firmware/bytes.ts";
import { encodeFrame } from "../../firmware/proto/frame.ts";
import { deriveLinkKeys, joinTag, JOIN_NONCE_BYTES, type Codec } from "../../firmware/proto/keys.ts";
import { DROP_REASONS, newLink, openMessage, sealMessage, wipeLink, type Link } from "../../firmware/proto/link.ts";
import { decodeMessage, encodeMessage, Msg, type InnerMessage, type JoinRequest, type Message, type SaData } from "../../firmware/proto/messages.ts";
import type { GatewayCrypto } from "../crypto/symmetric.ts";
import { LinkDeframer } from "./deframer.ts";
import { descriptorLimit, fitToDescriptors, isLoopback, JOIN_REQUEST_MAX_PAYLOAD, JoinThrottle, linkLimits, sourceKey, type LinkLimits } from "./limits.ts";
import type { Fields, Logger } from "../log/logger.ts";
import { KekError } from "../registry/kek.ts";
import type { Store } from "../registry/store.ts";

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
  /** An authenticated, fresh inner message from a device. Answers go out with LinkServer.sendTo. A
   *  promise holds the connection's later frames back until it settles (they are handled in order). */
  onInner: (deviceId: string, m: InnerMessage) => void | Promise<void>;
  /** An SA frame from a linked device, with its exact payload bytes for relaying. */
  onSaData: (deviceId: string, m: SaData, payload: Uint8Array) => void;
  /** A device's link came up (a successful join) or went away. */
  onLink: (deviceId: string, up: boolean) => void;
  /** Limits on connections, unjoined time, bad input and failed joins (defaults: DEFAULT_LINK_LIMITS). */
  limits?: Partial<LinkLimits>;
  /** Milliseconds for the join backoff (default Date.now); tests pass a clock they control. */
  nowMs?: () => number;
  /** The process's descriptor limit (default: read from the system); tests pass one. */
  descriptorLimit?: number;
}

/** Counters a monitor can read; every dropped input is counted by its reason. */
export interface LinkStats {
  joins: number;
  joinRejects: number;
  framesIn: number;
  framesDropped: number;
  /** Connections closed at once on arrival: over the per-source limit, or every connection joined. */
  connectionsRefused: number;
  /** Unjoined connections closed to make room for a newer one (the oldest goes first). */
  unjoinedEvicted: number;
  /** Unjoined connections closed for sending nothing, or for not joining in time. */
  unjoinedTimedOut: number;
  /** Joins refused without being checked: their source is backing off for that device id. */
  joinsThrottled: number;
  /** Candidate frames whose CRC did not match. */
  crcFailures: number;
}

/** What a Connection uses of its transport. A TCP socket is one; so is a link that a BLE central
 *  carries (gateway/ble/carried-link.ts), in this process or from a remote bridge: the same byte
 *  stream of frames, authenticated end to end by the link keys whatever carries it. */
export interface LinkTransport {
  /** Who is on the other end, for logs and the per-source limits ("ble <address>" for a radio link). */
  readonly remoteAddress?: string;
  readonly remotePort?: number;
  write(bytes: Uint8Array): unknown;
  end(): unknown;
  destroy(): unknown;
  /** Calls back after ms without input (0: never), as net.Socket's does. */
  setTimeout(ms: number, onIdle?: () => void): unknown;
  on(event: "data", listener: (bytes: Buffer) => void): unknown;
  on(event: "error", listener: (e: Error) => void): unknown;
  on(event: "close", listener: () => void): unknown;
  once(event: "close", listener: () => void): unknown;
}

/** A device's root key (docs/PROTOCOL.md §6). */
const ROOT_KEY_BYTES = 16;
/** Frames that may wait on one connection while an earlier one waits for the registry: a device
 *  sends one request at a time, so more is a flood, and the connection closes rather than buffer it. */
export const MAX_FRAMES_WAITING = 64;

export class Connection {
  state: ConnState = { k: "awaiting-join" };
  private bad = 0;
  private joinDeadline: NodeJS.Timeout | null = null;
  /** Counted among the unjoined connections (LinkServer's per-source and total limits). */
  unjoinedSlot = true;
  private deframer = new LinkDeframer(zlib.crc32, {
    // Until it has joined, a peer can only send a JoinRequest: anything longer is not worth waiting for.
    maxPayload: () => (this.state.k === "linked" ? Infinity : JOIN_REQUEST_MAX_PAYLOAD),
    onFrame: (payload) => this.inOrder(() => this.onFrame(payload)),
    onCrcFailure: () => {
      this.server.stats.crcFailures++;
      this.countBad("too many frames with a bad CRC");
    },
    stopped: () => this.state.k === "closed",
  });

  constructor(private server: LinkServer, readonly socket: LinkTransport, readonly source: string) {
    const limits = server.limits;
    this.joinDeadline = setTimeout(() => this.timedOut(`not joined within ${limits.joinDeadlineMs} ms`), limits.joinDeadlineMs);
    socket.setTimeout(limits.unjoinedIdleMs, () => this.timedOut(`sent nothing for ${limits.unjoinedIdleMs} ms before joining`));
  }

  private timedOut(reason: string): void {
    if (this.state.k !== "awaiting-join") return;
    this.server.stats.unjoinedTimedOut++;
    this.close(reason);
  }

  /** The unjoined limits no longer apply: the peer proved a root key. */
  private stopUnjoinedTimers(): void {
    if (this.joinDeadline) clearTimeout(this.joinDeadline);
    this.joinDeadline = null;
    this.socket.setTimeout(0);
  }

  /** One more piece of bad input; past the budget the connection closes. */
  private countBad(reason: string): void {
    if (++this.bad > this.server.limits.maxBadFrames) this.close(reason);
  }

  get deviceId(): string | undefined {
    return this.state.k === "linked" ? this.state.deviceId : undefined;
  }

  onBytes(chunk: Uint8Array): void {
    if (this.state.k !== "closed") this.deframer.push(chunk);
  }

  /** Set while a frame's handling waits (for the registry): the frames after it wait their turn. */
  private busy: Promise<void> | null = null;
  private framesWaiting = 0;

  /** Handles the connection's frames one after another, at once when nothing is waiting (the relay's
   *  path stays synchronous), behind the frame whose handling waits otherwise. */
  private inOrder(handle: () => void | Promise<void>): void {
    const go = (): Promise<void> | undefined => {
      try {
        const r = handle();
        // Only a promise holds the later frames back (a handler typed void may still return a value).
        return r instanceof Promise ? r.catch((e) => this.failed(e)) : undefined;
      } catch (e) {
        this.failed(e);
      }
    };
    if (!this.busy) return this.track(go());
    if (++this.framesWaiting > MAX_FRAMES_WAITING) return this.close(`more than ${MAX_FRAMES_WAITING} frames waiting`);
    this.track(this.busy.then(() => {
      this.framesWaiting--;
      if (this.state.k !== "closed") return go();
    }));
  }

  /** Resolves once every frame received so far has been handled (tests and the fuzzer wait on it). */
  async idle(): Promise<void> {
    while (this.busy) await this.busy;
  }

  private track(p: Promise<void> | undefined): void {
    if (!p) return;
    this.busy = p;
    void p.then(() => {
      if (this.busy === p) this.busy = null;
    });
  }

  /** A frame's handling failed (the registry unreachable): said in the log, and the link closes; the
   *  device joins again, as after any lost link. */
  private failed(e: unknown): void {
    this.server.deps.log.error("frame-handling-failed", { device: this.deviceId, peer: this.socket.remoteAddress, reason: (e as Error).message });
    this.close("the gateway could not handle a frame");
  }

  private onFrame(payload: Uint8Array): void | Promise<void> {
    const d = this.server.deps;
    let m: Message | Error;
    try {
      m = decodeMessage(d.cbor.decode(payload));
    } catch (e) {
      m = e as Error;
    }
    if (m instanceof Error) return this.reject("malformed frame", m.message);
    if (m.t === Msg.JoinRequest) return this.onJoin(m);
    if (m.t === Msg.SaData && this.state.k === "linked") {
      d.onSaData(this.state.deviceId, m, payload);
      return;
    }
    if (m.t === Msg.Link && this.state.k === "linked") {
      const s = this.state;
      const inner = openMessage(d.crypto, d.cbor, s.link, m);
      if (typeof inner === "number") return this.reject("frame dropped", DROP_REASONS[inner]);
      this.server.stats.framesIn++;
      return d.onInner(s.deviceId, inner);
    }
    this.reject("frame dropped", `message type ${m.t} not expected in state ${this.state.k}`);
  }

  private reject(event: string, reason: string): void {
    this.server.stats.framesDropped++;
    this.server.deps.log.warn(event, { device: this.deviceId, peer: this.socket.remoteAddress, reason });
    this.countBad("too many bad frames");
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
   *  the counter so that nobody without the root key learns anything about counters, and before
   *  whether the device exists or is revoked: an unknown id is verified against the decoy root key,
   *  with the same derivations and the same one registry read as a known id with a wrong MAC, so that
   *  the time to the JoinReject does not tell the two apart. */
  private async onJoin(m: JoinRequest): Promise<void> {
    const d = this.server.deps;
    const throttle = this.server.joinThrottle;
    if (this.state.k === "linked" && this.state.deviceId !== m.id) {
      // One identity per connection (finding 2). Closing rather than unlinking the first device and
      // linking the second: closing leaves nothing of the first identity behind (its link entry, keys,
      // anything queued for it), reports its link lost so its sessions take the grace path, and needs
      // no proof from the request, since a peer that can write into this stream can close it anyway.
      // A device re-joining as itself (its link's sequence is spent, a request went unanswered) is fine.
      this.server.stats.joinRejects++;
      d.log.warn("join-rejected", { device: this.state.deviceId, claimed: m.id, peer: this.socket.remoteAddress, reason: "a join as another device on a linked connection" });
      return this.close("a second identity on one connection");
    }
    const wait = throttle.waitFor(m.id, this.source);
    if (wait > 0) {
      // Refused before any lookup or MAC: the cheap answer. Not logged one by one (the backoff's start
      // was); the source learns only what it knows, that it failed before.
      this.server.stats.joinsThrottled++;
      this.server.stats.joinRejects++;
      this.send({ t: Msg.JoinReject });
      return this.close("join attempts from this source for this device are backing off", true);
    }
    const refuse = (reason: string) => {
      this.server.stats.joinRejects++;
      const backoffMs = throttle.failed(m.id, this.source);
      d.log.warn("join-rejected", { device: m.id, peer: this.socket.remoteAddress, reason, backoffMs: backoffMs || undefined });
      // The same bare JoinReject whatever the reason: an unauthenticated peer learns nothing.
      this.send({ t: Msg.JoinReject });
      this.countBad("too many rejected joins");
    };
    // Checks that depend on the request alone, not on the device: no oracle in their order.
    if (d.crypto.suites().indexOf(m.suite) < 0) return refuse(`unsupported link suite ${m.suite}`);
    if (m.nonce.length !== JOIN_NONCE_BYTES) return refuse("join nonce has the wrong length");
    let dev: Awaited<ReturnType<typeof d.store.getDevice>>;
    try {
      dev = await d.store.getDevice(m.id);
    } catch (e) {
      // The registry unreachable (a database that is down) is no fault of the peer's: no refusal, no
      // backoff; the connection closes (inOrder) and the device joins again as after a lost link.
      if (!(e instanceof KekError)) throw e;
      // The registry cannot open this device's key (an altered row): the operator's to fix, never a
      // crash of the gateway; the peer gets the same bare JoinReject as any refusal.
      d.log.error("registry-error", { device: m.id, reason: (e as Error).message });
      return refuse("the registry cannot read this device's key");
    }
    const expected = joinTag(d.crypto, d.cbor, dev?.rootKey ?? this.server.decoyRootKey, m.id, m.ctr, m.nonce, m.suite);
    const authentic = ctEqual(expected, m.tag);
    if (!dev) return refuse("unknown device");
    if (!authentic) return refuse("join MAC does not verify (wrong root key or altered request)");
    if (dev.revokedAt !== null) return refuse("device revoked");
    if (m.ctr <= dev.joinCounter) return refuse(`replayed join: counter ${m.ctr} is not above ${dev.joinCounter}`);
    // Persist the counter before answering: after a gateway crash the same request is still a replay.
    if (!(await d.store.advanceJoinCounter(m.id, m.ctr))) return refuse(`replayed join: counter ${m.ctr} already used`);
    // The connection may have closed while the registry answered: the counter is spent, nothing else.
    if (this.state.k === "closed") return;
    const nonceG = d.crypto.random(JOIN_NONCE_BYTES);
    const keys = deriveLinkKeys(d.crypto, d.cbor, dev.rootKey, m.id, m.ctr, m.nonce, nonceG, m.suite);
    if (this.state.k === "linked") wipeLink(this.state.link);
    this.state = { k: "linked", deviceId: m.id, link: newLink(keys, false) };
    throttle.succeeded(m.id, this.source);
    this.stopUnjoinedTimers();
    this.server.leaveUnjoined(this);
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
    const neverJoined = this.unjoinedSlot;
    if (this.state.k === "linked") wipeLink(this.state.link);
    this.state = { k: "closed" };
    this.stopUnjoinedTimers();
    this.server.leaveUnjoined(this);
    const wasLive = !!id && this.server.links.get(id) === this;
    this.server.forget(this, id);
    if (flush) {
      this.socket.end();
      setTimeout(() => this.socket.destroy(), 2000).unref();
    } else this.socket.destroy();
    if (wasLive) this.server.deps.onLink(id as string, false);
    // Connections that never joined are anyone's, as many as they like: their closes are summarised.
    if (neverJoined) this.server.unjoinedCloseLog.note({ peer: this.socket.remoteAddress, reason });
    else this.server.deps.log.info("link-closed", { device: id, reason });
  }
}

/** One log record per interval at most for an event anyone can cause at will, each saying how many
 *  events it stands for (the first of a burst at once, then the count since): a flood of connections
 *  must not become a flood of log lines. */
class SummarisedLog {
  private unlogged = 0;
  private last = -Infinity;

  constructor(private emit: (fields: Fields & { count: number }) => void, private nowMs: () => number, private intervalMs = 1000) {}

  note(fields: Fields): void {
    this.unlogged++;
    const now = this.nowMs();
    if (now - this.last < this.intervalMs) return;
    this.emit({ ...fields, count: this.unlogged });
    this.unlogged = 0;
    this.last = now;
  }
}

export class LinkServer {
  readonly stats: LinkStats = { joins: 0, joinRejects: 0, framesIn: 0, framesDropped: 0, connectionsRefused: 0, unjoinedEvicted: 0, unjoinedTimedOut: 0, joinsThrottled: 0, crcFailures: 0 };
  /** The live link of each joined device: one per device, the newest wins. */
  readonly links = new Map<string, Connection>();
  readonly limits: LinkLimits;
  readonly joinThrottle: JoinThrottle;
  private conns = new Set<Connection>();
  /** The connections that have not joined, oldest first (a Set keeps insertion order). */
  private unjoined = new Set<Connection>();
  private unjoinedBySource = new Map<string, number>();
  /** "connection-refused" and "unjoined-closed" records: one a second at most each (SummarisedLog). */
  private refusalLog: SummarisedLog;
  readonly unjoinedCloseLog: SummarisedLog;
  private server: net.Server;
  /** A root key no device has, made once per run: a join naming an unknown device is verified
   *  against it, so that it costs what a known device's join with a wrong MAC costs. Nobody knows it,
   *  so no tag verifies under it (and an unknown id is refused whatever the tag). */
  readonly decoyRootKey: Uint8Array;

  constructor(readonly deps: LinkServerDeps) {
    const asked = linkLimits(deps.limits);
    const descriptors = deps.descriptorLimit ?? descriptorLimit();
    this.limits = fitToDescriptors(asked, descriptors);
    if (this.limits.maxConnections < asked.maxConnections) {
      deps.log.warn("link-limits", { reason: `at most ${this.limits.maxConnections} connections, not ${asked.maxConnections}: the process may open ${descriptors} descriptors and keeps some for itself; raise ulimit -n for more`, maxConnections: this.limits.maxConnections });
    }
    const nowMs = deps.nowMs ?? Date.now;
    this.joinThrottle = new JoinThrottle(this.limits, nowMs);
    this.refusalLog = new SummarisedLog((f) => deps.log.warn("connection-refused", f), nowMs);
    this.unjoinedCloseLog = new SummarisedLog((f) => deps.log.info("unjoined-closed", f), nowMs);
    this.decoyRootKey = deps.crypto.random(ROOT_KEY_BYTES);
    this.server = net.createServer((sock) => this.accept(sock));
  }

  listen(host: string, port: number): Promise<{ host: string; port: number }> {
    return listenOn(this.server, host, port);
  }

  /** Whether the link port accepts connections: false before listen() and from close() on. */
  get listening(): boolean {
    return this.server.listening;
  }

  /** Connections open now, and how many of them have not joined. */
  get connectionCount(): { all: number; unjoined: number } {
    return { all: this.conns.size, unjoined: this.unjoined.size };
  }

  /** Makes room for a new connection from source, or says why there is none ("" when it may stay).
   *  Over the per-source limit the newcomer is refused: that source's own connections are what it
   *  has. When the unjoined pool or the gateway is full, the oldest unjoined connection is closed to
   *  make room, rather than the newcomer refused: a flood of connections that never join then pushes
   *  out its own oldest, and a device, which joins within a round trip, loses its connection only if
   *  maxUnjoined others arrive between its connect and its join. Refused only when every connection
   *  has joined (maxConnections devices are linked). */
  private admit(source: string, address: string | undefined): string {
    const l = this.limits;
    const perSource = l.exemptLoopback && isLoopback(address) ? 0 : (this.unjoinedBySource.get(source) ?? 0);
    if (perSource >= l.maxUnjoinedPerSource) return `${l.maxUnjoinedPerSource} connections from this source have not joined yet (the limit)`;
    if (this.unjoined.size < l.maxUnjoined && this.conns.size < l.maxConnections) return "";
    const oldest = this.unjoined.values().next().value;
    if (!oldest) return `all ${this.conns.size} connections have joined (the limit is ${l.maxConnections})`;
    this.stats.unjoinedEvicted++;
    oldest.close("evicted, the oldest unjoined connection, to make room for a newer one");
    return "";
  }

  /** Closes a connection over a limit at once (logged summarised: SummarisedLog). */
  private refuse(sock: LinkTransport, why: string): void {
    this.stats.connectionsRefused++;
    sock.on("error", () => {});
    sock.destroy();
    this.refusalLog.note({ peer: sock.remoteAddress, reason: why });
  }

  private accept(sock: net.Socket): void {
    sock.setNoDelay(true);
    this.acceptTransport(sock);
  }

  /** A link that arrives by another way than this server's port (a BLE central's: gateway/ble/), held
   *  to the same limits and protocol as a TCP connection. */
  acceptTransport(sock: LinkTransport): void {
    const source = sourceKey(sock.remoteAddress);
    const why = this.admit(source, sock.remoteAddress);
    if (why) return this.refuse(sock, why);
    const c = new Connection(this, sock, source);
    this.conns.add(c);
    this.unjoined.add(c);
    this.unjoinedBySource.set(source, (this.unjoinedBySource.get(source) ?? 0) + 1);
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

  /** c no longer counts as unjoined (it joined, or closed). */
  leaveUnjoined(c: Connection): void {
    if (!c.unjoinedSlot) return;
    c.unjoinedSlot = false;
    this.unjoined.delete(c);
    const n = (this.unjoinedBySource.get(c.source) ?? 1) - 1;
    if (n > 0) this.unjoinedBySource.set(c.source, n);
    else this.unjoinedBySource.delete(c.source);
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
