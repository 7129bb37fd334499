// Counts the public-key operations a process makes with node:crypto, for bench/crossgw.ts: how many
// Ed25519 signatures and verifications, X25519 key pairs and shared secrets one session setup across
// gateways needs, and how many times raw keys are parsed into KeyObjects or exported from them on the
// way. Counted, not guessed: the gateway code is run as it is, with node:crypto's functions wrapped.
//
// installCryptoCounters() must run before any module that imports node:crypto is evaluated (the
// gateway process of bench/crossgw.ts loads the gateway's modules only afterwards, with import()). It
// replaces sign, verify, diffieHellman, generateKeyPairSync, createPrivateKey and createPublicKey on
// node:crypto's CommonJS exports and calls module.syncBuiltinESMExports(), so that
// `import { sign } from "node:crypto"` sees the wrapper too; and it wraps export() on the prototypes of
// asymmetric KeyObjects. The wrappers pass every argument and result through unchanged and never look
// at key bytes: an operation is named by its key's type (KeyObject.asymmetricKeyType) and the format of
// its argument, and only message lengths are summed.
//
// Operation names are "<key type> <operation>[ <format>]", e.g. "ed25519 sign", "x25519 dh",
// "x25519 keygen", "ed25519 createPrivateKey der", "x25519 createPublicKey from-private",
// "x25519 export public spki". bench/crossgw.ts times each kind it sees (cryptoOpTask).

import { createRequire, syncBuiltinESMExports } from "node:module";
import type * as NodeCrypto from "node:crypto";

export interface OpCount {
  calls: number;
  /** Bytes of message signed or verified (sign, verify); 0 for the others. */
  bytes: number;
}

export type OpCounts = Record<string, OpCount>;

const require = createRequire(import.meta.url);

let installed: { snapshot(): OpCounts } | undefined;

/** Counts from now on in this process; snapshot() returns a copy of the totals so far. Idempotent. */
export function installCryptoCounters(): { snapshot(): OpCounts } {
  if (installed) return installed;
  const crypto = require("node:crypto") as typeof NodeCrypto;
  const counts: OpCounts = {};
  const count = (op: string, bytes = 0): void => {
    const c = (counts[op] ??= { calls: 0, bytes: 0 });
    c.calls++;
    c.bytes += bytes;
  };
  const typeOf = (key: unknown): string => {
    if (key instanceof crypto.KeyObject) return key.asymmetricKeyType ?? key.type;
    // { key: KeyObject | DER, ... } or raw material: node:crypto would parse it inside the call.
    if (key && typeof key === "object" && "key" in key && (key as { key: unknown }).key instanceof crypto.KeyObject) return typeOf((key as { key: unknown }).key);
    return "unparsed-key";
  };
  const formatOf = (arg: unknown): string => {
    if (arg instanceof crypto.KeyObject) return "from-private";
    if (arg && typeof arg === "object" && "format" in arg) return String((arg as { format: unknown }).format);
    return "pem";
  };
  const length = (data: unknown): number => (ArrayBuffer.isView(data) ? data.byteLength : typeof data === "string" ? Buffer.byteLength(data) : 0);

  const o = {
    sign: crypto.sign,
    verify: crypto.verify,
    diffieHellman: crypto.diffieHellman,
    generateKeyPairSync: crypto.generateKeyPairSync,
    createPrivateKey: crypto.createPrivateKey,
    createPublicKey: crypto.createPublicKey,
  };
  const c = crypto as unknown as Record<string, unknown>;
  c.sign = function (this: unknown, ...args: unknown[]) {
    count(`${typeOf(args[2])} sign`, length(args[1]));
    return (o.sign as (...a: unknown[]) => unknown).apply(this, args);
  };
  c.verify = function (this: unknown, ...args: unknown[]) {
    count(`${typeOf(args[2])} verify`, length(args[1]));
    return (o.verify as (...a: unknown[]) => unknown).apply(this, args);
  };
  c.diffieHellman = function (this: unknown, ...args: unknown[]) {
    const opts = args[0] as { privateKey?: unknown } | undefined;
    count(`${typeOf(opts?.privateKey)} dh`);
    return (o.diffieHellman as (...a: unknown[]) => unknown).apply(this, args);
  };
  c.generateKeyPairSync = function (this: unknown, ...args: unknown[]) {
    count(`${String(args[0])} keygen`);
    return (o.generateKeyPairSync as (...a: unknown[]) => unknown).apply(this, args);
  };
  c.createPrivateKey = function (this: unknown, ...args: unknown[]) {
    const k = (o.createPrivateKey as (...a: unknown[]) => NodeCrypto.KeyObject).apply(this, args);
    count(`${typeOf(k)} createPrivateKey ${formatOf(args[0])}`);
    return k;
  };
  c.createPublicKey = function (this: unknown, ...args: unknown[]) {
    const k = (o.createPublicKey as (...a: unknown[]) => NodeCrypto.KeyObject).apply(this, args);
    count(`${typeOf(k)} createPublicKey ${formatOf(args[0])}`);
    return k;
  };
  // export() lives on the private and public KeyObject classes (not exported by node:crypto): reach
  // them through a key pair made with the original function, before counting starts.
  const sample = o.generateKeyPairSync("x25519");
  for (const proto of new Set([Object.getPrototypeOf(sample.privateKey), Object.getPrototypeOf(sample.publicKey)]) as Set<{ export: (...a: unknown[]) => unknown }>) {
    const original = proto.export;
    proto.export = function (this: NodeCrypto.KeyObject, ...args: unknown[]) {
      const opts = args[0] as { format?: string; type?: string } | undefined;
      const format = opts?.format === "jwk" ? "jwk" : (opts?.type ?? opts?.format ?? "pem");
      count(`${typeOf(this)} export ${this.type} ${format}`);
      return original.apply(this, args);
    };
  }
  syncBuiltinESMExports();
  installed = {
    snapshot: () => Object.fromEntries(Object.entries(counts).map(([k, v]) => [k, { ...v }])),
  };
  return installed;
}

/** b - a, per operation (operations with no calls in between left out). */
export function diffCounts(a: OpCounts, b: OpCounts): OpCounts {
  const out: OpCounts = {};
  for (const [op, v] of Object.entries(b)) {
    const calls = v.calls - (a[op]?.calls ?? 0);
    if (calls > 0) out[op] = { calls, bytes: v.bytes - (a[op]?.bytes ?? 0) };
  }
  return out;
}

/** a + b, per operation. */
export function addCounts(a: OpCounts, b: OpCounts): OpCounts {
  const out: OpCounts = {};
  for (const src of [a, b]) for (const [op, v] of Object.entries(src)) {
    const c = (out[op] ??= { calls: 0, bytes: 0 });
    c.calls += v.calls;
    c.bytes += v.bytes;
  }
  return out;
}
