// Input generation: structure-aware mutation of valid seeds (the CBOR tree of a real message,
// certificate or envelope), byte-level mutation and splicing of seeds, and plain random bytes.

import { parse, mutateTree, type Node } from "./cbor-tree.ts";
import type { Rng } from "./rng.ts";
import { concat } from "../firmware/bytes.ts";

const INTERESTING_BYTES = [0x00, 0x01, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1f, 0x3f, 0x40, 0x5f, 0x7f, 0x80, 0x9f, 0xa5, 0xbf, 0xd2, 0xd8, 0xf4, 0xf6, 0xf7, 0xfb, 0xff];

/** One to four byte-level edits of b. */
export function mutateBytes(rng: Rng, b: Uint8Array): Uint8Array {
  let x: Uint8Array = b.slice();
  const edits = 1 + rng.int(4);
  for (let e = 0; e < edits; e++) {
    const at = rng.int(x.length + 1);
    switch (rng.int(8)) {
      case 0: if (x.length) x[Math.min(at, x.length - 1)] ^= 1 << rng.int(8); break;
      case 1: if (x.length) x[Math.min(at, x.length - 1)] = rng.pick(INTERESTING_BYTES); break;
      case 2: if (x.length) x[Math.min(at, x.length - 1)] = rng.u32() & 255; break;
      case 3: x = concat([x.subarray(0, at), rng.bytes(1 + rng.int(8)), x.subarray(at)]); break;
      case 4: x = concat([x.subarray(0, at), x.subarray(Math.min(x.length, at + 1 + rng.int(16)))]); break;
      case 5: x = x.slice(0, at); break;
      case 6: { const n = 1 + rng.int(16); x = concat([x.subarray(0, at), x.subarray(at, at + n), x.subarray(at)]); break; }
      default: x = concat([x, rng.bytes(1 + rng.int(8))]);
    }
  }
  return x;
}

/** Seeds with their CBOR trees parsed once (undefined where a seed is not one CBOR item). */
export class SeedPool {
  private trees = new Map<Uint8Array, Node | undefined>();

  tree(seed: Uint8Array): Node | undefined {
    if (!this.trees.has(seed)) {
      // Only the seeds themselves are cached: a stateful target's seeds change as it runs.
      if (this.trees.size > 256) this.trees.clear();
      this.trees.set(seed, parse(seed));
    }
    return this.trees.get(seed);
  }
}

export type Generated = { input: Uint8Array; how: "structure" | "bytes" | "splice" | "random" | "seed" };

/** The next input from seeds: mostly structure-aware mutations, then byte edits, splices, random bytes,
 *  and now and then a seed unchanged (so the accepting paths run too). */
export function generate(rng: Rng, seeds: readonly Uint8Array[], pool: SeedPool): Generated {
  const r = rng.int(100);
  if (seeds.length === 0 || r < 8) return { input: rng.bytes(rng.smallLength(rng.chance(0.05) ? 2048 : 128)), how: "random" };
  const seed = rng.pick(seeds);
  if (r < 10) return { input: seed, how: "seed" };
  if (r < 15) {
    const other = rng.pick(seeds);
    return { input: concat([seed.subarray(0, rng.int(seed.length + 1)), other.subarray(rng.int(other.length + 1))]), how: "splice" };
  }
  if (r < 40) return { input: mutateBytes(rng, seed), how: "bytes" };
  const tree = pool.tree(seed);
  if (!tree) return { input: mutateBytes(rng, seed), how: "bytes" };
  return { input: mutateTree(rng, tree), how: "structure" };
}
