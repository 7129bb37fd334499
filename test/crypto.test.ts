// Symmetric crypto on both sides: the device implementation (firmware/crypto on the emulator's
// model of Espruino's natives, for both AES backends) and the gateway's (node:crypto, tweetnacl)
// against published vectors, against each other byte for byte, and the emulator's natives
// against node:crypto, quirks included.

import { test, describe } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createCipheriv, createDecipheriv, createHash, createHmac } from "node:crypto";
import fc from "fast-check";
import nacl from "tweetnacl";

import { createEspruinoCrypto, crc32, type AesObservation } from "../emulator/espruino-crypto.ts";
import { espruinoNatives, type Natives } from "../firmware/crypto/natives.ts";
import { deviceCrypto, deviceSuites, type DeviceCrypto } from "../firmware/crypto/device.ts";
import { ccmSeal, ccmOpen } from "../firmware/crypto/ccm.ts";
import { secretboxSuite } from "../firmware/crypto/secretbox.ts";
import { hmacSha256, hkdfSha256 } from "../firmware/crypto/hmac.ts";
import { nodeCrypto, timingSafeEqualBytes } from "../gateway/crypto/symmetric.ts";
import { SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305, nonceLength, tagLength, type SymCrypto } from "../firmware/crypto/types.ts";

const vectors = JSON.parse(readFileSync(new URL("./vectors/crypto.json", import.meta.url), "utf8"));

const h = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, "hex"));
const hx = (b: Uint8Array | ArrayBuffer): string => Buffer.from(b instanceof ArrayBuffer ? new Uint8Array(b) : b).toString("hex");

/** An E whose hwRand is node's randomness, as a signed 32-bit number like Espruino's. */
const fakeE = { hwRand: () => (Math.random() * 0x100000000) | 0 };

function natives(board: "ecb-cbc" | "native-ccm" | "none", observe?: (o: AesObservation) => void): Natives {
  const esp = createEspruinoCrypto({ aesEcbCbc: board === "ecb-cbc", aesCcm: board === "native-ccm", observe });
  return espruinoNatives(esp.cryptoModule, esp.aesGlobal, fakeE);
}

const backends: { name: string; crypto: SymCrypto }[] = [
  { name: "device, AES ECB/CBC natives (Puck.js, ESP32)", crypto: deviceCrypto(natives("ecb-cbc"), [secretboxSuite]) },
  { name: "device, native AES-CCM (Bangle.js 2)", crypto: deviceCrypto(natives("native-ccm"), [secretboxSuite]) },
  { name: "gateway, node:crypto + tweetnacl", crypto: nodeCrypto() },
];

// ---------------------------------------------------------------------------------------------
describe("published vectors on every implementation", () => {
  for (const { name, crypto } of backends) {
    describe(name, () => {
      test("RFC 4231 HMAC-SHA256 test cases 1-7", () => {
        for (const v of vectors.hmacSha256) {
          const mac = crypto.hmacSha256(h(v.key), h(v.data));
          assert.equal(mac.length, 32);
          // Case 5 is published truncated to 128 bits.
          assert.equal(hx(mac.subarray(0, v.mac.length / 2)), v.mac, `case ${v.case}`);
        }
      });

      test("RFC 5869 HKDF-SHA256 test cases 1-3 (PRK via HMAC, then OKM)", () => {
        for (const v of vectors.hkdfSha256) {
          assert.equal(hx(crypto.hmacSha256(h(v.salt), h(v.ikm))), v.prk, `case ${v.case} PRK`);
          assert.equal(hx(crypto.hkdf(h(v.salt), h(v.ikm), h(v.info), v.length)), v.okm, `case ${v.case} OKM`);
        }
      });

      test("NaCl secretbox vector (firstkey, nonce, m -> c) and its opening", () => {
        for (const v of vectors.secretbox) {
          assert.equal(hx(crypto.seal(SUITE_XSALSA20_POLY1305, h(v.key), h(v.nonce), h(v.plaintext))), v.sealed);
          const opened = crypto.open(SUITE_XSALSA20_POLY1305, h(v.key), h(v.nonce), h(v.sealed));
          assert.ok(opened);
          assert.equal(hx(opened), v.plaintext);
        }
      });

      test("SHA-256 of 'abc' (FIPS 180-2 example)", () => {
        assert.equal(hx(crypto.sha256(new Uint8Array([0x61, 0x62, 0x63]))), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
      });
    });
  }

  test("the vector file agrees with node:crypto and tweetnacl (guards against transcription slips)", () => {
    for (const v of vectors.hmacSha256) assert.ok(createHmac("sha256", h(v.key)).update(h(v.data)).digest("hex").startsWith(v.mac));
    for (const v of vectors.aesCcm) {
      const c = createCipheriv("aes-128-ccm", h(v.key), h(v.nonce), { authTagLength: v.tagLength });
      c.setAAD(h(v.aad), { plaintextLength: v.plaintext.length / 2 });
      assert.equal(hx(Buffer.concat([c.update(h(v.plaintext)), c.final(), c.getAuthTag()])), v.sealed, `packet ${v.packet}`);
    }
    for (const v of vectors.secretbox) assert.equal(hx(nacl.secretbox(h(v.plaintext), h(v.nonce), h(v.key))), v.sealed);
  });
});

describe("AES-CCM on the ECB/CBC natives (firmware/crypto/ccm.ts)", () => {
  test("RFC 3610 packet vectors, M = 8 and M = 10, with additional data", () => {
    const blocks = natives("ecb-cbc").crypto.AES;
    for (const v of vectors.aesCcm) {
      const sealed = ccmSeal(blocks, h(v.key), h(v.nonce), h(v.plaintext), v.tagLength, h(v.aad));
      assert.equal(hx(sealed), v.sealed, `packet ${v.packet} seal`);
      const opened = ccmOpen(blocks, h(v.key), h(v.nonce), h(v.sealed), v.tagLength, h(v.aad));
      assert.ok(opened, `packet ${v.packet} open`);
      assert.equal(hx(opened), v.plaintext);
      const badAad = h(v.aad);
      badAad[0] ^= 1;
      assert.equal(ccmOpen(blocks, h(v.key), h(v.nonce), h(v.sealed), v.tagLength, badAad), undefined, `packet ${v.packet} altered AAD`);
      const badTag = h(v.sealed);
      badTag[badTag.length - 1] ^= 0x80;
      assert.equal(ccmOpen(blocks, h(v.key), h(v.nonce), badTag, v.tagLength, h(v.aad)), undefined, `packet ${v.packet} altered tag`);
    }
  });

  test("every length from 0 to 80 bytes agrees with node:crypto (the word-wise keystream and its tail)", () => {
    const blocks = natives("ecb-cbc").crypto.AES;
    const key = new Uint8Array(16).map((_, i) => i * 7 + 1);
    const nonce = new Uint8Array(13).map((_, i) => 255 - i);
    for (let n = 0; n <= 80; n++) {
      const pt = new Uint8Array(n).map((_, i) => (i * 31 + n) & 255);
      const c = createCipheriv("aes-128-ccm", key, nonce, { authTagLength: 8 });
      c.setAAD(new Uint8Array(0), { plaintextLength: n });
      const want = Buffer.concat([c.update(pt), c.final(), c.getAuthTag()]);
      const sealed = ccmSeal(blocks, key, nonce, pt, 8);
      assert.equal(hx(sealed), hx(want), `${n} bytes sealed`);
      assert.equal(hx(ccmOpen(blocks, key, nonce, sealed, 8)!), hx(pt), `${n} bytes opened`);
    }
  });

  test("seal and open each make exactly one native CBC call and one native ECB call, never CTR", () => {
    const seen: AesObservation[] = [];
    const crypto = deviceCrypto(natives("ecb-cbc", (o) => seen.push(o)), []);
    const key = new Uint8Array(16).fill(1);
    const nonce = new Uint8Array(13).fill(2);
    const sealed = crypto.seal(SUITE_AES_CCM_16_64_128, key, nonce, new Uint8Array(100).fill(3));
    assert.deepEqual(seen.map((o) => o.op).sort(), ["cbc-encrypt", "ecb-encrypt"]);
    // B0 + 7 payload blocks through CBC; A0..A7 through ECB.
    assert.equal(seen.find((o) => o.op === "cbc-encrypt")!.input.length, 16 * 8);
    assert.equal(hx(seen.find((o) => o.op === "cbc-encrypt")!.iv!), "00".repeat(16));
    assert.equal(seen.find((o) => o.op === "ecb-encrypt")!.input.length, 16 * 8);
    seen.length = 0;
    assert.ok(crypto.open(SUITE_AES_CCM_16_64_128, key, nonce, sealed));
    assert.deepEqual(seen.map((o) => o.op).sort(), ["cbc-encrypt", "ecb-encrypt"]);
  });

  test("rejects parameters CCM does not allow, with messages that carry no key material", () => {
    const blocks = natives("ecb-cbc").crypto.AES;
    const key = h("c0c1c2c3c4c5c6c7c8c9cacbcccdcecf");
    for (const [nonceLen, tagLen] of [[6, 8], [14, 8], [13, 3], [13, 9], [13, 18]]) {
      assert.throws(() => ccmSeal(blocks, key, new Uint8Array(nonceLen), new Uint8Array(4), tagLen), (e: Error) => !e.message.includes("c0c1"));
      assert.equal(ccmOpen(blocks, key, new Uint8Array(nonceLen), new Uint8Array(20), tagLen), undefined);
    }
    // L = 2 holds at most 65535 bytes.
    assert.throws(() => ccmSeal(blocks, key, new Uint8Array(13), new Uint8Array(65536), 8), /too long/);
  });
});

// ---------------------------------------------------------------------------------------------
describe("boards carry the suites they should", () => {
  test("Puck.js (ECB/CBC, no secretbox passed in) offers AES-CCM only", () => {
    const puck = deviceCrypto(natives("ecb-cbc"), []);
    assert.deepEqual(deviceSuites(puck as DeviceCrypto), [SUITE_AES_CCM_16_64_128]);
    assert.throws(() => puck.seal(SUITE_XSALSA20_POLY1305, new Uint8Array(32), new Uint8Array(24), new Uint8Array(1)), /unsupported suite/);
    assert.equal(puck.open(SUITE_XSALSA20_POLY1305, new Uint8Array(32), new Uint8Array(24), new Uint8Array(40)), undefined);
  });

  test("Bangle.js 2 (native CCM + secretbox) offers both; a board with no AES offers only what is passed", () => {
    assert.deepEqual(deviceSuites(deviceCrypto(natives("native-ccm"), [secretboxSuite]) as DeviceCrypto), [SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305]);
    const pixl = deviceCrypto(natives("none"), []);
    assert.deepEqual(deviceSuites(pixl as DeviceCrypto), []);
    assert.throws(() => pixl.seal(SUITE_AES_CCM_16_64_128, new Uint8Array(16), new Uint8Array(13), new Uint8Array(1)), /unsupported suite 10/);
  });

  test("the native-CCM board never calls ECB/CBC; the ECB/CBC board never calls native CCM", () => {
    const bangleOps: string[] = [];
    const puckOps: string[] = [];
    const bangle = deviceCrypto(natives("native-ccm", (o) => bangleOps.push(o.op)), []);
    const puck = deviceCrypto(natives("ecb-cbc", (o) => puckOps.push(o.op)), []);
    const args = [SUITE_AES_CCM_16_64_128, new Uint8Array(16), new Uint8Array(13), new Uint8Array(5)] as const;
    bangle.open(args[0], args[1], args[2], bangle.seal(...args));
    puck.open(args[0], args[1], args[2], puck.seal(...args));
    assert.deepEqual(bangleOps, ["ccm-encrypt", "ccm-decrypt"]);
    assert.ok(puckOps.every((op) => op === "cbc-encrypt" || op === "ecb-encrypt"));
  });
});

// ---------------------------------------------------------------------------------------------
describe("device and gateway agree byte for byte (fast-check)", () => {
  const [deviceEcb, deviceNative, gateway] = backends.map((b) => b.crypto);
  const keyLen = (suite: number) => (suite === SUITE_XSALSA20_POLY1305 ? 32 : 16);

  for (const suite of [SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305]) {
    test(`suite ${suite}: identical seal output, each opens the others', any bit flip is refused`, () => {
      fc.assert(
        fc.property(
          fc.uint8Array({ minLength: keyLen(suite), maxLength: keyLen(suite) }),
          fc.uint8Array({ minLength: nonceLength(suite), maxLength: nonceLength(suite) }),
          fc.uint8Array({ minLength: 0, maxLength: 300 }),
          fc.nat(),
          (key, nonce, pt, flipSeed) => {
            const fromGateway = gateway.seal(suite, key, nonce, pt);
            assert.equal(fromGateway.length, pt.length + tagLength(suite));
            for (const dev of [deviceEcb, deviceNative]) {
              const fromDevice = dev.seal(suite, key, nonce, pt);
              assert.equal(hx(fromDevice), hx(fromGateway));
              assert.equal(hx(gateway.open(suite, key, nonce, fromDevice)!), hx(pt));
              assert.equal(hx(dev.open(suite, key, nonce, fromGateway)!), hx(pt));
            }
            const bit = flipSeed % (fromGateway.length * 8);
            const flipped = fromGateway.slice();
            flipped[bit >> 3] ^= 1 << (bit & 7);
            for (const c of [deviceEcb, deviceNative, gateway]) assert.equal(c.open(suite, key, nonce, flipped), undefined);
          },
        ),
        { numRuns: 150 },
      );
    });
  }

  test("hmac, hkdf and sha256 agree on random inputs", () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: 200 }),
        fc.uint8Array({ maxLength: 200 }),
        fc.uint8Array({ maxLength: 80 }),
        fc.integer({ min: 0, max: 300 }),
        (a, b, info, len) => {
          const want = [hx(gateway.sha256(a)), hx(gateway.hmacSha256(a, b)), hx(gateway.hkdf(a, b, info, len))];
          for (const dev of [deviceEcb, deviceNative]) {
            assert.deepEqual([hx(dev.sha256(a)), hx(dev.hmacSha256(a, b)), hx(dev.hkdf(a, b, info, len))], want);
          }
        },
      ),
      { numRuns: 100 },
    );
  });

  test("open never throws: wrong key, nonce and sealed lengths, unknown suites all give undefined", () => {
    fc.assert(
      fc.property(
        fc.constantFrom(SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305, 0, 11, -1),
        fc.uint8Array({ maxLength: 40 }),
        fc.uint8Array({ maxLength: 30 }),
        fc.uint8Array({ maxLength: 40 }),
        (suite, key, nonce, sealed) => {
          for (const c of [deviceEcb, deviceNative, gateway]) assert.equal(c.open(suite, key, nonce, sealed), undefined);
        },
      ),
      { numRuns: 300 },
    );
  });

  test("seal refuses wrong key or nonce lengths with an error that names no key bytes", () => {
    const key = new Uint8Array(15).fill(0xab);
    for (const c of [deviceEcb, deviceNative, gateway]) {
      assert.throws(() => c.seal(SUITE_AES_CCM_16_64_128, key, new Uint8Array(13), new Uint8Array(1)), (e: Error) => /key/.test(e.message) && !/ab/i.test(e.message.replace(/bytes|aes/gi, "")));
      assert.throws(() => c.seal(SUITE_XSALSA20_POLY1305, new Uint8Array(32), new Uint8Array(23), new Uint8Array(1)), /nonce/);
    }
  });

  test("hkdf refuses lengths RFC 5869 does not allow", () => {
    for (const c of [deviceEcb, gateway]) {
      assert.throws(() => c.hkdf(new Uint8Array(0), new Uint8Array(1), new Uint8Array(0), 255 * 32 + 1), /length/);
      assert.equal(c.hkdf(new Uint8Array(0), new Uint8Array(1), new Uint8Array(0), 255 * 32).length, 8160);
    }
  });

  test("the firmware HMAC/HKDF take any sha256 (here node's) and still match node", () => {
    const sha = (d: Uint8Array) => new Uint8Array(createHash("sha256").update(d).digest());
    const v = vectors.hkdfSha256[1];
    assert.equal(hx(hkdfSha256.call({ sha256: sha }, h(v.salt), h(v.ikm), h(v.info), v.length)), v.okm);
    assert.equal(hx(hmacSha256.call({ sha256: sha }, h(vectors.hmacSha256[6].key), h(vectors.hmacSha256[6].data))), vectors.hmacSha256[6].mac);
  });
});

// ---------------------------------------------------------------------------------------------
describe("emulator natives match node:crypto, quirks included", () => {
  const { cryptoModule } = createEspruinoCrypto({ aesEcbCbc: true, aesCcm: false });
  const AES = cryptoModule.AES;
  const nodeRun = (alg: string, key: Uint8Array, iv: Uint8Array | null, data: Uint8Array, decrypt = false) => {
    const c = decrypt ? createDecipheriv(alg, key, iv) : createCipheriv(alg, key, iv);
    c.setAutoPadding(false);
    return hx(Buffer.concat([c.update(data), c.final()]));
  };

  test("SHA256 returns a 32-byte ArrayBuffer equal to node's", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (m) => {
        const out = cryptoModule.SHA256(m);
        assert.ok(out instanceof ArrayBuffer);
        assert.equal(hx(out), createHash("sha256").update(m).digest("hex"));
      }),
    );
  });

  test("ECB and CBC, both directions and all key sizes, equal node's", () => {
    fc.assert(
      fc.property(
        fc.constantFrom(16, 24, 32),
        fc.integer({ min: 0, max: 12 }),
        fc.uint8Array({ minLength: 32, maxLength: 32 }),
        fc.uint8Array({ minLength: 16, maxLength: 16 }),
        fc.uint8Array({ minLength: 192, maxLength: 192 }),
        (keyLen, blocks, keyBytes, iv, msgBytes) => {
          const key = keyBytes.subarray(0, keyLen);
          const m = msgBytes.subarray(0, 16 * blocks);
          const bits = keyLen * 8;
          assert.equal(hx(AES.encrypt(m, key, { mode: "ECB" })), nodeRun(`aes-${bits}-ecb`, key, null, m));
          assert.equal(hx(AES.decrypt(m, key, { mode: "ECB" })), nodeRun(`aes-${bits}-ecb`, key, null, m, true));
          assert.equal(hx(AES.encrypt(m, key, { mode: "CBC", iv })), nodeRun(`aes-${bits}-cbc`, key, iv, m));
          assert.equal(hx(AES.decrypt(m, key, { mode: "CBC", iv })), nodeRun(`aes-${bits}-cbc`, key, iv, m, true));
        },
      ),
      { numRuns: 60 },
    );
  });

  test("the default is CBC with an all-zero iv; a short iv fills only the front", () => {
    const key = h("000102030405060708090a0b0c0d0e0f");
    const m = new Uint8Array(32).fill(0x42);
    assert.equal(hx(AES.encrypt(m, key)), nodeRun("aes-128-cbc", key, new Uint8Array(16), m));
    const shortIv = new Uint8Array([1, 2, 3]);
    const padded = new Uint8Array(16);
    padded.set(shortIv);
    assert.equal(hx(AES.encrypt(m, key, { iv: shortIv })), nodeRun("aes-128-cbc", key, padded, m));
  });

  test("CBC rejects a length that is not a whole number of blocks", () => {
    const key = new Uint8Array(16);
    for (const len of [1, 15, 17, 33]) {
      assert.throws(() => AES.encrypt(new Uint8Array(len), key, { mode: "CBC" }), /Invalid input length/);
      assert.throws(() => AES.decrypt(new Uint8Array(len), key), /Invalid input length/);
    }
    assert.equal(new Uint8Array(AES.encrypt(new Uint8Array(0), key)).length, 0);
  });

  test("ECB encrypts only whole blocks and leaves a trailing partial block zero", () => {
    const key = h("2b7e151628aed2a6abf7158809cf4f3c");
    const m = new Uint8Array(40).map((_, i) => i + 1);
    const out = new Uint8Array(AES.encrypt(m, key, { mode: "ECB" }));
    assert.equal(out.length, 40);
    assert.equal(hx(out.subarray(0, 32)), nodeRun("aes-128-ecb", key, null, m.subarray(0, 32)));
    assert.equal(hx(out.subarray(32)), "00".repeat(8));
    // FIPS-197 appendix C.1 through the emulator's software AES.
    assert.equal(hx(AES.encrypt(h("00112233445566778899aabbccddeeff"), h("000102030405060708090a0b0c0d0e0f"), { mode: "ECB" })), "69c4e0d86a7b0430d8cdb78070b4c55a");
  });

  test("CTR ignores the iv: the counter starts at zero whatever iv is given", () => {
    const key = h("2b7e151628aed2a6abf7158809cf4f3c");
    const iv = h("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff");
    const m = new Uint8Array(50).map((_, i) => i * 3);
    const got = hx(AES.encrypt(m, key, { mode: "CTR", iv }));
    assert.equal(got, nodeRun("aes-128-ctr", key, new Uint8Array(16), m));
    assert.notEqual(got, nodeRun("aes-128-ctr", key, iv, m));
    assert.equal(hx(AES.encrypt(m, key, { mode: "CTR" })), got);
  });

  test("CTR and CFB decrypt run forward rounds over the decryption key schedule, so they do not invert encrypt", () => {
    const key = h("2b7e151628aed2a6abf7158809cf4f3c");
    const iv = new Uint8Array(16).fill(9);
    const m = new Uint8Array(32).map((_, i) => i);
    for (const mode of ["CTR", "CFB"]) {
      const c = AES.encrypt(m, key, { mode, iv });
      assert.notEqual(hx(AES.decrypt(c, key, { mode, iv })), hx(m), mode);
    }
  });

  test("CFB is CFB8", () => {
    const key = h("2b7e151628aed2a6abf7158809cf4f3c");
    const iv = h("000102030405060708090a0b0c0d0e0f");
    const m = new Uint8Array(37).map((_, i) => 255 - i);
    assert.equal(hx(AES.encrypt(m, key, { mode: "CFB", iv })), nodeRun("aes-128-cfb8", key, iv, m));
  });

  test("OFB, unknown modes, bad options and bad key lengths fail as Espruino reports them", () => {
    const key = new Uint8Array(16);
    assert.throws(() => AES.encrypt(new Uint8Array(16), key, { mode: "OFB" }), /Feature unavailable/);
    assert.throws(() => AES.encrypt(new Uint8Array(16), key, { mode: "GCM" }), /Unknown Crypto mode "GCM"/);
    assert.throws(() => AES.encrypt(new Uint8Array(16), key, 5), /'options' must be undefined, or an Object/);
    assert.throws(() => AES.encrypt(new Uint8Array(16), new Uint8Array(15), { mode: "ECB" }), /Unknown error: -0x20/);
  });

  test("messages may be strings, plain arrays, ArrayBuffers or views with an offset", () => {
    const key = h("000102030405060708090a0b0c0d0e0f");
    const bytes = new Uint8Array(32).map((_, i) => 200 + i);
    const want = hx(AES.encrypt(bytes, key, { mode: "ECB" }));
    const backing = new Uint8Array(40);
    backing.set(bytes, 5);
    for (const form of [String.fromCharCode(...bytes), Array.from(bytes), bytes.buffer.slice(0), backing.subarray(5, 37)]) {
      assert.equal(hx(AES.encrypt(form, key, { mode: "ECB" })), want);
    }
    assert.equal(hx(cryptoModule.SHA256("abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  });

  test("observe gets copies of key and input for every call", () => {
    const seen: AesObservation[] = [];
    const esp = createEspruinoCrypto({ aesEcbCbc: true, aesCcm: true, observe: (o) => seen.push(o) });
    const key = new Uint8Array(16).fill(5);
    const m = new Uint8Array(16).fill(6);
    esp.cryptoModule.AES.encrypt(m, key, { mode: "CTR", iv: new Uint8Array(16).fill(1) });
    esp.aesGlobal.ccmEncrypt(m, key, new Uint8Array(13), 8);
    key.fill(0);
    m.fill(0);
    assert.deepEqual(seen.map((o) => o.op), ["ctr", "ccm-encrypt"]);
    assert.equal(hx(seen[0].key), "05".repeat(16));
    assert.equal(hx(seen[0].input), "06".repeat(16));
    assert.equal(hx(seen[0].iv!), "01".repeat(16));
    assert.equal(seen[1].nonce!.length, 13);
  });

  test("AES exists only where the board has it", () => {
    const bangle = createEspruinoCrypto({ aesEcbCbc: false, aesCcm: true });
    assert.equal(bangle.cryptoModule.AES, undefined);
    assert.equal(typeof bangle.aesGlobal.ccmEncrypt, "function");
    assert.equal(createEspruinoCrypto({ aesEcbCbc: true, aesCcm: false }).aesGlobal, undefined);
  });

  test("Bangle's AES.ccmEncrypt/ccmDecrypt: standard CCM, {data, tag}, a bad tag throws", () => {
    const { aesGlobal } = createEspruinoCrypto({ aesEcbCbc: false, aesCcm: true });
    const v = { key: h("404142434445464748494a4b4c4d4e4f"), nonce: h("10111213141516171819"), msg: h("20212223") };
    const r = aesGlobal.ccmEncrypt(v.msg, v.key, v.nonce, 4);
    assert.ok(r.data instanceof ArrayBuffer && r.tag instanceof ArrayBuffer);
    const c = createCipheriv("aes-128-ccm", v.key, v.nonce, { authTagLength: 4 });
    assert.equal(hx(r.data) + hx(r.tag), hx(Buffer.concat([c.update(v.msg), c.final(), c.getAuthTag()])));
    assert.equal(hx(aesGlobal.ccmDecrypt(r.data, v.key, v.nonce, r.tag)), hx(v.msg));
    const bad = new Uint8Array(r.tag);
    bad[0] ^= 1;
    assert.throws(() => aesGlobal.ccmDecrypt(r.data, v.key, v.nonce, bad), /authentication failed/);
    assert.throws(() => aesGlobal.ccmEncrypt(v.msg, new Uint8Array(32), v.nonce, 4), /key must be 16 bytes/);
  });

  test("E.CRC32 model: the zlib CRC-32 check value and node's zlib", async () => {
    assert.equal(crc32(new TextEncoder().encode("123456789")), 0xcbf43926);
    const zlib = await import("node:zlib");
    if (typeof (zlib as { crc32?: unknown }).crc32 === "function") {
      const data = new Uint8Array(1000).map((_, i) => (i * 31) & 255);
      assert.equal(crc32(data), (zlib as unknown as { crc32(d: Uint8Array): number }).crc32(data));
    }
    assert.equal(crc32(new Uint8Array(0)), 0);
  });
});

describe("DeviceCrypto on Espruino's natives", () => {
  test("random draws 32 bits per E.hwRand() call, little-endian, negative values included", () => {
    const values = [0x04030201, -1, 0x0a090807 | 0];
    let calls = 0;
    const E = { hwRand: () => values[calls++] };
    const c = deviceCrypto(espruinoNatives(createEspruinoCrypto({ aesEcbCbc: false, aesCcm: false }).cryptoModule, undefined, E), []);
    assert.equal(hx(c.random(10)), "01020304ffffffff0708");
    assert.equal(calls, 3);
  });

  test("native CCM: a throwing ccmDecrypt becomes undefined, as does input shorter than the tag", () => {
    const esp = createEspruinoCrypto({ aesEcbCbc: false, aesCcm: true });
    const c = deviceCrypto(espruinoNatives(esp.cryptoModule, esp.aesGlobal, fakeE), []);
    const key = new Uint8Array(16).fill(3);
    const nonce = new Uint8Array(13).fill(4);
    const sealed = c.seal(SUITE_AES_CCM_16_64_128, key, nonce, new Uint8Array([1, 2, 3]));
    assert.equal(hx(c.open(SUITE_AES_CCM_16_64_128, key, nonce, sealed)!), "010203");
    sealed[0] ^= 1;
    assert.equal(c.open(SUITE_AES_CCM_16_64_128, key, nonce, sealed), undefined);
    assert.equal(c.open(SUITE_AES_CCM_16_64_128, key, nonce, new Uint8Array(7)), undefined);
  });
});

describe("empty messages (node 20's CCM skips the tag check for views on an empty ArrayBuffer)", () => {
  const key = new Uint8Array(16).fill(0x11);
  const nonce = new Uint8Array(13).fill(0x22);
  const emptyForms = () => [new Uint8Array(0), new Uint8Array(new ArrayBuffer(0)), new Uint8Array(new ArrayBuffer(8)).subarray(8)];

  test("every implementation seals every form of the empty message to the same tag", () => {
    const want = hx(nodeCrypto().seal(SUITE_AES_CCM_16_64_128, key, nonce, new Uint8Array(0)));
    for (const { crypto } of backends) for (const pt of emptyForms()) assert.equal(hx(crypto.seal(SUITE_AES_CCM_16_64_128, key, nonce, pt)), want);
  });

  test("a forged tag on an empty message is refused by every implementation, however the bytes are held", () => {
    const good = nodeCrypto().seal(SUITE_AES_CCM_16_64_128, key, nonce, new Uint8Array(0));
    for (const { name, crypto } of backends) {
      for (let bit = 0; bit < 64; bit++) {
        const forged = new Uint8Array(new ArrayBuffer(8));
        forged.set(good);
        forged[bit >> 3] ^= 1 << (bit & 7);
        assert.equal(crypto.open(SUITE_AES_CCM_16_64_128, key, nonce, forged), undefined, `${name}, bit ${bit}`);
      }
      assert.equal(crypto.open(SUITE_AES_CCM_16_64_128, key, nonce, good)!.length, 0, name);
    }
  });

  test("the emulator's AES.ccmDecrypt refuses a bad tag on an empty message given as a view on an empty buffer", () => {
    const { aesGlobal } = createEspruinoCrypto({ aesEcbCbc: false, aesCcm: true });
    const r = aesGlobal.ccmEncrypt(new Uint8Array(new ArrayBuffer(0)), key, nonce, 8);
    assert.equal(hx(r.tag), hx(nodeCrypto().seal(SUITE_AES_CCM_16_64_128, key, nonce, new Uint8Array(0))));
    const bad = new Uint8Array(r.tag);
    bad[3] ^= 4;
    for (const msg of emptyForms()) assert.throws(() => aesGlobal.ccmDecrypt(msg, key, nonce, bad), /authentication failed/);
  });
});

describe("gateway helpers", () => {
  test("timingSafeEqualBytes", () => {
    assert.equal(timingSafeEqualBytes(h("0102"), h("0102")), true);
    assert.equal(timingSafeEqualBytes(h("0102"), h("0103")), false);
    assert.equal(timingSafeEqualBytes(h("0102"), h("010203")), false);
    assert.equal(timingSafeEqualBytes(new Uint8Array(0), new Uint8Array(0)), true);
  });

  test("random returns the requested number of bytes on both sides", () => {
    for (const { crypto } of backends) {
      const r = crypto.random(37);
      assert.equal(r.length, 37);
      assert.notEqual(hx(r), hx(crypto.random(37)));
    }
  });
});
