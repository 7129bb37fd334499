// What the session broker shares with the other instances of its domain, when there are any
// (gateway/instances/): each SA's row in the domain's database, claimed before its SPI is handed out.
// A lone gateway has no sharing, and its broker keeps everything in memory.

/** An SA as every instance may see it (no key: the seed never leaves its home's memory). */
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
}

export interface SessionSharing {
  readonly instance: string;
  /** Claims s.spi for a new SA homed here: false when the domain holds that SPI already. */
  claim(s: LiveSession): Promise<boolean>;
  /** Both devices confirmed (never waited for: a failure is logged). */
  up(spi: number): void;
  /** The SA ended here (never waited for). */
  ended(spi: number): void;
  /** Whether the SA is still this instance's to run. */
  stillHome(spi: number): Promise<boolean>;
}
