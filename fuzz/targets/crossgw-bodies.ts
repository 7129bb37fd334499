// The bodies of the interlink messages between gateways (gateway/crossgw/messages.ts): every reader
// refuses with InterlinkError "malformed"; the body itself is CBOR (Error "cbor: ..." when not).

import { decode } from "../../gateway/encoding/cbor.ts";
import { encode } from "../../gateway/encoding/cbor.ts";
import * as X from "../../gateway/crossgw/messages.ts";
import { InterlinkError } from "../../gateway/fleet/interlink.ts";
import { CloseReason } from "../../firmware/proto/messages.ts";
import { isPrefixedError, type Target } from "../target.ts";

const READERS: ((body: unknown) => unknown)[] = [
  X.readConnect, X.readConnectAnswer, X.readFinish, X.readFinished, X.readConfirmed, X.readFrame, X.readBye, X.readRekey, X.readCertQuery, X.readCertAnswer,
];

export const crossgwBodiesTarget: Target = {
  name: "crossgw-bodies",
  about: "every body reader of gateway/crossgw/messages.ts (kp.x.1 ... kp.x.cert)",
  async setup(rng) {
    const terms = { lifetime: 3600, limit: 1000 };
    const seeds = [
      X.connectBody(rng.bytes(100), terms), X.acceptBody(rng.bytes(200), terms), X.refusalBody("rejected"), X.finishBody(rng.bytes(300)), X.finishedBody(rng.bytes(60)),
      X.confirmedBody(7), X.frameBody(7, rng.bytes(40)), X.byeBody(7, CloseReason.Bye), X.rekeyBody(7), X.certQueryBody("alice@a.example", "bob@b.example"), X.certAnswerBody(rng.bytes(150), rng.bytes(150)),
    ].map((b) => encode(b));
    return {
      seeds: () => seeds,
      run(input) {
        const body = decode(input);
        let taken = false;
        for (const read of READERS) {
          try {
            read(body);
            taken = true;
          } catch (e) {
            if (!(e instanceof InterlinkError && e.code === "malformed")) throw e;
          }
        }
        return taken ? "accepted" : "rejected";
      },
      isRejection: (e) => isPrefixedError(e, "cbor: "),
    };
  },
};
