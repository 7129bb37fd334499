// The registry's PostgreSQL engine (gateway/registry/postgres-engine.ts) against a real server, in a
// database of this file's own (test/support/postgres.ts: KEYPROXY_TEST_POSTGRES_URL's server, which
// .ci/run starts, else a throwaway cluster): `?` placeholders, every value type there and back,
// changes, transactions and savepoints, the pool, the join-counter race between two instances, and
// what its errors say (never the password). Without PostgreSQL the file is skipped with the reason;
// with CI=true it fails.
import assert from "node:assert/strict";
import net from "node:net";
import { after, before, describe, test, type TestContext } from "node:test";
import { inspect } from "node:util";
import fc from "fast-check";
import pg from "pg";
import { numberPlaceholders, openPostgres, type PostgresConnection } from "../gateway/registry/postgres-engine.ts";
import { DatabaseError, type SqlConnection, type SqlValue } from "../gateway/registry/sql.ts";
import { testDatabase, type TestDatabase } from "./support/postgres.ts";

// ---------------------------------------------------------------------------------------------
// The placeholder translation alone (no server)

test("? becomes $1..$n in order, except inside '...' literals, \"...\" identifiers and comments", () => {
  const cases: [string, string, number][] = [
    ["SELECT ?, ?", "SELECT $1, $2", 2],
    ["SELECT '?', ?", "SELECT '?', $1", 1],
    [`SELECT "a?b" FROM t WHERE x = ?`, `SELECT "a?b" FROM t WHERE x = $1`, 1],
    ["SELECT 'it''s ?', ?", "SELECT 'it''s ?', $1", 1],
    [`SELECT "say ""?""", ?`, `SELECT "say ""?""", $1`, 1],
    ["SELECT ? -- why?\n, ?", "SELECT $1 -- why?\n, $2", 2],
    ["SELECT /* ? */ ?", "SELECT /* ? */ $1", 1],
    ["SELECT 'unterminated ?", "SELECT 'unterminated ?", 0],
    ["", "", 0],
  ];
  for (const [sql, text, count] of cases) assert.deepEqual(numberPlaceholders(sql), { text, count }, sql);
});

/** A piece of a statement and what it becomes: a placeholder, a literal, an identifier, a comment or
 *  plain text, each possibly holding ?s and quotes. */
type Piece = { kind: "param" } | { kind: "text"; sql: string };
const inside = fc.string({ unit: fc.constantFrom("a", " ", "?", "'", '"', "-", "*", "/", "é", "\n"), maxLength: 12 });
const piece: fc.Arbitrary<Piece> = fc.oneof(
  fc.constant<Piece>({ kind: "param" }),
  inside.map((s): Piece => ({ kind: "text", sql: `'${s.replaceAll("'", "''")}'` })),
  inside.map((s): Piece => ({ kind: "text", sql: `"${s.replaceAll('"', '""')}"` })),
  inside.map((s): Piece => ({ kind: "text", sql: `-- ${s.replaceAll("\n", " ")}\n` })),
  inside.map((s): Piece => ({ kind: "text", sql: `/* ${s.replaceAll("*/", "* /")} */` })),
  fc.string({ unit: fc.constantFrom("a", "1", " ", ",", "(", ")", "=", "<", "+"), maxLength: 6 }).map((sql): Piece => ({ kind: "text", sql })),
);

test("property: any mix of literals, identifiers, comments and ?s numbers exactly the ?s outside them", () => {
  fc.assert(
    fc.property(fc.array(piece, { maxLength: 20 }), (pieces) => {
      let n = 0;
      const sql = pieces.map((p) => (p.kind === "param" ? "?" : p.sql)).join("");
      const text = pieces.map((p) => (p.kind === "param" ? `$${++n}` : p.sql)).join("");
      assert.deepEqual(numberPlaceholders(sql), { text, count: n });
    }),
    { numRuns: 2000 },
  );
});

// ---------------------------------------------------------------------------------------------
// Against a server

// With CI=true and no server this throws: the file then reports it as a failed test.
const db = await testDatabase().catch((e: Error) => e);

if (db instanceof Error) {
  test("the PostgreSQL engine against a real server", () => {
    throw db;
  });
} else if (!db) {
  test("the PostgreSQL engine against a real server", async (t) => {
    await testDatabase(t); // skips with the reason (or, with CI=true, has already failed)
  });
} else {
  engineSuite(db);
}

/** A loopback port nobody listens on. */
async function deadPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((resolve) => s.listen(0, "127.0.0.1", resolve));
  const { port } = s.address() as net.AddressInfo;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

/** The promise and the function that settles it: to wait for an event instead of sleeping. */
function signal<T = void>(): { promise: Promise<T>; fire: (v: T) => void } {
  let fire!: (v: T) => void;
  const promise = new Promise<T>((r) => (fire = r));
  return { promise, fire };
}

function engineSuite(db: TestDatabase): void {
  let conn: PostgresConnection;
  /** A second instance on the same database, as another gateway process would have. */
  let other: PostgresConnection;

  before(async () => {
    conn = await openPostgres(db.url, { poolSize: 4 });
    other = await openPostgres(db.url, { poolSize: 4 });
  });
  after(async () => {
    await conn?.close();
    await other?.close();
    await db.drop();
  });

  /** A fresh table of this test's own. */
  async function table(t: TestContext, columns: string): Promise<string> {
    const name = `t_${t.name.replace(/[^a-z0-9]+/gi, "_").slice(0, 40).toLowerCase()}_${Math.random().toString(36).slice(2, 8)}`;
    await conn.exec(`CREATE TABLE ${name} (${columns})`);
    return name;
  }

  const count = async (c: SqlConnection, tbl: string): Promise<number> => Number((await c.query(`SELECT COUNT(*) AS n FROM ${tbl}`)).rows[0].n);

  describe("placeholders", () => {
    test("a ? in a literal or a quoted identifier is not a placeholder", async (t) => {
      const tbl = await table(t, `id INTEGER PRIMARY KEY, "what?" TEXT`);
      await conn.query(`INSERT INTO ${tbl} (id, "what?") VALUES (?, ?)`, [1, "a"]);
      const r = await conn.query(`SELECT '?' AS lit, 'it''s ?' AS quoted, "what?" AS col, ? AS param FROM ${tbl} WHERE id = ?`, ["p", 1]);
      assert.deepEqual(r.rows, [{ lit: "?", quoted: "it's ?", col: "a", param: "p" }]);
    });

    test("the wrong number of values is refused before the statement is sent: a transaction goes on", async (t) => {
      const tbl = await table(t, "id INTEGER PRIMARY KEY, v TEXT");
      await conn.transaction(async (tx) => {
        await assert.rejects(tx.query(`INSERT INTO ${tbl} VALUES (?, ?)`, [1]), (e) => e instanceof DatabaseError && /2 \? placeholder\(s\) but was given 1 value/.test(e.message));
        await assert.rejects(tx.query(`INSERT INTO ${tbl} VALUES (?, ?)`, [1, "a", "b"]), (e) => e instanceof DatabaseError && /given 3 value/.test(e.message));
        // Had either reached the server, the transaction would now be aborted and this would fail.
        await tx.query(`INSERT INTO ${tbl} VALUES (?, ?)`, [2, "kept"]);
      });
      assert.deepEqual((await conn.query(`SELECT id, v FROM ${tbl}`)).rows, [{ id: 2, v: "kept" }]);
    });

    test("property: the server reads back exactly the literals and the values, wherever the ?s fall", async () => {
      const literal = fc.string({ unit: fc.constantFrom("a", "?", "'", '"', " ", "é", "$", "1"), maxLength: 8 });
      const column = fc.oneof(literal.map((s) => ({ literal: s })), literal.map((s) => ({ value: s })));
      await fc.assert(
        fc.asyncProperty(fc.array(column, { minLength: 1, maxLength: 6 }), async (columns) => {
          const select = columns.map((c, i) => ("literal" in c ? `'${c.literal.replaceAll("'", "''")}'` : "?::text") + ` AS "c${i}?"`);
          const params = columns.flatMap((c) => ("value" in c ? [c.value] : []));
          const r = await conn.query(`SELECT ${select.join(", ")}`, params);
          const expected = Object.fromEntries(columns.map((c, i) => [`c${i}?`, "literal" in c ? c.literal : c.value]));
          assert.deepEqual(r.rows, [expected]);
        }),
        { numRuns: 40 },
      );
    });

    test("query() runs one statement (as SQLite's prepare does); exec() runs several", async (t) => {
      const tbl = await table(t, "id INTEGER");
      await assert.rejects(conn.query(`INSERT INTO ${tbl} VALUES (1); INSERT INTO ${tbl} VALUES (2)`), (e: { code?: string }) => e.code === "42601");
      await conn.exec(`INSERT INTO ${tbl} VALUES (1); INSERT INTO ${tbl} VALUES (2);`);
      assert.equal(await count(conn, tbl), 2);
    });
  });

  describe("values", () => {
    test("bytes (with 0x00), a 2^53-1 integer, null, unicode text and booleans go there and back", async (t) => {
      const tbl = await table(t, "id BIGINT PRIMARY KEY, b BYTEA, n BIGINT, s TEXT, i INTEGER, f DOUBLE PRECISION");
      const bytes = new Uint8Array([0x00, 0xff, 0x00, 0x5c, 0x27, 0x01, 0x00]); // a Uint8Array, not a Buffer
      const text = "é 日本 👋🏽 \u0301 ' \" \\ ?";
      await conn.query(`INSERT INTO ${tbl} (id, b, n, s, i, f) VALUES (?, ?, ?, ?, ?, ?)`, [1, bytes, Number.MAX_SAFE_INTEGER, text, -7, 0.5]);
      await conn.query(`INSERT INTO ${tbl} (id, b, n, s, i, f) VALUES (?, ?, ?, ?, ?, ?)`, [2, null, -Number.MAX_SAFE_INTEGER, null, null, null]);
      await conn.query(`INSERT INTO ${tbl} (id, b) VALUES (?, ?)`, [3, new Uint8Array(0)]);
      const rows = (await conn.query(`SELECT id, b, n, s, i, f, n > 0 AS positive FROM ${tbl} ORDER BY id`)).rows;
      assert.ok(Buffer.isBuffer(rows[0].b), "bytea comes back as a Buffer");
      assert.deepEqual([...(rows[0].b as Buffer)], [...bytes]);
      assert.deepEqual(rows[0], { id: 1, b: rows[0].b, n: Number.MAX_SAFE_INTEGER, s: text, i: -7, f: 0.5, positive: 1 });
      assert.deepEqual(rows[1], { id: 2, b: null, n: -Number.MAX_SAFE_INTEGER, s: null, i: null, f: null, positive: 0 });
      assert.deepEqual(rows[2].b, Buffer.alloc(0));
    });

    test("a BIGINT or NUMERIC beyond 2^53 is refused, never rounded; COUNT and SUM within come back as numbers", async (t) => {
      const tbl = await table(t, "id INTEGER PRIMARY KEY, n BIGINT");
      await conn.exec(`INSERT INTO ${tbl} VALUES (1, 9007199254740992), (2, 4), (3, 5)`); // 2^53: one past the last exact
      await assert.rejects(conn.query(`SELECT n FROM ${tbl} WHERE id = 1`), (e) => e instanceof DatabaseError && /9007199254740992.*refused rather than rounded/.test(e.message));
      await assert.rejects(conn.query(`SELECT SUM(n) AS s FROM ${tbl}`), (e) => e instanceof DatabaseError && /9007199254741001/.test(e.message));
      await assert.rejects(conn.query(`SELECT -n AS m FROM ${tbl} WHERE id = 1`), DatabaseError);
      const r = await conn.query(`SELECT COUNT(*) AS c, SUM(n) AS s FROM ${tbl} WHERE id > 1`);
      assert.deepEqual(r.rows, [{ c: 2, s: 9 }]);
      // The pool is still good after a refused row.
      assert.deepEqual((await conn.query("SELECT 1 AS one")).rows, [{ one: 1 }]);
    });

    test("the engine's parsers are its pool's own: pg's global types, and another user of pg, are untouched", async () => {
      assert.equal(pg.types.getTypeParser(20, "text")("9007199254740993"), "9007199254740993", "pg's global BIGINT parser still gives text");
      const plain = new pg.Client({ connectionString: db.url });
      await plain.connect();
      try {
        const r = await plain.query("SELECT 9007199254740993::bigint AS big, true AS yes");
        assert.deepEqual(r.rows, [{ big: "9007199254740993", yes: true }]);
      } finally {
        await plain.end();
      }
    });

    test("a value that would not be stored exactly, or is not a SqlValue, is refused before it is sent", async (t) => {
      const tbl = await table(t, "n BIGINT");
      for (const bad of [2 ** 53, Number.NaN, Number.POSITIVE_INFINITY, undefined, true, {}] as unknown[]) {
        await assert.rejects(conn.query(`INSERT INTO ${tbl} VALUES (?)`, [bad as number]), DatabaseError, String(bad));
      }
      assert.equal(await count(conn, tbl), 0);
    });

    test("changes counts rows inserted, updated or deleted; a SELECT changes nothing", async (t) => {
      const tbl = await table(t, "id INTEGER PRIMARY KEY, v INTEGER");
      assert.equal((await conn.query(`INSERT INTO ${tbl} VALUES (?, ?)`, [1, 0])).changes, 1);
      assert.equal((await conn.query(`INSERT INTO ${tbl} VALUES (?, ?), (?, ?), (?, ?)`, [2, 0, 3, 1, 4, 1])).changes, 3);
      assert.equal((await conn.query(`UPDATE ${tbl} SET v = ? WHERE v = ?`, [5, 1])).changes, 2);
      assert.equal((await conn.query(`UPDATE ${tbl} SET v = ? WHERE id = ?`, [5, 99])).changes, 0);
      assert.equal((await conn.query(`INSERT INTO ${tbl} VALUES (?, ?) ON CONFLICT (id) DO NOTHING`, [1, 9])).changes, 0);
      const sel = await conn.query(`SELECT id FROM ${tbl}`);
      assert.equal(sel.rows.length, 4);
      assert.equal(sel.changes, 0);
      assert.equal((await conn.query(`DELETE FROM ${tbl} WHERE v = ?`, [0])).changes, 2);
    });

    test("a statement error is pg's own, its SQLSTATE code readable (23505: the store maps unique violations)", async (t) => {
      const tbl = await table(t, "id INTEGER PRIMARY KEY");
      await conn.query(`INSERT INTO ${tbl} VALUES (?)`, [1]);
      await assert.rejects(conn.query(`INSERT INTO ${tbl} VALUES (?)`, [1]), (e) => e instanceof pg.DatabaseError && e.code === "23505");
    });
  });

  describe("transactions", () => {
    test("commit keeps every statement; a throw rolls all back and passes fn's error on", async (t) => {
      const tbl = await table(t, "id INTEGER PRIMARY KEY");
      const value = await conn.transaction(async (tx) => {
        await tx.query(`INSERT INTO ${tbl} VALUES (?)`, [1]);
        await tx.query(`INSERT INTO ${tbl} VALUES (?)`, [2]);
        return "done";
      });
      assert.equal(value, "done");
      const boom = new Error("fn failed");
      await assert.rejects(
        conn.transaction(async (tx) => {
          await tx.query(`INSERT INTO ${tbl} VALUES (?)`, [3]);
          throw boom;
        }),
        (e) => e === boom,
      );
      assert.deepEqual((await conn.query(`SELECT id FROM ${tbl} ORDER BY id`)).rows, [{ id: 1 }, { id: 2 }]);
    });

    test("a nested transaction is a savepoint: its rollback undoes only its own statements", async (t) => {
      const tbl = await table(t, "id INTEGER PRIMARY KEY");
      await conn.transaction(async (tx) => {
        await tx.query(`INSERT INTO ${tbl} VALUES (?)`, [1]);
        await assert.rejects(
          tx.transaction(async (inner) => {
            await inner.query(`INSERT INTO ${tbl} VALUES (?)`, [2]);
            await inner.query(`INSERT INTO ${tbl} VALUES (?)`, [1]); // unique violation: this savepoint is aborted
          }),
          (e: { code?: string }) => e.code === "23505",
        );
        await tx.transaction(async (inner) => {
          await inner.query(`INSERT INTO ${tbl} VALUES (?)`, [3]);
        });
        await tx.query(`INSERT INTO ${tbl} VALUES (?)`, [4]);
      });
      assert.deepEqual((await conn.query(`SELECT id FROM ${tbl} ORDER BY id`)).rows, [{ id: 1 }, { id: 3 }, { id: 4 }]);
    });

    test("a statement error caught inside fn does not pass for a commit: the transaction is refused, nothing kept", async (t) => {
      const tbl = await table(t, "id INTEGER PRIMARY KEY");
      await assert.rejects(
        conn.transaction(async (tx) => {
          await tx.query(`INSERT INTO ${tbl} VALUES (?)`, [1]);
          await tx.query(`INSERT INTO ${tbl} VALUES (?)`, [1]).catch(() => {});
        }),
        (e) => e instanceof DatabaseError && /rolled back, not committed/.test(e.message),
      );
      assert.equal(await count(conn, tbl), 0);
    });

    test("durable: false commits, with synchronous_commit off for that transaction only", async (t) => {
      const tbl = await table(t, "id INTEGER PRIMARY KEY");
      const setting = await conn.transaction(
        async (tx) => {
          await tx.query(`INSERT INTO ${tbl} VALUES (?)`, [1]);
          return (await tx.query("SHOW synchronous_commit")).rows[0].synchronous_commit;
        },
        { durable: false },
      );
      assert.equal(setting, "off");
      assert.equal(await count(other, tbl), 1, "committed: another connection sees it");
      const after = await conn.transaction(async (tx) => (await tx.query("SHOW synchronous_commit")).rows[0].synchronous_commit);
      assert.equal(after, "on", "the next transaction on the pool is durable again");
    });

    test("two transactions run at once on separate clients; a statement from outside never slips into one", { timeout: 60_000 }, async (t) => {
      const tbl = await table(t, "id INTEGER PRIMARY KEY");
      const aInserted = signal();
      const bDone = signal();
      const a = conn.transaction(async (tx) => {
        await tx.query(`INSERT INTO ${tbl} VALUES (?)`, [1]);
        aInserted.fire();
        await bDone.promise; // A stays open until B has committed: on one shared client this never returns
        return (await tx.query("SELECT pg_backend_pid() AS pid")).rows[0].pid;
      });
      await aInserted.promise;
      const b = await conn.transaction(async (tx) => {
        await tx.query(`INSERT INTO ${tbl} VALUES (?)`, [2]);
        return (await tx.query("SELECT pg_backend_pid() AS pid")).rows[0].pid;
      });
      assert.deepEqual((await conn.query(`SELECT id FROM ${tbl} ORDER BY id`)).rows, [{ id: 2 }], "outside A, A's row is not seen before A commits");
      bDone.fire();
      const aPid = await a;
      assert.notEqual(aPid, b, "two backends");
      assert.equal(await count(conn, tbl), 2);
    });

    test("a transaction's handle used after it ended is refused (its client may serve someone else by then)", async (t) => {
      const tbl = await table(t, "id INTEGER");
      let kept!: SqlConnection;
      await conn.transaction(async (tx) => {
        kept = tx;
      });
      assert.equal(kept.closed, true);
      await assert.rejects(kept.query(`INSERT INTO ${tbl} VALUES (?)`, [1]), (e) => e instanceof DatabaseError && /has ended/.test(e.message));
      await assert.rejects(kept.close(), DatabaseError);
      assert.equal(await count(conn, tbl), 0);
    });
  });

  test("the join-counter race: 20 concurrent UPDATE ... WHERE c < ? from two instances, exactly one wins", async (t) => {
    const tbl = await table(t, "id INTEGER PRIMARY KEY, c BIGINT NOT NULL");
    for (let round = 1; round <= 5; round++) {
      await conn.query(`INSERT INTO ${tbl} VALUES (?, ?)`, [round, 0]);
      const counter = 1000 + round;
      const tries = Array.from({ length: 20 }, (_, i) => (i % 2 ? other : conn).query(`UPDATE ${tbl} SET c = ? WHERE id = ? AND c < ?`, [counter, round, counter]));
      const changes = (await Promise.all(tries)).map((r) => r.changes);
      assert.equal(changes.filter((c) => c === 1).length, 1, `round ${round}: exactly one instance accepts counter ${counter} (${changes})`);
      assert.equal(changes.filter((c) => c === 0).length, 19);
      assert.deepEqual((await conn.query(`SELECT c FROM ${tbl} WHERE id = ?`, [round])).rows, [{ c: counter }]);
    }
  });

  describe("connections", () => {
    test("a server that does not answer: DatabaseError naming host, port, database and what to check", async () => {
      const port = await deadPort();
      await assert.rejects(openPostgres(`postgres://keyproxy@127.0.0.1:${port}/registry`), (e) => {
        assert.ok(e instanceof DatabaseError, String(e));
        assert.match(e.message, new RegExp(`PostgreSQL at 127\\.0\\.0\\.1:${port}, database "registry" as "keyproxy"`));
        assert.match(e.message, /ECONNREFUSED/);
        assert.match(e.message, /Is PostgreSQL running/);
        return true;
      });
    });

    test("the password is in no error: not the message, the stack, nor anything inspect shows", async () => {
      const port = await deadPort();
      const secret = "Sup3r-s3cret!";
      const urls = [
        `postgres://keyproxy:${encodeURIComponent(secret)}@127.0.0.1:${port}/registry`,
        `postgresql://keyproxy:${secret}@127.0.0.1:${port}/registry`,
        `postgres://keyproxy:${secret}@127.0.0.1:notaport/registry`,
        `mysql://keyproxy:${secret}@127.0.0.1/registry`,
        `postgres://keyproxy:%zz${secret}@127.0.0.1:${port}/registry`, // a stray % that decodes to nothing
      ];
      for (const url of urls) {
        const e = await openPostgres(url).then(
          () => assert.fail(`${url} opened`),
          (err: unknown) => err,
        );
        assert.ok(e instanceof DatabaseError, `${url}: ${String(e)}`);
        for (const shown of [e.message, String(e.stack), inspect(e, { depth: 10 })]) {
          assert.ok(!shown.includes("Sup3r-s3cret") && !shown.includes("Sup3r%2Ds3cret") && !shown.includes(encodeURIComponent(secret)), `${url} leaked the password: ${shown}`);
        }
      }
    });

    test("a database that does not exist: the error says to create it", async () => {
      const url = new URL(db.url);
      url.pathname = "/kp_test_no_such_database";
      await assert.rejects(openPostgres(url.toString()), (e) => e instanceof DatabaseError && /3D000/.test(e.message) && /createdb -O/.test(e.message));
    });

    test("an idle connection that breaks is reported and dropped; the process lives on and the next query gets a new one", async () => {
      const lost = signal<string>();
      const c = await openPostgres(db.url, { poolSize: 1, onConnectionLost: lost.fire });
      try {
        const pid = (await c.query("SELECT pg_backend_pid() AS pid")).rows[0].pid;
        // Waits (up to 10 s) until the backend is gone.
        assert.deepEqual((await other.query("SELECT pg_terminate_backend(?::integer, 10000) AS gone", [pid])).rows, [{ gone: 1 }]);
        assert.match(await lost.promise, /terminat/i);
        const again = (await c.query("SELECT pg_backend_pid() AS pid")).rows[0].pid;
        assert.notEqual(again, pid);
      } finally {
        await c.close();
      }
    });

    test("a connection that breaks inside a transaction fails it, and the pool drops that client", async () => {
      const c = await openPostgres(db.url, { poolSize: 1 });
      try {
        let pid: SqlValue = null;
        await assert.rejects(
          c.transaction(async (tx) => {
            pid = (await tx.query("SELECT pg_backend_pid() AS pid")).rows[0].pid;
            await other.query("SELECT pg_terminate_backend(?::integer, 10000)", [pid]);
            await tx.query("SELECT 1");
          }),
        );
        const again = (await c.query("SELECT pg_backend_pid() AS pid")).rows[0].pid;
        assert.notEqual(again, pid);
      } finally {
        await c.close();
      }
    });

    test("close waits for what is under way (a transaction, a statement queued for a client), refuses what comes after, and is idempotent", async (t) => {
      const tbl = await table(t, "id INTEGER PRIMARY KEY");
      const c = await openPostgres(db.url, { poolSize: 1 });
      const inside = signal();
      const go = signal();
      const tx = c.transaction(async (tx) => {
        await tx.query(`INSERT INTO ${tbl} VALUES (?)`, [1]);
        inside.fire();
        await go.promise;
        await tx.query(`INSERT INTO ${tbl} VALUES (?)`, [2]);
      });
      await inside.promise;
      // Asked before close, waiting for the one client the transaction holds: it runs too.
      const queued = c.query(`INSERT INTO ${tbl} VALUES (?)`, [3]);
      const closing = c.close();
      assert.equal(c.closed, true);
      await assert.rejects(c.query("SELECT 1"), (e) => e instanceof DatabaseError && /is closed: the statement was not run/.test(e.message));
      await assert.rejects(c.transaction(async () => {}), DatabaseError);
      go.fire();
      await tx;
      assert.equal((await queued).changes, 1);
      await closing;
      await c.close();
      assert.equal(await count(conn, tbl), 3, "the transaction under way committed, and the statement asked before close ran");
    });
  });
}
