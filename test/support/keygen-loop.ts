// Child process for test/x25519-keygen-deadlock.test.ts: makes X25519 key pairs the way the gateway
// does, with garbage between the calls (and, from the parent, a 1 MB young generation), so that
// collections fall inside the key handling often. Prints its progress every 500 pairs.
import { generateX25519, generateX25519KeyObject } from "../../gateway/fleet/fleet.ts";

const pairs = Number(process.argv[2]);
let junk: object[] = [];
for (let i = 1; i <= pairs; i++) {
  const pair = i % 2 ? generateX25519KeyObject() : generateX25519();
  for (let j = (i * 7919) % 97; j > 0; j--) junk.push({ j });
  if (pair.publicKey.length !== 32) throw new Error("public key is not 32 bytes");
  if (junk.length > 5000) junk = [];
  if (i % 500 === 0) process.stdout.write(`${i}\n`);
}
