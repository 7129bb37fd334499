// Valid seeds made with the project's own encoders: every device message type, certificates and
// COSE messages. Stateful targets make their own (they need keys the gateway knows).

import { encode } from "../gateway/encoding/cbor.ts";
import { encodeMessage, Msg, type Message } from "../firmware/proto/messages.ts";
import type { Rng } from "./rng.ts";

/** One instance of every message type, with plausible field values. */
export function sampleMessages(rng: Rng): Message[] {
  const b = (n: number) => rng.bytes(n);
  return [
    { t: Msg.JoinRequest, id: "dev-1", ctr: 7, nonce: b(16), suite: 1, tag: b(16) },
    { t: Msg.JoinAccept, nonce: b(16), tag: b(16) },
    { t: Msg.JoinReject },
    { t: Msg.Link, seq: 3, sealed: b(40) },
    { t: Msg.SaData, spi: 0x1234abcd, seq: 1, sealed: b(30) },
    { t: Msg.RegisterRequest, rid: 1, lifetime: 600, suites: [[1, 1], [-65537, 2]], wantCert: true, firmware: "puckjs-1a2b", memory: 812 },
    { t: Msg.RegisterOk, rid: 1, granted: 600, certId: b(16), cert: b(120) },
    { t: Msg.RegisterOk, rid: 1, granted: 600, certId: b(16), cert: null },
    { t: Msg.DeregisterRequest, rid: 2 },
    { t: Msg.DeregisterOk, rid: 2 },
    { t: Msg.CertQuery, rid: 3, name: "bob" },
    { t: Msg.CertAnswer, rid: 3, cert: b(150) },
    { t: Msg.Error, rid: 4, code: 2 },
    { t: Msg.ConnectRequest, rid: 5, peer: "bob@b.example", app: "chat", from: "alice" },
    { t: Msg.Incoming, rid: 6, from: "alice", app: "chat", suite: -65537 },
    { t: Msg.Answer, rid: 6, accept: true },
    { t: Msg.SaInstall, rid: 7, spi: 99, peer: "bob", app: "chat", suite: 1, seed: b(32), role: 0, lifetime: 3600, limit: 100000, replaces: 0 },
    { t: Msg.SaConfirm, rid: 7, spi: 99, tag: b(16) },
    { t: Msg.Connected, spi: 99, replaces: 0 },
    { t: Msg.Rekey, rid: 8, spi: 99 },
    { t: Msg.Bye, spi: 99 },
    { t: Msg.SaClosed, spi: 99, reason: 1 },
  ];
}

/** Every sample message as CBOR bytes. */
export function messageSeeds(rng: Rng): Uint8Array[] {
  return sampleMessages(rng).map((m) => encode(encodeMessage(m)));
}
