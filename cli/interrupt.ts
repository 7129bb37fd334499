// Ctrl-C during a serial operation (keyproxy flash, keyproxy provision). Killing the process mid-line
// would leave the device with half a line typed and us not knowing what it holds; so the first Ctrl-C
// asks the operation to stop at its next safe point (between two lines, the device idle at its prompt)
// and to say what state it left, and only a second one quits at once.

/** The shell's convention for a process ended by SIGINT (128 + 2). */
export const EXIT_INTERRUPTED = 130;

export interface Interruptible {
  /** Fires at the first Ctrl-C. */
  signal: AbortSignal;
  /** Stops listening for Ctrl-C (the default, quitting at once, applies again). */
  dispose(): void;
}

/** Listens for Ctrl-C: the first is announced on stderr and fires the signal; the second exits 130
 *  after printing `quitNow`, what an operator must know when we could not finish. */
export function onCtrlC(command: string, quitNow: string): Interruptible {
  const ac = new AbortController();
  const handler = () => {
    if (ac.signal.aborted) {
      process.stderr.write(`\nkeyproxy ${command}: quit at once; ${quitNow}\n`);
      process.exit(EXIT_INTERRUPTED);
    }
    process.stderr.write(`\nkeyproxy ${command}: interrupted; stopping after the current line, to leave the device in a state we know (Ctrl-C again quits at once)\n`);
    ac.abort();
  };
  process.on("SIGINT", handler);
  return { signal: ac.signal, dispose: () => process.off("SIGINT", handler) };
}

/** argv as a shell would need it typed again, for "run this again" messages. */
export function shellWords(argv: string[]): string {
  return argv.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(" ");
}
