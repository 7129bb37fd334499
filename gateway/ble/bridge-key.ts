// The bridge key: 32 random bytes, hex in a file only its owner may read, the same file on the gateway
// (`--bridge-listen ... --bridge-key-file F`) and on each bridge it trusts (`keyproxy ble-bridge
// --bridge-key-file F`). The gateway makes it when the file does not exist yet; copy it to the bridge
// over a channel you trust (scp). Never in a log, a message or an error.

import { existsSync, readFileSync, statSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { createFileDurably } from "../files/durable.ts";
import { parseHexKey } from "../files/hex-key.ts";
import { BRIDGE_KEY_BYTES } from "./bridge-protocol.ts";

/** Reads the key; a clear error (without the file's content) when the file is missing, readable by
 *  others, or not 64 hex digits. */
export function readBridgeKey(file: string): Uint8Array {
  if (!existsSync(file)) throw new Error(`no bridge key at ${file}: the gateway makes one when started with --bridge-listen and --bridge-key-file ${file}; copy that file here (mode 0600)`);
  const mode = statSync(file).mode & 0o777;
  if (mode & 0o077) throw new Error(`the bridge key file ${file} may be read by others (mode ${mode.toString(8).padStart(4, "0")}): chmod 600 ${file}`);
  const key = parseHexKey(readFileSync(file, "utf8"));
  if (!key) throw new Error(`the bridge key file ${file} does not hold ${BRIDGE_KEY_BYTES} bytes as ${BRIDGE_KEY_BYTES * 2} hex digits`);
  return key;
}

/** The key from file, made (0600, on the disk before it is used, never over a file another process
 *  made meanwhile) when the file does not exist. */
export function loadOrCreateBridgeKey(file: string): { key: Uint8Array; created: boolean } {
  const created = !existsSync(file) && createFileDurably(file, `${randomBytes(BRIDGE_KEY_BYTES).toString("hex")}\n`, 0o600);
  return { key: readBridgeKey(file), created };
}
