// Every place keyproxy writes a file that must survive a power cut, called once each in a fresh
// directory (argv[2]): test/durable-files.test.ts runs this under strace and checks the system calls.
// Prints the files written, one per line, as JSON.

import { join } from "node:path";
import { addDevice } from "../../cli/device-cmd.ts";
import { loadOrCreateBridgeKey } from "../../gateway/ble/bridge-key.ts";
import { Fleet, gatewayPublicKeys, installGatewayCertificate } from "../../gateway/fleet/fleet.ts";
import { HELD_LIST_FILE, FleetTrust } from "../../gateway/fleet/trust.ts";
import { Logger } from "../../gateway/log/logger.ts";
import { KEK_FILE, loadOrCreateKek } from "../../gateway/registry/kek.ts";

const root = process.argv[2];
const now = Math.floor(Date.now() / 1000);
const fleetDir = join(root, "fleet");
const dataDir = join(root, "gw");

const fleet = Fleet.create(fleetDir, "durable-test", now); // ca.key, fleet.json, revocation.cose
const cert = fleet.issueGateway("a.example", gatewayPublicKeys(dataDir), now); // gateway.key, gateway.x25519, gateways/a.example.cwt
installGatewayCertificate(dataDir, cert, fleet.anchor); // gateway.cwt, fleet.json
const newer = fleet.revoke({ devices: ["old@a.example"] }, now); // revocation.cose again
const trust = new FleetTrust({ dataDir, anchor: fleet.anchor, log: new Logger(() => undefined), now: () => now, verifierId: "a.example" });
if (!trust.offer(newer, "mqtt")) throw new Error("the newer list was not taken"); // the gateway's held list
loadOrCreateKek(join(dataDir, KEK_FILE), true); // the registry's KEK
await addDevice(dataDir, "dev1", "puckjs", "a.example", join(root, "dev1.json"), false); // the provisioning file (and the KEK, made already)
loadOrCreateBridgeKey(join(dataDir, "bridge.key")); // the BLE bridge key

for (const f of [
  join(fleetDir, "ca.key"), join(fleetDir, "fleet.json"), join(fleetDir, "revocation.cose"), join(fleetDir, "gateways", "a.example.cwt"),
  join(dataDir, "gateway.key"), join(dataDir, "gateway.x25519"), join(dataDir, "gateway.cwt"), join(dataDir, "fleet.json"),
  join(dataDir, HELD_LIST_FILE), join(dataDir, KEK_FILE), join(root, "dev1.json"), join(dataDir, "bridge.key"),
]) console.log(JSON.stringify(f));
