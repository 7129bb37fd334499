// `keyproxy fleet`: the fleet CA's side of fleet trust (gateway/fleet/fleet.ts, docs/FLEET.md). The CA key
// never leaves the fleet directory and is never printed; everything printed here is public.

import { existsSync, readFileSync } from "node:fs";
import { createFileDurably, writeFileDurably } from "../gateway/files/durable.ts";
import { join } from "node:path";
import { fromHex, toHex } from "../firmware/bytes.ts";
import {
  DEFAULT_GATEWAY_CERT_LIFETIME,
  DEFAULT_LIST_LIFETIME,
  Fleet,
  FLEET_FILE,
  gatewayPublicKeys,
  installGatewayCertificate,
  readGatewayCertificateUnverified,
  REVOCATION_FILE,
} from "../gateway/fleet/fleet.ts";
import { HELD_LIST_FILE, publishRevocationList, revocationTopic } from "../gateway/fleet/trust.ts";
import { brokerUrl, helpRows, parse, positiveInt, printJson, UsageError } from "./args.ts";
import { noteNewDataDir, warnIfUnignoredInGitTree } from "./git-worktree.ts";

export const DEFAULT_FLEET_DIR = "./keyproxy-fleet";

/** Each subcommand: its group and one line for "keyproxy fleet --help", and its own --help. */
const SUBCOMMANDS: Record<string, { group: string; summary: string; help: string }> = {
  create: {
    group: "the fleet",
    summary: "make a fleet: CA key, trust anchor, first revocation list",
    help: `usage: keyproxy fleet create --id <fleet-id> [--fleet-dir <dir>]
         [--list-days <n>]

Creates a fleet: a CA key (Ed25519, <dir>/ca.key, mode 0600, never printed), the
trust anchor <dir>/${FLEET_FILE} (fleet id and CA public key: give it to every
gateway and verifier) and an empty revocation list, serial 1, valid for
--list-days (default ${DEFAULT_LIST_LIFETIME / 86400}).`,
  },
  show: {
    group: "the fleet",
    summary: "the fleet, its revocation list and the gateways certified",
    help: `usage: keyproxy fleet show [--fleet-dir <dir>] [--json]

Prints the fleet id, the CA public key, the revocation list and the gateways
certified. --json: the same as one JSON document on stdout (all of it public;
the CA key is never in it).`,
  },
  "issue-gateway": {
    group: "gateways",
    summary: "certify a gateway (its id is its domain)",
    help: `usage: keyproxy fleet issue-gateway --id <gateway-id> [--fleet-dir <dir>]
         [--days <n>] (--data-dir <gateway data dir>
         | --signing-key <hex> --encryption-key <hex> --out <file>)

Certifies a gateway (its id is its domain) for --days (default ${DEFAULT_GATEWAY_CERT_LIFETIME / 86400}).
  --data-dir        the gateway's data directory on this machine: its keys are
                    made there if missing (gateway.key, gateway.x25519, mode
                    0600) and the certificate, the trust anchor and the current
                    revocation list are installed beside them
  --signing-key     the gateway's Ed25519 public key, 64 hex digits (a gateway
                    on another machine)
  --encryption-key  the gateway's X25519 public key, 64 hex digits
  --out             where to write the certificate (with --signing-key and
                    --encryption-key)`,
  },
  "revoke-gateway": {
    group: "gateways",
    summary: "revoke a gateway and every device certificate it issued",
    help: `usage: keyproxy fleet revoke-gateway --id <gateway-id> [--fleet-dir <dir>]
         [--list-days <n>] [--mqtt <url>]

Signs the next revocation list (serial + 1) with the gateway added: its
certificates and every device certificate it issued stop being good, and with
--mqtt every gateway ends its sessions with it.`,
  },
  "revoke-device": {
    group: "devices",
    summary: "revoke a device by name, or one certificate by id",
    help: `usage: keyproxy fleet revoke-device (--name <name@domain> | --cert-id <hex>)
         [--fleet-dir <dir>] [--list-days <n>] [--mqtt <url>]

Signs the next revocation list (serial + 1) with the device added: by name
(every certificate of that device, now and later) or by one certificate id.
With --mqtt, publishes it (retained) where every gateway of the fleet listens:
the device's home gateway refuses its joins and every gateway ends its sessions
as soon as the list arrives (docs/FLEET.md states the bound when it does not).`,
  },
  refresh: {
    group: "the revocation list",
    summary: "sign the list again with a new next update (from cron)",
    help: `usage: keyproxy fleet refresh [--fleet-dir <dir>] [--list-days <n>]
         [--mqtt <url>]

Signs the next revocation list (serial + 1) with the same entries and a new
next-update time. Run it before the current list's next update (from cron, with
--mqtt), or verifiers stop answering "good" and sessions across gateways end.`,
  },
  publish: {
    group: "the revocation list",
    summary: "publish the current list where every gateway listens",
    help: `usage: keyproxy fleet publish --mqtt <url> [--fleet-dir <dir>]

Publishes the current revocation list, retained, on
keyproxy-cose/v1/fleet/<fleet-id>/revocation, where every gateway of the fleet
listens (say, after a broker lost its retained messages).`,
  },
};

/** The subcommands that publish, and so take --mqtt (from a flag, the environment or a config file). */
const PUBLISHING = ["revoke-device", "revoke-gateway", "refresh", "publish"];

function usage(): string {
  const groups = [...new Set(Object.values(SUBCOMMANDS).map((c) => c.group))];
  const width = Math.max(...Object.keys(SUBCOMMANDS).map((n) => n.length));
  const rows = (g: string) => Object.entries(SUBCOMMANDS).filter(([, c]) => c.group === g).map(([name, c]) => [name, c.summary] as const);
  const sections = groups.map((g) => `${g}:\n${helpRows(rows(g), 2, width)}`);
  return `usage: keyproxy fleet <subcommand> [options]

${sections.join("\n\n")}

  --fleet-dir <dir>  the fleet directory (default ${DEFAULT_FLEET_DIR})

Run "keyproxy fleet <subcommand> --help" for each one's options.`;
}

const OPTIONS = {
  "fleet-dir": { type: "string" },
  id: { type: "string" },
  name: { type: "string" },
  "cert-id": { type: "string" },
  days: { type: "string" },
  "list-days": { type: "string" },
  "data-dir": { type: "string" },
  "signing-key": { type: "string" },
  "encryption-key": { type: "string" },
  out: { type: "string" },
  mqtt: { type: "string" },
  json: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

const nowSeconds = (): number => Math.floor(Date.now() / 1000);

function publicKeyArg(v: string | undefined, flag: string): Uint8Array {
  const b = v && /^[0-9a-fA-F]{64}$/.test(v) ? fromHex(v.toLowerCase()) : undefined;
  if (!b) throw new UsageError(`${flag} wants a 32-byte public key as 64 hex digits`);
  return b;
}

function openFleet(dir: string): Fleet {
  if (!existsSync(join(dir, FLEET_FILE))) throw new UsageError(`no fleet in ${dir} (create one with "keyproxy fleet create --id <fleet-id>", or pass --fleet-dir)`);
  return Fleet.open(dir);
}

function date(s: number): string {
  return new Date(s * 1000).toISOString().replace(/\.000Z$/, "Z");
}

function printList(fleet: Fleet): void {
  const l = fleet.currentList();
  console.log(`revocation list serial ${l.serial}, issued ${date(l.issuedAt)}, next update ${date(l.nextUpdate)}${nowSeconds() >= l.nextUpdate ? " (STALE: run keyproxy fleet refresh)" : ""}`);
  console.log(`  revoked gateways: ${l.gateways.length ? l.gateways.join(", ") : "none"}`);
  console.log(`  revoked devices: ${l.devices.length ? l.devices.join(", ") : "none"}`);
  console.log(`  revoked certificate ids: ${l.certIds.length ? l.certIds.join(", ") : "none"}`);
}

/** `fleet show --json`: everything show prints, all of it public (the CA key stays in its file). */
function fleetJson(fleet: Fleet, dir: string, now: number) {
  const l = fleet.currentList();
  return {
    fleet: fleet.fleetId,
    fleetDir: dir,
    caPublicKey: toHex(fleet.anchor.caPublicKey),
    revocationList: {
      serial: l.serial,
      issuedAt: date(l.issuedAt),
      nextUpdate: date(l.nextUpdate),
      stale: now >= l.nextUpdate,
      gateways: l.gateways,
      devices: l.devices,
      certIds: l.certIds,
    },
    gateways: fleet.issuedGateways().map((g) => {
      const c = readGatewayCertificateUnverified(g.certificate);
      return { id: c.sub, certId: toHex(c.cti), expires: date(c.exp), expired: now >= c.exp };
    }),
  };
}

async function publish(fleet: Fleet, url: string): Promise<void> {
  const list = fleet.currentList();
  try {
    await publishRevocationList(url, fleet.fleetId, fleet.signedList());
  } catch (e) {
    throw new Error(`the list is signed but NOT published: ${(e as Error).message}; retry with "keyproxy fleet publish --mqtt <url>"`);
  }
  console.log(`published revocation list serial ${list.serial} (retained) on ${revocationTopic(fleet.fleetId)}`);
}

export async function fleetCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === "--help" || sub === "-h" || sub === "help") {
    console.log(usage());
    return 0;
  }
  if (!sub) throw new UsageError(`a subcommand is required (one of ${Object.keys(SUBCOMMANDS).join(", ")})`);
  if (!Object.hasOwn(SUBCOMMANDS, sub)) throw new UsageError(`unknown subcommand "${sub}" (one of ${Object.keys(SUBCOMMANDS).join(", ")})`);
  // From the environment and config files: the fleet directory, the list's lifetime, and the broker
  // for the subcommands that publish. Never --data-dir: here it names a gateway to install into.
  const o = parse(rest, OPTIONS, ["fleet-dir", "list-days", ...(PUBLISHING.includes(sub) ? ["mqtt"] : [])]);
  if (o.help) {
    console.log(SUBCOMMANDS[sub].help);
    return 0;
  }
  if (o.json && sub !== "show") throw new UsageError("--json is for show");
  const dir = o["fleet-dir"] ?? DEFAULT_FLEET_DIR;
  const listLifetime = positiveInt(o["list-days"], "--list-days", DEFAULT_LIST_LIFETIME / 86400) * 86400;
  const now = nowSeconds();

  if (sub === "create") {
    if (!o.id) throw new UsageError("--id <fleet-id> is required");
    const fleet = Fleet.create(dir, o.id, now, listLifetime);
    console.log(`created fleet "${fleet.fleetId}" in ${dir}`);
    console.log(`  CA public key ${toHex(fleet.anchor.caPublicKey)}`);
    console.log(`  trust anchor ${join(dir, FLEET_FILE)}; CA key ${join(dir, "ca.key")} (mode 0600: keep it offline if you can)`);
    warnIfUnignoredInGitTree(join(dir, "ca.key"), "the fleet CA key");
    return 0;
  }

  if (sub === "issue-gateway") {
    if (!o.id) throw new UsageError("--id <gateway-id> is required");
    const lifetime = positiveInt(o.days, "--days", DEFAULT_GATEWAY_CERT_LIFETIME / 86400) * 86400;
    const fleet = openFleet(dir);
    if (o["data-dir"]) {
      if (o["signing-key"] || o["encryption-key"] || o.out) throw new UsageError("--data-dir cannot be combined with --signing-key, --encryption-key or --out");
      const warnIfNew = noteNewDataDir(o["data-dir"]);
      const cert = fleet.issueGateway(o.id, gatewayPublicKeys(o["data-dir"]), now, lifetime);
      const claims = installGatewayCertificate(o["data-dir"], cert, fleet.anchor);
      // The gateway starts from the current list (newer ones reach it over MQTT); it never takes an older one.
      writeFileDurably(join(o["data-dir"], HELD_LIST_FILE), readFileSync(join(dir, REVOCATION_FILE)), 0o644);
      console.log(`issued gateway certificate for "${claims.sub}" (id ${toHex(claims.cti)}), valid until ${date(claims.exp)}; installed in ${o["data-dir"]}`);
      warnIfNew();
      return 0;
    }
    const keys = { signingKey: publicKeyArg(o["signing-key"], "--signing-key"), encryptionKey: publicKeyArg(o["encryption-key"], "--encryption-key") };
    if (!o.out) throw new UsageError("--out <file> is required with --signing-key and --encryption-key (or pass --data-dir)");
    if (existsSync(o.out)) throw new Error(`${o.out} exists; refusing to overwrite it`);
    const cert = fleet.issueGateway(o.id, keys, now, lifetime);
    if (!createFileDurably(o.out, cert, 0o644)) throw new Error(`${o.out} exists; refusing to overwrite it`);
    const claims = readGatewayCertificateUnverified(cert);
    console.log(`issued gateway certificate for "${claims.sub}" (id ${toHex(claims.cti)}), valid until ${date(claims.exp)}; written to ${o.out}`);
    console.log(`  give the gateway ${o.out}, ${join(dir, FLEET_FILE)} and ${join(dir, REVOCATION_FILE)}`);
    return 0;
  }

  if (o.mqtt !== undefined) brokerUrl(o.mqtt, "--mqtt");
  if (o.mqtt !== undefined && !PUBLISHING.includes(sub)) throw new UsageError(`--mqtt is for ${PUBLISHING.slice(0, -1).join(", ")} and ${PUBLISHING[PUBLISHING.length - 1]}`);

  if (sub === "publish") {
    if (!o.mqtt) throw new UsageError("--mqtt <url> is required");
    const fleet = openFleet(dir);
    await publish(fleet, o.mqtt);
    return 0;
  }

  if (sub === "revoke-device" || sub === "revoke-gateway" || sub === "refresh") {
    const fleet = openFleet(dir);
    let add: { devices?: string[]; certIds?: string[]; gateways?: string[] } = {};
    if (sub === "revoke-device") {
      if (!!o.name === !!o["cert-id"]) throw new UsageError("give exactly one of --name <name@domain> and --cert-id <hex>");
      add = o.name ? { devices: [o.name] } : { certIds: [(o["cert-id"] as string).toLowerCase()] };
    } else if (sub === "revoke-gateway") {
      if (!o.id) throw new UsageError("--id <gateway-id> is required");
      add = { gateways: [o.id] };
    }
    fleet.revoke(add, now, listLifetime);
    const what = add.devices?.[0] ?? add.certIds?.[0] ?? add.gateways?.[0];
    console.log(`${what ? `revoked ${what}; ` : ""}signed ${join(dir, REVOCATION_FILE)}`);
    printList(fleet);
    if (o.mqtt) await publish(fleet, o.mqtt);
    else console.log(`distribute ${join(dir, REVOCATION_FILE)} to every gateway: "keyproxy fleet publish --mqtt <url>" (docs/FLEET.md, "Revocation")`);
    return 0;
  }

  // show
  const fleet = openFleet(dir);
  if (o.json) {
    printJson(fleetJson(fleet, dir, now));
    return 0;
  }
  console.log(`fleet "${fleet.fleetId}" in ${dir}`);
  console.log(`  CA public key ${toHex(fleet.anchor.caPublicKey)}`);
  printList(fleet);
  const issued = fleet.issuedGateways();
  console.log(`gateways certified: ${issued.length ? "" : "none"}`);
  for (const g of issued) {
    const c = readGatewayCertificateUnverified(g.certificate);
    console.log(`  ${c.sub.padEnd(24)} id ${toHex(c.cti)}  until ${date(c.exp)}${now >= c.exp ? " (expired)" : ""}`);
  }
  return 0;
}
