// Every fuzz target, in the order `npm run fuzz` runs them: the stateless parsers first, then the
// stateful owners (the exchange, the interlink, the gateway's link server over TCP).

import type { Target } from "../target.ts";
import { bridgeTarget } from "./bridge.ts";
import { channelTarget } from "./channel.ts";
import { coseTarget } from "./cose.ts";
import { crossgwBodiesTarget } from "./crossgw-bodies.ts";
import { cwtTarget } from "./cwt.ts";
import { deviceCborTarget } from "./device-cbor.ts";
import { envelopeTarget } from "./envelope.ts";
import { exchangeTarget } from "./exchange.ts";
import { frameTarget } from "./frame.ts";
import { gatewayCborTarget } from "./gateway-cbor.ts";
import { interlinkTarget } from "./interlink.ts";
import { linkTcpTarget } from "./link-tcp.ts";
import { messagesTarget } from "./messages.ts";

export const TARGETS: readonly Target[] = [
  frameTarget,
  deviceCborTarget,
  gatewayCborTarget,
  messagesTarget,
  coseTarget,
  cwtTarget,
  envelopeTarget,
  crossgwBodiesTarget,
  bridgeTarget,
  exchangeTarget,
  interlinkTarget,
  channelTarget,
  linkTcpTarget,
];
