// Registration (seed 000 claims 1-6, seed 003): one request carries the desired lifetime, the device's
// suites with priorities and "issue me a certificate". The gateway grants a lifetime within policy,
// keeps an Ed25519 identity key in the device's name and issues a certificate whose validity is exactly
// the granted lifetime. Register again to renew; deregister deletes.

import { toHex } from "../../firmware/bytes.ts";
import { ErrorCode, Msg, type InnerMessage } from "../../firmware/proto/messages.ts";
import type { GatewayCrypto } from "../crypto/symmetric.ts";
import { issueCertificate } from "../encoding/cwt.ts";
import { ed25519FromSeed, generateEd25519, type Ed25519KeyPair } from "../crypto/ed25519.ts";
import { localDeviceId } from "../fleet/fleet.ts";
import type { Logger } from "../log/logger.ts";
import type { Policy } from "./policy.ts";
import type { Store } from "./store.ts";

export interface RegistrationPolicy {
  /** Shortest and longest lifetime granted, seconds. */
  minLifetime: number;
  maxLifetime: number;
}

export const DEFAULT_POLICY: RegistrationPolicy = { minLifetime: 60, maxLifetime: 86400 };

/** The longest lifetime any gateway grants, registrations and SAs alike: 20 days. Devices renew at
 *  80% of it with a timer, and JavaScript timers overflow past 2^31 - 1 ms (about 24.8 days). */
export const LIFETIME_CEILING = 20 * 86400;

export interface RegistrarDeps {
  store: Store;
  log: Logger;
  crypto: GatewayCrypto;
  gatewayId: string;
  gatewayKey: Ed25519KeyPair;
  policy: RegistrationPolicy;
  /** Who may query whose certificate: the same permission table as connections (app "cert"). */
  permissions: Policy;
  now: () => number;
  /** Called after a device deregistered: its sessions end. */
  onDeregistered?: (deviceId: string) => void;
}

const CERT_ID_BYTES = 16;
/** A firmware id is printable ASCII (the build makes it so): it is shown on terminals and in
 *  dashboards, where control characters from a device have no business. */
const FIRMWARE_ID = /^[\x20-\x7e]{1,64}$/;

export class Registrar {
  /** Registrations granted since start: `renewed` when the device held one already (expired or not). */
  readonly stats = { registered: 0, renewed: 0 };

  constructor(private d: RegistrarDeps) {}

  /** The answer to one request from an authenticated device (deviceId comes from its link). */
  async handle(deviceId: string, m: InnerMessage): Promise<InnerMessage> {
    switch (m.t) {
      case Msg.RegisterRequest:
        return this.register(deviceId, m.rid, m.lifetime, m.suites, m.wantCert, m.firmware, m.memory);
      case Msg.DeregisterRequest:
        return this.deregister(deviceId, m.rid);
      case Msg.CertQuery:
        return this.certQuery(deviceId, m.rid, m.name);
      default:
        this.d.log.warn("request-rejected", { device: deviceId, reason: `message type ${m.t} is not a request` });
        return { t: Msg.Error, rid: "rid" in m ? m.rid : 0, code: ErrorCode.Unsupported };
    }
  }

  /** The device's identity public key, for the certificate the gateway signs: the one its sealed seed
   *  makes. The identity_public column alone is not trusted: whoever can write the database (not
   *  the KEK) could put a key of theirs there and have the gateway certify it in the device's name. */
  private async identity(deviceId: string): Promise<Uint8Array> {
    const kept = await this.keptIdentity(deviceId);
    if (kept) return kept;
    // The device cannot hold a private key worth the name; the gateway keeps it in the device's name.
    const pair = generateEd25519();
    const stored = await this.d.store.setIdentity(deviceId, pair.seed, pair.publicKey);
    pair.seed.fill(0);
    if (stored) return pair.publicKey;
    // Another instance of the domain gave the device its identity first: that one is the device's.
    const theirs = await this.keptIdentity(deviceId);
    if (!theirs) throw new Error(`device ${deviceId} has no identity key and none could be stored`);
    return theirs;
  }

  /** The public key of the identity seed kept (sealed) in deviceId's name, if any, checked against the
   *  identity_public column; a mismatch is an altered row, refused. */
  private async keptIdentity(deviceId: string): Promise<Uint8Array | undefined> {
    const dev = await this.d.store.getDevice(deviceId);
    if (!dev?.identitySeed) return undefined;
    const pair = ed25519FromSeed(dev.identitySeed);
    dev.identitySeed.fill(0);
    pair.seed.fill(0);
    dev.rootKey.fill(0);
    if (!dev.identityPublic || toHex(dev.identityPublic) !== toHex(pair.publicKey)) {
      throw new Error(`the identity key of ${deviceId} in the registry is not the one its sealed seed makes: the row was altered; no certificate issued`);
    }
    return pair.publicKey;
  }

  /** firmware and memory are the device's own report (its firmware id, variables in use): kept with the
   *  registration for the operator, never trusted for any decision. */
  private async register(deviceId: string, rid: number, lifetime: number, suites: number[][], wantCert: boolean, firmware: string, memory: number): Promise<InnerMessage> {
    const { policy, now } = this.d;
    // A zero lifetime deregisters, as SIP's Expires: 0 does (the device's register(0)).
    if (lifetime === 0) return this.deregister(deviceId, rid);
    if (!FIRMWARE_ID.test(firmware)) {
      this.d.log.warn("register-rejected", { device: deviceId, reason: "the firmware id is not printable ASCII" });
      return { t: Msg.Error, rid, code: ErrorCode.Malformed };
    }
    const known = new Set(this.d.crypto.suites());
    const usable = suites.filter((p) => known.has(p[0]));
    if (suites.length && !usable.length) {
      this.d.log.warn("register-rejected", { device: deviceId, reason: `none of the suites ${suites.map((p) => p[0]).join(",")} is supported` });
      return { t: Msg.Error, rid, code: ErrorCode.Unsupported };
    }
    const granted = Math.min(policy.maxLifetime, LIFETIME_CEILING, Math.max(policy.minLifetime, lifetime));
    const t = now();
    const renewal = !!(await this.d.store.getRegistration(deviceId));
    const result = await this.d.store.atomically(async () => {
      let certId: Uint8Array = new Uint8Array(0);
      let cert: Uint8Array | null = null;
      if (wantCert) {
        certId = this.d.crypto.random(CERT_ID_BYTES);
        cert = issueCertificate(
          { iss: this.d.gatewayId, sub: deviceId, iat: t, nbf: t, exp: t + granted, cti: certId, publicKey: await this.identity(deviceId) },
          this.d.gatewayKey.seed,
        );
      }
      await this.d.store.putRegistration({ deviceId, registeredAt: t, expiresAt: t + granted, suites: usable, certId, cert, firmware, memoryUsed: memory });
      await this.d.store.audit(t, deviceId, renewal ? "renewed" : "registered", `granted=${granted} cert=${toHex(certId)}`);
      return { certId, cert };
    });
    this.stats[renewal ? "renewed" : "registered"]++;
    this.d.log.info(renewal ? "renewed" : "registered", { device: deviceId, requested: lifetime, granted, certId: toHex(result.certId), suites: usable.map((p) => p[0]).join(","), firmware, memoryUsed: memory });
    return { t: Msg.RegisterOk, rid, granted, certId: result.certId, cert: result.cert };
  }

  private async deregister(deviceId: string, rid: number): Promise<InnerMessage> {
    const existed = await this.d.store.atomically(async () => {
      const gone = await this.d.store.deleteRegistration(deviceId);
      if (gone) await this.d.store.audit(this.d.now(), deviceId, "deregistered", "");
      return gone;
    });
    this.d.log.info("deregistered", { device: deviceId, existed });
    this.d.onDeregistered?.(deviceId);
    return { t: Msg.DeregisterOk, rid };
  }

  /** Only a certificate valid now is served; an unknown, expired or certificate-less name gets the
   *  same NotFound answer (the reason goes to the log only). The caller must be registered itself. */
  private async certQuery(deviceId: string, rid: number, asked: string): Promise<InnerMessage> {
    const now = this.d.now();
    // "bob@<our domain>" is our bob; another domain's name (no cross-gateway hook took it) is not found.
    const name = localDeviceId(asked, this.d.gatewayId) ?? asked;
    const own = await this.d.store.getRegistration(deviceId);
    if (!own || own.expiresAt <= now) {
      this.d.log.warn("request-rejected", { device: deviceId, reason: own ? "caller's registration expired" : "caller is not registered", request: "cert-query" });
      return { t: Msg.Error, rid, code: ErrorCode.NotRegistered };
    }
    const reg = await this.d.store.getRegistration(name);
    const why = !(await this.d.permissions.permits(deviceId, name, "cert"))
      ? "policy denies it"
      : !reg ? "no such registration" : reg.expiresAt <= now ? "registration expired" : !reg.cert ? "no certificate issued" : "";
    if (why || !reg?.cert) {
      this.d.log.info("cert-query-not-found", { device: deviceId, name, reason: why });
      return { t: Msg.Error, rid, code: ErrorCode.NotFound };
    }
    this.d.log.info("cert-query", { device: deviceId, name, certId: toHex(reg.certId ?? new Uint8Array(0)) });
    return { t: Msg.CertAnswer, rid, cert: reg.cert };
  }
}
