// Mutation testing with StrykerJS (docs/MUTATION.md). One module at a time: each module is mutated
// against only the test files that exercise it, since every mutant re-runs the tests that cover it and
// the whole suite per mutant would never finish on a 2-core machine. `npm run mutation -- <module>`
// (scripts/mutation.mjs) picks the module through KP_MUTATION_MODULE and runs Stryker under nice.
//
// Tests run through @stryker-mutator/tap-runner: each test file is started as
// `node -r <stryker hook> --import tsx --test-reporter=tap <file>` and its TAP read back, so a "test"
// for Stryker is a whole file (coverage per file: a mutant runs only the files that reached it).

/** Module name -> the files mutated and the focused test files that exercise them. Firmware modules
 *  take only tests that run the firmware in Node: a test that bundles the firmware for the emulator
 *  would bundle the instrumented sources, which the build's Espruino gate refuses. */
export const MODULES = {
  "firmware/crypto": {
    mutate: ["firmware/crypto/*.ts"],
    tests: ["test/crypto.test.ts", "test/crypto-boundaries.test.ts", "test/proto.test.ts", "test/join-accept-forged.test.ts"],
  },
  "firmware/cbor.ts": {
    // The device's CBOR codec: every frame the handset reads goes through its decoder first.
    // test/cbor-core.test.ts bundles the codec with esbuild for the core build: it would bundle the
    // instrumented source, which fails its dry run, so it is not in the set.
    mutate: ["firmware/cbor.ts"],
    tests: ["test/cbor-device-edges.test.ts", "test/cbor.test.ts", "test/proto.test.ts"],
  },
  "firmware/proto": {
    mutate: ["firmware/proto/*.ts"],
    tests: ["test/proto.test.ts", "test/replay-window-edges.test.ts", "test/join-tag-spec.test.ts", "test/frame-edges.test.ts", "test/link-edges.test.ts", "test/message-table-spec.test.ts", "test/gateway.test.ts", "test/join-accept-forged.test.ts", "test/sa-confirm-wrong-tag.test.ts", "test/group-sa.test.ts"],
  },
  "gateway/crypto": {
    // The gateway's symmetric suites (must agree with the device's) and Ed25519 with its key cache.
    mutate: ["gateway/crypto/*.ts"],
    tests: ["test/gateway-crypto-edges.test.ts", "test/crypto.test.ts", "test/crypto-boundaries.test.ts", "test/cose.test.ts", "test/keycache.test.ts", "test/fleet.test.ts"],
  },
  "gateway/encoding": {
    // The gateway's deterministic CBOR, COSE_Sign1 and the device certificates (CWT).
    mutate: ["gateway/encoding/*.ts"],
    tests: ["test/encoding-edges.test.ts", "test/cbor.test.ts", "test/cose.test.ts", "test/fleet.test.ts", "test/exchange-decoders.test.ts"],
  },
  "gateway/fleet/trust": {
    // Who a gateway trusts: the fleet CA's gateway certificates and revocation lists, the verifier's
    // signed answers and the certificate checker's cache of them, the held revocation list.
    mutate: ["gateway/fleet/fleet.ts", "gateway/fleet/verifier.ts", "gateway/fleet/trust.ts", "gateway/fleet/identity.ts", "gateway/fleet/verifier-service.ts"],
    tests: ["test/fleet-edges.test.ts", "test/verifier-edges.test.ts", "test/fleet-trust.test.ts", "test/fleet.test.ts", "test/exchange.test.ts", "test/interlink.test.ts", "test/interlink-edges.test.ts", "test/keycache.test.ts"],
  },
  "gateway/crossgw/exchange.ts": {
    mutate: ["gateway/crossgw/exchange.ts"],
    tests: ["test/exchange.test.ts", "test/exchange-decoders.test.ts", "test/exchange-lifecycle.test.ts", "test/exchange-spec.test.ts", "test/interlink.test.ts"],
  },
  "gateway/fleet/interlink.ts": {
    mutate: ["gateway/fleet/interlink.ts"],
    // test/crossgw.test.ts reaches the interlink too, but takes 35 s a run (in-process gateways and
    // handsets over TCP): Stryker would take hours. It re-checks the survivors instead (docs/MUTATION.md).
    tests: ["test/interlink-edges.test.ts", "test/interlink.test.ts", "test/interlink-channel.test.ts", "test/interlink-instances.test.ts"],
  },
  "gateway/fleet/channel.ts": {
    mutate: ["gateway/fleet/channel.ts"],
    tests: ["test/channel-edges.test.ts", "test/interlink-channel.test.ts", "test/interlink.test.ts"],
  },
  "gateway/registry/keys": {
    // The registry's keys at rest: sealed under the KEK (kek.ts), opened, refused when altered, and the
    // registry's records around them (store.ts); the text format of every key file (hex-key.ts).
    mutate: ["gateway/registry/kek.ts", "gateway/registry/store.ts", "gateway/files/hex-key.ts"],
    tests: ["test/hex-key.test.ts", "test/registry-keys-edges.test.ts", "test/registry-kek.test.ts", "test/registrar-answers.test.ts", "test/store-audit.test.ts", "test/registry-engines.test.ts", "test/registry-outage.test.ts", "test/join-oracle.test.ts", "test/live-table.test.ts"],
  },
  "gateway/link/limits": {
    // What anyone who can reach the link port may do: the frame reader for unauthenticated bytes
    // (deframer.ts), the connection and join limits and the per-source keys they count by (limits.ts).
    mutate: ["gateway/link/deframer.ts", "gateway/link/limits.ts"],
    tests: ["test/link-deframer.test.ts", "test/link-limits.test.ts", "test/link-server.test.ts", "test/link-server-edges.test.ts"],
  },
  "gateway/files": {
    // What must survive a power cut: each file's bytes synced before its name points at them, the
    // directory after (durable.ts), and the lock fleet commands hold (lock.ts). The strace test's
    // writers run in a child process Stryker's hook does not reach: fsync mutants there are checked
    // by hand (docs/MUTATION.md).
    mutate: ["gateway/files/durable.ts", "gateway/files/lock.ts"],
    tests: ["test/durable-files.test.ts", "test/fleet-revoke-concurrent.test.ts"],
  },
  "gateway/registry/registrar.ts": {
    mutate: ["gateway/registry/registrar.ts"],
    tests: ["test/registrar-answers.test.ts", "test/gateway.test.ts", "test/keycache.test.ts"],
  },
  "gateway/link/server.ts": {
    mutate: ["gateway/link/server.ts"],
    tests: ["test/gateway.test.ts", "test/join-accept-forged.test.ts", "test/link-server.test.ts", "test/link-server-edges.test.ts"],
  },
  "gateway/sessions/groups.ts": {
    mutate: ["gateway/sessions/groups.ts"],
    // The group keeper: who holds a group key, when it is replaced, which frames are relayed. The
    // instance variants (test/groups-instances*.test.ts) need PostgreSQL and Mosquitto: not here.
    tests: ["test/group-keeper.test.ts", "test/groups.test.ts", "test/groups-crossgw.test.ts"],
  },
  "gateway/crossgw/groups": {
    // Group SAs across gateways: a home's watches, keys and frames for members in other domains, and
    // a member's gateway's answers; each message's decoder (group-messages.ts).
    mutate: ["gateway/crossgw/groups-remote.ts", "gateway/crossgw/group-messages.ts"],
    tests: ["test/group-messages.test.ts", "test/groups-remote-edges.test.ts", "test/groups-crossgw.test.ts", "test/group-keeper.test.ts"],
  },
  "gateway/crossgw/messages.ts": {
    // The bodies of sessions across gateways (kp.x.*), as a peer gateway of another domain sends them.
    mutate: ["gateway/crossgw/messages.ts"],
    tests: ["test/crossgw-messages.test.ts"],
  },
  "gateway/instances/bus": {
    // The sealed MQTT bus between the instances of one domain: its seal, freshness and replay window,
    // presence, and each message's decoder.
    mutate: ["gateway/instances/bus.ts", "gateway/instances/bus-messages.ts"],
    tests: ["test/instance-bus-edges.test.ts", "test/instance-bus.test.ts"],
  },
  "gateway/web": {
    // The read-only web fleet view: its token, its loopback and Host checks, its headers, the viewers'
    // cap, and the snapshot it builds from monitoring.
    mutate: ["gateway/web/*.ts"],
    tests: ["test/web-view-edges.test.ts", "test/web-view.test.ts"],
  },
  "gateway/ble/bridge": {
    // The BLE bridge's connection to its gateway: the mutual proof of the bridge key, the per-direction
    // keys, the sealed and counted messages, their decoders and framing; the key file.
    mutate: ["gateway/ble/bridge-protocol.ts", "gateway/ble/bridge-key.ts"],
    tests: ["test/bridge-messages.test.ts", "test/ble-bridge.test.ts"],
  },
  "gateway/log": {
    // What reaches a log line, an MQTT event or an operator's terminal: byte arrays withheld, control
    // characters escaped, the protocol's numbers by name.
    mutate: ["gateway/log/*.ts"],
    tests: ["test/terminal.test.ts", "test/logger.test.ts"],
  },
  "gateway/sessions/matching.ts": {
    // Seed 003's cipher-suite matching: which setting two devices share, and which one wins.
    mutate: ["gateway/sessions/matching.ts"],
    tests: ["test/matching.test.ts", "test/matching-edges.test.ts", "test/session-broker-edges.test.ts"],
  },
  "gateway/sessions/session-broker.ts": {
    mutate: ["gateway/sessions/session-broker.ts"],
    tests: ["test/session-broker-edges.test.ts", "test/sessions.test.ts", "test/sa-confirm-wrong-tag.test.ts"],
  },
};

/** The module named by KP_MUTATION_MODULE (a key of MODULES, or a path inside one). */
export function moduleNamed(name) {
  if (MODULES[name]) return name;
  const key = Object.keys(MODULES).find((k) => name.startsWith(k + "/") || name === k);
  if (!key) throw new Error(`no mutation module "${name}"; known: ${Object.keys(MODULES).join(", ")}`);
  return key;
}

// KP_MUTATION_MODULE names a module, or one file of a module (then only that file is mutated, against
// the module's tests: a quicker run while killing that file's survivors).
const asked = process.env.KP_MUTATION_MODULE;
const chosen = asked ? moduleNamed(asked) : undefined;
const modules = chosen ? [MODULES[chosen]] : Object.values(MODULES);
const oneFile = asked && asked !== chosen && asked.endsWith(".ts") ? asked : undefined;
const reportName = (oneFile ?? chosen ?? "all").replace(/[/.]/g, "-");

/** @type {import('@stryker-mutator/api/core').PartialStrykerOptions} */
export default {
  testRunner: "tap",
  plugins: ["@stryker-mutator/tap-runner"],
  tap: {
    testFiles: [...new Set(modules.flatMap((m) => m.tests))],
    nodeArgs: ["--import", "tsx", "--test-reporter=tap"],
    // A mutant is killed by its first failing test: no need to wait for the rest of the file.
    forceBail: true,
  },
  mutate: oneFile ? [oneFile] : modules.flatMap((m) => m.mutate),
  coverageAnalysis: "perTest",
  // Other workers share the 2 cores: one test process at a time.
  concurrency: 1,
  // tsx does not type check, and a type checker per mutant would double the run.
  checkers: [],
  // Mutants in module-level initialisers need every test re-run with the module reloaded: slow.
  ignoreStatic: true,
  timeoutMS: 15000,
  timeoutFactor: 2,
  reporters: ["clear-text", "progress", "json", "html"],
  jsonReporter: { fileName: `reports/mutation/${reportName}.json` },
  htmlReporter: { fileName: `reports/mutation/${reportName}.html` },
  tempDirName: ".stryker-tmp",
  ignorePatterns: ["reports", ".espruino", "scratch", "fuzz"],
};
