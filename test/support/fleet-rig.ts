// A gateway in a fleet, as an operator sets one up (what `keyproxy fleet issue-gateway --data-dir`
// does: keys, a certificate from the fleet CA and the current revocation list in its data
// directory), started in-process with monitoring and the fleet on an MQTT broker. Used by the tests
// of sessions across gateways and the memory budget with a cross-gateway SA.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import type { EmbeddedBroker } from "../../gateway/monitor/embedded-broker.ts";
import { Fleet, gatewayPublicKeys, installGatewayCertificate, loadGatewayCredentials } from "../../gateway/fleet/fleet.ts";
import { HELD_LIST_FILE } from "../../gateway/fleet/trust.ts";
import type { GatewayOptions } from "../../gateway/gateway.ts";
import type { KeyAgreementPolicy } from "../../gateway/crossgw/exchange.ts";
import { startGateway, tempDir, type TestGateway } from "./harness.ts";

export interface FleetGatewayOptions extends Partial<GatewayOptions> {
  /** How often live SAs are judged again, ms (default 0: only when a newer list arrives). */
  recheckMs?: number;
  /** Ask the verifier on its own with this id. */
  verifier?: string;
  /** The fleet's key-agreement policy (default "x25519"). */
  keyAgreement?: KeyAgreementPolicy;
}

/** A data directory set up for `id` in `fleet`: keys, certificate, trust anchor, current list. */
export function fleetDataDir(id: string, fleet: Fleet, now: () => number): string {
  const dataDir = tempDir("kp-xgw-");
  installGatewayCertificate(dataDir, fleet.issueGateway(id, gatewayPublicKeys(dataDir), now()), fleet.anchor);
  writeFileSync(join(dataDir, HELD_LIST_FILE), fleet.signedList());
  return dataDir;
}

/** A gateway for `domain` with a certificate from `fleet`, on `broker`, its policy defaulting to allow. */
export async function fleetGateway(domain: string, fleet: Fleet, broker: EmbeddedBroker, now: () => number, o: FleetGatewayOptions = {}): Promise<TestGateway> {
  const dataDir = fleetDataDir(domain, fleet, now);
  const { credentials } = loadGatewayCredentials(dataDir, domain, now(), false);
  const { recheckMs, verifier, keyAgreement, ...rest } = o;
  const t = await startGateway({
    dataDir, id: domain, now,
    mqtt: { url: broker.url, metricsSeconds: 3600 },
    fleet: { credentials, recheckMs: recheckMs ?? 0, protocolVersion: 4, verifier, keyAgreement },
    ...rest,
  });
  await t.gw.policy.setDefault("allow");
  return t;
}
