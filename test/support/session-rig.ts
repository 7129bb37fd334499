// Helpers for the session tests (test/sessions.test.ts): a Node handset that registers the suites a
// test chooses and can lose and regain its link without rebooting, a gateway SymCrypto that records
// what it seals, and the frame surgery the rejection tests need (decode, alter, re-frame with a
// valid CRC). Built on test/support/harness.ts; the firmware's own Handset engine does the work.

import assert from "node:assert/strict";
import net from "node:net";
import { rmSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { crc32 as zlibCrc32 } from "node:zlib";
import * as deviceCbor from "../../firmware/cbor.ts";
import { deviceCrypto } from "../../firmware/crypto/device.ts";
import { espruinoNatives } from "../../firmware/crypto/natives.ts";
import { secretboxSuite } from "../../firmware/crypto/secretbox.ts";
import { SUITE_AES_CCM_16_64_128, type SymCrypto } from "../../firmware/crypto/types.ts";
import { Handset, type Platform } from "../../firmware/handset.ts";
import { encodeFrame, FrameDecoder } from "../../firmware/proto/frame.ts";
import { Msg, type SaData } from "../../firmware/proto/messages.ts";
import { createEspruinoCrypto, crc32 } from "../../emulator/espruino-crypto.ts";
import * as gcbor from "../../gateway/encoding/cbor.ts";
import { nodeCrypto } from "../../gateway/crypto/symmetric.ts";
import type { Gateway } from "../../gateway/gateway.ts";
import { until, type TestGateway } from "./harness.ts";

/** Whatever nodeCrypto() is (GatewayOptions.crypto takes it). */
type GatewayCrypto = ReturnType<typeof nodeCrypto>;

const crc = (b: Uint8Array) => zlibCrc32(b) >>> 0;

/** A complete frame (magic, length, payload, CRC) around payload. */
export function frame(payload: Uint8Array): Uint8Array {
  return encodeFrame(payload, crc);
}

/** The payloads of the whole frames in bytes (one transport write may hold several). */
export function payloadsOf(bytes: Uint8Array): Uint8Array[] {
  return new FrameDecoder(crc).push(bytes);
}

/** The SaData message in an encoded frame, or undefined when it carries something else. */
export function saDataIn(f: Uint8Array): SaData | undefined {
  for (const p of payloadsOf(f)) {
    const w = gcbor.decode(p) as unknown[];
    if (Array.isArray(w) && w[0] === Msg.SaData) return { t: Msg.SaData, spi: w[1] as number, seq: w[2] as number, sealed: w[3] as Uint8Array };
  }
  return undefined;
}

/** An SaData frame [5, spi, seq, sealed] with a valid CRC. */
export function saDataFrame(m: { spi: number; seq: number; sealed: Uint8Array }): Uint8Array {
  return frame(gcbor.encode([Msg.SaData, m.spi, m.seq, m.sealed]));
}

/** The gateway's crypto (node:crypto and tweetnacl) with every seal's plaintext recorded, in order;
 *  observe, when given, sees each seal's suite, key, nonce and plaintext (for an AesLedger). */
export function recordingCrypto(observe?: (suite: number, key: Uint8Array, nonce: Uint8Array, pt: Uint8Array) => void): { crypto: GatewayCrypto; seals: { suite: number; plaintext: Uint8Array }[] } {
  const inner = nodeCrypto();
  const seals: { suite: number; plaintext: Uint8Array }[] = [];
  const crypto: GatewayCrypto = {
    ...inner,
    seal: (suite, key, nonce, pt) => {
      seals.push({ suite, plaintext: new Uint8Array(pt) });
      if (observe) observe(suite, key, nonce, pt);
      return inner.seal(suite, key, nonce, pt);
    },
  };
  return { crypto, seals };
}

/** The inner messages (decoded CBOR arrays) among recorded seal plaintexts. */
export function innerMessages(seals: { plaintext: Uint8Array }[]): unknown[][] {
  const out: unknown[][] = [];
  for (const s of seals) {
    try {
      const v = gcbor.decode(s.plaintext);
      if (Array.isArray(v)) out.push(v);
    } catch {
      // not CBOR: not an inner message
    }
  }
  return out;
}

export interface SessionHandset {
  id: string;
  h: Handset;
  /** Application data delivered by onMessage (as text), and every onClose as [spi, reason]; the
   *  hooks are installed by sessionHandset and a test may replace them. */
  inbox: string[];
  closed: [number, number][];
  /** The engine's log lines ("KP drop: sa 1", ...). */
  lines: string[];
  /** Every transport write of the handset, in order. */
  sent: Uint8Array[];
  /** Payloads of the frames the handset received, in order, across reconnections. */
  received: Uint8Array[];
  socket: net.Socket;
  /** Drops the TCP connection (the handset keeps its SAs, as after a radio outage) and waits until the
   *  engine has seen the link go down. */
  dropLink(): Promise<void>;
  /** Connects the same engine again (no reboot: it joins but sends no "I hold no SAs" bye). */
  reconnect(): Promise<void>;
  close(): void;
}

export interface SessionHandsetOptions {
  /** [suite, priority] pairs registered for sessions (default: AES-CCM only). */
  suites?: number[][];
  /** Registration lifetime asked for, seconds. */
  lifetime?: number;
  /** Where each connection goes (several instances of a domain: any of them); default the gateway's address. */
  target?: () => { host: string; port: number };
}

/** The device crypto on the model of Espruino's natives, with secretbox (as the emulator board has). */
function deviceCryptoWithSecretbox(): SymCrypto {
  const { cryptoModule } = createEspruinoCrypto({ aesEcbCbc: true, aesCcm: false });
  return deviceCrypto(espruinoNatives(cryptoModule, undefined, { hwRand: () => randomBytes(4).readUInt32LE(0) }), [secretboxSuite]);
}

/** The firmware's Handset engine in Node over TCP to gw, registering the suites asked for. */
export async function sessionHandset(gw: Pick<Gateway, "address">, id: string, rootKey: Uint8Array, o: SessionHandsetOptions = {}): Promise<SessionHandset> {
  const lines: string[] = [];
  const sent: Uint8Array[] = [];
  const received: Uint8Array[] = [];
  let counter = 0;
  const p: Platform = {
    crypto: deviceCryptoWithSecretbox(),
    cbor: deviceCbor,
    crc32,
    counter: (n) => (n === undefined ? counter : (counter = n)),
    now: () => Date.now() / 1000,
    setTimeout: (fn, ms) => setTimeout(fn, ms),
    clearTimeout: (t) => clearTimeout(t),
    log: (l) => lines.push(l),
  };
  const h = new Handset({ id, rootKey, lifetime: o.lifetime ?? 600, suite: SUITE_AES_CCM_16_64_128, suites: o.suites ?? [[SUITE_AES_CCM_16_64_128, 1]] }, p);
  let ended = false;

  const connect = () => new Promise<net.Socket>((resolve, reject) => {
    const decoder = new FrameDecoder(crc);
    const to = o.target?.() ?? gw.address;
    const socket = net.connect(to.port, to.host, () => {
      h.up({ write: (b) => { sent.push(b); socket.write(b); } });
      resolve(socket);
    });
    socket.on("data", (b) => {
      const bytes = new Uint8Array(b);
      received.push(...decoder.push(bytes));
      h.receive(bytes);
    });
    // Only the current socket's end takes the link down (an old one closing late must not).
    socket.on("close", () => { if (r.socket === socket) h.down(); });
    socket.on("error", reject);
  });

  const inbox: string[] = [];
  const closed: [number, number][] = [];
  h.onMessage = (data) => { inbox.push(Buffer.from(data).toString("latin1")); };
  h.onClose = (spi, reason) => { closed.push([spi, reason]); };
  const r: SessionHandset = {
    id, h, inbox, closed, lines, sent, received,
    socket: undefined as unknown as net.Socket,
    dropLink: async () => {
      r.socket.destroy();
      await until(() => h.status().state === "down", `${id}'s link to go down`);
    },
    reconnect: async () => {
      if (ended) throw new Error("handset closed");
      r.socket = await connect();
    },
    close: () => {
      ended = true;
      h.down();
      r.socket.destroy();
    },
  };
  r.socket = await connect();
  return r;
}

/** Stops the gateway and removes its data directory. */
export async function stopGateway(t: TestGateway): Promise<void> {
  await t.gw.stop();
  rmSync(t.dataDir, { recursive: true, force: true });
}

/** `caller` calls `callee` (by `name`, "id" or "id@domain"; default its id) for `app`, the callee
 *  accepting any caller for it; resolves with the SPI once both ends hold the confirmed SA. */
export async function connectPair(caller: SessionHandset, callee: SessionHandset, app: string, name = callee.id, ms = 15_000): Promise<number> {
  callee.h.onRequest = (_from, asked) => asked === app;
  const known = new Set([...caller.h.sas, ...callee.h.sas].map((s) => s.spi));
  const fresh = (x: SessionHandset) => x.h.sas.find((s) => s.ready && !known.has(s.spi));
  assert.equal(caller.h.connect(name, app), true);
  await until(() => !!fresh(caller) && !!fresh(callee), `an SA between ${caller.id} and ${name}`, ms);
  assert.equal(fresh(caller)!.spi, fresh(callee)!.spi, "one SPI at both ends");
  return fresh(caller)!.spi;
}

/** One message each way on the SA, each arriving once. */
export async function exchange(a: SessionHandset, b: SessionHandset, spi: number, tag: string, ms = 10_000): Promise<void> {
  for (const [from, to] of [[a, b], [b, a]] as const) {
    const msg = `${tag} ${from.id}->${to.id}`;
    assert.equal(from.h.send(spi, new Uint8Array(Buffer.from(msg, "latin1"))), true, `${from.id} may send on ${spi.toString(16)}`);
    await until(() => to.inbox.includes(msg), `"${msg}" to arrive`, ms);
    assert.equal(to.inbox.filter((m) => m === msg).length, 1, `"${msg}" arrived once`);
  }
}
