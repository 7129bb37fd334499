// The registry's keys at rest and the records around them, refusal by refusal (gateway/registry/kek.ts,
// gateway/registry/store.ts): what a sealed value that is not one, a KEK file that is not one, a
// registry that is not one each get, in their own words and with nothing changed; the files' modes;
// a PostgreSQL URL's password kept out of messages; revocation, replacement and removal of a device;
// a use-only open of PostgreSQL, its pool size and queryRelaxed's own connection; a locked file and a
// registry another user owns; a wait for audit records begun while a batch commits.
// Written for the mutants that survived `npm run mutation -- gateway/registry/keys` (docs/MUTATION.md).
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { hkdfSync, randomBytes } from "node:crypto";
import { chmodSync, chownSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { KEK_FILE, KEK_FILE_ENV, KekError, loadOrCreateKek, open, seal } from "../gateway/registry/kek.ts";
import { isDatabaseUrl, NotARegistry, Store, withoutPassword } from "../gateway/registry/store.ts";
import { tempDir } from "./support/harness.ts";
import { testDatabase } from "./support/postgres.ts";
import { asAdmin, withAdmin } from "./support/postgres-cluster.ts";

const made: string[] = [];
after(() => made.forEach((d) => rmSync(d, { recursive: true, force: true })));
function dir(prefix: string): string {
  const d = tempDir(prefix);
  made.push(d);
  return d;
}
const key16 = () => new Uint8Array(randomBytes(16));
/** Rows as another connection reads them from the file, that connection closed again. */
function rowsInFile(file: string, sql: string): unknown[] {
  const db = new Database(file, { readonly: true });
  try {
    return db.prepare(sql).all();
  } finally {
    db.close();
  }
}
const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

test("a sealed value is format byte 0x01, a 12-byte nonce, the ciphertext and a 16-byte tag; anything shorter or of another format is not a sealed value, and says so without a byte of it", () => {
  const kek = randomBytes(32);
  const plain = key16();
  const sealed = seal(kek, "root-key", "dev-1", plain);
  assert.equal(sealed.length, 1 + 12 + 16 + 16);
  assert.equal(sealed[0], 0x01);
  assert.deepEqual(open(kek, "root-key", "dev-1", sealed), plain);
  // Two seals of one value differ (a fresh nonce each), and both open.
  const again = seal(kek, "root-key", "dev-1", plain);
  assert.notDeepEqual(again.subarray(1, 13), sealed.subarray(1, 13));
  assert.deepEqual(open(kek, "root-key", "dev-1", again), plain);
  // The tag is 16 bytes: a value whose last 12 bytes alone were the tag does not open.
  const notASeal = (e: unknown) => e instanceof KekError && e.message === "the root-key of dev-1 in the registry is not a sealed value";
  const wrongFormat = Buffer.from(sealed);
  wrongFormat[0] = 0x02;
  assert.throws(() => open(kek, "root-key", "dev-1", wrongFormat), notASeal);
  assert.throws(() => open(kek, "root-key", "dev-1", sealed.subarray(0, 28)), notASeal, "one byte short of an empty sealed value");
  assert.throws(() => open(kek, "root-key", "dev-1", new Uint8Array(0)), notASeal);
  // The shortest sealed value (nothing sealed) is one: it opens to nothing.
  assert.deepEqual(open(kek, "root-key", "dev-1", seal(kek, "root-key", "dev-1", new Uint8Array(0))), new Uint8Array(0));
  // What it names is bound in: another kind or owner does not open, nor a changed byte anywhere.
  const doesNotOpen = (e: unknown) => e instanceof KekError && /does not open under this key-encryption key/.test(e.message) && !e.message.includes(hex(plain));
  assert.throws(() => open(kek, "identity-seed", "dev-1", sealed), doesNotOpen);
  assert.throws(() => open(kek, "root-key", "dev-2", sealed), doesNotOpen);
  for (const at of [1, 13, sealed.length - 1]) {
    const altered = Buffer.from(sealed);
    altered[at] ^= 1;
    assert.throws(() => open(kek, "root-key", "dev-1", altered), doesNotOpen, `byte ${at} altered`);
  }
});

test("a KEK file must be 64 hex digits and nothing else (a final newline aside; either case, as a restored copy may be); made 0600 when missing, never when asked only to read", () => {
  const d = dir("kp-kek-file-");
  const file = join(d, KEK_FILE);
  assert.throws(() => loadOrCreateKek(file, false), (e: unknown) => e instanceof KekError && e.message.startsWith(`the registry's key-encryption key ${file} is missing: restore it`) && e.message.includes("set KEYPROXY_KEK_FILE to where it is"));
  const made1 = loadOrCreateKek(file, true);
  assert.equal(made1.length, 32);
  assert.equal(statSync(file).mode & 0o777, 0o600);
  assert.match(readFileSync(file, "utf8"), /^[0-9a-f]{64}\n$/);
  assert.deepEqual(loadOrCreateKek(file, true), made1, "an existing KEK is read, never replaced");
  assert.deepEqual(loadOrCreateKek(file, false), made1);
  const good = made1.toString("hex");
  writeFileSync(file, good.toUpperCase() + "\n");
  assert.deepEqual(loadOrCreateKek(file, false), made1, "the same key in capitals");
  const notAKek = (e: unknown) => e instanceof KekError && e.message === `${file} is not a keyproxy key-encryption key (64 hex digits)`;
  for (const text of [good.slice(0, 63), `${good}0`, `x${good}`, `${good}x`, `${good.slice(0, 63)}g`, "", `${good.slice(0, 32)} ${good.slice(32)}`]) {
    writeFileSync(file, text + "\n");
    assert.throws(() => loadOrCreateKek(file, true), notAKek, JSON.stringify(text));
    assert.equal(readFileSync(file, "utf8"), text + "\n", "a bad KEK file is left as it was, not replaced");
  }
});

test("a KEK that cannot be made or read says which file and why, and no key", () => {
  const d = dir("kp-kek-fail-");
  const inMissingDir = join(d, "no-such-dir", KEK_FILE);
  assert.throws(() => loadOrCreateKek(inMissingDir, true), (e: unknown) => e instanceof KekError && e.message === `cannot create the registry's key-encryption key ${inMissingDir}: ENOENT`);
  const aDirectory = join(d, "kek-dir");
  mkdirSync(aDirectory);
  assert.throws(() => loadOrCreateKek(aDirectory, true), (e: unknown) => e instanceof KekError && e.message === `cannot read the registry's key-encryption key ${aDirectory}: EISDIR`);
});

test("KEYPROXY_KEK_FILE (the documented name) names the KEK's file when none is given; an option given wins over it", async () => {
  const d = dir("kp-kek-env-");
  const elsewhere = join(dir("kp-kek-elsewhere-"), "the.kek");
  const before = process.env.KEYPROXY_KEK_FILE;
  process.env.KEYPROXY_KEK_FILE = elsewhere;
  try {
    const s = await Store.open(join(d, "keyproxy.db"));
    assert.equal(s.kekFile, elsewhere);
    await s.addDevice("dev-1", key16(), "puckjs", 0);
    await s.close();
    assert.equal(statSync(elsewhere).mode & 0o777, 0o600);
    assert.throws(() => statSync(join(d, KEK_FILE)), { code: "ENOENT" }, "no KEK beside the database");
    const given = join(d, "given.kek");
    const t = await Store.open(join(dir("kp-kek-given-"), "keyproxy.db"), { kekFile: given });
    assert.equal(t.kekFile, given);
    await t.close();
  } finally {
    if (before === undefined) delete process.env.KEYPROXY_KEK_FILE;
    else process.env.KEYPROXY_KEK_FILE = before;
  }
  const s = await Store.open(join(d, "other.db"));
  assert.equal(s.kekFile, join(d, KEK_FILE), "without either, beside the database");
  await s.close();
});

test("a PostgreSQL registry is named by a postgres:// or postgresql:// URL only, and its password never reaches a message", async () => {
  for (const url of ["postgres://h/db", "postgresql://h/db", "POSTGRES://h/db"]) assert.equal(isDatabaseUrl(url), true, url);
  for (const target of ["keyproxy.db", "/var/lib/keyproxy/postgres://x", "x-postgres://h/db", "postgres:/h/db"]) assert.equal(isDatabaseUrl(target), false, target);
  const masked = withoutPassword("postgres://kp:s3cret-pw@db.example:5432/keyproxy");
  assert.equal(masked, "postgres://kp:***@db.example:5432/keyproxy");
  assert.equal(withoutPassword("postgres://kp@db.example/keyproxy"), "postgres://kp@db.example/keyproxy");
  assert.equal(withoutPassword("postgres://kp:s3cret-pw@[::1"), "(a PostgreSQL URL that does not parse)");
  // Without its KEK file, a PostgreSQL registry is refused before any connection is tried.
  const before = process.env[KEK_FILE_ENV];
  delete process.env[KEK_FILE_ENV];
  try {
    await assert.rejects(Store.open("postgres://kp:s3cret-pw@127.0.0.1:1/keyproxy"), (e: unknown) => e instanceof KekError && e.message.startsWith(`a registry in PostgreSQL needs the file of its key-encryption key: set ${KEK_FILE_ENV}`) && !e.message.includes("s3cret"));
  } finally {
    if (before !== undefined) process.env[KEK_FILE_ENV] = before;
  }
});

test("the registry and SQLite's -wal and -shm beside it are made owner-only, also when an older gateway left them readable", async () => {
  const d = dir("kp-modes-");
  const file = join(d, "keyproxy.db");
  const db = new Database(file);
  db.pragma("journal_mode = WAL");
  db.exec("CREATE TABLE t (x)");
  db.exec("INSERT INTO t VALUES (1)");
  // -wal and -shm exist while this connection is open.
  for (const f of [file, `${file}-wal`, `${file}-shm`]) chmodSync(f, 0o644);
  const s = await Store.open(file);
  try {
    for (const f of [file, `${file}-wal`, `${file}-shm`]) assert.equal(statSync(f).mode & 0o777, 0o600, f);
  } finally {
    await s.close();
    db.close();
  }
  // A new registry is 0600 from its first byte.
  const fresh = join(d, "new.db");
  const n = await Store.open(fresh);
  await n.close();
  assert.equal(statSync(fresh).mode & 0o777, 0o600);
  // In write-ahead-log mode (a setting kept in the file): readers never wait for the writer.
  const check = new Database(fresh, { readonly: true });
  assert.equal(check.pragma("journal_mode", { simple: true }), "wal");
  check.close();
});

const NOBODY = 65534;
test("a registry another user owns and this one may write (its group's) opens without chmodding it: that is its owner's to do", { skip: process.getuid?.() !== 0 && "needs root, to run a child process as another user" }, async (t) => {
  const storeModule = new URL("../gateway/registry/store.ts", import.meta.url);
  const readable = spawnSync(process.execPath, ["-e", `require("fs").accessSync(${JSON.stringify(storeModule.pathname)}, 4)`], { uid: NOBODY, gid: NOBODY });
  if (readable.status !== 0) {
    t.skip(`uid ${NOBODY} cannot read ${storeModule.pathname} (a clone in a private directory)`);
    return;
  }
  const d = dir("kp-shared-");
  const file = join(d, "keyproxy.db");
  await (await Store.open(file)).close();
  // Shared with a group: the directory (for SQLite's -wal and -shm), the registry and its KEK.
  for (const [f, mode] of [[d, 0o770], [file, 0o660], [join(d, KEK_FILE), 0o640]] as const) {
    chownSync(f, 0, NOBODY);
    chmodSync(f, mode);
  }
  const script = `import { Store } from ${JSON.stringify(storeModule.href)};
    const s = await Store.open(${JSON.stringify(file)});
    await s.close();
    console.log("opened");`;
  const child = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], { uid: NOBODY, gid: NOBODY, encoding: "utf8" });
  assert.equal(child.status, 0, `the other user's gateway failed: ${child.stderr}`);
  assert.equal(child.stdout.trim(), "opened");
  assert.equal(statSync(file).mode & 0o777, 0o660, "not chmodded by a user who does not own it");
  assert.equal(statSync(file).uid, 0);
});

test("opened only to use it, a file that is not a registry, or not SQLite at all, is NotARegistry and stays as it was", async () => {
  const d = dir("kp-notreg-");
  const other = join(d, "other.db");
  const db = new Database(other);
  db.exec("CREATE TABLE something (x)");
  db.close();
  const before = readFileSync(other);
  await assert.rejects(Store.open(other, { create: false }), (e: unknown) => e instanceof NotARegistry && (e as Error).message === `${other} is not a keyproxy registry`);
  assert.deepEqual(readFileSync(other), before);
  const text = join(d, "notes.txt");
  writeFileSync(text, "x".repeat(4096));
  await assert.rejects(Store.open(text, { create: false }), (e: unknown) => e instanceof NotARegistry && (e as Error).message === `${text} is not a keyproxy registry`);
  assert.equal(readFileSync(text, "utf8"), "x".repeat(4096));
  assert.throws(() => statSync(join(d, KEK_FILE)), { code: "ENOENT" }, "no KEK made for it");
});

test("opened only to use it, a registry the database refuses to read (another process holds its lock) fails with the database's own error, not as NotARegistry", async () => {
  const d = dir("kp-locked-");
  const file = join(d, "keyproxy.db");
  await (await Store.open(file)).close();
  // In a rollback journal, unlike WAL, a writer's EXCLUSIVE lock keeps readers out.
  const other = new Database(file);
  try {
    other.pragma("journal_mode = DELETE");
    other.exec("BEGIN EXCLUSIVE");
    await assert.rejects(Store.open(file, { create: false, busyTimeoutMs: 50 }), (e: unknown) => !(e instanceof NotARegistry) && (e as { code?: string }).code === "SQLITE_BUSY");
  } finally {
    other.close();
  }
});

test("PostgreSQL: opened only to use it, a database without the registry is NotARegistry and gets no schema; the pool holds poolSize connections at most", async (t) => {
  const db = await testDatabase(t);
  if (!db) return;
  const kekFile = join(dir("kp-pg-use-"), "pg.kek");
  const tables = () => withAdmin(db.url, async (c) => (await c.query("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")).rows.length);
  try {
    await assert.rejects(Store.open(db.url, { create: false, kekFile }), (e: unknown) => e instanceof NotARegistry && (e as Error).message === `${withoutPassword(db.url)} is not a keyproxy registry`);
    assert.equal(await tables(), 0, "nothing made in it");
    await (await Store.open(db.url, { kekFile })).close();
    const used = await Store.open(db.url, { create: false, kekFile, poolSize: 1 });
    try {
      // Three statements at once over a pool of one: they take turns on one connection, so the last
      // sees no other connection to the database.
      const others = "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()";
      const [, , seen] = await Promise.all([used.query("SELECT pg_sleep(0.2)"), used.query("SELECT pg_sleep(0.2)"), used.row(others)]);
      assert.deepEqual(seen, { n: 0 });
    } finally {
      await used.close();
    }
  } finally {
    await db.drop();
  }
});

test("PostgreSQL: queryRelaxed on its own connection refuses once the store is closed, a failed opening of that connection is tried again at the next call, and the store closes it (or its failed opening) with the rest", async (t) => {
  const db = await testDatabase(t);
  if (!db) return;
  const name = new URL(db.url).pathname.slice(1);
  const kekFile = join(dir("kp-pg-relaxed-"), "pg.kek");
  const s = await Store.open(db.url, { kekFile });
  try {
    await asAdmin(db.admin, `ALTER DATABASE ${name} ALLOW_CONNECTIONS false`);
    await assert.rejects(s.queryRelaxed("SELECT 1 AS one"), /not currently accepting connections/);
    await asAdmin(db.admin, `ALTER DATABASE ${name} ALLOW_CONNECTIONS true`);
    assert.deepEqual((await s.queryRelaxed("SELECT 1 AS one")).rows, [{ one: 1 }], "opened at the next call, not the failed opening again");
    // One connection of its own for all of them (which keeps them in the order they were called).
    const pid = "SELECT pg_backend_pid() AS pid";
    const pids = [(await s.queryRelaxed(pid)).rows[0].pid, (await s.queryRelaxed(pid)).rows[0].pid, (await s.queryRelaxed(pid)).rows[0].pid];
    assert.equal(new Set(pids).size, 1, `one connection, not one per call: ${pids}`);
    await s.close();
    await assert.rejects(s.queryRelaxed("SELECT 1 AS one"), { message: "the registry is closed: the statement was not run" });
    // Both connections closed with the store: none left on the server.
    const left = () => withAdmin(db.admin, async (c) => (await c.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1", [name])).rows[0].n as number);
    const until = Date.now() + 5000;
    while ((await left()) > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    assert.equal(await left(), 0);
    // A close while the relaxed connection is still failing to open ends well all the same.
    const other = await Store.open(db.url, { kekFile });
    await asAdmin(db.admin, `ALTER DATABASE ${name} ALLOW_CONNECTIONS false`);
    const failing = other.queryRelaxed("SELECT 1 AS one");
    await other.close();
    await assert.rejects(failing, /not currently accepting connections/);
  } finally {
    await asAdmin(db.admin, `ALTER DATABASE ${name} ALLOW_CONNECTIONS true`);
    await s.close();
    await db.drop();
  }
});

test("an older gateway's registry: a device without an identity seed is sealed too, and its seed stays absent", async () => {
  const d = dir("kp-old-noseed-");
  const file = join(d, "keyproxy.db");
  await (await Store.open(file)).close();
  rmSync(join(d, KEK_FILE));
  const k = key16();
  const raw = new Database(file);
  raw.prepare("DELETE FROM meta WHERE k = 'kek-check'").run();
  raw.prepare("INSERT INTO devices (id, root_key, board, created_at) VALUES ('old-1', ?, 'puckjs', 0)").run(Buffer.from(k));
  raw.close();
  const s = await Store.open(file);
  const dev = await s.getDevice("old-1");
  assert.deepEqual(dev?.rootKey, k);
  assert.equal(dev?.identitySeed, null);
  await s.close();
  const [row] = rowsInFile(file, "SELECT root_key, identity_seed FROM devices") as { root_key: Buffer; identity_seed: Buffer | null }[];
  assert.equal(row.root_key.length, 45, "sealed");
  assert.equal(row.identity_seed, null);
});

test("a registry that was only ever read needs no KEK: reading a device without secrets opens nothing and makes no KEK", async () => {
  const d = dir("kp-ro-");
  const file = join(d, "keyproxy.db");
  const w = await Store.open(file);
  await w.addDevice("dev-1", key16(), "puckjs", 5);
  await w.close();
  rmSync(join(d, KEK_FILE));
  const r = await Store.open(file, { create: false });
  try {
    assert.equal((await r.getDeviceInfo("dev-1"))?.createdAt, 5);
    assert.deepEqual((await r.listDevices()).map((x) => x.id), ["dev-1"]);
    await assert.rejects(r.getDevice("dev-1"), (e: unknown) => e instanceof KekError && /is missing: restore it/.test((e as Error).message));
  } finally {
    await r.close();
  }
  assert.throws(() => statSync(join(d, KEK_FILE)), { code: "ENOENT" });
});

test("revoking a device: once, with its registration gone and one audit record; again, or an unknown device, is false and changes nothing", async () => {
  const d = dir("kp-revoke-");
  const s = await Store.open(join(d, "keyproxy.db"));
  try {
    await s.addDevice("dev-1", key16(), "puckjs", 0);
    await s.putRegistration({ deviceId: "dev-1", registeredAt: 1, expiresAt: 100, suites: [[1, 0]], certId: null, cert: null, firmware: null, memoryUsed: null });
    assert.equal(await s.revokeDevice("dev-1", 50, "fleet list 3"), true);
    assert.equal((await s.getDeviceInfo("dev-1"))?.revokedAt, 50);
    assert.equal(await s.getRegistration("dev-1"), undefined);
    const audit = async () => (await s.query("SELECT ts, device_id, event, detail FROM audit ORDER BY id")).rows;
    assert.deepEqual(await audit(), [{ ts: 50, device_id: "dev-1", event: "revoked", detail: "fleet list 3" }]);
    const snap = await s.snapshot();
    assert.equal(await s.revokeDevice("dev-1", 60, "again"), false);
    assert.equal(await s.revokeDevice("nobody", 60, "unknown"), false);
    assert.equal(await s.snapshot(), snap);
    assert.equal((await audit()).length, 1);
    // A revoked device's joins are refused.
    assert.equal(await s.advanceJoinCounter("dev-1", 1), false);
  } finally {
    await s.close();
  }
});

test("replacing a device gives it the new key and forgets its counter, registration and identity; removing one is true once", async () => {
  const d = dir("kp-replace-");
  const s = await Store.open(join(d, "keyproxy.db"));
  try {
    const [k1, k2] = [key16(), key16()];
    await s.addDevice("dev-1", k1, "puckjs", 0);
    assert.equal(await s.advanceJoinCounter("dev-1", 7), true);
    assert.equal(await s.setIdentity("dev-1", new Uint8Array(32).fill(1), new Uint8Array(32).fill(2)), true);
    assert.equal(await s.setIdentity("dev-1", new Uint8Array(32).fill(3), new Uint8Array(32).fill(4)), false, "the first identity stays");
    await s.putRegistration({ deviceId: "dev-1", registeredAt: 1, expiresAt: 100, suites: [[1, 0]], certId: null, cert: null, firmware: "fw\u0000x", memoryUsed: 9 });
    assert.equal((await s.getRegistration("dev-1"))?.firmware, "fw\uFFFDx", "a NUL is stored as U+FFFD, as PostgreSQL needs");
    await s.replaceDevice("dev-1", k2, "banglejs2", 10);
    const dev = await s.getDevice("dev-1");
    assert.deepEqual([dev?.rootKey, dev?.board, dev?.createdAt, dev?.joinCounter, dev?.identitySeed, dev?.identityPublic], [k2, "banglejs2", 10, 0, null, null]);
    assert.equal(await s.getRegistration("dev-1"), undefined);
    assert.equal(await s.removeDevice("dev-1"), true);
    assert.equal(await s.removeDevice("dev-1"), false);
    assert.equal(await s.getDevice("dev-1"), undefined);
  } finally {
    await s.close();
  }
});

test("opened only to use it, a registry that does not exist is refused and not made; one that exists keeps its mode", async () => {
  const d = dir("kp-use-only-");
  const missing = join(d, "missing.db");
  await assert.rejects(Store.open(missing, { create: false }), (e: unknown) => (e as { code?: string }).code === "SQLITE_CANTOPEN");
  assert.throws(() => statSync(missing), { code: "ENOENT" }, "not made");
  const file = join(d, "keyproxy.db");
  const first = await Store.open(file);
  assert.ok(first.schemaApplied.length > 0, "a new registry gets every schema version");
  await first.close();
  chmodSync(file, 0o640);
  const used = await Store.open(file, { create: false });
  assert.deepEqual(used.schemaApplied, [], "an up-to-date registry gets none");
  await used.close();
  assert.equal(statSync(file).mode & 0o777, 0o640, "nothing chmodded by a command that only uses the registry");
});

test("close: committed records first, then closed, and closing again is nothing; a wait for the batch with none queued returns at once", async () => {
  const d = dir("kp-close-");
  const s = await Store.open(join(d, "keyproxy.db"));
  let timer: NodeJS.Timeout | undefined;
  const waited = await Promise.race([s.auditCommitted().then(() => "resolved"), new Promise((r) => { timer = setTimeout(() => r("still waiting"), 1000); })]);
  clearTimeout(timer);
  assert.equal(waited, "resolved", "nothing queued: the wait ends at once");
  s.auditBatched(1, null, "session-up", "a");
  assert.equal(s.closed, false);
  await s.close();
  assert.equal(s.closed, true);
  await s.close();
  assert.deepEqual(rowsInFile(join(d, "keyproxy.db"), "SELECT event, detail FROM audit"), [{ event: "session-up", detail: "a" }]);
});

test("a key derived from the KEK for a purpose is HKDF-SHA256(KEK, no salt, \"keyproxy/\" + purpose), 32 bytes: the same for every store sharing the KEK, another for another purpose or KEK", async () => {
  const d = dir("kp-derived-");
  const a = await Store.open(join(d, "a.db"), { kekFile: join(d, "shared.kek") });
  const b = await Store.open(join(d, "b.db"), { kekFile: join(d, "shared.kek") });
  const c = await Store.open(join(d, "c.db"), { kekFile: join(d, "other.kek") });
  try {
    const kek = Buffer.from(readFileSync(join(d, "shared.kek"), "utf8").trim(), "hex");
    const expected = new Uint8Array(hkdfSync("sha256", kek, Buffer.alloc(0), Buffer.from("keyproxy/bus/acme", "utf8"), 32));
    assert.deepEqual(await a.derivedKey("bus/acme"), expected);
    assert.deepEqual(await b.derivedKey("bus/acme"), expected);
    assert.notDeepEqual(await a.derivedKey("bus/other"), expected);
    assert.notDeepEqual(await c.derivedKey("bus/acme"), expected);
  } finally {
    await Promise.all([a.close(), b.close(), c.close()]);
  }
});

test("a wait for the audit records that begins while a batch is being committed ends only once the records queued since are committed too", async () => {
  const d = dir("kp-audit-during-");
  const file = join(d, "keyproxy.db");
  const s = await Store.open(file);
  try {
    // A record queued, and waited for, while the batch before it is being written: the moment a
    // gateway logs a session while the last 100 ms of records commit.
    const spied = s as unknown as { insertAudit(r: unknown): Promise<void> };
    const insert = spied.insertAudit.bind(s);
    let during: Promise<string[]> | undefined;
    spied.insertAudit = async (r) => {
      await insert(r);
      if (during) return;
      s.auditBatched(2, null, "session-up", "queued during the commit");
      during = s.auditCommitted().then(() => (rowsInFile(file, "SELECT detail FROM audit ORDER BY ts") as { detail: string }[]).map((x) => x.detail));
    };
    s.auditBatched(1, null, "session-up", "first");
    await s.auditCommitted();
    assert.ok(during, "the second record was queued during the first one's commit");
    assert.deepEqual(await during, ["first", "queued during the commit"]);
  } finally {
    await s.close();
  }
});

test("a batch of audit records the database refused a moment (another process held its lock) stays queued and is committed later: none lost", async () => {
  const d = dir("kp-audit-retry-");
  const file = join(d, "keyproxy.db");
  const s = await Store.open(file, { busyTimeoutMs: 50 });
  const other = new Database(file);
  try {
    const committed = () => other.prepare("SELECT detail FROM audit").all() as { detail: string }[];
    other.exec("BEGIN EXCLUSIVE");
    s.auditBatched(1, null, "session-up", "held back");
    // The batch's commit (after AUDIT_BATCH_MS) meets the lock, waits 50 ms, fails, and is queued again
    // (tried next after 10 × AUDIT_BATCH_MS).
    await new Promise((r) => setTimeout(r, 400));
    assert.deepEqual(committed(), [], "not committed while the lock was held");
    other.exec("COMMIT");
    const until = Date.now() + 5000;
    while (committed().length === 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(committed(), [{ detail: "held back" }], "committed once the lock was free, without a close");
  } finally {
    other.close();
    await s.close();
  }
});
