import { randomBytes } from "node:crypto";
import { existsSync, rmSync } from "node:fs";
import { renameDurably, writeSynced } from "../gateway/files/durable.ts";
import { BOARDS, getBoard } from "../boards/index.ts";
import type { DeviceSummary } from "../gateway/registry/store.ts";
import { NoRegistry, openRegistry, openStore, DEFAULT_LISTEN } from "../gateway/gateway.ts";
import type { Store } from "../gateway/registry/store.ts";
import { DEFAULT_DATA_DIR } from "./config.ts";
import { parse, printJson, UsageError } from "./args.ts";
import { forTerminal } from "../gateway/log/terminal.ts";
import { noteNewDataDir, warnIfUnignoredInGitTree } from "./git-worktree.ts";

export const ROOT_KEY_BYTES = 16;
const ID_PATTERN = /^[A-Za-z0-9._-]{1,64}$/;

const HELP = `usage: keyproxy device <add|list|remove> [options]

  add --id <name> --out <file> [--board <id>] [--gateway <host:port>]
      [--replace]
      Makes a fresh root key (CSPRNG), enters the device in the registry and
      writes a provisioning file (mode 0600) holding the id, the key and the
      gateway address. The key is never printed: load the file into the device
      (keyproxy sim does) and then delete it. --replace: a new root key for a
      device already registered.
  list [--json]
      Devices, join counters, registration expiry, and what each device reported
      when it registered: firmware id and variables in use. --json: one JSON
      document on stdout (no keys in it).
  remove --id <name>
      Deletes the device, its registration and certificate.

  --data-dir <dir>  the gateway's data directory (default ${DEFAULT_DATA_DIR}); list
                    and remove need a registry there and create nothing (exit 2
                    when there is none)`;

export function checkDeviceId(id: string | undefined): string {
  if (!id) throw new UsageError("--id is required");
  if (!ID_PATTERN.test(id)) throw new UsageError(`device id "${id}" must be 1-64 letters, digits, dots, dashes or underscores`);
  return id;
}

/** The registry of dataDir for a command that reads or edits one: a directory without one is the
 *  operator's mistake (a usage error, exit 2), and nothing is created there. */
export async function existingRegistry(dataDir: string, database?: string): Promise<Store> {
  try {
    return await openRegistry(dataDir, database);
  } catch (e) {
    if (e instanceof NoRegistry) throw new UsageError(e.message);
    throw e;
  }
}

/** Registry entry and provisioning file as one step: either both exist afterwards or neither does. */
export async function addDevice(dataDir: string, id: string, board: string, gateway: string, out: string, replace: boolean, database?: string): Promise<void> {
  if (existsSync(out)) throw new Error(`${out} exists; refusing to overwrite a provisioning file`);
  const store = await openStore(dataDir, database);
  const key = randomBytes(ROOT_KEY_BYTES);
  const tmp = `${out}.${process.pid}.tmp`;
  try {
    if ((await store.getDeviceInfo(id)) && !replace) throw new Error(`device "${id}" is already registered; pass --replace to give it a new root key`);
    writeSynced(tmp, JSON.stringify({ id, key: key.toString("hex"), gw: gateway, board }) + "\n", 0o600);
    await store.atomically(async () => {
      if (replace) await store.replaceDevice(id, key, board, Math.floor(Date.now() / 1000));
      else await store.addDevice(id, key, board, Math.floor(Date.now() / 1000));
      await store.audit(Math.floor(Date.now() / 1000), id, replace ? "device-replaced" : "device-added", `board=${board}`);
      // Inside the transaction: if the file cannot be put in place, the registry entry is rolled back;
      // and it is on the disk before the entry commits, so a power cut cannot keep the one without the other.
      renameDurably(tmp, out);
    });
  } finally {
    rmSync(tmp, { force: true });
    key.fill(0);
    await store.close();
  }
}

/** What a device reported with its registration, for `device list`: "fw=<id> mem=<used>/<pool>", or
 *  "" when it reported nothing (not registered, or registered with an older gateway). */
export function reportedState(r: DeviceSummary): string {
  if (r.firmware === null && r.memoryUsed === null) return "";
  // The registrar admits only printable ASCII; anything else (an edited database) is not sent to a terminal raw.
  const fw = (r.firmware ?? "-").replace(/[^\x20-\x7e]/g, "?");
  const pool = Object.hasOwn(BOARDS, r.board) ? BOARDS[r.board].vars : undefined;
  const mem = r.memoryUsed === null || r.memoryUsed === 0 ? "?" : String(r.memoryUsed);
  return `fw=${fw} mem=${mem}${pool === undefined ? "" : `/${pool}`}`;
}

/** A board the operator named: an unknown one is their mistake (exit 2). */
function boardId(id: string): string {
  try {
    return getBoard(id).id;
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

/** One device for `device list --json`: what the registry summarises, never its root key (a
 *  DeviceSummary holds none), times as ISO 8601, registration as the human listing words it. */
export function deviceJson(r: DeviceSummary, now: number) {
  const iso = (s: number | null) => (s === null ? null : new Date(s * 1000).toISOString());
  const pool = Object.hasOwn(BOARDS, r.board) ? BOARDS[r.board].vars : null;
  return {
    id: r.id,
    board: r.board,
    createdAt: iso(r.createdAt),
    revokedAt: iso(r.revokedAt),
    joinCounter: r.joinCounter,
    registration: r.revokedAt ? "revoked" : r.expiresAt === null ? "not-registered" : r.expiresAt > now ? "registered" : "expired",
    registeredUntil: iso(r.expiresAt),
    firmware: r.firmware,
    memoryUsed: r.memoryUsed === 0 ? null : r.memoryUsed,
    memoryPool: pool,
  };
}

export async function deviceCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === "--help" || sub === "-h") {
    console.log(HELP);
    return 0;
  }
  if (!sub) throw new UsageError("a subcommand is required: add, list or remove");
  const o = parse(rest, {
    id: { type: "string" },
    out: { type: "string" },
    board: { type: "string" },
    gateway: { type: "string" },
    replace: { type: "boolean" },
    "data-dir": { type: "string" },
    db: { type: "string" },
    json: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  });
  if (o.help) {
    console.log(HELP);
    return 0;
  }
  if (!["add", "list", "remove"].includes(sub)) throw new UsageError(`unknown subcommand "${sub}" (one of add, list, remove)`);
  if (o.json && sub !== "list") throw new UsageError("--json is for list");
  const dataDir = o["data-dir"] ?? DEFAULT_DATA_DIR;
  if (sub === "add") {
    const id = checkDeviceId(o.id);
    if (!o.out) throw new UsageError("--out <file> is required: the provisioning file that will hold the root key");
    const board = boardId(o.board ?? "puckjs");
    const gw = o.gateway ?? `${DEFAULT_LISTEN.host}:${DEFAULT_LISTEN.port}`;
    const warnIfNew = noteNewDataDir(dataDir);
    await addDevice(dataDir, id, board, gw, o.out, !!o.replace, o.db);
    console.log(`added ${id} (${board}) to ${dataDir}; provisioning file ${o.out} (mode 0600) holds its root key`);
    warnIfNew();
    warnIfUnignoredInGitTree(o.out, `the root key of ${id}`);
    return 0;
  }
  if (sub === "list") {
    const store = await existingRegistry(dataDir, o.db);
    try {
      const now = Math.floor(Date.now() / 1000);
      const rows = await store.listDevices();
      if (o.json) {
        printJson({ dataDir, devices: rows.map((r) => deviceJson(r, now)) });
        return 0;
      }
      if (!rows.length) console.log(`no devices in ${dataDir}`);
      for (const r of rows) {
        const reg = r.expiresAt === null ? "not registered" : r.expiresAt > now ? `registered, ${r.expiresAt - now}s left` : "registration expired";
        const state = `${r.revokedAt ? "REVOKED" : reg}`;
        const reported = reportedState(r);
        // The registry may hold ids written by other tools: shown escaped, as everywhere (gateway/log/terminal.ts).
        console.log(forTerminal(`${r.id.padEnd(20)} ${r.board.padEnd(10)} joins=${String(r.joinCounter).padEnd(6)} ${reported ? `${state.padEnd(26)} ${reported}` : state}`));
      }
    } finally {
      await store.close();
    }
    return 0;
  }
  if (sub === "remove") {
    const id = checkDeviceId(o.id);
    const store = await existingRegistry(dataDir, o.db);
    try {
      await store.atomically(async () => {
        if (!(await store.removeDevice(id))) throw new Error(`no device "${id}" in ${dataDir}`);
        await store.audit(Math.floor(Date.now() / 1000), id, "device-removed", "");
      });
    } finally {
      await store.close();
    }
    console.log(`removed ${id}`);
    return 0;
  }
  throw new UsageError(`unknown subcommand "${sub}"`);
}
