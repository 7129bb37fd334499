// Board profiles: what each supported device has and what the firmware may spend on it.
// Memory and native-crypto facts are from design.md §5 (measured on the real interpreter) and the
// Espruino board files; budgets are ours: bundle bytes checked by `keyproxy build`, variables by
// test/real-memory.test.ts on the real Espruino interpreter (bench/real-memory.ts measures them;
// docs/BENCHMARKS.md "Memory on the real interpreter" has the figures).

import { SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305 } from "../firmware/crypto/types.ts";

/** "wifi": the board joins a Wi-Fi network (kp.cfg "wifi") before it opens TCP. */
export type Transport = "ble-uart" | "wifi" | "tcp" | "serial";

export interface BoardProfile {
  id: string;
  name: string;
  /** Espruino's JsVar pool: how many variables and how many bytes each. */
  vars: number;
  bytesPerVar: number;
  storageBytes: number;
  natives: {
    sha256: boolean;
    /** require("crypto").AES with ECB/CBC (CTR ignores the IV: never used). */
    aesEcbCbc: boolean;
    /** Bangle.js 2's global AES.ccmEncrypt/ccmDecrypt (no additional data). */
    aesCcm: boolean;
  };
  /** "full" CBOR decodes floats, tags and indefinite lengths too; "core" (boards short of bytes)
   *  refuses them: the protocol never uses them. */
  cbor: "full" | "core";
  /** Link and SA suites the firmware for this board carries, most preferred first. */
  suites: number[];
  transports: Transport[];
  /** Serial console pins and speed where the board exposes one; null where it does not. */
  serial: { rx: string; tx: string; baud: number } | null;
  budget: {
    /** Minified bundle bytes. */
    bundleBytes: number;
    /** keyproxy's own Espruino variables (process.memory().usage in the 32-bit interpreter sized like
     *  the board, minus that of the empty interpreter with the test's stand-ins), at rest: joined
     *  and registered. */
    varsAtRest: number;
    /** The same with one SA open, at either end. */
    varsOneSa: number;
    /** The same under load: four SAs open, and the peak of a join and of a rekey. */
    varsLoaded: number;
  };
}

export const BOARDS: Record<string, BoardProfile> = {
  puckjs: {
    id: "puckjs",
    name: "Puck.js v2 (nRF52832)",
    vars: 2630,
    bytesPerVar: 13,
    storageBytes: 40 * 1024,
    natives: { sha256: true, aesEcbCbc: true, aesCcm: false },
    cbor: "core",
    suites: [SUITE_AES_CCM_16_64_128],
    transports: ["ble-uart", "serial"],
    serial: { rx: "D28", tx: "D29", baud: 9600 },
    // Bytes: the bundle is flashed beside the running one (flash/flash.ts stages it, then copies), so
    // two copies and the small files (kp.cfg, kp.ctr, provisioning's journal) must fit the 40 KB
    // Storage: 2 x (18,432 + 32) + about 1 KB of small files leaves some 2 KB to spare. Code runs
    // from flash, so bytes cost Storage, not variables.
    // Variables: issue 9's targets, 700 own variables at rest, 760 with one SA (measured: 665, 720 /
    // 730). Under load 1,000 (measured: 896 with four SAs, 951 at the peak of a rekey; peaks move by
    // a few tens from run to run): the firmware's hot code lives in module functions, about 7
    // variables each, for a third less CPU per operation (docs/BENCHMARKS.md), which left the 950 of
    // before too tight. 1,630 of the 2,630 stay for the application.
    budget: { bundleBytes: 18 * 1024, varsAtRest: 700, varsOneSa: 760, varsLoaded: 1000 },
  },
  banglejs2: {
    id: "banglejs2",
    name: "Bangle.js 2 (nRF52840)",
    vars: 12000,
    bytesPerVar: 14,
    storageBytes: 8 * 1024 * 1024,
    natives: { sha256: true, aesEcbCbc: false, aesCcm: true },
    cbor: "full",
    suites: [SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305],
    transports: ["ble-uart"],
    serial: null,
    budget: { bundleBytes: 48 * 1024, varsAtRest: 1000, varsOneSa: 1100, varsLoaded: 1400 },
  },
  esp32: {
    id: "esp32",
    name: "ESP32 (Espruino ESP32 build)",
    // From Espruino's own boards/ESP32.py (2v29): 'variables' 16383, which its table gives 14 bytes
    // per variable (JSVAR_MALLOC: allocated at start from the 520 KB of RAM), and 'saved_code' 224
    // pages of 4 KB for Storage. (The real-interpreter tier runs the esp32 bundle on a Puck.js-sized
    // interpreter where no ESP32 build is found: a stricter memory test, not this profile.)
    vars: 16383,
    bytesPerVar: 14,
    storageBytes: 224 * 4096,
    natives: { sha256: true, aesEcbCbc: true, aesCcm: false },
    cbor: "full",
    suites: [SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305],
    transports: ["wifi", "tcp", "serial"],
    serial: { rx: "D3", tx: "D1", baud: 115200 },
    // Carries secretbox, the full CBOR codec, and its own TCP socket and reconnect closures (about 70
    // variables a BLE board's radio does not cost). Measured on the Puck.js-sized interpreter
    // (13-byte variables): 904 at rest, 958 / 967 with one SA, 1,195 at the peak of a rekey, with the
    // hot code in module functions as on the Puck.js (see there).
    budget: { bundleBytes: 32 * 1024, varsAtRest: 950, varsOneSa: 1010, varsLoaded: 1250 },
  },
  emulator: {
    id: "emulator",
    name: "Emulated handset (Espruino Linux-build natives)",
    vars: 12000,
    bytesPerVar: 16,
    storageBytes: 1024 * 1024,
    natives: { sha256: true, aesEcbCbc: true, aesCcm: false },
    cbor: "full",
    suites: [SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305],
    transports: ["tcp", "serial"],
    serial: { rx: "pty", tx: "pty", baud: 115200 },
    // Not a board: no interpreter measures it (the emulator's variable figure is a model,
    // docs/EMULATOR.md); the Bangle.js 2 budget, whose natives it has.
    budget: { bundleBytes: 48 * 1024, varsAtRest: 1000, varsOneSa: 1100, varsLoaded: 1400 },
  },
};

export function getBoard(id: string): BoardProfile {
  const b = BOARDS[id];
  if (!b) throw new Error(`unknown board "${id}"; known boards: ${Object.keys(BOARDS).join(", ")}`);
  return b;
}
