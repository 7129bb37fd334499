// Interlink envelopes read without a signature check (gateway/fleet/interlink.ts parseEnvelope): refused
// with InterlinkError only.

import { encode } from "../../gateway/encoding/cbor.ts";
import { generateEd25519 } from "../../gateway/crypto/ed25519.ts";
import { InterlinkError, Kind, parseEnvelope, signEnvelope, type Envelope } from "../../gateway/fleet/interlink.ts";
import type { Rng } from "../rng.ts";
import type { Target } from "../target.ts";
import { certificateSeeds, T0 } from "./cwt.ts";

/** A request, a response and an encrypted-looking request, signed as the interlink signs them. */
export function envelopeSeeds(rng: Rng, cert: Uint8Array, seed: Uint8Array): Uint8Array[] {
  const base: Envelope = { from: "a.example", to: "b.example", sessionId: rng.bytes(16), msgId: rng.bytes(16), type: "kp.x.1", ts: T0, kind: Kind.Request, body: encode(new Map([["spi", 5]])), senderCert: cert };
  return [
    signEnvelope(base, seed),
    signEnvelope({ ...base, kind: Kind.Response, re: rng.bytes(16), msgId: rng.bytes(16) }, seed),
    signEnvelope({ ...base, kind: Kind.Error, re: rng.bytes(16), body: encode(new Map([["code", "no-handler"], ["message", "x"]])) }, seed),
    signEnvelope({ ...base, ephemeral: rng.bytes(32), body: rng.bytes(48) }, seed),
  ];
}

export const envelopeTarget: Target = {
  name: "envelope",
  about: "parseEnvelope (gateway/fleet/interlink.ts), the envelope read before any check",
  async setup(rng) {
    const certs = await certificateSeeds(rng);
    const seeds = envelopeSeeds(rng, certs.seeds[2], generateEd25519().seed);
    return {
      seeds: () => seeds,
      run(input) {
        parseEnvelope(input);
        return "accepted";
      },
      isRejection: (e) => e instanceof InterlinkError,
    };
  },
};
