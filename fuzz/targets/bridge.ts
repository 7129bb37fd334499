// The BLE bridge's connection (gateway/ble/bridge-protocol.ts): what anyone who reaches a gateway's
// --bridge-listen port sends before proving the key (hello, challenge, proof), and what an
// authenticated bridge sends after it (sealed messages, opened under the session key with the counter
// the receiver expects, then decoded). The opening side is stateful: its expected counter must stay
// where it was after every rejected input.

import { randomBytes } from "node:crypto";
import {
  BridgeMsg,
  BridgeProtocolError,
  decodeChallenge,
  decodeHello,
  decodeMessage,
  decodeProof,
  encodeChallenge,
  encodeHello,
  encodeMessage,
  encodeProof,
  newNonce,
  OpeningChannel,
  SealingChannel,
  type BridgeMessage,
} from "../../gateway/ble/bridge-protocol.ts";
import { acceptedByAny, type Target } from "../target.ts";

const MESSAGES: BridgeMessage[] = [
  { t: BridgeMsg.Open, link: 7, address: "c0:ff:ee:00:00:01" },
  { t: BridgeMsg.Data, link: 7, bytes: new Uint8Array([0xa5, 0x00, 0x03, 1, 2, 3]) },
  { t: BridgeMsg.Close, link: 7 },
  { t: BridgeMsg.Radio, radio: { name: "kp-alice", address: "c0:ff:ee:00:00:01", connected: true, rssi: -61, lastSeen: "2026-12-05T18:00:00.000Z" } },
];

export const bridgeTarget: Target = {
  name: "bridge",
  about: "the BLE bridge's handshake decoders and sealed messages (gateway/ble/bridge-protocol.ts), the opening counter checked",
  async setup() {
    const key = new Uint8Array(randomBytes(32));
    const opening = new OpeningChannel(key);
    // The receiver's own counter (a private field, read here so that the oracle sees the real state).
    const counter = opening as unknown as { expected: number };
    // The sender, kept in step with what the receiver accepted, so that a fresh valid sealed message
    // for the expected counter is always among the seeds.
    let sealer = new SealingChannel(key);
    let nextSealed = sealer.seal(encodeMessage(MESSAGES[0]));
    /** The counter after the last one sealed: when the receiver expects it, the seed was taken. */
    let sealedUpTo = 1;
    const handshake = [
      encodeHello("shed", newNonce()),
      encodeChallenge({ nonce: newNonce(), proof: new Uint8Array(32).fill(7) }),
      encodeProof({ proof: new Uint8Array(32).fill(9) }),
      ...MESSAGES.map(encodeMessage),
    ];
    return {
      seeds: () => [...handshake, nextSealed],
      run(input) {
        // Every reader sees every input: the handshake's decoders, the message decoder, and the live
        // receiver, as the gateway does (open, then decode; a message that opens moves the counter on).
        const outcome = acceptedByAny([
          () => decodeHello(input),
          () => decodeChallenge(input),
          () => decodeProof(input),
          () => decodeMessage(input),
          () => decodeMessage(opening.open(input)),
        ], (e) => e instanceof BridgeProtocolError);
        const expected = counter.expected;
        if (expected >= sealedUpTo) {
          // The receiver took the seed: seal the next one, at the counter it now expects.
          sealer = new SealingChannel(key);
          for (let i = 0; i < expected; i++) sealer.seal(new Uint8Array(0));
          nextSealed = sealer.seal(encodeMessage(MESSAGES[expected % MESSAGES.length]));
          sealedUpTo = expected + 1;
        }
        return outcome;
      },
      isRejection: () => false,
      snapshot: () => `expected ${counter.expected}`,
      disturb: () => {
        counter.expected++;
      },
    };
  },
};
