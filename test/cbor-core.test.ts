// The core CBOR codec the Puck.js bundle carries (boards/index.ts cbor: "core"), built from
// firmware/cbor.ts exactly as `keyproxy build` builds it: everything the protocol uses encodes and
// decodes as the full codec does; floats, tags, unassigned simple values, indefinite lengths and
// non-ASCII text are refused with "cbor: unsupported ..." instead of being carried.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";
import fc from "fast-check";
import * as full from "../firmware/cbor.ts";
import { boardFeatures } from "../flash/build.ts";

async function coreCodec(): Promise<typeof full> {
  const r = await esbuild.build({
    entryPoints: [fileURLToPath(new URL("../firmware/cbor.ts", import.meta.url))],
    bundle: true,
    format: "esm",
    platform: "neutral",
    write: false,
    // Dead-code elimination, as the minified device build has it; names stay readable.
    minifySyntax: true,
    plugins: [boardFeatures(false)],
  });
  const code = r.outputFiles[0].text;
  assert.ok(!/getFloat32|setFloat64/.test(code), "the core build carries no float code");
  return import("data:text/javascript;base64," + Buffer.from(code).toString("base64"));
}

const vectors = JSON.parse(readFileSync(new URL("./vectors/rfc8949-appendix-a.json", import.meta.url), "utf8")).vectors as { hex: string; roundtrip: boolean }[];

/** Whether a well-formed item uses only what the core codec carries. */
function coreOnly(v: unknown): boolean {
  // Integers of any size (major types 0 and 1; beyond 2^53 they are the nearest Number on both).
  if (typeof v === "number") return Number.isInteger(v);
  if (typeof v === "string") return /^[\x00-\x7f]*$/.test(v);
  if (v === null || v === undefined || typeof v === "boolean" || v instanceof Uint8Array) return true;
  if (Array.isArray(v)) return v.every(coreOnly);
  if (v instanceof full.Tagged || v instanceof full.Simple) return false;
  if (typeof v === "object") return Object.entries(v as object).every(([k, x]) => coreOnly(k) && coreOnly(x));
  return false;
}

test("Appendix A on the core codec: every vector decodes as on the full codec, or is refused as unsupported", async () => {
  const core = await coreCodec();
  let carried = 0;
  for (const v of vectors) {
    const bytes = new Uint8Array(Buffer.from(v.hex, "hex"));
    const want = full.decode(bytes);
    let got: unknown;
    try {
      got = core.decode(bytes);
    } catch (e) {
      // Refused: only what the core codec does not carry (a value, or an indefinite-length encoding).
      assert.match((e as Error).message, /^cbor: unsupported/, v.hex);
      continue;
    }
    assert.ok(coreOnly(want), `${v.hex}: the core codec accepted a value it does not carry`);
    assert.deepEqual(got, want, v.hex);
    carried++;
  }
  // 35 of the 82: the others are floats, tags, simple values, indefinite lengths or non-ASCII text.
  assert.ok(carried >= 30, `only ${carried} vectors carried by the core codec`);
});

test("property: on protocol-shaped values the core codec encodes and decodes exactly as the full one", async () => {
  const core = await coreCodec();
  const ascii = fc.string({ unit: fc.integer({ min: 0, max: 127 }).map((c) => String.fromCharCode(c)), maxLength: 20 });
  const leaf = fc.oneof(fc.maxSafeInteger(), fc.integer({ min: -1000, max: 1000 }), ascii, fc.uint8Array({ maxLength: 40 }), fc.boolean(), fc.constant(null));
  const value = fc.letrec((tie) => ({
    v: fc.oneof({ depthSize: "small" }, leaf, fc.array(tie("v"), { maxLength: 5 }), fc.dictionary(ascii.filter((k) => k !== "__proto__" && !/^\d+$/.test(k)), tie("v"), { maxKeys: 4, noNullPrototype: true })),
  })).v;
  fc.assert(
    fc.property(value, (v) => {
      const bytes = full.encode(v);
      assert.deepEqual(Buffer.from(core.encode(v)), Buffer.from(bytes));
      assert.deepEqual(core.decode(bytes), full.decode(bytes));
    }),
    { numRuns: 500 },
  );
});

test("the core codec refuses what it does not carry, with a clear reason", async () => {
  const core = await coreCodec();
  for (const [v, re] of [[1.5, /unsupported number/], ["é", /unsupported non-ASCII text/], [new full.Tagged(1, 0), /cannot encode/]] as const) {
    assert.throws(() => core.encode(v), re);
  }
  for (const [hex, re] of [["f93c00", /unsupported simple value or float/], ["c11a514b67b0", /unsupported tag/], ["9fff", /unsupported indefinite/], ["5f4100ff", /unsupported indefinite/], ["62c3a9", /unsupported non-ASCII/], ["f0", /unsupported simple/]] as const) {
    assert.throws(() => core.decode(new Uint8Array(Buffer.from(hex, "hex"))), re, hex);
  }
});
