// Device secrets at rest (issue 12, scope 1; docs/SECURITY.md, "Root keys at rest"): the registry
// stores root keys and identity seeds sealed under a key-encryption key kept outside the database, so
// the database's rows reveal no key without it. Read from the rows themselves, as someone holding a
// copy of the database would.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { copyFileSync, existsSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { KEK_FILE, KekError } from "../gateway/registry/kek.ts";
import { Store } from "../gateway/registry/store.ts";
import { tempDir } from "./support/harness.ts";

const key = () => new Uint8Array(randomBytes(16));
const seed = () => new Uint8Array(randomBytes(32));

/** Every byte string stored in the file, WAL included: what a copy of the database holds. */
function rawRows(file: string): Buffer[] {
  const db = new Database(file, { readonly: true });
  try {
    return (db.prepare("SELECT root_key, identity_seed FROM devices").all() as { root_key: Buffer; identity_seed: Buffer | null }[]).flatMap((r) => [r.root_key, r.identity_seed ?? Buffer.alloc(0)]);
  } finally {
    db.close();
  }
}

test("root keys and identity seeds are sealed in the rows: none readable without the key-encryption key, which is its own owner-only file", () => {
  const dir = tempDir("kp-kek-");
  const file = join(dir, "keyproxy.db");
  const store = new Store(file);
  const [k1, k2, s1] = [key(), key(), seed()];
  store.addDevice("dev-1", k1, "puckjs", 0);
  store.addDevice("dev-2", k2, "puckjs", 0);
  store.setIdentity("dev-1", s1, new Uint8Array(32).fill(7));
  assert.deepEqual(store.getDevice("dev-1")!.rootKey, k1);
  assert.deepEqual(store.getDevice("dev-1")!.identitySeed, s1);
  assert.deepEqual(store.getDevice("dev-2")!.rootKey, k2);
  store.close();

  const rows = rawRows(file);
  for (const secret of [k1, k2, s1]) {
    assert.ok(!rows.some((r) => r.includes(Buffer.from(secret))), "a secret is readable in a row");
    assert.ok(!rows.some((r) => r.includes(Buffer.from(secret).toString("hex"))), "a secret is readable in a row, as hex");
  }
  assert.deepEqual(rows.filter((r) => r.length).map((r) => r.length).sort(), [45, 45, 61], "sealed: format, nonce, ciphertext, tag");
  const kek = join(dir, KEK_FILE);
  assert.equal(statSync(kek).mode & 0o777, 0o600, "the KEK file is owner-only");
});

test("without its key-encryption key, or with another one, a registry says so and changes nothing; a row moved to another device does not open", () => {
  const dir = tempDir("kp-kek-lost-");
  const file = join(dir, "keyproxy.db");
  const k = key();
  const s = new Store(file);
  s.addDevice("dev-1", k, "puckjs", 0);
  s.addDevice("dev-2", key(), "puckjs", 0);
  s.close();
  const kek = join(dir, KEK_FILE);
  const saved = join(tempDir("kp-kek-saved-"), "kek");
  copyFileSync(kek, saved);

  // Missing: a read-only open says which file and how to fix it, and makes none.
  rmSync(kek);
  const ro = new Store(file, { create: false });
  assert.throws(() => ro.getDevice("dev-1"), (e: Error) => e instanceof KekError && e.message.includes(kek) && /missing: restore it/.test(e.message));
  assert.equal(existsSync(kek), false, "no new KEK was made for a registry that holds sealed keys");
  ro.close();

  // Another KEK (as a new registry would make) does not open the rows, and the message names no secret.
  const other = new Store(file, { kekFile: join(tempDir("kp-kek-other-"), "kek") });
  assert.throws(() => other.getDevice("dev-1"), (e: Error) => e instanceof KekError && /does not open under this key-encryption key/.test(e.message) && !e.message.includes(Buffer.from(k).toString("hex")));
  other.close();

  // The right one, from elsewhere: opens. A root key copied into another device's row does not.
  const back = new Store(file, { kekFile: saved });
  assert.deepEqual(back.getDevice("dev-1")!.rootKey, k);
  back.db.prepare("UPDATE devices SET root_key = (SELECT root_key FROM devices WHERE id = 'dev-1') WHERE id = 'dev-2'").run();
  assert.throws(() => back.getDevice("dev-2"), KekError);
  back.close();
});

test("a registry whose keys an older gateway stored in the clear is sealed when it is next opened to write; opened only to read, it still reads", () => {
  const dir = tempDir("kp-kek-old-");
  const file = join(dir, "keyproxy.db");
  new Store(file).close(); // the schema
  rmSync(join(dir, KEK_FILE));
  const k = key();
  const s = seed();
  const db = new Database(file);
  db.prepare("INSERT INTO devices (id, root_key, board, created_at, identity_seed) VALUES ('old-1', ?, 'puckjs', 0, ?)").run(Buffer.from(k), Buffer.from(s));
  db.close();

  const ro = new Store(file, { create: false });
  assert.deepEqual(ro.getDevice("old-1")!.rootKey, k, "read as it is");
  ro.close();
  assert.ok(rawRows(file).some((r) => r.equals(Buffer.from(k))), "a read changes nothing");

  const rw = new Store(file);
  assert.deepEqual(rw.getDevice("old-1")!.rootKey, k);
  assert.deepEqual(rw.getDevice("old-1")!.identitySeed, s);
  rw.close();
  const rows = rawRows(file);
  assert.ok(!rows.some((r) => r.includes(Buffer.from(k)) || r.includes(Buffer.from(s))), "sealed in place");
});
