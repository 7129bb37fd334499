// The gateway's durable state in one SQLite file (WAL): the device registry with root keys and join
// counters, registrations with their certificates, the identity keys kept in devices' names, and an
// audit log. Every multi-row change is one transaction, so a crash never leaves half a record.
// Columns added after the first release are added by a migration that checks for them, so a data
// directory made by an older gateway keeps working. Root keys and identity seeds are stored sealed
// under the registry's key-encryption key, which is not in the database (kek.ts).

import { chmodSync, closeSync, existsSync, openSync } from "node:fs";
import { dirname, join } from "node:path";
import Database from "better-sqlite3";
import { KEK_FILE, KEK_FILE_ENV, KekError, loadOrCreateKek, open as openSealed, seal, type SealedKind } from "./kek.ts";

/** The meta key holding a value sealed under the KEK, which tells the right KEK from another. */
const KEK_CHECK = "kek-check";

/** A device's columns without its secrets: what monitoring and the answers to other gateways need. */
export interface DeviceInfo {
  id: string;
  board: string;
  createdAt: number;
  revokedAt: number | null;
  joinCounter: number;
  identityPublic: Uint8Array | null;
}

export interface DeviceRow extends DeviceInfo {
  rootKey: Uint8Array;
  identitySeed: Uint8Array | null;
}

export interface RegistrationRow {
  deviceId: string;
  registeredAt: number;
  expiresAt: number;
  /** [suite, priority] pairs, as the device registered them. */
  suites: number[][];
  certId: Uint8Array | null;
  cert: Uint8Array | null;
  /** What the device reported with this registration: its firmware id, and the variables in use
   *  (0: the device does not know). Null for a registration stored by an older gateway. */
  firmware: string | null;
  memoryUsed: number | null;
}

/** A device as `keyproxy device list` and the monitor's metrics see it. */
export interface DeviceSummary {
  id: string;
  board: string;
  createdAt: number;
  revokedAt: number | null;
  joinCounter: number;
  /** Null when not registered. */
  expiresAt: number | null;
  /** From the registration (null when not registered, or registered by an older gateway). */
  firmware: string | null;
  memoryUsed: number | null;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
  id TEXT PRIMARY KEY,
  root_key BLOB NOT NULL,
  board TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  revoked_at INTEGER,
  join_counter INTEGER NOT NULL DEFAULT 0,
  identity_seed BLOB,
  identity_public BLOB
);
CREATE TABLE IF NOT EXISTS registrations (
  device_id TEXT PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
  registered_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL,
  suites TEXT NOT NULL,
  cert_id BLOB,
  cert BLOB
);
CREATE TABLE IF NOT EXISTS audit (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  ts INTEGER NOT NULL,
  device_id TEXT,
  event TEXT NOT NULL,
  detail TEXT
);
`;

/** Columns added since the first schema: [table, column, type]. Each is added where it is missing. */
const ADDED_COLUMNS: [string, string, string][] = [
  ["registrations", "firmware", "TEXT"],
  ["registrations", "memory_used", "INTEGER"],
];

const bytes = (b: Buffer | null): Uint8Array | null => (b ? new Uint8Array(b) : null);

const infoOf = (r: Record<string, any>): DeviceInfo => ({
  id: r.id, board: r.board, createdAt: r.created_at, revokedAt: r.revoked_at, joinCounter: r.join_counter, identityPublic: bytes(r.identity_public),
});

/** A file that is not a keyproxy registry, opened with `create: false`. */
export class NotARegistry extends Error {}

/** The registry and the -wal and -shm files SQLite keeps beside it hold root keys: owner-only. The
 *  file is made 0600 before SQLite opens it (whatever the umask: a mode can only lose bits to it), and
 *  SQLite gives its -wal and -shm the main file's mode; files an older gateway made 0644 are chmodded. */
function makeOwnerOnly(file: string): void {
  closeSync(openSync(file, "a", 0o600));
  for (const f of [file, `${file}-wal`, `${file}-shm`]) {
    if (!existsSync(f)) continue;
    try {
      chmodSync(f, 0o600);
    } catch (e) {
      // Another user's registry that this one may write (group permissions): not ours to chmod, and
      // its owner's next gateway start does it. Anything else is a real failure.
      if ((e as NodeJS.ErrnoException).code !== "EPERM") throw e;
    }
  }
}

export interface StoreOptions {
  /** Create the file if it is missing and make the registry's files owner-only (default true). False
   *  for commands that only use an existing registry: the file must exist and be a registry
   *  (NotARegistry otherwise), and nothing is created or chmodded. */
  create?: boolean;
  /** The key-encryption key's file (default: $KEYPROXY_KEK_FILE, else keyproxy.kek beside the database). */
  kekFile?: string;
}

const ROOT_KEY_BYTES = 16;
/** How long a batched audit record may wait for its commit (auditBatched): long enough that a burst of
 *  setups shares one commit, short enough that a crash loses a moment of evidence, not a minute. */
export const AUDIT_BATCH_MS = 100;
const IDENTITY_SEED_BYTES = 32;

/** One audit record waiting in the queue (Store.auditBatched). */
interface QueuedAudit {
  ts: number;
  deviceId: string | null;
  event: string;
  detail: string;
}

export class Store {
  /** The connection itself; readers outside the store go through `db`, which commits the queued
   *  audit records first. */
  private readonly sqlite: Database.Database;
  readonly kekFile: string;
  private readonly create: boolean;
  private kekBytes: Buffer | undefined;
  /** Prepared statements by their SQL, made once: preparing costs more than running most of them. */
  private statements = new Map<string, Database.Statement>();
  /** Audit records that are evidence only (auditBatched), committed together every AUDIT_BATCH_MS. */
  private auditQueue: QueuedAudit[] = [];
  private auditFlush: NodeJS.Timeout | null = null;
  private auditWaiters: (() => void)[] = [];
  /** Queued records written into the transaction under way (atomically), to queue again on rollback. */
  private drained: QueuedAudit[] | null = null;

  constructor(file: string, opts: StoreOptions = {}) {
    const create = opts.create ?? true;
    this.create = create;
    this.kekFile = opts.kekFile ?? process.env[KEK_FILE_ENV] ?? join(dirname(file), KEK_FILE);
    if (create) makeOwnerOnly(file);
    this.sqlite = new Database(file, { fileMustExist: !create });
    if (!create && !this.isRegistry()) {
      this.sqlite.close();
      throw new NotARegistry(`${file} is not a keyproxy registry`);
    }
    this.sqlite.pragma("journal_mode = WAL");
    // FULL: a join counter the gateway has accepted must survive a power cut, or a replay could pass.
    // Only the batched audit records' own commits run at NORMAL (flushAudit).
    this.sqlite.pragma("synchronous = FULL");
    this.sqlite.pragma("foreign_keys = ON");
    this.sqlite.exec(SCHEMA);
    this.migrate();
    // A registry that may be written gets its KEK now (made if new), and what an older gateway stored
    // in the clear is sealed; one that is only read loads its KEK when a secret is first read.
    if (create) {
      try {
        this.sealWhatIsClear();
      } catch (e) {
        this.sqlite.close();
        throw e;
      }
    }
  }

  /** The key-encryption key, loaded (or, for a registry that may be written, made) on first use and
   *  checked against the value the registry sealed with it first: another KEK fails here, at once (a
   *  gateway at its start), not at some device's join. */
  private kek(): Buffer {
    if (this.kekBytes) return this.kekBytes;
    const check = this.getMeta(KEK_CHECK);
    // A registry that has sealed with a KEK never gets a new one: its KEK is missing, not new.
    const kek = loadOrCreateKek(this.kekFile, this.create && check === undefined);
    if (check !== undefined) {
      try {
        openSealed(kek, "kek-check", "registry", Buffer.from(check, "hex"));
      } catch {
        throw new KekError(`the key-encryption key ${this.kekFile} is not the one this registry's keys were sealed with: restore the right one, or set ${KEK_FILE_ENV} to where it is`);
      }
    } else if (this.create) this.setMeta(KEK_CHECK, seal(kek, "kek-check", "registry", Buffer.from(KEK_CHECK)).toString("hex"));
    this.kekBytes = kek;
    return kek;
  }

  private sealed(kind: SealedKind, id: string, plain: Uint8Array): Buffer {
    return seal(this.kek(), kind, id, plain);
  }

  /** A secret column's value: opened, or as it is where an older gateway stored it in the clear (a
   *  registry opened only to read; one opened to write has been sealed by sealWhatIsClear). */
  private opened(kind: SealedKind, id: string, stored: Buffer, plainBytes: number): Uint8Array {
    return stored.length === plainBytes ? new Uint8Array(stored) : openSealed(this.kek(), kind, id, stored);
  }

  /** Seals the root keys and identity seeds an older gateway stored in the clear, in one transaction. */
  private sealWhatIsClear(): void {
    this.kek();
    const clear = this.sqlite.prepare(`SELECT id, root_key, identity_seed FROM devices WHERE length(root_key) = ${ROOT_KEY_BYTES} OR length(identity_seed) = ${IDENTITY_SEED_BYTES}`).all() as { id: string; root_key: Buffer; identity_seed: Buffer | null }[];
    if (!clear.length) return;
    this.sqlite.transaction(() => {
      for (const r of clear) {
        if (r.root_key.length === ROOT_KEY_BYTES) this.statement("UPDATE devices SET root_key = ? WHERE id = ?").run(this.sealed("root-key", r.id, r.root_key), r.id);
        if (r.identity_seed?.length === IDENTITY_SEED_BYTES) this.statement("UPDATE devices SET identity_seed = ? WHERE id = ?").run(this.sealed("identity-seed", r.id, r.identity_seed), r.id);
      }
    })();
  }

  /** Whether the file is a SQLite database with the registry's devices table: read only, no schema made. */
  private isRegistry(): boolean {
    try {
      return this.sqlite.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'devices'").get() !== undefined;
    } catch (e) {
      if ((e as { code?: string }).code === "SQLITE_NOTADB") return false;
      throw e;
    }
  }

  /** Adds the columns an older data directory lacks, in one transaction. */
  private migrate(): void {
    this.sqlite.transaction(() => {
      for (const [table, column, type] of ADDED_COLUMNS) {
        const have = (this.sqlite.prepare(`PRAGMA table_info(${table})`).all() as { name: string }[]).some((c) => c.name === column);
        if (!have) this.sqlite.exec(`ALTER TABLE ${table} ADD COLUMN ${column} ${type}`);
      }
    })();
  }

  /** Commits the queued audit records, then closes the database (Gateway.stop comes here). */
  close(): void {
    if (!this.sqlite.open) return;
    try {
      this.flushAudit();
    } finally {
      // Closed even when that commit fails (its error still reaches the caller).
      this.sqlite.close();
    }
  }

  /** The database, for readers outside the store (tests, `keyproxy` commands): the queued audit
   *  records are committed first, so that whoever reads the audit table sees every record so far. */
  get db(): Database.Database {
    if (this.auditQueue.length && this.sqlite.open) this.flushAudit();
    return this.sqlite;
  }

  /** sql prepared once for this connection, then reused. */
  statement(sql: string): Database.Statement {
    let s = this.statements.get(sql);
    if (!s) {
      s = this.sqlite.prepare(sql);
      this.statements.set(sql, s);
    }
    return s;
  }

  getMeta(k: string): string | undefined {
    const r = this.statement("SELECT v FROM meta WHERE k = ?").get(k) as { v: string } | undefined;
    return r?.v;
  }

  setMeta(k: string, v: string): void {
    this.statement("INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v").run(k, v);
  }

  addDevice(id: string, rootKey: Uint8Array, board: string, now: number): void {
    this.statement("INSERT INTO devices (id, root_key, board, created_at) VALUES (?, ?, ?, ?)").run(id, this.sealed("root-key", id, rootKey), board, now);
  }

  /** Replaces a device's root key and forgets its join counter, registration and identity. */
  replaceDevice(id: string, rootKey: Uint8Array, board: string, now: number): void {
    this.atomically(() => {
      this.statement("DELETE FROM devices WHERE id = ?").run(id);
      this.addDevice(id, rootKey, board, now);
    });
  }

  removeDevice(id: string): boolean {
    return this.statement("DELETE FROM devices WHERE id = ?").run(id).changes === 1;
  }

  /** A device with its secrets opened: for the join and the exchange, which use them. */
  getDevice(id: string): DeviceRow | undefined {
    const r = this.statement("SELECT * FROM devices WHERE id = ?").get(id) as Record<string, any> | undefined;
    if (!r) return undefined;
    return {
      ...infoOf(r),
      rootKey: this.opened("root-key", r.id, r.root_key, ROOT_KEY_BYTES),
      identitySeed: r.identity_seed ? this.opened("identity-seed", r.id, r.identity_seed, IDENTITY_SEED_BYTES) : null,
    };
  }

  /** A device without its secrets: nothing is opened, no key leaves the database. */
  getDeviceInfo(id: string): DeviceInfo | undefined {
    const r = this.statement("SELECT id, board, created_at, revoked_at, join_counter, identity_public FROM devices WHERE id = ?").get(id) as Record<string, any> | undefined;
    return r ? infoOf(r) : undefined;
  }

  listDevices(): DeviceSummary[] {
    return (this.sqlite.prepare(
      `SELECT d.id, d.board, d.created_at, d.revoked_at, d.join_counter, r.expires_at, r.firmware, r.memory_used
       FROM devices d LEFT JOIN registrations r ON r.device_id = d.id ORDER BY d.id`,
    ).all() as Record<string, any>[]).map((r) => ({
      id: r.id, board: r.board, createdAt: r.created_at, revokedAt: r.revoked_at, joinCounter: r.join_counter, expiresAt: r.expires_at,
      firmware: r.firmware, memoryUsed: r.memory_used,
    }));
  }

  /** Marks a device revoked (fleet revocation list, docs/FLEET.md) and deletes its registration, in
   *  one transaction: its joins are refused from now on (advanceJoinCounter and the link server check
   *  revoked_at). False when there is no such device or it was revoked already. */
  revokeDevice(id: string, now: number, why: string): boolean {
    return this.atomically(() => {
      const changed = this.statement("UPDATE devices SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL").run(now, id).changes === 1;
      if (!changed) return false;
      this.deleteRegistration(id);
      this.audit(now, id, "revoked", why);
      return true;
    });
  }

  /** Raises the join counter to ctr only if ctr is higher: false means a replay (or a race lost). */
  advanceJoinCounter(id: string, ctr: number): boolean {
    return this.statement("UPDATE devices SET join_counter = ? WHERE id = ? AND join_counter < ? AND revoked_at IS NULL").run(ctr, id, ctr).changes === 1;
  }

  setIdentity(id: string, seed: Uint8Array, publicKey: Uint8Array): void {
    this.statement("UPDATE devices SET identity_seed = ?, identity_public = ? WHERE id = ?").run(this.sealed("identity-seed", id, seed), Buffer.from(publicKey), id);
  }

  putRegistration(r: RegistrationRow): void {
    this.statement(
      `INSERT INTO registrations (device_id, registered_at, expires_at, suites, cert_id, cert, firmware, memory_used) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT(device_id) DO UPDATE SET registered_at = excluded.registered_at, expires_at = excluded.expires_at,
       suites = excluded.suites, cert_id = excluded.cert_id, cert = excluded.cert, firmware = excluded.firmware, memory_used = excluded.memory_used`,
    ).run(r.deviceId, r.registeredAt, r.expiresAt, JSON.stringify(r.suites), r.certId && Buffer.from(r.certId), r.cert && Buffer.from(r.cert), r.firmware, r.memoryUsed);
  }

  getRegistration(deviceId: string): RegistrationRow | undefined {
    const r = this.statement("SELECT * FROM registrations WHERE device_id = ?").get(deviceId) as Record<string, any> | undefined;
    if (!r) return undefined;
    return { deviceId: r.device_id, registeredAt: r.registered_at, expiresAt: r.expires_at, suites: JSON.parse(r.suites), certId: bytes(r.cert_id), cert: bytes(r.cert), firmware: r.firmware, memoryUsed: r.memory_used };
  }

  deleteRegistration(deviceId: string): boolean {
    return this.statement("DELETE FROM registrations WHERE device_id = ?").run(deviceId).changes === 1;
  }

  /** An audit record committed before this returns, with the synchronous=FULL of every other write,
   *  or inside the caller's transaction when there is one (a revocation's record lands with it). The
   *  records queued before it are written first, in the same commit, so the log keeps their order
   *  (not inside a transaction begun outside the store: see inForeignTransaction). */
  audit(ts: number, deviceId: string | null, event: string, detail: string): void {
    const queuedFirst = !this.inForeignTransaction();
    this.atomically(() => {
      if (queuedFirst) this.writeQueuedAudit();
      this.insertAudit({ ts, deviceId, event, detail });
    });
  }

  /** An audit record that is evidence, not state: a session's up, down and rekey. It is queued and
   *  committed with every other one queued within AUDIT_BATCH_MS in ONE transaction (group commit),
   *  at synchronous=NORMAL, so that a burst of setups pays one commit, not one fsync each.
   *  What that costs: a crash of the process loses the records of at most the last AUDIT_BATCH_MS
   *  (a committed transaction is in the WAL, which the OS keeps); a power cut may also lose the
   *  batched commits since the WAL was last synced (by any FULL commit: a join counter, a
   *  registration, a checkpoint). The database never corrupts, and nothing that must stay true is in
   *  these records: join counters, registrations, provisioning and revocation are written FULL before
   *  the gateway answers (audit() for their records). Readers see queued records (`db` commits them
   *  first), and close() commits them. */
  auditBatched(ts: number, deviceId: string | null, event: string, detail: string): void {
    // As audit() would, at once: a record queued on a closed store would be lost without a word.
    if (!this.sqlite.open) throw new TypeError("The database connection is not open");
    this.auditQueue.push({ ts, deviceId, event, detail });
    this.auditFlush ??= setTimeout(() => this.flushAudit(), AUDIT_BATCH_MS);
  }

  /** Resolves once the audit records queued so far are committed (a test's or a caller's wait). */
  auditCommitted(): Promise<void> {
    if (!this.auditQueue.length) return Promise.resolve();
    return new Promise((resolve) => this.auditWaiters.push(resolve));
  }

  /** Commits the queued audit records in one transaction at synchronous=NORMAL (see auditBatched).
   *  Inside one of the store's own transactions (atomically) they are written into it instead: the
   *  synchronous level cannot change there, and its commit makes them durable with the rest. A failed
   *  write leaves them queued (the error goes to the caller, as a failed audit() does); close() tries
   *  again. */
  private flushAudit(): void {
    if (this.auditFlush) clearTimeout(this.auditFlush);
    this.auditFlush = null;
    if (!this.sqlite.open) return;
    // Empty: whatever was queued has been committed, here or with an audit() that wrote it first.
    if (!this.auditQueue.length) return this.tellAuditCommitted();
    if (this.inForeignTransaction()) {
      this.auditFlush = setTimeout(() => this.flushAudit(), AUDIT_BATCH_MS);
      return;
    }
    if (this.sqlite.inTransaction) return this.writeQueuedAudit();
    this.statement("PRAGMA synchronous = NORMAL").run();
    try {
      this.atomically(() => this.writeQueuedAudit());
    } finally {
      this.statement("PRAGMA synchronous = FULL").run();
    }
    this.tellAuditCommitted();
  }

  private tellAuditCommitted(): void {
    const waiters = this.auditWaiters;
    this.auditWaiters = [];
    for (const w of waiters) w();
  }

  /** A transaction begun outside the store (a raw BEGIN, as `keyproxy provision` opens across its
   *  steps): queued records are never written into it, since nothing here would queue them again if
   *  it rolled back. They wait for their batch instead. */
  private inForeignTransaction(): boolean {
    return this.sqlite.inTransaction && this.drained === null;
  }

  /** Inserts the queued records into the current transaction. atomically() puts them back at the
   *  front of the queue if that transaction does not commit. */
  private writeQueuedAudit(): void {
    if (!this.auditQueue.length) return;
    const queued = this.auditQueue;
    this.auditQueue = [];
    this.drained?.push(...queued);
    for (const r of queued) this.insertAudit(r);
  }

  private insertAudit(r: QueuedAudit): void {
    this.statement("INSERT INTO audit (ts, device_id, event, detail) VALUES (?, ?, ?, ?)").run(r.ts, r.deviceId, r.event, r.detail);
  }

  /** A transaction around fn: all of its writes land, or none. Queued audit records it wrote
   *  (writeQueuedAudit) are queued again if it rolls back, so a failed change loses none of them. */
  atomically<T>(fn: () => T): T {
    const outer = this.drained;
    this.drained = [];
    try {
      const result = this.sqlite.transaction(fn)();
      // Nested: the outer transaction may still roll back, and these with it.
      outer?.push(...this.drained);
      return result;
    } catch (e) {
      this.auditQueue = [...this.drained, ...this.auditQueue];
      throw e;
    } finally {
      this.drained = outer;
    }
  }

  /** Rows of every table, for tests that prove a rejected input changed nothing. */
  snapshot(): string {
    const dump: Record<string, unknown[]> = {};
    for (const t of ["meta", "devices", "registrations"]) dump[t] = this.sqlite.prepare(`SELECT * FROM ${t} ORDER BY 1`).all();
    return JSON.stringify(dump, (_k, v) => (v && v.type === "Buffer" ? Buffer.from(v.data).toString("hex") : v));
  }
}
