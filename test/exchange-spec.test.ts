// What each side of the exchange between gateways (gateway/crossgw/exchange.ts) puts inside its
// messages, recomputed from docs/PROTOCOL.md §8 by the test's own key schedule: the MACs and
// signatures of both proofs, and the key confirmation mac4. Both ends share one implementation, so a
// MAC or signature bound to nothing (an empty input, a wrong label) would still let them agree; only
// a check against the document catches it. Also the proof's field edges inside the ciphertexts.
import assert from "node:assert/strict";
import { createPublicKey, verify } from "node:crypto";
import { test } from "node:test";
import { toHex } from "../firmware/bytes.ts";
import { decode, encode } from "../gateway/encoding/cbor.ts";
import { Responder } from "../gateway/crossgw/exchange.ts";
import { deps, done, gcmOpen, gcmSeal, hmac, K, knownEphemeral, refused, schedule, sha256, start, world } from "./support/exchange-world.ts";

function ed25519Verifies(publicKey: Uint8Array, data: Uint8Array, sig: Uint8Array): boolean {
  const key = createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: Buffer.from(publicKey).toString("base64url") }, format: "jwk" });
  return verify(null, data, key, sig);
}

/** mac = HMAC(K("mac<n>", TH, 32), cbor(["KP exchange mac<n>", TH, name, H(cert), H(gatewayCert)])). */
const specMac = (prk: Uint8Array, n: 2 | 3, th: Uint8Array, name: string, cert: Uint8Array, gatewayCert: Uint8Array): Uint8Array =>
  hmac(K(prk, `mac${n}`, th, 32), encode([`KP exchange mac${n}`, th, name, sha256(cert), sha256(gatewayCert)]));
/** What sig<n> signs: cbor(["KP exchange sig<n>", TH, H(cert), H(gatewayCert), mac]). */
const specSigned = (n: 2 | 3, th: Uint8Array, cert: Uint8Array, gatewayCert: Uint8Array, mac: Uint8Array): Uint8Array =>
  encode([`KP exchange sig${n}`, th, sha256(cert), sha256(gatewayCert), mac]);

test("mac_R, sig_R, mac_I, sig_I and mac4 are docs/PROTOCOL.md's: each bound to its label, the transcript, the name and both certificates", async () => {
  const w = world();
  try {
    const eA = knownEphemeral();
    const init = start(w, { ephemeral: eA });
    const resp = new Responder(deps(w), init.msg1, w.bob);
    const { th2, prk } = schedule(init.msg1, resp.msg2, eA.privateKey);

    const plaintext2 = gcmOpen(prk, 2, th2, resp.msg2.ciphertext);
    const [certR, gatewayCertR, sigR, macR] = decode(plaintext2) as Uint8Array[];
    assert.deepEqual([toHex(certR), toHex(gatewayCertR)], [toHex(w.bob.cert), toHex(w.bob.gatewayCert)]);
    assert.equal(toHex(macR), toHex(specMac(prk, 2, th2, "bob@b.example", certR, gatewayCertR)), "mac_R");
    assert.ok(ed25519Verifies(w.bobKey, specSigned(2, th2, certR, gatewayCertR, macR), sigR), "sig_R under Bob's certified key");

    const msg3 = await init.onMsg2(resp.msg2);
    const th3 = sha256(encode([th2, plaintext2]));
    const plaintext3 = gcmOpen(prk, 3, th3, msg3.ciphertext);
    const [certI, gatewayCertI, sigI, macI] = decode(plaintext3) as Uint8Array[];
    assert.deepEqual([toHex(certI), toHex(gatewayCertI)], [toHex(w.alice.cert), toHex(w.alice.gatewayCert)]);
    assert.equal(toHex(macI), toHex(specMac(prk, 3, th3, "alice@a.example", certI, gatewayCertI)), "mac_I");
    assert.ok(ed25519Verifies(w.aliceKey, specSigned(3, th3, certI, gatewayCertI, macI), sigI), "sig_I under Alice's certified key");

    const { msg4, result } = await resp.onMsg3(msg3);
    const th4 = sha256(encode([th3, plaintext3]));
    assert.equal(toHex(msg4.mac), toHex(hmac(K(prk, "mac4", th4, 32), encode(["KP exchange msg4", th4]))), "mac4");
    assert.equal(toHex(result.seed), toHex(K(prk, "SA seed", th4, 32)));
    assert.equal(init.onMsg4(msg4).spi, result.spi);
  } finally {
    done(w);
  }
});

test("plaintext2 and plaintext3: certificates of 1 and 4096 bytes have the proof's shape (judged on, here refused for the MAC); 0 and 4097 are malformed", async () => {
  const w = world();
  try {
    const eA = knownEphemeral();
    const init = start(w, { ephemeral: eA });
    const resp = new Responder(deps(w), init.msg1, w.bob);
    const { th2, prk } = schedule(init.msg1, resp.msg2, eA.privateKey);
    const [cert, gatewayCert, sig, mac] = decode(gcmOpen(prk, 2, th2, resp.msg2.ciphertext)) as Uint8Array[];
    const sealed2 = (p: unknown[]) => ({ ...resp.msg2, ciphertext: gcmSeal(prk, 2, th2, encode(p)) });
    const wrongMac = new Uint8Array(32);
    for (const n of [1, 4096]) {
      await refused(init.onMsg2(sealed2([new Uint8Array(n), gatewayCert, sig, wrongMac])), "bad-mac", /message 2: MAC does not verify/);
      await refused(init.onMsg2(sealed2([cert, new Uint8Array(n), sig, wrongMac])), "bad-mac", /message 2/);
    }
    for (const n of [0, 4097]) await refused(init.onMsg2(sealed2([new Uint8Array(n), gatewayCert, sig, mac])), "malformed", /message 2: certificates must be byte strings of 1 to 4096 bytes/);
    await refused(init.onMsg2(sealed2([cert, gatewayCert, new Uint8Array(65), mac])), "malformed", /message 2: sig must be 64 bytes and mac 32/);
    await refused(init.onMsg2(sealed2([cert, gatewayCert, sig, new Uint8Array(33)])), "malformed", /message 2: sig must be 64 bytes and mac 32/);
    await refused(init.onMsg2(sealed2([cert, gatewayCert, sig])), "malformed", /message 2: the plaintext is not \[cert, gatewayCert, sig, mac\]/);

    // The responder reads plaintext3 the same way.
    const msg3 = await init.onMsg2(resp.msg2);
    const th3 = sha256(encode([th2, gcmOpen(prk, 2, th2, resp.msg2.ciphertext)]));
    const [c3, g3, s3] = decode(gcmOpen(prk, 3, th3, msg3.ciphertext)) as Uint8Array[];
    const sealed3 = (p: unknown[]) => ({ ...msg3, ciphertext: gcmSeal(prk, 3, th3, encode(p)) });
    await refused(resp.onMsg3(sealed3([new Uint8Array(4096), g3, s3, wrongMac])), "bad-mac", /message 3: MAC does not verify/);
    await refused(resp.onMsg3(sealed3([c3, new Uint8Array(4097), s3, wrongMac])), "malformed", /message 3: certificates/);
    const { msg4 } = await resp.onMsg3(msg3);
    init.onMsg4(msg4);
  } finally {
    done(w);
  }
});
