// The session broker's extension point: a hook sees every session message and SA frame before the
// gateway's own handling, and takes those that are not this gateway's alone (sessions across
// gateways: gateway/crossgw/cross-gateway.ts). Its own module, so that the gateway that offers the hook and the
// code that implements it both depend on it, and not on each other.

import type { CloseReason, InnerMessage, SaData } from "../../firmware/proto/messages.ts";
import type { GatewayCrypto } from "../crypto/symmetric.ts";
import type { Logger } from "../log/logger.ts";
import type { Policy } from "../registry/policy.ts";
import type { SessionBroker, SessionSettings } from "./session-broker.ts";
import type { Store } from "../registry/store.ts";
import type { SessionSharing } from "./shared.ts";

/** What a session hook may use: the gateway's own parts. */
export interface SessionHookContext {
  gatewayId: string;
  store: Store;
  policy: Policy;
  log: Logger;
  crypto: GatewayCrypto;
  now: () => number;
  sessions: SessionBroker;
  settings: SessionSettings;
  send: (deviceId: string, m: InnerMessage) => boolean;
  relay: (deviceId: string, payload: Uint8Array) => boolean;
  isLinked: (deviceId: string) => boolean;
  /** When this gateway is one of several instances of its domain: SPIs are claimed in the domain's
   *  database (gateway/sessions/shared.ts); send, relay and isLinked reach the whole domain. */
  sharing?: SessionSharing;
  /** Revokes a device of this gateway (Gateway.revokeDevice). */
  revokeDevice: (deviceId: string, why: string) => Promise<boolean>;
}

/** handle and relay return true when they took the message; false leaves it to the gateway (the
 *  registrar, the session broker). */
export interface SessionHook {
  /** Every inner message from a device, before the registrar or the session broker sees it. */
  handle(deviceId: string, m: InnerMessage): boolean;
  relay(deviceId: string, m: SaData, payload: Uint8Array): boolean;
  /** Every session of the device must end (lost link, reboot, deregistration, revocation). */
  deviceGone(deviceId: string, reason: CloseReason, why: string): void;
  /** Whether one of the hook's SAs holds this SPI: the session broker never draws it for a local SA. */
  holdsSpi?(spi: number): boolean;
  close(): void;
}
