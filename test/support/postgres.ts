// A fresh PostgreSQL database for one test file (CREATE DATABASE kp_test_<random>, dropped after), on
// the server KEYPROXY_TEST_POSTGRES_URL names (an admin URL able to CREATE DATABASE; .ci/run sets it),
// else on a throwaway cluster this process starts once (./postgres-cluster.ts: initdb into a temporary
// directory, trust authentication on loopback only, a free TCP port on 127.0.0.1, owned by the
// `postgres` system user when we are root; stopped and deleted when the process exits), with fsync
// off: durability is not under test here, and the shared machine's disks stay quiet.
//
// With neither, testDatabase() returns undefined after t.skip(reason); with CI=true it throws instead:
// a test that cannot reach PostgreSQL must never pass CI as skipped.

import type { TestContext } from "node:test";
import { scratchDatabase, throwawayCluster } from "./postgres-cluster.ts";

export interface TestDatabase {
  /** postgres://... of the new database, for openPostgres. */
  url: string;
  /** The admin URL of its server (able to ALTER it, cut its connections). */
  admin: string;
  /** Drops the database (its connections are cut first). Idempotent. */
  drop(): Promise<void>;
}

export async function testDatabase(t?: TestContext): Promise<TestDatabase | undefined> {
  const server = await adminUrl();
  if ("missing" in server) {
    const reason = `no PostgreSQL to test against: ${server.missing} (.ci/run installs Debian's postgresql and sets KEYPROXY_TEST_POSTGRES_URL)`;
    if (process.env.CI === "true") throw new Error(`CI=true and ${reason}`);
    t?.skip(reason);
    return undefined;
  }
  return { ...(await scratchDatabase(server.url, "kp_test_")), admin: server.url };
}

type Server = { url: string } | { missing: string };

function adminUrl(): Promise<Server> {
  const named = process.env.KEYPROXY_TEST_POSTGRES_URL;
  if (named) return Promise.resolve({ url: named });
  return throwawayCluster({ fsync: false }).then(
    (url) => ({ url }),
    (e: Error) => ({ missing: `KEYPROXY_TEST_POSTGRES_URL is not set and ${e.message}` }),
  );
}
