// Sessions across gateways as a user runs them (design.md flow 5): a fleet made with the CLI, two
// gateway processes in their own domains on one MQTT broker (Mosquitto when KEYPROXY_TEST_MQTT_URL
// names one, as CI does; else the in-process broker, started here), a Puck.js handset behind each
// running the real firmware bundle in the emulator, and a capable peer as a separate Node process
// (examples/capable-peer.ts, on the SDK). The handsets call each other by name@domain, exchange
// messages across a rekey and hang up; the capable peer calls a handset; then the fleet revokes a
// handset and its sessions end at both gateways within the documented bound (docs/FLEET.md). Gateway
// b asks the fleet's verifier running on its own (`keyproxy verifier`, another process) about remote
// certificates; gateway a uses the one inside it.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import mqtt, { type MqttClient } from "mqtt";
import { startBroker } from "../gateway/monitor/embedded-broker.ts";
import { buildFirmware } from "../flash/build.ts";
import { startSim } from "../emulator/sim.ts";
import type { EmulatedDevice } from "../emulator/device.ts";
import { openStore } from "../gateway/gateway.ts";
import { X25519_KEY_FILE } from "../gateway/fleet/fleet.ts";
import { loadOrCreateGatewayKey } from "../gateway/fleet/identity.ts";
import { CLI, startGatewayProcess, type GatewayProcess } from "./support/process.ts";
import { forms, leaks } from "./support/leaks.ts";
import { tempDir, until } from "./support/harness.ts";

/** How long after `keyproxy fleet revoke-device --mqtt` has published the list the revoked device's
 *  sessions may take to end at every gateway (docs/FLEET.md, "The bound"). */
const REVOCATION_BOUND_MS = 5000;
const TOTAL = 120;
/** Each side asks for a rekey at 80% of this: in the middle of the run. */
const SA_LIMIT = 100;
const BATCH = 20;
const EXAMPLE = fileURLToPath(new URL("../examples/capable-peer.ts", import.meta.url));

/** The application every handset runs, installed over the console as a user would. */
const APP = `
global.N = 0; global.BAD = 0; global.SENT = 0; global.SPI = 0; global.CLOSED = []; global.PEER = "";
KP.onRequest = function (from, app) { return app === "chat"; };
KP.onConnect = function (spi, peer, app, replaces) { SPI = spi; PEER = peer; };
KP.onMessage = function (d, spi, peer) {
  var t = E.toString(d);
  if (t.substr(0, 5) === "echo ") { KP.send(spi, E.toUint8Array("re: " + t.substr(5))); return; }
  if (t !== "m" + N) BAD++; N++;
};
KP.onClose = function (spi, reason) { CLOSED.push(reason); SPI = 0; };
global.burst = function (n) {
  for (var i = 0; i < n && SENT < ${TOTAL}; i++) { if (!KP.send(SPI, E.toUint8Array("m" + SENT))) break; SENT++; }
  return SENT;
};
1`;

interface CliResult {
  code: number | null;
  out: string;
  err: string;
}

/** Runs `keyproxy <args>` as a separate process, as a user would. */
function cli(args: string[], timeoutMs = 30_000): Promise<CliResult> {
  return runNode([CLI, ...args], timeoutMs);
}

function runNode(args: string[], timeoutMs: number): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (b: Buffer) => (out += b.toString()));
    child.stderr.on("data", (b: Buffer) => (err += b.toString()));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${args.join(" ")} did not finish in ${timeoutMs} ms:\n${out}\n${err}`));
    }, timeoutMs);
    child.on("exit", (code) => {
      clearTimeout(timer);
      resolve({ code, out, err });
    });
  });
}

/** Everything the CLI printed, for the key-material scan. */
const printed: string[] = [];

async function ok(args: string[]): Promise<string> {
  const r = await cli(args);
  printed.push(r.out, r.err);
  assert.equal(r.code, 0, `keyproxy ${args.join(" ")} failed:\n${r.out}\n${r.err}`);
  return r.out;
}

/** `keyproxy verifier` as a process: resolves once it logged verifier-started. */
function startVerifierProcess(args: string[]): Promise<{ lines: string[]; stop(): Promise<void> }> {
  const child = spawn(process.execPath, [CLI, "verifier", ...args], { stdio: ["ignore", "pipe", "pipe"] });
  const lines: string[] = [];
  let buf = "";
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the verifier did not start:\n${lines.join("\n")}`)), 20_000);
    child.stderr.on("data", (b: Buffer) => {
      buf += b.toString();
      for (let i = buf.indexOf("\n"); i >= 0; i = buf.indexOf("\n")) {
        lines.push(buf.slice(0, i));
        buf = buf.slice(i + 1);
        if (lines.at(-1)!.includes('"event":"verifier-started"')) {
          clearTimeout(timer);
          resolve({ lines, stop: () => new Promise((res) => { if (child.exitCode !== null) return res(); child.once("exit", () => res()); child.kill("SIGTERM"); }) });
        }
      }
    });
    child.once("exit", (code) => { clearTimeout(timer); reject(new Error(`the verifier exited with ${code}:\n${lines.join("\n")}`)); });
  });
}

interface Side {
  domain: string;
  dataDir: string;
  gw: GatewayProcess;
  dev: EmulatedDevice;
  stop(): void;
}

test("the new flags of keyproxy gateway, verifier and sim refuse bad input with exit code 2, a sentence, and nothing written", async () => {
  const dataDir = join(tempDir("kp-xe2e-usage-"), "data");
  const cases: [string[], RegExp][] = [
    [["gateway", "--data-dir", dataDir, "--id", "lab/+#"], /is not a domain name.*--no-fleet/],
    [["gateway", "--data-dir", dataDir, "--no-fleet", "--verifier", "v.example"], /--recheck and --verifier are about sessions across gateways/],
    [["gateway", "--data-dir", dataDir, "--verifier", "not a domain"], /--verifier wants the verifier's id/],
    [["gateway", "--data-dir", dataDir, "--sa-limit", "0"], /--sa-limit wants a positive whole number/],
    [["gateway", "--data-dir", dataDir, "--key-agreement", "quantum"], /--key-agreement wants x25519, hybrid, hybrid-only, got "quantum"/],
    [["gateway", "--data-dir", dataDir, "--no-fleet", "--key-agreement", "hybrid"], /--key-agreement is about sessions across gateways/],
    [["verifier", "--id", "v.example", "--data-dir", dataDir], /--mqtt <url> is required/],
    [["verifier", "--id", "fleet", "--data-dir", dataDir, "--mqtt", "mqtt://127.0.0.1:1"], /--id <verifier-id> is required, a domain name/],
    [["sim", "--data-dir", dataDir, "--call", "a b"], /--call wants a handset name or name@domain/],
  ];
  for (const [args, why] of cases) {
    const r = await cli(args);
    assert.equal(r.code, 2, `keyproxy ${args.join(" ")}:\n${r.err}`);
    assert.match(r.err, why);
  }
  assert.equal(existsSync(dataDir), false, "no data directory was made");
});

/** Where the parties connect: gateway a's side (gateway a, the recorder, carol) and gateway b's side
 *  (gateway b, the verifier, the revocation command). */
interface Brokers {
  a: string;
  b: string;
  close(): Promise<void>;
}

const MOSQUITTO = process.env.KEYPROXY_TEST_MQTT_URL;
/** A second Mosquitto bridged to the first (.ci/run starts it from deploy/mosquitto/bridge.conf). */
const BRIDGED = process.env.KEYPROXY_TEST_MQTT_BRIDGED_URL;

crossGatewaySuite(MOSQUITTO ? "Mosquitto" : "the in-process broker", async () => {
  if (MOSQUITTO) return { a: MOSQUITTO, b: MOSQUITTO, close: async () => {} };
  const broker = await startBroker({ host: "127.0.0.1", port: 0 });
  return { a: broker.url, b: broker.url, close: () => broker.close() };
});

// docs/SCALING.md, "Domains on different brokers": the same run with gateway a on one broker and
// gateway b on another, the two bridged; everything between the domains crosses the bridge (the
// retained certificates and revocation list included).
if (MOSQUITTO && BRIDGED) {
  // Over the bridged brokers both gateways run the hybrid key agreement only (issue 14, scope 2):
  // X25519 + ML-KEM-768 between two gateway processes over Mosquitto.
  crossGatewaySuite("two bridged Mosquitto brokers, hybrid key agreement", async () => {
    await bridgeCarries(BRIDGED, MOSQUITTO);
    await bridgeCarries(MOSQUITTO, BRIDGED);
    return { a: MOSQUITTO, b: BRIDGED, close: async () => {} };
  }, "hybrid-only");
}
else if (process.env.CI === "true") {
  test("CI runs the cross-gateway suite over two bridged brokers", async () => {
    assert.fail("CI=true but KEYPROXY_TEST_MQTT_URL and KEYPROXY_TEST_MQTT_BRIDGED_URL are not both set: .ci/run starts the two bridged Mosquitto brokers");
  });
} else {
  test("sessions across two gateway processes over two bridged Mosquitto brokers", { skip: "set KEYPROXY_TEST_MQTT_URL and KEYPROXY_TEST_MQTT_BRIDGED_URL to two bridged brokers (.ci/run starts them)" }, async () => {});
}

/** Resolves once a message published at one broker arrives at the other: the bridge is up. */
async function bridgeCarries(from: string, to: string): Promise<void> {
  const topic = `keyproxy-cose/v1/test-bridge-probe/${randomBytes(4).toString("hex")}`;
  const [pub, sub] = await Promise.all([mqtt.connectAsync(from), mqtt.connectAsync(to)]);
  try {
    let arrived = false;
    sub.on("message", (t) => (arrived ||= t === topic));
    await sub.subscribeAsync(topic, { qos: 1 });
    // Published again every 250 ms: the bridge drops what comes before it has connected.
    let sentAt = 0;
    await until(() => {
      if (!arrived && Date.now() - sentAt > 250) {
        sentAt = Date.now();
        void pub.publishAsync(topic, "probe", { qos: 1 });
      }
      return arrived;
    }, `the bridge from ${from} to ${to}`, 15_000);
  } finally {
    await Promise.all([pub.endAsync(), sub.endAsync()]);
  }
}

function crossGatewaySuite(title: string, startBrokers: () => Promise<Brokers>, keyAgreement: "x25519" | "hybrid-only" = "x25519"): void {
  describe(`sessions across two gateway processes over ${title}`, () => {
    const run = randomBytes(3).toString("hex");
    const fleetDir = tempDir("kp-xe2e-fleet-");
    const domA = `a-${run}.example`;
    const domB = `b-${run}.example`;
    const domC = `c-${run}.example`;
    const verifierId = `v-${run}.example`;
    const verifierDir = tempDir("kp-xe2e-verifier-");
    let verifier: { lines: string[]; stop(): Promise<void> } | undefined;
    let brokers: Brokers;
    let a: Side;
    let b: Side;
    let carolDir: string;
    /** Every MQTT message during the run under both roots: keyproxy/# (monitoring, JSON) and
     *  keyproxy-cose/# (the interlink and the fleet's revocation list, COSE). */
    let recorder: MqttClient;
    const seen: Buffer[] = [];
    const g = (s: Side, expr: string) => s.dev.eval(expr) as number;

    async function side(domain: string, prefix: string, bundle: string, policy: string[][], extra: string[] = []): Promise<Side> {
      const dataDir = tempDir(`kp-xe2e-${prefix}-`);
      await ok(["fleet", "issue-gateway", "--fleet-dir", fleetDir, "--id", domain, "--data-dir", dataDir]);
      for (const [from, to] of policy) await ok(["policy", "allow", "--from", from, "--to", to, "--app", "chat", "--data-dir", dataDir]);
      const url = prefix === "alice" ? brokers.a : brokers.b;
      const gw = await startGatewayProcess(dataDir, 0, ["--id", domain, "--mqtt", url, "--sa-limit", String(SA_LIMIT), "--recheck", "2", "--metrics", "60", "--key-agreement", keyAgreement, ...extra]);
      await until(() => gw.events("interlink-started").length === 1, `${domain}'s interlink`, 10_000);
      const sim = await startSim({ dataDir, gateway: { host: "127.0.0.1", port: gw.port }, count: 1, board: "puckjs", bundle, prefix, lifetime: 600 });
      const dev = sim.devices[0];
      await until(() => dev.eval("KP.status().registered") === true, `${prefix}-1 registered`, 15_000);
      return { domain, dataDir, gw, dev, stop: () => sim.stop() };
    }

    before(async () => {
      brokers = await startBrokers();
      recorder = await mqtt.connectAsync(brokers.a, { protocolVersion: 4 });
      recorder.on("message", (topic, payload) => seen.push(Buffer.from(topic), Buffer.from(payload)));
      await recorder.subscribeAsync({ "keyproxy/#": { qos: 1 }, "keyproxy-cose/#": { qos: 1 } });
      await ok(["fleet", "create", "--id", `kp-e2e-${run}`, "--fleet-dir", fleetDir]);
      const build = await buildFirmware({ board: "puckjs", outDir: tempDir("kp-build-") });
      assert.ok(build.ok, build.problems.join("\n"));
      // The fleet's verifier on its own: gateway b asks it about remote certificates, a uses its own.
      await ok(["fleet", "issue-gateway", "--fleet-dir", fleetDir, "--id", verifierId, "--data-dir", verifierDir]);
      verifier = await startVerifierProcess(["--id", verifierId, "--data-dir", verifierDir, "--mqtt", brokers.b]);
      // Each gateway's own policy, both ways, so that a refusal below can only come from the revocation.
      a = await side(domA, "alice", build.code, [["alice-1", `bob-1@${domB}`], [`bob-1@${domB}`, "alice-1"]]);
      b = await side(domB, "bob", build.code, [[`alice-1@${domA}`, "bob-1"], ["bob-1", `alice-1@${domA}`], [`*@${domC}`, "bob-1"]], ["--verifier", verifierId]);
      a.dev.eval(APP);
      b.dev.eval(APP);
    });

    after(async () => {
      for (const s of [a, b]) {
        if (!s) continue;
        s.stop();
        await s.gw.stop();
      }
      await verifier?.stop();
      await recorder?.endAsync();
      await brokers?.close();
    });

    test("alice-1 calls bob-1@<domain b> by name: messages cross both ways across a rekey, a bye ends it at both ends; then bob calls alice", async () => {
      a.dev.eval(`KP.connect("bob-1@${domB}", "chat")`);
      await until(() => g(a, "SPI") !== 0 && g(b, "SPI") !== 0, "an SA at both ends", 15_000);
      const first = g(a, "SPI");
      assert.equal(g(b, "SPI"), first, "one SPI at both ends: each gateway derived it from the exchange");
      assert.equal(a.dev.eval("PEER"), `bob-1@${domB}`);
      assert.equal(b.dev.eval("PEER"), `alice-1@${domA}`);
      assert.equal(b.gw.events("interlink-started")[0].verifier, verifierId, "gateway b asks the verifier process");
      assert.equal(a.gw.events("interlink-started")[0].verifier, "in-process");
      const agreed = keyAgreement === "hybrid-only" ? "x25519-mlkem768" : "x25519";
      for (const s of [a, b]) assert.equal(s.gw.events("xsession-keys-distributed")[0]?.keyAgreement, agreed, `${s.domain} ran the exchange with ${agreed}`);
      // Between the two gateways every envelope after the first went on their pairwise channel.
      for (const s of [a, b]) {
        const channels = [...s.gw.events("interlink-channel-opened"), ...s.gw.events("interlink-channel-accepted")].filter((e) => e.peer === (s === a ? domB : domA));
        assert.ok(channels.length >= 1, `${s.domain} has a pairwise channel with the other domain`);
        assert.deepEqual([...new Set(channels.map((e) => e.keyAgreement))], [agreed], `${s.domain}'s channel ran ${agreed} as its policy says`);
      }

      while (g(a, "SENT") < TOTAL || g(b, "SENT") < TOTAL) {
        const sa = g(a, `burst(${BATCH})`);
        const sb = g(b, `burst(${BATCH})`);
        await until(() => g(b, "N") === sa && g(a, "N") === sb, `delivery of ${sa}/${sb}`, 15_000);
        // An SA at its limit refuses to send until its replacement is up: give the rekey time.
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.equal(g(a, "N"), TOTAL);
      assert.equal(g(b, "N"), TOTAL);
      assert.equal(g(a, "BAD") + g(b, "BAD"), 0, "every message arrived, in order");
      assert.notEqual(g(a, "SPI"), first, "the SA was replaced during the run");
      assert.equal(g(a, "SPI"), g(b, "SPI"), "both ends moved to the same new SA");
      await until(() => a.gw.events("xsession-rekeyed").length >= 1 && b.gw.events("xsession-rekeyed").length >= 1, "both gateways logged the rekey");
      assert.equal(g(a, "KP.status().dropped") + g(b, "KP.status().dropped"), 0, "no frame was dropped");

      a.dev.eval("KP.close(SPI)");
      await until(() => g(b, "CLOSED.length") === 1, "bob is told", 10_000);
      assert.equal(g(b, "CLOSED[0]"), 1, "closed by a bye");
      await until(() => g(a, "KP.sas.length") === 0 && g(b, "KP.sas.length") === 0, "neither holds an SA", 15_000);

      // The other way round (seed 004: either side may start): bob calls alice, five messages each way.
      for (const s of [a, b]) s.dev.eval(`SENT = ${TOTAL - 5}; N = ${TOTAL - 5}; CLOSED = []; SPI = 0; PEER = ""`);
      b.dev.eval(`KP.connect("alice-1@${domA}", "chat")`);
      await until(() => g(a, "SPI") !== 0 && g(b, "SPI") !== 0, "an SA at both ends, bob calling", 15_000);
      assert.equal(a.dev.eval("PEER"), `bob-1@${domB}`);
      const [sa, sb] = [g(a, "burst(5)"), g(b, "burst(5)")];
      await until(() => g(b, "N") === sa && g(a, "N") === sb, "five messages each way", 15_000);
      assert.equal(g(a, "BAD") + g(b, "BAD"), 0);
      b.dev.eval("KP.close(SPI)");
      await until(() => g(a, "CLOSED.length") === 1 && g(a, "KP.sas.length") === 0 && g(b, "KP.sas.length") === 0, "closed at both ends", 15_000);
    });

    test("a capable peer (a Node process on the SDK) calls bob-1@<domain b> and exchanges messages end to end", async () => {
      carolDir = tempDir("kp-xe2e-carol-");
      await ok(["fleet", "issue-gateway", "--fleet-dir", fleetDir, "--id", domC, "--data-dir", carolDir]);
      const r = await runNode(
        ["--import", "tsx", EXAMPLE, "--data-dir", carolDir, "--domain", domC, "--name", "carol", "--mqtt", brokers.a, "--call", `bob-1@${domB}`, "--app", "chat", "--send", "echo one", "--send", "echo two", "--key-agreement", keyAgreement],
        40_000,
      );
      printed.push(r.out, r.err);
      assert.equal(r.code, 0, `the capable peer failed:\n${r.out}\n${r.err}`);
      const lines = r.out.trim().split("\n");
      assert.match(lines[0], /^up [0-9a-f]+$/);
      assert.deepEqual(lines.filter((l) => l.startsWith("got ")), ["got re: one", "got re: two"], "bob's handset answered each message");
      assert.ok(lines.includes("hung up"));
      assert.equal(b.dev.eval("PEER"), `carol@${domC}`);
      await until(() => g(b, "KP.sas.length") === 0, "bob's SA with carol closed by her bye", 10_000);
    });

    // Last but one: it revokes alice-1.
    test("revoking alice-1 (fleet revoke-device --mqtt) ends her session at both gateways within the bound and refuses her joins", async () => {
      a.dev.eval("CLOSED = []");
      b.dev.eval("CLOSED = []");
      a.dev.eval(`KP.connect("bob-1@${domB}", "chat")`);
      await until(() => g(a, "SPI") !== 0 && g(b, "SPI") !== 0, "an SA at both ends", 15_000);
      const out = await ok(["fleet", "revoke-device", "--fleet-dir", fleetDir, "--name", `alice-1@${domA}`, "--mqtt", brokers.b]);
      assert.match(out, /published revocation list serial 2/);
      const started = Date.now(); // the broker has the list (the command waited for its acknowledgement)
      await until(() => g(b, "CLOSED.length") === 1 && g(a, "KP.sas.length") === 0, "the SA ended at both ends", REVOCATION_BOUND_MS);
      // Gateway b may end the SA first (its bye reaches alice's gateway over the interlink) while the
      // list is still on its way to gateway a: a's own record of the revocation is waited for, within
      // the same bound.
      await until(() => a.gw.events("device-revoked").some((e) => e.device === "alice-1"), "gateway a revoked its own device", Math.max(0, REVOCATION_BOUND_MS - (Date.now() - started)));
      const took = Date.now() - started;
      assert.equal(g(b, "CLOSED[0]"), 6, "bob's SA closed with reason Revoked");
      assert.ok(b.gw.events("xsession-down").length >= 1, "gateway b ended its side");
      assert.ok(verifier!.lines.some((l) => l.includes('"event":"revocation-list"') && l.includes('"serial":2')), "the verifier process took the list");
      // alice-1's link was closed; her attempts to join again are refused.
      await until(() => a.gw.events("join-rejected").some((e) => e.device === "alice-1" && e.reason === "device revoked"), "a refused join", 15_000);
      assert.notEqual(a.dev.eval("KP.status().state"), "linked");
      // And a new call from bob to alice is not found: she is no longer a device anyone can reach.
      b.dev.eval("global.SPI = 0");
      b.dev.eval(`KP.connect("alice-1@${domA}", "chat")`);
      await until(() => g(b, "KP.lastType") === 31, "bob's answer", 10_000);
      assert.equal(g(b, "KP.lastCode"), 2, "not found");
      assert.ok(took < REVOCATION_BOUND_MS);
    });

    test("no key material in anything that left the gateways: MQTT (monitoring, interlink, revocation), logs, command output", async () => {
      const secrets = new Map<string, Uint8Array>();
      const hex = (file: string) => new Uint8Array(Buffer.from(readFileSync(file, "utf8").trim(), "hex"));
      for (const s of [a, b]) {
        secrets.set(`${s.domain} signing seed`, loadOrCreateGatewayKey(s.dataDir).key.seed);
        secrets.set(`${s.domain} X25519 secret`, hex(join(s.dataDir, X25519_KEY_FILE)));
        const store = await openStore(s.dataDir);
        try {
          for (const d of (await store.listDevices())) {
            const row = (await store.getDevice(d.id))!;
            secrets.set(`${d.id} root key`, row.rootKey);
            if (row.identitySeed) secrets.set(`${d.id} identity seed`, row.identitySeed);
          }
        } finally {
          await store.close();
        }
      }
      secrets.set("fleet CA key", hex(join(fleetDir, "ca.key")));
      secrets.set("the verifier's signing seed", loadOrCreateGatewayKey(verifierDir).key.seed);
      secrets.set("carol's identity key", hex(join(carolDir, "peer-identity.key")));
      secrets.set("carol's signing seed", loadOrCreateGatewayKey(carolDir).key.seed);
      secrets.set("carol's X25519 secret", hex(join(carolDir, X25519_KEY_FILE)));
      assert.ok(secrets.size >= 13, `every secret is scanned for (${[...secrets.keys()].join(", ")})`);
      const haystacks = [...seen, ...[a, b].flatMap((s) => s.gw.lines.map((l) => Buffer.from(l))), ...verifier!.lines.map((l) => Buffer.from(l)), ...printed.map((o) => Buffer.from(o))];
      assert.ok(seen.length > 100, `enough to scan (${seen.length / 2} messages)`);
      assert.ok(seen.some((x) => x.toString().startsWith("keyproxy-cose/v1/interlink/")), "interlink traffic was recorded");
      assert.ok(seen.some((x) => x.toString().startsWith("keyproxy-cose/v1/fleet/")), "the fleet's revocation list was recorded");
      assert.deepEqual(leaks(secrets, haystacks), []);
      // The scan itself can fail: a secret planted in any form is found.
      for (const f of forms(secrets.get("fleet CA key")!)) assert.deepEqual(leaks(secrets, [Buffer.concat([Buffer.from("x"), f, Buffer.from("y")])]), ["fleet CA key"]);
    });
  });
}
