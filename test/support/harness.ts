// Test harness: an in-process gateway on a temporary data directory (real SQLite file, or PostgreSQL
// with KEYPROXY_TEST_ENGINE=postgres; real TCP), a
// clock the test controls, a captured log, and handsets that run the firmware's own Handset engine in
// Node over a real socket, with the device crypto on the model of Espruino's natives.
import net from "node:net";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import * as deviceCbor from "../../firmware/cbor.ts";
import { deviceCrypto } from "../../firmware/crypto/device.ts";
import { espruinoNatives } from "../../firmware/crypto/natives.ts";
import { SUITE_AES_CCM_16_64_128 } from "../../firmware/crypto/types.ts";
import { Handset, type Platform } from "../../firmware/handset.ts";
import { createEspruinoCrypto, crc32 } from "../../emulator/espruino-crypto.ts";
import { Gateway, openStore, type GatewayOptions } from "../../gateway/gateway.ts";
import type { Store } from "../../gateway/registry/store.ts";
import { testDatabase } from "./postgres.ts";
import { Logger } from "../../gateway/log/logger.ts";

export function tempDir(prefix = "kp-"): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export class Clock {
  t = 1_800_000_000;
  now = (): number => this.t;
  advance(s: number): void { this.t += s; }
}

export interface TestGateway {
  gw: Gateway;
  logs: string[];
  clock: Clock;
  dataDir: string;
  /** Log records (parsed) whose event matches. */
  events(event: string): Record<string, unknown>[];
}

/** The engine the in-process gateways of this test process keep their registry in: SQLite, or with
 *  KEYPROXY_TEST_ENGINE=postgres a fresh PostgreSQL database per data directory (test/engines.test.ts
 *  runs the gateway suite so: one suite, two engines). */
export const TEST_ENGINE: "sqlite" | "postgres" = process.env.KEYPROXY_TEST_ENGINE === "postgres" ? "postgres" : "sqlite";
const databases = new Map<string, string>();

/** The PostgreSQL database of dataDir's gateway (the same one when it restarts), or undefined on SQLite. */
export async function testDatabaseOf(dataDir: string): Promise<string | undefined> {
  if (TEST_ENGINE === "sqlite") return undefined;
  let url = databases.get(dataDir);
  if (!url) {
    const db = await testDatabase();
    if (!db) throw new Error("KEYPROXY_TEST_ENGINE=postgres, but no PostgreSQL to test against");
    url = db.url;
    databases.set(dataDir, url);
  }
  return url;
}

/** The registry dataDir's gateway uses, opened beside it (as `keyproxy device` would). */
export async function openTestRegistry(dataDir: string): Promise<Store> {
  return openStore(dataDir, await testDatabaseOf(dataDir));
}

export async function startGateway(opts: Partial<GatewayOptions> = {}): Promise<TestGateway> {
  const logs: string[] = [];
  const clock = new Clock();
  const dataDir = opts.dataDir ?? tempDir();
  const database = opts.database ?? (await testDatabaseOf(dataDir));
  const gw = await Gateway.start({ dataDir, database, listen: { host: "127.0.0.1", port: 0 }, now: clock.now, log: new Logger((l) => logs.push(l)), ...opts });
  return { gw, logs, clock, dataDir, events: (e) => logs.map((l) => JSON.parse(l)).filter((r) => r.event === e) };
}

/** A device with a fresh root key in gw's registry, committed before it resolves. */
export async function provision(gw: Gateway, id: string): Promise<Uint8Array> {
  const key = new Uint8Array(randomBytes(16));
  await gw.store.addDevice(id, key, "emulator", 0);
  return key;
}

export function nodeDeviceCrypto() {
  const { cryptoModule } = createEspruinoCrypto({ aesEcbCbc: true, aesCcm: false });
  const E = { hwRand: () => randomBytes(4).readUInt32LE(0) };
  return deviceCrypto(espruinoNatives(cryptoModule, undefined, E), []);
}

/** The firmware id the Node handset reports when it registers. It reports no memory use: Node has no
 *  Espruino variables, so it sends 0 ("unknown"); a test may set `h.p_.memory` to report some. */
export const NODE_FIRMWARE = "node-harness";

export interface NodeHandset {
  h: Handset;
  lines: string[];
  counter: { value: number };
  socket: net.Socket;
  /** Bytes the handset sent, frame by frame. */
  sent: Uint8Array[];
  close(): void;
}

/** The firmware's Handset engine in Node, connected to gw over TCP. */
export function nodeHandset(gw: Gateway, id: string, rootKey: Uint8Array, lifetime = 600, counter = { value: 0 }): Promise<NodeHandset> {
  const lines: string[] = [];
  const sent: Uint8Array[] = [];
  const p: Platform = {
    crypto: nodeDeviceCrypto(),
    cbor: deviceCbor,
    crc32,
    counter: (n) => (n === undefined ? counter.value : (counter.value = n)),
    now: () => Date.now() / 1000,
    setTimeout: (fn, ms) => setTimeout(fn, ms),
    clearTimeout: (id) => clearTimeout(id),
    log: (l) => lines.push(l),
    firmware: NODE_FIRMWARE,
  };
  const h = new Handset({ id, rootKey, lifetime, suite: SUITE_AES_CCM_16_64_128, suites: [[SUITE_AES_CCM_16_64_128, 1]] }, p);
  return new Promise((resolve, reject) => {
    const socket = net.connect(gw.address.port, gw.address.host, () => {
      h.up({ write: (b) => { sent.push(b); socket.write(b); } });
      resolve({ h, lines, counter, socket, sent, close: () => { h.down(); socket.destroy(); } });
    });
    socket.on("data", (b) => h.receive(new Uint8Array(b)));
    socket.on("close", () => h.down());
    socket.on("error", reject);
  });
}

/** Waits until cond holds (it may read the registry, which answers asynchronously). */
export async function until(cond: () => boolean | Promise<boolean>, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A raw TCP client for sending crafted bytes and reading frames back. */
export function rawClient(gw: Gateway): Promise<{ socket: net.Socket; received: Uint8Array[]; write(b: Uint8Array): void }> {
  return new Promise((resolve, reject) => {
    const received: Uint8Array[] = [];
    const socket = net.connect(gw.address.port, gw.address.host, () => resolve({ socket, received, write: (b) => socket.write(b) }));
    socket.on("data", (b) => received.push(new Uint8Array(b)));
    socket.on("error", reject);
  });
}
