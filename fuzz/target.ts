// What a fuzz target is: one parser (and, for a stateful one, the state it owns), the valid seeds
// to mutate, and how to tell a clean rejection from a crash.

import type { Rng } from "./rng.ts";

export type Outcome = "accepted" | "rejected";

export interface TargetInstance {
  /** Valid encodings made with the project's own encoders. A stateful target may change them as it
   *  goes (a fresh exchange has fresh messages), so they are asked for per input. */
  seeds(): readonly Uint8Array[];
  /** Feeds one input to the parser. Returns whether it was taken; a throw is a crash unless
   *  isRejection says it is the parser's documented refusal. */
  run(input: Uint8Array): Outcome | Promise<Outcome>;
  /** True for exactly the error types the parser documents for bad input. */
  isRejection(e: unknown): boolean;
  /** The parser owner's state, as a string: it must be the same after every rejected input. */
  snapshot?(): string | Promise<string>;
  /** For tests of the oracle only: changes the owner's state the way a bug would, so the snapshot
   *  must show it. Every stateful target has one. */
  disturb?(): void | Promise<void>;
  /** Optional: whether two snapshots show the same state (default: equal strings). */
  sameState?(before: string, after: string): boolean;
  /** Optional: gets the target ready for the next input (a new connection, say), outside any input's
   *  account; true when it changed the state. */
  prepare?(): Promise<boolean> | boolean;
  /** Optional: an input of the target's own making (a fresh valid message, say); undefined to use
   *  the common generator. */
  generate?(rng: Rng): Uint8Array | undefined;
  close?(): Promise<void> | void;
}

export interface Target {
  name: string;
  /** What it fuzzes, for the table and docs/FUZZING.md. */
  about: string;
  setup(rng: Rng): Promise<TargetInstance>;
}

/** An Error whose message starts with prefix: the documented "cbor: ..." and "msg: ..." errors. */
export function isPrefixedError(e: unknown, ...prefixes: string[]): boolean {
  return e instanceof Error && e.constructor === Error && prefixes.some((p) => e.message.startsWith(p));
}

/** Runs every reader on the input: "accepted" when any of them takes it. A reader's throw that
 *  isRefusal says is its documented refusal counts as not taken; any other throw is a crash and goes on. */
export function acceptedByAny(readers: readonly (() => unknown)[], isRefusal: (e: unknown) => boolean): Outcome {
  let taken = false;
  for (const read of readers) {
    try {
      read();
      taken = true;
    } catch (e) {
      if (!isRefusal(e)) throw e;
    }
  }
  return taken ? "accepted" : "rejected";
}
