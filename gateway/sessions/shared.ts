// What the session broker shares with the other instances of its domain, when there are any
// (gateway/instances/): each SA's row in the domain's database, claimed before its SPI is handed out.
// A lone gateway has no sharing, and its broker keeps everything in memory.

import type { SaInstall } from "../../firmware/proto/messages.ts";

/** An SA as every instance may see it (no key: the seed is never written to the database). */
export interface LiveSession {
  spi: number;
  initiator: string;
  responder: string;
  app: string;
  suite: number;
  /** Seconds since the epoch. */
  expiresAt: number;
  /** Both devices confirmed their keys. */
  up: boolean;
  /** The instance that runs the SA: its timers, its rekeys, its end. */
  home: string;
  /** An SA with a device of another domain: what another instance needs to run it on. */
  across?: AcrossDetail;
}

/** What an instance that takes over an SA across domains needs beyond its parties (gateway/crossgw/
 *  cross-gateway.ts): its side in the exchange, its terms, the peer domain's process that runs it
 *  there, and the certificates judged again on every revocation list. Public parts only: no key. */
export interface AcrossDetail {
  /** 0: our device's gateway initiated the exchange (it runs the rekeys), 1: the peer's did. */
  role: 0 | 1;
  lifetime: number;
  limit: number;
  /** The peer domain's instance that runs the SA with us (kp.x.moved changes it). */
  peerInstance?: string;
  ownCert: Uint8Array;
  peerCert: Uint8Array;
  peerGatewayCert: Uint8Array;
}

export interface SessionSharing {
  readonly instance: string;
  /** Claims s.spi for a new SA homed here: false when the domain holds that SPI already. */
  claim(s: LiveSession): Promise<boolean>;
  /** An SPI claimed ahead of need for a new SA homed here, its row given the SA's terms (not waited
   *  for), or undefined when none is at hand (then claim() one). `usable` says which SPIs the broker
   *  may hand out (none of its own SAs holds them). */
  takeReserved(terms: Omit<LiveSession, "spi">, usable: (spi: number) => boolean): number | undefined;
  /** Both devices confirmed (never waited for: a failure is logged). */
  up(spi: number): void;
  /** The SA ended here (never waited for). */
  ended(spi: number): void;
  /** Whether the SA is still this instance's to run. */
  stillHome(spi: number): Promise<boolean>;
  /** The peer domain's process that runs an SA across domains with us changed (never waited for). */
  peerMoved(spi: number, peerInstance: string): void;
  /** Whether another instance of the domain is online to take this one's SAs over when it stops. */
  othersOnline(): boolean;
  /** Before a callee linked at another instance answered: that instance holds its SaInstall and gives
   *  it to the callee as it accepts, telling the broker (SessionBroker.acceptedWithInstall). Nothing
   *  when the callee is not linked at another instance. Whoever does not hear `accepted` (a plain
   *  answer) sends the SaInstall itself, so nothing here needs an answer. */
  installOnAccept(callee: string, m: SaInstall): void;
}
