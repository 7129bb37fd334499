// The real-interpreter tier: an ESP32 on Wi-Fi (issue 10, scope 4). The unmodified esp32 bundle is
// provisioned with a network's name and password; it joins that network before it opens TCP to its
// gateway, and joins again when the network drops. Neither the name nor the password appears in
// anything printed: the device's console, the gateway's log. The network is the real interpreter's
// Wi-Fi stand-in (interpreter/device.ts WIFI_STAND_IN): the Linux build has TCP but no radio.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { realRig, realTest } from "./support/real.ts";

realTest("esp32: provisioned with Wi-Fi settings, joins the network, then the gateway; rejoins both after the network drops; the settings appear in no output", ["esp32"], async () => {
  const rig = await realRig();
  const wifi = { ssid: `kp-net-${randomBytes(3).toString("hex")}`, password: `pw-${randomBytes(12).toString("hex")}` };
  try {
    const id = "esp32-wifi";
    const dev = await rig.handset("esp32", id, { wifi });
    await dev.waitFor(/^KP registered for 3600s$/, 60_000);
    // Compared on the device, so that the test's own output never holds them either.
    assert.equal(await dev.eval(`require("Wifi").ssid === ${JSON.stringify(wifi.ssid)} && require("Wifi").password === ${JSON.stringify(wifi.password)}`), true, "it joined the provisioned network");
    assert.equal(await dev.eval(`require("Wifi").joins`), 1);

    const since = dev.lines.length;
    const joinsBefore = rig.gw.events("joined").filter((e) => e.device === id).length;
    await dev.eval(`require("Wifi").drop()`);
    await dev.waitFor(/^KP registered for 3600s$/, 60_000, since);
    assert.equal(await dev.eval(`require("Wifi").joins`), 2, "it joined the network again");
    assert.equal(await dev.eval(`require("Wifi").ssid === ${JSON.stringify(wifi.ssid)}`), true);
    assert.equal(rig.gw.events("joined").filter((e) => e.device === id).length, joinsBefore + 1, "and its gateway again");
    assert.equal((await dev.eval<{ state: string }>("KP.status()")).state, "linked");

    // Everything the device printed since it was flashed (the harness types its evals with echo off)
    // and everything the gateway logged.
    const printed = [...dev.lines, ...rig.gw.lines];
    for (const secret of [wifi.ssid, wifi.password]) {
      assert.equal(printed.filter((l) => l.includes(secret)).length, 0, "a Wi-Fi setting was printed");
    }
  } finally {
    await rig.stop();
  }
});
