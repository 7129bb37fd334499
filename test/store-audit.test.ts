// The audit log's batched records (issue 14: a session setup's audit commit was the largest single
// cost inside one gateway). Session records are evidence, not state: Store.auditBatched queues them
// and commits those of each AUDIT_BATCH_MS in one transaction at synchronous=NORMAL, while everything that
// must survive a power cut (join counters, registrations, provisioning, revocation, and the audit()
// records written with them) stays a FULL commit before the gateway answers. What must hold: a reader
// sees every record so far, in the order written; a clean stop loses none; a crash after the commit
// loses none; a failed transaction loses none; and the store is back at FULL after each batch.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { fork } from "node:child_process";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import { Store } from "../gateway/registry/store.ts";
import { startGateway, tempDir } from "./support/harness.ts";

const CRASH_CHILD = fileURLToPath(new URL("./support/audit-crash-child.ts", import.meta.url));

type Row = { device_id: string | null; event: string; detail: string };

/** The audit rows as another connection sees them: what is committed, nothing queued. */
function committedRows(file: string): Row[] {
  const db = new Database(file, { readonly: true });
  try {
    return db.prepare("SELECT device_id, event, detail FROM audit ORDER BY id").all() as Row[];
  } finally {
    db.close();
  }
}

const SYNCHRONOUS_FULL = 2;

/** A registry file in a fresh directory, removed when the test file ends. */
const made: string[] = [];
after(() => made.forEach((d) => rmSync(d, { recursive: true, force: true })));
function registryFile(prefix: string): string {
  const dir = tempDir(prefix);
  made.push(dir);
  return join(dir, "keyproxy.db");
}

test("batched records wait for their group commit, then commit together; the store is back at synchronous=FULL", async () => {
  const file = registryFile("kp-audit-");
  const store = await Store.open(file);
  try {
    for (let i = 0; i < 3; i++) store.auditBatched(i, `dev-${i}`, "session-up", `spi=${i}`);
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(committedRows(file), [], "nothing is committed at the end of the turn that queued them");
    await store.auditCommitted();
    assert.deepEqual(committedRows(file).map((r) => r.device_id), ["dev-0", "dev-1", "dev-2"]);
    assert.equal((await store.row("PRAGMA synchronous"))?.synchronous, SYNCHRONOUS_FULL, "a join counter's commit after the batch is FULL again");
  } finally {
    await store.close();
  }
});

test("a reader of the audit table through store.query sees the queued records at once, in the order written with audit()'s durable ones", async () => {
  const file = registryFile("kp-audit-");
  const store = await Store.open(file);
  try {
    store.auditBatched(1, "dev-a", "session-up", "first");
    await store.audit(2, "dev-a", "deregistered", "second");
    store.auditBatched(3, "dev-a", "session-down", "third");
    const rows = (await store.query("SELECT detail FROM audit ORDER BY id")).rows as { detail: string }[];
    assert.deepEqual(rows.map((r) => r.detail), ["first", "second", "third"]);
  } finally {
    await store.close();
  }
});

test("a transaction that rolls back after writing queued records queues them again: none is lost", async () => {
  const file = registryFile("kp-audit-");
  const store = await Store.open(file);
  try {
    store.auditBatched(1, "dev-a", "session-up", "queued before");
    await assert.rejects(store.atomically(async () => {
      await store.audit(2, "dev-a", "revoked", "rolled back");
      throw new Error("the change fails after its audit record");
    }), /the change fails/);
    assert.deepEqual(committedRows(file), [], "the rollback took both records out of the file");
    await store.auditCommitted();
    assert.deepEqual(committedRows(file).map((r) => r.detail), ["queued before"], "the queued record is committed with the next batch; the rolled-back one is gone");
  } finally {
    await store.close();
  }
});

test("closing the store commits the queued records (Gateway.stop closes it): a clean stop loses none", async () => {
  const t = await startGateway();
  t.gw.store.auditBatched(1, "dev-a", "session-up", "queued at stop");
  t.gw.store.auditBatched(2, "dev-b", "session-down", "queued at stop");
  await t.gw.stop();
  made.push(t.dataDir);
  assert.deepEqual(committedRows(join(t.dataDir, "keyproxy.db")).map((r) => r.device_id), ["dev-a", "dev-b"]);
});

test("a process killed (SIGKILL, no close) after the batch was committed keeps its records", async () => {
  const file = registryFile("kp-audit-crash-");
  const child = fork(CRASH_CHILD, [file, "5"], { execArgv: ["--import", "tsx"], stdio: ["ignore", "inherit", "inherit", "ipc"] });
  const exited = new Promise((r) => child.once("exit", r));
  await new Promise<void>((resolve, reject) => {
    child.once("message", () => resolve());
    child.once("exit", (code) => reject(new Error(`the child exited with ${code} before committing`)));
  });
  child.kill("SIGKILL");
  await exited;
  assert.deepEqual(committedRows(file).map((r) => r.device_id), ["dev-0", "dev-1", "dev-2", "dev-3", "dev-4"]);
});

test("a batched record on a closed store is refused at once, as audit() refuses it: nothing is queued to fail later", async () => {
  const file = registryFile("kp-audit-");
  const store = await Store.open(file);
  await store.close();
  assert.throws(() => store.auditBatched(1, "dev-a", "session-up", "too late"), /closed/);
  await assert.rejects(store.audit(1, "dev-a", "registered", "too late"), /closed/);
});

test("a transaction that spans other work (provisioning's, across the device's switch) carries the queued records it wrote, and its rollback queues them again", async () => {
  const file = registryFile("kp-audit-");
  const store = await Store.open(file);
  try {
    store.auditBatched(1, "dev-a", "session-up", "queued");
    await assert.rejects(store.atomically(async () => {
      await store.audit(2, "dev-b", "device-provisioned", "txn=1");
      await new Promise((r) => setImmediate(r)); // the device's switch
      throw new Error("the device did not switch");
    }), /did not switch/);
    await store.auditCommitted();
    assert.deepEqual(committedRows(file).map((r) => r.detail), ["queued"]);
  } finally {
    await store.close();
  }
});

test("a wait for the batch ends when an audit() record committed the queued ones first", async () => {
  const file = registryFile("kp-audit-");
  const store = await Store.open(file);
  try {
    store.auditBatched(1, "dev-a", "session-up", "queued");
    const committed = store.auditCommitted();
    await store.audit(2, "dev-a", "deregistered", "durable");
    await committed;
    assert.deepEqual(committedRows(file).map((r) => r.detail), ["queued", "durable"]);
  } finally {
    await store.close();
  }
});
