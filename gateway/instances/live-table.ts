// What the instances of one domain share in its database about the present (migrations.ts, version
// 5): where each linked device is (live_links), and each SA's parties and home, the instance that runs
// it (live_sessions). An SPI is claimed here before it is handed out, so two instances never give the
// same one; when an instance is gone, one other takes its SAs over in one statement.

import type { Store } from "../registry/store.ts";
import type { SqlRow } from "../registry/sql.ts";
import type { LiveSession } from "../sessions/shared.ts";

export type { LiveSession };

const COLUMNS = "spi, initiator, responder, app, suite, expires_at, up, home";

function fromRow(r: SqlRow): LiveSession {
  return {
    spi: Number(r.spi),
    initiator: String(r.initiator),
    responder: String(r.responder),
    app: String(r.app),
    suite: Number(r.suite),
    expiresAt: Number(r.expires_at),
    up: Number(r.up) === 1,
    home: String(r.home),
  };
}

export class LiveTable {
  constructor(private readonly store: Store, readonly instance: string) {}

  /** The device's link is here now (whichever instance had it before). */
  async linked(dev: string, now: number): Promise<void> {
    await this.store.query("INSERT INTO live_links (device_id, instance, since) VALUES (?, ?, ?) ON CONFLICT(device_id) DO UPDATE SET instance = excluded.instance, since = excluded.since", [dev, this.instance, now]);
  }

  /** The device's link here ended (a link it has at another instance since stays). */
  async unlinked(dev: string): Promise<void> {
    await this.store.query("DELETE FROM live_links WHERE device_id = ? AND instance = ?", [dev, this.instance]);
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
    const r = await this.store.query(`INSERT INTO live_sessions (${COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(spi) DO NOTHING`, [s.spi, s.initiator, s.responder, s.app, s.suite, s.expiresAt, s.up ? 1 : 0, s.home]);
    return r.changes === 1;
  }

  async markUp(spi: number): Promise<void> {
    await this.store.query("UPDATE live_sessions SET up = 1 WHERE spi = ? AND home = ?", [spi, this.instance]);
  }

  /** The SA ended (only its home removes it). */
  async remove(spi: number): Promise<void> {
    await this.store.query("DELETE FROM live_sessions WHERE spi = ? AND home = ?", [spi, this.instance]);
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

  /** The SAs whose home is not among `online` (their instance died while no other watched): to take over. */
  async orphanHomes(online: string[]): Promise<string[]> {
    const rows = (await this.store.query("SELECT DISTINCT home FROM live_sessions")).rows;
    return rows.map((r) => String(r.home)).filter((h) => !online.includes(h));
  }
}
