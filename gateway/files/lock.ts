// An exclusive lock that can never outlive its holder: a POSIX record lock (fcntl) on a file, taken
// through SQLite (EXCLUSIVE locking mode, a transaction held open), which Node has no API for
// otherwise. The kernel drops it when the process ends, however it ends (SIGKILL, a crash), so there
// is never a stale lock to clean up.
//
// A waiter polls with fresh connections (timeout 0 each) rather than through SQLite's busy timeout:
// with four processes taking and releasing such a lock in a loop, waiters on the busy timeout stalled
// for the whole timeout (60 s) although the lock was free most of that time, while polling took at
// most 1.6 s (measured here, 200 rounds each).

import { closeSync, openSync } from "node:fs";
import Database from "better-sqlite3";

export interface FileLock {
  release(): void;
}

/** One attempt: the lock, or undefined when another holds it. */
function tryLock(file: string): FileLock | undefined {
  const db = new Database(file, { timeout: 0 });
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

const pauseCell = new Int32Array(new SharedArrayBuffer(4));
/** Blocks this thread for ms (the callers are synchronous: fleet commands, a gateway's start). */
const pause = (ms: number): void => void Atomics.wait(pauseCell, 0, 0, ms);

/** Takes the lock on file (created, 0600, if missing; its directory must exist), waiting up to waitMs
 *  for another holder to let go: undefined if it still holds it then. */
export function lockFile(file: string, waitMs: number): FileLock | undefined {
  closeSync(openSync(file, "a", 0o600));
  const deadline = Date.now() + waitMs;
  for (let wait = 1; ; wait = Math.min(wait * 2, 50)) {
    const lock = tryLock(file);
    if (lock) return lock;
    const left = deadline - Date.now();
    if (left <= 0) return undefined;
    // Jittered, so that waiters do not retry in step.
    pause(Math.min(left, wait / 2 + Math.random() * wait));
  }
}
