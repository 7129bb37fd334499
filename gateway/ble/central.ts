// The BLE central: finds keyproxy handsets by the name provisioning gives them (BLE_NAME_PREFIX and
// the id), connects to their Nordic UART service, and carries each one's device link as a CarriedLink,
// which the gateway's link server takes like a TCP connection (in this process, or through a bridge:
// gateway/ble/bridge-client.ts). The bytes are the link's frames, end-to-end authenticated: the
// central neither reads nor changes them, it only pieces them for the radio (nus.ts).
//
// Slots: an adapter holds only so many connections. Up to maxConnections handsets are connected at
// once; the others wait in a queue, first come first served. While someone waits, the handset that
// has held its slot longest, and at least holdMs, is let go and queued again (rotation), so that no
// handset waits for ever behind others that never leave.
//
// Reconnects: a connection that fails or ends early (before stableMs) counts as a failure, and the
// handset is tried again after an exponential backoff with jitter (backoff.ts); one that lasted is
// tried again at once. A handset not heard for seenWithinMs is out of range and not tried until it
// is heard again.

import { BLE_NAME_PREFIX } from "../../firmware/proto/ble.ts";
import type { Logger } from "../log/logger.ts";
import type { RadioState } from "../monitor/monitor.ts";
import { backoffMs, DEFAULT_BACKOFF, type BackoffSettings } from "./backoff.ts";
import { CarriedLink } from "./carried-link.ts";
import type { Noble, NobleCharacteristic, NoblePeripheral } from "./noble-api.ts";
import { NUS_RX, NUS_SERVICE, NUS_TX, pieces } from "./nus.ts";

export interface CentralSettings {
  /** Handsets connected at once, at most (the adapter's limit; a Linux adapter holds a few to ten). */
  maxConnections: number;
  /** While others wait, a handset keeps its slot at least this long, ms. */
  holdMs: number;
  /** A connection attempt (connect and service discovery) that takes longer has failed, ms. */
  connectTimeoutMs: number;
  /** A handset not heard for longer is out of range: not tried until heard again, ms. */
  seenWithinMs: number;
  /** A connection that lasted this long resets the handset's backoff, ms. */
  stableMs: number;
  backoff: BackoffSettings;
  /** How often the queue, the retries and the rotation are looked at, ms. */
  tickMs: number;
}

export const DEFAULT_CENTRAL: CentralSettings = {
  maxConnections: 4,
  holdMs: 120_000,
  connectTimeoutMs: 15_000,
  seenWithinMs: 30_000,
  stableMs: 30_000,
  backoff: DEFAULT_BACKOFF,
  tickMs: 250,
};

/** Settings with defaults; every number a positive whole one (a clear error, nothing started). */
export function centralSettings(s: Partial<CentralSettings> = {}): CentralSettings {
  const out = { ...DEFAULT_CENTRAL, ...s, backoff: { ...DEFAULT_CENTRAL.backoff, ...s.backoff } };
  const numbers: [string, number][] = [
    ["maxConnections", out.maxConnections], ["holdMs", out.holdMs], ["connectTimeoutMs", out.connectTimeoutMs],
    ["seenWithinMs", out.seenWithinMs], ["stableMs", out.stableMs], ["tickMs", out.tickMs],
    ["backoff.baseMs", out.backoff.baseMs], ["backoff.maxMs", out.backoff.maxMs],
  ];
  for (const [k, v] of numbers) if (!Number.isInteger(v) || v < 1) throw new Error(`BLE central setting ${k} must be a positive whole number, got ${v}`);
  if (out.backoff.baseMs > out.backoff.maxMs) throw new Error("BLE central setting backoff.baseMs is above backoff.maxMs");
  return out;
}

type Phase = "waiting" | "connecting" | "connected";

/** Handsets a central keeps track of at most: names come from the air, and anyone in range can
 *  advertise as many "kp-" peripherals as they like. Beyond it, new ones are ignored (said once). */
export const MAX_HANDSETS = 1024;

/** One handset the central has heard. */
interface Handset {
  peripheral: NoblePeripheral;
  name: string;
  rssi: number;
  lastSeen: number;
  phase: Phase;
  /** When it joined the queue (its place in it). */
  queuedAt: number;
  connectedAt: number;
  failures: number;
  /** Not tried before this time (its backoff). */
  retryAt: number;
  /** Let go for another's turn: its disconnect is no failure. */
  rotated: boolean;
  link?: CarriedLink;
  /** Counts the connection attempts: the events of an older attempt are ignored. */
  attempt: number;
}

export interface CentralDeps {
  noble: Noble;
  log: Logger;
  /** A handset's link is up: hand it to the link server (or the bridge). */
  onLink: (link: CarriedLink, radio: RadioState) => void;
  /** A handset's radio state changed (connected, disconnected, a new RSSI). */
  onRadio?: (radio: RadioState) => void;
  settings?: Partial<CentralSettings>;
  /** "ble" in the gateway; a bridge's name in a bridge. */
  via?: string;
  nowMs?: () => number;
  random?: () => number;
}

/** The central of the gateway itself, as monitoring's "via" says it (a bridge's is its name). */
export const OWN_CENTRAL = "ble";

/** A carried link's address, for logs and the link server's per-source key (no colon in it:
 *  limits.ts): "ble <address>" from the gateway's own central, "bridge <name> ble <address>" from a
 *  bridge's. */
export function linkAddress(via: string, address: string): string {
  const a = address.replace(/:/g, "");
  return via === OWN_CENTRAL ? `ble ${a}` : `bridge ${via} ble ${a}`;
}

export class BleCentral {
  readonly settings: CentralSettings;
  private readonly handsets = new Map<string, Handset>();
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private saidFull = false;
  private readonly nowMs: () => number;
  private readonly random: () => number;
  private readonly via: string;
  private readonly discover = (p: NoblePeripheral) => this.heard(p);

  constructor(private readonly d: CentralDeps) {
    this.settings = centralSettings(d.settings);
    this.nowMs = d.nowMs ?? Date.now;
    this.random = d.random ?? Math.random;
    this.via = d.via ?? OWN_CENTRAL;
  }

  /** Scans (duplicates included: each advertisement renews a handset's RSSI and last-seen time). The
   *  adapter must be powered on already (load-noble.ts waits for it). */
  async start(): Promise<void> {
    this.d.noble.on("discover", this.discover);
    await this.d.noble.startScanningAsync([], true);
    this.tick();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.d.noble.removeListener("discover", this.discover);
    await this.d.noble.stopScanningAsync().catch(() => undefined);
    await Promise.all([...this.handsets.values()].map((h) => this.letGo(h)));
    this.d.noble.stop?.();
  }

  /** Every handset heard so far, as monitoring shows it. */
  radios(): RadioState[] {
    return [...this.handsets.values()].map((h) => this.radio(h));
  }

  /** How many handsets are connected now. */
  get connectedCount(): number {
    return [...this.handsets.values()].filter((h) => h.phase === "connected").length;
  }

  private radio(h: Handset): RadioState {
    return { name: h.name, address: h.peripheral.id, via: this.via, connected: h.phase === "connected", rssi: h.rssi, lastSeen: new Date(h.lastSeen).toISOString() };
  }

  private heard(p: NoblePeripheral): void {
    const name = p.advertisement?.localName;
    if (this.stopped || typeof name !== "string" || !name.startsWith(BLE_NAME_PREFIX)) return;
    const now = this.nowMs();
    let h = this.handsets.get(p.id);
    if (!h) {
      if (this.handsets.size >= MAX_HANDSETS) {
        if (!this.saidFull) this.d.log.warn("ble-too-many-handsets", { reason: `${MAX_HANDSETS} handsets heard already; ignoring new ones`, address: p.id });
        this.saidFull = true;
        return;
      }
      h = { peripheral: p, name, rssi: p.rssi, lastSeen: now, phase: "waiting", queuedAt: now, connectedAt: 0, failures: 0, retryAt: 0, rotated: false, attempt: 0 };
      this.handsets.set(p.id, h);
      this.d.log.info("ble-handset-seen", { handset: name, address: p.id, rssi: p.rssi });
    } else {
      h.name = name;
      h.rssi = p.rssi;
      h.lastSeen = now;
      if (h.phase === "waiting") h.peripheral = p;
    }
    this.d.onRadio?.(this.radio(h));
  }

  private tick(): void {
    if (this.stopped) return;
    try {
      this.schedule();
    } finally {
      this.timer = setTimeout(() => this.tick(), this.settings.tickMs);
      this.timer.unref();
    }
  }

  /** Fills free slots from the queue; with none free and someone waiting, rotates. */
  private schedule(): void {
    const now = this.nowMs();
    const all = [...this.handsets.values()];
    const ready = all
      .filter((h) => h.phase === "waiting" && h.retryAt <= now && now - h.lastSeen <= this.settings.seenWithinMs)
      .sort((a, b) => a.queuedAt - b.queuedAt);
    let busy = all.filter((h) => h.phase !== "waiting").length;
    for (const h of ready) {
      if (busy >= this.settings.maxConnections) break;
      busy++;
      void this.connect(h);
    }
    if (ready.length > 0 && busy >= this.settings.maxConnections) this.rotate(now, all);
  }

  /** Lets the handset that has held its slot longest go, if it has held it holdMs. */
  private rotate(now: number, all: Handset[]): void {
    const longest = all.filter((h) => h.phase === "connected" && !h.rotated).sort((a, b) => a.connectedAt - b.connectedAt)[0];
    if (!longest || now - longest.connectedAt < this.settings.holdMs) return;
    longest.rotated = true;
    this.d.log.info("ble-rotated", { handset: longest.name, address: longest.peripheral.id, heldMs: now - longest.connectedAt });
    void this.letGo(longest);
  }

  private async connect(h: Handset): Promise<void> {
    const attempt = ++h.attempt;
    h.phase = "connecting";
    h.rotated = false;
    const p = h.peripheral;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no connection within ${this.settings.connectTimeoutMs} ms`)), this.settings.connectTimeoutMs);
    });
    try {
      const { rx, tx } = await Promise.race([this.open(p), timeout]);
      if (h.attempt !== attempt || this.stopped) throw new Error("stopped");
      this.up(h, rx, tx);
    } catch (e) {
      if (h.attempt !== attempt) return;
      p.removeAllListeners("disconnect");
      await p.disconnectAsync().catch(() => undefined);
      if (this.stopped) return;
      this.failed(h, `connecting failed: ${(e as Error).message}`);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Connects and finds the UART's two characteristics, subscribed to the handset's TX. */
  private async open(p: NoblePeripheral): Promise<{ rx: NobleCharacteristic; tx: NobleCharacteristic }> {
    await p.connectAsync();
    const { characteristics } = await p.discoverSomeServicesAndCharacteristicsAsync([NUS_SERVICE], [NUS_RX, NUS_TX]);
    const rx = characteristics.find((c) => c.uuid === NUS_RX);
    const tx = characteristics.find((c) => c.uuid === NUS_TX);
    if (!rx || !tx) throw new Error("no Nordic UART service (not a keyproxy handset, or not Espruino)");
    await tx.subscribeAsync();
    return { rx, tx };
  }

  private up(h: Handset, rx: NobleCharacteristic, tx: NobleCharacteristic): void {
    const p = h.peripheral;
    const attempt = h.attempt;
    h.phase = "connected";
    h.connectedAt = this.nowMs();
    // Writes go out one after another, in order, each a piece that fits the MTU.
    let writing: Promise<void> = Promise.resolve();
    const link = new CarriedLink(linkAddress(this.via, p.id), {
      write: (bytes) => {
        const copy = new Uint8Array(bytes);
        writing = writing.then(async () => {
          for (const piece of pieces(copy, p.mtu)) {
            if (link.isClosed) return;
            await rx.writeAsync(Buffer.from(piece), false);
          }
        }).catch((e: Error) => {
          this.d.log.warn("ble-write-failed", { handset: h.name, address: p.id, reason: e.message });
          link.destroy();
        });
      },
      // The gateway let the link go (it refused the handset, or stops): so does the radio.
      close: () => void this.letGo(h),
    });
    h.link = link;
    tx.on("data", (data: Buffer) => {
      if (h.attempt !== attempt) return;
      h.lastSeen = this.nowMs();
      link.received(new Uint8Array(data));
    });
    p.once("disconnect", (reason) => this.down(h, attempt, reason));
    this.d.log.info("ble-connected", { handset: h.name, address: p.id, rssi: h.rssi, mtu: p.mtu ?? 23 });
    const radio = this.radio(h);
    this.d.onRadio?.(radio);
    this.d.onLink(link, radio);
  }

  /** The radio connection ended: the handset left, walked out of range, was rotated or let go. */
  private down(h: Handset, attempt: number, reason: number | string): void {
    if (h.attempt !== attempt || h.phase !== "connected") return;
    h.link?.carrierClosed();
    h.link = undefined;
    const lasted = this.nowMs() - h.connectedAt;
    if (h.rotated) {
      h.phase = "waiting";
      h.queuedAt = this.nowMs();
      h.retryAt = 0;
      this.d.log.info("ble-disconnected", { handset: h.name, address: h.peripheral.id, reason: "rotated: another handset's turn", connectedMs: lasted });
      this.d.onRadio?.(this.radio(h));
      return;
    }
    if (lasted >= this.settings.stableMs) h.failures = 0;
    this.failed(h, `disconnected (${reason}) after ${lasted} ms`);
  }

  private failed(h: Handset, reason: string): void {
    h.failures++;
    const wait = backoffMs(h.failures, this.settings.backoff, this.random);
    h.phase = "waiting";
    h.retryAt = this.nowMs() + wait;
    h.queuedAt = this.nowMs();
    h.link?.carrierClosed();
    h.link = undefined;
    this.d.log.info("ble-disconnected", { handset: h.name, address: h.peripheral.id, reason, failures: h.failures, retryInMs: wait });
    this.d.onRadio?.(this.radio(h));
  }

  /** Drops the radio connection; its "disconnect" event does the rest. */
  private async letGo(h: Handset): Promise<void> {
    if (h.phase === "waiting") return;
    await h.peripheral.disconnectAsync().catch(() => undefined);
  }
}
