// The interlink receiving pairwise-channel messages (gateway/fleet/channel.ts, Interlink.receive),
// stateful: a real Interlink for "south.example", pairwise channels on, over the stand-in MQTT client
// of the interlink target. In setup, north opens a channel with south the way the interlink does (a
// genuine signed kp.channel.open; south's signed answer read back from what it published) and keeps
// its own end, so the seeds are genuine channel messages from north: requests (new ones now and
// then) and answers to south's own pending requests, sent on the channel.
// Oracles: receive() never throws; every refusal has a documented code; parseChannelMessage throws
// only ChannelError; a refused message changes nothing: dedupe window, pending requests, channels,
// handler calls, accepted count, certificate cache. South's reset budget for this second is spent in
// setup, so a message on an unknown channel signs no reset (the resets and their limits are tested in
// test/interlink-channel.test.ts): "unknown-channel" is then a refusal like any other.

import { rmSync } from "node:fs";
import { decode, encode } from "../../gateway/encoding/cbor.ts";
import { generateX25519KeyObject, x25519Agree } from "../../gateway/fleet/fleet.ts";
import {
  CHANNEL_OPEN_TYPE, ChannelError, directionKey, openRequestBody, PairwiseChannel, parseChannelMessage, readOpenAnswer, transcriptHash,
} from "../../gateway/fleet/channel.ts";
import { InterlinkError, Kind, parseEnvelope, requestsTopic, responsesTopic, signEnvelope, type InterlinkErrorCode } from "../../gateway/fleet/interlink.ts";
import type { Outcome, Target } from "../target.ts";
import { T0 } from "./cwt.ts";
import { liveSouth, refused } from "./interlink.ts";

const NOW = T0 + 100;
const NORTH = "north.example";
const SOUTH = "south.example";
const RECEIVE_CODES = new Set<InterlinkErrorCode>(["too-large", "malformed", "untrusted-peer", "wrong-recipient", "stale", "duplicate", "decrypt-failed", "unknown-channel", "unsolicited"]);

export const channelTarget: Target = {
  name: "channel",
  about: "Interlink.receive on a pairwise channel (gateway/fleet/channel.ts): COSE_Encrypt0 messages to a live interlink holding a channel",
  async setup(rng) {
    const { dir, north, south, checker, published, link, receive, state } = liveSouth("kp-fuzz-channel-", {});
    (link as unknown as { resetBudget: { second: number; left: number } }).resetBudget = { second: NOW, left: 0 };

    // North opens the channel: a genuine signed kp.channel.open, south's answer read off the wire.
    const channelId = rng.bytes(16);
    const eph = generateX25519KeyObject();
    await receive(requestsTopic(SOUTH), signEnvelope({
      from: NORTH, to: SOUTH, sessionId: rng.bytes(16), msgId: rng.bytes(16), type: CHANNEL_OPEN_TYPE, ts: NOW, kind: Kind.Request,
      body: encode(openRequestBody({ channelId, ephemeral: eph.publicKey })), senderCert: north.certificate,
    }, north.signing.seed));
    const answer = readOpenAnswer(decode(parseEnvelope(published[published.length - 1].bytes).body));
    const shared = x25519Agree(eph.privateKey, answer.ephemeral);
    const th = transcriptHash({ initiator: NORTH, responder: SOUTH, channelId, initiatorEphemeral: eph.publicKey, responderEphemeral: answer.ephemeral });
    const northEnd = new PairwiseChannel({
      channelId, self: NORTH, peer: SOUTH, peerCert: south.certificate, sendKey: directionKey(shared, th, NORTH), receiveKey: directionKey(shared, th, SOUTH),
      createdAt: NOW, lifetime: 3600, initiated: true,
    });
    // A copy of south's end, for the harness to read an input's kind (and so its topic) without
    // touching the link's own channel.
    const southView = new PairwiseChannel({
      channelId, self: SOUTH, peer: NORTH, peerCert: north.certificate, sendKey: directionKey(shared, th, SOUTH), receiveKey: directionKey(shared, th, NORTH),
      createdAt: NOW, lifetime: 3600, initiated: false,
    });
    shared.fill(0);
    if (link.channelCount !== 1) throw new Error("channel target: south did not take the channel");

    const request = (): Uint8Array =>
      northEnd.seal({ sessionId: rng.bytes(16), msgId: rng.bytes(16), type: "echo", ts: NOW, kind: Kind.Request, body: encode(new Map([["n", rng.u32()]])) });
    // South's own requests to north go on the channel; north's answers to them are seeds.
    const answers: Uint8Array[] = [];
    const ask = async (): Promise<void> => {
      void link.request(NORTH, "echo", new Map([["q", 1]])).catch(() => undefined);
      await new Promise((r) => setImmediate(r));
      const asked = northEnd.open(parseChannelMessage(published[published.length - 1].bytes));
      const kind = rng.chance(0.25) ? Kind.Error : Kind.Response;
      const body = kind === Kind.Error ? new Map([["code", "no-handler"], ["message", "none"]]) : new Map([["a", 2]]);
      answers.push(northEnd.seal({ sessionId: asked.sessionId, msgId: rng.bytes(16), type: "echo", ts: NOW, kind, body: encode(body), re: asked.msgId }));
      if (answers.length > 8) answers.shift();
    };
    for (let i = 0; i < 4; i++) await ask();
    const requests = [request(), request(), request()];
    await receive(requestsTopic(SOUTH), request());

    const snapshot = (): string => {
      const d = (link as unknown as { dedupe: { seen: Map<string, unknown>; floor: number } }).dedupe;
      const l = link as unknown as { pending: Map<string, unknown> };
      return JSON.stringify([d.seen.size, d.floor, [...d.seen.keys()].slice(-1), [...l.pending.keys()], link.channelCount, state.calls, link.stats.accepted, checker.size]);
    };

    return {
      seeds: () => [...requests, ...answers],
      generate(r) {
        return r.chance(0.01) ? request() : undefined;
      },
      async run(input): Promise<Outcome> {
        let kind: unknown;
        try {
          kind = southView.open(parseChannelMessage(input)).kind;
        } catch (e) {
          if (!(e instanceof ChannelError)) throw e;
        }
        const toResponses = (kind !== undefined && kind !== Kind.Request) !== ((input[input.length - 1] & 7) === 0);
        state.rejection = undefined;
        const accepted = link.stats.accepted;
        const pending = link.pendingCount;
        await receive(toResponses ? responsesTopic(SOUTH) : requestsTopic(SOUTH), input);
        if (link.stats.accepted > accepted) {
          if (link.pendingCount < pending) await ask();
          return "accepted";
        }
        return refused(state, RECEIVE_CODES, "a channel message");
      },
      isRejection: (e) => e instanceof InterlinkError,
      snapshot,
      disturb: () => void (link as unknown as { dedupe: { record(k: string, ts: number, now: number): void } }).dedupe.record("planted", NOW, NOW),
      async close() {
        northEnd.end();
        southView.end();
        await link.close();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  },
};
