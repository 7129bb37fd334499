// Secrets that pass through node:crypto leave no copy keyproxy made behind: not node's own output
// Buffers (zeroed), not Node's shared pool of small buffers (where nothing keyproxy holds can reach
// them). gateway/crypto/secret-bytes.ts, and the places that use it: the KEK's open, the link's
// AES-CCM both ways, the interlink's encrypted bodies, a pairwise channel's messages.

import { test } from "node:test";
import assert from "node:assert/strict";
import { createCipheriv, createDecipheriv, randomBytes, type Decipher } from "node:crypto";
import { decipherSecret, secretInput, takeSecret } from "../gateway/crypto/secret-bytes.ts";
import { nodeCrypto } from "../gateway/crypto/symmetric.ts";
import { open as openSealed, seal } from "../gateway/registry/kek.ts";
import { decryptBody, encryptBody, Kind, type Envelope } from "../gateway/fleet/interlink.ts";
import { generateX25519 } from "../gateway/fleet/fleet.ts";
import { PairwiseChannel, parseChannelMessage } from "../gateway/fleet/channel.ts";
import { SUITE_AES_CCM_16_64_128 } from "../firmware/crypto/types.ts";

/** Whether Node's current pool of small Buffers holds `secret` anywhere (searched in place: a
 *  Buffer made of an ArrayBuffer is a view, and indexOf takes the Uint8Array as it is). */
function inPool(secret: Uint8Array): boolean {
  return Buffer.from(Buffer.allocUnsafe(1).buffer).indexOf(secret) >= 0;
}

const fresh = (n: number) => new Uint8Array(randomBytes(n));
const ownsItsMemory = (b: Uint8Array) => b.byteOffset === 0 && b.buffer.byteLength === b.length;

/** A real decipher whose update and final outputs are kept, to see that they were zeroed. */
function watched(d: Decipher): { d: Decipher; outputs: Buffer[] } {
  const outputs: Buffer[] = [];
  const update = d.update.bind(d) as (b: Uint8Array) => Buffer;
  const final = d.final.bind(d) as () => Buffer;
  Object.assign(d, {
    update: (b: Uint8Array) => {
      const out = update(b);
      outputs.push(out);
      return out;
    },
    final: () => {
      const out = final();
      outputs.push(out);
      return out;
    },
  });
  return { d, outputs };
}

test("the pool probe finds what Buffer.concat copied there, and misses what it did not", () => {
  const secret = fresh(24);
  assert.equal(inPool(secret), false);
  const pooled = Buffer.concat([secret.subarray(0, 12), secret.subarray(12)]);
  assert.equal(inPool(secret), true);
  pooled.fill(0);
  assert.equal(inPool(secret), false);
});

test("takeSecret: an equal copy in memory of its own, the original zeroed", () => {
  const original = Buffer.from(fresh(32));
  const before = Uint8Array.from(original);
  const taken = takeSecret(original);
  assert.deepEqual(taken, before);
  assert.ok(ownsItsMemory(taken));
  assert.ok(original.every((b) => b === 0));
});

test("secretInput: an equal Buffer that is not in the pool", () => {
  const secret = fresh(40);
  const input = secretInput(secret);
  assert.deepEqual(new Uint8Array(input), secret);
  assert.ok(ownsItsMemory(input));
  assert.equal(inPool(secret), false);
});

test("decipherSecret: the plaintext in memory of its own, node's outputs zeroed; a bad tag throws and leaves nothing", () => {
  const key = fresh(32);
  const iv = fresh(12);
  const secret = fresh(48);
  const c = createCipheriv("aes-256-gcm", key, iv);
  const sealed = new Uint8Array([...c.update(secret), ...c.final()]);
  const tag = c.getAuthTag();
  const good = watched(createDecipheriv("aes-256-gcm", key, iv).setAuthTag(tag));
  const plain = decipherSecret(good.d, sealed);
  assert.deepEqual(plain, secret);
  assert.ok(ownsItsMemory(plain));
  assert.equal(good.outputs.length, 2);
  assert.ok(good.outputs.every((o) => o.every((b) => b === 0)), "update's and final's outputs zeroed");
  assert.equal(inPool(secret), false);

  const forged = Uint8Array.from(tag);
  forged[0] ^= 1;
  const bad = watched(createDecipheriv("aes-256-gcm", key, iv).setAuthTag(forged));
  assert.throws(() => decipherSecret(bad.d, sealed), /unable to authenticate/);
  assert.equal(bad.outputs.length, 1, "update ran, final threw");
  assert.ok(bad.outputs[0].length === secret.length && bad.outputs[0].every((b) => b === 0), "the unauthenticated plaintext zeroed");
});

test("the KEK's open: a root key comes back in memory of its own, with no copy in the pool", () => {
  const kek = Buffer.from(fresh(32));
  const rootKey = fresh(16);
  const sealed = seal(kek, "root-key", "dev-1", rootKey);
  assert.equal(inPool(rootKey), false, "sealing left no copy either");
  const opened = openSealed(kek, "root-key", "dev-1", sealed);
  assert.deepEqual(opened, rootKey);
  assert.ok(ownsItsMemory(opened));
  assert.equal(inPool(rootKey), false);
});

test("the link's AES-CCM: a sealed plaintext (an SaInstall's seed) and an opened one leave no copy in the pool", () => {
  const crypto = nodeCrypto();
  const key = fresh(16);
  const nonce = fresh(13);
  const seed = fresh(32);
  const sealed = crypto.seal(SUITE_AES_CCM_16_64_128, key, nonce, seed);
  assert.equal(inPool(seed), false, "sealing");
  const opened = crypto.open(SUITE_AES_CCM_16_64_128, key, nonce, sealed);
  assert.deepEqual(opened, seed);
  assert.ok(opened && ownsItsMemory(opened));
  assert.equal(inPool(seed), false, "opening");
});

test("the interlink's encrypted body and a pairwise channel's message: opened with no copy in the pool", () => {
  const recipient = generateX25519();
  const body = fresh(64);
  const e: Envelope = { from: "a.example", to: "b.example", sessionId: fresh(16), msgId: fresh(16), type: "t", ts: 1_800_000_000, kind: Kind.Request, body: Uint8Array.from(body), senderCert: fresh(8) };
  encryptBody(e, recipient.publicKey);
  const opened = decryptBody(e, recipient);
  assert.deepEqual(opened, body);
  assert.ok(ownsItsMemory(opened));
  assert.equal(inPool(body), false);

  const keys = [Buffer.from(fresh(32)), Buffer.from(fresh(32))];
  const ends = (self: string, peer: string, send: Buffer, receive: Buffer) =>
    new PairwiseChannel({ channelId: new Uint8Array(16).fill(3), self, peer, peerCert: new Uint8Array(1), sendKey: Buffer.from(send), receiveKey: Buffer.from(receive), createdAt: 1_800_000_000, lifetime: 3600, initiated: self === "a.example" });
  const a = ends("a.example", "b.example", keys[0], keys[1]);
  const b = ends("b.example", "a.example", keys[1], keys[0]);
  const secretBody = fresh(64);
  const sealed = a.seal({ sessionId: e.sessionId, msgId: e.msgId, type: "t", ts: e.ts, kind: Kind.Request, body: Uint8Array.from(secretBody) });
  const got = b.open(parseChannelMessage(sealed));
  assert.deepEqual(got.body, secretBody);
  assert.equal(inPool(secretBody), false);
});
