// The gateway's curve library, chosen by measurement: X25519 and Ed25519 sign/verify on node:crypto
// (raw 32-byte keys wrapped into KeyObjects from their DER on every call, as gateway/fleet/fleet.ts and
// gateway/crypto/ed25519.ts first did; and with the KeyObjects made once and kept, as they do now for keys
// used again: bench/crossgw.ts) against @noble/curves, in one run, interleaved so machine load hits
// all three.
//
// `runCurveBench()` returns a markdown section (a table and the choice it supports); bench/run.ts can
// append it to docs/BENCHMARKS.md. Run alone: `node --import tsx bench/curves.ts`.

import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { createPrivateKey, createPublicKey, diffieHellman, randomBytes, sign, verify, type KeyObject } from "node:crypto";
import { ed25519 as nobleEd25519, x25519 as nobleX25519 } from "@noble/curves/ed25519.js";
import { ed25519Sign, ed25519Verify, generateEd25519 } from "../gateway/crypto/ed25519.ts";
import { generateX25519, x25519SharedSecret } from "../gateway/fleet/fleet.ts";
import { generateKeyPairSync } from "node:crypto";
import { median } from "./timing.ts";

const generateKeyPairSyncX25519 = (): unknown => generateKeyPairSync("x25519");

export interface CurveBenchOptions {
  repetitions: number;
  /** Length of one repetition of one operation. */
  targetMs: number;
}

export interface CurveResult {
  op: string;
  /** node:crypto with raw keys wrapped into KeyObjects (from DER) on every call (the gateway's first code). */
  nodeOps: number;
  /** node:crypto with the KeyObjects made once and kept (what a hot path can do). */
  nodeKeptOps: number;
  nobleOps: number;
}

const DEFAULTS: CurveBenchOptions = { repetitions: 5, targetMs: 100 };

/** Elapsed ms for n calls. */
function timeN(fn: () => unknown, n: number): number {
  const t = process.hrtime.bigint();
  for (let i = 0; i < n; i++) fn();
  return Number(process.hrtime.bigint() - t) / 1e6;
}

function iterationsFor(fn: () => unknown, targetMs: number): number {
  let n = 1;
  let ms = timeN(fn, n); // warm-up, and any error surfaces here
  while (ms < 20 && n < 1 << 20) {
    n *= 2;
    ms = timeN(fn, n);
  }
  return Math.max(1, Math.round((n * targetMs) / Math.max(ms, 0.001)));
}

/** Median operations per second of each function, repetitions interleaved across them. */
function measure(fns: (() => unknown)[], o: CurveBenchOptions): number[] {
  const ns = fns.map((f) => iterationsFor(f, o.targetMs));
  const samples: number[][] = fns.map(() => []);
  for (let r = 0; r < o.repetitions; r++) {
    fns.forEach((f, i) => samples[i].push((ns[i] * 1000) / timeN(f, ns[i])));
  }
  return samples.map(median);
}

const der = (prefix: string, key: Uint8Array) => Buffer.concat([Buffer.from(prefix, "hex"), key]);
const X_PKCS8 = "302e020100300506032b656e04220420";
const X_SPKI = "302a300506032b656e032100";
const ED_PKCS8 = "302e020100300506032b657004220420";
const ED_SPKI = "302a300506032b6570032100";

/** The calls with raw keys wrapped into KeyObjects from their DER on every call, as gateway/crypto/ed25519.ts
 *  and gateway/fleet/fleet.ts first made them (they now keep the KeyObjects of keys used again, and take
 *  public keys as JWK, so calling them here would not measure this). */
const rawEach = {
  x25519SharedSecret: (secretKey: Uint8Array, publicKey: Uint8Array) =>
    diffieHellman({ privateKey: createPrivateKey({ key: der(X_PKCS8, secretKey), format: "der", type: "pkcs8" }), publicKey: createPublicKey({ key: der(X_SPKI, publicKey), format: "der", type: "spki" }) }),
  generateX25519: () => {
    const { privateKey, publicKey } = generateKeyPairSync("x25519");
    return { secretKey: privateKey.export({ format: "der", type: "pkcs8" }).subarray(16), publicKey: publicKey.export({ format: "der", type: "spki" }).subarray(12) };
  },
  ed25519Sign: (seed: Uint8Array, msg: Uint8Array) => sign(null, msg, createPrivateKey({ key: der(ED_PKCS8, seed), format: "der", type: "pkcs8" })),
  ed25519Verify: (publicKey: Uint8Array, msg: Uint8Array, sig: Uint8Array) => verify(null, msg, createPublicKey({ key: der(ED_SPKI, publicKey), format: "der", type: "spki" }), sig),
};

/** KeyObjects made once, from the same raw keys (fixed RFC 8410 DER prefixes). */
function keptKeys(xSecret: Uint8Array, xPublic: Uint8Array, edSeed: Uint8Array, edPublic: Uint8Array): { xPriv: KeyObject; xPub: KeyObject; edPriv: KeyObject; edPub: KeyObject } {
  return {
    xPriv: createPrivateKey({ key: der("302e020100300506032b656e04220420", xSecret), format: "der", type: "pkcs8" }),
    xPub: createPublicKey({ key: der("302a300506032b656e032100", xPublic), format: "der", type: "spki" }),
    edPriv: createPrivateKey({ key: der("302e020100300506032b657004220420", edSeed), format: "der", type: "pkcs8" }),
    edPub: createPublicKey({ key: der("302a300506032b6570032100", edPublic), format: "der", type: "spki" }),
  };
}

function generateKeyPairX25519(): unknown {
  return generateKeyPairSyncX25519(); // KeyObjects only, no raw export: the floor for a fresh ephemeral key
}

export function measureCurves(o: CurveBenchOptions = DEFAULTS): CurveResult[] {
  const msg = new Uint8Array(randomBytes(200)); // about an interlink envelope's Sig_structure
  const a = generateX25519();
  const b = generateX25519();
  const signer = generateEd25519();
  const nodeSig = ed25519Sign(signer.seed, msg);
  const nobleSig = nobleEd25519.sign(msg, signer.seed);
  // Both libraries must agree before their speed means anything.
  if (Buffer.compare(Buffer.from(nodeSig), Buffer.from(nobleSig)) !== 0) throw new Error("node:crypto and @noble/curves Ed25519 signatures differ");
  if (Buffer.compare(Buffer.from(x25519SharedSecret(a.secretKey, b.publicKey)), Buffer.from(nobleX25519.getSharedSecret(a.secretKey, b.publicKey))) !== 0) {
    throw new Error("node:crypto and @noble/curves X25519 shared secrets differ");
  }
  if (Buffer.compare(Buffer.from(rawEach.ed25519Sign(signer.seed, msg)), Buffer.from(nodeSig)) !== 0 || !rawEach.ed25519Verify(signer.publicKey, msg, nodeSig) || !ed25519Verify(signer.publicKey, msg, nodeSig)) throw new Error("the per-call Ed25519 variant disagrees with gateway/crypto/ed25519.ts");
  if (Buffer.compare(rawEach.x25519SharedSecret(a.secretKey, b.publicKey), Buffer.from(x25519SharedSecret(a.secretKey, b.publicKey))) !== 0) throw new Error("the per-call X25519 variant disagrees with gateway/fleet/fleet.ts");
  const kept = keptKeys(a.secretKey, b.publicKey, signer.seed, signer.publicKey);
  const rows: [string, () => unknown, () => unknown, () => unknown][] = [
    ["X25519 shared secret", () => rawEach.x25519SharedSecret(a.secretKey, b.publicKey), () => diffieHellman({ privateKey: kept.xPriv, publicKey: kept.xPub }), () => nobleX25519.getSharedSecret(a.secretKey, b.publicKey)],
    ["X25519 key pair", () => rawEach.generateX25519(), () => generateKeyPairX25519(), () => nobleX25519.keygen()],
    ["Ed25519 sign (200 B)", () => rawEach.ed25519Sign(signer.seed, msg), () => sign(null, msg, kept.edPriv), () => nobleEd25519.sign(msg, signer.seed)],
    ["Ed25519 verify (200 B)", () => rawEach.ed25519Verify(signer.publicKey, msg, nodeSig), () => verify(null, msg, kept.edPub, nodeSig), () => nobleEd25519.verify(nobleSig, msg, signer.publicKey)],
  ];
  return rows.map(([op, node, nodeKept, noble]) => {
    const [nodeOps, nodeKeptOps, nobleOps] = measure([node, nodeKept, noble], o);
    return { op, nodeOps, nodeKeptOps, nobleOps };
  });
}

const fmt = (n: number): string => Math.round(n).toLocaleString("en-US");

export function renderCurveTable(results: CurveResult[]): string {
  // @noble/curves does not export its package.json; read it from where Node resolved the module.
  const pkg = new URL("package.json", import.meta.resolve("@noble/curves/ed25519.js"));
  const noble = (JSON.parse(readFileSync(pkg, "utf8")) as { version: string }).version;
  const lines = [
    "## Curves on the gateway: node:crypto or @noble/curves",
    "",
    `Measured by bench/curves.ts in this run (Node ${process.version}, OpenSSL ${process.versions.openssl}, @noble/curves ${noble}); operations per second, median of the repetitions. node:crypto twice: with raw keys wrapped into KeyObjects (from their DER) on every call, as gateway/crypto/ed25519.ts and gateway/fleet/fleet.ts first did, and with KeyObjects made once and kept, as they now do for keys used again (bench/crossgw.ts).`,
    "",
    "| operation | node:crypto, raw keys each call | node:crypto, KeyObjects kept | @noble/curves | kept ÷ noble |",
    "|:--|--:|--:|--:|--:|",
    ...results.map((r) => `| ${r.op} | ${fmt(r.nodeOps)} | ${fmt(r.nodeKeptOps)} | ${fmt(r.nobleOps)} | ${(r.nodeKeptOps / r.nobleOps).toFixed(1)}× |`),
    "",
  ];
  const keptSlower = results.filter((r) => r.nodeKeptOps < r.nobleOps).map((r) => r.op);
  const rawSlower = results.filter((r) => r.nodeOps < r.nobleOps).map((r) => r.op);
  lines.push(
    keptSlower.length === 0
      ? "Choice: node:crypto for the gateway's hot path, with its own keys' KeyObjects made once and kept; it is the fastest on every operation here. " +
          (rawSlower.length ? `Wrapping raw keys on every call costs most of that (slower than @noble/curves for ${rawSlower.join(", ")}), so the hot path must keep KeyObjects. ` : "") +
          "@noble/curves stays an independent test oracle."
      : `Choice to revisit: @noble/curves was faster even than kept KeyObjects for ${keptSlower.join(", ")}.`,
    "",
  );
  return lines.join("\n");
}

/** For bench/run.ts: measures and returns the markdown section. */
export async function runCurveBench(o: CurveBenchOptions = DEFAULTS): Promise<string> {
  return renderCurveTable(measureCurves(o));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  runCurveBench().then(
    (s) => process.stdout.write(s),
    (e: unknown) => {
      process.stderr.write(`curve bench failed: ${e instanceof Error ? e.message : String(e)}\n`);
      process.exitCode = 1;
    },
  );
}
