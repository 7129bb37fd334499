// The only firmware code that touches Espruino's globals: it reads the provisioned configuration from
// Storage, builds the Handset on Espruino's own natives and connects the board's transport.

import { decode, encode } from "../cbor.ts";
import type { SymCrypto } from "../crypto/types.ts";
import { Handset } from "../handset.ts";
import { FRAME_MAGIC } from "../proto/frame.ts";
import { BLE_NAME_PREFIX } from "../proto/ble.ts";

/** The bundle's id, defined by the build (flash/build.ts): package version and a hash of the bundle. */
declare const KP_FIRMWARE: string | undefined;

const COUNTER_FILE = "kp.ctr";
const CONFIG_FILE = "kp.cfg";

/** What provisioning writes into Storage (kp.cfg). */
export interface ProvisionedConfig {
  id: string;
  /** The 16-byte root key, hex. */
  key: string;
  /** Gateway address for TCP boards, "host:port". */
  gw?: string;
  /** Desired registration lifetime, seconds. */
  life?: number;
  /** 1: a BLE central that is not keyproxy's gets the REPL (`keyproxy provision --ble-repl`). */
  repl?: number;
  /** The Wi-Fi network an ESP32 joins before it opens TCP (`keyproxy provision --wifi-ssid`). */
  wifi?: { ssid: string; password: string };
}

/** The join counter in Storage (Platform.counter): read, or write then read back. */
function counter(n?: number): number {
  const s = espruinoRequire("Storage");
  if (n !== undefined && !s.write(COUNTER_FILE, String(n))) return -1;
  const v = parseInt(s.read(COUNTER_FILE) || "0", 10);
  return n === undefined ? (v > 0 ? v : 0) : v === n ? n : -1;
}

/** The handset for the provisioned identity, published as the global KP (KP.status() on the console),
 *  or undefined (and a log line) when Storage holds no valid configuration. suites: most preferred first. */
export function startHandset(crypto: SymCrypto, suites: number[]): Handset | undefined {
  const cfg = espruinoRequire("Storage").readJSON(CONFIG_FILE, true) as ProvisionedConfig | undefined;
  // No counted quantifier ({32}): Espruino's regular expressions take it as literal text.
  if (!cfg || typeof cfg.id !== "string" || typeof cfg.key !== "string" || cfg.key.length !== 32 || !/^[0-9a-f]+$/.test(cfg.key)) {
    print("KP not provisioned: no valid " + CONFIG_FILE);
    return undefined;
  }
  const key = new Uint8Array(16);
  for (let i = 0; i < 16; i++) key[i] = parseInt(cfg.key.substr(2 * i, 2), 16);
  const pairs: number[][] = [];
  for (let i = 0; i < suites.length; i++) pairs.push([suites[i], i + 1]); // priority 1 is the best (seed 003)
  const h = new Handset(
    { id: cfg.id, rootKey: key, lifetime: cfg.life || 3600, suite: suites[0], suites: pairs },
    // Espruino's natives as they are: no wrapper functions to keep alive.
    {
      crypto: crypto, cbor: { encode: encode, decode: decode }, crc32: E.CRC32, counter: counter, now: getTime, setTimeout: setTimeout, clearTimeout: clearTimeout, log: print,
      firmware: typeof KP_FIRMWARE === "string" ? KP_FIRMWARE : undefined, memory: process.memory,
    },
  );
  global.KP = h;
  return h;
}

/** TCP (ESP32, emulator): we connect to the gateway in kp.cfg and reconnect with backoff. With Wi-Fi
 *  settings in kp.cfg (ESP32) every attempt joins the network first, and a network that drops takes
 *  the socket down with it, so the next attempt joins again. */
export function startTcp(h: Handset): void {
  const cfg = espruinoRequire("Storage").readJSON(CONFIG_FILE, true) as ProvisionedConfig;
  const gw = String(cfg.gw);
  const i = gw.lastIndexOf(":");
  const w = cfg.wifi;
  const wifi = w ? espruinoRequire("Wifi") : 0;
  let joined = !wifi;
  let wait = 1000;
  let sock: { end(): void } | undefined;
  // connect(1): again after the backoff; connect(): join the network if need be, then open the socket.
  const connect = (again?: number) => {
    if (again) {
      wait = Math.min(wait * 2, 30000);
      setTimeout(connect, wait);
      return;
    }
    // Never printed or logged: the network's name and password stay in kp.cfg.
    if (!joined) return wifi.connect(w!.ssid, { password: w!.password }, (err: unknown) => {
      joined = !err;
      connect(err ? 1 : 0);
    });
    const s = espruinoRequire("net").connect({ host: gw.substr(0, i), port: parseInt(gw.substr(i + 1), 10) }, () => {
      wait = 1000;
      h.up({ write: (b: Uint8Array) => s.write(E.toString(b)) });
    });
    sock = s;
    s.on("data", (d: string) => h.receive(E.toUint8Array(d)));
    s.on("error", () => {});
    s.on("close", () => {
      sock = undefined;
      h.down();
      connect(1);
    });
  };
  if (wifi) wifi.on("disconnected", () => {
    joined = false;
    if (sock) sock.end();
  });
  connect();
}

/** BLE UART (Puck.js, Bangle.js 2): the link shares the Nordic UART with the developer's tools
 *  (docs/INTERPRETER.md, "The BLE console is shared"). On connect Espruino moves its console (the REPL)
 *  to Bluetooth, where the link's bytes would be typed into the REPL instead of reaching
 *  Bluetooth.on("data"): so the console goes at once back where it was at boot (Serial1 when wired;
 *  LoopbackA, where nothing types, when it was on Bluetooth already) and the handset sends its join.
 *  A keyproxy central writes nothing before that, and its first write is the gateway's answer, a frame:
 *  FRAME_MAGIC first. Any other first byte is someone else (the Espruino IDE sends "\n" or Ctrl-C).
 *  On a handset provisioned for development (`keyproxy provision --ble-repl`, kp.cfg "repl") the
 *  handset lets go, the console returns to Bluetooth with what came so far typed into it, and the
 *  link stays down until that central leaves. Otherwise, the default, the REPL never goes to
 *  Bluetooth (whoever has it can read the root key): every central is the link's, whose frame layer
 *  drops what is not a frame. Bluetooth.write takes the frame bytes as they are. */
export function startBle(h: Handset): void {
  const home = E.getConsole();
  const cfg = espruinoRequire("Storage").readJSON(CONFIG_FILE, true) as ProvisionedConfig;
  // Only a handset provisioned for development hands anyone the REPL, and with it the root key.
  const repl = cfg.repl;
  // The name a keyproxy central finds it by (gateway/ble/central.ts).
  NRF.setAdvertising({}, { name: BLE_NAME_PREFIX + cfg.id });
  // Who the central is: 0 not known yet (nothing received), 1 keyproxy's, 2 a developer's.
  let peer = 0;
  Bluetooth.on("data", (s: string) => {
    if (!peer) {
      peer = repl && s.charCodeAt(0) !== FRAME_MAGIC ? 2 : 1;
      if (peer > 1) {
        h.down();
        Bluetooth.setConsole();
        Bluetooth.inject(s);
      }
    }
    // A developer's bytes come here no more: Espruino types them into the console on Bluetooth, or,
    // should their code move the console away, they are theirs and still not the link's.
    if (peer < 2) h.receive(E.toUint8Array(s));
  });
  NRF.on("connect", () => {
    peer = 0;
    E.setConsole(home && home !== "Bluetooth" ? home : "LoopbackA");
    h.up(Bluetooth);
  });
  // A console still on Bluetooth goes home by itself (Espruino moves it when the central leaves); the
  // next central is told apart afresh at its connect.
  NRF.on("disconnect", () => h.down());
}
