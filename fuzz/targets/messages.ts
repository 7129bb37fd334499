// Every device message decoder: decodeMessage (firmware/proto/messages.ts) over both codecs. Bad input
// is Error("cbor: ...") from a codec or an Error returned by decodeMessage. Both sides must take and
// refuse the same messages, and what they take must re-encode byte for byte alike on both codecs
// (every MAC input is built on both sides).

import * as device from "../../firmware/cbor.ts";
import * as gateway from "../../gateway/encoding/cbor.ts";
import { decodeMessage, encodeMessage, type Message } from "../../firmware/proto/messages.ts";
import { messageSeeds } from "../seeds.ts";
import { isPrefixedError, type Target } from "../target.ts";

/** The message both codecs read from input, or the reason it was refused (the gateway codec's). */
function readWith(decode: (b: Uint8Array) => unknown, input: Uint8Array): Message | Error {
  let w: unknown;
  try {
    w = decode(input);
  } catch (e) {
    if (isPrefixedError(e, "cbor: ")) return e as Error;
    throw e;
  }
  return decodeMessage(w);
}

const hex = (b: Uint8Array): string => Buffer.from(b).toString("hex");

export const messagesTarget: Target = {
  name: "messages",
  about: "decodeMessage (firmware/proto/messages.ts) for every type, over the device and the gateway codec",
  async setup(rng) {
    const seeds = messageSeeds(rng);
    return {
      seeds: () => seeds,
      run(input) {
        const g = readWith(gateway.decode, input);
        const d = readWith(device.decode, input);
        // cbor-x cannot read indefinite-length strings, which the device codec can: the gateway may
        // refuse more, never less.
        if (!(g instanceof Error) && d instanceof Error) throw new Error(`invariant: the gateway took a message the device refuses (${d.message})`);
        if (g instanceof Error) {
          if (!(d instanceof Error) && !g.message.startsWith("cbor: cbor-x could not decode")) throw new Error(`invariant: the device took a message the gateway refuses (${g.message})`);
          return "rejected";
        }
        const a = gateway.encode(encodeMessage(g));
        const b = device.encode(encodeMessage(d as Message));
        if (hex(a) !== hex(b)) throw new Error(`invariant: the codecs encode the decoded message differently: ${hex(a)} vs ${hex(b)}`);
        return "accepted";
      },
      isRejection: () => false, // refusals are returned above, so anything thrown is a crash
    };
  },
};
