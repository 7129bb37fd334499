// One gateway per data directory. Two would both accept join counters, hand out SPIs and write the
// revocation list they hold, each unaware of the other. The lock is an OS-level one that can never
// outlive its holder (gateway/files/lock.ts) on <data-dir>/gateway.lock; it is only the gateway's:
// keyproxy device, policy and provision use keyproxy.db itself and keep working while a gateway runs.

import { join } from "node:path";
import { lockFile, type FileLock } from "../files/lock.ts";

export const LOCK_FILE = "gateway.lock";

/** Another gateway holds the data directory. */
export class DataDirInUse extends Error {}

export type DataDirLock = FileLock;

/** Takes the data directory's gateway lock (the directory must exist), or throws DataDirInUse at
 *  once: a second gateway must not wait for the first. */
export function lockDataDir(dataDir: string): DataDirLock {
  const lock = lockFile(join(dataDir, LOCK_FILE), 0);
  if (!lock) throw new DataDirInUse(`another keyproxy gateway is running on the data directory ${dataDir}: stop it first, or give this gateway a data directory of its own (--data-dir)`);
  return lock;
}
