// The gateway's own signing identity: an Ed25519 key in <data-dir>/gateway.key (mode 0600), made on
// first start. It signs the certificates the gateway issues for its devices.

import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { ed25519FromSeed, generateEd25519, type Ed25519KeyPair } from "../crypto/ed25519.ts";
import { createFileDurably } from "../files/durable.ts";
import { parseHexKey } from "../files/hex-key.ts";

export const KEY_FILE = "gateway.key";

export function loadOrCreateGatewayKey(dataDir: string): { key: Ed25519KeyPair; created: boolean } {
  const file = join(dataDir, KEY_FILE);
  if (!existsSync(file)) {
    const key = generateEd25519();
    // On the disk before the gateway signs anything with it; a key another process made meanwhile wins.
    if (createFileDurably(file, Buffer.from(key.seed).toString("hex") + "\n", 0o600)) return { key, created: true };
  }
  const seed = parseHexKey(readFileSync(file, "utf8"));
  if (!seed) throw new Error(`${file} is not a 32-byte hex Ed25519 seed; refusing to start`);
  return { key: ed25519FromSeed(seed), created: false };
}
