// `keyproxy build`: one esbuild bundle per board, held to the Espruino subset and to the board's budget.
//
// The subset is enforced three times, each layer catching what the one before cannot see:
//   1. the lint (flash/lint.ts) over the bundle's own sources: syntax, globals, use before declaration,
//      closures over loop variables, public-key imports;
//   2. esbuild's `supported` table (below): syntax it cannot lower becomes a build error;
//   3. the gate (flash/subset.ts) over the bundle itself, before and after minification: whatever esbuild
//      lowered with a runtime helper, whatever came from node_modules, the `__require` shim.

import { createHash } from "node:crypto";
import fs, { existsSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";
import { BOARDS, getBoard } from "../boards/index.ts";
import { PACKAGE_ROOT, PACKAGE_VERSION } from "../gateway/package/root.ts";
import { PUBLIC_KEY_PACKAGES } from "./eslint-espruino.js";
import { lintFirmware } from "./lint.ts";
import { lineColumnAt, SourceMapLookup, type RawSourceMap } from "./sourcemap.ts";
import { checkEspruinoSubset, renameGlobal, type SubsetViolation } from "./subset.ts";

export interface BuildResult {
  board: string;
  /** Where the bundle is (or would be) written. */
  file: string;
  /** Minified bundle size; 0 when the build did not get that far. */
  bytes: number;
  budget: number;
  /** No problems and within budget. */
  ok: boolean;
  /** Lint findings, esbuild errors and gate violations, each "file:line: sentence". */
  problems: string[];
  /** The bundle text (also written to `file` when there are no problems). */
  code: string;
  /** The firmware id the bundle reports when it registers (KP_FIRMWARE, firmwareId below); "" when
   *  the build did not get that far. */
  firmware: string;
  /** The application bundled with the runtime (BuildOptions.app), as given; undefined without one. */
  app?: string;
  /** Minified size of the board's runtime alone (without the application); 0 when the build did not
   *  get that far. Without an application, the same as bytes. */
  runtimeBytes: number;
  /** What the application adds to the bundle: bytes - runtimeBytes (0 without one). */
  appBytes: number;
}

/** What a board leaves for an application: bytes, its bundle budget minus the runtime's bundle; and
 *  variables, its variable pool minus the runtime's variable budget under load (four SAs, the peak
 *  of a join or a rekey). Both are read from boards/index.ts when asked, so a changed budget shows at
 *  once. Negative when over. */
export function roomForApp(r: BuildResult): { bytes: number; vars: number } {
  const board = getBoard(r.board);
  return { bytes: r.budget - r.runtimeBytes, vars: board.vars - board.budget.varsLoaded };
}

export interface BuildOptions {
  board: string;
  /** Where <board>.js goes (default: build/ in the current directory). */
  outDir?: string;
  /** Default: firmware/targets/<board>.ts. Relative paths are taken from the working directory. */
  entry?: string;
  /** Default true. */
  minify?: boolean;
  /** Run the lint first (default true). Tests turn it off to see what the later layers catch alone. */
  lint?: boolean;
  /** Overrides the board's budget.bundleBytes. */
  budget?: number;
  /** An application to bundle with the runtime (TypeScript or JavaScript; relative paths are taken
   *  from the working directory): a module whose default export the runtime calls with KP
   *  (firmware/api.ts). It goes through the same lint and gate, and its bytes count in the budget. */
  app?: string;
  /** Carry group SAs (docs/PROTOCOL.md §5d): off by default, so that a bundle whose application
   *  never joins a group pays none of their bytes (firmware/proto/link.ts, GROUPS). */
  groups?: boolean;
}

// The package root, not this file's parent: compiled, this file is one folder deeper (dist/flash/).
const ROOT = PACKAGE_ROOT;
const VERSION = PACKAGE_VERSION;

/** How many hex digits of the bundle's SHA-256 the firmware id carries. */
const FIRMWARE_HASH_DIGITS = 8;

/** The firmware id is "<package version>-<first 8 hex digits of SHA-256 of the shipped bundle>".
 *  A hash of the bundle rather than of the sources: it names exactly the bytes that were flashed
 *  (board, build options and esbuild's output included), so an operator can tell two devices apart
 *  that run the same version built differently, and check a bundle file against what a device
 *  reports. The bundle contains the id, so it is hashed with this placeholder (as long as the id) in
 *  the id's place, and the id is put in afterwards: offsets and source maps stay valid, and anyone can
 *  recompute the hash by putting the placeholder back. */
export function firmwarePlaceholder(): string {
  return "#".repeat(VERSION.length + 1 + FIRMWARE_HASH_DIGITS);
}

/** The id of a bundle whose id slot still holds firmwarePlaceholder(). ASCII, at most 64 characters
 *  (a CBOR text field of the protocol). */
export function firmwareId(bundleWithPlaceholder: string): string {
  return `${VERSION}-${createHash("sha256").update(bundleWithPlaceholder, "utf8").digest("hex").slice(0, FIRMWARE_HASH_DIGITS)}`;
}

/** What Espruino lacks, in esbuild's feature names (design.md §5). What esbuild does with each, checked
 *  against esbuild 0.28:
 *  - rejects (build error): destructuring, default-argument, rest-argument (also spread in calls),
 *    array-spread, generator, async-await, async-generator, for-await, new-target, using;
 *  - lowers with a runtime helper the gate then rejects: object-rest-spread (__spreadValues),
 *    class-private-* (__privateGet + WeakMap), bigint (BigInt("10")), exponent-operator (__pow);
 *  - lowers cleanly into code Espruino runs: optional-chain, logical-assignment,
 *    optional-catch-binding, class-static-blocks, import-meta (an empty object). These are harmless in
 *    the output; the lint keeps them out of our sources.
 *  template-literal stays supported (Espruino has templates), so a tagged template reaches the gate
 *  untouched instead of becoming __template + Object.freeze. Labels and computed keys are not esbuild
 *  features at all: the gate catches them. */
const ESPRUINO_UNSUPPORTED_FEATURES = [
  "destructuring", "default-argument", "rest-argument", "array-spread", "object-rest-spread",
  "nested-rest-binding", "generator", "async-await", "async-generator", "for-await", "top-level-await",
  "optional-chain", "exponent-operator", "bigint", "new-target", "import-meta", "logical-assignment",
  "optional-catch-binding", "class-static-blocks", "using", "decorators", "dynamic-import",
  "class-private-field", "class-private-method", "class-private-accessor", "class-private-static-field",
  "class-private-static-method", "class-private-static-accessor", "class-private-brand-check",
] as const;

const SUPPORTED: Record<string, boolean> = Object.fromEntries(ESPRUINO_UNSUPPORTED_FEATURES.map((f) => [f, false]));

/** Espruino's built-in modules: reached through espruinoRequire, never bundled. */
const ESPRUINO_MODULES = ["crypto", "Storage", "net", "http", "tls", "dgram", "Wifi", "Flash", "fs", "heatshrink"];

const escapeRegExp = (s: string): string => s.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");

/** Turns imports the device must never have into build errors at the import itself. */
const guardImports: esbuild.Plugin = {
  name: "espruino-imports",
  setup(build) {
    const publicKey = new RegExp(`^(${PUBLIC_KEY_PACKAGES.map(escapeRegExp).join("|")})(/.*)?$`);
    build.onResolve({ filter: publicKey }, (args) => {
      const pkg = publicKey.exec(args.path)?.[1] ?? args.path;
      return { errors: [{ text: `importing ${pkg}: public-key cryptography does not belong on the device, the gateway does it` }] };
    });
    const builtin = new RegExp(`^(${ESPRUINO_MODULES.join("|")})$`);
    build.onResolve({ filter: builtin }, (args) => ({
      errors: [{ text: `"${args.path}" is an Espruino built-in module: write espruinoRequire("${args.path}"), which the build turns into Espruino's require` }],
    }));
  },
};

/** esbuild's "Transforming X to the configured target environment is not supported yet" in our words. */
const ESBUILD_CONSTRUCTS: Record<string, string> = {
  "destructuring": "destructuring",
  "default arguments": "a default parameter value",
  "rest arguments": "a rest parameter or spread in a call",
  "array spread": "array spread",
  "generator functions": "a generator",
  "async functions": "an async function",
  "async generator functions": "an async generator",
  "for-await loops": "for await",
  "new.target": "new.target",
};

function plainSentence(text: string): string {
  const transforming = /^Transforming (.+?) to the configured target environment/.exec(text);
  if (transforming) return `${ESBUILD_CONSTRUCTS[transforming[1]] ?? transforming[1]} is not supported by Espruino`;
  const unavailable = /^(.+?) (?:is|are) not available in the configured target environment/.exec(text);
  if (unavailable) return `${unavailable[1]} is not supported by Espruino`;
  return text;
}

function esbuildProblems(messages: esbuild.Message[], app?: string): string[] {
  return messages.map((m) => {
    if (app !== undefined && m.location?.file.endsWith(APP_ENTRY_NAME)) {
      // Our composed entry is not the user's to fix: say what their application lacks.
      if (/No matching export .* for import "default"/.test(m.text)) {
        return `${relative(app)}:1: the application must have a default export: the function the firmware calls with KP (firmware/api.ts)`;
      }
      return `${relative(app)}: ${plainSentence(m.text)}`;
    }
    return m.location ? `${relative(path.resolve(ROOT, m.location.file))}:${m.location.line}: ${plainSentence(m.text)}` : plainSentence(m.text);
  });
}

/** Paths inside the repository relative to it (as in "firmware/x.ts:12"), others absolute. */
function relative(file: string): string {
  const rel = path.relative(ROOT, file);
  return rel === "" || rel.startsWith("..") || path.isAbsolute(rel) ? file : rel;
}

interface Bundle {
  code: string;
  map: SourceMapLookup;
  /** Absolute path of the folder the map's sources are relative to. */
  mapDir: string;
}

/** Bundles for the device: iife, platform neutral, no legal comments, ASCII only. The sourcemap stays in
 *  memory, for pointing at the TypeScript line behind a gate violation. */
/** Board features decided at build time. esbuild folds a literal but does not inline a module's
 *  constant into other functions, so for a board without the full CBOR codec the codec's FULL becomes
 *  the literal false, and the GROUPS of firmware/proto/link.ts and firmware/handset.ts the literal
 *  the build asked for: the code a bundle does not carry leaves it. */
export function boardFeatures(fullCbor: boolean, groups = true): esbuild.Plugin {
  const literal = async (file: string, name: string, value: boolean) => ({
    contents: (await fs.promises.readFile(file, "utf8")).replace(new RegExp(`\\b${name}\\b(?! =)`, "g"), String(value)),
    loader: "ts" as const,
  });
  return {
    name: "keyproxy-board-features",
    setup(b) {
      if (!fullCbor) b.onLoad({ filter: /[\\/]firmware[\\/]cbor\.ts$/ }, (args) => literal(args.path, "FULL", false));
      // Either way: folded, the test costs a bundle with groups no byte either.
      b.onLoad({ filter: /[\\/]firmware[\\/](proto[\\/]link|handset)\.ts$/ }, (args) => literal(args.path, "GROUPS", groups));
    },
  };
}

/** The bundle's entry: the board's own, or with an application (appEntry) a module made here. */
type Entry = string | esbuild.StdinOptions;

/** How an application joins the runtime: one module that imports the board's entry (which makes the
 *  handset and publishes it as KP), then the application, then hands KP to the application's default
 *  export (firmware/app.ts). ES modules run in import order, so the application's own top-level code
 *  also runs after the runtime's. Still one IIFE, as Espruino runs it from .bootcde. */
export const APP_ENTRY_NAME = "keyproxy-app-entry.ts";
function appEntry(boardEntry: string, app: string): esbuild.StdinOptions {
  const spec = (f: string) => JSON.stringify(f.split(path.sep).join("/"));
  return {
    contents: [
      `import ${spec(boardEntry)};`,
      `import { startApp } from ${spec(path.join(ROOT, "firmware", "app.ts"))};`,
      `import main from ${spec(app)};`,
      "startApp(main);",
      "",
    ].join("\n"),
    resolveDir: ROOT,
    sourcefile: APP_ENTRY_NAME,
    loader: "ts",
  };
}

async function bundle(entry: Entry, outFile: string, minify: boolean, define: Record<string, string>): Promise<Bundle | { errors: esbuild.Message[] }> {
  try {
    const result = await esbuild.build({
      ...(typeof entry === "string" ? { entryPoints: [entry] } : { stdin: entry }),
      outfile: outFile,
      absWorkingDir: ROOT,
      bundle: true,
      write: false,
      format: "iife",
      platform: "neutral",
      mainFields: ["module", "main"],
      minify,
      // Members whose names end in "_" are internal to the firmware: renamed to save device bytes.
      mangleProps: minify ? /_$/ : undefined,
      // Board features decided at build time, so the code a board does not carry is not in its bundle.
      define,
      legalComments: "none",
      charset: "ascii",
      sourcemap: "external",
      supported: SUPPORTED,
      plugins: [guardImports, boardFeatures(define.KP_CBOR_FULL === "true", define.KP_GROUPS === "true")],
      logLevel: "silent",
    });
    const code = result.outputFiles.find((f) => f.path.endsWith(".js"))?.text ?? "";
    const mapText = result.outputFiles.find((f) => f.path.endsWith(".map"))?.text ?? '{"sources":[],"mappings":""}';
    return { code, map: new SourceMapLookup(JSON.parse(mapText) as RawSourceMap), mapDir: path.dirname(outFile) };
  } catch (e) {
    const failure = e as esbuild.BuildFailure;
    if (!Array.isArray(failure.errors)) throw e;
    return { errors: failure.errors };
  }
}

/** The project's own source files behind an entry (node_modules left out): what the lint must see. */
async function localInputs(entry: string): Promise<string[] | { errors: esbuild.Message[] }> {
  try {
    const result = await esbuild.build({
      entryPoints: [entry],
      absWorkingDir: ROOT,
      bundle: true,
      write: false,
      metafile: true,
      format: "esm",
      platform: "neutral",
      logLevel: "silent",
      plugins: [{
        name: "local-only",
        setup(build) {
          build.onResolve({ filter: /^[^./]/ }, (args) => ({ path: args.path, external: true }));
        },
      }],
    });
    return Object.keys(result.metafile.inputs).filter((f) => /\.[cm]?[jt]s$/.test(f) && !f.includes("node_modules/"));
  } catch (e) {
    const failure = e as esbuild.BuildFailure;
    if (!Array.isArray(failure.errors)) throw e;
    return { errors: failure.errors };
  }
}

interface Located {
  sentence: string;
  /** "file:line: sentence", at the TypeScript line behind it where the sourcemap knows one. */
  text: string;
  mapped: boolean;
}

/** Runs the gate on a bundle as shipped (espruinoRequire already renamed to require) and locates each
 *  violation in the sources; `renamed` are the offsets of the renames in the code before renaming. */
function gate(final: string, b: Bundle, renamed: number[], shrink: number, bundleName: string): Located[] {
  const renamedInFinal = renamed.map((at, i) => at - i * shrink);
  return checkEspruinoSubset(final, bundleName).map((v: SubsetViolation) => {
    const before = renamedInFinal.filter((at) => at < v.offset).length;
    const pos = lineColumnAt(b.code, v.offset + before * shrink);
    const original = b.map.originalPosition(pos.line, pos.column);
    if (!original) return { sentence: v.message, text: `${bundleName}:${v.line}: ${v.message}`, mapped: false };
    const source = relative(path.resolve(b.mapDir, original.source));
    return { sentence: v.message, text: `${source}:${original.line}: ${v.message}`, mapped: true };
  });
}

/** The gate's findings on both bundles, said once each: the readable bundle's first (its lines map
 *  cleanly), the minified one's only where they add something new. A sentence found somewhere in the
 *  sources is not repeated at a line of esbuild's runtime code. */
function gateBothBundles(readable: Bundle, shipped: Bundle, bundleName: string): { problems: string[]; code: string } {
  const from = "espruinoRequire";
  const to = "require";
  const shrink = from.length - to.length;
  const r = renameGlobal(readable.code, from, to);
  const found = gate(r.code, readable, r.offsets, shrink, bundleName);
  const s = shipped === readable ? r : renameGlobal(shipped.code, from, to);
  if (shipped !== readable) {
    const seen = new Set(found.map((f) => f.sentence));
    found.push(...gate(s.code, shipped, s.offsets, shrink, bundleName).filter((f) => !seen.has(f.sentence)));
  }
  const mappedSentences = new Set(found.filter((f) => f.mapped).map((f) => f.sentence));
  const problems = found.filter((f) => f.mapped || !mappedSentences.has(f.sentence)).map((f) => f.text);
  return { problems: unique(problems), code: s.code };
}

function unique(lines: string[]): string[] {
  return [...new Set(lines)];
}

/** Builds one board's firmware, writes <outDir>/<board>.js when it passes the lint and the gate, and
 *  checks its size against the board's budget. Throws only for an unknown board. */
export async function buildFirmware(opts: BuildOptions): Promise<BuildResult> {
  const board = getBoard(opts.board);
  // build/ in the current directory by default, as the CLI says: never inside the package itself,
  // which an installed keyproxy may not be allowed to write (node_modules, a global install).
  const outDir = path.resolve(opts.outDir ?? "build");
  const file = path.join(outDir, `${board.id}.js`);
  const bundleName = relative(file);
  const entry = path.resolve(opts.entry ?? path.join(ROOT, "firmware", "targets", `${board.id}.ts`));
  const app = opts.app === undefined ? undefined : path.resolve(opts.app);
  const budget = opts.budget ?? board.budget.bundleBytes;
  const minify = opts.minify ?? true;
  const result: BuildResult = {
    board: board.id, file, bytes: 0, budget, ok: false, problems: [], code: "", firmware: "", app: opts.app, runtimeBytes: 0, appBytes: 0,
  };
  const fail = (problems: string[]): BuildResult => {
    result.problems = unique(problems);
    rmSync(file, { force: true }); // never leave an older bundle where a flasher would pick it up
    return result;
  };

  if (!existsSync(entry)) return fail([`${relative(entry)}: the entry for board ${board.id} does not exist`]);
  if (app !== undefined && !existsSync(app)) return fail([`${relative(app)}: the application does not exist`]);

  if (opts.lint ?? true) {
    // The runtime's sources, and the application's with the few lines that start it.
    const roots = app === undefined ? [entry] : [entry, path.join(ROOT, "firmware", "app.ts"), app];
    const files: string[] = [];
    for (const root of roots) {
      const inputs = await localInputs(root);
      if (!Array.isArray(inputs)) return fail(esbuildProblems(inputs.errors));
      for (const f of inputs) if (!files.includes(f)) files.push(f);
    }
    const findings = await lintFirmware(files);
    // (The lint names files relative to the repository; one outside it, an application's, by its path.)
    if (findings.length > 0) return fail(findings.map((f) => `${relative(path.resolve(ROOT, f.file))}:${f.line}: ${f.message}`));
  }

  // Readable first: esbuild's helpers keep their names here, and lines map cleanly to sources.
  const placeholder = firmwarePlaceholder();
  const define = { KP_CBOR_FULL: board.cbor === "full" ? "true" : "false", KP_FIRMWARE: JSON.stringify(placeholder), KP_GROUPS: opts.groups ? "true" : "false" };
  const main: Entry = app === undefined ? entry : appEntry(entry, app);
  const readable = await bundle(main, file, false, define);
  if ("errors" in readable) return fail(esbuildProblems(readable.errors, app));
  const shipped = minify ? await bundle(main, file, true, define) : readable;
  if ("errors" in shipped) return fail(esbuildProblems(shipped.errors, app));

  const gated = gateBothBundles(readable, shipped, bundleName);
  // The id of exactly what ships, put in the placeholder's place (the same length).
  result.firmware = firmwareId(gated.code);
  result.code = gated.code.split(placeholder).join(result.firmware);
  result.bytes = Buffer.byteLength(result.code, "utf8");
  // The runtime alone, as it would ship: what the application adds is the difference.
  result.runtimeBytes = result.bytes;
  if (app !== undefined) {
    const runtime = await bundle(entry, file, minify, define);
    if ("errors" in runtime) return fail(esbuildProblems(runtime.errors));
    result.runtimeBytes = Buffer.byteLength(renameGlobal(runtime.code, "espruinoRequire", "require").code, "utf8");
    result.appBytes = result.bytes - result.runtimeBytes;
  }
  if (gated.problems.length > 0) return fail(gated.problems);

  mkdirSync(outDir, { recursive: true });
  writeFileSync(file, result.code);
  result.ok = result.bytes <= budget;
  return result;
}

export interface BuildAllOptions {
  outDir?: string;
  minify?: boolean;
  lint?: boolean;
  /** Default: every board in boards/index.ts. */
  boards?: string[];
  /** Entry overrides by board id. */
  entries?: Record<string, string>;
  /** An application bundled into every board's firmware (BuildOptions.app). */
  app?: string;
  /** BuildOptions.groups, for every board. */
  groups?: boolean;
}

/** Builds every board (one after another: esbuild is fast, and the lint shares one ESLint). */
export async function buildAll(opts: BuildAllOptions = {}): Promise<BuildResult[]> {
  const results: BuildResult[] = [];
  for (const id of opts.boards ?? Object.keys(BOARDS)) {
    results.push(await buildFirmware({ board: id, outDir: opts.outDir, minify: opts.minify, lint: opts.lint, entry: opts.entries?.[id], app: opts.app, groups: opts.groups }));
  }
  return results;
}

function status(r: BuildResult): string {
  if (r.problems.length > 0) return `FAILED (${r.problems.length} problem${r.problems.length === 1 ? "" : "s"})`;
  return r.bytes <= r.budget ? "ok" : `OVER BUDGET by ${r.bytes - r.budget} bytes`;
}

/** A table of every board's bundle against its budget, then each board's problems. `requested` marks
 *  the board the user asked for. */
export function formatReport(results: BuildResult[], requested?: string): string {
  const rows = results.map((r) => [
    r.board + (r.board === requested ? " *" : ""),
    r.bytes > 0 ? String(r.bytes) : "-",
    String(r.budget),
    r.bytes > 0 ? `${((100 * r.bytes) / r.budget).toFixed(1)}%` : "-",
    status(r),
  ]);
  const header = ["board", "bytes", "budget", "used", "status"];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  const line = (cells: string[]): string =>
    cells.map((c, i) => (i === 0 || i === cells.length - 1 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ").trimEnd();
  const out = [line(header), ...rows.map(line)];
  for (const r of results) {
    if (r.problems.length === 0) continue;
    out.push("", `${r.board}:`, ...r.problems.map((p) => `  ${p}`));
  }
  if (requested) out.push("", "* the requested board");
  out.push("", ...formatRoom(results));
  return out.join("\n");
}

function table(header: string[], rows: string[][]): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  return [header, ...rows].map((cells) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ").trimEnd());
}

/** What each board leaves for an application (roomForApp), and with an application what it takes. */
export function formatRoom(results: BuildResult[]): string[] {
  const app = results.find((r) => r.app !== undefined)?.app;
  const rows = results.map((r) => {
    const room = roomForApp(r);
    const built = r.runtimeBytes > 0;
    const row = [r.board, built ? String(r.runtimeBytes) : "-", built ? String(room.bytes) : "-", String(room.vars)];
    if (app !== undefined) row.push(r.bytes > 0 && built ? String(r.appBytes) : "-", r.bytes > 0 && built ? String(room.bytes - r.appBytes) : "-");
    return row;
  });
  const header = ["board", "runtime", "bytes for app", "variables for app"];
  if (app !== undefined) header.push("app bytes", "bytes left");
  return [
    "room for an application: bytes = budget - the runtime's bundle; variables = the board's pool - the runtime's",
    "variable budget under load (boards/index.ts)" + (app !== undefined ? `; the application ${app} takes "app bytes"` : ""),
    "",
    ...table(header, rows),
  ];
}

const USAGE = `usage: keyproxy build [--board <id>] [--app <file>] [--groups] [--out <dir>]

Builds the firmware bundle of every board (${Object.keys(BOARDS).join(", ")}),
checks each against the Espruino subset and its budget, and prints every
board's size and the room each leaves for an application. Exits non-zero when
the requested board fails or is over budget, or when any board fails the lint
or the subset gate (with no --board: when any board fails or is over budget).

  --board <id>   the board you are about to flash (marked in the report); with
                 --app, the only board built
  --app <file>   bundle this application (TypeScript or JavaScript; its default
                 export is called with KP, firmware/api.ts) after the runtime,
                 through the same lint, gate and budget
  --groups       carry group SAs (one message to many handsets); off by default,
                 as they cost bundle bytes an application without groups needs
  --out <dir>    where bundles go (default: build/), one <board>.js each
  --help         this text`;

/** `keyproxy build` from the command line; returns the exit code. */
export async function buildCommand(argv: string[]): Promise<number> {
  let requested: string | undefined;
  let outDir: string | undefined;
  let app: string | undefined;
  let groups = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--help" || arg === "-h") {
      console.log(USAGE);
      return 0;
    }
    if (arg === "--groups") {
      groups = true;
      continue;
    }
    if (arg === "--board" || arg === "--out" || arg === "--app") {
      const value = argv[i + 1];
      if (value === undefined || value.startsWith("--")) {
        console.error(`keyproxy build: ${arg} needs a value\n\n${USAGE}`);
        return 2;
      }
      if (arg === "--board") requested = value;
      else if (arg === "--app") app = value;
      else outDir = value;
      i++;
      continue;
    }
    console.error(`keyproxy build: unknown argument ${JSON.stringify(arg)}\n\n${USAGE}`);
    return 2;
  }
  if (requested !== undefined && !(requested in BOARDS)) {
    console.error(`keyproxy build: unknown board "${requested}"; known boards: ${Object.keys(BOARDS).join(", ")}`);
    return 2;
  }

  if (app !== undefined && !existsSync(app)) {
    console.error(`keyproxy build: no application at ${app}`);
    return 2;
  }

  // An application is written for a board: with --board, only that board is built.
  const results = await buildAll({ outDir, app, groups, boards: app !== undefined && requested !== undefined ? [requested] : undefined });
  console.log(formatReport(results, requested));
  const failed = results.some((r) => r.problems.length > 0);
  if (requested !== undefined) {
    const mine = results.find((r) => r.board === requested);
    return failed || !mine?.ok ? 1 : 0;
  }
  return failed || results.some((r) => !r.ok) ? 1 : 0;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = await buildCommand(process.argv.slice(2));
}
