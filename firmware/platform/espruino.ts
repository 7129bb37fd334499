// The only firmware code that touches Espruino's globals: it builds the Platform for the Handset,
// reads the provisioned configuration from Storage and connects the board's transport.

import { fromHex, type Bytes } from "../bytes.ts";
import { decode, encode } from "../cbor.ts";
import type { SymCrypto } from "../crypto/types.ts";
import { Handset, type Platform } from "../handset.ts";

const COUNTER_FILE = "kp.ctr";
const CONFIG_FILE = "kp.cfg";

export interface ProvisionedConfig {
  id: string;
  key: string;
  /** Gateway address for TCP boards, "host:port". */
  gw?: string;
  /** Desired registration lifetime, seconds. */
  life?: number;
}

export function espruinoPlatform(crypto: SymCrypto): Platform {
  const storage = espruinoRequire("Storage");
  return {
    crypto: crypto,
    cbor: { encode: encode, decode: decode },
    crc32: (b: Bytes) => E.CRC32(b),
    loadCounter: () => {
      const n = parseInt(storage.read(COUNTER_FILE) || "0", 10);
      return n > 0 ? n : 0;
    },
    storeCounter: (n: number) => storage.write(COUNTER_FILE, String(n)) && storage.read(COUNTER_FILE) === String(n),
    now: () => getTime(),
    after: (ms: number, fn: () => void) => setTimeout(fn, ms),
    cancel: (id: number) => { if (id) clearTimeout(id); },
    log: (line: string) => console.log(line),
  };
}

/** The provisioned identity and key, or undefined (and a log line) when Storage has none. */
export function loadConfig(): ProvisionedConfig | undefined {
  const cfg = espruinoRequire("Storage").readJSON(CONFIG_FILE, true) as ProvisionedConfig | undefined;
  if (!cfg || typeof cfg.id !== "string" || typeof cfg.key !== "string" || !fromHex(cfg.key)) {
    console.log("KP not provisioned: no valid " + CONFIG_FILE);
    return undefined;
  }
  return cfg;
}

export function makeHandset(cfg: ProvisionedConfig, crypto: SymCrypto, suites: number[]): Handset {
  const pairs: number[][] = [];
  for (let i = 0; i < suites.length; i++) pairs.push([suites[i], suites.length - i]);
  const h = new Handset({ id: cfg.id, rootKey: fromHex(cfg.key) as Bytes, lifetime: cfg.life || 3600, suite: suites[0], suites: pairs }, espruinoPlatform(crypto));
  // A handle for the console and for tests: KP.status(), KP.deregister().
  (global as { KP?: Handset }).KP = h;
  return h;
}

/** BLE UART (Puck.js, Bangle.js 2): the gateway's BLE central connects to us. */
export function startBleUart(h: Handset): void {
  Bluetooth.on("data", (s: string) => h.receive(E.toUint8Array(s)));
  NRF.on("connect", () => h.up((b: Bytes) => Bluetooth.write(E.toString(b))));
  NRF.on("disconnect", () => h.down());
}

/** TCP (ESP32, emulator): we connect to the gateway and reconnect with backoff when the link drops. */
export function startTcp(h: Handset, gw: string): void {
  const i = gw.lastIndexOf(":");
  const host = gw.substr(0, i);
  const port = parseInt(gw.substr(i + 1), 10);
  let wait = 1000;
  const connect = () => {
    const sock = espruinoRequire("net").connect({ host: host, port: port }, () => {
      wait = 1000;
      h.up((b: Bytes) => sock.write(E.toString(b)));
    });
    sock.on("data", (s: string) => h.receive(E.toUint8Array(s)));
    sock.on("error", () => {});
    sock.on("close", () => {
      h.down();
      wait = Math.min(wait * 2, 30000);
      setTimeout(connect, wait);
    });
  };
  connect();
}
