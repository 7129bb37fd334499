// What reaches an operator's terminal. Device ids, peer names, reasons, anything a device, an
// unauthenticated peer or anyone who can publish to the MQTT broker chooses, end up in log lines and
// on screens; raw, their control characters would drive the terminal (ESC [2J clears it, OSC sets its
// title, C1 CSI does the same without an ESC on terminals that honour it, bidi overrides reorder what
// is shown). Every human-readable sink (the monitor, the demo narration, the sim's console lines, the
// CLI's messages) passes its text through forTerminal; the JSON log and MQTT events through
// jsonForTerminal. One definition of "unsafe" for all of them, here.

/** C0 (tab and newline included: a value must not start a line of its own), DEL, C1, and the Unicode
 *  format characters that reorder or break lines: ALM, LRM/RLM, LS/PS, bidi embeddings, overrides
 *  and isolates. */
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

/** s with every unsafe character shown as an escape (\x1b, \u202e): printable, never interpreted.
 *  Idempotent, since escapes are plain ASCII. For one line of text: a newline in s becomes \x0a. */
export function forTerminal(s: string): string {
  return s.replace(UNSAFE, (c) => {
    const code = c.charCodeAt(0);
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u${code.toString(16).padStart(4, "0")}`;
  });
}

/** JSON.stringify, with the unsafe characters JSON leaves raw (DEL, C1, bidi, LS/PS) written as \uXXXX
 *  escapes too: still JSON, parsing to the same value, and safe on a terminal (`tail -f`). */
export function jsonForTerminal(value: unknown): string {
  return JSON.stringify(value).replace(UNSAFE, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

/** forTerminal for a text of several lines (a CLI error that lists problems): its newlines kept. */
export function linesForTerminal(s: string): string {
  return s.split("\n").map(forTerminal).join("\n");
}
