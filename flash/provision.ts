// Provisioning over serial: a fresh root key made on the host, written into the device's Storage
// (kp.cfg) and entered in the gateway's registry, as one operation.
//
// Two parties must change together (the device's Storage, the registry's SQLite file) and the serial
// line between them can die at any moment, so this is a small two-phase commit, with the registry as
// the place the decision is recorded:
//
//   prepare   on the device: a journal kp.txn {t: transaction id, id, o: CRC of the old kp.cfg or
//             null, n: CRC of the new one}, a copy of the old kp.cfg as kp.cfg.old, and the new
//             configuration as kp.cfg.new, each checked by the device's CRC. The firmware reads only
//             kp.cfg, so none of this changes what the device does.
//   decide    in the registry: BEGIN IMMEDIATE, the device row added (or replaced, with --replace) and
//             an audit row "device-provisioned ... txn=<t>". Not committed yet.
//   switch    on the device: kp.cfg := kp.cfg.new (a flash-to-flash copy, one line), checked by CRC.
//   commit    COMMIT. This is the decision: an audit row with txn=<t> exists iff the registry has the
//             new key.
//   clean up  on the device: kp.cfg.new, kp.cfg.old, then kp.txn are erased; then E.reboot().
//
// Any failure before COMMIT rolls the registry back (SQLite does it, even if this process dies) and
// undoes the device's part: kp.cfg back to kp.cfg.old's content (or erased if there was none). If the
// line is dead by then, the device keeps its journal, and the next `keyproxy provision` on that device
// (or `--recover`) finishes the job: it reads kp.txn and looks for txn=<t> in the registry's audit log,
// rolling the device forward when it is there and back when it is not. The registry's write lock is
// held only across the switch (two short lines), so a running gateway is delayed, not refused.
//
// The join counter (kp.ctr) is never touched: a new key with a counter that keeps rising is fine (the
// registry starts the new key at 0), while an old key with a reset counter, after a rollback, would
// repeat join nonces.
//
// The key crosses the serial line once, inside a \x10 (echo off) line, and is never printed, logged or
// put into an error message.

import type { Noble } from "../gateway/ble/noble-api.ts";
import { randomBytes } from "node:crypto";
import { getBoard } from "../boards/index.ts";
import { openStore } from "../gateway/gateway.ts";
import type { Store } from "../gateway/registry/store.ts";
import { blePortTarget } from "./ble-line.ts";
import { checkBoard } from "./flash.ts";
import { crc32, EspruinoSerial } from "./serial.ts";

export const ROOT_KEY_BYTES = 16;
export const CONFIG_FILE = "kp.cfg";
export const CONFIG_NEW = "kp.cfg.new";
export const CONFIG_OLD = "kp.cfg.old";
export const JOURNAL_FILE = "kp.txn";

export type ProvisionStep = "connect" | "recover" | "prepare" | "stage" | "verify" | "decide" | "switch" | "commit" | "cleanup" | "reboot";

/** What state a failed provisioning left behind. */
export type FailureState =
  /** nothing was changed anywhere */
  | "unchanged"
  /** the registry and the device are as they were before */
  | "rolled-back"
  /** the registry is as it was (or as decided); the device holds a journal the next run settles */
  | "needs-recovery"
  /** committed and settled on both sides; only the reboot at the end did not happen */
  | "provisioned";

export class ProvisionError extends Error {
  constructor(message: string, readonly state: FailureState) {
    super(message);
  }
}

/** The caller's signal fired (Ctrl-C) and provisioning stopped at a safe point: `state` and the
 *  message say what the registry and the device hold. */
export class ProvisionInterrupted extends ProvisionError {}

/** Thrown inside provisionOnce at a step boundary when the signal has fired; rollBack turns it into a
 *  ProvisionInterrupted. */
class Interruption extends Error {
  constructor() {
    super("interrupted (Ctrl-C)");
  }
}

export interface ProvisionOptions {
  port: string;
  board: string;
  id: string;
  /** Written into kp.cfg as "gw" (TCP boards connect there). */
  gateway: string;
  /** The gateway's data directory: its registry. */
  dataDir: string;
  /** The registry in PostgreSQL (--db) instead of the data directory's SQLite file. */
  database?: string;
  /** Desired registration lifetime in seconds (kp.cfg "life"). Default 3600. */
  lifetime?: number;
  /** Re-provision an id that is already in the registry (its old key stops working). */
  replace?: boolean;
  /** A BLE handset for development: a central that is not keyproxy's gets the REPL (kp.cfg "repl"),
   *  and with it Storage and the root key (docs/SECURITY.md). Default false: the console never goes to
   *  Bluetooth. */
  bleRepl?: boolean;
  /** The Wi-Fi network an ESP32 joins before it opens TCP (kp.cfg "wifi"): like the root key, never
   *  printed or logged. */
  wifi?: { ssid: string; password: string };
  baudRate?: number;
  /** How long the device may take to answer one request (default flash/serial.ts ANSWER_MS, and
   *  FIRST_ANSWER_MS for the first): more for a slow device or link. */
  answerMs?: number;
  /** For a `ble:` port: the BLE library, or a test double at its API (default @stoprocent/noble). */
  noble?: Noble;
  /** Accept that provisioning over a `ble:` port sends the new root key (and a Wi-Fi password) over
   *  the air, unencrypted (Espruino's UART is not, unless bonded): without it such a provisioning is
   *  refused before anything is changed. Recovery sends no key and needs no such consent. */
  keyOverBle?: boolean;
  /** Files as Espruino packets (2v25+) rather than Storage.write lines. Default: over Bluetooth where
   *  the device has them, never over serial (flash/serial.ts OpenOptions.packets). */
  packets?: boolean;
  /** Default true: reboot the device at the end, so its firmware starts with the new identity. */
  reboot?: boolean;
  /** Only settle an interrupted provisioning found on the device; provision nothing new. */
  recoverOnly?: boolean;
  /** How long to wait for the registry's write lock (a running gateway holds it briefly). Default 5000. */
  registryBusyMs?: number;
  /** Called before each step (tests cut the line or lock the registry here). */
  onStep?: (step: ProvisionStep) => void | Promise<void>;
  /** Stop at the next step boundary up to the commit, roll back, and throw ProvisionInterrupted.
   *  After the commit only the reboot is skipped: the clean-up always runs, so that device and
   *  registry agree. */
  signal?: AbortSignal;
}

export interface Recovery {
  id: string;
  outcome: "rolled-forward" | "rolled-back";
}

export interface ProvisionResult {
  id?: string;
  board: string;
  replaced: boolean;
  /** An interrupted provisioning found on the device and settled first. */
  recovered?: Recovery;
}

interface Journal {
  t: string;
  id: string;
  o: number | null;
  n: number;
}

const S = `require("Storage")`;
const q = JSON.stringify;

function isJournal(j: unknown): j is Journal {
  const o = j as Journal;
  return !!o && typeof o.t === "string" && /^[0-9a-f]{16}$/.test(o.t) && typeof o.id === "string" &&
    (o.o === null || typeof o.o === "number") && typeof o.n === "number";
}

/** The decision for a journal's transaction, from the registry's audit log (presumed abort). */
async function committed(store: Store, j: Journal): Promise<boolean> {
  const row = await store.row("SELECT event FROM audit WHERE device_id = ? AND detail LIKE ? ORDER BY id DESC LIMIT 1", [j.id, `%txn=${j.t}%`]);
  return row?.event === "device-provisioned";
}

/** Brings the device's kp.cfg to the journal's decision, then removes the journal and its files. */
async function settleOnDevice(link: EspruinoSerial, j: Journal, forward: boolean): Promise<void> {
  const cur = await link.fileCrc(CONFIG_FILE);
  if (forward && cur !== j.n) {
    if ((await link.fileCrc(CONFIG_NEW)) !== j.n) {
      throw new ProvisionError(`the device lost its new configuration for "${j.id}" (the registry has it): provision it again with --replace`, "needs-recovery");
    }
    await link.call(`${S}.write(${q(CONFIG_FILE)},${S}.read(${q(CONFIG_NEW)}))`);
  } else if (!forward && cur !== j.o) {
    if (j.o === null) {
      await link.call(`${S}.erase(${q(CONFIG_FILE)})`);
    } else {
      if ((await link.fileCrc(CONFIG_OLD)) !== j.o) {
        throw new ProvisionError(`cannot restore the device's previous configuration: ${CONFIG_OLD} is missing or damaged; the journal ${JOURNAL_FILE} is kept`, "needs-recovery");
      }
      await link.call(`${S}.write(${q(CONFIG_FILE)},${S}.read(${q(CONFIG_OLD)}))`);
    }
  }
  const now = await link.fileCrc(CONFIG_FILE);
  if (now !== (forward ? j.n : j.o)) {
    throw new ProvisionError(`the device's ${CONFIG_FILE} does not check out after ${forward ? "finishing" : "undoing"} provisioning; the journal ${JOURNAL_FILE} is kept`, "needs-recovery");
  }
  // The journal goes last: while it exists, the next run knows what these files are.
  await link.call(`${S}.erase(${q(CONFIG_NEW)})`);
  await link.call(`${S}.erase(${q(CONFIG_OLD)})`);
  await link.call(`${S}.erase(${q(JOURNAL_FILE)})`);
}

/** Settles an interrupted provisioning the device still has a journal of, if any. */
async function recover(link: EspruinoSerial, store: Store): Promise<Recovery | undefined> {
  const j = await link.call<unknown>(`${S}.readJSON(${q(JOURNAL_FILE)},1)`);
  if (j === undefined || j === null) return undefined;
  if (!isJournal(j)) throw new ProvisionError(`the device has a ${JOURNAL_FILE} this version does not understand; nothing was changed`, "unchanged");
  const forward = await committed(store, j);
  await settleOnDevice(link, j, forward);
  try {
    await store.audit(Math.floor(Date.now() / 1000), j.id, forward ? "provision-finished" : "provision-undone", `txn=${j.t}`);
  } catch {
    /* a record for the operator only; the device is settled either way */
  }
  return { id: j.id, outcome: forward ? "rolled-forward" : "rolled-back" };
}

export async function provisionDevice(o: ProvisionOptions): Promise<ProvisionResult> {
  const board = getBoard(o.board);
  const step = async (s: ProvisionStep) => {
    if (o.signal?.aborted && (s === "connect" || s === "recover")) {
      throw new ProvisionInterrupted(`provisioning interrupted before anything was changed: no key was made, the registry and the device are as they were; nothing is left to recover`, "unchanged");
    }
    await o.onStep?.(s);
  };
  const store = await openStore(o.dataDir, o.database, { busyTimeoutMs: Math.max(0, Math.floor(o.registryBusyMs ?? 5000)) });
  let link: EspruinoSerial | undefined;
  try {
    if (!o.recoverOnly && blePortTarget(o.port) !== undefined && !o.keyOverBle) {
      throw new ProvisionError(`provisioning over Bluetooth sends the new root key${o.wifi ? " and the Wi-Fi password" : ""} over the air, and Espruino's Bluetooth UART does not encrypt it: anyone in radio range with a BLE sniffer can record it. Provision over serial, or pass --key-over-ble to accept this (at close range, somewhere you trust); nothing was changed`, "unchanged");
    }
    if (!o.recoverOnly && (await store.getDeviceInfo(o.id)) && !o.replace) {
      throw new ProvisionError(`device "${o.id}" is already in the registry; pass --replace to give it a new root key`, "unchanged");
    }
    await step("connect");
    link = await EspruinoSerial.open({ path: o.port, baudRate: o.baudRate ?? board.serial?.baud ?? 115200, answerMs: o.answerMs, firstAnswerMs: o.answerMs, noble: o.noble, packets: o.packets });
    await checkBoard(link, board);

    await step("recover");
    const recovered = await recover(link, store);
    if (o.recoverOnly) return { board: board.id, replaced: false, recovered };

    return { ...(await provisionOnce(link, store, o, board.id, step)), recovered };
  } finally {
    await link?.close();
    await store.close();
  }
}

async function provisionOnce(
  link: EspruinoSerial,
  store: Store,
  o: ProvisionOptions,
  board: string,
  step: (s: ProvisionStep) => Promise<void>,
): Promise<ProvisionResult> {
  const key = randomBytes(ROOT_KEY_BYTES);
  const txn = randomBytes(8).toString("hex");
  const config = Buffer.from(JSON.stringify({ id: o.id, key: key.toString("hex"), gw: o.gateway, life: o.lifetime ?? 3600, ...(o.bleRepl ? { repl: 1 } : {}), ...(o.wifi ? { wifi: o.wifi } : {}) }));
  const j: Journal = { t: txn, id: o.id, o: null, n: crc32(config) };
  let reached: ProvisionStep = "prepare";
  let replaced = false;
  const at = async (s: ProvisionStep) => {
    // Up to the commit (checked before it begins) an interruption rolls both sides back; after it,
    // the clean-up runs to its end and only the reboot is left out.
    if (o.signal?.aborted && s !== "cleanup") {
      if (s === "reboot") throw notRebooted(o);
      throw new Interruption();
    }
    reached = s;
    await step(s);
  };

  try {
    await at("prepare");
    // Journal first, then the backup: from here on, whatever is on the device can be settled.
    j.o = await link.call<number | null>(
      `(function(s){var c=s.read(${q(CONFIG_FILE)});var o=c===undefined?null:E.CRC32(c)>>>0;` +
      `s.write(${q(JOURNAL_FILE)},JSON.stringify({t:${q(txn)},id:${q(o.id)},o:o,n:${j.n}}));` +
      `if(c===undefined)s.erase(${q(CONFIG_OLD)});else s.write(${q(CONFIG_OLD)},c);return o;})(${S})`,
    );

    await at("stage");
    await link.writeFile(CONFIG_NEW, config, undefined, true);

    await at("verify");
    const [staged, backup] = [await link.fileCrc(CONFIG_NEW), await link.fileCrc(CONFIG_OLD)];
    if (staged !== j.n || backup !== j.o) {
      throw new ProvisionError(`verification failed: the device's copy of the ${staged !== j.n ? "new" : "previous"} configuration does not match its CRC`, "rolled-back");
    }

    await at("decide");
    const now = Math.floor(Date.now() / 1000);
    // One transaction from the decision to the commit, across the device's switch: if anything in
    // between fails, the registry entry is rolled back with it (before rollBack below runs).
    await store.atomically(async () => {
      replaced = !!(await store.getDeviceInfo(o.id));
      if (replaced && !o.replace) throw new ProvisionError(`device "${o.id}" was entered in the registry meanwhile; pass --replace to give it a new root key`, "rolled-back");
      if (replaced) await store.replaceDevice(o.id, key, board, now);
      else await store.addDevice(o.id, key, board, now);
      await store.audit(now, o.id, "device-provisioned", `board=${board} replaced=${replaced} txn=${txn}`);

      await at("switch");
      await link.call(`${S}.write(${q(CONFIG_FILE)},${S}.read(${q(CONFIG_NEW)}))`);
      const switched = await link.fileCrc(CONFIG_FILE);
      if (switched !== j.n) throw new ProvisionError(`verification failed: the device's ${CONFIG_FILE} does not match its CRC after the switch`, "rolled-back");

      await at("commit");
    });
  } catch (e) {
    throw await rollBack(link, store, j, reached, e as Error);
  } finally {
    key.fill(0);
    config.fill(0);
  }

  // Committed: from here on, a failure leaves a provisioned device with files to tidy up, and the next
  // run rolls its journal forward.
  try {
    await at("cleanup");
    await settleOnDevice(link, j, true);
  } catch (e) {
    throw new ProvisionError(`provisioned "${o.id}", but could not clean up the device (${(e as Error).message}); run keyproxy provision --port ${o.port} --recover to finish`, "needs-recovery");
  }
  if (o.reboot !== false) {
    await at("reboot");
    await link.command("E.reboot()", 500);
    await link.waitForPrompt(Math.max(5000, link.answerMs)).catch((e: Error) => {
      throw new ProvisionError(`provisioned "${o.id}", but after E.reboot() ${e.message}`, "needs-recovery");
    });
  }
  return { id: o.id, board, replaced };
}

/** Undoes a provisioning that failed before its commit, and says what state it left. The device's
 *  part is undone from the device's own journal (it knows the old CRC even when we never heard it). */
async function rollBack(link: EspruinoSerial, store: Store, j: Journal, reached: ProvisionStep, cause: Error): Promise<ProvisionError> {
  const head = cause instanceof Interruption
    ? `provisioning "${j.id}" interrupted (Ctrl-C) at "${reached}"`
    : `provisioning "${j.id}" failed at "${reached}": ${cause.message}`;
  const Failure = cause instanceof Interruption ? ProvisionInterrupted : ProvisionError;
  try {
    // For the operator; the decision itself is the absence of a committed "device-provisioned" row.
    await store.audit(Math.floor(Date.now() / 1000), j.id, "provision-rolled-back", `step=${reached} txn=${j.t}`);
  } catch {
    /* the registry itself is what failed; its rollback above stands */
  }
  if (!link.open) {
    const device = reached === "switch" || reached === "commit"
      ? `the device could not be reached to undo its part and may already hold the new ${CONFIG_FILE}`
      : `the device's ${CONFIG_FILE} was not changed, but it may keep staging files`;
    return new Failure(`${head}. The registry was rolled back; ${device}: reconnect it and run keyproxy provision --port <tty> --board <id> --recover`, "needs-recovery");
  }
  try {
    await recover(link, store);
  } catch (e) {
    return new Failure(`${head}. The registry was rolled back; undoing the device's part failed too (${(e as Error).message}): run keyproxy provision --recover`, "needs-recovery");
  }
  if (cause instanceof Interruption) {
    return new Failure(`${head}. Rolled back: ${await registryAfterRollBack(store, j.id)}, and the device did not get the new key (its ${CONFIG_FILE} is as it was); nothing is left to recover`, "rolled-back");
  }
  return new Failure(`${head}. Rolled back: the registry and the device are as they were.`, "rolled-back");
}

/** Whether the registry holds an entry for id, after a rollback: none, or the old one (--replace). */
async function registryAfterRollBack(store: Store, id: string): Promise<string> {
  try {
    return (await store.getDeviceInfo(id)) ? `the registry keeps "${id}"'s old entry and key` : `the registry has no entry for "${id}"`;
  } catch {
    return "the registry was rolled back";
  }
}

/** Interrupted after the commit: provisioned on both sides, but not rebooted into it. */
function notRebooted(o: ProvisionOptions): ProvisionInterrupted {
  return new ProvisionInterrupted(`provisioning "${o.id}" interrupted after its commit: "${o.id}" is provisioned (the registry has its new key, and so has the device), but the device was not rebooted: power-cycle it to start its firmware with the new identity`, "provisioned");
}
