// `keyproxy db`: the registry's database itself. `migrate` brings its schema up to date (a gateway does
// so at start too; run it first when several instances share a PostgreSQL database, so that none
// starts on a schema another is changing), `copy` moves an SQLite registry into PostgreSQL.
import { join } from "node:path";
import { DB_FILE, openRegistry, openStore } from "../gateway/gateway.ts";
import { DataDirInUse, lockDataDir, type DataDirLock } from "../gateway/registry/data-dir-lock.ts";
import { copyRegistry, TargetNotEmpty } from "../gateway/registry/copy.ts";
import { KEK_FILE, KEK_FILE_ENV } from "../gateway/registry/kek.ts";
import { LATEST_SCHEMA } from "../gateway/registry/migrations.ts";
import { isDatabaseUrl, withoutPassword } from "../gateway/registry/store.ts";
import { DEFAULT_DATA_DIR } from "./config.ts";
import { existingRegistry } from "./device-cmd.ts";
import { parse, UsageError } from "./args.ts";

const HELP = `usage: keyproxy db <command> [options]

The gateway's registry: SQLite in the data directory by default, or PostgreSQL
(--db postgres://...), which several gateway instances of a domain share.

  migrate               bring the schema up to date (version ${LATEST_SCHEMA}); a gateway
                        does this at start too
  copy --to <url>       copy the data directory's SQLite registry into an empty
                        PostgreSQL database, in one transaction; then start the
                        gateways with --db <url>

  --data-dir <dir>  the gateway's data directory (default ${DEFAULT_DATA_DIR}): its
                    registry, and the key-encryption key (${KEK_FILE}) that
                    seals the device keys in either database
                    (${KEK_FILE_ENV} puts it elsewhere)
  --db <url>        migrate: the PostgreSQL registry instead of the SQLite one`;

export async function dbCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === "--help" || sub === "-h") {
    console.log(HELP);
    return 0;
  }
  if (!sub) throw new UsageError("a command is required: migrate or copy");
  const o = parse(rest, {
    "data-dir": { type: "string" },
    db: { type: "string" },
    to: { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  if (o.help) {
    console.log(HELP);
    return 0;
  }
  const dataDir = o["data-dir"] ?? DEFAULT_DATA_DIR;
  if (o.db !== undefined && !isDatabaseUrl(o.db)) throw new UsageError(`--db wants a PostgreSQL URL (postgres://user@host/database), not "${o.db}"; the SQLite registry is the data directory's ${DB_FILE}`);
  if (sub === "migrate") return migrateCommand(dataDir, o.db);
  if (sub === "copy") return copyCommand(dataDir, o.to);
  throw new UsageError(`unknown subcommand "${sub}": migrate or copy`);
}

async function migrateCommand(dataDir: string, database: string | undefined): Promise<number> {
  const store = await openStore(dataDir, database);
  try {
    const applied = store.schemaApplied;
    console.log(`${database ? withoutPassword(database) : join(dataDir, DB_FILE)}: schema version ${LATEST_SCHEMA}${applied.length ? ` (applied ${applied.join(", ")})` : " (up to date)"}`);
  } finally {
    await store.close();
  }
  return 0;
}

async function copyCommand(dataDir: string, to: string | undefined): Promise<number> {
  if (!to) throw new UsageError("--to <postgres url> is required: the database to copy the registry into");
  if (!isDatabaseUrl(to)) throw new UsageError(`--to wants a PostgreSQL URL (postgres://user@host/database), not "${to}"`);
  // A data directory without a registry is the operator's mistake, said before anything is locked.
  await (await existingRegistry(dataDir)).close();
  // No gateway may write the registry while it is copied: its lock, as a second gateway would take it.
  let lock: DataDirLock;
  try {
    lock = lockDataDir(dataDir);
  } catch (e) {
    if (e instanceof DataDirInUse) throw new Error(`${e.message.replace(/: stop it first.*/, "")}: stop it before copying its registry (what it writes meanwhile would be left behind)`);
    throw e;
  }
  try {
    await copyInto(dataDir, to);
  } finally {
    lock.release();
  }
  return 0;
}

async function copyInto(dataDir: string, to: string): Promise<void> {
  const source = await openRegistry(dataDir);
  try {
    const target = await openStore(dataDir, to);
    try {
      const counts = await copyRegistry(source, target);
      const rows = Object.entries(counts).map(([t, n]) => `${t} ${n}`).join(", ");
      console.log(`copied ${join(dataDir, DB_FILE)} into ${withoutPassword(to)}: ${rows}`);
      console.log(`start the gateways with --data-dir ${dataDir} --db <that url>; each instance needs this data directory's ${KEK_FILE} and gateway key`);
    } catch (e) {
      if (e instanceof TargetNotEmpty) throw new UsageError(e.message);
      throw e;
    } finally {
      await target.close();
    }
  } finally {
    await source.close();
  }
}
