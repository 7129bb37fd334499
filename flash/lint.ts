// `npm run lint`: ESLint over the firmware with the Espruino subset rules (flash/eslint-espruino.js).
// `keyproxy build` runs the same lint over the files of each bundle before it bundles anything.

import path from "node:path";
import { fileURLToPath } from "node:url";
import { ESLint } from "eslint";
import { espruinoLintConfig, ESX_CONSTRUCTS } from "./eslint-espruino.js";
import { PACKAGE_ROOT } from "../gateway/package/root.ts";

export interface LintFinding {
  /** Relative to the repository root. */
  file: string;
  line: number;
  message: string;
}

// The package root, not this file's parent: compiled, this file is one folder deeper (dist/flash/).
const ROOT = PACKAGE_ROOT;
const FIRMWARE_GLOB = "firmware/**/*.ts";

let eslint: ESLint | undefined;

/** One ESLint instance for the process: creating it loads the TypeScript parser and every plugin. */
function linter(): ESLint {
  // The config applies to whatever files are asked for (fixtures, entries outside firmware/), so it
  // is given here rather than read from eslint.config.js, which lists firmware/ only. The base is the
  // filesystem root because ESLint silently skips files outside its base path, and a build entry may
  // live anywhere. ESLint also skips whatever is under node_modules/ unless told not to: in an
  // installed package the firmware's own sources are there (node_modules/keyproxy/firmware/).
  eslint ??= new ESLint({
    cwd: path.parse(ROOT).root,
    ignorePatterns: ["!**/node_modules/"],
    overrideConfigFile: true,
    overrideConfig: espruinoLintConfig(["**/*.ts"]),
  });
  return eslint;
}

/** Says what a finding means in one plain sentence: es-x's "ES2015 destructuring is forbidden." becomes
 *  "destructuring is not supported by Espruino". */
function describe(ruleId: string | null, message: string): string {
  const construct = ruleId !== null && Object.hasOwn(ESX_CONSTRUCTS, ruleId) ? ESX_CONSTRUCTS[ruleId] : undefined;
  if (construct) return `${construct} is not supported by Espruino`;
  if (ruleId === "@typescript-eslint/no-use-before-define") {
    return `${message.replace(/\.$/, "")}: Espruino does not hoist, so declare it before its first use`;
  }
  if (ruleId === "no-labels") return "a labelled statement is not supported by Espruino";
  // no-restricted-* say "Unexpected use of 'Map'. <our sentence>": keep only our sentence.
  if (ruleId?.startsWith("no-restricted-") && ruleId !== "no-restricted-syntax") {
    const ours = message.indexOf(". ");
    if (ours !== -1) return message.slice(ours + 2);
  }
  return message; // no-restricted-syntax carries our sentence as is; a parse error has no rule id
}

/** Lints firmware sources (default: every firmware/**\/*.ts) and returns every finding, errors and
 *  parse failures alike; an empty list means clean. Paths may be absolute or relative to the repo. */
export async function lintFirmware(files?: string[]): Promise<LintFinding[]> {
  const targets = files ?? [FIRMWARE_GLOB];
  if (targets.length === 0) return [];
  const results = await linter().lintFiles(targets.map((f) => path.resolve(ROOT, f)));
  const findings: LintFinding[] = [];
  for (const result of results) {
    const file = path.relative(ROOT, result.filePath);
    for (const m of result.messages) {
      // Every rule is an error; warnings are only ESLint's notices such as "file ignored" (a .d.ts).
      if (m.severity !== 2) continue;
      findings.push({ file, line: m.line ?? 0, message: describe(m.ruleId, m.message) });
    }
  }
  return findings;
}

export function formatFindings(findings: LintFinding[]): string {
  return findings.map((f) => `${f.file}:${f.line}: ${f.message}`).join("\n");
}

async function main(argv: string[]): Promise<number> {
  const findings = await lintFirmware(argv.length > 0 ? argv : undefined);
  if (findings.length > 0) {
    console.error(formatFindings(findings));
    console.error(`\n${findings.length} finding(s): the firmware must stay inside the Espruino subset (design.md §5)`);
    return 1;
  }
  console.log("lint: firmware is inside the Espruino subset");
  return 0;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = await main(process.argv.slice(2));
}
