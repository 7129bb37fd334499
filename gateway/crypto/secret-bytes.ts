// Secrets out of node:crypto, into memory the caller owns and can wipe.
//
// node:crypto hands back Buffers: a digest, a shared secret, a decipher's output. Copying one into a
// Uint8Array and dropping the original left the original, secret and never zeroed, for the garbage
// collector; and Buffer.concat or Buffer.from of a small input copies it into Node's shared pool of
// small buffers (Buffer.poolSize), where nothing keyproxy holds can reach it. These helpers copy into
// a Uint8Array of its own (never pooled) and zero node's Buffers at once. Wiping in JavaScript stays
// best-effort (docs/SECURITY.md, "Keys in the gateway's memory"): this removes the copies keyproxy
// made itself.

import type { Decipher } from "node:crypto";

/** A copy of `b` in memory of its own, and `b` zeroed. */
export function takeSecret(b: Buffer): Uint8Array {
  const out = new Uint8Array(b);
  b.fill(0);
  return out;
}

/** The plaintext of `body` through `d` (update, then final), in memory of its own; node's output
 *  Buffers are zeroed. Throws what `final()` throws when the tag does not verify, and then nothing is
 *  left behind. */
export function decipherSecret(d: Decipher, body: Uint8Array): Uint8Array {
  const head = d.update(body);
  let tail: Buffer;
  try {
    tail = d.final();
  } catch (e) {
    head.fill(0);
    throw e;
  }
  const out = new Uint8Array(head.length + tail.length);
  out.set(head);
  out.set(tail, head.length);
  head.fill(0);
  tail.fill(0);
  return out;
}

/** A copy of `b` in memory of its own (never the shared pool), for node:crypto to read a secret from;
 *  the caller zeroes it when done. */
export function secretInput(b: Uint8Array): Buffer {
  const copy = Buffer.allocUnsafeSlow(b.length); // never from the pool; every byte is set just below
  copy.set(b);
  return copy;
}
