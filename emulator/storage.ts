// The emulated device's flash Storage, kept as one host file per Storage file in a directory, so it
// survives reboots and host restarts. Espruino's rules (names up to 28 characters, a fixed capacity,
// pre-sized files written in chunks) are enforced here; every write lands atomically (temp file,
// fsync, rename), so a host crash mid-write leaves the old or the new content, never a mix.

import * as fs from "node:fs";
import * as path from "node:path";

/** Espruino's StorageFile header holds the name in 28 bytes. */
export const STORAGE_NAME_MAX = 28;
/** Flash bytes a file costs beyond its data: Espruino's 32-byte header (size + name). */
const FILE_HEADER_BYTES = 32;
/** Espruino's flash files are word aligned. */
const ALIGN = 4;
/** Temp files start with a dot; encoded Storage names never do, so list() cannot see them. */
const TEMP_PREFIX = ".tmp-";

export class StorageError extends Error {}

export function checkStorageName(name: string): void {
  if (typeof name !== "string" || name.length === 0) throw new StorageError("Storage file name must be a non-empty string");
  if (name.length > STORAGE_NAME_MAX) throw new StorageError(`Storage file name too long (max ${STORAGE_NAME_MAX} chars)`);
}

/** Host file name for a Storage name: unreserved characters as is, the rest as %XX (so ".bootcde"
 *  becomes "%2Ebootcde" and is never a hidden or temp file). Storage names are byte strings. */
function encodeName(name: string): string {
  let out = "";
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    const ch = name[i];
    if (/[A-Za-z0-9_-]/.test(ch)) out += ch;
    else out += "%" + (c & 255).toString(16).toUpperCase().padStart(2, "0");
  }
  return out;
}

function decodeName(file: string): string {
  return file.replace(/%([0-9A-F]{2})/g, (_m, h: string) => String.fromCharCode(parseInt(h, 16)));
}

function flashCost(size: number): number {
  return FILE_HEADER_BYTES + Math.ceil(size / ALIGN) * ALIGN;
}

export class HostStorage {
  private tempCounter = 0;

  constructor(
    readonly dir: string,
    readonly capacityBytes: number,
  ) {
    fs.mkdirSync(dir, { recursive: true });
    // A host that died mid-write leaves a temp file behind; the real file still holds the old content.
    for (const f of fs.readdirSync(dir)) if (f.startsWith(TEMP_PREFIX)) fs.rmSync(path.join(dir, f), { force: true });
  }

  private fileFor(name: string): string {
    return path.join(this.dir, encodeName(name));
  }

  read(name: string): Uint8Array | undefined {
    checkStorageName(name);
    try {
      return new Uint8Array(fs.readFileSync(this.fileFor(name)));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw e;
    }
  }

  list(): string[] {
    return fs
      .readdirSync(this.dir)
      .filter((f) => !f.startsWith("."))
      .map(decodeName)
      .sort();
  }

  usedBytes(): number {
    let used = 0;
    for (const f of fs.readdirSync(this.dir)) {
      if (f.startsWith(".")) continue;
      used += flashCost(fs.statSync(path.join(this.dir, f)).size);
    }
    return used;
  }

  getFree(): number {
    return Math.max(0, this.capacityBytes - this.usedBytes());
  }

  /** Replaces the whole file. Throws StorageError (and changes nothing) when it would not fit. */
  write(name: string, data: Uint8Array): void {
    checkStorageName(name);
    const old = this.read(name);
    const needed = flashCost(data.length) - (old ? flashCost(old.length) : 0);
    if (needed > this.getFree()) throw new StorageError(`Not enough free Storage for "${name}" (${data.length} bytes)`);
    this.writeAtomically(this.fileFor(name), data);
  }

  /** Espruino's chunked write: `write(name, data, 0, size)` creates a file of `size` bytes (0xFF, like
   *  erased flash) holding `data` at 0; `write(name, data, offset)` then fills in later chunks. */
  writeAt(name: string, data: Uint8Array, offset: number, size: number | undefined): void {
    checkStorageName(name);
    if (!Number.isInteger(offset) || offset < 0) throw new StorageError("Storage write offset must be a non-negative integer");
    let content: Uint8Array;
    if (size !== undefined) {
      if (!Number.isInteger(size) || size < 0) throw new StorageError("Storage write size must be a non-negative integer");
      content = new Uint8Array(size).fill(0xff);
    } else {
      const existing = this.read(name);
      if (!existing) throw new StorageError("Unable to find or create file"); // Espruino's words: the first chunk must give the size
      content = existing;
    }
    if (offset + data.length > content.length) throw new StorageError(`Storage write past the end of "${name}"`);
    content = new Uint8Array(content);
    content.set(data, offset);
    this.write(name, content);
  }

  erase(name: string): void {
    checkStorageName(name);
    fs.rmSync(this.fileFor(name), { force: true });
  }

  private writeAtomically(file: string, data: Uint8Array): void {
    const temp = path.join(this.dir, `${TEMP_PREFIX}${process.pid}-${++this.tempCounter}`);
    const fd = fs.openSync(temp, "w");
    try {
      fs.writeSync(fd, data);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(temp, file);
    // Make the rename itself durable (best effort: some filesystems refuse to fsync a directory).
    try {
      const dfd = fs.openSync(this.dir, "r");
      try {
        fs.fsyncSync(dfd);
      } finally {
        fs.closeSync(dfd);
      }
    } catch {
      /* directory fsync unsupported */
    }
  }
}
