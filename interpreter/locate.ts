// Where the real Espruino interpreters are. keyproxy judges its firmware on Linux builds of Espruino
// sized like each board (docs/INTERPRETER.md): a 32-bit build whose variables have the boards' layout,
// for behaviour and memory, and a native 64-bit one, for timing.
//
// Looked for in $KEYPROXY_ESPRUINO (a folder holding the binaries) when it is set, and only there;
// else in ../shared/espruino/bin beside the repository (the team's shared copy) and .espruino/bin
// inside it (what interpreter/build.sh makes from Espruino's source).

import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

/** Which binary runs which board. An ESP32 has no build of its own in the shared folder: it runs on
 *  the Puck-sized one (same natives: SHA-256, AES ECB/CBC, net), and interpreter/build.sh makes an
 *  ESP32-sized one when asked. */
export const INTERPRETER_FOR_BOARD: Record<string, { bits32: string[]; bits64: string[] }> = {
  puckjs: { bits32: ["espruino-puck"], bits64: ["espruino-puck-64"] },
  banglejs2: { bits32: ["espruino-bangle"], bits64: ["espruino-bangle-64"] },
  esp32: { bits32: ["espruino-esp32", "espruino-puck"], bits64: ["espruino-esp32-64", "espruino-puck-64"] },
};

export const HOW_TO_GET_ONE =
  "build one with `bash interpreter/build.sh` (needs gcc-multilib and, on a 64-bit-only kernel, qemu-user: " +
  "`apt-get install gcc-multilib qemu-user`; a few minutes), or point KEYPROXY_ESPRUINO at a folder of " +
  "Espruino interpreters sized like the boards (docs/INTERPRETER.md)";

/** The folders searched, first match wins. */
export function searchPath(): string[] {
  // Named explicitly, it is the only place looked at: what a user asks for is what runs.
  if (process.env.KEYPROXY_ESPRUINO) return [path.resolve(process.env.KEYPROXY_ESPRUINO)];
  return [path.resolve(ROOT, "..", "shared", "espruino", "bin"), path.join(ROOT, ".espruino", "bin")];
}

const runs = new Map<string, string | null>();

/** Whether the binary starts and answers; null when it does, else why not (cached per path). */
function whyNot(bin: string): string | null {
  if (runs.has(bin)) return runs.get(bin)!;
  const r = spawnSync(bin, ["-e", 'print("kp-ok "+process.env.VERSION);quit()'], { encoding: "latin1", timeout: 30_000, stdio: ["ignore", "pipe", "pipe"] });
  const why = r.stdout?.includes("kp-ok ") ? null : `${bin} does not run (${r.error?.message ?? (r.stderr || r.stdout || "").trim().split("\n").pop() ?? `exit ${r.status}`})`;
  runs.set(bin, why);
  return why;
}

export interface Located {
  /** Absolute path of the binary. */
  bin: string;
  bits: 32 | 64;
}

/** The interpreter for a board, or an Error saying what was tried and how to get one. */
export function locateInterpreter(board: string, bits: 32 | 64 = 32): Located | Error {
  const names = INTERPRETER_FOR_BOARD[board]?.[bits === 32 ? "bits32" : "bits64"];
  if (!names) return new Error(`no real interpreter is defined for board "${board}" (known: ${Object.keys(INTERPRETER_FOR_BOARD).join(", ")})`);
  const tried: string[] = [];
  // By name first: a build sized for the board wherever it is beats a stand-in build nearer by.
  for (const name of names) {
    for (const dir of searchPath()) {
      const bin = path.join(dir, name);
      if (!existsSync(bin)) continue;
      const why = whyNot(bin);
      if (!why) return { bin, bits };
      tried.push(why);
    }
  }
  return new Error(`no ${bits}-bit Espruino interpreter for ${board} found in ${searchPath().join(", ")}` +
    (tried.length ? ` (${tried.join("; ")})` : "") + `: ${HOW_TO_GET_ONE}`);
}
