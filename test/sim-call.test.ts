// `keyproxy sim --call` as a user runs it: it exits when its call is over (0 when the call went
// through and was hung up, 1 when it failed), and it prints what happened by name, with SPIs in the
// one form every keyproxy output uses (gateway/log/protocol-names.ts), not as bare codes.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { buildFirmware } from "../flash/build.ts";
import { tempDir } from "./support/harness.ts";
import { startGatewayProcess, type GatewayProcess } from "./support/process.ts";
import { runCli } from "./support/run-cli.ts";

/** `keyproxy <args>` as a process; a sim with a call takes a while to build, boot and talk. */
const keyproxy = async (args: string[], timeoutMs: number) => {
  const r = await runCli(args, { timeoutMs });
  return { code: r.code, out: r.stdout, err: r.stderr };
};

let dataDir: string;
let bundleFile: string;
let gw: GatewayProcess;

before(async () => {
  dataDir = tempDir("kp-sim-");
  const build = await buildFirmware({ board: "puckjs", outDir: join(dataDir, "build") });
  assert.ok(build.ok, "the puckjs firmware builds");
  bundleFile = join(dataDir, "puckjs.js");
  writeFileSync(bundleFile, build.code);
  // No MQTT: nothing here needs it, and the default broker address is shared by the whole machine.
  gw = await startGatewayProcess(dataDir, 0, ["--no-mqtt"]);
});

after(async () => {
  await gw?.stop();
});

const sim = (...extra: string[]) => ["sim", "--data-dir", dataDir, "--gateway", `127.0.0.1:${gw.port}`, "--bundle", bundleFile, ...extra];

test("sim --call exits 0 once the call is hung up, and names the SPI and the close reason", async () => {
  const allow = await keyproxy(["policy", "allow", "--data-dir", dataDir, "--from", "sim-1", "--to", "sim-2", "--app", "chat"], 30_000);
  assert.equal(allow.code, 0, allow.err);
  const r = await keyproxy(sim("--count", "2", "--answer", "--call", "sim-2", "--app", "chat"), 180_000);
  assert.equal(r.code, 0, `${r.out}\n${r.err}`);
  const up = r.out.match(/sim-1: demo: end-to-end session with sim-2 up, spi (\S+)/);
  assert.ok(up, `the caller says its session is up:\n${r.out}`);
  assert.match(up[1], /^0x[0-9a-f]{8}$/, "the SPI in its one printed form");
  assert.match(r.out, /sim-1: demo: hung up/);
  assert.match(r.out, new RegExp(`sim-2: demo: session ${up[1]} closed: bye`), "the callee names the reason, with the same SPI text");
});

test("sim --call exits 1 when the call is refused, and prints the error's name", async () => {
  const r = await keyproxy(sim("--count", "1", "--prefix", "lonely", "--call", "nobody", "--app", "chat"), 180_000);
  assert.equal(r.code, 1, `${r.out}\n${r.err}`);
  assert.match(r.out, /lonely-1: demo: call failed: not-found/);
  assert.doesNotMatch(r.out, /call failed: .*\b2\b/, "the name, not the code");
});
