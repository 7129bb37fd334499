// The device's CBOR decoder (firmware/cbor.ts): its one documented failure is Error("cbor: ...").

import { decode } from "../../firmware/cbor.ts";
import { messageSeeds } from "../seeds.ts";
import { certificateSeeds } from "./cwt.ts";
import { isPrefixedError, type Target } from "../target.ts";

export const deviceCborTarget: Target = {
  name: "device-cbor",
  about: "firmware/cbor.ts decode: messages, certificates, deep and indefinite items",
  async setup(rng) {
    const seeds = [...messageSeeds(rng), ...(await certificateSeeds(rng)).seeds];
    return {
      seeds: () => seeds,
      run(input) {
        decode(input);
        return "accepted";
      },
      isRejection: (e) => isPrefixedError(e, "cbor: "),
    };
  },
};
