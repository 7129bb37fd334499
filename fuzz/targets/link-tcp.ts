// Link frames over TCP to a real in-process gateway (gateway/gateway.ts on loopback, its SQLite store
// on a temporary directory): the client joins as a provisioned device, then writes one input per
// round, and the round ends when the gateway's Connection has consumed every byte of it (its
// onBytes is watched on the one connection instance; no sleeps). Inputs are mutated outer messages
// (JoinRequests, Link frames sealed under the live link keys, SA frames, every plaintext type),
// mostly framed with a correct CRC so they reach the message decoders, the rest written raw (bad
// CRCs, noise, partial frames); now and then a fresh genuine Link frame, which the gateway accepts.
// The gateway's error handling is its own (it counts and logs a bad frame), so the oracle for a crash
// is an exception escaping onBytes or the process; for a state change, the store's rows, the live
// link's replay window and sequence numbers, which devices are linked, and the joins and accepted
// frame counters, compared before and after every refused input.
// A connection is closed by the gateway after its bad-input budget (16 frames): the client starts a
// new one (a new join) a few frames before that, between inputs, so that closing is not charged to an
// input. When the gateway closes a connection for one input (a join as another device on a linked
// connection, say), that is a refusal by disconnecting: then the stored rows and counters must still be
// as they were, and the client joins again before the next input. The join backoff's clock is the
// target's own, moved past the longest backoff before each new join, so the client's genuine joins are
// never throttled by its own fuzzed ones.

import net from "node:net";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import * as cbor from "../../gateway/encoding/cbor.ts";
import { nodeCrypto } from "../../gateway/crypto/symmetric.ts";
import { Gateway, type GatewayOptions } from "../../gateway/gateway.ts";
import type { Connection } from "../../gateway/link/server.ts";
import { Logger } from "../../gateway/log/logger.ts";
import { zlib } from "../../gateway/link/crc32.ts";
import { encodeFrame, FrameDecoder, MAX_PAYLOAD } from "../../firmware/proto/frame.ts";
import { deriveLinkKeys, joinTag, type Codec } from "../../firmware/proto/keys.ts";
import { newLink, sealFrame, sealMessage, type Link } from "../../firmware/proto/link.ts";
import { decodeMessage, encodeMessage, Msg, type InnerMessage, type JoinRequest } from "../../firmware/proto/messages.ts";
import { generate, SeedPool } from "../mutate.ts";
import type { Rng } from "../rng.ts";
import { messageSeeds } from "../seeds.ts";
import type { Outcome, Target } from "../target.ts";
import { T0 } from "./cwt.ts";

const DEVICE = "fuzz-dev";
/** Bad frames a connection may still take when the client moves on (the budget is 16 by default). */
const BAD_FRAME_MARGIN = 4;
/** Zero bytes that complete and discard any partial frame left in the gateway's decoder. */
const FLUSH = new Uint8Array(3 + MAX_PAYLOAD + 4);

interface Session {
  socket: net.Socket;
  conn: Connection;
  link: Link;
  joinRequest: Uint8Array;
  /** Bytes the gateway's Connection has consumed, and who waits for a total. */
  consumed: number;
  waiter?: { total: number; done: () => void };
}

const INNER: InnerMessage[] = [
  { t: Msg.CertQuery, rid: 1, name: "nobody" },
  { t: Msg.Rekey, rid: 2, spi: 77 },
  { t: Msg.Answer, rid: 3, accept: false },
  { t: Msg.Bye, spi: 77 },
  { t: Msg.SaConfirm, rid: 4, spi: 77, tag: new Uint8Array(16) },
  { t: Msg.ConnectRequest, rid: 5, peer: "nobody", app: "chat", from: DEVICE },
];

/** A fast temporary directory when there is one: the store syncs every join counter to disk. */
function dataDir(): string {
  return mkdtempSync(join(existsSync("/dev/shm") ? "/dev/shm" : tmpdir(), "kp-fuzz-link-"));
}

export const linkTcpTarget: Target = {
  name: "link-tcp",
  about: "link frames over TCP to a real gateway on loopback (gateway/link/server.ts Connection.onBytes)",
  async setup(rng) {
    const dir = dataDir();
    const clockMs = { t: 0 };
    // limits and nowMs as a plain object: older gateways without them ignore both.
    const options = { dataDir: dir, listen: { host: "127.0.0.1", port: 0 }, now: () => T0, log: new Logger(() => undefined), nowMs: () => clockMs.t };
    const gw = await Gateway.start(options as GatewayOptions);
    const privates = (o: unknown) => o as { bad?: number; limits?: { maxBadFrames?: number }; decoder?: { buf_: Uint8Array }; deframer?: { pending: Uint8Array } };
    const budget = privates(gw.links).limits?.maxBadFrames ?? 16;
    const crypto = nodeCrypto();
    const codec: Codec = { encode: cbor.encode, decode: cbor.decode };
    const suite = crypto.suites()[0];
    const rootKey = new Uint8Array(randomBytes(16));
    await gw.store.addDevice(DEVICE, rootKey, "emulator", 0);
    let counter = 0;
    let s: Session | undefined;
    const pool = new SeedPool();
    const plaintext = messageSeeds(rng);
    let sealed: Uint8Array[] = [];

    const connect = async (): Promise<Session> => {
      clockMs.t += 3_600_000; // past any join backoff
      const socket = net.connect(gw.address.port, gw.address.host);
      socket.setNoDelay(true);
      await new Promise<void>((resolve, reject) => socket.once("connect", resolve).once("error", reject));
      socket.on("error", () => undefined);
      const replies = new FrameDecoder(zlib.crc32);
      const nonce = new Uint8Array(randomBytes(16));
      const ctr = ++counter;
      const req: JoinRequest = { t: Msg.JoinRequest, id: DEVICE, ctr, nonce, suite, tag: joinTag(crypto, codec, rootKey, DEVICE, ctr, nonce, suite) };
      const joinRequest = cbor.encode(encodeMessage(req));
      const accepted = new Promise<Uint8Array>((resolve) => {
        socket.on("data", (b) => {
          for (const p of replies.push(new Uint8Array(b))) {
            const m = decodeMessage(cbor.decode(p));
            if (!(m instanceof Error) && m.t === Msg.JoinAccept) resolve(m.nonce);
          }
        });
      });
      socket.write(encodeFrame(joinRequest, zlib.crc32));
      const nonceG = await accepted;
      const link = newLink(deriveLinkKeys(crypto, codec, rootKey, DEVICE, ctr, nonce, nonceG, suite), true);
      const conn = gw.links.links.get(DEVICE);
      if (!conn) throw new Error("link-tcp: the gateway holds no link after a join");
      const session: Session = { socket, conn, link, joinRequest, consumed: 0 };
      // Watch this one connection: count what it consumed, after it consumed it.
      const onBytes = conn.onBytes.bind(conn);
      conn.onBytes = (chunk: Uint8Array): void => {
        onBytes(chunk);
        session.consumed += chunk.length;
        if (session.waiter && session.consumed >= session.waiter.total) session.waiter.done();
      };
      // The gateway may close the connection in the middle of an input: nothing more will be consumed.
      conn.socket.once("close", () => session.waiter?.done());
      sealed = INNER.map((m) => sealMessage(crypto, codec, link, m));
      sealed.push(sealFrame(crypto, codec, link, 77, rng.bytes(12)));
      return session;
    };

    const send = (x: Session, bytes: Uint8Array): Promise<void> =>
      new Promise((resolve) => {
        if (x.conn.state.k === "closed") return resolve();
        const total = x.consumed + bytes.length;
        x.waiter = { total, done: () => { x.waiter = undefined; resolve(); } };
        x.socket.write(bytes);
      });

    /** Bytes of an incomplete frame the gateway's reader holds (its field names differ by version). */
    const decoderBuffered = (x: Session): number => {
      const c = privates(x.conn);
      return c.decoder?.buf_.length ?? c.deframer?.pending.length ?? 0;
    };

    /** Stored rows and counters, then the live connection: its state, link window and sequence. */
    const snapshot = async (): Promise<string> => {
      const rows = await gw.store.snapshot();
      const st = s?.conn.state;
      const link = st && st.k === "linked" ? [st.deviceId, st.link.rx_.top, st.link.rx_.bits, st.link.txSeq_, [...gw.links.links.keys()]] : "closed";
      return JSON.stringify([rows, gw.links.stats.joins, gw.links.stats.framesIn, link]);
    };
    /** Equal, or the gateway closed the connection and nothing else changed (a refusal by disconnecting). */
    const sameState = (before: string, after: string): boolean => {
      if (before === after) return true;
      const [b, a] = [JSON.parse(before) as unknown[], JSON.parse(after) as unknown[]];
      return a[3] === "closed" && JSON.stringify(a.slice(0, 3)) === JSON.stringify(b.slice(0, 3));
    };

    s = await connect();
    return {
      seeds: () => [...plaintext, ...sealed, s!.joinRequest],
      async prepare() {
        if (s && s.conn.state.k === "linked" && (privates(s.conn).bad ?? 0) < budget - BAD_FRAME_MARGIN) return false;
        s?.socket.destroy();
        s = await connect();
        return true;
      },
      generate(r: Rng) {
        // A fresh genuine frame now and then: accepted, it moves the replay window.
        if (r.chance(0.01)) return encodeFrame(sealMessage(crypto, codec, s!.link, r.pick(INNER)), zlib.crc32);
        const payload = generate(r, [...plaintext, ...sealed, s!.joinRequest], pool).input;
        if (payload.length >= 1 && payload.length <= MAX_PAYLOAD && r.chance(0.85)) return encodeFrame(payload, zlib.crc32);
        return payload.length ? payload : new Uint8Array([0xa5]);
      },
      async run(input): Promise<Outcome> {
        const x = s!;
        const st = gw.links.stats;
        const taken = st.framesIn + st.joins;
        await send(x, input);
        if (x.conn.state.k !== "closed" && decoderBuffered(x) > 0) await send(x, FLUSH);
        // A join waits for the registry: its outcome is known once the connection's frames are handled.
        await x.conn.idle();
        return st.framesIn + st.joins > taken ? "accepted" : "rejected";
      },
      isRejection: () => false,
      snapshot,
      sameState,
      async disturb() {
        counter += 1000; // the client's next join stays above the stored counter
        await gw.store.advanceJoinCounter(DEVICE, counter);
      },
      async close() {
        s?.socket.destroy();
        await gw.stop();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  },
};
