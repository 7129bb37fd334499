// CRC-32 as zlib (and Espruino's E.CRC32) computes it, for the frame trailer.
import { crc32 } from "node:zlib";

export const zlib = { crc32: (b: Uint8Array): number => crc32(b) >>> 0 };
