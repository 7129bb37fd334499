// The one thing the registry asks of a database engine: run a statement, run a transaction. The
// registry (store.ts) is written once on top of this; SQLite (the embedded default, sqlite-engine.ts)
// and PostgreSQL (several gateway instances of one domain sharing one database, postgres-engine.ts)
// each implement it. Statements are written in the SQL both engines accept, with `?` placeholders;
// only the schema's DDL differs by engine (migrations.ts).

/** What a statement takes and gives back: text, whole numbers (milliseconds since 1970 and counters
 *  fit in a double's 53 bits; a PostgreSQL BIGINT comes back as a number, not a string), bytes
 *  (BLOB / BYTEA, always returned as a Buffer), null. */
export type SqlValue = string | number | Uint8Array | null;
export type SqlRow = Record<string, SqlValue>;

export interface SqlResult {
  rows: SqlRow[];
  /** Rows inserted, updated or deleted. */
  changes: number;
}

export type EngineName = "sqlite" | "postgres";

export interface TransactionOptions {
  /** False for records that are evidence, not state (the batched audit records, Store.auditBatched):
   *  the commit may be lost in a crash or power cut, never half of it. SQLite commits it at
   *  synchronous=NORMAL, PostgreSQL with synchronous_commit off. Default true. */
  durable?: boolean;
}

/** A connection to the registry's database, or a transaction on it (the same interface: code that
 *  runs inside a transaction cannot tell, and a nested transaction is a savepoint). */
export interface SqlConnection {
  readonly engine: EngineName;
  /** Runs one statement with `?` placeholders. On a connection that is not a transaction, it is its
   *  own transaction; it waits while a transaction of the same connection is under way (it never
   *  slips into someone else's). */
  query(sql: string, params?: readonly SqlValue[]): Promise<SqlResult>;
  /** fn's statements all commit, or none (fn threw: rolled back, its error passed on). */
  transaction<T>(fn: (tx: SqlConnection) => Promise<T>, opts?: TransactionOptions): Promise<T>;
  /** Several statements without placeholders, for the schema (migrations.ts). */
  exec(sql: string): Promise<void>;
  /** Waits for what is under way, then closes. Idempotent. */
  close(): Promise<void>;
  readonly closed: boolean;
}

/** The engine could not be reached or refused a statement; the message names the database (never its
 *  password) and what to do. */
export class DatabaseError extends Error {}
