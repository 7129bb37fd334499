// The registry's shared engine: PostgreSQL through node-postgres (pg), for several gateway instances
// of one domain sharing one database (issue 12). A pool of connections: a statement outside a
// transaction takes any free client and gives it back; a transaction holds one client from BEGIN to
// COMMIT, so statements from outside never slip into it (they run beside it, on another client, and
// see only what it has committed), and two transactions run at once on two clients.
//
// Unlike SQLite's BEGIN IMMEDIATE, which lets one writer in at a time, these transactions run at
// PostgreSQL's default READ COMMITTED, side by side: a read followed by a write that depends on it is
// not atomic. What must not race is said in one statement that checks and writes together
// (UPDATE ... WHERE counter < ?, INSERT ... ON CONFLICT), which PostgreSQL re-checks on the row it
// locks: that is how two instances never accept the same join counter.
//
// What differs from SQLite stays in here: `?` placeholders become `$1..$n`; BIGINT and NUMERIC come
// back as numbers (refused past 2^53 rather than rounded), booleans as 1/0, bytea as a Buffer, any
// other type as its text; so a row holds only SqlValues whichever engine produced it.

import pg from "pg";
import { DatabaseError, type SqlConnection, type SqlResult, type SqlRow, type SqlValue, type TransactionOptions } from "./sql.ts";

export interface PostgresOptions {
  /** Connections this gateway instance keeps to the server at most (pg's default: 10). */
  poolSize?: number;
  /** An idle connection broke (server restarted, network cut): the pool has dropped it and opens a
   *  new one when needed. The reason never holds the password. */
  onConnectionLost?: (reason: string) => void;
  /** Every commit on this pool skips the wait for the WAL flush (synchronous_commit off): for state
   *  that is rewritten as it changes and may lose its last moment to a server crash (Store.queryRelaxed). */
  relaxedCommits?: boolean;
}

/** Gives up on a server that does not answer the connection at all (a firewall that drops packets),
 *  so a wrong URL fails the gateway's start instead of hanging it. */
const CONNECT_TIMEOUT_MS = 10_000;

// ---------------------------------------------------------------------------------------------
// Placeholders

/** `?` placeholders numbered `$1..$n` in order, leaving alone a `?` inside a '...' string literal, a
 *  "..." quoted identifier (a doubled quote inside either is part of it) or a comment. Standard SQL
 *  only, as the statements both engines accept are: no E'...' backslash escapes, no $$ quoting. */
export function numberPlaceholders(sql: string): { text: string; count: number } {
  let text = "";
  let count = 0;
  let i = 0;
  while (i < sql.length) {
    const end = endOfQuotedOrComment(sql, i);
    if (end > i) {
      text += sql.slice(i, end);
      i = end;
    } else if (sql[i] === "?") {
      text += `$${++count}`;
      i++;
    } else {
      text += sql[i];
      i++;
    }
  }
  return { text, count };
}

/** Where the literal, quoted identifier or comment starting at i ends; i itself when none starts
 *  there. An unterminated one runs to the end (the server then refuses the statement). */
function endOfQuotedOrComment(sql: string, i: number): number {
  const c = sql[i];
  if (c === "'" || c === '"') {
    let j = i + 1;
    for (;;) {
      const close = sql.indexOf(c, j);
      if (close < 0) return sql.length;
      if (sql[close + 1] !== c) return close + 1;
      j = close + 2; // a doubled quote stands for one quote character
    }
  }
  if (c === "-" && sql[i + 1] === "-") {
    const eol = sql.indexOf("\n", i + 2);
    return eol < 0 ? sql.length : eol + 1;
  }
  if (c === "/" && sql[i + 1] === "*") {
    const close = sql.indexOf("*/", i + 2);
    return close < 0 ? sql.length : close + 2;
  }
  return i;
}

/** The registry's statements are a fixed set, each translated once; the bound only keeps statements
 *  built on the fly (an IN list of varying length) from growing it without end. */
const translations = new Map<string, { text: string; count: number; name?: string }>();
const MAX_TRANSLATIONS = 1000;

/** Statements prepared by name on each connection (parsed and planned once per connection, not per
 *  call: most of what a short statement costs the server). Names are never reused for another text,
 *  and only the first MAX_PREPARED texts get one, so a connection holds a bounded set. A `SELECT *` is
 *  not prepared: a column added by a newer instance's migration would change its result type, which
 *  PostgreSQL refuses for a prepared statement ("cached plan must not change result type"). */
const preparedNames = new Map<string, string>();
const MAX_PREPARED = 256;

function translated(sql: string): { text: string; count: number; name?: string } {
  let t = translations.get(sql);
  if (!t) {
    if (translations.size >= MAX_TRANSLATIONS) translations.clear();
    t = numberPlaceholders(sql);
    let name = preparedNames.get(t.text);
    if (name === undefined && preparedNames.size < MAX_PREPARED && !/\bSELECT\s+\*/i.test(t.text)) {
      name = `kp_${preparedNames.size}`;
      preparedNames.set(t.text, name);
    }
    if (name !== undefined) t = { ...t, name };
    translations.set(sql, t);
  }
  return t;
}

/** The statement as pg takes it, or a DatabaseError before anything is sent: a wrong number of
 *  values would otherwise bind a value to the wrong column, or fail on the server mid-transaction. */
function statement(sql: string, params: readonly SqlValue[]): pg.QueryConfig {
  const { text, count, name } = translated(sql);
  if (count !== params.length) {
    throw new DatabaseError(`this statement has ${count} ? placeholder(s) but was given ${params.length} value(s), so it was not run: ${sql.slice(0, 120)}`);
  }
  // 'extended' even without values: one statement per call, as SQLite's prepare() allows.
  return { text, values: params.map(toParam), queryMode: "extended", ...(name === undefined ? {} : { name }) } as pg.QueryConfig;
}

function toParam(v: SqlValue, index: number): unknown {
  if (v === null || typeof v === "string") return v;
  if (typeof v === "number") {
    if (!Number.isFinite(v) || (Number.isInteger(v) && !Number.isSafeInteger(v))) {
      throw new DatabaseError(`value $${index + 1} (${v}) is not a finite number within 2^53: not sent, it would not be stored exactly`);
    }
    return v;
  }
  if (v instanceof Uint8Array) return Buffer.isBuffer(v) ? v : Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  throw new DatabaseError(`value $${index + 1} is a ${v === undefined ? "undefined" : typeof v}, not text, a number, bytes or null: the statement was not run`);
}

// ---------------------------------------------------------------------------------------------
// Values coming back

/** A whole number as a JS number, or a DatabaseError: a counter past 2^53 rounded to a neighbour
 *  would let a replayed counter pass or refuse a fresh one. */
function exactNumber(text: string): number {
  const n = Number(text);
  const integral = /^-?\d+$/.test(text);
  if ((integral && !Number.isSafeInteger(n)) || !Number.isFinite(n) || Math.abs(n) > Number.MAX_SAFE_INTEGER) {
    throw new DatabaseError(`the database returned ${text}, beyond what a JS number holds exactly (2^53 - 1): refused rather than rounded`);
  }
  return n;
}

/** bytea in either output format: hex (`\x0a0b`, the default since PostgreSQL 9.0) or escape. */
function bytea(text: string): Buffer {
  if (text.startsWith("\\x")) return Buffer.from(text.slice(2), "hex");
  const out: number[] = [];
  for (let i = 0; i < text.length; i++) {
    if (text[i] !== "\\") out.push(text.charCodeAt(i));
    else if (text[i + 1] === "\\") out.push(0x5c), i++;
    else out.push(parseInt(text.slice(i + 1, i + 4), 8)), (i += 3);
  }
  return Buffer.from(out);
}

const OID = { bool: 16, bytea: 17, int8: 20, int2: 21, int4: 23, oid: 26, float4: 700, float8: 701, numeric: 1700 } as const;

const PARSERS: Record<number, (text: string) => SqlValue> = {
  [OID.bool]: (t) => (t === "t" ? 1 : 0), // SQLite's booleans are 1 and 0: a comparison reads the same on both
  [OID.bytea]: bytea,
  [OID.int8]: exactNumber,
  [OID.numeric]: exactNumber, // SUM() of BIGINTs is NUMERIC
  [OID.int2]: Number,
  [OID.int4]: Number,
  [OID.oid]: Number,
  [OID.float4]: Number,
  [OID.float8]: Number,
};
const asText = (t: string): string => t;

/** This pool's own parsers: pg's global `types` (which another library in the process may set, or
 *  expect untouched) is neither read nor changed. */
const REGISTRY_TYPES = {
  getTypeParser: (oid: number, format?: string) => (format === "binary" ? (b: Buffer) => b : (PARSERS[oid] ?? asText)),
} as unknown as pg.CustomTypesConfig;

const WRITES = new Set(["INSERT", "UPDATE", "DELETE", "MERGE"]);

function result(r: pg.QueryResult): SqlResult {
  // pg's rowCount also counts the rows a SELECT returned; SqlResult.changes counts only rows written.
  return { rows: r.rows as SqlRow[], changes: WRITES.has(r.command) ? (r.rowCount ?? 0) : 0 };
}

// ---------------------------------------------------------------------------------------------
// Which server, said without the password

interface Server {
  /** `PostgreSQL at host:port, database "db" as "user"`: for every message. */
  name: string;
  password: string;
}

function describe(url: string): Server {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new DatabaseError("the database URL is not a URL: write postgres://user:password@host:port/database (the URL itself is not repeated here: it may hold a password)");
  }
  if (u.protocol !== "postgres:" && u.protocol !== "postgresql:") {
    throw new DatabaseError(`the database URL starts with ${u.protocol}//, not postgres:// or postgresql://`);
  }
  const host = u.searchParams.get("host") ?? (u.hostname || "localhost");
  const port = u.port || u.searchParams.get("port") || "5432";
  const user = decoded(u.username, "user name");
  const database = decoded(u.pathname.slice(1), "database name") || user;
  const name = `PostgreSQL at ${host}:${port}, database "${database}"${user ? ` as "${user}"` : ""}`;
  return { name, password: decoded(u.password, "password") };
}

/** A percent-encoded part of the URL; a stray % is refused without quoting the part. */
function decoded(part: string, what: string): string {
  try {
    return decodeURIComponent(part);
  } catch {
    throw new DatabaseError(`the database URL's ${what} has a % that is not followed by two hex digits: write a % in it as %25`);
  }
}

/** The text with the password (raw and percent-encoded) blotted out, in case a message quotes it. */
function redact(server: Server, text: string): string {
  if (!server.password) return text;
  let out = text;
  for (const form of new Set([server.password, encodeURIComponent(server.password)])) out = out.split(form).join("***");
  return out;
}

/** What to check, from the reason the connection failed. */
function advice(e: { code?: string }): string {
  switch (e.code) {
    case "ECONNREFUSED":
      return "Is PostgreSQL running and listening on that host and port (pg_lsclusters; listen_addresses in postgresql.conf)?";
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return "Is the host name in the URL right?";
    case "28P01":
    case "28000":
      return "Check the role and password in the URL, and pg_hba.conf's line for this client.";
    case "3D000":
      return "Create the database, owned by the gateway's role: createdb -O <role> <database>.";
    default:
      return "Is PostgreSQL running there, and is the URL right (postgres://user:password@host:port/database)?";
  }
}

function reasonOf(e: unknown): { message: string; code?: string } {
  const err = e as { message?: string; code?: string };
  return { message: String(err?.message ?? e), code: typeof err?.code === "string" ? err.code : undefined };
}

/** Connecting failed: a fresh error (pg's own is not kept as the cause: nothing of it can carry the
 *  password along into a log). */
function unreachable(server: Server, e: unknown): DatabaseError {
  const r = reasonOf(e);
  return new DatabaseError(redact(server, `cannot connect to ${server.name}: ${r.message}${r.code ? ` (${r.code})` : ""}. ${advice(r)}`));
}

function connectionLost(server: Server, e: unknown): DatabaseError {
  const r = reasonOf(e);
  return new DatabaseError(redact(server, `lost the connection to ${server.name}: ${r.message}. ${advice(r)}`));
}

/** An error the server gave for a statement (with its SQLSTATE code: the store reads 23505, a unique
 *  violation), or one of ours: passed on as it is. Anything else came from the connection. */
function isStatementError(e: unknown): boolean {
  return e instanceof pg.DatabaseError || e instanceof DatabaseError;
}

// ---------------------------------------------------------------------------------------------
// A client borrowed from the pool

class Lease {
  /** The connection broke: the client goes back with this error, so the pool drops it. */
  lost: Error | undefined;
  savepoints = 0;
  private readonly onError = (e: Error) => (this.lost ??= e);

  constructor(
    readonly client: pg.PoolClient,
    private readonly server: Server,
  ) {
    // A checked-out client's 'error' event has no other listener: unheard, it would end the process.
    client.on("error", this.onError);
  }

  async send(q: string | pg.QueryConfig): Promise<pg.QueryResult> {
    try {
      return await this.client.query(q);
    } catch (e) {
      if (isStatementError(e)) throw e;
      this.lost ??= e as Error;
      throw connectionLost(this.server, e);
    }
  }

  /** Ends the transaction under way; a client that cannot is broken and is dropped. Never throws:
   *  the caller passes on the error that brought it here. */
  async rollback(): Promise<void> {
    if (this.lost) return;
    try {
      await this.client.query("ROLLBACK");
    } catch (e) {
      this.lost ??= e as Error;
    }
  }

  release(): void {
    this.client.off("error", this.onError);
    this.client.release(this.lost);
  }
}

// ---------------------------------------------------------------------------------------------
// The connection

export class PostgresConnection implements SqlConnection {
  readonly engine = "postgres" as const;
  // Private (#): util.inspect of the connection shows neither the pool nor its URL and password.
  readonly #pool: pg.Pool;
  readonly #server: Server;
  readonly #underWay = new Set<Promise<unknown>>();
  #closing: Promise<void> | undefined;

  constructor(pool: pg.Pool, server: Server) {
    this.#pool = pool;
    this.#server = server;
  }

  get closed(): boolean {
    return this.#closing !== undefined;
  }

  async query(sql: string, params: readonly SqlValue[] = []): Promise<SqlResult> {
    const q = statement(sql, params);
    return this.#withLease(async (lease) => result(await lease.send(q)));
  }

  async exec(sql: string): Promise<void> {
    // Without values pg uses the simple query protocol, which takes several statements.
    await this.#withLease((lease) => lease.send(sql));
  }

  transaction<T>(fn: (tx: SqlConnection) => Promise<T>, opts: TransactionOptions = {}): Promise<T> {
    return this.#withLease(async (lease) => {
      // Only this transaction's commit skips the wait for the WAL flush; others stay durable. One
      // round trip either way (the simple protocol takes both statements at once).
      await lease.send(opts.durable === false ? "BEGIN; SET LOCAL synchronous_commit TO OFF" : "BEGIN");
      const tx = new PostgresTransaction(lease, this.#server);
      let value: T;
      try {
        value = await fn(tx);
      } catch (e) {
        tx.end();
        await lease.rollback();
        throw e;
      }
      tx.end();
      let commit: pg.QueryResult;
      try {
        commit = await lease.send("COMMIT");
      } catch (e) {
        await lease.rollback();
        throw e;
      }
      // After a failed statement PostgreSQL answers COMMIT with ROLLBACK, and no error: fn caught
      // that statement's error and went on, but nothing of fn was kept.
      if (commit.command === "ROLLBACK") {
        throw new DatabaseError(`the transaction was rolled back, not committed: one of its statements failed (and its error was caught) on ${this.#server.name}`);
      }
      return value;
    });
  }

  /** Waits for the statements and transactions under way, then closes every connection. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      while (this.#underWay.size) await Promise.allSettled([...this.#underWay]);
      await this.#pool.end();
    })();
    return this.#closing;
  }

  #withLease<T>(use: (lease: Lease) => Promise<T>): Promise<T> {
    if (this.#closing) {
      return Promise.reject(new DatabaseError(`the connection to ${this.#server.name} is closed: the statement was not run`));
    }
    const work = (async () => {
      const lease = new Lease(await this.#connect(), this.#server);
      try {
        return await use(lease);
      } finally {
        lease.release();
      }
    })();
    this.#underWay.add(work);
    void work.then(
      () => this.#underWay.delete(work),
      () => this.#underWay.delete(work),
    );
    return work;
  }

  async #connect(): Promise<pg.PoolClient> {
    try {
      return await this.#pool.connect();
    } catch (e) {
      throw unreachable(this.#server, e);
    }
  }
}

/** The transaction's view: its statements run on its own client; a nested transaction is a
 *  savepoint. Once the transaction has ended it refuses everything (its client may by then serve
 *  someone else). */
class PostgresTransaction implements SqlConnection {
  readonly engine = "postgres" as const;
  #ended = false;

  constructor(
    private readonly lease: Lease,
    private readonly server: Server,
  ) {}

  get closed(): boolean {
    return this.#ended;
  }

  end(): void {
    this.#ended = true;
  }

  async query(sql: string, params: readonly SqlValue[] = []): Promise<SqlResult> {
    const q = statement(sql, params);
    this.#refuseIfEnded();
    return result(await this.lease.send(q));
  }

  async exec(sql: string): Promise<void> {
    this.#refuseIfEnded();
    await this.lease.send(sql);
  }

  async transaction<T>(fn: (tx: SqlConnection) => Promise<T>): Promise<T> {
    this.#refuseIfEnded();
    const savepoint = `kp_sp${++this.lease.savepoints}`;
    await this.lease.send(`SAVEPOINT ${savepoint}`);
    let value: T;
    try {
      value = await fn(this);
    } catch (e) {
      // Undo fn's statements only; the transaction goes on. Should even this fail, the outer
      // transaction's COMMIT finds it aborted and says so.
      if (!this.lease.lost) {
        try {
          await this.lease.send(`ROLLBACK TO SAVEPOINT ${savepoint}`);
          await this.lease.send(`RELEASE SAVEPOINT ${savepoint}`);
        } catch {
          /* fn's error is the one to pass on */
        }
      }
      throw e;
    }
    await this.lease.send(`RELEASE SAVEPOINT ${savepoint}`);
    return value;
  }

  async close(): Promise<void> {
    throw new DatabaseError("a transaction cannot close its connection");
  }

  #refuseIfEnded(): void {
    if (this.#ended) throw new DatabaseError(`this transaction on ${this.server.name} has ended: the statement was not run`);
  }
}

/** Opens a pool on the PostgreSQL database the URL names, and checks at once that the server answers
 *  (a wrong URL fails the gateway's start, not its first handset). */
export async function openPostgres(url: string, opts: PostgresOptions = {}): Promise<PostgresConnection> {
  const server = describe(url);
  const poolSize = opts.poolSize ?? 10;
  if (!Number.isInteger(poolSize) || poolSize < 1) throw new DatabaseError(`the pool size must be a whole number of at least 1, not ${poolSize}`);
  const pool = new pg.Pool({
    connectionString: url,
    max: poolSize,
    types: REGISTRY_TYPES,
    connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
    keepAlive: true,
    ...(opts.relaxedCommits ? { options: "-c synchronous_commit=off" } : {}),
  });
  // An idle client whose connection breaks is reported here and dropped by the pool; without a
  // listener the 'error' event would end the process.
  pool.on("error", (e) => opts.onConnectionLost?.(redact(server, reasonOf(e).message)));
  const conn = new PostgresConnection(pool, server);
  try {
    await conn.query("SELECT 1");
  } catch (e) {
    await conn.close().catch(() => {});
    throw e;
  }
  return conn;
}
