// An exclusive lock that can never outlive its holder: a POSIX record lock (fcntl) on a file, taken
// through SQLite (EXCLUSIVE locking mode, a transaction held open), which Node has no API for
// otherwise. The kernel drops it when the process ends, however it ends (SIGKILL, a crash), so there
// is never a stale lock to clean up.

import { closeSync, openSync } from "node:fs";
import Database from "better-sqlite3";

export interface FileLock {
  release(): void;
}

/** Takes the lock on file (created, 0600, if missing; its directory must exist), waiting up to waitMs
 *  for another holder to let go: undefined if it still holds it then. */
export function lockFile(file: string, waitMs: number): FileLock | undefined {
  closeSync(openSync(file, "a", 0o600));
  const db = new Database(file, { timeout: waitMs });
  try {
    db.pragma("locking_mode = EXCLUSIVE");
    db.exec("BEGIN EXCLUSIVE");
  } catch (e) {
    db.close();
    if ((e as { code?: string }).code === "SQLITE_BUSY") return undefined;
    throw e;
  }
  return { release: () => db.close() };
}
