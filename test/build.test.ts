// keyproxy build: the Espruino subset is enforced by lint, esbuild and the bundle gate, the bundle runs,
// espruinoRequire becomes require, and the budget is checked.

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import vm from "node:vm";
import * as esbuild from "esbuild";
import { buildAll, buildCommand, buildFirmware, firmwarePlaceholder, formatReport, type BuildResult } from "../flash/build.ts";
import { BOARDS } from "../boards/index.ts";
import { lintFirmware } from "../flash/lint.ts";
import { checkEspruinoSubset, renameGlobal } from "../flash/subset.ts";
import * as lib from "./fixtures/subset/clean-lib.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const FIXTURES = "test/fixtures/subset";
const fixture = (name: string): string => path.join(ROOT, FIXTURES, name);
const outDir = mkdtempSync(path.join(tmpdir(), "keyproxy-build-"));
after(() => rmSync(outDir, { recursive: true, force: true }));

/** Each forbidden fixture, the line of the offence, and the words that must name it. */
const FORBIDDEN: { file: string; line: number; names: RegExp; lintOnly?: boolean }[] = [
  { file: "destructuring.ts", line: 3, names: /destructuring/ },
  { file: "default-param.ts", line: 2, names: /default parameter/ },
  { file: "spread.ts", line: 3, names: /spread/ },
  { file: "optional-chaining.ts", line: 3, names: /optional chaining/, lintOnly: true },
  { file: "exponent.ts", line: 3, names: /\*\* operator/ },
  { file: "generator.ts", line: 2, names: /generator/ },
  { file: "async.ts", line: 2, names: /async function/ },
  { file: "bigint.ts", line: 2, names: /BigInt/ },
  { file: "private.ts", line: 3, names: /#private/ },
  { file: "map.ts", line: 3, names: /\bMap\b/ },
  { file: "math-imul.ts", line: 3, names: /Math\.imul/ },
  { file: "array-from.ts", line: 3, names: /Array\.from/ },
  { file: "use-before-define.ts", line: 3, names: /'helper' was used before it was defined.*hoist/, lintOnly: true },
  { file: "loop-closure.ts", line: 5, names: /closure captures the loop variable 'i'/, lintOnly: true },
  { file: "require-variable.ts", line: 5, names: /require with a non-literal argument/ },
  { file: "tweetnacl-box.ts", line: 2, names: /tweetnacl.*public-key/ },
  // Library semantics Espruino does not share (docs/EMULATOR.md, "Differences from the real interpreter").
  { file: "regex-counted.ts", line: 3, names: /counted quantifier \{32\}.*literal text.*s\.length === 32/ },
  { file: "regexp-string.ts", line: 3, names: /counted quantifier \{2,\}/ },
  { file: "regex-optional.ts", line: 3, names: /\? quantifier.*not supported by Espruino/ },
  { file: "arguments.ts", line: 3, names: /`arguments`.*declared parameters/ },
  { file: "error-subclass.ts", line: 2, names: /extending Error.*super\(message\) does not set this\.message/ },
  { file: "length-assign.ts", line: 3, names: /assigning to \.length.*Assignment to a constant/ },
  { file: "wide-char.ts", line: 2, names: /character above \\xFF.*low byte/ },
  { file: "lacking-method.ts", line: 3, names: /Number\.isNaN does not exist on Espruino/ },
  { file: "lacking-method.ts", line: 3, names: /\.flat\(\) does not exist on Espruino/ },
  { file: "prototype-method.ts", line: 3, names: /Array\.prototype\.<method> is undefined on Espruino.*call the method on a value/ },
];

function hasProblem(r: BuildResult, file: string, line: number, names: RegExp): boolean {
  const at = `${FIXTURES}/${file}:${line}: `;
  return r.problems.some((p) => p.startsWith(at) && names.test(p));
}

describe("the build refuses every construct outside the Espruino subset", () => {
  for (const f of FORBIDDEN) {
    test(`${f.file}: fails with file:line and the construct named`, async () => {
      const r = await buildFirmware({ board: "puckjs", entry: fixture(f.file), outDir });
      assert.equal(r.ok, false);
      assert.ok(hasProblem(r, f.file, f.line, f.names), `expected ${f.file}:${f.line} naming ${f.names}, got:\n${r.problems.join("\n")}`);
      assert.equal(existsSync(r.file), false, "a failing bundle must not be left where a flasher would find it");
    });
  }
});

describe("without the lint, esbuild and the bundle gate still refuse what they can see", () => {
  for (const f of FORBIDDEN.filter((x) => !x.lintOnly)) {
    test(`${f.file}`, async () => {
      const r = await buildFirmware({ board: "puckjs", entry: fixture(f.file), outDir, lint: false });
      assert.equal(r.ok, false);
      assert.ok(hasProblem(r, f.file, f.line, f.names), `got:\n${r.problems.join("\n")}`);
    });
  }

  test("what only the lint can see: esbuild lowers ?. into plain conditionals; hoisting and loop closures are valid syntax", async () => {
    for (const f of FORBIDDEN.filter((x) => x.lintOnly)) {
      const r = await buildFirmware({ board: "puckjs", entry: fixture(f.file), outDir, lint: false });
      assert.deepEqual(r.problems, [], f.file);
      assert.ok(!r.code.includes("?."), f.file);
    }
  });

  test("object spread is lowered with a helper, and the gate names the helper at the source line", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "keyproxy-spread-"));
    try {
      const entry = path.join(dir, "objspread.ts");
      const { writeFileSync } = await import("node:fs");
      writeFileSync(entry, "export function merge(a: object): object {\n  return { ...a, x: 1 };\n}\n");
      const r = await buildFirmware({ board: "puckjs", entry, outDir, lint: false });
      assert.equal(r.ok, false);
      assert.ok(r.problems.some((p) => p.startsWith(`${entry}:2: `) && /__spreadValues.*object spread/.test(p)), r.problems.join("\n"));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("the lint", () => {
  test("finds each forbidden fixture at its line, and nothing in the clean ones", async () => {
    const findings = await lintFirmware([...FORBIDDEN.map((f) => `${FIXTURES}/${f.file}`), `${FIXTURES}/clean.ts`, `${FIXTURES}/clean-lib.ts`]);
    for (const f of FORBIDDEN) {
      const mine = findings.filter((x) => x.file === `${FIXTURES}/${f.file}`);
      assert.ok(mine.some((x) => x.line === f.line && f.names.test(x.message)), `${f.file}: ${JSON.stringify(mine)}`);
    }
    assert.deepEqual(findings.filter((x) => x.file.includes("clean")), []);
  });
});

describe("a clean entry", () => {
  test("builds ASCII-only, renames espruinoRequire, and runs under vm with the output Node computes", async () => {
    const r = await buildFirmware({ board: "puckjs", entry: fixture("clean.ts"), outDir });
    assert.deepEqual(r.problems, []);
    assert.equal(r.ok, true);
    assert.equal(readFileSync(r.file, "utf8"), r.code);
    assert.equal(r.bytes, Buffer.byteLength(r.code));
    assert.ok(r.bytes > 0 && r.bytes <= r.budget);
    assert.match(r.code, /^[\x00-\x7f]*$/, "charset ascii");
    assert.ok(!r.code.includes("espruinoRequire"));
    assert.ok(r.code.includes('require("crypto")'));
    assert.deepEqual(checkEspruinoSubset(r.code, r.file), []);

    const printed: string[] = [];
    const required: string[] = [];
    const context = vm.createContext({
      print: (line: string) => printed.push(line),
      require: (name: string) => {
        required.push(name);
        return { SHA256: (d: Uint8Array) => new Uint8Array(createHash("sha256").update(d).digest()).buffer };
      },
    });
    vm.runInContext(r.code, context);

    const data = new Uint8Array([1, 2, 3, 250]);
    const tally = new lib.Tally().add(5).add(lib.mix(data));
    assert.deepEqual(required, ["crypto"]);
    assert.deepEqual(printed, [
      lib.describe(undefined, tally.total),
      lib.describe("count", 2),
      lib.describe("rows", 6),
      createHash("sha256").update(data).digest("hex") + " µs",
    ]);
  });

  test("fails the budget when the bundle is bigger than a tiny fake budget, with no other problem", async () => {
    const r = await buildFirmware({ board: "puckjs", entry: fixture("clean.ts"), outDir, budget: 64 });
    assert.deepEqual(r.problems, []);
    assert.equal(r.ok, false);
    assert.ok(r.bytes > 64);
    assert.match(formatReport([r]), new RegExp(`puckjs\\s+${r.bytes}\\s+64\\s+[\\d.]+%\\s+OVER BUDGET by ${r.bytes - 64} bytes`));
  });

  test("buildAll reports every board against its own budget", async () => {
    const entries = { puckjs: fixture("clean.ts"), banglejs2: fixture("clean.ts"), esp32: fixture("clean.ts"), emulator: fixture("bigint.ts") };
    const results = await buildAll({ outDir, entries });
    assert.deepEqual(results.map((r) => r.board), ["puckjs", "banglejs2", "esp32", "emulator"]);
    assert.deepEqual(results.map((r) => r.ok), [true, true, true, false]);
    const report = formatReport(results, "esp32");
    for (const r of results) assert.match(report, new RegExp(`^${r.board}( \\*)?\\s+(${r.bytes}|-)\\s+${r.budget}\\s`, "m"));
    assert.match(report, /^esp32 \*/m);
    assert.match(report, /^emulator\s.*FAILED \(1 problem\)/m);
    assert.match(report, /bigint\.ts:2: BigInt/);
  });
});

describe("the firmware id (KP_FIRMWARE)", () => {
  test("is the package version and a hash of the shipped bundle, in the bundle, the same for the same bytes", async () => {
    const version = JSON.parse(readFileSync(path.join(ROOT, "package.json"), "utf8")).version as string;
    const puck = await buildFirmware({ board: "puckjs", outDir });
    const again = await buildFirmware({ board: "puckjs", outDir });
    const emulator = await buildFirmware({ board: "emulator", outDir });
    for (const r of [puck, emulator]) {
      assert.deepEqual(r.problems, []);
      assert.ok(r.firmware.startsWith(`${version}-`), r.firmware);
      assert.match(r.firmware, /^[\x20-\x7e]{1,64}$/, "printable ASCII, within a protocol text field");
      assert.match(r.firmware, /-[0-9a-f]{8}$/);
      assert.ok(r.code.includes(JSON.stringify(r.firmware)), "the bundle carries its id");
      assert.ok(!r.code.includes(firmwarePlaceholder()), "no placeholder is left");
      // Anyone can check a bundle against the id a device reports: put the placeholder back, hash.
      const hash = createHash("sha256").update(r.code.split(r.firmware).join(firmwarePlaceholder())).digest("hex");
      assert.equal(r.firmware, `${version}-${hash.slice(0, 8)}`);
    }
    assert.equal(again.firmware, puck.firmware, "the same bundle, the same id");
    assert.notEqual(emulator.firmware, puck.firmware, "another board's bundle, another id");
  });
});

describe("the bundle gate", () => {
  const cases: [string, RegExp][] = [
    ["var {a} = o;", /^destructuring$/],
    ["var [a] = o;", /^destructuring$/],
    ["function f(...a) {}", /rest element/],
    ["f(...a);", /spread/],
    ["function f(a = 1) {}", /default parameter/],
    ["var o = {[k]: 1};", /computed key/],
    ["class A { [k]() {} }", /computed key/],
    ["a: for (;;) break a;", /labelled statement/],
    ["function* g() {}", /generator/],
    ["async function f() {}", /async function/],
    ["a?.b;", /optional chaining/],
    ["a ** 2;", /\*\* operator/],
    ["a **= 2;", /\*\*= operator/],
    ["10n;", /BigInt literal/],
    ["class A { #p = 1 }", /#private/],
    ["t`x`;", /tagged template/],
    ["function F() { return new.target }", /new\.target/],
    ["new WeakRef(o);", /^WeakRef$/],
    ["new Proxy(o, {});", /^Proxy$/],
    ["Reflect.get(o, 'a');", /^Reflect$/],
    ["Symbol('x');", /^Symbol$/],
    ["new TextEncoder();", /^TextEncoder$/],
    ["Math.clz32(1);", /^Math\.clz32$/],
    ["Math['trunc'](1);", /^Math\.trunc$/],
    ["Float32Array.of(1);", /^Float32Array\.of$/],
    ["Object.freeze(o);", /^Object\.freeze$/],
    ["Number.isInteger(1);", /^Number\.isInteger$/],
    ["Promise.race([]);", /^Promise\.race$/],
    ["p.finally(f);", /^\.finally\(\)$/],
    ["var __objRest = 1;", /esbuild helper __objRest/],
    ["require(name);", /non-literal/],
    ["var r = typeof require;", /require as a value/],
    ["o.crypto_sign_keyPair();", /public-key/],
    ["/^[0-9a-f]{32}$/.test(s);", /^regular expression$/],
    ["/a{1,}/;", /^regular expression$/],
    ["RegExp('x{2,3}');", /^regular expression$/],
    ["new RegExp('a?', 'g');", /^regular expression$/],
    ["/a(?=b)/;", /^regular expression$/],
    ["/(?:ab)/;", /^regular expression$/],
    ["/a+?/;", /^regular expression$/],
    ["/(a)\\1/;", /^regular expression$/],
    ["/\\bword/;", /^regular expression$/],
    ["/\\u20ac/;", /^regular expression$/],
    ["/(ab)+/;", /^regular expression$/],
    ["/(a|b)c/;", /^regular expression$/],
    ["/^a/m;", /^regular expression$/],
    ["/a/s;", /^regular expression$/],
    ["'\\u20ac';", /character above/],
    ["`\\u0100`;", /character above/],
    ["function f() { return arguments[0]; }", /^arguments$/],
    ["class E2 extends Error {}", /class extending Error/],
    ["a.length = 0;", /assignment to \.length/],
    ["ArrayBuffer.isView(x);", /^ArrayBuffer\.isView$/],
    ["Number.MAX_SAFE_INTEGER;", /^Number\.MAX_SAFE_INTEGER$/],
    ["s.trimStart();", /^\.trimStart\(\)$/],
    ["a.reduceRight(f);", /^\.reduceRight\(\)$/],
    ["Array.prototype.slice.call(a, 1);", /^Array\.prototype\.slice$/],
    ["Uint8Array.prototype.map.call(u, f);", /^Uint8Array\.prototype\.map$/],
  ];
  for (const [code, construct] of cases) {
    test(`rejects ${code}`, () => {
      const found = checkEspruinoSubset(code, "b.js");
      assert.ok(found.some((v) => construct.test(v.construct)), JSON.stringify(found));
      assert.ok(found.every((v) => v.file === "b.js" && v.line === 1 && v.message.length > 0));
    });
  }

  test("accepts what Espruino has, and leaves locals that shadow a global alone", () => {
    const code = [
      "var Map = {}; Map.x = 1;",
      "function f(Symbol) { return Symbol }",
      "class A { static s = 1; get g() { return `t${A.s}` } }",
      "var o = { a: 1, b() {}, 'c': a ?? 2 };",
      "for (const x of [1]) Math.max(x, Math.floor(1.5));",
      "require('crypto'); o.finallyDone = 1; o.map(function (x) { return x });",
      "/^[0-9a-fA-F]*$/.test(s); /a|b+c*$/gi; /[{}?()|\\b]\\{2\\}\\?/; new RegExp('^x+$'); RegExp(s); 'a{2}'; '\\xff';",
      "var n = a.length; o.arguments = 1; class K extends Base {}",
      "Object.prototype.hasOwnProperty.call(o, 'k'); K.prototype.m = f; f.call(o);",
    ].join("\n");
    assert.deepEqual(checkEspruinoSubset(code, "b.js"), []);
  });

  test("reports code that does not parse instead of throwing", () => {
    const found = checkEspruinoSubset("function (", "b.js");
    assert.equal(found.length, 1);
    assert.equal(found[0].construct, "unparseable code");
  });

  test("catches esbuild's real __require shim, readable and minified", async () => {
    for (const minify of [false, true]) {
      const out = await esbuild.build({
        stdin: { contents: "export const load = (n: string) => require(n);", loader: "ts" },
        bundle: true, write: false, format: "iife", platform: "neutral", minify, logLevel: "silent",
      });
      const found = checkEspruinoSubset(out.outputFiles[0].text, "b.js").map((v) => v.construct);
      assert.ok(found.includes("Proxy"), `${minify}: ${found}`);
      assert.ok(found.includes("require as a value"), `${minify}: ${found}`);
      if (!minify) assert.ok(found.includes("esbuild helper __require"));
    }
  });

  test("catches real public-key libraries bundled past the build's import guard", async () => {
    const sources = [
      "import nacl from 'tweetnacl'; export const k = nacl.box.keyPair();",
      "import { x25519 } from '@noble/curves/ed25519.js'; export const k = x25519.getPublicKey(new Uint8Array(32));",
    ];
    for (const contents of sources) {
      const out = await esbuild.build({
        stdin: { contents, loader: "ts", resolveDir: ROOT }, bundle: true, write: false, format: "iife",
        platform: "neutral", mainFields: ["module", "main"], external: ["crypto"], minify: true, logLevel: "silent",
      });
      const found = checkEspruinoSubset(out.outputFiles[0].text, "b.js");
      assert.ok(found.some((v) => v.construct === "public-key cryptography"), contents);
    }
  });

  test("renameGlobal renames only the free global, not strings, properties or shadowing locals", () => {
    const code = 'espruinoRequire("crypto");o.espruinoRequire=1;"espruinoRequire";function f(espruinoRequire){return espruinoRequire}';
    const r = renameGlobal(code, "espruinoRequire", "require");
    assert.equal(r.code, 'require("crypto");o.espruinoRequire=1;"espruinoRequire";function f(espruinoRequire){return espruinoRequire}');
    assert.deepEqual(r.offsets, [0]);
  });
});

describe("keyproxy build (command line)", () => {
  async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
    const out: string[] = [];
    const err: string[] = [];
    const log = console.log;
    const error = console.error;
    console.log = (...a: unknown[]) => void out.push(a.join(" "));
    console.error = (...a: unknown[]) => void err.push(a.join(" "));
    try {
      return { code: await buildCommand(argv), out: out.join("\n"), err: err.join("\n") };
    } finally {
      console.log = log;
      console.error = error;
    }
  }

  test("--help prints usage and succeeds", async () => {
    const r = await run(["--help"]);
    assert.equal(r.code, 0);
    assert.match(r.out, /usage: keyproxy build/);
  });

  test("an unknown board, a missing value or an unknown flag is a clear error", async () => {
    const unknown = await run(["--board", "nokia3310"]);
    assert.equal(unknown.code, 2);
    assert.match(unknown.err, /unknown board "nokia3310"; known boards: puckjs/);
    const missing = await run(["--board"]);
    assert.equal(missing.code, 2);
    assert.match(missing.err, /--board needs a value/);
    const flag = await run(["--frobnicate"]);
    assert.equal(flag.code, 2);
    assert.match(flag.err, /unknown argument "--frobnicate"/);
  });
});

// Group SAs (test/group-sa.test.ts has their protocol code, run in Node so that mutation testing can
// instrument it: a bundle of instrumented sources is refused by the build).
test("keyproxy build: --groups carries group SAs within every board's budget; without it no byte of them ships", async () => {
  const out = mkdtempSync(path.join(tmpdir(), "kp-groups-build-"));
  try {
    for (const board of Object.keys(BOARDS)) {
      const with_ = await buildFirmware({ board, outDir: out, groups: true });
      const without = await buildFirmware({ board, outDir: out });
      assert.deepEqual(with_.problems, [], board);
      assert.ok(with_.ok, `${board} with groups: ${with_.bytes} of ${with_.budget} bytes`);
      assert.ok(without.ok, board);
      assert.ok(with_.bytes > without.bytes, `${board}: groups cost bytes (${with_.bytes} > ${without.bytes})`);
      // The per-sender window lookup (link.rxs_[from] || a new window), as the minifier writes it.
      const windowLookup = /\]\|\|\{top:0,bits:0\}/;
      assert.match(with_.code, windowLookup, board);
      assert.doesNotMatch(without.code, windowLookup, `${board}: group code in a bundle built without --groups`);
    }
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});
