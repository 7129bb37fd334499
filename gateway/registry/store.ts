// The gateway's durable state: the device registry with root keys and join counters, registrations
// with their certificates, the identity keys kept in devices' names, policy, group SAs' membership and
// an audit log. In one SQLite file (WAL) by default, or in PostgreSQL (`--db postgres://...`), which
// several gateway instances of one domain share: the store is written once over the engine interface
// (sql.ts), in the SQL both accept. Every multi-row change is one transaction, so a crash never leaves
// half a record; a join counter advances in one conditional UPDATE, so two instances can never both
// accept the same one. The schema is versioned (migrations.ts), so a registry made by an older gateway
// keeps working. Root keys and identity seeds are stored sealed under the registry's key-encryption
// key, which is not in the database (kek.ts).

import { AsyncLocalStorage } from "node:async_hooks";
import { hkdfSync } from "node:crypto";
import { chmodSync, closeSync, existsSync, openSync } from "node:fs";
import { dirname, join } from "node:path";
import { KEK_FILE, KEK_FILE_ENV, KekError, loadOrCreateKek, open as openSealed, seal, type SealedKind } from "./kek.ts";
import { migrate } from "./migrations.ts";
import { DatabaseError, type EngineName, type SqlConnection, type SqlResult, type SqlRow, type SqlValue, type TransactionOptions } from "./sql.ts";
import { openSqlite, SqliteConnection } from "./sqlite-engine.ts";

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

const bytes = (b: unknown): Uint8Array | null => (b ? new Uint8Array(b as Buffer) : null);

const infoOf = (r: Record<string, any>): DeviceInfo => ({
  id: r.id, board: r.board, createdAt: r.created_at, revokedAt: r.revoked_at, joinCounter: r.join_counter, identityPublic: bytes(r.identity_public),
});

/** A registry given as a PostgreSQL URL (postgres:// or postgresql://); anything else is an SQLite file. */
export const isDatabaseUrl = (target: string): boolean => /^postgres(ql)?:\/\//i.test(target);

/** A PostgreSQL URL without its password, for messages and logs. */
export function withoutPassword(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return "(a PostgreSQL URL that does not parse)";
  }
}

/** A database that is not a keyproxy registry, opened with `create: false`. */
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
  /** The key-encryption key's file (default: $KEYPROXY_KEK_FILE, else keyproxy.kek beside an SQLite
   *  file; a PostgreSQL registry has no "beside": its KEK file must be given). */
  kekFile?: string;
  /** PostgreSQL: connections in the pool (default the engine's). */
  poolSize?: number;
  /** SQLite: how long a write waits for another process's (default 5000 ms). */
  busyTimeoutMs?: number;
  /** PostgreSQL: an idle connection broke (the server restarted, the network was cut); the pool
   *  opens another when needed. For the log; the reason holds no password. */
  onConnectionLost?: (reason: string) => void;
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

/** The transaction a piece of code runs in (Store.atomically), found through AsyncLocalStorage so
 *  that the store's methods called inside fn join it without being handed it. */
interface ActiveTransaction {
  conn: SqlConnection;
  /** Set when it has ended: a timer started inside it inherits the context, and must not use it. */
  done: boolean;
  /** Queued audit records it wrote (writeQueuedAudit), queued again if it rolls back. */
  drained: QueuedAudit[];
}

/** Text PostgreSQL cannot hold (NUL) never reaches either engine: both logs read the same. */
const storableText = (s: string): string => s.replace(/\0/g, "\uFFFD");

export class Store {
  private readonly context = new AsyncLocalStorage<ActiveTransaction>();
  /** Transactions of this store whose fn is running (atomically): the context is on while any is. */
  private transactionsUnderWay = 0;
  private kekBytes: Buffer | undefined;
  /** The schema versions this open applied (migrations.ts): none when the registry was up to date. */
  schemaApplied: number[] = [];
  /** The meta value sealed under the KEK (read at open): which tells the right KEK from another. */
  private kekCheck: string | undefined;
  /** Audit records that are evidence only (auditBatched), committed together every AUDIT_BATCH_MS. */
  private auditQueue: QueuedAudit[] = [];
  private auditFlush: NodeJS.Timeout | null = null;
  private auditWaiters: (() => void)[] = [];

  /** The connection for queryRelaxed (PostgreSQL), opened on first use; its URL, kept out of inspect(). */
  #relaxed: Promise<SqlConnection> | undefined;
  #relaxedUrl: string | undefined;
  #onConnectionLost: ((reason: string) => void) | undefined;

  private constructor(
    private readonly conn: SqlConnection,
    /** The SQLite file, or the PostgreSQL URL without its password. */
    readonly location: string,
    readonly kekFile: string,
    private readonly create: boolean,
  ) {}

  /** Opens the registry at target, an SQLite file or a PostgreSQL URL, bringing its schema up to date. */
  static async open(target: string, opts: StoreOptions = {}): Promise<Store> {
    const create = opts.create ?? true;
    const postgres = isDatabaseUrl(target);
    const kekFile = opts.kekFile ?? process.env[KEK_FILE_ENV] ?? (postgres ? undefined : join(dirname(target), KEK_FILE));
    if (!kekFile) throw new KekError(`a registry in PostgreSQL needs the file of its key-encryption key: set ${KEK_FILE_ENV} (every instance of the domain uses the same KEK, which is never in the database)`);
    let conn: SqlConnection;
    if (postgres) {
      const { openPostgres } = await import("./postgres-engine.ts");
      conn = await openPostgres(target, { poolSize: opts.poolSize, onConnectionLost: opts.onConnectionLost });
    } else {
      if (create) makeOwnerOnly(target);
      conn = openSqlite(target, { mustExist: !create, busyTimeoutMs: opts.busyTimeoutMs });
    }
    const store = new Store(conn, postgres ? withoutPassword(target) : target, kekFile, create);
    if (postgres) {
      store.#relaxedUrl = target;
      store.#onConnectionLost = opts.onConnectionLost;
    }
    try {
      if (!create && !(await store.isRegistry())) throw new NotARegistry(`${store.location} is not a keyproxy registry`);
      if (conn instanceof SqliteConnection) conn.configure();
      store.schemaApplied = await migrate(conn);
      store.kekCheck = await store.getMeta(KEK_CHECK);
      // A registry that may be written gets its KEK now (made if new), and what an older gateway stored
      // in the clear is sealed; one that is only read loads its KEK when a secret is first read. A
      // registry that has a KEK check has sealed before: a key in the clear there was written behind the
      // gateway's back, and is refused where it is read (opened), never sealed as an older gateway's.
      if (create && store.kekCheck === undefined) await store.sealWhatIsClear();
      else if (create) await store.kek();
    } catch (e) {
      await conn.close();
      throw e;
    }
    return store;
  }

  get engine(): EngineName {
    return this.conn.engine;
  }

  get closed(): boolean {
    return this.conn.closed;
  }

  /** One statement (`?` placeholders), inside the transaction the caller runs in, if any: for the
   *  registry's other tables (policy.ts, key-groups.ts) and for tests. The queued audit records are
   *  committed first when it reads the audit table, so that a reader sees every record so far. */
  async query(sql: string, params: readonly SqlValue[] = []): Promise<SqlResult> {
    if (this.auditQueue.length && /\baudit\b/i.test(sql) && !this.activeTransaction()) await this.flushAudit();
    return this.via().query(sql, params);
  }

  /** One statement whose commit need not wait for the disk, outside any transaction: for what the
   *  instances of a domain share about the present (gateway/instances/live-table.ts), which is
   *  rewritten as it changes and never holds a key or a record. PostgreSQL runs it on a connection of
   *  its own, so these statements run in the order they were called (a device's "linked" never
   *  overtakes its "unlinked"), with synchronous_commit off: one round trip, seen by every connection as soon as it
   *  returns, and lost only if the server itself crashes within a moment of it (its WAL writer flushes
   *  within 3 × wal_writer_delay, 0.6 s by default; docs/SCALING.md says what that can cost). The
   *  registry's records (devices, counters, registrations, audit) never go this way. SQLite runs it
   *  as query(). */
  async queryRelaxed(sql: string, params: readonly SqlValue[] = []): Promise<SqlResult> {
    if (this.#relaxedUrl === undefined || this.activeTransaction()) return this.query(sql, params);
    if (this.conn.closed) throw new DatabaseError("the registry is closed: the statement was not run");
    let relaxed = this.#relaxed;
    if (!relaxed) {
      const opening = import("./postgres-engine.ts").then(({ openPostgres }) =>
        openPostgres(this.#relaxedUrl!, { poolSize: 1, relaxedCommits: true, onConnectionLost: this.#onConnectionLost }));
      opening.catch(() => {
        if (this.#relaxed === opening) this.#relaxed = undefined; // tried again on the next call
      });
      this.#relaxed = relaxed = opening;
    }
    return (await relaxed).query(sql, params);
  }

  /** The first row of a query, or undefined. */
  async row(sql: string, params: readonly SqlValue[] = []): Promise<SqlRow | undefined> {
    return (await this.query(sql, params)).rows[0];
  }

  private activeTransaction(): ActiveTransaction | undefined {
    const a = this.context.getStore();
    return a && !a.done ? a : undefined;
  }

  private via(): SqlConnection {
    return this.activeTransaction()?.conn ?? this.conn;
  }

  /** The key-encryption key, loaded (or, for a registry that may be written, made) on first use and
   *  checked against the value the registry sealed with it first: another KEK fails here, at once (a
   *  gateway at its start), not at some device's join. */
  private async kek(): Promise<Buffer> {
    if (this.kekBytes) return this.kekBytes;
    // A registry that has sealed with a KEK never gets a new one: its KEK is missing, not new.
    const kek = loadOrCreateKek(this.kekFile, this.create && this.kekCheck === undefined);
    if (this.kekCheck === undefined && this.create) {
      // Another instance starting at the same time may have written its check first: keep that one,
      // and check this KEK against it below.
      await this.query("INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO NOTHING", [KEK_CHECK, seal(kek, "kek-check", "registry", Buffer.from(KEK_CHECK)).toString("hex")]);
      this.kekCheck = await this.getMeta(KEK_CHECK);
    }
    if (this.kekCheck !== undefined) {
      try {
        openSealed(kek, "kek-check", "registry", Buffer.from(this.kekCheck, "hex"));
      } catch {
        throw new KekError(`the key-encryption key ${this.kekFile} is not the one this registry's keys were sealed with: restore the right one, or set ${KEK_FILE_ENV} to where it is`);
      }
    }
    this.kekBytes = kek;
    return kek;
  }

  /** A 32-byte key for one purpose, derived from the KEK (HKDF-SHA256): what only holders of the KEK
   *  share, as the instances of one domain do (gateway/instances/bus.ts). The KEK itself never leaves. */
  async derivedKey(purpose: string): Promise<Uint8Array> {
    return new Uint8Array(hkdfSync("sha256", await this.kek(), Buffer.alloc(0), Buffer.from(`keyproxy/${purpose}`, "utf8"), 32));
  }

  private async sealed(kind: SealedKind, id: string, plain: Uint8Array): Promise<Buffer> {
    return seal(await this.kek(), kind, id, plain);
  }

  /** A secret column's value: opened, or as it is where an older gateway stored it in the clear (a
   *  registry that has never sealed, opened only to read; one opened to write has been sealed by
   *  sealWhatIsClear). In a registry that has sealed, a value in the clear is an alteration: whoever
   *  can write the database but not read the KEK must not choose a device's key that way. */
  private async opened(kind: SealedKind, id: string, stored: Uint8Array, plainBytes: number): Promise<Uint8Array> {
    if (stored.length !== plainBytes) return openSealed(await this.kek(), kind, id, stored);
    if (this.kekCheck !== undefined) throw new KekError(`the ${kind} of ${id} in the registry is not sealed, though this registry seals every key: the row was altered`);
    return new Uint8Array(stored);
  }

  /** Seals the root keys and identity seeds an older gateway stored in the clear, in one transaction
   *  with the KEK check (kek()): a crash leaves the registry as it was, or all sealed and checked. */
  private async sealWhatIsClear(): Promise<void> {
    await this.atomically(async () => {
      await this.kek();
      const clear = (await this.query(`SELECT id, root_key, identity_seed FROM devices WHERE length(root_key) = ${ROOT_KEY_BYTES} OR length(identity_seed) = ${IDENTITY_SEED_BYTES}`)).rows as { id: string; root_key: Buffer; identity_seed: Buffer | null }[];
      for (const r of clear) {
        if (r.root_key.length === ROOT_KEY_BYTES) await this.query("UPDATE devices SET root_key = ? WHERE id = ?", [await this.sealed("root-key", r.id, r.root_key), r.id]);
        if (r.identity_seed?.length === IDENTITY_SEED_BYTES) await this.query("UPDATE devices SET identity_seed = ? WHERE id = ?", [await this.sealed("identity-seed", r.id, r.identity_seed), r.id]);
      }
    });
  }

  /** Whether the database has the registry's devices table: read only, no schema made. */
  private async isRegistry(): Promise<boolean> {
    const sql = this.engine === "sqlite"
      ? "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'devices'"
      : "SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = 'devices'";
    try {
      return (await this.conn.query(sql)).rows.length > 0;
    } catch (e) {
      if ((e as { code?: string }).code === "SQLITE_NOTADB") return false;
      throw e;
    }
  }

  /** Commits the queued audit records, then closes the database (Gateway.stop comes here). */
  async close(): Promise<void> {
    if (this.conn.closed) return;
    try {
      await this.flushAudit();
    } finally {
      // Closed even when that commit fails (its error still reaches the caller).
      const relaxed = this.#relaxed;
      this.#relaxed = undefined;
      await Promise.all([this.conn.close(), relaxed?.then((c) => c.close(), () => undefined)]);
    }
  }

  async getMeta(k: string): Promise<string | undefined> {
    return (await this.row("SELECT v FROM meta WHERE k = ?", [k]))?.v as string | undefined;
  }

  async setMeta(k: string, v: string): Promise<void> {
    await this.query("INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v", [k, v]);
  }

  async addDevice(id: string, rootKey: Uint8Array, board: string, now: number): Promise<void> {
    await this.query("INSERT INTO devices (id, root_key, board, created_at) VALUES (?, ?, ?, ?)", [id, await this.sealed("root-key", id, rootKey), board, now]);
  }

  /** Replaces a device's root key and forgets its join counter, registration and identity. */
  async replaceDevice(id: string, rootKey: Uint8Array, board: string, now: number): Promise<void> {
    await this.atomically(async () => {
      await this.query("DELETE FROM devices WHERE id = ?", [id]);
      await this.addDevice(id, rootKey, board, now);
    });
  }

  async removeDevice(id: string): Promise<boolean> {
    return (await this.query("DELETE FROM devices WHERE id = ?", [id])).changes === 1;
  }

  /** A device with its secrets opened: for the join and the exchange, which use them. */
  async getDevice(id: string): Promise<DeviceRow | undefined> {
    // Columns named, not *: a statement PostgreSQL prepares must keep its result type when a newer
    // instance's migration adds a column (postgres-engine.ts, MAX_PREPARED).
    const r = await this.row("SELECT id, root_key, board, created_at, revoked_at, join_counter, identity_seed, identity_public FROM devices WHERE id = ?", [id]);
    if (!r) return undefined;
    return {
      ...infoOf(r),
      rootKey: await this.opened("root-key", id, r.root_key as Uint8Array, ROOT_KEY_BYTES),
      identitySeed: r.identity_seed ? await this.opened("identity-seed", id, r.identity_seed as Uint8Array, IDENTITY_SEED_BYTES) : null,
    };
  }

  /** A device without its secrets: nothing is opened, no key leaves the database. */
  async getDeviceInfo(id: string): Promise<DeviceInfo | undefined> {
    const r = await this.row("SELECT id, board, created_at, revoked_at, join_counter, identity_public FROM devices WHERE id = ?", [id]);
    return r ? infoOf(r) : undefined;
  }

  async listDevices(): Promise<DeviceSummary[]> {
    const { rows } = await this.query(
      `SELECT d.id, d.board, d.created_at, d.revoked_at, d.join_counter, r.expires_at, r.firmware, r.memory_used
       FROM devices d LEFT JOIN registrations r ON r.device_id = d.id ORDER BY d.id`,
    );
    return (rows as Record<string, any>[]).map((r) => ({
      id: r.id, board: r.board, createdAt: r.created_at, revokedAt: r.revoked_at, joinCounter: r.join_counter, expiresAt: r.expires_at,
      firmware: r.firmware, memoryUsed: r.memory_used,
    }));
  }

  /** Marks a device revoked (fleet revocation list, docs/FLEET.md) and deletes its registration, in
   *  one transaction: its joins are refused from now on (advanceJoinCounter and the link server check
   *  revoked_at). False when there is no such device or it was revoked already. */
  async revokeDevice(id: string, now: number, why: string): Promise<boolean> {
    return this.atomically(async () => {
      const changed = (await this.query("UPDATE devices SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", [now, id])).changes === 1;
      if (!changed) return false;
      await this.deleteRegistration(id);
      await this.audit(now, id, "revoked", why);
      return true;
    });
  }

  /** Raises the join counter to ctr only if ctr is higher, in one conditional UPDATE (atomic on both
   *  engines, across every instance sharing the database): false means a replay, or a race lost to
   *  another instance that accepted the same counter. */
  async advanceJoinCounter(id: string, ctr: number): Promise<boolean> {
    return (await this.query("UPDATE devices SET join_counter = ? WHERE id = ? AND join_counter < ? AND revoked_at IS NULL", [ctr, id, ctr])).changes === 1;
  }

  /** Gives a device the identity key the gateway keeps in its name, unless it has one: false when it
   *  had (another instance of the domain was first; its key stays, and is the one to use). */
  async setIdentity(id: string, seed: Uint8Array, publicKey: Uint8Array): Promise<boolean> {
    return (await this.query("UPDATE devices SET identity_seed = ?, identity_public = ? WHERE id = ? AND identity_public IS NULL", [await this.sealed("identity-seed", id, seed), publicKey, id])).changes === 1;
  }

  async putRegistration(r: RegistrationRow): Promise<void> {
    await this.query(
      `INSERT INTO registrations (device_id, registered_at, expires_at, suites, cert_id, cert, firmware, memory_used) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT(device_id) DO UPDATE SET registered_at = excluded.registered_at, expires_at = excluded.expires_at,
       suites = excluded.suites, cert_id = excluded.cert_id, cert = excluded.cert, firmware = excluded.firmware, memory_used = excluded.memory_used`,
      [r.deviceId, r.registeredAt, r.expiresAt, JSON.stringify(r.suites), r.certId, r.cert, r.firmware === null ? null : storableText(r.firmware), r.memoryUsed],
    );
  }

  async getRegistration(deviceId: string): Promise<RegistrationRow | undefined> {
    const r = (await this.row("SELECT device_id, registered_at, expires_at, suites, cert_id, cert, firmware, memory_used FROM registrations WHERE device_id = ?", [deviceId])) as Record<string, any> | undefined;
    if (!r) return undefined;
    return { deviceId: r.device_id, registeredAt: r.registered_at, expiresAt: r.expires_at, suites: JSON.parse(r.suites), certId: bytes(r.cert_id), cert: bytes(r.cert), firmware: r.firmware, memoryUsed: r.memory_used };
  }

  async deleteRegistration(deviceId: string): Promise<boolean> {
    return (await this.query("DELETE FROM registrations WHERE device_id = ?", [deviceId])).changes === 1;
  }

  /** An audit record committed before this resolves, with the full durability of every other write,
   *  or inside the caller's transaction when there is one (a revocation's record lands with it). The
   *  records queued before it are written first, in the same commit, so the log keeps their order. */
  async audit(ts: number, deviceId: string | null, event: string, detail: string): Promise<void> {
    await this.atomically(async () => {
      await this.writeQueuedAudit();
      await this.insertAudit({ ts, deviceId, event, detail });
    });
  }

  /** An audit record that is evidence, not state: a session's up, down and rekey. It is queued and
   *  committed with every other one queued within AUDIT_BATCH_MS in ONE transaction (group commit),
   *  not durable (SQLite: synchronous=NORMAL; PostgreSQL: synchronous_commit off), so that a burst of
   *  setups pays one commit, not one fsync each.
   *  What that costs: a crash of the process loses the records of at most the last AUDIT_BATCH_MS
   *  (SQLite: a committed transaction is in the WAL, which the OS keeps); a power cut may also lose
   *  the batched commits since the log was last synced (by any durable commit: a join counter, a
   *  registration, a checkpoint). The database never corrupts, and nothing that must stay true is in
   *  these records: join counters, registrations, provisioning and revocation are committed durably
   *  before the gateway answers (audit() for their records). Readers of the audit table through
   *  query() see queued records, and close() commits them. */
  auditBatched(ts: number, deviceId: string | null, event: string, detail: string): void {
    // As audit() would, at once: a record queued on a closed store would be lost without a word.
    if (this.conn.closed) throw new DatabaseError("the registry's database is closed");
    this.auditQueue.push({ ts, deviceId, event, detail });
    // Outside the caller's context: the timer must not inherit a transaction that will have ended.
    this.auditFlush ??= this.context.exit(() => setTimeout(() => void this.flushAudit().catch(() => this.retryAuditLater()), AUDIT_BATCH_MS));
  }

  /** Resolves once the audit records queued so far are committed (a test's or a caller's wait). */
  auditCommitted(): Promise<void> {
    if (!this.auditQueue.length) return Promise.resolve();
    return new Promise((resolve) => this.auditWaiters.push(resolve));
  }

  /** A batch that did not commit (the database unreachable a moment) stays queued and is tried again;
   *  close() tries once more and passes its error on. */
  private retryAuditLater(): void {
    if (this.conn.closed || this.auditFlush) return;
    this.auditFlush = this.context.exit(() => setTimeout(() => void this.flushAudit().catch(() => this.retryAuditLater()), AUDIT_BATCH_MS * 10));
  }

  /** Commits the queued audit records in one transaction that need not be durable (see auditBatched).
   *  A failed write leaves them queued (atomically puts them back), and the error goes to the caller. */
  private async flushAudit(): Promise<void> {
    if (this.auditFlush) clearTimeout(this.auditFlush);
    this.auditFlush = null;
    if (this.conn.closed) return;
    if (this.auditQueue.length) await this.context.exit(() => this.atomically(() => this.writeQueuedAudit(), { durable: false }));
    // Empty now, or already: whatever was queued is committed, here or with an audit() that wrote it first.
    if (!this.auditQueue.length) this.tellAuditCommitted();
  }

  private tellAuditCommitted(): void {
    const waiters = this.auditWaiters;
    this.auditWaiters = [];
    for (const w of waiters) w();
  }

  /** Inserts the queued records into the current transaction; atomically() puts them back at the
   *  front of the queue if that transaction does not commit. */
  private async writeQueuedAudit(): Promise<void> {
    if (!this.auditQueue.length) return;
    const queued = this.auditQueue;
    this.auditQueue = [];
    this.activeTransaction()?.drained.push(...queued);
    for (const r of queued) await this.insertAudit(r);
  }

  private async insertAudit(r: QueuedAudit): Promise<void> {
    await this.query("INSERT INTO audit (ts, device_id, event, detail) VALUES (?, ?, ?, ?)", [r.ts, r.deviceId, storableText(r.event), storableText(r.detail)]);
  }

  /** A transaction around fn: all of its writes land, or none. The store's methods that fn calls run
   *  inside it (a nested atomically is a savepoint). Queued audit records it wrote are queued again if
   *  it rolls back, so a failed change loses none of them. */
  async atomically<T>(fn: () => Promise<T>, opts?: TransactionOptions): Promise<T> {
    const outer = this.activeTransaction();
    const active: ActiveTransaction = { conn: this.conn, done: false, drained: [] };
    let entered = false;
    try {
      const result = await (outer?.conn ?? this.conn).transaction((tx) => {
        active.conn = tx;
        entered = true;
        this.transactionsUnderWay++;
        return this.context.run(active, fn);
      }, opts);
      // Nested: the outer transaction may still roll back, and these with it.
      outer?.drained.push(...active.drained);
      return result;
    } catch (e) {
      this.auditQueue = [...active.drained, ...this.auditQueue];
      throw e;
    } finally {
      active.done = true;
      // With none under way, the context is switched off: on Node 20 an enabled AsyncLocalStorage
      // hooks every promise the process makes (measured: a fifth of a session setup's CPU), and
      // outside a transaction there is nothing to find. run() switches it on again.
      if (entered && --this.transactionsUnderWay === 0) this.context.disable();
    }
  }

  /** Rows of every table, for tests that prove a rejected input changed nothing. */
  async snapshot(): Promise<string> {
    const dump: Record<string, unknown[]> = {};
    for (const t of ["meta", "devices", "registrations"]) dump[t] = (await this.query(`SELECT * FROM ${t} ORDER BY 1`)).rows;
    return JSON.stringify(dump, (_k, v) => (v && v.type === "Buffer" ? Buffer.from(v.data).toString("hex") : v));
  }
}
