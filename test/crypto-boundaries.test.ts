// The edges of the device's symmetric crypto (firmware/crypto), where the published vectors do not
// reach: every nonce and tag length CCM allows, AAD lengths that straddle a block, messages long
// enough for a two-byte block counter, the length limits and their errors; the lengths DeviceCrypto
// and secretbox refuse, a device without extra suites, and HMAC/HKDF at the block size and the
// HKDF length limits, and the wiping of HMAC's intermediate values. Written to kill the mutants that
// survived `npm run mutation -- firmware/crypto` (docs/MUTATION.md); node:crypto and tweetnacl are
// the references.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { createCipheriv, createHash, createHmac, hkdfSync, randomBytes } from "node:crypto";
import nacl from "tweetnacl";
import { createEspruinoCrypto } from "../emulator/espruino-crypto.ts";
import { ccmOpen, ccmSeal } from "../firmware/crypto/ccm.ts";
import { DeviceCrypto, deviceSuites } from "../firmware/crypto/device.ts";
import { hkdfSha256, hmacSha256, type Hasher } from "../firmware/crypto/hmac.ts";
import { espruinoNatives, type Natives } from "../firmware/crypto/natives.ts";
import { secretbox, secretboxOpen, secretboxSuite } from "../firmware/crypto/secretbox.ts";
import { SUITE_AES_CCM_16_64_128 as AES, SUITE_XSALSA20_POLY1305 as XSALSA } from "../firmware/crypto/types.ts";

const hx = (b: Uint8Array | ArrayBuffer | undefined): string => (b === undefined ? "undefined" : Buffer.from(b instanceof ArrayBuffer ? new Uint8Array(b) : b).toString("hex"));
const bytes = (n: number, seed = 1): Uint8Array => new Uint8Array(n).map((_, i) => (i * 29 + seed * 7) & 255);
const fakeE = { hwRand: () => (Math.random() * 0x100000000) | 0 };

function natives(board: "ecb-cbc" | "native-ccm"): Natives {
  const esp = createEspruinoCrypto({ aesEcbCbc: board === "ecb-cbc", aesCcm: board === "native-ccm" });
  return espruinoNatives(esp.cryptoModule, esp.aesGlobal, fakeE);
}
const blocks = natives("ecb-cbc").crypto.AES;

/** AES-CCM by node:crypto (OpenSSL): ciphertext || tag. The key's length picks AES-128 or AES-256. */
function nodeCcm(key: Uint8Array, nonce: Uint8Array, pt: Uint8Array, tagLen: number, aad: Uint8Array = new Uint8Array(0)): Uint8Array {
  const c = createCipheriv(key.length === 32 ? "aes-256-ccm" : "aes-128-ccm", key, nonce, { authTagLength: tagLen });
  c.setAAD(aad, { plaintextLength: pt.length });
  const ct = Buffer.concat([c.update(pt), c.final()]);
  return new Uint8Array(Buffer.concat([ct, c.getAuthTag()]));
}

describe("AES-CCM on the ECB/CBC natives, against node:crypto", () => {
  const key = bytes(16, 3);

  test("every nonce length 7..13 and even tag length 4..16, messages and AAD around a block boundary", () => {
    for (let nonceLen = 7; nonceLen <= 13; nonceLen++) {
      for (let tagLen = 4; tagLen <= 16; tagLen += 2) {
        for (const len of [0, 1, 16, 17]) {
          for (const aadLen of [0, 14, 15]) {
            const nonce = bytes(nonceLen, len);
            const pt = bytes(len, tagLen);
            const aad = bytes(aadLen, 9);
            const want = nodeCcm(key, nonce, pt, tagLen, aad);
            const what = `nonce ${nonceLen}, tag ${tagLen}, message ${len}, aad ${aadLen}`;
            assert.equal(hx(ccmSeal(blocks, key, nonce, pt, tagLen, aad)), hx(want), `${what}: seal`);
            assert.equal(hx(ccmOpen(blocks, key, nonce, want, tagLen, aad)), hx(pt), `${what}: open`);
          }
        }
      }
    }
  });

  test("messages past 256 blocks (the counter's second byte) seal and open as node's do", () => {
    for (const nonceLen of [7, 13]) {
      const nonce = bytes(nonceLen, 5);
      const pt = bytes(4096 + 37, 2);
      const want = nodeCcm(key, nonce, pt, 8);
      assert.equal(hx(ccmSeal(blocks, key, nonce, pt, 8)), hx(want), `nonce ${nonceLen}: seal`);
      assert.equal(hx(ccmOpen(blocks, key, nonce, want, 8)), hx(pt), `nonce ${nonceLen}: open`);
    }
  });

  test("the message length must fit the length field: 65,535 bytes under a 13-byte nonce, not 65,536", () => {
    const nonce = bytes(13, 4);
    const most = bytes(0xffff, 6);
    assert.equal(hx(ccmSeal(blocks, key, nonce, most, 8)), hx(nodeCcm(key, nonce, most, 8)));
    const over = new Uint8Array(0x10000);
    assert.throws(() => ccmSeal(blocks, key, nonce, over, 8), (e: Error) => e.message === "ccm: message too long");
    assert.equal(ccmOpen(blocks, key, nonce, new Uint8Array(0x10000 + 8), 8), undefined);
  });

  test("a wider length field (7- and 12-byte nonces) still stops short of 0xfff00 bytes, where the block counter's two bytes end", () => {
    // 12-byte nonce: three length bytes; a message over 65,535 bytes puts the third one in B0.
    const n12 = bytes(12, 9);
    const pt = bytes(0x10000 + 21, 3);
    assert.equal(hx(ccmSeal(blocks, key, n12, pt, 8)), hx(nodeCcm(key, n12, pt, 8)));
    // 7-byte nonce: the length field would take gigabytes, the counter (two bytes written) does not.
    const n7 = bytes(7, 2);
    const most = bytes(0xfff00 - 1, 5);
    const sealed = ccmSeal(blocks, key, n7, most, 16);
    assert.equal(hx(sealed), hx(nodeCcm(key, n7, most, 16)));
    assert.equal(hx(ccmOpen(blocks, key, n7, sealed, 16)), hx(most));
    assert.throws(() => ccmSeal(blocks, key, n7, new Uint8Array(0xfff00), 16), (e: Error) => e.message === "ccm: message too long");
    assert.equal(ccmOpen(blocks, key, n7, new Uint8Array(0xfff00 + 16), 16), undefined);
  });

  test("parameters CCM does not allow: nonce 6 or 14, odd, short or long tags, AAD of 0xff00 bytes", () => {
    const bad: [number, number, number][] = [[6, 8, 0], [14, 8, 0], [13, 3, 0], [13, 5, 0], [13, 2, 0], [13, 18, 0], [13, 8, 0xff00]];
    for (const [nonceLen, tagLen, aadLen] of bad) {
      const what = `nonce ${nonceLen}, tag ${tagLen}, aad ${aadLen}`;
      assert.throws(() => ccmSeal(blocks, key, bytes(nonceLen), bytes(5), tagLen, new Uint8Array(aadLen)), (e: Error) => e.message === "ccm: bad parameters", what);
      assert.equal(ccmOpen(blocks, key, bytes(nonceLen), bytes(5 + Math.max(tagLen, 0)), tagLen, new Uint8Array(aadLen)), undefined, what);
    }
    // The longest AAD the two-byte form holds is still taken.
    const aad = bytes(0xfeff, 8);
    const nonce = bytes(13, 8);
    assert.equal(hx(ccmSeal(blocks, key, nonce, bytes(3), 8, aad)), hx(nodeCcm(key, nonce, bytes(3), 8, aad)));
  });
});

describe("DeviceCrypto refuses what its suites do not define", () => {
  const boards = ["ecb-cbc", "native-ccm"] as const;

  test("AES-CCM seal: a 32-byte key or a 12-byte nonce is an error, not AES-256 or another nonce form", () => {
    for (const board of boards) {
      const c = new DeviceCrypto(natives(board), []);
      assert.throws(() => c.seal(AES, bytes(32), bytes(13), bytes(4)), /aes-ccm: bad key or nonce length/, board);
      assert.throws(() => c.seal(AES, bytes(16), bytes(12), bytes(4)), /aes-ccm: bad key or nonce length/, board);
    }
  });

  test("AES-CCM open: frames valid under AES-256 or a 12-byte nonce are not authentic for this suite", () => {
    for (const board of boards) {
      const c = new DeviceCrypto(natives(board), []);
      const pt = bytes(20);
      assert.equal(c.open(AES, bytes(32), bytes(13), nodeCcm(bytes(32), bytes(13), pt, 8)), undefined, `${board}: AES-256`);
      assert.equal(c.open(AES, bytes(16), bytes(12), nodeCcm(bytes(16), bytes(12), pt, 8)), undefined, `${board}: 12-byte nonce`);
      // The genuine form still opens (the refusals above are about the lengths only).
      assert.equal(hx(c.open(AES, bytes(16), bytes(13), nodeCcm(bytes(16), bytes(13), pt, 8))), hx(pt), board);
    }
  });

  test("a device built without extra suites: AES-CCM only, an error for sealing others, undefined for opening them", () => {
    const c = new DeviceCrypto(natives("ecb-cbc"));
    assert.deepEqual(deviceSuites(c), [AES]);
    assert.throws(() => c.seal(XSALSA, bytes(32), bytes(24), bytes(4)), /^Error: unsupported suite -65537$/);
    assert.equal(c.open(XSALSA, bytes(32), bytes(24), bytes(40)), undefined);
    const none = new DeviceCrypto(natives("ecb-cbc"), []);
    assert.throws(() => none.seal(XSALSA, bytes(32), bytes(24), bytes(4)), /^Error: unsupported suite -65537$/);
    assert.equal(none.open(XSALSA, bytes(32), bytes(24), bytes(40)), undefined);
  });

  test("a device with secretbox refuses a suite it does not have, instead of running secretbox under its number", () => {
    const c = new DeviceCrypto(natives("ecb-cbc"), [secretboxSuite]);
    const [key, nonce] = [bytes(32, 2), bytes(24, 3)];
    assert.throws(() => c.seal(11, key, nonce, bytes(4)), /^Error: unsupported suite 11$/);
    assert.equal(c.open(11, key, nonce, nacl.secretbox(bytes(4), nonce, key)), undefined);
  });

  test("a device with secretbox opens what tweetnacl sealed", () => {
    const key = bytes(32, 2);
    const nonce = bytes(24, 3);
    const pt = bytes(70, 4);
    const c = new DeviceCrypto(natives("ecb-cbc"), [secretboxSuite]);
    assert.equal(hx(c.open(XSALSA, key, nonce, nacl.secretbox(pt, nonce, key))), hx(pt));
  });

  test("random(n) asks E.hwRand() once per 4 bytes, no more", () => {
    for (const [n, calls] of [[0, 0], [1, 1], [4, 1], [5, 2], [8, 2], [32, 8]]) {
      let made = 0;
      const E = { hwRand: () => (made++, 0x01020304) };
      const c = new DeviceCrypto(espruinoNatives(createEspruinoCrypto({ aesEcbCbc: true, aesCcm: false }).cryptoModule, undefined, E), []);
      assert.equal(c.random(n).length, n);
      assert.equal(made, calls, `random(${n})`);
    }
  });
});

describe("secretbox refuses lengths it does not define", () => {
  const key = bytes(32, 5);
  const nonce = bytes(24, 6);
  const sealed = nacl.secretbox(bytes(10), nonce, key);

  test("seal: a 31- or 33-byte key, a 23- or 25-byte nonce are errors", () => {
    for (const [k, n] of [[bytes(31), nonce], [bytes(33), nonce], [key, bytes(23)], [key, bytes(25)]]) {
      assert.throws(() => secretbox(k, n, bytes(3)), /secretbox: bad key or nonce length/);
    }
  });

  test("open: a key or nonce with a byte too many is refused even when its first bytes are right; short frames give undefined", () => {
    assert.equal(hx(secretboxOpen(key, nonce, sealed)), hx(bytes(10)));
    assert.equal(secretboxOpen(new Uint8Array([...key, 0]), nonce, sealed), undefined);
    assert.equal(secretboxOpen(key, new Uint8Array([...nonce, 0]), sealed), undefined);
    for (let len = 0; len < 16; len++) assert.equal(secretboxOpen(key, nonce, sealed.subarray(0, len)), undefined, `${len} bytes`);
  });
});

describe("HMAC-SHA256 and HKDF-SHA256 at their edges", () => {
  const nodeHasher: Hasher = { sha256: (d) => new Uint8Array(createHash("sha256").update(d).digest()) };

  test("keys of 63, 64, 65 and 128 bytes (a key is hashed only when longer than the 64-byte block)", () => {
    for (const len of [63, 64, 65, 128]) {
      const key = bytes(len, len);
      const data = bytes(50);
      assert.equal(hx(hmacSha256.call(nodeHasher, key, data)), createHmac("sha256", key).update(data).digest("hex"), `${len}-byte key`);
    }
  });

  test("the inner hash and both padded blocks are wiped once used", () => {
    const made: Uint8Array[] = [];
    const given: Uint8Array[] = [];
    const recording: Hasher = {
      sha256: (d) => {
        given.push(d);
        const out = nodeHasher.sha256(d);
        made.push(out);
        return out;
      },
    };
    const mac = hmacSha256.call(recording, bytes(16), bytes(40));
    assert.equal(hx(mac), createHmac("sha256", bytes(16)).update(bytes(40)).digest("hex"));
    assert.equal(made.length, 2);
    assert.ok(made[0].every((b) => b === 0), "the inner hash is wiped");
    for (const [i, block] of given.entries()) assert.ok(block.every((b) => b === 0), `hash input ${i} is wiped`);
  });

  test("HKDF lengths: 0 and 8,160 (255 blocks) are taken; -1, 1.5 and 8,161 are errors", () => {
    const [salt, ikm, info] = [bytes(16, 1), bytes(32, 2), bytes(10, 3)];
    assert.equal(hkdfSha256.call(nodeHasher, salt, ikm, info, 0).length, 0);
    const most = hkdfSha256.call(nodeHasher, salt, ikm, info, 255 * 32);
    assert.equal(hx(most), hx(hkdfSync("sha256", ikm, salt, info, 255 * 32)));
    for (const len of [-1, 1.5, 255 * 32 + 1]) assert.throws(() => hkdfSha256.call(nodeHasher, salt, ikm, info, len), /hkdf: bad length/, String(len));
  });

  test("HKDF output lengths around the hash length match node's", () => {
    for (const len of [1, 31, 32, 33, 64, 65]) {
      const key = randomBytes(20);
      assert.equal(hx(hkdfSha256.call(nodeHasher, new Uint8Array(0), key, bytes(4), len)), hx(hkdfSync("sha256", key, new Uint8Array(0), bytes(4), len)), `length ${len}`);
    }
  });
});
