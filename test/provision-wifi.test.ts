// `keyproxy provision --wifi-ssid` (issue 10, scope 4): an ESP32's Wi-Fi network into kp.cfg beside its
// root key. The password comes from a file or KEYPROXY_WIFI_PASSWORD, never a flag's value; every
// mistake exits 2 before anything starts and no message quotes the password; a provisioning prints
// neither the network's name nor its password. Joining the network, and again after it drops, is
// shown on the real interpreter (test/real-wifi.test.ts) and in the emulator below.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { EmulatedDevice } from "../emulator/device.ts";
import { attachPty } from "../emulator/serial.ts";
import { buildFirmware } from "../flash/build.ts";
import { runCli } from "./support/run-cli.ts";
import { startGateway, tempDir, until } from "./support/harness.ts";

const PASSWORD = "correct horse battery staple";

function passwordFile(content: string): string {
  const f = join(tempDir("kp-wifi-"), "wifi.pw");
  writeFileSync(f, content, { mode: 0o600 });
  return f;
}

test("provision --wifi-ssid refuses mistakes with exit 2, a sentence naming the fix, nothing written, and never the password", async () => {
  const dataDir = join(tempDir("kp-wifi-reg-"), "data");
  const base = ["provision", "--port", "/dev/null", "--id", "esp-1", "--data-dir", dataDir];
  const cases: [string[], Record<string, string>, RegExp][] = [
    [["--board", "puckjs", "--wifi-ssid", "home"], {}, /--wifi-ssid is for boards that join a Wi-Fi network \(esp32\); puckjs does not/],
    [["--board", "esp32", "--wifi-ssid", "home"], {}, /needs the network's password: in a file given with --wifi-password-file <file>, or in KEYPROXY_WIFI_PASSWORD/],
    [["--board", "esp32", "--wifi-password-file", passwordFile(PASSWORD)], {}, /--wifi-password-file goes with --wifi-ssid/],
    [["--board", "esp32", "--wifi-ssid", "x".repeat(33), "--wifi-password-file", passwordFile(PASSWORD)], {}, /1 to 32 bytes, got 33/],
    [["--board", "esp32", "--wifi-ssid", "home", "--wifi-password-file", passwordFile("short12\n")], {}, /not one WPA2 takes: 8 to 63 printable ASCII characters, or 64 hex digits \(7 characters given\)/],
    [["--board", "esp32", "--wifi-ssid", "home"], { KEYPROXY_WIFI_PASSWORD: "tab\there-and-more" }, /not one WPA2 takes/],
    [["--board", "esp32", "--wifi-ssid", "home", "--wifi-password-file", "/nonexistent/wifi.pw"], {}, /cannot read the Wi-Fi password file \/nonexistent\/wifi.pw: ENOENT/],
  ];
  for (const [args, env, why] of cases) {
    const r = await runCli([...base, ...args], { env });
    assert.equal(r.code, 2, `keyproxy ${args.join(" ")}:\n${r.stderr}`);
    assert.match(r.stderr, why);
    for (const secret of [PASSWORD, "short12", "tab\there"]) assert.ok(!r.stdout.includes(secret) && !r.stderr.includes(secret), "the password was printed");
  }
  assert.equal(existsSync(dataDir), false, "no registry was made");
});

test("provision --wifi-ssid over a serial console: kp.cfg holds the network, nothing printed holds it; the emulated ESP32 joins it, its gateway, and both again after the network drops", async () => {
  const gw = await startGateway();
  const port = gw.gw.address.port;
  const dev = new EmulatedDevice({ board: "esp32", storageDir: tempDir("kp-wifi-dev-"), name: "esp-wifi" });
  const pty = await attachPty(dev);
  try {
    const ssid = "keyproxy-lab ünï";
    const args = ["provision", "--port", pty.path, "--board", "esp32", "--id", "esp-wifi", "--data-dir", gw.dataDir, "--gateway", `127.0.0.1:${port}`, "--wifi-ssid", ssid, "--no-reboot"];
    const r = await runCli(args, { env: { KEYPROXY_WIFI_PASSWORD: PASSWORD } });
    assert.equal(r.code, 0, r.stderr);
    for (const secret of [ssid, PASSWORD]) assert.ok(!r.stdout.includes(secret) && !r.stderr.includes(secret), "a Wi-Fi setting was printed");
    const cfg = JSON.parse(Buffer.from(dev.storage.read("kp.cfg")!).toString("utf8"));
    assert.deepEqual(cfg.wifi, { ssid, password: PASSWORD });

    // The firmware: the network first, then the gateway; when the network drops, both again.
    dev.storage.write(".bootcde", (await buildFirmware({ board: "esp32", outDir: tempDir("kp-wifi-build-") })).code);
    await dev.reboot();
    await until(() => dev.eval("KP.status().registered") === true, "registered over Wi-Fi", 15_000);
    assert.equal(dev.eval(`require("Wifi").joins`), 1);
    // Espruino's strings are bytes: the name reaches Wifi.connect as its UTF-8 bytes, as a board sends it.
    const ssidBytes = Buffer.from(ssid, "utf8").toString("latin1");
    assert.equal(dev.eval(`require("Wifi").ssid === ${JSON.stringify(ssidBytes)} && require("Wifi").password === ${JSON.stringify(PASSWORD)}`), true);
    dev.eval(`require("Wifi").drop()`);
    await until(() => dev.eval(`require("Wifi").joins`) === 2 && gw.events("joined").length === 2 && dev.eval("KP.status().state") === "linked", "the network and the gateway joined again", 15_000);
    for (const secret of [ssid, PASSWORD]) assert.ok(!gw.logs.some((l) => l.includes(secret)), "the gateway logged a Wi-Fi setting");
  } finally {
    await pty.close();
    dev.powerOff();
    await gw.gw.stop();
  }
});
