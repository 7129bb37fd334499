// The output gate: reads the bundle esbuild produced, exactly as it will be flashed, and lists every
// construct the Espruino interpreter cannot run (design.md §5). The lint checks our sources; this checks
// what actually ships, including whatever esbuild added (runtime helpers, the `__require` shim) and
// whatever came from node_modules.
//
// Globals are found by scope: an identifier counts as a reference to the global `Map` only when no
// enclosing function (or the program) declares a `Map` of its own. Block scopes are folded into their
// function, which can only make the gate more lenient, never report a local as a global.

import { parse } from "acorn";
import {
  ARGUMENTS_MESSAGE,
  ERROR_SUBCLASS_MESSAGE,
  FORBIDDEN_ANY_MEMBERS,
  FORBIDDEN_GLOBALS,
  FORBIDDEN_MEMBERS,
  hasWideChar,
  HOLLOW_PROTOTYPES,
  hollowPrototypeMessage,
  LENGTH_ASSIGN_MESSAGE,
  PUBLIC_KEY_NAME,
  regexProblem,
  WIDE_CHAR_MESSAGE,
} from "./eslint-espruino.js";

export interface SubsetViolation {
  /** The file given to checkEspruinoSubset (the bundle). */
  file: string;
  /** 1-based line and 0-based column in that file. */
  line: number;
  column: number;
  /** Character offset in that file. */
  offset: number;
  /** What was found, in words: "destructuring", "Map", "esbuild helper __objRest". */
  construct: string;
  /** One plain sentence for the developer. */
  message: string;
}

/** esbuild's runtime helpers and the source construct that makes esbuild emit each one. None may ship:
 *  they lean on Symbol, WeakMap, Object.freeze, Proxy, generators or property descriptors.
 *  Not listed, on purpose: __defProp and __export, which esbuild emits for a namespace import
 *  (`import * as m`) and which only need Object.defineProperty with a getter, which Espruino has. */
export const ESBUILD_HELPERS: Record<string, string> = {
  __pow: "the ** operator",
  __objRest: "object rest",
  __spreadValues: "object spread",
  __spreadProps: "object spread",
  __defNormalProp: "object spread or class fields",
  __publicField: "class fields",
  __privateGet: "#private", __privateSet: "#private", __privateAdd: "#private", __privateMethod: "#private",
  __privateIn: "#private", __privateWrapper: "#private", __accessCheck: "#private", __earlyAccess: "#private",
  __template: "a tagged template",
  __async: "async/await", __await: "async/await", __asyncGenerator: "async generators",
  __yieldStar: "async generators", __forAwait: "for await", __knownSymbol: "Symbol",
  __require: "a bare require (esbuild's Proxy-based shim)",
  __commonJS: "a CommonJS module", __toESM: "a CommonJS module", __toCommonJS: "a CommonJS module",
  __reExport: "export * from a CommonJS module", __esm: "a lazily initialised module",
  __superGet: "super in a lowered class", __superSet: "super in a lowered class", __superWrapper: "super in a lowered class",
  __decorateClass: "decorators", __decorateParam: "decorators", __decoratorStart: "decorators", __runInitializers: "decorators",
  __using: "using declarations", __callDispose: "using declarations",
  __name: "keepNames",
};

type AstNode = { type: string; start: number; end: number; loc: { start: { line: number; column: number } }; [key: string]: unknown };

const forbiddenGlobals: Readonly<Record<string, string>> = FORBIDDEN_GLOBALS;
const forbiddenMembers: Readonly<Record<string, readonly string[]>> = FORBIDDEN_MEMBERS;
const SKIP_KEYS = new Set(["type", "start", "end", "loc", "range"]);

function isNode(x: unknown): x is AstNode {
  return typeof x === "object" && x !== null && typeof (x as { type?: unknown }).type === "string";
}

function isFunction(node: AstNode): boolean {
  return node.type === "FunctionDeclaration" || node.type === "FunctionExpression" || node.type === "ArrowFunctionExpression";
}

/** Calls visit for every node, with its parent, the key it sits under and the enclosing scopes
 *  (Program and functions, innermost last). */
function walk(root: AstNode, visit: (node: AstNode, parent: AstNode | null, key: string, scopes: AstNode[]) => void): void {
  const scopes: AstNode[] = [];
  function go(node: AstNode, parent: AstNode | null, key: string): void {
    visit(node, parent, key, scopes);
    const opens = node.type === "Program" || isFunction(node);
    if (opens) scopes.push(node);
    for (const k of Object.keys(node)) {
      if (SKIP_KEYS.has(k)) continue;
      const child = node[k];
      if (Array.isArray(child)) {
        for (const c of child) if (isNode(c)) go(c, node, k);
      } else if (isNode(child)) {
        go(child, node, k);
      }
    }
    if (opens) scopes.pop();
  }
  go(root, null, "");
  return;
}

/** Names bound by a declaration pattern (`a`, `{a, b: [c]}`, `d = 1`, `...e`). */
function patternNames(pattern: unknown, out: string[]): string[] {
  if (!isNode(pattern)) return out;
  switch (pattern.type) {
    case "Identifier": out.push(pattern.name as string); break;
    case "ObjectPattern":
      for (const p of pattern.properties as AstNode[]) patternNames(p.type === "RestElement" ? p.argument : p.value, out);
      break;
    case "ArrayPattern": for (const e of pattern.elements as unknown[]) patternNames(e, out); break;
    case "RestElement": patternNames(pattern.argument, out); break;
    case "AssignmentPattern": patternNames(pattern.left, out); break;
  }
  return out;
}

/** Every name each scope (Program or function) declares, block declarations folded into the function. */
function collectBindings(program: AstNode): Map<AstNode, Set<string>> {
  const bindings = new Map<AstNode, Set<string>>();
  function bind(scope: AstNode | undefined, names: string[]): void {
    if (!scope) return;
    let set = bindings.get(scope);
    if (!set) bindings.set(scope, (set = new Set()));
    for (const n of names) set.add(n);
  }
  walk(program, (node, _parent, _key, scopes) => {
    const current = scopes[scopes.length - 1];
    switch (node.type) {
      case "VariableDeclarator": bind(current, patternNames(node.id, [])); break;
      case "FunctionDeclaration":
      case "ClassDeclaration": bind(current, patternNames(node.id, [])); break;
      case "CatchClause": bind(current, patternNames(node.param, [])); break;
      case "ImportSpecifier":
      case "ImportDefaultSpecifier":
      case "ImportNamespaceSpecifier": bind(current, patternNames(node.local, [])); break;
    }
    if (isFunction(node)) {
      const own: string[] = [];
      if (node.type === "FunctionExpression") patternNames(node.id, own);
      for (const p of node.params as AstNode[]) patternNames(p, own);
      bind(node, own);
    }
  });
  return bindings;
}

/** Whether an Identifier in this position reads a variable (as opposed to naming a property, a label
 *  or a declaration). Assignment targets count as references. */
function isReference(parent: AstNode | null, key: string): boolean {
  if (!parent) return true;
  switch (parent.type) {
    case "MemberExpression": return key !== "property" || parent.computed === true;
    case "Property":
    case "MethodDefinition":
    case "PropertyDefinition": return key !== "key" || parent.computed === true;
    case "LabeledStatement":
    case "BreakStatement":
    case "ContinueStatement":
    case "MetaProperty": return false;
    case "VariableDeclarator": return key !== "id";
    case "FunctionDeclaration":
    case "FunctionExpression":
    case "ArrowFunctionExpression": return key === "body";
    case "ClassDeclaration":
    case "ClassExpression": return key !== "id";
    case "CatchClause": return key !== "param";
    case "ArrayPattern":
    case "RestElement": return false;
    case "AssignmentPattern": return key !== "left";
    case "ImportSpecifier":
    case "ImportDefaultSpecifier":
    case "ImportNamespaceSpecifier":
    case "ExportSpecifier": return false;
  }
  return true;
}

function propertyName(member: AstNode): string | undefined {
  const p = member.property as AstNode;
  if (!member.computed && p.type === "Identifier") return p.name as string;
  if (member.computed && p.type === "Literal" && typeof p.value === "string") return p.value;
  return undefined;
}

function isStringLiteral(node: unknown): boolean {
  return isNode(node) && node.type === "Literal" && typeof node.value === "string";
}

const UNSUPPORTED = " is not supported by Espruino";

/** Syntax Espruino's parser rejects or misruns, by node type. */
function syntaxViolation(node: AstNode, parent: AstNode | null, key: string): string | undefined {
  switch (node.type) {
    case "ObjectPattern":
    case "ArrayPattern": return "destructuring";
    case "RestElement": return "a rest element";
    case "SpreadElement": return "spread (...)";
    case "AssignmentPattern":
      return parent && isFunction(parent) && key === "params" ? "a default parameter value" : undefined;
    case "Property":
    case "MethodDefinition":
    case "PropertyDefinition": return node.computed ? "a computed key" : undefined;
    case "LabeledStatement": return "a labelled statement";
    case "ChainExpression": return "optional chaining (?.)";
    case "BinaryExpression":
    case "AssignmentExpression": return node.operator === "**" || node.operator === "**=" ? `the ${node.operator as string} operator` : undefined;
    case "Literal": return node.bigint !== undefined ? "a BigInt literal" : undefined;
    case "PrivateIdentifier": return "#private";
    case "TaggedTemplateExpression": return "a tagged template";
    case "MetaProperty": return `${(node.meta as AstNode).name as string}.${(node.property as AstNode).name as string}`;
    case "AwaitExpression": return "await";
    case "ImportExpression": return "dynamic import()";
    case "ForOfStatement": return node.await ? "for await" : undefined;
  }
  if (isFunction(node)) {
    if (node.generator) return "a generator";
    if (node.async) return "an async function";
  }
  return undefined;
}

/** Parses the final bundle and lists every construct outside the Espruino subset. Never throws: code
 *  that does not parse is itself a violation. */
export function checkEspruinoSubset(code: string, file: string): SubsetViolation[] {
  const violations: SubsetViolation[] = [];
  function report(node: AstNode, construct: string, message: string): void {
    violations.push({ file, line: node.loc.start.line, column: node.loc.start.column, offset: node.start, construct, message });
  }

  let program: AstNode;
  try {
    program = parse(code, { ecmaVersion: "latest", sourceType: "script", locations: true }) as unknown as AstNode;
  } catch (e) {
    const err = e as { message: string; pos?: number; loc?: { line: number; column: number } };
    violations.push({
      file, line: err.loc?.line ?? 0, column: err.loc?.column ?? 0, offset: err.pos ?? 0,
      construct: "unparseable code", message: `the bundle does not parse: ${err.message}`,
    });
    return violations;
  }

  const bindings = collectBindings(program);
  const isGlobal = (name: string, scopes: AstNode[]): boolean => !scopes.some((s) => bindings.get(s)?.has(name));
  const reportedPublicKey = new Set<string>();

  walk(program, (node, parent, key, scopes) => {
    const construct = syntaxViolation(node, parent, key);
    if (construct) report(node, construct, construct + UNSUPPORTED);

    // Library semantics Espruino does not share, where they can be seen in the code (design.md §5).
    if (node.type === "Literal") {
      const regex = node.regex as { pattern: string; flags: string } | undefined;
      const problem = regex ? regexProblem(regex.pattern, regex.flags) : undefined;
      if (problem) report(node, "regular expression", problem);
      if (typeof node.value === "string" && hasWideChar(node.value)) report(node, "a character above \\xFF", WIDE_CHAR_MESSAGE);
    }
    if (node.type === "TemplateElement") {
      const cooked = (node.value as { cooked?: string | null }).cooked;
      if (cooked && hasWideChar(cooked)) report(node, "a character above \\xFF", WIDE_CHAR_MESSAGE);
    }
    if ((node.type === "NewExpression" || node.type === "CallExpression") && (node.callee as AstNode).type === "Identifier" &&
        (node.callee as AstNode).name === "RegExp" && isGlobal("RegExp", scopes)) {
      const [p, f] = node.arguments as AstNode[];
      if (p && isStringLiteral(p)) {
        const flags = f && isStringLiteral(f) ? (f.value as string) : "";
        const problem = regexProblem(p.value as string, flags);
        if (problem) report(node, "regular expression", problem);
      }
    }
    if ((node.type === "ClassDeclaration" || node.type === "ClassExpression") && node.superClass &&
        (node.superClass as AstNode).type === "Identifier" && /Error$/.test((node.superClass as AstNode).name as string)) {
      report(node, "a class extending Error", ERROR_SUBCLASS_MESSAGE);
    }
    if (node.type === "AssignmentExpression" && (node.left as AstNode).type === "MemberExpression" &&
        propertyName(node.left as AstNode) === "length") {
      report(node, "assignment to .length", LENGTH_ASSIGN_MESSAGE);
    }

    if (node.type === "Identifier") {
      const name = node.name as string;
      if (name === "arguments" && isReference(parent, key)) report(node, "arguments", ARGUMENTS_MESSAGE);
      // Every occurrence, so that the call sites (which map back to sources) are among them.
      if (Object.hasOwn(ESBUILD_HELPERS, name)) {
        report(node, `esbuild helper ${name}`,
          `esbuild runtime helper ${name} (emitted for ${ESBUILD_HELPERS[name]}) cannot run on Espruino`);
      }
      if (PUBLIC_KEY_NAME.test(name) && !reportedPublicKey.has(name)) {
        reportedPublicKey.add(name);
        report(node, "public-key cryptography",
          `public-key cryptography (${name}) does not belong on the device: the gateway does it`);
      }
      if (isReference(parent, key) && isGlobal(name, scopes)) {
        if (Object.hasOwn(forbiddenGlobals, name)) report(node, name, forbiddenGlobals[name]);
        if (name === "require" || name === "espruinoRequire") {
          const call = parent && parent.type === "CallExpression" && key === "callee" ? parent : undefined;
          const args = call ? (call.arguments as unknown[]) : [];
          if (!call) {
            report(node, "require as a value", `${name} used as a value (esbuild's __require shim?): only require("module") calls run on Espruino`);
          } else if (args.length !== 1 || !isStringLiteral(args[0])) {
            report(node, "require with a non-literal argument", `require with a non-literal argument${UNSUPPORTED}: name the module with a string literal`);
          }
        }
      }
    }

    if (node.type === "MemberExpression") {
      const prop = propertyName(node);
      const object = node.object as AstNode;
      if (object.type === "MemberExpression" && propertyName(object) === "prototype") {
        const owner = object.object as AstNode;
        if (owner.type === "Identifier" && HOLLOW_PROTOTYPES.includes(owner.name as string) && isGlobal(owner.name as string, scopes)) {
          report(node, `${owner.name as string}.prototype.${prop ?? "[...]"}`, hollowPrototypeMessage(owner.name as string));
        }
      }
      if (prop !== undefined) {
        if (object.type === "Identifier" && isGlobal(object.name as string, scopes) &&
            Object.hasOwn(forbiddenMembers, object.name as string) &&
            forbiddenMembers[object.name as string].includes(prop)) {
          const name = `${object.name as string}.${prop}`;
          report(node, name, `${name} does not exist on Espruino`);
        } else if (FORBIDDEN_ANY_MEMBERS.includes(prop)) {
          report(node, `.${prop}()`, `.${prop}() does not exist on Espruino`);
        }
        if (PUBLIC_KEY_NAME.test(prop) && !reportedPublicKey.has(prop)) {
          reportedPublicKey.add(prop);
          report(node, "public-key cryptography",
            `public-key cryptography (${prop}) does not belong on the device: the gateway does it`);
        }
      }
    }
  });
  return violations;
}

/** Renames references to the free global `from` as `to` (the build's espruinoRequire -> require).
 *  Returns the new code and the offsets (in the input) of each renamed identifier, in order. */
export function renameGlobal(code: string, from: string, to: string): { code: string; offsets: number[] } {
  const program = parse(code, { ecmaVersion: "latest", sourceType: "script", locations: true }) as unknown as AstNode;
  const bindings = collectBindings(program);
  const offsets: number[] = [];
  walk(program, (node, parent, key, scopes) => {
    if (node.type === "Identifier" && node.name === from && isReference(parent, key) &&
        !scopes.some((s) => bindings.get(s)?.has(from))) {
      offsets.push(node.start);
    }
  });
  offsets.sort((a, b) => a - b);
  let out = "";
  let last = 0;
  for (const at of offsets) {
    out += code.slice(last, at) + to;
    last = at + from.length;
  }
  return { code: out + code.slice(last), offsets };
}
