// The join tags as docs/PROTOCOL.md §Join writes them, recomputed here with node:crypto and the
// gateway's own CBOR encoder, against firmware/proto/keys.ts joinTag. The device and the gateway
// share joinTag, so a wrong label or a field left out of the MAC input would still let them agree
// with each other: only an independent computation notices (`npm run mutation --
// firmware/proto/keys.ts` found the labels and the field lists unguarded; docs/MUTATION.md).
//
//   Kmac := HKDF(salt = "", IKM = K, info = cbor(["KP1 join mac"]), 32)
//   tagD := HMAC-SHA256(Kmac, cbor(["KP1 join request", id, ctr, nD, suite]))[0..16]
//   tagG := HMAC-SHA256(Kmac, cbor(["KP1 join accept", id, ctr, nD, suite, nG]))[0..16]
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHmac, hkdfSync } from "node:crypto";
import * as deviceCbor from "../firmware/cbor.ts";
import { SUITE_AES_CCM_16_64_128 as AES, SUITE_XSALSA20_POLY1305 as XSALSA } from "../firmware/crypto/types.ts";
import { joinTag } from "../firmware/proto/keys.ts";
import { encode } from "../gateway/encoding/cbor.ts";
import { nodeCrypto } from "../gateway/crypto/symmetric.ts";
import { nodeDeviceCrypto } from "./support/harness.ts";

const hx = (b: Uint8Array) => Buffer.from(b).toString("hex");
const bytes = (n: number, seed: number) => new Uint8Array(n).map((_, i) => (i * 13 + seed) & 255);

function specTag(rootKey: Uint8Array, fields: unknown[]): string {
  const kmac = new Uint8Array(hkdfSync("sha256", rootKey, new Uint8Array(0), encode(["KP1 join mac"]), 32));
  return createHmac("sha256", kmac).update(encode(fields)).digest().subarray(0, 16).toString("hex");
}

const rootKey = bytes(16, 1);
const nD = bytes(16, 2);
const nG = bytes(16, 3);

test("tagD and tagG are the MACs the protocol document defines, on the device's crypto and the gateway's", () => {
  for (const [name, c] of [["device", nodeDeviceCrypto()], ["gateway", nodeCrypto()]] as const) {
    for (const suite of [AES, XSALSA]) {
      const what = `${name}, suite ${suite}`;
      assert.equal(hx(joinTag(c, deviceCbor, rootKey, "handset-7", 42, nD, suite)), specTag(rootKey, ["KP1 join request", "handset-7", 42, nD, suite]), `${what}: tagD`);
      assert.equal(hx(joinTag(c, deviceCbor, rootKey, "handset-7", 42, nD, suite, nG)), specTag(rootKey, ["KP1 join accept", "handset-7", 42, nD, suite, nG]), `${what}: tagG`);
    }
  }
});

test("each field is bound: changing the id, counter, either nonce, the suite or the key changes the tag", () => {
  const c = nodeCrypto();
  const tagG = (k: Uint8Array, id: string, ctr: number, d: Uint8Array, suite: number, g: Uint8Array) => hx(joinTag(c, deviceCbor, k, id, ctr, d, suite, g));
  const base = tagG(rootKey, "h", 1, nD, AES, nG);
  const variants = [tagG(bytes(16, 9), "h", 1, nD, AES, nG), tagG(rootKey, "i", 1, nD, AES, nG), tagG(rootKey, "h", 2, nD, AES, nG), tagG(rootKey, "h", 1, nG, AES, nG), tagG(rootKey, "h", 1, nD, XSALSA, nG), tagG(rootKey, "h", 1, nD, AES, nD)];
  for (const [i, v] of variants.entries()) assert.notEqual(v, base, `variant ${i}`);
  assert.notEqual(hx(joinTag(c, deviceCbor, rootKey, "h", 1, nD, AES)), base, "a request's tag is never an accept's");
});
