// Files that must survive a power cut: the keys in a data directory (gateway.key, gateway.x25519, the
// registry's KEK, the fleet CA's key), the certificates and trust anchor, the revocation lists (the
// CA's serial, a gateway's held list) and a device's provisioning file.
//
// Write-then-rename alone is not enough. It keeps a crash from leaving half a file, but without fsync
// the kernel may commit the rename before the file's bytes: after a power cut the name points at an
// empty file (ext4's delayed allocation does this for a file that replaces no other), and the rename
// itself may be lost until the directory is synced. Then a KEK that already sealed committed registry
// rows is gone, or the CA signs its next revocation list with a serial it has already published, and
// the gateways take that list for a redelivery of the old one and never apply it. So every write here
// is: the bytes to a temporary file, fsync, rename (or link), fsync of the directory. When a function
// returns, the file is on the disk under its name.

import { closeSync, fchmodSync, fsyncSync, linkSync, openSync, renameSync, rmSync, writeSync } from "node:fs";
import { dirname } from "node:path";

/** A temporary name beside file: same directory (so rename stays on one filesystem), this process's own. */
const tempName = (file: string): string => `${file}.${process.pid}.tmp`;

/** Writes data to file (created or truncated, with exactly mode, whatever the umask) and fsyncs it:
 *  its bytes are on the disk. flag "wx" refuses a file that exists (EEXIST). */
export function writeSynced(file: string, data: string | Uint8Array, mode: number, flag: "w" | "wx" = "w"): void {
  const fd = openSync(file, flag, mode);
  try {
    fchmodSync(fd, mode);
    const bytes = typeof data === "string" ? Buffer.from(data, "utf8") : data;
    for (let at = 0; at < bytes.length; ) at += writeSync(fd, bytes, at, bytes.length - at);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** fsync of a directory: the names created, renamed or removed in it are on the disk. */
export function syncDirectory(dir: string): void {
  const fd = openSync(dir, "r");
  try {
    fsyncSync(fd);
  } catch (e) {
    // A filesystem that cannot sync a directory (some network mounts) says EINVAL: nothing more to do there.
    if ((e as NodeJS.ErrnoException).code !== "EINVAL") throw e;
  } finally {
    closeSync(fd);
  }
}

/** rename(from, to), then the directory synced: the new name survives a power cut. */
export function renameDurably(from: string, to: string): void {
  renameSync(from, to);
  syncDirectory(dirname(to));
}

/**
 * Puts data in file, replacing any file there, with mode: after a crash or a power cut the file is
 * either the old one or the whole new one, and once this returns, the new one.
 */
export function writeFileDurably(file: string, data: string | Uint8Array, mode: number): void {
  const tmp = tempName(file);
  try {
    writeSynced(tmp, data, mode);
    renameDurably(tmp, file);
  } finally {
    rmSync(tmp, { force: true });
  }
}

const NO_HARD_LINKS = new Set(["EPERM", "ENOTSUP", "EOPNOTSUPP", "ENOSYS"]);

/**
 * Creates file with data and mode only if no file has that name: false (and nothing written) when one
 * does, e.g. made meanwhile by another process. A crash leaves no file or the whole one, never an empty
 * one under the name: the bytes are synced before the name is linked to them.
 */
export function createFileDurably(file: string, data: string | Uint8Array, mode: number): boolean {
  const tmp = tempName(file);
  try {
    writeSynced(tmp, data, mode);
    try {
      linkSync(tmp, file); // fails with EEXIST rather than replace a file: the exclusive create
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "EEXIST") return false;
      if (!NO_HARD_LINKS.has(code ?? "")) throw e;
      // A filesystem without hard links (FAT, some FUSE mounts): create the name first, then its
      // bytes; a crash in between can leave it empty there, which its reader refuses by name.
      try {
        writeSynced(file, data, mode, "wx");
      } catch (e2) {
        if ((e2 as NodeJS.ErrnoException).code === "EEXIST") return false;
        throw e2;
      }
    }
  } finally {
    rmSync(tmp, { force: true });
  }
  syncDirectory(dirname(file));
  return true;
}
