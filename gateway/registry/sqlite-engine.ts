// The registry's embedded engine: one SQLite file (WAL) through better-sqlite3, whose calls are
// synchronous. The connection is one, so a transaction holds it across its awaits: every statement
// from outside waits until that transaction ends (it must never run inside it, nor be rolled back
// with it). Statements are prepared once and reused: preparing costs more than running most of them.

import Database from "better-sqlite3";
import { DatabaseError, type SqlConnection, type SqlResult, type SqlValue, type TransactionOptions } from "./sql.ts";

export interface SqliteOptions {
  /** The file must exist already (commands that only read a registry). */
  mustExist?: boolean;
  /** How long a write waits for another process's lock (default 5000 ms). */
  busyTimeoutMs?: number;
}

const toParam = (v: SqlValue): unknown => (v instanceof Uint8Array && !Buffer.isBuffer(v) ? Buffer.from(v.buffer, v.byteOffset, v.byteLength) : v);

export class SqliteConnection implements SqlConnection {
  readonly engine = "sqlite" as const;
  private readonly statements = new Map<string, Database.Statement>();
  /** Settles when the transaction under way ends; null when none is. */
  private held: Promise<void> | null = null;
  private savepoints = 0;

  constructor(readonly db: Database.Database) {}

  get closed(): boolean {
    return !this.db.open;
  }

  async query(sql: string, params: readonly SqlValue[] = []): Promise<SqlResult> {
    while (this.held) await this.held;
    return this.run(sql, params);
  }

  async exec(sql: string): Promise<void> {
    while (this.held) await this.held;
    this.db.exec(sql);
  }

  async transaction<T>(fn: (tx: SqlConnection) => Promise<T>, opts: TransactionOptions = {}): Promise<T> {
    while (this.held) await this.held;
    if (!this.db.open) throw new DatabaseError("the registry's database is closed");
    let release!: () => void;
    this.held = new Promise((r) => (release = r));
    const relaxed = opts.durable === false;
    try {
      // The synchronous level cannot change inside a transaction: set it around.
      if (relaxed) this.db.pragma("synchronous = NORMAL");
      this.db.exec("BEGIN IMMEDIATE");
      try {
        const result = await fn(new SqliteTransaction(this));
        this.db.exec("COMMIT");
        return result;
      } catch (e) {
        if (this.db.inTransaction) this.db.exec("ROLLBACK");
        throw e;
      }
    } finally {
      if (relaxed && this.db.open) this.db.pragma("synchronous = FULL");
      this.held = null;
      release();
    }
  }

  async close(): Promise<void> {
    while (this.held) await this.held;
    if (this.db.open) this.db.close();
  }

  /** The registry's settings, once the file is known to be a database (the pragmas read it). */
  configure(): void {
    this.db.pragma("journal_mode = WAL");
    // FULL: a join counter the gateway has accepted must survive a power cut, or a replay could pass.
    // Only the transactions that say durable: false (the batched audit records) run at NORMAL.
    this.db.pragma("synchronous = FULL");
    this.db.pragma("foreign_keys = ON");
  }

  /** Runs at once, inside whatever transaction this connection has (the transaction's own path). */
  run(sql: string, params: readonly SqlValue[]): SqlResult {
    if (!this.db.open) throw new DatabaseError("the registry's database is closed");
    let s = this.statements.get(sql);
    if (!s) {
      s = this.db.prepare(sql);
      this.statements.set(sql, s);
    }
    const args = params.map(toParam);
    if (s.reader) return { rows: s.all(...args) as SqlResult["rows"], changes: 0 };
    return { rows: [], changes: s.run(...args).changes };
  }

  /** A savepoint inside the transaction under way. */
  async nested<T>(fn: (tx: SqlConnection) => Promise<T>, tx: SqlConnection): Promise<T> {
    const name = `sp${++this.savepoints}`;
    this.db.exec(`SAVEPOINT ${name}`);
    try {
      const result = await fn(tx);
      this.db.exec(`RELEASE ${name}`);
      return result;
    } catch (e) {
      this.db.exec(`ROLLBACK TO ${name}`);
      this.db.exec(`RELEASE ${name}`);
      throw e;
    }
  }
}

/** The transaction's view of the connection: statements run in it, at once. */
class SqliteTransaction implements SqlConnection {
  readonly engine = "sqlite" as const;
  constructor(private conn: SqliteConnection) {}
  get closed(): boolean {
    return this.conn.closed;
  }
  async query(sql: string, params: readonly SqlValue[] = []): Promise<SqlResult> {
    return this.conn.run(sql, params);
  }
  async exec(sql: string): Promise<void> {
    this.conn.db.exec(sql);
  }
  transaction<T>(fn: (tx: SqlConnection) => Promise<T>): Promise<T> {
    return this.conn.nested(fn, this);
  }
  async close(): Promise<void> {
    throw new DatabaseError("a transaction cannot close its connection");
  }
}

/** Opens (or creates) the SQLite registry file. */
export function openSqlite(file: string, opts: SqliteOptions = {}): SqliteConnection {
  const db = new Database(file, { fileMustExist: !!opts.mustExist, timeout: opts.busyTimeoutMs ?? 5000 });
  return new SqliteConnection(db);
}
