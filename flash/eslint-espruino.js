// The Espruino subset as ESLint sees it: one list of what the interpreter lacks (design.md §5), shared
// by the lint (flash/lint.ts, eslint.config.js) and the bundle gate (flash/subset.ts), plus a local
// plugin with the one rule no published plugin has: closures over a `for (let ...)` variable.
//
// Plain JavaScript on purpose: `npx eslint` loads eslint.config.js without a TypeScript loader, and
// this file is imported from there.

import esx from "eslint-plugin-es-x";
import tseslint from "typescript-eslint";

/** Globals the Espruino interpreter does not have, with the reason shown to the developer. */
export const FORBIDDEN_GLOBALS = {
  Map: "Map does not exist on Espruino: use a plain object or an array",
  Set: "Set does not exist on Espruino: use a plain object or an array",
  WeakMap: "WeakMap does not exist on Espruino",
  WeakSet: "WeakSet does not exist on Espruino",
  WeakRef: "WeakRef does not exist on Espruino",
  FinalizationRegistry: "FinalizationRegistry does not exist on Espruino",
  Symbol: "Symbol does not exist on Espruino",
  Proxy: "Proxy does not exist on Espruino",
  Reflect: "Reflect does not exist on Espruino",
  BigInt: "BigInt does not exist on Espruino",
  BigInt64Array: "BigInt64Array does not exist on Espruino",
  BigUint64Array: "BigUint64Array does not exist on Espruino",
  TextEncoder: "TextEncoder does not exist on Espruino: use E.toUint8Array / firmware/bytes.ts",
  TextDecoder: "TextDecoder does not exist on Espruino: use E.toString / firmware/bytes.ts",
};

const TYPED_ARRAYS = [
  "Int8Array", "Uint8Array", "Uint8ClampedArray", "Int16Array", "Uint16Array",
  "Int32Array", "Uint32Array", "Float32Array", "Float64Array",
];

/** Static members Espruino lacks, by the global object that would carry them. */
export const FORBIDDEN_MEMBERS = {
  Math: ["imul", "clz32", "trunc", "sign", "cbrt", "log2", "log10", "hypot", "fround", "cosh", "sinh", "tanh",
    "acosh", "asinh", "atanh", "expm1", "log1p", "f16round", "sumPrecise"],
  Array: ["from", "of"],
  Object: ["freeze", "getOwnPropertySymbols", "groupBy", "isExtensible", "preventExtensions", "is", "seal", "isSealed",
    "isFrozen", "hasOwn"],
  Number: ["isInteger", "parseInt", "parseFloat", "isNaN", "isFinite", "isSafeInteger", "EPSILON", "MAX_SAFE_INTEGER",
    "MIN_SAFE_INTEGER"],
  Promise: ["race", "any", "allSettled", "try", "withResolvers"],
  ArrayBuffer: ["isView"],
  String: ["fromCodePoint", "raw"],
  ...Object.fromEntries(TYPED_ARRAYS.map((t) => [t, ["from", "of"]])),
};

/** Methods Espruino lacks wherever V8 has them, checked by name alone (Promise.prototype.finally,
 *  Array.prototype.flat, String.prototype.trimStart, ...): names no firmware object uses for its own. */
export const FORBIDDEN_ANY_MEMBERS = [
  "finally", "reduceRight", "findLast", "findLastIndex", "copyWithin", "flatMap", "flat", "toReversed", "toSorted",
  "toSpliced", "codePointAt", "normalize", "localeCompare", "trimStart", "trimEnd", "trimLeft", "trimRight", "matchAll",
  "toPrecision", "toExponential", "toLocaleString", "BYTES_PER_ELEMENT",
];

/** Packages that are public-key cryptography: the gateway's job, never the device's. */
export const PUBLIC_KEY_PACKAGES = ["tweetnacl", "@noble/curves"];

/** Names that only public-key code carries (tweetnacl's exports, @noble/curves' APIs). */
export const PUBLIC_KEY_NAME = /scalarmult|x25519|ed25519|crypto_box|crypto_sign/i;

/** What Espruino 2v29's regular expressions lack (src/jswrap_regexp.c: a small backtracking matcher),
 *  for a pattern and its flags, or undefined when the pattern is inside what it runs as V8 does. It has
 *  literal characters, `.`, classes `[...]` with ranges and `^`, the escapes \d \D \s \S \w \W \t \n \r
 *  \f \v \0 \xHH and escaped punctuation, `*` and `+` after one character or class, `^`, `$`, `|` at the
 *  top level and capturing groups without a quantifier; the flags g and i.
 *  @param {string} pattern @param {string} flags @returns {string | undefined} */
export function regexProblem(pattern, flags) {
  const badFlag = flags.replace(/[gi]/g, "");
  if (badFlag) return `the regular expression flag '${badFlag[0]}' is not supported by Espruino (only g and i)`;
  let depth = 0;
  let inClass = false;
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === "\\") {
      const e = pattern[i + 1] ?? "";
      if (/[1-9]/.test(e)) return `a back-reference (\\${e}) in a regular expression: Espruino throws "Backreferences not supported"`;
      if (e === "b" || e === "B") {
        if (!inClass) return `\\${e} in a regular expression: Espruino has no word boundaries (it reads \\b as a backspace character)`;
      }
      if (e === "u" || e === "c" || e === "p" || e === "P" || e === "k") return `the escape \\${e} in a regular expression is not supported by Espruino: write the character, or \\xHH for a byte`;
      i++;
      continue;
    }
    if (inClass) {
      if (c === "]") inClass = false;
      continue;
    }
    if (c === "[") { inClass = true; continue; }
    if (c === "{" && /^\{\d+(,\d*)?\}/.test(pattern.slice(i))) {
      const q = /^\{\d+(,\d*)?\}/.exec(pattern.slice(i))[0];
      return `a counted quantifier ${q} in a regular expression: Espruino takes it as literal text, so the expression never matches what it says; repeat the character, or test the length separately (s.length === 32 && /^[0-9a-f]+$/.test(s))`;
    }
    if (c === "?") {
      if (pattern[i - 1] === "(") return `a group with (?${pattern[i + 1] ?? ""} in a regular expression is not supported by Espruino (no lookaround, no non-capturing groups)`;
      return "the ? quantifier (optional, or lazy after * and +) in a regular expression is not supported by Espruino: write the alternatives out";
    }
    if (c === "(") depth++;
    if (c === ")") {
      depth--;
      const after = pattern.slice(i + 1);
      if (/^[*+?]/.test(after) && !/^\{\d+(,\d*)?\}/.test(after)) {
        return `a quantifier (${after[0]}) after a group in a regular expression is not supported by Espruino: it reads it as a literal character`;
      }
    }
    if (c === "|" && depth > 0) return "| inside a group in a regular expression is not supported by Espruino: put the alternatives at the top level";
  }
  return undefined;
}

/** Whether a string holds a character Espruino cannot: its strings are bytes, and a character above
 *  0xFF is stored as its low byte ("\u20ac" becomes "\xac").
 *  @param {string} s */
export function hasWideChar(s) {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) > 255) return true;
  return false;
}

/** Built-ins whose methods Espruino keeps out of reach of `X.prototype`: `Array.prototype.slice` is
 *  undefined there (`[].slice` works). Object.prototype.hasOwnProperty and toString do exist. */
export const HOLLOW_PROTOTYPES = ["Array", "String", "Number", "Boolean", "Function", "ArrayBuffer", "DataView", ...TYPED_ARRAYS];

/** @param {string} owner */
export function hollowPrototypeMessage(owner) {
  return `${owner}.prototype.<method> is undefined on Espruino (its built-in prototypes do not hold their methods): call the method on a value instead`;
}

export const WIDE_CHAR_MESSAGE =
  "a string with a character above \\xFF: Espruino strings are bytes and keep only its low byte; encode it as UTF-8 bytes";
export const ARGUMENTS_MESSAGE =
  "`arguments` is not supported reliably by Espruino: its length is the number of declared parameters, not of arguments passed; declare the parameters";
export const ERROR_SUBCLASS_MESSAGE =
  "a class extending Error: on Espruino super(message) does not set this.message and String(e) is \"[object Object]\"; throw new Error(message)";
export const LENGTH_ASSIGN_MESSAGE =
  "assigning to .length: Espruino throws \"Assignment to a constant\"; make a new array or use splice";

const ESPRUINO_SHARES_LOOP_BINDING =
  "Espruino shares one binding across iterations, so every closure would see the last value";

/** @param {any} node */
function isFunctionNode(node) {
  return node.type === "FunctionDeclaration" || node.type === "FunctionExpression" || node.type === "ArrowFunctionExpression";
}

/** A closure (function or arrow) inside a `for (let ...)` / `for (const ... of/in)` loop that uses the
 *  loop variable. On V8 each iteration gets its own binding; on Espruino they all share one. */
const noLoopClosure = {
  meta: {
    type: "problem",
    docs: { description: "disallow closures over for-let/for-const loop variables (Espruino shares one binding)" },
    schema: [],
    messages: {
      captured: "closure captures the loop variable '{{name}}' of a for ({{kind}} ...) loop: " + ESPRUINO_SHARES_LOOP_BINDING,
    },
  },
  /** @param {any} context */
  create(context) {
    /** @param {any} loop @param {any} declaration */
    function check(loop, declaration) {
      if (!declaration || declaration.type !== "VariableDeclaration" || declaration.kind === "var") return;
      const reported = new Set();
      for (const variable of context.sourceCode.getDeclaredVariables(declaration)) {
        for (const ref of variable.references) {
          let node = ref.identifier.parent;
          let closure = null;
          while (node && node !== loop) {
            if (isFunctionNode(node)) closure = node;
            node = node.parent;
          }
          // Only functions that sit inside this loop count; the loop inside a function is fine.
          if (!node || !closure || reported.has(closure)) continue;
          reported.add(closure);
          context.report({ node: closure, messageId: "captured", data: { name: variable.name, kind: declaration.kind } });
        }
      }
    }
    return {
      /** @param {any} node */
      ForStatement(node) { check(node, node.init); },
      /** @param {any} node */
      ForOfStatement(node) { check(node, node.left); },
      /** @param {any} node */
      ForInStatement(node) { check(node, node.left); },
    };
  },
};

/** Regular expressions Espruino's matcher cannot run as written (regexProblem), as literals and as
 *  RegExp("...") / new RegExp("...") with string literals; and string literals with characters above 0xFF. */
const noUnsupportedLiteral = {
  meta: {
    type: "problem",
    docs: { description: "disallow regular expressions and strings that Espruino reads differently" },
    schema: [],
    messages: { bad: "{{message}}" },
  },
  /** @param {any} context */
  create(context) {
    /** @param {any} node @param {string} message */
    const report = (node, message) => context.report({ node, messageId: "bad", data: { message } });
    /** @param {any} node */
    function regExpCall(node) {
      if (node.callee.type !== "Identifier" || node.callee.name !== "RegExp") return;
      const [p, f] = node.arguments;
      if (!p || p.type !== "Literal" || typeof p.value !== "string") return;
      const flags = f && f.type === "Literal" && typeof f.value === "string" ? f.value : "";
      const problem = regexProblem(p.value, flags);
      if (problem) report(node, problem);
    }
    return {
      /** @param {any} node */
      Literal(node) {
        if (node.regex) {
          const problem = regexProblem(node.regex.pattern, node.regex.flags);
          if (problem) report(node, problem);
        } else if (typeof node.value === "string" && hasWideChar(node.value)) report(node, WIDE_CHAR_MESSAGE);
      },
      /** @param {any} node */
      TemplateElement(node) {
        if (node.value.cooked && hasWideChar(node.value.cooked)) report(node, WIDE_CHAR_MESSAGE);
      },
      NewExpression: regExpCall,
      CallExpression: regExpCall,
    };
  },
};

export const espruinoPlugin = {
  meta: { name: "eslint-plugin-espruino-local", version: "0.1.0" },
  rules: { "no-loop-closure": noLoopClosure, "no-unsupported-literal": noUnsupportedLiteral },
};

/** es-x rules for syntax Espruino lacks, and the construct each one names in our messages. */
export const ESX_CONSTRUCTS = {
  "es-x/no-destructuring": "destructuring",
  "es-x/no-default-parameters": "a default parameter value",
  "es-x/no-rest-parameters": "a rest parameter",
  "es-x/no-spread-elements": "spread (...)",
  "es-x/no-rest-spread-properties": "object rest/spread",
  "es-x/no-computed-properties": "a computed key",
  "es-x/no-generators": "a generator",
  "es-x/no-async-functions": "an async function",
  "es-x/no-async-iteration": "async iteration",
  "es-x/no-top-level-await": "top-level await",
  "es-x/no-optional-chaining": "optional chaining (?.)",
  "es-x/no-exponential-operators": "the ** operator",
  "es-x/no-bigint": "BigInt",
  "es-x/no-class-private-fields": "a #private field",
  "es-x/no-class-private-methods": "a #private method",
  "es-x/no-private-in": "#private in",
  "es-x/no-new-target": "new.target",
  "es-x/no-import-meta": "import.meta",
  "es-x/no-dynamic-import": "dynamic import()",
};

const REQUIRE_HINT =
  "use espruinoRequire(\"name\") with a string literal for Espruino's built-in modules (esbuild wraps a bare require in a shim Espruino cannot run)";

/** The flat-config objects that hold firmware to the Espruino subset.
 *  @param {string[]} files glob patterns the rules apply to */
export function espruinoLintConfig(files) {
  /** @type {Record<string, any>} */
  const rules = {
    // Espruino does not hoist: a function called before its declaration is "not defined".
    "@typescript-eslint/no-use-before-define": ["error", {
      functions: true, classes: true, variables: true, enums: true,
      typedefs: false, ignoreTypeReferences: true, allowNamedExports: false,
    }],
    "espruino/no-loop-closure": "error",
    "espruino/no-unsupported-literal": "error",
    "no-labels": "error",
    "no-restricted-globals": ["error", ...Object.entries(FORBIDDEN_GLOBALS).map(([name, message]) => ({ name, message }))],
    "no-restricted-properties": ["error",
      ...Object.entries(FORBIDDEN_MEMBERS).flatMap(([object, props]) =>
        props.map((property) => ({ object, property, message: `${object}.${property} does not exist on Espruino` }))),
      ...FORBIDDEN_ANY_MEMBERS.map((property) => ({ property, message: `.${property}() does not exist on Espruino` })),
    ],
    "no-restricted-syntax": ["error",
      { selector: "TaggedTemplateExpression", message: "a tagged template is not supported by Espruino" },
      { selector: "CallExpression[callee.name='require']", message: `a bare require: ${REQUIRE_HINT}` },
      { selector: "CallExpression[callee.name='espruinoRequire'][arguments.0.type!='Literal']", message: `require with a non-literal argument: ${REQUIRE_HINT}` },
      { selector: "Identifier[name='arguments']", message: ARGUMENTS_MESSAGE },
      ...HOLLOW_PROTOTYPES.map((owner) => ({
        selector: `MemberExpression > MemberExpression.object[object.name='${owner}'][property.name='prototype']`,
        message: hollowPrototypeMessage(owner),
      })),
      { selector: "ClassDeclaration[superClass.name=/Error$/], ClassExpression[superClass.name=/Error$/]", message: ERROR_SUBCLASS_MESSAGE },
      { selector: "AssignmentExpression > MemberExpression.left[property.name='length']", message: LENGTH_ASSIGN_MESSAGE },
      { selector: `Identifier[name=${PUBLIC_KEY_NAME}]`, message: "public-key cryptography does not belong on the device: the gateway does it" },
    ],
    "no-restricted-imports": ["error", {
      patterns: PUBLIC_KEY_PACKAGES.map((name) => ({
        group: [name, `${name}/*`],
        message: `${name} is public-key cryptography: the device must never carry it, the gateway does that work`,
      })),
    }],
  };
  for (const rule of Object.keys(ESX_CONSTRUCTS)) rules[rule] = "error";
  return [
    {
      files,
      ignores: ["**/*.d.ts"],
      languageOptions: { parser: tseslint.parser, ecmaVersion: "latest", sourceType: "module" },
      plugins: { "es-x": esx, "@typescript-eslint": tseslint.plugin, espruino: espruinoPlugin },
      linterOptions: { reportUnusedDisableDirectives: "error" },
      rules,
    },
  ];
}

export default espruinoPlugin;
