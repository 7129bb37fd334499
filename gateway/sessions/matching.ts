// Cipher-suite matching (seed 003 §5.4, step 2108): the gateway picks the one setting both devices
// registered, before the callee is ever contacted.
//
// A setting has three items: algorithm, key length and integrity (hash/MAC). Exact matching needs all
// three equal. Range matching (seed 003 V4) lets each item be a set or a range and resolves an
// overlap to a concrete value: the smallest key length in the overlap, and the first common value of
// a set in the preferred side's order. Among several matches the preferred terminal's priority wins
// (1 is best; seed 003 V2: the receiving terminal by default), or a configured criterion decides
// (V3: the strongest or the lightest).

import { SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305 } from "../../firmware/crypto/types.ts";

export type Item<T> = T | T[];
export interface Setting {
  alg: Item<string>;
  /** Bits: one value, or a range (max absent: unbounded). */
  keyBits: number | { min: number; max?: number };
  hash: Item<string>;
}
export interface Candidate {
  setting: Setting;
  /** 1 is the best; absent when a criterion chooses. */
  priority?: number;
  /** What this candidate stands for (a suite id), carried through to the result. */
  id?: number;
}
export interface Concrete {
  alg: string;
  keyBits: number;
  hash: string;
}
export type Chooser = { by: "priority"; favour: "callee" | "caller" } | { by: "strongest" } | { by: "lightest" };
export interface MatchOptions {
  mode: "exact" | "range";
  chooser: Chooser;
}
export interface Match {
  setting: Concrete;
  caller: Candidate;
  callee: Candidate;
}

export const DEFAULT_MATCHING: MatchOptions = { mode: "exact", chooser: { by: "priority", favour: "callee" } };

const list = <T>(i: Item<T>): T[] => (Array.isArray(i) ? i : [i]);
const range = (k: Setting["keyBits"]) => (typeof k === "number" ? { min: k, max: k } : { min: k.min, max: k.max ?? Infinity });

/** Relative cost of an algorithm or integrity check (lower is lighter); unknown names cost most. */
const COST: Record<string, number> = { "AES-CCM": 1, "CBC-MAC-64": 1, XSalsa20: 2, Poly1305: 2 };
const cost = (s: Concrete) => (COST[s.alg] ?? 9) + (COST[s.hash] ?? 9);

/** The concrete setting both a and b allow, or undefined. In exact mode every item must be equal. */
export function overlap(a: Setting, b: Setting, mode: "exact" | "range", prefer: "a" | "b" = "b"): Concrete | undefined {
  if (mode === "exact") {
    if (Array.isArray(a.alg) || Array.isArray(b.alg) || Array.isArray(a.hash) || Array.isArray(b.hash)) return undefined;
    if (typeof a.keyBits !== "number" || typeof b.keyBits !== "number") return undefined;
    return a.alg === b.alg && a.keyBits === b.keyBits && a.hash === b.hash ? { alg: a.alg, keyBits: a.keyBits, hash: a.hash } : undefined;
  }
  const common = <T>(x: Item<T>, y: Item<T>): T | undefined => {
    const [first, second] = prefer === "b" ? [list(y), list(x)] : [list(x), list(y)];
    return first.find((v) => second.includes(v));
  };
  const alg = common(a.alg, b.alg);
  const hash = common(a.hash, b.hash);
  const ra = range(a.keyBits);
  const rb = range(b.keyBits);
  const min = Math.max(ra.min, rb.min);
  const max = Math.min(ra.max, rb.max);
  if (alg === undefined || hash === undefined || min > max) return undefined;
  return { alg, keyBits: min, hash };
}

/** Every matching pair, then one chosen; undefined when nothing matches (the caller is told why and
 *  the callee is never contacted). */
export function matchSettings(caller: Candidate[], callee: Candidate[], opts: MatchOptions = DEFAULT_MATCHING): Match | undefined {
  const favourCaller = opts.chooser.by === "priority" && opts.chooser.favour === "caller";
  const matches: Match[] = [];
  for (const a of caller) for (const b of callee) {
    const s = overlap(a.setting, b.setting, opts.mode, favourCaller ? "a" : "b");
    if (s) matches.push({ setting: s, caller: a, callee: b });
  }
  if (!matches.length) return undefined;
  const c = opts.chooser;
  const pr = (m: Match) => (c.by === "priority" ? (c.favour === "callee" ? m.callee : m.caller).priority ?? Infinity : 0);
  const other = (m: Match) => (c.by === "priority" ? (c.favour === "callee" ? m.caller : m.callee).priority ?? Infinity : 0);
  const score = (m: Match) => (c.by === "strongest" ? -m.setting.keyBits : c.by === "lightest" ? cost(m.setting) : pr(m));
  // Stable: ties fall to the other side's priority, then to the order the pairs were found in (the
  // caller's list, then the callee's).
  return matches.slice().sort((x, y) => score(x) - score(y) || other(x) - other(y))[0];
}

/** The settings of the suites keyproxy devices can register. */
export const SUITE_SETTINGS: Record<number, Setting> = {
  [SUITE_AES_CCM_16_64_128]: { alg: "AES-CCM", keyBits: 128, hash: "CBC-MAC-64" },
  [SUITE_XSALSA20_POLY1305]: { alg: "XSalsa20", keyBits: 256, hash: "Poly1305" },
};

/** A device's registered [suite, priority] pairs as candidates (unknown suites are left out). */
export function suiteCandidates(pairs: number[][]): Candidate[] {
  return pairs.filter((p) => SUITE_SETTINGS[p[0]]).map((p) => ({ setting: SUITE_SETTINGS[p[0]], priority: p[1], id: p[0] }));
}
