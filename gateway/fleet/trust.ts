// What a gateway trusts across the fleet, and how it learns that this changed (docs/FLEET.md): an
// in-process verifier (seed 003 Fig. 3) holding the newest fleet revocation list, the certificate
// checker that the interlink and the key exchange consult, and the list's distribution: a retained
// MQTT message on keyproxy-cose/v1/fleet/<fleet-id>/revocation, published by `keyproxy fleet ... --mqtt`.
//
// Nothing on that topic is trusted: a list is taken only if the fleet CA signed it, for this fleet,
// with a serial above the one held (gateway/fleet/fleet.ts acceptRevocationList), so a broker can withhold
// a list but never forge or roll one back. Withholding is bounded by the held list's next update:
// from then on the verifier answers "revocation-unknown" and every session across gateways ends at
// its next check (gateway/crossgw/cross-gateway.ts). The list taken last is kept in <data-dir>/revocation.cose, so
// a restarted gateway starts from it and never accepts an older one.
//
// Every gateway also publishes the list it holds, retained, when it attaches and at every reconnect
// (a broker restarted without persistence has forgotten it), and again whenever an older list shows
// up on the topic (another gateway's republished one, or a replay): the newest list wins wherever it
// is held, and a gateway that starts later still finds it.

import { randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import mqtt, { type MqttClient } from "mqtt";
import { generateEd25519, type Ed25519KeyPair } from "../crypto/ed25519.ts";
import { writeFileDurably } from "../files/durable.ts";
import { Fleet, FleetError, readRevocationListUnverified, type RevocationList, type TrustAnchor } from "./fleet.ts";
import type { Interlink } from "./interlink.ts";
import type { Logger } from "../log/logger.ts";
import { CertificateChecker, localSource, remoteSource, Verifier } from "./verifier.ts";

export const REVOCATION_TOPIC_ROOT = "keyproxy-cose/v1/fleet";
export const revocationTopic = (fleetId: string): string => `${REVOCATION_TOPIC_ROOT}/${fleetId}/revocation`;
/** The newest list this gateway took, in its data directory. */
export const HELD_LIST_FILE = "revocation.cose";

export interface FleetTrustOptions {
  dataDir: string;
  anchor: TrustAnchor;
  log: Logger;
  /** Seconds since the epoch. */
  now: () => number;
  /** Names the verifier in its signed answers (the gateway id). */
  verifierId: string;
  /** The verifier's answer key; default a fresh one per start (its answers stay in this process). */
  verifierKey?: Ed25519KeyPair;
  /** Longest a "good" answer is cached, seconds (the verifier's default: 300). */
  maxAnswerLifetime?: number;
  /** A lone development gateway's own fleet: this gateway is its CA and re-signs the list itself. */
  devFleet?: Fleet;
}

export class FleetTrust {
  readonly verifier: Verifier;
  readonly checker: CertificateChecker;
  private held: RevocationList | undefined;
  /** The held list as signed: what this gateway republishes. */
  private heldBytes: Uint8Array | undefined;
  private readonly listeners = new Set<(list: RevocationList) => void>();
  private link: Interlink | undefined;
  private refreshTimer: NodeJS.Timeout | undefined;
  /** Checkers asking a verifier elsewhere (remoteChecker): their caches go with every newer list too. */
  private readonly remote: CertificateChecker[] = [];

  constructor(private readonly opts: FleetTrustOptions) {
    const key = opts.verifierKey ?? generateEd25519();
    this.verifier = new Verifier({ anchor: opts.anchor, key, verifierId: opts.verifierId, maxAnswerLifetime: opts.maxAnswerLifetime });
    this.checker = new CertificateChecker({ source: localSource(this.verifier), verifierPublicKey: key.publicKey });
    const file = join(opts.dataDir, HELD_LIST_FILE);
    if (existsSync(file)) this.offer(new Uint8Array(readFileSync(file)), "file");
    if (opts.devFleet) this.offer(opts.devFleet.signedList(), "dev-fleet");
  }

  /** The revocation list held now, if any. */
  get list(): RevocationList | undefined {
    return this.held;
  }

  get topic(): string {
    return revocationTopic(this.opts.anchor.fleetId);
  }

  /** Calls fn with every newer list taken from now on; returns the function that stops it. */
  onList(fn: (list: RevocationList) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /**
   * Offers a signed list from `source` (a file, MQTT, the dev fleet). A newer one is kept (on disk
   * too), the checker's cached answers are dropped, and the listeners hear of it: true. The list held
   * already (a redelivery) is ignored, and anything else refused with a log line and no change: false.
   */
  offer(bytes: Uint8Array, source: string): boolean {
    const { log } = this.opts;
    let list: RevocationList;
    try {
      list = this.verifier.updateRevocationList(bytes);
    } catch (e) {
      const rollback = e instanceof FleetError && e.code === "rollback";
      if (rollback && this.held && sameSerial(bytes, this.held.serial)) return false;
      log.warn("revocation-list-rejected", { source, reason: e instanceof Error ? e.message : String(e) });
      // An older list on the topic may have replaced the newest as the retained one: put ours back.
      if (rollback && source === "mqtt") void this.publishHeld();
      return false;
    }
    this.held = list;
    this.heldBytes = new Uint8Array(bytes);
    this.link?.republishOnReconnect(this.topic, this.heldBytes);
    if (source !== "file") {
      try {
        writeFileDurably(join(this.opts.dataDir, HELD_LIST_FILE), bytes, 0o644);
      } catch (e) {
        log.error("revocation-list-not-saved", { reason: e instanceof Error ? e.message : String(e) });
      }
    }
    this.checker.clear();
    for (const c of this.remote) c.clear();
    log.info("revocation-list", {
      source, serial: list.serial, nextUpdate: new Date(list.nextUpdate * 1000).toISOString(),
      devices: list.devices.length, gateways: list.gateways.length, certIds: list.certIds.length,
    });
    for (const fn of this.listeners) {
      try {
        fn(list);
      } catch (e) {
        log.error("revocation-list-listener-failed", { reason: e instanceof Error ? e.message : String(e) });
      }
    }
    return true;
  }

  /**
   * A checker that asks the verifier `verifierId` on its own (`keyproxy verifier`) over the interlink.
   * Its answer key is its certified signing key, judged here by the local verifier (so the remote one
   * never vouches for itself); its answers count only if made from a list at least as new as the one
   * held here, and its cache is dropped with every newer list, as the local one is.
   */
  async remoteChecker(link: Interlink, verifierId: string): Promise<CertificateChecker> {
    const peer = await link.peer(verifierId);
    const checker = new CertificateChecker({ source: remoteSource(link, verifierId), verifierPublicKey: peer.signingKey, minSerial: () => this.held?.serial ?? 0 });
    this.remote.push(checker);
    return checker;
  }

  /** Listens for lists on the fleet's retained topic and publishes the list held (again at every
   *  reconnect); a development gateway also re-signs its own at half its lifetime. */
  async attach(link: Interlink): Promise<void> {
    this.link = link;
    await link.watch(this.topic, (bytes) => void this.offer(bytes, "mqtt"));
    await this.publishHeld();
    if (this.opts.devFleet) this.scheduleRefresh();
  }

  close(): void {
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = undefined;
    this.link = undefined;
  }

  /** The held list, retained, on the fleet's topic (never fails: a broker away gets it at reconnect). */
  private async publishHeld(): Promise<void> {
    if (!this.link || !this.heldBytes) return;
    await this.link.publishRetained(this.topic, this.heldBytes).catch((e: unknown) => {
      this.opts.log.warn("revocation-list-not-published", { reason: e instanceof Error ? e.message : String(e) });
    });
  }

  /** Only for a development fleet, whose CA key this gateway holds. */
  private scheduleRefresh(): void {
    const fleet = this.opts.devFleet;
    if (!fleet || !this.held) return;
    const half = Math.max(60, Math.floor((this.held.nextUpdate - this.held.issuedAt) / 2));
    const dueIn = Math.max(1, this.held.issuedAt + half - this.opts.now());
    this.refreshTimer = setTimeout(() => {
      try {
        this.offer(fleet.revoke({}, this.opts.now()), "dev-fleet");
        void this.publishHeld();
      } catch (e) {
        this.opts.log.error("revocation-list-not-refreshed", { reason: e instanceof Error ? e.message : String(e) });
      }
      this.scheduleRefresh();
    }, Math.min(dueIn, 0x7fffffff / 1000) * 1000);
    this.refreshTimer.unref();
  }
}

function sameSerial(bytes: Uint8Array, serial: number): boolean {
  try {
    return readRevocationListUnverified(bytes).serial === serial;
  } catch {
    return false;
  }
}

/** Publishes a signed list, retained, where every gateway of the fleet listens (the fleet CLI's
 *  --mqtt). Connects with MQTT 5, or 3.1.1 where the broker refuses 5. */
export async function publishRevocationList(url: string, fleetId: string, signed: Uint8Array): Promise<void> {
  const connect = (protocolVersion: 4 | 5) => mqtt.connectAsync(url, { protocolVersion, reconnectPeriod: 0, connectTimeout: 5000, clientId: `kp-fleet-${randomBytes(4).toString("hex")}` });
  let client: MqttClient;
  try {
    client = await connect(5);
  } catch (e) {
    if ((e as { code?: unknown }).code !== 1) throw e; // 1: unacceptable protocol version
    client = await connect(4);
  }
  try {
    await client.publishAsync(revocationTopic(fleetId), Buffer.from(signed), { qos: 1, retain: true });
  } finally {
    await client.endAsync();
  }
}
