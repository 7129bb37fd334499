// What the link server allows anyone who can reach its port (docs/OPERATIONS.md, "Limits"): how long
// a connection may stay unjoined, how many connections there may be, how much bad input one connection
// may send, and how often one source may fail to join as one device. Authenticated devices are bounded
// by the registry (one live link per device); these limits are about everyone else.

import { readFileSync } from "node:fs";

export interface LinkLimits {
  /** An unjoined connection must have joined within this long after it was accepted, ms. Bounds a
   *  JoinRequest trickled a byte at a time, and any other way of holding a slot without joining. */
  joinDeadlineMs: number;
  /** An unjoined connection that sends nothing for this long is closed, ms. */
  unjoinedIdleMs: number;
  /** Connections at once, joined or not. Keep it under the process's descriptor limit (ulimit -n). */
  maxConnections: number;
  /** Unjoined connections at once; when full, the oldest of them makes room for a newcomer. */
  maxUnjoined: number;
  /** Unjoined connections at once from one source address (an IPv4 address, an IPv6 /64). Joined
   *  connections do not count: many devices behind one NAT or relay are normal. */
  maxUnjoinedPerSource: number;
  /** Connections from this machine (127.0.0.0/8, ::1) are not held to maxUnjoinedPerSource: a BLE
   *  bridge or a simulator on the gateway brings many handsets through one address at once, and
   *  whoever can connect from the gateway's own machine can do worse than fill the port. */
  exemptLoopback: boolean;
  /** Bad input one connection may send before it is closed: malformed, unauthenticated or unexpected
   *  frames, rejected joins and frames whose CRC does not match. */
  maxBadFrames: number;
  /** Failed joins naming one device id from one source before that source must wait to try again. */
  joinFailuresBeforeBackoff: number;
  /** The first wait, ms; it doubles with each further failure up to joinBackoffMaxMs. */
  joinBackoffBaseMs: number;
  joinBackoffMaxMs: number;
}

export const DEFAULT_LINK_LIMITS: LinkLimits = {
  joinDeadlineMs: 10_000,
  unjoinedIdleMs: 5_000,
  maxConnections: 4096,
  maxUnjoined: 512,
  maxUnjoinedPerSource: 16,
  exemptLoopback: true,
  maxBadFrames: 16,
  joinFailuresBeforeBackoff: 5,
  joinBackoffBaseMs: 1_000,
  joinBackoffMaxMs: 60_000,
};

/** Limits with defaults; every count and time must be a positive whole number. */
export function linkLimits(l: Partial<LinkLimits> | undefined): LinkLimits {
  const out = { ...DEFAULT_LINK_LIMITS, ...l };
  for (const [k, v] of Object.entries(out)) {
    if (typeof v === "boolean") continue;
    if (!Number.isInteger(v) || v < 1) throw new Error(`link limit ${k} must be a positive whole number, got ${v}`);
  }
  if (out.joinBackoffBaseMs > out.joinBackoffMaxMs) throw new Error("link limit joinBackoffBaseMs is above joinBackoffMaxMs");
  return out;
}

/** Descriptors kept for what is not a device connection: the registry, its journal, the log, MQTT,
 *  the listener, the interlink. */
export const RESERVED_DESCRIPTORS = 64;

/** This process's limit on open descriptors (Linux's /proc/self/limits, the soft limit), or undefined
 *  where it cannot be read or there is none. */
export function descriptorLimit(): number | undefined {
  try {
    const line = readFileSync("/proc/self/limits", "utf8").split("\n").find((l) => l.startsWith("Max open files"));
    const soft = Number(line?.split(/\s{2,}/)[1]);
    return Number.isInteger(soft) && soft > 0 ? soft : undefined;
  } catch {
    return undefined;
  }
}

/** The limits with maxConnections held under what the descriptor limit leaves: past it accept() fails
 *  for everyone, devices included, whereas under it the gateway evicts or refuses by its own rules. */
export function fitToDescriptors(l: LinkLimits, descriptors: number | undefined): LinkLimits {
  if (descriptors === undefined) return l;
  const room = Math.max(1, descriptors - RESERVED_DESCRIPTORS);
  return l.maxConnections <= room ? l : { ...l, maxConnections: room };
}

/** The largest JoinRequest payload a conforming device sends: [1, id, ctr, nonce, suite, tag] with an
 *  id of at most 64 UTF-16 units (192 UTF-8 bytes), 16-byte nonce and tag, and 64-bit integers:
 *  1 + 1 + (2 + 192) + 9 + 17 + 9 + 17 = 248. An unjoined connection can send nothing longer. */
export const JOIN_REQUEST_MAX_PAYLOAD = 256;

/** Whose connection this is, for the per-source limits: an IPv4 address as it is (also when written
 *  as ::ffff:a.b.c.d), an IPv6 address as its /64, which one host or site typically holds whole. */
export function sourceKey(address: string | undefined): string {
  if (!address) return "unknown";
  const v4 = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (v4) return v4[1];
  if (!address.includes(":")) return address;
  return expandIpv6(address).slice(0, 4).join(":") + "::/64";
}

/** Whether a peer address is this machine's own (loopback). */
export function isLoopback(address: string | undefined): boolean {
  return !!address && (/^(::ffff:)?127\./i.test(address) || address === "::1");
}

/** The eight groups of an IPv6 address, lower case without leading zeros; an IPv4 address written
 *  in its last 32 bits (`::1:2:3:4:10.0.0.1`) counts as the two groups it is. */
function expandIpv6(a: string): string[] {
  const text = a.split("%")[0].replace(/(\d+)\.(\d+)\.(\d+)\.(\d+)$/, (_, p, q, r, s) => `${((p << 8) | q).toString(16)}:${((r << 8) | s).toString(16)}`);
  const [head, tail] = text.split("::");
  const h = head ? head.split(":") : [];
  const t = tail !== undefined && tail !== "" ? tail.split(":") : [];
  const fill = tail === undefined ? [] : Array(Math.max(0, 8 - h.length - t.length)).fill("0");
  return [...h, ...fill, ...t].map((g) => g.toLowerCase().replace(/^0+(?=.)/, ""));
}

interface FailureRecord {
  failures: number;
  /** Until when (ms) this source may not try this id again. */
  until: number;
  last: number;
}

/** Most (device id, source) pairs remembered; the oldest go first. A bound, so that failed joins for
 *  made-up ids cannot grow it without end. */
const MAX_REMEMBERED = 10_000;
/** A pair quiet for this long after its backoff is forgotten. */
const FORGET_AFTER_MS = 10 * 60_000;

/** Failed joins per (device id, source): after a few, that source waits before it may try that id
 *  again, the wait doubling up to a ceiling. Keyed by source as well as id so that an attacker failing
 *  joins in a device's name makes itself wait, never the device: the device's own address has no
 *  failures (a success forgets them), so its valid join is verified and accepted as always. */
export class JoinThrottle {
  private records = new Map<string, FailureRecord>();

  constructor(private limits: LinkLimits, private nowMs: () => number) {}

  private key(id: string, source: string): string {
    return `${source}\u0000${id}`;
  }

  /** How long this source must still wait before trying this id, ms; 0: it may try now. */
  waitFor(id: string, source: string): number {
    const r = this.records.get(this.key(id, source));
    return r ? Math.max(0, r.until - this.nowMs()) : 0;
  }

  /** Records a failed join; returns the wait it starts, ms (0: none yet). */
  failed(id: string, source: string): number {
    const k = this.key(id, source);
    const now = this.nowMs();
    const old = this.records.get(k);
    const r = old && now - Math.max(old.last, old.until) < FORGET_AFTER_MS ? old : { failures: 0, until: 0, last: now };
    r.failures++;
    r.last = now;
    const over = r.failures - this.limits.joinFailuresBeforeBackoff;
    const wait = over < 0 ? 0 : Math.min(this.limits.joinBackoffMaxMs, this.limits.joinBackoffBaseMs * 2 ** Math.min(over, 30));
    r.until = now + wait;
    // Re-inserted, so the map's order is the order of last use and the first entry the stalest.
    this.records.delete(k);
    this.records.set(k, r);
    if (this.records.size > MAX_REMEMBERED) this.records.delete(this.records.keys().next().value as string);
    return wait;
  }

  /** A successful join forgets that source's failures for the id. */
  succeeded(id: string, source: string): void {
    this.records.delete(this.key(id, source));
  }
}
