// Board profiles: what each supported device has and what the firmware may spend on it.
// Memory and native-crypto facts are from design.md §5 (measured on the real interpreter) and the
// Espruino board files; budgets are ours, checked by `keyproxy build` and the emulator.

import { SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305 } from "../firmware/crypto/types.ts";

export type Transport = "ble-uart" | "tcp" | "serial";

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
    /** Estimated Espruino variables in use at rest, joined and registered. */
    varsAtRest: number;
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
    budget: { bundleBytes: 16 * 1024, varsAtRest: 1000 },
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
    budget: { bundleBytes: 48 * 1024, varsAtRest: 3000 },
  },
  esp32: {
    id: "esp32",
    name: "ESP32 (Espruino ESP32 build)",
    vars: 2500,
    bytesPerVar: 16,
    storageBytes: 256 * 1024,
    natives: { sha256: true, aesEcbCbc: true, aesCcm: false },
    cbor: "full",
    suites: [SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305],
    transports: ["tcp", "serial"],
    serial: { rx: "D3", tx: "D1", baud: 115200 },
    // Carries secretbox and the TCP transport's reconnect closures: 60% of its pool at rest.
    budget: { bundleBytes: 32 * 1024, varsAtRest: 1500 },
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
    budget: { bundleBytes: 48 * 1024, varsAtRest: 3000 },
  },
};

export function getBoard(id: string): BoardProfile {
  const b = BOARDS[id];
  if (!b) throw new Error(`unknown board "${id}"; known boards: ${Object.keys(BOARDS).join(", ")}`);
  return b;
}
