// The gateway's CBOR decoder (gateway/encoding/cbor.ts: the device codec first, then cbor-x): its one
// documented failure is Error("cbor: ..."). Whatever it accepts, the device codec must accept too
// (both sides read exactly the same messages), and it must encode again without an error.

import { decode as deviceDecode } from "../../firmware/cbor.ts";
import { decode, encode } from "../../gateway/encoding/cbor.ts";
import { messageSeeds } from "../seeds.ts";
import { certificateSeeds } from "./cwt.ts";
import { isPrefixedError, type Target } from "../target.ts";

export const gatewayCborTarget: Target = {
  name: "gateway-cbor",
  about: "gateway/encoding/cbor.ts decode (device codec, then cbor-x): must agree with the device codec",
  async setup(rng) {
    const seeds = [...messageSeeds(rng), ...(await certificateSeeds(rng)).seeds];
    return {
      seeds: () => seeds,
      run(input) {
        const v = decode(input);
        try {
          deviceDecode(input);
        } catch (e) {
          throw new Error(`invariant: the gateway codec accepted what the device codec refuses (${(e as Error).message})`);
        }
        try {
          encode(v);
        } catch (e) {
          // Values the gateway codec decodes but will not encode (a Simple, a lone surrogate) are fine;
          // anything but its own "cbor: " error is not.
          if (!isPrefixedError(e, "cbor: ")) throw e;
        }
        return "accepted";
      },
      isRejection: (e) => isPrefixedError(e, "cbor: "),
    };
  },
};
