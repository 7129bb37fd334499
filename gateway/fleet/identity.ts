// The gateway's own signing identity: an Ed25519 key in <data-dir>/gateway.key (mode 0600), made on
// first start. It signs the certificates the gateway issues for its devices.

import { existsSync, readFileSync, writeFileSync, renameSync, chmodSync } from "node:fs";
import { join } from "node:path";
import { ed25519FromSeed, generateEd25519, type Ed25519KeyPair } from "../crypto/ed25519.ts";

export const KEY_FILE = "gateway.key";

export function loadOrCreateGatewayKey(dataDir: string): { key: Ed25519KeyPair; created: boolean } {
  const file = join(dataDir, KEY_FILE);
  if (existsSync(file)) {
    const hex = readFileSync(file, "utf8").trim();
    if (!/^[0-9a-f]{64}$/.test(hex)) throw new Error(`${file} is not a 32-byte hex Ed25519 seed; refusing to start`);
    return { key: ed25519FromSeed(Buffer.from(hex, "hex")), created: false };
  }
  const key = generateEd25519();
  // Write then rename: a crash leaves either no key file or a whole one.
  const tmp = file + ".tmp";
  writeFileSync(tmp, Buffer.from(key.seed).toString("hex") + "\n", { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, file);
  return { key, created: true };
}
