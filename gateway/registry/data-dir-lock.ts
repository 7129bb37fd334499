// One gateway per data directory. Two would both accept join counters, hand out SPIs and write the
// revocation list they hold, each unaware of the other. The lock is an OS-level one, so that it can
// never outlive its holder: a POSIX record lock (fcntl) on <data-dir>/gateway.lock, taken through
// SQLite (EXCLUSIVE locking mode, a transaction held open), which Node has no API for otherwise. The
// kernel drops it when the process ends, however it ends (SIGKILL, a crash), so there is no stale lock
// to clean up; and it is only the gateway's: keyproxy device, policy and provision use keyproxy.db
// itself and keep working while a gateway runs.

import { closeSync, openSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";

export const LOCK_FILE = "gateway.lock";

/** Another gateway holds the data directory. */
export class DataDirInUse extends Error {}

export interface DataDirLock {
  release(): void;
}

/** Takes the data directory's gateway lock (the directory must exist), or throws DataDirInUse at
 *  once: a second gateway must not wait for the first. */
export function lockDataDir(dataDir: string): DataDirLock {
  const file = join(dataDir, LOCK_FILE);
  closeSync(openSync(file, "a", 0o600));
  const db = new Database(file, { timeout: 0 });
  try {
    db.pragma("locking_mode = EXCLUSIVE");
    db.exec("BEGIN EXCLUSIVE");
  } catch (e) {
    db.close();
    if ((e as { code?: string }).code !== "SQLITE_BUSY") throw e;
    throw new DataDirInUse(`another keyproxy gateway is running on the data directory ${dataDir}: stop it first, or give this gateway a data directory of its own (--data-dir)`);
  }
  return { release: () => db.close() };
}
