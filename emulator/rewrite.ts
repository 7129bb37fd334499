// Makes QuickJS run a script with two of Espruino's scoping quirks (design.md §5), so a firmware bug
// that leans on standard JavaScript behaviour fails in the emulator as it would on the device:
//
//  1. No hoisting of function declarations. Espruino defines a function when execution reaches its
//     declaration; calling it earlier fails. We turn `function f(a) {...}` into
//     `var f = function f(a) {...};` at the same place, so an early call finds `f` undefined.
//  2. One binding per `for (let ...)` loop, shared by every iteration's closures. We move the
//     declaration out of the loop head into a block around the loop:
//     `for (let i = 0; i < n; i++) B`  ->  `{let i = 0; for (; i < n; i++) B}`
//     `for (const x of xs) B`          ->  `{let x; for (x of xs) B}`
//     Labels stay on the loop itself, so `continue label` keeps working.
//
// The rewrite is textual (acorn positions), so everything else in the source is left byte for byte.

import { parse } from "acorn";
import { full } from "acorn-walk";
import type { Node } from "acorn";

// acorn's node types are loose unions; we read only these few fields.
interface AnyNode extends Node {
  id?: AnyNode | null;
  init?: AnyNode | null;
  test?: AnyNode | null;
  update?: AnyNode | null;
  body?: AnyNode;
  left?: AnyNode;
  right?: AnyNode;
  kind?: string;
  declarations?: AnyNode[];
  label?: AnyNode;
  name?: string;
  await?: boolean;
}

function isLoopDeclaration(n: AnyNode | null | undefined): boolean {
  return !!n && n.type === "VariableDeclaration" && (n.kind === "let" || n.kind === "const");
}

/** A for-loop whose head declares let/const bindings we can move out (plain identifiers only). */
function isSharedBindingLoop(n: AnyNode): boolean {
  if (n.type === "ForStatement") return isLoopDeclaration(n.init);
  if (n.type === "ForInStatement" || n.type === "ForOfStatement") {
    if (!isLoopDeclaration(n.left) || n.await) return false;
    const decls = n.left!.declarations!;
    return decls.length === 1 && decls[0].id!.type === "Identifier";
  }
  return false;
}

function labelledLoop(n: AnyNode): AnyNode {
  let body = n;
  while (body.type === "LabeledStatement") body = body.body!;
  return body;
}

/** Rewrites `source` (a classic script) to Espruino's scoping. Throws acorn's SyntaxError on bad input. */
export function rewriteForEspruino(source: string): string {
  const program = parse(source, { ecmaVersion: "latest", sourceType: "script", allowHashBang: true }) as unknown as AnyNode;

  // Every node we change, in source order; a node's range contains those of its descendants.
  const targets: AnyNode[] = [];
  full(program, (node) => {
    const n = node as AnyNode;
    if (n.type === "FunctionDeclaration" && n.id) targets.push(n);
    else if (isSharedBindingLoop(n)) targets.push(n);
    else if (n.type === "LabeledStatement" && isSharedBindingLoop(labelledLoop(n))) targets.push(n);
  });
  targets.sort((a, b) => a.start - b.start || b.end - a.end);

  /** Source text of [start, end) with every target inside it rewritten, except `self`. */
  function render(start: number, end: number, self?: AnyNode): string {
    let out = "";
    let cursor = start;
    for (const t of targets) {
      if (t === self || t.start < cursor || t.end > end) continue;
      out += source.slice(cursor, t.start) + transform(t);
      cursor = t.end;
    }
    return out + source.slice(cursor, end);
  }

  function slice(n: AnyNode | null | undefined): string {
    return n ? render(n.start, n.end) : "";
  }

  function transform(n: AnyNode): string {
    if (n.type === "FunctionDeclaration") {
      return `var ${n.id!.name} = ${render(n.start, n.end, n)};`;
    }
    // `a: b: for (...)`: the labels go back in front of the loop, inside the new block.
    let labels = "";
    let loop = n;
    while (loop.type === "LabeledStatement") {
      labels += `${loop.label!.name}: `;
      loop = loop.body!;
    }
    if (loop.type === "ForStatement") {
      const decl = loop.init!;
      const head = `for (; ${slice(loop.test)}; ${slice(loop.update)}) `;
      return `{${render(decl.start, decl.end)}; ${labels}${head}${slice(loop.body)}}`;
    }
    // for-in / for-of: the loop assigns the one outer binding on each iteration.
    const name = loop.left!.declarations![0].id!.name!;
    const op = loop.type === "ForInStatement" ? "in" : "of";
    return `{let ${name}; ${labels}for (${name} ${op} ${slice(loop.right)}) ${slice(loop.body)}}`;
  }

  return render(0, source.length);
}
