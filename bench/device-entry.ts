// The benchmark's device bundle: bench/device-ops.ts on Espruino's natives and Storage, exposed on
// Espruino's `global` as `kpBench.make()` for bench/run.ts to time inside the emulator. Built by
// flash/build.ts like a board entry, so it passes the same Espruino-subset lint and gate as the
// firmware it measures. Not a firmware target: it talks to no gateway; bench/run.ts hands in what the
// gateway would send.

import { decode, encode } from "../firmware/cbor.ts";
import { DeviceCrypto, deviceSuites } from "../firmware/crypto/device.ts";
import { secretboxSuite } from "../firmware/crypto/secretbox.ts";
import { deviceOps } from "./device-ops.ts";

// Espruino's globals, declared for this file only: firmware/espruino.d.ts cannot join the Node-side
// type check (tsc -p .), which covers bench/ and has Node's own setTimeout, console and global.
declare function espruinoRequire(name: string): any;
declare const E: { hwRand(): number; CRC32(data: Uint8Array): number };
declare const global: any;

/** The counter file of firmware/platform/espruino.ts. */
const COUNTER_FILE = "kp.ctr";

// As firmware/targets/emulator.ts builds it: the board's natives as they are, plus secretbox.
const crypto = new DeviceCrypto({ crypto: espruinoRequire("crypto"), aes: undefined, E: E }, [secretboxSuite]);

// The join counter exactly as firmware/platform/espruino.ts keeps it in Storage. That file cannot be
// imported here: the Node-side type check, which covers bench/, does not know Espruino's globals.
function counter(n?: number): number {
  const s = espruinoRequire("Storage");
  if (n !== undefined && !s.write(COUNTER_FILE, String(n))) return -1;
  const v = parseInt(s.read(COUNTER_FILE) || "0", 10);
  return n === undefined ? (v > 0 ? v : 0) : v === n ? n : -1;
}

const platform = { crypto: crypto, cbor: { encode: encode, decode: decode }, crc32: E.CRC32, counter: counter };

global.kpBench = {
  /** A fresh set of operations with its own join and link state (they share the counter file). */
  make: () => deviceOps(platform),
  suites: () => deviceSuites(crypto),
};
