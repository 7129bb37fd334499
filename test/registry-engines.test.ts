// The registry on both engines (issue 12, scope 1): the same store code over SQLite (the embedded
// default) and PostgreSQL (several gateway instances sharing one database). What two instances must
// never both do (accept one join counter, give a device two identities) is checked with two stores on
// one database at once; the keys at rest are read from the rows, as someone with a copy of the
// database would; the schema is versioned; `keyproxy db copy` moves a registry across.
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { copyRegistry, REGISTRY_TABLES, TargetNotEmpty } from "../gateway/registry/copy.ts";
import { KEK_FILE, KekError, loadOrCreateKek } from "../gateway/registry/kek.ts";
import { KeyGroups } from "../gateway/registry/key-groups.ts";
import { LATEST_SCHEMA, SchemaTooNew } from "../gateway/registry/migrations.ts";
import { Policy } from "../gateway/registry/policy.ts";
import { Store } from "../gateway/registry/store.ts";
import { startGateway, tempDir } from "./support/harness.ts";
import { runCli } from "./support/run-cli.ts";
import { testDatabase } from "./support/postgres.ts";

const key = () => new Uint8Array(randomBytes(16));
const seed = () => new Uint8Array(randomBytes(32));

/** Where one test's registry lives on an engine, with the KEK file it is sealed under. */
interface Place {
  target: string;
  kekFile: string;
}

type Engine = "sqlite" | "postgres";

/** A fresh, empty registry place on engine (undefined: PostgreSQL unavailable and the test skipped). */
async function place(t: TestContext, engine: Engine): Promise<Place | undefined> {
  const dir = tempDir(`kp-engine-${engine}-`);
  const kekFile = join(dir, KEK_FILE);
  if (engine === "sqlite") return { target: join(dir, "keyproxy.db"), kekFile };
  const db = await testDatabase(t);
  if (!db) return undefined;
  t.after(() => db.drop());
  return { target: db.url, kekFile };
}

async function open(p: Place, t: TestContext): Promise<Store> {
  const s = await Store.open(p.target, { kekFile: p.kekFile });
  t.after(() => s.close());
  return s;
}

for (const engine of ["sqlite", "postgres"] as const) {
  test(`${engine}: a new registry is at the latest schema version; opening it again applies nothing; a newer schema is refused and left alone`, async (t) => {
    const p = await place(t, engine);
    if (!p) return;
    const first = await open(p, t);
    assert.deepEqual(first.schemaApplied, Array.from({ length: LATEST_SCHEMA }, (_, i) => i + 1));
    assert.equal(await first.getMeta("schema_version"), String(LATEST_SCHEMA));
    const again = await open(p, t);
    assert.deepEqual(again.schemaApplied, []);
    await first.setMeta("schema_version", String(LATEST_SCHEMA + 1));
    await assert.rejects(Store.open(p.target, { kekFile: p.kekFile }), (e: Error) => e instanceof SchemaTooNew && /newer keyproxy/.test(e.message));
    assert.equal(await first.getMeta("schema_version"), String(LATEST_SCHEMA + 1), "nothing was written");
  });

  test(`${engine}: two stores on one registry advancing the same join counter at once: exactly one accepts it, every round`, async (t) => {
    const p = await place(t, engine);
    if (!p) return;
    const [a, b] = [await open(p, t), await open(p, t)];
    await a.addDevice("dev-1", key(), "puckjs", 0);
    for (let ctr = 1; ctr <= 20; ctr++) {
      const won = await Promise.all([a.advanceJoinCounter("dev-1", ctr), b.advanceJoinCounter("dev-1", ctr), a.advanceJoinCounter("dev-1", ctr), b.advanceJoinCounter("dev-1", ctr)]);
      assert.equal(won.filter(Boolean).length, 1, `counter ${ctr}: ${won}`);
    }
    assert.equal((await b.getDeviceInfo("dev-1"))!.joinCounter, 20);
    assert.equal(await a.advanceJoinCounter("dev-1", 20), false, "a replay");
    await a.revokeDevice("dev-1", 1, "test");
    assert.equal(await b.advanceJoinCounter("dev-1", 21), false, "a revoked device's counter never moves");
  });

  test(`${engine}: a device gets one identity key even when two instances register it at once`, async (t) => {
    const p = await place(t, engine);
    if (!p) return;
    const [a, b] = [await open(p, t), await open(p, t)];
    await a.addDevice("dev-1", key(), "puckjs", 0);
    const [pa, pb] = [new Uint8Array(32).fill(1), new Uint8Array(32).fill(2)];
    const set = await Promise.all([a.setIdentity("dev-1", seed(), pa), b.setIdentity("dev-1", seed(), pb)]);
    assert.equal(set.filter(Boolean).length, 1);
    const kept = set[0] ? pa : pb;
    assert.deepEqual((await a.getDeviceInfo("dev-1"))!.identityPublic, kept);
    assert.deepEqual((await b.getDeviceInfo("dev-1"))!.identityPublic, kept);
  });

  test(`${engine}: root keys and identity seeds are sealed in the rows; another KEK is refused at open`, async (t) => {
    const p = await place(t, engine);
    if (!p) return;
    const s = await open(p, t);
    const [k, sd] = [key(), seed()];
    await s.addDevice("dev-1", k, "puckjs", 0);
    await s.setIdentity("dev-1", sd, new Uint8Array(32).fill(7));
    const raw = (await s.query("SELECT root_key, identity_seed FROM devices")).rows;
    const stored = Buffer.concat(raw.flatMap((r) => [Buffer.from(r.root_key as Uint8Array), Buffer.from(r.identity_seed as Uint8Array)]));
    for (const secret of [k, sd]) assert.equal(stored.indexOf(Buffer.from(secret)), -1, "no key in the clear");
    assert.deepEqual((await s.getDevice("dev-1"))!.rootKey, k);
    const otherKek = join(tempDir("kp-engine-kek-"), "kek");
    loadOrCreateKek(otherKek, true);
    await assert.rejects(Store.open(p.target, { kekFile: otherKek }), (e: Error) => e instanceof KekError && /not the one this registry's keys were sealed with/.test(e.message));
  });

  test(`${engine}: audit records, batched and durable, keep their order; text the engine cannot hold is stored replaced`, async (t) => {
    const p = await place(t, engine);
    if (!p) return;
    const s = await open(p, t);
    s.auditBatched(1, "dev-a", "session-up", "first");
    await s.audit(2, "dev-a", "registered", "second\0with a NUL");
    s.auditBatched(3, "dev-a", "session-down", "third");
    await s.auditCommitted();
    const rows = (await s.query("SELECT ts, detail FROM audit ORDER BY id")).rows;
    assert.deepEqual(rows.map((r) => [r.ts, r.detail]), [[1, "first"], [2, "second\uFFFDwith a NUL"], [3, "third"]]);
    await assert.rejects(s.atomically(async () => {
      await s.audit(4, "dev-a", "revoked", "rolled back");
      throw new Error("fails");
    }), /fails/);
    assert.equal((await s.query("SELECT ts FROM audit WHERE ts = 4")).rows.length, 0);
  });

  test(`${engine}: a gateway's policy checks see every change another process makes at once, by keyproxy's code or by hand in SQL, at one statement per check when nothing changed`, async (t) => {
    const p = await place(t, engine);
    if (!p) return;
    const gatewayStore = await open(p, t);
    const other = await open(p, t);
    const gateway = new Policy(gatewayStore);
    const operator = new Policy(other);
    const check = () => gateway.permits("alice", "bob", "chat");
    assert.equal(await check(), false, "default deny");
    await operator.setDefault("allow");
    assert.equal(await check(), true, "the default changed");
    const deny = await operator.add("group:ops", "bob", "chat", "deny");
    assert.equal(await check(), true, "alice is in no group yet");
    await operator.addToGroup("alice", "ops");
    assert.equal(await check(), false, "a group joined");
    await operator.removeFromGroup("alice", "ops");
    assert.equal(await check(), true, "a group left");
    await operator.addToGroup("alice", "ops");
    assert.equal(await check(), false);
    await operator.remove(deny);
    assert.equal(await check(), true, "the rule removed");
    // By hand, past keyproxy's code: the database's triggers renew the version all the same.
    await other.query("INSERT INTO policy_rules (subject, object, app, action) VALUES ('alice', '*', '*', 'deny')");
    assert.equal(await check(), false, "a rule inserted in SQL");
    await other.query("UPDATE policy_rules SET action = 'allow' WHERE subject = 'alice'");
    assert.equal(await check(), true, "a rule updated in SQL");
    await other.query("UPDATE policy_rules SET object = 'carol'");
    await other.query("DELETE FROM device_groups");
    await other.query("UPDATE meta SET v = 'deny' WHERE k = 'policy_default'");
    assert.equal(await check(), false, "the default changed in SQL");
    await other.query("DELETE FROM meta WHERE k = 'policy_default'");
    assert.equal(await check(), false, "no default: deny");
    await other.query("INSERT INTO meta (k, v) VALUES ('policy_default', 'allow')");
    assert.equal(await check(), true, "the default inserted in SQL");
    // Nothing changed since: one statement per check (the version and both devices' groups, whether
    // asked about before or not), counted on the gateway's store.
    const statements: string[] = [];
    const query = gatewayStore.query.bind(gatewayStore);
    gatewayStore.query = (sql, params) => (statements.push(sql), query(sql, params));
    assert.equal(await check(), true);
    assert.equal(await gateway.permits("bob", "alice", "chat"), true);
    assert.equal(statements.length, 2, `one statement per check: ${statements.join("; ")}`);
    statements.length = 0;
    assert.equal(await gateway.permits("carol", "alice", "chat"), true);
    assert.equal(statements.length, 1, `a device not asked about before, in the same statement: ${statements.join("; ")}`);
  });

  test(`${engine}: policy and group SAs' membership read and write the same`, async (t) => {
    const p = await place(t, engine);
    if (!p) return;
    const s = await open(p, t);
    const policy = new Policy(s);
    const id = await policy.add("alice", "group:ops", "chat", "allow");
    await policy.add("*", "bob", "*", "deny");
    await policy.addToGroup("bob", "ops");
    await policy.addToGroup("bob", "ops");
    assert.deepEqual(await policy.groups("bob"), ["ops"]);
    assert.equal(await policy.permits("alice", "bob", "chat"), false, "deny wins");
    assert.equal(await policy.remove(id + 1), true);
    assert.equal(await policy.permits("alice", "bob", "chat"), true);
    assert.equal(await policy.permits("alice", "bob", "mail"), false, "default deny");
    const groups = new KeyGroups(s);
    await groups.create("team", "chat", 5);
    assert.equal(await groups.add("team", "alice", 6), true);
    assert.equal(await groups.add("team", "bob@b.example", 6), true);
    assert.equal(await groups.add("team", "alice", 7), false);
    await assert.rejects(groups.create("team", "chat", 8), /exists already/);
    assert.deepEqual((await groups.get("team"))!.members, ["alice", "bob@b.example"]);
    assert.equal(await groups.version(), 3);
    assert.deepEqual(await groups.removeEverywhere("alice"), ["team"]);
    assert.equal(await groups.version(), 4);
  });
}

test("postgres: two transactions at once (SQLite runs one at a time) each keep their statements to their end, the later one after the earlier ended: both roll back whole", async (t) => {
  const p = await place(t, "postgres");
  if (!p) return;
  const s = await open(p, t);
  const both: Promise<void>[] = [];
  let firstDone!: () => void;
  const firstEnded = new Promise<void>((r) => (firstDone = r));
  const tx = (name: string, waitForOther: boolean) => s.atomically(async () => {
    await s.setMeta(`${name}-1`, "x");
    // The later one goes on after the first has ended (and with it, perhaps, the context).
    if (waitForOther) await firstEnded;
    await s.setMeta(`${name}-2`, "x");
    throw new Error(`${name} fails`);
  });
  both.push(tx("late", true).catch(() => undefined));
  both.push(tx("early", false).catch(() => undefined).finally(() => firstDone()));
  await Promise.all(both);
  for (const k of ["early-1", "early-2", "late-1", "late-2"]) assert.equal(await s.getMeta(k), undefined, `${k} was rolled back`);
});

test("keyproxy db copy's copy: an SQLite registry moves into PostgreSQL whole, keys still sealed under the same KEK; a target that holds a registry is refused and left alone", async (t) => {
  const from = await place(t, "sqlite");
  const pg = await place(t, "postgres");
  if (!from || !pg) return;
  const source = await open(from, t);
  const k = key();
  await source.addDevice("dev-1", k, "puckjs", 10);
  await source.addDevice("dev-2", key(), "bangle2", 11);
  await source.advanceJoinCounter("dev-1", 7);
  await source.putRegistration({ deviceId: "dev-1", registeredAt: 12, expiresAt: 4_000_000_000, suites: [[10, 1]], certId: new Uint8Array([1, 2]), cert: new Uint8Array([3, 0, 4]), firmware: "fw-1", memoryUsed: 900 });
  await new Policy(source).add("dev-1", "dev-2", "*", "allow");
  await new KeyGroups(source).create("team", "chat", 13);
  await new KeyGroups(source).add("team", "dev-2", 14);
  await source.audit(15, "dev-1", "registered", "granted=3600");
  // The same KEK as the source's: the sealed values are copied as they are.
  const target = await open({ target: pg.target, kekFile: from.kekFile }, t);
  const counts = await copyRegistry(source, target);
  assert.equal(counts.devices, 2);
  assert.equal(counts.registrations, 1);
  assert.equal(counts.policy_rules, 1);
  assert.equal(counts.key_group_members, 1);
  assert.equal(counts.audit, 1);
  assert.deepEqual((await target.getDevice("dev-1"))!.rootKey, k);
  assert.equal((await target.getDeviceInfo("dev-1"))!.joinCounter, 7);
  assert.deepEqual(await target.getRegistration("dev-1"), await source.getRegistration("dev-1"));
  assert.deepEqual(await target.listDevices(), await source.listDevices());
  assert.deepEqual(await new Policy(target).rules(), await new Policy(source).rules());
  assert.deepEqual(await new KeyGroups(target).list(), await new KeyGroups(source).list());
  // Numbering continues after the copied rows.
  const next = await new Policy(target).add("dev-2", "dev-1", "*", "allow");
  assert.ok(next > (await new Policy(source).rules())[0].id);
  // A second copy finds a registry there and changes nothing.
  const before = await Promise.all(REGISTRY_TABLES.map(async (tb) => (await target.row(`SELECT count(*) AS n FROM ${tb}`))?.n));
  await assert.rejects(copyRegistry(source, target), TargetNotEmpty);
  assert.deepEqual(await Promise.all(REGISTRY_TABLES.map(async (tb) => (await target.row(`SELECT count(*) AS n FROM ${tb}`))?.n)), before);
});

test("keyproxy db copy and migrate on the command line: refused while a gateway holds the data directory, then copied; the gateway starts on the copy with --db", async (t) => {
  const pg = await place(t, "postgres");
  if (!pg) return;
  const dataDir = tempDir("kp-engine-cli-");
  assert.equal((await runCli(["policy", "allow", "--from", "a", "--to", "b", "--app", "chat", "--data-dir", dataDir])).code, 0);
  const gw = await startGateway({ dataDir, database: undefined });
  await gw.gw.store.addDevice("dev-1", key(), "puckjs", 1);
  const refused = await runCli(["db", "copy", "--data-dir", dataDir, "--to", pg.target]);
  assert.equal(refused.code, 1, refused.stderr);
  assert.match(refused.stderr, /another keyproxy gateway is running on the data directory .*: stop it before copying its registry/);
  await gw.gw.stop();
  const copied = await runCli(["db", "copy", "--data-dir", dataDir, "--to", pg.target]);
  assert.equal(copied.code, 0, copied.stderr);
  assert.match(copied.stdout, /devices 1, .*policy_rules 1/);
  const migrated = await runCli(["db", "migrate", "--data-dir", dataDir, "--db", pg.target]);
  assert.equal(migrated.code, 0, migrated.stderr);
  assert.match(migrated.stdout, new RegExp(`schema version ${LATEST_SCHEMA} \\(up to date\\)`));
  const onCopy = await startGateway({ dataDir, database: pg.target });
  try {
    assert.equal(onCopy.gw.store.engine, "postgres");
    assert.deepEqual((await onCopy.gw.store.listDevices()).map((d) => d.id), ["dev-1"]);
    assert.equal(await onCopy.gw.policy.permits("a", "b", "chat"), true);
  } finally {
    await onCopy.gw.stop();
  }
});
