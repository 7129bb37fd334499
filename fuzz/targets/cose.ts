// COSE_Sign1 (gateway/encoding/cose.ts): parseSign1 and verifySign1 refuse with CoseError only.

import { CoseError, parseSign1, signSign1, verifySign1 } from "../../gateway/encoding/cose.ts";
import { encode } from "../../gateway/encoding/cbor.ts";
import { generateEd25519 } from "../../gateway/crypto/ed25519.ts";
import type { Target } from "../target.ts";

export const coseTarget: Target = {
  name: "cose",
  about: "parseSign1 / verifySign1 (gateway/encoding/cose.ts)",
  async setup(rng) {
    const key = generateEd25519();
    const seeds = [
      signSign1(encode(new Map<unknown, unknown>([[1, "a"], [2, rng.bytes(8)]])), key.seed),
      signSign1(rng.bytes(40), key.seed, rng.bytes(4)),
      signSign1(new Uint8Array(0), key.seed),
    ];
    return {
      seeds: () => seeds,
      run(input) {
        let parsed = false;
        try {
          parseSign1(input);
          parsed = true;
        } catch (e) {
          if (!(e instanceof CoseError)) throw e;
        }
        try {
          verifySign1(input, key.publicKey);
          return "accepted";
        } catch (e) {
          if (e instanceof CoseError && !parsed && e.code !== "malformed") throw new Error(`invariant: parseSign1 refused what verifySign1 only refused as ${e.code}`);
          throw e;
        }
      },
      isRejection: (e) => e instanceof CoseError,
    };
  },
};
