// The registry's PostgreSQL server going away while a gateway runs (issue 12): a join that cannot
// read the registry is no fault of the device's, so it gets no refusal and no backoff; the link
// closes, the gateway says why in its log and keeps running, and the device joins once the database
// is back. Nothing is written half: the join counter moves only on a join that completed.
import { test } from "node:test";
import assert from "node:assert/strict";
import { nodeHandset, provision, startGateway, until } from "./support/harness.ts";
import { testDatabase, type TestDatabase } from "./support/postgres.ts";
import { withAdmin } from "./support/postgres-cluster.ts";

/** Cuts every connection to the database and refuses new ones (as a server that went down does for
 *  this database), or lets them in again. */
async function databaseReachable(db: TestDatabase, reachable: boolean): Promise<void> {
  const name = new URL(db.url).pathname.slice(1);
  await withAdmin(db.admin, async (client) => {
    await client.query(`ALTER DATABASE ${name} WITH ALLOW_CONNECTIONS ${reachable}`);
    if (!reachable) await client.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", [name]);
  });
}

test("the registry's database down: a join closes the link with the reason logged, no refusal, no backoff, the gateway runs on; back up, the device joins", async (t) => {
  const db = await testDatabase(t);
  if (!db) return;
  t.after(() => db.drop());
  const g = await startGateway({ database: db.url, limits: { joinFailuresBeforeBackoff: 1 } });
  t.after(() => g.gw.stop().catch(() => undefined));
  const key = await provision(g.gw, "dev-o");
  const counter = { value: 0 };

  await databaseReachable(db, false);
  const first = await nodeHandset(g.gw, "dev-o", key, 600, counter);
  await until(() => first.socket.destroyed || first.socket.readableEnded, "the gateway closes the link it could not serve", 15_000);
  first.close();
  const failed = g.events("frame-handling-failed");
  assert.equal(failed.length, 1, "said once, with the reason");
  assert.equal(failed[0].device, undefined, "before the join: no device is named as linked");
  assert.equal(g.events("join-rejected").length, 0, "no refusal: the device did nothing wrong");
  assert.equal(g.gw.links.stats.joinsThrottled, 0);

  await databaseReachable(db, true);
  const second = await nodeHandset(g.gw, "dev-o", key, 600, counter);
  t.after(() => second.close());
  await until(() => second.h.status().registered, "the device joins and registers once the database is back", 15_000);
  assert.equal(g.gw.links.stats.joinsThrottled, 0, "and was never held back");
  assert.equal((await g.gw.store.getDeviceInfo("dev-o"))!.joinCounter, counter.value, "the stored counter is the device's last: the failed join took none");
});
