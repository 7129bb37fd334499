// A verifier on its own (seed 003 Fig. 3, the verification server; design.md §2): `keyproxy
// verifier`. It holds a certificate from the fleet CA for its own id, like a gateway, takes the
// fleet's revocation lists from the same retained MQTT topic, and answers `kp.verify` requests over
// the interlink with answers signed by its certified key (gateway/fleet/verifier.ts). Gateways started with
// `--verifier <id>` ask it about every remote device certificate (FleetTrust.remoteChecker); without
// that option each gateway runs the same verifier in-process.
//
// One key signs both its interlink envelopes and its answers: the two are COSE_Sign1 over payloads
// of different types ("KP interlink v1", "KP verifier answer"), so one cannot pass for the other.

import { loadGatewayCredentials } from "./fleet.ts";
import { FleetTrust } from "./trust.ts";
import { Interlink } from "./interlink.ts";
import type { Logger } from "../log/logger.ts";
import { checkerTrust, serveVerifier } from "./verifier.ts";

export interface VerifierServiceOptions {
  /** Holds the verifier's keys, its certificate from the fleet (`keyproxy fleet issue-gateway --id
   *  <verifier-id> --data-dir <dir>`), the trust anchor and the newest revocation list. */
  dataDir: string;
  /** The id its certificate names (a domain name, one MQTT topic level). */
  id: string;
  /** The fleet's MQTT broker. */
  url: string;
  log: Logger;
  now?: () => number;
  /** Longest a "good" answer may be cached by those who ask, seconds (default 300). */
  maxAnswerLifetime?: number;
}

export interface VerifierService {
  readonly trust: FleetTrust;
  readonly interlink: Interlink;
  stop(): Promise<void>;
}

export async function startVerifierService(o: VerifierServiceOptions): Promise<VerifierService> {
  const now = o.now ?? (() => Math.floor(Date.now() / 1000));
  const { credentials } = loadGatewayCredentials(o.dataDir, o.id, now(), false);
  const trust = new FleetTrust({ dataDir: o.dataDir, anchor: credentials.anchor, log: o.log, now, verifierId: o.id, verifierKey: credentials.signing, maxAnswerLifetime: o.maxAnswerLifetime });
  const interlink = await Interlink.connect({ url: o.url, identity: credentials, trust: checkerTrust(trust.checker), now, log: o.log, protocolVersion: "auto" });
  try {
    serveVerifier(interlink, trust.verifier, now);
    await trust.attach(interlink);
  } catch (e) {
    await interlink.close();
    throw e;
  }
  o.log.info("verifier-started", { id: o.id, fleet: credentials.anchor.fleetId, revocationSerial: trust.list?.serial ?? 0 });
  return {
    trust,
    interlink,
    stop: async () => {
      trust.close();
      await interlink.close();
      o.log.info("verifier-stopped", { id: o.id });
    },
  };
}
