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
  Math: ["imul", "clz32", "trunc", "sign", "cbrt", "log2", "log10", "hypot", "fround"],
  Array: ["from", "of"],
  Object: ["freeze", "getOwnPropertySymbols"],
  Number: ["isInteger"],
  Promise: ["race", "any", "allSettled"],
  ...Object.fromEntries(TYPED_ARRAYS.map((t) => [t, ["from", "of"]])),
};

/** Methods Espruino lacks on any object (checked by name alone: Promise.prototype.finally). */
export const FORBIDDEN_ANY_MEMBERS = ["finally"];

/** Packages that are public-key cryptography: the gateway's job, never the device's. */
export const PUBLIC_KEY_PACKAGES = ["tweetnacl", "@noble/curves"];

/** Names that only public-key code carries (tweetnacl's exports, @noble/curves' APIs). */
export const PUBLIC_KEY_NAME = /scalarmult|x25519|ed25519|crypto_box|crypto_sign/i;

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

export const espruinoPlugin = {
  meta: { name: "eslint-plugin-espruino-local", version: "0.1.0" },
  rules: { "no-loop-closure": noLoopClosure },
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
