// Exponential backoff with jitter for reconnecting to a handset: many handsets that dropped together
// (a gateway restart, an adapter reset) must not all come back in the same instant.

export interface BackoffSettings {
  /** The wait after the first failure, ms. */
  baseMs: number;
  /** The longest wait, ms. */
  maxMs: number;
}

export const DEFAULT_BACKOFF: BackoffSettings = { baseMs: 1000, maxMs: 60_000 };

/** The wait before the next try after `failures` failures in a row: none after none, else base
 *  doubled per further failure up to max, then a random part of it taken away (between half and all
 *  of it is waited: "equal jitter"), so that the wait still grows and never reaches zero. */
export function backoffMs(failures: number, s: BackoffSettings, random: () => number = Math.random): number {
  if (failures <= 0) return 0;
  const ceiling = Math.min(s.maxMs, s.baseMs * 2 ** Math.min(failures - 1, 30));
  return Math.round(ceiling / 2 + (ceiling / 2) * random());
}
