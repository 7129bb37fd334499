// The architecture the folders show (docs/ARCHITECTURE.md), checked: no module imports itself through
// others, and the gateway's part folders depend on each other one way only. An import circle is a
// boundary in the wrong place; this test names the circle it finds.
import assert from "node:assert/strict";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, normalize, relative } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
/** The shipped code: what runs in a gateway, a CLI, a build or on a device (not tests, benches, fuzzers). */
const SHIPPED = ["gateway", "sdk", "cli", "firmware", "flash", "boards", "emulator"];
const IMPORT = /(?:^|\n)\s*(?:import|export)\b[^;]*?\bfrom\s*["'](\.{1,2}\/[^"']+)["']|\bimport\(\s*["'](\.{1,2}\/[^"']+)["']\s*\)/g;

function sources(dir: string): string[] {
  return readdirSync(join(ROOT, dir)).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(join(ROOT, path)).isDirectory()) return sources(path);
    return /\.ts$/.test(name) && !name.endsWith(".d.ts") ? [path] : [];
  });
}

/** file -> the repository files it imports (relative imports only). */
export function importGraph(dirs: string[]): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const file of dirs.flatMap(sources)) {
    const text = readFileSync(join(ROOT, file), "utf8");
    const targets = [...text.matchAll(IMPORT)].map((m) => normalize(join(dirname(file), m[1] ?? m[2])));
    graph.set(file, [...new Set(targets)]);
  }
  return graph;
}

/** One cycle of the graph as a path that returns to its start, or undefined when it has none. */
export function findCycle(graph: Map<string, string[]>): string[] | undefined {
  const state = new Map<string, "open" | "done">();
  const path: string[] = [];
  const visit = (node: string): string[] | undefined => {
    if (state.get(node) === "done") return undefined;
    if (state.get(node) === "open") return [...path.slice(path.indexOf(node)), node];
    state.set(node, "open");
    path.push(node);
    for (const next of graph.get(node) ?? []) {
      const cycle = visit(next);
      if (cycle) return cycle;
    }
    path.pop();
    state.set(node, "done");
    return undefined;
  };
  for (const node of graph.keys()) {
    const cycle = visit(node);
    if (cycle) return cycle;
  }
  return undefined;
}

/** The gateway's part folder of a file (gateway/<part>/...), or "gateway" for gateway/gateway.ts. */
function partOf(file: string): string | undefined {
  const parts = relative("gateway", file).split("/");
  if (parts[0] === ".." || relative("gateway", file).startsWith("..")) return undefined;
  return parts.length > 1 ? parts[0] : "gateway";
}

test("the cycle finder finds a circle and passes a tree (so the checks below can fail)", () => {
  assert.deepEqual(findCycle(new Map([["a", ["b"]], ["b", ["c"]], ["c", ["a"]]])), ["a", "b", "c", "a"]);
  assert.equal(findCycle(new Map([["a", ["b", "c"]], ["b", ["c"]], ["c", []]])), undefined);
});

test("no shipped module imports itself through others", () => {
  const cycle = findCycle(importGraph(SHIPPED));
  assert.equal(cycle, undefined, `import circle: ${cycle?.join(" -> ")}`);
});

test("the gateway's part folders import each other one way only", () => {
  const folders = new Map<string, Set<string>>();
  for (const [file, targets] of importGraph(["gateway"])) {
    const from = partOf(file)!;
    const edges = folders.get(from) ?? folders.set(from, new Set()).get(from)!;
    for (const t of targets) {
      const to = partOf(t);
      if (to && to !== from) edges.add(to);
    }
  }
  const graph = new Map([...folders].map(([k, v]) => [k, [...v]]));
  const cycle = findCycle(graph);
  assert.equal(cycle, undefined, `folders import each other: ${cycle?.join(" -> ")}`);
  // Nothing inside a part reaches back up to the gateway that assembles the parts.
  for (const [part, uses] of graph) assert.ok(part === "gateway" || !uses.includes("gateway"), `${part} imports gateway/gateway.ts`);
});
