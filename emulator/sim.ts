// keyproxy sim: N emulated handsets running the real firmware bundle against a gateway. Each handset
// is provisioned like a real one would be: a fresh root key in the gateway's registry, the same key and
// id written into the handset's Storage (kp.cfg), the bundle into .bootcde.

import { randomBytes } from "node:crypto";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { getBoard } from "../boards/index.ts";
import { openStore } from "../gateway/gateway.ts";
import { EmulatedDevice } from "./device.ts";
import { CLOSE_REASON_NAMES, ERROR_NAMES } from "../gateway/log/protocol-names.ts";

export interface SimOptions {
  /** The gateway's data directory: sim enters its handsets in this registry. */
  dataDir: string;
  gateway: { host: string; port: number };
  count: number;
  board: string;
  /** The firmware bundle (text), as built by `keyproxy build`. */
  bundle: string;
  prefix?: string;
  /** Desired registration lifetime, seconds. */
  lifetime?: number;
  /** Where the handsets' Storage lives (default: <dataDir>/sim). */
  simDir?: string;
  onLog?: (device: string, line: string) => void;
}

/** Writes id, key and gateway into a handset's Storage and the registry, unless both already agree. */
export async function provisionEmulated(dev: EmulatedDevice, dataDir: string, id: string, board: string, gateway: { host: string; port: number }, lifetime: number, database?: string): Promise<void> {
  const store = await openStore(dataDir, database);
  try {
    const cfgBytes = dev.storage.read("kp.cfg");
    const cfg = cfgBytes ? (JSON.parse(Buffer.from(cfgBytes).toString()) as { id: string; key: string }) : undefined;
    const known = await store.getDevice(id);
    if (cfg && cfg.id === id && known && Buffer.from(known.rootKey).toString("hex") === cfg.key) return;
    const key = randomBytes(16);
    await store.atomically(async () => {
      if (known) await store.replaceDevice(id, key, board, Math.floor(Date.now() / 1000));
      else await store.addDevice(id, key, board, Math.floor(Date.now() / 1000));
      // Inside the transaction: if Storage cannot be written, the registry entry rolls back.
      dev.storage.erase("kp.ctr");
      dev.storage.write("kp.cfg", JSON.stringify({ id, key: key.toString("hex"), gw: `${gateway.host}:${gateway.port}`, life: lifetime }));
    });
    key.fill(0);
  } finally {
    await store.close();
  }
}

export async function startSim(o: SimOptions): Promise<{ devices: EmulatedDevice[]; stop(): void }> {
  const board = getBoard(o.board);
  const simDir = o.simDir ?? join(o.dataDir, "sim");
  const devices: EmulatedDevice[] = [];
  for (let i = 1; i <= o.count; i++) {
    const id = `${o.prefix ?? "sim"}-${i}`;
    const storageDir = join(simDir, id);
    mkdirSync(storageDir, { recursive: true, mode: 0o700 });
    const dev = new EmulatedDevice({ board: board.id, storageDir, gateway: o.gateway, name: id });
    await provisionEmulated(dev, o.dataDir, id, board.id, o.gateway, o.lifetime ?? 3600);
    dev.storage.write(".bootcde", o.bundle);
    if (o.onLog) dev.on("log", (line: string) => o.onLog!(id, line));
    devices.push(dev);
  }
  for (const d of devices) await d.boot();
  return { devices, stop: () => devices.forEach((d) => d.powerOff()) };
}

// What the demo applications print, in the names and the SPI form every keyproxy output uses
// (gateway/log/protocol-names.ts): the tables go into the console code, so the handset prints names.
const SPI_TEXT = `"0x" + ("0000000" + (spi >>> 0).toString(16)).slice(-8)`;

/** The caller's last line when its call ended as planned, and its line when the call failed. */
export const CALL_DONE = "demo: hung up";
export const CALL_FAILED = "demo: call failed";

/** Console code for a handset that takes calls for `app` and echoes every message back, printing
 *  "demo: ..." lines. Typed into the handset's console as a user would. */
export function echoApp(app: string): string {
  const a = JSON.stringify(app);
  return `KP.onRequest = function (from, app) { return app === ${a}; };
KP.onMessage = function (d, spi, peer) { print('demo: got "' + E.toString(d) + '" from ' + peer + ', echoing'); KP.send(spi, E.toUint8Array("echo: " + E.toString(d))); };
KP.onClose = function (spi, reason) { print("demo: session " + ${SPI_TEXT} + " closed: " + (${JSON.stringify(CLOSE_REASON_NAMES)}[reason] || "reason " + reason)); }; 1`;
}

/** Console code for a handset that calls `peer` for `app`, sends `count` messages a second apart,
 *  prints what comes back and hangs up; a refused call prints the error's name. */
export function callerApp(peer: string, app: string, count = 3): string {
  return `KP.lastCode = 0;
var demoWait = setInterval(function () {
  if (!KP.lastCode) return;
  clearInterval(demoWait);
  print("${CALL_FAILED}: " + (${JSON.stringify(ERROR_NAMES)}[KP.lastCode] || "error " + KP.lastCode));
}, 250);
KP.onConnect = function (spi, peer) {
  clearInterval(demoWait);
  print("demo: end-to-end session with " + peer + " up, spi " + ${SPI_TEXT});
  var i = 0;
  var t = setInterval(function () {
    if (++i > ${count}) { clearInterval(t); KP.close(spi); print("${CALL_DONE}"); return; }
    KP.send(spi, E.toUint8Array("hello " + i));
  }, 1000);
};
KP.onMessage = function (d, spi, peer) { print('demo: got "' + E.toString(d) + '" from ' + peer); };
if (!KP.connect(${JSON.stringify(peer)}, ${JSON.stringify(app)})) { clearInterval(demoWait); print("${CALL_FAILED}: not linked, or another request is outstanding"); } 1`;
}

/** Waits until the device says it is registered (false after `ms`). */
export async function whenRegistered(dev: EmulatedDevice, ms = 30_000, stopped = () => false): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end && !stopped(); ) {
    if (dev.eval("KP.status().registered") === true) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}
