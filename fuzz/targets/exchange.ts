// The gateway-to-gateway key exchange (gateway/crossgw/exchange.ts), stateful: every input goes through the
// four message decoders and whatever decodes is handed to live exchanges waiting for it: an
// initiator waiting for msg2, one waiting for msg4, a responder waiting for msg3, and the responder
// side's msg1 handling (its SeenSessions). Refusals are ExchangeError only, and a refused message must
// leave every exchange, the seen session ids and the certificate cache as they were. An accepted
// message (a seed replayed to the exchange it belongs to) finishes that exchange, and a fresh one
// takes its place.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305 } from "../../firmware/crypto/types.ts";
import { issueCertificate } from "../../gateway/encoding/cwt.ts";
import { generateEd25519, type Ed25519KeyPair } from "../../gateway/crypto/ed25519.ts";
import {
  decodeMsg1, decodeMsg2, decodeMsg3, decodeMsg4, encodeMsg1, encodeMsg2, encodeMsg3, encodeMsg4,
  ExchangeError, Initiator, Responder, SeenSessions, type LocalCallee, type LocalParty, type ResponderDeps,
} from "../../gateway/crossgw/exchange.ts";
import { Fleet, generateX25519 } from "../../gateway/fleet/fleet.ts";
import { CertificateChecker, localSource, Verifier } from "../../gateway/fleet/verifier.ts";
import type { Outcome, Target } from "../target.ts";
import { T0 } from "./cwt.ts";

const AES = SUITE_AES_CCM_16_64_128;
const XS = SUITE_XSALSA20_POLY1305;

function party(fleet: Fleet, gatewayId: string, id: string): LocalParty {
  const gw: Ed25519KeyPair = generateEd25519();
  const gatewayCert = fleet.issueGateway(gatewayId, { signingKey: gw.publicKey, encryptionKey: generateX25519().publicKey }, T0, 86_400);
  const identity = generateEd25519();
  const cert = issueCertificate({ iss: gatewayId, sub: id, iat: T0, nbf: T0, exp: T0 + 3600, cti: new Uint8Array(16).fill(id.length), publicKey: identity.publicKey }, gw.seed);
  return { name: `${id}@${gatewayId}`, identitySeed: identity.seed, cert, gatewayCert };
}

/** What might decode: each decoder's message, or its refusal. */
function decodeAll(input: Uint8Array) {
  const one = <T>(f: (b: Uint8Array) => T): T | ExchangeError => {
    try {
      return f(input);
    } catch (e) {
      if (e instanceof ExchangeError) return e;
      throw e;
    }
  };
  return { m1: one(decodeMsg1), m2: one(decodeMsg2), m3: one(decodeMsg3), m4: one(decodeMsg4) };
}

export const exchangeTarget: Target = {
  name: "exchange",
  about: "decodeMsg1..4 and the live Initiator/Responder states (gateway/crossgw/exchange.ts)",
  async setup() {
    const dir = mkdtempSync(join(tmpdir(), "kp-fuzz-exchange-"));
    const fleet = Fleet.create(dir, "kp-fleet", T0);
    const verifierKey = generateEd25519();
    const verifier = new Verifier({ anchor: fleet.anchor, key: verifierKey, verifierId: "verifier.kp" });
    verifier.updateRevocationList(fleet.signedList());
    const checker = new CertificateChecker({ source: localSource(verifier), verifierPublicKey: verifierKey.publicKey });
    const seen = new SeenSessions();
    // Hybrid policy: both sides offer and take ML-KEM-768, and still take the classical forms, so the
    // inputs reach both shapes of msg1 and msg2 (docs/PROTOCOL.md §8).
    const deps: ResponderDeps = { checker, now: () => T0 + 10, seen, keyAgreement: "hybrid" };
    const alice = party(fleet, "a.example", "alice");
    const bob: LocalCallee = { ...party(fleet, "b.example", "bob"), suites: [[AES, 2], [XS, 1]] };
    const start = () => new Initiator(deps, alice, bob.name, "chat", [[AES, 1], [XS, 2]]);

    // Three exchanges, each waiting at a different step, with the genuine message it waits for.
    let waitMsg2!: Initiator, msg2!: Uint8Array;
    let waitMsg4!: Initiator, msg4!: Uint8Array;
    let waitMsg3!: Responder, msg3!: Uint8Array;
    const msg1s: Uint8Array[] = [];
    const remember = (i: Initiator): void => {
      msg1s.push(encodeMsg1(i.msg1));
      if (msg1s.length > 8) msg1s.shift();
    };
    const freshMsg2 = (): void => {
      waitMsg2 = start();
      remember(waitMsg2);
      msg2 = encodeMsg2(new Responder(deps, waitMsg2.msg1, bob).msg2);
    };
    const freshMsg4 = async (): Promise<void> => {
      waitMsg4 = start();
      remember(waitMsg4);
      const r = new Responder(deps, waitMsg4.msg1, bob);
      const m3 = await waitMsg4.onMsg2(r.msg2);
      msg4 = encodeMsg4((await r.onMsg3(m3)).msg4);
    };
    const freshMsg3 = async (): Promise<void> => {
      const i = start();
      remember(i);
      waitMsg3 = new Responder(deps, i.msg1, bob);
      msg3 = encodeMsg3(await i.onMsg2(waitMsg3.msg2));
    };
    freshMsg2();
    await freshMsg4();
    await freshMsg3();

    return {
      seeds: () => [...msg1s, msg2, msg3, msg4],
      async run(input): Promise<Outcome> {
        const { m1, m2, m3, m4 } = decodeAll(input);
        let accepted = false;
        let refusal: ExchangeError = m1 instanceof ExchangeError ? m1 : new ExchangeError("malformed", "unreachable");
        const attempt = async (f: () => unknown): Promise<boolean> => {
          try {
            await f();
            accepted = true;
            return true;
          } catch (e) {
            if (!(e instanceof ExchangeError)) throw e;
            refusal = e;
            return false;
          }
        };
        if (!(m1 instanceof ExchangeError)) await attempt(() => new Responder(deps, m1, bob));
        if (!(m2 instanceof ExchangeError)) {
          if (await attempt(() => waitMsg2.onMsg2(m2))) freshMsg2();
          if (await attempt(() => waitMsg4.onMsg2(m2))) throw new Error("invariant: an initiator waiting for msg4 took a msg2");
        }
        if (!(m3 instanceof ExchangeError) && (await attempt(() => waitMsg3.onMsg3(m3)))) await freshMsg3();
        if (!(m4 instanceof ExchangeError)) {
          if (await attempt(() => waitMsg4.onMsg4(m4))) await freshMsg4();
          if (await attempt(() => waitMsg2.onMsg4(m4))) throw new Error("invariant: an initiator waiting for msg2 took a msg4");
        }
        if (accepted) return "accepted";
        throw refusal;
      },
      isRejection: (e) => e instanceof ExchangeError,
      disturb: () => void seen.admit(new Uint8Array(16).fill(0xee), T0 + 10),
      snapshot: () => JSON.stringify([waitMsg2.status, waitMsg4.status, waitMsg3.status, (seen as unknown as { seen: Map<string, number> }).seen.size, checker.size]),
      close: () => rmSync(dir, { recursive: true, force: true }),
    };
  },
};
