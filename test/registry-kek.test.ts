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
import mqtt from "mqtt";
import { startBroker } from "../gateway/monitor/embedded-broker.ts";
import { topics } from "../gateway/monitor/monitor.ts";
import { KEK_FILE, KekError, loadOrCreateKek } from "../gateway/registry/kek.ts";
import { Store } from "../gateway/registry/store.ts";
import { nodeHandset, startGateway, tempDir, until } from "./support/harness.ts";

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

test("root keys and identity seeds are sealed in the rows: none readable without the key-encryption key, which is its own owner-only file", async () => {
  const dir = tempDir("kp-kek-");
  const file = join(dir, "keyproxy.db");
  const store = await Store.open(file);
  const [k1, k2, s1] = [key(), key(), seed()];
  await store.addDevice("dev-1", k1, "puckjs", 0);
  await store.addDevice("dev-2", k2, "puckjs", 0);
  await store.setIdentity("dev-1", s1, new Uint8Array(32).fill(7));
  assert.deepEqual((await store.getDevice("dev-1"))!.rootKey, k1);
  assert.deepEqual((await store.getDevice("dev-1"))!.identitySeed, s1);
  assert.deepEqual((await store.getDevice("dev-2"))!.rootKey, k2);
  await store.close();

  const rows = rawRows(file);
  for (const secret of [k1, k2, s1]) {
    assert.ok(!rows.some((r) => r.includes(Buffer.from(secret))), "a secret is readable in a row");
    assert.ok(!rows.some((r) => r.includes(Buffer.from(secret).toString("hex"))), "a secret is readable in a row, as hex");
  }
  assert.deepEqual(rows.filter((r) => r.length).map((r) => r.length).sort(), [45, 45, 61], "sealed: format, nonce, ciphertext, tag");
  const kek = join(dir, KEK_FILE);
  assert.equal(statSync(kek).mode & 0o777, 0o600, "the KEK file is owner-only");
});

test("without its key-encryption key, or with another one, a registry says so and changes nothing; a row moved to another device does not open", async () => {
  const dir = tempDir("kp-kek-lost-");
  const file = join(dir, "keyproxy.db");
  const k = key();
  const s = await Store.open(file);
  await s.addDevice("dev-1", k, "puckjs", 0);
  await s.addDevice("dev-2", key(), "puckjs", 0);
  await s.close();
  const kek = join(dir, KEK_FILE);
  const saved = join(tempDir("kp-kek-saved-"), "kek");
  copyFileSync(kek, saved);

  // Missing: a read-only open says which file and how to fix it when a key is read, and one opened
  // to write (a gateway starting) says so at once; neither makes a new KEK.
  rmSync(kek);
  const ro = await Store.open(file, { create: false });
  await assert.rejects(async () => (await ro.getDevice("dev-1")), (e: Error) => e instanceof KekError && e.message.includes(kek) && /missing: restore it/.test(e.message));
  await ro.close();
  await assert.rejects(async () => await Store.open(file), (e: Error) => e instanceof KekError && /missing: restore it/.test(e.message));
  assert.equal(existsSync(kek), false, "no new KEK was made for a registry that holds sealed keys");

  // Another KEK (as a new registry would make) is refused when the registry is opened, before any
  // device's join could meet it; the message names the file and no secret.
  const otherKek = join(tempDir("kp-kek-other-"), "kek");
  loadOrCreateKek(otherKek, true);
  await assert.rejects(async () => await Store.open(file, { kekFile: otherKek }), (e: Error) => e instanceof KekError && e.message.includes(otherKek) && /is not the one this registry's keys were sealed with/.test(e.message) && !e.message.includes(Buffer.from(k).toString("hex")));

  // The right one, from elsewhere: opens. A root key copied into another device's row does not.
  const back = await Store.open(file, { kekFile: saved });
  assert.deepEqual((await back.getDevice("dev-1"))!.rootKey, k);
  await back.query("UPDATE devices SET root_key = (SELECT root_key FROM devices WHERE id = 'dev-1') WHERE id = 'dev-2'");
  await assert.rejects(async () => (await back.getDevice("dev-2")), (e: Error) => e instanceof KekError && /does not open under this key-encryption key/.test(e.message));
  await back.close();
});

test("in a sealed registry, a key written into a row in the clear (as an older gateway stored them) is an alteration: it does not open, even opened only to read", async () => {
  // Whoever can write the database but not read the KEK (a PostgreSQL operator) must not be able to
  // choose a device's root key or identity seed by storing one in the clear.
  const dir = tempDir("kp-kek-clear-");
  const file = join(dir, "keyproxy.db");
  const s = await Store.open(file);
  await s.addDevice("dev-1", key(), "puckjs", 0);
  await s.addDevice("dev-2", key(), "puckjs", 0);
  await s.setIdentity("dev-2", seed(), new Uint8Array(32).fill(7));
  const chosen = key();
  await s.query("UPDATE devices SET root_key = ? WHERE id = 'dev-1'", [Buffer.from(chosen)]);
  await s.query("UPDATE devices SET identity_seed = ? WHERE id = 'dev-2'", [Buffer.from(seed())]);
  const refused = (kind: string, id: string) => (e: Error) => e instanceof KekError && e.message.includes(`the ${kind} of ${id}`) && /not sealed/.test(e.message) && !e.message.includes(Buffer.from(chosen).toString("hex"));
  await assert.rejects(async () => await s.getDevice("dev-1"), refused("root-key", "dev-1"));
  await assert.rejects(async () => await s.getDevice("dev-2"), refused("identity-seed", "dev-2"));
  await s.close();
  const ro = await Store.open(file, { create: false });
  await assert.rejects(async () => await ro.getDevice("dev-1"), refused("root-key", "dev-1"));
  await ro.close();
  const again = await Store.open(file);
  await assert.rejects(async () => await again.getDevice("dev-1"), refused("root-key", "dev-1"), "opening to write does not seal it as an older gateway's key");
  await again.close();
});

test("a join for a device whose row the registry cannot open is refused and logged; the gateway keeps serving the others, and monitoring, which needs no key, still shows it", async () => {
  const broker = await startBroker({ host: "127.0.0.1", port: 0 });
  const t = await startGateway({ id: "kek.example", mqtt: { url: broker.url } });
  const watcher = await mqtt.connectAsync(broker.url, { protocolVersion: 4 });
  const states = new Map<string, string>();
  watcher.on("message", (topic, payload) => states.set(topic, payload.toString()));
  await watcher.subscribeAsync("keyproxy/#", { qos: 1 });
  try {
    const [k1, k2] = [key(), key()];
    await t.gw.store.addDevice("dev-1", k1, "puckjs", 0);
    await t.gw.store.addDevice("dev-2", k2, "puckjs", 0);
    await t.gw.store.query("UPDATE devices SET root_key = (SELECT root_key FROM devices WHERE id = 'dev-1') WHERE id = 'dev-2'");
    const bad = await nodeHandset(t.gw, "dev-2", k2);
    await until(() => t.events("join-rejected").some((e) => e.device === "dev-2"), "dev-2's join refused");
    assert.equal(t.events("registry-error")[0].device, "dev-2");
    // The refused join marks dev-2's state for publishing: it is published from columns that are no secret.
    await until(() => (states.get(topics.deviceState("kek.example", "dev-2")) ?? "").includes('"joinRejects":1'), "dev-2's state on MQTT");
    bad.close();
    const good = await nodeHandset(t.gw, "dev-1", k1);
    await until(() => good.h.status().state === "linked", "dev-1 still joins");
    good.close();
  } finally {
    await watcher.endAsync();
    await t.gw.stop();
    await broker.close();
  }
});

test("a registry whose keys an older gateway stored in the clear is sealed when it is next opened to write; opened only to read, it still reads", async () => {
  const dir = tempDir("kp-kek-old-");
  const file = join(dir, "keyproxy.db");
  await (await Store.open(file)).close(); // the schema
  // As an older gateway left it: no KEK, nothing sealed, and nothing in meta about a KEK.
  rmSync(join(dir, KEK_FILE));
  const meta = new Database(file);
  meta.prepare("DELETE FROM meta WHERE k = 'kek-check'").run();
  meta.close();
  const k = key();
  const s = seed();
  const db = new Database(file);
  db.prepare("INSERT INTO devices (id, root_key, board, created_at, identity_seed) VALUES ('old-1', ?, 'puckjs', 0, ?)").run(Buffer.from(k), Buffer.from(s));
  db.close();

  const ro = await Store.open(file, { create: false });
  assert.deepEqual((await ro.getDevice("old-1"))!.rootKey, k, "read as it is");
  await ro.close();
  assert.ok(rawRows(file).some((r) => r.equals(Buffer.from(k))), "a read changes nothing");

  const rw = await Store.open(file);
  assert.deepEqual((await rw.getDevice("old-1"))!.rootKey, k);
  assert.deepEqual((await rw.getDevice("old-1"))!.identitySeed, s);
  await rw.close();
  const rows = rawRows(file);
  assert.ok(!rows.some((r) => r.includes(Buffer.from(k)) || r.includes(Buffer.from(s))), "sealed in place");
});
