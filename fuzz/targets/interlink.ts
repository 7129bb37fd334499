// The interlink receiving envelopes (gateway/fleet/interlink.ts Interlink.receive), stateful: a real
// Interlink for gateway "south.example" with its real checks (the fleet verifier, signatures, the
// dedupe window, pending requests), over a stand-in MQTT client that records what it publishes.
// Signed envelopes only (pairwise channels off; fuzz/targets/channel.ts has those).
// Inputs are mutated genuine envelopes from "north.example" (requests, encrypted requests, responses
// and errors to south's pending requests), and now and then a fresh genuine request.
// Oracles: receive() never throws (in the gateway it runs unawaited: a throw would be an unhandled
// rejection); every refusal carries one of the documented codes; parseEnvelope and verifySign1 on the
// same bytes throw only their own error types; and a refused envelope changes nothing: dedupe window,
// pending requests, peers learned, handler calls, accepted count, certificate cache.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { encode } from "../../gateway/encoding/cbor.ts";
import { CoseError, verifySign1 } from "../../gateway/encoding/cose.ts";
import { generateEd25519 } from "../../gateway/crypto/ed25519.ts";
import { Fleet, generateX25519 } from "../../gateway/fleet/fleet.ts";
import {
  encryptBody, Interlink, InterlinkError, Kind, parseEnvelope, requestsTopic, responsesTopic, signEnvelope,
  type Envelope, type InterlinkErrorCode, type InterlinkIdentity, type InterlinkOptions, type Rejection,
} from "../../gateway/fleet/interlink.ts";
import { CertificateChecker, checkerTrust, localSource, Verifier } from "../../gateway/fleet/verifier.ts";
import type { Rng } from "../rng.ts";
import type { Outcome, Target } from "../target.ts";
import { T0 } from "./cwt.ts";

const NOW = T0 + 100;
const NORTH = "north.example";
const SOUTH = "south.example";
/** The codes receive() may refuse with (the rest are a requester's: timeout, closed, remote-error). */
const RECEIVE_CODES = new Set<InterlinkErrorCode>(["too-large", "malformed", "untrusted-peer", "bad-signature", "wrong-recipient", "stale", "duplicate", "decrypt-failed", "unsolicited"]);

export function identity(fleet: Fleet, id: string): InterlinkIdentity {
  const signing = generateEd25519();
  const encryption = generateX25519();
  return { gatewayId: id, signing, encryption, certificate: fleet.issueGateway(id, { signingKey: signing.publicKey, encryptionKey: encryption.publicKey }, T0, 86_400) };
}

/** The part of an MQTT client the interlink uses, recording publications instead of sending them. */
export function standInClient(published: { topic: string; bytes: Uint8Array }[]) {
  return {
    publishAsync: async (topic: string, payload: Buffer) => {
      published.push({ topic, bytes: new Uint8Array(payload) });
      if (published.length > 64) published.splice(0, 32);
    },
    endAsync: async () => undefined,
  };
}

const randomId = (rng: Rng): Uint8Array => rng.bytes(16);

/** South's live interlink over the stand-in client, with north's identity beside it: what both
 *  interlink targets fuzz. `calls` counts the echo handler's runs; `rejection` holds the last refusal. */
export interface LiveSouth {
  dir: string;
  north: InterlinkIdentity;
  south: InterlinkIdentity;
  checker: CertificateChecker;
  published: { topic: string; bytes: Uint8Array }[];
  link: Interlink;
  receive(topic: string, bytes: Uint8Array): Promise<void>;
  state: { calls: number; rejection?: Rejection };
}

export function liveSouth(dirPrefix: string, extra: Partial<InterlinkOptions>): LiveSouth {
  const dir = mkdtempSync(join(tmpdir(), dirPrefix));
  const fleet = Fleet.create(dir, "kp-fleet", T0);
  const verifierKey = generateEd25519();
  const verifier = new Verifier({ anchor: fleet.anchor, key: verifierKey, verifierId: "verifier.kp" });
  verifier.updateRevocationList(fleet.signedList());
  const checker = new CertificateChecker({ source: localSource(verifier), verifierPublicKey: verifierKey.publicKey });
  const north = identity(fleet, NORTH);
  const south = identity(fleet, SOUTH);
  const published: { topic: string; bytes: Uint8Array }[] = [];
  const opts: InterlinkOptions = { url: "mqtt://stand-in", identity: south, trust: checkerTrust(checker), now: () => NOW, requestTimeoutMs: 2_000_000_000, ...extra };
  // The constructor is private (connect() makes the MQTT connection): the stand-in client replaces it.
  const link = new (Interlink as unknown as new (c: unknown, o: InterlinkOptions) => Interlink)(standInClient(published), opts);
  const receive = (topic: string, bytes: Uint8Array): Promise<void> => (link as unknown as { receive(t: string, b: Uint8Array): Promise<void> }).receive(topic, bytes);
  const state: LiveSouth["state"] = { calls: 0 };
  link.handle("echo", (req) => {
    state.calls++;
    return { body: new Map([["echo", req.body]]) };
  });
  link.onReject((r) => (state.rejection = r));
  return { dir, north, south, checker, published, link, receive, state };
}

/** After an input receive() did not accept: its refusal as the documented error, or a broken invariant. */
export function refused(state: LiveSouth["state"], codes: ReadonlySet<InterlinkErrorCode>, what: string): never {
  const r = state.rejection as Rejection | undefined; // set by the link's listener during receive()
  if (!r) throw new Error(`invariant: ${what} was neither accepted nor refused`);
  if (!codes.has(r.code)) throw new Error(`invariant: refused with undocumented code ${r.code}: ${r.reason}`);
  throw new InterlinkError(r.code, r.reason);
}

export const interlinkTarget: Target = {
  name: "interlink",
  about: "Interlink.receive (gateway/fleet/interlink.ts): envelopes to a live interlink, with its dedupe window and pending requests",
  async setup(rng) {
    // Signed envelopes only: the pairwise channel has its own target (fuzz/targets/channel.ts).
    const { dir, north, south, checker, published, link, receive, state } = liveSouth("kp-fuzz-interlink-", { pairwiseChannels: false });

    const request = (o: Partial<Envelope> = {}, secret = false): Uint8Array => {
      const e: Envelope = { from: NORTH, to: SOUTH, sessionId: randomId(rng), msgId: randomId(rng), type: "echo", ts: NOW, kind: Kind.Request, body: encode(new Map([["n", rng.u32()]])), senderCert: north.certificate, ...o };
      if (secret) encryptBody(e, south.encryption.publicKey);
      return signEnvelope(e, north.signing.seed);
    };
    // South's own requests to north, left pending: the genuine answers to them are seeds.
    const answers: Uint8Array[] = [];
    const ask = async (): Promise<void> => {
      void link.request(NORTH, "echo", new Map([["q", 1]])).catch(() => undefined);
      await new Promise((r) => setImmediate(r));
      const asked = parseEnvelope(published[published.length - 1].bytes);
      const kind = rng.chance(0.25) ? Kind.Error : Kind.Response;
      const body = kind === Kind.Error ? new Map([["code", "no-handler"], ["message", "none"]]) : new Map([["a", 2]]);
      answers.push(request({ sessionId: asked.sessionId, kind, re: asked.msgId, body: encode(body) }));
      if (answers.length > 8) answers.shift();
    };
    for (let i = 0; i < 4; i++) await ask();
    const requests = [request(), request({}, true), request({ type: "nobody-handles-this" })];
    const others = [request({ to: "west.example" }), signEnvelope({ from: NORTH, to: SOUTH, sessionId: randomId(rng), msgId: randomId(rng), type: "echo", ts: NOW, kind: Kind.Request, body: encode(1), senderCert: south.certificate }, north.signing.seed)];
    // One genuine request first, so the run starts with north's certificate judged and cached as in
    // service. No refused envelope may change the cache: the signature is checked (under the key in
    // the certificate the envelope carries) before the verifier is asked about that certificate.
    await receive(requestsTopic(SOUTH), request());

    const snapshot = (): string => {
      const d = (link as unknown as { dedupe: { seen: Map<string, unknown>; floor: number } }).dedupe;
      const l = link as unknown as { peerCerts: Map<string, Uint8Array>; pending: Map<string, unknown> };
      return JSON.stringify([d.seen.size, d.floor, [...d.seen.keys()].slice(-1), [...l.pending.keys()], l.peerCerts.size, state.calls, link.stats.accepted, checker.size]);
    };

    return {
      seeds: () => [...requests, ...answers, ...others],
      generate(r) {
        // A fresh genuine request now and then, so the accepting path (and the dedupe window's
        // growth and eviction) runs too.
        return r.chance(0.01) ? request({}, r.chance(0.3)) : undefined;
      },
      async run(input): Promise<Outcome> {
        // The readers receive() relies on, called directly: only their own error types may escape.
        let kind: unknown;
        try {
          kind = parseEnvelope(input).kind;
        } catch (e) {
          if (!(e instanceof InterlinkError)) throw e;
        }
        try {
          verifySign1(input, north.signing.publicKey);
        } catch (e) {
          if (!(e instanceof CoseError)) throw e;
        }
        const toResponses = (kind !== undefined && kind !== Kind.Request) !== ((input[input.length - 1] & 7) === 0);
        state.rejection = undefined;
        const accepted = link.stats.accepted;
        const pending = link.pendingCount;
        await receive(toResponses ? responsesTopic(SOUTH) : requestsTopic(SOUTH), input);
        if (link.stats.accepted > accepted) {
          if (link.pendingCount < pending) await ask(); // an answer was taken: ask again, for its seed
          return "accepted";
        }
        return refused(state, RECEIVE_CODES, "an envelope");
      },
      isRejection: (e) => e instanceof InterlinkError,
      snapshot,
      disturb: () => void (link as unknown as { dedupe: { record(k: string, ts: number, now: number): void } }).dedupe.record("planted", NOW, NOW),
      async close() {
        await link.close();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  },
};
