// `keyproxy db copy`: a registry moved from one engine to the other (SQLite to PostgreSQL, when a domain
// outgrows one machine). Every table is copied row for row in ONE transaction on the target, so a
// copy that fails leaves the target as it was. Sealed keys are copied as they are: they stay sealed
// under the same KEK, which is never in either database and goes with the data directory.

import type { Store } from "./store.ts";
import type { SqlValue } from "./sql.ts";

/** The registry's tables, parents before children (foreign keys). meta is copied apart (see below). */
export const REGISTRY_TABLES = ["devices", "registrations", "audit", "policy_rules", "device_groups", "key_groups", "key_group_members"] as const;
/** Tables whose id column the database numbers: PostgreSQL's sequence must continue after the copy. */
const NUMBERED = ["audit", "policy_rules"] as const;
/** Meta keys that belong to the target database itself, not to the registry's content (the policy's
 *  version is renewed by the target's own triggers as the policy is copied in). */
const OWN_META = new Set(["schema_version", "policy_version"]);

export type CopyCounts = Record<(typeof REGISTRY_TABLES)[number] | "meta", number>;

/** The target already holds a registry: nothing was copied. */
export class TargetNotEmpty extends Error {}

/** Copies every row of source into target, which must hold no devices, rules, groups or audit yet. */
export async function copyRegistry(source: Store, target: Store): Promise<CopyCounts> {
  const counts = { meta: 0 } as CopyCounts;
  await target.atomically(async () => {
    for (const table of REGISTRY_TABLES) {
      const n = Number((await target.row(`SELECT count(*) AS n FROM ${table}`))?.n ?? 0);
      if (n > 0) throw new TargetNotEmpty(`${target.location} already holds a registry (${n} rows in ${table}): copy only into an empty database, or drop its tables first`);
    }
    for (const r of (await source.query("SELECT k, v FROM meta ORDER BY k")).rows) {
      if (OWN_META.has(String(r.k))) continue;
      await target.query("INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v", [r.k, r.v]);
      counts.meta++;
    }
    for (const table of REGISTRY_TABLES) counts[table] = await copyTable(source, target, table);
    if (target.engine === "postgres") {
      for (const table of NUMBERED) await target.query(`SELECT setval(pg_get_serial_sequence('${table}', 'id'), COALESCE((SELECT MAX(id) FROM ${table}), 0) + 1, false)`);
    }
  });
  return counts;
}

/** Rows read from the source at a time: an audit log of millions of rows is never all in memory. */
const PAGE_ROWS = 1000;

async function copyTable(source: Store, target: Store, table: string): Promise<number> {
  let copied = 0;
  for (;;) {
    // The source is not written meanwhile (the gateway is stopped: cli/db-cmd.ts holds its lock).
    const { rows } = await source.query(`SELECT * FROM ${table} ORDER BY 1 LIMIT ? OFFSET ?`, [PAGE_ROWS, copied]);
    for (const row of rows) {
      const columns = Object.keys(row);
      const values: SqlValue[] = columns.map((c) => row[c]);
      await target.query(`INSERT INTO ${table} (${columns.join(", ")}) VALUES (${columns.map(() => "?").join(", ")})`, values);
    }
    copied += rows.length;
    if (rows.length < PAGE_ROWS) return copied;
  }
}
