// The rows the instances of a domain share about their SAs (gateway/instances/live-table.ts), on both
// engines: an SA across domains keeps in its row what another instance needs to run it on (its side,
// terms, the peer domain's process and the certificates; no key), kp.x.moved changes the peer's
// process, and a takeover hands all of it to the new home. A row whose detail does not decode is one
// the taker ends rather than run on half-known terms.
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import fc from "fast-check";
import * as cbor from "../gateway/encoding/cbor.ts";
import { decodeAcross, encodeAcross, LiveTable, type AcrossDetail, type LiveSession } from "../gateway/instances/live-table.ts";
import { Store } from "../gateway/registry/store.ts";
import { tempDir } from "./support/harness.ts";
import { testDatabase } from "./support/postgres.ts";

const bytes = (n: number, fill: number) => new Uint8Array(n).fill(fill);
const DETAIL: AcrossDetail = { role: 1, lifetime: 3600, limit: 1000, peerInstance: "b2", ownCert: bytes(180, 1), peerCert: bytes(181, 2), peerGatewayCert: bytes(200, 3) };

function row(spi: number, home: string, across?: AcrossDetail): LiveSession {
  return { spi, initiator: "alice", responder: "bob@b.example", app: "chat", suite: 1, expiresAt: 2_000_000_000, up: false, home, ...(across ? { across } : {}) };
}

async function engines(t: import("node:test").TestContext): Promise<{ name: string; open(): Promise<Store>; done(): Promise<void> }[]> {
  const dir = tempDir("kp-live-");
  const out = [{ name: "sqlite", open: () => Store.open(join(dir, "keyproxy.db")), done: async () => {} }];
  const db = await testDatabase(t);
  if (db) out.push({ name: "postgres", open: () => Store.open(db.url, { kekFile: join(dir, "pg.kek") }), done: () => db.drop() });
  return out;
}

test("an SA across domains' row keeps what a taker needs; kp.x.moved changes its peer's process; a takeover hands it on", async (t) => {
  for (const e of await engines(t)) {
    const store = await e.open();
    try {
      const a1 = new LiveTable(store, "a1");
      const a2 = new LiveTable(store, "a2");
      assert.equal(await a1.claim(row(7, "a1", DETAIL)), true, e.name);
      assert.equal(await a2.claim(row(7, "a2", DETAIL)), false, `${e.name}: an SPI is claimed once in the domain`);
      assert.equal(await a1.claim(row(8, "a1")), true, e.name);
      assert.deepEqual((await a1.session(7))?.across, DETAIL, `${e.name}: read back whole`);
      assert.equal((await a1.session(8))?.across, undefined, `${e.name}: an SA inside the domain has none`);
      // Only the home records a move.
      await a2.peerMoved(7, "b9");
      assert.equal((await a1.session(7))?.across?.peerInstance, "b2", `${e.name}: not the home's row to change`);
      await a1.peerMoved(7, "b1");
      assert.equal((await a1.session(7))?.across?.peerInstance, "b1", e.name);
      await a1.markUp(7);
      await a1.markUp(8);
      const taken = await a2.takeOver("a1");
      assert.deepEqual(taken.map((r) => [r.spi, r.home]).sort(), [[7, "a2"], [8, "a2"]], e.name);
      assert.deepEqual(taken.find((r) => r.spi === 7)?.across, { ...DETAIL, peerInstance: "b1" }, `${e.name}: the taker has it all`);
      // A damaged detail reads as none: the taker ends that SA.
      await store.query("UPDATE live_sessions SET across = ? WHERE spi = ?", [new Uint8Array([0x83, 0x01, 0xff]), 7]);
      assert.equal((await a2.session(7))?.across, undefined, e.name);
    } finally {
      await store.close();
      await e.done();
    }
  }
});

test("the detail's codec: what it writes it reads back; anything else is refused, never thrown", () => {
  const cert = fc.uint8Array({ minLength: 1, maxLength: 600 });
  const detail = fc.record({
    role: fc.constantFrom(0 as const, 1 as const), lifetime: fc.integer({ min: 1, max: 2 ** 31 }), limit: fc.integer({ min: 1, max: 2 ** 31 }),
    ownCert: cert, peerCert: cert, peerGatewayCert: cert,
  });
  fc.assert(fc.property(detail, fc.option(fc.constantFrom("b1", "b-2", "x_3"), { nil: undefined }), (d, inst) => {
    const back = decodeAcross(encodeAcross(d), inst ?? null);
    assert.deepEqual(back, inst === undefined ? { ...d } : { ...d, peerInstance: inst });
  }));
  fc.assert(fc.property(fc.uint8Array({ maxLength: 64 }), (raw) => {
    const v = decodeAcross(raw, null);
    if (v !== undefined) assert.deepEqual(decodeAcross(encodeAcross(v), null), v);
  }));
  // A byte flipped in a real detail: a valid detail or none, never an exception.
  const good = encodeAcross(DETAIL);
  fc.assert(fc.property(fc.nat(good.length - 1), fc.integer({ min: 1, max: 255 }), (at, x) => {
    const bad = good.slice();
    bad[at] ^= x;
    decodeAcross(bad, "b2");
  }));
  // Each field's rule.
  const base = [1, 1, 3600, 1000, bytes(1, 1), bytes(1, 2), bytes(1, 3)];
  const variant = (i: number, v: unknown) => cbor.encode(base.map((x, j) => (j === i ? v : x)));
  assert.notEqual(decodeAcross(cbor.encode(base), null), undefined);
  for (const [i, v, why] of [
    [0, 2, "another version"], [1, 2, "a role that is neither side"], [2, 0, "a lifetime of 0"], [3, -1, "a negative limit"],
    [2, 1.5, "a fractional lifetime"], [4, new Uint8Array(0), "an empty certificate"], [5, bytes(4097, 0), "a certificate past 4 KiB"], [6, "x", "text for a certificate"],
  ] as const) assert.equal(decodeAcross(variant(i, v), null), undefined, why);
  assert.equal(decodeAcross(cbor.encode(base.slice(0, 6)), null), undefined, "a field short");
  assert.equal(decodeAcross("not bytes", null), undefined);
  assert.equal(decodeAcross(cbor.encode(base), "")?.peerInstance, undefined, "an empty instance is none");
});

test("PostgreSQL: the live rows' writes skip the wait for the disk on a connection of their own; the registry's do not; prepared statements outlive another instance's migration", async (t) => {
  const db = await testDatabase(t);
  if (!db) return;
  const dir = tempDir("kp-live-pg-");
  const store = await Store.open(db.url, { kekFile: join(dir, "pg.kek") });
  const other = await Store.open(db.url, { kekFile: join(dir, "pg.kek") });
  try {
    const setting = async (q: "query" | "queryRelaxed") => (await store[q]("SELECT current_setting('synchronous_commit') AS v")).rows[0].v;
    assert.equal(await setting("query"), "on", "the registry's statements wait for the disk");
    assert.equal(await setting("queryRelaxed"), "off");
    // In the order called, though nothing waits in between (one connection).
    const table = new LiveTable(store, "a1");
    const writes: Promise<void>[] = [];
    for (let i = 0; i < 50; i++) writes.push(i % 2 === 0 ? table.linked("dev", i) : table.unlinked("dev"));
    writes.push(table.linked("dev", 50));
    await Promise.all(writes);
    assert.deepEqual([...(await table.links())], [["dev", "a1"]], "the last write stands");
    // A device read by a prepared statement, then a column added by another process (a newer
    // instance's migration), then read again: no "cached plan must not change result type".
    await store.addDevice("d1", new Uint8Array(16).fill(7), "puckjs", 1);
    assert.equal((await store.getDevice("d1"))?.board, "puckjs");
    assert.equal((await store.getRegistration("d1")), undefined);
    await other.query("ALTER TABLE devices ADD COLUMN later_column TEXT");
    await other.query("ALTER TABLE registrations ADD COLUMN later_column TEXT");
    assert.equal((await store.getDevice("d1"))?.board, "puckjs");
    assert.equal((await store.getRegistration("d1")), undefined);
    const meta = async () => (await store.query("SELECT * FROM meta WHERE k = ?", ["schema_version"])).rows[0];
    await meta();
    await other.query("ALTER TABLE meta ADD COLUMN later_column TEXT");
    assert.ok(await meta(), "a SELECT * is not prepared, so it takes the new column");
  } finally {
    await store.close();
    await other.close();
    await db.drop();
  }
});
