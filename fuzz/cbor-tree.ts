// A CBOR item tree that keeps what a decoder would normalise away (head widths, indefinite lengths,
// declared counts), so the structure-aware mutator can produce exactly the malformed and
// non-deterministic encodings a strict decoder must refuse: non-shortest heads, duplicate map keys,
// counts that lie, nesting past the depth limit, invalid UTF-8, bstr-wrapped CBOR with a mutated inside.
// parse() accepts only well-formed CBOR (it is for seeds); serialize() writes whatever the tree says.

import type { Rng } from "./rng.ts";

export type Node =
  | { k: "uint" | "nint"; ai: number; v: bigint }
  | { k: "bytes" | "text"; ai: number; data: Uint8Array; lie?: number }
  | { k: "chunks"; major: 2 | 3; parts: Node[] }
  | { k: "array" | "map"; ai: number; items: Node[]; lie?: number }
  | { k: "tag"; ai: number; tag: bigint; item: Node }
  | { k: "raw"; bytes: Uint8Array };

const MAJOR = { uint: 0, nint: 1, bytes: 2, text: 3, array: 4, map: 5, tag: 6 } as const;

class Truncated extends Error {}

/** The tree of one well-formed CBOR item filling all of b, or undefined. */
export function parse(b: Uint8Array): Node | undefined {
  let pos = 0;
  const need = (n: number): void => {
    if (pos + n > b.length) throw new Truncated();
  };
  const arg = (ai: number): bigint => {
    if (ai < 24) return BigInt(ai);
    if (ai > 27) throw new Truncated();
    const n = 1 << (ai - 24);
    need(n);
    let v = 0n;
    for (let i = 0; i < n; i++) v = (v << 8n) | BigInt(b[pos++]);
    return v;
  };
  const item = (depth: number): Node => {
    if (depth > 64) throw new Truncated();
    need(1);
    const start = pos;
    const ib = b[pos++];
    const major = ib >> 5;
    const ai = ib & 31;
    if (major === 7) {
      if (ai === 31 || ai > 27) throw new Truncated();
      if (ai >= 24) {
        need(1 << (ai - 24));
        pos += 1 << (ai - 24);
      }
      return { k: "raw", bytes: b.slice(start, pos) };
    }
    if (major === 0 || major === 1) return { k: major === 0 ? "uint" : "nint", ai, v: arg(ai) };
    if (major === 2 || major === 3) {
      if (ai === 31) {
        const parts: Node[] = [];
        for (;;) {
          need(1);
          if (b[pos] === 0xff) { pos++; break; }
          parts.push(item(depth + 1));
        }
        return { k: "chunks", major, parts };
      }
      const n = Number(arg(ai));
      need(n);
      pos += n;
      return { k: major === 2 ? "bytes" : "text", ai, data: b.slice(pos - n, pos) };
    }
    if (major === 6) return { k: "tag", ai, tag: arg(ai), item: item(depth + 1) };
    const items: Node[] = [];
    if (ai === 31) {
      for (;;) {
        need(1);
        if (b[pos] === 0xff) { pos++; break; }
        items.push(item(depth + 1));
      }
    } else {
      const n = Number(arg(ai)) * (major === 5 ? 2 : 1);
      need(n);
      for (let i = 0; i < n; i++) items.push(item(depth + 1));
    }
    return { k: major === 4 ? "array" : "map", ai, items };
  };
  try {
    const n = item(0);
    return pos === b.length ? n : undefined;
  } catch {
    return undefined;
  }
}

function shortestAi(v: bigint): number {
  return v < 24n ? Number(v) : v < 0x100n ? 24 : v < 0x10000n ? 25 : v < 0x100000000n ? 26 : 27;
}

function head(out: number[], major: number, ai: number, v: bigint): void {
  if (ai === 31) { out.push((major << 5) | 31); return; }
  // Keep a deliberately wide head when the value fits; otherwise the shortest one.
  const min = shortestAi(v);
  let use = ai >= 24 && ai <= 27 && ai > min ? ai : min;
  if (v >= 1n << 64n) use = 27;
  out.push((major << 5) | use);
  if (use < 24) return;
  const n = 1 << (use - 24);
  for (let i = n - 1; i >= 0; i--) out.push(Number((v >> BigInt(8 * i)) & 0xffn));
}

function write(out: number[], n: Node): void {
  switch (n.k) {
    case "uint":
    case "nint":
      head(out, MAJOR[n.k], n.ai, n.v);
      return;
    case "bytes":
    case "text":
      head(out, MAJOR[n.k], n.ai, BigInt(Math.max(0, n.data.length + (n.lie ?? 0))));
      for (const x of n.data) out.push(x);
      return;
    case "chunks":
      out.push((n.major << 5) | 31);
      for (const p of n.parts) write(out, p);
      out.push(0xff);
      return;
    case "array":
    case "map": {
      const count = n.k === "map" ? Math.floor(n.items.length / 2) : n.items.length;
      head(out, MAJOR[n.k], n.ai, BigInt(Math.max(0, count + (n.lie ?? 0))));
      for (const x of n.items) write(out, x);
      if (n.ai === 31) out.push(0xff);
      return;
    }
    case "tag":
      head(out, 6, n.ai, n.tag);
      write(out, n.item);
      return;
    case "raw":
      for (const x of n.bytes) out.push(x);
  }
}

export function serialize(n: Node): Uint8Array {
  const out: number[] = [];
  write(out, n);
  return Uint8Array.from(out);
}

// ---- mutation ----

const INTERESTING_INTS = [0n, 1n, 7n, 16n, 23n, 24n, 31n, 32n, 255n, 256n, 1024n, 1025n, 4096n, 65535n, 65536n, 0x7fffffffn, 0x80000000n, 0xffffffffn, 0x100000000n, (1n << 53n) - 1n, 1n << 53n, (1n << 64n) - 1n];
const INTERESTING_TAGS = [0n, 1n, 2n, 3n, 4n, 18n, 24n, 28n, 29n, 61n, 64n, 258n, 259n, 55799n, 0xffffn, 0xffffffffn];
const RAW_SIMPLES = [[0xf4], [0xf5], [0xf6], [0xf7], [0xf0], [0xf8, 0x20], [0xf8, 0x10], [0xf9, 0x7c, 0x00], [0xf9, 0x7e, 0x00], [0xf9, 0x80, 0x00], [0xf9, 0x3c, 0x00], [0xfb, 0x80, 0, 0, 0, 0, 0, 0, 0], [0xfa, 0x4f, 0x80, 0, 0], [0xfa, 0x3f, 0x80, 0, 0], [0xfb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0], [0xfb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0], [0xfb, 0x43, 0x40, 0, 0, 0, 0, 0, 0], [0xfc], [0xff]];
const BAD_UTF8 = [[0xc0, 0x80], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xff], [0xe2, 0x82], [0x80]];

function randomItem(rng: Rng, depth = 0): Node {
  switch (rng.int(depth > 2 ? 6 : 8)) {
    case 0: return { k: "uint", ai: 0, v: rng.pick(INTERESTING_INTS) };
    case 1: return { k: "nint", ai: 0, v: rng.pick(INTERESTING_INTS) };
    case 2: return { k: "bytes", ai: 0, data: rng.bytes(rng.smallLength(rng.chance(0.1) ? 4200 : 40)) };
    case 3: {
      const s = rng.chance(0.5) ? rng.pick(["a", "x@y", "bob@b.example", "b.example", "chat", "kp.x.1", "KP interlink v1", "Signature1", "__proto__", "constructor", "é", "\u{1F600}"]) : String(rng.u32());
      return { k: "text", ai: 0, data: new TextEncoder().encode(s) };
    }
    case 4: return { k: "raw", bytes: Uint8Array.from(rng.pick(RAW_SIMPLES)) };
    case 5: return { k: "raw", bytes: rng.bytes(1 + rng.int(3)) };
    case 6: return { k: "array", ai: 0, items: Array.from({ length: rng.int(4) }, () => randomItem(rng, depth + 1)) };
    default: return { k: "map", ai: 0, items: Array.from({ length: 2 * rng.int(3) }, () => randomItem(rng, depth + 1)) };
  }
}

/** Every node of the tree with a function that replaces it in its parent. */
function collect(root: { n: Node }): { node: Node; set: (x: Node) => void }[] {
  const all: { node: Node; set: (x: Node) => void }[] = [];
  const visit = (node: Node, set: (x: Node) => void): void => {
    all.push({ node, set });
    if (node.k === "array" || node.k === "map") node.items.forEach((c, i) => visit(c, (x) => (node.items[i] = x)));
    else if (node.k === "chunks") node.parts.forEach((c, i) => visit(c, (x) => (node.parts[i] = x)));
    else if (node.k === "tag") visit(node.item, (x) => (node.item = x));
  };
  visit(root.n, (x) => (root.n = x));
  return all;
}

function mutateNode(rng: Rng, node: Node, set: (x: Node) => void, budget: number): void {
  if (rng.chance(0.08)) return set(randomItem(rng));
  if (rng.chance(0.04)) return set({ k: "array", ai: 0, items: [node] });
  if (rng.chance(0.04)) return set({ k: "tag", ai: 0, tag: rng.pick(INTERESTING_TAGS), item: node });
  if (rng.chance(0.02)) {
    // Nesting around the depth limit (16).
    let x = node;
    const depth = 12 + rng.int(12);
    for (let i = 0; i < depth; i++) x = rng.chance(0.5) ? { k: "array", ai: 0, items: [x] } : { k: "tag", ai: 0, tag: 24n, item: x };
    return set(x);
  }
  switch (node.k) {
    case "uint":
    case "nint":
      if (rng.chance(0.15)) return set({ ...node, k: node.k === "uint" ? "nint" : "uint" });
      if (rng.chance(0.2)) return set({ ...node, ai: 24 + rng.int(4) }); // a head wider than needed
      if (rng.chance(0.4)) return set({ ...node, v: node.v + (rng.chance(0.5) ? 1n : node.v > 0n ? -1n : 1n) });
      return set({ ...node, v: rng.pick(INTERESTING_INTS) });
    case "bytes":
    case "text": {
      const d = node.data;
      // bstr-wrapped CBOR (COSE protected headers and payloads, envelope bodies): mutate the inside.
      if (node.k === "bytes" && budget > 0 && rng.chance(0.5)) {
        const inner = parse(d);
        if (inner) return set({ ...node, data: mutateTree(rng, inner, budget - 1) });
      }
      const r = rng.int(8);
      if (r === 0) return set({ ...node, ai: 24 + rng.int(4) });
      if (r === 1) return set({ ...node, lie: rng.pick([-1, 1, 2, 1000, 1 << 20]) });
      if (r === 2) return set({ ...node, data: d.slice(0, rng.int(d.length + 1)) });
      if (r === 3) return set({ ...node, data: concat(d, rng.bytes(rng.smallLength(64))) });
      if (r === 4 && node.k === "text") return set({ ...node, data: concat(d, Uint8Array.from(rng.pick(BAD_UTF8))) });
      if (r === 5) return set({ ...node, k: node.k === "bytes" ? "text" : "bytes" });
      if (r === 6 && d.length > 1) return set({ k: "chunks", major: node.k === "bytes" ? 2 : 3, parts: [{ ...node, data: d.slice(0, d.length >> 1) }, { ...node, data: d.slice(d.length >> 1) }] });
      const c = d.slice();
      if (c.length) c[rng.int(c.length)] ^= 1 << rng.int(8);
      return set({ ...node, data: c });
    }
    case "array":
    case "map": {
      const items = node.items.slice();
      const unit = node.k === "map" ? 2 : 1;
      const r = rng.int(8);
      const at = unit * rng.int(Math.max(1, items.length / unit));
      if (r === 0 && items.length) items.splice(at, unit);
      else if (r === 1 && items.length) items.splice(at, 0, ...items.slice(at, at + unit)); // a duplicate key in a map
      else if (r === 2) items.splice(at, 0, ...Array.from({ length: unit }, () => randomItem(rng)));
      else if (r === 3 && items.length >= 2 * unit) {
        const other = unit * rng.int(items.length / unit);
        const a = items.slice(at, at + unit);
        items.splice(at, unit, ...items.slice(other, other + unit));
        items.splice(other, unit, ...a);
      } else if (r === 4) return set({ ...node, ai: 31 });
      else if (r === 5) return set({ ...node, lie: rng.pick([-1, 1, 2, 255, 1 << 24]) });
      else if (r === 6) return set({ ...node, ai: 24 + rng.int(4) });
      else if (node.k === "map" && items.length) {
        // A key of another kind: text <-> integer, or one the decoders refuse.
        items[at] = rng.chance(0.5) ? randomItem(rng) : { k: "uint", ai: 0, v: BigInt(at >> 1) };
      }
      return set({ ...node, items });
    }
    case "tag":
      if (rng.chance(0.5)) return set({ ...node, tag: rng.pick(INTERESTING_TAGS) });
      if (rng.chance(0.5)) return set({ ...node, ai: 24 + rng.int(4) });
      return set(node.item);
    case "chunks":
      return set({ ...node, parts: [...node.parts, randomItem(rng)] });
    case "raw":
      return set({ k: "raw", bytes: Uint8Array.from(rng.pick(RAW_SIMPLES)) });
  }
}

/** One to three structural mutations of the tree, serialised. */
export function mutateTree(rng: Rng, tree: Node, budget = 2): Uint8Array {
  const root = { n: structuredClone(tree) };
  const rounds = 1 + (rng.chance(0.3) ? rng.int(3) : 0);
  for (let i = 0; i < rounds; i++) {
    const all = collect(root);
    const { node, set } = rng.pick(all);
    mutateNode(rng, node, set, budget);
  }
  return serialize(root.n);
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}
