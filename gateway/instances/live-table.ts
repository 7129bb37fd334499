// What the instances of one domain share in its database about the present (migrations.ts, versions
// 5 and 6): where each linked device is (live_links), and each SA's parties and home, the instance
// that runs it, with what another instance needs to run an SA across domains on (live_sessions). An
// SPI is claimed here before it is handed out, so two instances never give the same one; when an
// instance is gone, one other takes its SAs over in one statement. A group key's SPI is claimed here
// too (isGroupKeyRow: no initiator, the group's full name as responder), so that no pairwise SA takes
// it and every instance can route its frames to the instance keeping the group. These rows are
// rewritten as things change, so their writes do not wait for the disk (Store.queryRelaxed): a
// PostgreSQL crash may lose the last moment of them, never a registry record (docs/SCALING.md).

import * as cbor from "../encoding/cbor.ts";
import type { Store } from "../registry/store.ts";
import type { SqlRow } from "../registry/sql.ts";
import type { AcrossDetail, LiveSession } from "../sessions/shared.ts";

export type { AcrossDetail, LiveSession };

const COLUMNS = "spi, initiator, responder, app, suite, expires_at, up, home, across, peer_instance";

function fromRow(r: SqlRow): LiveSession {
  const s: LiveSession = {
    spi: Number(r.spi),
    initiator: String(r.initiator),
    responder: String(r.responder),
    app: String(r.app),
    suite: Number(r.suite),
    expiresAt: Number(r.expires_at),
    up: Number(r.up) === 1,
    home: String(r.home),
  };
  const across = r.across == null ? undefined : decodeAcross(r.across, r.peer_instance);
  if (across) s.across = across;
  return s;
}

/** An SA across domains' detail as its row keeps it: a CBOR array (the peer instance has a column of
 *  its own, since kp.x.moved changes it). */
export function encodeAcross(a: AcrossDetail): Uint8Array {
  return cbor.encode([1, a.role, a.lifetime, a.limit, a.ownCert, a.peerCert, a.peerGatewayCert]);
}

const MAX_CERT = 4096;
const isCount = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v > 0;
const isCert = (v: unknown): v is Uint8Array => v instanceof Uint8Array && v.length > 0 && v.length <= MAX_CERT;

/** The detail back, or undefined when the row's bytes are not one (written by another version, or
 *  damaged): such an SA is ended, not run on half-known terms. */
export function decodeAcross(raw: unknown, peerInstance: unknown): AcrossDetail | undefined {
  let v: unknown;
  try {
    v = cbor.decode(raw instanceof Uint8Array ? raw : new Uint8Array(0));
  } catch {
    return undefined;
  }
  if (!Array.isArray(v) || v.length !== 7 || v[0] !== 1) return undefined;
  const [, role, lifetime, limit, ownCert, peerCert, peerGatewayCert] = v as unknown[];
  if ((role !== 0 && role !== 1) || !isCount(lifetime) || !isCount(limit) || !isCert(ownCert) || !isCert(peerCert) || !isCert(peerGatewayCert)) return undefined;
  const a: AcrossDetail = { role, lifetime, limit, ownCert, peerCert, peerGatewayCert };
  if (typeof peerInstance === "string" && peerInstance !== "") a.peerInstance = peerInstance;
  return a;
}

/** A group key's row: claimed by the instance keeping the domain's groups (gateway/sessions/groups.ts),
 *  with no initiator (a device id is never empty) and the group's full name as responder. */
export const isGroupKeyRow = (r: { initiator: string }): boolean => r.initiator === "";

/** The initiator and responder of a row claimed ahead of need (LiveTable.reserve), whose SA is not
 *  known yet: never a device id (those have no "*"), nor a group key's "". Such a row routes nothing
 *  (no device is party to it) and is never up, so a takeover deletes it with the unconfirmed ones. */
export const RESERVED = "*";

export class LiveTable {
  constructor(private readonly store: Store, readonly instance: string) {}

  /** The device's link is here now (whichever instance had it before). */
  async linked(dev: string, now: number): Promise<void> {
    await this.store.queryRelaxed("INSERT INTO live_links (device_id, instance, since) VALUES (?, ?, ?) ON CONFLICT(device_id) DO UPDATE SET instance = excluded.instance, since = excluded.since", [dev, this.instance, now]);
  }

  /** The device's link here ended (a link it has at another instance since stays). */
  async unlinked(dev: string): Promise<void> {
    await this.store.queryRelaxed("DELETE FROM live_links WHERE device_id = ? AND instance = ?", [dev, this.instance]);
  }

  /** Every linked device and its instance. */
  async links(): Promise<Map<string, string>> {
    const rows = (await this.store.query("SELECT device_id, instance FROM live_links")).rows;
    return new Map(rows.map((r) => [String(r.device_id), String(r.instance)]));
  }

  /** A gone instance's links are no more; the devices they were (whose SAs now wait for them). */
  async forgetLinksOf(instance: string): Promise<string[]> {
    const rows = (await this.store.query("DELETE FROM live_links WHERE instance = ? RETURNING device_id", [instance])).rows;
    return rows.map((r) => String(r.device_id));
  }

  /** Claims s.spi for a new SA homed here: false when the domain holds that SPI already. */
  async claim(s: LiveSession): Promise<boolean> {
    const across = s.across ? encodeAcross(s.across) : null;
    const r = await this.store.queryRelaxed(`INSERT INTO live_sessions (${COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(spi) DO NOTHING`, [s.spi, s.initiator, s.responder, s.app, s.suite, s.expiresAt, s.up ? 1 : 0, s.home, across, s.across?.peerInstance ?? null]);
    return r.changes === 1;
  }

  /** Claims, ahead of need, those of spis that the domain does not hold: rows homed here, never up,
   *  naming no party (RESERVED) until assign() gives one its SA. Resolves with the SPIs claimed. */
  async reserve(spis: number[], expiresAt: number): Promise<number[]> {
    if (!spis.length) return [];
    const values = spis.map(() => "(?, ?, ?, ?, ?, ?, ?, ?)").join(", ");
    const params = spis.flatMap((spi) => [spi, RESERVED, RESERVED, "", 0, expiresAt, 0, this.instance]);
    const r = await this.store.queryRelaxed(`INSERT INTO live_sessions (spi, initiator, responder, app, suite, expires_at, up, home) VALUES ${values} ON CONFLICT(spi) DO NOTHING RETURNING spi`, params);
    return r.rows.map((x) => Number(x.spi));
  }

  /** A reserved SPI's row gets its SA's terms; false when it is no longer this instance's reservation
   *  (another instance took this one's rows over while it seemed gone). */
  async assign(s: LiveSession): Promise<boolean> {
    const r = await this.store.queryRelaxed("UPDATE live_sessions SET initiator = ?, responder = ?, app = ?, suite = ?, expires_at = ? WHERE spi = ? AND home = ? AND initiator = ?", [s.initiator, s.responder, s.app, s.suite, s.expiresAt, s.spi, this.instance, RESERVED]);
    return r.changes === 1;
  }

  /** This instance's reservations go (it stops). */
  async releaseReserved(): Promise<void> {
    await this.store.queryRelaxed("DELETE FROM live_sessions WHERE home = ? AND initiator = ?", [this.instance, RESERVED]);
  }

  /** The peer domain's process that runs an SA across domains with us is now peerInstance. */
  async peerMoved(spi: number, peerInstance: string): Promise<void> {
    await this.store.queryRelaxed("UPDATE live_sessions SET peer_instance = ? WHERE spi = ? AND home = ?", [peerInstance, spi, this.instance]);
  }

  /** A reservation whose terms were never written stays down: a takeover must not run an SA of no parties. */
  async markUp(spi: number): Promise<void> {
    await this.store.queryRelaxed("UPDATE live_sessions SET up = 1 WHERE spi = ? AND home = ? AND initiator <> ?", [spi, this.instance, RESERVED]);
  }

  /** The SA ended (only its home removes it). */
  async remove(spi: number): Promise<void> {
    await this.store.queryRelaxed("DELETE FROM live_sessions WHERE spi = ? AND home = ?", [spi, this.instance]);
  }

  async session(spi: number): Promise<LiveSession | undefined> {
    const r = await this.store.row(`SELECT ${COLUMNS} FROM live_sessions WHERE spi = ?`, [spi]);
    return r && fromRow(r);
  }

  /** The SPIs of the SAs this instance runs, as the registry says. */
  async spisHomedHere(): Promise<number[]> {
    return (await this.store.query("SELECT spi FROM live_sessions WHERE home = ?", [this.instance])).rows.map((r) => Number(r.spi));
  }

  /** Whether the SA is still this instance's to run (another may have taken it over while the broker
   *  thought this one gone). */
  async stillHome(spi: number): Promise<boolean> {
    const r = await this.store.row("SELECT home FROM live_sessions WHERE spi = ?", [spi]);
    return r?.home === this.instance;
  }

  /** Takes over the SAs of a gone instance: the confirmed ones become this instance's; the ones still
   *  being confirmed go (their seed died with their home). One statement each, so of several
   *  instances taking over at once each SA goes to exactly one. */
  async takeOver(gone: string): Promise<LiveSession[]> {
    return this.store.atomically(async () => {
      await this.store.query("DELETE FROM live_sessions WHERE home = ? AND up = 0", [gone]);
      const rows = (await this.store.query(`UPDATE live_sessions SET home = ? WHERE home = ? RETURNING ${COLUMNS}`, [this.instance, gone])).rows;
      return rows.map(fromRow);
    });
  }

  /** Group keys in the table, by group (full name): the newest SPI of each, to be replaced by the
   *  keys of a new keeper of the domain's groups (other domains' groups are there too: the keeper
   *  looks up only its own). */
  async groupKeys(): Promise<Map<string, number>> {
    const rows = (await this.store.query("SELECT spi, responder FROM live_sessions WHERE initiator = '' ORDER BY expires_at")).rows;
    return new Map(rows.map((r) => [String(r.responder), Number(r.spi)]));
  }

  /** Whether a key of the domain's own groups in the table is another instance's (the rows of other
   *  domains' group keys are routes to devices of ours, at whichever instance took the key). */
  async groupKeysHomedElsewhere(domain: string): Promise<boolean> {
    const rows = (await this.store.query("SELECT responder FROM live_sessions WHERE initiator = '' AND home <> ?", [this.instance])).rows;
    return rows.some((r) => String(r.responder).endsWith(`@${domain}`));
  }

  /** The group's keys other than `keep` are replaced: their rows go (an earlier keeper's, whichever
   *  instance took them over since). */
  async forgetGroupKeys(group: string, keep: number[]): Promise<void> {
    const rows = (await this.store.query("SELECT spi FROM live_sessions WHERE initiator = '' AND responder = ?", [group])).rows;
    for (const r of rows) if (!keep.includes(Number(r.spi))) await this.store.queryRelaxed("DELETE FROM live_sessions WHERE spi = ? AND initiator = ''", [Number(r.spi)]);
  }

  /** The SAs whose home is not among `online` (their instance died while no other watched): to take over. */
  async orphanHomes(online: string[]): Promise<string[]> {
    const rows = (await this.store.query("SELECT DISTINCT home FROM live_sessions")).rows;
    return rows.map((r) => String(r.home)).filter((h) => !online.includes(h));
  }
}
