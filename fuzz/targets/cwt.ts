// Certificates: device certificates (gateway/encoding/cwt.ts, CertError) and gateway certificates from the
// fleet CA (gateway/fleet/fleet.ts, FleetError), verified and read unverified.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CertError, issueCertificate, readCertificateUnverified, verifyCertificate } from "../../gateway/encoding/cwt.ts";
import { generateEd25519 } from "../../gateway/crypto/ed25519.ts";
import { Fleet, FleetError, generateX25519, readGatewayCertificateUnverified, verifyGatewayCertificateSignature } from "../../gateway/fleet/fleet.ts";
import type { Rng } from "../rng.ts";
import { acceptedByAny, type Target } from "../target.ts";

export const T0 = 1_800_000_000;

export interface CertificateSeeds {
  seeds: Uint8Array[];
  deviceIssuer: Uint8Array;
  fleetCa: Uint8Array;
}

/** Device certificates (with and without kid) and gateway certificates, made by the real issuers. */
export async function certificateSeeds(rng: Rng): Promise<CertificateSeeds> {
  const gw = generateEd25519();
  const device = (sub: string, kid?: Uint8Array) =>
    issueCertificate({ iss: "a.example", sub, iat: T0, nbf: T0, exp: T0 + 3600, cti: rng.bytes(16), publicKey: generateEd25519().publicKey }, gw.seed, kid);
  const dir = mkdtempSync(join(tmpdir(), "kp-fuzz-"));
  try {
    const fleet = Fleet.create(dir, "kp-fleet", T0);
    const gatewayCert = fleet.issueGateway("a.example", { signingKey: gw.publicKey, encryptionKey: generateX25519().publicKey }, T0, 86_400);
    return { seeds: [device("alice"), device("bob", rng.bytes(8)), gatewayCert], deviceIssuer: gw.publicKey, fleetCa: fleet.anchor.caPublicKey };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export const cwtTarget: Target = {
  name: "cwt",
  about: "verifyCertificate / readCertificateUnverified (gateway/encoding/cwt.ts), gateway certificates (gateway/fleet/fleet.ts)",
  async setup(rng) {
    const c = await certificateSeeds(rng);
    return {
      seeds: () => c.seeds,
      run(input) {
        // All four readers see every input; it is accepted when any of them takes it.
        return acceptedByAny([
          () => readCertificateUnverified(input),
          () => verifyCertificate(input, c.deviceIssuer, T0 + 10),
          () => readGatewayCertificateUnverified(input),
          () => verifyGatewayCertificateSignature(input, c.fleetCa),
        ], (e) => e instanceof CertError || e instanceof FleetError);
      },
      isRejection: () => false,
    };
  },
};
