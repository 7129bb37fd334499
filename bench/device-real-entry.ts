// The real-interpreter benchmark's device bundle (bench/real-device.ts): bench/device-ops.ts on the
// board's own natives and nothing else, exposed on Espruino's `global` as `kpBench`. Like the board
// entries in firmware/targets/, it carries only the AES-CCM suite (no secretbox: a Puck.js bundle has
// none, and a Puck.js has no room for it next to tweetnacl), on require("crypto").AES where the
// interpreter has it (Puck.js, ESP32) or on the global AES.ccmEncrypt/ccmDecrypt (Bangle.js 2).
// Built by flash/build.ts like a board entry, so it passes the same lint and Espruino gate.

import { decode, encode } from "../firmware/cbor.ts";
import { DeviceCrypto, deviceSuites } from "../firmware/crypto/device.ts";
import { deviceOps } from "./device-ops.ts";

// Espruino's globals, for this file only (see bench/device-entry.ts).
declare function espruinoRequire(name: string): any;
declare const E: { hwRand(): number; CRC32(data: Uint8Array): number };
declare const global: any;

const COUNTER_FILE = "kp.ctr";

const cm = espruinoRequire("crypto");
const crypto = new DeviceCrypto({ crypto: cm, aes: cm.AES ? undefined : global.AES, E: E });

/** The join counter as firmware/platform/espruino.ts keeps it in Storage. */
function counter(n?: number): number {
  const s = espruinoRequire("Storage");
  if (n !== undefined && !s.write(COUNTER_FILE, String(n))) return -1;
  const v = parseInt(s.read(COUNTER_FILE) || "0", 10);
  return n === undefined ? (v > 0 ? v : 0) : v === n ? n : -1;
}

const cbor = { encode: encode, decode: decode };
const platform = { crypto: crypto, cbor: cbor, crc32: E.CRC32, counter: counter };

global.kpBench = {
  make: () => deviceOps(platform),
  suites: () => deviceSuites(crypto),
  /** The firmware's own primitives, timed one by one for the cost breakdown. */
  crypto: crypto,
  cbor: cbor,
};
