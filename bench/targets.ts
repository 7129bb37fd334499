// Performance targets: they live here, in the benchmark, never in tests. Each is a ratio measured in
// one emulator run (absolute times depend on the machine and its load; ratios much less). The floors
// are about half of what the first runs measured on a loaded 2-CPU machine (X25519 ÷ join 21-29,
// ÷ protect 199-260, ÷ session setup 24-26), so noise does not trip them; missing one means a device
// operation became about twice as expensive next to X25519, which deserves a look before it ships.
// `npm run bench` exits non-zero when one is missed.

import { SUITE_AES_CCM_16_64_128 } from "../firmware/crypto/types.ts";
import type { DeviceResults, SuiteTimings } from "./device-run.ts";
import type { DeviceSessionResults, DeviceSessionSuite, GatewaySessionResults } from "./sessions.ts";

export interface Target {
  what: string;
  /** The ratio must be at least this. */
  floor: number;
  /** d: the main device run; s: the session device run (each has its own X25519). */
  measure(d: DeviceResults, s: DeviceSessionResults): number;
}

export interface TargetResult {
  what: string;
  floor: number;
  measured: number;
  met: boolean;
}

function ccm(d: DeviceResults): SuiteTimings {
  const s = d.suites.find((x) => x.suite === SUITE_AES_CCM_16_64_128);
  if (!s) throw new Error("targets: the run has no AES-CCM results");
  return s;
}

function ccmSession(s: DeviceSessionResults): DeviceSessionSuite {
  const x = s.suites.find((y) => y.suite === SUITE_AES_CCM_16_64_128);
  if (!x) throw new Error("targets: the session run has no AES-CCM results");
  return x;
}

export const TARGETS: Target[] = [
  {
    what: "X25519 (nacl-fast) ÷ join (request + accept), AES-CCM link",
    floor: 10,
    measure: (d) => d.x25519.naclFast.medianUs / (ccm(d).joinRequest.medianUs + ccm(d).joinAccept.medianUs),
  },
  {
    what: "X25519 (nacl-fast) ÷ register, AES-CCM link",
    floor: 35,
    measure: (d) => d.x25519.naclFast.medianUs / ccm(d).register.medianUs,
  },
  {
    what: "X25519 (nacl-fast) ÷ protect a 64-byte message, AES-CCM link",
    floor: 100,
    measure: (d) => d.x25519.naclFast.medianUs / ccm(d).protect.medianUs,
  },
  {
    what: "X25519 (nacl-fast) ÷ session setup as caller, AES-CCM link and SA",
    floor: 12,
    measure: (_d, s) => s.x25519.medianUs / ccmSession(s).caller.medianUs,
  },
  {
    what: "X25519 (nacl-fast) ÷ session setup as callee, AES-CCM link and SA",
    floor: 12,
    measure: (_d, s) => s.x25519.medianUs / ccmSession(s).callee.medianUs,
  },
];

export function checkTargets(d: DeviceResults, s: DeviceSessionResults): TargetResult[] {
  return TARGETS.map((t) => {
    const measured = t.measure(d, s);
    return { what: t.what, floor: t.floor, measured, met: measured >= t.floor };
  });
}

/** A target on the gateway: its measured value must be at most the ceiling. */
export interface CeilingResult {
  what: string;
  ceiling: number;
  measured: number;
  met: boolean;
}

/** Issue 14, scope 1: inside one gateway, the CPU per setup is at most 3× the setup's raw crypto
 *  (bench/sessions.ts: the gateway process's CPU over the concurrent rounds, per setup, ÷ the median of
 *  the same setup's crypto primitives timed alone). Reported beside the measurement and logged when
 *  missed, but it does not fail the run: the gateway's CPU depends on what else the shared machine is
 *  doing far more than the device ratios above do. */
export const GATEWAY_SETUP_CEILING = 3;

export function gatewaySetupTarget(g: GatewaySessionResults): CeilingResult {
  const measured = g.gatewayCpuUsPerSetup / g.rawCrypto.medianUs;
  return { what: `inside one gateway, CPU per setup ≤ ${GATEWAY_SETUP_CEILING}× its raw crypto`, ceiling: GATEWAY_SETUP_CEILING, measured, met: measured <= GATEWAY_SETUP_CEILING };
}
