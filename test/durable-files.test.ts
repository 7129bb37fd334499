// Files that must survive a power cut (gateway/files/durable.ts): the keys, certificates, trust
// anchors, revocation lists and provisioning files keyproxy writes. A power cut cannot be pulled
// here, so the test watches the system calls instead (strace): every such file's bytes are fsynced
// before its name points at them (rename or link), and its directory is fsynced after. Plus the
// helpers' own contract: exact modes, no temporary file left behind, an exclusive create; and the
// lock fleet commands hold (gateway/files/lock.ts).

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createFileDurably, writeFileDurably } from "../gateway/files/durable.ts";
import { lockFile } from "../gateway/files/lock.ts";

const fresh = () => mkdtempSync(join(tmpdir(), "kp-durable-"));
const strace = spawnSync("strace", ["-V"]).status === 0;

/** The ordered fsync / rename / link calls of a run of test/support/durable-writers.ts, and the files it wrote. */
function traced(): { calls: string[]; files: string[] } {
  const dir = fresh();
  const out = join(dir, "trace.txt");
  const run = spawnSync("strace", ["-f", "-y", "-qq", "-e", "trace=fsync,fdatasync,rename,renameat,renameat2,link,linkat", "-o", out,
    process.execPath, "--import", "tsx", "test/support/durable-writers.ts", join(dir, "w")], { encoding: "utf8" });
  assert.equal(run.status, 0, `the writers under strace failed: ${run.stderr}`);
  return { calls: readFileSync(out, "utf8").split("\n"), files: run.stdout.trim().split("\n").map((l) => JSON.parse(l) as string) };
}

// strace -y prints a file descriptor with its path: fsync(19</dir/name>); rename and link their two paths.
const syncOf = (line: string): string | undefined => /\b(?:fsync|fdatasync)\(\d+<([^>]*)>\) = 0$/.exec(line)?.[1];
function nameChange(line: string): { from: string; to: string } | undefined {
  const m = /\b(?:rename|link)\("([^"]*)", "([^"]*)"\) = 0$/.exec(line) ?? /\b(?:renameat2?|linkat)\(AT_FDCWD(?:<[^>]*>)?, "([^"]*)", AT_FDCWD(?:<[^>]*>)?, "([^"]*)".*\) = 0$/.exec(line);
  return m ? { from: m[1], to: m[2] } : undefined;
}

test("every key, certificate, trust anchor, revocation list and provisioning file is synced before it is named, and its directory after", { skip: !strace && process.env.CI !== "true" && "strace is not installed (.ci/run installs it)" }, () => {
  const { calls, files } = traced();
  assert.equal(files.length, 12);
  for (const file of files) {
    assert.ok(existsSync(file), `${file} was written`);
    const changes = calls.map((l, i) => ({ i, c: nameChange(l) })).filter((x) => x.c?.to === file);
    assert.ok(changes.length > 0, `${file} is put in place by a rename or a link, not written under its own name`);
    for (const { i, c } of changes) {
      const synced = calls.slice(0, i).map(syncOf);
      const lastWriteOfTemp = synced.lastIndexOf(c!.from);
      assert.ok(lastWriteOfTemp >= 0, `${c!.from} was fsynced before it became ${file}`);
      const after = calls.slice(i + 1).map(syncOf);
      assert.ok(after.includes(dirname(file)), `${dirname(file)} was fsynced after ${file} was named`);
    }
  }
});

test("writeFileDurably replaces a file whole, with exactly the mode asked for, and leaves no temporary file", () => {
  const dir = fresh();
  const file = join(dir, "k");
  writeFileSync(file, "old", { mode: 0o644 });
  const umask = process.umask(0o077);
  try {
    writeFileDurably(file, "new\n", 0o644);
  } finally {
    process.umask(umask);
  }
  assert.equal(readFileSync(file, "utf8"), "new\n");
  assert.equal(statSync(file).mode & 0o777, 0o644, "the mode asked for, not narrowed by the umask");
  writeFileDurably(file, new Uint8Array([1, 2, 3]), 0o600);
  assert.deepEqual([...readFileSync(file)], [1, 2, 3]);
  assert.equal(statSync(file).mode & 0o777, 0o600);
  assert.deepEqual(readdirSync(dir), ["k"]);
});

test("writeFileDurably into a missing directory throws and leaves nothing behind", () => {
  const dir = fresh();
  assert.throws(() => writeFileDurably(join(dir, "no", "k"), "x", 0o600), { code: "ENOENT" });
  assert.deepEqual(readdirSync(dir), []);
});

/** This process's open file descriptors. */
const openDescriptors = () => readdirSync("/proc/self/fd").length;

test("a write that fails where its name is put in place leaves no temporary file, and reports the failure that happened", () => {
  const dir = fresh();
  const taken = join(dir, "k");
  mkdirSync(taken);
  writeFileSync(join(taken, "inside"), "x");
  // A directory, not empty, under the name: the rename fails after the temporary file was written.
  assert.throws(() => writeFileDurably(taken, "new\n", 0o600), (e: NodeJS.ErrnoException) => e.syscall === "rename");
  assert.deepEqual(readdirSync(dir), ["k"]);
  // Into a missing directory the temporary file cannot be made: the open's error, not the clean-up's.
  assert.throws(() => createFileDurably(join(dir, "no", "k"), "x", 0o600), (e: NodeJS.ErrnoException) => e.code === "ENOENT" && e.syscall === "open");
});

test("writing and creating durably leave no descriptor open, whatever happens", () => {
  const dir = fresh();
  const before = openDescriptors();
  for (let i = 0; i < 20; i++) {
    writeFileDurably(join(dir, "k"), `${i}\n`, 0o600);
    createFileDurably(join(dir, `c${i}`), "x", 0o600);
    createFileDurably(join(dir, `c${i}`), "x", 0o600);
  }
  assert.equal(openDescriptors(), before);
});

test("createFileDurably makes a file only where none is, and leaves the one there untouched", () => {
  const dir = fresh();
  const file = join(dir, "kek");
  assert.equal(createFileDurably(file, "first\n", 0o600), true);
  assert.equal(statSync(file).mode & 0o777, 0o600);
  assert.equal(createFileDurably(file, "second\n", 0o600), false);
  assert.equal(readFileSync(file, "utf8"), "first\n");
  assert.deepEqual(readdirSync(dir), ["kek"], "no temporary file left by either call");
});

test("lockFile: one holder at a time; another waits, then gets undefined; the lock is free again once released", () => {
  const file = join(fresh(), "x.lock");
  const held = lockFile(file, 0);
  assert.ok(held, "a free lock is taken");
  const started = Date.now();
  assert.equal(lockFile(file, 200), undefined, "a held lock is refused after the wait");
  assert.ok(Date.now() - started >= 150, "the second caller waited for the holder before giving up");
  held.release();
  const again = lockFile(file, 0);
  assert.ok(again, "taken again after release");
  again.release();
});

test("lockFile: each attempt gives up at once when the lock is held (the caller's wait is the only wait), and a file that is not a lock is an error, not a held lock", () => {
  const file = join(fresh(), "x.lock");
  const held = lockFile(file, 0)!;
  try {
    const started = Date.now();
    assert.equal(lockFile(file, 0), undefined);
    // SQLite's own busy timeout would make that one attempt wait seconds.
    assert.ok(Date.now() - started < 2000, `one attempt on a held lock took ${Date.now() - started} ms`);
  } finally {
    held.release();
  }
  const notALock = join(fresh(), "notes.txt");
  writeFileSync(notALock, "x".repeat(4096));
  assert.throws(() => lockFile(notALock, 5000), { code: "SQLITE_NOTADB" });
});
